"""``collect``: D4RL-layout datasets from seeded behaviour policies, and ``ssmc data collect``."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from ssmc.cli import cli
from ssmc.envs import resolve_env
from ssmc.errors import ConfigError
from ssmc.train.collect import QUALITIES, collect

ARRAYS = ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")


def _read(path) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    with h5py.File(path) as f:
        arrays = {k: f[k][()] for k in ARRAYS}
        arrays.update({f"infos/{k}": f[f"infos/{k}"][()] for k in f.get("infos", {})})
        meta = {k: f[f"metadata/{k}"][()] for k in f["metadata"]}
    return arrays, meta


@pytest.fixture(scope="module")
def pendulum(tmp_path_factory) -> dict[str, tuple[dict[str, np.ndarray], dict[str, object]]]:
    d = tmp_path_factory.mktemp("pendulum")
    return {q: _read(collect("Pendulum-v1", q, out=d / f"{q}.hdf5", size=2000, progress=False)) for q in QUALITIES}


def test_pendulum_every_quality_has_d4rl_layout(pendulum) -> None:
    for quality, (a, meta) in pendulum.items():
        assert a["observations"].shape == a["next_observations"].shape == (2000, 3)
        assert a["actions"].shape == (2000, 1) and np.abs(a["actions"]).max() <= 2.0
        assert a["rewards"].dtype == np.float32 and a["terminals"].dtype == bool
        assert a["timeouts"].sum() == 10 and not a["terminals"].any()  # 200-step episodes, time limit only
        # within an episode, the next observation is the following row's observation
        inner = ~a["timeouts"][:-1]
        np.testing.assert_array_equal(a["next_observations"][:-1][inner], a["observations"][1:][inner])
        assert meta["env_id"] == b"Pendulum-v1" and meta["quality"] == quality.encode()
        assert meta["episodes"] == 10 and meta["ssmc_format"] == b"ssmc-d4rl/1"
        assert {"behaviour_policy", "ssmc_version", "collection_wall_time_s", "mean_return", "seed"} <= set(meta)


def test_pendulum_returns_are_ordered_by_quality(pendulum) -> None:
    score = {q: float(meta["normalized_mean_return"]) for q, (_, meta) in pendulum.items()}
    assert score["random"] < score["medium-replay"] < score["medium"] < score["medium-expert"] < score["expert"]
    assert score["random"] < 20 and 30 < score["medium"] < 70 and score["expert"] > 90


def test_same_seed_gives_identical_arrays(tmp_path) -> None:
    a, _ = _read(collect("Pendulum-v1", "medium-replay", out=tmp_path / "a.hdf5", size=700, seed=5, progress=False))
    b, _ = _read(collect("Pendulum-v1", "medium-replay", out=tmp_path / "b.hdf5", size=700, seed=5, progress=False))
    c, _ = _read(collect("Pendulum-v1", "medium-replay", out=tmp_path / "c.hdf5", size=700, seed=6, progress=False))
    for k in ARRAYS:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["observations"], c["observations"])


def test_last_episode_is_cut_at_size_and_marked_as_timeout(tmp_path) -> None:
    a, meta = _read(collect("Pendulum-v1", "expert", out=tmp_path / "x.hdf5", size=450, progress=False))
    assert len(a["rewards"]) == 450 and np.flatnonzero(a["timeouts"]).tolist() == [199, 399, 449]
    assert meta["episodes"] == 3


def test_unknown_env_or_quality_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="known: Hopper-v5"):
        collect("Humanoid-v5", "medium", out=tmp_path / "x.hdf5")
    with pytest.raises(ConfigError, match="known: random, medium"):
        collect("Pendulum-v1", "great", out=tmp_path / "x.hdf5")
    with pytest.raises(ConfigError, match="positive"):
        collect("Pendulum-v1", "medium", out=tmp_path / "x.hdf5", size=0)


def test_default_output_path_is_under_data(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = collect("pendulum", "random", size=10, progress=False)
    assert path == tmp_path / "data" / "pendulum-v1-random.hdf5" and path.is_file()


def test_mujoco_data_records_qpos_qvel_and_leaves_no_mujoco_log(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    a, meta = _read(collect("halfcheetah", "random", out="hc.hdf5", size=300, progress=False))
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()
    assert a["infos/qpos"].shape == (300, 9) and a["infos/qvel"].shape == (300, 9)
    # HalfCheetah's observation is qpos without the x position, then qvel
    np.testing.assert_allclose(a["observations"], np.concatenate([a["infos/qpos"][:, 1:], a["infos/qvel"]], 1),
                               rtol=1e-6, atol=1e-6)
    assert meta["behaviour_policy"] == b"random" and meta["episodes"] == 1


@pytest.mark.parametrize("quality", ["medium", "medium-replay", "medium-expert", "expert"])
def test_hopper_qualities_use_the_shipped_policy(tmp_path, quality: str) -> None:
    a, meta = _read(collect("Hopper-v5", quality, out=tmp_path / "h.hdf5", size=2500, progress=False))
    assert b"hopper-v5-s0 (shipped)" in meta["behaviour_policy"]
    assert a["terminals"][-1] or a["timeouts"][-1]
    assert a["infos/qpos"].shape == (2500, 6)
    if quality == "medium-replay":
        assert b"exploration noise" in meta["behaviour"]


def test_cli_collects_a_small_pendulum_dataset(tmp_path) -> None:
    out = tmp_path / "p.hdf5"
    res = CliRunner().invoke(cli, ["data", "collect", "Pendulum-v1", "--quality", "medium", "--size", "2000",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    a, meta = _read(out)
    assert len(a["rewards"]) == 2000 and meta["quality"] == b"medium"
    spec = resolve_env("Pendulum-v1")
    assert float(meta["normalized_mean_return"]) == pytest.approx(spec.normalized(float(meta["mean_return"])))


def test_cli_reports_a_bad_env_in_one_line() -> None:
    res = CliRunner().invoke(cli, ["data", "collect", "Nope-v0", "--quality", "medium"])
    assert res.exit_code == 2 and "unknown environment 'Nope-v0'" in res.output
