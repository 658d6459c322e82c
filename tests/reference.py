"""Slow, obviously correct pure-NumPy references (no numba): the oracle the kernels are tested
against."""

import numpy as np


def scan_reference(a, b, h0=None, reverse=False, transpose=False):
    """Sequential linear recurrence, one time step at a time, in the dtype of ``b``.

    Forward: ``h[..., t, :] = a[..., t] ∘ h[..., t-1, :] + b[..., t, :]``, ``h[..., -1, :] = h0``.
    Reverse: ``h[..., t, :] = a[..., t] ∘ h[..., t+1, :] + b[..., t, :]``, ``h[..., T, :] = h0``.
    ``a`` of shape ``(..., T, D)`` is diagonal (elementwise), ``(..., T, D, D)`` dense
    (matrix-vector; ``transpose=True`` uses ``a[..., t, :, :].T``). ``h0=None`` means zeros.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    dense = a.ndim == b.ndim + 1
    T, D = b.shape[-2:]
    h = np.zeros((*b.shape[:-2], D), dtype=b.dtype)
    if h0 is not None:
        h[...] = h0
    out = np.empty_like(b)
    for t in range(T - 1, -1, -1) if reverse else range(T):
        if dense:
            at = a[..., t, :, :]
            if transpose:
                at = np.swapaxes(at, -1, -2)
            h = np.einsum("...ij,...j->...i", at, h) + b[..., t, :]
        else:
            h = a[..., t, :] * h + b[..., t, :]
        out[..., t, :] = h
    return out


# =============================================================================================
# GTF loss and gradient by sequential backpropagation through time (oracle for autodiff/)
# =============================================================================================


def shplrnn_reference_step(p, z, clipped=False):
    """One step of a (clipped) shPLRNN, ``F(z) = A z + W1 phi + h1`` with
    ``phi = relu(W2 z + h2) - clipped * relu(W2 z)``.

    ``p`` maps block names (``A, W1, W2, h1, h2``) to float64 arrays. Returns ``F`` (M,), the
    Jacobian ``dF/dz`` (M, M) and ``vjp(c)``, a function giving ``(dF/dtheta)^T c`` as a dict
    of blocks. The relu derivative at 0 is 0.
    """
    s = p["W2"] @ z
    u = s + p["h2"]
    on = (u > 0).astype(np.float64)
    off = (s > 0).astype(np.float64) if clipped else np.zeros_like(s)
    phi = np.maximum(u, 0.0) - (np.maximum(s, 0.0) if clipped else 0.0)
    F = p["A"] * z + p["W1"] @ phi + p["h1"]
    d = on - off
    J = np.diag(p["A"]) + p["W1"] @ (d[:, None] * p["W2"])

    def vjp(c):
        a = p["W1"].T @ c
        return {
            "A": c * z,
            "W1": np.outer(c, phi),
            "W2": np.outer(a * d, z),
            "h1": c.copy(),
            "h2": a * on,
        }

    return F, J, vjp


def alrnn_reference_step(p, z, P, zero_diag=False):
    """One step of an ALRNN, ``F(z) = A z + W Phi(z) + h``, ``Phi`` the identity on the first
    ``M - P`` units and relu on the last ``P``; the PLRNN is ``P = M`` with ``zero_diag``
    (``diag(W)`` held at 0: its gradient is 0).

    ``p`` maps block names (``A, W, h``) to float64 arrays. Returns ``F``, ``dF/dz`` and
    ``vjp`` as :func:`shplrnn_reference_step`. The relu derivative at 0 is 0.
    """
    M = z.size
    relu = np.arange(M) >= M - P
    d = np.where(relu, (z > 0).astype(np.float64), 1.0)
    phi = np.where(relu, np.maximum(z, 0.0), z)
    F = p["A"] * z + p["W"] @ phi + p["h"]
    J = np.diag(p["A"]) + p["W"] * d[None, :]
    free = 1.0 - np.eye(M) if zero_diag else np.ones((M, M))

    def vjp(c):
        return {"A": c * z, "W": np.outer(c, phi) * free, "h": c.copy()}

    return F, J, vjp


def gtf_bptt_reference(p, step, data, alpha, n_forced=None):
    """GTF loss of a latent RNN and its gradient, one step at a time (float64).

    ``step(p, z)`` is one step of the model, returning ``(F, dF/dz, vjp)`` as
    :func:`shplrnn_reference_step` and :func:`alrnn_reference_step` (bind their
    hyperparameters with ``functools.partial``). ``data`` (B, T+1, N) holds windows
    ``x_0 .. x_T``; ``z~_0 = [x_0; L0 x_0]`` (``p["L0"]`` (M-N, N), absent when M == N);
    ``z_t = F(z~_{t-1})``, ``z~_t = z_t`` with its first ``n_forced`` entries replaced by
    ``(1 - alpha) z_t + alpha x_t``; the loss is the mean of ``(z_t[:N] - x_t)^2`` over
    (B, T, N). ``alpha`` is a float or one per sequence.
    Backward, with ``g`` the cotangent of ``z~_t`` and ``mu`` that of ``z_t``::

        mu_t = 2 (z_t - x_t) / (B T N) + (I - alpha P) g_t,   g_{t-1} = J(z~_{t-1})^T mu_t.

    Returns ``(loss, grads)`` with ``grads`` a dict of the blocks of ``p``.
    """
    data = np.asarray(data, dtype=np.float64)
    B, T1, N = data.shape
    T = T1 - 1
    n_forced = N if n_forced is None else n_forced
    alphas = np.broadcast_to(np.asarray(alpha, dtype=np.float64), (B,))
    grads = {k: np.zeros_like(v, dtype=np.float64) for k, v in p.items()}
    scale = 2.0 / (B * T * N)
    sse = 0.0
    for b in range(B):
        x0 = data[b, 0]
        z = np.concatenate([x0, p["L0"] @ x0]) if "L0" in p else x0.copy()
        keep = np.ones(z.size)
        keep[:n_forced] = 1.0 - alphas[b]
        preds, steps = [], []
        for t in range(1, T + 1):
            F, J, vjp = step(p, z)
            preds.append(F)
            steps.append((J, vjp))
            sse += np.sum((F[:N] - data[b, t]) ** 2)
            z = F.copy()
            z[:n_forced] = keep[:n_forced] * F[:n_forced] + alphas[b] * data[b, t, :n_forced]
        g = np.zeros(z.size)
        for t in range(T, 0, -1):
            e = np.zeros(z.size)
            e[:N] = scale * (preds[t - 1][:N] - data[b, t])
            mu = e + keep * g
            J, vjp = steps[t - 1]
            for name, block in vjp(mu).items():
                grads[name] += block
            g = J.T @ mu
        if "L0" in p:
            grads["L0"] += np.outer(g[N:], x0)
    return sse / (B * T * N), grads


# =============================================================================================
# The GTF-forced recurrence, one step at a time (oracle for parscan.deer)
# =============================================================================================


def forced_recursion_reference(step_fn, z0, T, forcing=None, alpha=0.0, n_forced=None):
    """States and predictions of the forced recurrence of DESIGN.md §4, one step at a time.

    ``z_{t+1} = step_fn(z~_t)``; ``z~_{t+1} = z_{t+1}`` with its first ``n_forced`` entries
    replaced by ``(1 - alpha) z_{t+1} + alpha x_{t+1}``; ``z~_0 = z0`` (..., M). ``forcing``
    (..., T, N) holds ``x_1 .. x_T`` (None: free run); ``n_forced`` defaults to N; ``alpha`` is
    a float or one per sequence (shape ``z0.shape[:-1]``). ``step_fn`` maps (..., M) to
    (..., M). Returns ``(states, predictions)``, each (..., T, M) in the dtype of ``z0``, with
    ``states[..., t, :] = z~_{t+1}`` and ``predictions[..., t, :] = z_{t+1}``.
    """
    z = np.array(z0, copy=True)
    n_forced = 0 if forcing is None else (forcing.shape[-1] if n_forced is None else n_forced)
    a = np.asarray(alpha, dtype=z.dtype)[..., None]
    states = np.empty((*z.shape[:-1], T, z.shape[-1]), dtype=z.dtype)
    predictions = np.empty_like(states)
    for t in range(T):
        f = np.asarray(step_fn(z))
        predictions[..., t, :] = f
        z = f.copy()
        if n_forced:
            x = forcing[..., t, :n_forced]
            z[..., :n_forced] = (1 - a) * f[..., :n_forced] + a * x
        states[..., t, :] = z
    return states, predictions


def alrnn_fixed_points_reference(A, W, h, P):
    """Every fixed point of the ALRNN ``F(z) = A * z + W Phi(z) + h`` (``Phi`` the identity on
    the first ``M - P`` units, relu on the last ``P``), by enumerating the ``2**P`` relu
    patterns: in pattern ``d`` the map is linear, ``F(z) = (diag(A) + W D) z + h`` with
    ``D = diag(1 .. 1, d)``, whose fixed point ``(I - diag(A) - W D)^-1 h`` counts when its
    relu units have that pattern (> 0 where on, <= 0 where off); the cycles of period 1 of
    :func:`alrnn_cycles_reference`. Returns ``(states, radii)``: ``(K, M)`` and the spectral
    radius of ``diag(A) + W D`` at each."""
    orbits, radii = alrnn_cycles_reference(A, W, h, P, 1)
    return orbits[:, 0], radii


def alrnn_cycles_reference(A, W, h, P, period):
    """Every cycle of least period ``period`` of the ALRNN ``F(z) = A * z + W Phi(z) + h``, by
    enumerating the relu patterns ``d_0 .. d_{k-1}`` of its ``k = period`` states: with them
    fixed, ``F^k`` is affine, ``F^k(z) = J z + c`` (``J = J_{k-1} ... J_0``, ``J_j = diag(A)
    + W D_j``), and the orbit of its fixed point ``(I - J)^-1 c`` counts when every state has
    its pattern and no state before the k-th repeats the first. Returns ``(orbits, radii)``:
    ``(C, k, M)``, each orbit from its lexicographically smallest state, and the spectral
    radius of ``J`` (the same for every rotation of the orbit)."""
    M = len(A)
    orbits, radii = [], []
    for patterns in range(2 ** (P * period)):
        bits = [(patterns >> b) & 1 for b in range(P * period)]
        on = np.array(bits, dtype=bool).reshape(period, P)
        linear = np.ones((period, M - P), dtype=bool)
        jacs = [np.diag(A) + W * d[None, :] for d in np.concatenate([linear, on], axis=1)]
        J, c = np.eye(M), np.zeros(M)
        for jac in jacs:
            J, c = jac @ J, jac @ c + h
        try:
            z = np.linalg.solve(np.eye(M) - J, c)
        except np.linalg.LinAlgError:
            continue
        orbit = [z]
        for jac in jacs[:-1]:
            orbit.append(jac @ orbit[-1] + h)
        orbit = np.array(orbit)
        if not np.array_equal(orbit[:, M - P :] > 0, on):
            continue
        if any(np.max(np.abs(orbit[j] - orbit[0])) <= 1e-9 for j in range(1, period)):
            continue
        orbit = np.roll(orbit, -np.lexsort(orbit.T[::-1])[0], axis=0)
        if not any(np.max(np.abs(orbit - other)) <= 1e-9 for other in orbits):
            orbits.append(orbit)
            radii.append(np.max(np.abs(np.linalg.eigvals(J))))
    return np.array(orbits).reshape(-1, period, M), np.array(radii)
