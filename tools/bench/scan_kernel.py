"""The selective-scan kernel alone (compile/scan_kernel.py), per state element, at the models' shapes.

    python tools/bench/scan_kernel.py                                  # -> docs/scan-kernel.{md,json}
    git show HEAD~1:compile/scan_kernel.py > /tmp/old_scan.py
    python tools/bench/scan_kernel.py --baseline /tmp/old_scan.py --no-docs   # a change, before and after

The SSM update is most of a recurrent DeMa step (docs/static-step.md, "Where the time goes"), so a
change to its loop is judged here first, where the machine's noise is smallest: the kernel is built
alone for each ``--targets`` descriptor exactly as the compiler builds it (same ``selective_scan_primfunc``,
same lane count), and timed with TVM's ``time_evaluator`` on fixed random inputs of DeMa's and DMM's
shapes (Δ in [0.001, 0.1], A = -U(1, d_state), so exp(Δ·A) stays in the normal range), in ``--rounds``
rounds, every entry once per round in a fresh random order. With ``--baseline FILE`` (another version
of compile/scan_kernel.py) both versions run in the same rounds and their outputs are compared (max
relative difference); the ratio baseline ÷ current is the number to read. One thread; a kernel call of
a few µs includes ~0.1 µs of call overhead.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DOC_BEGIN, DOC_END = "<!-- scan_kernel:begin -->", "<!-- scan_kernel:end -->"
#: (name, batch, tokens, d_inner, d_state): what one call of the kernel covers in a step.
SHAPES = {
    "dema-recurrent": (1, 3, 128, 64),  # DeMa (Hopper, d_model 64): one layer, a timestep's 3 tokens
    "dema-window-k20": (1, 60, 128, 64),  # the papers' window step: 3K tokens from zero
    "dmm-recurrent": (1, 2, 128, 16),  # DMM: R_t and s_t together (its step feeds a_t alone after)
}


def _load_kernel_module(path: Path | None) -> Any:
    if path is None:
        from ssmc.compile import scan_kernel

        return scan_kernel
    spec = importlib.util.spec_from_file_location(f"scan_kernel_{abs(hash(str(path)))}", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"error: cannot import {path} as a Python module")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not hasattr(mod, "selective_scan_primfunc"):
        raise SystemExit(f"error: {path} has no selective_scan_primfunc (is it a compile/scan_kernel.py?)")
    return mod


def _inputs(shape: tuple[int, int, int, int], seed: int) -> list[np.ndarray]:
    b, L, d, n = shape
    rng = np.random.default_rng(seed)
    log2e = 1.0 / np.log(2.0)
    return [x.astype(np.float32) for x in (
        rng.uniform(0.001, 0.1, (b, L, d)), rng.standard_normal((b, L, d)),
        -rng.uniform(1.0, float(n), (d, n)) * log2e,
        rng.standard_normal((b, L, n)), rng.standard_normal((b, L, n)), rng.standard_normal((b, d, n)))]


def build(mod: Any, shape: tuple[int, int, int, int], target: Any, lanes: int, workdir: Path, tag: str,
          with_h0: bool = True) -> Any:
    """The kernel built for ``target``, loaded as a module: with h0 as the recurrent step calls it, or from the
    zero state (``with_h0=False``) as a window step does."""
    import tvm

    b, L, d, n = shape
    func = mod.selective_scan_primfunc(b, L, d, n, lanes, with_h0).with_attr("global_symbol", "main")
    so = workdir / f"{tag}.so"
    tvm.compile(tvm.IRModule({"main": func}), target=target).export_library(str(so))
    return tvm.runtime.load_module(str(so))


def run(targets: list[str], shapes: list[str], baseline: Path | None, rounds: int, number: int,
        seed: int) -> dict[str, Any]:
    import tvm

    from ssmc.compile.tuning import vector_lanes
    from ssmc.targets import load_target, missing_cpu_features

    versions = {"current": _load_kernel_module(None)}
    if baseline is not None:
        versions["baseline"] = _load_kernel_module(baseline)
    entries: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="ssmc-scan-") as tmp:
        for tname in targets:
            t = load_target(tname)
            if t.device != "cpu" or t.arch != platform.machine():
                raise SystemExit(f"error: {tname}: only CPU targets of this machine ({platform.machine()}) "
                                 "can be timed here")
            if missing_cpu_features(t):
                print(f"skip {tname}: this CPU lacks {', '.join(missing_cpu_features(t))}", file=sys.stderr)
                continue
            tt = t.tvm_target()
            lanes = vector_lanes(tt)
            for sname in shapes:
                shape = SHAPES[sname]
                ins = [tvm.runtime.tensor(x) for x in _inputs(shape, seed)]
                b, L, d, n = shape
                for vname, mod in versions.items():
                    key = f"{tname}/{sname}/{vname}"
                    lib = build(mod, shape, tt, lanes, Path(tmp), key.replace("/", "_"))
                    outs = [tvm.runtime.tensor(np.zeros((b, L, d), np.float32)),
                            tvm.runtime.tensor(np.zeros((b, d, n), np.float32))]
                    lib["main"](*ins, *outs)
                    y = outs[0].numpy()
                    if not np.all(np.isfinite(y)):
                        raise SystemExit(f"error: {key}: the kernel produced NaN/inf")
                    used = mod.scan_lanes(n, lanes) if hasattr(mod, "scan_lanes") else lanes
                    entries[key] = {"target": tname, "shape": sname, "version": vname, "lanes": used,
                                    "elements": b * L * d * n, "lib": lib, "ins": ins, "outs": outs, "y": y,
                                    "us": []}
        rng = random.Random(seed)
        keys = list(entries)
        t0 = time.time()
        for r in range(rounds):
            rng.shuffle(keys)
            for k in keys:
                e = entries[k]
                te = e["lib"].time_evaluator("main", tvm.cpu(), number=number, repeat=1)
                e["us"].append(te(*e["ins"], *e["outs"]).mean * 1e6)
            print(f"round {r + 1}/{rounds}", file=sys.stderr)
    rows = []
    for k, e in entries.items():
        us = float(np.median(e["us"]))
        row = {key: e[key] for key in ("target", "shape", "version", "lanes", "elements")}
        row.update(us_p50=us, us_min=float(min(e["us"])), ns_per_element=us * 1e3 / e["elements"])
        base = entries.get(k.rsplit("/", 1)[0] + "/baseline")
        if e["version"] == "current" and base is not None:
            row["baseline_us_p50"] = float(np.median(base["us"]))
            row["baseline_over_current"] = row["baseline_us_p50"] / us
            row["max_rel_diff_vs_baseline"] = float(np.abs(e["y"] - base["y"]).max() / np.abs(base["y"]).max())
        rows.append(row)
    return {"rows": rows, "rounds": rounds, "number": number, "seconds": round(time.time() - t0, 1),
            "baseline": str(baseline) if baseline else None}


def markdown(res: dict[str, Any], command: str) -> str:
    has_base = res["baseline"] is not None
    head = "| target | shape (b, tokens, d_inner, d_state) | lanes used | µs / call, p50 | ns / state element |"
    sep = "|---|---|---|---|---|"
    if has_base:
        head += " baseline µs | baseline ÷ current | max rel. diff |"
        sep += "---|---|---|"
    lines = [f"Generated by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
             f"{res['rounds']} interleaved rounds of {res['number']} calls per entry, one thread.", "", head, sep]
    for r in res["rows"]:
        if r["version"] != "current":
            continue
        line = (f"| {r['target']} | {r['shape']} {SHAPES[r['shape']]} | {r['lanes']} | {r['us_p50']:.2f} | "
                f"{r['ns_per_element']:.3f} |")
        if has_base:
            line += (f" {r['baseline_us_p50']:.2f} | {r['baseline_over_current']:.2f}× | "
                     f"{r['max_rel_diff_vs_baseline']:.1e} |")
        lines.append(line)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--targets", default="host,host-avx512", help="comma-separated target descriptors")
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of {', '.join(SHAPES)}")
    ap.add_argument("--baseline", type=Path, help="another compile/scan_kernel.py to time beside this one")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--number", type=int, default=300, help="calls per timing")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=ROOT / "docs" / "scan-kernel.json")
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "scan-kernel.md")
    ap.add_argument("--no-docs", action="store_true", help="print the table; write nothing")
    a = ap.parse_args(argv)
    shapes = [s for s in a.shapes.split(",") if s]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        raise SystemExit(f"error: unknown shape {unknown[0]!r}; known: {', '.join(SHAPES)}")
    if a.baseline is not None and not a.baseline.is_file():
        raise SystemExit(f"error: --baseline {a.baseline}: no such file")
    res = run([t for t in a.targets.split(",") if t], shapes, a.baseline, a.rounds, a.number, a.seed)
    command = "python tools/bench/scan_kernel.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = markdown(res, command.strip())
    print(md)
    if a.no_docs:
        return 0
    a.json.write_text(json.dumps(res, indent=1) + "\n")
    text = a.doc.read_text() if a.doc.exists() else ""
    if DOC_BEGIN in text and DOC_END in text:
        pre, rest = text.split(DOC_BEGIN, 1)
        text = pre + DOC_BEGIN + "\n" + md + DOC_END + rest.split(DOC_END, 1)[1]
    else:
        text = text + ("\n" if text else "") + DOC_BEGIN + "\n" + md + DOC_END + "\n"
    a.doc.write_text(text)
    print(f"wrote {a.doc} and {a.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
