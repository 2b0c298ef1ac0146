"""tools/bench/step_latency.py's and tools/bench/static_step.py's pieces on a tiny model: every peer (ONNX
Runtime, compiled TVM; for static_step the C loop on VM/static artifacts, IREE, ExecuTorch when their
packages are installed) agrees with PyTorch, interleaved timing fills every peer, the report renders. No
timing is asserted (speed is measured by the benchmarks themselves, docs/bench.md, docs/static-step.md)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ssmc.compile.export import export_step
from ssmc.numerics import max_rel_error
from ssmc.train.models import build_model

ROOT = Path(__file__).resolve().parents[1]
EXTRA = {"obs_mean": [0.5, -1.0, 2.0, 0.0, 3.0], "obs_std": [1.5, 0.5, 2.0, 1.0, 4.0], "rtg_scale": 1e-3,
         "target_return": 3000.0}


def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _load_tool("step_latency")


def test_peers_agree_with_pytorch_and_get_timed(bench, tmp_path) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model("dmm", 5, 2, K=4, hidden=16, n_layer=1, window=3, d_state=8, dropout=0.0).eval()
    deploy, window = bench.semantics_of(model)
    assert (deploy, window) == ("recurrent", "window")
    exported = export_step(model, EXTRA, deploy)
    inputs, state = bench._state_after(exported.reference, 3, np.random.default_rng(0))
    assert any(float(s.abs().max()) > 0 for s in state)  # a realistic, non-zero state
    args_t = [*inputs, *state]
    with torch.inference_mode():
        want = [o.numpy() for o in exported.reference(*args_t)]
    ort, info = bench.ort_peer(exported.reference, args_t, tmp_path)
    assert info["onnx_nodes"] > 0
    assert max_rel_error(ort.outputs(), want) <= bench.ORT_TOLERANCE
    peers = [ort, bench.torch_peer("eager-step", exported.reference, args_t)]
    for schedule in (True, False):
        peer, _ = bench.tvm_peer(f"tvm-{schedule}", exported, [a.numpy() for a in args_t], tmp_path, schedule, "fp32")
        assert max_rel_error(peer.outputs(), want) <= 1e-5
        peers.append(peer)
    bench.time_peers(peers, rounds=2, round_ms=1.0)
    assert all(len(p.samples_ns) >= 6 for p in peers)
    stats = bench._stats(peers[0].samples_ns)
    assert 0 < stats["p50_us"] <= stats["p99_us"]


# ------------------------------------------------------------------ tools/bench/static_step.py (issue 10)

@pytest.fixture(scope="module")
def static_step():
    spec = importlib.util.spec_from_file_location("static_step", ROOT / "tools" / "bench" / "static_step.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["static_step"] = module  # its dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny DMM checkpoint, its exported recurrent step and realistic timed inputs (non-zero state)."""
    from ssmc.train.models import save_checkpoint

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model("dmm", 5, 2, K=4, hidden=16, n_layer=1, window=3, d_state=8, dropout=0.0).eval()
    work = tmp_path_factory.mktemp("static-step")
    ckpt = save_checkpoint(model, work / "ckpt", EXTRA)
    exported = export_step(model, EXTRA, "recurrent")
    sl = _load_tool("step_latency")
    inputs, state = sl._state_after(exported.reference, 3, np.random.default_rng(0))
    args_t = [*inputs, *state]
    with torch.inference_mode():
        want = [o.numpy().copy() for o in exported.reference(*args_t)]
    return {"work": work, "ckpt": ckpt, "fn": exported.reference, "args_t": args_t, "want": want}


def test_static_step_ssmc_peers_agree_and_time_in_the_c_loop(static_step, tiny) -> None:
    from ssmc.runtime import runtime_bundle

    bundle = runtime_bundle()
    executors = ["vm", "static"] if static_step.static_supported() else ["vm"]
    entries = []
    for executor in executors:
        art = tiny["work"] / f"tiny-{executor}.ssmc"
        static_step.build_ssmc(tiny["ckpt"], "fp32", executor, art, lambda m: None)
        assert static_step.check_ssmc(art, tiny["fn"]) <= static_step.TOLERANCE
        entries.append(static_step.Entry("dmm", "fp32", executor, static_step.ssmc_runner(bundle, art)))
    static_step.time_entries(entries, rounds=2, round_ms=1.0, seed=0, say=lambda m: None)
    for e in entries:
        assert len(e.bursts) == 2 and all(b.n >= static_step.MIN_STEPS for b in e.bursts)
        s = static_step.summarise(e)
        assert 0 < s["p50_us"] <= s["p99_us"] and s["peak_rss_kb_median"] > 0


