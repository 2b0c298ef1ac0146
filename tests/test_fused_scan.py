"""The fused CPU training scan (train/models/fused_scan.py) against the reference scan: values and gradients
within 1e-5 relative at the zoo's own layer shapes, exact in fp64 (gradcheck), and the default on CPU."""

from __future__ import annotations

import pytest
import torch

from ssmc.train.models import build_model, fused_scan
from ssmc.train.models.mamba import Mamba
from ssmc.train.models.scan import selective_scan, selective_scan_ref

pytestmark = pytest.mark.skipif(not fused_scan.has_numba(), reason="numba not installed")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference over the reference's largest magnitude; NaN never passes."""
    err = ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()
    return err if err == err else float("inf")


def inputs(b: int, d: int, L: int, n: int, dtype=torch.float32, seed: int = 0) -> dict[str, torch.Tensor]:
    """Inputs shaped as Mamba.forward passes them (B, C as (b, n, l)); A like a trained S4D-real A."""
    g = torch.Generator().manual_seed(seed)
    A = -(torch.arange(1, n + 1, dtype=dtype).repeat(d, 1) * (0.5 + torch.rand(d, n, generator=g, dtype=dtype)))
    x = {"u": torch.randn(b, d, L, generator=g, dtype=dtype),
         "delta": torch.randn(b, d, L, generator=g, dtype=dtype) * 0.5 - 2.0,  # pre-softplus: Δ ~ 0.02..0.5
         "A": A, "B": torch.randn(b, n, L, generator=g, dtype=dtype), "C": torch.randn(b, n, L, generator=g, dtype=dtype),
         "D": torch.randn(d, generator=g, dtype=dtype), "z": torch.randn(b, d, L, generator=g, dtype=dtype),
         "delta_bias": torch.rand(d, generator=g, dtype=dtype)}
    return {k: v.requires_grad_() for k, v in x.items()}


def outputs_and_grads(fn, x: dict[str, torch.Tensor], seed: int = 1):
    x = {k: v.detach().clone().requires_grad_() for k, v in x.items()}
    out, last = fn(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], z=x["z"], delta_bias=x["delta_bias"],
                   delta_softplus=True, return_last_state=True)
    gy = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    grads = torch.autograd.grad(out, list(x.values()), gy)
    return out, last, dict(zip(x, grads, strict=True))


def zoo_shapes() -> list[tuple[str, int, int, int]]:
    """(model, d_inner, d_state, tokens per window) of every Mamba model in the zoo, from the models."""
    shapes = []
    for name in ("dema", "dmm", "mambadm", "dmh"):
        model = build_model(name, obs_dim=11, act_dim=3)
        layer = next(m for m in model.modules() if isinstance(m, Mamba))
        shapes.append((name, layer.d_inner, layer.d_state, 3 * model.config.K))  # (R, s, a) tokens per step
    return shapes


@pytest.mark.parametrize("shape", zoo_shapes(), ids=lambda s: s[0])
def test_fused_scan_matches_reference_at_the_zoo_shapes(shape):
    _, d, n, L = shape
    x = inputs(b=3, d=d, L=L, n=n)
    ref_out, ref_last, ref_grads = outputs_and_grads(selective_scan_ref, x)
    out, last, grads = outputs_and_grads(selective_scan, x)  # CPU + grad: the fused kernel
    assert rel(out, ref_out) <= 1e-5
    assert rel(last, ref_last) <= 1e-5
    for k in ref_grads:
        assert rel(grads[k], ref_grads[k]) <= 1e-5, k


def test_fused_scan_is_exact_in_fp64_and_passes_gradcheck():
    x = inputs(b=2, d=5, L=17, n=4, dtype=torch.float64)
    ref_out, _, ref_grads = outputs_and_grads(selective_scan_ref, x)
    out, _, grads = outputs_and_grads(selective_scan, x)
    assert rel(out, ref_out) <= 1e-12
    assert all(rel(grads[k], ref_grads[k]) <= 1e-12 for k in ref_grads)
    small = inputs(b=2, d=3, L=6, n=2, dtype=torch.float64)
    u, delta, A, B, C = (small[k] for k in ("u", "delta", "A", "B", "C"))
    assert torch.autograd.gradcheck(lambda u, dl, A, B, C: fused_scan.fused_scan(u, dl.exp(), A, B, C)[0],
                                    (u, delta, A, B, C))


def test_long_context_state_does_not_blow_up():
    """DeMa-RNN's K = 200 (600 tokens) with large Δ: values stay finite and equal the reference."""
    x = inputs(b=1, d=8, L=600, n=64)
    with torch.no_grad():
        x["delta"].add_(3.0)  # Δ ≈ 1: Ā = exp(-64) underflows, the fast exp must give 0, not garbage
    ref_out, _, ref_grads = outputs_and_grads(selective_scan_ref, x)
    out, _, grads = outputs_and_grads(selective_scan, x)
    assert torch.isfinite(out).all() and rel(out, ref_out) <= 1e-5
    assert all(rel(grads[k], ref_grads[k]) <= 1e-5 for k in ref_grads)


