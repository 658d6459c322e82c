"""Teacher-forced loss of the linear-recurrence SSMs and its explicit adjoint gradient.

For windows ``x_0 .. x_T`` the model (:class:`models.ssm.DiagonalSSM`) runs

    h_t = a_t ⊙ h_{t-1} + b_t,   h_0 = 0          (one forward linear_scan)
    x̂_t = readout(h_t, x_{t-1})
    loss = mean over (B, T, N) of (x̂_t - x_t)²    (the convention of the GTF loss)

and the gradient is the adjoint of that recurrence (DESIGN.md section 5, without forcing)::

    g_h_t = (∂x̂_t/∂h_t)^H e_t                     readout VJP, all (B, T) at once
    μ_t   = g_h_t + conj(a_{t+1}) ⊙ μ_{t+1},  μ_{T+1} = 0      (one reverse linear_scan)
    g_a_t = μ_t ⊙ conj(h_{t-1}),   g_b_t = μ_t                 cotangents of the coefficients
    ∇θ    = Σ_{B,T} (∂(a_t, b_t)/∂θ)^T (g_a_t, g_b_t) + readout terms

With complex states the cotangent of ``z`` is ``∂L/∂Re z + i ∂L/∂Im z``; for ``w = c z`` it
propagates as ``conj(c) g_w``, hence the ``conj(λ)`` in the reverse scan of the LRU (Orvieto et
al., ICML 2023). Selective (Mamba/S6; Gu & Dao, 2023) models are real, where ``conj`` is a no-op.
"""

import numpy as np

from models._checks import check_finite_windows
from models.ssm import DiagonalSSM
from parscan.scan import linear_scan


def ssm_loss_and_grad(model, data, *, backend: str = "auto") -> tuple[float, np.ndarray, dict]:
    """Teacher-forced MSE loss of an SSM and its exact gradient (explicit adjoint).

    Parameters
    ----------
    model : models.LinearSSM or models.SelectiveSSM
        Any :class:`models.ssm.DiagonalSSM`.
    data : array_like, shape (B, T+1, N)
        Windows ``x_0 .. x_T`` in the model's dtype, finite, ``B >= 1``, ``T >= 1``. More
        leading batch dimensions ``(..., B, T+1, N)`` are flattened into ``B``; a single
        window ``(T+1, N)`` is refused (pass ``data[None]``).
    backend : {"auto", "sequential", "cpu", "cuda"}
        Backend of the forward and the reverse :func:`parscan.linear_scan`.

    Returns
    -------
    loss : float
        Mean of the squared errors over the batch, time steps ``1..T`` and the ``N`` dims.
    grad : ndarray, shape (n_params,)
        Gradient with respect to ``model.params`` (dtype ``model.dtype``). A NaN parameter
        propagates into ``loss`` and ``grad``; an infinite ``nu``, ``log_A``, or ``theta`` or
        ``b_delta`` of -inf, acts as its limit (``λ`` or ``a`` 0 or ``|λ|`` 1, a phase or
        step size 0), with finite results and a zero gradient there (:func:`autodiff.fit`
        refuses non-finite parameters before it starts).
    info : dict
        Exactly four entries: ``"method"``, always the str ``"scan"``; ``"backend"``, the str
        ``backend`` as passed (``"auto"`` stays ``"auto"``: it picks per scan); ``"batch"``,
        the int number of windows B (after flattening); ``"T"``, the int number of predicted
        steps per window.

    Raises
    ------
    TypeError
        Not an SSM; data of another dtype than the model's.
    ValueError
        Data of another shape (fewer than 3 dimensions, ``N != model.n_obs``, ``T < 1``), no
        windows (``B = 0``), NaN/inf in the data (the first one is located), an unknown or
        unavailable backend. Messages start with ``ssm_loss_and_grad:``.
    """
    where = "ssm_loss_and_grad"
    if not isinstance(model, DiagonalSSM):
        raise TypeError(
            f"{where}: model must be a LinearSSM or SelectiveSSM; got "
            f"{type(model).__name__}. Use autodiff.gtf_loss_and_grad for latent RNNs."
        )
    data = model._check_windows(data, where, "data")
    if data.ndim < 3:
        raise ValueError(
            f"{where}: data must have shape (B, T+1, N) with B >= 1, T >= 1 and N = "
            f"model.n_obs = {model.n_obs}; got {data.shape}. Use data[None] for one window."
        )
    if data.size == 0:
        raise ValueError(
            f"{where}: data of shape {data.shape} holds no windows; pass at least one window "
            "(B >= 1)."
        )
    check_finite_windows(data, where)
    try:
        trace = model.forward(data, backend=backend)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{where}: {exc}") from None
    target = data.reshape(-1, *data.shape[-2:])[:, 1:, :]
    err = trace.pred - target
    loss = float(np.mean(np.square(err, dtype=np.float64)))

    grad = np.zeros(model.n_params, dtype=model.dtype)
    g_y = model.readout_vjp(trace, err * (2.0 / err.size), grad)
    g_h = model.features_vjp(trace, g_y, grad)

    # Reverse scan: μ_t = g_h_t + conj(a_{t+1}) μ_{t+1}; the last step never multiplies anything.
    a = np.broadcast_to(trace.a, g_h.shape)
    a_next = np.empty_like(g_h)
    a_next[:, :-1] = np.conj(a[:, 1:])
    a_next[:, -1] = 0.0
    mu = linear_scan(a_next, g_h, reverse=True, backend=backend)

    h_prev = np.empty_like(trace.h)
    h_prev[:, 0] = 0.0
    h_prev[:, 1:] = trace.h[:, :-1]
    g_a = mu * np.conj(h_prev)
    model.recurrence_vjp(trace, g_a, mu, grad)
    info = {"method": "scan", "backend": backend, "batch": err.shape[0], "T": err.shape[1]}
    return loss, grad, info
