"""Fused sequential forward + backpropagation through time (BPTT) for the GTF loss.

The honest baseline of the paper's speed-ups: for every sequence of the batch (in parallel
over the batch, one thread per sequence) run the forced recurrence step after step, then walk
back through it with the model's per-step vector-Jacobian products. Everything for one
sequence happens in one compiled loop; nothing allocates per step.

The kernels take the model family's jitted per-step functions
(:class:`models._plrnn_kernels.StepFunctions`) as arguments, so one kernel serves every
model that provides them -- the path of a model from outside ``models/``; the families of
``models/`` have SIMD kernels of their own (:mod:`autodiff._bptt_shplrnn`, 9-10x faster at
L = 50; :mod:`autodiff._bptt_alrnn`, 1.6-4x at M = 20). Numba cannot cache such a kernel on
disk (nor would a cache notice edits to the family's module), so it is compiled once per
process and per (family, dtype): about 6-10 s on the 2-core CI machine.

:func:`forward_tail` and :func:`prediction_cotangent` are the GTF bookkeeping all BPTT
kernels share.

Index conventions as in :mod:`autodiff.gradients`: ``zt[t]`` is the forced state
``z~_t`` (the input of step ``t``), ``zp[t]`` the prediction ``z_{t+1} = F(z~_t)`` compared
with the data ``x[t] = x_{t+1}``.
"""

import numpy as np
from numba import prange

from parscan._jit import jit, jit_parallel

#: fastmath flags of the SIMD BPTT kernels: reassociate sums so that they vectorise and fuse
#: multiply-adds. No ``nnan``/``ninf``: NaN and inf propagate as in the rest of the project.
SIMD_FASTMATH = {"reassoc", "contract"}


@jit(fastmath=SIMD_FASTMATH)
def diagonal_plus_matvec(A, Wm, h, v, zt, zp, t):
    """``zp[t] = A * zt[t] + h + Wm v``: the prediction of a step whose nonlinear part is a
    matrix ``Wm`` (M, K), rows contiguous, times the activations ``v`` (K,). The sums over
    ``K`` are reassociated so that they vectorise."""
    K = v.shape[0]
    for i in range(Wm.shape[0]):
        acc = Wm[i, 0] * v[0]
        for k in range(1, K):
            acc += Wm[i, k] * v[k]
        zp[t, i] = A[i] * zt[t, i] + h[i] + acc


@jit
def forward_tail(zt, zp, x, t, alpha, n_forced, sse):
    """After step ``t`` of the forward: add the squared errors of the prediction ``zp[t]``
    against ``x[t]`` to ``sse`` (float64) and write the forced state
    ``zt[t+1] = (I - alpha P) zp[t] + alpha P x[t]`` (when ``t + 1 < T``); returns ``sse``."""
    T, N = x.shape
    for i in range(N):
        d = np.float64(zp[t, i]) - np.float64(x[t, i])
        sse += d * d
    if t + 1 < T:
        c = 1.0 - alpha
        for i in range(zt.shape[1]):
            zt[t + 1, i] = c * zp[t, i] + alpha * x[t, i] if i < n_forced else zp[t, i]
    return sse


@jit
def prediction_cotangent(zp, x, t, alpha, n_forced, scale, g, mu):
    """``mu = e_t + (I - alpha P) g``: the cotangent of the prediction ``zp[t]``, from its
    error ``e_t = scale * [zp[t, :N] - x[t]; 0]`` and ``g``, the cotangent of ``zt[t+1]``
    (ignored at ``t = T-1``)."""
    T, N = x.shape
    c = 1.0 - alpha
    for i in range(mu.shape[0]):
        e = scale * (zp[t, i] - x[t, i]) if i < N else 0.0
        if t == T - 1:
            mu[i] = e
        else:
            mu[i] = e + (c * g[i] if i < n_forced else g[i])


@jit(cache=False)
def _bptt_one(
    step, vjp_state, vjp_params, args, z0, x, alpha, n_forced, scale, zt, zp, mu, g, grad
):
    """Forward + backward for one sequence; returns its summed squared error (float64).

    Forward: ``zp[t] = F(zt[t])``, ``zt[t+1] = (I - alpha P) zp[t] + alpha P x[t]``.
    Backward (``mu`` = cotangent of ``zp[t]``, ``g`` = cotangent of ``zt[t]``)::

        mu_t = e_t + (I - alpha P) g_{t+1},   e_t = scale * [zp[t, :N] - x[t]; 0]
        grad += (dF/dtheta at zt[t])^T mu_t,  g_t = (dF/dz at zt[t])^T mu_t

    On return ``g`` holds ``d loss / d z~_0``.
    """
    T = x.shape[0]
    sse = 0.0
    for i in range(z0.shape[0]):
        zt[0, i] = z0[i]
    for t in range(T):
        step(*args, zt[t], zp[t])
        sse = forward_tail(zt, zp, x, t, alpha, n_forced, sse)
    for t in range(T - 1, -1, -1):
        prediction_cotangent(zp, x, t, alpha, n_forced, scale, g, mu)
        vjp_params(*args, zt[t], mu, grad)
        vjp_state(*args, zt[t], mu, g)
    return sse


@jit_parallel(cache=False)
def gtf_bptt(
    step, vjp_state, vjp_params, args, Z0, X, alpha, n_forced, scale, Zt, Zp, Mu, G0, G, sse
):
    """Sequential GTF forward + BPTT for a batch, parallel over the sequences.

    Parameters
    ----------
    step, vjp_state, vjp_params : jitted per-step functions of the model family
        ``step(*args, z, out)``, ``vjp_state(*args, z, cot, out)``,
        ``vjp_params(*args, z, cot, grad)`` (accumulating).
    args : tuple
        ``model.kernel_args()``.
    Z0 : ndarray, shape (B, M)
        Initial states ``z~_0``.
    X : ndarray, shape (B, T, N)
        Data ``x_1 .. x_T``.
    alpha : ndarray, shape (B,), float64
        GTF parameter per sequence.
    n_forced : int
        Number of forced latents (<= N).
    scale : float
        ``d loss / d (z_t - x_t) = scale * (z_t - x_t)``, i.e. ``2 / (B T N)``.
    Zt, Zp : ndarray, shape (B, T, M)
        Scratch: forced states and predictions (model dtype); hold the trajectory on return.
    Mu : ndarray, shape (B, M)
        Scratch, model dtype.
    G0 : ndarray, shape (B, M)
        Output: ``d loss / d z~_0`` per sequence (model dtype).
    G : ndarray, shape (B, n_map_params), float64, zero on entry
        Output: parameter gradient of the map per sequence.
    sse : ndarray, shape (B,), float64
        Output: summed squared error per sequence.
    """
    for b in prange(Z0.shape[0]):
        sse[b] = _bptt_one(
            step, vjp_state, vjp_params, args, Z0[b], X[b], alpha[b], n_forced, scale,
            Zt[b], Zp[b], Mu[b], G0[b], G[b],
        )  # fmt: skip
