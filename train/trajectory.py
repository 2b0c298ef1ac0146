"""Episodes, returns-to-go and the context windows sequence policies train on.

Decision-Transformer-style models (Decision Mamba and its relatives) condition every step on
the return still to come, so training needs, per batch row, K consecutive steps of one
episode with their return-to-go, the previous step's action and return-to-go, the step's
index within its episode and a mask for padding. ``WindowSampler`` precomputes everything
per transition once, so each ``sample`` call is a handful of vectorised gathers: training
calls it thousands of times.

Torch is imported only where used, so the dataset tools (``ssmc data inspect``) can use the
episode helpers without paying for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from ssmc.train.dataset import OfflineData


def episode_bounds(data: OfflineData) -> tuple[np.ndarray, np.ndarray]:
    """Start (inclusive) and end (exclusive) row of every episode, as two (E,) int64 arrays.

    An episode ends at a row whose terminal or timeout flag is set; rows after the last flag
    form a trailing unfinished episode, which counts as an episode (a collector may stop
    mid-episode, and its steps are still valid data).
    """
    n = len(data)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ends = np.flatnonzero(np.asarray(data.terminals, bool) | np.asarray(data.timeouts, bool)) + 1
    if ends.size == 0 or ends[-1] != n:
        ends = np.append(ends, n)
    starts = np.concatenate(([0], ends[:-1]))
    return starts.astype(np.int64), ends.astype(np.int64)


def _cumsum0(rewards: np.ndarray) -> np.ndarray:
    """(N+1,) float64 running sum with a leading 0: the sum of rows a..b-1 is C[b] - C[a]."""
    return np.concatenate(([0.0], np.cumsum(np.asarray(rewards, np.float64))))


def episode_returns(data: OfflineData) -> np.ndarray:
    """(E,) float64 undiscounted return of every episode, in file order."""
    starts, ends = episode_bounds(data)
    c = _cumsum0(data.rewards)
    return c[ends] - c[starts]


def obs_stats(data: OfflineData) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature observation mean and std, (obs_dim,) float32 each.

    The std is floored at 1e-6 so a constant feature normalises to 0 instead of inf/NaN.
    """
    obs = np.asarray(data.observations, np.float64)
    mean = obs.mean(axis=0)
    std = np.maximum(obs.std(axis=0), 1e-6)
    return mean.astype(np.float32), std.astype(np.float32)


class WindowSampler:
    """Random length-K context windows from one dataset, as a dict of torch tensors.

    ``sample(B)`` returns
      observations (B,K,obs_dim) float32, normalised (obs - obs_mean) / obs_std
      actions      (B,K,act_dim) float32
      rtg          (B,K,1) float32  return-to-go including the step's own reward, x rtg_scale
      prev_actions (B,K,act_dim) float32  previous step's action in the episode, 0 at its start
      prev_rtg     (B,K,1) float32  previous step's rtg (scaled), 0 at the episode start
      timesteps    (B,K) int64  index of the step within its episode
      mask         (B,K) float32  1 for real steps, 0 for padding (every padded field is 0)

    Default windows end at a transition drawn uniformly from the whole dataset (so episodes
    are weighted by length, as D4RL/DT training does) and are the K steps up to it, LEFT
    padded when the episode has fewer steps before it. With ``from_start`` they begin at
    step 0 of an episode drawn proportionally to its length and are RIGHT padded past its
    end: whole-trajectory training for recurrent models (take K >= the longest episode).
    Sampling is deterministic given ``seed``.

    obs_mean / obs_std default to ``obs_stats(data)``; the values used are kept as
    attributes so the trainer can store them with the model. ``rng`` is the numpy Generator
    that draws the windows: saving and restoring its ``bit_generator.state`` resumes sampling.
    """

    def __init__(
        self,
        data: OfflineData,
        K: int,
        rtg_scale: float,
        obs_mean: np.ndarray | None = None,
        obs_std: np.ndarray | None = None,
        seed: int = 0,
        from_start: bool = False,
    ) -> None:
        if K < 1:
            raise ValueError(f"context length K must be >= 1, got {K}")
        n = len(data)
        if n == 0:
            raise ValueError("cannot sample windows from an empty dataset")
        if obs_mean is None or obs_std is None:
            mean, std = obs_stats(data)
            obs_mean = mean if obs_mean is None else obs_mean
            obs_std = std if obs_std is None else obs_std
        self.K = int(K)
        self.rtg_scale = float(rtg_scale)
        self.from_start = bool(from_start)
        self.obs_mean = np.asarray(obs_mean, np.float32)
        self.obs_std = np.asarray(obs_std, np.float32)
        self._n = n
        self.rng = np.random.default_rng(seed)

        starts, ends = episode_bounds(data)
        lengths = ends - starts
        self.max_ep_len = int(lengths.max())
        # Per transition row: its episode's first row and one past its last row.  (N,)
        self._row_start = np.repeat(starts, lengths)
        self._row_end = np.repeat(ends, lengths)

        # Gather tables with one extra all-zero row at index N: padded positions index it,
        # so padding costs no masking pass.
        c = _cumsum0(data.rewards)
        rtg = (c[self._row_end] - c[:-1]) * self.rtg_scale  # (N,) R_t including r_t
        obs = (np.asarray(data.observations, np.float32) - self.obs_mean) / self.obs_std
        self._obs = np.concatenate([obs, np.zeros((1, obs.shape[1]), np.float32)])  # (N+1, obs_dim)
        act = np.asarray(data.actions, np.float32)
        self._act = np.concatenate([act, np.zeros((1, act.shape[1]), np.float32)])  # (N+1, act_dim)
        self._rtg = np.append(rtg, 0.0).astype(np.float32)  # (N+1,)
        self._timestep = np.append(np.arange(n) - self._row_start, 0).astype(np.int64)  # (N+1,)

    def sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        """One batch of ``batch_size`` windows; shapes in the class docstring."""
        n, k = self._n, self.K
        pick = self.rng.integers(0, n, size=batch_size)  # (B,) uniform over transitions
        first = self._row_start[pick][:, None]  # (B,1) first row of each window's episode
        if self.from_start:
            idx = first + np.arange(k)  # (B,K) the episode's first K steps
            real = idx < self._row_end[pick][:, None]
        else:
            idx = pick[:, None] + np.arange(k) - (k - 1)  # (B,K) the K steps ending at pick
            real = idx >= first
        idx = np.where(real, idx, n)
        prev = np.where(real & (idx > first), idx - 1, n)  # (B,K) previous row, or the zero row
        return batch_fields(self._obs, self._act, self._rtg, self._timestep, idx, prev, real)


def batch_fields(obs: np.ndarray, act: np.ndarray, rtg: np.ndarray, timestep: np.ndarray, idx: np.ndarray,
                 prev: np.ndarray, real: np.ndarray) -> dict[str, torch.Tensor]:
    """The batch contract's per-step fields (module docstring) for rows ``idx``, their previous rows ``prev``
    and the ``real`` mask. The arrays are a dataset's rows with one zero row appended, which padding indexes."""
    import torch

    return {
        "observations": torch.from_numpy(obs[idx]),
        "actions": torch.from_numpy(act[idx]),
        "rtg": torch.from_numpy(rtg[idx][..., None]),
        "prev_actions": torch.from_numpy(act[prev]),
        "prev_rtg": torch.from_numpy(rtg[prev][..., None]),
        "timesteps": torch.from_numpy(timestep[idx]),
        "mask": torch.from_numpy(real.astype(np.float32)),
    }
