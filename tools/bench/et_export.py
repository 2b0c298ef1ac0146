"""Export a checkpoint's recurrent step to an ExecuTorch program lowered to XNNPACK (a ``.pte``).

Run by tools/bench/static_step.py with the ExecuTorch environment's Python (ExecuTorch 1.5 brings
torchao and newer versions of several packages, so it lives in its own virtual environment, made with
``--system-site-packages`` so that it sees this checkout's ssmc and the same torch):

    VENV/bin/python tools/bench/et_export.py CHECKPOINT PRECISION OUT.pte

The exported function is the same ``StepFunction`` the other peers run (``export_step``; for int8 the
module ``quantize_int8`` makes: weight-only int8 with fp32 activations), traced with
``torch.export`` and lowered with ``to_edge_transform_and_lower(..., partitioner=[XnnpackPartitioner()])``:
what XNNPACK takes runs in its delegate, the rest on ExecuTorch's CPU kernels. Prints one JSON line:
seconds, bytes, and how many graph nodes the delegate took.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    checkpoint, precision, out = Path(argv[0]), argv[1], Path(argv[2])
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from ssmc.compile.export import example_inputs, export_step
    from ssmc.compile.quantize import quantize_int8
    from ssmc.train.models import load_checkpoint

    torch.set_num_threads(1)
    model, extra = load_checkpoint(checkpoint)
    exported = export_step(model, extra, "recurrent", quantize=quantize_int8 if precision == "int8" else None)
    fn = exported.function
    args = tuple(example_inputs(fn))
    t0 = time.perf_counter()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.export.export(fn, args)
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        graph = lowered.exported_program().graph
        delegates = sum(1 for n in graph.nodes if n.op == "call_function" and "call_delegate" in str(n.target))
        others = sum(1 for n in graph.nodes if n.op == "call_function" and "call_delegate" not in str(n.target)
                     and "getitem" not in str(n.target))
        buffer = lowered.to_executorch().buffer
    out.write_bytes(buffer)
    import executorch

    print(json.dumps({"export_s": round(time.perf_counter() - t0, 1), "pte_bytes": len(buffer),
                      "delegate_calls": delegates, "non_delegated_ops": others,
                      "executorch": getattr(executorch, "__version__", None) or _version("executorch")}))
    return 0


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
