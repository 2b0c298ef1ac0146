"""PyTorch reference rollouts: a checkpoint driven through its own ``step()`` in gymnasium.

``TorchPolicy`` is the controller-side contract every runtime shares: ``reset(target_return)``,
then ``act(observation, last_reward) -> action``. It normalises observations, keeps the
return-to-go (target minus rewards received so far, times the rtg scale) and carries the
model's state; the compiled runtime implements the same contract in C. The loop that drives
either one is ``ssmc.rollout.rollout`` (ssmc/rollout.py), which imports no torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ssmc.errors import ConfigError
from ssmc.rollout import rollout


class TorchPolicy:
    def __init__(self, model: Any, extra: dict[str, Any], semantics: str | None = None):
        import torch

        self.model = model.eval()
        self.obs_mean = torch.tensor(extra["obs_mean"], dtype=torch.float32)
        self.obs_std = torch.tensor(extra["obs_std"], dtype=torch.float32)
        self.rtg_scale = float(extra["rtg_scale"])
        self.default_target = float(extra["target_return"])
        if semantics is not None and semantics != model.semantics:
            self.model = model.with_semantics(semantics)
        self.state: dict[str, Any] = {}
        self.rtg = 0.0
        self._first = True

    @property
    def semantics(self) -> str:
        return self.model.semantics

    def reset(self, target_return: float | None = None) -> None:
        self.state = self.model.init_state(1)
        self.rtg = self.default_target if target_return is None else float(target_return)
        self._first = True

    def act(self, observation: np.ndarray, last_reward: float = 0.0) -> np.ndarray:
        import torch

        if not self._first:
            self.rtg -= float(last_reward)
        self._first = False
        with torch.no_grad():
            obs = (torch.as_tensor(observation, dtype=torch.float32).reshape(1, -1) - self.obs_mean) / self.obs_std
            rtg = torch.tensor([[self.rtg * self.rtg_scale]], dtype=torch.float32)
            action, self.state = self.model.step(self.state, obs, rtg)
        return action[0].numpy().astype(np.float64)


def evaluate_checkpoint(checkpoint: str, env_id: str | None, episodes: int, seed: int = 0,
                        target_return: float | None = None, semantics: str | None = None,
                        progress: bool = True) -> dict[str, Any]:
    from ssmc.train.models import load_checkpoint

    model, extra = load_checkpoint(checkpoint)
    env_id = env_id or extra.get("env_id")
    if not env_id:
        raise ConfigError(f"{checkpoint} does not record its environment; pass --env ENV_ID (e.g. --env Hopper-v5), "
                          "or train with --env so that the checkpoint records it")
    from ssmc.train.models import fused_scan

    policy = TorchPolicy(model, extra, semantics)
    dims = (model.config.obs_dim, model.config.act_dim)
    with fused_scan.inference():  # window steps' scans through the numba kernel (3-5x faster rollouts)
        res = rollout(policy.act, policy.reset, env_id, episodes, seed, target_return, progress, dims)
    out = res.summary()
    out.update({"checkpoint": str(checkpoint), "model": extra.get("model"), "semantics": policy.semantics,
                "target_return": policy.default_target if target_return is None else target_return,
                "obs_dim": dims[0], "act_dim": dims[1]})
    return out
