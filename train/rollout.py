"""PyTorch reference rollouts: a checkpoint driven through its own ``step()`` in gymnasium.

``TorchPolicy`` is the controller-side view every runtime shares: ``reset(target_return)``,
then ``act(observation, last_reward) -> action``. It normalises observations, keeps the
return-to-go (target minus rewards received so far, times the rtg scale) and carries the
model's state; the compiled runtime implements the same contract in C.

torch is imported only by ``TorchPolicy``: ``rollout`` drives any controller, and ``ssmc run`` uses it
with the C runtime in a process that never imports torch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ssmc.errors import ConfigError
from ssmc.train.envs import EnvSpec, make_env, resolve_env


class TorchPolicy:
    def __init__(self, model: Any, extra: dict[str, Any], semantics: str | None = None):
        import torch

        self.model = model.eval()
        self.obs_mean = torch.tensor(extra["obs_mean"], dtype=torch.float32)
        self.obs_std = torch.tensor(extra["obs_std"], dtype=torch.float32)
        self.rtg_scale = float(extra["rtg_scale"])
        self.default_target = float(extra["target_return"])
        if semantics is not None and semantics != model.semantics:
            self.model = model.with_semantics(semantics)
        self.state: dict[str, Any] = {}
        self.rtg = 0.0
        self._first = True

    @property
    def semantics(self) -> str:
        return self.model.semantics

    def reset(self, target_return: float | None = None) -> None:
        self.state = self.model.init_state(1)
        self.rtg = self.default_target if target_return is None else float(target_return)
        self._first = True

    def act(self, observation: np.ndarray, last_reward: float = 0.0) -> np.ndarray:
        import torch

        if not self._first:
            self.rtg -= float(last_reward)
        self._first = False
        with torch.no_grad():
            obs = (torch.as_tensor(observation, dtype=torch.float32).reshape(1, -1) - self.obs_mean) / self.obs_std
            rtg = torch.tensor([[self.rtg * self.rtg_scale]], dtype=torch.float32)
            action, self.state = self.model.step(self.state, obs, rtg)
        return action[0].numpy().astype(np.float64)


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


def evaluate_checkpoint(checkpoint: str, env_id: str | None, episodes: int, seed: int = 0,
                        target_return: float | None = None, semantics: str | None = None,
                        progress: bool = True) -> dict[str, Any]:
    from ssmc.train.models import load_checkpoint

    model, extra = load_checkpoint(checkpoint)
    env_id = env_id or extra.get("env_id")
    if not env_id:
        raise ConfigError(f"{checkpoint} does not record its environment; pass --env")
    policy = TorchPolicy(model, extra, semantics)
    dims = (model.config.obs_dim, model.config.act_dim)
    res = rollout(policy.act, policy.reset, env_id, episodes, seed, target_return, progress, dims)
    out = res.summary()
    out.update({"checkpoint": str(checkpoint), "model": extra.get("model"), "semantics": policy.semantics,
                "target_return": policy.default_target if target_return is None else target_return,
                "obs_dim": dims[0], "act_dim": dims[1]})
    return out
