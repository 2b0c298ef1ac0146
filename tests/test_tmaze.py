"""The T-maze memory task: only the cued turn succeeds, the cue is seen once, the oracle succeeds and the
guesser is at chance, and its datasets are valid D4RL-layout files."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from ssmc.envs import TMAZE_LENGTHS, make_env, resolve_env
from ssmc.errors import ConfigError
from ssmc.tmaze import TMazeEnv
from ssmc.train.collect import collect
from ssmc.train.dataset import load_dataset, validate
from ssmc.train.tmaze import Oracle, collection_plan
from ssmc.train.trajectory import episode_returns


def run_episode(env, actor, seed):
    obs, _ = env.reset(seed=seed)
    observations, total, done, info = [obs], 0.0, False, {}
    while not done:
        obs, reward, terminated, truncated, info = env.step(actor(obs))
        total += reward
        observations.append(obs)
        done = terminated or truncated
    return np.array(observations), total, info, terminated, truncated


@pytest.mark.parametrize("k", [1, 5, 20])
def test_only_the_cued_turn_succeeds_and_the_cue_is_seen_once(k):
    env = TMazeEnv(k)
    for seed in range(20):
        obs, _ = env.reset(seed=seed)
        cue = obs[0]
        assert cue in (-1.0, 1.0) and obs[1] == 0
        for t in range(1, k + 1):  # the corridor: walking on whatever the action, nothing about the cue
            obs, reward, terminated, truncated, _ = env.step(np.array([cue]))
            assert obs[0] == 0 and obs[1] == (t == k) and reward == 0 and not terminated and not truncated
        turn = np.array([cue * 0.1]) if seed % 2 else np.array([-cue * 0.9])
        _, reward, terminated, _, info = env.step(turn)
        assert terminated and info["success"] == (seed % 2 == 1) and reward == float(seed % 2 == 1)


def test_both_cues_occur_and_episodes_last_k_plus_one_steps():
    env = make_env("ssmc/TMaze-k40-v0")
    cues = set()
    for seed in range(30):
        observations, _, _, terminated, truncated = run_episode(env, lambda _o: np.zeros(1), seed)
        cues.add(float(observations[0, 0]))
        assert len(observations) == 42 and terminated and not truncated  # k + 1 steps, ended by the turn
    assert cues == {-1.0, 1.0}


def test_oracle_succeeds_and_guesser_is_at_chance():
    env, rng = make_env("ssmc/TMaze-k10-v0"), np.random.default_rng(0)
    oracle = [run_episode(env, Oracle(rng), s)[1] for s in range(300)]
    guesser = [run_episode(env, Oracle(rng, informed=False), s)[1] for s in range(300)]
    assert np.mean(oracle) > 0.98
    assert 0.4 < np.mean(guesser) < 0.6


def test_registered_ids_and_env_specs():
    assert resolve_env("ssmc/TMaze-v0").max_episode_steps == 12
    for k in TMAZE_LENGTHS:
        spec = resolve_env(f"ssmc/TMaze-k{k}-v0")
        assert spec.max_episode_steps == k + 2 and spec.normalized(1.0) == 100 and spec.normalized(0.5) == 0
        assert make_env(spec).unwrapped.k == k
    assert gym.make("ssmc/TMaze-v0", k=37).unwrapped.k == 37


@pytest.mark.parametrize("k", [0, -3, 2.5, True])
def test_bad_memory_length_raises_config_error(k):
    with pytest.raises(ConfigError, match="memory length k must be a positive integer"):
        TMazeEnv(k)


def test_unknown_quality_raises_config_error():
    with pytest.raises(ConfigError, match="no T-maze behaviour for quality 'expert-replay'"):
        collection_plan("expert-replay", 100)


@pytest.mark.parametrize("quality,low,high", [("expert", 0.98, 1.0), ("medium", 0.35, 0.65),
                                              ("medium-expert", 0.6, 0.9), ("random", 0.35, 0.65)])
def test_collected_datasets_are_valid_and_have_the_expected_success(tmp_path, quality, low, high):
    k = 5
    path = collect(f"ssmc/TMaze-k{k}-v0", quality, out=tmp_path / "tm.hdf5", size=200 * (k + 1), progress=False)
    data = load_dataset(path)
    validate(data)
    returns = episode_returns(data)
    assert data.metadata["env_id"] == f"ssmc/TMaze-k{k}-v0" and data.metadata["quality"] == quality
    assert len(returns) == 200 and set(np.unique(returns)) <= {0.0, 1.0}
    assert low <= returns.mean() <= high
    assert data.terminals.sum() == 200 and not data.timeouts.any()
    # corridor actions carry nothing about the cue: uncorrelated with it
    obs = np.asarray(data.observations)
    cue = np.repeat(obs[:: k + 1, 0], k + 1)
    corridor = obs[:, 1] == 0
    assert abs(np.corrcoef(cue[corridor], np.asarray(data.actions)[corridor, 0])[0, 1]) < 0.1


def test_collection_is_deterministic_given_the_seed(tmp_path):
    a = load_dataset(collect("ssmc/TMaze-k5-v0", "medium-replay", out=tmp_path / "a.hdf5", size=300, progress=False))
    b = load_dataset(collect("ssmc/TMaze-k5-v0", "medium-replay", out=tmp_path / "b.hdf5", size=300, progress=False))
    assert np.array_equal(a.actions, b.actions) and np.array_equal(a.observations, b.observations)
