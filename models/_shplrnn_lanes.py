"""Lane-blocked CPU drivers of the shallow PLRNN family: ``F``, ``J`` and the parameter VJP
at many states, SIMD across states.

The per-step functions of :mod:`models.shplrnn` treat one state at a time; with the small
latent sizes of DSR (M = 3 ... 20) their inner loops are too short for the compiler to
vectorise, and a step with its full Jacobian costs about 2.4 us at M = 3, L = 100 (one
thread). Here :data:`LANES` states are transposed into ``(M, LANES)`` scratch and every
innermost loop runs over the lanes, so LLVM emits SIMD code for it. Measured with 2
threads: F and full J at L = 100 in float32 1.19 -> 0.089 us per state (13x), at L = 50 in
float64 0.39 -> 0.084 us; the parameter VJP at L = 100 1.66 -> 0.18 us. ``LANES = 64`` is
deliberate: with 16 or 32 lanes LLVM unrolls the short loops instead of vectorising them
and the gain mostly vanishes (measured: 16 lanes 1.8x, 64 lanes 13x).

Each lane performs exactly the operations of the per-step functions, in the same order, so
``F`` and ``J`` are bitwise equal to them (``tests/test_models.py`` checks it). The VJP
accumulates each lane in its own float64 row and sums the lanes at the end of a chunk of
positions: a fixed order, so the result does not depend on the number of threads.

Scratch is allocated once per chunk of positions; a lane beyond the end of the data is
filled with ``z = 0`` (and ``cot = 0`` for the VJP, so it contributes zero) and never
stored.
"""

import numpy as np
from numba import prange

from models._plrnn_kernels import EVAL_F, EVAL_F_DIAG, EVAL_F_FULL
from parscan._jit import jit, jit_parallel

#: States processed together by one thread.
LANES = 64
#: Most chunks of blocks an evaluation launch is split into (work items for ``prange``).
MAX_CHUNKS = 64


@jit
def _load(X, start, n, xt):
    """``xt[:, k] = X[start + k]`` for ``k < n``, zeros for the remaining lanes."""
    for k in range(LANES):
        for j in range(xt.shape[0]):
            xt[j, k] = X[start + k, j] if k < n else 0.0


@jit
def _hidden_unit(W2, h2, clipped, l, zt, s, up, sp, phi):
    """Pre-activation ``s = W2[l] z``, the relu indicators and ``phi`` of hidden unit ``l``
    for every lane (the per-step functions' expressions, lane by lane, ``-inf`` clamped to
    the lowest finite value as there)."""
    M = zt.shape[0]
    lo = np.finfo(zt.dtype).min
    w = W2[l, 0]
    for k in range(LANES):
        s[k] = w * zt[0, k]
    for j in range(1, M):
        w = W2[l, j]
        for k in range(LANES):
            s[k] += w * zt[j, k]
    hl = h2[l]
    for k in range(LANES):
        sk = s[k]
        sk = lo if sk < lo else sk
        u = sk + hl
        u = lo if u < lo else u
        up[k] = u > 0
        sp[k] = (sk > 0) & (clipped != 0)
        phi[k] = u * up[k] - sk * sp[k]


@jit
def _nan_states(zt, jt):
    """``jt[:, k] = zt[j, k]`` for every NaN ``zt[j, k]`` (the last one wins): a state with a
    NaN gets a NaN Jacobian, as from the per-step functions. The test of the whole block
    comes first (it vectorises; lane by lane cost 2-3 % of an evaluation at M = 3)."""
    nan = False
    for j in range(zt.shape[0]):
        for k in range(LANES):
            nan |= zt[j, k] != zt[j, k]
    if not nan:
        return
    for k in range(LANES):
        for j in range(zt.shape[0]):
            if zt[j, k] != zt[j, k]:
                for r in range(jt.shape[0]):
                    jt[r, k] = zt[j, k]


