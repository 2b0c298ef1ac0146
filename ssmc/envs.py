"""The environments ssmc knows: ids, aliases and the reference returns that normalise scores.

Shared by every stage (training, ``ssmc run``/``verify``/``hil``, tools); imports neither torch nor the
model code, and gymnasium only inside ``make_env``. ssmc's own T-maze (ssmc/tmaze.py) is registered with
gymnasium on the first ``make_env("ssmc/...")``.

MuJoCo tasks use D4RL's constants (random and expert returns of D4RL's v2 datasets, the
numbers papers report ×100). ssmc runs them on gymnasium v5 / mujoco 3+ with behaviour data
it collects itself, so such scores are "D4RL-like": computed with D4RL's constants, not
comparable one-to-one with published tables. The fast task's constants are ssmc's own
(a uniform-random policy and the scripted expert on this environment).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Any

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


#: Hopper-v5's observation and action sizes: the configuration the papers' parameter counts refer to
#: (``ssmc models``, tools/claims.py, docs/models.md).
HOPPER_DIMS = (11, 3)

# ssmc/TMaze-k{k}-v0 (ssmc.tmaze): return 1 = the cued turn, 0.5 = chance (a uniform guess). The turn
# ends every episode at step k + 1; the time limit k + 2 is never reached (no episode is cut as a timeout).
TMAZE_LENGTHS = (5, 10, 20, 40, 80, 160)

ENVS: dict[str, EnvSpec] = {
    s.env_id: s
    for s in (
        EnvSpec("Hopper-v5", -20.272305, 3234.3, "D4RL", 1000, ("hopper",)),
        EnvSpec("HalfCheetah-v5", -280.178953, 12135.0, "D4RL", 1000, ("halfcheetah",)),
        EnvSpec("Walker2d-v5", 1.629008, 4592.3, "D4RL", 1000, ("walker2d", "walker")),
        # Mean returns over 1000 episodes: uniform random actions / the scripted expert with its
        # torque noise (ssmc.train.behaviour.pendulum); `python tools/collect_all.py pendulum-refs`.
        EnvSpec("Pendulum-v1", -1225.4, -152.0, "ssmc (random / scripted expert)", 200, ("pendulum",), fast=True),
        *(EnvSpec(f"ssmc/TMaze-k{k}-v0", 0.5, 1.0, "ssmc (chance / always the cued turn)", k + 2, fast=True)
          for k in TMAZE_LENGTHS),
        EnvSpec("ssmc/TMaze-v0", 0.5, 1.0, "ssmc (chance / always the cued turn)", 12, fast=True),  # k = 10
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


def make_env(env: EnvSpec | str, **kwargs: Any) -> Any:
    """A gymnasium env with the spec's time limit, created without littering the cwd.

    ``env`` is an EnvSpec, a name ``resolve_env`` knows, or any other gymnasium id (which keeps
    gymnasium's own time limit). MuJoCo reports compiler warnings (HalfCheetah's deprecated
    ``settotalmass``) by appending to ``MUJOCO_LOG.TXT`` in the current directory; while the
    model loads they are routed to Python's ``warnings`` instead (the known deprecation is dropped).
    """
    import gymnasium as gym

    if isinstance(env, str) and guess_env(env) is not None:
        env = resolve_env(env)
    if isinstance(env, EnvSpec):
        kwargs.setdefault("max_episode_steps", env.max_episode_steps)
        env = env.env_id
    if env.startswith("ssmc/"):
        import ssmc.tmaze  # noqa: F401  (registers ssmc's own gymnasium ids)
    try:
        import mujoco
    except ImportError:  # gymnasium without the mujoco extra: classic-control envs still work
        return gym.make(env, **kwargs)

    def _warn(msg: str) -> None:
        if "settotalmass" not in msg:
            warnings.warn(f"mujoco: {msg}", RuntimeWarning, stacklevel=2)

    previous = mujoco.get_mju_user_warning()
    mujoco.set_mju_user_warning(_warn)
    try:
        return gym.make(env, **kwargs)
    finally:
        mujoco.set_mju_user_warning(previous)
