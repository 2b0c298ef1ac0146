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
def _channel_major(a, bi, buf):
    """buf (d, l) <- a[bi] (l, d): one batch row's per-token values, channel by channel.

    The scans walk one channel's tokens at a time; read in place from (b, l, d), every token is a
    different cache line (a stride of d floats) and the lines are evicted by the inner loops' ~90 KB
    working set before the next channel reuses them: a DeMa backward took 3.0 ns per element that
    way, against 1.3 with the row transposed once into a buffer."""
    if a.strides[1] <= a.strides[2]:  # a (b, d, l) tensor seen as (b, l, d): walk its memory in order
        for di in range(a.shape[2]):
            for t in range(a.shape[1]):
                buf[di, t] = a[bi, t, di]
    else:
        for t in range(a.shape[1]):
            for di in range(a.shape[2]):
                buf[di, t] = a[bi, t, di]


@njit(fastmath=True, cache=True, nogil=True)
def _batch_major(buf, a, bi):
    """a[bi] (l, d) <- buf (d, l): the inverse of ``_channel_major``."""
    for t in range(a.shape[1]):  # outputs are always batch-major (b, l, d)
        for di in range(a.shape[2]):
            a[bi, t, di] = buf[di, t]


@njit(fastmath=True, cache=True, nogil=True)
def _forward_batch(bi, u, delta, A, B, C, D, z, gate, out, ys, h_last, ckpt, chunk):
    """One batch row: every channel's state walks the tokens in an n-float buffer; the D skip and the
    SiLU(z) gate applied per token (y kept in ``ys`` for the backward when gated). The state before token
    c · chunk is kept in ckpt[bi, di, c - 1] (c ≥ 1) for the backward's recomputation."""
    L, d = u.shape[1], u.shape[2]
    n = A.shape[1]
    dtype = out.dtype
    one = dtype.type(1)
    h = np.empty(n, dtype)
    ub, db, yb = np.empty((d, L), dtype), np.empty((d, L), dtype), np.empty((d, L), dtype)
    _channel_major(u, bi, ub)
    _channel_major(delta, bi, db)
    for di in range(d):
        h[:] = 0
        for t in range(L):
            if t > 0 and t % chunk == 0:
                ckpt[bi, di, t // chunk - 1, :] = h
            dt = db[di, t]
            x = dt * ub[di, t]
            acc = dtype.type(0)
            for k in range(n):
                hk = _exp(dt * A[di, k]) * h[k] + x * B[bi, t, k]
                h[k] = hk
                acc += hk * C[bi, t, k]
            yb[di, t] = acc + D[di] * ub[di, t]
        h_last[bi, di, :] = h
    if gate:
        _batch_major(yb, ys, bi)
        for t in range(L):
            for di in range(d):
                zt = z[bi, t, di]
                out[bi, t, di] = yb[di, t] * zt / (one + _exp(-zt))
    else:
        _batch_major(yb, out, bi)


@njit(fastmath=True, cache=True, nogil=True)
def _backward_batch(bi, u, delta, A, B, C, D, z, gate, ys, gout, gu, gdelta, gz, gA, gB, gC, gD, ckpt, chunk):
    """One batch row. gu, gdelta, gz (b, l, d) written; gA (d, n), gB, gC (b, l, n), gD (d,) accumulated.

    The tokens are taken a chunk at a time, last chunk first: its states recomputed from the forward's
    checkpoint into (chunk + 1) x n buffers, then the adjoint walked back through it. The buffers stay
    the same size at any context length: all of a channel pair's states (and Ā) are 0.6 MB at DeMa-RNN's
    600 tokens, 12 MB at 12,000 (a 4000-step context at three tokens a step) with d_state 64. At 600
    tokens chunks of 32-128 ran within the noise of no chunking (1.4-1.6 ns per element; the hardware
    prefetcher streams the long buffers)."""
    L, d = u.shape[1], u.shape[2]
    n = A.shape[1]
    dtype = gu.dtype
    one = dtype.type(1)
    # Channels are walked in pairs (di, e = di + 1): the two share every load of B_t, C_t and every
    # read-modify-write of gB_t, gC_t, the inner loop's memory traffic. An odd last channel is paired with
    # itself, its second copy's cotangent scaled by 0 and its writes made first (so the real ones win).
    T = min(chunk, L)
    hs0, hs1 = np.empty((T + 1, n), dtype), np.empty((T + 1, n), dtype)  # hs[j + 1] = h_(t0 + j), hs[0] = h_(t0 - 1)
    dA0, dA1 = np.empty((T, n), dtype), np.empty((T, n), dtype)  # Ā_(t0 + j)
    g0, g1 = np.empty(n, dtype), np.empty(n, dtype)  # dLoss/dh_t, carried backwards
    gA0, gA1 = np.empty(n, dtype), np.empty(n, dtype)  # the channels' dA, local (an output array blocks vectorisation)
    ub, db, gyb = np.empty((d, L), dtype), np.empty((d, L), dtype), np.empty((d, L), dtype)
    _channel_major(u, bi, ub)
    _channel_major(delta, bi, db)
    if gate:  # out = y · silu(z): dL/dy = gout · silu(z), dL/dz = gout · y · silu'(z)
        for t in range(L):
            for di in range(d):
                zt = z[bi, t, di]
                sg = one / (one + _exp(-zt))
                go = gout[bi, t, di]
                gz[bi, t, di] = go * ys[bi, t, di] * sg * (one + zt * (one - sg))
                gyb[di, t] = go * zt * sg
    else:
        _channel_major(gout, bi, gyb)
    for di in range(0, d, 2):
        e = min(di + 1, d - 1)
        w1 = one if e != di else dtype.type(0)
        g0[:] = 0
        g1[:] = 0
        gA0[:] = 0
        gA1[:] = 0
        gD0, gD1 = dtype.type(0), dtype.type(0)
        for c in range((L - 1) // chunk, -1, -1):
            t0 = c * chunk
            T = min(chunk, L - t0)
            if c == 0:
                hs0[0, :] = 0
                hs1[0, :] = 0
            else:
                hs0[0, :] = ckpt[bi, di, c - 1, :]
                hs1[0, :] = ckpt[bi, e, c - 1, :]
            for j in range(T):  # recompute the pair's states in this chunk
                t = t0 + j
                dt0, dt1 = db[di, t], db[e, t]
                x0, x1 = dt0 * ub[di, t], dt1 * ub[e, t]
                for k in range(n):
                    a0, a1 = _exp(dt0 * A[di, k]), _exp(dt1 * A[e, k])
                    dA0[j, k], dA1[j, k] = a0, a1
                    bk = B[bi, t, k]
                    hs0[j + 1, k] = a0 * hs0[j, k] + x0 * bk
                    hs1[j + 1, k] = a1 * hs1[j, k] + x1 * bk
            for j in range(T - 1, -1, -1):
                t = t0 + j
                dt0, dt1 = db[di, t], db[e, t]
                u0, u1 = ub[di, t], ub[e, t]
                x0, x1 = dt0 * u0, dt1 * u1
                gy0, gy1 = gyb[di, t], gyb[e, t] * w1
                gD0 += gy0 * u0
                gD1 += gy1 * u1
                gx0, gx1, gd0, gd1 = dtype.type(0), dtype.type(0), dtype.type(0), dtype.type(0)
                for k in range(n):
                    ck, bk = C[bi, t, k], B[bi, t, k]
                    gk0 = g0[k] + ck * gy0  # g_t
                    gk1 = g1[k] + ck * gy1
                    gC[bi, t, k] += hs0[j + 1, k] * gy0 + hs1[j + 1, k] * gy1
                    gB[bi, t, k] += gk0 * x0 + gk1 * x1
                    gx0 += gk0 * bk
                    gx1 += gk1 * bk
                    gk0 = gk0 * dA0[j, k]  # Ā_t g_t: this step's share of g_{t-1}
                    gk1 = gk1 * dA1[j, k]
                    P0 = gk0 * hs0[j, k]  # dLoss/d(Δ_t A)
                    P1 = gk1 * hs1[j, k]
                    gA0[k] += P0 * dt0
                    gA1[k] += P1 * dt1
                    gd0 += P0 * A[di, k]
                    gd1 += P1 * A[e, k]
                    g0[k] = gk0
                    g1[k] = gk1
                # ub, db take gu, gdelta (values last read above; earlier chunks read only earlier tokens);
                # e first, so di wins if e == di
                ub[e, t] = gx1 * dt1 + gy1 * D[e]
                db[e, t] = gd1 + gx1 * u1
                ub[di, t] = gx0 * dt0 + gy0 * D[di]
                db[di, t] = gd0 + gx0 * u0
        for k in range(n):
            gA[e, k] += gA1[k]
            gA[di, k] += gA0[k]
        gD[e] += gD1
        gD[di] += gD0
    _batch_major(ub, gu, bi)
    _batch_major(db, gdelta, bi)


@njit(fastmath=True, cache=True, nogil=True)
def forward(u, delta, A, B, C, D, z, gate, out, ys, h_last, ckpt, chunk):
    for bi in range(u.shape[0]):
        _forward_batch(bi, u, delta, A, B, C, D, z, gate, out, ys, h_last, ckpt, chunk)


@njit(fastmath=True, cache=True, nogil=True)
def backward(u, delta, A, B, C, D, z, gate, ys, gout, gu, gdelta, gz, gA, gB, gC, gD, ckpt, chunk):
    """gA (d, n), gB, gC (b, l, n), gD (d,) accumulated: zeroed by the caller."""
    for bi in range(u.shape[0]):
        _backward_batch(bi, u, delta, A, B, C, D, z, gate, ys, gout, gu, gdelta, gz, gA, gB, gC, gD, ckpt, chunk)


@njit(fastmath=True, cache=True, parallel=True)
def forward_parallel(u, delta, A, B, C, D, z, gate, out, ys, h_last, ckpt, chunk):
    for bi in prange(u.shape[0]):
        _forward_batch(bi, u, delta, A, B, C, D, z, gate, out, ys, h_last, ckpt, chunk)


@njit(fastmath=True, cache=True, parallel=True)
def backward_parallel(u, delta, A, B, C, D, z, gate, ys, gout, gu, gdelta, gz, gA_rows, gB, gC, gD_rows, ckpt,
                      chunk):
    """As ``backward`` over batch rows in parallel; gA_rows (b, d, n) and gD_rows (b, d): one partial per
    row (summed by the caller), so no two threads write the same element."""
    for bi in prange(u.shape[0]):
        _backward_batch(bi, u, delta, A, B, C, D, z, gate, ys, gout, gu, gdelta, gz, gA_rows[bi], gB, gC,
                        gD_rows[bi], ckpt, chunk)


@njit(fastmath=True, cache=True, nogil=True)
def conv_silu_forward(x, wT, bias, pre, out):
    """Mamba's causal depthwise conv and its SiLU, batch-major: pre[b, t] = bias + Σ_k wT[k] x[b, t - K + 1 + k]
    (zeros before the first token), out = silu(pre). x (b, l, d) any strides; wT (K, d); pre, out (b, l, d).
    The loops run over channels innermost, contiguous in every array, so each tap is one vector FMA."""
    b, L, d = x.shape
    K = wT.shape[0]
    one = out.dtype.type(1)
    for bi in range(b):
        for t in range(L):
            for di in range(d):
                pre[bi, t, di] = bias[di]
            for k in range(max(0, K - 1 - t), K):
                s = t - (K - 1) + k
                for di in range(d):
                    pre[bi, t, di] += wT[k, di] * x[bi, s, di]
            for di in range(d):
                c = pre[bi, t, di]
                out[bi, t, di] = c / (one + _exp(-c))


@njit(fastmath=True, cache=True, nogil=True)
def conv_silu_backward(x, wT, pre, gout, gx, gwT, gbias):
    """Gradients of ``conv_silu_forward``: gx (b, l, d) written; gwT (K, d), gbias (d,) accumulated."""
    b, L, d = x.shape
    K = wT.shape[0]
    one = gx.dtype.type(1)
    gc = np.empty((L, d), gx.dtype)  # dLoss/dpre for one batch row
    for bi in range(b):
        for t in range(L):
            for di in range(d):
                c = pre[bi, t, di]
                sg = one / (one + _exp(-c))
                g = gout[bi, t, di] * sg * (one + c * (one - sg))
                gc[t, di] = g
                gbias[di] += g
        for s in range(L):  # x[s] feeds pre[s + K - 1 - k] through tap k
            for di in range(d):
                gx[bi, s, di] = 0
            for k in range(K):
                t = s + (K - 1) - k
                if t < L:
                    for di in range(d):
                        gx[bi, s, di] += wT[k, di] * gc[t, di]
                        gwT[k, di] += gc[t, di] * x[bi, s, di]
