"""Decision Transformer (Chen et al. 2021, "Decision Transformer: Reinforcement Learning via Sequence
Modeling", Section 3 and Figure 1): the transformer baseline of the zoo.

Tokens (R_t, s_t, a_t) per timestep, each embedded by a linear layer plus a learned timestep embedding,
``embed_ln``, GPT-2 blocks (pre-LN, causal self-attention, 4x MLP), final LayerNorm; a_t is predicted
from the output at the s_t token. MuJoCo sizes as kzl/decision-transformer and CORL's dt.py: K = 20,
h = 128, 3 layers, 1 head, dropout 0.1, 1000-row timestep table: 0.73 M parameters on hopper.

Choices (the papers leave them open; docs/models-spec.md):
- Padding: an attention mask built from ``mask`` hides padded keys from every query (a padded query
  attends to itself only, so no row is empty); real outputs are independent of what the padding holds.
- MLP activation ``relu`` as the original gym code's default (CORL uses ``gelu``; a config option).
- Initialisation as GPT-2 for the transformer (N(0, 0.02), residual projections scaled by
  1/sqrt(2·n_layer)); the embeddings and head keep PyTorch's defaults, as in the original code.
- Window step: the last K timesteps, left-padded with zeros (mask 0, timestep 0) exactly as training
  windows; the current a_t slot holds zeros (causality makes it irrelevant) and is overwritten with the
  prediction for the next step. Timesteps come from a counter in the state, clamped to the table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ssmc.train.models.common import (
    Batch,
    ModelConfig,
    PolicyModel,
    State,
    interleave,
    linear_macs,
    replace_last,
    shift_in,
)

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


@dataclass(kw_only=True)
class DTConfig(ModelConfig):
    K: int = 20  # K timesteps = 60 tokens
    hidden: int = 128  # embedding width h
    n_layer: int = 3
    n_head: int = 1
    dropout: float = 0.1  # embedding, attention and residual dropout
    max_ep_len: int = 1000  # rows of the timestep embedding table
    activation: str = "relu"  # kzl/decision-transformer's gym default; CORL uses gelu

    def validate(self) -> None:
        super().validate()
        self._positive_int("hidden", "n_layer", "n_head", "max_ep_len")
        self._probability("dropout")
        self._choice("activation", tuple(ACTIVATIONS))
        if self.hidden % self.n_head:
            self._fail("hidden", f"divisible by n_head={self.n_head}")


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: DTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.hidden, 3 * cfg.hidden)
        self.c_proj = nn.Linear(cfg.hidden, cfg.hidden)
        self.attn_dropout = nn.Dropout(cfg.dropout)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        """x: (B, T, h); allowed: (B, 1, T, T) bool, query i may attend to key j."""
        b, t, h = x.shape
        q, k, v = self.c_attn(x).split(h, dim=2)
        q, k, v = (y.view(b, t, self.n_head, h // self.n_head).transpose(1, 2) for y in (q, k, v))  # (B, nh, T, hs)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.shape[-1]))  # (B, nh, T, T)
        att = self.attn_dropout(F.softmax(att.masked_fill(~allowed, float("-inf")), dim=-1))
        y = (att @ v).transpose(1, 2).reshape(b, t, h)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: DTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.hidden, 4 * cfg.hidden)
        self.act = ACTIVATIONS[cfg.activation]()
        self.c_proj = nn.Linear(4 * cfg.hidden, cfg.hidden)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    """GPT-2 block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, cfg: DTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.hidden)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.hidden)
        self.mlp = MLP(cfg)

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x), allowed)
        return x + self.mlp(self.ln_2(x))


