"""Artifact bytes against parameter count, fp32 / fp16 / int8, for the deployed (recurrent) DeMa and DMM steps.

    python tools/bench/sizes.py                 # -> docs/bench.sizes.json and the sizes block of docs/bench.md
    python tools/bench/sizes.py --no-docs --json /tmp/sizes.json --widths 1

Each model is compiled for ``host`` with ``ssmc.compile.compile_checkpoint`` (the artifact a user gets:
stripped ``lib.so``, ``reference.safetensors``, ``manifest.json``) at its paper configuration (the
checkpoint under ``--zoo`` if there is one, else a fresh Hopper-size model) and, for the fixed
overhead, at several widths (fresh initialisations, every weight perturbed so that no two tensors are equal, as after
training: the bytes then do not depend on the weights). A
least-squares line ``bytes = overhead + slope * params`` per (model, precision) over the widths
separates what grows with the parameters (slope: bytes per parameter) from what does not (the
intercept: code, VM bytecode, ELF, manifest). Errors are one line (``ssmc.errors``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TVM_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ssmc.fsutil import atomic_file, replace_marked_block  # noqa: E402

HOPPER = (11, 3)
FRESH_EXTRA = {"obs_mean": [0.0] * HOPPER[0], "obs_std": [1.0] * HOPPER[0], "rtg_scale": 1e-3,
               "target_return": 3600.0, "env_id": "Hopper-v5"}
PRECISIONS = ("fp32", "fp16", "int8")
#: Width sweeps for the regression (config overrides); the paper configuration is among them.
WIDTHS = {
    "dema": [{"d_model": 32, "embedding_dim": 64}, {"d_model": 64, "embedding_dim": 128},
             {"d_model": 96, "embedding_dim": 192}, {"d_model": 128, "embedding_dim": 256}],
    "dmm": [{"hidden": 32}, {"hidden": 64}, {"hidden": 128}, {"hidden": 192}],
}
DOC_BEGIN, DOC_END = "<!-- sizes:begin -->", "<!-- sizes:end -->"


def _checkpoint(kind: str, zoo: Path, overrides: dict[str, Any] | None, workdir: Path) -> tuple[Path, str]:
    """A checkpoint directory: the zoo's for the paper configuration, else a fresh one written to ``workdir``."""
    from ssmc.train.models import build_model, save_checkpoint

    if overrides is None and (zoo / kind / "config.json").is_file():
        return zoo / kind, str(zoo / kind)
    torch.manual_seed(0)
    model = build_model(kind, *HOPPER, **(overrides or {}))
    with torch.no_grad():  # no two tensors equal, as after training: FoldConstant stores equal constants once,
        for p in model.parameters():  # and a fresh init has identical A_log in every layer
            p.add_(1e-3 * torch.randn_like(p))
    name = kind + "".join(f"-{k}{v}" for k, v in (overrides or {}).items())
    return save_checkpoint(model, workdir / name, FRESH_EXTRA), "fresh initialisation"


def measure(checkpoint: Path, precision: str, out: Path) -> dict[str, Any]:
    """Compile ``checkpoint`` (recurrent step) for host at ``precision``; its bytes."""
    from ssmc.artifact import load_manifest
    from ssmc.compile import compile_checkpoint

    path = compile_checkpoint(checkpoint, "host", precision, "recurrent", out, overwrite=True)
    m = load_manifest(path)
    files = {name: f.bytes for name, f in m.files.items()}
    manifest = (path / "manifest.json").stat().st_size
    return {"precision": precision, "params": m.param_count, "library_bytes": files[m.library],
            "reference_bytes": files.get("reference.safetensors", 0), "manifest_bytes": manifest,
            "total_bytes": sum(files.values()) + manifest, "constant_bytes": m.extra["constant_bytes"],
            "state_bytes": m.state_bytes, "model_config": m.model_config}


def fit(points: list[tuple[int, int]]) -> dict[str, float]:
    """Least squares ``bytes = overhead + slope * params``."""
    x = np.array([p for p, _ in points], np.float64)
    y = np.array([b for _, b in points], np.float64)
    slope, overhead = np.polyfit(x, y, 1)
    resid = y - (overhead + slope * x)
    return {"overhead_bytes": round(float(overhead)), "bytes_per_param": round(float(slope), 3),
            "max_residual_bytes": round(float(np.abs(resid).max()))}


