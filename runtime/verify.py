"""``ssmc verify``: does an artifact keep the promises of the checkpoint it was compiled from?

Checks, each with a measured value, a limit and pass/fail (``Verdict``):

- **integrity**: the C runtime opens the artifact (format version, every file's size and sha256);
- **recorded**: the reference steps recorded from PyTorch at compile time, replayed through the C API;
- **fresh**: 200 steps on fresh random observations and rewards, C runtime vs the PyTorch checkpoint
  in the artifact's semantics (needs the checkpoint);
- **score**: D4RL-normalised score over N episodes, C runtime vs PyTorch on the same seeds;
- **latency**: per-step p50/p99/max of the C control-loop example (no Python) at the target's control
  rate, against the target's step budget (only where the artifact runs on this machine);
- **memory**: the C process's peak resident memory against the target's memory budget.

Also reported, without a verdict: artifact bytes, state bytes, parameter count against the paper's
claim for the model kind, and the Python binding's per-step latency during the rollouts.
Action errors are ``ssmc.numerics.max_rel_error`` over the whole sequence stacked into one array
(``max|runtime - torch| / max|torch|``; NaN fails).

The PyTorch side is the checkpoint's ``TorchPolicy``, built by ``_pytorch_reference``: the one place
where ``ssmc.runtime`` imports training code (tests/test_boundaries.py pins it). Everything else here is
the C runtime, the shared rollout loop (ssmc/rollout.py) and numpy.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ssmc.artifact import load_manifest, read_reference
from ssmc.errors import ConfigError
from ssmc.fsutil import atomic_file
from ssmc.numerics import max_rel_error
from ssmc.rollout import rollout
from ssmc.runtime.binding import Policy, PolicyError
from ssmc.runtime.native import host_arch, runtime_bundle
from ssmc.runtime.run import latency_summary, run_artifact

#: Max relative action error vs the fp32 PyTorch step, per precision. fp32 leaves room for float
#: reassociation through a few layers and a carried state; fp16 and int8 are the bounds the compile tests
#: hold small models to (tests/test_compile.py, where the reasoning is written out).
ACTION_TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2, "int8": 1e-1}
#: Allowed |score difference| in D4RL-normalised points, runtime vs PyTorch on the same seeds. fp32
#: differs only by float rounding, which a chaotic plant can still amplify over 1000 steps.
SCORE_TOLERANCE = {"fp32": 1.0, "fp16": 2.0, "int8": 2.0}
#: Parameter counts the papers report for their hopper configurations (docs/models-spec.md), None where a paper
#: gives none.
PAPER_PARAMS: dict[str, tuple[int | None, str]] = {
    "dt": (726_200, "DeMa paper, Table: DT 726.2K (hopper)"),
    "dema": (175_500, "DeMa paper: 175.5K (embedding 256, hopper-medium)"),
    "dema-rnn": (175_500, "DeMa paper: 175.5K (same layers, RNN-like mode)"),
    "dmm": (120_000, "Decision MetaMamba: about 0.12M"),
    "mambadm": (None, "MambaDM paper gives no count"),
    "dmh": (None, "DM-H paper gives no count"),
}
FRESH_STEPS = 200
C_LOOP_STEPS = 2000


@dataclass
class Check:
    name: str
    passed: bool | None  # None: not run (the reason says why)
    value: float | None
    limit: float | None
    detail: str


@dataclass
class Verdict:
    artifact: str
    checks: list[Check]
    facts: dict[str, Any]
    samples_us: list[float] = field(default_factory=list)  # binding latencies for the plot, not in the JSON

    @property
    def passed(self) -> bool:
        return all(c.passed is not False for c in self.checks) and any(c.passed for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"artifact": self.artifact, "passed": self.passed, "checks": [asdict(c) for c in self.checks],
                **self.facts}


def _recorded(path: Path, manifest: Any, tol: float) -> Check:
    if manifest.reference is None:
        return Check("recorded", None, None, tol, "the artifact holds no reference steps")
    steps = read_reference(path / manifest.reference, manifest)
    rtg = [float(s.inputs["rtg_raw"][0, 0]) for s in steps]
    with Policy(path) as policy:
        policy.reset(rtg[0])
        got = [policy.act(s.inputs["obs_raw"][0], rtg[i - 1] - rtg[i] if i else 0.0) for i, s in enumerate(steps)]
    err = max_rel_error([np.asarray(got)], [np.asarray([s.outputs["action"][0] for s in steps])])
    return Check("recorded", err <= tol, err, tol, f"{len(steps)} PyTorch steps recorded at compile time")


def _fresh(path: Path, manifest: Any, torch_policy: Any, tol: float, seed: int) -> Check:
    rng = np.random.default_rng(seed)
    mean, std = np.asarray(manifest.obs_mean), np.asarray(manifest.obs_std)
    obs = (mean + std * rng.standard_normal((FRESH_STEPS, manifest.obs_dim))).astype(np.float32)
    scale = max(abs(manifest.target_return), 1.0) / 100.0
    rewards = rng.uniform(0.0, 2.0 * scale, FRESH_STEPS)
    with Policy(path) as policy:
        policy.reset()
        torch_policy.reset(manifest.target_return)
        got = [policy.act(o, r) for o, r in zip(obs, rewards, strict=True)]
        want = [torch_policy.act(o, r) for o, r in zip(obs, rewards, strict=True)]
    err = max_rel_error([np.asarray(got)], [np.asarray(want)])
    return Check("fresh", err <= tol, err, tol, f"{FRESH_STEPS} steps, random observations around the "
                 f"normalisation statistics, state carried, seed {seed}")


def _c_loop(path: Path, manifest: Any) -> dict[str, Any] | None:
    """The C example at the target's control rate: pure-C step latency and peak resident memory."""
    arch = manifest.target.get("arch")
    if manifest.target.get("device") != "cpu" or arch != host_arch():
        return None
    bundle = runtime_bundle()
    rate = manifest.target["budget"]["control_rate_hz"]
    proc = subprocess.run(bundle.command(str(path), "--steps", str(C_LOOP_STEPS), "--rate", str(rate)),
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise PolicyError(f"the C control loop failed: {proc.stderr.strip()}", 4)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _pytorch_reference(ckpt: Path, manifest: Any) -> Any:
    """The checkpoint as a ``TorchPolicy`` in the artifact's semantics: the reference the checks compare
    with. The only import of training code (torch, the models) in ``ssmc.runtime``."""
    from ssmc.train.models import load_checkpoint
    from ssmc.train.rollout import TorchPolicy

    model, extra = load_checkpoint(ckpt)
    if model.name.removesuffix("-rnn") != manifest.model_kind.removesuffix("-rnn"):
        raise ConfigError(f"--checkpoint {ckpt} is a {model.name}, the artifact a {manifest.model_kind}")
    return TorchPolicy(model, extra, manifest.semantics)


def verify_artifact(artifact: str | os.PathLike[str], checkpoint: str | os.PathLike[str] | None = None,
                    episodes: int = 5, seed: int = 0, progress: bool = True, env_id: str | None = None) -> Verdict:
    """Run every check that can run here; see the module docstring. ``env_id`` names the environment of
    the score check when the artifact records none (``ssmc verify --env``)."""
    t0 = time.perf_counter()
    path = Path(artifact)
    checks: list[Check] = []
    samples: list[float] = []
    try:
        Policy(path).close()
        checks.append(Check("integrity", True, None, None, "manifest, format version, sizes and sha256 of every "
                                                           "file verified by the C runtime"))
    except PolicyError as e:
        if e.status != "artifact":
            raise
        return Verdict(str(path), [Check("integrity", False, None, None, str(e))], {})
    manifest = load_manifest(path)
    precision = manifest.precision
    tol = ACTION_TOLERANCE[precision]
    checks.append(_recorded(path, manifest, tol))

    ckpt = Path(checkpoint) if checkpoint else None
    if ckpt is None:
        recorded = (manifest.extra.get("checkpoint") or {}).get("path")
        ckpt = Path(recorded) if recorded and Path(recorded).is_dir() else None
    torch_policy = None
    if ckpt is not None:
        torch_policy = _pytorch_reference(ckpt, manifest)
        checks.append(_fresh(path, manifest, torch_policy, tol, seed))
    else:
        checks.append(Check("fresh", None, None, tol, "no checkpoint (pass --checkpoint)"))

    facts: dict[str, Any] = {"model_kind": manifest.model_kind, "precision": precision,
                             "semantics": manifest.semantics, "target": manifest.target["name"]}
    score_tol = SCORE_TOLERANCE[precision]
    if episodes > 0:
        runtime = run_artifact(path, env_id, episodes, seed, progress=progress, samples=samples)
        facts["runtime_rollout"] = runtime
        if torch_policy is not None:
            torch_res = rollout(torch_policy.act, torch_policy.reset, runtime["env_id"], episodes, seed,
                                None, progress, (manifest.obs_dim, manifest.act_dim)).summary()
            facts["pytorch_rollout"] = torch_res
            diff = abs(runtime["normalized_mean"] - torch_res["normalized_mean"])
            checks.append(Check("score", diff <= score_tol, diff, score_tol,
                                f"runtime {runtime['normalized_mean']:.1f} vs PyTorch "
                                f"{torch_res['normalized_mean']:.1f} D4RL-normalised, {episodes} episodes, "
                                f"seeds {seed}..{seed + episodes - 1}"))
        else:
            checks.append(Check("score", None, None, score_tol, "no checkpoint to compare with"))
    else:
        checks.append(Check("score", None, None, score_tol, "--episodes 0"))

    budget = manifest.target["budget"]
    loop = _c_loop(path, manifest)
    if loop is not None:
        facts["c_loop"] = loop
        p99 = loop["latency_us"]["p99"]
        checks.append(Check("latency", p99 <= budget["step_latency_us"], p99, budget["step_latency_us"],
                            f"p99 of {C_LOOP_STEPS} steps of the C control loop at {loop['rate_hz']:.0f} Hz "
                            f"(p50 {loop['latency_us']['p50']:.0f} µs, max {loop['latency_us']['max']:.0f} µs, "
                            f"{loop['deadline_misses']} deadline misses)"))
        rss = loop["peak_rss_kb"] * 1024
        checks.append(Check("memory", rss <= budget["memory_bytes"], rss, budget["memory_bytes"],
                            "peak resident bytes of the C control-loop process (runtime, TVM, library, state)"))
    else:
        why = f"the artifact is for {manifest.target['name']} ({manifest.target['arch']}, " \
              f"{manifest.target['device']}); this machine is {host_arch()}"
        checks.append(Check("latency", None, None, budget["step_latency_us"], why))
        checks.append(Check("memory", None, None, budget["memory_bytes"], why))

    claim, source = PAPER_PARAMS.get(manifest.model_kind, (None, "no claim known"))
    facts.update({
        "artifact_bytes": sum(f.bytes for f in manifest.files.values()) + (path / "manifest.json").stat().st_size,
        "library_bytes": manifest.files[manifest.library].bytes,
        "state_bytes": manifest.state_bytes,
        "param_count": manifest.param_count,
        "paper_param_count": claim,
        "paper_param_source": source,
        "param_ratio_to_paper": None if claim is None else manifest.param_count / claim,
        "macs_per_step": manifest.macs_per_step,
        "budget": budget,
        "checkpoint": None if ckpt is None else str(ckpt),
        "verify_seconds": round(time.perf_counter() - t0, 1),
    })
    return Verdict(str(path), checks, facts, samples)


# -- report ------------------------------------------------------------------------------------------------

def _fmt(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:,.0f}"


def markdown(v: Verdict) -> str:
    f = v.facts
    lines = [f"# ssmc verify: {Path(v.artifact).name}", "",
             f"**{'PASS' if v.passed else 'FAIL'}** — {f.get('model_kind')} {f.get('precision')} "
             f"({f.get('semantics')}) for `{f.get('target')}`", "",
             "| check | result | value | limit | how |", "|---|---|---|---|---|"]
    for c in v.checks:
        res = "not run" if c.passed is None else ("pass" if c.passed else "**FAIL**")
        lines.append(f"| {c.name} | {res} | {_fmt(c.value)} | {_fmt(c.limit)} | {c.detail} |")
    if "param_count" in f:
        claim = f["paper_param_count"]
        lines += ["", "| fact | value |", "|---|---|",
                  f"| parameters | {f['param_count']:,} (paper: {'—' if claim is None else f'{claim:,}'}; "
                  f"{f['paper_param_source']}) |",
                  f"| MACs per step | {f['macs_per_step']:,} |",
                  f"| state bytes | {f['state_bytes']:,} |",
                  f"| artifact bytes | {f['artifact_bytes']:,} (library {f['library_bytes']:,}) |"]
        if "runtime_rollout" in f:
            lat = f["runtime_rollout"]["step_latency_us"]
            lines.append(f"| step latency through the Python binding | p50 {lat['p50']:.0f} µs, p99 {lat['p99']:.0f} µs "
                         f"over {lat['n']} steps |")
    lines += ["", "Scores are D4RL-like on locally collected data: D4RL's normalisation constants, our own "
              "behaviour data; not comparable one-to-one with published tables.", ""]
    return "\n".join(lines)


def plot(v: Verdict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = v.facts
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    ax = axes[0]
    lat = f.get("runtime_rollout", {}).get("step_latency_us")
    loop = f.get("c_loop")
    if loop is not None:
        ax.axvline(loop["latency_us"]["p50"], color="C0", label=f"C loop p50 {loop['latency_us']['p50']:.0f} µs")
        ax.axvline(loop["latency_us"]["p99"], color="C0", ls="--", label=f"C loop p99 {loop['latency_us']['p99']:.0f} µs")
    budget = f.get("budget", {}).get("step_latency_us")
    if v.samples_us:  # the bulk, not the rare outlier: clipped at 1.2x the larger of budget and p99.5
        hi = 1.2 * max(budget or 0.0, float(np.percentile(v.samples_us, 99.5)))
        ax.hist(np.clip(v.samples_us, 0, hi), bins=60, range=(0, hi), color="C1", alpha=0.7,
                label="binding, during rollouts (clipped)")
    if lat is not None:
        ax.axvline(lat["p50"], color="C1", label=f"binding p50 {lat['p50']:.0f} µs")
    if budget:
        ax.axvline(budget, color="red", lw=2, label=f"budget {budget} µs")
    ax.set_xlabel("step latency (µs)")
    ax.set_title("per-step latency")
    ax.legend(fontsize=7)
    ax = axes[1]
    names, means, stds = [], [], []
    for key, label in (("pytorch_rollout", "PyTorch"), ("runtime_rollout", f"ssmc {f.get('precision')}")):
        if key in f:
            names.append(label)
            means.append(f[key]["normalized_mean"])
            stds.append(f[key]["normalized_std"])
    ax.bar(names, means, yerr=stds, color=["C2", "C0"][: len(names)], capsize=4)
    ax.set_ylabel("D4RL-normalised score (D4RL-like)")
    ax.set_title("score, same seeds")
    fig.suptitle(f"{Path(v.artifact).name}: {'PASS' if v.passed else 'FAIL'}")
    fig.tight_layout()
    fig.savefig(out, dpi=110, format="png")
    plt.close(fig)


def write_report(v: Verdict, out_dir: str | os.PathLike[str]) -> list[Path]:
    """verify.json, verify.md and verify.png in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "verify.json", out / "verify.md", out / "verify.png"]
    with atomic_file(paths[0]) as tmp:
        tmp.write_text(json.dumps(v.to_dict(), indent=2))
    with atomic_file(paths[1]) as tmp:
        tmp.write_text(markdown(v))
    with atomic_file(paths[2]) as tmp:
        plot(v, tmp)
    return paths


__all__ = ["ACTION_TOLERANCE", "PAPER_PARAMS", "SCORE_TOLERANCE", "Check", "Verdict", "latency_summary",
           "markdown", "plot", "verify_artifact", "write_report"]
