"""Fixtures shared by the test modules: tiny synthetic datasets and a tiny local Minari dataset."""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from ssmc.train.dataset import OfflineData


def _make_offline(
    lengths: Sequence[int] = (3, 5, 2),
    obs_dim: int = 3,
    act_dim: int = 2,
    finished: bool = True,
    seed: int = 0,
) -> OfflineData:
    """Episodes of the given lengths, alternately terminated and timed out.

    observations[:, 0] is the row index and rewards are random, so tests can tell rows apart;
    with ``finished=False`` the last episode has no end flag (a collector stopped mid-episode).
    """
    rng = np.random.default_rng(seed)
    n = int(sum(lengths))
    obs = rng.normal(size=(n, obs_dim)).astype(np.float32)
    obs[:, 0] = np.arange(n)
    ends = np.cumsum(lengths) - 1
    terminals, timeouts = np.zeros(n, bool), np.zeros(n, bool)
    terminals[ends[0::2]] = True
    timeouts[ends[1::2]] = True
    if not finished:
        terminals[ends[-1]] = timeouts[ends[-1]] = False
    return OfflineData(
        observations=obs,
        actions=rng.normal(size=(n, act_dim)).astype(np.float32),
        rewards=rng.normal(size=n).astype(np.float32),
        terminals=terminals,
        timeouts=timeouts,
        next_observations=np.roll(obs, -1, axis=0),
        metadata={"env_id": "Pendulum-v1", "quality": "medium"},
    )


@pytest.fixture
def make_offline() -> Callable[..., OfflineData]:
    """A factory for small synthetic ``OfflineData`` (see ``_make_offline``)."""
    return _make_offline


@dataclass(frozen=True)
class MinariFixture:
    root: Path  # what MINARI_DATASETS_PATH must point to
    dataset_id: str
    directory: Path  # the dataset's own directory (holds data/)
    episodes: int
    steps: int  # per episode


@pytest.fixture(scope="session")
def minari_pendulum(tmp_path_factory: pytest.TempPathFactory) -> MinariFixture:
    """A 3-episode x 10-step Pendulum-v1 Minari dataset, recorded offline into a temporary root."""
    import gymnasium as gym
    import minari  # a test dependency ([test] extra): missing, the Minari reader tests must fail, not skip

    root = tmp_path_factory.mktemp("minari")
    dataset_id, episodes, steps = "ssmctest/pendulum/tiny-v0", 3, 10
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Minari warns about every optional field left out
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        env = minari.DataCollector(gym.make("Pendulum-v1", max_episode_steps=steps))
        env.action_space.seed(0)
        for ep in range(episodes):
            env.reset(seed=ep)
            done = False
            while not done:
                _, _, terminated, truncated, _ = env.step(env.action_space.sample())
                done = terminated or truncated
        env.create_dataset(dataset_id=dataset_id, algorithm_name="random")
        env.close()
    return MinariFixture(root, dataset_id, root / dataset_id, episodes, steps)


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensor ops with two OpenMP threads on a shared 2-core machine stall at every barrier (50x
    slower, measured); every test uses one thread and restore the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def require_tools(*names: str) -> None:
    """Skip the calling test when a command-line tool it needs is missing, with the reason; under CI
    (``CI`` set), where .ci/run installs every tool, a missing one is a failure instead."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        msg = f"{', '.join(missing)} not installed: run .ci/install-toolchains.sh"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
