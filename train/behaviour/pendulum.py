"""Scripted behaviour for Pendulum-v1, the fast task: energy-pumping swing-up + PD balance.

Pendulum-v1 (theta = 0 upright, I = m l^2 / 3 = 1/3, m g l / 2 = 5) has energy
E = I w^2 / 2 + 5 cos(theta) with dE/dt = w u, so the swing-up u = k_E (5 - E) w drives E
towards the upright energy 5 (Astrom & Furuta, "Swinging up a pendulum by energy control",
Automatica 2000). Within ``balance_cos`` of upright a PD law u = -(k_p theta + k_d w) holds
the pendulum. Data qualities add Gaussian noise to the torque (then clip to [-2, 2]).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Gaussian torque-noise std per quality; medium-replay anneals from REPLAY_START_NOISE to medium's.
PENDULUM_NOISE = {"expert": 0.1, "medium": 3.0}
REPLAY_START_NOISE = 8.0


@dataclass(frozen=True)
class PendulumController:
    """Energy-pumping swing-up + PD balance for Pendulum-v1 (deterministic)."""

    k_energy: float = 10.0
    k_p: float = 10.0
    k_d: float = 2.0
    balance_cos: float = 0.9  # switch to PD when cos(theta) exceeds this
    max_torque: float = 2.0

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        cos, sin, w = (float(x) for x in obs)
        if cos > self.balance_cos:
            u = -(self.k_p * np.arctan2(sin, cos) + self.k_d * w)
        else:
            energy = 0.5 * w * w / 3.0 + 5.0 * cos
            u = self.k_energy * (5.0 - energy) * w
        return np.clip(np.array([u]), -self.max_torque, self.max_torque)


@dataclass(frozen=True)
class NoisyActor:
    """``policy`` plus Gaussian action noise of std ``noise``, clipped to the action bounds."""

    policy: PendulumController
    noise: float
    rng: np.random.Generator

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        a = self.policy(obs) + self.noise * self.rng.standard_normal(1)
        return np.clip(a, -self.policy.max_torque, self.policy.max_torque)


def replay_noise(fraction: float) -> float:
    """Medium-replay's noise schedule: linear from REPLAY_START_NOISE (start of the data) to medium's."""
    return REPLAY_START_NOISE + (PENDULUM_NOISE["medium"] - REPLAY_START_NOISE) * min(max(fraction, 0.0), 1.0)
