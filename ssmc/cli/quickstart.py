"""``ssmc quickstart``: the whole pipeline, small, on a fresh machine in a few minutes (docs/design.md)."""

from __future__ import annotations

import shutil
import time
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import click

ENV = "Pendulum-v1"
#: The cross builds the quickstart tries: (target, precision, what it shows).
CROSS = (("aarch64", "int8", "64-bit Arm CPU, static executor"),
         ("jetson-orin", "fp32", "Jetson Orin GPU (CUDA sm_87) with its aarch64 host code"))


_T0 = [0.0]


def _stage(i: int, n: int, text: str) -> None:
    click.secho(f"{i}/{n}  [{time.perf_counter() - _T0[0]:3.0f} s]  {text}", bold=True, err=True)


def _detail(msg: str) -> None:
    click.echo(f"    {msg}", err=True)


def _cross_build(ckpt: str, target: str, precision: str, out: str) -> tuple[str | None, str | None, float]:
    """One cross build in a worker process: (artifact path, None, seconds) or (None, the error line, seconds)."""
    from ssmc.compile import compile_checkpoint
    from ssmc.errors import SsmcError

    t = time.perf_counter()
    try:
        path = compile_checkpoint(ckpt, target, precision, out=out, overwrite=True)
    except SsmcError as e:
        return None, f"{target}: {e}", time.perf_counter() - t
    return str(path), None, time.perf_counter() - t


@click.command()
@click.option("--workdir", type=click.Path(file_okay=False), default=".", show_default=True,
              help="Where data/, runs/, artifacts/ and reports/ are written.")
@click.option("--steps", type=int, default=1_000, show_default=True, help="Training steps for the small DMM.")
@click.option("--episodes", type=int, default=5, show_default=True,
              help="Episodes for eval, run and verify (each side).")
@click.option("--size", type=int, default=20_000, show_default=True, help="Transitions to collect.")
@click.option("--cross/--no-cross", default=True, show_default=True,
              help="Cross-compile for aarch64 and jetson-orin after the host builds.")
