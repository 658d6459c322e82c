"""Fixed points and cycles of a latent RNN, and their stability.

A trained DSR model can hold equilibria the data never visit: a stable one inside the
attractor's region captures the free runs that enter its basin (the spurious fixed point of
``parscan-train generate``'s note). :func:`fixed_points` finds the fixed points
``z* = F(z*)`` of a :class:`models.LatentRNN` by Newton's method on ``F(z) - z`` from the
latent states of given observations, and judges each by the spectral radius of ``dF/dz``
there; :func:`cycles` finds its ``k``-cycles (the fixed points of ``F^k`` whose least period
is ``k``) in the same way. For the piecewise-linear models (shPLRNN, clipped shPLRNN, ALRNN,
PLRNN) a Newton step jumps to the fixed point of the current linear regions, so the search is
exact once the regions stop changing: SCYFI (Eisenmann, Monfared, Göring & Durstewitz,
NeurIPS 2023), seeded with data instead of random regions. It finds the fixed points and
cycles whose Newton basins the starts reach, not provably all of them.
"""

import numpy as np

from models._checks import Checks, as_array
from models.base import LatentRNN, allocated, check_finite_params
from models.data import check_trajectory

#: A start has converged when ``max|F(z) - z| <= RESIDUAL_TOLERANCE * (1 + max|z|)``.
RESIDUAL_TOLERANCE = 1e-10
#: Two converged states closer than ``DISTINCT_TOLERANCE * (1 + max|z|)`` (max norm) are the
#: same fixed point.
DISTINCT_TOLERANCE = 1e-6
#: A spectral radius within this of 1 (a neutral centre, a rotation: 1 up to rounding) is not
#: stable, whichever side of 1 rounding put it.
MARGINAL_TOLERANCE = 1e-9
#: The Jacobians around each orbit are also taken at this many copies of it, each coordinate
#: ``z_i`` moved by up to ``BOUNDARY_STEP * (1 + |z_i|)`` (fixed random directions): an
#: orbit where some differ from its own lies on (within that step of) a boundary of the
#: map's linear regions, and its radius is the growth rate measured from as many points.
BOUNDARY_SAMPLES = 16
BOUNDARY_STEP = 1e-7
#: Jacobian products that differ by more than this times ``1 + max|product|`` come from
#: different linear regions (a smooth map's change over ``BOUNDARY_STEP`` is far smaller).
JUMP_TOLERANCE = 1e-4
#: Periods over which the growth rate of perturbations of an orbit on a boundary is measured
#: (the last half of them counts).
GROWTH_PERIODS = 200


