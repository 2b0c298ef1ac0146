"""The T-maze memory experiment: success rate against memory length k for DM-H, DeMa-RNN and DT, and the
per-step latency of DM-H against a DT whose window covers the whole horizon; writes docs/tmaze.md, .json, .png.

Every success rate comes from the real CLI (`ssmc data collect`, `ssmc train`, `ssmc eval --json`; the
commands are printed in the doc). DT and DM-H get the same short context (DT's window K = DM-H's c);
DeMa-RNN trains on whole episodes and runs recurrently. Small models and short runs keep it CPU-cheap.

    python tools/tmaze_memory.py --ks 5 10 20 40 80 --steps 800 --episodes 50
    python tools/tmaze_memory.py --latency-only --horizons 100 1000   # only the latency table
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "68719476736"}
CONTEXT = 10  # DT's window K and DM-H's c, in timesteps
MODELS = {  # small sizes: the task needs one bit of memory
    "dmh": lambda k: {"c": CONTEXT, "K": 2 * CONTEXT, "n_context": 1, "context_len": CONTEXT,
                      "max_history": k + CONTEXT + 10, "d_model": 32, "n_mamba_layer": 1, "d_state": 8,
                      "hidden": 32, "n_layer": 1, "dropout": 0.0},
    "dema-rnn": lambda k: {"K": k + 1, "embedding_dim": 32, "d_model": 32, "n_layer": 1, "d_state": 8},
    "dt": lambda k: {"K": CONTEXT, "hidden": 32, "n_layer": 1, "dropout": 0.0, "max_ep_len": k + 1},
}


def run(cmd: list[str], log: Path) -> str:
    with open(log, "w") as err:
        out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=ENV)
    if out.returncode != 0:
        sys.exit(f"failed ({out.returncode}): {shlex.join(cmd)}; see {log}")
    return out.stdout


def dataset(k: int, args) -> tuple[Path, str]:
    path = args.runs / f"tmaze-k{k}-{args.quality}.hdf5"
    cmd = ["ssmc", "data", "collect", f"ssmc/TMaze-k{k}-v0", "--quality", args.quality,
           "--size", str(args.data_episodes * (k + 1)), "--out", str(path), "--seed", str(args.seed)]
    if not path.exists():
        run(cmd, args.runs / f"collect-k{k}.stderr")
    return path, shlex.join(cmd)


def one_run(k: int, model: str, data: Path, args) -> dict:
    out = args.runs / f"k{k}" / model
    out.mkdir(parents=True, exist_ok=True)
    sets = [a for key, v in MODELS[model](k).items() for a in ("--set", f"{key}={v}")]
    train = ["ssmc", "train", "--model", model, "--dataset", str(data), "--out", str(out), "--steps",
             str(args.steps), "--lr", str(args.lr), "--warmup", str(args.steps // 10), "--threads", "1",
             "--seed", str(args.seed), "--quiet", *sets]
    done = json.loads((out / "config.json").read_text())["extra"] if (out / "config.json").exists() else {}
    if args.reuse and done.get("steps_done") == args.steps and done.get("train", {}).get("lr") == args.lr:
        t_train = float(done["train_wall_s"])  # trained by this command before: its own compute time
    else:
        t0 = time.perf_counter()
        run(train, out / "train.stderr")
        t_train = time.perf_counter() - t0
    ev = ["ssmc", "eval", str(out), "--episodes", str(args.episodes), "--seed", "1000", "--json"]
    res = json.loads(run(ev, out / "eval.stderr"))
    row = {"k": k, "model": model, "steps": args.steps, "success": res["return_mean"], "episodes": res["episodes"],
           "params": json.loads((out / "config.json").read_text())["extra"]["params"],
           "train_wall_s": round(t_train, 1), "train_cmd": shlex.join(train), "eval_cmd": shlex.join(ev)}
    print(f"k={k} {model}: success {row['success']:.2f} ({t_train:.0f} s)", flush=True)
    return row


def interleaved_medians(fns: dict[str, object], budget_s: float = 10.0, min_n: int = 7) -> dict[str, float]:
    """Median CPU time in µs (``time.process_time``: this process, one thread) of each callable, called in
    turn (round-robin) for at least ``min_n`` rounds and about ``budget_s`` seconds. CPU time, not wall
    time: on a shared, oversubscribed machine wall time measures the scheduler more than the step."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    start, rounds = time.perf_counter(), 0
    while rounds < min_n or time.perf_counter() - start < budget_s:
        for name, fn in fns.items():
            t0 = time.process_time()
            fn()
            times[name].append(time.process_time() - t0)
        rounds += 1
    return {name: round(float(np.median(t)) * 1e6, 1) for name, t in times.items()}


