"""The adjoint of the GTF-DEER gradient on the GPU (``gtf_loss_and_grad(method="deer",
backend="cuda")`` for models that evaluate ``F`` and ``J`` on the GPU).

Imported lazily by :mod:`autodiff.gradients`. The same three steps as the host adjoint
(module docstring of :mod:`autodiff.gradients`; GTF-DEER: Hess, Goetz & Durstewitz,
arXiv:2605.12683), with every ``(B, T)``-sized array on the device::

    J_F(z~_t)                       model.step_and_jacobian on the states   models._cuda_eval
    a_t = J_F(z~_t) (I - alpha P)   forced columns scaled in place          _scale_forced_columns
    mu = reverse scan of (a^T, e)   one linear_scan                         parscan._cuda
    grad = sum_t dF/dtheta^T mu_t   model.param_vjp on device arrays        models._cuda_eval

Uploads: the states, the loss seed ``e`` and ``z0``; downloads: the gradient and ``mu_1`` of
every sequence.
"""

import numpy as np
from numba import cuda

from parscan import _cuda
from parscan._deer_cuda import launch_grid, shift_device
from parscan.scan import linear_scan


@cuda.jit
def _scale_forced_columns(a, keep, n_forced):
    """``a[i, t, :, c] *= keep[i]`` for ``c < n_forced``: ``J_F (I - alpha P)`` in place."""
    B, T, M = a.shape[0], a.shape[1], a.shape[2]
    for e in range(cuda.grid(1), B * T * M * n_forced, cuda.gridsize(1)):
        c = e % n_forced
        rest = e // n_forced
        r = rest % M
        p = rest // M
        i = p // T
        a[i, p - i * T, r, c] *= keep[i]


def deer_adjoint_cuda(model, z0, states, e, keep, n_forced):
    """Parameter gradient of the map and ``mu_1`` from converged DEER states, on the GPU.

    Parameters
    ----------
    model : PiecewiseLinearRNN
        A model with ``supports_cuda_eval``.
    z0 : ndarray, shape (B, M)
        Initial states ``z~_0``.
    states : ndarray, shape (B, T, M)
        Converged forced states ``z~_1 .. z~_T``.
    e : ndarray, shape (B, T, M)
        ``d loss / d z_t`` (the direct term of the adjoint).
    keep : ndarray, shape (B,)
        ``1 - alpha`` per sequence, model dtype.
    n_forced : int
        Number of forced latents.

    Returns
    -------
    grad : ndarray, shape (n_params,)
        ``sum_t (dF/dtheta at z~_{t-1})^T mu_t`` (model dtype, host; zero ``L0`` block).
    mu1 : ndarray, shape (B, M)
        ``mu_1``, the cotangent of the first prediction (for the initial-state gradient).
    """
    B, T, M = states.shape
    d_states = _cuda.to_device(states)
    d_zprev = cuda.device_array((B, T, M), states.dtype)
    shift_device(d_states, _cuda.to_device(z0), d_zprev)
    _, d_a = model.step_and_jacobian(d_states)
    if n_forced:
        grid = launch_grid(B * T * M * n_forced)
        _scale_forced_columns[grid](d_a, _cuda.to_device(keep), n_forced)
    d_mu = linear_scan(d_a, _cuda.to_device(e), reverse=True, transpose=True, backend="cuda")
    grad = model.param_vjp(d_zprev, d_mu)
    mu1 = np.stack([d_mu[i, 0].copy_to_host() for i in range(B)])
    return grad, mu1
