"""``ssmc::selective_scan``: the scan as one opaque operator in ssmc's exported step graphs.

Exported as plain tensor ops (``scan._scan_sequential``, ``scan.ssm_step``), a scan over L tokens is
unrolled into L copies of exp, state update and reduction, each a kernel with a (d_inner, d_state)
intermediate: the compiled window step grows with K and spends its time in kernel calls. Inside
``fused_scan_export()`` ``Mamba.forward`` and ``Mamba.step`` call this operator instead, so the exported
program holds one node per layer; compile/pipeline.py lowers it to the loop of compile/scan_kernel.py.

Outside that context nothing changes: training, evaluation and the peers' exports (ONNX Runtime,
IREE, ExecuTorch in tools/bench/) see the plain graph, which they can all read.

Layouts are batch-major, as the models produce them (no transposes around the operator)::

    delta, du = Δ·u: (b, l, d)    A: (d, n)    B, C: (b, l, n)    h0: (b, d, n) or None (zeros)
    -> y: (b, l, d) with y_t = C_t · h_t,  h_L: (b, d, n)

The eager implementation (used when the exported program is run by PyTorch, and as the operator's
meaning) is ``scan._scan_sequential``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from ssmc.train.models.scan import _scan_sequential

_ACTIVE = False


@contextlib.contextmanager
def fused_scan_export() -> Iterator[None]:
    """Within this block, Mamba layers emit ``ssmc::selective_scan`` instead of unrolled ops."""
    global _ACTIVE
    previous, _ACTIVE = _ACTIVE, True
    try:
        yield
    finally:
        _ACTIVE = previous


def fused_scan_active() -> bool:
    return _ACTIVE


@torch.library.custom_op("ssmc::selective_scan", mutates_args=())
def selective_scan_op(delta: Tensor, du: Tensor, A: Tensor, B: Tensor, C: Tensor,
                      h0: Tensor | None) -> tuple[Tensor, Tensor]:
    """h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δu)_t B_t,  y_t = Σ_n h_t C_t; returns (y (b, l, d), h_L (b, d, n)).

    ``scan._scan_sequential`` on time-major views (h0 cloned: an operator's outputs may not alias inputs).
    """
    y, h = _scan_sequential(delta.transpose(0, 1), du.transpose(0, 1), A, B.transpose(0, 1), C.transpose(0, 1),
                            None if h0 is None else h0.clone())
    return y.transpose(0, 1).contiguous(), h


@selective_scan_op.register_fake
def _selective_scan_fake(delta: Tensor, du: Tensor, A: Tensor, B: Tensor, C: Tensor,
                         h0: Tensor | None) -> tuple[Tensor, Tensor]:
    b, L, d = delta.shape
    return delta.new_empty(b, L, d), delta.new_empty(b, d, A.shape[1])


def selective_scan_tokens(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, z: Tensor,
                          delta_bias: Tensor) -> Tensor:
    """Mamba's scan on batch-major tensors through the operator, from a zero state.

    u, delta (before bias and softplus), z: (b, l, d); B, C: (b, l, n); A: (d, n); D, delta_bias: (d,).
    Returns (y + D u) · silu(z): (b, l, d), as ``scan.selective_scan`` does on (b, d, l).
    """
    delta = F.softplus(delta + delta_bias)
    y, _ = selective_scan_op(delta, delta * u, A, B, C, None)
    return (y + u * D) * F.silu(z)


def ssm_step_op(h: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                D: Tensor) -> tuple[Tensor, Tensor]:
    """``scan.ssm_step`` through the operator (one token): same arguments, same results."""
    y, h = selective_scan_op(delta[:, None], (delta * u)[:, None], A, B[:, None], C[:, None], h)
    return y[:, 0] + D * u, h
