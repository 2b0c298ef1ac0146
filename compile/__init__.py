"""ssmc.compile: a checkpoint's step exported with torch.export, lowered through TVM Relax into an artifact.

    export.py    the step as a pure function with normalisation inside (torch.export, static shapes)
    quantize.py  int8 weight-only quantisation of the Linear layers
    pipeline.py  the TVM Relax pipeline as named stages (--dump-ir writes each)
    cuda.py      CUDA builds without a GPU: driver stub, nvcc, an sm_87 check of the result
    static.py    the static executor: a fixed call sequence, one planned arena, weights as data (no VM)
    build.py     compile_checkpoint(): all of it, written through ssmc.artifact; emit_c_source() (--emit c)

Importing this package does not import torch or TVM; ``compile_checkpoint`` does. See docs/compile.md.
"""

from ssmc.compile.build import compile_checkpoint, default_artifact_path, emit_c_source

__all__ = ["compile_checkpoint", "default_artifact_path", "emit_c_source"]