def fixed_points(model, x, *, max_iter=100):
    """The fixed points of ``model``'s map reached by Newton's method from ``x``.

    From each start ``z = model.initial_state(x[k])`` (float64), Newton's method on
    ``G(z) = F(z) - z`` iterates ``z <- z - (dF/dz(z) - I)^-1 G(z)`` until
    ``max|G(z)| <= 1e-10 (1 + max|z|)`` (:data:`RESIDUAL_TOLERANCE`); a start whose iterate
    leaves the finite numbers, meets a singular ``dF/dz - I`` or has not converged after
    ``max_iter`` steps (a piecewise-linear map can cycle between regions) finds nothing; so
    does one that converges where ``dF/dz - I`` is singular to within the tolerance (its
    smallest singular value at most ``1e-10 (1 + its largest)``): no isolated fixed point, or
    a point far out where ``G`` is small only relative to the huge ``|z|`` -- a map without
    fixed points sends Newton there. Converged states within :data:`DISTINCT_TOLERANCE` of
    each other count once.

    A fixed point is stable (attracting) when every eigenvalue of ``dF/dz`` there has modulus
    below 1 (below ``1 - 1e-9``, :data:`MARGINAL_TOLERANCE`: a neutral centre whose radius
    rounds to just under 1 is not stable): free runs that come close stay. A stable fixed
    point where the data never rest is a spurious attractor; whether it matters depends on
    its basin, which free runs from many starts measure (``models.evaluate(...,
    n_starts=k)``'s ``at_rest``).

    At a point on a boundary of a piecewise-linear map's linear regions (a ReLU's input 0,
    as at ``z = 0`` of a freshly initialised shPLRNN, whose biases are 0) ``dF/dz`` jumps,
    and which side a converged state lies on is rounding. Such points are found by taking
    ``dF/dz`` also at :data:`BOUNDARY_SAMPLES` points around each, each coordinate ``z_i``
    up to ``1e-7 (1 + |z_i|)`` away (fixed random directions): where one differs, the point is
    ``on_boundary``. No one side's linearisation settles its stability (the map switches
    between them), so its ``spectral_radius`` is the growth rate of perturbations measured
    on the map: the mean growth per step of the distance of 16 points that close, over 100
    steps after 100 more, each step's perturbation moved back to its first size (as a
    Lyapunov exponent is measured); the largest of the 16.

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
        eigenvalue modulus of ``dF/dz`` at each (the measured growth rate for one
        ``on_boundary``); ``stable`` (P,) bool: spectral radius < ``1 - 1e-9``;
        ``on_boundary`` (P,) bool; ``n_starts`` (K) and ``n_converged`` (the starts that
        reached a fixed point).

    Raises
    ------
    TypeError
        ``model`` is not a LatentRNN (an SSM has no state map to solve), or ``x`` or
        ``max_iter`` of the wrong type.
    ValueError
        ``model.params`` with NaN/inf; ``x`` of another shape than (K, N) or (N,) with the model's
        N, with NaN/inf, or empty; ``max_iter`` < 1.
    """
    found = _search(model, x, 1, max_iter, "fixed_points")
    found["states"], found["points"] = found["states"][:, 0], found["points"][:, 0]
    del found["period"]
    return found


def cycles(model, x, period, *, max_iter=100):
    """The ``period``-cycles of ``model``'s map reached by Newton's method from ``x``.

    A ``k``-cycle is a periodic orbit ``z_0 -> z_1 -> ... -> z_{k-1} -> z_0`` of ``F``
    whose least period is ``k``: ``z_0`` is a fixed point of ``F^k`` and no ``z_j`` with
    ``0 < j < k`` equals it. From each start ``z = model.initial_state(x[k])`` (float64),
    Newton's method on ``G(z) = F^k(z) - z`` iterates
    ``z <- z - (J_{k-1} ... J_1 J_0 - I)^-1 G(z)`` (``J_j = dF/dz`` at ``z_j = F^j(z)``)
    until ``max|G(z)| <= 1e-10 (1 + max|z|)`` (:data:`RESIDUAL_TOLERANCE`), as
    :func:`fixed_points` does for ``k = 1`` (and as there, a point where the Jacobian
    product minus ``I`` is singular to within the tolerance is no result); starts that
    converge to an orbit of a smaller period (a fixed point, for ``k = 2``) are counted in
    ``n_converged`` but not listed -- search that period. Orbits that share a point within
    :data:`DISTINCT_TOLERANCE` count once; each is listed from its lexicographically
    smallest state.

    A cycle is stable (attracting) when every eigenvalue of the product ``J_{k-1} ... J_0``
    around it has modulus below ``1 - 1e-9``; a stable cycle the data never follow is a
    spurious attractor, as a stable fixed point is. A cycle with a point on a boundary of
    the map's linear regions is ``on_boundary``, its radius the growth rate per period
    measured on the map, as for :func:`fixed_points`.

    Each Newton step takes ``k`` batched steps of the map and its Jacobian from the starts not
    yet converged, one Python call per step: the cost grows as ``k`` times the Newton steps
    (period 1,000 from 16 starts of a small ClippedShPLRNN: ~5 s; 10^6 would take hours).

    Parameters
    ----------
    model : models.LatentRNN
        Any dtype; the search runs on a float64 copy.
    x : array_like, shape (K, N) or (N,)
        Finite observations to start from, in the model's units, e.g. test points.
    period : int
        The least period ``k`` >= 1 of the cycles sought (1: the fixed points).
    max_iter : int
        Newton steps per start, >= 1.

    Returns
    -------
    dict
        ``states`` (C, k, M) float64: the distinct ``k``-cycles, most attracting first;
        ``points`` (C, k, N): their observed parts; ``spectral_radius`` (C,): the largest
        eigenvalue modulus of the Jacobian product around each; ``stable`` (C,) bool;
        ``on_boundary`` (C,) bool; ``period`` (k), ``n_starts`` (K) and ``n_converged``
        (the starts that reached a fixed point of ``F^k``, of any least period).

    Raises
    ------
    TypeError
        ``model`` is not a LatentRNN, or ``x``, ``period`` or ``max_iter`` of the wrong type.
    ValueError
        ``model.params`` with NaN/inf; ``x`` of another shape than (K, N) or (N,) with the model's
        N, with NaN/inf, or empty; ``period`` or ``max_iter`` < 1; the orbits of the ``K``
        starts (``K * k * M`` float64, twice) or the Newton steps' Jacobians (``K * M * M``,
        three times) more than this machine can allocate (checked first).
    """
    return _search(model, x, period, max_iter, "cycles")