def test_static_step_firmware_footprint_builds_the_c_bundle_statically(static_step, tiny) -> None:
    """The --emit c bundle as firmware: its objects carry the weights, the demo runs linked -static."""
    from ssmc.train.models import load_checkpoint

    model, _ = load_checkpoint(tiny["ckpt"])
    fw = static_step.firmware_footprint(tiny["ckpt"], "fp32", tiny["work"] / "firmware", steps=50)
    assert fw["step_objects"]["text"] > 4 * model.num_params()  # fp32 weights are constants in the objects
    assert fw["step_bytes"] == fw["step_objects"]["text"] + fw["step_objects"]["data"]
    assert fw["demo_static_bytes"] > fw["step_bytes"]
    assert 0 < fw["demo_rss_anon_kb"] < fw["demo_peak_rss_kb"]
    out = subprocess.run(["ldd", str(Path(fw["bundle"]) / "demo_static")], capture_output=True, text=True)
    assert "not a dynamic executable" in out.stdout + out.stderr


def test_static_step_iree_and_ort_peers_agree_with_pytorch(static_step, tiny) -> None:
    pytest.importorskip("iree.turbine.aot")
    if not shutil.which("iree-benchmark-module") or not shutil.which("iree-run-module"):
        pytest.skip("IREE's tools are not installed (pip install -e '.[bench]')")
    args = [a.numpy() for a in tiny["args_t"]]
    npys, _ = static_step.save_inputs(args, tiny["work"] / "inputs")
    vmfb, info = static_step.build_iree(tiny["fn"], tiny["args_t"], tiny["work"] / "iree")
    assert info["vmfb_bytes"] > 0
    got = static_step.run_iree_once(vmfb, npys, len(tiny["want"]), vmfb.parent)
    assert max_rel_error(got, tiny["want"]) <= static_step.TOLERANCE
    iree = static_step.iree_runner(vmfb, npys)(7)
    assert iree.n == 7 and len(iree.samples_ns) == 7 and iree.p50_us > 0
    peer, _ = static_step.sl.ort_peer(tiny["fn"], tiny["args_t"], tiny["work"])
    assert max_rel_error(peer.outputs(), tiny["want"]) <= static_step.TOLERANCE
    assert static_step.python_runner(peer.call)(5).n == 5


def test_static_step_executorch_peer_agrees_with_pytorch(static_step, tiny) -> None:
    python = static_step.ET_PYTHON
    if not python.is_file():
        pytest.skip(f"no ExecuTorch environment at {python} (see tools/bench/static_step.py)")
    args = [a.numpy() for a in tiny["args_t"]]
    _, input_dir = static_step.save_inputs(args, tiny["work"] / "et-inputs")
    runner, version = static_step.build_et_runner(python, tiny["work"])
    assert version
    pte = tiny["work"] / "tiny.pte"
    subprocess.run([str(python), str(ROOT / "tools" / "bench" / "et_export.py"), str(tiny["ckpt"]), "fp32", str(pte)],
                   check=True, capture_output=True)
    dump = tiny["work"] / "et-out"
    dump.mkdir()
    subprocess.run([str(runner), str(pte), str(input_dir), "--steps", "1", "--dump", str(dump)], check=True,
                   capture_output=True)
    got = [np.fromfile(dump / f"out{i}.bin", np.float32).reshape(w.shape) for i, w in enumerate(tiny["want"])]
    assert max_rel_error(got, tiny["want"]) <= static_step.TOLERANCE
    assert static_step.et_runner(runner, pte, input_dir)(9).n == 9