def test_fused_scan_is_the_cpu_training_default_and_can_be_switched_off(monkeypatch):
    x = inputs(b=2, d=4, L=9, n=3)
    calls = []
    real = fused_scan.FusedSelectiveScanFn.apply
    monkeypatch.setattr(fused_scan.FusedSelectiveScanFn, "apply", lambda *a: calls.append(1) or real(*a))
    fused_out, _, fused_grads = outputs_and_grads(selective_scan, x)
    assert calls == [1]
    monkeypatch.setenv(fused_scan.ENV_SWITCH, "0")
    torch_out, _, torch_grads = outputs_and_grads(selective_scan, x)  # scan.SelectiveScanFn
    assert calls == [1]
    assert rel(fused_out, torch_out) <= 1e-5
    assert all(rel(fused_grads[k], torch_grads[k]) <= 1e-5 for k in torch_grads)
    with torch.no_grad():  # evaluation never reaches the kernel
        monkeypatch.delenv(fused_scan.ENV_SWITCH)
        selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"])
    assert calls == [1]


def test_a_dema_training_step_gives_the_reference_gradients(monkeypatch):
    """The whole model: one loss's parameter gradients with the fused scan equal the torch scan's."""
    torch.manual_seed(0)
    model = build_model("dema", obs_dim=11, act_dim=3, K=5)
    g = torch.Generator().manual_seed(0)
    b, K = 4, 5
    batch = {"observations": torch.randn(b, K, 11, generator=g), "actions": torch.rand(b, K, 3, generator=g) * 2 - 1,
             "prev_actions": torch.rand(b, K, 3, generator=g) * 2 - 1, "rtg": torch.rand(b, K, 1, generator=g),
             "prev_rtg": torch.rand(b, K, 1, generator=g), "timesteps": torch.arange(K).expand(b, K).contiguous(),
             "mask": torch.ones(b, K)}

    def grads():
        model.zero_grad()
        model.loss(batch).backward()
        return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    fused = grads()
    monkeypatch.setenv(fused_scan.ENV_SWITCH, "0")
    reference = grads()
    assert fused.keys() == reference.keys() and len(fused) > 10
    for k in reference:
        assert rel(fused[k], reference[k]) <= 1e-5, k


def test_the_parallel_kernels_match_the_reference(monkeypatch):
    """The kernels follow torch's thread count (or SSMC_SCAN_THREADS) and split batch rows over threads
    (per-row gA and gD partials); a multi-chunk backward (L 130 > 64) included."""
    x = inputs(b=5, d=16, L=130, n=8)
    ref_out, ref_last, ref_grads = outputs_and_grads(selective_scan_ref, x)
    assert torch.get_num_threads() == 1 and fused_scan._threads(5) == 1  # conftest: one torch thread
    torch.set_num_threads(2)  # conftest's fixture restores it
    assert fused_scan._threads(5) == 2 and fused_scan._threads(1) == 1  # never more threads than rows
    monkeypatch.setenv(fused_scan.THREADS_ENV, "1")
    assert fused_scan._threads(5) == 1  # the variable wins
    monkeypatch.setenv(fused_scan.THREADS_ENV, "2")
    torch.set_num_threads(1)
    assert fused_scan._threads(5) == 2
    out, last, grads = outputs_and_grads(selective_scan, x)
    assert rel(out, ref_out) <= 1e-5 and rel(last, ref_last) <= 1e-5
    assert all(rel(grads[k], ref_grads[k]) <= 1e-5 for k in ref_grads)


def test_the_fp32_exp_is_vectorised_without_int64_conversions():
    """The scan's exp must compile to vector code: float <-> int64 conversions (what numba's int arithmetic
    gives) have no vector instruction before AVX-512DQ, and made LLVM scalarise the exp on AVX2 cores (3x
    slower scans; _fused_kernels._pow2_f32). Checked on the LLVM IR, so on any host."""
    import re

    import numpy as np
    from numba import njit

    from ssmc.train.models._fused_kernels import _exp

    @njit(fastmath=True)
    def exp_loop(x, out):
        for i in range(x.shape[0]):
            out[i] = _exp(x[i])

    x = np.linspace(-80, 80, 64, dtype=np.float32)
    out = np.empty_like(x)
    exp_loop(x, out)
    assert np.allclose(out, np.exp(x.astype(np.float64)), rtol=1e-5, atol=0)
    ir = "\n".join(exp_loop.inspect_llvm().values())
    int64_conversion = r"(fptosi (<\d+ x )?(float|double)>?|sitofp (<\d+ x )?i64>?)[^\n]* to (<\d+ x )?(i64|float)"
    assert not re.search(int64_conversion, ir), re.search(int64_conversion, ir).group(0)
    assert re.search(r"<\d+ x float>", ir), "the exp loop was not vectorised"


