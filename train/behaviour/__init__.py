"""Behaviour policies that generate ssmc's offline datasets.

MuJoCo tasks: linear policies trained with Augmented Random Search V2-t (Mania, Guy, Recht,
"Simple random search of static linear policies is competitive for reinforcement learning",
NeurIPS 2018), saved as snapshots along the learning curve (``PolicyCheckpoint``) so that
every D4RL quality comes from one run. Pendulum-v1: a scripted swing-up controller
(``pendulum.PendulumController``) with torque noise per quality.
"""

from __future__ import annotations

import os

from ssmc.train.behaviour.ars import ARS_CONFIGS, ARSConfig, evaluate, train_ars
from ssmc.train.behaviour.checkpoint import (
    PolicyCheckpoint,
    Snapshot,
    cache_dir,
    find_checkpoint,
    policy_name,
)
from ssmc.train.behaviour.policy import LinearPolicy

__all__ = [
    "ARS_CONFIGS",
    "ARSConfig",
    "LinearPolicy",
    "PolicyCheckpoint",
    "Snapshot",
    "cache_dir",
    "evaluate",
    "find_checkpoint",
    "get_checkpoint",
    "policy_name",
    "train_ars",
]


def get_checkpoint(env_id: str, seed: int = 0, progress: bool = True) -> tuple[PolicyCheckpoint, str]:
    """The behaviour checkpoint for (env, seed) and its source: shipped, cached, or trained now.

    Training uses ``ARS_CONFIGS[env_id]`` on at most 2 processes (minutes on a laptop CPU) and
    caches the result under ``cache_dir()``; the run is deterministic given ``seed``.
    """
    found = find_checkpoint(env_id, seed)
    if found is not None:
        return found
    ckpt = train_ars(env_id, seed, workers=min(2, os.cpu_count() or 1), progress=progress)
    path = ckpt.save(cache_dir())
    return ckpt, f"trained, cached at {path}"

