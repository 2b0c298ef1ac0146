"""Behaviour-policy checkpoints: snapshots along one ARS learning curve, safetensors + JSON.

One training run gives every data quality without re-training: ``expert`` is the best
snapshot, ``medium`` the one whose evaluation return is closest to a fraction (1/3, as D4RL)
of the expert's, and ``medium-replay`` replays the snapshots before ``medium``.

On disk, ``<name>.safetensors`` holds the arrays (per snapshot: the weights M and the
observation normaliser mu, sigma; float32) and ``<name>.json`` the rest (env, seed, ARS
config, each snapshot's iteration, env steps, wall time and evaluation return). No pickle.

Lookup order for (env, seed): the checkpoints shipped in ``ssmc/train/behaviour/policies``
(read through importlib.resources), then the user cache ``$SSMC_CACHE/policies`` (default
``~/.cache/ssmc/policies``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ssmc.errors import ConfigError
from ssmc.fsutil import atomic_file
from ssmc.train.behaviour.policy import LinearPolicy

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

FORMAT = "ssmc-behaviour/1"


@dataclass(frozen=True)
class Snapshot:
    """The learner's policy at one point of training, with its deterministic evaluation."""

    policy: LinearPolicy
    iteration: int  # ARS iterations done when taken
    env_steps: int  # training env steps done when taken (evaluation rollouts not counted)
    episodes: int  # training episodes done when taken
    wall_time_s: float
    eval_return: float  # mean undiscounted return of the deterministic policy
    eval_return_std: float

    def info(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "env_steps": self.env_steps,
            "episodes": self.episodes,
            "wall_time_s": round(self.wall_time_s, 3),
            "eval_return": self.eval_return,
            "eval_return_std": self.eval_return_std,
        }


@dataclass
class PolicyCheckpoint:
    """A learning curve of linear policies for one (env, seed)."""

    env_id: str
    seed: int
    snapshots: list[Snapshot]
    expert_index: int
    medium_index: int
    config: dict[str, Any]  # the training hyper-parameters (ARSConfig as a dict)
    train_env_steps: int
    train_wall_time_s: float
    extra: dict[str, Any] = field(default_factory=dict)  # algorithm name, versions, eval seeds

    @property
    def name(self) -> str:
        return policy_name(self.env_id, self.seed)

    @property
    def expert(self) -> Snapshot:
        return self.snapshots[self.expert_index]

    @property
    def medium(self) -> Snapshot:
        return self.snapshots[self.medium_index]

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``<name>.safetensors`` and ``<name>.json`` (each atomically); return the JSON path."""
        from safetensors.numpy import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {
            "weights": np.stack([s.policy.weights for s in self.snapshots]).astype(np.float32),
            "obs_mean": np.stack([s.policy.obs_mean for s in self.snapshots]).astype(np.float32),
            "obs_std": np.stack([s.policy.obs_std for s in self.snapshots]).astype(np.float32),
        }
        pol = self.snapshots[0].policy
        meta = {
            "format": FORMAT,
            "env_id": self.env_id,
            "seed": self.seed,
            "policy": "linear",
            "obs_dim": pol.obs_dim,
            "act_dim": pol.act_dim,
            "action_low": pol.low.tolist(),
            "action_high": pol.high.tolist(),
            "obs_normaliser": "running mean/std of all training states (ARS V2); "
            "per snapshot in tensors obs_mean, obs_std",
            "tensors": f"{self.name}.safetensors",
            "config": self.config,
            "train_env_steps": self.train_env_steps,
            "train_wall_time_s": round(self.train_wall_time_s, 1),
            "expert_snapshot": self.expert_index,
            "medium_snapshot": self.medium_index,
            **self.extra,
            "snapshots": [s.info() for s in self.snapshots],
        }
        st_path = directory / f"{self.name}.safetensors"
        json_path = directory / f"{self.name}.json"
        with atomic_file(st_path) as tmp:
            save_file(tensors, str(tmp))
        with atomic_file(json_path) as tmp:
            tmp.write_text(json.dumps(meta, indent=1) + "\n")
        return json_path

    @classmethod
    def load(cls, path: str | os.PathLike) -> PolicyCheckpoint:
        """Read a checkpoint from its JSON file (the tensors file sits beside it)."""
        path = Path(path)
        return cls._load_from(path.parent, path.stem)

    @classmethod
    def _load_from(cls, directory: Path | Traversable, stem: str) -> PolicyCheckpoint:
        from safetensors.numpy import load

        meta = json.loads((directory / f"{stem}.json").read_text())
        if meta.get("format") != FORMAT:
            raise ConfigError(f"{directory}/{stem}.json: not an ssmc behaviour-policy checkpoint ({FORMAT})")
        tensors = load((directory / meta["tensors"]).read_bytes())
        low = np.asarray(meta.pop("action_low"), np.float64)
        high = np.asarray(meta.pop("action_high"), np.float64)
        snaps = [
            Snapshot(
                policy=LinearPolicy(tensors["weights"][i], tensors["obs_mean"][i], tensors["obs_std"][i], low, high),
                **info,
            )
            for i, info in enumerate(meta.pop("snapshots"))
        ]
        for derived in ("format", "policy", "obs_dim", "act_dim", "obs_normaliser", "tensors"):
            meta.pop(derived)
        return cls(
            env_id=meta.pop("env_id"),
            seed=int(meta.pop("seed")),
            snapshots=snaps,
            expert_index=int(meta.pop("expert_snapshot")),
            medium_index=int(meta.pop("medium_snapshot")),
            config=meta.pop("config"),
            train_env_steps=int(meta.pop("train_env_steps")),
            train_wall_time_s=float(meta.pop("train_wall_time_s")),
            extra=meta,
        )


def policy_name(env_id: str, seed: int) -> str:
    """File stem of the checkpoint for (env, seed), e.g. ``hopper-v5-s0``."""
    return f"{env_id.lower()}-s{seed}"


def cache_dir() -> Path:
    """Where policies trained on this machine are kept: ``$SSMC_CACHE/policies``."""
    root = os.environ.get("SSMC_CACHE") or Path.home() / ".cache" / "ssmc"
    return Path(root) / "policies"


def shipped_dir() -> Traversable:
    """The checkpoints shipped inside the package."""
    return resources.files("ssmc.train.behaviour") / "policies"


def find_checkpoint(env_id: str, seed: int) -> tuple[PolicyCheckpoint, str] | None:
    """The checkpoint for (env, seed) and where it came from ("shipped" or its cache path), or None."""
    stem = policy_name(env_id, seed)
    if (shipped_dir() / f"{stem}.json").is_file():
        return PolicyCheckpoint._load_from(shipped_dir(), stem), "shipped"
    cached = cache_dir() / f"{stem}.json"
    if cached.is_file():
        return PolicyCheckpoint.load(cached), str(cached)
    return None
