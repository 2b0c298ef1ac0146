"""CPU schedules for the step's kernels: what the ``cpu-schedule`` stage of compile/pipeline.py applies.

TVM's default CPU lowering leaves every kernel as the loop nest ``LegalizeOps`` wrote: a batch-1 matmul
``x (1, K) @ W (K, N)`` reduces over ``k`` innermost for each output ``n``, reading ``W`` down a column
(stride N) one float at a time. Measured here: a 64x256 matmul took 30 µs that way and 0.7 µs
scheduled as below; the probe docs/design.md reports lost ~5x to ONNX Runtime on such matmuls. DLight's CPU
rules (``dlight.cpu.GEMV``) only handle weights stored (N, K) ("inner reduction"), while the folded
weights here are (K, N), so they declined every matmul.

The rules are deterministic and need no measurement (no tuning run, no database): they are a
function of each kernel's loop nest and the target's vector width, so a build is reproducible and
takes seconds. Per fused PrimFunc (after ``FuseOps``/``FuseTIR``):

1. **inline** every intermediate elementwise block into its consumer (``compute_inline``): a fused
   kernel becomes one loop nest per reduction plus one for its output, with no intermediate buffers;
2. **outer reduction** (``out[.., n] = sum_k x[.., k] * W[k, n]``: the matmuls with a (K, N) weight, fp32,
   fp16 or int8): the output's last axis ``n`` is split into a register chunk (up to 64 floats, 8 AVX2
   vectors) and vector lanes; loops are ordered ``chunk, k, lanes`` so each ``k`` broadcasts ``x[k]``
   and does one vector FMA per 8 outputs on a contiguous row of ``W``; with several rows (a window's
   tokens: a GEMM) a block of rows x vectors instead (``GEMM_VECTORS``: 6 x 2 where the rows divide by 6,
   else 4 x 2, 3 x 2 or 2 x 4), so each loaded weight vector is used once per row; the epilogue (bias,
   activation, int8 scale) is computed under the chunk loop, vectorised. Widths 8 does not divide (x_proj's
   132 outputs, DT's 60 keys in q·kᵀ) use 4-lane vectors, as many per row as full-width ones would fill;
3. **inner reduction** (the reduced axis is the last axis of an input: ``sum_n h[d, n] * C[n]``, norms'
   means): ``rfactor`` over a lane-wide split of that axis (4 lanes where 8 does not divide it) gives a
   vector of partial sums per output, then one short scalar reduction;
4. **elementwise** output blocks: the smallest suffix of loops whose extent is a multiple of the vector
   width is fused and vectorised.

A rule that does not fit a kernel (a schedule primitive raising, an extent that is not a multiple of
the lanes) leaves that kernel as it was: scheduling never changes what is computed, only loop order,
vectorisation and where intermediates live, so parity with PyTorch holds (tests/test_compile.py).

``fast_exp_te`` is the other half: the SSM's ``exp(Δ·A)`` is d_inner x d_state exponentials per token
and layer (8192 for DeMa), and TVM lowers ``exp`` to a scalar libm call per element. The ``fast-exp``
stage (``fast_exp_pass``) swaps every fp32 ``relax.exp`` for Cephes ``expf`` written as arithmetic
(range reduction with split ln 2, a degree-7 polynomial, about 1e-7 relative error), which
vectorises: DeMa's SSM update kernels went from ~32 µs to ~11 µs per step.

Measured with tools/bench/step_latency.py (docs/bench.md, before/after).
"""

from __future__ import annotations

from typing import Any

#: Floats per register chunk of a matmul's outputs (8 AVX2 vectors, 16 NEON vectors).
CHUNK_FLOATS = 64
#: Vectors per row of a GEMM's register block, by its rows: rows x vectors accumulators, 8 or more where the
#: registers allow, so the FMAs (4 cycles' latency, 2 a cycle) are not waiting on their own results. Two rows
#: take 4 vectors: DMM's recurrent step (R_t, s_t) on the AMD EPYC of docs/static-step.md, its 2 x 384 @ 384 x
#: 64 product 5.3 -> 3.8 µs a step at AVX2 (3.4 -> 3.2 at AVX-512; tools/bench/static_kernels.py). Six rows
#: take 2 (12 accumulators; 2 weight loads and 6 broadcasts per 12 FMAs): a window's 3K tokens when K is even.
#: With the softmax of ``fast_exp_pass``, DT's K = 20 window went 770 -> 657 µs and MambaDM's 562 -> 444
#: (interleaved ssmc_control runs, fresh Hopper-size models); DeMa's, whose time is its scan, did not move.
GEMM_VECTORS = {2: 4, 3: 2, 4: 2, 6: 2}


