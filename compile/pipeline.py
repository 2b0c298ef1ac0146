"""Lowering through TVM Relax: the pipeline as a visible list of named stages.

    import          torch.export program -> Relax (``from_exported_program``), parameters as constants;
                    each ``ssmc::selective_scan`` node (a Mamba layer's whole scan) becomes one call to
                    the loop kernel of compile/scan_kernel.py
    decompose       inference decompositions (``DecomposeOpsForInference``), canonical bindings, and
                    common subexpressions merged: a weight used by 3 tokens per step is transposed (and
                    stored, once folded) once, not 3 times
    prune-rows      a one-row slice of the token axis (the window step's read of its newest s_t token) sunk
                    through the row-wise ops before it, so that they compute that row alone (compile/rows.py)
    fp16-matmuls    fp16 only: every matmul with a constant weight takes fp16 inputs and an fp16 weight
                    and produces fp32; everything else (norms, exp/softplus, the SSM state, A, Δ) stays fp32
    int8-matmuls    int8 only: ``x @ float(W_int8)`` becomes one mixed-dtype matmul reading the int8
                    weight directly, so no fp32 copy of the weight exists, at compile time or run time
    pack-weights    CPU, fp32 and int8: a matmul over several rows (a window's tokens, a layer-major
                    recurrent step's) with a constant (K, N) fp32 or int8 weight reads it packed in column
                    panels two vectors wide, int8 kept int8 (``_packed_weight_gemms``)
    fast-exp        CPU only: ``exp``, ``sigmoid``, ``silu`` and ``log`` as vectorisable arithmetic
                    (``tuning.FAST_MATH``) instead of one libm call per element (the SSM's exp(Δ·A),
                    softplus' exp and log for Δ, SiLU and the gate)
    legalize        high-level ops -> TIR functions (``LegalizeOps``), op patterns annotated for fusion
    fold-constants  ``FoldConstant``: weight transposes, normalisation constants, -exp(A_log) precomputed
    fuse            ``FuseOps`` + ``FuseTIR``: elementwise chains merged into their producers
    gpu-schedule    CUDA only: DLight default GPU schedules (thread bindings; without them no kernels)
    cpu-schedule    CPU only: every fused kernel scheduled by ``tuning.py``'s rules (intermediates inlined,
                    batch-1 matmuls as register-blocked vector FMAs over the (K, N) weight, reductions
                    vectorised with rfactor, elementwise loops vectorised); deterministic, no tuning run
    lower           vm only: dataflow lowering, static memory planning, VM builtins, shape lowering
    build           vm only: TIR -> machine code for the target; a Relax VM executable (``relax.build``)
    static-plan     static only: every tensor of ``main`` placed at compile time (compile/static.py)
    static-build    static only: kernels by LLVM, the generated C call sequence, weights as constant
                    data, linked into a shared object that needs libc and libm alone

``lower_step`` runs them in order; ``--dump-ir DIR`` writes the module after each stage as
``DIR/NN-name.py`` (TVMScript; constants shown as metadata references) and the executable's
statistics after ``build``. This is the pipeline of ``relax.get_default_pipeline`` (library
dispatch, legalize, fold, fuse, dataflow lowering, finalisation) with the precision stages added;
``tvm.compile(mod, "llvm")`` alone would skip fusion on CPU (docs/design.md, "What the code relies on"). On CPU the default
pipeline leaves every kernel as LegalizeOps wrote it (naive loops: a 64x256 matmul took 30 µs,
scheduled 0.7 µs); ``fast-exp`` and ``cpu-schedule`` are ssmc's additions (docs/bench.md, before/after).

Why int8 survives folding: FoldConstant evaluates every expression whose inputs are all constants,
so ``astype(W_int8, "float32")`` on a constant weight would be folded into an fp32 constant and the
artifact would store fp32 (measured; docs/design.md, "FoldConstant undoes int8"). ``int8-matmuls`` runs first
and removes that cast: ``matmul(x, W_int8, out_dtype="float32")`` depends on the activation ``x``, so
nothing folds; the per-channel scale multiplies the matmul's output and fuses into its kernel.
``lower_step`` refuses an int8 build whose constants hold no int8.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ssmc.targets import Target

if TYPE_CHECKING:  # pragma: no cover
    import torch

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Stage:
    """One named step of the pipeline: a function IRModule -> IRModule."""

    name: str
    what: str
    run: Callable[[Any], Any]


def _sequential(*passes: Any) -> Callable[[Any], Any]:
    import tvm

    seq = tvm.transform.Sequential(list(passes))
    return lambda mod: seq(mod)


def _select_int(node: Any, importer: Any) -> Any:
    """``aten.select.int`` with a negative index made positive.

    TVM 0.27's importer lowers ``x[:, -1]`` to ``take(x, -1)`` in "fast" mode, which reads out of
    bounds (garbage actions: measured here). Shapes are static, so the index is normalised here, and
    the row is taken as a strided slice (no gather kernel).
    """
    from tvm import relax

    x, dim, index = importer.env[node.args[0]], node.args[1], node.args[2]
    if index < 0:
        index += int(node.args[0].meta["val"].shape[dim])
    row = importer.block_builder.emit(relax.op.strided_slice(x, [dim], [index], [index + 1]))
    return importer.block_builder.emit(relax.op.squeeze(row, [dim]))


def _clamp(node: Any, importer: Any) -> Any:
    """``aten.clamp`` on an integer tensor with one bound missing, without the infinite bound.

    TVM 0.27's importer turns a missing bound into ±inf and ``clip`` then fails to cast it to int64
    ("Cannot convert infinity to BigInt"; DT's ``t.clamp(max=...)``). Float clamps go to TVM's own.
    """
    from tvm import relax

    val = node.args[0].meta.get("val")
    lo = node.args[1] if len(node.args) > 1 else node.kwargs.get("min")
    hi = node.args[2] if len(node.args) > 2 else node.kwargs.get("max")
    scalar = all(b is None or isinstance(b, int | float) for b in (lo, hi))
    if val is None or val.dtype.is_floating_point or not scalar:
        return importer._clamp(node)
    dtype = str(val.dtype).removeprefix("torch.")
    out = importer.env[node.args[0]]
    if lo is not None:
        out = importer.block_builder.emit(relax.op.maximum(out, relax.const(int(lo), dtype)))
    if hi is not None:
        out = importer.block_builder.emit(relax.op.minimum(out, relax.const(int(hi), dtype)))
    return out


#: Importer overrides for TVM 0.27 frontend bugs met by the zoo's step functions.
_CONVERT_FIXES = {"select.int": _select_int, "clamp.default": _clamp}


def _selective_scan(node: Any, importer: Any, lanes: int) -> Any:
    """``ssmc::selective_scan`` (train/models/scan_op.py) -> one ``call_tir`` to compile/scan_kernel.py's loop.

    A is multiplied by log2(e) here (the kernel computes 2^(Δ·A·log2 e)); A is a constant of the step,
    so ``fold-constants`` stores the product. The kernel is marked scheduled and opaque: ``cpu-schedule``
    leaves it as written and ``fuse`` merges nothing into it.
    """
    from tvm import relax

    from ssmc.compile.scan_kernel import LOG2E, selective_scan_primfunc

    args = list(node.args) + [None] * (6 - len(node.args))
    b, length, d = (int(x) for x in args[0].meta["val"].shape)
    n = int(args[2].meta["val"].shape[1])
    bb = importer.block_builder
    a2 = bb.emit(relax.op.multiply(importer.env[args[2]], relax.const(LOG2E, "float32")))
    inputs = [importer.env[args[0]], importer.env[args[1]], a2, importer.env[args[3]], importer.env[args[4]]]
    if args[5] is not None:
        inputs.append(importer.env[args[5]])
    kernel = bb.add_func(selective_scan_primfunc(b, length, d, n, lanes, args[5] is not None), "selective_scan")
    outs = [relax.TensorType((b, length, d), "float32"), relax.TensorType((b, d, n), "float32")]
    return bb.emit(relax.call_tir(kernel, inputs, outs))


def import_program(program: torch.export.ExportedProgram, lanes: int = 4) -> Any:
    """The Relax module of ``program``, parameters and buffers embedded as constants.

    ``lanes``: fp32 vector width of the target (``tuning.vector_lanes``), for the fused scan's kernel.
    """
    from functools import partial

    from tvm.relax.frontend.torch import from_exported_program

    convert = {**_CONVERT_FIXES, "selective_scan.default": partial(_selective_scan, lanes=lanes)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch pytree FutureWarnings raised inside the frontend
        return from_exported_program(program, keep_params_as_input=False, custom_convert_map=convert)


def _weight_pattern() -> tuple[Any, Any]:
    """``(weight, const)``: a constant weight as a matmul reads it after the import, and its constant. The
    constant, optionally sliced (``strided_slice``: Mamba's x_proj as two products, train/models/mamba.py),
    then optionally transposed (``permute_dims``: nn.Linear's (out, in) weight), then optionally broadcast
    (``broadcast_to``: a 3-D input's matmul)."""
    from tvm.relax.dpl import is_const, is_op, wildcard

    const = is_const()
    slice_op = is_op("relax.strided_slice")
    sliced = const | slice_op(const, wildcard(), wildcard(), wildcard()) | slice_op(
        const, wildcard(), wildcard(), wildcard(), wildcard())
    transposed = sliced | is_op("relax.permute_dims")(sliced)
    return transposed | is_op("relax.broadcast_to")(transposed, wildcard()), const


def _fold_weight(expr: Any, bound: Mapping[Any, Any]) -> Any:
    """The weight chain ``expr`` (``_weight_pattern``) evaluated on its constant with numpy, dtype kept; None
    for a broadcast to a real batch of weights. ``bound`` maps the function's variables to their values."""
    import numpy as np
    from tvm import relax

    expr = bound.get(expr, expr)
    if not isinstance(expr, relax.Call):  # the constant itself
        return expr.value.numpy()
    inner = _fold_weight(expr.args[0], bound)
    if inner is None:
        return None
    name = expr.op.name
    if name == "relax.strided_slice":
        axes, begin, end, *strides = ([int(f.value) for f in arg.fields] for arg in expr.args[1:])
        index = [slice(None)] * inner.ndim
        for i, axis in enumerate(axes):
            index[axis] = slice(begin[i], min(end[i], inner.shape[axis]), strides[0][i] if strides else 1)
        return np.ascontiguousarray(inner[tuple(index)])
    if name == "relax.permute_dims":
        axes = None if expr.attrs.axes is None else [int(a) for a in expr.attrs.axes]
        return np.transpose(inner, axes)
    shape = [int(d) for d in expr.args[1].values]
    if any(d != 1 for d in shape[:-2]):
        return None  # a real batch of weights: not a weight matmul
    return np.broadcast_to(inner, shape).reshape(shape[-2:])


def pack_panels(w: Any, panel: int) -> Any:
    """A (K, N) weight in ``panel``-wide column panels, (N / panel, K, panel): ``Wp[j, k, :] = W[k, j*panel:(j+1)*panel]``."""
    import numpy as np

    k, n = w.shape
    return np.ascontiguousarray(w.reshape(k, n // panel, panel).transpose(1, 0, 2))


def _fp16_weight_matmuls(mod: Any) -> Any:
    """Every ``matmul(x, W)`` with a constant fp32 weight becomes ``matmul(fp16(x), fp16(W))`` with an
    fp32 result; nothing else changes dtype.

    ``relax.transform.ToMixedPrecision`` was tried first: it also moves the ops that follow a matmul
    to fp16 (bias adds, SiLU, softplus, B and C, even ``exp(A_log)``), against the rule that the SSM
    parameters, Δ and state stay fp32, and its error on the recurrent SSM state was about 100x larger
    (6e-2 against 6e-4 on a small DeMa-RNN). The weight reaches the matmul as imported from nn.Linear:
    ``permute_dims(W)``, and on a 3-D input also ``broadcast_to(permute_dims(W), (1, in, out))``;
    FoldConstant later folds those on the fp16 constant.
    """
    import numpy as np
    from tvm import relax
    from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

    x, const = wildcard(), is_const()
    transposed = const | is_op("relax.permute_dims")(const)
    weight = transposed | is_op("relax.broadcast_to")(transposed, wildcard())
    pattern = is_op("relax.matmul")(x, weight)

    bound: dict[Any, Any] = {}  # var -> its value, in the function being rewritten

    def to_fp16(expr: Any) -> Any:  # the matched weight chain, rebuilt on an fp16 copy of the constant
        expr = bound.get(expr, expr)
        if not isinstance(expr, relax.Call):
            return relax.const(expr.value.numpy().astype(np.float16))
        if expr.op.name == "relax.permute_dims":
            return relax.op.permute_dims(to_fp16(expr.args[0]), expr.attrs.axes)
        return relax.op.broadcast_to(to_fp16(expr.args[0]), expr.args[1])

    def rewrite(call: Any, matches: Any) -> Any:
        if matches[const].value.numpy().dtype != np.float32:
            return call
        return relax.op.matmul(relax.op.astype(matches[x], "float16"), to_fp16(matches[weight]),
                               out_dtype="float32")

    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            bound.clear()
            bound.update(relax.analysis.get_var2val(func))
            mod[gv] = rewrite_call(pattern, rewrite, func)
    return mod


#: Fewest rows (tokens) a matmul needs for the pack-weights stage to pack its weight (see there).
PACK_MIN_ROWS = 2


def _packed_weight_gemms(lanes: int) -> Callable[[Any], Any]:
    """Every ``matmul(x, W)`` over several rows (a window's tokens, or a layer-major recurrent step's: a GEMM)
    with a constant fp32 or int8 ``W`` (K, N) reads ``W`` packed in panels, ``pack_panels``: ``Wp[j, k, :] =
    W[k, j*c:(j+1)*c]`` with ``c`` = 2 vectors, the width of the GEMM rule's register block (compile/tuning.py,
    rule 2), so the kernel walks each panel's K x c values in order instead of a c-value piece of every row N
    apart. An int8 weight stays int8 in its panels (the kernel widens it to fp32 in the loop, as the plain
    int8 matmul does).

    Why: a window step's weights do not stay in cache between steps (DT's are 2.9 MB, more than a core's
    L2: 1 MB on the AMD EPYC of docs/window-step.md), and the row-strided walk fetches them at latency.
    Measured alone on that EPYC with the weight flushed from cache (TVM ``time_evaluator``,
    cache_flush_cpu_non_first_arg), 60 x 128 @ 128 x 512 took 122 µs strided and 73 µs packed (AVX-512),
    112 and 77 µs (AVX2); with the weight in cache both ran at ~55 GMAC/s.
    The packed constant is made at compile time (``fold-constants``), so a step does no repacking.
    One-row matmuls (GEMVs) keep the plain layout: their weights stay in cache."""
    import numpy as np
    from tvm import relax
    from tvm.relax.dpl import is_op, rewrite_call, wildcard

    from ssmc.compile.tuning import packed_gemm_primfunc

    x = wildcard()
    weight, _ = _weight_pattern()
    pattern = is_op("relax.matmul")(x, weight)
    panel = 2 * lanes

    def pack(func: Any, bb: Any) -> Any:
        bound = relax.analysis.get_var2val(func)

        def key(expr: Any, spec: tuple = ()) -> tuple:  # which values a chain reads: its constant and slices
            expr = bound.get(expr, expr)
            if not isinstance(expr, relax.Call):
                return expr, spec
            if expr.op.name == "relax.strided_slice":
                spec = (*spec, tuple(tuple(int(f.value) for f in arg.fields) for arg in expr.args[1:]))
            return key(expr.args[0], spec)

        def packable(call: Any, matches: Any) -> tuple[Any, list[int]] | None:
            w = _fold_weight(matches[weight], bound)
            xt = matches[x].ty
            if (w is None or w.dtype not in (np.float32, np.int8) or w.ndim != 2 or str(call.ty.dtype) != "float32"
                    or str(getattr(xt, "dtype", "")) != "float32" or getattr(xt, "shape", None) is None):
                return None
            try:
                shape = [int(d) for d in xt.shape]
            except (TypeError, ValueError):  # a symbolic size
                return None
            k, n = w.shape
            if shape[-1] != k or n % panel or int(np.prod(shape[:-1])) < PACK_MIN_ROWS:
                return None
            return w, shape

        # A weight is packed only if every matmul that reads it can read it packed: DMM's recurrent step
        # multiplies the same embedding weight over two rows (R_t, s_t) and over one (a_t), and packing the
        # first alone stored the weight twice (its fp32 artifact grew from 0.59 to 1.0 MB).
        every_use_packable: dict[Any, bool] = {}

        def survey(call: Any, matches: Any) -> Any:
            k = key(matches[weight])
            every_use_packable[k] = every_use_packable.get(k, True) and packable(call, matches) is not None
            return call

        rewrite_call(pattern, survey, func)
        packed_consts: dict[Any, Any] = {}

        def rewrite(call: Any, matches: Any) -> Any:
            k = key(matches[weight])
            fit = packable(call, matches) if every_use_packable.get(k) else None
            if fit is None:
                return call
            w, shape = fit
            if k not in packed_consts:  # one packed copy per weight, however many matmuls read it
                packed_consts[k] = relax.const(pack_panels(w, panel))
            kernel = bb.add_func(packed_gemm_primfunc(shape, w.shape[1], panel, str(w.dtype)), "packed_gemm")
            return relax.call_tir(kernel, [matches[x], packed_consts[k]], relax.TensorType([*shape[:-1], w.shape[1]], "float32"))

        return rewrite_call(pattern, rewrite, func)

    def apply(mod: Any) -> Any:
        bb = relax.BlockBuilder(mod)  # adds each packed kernel with its type, under a fresh name
        for gv, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                bb.update_func(gv, pack(func, bb))
        return bb.get()

    return apply


def _int8_weight_matmuls(mod: Any) -> Any:
    """``matmul(x, astype(W, "float32"))`` with a constant int8 ``W`` -> ``matmul(x, W, out_dtype="float32")``.

    TVM's matmul casts each operand to the output dtype inside its reduction, so the int8 weight is
    read as stored; without this rewrite FoldConstant would turn the cast weight into fp32. ``W`` may
    also be a slice of the int8 constant (``Int8Linear.columns``, compile/quantize.py: DeMa's x_proj as
    two products); the slice is taken here, on the int8 values, into a new int8 constant.
    """
    import numpy as np
    from tvm import relax
    from tvm.relax.dpl import is_op, wildcard

    x = wildcard()
    weight, const = _weight_pattern()
    pattern = is_op("relax.matmul")(x, is_op("relax.astype")(weight))

    def rewrite(call: Any, matches: Any) -> Any:
        if str(matches[const].value.dtype) != "int8" or str(call.attrs.out_dtype) not in ("", "void", "float32"):
            return call
        w = matches[weight]
        if isinstance(w, relax.Call):  # sliced, transposed or broadcast: that chain taken on the int8 values
            value = _fold_weight(w, {})
            if value is None:
                return call
            w = relax.const(np.ascontiguousarray(value))
        return relax.op.matmul(matches[x], w, out_dtype="float32")

    return _rewrite_all(mod, pattern, rewrite)


def _rewrite_all(mod: Any, pattern: Any, rewrite: Callable[[Any, Any], Any]) -> Any:
    from tvm import relax
    from tvm.relax.dpl import rewrite_call

    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            mod[gv] = rewrite_call(pattern, rewrite, func)
    return mod


def _gpu_schedule() -> Callable[[Any], Any]:
    """DLight's default GPU rules (those of ``relax.backend.cuda``'s pipeline), each allowed to decline.

    TVM 0.27's ``dlight.gpu.GEMV`` fails inside its own assertion ``sch.get(ts_o).extent.value == 1``
    on some of DeMa's window kernels (an AssertionError, or an AttributeError when the extent is
    symbolic) instead of declining; a rule that raises is treated as not applicable, so the next rule
    (ultimately ``Fallback``) schedules that kernel.
    """
    from tvm.s_tir import dlight as dl

    class Declining(dl.ScheduleRule):
        def __init__(self, rule: Any) -> None:
            self.rule = rule

        def apply(self, func: Any, target: Any, tunable: bool) -> Any:
            try:
                return self.rule.apply(func, target, tunable)
            except Exception:  # a heuristic that crashes on a kernel it does not handle: let the next try
                return None

    rules = [dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction()]
    return _sequential(dl.ApplyDefaultSchedule(*(Declining(r) for r in rules), dl.gpu.Fallback()))


def stages(target: Target, precision: str, schedule: bool = True, executor: str = "vm") -> list[Stage]:
    """The named stages between ``import`` and ``build`` for ``target`` at ``precision``.

    ``schedule=False`` leaves out ``fast-exp`` and ``cpu-schedule``: TVM's default CPU kernels, the
    "before" of docs/bench.md (tools/bench/step_latency.py builds both). ``executor="static"`` leaves out
    ``lower`` (the VM's memory planning and builtins): compile/static.py plans and builds from there.
    """
    from tvm import relax
    from tvm.relax import transform as T

    from ssmc.compile.rows import prune_rows

    out = [Stage("decompose", "inference decompositions, canonical bindings, common subexpressions merged",
                 _sequential(T.DecomposeOpsForInference(), T.CanonicalizeBindings(), T.EliminateCommonSubexpr())),
           Stage("prune-rows", "only the token rows the outputs read are computed after the last token-mixing op",
                 prune_rows)]
    if precision == "fp16":
        out.append(Stage("fp16-matmuls", "fp16 weights and matmul inputs, fp32 results; the rest stays fp32",
                         _fp16_weight_matmuls))
    if precision == "int8":
        out.append(Stage("int8-matmuls", "matmuls read the int8 weights directly (nothing left to fold to fp32)",
                         _int8_weight_matmuls))
    cpu_schedule = schedule and target.device != "cuda"
    if cpu_schedule and precision in ("fp32", "int8"):
        from ssmc.compile.tuning import vector_lanes

        lanes = vector_lanes(target.tvm_target())
        out.append(Stage("pack-weights", f"GEMM weights (fp32, int8) packed in {2 * lanes}-wide panels (matmuls of 2+ rows)",
                         _packed_weight_gemms(lanes)))
    if cpu_schedule:
        from ssmc.compile.tuning import fast_exp_pass

        out.append(Stage("fast-exp", "exp, sigmoid, silu, log as vectorisable arithmetic, not libm calls",
                         fast_exp_pass()))
    out += [
        Stage("legalize", "ops -> TIR functions, fusion patterns annotated",
              _sequential(*relax.backend.cpu_generic.pipeline.library_dispatch_passes(None),
                          T.LegalizeOps(), T.AnnotateTIROpPattern())),
        Stage("fold-constants", "constant subexpressions evaluated at compile time", _sequential(T.FoldConstant())),
        Stage("fuse", "operator fusion", _sequential(T.FuseOps(), T.FuseTIR())),
    ]
    if target.device == "cuda":
        out.append(Stage("gpu-schedule", "DLight default GPU schedules", _gpu_schedule()))
    elif cpu_schedule:
        from ssmc.compile.tuning import cpu_schedule_pass, vector_lanes

        lanes = vector_lanes(target.tvm_target())
        out.append(Stage("cpu-schedule", f"CPU kernel schedules: matmuls and reductions vectorised ({lanes} lanes)",
                         cpu_schedule_pass(lanes)))
    if executor == "static":
        return out
    backend = relax.backend.cuda.pipeline if target.device == "cuda" else relax.backend.cpu_generic.pipeline
    out.append(Stage("lower", "dataflow lowering, memory planning, VM lowering",
                     _sequential(*backend.dataflow_lower_passes(None), *backend.finalize_passes(None))))
    return out


#: What the static executor runs after the shared stages (compile/static.py).
STATIC_STAGES = ("static-plan", "static-build")


def stage_names(target: Target, precision: str, schedule: bool = True, executor: str = "vm") -> list[str]:
    """Names of every stage run for ``target`` at ``precision``, ``import`` to ``build``."""
    tail = list(STATIC_STAGES) if executor == "static" else ["build"]
    return ["import", *(s.name for s in stages(target, precision, schedule, executor)), *tail]


def constant_bytes(mod: Any) -> dict[str, int]:
    """Bytes of the tensor constants ``main`` embeds (what the library stores), by dtype."""
    from tvm import relax

    seen: dict[int, tuple[str, int]] = {}

    def visit(expr: Any) -> None:
        if type(expr).__name__ in ("GenericConst", "Constant") and hasattr(expr, "value"):
            value = expr.value
            if hasattr(value, "numpy"):
                arr = value.numpy()
                seen[expr.value.__hash__()] = (str(arr.dtype), arr.nbytes)

    relax.analysis.post_order_visit(mod["main"], visit)
    out: dict[str, int] = {}
    for dtype, nbytes in seen.values():
        out[dtype] = out.get(dtype, 0) + nbytes
    return dict(sorted(out.items()))


def _dump(dump_dir: Path | None, index: int, name: str, mod: Any) -> None:
    if dump_dir is not None:
        (dump_dir / f"{index:02d}-{name}.py").write_text(mod.script(), encoding="utf-8")


def lower_step(program: torch.export.ExportedProgram, target: Target, precision: str,
               dump_ir: str | os.PathLike[str] | None = None, progress: Progress | None = None,
               schedule: bool = True, executor: str = "vm") -> tuple[Any, dict[str, Any]]:
    """Run every stage on ``program`` for ``target`` at ``precision``.

    Returns the VM executable (``executor="vm"``) or the scheduled IRModule that compile/static.py plans
    and builds (``"static"``), and a report: ``stage_seconds`` (name -> seconds), ``constant_bytes``
    (dtype -> bytes of the constants the library embeds) and ``matmul_macs`` (the matmuls' multiply-adds
    per step in the exported graph, ``graph``, and after ``prune-rows``, ``computed``).

    ``schedule=False`` builds with TVM's default CPU kernels (see ``stages``).

    The caller sets up the environment device builds need (``ssmc.compile.cuda.cuda_build_env``).
    """
    from tvm import relax

    say = progress or (lambda _msg: None)
    dump_dir = Path(dump_ir) if dump_ir is not None else None
    if dump_dir is not None:
        dump_dir.mkdir(parents=True, exist_ok=True)
    tvm_target = target.tvm_target()

    seconds: dict[str, float] = {}

    def timed(name: str, what: str, run: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        result = run()
        seconds[name] = round(time.perf_counter() - t0, 2)
        say(f"stage {name}: {what} ({seconds[name]:.1f} s)")
        return result

    from ssmc.compile.rows import matmul_macs
    from ssmc.compile.tuning import vector_lanes

    lanes = vector_lanes(tvm_target)
    mod = timed("import", "torch.export program -> Relax", lambda: import_program(program, lanes))
    _dump(dump_dir, 0, "import", mod)
    with tvm_target:
        macs: dict[str, int] = {}
        for i, stage in enumerate(stages(target, precision, schedule, executor), start=1):
            if stage.name == "prune-rows":
                macs["graph"] = matmul_macs(mod)
            mod = timed(stage.name, stage.what, lambda stage=stage, mod=mod: stage.run(mod))
            if stage.name == "prune-rows":
                macs["computed"] = matmul_macs(mod)
            _dump(dump_dir, i, stage.name, mod)
        constants = constant_bytes(mod)
        if precision == "int8" and not constants.get("int8"):
            raise RuntimeError("int8 build holds no int8 constants: the weights were folded to fp32")
        report = {"stage_seconds": seconds, "constant_bytes": constants, "matmul_macs": macs}
        if executor == "static":
            return mod, report
        executable = timed("build", f"code generation for {target.name}",
                           lambda: relax.build(mod, tvm_target, relax_pipeline=None))
    if dump_dir is not None:
        (dump_dir / f"{i + 1:02d}-build.txt").write_text(executable.stats(), encoding="utf-8")
    return executable, report
