"""The selective scan as one compiled loop: the TIR kernel behind ``ssmc::selective_scan``.

A window step (DeMa's and DMM's papers' inference: the last K timesteps re-read every step) runs
Mamba's scan over 3K tokens per layer. Exported as plain tensor ops, the scan is unrolled: per token
an exp kernel, a state update and a reduction, each writing a (d_inner, d_state) intermediate, so
code size and the kernel count grow with K, and each token pays several kernel calls. During ssmc's
export the scan is one opaque custom op (``ssmc.train.models.scan.fused_scan_export``); the importer
(compile/pipeline.py) turns it into a ``call_tir`` to the PrimFunc built here, so the step's code is
flat in K and the state of each channel stays in registers across the tokens.

The kernel, per (batch, channel) ``(bi, di)``, with ``h`` the channel's ``d_state`` floats::

    h = h0[bi, di, :]  (or 0)
    for t in range(L):
        w = max(delta[bi, t, di] * A2[di, :], -60)       # A2 = A · log2(e), so exp(Δ A) = 2^w
        h = 2^w * h + du[bi, t, di] * B[bi, t, :]
        y[bi, t, di] = sum(h * C[bi, t, :])
    hL[bi, di, :] = h

``2^w`` is computed as arithmetic that vectorises (``exp2`` lowers to a libm call per lane): ``w = m + g``
with ``m = round(w)`` (by adding and subtracting ``ROUND_MAGIC``) and ``g`` in [-1/2, 1/2]; ``2^g = 1 + g·P(g)``
with a degree-5 polynomial (``EXP2_POLY``, 1.9e-7 relative error); ``2^m`` is added into the exponent bits.

The exponent is clamped at -60 (Δ > 0 and A < 0, so ``w <= 0``): ``2^w`` is then at least 8.7e-19, and
``h · 2^w`` stays a normal float unless ``|h| < 2^-66``. Without the clamp the decayed state terms
become denormal floats, and x86 cores take microcode assists on them: measured here, a DeMa-sized
layer (60 tokens, 128 x 64 state) took 4-11 ns per state element instead of 0.5-0.9. The clamp
changes a product that is below 8.7e-19 · |h| by less than that, far below fp32's resolution of
the sum it is added into. The ``d_state`` axis is split into vectors of ``lanes`` floats and the products are
accumulated lane-wise, then summed once per token.

TVM 0.27 note: a scalar let-binding inside a ``T.vectorized`` loop is broadcast from the last lane
(measured: wrong results), so per-lane temporaries live in lane-wide local buffers here.
"""

from __future__ import annotations

import math
from typing import Any

#: 2^g = 1 + g * P(g) for g in [-0.5, 0.5], P of degree 4, coefficients highest degree first: a fit of the
#: relative error of 2^g (iteratively reweighted least squares toward minimax, in float64, then rounded to
#: fp32): max relative error 1.9e-7 evaluated in fp32 (Cephes exp2f's degree-5 P: 9.7e-8). One FMA less per
#: state element; tools/bench/scan_kernel.py measured DeMa's window scan (K = 20) 10 % faster and its
#: recurrent one 4-6 %, outputs within 1.6e-7 of those with Cephes' polynomial.
EXP2_POLY = (1.3264811132103205e-3, 9.671512991189957e-3, 5.550733581185341e-2, 2.4022242426872253e-1,
             6.931470036506653e-1)
#: Lower clamp of the exponent (see the module docstring: keeps ``h · 2^w`` out of denormals).
EXP2_LO = -60.0
LOG2E = 1.0 / math.log(2.0)
#: 2^23 + 2^9: for w in [-60, 0], w + ROUND_MAGIC (fp32, whose spacing there is 1) is round(w) + M, so
#: (w + M) - M is round(w); and M's mantissa bits end in nine zeros, so that float's bits shifted left by
#: 23 are exactly 2^round(w)'s exponent field (the high bits fall off): two adds and a shift, where floor
#: and a float-to-int conversion are two slow ops. Not the usual 1.5 · 2^23 = 12582912: TVM's C code
#: generator (the --emit c bundle) prints float constants with 7 significant digits, 1.258291e+07, which
#: is another number; 8.389120e+06 is exact.
ROUND_MAGIC = 8389120.0


