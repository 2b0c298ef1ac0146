"""Decision MetaMamba (Kim, Song & Kim, "Decision MetaMamba: Enhancing Selective SSM in Offline RL with
Heterogeneous Sequence Mixing"; too-z/decision-metamamba ``decision-model/models/decision_metamamba.py``).

DMM replaces Mamba's depthwise conv1d token mixer with a Dense Sequence Mixer (DSM, paper Figure 2c)
that mixes all channels of a local window of tokens before the selective scan, and drops the timestep
embedding ("modified positional structure"):
- tokens (R_t, s_t, a_t) per timestep, as DT and the upstream code (the paper's Figure 3 lists the
  components as state, action, rtg: the same cyclic order), linear embeddings, embed_ln, dropout 0.1;
- block: x <- x + DSM(LN_1(x)); x <- x + Mamba(LN_2(x)) with expand 1 and no internal conv1d;
  final LayerNorm; no MLP; a_t is read from the s_t token through a tanh head;
- DSM: left-pad w - 1 zero tokens, take each token's window of the last w tokens (oldest first),
  flatten to w·h and apply Linear(w·h -> h, bias=False);
- MuJoCo: K = 8, h = 64, 3 layers, w = 6, Mamba d_state 16 (mamba_ssm's default; upstream sets only
  expand=1): about 0.12 M parameters on hopper.

Choices and fixes:
- LN_1 / LN_2 are shared across layers by default, as upstream; ``share_norms=False`` gives each layer its
  own. The mixers live in an nn.ModuleList (upstream keeps them in a plain list for antmaze/kitchen, so
  they are never registered, trained or saved).
- Initialisation as upstream's backbone: N(0, 0.02) linear weights and zero biases, except Mamba's own
  Δ initialisation (dt_proj), which upstream's blanket init overwrites (softplus(0) = 0.69 everywhere);
  embeddings and head keep PyTorch's defaults, as upstream.
- Window semantics: every step re-encodes the last K timesteps, left-padded with zero inputs as in
  training and as upstream's get_action; the current a_t slot is zero until predicted.
"""

from __future__ import annotations

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


@dataclass(kw_only=True)
class DMMConfig(ModelConfig):
    K: int = 8  # K timesteps = 24 tokens
    hidden: int = 64
    n_layer: int = 3
    window: int = 6  # DSM window w, in tokens
    d_state: int = 16
    expand: int = 1
    dropout: float = 0.1  # on the token embeddings
    share_norms: bool = True  # one LN_1 and one LN_2 for all layers, as upstream
    norm_eps: float = 1e-5

    def validate(self) -> None:
        super().validate()
        self._positive_int("hidden", "n_layer", "window", "d_state", "expand")
        self._probability("dropout")
        self._boolean("share_norms")
        self._positive_float("norm_eps")


class DenseSequenceMixer(nn.Module):
    """Causal dense mix over a window of w tokens: (B, L, h) -> (B, L, h)."""

    def __init__(self, window: int, hidden: int) -> None:
        super().__init__()
        self.window = window
        self.lin = nn.Linear(window * hidden, hidden, bias=False)  # input index = position·h + channel

    def forward(self, x: Tensor) -> Tensor:
        b, L, h = x.shape
        x = F.pad(x, (0, 0, self.window - 1, 0))  # (B, L + w - 1, h), zero tokens before the first
        windows = torch.stack([x[:, j : j + L] for j in range(self.window)], dim=2)  # (B, L, w, h), oldest first
        return self.lin(windows.reshape(b, L, self.window * h))


