"""`ssmc quickstart`: the README's first command, end to end on a small budget."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ssmc.cli import cli


def _quickstart(tmp_path, steps: str, episodes: str):
    r = CliRunner().invoke(cli, ["quickstart", "--workdir", str(tmp_path), "--steps", steps, "--episodes", episodes],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r


def test_quickstart_collects_trains_and_evaluates(tmp_path):
    r = _quickstart(tmp_path, "20", "1")
    data = tmp_path / "data" / "pendulum-v1-medium.hdf5"
    ck = tmp_path / "runs" / "quickstart-dmm"
    assert data.exists() and (ck / "model.safetensors").exists() and (ck / "train_log.csv").exists()
    assert json.loads((ck / "config.json").read_text())["model"] == "dmm"
    assert str(data) in r.stdout and str(ck) in r.stdout and "normalised" in r.stdout


@pytest.mark.slow
def test_quickstart_default_budget_learns_the_task(tmp_path):
    """With the default budget the DMM clearly beats a random policy (normalised 0)."""
    r = _quickstart(tmp_path, "1500", "5")
    score = float(r.stdout.split("score       normalised ")[1].split()[0])
    assert score > 30, r.stdout
