"""``ssmc compile``: lower a checkpoint's step through TVM into an artifact for one target and precision."""

from __future__ import annotations

from pathlib import Path

import click


def resolve_checkpoint(model: str, workspace: str = "runs") -> Path:
    """A checkpoint directory as given, or the newest checkpoint of model kind ``model`` under ``workspace``."""
    from ssmc.errors import ConfigError
    from ssmc.train.models import MODELS

    path = Path(model)
    if path.is_dir():
        return path
    if model not in MODELS:
        raise ConfigError(f"--model {model}: neither a checkpoint directory nor a model name ({', '.join(MODELS)})")
    from ssmc.train.trainer import newest_checkpoint

    found = newest_checkpoint(model, workspace)
    click.echo(f"--model {model}: using the newest {model} checkpoint, {found}", err=True)
    return found


@click.command("compile")
@click.option("--model", "model", required=True, metavar="CHECKPOINT|NAME",
              help="Checkpoint directory, or a model name (dt, dema, dema-rnn, dmm, mambadm, dmh): the newest checkpoint "
                   "of that kind under --workspace.")
@click.option("--target", required=True, help="Target name (see `ssmc targets`) or a descriptor .json.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True,
              help="fp16: weights and weight matmuls; int8: weight-only, per output channel. SSM state stays fp32.")
@click.option("--mode", type=click.Choice(["window", "recurrent"]), default=None,
              help="Override the model's inference semantics (default: the model's own).")
@click.option("--executor", type=click.Choice(["static", "vm"]), default=None,
              help="static: the step as native code with a fixed call sequence and one arena, no TVM on the "
                   "target; vm: a Relax VM executable run through TVM's runtime [default: static on CPU "
                   "targets, vm on CUDA].")
@click.option("--emit", type=click.Choice(["artifact", "c"]), default="artifact", show_default=True,
              help="c: write the static step as a C99 source bundle (C files, header, Makefile; libm only) "
                   "into --out instead of an artifact, for firmware and RTOS builds.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Artifact directory [default: artifacts/<model>-<target>-<precision>.ssmc]; with --emit c "
                   "the bundle's folder [default: <model>-<target>-<precision>-c].")
@click.option("--dump-ir", type=click.Path(file_okay=False), default=None,
              help="Write the IRModule after each pipeline stage into this directory (NN-stage.py).")
@click.option("--force", is_flag=True, help="Replace an existing artifact at --out.")
@click.option("--workspace", default="runs", show_default=True, help="Where --model NAME is looked up.")
@click.option("--sign", "sign_key", type=click.Path(exists=True, dir_okay=False), default=None, metavar="KEY",
              help="Sign the artifact with this key (from `ssmc keygen`): writes manifest.sig (docs/security.md).")
def compile_cmd(model: str, target: str, precision: str, mode: str | None, executor: str | None, emit: str,
                out: str | None, dump_ir: str | None, force: bool, workspace: str, sign_key: str | None) -> None:
    """Compile a trained policy's per-step function for TARGET into an artifact.

    \b
    The artifact (docs/artifact.md) holds the library, manifest.json and PyTorch reference steps;
    it takes raw observations and the raw return-to-go (normalisation is compiled in). On CPU targets
    the library is a static step (native code, no TVM runtime needed on the board); --executor vm
    keeps the Relax VM. --emit c writes C sources instead (docs/compile.md, Executors).
    Progress goes to stderr; the artifact path is printed on stdout.
    """
    from ssmc.compile import compile_checkpoint, emit_c_source
    from ssmc.errors import ConfigError

    if sign_key is not None:
        if emit == "c":
            raise ConfigError("--sign signs an artifact; --emit c writes sources, which are not signed")
        from ssmc.artifact.signing import load_private_key

        load_private_key(sign_key)  # a bad key fails now, not after the compile
    checkpoint = resolve_checkpoint(model, workspace)
    say = lambda msg: click.echo(msg, err=True)  # noqa: E731
    if emit == "c":
        if executor == "vm":
            raise ConfigError("--emit c writes the static step; it cannot be combined with --executor vm")
        name = Path(target).stem if target.endswith(".json") else target
        path = emit_c_source(checkpoint, target, precision, mode,
                             out or f"{checkpoint.name}-{name}-{precision}-c", overwrite=force, progress=say)
    else:
        path = compile_checkpoint(checkpoint, target, precision, mode, out, dump_ir, executor=executor,
                                  overwrite=force, progress=say)
        if sign_key is not None:
            from ssmc.artifact.signing import sign_artifact

            say(f"signed {path} with key {sign_artifact(path, sign_key)}")
    click.echo(str(path))


COMMANDS = [compile_cmd]
