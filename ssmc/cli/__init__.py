"""The ``ssmc`` command line.

Each command group lives in its own module and imports its heavy dependencies lazily, so
``ssmc --help`` is instant and ``ssmc run`` never imports torch. User mistakes raise
``SsmcError`` and are printed as one line (exit status 2); anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import sys

import click

from ssmc import __version__
from ssmc.errors import SsmcError

#: Packages an installation may lack, and the install that brings each (pyproject.toml): a command that
#: needs a missing one stops with one line naming it instead of a ModuleNotFoundError traceback.
INSTALLS = {
    **dict.fromkeys(("torch", "tvm", "tvm_ffi", "ziglang", "numba", "gymnasium", "mujoco", "h5py", "safetensors"),
                    "part of ssmc's default install: pip install -e ."),
    "minari": "an optional extra: pip install -e '.[minari]'",
    "ray": "an optional extra: pip install -e '.[sweep]'",
    **dict.fromkeys(("onnx", "onnxruntime", "onnxscript", "iree"), "an optional extra: pip install -e '.[bench]'"),
    "mamba_ssm": "an optional extra: pip install -e '.[gpu]'",
}


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SsmcError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(2)
        except ModuleNotFoundError as e:
            package = (e.name or "").split(".")[0]
            if package not in INSTALLS:
                raise
            command = f"ssmc {ctx.invoked_subcommand}" if ctx.invoked_subcommand else "ssmc"
            click.echo(f"error: {command} needs the {package} package, {INSTALLS[package]}", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ssmc")
def cli() -> None:
    """ssmc: train Decision-Mamba-family offline-RL policies, compile them for embedded
    targets and verify the result against PyTorch.

    \b
    Pipeline:  data collect/inspect -> train -> eval -> compile -> verify/run/hil
    Start with `ssmc quickstart` for the whole pipeline, small, in a few minutes.
    """


def _register() -> None:
    from ssmc.cli import compile, data, quickstart, runtime, sign, sweep, targets, train

    for module in (data, train, sweep, quickstart, targets, compile, runtime, sign):
        for cmd in module.COMMANDS:
            cli.add_command(cmd)


_register()


def main() -> None:
    cli(prog_name="ssmc")


if __name__ == "__main__":
    sys.exit(main())
