"""Linear policies with observation normalisation, as in ARS V2 (Mania et al. 2018).

    a = clip(M @ ((s - mu) / sigma), low, high)

M is (act_dim, obs_dim); mu and sigma are the running mean and standard deviation of every
state the learner visited up to the snapshot. Plain numpy: one small matmul per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LinearPolicy:
    """A deterministic linear policy on normalised observations (ARS V2)."""

    weights: np.ndarray  # (act_dim, obs_dim), M in the paper
    obs_mean: np.ndarray  # (obs_dim,), mu
    obs_std: np.ndarray  # (obs_dim,), sigma (already floored, never 0)
    low: np.ndarray  # (act_dim,) action bounds
    high: np.ndarray

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        a = self.weights @ ((np.asarray(obs, np.float64) - self.obs_mean) / self.obs_std)
        return np.clip(a, self.low, self.high)

    def perturbed(self, delta: np.ndarray, scale: float) -> LinearPolicy:
        """The explored policy M + scale * delta (ARS's parameter-space noise; same normaliser)."""
        return LinearPolicy(self.weights + scale * delta, self.obs_mean, self.obs_std, self.low, self.high)

    @property
    def obs_dim(self) -> int:
        return int(self.weights.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.weights.shape[0])


@dataclass
class RunningStat:
    """Mean and standard deviation of a stream of vectors, from float64 sums.

    Sums (not Welford updates) make merging order-independent up to rounding and, merged in a
    fixed order, bit-for-bit reproducible however the rollouts were spread over processes.
    """

    count: int
    total: np.ndarray  # sum of x
    total_sq: np.ndarray  # sum of x**2

    @classmethod
    def empty(cls, dim: int) -> RunningStat:
        return cls(0, np.zeros(dim), np.zeros(dim))

    def add(self, count: int, total: np.ndarray, total_sq: np.ndarray) -> None:
        self.count += int(count)
        self.total += total
        self.total_sq += total_sq

    def mean(self) -> np.ndarray:
        return self.total / self.count if self.count else np.zeros_like(self.total)

    def std(self, floor: float = 1e-2) -> np.ndarray:
        """Standard deviation, 1 before any data; floored so near-constant inputs stay bounded."""
        if self.count < 2:
            return np.ones_like(self.total)
        var = np.maximum(self.total_sq / self.count - self.mean() ** 2, 0.0)
        return np.maximum(np.sqrt(var), floor)
