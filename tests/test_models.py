"""The model zoo: step() equals forward() in each model's semantics, configs validate, checkpoints round-trip,
and sizes land where the papers put them."""

import json

import pytest
import torch

from ssmc.errors import ConfigError
from ssmc.train.models import (
    MODELS,
    DTConfig,
    build_model,
    load_checkpoint,
    model_from_config,
    save_checkpoint,
)
from ssmc.train.models.common import masked_mse

OBS, ACT = 11, 3  # hopper


SMALL = {  # fast variants for the broad tests; full sizes are covered by test_step_equals_forward_at_paper_size
    "dt": {"K": 5, "hidden": 32, "n_layer": 2, "n_head": 2, "max_ep_len": 50},
    "dema": {"K": 5, "embedding_dim": 16, "d_model": 16, "n_layer": 2, "d_state": 8},
    "dema-rnn": {"K": 12, "embedding_dim": 16, "d_model": 16, "n_layer": 2, "d_state": 8},
    "dmm": {"K": 5, "hidden": 16, "n_layer": 2, "window": 4, "d_state": 4},
    "mambadm": {"K": 5, "hidden": 16, "n_layer": 2, "d_state": 4},
    "dmh": {"K": 12, "c": 4, "d_model": 16, "n_mamba_layer": 2, "d_state": 8, "hidden": 16, "n_layer": 2,
            "n_head": 2, "context_len": 5, "max_history": 20},
}


# every semantics a model offers: its own, and the other one through with_semantics()
CASES = [(name, None) for name in MODELS] + [("dema", "recurrent"), ("dema-rnn", "window"), ("dmm", "recurrent")]
CASE_IDS = [name if semantics is None else f"{name}-as-{semantics}" for name, semantics in CASES]


def small_model(name, semantics=None):
    model = build_model(name, OBS, ACT, **SMALL[name])
    return model if semantics is None else model.with_semantics(semantics)


def rollout(model, T, B=2, seed=0):
    """step() through T random steps; returns the episode as a from-start batch (actions = the model's)."""
    g = torch.Generator().manual_seed(seed)
    obs, rtg = torch.randn(B, T, OBS, generator=g), torch.randn(B, T, 1, generator=g)
    state, actions = model.init_state(B), []
    with torch.no_grad():
        for t in range(T):
            action, state = model.step(state, obs[:, t], rtg[:, t])
            actions.append(action)
    actions = torch.stack(actions, 1)
    return {
        "observations": obs, "actions": actions, "rtg": rtg,
        "prev_actions": torch.cat([torch.zeros(B, 1, ACT), actions[:, :-1]], 1),
        "prev_rtg": torch.cat([torch.zeros(B, 1, 1), rtg[:, :-1]], 1),
        "timesteps": torch.arange(T).expand(B, T).contiguous(), "mask": torch.ones(B, T),
    }


def left_padded_window(episode, t, K):
    """The training window ending at step t: the last K steps, zero-padded on the left (mask 0)."""
    start = max(0, t + 1 - K)
    window = {}
    for key, v in episode.items():
        part = v[:, start : t + 1]
        pad = torch.zeros((v.shape[0], K - part.shape[1], *v.shape[2:]), dtype=v.dtype)
        window[key] = torch.cat([pad, part], 1)
    return window


def assert_step_equals_forward(model, T):
    model.eval()
    episode = rollout(model, T)
    actions = episode["actions"]
    assert not torch.isnan(actions).any()
    scale = actions.abs().max()
    with torch.no_grad():
        if model.semantics == "recurrent":
            predicted = model(episode)
        else:
            K = model.config.K
            predicted = torch.stack([model(left_padded_window(episode, t, K))[:, -1] for t in range(T)], 1)
    assert not torch.isnan(predicted).any()
    err = (predicted - actions).abs().max() / scale
    assert err < 1e-5, f"{model.name}: step vs forward relative error {err:.2e}"