def latency(horizons: list[int], compiled: bool) -> list[dict]:
    """Per-step latency of DM-H (defaults) and of a DT (defaults) whose window covers the horizon, both on
    hopper sizes (obs 11, act 3), one thread: eager PyTorch step and the host-compiled step."""
    import torch
    import tvm

    from ssmc.artifact import load_manifest
    from ssmc.compile import compile_checkpoint
    from ssmc.compile.build import LIBRARY_NAME, load_vm
    from ssmc.compile.export import StepFunction, example_inputs, run_torch
    from ssmc.train.models import build_model, save_checkpoint

    torch.set_num_threads(1)
    os.environ["TVM_NUM_THREADS"] = "1"  # the compiled step on one thread too, read when TVM's pool starts
    extra = {"obs_mean": [0.0] * 11, "obs_std": [1.0] * 11, "rtg_scale": 1e-3, "target_return": 3000.0}
    rows = []
    with tempfile.TemporaryDirectory(prefix="ssmc-tmaze-") as tmp, torch.no_grad():
        for h in horizons:
            fns, pair = {}, []
            for name, overrides in (("dmh", {}), ("dt", {"K": h, "max_ep_len": max(h, 1000)})):
                torch.manual_seed(0)
                model = build_model(name, 11, 3, **overrides).eval()
                fn = StepFunction(model, extra["obs_mean"], extra["obs_std"], extra["rtg_scale"]).eval()
                args = [a.numpy() for a in example_inputs(fn)]
                fns[f"{name} eager"] = lambda fn=fn, a=args: run_torch(fn, a[:2], a[2:])
                row = {"horizon": h, "model": name, "K": model.config.K, "params": model.num_params(),
                       "macs_per_step": model.macs_per_step()}
                if compiled:
                    ckpt = save_checkpoint(model, Path(tmp) / f"{name}-{h}", extra)
                    t0 = time.perf_counter()
                    art = compile_checkpoint(ckpt, "host", "fp32", out=Path(tmp) / f"{name}-{h}.ssmc", executor="vm")
                    row["compile_s"] = round(time.perf_counter() - t0, 1)
                    row["pipeline"] = load_manifest(art).extra["pipeline"]
                    vm, targs = load_vm(art / LIBRARY_NAME), [tvm.runtime.tensor(a) for a in args]
                    fns[f"{name} compiled"] = lambda vm=vm, t=targs: vm["main"](*t)
                pair.append(row)
            medians = interleaved_medians(fns)
            for row in pair:
                row["eager_us"] = medians[f"{row['model']} eager"]
                if compiled:
                    row["compiled_us"] = medians[f"{row['model']} compiled"]
                print(f"latency H={h}: {row}", flush=True)
            rows += pair
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    labels = {"dmh": f"DM-H (c = {CONTEXT})", "dema-rnn": "DeMa-RNN (recurrent)", "dt": f"DT (K = {CONTEXT})"}
    styles = {"dmh": ("o-", 0.96, 9), "dema-rnn": ("s--", 1.0, 6), "dt": ("^-", 1.04, 6)}  # offsets: no overlap
    for model, label in labels.items():
        pts = sorted((r["k"], r["success"]) for r in rows if r["model"] == model)
        fmt, shift, size = styles[model]
        ax.plot([p[0] * shift for p in pts], [p[1] for p in pts], fmt, ms=size, label=label)
    ax.axhline(0.5, color="grey", ls=":", lw=1, label="chance")
    ax.axvline(CONTEXT - 1, color="grey", ls="--", lw=1)
    ax.set_xscale("log", base=2)
    ks = sorted({r["k"] for r in rows})
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.set_xlabel("memory length k (steps from cue to junction)")
    ax.set_ylabel("success rate")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def cue_up_fraction(episodes: int) -> float:
    """Fraction of the evaluation episodes (env seeds 1000..) whose cue is 'up' (the same for every k)."""
    from ssmc.tmaze import TMazeEnv

    env = TMazeEnv(1)
    return float(np.mean([env.reset(seed=1000 + i)[0][0] > 0 for i in range(episodes)]))


