"""Host per-step latency of a policy step, one thread: compiled TVM vs ONNX Runtime vs PyTorch eager.

    python tools/bench/step_latency.py                      # dema, dmm, dt -> docs/bench.{json,png,md}
    python tools/bench/step_latency.py --models dmm --rounds 10 --no-docs --json /tmp/b.json

For each model (a checkpoint under ``--zoo``, by default ``runs/zoo/<model>``, when there is one; else
a freshly initialised Hopper-size model, obs 11 / act 3, paper configuration: timing does not depend on
the weights) the *deployed step* is the recurrent step (O(1) per control step: carried conv/SSM state)
where the model has one, else (DT) its window step. Peers, all on the same inputs and state:

- ``tvm-fp32``, ``tvm-int8``: the step compiled by ssmc's pipeline (``fast-exp`` + ``cpu-schedule``);
- ``tvm-fp32-default``, ``tvm-int8-default``: the same without those stages (TVM's default CPU kernels:
  the "before");
- ``tvm-window-fp32``: the model's window step compiled (same semantics as ``eager-window``);
- ``ort-fp32``: ONNX Runtime (CPU provider, all graph optimisations, 1 intra/inter-op thread, I/O
  bound once with preallocated outputs) on the same ``StepFunction`` exported with
  ``torch.onnx.export(dynamo=True)``; its outputs are checked against PyTorch before it is timed;
- ``eager-step``: PyTorch eager, the same step (``torch.inference_mode``);
- ``eager-window``: PyTorch eager re-encoding the last K timesteps at every control step (the model's
  window semantics: how the papers run inference).

Timing: one thread everywhere (``torch.set_num_threads(1)``, ``TVM_NUM_THREADS=1``, ORT
``intra_op_num_threads=1``). Each call is timed alone (``perf_counter_ns`` around one Python call,
so each peer's Python entry cost is included, as a Python control loop would pay it). Peers are
interleaved: ``--rounds`` rounds, each running every peer in a fresh random order for about
``--round-ms`` (at least 3 calls), so load changes on a shared machine hit all peers alike.
p50/p99 are over all calls. The load average before and after each model is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

os.environ["TVM_NUM_THREADS"] = "1"  # before TVM starts its thread pool

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ssmc.errors import ConfigError  # noqa: E402
from ssmc.fsutil import atomic_file, replace_marked_block  # noqa: E402

HOPPER = (11, 3)
DEFAULT_MODELS = ("dema", "dmm", "dt")
#: Written when no checkpoint is found: Hopper-like statistics (timing does not depend on them).
FRESH_EXTRA = {"obs_mean": [0.0] * HOPPER[0], "obs_std": [1.0] * HOPPER[0], "rtg_scale": 1e-3,
               "target_return": 3600.0, "env_id": "Hopper-v5"}
DOC_BEGIN, DOC_END = "<!-- step_latency:begin -->", "<!-- step_latency:end -->"
ORT_TOLERANCE = 1e-4  # max relative error of ORT against PyTorch (fp32 vs fp32: ~1e-6 seen)


def load_model(kind: str, zoo: Path) -> tuple[Any, dict[str, Any], str]:
    """(model, extra, source) from ``zoo/<kind>`` if it holds a checkpoint, else a fresh Hopper-size model."""
    from ssmc.train.models import build_model, load_checkpoint

    ckpt = zoo / kind
    if (ckpt / "config.json").is_file():
        model, extra = load_checkpoint(ckpt)
        return model.eval(), dict(extra), str(ckpt)
    torch.manual_seed(0)
    return build_model(kind, *HOPPER).eval(), dict(FRESH_EXTRA), "fresh initialisation (hopper size)"


def semantics_of(model: Any) -> tuple[str, str | None]:
    """(deployed step semantics, window semantics or None): recurrent where the model has it."""
    deploy = model.semantics
    if deploy != "recurrent":
        try:
            model.with_semantics("recurrent")
            deploy = "recurrent"
        except ConfigError:
            pass
    window = None
    try:
        model.with_semantics("window")
        window = "window"
    except ConfigError:
        pass
    return deploy, window


def _state_after(fn: Any, steps: int, rng: np.random.Generator) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Raw inputs and the state after ``steps`` eager steps from zeros: realistic, non-zero state."""
    state = [fn.model.init_state(1)[n] for n in fn.state_names]
    mean, std = fn.obs_mean.numpy(), fn.obs_std.numpy()
    rtg = 1.0 / fn.rtg_scale

    def raw() -> list[torch.Tensor]:
        obs = (mean + std * rng.standard_normal(mean.shape)).astype(np.float32)
        return [torch.from_numpy(obs), torch.tensor([[rtg]], dtype=torch.float32)]

    with torch.inference_mode():
        for _ in range(steps):
            state = list(fn(*raw(), *state)[1:])
            rtg -= 3.0
        return raw(), [s.clone() for s in state]


