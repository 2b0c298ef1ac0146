"""MambaDM, Mamba Decision Maker (Cao et al., "Mamba as Decision Maker: Exploring Multi-scale Sequence
Modeling in Offline Reinforcement Learning"), built on its Global-local Fusion Mamba (GLoMa) mixer.

What the paper fixes (Figure 1): embeddings of the return-to-go-conditioned trajectory; N layers, each a
global branch (Mamba over the whole token sequence) and a local branch (Mamba over short sub-sequences)
whose outputs are fused and fed to a feed-forward network; an action predictor. No public code exists,
so everything below it leaves open is a choice, a config field, and written down here (and in docs/models-spec.md):

- Tokens (R_t, s_t, a_t) per timestep, interleaved ("B3LD") as DT and DMM; linear embeddings, embed_ln,
  dropout 0.1 (DT's); no timestep embedding (Mamba's scan is itself positional, as DeMa and DMM drop it).
  a_t is read from the s_t token through a tanh head.
- Layer (pre-norm residuals, as mamba_ssm's Block and GPT-2):
  ``x <- x + Fuse(Global(LN_1(x)), Local(LN_1(x)))``, then ``x <- x + FFN(LN_2(x))``; final LayerNorm.
  Global and Local are separate ``Mamba`` modules (mamba.py, mamba_ssm names) with the same sizes.
- Sub-sequences (``local_tokens``, default 3): the token stream is cut into consecutive runs of
  ``local_tokens`` tokens counted from the start of the sequence, and the local Mamba runs on each run
  from a zero state (conv and SSM state reset at every run start). The default 3 is one timestep's
  (R_t, s_t, a_t): the paper's "local correlation" is the MDP's, within one transition. Multiples of 3
  keep timesteps whole; any positive length is accepted.
- Fusion (``fusion``): ``sum`` (default) adds the branch outputs; ``concat`` concatenates them and
  projects with Linear(2h -> h). Each branch already ends in its own out_proj, so concat->Linear is the
  sum of two more linear maps of the same outputs: it adds 2h² weights and MACs per layer and only a
  bias of expressiveness. Sum is therefore the default; concat is there to test the claim.
- FFN: Linear(h -> 4h), GELU, Linear(4h -> h), dropout (the Transformer's 4x, as DT's MLP).
- Sizes for hopper (``hidden`` 64, 3 layers, Mamba expand 1, d_state 16, d_conv 4, K 20): 0.20 M
  parameters, between DMM (0.12 M) and DeMa at the paper's hopper setting (175.5K) and far below DT
  (0.73 M). The paper reports that larger models do not help (its scaling study), so the zoo's scale
  is the sensible one; expand 1 keeps two Mambas per layer at the cost of DeMa's one (expand 2).
  K 20 is DT's MuJoCo context, which MambaDM's experiments follow.
- Initialisation as mamba_ssm's MixerModel with an MLP: zero Linear biases in the backbone except
  dt_proj's (Mamba's Δ initialisation), and every residual output projection (both Mambas' out_proj,
  the fusion Linear, the FFN's second Linear) scaled by 1/sqrt(2·n_layer), two residuals per layer.

Semantics. ``MambaDM`` ("mambadm") runs as DT/DMM do: every control step re-encodes the last K
timesteps, left-padded with zero inputs as training windows are; the current a_t slot holds zeros
until predicted. ``mambadm.with_semantics("recurrent")`` carries the global Mamba's conv/SSM state
across the episode (O(1) per step): exact for sequences from the episode start, an approximation for
a window-trained model past step K, whose score drift must be measured (docs/design.md). The local branch
needs no carried state when its runs tile the 3 tokens of a step (``local_tokens`` 1 or 3): every step
starts a run. Otherwise its state and a step counter are carried and reset where a run starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ssmc.train.models.common import (
    ModelConfig,
    PolicyModel,
    RsaWindowPolicy,
    State,
    interleave,
    linear_macs,
)
from ssmc.train.models.mamba import Mamba

FUSIONS = ("sum", "concat")
TOKENS_PER_STEP = 3  # R_t, s_t, a_t


@dataclass(kw_only=True)
class MambaDMConfig(ModelConfig):
    K: int = 20  # K timesteps = 60 tokens (DT's MuJoCo context)
    hidden: int = 64  # token width h
    n_layer: int = 3
    local_tokens: int = 3  # local sub-sequence length in tokens; 3 = one timestep (R_t, s_t, a_t)
    fusion: str = "sum"  # "sum" or "concat" (-> Linear(2h, h)); see the module docstring
    d_state: int = 16  # mamba_ssm's default
    expand: int = 1  # two Mambas per layer at the cost of one expand-2 Mamba
    d_conv: int = 4
    ffn_mult: int = 4  # FFN inner width = ffn_mult·h
    dropout: float = 0.1  # on the token embeddings and the FFN output (DT's)
    norm_eps: float = 1e-5

    def validate(self) -> None:
        super().validate()
        self._positive_int("hidden", "n_layer", "local_tokens", "d_state", "expand", "d_conv", "ffn_mult")
        self._choice("fusion", FUSIONS)
        self._probability("dropout")
        self._positive_float("norm_eps")


class FeedForward(nn.Module):
    """Linear(h -> m·h), GELU, Linear(m·h -> h), dropout: the Transformer's position-wise FFN."""

    def __init__(self, cfg: MambaDMConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden, cfg.ffn_mult * cfg.hidden)
        self.fc2 = nn.Linear(cfg.ffn_mult * cfg.hidden, cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(F.gelu(self.fc1(x))))


