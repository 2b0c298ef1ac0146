"""The environments ssmc knows: ids, aliases and the reference returns that normalise scores.

MuJoCo tasks use D4RL's constants (random and expert returns of D4RL's v2 datasets, the
numbers papers report ×100). ssmc runs them on gymnasium v5 / mujoco 3+ with behaviour data
it collects itself, so such scores are "D4RL-like": computed with D4RL's constants, not
comparable one-to-one with published tables. The fast task's constants are ssmc's own
(a uniform-random policy and the scripted expert on this environment).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ssmc.errors import ConfigError


@dataclass(frozen=True)
class EnvSpec:
    env_id: str  # gymnasium id
    ref_min: float  # return that normalises to 0
    ref_max: float  # return that normalises to 100
    ref_source: str  # where ref_min/ref_max come from
    max_episode_steps: int
    aliases: tuple[str, ...] = ()
    fast: bool = False  # small enough for CI and the quickstart

    def normalized(self, ret: float) -> float:
        """Score in the papers' convention: 100 * (ret - random) / (expert - random)."""
        return 100.0 * (float(ret) - self.ref_min) / (self.ref_max - self.ref_min)


ENVS: dict[str, EnvSpec] = {
    s.env_id: s
    for s in (
        EnvSpec("Hopper-v5", -20.272305, 3234.3, "D4RL", 1000, ("hopper",)),
        EnvSpec("HalfCheetah-v5", -280.178953, 12135.0, "D4RL", 1000, ("halfcheetah",)),
        EnvSpec("Walker2d-v5", 1.629008, 4592.3, "D4RL", 1000, ("walker2d", "walker")),
        EnvSpec("Pendulum-v1", -1246.0, -138.0, "ssmc (random / scripted expert)", 200, ("pendulum",), fast=True),
    )
}


def resolve_env(name: str) -> EnvSpec:
    """Map a gymnasium id, a short name or a D4RL/Minari dataset name to its EnvSpec.

    ``Hopper-v5``, ``hopper``, ``hopper-medium-v2`` and ``mujoco/hopper/expert-v0`` all give Hopper-v5.
    """
    if name in ENVS:
        return ENVS[name]
    key = name.lower()
    for spec in ENVS.values():
        if key == spec.env_id.lower():
            return spec
        for alias in spec.aliases:
            if re.search(rf"(^|[/_\-\s]){re.escape(alias)}($|[/_\-\s.])", key):
                return spec
    known = ", ".join(ENVS)
    raise ConfigError(f"unknown environment {name!r}; known: {known}")


def guess_env(*hints: str | None) -> EnvSpec | None:
    """The first hint (metadata env name, file name, ...) that names a known env, else None."""
    for h in hints:
        if not h:
            continue
        try:
            return resolve_env(str(h))
        except ConfigError:
            continue
    return None