def test_static_step_floor_interleaving_and_report(static_step, tmp_path) -> None:
    binaries = static_step.build_gemv_floor(tmp_path)
    burst = static_step.floor_runner(binaries["native"])(20)
    assert burst.n == 20 and burst.p50_us > 0
    assert static_step._macs("fused_matmul1_add", [(1, 64), (64, 256), (256,), (1, 256)]) == 64 * 256
    assert static_step._macs("fused_matmul_slice", [(1, 3, 64), (64, 32), (1, 16)]) == 3 * 64 * 32
    assert static_step._macs("layer_norm", [(1, 64), (64,), (1, 64)]) is None
    # interleaving: every entry gets one burst per round, in a shuffled order
    seen = []

    def fake(peer):
        def run(n):
            seen.append(peer)
            return static_step.burst_from_samples([1000 + i for i in range(n)])
        return run

    entries = [static_step.Entry("m", "fp32", p, fake(p)) for p in ("vm", "static", "iree")]
    log = static_step.time_entries(entries, rounds=3, round_ms=0.001, seed=1, say=lambda m: None)
    assert len(log) == 3 and all(len(e.bursts) == 3 for e in entries)
    assert sorted(seen[3:6]) == ["iree", "static", "vm"]
    lat = {e.peer: static_step.summarise(e) for e in entries}
    lat["static"]["p50_us"] = 0.5
    result = {"command": "x", "date": "d", "rounds": 3, "round_ms": 1, "wall_s": 1, "timing_s": 1,
              "loadavg_start": [0.1], "loadavg_end": [0.2], "round_log": log, "skipped": {},
              "machine": {"cpu": "c", "logical_cpus": 2, "torch": "t", "apache-tvm": "v", "iree-base-compiler": "i",
                          "onnxruntime": "o", "gcc": "g"},
              "floor": {"gemv_gmacs": {"C native": 20.0}, "gemv_gmacs_best": 20.0, "gemm_gmacs": {"torch": 60.0},
                        "gemm_gmacs_best": 60.0},
              "rows": [{"model": "dmm", "source": "s", "params": 10, "macs_per_step": 20_000, "state_bytes": 8,
                        "latency": {"fp32": lat}, "max_rel_error_vs_pytorch": {"fp32/vm": 1e-7}}]}
    static_step.analyse(result)
    ratios = result["rows"][0]["ratios_p50"]["fp32"]
    assert ratios["vm / static"] == pytest.approx(lat["vm"]["p50_us"] / 0.5, rel=1e-2)
    assert result["rows"][0]["floor_us"]["gemv"] == 1.0
    assert result["rows"][0]["goals"]["fp32"] == {"static p50 <= 25 us": True}
    text = static_step.markdown(result)
    assert "| dmm | fp32 |" in text and "floor" in text
    static_step.plot(result, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_scan_kernel_bench_times_current_against_a_baseline(tmp_path, capsys) -> None:
    """tools/bench/scan_kernel.py: the kernel built per target, timed beside a baseline version of
    compile/scan_kernel.py (here the same file: identical outputs), and a clear error for a wrong file."""
    mod = _load_tool("scan_kernel")
    res = mod.run(["host"], ["dmm-recurrent"], ROOT / "compile" / "scan_kernel.py", rounds=2, number=3, seed=0)
    (row,) = [r for r in res["rows"] if r["version"] == "current"]
    assert row["elements"] == 2 * 128 * 16 and row["lanes"] == 8
    assert np.isfinite(row["us_p50"]) and row["us_p50"] > 0 and row["max_rel_diff_vs_baseline"] == 0.0
    assert "baseline ÷ current" in mod.markdown(res, "cmd")
    bad = tmp_path / "not_a_kernel.py"
    bad.write_text("x = 1\n")
    with pytest.raises(SystemExit, match="no selective_scan_primfunc"):
        mod.run(["host"], ["dmm-recurrent"], bad, rounds=1, number=1, seed=0)


def test_window_bench_times_each_scan_of_the_step_alone(tmp_path) -> None:
    """tools/bench/window_step.py's scan-alone entries: one per distinct ``ssmc::selective_scan`` call of the
    exported window step (MambaDM: a global scan over the 3K tokens and a local one over K timesteps of 3
    tokens, per layer), each built and timed; the report sets their sum against the whole step."""
    mod = _load_tool("window_step")
    calls, entries = mod.scan_entries("mambadm", 2, tmp_path)
    layers = build_model("mambadm", 11, 3, K=2).config.n_layer
    assert {c["shape"]: c["calls_per_step"] for c in calls} == {"1x6x64x16": layers, "2x3x64x16": layers}
    for c, e in zip(calls, entries, strict=True):
        burst = e.run(5)
        assert burst.n == 5 and burst.p50_us > 0
        c["us_p50"] = burst.p50_us
    step_us = 10 * sum(c["us_p50"] * c["calls_per_step"] for c in calls)
    row = {"model": "mambadm", "K": 2, "scan_alone": calls, "latency": {"static": {"p50_us": step_us}}}
    (line,) = [t for t in mod._scan_bound({"rows": [row]}) if t.startswith("- mambadm")]
    assert f"{2 * layers} scans alone" in line and "10% of the whole step" in line


def test_train_throughput_times_the_fused_kernels_alone() -> None:
    """``train_throughput.py --kernels``: the exp, scan forward and backward per state element at DeMa's
    layer shape (the rows docs/training-throughput.md quotes)."""
    rows = _load_tool("train_throughput").kernels(batch=1, repeats=1)
    assert [r["kernel"] for r in rows] == ["exp", "scan forward", "scan backward"]
    assert rows[1]["elements"] == rows[2]["elements"] == 1 * 128 * 60 * 64
    assert all(r["ms"] > 0 and r["ns_per_element"] > 0 for r in rows)



def test_long_context_bench_checks_the_cache_and_sums_the_run() -> None:
    """tools/bench/long_context.py (DM-H's 28x as its paper defines it): the cached transformer computes what
    re-encoding the context computes, the interleaved run times every step of both, and the estimated
    re-encoding total is the interpolated curve summed over the steps."""
    lc = _load_tool("long_context")
    dmh, ad = lc.build("dmh-d4rl", steps=40)
    assert ad.hidden == dmh.config.hidden and len(ad.blocks) == dmh.config.n_layer
    assert lc.check_cache(ad, steps=12) <= 1e-5
    forgetful = lc.ADTransformer(11, 3, ad.hidden, len(ad.blocks), ad.n_head, 40)
    forgetful.load_state_dict(ad.state_dict())
    real_step = forgetful.step
    forgetful.step = lambda cache, *a: real_step({**cache, "n": 0}, *a)  # attends to its own step only
    assert lc.check_cache(forgetful, steps=12) > 1e-3  # a cache that loses the context is caught
    times = lc.run_interleaved(dmh, ad, steps=40, episode=20, block=7, progress=False)
    assert [len(v) for v in times.values()] == [40, 40] and all(t > 0 for v in times.values() for t in v)
    curve = [(10, 1.0), (20, 2.0), (40, 4.0)]  # linear: step n costs n / 10 s
    assert lc.integrate(curve, 1, 40) == pytest.approx(sum(n / 10 for n in range(1, 41)))
    rows = lc.summarise(times, curve, steps=40, episode=20)
    assert rows["dmh"]["ratio_vs_dmh"] == pytest.approx(1.0)
    assert rows["ad-reencode"]["estimated"] and not rows["ad-cached"]["estimated"]
    assert rows["ad-reencode"]["per_episode_s"] == pytest.approx([lc.integrate(curve, 1, 20), lc.integrate(curve, 21, 40)])
    assert "estimated" in lc.report({"args": {"steps": 40, "episode": 20, "samples": 3, "config": "dmh-d4rl"},
                                     "torch": "x", "cpu": "y", "dmh_params": 1, "ad_params": 2, "hidden": 128,
                                     "n_layer": 3, "cache_check_rel_err": 0.0, "load": [0.0, 0.0], "curve": curve,
                                     "rows": rows})


@pytest.mark.slow
def test_train_ab_times_two_commits_from_their_own_worktrees() -> None:
    """tools/bench/train_ab.py (the A/B quoted in docs/training-throughput.md): each commit is imported from
    its own worktree (the script refuses otherwise), both are timed, and the worktrees are removed."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    before = subprocess.run(["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True).stdout
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "bench" / "train_ab.py"), "HEAD", "HEAD", "--model", "dmm",
                          "--rounds", "1", "--steps", "1", "--warmup", "1"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    import re

    for label in ("A HEAD", "B HEAD"):
        assert re.search(rf"round 1 +{label} dmm: min \d+ ms, median \d+ ms", out.stdout), out.stdout
    after = subprocess.run(["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True).stdout
    assert after == before