class DecisionTransformer(PolicyModel):
    name = "dt"
    semantics = "window"
    config_class = DTConfig

    def __init__(self, config: DTConfig) -> None:
        super().__init__(config)
        c = config
        self.embed_timestep = nn.Embedding(c.max_ep_len, c.hidden)
        self.embed_return = nn.Linear(1, c.hidden)
        self.embed_state = nn.Linear(c.obs_dim, c.hidden)
        self.embed_action = nn.Linear(c.act_dim, c.hidden)
        self.embed_ln = nn.LayerNorm(c.hidden)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.hidden)
        self.head = nn.Linear(c.hidden, c.act_dim)
        for name, p in self.blocks.named_parameters():  # GPT-2 initialisation of the transformer
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * c.n_layer))
            elif name.endswith("weight") and p.dim() == 2:
                nn.init.normal_(p, std=0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def _hidden(self, observations: Tensor, actions: Tensor, rtg: Tensor, timesteps: Tensor, mask: Tensor) -> Tensor:
        """(B, K, ·) inputs -> transformer outputs (B, 3K, h) for tokens R_0, s_0, a_0, R_1, ..."""
        b, k, _ = observations.shape
        time = self.embed_timestep(timesteps.clamp(0, self.config.max_ep_len - 1))  # (B, K, h)
        x = interleave(self.embed_return(rtg) + time, self.embed_state(observations) + time,
                       self.embed_action(actions) + time)  # (B, 3K, h)
        x = self.drop(self.embed_ln(x))
        real = mask.bool().repeat_interleave(3, dim=1)  # (B, 3K), per token
        causal = torch.ones(3 * k, 3 * k, dtype=torch.bool, device=x.device).tril()
        eye = torch.eye(3 * k, dtype=torch.bool, device=x.device)
        allowed = (causal & (real[:, None, :] | eye))[:, None]  # (B, 1, 3K, 3K)
        for block in self.blocks:
            x = block(x, allowed)
        return self.ln_f(x)

    def forward(self, batch: Batch) -> Tensor:
        obs = batch["observations"]
        mask = batch.get("mask")
        mask = torch.ones(obs.shape[:2], device=obs.device) if mask is None else mask
        x = self._hidden(obs, batch["actions"], batch["rtg"], batch["timesteps"], mask)
        return torch.tanh(self.head(x[:, 1::3]))  # predict a_t from the s_t token, (B, K, act_dim)

    def init_state(self, batch_size: int = 1) -> State:
        c, dev = self.config, self._device()
        return {
            "observations": torch.zeros(batch_size, c.K, c.obs_dim, device=dev),
            "actions": torch.zeros(batch_size, c.K, c.act_dim, device=dev),
            "rtg": torch.zeros(batch_size, c.K, 1, device=dev),
            "timesteps": torch.zeros(batch_size, c.K, dtype=torch.int64, device=dev),
            "mask": torch.zeros(batch_size, c.K, device=dev),
            "t": torch.zeros(batch_size, dtype=torch.int64, device=dev),
        }

    def step(self, state: State, obs: Tensor, rtg: Tensor) -> tuple[Tensor, State]:
        t = state["t"]
        new = {
            "observations": shift_in(state["observations"], obs),
            "actions": shift_in(state["actions"], torch.zeros_like(state["actions"][:, 0])),
            "rtg": shift_in(state["rtg"], rtg),
            "timesteps": shift_in(state["timesteps"], t.clamp(max=self.config.max_ep_len - 1)),
            "mask": shift_in(state["mask"], torch.ones_like(state["mask"][:, 0])),
            "t": t + 1,
        }
        x = self._hidden(new["observations"], new["actions"], new["rtg"], new["timesteps"], new["mask"])
        action = torch.tanh(self.head(x[:, -2]))  # the newest s_t token
        new["actions"] = replace_last(new["actions"], action)
        return action, new

    def macs_per_step(self) -> int:
        """One window forward: embeddings of K timesteps, per token 12h² (qkv, proj, 4x MLP) per layer,
        attention 2·T²·h per layer over the full T = 3K token matrix (as computed, mask applied after),
        and the head once. Norms, softmax, activations and the timestep lookup are not counted."""
        c = self.config
        k, t, h = c.K, 3 * c.K, c.hidden
        embed = k * (linear_macs(self.embed_return) + linear_macs(self.embed_state) + linear_macs(self.embed_action))
        per_layer = t * 12 * h * h + 2 * t * t * h
        return embed + c.n_layer * per_layer + linear_macs(self.head)
