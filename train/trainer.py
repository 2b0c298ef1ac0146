"""Offline training loop: AdamW, linear warm-up, gradient clipping, resumable checkpoints.

A checkpoint directory is the boundary between training and compiling (docs/design.md):
``config.json`` (model kind + config, normalisation statistics, return-to-go scale, default
target return, the run's settings) and ``model.safetensors``; ``train_log.csv`` records the
loss curve. Resuming needs two more files, ``trainer_state.safetensors`` (optimizer moments,
torch RNG) and ``trainer_state.json`` (step, sampler RNG, schedule); no pickle anywhere.
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ssmc.artifact import sha256_file
from ssmc.envs import guess_env, resolve_env
from ssmc.errors import ConfigError
from ssmc.fsutil import atomic_file
from ssmc.train.dataset import OfflineData
from ssmc.train.models import build_model, load_checkpoint, save_checkpoint
from ssmc.train.trajectory import WindowSampler, episode_returns, obs_stats


@dataclass
class TrainConfig:
    steps: int = 10_000
    batch_size: int = 64  # DT / DeMa / DMM MuJoCo setting
    lr: float = 1e-4  # all three papers
    weight_decay: float = 1e-4  # DT
    warmup_steps: int = 1_000  # DT uses 10k for 100k steps; 10% of a short run
    grad_clip: float = 0.25  # DeMa (DT uses 0.25 too)
    rtg_scale: float = 1e-3  # DT's 1/1000 for MuJoCo returns
    seed: int = 0
    log_every: int = 50
    save_every: int = 1_000
    threads: int = 0  # 0 keeps torch's default (the physical cores); the fused kernels follow it (docs/design.md)

    def validate(self) -> None:
        for name in ("steps", "batch_size", "log_every", "save_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.lr <= 0 or self.rtg_scale <= 0:
            raise ConfigError("learning rate and rtg scale must be positive")


def _lr_lambda(cfg: TrainConfig):
    warm = max(1, min(cfg.warmup_steps, cfg.steps // 10 or 1))
    return lambda step: min(1.0, (step + 1) / warm)


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into safetensors-able tensors and JSON-able rest."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"opt.{idx}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return tensors, {"param_groups": sd["param_groups"]}


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": groups})


class Trainer:
    """Trains one model on one dataset into ``out``; ``resume=True`` continues a run there.

    ``env_id`` names the environment when the dataset does not (D4RL's HDF5 files never do); the
    checkpoint records it, and compile carries it into the artifact."""

    def __init__(self, model_name: str, data: OfflineData, out: str | os.PathLike, cfg: TrainConfig,
                 overrides: dict[str, Any] | None = None, device: str = "cpu", dataset_path: str | None = None,
                 env_id: str | None = None):
        cfg.validate()
        self.cfg, self.out, self.device = cfg, Path(out), torch.device(device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.model = build_model(model_name, obs_dim=data.obs_dim, act_dim=data.act_dim, **(overrides or {}))
        self.model.to(self.device)
        self.model_name = model_name
        mean, std = obs_stats(data)
        returns = episode_returns(data)
        env = resolve_env(env_id) if env_id else guess_env(data.env_id, dataset_path)
        self.extra: dict[str, Any] = {
            "obs_mean": mean.tolist(),
            "obs_std": std.tolist(),
            "rtg_scale": cfg.rtg_scale,
            # DT-style conditioning: ask for the best return seen in the data by default.
            "target_return": float(returns.max()),
            "env_id": env.env_id if env else data.env_id,
            "dataset": {"path": os.path.abspath(dataset_path) if dataset_path else None,
                        "sha256": sha256_file(dataset_path) if dataset_path and os.path.isfile(dataset_path) else None, "transitions": len(data),
                        "quality": data.metadata.get("quality"), "source": data.source},
            "train": asdict(cfg),
        }
        make_sampler = getattr(self.model, "make_sampler", None)  # a model that names its own batch source (dmh)
        if make_sampler is not None:
            self.sampler = make_sampler(data, cfg.rtg_scale, mean, std, seed=cfg.seed)
        else:
            from_start = self.model.semantics == "recurrent"
            self.sampler = WindowSampler(data, self.model.config.K, cfg.rtg_scale, mean, std,
                                         seed=cfg.seed, from_start=from_start)
        self.opt = torch.optim.AdamW(self.model.param_groups(cfg.weight_decay), lr=cfg.lr)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _lr_lambda(cfg))
        self.step = 0
        self.wall = 0.0

    # -- resume -------------------------------------------------------------------------------
    def save(self) -> None:
        self.extra["params"] = self.model.num_params()
        self.extra["steps_done"] = self.step
        self.extra["train_wall_s"] = round(self.wall, 1)
        save_checkpoint(self.model, self.out, self.extra)
        tensors, rest = _optimizer_tensors(self.opt)
        tensors["torch_rng"] = torch.get_rng_state()
        with atomic_file(self.out / "trainer_state.safetensors") as tmp:
            save_file(tensors, str(tmp))
        state = {"step": self.step, "wall": self.wall, "sampler_rng": self.sampler.rng.bit_generator.state,
                 "sched": self.sched.state_dict(), **rest}
        with atomic_file(self.out / "trainer_state.json") as tmp:
            tmp.write_text(json.dumps(state))

    def resume(self) -> None:
        if not (self.out / "trainer_state.json").exists():
            raise ConfigError(f"nothing to resume in {self.out}: no trainer_state.json (start without --resume)")
        model, extra = load_checkpoint(self.out)
        if model.config.to_dict() != self.model.config.to_dict():
            raise ConfigError(f"checkpoint in {self.out} has a different model configuration; refusing to resume")
        self.model.load_state_dict(model.state_dict())
        state = json.loads((self.out / "trainer_state.json").read_text())
        tensors = load_file(str(self.out / "trainer_state.safetensors"))
        _load_optimizer(self.opt, tensors, state["param_groups"])
        torch.set_rng_state(tensors["torch_rng"])
        self.sampler.rng.bit_generator.state = state["sampler_rng"]
        self.sched.load_state_dict(state["sched"])
        self.step, self.wall = int(state["step"]), float(state["wall"])

    # -- loop -------------------------------------------------------------------------------
    def fit(self, progress: bool = True, until: int | None = None) -> dict[str, Any]:
        """Train to ``cfg.steps``, or only to step ``until`` (saved there) so a caller can evaluate midway
        (``ssmc sweep``); the schedule always follows ``cfg.steps``."""
        from tqdm import tqdm

        stop = self.cfg.steps if until is None else min(int(until), self.cfg.steps)

        self.out.mkdir(parents=True, exist_ok=True)
        log_path = self.out / "train_log.csv"
        new_log = self.step == 0 or not log_path.exists()
        logf = open(log_path, "w" if new_log else "a", newline="")
        writer = csv.writer(logf)
        if new_log:
            writer.writerow(["step", "loss", "lr", "grad_norm", "steps_per_s", "wall_s"])
        self.model.train()
        bar = tqdm(total=self.cfg.steps, initial=self.step, disable=not progress, desc=f"train {self.model_name}",
                   unit="step", dynamic_ncols=True)
        losses: list[float] = []
        t_last, s_last = time.perf_counter(), self.step
        try:
            while self.step < stop:
                t0 = time.perf_counter()
                batch = {k: v.to(self.device) for k, v in self.sampler.sample(self.cfg.batch_size).items()}
                loss = self.model.loss(batch)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss.item()} at step {self.step}")
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
                self.opt.step()
                self.sched.step()
                self.step += 1
                self.wall += time.perf_counter() - t0
                losses.append(loss.item())
                bar.update(1)
                if self.step % self.cfg.log_every == 0 or self.step == stop:
                    now = time.perf_counter()
                    sps = (self.step - s_last) / max(now - t_last, 1e-9)
                    t_last, s_last = now, self.step
                    mean_loss = float(np.mean(losses))
                    losses.clear()
                    writer.writerow([self.step, f"{mean_loss:.6f}", f"{self.sched.get_last_lr()[0]:.3e}",
                                     f"{float(gn):.4f}", f"{sps:.2f}", f"{self.wall:.1f}"])
                    logf.flush()
                    bar.set_postfix(loss=f"{mean_loss:.4f}", sps=f"{sps:.1f}")
                if self.step % self.cfg.save_every == 0 or self.step == stop:
                    self.save()
        finally:
            bar.close()
            logf.close()
        return {"out": str(self.out), "steps": self.step, "wall_s": round(self.wall, 1),
                "params": self.model.num_params()}


def newest_checkpoint(kind: str, workspace: str | os.PathLike = "runs") -> Path:
    """The most recently written checkpoint of model ``kind`` under ``workspace`` (``--model NAME``)."""
    root = Path(workspace)
    found: list[tuple[float, Path]] = []
    for cfg in root.glob("**/config.json"):
        try:
            meta = json.loads(cfg.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if meta.get("model") == kind and (cfg.parent / "model.safetensors").exists():
            found.append(((cfg.parent / "model.safetensors").stat().st_mtime, cfg.parent))
    if not found:
        raise ConfigError(f"no {kind!r} checkpoint under {root}/ (train one with `ssmc train --model {kind} ...`)")
    return max(found)[1]

