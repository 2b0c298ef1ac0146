"""Step export: a checkpoint's per-timestep step as a pure, statically shaped function (``torch.export``).

The exported function is what the artifact's library runs (docs/artifact.md, Calling convention)::

    step(obs_raw (1, obs_dim), rtg_raw (1, 1), *state) -> (action (1, act_dim), *new_state)

- ``obs_raw`` is the observation as the environment gives it and ``rtg_raw`` the return-to-go the
  controller tracks (target return minus rewards received so far). Normalisation happens inside the
  graph exactly as ``ssmc.train.rollout.TorchPolicy`` does it: ``(obs_raw - obs_mean) / obs_std`` and
  ``rtg_raw * rtg_scale`` (the checkpoint's ``rtg_scale`` multiplies, e.g. 1e-3 for MuJoCo returns);
- the state tensors are the model's ``init_state(1)`` in its order (zeros after a reset), batch 1;
- the semantics (window or recurrent) are the model's own unless ``mode`` overrides them
  (``PolicyModel.with_semantics``).

Names: inputs ``obs_raw`` and ``rtg_raw``, output ``action``, state tensors by the model's names
(``conv_0``, ``ssm_0``, ``observations``, ...; none collides with the input/output names).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from ssmc.artifact import TensorSpec
from ssmc.errors import ConfigError
from ssmc.train.models import PolicyModel
from ssmc.train.models.scan_op import fused_scan_export

INPUT_NAMES = ("obs_raw", "rtg_raw")
OUTPUT_NAMES = ("action",)


class StepFunction(nn.Module):
    """``model.step`` with normalisation inside: (obs_raw, rtg_raw, *state) -> (action, *new_state)."""

    def __init__(self, model: PolicyModel, obs_mean: Sequence[float], obs_std: Sequence[float],
                 rtg_scale: float) -> None:
        super().__init__()
        self.model = model
        self.state_names = tuple(model.init_state(1))
        self.register_buffer("obs_mean", torch.tensor(list(obs_mean), dtype=torch.float32)[None])
        self.register_buffer("obs_std", torch.tensor(list(obs_std), dtype=torch.float32)[None])
        self.rtg_scale = float(rtg_scale)

    def forward(self, obs_raw: Tensor, rtg_raw: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        obs = (obs_raw - self.obs_mean) / self.obs_std
        rtg = rtg_raw * self.rtg_scale
        action, new = self.model.step(dict(zip(self.state_names, state, strict=True)), obs, rtg)
        return (action, *(new[name] for name in self.state_names))


@dataclass
class ExportedStep:
    """A step function ready for lowering, with everything the manifest says about it."""

    program: torch.export.ExportedProgram
    function: StepFunction  # the eager PyTorch step the program was traced from (int8: quantised)
    reference: StepFunction  # the same step on the unquantised fp32 model: what artifacts are checked against
    model: PolicyModel  # in the exported semantics, unquantised (param count, MACs)
    semantics: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    state: tuple[TensorSpec, ...]

    def init_state(self) -> list[np.ndarray]:
        """Zero state in manifest order."""
        return [np.zeros(s.shape, s.dtype) for s in self.state]


def normalisation(extra: Mapping[str, Any], obs_dim: int) -> tuple[list[float], list[float], float, float]:
    """(obs_mean, obs_std, rtg_scale, target_return) from a checkpoint's extra, validated."""
    missing = [k for k in ("obs_mean", "obs_std", "rtg_scale", "target_return") if k not in extra]
    if missing:
        raise ConfigError(f"checkpoint extra lacks {', '.join(missing)} (needed to normalise inputs)")
    mean, std = extra["obs_mean"], extra["obs_std"]
    for name, v in (("obs_mean", mean), ("obs_std", std)):
        if not isinstance(v, list | tuple) or len(v) != obs_dim:
            raise ConfigError(f"checkpoint extra {name} must be a list of obs_dim={obs_dim} numbers")
        if not all(isinstance(x, int | float) and np.isfinite(x) for x in v):
            raise ConfigError(f"checkpoint extra {name} must hold finite numbers only")
    if not all(x > 0 for x in std):
        raise ConfigError("checkpoint extra obs_std must be positive")
    scale, target = extra["rtg_scale"], extra["target_return"]
    if not isinstance(scale, int | float) or not np.isfinite(scale) or scale <= 0:
        raise ConfigError(f"checkpoint extra rtg_scale must be a positive number, got {scale!r}")
    if not isinstance(target, int | float) or not np.isfinite(target):
        raise ConfigError(f"checkpoint extra target_return must be a finite number, got {target!r}")
    return [float(x) for x in mean], [float(x) for x in std], float(scale), float(target)