class Peer:
    """One way of running a step: ``call()`` runs it once on fixed inputs; ``outputs()`` returns numpy."""

    def __init__(self, name: str, call: Any, outputs: Any, note: str = "") -> None:
        self.name, self.call, self.outputs, self.note = name, call, outputs, note
        self.samples_ns: list[int] = []


def torch_peer(name: str, fn: Any, args: list[torch.Tensor]) -> Peer:
    def call() -> Any:
        with torch.inference_mode():
            return fn(*args)

    return Peer(name, call, lambda: [o.numpy() for o in call()])


def tvm_peer(name: str, exported: Any, args: list[np.ndarray], workdir: Path, schedule: bool,
             precision: str) -> tuple[Peer, dict[str, Any]]:
    """Lower ``exported`` for the host with or without ssmc's CPU schedules; a peer calling it."""
    import tvm
    from tvm import relax

    from ssmc.compile.build import strip_library
    from ssmc.compile.pipeline import lower_step
    from ssmc.targets import load_target

    target = load_target("host")
    t0 = time.perf_counter()
    executable, report = lower_step(exported.program, target, precision, schedule=schedule)
    library = workdir / f"{name}.so"  # a fresh path per build: dlopen caches by path
    executable.export_library(str(library))
    strip_library(library, target)
    seconds = time.perf_counter() - t0
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(library)), tvm.cpu())
    main = vm["main"]
    tensors = [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in args]
    peer = Peer(name, lambda: main(*tensors), lambda: [o.numpy() for o in main(*tensors)])
    return peer, {"compile_s": round(seconds, 1), "library_bytes": library.stat().st_size,
                  "stages": report["stage_seconds"]}


def ort_peer(fn: Any, args: list[torch.Tensor], workdir: Path) -> tuple[Peer, dict[str, Any]]:
    """Export ``fn`` to ONNX (dynamo exporter), open it in ONNX Runtime with one thread, bind I/O."""
    import onnxruntime as ort

    in_names = ["obs_raw", "rtg_raw", *fn.state_names]
    out_names = ["action", *(f"new_{n}" for n in fn.state_names)]
    path = workdir / "step.onnx"
    t0 = time.perf_counter()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(fn, tuple(args), dynamo=True, input_names=in_names, output_names=out_names,
                                    verbose=False)
        program.save(str(path))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    seconds = time.perf_counter() - t0
    with torch.inference_mode():
        expected = [o.numpy().copy() for o in fn(*args)]
    feeds = {n: np.ascontiguousarray(a.numpy()) for n, a in zip(in_names, args, strict=True)}
    outs = [np.empty_like(e) for e in expected]
    binding = sess.io_binding()
    for n, a in feeds.items():
        binding.bind_cpu_input(n, a)
    for n, o in zip(out_names, outs, strict=True):
        binding.bind_output(n, "cpu", 0, o.dtype, list(o.shape), o.ctypes.data)

    def call() -> None:
        sess.run_with_iobinding(binding)

    def outputs() -> list[np.ndarray]:
        call()
        return [o.copy() for o in outs]

    return Peer("ort-fp32", call, outputs), {"export_s": round(seconds, 1), "onnx_nodes": len(program.model_proto.graph.node),
                                             "onnx_bytes": path.stat().st_size}


