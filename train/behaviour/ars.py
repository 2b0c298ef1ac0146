"""Augmented Random Search, V2-t, for linear behaviour policies.

Reference: H. Mania, A. Guy, B. Recht, "Simple random search of static linear policies is
competitive for reinforcement learning", NeurIPS 2018 (arXiv:1803.07055), Algorithm 2.

Each iteration samples N Gaussian directions delta_k of M's shape and runs the perturbed
policies M + nu*delta_k and M - nu*delta_k for one episode each (here from the same start
state: common random numbers). With the b directions of largest max(r+, r-) ("-t", top-b),

    M <- M + alpha / (b * sigma_R) * sum_k (r+_k - r-_k) delta_k,

sigma_R the standard deviation of those 2b returns ("V2" also normalises the states by
their running mean and std, updated with every state the iteration visited). For
Hopper/Walker2d the per-step survival bonus is subtracted from training rewards ("shift"),
as in the paper, so the search does not settle on standing still.

Everything random is drawn in the parent process from ``seed``, rollouts are spread over at
most ``workers`` processes and merged in a fixed order, so a run is deterministic given the
seed whatever the worker count. Every ``eval_every`` iterations the current policy is
evaluated deterministically on fixed start states and kept as a ``Snapshot``.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ssmc.train.behaviour.checkpoint import PolicyCheckpoint, Snapshot
from ssmc.train.behaviour.policy import LinearPolicy, RunningStat


@dataclass(frozen=True)
class ARSConfig:
    """ARS V2-t hyper-parameters; the per-env values below follow the paper's Table 9."""

    n_directions: int = 8  # N: directions sampled per iteration (2N training episodes)
    top_directions: int = 4  # b: best directions used in the update
    step_size: float = 0.02  # alpha
    noise: float = 0.03  # nu: std of the exploration noise on M
    shift: float = 0.0  # subtracted from every training reward (the survival bonus)
    env_steps: int = 1_000_000  # budget: training env steps (evaluations not counted)
    eval_every: int = 5  # iterations between snapshots
    eval_episodes: int = 10  # deterministic episodes per snapshot evaluation
    medium_fraction: float = 1 / 3  # medium = the snapshot closest to this fraction of the expert's return


ARS_CONFIGS: dict[str, ARSConfig] = {
    "Hopper-v5": ARSConfig(8, 4, 0.01, 0.025, shift=1.0, env_steps=2_000_000, eval_every=4),
    "HalfCheetah-v5": ARSConfig(32, 4, 0.02, 0.03, env_steps=8_000_000, eval_every=3),
    "Walker2d-v5": ARSConfig(40, 30, 0.03, 0.025, shift=1.0, env_steps=5_000_000, eval_every=2),
}


_WORKER_ENVS: dict[tuple[str, int], Any] = {}


def _episode(env: Any, policy: LinearPolicy, env_seed: int, shift: float, want_stats: bool) -> tuple[float, int, np.ndarray | None, np.ndarray | None]:
    """One episode: (return minus ``shift`` per step, steps, sum of states, sum of squared states)."""
    obs, _ = env.reset(seed=env_seed)
    s1 = np.zeros(policy.obs_dim) if want_stats else None
    s2 = np.zeros(policy.obs_dim) if want_stats else None
    total, steps, done = 0.0, 0, False
    while not done:
        if want_stats:
            s1 += obs
            s2 += obs * obs
        obs, reward, terminated, truncated, _ = env.step(policy(obs))
        total += float(reward) - shift
        steps += 1
        done = terminated or truncated
    return total, steps, s1, s2


def _rollout(task: tuple[str, int, LinearPolicy, int, float, bool]) -> tuple[float, int, np.ndarray | None, np.ndarray | None]:
    """``_episode`` on this process's env for (env id, time limit), created on first use."""
    from ssmc.envs import make_env

    env_id, horizon, policy, env_seed, shift, want_stats = task
    env = _WORKER_ENVS.get((env_id, horizon))
    if env is None:
        env = _WORKER_ENVS[(env_id, horizon)] = make_env(env_id, max_episode_steps=horizon)
    return _episode(env, policy, env_seed, shift, want_stats)


def evaluate(policy: LinearPolicy, env_id: str, seeds: list[int]) -> list[float]:
    """Undiscounted returns of the deterministic ``policy`` on ``env_id``, one episode per reset seed."""
    from ssmc.envs import make_env

    env = make_env(env_id)
    try:
        return [_episode(env, policy, s, 0.0, False)[0] for s in seeds]
    finally:
        env.close()


class _Runner:
    """Runs rollout tasks in-process or over a small spawn pool; results keep task order."""

    def __init__(self, workers: int) -> None:
        self.pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None

    def map(self, tasks: list[tuple]) -> list[tuple]:
        if self.pool is None:
            return [_rollout(t) for t in tasks]
        return self.pool.map(_rollout, tasks, chunksize=1)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()


