"""The Mamba block (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces",
Section 3.4 and Figure 3), with the parameter names, shapes and initialisation of
``mamba_ssm.modules.mamba_simple.Mamba`` so that state dicts interchange in both directions.

    x ─ in_proj ─┬─ x ─ conv1d (depthwise, causal) ─ SiLU ─ x_proj ─► Δ, B, C ─ selective scan ─┐
                 └─ z ─────────────────────────────────────────── SiLU ─────────────── gate ───┴─ out_proj

Two ways to run it, which must agree to ~1e-6 in fp32 (tests/test_mamba.py):
- ``forward``: a whole (b, l, d_model) sequence from a zero state (training, window inference);
- ``step``: one token on carried state, a pure function of tensors (deployment, export).

The one addition to mamba_ssm's module is ``use_conv=False``, which removes the depthwise conv1d
(Decision MetaMamba replaces it with its dense sequence mixer; see dmm.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ssmc.train.models import fused_conv, fused_scan
from ssmc.train.models.scan import selective_scan, ssm_step
from ssmc.train.models.scan_op import fused_scan_active, selective_scan_op, selective_scan_tokens, ssm_step_op


class Mamba(nn.Module):
    """Selective SSM block; glossary in scan.py. d_inner = expand·d_model, dt_rank = ceil(d_model/16).

    Parameters (mamba_ssm names): in_proj.weight (2·d_inner, d_model); conv1d.weight (d_inner, 1, d_conv);
    conv1d.bias (d_inner); x_proj.weight (dt_rank + 2·d_state, d_inner); dt_proj.weight (d_inner, dt_rank);
    dt_proj.bias (d_inner); A_log (d_inner, d_state); D (d_inner); out_proj.weight (d_model, d_inner).
    Recurrent state: conv (b, d_inner, d_conv - 1) = the previous d_conv - 1 conv inputs (mamba_ssm keeps
    d_conv columns, the newest being the current input; we append it with ``cat`` instead), and ssm
    (b, d_inner, d_state), both fp32.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        use_conv: bool = True,
        conv_bias: bool = True,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.use_conv = use_conv

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        if use_conv:
            self.conv1d = nn.Conv1d(
                self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1, bias=conv_bias
            )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

        # Δ initialisation (paper Section 3.6 / mamba_ssm): weights U(±dt_rank^-0.5); the bias is the inverse
        # softplus of Δ drawn log-uniformly in [dt_min, dt_max], so softplus(bias) starts in that range.
        std = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.dt_proj.bias._no_reinit = True  # model-level inits that zero biases must skip it

        # S4D-real initialisation A = -(1, 2, ..., d_state) for every channel, stored as log(-A); D = 1.
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))  # (d_inner, d_state)
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True

    def _split_xdbl(self, x_dbl: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x_proj output (..., dt_rank + 2·d_state) -> Δ before dt_proj (..., dt_rank), B, C (..., d_state)."""
        r, n = self.dt_rank, self.d_state
        return x_dbl[..., :r], x_dbl[..., r : r + n], x_dbl[..., r + n :]

    def _x_proj(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x_proj, split into Δ before dt_proj (..., dt_rank), B and C (..., d_state).

        Inside ssmc's export, when 2·d_state >= 64, it is two products, x @ W[:dt_rank]ᵀ and
        x @ W[dt_rank:]ᵀ: the same dot products, but the second is 2·d_state wide (a multiple of the vector
        width) where the whole is dt_rank + 2·d_state (DeMa: 132 = 4 · 33, which a compiled kernel can
        only cover with 4-float vectors). Measured on DeMa's recurrent step for the host target
        (tools/bench/static_kernels.py): x_proj 30 µs per step whole, ~10 split. For narrow states
        (DMM: 4 + 32) the extra kernel call costs what the wider vectors save, so the product stays whole.

        compile/quantize.py's ``Int8Linear`` is split the same way through its ``columns``: the int8 weight
        sliced in the graph, a slice the pipeline's ``int8-matmuls`` stage folds on the int8 constant.
        DeMa's int8 x_proj (host-avx512, static_kernels.py): 13.5 µs per step whole, 4.3 split (step 55 -> 38 µs).
        """
        proj = self.x_proj
        if not fused_scan_active() or 2 * self.d_state < 64:
            return self._split_xdbl(proj(x))
        r, n, width = self.dt_rank, self.d_state, self.dt_rank + 2 * self.d_state
        if type(proj) is nn.Linear:
            dt, bc = F.linear(x, proj.weight[:r]), F.linear(x, proj.weight[r:])
        elif callable(getattr(proj, "columns", None)):
            dt, bc = proj.columns(x, 0, r), proj.columns(x, r, width)
        else:
            return self._split_xdbl(proj(x))
        return dt, bc[..., :n], bc[..., n:]

    def forward(self, hidden: Tensor) -> Tensor:
        """hidden: (b, l, d_model) -> (b, l, d_model), from a zero state.

        Inside ssmc's export (``scan_op.fused_scan_export``) the same function is written for a compiler:
        the causal conv as shifted multiply-adds and the scan as one ``ssmc::selective_scan`` node on
        (b, l, channels) tensors, so no transposes are exported; otherwise the conv is ``conv1d`` and the
        scan ``selective_scan`` on mamba_ssm's (b, channels, l) layout (its fused CUDA kernel, our CPU scan).
        """
        fused = fused_scan_active()
        xz = self.in_proj(hidden)  # (b, l, 2·d_inner)
        x, z = xz[..., : self.d_inner], xz[..., self.d_inner :]
        if self.use_conv and not fused and self._train_fused(x):  # CPU training: conv and SiLU in one kernel
            x = fused_conv.conv_silu(x, self.conv1d)
        else:
            if self.use_conv:
                # zeros first: (b, d_conv - 1 + l, d_inner)
                x = self._causal_conv_by_taps(F.pad(x, (0, 0, self.d_conv - 1, 0))) if fused else self._causal_conv(x)
            x = F.silu(x)  # (b, l, d_inner)
        dt, B, C = self._x_proj(x)  # (b, l, ·)
        dt = F.linear(dt, self.dt_proj.weight)  # (b, l, d_inner); bias and softplus inside the scan
        A, D, bias = -torch.exp(self.A_log.float()), self.D.float(), self.dt_proj.bias.float()
        if fused:
            return self.out_proj(selective_scan_tokens(x, dt, A, B, C, D, z, bias))
        y = selective_scan(
            x.transpose(1, 2), dt.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2), D,
            z=z.transpose(1, 2), delta_bias=bias, delta_softplus=True,
        )  # (b, d_inner, l)
        return self.out_proj(y.transpose(1, 2))

    def _train_fused(self, x: Tensor) -> bool:
        """True when this forward trains on CPU with the fused kernels (fused_scan.py, fused_conv.py)."""
        return (torch.is_grad_enabled() and self.conv1d.weight.requires_grad and x.dtype == self.conv1d.weight.dtype
                and not (torch.compiler.is_compiling() or torch.compiler.is_exporting()) and fused_scan.usable(x, x))

    def _causal_conv(self, x: Tensor) -> Tensor:
        """Causal depthwise conv of x (b, l, d_inner) by ``conv1d`` (padded both sides; the right dropped)."""
        return self.conv1d(x.transpose(1, 2))[..., : x.shape[1]].transpose(1, 2)

    def _causal_conv_by_taps(self, window: Tensor) -> Tensor:
        """``_causal_conv`` as its d_conv taps, shifted multiply-adds: one elementwise kernel, vectorised over
        channels, where a conv1d op lowers to a generic loop nest (export only).

        window: (b, d_conv - 1 + l, d_inner), oldest first: the d_conv - 1 inputs before the l new ones
        (zeros from a zero state, ``forward``; the carried conv state, ``step_tokens``) -> (b, l, d_inner).
        """
        L = window.shape[1] - (self.d_conv - 1)
        w = self.conv1d.weight[:, 0, :]  # (d_inner, d_conv); tap k reads x[t - (d_conv - 1) + k]
        conv = window[:, :L] * w[:, 0]
        for k in range(1, self.d_conv):
            conv = conv + window[:, k : k + L] * w[:, k]
        return conv if self.conv1d.bias is None else conv + self.conv1d.bias

    def init_state(self, batch_size: int = 1) -> tuple[Tensor | None, Tensor]:
        """Zero (conv_state, ssm_state) for ``step``; conv_state is None when the conv is removed."""
        device = self.A_log.device
        conv = torch.zeros(batch_size, self.d_inner, self.d_conv - 1, device=device) if self.use_conv else None
        return conv, torch.zeros(batch_size, self.d_inner, self.d_state, device=device)

    def step(
        self, hidden: Tensor, conv_state: Tensor | None, ssm_state: Tensor
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """One token: hidden (b, d_model) -> (y (b, d_model), new conv_state, new ssm_state). Inputs untouched."""
        xz = self.in_proj(hidden)  # (b, 2·d_inner)
        x, z = xz[:, : self.d_inner], xz[:, self.d_inner :]
        if self.use_conv:
            window = torch.cat([conv_state, x[:, :, None]], dim=-1)  # (b, d_inner, d_conv), oldest first
            x = (window * self.conv1d.weight[:, 0, :]).sum(-1)
            if self.conv1d.bias is not None:
                x = x + self.conv1d.bias
            conv_state = window[:, :, 1:]
        x = F.silu(x)
        dt, B, C = self._x_proj(x)
        delta = F.softplus(self.dt_proj(dt))  # (b, d_inner)
        step = ssm_step_op if fused_scan_active() else ssm_step
        y, ssm_state = step(ssm_state, x, delta, -torch.exp(self.A_log.float()), B, C, self.D.float())
        return self.out_proj(y * F.silu(z)), conv_state, ssm_state

    def step_tokens(
        self, hidden: Tensor, conv_state: Tensor | None, ssm_state: Tensor
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """``step`` over L tokens known together: hidden (b, L, d_model) -> (y (b, L, d_model), conv_state,
        ssm_state after the last token). The same function as L calls of ``step``.

        Eagerly it is those L calls. Inside ssmc's export it is written as one chunk: the projections as
        (L, ·) products (each weight read once for the L tokens), the conv as taps over the carried inputs
        followed by the new ones, and the scan as one ``ssmc::selective_scan`` node from ``ssm_state``, so
        the state stays in registers across the L tokens and a step makes one kernel call per op and layer
        instead of L.
        """
        if not fused_scan_active():
            ys = []
            for j in range(hidden.shape[1]):
                y, conv_state, ssm_state = self.step(hidden[:, j], conv_state, ssm_state)
                ys.append(y)
            return torch.stack(ys, dim=1), conv_state, ssm_state
        L = hidden.shape[1]
        xz = self.in_proj(hidden)  # (b, L, 2·d_inner)
        x, z = xz[..., : self.d_inner], xz[..., self.d_inner :]
        if self.use_conv:
            window = torch.cat([conv_state.transpose(1, 2), x], dim=1)  # (b, d_conv - 1 + L, d_inner), oldest first
            x = self._causal_conv_by_taps(window)
            conv_state = window[:, L:].transpose(1, 2)  # the last d_conv - 1 inputs, (b, d_inner, d_conv - 1)
        x = F.silu(x)
        dt, B, C = self._x_proj(x)
        delta = F.softplus(self.dt_proj(dt))  # (b, L, d_inner)
        y, ssm_state = selective_scan_op(delta, delta * x, -torch.exp(self.A_log.float()), B, C, ssm_state)
        y = y + x * self.D.float()
        return self.out_proj(y * F.silu(z)), conv_state, ssm_state

    def macs_per_token(self) -> int:
        """Multiply-accumulates for one token: projections, conv taps, and 3·d_inner·d_state for the scan
        (Δ·B·u, Ā⊙h + B̄u, C·h), plus the D skip and the gate; exp/softplus/SiLU are not counted."""
        di, n, r = self.d_inner, self.d_state, self.dt_rank
        macs = self.d_model * 2 * di + di * (r + 2 * n) + r * di + 3 * di * n + 2 * di + di * self.d_model
        return macs + (di * self.d_conv if self.use_conv else 0)
