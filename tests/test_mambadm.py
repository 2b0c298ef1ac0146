"""MambaDM (GLoMa mixer): step() equals forward() in both semantics and every sub-sequence layout, the local
branch really restarts at each run while the global one does not, configs validate, `ssmc models` lists it,
checkpoints round-trip, and the compiled step equals PyTorch (fp32 to 1e-5, fp16/int8 within the zoo's
bounds from tests/test_compile.py)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from test_compile import BOUNDS, EXTRA, _torch_step
from test_models import ACT, OBS, assert_step_equals_forward, rollout

from ssmc.artifact import load_manifest
from ssmc.compile import compile_checkpoint
from ssmc.compile.measure import compare_with_pytorch
from ssmc.errors import ConfigError
from ssmc.train.models import MODELS, MambaDM, build_model, load_checkpoint, save_checkpoint

SMALL = {"K": 5, "hidden": 16, "n_layer": 2, "d_state": 4}


def small(semantics: str | None = None, **overrides) -> MambaDM:
    model = build_model("mambadm", OBS, ACT, **{**SMALL, **overrides})
    return model if semantics is None else model.with_semantics(semantics)


# -- step() equals forward() -------------------------------------------------------------------------

@pytest.mark.parametrize("semantics", ["window", "recurrent"])
@pytest.mark.parametrize("overrides", [{}, {"fusion": "concat"}, {"local_tokens": 1}, {"local_tokens": 2},
                                       {"local_tokens": 6}, {"local_tokens": 7}],
                         ids=["default", "concat", "local1", "local2", "local6", "local7"])
def test_step_equals_forward(semantics, overrides):
    torch.manual_seed(0)
    model = small(semantics, **overrides)
    assert model.semantics == semantics and model.name == "mambadm"
    assert_step_equals_forward(model, T=model.config.K + 7)  # window: padded, then sliding; recurrent: 12 steps


def test_recurrent_step_equals_forward_at_hopper_size():
    torch.manual_seed(1)
    assert_step_equals_forward(build_model("mambadm", OBS, ACT).with_semantics("recurrent"), T=30)


def test_local_branch_restarts_every_run_and_global_branch_does_not():
    torch.manual_seed(0)
    layer = small(local_tokens=3).layers[0].eval()
    x = torch.randn(2, 9, 16)
    changed = x.clone()
    changed[:, 1] += 1.0  # a token of the first run (tokens 0-2)
    with torch.no_grad():
        local, local2 = layer.local(x), layer.local(changed)
        glob, glob2 = layer.global_mamba(x), layer.global_mamba(changed)
    assert torch.equal(local[:, :1], local2[:, :1])  # causal
    assert not torch.allclose(local[:, 1:3], local2[:, 1:3])  # the rest of its run sees it
    assert torch.equal(local[:, 3:], local2[:, 3:])  # later runs restart from zeros
    assert not torch.allclose(glob[:, 3:], glob2[:, 3:])  # the global branch carries it on


def test_recurrent_state_holds_only_the_global_branch_when_runs_tile_a_step():
    tiled, straddling = small("recurrent"), small("recurrent", local_tokens=6)
    assert list(tiled.init_state()) == ["conv_0", "ssm_0", "conv_1", "ssm_1"]
    assert list(straddling.init_state()) == ["conv_0", "ssm_0", "local_conv_0", "local_ssm_0", "conv_1", "ssm_1",
                                             "local_conv_1", "local_ssm_1", "t"]
    assert straddling.state_bytes() == 2 * tiled.state_bytes() + 8


# -- sizes --------------------------------------------------------------------------------------------

def test_hopper_size_and_costs():
    model = build_model("mambadm", OBS, ACT)
    dema, dmm, dt = (build_model(n, OBS, ACT) for n in ("dema", "dmm", "dt"))
    assert 0.19e6 < model.num_params() < 0.21e6  # DeMa/DMM scale (docstring), far below DT
    assert dmm.num_params() < model.num_params() < dt.num_params() / 3
    # per layer and token: two expand-1 Mambas and a 4x FFN (8h² MACs)
    layer = model.layers[0]
    h = model.config.hidden
    assert layer.macs_per_token() == layer.global_mamba.macs_per_token() + 8 * h * h
    recurrent = model.with_semantics("recurrent")
    assert recurrent.macs_per_step() * model.config.K == model.macs_per_step() + (model.config.K - 1) * 3 * h
    assert model.macs_per_step() < dema.macs_per_step() * 1.1


def test_concat_fusion_adds_one_linear_per_layer():
    summed, concat = build_model("mambadm", OBS, ACT), build_model("mambadm", OBS, ACT, fusion="concat")
    h, n = summed.config.hidden, summed.config.n_layer
    assert concat.num_params() - summed.num_params() == n * (2 * h * h + h)
    assert concat.macs_per_step() - summed.macs_per_step() == n * 3 * summed.config.K * 2 * h * h
    assert summed.layers[0].fuse is None and concat.layers[0].fuse.in_features == 2 * h


def test_window_macs_count_the_padded_last_run():
    even, ragged = small(local_tokens=5), small(local_tokens=4)  # 15 tokens: 3 runs of 5; 4 runs of 4 = 16
    local = even.layers[0].local_mamba.macs_per_token()
    assert ragged.macs_per_step() - even.macs_per_step() == even.config.n_layer * local


# -- config, registry, checkpoints -------------------------------------------------------------------

@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"fusion": "max"}, r"MambaDMConfig.fusion must be one of 'sum', 'concat', got 'max'"),
        ({"local_tokens": 0}, "local_tokens must be a positive integer"),
        ({"local_tokens": 1.5}, "local_tokens must be a positive integer"),
        ({"ffn_mult": -1}, "ffn_mult must be a positive integer"),
        ({"hidden": True}, "hidden must be a positive integer"),
        ({"dropout": 1.0}, "dropout must be a probability"),
        ({"norm_eps": 0}, "norm_eps must be a positive number"),
        ({"window": 4}, "unknown field"),
    ],
)
def test_invalid_configs_raise_one_line_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        build_model("mambadm", OBS, ACT, **overrides)
    assert "\n" not in str(info.value)


def test_ssmc_models_lists_mambadm():
    from ssmc.cli import cli

    result = CliRunner().invoke(cli, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["model"]: r for r in json.loads(result.stdout)["models"]}
    model = build_model("mambadm", OBS, ACT)
    assert "mambadm" in MODELS
    assert rows["mambadm"] == {"model": "mambadm", "semantics": "window", "K": 20, "params": model.num_params(),
                               "macs_per_step": model.macs_per_step(), "state_bytes": model.state_bytes()}


@pytest.mark.parametrize("overrides", [{}, {"fusion": "concat", "local_tokens": 6}])
def test_checkpoint_round_trip(overrides, tmp_path):
    torch.manual_seed(0)
    model = small(**overrides).eval()
    save_checkpoint(model, tmp_path / "ckpt", EXTRA)
    loaded, extra = load_checkpoint(tmp_path / "ckpt")
    assert isinstance(loaded, MambaDM) and loaded.config == model.config and extra == EXTRA
    batch = rollout(model, T=model.config.K)
    with torch.no_grad():
        assert torch.equal(loaded(batch), model(batch))
    names = set(loaded.state_dict())
    assert {"layers.0.global_mamba.A_log", "layers.0.local_mamba.A_log", "layers.1.ffn.fc2.weight"} <= names
    assert ("layers.0.fuse.weight" in names) == (model.config.fusion == "concat")


# -- compiled step equals PyTorch ------------------------------------------------------------------

COMPILE_SMALL = {"K": 4, "hidden": 16, "n_layer": 1, "d_state": 8, "dropout": 0.0}
OBS_C = len(EXTRA["obs_mean"])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(3)
    model = build_model("mambadm", OBS_C, 2, **COMPILE_SMALL)
    return save_checkpoint(model, tmp_path_factory.mktemp("mambadm") / "ckpt", EXTRA)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_compiled_window_step_matches_pytorch(precision, checkpoint, tmp_path):
    artifact = compile_checkpoint(checkpoint, "host", precision, out=tmp_path / "a.ssmc")
    refs = [_torch_step(checkpoint)] + ([_torch_step(checkpoint, quantized=True)] if precision == "int8" else [])
    errors = compare_with_pytorch(artifact, refs)
    print(f"mambadm {precision}: max relative error vs PyTorch over 200 steps {errors}")
    assert errors[0] <= BOUNDS[precision]
    if precision != "fp32":
        assert errors[0] > 0  # the precision really changed something
    if precision == "int8":
        assert errors[1] <= BOUNDS["fp32"]  # all of the int8 error is quantisation
    m = load_manifest(artifact)
    model, _ = load_checkpoint(checkpoint)
    assert m.model_kind == "mambadm" and m.semantics == "window"
    assert m.param_count == model.num_params() and m.macs_per_step == model.macs_per_step()


def test_compiled_recurrent_step_with_carried_local_state_matches_pytorch(tmp_path):
    torch.manual_seed(4)
    # runs of two whole timesteps straddle steps: the local state and the counter t are carried
    model = build_model("mambadm", OBS_C, 2, **COMPILE_SMALL, local_tokens=6)
    ckpt = save_checkpoint(model, tmp_path / "ckpt", EXTRA)
    artifact = compile_checkpoint(ckpt, "host", "fp32", "recurrent", tmp_path / "a.ssmc")
    m = load_manifest(artifact)
    assert [s.name for s in m.state][-1] == "t" and m.semantics == "recurrent"
    [err] = compare_with_pytorch(artifact, [_torch_step(ckpt, "recurrent")])
    assert err <= BOUNDS["fp32"]