def quickstart(workdir: str, steps: int, episodes: int, size: int, cross: bool) -> None:
    """The whole pipeline, small: collect -> train -> eval -> compile -> run -> verify.

    \b
    1. collect a Pendulum-v1 dataset (D4RL layout) and inspect it
    2. train a small Decision MetaMamba (dmm) on the CPU
    3. cross-compile it for aarch64 and jetson-orin in a second process (zig cc or
       aarch64-linux-gnu-gcc links; jetson-orin's GPU code needs nvcc)
    4. evaluate it in the environment through its PyTorch step()
    5. compile it for this machine (host), fp32 and int8
    6. run both host artifacts on the C runtime alone (no torch)
    7. verify the fp32 artifact against the checkpoint: the verdict table and a report
    With --no-cross, step 3 is skipped.
    """
    from ssmc.compile import compile_checkpoint
    from ssmc.runtime import runtime_bundle
    from ssmc.runtime.run import run_artifact
    from ssmc.runtime.verify import markdown, verify_artifact, write_report
    from ssmc.toolchain import MISSING_HINT, can_emulate
    from ssmc.train.collect import collect
    from ssmc.train.dataset import format_summary, load_dataset, summarize
    from ssmc.train.rollout import evaluate_checkpoint
    from ssmc.train.trainer import TrainConfig, Trainer

    root = Path(workdir)
    n = 7 if cross else 6
    t0 = _T0[0] = time.perf_counter()
    say = click.echo

    _stage(1, n, f"collect: {ENV}, medium quality (noisy scripted swing-up controller), then inspect")
    data_path = collect(ENV, "medium", out=str(root / "data" / "pendulum-v1-medium.hdf5"), size=size, seed=0,
                        progress=True)
    data = load_dataset(str(data_path))
    summary = summarize(data)
    click.echo(format_summary(summary), err=True)

    _stage(2, n, f"train: dmm for {steps} steps on the CPU")
    ckpt = root / "runs" / "quickstart-dmm"
    cfg = TrainConfig(steps=steps, warmup_steps=min(100, max(steps // 10, 1)), save_every=max(steps // 2, 1))
    fit = Trainer("dmm", data, ckpt, cfg, dataset_path=str(data_path), env_id=ENV).fit(progress=True)
    import torch

    torch.set_num_threads(1)  # training used every core; the batch-1 stages after it are faster on one

    arts = root / "artifacts" / "quickstart"  # apart from the default paths: `ssmc compile` after it works
    crossed: list[tuple[str, str]] = []
    missing: list[str] = []
    jobs: list[tuple[str, str, Future]] = []
    pool = None
    if cross:
        _stage(3, n, "cross-compile, in a second process while the next stages run: "
               + ", ".join(f"{t} {p}" for t, p, _ in CROSS))
        pool = ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"))
        for target, precision, what in CROSS:
            if target == "jetson-orin" and shutil.which("nvcc") is None:
                missing.append("jetson-orin needs nvcc, the CUDA 13 toolkit, on PATH (NVIDIA's installer; "
                               "jetson-orin-cpu builds without it)")
                continue
            out = str(arts / f"dmm-{target}-{precision}.ssmc")
            jobs.append((target, what, pool.submit(_cross_build, str(ckpt), target, precision, out)))
        if not can_emulate("aarch64"):
            missing.append("the aarch64 artifacts are built but cannot run here: " + MISSING_HINT)

    _stage(4 if cross else 3, n, f"eval: {episodes} episodes through the model's PyTorch step()")
    res = evaluate_checkpoint(str(ckpt), ENV, episodes, seed=0, progress=True)

    _stage(5 if cross else 4, n, "compile: host (x86-64), fp32 and int8, static executor")
    host = {}
    for precision in ("fp32", "int8"):
        t = time.perf_counter()
        host[precision] = compile_checkpoint(ckpt, "host", precision, out=arts / f"dmm-host-{precision}.ssmc",
                                             overwrite=True, progress=_detail)
        click.echo(f"  {host[precision]}  ({time.perf_counter() - t:.0f} s)", err=True)

    _stage(n - 1, n, "run: both host artifacts on the C runtime (libssmc.so through ctypes; no torch)")
    runtime_bundle(progress=lambda m: click.echo(f"  {m}", err=True))
    runs = {p: run_artifact(host[p], None, episodes, seed=0, progress=False) for p in ("fp32", "int8")}

    _stage(n, n, f"verify: {host['fp32'].name} against the checkpoint ({episodes} episodes a side)")
    verdict = verify_artifact(host["fp32"], ckpt, episodes, seed=0, progress=False)
    report = write_report(verdict, root / "reports" / "quickstart-dmm-host-fp32")
    if any(not job.done() for _, _, job in jobs):
        click.echo("  waiting for the cross builds", err=True)
    for target, what, job in jobs:
        path, error, seconds = job.result()
        if error is not None:
            missing.append(error)
        else:
            crossed.append((target, f"{path}  ({what}; {seconds:.0f} s)"))
    if pool is not None:
        pool.shutdown()

    wall = time.perf_counter() - t0
    say("")
    say(f"dataset     {data_path}  ({summary['transitions']:,} transitions, "
        f"behaviour normalised mean {summary['normalized_mean']:.1f})")
    say(f"checkpoint  {ckpt}  (dmm, {fit['params']:,} params, {fit['steps']} steps, {fit['wall_s']} s)")
    say(f"PyTorch     normalised {res['normalized_mean']:.1f} ± {res['normalized_std']:.1f} over "
        f"{res['episodes']} episodes (return {res['return_mean']:.1f}; ssmc's Pendulum constants)")
    for p in ("fp32", "int8"):
        r = runs[p]
        say(f"C runtime   {p}: normalised {r['normalized_mean']:.1f} ± {r['normalized_std']:.1f}, step p50 "
            f"{r['step_latency_us']['p50']:.0f} µs  ({host[p]})")
    for target, line in crossed:
        say(f"cross       {target}: {line}")
    for line in missing:
        say(f"missing     {line}")
    say("")
    say(markdown(verdict).rstrip())
    say("")
    say(f"report      {report[1]}  (also {report[0].name}, {report[2].name})")
    say(f"verdict     {'PASS' if verdict.passed else 'FAIL'}; done in {wall:.0f} s.  Next: ssmc verify {host['int8']} "
        f"--report reports/int8, or ssmc compile --model {ckpt} --target rpi5")
    if not verdict.passed:
        raise SystemExit(1)


COMMANDS = [quickstart]
