"""Heap allocations per control step of the C runtime: run the C loop for N and 11·N steps under an
LD_PRELOAD shim that counts malloc/calloc/realloc/aligned allocations (tools/bench/count_allocs.c);
the difference over 10·N steps is the per-step count, start-up excluded.

    python tools/bench/allocs_per_step.py ARTIFACT [--steps 100]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ssmc.runtime import runtime_bundle


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact")
    ap.add_argument("--steps", type=int, default=100)
    args = ap.parse_args()
    bundle = runtime_bundle()
    with tempfile.TemporaryDirectory() as tmp:
        shim = Path(tmp) / "libcount.so"
        subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(shim),
                        str(Path(__file__).with_name("count_allocs.c")), "-ldl"], check=True)
        counts = []
        for n in (args.steps, 11 * args.steps):
            proc = subprocess.run(bundle.command(args.artifact, "--steps", str(n), "--rate", "1e9"),
                                  capture_output=True, text=True, env={**os.environ, "LD_PRELOAD": str(shim)})
            if proc.returncode != 0:
                sys.exit(proc.stderr)
            counts.append(int(next(line.split()[1] for line in proc.stderr.splitlines()
                                   if line.startswith("allocations "))))
    print(json.dumps({"artifact": args.artifact, "allocations": dict(zip(("short", "long"), counts, strict=True)),
                      "per_step": (counts[1] - counts[0]) / (10 * args.steps)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
