"""``ssmc run``: roll an artifact out in its environment through the C runtime alone.

The controller is ``ssmc.runtime.Policy`` (ctypes over libssmc.so); the loop is the same
``ssmc.rollout.rollout`` (ssmc/rollout.py) that drives the PyTorch reference, so the two differ only in
who computes the action. Nothing here imports torch, the model code or the compiler
(tests/test_boundaries.py checks).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from ssmc.artifact import load_manifest
from ssmc.errors import ConfigError
from ssmc.rollout import rollout
from ssmc.runtime.binding import Policy


def latency_summary(ns: list[int] | np.ndarray) -> dict[str, float]:
    """p50/p99/max/mean of per-step latencies given in nanoseconds, in microseconds."""
    a = np.asarray(ns, np.float64) / 1e3
    if a.size == 0:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan"), "mean": float("nan"), "n": 0}
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "max": float(a.max()),
            "mean": float(a.mean()), "n": int(a.size)}


def artifact_env(manifest: Any, env_id: str | None) -> str:
    """The environment to run: ``env_id`` or the one the artifact's checkpoint recorded."""
    recorded = manifest.env_id
    if env_id or recorded:
        return env_id or recorded
    raise ConfigError("the artifact does not record its environment; pass --env ENV_ID (e.g. --env Hopper-v5), "
                      "or train with --env so that the checkpoint and its artifacts record it")


def run_artifact(artifact: str | os.PathLike[str], env_id: str | None = None, episodes: int = 5, seed: int = 0,
                 target_return: float | None = None, progress: bool = True,
                 policy: Policy | None = None, samples: list[float] | None = None) -> dict[str, Any]:
    """Roll ``episodes`` episodes (seeds seed, seed+1, ...) with the C runtime; scores and step latency.
    ``samples``, when given, receives every step's latency in microseconds."""
    manifest = load_manifest(artifact)
    env = artifact_env(manifest, env_id)
    own = policy is None
    policy = policy or Policy(artifact)
    latencies: list[int] = []

    def act(obs: np.ndarray, reward: float) -> np.ndarray:
        t0 = time.perf_counter_ns()
        a = policy.act(obs, reward)
        latencies.append(time.perf_counter_ns() - t0)
        return a.astype(np.float64)

    try:
        res = rollout(act, policy.reset, env, episodes, seed, target_return, progress,
                      dims=(policy.obs_dim, policy.act_dim))
    finally:
        if own:
            policy.close()
    if samples is not None:
        samples.extend(ns / 1e3 for ns in latencies)
    out = res.summary()
    out.update({
        "artifact": str(artifact),
        "model": manifest.model_kind,
        "precision": manifest.precision,
        "semantics": manifest.semantics,
        "target": manifest.target["name"],
        "target_return": manifest.target_return if target_return is None else target_return,
        "step_latency_us": latency_summary(latencies),
        "latency_source": "Python binding: time.perf_counter_ns around Policy.act (ctypes call included)",
    })
    return out
