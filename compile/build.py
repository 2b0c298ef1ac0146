"""``compile_checkpoint``: checkpoint -> exported step -> TVM pipeline -> artifact (docs/compile.md).

    from ssmc.compile import compile_checkpoint
    path = compile_checkpoint("runs/hopper-dmm", "rpi5", precision="int8")

The artifact (docs/artifact.md) holds ``lib.so`` (``executor: static``, the default on CPU targets: the
step as native code exporting runtime/c/ssmc_static_abi.h, built by compile/static.py; ``vm``: the Relax
VM executable for the target; either way every parameter is embedded as a constant, so ``params`` is null), ``reference.safetensors`` (8 steps of the
unquantised PyTorch step on seeded random raw inputs, state carried) and ``manifest.json``.
Observation normalisation and return-to-go scaling are inside the graph (``normalisation_in_graph``):
the runtime passes raw observations and the raw return-to-go it tracks.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ssmc.artifact import EXECUTORS, ReferenceStep, reference_bytes, sha256_file, write_artifact
from ssmc.compile.static import ENTRY as STATIC_ENTRY
from ssmc.errors import ConfigError
from ssmc.numerics import max_rel_error
from ssmc.targets import Target, check_precision, load_target, missing_cpu_features

Progress = Callable[[str], None]
LIBRARY_NAME = "lib.so"
REFERENCE_STEPS = 8


def default_artifact_path(model_kind: str, target: str, precision: str, mode: str | None = None,
                          root: str | os.PathLike[str] = "artifacts") -> Path:
    """``artifacts/<model>-<target>-<precision>[-<mode>].ssmc`` (mode only when it overrides the model's)."""
    suffix = f"-{mode}" if mode else ""
    return Path(root) / f"{model_kind}-{target}-{precision}{suffix}.ssmc"


def runs_here(target: Target) -> bool:
    """Whether this machine can load and run the target's library (same arch, CPU, features present)."""
    here = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine().lower())
    return target.device == "cpu" and target.arch == here and not missing_cpu_features(target)


def export_library(executable: Any, path: Path, target: Target) -> None:
    """Write the executable as a shared library, linked by the target's toolchain (``Target.toolchain``:
    Debian's cross gcc when installed, else ``zig cc`` from the ziglang wheel) on cross targets."""
    if target.cross_compiler is None:
        executable.export_library(str(path))
        return
    from tvm.support import cc

    executable.export_library(str(path), fcompile=cc.cross_compiler(target.toolchain().cc))


def default_executor(target: Target) -> str:
    """``static`` on CPU targets (no TVM runtime on the board); ``vm`` on CUDA, which static cannot run yet."""
    return "vm" if target.device == "cuda" else "static"


def check_executor(target: Target, executor: str | None) -> str:
    """``executor`` validated for ``target`` (None: the default); one-line ConfigError otherwise."""
    if executor is None:
        return default_executor(target)
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; known: {', '.join(EXECUTORS)}")
    if executor == "static" and target.device != "cpu":
        raise ConfigError(f"the static executor builds CPU steps only; target {target.name!r} runs on {target.device} "
                          "(use --executor vm)")
    return executor


