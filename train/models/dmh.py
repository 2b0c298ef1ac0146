"""DM-H, Decision Mamba-Hybrid (Huang et al., NeurIPS 2024, "Decision Mamba: Reinforcement Learning via
Hybrid Selective Sequence Modeling"; no public code): a Mamba reads a long context and emits a sub-goal
every c steps; a linear layer turns the sub-goal into a prompt token for a short-context GPT that predicts
the actions of the next c steps.

    long context (past trajectories ascending in return, then this episode so far), one token per step
        └─ Mamba blocks ─ norm ─► y_t ── at t = jc: prompt_j = Linear(y_jc) ──┐
    short context (this block of c steps):  [prompt_j, R_jc, s_jc, a_jc, ..., R_t, s_t] ─ GPT ─► a_t

What the paper leaves open, chosen here (config fields where a choice has a knob):
- Mamba token per timestep: Linear([s_t, a_{t-1}, R_{t-1}, R_t, first_t]) with first_t = 1 at step 0 of an
  episode (marks trajectory boundaries in the long context); one token per step keeps the long context
  cheap. Blocks as DeMa's (x + Mamba(RMSNorm(x))), final RMSNorm.
- Cadence: blocks start at the episode's steps 0, c, 2c, ...; the sub-goal of block j is the Mamba output
  at its first step jc (so it has seen s_jc). The GPT of block j sees the prompt and the block's tokens
  (R, s, a) up to the current s_t: at most 3c tokens (the block's last action token is never needed), a
  learned position embedding per slot, DT's GPT-2 blocks. Its key/value cache restarts every c steps.
- Sub-goal supervision: none by default (the sub-goal is learned end to end through the action loss);
  ``subgoal_weight > 0`` adds an auxiliary MSE from a linear head on the sub-goal to the (normalised)
  observation c steps later, the state the block should reach.
- Training data (``ssmc.train.multitraj.MultiTrajSampler``, named by ``make_sampler`` for the trainer):
  per row, 0..n_context other trajectories of the dataset (their first context_len steps each), sorted by
  ascending return, then the current episode from its start up to a segment of K steps that begins at a
  block boundary; the Mamba runs over all of it, the GPT and the loss cover the segment only. The long
  context before a segment is cut to its last max_history steps (the CPU cost of the scan grows with it):
  deployment then carries the Mamba over more than training showed it, an approximation unless
  max_history covers the context and the whole episode (T-maze runs set it so).
- Deployment (``step``, "recurrent" semantics): the state holds the step counter, R_{t-1}, a_{t-1}, each
  Mamba layer's conv/SSM state and each GPT layer's key/value cache over 3c slots. ``init_state`` is the
  zero Mamba state: at an episode start the long context is empty, and the Mamba's context is this
  episode so far (training includes rows with no past trajectories for this). ``context_state`` gives
  the state after reading past trajectories instead. Each step costs one Mamba token and three GPT tokens
  against at most 3c cached keys, whatever the episode length.
- Sizes (the paper gives none): c = 20 as DT's window, a 2-layer Mamba (d_model 64, d_state 16) and a
  2-layer GPT (hidden 128): 0.48 M parameters on hopper, mostly the GPT. The blocks are DeMa's
  ``ResidualBlock`` and DT's ``Block``, built from this config's fields of the same names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ssmc.train.models.common import Batch, ModelConfig, PolicyModel, State, linear_macs, masked_mse
from ssmc.train.models.dema import ResidualBlock
from ssmc.train.models.dt import ACTIVATIONS, Block

if TYPE_CHECKING:
    import numpy as np

    from ssmc.train.dataset import OfflineData
    from ssmc.train.multitraj import MultiTrajSampler

SEGMENT_KEYS = ("observations", "actions", "rtg", "prev_actions", "prev_rtg", "timesteps", "mask")


def _pad_time(x: Tensor, pad: int) -> Tensor:
    """(B, L, ...) -> (B, L + pad, ...) with zeros appended along time."""
    return torch.cat([x, x.new_zeros((x.shape[0], pad, *x.shape[2:]))], 1)


@dataclass(kw_only=True)
class DMHConfig(ModelConfig):
    K: int = 20  # training segment in timesteps (a multiple of c), after the Mamba has read what precedes it
    c: int = 20  # steps per sub-goal; the GPT sees at most 3c tokens, as DT's K = 20 (c's sensitivity: paper)
    n_context: int = 2  # past trajectories in a training row's long context (0..n_context drawn per row)
    context_len: int = 50  # steps kept from each past trajectory (its first ones)
    max_history: int = 100  # steps of long context read before a training segment (most recent kept)
    # Mamba (long context)
    d_model: int = 64
    n_mamba_layer: int = 2
    d_state: int = 16
    expand: int = 2
    d_conv: int = 4
    norm_eps: float = 1e-5
    # GPT (short context), DT's block
    hidden: int = 128
    n_layer: int = 2
    n_head: int = 1
    dropout: float = 0.1
    activation: str = "relu"
    subgoal_weight: float = 0.0  # auxiliary sub-goal loss (observation c steps ahead); 0 = end to end only

    def validate(self) -> None:
        super().validate()
        self._positive_int("c", "context_len", "max_history", "d_model", "n_mamba_layer", "d_state", "expand", "d_conv",
                           "hidden", "n_layer", "n_head")
        if not isinstance(self.n_context, int) or isinstance(self.n_context, bool) or self.n_context < 0:
            self._fail("n_context", "a non-negative integer")
        if self.K % self.c:
            self._fail("K", f"a multiple of c={self.c} (segments start at sub-goal boundaries)")
        if self.hidden % self.n_head:
            self._fail("hidden", f"divisible by n_head={self.n_head}")
        self._probability("dropout")
        self._positive_float("norm_eps")
        self._choice("activation", tuple(ACTIVATIONS))
        if not isinstance(self.subgoal_weight, (int, float)) or isinstance(self.subgoal_weight, bool) \
                or not self.subgoal_weight >= 0:
            self._fail("subgoal_weight", "a non-negative number")


class DecisionMambaHybrid(PolicyModel):
    name = "dmh"
    semantics = "recurrent"
    config_class = DMHConfig

    def __init__(self, config: DMHConfig) -> None:
        super().__init__(config)
        c = config
        # long context
        self.embed_mamba = nn.Linear(c.obs_dim + c.act_dim + 3, c.d_model)
        self.mamba_blocks = nn.ModuleList(ResidualBlock(c) for _ in range(c.n_mamba_layer))
        self.mamba_norm = nn.RMSNorm(c.d_model, eps=c.norm_eps)
        self.prompt = nn.Linear(c.d_model, c.hidden)  # sub-goal -> prompt token
        if c.subgoal_weight > 0:
            self.subgoal_head = nn.Linear(c.d_model, c.obs_dim)
        # short context
        self.embed_return = nn.Linear(1, c.hidden)
        self.embed_state = nn.Linear(c.obs_dim, c.hidden)
        self.embed_action = nn.Linear(c.act_dim, c.hidden)
        self.embed_slot = nn.Embedding(3 * c.c, c.hidden)
        self.embed_ln = nn.LayerNorm(c.hidden)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.hidden)
        self.head = nn.Linear(c.hidden, c.act_dim)
        with torch.no_grad():  # DeMa's and DT's initialisations for their halves
            for block in self.mamba_blocks:
                block.mixer.out_proj.weight /= math.sqrt(c.n_mamba_layer)
        for name, p in self.blocks.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * c.n_layer))
            elif name.endswith("weight") and p.dim() == 2:
                nn.init.normal_(p, std=0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    # -- training data -------------------------------------------------------------------------
    def make_sampler(self, data: OfflineData, rtg_scale: float, obs_mean: np.ndarray, obs_std: np.ndarray,
                     seed: int = 0) -> MultiTrajSampler:
        """The trainer's batch source for this model: multi-trajectory long contexts."""
        from ssmc.train.multitraj import MultiTrajSampler

        c = self.config
        return MultiTrajSampler(data, c.K, c.c, c.n_context, c.context_len, c.max_history, rtg_scale, obs_mean,
                                obs_std, seed)

    # -- the long context ----------------------------------------------------------------------
    def _mamba_tokens(self, obs: Tensor, prev_actions: Tensor, prev_rtg: Tensor, rtg: Tensor, first: Tensor) -> Tensor:
        """(B, L, ·) per-step inputs, first (B, L) -> (B, L, d_model)."""
        return self.embed_mamba(torch.cat([obs, prev_actions, prev_rtg, rtg, first[..., None].to(obs.dtype)], -1))

    def _mamba(self, x: Tensor) -> Tensor:
        for block in self.mamba_blocks:
            x = block(x)
        return self.mamba_norm(x)

    def _long_context(self, batch: Batch) -> Tensor:
        """Mamba outputs (B, K, d_model) at the segment's steps, after reading the row's history first."""
        seg = self._mamba_tokens(batch["observations"], batch["prev_actions"], batch["prev_rtg"], batch["rtg"],
                                 batch["timesteps"] == 0)
        if "history_observations" not in batch:  # a plain from-start batch: nothing precedes it
            return self._mamba(seg)
        hist = self._mamba_tokens(batch["history_observations"], batch["history_prev_actions"],
                                  batch["history_prev_rtg"], batch["history_rtg"], batch["history_timesteps"] == 0)
        b, h, k = hist.shape[0], hist.shape[1], seg.shape[1]
        n_hist = batch["history_length"][:, None]  # (B, 1) real history steps, right-padded after
        pos = torch.arange(h + k, device=seg.device)[None]  # (1, H+K)
        # the row's real history, then the segment right after it, then padding (never read)
        src = torch.where(pos < n_hist, pos, (h + pos - n_hist).clamp(max=h + k - 1))
        seq = torch.gather(torch.cat([hist, seg], 1), 1, src[..., None].expand(b, h + k, hist.shape[2]))
        y = self._mamba(seq)
        at = (n_hist + torch.arange(k, device=seg.device)[None])[..., None].expand(b, k, y.shape[2])
        return torch.gather(y, 1, at)

    # -- the short context -----------------------------------------------------------------------
    def _blocks_input(self, prompts: Tensor, batch: Batch) -> Tensor:
        """Prompts (B, nb, hidden) and the segment -> GPT input (B·nb, 3c, hidden): per block
        [prompt, R, s, a, R, s, a, ..., R, s] (the block's last action token dropped)."""
        c = self.config.c
        b, nb, hd = prompts.shape
        r, s, a = (self.embed_return(batch["rtg"]), self.embed_state(batch["observations"]),
                   self.embed_action(batch["actions"]))  # (B, K, hidden)
        a = torch.cat([prompts[:, :, None], a.reshape(b, nb, c, hd)[:, :, :-1]], 2)  # (B, nb, c, hidden)
        x = torch.stack([a, r.reshape(b, nb, c, hd), s.reshape(b, nb, c, hd)], 3)  # (B, nb, c, 3, hidden)
        x = x.reshape(b * nb, 3 * c, hd) + self.embed_slot.weight
        return self.drop(self.embed_ln(x))

    def _subgoals(self, batch: Batch) -> Tensor:
        """Mamba output at each block's first step: (B, K/c, d_model)."""
        return self._long_context(batch)[:, :: self.config.c]

    def forward(self, batch: Batch) -> Tensor:
        return self._forward(batch)[0]

    def _forward(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """(actions (B, K, act_dim), sub-goals (B, K/c, d_model)) for a segment that starts at a block boundary."""
        c, (b, k, _) = self.config.c, batch["observations"].shape
        pad = -k % c  # right-pad to whole blocks: causal, so the real steps never see the padding
        if pad:
            batch = {**batch, **{key: _pad_time(batch[key], pad) for key in SEGMENT_KEYS}}
        goals = self._subgoals(batch)
        x = self._blocks_input(self.prompt(goals), batch)
        t = x.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()[None, None]
        for block in self.blocks:
            x = block(x, causal)
        x = self.ln_f(x)[:, 2::3]  # the s tokens, (B·nb, c, hidden)
        return torch.tanh(self.head(x)).reshape(b, k + pad, -1)[:, :k], goals

    def loss(self, batch: Batch) -> Tensor:
        actions, goals = self._forward(batch)
        loss = masked_mse(actions, batch["actions"], batch["mask"])
        if self.config.subgoal_weight > 0:
            c = self.config.c
            pad = -actions.shape[1] % c
            batch = {key: _pad_time(batch[key], pad) for key in ("observations", "mask")}
            # block j's sub-goal predicts the observation at step (j+1)c, the next block's first
            target = torch.cat([batch["observations"][:, c::c], torch.zeros_like(batch["observations"][:, :1])], 1)
            mask = torch.cat([batch["mask"][:, c::c], torch.zeros_like(batch["mask"][:, :1])], 1)
            loss = loss + self.config.subgoal_weight * masked_mse(self.subgoal_head(goals), target, mask)
        return loss

    # -- deployment ----------------------------------------------------------------------------------
    def init_state(self, batch_size: int = 1) -> State:
        cfg, dev = self.config, self._device()
        state = {
            "t": torch.zeros(batch_size, dtype=torch.int64, device=dev),
            "last_rtg": torch.zeros(batch_size, 1, device=dev),
            "last_action": torch.zeros(batch_size, cfg.act_dim, device=dev),
        }
        for i, block in enumerate(self.mamba_blocks):
            state[f"conv_{i}"], state[f"ssm_{i}"] = block.mixer.init_state(batch_size)
        hs = cfg.hidden // cfg.n_head
        for i in range(cfg.n_layer):
            for kv in ("k", "v"):
                state[f"{kv}_{i}"] = torch.zeros(batch_size, cfg.n_head, 3 * cfg.c, hs, device=dev)
        return state

    @torch.no_grad()
    def context_state(self, trajectories: Batch) -> State:
        """The state after the Mamba has read past trajectories (``history_*`` fields as the sampler gives
        them, batch 1, ``history_length`` real steps): step() then runs a new episode with that context."""
        state = self.init_state(1)
        n = int(trajectories["history_length"][0])
        x = self._mamba_tokens(trajectories["history_observations"][:, :n], trajectories["history_prev_actions"][:, :n],
                               trajectories["history_prev_rtg"][:, :n], trajectories["history_rtg"][:, :n],
                               trajectories["history_timesteps"][:, :n] == 0)
        for j in range(n):
            self._mamba_step(x[:, j], state)
        return state

    def _mamba_step(self, x: Tensor, state: State) -> Tensor:
        """One Mamba token (B, d_model) through the layers; writes the new conv/ssm states into ``state``."""
        for i, block in enumerate(self.mamba_blocks):
            x, state[f"conv_{i}"], state[f"ssm_{i}"] = block.step(x, state[f"conv_{i}"], state[f"ssm_{i}"])
        return self.mamba_norm(x)

    def step(self, state: State, obs: Tensor, rtg: Tensor) -> tuple[Tensor, State]:
        cfg = self.config
        t = state["t"]
        new = dict(state)
        y = self._mamba_step(self._mamba_tokens(obs, state["last_action"], state["last_rtg"], rtg, t == 0), new)

        p = t % cfg.c  # (B,) step within the block
        slots = 3 * p[:, None] + torch.arange(3, device=obs.device)  # (B, 3) this step's cache slots
        lead = torch.where((p == 0)[:, None], self.prompt(y), self.embed_action(state["last_action"]))
        x = torch.stack([lead, self.embed_return(rtg), self.embed_state(obs)], 1) + self.embed_slot(slots)
        x = self.embed_ln(x)  # (B, 3, hidden)
        cache_slots = torch.arange(3 * cfg.c, device=obs.device)[None, None]  # (1, 1, 3c)
        write = (cache_slots == slots[..., None]).to(x.dtype)  # (B, 3, 3c) one-hot
        written = write.sum(1).bool()[:, None, :, None]  # (B, 1, 3c, 1)
        allowed = (cache_slots <= slots[..., None])[:, None]  # (B, 1, 3, 3c): causal within the block
        for i, block in enumerate(self.blocks):
            x, new[f"k_{i}"], new[f"v_{i}"] = self._cached_block(block, x, state[f"k_{i}"], state[f"v_{i}"],
                                                                 write, written, allowed)
        action = torch.tanh(self.head(self.ln_f(x[:, 2])))  # from the s_t token
        new.update(t=t + 1, last_rtg=rtg, last_action=action)
        return action, new

    def _cached_block(self, block: Block, x: Tensor, k_cache: Tensor, v_cache: Tensor, write: Tensor,
                      written: Tensor, allowed: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """DT's Block on 3 new tokens x (B, 3, h) whose keys/values go into cache slots ``write`` (B, 3, 3c)."""
        attn, nh = block.attn, self.config.n_head
        b, n, h = x.shape
        q, k, v = attn.c_attn(block.ln_1(x)).split(h, dim=2)
        q, k, v = (y.view(b, n, nh, h // nh).transpose(1, 2) for y in (q, k, v))  # (B, nh, 3, hs)
        k_cache = torch.where(written, torch.einsum("bis,bhid->bhsd", write, k), k_cache)  # (B, nh, 3c, hs)
        v_cache = torch.where(written, torch.einsum("bis,bhid->bhsd", write, v), v_cache)
        att = (q @ k_cache.transpose(-2, -1)) * (1.0 / math.sqrt(k.shape[-1]))  # (B, nh, 3, 3c)
        y = (F.softmax(att.masked_fill(~allowed, float("-inf")), dim=-1) @ v_cache).transpose(1, 2).reshape(b, n, h)
        x = x + attn.c_proj(y)
        return x + block.mlp(block.ln_2(x)), k_cache, v_cache

    def macs_per_step(self) -> int:
        """One Mamba token (embedding, layers), the prompt projection, three GPT tokens (embeddings, per
        token 12h² per layer) attending to 3c cached keys (2·3·3c·h per layer), the head. Norms, softmax and
        activations are not counted."""
        cfg = self.config
        h, cache = cfg.hidden, 3 * cfg.c
        mamba = linear_macs(self.embed_mamba) + sum(b.mixer.macs_per_token() for b in self.mamba_blocks)
        embeds = linear_macs(self.prompt) + linear_macs(self.embed_return) + linear_macs(self.embed_state) + \
            linear_macs(self.embed_action)
        gpt = cfg.n_layer * (3 * 12 * h * h + 2 * 3 * cache * h)
        return mamba + embeds + gpt + linear_macs(self.head)
