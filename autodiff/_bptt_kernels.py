"""Fused sequential forward + backpropagation through time (BPTT) for the GTF loss.

The honest baseline of the paper's speed-ups: for every sequence of the batch (in parallel
over the batch, one thread per sequence) run the forced recurrence step after step, then walk
back through it with the model's per-step vector-Jacobian products. Everything for one
sequence happens in one compiled loop; nothing allocates per step.

The kernels take the model family's jitted per-step functions
(:class:`models._plrnn_kernels.StepFunctions`) as arguments, so one kernel serves every
family (the ALRNN / PLRNN; the shallow PLRNNs have a SIMD kernel of their own,
:mod:`autodiff._bptt_shplrnn`, 5-7x faster at L = 50). Numba cannot cache such a kernel
on disk (nor would a cache notice edits to the family's module), so it is compiled once per
process and per (family, dtype): about 6-10 s on the 2-core CI machine, separate from the
timed runs in ``bench/train.py``.

Index conventions as in :mod:`autodiff.gradients`: ``zt[t]`` is the forced state
``z~_t`` (the input of step ``t``), ``zp[t]`` the prediction ``z_{t+1} = F(z~_t)`` compared
with the data ``x[t] = x_{t+1}``.
"""

import numpy as np
from numba import prange

from parscan._jit import jit, jit_parallel


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
    T, N = x.shape
    M = z0.shape[0]
    c = 1.0 - alpha
    sse = 0.0
    for i in range(M):
        zt[0, i] = z0[i]
    for t in range(T):
        step(*args, zt[t], zp[t])
        for i in range(N):
            d = np.float64(zp[t, i]) - np.float64(x[t, i])
            sse += d * d
        if t + 1 < T:
            for i in range(M):
                zt[t + 1, i] = c * zp[t, i] + alpha * x[t, i] if i < n_forced else zp[t, i]
    for t in range(T - 1, -1, -1):
        for i in range(M):
            e = scale * (zp[t, i] - x[t, i]) if i < N else 0.0
            if t == T - 1:
                mu[i] = e
            else:
                mu[i] = e + (c * g[i] if i < n_forced else g[i])
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
