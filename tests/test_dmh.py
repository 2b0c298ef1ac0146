"""DM-H: step() equals forward() with and without past trajectories in the long context, the key/value
cache never holds more than 3c tokens, configs validate, the multi-trajectory sampler lays rows out as
documented (past trajectories ascending in return, then the episode's prefix, segments on block
boundaries), the trainer uses it, checkpoints round-trip and the compiled step equals PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssmc.errors import ConfigError
from ssmc.train.models import build_model, load_checkpoint, save_checkpoint
from ssmc.train.multitraj import MultiTrajSampler
from ssmc.train.trajectory import episode_returns

OBS, ACT = 3, 2
SMALL = {"K": 8, "c": 4, "d_model": 16, "n_mamba_layer": 2, "d_state": 8, "hidden": 16, "n_layer": 2, "n_head": 2,
         "n_context": 2, "context_len": 4, "max_history": 30}


def small(**overrides):
    torch.manual_seed(0)
    return build_model("dmh", OBS, ACT, **{**SMALL, **overrides}).eval()


def perturbed(model):
    """The model with every weight moved by N(0, 0.2): at initialisation the prompt barely reaches the actions
    (GPT-2's 0.02 init), which would let a broken long-context path pass a parity test unnoticed."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model


def step_through(model, state, obs, rtg):
    """step() over (1, T, ·) inputs from ``state``; returns actions (1, T, act) and the last state."""
    actions = []
    with torch.no_grad():
        for t in range(obs.shape[1]):
            action, state = model.step(state, obs[:, t], rtg[:, t])
            actions.append(action)
    return torch.stack(actions, 1), state


def as_batch(obs, rtg, actions):
    """A from-start batch whose actions are the stepped ones (what step() fed itself)."""
    b, t, _ = obs.shape
    return {"observations": obs, "actions": actions, "rtg": rtg,
            "prev_actions": torch.cat([torch.zeros(b, 1, ACT), actions[:, :-1]], 1),
            "prev_rtg": torch.cat([torch.zeros(b, 1, 1), rtg[:, :-1]], 1),
            "timesteps": torch.arange(t).expand(b, t).contiguous(), "mask": torch.ones(b, t)}


@pytest.mark.parametrize("c,T", [(4, 3), (4, 13), (1, 6), (5, 25)])
def test_step_equals_forward_across_sub_goal_blocks(c, T):
    model = perturbed(small(c=c, K=2 * c))
    g = torch.Generator().manual_seed(c + T)
    obs, rtg = torch.randn(1, T, OBS, generator=g), torch.randn(1, T, 1, generator=g)
    actions, _ = step_through(model, model.init_state(1), obs, rtg)
    with torch.no_grad():
        predicted = model(as_batch(obs, rtg, actions))
    assert (predicted - actions).abs().max() < 1e-5 * actions.abs().max()


def test_step_after_past_trajectories_equals_forward_with_history(make_offline):
    model = perturbed(small())
    sampler = MultiTrajSampler(make_offline(lengths=(6, 9, 5, 7)), model.config.K, model.config.c, 2, 4, 30, 1.0,
                               seed=3)
    batch = sampler.sample(64)
    row = int(np.flatnonzero((batch["timesteps"][:, 0] == 0).numpy() & (batch["history_length"] > 4).numpy())[0])
    history = {k: v[row : row + 1] for k, v in batch.items() if k.startswith("history_")}
    obs, rtg = batch["observations"][row : row + 1], batch["rtg"][row : row + 1]
    actions, _ = step_through(model, model.context_state(history), obs, rtg)
    without, _ = step_through(model, model.init_state(1), obs, rtg)
    with torch.no_grad():
        predicted = model({**as_batch(obs, rtg, actions), **history})
    assert (predicted - actions).abs().max() < 1e-5 * actions.abs().max()
    assert (actions - without).abs().max() > 1e-3  # the past trajectories do change the actions


def test_step_state_is_bounded_and_the_cache_restarts_every_c_steps():
    model = perturbed(small())
    state = model.init_state(1)
    spec = model.state_spec()
    assert spec["k_0"]["shape"] == [1, 2, 12, 8] and spec["v_1"]["shape"] == [1, 2, 12, 8]  # 3c slots
    g = torch.Generator().manual_seed(0)
    obs, rtg = torch.randn(1, 9, OBS, generator=g), torch.randn(1, 9, 1, generator=g)
    _, after_8 = step_through(model, state, obs[:, :8], rtg[:, :8])
    assert after_8["t"].item() == 8 and list(after_8) == list(state)
    # at step 8 = 2c a new block starts: its action depends on the Mamba state and the current inputs
    # only, not on the previous block's cached keys and values
    scrambled = {**after_8, **{k: torch.randn_like(v) for k, v in after_8.items() if k[:2] in ("k_", "v_")}}
    with torch.no_grad():
        a, _ = model.step(after_8, obs[:, 8], rtg[:, 8])
        b, _ = model.step(scrambled, obs[:, 8], rtg[:, 8])
    assert torch.equal(a, b)


@pytest.mark.parametrize("overrides,message", [
    ({"K": 10, "c": 4}, "K must be a multiple of c=4"),
    ({"c": 0}, "c must be a positive integer"),
    ({"n_context": -1}, "n_context must be a non-negative integer"),
    ({"max_history": 0}, "max_history must be a positive integer"),
    ({"hidden": 15, "n_head": 2}, "hidden must be divisible by n_head=2"),
    ({"subgoal_weight": -0.5}, "subgoal_weight must be a non-negative number"),
    ({"activation": "tanh"}, "activation must be one of"),
    ({"dropout": 1.0}, "dropout must be a probability"),
])
def test_invalid_configs_raise_config_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_model("dmh", OBS, ACT, **{**SMALL, **overrides})


def test_sampler_rows_follow_the_documented_layout(make_offline):
    data = make_offline(lengths=(6, 9, 5, 7, 11, 4), seed=1)
    returns = episode_returns(data)
    starts = np.concatenate(([0], np.cumsum([6, 9, 5, 7, 11, 4])[:-1]))
    sampler = MultiTrajSampler(data, K=4, c=2, n_context=3, context_len=5, max_history=100, rtg_scale=1.0, seed=0)
    batch = sampler.sample(200)
    mean, std = sampler.obs_mean[0], sampler.obs_std[0]
    n_past = []
    for b in range(200):
        n = int(batch["history_length"][b])
        assert batch["history_mask"][b, :n].all() and not batch["history_mask"][b, n:].any()
        hist_rows = np.rint(batch["history_observations"][b, :n, 0].numpy() * std + mean).astype(int)
        seg_rows = np.rint(batch["observations"][b, :, 0].numpy() * std + mean).astype(int)
        t0 = int(batch["timesteps"][b, 0])
        assert t0 % 2 == 0  # segments start on sub-goal boundaries
        episode = int(np.searchsorted(starts, seg_rows[0], side="right") - 1)
        # the history ends with the episode's own prefix, right before the segment
        assert list(hist_rows[n - t0 :]) == list(range(starts[episode], starts[episode] + t0))
        # before it, whole past trajectories (their first steps), other episodes, ascending return
        firsts = np.flatnonzero(batch["history_timesteps"][b, : n - t0].numpy() == 0)
        past = [int(np.searchsorted(starts, hist_rows[i], side="right") - 1) for i in firsts]
        assert episode not in past and len(past) <= 3
        assert all(returns[x] <= returns[y] for x, y in zip(past, past[1:], strict=False))
        n_past.append(len(past))
    assert set(n_past) == {0, 1, 2, 3}  # 0..n_context past trajectories per row


def test_sampler_keeps_the_most_recent_history_and_is_deterministic(make_offline):
    data = make_offline(lengths=(30, 25, 40), seed=2)
    a = MultiTrajSampler(data, K=5, c=5, n_context=2, context_len=20, max_history=12, rtg_scale=1.0, seed=7)
    b = MultiTrajSampler(data, K=5, c=5, n_context=2, context_len=20, max_history=12, rtg_scale=1.0, seed=7)
    x, y = a.sample(50), b.sample(50)
    assert all(torch.equal(x[k], y[k]) for k in x)
    assert x["history_length"].max() <= 12 and x["history_observations"].shape[1] <= 12
    # when the episode's prefix alone fills max_history, the history is its last 12 steps
    long_prefix = np.flatnonzero(x["timesteps"][:, 0].numpy() >= 12)
    assert long_prefix.size
    for r in long_prefix:
        t0 = int(x["timesteps"][r, 0])
        assert x["history_timesteps"][r].tolist() == list(range(t0 - 12, t0))


def test_subgoal_loss_trains_its_head_and_loss_reaches_every_parameter(make_offline):
    model = small(subgoal_weight=0.5, dropout=0.0).train()
    batch = model.make_sampler(make_offline(lengths=(9, 12, 10)), 1.0, np.zeros(OBS), np.ones(OBS)).sample(8)
    loss = model.loss(batch)
    plain = small(dropout=0.0).train()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("subgoal_head")})
    assert loss > plain.loss(batch)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_trainer_trains_dmh_on_multi_trajectory_rows(make_offline, tmp_path):
    from ssmc.train.trainer import TrainConfig, Trainer

    trainer = Trainer("dmh", make_offline(lengths=(9, 12, 10, 8), obs_dim=OBS, act_dim=ACT), tmp_path / "run",
                      TrainConfig(steps=3, batch_size=4, log_every=1, save_every=3), overrides=SMALL)
    assert isinstance(trainer.sampler, MultiTrajSampler)
    trainer.fit(progress=False)
    model, extra = load_checkpoint(tmp_path / "run")
    assert model.name == "dmh" and extra["steps_done"] == 3


