"""Behaviour policies: ARS V2-t training, checkpoints (safetensors + JSON), the shipped policies."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ssmc.errors import ConfigError
from ssmc.train.behaviour import (
    ARS_CONFIGS,
    ARSConfig,
    PolicyCheckpoint,
    evaluate,
    find_checkpoint,
    get_checkpoint,
    train_ars,
)
from ssmc.train.behaviour.ars import pick_medium
from ssmc.train.behaviour.policy import RunningStat

# InvertedPendulum-v5 is cheap (short episodes until the policy balances) and linear-solvable.
TINY = ARSConfig(4, 2, 0.02, 0.03, env_steps=12_000, eval_every=2, eval_episodes=3)
TINY_ENV = "InvertedPendulum-v5"


@pytest.fixture(scope="module")
def tiny_run() -> PolicyCheckpoint:
    return train_ars(TINY_ENV, seed=0, config=TINY, progress=False)


def test_ars_improves_on_a_tiny_budget(tiny_run: PolicyCheckpoint) -> None:
    first = tiny_run.snapshots[0].eval_return
    assert tiny_run.expert.eval_return > 5 * first
    assert tiny_run.expert.eval_return == max(s.eval_return for s in tiny_run.snapshots)
    assert tiny_run.medium_index <= tiny_run.expert_index
    assert tiny_run.train_env_steps >= TINY.env_steps


def test_ars_is_deterministic_per_seed_whatever_the_worker_count(tiny_run: PolicyCheckpoint) -> None:
    again = train_ars(TINY_ENV, seed=0, config=TINY, workers=2, progress=False)
    assert [s.eval_return for s in again.snapshots] == [s.eval_return for s in tiny_run.snapshots]
    np.testing.assert_array_equal(again.expert.policy.weights, tiny_run.expert.policy.weights)
    other = train_ars(TINY_ENV, seed=1, config=TINY, progress=False)
    assert not np.array_equal(other.snapshots[1].policy.weights, tiny_run.snapshots[1].policy.weights)


def test_checkpoint_round_trip_keeps_arrays_and_config(tiny_run: PolicyCheckpoint, tmp_path) -> None:
    path = tiny_run.save(tmp_path)
    assert path.name == "invertedpendulum-v5-s0.json"
    assert (tmp_path / "invertedpendulum-v5-s0.safetensors").is_file()
    meta = json.loads(path.read_text())
    assert meta["config"]["n_directions"] == 4 and len(meta["snapshots"]) == len(tiny_run.snapshots)
    back = PolicyCheckpoint.load(path)
    assert (back.env_id, back.seed, back.expert_index, back.medium_index) == (
        tiny_run.env_id, tiny_run.seed, tiny_run.expert_index, tiny_run.medium_index)
    assert back.config == tiny_run.config and back.extra == tiny_run.extra
    for a, b in zip(back.snapshots, tiny_run.snapshots, strict=True):
        for name in ("weights", "obs_mean", "obs_std", "low", "high"):
            np.testing.assert_array_equal(getattr(a.policy, name), getattr(b.policy, name))
        assert a.info() == b.info()
    # the recorded evaluation is reproducible from the loaded policy
    assert np.mean(evaluate(back.expert.policy, TINY_ENV, back.extra["eval_seeds"])) == back.expert.eval_return


def test_loading_something_else_is_a_config_error(tmp_path) -> None:
    (tmp_path / "x.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ConfigError, match="not an ssmc behaviour-policy checkpoint"):
        PolicyCheckpoint.load(tmp_path / "x.json")


def test_missing_policy_is_trained_once_then_cached(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("SSMC_CACHE", str(tmp_path))
    monkeypatch.setitem(ARS_CONFIGS, TINY_ENV, TINY)
    assert find_checkpoint(TINY_ENV, 3) is None
    trained, source = get_checkpoint(TINY_ENV, 3, progress=False)
    assert source.startswith("trained") and (tmp_path / "policies" / "invertedpendulum-v5-s3.json").is_file()
    cached, source = get_checkpoint(TINY_ENV, 3, progress=False)
    assert source == str(tmp_path / "policies" / "invertedpendulum-v5-s3.json")
    assert cached.expert.eval_return == trained.expert.eval_return


def test_pick_medium_is_closest_to_the_fraction_before_the_expert() -> None:
    assert pick_medium([0.0, 200.0, 350.0, 900.0, 1000.0, 600.0], expert_index=4, fraction=1 / 3) == 2
    assert pick_medium([5.0, 1.0], expert_index=0, fraction=1 / 3) == 0


def test_running_stat_matches_numpy() -> None:
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(500, 4))
    stat = RunningStat.empty(4)
    for chunk in np.split(x, 5):
        stat.add(len(chunk), chunk.sum(0), (chunk**2).sum(0))
    np.testing.assert_allclose(stat.mean(), x.mean(0))
    np.testing.assert_allclose(stat.std(), x.std(0))
    np.testing.assert_array_equal(RunningStat.empty(4).std(), np.ones(4))


@pytest.mark.parametrize("env_id", ["Hopper-v5", "HalfCheetah-v5", "Walker2d-v5"])
def test_shipped_policy_loads_and_its_expert_performs(env_id: str) -> None:
    found = find_checkpoint(env_id, 0)
    assert found is not None and found[1] == "shipped"
    ckpt = found[0]
    assert ckpt.expert.eval_return > 2 * ckpt.medium.eval_return > 0
    ret = evaluate(ckpt.expert.policy, env_id, [ckpt.extra["eval_seeds"][0]])[0]
    assert ret > 0.8 * ckpt.expert.eval_return
