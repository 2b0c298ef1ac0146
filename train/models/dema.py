"""DeMa, Decision Mamba (Dai et al., NeurIPS 2024, "Is Mamba Compatible with Trajectory Optimization in
Offline Reinforcement Learning?"), in its two modes (paper Section 3.2 and Appendix D):

- ``DeMa`` ("dema"), the Transformer-like mode the paper recommends: every control step re-encodes the
  last K = 20 timesteps from a zero state ("window" semantics).
- ``DeMaRNN`` ("dema-rnn"), the RNN-like mode: trained on sequences from the episode start and deployed by
  carrying each layer's conv and SSM state, O(1) per step ("recurrent" semantics).

Architecture (Appendix D, Table 8; AndssY/dema ``gym/decision_transformer/models/ssm.py``):
- rtg, state and action embeddings (linear, to embedding_dim 128), interleaved in time ("B3LD", Section
  4.1; the channel-concatenated "BL3D" scored worse), then one linear layer to d_model 64;
- tokens per timestep are (R_{t-1}, a_{t-1}, s_t): the previous step's return-to-go and action, then the
  current state, and a_t is read from the s_t token. Upstream builds this by shifting (rtg[:-1],
  actions[:-1], states[1:]); here the batch's prev_rtg / prev_actions (zeros at episode start) do it;
- 3 residual blocks as mamba_ssm's Block: Add -> RMSNorm -> Mamba (d_state 64, expand 2, d_conv 4),
  which is the pre-norm residual x + Mamba(RMSNorm(x)); a final RMSNorm; tanh head;
- no MLP, no timestep or position embedding (Section 4.2, Appendix G); dropout 0 (Table 8);
- initialisation as upstream's (mamba_ssm's MixerModel): linear biases zeroed except dt_proj's, and
  out_proj weights scaled by 1/sqrt(n_layer) (GPT-2's residual rescaling, one residual per layer).

Parameter count: embedding 128 / d_model 64 gives 0.16 M on hopper. The paper's 175.5K matches its
appendix's embedding 256 for hopper-medium(-replay) (about 175K with the same layers); d_model 128 (the
expert datasets) gives about 0.48 M (the paper's 500.0K). Both are config options.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from ssmc.train.models.common import Batch, ModelConfig, PolicyModel, State, interleave, linear_macs, shift_in
from ssmc.train.models.mamba import Mamba


@dataclass(kw_only=True)
class DeMaConfig(ModelConfig):
    K: int = 20  # K timesteps = 60 tokens
    embedding_dim: int = 128  # Table 8 (256 for hopper-medium and hopper-medium-replay)
    d_model: int = 64  # Table 8 (128 for the expert datasets)
    n_layer: int = 3
    d_state: int = 64
    expand: int = 2
    d_conv: int = 4
    dropout: float = 0.0  # on the token embeddings; Table 8 uses none
    norm_eps: float = 1e-5

    def validate(self) -> None:
        super().validate()
        self._positive_int("embedding_dim", "d_model", "n_layer", "d_state", "expand", "d_conv")
        self._probability("dropout")
        self._positive_float("norm_eps")


@dataclass(kw_only=True)
class DeMaRNNConfig(DeMaConfig):
    K: int = 200  # training sequence length from episode start (the paper: whole trajectories)


class ResidualBlock(nn.Module):
    """x + Mamba(RMSNorm(x)): mamba_ssm's Add -> Norm -> Mixer block, written in pre-norm form."""

    def __init__(self, cfg: DeMaConfig) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mixer = Mamba(cfg.d_model, d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.mixer(self.norm(x))

    def step(self, x: Tensor, conv: Tensor, ssm: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        y, conv, ssm = self.mixer.step(self.norm(x), conv, ssm)
        return x + y, conv, ssm

    def step_tokens(self, x: Tensor, conv: Tensor, ssm: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``step`` over the L tokens of x (b, L, d_model) at once (Mamba.step_tokens)."""
        y, conv, ssm = self.mixer.step_tokens(self.norm(x), conv, ssm)
        return x + y, conv, ssm


class DeMa(PolicyModel):
    """Transformer-like DeMa: window semantics over the last K timesteps."""

    name = "dema"
    semantics = "window"
    config_class = DeMaConfig

    def __init__(self, config: DeMaConfig) -> None:
        super().__init__(config)
        c = config
        self.embed_rtg = nn.Linear(1, c.embedding_dim)
        self.embed_action = nn.Linear(c.act_dim, c.embedding_dim)
        self.embed_state = nn.Linear(c.obs_dim, c.embedding_dim)
        self.embed_proj = nn.Linear(c.embedding_dim, c.d_model)  # mamba_ssm MixerModel's input layer
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(ResidualBlock(c) for _ in range(c.n_layer))
        self.norm_f = nn.RMSNorm(c.d_model, eps=c.norm_eps)
        self.head = nn.Linear(c.d_model, c.act_dim)
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.bias is not None and not hasattr(module.bias, "_no_reinit"):
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            for block in self.blocks:
                block.mixer.out_proj.weight /= math.sqrt(c.n_layer)

    def _tokens(self, prev_rtg: Tensor, prev_actions: Tensor, observations: Tensor) -> Tensor:
        """(B, L, ·) -> (B, 3L, d_model) tokens R_{t-1}, a_{t-1}, s_t for t = 0..L-1."""
        x = interleave(self.embed_rtg(prev_rtg), self.embed_action(prev_actions), self.embed_state(observations))
        return self.drop(self.embed_proj(x))

    def forward(self, batch: Batch) -> Tensor:
        x = self._tokens(batch["prev_rtg"], batch["prev_actions"], batch["observations"])
        for block in self.blocks:
            x = block(x)
        return torch.tanh(self.head(self.norm_f(x[:, 2::3])))  # a_t from the s_t tokens, (B, L, act_dim)

    def init_state(self, batch_size: int = 1) -> State:
        c, dev = self.config, self._device()
        return {
            "prev_rtg": torch.zeros(batch_size, c.K, 1, device=dev),
            "prev_actions": torch.zeros(batch_size, c.K, c.act_dim, device=dev),
            "observations": torch.zeros(batch_size, c.K, c.obs_dim, device=dev),
            "last_rtg": torch.zeros(batch_size, 1, device=dev),  # R_{t-1} for the next step
            "last_action": torch.zeros(batch_size, c.act_dim, device=dev),  # a_{t-1} for the next step
        }

    def step(self, state: State, obs: Tensor, rtg: Tensor) -> tuple[Tensor, State]:
        prev_rtg = shift_in(state["prev_rtg"], state["last_rtg"])
        prev_actions = shift_in(state["prev_actions"], state["last_action"])
        observations = shift_in(state["observations"], obs)
        x = self._tokens(prev_rtg, prev_actions, observations)
        for block in self.blocks:
            x = block(x)
        action = torch.tanh(self.head(self.norm_f(x[:, -1])))  # the newest s_t token
        new = {"prev_rtg": prev_rtg, "prev_actions": prev_actions, "observations": observations,
               "last_rtg": rtg, "last_action": action}
        return action, new

    def _variant(self, semantics: str) -> type[PolicyModel] | None:
        return DeMaRNN if semantics == "recurrent" else None

    def _embed_macs_per_timestep(self) -> int:
        return sum(linear_macs(m) for m in (self.embed_rtg, self.embed_action, self.embed_state)) + \
            3 * linear_macs(self.embed_proj)

    def macs_per_step(self) -> int:
        """One window forward: K timesteps of embeddings, 3K tokens through every Mamba layer (see
        Mamba.macs_per_token), one head. Norms and activations are not counted."""
        c = self.config
        layers = 3 * c.K * sum(b.mixer.macs_per_token() for b in self.blocks)
        return c.K * self._embed_macs_per_timestep() + layers + linear_macs(self.head)


class DeMaRNN(DeMa):
    """RNN-like DeMa: trained on from-start sequences (right-padded), stepped on carried state.

    State: last_rtg, last_action (the next step's R_{t-1}, a_{t-1}) and, per layer i, conv_i
    (B, d_inner, d_conv - 1) and ssm_i (B, d_inner, d_state). Each step feeds its three tokens through
    the layers, exactly as ``forward`` scans them. All three are known when the step starts (the previous
    return-to-go and action, and the observation), so each layer takes them together (layer-major: layer i's
    token j needs only layer i-1's token j and layer i's state after token j-1): in the export one kernel
    call per op and layer for the three tokens, and the projections read each weight once per step.
    """

    name = "dema-rnn"
    semantics = "recurrent"
    config_class = DeMaRNNConfig

    def _variant(self, semantics: str) -> type[PolicyModel] | None:
        return DeMa if semantics == "window" else None

    def init_state(self, batch_size: int = 1) -> State:
        dev = self._device()
        state = {
            "last_rtg": torch.zeros(batch_size, 1, device=dev),
            "last_action": torch.zeros(batch_size, self.config.act_dim, device=dev),
        }
        for i, block in enumerate(self.blocks):
            state[f"conv_{i}"], state[f"ssm_{i}"] = block.mixer.init_state(batch_size)
        return state

    def step(self, state: State, obs: Tensor, rtg: Tensor) -> tuple[Tensor, State]:
        tokens = self._tokens(state["last_rtg"][:, None], state["last_action"][:, None], obs[:, None])  # (B, 3, d)
        new = {"last_rtg": rtg}
        convs = [state[f"conv_{i}"] for i in range(len(self.blocks))]
        ssms = [state[f"ssm_{i}"] for i in range(len(self.blocks))]
        x = tokens
        for i, block in enumerate(self.blocks):
            x, convs[i], ssms[i] = block.step_tokens(x, convs[i], ssms[i])
        action = torch.tanh(self.head(self.norm_f(x[:, 2])))  # the s_t token's output
        new["last_action"] = action
        for i in range(len(self.blocks)):
            new[f"conv_{i}"], new[f"ssm_{i}"] = convs[i], ssms[i]
        return action, new

    def macs_per_step(self) -> int:
        """Three tokens through every layer, one timestep of embeddings, one head."""
        layers = 3 * sum(b.mixer.macs_per_token() for b in self.blocks)
        return self._embed_macs_per_timestep() + layers + linear_macs(self.head)