def build_static(mod: Any, target: Target, workdir: Path, library: Path, seconds: dict[str, float],
                 say: Progress, banner: str, dump_ir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The ``static-plan`` and ``static-build`` stages: plan ``mod``'s main, link ``library``. With
    ``dump_ir`` the plan (JSON: every tensor's place and live range) and the generated C follow the
    pipeline's own dumps, numbered after them."""
    import json

    from ssmc.compile.static import build_library, plan_step

    t0 = time.perf_counter()
    plan = plan_step(mod)
    seconds["static-plan"] = round(time.perf_counter() - t0, 2)
    say(f"stage static-plan: {len(plan.calls)} kernel calls, {len(plan.tensors)} tensors placed "
        f"({seconds['static-plan']:.1f} s)")
    t0 = time.perf_counter()
    report = build_library(plan, target, workdir, library, banner, say)
    seconds["static-build"] = round(time.perf_counter() - t0, 2)
    say(f"stage static-build: kernels, call sequence and weights linked ({seconds['static-build']:.1f} s)")
    if dump_ir is not None:
        n = len(seconds) - 2  # import + the shared stages were dumped as 00 .. n-1
        tensors = [{"shape": list(t.shape), "dtype": t.dtype, "place": t.place, "slot": t.slot, "offset": t.offset,
                    "live": [t.first, t.last]} for t in plan.tensors]
        (Path(dump_ir) / f"{n:02d}-static-plan.json").write_text(
            json.dumps({**report, "tensors": tensors, "calls": [c.kernel for c in plan.calls]}, indent=1) + "\n")
        shutil.copyfile(workdir / "ssmc_step.c", Path(dump_ir) / f"{n + 1:02d}-static-build.c")
    return report


def strip_library(path: Path, target: Target) -> bool:
    """Remove the library's static symbol table and debug sections (``strip``; the cross toolchain's for
    cross targets, ``zig objcopy --strip-all`` under zig). The dynamic symbols the VM looks up stay;
    measured: a 344 KB library became 186 KB and still ran. Returns False, leaving the file as is, when
    no strip tool is installed."""
    import subprocess

    tool = "strip" if target.cross_compiler is None else target.toolchain().strip
    if shutil.which(tool) is None:
        return False
    subprocess.run([tool, str(path)], check=True, capture_output=True)
    return True


def reference_steps(exported: Any, target_return: float, n: int = REFERENCE_STEPS,
                    seed: int = 0) -> list[ReferenceStep]:
    """``n`` PyTorch steps of the unquantised model from a zero state on seeded random raw inputs.

    Observations are drawn around the normalisation statistics (mean + std·N(0, 1)); the return-to-go
    starts at the target return and drops by random rewards, as a controller would track it.
    """
    from ssmc.compile.export import run_torch

    rng = np.random.default_rng(seed)
    fn = exported.reference
    mean, std = fn.obs_mean.numpy(), fn.obs_std.numpy()
    state, rtg, steps = exported.init_state(), float(target_return), []
    for _ in range(n):
        obs = (mean + std * rng.standard_normal(mean.shape)).astype(np.float32)
        inputs = [obs, np.array([[rtg]], np.float32)]
        outs = run_torch(fn, inputs, state)
        steps.append(ReferenceStep(
            inputs={s.name: a for s, a in zip(exported.inputs, inputs, strict=True)},
            state_in={s.name: a for s, a in zip(exported.state, state, strict=True)},
            outputs={s.name: a for s, a in zip(exported.outputs, outs[:1], strict=True)},
            state_out={s.name: a for s, a in zip(exported.state, outs[1:], strict=True)},
        ))
        state = outs[1:]
        rtg -= abs(float(rng.standard_normal())) * max(abs(target_return), 1.0) / 100.0
    return steps


def load_vm(library: Path) -> Any:
    """A Relax VM (CPU) on a host library."""
    import tvm
    from tvm import relax

    return relax.VirtualMachine(tvm.runtime.load_module(str(library)), tvm.cpu())


def run_vm(vm: Any, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """One call of ``main`` on numpy arrays; the outputs as numpy arrays."""
    import tvm

    return [o.numpy() for o in vm["main"](*(tvm.runtime.tensor(np.ascontiguousarray(a)) for a in arrays))]


def step_runner(library: Path, results: Any, executor: str) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    """One call of a host library's step: (inputs, *state) -> (outputs, *new state), numpy in and out.
    ``results``: the TensorSpecs of the outputs then the state (what a static step writes)."""
    if executor == "static":
        from ssmc.compile.static import StaticLibrary

        return StaticLibrary(library, [(s.shape, s.dtype) for s in results]).step
    vm = load_vm(library)
    return lambda arrays: run_vm(vm, arrays)


def reference_error(library: Path, steps: list[ReferenceStep], exported: Any, executor: str = "vm") -> float:
    """Run a host library over the reference steps' inputs, carrying its own state; the worst
    ``max_rel_error`` against the recorded PyTorch outputs and state."""
    run = step_runner(library, (*exported.outputs, *exported.state), executor)
    state, worst = exported.init_state(), 0.0
    for step in steps:
        got = run([step.inputs[s.name] for s in exported.inputs] + list(state))
        want = [step.outputs[s.name] for s in exported.outputs] + [step.state_out[s.name] for s in exported.state]
        worst = max(worst, max_rel_error(got, want))
        state = got[1:]
    return worst


def compile_checkpoint(
    checkpoint: str | os.PathLike[str],
    target: str | Target,
    precision: str = "fp32",
    mode: str | None = None,
    out: str | os.PathLike[str] | None = None,
    dump_ir: str | os.PathLike[str] | None = None,
    *,
    executor: str | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Compile a checkpoint's step for ``target`` at ``precision`` into an artifact; return its path.

    Args:
        checkpoint: checkpoint directory (config.json + model.safetensors).
        target: a built-in target name, a descriptor path, or a ``Target``.
        precision: ``fp32``, ``fp16`` (weights and weight matmuls fp16) or ``int8`` (weight-only).
        mode: ``window`` or ``recurrent`` to override the model's semantics; None keeps them.
        out: artifact directory; default ``artifacts/<model>-<target>-<precision>.ssmc``.
        dump_ir: write the IRModule after each pipeline stage into this directory.
        executor: ``static`` (native step, no TVM on the target) or ``vm`` (Relax VM); None picks
            ``default_executor(target)``: static on CPU targets, vm on CUDA.
        overwrite: replace an existing artifact at ``out``.
        progress: called with one line per stage (the CLI prints them on stderr).

    Raises:
        ConfigError: unknown target, a precision the target cannot run, an incomplete checkpoint,
            a missing toolchain (cross compiler, nvcc). One line each.
    """
    from ssmc.compile.cuda import check_device_code, cuda_build_env
    from ssmc.compile.export import export_step, normalisation
    from ssmc.compile.pipeline import lower_step, stage_names
    from ssmc.compile.quantize import KEEP_FP32, int8_layers, quantize_int8
    from ssmc.train.models import WEIGHTS_FILE, load_checkpoint

    say = progress or (lambda _msg: None)
    t_start = time.perf_counter()
    tgt = load_target(target)
    executor = check_executor(tgt, executor)
    level = check_precision(tgt, precision)
    if level == "emulated":
        say(f"warning: {precision} is emulated on target {tgt.name!r} (no fast {precision} arithmetic): "
            "expect it to run slower than fp32")
    if mode is not None and mode not in ("window", "recurrent"):
        raise ConfigError(f"unknown mode {mode!r}; known: window, recurrent")
    ckpt = Path(checkpoint)
    model, extra = load_checkpoint(ckpt)
    mean, std, rtg_scale, target_return = normalisation(extra, model.config.obs_dim)
    if out is None:
        out = default_artifact_path(model.name, tgt.name, precision, mode if mode != model.semantics else None)
    out = Path(out)
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} already exists (pass --force to replace it)")

    say(f"export: {model.name} step ({mode or model.semantics}), {model.num_params():,} parameters")
    exported = export_step(model, extra, mode, quantize=quantize_int8 if precision == "int8" else None,
                           fused_scan=tgt.device != "cuda")
    with tempfile.TemporaryDirectory(prefix="ssmc-compile-") as tmp:
        library = Path(tmp) / LIBRARY_NAME
        arena_bytes, static_report = 0, None
        with cuda_build_env(tgt):
            lowered, report = lower_step(exported.program, tgt, precision, dump_ir=dump_ir, progress=say,
                                         executor=executor)
            if executor == "static":
                static_report = build_static(lowered, tgt, Path(tmp), library, report["stage_seconds"], say,
                                             f"{model.name} {exported.semantics} step, {precision}, target {tgt.name}",
                                             dump_ir)
                arena_bytes = static_report["arena_bytes"]
            else:
                export_library(lowered, library, tgt)
        stripped = strip_library(library, tgt)
        compiled_extra: dict[str, Any] = {
            "inputs_are_raw": "obs_raw is the environment's observation and rtg_raw the unscaled return-to-go; "
                              "the graph computes (obs_raw - obs_mean) / obs_std and rtg_raw / rtg_scale",
            "pipeline": stage_names(tgt, precision, executor=executor),
            "precision_support": level,
            "constant_bytes": report["constant_bytes"],
            "matmul_macs": report["matmul_macs"],
            "library_stripped": stripped,
            "checkpoint": {"path": str(ckpt), "model_sha256": sha256_file(ckpt / WEIGHTS_FILE)},
        }
        if static_report is not None:
            compiled_extra["static"] = static_report
        if mode is not None and mode != model.semantics:
            compiled_extra["semantics_override"] = f"{model.semantics} -> {mode}"
        if precision == "int8":
            expected = sum(layer.weight_int8.numel() for layer in int8_layers(exported.function.model))
            if report["constant_bytes"].get("int8", 0) != expected:
                raise RuntimeError(f"int8 build stores {report['constant_bytes'].get('int8', 0)} bytes of int8 "
                                   f"weights, expected {expected}: some were folded to fp32 (pipeline bug)")
            compiled_extra["quantization"] = {
                "scheme": "int8 weight-only, symmetric, per output channel (scale = max|W_row| / 127)",
                "layers": len(int8_layers(exported.function.model)),
                "fp32": f"Linear layers {', '.join(KEEP_FP32)}; biases, norms, embedding tables, conv1d, A_log, D, "
                        "the state",
            }
        if precision == "fp16":
            compiled_extra["mixed_precision"] = ("weights of every matmul with a constant weight stored fp16 and "
                                                 "multiplied from fp16 inputs into fp32 results; the SSM "
                                                 "parameters, delta, norms and the state stay fp32")
        if tgt.device == "cuda":
            compiled_extra["cuda_device_code"] = check_device_code(library, tgt)
            say(f"device code: {', '.join(compiled_extra['cuda_device_code'])} (built, cannot run here: no GPU)")

        steps = reference_steps(exported, target_return)
        if runs_here(tgt):
            err = reference_error(library, steps, exported, executor)
            if not np.isfinite(err):
                raise RuntimeError(f"the compiled {model.name} step returns NaN/inf on the reference inputs")
            compiled_extra["reference_max_rel_error"] = err
            say(f"reference: {len(steps)} steps, max relative error vs PyTorch {err:.2e}")
        ref = reference_bytes(steps, {"model": model.name, "source": "PyTorch fp32 step of the checkpoint",
                                      "semantics": exported.semantics})
        compiled_extra["compile_seconds"] = round(time.perf_counter() - t_start, 1)
        fields = {
            "model_kind": exported.model.name,
            "model_config": exported.model.config.to_dict(),
            "semantics": exported.semantics,
            "entry": STATIC_ENTRY if executor == "static" else "main",
            "inputs": list(exported.inputs),
            "outputs": list(exported.outputs),
            "state": list(exported.state),
            "obs_dim": model.config.obs_dim,
            "act_dim": model.config.act_dim,
            "obs_mean": mean,
            "obs_std": std,
            "rtg_scale": 1.0 / rtg_scale,  # the manifest's rtg_scale divides (docs/artifact.md)
            "target_return": target_return,
            "normalisation_in_graph": True,
            "env_id": extra.get("env_id"),
            "precision": precision,
            "target": tgt,
            "library": LIBRARY_NAME,
            "params": None,
            "executor": executor,
            "arena_bytes": arena_bytes,
            "param_count": exported.model.num_params(),
            "macs_per_step": exported.model.macs_per_step(),
            "reference": "reference.safetensors",
            "extra": compiled_extra,
        }
        path = write_artifact(out, fields, {LIBRARY_NAME: library, "reference.safetensors": ref},
                              overwrite=overwrite)
    say(f"wrote {path} ({sum(f.stat().st_size for f in path.iterdir()):,} bytes)")
    return path


def emit_c_source(
    checkpoint: str | os.PathLike[str],
    target: str | Target,
    precision: str = "fp32",
    mode: str | None = None,
    out: str | os.PathLike[str] = "ssmc-step-c",
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Write the static step of a checkpoint as a C99 source bundle (``ssmc compile --emit c``).

    The folder holds kernels.c (TVM's C code generator, vectorisation left to the C compiler), the generated
    call sequence (ssmc_step.c), the weights (ssmc_weights.c), ssmc_step.h, ssmc_kernel_abi.h, a demo driver
    and a Makefile; it builds with any C99 compiler and libm (``make``, or ``make CC=aarch64-linux-gnu-gcc``).
    The target chooses the precision support only: the C is the same for every CPU.
    """
    from ssmc.compile.export import export_step
    from ssmc.compile.pipeline import lower_step
    from ssmc.compile.quantize import quantize_int8
    from ssmc.compile.static import emit_c_bundle, plan_step
    from ssmc.train.models import load_checkpoint

    say = progress or (lambda _msg: None)
    tgt = load_target(target)
    check_executor(tgt, "static")
    check_precision(tgt, precision)
    if mode is not None and mode not in ("window", "recurrent"):
        raise ConfigError(f"unknown mode {mode!r}; known: window, recurrent")
    dest = Path(out)
    if dest.exists() and not overwrite:
        raise ConfigError(f"{dest} already exists (pass --force to replace it)")
    model, extra = load_checkpoint(Path(checkpoint))
    say(f"export: {model.name} step ({mode or model.semantics}), {model.num_params():,} parameters")
    exported = export_step(model, extra, mode, quantize=quantize_int8 if precision == "int8" else None)
    mod, _ = lower_step(exported.program, tgt, precision, progress=say, executor="static")
    plan = plan_step(mod)
    specs = {"inputs": list(exported.inputs), "state": list(exported.state), "outputs": list(exported.outputs)}
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        emit_c_bundle(plan, specs, staging, f"{model.name} {exported.semantics} step, {precision}", say)
        os.chmod(staging, 0o755)
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    say(f"wrote {dest}: build it with `make -C {dest}`")
    return dest
