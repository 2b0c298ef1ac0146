"""Where a static step's time goes: every kernel of the step timed inside the generated call sequence.

    python tools/bench/static_kernels.py                       # dema, dmm recurrent, fp32 -> docs/static-kernels.{md,json}
    python tools/bench/static_kernels.py --models dmm --precision int8 --no-docs
    python tools/bench/static_kernels.py --models dema --mode window --target host-avx512 --no-docs

For each model (a checkpoint under ``--zoo``, default ``runs/zoo/<model>``, else a freshly initialised
Hopper-size model, obs 11 / act 3, as tools/bench/step_latency.py does) the recurrent step is compiled
exactly as ``ssmc compile --executor static`` compiles it, but linked with ``-DSSMC_PROFILE``: the glue
(compile/static.py) then reads CLOCK_MONOTONIC around every kernel call. ``--steps`` steps run from C
through ctypes on one thread; the table gives each kernel's calls per step, µs per step and share, the
kernels grouped by what they do (the SSM state update with its exp(Δ·A), matmuls, the rest), their sum,
and the compute floor: MACs per step ÷ this core's single-thread GEMV rate, measured in the same run (a 1x256 @ 256x256 fp32 product in numpy).
Timer reads cost ~20-40 ns per call, so the kernel sum slightly overstates the profiled step.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

DOC_BEGIN, DOC_END = "<!-- static_kernels:begin -->", "<!-- static_kernels:end -->"


def gemv_rate(seconds: float = 0.5) -> float:
    """Single-thread GEMV rate of this core in MAC/s (numpy, 1x256 @ 256x256 fp32, best of 5 bursts)."""
    x, w = np.random.rand(1, 256).astype(np.float32), np.random.rand(256, 256).astype(np.float32)
    best = float("inf")
    for _ in range(5):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 5:
            x @ w
            n += 1
        best = min(best, (time.perf_counter() - t0) / n)
    return 256 * 256 / best


def kind_of(name: str) -> str:
    if name.startswith("selective_scan"):  # compile/scan_kernel.py: exp(Δ·A), the state FMA and C·h in one loop
        return "SSM state update (exp(Δ·A) · h + Δ·B·x)"
    if "fast_exp" in name and "multiply" in name and "add" in name and "matmul" not in name:
        return "SSM state update (exp(Δ·A) · h + Δ·B·x)"
    if "matmul" in name or "packed_gemm" in name:  # packed_gemm: compile/pipeline.py's pack-weights stage
        return "matmuls (projections, embeddings, head)"
    return "other (norms, conv, gates, slices)"


def profile_model(kind: str, zoo: Path, precision: str, steps: int, workdir: Path,
                  target_name: str = "host", mode: str = "recurrent") -> dict[str, Any]:
    import torch

    from ssmc.compile.export import export_step
    from ssmc.compile.pipeline import lower_step
    from ssmc.compile.quantize import quantize_int8
    from ssmc.compile.static import StaticLibrary, build_library, plan_step
    from ssmc.targets import load_target
    from ssmc.train.models import build_model, load_checkpoint

    sys.path.insert(0, str(Path(__file__).parent))
    from step_latency import FRESH_EXTRA, HOPPER  # the same fresh models as the latency benchmark

    ckpt = zoo / kind
    if (ckpt / "config.json").is_file():
        model, extra, source = *load_checkpoint(ckpt), str(ckpt)
    else:
        torch.manual_seed(0)
        model, extra, source = build_model(kind, *HOPPER), FRESH_EXTRA, "fresh (hopper size)"
    exported = export_step(model, extra, mode, quantize=quantize_int8 if precision == "int8" else None)
    target = load_target(target_name)
    mod, _ = lower_step(exported.program, target, precision, executor="static")
    results = [(s.shape, s.dtype) for s in (*exported.outputs, *exported.state)]
    plan = plan_step(mod)
    d = workdir / f"{kind}-{precision}"
    d.mkdir(parents=True)
    lib = d / "step.so"
    build_library(plan, target, d, lib, kind, lambda _m: None, profile=True)
    rng = np.random.default_rng(0)
    mean, std = np.array(extra["obs_mean"], np.float32), np.array(extra["obs_std"], np.float32)
    args = [(mean + std * rng.standard_normal(mean.shape)).astype(np.float32)[None],
            np.array([[float(extra["target_return"])]], np.float32), *exported.init_state()]

    prof = StaticLibrary(lib, results)
    raw = ctypes.CDLL(str(lib))
    raw.ssmc_profile_name.restype = ctypes.c_char_p
    raw.ssmc_profile_ns.restype = ctypes.c_double
    raw.ssmc_profile_calls.restype = ctypes.c_long
    for _ in range(steps):
        prof.step(args)
    rows = []
    for i in range(raw.ssmc_profile_kernels()):
        rows.append({"kernel": raw.ssmc_profile_name(i).decode(), "calls_per_step": raw.ssmc_profile_calls(i) // steps,
                     "us_per_step": raw.ssmc_profile_ns(i) / steps / 1e3})
    rows.sort(key=lambda r: -r["us_per_step"])
    total = sum(r["us_per_step"] for r in rows)
    groups: dict[str, float] = {}
    for r in rows:
        r["kind"] = kind_of(r["kernel"])
        groups[r["kind"]] = groups.get(r["kind"], 0.0) + r["us_per_step"]
    macs = exported.model.macs_per_step()
    return {"model": kind, "precision": precision, "target": target.name, "mode": mode, "source": source,
            "macs_per_step": macs,
            "kernel_calls_per_step": sum(r["calls_per_step"] for r in rows), "kernels_us": total, "groups_us": groups, "kernels": rows}


def markdown(result: dict[str, Any]) -> str:
    rate = result["gemv_mac_per_s"]
    out = [f"Measured {result['date']} on {result['machine']} (load average {result['load']}), one thread, "
           f"{result['steps']} steps per model. GEMV rate of this core in the same run: "
           f"{rate / 1e9:.1f} GMAC/s.", "",
           "| model | mode | precision | target | kernel calls / step | all kernels µs | floor µs (MACs ÷ GEMV rate) | kernels ÷ floor | "
           "SSM update µs | matmuls µs | other µs |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in result["models"]:
        floor = m["macs_per_step"] / rate * 1e6
        g = m["groups_us"]
        pick = lambda prefix, g=g: next((v for k, v in g.items() if k.startswith(prefix)), 0.0)  # noqa: E731
        out.append(f"| {m['model']} | {m.get('mode', 'recurrent')} | {m['precision']} | {m.get('target', 'host')} | {m['kernel_calls_per_step']} | {m['kernels_us']:.1f} | "
                   f"{floor:.1f} | {m['kernels_us'] / floor:.1f}× | {pick('SSM'):.1f} | {pick('matmuls'):.1f} | "
                   f"{pick('other'):.1f} |")
    for m in result["models"]:
        out += ["", f"**{m['model']} {m['precision']}**, the ten most expensive kernels ({m['source']}):", "",
                "| kernel | kind | calls / step | µs / step | share |", "|---|---|---|---|---|"]
        for r in m["kernels"][:10]:
            name = r["kernel"] if len(r["kernel"]) < 60 else r["kernel"][:57] + "..."
            out.append(f"| `{name}` | {r['kind']} | {r['calls_per_step']} | {r['us_per_step']:.2f} | "
                       f"{100 * r['us_per_step'] / m['kernels_us']:.0f} % |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["dema", "dmm"])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "int8"])
    ap.add_argument("--zoo", type=Path, default=Path("runs/zoo"))
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--target", default="host", help="a CPU target of this machine's arch (name or .json)")
    ap.add_argument("--mode", default="recurrent", choices=["recurrent", "window"],
                    help="the step to profile: recurrent, or the window step (the papers' K-timestep re-read)")
    ap.add_argument("--no-docs", action="store_true", help="print only; leave docs/ alone")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    import platform

    from ssmc.fsutil import replace_marked_block

    rate = gemv_rate()
    with tempfile.TemporaryDirectory(prefix="ssmc-kernels-") as tmp:
        models = [profile_model(k, args.zoo, args.precision, args.steps, Path(tmp), args.target, args.mode)
                  for k in args.models]
    result = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}",
              "load": " / ".join(f"{x:.2f}" for x in os.getloadavg()), "steps": args.steps,
              "gemv_mac_per_s": rate, "models": models,
              "command": "python tools/bench/static_kernels.py " + " ".join(argv or sys.argv[1:])}
    text = markdown(result)
    print(text)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if not args.no_docs:
        docs = Path(__file__).resolve().parents[2] / "docs"
        (docs / "static-kernels.json").write_text(json.dumps(result, indent=1) + "\n")
        replace_marked_block(docs / "static-kernels.md", DOC_BEGIN, DOC_END, text + "\n",
                             default="# Where the static step's time goes\n\nMade by "
                                     "`python tools/bench/static_kernels.py` (the module docstring says how).\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
