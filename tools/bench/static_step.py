"""Static step benchmark (issue 10): the recurrent DeMa/DMM step through ssmc's static executor against
ssmc's VM, IREE, ONNX Runtime and ExecuTorch (XNNPACK), one interleaved run, one thread, with the
compute floor measured in the same run; footprint and a per-kernel breakdown.

    python tools/bench/static_step.py                        # -> docs/static-step.{md,json,png}
    python tools/bench/static_step.py --models dmm --precisions fp32 --peers vm,iree,ort --rounds 5 \\
        --no-docs --json /tmp/s.json

Models: ``runs/zoo/<model>`` (``--zoo``) when it holds a checkpoint, else a freshly initialised
Hopper-size model (obs 11, act 3, paper configuration; ``step_latency.load_model``): latency does not
depend on the weights. Every peer runs the model's **recurrent** step (``export_step(model, extra,
"recurrent")``), fp32 and int8 (weight-only int8 from ``quantize_int8``: int8 weights, fp32
activations; the other compilers get the same int8 ``StepFunction`` and do with it what they do).

Peers (``--peers``), each timed natively unless said otherwise:

- ``static``: ``ssmc compile --executor static`` artifact run by the runtime's C control loop
  (``ssmc_control ARTIFACT --steps N --rate 1e9``: ``ssmc_act`` timed alone, per step);
- ``vm``: the same through ``--executor vm`` (TVM's Relax VM), same C loop;
- ``iree``: the same ``StepFunction`` exported with iree-turbine's ``aot.export``, compiled by
  ``iree-compile`` for llvm-cpu (``IREE_FLAGS``), timed by ``iree-benchmark-module --device=local-sync``
  with one call per repetition (``--benchmark_min_time=1x``), so each repetition is one step;
- ``ort``: ONNX Runtime 1 thread as in tools/bench/step_latency.py (``ort_peer``), timed from Python
  (``perf_counter_ns`` around ``run_with_iobinding``: its Python entry cost is included);
- ``executorch``: ``torch.export`` + ``to_edge_transform_and_lower`` with ``XnnpackPartitioner``
  (tools/bench/et_export.py, run in ExecuTorch's own environment), timed by a C++ runner built
  against the executorch wheel's own headers and libraries (tools/bench/et_runner.cpp; thread pool 1).

The floor: this core's single-thread GEMV rate (y = x @ W, 1x256 @ 256x256 fp32, W in L2), measured
as a peer in every round by tools/bench/gemv_floor.c built for x86-64-v3 (the ``host`` target's ISA)
and for ``-march=native``, next to numpy's and torch's GEMV and GEMM (256^3, 512^3) at one thread;
floor = ``macs_per_step()`` / the best GEMV rate, and / the GEMM peak.

Interleaving: ``--rounds`` rounds; each runs every (model, precision, peer) and the floor for one burst
of about ``--round-ms`` (at least 200 steps) in a fresh random order. Each native burst is a fresh
process (the C loop opens the artifact anew; its open is not timed). Statistics: a burst's p50/p99 over
its steps; the table's p50 is the median over rounds of the burst p50s, its p99 the median of the
burst p99s (ssmc_control reports per-burst percentiles only, not its samples: the same statistic for
every peer). Loads are recorded per round.

The ExecuTorch environment (``--executorch-python``, default ``~/.cache/ssmc/venv-executorch``)::

    python -m venv --system-site-packages ~/.cache/ssmc/venv-executorch
    ~/.cache/ssmc/venv-executorch/bin/pip install executorch==1.5.1 "setuptools>=77"

IREE installs beside torch 2.13.0 in the main environment: ``pip install -e ".[bench]"``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ["TVM_NUM_THREADS"] = "1"  # before TVM starts its thread pool (breakdown, ORT's process)

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

import step_latency as sl  # noqa: E402

from ssmc.fsutil import atomic_file, replace_marked_block  # noqa: E402

PEERS = ("static", "static-avx512", "vm", "iree", "ort", "executorch")
#: ssmc's own peers: (executor, target). static-avx512 is the same static step for the host-avx512 target
#: (x86-64-v4, 16-float vectors), run only on a CPU with AVX-512 (IREE's --iree-llvmcpu-target-cpu=host
#: uses it there too).
SSMC_PEERS = {"static": ("static", "host"), "static-avx512": ("static", "host-avx512"), "vm": ("vm", "host")}
STATIC_PEERS = ("static", "static-avx512")
PEER_LABEL = {
    "static": "ssmc static (C loop)", "static-avx512": "ssmc static for host-avx512 (C loop)", "vm": "ssmc VM (C loop)", "iree": "IREE llvm-cpu, local-sync (native)",
    "ort": "ONNX Runtime (from Python)", "executorch": "ExecuTorch XNNPACK (C++ runner)",
}
PEER_SHORT = {"static": "ssmc\nstatic", "static-avx512": "ssmc static\navx512", "vm": "ssmc\nVM", "iree": "IREE", "ort": "ONNX\nRuntime",
              "executorch": "ExecuTorch\nXNNPACK"}
PRECISIONS = ("fp32", "int8")
DEFAULT_MODELS = ("dema", "dmm")
IREE_FLAGS = ("--iree-hal-target-device=local", "--iree-hal-local-target-device-backends=llvm-cpu",
              "--iree-llvmcpu-target-cpu=host")
ET_PYTHON = Path.home() / ".cache" / "ssmc" / "venv-executorch" / "bin" / "python"
#: Max relative error against PyTorch (fp32 peers against fp32 PyTorch, int8 against int8 PyTorch).
TOLERANCE = 1e-4
#: Goals from issue 10 (p50, µs; ratios at p50).
GOALS = {"dema": {"static_us": 40.0, "iree_ratio": 3.0, "ort_ratio": 8.0}, "dmm": {"static_us": 25.0}}
FLOOR_SHAPE = (256, 256)  # the GEMV the floor rate is measured on: x (1, 256) @ W (256, 256)
DOC_BEGIN, DOC_END = "<!-- static_step:begin -->", "<!-- static_step:end -->"
MIN_STEPS = 200

NATIVE_ENV = {"TVM_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def native_env() -> dict[str, str]:
    return {**os.environ, **NATIVE_ENV}


# --------------------------------------------------------------------------------------------- bursts

@dataclass
class Burst:
    """One burst of one entry: its own p50/p99 (µs) over ``n`` steps, the samples when the peer gives them."""

    p50_us: float
    p99_us: float
    n: int
    samples_ns: list[int] | None = None
    peak_rss_kb: int | None = None
    load1: float | None = None


def burst_from_samples(samples_ns: list[int], **extra: Any) -> Burst:
    a = np.asarray(samples_ns, dtype=np.float64) / 1e3
    return Burst(float(np.percentile(a, 50)), float(np.percentile(a, 99)), int(a.size), list(samples_ns), **extra)


@dataclass
class Entry:
    """One thing timed in the rounds: (model, precision, peer), or a floor kernel (model ``floor``)."""

    model: str
    precision: str
    peer: str
    run: Callable[[int], Burst]
    steps: int = MIN_STEPS
    bursts: list[Burst] = field(default_factory=list)
    keep: Any = None  # what ``run`` needs alive (ORT writes into the peer's bound output arrays)

    @property
    def key(self) -> str:
        return f"{self.model}/{self.precision}/{self.peer}"


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env or native_env(), timeout=timeout)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return proc.stdout


def _last_json(text: str) -> dict[str, Any]:
    return json.loads(next(line for line in reversed(text.strip().splitlines()) if line.startswith("{")))


def ssmc_runner(bundle: Any, artifact: Path) -> Callable[[int], Burst]:
    """A burst = one ``ssmc_control`` process stepping the artifact ``n`` times unthrottled."""

    def run(n: int) -> Burst:
        out = _last_json(_run(bundle.command(str(artifact), "--steps", str(n), "--rate", "1e9"), "ssmc_control"))
        if out.get("errors"):
            raise RuntimeError(f"ssmc_control {artifact}: {out['errors']} failed steps")
        lat = out["latency_us"]
        return Burst(float(lat["p50"]), float(lat["p99"]), int(out["steps"]), None, out.get("peak_rss_kb"))

    return run


def iree_runner(vmfb: Path, inputs: list[Path]) -> Callable[[int], Burst]:
    """A burst = one ``iree-benchmark-module`` process, ``n`` repetitions of one call each."""
    tool = shutil.which("iree-benchmark-module")
    if tool is None:
        raise RuntimeError("iree-benchmark-module is not on PATH: pip install -e '.[bench]'")

    def run(n: int) -> Burst:
        cmd = [tool, f"--module={vmfb}", "--device=local-sync", "--function=main",
               *(f"--input=@{p}" for p in inputs), "--benchmark_min_time=1x", f"--benchmark_repetitions={n}",
               "--benchmark_format=json"]
        data = json.loads(_run(cmd, "iree-benchmark-module"))
        unit = {"ns": 1.0, "us": 1e3, "ms": 1e6, "s": 1e9}
        samples = [int(round(b["real_time"] * unit[b["time_unit"]])) for b in data["benchmarks"]
                   if b.get("run_type") == "iteration"]
        return burst_from_samples(samples)

    return run


def et_runner(binary: Path, pte: Path, input_dir: Path) -> Callable[[int], Burst]:
    def run(n: int) -> Burst:
        out = _last_json(_run([str(binary), str(pte), str(input_dir), "--steps", str(n)], "et_runner"))
        return burst_from_samples(out["samples_ns"])

    return run


def python_runner(call: Callable[[], Any]) -> Callable[[int], Burst]:
    """A burst of ``n`` calls timed one by one in this process (the ORT peer)."""

    def run(n: int) -> Burst:
        clock, samples = time.perf_counter_ns, []
        for _ in range(3):
            call()
        for _ in range(n):
            t0 = clock()
            call()
            samples.append(clock() - t0)
        return burst_from_samples(samples)

    return run


def floor_runner(binary: Path) -> Callable[[int], Burst]:
    def run(n: int) -> Burst:
        out = _last_json(_run([str(binary), "gemv", str(FLOOR_SHAPE[0]), str(FLOOR_SHAPE[1]), str(n)], "gemv_floor"))
        return burst_from_samples(out["samples_ns"])

    return run


def time_entries(entries: list[Entry], rounds: int, round_ms: float, seed: int, say: Callable[[str], None]
                 ) -> list[dict[str, Any]]:
    """Calibrate each entry's burst size, then ``rounds`` rounds in fresh random orders; returns per-round loads."""
    rng = random.Random(seed)
    for e in entries:  # calibration (also a warm-up of caches and page cache)
        b = e.run(MIN_STEPS)
        e.steps = max(MIN_STEPS, int(round_ms * 1e3 / max(b.p50_us, 0.05)))
    log = []
    for r in range(rounds):
        order = entries[:]
        rng.shuffle(order)
        t0, load = time.perf_counter(), os.getloadavg()[0]
        for e in order:
            b = e.run(e.steps)
            b.load1 = round(os.getloadavg()[0], 2)
            e.bursts.append(b)
        log.append({"round": r, "load1_start": round(load, 2), "seconds": round(time.perf_counter() - t0, 2),
                    "order": [e.key for e in order]})
        say(f"round {r + 1}/{rounds}: {log[-1]['seconds']:.1f} s, load {load:.2f}")
    return log