def vector_lanes(target: Any) -> int:
    """fp32 lanes of the target's vector registers: 16 with AVX-512, 8 with AVX2 (x86-64-v3), 4 otherwise
    (SSE, NEON).

    Read from the target's ``mcpu``/``mattr``, not from LLVM: ``llvm_get_vector_width`` answers for the
    build machine (512 bits here, for an x86-64-v3 target too).
    """
    attrs = {str(a).lstrip("+") for a in (target.attrs.get("mattr") or [])}
    cpu = str(target.attrs.get("mcpu") or "")
    triple = str(target.attrs.get("mtriple") or "")
    if not triple.startswith(("x86_64", "i686", "i386")) and cpu not in ("x86-64-v3", "x86-64-v4"):
        return 4
    if cpu == "x86-64-v4" or "avx512f" in attrs or cpu.startswith(("skylake-avx512", "icelake", "sapphire")):
        return 16
    if cpu == "x86-64-v3" or "avx2" in attrs or cpu.startswith(("haswell", "skylake", "znver")):
        return 8
    return 4


def _extent(sch: Any, loop: Any) -> int | None:
    from tvm import tirx

    ext = sch.get(loop).extent
    return int(ext) if isinstance(ext, tirx.IntImm) else None


def _fit_lanes(extent: int | None, lanes: int) -> int:
    """``lanes``, halved while it does not divide ``extent``, down to 4 (x_proj's 132 outputs, DT's 60 keys);
    the caller checks that the result divides."""
    while extent is not None and lanes > 4 and extent % lanes:
        lanes //= 2
    return lanes


def _vectorize_suffix(sch: Any, block: Any, lanes: int) -> bool:
    """Fuse the shortest suffix of ``block``'s loops whose extent is a multiple of ``lanes`` and
    vectorise it in lane-wide pieces. False (nothing changed) when no suffix fits."""
    loops = sch.get_loops(block)
    extents = [_extent(sch, lp) for lp in loops]
    if not loops or any(e is None for e in extents):
        return False
    product = 1
    for start in range(len(loops) - 1, -1, -1):
        product *= extents[start]
        if product >= lanes and product % lanes == 0:
            break
    else:
        return False
    fused = sch.fuse(*loops[start:]) if len(loops) - start > 1 else loops[start]
    _, inner = sch.split(fused, [None, lanes])
    sch.vectorize(inner)
    return True


def _block_vars(sch: Any, block: Any) -> tuple[list[Any], list[Any], Any]:
    """(spatial vars, reduction vars, block) of a block."""
    from tvm import tirx

    stmt = sch.get(block)
    spatial = [iv.var for iv in stmt.iter_vars if iv.iter_type == tirx.IterVar.DataPar]
    reduce = [iv.var for iv in stmt.iter_vars if iv.iter_type == tirx.IterVar.CommReduce]
    return spatial, reduce, stmt


def _uses(expr: Any, variables: list[Any]) -> bool:
    """Whether ``expr`` mentions any of ``variables``."""
    from tvm.tirx.analysis import undefined_vars

    return any(u.same_as(v) for u in undefined_vars(expr) for v in variables)


def _loop_of(sch: Any, block: Any, var: Any) -> Any | None:
    """The loop a block iter var is bound to (one loop var, as LegalizeOps writes them)."""
    from tvm import tirx
    from tvm.s_tir.dlight.analysis.common_analysis import get_sblockrealize

    realize = get_sblockrealize(sch, block)
    binding = dict(zip((iv.var for iv in realize.block.iter_vars), realize.iter_values, strict=True))
    value = next(v for k, v in binding.items() if k.same_as(var))
    for lp in sch.get_loops(block):
        if isinstance(value, tirx.Var) and value.same_as(sch.get(lp).loop_var):
            return lp
    return None


