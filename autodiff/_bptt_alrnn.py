"""Fused sequential forward + BPTT of the GTF loss for the ALRNN / PLRNN family, SIMD over
the latents.

The family's per-step functions (:mod:`models.alrnn`) walk ``W`` column by column (their
Jacobian is written row-major from them), which is strided and does not vectorise; through
the generic kernel of :mod:`autodiff._bptt_kernels` a step of the ECG-sized ALRNN (M = 20)
costs about 0.7 us per sequence and the kernel, which takes function arguments, is
recompiled (4-10 s) in every process. Here every loop over the latents is innermost and runs
along a row of ``W``: the forward sums ``W phi`` (one row per output, compiled with
``fastmath`` reassociation so that they vectorise), the backward accumulates ``W^T mu`` row
by row (elementwise, no reassociation needed) and the outer product ``mu phi^T`` into the
gradient of ``W``. The zero diagonal of a PLRNN's ``W`` is applied once, at the end, to the
accumulated gradient (the per-step functions multiply each term by 0, the same result).
Results agree with the per-step functions to rounding; deterministic; cached on disk.

Same maths, conventions and outputs as :func:`autodiff._bptt_kernels.gtf_bptt` (ALRNN:
Brenner et al., NeurIPS 2024; GTF: Hess et al., ICML 2023).
"""

import numpy as np
from numba import prange

from autodiff._bptt_kernels import (
    SIMD_FASTMATH,
    diagonal_plus_matvec,
    forward_tail,
    prediction_cotangent,
)
from models.alrnn import activation_row
from parscan._jit import jit, jit_parallel


@jit(fastmath=SIMD_FASTMATH)
def _sequence(
    A, W, h, n_linear, z0, x, alpha, n_forced, scale, zt, zp, mu, g, gA, gW, gh, phi, on, acc,
):  # fmt: skip
    """Forward + backward of one sequence; returns its summed squared error (float64).

    ``phi, on, acc`` are (M,) scratch of the model dtype; ``gA, gW, gh`` float64
    accumulators. On return ``g`` holds ``d loss / d z~_0``.
    """
    T = x.shape[0]
    M = W.shape[0]
    sse = 0.0
    for i in range(M):
        zt[0, i] = z0[i]
    for t in range(T):
        activation_row(zt, t, n_linear, phi, on)
        diagonal_plus_matvec(A, W, h, phi, zt, zp, t)
        sse = forward_tail(zt, zp, x, t, alpha, n_forced, sse)
    for t in range(T - 1, -1, -1):
        prediction_cotangent(zp, x, t, alpha, n_forced, scale, g, mu)
        activation_row(zt, t, n_linear, phi, on)
        for j in range(M):
            acc[j] = 0.0
        for i in range(M):
            mi = mu[i]
            gA[i] += mi * zt[t, i]
            gh[i] += mi
            for j in range(M):
                gW[i, j] += mi * phi[j]
                acc[j] += W[i, j] * mi
        for j in range(M):
            g[j] = A[j] * mu[j] + acc[j] * on[j]
    return sse


@jit_parallel(fastmath=SIMD_FASTMATH)
def gtf_bptt_alrnn(A, W, h, P, zero_diag, Z0, X, alpha, n_forced, scale, Zt, Zp, Mu, G0, G, sse):
    """Sequential GTF forward + BPTT of an ALRNN / PLRNN batch, parallel over the sequences.

    Parameters
    ----------
    A, W, h, P, zero_diag : model parameters as in ``model.kernel_args()``
        ``A`` (M,), ``W`` (M, M), ``h`` (M,), ``P`` relu units (the last ones), ``zero_diag``
        1 for the PLRNN (no gradient on ``diag(W)``).
    Z0, X, alpha, n_forced, scale, Zt, Zp, Mu, G0, sse
        As :func:`autodiff._bptt_kernels.gtf_bptt`.
    G : ndarray, shape (B, n_map_params), float64
        Output: parameter gradient of the map per sequence, blocks A, W (row-major), h.
    """
    B = Z0.shape[0]
    M = W.shape[0]
    for b in prange(B):
        gA = np.zeros(M)
        gW = np.zeros((M, M))
        gh = np.zeros(M)
        v = np.empty((3, M), W.dtype)
        sse[b] = _sequence(
            A, W, h, M - P, Z0[b], X[b], alpha[b], n_forced, scale, Zt[b], Zp[b], Mu[b],
            G0[b], gA, gW, gh, v[0], v[1], v[2],
        )  # fmt: skip
        Gb = G[b]
        for i in range(M):
            Gb[i] = gA[i]
            Gb[M + M * M + i] = gh[i]
            for j in range(M):
                Gb[M + i * M + j] = 0.0 if zero_diag != 0 and i == j else gW[i, j]