@pytest.mark.parametrize("drop", [("D",), ("z",), ("D", "z")], ids=["no-skip", "no-gate", "neither"])
def test_the_fused_skip_and_gate_are_optional(drop):
    """The kernels fuse the D skip and the SiLU(z) gate; without either they must still match the reference,
    with an odd channel count (the backward's last channel pairs with itself)."""
    x = inputs(b=2, d=7, L=11, n=5)
    for k in drop:
        del x[k]

    def run(fn):
        xs = {k: v.detach().clone().requires_grad_() for k, v in x.items()}
        out = fn(xs["u"], xs["delta"], xs["A"], xs["B"], xs["C"], xs.get("D"), z=xs.get("z"),
                 delta_bias=xs["delta_bias"], delta_softplus=True)
        gy = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        return out, dict(zip(xs, torch.autograd.grad(out, list(xs.values()), gy), strict=True))

    ref_out, ref_grads = run(selective_scan_ref)
    out, grads = run(selective_scan)
    assert rel(out, ref_out) <= 1e-5
    assert all(rel(grads[k], ref_grads[k]) <= 1e-5 for k in ref_grads)


def test_the_fused_conv_and_silu_match_conv1d(monkeypatch):
    """Mamba's causal conv1d + SiLU as one kernel (fused_conv.py) in CPU training: the layer's output and
    every parameter's gradient equal the conv1d path's (SSMC_FUSED_SCAN=0), and the kernel is what ran."""
    from ssmc.train.models import fused_conv

    torch.manual_seed(0)
    layer = Mamba(24, d_state=8)
    with torch.no_grad():
        layer.conv1d.bias.normal_()
    x = torch.randn(3, 13, 24)

    def run():
        layer.zero_grad()
        xs = x.clone().requires_grad_()
        out = layer(xs)
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(2)))
        return out.detach(), xs.grad, {k: p.grad.clone() for k, p in layer.named_parameters()}

    calls = []
    real = fused_conv.FusedConvSiluFn.apply
    monkeypatch.setattr(fused_conv.FusedConvSiluFn, "apply", lambda *a: calls.append(1) or real(*a))
    out, gx, grads = run()
    assert calls == [1]
    monkeypatch.setenv(fused_scan.ENV_SWITCH, "0")
    ref_out, ref_gx, ref_grads = run()
    assert calls == [1]
    assert rel(out, ref_out) <= 1e-5 and rel(gx, ref_gx) <= 1e-5
    for k in ref_grads:
        assert rel(grads[k], ref_grads[k]) <= 1e-5, k
    with torch.no_grad():  # evaluation keeps conv1d
        monkeypatch.delenv(fused_scan.ENV_SWITCH)
        assert rel(layer(x), ref_out) <= 1e-5
    assert calls == [1]


@pytest.mark.parametrize("chunk", [1, 5, 10, 64])
def test_the_backward_recomputes_chunk_by_chunk_from_checkpoints(chunk, monkeypatch):
    """The forward keeps the state every ``chunk`` tokens and the backward recomputes one chunk at a time:
    chunks of one token, a partial last chunk (20 = 4 · 5), an exact fit (2 · 10) and one chunk (64 > 20)
    all give the reference's gradients."""
    monkeypatch.setattr(fused_scan, "CHUNK", chunk)
    x = inputs(b=2, d=5, L=20, n=6)
    ref_out, ref_last, ref_grads = outputs_and_grads(selective_scan_ref, x)
    out, last, grads = outputs_and_grads(selective_scan, x)
    assert rel(out, ref_out) <= 1e-5 and rel(last, ref_last) <= 1e-5
    for k in ref_grads:
        assert rel(grads[k], ref_grads[k]) <= 1e-5, k


@pytest.mark.parametrize("name", ["dema", "dmm", "mambadm"])
def test_inference_steps_through_the_fused_kernel_and_agree_with_the_torch_scan(name, monkeypatch):
    """Inside ``fused_scan.inference()`` a gradient-free window step runs the numba forward; its actions over
    12 steps (the window filling and sliding) equal the torch scan's within 1e-5; outside it never runs."""
    torch.manual_seed(0)
    model = build_model(name, obs_dim=11, act_dim=3, K=4).eval()
    g = torch.Generator().manual_seed(3)
    stream = [(torch.randn(1, 11, generator=g), torch.rand(1, 1, generator=g)) for _ in range(12)]

    def actions():
        state, out = model.init_state(1), []
        with torch.no_grad():
            for obs, rtg in stream:
                a, state = model.step(state, obs, rtg)
                out.append(a)
        return torch.cat(out)

    calls = []
    real = fused_scan.FusedSelectiveScanFn.apply
    monkeypatch.setattr(fused_scan.FusedSelectiveScanFn, "apply", lambda *a: calls.append(1) or real(*a))
    reference = actions()
    assert calls == []
    with fused_scan.inference():
        fast = actions()
    assert len(calls) >= 12 and not fused_scan.inference_active()
    assert rel(fast, reference) <= 1e-5
