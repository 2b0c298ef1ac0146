"""The C runtime (runtime/c/) and its Python binding: the C API steps an artifact exactly like the PyTorch
step, refuses tampered artifacts with the same verdicts as ssmc.artifact, rejects bad input without touching
its state, runs from a C program with no Python, and ``ssmc run`` never imports torch or the model code.
The guarantees hold for both executors: ``static`` artifacts (libssmc.so alone, no TVM, no allocation per
step) and ``vm`` artifacts (through the plugin libssmc_vm.so and TVM's runtime).

Artifacts are compiled from small freshly initialised checkpoints (tests/test_compile.py's sizes), with the
Pendulum-v1 dimensions so they also roll out in a real environment.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require_tools
from test_compile import BOUNDS, SMALL

from ssmc.artifact import load_manifest, read_reference
from ssmc.compile import compile_checkpoint
from ssmc.errors import ArtifactError
from ssmc.numerics import max_rel_error
from ssmc.runtime import Policy, PolicyError, runtime_bundle
from ssmc.train.models import build_model, load_checkpoint, save_checkpoint
from ssmc.train.rollout import TorchPolicy

OBS, ACT = 3, 1  # Pendulum-v1
EXTRA = {
    "obs_mean": [0.2, -0.1, 0.5],
    "obs_std": [0.7, 0.6, 2.0],
    "rtg_scale": 1e-2,
    "target_return": -150.0,
    "env_id": "Pendulum-v1",
}
KINDS = ("dmm", "dema-rnn")  # one window model, one recurrent model
EXECUTORS = ("static", "vm")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rt-ws")
    out = {}
    for i, kind in enumerate(KINDS):
        torch.manual_seed(10 + i)
        out[kind] = save_checkpoint(build_model(kind, OBS, ACT, **SMALL[kind]), root / kind, EXTRA)
    return out


@pytest.fixture(scope="module")
def artifacts(checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("rt-artifacts")
    cache: dict[tuple[str, str], Path] = {}

    def get(kind: str, precision: str = "fp32", executor: str = "static") -> Path:
        key = (kind, precision, executor)
        if key not in cache:
            cache[key] = compile_checkpoint(checkpoints[kind], "host", precision, executor=executor,
                                            out=root / f"{kind}-{precision}-{executor}.ssmc")
        return cache[key]

    return get


def _copy(artifact: Path, tmp_path: Path) -> Path:
    dst = tmp_path / artifact.name
    shutil.copytree(artifact, dst)
    return dst


def _inputs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    obs = (np.asarray(EXTRA["obs_mean"]) + np.asarray(EXTRA["obs_std"]) * rng.standard_normal((n, OBS)))
    return obs.astype(np.float32), rng.uniform(-2.0, 0.0, n)


# -- the C runtime steps like PyTorch -------------------------------------------------------------------

@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("kind", KINDS)
def test_c_runtime_matches_pytorch_over_200_steps(kind, executor, checkpoints, artifacts) -> None:
    model, extra = load_checkpoint(checkpoints[kind])
    reference = TorchPolicy(model, extra)
    obs, rewards = _inputs(200, seed=1)
    with Policy(artifacts(kind, executor=executor)) as policy:
        assert policy.info["executor"] == executor
        for target in (-150.0, -600.0):  # and again after a reset, from another return
            policy.reset(target)
            reference.reset(target)
            got = [policy.act(o, r) for o, r in zip(obs, rewards, strict=True)]
            want = [reference.act(o, r).astype(np.float32) for o, r in zip(obs, rewards, strict=True)]
            assert max_rel_error([np.stack(got)], [np.stack(want)]) < BOUNDS["fp32"]
            assert policy.steps == 200


@pytest.mark.parametrize("executor", EXECUTORS)
def test_int8_artifact_error_is_bounded(executor, checkpoints, artifacts) -> None:
    model, extra = load_checkpoint(checkpoints["dmm"])
    reference = TorchPolicy(model, extra)
    obs, rewards = _inputs(200, seed=2)
    with Policy(artifacts("dmm", "int8", executor)) as policy:
        assert policy.info["precision"] == "int8"
        reference.reset()
        policy.reset()
        got = [policy.act(o, r) for o, r in zip(obs, rewards, strict=True)]
        want = [reference.act(o, r).astype(np.float32) for o, r in zip(obs, rewards, strict=True)]
    err = max_rel_error([np.stack(got)], [np.stack(want)])
    assert 0.0 < err < BOUNDS["int8"]  # not zero: the weights really are int8


@pytest.mark.parametrize("executor", EXECUTORS)
def test_reference_pairs_are_reproduced_through_the_c_api(executor, artifacts) -> None:
    """The recorded PyTorch steps, fed as (observation, reward) with the reward that moves the C runtime's
    return-to-go from one recorded value to the next."""
    path = artifacts("dmm", executor=executor)
    steps = read_reference(path / "reference.safetensors", load_manifest(path))
    rtg = [float(s.inputs["rtg_raw"][0, 0]) for s in steps]
    with Policy(path) as policy:
        policy.reset(rtg[0])
        got = [policy.act(s.inputs["obs_raw"][0], rtg[i - 1] - rtg[i] if i else 0.0) for i, s in enumerate(steps)]
    assert max_rel_error([np.stack(got)], [np.stack([s.outputs["action"][0] for s in steps])]) < BOUNDS["fp32"]


@pytest.mark.parametrize("executor", EXECUTORS)
def test_policy_reports_the_manifest(executor, artifacts) -> None:
    path = artifacts("dema-rnn", executor=executor)
    m = load_manifest(path)
    with Policy(path) as policy:
        assert (policy.obs_dim, policy.act_dim) == (OBS, ACT)
        assert policy.default_target_return == m.target_return
        assert policy.state_bytes == m.state_bytes > 0
        assert policy.info == {"model_kind": "dema-rnn", "semantics": "recurrent", "precision": "fp32",
                               "target": "host", "library": m.library, "executor": executor}
    with pytest.raises(PolicyError, match="closed"):
        policy.act(np.zeros(OBS))


# -- bad input changes nothing -------------------------------------------------------------------------

@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("bad", ["nan_obs", "inf_obs", "short_obs", "long_obs", "nan_reward", "inf_reward",
                                 "huge_obs"])
def test_a_rejected_call_changes_nothing(bad, executor, artifacts) -> None:
    """Bad arguments are refused before the step runs; a step whose result is not finite (a finite but huge
    observation overflows the normalisation: the step itself ran) is refused before anything is committed."""
    obs, rewards = _inputs(6, seed=3)
    bad_args = {
        "nan_obs": (np.array([0.1, np.nan, 0.2]), 0.5, "input", "observation\\[1\\] is NaN"),
        "inf_obs": (np.array([np.inf, 0.0, 0.2]), 0.5, "input", "observation\\[0\\] is inf"),
        "short_obs": (np.zeros(OBS - 1), 0.5, "argument", "has 2 values, the policy takes 3"),
        "long_obs": (np.zeros(OBS + 4), 0.5, "argument", "has 7 values, the policy takes 3"),
        "nan_reward": (obs[0], float("nan"), "input", "reward is not finite"),
        "inf_reward": (obs[0], float("inf"), "input", "reward is not finite"),
        "huge_obs": (np.array([3e38, 0.0, 0.0]), 0.5, "runtime", "non-finite action \\(state left unchanged\\)"),
    }[bad]
    path = artifacts("dema-rnn", executor=executor)
    with Policy(path) as clean, Policy(path) as faulty:
        want = [clean.act(o, r) for o, r in zip(obs, rewards, strict=True)]
        got = []
        for i, (o, r) in enumerate(zip(obs, rewards, strict=True)):
            if i in (0, 3):  # bad calls before the first step and mid-episode
                with pytest.raises(PolicyError, match=bad_args[3]) as e:
                    faulty.act(bad_args[0], bad_args[1])
                assert e.value.status == bad_args[2]
            got.append(faulty.act(o, r))
        assert faulty.steps == clean.steps == len(obs)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_reset_rejects_a_non_finite_target_return(artifacts) -> None:
    with Policy(artifacts("dmm")) as policy:
        with pytest.raises(PolicyError, match="target return is not finite"):
            policy.reset(float("nan"))


# -- tampered artifacts are refused, with the same verdict as ssmc.artifact -----------------------------

def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


TAMPER = {
    "flipped byte": (lambda d: _flip_byte(d / "lib.so"), "lib.so: sha256 mismatch"),
    "truncated": (lambda d: (d / "lib.so").write_bytes((d / "lib.so").read_bytes()[:-100]), "truncated"),
    "extra file": (lambda d: (d / "notes.txt").write_text("hi"), "notes.txt: unexpected file"),
    "missing file": (lambda d: (d / "reference.safetensors").unlink(), "reference.safetensors: missing"),
    "newer format": (lambda d: _edit_manifest(d, format_version=3), "format version 3 is newer"),
    "older format": (lambda d: _edit_manifest(d, format_version=1), "format version 1 is older"),
    "unknown executor": (lambda d: _edit_manifest(d, executor="aot"), "executor"),
    "not utf-8": (lambda d: _replace_in_manifest(d, b'"dmm"', b'"dm\xc3"'), "not UTF-8 text"),
    "no manifest": (lambda d: (d / "manifest.json").unlink(), "manifest.json"),
    "bad json": (lambda d: (d / "manifest.json").write_text("{not json"), "manifest.json"),
}


def _edit_manifest(d: Path, **fields) -> None:
    m = json.loads((d / "manifest.json").read_text())
    m.update(fields)
    (d / "manifest.json").write_text(json.dumps(m))


def _replace_in_manifest(d: Path, old: bytes, new: bytes) -> None:
    raw = (d / "manifest.json").read_bytes()
    assert old in raw
    (d / "manifest.json").write_bytes(raw.replace(old, new, 1))


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("case", list(TAMPER))
def test_tampered_artifacts_are_refused(case, executor, artifacts, tmp_path) -> None:
    path = _copy(artifacts("dmm", executor=executor), tmp_path)
    tamper, message = TAMPER[case]
    tamper(path)
    with pytest.raises(PolicyError, match=message) as e:
        Policy(path)
    assert e.value.status == "artifact"
    assert "\n" not in str(e.value)
    with pytest.raises(ArtifactError):  # the Python loader agrees
        load_manifest(path)


@pytest.mark.parametrize("executor", EXECUTORS)
def test_artifacts_for_another_architecture_or_device_are_refused(executor, artifacts, tmp_path) -> None:
    from ssmc.targets import load_target

    path = _copy(artifacts("dmm", executor=executor), tmp_path)
    _edit_manifest(path, target=load_target("rpi5").to_dict())
    with pytest.raises(PolicyError, match="built for aarch64 \\(target rpi5\\), this runtime is x86_64"):
        Policy(path)
    _edit_manifest(path, target=load_target("jetson-orin").to_dict())
    # a static step for a cuda target is not even a valid manifest (the schema's rules); a vm one is valid,
    # and refused as one this runtime cannot run
    with pytest.raises(PolicyError, match="runs on cuda: this runtime runs CPU artifacts only" if executor == "vm"
                       else "field executor: static steps run on CPUs only, target 'jetson-orin' is cuda"):
        Policy(path)


def test_sha256_agrees_with_hashlib_at_block_boundaries(artifacts, tmp_path) -> None:
    """Files of lengths around SHA-256's 64-byte blocks and 56-byte padding limit, and around 64 KiB
    (the runtime's read chunk: exactly one, one and a byte, several and a remainder), listed with hashlib's
    digests: the C runtime accepts all of them."""
    path = _copy(artifacts("dmm"), tmp_path)
    m = json.loads((path / "manifest.json").read_text())
    rng = np.random.default_rng(0)
    for n in (0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 1 << 16, (1 << 16) + 1, (1 << 20) + 3):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        (path / f"blob{n}.bin").write_bytes(data)
        m["files"][f"blob{n}.bin"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": n}
    (path / "manifest.json").write_text(json.dumps(m))
    Policy(path).close()
    _flip_byte(path / "blob120.bin")
    with pytest.raises(PolicyError, match="blob120.bin: sha256 mismatch"):
        Policy(path)


@pytest.mark.parametrize("executor", EXECUTORS)
def test_tar_artifacts_open_through_the_binding(executor, artifacts, tmp_path) -> None:
    from ssmc.artifact import pack_tar

    tar = pack_tar(_copy(artifacts("dmm", executor=executor), tmp_path))
    obs, rewards = _inputs(5, seed=4)
    with Policy(tar) as a, Policy(artifacts("dmm", executor=executor)) as b:
        np.testing.assert_array_equal([a.act(o, r) for o, r in zip(obs, rewards, strict=True)],
                                      [b.act(o, r) for o, r in zip(obs, rewards, strict=True)])


# -- a C program, no Python ----------------------------------------------------------------------------

def _synthetic(steps: int) -> np.ndarray:
    """control_loop.c's standalone observation signal: obs[i] = sin(0.01 t (i + 1) + i)."""
    t, i = np.arange(steps)[:, None], np.arange(OBS)[None, :]
    return np.sin(0.01 * t * (i + 1) + i).astype(np.float32)


def _c_actions(out: str) -> tuple[np.ndarray, dict]:
    lines = out.strip().splitlines()
    return np.array([[float(x) for x in line.split()] for line in lines[:-1]], np.float32), json.loads(lines[-1])


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("kind", KINDS)
def test_c_control_loop_runs_an_artifact_end_to_end(kind, executor, checkpoints, artifacts) -> None:
    bundle = runtime_bundle()
    steps = 40
    proc = subprocess.run(bundle.command(str(artifacts(kind, executor=executor)), "--steps", str(steps), "--rate",
                                         "2000", "--print-actions"), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    actions, summary = _c_actions(proc.stdout)
    model, extra = load_checkpoint(checkpoints[kind])
    reference = TorchPolicy(model, extra)
    reference.reset()
    want = np.array([reference.act(o, 1.0) for o in _synthetic(steps)], np.float32)
    assert actions.shape == (steps, ACT)
    assert max_rel_error([actions], [want]) < 1e-5
    assert summary["steps"] == steps and summary["errors"] == 0 and summary["model_kind"] == kind
    assert summary["executor"] == executor
    assert summary["latency_us"]["p50"] > 0 and summary["peak_rss_kb"] > 0
    # the resident memory at the end, split: this process's own pages and the mapped files (libraries)
    assert summary["rss_anon_kb"] > 0 and summary["rss_file_kb"] > 0
    assert summary["rss_anon_kb"] + summary["rss_file_kb"] <= summary["peak_rss_kb"]


def test_c_control_loop_reports_a_bad_artifact_in_one_line(artifacts, tmp_path) -> None:
    path = _copy(artifacts("dmm"), tmp_path)
    _flip_byte(path / "lib.so")
    proc = subprocess.run(runtime_bundle().command(str(path)), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "sha256 mismatch" in proc.stderr


def test_bundle_is_self_contained(tmp_path) -> None:
    """Copied elsewhere, the bundle's example still finds libssmc and TVM's runtime through $ORIGIN."""
    bundle = runtime_bundle()
    assert {p.name for p in bundle.dir.iterdir()} >= {"libssmc.so", "libssmc_vm.so", "libtvm_runtime.so",
                                                       "libtvm_ffi.so", "ssmc_control", "ssmc.h"}
    moved = shutil.copytree(bundle.dir, tmp_path / "bundle")
    proc = subprocess.run([str(moved / "ssmc_control"), "/nonexistent.ssmc"], capture_output=True, text=True,
                          env=_clean_env(), timeout=60)
    assert proc.returncode == 2 and "no such artifact" in proc.stderr


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}


# -- static artifacts need libssmc.so alone; VM artifacts need its plugin ------------------------------------

def test_libssmc_links_no_tvm() -> None:
    """libssmc.so needs libc alone (its C++ library is linked in); only the VM plugin links TVM's runtime."""
    require_tools("ldd")
    bundle = runtime_bundle()
    core = subprocess.run(["ldd", str(bundle.library)], capture_output=True, text=True, check=True).stdout
    assert "tvm" not in core and "libstdc++" not in core, core
    plugin = subprocess.run(["ldd", str(bundle.vm_plugin)], capture_output=True, text=True, check=True).stdout
    assert "libtvm_runtime.so" in plugin and "libtvm_ffi.so" in plugin and "not found" not in plugin, plugin


@pytest.fixture
def bare_runtime(tmp_path: Path) -> Path:
    """libssmc.so and ssmc_control copied into an empty folder: no plugin, no TVM library."""
    bare = tmp_path / "bare"
    bare.mkdir()
    bundle = runtime_bundle()
    for f in (bundle.library, bundle.control):
        shutil.copy2(f, bare / f.name)
    return bare


def test_a_static_artifact_runs_with_libssmc_alone(bare_runtime, checkpoints, artifacts) -> None:
    steps = 30
    artifact = artifacts("dema-rnn")
    proc = subprocess.run([str(bare_runtime / "ssmc_control"), str(artifact), "--steps", str(steps), "--rate", "2000",
                           "--print-actions"], capture_output=True, text=True, env=_clean_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    actions, summary = _c_actions(proc.stdout)
    assert summary["executor"] == "static" and summary["errors"] == 0
    model, extra = load_checkpoint(checkpoints["dema-rnn"])
    reference = TorchPolicy(model, extra)
    reference.reset()
    want = np.array([reference.act(o, 1.0) for o in _synthetic(steps)], np.float32)
    assert max_rel_error([actions], [want]) < 1e-5
    with Policy(artifact, library=bare_runtime / "libssmc.so") as policy:  # the binding on the lone library too
        np.testing.assert_array_equal([policy.act(o, 1.0) for o in _synthetic(steps)], actions)


def test_a_vm_artifact_without_the_plugin_is_refused_in_one_line(bare_runtime, artifacts) -> None:
    artifact = artifacts("dmm", executor="vm")
    proc = subprocess.run([str(bare_runtime / "ssmc_control"), str(artifact)], capture_output=True, text=True,
                          env=_clean_env(), timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert ("this artifact uses the VM executor, which needs libssmc_vm.so and TVM's runtime libraries next to "
            "libssmc.so") in proc.stderr
    with pytest.raises(PolicyError, match="needs libssmc_vm.so") as e:
        Policy(artifact, library=bare_runtime / "libssmc.so")
    assert e.value.status == "artifact" and "\n" not in str(e.value)


@pytest.mark.parametrize("field", ["arena_bytes", "entry"])
def test_a_static_manifest_that_disagrees_with_its_library_is_refused(field, artifacts, tmp_path) -> None:
    path = _copy(artifacts("dmm"), tmp_path)
    m = load_manifest(path)
    assert m.executor == "static" and m.arena_bytes > 0 and m.entry == "ssmc_static_step"
    if field == "arena_bytes":
        _edit_manifest(path, arena_bytes=m.arena_bytes + 64)
        message = f"manifest.json: arena_bytes is {m.arena_bytes + 64} but lib.so needs {m.arena_bytes}$"
    else:
        _edit_manifest(path, entry="main")
        message = "a static artifact's entry is ssmc_static_step, not main$"
    with pytest.raises(PolicyError, match=message) as e:
        Policy(path)
    assert e.value.status == "artifact"


def test_a_deeply_nested_manifest_is_refused_in_one_line(artifacts, tmp_path) -> None:
    """20,000 nested lists inside the manifest: the runtime's JSON parser stops at 64 levels rather than
    recursing off the stack (run in a C process first: a crash there is a signal, not a lost test run)."""
    path = _copy(artifacts("dmm"), tmp_path)
    _replace_in_manifest(path, b'"extra": {', b'"extra": {"deep": ' + b"[" * 20000 + b"]" * 20000 + b", ")
    proc = subprocess.run(runtime_bundle().command(str(path)), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr[-300:]
    assert "manifest.json: not valid JSON (nested deeper than 64 levels at line" in proc.stderr
    with pytest.raises(PolicyError, match="nested deeper than 64 levels") as e:
        Policy(path)
    assert e.value.status == "artifact"


@pytest.mark.parametrize("executor", EXECUTORS)
def test_static_steps_allocate_nothing(executor, artifacts, tmp_path) -> None:
    """Under an LD_PRELOAD counter of malloc/calloc/realloc/aligned allocations (tools/bench/count_allocs.c),
    the C loop's total for 2200 steps equals the total for 200 with a static artifact: no allocation per step
    (both runs sort over 128 latencies at the end, so glibc's qsort mallocs in both). The VM allocates per
    step, which shows the counter counts."""
    require_tools("gcc")
    shim = tmp_path / "libcount.so"
    source = Path(__file__).resolve().parents[1] / "tools" / "bench" / "count_allocs.c"
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(shim), str(source), "-ldl"], check=True)
    counts = []
    for steps in (200, 2200):
        proc = subprocess.run(runtime_bundle().command(str(artifacts("dema-rnn", executor=executor)), "--steps",
                                                       str(steps), "--rate", "1e9"),
                              capture_output=True, text=True, env={**os.environ, "LD_PRELOAD": str(shim)}, timeout=120)
        assert proc.returncode == 0, proc.stderr
        counts.append(int(next(line.split()[1] for line in proc.stderr.splitlines() if line.startswith("allocations "))))
    if executor == "static":
        assert counts[1] == counts[0] > 0
    else:
        assert counts[1] - counts[0] >= 2000


# -- ssmc run: the runtime alone ------------------------------------------------------------------------

@pytest.mark.parametrize("executor", EXECUTORS)
def test_ssmc_run_rolls_out_without_importing_torch(executor, artifacts) -> None:
    code = (
        "import json, sys\n"
        "from ssmc.cli import cli\n"
        f"cli(['run', {str(artifacts('dmm', executor=executor))!r}, '--episodes', '1', '--json'], standalone_mode=False)\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'ssmc.train.models', "
        "'ssmc.compile', 'tvm')))\n"
        "print(json.dumps({'imported': bad}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    run, imported = (json.loads(line) for line in proc.stdout.strip().splitlines())
    assert imported == {"imported": []}
    assert run["env_id"] == "Pendulum-v1" and run["episodes"] == 1 and run["length_mean"] == 200
    assert np.isfinite(run["return_mean"]) and run["step_latency_us"]["n"] == 200


def test_ssmc_run_scores_like_pytorch_on_the_same_seeds(checkpoints, artifacts) -> None:
    from ssmc.runtime.run import run_artifact
    from ssmc.train.rollout import evaluate_checkpoint

    got = run_artifact(artifacts("dema-rnn"), episodes=2, seed=5, progress=False)
    want = evaluate_checkpoint(str(checkpoints["dema-rnn"]), None, episodes=2, seed=5, progress=False)
    np.testing.assert_allclose(got["returns"], want["returns"], rtol=1e-4)


# -- aarch64 under qemu ---------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("executor", EXECUTORS)
def test_aarch64_artifact_runs_under_qemu_and_matches_the_host(executor, checkpoints, tmp_path) -> None:
    """The aarch64 build of the runtime (TVM's aarch64 wheels for the VM plugin) runs the aarch64 artifact under
    qemu-user and reproduces the PyTorch step, as the host artifact does."""
    require_tools("aarch64-linux-gnu-gcc", "aarch64-linux-gnu-g++", "qemu-aarch64-static")
    bundle = runtime_bundle("aarch64")
    artifact = compile_checkpoint(checkpoints["dmm"], "aarch64", "fp32", executor=executor,
                                  out=tmp_path / f"dmm-aarch64-{executor}.ssmc")
    steps = 20
    proc = subprocess.run(bundle.command(str(artifact), "--steps", str(steps), "--rate", "20", "--print-actions"),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    actions, summary = _c_actions(proc.stdout)
    assert summary["target"] == "aarch64" and summary["errors"] == 0 and summary["executor"] == executor
    model, extra = load_checkpoint(checkpoints["dmm"])
    reference = TorchPolicy(model, extra)
    reference.reset()
    want = np.array([reference.act(o, 1.0) for o in _synthetic(steps)], np.float32)
    assert max_rel_error([actions], [want]) < 1e-5


# -- ssmc verify ----------------------------------------------------------------------------------------

def test_verify_passes_the_agreement_checks_and_writes_a_report(checkpoints, artifacts, tmp_path) -> None:
    """The verdict's numbers are what independent measurements give: the scores are those of ``ssmc run`` and
    ``ssmc eval`` on the same seeds, the sizes those on disk and of the model, and the report carries them."""
    from ssmc.runtime.run import run_artifact
    from ssmc.runtime.verify import verify_artifact, write_report
    from ssmc.train.rollout import evaluate_checkpoint

    path, ckpt = artifacts("dema-rnn"), checkpoints["dema-rnn"]
    v = verify_artifact(path, ckpt, episodes=2, seed=7, progress=False)
    checks = {c.name: c for c in v.checks}
    assert [c.name for c in v.checks] == ["integrity", "recorded", "fresh", "score", "latency", "memory"]
    for name in ("integrity", "recorded", "fresh", "score"):
        assert checks[name].passed, checks[name]
    assert checks["fresh"].value < 1e-5

    runtime = run_artifact(path, episodes=2, seed=7, progress=False)
    torch_side = evaluate_checkpoint(str(ckpt), None, episodes=2, seed=7, progress=False)
    assert v.facts["runtime_rollout"]["returns"] == runtime["returns"]
    np.testing.assert_allclose(v.facts["pytorch_rollout"]["returns"], torch_side["returns"], rtol=1e-6)
    assert checks["score"].value == pytest.approx(abs(runtime["normalized_mean"] - torch_side["normalized_mean"]),
                                                  abs=1e-9)

    model, _ = load_checkpoint(ckpt)
    state = model.init_state(1)
    assert v.facts["param_count"] == model.num_params()
    assert v.facts["state_bytes"] == sum(t.numel() * t.element_size() for t in state.values())
    assert v.facts["artifact_bytes"] == sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    assert checks["latency"].value > 0 and checks["latency"].limit == 1000  # the host budget, p99 µs
    assert 1e6 < checks["memory"].value < 256 << 20  # the C process alone, not the Python parent

    paths = write_report(v, tmp_path / "report")
    assert [p.name for p in paths] == ["verify.json", "verify.md", "verify.png"]
    written = json.loads(paths[0].read_text())
    assert written["runtime_rollout"]["returns"] == runtime["returns"] and written["passed"] is v.passed
    md = paths[1].read_text()
    for c in v.checks:
        assert f"| {c.name} | " in md
    assert f"| parameters | {model.num_params():,} " in md
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[2].stat().st_size > 10_000


def test_verify_fails_an_artifact_that_disagrees_with_the_checkpoint(checkpoints, artifacts, tmp_path) -> None:
    """Another checkpoint's weights (same kind and sizes): every agreement check must catch it."""
    from ssmc.runtime.verify import verify_artifact

    torch.manual_seed(99)
    other = save_checkpoint(build_model("dema-rnn", OBS, ACT, **SMALL["dema-rnn"]), tmp_path / "other", EXTRA)
    v = verify_artifact(artifacts("dema-rnn"), other, episodes=0, progress=False)
    checks = {c.name: c for c in v.checks}
    assert checks["fresh"].passed is False and not v.passed
    assert checks["score"].passed is None  # --episodes 0: not run, and said so


def test_verify_cli_reports_a_tampered_artifact_and_exits_1(artifacts, tmp_path) -> None:
    from click.testing import CliRunner

    from ssmc.cli import cli

    path = _copy(artifacts("dmm"), tmp_path)
    _flip_byte(path / "lib.so")
    res = CliRunner().invoke(cli, ["verify", str(path), "--json"])
    assert res.exit_code == 1
    out = json.loads(res.stdout)
    assert out["passed"] is False and out["checks"][0]["name"] == "integrity"
    assert "sha256 mismatch" in out["checks"][0]["detail"]


# -- ssmc hil -------------------------------------------------------------------------------------------

def _torch_return(checkpoint: Path, seed: int, steps: int, missed: list[int] = ()) -> float:
    """The episode the HIL plant ran, replayed with PyTorch as the controller. At a missed step the plant
    held the previous action (zeros at the start) while the controller still stepped on the late
    observation, so the replay computes every action and applies the held one there."""
    from ssmc.envs import make_env, resolve_env

    model, extra = load_checkpoint(checkpoint)
    policy = TorchPolicy(model, extra)
    env = make_env(resolve_env("Pendulum-v1"))
    obs, _ = env.reset(seed=seed)
    policy.reset()
    total, reward, held = 0.0, 0.0, np.zeros(ACT, np.float32)
    for step in range(steps):
        action = policy.act(obs, reward).astype(np.float32)
        if step not in missed:
            held = action
        obs, reward, *_ = env.step(np.clip(held, -2.0, 2.0))
        total += float(reward)
    env.close()
    return total


def _check_hil_returns(res: dict, checkpoint: Path, seeds: list[int], steps: int) -> None:
    """HIL returns equal PyTorch's on the same episodes, whatever deadlines were missed (held apart)."""
    assert len(res["missed_steps"]) == len(seeds)
    assert sum(len(m) for m in res["missed_steps"]) == res["deadline_misses"]
    want = [_torch_return(checkpoint, seed, steps, missed) for seed, missed in zip(seeds, res["missed_steps"],
                                                                                   strict=True)]
    np.testing.assert_allclose(res["returns"], want, rtol=1e-4)


def test_hil_plant_and_c_controller_on_loopback(checkpoints, artifacts) -> None:
    from ssmc.runtime.hil import run_hil

    res = run_hil(artifacts("dema-rnn"), rate_hz=100, episodes=2, seed=3, max_steps=40, progress=False)
    assert res["steps"] == 80 and res["lengths"] == [40, 40] and res["controller_errors"] == 0
    assert res["round_trip_us"]["n"] == res["steps"] - res["deadline_misses"]
    assert res["controller_step_us"]["p50"] > 0 and res["controller"].startswith("x86_64")
    _check_hil_returns(res, checkpoints["dema-rnn"], [3, 4], 40)


def test_hil_replay_tells_a_held_action_from_an_applied_one(checkpoints) -> None:
    """The check above can fail: holding the action at steps 5-9 gives another return than applying it."""
    on_time = _torch_return(checkpoints["dema-rnn"], 3, 40)
    held = _torch_return(checkpoints["dema-rnn"], 3, 40, list(range(5, 10)))
    assert abs(held - on_time) > 1e-3 * abs(on_time)


def test_hil_refuses_an_artifact_the_controller_cannot_run(artifacts) -> None:
    from ssmc.errors import ConfigError
    from ssmc.runtime.hil import run_hil

    with pytest.raises(ConfigError, match="the controller here runs aarch64 CPU artifacts"):
        run_hil(artifacts("dmm"), emulate="aarch64", progress=False)
    with pytest.raises(ConfigError, match="--rate must be positive"):
        run_hil(artifacts("dmm"), rate_hz=0, progress=False)


def test_hil_reports_a_controller_that_exits_before_connecting() -> None:
    """A controller that exits before connecting (it refused the artifact, say) is reported with its own last
    stderr line and exit code, instead of hil waiting out its 120 s connection timeout."""
    import socket

    from ssmc.errors import ConfigError
    from ssmc.runtime.hil import _accept_controller

    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    code = "import sys; sys.stderr.write('starting\\nssmc_open: refused: not signed\\n'); sys.exit(3)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with pytest.raises(ConfigError, match=r"controller exited \(3\) before connecting: ssmc_open: refused"):
            _accept_controller(server, proc)
    finally:
        server.close()
        proc.wait()


@pytest.mark.slow
def test_hil_with_the_aarch64_controller_under_qemu(checkpoints, tmp_path) -> None:
    from ssmc.runtime.hil import run_hil

    require_tools("aarch64-linux-gnu-gcc", "aarch64-linux-gnu-g++", "qemu-aarch64-static")
    artifact = compile_checkpoint(checkpoints["dema-rnn"], "aarch64", "fp32", out=tmp_path / "a64.ssmc")
    res = run_hil(artifact, rate_hz=20, episodes=1, seed=3, max_steps=30, emulate="aarch64", progress=False)
    assert res["controller"].startswith("aarch64") and res["controller_errors"] == 0 and res["steps"] == 30
    _check_hil_returns(res, checkpoints["dema-rnn"], [3], 30)
