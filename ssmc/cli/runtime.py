"""``ssmc run``, ``ssmc verify``, ``ssmc hil`` and ``ssmc runtime``: the C runtime and its verdicts.

``ssmc run`` imports neither torch nor the model code: only the C runtime, numpy and gymnasium.
"""

from __future__ import annotations

import json

import click


def _say(msg: str) -> None:
    click.echo(msg, err=True)


@click.command("run")
@click.argument("artifact", type=click.Path(exists=True))
@click.option("--env", "env_id", default=None, help="Environment id [default: the one the artifact records].")
@click.option("--episodes", type=int, default=5, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Episode i uses seed+i.")
@click.option("--target-return", type=float, default=None, help="Return to condition on [default: the artifact's].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout and nothing else.")
def run_cmd(artifact: str, env_id: str | None, episodes: int, seed: int, target_return: float | None,
            as_json: bool) -> None:
    """Roll out ARTIFACT (a directory or .tar from `ssmc compile`) with the C runtime alone.

    \b
    No torch, no model code: the artifact is verified (every hash) and stepped through
    libssmc.so, built once for this machine (see `ssmc runtime`). Prints the return and the
    D4RL-normalised score ("D4RL-like" on locally collected data) and the per-step latency.
    """
    from ssmc.runtime import runtime_bundle
    from ssmc.runtime.run import run_artifact

    runtime_bundle(progress=_say)
    res = run_artifact(artifact, env_id, episodes, seed, target_return, progress=not as_json)
    if as_json:
        click.echo(json.dumps(res))
        return
    lat = res["step_latency_us"]
    click.echo(f"{res['model']} {res['precision']} on {res['target']} ({res['semantics']}), {res['env_id']}, "
               f"{res['episodes']} episodes")
    click.echo(f"  return      {res['return_mean']:.1f} ± {res['return_std']:.1f}")
    click.echo(f"  normalised  {res['normalized_mean']:.1f} ± {res['normalized_std']:.1f}  ({res['normalized_ref']})")
    click.echo(f"  step        p50 {lat['p50']:.0f} µs, p99 {lat['p99']:.0f} µs, max {lat['max']:.0f} µs "
               f"over {lat['n']} steps (Python binding)")


@click.command("runtime")
@click.option("--arch", type=click.Choice(["x86_64", "aarch64"]), default=None,
              help="Build for this architecture [default: this machine's]. aarch64 fetches TVM's aarch64 wheels once.")
@click.option("--rebuild", is_flag=True, help="Build even if a cached bundle matches.")
def runtime_cmd(arch: str | None, rebuild: bool) -> None:
    """Build the C runtime bundle and print its folder.

    \b
    The folder holds libssmc.so (runtime/c/ssmc.h's C API), libtvm_runtime.so, libtvm_ffi.so,
    the ssmc_control example and ssmc.h, linked with RPATH $ORIGIN: copy it with an artifact
    to the robot. Link your own loop with: cc loop.c -I DIR -L DIR -lssmc -Wl,-rpath,DIR
    """
    from ssmc.runtime import runtime_bundle

    click.echo(str(runtime_bundle(arch, rebuild=rebuild, progress=_say).dir))


COMMANDS = [run_cmd, runtime_cmd]