def _search(model, x, period, max_iter, where):
    """:func:`cycles` (``where`` names the public function for errors)."""
    with Checks(where) as checks:
        if not isinstance(model, LatentRNN):
            checks.add(
                "model must be a models.LatentRNN (a state map F with its Jacobian); got "
                f"{type(model).__name__}.",
                wrong_kind=True,
            )
        else:
            with checks.caught("model"):
                check_finite_params(
                    model.params,
                    where,
                    "the model's parameters",
                    " Its map has no fixed points or cycles to find; search a model with "
                    "finite parameters (e.g. an earlier checkpoint).",
                )
        period = checks.integer(period, "period")
        max_iter = checks.integer(max_iter, "max_iter")
    x = as_array(x, "x", where)
    N = model.n_obs
    if x.ndim < 2 and x.shape != (N,):  # neither one start (N,) nor several (K, N)
        fix = (
            "pass x[:, None] for K starts of this 1-d model"
            if N == 1 and x.ndim == 1
            else (f"pass one start of shape ({N},) or K starts of shape (K, {N})")
        )
        raise ValueError(f"{where}: x has shape {x.shape}, which holds no start of N={N}; {fix}.")
    if x.ndim == 1:
        x = x[None]
    x = check_trajectory(x, where, min_steps=1, constant=True, n_obs=N)
    solver = model if model.dtype == np.float64 else model.astype("float64")
    z = solver.initial_state(x.astype(np.float64))
    k, m = z.shape
    buffer = allocated(  # before the Newton work, which can take long for a long period
        lambda: _orbit_buffer(k, period, m),
        8 * (2 * k * period * m + 3 * k * m * m),
        where,
        f"the orbits and Newton Jacobians of {k} starts",
        "lower period or pass fewer starts",
    )
    converged = _newton(solver, z, period, max_iter)
    orbits = _distinct(_orbits(solver, z[converged], period, buffer))
    radius, on_boundary = _radius(solver, orbits)
    order = np.argsort(radius, kind="stable")
    orbits, radius, on_boundary = orbits[order], radius[order], on_boundary[order]
    return {
        "states": orbits,
        "points": orbits[..., : model.n_obs].copy(),
        "spectral_radius": radius,
        "stable": radius < 1.0 - MARGINAL_TOLERANCE,
        "on_boundary": on_boundary,
        "period": period,
        "n_starts": int(x.shape[0]),
        "n_converged": int(converged.sum()),
    }


