"""Trainer, checkpoints, resume, PyTorch rollouts and their CLI commands, on tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from ssmc.cli import cli
from ssmc.errors import ConfigError
from ssmc.train.dataset import OfflineData, load_dataset, write_d4rl
from ssmc.train.models import load_checkpoint
from ssmc.train.rollout import TorchPolicy, evaluate_checkpoint
from ssmc.train.trainer import TrainConfig, Trainer, newest_checkpoint

TINY = {"dmm": {"n_layer": 1}, "dt": {"n_layer": 1}, "dema": {"n_layer": 1}, "dema-rnn": {"n_layer": 1, "K": 16}}


@pytest.fixture(scope="module")
def pendulum_file(tmp_path_factory) -> str:
    """A learnable Pendulum-v1-shaped dataset: action = clip(-obs[2] / 4) (a damping controller)."""
    rng = np.random.default_rng(0)
    n, ep = 2_000, 200
    obs = rng.normal(size=(n, 3)).astype(np.float32)
    act = np.clip(-obs[:, 2:3] / 4, -1, 1).astype(np.float32)
    rew = (-np.abs(obs[:, 0]) - 1).astype(np.float32)
    timeouts = np.zeros(n, bool)
    timeouts[ep - 1 :: ep] = True
    data = OfflineData(obs, act, rew, np.zeros(n, bool), timeouts, metadata={"env_id": "Pendulum-v1"})
    return str(write_d4rl(tmp_path_factory.mktemp("data") / "pendulum.hdf5", data))


def _train(path: str, out, model: str = "dmm", steps: int = 30, **kw) -> Trainer:
    kw.setdefault("warmup_steps", 5)
    cfg = TrainConfig(steps=steps, log_every=5, save_every=10, seed=1, **kw)
    t = Trainer(model, load_dataset(path), out, cfg, overrides=TINY[model], dataset_path=path)
    t.fit(progress=False)
    return t


@pytest.mark.parametrize("model", list(TINY))
def test_training_lowers_the_loss_and_writes_a_safetensors_checkpoint(pendulum_file, tmp_path, model):
    t = _train(pendulum_file, tmp_path / model, model=model, steps=60)
    log = np.genfromtxt(tmp_path / model / "train_log.csv", delimiter=",", names=True)
    assert log["loss"][-1] < log["loss"][0]
    assert np.isfinite(log["loss"]).all()
    cfg = json.loads((tmp_path / model / "config.json").read_text())
    extra = cfg["extra"]
    assert cfg["model"] == model and extra["env_id"] == "Pendulum-v1" and extra["steps_done"] == 60
    assert len(extra["obs_mean"]) == 3 and extra["rtg_scale"] == pytest.approx(1e-3)
    assert extra["params"] == t.model.num_params()
    tensors = load_file(str(tmp_path / model / "model.safetensors"))
    assert set(tensors) == set(t.model.state_dict())


def test_resume_continues_bit_for_bit(pendulum_file, tmp_path):
    # warm-up of 1 step in both runs: the schedule then does not depend on --steps
    straight = _train(pendulum_file, tmp_path / "a", steps=20, warmup_steps=1)
    _train(pendulum_file, tmp_path / "b", steps=10, warmup_steps=1)
    cfg = TrainConfig(steps=20, warmup_steps=1, log_every=5, save_every=10, seed=1)
    resumed = Trainer("dmm", load_dataset(pendulum_file), tmp_path / "b", cfg, overrides=TINY["dmm"],
                      dataset_path=pendulum_file)
    resumed.resume()
    assert resumed.step == 10
    resumed.fit(progress=False)
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_resume_without_state_is_a_clear_error(pendulum_file, tmp_path):
    t = Trainer("dmm", load_dataset(pendulum_file), tmp_path, TrainConfig(steps=5), overrides=TINY["dmm"])
    with pytest.raises(ConfigError, match="nothing to resume"):
        t.resume()


def test_policy_keeps_return_to_go(pendulum_file, tmp_path):
    _train(pendulum_file, tmp_path, steps=5)
    model, extra = load_checkpoint(tmp_path)
    pol = TorchPolicy(model, extra)
    pol.reset(target_return=-100.0)
    obs = np.zeros(3)
    a0 = pol.act(obs, last_reward=123.0)  # the first reward is ignored: nothing happened yet
    assert pol.rtg == -100.0
    pol.act(obs, last_reward=-7.5)
    assert pol.rtg == pytest.approx(-92.5)
    assert a0.shape == (1,) and np.all(np.abs(a0) <= 1)


def test_eval_rolls_out_in_the_environment(pendulum_file, tmp_path):
    _train(pendulum_file, tmp_path, steps=5)
    res = evaluate_checkpoint(str(tmp_path), None, episodes=2, seed=3, progress=False)
    assert res["env_id"] == "Pendulum-v1" and res["seeds"] == [3, 4]
    assert len(res["returns"]) == 2 and all(np.isfinite(res["returns"]))
    again = evaluate_checkpoint(str(tmp_path), None, episodes=2, seed=3, progress=False)
    assert again["returns"] == res["returns"]  # same seeds, same scores


def test_newest_checkpoint_resolves_a_model_name(pendulum_file, tmp_path):
    _train(pendulum_file, tmp_path / "runs" / "old", steps=5)
    _train(pendulum_file, tmp_path / "runs" / "new", steps=5)
    assert newest_checkpoint("dmm", tmp_path / "runs") == tmp_path / "runs" / "new"
    with pytest.raises(ConfigError, match="no 'dt' checkpoint"):
        newest_checkpoint("dt", tmp_path / "runs")


def _run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_cli_models_lists_the_zoo_as_json():
    r = _run("models", "--json")
    assert r.exit_code == 0, r.output
    rows = {m["model"]: m for m in json.loads(r.output)["models"]}
    assert {"dt", "dema", "dema-rnn", "dmm"} <= set(rows)
    assert rows["dmm"]["params"] < rows["dema"]["params"] < rows["dt"]["params"]
    assert rows["dema-rnn"]["macs_per_step"] < rows["dema"]["macs_per_step"]  # O(1) vs re-encoding K steps


def test_cli_train_and_eval_end_to_end(pendulum_file, tmp_path):
    out = tmp_path / "ck"
    r = _run("train", "--model", "dmm", "--dataset", pendulum_file, "--out", str(out), "--steps", "10",
             "--set", "n_layer=1", "--quiet")
    assert r.exit_code == 0, r.output
    r = _run("eval", str(out), "--episodes", "1", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["episodes"] == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--model", "nope", "--dataset", "x.hdf5", "--out", "o"], "unknown model 'nope'"),
        (["train", "--model", "dmm", "--dataset", "{data}", "--out", "{tmp}/o", "--set", "n_layer"], "KEY=VALUE"),
        (["train", "--model", "dmm", "--dataset", "{data}", "--out", "{tmp}/o", "--steps", "0"], "--steps"),
        (["eval", "{tmp}/missing", "--episodes", "1"], "{tmp}/missing"),
    ],
)
def test_cli_user_errors_are_one_line(pendulum_file, tmp_path, args, message):
    fill = {"data": pendulum_file, "tmp": str(tmp_path)}
    r = CliRunner().invoke(cli, [a.format(**fill) for a in args])
    assert r.exit_code == 2, r.output
    err = r.stderr.strip()
    assert message.format(**fill) in err and "\n" not in err and "Traceback" not in r.output


def test_dataset_that_does_not_fit_its_environment_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    data = OfflineData(rng.normal(size=(50, 5)).astype(np.float32), np.zeros((50, 3), np.float32),
                       np.zeros(50, np.float32), np.zeros(50, bool), np.zeros(50, bool),
                       metadata={"env_id": "Hopper-v5"})
    path = write_d4rl(tmp_path / "bad.hdf5", data)
    r = CliRunner().invoke(cli, ["train", "--model", "dmm", "--dataset", str(path), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "(5, 3)" in r.stderr and "(11, 3)" in r.stderr


def test_incomplete_checkpoint_is_refused(pendulum_file, tmp_path):
    _train(pendulum_file, tmp_path, steps=5)
    (tmp_path / "model.safetensors").unlink()
    r = CliRunner().invoke(cli, ["eval", str(tmp_path), "--episodes", "1"])
    assert r.exit_code == 2 and "model.safetensors" in r.stderr


def test_fit_until_stops_saves_and_continues_on_the_same_schedule(pendulum_file, tmp_path):
    """fit(until=k) (what ssmc sweep uses to evaluate midway) saves at k, and continuing to the end gives the
    same weights as one uninterrupted fit, since the schedule follows cfg.steps, not until."""
    straight = _train(pendulum_file, tmp_path / "a", steps=14, warmup_steps=6)
    cfg = TrainConfig(steps=14, warmup_steps=6, log_every=5, save_every=10, seed=1)
    t = Trainer("dmm", load_dataset(pendulum_file), tmp_path / "b", cfg, overrides=TINY["dmm"],
                dataset_path=pendulum_file)
    t.fit(progress=False, until=7)
    assert t.step == 7 and json.loads((tmp_path / "b" / "trainer_state.json").read_text())["step"] == 7
    t.fit(progress=False, until=100)  # clipped to cfg.steps
    assert t.step == 14
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), t.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_eval_runs_window_scans_through_the_fused_kernel(pendulum_file, tmp_path, monkeypatch):
    """evaluate_checkpoint (``ssmc eval``, sweeps) rolls out inside fused_scan.inference(): dmm's window
    scans call the numba kernel; the policy used by ``verify`` (TorchPolicy alone) does not."""
    from ssmc.train.models import fused_scan

    _train(pendulum_file, tmp_path, steps=5)
    calls = []
    real = fused_scan.FusedSelectiveScanFn.apply
    monkeypatch.setattr(fused_scan.FusedSelectiveScanFn, "apply", lambda *a: calls.append(1) or real(*a))
    res = evaluate_checkpoint(str(tmp_path), None, episodes=1, seed=3, progress=False)
    assert np.isfinite(res["returns"][0]) and len(calls) >= 200  # every step of the 200-step episode
    calls.clear()
    model, extra = load_checkpoint(tmp_path)
    pol = TorchPolicy(model, extra)
    pol.reset()
    pol.act(np.zeros(3))
    assert calls == []
