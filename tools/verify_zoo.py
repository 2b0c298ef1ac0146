"""Compile the zoo's hopper checkpoints for the host at fp32 and int8 and verify each artifact against its
checkpoint with the real CLI; writes docs/verify/<artifact>/verify.{json,md,png} and docs/runtime.md's
results table source, docs/verify/summary.json.

    python tools/verify_zoo.py --runs runs/zoo --models dema dmm mambadm dmh --episodes 10

The checkpoint of MODEL is ``--runs``/MODEL, or with ``--run-path`` a pattern with ``{model}`` in it: the
checkpoints of docs/runtime.md's table come from one small sweep (ssmc/configs/sweeps/verify-zoo.json)::

    ssmc data collect Hopper-v5 --quality medium-replay
    ssmc sweep verify-zoo
    python tools/verify_zoo.py --run-path 'runs/sweeps/verify-zoo/{model}/hopper-medium-replay/seed0' \
        --models dmm dema mambadm dt --episodes 2
    python tools/verify_zoo.py --table
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from ssmc.fsutil import atomic_file


def sh(cmd: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return proc, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/zoo")
    ap.add_argument("--run-path", default=None,
                    help="checkpoint folder pattern with {model} (default: --runs/{model})")
    ap.add_argument("--models", nargs="+", default=["dema", "dmm"])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "int8"])
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--out", default="docs/verify")
    ap.add_argument("--table", action="store_true", help="print docs/runtime.md's table from --out/summary.json")
    args = ap.parse_args()
    if args.table:
        print(table(json.loads((Path(args.out) / "summary.json").read_text())))
        return 0
    rows = []
    pattern = args.run_path or f"{args.runs}/{{model}}"
    if "{model}" not in pattern:
        sys.exit(f"error: --run-path {pattern!r} has no {{model}} in it")
    for model in args.models:
        ckpt = pattern.format(model=model)
        if not Path(ckpt, "config.json").is_file():
            sys.exit(f"error: no checkpoint for {model} at {ckpt} (config.json missing)")
        for precision in args.precisions:
            art = Path(args.artifacts) / f"{model}-host-{precision}.ssmc"
            compile_cmd = ["ssmc", "compile", "--model", ckpt, "--target", "host",
                           "--precision", precision, "--out", str(art), "--force"]
            proc, t_compile = sh(compile_cmd)
            if proc.returncode != 0:
                sys.exit(f"failed: {shlex.join(compile_cmd)}\n{proc.stderr}")
            report = Path(args.out) / art.name.removesuffix(".ssmc")
            verify_cmd = ["ssmc", "verify", str(art), "--checkpoint", ckpt, "--episodes",
                          str(args.episodes), "--json", "--report", str(report)]
            proc, t_verify = sh(verify_cmd)
            if proc.returncode not in (0, 1):
                sys.exit(f"failed: {shlex.join(verify_cmd)}\n{proc.stderr}")
            verdict = json.loads(proc.stdout)
            rows.append({"model": model, "precision": precision, "compile_cmd": shlex.join(compile_cmd),
                         "verify_cmd": shlex.join(verify_cmd), "compile_s": round(t_compile, 1),
                         "verify_s": round(t_verify, 1), "verdict": verdict})
            checks = {c["name"]: c for c in verdict["checks"]}
            print(f"{model} {precision}: " + ", ".join(f"{k}={'-' if c['passed'] is None else c['passed']}"
                                                       f"({c['value']})" for k, c in checks.items()), flush=True)
            with atomic_file(Path(args.out) / "summary.json") as tmp:  # after every row: partial runs keep theirs
                tmp.write_text(json.dumps(rows, indent=1))
    return 0


def table(rows: list[dict]) -> str:
    """The Markdown table docs/runtime.md shows for a verify_zoo run."""
    out = ["| artifact | executor | recorded err | fresh err (200 steps) | score runtime / PyTorch (same seeds) | "
           "C-loop p50 / p99 at 500 Hz | misses / 2000 | peak RSS | artifact bytes | verdict |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        v = r["verdict"]
        c = {x["name"]: x for x in v["checks"]}
        lat = v["c_loop"]["latency_us"]
        failed = [n for n, x in c.items() if x["passed"] is False]
        rt, pt = v["runtime_rollout"], v["pytorch_rollout"]
        out.append(f"| {r['model']}-host-{r['precision']} ({v['semantics']}) | {v['c_loop']['executor']} | "
                   f"{c['recorded']['value']:.1e} | {c['fresh']['value']:.1e} | "
                   f"{rt['normalized_mean']:.2f} / {pt['normalized_mean']:.2f} ({rt['episodes']} eps) | "
                   f"{lat['p50']:.0f} / {lat['p99']:.0f} µs | {v['c_loop']['deadline_misses']} | "
                   f"{v['c_loop']['peak_rss_kb'] / 1024:.1f} MiB | {v['artifact_bytes']:,} | "
                   f"{'PASS' if v['passed'] else 'FAIL (' + ', '.join(failed) + ')'} |")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
