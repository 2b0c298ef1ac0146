"""`ssmc quickstart`: the README's first command, end to end on a small budget.

Every stage leaves its file behind (dataset, checkpoint, host artifacts, cross artifacts, the report), every
check of the verdict passes, and the output ends on the verdict table and where the report is.

One check is a timing: "latency" compares the p99 of the C control loop with the target's budget. Tests do
not assert timings (a shared 2-core CI machine can miss 1 ms at p99 while the step's p50 is ~0.4 ms), so
these tests require that check to have *measured* a latency, and accept a FAIL verdict, with exit status 1,
only when latency is the one check that failed.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from ssmc.artifact import load_manifest
from ssmc.cli import cli

EM_AARCH64 = 183


def _quickstart(tmp_path: Path, *args: str):
    r = CliRunner().invoke(cli, ["quickstart", "--workdir", str(tmp_path), *args], catch_exceptions=False)
    assert r.exit_code in (0, 1), r.output
    return r


def _elf_machine(path: Path) -> int:
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF"
    return int.from_bytes(head[18:20], "little")


def _check_stages(tmp_path: Path, stdout: str, exit_code: int) -> dict:
    data = tmp_path / "data" / "pendulum-v1-medium.hdf5"
    ck = tmp_path / "runs" / "quickstart-dmm"
    assert data.is_file()
    assert (ck / "model.safetensors").is_file() and (ck / "train_log.csv").is_file()
    config = json.loads((ck / "config.json").read_text())
    assert config["model"] == "dmm" and config["extra"]["env_id"] == "Pendulum-v1"
    arts = tmp_path / "artifacts" / "quickstart"
    for precision in ("fp32", "int8"):
        m = load_manifest(arts / f"dmm-host-{precision}.ssmc")  # verifies every hash
        assert m.precision == precision and m.target["name"] == "host" and m.env_id == "Pendulum-v1"
    aarch64 = arts / "dmm-aarch64-int8.ssmc"
    assert load_manifest(aarch64).target["name"] == "aarch64"
    assert _elf_machine(aarch64 / "lib.so") == EM_AARCH64
    orin = arts / "dmm-jetson-orin-fp32.ssmc"
    if shutil.which("nvcc"):
        assert load_manifest(orin).extra["cuda_device_code"] == ["sm_87"]
    else:
        assert not orin.exists() and "missing     jetson-orin needs nvcc" in stdout
    report = tmp_path / "reports" / "quickstart-dmm-host-fp32"
    for name in ("verify.json", "verify.md", "verify.png"):
        assert (report / name).is_file() and (report / name).stat().st_size > 0
    verdict = json.loads((report / "verify.json").read_text())
    checks = {c["name"]: c for c in verdict["checks"]}
    assert set(checks) == {"integrity", "recorded", "fresh", "score", "latency", "memory"}, checks
    latency = checks["latency"]
    assert latency["passed"] is not None and math.isfinite(latency["value"]) and latency["value"] > 0, latency
    failed = {name for name, c in checks.items() if c["passed"] is not True}
    assert failed <= {"latency"}, checks
    assert verdict["passed"] is (not failed)
    assert exit_code == (1 if failed else 0)
    lines = stdout.rstrip().splitlines()
    assert lines[-1].startswith(f"verdict     {'FAIL' if failed else 'PASS'}") and str(report / "verify.md") in lines[-2]
    assert "| check | result | value | limit | how |" in stdout
    for p in ("fp32", "int8"):
        assert f"C runtime   {p}: normalised" in stdout
    return verdict


def test_quickstart_runs_every_stage_to_a_pass_verdict(tmp_path):
    r = _quickstart(tmp_path, "--size", "2000", "--steps", "20", "--episodes", "1")
    _check_stages(tmp_path, r.stdout, r.exit_code)


@pytest.mark.slow
def test_quickstart_default_budget_learns_the_task(tmp_path):
    """With the default budget the DMM clearly beats a random policy (normalised 0), in PyTorch and in C."""
    r = _quickstart(tmp_path)
    verdict = _check_stages(tmp_path, r.stdout, r.exit_code)
    score = float(r.stdout.split("PyTorch     normalised ")[1].split()[0])
    assert score > 30, r.stdout
    assert verdict["runtime_rollout"]["normalized_mean"] > 30