def _reduction_kind(sch: Any, block: Any) -> str | None:
    """``outer`` when an input runs along the output's last axis and a reduced one (a (K, N) weight:
    ``x[m, k] @ W[k, n]``), else ``inner`` when the largest input runs along a reduced axis
    (``sum_n h[d, n] * C[n]``), else None.

    The weight is looked for first, whatever its size: deciding by the largest input alone sent a window
    GEMM whose activations outgrow its weight (DMM at K = 40: x 120 x 384 against W 384 x 64) to the
    inner rule, whose rfactor reads W down its columns: 4.6 ms instead of ~0.1 ms. A packed weight
    (``Wp[n // panel, k, n % panel]``, compile/pipeline.py's pack-weights) counts as one: its last index
    is an expression of ``n`` (missing that sent the same GEMM to the inner rule again: 2.1 ms a call)."""
    import math

    from tvm import tirx

    spatial, reduce, stmt = _block_vars(sch, block)
    if not reduce or len(stmt.writes) != 1 or not stmt.reads:
        return None

    def size(region: Any) -> int:
        shape = region.source.ty.shape
        return math.prod(int(d) for d in shape) if all(isinstance(d, tirx.IntImm) for d in shape) else 0

    out_last = stmt.writes[0].region[-1].min
    if spatial and isinstance(out_last, tirx.Var) and out_last.same_as(spatial[-1]):
        for read in stmt.reads:  # the weight: its last index follows n (n itself, or n % panel when packed)
            last = read.region[-1].min
            if (_uses(last, spatial[-1:]) and not _uses(last, reduce)
                    and any(_uses(r.min, reduce) for r in read.region[:-1])):
                return "outer"
    largest = max(stmt.reads, key=size).region[-1].min
    if _uses(largest, reduce):
        return "inner"
    if spatial and isinstance(out_last, tirx.Var) and out_last.same_as(spatial[-1]) and _uses(largest, spatial[-1:]):
        return "outer"
    return None


def _schedule_outer_reduction(sch: Any, block: Any, lanes: int, consumers: list[Any], done: set[str]) -> Any:
    """Rule 2 (module docstring) on a copy of ``sch``: the new schedule, or None when it does not fit.
    Consumers moved under the matmul's chunk loop are added to ``done`` (by block name)."""
    if _reduction_kind(sch, block) != "outer":
        return None
    sch = sch.copy()
    spatial, reduce, _ = _block_vars(sch, block)
    loops = sch.get_loops(block)
    n_loop = _loop_of(sch, block, spatial[-1])
    r_loops = [_loop_of(sch, block, r) for r in reduce]
    if n_loop is None or any(lp is None for lp in r_loops):
        return None
    n = _extent(sch, n_loop)
    native, lanes = lanes, _fit_lanes(n, lanes)
    if n is None or n % lanes:
        return None
    others = [lp for lp in loops if not any(sch.get(lp).same_as(sch.get(x)) for x in [n_loop, *r_loops])]
    # a GEMM (several rows: a window's tokens): a block of ROWS rows x GEMM_VECTORS[ROWS] vectors, so each
    # weight vector loaded is used ROWS times; a GEMV (one row): a chunk of up to 64 outputs
    m = _extent(sch, others[-1]) if others else None
    # 6 rows x 2 vectors (12 accumulators) only at full width: a narrowed chunk takes more vectors per row
    row_blocks = (6, 4, 3, 2) if lanes == native else (4, 3, 2)
    rows = next((r for r in row_blocks if m is not None and m % r == 0), 1)
    # the register block's width in floats is the full-width one, so narrowed vectors take more of them
    # (DT's q·kᵀ over 60 keys: 4 rows x 3 four-float vectors, not 4 x 1)
    chunk_floats = GEMM_VECTORS[rows] * native if rows > 1 else CHUNK_FLOATS
    chunk = max(c for c in range(lanes, min(n, chunk_floats) + 1, lanes) if n % c == 0)
    outer, inner = sch.split(n_loop, [None, chunk])
    unrolled, vec = sch.split(inner, [None, lanes])
    if rows > 1:
        m_outer, m_inner = sch.split(others[-1], [None, rows])
        sch.reorder(*others[:-1], m_outer, outer, *r_loops, m_inner, unrolled, vec)
        sch.unroll(m_inner)
    else:
        sch.reorder(*others, outer, *r_loops, unrolled, vec)
    sch.vectorize(vec)
    sch.unroll(unrolled)
    sch.decompose_reduction(block, r_loops[0])
    for consumer in consumers:  # the epilogue (bias, activation, scale) per chunk, while it is in cache
        trial = sch.copy()
        try:
            trial.reverse_compute_at(consumer, outer)
            _vectorize_suffix(trial, consumer, lanes)
        except Exception:  # a consumer that does not follow the chunk: left to rule 4
            continue
        sch = trial
        done.add(sch.get(consumer).name_hint)
    return sch


