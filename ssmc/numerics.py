"""How ssmc compares numbers against the PyTorch reference (compile's reference check, ``ssmc verify``,
the tests and benchmarks): one relative-error measure, in which NaN or inf never passes."""

from __future__ import annotations

import numpy as np


def max_rel_error(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    """max over tensors of max|got - want| / max(max|want|, 1e-6); NaN or inf anywhere gives inf."""
    worst = 0.0
    for g, w in zip(got, want, strict=True):
        g64, w64 = np.asarray(g, np.float64), np.asarray(w, np.float64)
        if g64.shape != w64.shape or not np.all(np.isfinite(g64)):
            return float("inf")
        worst = max(worst, float(np.abs(g64 - w64).max(initial=0.0) / max(np.abs(w64).max(initial=0.0), 1e-6)))
    return worst
