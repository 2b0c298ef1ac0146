"""The Mamba layer and its scans: the fast CPU scan equals the slow reference (values and gradients),
a full forward equals L sequential steps, and parameters interchange with mamba_ssm's Mamba."""

import math

import pytest
import torch

from ssmc.train.models.mamba import Mamba
from ssmc.train.models.scan import SelectiveScanFn, selective_scan, selective_scan_ref, ssm_step


def scan_inputs(b=2, d=6, L=37, n=5, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "u": torch.randn(b, d, L, generator=g, dtype=dtype),
        "delta": torch.randn(b, d, L, generator=g, dtype=dtype) * 0.5 - 1.0,
        "A": -torch.exp(torch.randn(d, n, generator=g, dtype=dtype)),
        "B": torch.randn(b, n, L, generator=g, dtype=dtype),
        "C": torch.randn(b, n, L, generator=g, dtype=dtype),
        "D": torch.randn(d, generator=g, dtype=dtype),
        "z": torch.randn(b, d, L, generator=g, dtype=dtype),
        "delta_bias": torch.randn(d, generator=g, dtype=dtype),
    }


def run_with_grads(fn, inputs, **kwargs):
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    out = fn(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"], leaves["D"], z=leaves["z"],
             delta_bias=leaves["delta_bias"], delta_softplus=True, **kwargs)
    weights = torch.sin(torch.arange(out.numel(), dtype=out.dtype)).reshape(out.shape)
    (out * weights).sum().backward()
    return out.detach(), {k: v.grad for k, v in leaves.items()}


@pytest.mark.parametrize("chunk", [1, 8, 16, 64])
def test_fast_scan_matches_reference_values_and_gradients(chunk):
    inputs = scan_inputs()
    ref_out, ref_grads = run_with_grads(selective_scan_ref, inputs)
    out, grads = run_with_grads(selective_scan, inputs, chunk=chunk)
    assert torch.allclose(out, ref_out, rtol=0, atol=1e-5 * ref_out.abs().max())
    for name, g in grads.items():
        err = (g - ref_grads[name]).abs().max() / ref_grads[name].abs().max()
        assert err < 1e-5, f"d{name}: relative error {err:.2e}"


def test_fast_scan_matches_reference_exactly_in_fp64():
    inputs = scan_inputs(dtype=torch.float64, L=20)
    ref_out, ref_grads = run_with_grads(selective_scan_ref, inputs)
    out, grads = run_with_grads(selective_scan, inputs, chunk=6)
    assert torch.allclose(out, ref_out, rtol=1e-12, atol=1e-12)
    for name, g in grads.items():
        assert torch.allclose(g, ref_grads[name], rtol=1e-10, atol=1e-12), name


def test_scan_backward_passes_gradcheck():
    x = scan_inputs(b=2, d=3, L=7, n=2, dtype=torch.float64)
    time_major = [x["delta"].sigmoid().permute(2, 0, 1), x["u"].permute(2, 0, 1), x["B"].permute(2, 0, 1),
                  x["C"].permute(2, 0, 1)]
    args = [t.contiguous().requires_grad_() for t in time_major]
    A = x["A"].clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda delta, du, A, B, C: SelectiveScanFn.apply(delta, du, A, B, C, 3)[0], (args[0], args[1], A, *args[2:])
    )


def test_scan_without_gradients_and_last_state_match_reference():
    inputs = scan_inputs()
    ref_out, ref_last = selective_scan_ref(*[inputs[k] for k in "u delta A B C D".split()], z=inputs["z"],
                                           delta_bias=inputs["delta_bias"], delta_softplus=True,
                                           return_last_state=True)
    with torch.no_grad():
        out, last = selective_scan(*[inputs[k] for k in "u delta A B C D".split()], z=inputs["z"],
                                   delta_bias=inputs["delta_bias"], delta_softplus=True, return_last_state=True)
    assert torch.allclose(out, ref_out, atol=1e-6)
    assert torch.allclose(last, ref_last, atol=1e-6)