class DecisionMetaMamba(RsaWindowPolicy):
    name = "dmm"
    semantics = "window"
    config_class = DMMConfig

    def __init__(self, config: DMMConfig) -> None:
        super().__init__(config)
        c = config
        self.embed_return = nn.Linear(1, c.hidden)
        self.embed_state = nn.Linear(c.obs_dim, c.hidden)
        self.embed_action = nn.Linear(c.act_dim, c.hidden)
        self.embed_ln = nn.LayerNorm(c.hidden)
        self.drop = nn.Dropout(c.dropout)
        n_norms = 1 if c.share_norms else c.n_layer
        self.ln_1 = nn.ModuleList(nn.LayerNorm(c.hidden, eps=c.norm_eps) for _ in range(n_norms))
        self.mixers = nn.ModuleList(DenseSequenceMixer(c.window, c.hidden) for _ in range(c.n_layer))
        self.ln_2 = nn.ModuleList(nn.LayerNorm(c.hidden, eps=c.norm_eps) for _ in range(n_norms))
        self.mambas = nn.ModuleList(
            Mamba(c.hidden, d_state=c.d_state, expand=c.expand, use_conv=False) for _ in range(c.n_layer)
        )
        self.ln_f = nn.LayerNorm(c.hidden, eps=c.norm_eps)
        self.head = nn.Linear(c.hidden, c.act_dim)
        for backbone in (self.mixers, self.mambas):
            for module in backbone.modules():
                if isinstance(module, nn.Linear) and not hasattr(module.bias, "_no_reinit"):  # not dt_proj
                    nn.init.normal_(module.weight, std=0.02)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)

    def _embed(self, layer: nn.Linear, x: Tensor) -> Tensor:
        """One token type's embedding: linear, embed_ln, dropout."""
        return self.drop(self.embed_ln(layer(x)))

    def _hidden(self, observations: Tensor, actions: Tensor, rtg: Tensor) -> Tensor:
        """(B, K, ·) -> (B, 3K, h) backbone outputs for tokens R_0, s_0, a_0, R_1, ..."""
        x = interleave(self._embed(self.embed_return, rtg), self._embed(self.embed_state, observations),
                       self._embed(self.embed_action, actions))
        for i, (mixer, mamba) in enumerate(zip(self.mixers, self.mambas, strict=True)):
            j = 0 if self.config.share_norms else i
            x = x + mixer(self.ln_1[j](x))
            x = x + mamba(self.ln_2[j](x))
        return self.ln_f(x)

    def _variant(self, semantics: str) -> type[PolicyModel] | None:
        return DecisionMetaMambaRecurrent if semantics == "recurrent" else None

    def _macs(self, timesteps: int) -> int:
        embed = sum(linear_macs(m) for m in (self.embed_return, self.embed_state, self.embed_action))
        per_token = sum(linear_macs(m.lin) for m in self.mixers) + sum(m.macs_per_token() for m in self.mambas)
        return timesteps * (embed + 3 * per_token) + linear_macs(self.head)

    def macs_per_step(self) -> int:
        """One window forward: K timesteps of embeddings, 3K tokens through every layer's DSM
        (w·h·h per token) and Mamba (Mamba.macs_per_token, no conv), one head. Norms not counted."""
        return self._macs(self.config.K)


class DecisionMetaMambaRecurrent(DecisionMetaMamba):
    """DMM stepped on carried state: ``dmm.with_semantics("recurrent")`` (docs/models-spec.md, DMM).

    It sees the episode from its start instead of the last K steps, so for a window-trained DMM it is an
    approximation past step K (exact before). State per layer i: dsm_i (B, w - 1, h), the DSM's last
    w - 1 inputs (LN_1 outputs) oldest first, zeros at the start like the DSM's left padding; ssm_i
    (B, d_inner, d_state). A step feeds R_t and s_t, reads a_t at s_t, then feeds a_t, so step() equals
    ``forward`` over the from-start sequence token by token.
    """

    semantics = "recurrent"

    def _variant(self, semantics: str) -> type[PolicyModel] | None:
        return DecisionMetaMamba if semantics == "window" else None

    def init_state(self, batch_size: int = 1) -> State:
        c, dev, state = self.config, self._device(), {}
        for i, mamba in enumerate(self.mambas):
            state[f"dsm_{i}"] = torch.zeros(batch_size, c.window - 1, c.hidden, device=dev)
            state[f"ssm_{i}"] = mamba.init_state(batch_size)[1]
        return state

    def _tokens(self, x: Tensor, dsm: list[Tensor], ssm: list[Tensor]) -> Tensor:
        """L embedded tokens (B, L, h) through every layer, updating dsm and ssm in the lists; -> (B, L, h).

        Layer-major: layer i's token t needs layer i-1's token t and layer i's state after token t-1, so the
        L tokens pass each layer together (in the export one kernel call per op and layer for all L, and
        each weight read once), and the result equals feeding them one at a time.
        """
        b, L, w = x.shape[0], x.shape[1], self.config.window
        for i, (mixer, mamba) in enumerate(zip(self.mixers, self.mambas, strict=True)):
            j = 0 if self.config.share_norms else i
            window = torch.cat([dsm[i], self.ln_1[j](x)], dim=1)  # (B, w - 1 + L, h), oldest first
            frames = torch.stack([window[:, t : t + w].reshape(b, -1) for t in range(L)], dim=1)  # (B, L, w·h)
            x = x + mixer.lin(frames)
            dsm[i] = window[:, L:]
            y, _, ssm[i] = mamba.step_tokens(self.ln_2[j](x), None, ssm[i])
            x = x + y
        return x

    def step(self, state: State, obs: Tensor, rtg: Tensor) -> tuple[Tensor, State]:
        """R_t and s_t together (both known), a_t read at s_t, then a_t."""
        n = len(self.mambas)
        dsm, ssm = [state[f"dsm_{i}"] for i in range(n)], [state[f"ssm_{i}"] for i in range(n)]
        known = torch.stack([self._embed(self.embed_return, rtg), self._embed(self.embed_state, obs)], dim=1)
        action = torch.tanh(self.head(self.ln_f(self._tokens(known, dsm, ssm)[:, 1])))
        self._tokens(self._embed(self.embed_action, action)[:, None], dsm, ssm)
        new = {}
        for i in range(n):
            new[f"dsm_{i}"], new[f"ssm_{i}"] = dsm[i], ssm[i]
        return action, new

    def macs_per_step(self) -> int:
        """Three tokens through every layer, one timestep of embeddings, one head."""
        return self._macs(1)
