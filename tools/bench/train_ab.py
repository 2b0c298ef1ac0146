"""A/B of the CPU training step between two commits: each commit checked out in a temporary git worktree,
one training step timed in alternating fresh processes (so both see the same machine phases), one thread.

    python tools/bench/train_ab.py 83add72 HEAD --model dema --rounds 3 --steps 6

Each process builds the model on hopper sizes (obs 11, act 3), runs ``--warmup`` untimed steps, then
``--steps`` timed forward + backward + AdamW steps on a synthetic batch of 64
(tools/bench/train_throughput.py's ``synthetic_batch``) and reports its thread CPU time per step;
this script prints the minimum and median per round and commit. The commits' numba caches are their own
(each worktree's ``__pycache__``), compiled in the warm-up.

The package is imported from each worktree through a temporary folder that maps ``ssmc`` and its
sub-packages (``ssmc.train`` is ``train/`` etc., as pyproject.toml's package-dir says) onto it, ahead
of the editable install on ``sys.path``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUBPACKAGES = ("train", "compile", "runtime", "targets")  # pyproject.toml: ssmc.<name> = <name>/

CHILD = r"""
import json, sys, time
import torch
torch.set_num_threads(1)
from ssmc.train.models import build_model
sys.path.insert(0, sys.argv[1])
from train_throughput import synthetic_batch
model_name, warmup, steps = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
model = build_model(model_name, obs_dim=11, act_dim=3).train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
batch = synthetic_batch(model, 64, torch.Generator().manual_seed(0))
times = []
for i in range(warmup + steps):
    t0 = time.thread_time()
    loss = model.loss(batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if i >= warmup:
        times.append(time.thread_time() - t0)
import ssmc
print(json.dumps({"ms": [1e3 * t for t in times], "ssmc": ssmc.__file__}))
"""


def worktree(rev: str, into: Path, tag: str) -> Path:
    """A detached worktree of ``rev`` and an import folder whose ``ssmc`` package is that worktree's."""
    tree = into / f"tree-{tag}"
    done = subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(tree), rev],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: cannot check out {rev!r}: {done.stderr.strip().splitlines()[-1:]}")
    pkg = into / f"import-{tag}" / "ssmc"
    pkg.parent.mkdir()
    _mirror(tree, pkg)
    return pkg.parent


def _mirror(tree: Path, pkg: Path) -> None:
    """pkg/ holds links to every entry of tree/ssmc plus one per sub-package folder of the tree."""
    pkg.mkdir()
    for entry in (tree / "ssmc").iterdir():
        (pkg / entry.name).symlink_to(entry)
    for name in SUBPACKAGES:
        (pkg / name).symlink_to(tree / name, target_is_directory=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("revs", nargs=2, metavar="REV", help="The two commits (A, B).")
    ap.add_argument("--model", default="dema")
    ap.add_argument("--rounds", type=int, default=3, help="Alternations (one process per commit each).")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    if args.rounds <= 0 or args.steps <= 0 or args.warmup < 1:
        raise SystemExit("error: --rounds and --steps must be positive and --warmup at least 1 (numba compiles there)")
    with tempfile.TemporaryDirectory(prefix="ssmc-ab-") as tmp:
        labels = [f"A {args.revs[0]}", f"B {args.revs[1]}"]
        paths: dict[str, Path] = {}
        try:
            for tag, (label, rev) in enumerate(zip(labels, args.revs, strict=True)):
                paths[label] = worktree(rev, Path(tmp), str(tag))
            results: dict[str, list[dict]] = {label: [] for label in labels}
            for r in range(args.rounds):
                for label in labels:
                    env = dict(os.environ, PYTHONPATH=str(paths[label]), OMP_NUM_THREADS="1")
                    out = subprocess.run([sys.executable, "-c", CHILD, str(ROOT / "tools" / "bench"), args.model,
                                          str(args.warmup), str(args.steps)], env=env, capture_output=True, text=True,
                                         cwd=tmp)  # not the checkout: `python -c` puts the cwd first on sys.path
                    if out.returncode != 0:
                        raise SystemExit(f"error: {label} failed: {out.stderr.strip().splitlines()[-1:]}")
                    row = json.loads(out.stdout.strip().splitlines()[-1])
                    if not row["ssmc"].startswith(tmp):
                        raise SystemExit(f"error: {label} imported ssmc from {row['ssmc']}, not its worktree")
                    ms = sorted(row["ms"])
                    results[label].append({"min": ms[0], "median": ms[len(ms) // 2]})
                    print(f"round {r + 1} {label:>12s} {args.model}: min {ms[0]:.0f} ms, median {ms[len(ms) // 2]:.0f} ms")
        finally:
            for tag in range(len(paths)):
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(Path(tmp) / f"tree-{tag}")],
                               capture_output=True)
    for label, rows in results.items():
        minima = ", ".join(f"{x['min']:.0f}" for x in rows)
        print(f"{label}: min over rounds {min(x['min'] for x in rows):.0f} ms, per-round minima {minima}")


if __name__ == "__main__":
    main()