def _spec(name: str, t: Tensor) -> TensorSpec:
    return TensorSpec(name, tuple(t.shape), str(t.dtype).removeprefix("torch."))


def example_inputs(fn: StepFunction, seed: int = 0) -> tuple[Tensor, ...]:
    """Random raw inputs (around the normalisation statistics) and a zero state: what export traces."""
    g = torch.Generator().manual_seed(seed)
    obs = fn.obs_mean + fn.obs_std * torch.randn(fn.obs_mean.shape, generator=g)
    rtg = torch.rand(1, 1, generator=g) / fn.rtg_scale
    state = fn.model.init_state(1)
    return (obs, rtg, *(state[n] for n in fn.state_names))


def export_step(model: PolicyModel, extra: Mapping[str, Any], mode: str | None = None,
                quantize: Callable[[PolicyModel], PolicyModel] | None = None,
                fused_scan: bool = True) -> ExportedStep:
    """Export ``model``'s step (in ``mode`` semantics, default its own) with static shapes, batch 1.

    ``quantize``, when given, maps the model (a copy in the exported semantics) to the module actually
    exported (``ssmc.compile.quantize.quantize_int8``); the manifest still counts the original's params.

    ``fused_scan`` (default) exports each Mamba layer's scan as one ``ssmc::selective_scan`` node
    (train/models/scan_op.py), which compile/pipeline.py lowers to the loop of compile/scan_kernel.py;
    ``False`` exports the plain unrolled ops (what other compilers can read, and the CUDA path, which has
    no GPU schedule for the loop). ``function`` and ``reference`` are eager modules either way.
    """
    model = model.eval()
    if mode is not None:
        model = model.with_semantics(mode).eval()
    mean, std, scale, _ = normalisation(extra, model.config.obs_dim)
    reference = StepFunction(model, mean, std, scale).eval()
    fn = StepFunction(quantize(model), mean, std, scale).eval() if quantize is not None else reference
    args = example_inputs(fn)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.export's FutureWarnings about pytree internals
        try:
            with fused_scan_export() if fused_scan else contextlib.nullcontext():
                program = torch.export.export(fn, args)
        except Exception as e:  # pragma: no cover - a model the exporter cannot trace is a bug
            raise RuntimeError(f"torch.export failed for {model.name} ({model.semantics}): {e}") from e
        outs = fn(*args)
    if len(outs) != 1 + len(fn.state_names):  # pragma: no cover - a model breaking the step contract
        raise RuntimeError(f"{model.name}.step returned {len(outs)} tensors, expected 1 + {len(fn.state_names)}")
    return ExportedStep(
        program=program,
        function=fn,
        reference=reference,
        model=model,
        semantics=model.semantics,
        inputs=tuple(_spec(n, t) for n, t in zip(INPUT_NAMES, args[:2], strict=True)),
        outputs=tuple(_spec(n, t) for n, t in zip(OUTPUT_NAMES, outs[:1], strict=True)),
        state=tuple(_spec(n, t) for n, t in zip(fn.state_names, args[2:], strict=True)),
    )


@torch.no_grad()
def run_torch(fn: StepFunction, inputs: Sequence[np.ndarray], state: Sequence[np.ndarray]) -> list[np.ndarray]:
    """One eager PyTorch step on numpy arrays: (action, *new_state) as numpy arrays."""
    outs = fn(*(torch.from_numpy(np.ascontiguousarray(a)) for a in (*inputs, *state)))
    return [o.detach().numpy().copy() for o in outs]
