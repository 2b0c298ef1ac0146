"""``ssmc sweep`` (model × dataset × seed grids on Ray) and ``ssmc claims`` (the parameter-efficiency verdict)."""

from __future__ import annotations

import json

import click


@click.command()
@click.argument("config")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Sweep folder: one sub-folder per run, sweep.json and sweep.md [default: runs/sweeps/<name>].")
@click.option("--address", default=None,
              help="Join an existing Ray cluster (e.g. ray://head:10001 or auto) instead of starting a local one.")
@click.option("--parallel", type=int, default=None,
              help="Runs at a time on the local Ray (one CPU each) [default: every CPU].")
@click.option("--nice", type=int, default=None,
              help="Each run's niceness (e.g. 5 on a shared machine) [default: Ray's own, 15].")
@click.option("--doc", type=click.Path(dir_okay=False), default=None,
              help="Also write the results table into this Markdown file's marked block (e.g. docs/results.md) "
                   "and the summary beside it as .json.")
@click.option("--dry-run", is_flag=True, help="List the runs and which are finished; run nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object on stdout.")
def sweep(config: str, out: str | None, address: str | None, parallel: int | None, nice: int | None, doc: str | None,
          dry_run: bool, as_json: bool) -> None:
    """Train and evaluate every (model, dataset, seed) of a sweep CONFIG, one Ray task per run.

    CONFIG is a JSON path or a name in ssmc/configs/sweeps/ (e.g. hopper-claims). Models refer to named
    configs (ssmc/configs/NAME.json, the papers' settings). Resumable: state lives in the run folders,
    finished runs are skipped and half-finished ones resume from their last save. Results: mean ± 95 % CI
    over seeds of the last and the best evaluation, in OUT/sweep.json and OUT/sweep.md.
    """
    from pathlib import Path

    from ssmc.train.sweep import expand, finished, load_sweep, run_sweep

    if dry_run:
        cfg = load_sweep(config)
        out_dir = Path(out or Path("runs") / "sweeps" / cfg["name"])
        for r in expand(cfg, out_dir):
            state = "done" if finished(r) else "todo"
            click.echo(f"{state}  {r['key']:<40} {r['config']:<28} {r['steps']} steps, evals at {r['eval_steps']}")
        return
    summary = run_sweep(config, out, address=address, parallel=parallel, nice=nice, progress=not as_json, doc=doc)
    if as_json:
        click.echo(json.dumps(summary))
        return
    from ssmc.train.sweep import markdown

    click.echo(markdown(summary))


@click.command()
@click.argument("sweep_json", type=click.Path(dir_okay=False))
@click.option("--baseline", default="dt", show_default=True, help="The model key the claims compare against.")
@click.option("--docs", "docs_dir", type=click.Path(file_okay=False), default="docs", show_default=True,
              help="Where the benchmark JSON files (static-step.json, bench.json) are read from.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Markdown file whose marked claims-verdict block is (re)written, and a .json beside it "
                   "named <stem>-verdict.json [default: print only].")
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as one JSON object on stdout.")
def claims(sweep_json: str, baseline: str, docs_dir: str, out: str | None, as_json: bool) -> None:
    """Check the papers' claims on a sweep's results: per claim holds / does not hold / undecided.

    SWEEP_JSON is a sweep.json from `ssmc sweep`. Score: each model's mean minus the baseline's on the
    same datasets, with a 95 % Welch CI (holds if the CI is above 0, does not hold if below, else
    undecided at this many seeds). Size: parameter and MACs-per-step ratios at the configs run. Deployed
    cost: compiled-step latency and memory ratios read from the docs' benchmark JSON (named in the output).
    DM-H's 28x online-testing claim: from docs/long-context.json (tools/bench/long_context.py), when present.
    """
    from ssmc.train.verdict import render, verdict, write

    v = verdict(sweep_json, baseline=baseline, docs_dir=docs_dir)
    if out:
        write(v, out)
    if as_json:
        click.echo(json.dumps(v))
    else:
        click.echo(render(v))


COMMANDS = [sweep, claims]