def test_ssm_step_repeated_equals_the_scan():
    x = scan_inputs(L=12)
    delta = torch.nn.functional.softplus(x["delta"] + x["delta_bias"][:, None])
    ref, ref_last = selective_scan_ref(x["u"], delta, x["A"], x["B"], x["C"], x["D"], return_last_state=True)
    h = torch.zeros(2, 6, 5)
    for t in range(12):
        y, h = ssm_step(h, x["u"][..., t], delta[..., t], x["A"], x["B"][..., t], x["C"][..., t], x["D"])
        assert torch.allclose(y, ref[..., t], atol=1e-6)
    assert torch.allclose(h, ref_last, atol=1e-6)


@pytest.mark.parametrize("use_conv", [True, False])
@pytest.mark.parametrize("d_model,d_state,expand", [(64, 64, 2), (64, 16, 1)])
def test_forward_equals_sequential_steps(use_conv, d_model, d_state, expand):
    torch.manual_seed(0)
    m = Mamba(d_model, d_state=d_state, expand=expand, use_conv=use_conv).eval()
    x = torch.randn(3, 40, d_model)
    with torch.no_grad():
        full = m(x)
        conv, ssm = m.init_state(3)
        steps = []
        for t in range(x.shape[1]):
            y, conv, ssm = m.step(x[:, t], conv, ssm)
            steps.append(y)
    err = (torch.stack(steps, 1) - full).abs().max() / full.abs().max()
    assert err < 2e-6, f"relative error {err:.2e}"


@pytest.mark.parametrize("use_conv", [True, False])
@pytest.mark.parametrize("L", [1, 3, 5])
@pytest.mark.parametrize("d_state", [16, 32])  # 32: the export splits x_proj (2·d_state >= 64)
def test_step_tokens_equals_that_many_steps_eager_and_in_the_export_form(use_conv, L, d_state):
    """``step_tokens`` (L tokens at once, the form DeMa-RNN's step exports) from a non-zero state equals L
    calls of ``step``: eagerly (where it is those calls) and under ``fused_scan_export`` (one chunk: taps
    over the carried conv inputs, the scan operator from the carried state). L = 5 > d_conv - 1 as well."""
    from ssmc.train.models.scan_op import fused_scan_export

    torch.manual_seed(1)
    m = Mamba(32, d_state=d_state, use_conv=use_conv).eval()
    x = torch.randn(2, L, 32)
    conv0, ssm0 = m.init_state(2)
    conv0 = None if conv0 is None else torch.randn_like(conv0)
    ssm0 = torch.randn_like(ssm0)
    with torch.no_grad():
        conv, ssm, ys = conv0, ssm0, []
        for t in range(L):
            y, conv, ssm = m.step(x[:, t], conv, ssm)
            ys.append(y)
        want = (torch.stack(ys, 1), conv, ssm)
        eager = m.step_tokens(x, conv0, ssm0)
        with fused_scan_export():
            chunk = m.step_tokens(x, conv0, ssm0)
    for got in (eager, chunk):
        for g, w in zip(got, want, strict=True):
            if w is None:
                assert g is None
                continue
            assert g.shape == w.shape
            err = (g - w).abs().max() / w.abs().max()
            assert err < 2e-6, f"relative error {err:.2e}"


def test_training_forward_equals_inference_forward():
    torch.manual_seed(0)
    m = Mamba(32, d_state=16)
    x = torch.randn(2, 25, 32, requires_grad=True)
    with torch.no_grad():
        reference = m(x)
    assert torch.allclose(m(x), reference, atol=1e-6)  # the custom-backward scan


def test_step_is_pure():
    torch.manual_seed(0)
    m = Mamba(16, d_state=4).eval()
    conv, ssm = torch.randn(2, 32, 3), torch.randn(2, 32, 4)
    conv0, ssm0, x = conv.clone(), ssm.clone(), torch.randn(2, 16)
    y1, conv1, ssm1 = m.step(x, conv, ssm)
    y2, _, _ = m.step(x, conv, ssm)
    assert torch.equal(conv, conv0) and torch.equal(ssm, ssm0) and torch.equal(y1, y2)
    assert conv1.shape == conv.shape and ssm1.shape == ssm.shape


