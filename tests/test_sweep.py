"""ssmc sweep: the grid from a config, one run per Ray task on local Ray, resumable from the run folders,
mean ± 95 % CI over seeds of the last and best evaluations."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from ssmc.cli import cli
from ssmc.errors import ConfigError
from ssmc.train import sweep as sw

TINY = {
    "name": "tiny",
    "datasets": {"pend": {"path": "pend.hdf5", "env": "Pendulum-v1", "quality": "medium", "size": 600}},
    "models": {"dt": {"name": "dt-tiny", "model": "dt", "model_config": {"K": 4, "hidden": 16, "n_layer": 1}},
               "dmm": {"name": "dmm-tiny", "model": "dmm", "model_config": {"K": 4, "hidden": 16, "n_layer": 1}}},
    "seeds": [0, 1],
    "train": {"steps": 6, "batch_size": 8, "warmup_steps": 1},
    "eval": {"episodes": 1, "every": 3},
}


@pytest.fixture()
def tiny(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sweep.json").write_text(json.dumps(TINY))
    return tmp_path


def test_a_tiny_sweep_on_local_ray_then_resumes_from_disk(tiny):
    pytest.importorskip("ray")
    res = CliRunner().invoke(cli, ["sweep", "sweep.json", "--out", "out", "--parallel", "2", "--doc", "res.md", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])
    assert summary["ran_this_invocation"] == 4 and not summary["missing"]
    rows = {r["model"]: r for r in summary["rows"]}
    assert set(rows) == {"dt", "dmm"} and rows["dt"]["seeds"] == [0, 1]
    for model in ("dt", "dmm"):
        results = [json.loads((tiny / "out" / model / "pend" / f"seed{s}" / "result.json").read_text()) for s in (0, 1)]
        assert [e["step"] for e in results[0]["evals"]] == [3, 6]
        assert all(r["best"] == max(e["normalized_mean"] for e in r["evals"]) for r in results)
        assert rows[model]["last"]["values"] == [r["last"] for r in results]
        assert rows[model]["last"]["mean"] == pytest.approx((results[0]["last"] + results[1]["last"]) / 2)
    assert (tiny / "out" / "sweep.md").read_text().count("| pend |") == 2
    assert (tiny / "res.md").read_text().count(sw.DOC_BEGIN) == 1
    assert json.loads((tiny / "res.json").read_text())["rows"] == summary["rows"]

    # a finished sweep runs nothing again (no Ray needed: every run folder has its result)
    again = sw.run_sweep("sweep.json", "out", progress=False)
    assert again["ran_this_invocation"] == 0 and again["rows"] == summary["rows"]

    # a run cut after its first evaluation resumes from its checkpoint and evaluates only what is missing
    run = tiny / "out" / "dt" / "pend" / "seed1"
    first_eval = (run / "evals.jsonl").read_text().splitlines()[0]
    (run / "result.json").unlink()
    (run / "evals.jsonl").write_text(first_eval + "\n")
    spec = json.loads((run / "run.json").read_text())
    resumed = sw.run_one(spec)
    assert [e["step"] for e in resumed["evals"]] == [3, 6]
    assert resumed["evals"][0] == json.loads(first_eval)  # not evaluated again
    state = json.loads((run / "trainer_state.json").read_text())
    assert state["step"] == 6

    # raising train.steps extends a finished run from its checkpoint: earlier evaluations are kept
    longer = {**spec, "steps": 9, "eval_steps": [3, 6, 9]}
    assert not sw.finished(longer) and sw.finished(spec)
    extended = sw.run_one(longer)
    assert [e["step"] for e in extended["evals"]] == [3, 6, 9] and extended["evals"][:2] == resumed["evals"]
    assert extended["steps"] == 9 and json.loads((run / "trainer_state.json").read_text())["step"] == 9


def test_expand_builds_the_grid_and_applies_the_budget(tmp_path):
    cfg = sw.load_sweep(str(Path(__file__).parents[1] / "ssmc" / "configs" / "sweeps" / "hopper-claims.json"))
    runs = sw.expand(cfg, tmp_path)
    assert len(runs) == len(cfg["models"]) * len(cfg["datasets"]) * len(cfg["seeds"])
    by = {r["key"]: r for r in runs}
    # DeMa at its paper's per-dataset settings (Table 8): embedding 256 on medium(-replay), d_model 128 on expert
    assert by["dema/hopper-medium-replay/seed0"]["model_config"]["embedding_dim"] == 256
    assert by["dema/hopper-medium-expert/seed0"]["model_config"]["d_model"] == 128
    assert by["dmm/hopper-medium-replay/seed0"]["model_config"]["K"] == 8
    assert all(r["steps"] == cfg["train"]["steps"] for r in runs)  # the sweep's budget overrides 100k
    assert all(r["eval_steps"][-1] == r["steps"] for r in runs)


def test_verify_zoo_sweep_names_tools_verify_zoos_checkpoints(tmp_path):
    """ssmc/configs/sweeps/verify-zoo.json (docs/runtime.md's verify table): the four window models, found by
    name (the inline MambaDM config included), in the folders tools/verify_zoo.py's --run-path pattern reads."""
    cfg = sw.load_sweep("verify-zoo")
    runs = sw.expand(cfg, tmp_path)
    assert sorted(r["model"] for r in runs) == ["dema", "dmm", "dt", "mambadm"]
    assert all(r["steps"] == 100 and r["eval_steps"] == [100] and r["episodes"] == 1 for r in runs)
    by = {r["model"]: r for r in runs}
    assert by["dema"]["model_config"]["embedding_dim"] == 256 and by["dmm"]["model_config"]["K"] == 8
    assert by["mambadm"]["train"]["lr"] == 1e-4 and by["mambadm"]["target_return"] == 3600
    for model, r in by.items():
        assert Path(r["out"]) == (tmp_path / model / "hopper-medium-replay" / "seed0").absolute()


def test_named_configs_build_the_papers_sizes():
    from ssmc.train.models import build_model

    sizes = {}
    for name in ("dt-corl", "dema-hopper-medium", "dema-hopper-medium-expert", "dmm-d4rl"):
        c = sw.load_named(name)
        sizes[name] = build_model(c["model"], 11, 3, **c["model_config"]).num_params()
        assert c["protocol_differences"], name
    # the papers' counts: DT 726.2K, DeMa 175.5K (embedding 256) and 500.0K (d_model 128), DMM ≈ 0.12 M
    assert abs(sizes["dt-corl"] - 726_200) / 726_200 < 0.01
    assert abs(sizes["dema-hopper-medium"] - 175_500) / 175_500 < 0.01
    assert abs(sizes["dema-hopper-medium-expert"] - 500_000) / 500_000 < 0.05
    assert abs(sizes["dmm-d4rl"] - 120_000) / 120_000 < 0.05


def test_mean_ci_is_the_student_t_interval():
    s = sw.mean_ci([1.0, 2.0, 3.0])
    # t(0.975, 2) = 4.302653; sd = 1; half-width = 4.302653 / sqrt(3)
    assert s["mean"] == 2.0 and s["ci"] == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert sw.mean_ci([5.0])["ci"] is None
    assert sw.t_quantile(0.975, 10) == pytest.approx(2.228139, rel=1e-6)  # tables' value
    assert sw.t_quantile(0.975, 1) == pytest.approx(12.706205, rel=1e-6)


def test_bad_sweep_configs_are_one_line_errors(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({**TINY, "seeds": []}))
    with pytest.raises(ConfigError, match="seeds"):
        sw.load_sweep(tmp_path / "bad.json")
    (tmp_path / "bad2.json").write_text(json.dumps({**TINY, "models": {"x": "no-such-config"}}))
    with pytest.raises(ConfigError, match="unknown named config"):
        sw.expand(sw.load_sweep(tmp_path / "bad2.json"), tmp_path)
    res = CliRunner().invoke(cli, ["sweep", str(tmp_path / "missing.json")])
    assert res.exit_code == 2 and res.output.startswith("error: ") and len(res.output.strip().splitlines()) == 1
