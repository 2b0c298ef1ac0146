"""The numba kernels of fused_scan.py (imported on first use: importing numba costs ~0.5 s)."""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload


@intrinsic
def _rint_f32(typingctx, x):
    """Round a float32 to the nearest integer, as a float32 (``llvm.rint``: one vroundps per 8 lanes)."""
    sig = types.float32(types.float32)

    def codegen(context, builder, signature, args):
        fn = builder.module.declare_intrinsic("llvm.rint", [ir.FloatType()])
        return builder.call(fn, [args[0]])

    return sig, codegen


@intrinsic
def _pow2_f32(typingctx, k):
    """2^k for an integral float32 k in [-126, 127]: k + 127 written into the exponent field.

    The integer arithmetic is i32 in the IR on purpose. Written in numba, ``np.int32(t)`` and the shift
    are typed int64, and float <-> int64 conversions have no vector instruction before AVX-512DQ, so
    LLVM scalarised the whole exp: on an AVX2 core (AMD Zen 3) the exp cost 1.35 ns per element and the
    scan forward 1.40 ns per state element; with these two intrinsics 0.43 and 0.47
    (tools/bench/train_throughput.py --kernels).
    """
    sig = types.float32(types.float32)

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        e = builder.add(builder.fptosi(args[0], i32), ir.Constant(i32, 127))
        return builder.bitcast(builder.shl(e, ir.Constant(i32, 23)), ir.FloatType())

    return sig, codegen


def _exp(x):  # pragma: no cover - replaced by the overload inside compiled code
    return math.exp(x)


@overload(_exp, inline="always", fastmath=True)
def _exp_impl(x):
    if x == types.float32:
        def fast_exp32(x):
            # exp(x) = 2^i · 2^f, x·log2(e) = i + f, f in [-0.5, 0.5]; 2^f by a degree-6 polynomial.
            t = max(min(x * np.float32(1.4426950408889634), np.float32(126.0)), np.float32(-126.0))
            k = _rint_f32(t)
            f = t - k  # in [-0.5, 0.5]
            p = np.float32(1.5353362e-4)
            p = p * f + np.float32(1.3398874e-3)
            p = p * f + np.float32(9.6182985e-3)
            p = p * f + np.float32(5.5503406e-2)
            p = p * f + np.float32(2.4022652e-1)
            p = p * f + np.float32(6.9314718e-1)
            p = p * f + np.float32(1.0)
            return p * _pow2_f32(k)
        return fast_exp32
    return lambda x: math.exp(x)


@njit(fastmath=True, cache=True, nogil=True)
def _forward_batch(bi, u, delta, A, B, C, y, h_last):
    """One batch row: every channel's state walks the tokens in an n-float buffer."""
    d, L = u.shape[1], u.shape[2]
    n = A.shape[1]
    h = np.empty(n, u.dtype)
    for di in range(d):
        h[:] = 0
        for t in range(L):
            dt = delta[bi, di, t]
            x = dt * u[bi, di, t]
            acc = u.dtype.type(0)
            for k in range(n):
                hk = _exp(dt * A[di, k]) * h[k] + x * B[bi, t, k]
                h[k] = hk
                acc += hk * C[bi, t, k]
            y[bi, di, t] = acc
        h_last[bi, di, :] = h


@njit(fastmath=True, cache=True, nogil=True)
def _backward_batch(bi, u, delta, A, B, C, gy, gu, gdelta, gA, gB, gC):
    """One batch row. gu, gdelta (b, d, l) written; gA (d, n) and gB, gC (b, l, n) accumulated."""
    d, L = u.shape[1], u.shape[2]
    n = A.shape[1]
    hs = np.empty((L + 1, n), u.dtype)  # hs[t + 1] = h_t, hs[0] = 0
    dA = np.empty((L, n), u.dtype)  # Ā_t
    g = np.empty(n, u.dtype)  # dLoss/dh_t, carried backwards
    gAl = np.empty(n, u.dtype)  # this channel's dA, local: an output array in the loop blocks vectorisation
    for di in range(d):
        hs[0, :] = 0
        for t in range(L):  # recompute this pair's states
            dt = delta[bi, di, t]
            x = dt * u[bi, di, t]
            for k in range(n):
                a = _exp(dt * A[di, k])
                dA[t, k] = a
                hs[t + 1, k] = a * hs[t, k] + x * B[bi, t, k]
        g[:] = 0
        gAl[:] = 0
        for t in range(L - 1, -1, -1):
            dt = delta[bi, di, t]
            ut = u[bi, di, t]
            x = dt * ut
            gyt = gy[bi, di, t]
            gx = u.dtype.type(0)
            gdt = u.dtype.type(0)
            for k in range(n):
                gk = g[k] + C[bi, t, k] * gyt  # g_t
                gC[bi, t, k] += hs[t + 1, k] * gyt
                gB[bi, t, k] += gk * x
                gx += gk * B[bi, t, k]
                gk = gk * dA[t, k]  # Ā_t g_t: this step's share of g_{t-1}
                P = gk * hs[t, k]  # dLoss/d(Δ_t A)
                gAl[k] += P * dt
                gdt += P * A[di, k]
                g[k] = gk
            gu[bi, di, t] = gx * dt
            gdelta[bi, di, t] = gdt + gx * ut
        for k in range(n):
            gA[di, k] += gAl[k]


@njit(fastmath=True, cache=True, nogil=True)
def forward(u, delta, A, B, C, y, h_last):
    for bi in range(u.shape[0]):
        _forward_batch(bi, u, delta, A, B, C, y, h_last)


@njit(fastmath=True, cache=True, nogil=True)
def backward(u, delta, A, B, C, gy, gu, gdelta, gA, gB, gC):
    """gA (d, n), gB, gC (b, l, n) accumulated: zeroed by the caller."""
    for bi in range(u.shape[0]):
        _backward_batch(bi, u, delta, A, B, C, gy, gu, gdelta, gA, gB, gC)


@njit(fastmath=True, cache=True, parallel=True)
def forward_parallel(u, delta, A, B, C, y, h_last):
    for bi in prange(u.shape[0]):
        _forward_batch(bi, u, delta, A, B, C, y, h_last)


@njit(fastmath=True, cache=True, parallel=True)
def backward_parallel(u, delta, A, B, C, gy, gu, gdelta, gA_rows, gB, gC):
    """As ``backward`` over batch rows in parallel; gA_rows (b, d, n): one partial gA per row (summed by
    the caller), so no two threads write the same element."""
    for bi in prange(u.shape[0]):
        _backward_batch(bi, u, delta, A, B, C, gy, gu, gdelta, gA_rows[bi], gB, gC)
