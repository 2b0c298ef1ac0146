"""Regenerate the shipped behaviour policies and the numbers in docs/datasets.md.

    python tools/collect_all.py pendulum-refs               # Pendulum-v1 ref_min / ref_max for ssmc/envs.py
    python tools/collect_all.py train Hopper-v5 ...         # ARS (seed 0) -> train/behaviour/policies/
    python tools/collect_all.py collect Hopper-v5 ... -q medium -q expert   # data/*.hdf5 + a Markdown table

Training uses ``ARS_CONFIGS`` (Mania et al. 2018, ARS V2-t) on 2 processes; collection runs
``ssmc.train.collect.collect`` exactly as ``ssmc data collect`` does.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
POLICIES = REPO / "train" / "behaviour" / "policies"


def pendulum_refs(episodes: int) -> None:
    """Mean returns of uniform-random actions and of the expert (scripted, expert noise) on Pendulum-v1."""
    from ssmc.train.collect import collect

    out = {}
    for quality in ("random", "expert"):
        path = collect("Pendulum-v1", quality, out=f"/tmp/pendulum-ref-{quality}.hdf5", size=200 * episodes,
                       seed=12345, progress=False)
        import h5py

        with h5py.File(path) as f:
            out[quality] = float(f["metadata/mean_return"][()])
        path.unlink()
    print(json.dumps({"episodes": episodes, "ref_min (random)": round(out["random"], 1),
                      "ref_max (expert)": round(out["expert"], 1)}))


def train(envs: list[str], seed: int, workers: int) -> None:
    from ssmc.train.behaviour import train_ars

    for env_id in envs:
        ckpt = train_ars(env_id, seed, workers=workers, progress=True)
        path = ckpt.save(POLICIES)
        curve = [(s.env_steps, round(s.eval_return)) for s in ckpt.snapshots]
        print(f"{env_id}: {path} steps={ckpt.train_env_steps} wall={ckpt.train_wall_time_s:.0f}s "
              f"expert=#{ckpt.expert_index} {ckpt.expert.eval_return:.0f} "
              f"medium=#{ckpt.medium_index} {ckpt.medium.eval_return:.0f}\ncurve={curve}", flush=True)


def collect_table(envs: list[str], qualities: list[str], seed: int, out_dir: Path) -> None:
    import h5py

    from ssmc.train.collect import collect

    rows = []
    for env_id in envs:
        for quality in qualities:
            t0 = time.perf_counter()
            path = collect(env_id, quality, out=out_dir / f"{env_id.lower()}-{quality}.hdf5", seed=seed)
            wall = time.perf_counter() - t0
            with h5py.File(path) as f:
                m = {k: f[f"metadata/{k}"][()] for k in f["metadata"]}
                n = int(f["rewards"].shape[0])
            train_steps = int(m.get("policy_train_env_steps", 0))
            train_wall = float(m.get("policy_train_wall_time_s", 0.0))
            rows.append(
                f"| {env_id} | {quality} | {n:,} | {int(m['episodes'])} | {float(m['mean_return']):.1f} | "
                f"{float(m['normalized_mean_return']):.1f} | {wall:.0f} s | "
                + (f"{train_steps / 1e6:.2f} M / {train_wall / 60:.1f} min |" if train_steps else "- |")
            )
            print(rows[-1], flush=True)
    print("\n| env | quality | transitions | episodes | mean return | normalised | collection wall | "
          "policy training (env steps / wall) |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    print("\n".join(rows))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("pendulum-refs")
    r.add_argument("--episodes", type=int, default=1000)
    t = sub.add_parser("train")
    t.add_argument("envs", nargs="+")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--workers", type=int, default=2)
    c = sub.add_parser("collect")
    c.add_argument("envs", nargs="+")
    c.add_argument("-q", "--quality", action="append", dest="qualities")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out-dir", type=Path, default=REPO / "data")
    a = p.parse_args()
    np.set_printoptions(precision=3)
    if a.cmd == "pendulum-refs":
        pendulum_refs(a.episodes)
    elif a.cmd == "train":
        train(a.envs, a.seed, a.workers)
    else:
        collect_table(a.envs, a.qualities or ["random", "medium", "expert"], a.seed, a.out_dir)


if __name__ == "__main__":
    main()