def summarise(e: Entry) -> dict[str, Any]:
    p50 = np.asarray([b.p50_us for b in e.bursts])
    p99 = np.asarray([b.p99_us for b in e.bursts])
    out: dict[str, Any] = {
        "p50_us": round(float(np.median(p50)), 2), "p99_us": round(float(np.median(p99)), 2),
        "p50_iqr_us": [round(float(np.percentile(p50, 25)), 2), round(float(np.percentile(p50, 75)), 2)],
        "p50_min_us": round(float(p50.min()), 2), "p99_max_us": round(float(p99.max()), 2),
        "bursts": len(e.bursts), "steps_per_burst": e.steps, "steps": int(sum(b.n for b in e.bursts)),
    }
    if all(b.samples_ns is not None for b in e.bursts) and e.bursts:
        pooled = np.concatenate([np.asarray(b.samples_ns, dtype=np.float64) for b in e.bursts]) / 1e3
        out["pooled_p50_us"] = round(float(np.percentile(pooled, 50)), 2)
        out["pooled_p99_us"] = round(float(np.percentile(pooled, 99)), 2)
    rss = [b.peak_rss_kb for b in e.bursts if b.peak_rss_kb is not None]
    if rss:
        out["peak_rss_kb_median"] = int(np.median(rss))
    return out


# ---------------------------------------------------------------------------------------- builds

def static_supported() -> bool:
    """Whether this checkout's compiler has the static executor (``compile_checkpoint(..., executor=)``)."""
    from ssmc.compile.build import compile_checkpoint

    return "executor" in inspect.signature(compile_checkpoint).parameters


def build_ssmc(checkpoint: Path, precision: str, executor: str, out: Path, say: Callable[[str], None],
               target: str = "host") -> dict[str, Any]:
    from ssmc.compile.build import compile_checkpoint

    t0 = time.perf_counter()
    kwargs = {"executor": executor} if static_supported() else {}
    if executor != "vm" and not kwargs:
        raise RuntimeError("this checkout's compile_checkpoint has no executor= (no static executor yet)")
    compile_checkpoint(checkpoint, target, precision, mode="recurrent", out=out, overwrite=True,
                       progress=lambda m: None, **kwargs)
    seconds = round(time.perf_counter() - t0, 1)
    say(f"  ssmc {executor} {precision} for {target}: {seconds} s")
    return {"compile_s": seconds, "artifact": str(out), "target": target}


def check_ssmc(artifact: Path, fn: Any) -> float:
    """Max relative error of the C runtime's actions against ``fn`` (the PyTorch step of the artifact's
    precision: int8 against PyTorch on the same int8 weights), both stepped from a zero state over the
    observations and return-to-go of the artifact's recorded reference steps."""
    import torch

    from ssmc.artifact import load_manifest, read_reference
    from ssmc.numerics import max_rel_error
    from ssmc.runtime import Policy

    manifest = load_manifest(artifact)
    if manifest.reference is None:
        raise RuntimeError(f"{artifact}: no reference steps to take inputs from")
    steps = read_reference(artifact / manifest.reference, manifest)
    rtg = [float(s.inputs["rtg_raw"][0, 0]) for s in steps]
    with Policy(artifact) as policy:
        policy.reset(rtg[0])
        got = [policy.act(s.inputs["obs_raw"][0], rtg[i - 1] - rtg[i] if i else 0.0) for i, s in enumerate(steps)]
    init = fn.model.init_state(1)
    state, want = [init[n] for n in fn.state_names], []
    with torch.inference_mode():
        for s in steps:
            outs = fn(torch.from_numpy(s.inputs["obs_raw"]), torch.from_numpy(s.inputs["rtg_raw"]), *state)
            want.append(outs[0].numpy()[0].copy())
            state = list(outs[1:])
    return float(max_rel_error([np.asarray(got)], [np.asarray(want)]))


def save_inputs(args: list[np.ndarray], directory: Path) -> tuple[list[Path], Path]:
    """The timed inputs as .npy (IREE) and raw float32 in<i>.bin (ExecuTorch's runner)."""
    directory.mkdir(parents=True, exist_ok=True)
    npys = []
    for i, a in enumerate(args):
        p = directory / f"in{i}.npy"
        np.save(p, np.ascontiguousarray(a))
        np.ascontiguousarray(a, dtype=np.float32).tofile(directory / f"in{i}.bin")
        npys.append(p)
    return npys, directory


