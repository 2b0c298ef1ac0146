"""``ssmc data``: collect datasets locally and inspect any supported dataset."""

from __future__ import annotations

import json

import click

from ssmc.cli.runtime import no_traceback
from ssmc.train.collect import ALL_QUALITIES


@click.group()
def data() -> None:
    """Collect offline-RL datasets locally, or inspect D4RL / Minari / ssmc datasets."""


@data.command()
@click.argument("path")
@click.option("--env", "env", default=None, help="Environment id, when the file does not name it (e.g. Hopper-v5).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout and nothing else.")
@no_traceback
def inspect(path: str, env: str | None, as_json: bool) -> None:
    """Summarise a dataset: D4RL-layout HDF5, a Minari dataset (directory or local id), or an ssmc file.

    Prints transitions, episodes, observation/action sizes, episode-return min/mean/max, the
    D4RL-normalised mean return where the environment is known, and the spread of episode returns
    (p5 / median / p95, normalised where known): return conditioning needs a spread to choose from.
    """
    from ssmc.train.dataset import format_summary, load_dataset, summarize

    dataset = load_dataset(path)
    summary = summarize(dataset, env=env)
    summary.update(_spread(dataset, summary))
    if as_json:
        click.echo(json.dumps(summary))
        return
    click.echo(format_summary(summary))
    if "return_p50" in summary:
        norm = summary.get("normalized_p50") is not None
        vals = [summary[f"{'normalized' if norm else 'return'}_{p}"] for p in ("p5", "p50", "p95")]
        click.echo(f"{'return spread':<17}p5 / median / p95 = {' / '.join(f'{v:.1f}' for v in vals)}"
                   f"{' (normalised)' if norm else ''}")


def _spread(dataset, summary: dict) -> dict:
    """p5 / median / p95 of the episode returns, raw and (where the env is known) normalised."""
    import numpy as np

    from ssmc.train.trajectory import episode_returns

    returns = episode_returns(dataset)
    if returns.size == 0:
        return {}
    p5, p50, p95 = (float(v) for v in np.percentile(returns, [5, 50, 95]))
    out = {"return_p5": p5, "return_p50": p50, "return_p95": p95}
    if summary.get("normalized_mean") is not None and summary.get("env_id"):
        from ssmc.envs import resolve_env
        spec = resolve_env(summary["env_id"])
        out.update({f"normalized_{k}": spec.normalized(v) for k, v in (("p5", p5), ("p50", p50), ("p95", p95))})
    return out


@data.command()
@click.argument("env")
@click.option("--quality", type=click.Choice(ALL_QUALITIES), required=True,
              help="D4RL-style data quality; medium-stochastic: the medium policy with action noise (MuJoCo).")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Output HDF5 path [default: data/<env>-<quality>.hdf5].")
@click.option("--size", type=int, default=None,
              help="Transitions to collect [default: 200000 for MuJoCo, 20000 for the fast task].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the policy training and the rollouts.")
def collect(env: str, quality: str, out: str | None, size: int | None, seed: int) -> None:
    """Collect a D4RL-layout dataset for ENV (Hopper-v5, HalfCheetah-v5, Walker2d-v5, Pendulum-v1).

    Behaviour policies are trained on this CPU (ARS linear policies for MuJoCo, a noisy scripted
    controller for Pendulum-v1), cached, and deterministic given --seed; shipped ones are used
    when present. Scores are "D4RL-like": D4RL's constants on our own behaviour data.
    """
    from ssmc.train.collect import collect as run_collect

    path = run_collect(env, quality, out=out, size=size, seed=seed, progress=True)
    click.echo(str(path))


COMMANDS = [data]