@pytest.mark.parametrize("name,semantics", CASES, ids=CASE_IDS)
def test_step_equals_forward_on_short_and_long_episodes(name, semantics):
    torch.manual_seed(0)
    model = small_model(name, semantics)
    assert model.semantics == (semantics or MODELS[name].semantics)
    assert_step_equals_forward(model, T=model.config.K + 7)  # window: padded at first, then sliding


@pytest.mark.parametrize("name", MODELS)
def test_step_equals_forward_at_paper_size(name):
    torch.manual_seed(1)
    model = build_model(name, OBS, ACT)
    T = 30 if model.semantics == "recurrent" else model.config.K + 3
    assert_step_equals_forward(model, T)


def test_recurrent_forward_ignores_right_padding():
    torch.manual_seed(0)
    model = build_model("dema-rnn", OBS, ACT, **SMALL["dema-rnn"]).eval()
    episode = rollout(model, T=8)
    padded = {k: torch.cat([v, torch.randn(v.shape[0], 4, *v.shape[2:]).to(v.dtype)], 1) for k, v in episode.items()}
    with torch.no_grad():
        assert torch.allclose(model(padded)[:, :8], model(episode), atol=1e-6)


def test_dt_outputs_do_not_depend_on_padding_content():
    torch.manual_seed(0)
    model = build_model("dt", OBS, ACT, **SMALL["dt"]).eval()
    window = left_padded_window(rollout(model, T=3), t=2, K=5)  # 2 padded steps
    noisy = {k: v.clone() for k, v in window.items()}
    for key in ("observations", "actions", "rtg"):
        noisy[key][:, :2] = torch.randn_like(noisy[key][:, :2])
    noisy["timesteps"][:, :2] = 7
    with torch.no_grad():
        assert torch.allclose(model(window)[:, 2:], model(noisy)[:, 2:], atol=1e-6)


@pytest.mark.parametrize("name,semantics", CASES, ids=CASE_IDS)
def test_step_keeps_state_shapes_and_does_not_mutate_it(name, semantics):
    model = small_model(name, semantics).eval()
    state = model.init_state(3)
    before = {k: v.clone() for k, v in state.items()}
    spec = model.state_spec()
    assert list(spec) == list(state)
    assert model.state_bytes() == sum(v[0].numel() * v.element_size() for v in state.values())
    with torch.no_grad():
        action, new = model.step(state, torch.randn(3, OBS), torch.randn(3, 1))
    assert action.shape == (3, ACT) and action.abs().max() <= 1
    assert all(torch.equal(state[k], before[k]) for k in state)
    assert list(new) == list(state)
    for k, v in new.items():
        assert v.shape == state[k].shape and v.dtype == state[k].dtype, k
        assert list(v.shape[1:]) == spec[k]["shape"][1:] and str(v.dtype) == "torch." + spec[k]["dtype"]


