"""Offline RL datasets: one in-memory container, D4RL-layout HDF5 on disk.

``OfflineData`` is the flat transition layout D4RL made standard: row i is the transition
(observations[i], actions[i], rewards[i], terminals[i], timeouts[i]); an episode ends at a
row whose terminal (the MDP ended) or timeout (the time limit cut it) flag is set. Every
reader in ssmc (D4RL HDF5, Minari, ssmc's own files) returns this container, and ssmc's
collector writes it back as D4RL-layout HDF5, so every reader is exercised by our own data.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ssmc.errors import DatasetError

# Format tag written into metadata/ of files ssmc collects; readers use it to recognise them.
SSMC_FORMAT = "ssmc-d4rl/1"


@dataclass
class OfflineData:
    """Flat transitions in D4RL layout.

    observations (N, obs_dim) float32, actions (N, act_dim) float32, rewards (N,) float32,
    terminals (N,) bool, timeouts (N,) bool; optional next_observations (N, obs_dim);
    infos maps a name to an (N, ...) array; metadata holds scalars/strings (env_id, quality, ...).
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    next_observations: np.ndarray | None = None
    infos: dict[str, np.ndarray] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = "d4rl"  # "d4rl", "minari" or "ssmc": which reader produced it

    @property
    def env_id(self) -> str | None:
        v = self.metadata.get("env_id")
        return str(v) if v is not None else None

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.actions.shape[1])

    def __len__(self) -> int:
        return int(self.observations.shape[0])


def _atomic_target(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)


def write_d4rl(path: str | os.PathLike, data: OfflineData, compression: str | None = "gzip") -> Path:
    """Write ``data`` as D4RL-layout HDF5, atomically: a temporary file, then a rename.

    Metadata values go to ``metadata/<key>`` datasets (D4RL's own convention); ssmc's format
    tag is added so readers know the file's origin.
    """
    import h5py

    path = Path(path)
    fd, tmp = _atomic_target(path)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            kw = {"compression": compression} if compression else {}
            f.create_dataset("observations", data=np.asarray(data.observations, np.float32), **kw)
            f.create_dataset("actions", data=np.asarray(data.actions, np.float32), **kw)
            f.create_dataset("rewards", data=np.asarray(data.rewards, np.float32), **kw)
            f.create_dataset("terminals", data=np.asarray(data.terminals, bool), **kw)
            f.create_dataset("timeouts", data=np.asarray(data.timeouts, bool), **kw)
            if data.next_observations is not None:
                f.create_dataset("next_observations", data=np.asarray(data.next_observations, np.float32), **kw)
            for k, v in data.infos.items():
                f.create_dataset(f"infos/{k}", data=np.asarray(v), **kw)
            meta = {"ssmc_format": SSMC_FORMAT, **data.metadata}
            for k, v in meta.items():
                f.create_dataset(f"metadata/{k}", data=v)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