def write_markdown(result: dict, args) -> None:
    rows, lat = result["success"], result["latency"]
    ks = sorted({r["k"] for r in rows})
    lines = ["# T-maze: memory length against success", "",
             "`ssmc/TMaze-k{k}-v0` (train/tmaze.py): a cue (up/down) is observed at step 0 only, the agent walks "
             "a corridor of k steps, and at the junction (step k) the sign of its action picks the turn; "
             "reward 1 for the cued turn, else 0 (chance: 0.5). Data: `--quality "
             f"{args.quality}` ({args.data_episodes} episodes per k; the expert is the scripted oracle with action "
             "noise std 0.1, its corridor actions independent of the cue). Each model trains for "
             f"the steps the table gives for its k (batch 64, lr {args.lr} with a 10 % warm-up, one CPU "
             f"thread, seed {args.seed}) and is evaluated "
             f"on {args.episodes} episodes (env seeds 1000..), conditioned on return 1.", "",
             f"DT sees the last K = {CONTEXT} timesteps; DM-H's transformer sees the same (the block of the last "
             f"≤ c = {CONTEXT} steps plus the sub-goal prompt) and its Mamba the whole episode; DeMa-RNN is "
             "trained on whole episodes and carries its state. A window of K steps holds the cue at the junction "
             f"only when k ≤ K − 1 = {CONTEXT - 1}.", "",
             "![success against k](tmaze.png)", "",
             "| model | params | " + " | ".join(f"k = {k}" for k in ks) + " |",
             "|---|---:|" + "---:|" * len(ks),
             "| training steps | | " + " | ".join(str(next(r["steps"] for r in rows if r["k"] == k)) for k in ks) + " |"]
    for model in MODELS:
        mine = {r["k"]: r for r in rows if r["model"] == model}
        if not mine:
            continue
        params = next(iter(mine.values()))["params"]
        lines.append(f"| {model} | {params:,} | "
                     + " | ".join(f"{mine[k]['success']:.2f}" if k in mine else "" for k in ks) + " |")
    solved = []
    for model in MODELS:
        ok = [r["k"] for r in rows if r["model"] == model and r["success"] >= 0.9]
        solved.append(f"{model} up to k = {max(ok)}" if ok else f"{model} at no k")
    lines += ["", "Solved (success ≥ 0.9): " + "; ".join(solved) + "."]
    most = max(r["steps"] for r in rows)
    for k in ks:
        recurrent = [r for r in rows if r["k"] == k and r["model"] != "dt"]
        if recurrent and all(r["success"] < 0.9 for r in recurrent) and recurrent[0]["steps"] < most:
            lines.append(f"At k = {k} the recurrent models trained {recurrent[0]['steps']} steps, fewer than the {most} the "
                         "longest solved k needed (see the earlier runs below): under-trained, not shown unable.")
    up = cue_up_fraction(args.episodes)
    lines += ["", f"Success rate over the evaluation episodes. The cue is 'up' in {up:.0%} of these episodes, so a "
              f"policy that ignores the cue and always turns one way scores {up:.2f} or {1 - up:.2f}.", ""]
    old = result.get("superseded", [])
    if old:
        lines += ["Earlier runs of the same k with fewer training steps, replaced in the table above (a model "
                  "at chance there may be under-trained rather than unable):", "",
                  "| model | k | steps | success |", "|---|---:|---:|---:|"]
        lines += [f"| {r['model']} | {r['k']} | {r['steps']} | {r['success']:.2f} |" for r in old]
        lines.append("")
    if lat:
        lines += ["## Latency per control step: DM-H against a DT over the whole horizon", "",
                  "DM-H's step costs one Mamba token plus three transformer tokens against a key/value cache of "
                  "at most 3c slots, whatever the episode length. A DT that must remember across a horizon H "
                  "needs a window of K = H timesteps (3H tokens), re-encoded every step (ssmc's DT step). Both "
                  "at their default (hopper) sizes, untrained weights (latency does not depend on them), one "
                  "thread, median CPU time per step (process time: the machine was oversubscribed, so wall "
                  "times would measure the scheduler); `compiled` is the host fp32 library of the `ssmc compile "
                  "--target host` pipeline (compile_checkpoint; stages: "
                  + ", ".join(next((r["pipeline"] for r in lat if "pipeline" in r), ["not recorded"]))
                  + "), called through the Relax VM.", "",
                  "| horizon H | model | K | params | MACs/step | eager µs | compiled µs |",
                  "|---:|---|---:|---:|---:|---:|---:|"]
        for r in lat:
            lines.append(f"| {r['horizon']} | {r['model']} | {r['K']} | {r['params']:,} | {r['macs_per_step']:,} | "
                         f"{r['eager_us']:,.0f} | {r.get('compiled_us', float('nan')):,.0f} |")
        lines.append("")
        for h in sorted({r["horizon"] for r in lat}):
            d = {r["model"]: r for r in lat if r["horizon"] == h}
            ratios = [f"eager {d['dt']['eager_us'] / d['dmh']['eager_us']:.1f}×"]
            if "compiled_us" in d["dmh"]:
                ratios.append(f"compiled {d['dt']['compiled_us'] / d['dmh']['compiled_us']:.1f}×")
            lines.append(f"- H = {h}: DT step / DM-H step = {', '.join(ratios)}.")
        slow = [r["compiled_us"] / r["eager_us"] for r in lat if r["model"] == "dt" and "compiled_us" in r]
        if slow:
            lines += ["", f"The compiled DT is {min(slow):.0f}–{max(slow):.0f}× slower than its own eager step: the "
                      "compiled kernels for the long window's GEMMs and attention are far from PyTorch's, so the "
                      "compiled ratio overstates DM-H's advantage; the eager ratio (PyTorch kernels on both sides) "
                      "is the fairer one, and DM-H's eager step is dominated by per-op overhead (many small ops "
                      "for 1.4 M MACs), which understates it at short horizons."]
        lines += ["", "The paper claims DM-H tests online 28× faster than transformer baselines on long tasks; "
                  "the ratios above are ours, on this machine (2 cores shared with other jobs: latencies are "
                  "noisy, ratios less so), per step rather than per episode. Measured with `"
                  + result["latency_command"] + "`.", ""]
    lines += ["## Commands", "", "Regenerate: " + "; then ".join(f"`{c}`" for c in result["commands"]), "", "```"]
    for k in ks:
        lines.append(result["collect_cmds"][str(k)])
        for r in rows:
            if r["k"] == k:
                lines += [r["train_cmd"], r["eval_cmd"]]
    lines += ["```", ""]
    args.out.with_suffix(".md").write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ks", type=int, nargs="*", default=[5, 10, 20, 40, 80])
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--quality", default="expert")
    ap.add_argument("--data-episodes", type=int, default=500)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--horizons", type=int, nargs="*", default=[100, 1000])
    ap.add_argument("--no-compile", action="store_true", help="latency: eager only")
    ap.add_argument("--latency-only", action="store_true", help="keep the saved success rates, redo the latency")
    ap.add_argument("--reuse", action="store_true",
                    help="evaluate a run directory's checkpoint without retraining when it holds --steps steps at --lr")
    ap.add_argument("--merge", action="store_true",
                    help="keep the saved rows of other memory lengths (e.g. rerun long k with more --steps)")
    ap.add_argument("--runs", type=Path, default=Path("runs/tmaze"))
    ap.add_argument("--out", type=Path, default=Path("docs/tmaze"))
    args = ap.parse_args()
    args.runs.mkdir(parents=True, exist_ok=True)
    json_path = args.out.with_suffix(".json")
    if not args.latency_only:
        data = {k: dataset(k, args) for k in args.ks}
        jobs = [(k, m) for k in args.ks for m in args.models]
        with ThreadPoolExecutor(args.jobs) as pool:
            rows = list(pool.map(lambda km: one_run(km[0], km[1], data[km[0]][0], args), jobs))
        result = {"success": rows, "collect_cmds": {str(k): c for k, (_, c) in data.items()},
                  "commands": [shlex.join(["python", "tools/tmaze_memory.py", *sys.argv[1:]])], "latency": []}
        if args.merge:
            saved = json.loads(json_path.read_text())
            result["success"] = [r for r in saved["success"] if r["k"] not in args.ks] + rows
            result["superseded"] = saved.get("superseded", []) + [r for r in saved["success"] if r["k"] in args.ks]
            result["collect_cmds"] = {**saved["collect_cmds"], **result["collect_cmds"]}
            result["commands"] = saved["commands"] + result["commands"]
            result["latency"] = saved["latency"]
        json_path.write_text(json.dumps(result, indent=1) + "\n")
    if args.horizons:
        lat = latency(args.horizons, compiled=not args.no_compile)
        result = json.loads(json_path.read_text())  # fresh: another run may have saved rows meanwhile
        result["latency"] = lat
        result["latency_command"] = shlex.join(["python", "tools/tmaze_memory.py", *sys.argv[1:]])
        json_path.write_text(json.dumps(result, indent=1) + "\n")
    result = json.loads(json_path.read_text())
    plot(result["success"], args.out.with_suffix(".png"))
    write_markdown(result, args)


if __name__ == "__main__":
    main()
