"""The controller-agnostic rollout loop every stage shares: training's PyTorch evaluation, ``ssmc run``
(the C runtime), ``ssmc verify`` and the tools all call ``rollout`` with two callables, so a PyTorch policy and
the compiled runtime differ only in who computes the action.

    res = rollout(policy.act, policy.reset, "Hopper-v5", episodes=5, seed=0)
    res.summary()   # returns, D4RL-normalised scores (ssmc/envs.py's constants), lengths, seeds

Imports neither torch nor the model code; tqdm and gymnasium only when a rollout runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ssmc.envs import EnvSpec, make_env, resolve_env
from ssmc.errors import ConfigError


@dataclass
class RolloutResult:
    env_id: str
    returns: list[float]
    lengths: list[int]
    seeds: list[int]
    wall_s: float
    spec: EnvSpec

    def summary(self) -> dict[str, Any]:
        r = np.asarray(self.returns)
        norm = np.asarray([self.spec.normalized(x) for x in r])
        return {
            "env_id": self.env_id,
            "episodes": len(r),
            "seeds": self.seeds,
            "return_mean": float(r.mean()),
            "return_std": float(r.std()),
            "normalized_mean": float(norm.mean()),
            "normalized_std": float(norm.std()),
            "normalized_ref": self.spec.ref_source,
            "length_mean": float(np.mean(self.lengths)),
            "returns": [float(x) for x in r],
            "wall_s": round(self.wall_s, 2),
        }


def env_dims(env) -> tuple[int, int]:
    """(observation size, action size) of a gymnasium env."""
    return int(np.prod(env.observation_space.shape)), int(np.prod(env.action_space.shape))


def check_dims(env_id: str, dims: tuple[int, int], what: str) -> None:
    """Raise a one-line ConfigError when ``dims`` (obs, act) do not fit ``env_id``."""
    spec = resolve_env(env_id)
    env = make_env(spec)
    try:
        have = env_dims(env)
    finally:
        env.close()
    if tuple(dims) != have:
        raise ConfigError(f"{what} has obs/action sizes {tuple(dims)} but {spec.env_id} has {have}")


def rollout(act_fn, reset_fn, env_id: str, episodes: int, seed: int = 0, target_return: float | None = None,
            progress: bool = True, dims: tuple[int, int] | None = None) -> RolloutResult:
    """Run ``episodes`` episodes with seeds ``seed, seed+1, ...``; the controller is given as two
    callables so the PyTorch policy and the compiled runtime are driven by the same loop."""
    from tqdm import tqdm

    if episodes <= 0:
        raise ConfigError(f"--episodes must be positive, got {episodes}")
    spec = resolve_env(env_id)
    env = make_env(spec)
    if dims is not None and tuple(dims) != env_dims(env):
        env.close()
        raise ConfigError(f"the policy takes obs/action sizes {tuple(dims)} but {spec.env_id} has {env_dims(env)}")
    returns, lengths, seeds = [], [], []
    t0 = time.perf_counter()
    bar = tqdm(range(episodes), disable=not progress, desc=f"eval {spec.env_id}", unit="ep", dynamic_ncols=True)
    try:
        for i in bar:
            obs, _ = env.reset(seed=seed + i)
            reset_fn(target_return)
            total, steps, reward, done = 0.0, 0, 0.0, False
            while not done:
                action = act_fn(obs, reward)
                action = np.clip(action, env.action_space.low, env.action_space.high)
                obs, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                steps += 1
                done = terminated or truncated
            returns.append(total)
            lengths.append(steps)
            seeds.append(seed + i)
            bar.set_postfix(ret=f"{total:.1f}", norm=f"{spec.normalized(total):.1f}")
    finally:
        env.close()
    return RolloutResult(spec.env_id, returns, lengths, seeds, time.perf_counter() - t0, spec)
