"""Selective scan: the S6 recurrence at the heart of Mamba (Gu & Dao 2023, Section 3.2, Algorithm 2).

Three implementations of one function, plus the single-step update used at deployment:

- ``selective_scan_ref``: the slow reference. It mirrors the semantics, argument names and layouts
  of ``mamba_ssm.ops.selective_scan_interface.selective_scan_ref`` (the function that defines
  Mamba's numerics) and is what the others are tested against. Its backward, through autograd over
  a Python loop on full (b, d, l, n) tensors, is slow and memory hungry.
- ``selective_scan``: what ``Mamba.forward`` calls. On CUDA with ``mamba_ssm`` importable it is
  mamba_ssm's fused ``selective_scan_fn``; on CPU during training it is ``fused_scan.fused_scan`` (numba
  kernels that keep each (batch, channel) state in cache, fused_scan.py), else ``SelectiveScanFn``, a
  sequential scan with a hand-written backward that never builds (b, l, d, n) tensors (states are
  checkpointed every ``chunk`` steps and recomputed a chunk at a time in the backward pass); with no
  gradient needed (evaluation, ``torch.export``) it is a plain loop of functional ops.
- ``ssm_step``: one step of the recurrence on a carried state, as pure tensor ops (multiply-and-sum,
  no einsum, no in-place writes) so that it exports cleanly through torch.export / ONNX.

Why no log-space parallel scan: with d_state 64, A = -exp(A_log) reaches -64 and Δ·A falls below -6
per step at initialisation, so exp(-cumsum(Δ·A)) overflows fp32 within a chunk of 16 tokens. The
sequential recurrence is exact and stable, and its cost is the elementwise work on (b, d, n) slices,
dominated by exp: the training scan uses ``exp2`` (exp(x) = 2^(x·log2 e)), ~3x faster than ``exp`` in
PyTorch's CPU kernels, at a ~1e-7 relative difference. (torch.compile fusing a step was measured 2x
faster on the forward after a 30 s compile; not worth a compiler in the training loop.)

Glossary (mamba-minimal's, which follows the paper):
    b: batch size                       l: sequence length (L in code)
    d: channels (d_inner)               n: state size (d_state)
    u: input sequence x in the paper    Δ (delta): input-dependent step size
    A: (d, n) state matrix (diagonal per channel, A = -exp(A_log))
    B, C: (b, n, l) input-dependent input/output projections
    D: (d,) skip connection             z: (b, d, l) gate, applied as y * silu(z)
    h: (b, d, n) hidden state
Discretisation (zero-order hold for A, Euler for B, as mamba_ssm):
    Ā_t = exp(Δ_t A),  B̄_t u_t = Δ_t B_t u_t,  h_t = Ā_t ⊙ h_{t-1} + B̄_t u_t,  y_t = C_t · h_t + D u_t
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ssmc.train.models import fused_scan

try:  # the fused CUDA kernel; an optional extra (pip install ssmc[gpu]); never required
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as _mamba_selective_scan_fn
except (ImportError, OSError):  # not installed, or installed without its compiled CUDA extension
    _mamba_selective_scan_fn = None

HAS_MAMBA_SSM = _mamba_selective_scan_fn is not None
LOG2E = 1.0 / math.log(2.0)
DEFAULT_CHUNK = 16  # steps between checkpointed states; 8-16 keep a chunk of states in cache (measured)


def _compute_dtype(u: Tensor) -> torch.dtype:
    """fp32 as mamba_ssm computes; fp64 stays fp64 so that gradcheck can run on these functions."""
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _prepare_delta(delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool, dtype: torch.dtype) -> Tensor:
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].to(dtype)
    if delta_softplus:
        delta = F.softplus(delta)
    return delta


def _finish(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None) -> Tensor:
    """Skip connection and gate: out = (y + D u) * silu(z); all (b, d, l)."""
    out = y if D is None else y + u * D[:, None]
    return out if z is None else out * F.silu(z)


def selective_scan_ref(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
    z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
    return_last_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """The slow sequential reference (mamba_ssm's ``selective_scan_ref`` semantics, real A, variable B/C).

    u, delta, z: (b, d, l); A: (d, n); B, C: (b, n, l); D, delta_bias: (d,).
    Returns out (b, d, l), and the last state h_L (b, d, n) when ``return_last_state``.
    """
    dtype_in, dtype = u.dtype, _compute_dtype(u)
    u = u.to(dtype)
    delta = _prepare_delta(delta, delta_bias, delta_softplus, dtype)
    b, d, L = u.shape
    deltaA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A.to(dtype)))  # Ā, (b, d, l, n)
    deltaB_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B.to(dtype), u)  # B̄ u, (b, d, l, n)
    h = u.new_zeros(b, d, A.shape[1])
    ys = []
    for i in range(L):
        h = deltaA[:, :, i] * h + deltaB_u[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, i].to(dtype)))
    out = _finish(torch.stack(ys, dim=2), u, D, None if z is None else z.to(dtype)).to(dtype_in)
    return (out, h) if return_last_state else out


def _scan_sequential(delta: Tensor, du: Tensor, A: Tensor, B: Tensor, C: Tensor,
                     h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Plain functional loop, time-major: delta, du (l, b, d); B, C (l, b, n) -> y (l, b, d), h_L (b, d, n),
    from ``h0`` (b, d, n) or zeros.

    Used when no gradient is needed and under torch.export/compile: no custom autograd, no in-place ops;
    also the eager meaning of ``ssmc::selective_scan`` (scan_op.py).
    """
    h = delta.new_zeros(delta.shape[1], delta.shape[2], A.shape[1]) if h0 is None else h0  # (b, d, n)
    ys = []
    for t in range(delta.shape[0]):
        h = h * torch.exp(delta[t, :, :, None] * A) + du[t, :, :, None] * B[t, :, None, :]
        ys.append((h * C[t, :, None, :]).sum(-1))  # (b, d)
    return torch.stack(ys), h


class SelectiveScanFn(torch.autograd.Function):
    """Time-major selective scan with a hand-written backward (the CPU training path).

    Inputs: delta, du = Δ·u (l, b, d); A (d, n); B, C (l, b, n); chunk (int). Outputs y (l, b, d) and
    h_L (b, d, n) (not differentiable). Forward keeps only the states at chunk boundaries; backward
    recomputes each chunk's states and runs the adjoint recurrence backwards in time:
        g_t = C_t gy_t + Ā_{t+1} ⊙ g_{t+1}       (g_t = dLoss/dh_t)
        dC_t = Σ_d h_t gy_t,  d(Δu)_t = Σ_n g_t B_t,  dB_t = Σ_d g_t (Δu)_t
        P_t = g_t ⊙ Ā_t ⊙ h_{t-1} = dLoss/d(Δ_t A):  dΔ_t = Σ_n P_t A,  dA = Σ_{b,t} P_t Δ_t
    Every step touches only (b, d, n) slices, which stay in cache.
    """

    @staticmethod
    def forward(ctx, delta: Tensor, du: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk: int):
        L, b, d = delta.shape
        A2 = A * LOG2E  # exp(Δ A) = exp2(Δ A log2 e)
        h = delta.new_zeros(b, d, A.shape[1])
        dA = torch.empty_like(h)
        y = delta.new_empty(L, b, d)
        boundaries = []  # h before each chunk
        for t in range(L):
            if t % chunk == 0:
                boundaries.append(h.clone())
            torch.exp2(torch.mul(delta[t, :, :, None], A2, out=dA), out=dA)
            h.mul_(dA).addcmul_(du[t, :, :, None], B[t, :, None, :])
            torch.sum(h * C[t, :, None, :], dim=-1, out=y[t])
        ctx.chunk = chunk
        ctx.save_for_backward(delta, du, A, B, C, torch.stack(boundaries))
        ctx.mark_non_differentiable(h)
        return y, h

    @staticmethod
    def backward(ctx, gy: Tensor, _gh_last: Tensor):
        delta, du, A, B, C, boundaries = ctx.saved_tensors
        L, b, d = delta.shape
        n = A.shape[1]
        chunk = ctx.chunk
        gy = gy.contiguous()
        A2 = A * LOG2E
        g = delta.new_zeros(b, d, n)  # dLoss/dh_t, carried backwards
        P = torch.empty_like(g)
        acc_A = torch.zeros_like(g)  # Σ_t P_t Δ_t, reduced over b at the end
        g_delta, g_du = torch.empty_like(delta), torch.empty_like(du)
        g_B, g_C = torch.empty_like(B), torch.empty_like(C)
        steps = min(chunk, L)
        hs = delta.new_empty(steps + 1, b, d, n)  # hs[0] = h before the chunk, hs[i] = h at its step i-1
        dAs = delta.new_empty(steps, b, d, n)  # Ā of the chunk's steps
        for c in reversed(range(len(boundaries))):
            start, stop = c * chunk, min(L, (c + 1) * chunk)
            hs[0] = boundaries[c]
            for i, t in enumerate(range(start, stop)):  # recompute this chunk's Ā and states
                torch.exp2(torch.mul(delta[t, :, :, None], A2, out=dAs[i]), out=dAs[i])
                torch.mul(hs[i], dAs[i], out=hs[i + 1]).addcmul_(du[t, :, :, None], B[t, :, None, :])
            for t in reversed(range(start, stop)):
                i = t - start
                g.addcmul_(gy[t, :, :, None], C[t, :, None, :])  # g_t
                torch.bmm(gy[t, :, None, :], hs[i + 1], out=g_C[t, :, None, :])  # Σ_d h_t gy_t
                torch.bmm(du[t, :, None, :], g, out=g_B[t, :, None, :])  # Σ_d g_t (Δu)_t
                torch.sum(torch.mul(g, B[t, :, None, :], out=P), dim=-1, out=g_du[t])
                g.mul_(dAs[i])  # Ā_t g_t: this step's share of g_{t-1}
                torch.mul(g, hs[i], out=P)  # P_t
                acc_A.addcmul_(P, delta[t, :, :, None])
                torch.sum(P.mul_(A), dim=-1, out=g_delta[t])
        return g_delta, g_du, acc_A.sum(0), g_B, g_C, None


def selective_scan(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
    z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
    return_last_state: bool = False, chunk: int = DEFAULT_CHUNK,
) -> Tensor | tuple[Tensor, Tensor]:
    """Same contract as ``selective_scan_ref``, dispatched to the fastest exact implementation here."""
    if u.is_cuda and HAS_MAMBA_SSM:
        return _mamba_selective_scan_fn(
            u, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
            return_last_state=return_last_state,
        )
    dtype_in, dtype = u.dtype, _compute_dtype(u)
    u = u.to(dtype)
    delta = _prepare_delta(delta, delta_bias, delta_softplus, dtype)
    tracing = torch.compiler.is_compiling() or torch.compiler.is_exporting()
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (u, delta, A, B, C))
    fused = not tracing and fused_scan.usable(u, delta) and (needs_grad or fused_scan.inference_active())
    if fused:  # CPU training, or rollouts inside fused_scan.inference(): the numba kernels (fused_scan.py)
        out, h = fused_scan.fused_selective_scan(u, delta, A, B, C, D, z)  # skip and gate fused in
        out = out.to(dtype_in)
        return (out, h) if return_last_state else out
    time_major = [t.permute(2, 0, 1).contiguous() for t in (delta, delta * u, B.to(dtype), C.to(dtype))]
    if needs_grad and not tracing:  # fused_scan unusable (no numba, or SSMC_FUSED_SCAN=0): the torch scan
        y, h = SelectiveScanFn.apply(time_major[0], time_major[1], A.to(dtype), *time_major[2:], chunk)
    else:
        y, h = _scan_sequential(time_major[0], time_major[1], A.to(dtype), *time_major[2:])
    out = _finish(y.permute(1, 2, 0), u, D, None if z is None else z.to(dtype)).to(dtype_in)
    return (out, h) if return_last_state else out


def ssm_step(
    h: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor
) -> tuple[Tensor, Tensor]:
    """One recurrence step (mamba_ssm's ``selective_state_update_ref`` with Δ already softplus'd, no gate).

    h: (b, d, n); u, delta: (b, d); A: (d, n); B, C: (b, n); D: (d,). Returns y_t (b, d) and h_t.
    """
    dA = torch.exp(delta[:, :, None] * A)  # Ā_t, (b, d, n)
    dBu = (delta * u)[:, :, None] * B[:, None, :]  # B̄_t u_t, (b, d, n)
    h = h * dA + dBu
    y = (h * C[:, None, :]).sum(-1) + D * u
    return y, h