def test_checkpoint_round_trip(tmp_path):
    model = small()
    save_checkpoint(model, tmp_path / "ckpt", {"rtg_scale": 1.0})
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    g = torch.Generator().manual_seed(1)
    obs, rtg = torch.randn(1, 10, OBS, generator=g), torch.randn(1, 10, 1, generator=g)
    assert torch.equal(step_through(model, model.init_state(1), obs, rtg)[0],
                       step_through(loaded, loaded.init_state(1), obs, rtg)[0])


def test_step_costs_do_not_grow_with_the_episode():
    model = build_model("dmh", 11, 3)
    dt = build_model("dt", 11, 3, K=1000, max_ep_len=1000)
    assert model.macs_per_step() * 100 < dt.macs_per_step()  # vs a DT whose window covers a 1000-step episode
    assert model.state_bytes() < 200_000


@pytest.mark.slow
def test_compiled_step_matches_pytorch(tmp_path):
    from ssmc.compile import compile_checkpoint
    from ssmc.compile.export import StepFunction
    from ssmc.compile.measure import compare_with_pytorch

    model = small(dropout=0.0)
    extra = {"obs_mean": [0.5, -1.0, 2.0], "obs_std": [1.5, 0.5, 2.0], "rtg_scale": 0.1, "target_return": 1.0}
    ckpt = save_checkpoint(model, tmp_path / "ckpt", extra)
    artifact = compile_checkpoint(ckpt, "host", "fp32", out=tmp_path / "dmh.ssmc")
    loaded, extra = load_checkpoint(ckpt)
    [err] = compare_with_pytorch(artifact, [StepFunction(loaded, extra["obs_mean"], extra["obs_std"],
                                                         extra["rtg_scale"]).eval()])
    assert err <= 1e-5