def build_iree(fn: Any, args_t: list[Any], workdir: Path) -> tuple[Path, dict[str, Any]]:
    """``aot.export`` the StepFunction, ``iree-compile`` it for llvm-cpu; the .vmfb and build info."""
    import iree.compiler as ic
    import iree.turbine.aot as aot
    import torch

    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        exported = aot.export(fn, args=tuple(args_t))
        mlir = workdir / "step.mlir"
        exported.save_mlir(str(mlir))
    t1 = time.perf_counter()
    vmfb = workdir / "step.vmfb"
    ic.compile_file(str(mlir), output_file=str(vmfb), extra_args=list(IREE_FLAGS))
    return vmfb, {"export_s": round(t1 - t0, 1), "compile_s": round(time.perf_counter() - t1, 1),
                  "vmfb_bytes": vmfb.stat().st_size, "flags": list(IREE_FLAGS)}


def run_iree_once(vmfb: Path, inputs: list[Path], n_out: int, workdir: Path) -> list[np.ndarray]:
    tool = shutil.which("iree-run-module")
    if tool is None:
        raise RuntimeError("iree-run-module is not on PATH")
    outs = [workdir / f"out{i}.npy" for i in range(n_out)]
    _run([tool, f"--module={vmfb}", "--device=local-sync", "--function=main",
          *(f"--input=@{p}" for p in inputs), *(f"--output=@{p}" for p in outs)], "iree-run-module")
    return [np.load(p) for p in outs]


def executorch_paths(python: Path) -> dict[str, Path]:
    """The executorch package's include/ and lib/ in its environment (found without importing it)."""
    code = ("import importlib.util, os; s = importlib.util.find_spec('executorch'); "
            "print(os.path.dirname(s.origin) if s and s.origin else list(s.submodule_search_locations)[0])")
    pkg = Path(_run([str(python), "-c", code], "locating executorch").strip())
    return {"package": pkg, "include": pkg / "include", "lib": pkg / "lib"}


def build_et_runner(python: Path, out: Path) -> tuple[Path, str]:
    """Compile tools/bench/et_runner.cpp against the wheel's headers and shared libraries."""
    et = executorch_paths(python)
    inc, lib = et["include"], et["lib"]
    binary = out / "et_runner"
    cmd = ["g++", "-std=c++17", "-O2", "-Wno-deprecated-declarations", "-DC10_USING_CUSTOM_GENERATED_MACROS",
           "-DET_EVENT_TRACER_ENABLED", f"-I{inc}", f"-I{inc / 'executorch/runtime/core/portable_type/c10'}",
           "-o", str(binary), str(HERE / "et_runner.cpp"), f"-L{lib}", "-Wl,--push-state,--no-as-needed",
           "-lexecutorch_backend_xnnpack", "-lexecutorch_kernels_optimized", "-Wl,--pop-state",
           "-lexecutorch_threadpool", "-lexecutorch", f"-Wl,-rpath,{lib}"]
    _run(cmd, "building et_runner")
    version = _run([str(python), "-c", "from importlib.metadata import version; print(version('executorch'))"],
                   "executorch version").strip()
    return binary, version


def build_gemv_floor(out: Path) -> dict[str, Path]:
    binaries = {}
    for name, march in (("x86-64-v3", "x86-64-v3"), ("native", "native")):
        if platform.machine() not in ("x86_64", "AMD64") and name == "x86-64-v3":
            continue
        b = out / f"gemv_floor-{name}"
        _run(["gcc", "-O3", f"-march={march}", "-o", str(b), str(HERE / "gemv_floor.c")], "building gemv_floor")
        binaries[name] = b
    return binaries


BLAS_CODE = r"""
import json, time, numpy as np, torch
torch.set_num_threads(1)
out = {}
for (m, k, n, reps) in [(1, 256, 256, 5000), (256, 256, 256, 100), (512, 512, 512, 20)]:
    a = np.random.rand(m, k).astype(np.float32); b = np.random.rand(k, n).astype(np.float32)
    c = np.empty((m, n), np.float32)
    ta, tb, tc = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c)
    for name, f in (("numpy", lambda: np.matmul(a, b, out=c)), ("torch", lambda: torch.mm(ta, tb, out=tc))):
        for _ in range(10):
            f()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter_ns(); f(); ts.append(time.perf_counter_ns() - t0)
        out[f"{name} {m}x{k}@{k}x{n}"] = m * k * n / float(np.median(ts))
cfg = {}
try:
    import threadpoolctl
    cfg = [{k: i.get(k) for k in ("internal_api", "architecture", "num_threads", "version")}
           for i in threadpoolctl.threadpool_info()]
except ImportError:
    pass
print(json.dumps({"gmacs": out, "blas": cfg}))
"""