def _schedule_inner_reduction(sch: Any, block: Any, lanes: int, _consumers: list[Any], _done: set[str]) -> Any:
    """Rule 3 (module docstring) on a copy of ``sch``: lane-wide partial sums with ``rfactor``."""
    if _reduction_kind(sch, block) != "inner":
        return None
    sch = sch.copy()
    _, reduce, stmt = _block_vars(sch, block)
    r_loop = _loop_of(sch, block, reduce[-1])
    loops = sch.get_loops(block)
    if r_loop is None or not sch.get(loops[-1]).same_as(sch.get(r_loop)):
        return None
    extent = _extent(sch, r_loop)
    lanes = _fit_lanes(extent, lanes)  # e.g. a softmax over DT's 60 keys: 4-wide partial sums
    if extent is None or extent % lanes or extent == lanes:
        return None
    _, inner = sch.split(r_loop, [None, lanes])
    rf = sch.rfactor(inner, factor_axis=len(stmt.writes[0].region))
    rf_loops = sch.get_loops(rf)
    sch.vectorize(rf_loops[-1])
    sch.decompose_reduction(rf, rf_loops[-2])
    return sch


def _inline_elementwise(sch: Any, infos: list[Any]) -> list[Any]:
    """Rule 1: ``compute_inline`` every elementwise block that feeds another block; the rest, in order.

    Only producers are inlined into their consumers: ``reverse_compute_inline`` of a bias add into a
    matmul whose reduction has extent 1 (normalised away) computed the bias twice in TVM 0.27.
    """
    remaining = list(infos)
    progress = True
    while progress:
        progress = False
        for info in remaining:
            if not info.is_injective():
                continue
            try:
                sch.compute_inline(info.block_rv)
            except Exception:  # an output block, or one that cannot be inlined
                continue
            remaining.remove(info)
            progress = True
            break
    return remaining


def schedule_prim_func(func: Any, lanes: int) -> Any | None:
    """``func`` scheduled by the rules of this module, or None when no rule changed it."""
    from tvm import s_tir
    from tvm.s_tir.dlight.analysis import normalize_prim_func

    sch = s_tir.Schedule(func)
    infos = normalize_prim_func(sch)
    if infos is None:
        return None
    before = len(infos)
    infos = _inline_elementwise(sch, infos)
    changed = len(infos) != before
    done: set[str] = set()
    for i, info in enumerate(infos):
        if info.name in done:
            continue
        if info.is_reduction():
            consumers = [b.block_rv for b in infos[i + 1:] if b.is_injective()]
            for rule in (_schedule_outer_reduction, _schedule_inner_reduction):
                try:
                    scheduled = rule(sch, info.block_rv, lanes, consumers, done)
                except Exception:  # the rule does not fit this kernel after all: try the next
                    scheduled = None
                if scheduled is not None:
                    sch, changed = scheduled, True
                    break
        elif info.is_injective():
            trial = sch.copy()
            try:
                if _vectorize_suffix(trial, info.block_rv, lanes):
                    sch, changed = trial, True
            except Exception:  # a loop nest the vectoriser refuses: left as it was
                pass
    return sch.mod["main"] if changed else None


