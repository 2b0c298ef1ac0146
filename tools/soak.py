"""Soak the C runtime: N steps of the C control-loop example (no Python in the loop), resident memory
and the window's step latency (mean, max) sampled every --every steps; writes docs/soak.md,
docs/soak.json and docs/soak.png.

    python tools/soak.py ARTIFACT --steps 1000000 --every 10000 --rate 500   # 500 Hz: 2000 s

``--rate`` is the loop's rate (default 1e9: unthrottled, no sleep between steps). Flat memory means
the last sample equals the first after warm-up; the doc states the growth in bytes per million steps.
Latency drift: the mean step latency of the last tenth of the windows against the first tenth.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from ssmc.artifact import load_manifest
from ssmc.fsutil import atomic_file
from ssmc.runtime import runtime_bundle


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact")
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--every", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=1e9, help="loop rate in Hz (default: unthrottled)")
    ap.add_argument("--out", default="docs")
    args = ap.parse_args()
    bundle = runtime_bundle(progress=lambda m: print(m, file=sys.stderr))
    cmd = bundle.command(args.artifact, "--steps", str(args.steps), "--rate", f"{args.rate:g}",
                         "--rss-every", str(args.every))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"soak failed: {proc.stderr.strip()}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = [line.split()[1:] for line in proc.stderr.splitlines() if line.startswith("rss ")]
    samples = [(int(r[0]), int(r[1])) for r in rows]
    windows = [(int(r[0]), float(r[2]), float(r[3])) for r in rows if len(r) >= 4]  # (step, mean µs, max µs)
    tenth = max(len(windows) // 10, 1)
    drift = None
    if len(windows) >= 2:
        first_mean = sum(w[1] for w in windows[:tenth]) / tenth
        last_mean = sum(w[1] for w in windows[-tenth:]) / tenth
        drift = {"first_tenth_mean_us": round(first_mean, 2), "last_tenth_mean_us": round(last_mean, 2),
                 "ratio": round(last_mean / first_mean, 3)}
    first, last = samples[0][1], samples[-1][1]
    growth_per_m = (last - first) * 1024 / max(samples[-1][0] - samples[0][0], 1) * 1e6
    result = {"artifact": args.artifact, "command": " ".join(cmd), "wall_s": round(wall, 1), "summary": summary,
              "rss_kb": samples, "rss_first_kb": first, "rss_last_kb": last, "rss_max_kb": max(b for _, b in samples),
              "growth_bytes_per_million_steps": growth_per_m, "machine": platform.platform(),
              "rate_hz": args.rate, "latency_windows_us": windows, "latency_drift": drift}
    out = Path(args.out)
    with atomic_file(out / "soak.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if windows else 1, figsize=(11 if windows else 7, 3), squeeze=False)
    ax = axes[0][0]
    ax.plot([a / 1e6 for a, _ in samples], [b / 1024 for _, b in samples])
    ax.set_xlabel("steps (millions)")
    ax.set_ylabel("resident memory (MiB)")
    ax.set_ylim(0, max(b for _, b in samples) / 1024 * 1.2)
    ax.set_title(f"C control loop soak: {summary['model_kind']} {summary['precision']}, {summary['steps']:,} steps",
                 fontsize=9)
    if windows:
        ax = axes[0][1]
        ax.plot([w[0] / 1e6 for w in windows], [w[1] for w in windows], label=f"mean per {args.every:,} steps")
        ax.plot([w[0] / 1e6 for w in windows], [w[2] for w in windows], lw=0.6, label="max per window")
        ax.set_yscale("log")
        ax.set_xlabel("steps (millions)")
        ax.set_ylabel("ssmc_act µs")
        ax.legend(fontsize=7)
        ax.set_title("step latency over the soak", fontsize=9)
    fig.tight_layout()
    with atomic_file(out / "soak.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    lat = summary["latency_us"]
    manifest = load_manifest(args.artifact)
    md = f"""# Runtime soak: flat resident memory

`{' '.join(['python', 'tools/soak.py', args.artifact, '--steps', str(args.steps), '--every', str(args.every),
             '--rate', f'{args.rate:g}'])}`

The C control-loop example (`runtime/c/examples/control_loop.c`, no Python) stepped
`{summary['model_kind']}` ({summary['precision']}, target `{summary['target']}`, {manifest.param_count:,} parameters,
{manifest.state_bytes:,} state bytes, {manifest.obs_dim} observations, executor `{summary.get('executor', '?')}`)
{summary['steps']:,} times {'back to back' if args.rate >= 1e8 else f'at {args.rate:g} Hz'} in {wall:.0f} s, sampling
its resident memory (`/proc/self/statm`) and the window's step latency every {args.every:,} steps.

| | value |
|---|---|
| steps / errors | {summary['steps']:,} / {summary['errors']} |
| RSS at first sample | {first:,} KiB |
| RSS at last sample | {last:,} KiB |
| max RSS sampled / peak (VmHWM) | {result['rss_max_kb']:,} KiB / {summary['peak_rss_kb']:,} KiB |
| growth | {growth_per_m:,.0f} bytes per million steps |
| step latency p50 / p99 / max | {lat['p50']:.0f} / {lat['p99']:.0f} / {lat['max']:.0f} µs |
| deadline misses | {summary.get('deadline_misses', '–')} |
| latency drift: mean of the first / last tenth of the windows | {_drift(drift)} |

The machine was shared while this ran (latency is not the point here; see docs/bench.md).

![soak](soak.png)
"""
    with atomic_file(out / "soak.md") as tmp:
        tmp.write_text(md)
    print(json.dumps({k: result[k] for k in ("rss_first_kb", "rss_last_kb", "growth_bytes_per_million_steps",
                                            "wall_s")}))
    return 0


def _drift(drift: dict | None) -> str:
    if drift is None:
        return "–"
    return f"{drift['first_tenth_mean_us']:.1f} / {drift['last_tenth_mean_us']:.1f} µs (x{drift['ratio']:.2f})"


if __name__ == "__main__":
    sys.exit(main())
