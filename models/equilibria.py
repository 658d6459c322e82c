"""Fixed points of a latent RNN and their stability.

A trained DSR model can hold equilibria the data never visit: a stable one inside the
attractor's region captures the free runs that enter its basin (the spurious fixed point of
``parscan-train generate``'s note). :func:`fixed_points` finds the fixed points
``z* = F(z*)`` of a :class:`models.LatentRNN` by Newton's method on ``F(z) - z`` from the
latent states of given observations, and judges each by the spectral radius of ``dF/dz``
there. For the piecewise-linear models (shPLRNN, clipped shPLRNN, ALRNN, PLRNN) a Newton step
jumps to the fixed point of the current linear region, so the search is exact once the region
stops changing: the fixed-point half of SCYFI (Eisenmann, Monfared, Göring & Durstewitz,
NeurIPS 2023), seeded with data instead of random regions. It finds the fixed points whose
Newton basins the starts reach, not provably all of them.
"""

import numpy as np

from models._checks import Checks, as_array
from models.base import LatentRNN
from models.data import check_trajectory

#: A start has converged when ``max|F(z) - z| <= RESIDUAL_TOLERANCE * (1 + max|z|)``.
RESIDUAL_TOLERANCE = 1e-10
#: Two converged states closer than ``DISTINCT_TOLERANCE * (1 + max|z|)`` (max norm) are the
#: same fixed point.
DISTINCT_TOLERANCE = 1e-6


def fixed_points(model, x, *, max_iter=100):
    """The fixed points of ``model``'s map reached by Newton's method from ``x``.

    From each start ``z = model.initial_state(x[k])`` (float64), Newton's method on
    ``G(z) = F(z) - z`` iterates ``z <- z - (dF/dz(z) - I)^-1 G(z)`` until
    ``max|G(z)| <= 1e-10 (1 + max|z|)`` (:data:`RESIDUAL_TOLERANCE`); a start whose iterate
    leaves the finite numbers, meets a singular ``dF/dz - I`` or has not converged after
    ``max_iter`` steps (a piecewise-linear map can cycle between regions) finds nothing.
    Converged states within :data:`DISTINCT_TOLERANCE` of each other count once.

    A fixed point is stable (attracting) when every eigenvalue of ``dF/dz`` there has modulus
    below 1: free runs that come close stay. A stable fixed point where the data never rest
    is a spurious attractor; whether it matters depends on its basin, which free runs from
    many starts measure (``models.evaluate(..., n_starts=k)``'s ``at_rest``).

    Parameters
    ----------
    model : models.LatentRNN
        Any dtype; the search runs on a float64 copy.
    x : array_like, shape (K, N) or (N,)
        Finite observations to start from, in the model's units (standardised like its
        training data), e.g. points of the test trajectory.
    max_iter : int
        Newton steps per start, >= 1.

    Returns
    -------
    dict
        ``states`` (P, M) float64: the distinct fixed points, most attracting first;
        ``points`` (P, N): their observed part; ``spectral_radius`` (P,): the largest
        eigenvalue modulus of ``dF/dz`` at each; ``stable`` (P,) bool: spectral radius < 1;
        ``n_starts`` (K) and ``n_converged`` (the starts that reached a fixed point).

    Raises
    ------
    TypeError
        ``model`` is not a LatentRNN (an SSM has no state map to solve), or ``x`` or
        ``max_iter`` of the wrong type.
    ValueError
        ``x`` of another shape than (K, N) with the model's N, with NaN/inf, or empty;
        ``max_iter`` < 1.
    """
    where = "fixed_points"
    with Checks(where) as checks:
        if not isinstance(model, LatentRNN):
            checks.add(
                "model must be a models.LatentRNN (a state map F with its Jacobian); got "
                f"{type(model).__name__}.",
                wrong_kind=True,
            )
        max_iter = checks.integer(max_iter, "max_iter")
    x = as_array(x, "x", where)
    if x.ndim == 1:
        x = x[None]
    x = check_trajectory(x, where, min_steps=1, constant=True, n_obs=model.n_obs)
    solver = model if model.dtype == np.float64 else model.astype("float64")
    z = solver.initial_state(x.astype(np.float64))
    converged = _newton(solver, z, max_iter)
    states = _distinct(z[converged])
    radius = np.max(np.abs(np.linalg.eigvals(solver.jacobian(states))), axis=-1, initial=0.0)
    order = np.argsort(radius, kind="stable")
    states, radius = states[order], radius[order]
    return {
        "states": states,
        "points": states[:, : model.n_obs].copy(),
        "spectral_radius": radius,
        "stable": radius < 1.0,
        "n_starts": int(x.shape[0]),
        "n_converged": int(converged.sum()),
    }


def _newton(model, z, max_iter):
    """Newton's method on ``F(z) - z`` from every row of ``z`` (K, M), in place; which rows
    converged (K,) bool."""
    k, m = z.shape
    converged = np.zeros(k, dtype=bool)
    active = np.arange(k)
    eye = np.eye(m)
    for iteration in range(max_iter + 1):
        with np.errstate(over="ignore", invalid="ignore"):
            g = model.step(z[active]) - z[active]
            scale = 1.0 + np.max(np.abs(z[active]), axis=1)
            done = np.max(np.abs(g), axis=1) <= RESIDUAL_TOLERANCE * scale
        converged[active[done]] = True
        alive = ~done & np.all(np.isfinite(g), axis=1)
        active, g = active[alive], g[alive]
        if active.size == 0 or iteration == max_iter:
            break
        step, solved = _solve(model.jacobian(z[active]) - eye, g)
        z[active[solved]] -= step[solved]
        active = active[solved]
    return converged


def _solve(a, b):
    """``a^-1 b`` for a batch ``a`` (K, M, M), ``b`` (K, M), and which systems were regular
    (a singular one leaves its row 0)."""
    try:
        return np.linalg.solve(a, b[..., None])[..., 0], np.ones(len(a), dtype=bool)
    except np.linalg.LinAlgError:  # some system is singular: solve one by one
        out = np.zeros_like(b)
        regular = np.ones(len(a), dtype=bool)
        for i in range(len(a)):
            try:
                out[i] = np.linalg.solve(a[i], b[i])
            except np.linalg.LinAlgError:
                regular[i] = False
        return out, regular


def _distinct(states):
    """The rows of ``states`` (K, M) with near-duplicates (:data:`DISTINCT_TOLERANCE`)
    dropped, in order of first appearance."""
    kept = []
    for z in states:
        tolerance = DISTINCT_TOLERANCE * (1.0 + np.max(np.abs(z)))
        if not any(np.max(np.abs(z - other)) <= tolerance for other in kept):
            kept.append(z)
    return np.array(kept, dtype=np.float64).reshape(len(kept), states.shape[1])
