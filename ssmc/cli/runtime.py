"""``ssmc run``, ``ssmc verify``, ``ssmc hil`` and ``ssmc runtime``: the C runtime and its verdicts.

``ssmc run`` imports neither torch nor the model code: only the C runtime, numpy and gymnasium.
"""

from __future__ import annotations

import functools
import json
import os

import click

from ssmc.errors import SsmcError


def _say(msg: str) -> None:
    click.echo(msg, err=True)


def no_traceback(fn):
    """For the commands that read artifacts and datasets (run, verify, hil, data inspect): whatever the input,
    one ``error:`` line and exit status 2, never a traceback (issue 12). SsmcError goes to the CLI group as
    everywhere; any other exception (a reader that did not expect some malformed input) is printed as
    ``error: TYPE: message``. SSMC_DEBUG=1 keeps the traceback instead."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (SsmcError, click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as e:  # noqa: BLE001 - the point: no input reaches the user as a traceback
            if os.environ.get("SSMC_DEBUG"):
                raise
            msg = " ".join(str(e).split())[:500] or "(no message)"
            click.echo(f"error: {type(e).__name__}: {msg} (SSMC_DEBUG=1 shows the traceback)", err=True)
            click.get_current_context().exit(2)

    return wrapper


@click.command("run")
@click.argument("artifact", type=click.Path(exists=True))
@click.option("--env", "env_id", default=None, help="Environment id [default: the one the artifact records].")
@click.option("--episodes", type=int, default=5, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Episode i uses seed+i.")
@click.option("--target-return", type=float, default=None, help="Return to condition on [default: the artifact's].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout and nothing else.")
@no_traceback
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


@click.command("verify")
@click.argument("artifact", type=click.Path(exists=True))
@click.option("--checkpoint", type=click.Path(exists=True, file_okay=False), default=None,
              help="PyTorch checkpoint to compare with [default: the one the artifact was compiled from, if present].")
@click.option("--env", "env_id", default=None, help="Environment id [default: the one the artifact records].")
@click.option("--episodes", type=int, default=5, show_default=True, help="Rollouts per side (0: skip scores).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as one JSON object on stdout.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False), default=None,
              help="Write verify.json, verify.md and verify.png (latency histogram, score comparison) here.")
@no_traceback
def verify_cmd(artifact: str, checkpoint: str | None, env_id: str | None, episodes: int, seed: int, as_json: bool,
               report_dir: str | None) -> None:
    """Check ARTIFACT against its PyTorch checkpoint and its target's budgets.

    \b
    Checks: integrity (every hash, by the C runtime), recorded and fresh action agreement,
    D4RL-normalised score vs PyTorch on the same seeds, C-loop step latency p99 and peak
    memory against the target's budgets. Reports artifact/state bytes and parameters vs the
    paper's claim. Exit status 0 on PASS, 1 on FAIL.
    """
    from ssmc.runtime import runtime_bundle
    from ssmc.runtime.verify import markdown, verify_artifact, write_report

    runtime_bundle(progress=_say)
    verdict = verify_artifact(artifact, checkpoint, episodes, seed, progress=not as_json, env_id=env_id)
    if report_dir:
        for path in write_report(verdict, report_dir):
            _say(f"wrote {path}")
    click.echo(json.dumps(verdict.to_dict()) if as_json else markdown(verdict))
    if not verdict.passed:
        raise SystemExit(1)


@click.command("hil")
@click.argument("artifact", type=click.Path(exists=True, file_okay=False))
@click.option("--env", "env_id", default=None, help="Environment id [default: the one the artifact records].")
@click.option("--rate", "rate_hz", type=float, default=50.0, show_default=True, help="Control rate (Hz).")
@click.option("--episodes", type=int, default=1, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-steps", type=int, default=None, help="Cut episodes at this many steps.")
@click.option("--emulate", type=click.Choice(["aarch64"]), default=None,
              help="Run the aarch64 controller build under qemu-aarch64-static (needs an aarch64 artifact).")
@click.option("--realtime/--no-realtime", default=True, show_default=True,
              help="Ask for SCHED_FIFO in both processes (falls back to normal priority where not permitted).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout and nothing else.")
@no_traceback
def hil_cmd(artifact: str, env_id: str | None, rate_hz: float, episodes: int, seed: int, max_steps: int | None,
            emulate: str | None, realtime: bool, as_json: bool) -> None:
    """Hardware-in-the-loop on loopback: a MuJoCo plant here, the C controller in its own process.

    \b
    The plant steps on a fixed clock at --rate and holds the last action when the controller's
    reply misses the period's deadline. Reports deadline misses, score, round-trip latency and
    the controller's own step time. Under --emulate aarch64 the timing is qemu's, not a board's.
    """
    from ssmc.runtime.hil import run_hil

    res = run_hil(artifact, env_id, rate_hz, episodes, seed, emulate, max_steps, progress=not as_json,
                  realtime=realtime)
    if as_json:
        click.echo(json.dumps(res))
        return
    rtt, step = res["round_trip_us"], res["controller_step_us"]
    rt = ", ".join(f"{k} {'SCHED_FIFO' if v else 'normal'}" for k, v in res["realtime"].items())
    click.echo(f"{res['model']} {res['precision']} on {res['env_id']} at {rate_hz:g} Hz, {res['controller']} ({rt})")
    click.echo(f"  steps {res['steps']}, deadline misses {res['deadline_misses']} "
               f"({res['controller_errors']} controller errors)")
    click.echo(f"  return {res['return_mean']:.1f}, normalised {res['normalized_mean']:.1f} ({res['normalized_ref']})")
    click.echo(f"  round trip p50 {rtt['p50']:.0f} µs, p99 {rtt['p99']:.0f} µs, max {rtt['max']:.0f} µs; "
               f"controller step p50 {step['p50']:.0f} µs, p99 {step['p99']:.0f} µs")


@click.command("runtime")
@click.option("--arch", type=click.Choice(["x86_64", "aarch64"]), default=None,
              help="Build for this architecture [default: this machine's]. aarch64 fetches TVM's aarch64 wheels once.")
@click.option("--rebuild", is_flag=True, help="Build even if a cached bundle matches.")
def runtime_cmd(arch: str | None, rebuild: bool) -> None:
    """Build the C runtime bundle and print its folder.

    \b
    The folder holds libssmc.so (runtime/c/ssmc.h's C API; needs libc only), the ssmc_control
    example and ssmc.h, plus libssmc_vm.so, libtvm_runtime.so and libtvm_ffi.so for VM artifacts,
    linked with RPATH $ORIGIN. A static artifact needs only libssmc.so (and your loop) on the
    robot. Link your own loop with: cc loop.c -I DIR -L DIR -lssmc -Wl,-rpath,DIR
    """
    from ssmc.runtime import runtime_bundle

    click.echo(str(runtime_bundle(arch, rebuild=rebuild, progress=_say).dir))


COMMANDS = [run_cmd, verify_cmd, hil_cmd, runtime_cmd]
