"""ssmc claims: holds / does not hold / undecided from the score intervals, parameter and cost ratios, and
the marked block it writes into docs/claims.md."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from ssmc.cli import cli
from ssmc.train import verdict as vd
from ssmc.train.sweep import mean_ci, t_quantile


def row(model, dataset, last, best=None, params=100, macs=1000, config=None):
    return {"model": model, "dataset": dataset, "config": config or model, "params": params, "macs_per_step": macs,
            "steps": 10, "seeds": list(range(len(last))), "last": mean_ci(last), "best": mean_ci(best or last)}


@pytest.fixture()
def sweep_file(tmp_path):
    rows = [row("dt", "a", [10.0, 11.0, 12.0], params=1000, macs=8000),
            row("dt", "b", [20.0, 21.0, 22.0], params=1000, macs=8000),
            row("good", "a", [30.0, 31.0, 32.0], params=200, macs=1000),   # far above DT: holds
            row("good", "b", [40.0, 41.0, 42.0], params=200, macs=1000),
            row("bad", "a", [0.0, 1.0, 2.0], params=500),                   # far below: does not hold
            row("bad", "b", [5.0, 6.0, 7.0], params=500),
            row("close", "a", [5.0, 11.0, 17.0], params=300),               # wide, straddles 0: undecided
            row("close", "b", [15.0, 21.0, 27.0], params=300)]
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"sweep": "synthetic", "date": "now", "budget": "tiny", "rows": rows}))
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "bench.json").write_text(json.dumps({"rows": [
        {"model": "dt", "params": 1000, "deployed_semantics": "window", "latency": {"tvm-fp32": {"p50_us": 400.0}},
         "build": {"tvm-fp32": {"library_bytes": 4000}}},
        {"model": "good", "params": 200, "deployed_semantics": "recurrent", "latency": {"tvm-fp32": {"p50_us": 100.0}},
         "build": {"tvm-fp32": {"library_bytes": 1000}}}]}))
    return path, docs


def test_verdicts_follow_the_intervals(sweep_file):
    path, docs = sweep_file
    v = vd.verdict(path, docs_dir=docs)
    by = {m["model"]: m for m in v["models"]}
    assert set(by) == {"good", "bad", "close"}
    assert by["good"]["claims"][0]["verdict"] == "holds"
    assert by["bad"]["claims"][0]["verdict"] == "does not hold"
    assert by["close"]["claims"][0]["verdict"] == "undecided at 3 seeds"
    # parameters: 0.2 and 0.3 are about a quarter (≤ 1/3), 0.5 is not
    assert [by[m]["claims"][2]["verdict"] for m in ("good", "close", "bad")] == ["holds", "holds", "does not hold"]
    assert by["good"]["per_dataset"][0]["macs_ratio"] == pytest.approx(1000 / 8000)


def test_the_welch_interval_by_hand(sweep_file):
    path, docs = sweep_file
    v = vd.verdict(path, docs_dir=docs)
    close_a = next(p for p in next(m for m in v["models"] if m["model"] == "close")["per_dataset"] if p["dataset"] == "a")
    # close: mean 11, sd 6; dt: mean 11, sd 1; n = 3 each
    va, vb = 36 / 3, 1 / 3
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)
    assert close_a["last"]["diff"] == pytest.approx(0.0)
    assert close_a["last"]["ci"] == pytest.approx(t_quantile(0.975, math.floor(df)) * math.sqrt(va + vb))


def test_compiled_costs_come_from_the_docs_json_and_name_it(sweep_file):
    path, docs = sweep_file
    good = next(m for m in vd.verdict(path, docs_dir=docs)["models"] if m["model"] == "good")
    assert good["cost"]["latency_ratio"] == pytest.approx(0.25)
    assert good["cost"]["library_ratio"] == pytest.approx(0.25)
    assert "bench.json" in good["cost"]["latency"]["source"]
    assert good["claims"][3]["verdict"] == "holds"
    bad = next(m for m in vd.verdict(path, docs_dir=docs)["models"] if m["model"] == "bad")
    assert bad["cost"] == {} and len(bad["claims"]) == 3  # no benchmark row: no cost claim is made up


def test_the_command_writes_its_block_and_keeps_the_rest(sweep_file, tmp_path):
    path, docs = sweep_file
    doc = tmp_path / "claims.md"
    doc.write_text("# Claims\n\nprose before\n")
    for _ in range(2):  # idempotent
        res = CliRunner().invoke(cli, ["claims", str(path), "--docs", str(docs), "--out", str(doc)])
        assert res.exit_code == 0, res.output
    text = doc.read_text()
    assert text.startswith("# Claims\n\nprose before\n") and text.count(vd.BEGIN) == 1
    assert "| good | DT" not in text and "**does not hold**" in text and "**undecided at 3 seeds**" in text
    saved = json.loads((tmp_path / "claims-verdict.json").read_text())
    assert saved["baseline"] == "dt" and len(saved["models"]) == 3


def test_a_sweep_without_the_baseline_is_one_line(tmp_path):
    p = tmp_path / "s.json"
    p.write_text(json.dumps({"rows": [row("dema", "a", [1.0, 2.0])]}))
    res = CliRunner().invoke(cli, ["claims", str(p)])
    assert res.exit_code == 2 and res.output.startswith("error: ") and "baseline" in res.output


def test_dmh_long_context_claim_is_judged_per_transformer_from_the_docs_json(sweep_file):
    """DM-H's 28x comes from docs/long-context.json (tools/bench/long_context.py): holds against the baseline
    whose run takes >= 28x DM-H's, not against the one that takes 1.9x; absent file, no row is made up."""
    path, docs = sweep_file
    assert vd.verdict(path, docs_dir=docs)["long_context"] == []
    rows = {"dmh": {"total_s": 10.0, "per_episode_s": [5.0, 5.0], "ratio_vs_dmh": 1.0, "last_episode_ratio_vs_dmh": 1.0},
            "ad-cached": {"total_s": 19.0, "per_episode_s": [7.0, 12.0], "ratio_vs_dmh": 1.9,
                          "last_episode_ratio_vs_dmh": 2.4},
            "ad-reencode": {"total_s": 6000.0, "per_episode_s": [1000.0, 5000.0], "ratio_vs_dmh": 600.0,
                            "last_episode_ratio_vs_dmh": 1000.0, "estimated": True}}
    (docs / "long-context.json").write_text(json.dumps({"args": {"steps": 4000}, "rows": rows}))
    v = vd.verdict(path, docs_dir=docs)
    verdicts = {c["source"].split("'")[1]: c["verdict"] for c in v["long_context"]}
    assert verdicts == {"ad-cached": "does not hold", "ad-reencode": "holds"}
    text = vd.render(v)
    assert "| dmh | DM-H's online testing over a 4,000-step context" in text and "estimated" in text
    (docs / "long-context.json").write_text("{not json")
    assert vd.verdict(path, docs_dir=docs)["long_context"] == []