def time_peers(peers: list[Peer], rounds: int, round_ms: float, seed: int = 0) -> None:
    """Interleaved timing (module docstring); fills each peer's ``samples_ns``."""
    rng = random.Random(seed)
    per_call = {}
    for p in peers:  # warm up, and estimate the cost of one call
        for _ in range(3):
            p.call()
        t0 = time.perf_counter_ns()
        for _ in range(5):
            p.call()
        per_call[p.name] = max((time.perf_counter_ns() - t0) / 5, 1.0)
    reps = {p.name: max(3, int(round_ms * 1e6 / per_call[p.name])) for p in peers}
    clock = time.perf_counter_ns
    for _ in range(rounds):
        order = peers[:]
        rng.shuffle(order)
        for p in order:
            call, samples = p.call, p.samples_ns
            for _ in range(reps[p.name]):
                t0 = clock()
                call()
                samples.append(clock() - t0)


def _stats(samples_ns: list[int]) -> dict[str, float]:
    a = np.asarray(samples_ns, dtype=np.float64) / 1e3
    return {"p50_us": round(float(np.percentile(a, 50)), 1), "p99_us": round(float(np.percentile(a, 99)), 1),
            "mean_us": round(float(a.mean()), 1), "n": int(a.size)}


def bench_model(kind: str, zoo: Path, rounds: int, round_ms: float, window_compiled: bool,
                say: Any) -> dict[str, Any]:
    """Build every peer for ``kind``, check them against PyTorch, time them interleaved."""
    from ssmc.compile.export import StepFunction, export_step, normalisation
    from ssmc.compile.quantize import quantize_int8
    from ssmc.numerics import max_rel_error

    model, extra, source = load_model(kind, zoo)
    deploy, window = semantics_of(model)
    mean, std, scale, _ = normalisation(extra, model.config.obs_dim)
    say(f"{kind}: {source}; deployed step {deploy}, {model.num_params():,} params")
    fp32 = export_step(model, extra, deploy)
    int8 = export_step(model, extra, deploy, quantize=quantize_int8)
    rng = np.random.default_rng(0)
    inputs, state = _state_after(fp32.reference, 10, rng)
    args_t = [*inputs, *state]
    args = [a.numpy() for a in args_t]
    row: dict[str, Any] = {"model": kind, "source": source, "params": fp32.model.num_params(),
                           "deployed_semantics": deploy, "macs_per_step": fp32.model.macs_per_step(),
                           "build": {}, "max_rel_error_vs_pytorch": {}}
    with tempfile.TemporaryDirectory(prefix="ssmc-bench-") as tmp:
        work = Path(tmp)
        peers = []
        for name, exported, schedule, precision in [
            ("tvm-fp32", fp32, True, "fp32"), ("tvm-int8", int8, True, "int8"),
            ("tvm-fp32-default", fp32, False, "fp32"), ("tvm-int8-default", int8, False, "int8"),
        ]:
            say(f"{kind}: building {name}")
            peer, info = tvm_peer(name, exported, args, work, schedule, precision)
            peers.append(peer)
            row["build"][name] = info
        ort, info = ort_peer(fp32.reference, args_t, work)
        row["build"]["ort-fp32"] = info
        peers.append(ort)
        peers.append(torch_peer("eager-step", fp32.reference, args_t))
        # parity on the timed inputs: compiled vs PyTorch (int8 vs its own dequantised PyTorch), ORT vs PyTorch
        with torch.inference_mode():
            want32 = [o.numpy() for o in fp32.reference(*args_t)]
            want8 = [o.numpy() for o in int8.function(*args_t)]
        for p in peers:
            if p.name.startswith("eager"):
                continue
            want = want8 if "int8" in p.name else want32
            err = max_rel_error(p.outputs(), want)
            row["max_rel_error_vs_pytorch"][p.name] = err
            if p.name == "ort-fp32" and not err <= ORT_TOLERANCE:
                raise RuntimeError(f"{kind}: ONNX Runtime disagrees with PyTorch (max rel error {err:.2e})")
        if window is not None:
            wmodel = model.with_semantics(window).eval()
            wfn = StepFunction(wmodel, mean, std, scale).eval()
            winputs, wstate = _state_after(wfn, 10, np.random.default_rng(0))
            wargs = [*winputs, *wstate]
            peers.append(torch_peer("eager-window", wfn, wargs))
            row["window_K"] = wmodel.config.K
            if window_compiled and window != deploy:
                say(f"{kind}: building tvm-window-fp32")
                wexp = export_step(model, extra, window)
                peer, info = tvm_peer("tvm-window-fp32", wexp, [a.numpy() for a in wargs], work, True, "fp32")
                row["build"]["tvm-window-fp32"] = info
                with torch.inference_mode():
                    row["max_rel_error_vs_pytorch"][peer.name] = max_rel_error(
                        peer.outputs(), [o.numpy() for o in wfn(*wargs)])
                peers.append(peer)
        row["loadavg_before"] = [round(x, 2) for x in os.getloadavg()]
        say(f"{kind}: timing {len(peers)} peers, {rounds} interleaved rounds (load {row['loadavg_before'][0]:.2f})")
        time_peers(peers, rounds, round_ms)
        row["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    row["latency"] = {p.name: _stats(p.samples_ns) for p in peers}
    lat = {k: v["p50_us"] for k, v in row["latency"].items()}
    ratios = {
        "ort / tvm-fp32": lat["ort-fp32"] / lat["tvm-fp32"],
        "eager-step / tvm-fp32": lat["eager-step"] / lat["tvm-fp32"],
        "tvm-fp32-default / tvm-fp32": lat["tvm-fp32-default"] / lat["tvm-fp32"],
        "tvm-int8-default / tvm-int8": lat["tvm-int8-default"] / lat["tvm-int8"],
        "ort / tvm-int8": lat["ort-fp32"] / lat["tvm-int8"],
        "ort / tvm-fp32-default": lat["ort-fp32"] / lat["tvm-fp32-default"],
    }
    if "eager-window" in lat:
        ratios["eager-window / tvm-fp32"] = lat["eager-window"] / lat["tvm-fp32"]
        ratios["eager-window / tvm-int8"] = lat["eager-window"] / lat["tvm-int8"]
        ratios["eager-window / tvm-fp32-default"] = lat["eager-window"] / lat["tvm-fp32-default"]
    if "tvm-window-fp32" in lat:
        ratios["eager-window / tvm-window-fp32"] = lat["eager-window"] / lat["tvm-window-fp32"]
    row["ratios_p50"] = {k: round(v, 2) for k, v in ratios.items()}
    return row


def machine() -> dict[str, Any]:
    """What the numbers were taken on."""
    import onnxruntime
    import tvm

    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu or platform.processor(), "logical_cpus": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "tvm": tvm.__version__, "onnxruntime": onnxruntime.__version__,
            "threads": 1}


