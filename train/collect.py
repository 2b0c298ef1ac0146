"""Collect D4RL-layout datasets locally: ``ssmc data collect ENV --quality Q``.

Qualities follow D4RL (Fu et al. 2020, arXiv:2004.07219):

- ``random``: uniform random actions;
- ``medium``: a policy about 1/3 as good as the expert;
- ``medium-replay``: what the learner experienced until it reached medium;
- ``expert``: the best policy;
- ``medium-expert``: medium data then expert data, half each;
- ``medium-stochastic`` (ssmc's, MuJoCo only): the medium policy with Gaussian action noise whose std is
  drawn per episode from U(0, STOCHASTIC_NOISE_MAX), clipped to the action bounds. D4RL's medium data
  came from a stochastic SAC policy and spans a range of returns; a deterministic ARS snapshot gives
  nearly identical episodes (docs/results.md), which return conditioning cannot choose between.

MuJoCo tasks use ARS linear policies (``ssmc.train.behaviour``), one training run per
(env, seed) whose snapshots give every quality; medium-replay replays the snapshots before
medium, each with ARS's exploration noise (one Gaussian perturbation of the weights per
episode), in proportion to the training steps the learner spent at each. Pendulum-v1 uses a
scripted swing-up controller with torque noise per quality (medium-replay: noise annealed
from near-random down to medium's). Everything is seeded from ``seed``: the same call gives
the same arrays. Scores of MuJoCo data are "D4RL-like": D4RL's constants on gymnasium v5 with
ssmc's own behaviour data, not comparable one-to-one with published D4RL tables.
"""

from __future__ import annotations

import os
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ssmc.envs import EnvSpec, make_env, resolve_env
from ssmc.errors import ConfigError

if TYPE_CHECKING:
    from ssmc.train.behaviour import PolicyCheckpoint
    from ssmc.train.dataset import OfflineData

QUALITIES = ("random", "medium", "medium-replay", "medium-expert", "expert")  # D4RL's, every task
STOCHASTIC = "medium-stochastic"
ALL_QUALITIES = (*QUALITIES, STOCHASTIC)
STOCHASTIC_NOISE_MAX = 0.5  # action-noise std upper bound (actions span [-1, 1] on hopper/halfcheetah/walker2d)
DEFAULT_SIZE = 200_000  # MuJoCo tasks
FAST_SIZE = 20_000  # the fast task (Pendulum-v1)

Actor = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class _Segment:
    """A stretch of the dataset collected by one kind of actor."""

    until: int  # episodes start from this segment while the dataset holds fewer transitions
    make_actor: Callable[[np.random.Generator, float], Actor]  # (rng, fraction collected) -> one episode's actor
    label: str