def packed_gemm_primfunc(x_shape: list[int], n: int, panel: int, weight_dtype: str = "float32") -> Any:
    """``out[..., m, j*panel + c] = sum_k x[..., m, k] * float(Wp[j, k, c])``: a matmul whose (K, N) weight is
    stored in ``panel``-wide column panels (compile/pipeline.py's ``pack-weights`` stage), fp32 or int8 (widened
    to fp32 in the loop), fp32 activations and result. Rule 2 schedules it as any (K, N) matmul: its register
    block is one panel wide, so each ``k`` reads ``panel`` consecutive values and a panel is read front to back.
    Marked out-elementwise-fusable, so the bias, activation or int8 scale after it fuse into it as they do
    into a plain matmul."""
    from tvm import te, tirx

    def i64(*dims: int) -> tuple[Any, ...]:  # int64 extents, as LegalizeOps writes them (FuseTIR compares)
        return tuple(tirx.IntImm("int64", int(d)) for d in dims)

    *lead, k = x_shape
    x = te.placeholder(i64(*x_shape), "float32", name="x")
    w = te.placeholder(i64(n // panel, k, panel), weight_dtype, name="w")
    r = te.reduce_axis((tirx.IntImm("int64", 0), tirx.IntImm("int64", k)), "k")

    def weight(i: Any) -> Any:
        value = w[i // panel, r, i % panel]
        return value if weight_dtype == "float32" else value.astype("float32")

    out = te.compute(i64(*lead, n), lambda *i: te.sum(x[(*i[:-1], r)] * weight(i[-1]), axis=r), name="matmul")
    func = te.create_prim_func([x, w, out]).with_attr("op_pattern", 4)  # kOutEWiseFusable
    return func.without_attr("global_symbol")  # private: the module names it


def cpu_schedule_pass(lanes: int) -> Any:
    """A module pass applying ``schedule_prim_func`` to every unscheduled PrimFunc."""
    import tvm
    from tvm import tirx

    @tvm.transform.module_pass(opt_level=0, name="SsmcCpuSchedule")
    def apply(mod: Any, _ctx: Any) -> Any:
        updates = {}
        for gv, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or func.attrs and func.attrs.get("tirx.is_scheduled"):
                continue
            scheduled = schedule_prim_func(func, lanes)
            if scheduled is not None:
                updates[gv] = scheduled.with_attr("tirx.is_scheduled", True)
        for gv, func in updates.items():
            mod[gv] = func
        return mod

    return apply


#: Cephes ``expf``: ln 2 split for an exact range reduction, and the minimax polynomial of e^f on
#: [-ln2/2, ln2/2]; max relative error about 2 ulp in fp32.
_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4
_EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1,
             5.0000001201e-1)
#: Arguments are clamped to [_EXP_LO, _EXP_HI] so that 2^n stays a normal float (n in [-126, 127]): below,
#: exp gives ~1.2e-38 (fp32's smallest normal, e^-87.34) instead of a denormal or 0; above, e^88 = 1.7e38
#: instead of up to 3.4e38 (fp32's largest). A step's arguments (Δ·A <= 0, softplus inputs) stay far inside.
_EXP_LO, _EXP_HI = -87.33, 88.0


def _exp_expr(x: Any, dtype: str) -> Any:
    """Cephes ``expf`` of the PrimExpr ``x`` as arithmetic (see ``fast_exp_te``)."""
    from tvm import tirx

    const = lambda c: tirx.const(c, dtype)  # noqa: E731
    # v, n and f are let-bound: written as a tree, f appears 8 times in the polynomial and v and n in
    # every f, and inlined into a fused kernel the tree was evaluated whole (DeMa's SSM update kernels
    # took ~3x the arithmetic they need); bound once, each is computed once per element
    v = tirx.Var("exp_v", dtype)
    n = tirx.Var("exp_n", dtype)
    f = tirx.Var("exp_f", dtype)
    p = const(_EXP_POLY[0])
    for c in _EXP_POLY[1:]:
        p = p * f + const(c)
    y = (p * f * f + f + const(1.0)) * tirx.reinterpret(dtype, (n.astype("int32") + 127) << 23)
    body = tirx.Let(f, v - n * const(_LN2_HI) - n * const(_LN2_LO), y)
    body = tirx.Let(n, tirx.floor(v * const(1.4426950408889634) + const(0.5)), body)
    return tirx.Let(v, tirx.max(tirx.min(x, const(_EXP_HI)), const(_EXP_LO)), body)


def fast_exp_te(x: Any) -> Any:
    """``exp`` as arithmetic (TE compute): Cephes range reduction ``x = n ln2 + f``, a degree-7
    polynomial for ``e^f``, and ``2^n`` built in the exponent bits. Vectorises, unlike the libm call
    ``exp`` lowers to. ``topi.fast_exp`` is the same polynomial with a one-constant reduction
    (``f = x - n * ln2``), which loses accuracy as |x| grows; the split constant here does not.
    """
    from tvm import te

    return te.compute(x.shape, lambda *i: _exp_expr(x(*i), x.dtype), name="fast_exp", tag="elemwise")


def fast_sigmoid_te(x: Any) -> Any:
    """``sigmoid(x) = 1 / (1 + e^-x)`` with ``e^-x`` from ``_exp_expr``; its clamp keeps ``e^-x`` finite, so a
    very negative x gives about 6e-39 rather than 0. NaN gives NaN."""
    from tvm import te, tirx

    one = tirx.const(1.0, x.dtype)

    def compute(*i: Any) -> Any:
        # NaN stays NaN (the clamp inside the exp would hide it): tested on the bits, since the
        # simplifier folds ``v == v`` to true
        v = tirx.Var("sigmoid_x", x.dtype)
        is_nan = (tirx.reinterpret("int32", v) & tirx.const(0x7FFFFFFF, "int32")) > tirx.const(0x7F800000, "int32")
        return tirx.Let(v, x(*i), tirx.Select(is_nan, v, one / (one + _exp_expr(-v, x.dtype))))

    return te.compute(x.shape, compute, name="fast_sigmoid", tag="elemwise")


def fast_silu_te(x: Any) -> Any:
    """``silu(x) = x · sigmoid(x)`` (Mamba's activation and gate)."""
    from tvm import te, tirx

    one = tirx.const(1.0, x.dtype)

    def compute(*i: Any) -> Any:
        v = tirx.Var("silu_x", x.dtype)
        return tirx.Let(v, x(*i), v / (one + _exp_expr(-v, x.dtype)))

    return te.compute(x.shape, compute, name="fast_silu", tag="elemwise")


#: Cephes ``logf``: the minimax polynomial of log(1 + m) for m in [sqrt(1/2) - 1, sqrt(2) - 1].
_LOG_POLY = (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
             -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1)


def fast_log_te(x: Any) -> Any:
    """``log`` as arithmetic (TE compute), Cephes ``logf``: ``x = 2^e · m`` read from the bits (m in
    [sqrt(1/2), sqrt(2))), a degree-9 polynomial for log(m), ``e · ln 2`` added with ln 2 split. About
    1 ulp on normal positive floats; 0 gives -inf, negatives and NaN give NaN, +inf gives +inf, as libm.
    Subnormal inputs are read as 0 (-inf): the zoo's logs are softplus's log(1 + e^x) >= 0.
    In the step: softplus (the SSM's Δ), whose ``log`` was a libm call per element.
    """
    from tvm import te, tirx

    dtype = x.dtype
    const = lambda c: tirx.const(c, dtype)  # noqa: E731

    def compute(*index: Any) -> Any:
        v = tirx.Var("log_v", dtype)
        bits = tirx.Var("log_bits", "int32")
        e0 = tirx.Var("log_e0", dtype)  # exponent for the mantissa in [0.5, 1)
        e = tirx.Var("log_e", dtype)
        m0 = tirx.Var("log_m0", dtype)  # mantissa in [0.5, 1)
        m = tirx.Var("log_m", dtype)  # m0 or 2·m0, minus 1: in [sqrt(1/2) - 1, sqrt(2) - 1)
        z = tirx.Var("log_z", dtype)
        p = const(_LOG_POLY[0])
        for c in _LOG_POLY[1:]:
            p = p * m + const(c)
        y = m * z * p + e * const(_LN2_LO) - const(0.5) * z + m + e * const(_LN2_HI)
        # special values from let-bound bit patterns of the input: TVM's C code generator prints inf/nan
        # constants as ``inff``/``nanf`` and a reinterpreted constant as ``*(float *)&(k)``, which no C
        # compiler takes (the --emit c bundle). ±0 -> sign | 0xff800000 = -inf; negatives, NaN -> NaN
        # (quiet bit set); +inf -> +inf
        neg_inf = tirx.Var("log_neg_inf", "int32")
        nan = tirx.Var("log_nan", "int32")
        special = tirx.Select(v == const(0.0), tirx.reinterpret(dtype, neg_inf), tirx.reinterpret(dtype, nan))
        y = tirx.Select(v > const(0.0), tirx.Select(v > const(3.4028234663852886e38), v, y), special)
        y = tirx.Let(neg_inf, bits | tirx.const(-0x800000, "int32"), tirx.Let(nan, bits | tirx.const(0x7FC00000, "int32"), y))
        body = tirx.Let(z, m * m, y)
        small = m0 < const(0.7071067811865476)
        body = tirx.Let(m, tirx.Select(small, m0 + m0 - const(1.0), m0 - const(1.0)), body)
        body = tirx.Let(e, tirx.Select(small, e0 - const(1.0), e0), body)
        body = tirx.Let(m0, tirx.reinterpret(dtype, (bits & tirx.const(0x007FFFFF, "int32"))
                                             | tirx.const(0x3F000000, "int32")), body)
        body = tirx.Let(e0, ((bits >> 23) & tirx.const(0xFF, "int32")).astype(dtype) - const(126.0), body)
        body = tirx.Let(bits, tirx.reinterpret("int32", v), body)
        return tirx.Let(v, x(*index), body)

    return te.compute(x.shape, compute, name="fast_log", tag="elemwise")


#: Abramowitz & Stegun 7.1.26: erf(z) = 1 - t·P(t)·e^(-z²), t = 1 / (1 + p·z), z >= 0, absolute error
#: at most 1.5e-7 (their bound). P's coefficients lowest degree first, then p.
_ERF_AS = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
_ERF_P = 0.3275911


def fast_gelu_te(x: Any) -> Any:
    """``gelu(x) = x · Φ(x) = x/2 · (1 + erf(x/√2))`` (the exact GELU, torch's default) as arithmetic:
    erf by A&S 7.1.26 (one division, a degree-5 polynomial and ``_exp_expr``), so it vectorises where
    ``erf`` lowers to a libm call per element (DT's and MambaDM's MLPs: measured 30 % of DT's K = 20
    window step, tools/bench/static_kernels.py). Absolute error of erf <= 1.5e-7, so gelu's is
    <= |x| · 7.5e-8. With ``E = t·P(t)·e^(-z²)``, z = |x|/√2: gelu = x·(1 - E/2) for x >= 0 and x·E/2
    below. Inputs below -10 give 0 (gelu(-10) = -7.7e-23; -inf gives 0, not NaN); NaN gives NaN."""
    from tvm import te, tirx

    dtype = x.dtype
    const = lambda c: tirx.const(c, dtype)  # noqa: E731

    def compute(*i: Any) -> Any:
        v = tirx.Var("gelu_x", dtype)
        z = tirx.Var("gelu_z", dtype)
        t = tirx.Var("gelu_t", dtype)
        e = tirx.Var("gelu_e", dtype)
        poly = const(_ERF_AS[-1])
        for c in reversed(_ERF_AS[:-1]):
            poly = poly * t + const(c)
        half = const(0.5)
        y = tirx.Select(v >= const(0.0), v * (const(1.0) - half * e),
                        tirx.Select(v < const(-10.0), const(0.0), half * v * e))
        body = tirx.Let(e, t * poly * _exp_expr(-(z * z), dtype), y)
        body = tirx.Let(t, const(1.0) / (const(1.0) + const(_ERF_P) * z), body)
        body = tirx.Let(z, tirx.abs(v) * const(0.7071067811865476), body)
        return tirx.Let(v, x(*i), body)

    return te.compute(x.shape, compute, name="fast_gelu", tag="elemwise")


#: Below this, ``x - max`` gives 0 in ``softmax_exp_te``: e^-80 = 1.8e-35, so every weight it keeps, divided by
#: a row sum of at most a few thousand, is still a normal float (no denormal operands for the matmul after).
_SOFTMAX_CUT = -80.0


def softmax_exp_te(x: Any) -> Any:
    """First half of the fast-exp stage's softmax: ``e = exp(x - max(x))`` along the last axis (TE compute), the exp from
    ``_exp_expr`` and exactly 0 where ``x - max < _SOFTMAX_CUT`` (a masked ``-inf`` key among them)."""
    from tvm import te, tirx

    *lead, n = x.shape
    k = te.reduce_axis((0, n), name="k")
    mx = te.compute(lead, lambda *i: te.max(x[(*i, k)], axis=k), name="softmax_max")
    zero = tirx.const(0.0, x.dtype)

    def compute(*i: Any) -> Any:
        d = tirx.Var("softmax_d", x.dtype)
        return tirx.Let(d, x(*i) - mx(*i[:-1]),
                        tirx.Select(d < tirx.const(_SOFTMAX_CUT, x.dtype), zero, _exp_expr(d, x.dtype)))

    return te.compute(x.shape, compute, name="softmax_exp")


def softmax_normalise_te(e: Any) -> Any:
    """Second half of the fast-exp stage's softmax: ``e / sum(e)`` along the last axis."""
    from tvm import te

    *lead, n = e.shape
    k = te.reduce_axis((0, n), name="k")
    total = te.compute(lead, lambda *i: te.sum(e[(*i, k)], axis=k), name="softmax_sum")
    return te.compute(e.shape, lambda *i: e(*i) / total(*i[:-1]), name="softmax_normalise")


#: relax ops the ``fast-exp`` stage replaces (fp32 only), and their TE arithmetic.
FAST_MATH = {"relax.exp": (fast_exp_te, "fast_exp"), "relax.sigmoid": (fast_sigmoid_te, "fast_sigmoid"),
             "relax.nn.silu": (fast_silu_te, "fast_silu"), "relax.log": (fast_log_te, "fast_log"),
             "relax.nn.gelu": (fast_gelu_te, "fast_gelu")}


def fast_exp_pass() -> Any:
    """A module pass: every fp32 ``relax.exp``, ``sigmoid``, ``nn.silu``, ``log`` and ``nn.gelu`` becomes its
    arithmetic form in ``FAST_MATH`` (legalised like any TE op), so that it vectorises instead of calling
    libm per element: the SSM's exp(Δ·A), softplus's exp and log (Δ), the sigmoids of SiLU and Mamba's
    gate, and the erf of DT's and MambaDM's GELU.

    TVM's ``relax.transform.FastMathTransform`` also does this (with ``topi.fast_exp``), but swaps
    ``tanh`` (the action head) for a rational approximation too; measured here, the two together
    doubled the compiled step's error against PyTorch (3e-6 -> 7e-6 of the 1e-5 budget).

    An fp32 ``nn.softmax`` over the last axis (DT's and DM-H's attention) becomes two kernels,
    ``softmax_exp_te`` then ``softmax_normalise_te``: LegalizeOps' softmax evaluates libm ``exp`` twice per
    element, once inside the scalar sum and once in the output, because the schedule inlines the exp into
    both; materialised once, the exp vectorises. DT's K = 20 window spent 48 µs a step in its two 60 x 60
    softmaxes that way (tools/bench/static_kernels.py --models dt --mode window).
    """
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class _Exp(PyExprMutator):
        def visit_call_(self, call: Any) -> Any:
            call = super().visit_call_(call)
            if (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.softmax"
                    and str(call.ty.dtype) == "float32" and int(call.attrs.axis) in (-1, call.ty.ndim - 1)):
                e = self.builder_.emit(self.builder_.call_te(softmax_exp_te, call.args[0],
                                                             primfunc_name_hint="softmax_exp"))
                return self.builder_.call_te(softmax_normalise_te, e, primfunc_name_hint="softmax_normalise")
            if isinstance(call.op, tvm.ir.Op) and call.op.name in FAST_MATH and str(call.ty.dtype) == "float32":
                te_func, name = FAST_MATH[call.op.name]
                return self.builder_.call_te(te_func, call.args[0], primfunc_name_hint=name)
            return call

    @tvm.transform.module_pass(opt_level=0, name="SsmcFastExp")
    def apply(mod: Any, _ctx: Any) -> Any:
        rewriter = _Exp(mod)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
        return rewriter.builder_.get()

    return apply