def mamba_ssm_parameter_shapes(d_model, d_state=16, d_conv=4, expand=2):
    """mamba_ssm.modules.mamba_simple.Mamba's state dict, written from its definition."""
    d_inner, dt_rank = expand * d_model, math.ceil(d_model / 16)
    return {
        "in_proj.weight": (2 * d_inner, d_model),
        "conv1d.weight": (d_inner, 1, d_conv),
        "conv1d.bias": (d_inner,),
        "x_proj.weight": (dt_rank + 2 * d_state, d_inner),
        "dt_proj.weight": (d_inner, dt_rank),
        "dt_proj.bias": (d_inner,),
        "A_log": (d_inner, d_state),
        "D": (d_inner,),
        "out_proj.weight": (d_model, d_inner),
    }


@pytest.mark.parametrize("d_model,d_state,expand", [(64, 64, 2), (128, 16, 2), (40, 8, 1)])
def test_parameter_names_and_shapes_match_mamba_ssm(d_model, d_state, expand):
    m = Mamba(d_model, d_state=d_state, expand=expand)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == mamba_ssm_parameter_shapes(
        d_model, d_state, expand=expand
    )


def test_without_conv_only_the_conv_is_missing():
    expected = mamba_ssm_parameter_shapes(64, expand=1)
    del expected["conv1d.weight"], expected["conv1d.bias"]
    m = Mamba(64, expand=1, use_conv=False)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == expected
    assert m.init_state(2)[0] is None


def test_state_dict_round_trip_reproduces_outputs():
    torch.manual_seed(0)
    a, b = Mamba(32, d_state=8).eval(), Mamba(32, d_state=8).eval()
    b.load_state_dict(a.state_dict(), strict=True)
    x = torch.randn(2, 10, 32)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_initialisation_follows_mamba_ssm():
    m = Mamba(64, d_state=16, dt_min=1e-3, dt_max=0.1)
    assert torch.allclose(m.A_log, torch.log(torch.arange(1.0, 17.0)).expand(128, 16))
    assert torch.equal(m.D, torch.ones(128))
    dt = torch.nn.functional.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    assert m.dt_proj.weight.abs().max() <= m.dt_rank**-0.5
    assert m.A_log._no_weight_decay and m.D._no_weight_decay


def test_macs_per_token_counts_projections_conv_and_scan():
    m = Mamba(64, d_state=64, expand=2)  # d_inner 128, dt_rank 4
    expected = 64 * 256 + 128 * 4 + 128 * (4 + 128) + 4 * 128 + 3 * 128 * 64 + 2 * 128 + 128 * 64
    assert m.macs_per_token() == expected
    assert Mamba(64, d_state=64, expand=2, use_conv=False).macs_per_token() == expected - 128 * 4


@pytest.mark.parametrize("d_state", [16, 32])
def test_int8_x_proj_split_in_the_export_form_equals_the_whole_product(d_state):
    """With compile/quantize.py's Int8Linear as x_proj, the export form takes Δ's and B/C's columns as two
    products (``Int8Linear.columns``) at d_state 32 and the whole product at 16; either way the same numbers
    as the eager, whole product, and ``columns`` is that product's slice."""
    from ssmc.compile.quantize import Int8Linear
    from ssmc.train.models.scan_op import fused_scan_export

    torch.manual_seed(2)
    m = Mamba(32, d_state=d_state).eval()
    m.x_proj = Int8Linear(m.x_proj)
    x = torch.randn(2, 3, m.d_inner)
    calls = []
    columns = m.x_proj.columns
    m.x_proj.columns = lambda x, start, stop: calls.append((start, stop)) or columns(x, start, stop)
    with torch.no_grad():
        whole = m.x_proj(x)
        assert torch.allclose(columns(x, 5, 20), whole[..., 5:20], rtol=1e-6, atol=1e-6)
        want = m._split_xdbl(whole)
        with fused_scan_export():
            got = m._x_proj(x)
    width = m.dt_rank + 2 * d_state
    assert calls == ([(0, m.dt_rank), (m.dt_rank, width)] if d_state == 32 else [])
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        assert torch.allclose(g, w, rtol=1e-5, atol=1e-6)