def _orbit_buffer(k, period, m):
    """An empty ``(k, period, m)`` float64 orbit buffer, once the rest of what the search
    needs could be allocated too: Newton's Jacobians (``k * m * m``, three times) and the
    simulated orbits (``k * period * m``). MemoryError or ValueError when it cannot."""
    np.empty(3 * k * m * m + k * period * m)
    return np.empty((k, period, m))


def _newton(model, z, period, max_iter):
    """Newton's method on ``F^period(z) - z`` from every row of ``z`` (K, M), in place;
    which rows converged (K,) bool."""
    k, m = z.shape
    converged = np.zeros(k, dtype=bool)
    active = np.arange(k)
    eye = np.eye(m)
    for iteration in range(max_iter + 1):
        with np.errstate(over="ignore", invalid="ignore"):
            end, jac = _map_power(model, z[active], period)
            g = end - z[active]
            scale = 1.0 + np.max(np.abs(z[active]), axis=1)
            done = np.max(np.abs(g), axis=1) <= RESIDUAL_TOLERANCE * scale
        converged[active[done]] = _regular(jac[done] - eye)
        alive = ~done & np.all(np.isfinite(g), axis=1)
        active, g, jac = active[alive], g[alive], jac[alive]
        if active.size == 0 or iteration == max_iter:
            break
        step, solved = _solve(jac - eye, g)
        z[active[solved]] -= step[solved]
        active = active[solved]
    return converged


def _map_power(model, z, period):
    """``F^period(z)`` (K, M) and its Jacobian ``J_{period-1} ... J_0`` (K, M, M)."""
    end, jac = model.step_and_jacobian(z)
    for _ in range(period - 1):
        end, j = model.step_and_jacobian(end)
        jac = j @ jac
    return end, jac


def _orbits(model, z, period, buffer):
    """The orbits ``z_0 .. z_{period-1}`` (K, period, M) of the rows of ``z`` (K, M), in
    ``buffer`` (at least K rows), those whose least period is below ``period`` dropped."""
    orbits = buffer[: len(z)]
    if len(z):
        orbits[:, 0] = z
        orbits[:, 1:] = model.simulate(z, period - 1)
    tolerance = DISTINCT_TOLERANCE * (1.0 + np.max(np.abs(z), axis=1, initial=0.0))
    repeats = np.max(np.abs(orbits[:, 1:] - orbits[:, :1]), axis=2) <= tolerance[:, None]
    return orbits[~np.any(repeats, axis=1)]


def _radius(model, orbits):
    """The spectral radius of the Jacobian product around each orbit (C, k, M), and which
    orbits lie on a boundary of linear regions: those where the product at one of
    :data:`BOUNDARY_SAMPLES` copies, moved by up to :data:`BOUNDARY_STEP` (relative, per
    coordinate),
    differs from the orbit's own by more than :data:`JUMP_TOLERANCE`. For those, whose
    linearisation is rounding's choice of side, the radius is the growth rate measured on
    the map itself (:func:`_growth_rate`): (C,), (C,) bool."""
    exact = _around(model, orbits)
    on_boundary = np.zeros(len(orbits), dtype=bool)
    scale = BOUNDARY_STEP * (1.0 + np.abs(orbits))  # each coordinate by its own size
    jump = JUMP_TOLERANCE * (1.0 + np.max(np.abs(exact), axis=(1, 2), initial=0.0))
    directions = np.random.default_rng(0)  # fixed: the same orbit gets the same verdict
    for _ in range(BOUNDARY_SAMPLES):
        moved = _around(model, orbits + scale * directions.uniform(-1, 1, orbits.shape))
        on_boundary |= np.max(np.abs(moved - exact), axis=(1, 2), initial=0.0) > jump
    radius = _largest_modulus(exact)
    if on_boundary.any():
        radius[on_boundary] = _growth_rate(model, orbits[on_boundary], scale[on_boundary, 0])
    return radius, on_boundary


