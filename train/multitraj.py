"""Training rows with a long, multi-trajectory context: what DM-H (``ssmc.train.models.dmh``) trains on.

Each row is what DM-H's Mamba reads before a segment, then the segment:

    history  = [past trajectory 1, ..., past trajectory n]  (n drawn in 0..n_context, ascending return,
               each its first context_len steps)  + [the current episode's steps before the segment]
    segment  = K steps of the current episode starting at a block boundary (a multiple of c), right-padded

The segment's fields follow ``WindowSampler``'s batch contract (observations, actions, rtg, prev_actions,
prev_rtg, timesteps, mask; (B, K, ...)); the history's carry the same names prefixed ``history_``
((B, H, ...), right-padded, H the longest history in the batch) and ``history_length`` (B,) counts its real
steps. Past trajectories are other episodes of the dataset drawn uniformly; current episodes are drawn
in proportion to their length and the segment start uniformly among the episode's block boundaries.
Sampling is deterministic given ``seed``; ``rng`` is the numpy Generator (the trainer saves its state).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ssmc.train.trajectory import batch_fields, episode_bounds, episode_returns, obs_stats

if TYPE_CHECKING:
    import torch

    from ssmc.train.dataset import OfflineData

class MultiTrajSampler:
    """Rows of (history, segment); see the module docstring for the layout."""

    def __init__(
        self,
        data: OfflineData,
        K: int,
        c: int,
        n_context: int,
        context_len: int,
        max_history: int,
        rtg_scale: float,
        obs_mean: np.ndarray | None = None,
        obs_std: np.ndarray | None = None,
        seed: int = 0,
    ) -> None:
        if K < 1 or c < 1 or K % c:
            raise ValueError(f"segment length K={K} must be a positive multiple of c={c}")
        if n_context < 0 or context_len < 1 or max_history < 0:
            raise ValueError(f"n_context and max_history must be >= 0 and context_len >= 1, "
                             f"got {n_context}, {max_history}, {context_len}")
        n = len(data)
        if n == 0:
            raise ValueError("cannot sample from an empty dataset")
        if obs_mean is None or obs_std is None:
            obs_mean, obs_std = obs_stats(data)
        self.K, self.c, self.n_context, self.context_len = int(K), int(c), int(n_context), int(context_len)
        self.max_history = int(max_history)
        self.obs_mean, self.obs_std = np.asarray(obs_mean, np.float32), np.asarray(obs_std, np.float32)
        self.rng = np.random.default_rng(seed)
        self._n = n
        self._starts, ends = episode_bounds(data)
        self._lengths = ends - self._starts
        self._returns = episode_returns(data)
        # Per row, with one extra zero row at index N that padding gathers (as WindowSampler's tables).
        row_start = np.repeat(self._starts, self._lengths)
        rewards = np.asarray(data.rewards, np.float64)
        c_sum = np.concatenate(([0.0], np.cumsum(rewards)))
        rtg = (c_sum[np.repeat(ends, self._lengths)] - c_sum[:-1]) * rtg_scale  # R_t including r_t
        obs = (np.asarray(data.observations, np.float32) - self.obs_mean) / self.obs_std
        act = np.asarray(data.actions, np.float32)
        self._obs = np.concatenate([obs, np.zeros((1, obs.shape[1]), np.float32)])
        self._act = np.concatenate([act, np.zeros((1, act.shape[1]), np.float32)])
        self._rtg = np.append(rtg, 0.0).astype(np.float32)
        self._timestep = np.append(np.arange(n) - row_start, 0).astype(np.int64)
        self._row_start = np.append(row_start, n)

    def _gather(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        """Batch fields for rows ``idx`` (B, L); index N is padding."""
        real = idx < self._n
        prev = np.where(real & (idx > self._row_start[idx]), idx - 1, self._n)
        return batch_fields(self._obs, self._act, self._rtg, self._timestep, idx, prev, real)

    def sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        """One batch of ``batch_size`` rows: segment fields, ``history_*`` fields and ``history_length``."""
        import torch

        rng, b, n_eps = self.rng, batch_size, self._lengths.size
        episode = rng.choice(n_eps, size=b, p=self._lengths / self._lengths.sum())  # (B,)
        n_blocks = -(-self._lengths[episode] // self.c)
        t0 = self.c * rng.integers(0, n_blocks)  # (B,) segment start within its episode
        seg = self._starts[episode][:, None] + t0[:, None] + np.arange(self.K)  # (B, K)
        seg = np.where(seg < (self._starts + self._lengths)[episode][:, None], seg, self._n)

        # past trajectories: other episodes, the first n_used of each row in ascending return
        n_used = rng.integers(0, self.n_context + 1, size=b)  # (B,)
        slot = np.arange(self.n_context)[None]
        if n_eps > 1:
            past = (episode[:, None] + 1 + rng.integers(0, n_eps - 1, size=(b, self.n_context))) % n_eps
        else:
            past = np.repeat(episode[:, None], self.n_context, 1)
        key = np.where(slot < n_used[:, None], self._returns[past], np.inf)  # unused slots sort last
        past = np.take_along_axis(past, np.argsort(key, axis=1, kind="stable"), 1)
        lengths = np.where(slot < n_used[:, None], np.minimum(self._lengths[past], self.context_len), 0)

        # history parts: the past trajectories, then the current episode before the segment
        part_start = np.concatenate([self._starts[past], self._starts[episode][:, None]], 1)  # (B, n+1)
        part_len = np.concatenate([lengths, t0[:, None]], 1)
        excess = np.maximum(part_len.sum(1) - self.max_history, 0)  # (B,) oldest steps to drop
        for j in range(part_len.shape[1]):
            cut = np.minimum(part_len[:, j], excess)
            part_start[:, j] += cut
            part_len[:, j] -= cut
            excess -= cut
        offset = np.cumsum(part_len, 1) - part_len
        history_length = part_len.sum(1)
        h = max(1, int(history_length.max()))
        idx = np.full((b, h + 1), self._n)  # the last column collects the writes of unused positions
        for j in range(part_len.shape[1]):
            step = np.arange(int(part_len[:, j].max()))[None]
            used = step < part_len[:, j : j + 1]
            np.put_along_axis(idx, np.where(used, offset[:, j : j + 1] + step, h),
                              np.where(used, part_start[:, j : j + 1] + step, self._n), 1)
        batch = self._gather(seg)
        batch.update({f"history_{k}": v for k, v in self._gather(idx[:, :h]).items()})
        batch["history_length"] = torch.from_numpy(history_length.astype(np.int64))
        return batch
