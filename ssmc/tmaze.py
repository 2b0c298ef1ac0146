"""The T-maze memory task as a gymnasium environment (Bakker 2001; the "passive T-maze" of Ni et al. 2023,
"When Do Transformers Shine in RL?"), as DM-H's paper uses it. The task, its observations, actions and
rewards are described in train/tmaze.py's docstring, with the behaviour policies that collect data on it.

Importing this module registers ``ssmc/TMaze-k{k}-v0`` for every k in ``ssmc.envs.TMAZE_LENGTHS`` and
``ssmc/TMaze-v0`` (k = 10); ``ssmc.envs.make_env`` imports it for ``ssmc/`` ids. In Python any k works:
``gymnasium.make("ssmc/TMaze-v0", k=37, max_episode_steps=39)``. The time limit is k + 2, one step more
than an episode lasts, so that the turn ends every episode as a terminal, never as a timeout.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ssmc.envs import TMAZE_LENGTHS
from ssmc.errors import ConfigError

DEFAULT_K = 10


class TMazeEnv(gym.Env):
    """The T-maze with memory length ``k`` (see the module docstring)."""

    metadata = {"render_modes": []}

    def __init__(self, k: int = DEFAULT_K) -> None:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ConfigError(f"T-maze memory length k must be a positive integer, got {k!r}")
        self.k = k
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self._t = 0
        self._cue = 1.0

    def _obs(self) -> np.ndarray:
        return np.array([self._cue if self._t == 0 else 0.0, 1.0 if self._t == self.k else 0.0], np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._t = 0
        self._cue = 1.0 if self.np_random.integers(2) else -1.0
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self._t < self.k:  # corridor: walk on, the action does nothing
            self._t += 1
            return self._obs(), 0.0, False, False, {}
        turn = 1.0 if float(np.asarray(action).reshape(-1)[0]) > 0 else -1.0
        success = turn == self._cue
        return self._obs(), float(success), True, False, {"success": success}


def register() -> None:
    """Register ``ssmc/TMaze-v0`` and ``ssmc/TMaze-k{k}-v0`` with gymnasium (idempotent)."""
    variants = {"ssmc/TMaze-v0": DEFAULT_K, **{f"ssmc/TMaze-k{k}-v0": k for k in TMAZE_LENGTHS}}
    for env_id, k in variants.items():
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=TMazeEnv, kwargs={"k": k}, max_episode_steps=k + 2)


register()
