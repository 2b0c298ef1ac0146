"""``ssmc quickstart``: the whole pipeline, small, on a fresh machine in a few minutes."""

from __future__ import annotations

import time
from pathlib import Path

import click


@click.command()
@click.option("--workdir", type=click.Path(file_okay=False), default=".", show_default=True,
              help="Where data/ and runs/ are written.")
@click.option("--steps", type=int, default=1_500, show_default=True, help="Training steps for the small DMM.")
@click.option("--episodes", type=int, default=5, show_default=True, help="Evaluation episodes.")
def quickstart(workdir: str, steps: int, episodes: int) -> None:
    """Collect a small Pendulum-v1 dataset, inspect it, train a small Decision MetaMamba on it,
    and evaluate it in the environment. Prints what it did and where the files are."""
    from ssmc.train.collect import collect
    from ssmc.train.dataset import format_summary, load_dataset, summarize
    from ssmc.train.rollout import evaluate_checkpoint
    from ssmc.train.trainer import TrainConfig, Trainer

    root = Path(workdir)
    t0 = time.perf_counter()
    click.secho("1/4  collect: Pendulum-v1, medium quality (noisy scripted swing-up controller)", bold=True, err=True)
    data_path = collect("Pendulum-v1", "medium", out=str(root / "data" / "pendulum-v1-medium.hdf5"),
                        size=20_000, seed=0, progress=True)
    click.secho("2/4  inspect", bold=True, err=True)
    data = load_dataset(str(data_path))
    summary = summarize(data)
    click.echo(format_summary(summary), err=True)
    click.secho(f"3/4  train: dmm for {steps} steps on the CPU", bold=True, err=True)
    out = root / "runs" / "quickstart-dmm"
    cfg = TrainConfig(steps=steps, warmup_steps=100, save_every=max(steps // 2, 1))
    trainer = Trainer("dmm", data, out, cfg, dataset_path=str(data_path))
    fit = trainer.fit(progress=True)
    click.secho(f"4/4  eval: {episodes} episodes through the model's step()", bold=True, err=True)
    res = evaluate_checkpoint(str(out), "Pendulum-v1", episodes, seed=0, progress=True)
    wall = time.perf_counter() - t0
    click.echo("")
    click.echo(f"dataset     {data_path}  ({summary['transitions']:,} transitions, "
               f"behaviour normalised mean {summary['normalized_mean']:.1f})")
    click.echo(f"checkpoint  {out}  (dmm, {fit['params']:,} params, {fit['steps']} steps, {fit['wall_s']} s)")
    click.echo(f"score       normalised {res['normalized_mean']:.1f} ± {res['normalized_std']:.1f} over "
               f"{res['episodes']} episodes (return {res['return_mean']:.1f}; ssmc's Pendulum constants)")
    click.echo(f"done in {wall:.0f} s.  Next: ssmc eval {out} --episodes 20")


COMMANDS = [quickstart]
