"""The CPU schedules of compile/tuning.py: they apply, and they change nothing but speed.

Parity of whole compiled steps with PyTorch (fp32 1e-5) is tests/test_compile.py's job, and it runs the
scheduled pipeline; here each scheduled kernel is checked against the same kernel as TVM's default
lowering leaves it, on random inputs, and ``fast_exp_te`` against numpy's exp. No timing: speed is
measured by tools/bench/step_latency.py (docs/bench.md), never asserted.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssmc.compile.export import export_step
from ssmc.compile.pipeline import import_program, lower_step, stage_names, stages
from ssmc.compile.quantize import quantize_int8
from ssmc.compile.tuning import fast_exp_te, schedule_prim_func, vector_lanes
from ssmc.targets import load_target
from ssmc.train.models import build_model

OBS, ACT = 5, 2
SMALL = {  # as tests/test_compile.py: one layer, tiny widths; widths multiple of 8 so the rules engage
    "dt": {"K": 4, "hidden": 32, "n_layer": 1, "max_ep_len": 50, "dropout": 0.0},
    "dema": {"K": 4, "embedding_dim": 32, "d_model": 16, "n_layer": 1, "d_state": 8},
    "dema-rnn": {"embedding_dim": 32, "d_model": 16, "n_layer": 1, "d_state": 8},
    "dmm": {"K": 4, "hidden": 16, "n_layer": 1, "window": 3, "d_state": 8, "dropout": 0.0},
}
EXTRA = {"obs_mean": [0.5, -1.0, 2.0, 0.0, 3.0], "obs_std": [1.5, 0.5, 2.0, 1.0, 4.0], "rtg_scale": 1e-3,
         "target_return": 3000.0}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _fused_module(kind: str, precision: str = "fp32"):
    """The step's module after ``fuse`` (what ``cpu-schedule`` receives) and the host TVM target."""
    torch.manual_seed(0)
    model = build_model(kind, OBS, ACT, **SMALL[kind])
    exported = export_step(model, EXTRA, quantize=quantize_int8 if precision == "int8" else None)
    target = load_target("host")
    mod = import_program(exported.program)
    with target.tvm_target():
        for stage in stages(target, precision):
            if stage.name == "cpu-schedule":
                break
            mod = stage.run(mod)
    return mod, target.tvm_target()


def _run_kernel(func, target, args: list[np.ndarray]) -> list[np.ndarray]:
    import tvm

    lib = tvm.tirx.build(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)
    tensors = [tvm.runtime.tensor(a.copy()) for a in args]
    lib(*tensors)
    return [t.numpy() for t in tensors]


def _random_args(func, rng: np.random.Generator) -> list[np.ndarray]:
    out = []
    for p in func.params:
        shape, dtype = [int(d) for d in p.shape], str(p.dtype)
        if dtype.startswith("float"):
            out.append(rng.uniform(-1.0, 1.0, shape).astype(dtype))
        elif dtype == "bool":
            out.append(rng.integers(0, 2, shape).astype(bool))
        else:
            out.append(rng.integers(0, 2, shape).astype(dtype))  # in bounds as gather indices
    return out


def test_cpu_stages_are_named_and_only_on_cpu() -> None:
    for precision in ("fp32", "fp16", "int8"):
        names = stage_names(load_target("host"), precision)
        assert names.index("fast-exp") < names.index("legalize")
        assert names.index("fuse") < names.index("cpu-schedule") < names.index("lower")
        assert "fast-exp" not in stage_names(load_target("host"), precision, schedule=False)
        assert "cpu-schedule" not in stage_names(load_target("host"), precision, schedule=False)
    cuda = stage_names(load_target("jetson-orin"), "fp16")
    assert "gpu-schedule" in cuda and "cpu-schedule" not in cuda and "fast-exp" not in cuda


