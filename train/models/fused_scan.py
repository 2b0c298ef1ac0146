"""Fused CPU selective scan for training: forward and backward as compiled loops over tokens (numba).

The scheme is mamba-ssm's CUDA kernel's (``selective_scan_fwd_kernel`` / ``selective_scan_bwd_kernel``),
on a CPU core instead of a thread block:

- forward: for every (batch, channel) pair keep its state h (d_state floats) in a local buffer that stays
  in L1, walk the tokens once, write y (b, d, l) and the last state; nothing of size (b, l, d, n) exists.
- backward: for the same pair, recompute the pair's states into an (l + 1, n) buffer (l·n floats: 80 KB at
  DeMa-RNN's K = 200 and d_state 64, inside L2), then run the adjoint recurrence backwards in time
  (formulas in ``scan.SelectiveScanFn``). Only the inputs are saved between forward and backward.

Why numba rather than a C++ extension: it installs as a wheel with no compiler on the machine (a
``torch.utils.cpp_extension`` build needs g++, ninja and ~1 min of compiling against torch's headers on
every fresh machine and torch version), it compiles once per dtype and caches to disk (``cache=True``), and
the kernel stays readable Python beside the reference it is tested against (tests/test_fused_scan.py).

exp: fp32 inputs use a polynomial 2^x (the same range reduction as the compiler's ``fast-exp``, ~2 ulp)
written so that LLVM vectorises the inner loop over d_state; libm's ``expf`` is a call per element that
blocks vectorisation and was most of the scan's time. fp64 inputs use ``math.exp`` (exact, for gradcheck).

Layouts (the ones Mamba produces without copies where possible): u, delta (b, d, l); A (d, n);
B, C (b, l, n). Outputs: y (b, d, l), last state (b, d, n).
"""

from __future__ import annotations

import functools
import importlib.util
import os

import numpy as np
import torch
from torch import Tensor

ENV_SWITCH = "SSMC_FUSED_SCAN"  # set to 0 to train with scan.SelectiveScanFn instead (the "before" benchmark)


@functools.cache
def has_numba() -> bool:
    return importlib.util.find_spec("numba") is not None


def _kernels():
    from ssmc.train.models import _fused_kernels

    return _fused_kernels


THREADS_ENV = "SSMC_SCAN_THREADS"  # >1: the kernels split batch rows over that many numba threads


def _threads(batch: int) -> int:
    """Threads for the kernels: 1 (the serial kernels) unless SSMC_SCAN_THREADS asks for more. Opt-in:
    torch's OpenMP workers spin after each op and fight numba's for the cores (one try on this 2-core shared
    machine: a DeMa step on 2 threads took 7x longer than on one; docs/training-throughput.md)."""
    want = min(int(os.environ.get(THREADS_ENV, "1") or 1), batch)
    if want <= 1:
        return 1
    import numba

    n = min(want, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(n)
    return n


def _np(t: Tensor) -> np.ndarray:
    return t.detach().numpy()


class FusedSelectiveScanFn(torch.autograd.Function):
    """u, delta (b, d, l) with Δ already biased and softplus'd; A (d, n); B, C (b, l, n).

    Returns y (b, d, l) (the scan's C·h, before the D skip and the gate) and the last state (b, d, n),
    which is not differentiable. All inputs must be contiguous CPU tensors of one dtype (fp32 or fp64).
    """

    @staticmethod
    def forward(ctx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor):
        b, d, L = u.shape
        y = u.new_empty(b, d, L)
        h = u.new_empty(b, d, A.shape[1])
        k = _kernels()
        (k.forward_parallel if _threads(b) > 1 else k.forward)(_np(u), _np(delta), _np(A), _np(B), _np(C),
                                                              y.numpy(), h.numpy())
        ctx.save_for_backward(u, delta, A, B, C)
        ctx.mark_non_differentiable(h)
        return y, h

    @staticmethod
    def backward(ctx, gy: Tensor, _gh_last: Tensor):
        u, delta, A, B, C = ctx.saved_tensors
        gy = gy.contiguous()
        gu, gdelta = torch.empty_like(u), torch.empty_like(delta)
        gB, gC = torch.zeros_like(B), torch.zeros_like(C)
        args = (_np(u), _np(delta), _np(A), _np(B), _np(C), _np(gy), gu.numpy(), gdelta.numpy())
        if _threads(u.shape[0]) > 1:
            gA_rows = u.new_zeros(u.shape[0], *A.shape)  # (b, d, n): per-row partials, no shared writes
            _kernels().backward_parallel(*args, gA_rows.numpy(), gB.numpy(), gC.numpy())
            gA = gA_rows.sum(0)
        else:
            gA = torch.zeros_like(A)
            _kernels().backward(*args, gA.numpy(), gB.numpy(), gC.numpy())
        return gu, gdelta, gA, gB, gC


def fused_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
    """The fused scan on scan.py's layouts: u, delta (b, d, l); A (d, n); B, C (b, n, l).

    Returns y (b, d, l) without the D skip or gate, and h_L (b, d, n). Differentiable in all five inputs.
    """
    if not has_numba():
        raise RuntimeError("the fused CPU scan needs numba (pip install numba)")
    dtype = u.dtype
    u, delta = u.contiguous(), delta.to(dtype).contiguous()
    A = A.to(dtype).contiguous()
    B, C = B.to(dtype).transpose(1, 2).contiguous(), C.to(dtype).transpose(1, 2).contiguous()
    return FusedSelectiveScanFn.apply(u, delta, A, B, C)


def usable(u: Tensor, delta: Tensor) -> bool:
    """True when the fused scan runs here: numba importable, CPU fp32/fp64 tensors, not switched off."""
    return (u.device.type == "cpu" and u.dtype in (torch.float32, torch.float64)
            and os.environ.get(ENV_SWITCH, "1") != "0" and has_numba())
