"""Mamba's causal depthwise conv1d and the SiLU after it, fused for CPU training (numba, as fused_scan.py).

Through torch this is a conv1d on a (b, d, l) transpose of the activations, a slice, a transpose back and
a SiLU, each with its backward: about a tenth of a DeMa training step (tools/bench/train_throughput.py
--profile: convolution_backward and silu_backward alone ~10 %). Here it is one loop nest forward and one
backward on the batch-major (b, l, d) tensors Mamba has, vectorised over channels (kernels in
_fused_kernels.py). Used when Mamba.forward trains on CPU with the fused scan on (``fused_scan.usable``);
evaluation and export keep ``conv1d`` (tests/test_fused_scan.py checks both agree, values and gradients).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ssmc.train.models.fused_scan import _np


class FusedConvSiluFn(torch.autograd.Function):
    """x (b, l, d); weight (d, 1, K) as nn.Conv1d holds it; bias (d,) or None -> silu(conv(x))
    (b, l, d), the conv causal (K - 1 zeros before the first token)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None):
        from ssmc.train.models import _fused_kernels as k

        x = x.contiguous()  # a view into in_proj's (b, l, 2·d) output: copied, so the loops vectorise
        b, L, d = x.shape
        wT = weight[:, 0, :].t().contiguous()  # (K, d)
        bias_ = x.new_zeros(d) if bias is None else bias.contiguous()
        pre, out = x.new_empty(b, L, d), x.new_empty(b, L, d)
        k.conv_silu_forward(_np(x), _np(wT), _np(bias_), pre.numpy(), out.numpy())
        ctx.save_for_backward(x, wT, pre)
        ctx.has_bias, ctx.weight_shape = bias is not None, weight.shape
        return out

    @staticmethod
    def backward(ctx, gout: Tensor):
        from ssmc.train.models import _fused_kernels as k

        x, wT, pre = ctx.saved_tensors
        gx = torch.empty(x.shape, dtype=x.dtype)
        gwT, gbias = torch.zeros_like(wT), x.new_zeros(x.shape[2])
        k.conv_silu_backward(_np(x), _np(wT), _np(pre), _np(gout.contiguous()), gx.numpy(), gwT.numpy(),
                             gbias.numpy())
        gw = gwT.t().reshape(ctx.weight_shape)  # (d, 1, K)
        return gx, gw, gbias if ctx.has_bias else None


def conv_silu(x: Tensor, conv: torch.nn.Conv1d) -> Tensor:
    """silu(causal depthwise ``conv``(x)) for x (b, l, d): the fused kernels (CPU, fp32/fp64)."""
    return FusedConvSiluFn.apply(x, conv.weight.to(x.dtype), None if conv.bias is None else conv.bias.to(x.dtype))