class GLoMaLayer(nn.Module):
    """One MambaDM layer: x + Fuse(Global(LN_1 x), Local(LN_1 x)), then x + FFN(LN_2 x). (B, L, h) -> same."""

    def __init__(self, cfg: MambaDMConfig) -> None:
        super().__init__()
        self.local_tokens = cfg.local_tokens
        mamba = {"d_state": cfg.d_state, "d_conv": cfg.d_conv, "expand": cfg.expand}
        self.ln_1 = nn.LayerNorm(cfg.hidden, eps=cfg.norm_eps)
        self.global_mamba = Mamba(cfg.hidden, **mamba)
        self.local_mamba = Mamba(cfg.hidden, **mamba)
        self.fuse = nn.Linear(2 * cfg.hidden, cfg.hidden) if cfg.fusion == "concat" else None
        self.ln_2 = nn.LayerNorm(cfg.hidden, eps=cfg.norm_eps)
        self.ffn = FeedForward(cfg)

    def _fuse(self, g: Tensor, loc: Tensor) -> Tensor:
        return g + loc if self.fuse is None else self.fuse(torch.cat([g, loc], dim=-1))

    def local(self, x: Tensor) -> Tensor:
        """The local branch: each run of ``local_tokens`` tokens from a zero state. (B, L, h) -> (B, L, h).

        The last run is right-padded to full length; by causality the padding changes nothing before it."""
        b, L, h = x.shape
        n = -(-L // self.local_tokens)  # runs
        runs = F.pad(x, (0, 0, 0, n * self.local_tokens - L)).reshape(b * n, self.local_tokens, h)
        return self.local_mamba(runs).reshape(b, n * self.local_tokens, h)[:, :L]

    def forward(self, x: Tensor) -> Tensor:
        u = self.ln_1(x)
        x = x + self._fuse(self.global_mamba(u), self.local(u))
        return x + self.ffn(self.ln_2(x))

    def step(self, x: Tensor, glob: list[Tensor | None], loc: list[Tensor | None]) -> Tensor:
        """One token (B, h) on carried state: glob, loc = [conv, ssm] of each branch, replaced in place
        (the lists, not the tensors); the local state must already be reset where a run starts."""
        u = self.ln_1(x)
        g, glob[0], glob[1] = self.global_mamba.step(u, glob[0], glob[1])
        y, loc[0], loc[1] = self.local_mamba.step(u, loc[0], loc[1])
        x = x + self._fuse(g, y)
        return x + self.ffn(self.ln_2(x))

    def macs_per_token(self) -> int:
        """Global Mamba, fusion and FFN per token (the local Mamba is counted per run token, see MambaDM)."""
        fuse = linear_macs(self.fuse) if self.fuse is not None else 0
        return self.global_mamba.macs_per_token() + fuse + linear_macs(self.ffn.fc1) + linear_macs(self.ffn.fc2)


class MambaDM(RsaWindowPolicy):
    """MambaDM with window semantics over the last K timesteps (see the module docstring)."""

    name = "mambadm"
    semantics = "window"
    config_class = MambaDMConfig

    def __init__(self, config: MambaDMConfig) -> None:
        super().__init__(config)
        c = config
        self.embed_return = nn.Linear(1, c.hidden)
        self.embed_state = nn.Linear(c.obs_dim, c.hidden)
        self.embed_action = nn.Linear(c.act_dim, c.hidden)
        self.embed_ln = nn.LayerNorm(c.hidden, eps=c.norm_eps)
        self.drop = nn.Dropout(c.dropout)
        self.layers = nn.ModuleList(GLoMaLayer(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.hidden, eps=c.norm_eps)
        self.head = nn.Linear(c.hidden, c.act_dim)
        for module in self.layers.modules():
            if isinstance(module, nn.Linear) and module.bias is not None and not hasattr(module.bias, "_no_reinit"):
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            for layer in self.layers:
                residual_outs = [layer.global_mamba.out_proj, layer.local_mamba.out_proj, layer.ffn.fc2]
                for proj in residual_outs + ([layer.fuse] if layer.fuse is not None else []):
                    proj.weight /= math.sqrt(2 * c.n_layer)

    def _embed(self, layer: nn.Linear, x: Tensor) -> Tensor:
        """One token type's embedding: linear, embed_ln, dropout."""
        return self.drop(self.embed_ln(layer(x)))

    def _hidden(self, observations: Tensor, actions: Tensor, rtg: Tensor) -> Tensor:
        """(B, K, ·) -> (B, 3K, h) outputs for tokens R_0, s_0, a_0, R_1, ..."""
        x = interleave(self._embed(self.embed_return, rtg), self._embed(self.embed_state, observations),
                       self._embed(self.embed_action, actions))
        for layer in self.layers:
            x = layer(x)
        return self.ln_f(x)

    def _variant(self, semantics: str) -> type[PolicyModel] | None:
        return MambaDMRecurrent if semantics == "recurrent" else None

    def _macs(self, timesteps: int, local_tokens: int) -> int:
        """Embeddings of ``timesteps``, their 3·timesteps tokens through every layer's global Mamba,
        fusion and FFN, ``local_tokens`` tokens through its local Mamba, one head. Norms and activations
        are not counted."""
        tokens = TOKENS_PER_STEP * timesteps
        embed = sum(linear_macs(m) for m in (self.embed_return, self.embed_state, self.embed_action))
        layers = sum(tokens * layer.macs_per_token() + local_tokens * layer.local_mamba.macs_per_token()
                     for layer in self.layers)
        return timesteps * embed + layers + linear_macs(self.head)

    def macs_per_step(self) -> int:
        """One window forward over K timesteps: 3K tokens, the local runs as computed (padding included)."""
        tokens, lt = TOKENS_PER_STEP * self.config.K, self.config.local_tokens
        return self._macs(self.config.K, -(-tokens // lt) * lt)


class MambaDMRecurrent(MambaDM):
    """MambaDM stepped on carried state: ``mambadm.with_semantics("recurrent")``.

    State per layer i: conv_i (B, d_inner, d_conv - 1) and ssm_i (B, d_inner, d_state) of the global
    Mamba. When the local runs do not tile a step's 3 tokens (``local_tokens`` not 1 or 3) the local
    Mamba's local_conv_i / local_ssm_i and the step counter t (B,) int64 are carried too; the local
    state is zeroed before every token whose position 3t + j in the episode is a multiple of
    ``local_tokens``, exactly where ``forward`` over the from-start sequence starts a run. A step feeds
    R_t and s_t, reads a_t at s_t, then feeds a_t.
    """

    semantics = "recurrent"

    def _variant(self, semantics: str) -> type[PolicyModel] | None:
        return MambaDM if semantics == "window" else None

    def _carries_local(self) -> bool:
        return TOKENS_PER_STEP % self.config.local_tokens != 0

    def init_state(self, batch_size: int = 1) -> State:
        state = {}
        for i, layer in enumerate(self.layers):
            state[f"conv_{i}"], state[f"ssm_{i}"] = layer.global_mamba.init_state(batch_size)
            if self._carries_local():
                state[f"local_conv_{i}"], state[f"local_ssm_{i}"] = layer.local_mamba.init_state(batch_size)
        if self._carries_local():
            state["t"] = torch.zeros(batch_size, dtype=torch.int64, device=self._device())
        return state

    def _feed(self, x: Tensor, j: int, glob: list[list[Tensor]], loc: list[list[Tensor | None]],
              t: Tensor | None) -> Tensor:
        """Token j (0, 1, 2 = R, s, a) of step t through every layer; glob and loc are updated in place.
        The local state is zeroed where a run starts: position 3t + j a multiple of ``local_tokens``
        (with t None, the runs tile the step and that is j % local_tokens == 0)."""
        lt = self.config.local_tokens
        for i, layer in enumerate(self.layers):
            if t is not None:
                keep = ((TOKENS_PER_STEP * t + j) % lt != 0).to(x.dtype)[:, None, None]
                loc[i] = [loc[i][0] * keep, loc[i][1] * keep]
            elif j % lt == 0:
                loc[i] = list(layer.local_mamba.init_state(x.shape[0]))
            x = layer.step(x, glob[i], loc[i])
        return x

    def step(self, state: State, obs: Tensor, rtg: Tensor) -> tuple[Tensor, State]:
        n, carried = len(self.layers), self._carries_local()
        glob = [[state[f"conv_{i}"], state[f"ssm_{i}"]] for i in range(n)]
        loc = [[state[f"local_conv_{i}"], state[f"local_ssm_{i}"]] if carried else [None, None] for i in range(n)]
        t = state["t"] if carried else None
        self._feed(self._embed(self.embed_return, rtg), 0, glob, loc, t)
        action = torch.tanh(self.head(self.ln_f(self._feed(self._embed(self.embed_state, obs), 1, glob, loc, t))))
        self._feed(self._embed(self.embed_action, action), 2, glob, loc, t)
        new = {}
        for i in range(n):
            new[f"conv_{i}"], new[f"ssm_{i}"] = glob[i]
            if carried:
                new[f"local_conv_{i}"], new[f"local_ssm_{i}"] = loc[i]
        if carried:
            new["t"] = state["t"] + 1
        return action, new

    def macs_per_step(self) -> int:
        """Three tokens through every layer (both branches), one timestep of embeddings, one head."""
        return self._macs(1, TOKENS_PER_STEP)
