"""Episodes, returns-to-go, observation statistics and the training window sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssmc.train.dataset import OfflineData
from ssmc.train.trajectory import (
    WindowSampler,
    episode_bounds,
    episode_returns,
    obs_stats,
)


@pytest.fixture
def hand() -> OfflineData:
    """Three episodes with round rewards: rows 0-2 (terminal), 3-7 (timeout), 8-9 (unfinished).

    Return-to-go by row: 6 5 3 | 150 140 120 90 50 | 300 200.
    observations[:, 0] is the row index; actions are (row, -row).
    """
    n = 10
    rows = np.arange(n, dtype=np.float32)
    terminals, timeouts = np.zeros(n, bool), np.zeros(n, bool)
    terminals[2] = timeouts[7] = True
    return OfflineData(
        observations=np.stack([rows, rows * 2], axis=1),
        actions=np.stack([rows, -rows], axis=1),
        rewards=np.array([1, 2, 3, 10, 20, 30, 40, 50, 100, 200], np.float32),
        terminals=terminals,
        timeouts=timeouts,
    )


HAND_RTG = np.array([6, 5, 3, 150, 140, 120, 90, 50, 300, 200], np.float32)
HAND_START = np.array([0, 0, 0, 3, 3, 3, 3, 3, 8, 8])
HAND_END = np.array([3, 3, 3, 8, 8, 8, 8, 8, 10, 10])


def raw_sampler(data: OfflineData, K: int, **kw) -> WindowSampler:
    """A sampler that leaves observations unnormalised, so observations[..., 0] is the row."""
    return WindowSampler(data, K, rtg_scale=0.5, obs_mean=np.zeros(2), obs_std=np.ones(2), **kw)


def expected(rows: np.ndarray, data: OfflineData, scale: float) -> dict[str, np.ndarray]:
    """Every field of one window, built step by step: rows[j] is a row index or -1 (padding)."""
    k, a = len(rows), data.act_dim
    out = {
        "observations": np.zeros((k, data.obs_dim), np.float32),
        "actions": np.zeros((k, a), np.float32),
        "rtg": np.zeros((k, 1), np.float32),
        "prev_actions": np.zeros((k, a), np.float32),
        "prev_rtg": np.zeros((k, 1), np.float32),
        "timesteps": np.zeros(k, np.int64),
        "mask": np.zeros(k, np.float32),
    }
    for j, r in enumerate(rows):
        if r < 0:
            continue
        out["observations"][j] = data.observations[r]
        out["actions"][j] = data.actions[r]
        out["rtg"][j] = HAND_RTG[r] * scale
        out["timesteps"][j] = r - HAND_START[r]
        out["mask"][j] = 1
        if r > HAND_START[r]:
            out["prev_actions"][j] = data.actions[r - 1]
            out["prev_rtg"][j] = HAND_RTG[r - 1] * scale
    return out


def test_episode_bounds_count_the_unfinished_tail(hand: OfflineData) -> None:
    def bounds() -> list[tuple[int, int]]:
        return [(int(s), int(e)) for s, e in zip(*episode_bounds(hand), strict=True)]

    assert bounds() == [(0, 3), (3, 8), (8, 10)]
    hand.timeouts[9] = True
    hand.terminals[7] = True  # both flags on one row end one episode
    assert bounds() == [(0, 3), (3, 8), (8, 10)]


def test_episode_returns(hand: OfflineData) -> None:
    np.testing.assert_allclose(episode_returns(hand), [6, 150, 300])


def test_obs_stats_floor_constant_features(make_offline) -> None:
    data = make_offline()
    data.observations[:, 1] = 7.0
    mean, std = obs_stats(data)
    assert mean.dtype == std.dtype == np.float32 and mean.shape == (data.obs_dim,)
    np.testing.assert_allclose(mean, data.observations.mean(0), rtol=1e-6)
    assert std[1] == pytest.approx(1e-6) and mean[1] == 7.0
    np.testing.assert_allclose(std[[0, 2]], data.observations[:, [0, 2]].std(0), rtol=1e-5)


def test_sample_shapes_and_dtypes(make_offline) -> None:
    data = make_offline(obs_dim=4, act_dim=3)
    batch = WindowSampler(data, K=5, rtg_scale=0.01).sample(7)
    shapes = {k: (tuple(v.shape), v.dtype) for k, v in batch.items()}
    f32 = torch.float32
    assert shapes == {
        "observations": ((7, 5, 4), f32),
        "actions": ((7, 5, 3), f32),
        "rtg": ((7, 5, 1), f32),
        "prev_actions": ((7, 5, 3), f32),
        "prev_rtg": ((7, 5, 1), f32),
        "timesteps": ((7, 5), torch.int64),
        "mask": ((7, 5), f32),
    }


def test_windows_end_at_a_step_and_are_left_padded(hand: OfflineData) -> None:
    K = 4
    batch = {k: v.numpy() for k, v in raw_sampler(hand, K).sample(300).items()}
    ends_seen = set()
    for b in range(300):
        end = int(batch["observations"][b, -1, 0])  # the last step is always real
        ends_seen.add(end)
        rows = np.arange(end - K + 1, end + 1)
        rows[rows < HAND_START[end]] = -1
        want = expected(rows, hand, 0.5)
        for k, v in want.items():
            np.testing.assert_allclose(batch[k][b], v, err_msg=f"{k}, window ending at row {end}")
    assert ends_seen == set(range(10))


def test_window_at_episode_start_by_hand(hand: OfflineData) -> None:
    """The window ending at row 4 (second step of episode 2), written out in full."""
    batch = {k: v.numpy() for k, v in raw_sampler(hand, 4).sample(300).items()}
    b = int(np.flatnonzero(batch["observations"][:, -1, 0] == 4)[0])
    np.testing.assert_array_equal(batch["mask"][b], [0, 0, 1, 1])
    np.testing.assert_array_equal(batch["timesteps"][b], [0, 0, 0, 1])
    np.testing.assert_allclose(batch["rtg"][b, :, 0], [0, 0, 75, 70])
    np.testing.assert_allclose(batch["prev_rtg"][b, :, 0], [0, 0, 0, 75])
    np.testing.assert_allclose(batch["actions"][b], [[0, 0], [0, 0], [3, -3], [4, -4]])
    np.testing.assert_allclose(batch["prev_actions"][b], [[0, 0], [0, 0], [0, 0], [3, -3]])
    np.testing.assert_allclose(batch["observations"][b, :, 0], [0, 0, 3, 4])


def test_from_start_windows_are_right_padded(hand: OfflineData) -> None:
    K = 6
    batch = {k: v.numpy() for k, v in raw_sampler(hand, K, from_start=True).sample(300).items()}
    starts_seen = []
    for b in range(300):
        start = int(batch["observations"][b, 0, 0])
        starts_seen.append(start)
        assert start in (0, 3, 8)
        rows = np.arange(start, start + K)
        rows[rows >= HAND_END[start]] = -1
        want = expected(rows, hand, 0.5)
        for k, v in want.items():
            np.testing.assert_allclose(batch[k][b], v, err_msg=f"{k}, window from row {start}")
    # Episodes are drawn proportionally to their length (3 : 5 : 2).
    freq = np.bincount(starts_seen, minlength=9)[[0, 3, 8]] / 300
    np.testing.assert_allclose(freq, [0.3, 0.5, 0.2], atol=0.1)


def test_window_ends_are_uniform_over_transitions(make_offline) -> None:
    data = make_offline(lengths=(2, 30, 8))
    obs = WindowSampler(data, 3, 1.0, np.zeros(3), np.ones(3), seed=3).sample(8000)["observations"]
    counts = np.bincount(obs[:, -1, 0].numpy().astype(int), minlength=len(data))
    assert counts.min() > 0.7 * 200 and counts.max() < 1.3 * 200


def test_observations_are_normalised(make_offline) -> None:
    data = make_offline(lengths=(40, 25))
    sampler = WindowSampler(data, 1, 1.0, seed=1)
    mean, std = obs_stats(data)
    np.testing.assert_array_equal(sampler.obs_mean, mean)
    np.testing.assert_array_equal(sampler.obs_std, std)
    obs = sampler.sample(50)["observations"][:, 0].numpy()
    rows = np.rint(obs[:, 0] * std[0] + mean[0]).astype(int)
    np.testing.assert_allclose(obs, (data.observations[rows] - mean) / std, rtol=1e-5, atol=1e-6)

    given = WindowSampler(data, 1, 1.0, obs_mean=np.full(3, 2.0), obs_std=np.full(3, 4.0), seed=1)
    obs = given.sample(50)["observations"][:, 0].numpy()
    rows = np.rint(obs[:, 0] * 4 + 2).astype(int)
    np.testing.assert_allclose(obs, (data.observations[rows] - 2) / 4, rtol=1e-6)


def test_sampling_is_deterministic_per_seed(make_offline) -> None:
    data = make_offline(lengths=(20, 30, 10))

    def draw(seed: int) -> list[dict[str, torch.Tensor]]:
        s = WindowSampler(data, 8, 0.1, seed=seed)
        return [s.sample(16) for _ in range(3)]

    a, b, c = draw(0), draw(0), draw(1)
    for x, y in zip(a, b, strict=True):
        for k in x:
            assert torch.equal(x[k], y[k])
    assert not all(torch.equal(x["timesteps"], z["timesteps"]) for x, z in zip(a, c, strict=True))


def test_rng_state_round_trip_resumes_sampling(make_offline) -> None:
    data = make_offline()
    s = WindowSampler(data, 2, 1.0, seed=5)
    s.sample(4)
    state = s.rng.bit_generator.state
    first = s.sample(4)
    s.rng.bit_generator.state = state
    assert torch.equal(s.sample(4)["observations"], first["observations"])
