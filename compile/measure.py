"""How close a compiled step is to PyTorch, and what an artifact weighs: the numbers in docs/compile.md.

    python -m ssmc.compile.measure runs/hopper-dema runs/hopper-dmm --out /tmp/measure.json

For each checkpoint and precision it compiles a host artifact, steps it and the fp32 PyTorch step 200
times on the same fresh random raw inputs (each carrying its own state), and reports the worst
relative error, the artifact's bytes (library, constants by dtype), per-step latency (p50, one
thread) of both, and the compile time. ``compare_with_pytorch`` is the check tests/test_compile.py uses.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ssmc.artifact import load_manifest
from ssmc.compile.build import compile_checkpoint, step_runner
from ssmc.numerics import max_rel_error

STEPS = 200


def random_inputs(manifest: Any, rng: np.random.Generator) -> list[np.ndarray]:
    """Fresh raw inputs: an observation around the normalisation statistics, a return-to-go in
    [-100, target_return]."""
    mean, std = np.array(manifest.obs_mean, np.float32), np.array(manifest.obs_std, np.float32)
    return [(mean + std * rng.standard_normal(mean.shape)).astype(np.float32)[None],
            rng.uniform(-100.0, max(manifest.target_return, 0.0), (1, 1)).astype(np.float32)]


def compare_with_pytorch(artifact: Path, references: list[Any], steps: int = STEPS, seed: int = 1) -> list[float]:
    """Step the artifact's library and each PyTorch reference ``steps`` times on the same fresh random
    raw inputs, each carrying its own state from zeros; the worst ``max_rel_error`` per reference.

    A non-finite compiled output makes the error infinite; a non-finite reference raises.
    """
    from ssmc.compile.export import run_torch

    m = load_manifest(artifact)
    run = step_runner(artifact / m.library, (*m.outputs, *m.state), m.executor)
    rng = np.random.default_rng(seed)
    zero = [np.zeros(s.shape, s.dtype) for s in m.state]
    state, ref_states, worst = list(zero), [list(zero) for _ in references], [0.0] * len(references)
    for _ in range(steps):
        inputs = random_inputs(m, rng)
        got = run(inputs + state)
        if len(got) != 1 + len(m.state):
            raise AssertionError(f"{artifact}: main returned {len(got)} tensors, manifest says {1 + len(m.state)}")
        for i, ref in enumerate(references):
            want = run_torch(ref, inputs, ref_states[i])
            if not all(np.all(np.isfinite(w)) for w in want):
                raise AssertionError("the PyTorch reference itself went non-finite")
            worst[i] = max(worst[i], max_rel_error(got, want))
            ref_states[i] = want[1:]
        state = got[1:]
    return worst


def _p50_us(fn: Any, n: int = 200) -> float:
    fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e6)


def measure(checkpoint: Path, precision: str, workdir: Path, mode: str | None = None) -> dict[str, Any]:
    """Compile ``checkpoint`` for host at ``precision`` and measure it (see the module docstring)."""
    import torch

    from ssmc.compile.export import StepFunction, run_torch
    from ssmc.train.models import load_checkpoint

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    # a fresh path per build: dlopen returns an already-loaded library for a path it has seen, even if
    # the file was replaced since, so reusing a path in one process would measure the previous build
    out = compile_checkpoint(checkpoint, "host", precision, mode, workdir / f"{checkpoint.name}-{precision}.ssmc")
    compile_s = time.perf_counter() - t0
    m = load_manifest(out)
    model, extra = load_checkpoint(checkpoint)
    if mode is not None:
        model = model.with_semantics(mode)
    ref = StepFunction(model, extra["obs_mean"], extra["obs_std"], extra["rtg_scale"]).eval()
    [err] = compare_with_pytorch(out, [ref])
    run, rng = step_runner(out / m.library, (*m.outputs, *m.state), m.executor), np.random.default_rng(2)
    args = random_inputs(m, rng) + [np.zeros(s.shape, s.dtype) for s in m.state]
    return {
        "model": m.model_kind, "semantics": m.semantics, "precision": precision,
        "param_count": m.param_count, "macs_per_step": m.macs_per_step, "state_bytes": m.state_bytes,
        "max_rel_error_200_steps": err,
        "library_bytes": m.files[m.library].bytes,
        "artifact_bytes": sum(f.bytes for f in m.files.values()) + (out / "manifest.json").stat().st_size,
        "constant_bytes": m.extra["constant_bytes"],
        "executor": m.executor,
        "compiled_step_us_p50": round(_p50_us(lambda: run(args)), 1),
        "torch_step_us_p50": round(_p50_us(lambda: run_torch(ref, args[:2], args[2:])), 1),
        "compile_s": round(compile_s, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--precisions", default="fp32,fp16,int8")
    parser.add_argument("--mode", choices=["window", "recurrent"], default=None)
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ssmc-measure-") as tmp:
        for ckpt in args.checkpoints:
            for precision in args.precisions.split(","):
                row = {"checkpoint": str(ckpt), **measure(ckpt, precision, Path(tmp), args.mode)}
                print(json.dumps(row), file=sys.stderr)
                rows.append(row)
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    print("| model | semantics | precision | params | max rel err (200 steps) | library bytes | constants | "
          "compiled µs | torch µs |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        consts = ", ".join(f"{k} {v:,}" for k, v in r["constant_bytes"].items())
        print(f"| {r['model']} | {r['semantics']} | {r['precision']} | {r['param_count']:,} | "
              f"{r['max_rel_error_200_steps']:.1e} | {r['library_bytes']:,} | {consts} | "
              f"{r['compiled_step_us_p50']} | {r['torch_step_us_p50']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
