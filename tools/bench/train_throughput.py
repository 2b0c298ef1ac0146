"""CPU training throughput per model: gradient steps/s at batch 64 and each paper's context K, with the
fused numba scan (train/models/fused_scan.py, the default) against the torch scan it replaced
(scan.SelectiveScanFn, selected with SSMC_FUSED_SCAN=0): the before/after of issue 13.

Synthetic batches in the sampler's layout (the data does not change the cost); each model is timed for
--steps steps after --warmup steps, with the thread count given, the two scans interleaved step by step
so that a change in the machine's load hits both alike. Both wall-clock and thread CPU time are recorded:
on a shared machine the CPU time is the steadier number (it leaves out time spent preempted). Writes a
Markdown table (and JSON) to --out.

    python tools/bench/train_throughput.py --threads 1 --out docs/training-throughput.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from ssmc.train.models import MODELS, build_model

HOPPER = (11, 3)


def synthetic_batch(model, batch: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    K, (o, a) = model.config.K, HOPPER
    mask = torch.ones(batch, K)
    return {
        "observations": torch.randn(batch, K, o, generator=g),
        "actions": torch.rand(batch, K, a, generator=g) * 2 - 1,
        "prev_actions": torch.rand(batch, K, a, generator=g) * 2 - 1,
        "rtg": torch.rand(batch, K, 1, generator=g) * 3,
        "prev_rtg": torch.rand(batch, K, 1, generator=g) * 3,
        "timesteps": torch.arange(K).expand(batch, K).contiguous(),
        "mask": mask,
    }


SCANS = ("torch", "fused")  # before (scan.SelectiveScanFn), after (fused_scan.FusedSelectiveScanFn)


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2]


def bench(name: str, batch: int, steps: int, warmup: int) -> dict:
    """One model, both scans interleaved (models without a Mamba layer are timed once)."""
    from ssmc.train.models import fused_scan
    from ssmc.train.models.mamba import Mamba

    torch.manual_seed(0)
    model = build_model(name, obs_dim=HOPPER[0], act_dim=HOPPER[1]).train()
    scans = SCANS if any(isinstance(m, Mamba) for m in model.modules()) else ("torch",)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    batches = [synthetic_batch(model, batch, g) for _ in range(4)]
    wall: dict[str, list[float]] = {s: [] for s in scans}
    cpu: dict[str, list[float]] = {s: [] for s in scans}
    for i in range(warmup + steps):
        for scan in scans:
            os.environ[fused_scan.ENV_SWITCH] = "1" if scan == "fused" else "0"
            b = batches[i % len(batches)]
            t0, c0 = time.perf_counter(), time.thread_time()
            loss = model.loss(b)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i >= warmup:
                wall[scan].append(time.perf_counter() - t0)
                cpu[scan].append(time.thread_time() - c0)
    os.environ.pop(fused_scan.ENV_SWITCH, None)
    row = {"model": name, "K": model.config.K, "params": model.num_params(), "batch": batch}
    for scan in scans:
        row[f"{scan}_wall_ms"] = round(_median(wall[scan]) * 1e3, 1)
        row[f"{scan}_cpu_ms"] = round(_median(cpu[scan]) * 1e3, 1)
    if "fused" in scans:
        row["speedup_cpu"] = round(row["torch_cpu_ms"] / row["fused_cpu_ms"], 2)
        row["speedup_wall"] = round(row["torch_wall_ms"] / row["fused_wall_ms"], 2)
    return row


def profile(name: str, batch: int) -> None:
    """Where one training step's time goes, fused scan on (FusedSelectiveScanFn rows are the scan)."""
    from torch.profiler import profile as torch_profile

    torch.manual_seed(0)
    model = build_model(name, obs_dim=HOPPER[0], act_dim=HOPPER[1]).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    b = synthetic_batch(model, batch, torch.Generator().manual_seed(0))

    def step():
        loss = model.loss(b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    with torch_profile() as prof:
        step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def kernels(batch: int, repeats: int = 5) -> list[dict]:
    """The fused kernels alone at DeMa's layer shape (d_inner 128, d_state 64, 60 tokens, skip and gate
    on): ns per state element (batch · tokens · d_inner · d_state) of the fp32 exp, the scan forward and
    its backward; the fastest of ``repeats`` calls (the kernels' work is fixed, so the minimum is the
    call least disturbed by other jobs)."""
    import numpy as np
    from numba import njit

    from ssmc.train.models import _fused_kernels as k
    from ssmc.train.models import fused_scan

    @njit(fastmath=True)
    def exp_loop(x, out):
        for i in range(x.shape[0]):
            out[i] = k._exp(x[i])

    b, d, L, n = batch, 128, 60, 64
    rng = np.random.default_rng(0)
    u, z, gout = (rng.standard_normal((b, L, d)).astype(np.float32) for _ in range(3))
    delta = (rng.random((b, L, d)) * 0.1).astype(np.float32)
    A = -np.tile(np.arange(1, n + 1, dtype=np.float32), (d, 1))
    B, C = (rng.standard_normal((b, L, n)).astype(np.float32) for _ in range(2))
    D = np.ones(d, np.float32)
    out, ys, h = np.empty((b, L, d), np.float32), np.empty((b, L, d), np.float32), np.empty((b, d, n), np.float32)
    gu, gdelta, gz, gA, gB, gC, gD = (np.zeros_like(a) for a in (u, u, u, A, B, C, D))
    x = (rng.standard_normal(b * d * L * n // 16) * 4).astype(np.float32)
    ex = np.empty_like(x)
    ckpt = np.empty((b, d, (L - 1) // fused_scan.CHUNK, n), np.float32)
    work = {
        "exp": (lambda: exp_loop(x, ex), x.size),
        "scan forward": (lambda: k.forward(u, delta, A, B, C, D, z, True, out, ys, h, ckpt, fused_scan.CHUNK),
                         b * d * L * n),
        "scan backward": (lambda: k.backward(u, delta, A, B, C, D, z, True, ys, gout, gu, gdelta, gz, gA, gB, gC, gD,
                                             ckpt, fused_scan.CHUNK), b * d * L * n),
    }
    rows = []
    for name, (fn, elements) in work.items():
        fn()  # compile / load from the cache
        best = min(_timed(fn) for _ in range(repeats))
        rows.append({"kernel": name, "elements": elements, "ms": round(best * 1e3, 2),
                     "ns_per_element": round(best / elements * 1e9, 3)})
    return rows


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="Markdown file to write (and .json beside it).")
    ap.add_argument("--profile", metavar="MODEL", default=None,
                    help="Only profile one fused-scan training step of MODEL (torch.profiler, self CPU time).")
    ap.add_argument("--kernels", action="store_true",
                    help="Only time the fused kernels alone at DeMa's layer shape (ns per state element).")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.kernels:
        for r in kernels(args.batch):
            print(f"{r['kernel']:14s} {r['ms']:8.2f} ms  {r['ns_per_element']:.3f} ns / element")
        return
    if args.profile:
        profile(args.profile, args.batch)
        return
    load_before = os.getloadavg()[0]
    rows = [bench(m, args.batch, args.steps, args.warmup) for m in args.models]
    load_after = os.getloadavg()[0]
    for r in rows:
        print(json.dumps(r))
    if args.out:
        from ssmc.fsutil import replace_marked_block

        cpu = platform.processor() or platform.machine()
        lines = [
            f"Forward + backward + AdamW step, batch {args.batch}, each paper's K, hopper sizes (obs 11, act 3), "
            f"{args.threads} thread(s), torch {torch.__version__}, {cpu}; median of {args.steps} steps after "
            f"{args.warmup} warm-up steps, the two scans interleaved. *torch scan*: scan.SelectiveScanFn "
            "(before issue 13), conv1d and SiLU through torch; *fused scan*: the numba kernels of "
            "train/models/fused_scan.py and fused_conv.py (after, the default), on torch's thread count. "
            f"Load average {load_before:.1f} before / {load_after:.1f} after"
            + (" (other jobs shared the machine: the CPU-time columns are the steadier ones)." if args.threads == 1 else
               "; wall-clock only: a thread's CPU time does not measure a step that several threads share."),
            "",
            "Reproduce: `python tools/bench/train_throughput.py --threads "
            f"{args.threads} --steps {args.steps} --warmup {args.warmup} --out {args.out}`",
            "",
        ]
        if args.threads == 1:
            lines += ["| model | K | params | torch scan: ms / step (CPU) | fused scan: ms / step (CPU) | speed-up (CPU) "
                      "| torch scan wall ms | fused scan wall ms |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
            for r in rows:
                fused = (f"{r['fused_cpu_ms']} | {r['speedup_cpu']}× | {r['torch_wall_ms']} | {r['fused_wall_ms']}"
                         if "fused_cpu_ms" in r else f"(no scan) | – | {r['torch_wall_ms']} | –")
                lines.append(f"| {r['model']} | {r['K']} | {r['params']:,} | {r['torch_cpu_ms']} | {fused} |")
        else:
            lines += ["| model | K | params | torch scan: wall ms / step | fused scan: wall ms / step | speed-up |",
                      "|---|---:|---:|---:|---:|---:|"]
            for r in rows:
                fused = f"{r['fused_wall_ms']} | {r['speedup_wall']}×" if "fused_wall_ms" in r else "(no scan) | –"
                lines.append(f"| {r['model']} | {r['K']} | {r['params']:,} | {r['torch_wall_ms']} | {fused} |")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tag = "train_throughput" if args.threads == 1 else f"train_throughput threads={args.threads}"
        replace_marked_block(args.out, f"<!-- {tag}: begin -->", f"<!-- {tag}: end -->",
                             "\n".join(lines) + "\n", default="# CPU training throughput\n")
        json_path = args.out.with_suffix(".json" if args.threads == 1 else f".threads{args.threads}.json")
        json_path.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
