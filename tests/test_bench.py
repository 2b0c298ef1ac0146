"""tools/bench/step_latency.py's pieces on a tiny model: the ONNX Runtime peer agrees with PyTorch, the
compiled peers agree with PyTorch, interleaved timing fills every peer, the report renders. No timing is
asserted (speed is measured by the benchmark itself, docs/bench.md)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from ssmc.compile.build import max_rel_error
from ssmc.compile.export import export_step
from ssmc.train.models import build_model

ROOT = Path(__file__).resolve().parents[1]
EXTRA = {"obs_mean": [0.5, -1.0, 2.0, 0.0, 3.0], "obs_std": [1.5, 0.5, 2.0, 1.0, 4.0], "rtg_scale": 1e-3,
         "target_return": 3000.0}


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("step_latency", ROOT / "tools" / "bench" / "step_latency.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
