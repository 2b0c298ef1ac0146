"""Docs that state numbers the code computes must state the code's numbers.

docs/models.md's table and the counts its text derives with ``--set`` are checked against ``ssmc models
--json`` and the model objects, each to the precision the page prints (``38.2 M`` must be 38.15-38.25 M).
And no file in the repository points at notes that live outside it.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from ssmc.cli import cli
from ssmc.envs import HOPPER_DIMS
from ssmc.train.models import MODELS, build_model

ROOT = Path(__file__).resolve().parents[1]
MODELS_MD = (ROOT / "docs" / "models.md").read_text(encoding="utf-8")


def _within_printed_precision(text: str, value: float, unit: float) -> bool:
    """Whether ``text`` (e.g. "38.2" or "103") is ``value / unit`` rounded to the digits it shows."""
    decimals = len(text.split(".")[1]) if "." in text else 0
    return abs(float(text) - value / unit) <= 0.5 * 10 ** -decimals + 1e-12


@pytest.fixture(scope="module")
def zoo() -> dict[str, dict]:
    r = CliRunner().invoke(cli, ["models", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert (out["obs_dim"], out["act_dim"]) == HOPPER_DIMS
    return {m["model"]: m for m in out["models"]}


def _table_rows() -> dict[str, list[str]]:
    rows = {}
    for line in MODELS_MD.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] in MODELS:
            rows[cells[0]] = cells
    return rows


def test_the_table_lists_every_model(zoo) -> None:
    assert set(_table_rows()) == set(zoo) == set(MODELS)


@pytest.mark.parametrize("name", list(MODELS))
def test_models_md_row_equals_ssmc_models_json(name: str, zoo) -> None:
    row, want = _table_rows()[name], zoo[name]
    model, semantics, k, params, _claim, macs, state = row
    assert semantics == want["semantics"]
    assert int(re.match(r"\d+", k).group()) == want["K"]
    assert int(params.replace(",", "")) == want["params"]
    m = re.fullmatch(r"([\d.]+) M", macs)
    assert m and _within_printed_precision(m.group(1), want["macs_per_step"], 1e6), (macs, want["macs_per_step"])
    s = re.fullmatch(r"([\d.]+) KB", state)
    assert s and _within_printed_precision(s.group(1), want["state_bytes"], 1e3), (state, want["state_bytes"])


@pytest.mark.parametrize(("sentence", "name", "overrides"), [
    ("with\n  `--set embedding_dim=256` ssmc counts 174,723", "dema", {"embedding_dim": 256}),
    ("is 498,435 + 1,548", "dema", {"embedding_dim": 256, "d_model": 128}),
    ("adds a Linear(128 → 64) per layer: 224,323", "mambadm", {"fusion": "concat"}),
])
def test_models_md_counts_with_overrides(sentence: str, name: str, overrides: dict) -> None:
    assert sentence in MODELS_MD, "the sentence this test checks has changed: update the test with it"
    count = int(re.findall(r"\d{1,3}(?:,\d{3})+", sentence)[0].replace(",", ""))
    assert build_model(name, *HOPPER_DIMS, **overrides).num_params() == count


def test_models_md_dt_gap_to_the_paper(zoo) -> None:
    """The DT paragraph's arithmetic: the gap to 726.2K, and what the unused heads would add."""
    h, obs = build_model("dt", *HOPPER_DIMS).config.hidden, HOPPER_DIMS[0]
    heads = (h + 1) + (h * obs + obs)  # Linear(h -> 1) for the return, Linear(h -> obs) for the state
    params = zoo["dt"]["params"]
    assert f"{726_200 - params} parameters" in MODELS_MD
    assert f"{heads:,} parameters ({h + 1} + {h * obs + obs:,})" in MODELS_MD
    assert f"overshoots to {params + heads:,}" in MODELS_MD


def test_recurrent_variants_in_models_md() -> None:
    for name, text in (("dmm", "0.38 M"), ("mambadm", "0.63 M")):
        macs = build_model(name, *HOPPER_DIMS).with_semantics("recurrent").macs_per_step()
        assert f"costs {text}" in MODELS_MD or f"MambaDM {text}" in MODELS_MD
        assert _within_printed_precision(text.split()[0], macs, 1e6), (name, macs)


def test_no_reference_to_notes_outside_the_repository() -> None:
    proc = subprocess.run(["git", "grep", "-n", "-I", "-E", r"DESIGN\.md|MODELS\.md|FINDINGS\.md|\.\./shared|/work/shared",
                           "--", ".", ":!tests/test_docs.py"], cwd=ROOT, capture_output=True, text=True)
    hits = proc.stdout.splitlines()
    assert not hits, "references to files outside the repository:\n" + "\n".join(hits)