PEER_ORDER = ("tvm-fp32", "tvm-int8", "tvm-fp32-default", "tvm-int8-default", "ort-fp32", "eager-step",
              "tvm-window-fp32", "eager-window")


def markdown(result: dict[str, Any]) -> str:
    """The generated part of docs/bench.md: latency table, ratios, errors, machine."""
    rows = result["rows"]
    out = [f"Generated by `{result['command']}` on {result['date']} ({result['machine']['cpu']}, "
           f"{result['machine']['logical_cpus']} logical CPUs, shared; 1 thread; torch {result['machine']['torch']}, "
           f"TVM {result['machine']['tvm']}, ONNX Runtime {result['machine']['onnxruntime']}). "
           f"Load average (1 min) during the runs: "
           + ", ".join(f"{r['model']} {r['loadavg_before'][0]:.1f}→{r['loadavg_after'][0]:.1f}" for r in rows) + ".",
           "", "**Per-step latency, µs (p50 / p99)**", ""]
    peers = [p for p in PEER_ORDER if any(p in r["latency"] for r in rows)]
    out.append("| model (deployed step, params) | " + " | ".join(f"`{p}`" for p in peers) + " |")
    out.append("|---|" + "---|" * len(peers))
    for r in rows:
        cells = []
        for p in peers:
            s = r["latency"].get(p)
            cells.append(f"{s['p50_us']:,.1f} / {s['p99_us']:,.1f}" if s else "—")
        out.append(f"| {r['model']} ({r['deployed_semantics']}, {r['params']:,}) | " + " | ".join(cells) + " |")
    out += ["", "**Speed-ups at p50** (how many times faster the compiled step is; goal: ≥ 1.5× ONNX Runtime, "
            "≥ 30× eager window)", ""]
    keys = ["ort / tvm-fp32", "ort / tvm-int8", "eager-window / tvm-fp32", "eager-window / tvm-int8",
            "eager-step / tvm-fp32", "tvm-fp32-default / tvm-fp32", "tvm-int8-default / tvm-int8",
            "ort / tvm-fp32-default", "eager-window / tvm-fp32-default", "eager-window / tvm-window-fp32"]
    keys = [k for k in keys if any(k in r["ratios_p50"] for r in rows)]
    out.append("| model | " + " | ".join(keys) + " |")
    out.append("|---|" + "---|" * len(keys))
    for r in rows:
        out.append(f"| {r['model']} | " + " | ".join(
            f"{r['ratios_p50'][k]:.1f}×" if k in r["ratios_p50"] else "—" for k in keys) + " |")
    out += ["", "**Max relative error against PyTorch on the timed inputs** (int8 builds against PyTorch on the "
            "same int8 weights; ORT is checked before timing, bound 1e-4)", ""]
    names = [p for p in PEER_ORDER if any(p in r["max_rel_error_vs_pytorch"] for r in rows)]
    out.append("| model | " + " | ".join(f"`{n}`" for n in names) + " |")
    out.append("|---|" + "---|" * len(names))
    for r in rows:
        out.append(f"| {r['model']} | " + " | ".join(
            f"{r['max_rel_error_vs_pytorch'][n]:.1e}" if n in r["max_rel_error_vs_pytorch"] else "—"
            for n in names) + " |")
    out += ["", "Sources: " + "; ".join(f"{r['model']}: {r['source']}" + (f", window K={r['window_K']}"
                                                                         if "window_K" in r else "") for r in rows)
            + ".", ""]
    return "\n".join(out)


