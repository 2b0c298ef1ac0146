"""int8 weight-only quantisation of the Linear layers, per output channel (symmetric, no zero point).

What is quantised and what is not (the usual guidance for Mamba: the selective-scan parameters are
sensitive, the projections are not):

- every ``nn.Linear`` weight of the backbone (Mamba's in_proj, x_proj, out_proj; DMM's sequence mixers;
  DT's attention and MLP) is stored as int8 with one fp32 scale per output channel:
  ``scale = max|W[o, :]| / 127``, ``q = round(W / scale)``;
- fp32 stay: Mamba's ``dt_proj`` (it makes Δ, an SSM parameter), ``A_log``, ``D``, conv1d, norms,
  biases, the state, and the first and last layers (the token embeddings ``embed_*`` and the action
  ``head``), as is usual for weight-only quantisation. Measured on a trained DeMa (hopper, 60 steps):
  quantising those too raised the worst action error from 1.0e-2 to 5.5e-2 (each alone ~2e-2) while
  saving 31 KB of its 656 KB; on a trained DT from 5.3e-2 to 9.1e-2;
- activations stay fp32: the layer computes ``(x @ q.float()) * scale + bias`` (weight-only; the
  per-channel scale is applied to the matmul's output, which equals ``x @ (q.float() * scale)``).

The int8 weight is stored transposed, (in, out), so the graph multiplies by it directly (no transpose
per step). In the exported graph ``x @ q.float()`` is a cast feeding a matmul; the pipeline's
``int8-matmuls`` stage turns it into one mixed-dtype matmul that reads the int8 weight as stored, so
FoldConstant has no cast of a constant to fold back into fp32 (see pipeline.py).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch import Tensor

from ssmc.train.models import PolicyModel

#: Linear layers left in fp32, by the module's own name: Δ's projection, and the first and last layers.
KEEP_FP32 = ("dt_proj", "embed_*", "head")


def keeps_fp32(name: str) -> bool:
    """Whether the Linear layer at module path ``name`` stays fp32 (see ``KEEP_FP32``)."""
    leaf = name.rsplit(".", 1)[-1]
    return any(leaf.startswith(k[:-1]) if k.endswith("*") else leaf == k for k in KEEP_FP32)


class Int8Linear(nn.Module):
    """``nn.Linear`` with an int8 weight (in, out) and an fp32 scale per output channel."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float()  # (out, in)
        scale = w.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127.0
        q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_int8", q.t().contiguous())  # (in, out)
        self.register_buffer("scale", scale.contiguous())  # (out,)
        bias = linear.bias.detach().float().clone() if linear.bias is not None else None
        self.register_buffer("bias", bias)

    def dequantized(self) -> Tensor:
        """The fp32 weight this layer multiplies by, (in, out)."""
        return self.weight_int8.to(torch.float32) * self.scale

    def columns(self, x: Tensor, start: int, stop: int) -> Tensor:
        """Output channels ``start:stop`` alone: the same dot products as ``forward(x)[..., start:stop]``.

        Mamba's ``_x_proj`` (train/models/mamba.py) takes Δ's and B/C's columns as two products so each is a
        vector-width multiple wide; the int8 weight is sliced in the graph, and the pipeline's
        ``int8-matmuls`` stage folds that slice on the int8 constant (it stays int8)."""
        y = (x.reshape(-1, self.in_features) @ self.weight_int8[:, start:stop].to(torch.float32)) * self.scale[start:stop]
        if self.bias is not None:
            y = y + self.bias[start:stop]
        return y.reshape(*x.shape[:-1], stop - start)

    def forward(self, x: Tensor) -> Tensor:
        # A 2-D matmul whatever x's rank: on a transposed (non-contiguous) 3-D input, torch.export would
        # otherwise emit a bmm with the weight broadcast to 3-D, a shape the int8-matmuls stage does not
        # match, and FoldConstant would fold that broadcast weight to fp32 (measured on DeMa's x_proj).
        y = (x.reshape(-1, self.in_features) @ self.weight_int8.to(torch.float32)) * self.scale
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


def quantize_int8(model: PolicyModel) -> PolicyModel:
    """A copy of ``model`` with its Linear layers (except those ``keeps_fp32`` names) as ``Int8Linear``."""
    q = copy.deepcopy(model).eval()
    targets = [(name, module) for name, module in q.named_modules()
               if isinstance(module, nn.Linear) and not keeps_fp32(name)]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = q.get_submodule(parent_name) if parent_name else q
        setattr(parent, child, Int8Linear(module))
    return q


def int8_layers(model: nn.Module) -> list[Int8Linear]:
    """The ``Int8Linear`` layers of a quantised model."""
    return [m for m in model.modules() if isinstance(m, Int8Linear)]
