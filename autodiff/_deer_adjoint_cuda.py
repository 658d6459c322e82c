"""The GTF-DEER loss and gradient on the GPU, from a Newton solve that stayed there
(``gtf_loss_and_grad(method="deer", backend="cuda")`` for models that evaluate ``F`` and
``J`` on the GPU).

Imported lazily by :mod:`autodiff.gradients`. The states never leave the device: with
``zext = [z~_0; z~_1 .. z~_T]`` (B, T+1, M) one evaluation gives every prediction
``z_t = F(zext[t-1])`` and every Jacobian ``J_F(zext[t])``, and one reverse scan over the
``T + 1`` positions gives the adjoint (module docstring of :mod:`autodiff.gradients`; GTF-DEER:
Hess, Goetz & Durstewitz, arXiv:2605.12683)::

    h[t] = a[t]^T h[t+1] + s[t],   h[T+1] = 0,   t = T .. 0
    a[t] = J_F(zext[t]) (I - alpha P) for t >= 1,   a[0] = J_F(z~_0)
    s[0] = 0,   s[t] = d loss / d z_t

so ``h[t] = mu_t`` for ``t = 1..T`` and ``h[0] = J_F(z~_0)^T mu_1`` is the cotangent of
``z~_0`` (``a[T]`` only ever multiplies ``h[T+1] = 0``). Then ``model.param_vjp`` over the
pairs ``(zext[t-1], mu_t)``. Launches: shift, F + J, loss and seed, column scaling, scan, two
window copies, VJP (+ its sum). Downloads: the loss partial sums' total, the gradient and
``h[0]`` (B x M).
"""

import numba
import numpy as np

from models._cuda_eval import sum_rows
from parscan import _cuda
from parscan._cuda import cuda
from parscan._deer_cuda import launch_grid, shift_device
from parscan.scan import linear_scan


@cuda.jit
def _loss_and_seed(F, forcing, scale, seed, partial):
    """``seed[i, t] = scale * (F[i, t-1, :N] - forcing[i, t-1])`` for ``t >= 1`` (zero at
    ``t = 0`` and in the latents beyond ``N``); every thread adds its squared residuals in
    float64 into ``partial[0, thread]``."""
    B, T1, M = seed.shape
    N = forcing.shape[2]
    acc = 0.0
    gid = cuda.grid(1)
    for e in range(gid, B * T1 * M, cuda.gridsize(1)):
        i = e // (T1 * M)
        rest = e - i * (T1 * M)
        t = rest // M
        c = rest - t * M
        if t == 0 or c >= N:
            seed[i, t, c] = 0
        else:
            r = F[i, t - 1, c] - forcing[i, t - 1, c]
            seed[i, t, c] = r * scale
            acc += numba.float64(r) * numba.float64(r)
    partial[0, gid] = acc


@cuda.jit
def _scale_forced_columns(a, keep, n_forced):
    """``a[i, t, :, c] *= keep[i]`` for ``t >= 1`` and ``c < n_forced``: ``J_F (I - alpha P)``
    in place at the forced states (``t = 0`` is ``z~_0``, which is not forced)."""
    B, T1, M = a.shape[0], a.shape[1], a.shape[2]
    T = T1 - 1
    for e in range(cuda.grid(1), B * T * M * n_forced, cuda.gridsize(1)):
        c = e % n_forced
        rest = e // n_forced
        r = rest % M
        p = rest // M
        i = p // T
        a[i, 1 + p - i * T, r, c] *= keep[i]


@cuda.jit
def _window(src, start, dst):
    """``dst[i, t] = src[i, start + t]``: a contiguous copy of a time window."""
    B, T, M = dst.shape
    for e in range(cuda.grid(1), B * T * M, cuda.gridsize(1)):
        i = e // (T * M)
        rest = e - i * (T * M)
        t = rest // M
        dst[i, t, rest - t * M] = src[i, start + t, rest - t * M]


def kernel_signatures(dtype) -> list:
    """``(python function, signature)`` of this module's kernels for ``dtype`` (for
    ``cuda.compile_ptx`` in the tests)."""
    dt = numba.from_dtype(np.dtype(dtype))
    a3 = dt[:, :, ::1]
    return [
        (_loss_and_seed.py_func, (a3, a3, dt, a3, numba.float64[:, ::1])),
        (_scale_forced_columns.py_func, (dt[:, :, :, ::1], dt[::1], numba.int64)),
        (_window.py_func, (a3, numba.int64, a3)),
    ]


def _window_copy(src, start: int, length: int):
    """A new C-contiguous device array ``src[:, start : start + length]``."""
    B, _, M = src.shape
    dst = cuda.device_array((B, length, M), src.dtype)
    _window[launch_grid(dst.size)](src, start, dst)
    return dst


def deer_loss_and_grad_cuda(model, work, z0, keep, n_forced):
    """GTF loss, parameter gradient of the map and ``d loss / d z~_0``, on the GPU.

    Parameters
    ----------
    model : PiecewiseLinearRNN
        A model with ``supports_cuda_eval``.
    work : parscan._deer_cuda.DeviceNewton
        The converged solve's buffers: :meth:`device_states` (B, T, M) and ``forcing``
        (B, T, N), on the GPU.
    z0 : ndarray, shape (B, M)
        Initial states ``z~_0`` (host).
    keep : ndarray, shape (B,)
        ``1 - alpha`` per sequence, model dtype.
    n_forced : int
        Number of forced latents.

    Returns
    -------
    loss : float
        Mean squared error of the predictions over (B, T, N), summed in float64 (in another
        order than the host's ``np.mean``: equal to rounding).
    grad : ndarray, shape (n_params,)
        ``sum_t (dF/dtheta at z~_{t-1})^T mu_t`` (model dtype, host; zero ``L0`` block).
    g0 : ndarray, shape (B, M)
        ``J_F(z~_0)^T mu_1``, the cotangent of ``z~_0``.
    """
    states = work.device_states()
    B, T, M = states.shape
    N = work.forcing.shape[2]
    dtype = np.dtype(states.dtype)
    zext = cuda.device_array((B, T + 1, M), dtype)
    shift_device(states, _cuda.to_device(z0), zext)
    F, J = model.step_and_jacobian(zext)
    seed = cuda.device_array((B, T + 1, M), dtype)
    blocks, threads = launch_grid(seed.size)
    partial = cuda.device_array((1, blocks * threads), np.float64)
    scale = dtype.type(2.0 / (B * T * N))
    _loss_and_seed[blocks, threads](F, work.forcing, scale, seed, partial)
    total = sum_rows(partial)
    if n_forced:
        grid = launch_grid(B * T * M * n_forced)
        _scale_forced_columns[grid](J, _cuda.to_device(keep), n_forced)
    h = linear_scan(J, seed, reverse=True, transpose=True, backend="cuda")
    grad = model.param_vjp(_window_copy(zext, 0, T), _window_copy(h, 1, T))
    g0 = _window_copy(h, 0, 1).copy_to_host()[:, 0]
    loss = float(total.copy_to_host()[0]) / (B * T * N)
    return loss, grad, g0