def scan_lanes(d_state: int, lanes: int) -> int:
    """The widest vector (at most ``lanes`` floats) that divides ``d_state``; 16-float vectors only when a
    channel has at least two of them (d_state >= 32).

    Each (token, channel) ends with a sum over the lanes, a chain of dependent adds. With one 16-float
    vector per channel (DMM: d_state 16) that chain is most of the work: measured with
    tools/bench/scan_kernel.py, DMM's recurrent call took ~4.0 µs at 16 lanes and ~2.9 at 8."""
    while lanes > 1 and (d_state % lanes or (lanes > 8 and d_state < 2 * lanes)):
        lanes //= 2
    return max(lanes, 1)


def selective_scan_primfunc(batch: int, length: int, d_inner: int, d_state: int, lanes: int,
                            with_h0: bool) -> Any:
    """The PrimFunc ``(delta, du, A2, B, C[, h0], y, hL)``, all fp32, shapes static.

    delta, du: (batch, length, d_inner); A2 = A·log2(e): (d_inner, d_state); B, C: (batch, length,
    d_state); h0, hL: (batch, d_inner, d_state); y: (batch, length, d_inner).
    """
    from tvm.script import tirx as T

    b, L, d, n = batch, length, d_inner, d_state
    v = scan_lanes(n, lanes)
    chunks = n // v
    p1, p2, p3, p4, p5 = EXP2_POLY
    lo = EXP2_LO

    @T.macro
    def body(delta, du, A2, B, C, h0, y, hL, use_h0):  # noqa: ANN001 - TVMScript buffers
        h = T.alloc_buffer((n,), "float32", scope="local")
        w = T.alloc_buffer((v,), "float32", scope="local")
        m = T.alloc_buffer((v,), "float32", scope="local")
        e = T.alloc_buffer((v,), "float32", scope="local")
        acc = T.alloc_buffer((v,), "float32", scope="local")
        for bi, di in T.grid(b, d):
            for k in T.vectorized(n):
                if use_h0:
                    h[k] = h0[bi, di, k]
                else:
                    h[k] = T.float32(0)
            for t in range(L):
                for j in T.vectorized(v):
                    acc[j] = T.float32(0)
                for c in range(chunks):
                    for j in T.vectorized(v):  # the exponent, clamped, split into m + g
                        w[j] = T.max(delta[bi, t, di] * A2[di, c * v + j], T.float32(lo))
                    for j in T.vectorized(v):  # w + 2^23 + 2^9: round(w) in the low mantissa bits
                        m[j] = w[j] + T.float32(ROUND_MAGIC)
                    for j in T.vectorized(v):
                        w[j] = w[j] - (m[j] - T.float32(ROUND_MAGIC))
                    for j in T.vectorized(v):  # 2^g by the polynomial, times 2^m in the exponent bits
                        e[j] = T.reinterpret("float32", T.reinterpret("int32", T.float32(1) + w[j] * (
                            (((T.float32(p1) * w[j] + T.float32(p2)) * w[j]
                              + T.float32(p3)) * w[j] + T.float32(p4)) * w[j] + T.float32(p5)))
                            + T.shift_left(T.reinterpret("int32", m[j]), 23))
                    for j in T.vectorized(v):
                        h[c * v + j] = h[c * v + j] * e[j] + du[bi, t, di] * B[bi, t, c * v + j]
                    for j in T.vectorized(v):
                        acc[j] = acc[j] + h[c * v + j] * C[bi, t, c * v + j]
                y[bi, t, di] = T.float32(0)
                for j in range(v):
                    y[bi, t, di] = y[bi, t, di] + acc[j]
            for k in T.vectorized(n):
                hL[bi, di, k] = h[k]

    if with_h0:
        @T.prim_func(private=True)
        def scan(delta: T.Buffer((b, L, d), "float32"), du: T.Buffer((b, L, d), "float32"),
                 A2: T.Buffer((d, n), "float32"), B: T.Buffer((b, L, n), "float32"),
                 C: T.Buffer((b, L, n), "float32"), h0: T.Buffer((b, d, n), "float32"),
                 y: T.Buffer((b, L, d), "float32"), hL: T.Buffer((b, d, n), "float32")):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})
            body(delta, du, A2, B, C, h0, y, hL, True)

        return scan

    @T.prim_func(private=True)
    def scan_from_zero(delta: T.Buffer((b, L, d), "float32"), du: T.Buffer((b, L, d), "float32"),
                       A2: T.Buffer((d, n), "float32"), B: T.Buffer((b, L, n), "float32"),
                       C: T.Buffer((b, L, n), "float32"),
                       y: T.Buffer((b, L, d), "float32"), hL: T.Buffer((b, d, n), "float32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})
        body(delta, du, A2, B, C, None, y, hL, False)

    return scan_from_zero