def collect(
    env: str,
    quality: str,
    out: str | os.PathLike | None = None,
    size: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Collect ``size`` transitions of ``quality`` data on ``env`` and write them as D4RL HDF5.

    Returns the absolute path written (default ``data/<env-id-lower>-<quality>.hdf5``). MuJoCo
    behaviour policies come from the shipped checkpoints, else the cache, else are trained
    here (minutes; progress on stderr) and cached. The last episode is cut at ``size``
    transitions and marked with ``timeouts``.
    """
    from tqdm import tqdm

    from ssmc.train.dataset import write_d4rl

    spec = resolve_env(env)
    if quality not in ALL_QUALITIES:
        raise ConfigError(f"unknown quality {quality!r}; known: {', '.join(ALL_QUALITIES)}")
    if quality == STOCHASTIC and (spec.env_id == "Pendulum-v1" or spec.env_id.startswith("ssmc/TMaze")):
        raise ConfigError(f"--quality {STOCHASTIC} is for the MuJoCo tasks (an ARS medium policy with action "
                          f"noise); {spec.env_id} has no such policy")
    size = (FAST_SIZE if spec.fast else DEFAULT_SIZE) if size is None else int(size)
    if size < 1:
        raise ConfigError(f"--size must be positive, got {size}")
    path = Path(out) if out is not None else Path("data") / f"{spec.env_id.lower()}-{quality}.hdf5"

    gym_env = make_env(spec)
    if quality == "random":
        space = gym_env.action_space
        meta = {"behaviour_policy": "random"}
        segments = [_Segment(size, lambda rng, _f: (lambda _obs: rng.uniform(space.low, space.high)),
                             "uniform random actions")]
    elif spec.env_id == "Pendulum-v1":
        meta, segments = _pendulum_plan(quality, size)
    elif spec.env_id.startswith("ssmc/TMaze"):
        from ssmc.train.tmaze import collection_plan

        meta, plan = collection_plan(quality, size)
        segments = [_Segment(*part) for part in plan]
    else:
        meta, segments = _ars_plan(spec.env_id, quality, size, seed, progress)
    start = time.perf_counter()
    with tqdm(total=size, unit="step", unit_scale=True, desc=f"collect {spec.env_id} {quality}",
              disable=not progress, file=sys.stderr) as bar:
        data = _rollouts(gym_env, spec, segments, size, np.random.SeedSequence([seed, zlib.crc32(quality.encode())]), bar)
    data.metadata.update(meta)
    data.metadata.update(env_id=spec.env_id, quality=quality, seed=seed,
                         collection_wall_time_s=round(time.perf_counter() - start, 2))
    return write_d4rl(path.absolute(), data)


def _pendulum_plan(quality: str, size: int) -> tuple[dict[str, Any], list[_Segment]]:
    """The scripted controller with torque noise per quality."""
    from ssmc.train.behaviour.pendulum import PENDULUM_NOISE, NoisyActor, PendulumController, replay_noise

    ctrl = PendulumController()

    def noisy(noise: float) -> Callable[[np.random.Generator, float], Actor]:
        return lambda rng, _f: NoisyActor(ctrl, noise, rng)

    plans = {
        "medium": [_Segment(size, noisy(PENDULUM_NOISE["medium"]), f"noise std {PENDULUM_NOISE['medium']}")],
        "expert": [_Segment(size, noisy(PENDULUM_NOISE["expert"]), f"noise std {PENDULUM_NOISE['expert']}")],
        "medium-replay": [_Segment(size, lambda rng, f: NoisyActor(ctrl, replay_noise(f), rng),
                                   f"noise std annealed {replay_noise(0.0)} -> {replay_noise(1.0)}")],
    }
    plans["medium-expert"] = [
        _Segment(size // 2, plans["medium"][0].make_actor, "medium: " + plans["medium"][0].label),
        _Segment(size, plans["expert"][0].make_actor, "expert: " + plans["expert"][0].label),
    ]
    return {"behaviour_policy": "scripted energy-pumping swing-up + PD balance (ssmc)"}, plans[quality]


def _ars_plan(env_id: str, quality: str, size: int, seed: int, progress: bool) -> tuple[dict[str, Any], list[_Segment]]:
    """Snapshots of the (shipped, cached or freshly trained) ARS learning curve for (env, seed)."""
    from ssmc.train.behaviour import get_checkpoint

    ckpt, source = get_checkpoint(env_id, seed, progress=progress)

    def fixed(i: int, role: str, until: int) -> _Segment:
        s = ckpt.snapshots[i]
        return _Segment(until, lambda _rng, _f: s.policy,
                        f"{role}: snapshot {i} (iteration {s.iteration}, eval return {s.eval_return:.1f})")

    if quality == "medium":
        segments = [fixed(ckpt.medium_index, "medium", size)]
    elif quality == "expert":
        segments = [fixed(ckpt.expert_index, "expert", size)]
    elif quality == "medium-expert":
        segments = [fixed(ckpt.medium_index, "medium", size // 2), fixed(ckpt.expert_index, "expert", size)]
    elif quality == STOCHASTIC:
        s = ckpt.snapshots[ckpt.medium_index]
        segments = [_Segment(size, lambda rng, _f: _noisy_actor(s.policy, rng),
                             f"medium: snapshot {ckpt.medium_index} (iteration {s.iteration}, eval return "
                             f"{s.eval_return:.1f}) + Gaussian action noise, std ~ U(0, {STOCHASTIC_NOISE_MAX}) "
                             "per episode")]
    else:
        segments = _replay_segments(ckpt, size)
    meta = {
        "behaviour_policy": f"ARS V2-t linear policy {ckpt.name} ({source})",
        "policy_train_env_steps": ckpt.train_env_steps,
        "policy_train_wall_time_s": ckpt.train_wall_time_s,
    }
    return meta, segments


def _noisy_actor(policy: Any, rng: np.random.Generator) -> Actor:
    """One episode of ``policy`` with N(0, σ²) action noise, σ ~ U(0, STOCHASTIC_NOISE_MAX), clipped."""
    std = rng.uniform(0.0, STOCHASTIC_NOISE_MAX)

    def act(obs: np.ndarray) -> np.ndarray:
        a = policy(obs)
        return np.clip(a + std * rng.standard_normal(a.shape), policy.low, policy.high)

    return act


def _replay_segments(ckpt: PolicyCheckpoint, size: int) -> list[_Segment]:
    """Snapshots 0 .. medium-1, each explored with ARS's noise, weighted by the training steps spent there."""
    noise = float(ckpt.config["noise"])
    last = max(ckpt.medium_index, 1)
    spans = np.array([ckpt.snapshots[j + 1].env_steps - ckpt.snapshots[j].env_steps for j in range(last)], np.float64)
    bounds = np.rint(size * np.cumsum(spans) / spans.sum()).astype(int)
    bounds[-1] = size

    def explore(j: int) -> Callable[[np.random.Generator, float], Actor]:
        pol = ckpt.snapshots[j].policy
        return lambda rng, _f: pol.perturbed(rng.standard_normal(pol.weights.shape), noise)

    segments = [_Segment(int(b), explore(j), "") for j, b in enumerate(bounds)]
    segments[0] = _Segment(segments[0].until, segments[0].make_actor,
                           f"snapshots 0-{last - 1} (iterations 0-{ckpt.snapshots[last - 1].iteration}) "
                           f"+ exploration noise std {noise} on the weights")
    return segments


def _rollouts(env: Any, spec: EnvSpec, segments: list[_Segment], size: int, seq: np.random.SeedSequence,
              bar: Any) -> OfflineData:
    """Run episodes on ``env`` (closed at the end) until ``size`` transitions; one seeded reset per episode."""
    from ssmc import __version__
    from ssmc.train.dataset import OfflineData

    sim = getattr(env.unwrapped, "data", None)  # MuJoCo state, for infos/qpos and infos/qvel
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    seeds_rng, act_rng = (np.random.default_rng(s) for s in seq.spawn(2))
    observations = np.empty((size, obs_dim), np.float32)
    next_observations = np.empty((size, obs_dim), np.float32)
    actions = np.empty((size, act_dim), np.float32)
    rewards = np.empty(size, np.float32)
    terminals = np.zeros(size, bool)
    timeouts = np.zeros(size, bool)
    qpos = np.empty((size, sim.qpos.size), np.float64) if sim is not None else None
    qvel = np.empty((size, sim.qvel.size), np.float64) if sim is not None else None

    n, seg, returns, cut = 0, 0, [], False
    while n < size:
        while segments[seg].until <= n:
            seg += 1
        actor = segments[seg].make_actor(act_rng, n / size)
        obs, _ = env.reset(seed=int(seeds_rng.integers(0, 2**31 - 1)))
        ep_start, ep_return, done = n, 0.0, False
        while not done:
            observations[n] = obs
            if sim is not None:
                qpos[n], qvel[n] = sim.qpos, sim.qvel
            action = np.asarray(actor(obs), np.float64)
            obs, reward, terminated, truncated, _ = env.step(action)
            actions[n], rewards[n], next_observations[n] = action, reward, obs
            terminals[n], timeouts[n] = terminated, truncated
            ep_return += float(reward)
            n += 1
            done = terminated or truncated
            if n == size and not done:
                timeouts[n - 1] = cut = done = True
        returns.append(ep_return)
        bar.update(n - ep_start)
    env.close()

    complete = returns[:-1] if cut and len(returns) > 1 else returns
    mean_return = float(np.mean(complete))
    import gymnasium

    meta = {
        "behaviour": "; ".join(s.label for s in segments if s.label),
        "episodes": len(returns),
        "mean_return": mean_return,
        "normalized_mean_return": spec.normalized(mean_return),
        "normalization": ("D4RL-like: D4RL's reference returns on gymnasium v5 with ssmc's own behaviour data"
                          if spec.ref_source == "D4RL" else f"reference returns: {spec.ref_source}"),
        "ssmc_version": __version__,
        "gymnasium_version": gymnasium.__version__,
    }
    infos = {"qpos": qpos, "qvel": qvel} if sim is not None else {}
    return OfflineData(observations, actions, rewards, terminals, timeouts, next_observations, infos, meta, "ssmc")