@jit
def _eval_block(A, W1, W2, h1, h2, clipped, zt, ft, jt, mode, s, up, sp, phi, wk):
    """``ft = F(zt)`` lane by lane, and the full Jacobian (``jt`` of shape (M*M, LANES),
    row ``i*M + j`` = dF_i/dz_j) or its diagonal (``jt`` of shape (M, LANES))."""
    M = zt.shape[0]
    for i in range(M):
        a = A[i]
        c = h1[i]
        for k in range(LANES):
            ft[i, k] = a * zt[i, k] + c
    if mode == EVAL_F_FULL:
        for r in range(M * M):
            for k in range(LANES):
                jt[r, k] = 0.0
        for i in range(M):
            for k in range(LANES):
                jt[i * M + i, k] = A[i]
    elif mode == EVAL_F_DIAG:
        for i in range(M):
            for k in range(LANES):
                jt[i, k] = A[i]
    for l in range(h2.shape[0]):
        _hidden_unit(W2, h2, clipped, l, zt, s, up, sp, phi)
        for i in range(M):
            w1 = W1[i, l]
            for k in range(LANES):
                ft[i, k] += w1 * phi[k]
            if mode == EVAL_F_FULL:
                for k in range(LANES):
                    wk[k] = w1 * up[k] - w1 * sp[k]
                for j in range(M):
                    w2 = W2[l, j]
                    for k in range(LANES):
                        jt[i * M + j, k] += wk[k] * w2
            elif mode == EVAL_F_DIAG:
                d = w1 * W2[l, i]
                for k in range(LANES):
                    jt[i, k] += d * up[k] - d * sp[k]
    if mode != EVAL_F:
        _nan_states(zt, jt)


@jit
def _eval_blocks(A, W1, W2, h1, h2, clipped, Z, F, J, mode, first, stop):
    """Evaluate blocks ``first .. stop-1`` of ``LANES`` positions each."""
    n, M = Z.shape
    dt = Z.dtype
    zt = np.empty((M, LANES), dt)
    ft = np.empty((M, LANES), dt)
    jt = np.empty((J.shape[1], LANES), dt)
    v = np.empty((5, LANES), dt)  # s, up, sp, phi, wk
    for blk in range(first, stop):
        start = blk * LANES
        cnt = min(LANES, n - start)
        _load(Z, start, cnt, zt)
        _eval_block(A, W1, W2, h1, h2, clipped, zt, ft, jt, mode, v[0], v[1], v[2], v[3], v[4])
        for k in range(cnt):
            for i in range(M):
                F[start + k, i] = ft[i, k]
            for r in range(J.shape[1]):
                J[start + k, r] = jt[r, k]


@jit_parallel
def eval_kernel(A, W1, W2, h1, h2, clipped, Z, F, J, mode):
    """``F[p] = F(Z[p])`` and ``J[p]`` (flattened (M*M,), (M,) diagonal, or (0,)), parallel
    over chunks of blocks of positions.

    Parameters
    ----------
    A, W1, W2, h1, h2, clipped
        ``model.kernel_args()``.
    Z : ndarray, shape (n, M)
        States (C-contiguous, model dtype).
    F : ndarray, shape (n, M)
        Output.
    J : ndarray, shape (n, K)
        Output; ``K = M*M`` (``mode = 2``), ``M`` (``mode = 1``) or 0 (``mode = 0``).
    mode : int
        0: ``F`` only; 1: ``F`` and the Jacobian diagonal; 2: ``F`` and the full Jacobian.
    """
    n_blocks = (Z.shape[0] + LANES - 1) // LANES
    n_chunks = min(n_blocks, MAX_CHUNKS)
    for c in prange(n_chunks):
        _eval_blocks(
            A, W1, W2, h1, h2, clipped, Z, F, J, mode,
            c * n_blocks // n_chunks, (c + 1) * n_blocks // n_chunks,
        )  # fmt: skip


@jit
def _simulate_blocks(A, W1, W2, h1, h2, clipped, Z0, out, first, stop):
    """Free runs of blocks ``first .. stop-1`` of ``LANES`` starting states:
    ``out[p, t] = F^(t+1)(Z0[p])``, each step of a block one :func:`_eval_block` (``F`` only,
    bitwise the per-step function's)."""
    n, M = Z0.shape
    dt = Z0.dtype
    zt = np.empty((M, LANES), dt)
    ft = np.empty((M, LANES), dt)
    jt = np.empty((0, LANES), dt)
    v = np.empty((5, LANES), dt)  # s, up, sp, phi, wk (rows: C-contiguous for SIMD)
    for blk in range(first, stop):
        start = blk * LANES
        cnt = min(LANES, n - start)
        _load(Z0, start, cnt, zt)
        for t in range(out.shape[1]):
            _eval_block(
                A, W1, W2, h1, h2, clipped, zt, ft, jt, EVAL_F, v[0], v[1], v[2], v[3], v[4]
            )
            for k in range(cnt):
                for i in range(M):
                    out[start + k, t, i] = ft[i, k]
            zt, ft = ft, zt