def plot(result: dict[str, Any], path: Path) -> None:
    """Bar chart: p50 per peer and model (log scale), p99 as the whisker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    peers = [p for p in PEER_ORDER if any(p in r["latency"] for r in rows)]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(peers)
    for i, p in enumerate(peers):
        xs, p50, err = [], [], []
        for j, r in enumerate(rows):
            if p in r["latency"]:
                s = r["latency"][p]
                xs.append(j + (i - (len(peers) - 1) / 2) * width)
                p50.append(s["p50_us"])
                err.append(max(s["p99_us"] - s["p50_us"], 0.0))
        ax.bar(xs, p50, width, yerr=[[0] * len(err), err], capsize=2, label=p)
    ax.set_yscale("log")
    ax.set_xticks(range(len(rows)), [f"{r['model']} ({r['deployed_semantics']})" for r in rows])
    ax.set_ylabel("µs per step (p50, whisker p99)")
    ax.set_title("Host step latency, 1 thread")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated zoo names")
    parser.add_argument("--zoo", type=Path, default=Path("runs/zoo"), help="checkpoints as <zoo>/<model>")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--round-ms", type=float, default=150.0, help="time per peer per round")
    parser.add_argument("--no-window-compiled", action="store_true", help="skip compiling the window step")
    parser.add_argument("--json", type=Path, default=Path("docs/bench.json"))
    parser.add_argument("--doc", type=Path, default=Path("docs/bench.md"))
    parser.add_argument("--png", type=Path, default=Path("docs/bench.png"))
    parser.add_argument("--no-docs", action="store_true", help="write only --json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    kinds = [k.strip() for k in args.models.split(",") if k.strip()]
    result = {
        "command": "python tools/bench/step_latency.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "rounds": args.rounds, "round_ms": args.round_ms,
        "rows": [bench_model(k, args.zoo, args.rounds, args.round_ms, not args.no_window_compiled, say)
                 for k in kinds],
    }
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    with atomic_file(args.json) as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    text = markdown(result)
    if not args.no_docs:
        replace_marked_block(args.doc, DOC_BEGIN, DOC_END, text + "\n", default="# Benchmarks\n\n")
        plot(result, args.png)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
