"""Window step benchmark (issue 11): the papers' window semantics (every step re-encodes the last K
timesteps from a zero state) compiled by ssmc, against ONNX Runtime and IREE on the same window step,
for K = 5 ... 160, one interleaved run, one thread, with the compute floor of the same machine.

    python tools/bench/window_step.py                                  # -> docs/window-step.{md,json,png}
    python tools/bench/window_step.py --models dema --ks 5,20 --peers static,ort --rounds 3 --no-docs \\
        --json /tmp/w.json

Models: freshly initialised Hopper-size models (obs 11, act 3, each model's paper configuration,
``step_latency.load_model``'s sizes) with ``K`` set per run; latency does not depend on the weights.
Each is exported in window semantics (``export_step(model, extra, "window")``), fp32.

Peers (``--peers``):

- ``static``: ``ssmc compile --executor static`` (each Mamba layer's scan one ``ssmc::selective_scan``
  loop, compile/scan_kernel.py), run by the runtime's C control loop (``ssmc_control``), ``ssmc_act``
  timed alone;
- ``vm``: the same through the Relax VM executor (same C loop);
- ``ort``: ONNX Runtime, one thread, the StepFunction exported by the dynamo ONNX exporter (the scan
  unrolled: ONNX has no such operator), timed from Python around ``run_with_iobinding``;
- ``iree``: the same StepFunction through iree-turbine's ``aot.export`` and ``iree-compile`` for
  llvm-cpu, timed by ``iree-benchmark-module --device=local-sync``.

Every peer's action and new window are checked against PyTorch before timing (max relative error
<= 1e-4 on the benchmark inputs; the tests hold the 1e-5 bound over 200 steps). Also recorded per
ssmc build: compile seconds and the library's code bytes (``.text``), which should not grow with K.

Floor: MACs per step / this core's single-thread
GEMM rate (numpy/torch 256^3 and 512^3, measured before and after the timing rounds; best), and / the
GEMV rate of tools/bench/gemv_floor.c, timed as an entry in the rounds. The MACs are the model's
``macs_per_step`` in window semantics less the matmul MACs the ``prune-rows`` stage removed (compile/rows.py:
the rows after the last token-mixing op that the action does not read; the manifest's ``extra.matmul_macs``),
i.e. what ssmc's step computes; the peers compute all of ``macs_per_step``.

Interleaving and statistics as tools/bench/static_step.py (``time_entries``): a burst per entry per
round in a fresh random order; the table's p50 is the median over rounds of the burst p50s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ["TVM_NUM_THREADS"] = "1"

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import static_step as ss  # noqa: E402
import step_latency as sl  # noqa: E402

from ssmc.fsutil import atomic_file  # noqa: E402

PEERS = ("static", "static-avx512", "vm", "ort", "iree")
PEER_LABEL = {"static": "ssmc static (C loop)", "static-avx512": "ssmc static, host-avx512 (C loop)",
              "vm": "ssmc VM (C loop)", "ort": "ONNX Runtime (Python, 1 thread)",
              "iree": "IREE llvm-cpu, local-sync"}
DEFAULT_MODELS = ("dema", "dmm", "mambadm", "dt")
DEFAULT_KS = (5, 10, 20, 40, 80, 160)
TOLERANCE = 1e-4
#: issue 11's goals at K = 20
GOALS = {"dema_static_us": 250.0, "dema_iree_ratio": 3.0, "dt_ort_ratio": 1.5, "code_growth": 0.10,
         "compile_s_k160": 60.0}


def text_bytes(library: Path) -> int | None:
    """Bytes of executable code (.text) in a shared library (readelf), None without readelf."""
    try:
        out = subprocess.run(["readelf", "-S", "-W", str(library)], capture_output=True, text=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return sum(int(line.split("]", 1)[1].split()[4], 16) for line in out.splitlines() if " .text " in line)


def build_entries(kind: str, K: int, peers: list[str], work: Path, bundle: Any, say: Any,
                  max_k: dict[str, int] | None = None, peer_ks: set[int] | None = None
                  ) -> tuple[dict[str, Any], list[ss.Entry]]:
    import torch

    from ssmc.compile.build import compile_checkpoint
    from ssmc.compile.export import StepFunction
    from ssmc.numerics import max_rel_error
    from ssmc.train.models import build_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model(kind, *sl.HOPPER, K=K).eval()
    extra = dict(sl.FRESH_EXTRA)
    ckpt = save_checkpoint(model, work / f"{kind}-K{K}-checkpoint", extra)
    win = model.with_semantics("window").eval()
    row: dict[str, Any] = {"model": kind, "K": K, "tokens": 3 * K,
                           "params": win.num_params(), "macs_per_step": win.macs_per_step(), "build": {},
                           "max_rel_error_vs_pytorch": {}}
    say(f"{kind} K={K}: {row['params']:,} params, {row['macs_per_step']:,} MACs/step")
    # the eager StepFunction the peers export (an export_step here would trace the unrolled scan for nothing:
    # minutes at K = 160)
    fn = StepFunction(win, extra["obs_mean"], extra["obs_std"], extra["rtg_scale"]).eval()
    inputs, state = sl._state_after(fn, min(K, 10) + 2, np.random.default_rng(0))
    args_t = [*inputs, *state]
    args = [a.numpy() for a in args_t]
    with torch.inference_mode():
        want = [o.numpy().copy() for o in fn(*args_t)]
    entries = []
    skipped = [p for p in peers if K > (max_k or {}).get(p, K) or (peer_ks is not None and p in ("ort", "iree")
                                                                   and K not in peer_ks)]
    if skipped:
        row["not_built"] = {p: "not at this K (--peer-ks / --ort-max-k / --iree-max-k)" for p in skipped}
        peers = [p for p in peers if p not in skipped]

    def record(peer: str, err: float) -> None:
        row["max_rel_error_vs_pytorch"][peer] = err
        if not err <= TOLERANCE:
            raise RuntimeError(f"{kind} K={K} {peer} disagrees with PyTorch: max relative error {err:.2e}")

    for peer, (executor, target) in ss.SSMC_PEERS.items():  # static, static-avx512 (host-avx512), vm
        if peer not in peers:
            continue
        art = work / f"{kind}-K{K}-{peer}.ssmc"
        t0 = time.perf_counter()
        compile_checkpoint(ckpt, target, "fp32", "window", art, overwrite=True, executor=executor,
                           progress=lambda _m: None)
        row["build"][peer] = {"compile_s": round(time.perf_counter() - t0, 1), "target": target,
                              "text_bytes": text_bytes(art / "lib.so"),
                              "library_bytes": (art / "lib.so").stat().st_size}
        if "macs_computed" not in row:  # prune-rows (compile/rows.py): matmul work the step does not do
            from ssmc.artifact import load_manifest

            mm = load_manifest(art).extra.get("matmul_macs", {})
            row["macs_computed"] = row["macs_per_step"] - (mm.get("graph", 0) - mm.get("computed", 0))
        say(f"  ssmc {peer}: {row['build'][peer]['compile_s']} s, code {row['build'][peer]['text_bytes']} B")
        record(peer, ss.check_ssmc(art, fn))
        entries.append(ss.Entry(f"{kind}@{K}", "fp32", peer, ss.ssmc_runner(bundle, art)))
    if "ort" in peers:
        d = work / f"{kind}-K{K}-ort"
        d.mkdir(parents=True, exist_ok=True)
        peer, info = sl.ort_peer(fn, args_t, d)
        row["build"]["ort"] = {**info, "onnx_bytes": (d / "step.onnx").stat().st_size}
        say(f"  ort: {info.get('export_s', info)}")
        record("ort", float(max_rel_error(peer.outputs(), want)))
        entries.append(ss.Entry(f"{kind}@{K}", "fp32", "ort", ss.python_runner(peer.call), keep=peer))
    if "iree" in peers:
        npys, _ = ss.save_inputs(args, work / f"{kind}-K{K}-inputs")
        try:
            vmfb, info = ss.build_iree(fn, args_t, work / f"{kind}-K{K}-iree")
        except Exception as e:  # a peer that cannot compile the model is reported, not fatal
            row["build"]["iree"] = {"error": _first_error_line(e)}
            say(f"  iree: cannot build: {row['build']['iree']['error']}")
        else:
            row["build"]["iree"] = info
            say(f"  iree: {info}")
            record("iree", float(max_rel_error(ss.run_iree_once(vmfb, npys, len(want), vmfb.parent), want)))
            entries.append(ss.Entry(f"{kind}@{K}", "fp32", "iree", ss.iree_runner(vmfb, npys)))
    return row, entries


#: The K at which each Mamba model's scans are also timed alone (issue 11's DeMa goal is at K = 20).
SCAN_K = 20


def scan_entries(kind: str, K: int, work: Path) -> tuple[list[dict[str, Any]], list[ss.Entry]]:
    """The window step's ``ssmc::selective_scan`` calls (one per Mamba layer and branch, from the export),
    each built alone exactly as the compiler builds it for ``host`` (compile/scan_kernel.py, from the zero
    state) and timed by TVM's own timer in the same interleaved rounds as the steps: what the scans cost
    with nothing else in the step. tools/bench/scan_kernel.py times the same kernel at fixed shapes."""
    import torch
    import tvm

    # tools/bench/scan_kernel.py's builder and inputs (Δ·A in the normal range); this folder is on sys.path
    from scan_kernel import _inputs, build

    from ssmc.compile import scan_kernel
    from ssmc.compile.export import export_step
    from ssmc.compile.tuning import vector_lanes
    from ssmc.targets import load_target
    from ssmc.train.models import build_model
    from ssmc.train.models.mamba import Mamba

    torch.manual_seed(0)
    model = build_model(kind, *sl.HOPPER, K=K).eval()
    if not any(isinstance(m, Mamba) for m in model.modules()):  # DT: no scan, nothing to export
        return [], []
    program = export_step(model, dict(sl.FRESH_EXTRA), "window").program
    shapes: dict[tuple[int, int, int, int], int] = {}
    for node in program.graph.nodes:
        if node.op == "call_function" and "selective_scan" in str(node.target):
            (b, L, d), n = node.args[0].meta["val"].shape, node.args[2].meta["val"].shape[1]
            shapes[b, L, d, n] = shapes.get((b, L, d, n), 0) + 1
    target = load_target("host").tvm_target()
    lanes = vector_lanes(target)
    calls, entries = [], []
    for (b, L, d, n), count in shapes.items():
        lib = build(scan_kernel, (b, L, d, n), target, lanes, work, f"scan-{kind}-{b}x{L}x{d}x{n}", with_h0=False)
        args = [tvm.runtime.tensor(x) for x in _inputs((b, L, d, n), 0)[:5]]
        args += [tvm.runtime.tensor(np.zeros((b, L, d), np.float32)), tvm.runtime.tensor(np.zeros((b, d, n), np.float32))]
        timer = lib.time_evaluator("main", tvm.cpu(), number=1, repeat=1)

        def run(steps: int, timer: Any = timer, args: list[Any] = args) -> ss.Burst:
            return ss.burst_from_samples([int(timer(*args).mean * 1e9) for _ in range(steps)])

        shape = f"{b}x{L}x{d}x{n}"
        calls.append({"shape": shape, "calls_per_step": count, "state_elements": b * L * d * n})
        entries.append(ss.Entry(f"{kind}@{K}", "fp32", f"scan {shape}", run))
    return calls, entries


def _first_error_line(e: Exception) -> str:
    """The compiler's own first ``error:`` line (IREE prints a long diagnostic), else the exception's first line."""
    text = str(e)
    for line in text.splitlines():
        if "error:" in line:
            return line.split("error:", 1)[1].strip()[:200]
    return (text.splitlines() or [type(e).__name__])[0][:200]


def analyse(result: dict[str, Any]) -> None:
    gemm = result["floor"]["gemm_gmacs_best"]
    for row in result["rows"]:
        lat = row["latency"]
        row["floor_us"] = round(row.get("macs_computed", row["macs_per_step"]) / (gemm * 1e3), 1)
        s = lat.get("static", {}).get("p50_us")
        row["static_vs_floor"] = round(s / row["floor_us"], 2) if s else None
        for peer in ("static-avx512", "ort", "iree", "vm"):
            p = lat.get(peer, {}).get("p50_us")
            row[f"{peer}_over_static"] = round(p / s, 2) if p and s else None
        a = lat.get("static-avx512", {}).get("p50_us")
        row["iree_over_static-avx512"] = round(lat["iree"]["p50_us"] / a, 2) if a and "iree" in lat else None
    by = {(r["model"], r["K"]): r for r in result["rows"]}
    checks = {}
    if ("dema", 20) in by:
        r = by["dema", 20]
        s = r["latency"].get("static", {}).get("p50_us")
        checks["dema K=20 static p50 <= 250 us"] = {"value": s, "met": bool(s and s <= GOALS["dema_static_us"])}
        checks["dema K=20 >= 3x faster than IREE"] = {"value": r.get("iree_over_static"),
                                                     "met": bool((r.get("iree_over_static") or 0)
                                                                 >= GOALS["dema_iree_ratio"])}
    if ("dt", 20) in by:
        r = by["dt", 20]
        checks["dt K=20 >= 1.5x faster than ONNX Runtime"] = {"value": r.get("ort_over_static"),
                                                              "met": bool((r.get("ort_over_static") or 0)
                                                                          >= GOALS["dt_ort_ratio"])}
    for kind in sorted({r["model"] for r in result["rows"]}):
        sizes = {r["K"]: r["build"].get("static", {}).get("text_bytes") for r in result["rows"] if r["model"] == kind}
        if sizes.get(10) and sizes.get(160):
            growth = sizes[160] / sizes[10] - 1
            checks[f"{kind} code bytes K=10 -> 160 within ±10 %"] = {"value": round(growth, 3),
                                                                     "met": abs(growth) <= GOALS["code_growth"]}
        if (kind, 160) in by:
            cs = by[kind, 160]["build"].get("static", {}).get("compile_s")
            checks[f"{kind} K=160 compile < 60 s"] = {"value": cs, "met": bool(cs is not None and cs < 60)}
        ks = sorted(k for (m, k) in by if m == kind)
        lat = [by[kind, k]["latency"].get("static", {}).get("p50_us") for k in ks]
        if len(ks) >= 3 and all(lat):
            slope, icpt = np.polyfit(ks, lat, 1)
            pred = np.polyval([slope, icpt], ks)
            r2 = 1 - float(np.sum((np.asarray(lat) - pred) ** 2) / np.sum((np.asarray(lat) - np.mean(lat)) ** 2))
            checks[f"{kind} static latency linear in K (R^2 of a line)"] = {
                "value": round(r2, 4), "met": r2 >= 0.98, "us_per_timestep": round(float(slope), 2)}
    result["checks"] = checks


def _f(v: Any, nd: int = 0) -> str:
    if v is None:
        return "–"
    return f"{v:,.{nd}f}" if isinstance(v, float | int) else str(v)


def markdown(result: dict[str, Any], png: str = "window-step.png") -> str:
    peers = result["peers"]
    lines = [
        "# Window steps as compiled loops: ssmc against ONNX Runtime and IREE, K = 5 … 160",
        "",
        "Generated by `tools/bench/window_step.py` (do not edit by hand). Command:",
        "",
        f"    {result['command']}",
        "",
        f"Measured {result['date']} on {result['machine'].get('cpu', '?')}, one thread, load average "
        f"{result['loadavg_before_timing'][0]:.2f} before timing and {result['loadavg_after_timing'][0]:.2f} after "
        "(a shared 2-core machine: absolute times move between runs; the peers were interleaved, so the ratios "
        "are the comparable numbers). Fresh Hopper-size models, fp32, window semantics.",
        "",
        f"Floor: MACs computed / {result['floor']['gemm_gmacs_best']:.1f} GMAC/s (this core's best single-thread "
        f"GEMM rate in this run; GEMV {result['floor']['gemv_gmacs_best']:.1f} GMAC/s). *MACs/step* is the model's "
        "window forward as written (`macs_per_step()`), which the peers compute; *MACs computed* is that less what "
        "ssmc's `prune-rows` stage removes (compile/rows.py: after the last op that mixes tokens, only the row "
        "the action reads; the manifest's `extra.matmul_macs`).",
        "",
        *([f"**Note.** {result['note']}", ""] if result.get("note") else []),
        "How ssmc compiles a window step: during export each Mamba layer's scan is one `ssmc::selective_scan` "
        "node (train/models/scan_op.py), and the importer lowers it to one TIR loop (compile/scan_kernel.py) "
        "that walks the 3K tokens with each channel's state in registers and computes exp(Δ·A) as a vectorised "
        "polynomial; the projections run over all tokens as register-blocked GEMMs (compile/tuning.py), the rows "
        "the action does not read are not computed after the last op that mixes tokens (DT: the last block's "
        "out-projection, MLP and 59 of its 60 attention queries; compile/rows.py), and "
        "softplus, SiLU, the gate and DT's softmax (two kernels: the exp stored once, then the division) are vectorised arithmetic instead of libm calls. ONNX Runtime and IREE get "
        "the same step with the scan unrolled (ONNX has no scan operator of this kind): their code and export "
        "time grow with K. The target is `host` (x86-64-v3, AVX2: 8 fp32 lanes), as every artifact ssmc ships "
        "for x86-64 by default; `static-avx512`, where run, is the same step for `host-avx512` (x86-64-v4, "
        "16 lanes).",
        "",
        "## Latency (p50 µs per step; p99 in the JSON)",
        "",
        "| model | K | MACs/step | MACs computed | floor µs | " + " | ".join(PEER_LABEL[p] for p in peers)
        + " | static / floor | " + " | ".join(f"{p} / static" for p in peers if p != "static") + " |",
        "|---|---|---|---|---|" + "---|" * len(peers) + "---|" + "---|" * (len(peers) - 1),
    ]
    for r in result["rows"]:
        lat = r["latency"]
        lines.append(f"| {r['model']} | {r['K']} | {r['macs_per_step']:,} | {_f(r.get('macs_computed'))} | "
                     f"{_f(r['floor_us'], 1)} | "
                     + " | ".join(_f(lat.get(p, {}).get("p50_us"), 0) for p in peers)
                     + f" | {_f(r['static_vs_floor'], 1)} | "
                     + " | ".join(_f(r.get(f"{p}_over_static"), 2) for p in peers if p != "static") + " |")
    lines += ["", "## Builds", "",
              "| model | K | ssmc compile s | ssmc code bytes (.text) | ssmc library bytes | ONNX bytes | "
              "max rel. error vs PyTorch (per peer) |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        b = r["build"]
        st = b.get("static", {})
        errs = ", ".join(f"{p} {e:.1e}" for p, e in r["max_rel_error_vs_pytorch"].items())
        errs += "".join(f"; {p}: cannot build ({v['error']})" for p, v in b.items() if "error" in v)
        errs += "".join(f"; {p} not built ({why})" for p, why in r.get("not_built", {}).items())
        lines.append(f"| {r['model']} | {r['K']} | {_f(st.get('compile_s'), 1)} | {_f(st.get('text_bytes'))} | "
                     f"{_f(st.get('library_bytes'))} | {_f(b.get('ort', {}).get('onnx_bytes'))} | {errs} |")
    lines += ["", "## Issue 11's goals", "", "| check | value | met |", "|---|---|---|"]
    for name, c in result["checks"].items():
        lines.append(f"| {name} | {_f(c['value'], 3 if isinstance(c['value'], float) else 0)} | "
                     f"{'yes' if c['met'] else '**no**'} |")
    lines += _ratio_headroom(result)
    lines += _scan_bound(result)
    lines += ["", f"![latency against K]({png})", ""]
    return "\n".join(lines)


def _ratio_headroom(result: dict[str, Any]) -> list[str]:
    """For each "N× faster than a peer" goal, the rate the step would need: can this core reach it at all?"""
    gemm = result["floor"]["gemm_gmacs_best"]
    goals = {("dema", "iree"): GOALS["dema_iree_ratio"], ("dt", "ort"): GOALS["dt_ort_ratio"]}
    out = []
    for r in result["rows"]:
        for (model, peer), want in goals.items():
            lat = r["latency"].get(peer, {}).get("p50_us")
            if lat is None or r["K"] != 20 or r["model"] != model:
                continue
            need_us = lat / want
            macs = r.get("macs_computed", r["macs_per_step"])
            need = macs / (need_us * 1e3)
            out.append(f"- {r['model']} K={r['K']}: {want:g}x faster than {PEER_LABEL[peer]} ({lat:,.0f} µs) is "
                       f"{need_us:,.0f} µs, i.e. the {macs:,} MACs ssmc's step computes at {need:.1f} GMAC/s, against this "
                       f"core's best single-thread GEMM rate of {gemm:.1f} GMAC/s in the same run"
                       + (" (above it: not reachable at fp32 by any schedule)." if need > gemm else "."))
    return ["", "What the ratio goals ask of this core:", "", *out] if out else []


def _scan_bound(result: dict[str, Any]) -> list[str]:
    """Each Mamba model's scans at K = SCAN_K timed alone, against its whole step and issue 11's DeMa goals."""
    out = []
    for r in result["rows"]:
        calls = r.get("scan_alone")
        step = r["latency"].get("static", {}).get("p50_us")
        if not calls or step is None or any("us_p50" not in c for c in calls):
            continue
        us = sum(c["us_p50"] * c["calls_per_step"] for c in calls)
        elements = sum(c["state_elements"] * c["calls_per_step"] for c in calls)
        shapes = ", ".join(f"{c['calls_per_step']} × {c['shape']}" for c in calls)
        text = (f"- {r['model']} K={r['K']}: its {sum(c['calls_per_step'] for c in calls)} scans alone take {us:,.0f} µs "
                f"a step ({shapes}; {elements:,} state "
                f"elements, {us * 1e3 / elements:.2f} ns each: an exp(Δ·A), the state update and C·h), "
                f"{us / step:.0%} of the whole step's {step:,.0f} µs")
        if r["model"] == "dema":
            iree = r["latency"].get("iree", {}).get("p50_us")
            goal = min(GOALS["dema_static_us"], iree / GOALS["dema_iree_ratio"] if iree else float("inf"))
            text += (f"; the goals ask for the whole step in {goal:,.0f} µs, "
                     + ("less than the scans alone take." if us > goal else "which the scans alone leave room for."))
        out.append(text + ("" if text.endswith(".") else "."))
    if not out:
        return []
    return ["", "The scans alone (each `ssmc::selective_scan` call of the step built by itself for `host` and timed in the "
            "same rounds; tools/bench/scan_kernel.py has the kernel's own benchmark, docs/scan-kernel.md what bounds it):",
            "", *out]


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted({r["model"] for r in result["rows"]}, key=DEFAULT_MODELS.index)
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 3.8), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        rows = sorted((r for r in result["rows"] if r["model"] == kind), key=lambda r: r["K"])
        ks = [r["K"] for r in rows]
        for p in result["peers"]:
            ys = [r["latency"].get(p, {}).get("p50_us") for r in rows]
            if any(y is not None for y in ys):
                ax.plot(ks, [y if y is not None else np.nan for y in ys], marker="o", label=PEER_LABEL[p])
        ax.plot(ks, [r["floor_us"] for r in rows], "k--", label="floor (MACs / GEMM rate)")
        ax.axhline(1000, color="grey", lw=0.8, ls=":", label="1 ms budget (500 Hz)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("K (timesteps in the window)")
        ax.set_title(kind)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("p50 µs per step (log)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle("Window step latency against K, one thread (tools/bench/window_step.py)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--ks", default=",".join(map(str, DEFAULT_KS)), help="comma-separated context lengths")
    parser.add_argument("--peers", default="static,ort,iree", help=f"comma-separated, of {', '.join(PEERS)}")
    parser.add_argument("--iree-max-k", type=int, default=40,
                        help="largest K built with IREE (its compile of the unrolled scan grows with K)")
    parser.add_argument("--ort-max-k", type=int, default=160, help="largest K exported to ONNX Runtime")
    parser.add_argument("--peer-ks", default=None,
                        help="comma-separated Ks at which ORT and IREE are built (default: every K); their exports "
                             "of the unrolled scan take minutes each on a shared 2-core machine")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--round-ms", type=float, default=100.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=Path("docs/window-step.json"))
    parser.add_argument("--doc", type=Path, default=Path("docs/window-step.md"))
    parser.add_argument("--png", type=Path, default=Path("docs/window-step.png"))
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--from-json", type=Path, default=None,
                        help="re-render --doc and --png from a JSON this tool wrote, measuring nothing")
    args = parser.parse_args(argv)
    if args.from_json is not None:
        result = json.loads(args.from_json.read_text())
        analyse(result)
        with atomic_file(args.doc) as f:
            f.write_text(markdown(result, args.png.name))
        plot(result, args.png)
        return 0
    import torch

    torch.set_num_threads(1)
    t_start = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.0f} s] {msg}", file=sys.stderr, flush=True)

    kinds = [k for k in args.models.split(",") if k]
    ks = [int(k) for k in args.ks.split(",") if k]
    peers = [p for p in args.peers.split(",") if p]
    if unknown := [p for p in peers if p not in PEERS]:
        parser.error(f"unknown peer: {', '.join(unknown)}")
    if "static-avx512" in peers:
        from ssmc.targets import missing_cpu_features

        if lacking := missing_cpu_features("host-avx512"):
            parser.error(f"static-avx512: this CPU lacks {', '.join(lacking)}")
    argv_list = argv if argv is not None else sys.argv[1:]
    result: dict[str, Any] = {"command": "python tools/bench/window_step.py " + " ".join(argv_list),
                              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": ss.machine(),
                              "peers": peers, "ks": ks, "rounds": args.rounds, "git": ss.git_state()}
    from ssmc.runtime import runtime_bundle

    bundle = runtime_bundle(progress=say)
    with tempfile.TemporaryDirectory(prefix="ssmc-window-step-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        floors = ss.build_gemv_floor(work)
        blas_before = ss.measure_blas()
        rows, entries = [], []
        for kind in kinds:
            for K in ks:
                row, es = build_entries(kind, K, peers, work, bundle, say,
                                        {"iree": args.iree_max_k, "ort": args.ort_max_k},
                                        {int(k) for k in args.peer_ks.split(",")} if args.peer_ks else None)
                if K == SCAN_K and "static" in peers:
                    row["scan_alone"], scans = scan_entries(kind, K, work)
                    es += scans
                rows.append(row)
                entries += es
        for name, binary in floors.items():
            entries.append(ss.Entry("floor", "fp32", f"gemv-{name}", ss.floor_runner(binary)))
        result["loadavg_before_timing"] = [round(x, 2) for x in os.getloadavg()]
        say(f"timing {len(entries)} entries, {args.rounds} rounds")
        result["round_log"] = ss.time_entries(entries, args.rounds, args.round_ms, args.seed, say)
        result["loadavg_after_timing"] = [round(x, 2) for x in os.getloadavg()]
        blas_after = ss.measure_blas()
    summaries = {e.key: ss.summarise(e) for e in entries}
    for row in rows:
        row["latency"] = {p: summaries[f"{row['model']}@{row['K']}/fp32/{p}"] for p in peers
                          if f"{row['model']}@{row['K']}/fp32/{p}" in summaries}
        for call in row.get("scan_alone", []):
            call["us_p50"] = summaries[f"{row['model']}@{row['K']}/fp32/scan {call['shape']}"]["p50_us"]
    blas = {k: max(blas_before["gmacs"][k], blas_after["gmacs"][k]) for k in blas_before["gmacs"]}
    gemv = {f"C {k}": round(256 * 256 / (summaries[f"floor/fp32/gemv-{k}"]["p50_us"] * 1e3), 2) for k in floors}
    gemv.update({k: round(v, 2) for k, v in blas.items() if k.split()[1].startswith("1x")})
    gemm = {k: round(v, 2) for k, v in blas.items() if not k.split()[1].startswith("1x")}
    result["floor"] = {"gemm_gmacs": gemm, "gemm_gmacs_best": max(gemm.values()), "gemv_gmacs": gemv,
                       "gemv_gmacs_best": max(gemv.values())}
    result["rows"] = rows
    analyse(result)
    with atomic_file(args.json) as f:
        f.write_text(json.dumps(result, indent=1) + "\n")
    if not args.no_docs:
        with atomic_file(args.doc) as f:
            f.write_text(markdown(result, args.png.name))
        plot(result, args.png)
    print(markdown(result, args.png.name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
