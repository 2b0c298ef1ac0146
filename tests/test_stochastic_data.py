"""The stochastic medium quality (medium policy + per-episode action noise) and the return spread that
`ssmc data inspect` reports."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from ssmc.cli import cli
from ssmc.errors import ConfigError
from ssmc.train.collect import STOCHASTIC, collect
from ssmc.train.dataset import load_dataset
from ssmc.train.trajectory import episode_returns


@pytest.fixture(scope="module")
def hopper_pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("stochastic")
    noisy = collect("Hopper-v5", STOCHASTIC, out=d / "noisy.hdf5", size=6000, progress=False)
    plain = collect("Hopper-v5", "medium", out=d / "medium.hdf5", size=6000, progress=False)
    return noisy, plain


def test_stochastic_medium_spreads_the_returns_that_medium_does_not(hopper_pair):
    noisy, plain = (episode_returns(load_dataset(str(p))) for p in hopper_pair)
    spread = lambda r: np.percentile(r, 95) - np.percentile(r, 5)  # noqa: E731
    assert spread(noisy) > 5 * spread(plain) and spread(noisy) > 200
    data = load_dataset(str(hopper_pair[0]))
    assert np.all(np.abs(data.actions) <= 1.0)  # the noise is clipped to the action bounds
    assert "action noise" in str(data.metadata["behaviour"])


def test_stochastic_medium_is_deterministic_given_the_seed(tmp_path):
    a = load_dataset(str(collect("Hopper-v5", STOCHASTIC, out=tmp_path / "a.hdf5", size=500, progress=False)))
    b = load_dataset(str(collect("Hopper-v5", STOCHASTIC, out=tmp_path / "b.hdf5", size=500, progress=False)))
    np.testing.assert_array_equal(a.actions, b.actions)


def test_stochastic_quality_is_refused_where_there_is_no_medium_policy(tmp_path):
    with pytest.raises(ConfigError, match="MuJoCo"):
        collect("Pendulum-v1", STOCHASTIC, out=tmp_path / "x.hdf5", size=100, progress=False)


def test_inspect_reports_the_normalised_spread(hopper_pair):
    res = CliRunner().invoke(cli, ["data", "inspect", str(hopper_pair[0]), "--json"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.output)
    r = episode_returns(load_dataset(str(hopper_pair[0])))
    assert s["return_p50"] == pytest.approx(float(np.median(r)))
    assert s["normalized_p5"] < s["normalized_p50"] < s["normalized_p95"]
    # normalised with D4RL's hopper constants (random -20.272305, expert 3234.3)
    assert s["normalized_p95"] == pytest.approx(100 * (np.percentile(r, 95) + 20.272305) / (3234.3 + 20.272305))
    text = CliRunner().invoke(cli, ["data", "inspect", str(hopper_pair[0])]).output
    assert "p5 / median / p95" in text
