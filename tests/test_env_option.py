"""Datasets that do not name their environment (D4RL's HDF5 files never do).

`ssmc train --env ENV_ID` records the environment in the checkpoint, compile carries it into the artifact,
and the artifact then goes to a `ssmc verify` verdict with no further flag. Without it, every command that
rolls out says, in one line, which option to pass, and that option exists.
"""

from __future__ import annotations

import json
import re

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from ssmc.artifact import load_manifest
from ssmc.cli import cli
from ssmc.train.collect import collect
from ssmc.train.dataset import load_dataset

SMALL_DMM = ["--set", "K=4", "--set", "hidden=16", "--set", "n_layer=1", "--set", "window=3", "--set", "d_state=8"]
ROLLOUT_COMMANDS = ("eval", "run", "verify", "hil")


def _invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.fixture(scope="module")
def d4rl_file(tmp_path_factory):
    """Pendulum-v1 transitions in D4RL's layout, with nothing that names the environment (no metadata, a
    neutral file name), as D4RL's own files are."""
    root = tmp_path_factory.mktemp("d4rl")
    src = load_dataset(collect("Pendulum-v1", "medium", out=str(root / "collected.hdf5"), size=1000, seed=0,
                               progress=False))
    path = root / "d4rl-layout.hdf5"
    with h5py.File(path, "w") as f:
        for key in ("observations", "actions", "rewards", "terminals", "timeouts"):
            f.create_dataset(key, data=np.asarray(getattr(src, key)))
    assert load_dataset(str(path)).env_id is None
    return path


def test_d4rl_file_trained_with_env_goes_to_a_verify_verdict(d4rl_file, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = _invoke("train", "--model", "dmm", "--dataset", str(d4rl_file), "--env", "Pendulum-v1", "--out", "runs/dmm",
                "--steps", "5", "--warmup", "1", "--quiet", *SMALL_DMM)
    assert r.exit_code == 0, r.output
    assert "does not name its environment" not in r.output
    assert json.loads((tmp_path / "runs/dmm/config.json").read_text())["extra"]["env_id"] == "Pendulum-v1"

    r = _invoke("compile", "--model", "runs/dmm", "--target", "host", "--out", "dmm.ssmc")
    assert r.exit_code == 0, r.output
    assert load_manifest(tmp_path / "dmm.ssmc").env_id == "Pendulum-v1"

    r = _invoke("verify", "dmm.ssmc", "--episodes", "1", "--json")
    assert r.exit_code == 0, r.output
    verdict = json.loads(r.stdout)
    assert verdict["passed"] is True and verdict["runtime_rollout"]["env_id"] == "Pendulum-v1"
    assert {c["name"]: c["passed"] for c in verdict["checks"]}["score"] is True


def test_without_env_each_rollout_names_an_option_that_exists(d4rl_file, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = _invoke("train", "--model", "dmm", "--dataset", str(d4rl_file), "--out", "runs/noenv",
                "--steps", "2", "--warmup", "1", "--quiet", *SMALL_DMM)
    assert r.exit_code == 0, r.output
    assert "does not name its environment: pass --env ENV_ID" in r.output
    assert json.loads((tmp_path / "runs/noenv/config.json").read_text())["extra"]["env_id"] is None

    r = _invoke("eval", "runs/noenv", "--episodes", "1")
    assert r.exit_code == 2
    line = r.output.strip()
    assert line.startswith("error: ") and "\n" not in line and "pass --env ENV_ID" in line

    r = _invoke("eval", "runs/noenv", "--env", "Pendulum-v1", "--episodes", "1", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["env_id"] == "Pendulum-v1"

    for command in ("train", *ROLLOUT_COMMANDS):  # "pass --env": the option is there on every one of them
        r = _invoke(command, "--help")
        assert r.exit_code == 0 and re.search(r"^\s+--env\b", r.output, re.M), (command, r.output)


def test_the_artifacts_missing_env_error_names_the_option(tmp_path) -> None:
    from ssmc.errors import ConfigError
    from ssmc.runtime.run import artifact_env

    class NoEnv:
        env_id = None

    assert artifact_env(NoEnv(), "Pendulum-v1") == "Pendulum-v1"
    with pytest.raises(ConfigError, match=r"pass --env ENV_ID"):
        artifact_env(NoEnv(), None)