@pytest.mark.parametrize("name,semantics", CASES, ids=CASE_IDS)
def test_step_exports_with_torch_export(name, semantics):
    model = small_model(name, semantics).eval()

    class Step(torch.nn.Module):
        def __init__(self, policy):
            super().__init__()
            self.policy = policy

        def forward(self, state, obs, rtg):
            return self.policy.step(state, obs, rtg)

    args = (model.init_state(1), torch.randn(1, OBS), torch.randn(1, 1))
    program = torch.export.export(Step(model), args)
    expected, _ = model.step(*args)
    assert torch.allclose(program.module()(*args)[0], expected, atol=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_loss_is_masked_mse_and_reaches_every_parameter(name):
    torch.manual_seed(0)
    model = build_model(name, OBS, ACT, **SMALL[name]).eval()
    batch = rollout(model, T=model.config.K)
    batch["actions"] = torch.rand_like(batch["actions"]) * 2 - 1
    batch["mask"][:, :2] = 0
    loss = model.loss(batch)
    assert torch.equal(loss, masked_mse(model(batch), batch["actions"], batch["mask"]))
    model.train()
    model.loss(batch).backward()
    unreached = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not unreached


def test_with_semantics_copies_weights_and_refuses_missing_variants():
    dema = build_model("dema", OBS, ACT, **SMALL["dema"])
    assert dema.with_semantics("window") is dema
    rnn = dema.with_semantics("recurrent")
    assert rnn.name == "dema-rnn" and rnn.config.to_dict() == dema.config.to_dict()
    assert all(torch.equal(v, rnn.state_dict()[k]) for k, v in dema.state_dict().items())
    dmm = build_model("dmm", OBS, ACT)
    assert dmm.with_semantics("recurrent").macs_per_step() * 7 < dmm.macs_per_step()  # 3 tokens, not 3K = 24
    with pytest.raises(ConfigError, match="'dt' has no recurrent semantics"):
        build_model("dt", OBS, ACT, **SMALL["dt"]).with_semantics("recurrent")
    with pytest.raises(ConfigError, match="unknown semantics 'streaming'"):
        dema.with_semantics("streaming")


def test_masked_mse_averages_real_steps_only():
    pred, target = torch.zeros(1, 3, 2), torch.tensor([[[1.0, 1.0], [2.0, 2.0], [9.0, 9.0]]])
    assert masked_mse(pred, target, torch.tensor([[1.0, 1.0, 0.0]])).item() == pytest.approx(2.5)


def test_parameter_counts_on_hopper():
    counts = {name: build_model(name, OBS, ACT).num_params() for name in MODELS}
    assert 0.70e6 < counts["dt"] < 0.75e6  # paper 726.2K
    assert 0.15e6 < counts["dema"] < 0.18e6  # embedding 128 (Table 8)
    assert counts["dema-rnn"] == counts["dema"]
    assert 0.11e6 < counts["dmm"] < 0.13e6
    # The paper's 175.5K / 500.0K: embedding 256, d_model 64 / 128, plus upstream's two unused heads (1548).
    assert abs(build_model("dema", OBS, ACT, embedding_dim=256).num_params() + 780 - 175.5e3) < 100
    assert abs(build_model("dema", OBS, ACT, embedding_dim=256, d_model=128).num_params() + 1548 - 500.0e3) < 100


def test_macs_per_step():
    macs = {name: build_model(name, OBS, ACT).macs_per_step() for name in MODELS}
    assert all(m > 0 for m in macs.values())
    assert macs["dema-rnn"] * 15 < macs["dema"]  # recurrent: 3 tokens per step instead of 60
    assert macs["dmm"] < macs["dema"] < macs["dt"]


def test_param_groups_cover_every_parameter_once():
    model = build_model("dema", OBS, ACT, **SMALL["dema"])
    groups = model.param_groups(0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    assert not any(p is model.blocks[0].mixer.A_log for p in groups[0]["params"])


def test_dmm_norm_sharing_and_registered_mixers():
    shared = build_model("dmm", OBS, ACT)
    separate = build_model("dmm", OBS, ACT, share_norms=False)
    assert len(shared.ln_1) == 1 and len(separate.ln_1) == 3
    assert separate.num_params() - shared.num_params() == 2 * 2 * 2 * 64
    names = shared.state_dict()
    assert all(f"mixers.{i}.lin.weight" in names for i in range(3))
    assert not any(k.startswith("mambas.0.conv1d") for k in names)


@pytest.mark.parametrize("name", MODELS)
def test_config_round_trips_through_json(name):
    model = build_model(name, OBS, ACT)
    data = json.loads(json.dumps({"model": name, "config": model.config.to_dict()}))
    assert model_from_config(data).config == model.config
    assert model.semantics in ("window", "recurrent")


@pytest.mark.parametrize(
    "name,overrides,message",
    [
        ("dt", {"hidden": 0}, "hidden must be a positive integer"),
        ("dt", {"n_head": 3}, "divisible by n_head"),
        ("dt", {"activation": "swish"}, "activation must be one of"),
        ("dt", {"dropout": 1.5}, "dropout must be a probability"),
        ("dema", {"d_state": -4}, "d_state must be a positive integer"),
        ("dema", {"K": 2.5}, "K must be a positive integer"),
        ("dema-rnn", {"n_layer": True}, "n_layer must be a positive integer"),
        ("dmm", {"window": 0}, "window must be a positive integer"),
        ("dmm", {"share_norms": "yes"}, "share_norms must be true or false"),
        ("dmm", {"fusion": "sum"}, "unknown field"),
    ],
)
def test_invalid_configs_raise_config_error(name, overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_model(name, OBS, ACT, **overrides)


def test_unknown_model_and_missing_fields_raise_config_error():
    with pytest.raises(ConfigError, match="known models: dt, dema, dema-rnn, dmm"):
        build_model("gpt", OBS, ACT)
    with pytest.raises(ConfigError, match="missing required field"):
        DTConfig.from_dict({"obs_dim": 3})
    with pytest.raises(ConfigError, match="obs_dim must be a positive integer"):
        build_model("dt", 0, ACT)
    with pytest.raises(ConfigError, match='needs "model"'):
        model_from_config({"config": {}})


@pytest.mark.parametrize("name", MODELS)
def test_checkpoint_round_trip(name, tmp_path):
    torch.manual_seed(0)
    model = build_model(name, OBS, ACT, **SMALL[name]).eval()
    extra = {"obs_mean": [0.5] * OBS, "rtg_scale": 1000.0, "env": "Hopper-v5"}
    save_checkpoint(model, tmp_path / "ckpt", extra)
    loaded, loaded_extra = load_checkpoint(tmp_path / "ckpt")
    assert loaded_extra == extra and type(loaded) is type(model) and not loaded.training
    batch = rollout(model, T=model.config.K)
    with torch.no_grad():
        assert torch.equal(loaded(batch), model(batch))


def corrupt(path, name):
    from safetensors.torch import load_file, save_file

    tensors = load_file(path / "model.safetensors")
    if name == "missing":
        tensors.pop("head.weight")
    elif name == "unexpected":
        tensors["extra.weight"] = torch.zeros(2)
    elif name == "shape":
        tensors["head.weight"] = torch.zeros(5, 5)
    save_file(tensors, path / "model.safetensors")


@pytest.mark.parametrize(
    "defect,message",
    [
        ("no_config", "config.json is missing"),
        ("no_weights", "model.safetensors is missing"),
        ("bad_json", "not valid JSON"),
        ("wrong_format", "not an ssmc checkpoint"),
        ("missing", r"missing tensors \['head.weight'\]"),
        ("unexpected", r"unexpected tensors \['extra.weight'\]"),
        ("shape", r"head.weight \(5, 5\) \(expected \(3, 16\)\)"),
        ("garbage_weights", "cannot be read"),
    ],
)
def test_incomplete_checkpoints_raise_config_error(defect, message, tmp_path):
    model = build_model("dema", OBS, ACT, **SMALL["dema"])
    path = save_checkpoint(model, tmp_path / "ckpt")
    if defect == "no_config":
        (path / "config.json").unlink()
    elif defect == "no_weights":
        (path / "model.safetensors").unlink()
    elif defect == "bad_json":
        (path / "config.json").write_text("{not json")
    elif defect == "wrong_format":
        (path / "config.json").write_text(json.dumps({"model": "dema", "config": {}}))
    elif defect == "garbage_weights":
        (path / "model.safetensors").write_bytes(b"\x00" * 5)
    else:
        corrupt(path, defect)
    with pytest.raises(ConfigError, match=message):
        load_checkpoint(path)


def test_checkpoint_extra_must_be_json(tmp_path):
    with pytest.raises(ConfigError, match="JSON-serialisable"):
        save_checkpoint(build_model("dmm", OBS, ACT, **SMALL["dmm"]), tmp_path, {"mean": torch.zeros(2)})