def pick_medium(returns: list[float], expert_index: int, fraction: float) -> int:
    """Index of the snapshot (up to the expert) whose return is closest to ``fraction`` of the expert's."""
    target = fraction * returns[expert_index]
    return min(range(expert_index + 1), key=lambda i: abs(returns[i] - target))


def train_ars(
    env_id: str,
    seed: int = 0,
    config: ARSConfig | None = None,
    workers: int = 1,
    progress: bool = True,
) -> PolicyCheckpoint:
    """Train a linear policy with ARS V2-t and return its learning curve as a checkpoint.

    ``env_id`` is any gymnasium id (ssmc's envs get their EnvSpec time limit); ``config``
    defaults to ``ARS_CONFIGS[env_id]``. Deterministic given ``seed`` for any ``workers``.
    With ``workers > 1`` rollouts run in a spawn pool: a script calling this must guard its
    entry point with ``if __name__ == "__main__":``.
    """
    from tqdm import tqdm

    from ssmc import __version__
    from ssmc.envs import make_env

    cfg = config or ARS_CONFIGS.get(env_id, ARSConfig())
    env = make_env(env_id)
    obs_dim = int(env.observation_space.shape[0])
    act_dim = int(env.action_space.shape[0])
    low = np.asarray(env.action_space.low, np.float64)
    high = np.asarray(env.action_space.high, np.float64)
    horizon = int(env.spec.max_episode_steps)
    env.close()

    seq = np.random.SeedSequence(seed)
    rng = np.random.default_rng(seq.spawn(1)[0])
    eval_seeds = [int(s) for s in np.random.default_rng(seq.spawn(1)[0]).integers(0, 2**31 - 1, cfg.eval_episodes)]
    weights = np.zeros((act_dim, obs_dim))
    stat = RunningStat.empty(obs_dim)
    snapshots: list[Snapshot] = []
    iteration = steps = episodes = 0
    start = time.perf_counter()
    runner = _Runner(workers)
    bar = tqdm(total=cfg.env_steps, unit="step", unit_scale=True, desc=f"ARS {env_id} seed {seed}",
               disable=not progress, file=sys.stderr)

    def snapshot() -> None:
        pol = LinearPolicy(weights.astype(np.float32), stat.mean().astype(np.float32),
                           stat.std().astype(np.float32), low, high)
        rets = np.array([r for r, *_ in runner.map([(env_id, horizon, pol, s, 0.0, False) for s in eval_seeds])])
        snapshots.append(Snapshot(pol, iteration, steps, episodes, time.perf_counter() - start,
                                  float(rets.mean()), float(rets.std())))
        bar.set_postfix(eval_return=f"{rets.mean():.0f}", refresh=False)

    try:
        snapshot()
        while steps < cfg.env_steps:
            policy = LinearPolicy(weights, stat.mean(), stat.std(), low, high)
            deltas = rng.standard_normal((cfg.n_directions, act_dim, obs_dim))
            env_seeds = rng.integers(0, 2**31 - 1, cfg.n_directions)
            tasks = [
                (env_id, horizon, policy.perturbed(sign * d, cfg.noise), int(s), cfg.shift, True)
                for d, s in zip(deltas, env_seeds, strict=True)
                for sign in (1.0, -1.0)
            ]
            results = runner.map(tasks)
            r = np.array([res[0] for res in results]).reshape(cfg.n_directions, 2)
            top = np.argsort(-r.max(axis=1), kind="stable")[: cfg.top_directions]
            sigma_r = float(r[top].std()) or 1.0
            weights = weights + cfg.step_size / (cfg.top_directions * sigma_r) * np.tensordot(
                r[top, 0] - r[top, 1], deltas[top], axes=1
            )
            for _, n, s1, s2 in results:
                stat.add(n, s1, s2)
            done_steps = sum(res[1] for res in results)
            steps += done_steps
            episodes += len(results)
            iteration += 1
            bar.update(done_steps)
            if iteration % cfg.eval_every == 0 or steps >= cfg.env_steps:
                snapshot()
    finally:
        runner.close()
        bar.close()

    returns = [s.eval_return for s in snapshots]
    expert = int(np.argmax(returns))
    return PolicyCheckpoint(
        env_id=env_id,
        seed=seed,
        snapshots=snapshots,
        expert_index=expert,
        medium_index=pick_medium(returns, expert, cfg.medium_fraction),
        config=asdict(cfg),
        train_env_steps=steps,
        train_wall_time_s=time.perf_counter() - start,
        extra={
            "algo": "ARS V2-t (Mania et al. 2018, arXiv:1803.07055), linear policy",
            "workers": workers,
            "eval_seeds": eval_seeds,
            "ssmc_version": __version__,
        },
    )
