"""The ``prune-rows`` stage (compile/rows.py): a window step computes only the token rows its outputs read.

Numerics of pruned steps against PyTorch are checked where every compiled step is (tests/test_window_step.py,
tests/test_compile.py: the stage is in every pipeline); here, what the stage removes and what it must leave.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssmc.compile.export import export_step
from ssmc.compile.pipeline import import_program, stage_names, stages
from ssmc.compile.rows import matmul_macs, prune_rows
from ssmc.targets import load_target
from ssmc.train.models import build_model

EXTRA = {"obs_mean": [0.0] * 5, "obs_std": [1.0] * 5, "rtg_scale": 1e-3, "target_return": 3000.0}


def _decomposed(model):
    program = export_step(model.eval(), EXTRA).program
    mod = import_program(program, 8)
    target = load_target("host")
    with target.tvm_target():
        return next(s for s in stages(target, "fp32", executor="static") if s.name == "decompose").run(mod)


def _count(mod, op_name: str) -> int:
    from tvm import relax

    n = 0

    def visit(e):
        nonlocal n
        if isinstance(e, relax.Call) and getattr(e.op, "name", None) == op_name:
            n += 1

    relax.analysis.post_order_visit(mod["main"], visit)
    return n


def test_prune_rows_is_a_stage_after_decompose() -> None:
    names = stage_names(load_target("host"), "fp32", executor="static")
    assert names.index("prune-rows") == names.index("decompose") + 1


@pytest.mark.parametrize("n_layer", [1, 2])
def test_dt_window_step_computes_the_last_block_for_the_read_token_alone(n_layer: int) -> None:
    torch.manual_seed(0)
    h, K = 32, 4
    model = build_model("dt", 5, 2, K=K, hidden=h, n_layer=n_layer, max_ep_len=50, dropout=0.0)
    mod = _decomposed(model)
    before, matmuls = matmul_macs(mod), _count(mod, "relax.matmul")
    pruned = prune_rows(mod)
    T = 3 * K
    # the last block's queries, out-projection and 4x MLP for T - 1 rows: q·kᵀ and att·v (2·T·h per row),
    # c_proj (h²), c_fc and its c_proj (8h²); keys and values still for all T tokens, earlier blocks whole
    removed = (T - 1) * (2 * T * h + h * h + 8 * h * h)
    assert before - matmul_macs(pruned) == removed
    # every matmul is still computed once: the read row of a full value that is needed anyway (the query
    # row of the attention input projection, the earlier block's output) is taken from it, not recomputed
    assert _count(pruned, "relax.matmul") == matmuls


def _module(build):
    from tvm import relax

    x = relax.Var("x", relax.TensorType((1, 6, 8), "float32"))
    w = relax.const(np.random.default_rng(0).standard_normal((8, 8)).astype("float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(build(bb, x, w))
        bb.emit_func_output(out)
    return bb.get()


def _slice(bb, y, axis, b, e):
    from tvm import relax

    return bb.emit(relax.op.strided_slice(y, [axis], [b], [e]))


def test_a_token_row_read_after_a_matmul_becomes_a_one_row_matmul() -> None:
    from tvm import relax

    mod = _module(lambda bb, x, w: _slice(bb, bb.emit(relax.op.matmul(bb.emit(relax.op.nn.relu(x)), w)), 1, 4, 5))
    assert matmul_macs(mod) == 6 * 8 * 8
    assert matmul_macs(prune_rows(mod)) == 1 * 8 * 8
    neg = _module(lambda bb, x, w: _slice(bb, bb.emit(relax.op.matmul(x, w)), 1, -2, -1))  # x[:, -2]
    assert matmul_macs(prune_rows(neg)) == 1 * 8 * 8


@pytest.mark.parametrize("case", ["feature slice", "two rows", "rows mixed by a reshape", "softmax over rows"])
def test_slices_that_are_not_one_token_row_of_row_wise_ops_are_left_alone(case: str) -> None:
    from tvm import relax

    def build(bb, x, w):
        y = bb.emit(relax.op.matmul(x, w))  # (1, 6, 8)
        if case == "feature slice":  # Mamba's x_proj split: slicing the weight's columns is not this stage's
            return _slice(bb, y, 2, 3, 4)
        if case == "two rows":
            return _slice(bb, y, 1, 2, 4)
        if case == "rows mixed by a reshape":  # (1, 6, 8) -> (1, 3, 16): a row of it is two rows of y
            return _slice(bb, bb.emit(relax.op.reshape(y, (1, 3, 16))), 1, 1, 2)
        return _slice(bb, bb.emit(relax.op.nn.softmax(y, axis=1)), 1, 1, 2)

    mod = _module(build)
    assert matmul_macs(prune_rows(mod)) == matmul_macs(mod) == 6 * 8 * 8
