"""The selective scan as one compiled loop: the TIR kernel behind ``ssmc::selective_scan``.

A window step (DeMa's and DMM's papers' inference: the last K timesteps re-read every step) runs
Mamba's scan over 3K tokens per layer. Exported as plain tensor ops, the scan is unrolled: per token
an exp kernel, a state update and a reduction, each writing a (d_inner, d_state) intermediate, so
code size and the kernel count grow with K, and each token pays several kernel calls. During ssmc's
export the scan is one opaque custom op (``ssmc.train.models.scan.fused_scan_export``); the importer
(compile/pipeline.py) turns it into a ``call_tir`` to the PrimFunc built here, so the step's code is
flat in K and the state of each channel stays in registers across the tokens.

The recurrence, per (batch, channel) ``(bi, di)``, with ``h`` the channel's ``d_state`` floats::

    h = h0[bi, di, :]  (or 0)
    for t in range(L):
        w = max(delta[bi, t, di] * A2[di, :], -60)       # A2 = A · log2(e), so exp(Δ A) = 2^w
        h = 2^w * h + du[bi, t, di] * B[bi, t, :]
        y[bi, t, di] = sum(h * C[bi, t, :])
    hL[bi, di, :] = h

The kernel runs it chunk-major: the ``d_state`` axis is split into vectors of ``lanes`` floats (chunks),
and for each chunk the tokens run innermost, so a chunk's state and its ``A2`` are one register each
across the tokens and the loop body needs a handful of registers whatever ``d_state`` is. Each token's
``h * C`` products go lane-wise into a partial-sum vector per token (``acc``), summed pairwise
(``lanes/2 + lanes/4 + ...`` adds) once all chunks are done. Tokens go in blocks of ``TOKEN_BLOCK`` so
``acc`` stays small (16 tokens x 16 floats: 1 KB of stack), the state carried between blocks in ``hL``.
Token-major (every chunk of one token, then the next token), the whole state had to stay in registers:
64 floats are 8 of AVX2's 16 vector registers, and the compiled loop spilled. Measured with
tools/bench/scan_kernel.py on the AMD EPYC of docs/static-step.md (9 interleaved rounds, against
token-major with a serial lane sum): DeMa's recurrent call 1.26x faster at AVX2 and 1.07x at AVX-512,
its K = 20 window 1.26x and 1.33x, DMM's recurrent call 1.10x and 1.26x; outputs within 1.6e-7.

``2^w`` is computed as arithmetic that vectorises (``exp2`` lowers to a libm call per lane): ``w = m + g``
with ``m = round(w)`` (by adding and subtracting ``ROUND_MAGIC``) and ``g`` in [-1/2, 1/2]; ``2^g = 1 + g·P(g)``
with a degree-5 polynomial (``EXP2_POLY``, 1.9e-7 relative error); ``2^m`` is added into the exponent bits.

The exponent is clamped at -60 (Δ > 0 and A < 0, so ``w <= 0``): ``2^w`` is then at least 8.7e-19, and
``h · 2^w`` stays a normal float unless ``|h| < 2^-66``. Without the clamp the decayed state terms
become denormal floats, and x86 cores take microcode assists on them: measured here, a DeMa-sized
layer (60 tokens, 128 x 64 state) took 4-11 ns per state element instead of 0.5-0.9. The clamp
changes a product that is below 8.7e-19 · |h| by less than that, far below fp32's resolution of
the sum it is added into.

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


#: Tokens per block (see the module docstring): each block's per-token partial sums stay in L1.
TOKEN_BLOCK = 16


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
    tb = min(L, TOKEN_BLOCK)
    blocks = -(-L // tb)
    p1, p2, p3, p4, p5 = EXP2_POLY
    lo = EXP2_LO

    @T.macro
    def body(delta, du, A2, B, C, h0, y, hL, use_h0):  # noqa: ANN001 - TVMScript buffers
        h = T.alloc_buffer((v,), "float32", scope="local")
        a = T.alloc_buffer((v,), "float32", scope="local")
        w = T.alloc_buffer((v,), "float32", scope="local")
        m = T.alloc_buffer((v,), "float32", scope="local")
        e = T.alloc_buffer((v,), "float32", scope="local")
        acc = T.alloc_buffer((tb * v,), "float32", scope="local")
        for bi, di, blk in T.grid(b, d, blocks):
            for k in T.vectorized(tb * v):
                acc[k] = T.float32(0)
            for c in range(chunks):
                for j in T.vectorized(v):
                    a[j] = A2[di, c * v + j]
                for j in T.vectorized(v):  # the state's chunk: from h0 (or 0), then carried in hL between blocks
                    if blk > 0:
                        h[j] = hL[bi, di, c * v + j]
                    elif use_h0:
                        h[j] = h0[bi, di, c * v + j]
                    else:
                        h[j] = T.float32(0)
                for i in range(T.min(tb, L - blk * tb)):
                    for j in T.vectorized(v):  # the exponent, clamped, split into m + g
                        w[j] = T.max(delta[bi, blk * tb + i, di] * a[j], T.float32(lo))
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
                        h[j] = h[j] * e[j] + du[bi, blk * tb + i, di] * B[bi, blk * tb + i, c * v + j]
                    for j in T.vectorized(v):
                        acc[i * v + j] = acc[i * v + j] + h[j] * C[bi, blk * tb + i, c * v + j]
                for j in T.vectorized(v):
                    hL[bi, di, c * v + j] = h[j]
            for i in range(T.min(tb, L - blk * tb)):  # each token's lanes summed pairwise: v/2 + v/4 + ... adds
                if v >= 16:
                    for j in T.vectorized(8):
                        acc[i * v + j] = acc[i * v + j] + acc[i * v + j + 8]
                if v >= 8:
                    for j in T.vectorized(4):
                        acc[i * v + j] = acc[i * v + j] + acc[i * v + j + 4]
                if v >= 4:
                    for j in T.vectorized(2):
                        acc[i * v + j] = acc[i * v + j] + acc[i * v + j + 2]
                if v >= 2:
                    acc[i * v] = acc[i * v] + acc[i * v + 1]
                y[bi, blk * tb + i, di] = acc[i * v]

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
