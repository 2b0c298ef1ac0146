"""What every ssmc policy shares: the config base class, the model interface, and small helpers.

The interface (docs/design.md, "Models and their two semantics"):
- ``forward(batch) -> actions (B, K, act_dim)`` in [-1, 1] (tanh head) and ``loss(batch)``, masked MSE;
- ``init_state(batch_size) -> state`` and ``step(state, obs, rtg) -> (action, new_state)``, a pure function
  of tensors with static shapes (the compiler exports it); ``state_spec()`` names the state tensors;
- ``semantics``: "window" (every step re-encodes the last K timesteps from a zero state, left-padded with
  zero inputs exactly as training windows are, so step == forward on that window) or "recurrent" (state
  carried across the episode, O(1) per step, step == forward over the sequence token by token);
- ``num_params()`` and ``macs_per_step()`` (one control step in the model's own semantics).

Batch contract (from the sampler): observations (B, K, obs_dim) normalised; actions (B, K, act_dim) in
[-1, 1]; rtg (B, K, 1) scaled return-to-go including the reward at that step; prev_actions (B, K, act_dim)
and prev_rtg (B, K, 1), the previous step's (zeros at episode start); timesteps (B, K) int64; mask (B, K)
float32, 1 = real step. Window batches are left-padded with zeros, recurrent batches right-padded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn
from torch import Tensor

from ssmc.errors import ConfigError

Batch = Mapping[str, Tensor]
State = dict[str, Tensor]
SEMANTICS = ("window", "recurrent")


@dataclass(kw_only=True)
class ModelConfig:
    """Fields every model has; subclasses add theirs with the paper's MuJoCo defaults."""

    obs_dim: int
    act_dim: int
    K: int = 20  # context length in timesteps (window models: also per control step)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field; subclasses extend it."""
        self._positive_int("obs_dim", "act_dim", "K")

    def _fail(self, name: str, expected: str) -> None:
        raise ConfigError(f"{type(self).__name__}.{name} must be {expected}, got {getattr(self, name)!r}")

    def _positive_int(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                self._fail(name, "a positive integer")

    def _positive_float(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                self._fail(name, "a positive number")

    def _probability(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
                self._fail(name, "a probability in [0, 1)")

    def _boolean(self, *names: str) -> None:
        for name in names:
            if not isinstance(getattr(self, name), bool):
                self._fail(name, "true or false")

    def _choice(self, name: str, options: tuple[str, ...]) -> None:
        if getattr(self, name) not in options:
            self._fail(name, "one of " + ", ".join(repr(o) for o in options))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly (ints, floats, strings, bools)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Inverse of ``to_dict``; unknown or missing fields raise ConfigError."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{cls.__name__}: expected a mapping of fields, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown field(s) {unknown}; known: {sorted(fields)}")
        required = [n for n, f in fields.items() if f.default is dataclasses.MISSING and n not in data]
        if required:
            raise ConfigError(f"{cls.__name__}: missing required field(s) {required}")
        return cls(**data)


class PolicyModel(nn.Module):
    """Base class of every ssmc policy (see the module docstring for the contract)."""

    name: ClassVar[str]
    semantics: ClassVar[str]
    config_class: ClassVar[type[ModelConfig]]

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise ConfigError(
                f"model {self.name!r} needs a {self.config_class.__name__}, got {type(config).__name__}"
            )
        self.config = config

    def forward(self, batch: Batch) -> Tensor:
        raise NotImplementedError

    def loss(self, batch: Batch) -> Tensor:
        return masked_mse(self(batch), batch["actions"], batch["mask"])

    def init_state(self, batch_size: int = 1) -> State:
        raise NotImplementedError

    def step(self, state: State, obs: Tensor, rtg: Tensor) -> tuple[Tensor, State]:
        """obs (B, obs_dim) normalised, rtg (B, 1) scaled current return-to-go -> action (B, act_dim)."""
        raise NotImplementedError

    def macs_per_step(self) -> int:
        raise NotImplementedError

    def state_spec(self) -> dict[str, dict[str, Any]]:
        """Name -> {"shape", "dtype"} of every state tensor for batch size 1 (leading dim is the batch)."""
        return {
            name: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
            for name, t in self.init_state(1).items()
        }

    def with_semantics(self, semantics: str) -> PolicyModel:
        """This model run in the other semantics, with a copy of its weights (``self`` if already so).

        A window-trained model stepped recurrently sees the whole episode instead of the last K steps:
        an approximation whose score drift must be measured (docs/design.md). Models without the
        requested variant raise ConfigError."""
        if semantics not in SEMANTICS:
            raise ConfigError(f"unknown semantics {semantics!r}; known: {', '.join(SEMANTICS)}")
        if semantics == self.semantics:
            return self
        cls = self._variant(semantics)
        if cls is None:
            raise ConfigError(f"model {self.name!r} has no {semantics} semantics")
        other = cls(cls.config_class.from_dict(self.config.to_dict()))
        other.load_state_dict(self.state_dict())
        return other.to(self._device()).train(self.training)

    def _variant(self, semantics: str) -> type[PolicyModel] | None:
        """The class implementing ``semantics`` with this model's weights, if there is one."""
        return None

    def state_bytes(self) -> int:
        """Bytes of the step state for batch size 1."""
        return sum(t.numel() * t.element_size() for t in self.init_state(1).values())

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups as nanoGPT makes them: decay every matrix (dim >= 2) except those flagged
        ``_no_weight_decay`` (Mamba's A_log); biases, norm weights and Mamba's D are not decayed."""
        decay, no_decay = [], []
        for p in self.parameters():
            (decay if p.dim() >= 2 and not getattr(p, "_no_weight_decay", False) else no_decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    def _device(self) -> torch.device:
        return next(self.parameters()).device


class RsaWindowPolicy(PolicyModel):
    """A window model over (R_t, s_t, a_t) tokens (DMM, MambaDM): subclasses provide ``_hidden(observations,
    actions, rtg) -> (B, 3K, h)`` and ``head``; this class reads a_t from the s_t tokens and keeps the window
    state (the last K observations, actions and returns-to-go) for ``step``."""

    head: nn.Linear

    def _hidden(self, observations: Tensor, actions: Tensor, rtg: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, batch: Batch) -> Tensor:
        x = self._hidden(batch["observations"], batch["actions"], batch["rtg"])
        return torch.tanh(self.head(x[:, 1::3]))  # a_t from the s_t tokens, (B, K, act_dim)

    def init_state(self, batch_size: int = 1) -> State:
        c, dev = self.config, self._device()
        return {
            "observations": torch.zeros(batch_size, c.K, c.obs_dim, device=dev),
            "actions": torch.zeros(batch_size, c.K, c.act_dim, device=dev),
            "rtg": torch.zeros(batch_size, c.K, 1, device=dev),
        }

    def step(self, state: State, obs: Tensor, rtg: Tensor) -> tuple[Tensor, State]:
        observations = shift_in(state["observations"], obs)
        actions = shift_in(state["actions"], torch.zeros_like(state["actions"][:, 0]))
        rtgs = shift_in(state["rtg"], rtg)
        action = torch.tanh(self.head(self._hidden(observations, actions, rtgs)[:, -2]))  # newest s_t token
        return action, {"observations": observations, "actions": replace_last(actions, action), "rtg": rtgs}


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error over the real (mask 1) steps: pred, target (B, K, act_dim), mask (B, K)."""
    sq = ((pred - target) ** 2).mean(-1)  # (B, K)
    return (sq * mask).sum() / mask.sum().clamp(min=1.0)


def interleave(*tokens: Tensor) -> Tensor:
    """(B, K, h) per token type -> (B, n_types·K, h) in time order: x1_0, x2_0, x3_0, x1_1, ... ("B3LD")."""
    b, k, h = tokens[0].shape
    return torch.stack(tokens, dim=2).reshape(b, len(tokens) * k, h)


def shift_in(buffer: Tensor, x: Tensor) -> Tensor:
    """Window buffer (B, K, ...) with its oldest entry dropped and x (B, ...) appended (static shapes)."""
    return torch.cat([buffer[:, 1:], x.unsqueeze(1)], dim=1)


def replace_last(buffer: Tensor, x: Tensor) -> Tensor:
    """Window buffer (B, K, ...) with its newest entry replaced by x (B, ...)."""
    return torch.cat([buffer[:, :-1], x.unsqueeze(1)], dim=1)


def linear_macs(module: nn.Linear) -> int:
    return module.in_features * module.out_features
