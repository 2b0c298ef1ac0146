"""CPU training throughput per model: gradient steps/s at batch 64 and each paper's context K.

Synthetic batches in the sampler's layout (the data does not change the cost); each model is
timed for --steps steps after --warmup steps, with the thread count given. Writes a Markdown
table (and JSON) that docs/training-throughput.md includes.

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


def bench(name: str, batch: int, steps: int, warmup: int) -> dict:
    torch.manual_seed(0)
    model = build_model(name, obs_dim=HOPPER[0], act_dim=HOPPER[1]).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    batches = [synthetic_batch(model, batch, g) for _ in range(4)]
    times = []
    for i in range(warmup + steps):
        b = batches[i % len(batches)]
        t0 = time.perf_counter()
        loss = model.loss(b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    med = times[len(times) // 2]
    return {"model": name, "K": model.config.K, "params": model.num_params(), "batch": batch,
            "step_ms_median": round(med * 1e3, 1), "steps_per_s": round(1.0 / med, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="Markdown file to write (and .json beside it).")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    rows = [bench(m, args.batch, args.steps, args.warmup) for m in args.models]
    load_after = os.getloadavg()[0]
    for r in rows:
        print(json.dumps(r))
    if args.out:
        cpu = platform.processor() or platform.machine()
        lines = [
            "# CPU training throughput",
            "",
            f"Forward + backward + AdamW step, batch {args.batch}, each paper's K, hopper sizes (obs 11, act 3), "
            f"{args.threads} thread(s), torch {torch.__version__}, {cpu}; median of {args.steps} steps after "
            f"{args.warmup} warm-up steps. Pure-PyTorch scan (no mamba-ssm on CPU). Load average "
            f"{load_before:.1f} before / {load_after:.1f} after (other jobs on the machine slow these numbers down).",
            "",
            "Reproduce: `python tools/bench/train_throughput.py --threads "
            f"{args.threads} --steps {args.steps} --out {args.out}`",
            "",
            "| model | K | params | ms / step | steps / s |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += [f"| {r['model']} | {r['K']} | {r['params']:,} | {r['step_ms_median']} | {r['steps_per_s']} |"
                  for r in rows]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