def run(kinds: list[str], zoo: Path, widths: int, say: Any) -> dict[str, Any]:
    rows, sweeps = [], {}
    with tempfile.TemporaryDirectory(prefix="ssmc-sizes-") as tmp:
        work = Path(tmp)
        for kind in kinds:
            ckpt, source = _checkpoint(kind, zoo, None, work)
            for precision in PRECISIONS:
                say(f"{kind} {precision}: compiling {ckpt}")
                row = measure(ckpt, precision, work / f"{kind}-{precision}.ssmc")
                rows.append({"model": kind, "source": source, **row})
            sweep = []
            for overrides in WIDTHS[kind][:widths]:
                wckpt, _ = _checkpoint(kind, zoo, overrides, work)
                for precision in PRECISIONS:
                    say(f"{kind} {overrides} {precision}: compiling")
                    r = measure(wckpt, precision, work / f"{wckpt.name}-{precision}.ssmc")
                    sweep.append({"overrides": overrides, **r})
            sweeps[kind] = sweep
    fits = {}
    for kind, sweep in sweeps.items():
        for precision in PRECISIONS:
            pts = [r for r in sweep if r["precision"] == precision]
            if len({r["params"] for r in pts}) >= 2:
                fits[f"{kind} {precision}"] = {
                    "library": fit([(r["params"], r["library_bytes"]) for r in pts]),
                    "total": fit([(r["params"], r["total_bytes"]) for r in pts]),
                    "library_plus_manifest": fit([(r["params"], r["library_bytes"] + r["manifest_bytes"])
                                                  for r in pts]),
                    "widths": [r["params"] for r in pts],
                }
    return {"rows": rows, "sweeps": sweeps, "fits": fits}


def markdown(result: dict[str, Any]) -> str:
    out = [f"Generated by `{result['command']}` on {result['date']} (host target, stripped `lib.so`, recurrent "
           "step; `total` = library + `reference.safetensors` + `manifest.json`).", "",
           "| model | precision | params | constants (bytes) | library | B/param (library) | reference | total "
           "| B/param (total) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        consts = ", ".join(f"{k} {v:,}" for k, v in r["constant_bytes"].items())
        out.append(f"| {r['model']} | {r['precision']} | {r['params']:,} | {consts} | {r['library_bytes']:,} | "
                   f"{r['library_bytes'] / r['params']:.2f} | {r['reference_bytes']:,} | {r['total_bytes']:,} | "
                   f"{r['total_bytes'] / r['params']:.2f} |")
    if result["fits"]:
        out += ["", "**Fixed overhead and bytes per parameter** (least squares over the widths listed, fresh "
                "models; `bytes = overhead + slope × params`)", "",
                "| model | precision | params swept | library: overhead + B/param | library + manifest | "
                "total (with reference) |", "|---|---|---|---|---|---|"]
        for key, f in result["fits"].items():
            kind, precision = key.split()
            cells = [f"{f[part]['overhead_bytes']:,} + {f[part]['bytes_per_param']:.2f} × params "
                     f"(±{f[part]['max_residual_bytes']:,})" for part in ("library", "library_plus_manifest", "total")]
            out.append(f"| {kind} | {precision} | {', '.join(f'{p:,}' for p in f['widths'])} | " + " | ".join(cells)
                       + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="dema,dmm")
    parser.add_argument("--zoo", type=Path, default=Path("runs/zoo"))
    parser.add_argument("--widths", type=int, default=4, help="how many widths of each sweep to compile (0: none)")
    parser.add_argument("--json", type=Path, default=Path("docs/bench.sizes.json"))
    parser.add_argument("--doc", type=Path, default=Path("docs/bench.md"))
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    kinds = [k.strip() for k in args.models.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in WIDTHS]
    if unknown:
        print(f"error: no size sweep for {', '.join(unknown)}; known: {', '.join(WIDTHS)}", file=sys.stderr)
        return 2
    result = {"command": "python tools/bench/sizes.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              **run(kinds, args.zoo, args.widths, lambda m: print(m, file=sys.stderr, flush=True))}
    with atomic_file(args.json) as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    text = markdown(result)
    if not args.no_docs:
        replace_marked_block(args.doc, DOC_BEGIN, DOC_END, text, default="# Benchmarks\n\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