def measure_blas() -> dict[str, Any]:
    """numpy's and torch's GEMV/GEMM rates at one thread (a subprocess: OPENBLAS_CORETYPE/L2_SIZE unset, as
    /work's notes ask for a fair numpy; GMAC/s at the median call, Python call included)."""
    env = {k: v for k, v in native_env().items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    return _last_json(_run([sys.executable, "-c", BLAS_CODE], "numpy/torch GEMM", env=env))


# ------------------------------------------------------------------------------------ footprint

def loaded_objects(bundle: Any, artifact: Path) -> list[str]:
    """Every shared object the C loop initialises for ``artifact`` (dynamic loader's own trace)."""
    env = {**native_env(), "LD_DEBUG": "libs"}
    proc = subprocess.run(bundle.command(str(artifact), "--steps", "1", "--rate", "1e9"), capture_output=True,
                          text=True, env=env, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"ssmc_control {artifact} failed under LD_DEBUG: {proc.stderr.strip()[-500:]}")
    paths = []
    for line in proc.stderr.splitlines():
        m = re.search(r"calling init: (\S+)", line)
        if m and m.group(1) not in paths:
            paths.append(m.group(1))
    return paths


def footprint(bundle: Any, artifact: Path) -> dict[str, Any]:
    from ssmc.artifact import load_manifest

    manifest = load_manifest(artifact)
    files = {p.name: p.stat().st_size for p in sorted(artifact.iterdir()) if p.is_file()}
    needed = {n: b for n, b in files.items() if n != manifest.reference}
    bundle_dir, art_dir = Path(bundle.library).resolve().parent, artifact.resolve()
    runtime, system, other = {}, {}, {}
    for p in loaded_objects(bundle, artifact):
        rp = Path(p).resolve()
        size = rp.stat().st_size if rp.exists() else 0
        if rp.is_relative_to(art_dir):
            continue  # the artifact's library, counted with the artifact's files
        if rp.is_relative_to(bundle_dir):
            runtime[rp.name] = size
        elif str(rp).startswith(("/lib", "/usr/lib", "/lib64", "/usr/lib64")):
            system[str(rp)] = size
        else:
            other[str(rp)] = size
    control = Path(bundle.control).resolve()
    runtime[control.name] = control.stat().st_size
    one = _last_json(_run(bundle.command(str(artifact), "--steps", "1000", "--rate", "1e9"), "ssmc_control"))
    allocs = _last_json(_run([sys.executable, str(HERE / "allocs_per_step.py"), str(artifact), "--steps", "100"],
                             "allocs_per_step"))
    target_bytes = sum(needed.values()) + sum(runtime.values()) + sum(other.values())
    return {
        "artifact_files": files, "reference_file": manifest.reference, "artifact_bytes_to_run": sum(needed.values()),
        "runtime_files": runtime, "other_loaded": other, "system_libraries": system,
        "target_bytes": target_bytes, "system_bytes": sum(system.values()),
        "peak_rss_kb": one.get("peak_rss_kb"), "rss_after_open_kb": one.get("rss_after_open_kb"),
        "rss_anon_kb": one.get("rss_anon_kb"), "rss_file_kb": one.get("rss_file_kb"),
        "allocations_per_step": allocs["per_step"], "allocations": allocs["allocations"],
    }


def _size_totals(objects: list[Path]) -> dict[str, int]:
    """text (code and read-only data), data and bss bytes of ``objects``, summed (binutils ``size``)."""
    out = subprocess.run(["size", "-t", *map(str, objects)], capture_output=True, text=True, check=True).stdout
    text, data, bss = (int(x) for x in out.strip().splitlines()[-1].split()[:3])
    return {"text": text, "data": data, "bss": bss}


def firmware_footprint(checkpoint: Path, precision: str, work: Path, steps: int = 1000) -> dict[str, Any]:
    """The ``ssmc compile --emit c`` bundle of the recurrent step as firmware would carry it: the step's objects
    (kernels, call sequence, weights) built by the bundle's Makefile with the host ``cc -O2 -march=x86-64-v3``
    (host's ISA), their bytes,
    and the bundle's demo driver linked ``-static`` (libc and libm inside, no loader, no shared library) with its
    peak RSS over ``steps`` steps: the memory a board pays for one policy without the runtime's dynamic
    loading, manifest checks and libraries. VmHWM is read from /proc while the demo waits for its last input."""
    from ssmc.compile.build import emit_c_source

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or shutil.which("make") is None:
        raise RuntimeError("the --emit c bundle builds with make and a host C compiler (cc)")
    dest = emit_c_source(checkpoint, "host", precision, mode="recurrent", out=work / f"{checkpoint.name}-{precision}-c",
                         overwrite=True)
    flags = "-O2 -march=x86-64-v3"
    # the bundle's own Makefile builds the step's objects and libssmc_step.a, as a firmware build would
    subprocess.run(["make", "-C", str(dest), f"CC={cc}", f"CFLAGS={flags}", "libssmc_step.a"], check=True,
                   capture_output=True)
    objects = [dest / name for name in ("ssmc_step.o", "ssmc_weights.o", "kernels.o")]
    demo = dest / "demo_static"
    subprocess.run([cc, "-std=c99", *flags.split(), "-static", "-o", str(demo), str(dest / "demo.c"),
                    str(dest / "libssmc_step.a"), "-lm"], check=True, capture_output=True)
    text = (dest / "demo.c").read_text()
    n_raw = int(re.search(r"#define SSMC_DEMO_N_RAW (\d+)", text).group(1))
    in_bytes = [int(x) for x in re.search(r"#define SSMC_DEMO_IN_BYTES ([\d, ]+)", text).group(1).split(",")]
    record = sum(in_bytes[:n_raw])
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((steps, record // 4)).astype(np.float32).tobytes()
    proc = subprocess.Popen([str(demo), str(steps)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    status = Path(f"/proc/{proc.pid}/status")
    try:
        proc.stdin.write(inputs[:-record])
        proc.stdin.flush()
        kb: dict[str, int] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait until it has read every record but the last one
            io = Path(f"/proc/{proc.pid}/io").read_text() if Path(f"/proc/{proc.pid}/io").exists() else ""
            m = re.search(r"rchar: (\d+)", io)
            if m and int(m.group(1)) >= len(inputs) - record:
                break
            time.sleep(0.01)
        time.sleep(0.05)
        for line in status.read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmHWM", "RssAnon", "RssFile"):
                kb[name] = int(value.split()[0])
        proc.stdin.write(inputs[-record:])
        proc.stdin.close()
    finally:
        rc = proc.wait(timeout=120)
    if rc != 0:
        raise RuntimeError(f"{demo} failed: {proc.stderr.read().decode(errors='replace').strip()[-300:]}")
    sizes = _size_totals(objects)
    return {"bundle": str(dest), "cflags": f"-std=c99 {flags}", "step_objects": sizes,
            "step_bytes": sizes["text"] + sizes["data"], "step_bss": sizes["bss"],
            "arena_bytes": int(re.search(r"#define SSMC_STEP_ARENA_BYTES (\d+)", (dest / "ssmc_step.h").read_text())
                               .group(1)),
            "demo_static_bytes": demo.stat().st_size, "demo_static_text": _size_totals([demo])["text"],
            "demo_steps": steps, "demo_peak_rss_kb": kb.get("VmHWM"), "demo_rss_anon_kb": kb.get("RssAnon"),
            "demo_rss_file_kb": kb.get("RssFile")}


# ------------------------------------------------------------------------------------- breakdown

def _macs(name: str, shapes: list[tuple[int, ...]]) -> int | None:
    """MACs of one call of a matmul kernel from its argument shapes (inputs..., output last): the largest
    rows(x) x K x N over pairs of distinct inputs x (..., K) and w (K, N). None for other kernels."""
    if "matmul" not in name or len(shapes) < 3:
        return None
    ins, best = shapes[:-1], 0
    for i, x in enumerate(ins):
        for j, w in enumerate(ins):
            if i != j and len(w) == 2 and x and x[-1] == w[0]:
                best = max(best, int(np.prod(x[:-1], dtype=np.int64)) * w[0] * w[1])
    return best or None


def kernel_breakdown(artifact: Path, args: list[np.ndarray], gemv_gmacs: float) -> dict[str, Any]:
    """Each kernel call of one VM step, timed alone with ``time_evaluator`` on that call's own arguments.

    The static library runs the same scheduled kernels (compile/static.py), so the rows also say where a
    static step's time goes; step time minus the kernels' sum is the executor's own cost (VM interpreter
    and allocations, or the static glue)."""
    import tvm
    from tvm import relax

    from ssmc.artifact import load_manifest

    manifest = load_manifest(artifact)
    lib = tvm.runtime.load_module(str(artifact / manifest.library))
    vm = relax.VirtualMachine(lib, tvm.cpu())
    calls: list[tuple[str, list[Any]]] = []

    def instrument(func: Any, symbol: str, before: bool, ret: Any, *fargs: Any) -> int:
        if before and not symbol.startswith("vm.builtin") and fargs:
            calls.append((symbol, [tvm.runtime.tensor(a.numpy()) for a in fargs if hasattr(a, "numpy")]))
        return 0

    tensors = [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in args]
    vm["main"](*tensors)
    vm.set_instrument(instrument)
    vm["main"](*tensors)
    rows: dict[str, dict[str, Any]] = {}
    dev = tvm.cpu()
    kernels = lib.imports[0] if lib.imports else lib  # the executable's kernel library
    for symbol, targs in calls:
        try:
            res = kernels.time_evaluator(symbol, dev, number=50, repeat=5)(*targs)
        except Exception:  # noqa: BLE001 - not a kernel of this library (a packed builtin)
            continue
        us = float(np.median(res.results)) * 1e6
        shapes = [tuple(int(d) for d in t.shape) for t in targs]
        row = rows.setdefault(symbol, {"kernel": symbol, "calls": 0, "us": 0.0, "macs": 0, "matmul": False})
        row["calls"] += 1
        row["us"] += us
        macs = _macs(symbol, shapes)
        if macs is not None:
            row["macs"] += macs
            row["matmul"] = True
    out = sorted(rows.values(), key=lambda r: -r["us"])
    for r in out:
        r["us"] = round(r["us"], 2)
        r["floor_us"] = round(r["macs"] / (gemv_gmacs * 1e3), 2) if r["macs"] else None
        r["gmacs"] = round(r["macs"] / (r["us"] * 1e3), 2) if r["macs"] and r["us"] else None
    matmul_us = sum(r["us"] for r in out if r["matmul"])
    return {"kernels": out, "kernel_calls": sum(r["calls"] for r in out), "distinct_kernels": len(out),
            "sum_us": round(sum(r["us"] for r in out), 2), "matmul_us": round(matmul_us, 2),
            "matmul_macs": int(sum(r["macs"] for r in out)),
            "matmul_floor_us": round(sum(r["macs"] for r in out) / (gemv_gmacs * 1e3), 2),
            "other_us": round(sum(r["us"] for r in out if not r["matmul"]), 2),
            "vm_calls_recorded": len(calls)}


def static_breakdown(kind: str, zoo: Path, precision: str, work: Path, gemv_gmacs: float,
                     target: str = "host") -> dict[str, Any]:
    """The static step's own per-kernel timing: tools/bench/static_kernels.py's ``profile_model`` (the glue
    built with ``-DSSMC_PROFILE`` reads CLOCK_MONOTONIC around every kernel call), with this run's floor."""
    import static_kernels

    d = work / f"profile-{kind}-{precision}-{target}"
    d.mkdir(parents=True, exist_ok=True)
    m = static_kernels.profile_model(kind, zoo, precision, 2000, d, target)
    for r in m["kernels"]:
        r["kind"] = r.get("kind") or static_kernels.kind_of(r["kernel"])
    m["floor_us"] = round(m["macs_per_step"] / (gemv_gmacs * 1e3), 2)
    return m


# ------------------------------------------------------------------------------------- one model

def build_model_entries(kind: str, precisions: list[str], peers: list[str], zoo: Path, work: Path, bundle: Any,
                        et: dict[str, Any] | None, say: Callable[[str], None]) -> tuple[dict[str, Any], list[Entry]]:
    """Build, check and wrap every peer of ``kind``; the model's row (without timing) and its entries."""
    import torch

    from ssmc.compile.export import export_step
    from ssmc.compile.quantize import quantize_int8
    from ssmc.numerics import max_rel_error
    from ssmc.train.models import save_checkpoint

    model, extra, source = sl.load_model(kind, zoo)
    ckpt = zoo / kind
    if not (ckpt / "config.json").is_file():  # a fresh model: compile_checkpoint and et_export need a directory
        ckpt = save_checkpoint(model, work / f"{kind}-checkpoint", extra)
    rec = model.with_semantics("recurrent").eval()
    say(f"{kind}: {source}; recurrent step, {rec.num_params():,} params, {rec.macs_per_step():,} MACs/step")
    row: dict[str, Any] = {"model": kind, "source": source, "checkpoint": str(ckpt), "params": rec.num_params(),
                           "macs_per_step": rec.macs_per_step(), "build": {}, "max_rel_error_vs_pytorch": {},
                           "artifacts": {}}
    entries: list[Entry] = []
    fp32 = export_step(model, extra, "recurrent")
    inputs, state = sl._state_after(fp32.reference, 10, np.random.default_rng(0))
    args_t = [*inputs, *state]
    args = [a.numpy() for a in args_t]
    row["state_bytes"] = int(sum(a.nbytes for a in args[2:]))
    npys, input_dir = save_inputs(args, work / f"{kind}-inputs")
    row["inputs"] = str(input_dir)
    for precision in precisions:
        exported = fp32 if precision == "fp32" else export_step(model, extra, "recurrent", quantize=quantize_int8)
        fn = exported.function
        with torch.inference_mode():
            want = [o.numpy().copy() for o in fn(*args_t)]
        tag = f"{kind}/{precision}"

        def record(peer: str, err: float, tag: str = tag, precision: str = precision) -> None:
            row["max_rel_error_vs_pytorch"][f"{precision}/{peer}"] = err
            if not err <= TOLERANCE:
                raise RuntimeError(f"{tag}/{peer} disagrees with PyTorch: max relative error {err:.2e}")

        for peer, (executor, target) in SSMC_PEERS.items():
            if peer not in peers:
                continue
            art = work / f"{kind}-{precision}-{peer}.ssmc"
            say(f"{tag}: compiling ssmc {executor} for {target}")
            row["build"][f"{precision}/{peer}"] = build_ssmc(ckpt, precision, executor, art, say, target)
            record(peer, check_ssmc(art, fn))
            row["artifacts"][f"{precision}/{peer}"] = str(art)
            entries.append(Entry(kind, precision, peer, ssmc_runner(bundle, art)))
        if "iree" in peers:
            say(f"{tag}: IREE export + compile")
            vmfb, info = build_iree(fn, args_t, work / f"{kind}-{precision}-iree")
            row["build"][f"{precision}/iree"] = info
            record("iree", float(max_rel_error(run_iree_once(vmfb, npys, len(want), vmfb.parent), want)))
            entries.append(Entry(kind, precision, "iree", iree_runner(vmfb, npys)))
        if "ort" in peers:
            say(f"{tag}: ONNX Runtime export")
            d = work / f"{kind}-{precision}-ort"
            d.mkdir(parents=True, exist_ok=True)
            peer, info = sl.ort_peer(fn, args_t, d)
            row["build"][f"{precision}/ort"] = info
            record("ort", float(max_rel_error(peer.outputs(), want)))
            entries.append(Entry(kind, precision, "ort", python_runner(peer.call), keep=peer))
        if "executorch" in peers and et is not None:
            say(f"{tag}: ExecuTorch export (XNNPACK)")
            pte = work / f"{kind}-{precision}.pte"
            info = _last_json(_run([str(et["python"]), str(HERE / "et_export.py"), str(ckpt), precision, str(pte)],
                                   "et_export", timeout=1200))
            row["build"][f"{precision}/executorch"] = info
            dump = work / f"{kind}-{precision}-et-out"
            dump.mkdir(exist_ok=True)
            _run([str(et["runner"]), str(pte), str(input_dir), "--steps", "3", "--dump", str(dump)],
                 "et_runner")
            got = [np.fromfile(dump / f"out{i}.bin", dtype=np.float32).reshape(w.shape) for i, w in enumerate(want)]
            record("executorch", float(max_rel_error(got, want)))
            entries.append(Entry(kind, precision, "executorch", et_runner(et["runner"], pte, input_dir)))
    return row, entries


# ------------------------------------------------------------------------------------------ report

def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cpu": "", "logical_cpus": os.cpu_count(), "python": platform.python_version()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name"))
        flags = next(line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags"))
        info["isa"] = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags]
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    for dist in ("torch", "apache-tvm", "onnxruntime", "iree-base-compiler", "iree-base-runtime", "iree-turbine"):
        try:
            from importlib.metadata import version

            info[dist] = version(dist)
        except Exception:  # noqa: BLE001 - not installed
            info[dist] = None
    info["gcc"] = subprocess.run(["gcc", "-dumpfullversion"], capture_output=True, text=True).stdout.strip()
    return info


def git_state() -> dict[str, Any]:
    """The checkout the run measured: HEAD and whether compile/, runtime/ or tools/bench/ had local changes."""
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], capture_output=True, text=True, cwd=ROOT).stdout.strip()

    return {"head": git("rev-parse", "--short", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--", "compile", "runtime", "tools/bench"))}


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def analyse(result: dict[str, Any]) -> None:
    """Ratios, floors and goals into ``result`` (in place)."""
    floor = result["floor"]
    gemv, gemm = floor["gemv_gmacs_best"], floor["gemm_gmacs_best"]
    for row in result["rows"]:
        row["floor_us"] = {"gemv": round(row["macs_per_step"] / (gemv * 1e3), 2),
                           "gemm": round(row["macs_per_step"] / (gemm * 1e3), 2)}
        row["ratios_p50"], row["goals"] = {}, {}
        for precision, lat in row["latency"].items():
            s = lat.get("static", {}).get("p50_us")
            r = {f"{p} / static": _ratio(lat[p]["p50_us"], s) for p in PEERS if p != "static" and p in lat}
            r["static / floor(gemv)"] = _ratio(s, row["floor_us"]["gemv"])
            r["static / floor(gemm)"] = _ratio(s, row["floor_us"]["gemm"])
            v = lat.get("vm", {}).get("p50_us")
            r["vm / floor(gemv)"] = _ratio(v, row["floor_us"]["gemv"])
            a = lat.get("static-avx512", {}).get("p50_us")
            if a is not None:  # the same ratios for the AVX-512 build
                r.update({f"{p} / static-avx512": _ratio(lat[p]["p50_us"], a) for p in ("iree", "ort", "executorch")
                          if p in lat})
                r["static-avx512 / floor(gemv)"] = _ratio(a, row["floor_us"]["gemv"])
            row["ratios_p50"][precision] = r
            g = GOALS.get(row["model"], {})
            goals = {}
            for sp in STATIC_PEERS:
                sv = lat.get(sp, {}).get("p50_us")
                if sv is None:
                    continue
                if "static_us" in g:
                    goals[f"{sp} p50 <= {g['static_us']:g} us"] = sv <= g["static_us"]
                for peer, key in (("iree", "iree_ratio"), ("ort", "ort_ratio")):
                    if key in g and r.get(f"{peer} / {sp}") is not None:
                        goals[f"{sp} >= {g[key]:g}x faster than {peer.upper()}"] = r[f"{peer} / {sp}"] >= g[key]
            row["goals"][precision] = goals


def _short(name: str, width: int = 64) -> str:
    """A fused kernel's name cut to ``width`` characters (TVM names a fusion after all its ops)."""
    return name if len(name) <= width else name[: width - 1] + "…"


def _cost(step: float | None, kernels: float | None) -> str:
    """Step minus its kernels; '≈ 0' when the kernels, profiled apart, add up to more than the step."""
    if not step or not kernels:
        return "—"
    return f"{step - kernels:,.1f}" if step > kernels else f"≈ 0 (kernels {kernels - step:.1f} over)"


def _fmt(v: float | None, unit: str = "") -> str:
    return "—" if v is None else f"{v:,.1f}{unit}"


def markdown(result: dict[str, Any]) -> str:
    m, floor = result["machine"], result["floor"]
    peers = [p for p in PEERS if any(p in lat for r in result["rows"] for lat in r["latency"].values())]
    loads = [x["load1_start"] for x in result["round_log"]]
    out = [f"Generated by `{result['command']}` on {result['date']} ({m['cpu']}, {m['logical_cpus']} logical CPUs, "
           f"shared; ISA {', '.join(m.get('isa', []))}; 1 thread everywhere; torch {m['torch']}, TVM {m['apache-tvm']}, "
           f"IREE {m['iree-base-compiler']}, ONNX Runtime {m['onnxruntime']}, ExecuTorch {result.get('executorch_version')}, "
           f"gcc {m['gcc']}). {result['rounds']} interleaved rounds of ~{result['round_ms']:g} ms per entry; "
           f"load average (1 min) {min(loads):.2f}–{max(loads):.2f} over the rounds "
           f"(start {result['loadavg_start'][0]:.2f}, end {result['loadavg_end'][0]:.2f}); "
           f"timing took {result['timing_s']:.0f} s, the whole run {result['wall_s']:.0f} s.", ""]
    if result.get("skipped"):
        out += ["Not run: " + "; ".join(f"`{k}` ({v})" for k, v in result["skipped"].items()) + ".", ""]
    out += ["**Per-step latency, µs: p50 (p99)** — median over rounds of each burst's p50 (p99)", ""]
    out.append("| model | precision | " + " | ".join(f"`{p}`" for p in peers) + " | floor GEMV / GEMM |")
    out.append("|---|---|" + "---|" * len(peers) + "---|")
    for r in result["rows"]:
        for precision, lat in r["latency"].items():
            cells = [f"{lat[p]['p50_us']:,.1f} ({lat[p]['p99_us']:,.0f})" if p in lat else "—" for p in peers]
            out.append(f"| {r['model']} | {precision} | " + " | ".join(cells)
                       + f" | {r['floor_us']['gemv']:.1f} / {r['floor_us']['gemm']:.1f} |")
    out += ["", "**Ratios at p50** (peer ÷ static: how many times faster the static step is; static ÷ floor: how far "
            "above the compute floor it is)", ""]
    keys = [f"{p} / static" for p in peers if p != "static"] + ["static / floor(gemv)", "static / floor(gemm)",
                                                                 "vm / floor(gemv)"]
    if "static-avx512" in peers:
        keys += [f"{p} / static-avx512" for p in ("iree", "ort", "executorch") if p in peers]
        keys.append("static-avx512 / floor(gemv)")
    out.append("| model | precision | " + " | ".join(keys) + " | goals |")
    out.append("|---|---|" + "---|" * len(keys) + "---|")
    for r in result["rows"]:
        for precision, ratios in r["ratios_p50"].items():
            goals = r["goals"].get(precision, {})
            gtxt = "; ".join(f"{k}: {'met' if v else '**missed**'}" for k, v in goals.items()) or "—"
            out.append(f"| {r['model']} | {precision} | " + " | ".join(
                f"{ratios[k]:.2f}×" if ratios.get(k) is not None else "—" for k in keys) + f" | {gtxt} |")
    out += ["", f"**Compute floor** (same run): MACs per step ÷ this core's best single-thread rate. GEMV "
            f"1×{FLOOR_SHAPE[0]} @ {FLOOR_SHAPE[0]}×{FLOOR_SHAPE[1]} fp32 (W in L2): "
            + ", ".join(f"{k} {v:.1f}" for k, v in floor["gemv_gmacs"].items())
            + f" GMAC/s → best **{floor['gemv_gmacs_best']:.1f} GMAC/s**; GEMM peak: "
            + ", ".join(f"{k} {v:.1f}" for k, v in floor["gemm_gmacs"].items())
            + f" GMAC/s → best **{floor['gemm_gmacs_best']:.1f} GMAC/s**.", ""]
    out.append("| model | params | MACs / step | state bytes | floor at GEMV rate | floor at GEMM peak |")
    out.append("|---|---|---|---|---|---|")
    for r in result["rows"]:
        out.append(f"| {r['model']} | {r['params']:,} | {r['macs_per_step']:,} | {r['state_bytes']:,} | "
                   f"{r['floor_us']['gemv']:.1f} µs | {r['floor_us']['gemm']:.1f} µs |")
    if result.get("footprint"):
        out += ["", "**Footprint** (measured: files the target needs to run the artifact — the artifact without its "
                "`reference.safetensors`, libssmc.so and what it loads from the bundle, ssmc_control — peak RSS "
                "of the C loop over 1,000 steps (VmHWM), heap allocations per step after open "
                "(tools/bench/allocs_per_step.py))", ""]
        out.append("| artifact | artifact bytes (to run) | runtime files | target bytes | system libraries loaded | "
                   "peak RSS | of it at the end: own (anon) / mapped files | allocs / step |")
        out.append("|---|---|---|---|---|---|---|---|")
        for key, f in result["footprint"].items():
            rt = ", ".join(f"{n} {b:,}" for n, b in f["runtime_files"].items())
            sysl = ", ".join(Path(p).name for p in f["system_libraries"]) + f" ({f['system_bytes']:,} B)"
            split = (f"{f['rss_anon_kb']:,} / {f['rss_file_kb']:,} KiB" if f.get("rss_anon_kb") is not None else "–")
            out.append(f"| {key} | {f['artifact_bytes_to_run']:,} | {rt} | **{f['target_bytes']:,}** | {sysl} | "
                       f"{f['peak_rss_kb']:,} KiB | {split} | {f['allocations_per_step']:.1f} |")
    if result.get("firmware"):
        out += ["", "**Footprint as firmware** (`ssmc compile --emit c`: the recurrent step as C99 sources; its three "
                "objects built with the host `cc " + next(iter(result["firmware"].values()))["cflags"] + "`, bytes "
                "from binutils `size`; the bundle's demo driver linked `-static` with them — libc and libm inside, "
                "no dynamic loader, no libssmc — and its peak RSS (VmHWM) over "
                f"{next(iter(result['firmware'].values()))['demo_steps']:,} steps; tools/bench/static_step.py's "
                "`firmware_footprint`)", ""]
        out.append("| step | step code + constants (text) | data / bss | arena (RAM, caller's) | static demo binary "
                   "| demo peak RSS | own (anon) / binary pages |")
        out.append("|---|---|---|---|---|---|---|")
        for key, f in result["firmware"].items():
            o = f["step_objects"]
            out.append(f"| {key} | **{o['text']:,}** | {o['data']:,} / {o['bss']:,} | {f['arena_bytes']:,} | "
                       f"{f['demo_static_bytes']:,} | **{f['demo_peak_rss_kb']:,} KiB** | "
                       f"{f['demo_rss_anon_kb']:,} / {f['demo_rss_file_kb']:,} KiB |")
    sb = {k: v for k, v in (result.get("static_breakdown") or {}).items() if "error" not in v}
    vb = result.get("breakdown") or {}
    if sb or vb:
        out += ["", "**Where the time goes** (per step, µs). *static kernels*: the static step's kernels timed inside its "
                "own call sequence (glue built with `-DSSMC_PROFILE`, tools/bench/static_kernels.py's `profile_model`, "
                "2,000 steps from ctypes; timer reads add ~20-40 ns a call), grouped by what they do; *VM kernels*: "
                "each kernel call of one VM step timed alone with `time_evaluator` on the timed inputs (warm); "
                "step − kernels: the C loop's p50 minus those sums. The VM's is its interpreter and allocations; the "
                "static one compares two processes (the profile steps a zero state from ctypes) and is within the "
                "per-process spread (see the text), so it bounds the glue and runtime checks rather than measuring "
                "them. Floor = MACs per step ÷ the GEMV rate.", ""]
        out.append("| model | precision | static step | static kernels | SSM update | matmuls | other | "
                   "static step − kernels | VM step | VM kernels | VM step − kernels | floor | static kernels ÷ floor |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in result["rows"]:
            for q, lat in r["latency"].items():
                for sp in STATIC_PEERS:
                    key = f"{r['model']}/{q}" + ("" if sp == "static" else f"/{sp}")
                    if sp != "static" and key not in sb:
                        continue
                    s_b, v_b = sb.get(key), vb.get(f"{r['model']}/{q}")
                    s_step, v_step = lat.get(sp, {}).get("p50_us"), lat.get("vm", {}).get("p50_us")
                    g = (s_b or {}).get("groups_us", {})
                    pick = lambda prefix, g=g: next((v for k, v in g.items() if k.startswith(prefix)), None)  # noqa: E731
                    sk = s_b["kernels_us"] if s_b else None
                    vk = v_b["sum_us"] if v_b else None
                    fl = r["floor_us"]["gemv"]
                    label = r["model"] + ("" if sp == "static" else " (avx512)")
                    out.append(f"| {label} | {q} | {_fmt(s_step)} | {_fmt(sk)} | {_fmt(pick('SSM'))} | "
                               f"{_fmt(pick('matmuls'))} | {_fmt(pick('other'))} | "
                               f"{_cost(s_step, sk)} | {_fmt(v_step)} | {_fmt(vk)} | "
                               f"{_cost(v_step, vk)} | {fl:.1f} | "
                               f"{_fmt(sk / fl if sk else None, '×')} |")
        for key, m in sb.items():
            out += ["", f"**Static step kernels, {key}** ({m['kernel_calls_per_step']} kernel calls per step, "
                    f"Σ {m['kernels_us']:.1f} µs; the ten most expensive)", ""]
            out.append("| kernel | kind | calls / step | µs / step | share |")
            out.append("|---|---|---|---|---|")
            for k in m["kernels"][:10]:
                out.append(f"| `{_short(k['kernel'])}` | {k['kind']} | {k['calls_per_step']} | {k['us_per_step']:.2f} | "
                           f"{100 * k['us_per_step'] / m['kernels_us']:.0f} % |")
        for key, b in vb.items():
            if sb:  # the static table says it; the VM's matmul rates only, for the GEMV comparison
                mm = [k for k in b["kernels"] if k["matmul"] and k["macs"] >= 10_000]
                if not mm:
                    continue
                out += ["", f"**Matmul kernels against the GEMV rate, {key}** (VM executable, `time_evaluator`; "
                        f"{b['matmul_macs']:,} matmul MACs per step in {b['matmul_us']:.1f} µs, floor "
                        f"{b['matmul_floor_us']:.1f} µs)", ""]
                out.append("| kernel | calls | µs / step | MACs / step | GMAC/s | floor µs |")
                out.append("|---|---|---|---|---|---|")
                for k in mm:
                    out.append(f"| `{_short(k['kernel'])}` | {k['calls']} | {k['us']:.2f} | {k['macs']:,} | "
                               f"{_fmt(k['gmacs'])} | {_fmt(k['floor_us'])} |")
                continue
            out += ["", f"**Kernel breakdown, {key}** (VM artifact; {b['kernel_calls']} kernel calls of "
                    f"{b['distinct_kernels']} kernels per step: Σ {b['sum_us']:.1f} µs, of which matmuls "
                    f"{b['matmul_us']:.1f} µs for {b['matmul_macs']:,} MACs (floor {b['matmul_floor_us']:.1f} µs at "
                    f"{floor['gemv_gmacs_best']:.1f} GMAC/s) and everything else {b['other_us']:.1f} µs)", ""]
            out.append("| kernel | calls | µs / step | MACs / step | GMAC/s | floor µs |")
            out.append("|---|---|---|---|---|---|")
            for k in b["kernels"][:14]:
                out.append(f"| `{_short(k['kernel'])}` | {k['calls']} | {k['us']:.2f} | "
                           f"{k['macs']:,} | {_fmt(k['gmacs'])} | {_fmt(k['floor_us'])} |" if k["macs"] else
                           f"| `{_short(k['kernel'])}` | {k['calls']} | {k['us']:.2f} | — | — | — |")
            if len(b["kernels"]) > 14:
                rest = b["kernels"][14:]
                out.append(f"| ({len(rest)} more) | {sum(k['calls'] for k in rest)} | "
                           f"{sum(k['us'] for k in rest):.2f} | | | |")
    for key, v in (result.get("static_breakdown") or {}).items():
        if "error" in v:
            out += ["", f"Static breakdown of {key} failed: {v['error']}"]
    out += ["", "**Max relative error against PyTorch** (ssmc: the C runtime against PyTorch, both stepped from "
            "zero over the inputs of the artifact's recorded reference steps; the others on the timed inputs; "
            "int8 against PyTorch on the same int8 weights; bound "
            f"{TOLERANCE:g})", ""]
    out.append("| model | " + " | ".join(f"`{k}`" for k in sorted({k for r in result["rows"]
                                                                     for k in r["max_rel_error_vs_pytorch"]})) + " |")
    keys_err = sorted({k for r in result["rows"] for k in r["max_rel_error_vs_pytorch"]})
    out.append("|---|" + "---|" * len(keys_err))
    for r in result["rows"]:
        out.append(f"| {r['model']} | " + " | ".join(
            f"{r['max_rel_error_vs_pytorch'][k]:.1e}" if k in r["max_rel_error_vs_pytorch"] else "—"
            for k in keys_err) + " |")
    out += ["", "Sources: " + "; ".join(f"{r['model']}: {r['source']}" for r in result["rows"]) + ".", ""]
    return "\n".join(out)


def plot(result: dict[str, Any], path: Path) -> None:
    """p50 per peer, one panel per model, fp32 and int8 side by side; floor lines and the static goal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, axes = plt.subplots(1, len(rows), figsize=(5.2 * len(rows), 4.4), squeeze=False)
    colors = {"fp32": "#4c72b0", "int8": "#dd8452"}
    for ax, r in zip(axes[0], rows, strict=True):
        precisions = list(r["latency"])
        peers = [p for p in PEERS if any(p in r["latency"][q] for q in precisions)]
        width = 0.8 / max(len(precisions), 1)
        top = 0.0
        for j, q in enumerate(precisions):
            xs = [i + (j - (len(precisions) - 1) / 2) * width for i, p in enumerate(peers) if p in r["latency"][q]]
            ys = [r["latency"][q][p]["p50_us"] for p in peers if p in r["latency"][q]]
            lo = [r["latency"][q][p]["p50_us"] - r["latency"][q][p]["p50_iqr_us"][0] for p in peers
                  if p in r["latency"][q]]
            hi = [r["latency"][q][p]["p50_iqr_us"][1] - r["latency"][q][p]["p50_us"] for p in peers
                  if p in r["latency"][q]]
            bars = ax.bar(xs, ys, width, color=colors.get(q), label=q,
                          yerr=[np.maximum(lo, 0), np.maximum(hi, 0)], capsize=2, ecolor="#555")
            for b, y, h in zip(bars, ys, hi, strict=True):
                ax.text(b.get_x() + b.get_width() / 2, (y + max(h, 0)) * 1.06, f"{y:.0f}", ha="center", va="bottom",
                        fontsize=7)
            top = max(top, *ys)
        ax.axhline(r["floor_us"]["gemv"], color="k", lw=1.2, label=f"floor @ GEMV rate ({r['floor_us']['gemv']:.0f} µs)")
        ax.axhline(r["floor_us"]["gemm"], color="k", lw=1, ls=":", label=f"floor @ GEMM peak ({r['floor_us']['gemm']:.0f} µs)")
        goal = GOALS.get(r["model"], {}).get("static_us")
        if goal:
            ax.axhline(goal, color="#c44e52", lw=1, ls="--", label=f"static goal ({goal:.0f} µs)")
        ax.set_yscale("log")
        ax.set_ylim(max(1.0, r["floor_us"]["gemm"] * 0.6), top * 6)  # room above the bars for the legend
        ax.set_xticks(range(len(peers)), [PEER_SHORT[p] for p in peers], fontsize=8)
        ax.set_title(f"{r['model']} recurrent step ({r['macs_per_step'] / 1e3:.0f}k MACs)", fontsize=10)
        ax.set_ylabel("µs per step, p50 (bar: IQR over rounds)")
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", framealpha=0.9)
    fig.suptitle("Host step latency, one thread, interleaved run (lower is better)", fontsize=11)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated zoo names")
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated, of {', '.join(PEERS)}")
    parser.add_argument("--zoo", type=Path, default=Path("runs/zoo"), help="checkpoints as <zoo>/<model>")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--round-ms", type=float, default=150.0, help="time per entry per round")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--executorch-python", type=Path, default=ET_PYTHON,
                        help="Python of the environment that has executorch (see the module docstring)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the builds here (default: a temp dir)")
    parser.add_argument("--no-footprint", action="store_true")
    parser.add_argument("--no-breakdown", action="store_true")
    parser.add_argument("--json", type=Path, default=Path("docs/static-step.json"))
    parser.add_argument("--doc", type=Path, default=Path("docs/static-step.md"))
    parser.add_argument("--png", type=Path, default=Path("docs/static-step.png"))
    parser.add_argument("--no-docs", action="store_true", help="write only --json")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    t_start = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.0f} s] {msg}", file=sys.stderr, flush=True)

    kinds = [k.strip() for k in args.models.split(",") if k.strip()]
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in peers if p not in PEERS] + [p for p in precisions if p not in PRECISIONS]
    if unknown:
        parser.error(f"unknown peer/precision: {', '.join(unknown)}")
    skipped: dict[str, str] = {}
    for sp in STATIC_PEERS:
        if sp in peers and not static_supported():
            skipped[sp] = "this checkout's compiler has no static executor yet"
            peers.remove(sp)
    if "static-avx512" in peers:
        from ssmc.targets import missing_cpu_features

        lacking = missing_cpu_features("host-avx512")
        if lacking:
            skipped["static-avx512"] = f"this CPU lacks {', '.join(lacking)}"
            peers.remove("static-avx512")
    et = None
    if "executorch" in peers:
        if not args.executorch_python.is_file():
            skipped["executorch"] = f"no ExecuTorch environment at {args.executorch_python}"
            peers.remove("executorch")
    argv_list = argv if argv is not None else sys.argv[1:]
    result: dict[str, Any] = {
        "command": "python tools/bench/static_step.py " + " ".join(argv_list),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()], "rounds": args.rounds, "round_ms": args.round_ms,
        "peers": peers, "skipped": skipped, "peer_labels": PEER_LABEL, "git": git_state(),
    }
    from ssmc.runtime import runtime_bundle

    bundle = runtime_bundle(progress=say)
    with tempfile.TemporaryDirectory(prefix="ssmc-static-step-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if "executorch" in peers:
            runner, version = build_et_runner(args.executorch_python, work)
            et = {"python": args.executorch_python, "runner": runner}
            result["executorch_version"] = version
        floors = build_gemv_floor(work)
        say("numpy/torch GEMV and GEMM rates")
        blas_before = measure_blas()
        rows, entries = [], []
        for kind in kinds:
            row, es = build_model_entries(kind, precisions, peers, args.zoo, work, bundle, et, say)
            rows.append(row)
            entries += es
        for name, binary in floors.items():
            entries.append(Entry("floor", "fp32", f"gemv-{name}", floor_runner(binary)))
        result["loadavg_before_timing"] = [round(x, 2) for x in os.getloadavg()]
        say(f"timing {len(entries)} entries, {args.rounds} rounds (load {result['loadavg_before_timing'][0]:.2f})")
        t0 = time.perf_counter()
        result["round_log"] = time_entries(entries, args.rounds, args.round_ms, args.seed, say)
        result["timing_s"] = round(time.perf_counter() - t0, 1)
        result["loadavg_after_timing"] = [round(x, 2) for x in os.getloadavg()]
        blas_after = measure_blas()
        summaries = {e.key: summarise(e) for e in entries}
        for row in rows:
            row["latency"] = {q: {p: summaries[f"{row['model']}/{q}/{p}"] for p in PEERS
                                  if f"{row['model']}/{q}/{p}" in summaries} for q in precisions}
        macs = FLOOR_SHAPE[0] * FLOOR_SHAPE[1]
        gemv = {f"C {k}": round(macs / (summaries[f"floor/fp32/gemv-{k}"]["p50_us"] * 1e3), 2) for k in floors}
        blas_gemv = {k: max(blas_before["gmacs"][k], blas_after["gmacs"][k]) for k in blas_before["gmacs"]}
        gemv.update({k.split()[0]: round(v, 2) for k, v in blas_gemv.items() if k.split()[1].startswith("1x")})
        gemm = {k: round(v, 2) for k, v in blas_gemv.items() if not k.split()[1].startswith("1x")}
        result["floor"] = {"gemv_gmacs": gemv, "gemv_gmacs_best": max(gemv.values()), "gemm_gmacs": gemm,
                           "gemm_gmacs_best": max(gemm.values()), "blas": blas_before.get("blas"),
                           "gemv_entries": {k: summaries[f"floor/fp32/gemv-{k}"] for k in floors},
                           "blas_before": blas_before["gmacs"], "blas_after": blas_after["gmacs"]}
        result["rows"] = rows
        analyse(result)
        if not args.no_footprint:
            say("footprint: loaded objects, peak RSS, allocations per step")
            result["footprint"] = {}
            for row in rows:
                for key, art in row["artifacts"].items():
                    result["footprint"][f"{row['model']}/{key}"] = footprint(bundle, Path(art))
            say("footprint: the --emit c bundles as firmware (static demo)")
            result["firmware"] = {}
            for row in rows:
                for q in precisions:
                    result["firmware"][f"{row['model']}/{q}"] = firmware_footprint(Path(row["checkpoint"]), q,
                                                                                   work / "firmware")
        if not args.no_breakdown and any(sp in peers for sp in STATIC_PEERS):
            say("per-kernel breakdown of the static steps (-DSSMC_PROFILE glue)")
            result["static_breakdown"] = {}
            for row in rows:
                for q in precisions:
                    for sp in (sp for sp in STATIC_PEERS if sp in peers):
                        key = f"{row['model']}/{q}" + ("" if sp == "static" else f"/{sp}")
                        try:
                            result["static_breakdown"][key] = static_breakdown(
                                row["model"], args.zoo, q, work, result["floor"]["gemv_gmacs_best"], SSMC_PEERS[sp][1])
                        except Exception as e:  # noqa: BLE001 - another tool's API; the numbers stand without it
                            result["static_breakdown"][key] = {"error": f"{type(e).__name__}: {e}"}
        if not args.no_breakdown and "vm" in peers:
            say("per-kernel breakdown of the VM executables")
            result["breakdown"] = {}
            for row in rows:
                inputs = [np.load(p) for p in sorted(Path(row["inputs"]).glob("in*.npy"),
                                                     key=lambda p: int(p.stem[2:]))]
                for q in precisions:
                    art = row["artifacts"].get(f"{q}/vm")
                    if art:
                        result["breakdown"][f"{row['model']}/{q}"] = kernel_breakdown(
                            Path(art), inputs, result["floor"]["gemv_gmacs_best"])
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    with atomic_file(args.json) as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    text = markdown(result)
    if not args.no_docs:
        replace_marked_block(args.doc, DOC_BEGIN, DOC_END, text + "\n", default="# Static step benchmark\n")
        plot(result, args.png)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