def test_vector_lanes_follow_the_target_not_the_build_machine() -> None:
    from tvm.target import Target

    assert vector_lanes(load_target("host").tvm_target()) == 8  # x86-64-v3: AVX2
    assert vector_lanes(load_target("rpi5").tvm_target()) == 4  # NEON
    assert vector_lanes(Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64-v4"})) == 16
    assert vector_lanes(Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu"})) == 4


@pytest.mark.parametrize("kind,precision", [("dema-rnn", "fp32"), ("dmm", "int8"), ("dt", "fp32")])
def test_scheduled_kernels_compute_what_the_default_ones_compute(kind, precision) -> None:
    from tvm import tirx

    mod, target = _fused_module(kind, precision)
    lanes = vector_lanes(target)
    rng = np.random.default_rng(0)
    scheduled = 0
    matmuls = []
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        new = schedule_prim_func(func, lanes)
        if "matmul" in gv.name_hint or "packed_gemm" in gv.name_hint:  # packed_gemm: the pack-weights stage's
            matmuls.append((gv.name_hint, new))
        if new is None:
            continue
        scheduled += 1
        assert not tvm_structural_equal(new, func)
        args = _random_args(func, rng)
        want, got = _run_kernel(func, target, args), _run_kernel(new, target, args)
        for w, g in zip(want, got, strict=True):
            w64, g64 = w.astype(np.float64), g.astype(np.float64)
            assert np.all(np.isfinite(g64) == np.isfinite(w64)), gv.name_hint
            scale = max(np.abs(w64[np.isfinite(w64)]).max(initial=0.0), 1e-6)
            err = np.abs(np.where(np.isfinite(w64), g64 - w64, 0.0)).max(initial=0.0) / scale
            assert err <= 1e-5, f"{kind} {precision} {gv.name_hint}: {err:.2e}"
    assert scheduled >= 5, f"only {scheduled} kernels scheduled"
    # every matmul against a (K, N) weight whose N is a multiple of 4 is rewritten: vectorised FMAs
    vectorised = [name for name, new in matmuls if new is not None and "T.vectorized" in new.script()]
    assert vectorised and len(vectorised) >= len(matmuls) // 2, (matmuls, vectorised)


def tvm_structural_equal(a, b) -> bool:
    import tvm_ffi  # TVM 0.27: structural_equal moved from tvm.ir to tvm_ffi

    return bool(tvm_ffi.structural_equal(a, b))


def test_schedule_leaves_unfit_kernels_alone() -> None:
    from tvm.script import tirx as T

    @T.prim_func(private=True, s_tir=True)
    def odd(x: T.Buffer((T.int64(1), T.int64(3)), "float32"), w: T.Buffer((T.int64(3), T.int64(5)), "float32"),
            y: T.Buffer((T.int64(1), T.int64(5)), "float32")):
        for i, j, k in T.grid(T.int64(1), T.int64(5), T.int64(3)):
            with T.sblock("matmul"):
                vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                with T.init():
                    y[vi, vj] = T.float32(0.0)
                y[vi, vj] = y[vi, vj] + x[vi, vk] * w[vk, vj]

    assert schedule_prim_func(odd, 8) is None  # N = 5: no vector width fits, nothing changes


def test_fast_exp_matches_numpy() -> None:
    import tvm
    from tvm import te

    x = te.placeholder((4096,), "float32", name="x")
    y = fast_exp_te(x)
    func = te.create_prim_func([x, y]).with_attr("global_symbol", "main")
    lib = tvm.tirx.build(tvm.IRModule({"main": func}), target=load_target("host").tvm_target())
    xs = np.concatenate([np.linspace(-87.0, 88.0, 4000), [-1e30, -200.0, -88.0, 0.0, 89.0, 1e30],
                         np.zeros(90)]).astype(np.float32)
    out = tvm.runtime.tensor(np.zeros_like(xs))
    lib(tvm.runtime.tensor(xs), out)
    with np.errstate(over="ignore"):
        got, want = out.numpy().astype(np.float64), np.exp(xs.astype(np.float64))
    normal = (xs > -87.0) & (xs <= 88.0)
    assert np.all(np.isfinite(got))
    assert np.abs(got[normal] / want[normal] - 1).max() < 5e-7  # a few fp32 ulp
    assert np.all(got[xs < -87.4] < 1.2e-38)  # flushed to (almost) zero, never negative or NaN
    assert np.all(got >= 0) and got.max() <= np.exp(88.0) * (1 + 1e-6)  # saturates at e^88


def _run_elementwise(te_func, xs: np.ndarray) -> np.ndarray:
    import tvm
    from tvm import te

    x = te.placeholder(xs.shape, "float32", name="x")
    func = te.create_prim_func([x, te_func(x)]).with_attr("global_symbol", "main")
    lib = tvm.tirx.build(tvm.IRModule({"main": func}), target=load_target("host").tvm_target())
    out = tvm.runtime.tensor(np.zeros_like(xs))
    lib(tvm.runtime.tensor(xs), out)
    return out.numpy().astype(np.float64)


def test_fast_log_matches_numpy_and_keeps_ieee_special_values() -> None:
    from ssmc.compile.tuning import fast_log_te

    xs = np.concatenate([np.exp(np.linspace(-85.0, 88.0, 4000)), 1 + np.logspace(-7, -1, 500),
                         1 - np.logspace(-7, -1, 500)]).astype(np.float32)
    got, want = _run_elementwise(fast_log_te, xs), np.log(xs.astype(np.float64))
    assert np.abs(got - want).max() <= 8e-6  # under one fp32 ulp of |log x| <= 88
    assert np.all(np.abs(got - want) <= 2e-7 * np.maximum(np.abs(want), 1e-6) + 1e-12)
    special = np.array([0.0, -0.0, -1.0, -np.inf, np.inf, np.nan], np.float32)
    got = _run_elementwise(fast_log_te, special)
    assert got[0] == -np.inf and got[1] == -np.inf and got[4] == np.inf
    assert np.all(np.isnan(got[[2, 3, 5]]))


def test_fast_sigmoid_and_silu_match_numpy_and_propagate_nan() -> None:
    from ssmc.compile.tuning import fast_sigmoid_te, fast_silu_te

    xs = np.concatenate([np.linspace(-80.0, 80.0, 4001), [np.nan, np.inf, -np.inf]]).astype(np.float32)
    x64 = xs.astype(np.float64)
    with np.errstate(all="ignore"):
        sig, silu = 1 / (1 + np.exp(-x64)), x64 / (1 + np.exp(-x64))
    finite = np.isfinite(xs)
    for te_func, want in ((fast_sigmoid_te, sig), (fast_silu_te, silu)):
        got = _run_elementwise(te_func, xs)
        big = finite & (np.abs(want) > 1e-30)
        assert np.abs(got[big] - want[big]).max() <= 2e-7 * np.abs(want[big]).max()
        assert np.isnan(got[-3])  # NaN in, NaN out (the exp's clamp must not hide it)
    assert _run_elementwise(fast_sigmoid_te, xs)[-2] == 1.0


def test_default_and_scheduled_builds_agree(tmp_path) -> None:
    """The benchmark's "before" build (schedule=False) and the shipped one compute the same step."""
    import tvm
    from tvm import relax

    torch.manual_seed(0)
    model = build_model("dema-rnn", OBS, ACT, **SMALL["dema-rnn"])
    exported = export_step(model, EXTRA)
    target = load_target("host")
    args = [np.full((1, OBS), 0.3, np.float32), np.full((1, 1), 2000.0, np.float32)]
    args += [np.random.default_rng(1).uniform(-1, 1, s.shape).astype(s.dtype) for s in exported.state]
    outs = []
    for schedule in (False, True):
        executable, _ = lower_step(exported.program, target, "fp32", schedule=schedule)
        path = tmp_path / f"lib-{schedule}.so"
        executable.export_library(str(path))
        vm = relax.VirtualMachine(tvm.runtime.load_module(str(path)), tvm.cpu())
        outs.append([o.numpy() for o in vm["main"](*(tvm.runtime.tensor(a) for a in args))])
    for a, b in zip(*outs, strict=True):
        assert np.abs(a - b).max() <= 1e-5 * max(np.abs(a).max(), 1e-6)


def test_fast_gelu_matches_the_exact_gelu_and_propagates_nan() -> None:
    """fast_gelu (A&S 7.1.26 erf) against torch's exact GELU in fp64: absolute error <= |x|·1e-7 + 1e-7
    (erf's 1.5e-7 bound, halved, plus fp32 rounding); NaN in, NaN out; ±inf and very negative inputs."""
    from ssmc.compile.tuning import fast_gelu_te

    xs = np.concatenate([np.linspace(-12.0, 12.0, 8001), np.logspace(-8, 2, 500), -np.logspace(-8, 2, 500),
                         [0.0, -0.0, 1e30, np.nan, np.inf, -np.inf]]).astype(np.float32)
    got = _run_elementwise(fast_gelu_te, xs)
    want = torch.nn.functional.gelu(torch.from_numpy(xs.astype(np.float64))).numpy()
    finite = np.isfinite(xs)
    err = np.abs(got[finite] - want[finite])
    assert np.all(err <= 1e-7 * np.abs(xs[finite].astype(np.float64)) + 1e-7), err.max()
    assert np.isnan(got[-3]) and got[-2] == np.inf and got[-1] == 0.0
    assert got[xs == np.float32(1e30)][0] == np.float32(1e30)


@pytest.mark.parametrize("rows", [60, 120, 480])
def test_gemm_rule_takes_packed_weights_whatever_the_activation_size(rows) -> None:
    """A packed GEMM is an outer reduction (register-blocked over the weight's panels) even when the
    activations outgrow the weight (DMM's x_proj at K >= 40: x 120 x 384 against 384 x 64): sent to the
    inner rule it took 2.1 ms a call instead of ~0.1 (tools/bench/window_step.py, DMM K = 40)."""
    from tvm import s_tir
    from tvm.s_tir.dlight.analysis import normalize_prim_func

    from ssmc.compile.tuning import _reduction_kind, packed_gemm_primfunc, schedule_prim_func

    func = packed_gemm_primfunc([rows, 384], 64, 16)
    sch = s_tir.Schedule(func)
    assert _reduction_kind(sch, normalize_prim_func(sch)[0].block_rv) == "outer"
    assert "rf" not in schedule_prim_func(func, 8).script()  # no rfactor buffer: the GEMM rule, not rule 3


@pytest.mark.parametrize("rows,block_rows,vectors", [(2, 2, 4), (3, 3, 2), (4, 4, 2), (8, 4, 2), (6, 6, 2), (60, 6, 2)])
def test_gemm_register_block_keeps_eight_accumulators_where_it_can(rows, block_rows, vectors) -> None:
    """The GEMM rule's register block is GEMM_VECTORS[rows] vectors wide per row: 2 rows x 4 vectors (8
    accumulators; 2 x 2 left the FMAs waiting on their own latency), 3 or 4 rows x 2, and 6 rows x 2 (12
    accumulators) where the rows divide by 6 (a window's 3K tokens for even K); the block's rows and
    vectors are the two unrolled loops, and the scheduled kernel still computes x @ W."""
    import tvm

    from ssmc.compile.tuning import GEMM_VECTORS, packed_gemm_primfunc, schedule_prim_func

    assert GEMM_VECTORS[block_rows] == vectors
    func = schedule_prim_func(packed_gemm_primfunc([rows, 48], 128, 16), 8)
    script = func.script()
    assert f"T.unroll(T.int64({block_rows}))" in script and f"T.unroll(T.int64({vectors}))" in script, script
    rng = np.random.default_rng(rows)
    x, w = rng.standard_normal((rows, 48)).astype(np.float32), rng.standard_normal((48, 128)).astype(np.float32)
    lib = tvm.tirx.build(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                         target=load_target("host").tvm_target())
    out = tvm.runtime.tensor(np.zeros((rows, 128), np.float32))
    lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(w.reshape(48, 8, 16).transpose(1, 0, 2).copy()), out)
    np.testing.assert_allclose(out.numpy(), x @ w, rtol=1e-5, atol=1e-5)


def _loop(script: str, kind: str, extent: int) -> bool:
    """Whether ``script`` has a ``T.<kind>`` loop of ``extent`` (int32 or int64 extents)."""
    return f"T.{kind}({extent})" in script or f"T.{kind}(T.int64({extent}))" in script


def test_narrow_widths_keep_vectors_and_the_register_block() -> None:
    """Extents that 8 does not divide (DT's 60 keys) get 4-float vectors, not scalar code: q·kᵀ (an outer
    reduction over a (128, 60) kᵀ) keeps a 4 rows x 3 vectors block (12 accumulators; it was 4 x 1), and a
    sum over 60 gets 4-wide partial sums (rfactor); both still compute what they did."""
    from tvm import te

    from ssmc.compile.tuning import schedule_prim_func

    rng = np.random.default_rng(0)
    q, kt = te.placeholder((60, 128), "float32", name="q"), te.placeholder((128, 60), "float32", name="kt")
    r = te.reduce_axis((0, 128), name="r")
    scores = te.compute((60, 60), lambda i, j: te.sum(q[i, r] * kt[r, j], axis=r), name="matmul")
    func = schedule_prim_func(te.create_prim_func([q, kt, scores]), 8)
    script = func.script()
    assert all(_loop(script, kind, n) for kind, n in (("unroll", 4), ("unroll", 3), ("vectorized", 4))), script
    a, b = rng.standard_normal((60, 128)).astype(np.float32), rng.standard_normal((128, 60)).astype(np.float32)
    np.testing.assert_allclose(_run_kernel(func, load_target("host").tvm_target(), [a, b, np.zeros((60, 60), np.float32)])[-1], a @ b, rtol=1e-5, atol=1e-4)

    x = te.placeholder((60, 60), "float32", name="x")
    k = te.reduce_axis((0, 60), name="k")
    total = te.compute((60,), lambda i: te.sum(x[i, k], axis=k), name="total")
    func = schedule_prim_func(te.create_prim_func([x, total]), 8)
    assert func is not None and "rf" in func.script() and _loop(func.script(), "vectorized", 4)
    xs = rng.standard_normal((60, 60)).astype(np.float32)
    np.testing.assert_allclose(_run_kernel(func, load_target("host").tvm_target(), [xs, np.zeros(60, np.float32)])[-1], xs.sum(axis=1), rtol=1e-5, atol=1e-5)


def test_fast_softmax_matches_torch_and_gives_masked_keys_exactly_zero() -> None:
    """``softmax_exp_te`` then ``softmax_normalise_te`` (what the fast-exp stage makes of a last-axis
    softmax), scheduled as the pipeline schedules them: PyTorch's softmax within 1e-6, a masked (-inf) key
    and one 100 below the row's max exactly 0, and no denormal weight anywhere."""
    from tvm import te

    from ssmc.compile.tuning import softmax_exp_te, softmax_normalise_te

    rng = np.random.default_rng(1)
    xs = (rng.standard_normal((2, 60, 60)) * 8).astype(np.float32)
    xs[:, np.triu_indices(60, 1)[0], np.triu_indices(60, 1)[1]] = -np.inf  # causal mask
    xs[0, 5, 2] = xs[0, 5].max() - 100.0
    x = te.placeholder(xs.shape, "float32", name="x")
    e = te.placeholder(xs.shape, "float32", name="e")
    exp_func = schedule_prim_func(te.create_prim_func([x, softmax_exp_te(x)]), 8)
    norm_func = schedule_prim_func(te.create_prim_func([e, softmax_normalise_te(e)]), 8)
    assert exp_func is not None and norm_func is not None
    host = load_target("host").tvm_target()
    e_out = _run_kernel(exp_func, host, [xs, np.zeros_like(xs)])[-1]
    got = _run_kernel(norm_func, host, [e_out, np.zeros_like(xs)])[-1]
    want = torch.softmax(torch.from_numpy(xs), dim=-1).numpy()
    assert np.abs(got - want).max() <= 1e-6
    assert np.all(got[np.isneginf(xs)] == 0.0) and got[0, 5, 2] == 0.0
    tiny = (got != 0) & (np.abs(got) < np.finfo(np.float32).tiny)
    assert not tiny.any()


def test_fast_exp_stage_splits_last_axis_softmax_only() -> None:
    """The fast-exp stage turns an fp32 softmax over the last axis into the two kernels and leaves one over
    another axis to LegalizeOps."""
    from tvm import relax

    from ssmc.compile.tuning import fast_exp_pass

    def module(axis: int):
        bb = relax.BlockBuilder()
        x = relax.Var("x", relax.TensorType((1, 4, 8), "float32"))
        with bb.function("main", [x]):
            with bb.dataflow():
                y = bb.emit_output(relax.op.nn.softmax(x, axis=axis))
            bb.emit_func_output(y)
        return bb.get()

    def ops(mod) -> list[str]:
        names = []
        relax.analysis.post_order_visit(mod["main"], lambda e: names.append(
            getattr(getattr(e, "op", None), "name", None) if isinstance(e, relax.Call) else None))
        return [n for n in names if n]

    last = fast_exp_pass()(module(-1))
    assert "relax.nn.softmax" not in ops(last) and ops(last).count("relax.call_tir") == 2
    assert {gv.name_hint for gv, _ in last.functions_items()} >= {"softmax_exp", "softmax_normalise"}
    assert "relax.nn.softmax" in ops(fast_exp_pass()(module(1)))
