"""Dataset readers (D4RL HDF5, ssmc files, Minari), validation, the writer and `ssmc data inspect`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from ssmc.cli import cli
from ssmc.envs import ENVS
from ssmc.errors import ConfigError, DatasetError
from ssmc.train.dataset import SSMC_FORMAT, OfflineData, format_summary, load_dataset, summarize, write_d4rl


def write_h5(path: Path, items: dict[str, Any]) -> Path:
    """A raw HDF5 file: each key (slash-separated paths allowed) becomes a dataset."""
    with h5py.File(path, "w") as f:
        for k, v in items.items():
            f.create_dataset(k, data=v)
    return path


def d4rl_items(n: int = 12, **override: Any) -> dict[str, Any]:
    """D4RL v2-style contents: float64 observations, float 0/1 flags, infos/ and metadata/ groups."""
    rng = np.random.default_rng(0)
    terminals = np.zeros(n)
    timeouts = np.zeros(n)
    terminals[4] = 1.0
    timeouts[n - 1] = 1.0
    items: dict[str, Any] = {
        "observations": rng.normal(size=(n, 11)),
        "next_observations": rng.normal(size=(n, 11)),
        "actions": rng.uniform(-1, 1, size=(n, 3)).astype(np.float32),
        "rewards": np.arange(n, dtype=np.float32),
        "terminals": terminals,
        "timeouts": timeouts,
        "infos/qpos": rng.normal(size=(n, 6)),
        "infos/action_log_probs": rng.normal(size=n),
        "metadata/algorithm": b"SAC",
        "metadata/iteration": np.int64(1000000),
        "metadata/policy/fc0/weight": rng.normal(size=(4, 4)),  # D4RL keeps policy weights here
        "metadata/discount": 0.99,
    }
    items.update(override)
    return {k: v for k, v in items.items() if v is not None}


def error_of(path: Any) -> str:
    """The message of the DatasetError that loading ``path`` raises (always one line)."""
    with pytest.raises(DatasetError) as e:
        load_dataset(path)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# -- readers -----------------------------------------------------------------------------------


def test_reads_d4rl_layout(tmp_path: Path) -> None:
    items = d4rl_items()
    data = load_dataset(write_h5(tmp_path / "hopper-medium-v2.hdf5", items))
    assert data.source == "d4rl" and data.path == str(tmp_path / "hopper-medium-v2.hdf5")
    assert len(data) == 12 and data.obs_dim == 11 and data.act_dim == 3
    assert data.observations.dtype == np.float32 and data.terminals.dtype == bool
    np.testing.assert_allclose(data.observations, items["observations"], rtol=1e-6)
    np.testing.assert_allclose(data.next_observations, items["next_observations"], rtol=1e-6)
    assert np.flatnonzero(data.terminals).tolist() == [4] and np.flatnonzero(data.timeouts).tolist() == [11]
    assert set(data.infos) == {"qpos", "action_log_probs"}
    np.testing.assert_array_equal(data.infos["qpos"], items["infos/qpos"])
    assert data.metadata == {"algorithm": "SAC", "iteration": 1000000, "discount": 0.99}
    assert type(data.metadata["iteration"]) is int and type(data.metadata["discount"]) is float

    summary = summarize(data)  # env from the file name
    assert summary["env_id"] == "Hopper-v5" and summary["quality"] is None
    assert summary["episodes"] == 2 and summary["transitions"] == 12
    assert summary["return_min"] == sum(range(5)) and summary["return_max"] == sum(range(5, 12))
    assert summary["length_min"] == 5 and summary["length_max"] == 7 and summary["length_mean"] == 6
    assert summary["normalized_mean"] == pytest.approx(ENVS["Hopper-v5"].normalized(33.0))
    assert summary["normalized_note"].startswith("D4RL-like: D4RL constants on Hopper-v5")


def test_reads_2d_reward_and_flag_columns(tmp_path: Path) -> None:
    items = d4rl_items()
    for k in ("rewards", "terminals", "timeouts"):
        items[k] = items[k][:, None]
    data = load_dataset(write_h5(tmp_path / "d.hdf5", items))
    assert data.rewards.shape == data.terminals.shape == (12,)


def test_ssmc_round_trip_keeps_every_field(tmp_path: Path, make_offline) -> None:
    data = make_offline(lengths=(4, 6, 3), finished=False)
    data.infos = {"qpos": np.arange(26.0).reshape(13, 2)}
    data.metadata = {"env_id": "Pendulum-v1", "quality": "expert", "seed": 3, "noise": 0.5}
    path = write_d4rl(tmp_path / "sub" / "pendulum-expert.hdf5", data)
    back = load_dataset(path)
    assert back.source == "ssmc" and back.path == str(path)
    for k in ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations"):
        np.testing.assert_array_equal(getattr(back, k), getattr(data, k), err_msg=k)
    np.testing.assert_array_equal(back.infos["qpos"], data.infos["qpos"])
    assert back.metadata == {**data.metadata, "ssmc_format": SSMC_FORMAT}
    summary = summarize(back)
    assert summary["episodes"] == 3 and summary["quality"] == "expert" and summary["env_id"] == "Pendulum-v1"
    assert summary["normalized_note"].startswith("reference returns of Pendulum-v1")


def test_failed_write_leaves_no_file(tmp_path: Path, make_offline) -> None:
    data = make_offline()
    data.metadata = {"unstorable": object()}
    with pytest.raises(TypeError):
        write_d4rl(tmp_path / "new.hdf5", data)
    assert list(tmp_path.iterdir()) == []

    old = write_d4rl(tmp_path / "old.hdf5", make_offline(lengths=(2,)))
    with pytest.raises(TypeError):
        write_d4rl(old, data)
    assert [p.name for p in tmp_path.iterdir()] == ["old.hdf5"] and len(load_dataset(old)) == 2


def _check_minari(data: OfflineData, fx) -> None:
    import minari

    n = fx.episodes * fx.steps
    assert data.source == "minari" and len(data) == n and data.obs_dim == 3 and data.act_dim == 1
    assert data.env_id == "Pendulum-v1" and data.metadata["quality"] == "tiny"
    assert data.metadata["dataset_id"] == fx.dataset_id and data.metadata["algorithm_name"] == "random"
    assert np.flatnonzero(data.timeouts).tolist() == [fx.steps * (i + 1) - 1 for i in range(fx.episodes)]
    assert not data.terminals.any()
    episodes = list(minari.MinariDataset(str(fx.directory / "data")).iterate_episodes())
    np.testing.assert_array_equal(data.observations, np.concatenate([e.observations[:-1] for e in episodes]))
    np.testing.assert_array_equal(
        data.next_observations, np.concatenate([e.observations[1:] for e in episodes])
    )
    np.testing.assert_array_equal(data.actions, np.concatenate([e.actions for e in episodes]))
    np.testing.assert_allclose(data.rewards, np.concatenate([e.rewards for e in episodes]), rtol=1e-6)


def test_reads_minari_directory(minari_pendulum) -> None:
    data = load_dataset(minari_pendulum.directory)
    _check_minari(data, minari_pendulum)
    assert data.path == str(minari_pendulum.directory)
    assert len(load_dataset(minari_pendulum.directory / "data")) == len(data)  # data/ itself works too


def test_reads_minari_id_from_local_root(minari_pendulum, monkeypatch) -> None:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_pendulum.root))
    data = load_dataset(minari_pendulum.dataset_id)
    _check_minari(data, minari_pendulum)
    summary = summarize(data)
    assert summary["source"] == "minari" and summary["episodes"] == 3 and summary["env_id"] == "Pendulum-v1"

    msg = error_of("ssmctest/pendulum/absent-v0")
    assert "no such file, nor a local Minari dataset" in msg and str(minari_pendulum.root) in msg


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "expect"),
    [
        ({"terminals": None, "timeouts": None}, "missing required dataset(s) terminals, timeouts"),
        ({"actions": np.zeros((11, 3))}, "mismatched lengths: observations 12, actions 11"),
        ({"infos/qpos": np.zeros((5, 6))}, "infos/qpos 5"),
        (
            {"observations": np.where(np.arange(12)[:, None] == 4, np.nan, 1.0) * np.ones((12, 11))},
            "NaN in observations at row 4",
        ),
        ({"rewards": np.where(np.arange(12) == 7, np.inf, 0.0)}, "inf in rewards at row 7"),
        (
            {"actions": np.where(np.arange(12)[:, None] >= 9, -np.inf, 0.0) * np.ones((12, 3))},
            "inf in actions at row 9 (first of 3 bad rows)",
        ),
        ({"rewards": np.zeros((12, 2))}, "rewards must be 1-D (N,), got shape (12, 2)"),
        ({"observations": np.zeros(12)}, "observations must be 2-D (N, dim), got shape (12,)"),
        ({"terminals": np.full(12, 0.5)}, "terminals must hold 0/1 flags, got 0.5 at row 0"),
        ({"next_observations": np.zeros((12, 4))}, "next_observations shape (12, 4) differs"),
    ],
)
def test_bad_contents_are_named(tmp_path: Path, override: dict[str, Any], expect: str) -> None:
    path = write_h5(tmp_path / "bad.hdf5", d4rl_items(**override))
    msg = error_of(path)
    assert msg.startswith(f"{path}: ") and expect in msg


def test_empty_dataset(tmp_path: Path) -> None:
    items = {k: np.zeros((0, 2)) for k in ("observations", "actions")}
    items.update({k: np.zeros(0) for k in ("rewards", "terminals", "timeouts")})
    path = write_h5(tmp_path / "empty.hdf5", items)
    assert error_of(path) == f"{path}: empty dataset (no transitions)"


def test_nonexistent_path(tmp_path: Path) -> None:
    assert error_of(tmp_path / "nope.hdf5") == f"{tmp_path / 'nope.hdf5'}: no such file or directory"


def test_not_hdf5(tmp_path: Path) -> None:
    path = tmp_path / "notes.hdf5"
    path.write_text("observations,actions\n1,2\n")
    assert error_of(path) == f"{path}: not an HDF5 file"


def test_truncated_file(tmp_path: Path, make_offline) -> None:
    path = write_d4rl(tmp_path / "cut.hdf5", make_offline(lengths=(200, 300)))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    assert "corrupt or truncated HDF5 file" in error_of(path)


def test_directory_that_is_not_minari(tmp_path: Path) -> None:
    assert "not a Minari dataset (no data/metadata.json)" in error_of(tmp_path)


def test_minari_main_data_file_gets_a_hint(minari_pendulum) -> None:
    msg = error_of(minari_pendulum.directory / "data" / "main_data.hdf5")
    assert "missing required dataset(s) observations" in msg and "pass the dataset directory" in msg


def test_corrupt_minari_directory(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "metadata.json").write_text("{not json")
    assert "cannot read Minari dataset" in error_of(tmp_path)


def test_unknown_env_override_is_a_config_error(make_offline) -> None:
    with pytest.raises(ConfigError):
        summarize(make_offline(), env="NoSuchEnv-v0")


# -- summary and CLI ----------------------------------------------------------------------------


def test_summary_without_known_env(make_offline) -> None:
    data = make_offline()
    data.metadata = {}
    summary = summarize(data)
    assert summary["env_id"] is None and summary["normalized_mean"] is None
    assert "pass --env" in summary["normalized_note"]
    assert summarize(data, env="hopper")["env_id"] == "Hopper-v5"
    assert "environment      unknown" in format_summary(summary)


def test_cli_inspect_table_and_json(tmp_path: Path, make_offline) -> None:
    path = write_d4rl(tmp_path / "walker2d-medium.hdf5", make_offline(lengths=(5, 7)))
    runner = CliRunner()
    table = runner.invoke(cli, ["data", "inspect", str(path)])
    assert table.exit_code == 0, table.output
    assert "Pendulum-v1" in table.stdout and "12 in 2 episodes" in table.stdout

    res = runner.invoke(cli, ["data", "inspect", str(path), "--json", "--env", "walker2d"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["env_id"] == "Walker2d-v5" and summary["source"] == "ssmc" and summary["episodes"] == 2
    assert summary["normalized_note"].startswith("D4RL-like")
    assert set(summary) >= {
        "transitions",
        "obs_dim",
        "act_dim",
        "return_mean",
        "length_mean",
        "normalized_mean",
    }


def test_cli_inspect_bad_file_exits_2_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.hdf5"
    path.write_bytes(b"\x00" * 100)
    res = CliRunner().invoke(cli, ["data", "inspect", str(path)])
    assert res.exit_code == 2
    assert res.stderr == f"error: {path}: not an HDF5 file\n" and res.stdout == ""
