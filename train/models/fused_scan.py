"""Fused CPU selective scan for training: forward and backward as compiled loops over tokens (numba).

The scheme is mamba-ssm's CUDA kernel's (``selective_scan_fwd_kernel`` / ``selective_scan_bwd_kernel``),
on a CPU core instead of a thread block:

- forward: for every (batch, channel) pair keep its state h (d_state floats) in a local buffer that stays
  in L1, walk the tokens once, write the output and the last state, and keep the state every ``CHUNK``
  tokens (checkpoints); nothing of size (b, l, d, n) exists.
- backward: for the same pair, one chunk at a time from the last, recompute the chunk's states from its
  checkpoint into a (CHUNK + 1, n) buffer, then run the adjoint recurrence backwards through it (formulas
  in ``scan.SelectiveScanFn``). Saved between forward and backward: the inputs, the pre-gate output and
  the checkpoints.

Why numba rather than a C++ extension: it installs as a wheel with no compiler on the machine (a
``torch.utils.cpp_extension`` build needs g++, ninja and ~1 min of compiling against torch's headers on
every fresh machine and torch version), it compiles once per dtype and caches to disk (``cache=True``), and
the kernel stays readable Python beside the reference it is tested against (tests/test_fused_scan.py).

exp: fp32 inputs use a polynomial 2^x (the same range reduction as the compiler's ``fast-exp``, ~2 ulp)
written so that LLVM vectorises the inner loop over d_state; libm's ``expf`` is a call per element that
blocks vectorisation and was most of the scan's time. fp64 inputs use ``math.exp`` (exact, for gradcheck).

The D skip and the SiLU(z) gate are fused too (as in mamba-ssm's kernel), and the kernels take u, Δ and z
as (b, l, d) views of Mamba's batch-major activations with whatever strides they have (each batch row is
transposed once into channel-major buffers inside the kernel): the transposes
to and from a (b, d, l) layout, and the separate skip and gate ops with their backward passes, were about
a tenth of a DeMa layer's training time (torch.profiler, tools/bench/train_throughput.py --profile).

The backward walks channels in pairs that share the loads of B_t, C_t and the updates of their gradients
(about 15 % off the backward at DeMa's shape). Layouts: u, Δ, z and the output (b, l, d), any strides;
A (d, n); B, C (b, l, n); last state (b, d, n).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

ENV_SWITCH = "SSMC_FUSED_SCAN"  # set to 0 to train with scan.SelectiveScanFn instead (the "before" benchmark)
_INFERENCE = False


@contextlib.contextmanager
def inference() -> Iterator[None]:
    """Within this block, gradient-free CPU scans run the fused forward kernel too (one call per layer
    instead of the token loop of torch ops in ``scan._scan_sequential``). Rollouts use it
    (``rollout.evaluate_checkpoint``): a DeMa window step went from 13.2 to 3.5 ms, DMM's from 8.7 to 1.7
    (eager, one thread). Outside it, evaluation keeps the torch scan, the reference that compiled artifacts
    are verified against; the two agree to ~1e-7 relative (the fast exp), tests/test_fused_scan.py."""
    global _INFERENCE
    previous, _INFERENCE = _INFERENCE, True
    try:
        yield
    finally:
        _INFERENCE = previous


def inference_active() -> bool:
    return _INFERENCE


@functools.cache
def has_numba() -> bool:
    return importlib.util.find_spec("numba") is not None


def _kernels():
    from ssmc.train.models import _fused_kernels

    return _fused_kernels


CHUNK = 64  # tokens per checkpoint: the backward recomputes states this many at a time (bounded buffers)
THREADS_ENV = "SSMC_SCAN_THREADS"  # the kernels' thread count, when it should differ from torch's


def _threads(batch: int) -> int:
    """Threads for the kernels: torch's own thread count (``torch.set_num_threads``, ``ssmc train
    --threads``) unless SSMC_SCAN_THREADS says otherwise; 1 runs the serial kernels. Batch rows are split
    over the threads. Measured on this 2-core machine (numba's OpenMP threading layer, nothing else
    running), two threads against one took a DeMa training step from 273 to 157 ms and DMM's from 71 to 48
    (docs/training-throughput.md); an earlier try, with a sweep running beside it, had found two threads
    7x slower, so a loaded machine may want SSMC_SCAN_THREADS=1."""
    want = os.environ.get(THREADS_ENV, "")
    want = min(int(want) if want else torch.get_num_threads(), batch)
    if want <= 1:
        return 1
    import numba

    n = min(want, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(n)
    return n


def _np(t: Tensor) -> np.ndarray:
    return t.detach().numpy()


class FusedSelectiveScanFn(torch.autograd.Function):
    """Mamba's scan with its D skip and SiLU(z) gate, on batch-major tensors:
    out = (C·h + D u) · silu(z), h_t = exp(Δ_t A) h_{t-1} + Δ_t u_t B_t from a zero state.

    u, delta (Δ, already biased and softplus'd), z: (b, l, d), any strides (the kernels read one element
    per token, so views of Mamba's (b, l, ·) activations need no copy); A (d, n); B, C (b, l, n)
    contiguous; D (d,) or None (no skip); z None for no gate. One dtype throughout (fp32 or fp64).
    Returns out (b, l, d) and the last state (b, d, n), which is not differentiable.
    """

    @staticmethod
    def forward(ctx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                z: Tensor | None):
        b, L, d = u.shape
        gate = z is not None
        D_ = u.new_zeros(d) if D is None else D
        z_ = u if z is None else z  # not read when there is no gate
        out = u.new_empty(b, L, d)
        ys = u.new_empty(b, L, d) if gate else out  # y before the gate, for the backward
        h = u.new_empty(b, d, A.shape[1])
        chunk = CHUNK
        ckpt = u.new_empty(b, d, (L - 1) // chunk, A.shape[1])  # states before tokens chunk, 2·chunk, ...
        k = _kernels()
        (k.forward_parallel if _threads(b) > 1 else k.forward)(
            _np(u), _np(delta), _np(A), _np(B), _np(C), _np(D_), _np(z_), gate, out.numpy(), ys.numpy(), h.numpy(),
            ckpt.numpy(), chunk)
        ctx.save_for_backward(u, delta, A, B, C, D_, z_, ys, ckpt)
        ctx.chunk = chunk
        ctx.gate, ctx.has_D = gate, D is not None
        ctx.mark_non_differentiable(h)
        return out, h

    @staticmethod
    def backward(ctx, gout: Tensor, _gh_last: Tensor):
        u, delta, A, B, C, D, z, ys, ckpt = ctx.saved_tensors
        gu, gdelta = torch.empty_like(u, memory_format=torch.contiguous_format), torch.empty_like(
            delta, memory_format=torch.contiguous_format)
        gz = torch.empty_like(z, memory_format=torch.contiguous_format) if ctx.gate else gu  # unused without gate
        gB, gC = torch.zeros_like(B), torch.zeros_like(C)
        args = (_np(u), _np(delta), _np(A), _np(B), _np(C), _np(D), _np(z), ctx.gate, _np(ys), _np(gout),
                gu.numpy(), gdelta.numpy(), gz.numpy())
        b = u.shape[0]
        if _threads(b) > 1:
            gA_rows, gD_rows = u.new_zeros(b, *A.shape), u.new_zeros(b, D.shape[0])
            _kernels().backward_parallel(*args, gA_rows.numpy(), gB.numpy(), gC.numpy(), gD_rows.numpy(),
                                         ckpt.numpy(), ctx.chunk)
            gA, gD = gA_rows.sum(0), gD_rows.sum(0)
        else:
            gA, gD = torch.zeros_like(A), torch.zeros_like(D)
            _kernels().backward(*args, gA.numpy(), gB.numpy(), gC.numpy(), gD.numpy(), ckpt.numpy(), ctx.chunk)
        return gu, gdelta, gA, gB, gC, gD if ctx.has_D else None, gz if ctx.gate else None


def fused_selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                         z: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The fused scan on scan.py's layouts: u, delta, z (b, d, l); A (d, n); B, C (b, n, l); D (d,).

    delta is Δ itself (biased and softplus'd by the caller). Returns out = (C·h + D u) · silu(z) as a
    (b, d, l) view of a batch-major tensor (what Mamba transposes back for free) and h_L (b, d, n).
    Differentiable in every input but h_L.
    """
    if not has_numba():
        raise RuntimeError("the fused CPU scan needs numba (pip install numba)")
    dtype = u.dtype
    bld = [None if t is None else t.to(dtype).transpose(1, 2) for t in (u, delta, z)]  # views, no copies
    A = A.to(dtype).contiguous()
    B, C = B.to(dtype).transpose(1, 2).contiguous(), C.to(dtype).transpose(1, 2).contiguous()
    D = None if D is None else D.to(dtype).contiguous()
    out, h = FusedSelectiveScanFn.apply(bld[0], bld[1], A, B, C, D, bld[2])
    return out.transpose(1, 2), h


def fused_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
    """The scan alone (no D skip, no gate): y (b, d, l) = C·h, and h_L (b, d, n); layouts as above."""
    return fused_selective_scan(u, delta, A, B, C)


def usable(u: Tensor, delta: Tensor) -> bool:
    """True when the fused scan runs here: numba importable, CPU fp32/fp64 tensors, not switched off."""
    return (u.device.type == "cpu" and u.dtype in (torch.float32, torch.float64)
            and os.environ.get(ENV_SWITCH, "1") != "0" and has_numba())
