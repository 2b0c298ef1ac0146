"""Window steps as compiled loops (issue 11): each Mamba layer's scan is one ``ssmc::selective_scan`` node
lowered to one loop kernel (compile/scan_kernel.py), the compiled window step equals PyTorch's window
forward over 200 steps for every window model, precision and two context lengths, and its code does not
grow with K.

The fp32 runs at the small K are in the default suite; the larger K and fp16/int8 (20 more compiles) are
marked slow, and CI runs them (.ci/run).
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch
from conftest import require_tools

from ssmc.compile import compile_checkpoint
from ssmc.compile.export import StepFunction, export_step
from ssmc.compile.measure import compare_with_pytorch
from ssmc.compile.quantize import quantize_int8
from ssmc.compile.scan_kernel import LOG2E, scan_lanes, selective_scan_primfunc
from ssmc.train.models import build_model, load_checkpoint, save_checkpoint
from ssmc.train.models.mamba import Mamba
from ssmc.train.models.scan import selective_scan_ref
from ssmc.train.models.scan_op import fused_scan_active, fused_scan_export, selective_scan_op

OBS, ACT = 5, 2
# one small configuration per window model; K is set per test
SMALL = {
    "dema": {"embedding_dim": 32, "d_model": 16, "n_layer": 2, "d_state": 8},
    "dmm": {"hidden": 16, "n_layer": 1, "window": 3, "d_state": 8, "dropout": 0.0},
    "mambadm": {"hidden": 16, "n_layer": 1, "d_state": 8, "dropout": 0.0},
    # gelu: CORL's DT activation (the zoo's), which the compiler lowers to fast_gelu (compile/tuning.py)
    "dt": {"hidden": 32, "n_layer": 1, "max_ep_len": 300, "dropout": 0.0, "activation": "gelu"},
}
EXTRA = {"obs_mean": [0.5, -1.0, 2.0, 0.0, 3.0], "obs_std": [1.5, 0.5, 2.0, 1.0, 4.0], "rtg_scale": 1e-3,
         "target_return": 3000.0, "env_id": "Hopper-v5"}
BOUNDS = {"fp32": 1e-5, "fp16": 2e-2, "int8": 1e-1}  # tests/test_compile.py's bounds, same reasons
# MambaDM's fp32 window step at K = 10 measured 1.37e-5 here, identical to the last digit with the scan
# unrolled and with only exp replaced by arithmetic, i.e. not the scan kernel's or fast math's error
# (its FFN's GELU is the suspect: TVM legalises erf as a polynomial); bounded with 1.5x headroom
FP32_BOUND = {"mambadm": 2e-5}
# DT's fp16 window step at K = 10 (30 tokens of attention) measured 2.2e-2, above test_compile's 2e-2 set on
# K = 4; DT has no Mamba layer, so this is the fp16-matmuls stage on more tokens; bounded with 2x headroom
BOUND = {("dt", "fp16"): 4.5e-2}
KS = (3, 10)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("window")
    cache = {}

    def get(kind: str, K: int):
        if (kind, K) not in cache:
            torch.manual_seed(K)
            model = build_model(kind, OBS, ACT, K=K, **SMALL[kind])
            cache[kind, K] = save_checkpoint(model, root / f"{kind}-K{K}", EXTRA)
        return cache[kind, K]

    return get


def _cases():
    for kind in SMALL:
        for K in KS:
            for precision in ("fp32", "fp16", "int8"):
                slow = precision != "fp32" or K != KS[0]  # a compile each: the default suite keeps fp32, small K
                marks = [pytest.mark.slow] if slow else []
                yield pytest.param(kind, K, precision, marks=marks, id=f"{kind}-K{K}-{precision}")


@pytest.mark.parametrize("kind,K,precision", list(_cases()))
def test_window_step_matches_the_pytorch_window_forward(kind, K, precision, checkpoint, tmp_path) -> None:
    ckpt = checkpoint(kind, K)
    artifact = compile_checkpoint(ckpt, "host", precision, "window", tmp_path / "a.ssmc", executor="static")
    model, extra = load_checkpoint(ckpt)
    assert model.semantics == "window"
    refs = [StepFunction(model.eval(), extra["obs_mean"], extra["obs_std"], extra["rtg_scale"]).eval()]
    if precision == "int8":
        refs.append(StepFunction(quantize_int8(model).eval(), extra["obs_mean"], extra["obs_std"],
                                 extra["rtg_scale"]).eval())
    errors = compare_with_pytorch(artifact, refs)
    bound = FP32_BOUND.get(kind, BOUNDS["fp32"]) if precision == "fp32" else BOUND.get((kind, precision),
                                                                                         BOUNDS[precision])
    assert errors[0] <= bound, f"{kind} K={K} {precision}: {errors[0]:.3g}"
    if precision == "int8":
        assert errors[1] <= BOUNDS["fp32"]


@pytest.mark.parametrize("kind", ["dema", pytest.param("mambadm", marks=pytest.mark.slow)])
def test_window_step_through_the_vm_executor(kind, checkpoint, tmp_path) -> None:
    ckpt = checkpoint(kind, KS[0])
    artifact = compile_checkpoint(ckpt, "host", "fp32", "window", tmp_path / "a.ssmc", executor="vm")
    model, extra = load_checkpoint(ckpt)
    [err] = compare_with_pytorch(artifact, [StepFunction(model.eval(), extra["obs_mean"], extra["obs_std"],
                                                         extra["rtg_scale"]).eval()])
    assert err <= BOUNDS["fp32"]


def test_each_mamba_layer_exports_one_scan_node_and_peers_see_plain_ops(checkpoint) -> None:
    model, extra = load_checkpoint(checkpoint("mambadm", KS[1]))

    def scans(program):
        return sum(1 for n in program.graph.nodes if n.op == "call_function" and "selective_scan" in str(n.target))

    fused = export_step(model, extra, "window").program
    plain = export_step(model, extra, "window", fused_scan=False).program
    assert scans(fused) == 2 * model.config.n_layer  # MambaDM: a global and a local Mamba per layer
    assert scans(plain) == 0 and not fused_scan_active()


@pytest.mark.parametrize("kind", ["dema", "dt"])
def test_code_size_is_flat_in_K(kind, checkpoint, tmp_path) -> None:
    """The scan is one loop whatever K, and no per-token loop is unrolled because K is small: the library's
    code at K = 40 within 10 % of K = 5, either way. Before the scan kernel the unrolled scan grew linearly
    (3K copies of the per-token kernels); before targets.LLVM_OPTIONS, LLVM fully unrolled the per-token
    loops whose trip count fit its budget, so the code *shrank* as K grew (DeMa -30 % from K = 10 to 160)."""
    require_tools("readelf")
    sizes = {}
    for K in (5, 40):
        art = compile_checkpoint(checkpoint(kind, K), "host", "fp32", "window", tmp_path / f"k{K}.ssmc",
                                 executor="static")
        sizes[K] = text_bytes(art / "lib.so")
    assert abs(sizes[40] - sizes[5]) <= 0.1 * sizes[5], sizes


def text_bytes(library) -> int:
    """Size of the executable code (.text) of a shared library, from its section headers."""
    out = subprocess.run(["readelf", "-S", "-W", str(library)], capture_output=True, text=True, check=True).stdout
    sizes = [int(line.split("]", 1)[1].split()[4], 16) for line in out.splitlines() if " .text " in line]
    assert sizes, out
    return sum(sizes)


# -- the operator and its kernel ---------------------------------------------------------------------

def _scan_inputs(b: int, L: int, d: int, n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    delta = torch.nn.functional.softplus(torch.randn(b, L, d, generator=g) - 1)
    u = torch.randn(b, L, d, generator=g)
    A = -torch.exp(torch.randn(d, n, generator=g))
    B, C = torch.randn(b, L, n, generator=g), torch.randn(b, L, n, generator=g)
    h0 = torch.randn(b, d, n, generator=g)
    return delta, u, A, B, C, h0


def test_the_operator_is_the_reference_scan() -> None:
    delta, u, A, B, C, _ = _scan_inputs(2, 7, 6, 4)
    y, h = selective_scan_op(delta, delta * u, A, B, C, None)
    ref, h_ref = selective_scan_ref(u.transpose(1, 2), delta.transpose(1, 2), A, B.transpose(1, 2),
                                    C.transpose(1, 2), return_last_state=True)
    torch.testing.assert_close(y, ref.transpose(1, 2), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(h, h_ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("use_conv", [True, False])
def test_mamba_under_the_export_context_computes_the_same_function(use_conv) -> None:
    torch.manual_seed(0)
    m = Mamba(24, d_state=8, use_conv=use_conv).eval()
    x = torch.randn(3, 9, 24)
    with torch.no_grad():
        want = m(x)
        with fused_scan_export():
            got = m(x)
        conv, h = m.init_state(3)
        h = torch.randn_like(h)
        y1, _, h1 = m.step(x[:, 0], conv, h)
        with fused_scan_export():
            y2, _, h2 = m.step(x[:, 0], conv, h)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y2, y1, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(h2, h1, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("b,L,d,n,lanes,with_h0", [(1, 60, 16, 64, 8, False), (3, 5, 8, 16, 8, True),
                                                  (2, 4, 4, 12, 8, True), (1, 3, 5, 7, 16, False),
                                                  (2, 37, 8, 32, 16, True), (1, 17, 4, 16, 8, True)])
def test_scan_kernel_matches_the_operator(b, L, d, n, lanes, with_h0) -> None:
    """The TIR loop, built alone for the host, against the operator's eager recurrence (fp64 reference),
    including state sizes the lanes do not divide, a decay strong enough to reach the exponent clamp, and
    token counts over ``TOKEN_BLOCK`` (the state carried between blocks) that it does not divide."""
    import tvm

    delta, u, A, B, C, h0 = _scan_inputs(b, L, d, n, seed=n)
    A[:, 0] = -500.0  # exp(Δ·A) below 2^-60: the clamp's region
    h_in = h0 if with_h0 else None
    want_y, want_h = selective_scan_op(delta.double(), (delta * u).double(), A.double(), B.double(), C.double(),
                                       None if h_in is None else h_in.double())
    func = selective_scan_primfunc(b, L, d, n, lanes, with_h0).with_attr("global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v3"}))
    ins = [delta, delta * u, A * LOG2E, B, C] + ([h0] if with_h0 else [])
    y = tvm.runtime.tensor(np.zeros((b, L, d), np.float32))
    hL = tvm.runtime.tensor(np.zeros((b, d, n), np.float32))
    lib["main"](*(tvm.runtime.tensor(t.float().numpy()) for t in ins), y, hL)
    for got, want in ((y.numpy(), want_y.numpy()), (hL.numpy(), want_h.numpy())):
        assert np.all(np.isfinite(got))
        assert np.abs(got - want).max() / np.abs(want).max() < 1e-5
    assert scan_lanes(n, lanes) in (1, 2, 4, 8, 16) and n % scan_lanes(n, lanes) == 0


def test_scan_lanes_keeps_two_vectors_per_channel_at_16_lanes() -> None:
    """16-float vectors only for d_state >= 32 (one vector per channel makes the lane sum the chain);
    otherwise the widest vector that divides d_state."""
    assert [scan_lanes(n, 16) for n in (64, 32, 16, 8, 12, 7)] == [16, 16, 8, 8, 4, 1]
    assert [scan_lanes(n, 8) for n in (64, 16, 8, 12)] == [8, 8, 8, 4]


# -- packed GEMM weights (compile/pipeline.py's pack-weights stage) ------------------------------------

def test_window_gemms_read_packed_weights_and_gemvs_do_not(checkpoint) -> None:
    """fp32 and int8 window steps' matmuls with a constant weight become packed_gemm kernels on a panel-major
    copy of the weight (the parity tests above then cover their numbers), int8 kept int8; a one-row matmul
    (a GEMV), a weight whose width is not a whole number of panels, and fp16 builds keep the plain (K, N)
    layout; two slices of one constant are two weights."""
    import tvm
    from tvm import relax

    from ssmc.compile.pipeline import _packed_weight_gemms, lower_step, pack_panels, stage_names
    from ssmc.targets import load_target

    target = load_target("host")
    assert "pack-weights" in stage_names(target, "fp32") and "pack-weights" in stage_names(target, "int8")
    assert "pack-weights" not in stage_names(target, "fp16")
    model, extra = load_checkpoint(checkpoint("dt", KS[0]))
    mod, _ = lower_step(export_step(model, extra, "window").program, target, "fp32", executor="static")
    window = [gv.name_hint for gv in mod.functions]
    assert sum("packed_gemm" in k for k in window) >= 4, window  # Q/K/V, attention out, both MLP matmuls

    rng = np.random.default_rng(0)
    bb = relax.BlockBuilder()
    rows = {"gemv": 1, "gemm": 4, "narrow": 4}
    xs = {name: relax.Var(name, relax.TensorType((1, m, 24), "float32")) for name, m in rows.items()}
    with bb.function("main", list(xs.values())):
        with bb.dataflow():
            outs = [bb.emit(relax.op.matmul(xs[name], relax.const(
                rng.standard_normal((24, 32 if name != "narrow" else 24)).astype(np.float32)))) for name in rows]
            out = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(out)
    packed = _packed_weight_gemms(8)(bb.get())  # 8 lanes: 16-float panels
    text = packed.script()
    assert text.count("packed_gemm") >= 2 and text.count("R.matmul") == 2, text  # only the 4 x 24 @ 24 x 32 one
    assert isinstance(packed, tvm.IRModule)

    # one weight read by a 4-row and a 1-row matmul (DMM's recurrent embeddings): left plain, not stored twice
    bb = relax.BlockBuilder()
    shared = relax.const(rng.standard_normal((24, 32)).astype(np.float32))
    with bb.function("main", [xs["gemm"], xs["gemv"]]):
        with bb.dataflow():
            out = bb.emit_output(relax.Tuple([bb.emit(relax.op.matmul(xs[name], shared)) for name in ("gemm", "gemv")]))
        bb.emit_func_output(out)
    text = _packed_weight_gemms(8)(bb.get()).script()
    assert "packed_gemm" not in text and text.count("R.matmul") == 2, text

    # an int8 weight (after int8-matmuls) and two column slices of one fp32 constant (x_proj's Δ and B/C
    # products): the int8 one packed as int8, the 32-wide slice packed, the 8-wide one (not a panel) plain
    q = rng.integers(-127, 128, (24, 32)).astype(np.int8)
    whole = rng.standard_normal((40, 24)).astype(np.float32)  # nn.Linear's (out, in)
    bb = relax.BlockBuilder()
    with bb.function("main", [xs["gemm"]]):
        with bb.dataflow():
            x = xs["gemm"]
            outs = [bb.emit(relax.op.matmul(x, relax.const(q), out_dtype="float32"))]
            for begin, end in ((0, 8), (8, 40)):
                part = bb.emit(relax.op.strided_slice(relax.const(whole), [0], [begin], [end]))
                outs.append(bb.emit(relax.op.matmul(x, bb.emit(relax.op.permute_dims(part, [1, 0])))))
            out = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(out)
    packed = _packed_weight_gemms(8)(bb.get())
    text = packed.script()
    assert text.count("R.matmul") == 1 and text.count("packed_gemm") >= 2, text
    calls = [v for v in relax.analysis.get_var2val(packed["main"]).values()
             if isinstance(v, relax.Call) and v.op.name == "relax.call_tir"]
    consts = [arg.value.numpy() for call in calls for arg in call.args[1].fields[1:]]
    assert any(c.dtype == np.int8 and np.array_equal(c, pack_panels(q, 16)) for c in consts)
    assert any(c.dtype == np.float32 and np.array_equal(c, pack_panels(whole[8:].T.copy(), 16)) for c in consts)


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_packed_gemm_kernel_matches_numpy(dtype) -> None:
    """The packed kernel alone, scheduled by the GEMM rule and built for the host: x @ float(W) from Wp."""
    import tvm

    from ssmc.compile.pipeline import pack_panels
    from ssmc.compile.tuning import packed_gemm_primfunc, schedule_prim_func

    rng = np.random.default_rng(0)
    m, k, n, panel = 6, 24, 32, 16
    x = rng.standard_normal((1, m, k)).astype(np.float32)
    w = (rng.standard_normal((k, n)) if dtype == "float32" else rng.integers(-127, 128, (k, n))).astype(dtype)
    wp = pack_panels(w, panel)
    func = schedule_prim_func(packed_gemm_primfunc([1, m, k], n, panel, dtype), 8)
    assert func is not None  # the GEMM rule took it
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                      target=tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64-v3"}))
    out = tvm.runtime.tensor(np.zeros((1, m, n), np.float32))
    lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(wp), out)
    want = x @ w.astype(np.float32)
    assert np.abs(out.numpy() - want).max() <= 1e-5 * np.abs(want).max()
