"""The model zoo (docs/models-spec.md): registry, construction from names or configs, and checkpoints.

    model = build_model("dema", obs_dim=11, act_dim=3, embedding_dim=256)
    save_checkpoint(model, "runs/hopper-dema", {"obs_mean": [...], "rtg_scale": 1000.0})
    model, extra = load_checkpoint("runs/hopper-dema")     # in eval mode, on the CPU

A checkpoint is a directory holding ``config.json`` ({"format": "ssmc-checkpoint", "version": 1,
"model": name, "config": {...}, "extra": {...}}) and ``model.safetensors`` (the state dict). No pickle:
loading never executes code from the checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ssmc.errors import ConfigError
from ssmc.fsutil import atomic_file
from ssmc.train.models.common import ModelConfig, PolicyModel, masked_mse
from ssmc.train.models.dema import DeMa, DeMaConfig, DeMaRNN, DeMaRNNConfig
from ssmc.train.models.dmh import DecisionMambaHybrid, DMHConfig
from ssmc.train.models.dmm import DecisionMetaMamba, DMMConfig
from ssmc.train.models.dt import DecisionTransformer, DTConfig
from ssmc.train.models.mamba import Mamba
from ssmc.train.models.mambadm import MambaDM, MambaDMConfig

MODELS: dict[str, type[PolicyModel]] = {
    "dt": DecisionTransformer,
    "dema": DeMa,
    "dema-rnn": DeMaRNN,
    "dmm": DecisionMetaMamba,
    "dmh": DecisionMambaHybrid,
    "mambadm": MambaDM,
}
CHECKPOINT_FORMAT, CHECKPOINT_VERSION = "ssmc-checkpoint", 1
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"

__all__ = [
    "MODELS", "DMHConfig", "DMMConfig", "DTConfig", "DeMa", "DeMaConfig", "DeMaRNN", "DeMaRNNConfig",
    "DecisionMambaHybrid", "DecisionMetaMamba",
    "DecisionTransformer", "Mamba", "MambaDM", "MambaDMConfig", "ModelConfig", "PolicyModel", "build_model",
    "load_checkpoint", "masked_mse", "model_class", "model_from_config", "save_checkpoint",
]


def model_class(name: str) -> type[PolicyModel]:
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    return MODELS[name]


def build_model(name: str, obs_dim: int, act_dim: int, **overrides: Any) -> PolicyModel:
    """A freshly initialised model with the paper's defaults, overridden field by field."""
    cls = model_class(name)
    return cls(cls.config_class.from_dict({"obs_dim": obs_dim, "act_dim": act_dim, **overrides}))


def model_from_config(data: Mapping[str, Any]) -> PolicyModel:
    """A freshly initialised model from {"model": name, "config": {...}} (config.json's layout)."""
    if not isinstance(data, Mapping) or "model" not in data or "config" not in data:
        raise ConfigError('a model config needs "model" (a name) and "config" (its fields)')
    cls = model_class(data["model"])
    return cls(cls.config_class.from_dict(data["config"]))


def save_checkpoint(model: PolicyModel, directory: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
    """Write config.json and model.safetensors into ``directory`` (created if needed); returns it."""
    directory = Path(directory)
    meta = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "model": model.name,
        "config": model.config.to_dict(), "extra": dict(extra or {}),
    }
    try:
        text = json.dumps(meta, indent=2, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"checkpoint extra must be JSON-serialisable (no NaN/inf): {e}") from e
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_file(directory / WEIGHTS_FILE) as tmp:
        save_file(tensors, tmp, metadata={"format": "pt", "model": model.name})
    with atomic_file(directory / CONFIG_FILE) as tmp:
        tmp.write_text(text + "\n")
    return directory


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu") -> tuple[PolicyModel, dict[str, Any]]:
    """(model in eval mode, extra) from a checkpoint directory; any defect raises ConfigError."""
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise ConfigError(f"incomplete checkpoint {directory}: {path.name} is missing")
    try:
        meta = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"checkpoint {config_path} is not valid JSON: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{config_path} is not an ssmc checkpoint config (format {CHECKPOINT_FORMAT!r})")
    if meta.get("version") != CHECKPOINT_VERSION:
        raise ConfigError(f"{config_path}: checkpoint version {meta.get('version')!r} is not supported "
                          f"(this ssmc reads version {CHECKPOINT_VERSION})")
    model = model_from_config(meta)
    try:
        tensors = load_file(weights_path, device=str(device))
    except (SafetensorError, OSError) as e:
        raise ConfigError(f"checkpoint weights {weights_path} cannot be read: {e}") from e
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ConfigError(f"checkpoint {weights_path} does not match its {meta['model']!r} config: "
                          f"missing tensors {missing}, unexpected tensors {unexpected}")
    wrong = [f"{k} {tuple(tensors[k].shape)} (expected {tuple(v.shape)})"
             for k, v in expected.items() if tensors[k].shape != v.shape]
    if wrong:
        raise ConfigError(f"checkpoint {weights_path}: tensor shapes do not match the config: {', '.join(wrong)}")
    model.load_state_dict(tensors)
    return model.to(device).eval(), dict(meta.get("extra") or {})