def _growth_rate(model, orbits, scale):
    """How fast the map moves points near each orbit (C, k, M) away from it (> 1) or onto it
    (< 1), per period: from :data:`BOUNDARY_SAMPLES` points moved by up to ``scale`` (C, M)
    off its first state (fixed random directions), the largest over them of the geometric
    mean growth of their distance ``d`` from that state (max norm, each coordinate in units
    of its ``scale``) per period over the last half of :data:`GROWTH_PERIODS` periods. After
    each period the point is moved back to its first distance along its direction, as a
    Lyapunov exponent is measured: it stays in the orbit's neighbourhood and above the
    rounding of its state, and the first periods' transients (one coordinate driving
    another) drop out. Near a boundary of linear regions the map switches between the
    sides' linearisations, and this rate, not any one side's spectral radius, says whether
    free runs that come close stay (a run that leaves the finite numbers: inf): (C,)."""
    c, k, _ = orbits.shape
    first = np.repeat(orbits[:, 0], BOUNDARY_SAMPLES, axis=0)  # (C * S, M)
    directions = np.random.default_rng(1).uniform(-1, 1, first.shape)  # fixed, as in _radius
    unit = np.repeat(scale, BOUNDARY_SAMPLES, axis=0)
    z = first + unit * directions
    start = np.max(np.abs(z - first) / unit, axis=1)
    logs = np.zeros(len(first))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for n in range(1, GROWTH_PERIODS + 1):
            z = model.simulate(z, k)[:, -1]
            distance = np.max(np.abs(z - first) / unit, axis=1)
            if n > GROWTH_PERIODS // 2:
                logs += np.log(distance / start)
            z = first + (z - first) * (start / distance)[:, None]
            z = np.where(np.isfinite(z), z, first)  # collapsed or blown up: its log says so
    rate = np.exp(logs / (GROWTH_PERIODS - GROWTH_PERIODS // 2))
    rate = np.where(np.isnan(rate), np.inf, rate)
    return np.max(rate.reshape(c, BOUNDARY_SAMPLES), axis=1)


def _largest_modulus(matrices):
    """The largest eigenvalue modulus of each matrix of ``matrices`` (C, M, M): (C,)."""
    return np.max(np.abs(np.linalg.eigvals(matrices)), axis=-1, initial=0.0)


def _around(model, orbits):
    """The Jacobian products ``J_{k-1} ... J_0`` around each orbit (C, k, M) -> (C, M, M)."""
    c, k, m = orbits.shape
    product = np.broadcast_to(np.eye(m), (c, m, m)).copy()
    for j in range(k):  # one point of each orbit at a time: (C, M, M), not (C, k, M, M)
        product = model.jacobian(orbits[:, j]) @ product
    return product


def _regular(a):
    """Which matrices of the batch ``a`` (K, M, M) are regular to within
    :data:`RESIDUAL_TOLERANCE`: finite, with smallest singular value above ``1e-10 (1 +
    largest)``."""
    finite = np.all(np.isfinite(a), axis=(1, 2))
    regular = np.zeros(len(a), dtype=bool)
    if finite.any():
        sigma = np.linalg.svd(a[finite], compute_uv=False)
        regular[finite] = sigma[:, -1] > RESIDUAL_TOLERANCE * (1.0 + sigma[:, 0])
    return regular


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


def _distinct(orbits):
    """The orbits ``orbits`` (K, k, M), one of any two that share a state within
    :data:`DISTINCT_TOLERANCE` (max norm) dropped, in order of first appearance, each rotated
    to start at its lexicographically smallest state: (C, k, M)."""
    kept = np.empty(orbits.shape, dtype=np.float64)
    n = 0
    for orbit in orbits:  # compared with all kept orbits at once: K x C work, K Python steps
        tolerance = DISTINCT_TOLERANCE * (1.0 + np.max(np.abs(orbit[0])))
        if n == 0 or np.min(np.max(np.abs(kept[:n] - orbit[0]), axis=2)) > tolerance:
            kept[n] = np.roll(orbit, -np.lexsort(orbit.T[::-1])[0], axis=0)
            n += 1
    return kept[:n].copy()