@jit_parallel
def simulate_kernel(A, W1, W2, h1, h2, clipped, Z0, out):
    """Free runs ``out[p, t] = F^(t+1)(Z0[p])`` (``Z0`` (n, M), ``out`` (n, n_steps, M)),
    ``LANES`` runs stepped together, parallel over chunks of blocks of runs."""
    n_blocks = (Z0.shape[0] + LANES - 1) // LANES
    n_chunks = min(n_blocks, MAX_CHUNKS)
    for c in prange(n_chunks):
        _simulate_blocks(
            A, W1, W2, h1, h2, clipped, Z0, out,
            c * n_blocks // n_chunks, (c + 1) * n_blocks // n_chunks,
        )  # fmt: skip


@jit
def _vjp_block(A, W1, W2, h1, h2, clipped, zt, ct, acc, s, up, sp, phi, a, g):
    """``acc[:, k] += (dF/dtheta at zt[:, k])^T ct[:, k]`` (float64 rows in the flat order
    A, W1, W2, h1, h2)."""
    M = zt.shape[0]
    L = h2.shape[0]
    o_w1 = M
    o_w2 = M + M * L
    o_h1 = M + 2 * M * L
    o_h2 = 2 * M + 2 * M * L
    for i in range(M):
        for k in range(LANES):
            acc[i, k] += ct[i, k] * zt[i, k]
            acc[o_h1 + i, k] += ct[i, k]
    for l in range(L):
        _hidden_unit(W2, h2, clipped, l, zt, s, up, sp, phi)
        w = W1[0, l]
        for k in range(LANES):
            a[k] = w * ct[0, k]
        for i in range(1, M):
            w = W1[i, l]
            for k in range(LANES):
                a[k] += w * ct[i, k]
        for i in range(M):
            r = o_w1 + i * L + l
            for k in range(LANES):
                acc[r, k] += ct[i, k] * phi[k]
        for k in range(LANES):
            ap = a[k] * up[k]
            acc[o_h2 + l, k] += ap
            g[k] = ap - a[k] * sp[k]
        for j in range(M):
            r = o_w2 + l * M + j
            for k in range(LANES):
                acc[r, k] += g[k] * zt[j, k]


@jit
def vjp_chunk(A, W1, W2, h1, h2, clipped, Z, C, start, stop, grad):
    """``grad += sum over p in [start, stop) of (dF/dtheta at Z[p])^T C[p]`` (``grad``
    float64, at least ``n_map_params`` long)."""
    M = Z.shape[1]
    dt = Z.dtype
    n_map = 2 * M + 2 * M * h2.shape[0] + h2.shape[0]
    acc = np.zeros((n_map, LANES), np.float64)
    zt = np.empty((M, LANES), dt)
    ct = np.empty((M, LANES), dt)
    v = np.empty((6, LANES), dt)  # s, up, sp, phi, a, g
    for first in range(start, stop, LANES):
        cnt = min(LANES, stop - first)
        _load(Z, first, cnt, zt)
        _load(C, first, cnt, ct)
        _vjp_block(A, W1, W2, h1, h2, clipped, zt, ct, acc, v[0], v[1], v[2], v[3], v[4], v[5])
    for r in range(n_map):
        total = acc[r, 0]
        for k in range(1, LANES):
            total += acc[r, k]
        grad[r] += total


@jit_parallel
def vjp_kernel(A, W1, W2, h1, h2, clipped, Z, C, G):
    """Row ``c`` of ``G`` (float64, zero on entry) += the parameter VJP summed over chunk
    ``c`` of the positions (``G.shape[0]`` equal chunks), parallel over chunks."""
    n = Z.shape[0]
    n_chunks = G.shape[0]
    for c in prange(n_chunks):
        vjp_chunk(
            A, W1, W2, h1, h2, clipped, Z, C, c * n // n_chunks, (c + 1) * n // n_chunks, G[c]
        )
