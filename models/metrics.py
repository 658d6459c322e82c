"""DSR measures as the Durstewitz lab defines them (DESIGN.md section 7).

* :func:`state_space_divergence` -- D_stsp, KL divergence between the occupation measures of
  the true and the generated trajectory (binned, or Gaussian-mixture for high N);
  Koppe et al., PLoS Comput. Biol. 15, e1007263 (2019); Brenner et al., ICML 2022;
  Hess et al., ICML 2023.
* :func:`power_spectrum_distance` -- D_H, mean Hellinger distance of smoothed power spectra;
  Mikhaeil et al., NeurIPS 2022; Hess et al., ICML 2023.
* :func:`prediction_error` -- PE(n), n-step-ahead free-run MSE from every data point.
* :func:`max_lyapunov` / :func:`lyapunov_spectrum` -- Lyapunov exponents from Jacobian products
  with QR re-orthonormalisation (Benettin et al., Meccanica 15, 1980).
* :func:`fixed_point_onsets` -- where free runs come to rest (a spurious fixed point).
* :func:`evaluate` -- free runs from test points, then the measures (of one test trajectory
  or the mean over several).

All measures are computed in float64 (float32 inputs are widened).
"""

import math
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.fft
from numba import literally, prange
from scipy.ndimage import gaussian_filter1d

from models._checks import Checks, as_array
from models.base import (
    LatentRNN,
    Model,
    TooLargeForThisMachine,
    allocated,
    check_finite_params,
)
from models.data import (
    check_in_range,
    check_trajectory,
    check_trajectory_or_list,
    column_mean_sd,
    constant_columns,
    several_trajectories,
)
from models.systems import System, get_system, matmul_into, rk4_tangent_step, rk4_work
from parscan._jit import jit, jit_parallel, n_threads

#: Laplace smoothing pseudo-count of the binned D_stsp (DESIGN.md section 7).
EPSILON = 1e-5
#: GMM D_stsp: points per mixture and Monte-Carlo samples (the lab's defaults).
GMM_POINTS = 10_000
GMM_SAMPLES = 1000
#: Measures :func:`evaluate` knows.
MEASURES = ("dstsp", "dh", "pe", "lyapunov")
#: :func:`evaluate` scores D_stsp with bins below this many dimensions and with the Gaussian
#: mixture from it on (the lab's rule).
GMM_MIN_DIMS = 6
#: D_H's default Gaussian smoothing width in frequency bins (the lab's sigma).
DH_SMOOTHING = 20.0
#: D_H warns when a spectrum has fewer than this many frequency bins per unit of ``smoothing``.
MIN_BINS_PER_SMOOTHING = 10
#: D_H refuses a ``smoothing`` wider than this many bins when it is also wider than the whole
#: spectrum: it flattens both spectra (D_H near 0 for any two series) and SciPy's kernel of
#: ``8 smoothing + 1`` taps costs seconds at 1e6 bins, minutes at 1e8 and all memory beyond.
MAX_SMOOTHING_BEYOND_SPECTRUM = 1e6
#: Binned D_stsp warns when a generated run has fewer than this many points per bin that the
#: reference trajectory occupies (:class:`StateSpaceResolutionWarning`).
MIN_POINTS_PER_BIN = 10
#: Most bins per axis of the binned D_stsp: a point's bin ``floor(u * n_bins)``, ``u`` in [0, 1),
#: is exact up to 2**53.
MAX_BINS_PER_AXIS = 2**53
#: :func:`evaluate`'s message for status ``"out_of_box"``.
_OUT_OF_BOX = "no generated point lies inside the test data's D_stsp box"
#: Elements per model.generate call in prediction_error, per block of Jacobians in
#: lyapunov_spectrum and per batch of runs whose spectra D_H takes together (bounds the
#: memory of a batch).
_CHUNK_ELEMENTS = 1 << 22


# ---------------------------------------------------------------------------------------------
# Argument checks shared by the public functions.
# ---------------------------------------------------------------------------------------------


def _pair(x_true, x_gen, where, *, strict=True):
    """Validate a (true, generated) pair of trajectories; return both as float64.

    ``strict``: ``x_true`` needs >= 2 steps and no constant dimension (binning and spectra
    scale by its sd)."""
    x_true = check_trajectory(
        x_true, where, name="x_true", min_steps=2 if strict else 1, constant=not strict, wide=False
    ).astype(np.float64)
    x_gen = as_array(x_gen, "x_gen", where)
    if x_gen.ndim == 2 and x_gen.dtype.kind == "f" and not np.all(np.isfinite(x_gen)):
        raise ValueError(
            f"{where}: x_gen contains NaN or inf (the generated run diverged); a measure of it "
            f"is meaningless. evaluate() reports such runs with status 'non_finite'."
        )
    x_gen = check_trajectory(x_gen, where, name="x_gen", min_steps=1, constant=True, wide=False)
    if x_gen.shape[1] != x_true.shape[1]:
        raise ValueError(
            f"{where}: x_true and x_gen must have the same number of dimensions N; got "
            f"x_true.shape={x_true.shape}, x_gen.shape={x_gen.shape}."
        )
    return x_true, x_gen.astype(np.float64)


# ---------------------------------------------------------------------------------------------
# D_stsp
# ---------------------------------------------------------------------------------------------


def _box(x_true, box):
    """The D_stsp box ``(lo, hi)`` of ``x_true``, within the float64 range (a box around data
    near the largest float64 would reach inf)."""
    mean, sd = column_mean_sd(x_true)
    with np.errstate(over="ignore"):
        if box == "minmax":
            lo, hi = x_true.min(axis=0) - 0.1 * sd, x_true.max(axis=0) + 0.1 * sd
        else:
            lo, hi = mean - 2.0 * sd, mean + 2.0 * sd
    largest = np.finfo(np.float64).max
    return np.maximum(lo, -largest), np.minimum(hi, largest)


def _bin_index(x, lo, hi, n_bins):
    """Bin indices (T', N) of the rows of ``x`` inside ``[lo, hi)``; rows outside are dropped.
    Computed in halves, exact at ordinary scales: a box wider than the largest float64
    (``hi - lo`` overflowed to inf and put every point into bin 0) is no wider in halves."""
    with np.errstate(over="ignore", invalid="ignore"):
        u = (0.5 * x - 0.5 * lo) / (0.5 * hi - 0.5 * lo)
    inside = np.all((u >= 0) & (u < 1), axis=1)
    # u < 1 can still round to u * n_bins == n_bins: that point belongs to the last bin
    return np.minimum(np.floor(u[inside] * n_bins), n_bins - 1).astype(np.int64)


def _check_total_bins(n_bins, n_dims, where, fix="use method='gmm'", name="n_bins"):
    """``n_bins**n_dims`` as a float; ValueError when binning cannot measure with ``n_bins``
    bins per axis (the setting ``name`` of ``where``): one bin (every point in it: D_stsp 0
    for any two trajectories), ``n_bins**N`` too large (ending in the remedy ``fix``, a
    clause) or more than :data:`MAX_BINS_PER_AXIS` (bin indices float64 cannot tell apart)."""
    if n_bins < 2:
        raise ValueError(
            f"{where}: {name} = {n_bins}: one bin per axis holds every point, so D_stsp is 0 "
            "for any two trajectories; use at least 2 bins per axis (the lab uses 30, and 8 "
            "for 5-d data)."
        )
    if n_bins**n_dims > 10**300:
        raise ValueError(
            f"{where}: {name}**N = {n_bins}**{n_dims} is too large for binning; {fix}."
        )
    if n_bins > MAX_BINS_PER_AXIS:
        raise ValueError(
            f"{where}: {name} = {n_bins} bins per axis are more than float64 positions can tell "
            "apart (2**53); use fewer (a bin needs about 10 points: MIN_POINTS_PER_BIN)."
        )
    return float(n_bins**n_dims)


def check_n_bins(n_bins, n_dims, *, where, fix, name="n_bins"):
    """Raise the ValueError :func:`evaluate` raises before its free run when ``n_bins`` bins per
    axis cannot measure the binned D_stsp of ``n_dims``-dimensional data (one bin;
    ``n_bins**N`` beyond ``10**300``; more than :data:`MAX_BINS_PER_AXIS`), naming ``where``
    and with the remedy ``fix`` (a clause, for ``n_bins**N``) -- for a caller that checks its
    setting before it scores (``fit``'s validation, the command line). Nothing for ``N >=
    GMM_MIN_DIMS`` dimensions, scored with the Gaussian mixture.

    Parameters
    ----------
    n_bins : int
        Bins per axis (checked by the caller: an int >= 1).
    n_dims : int
        Dimensions ``N`` of the scored data.
    where, fix : str
        The function or option the error names, and how its user lowers ``n_bins``.
    name : str
        The setting the error names (``fit``'s ``validation_n_bins``).
    """
    if n_dims < GMM_MIN_DIMS:
        _check_total_bins(n_bins, n_dims, where, fix, name)


def _binned_reference(x_true, n_bins, box, where, name):
    """``(lo, hi, idx_true)``: the box fixed by the validated float64 reference ``x_true``
    and its bin indices, computed once for every run scored against it. ValueError (naming
    the function ``where`` and the reference ``name``) when no point of ``x_true`` lies in the
    box (``"sd2"``: a point outside the mean +- 2 sd of any dimension is outside): there is
    no occupation to compare."""
    lo, hi = _box(x_true, box)
    idx_true = _bin_index(x_true, lo, hi, n_bins)
    if idx_true.shape[0] == 0:
        flat = np.flatnonzero(hi <= lo).tolist()  # a constant column: a box of no width
        if flat:
            raise ValueError(
                f"{where}: {name} is constant in column(s) {flat}, where the box={box!r} box "
                "has no width, so no point lies in it and D_stsp has no occupation to "
                "compare; drop those columns."
            )
        raise ValueError(
            f"{where}: no point of {name} lies in the box={box!r} box (within 2 sds of the mean "
            "in every dimension at once), so D_stsp has no occupation to compare; use "
            "box='minmax'."
        )
    return lo, hi, idx_true


def _binned_kl(reference, x_gen, n_bins):
    """Binned D_stsp of the validated float64 run ``x_gen`` against a
    :func:`_binned_reference`; NaN when no point of ``x_gen`` lies in the box."""
    lo, hi, idx_true = reference
    idx_gen = _bin_index(x_gen, lo, hi, n_bins)
    if idx_gen.shape[0] == 0:
        return math.nan
    counts_true, counts_gen = _joint_counts(idx_true, idx_gen, n_bins)
    return _kl_binned(counts_true, counts_gen, float(n_bins ** idx_true.shape[1]))


def _bin_ids(idx, n_bins):
    """One identifier per row of the bin indices ``idx`` (T', N), equal for rows in the same
    bin (compare with ``np.unique(..., axis=0)``): a mixed-radix int64 code when
    ``n_bins**N`` fits, else the row itself."""
    n_dims = idx.shape[1]
    if n_bins**n_dims < 2**62:
        return idx @ np.array([n_bins**j for j in range(n_dims)], dtype=np.int64)
    return idx


def _joint_counts(idx_true, idx_gen, n_bins):
    """Counts of both trajectories over the union of occupied bins (a sparse histogram), the
    bins identified by :func:`_bin_ids`; only occupied bins are ever stored."""
    both = _bin_ids(np.concatenate([idx_true, idx_gen]), n_bins)
    _, inverse = np.unique(both, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    n_occupied = int(inverse.max()) + 1 if inverse.size else 0
    split = idx_true.shape[0]
    counts_true = np.bincount(inverse[:split], minlength=n_occupied).astype(np.float64)
    counts_gen = np.bincount(inverse[split:], minlength=n_occupied).astype(np.float64)
    return counts_true, counts_gen


def _kl_binned(counts_true, counts_gen, n_total_bins):
    """KL(p || q) of Laplace-smoothed histograms over all ``n_total_bins`` bins, exactly.

    With ``p_i = (c_i + e) / A``, ``q_i = (d_i + e) / B``, ``A = sum c + e K``,
    ``B = sum d + e K`` and ``sum_i p_i = 1``::

        KL = sum_i p_i [log(c_i + e) - log(d_i + e)] + log(B / A),

    and the bracket vanishes in every bin empty in both, so the sum runs over occupied bins
    only (the never-enumerated empty bins enter through ``log(B / A)``).
    """
    a = counts_true.sum() + EPSILON * n_total_bins
    b = counts_gen.sum() + EPSILON * n_total_bins
    c = counts_true + EPSILON
    terms = c * (np.log(c) - np.log(counts_gen + EPSILON))
    # KL >= 0 exactly; rounding can leave -1e-16 for (near-)equal histograms
    return max(float(terms.sum() / a + np.log1p((b - a) / a)), 0.0)  # (NaN would stay NaN)


class StateSpaceResolutionWarning(UserWarning):
    """Binned D_stsp of a generated run too short for the histogram: most bins the reference
    occupies stay empty in the run, so even the true system scores far above 0 and D_stsp
    cannot tell good models from bad ones."""


def _check_occupancy(n_points, reference, n_bins, where, fix, stacklevel, runs_of=""):
    """Warn (:class:`StateSpaceResolutionWarning`) when a run of ``n_points`` points has fewer
    than ``MIN_POINTS_PER_BIN`` points per bin that the :func:`_binned_reference` occupies;
    ``fix`` says how the caller's user scores more points or coarser bins (a clause),
    ``runs_of`` which runs these are (e.g. ``" (the runs from the 3 test trajectories
    together)"``).

    A bin the reference occupies (count ``c``) and the run leaves empty adds about
    ``p log(c / e)`` to the KL (``e = 1e-5``, the pseudo-count), so short runs score high
    whatever the model: another stretch of the true trajectory, scored against 100,000
    reference points (30 bins; Lorenz-63 occupies 1,523 of them, Rossler 1,321), gets
    D_stsp 3.6 at 1 point per occupied bin, 1.6 at 2, 0.3-0.5 at 10 and 0.1-0.2 at 20 --
    below 10 more than the 0.1-0.3 of trained models that reconstruct the attractor. With
    fewer points than occupied bins, at least the difference stays empty however good the
    model. The rule is relative to the reference, so it also flags bins too fine for the
    data (``slow_lorenz`` in 5-d with 30 bins). With far finer bins the opposite happens and
    the message says so: once the pseudo-counts of all ``n_bins**N`` bins add up to ``P``, more
    than the ``n`` points scored, every score shrinks by about ``n / (n + P)`` towards 0
    (Gaussian noise against 20,000 Lorenz-63 points: 5.6 at 30 bins per axis, 7.7 at 1,000,
    0.02 at 10,000).
    """
    n_occupied = len(np.unique(_bin_ids(reference[2], n_bins), axis=0))
    needed = MIN_POINTS_PER_BIN * n_occupied
    if n_points < needed:
        n_bins_total = float(n_bins) ** reference[2].shape[1]
        pseudo = EPSILON * n_bins_total
        scored = min(n_points, len(reference[2]))
        if pseudo >= scored:
            why = (
                f"the pseudo-count {EPSILON:g} of each of the {n_bins_total:.3g} bins adds up "
                f"to {pseudo:.3g} points, more than the {scored} scored, and pulls every score "
                f"towards 0 (by a factor of about {scored / (scored + pseudo):.2g}), the true "
                "system's and a useless model's alike"
            )
        else:
            why = "most of them stay empty in the run, and even the true system scores far above 0"
        warnings.warn(
            StateSpaceResolutionWarning(
                f"{where}: binned D_stsp of {n_points} generated points{runs_of}, fewer than "
                f"{MIN_POINTS_PER_BIN} per bin the reference occupies ({n_occupied} bins): "
                f"{why}. Score at least {needed} points: {fix}."
            ),
            stacklevel=stacklevel + 1,
        )


def check_dstsp_resolution(n_points, x_true, *, where, fix, n_bins=30, box="minmax", stacklevel=1):
    """Warn (:class:`StateSpaceResolutionWarning`, naming ``where``) when binned D_stsp of runs
    of ``n_points`` points against ``x_true`` would be dominated by empty bins -- the check
    :func:`evaluate` makes, for a caller that scores many such runs (``fit``'s validation)
    and words the remedy ``fix`` (a clause) in its own terms. Nothing for ``N >= 6``
    dimensions, scored with the Gaussian mixture.

    Parameters
    ----------
    n_points : int
        Points each scored run has.
    x_true : ndarray, shape (T, N)
        The reference trajectory (finite, float64).
    where, fix : str
        The function the warning names, and how its user scores more points.
    n_bins, box
        As for :func:`state_space_divergence`.
    stacklevel : int
        The code line the warning points at, as for :func:`warnings.warn` but counted from
        the caller: 1 (default) the line calling this function, 2 the line calling that
        caller (the public function ``where`` names, when a helper of it calls this), ...
    """
    x_true = check_trajectory(x_true, where, name="x_true", min_steps=1, constant=True)
    x_true = x_true.astype(np.float64)
    if x_true.shape[1] < GMM_MIN_DIMS:
        reference = _binned_reference(x_true, n_bins, box, where, "x_true")
        _check_occupancy(n_points, reference, n_bins, where, fix, stacklevel=stacklevel + 1)


@jit
def _logsumexp_sq_dist(s, centers, root):
    """``log sum_j exp(-||root * (s - centers_j)||^2)`` with a running maximum (stable); the
    differences are scaled by ``root = sqrt(1 / (2 sigma2))`` before squaring, so that wide
    data and a wide mixture (``1e160`` apart, ``sigma2 = 1e300``) do not overflow."""
    m = -np.inf
    acc = 0.0
    for j in range(centers.shape[0]):
        d2 = 0.0
        for k in range(s.shape[0]):
            diff = (s[k] - centers[j, k]) * root
            d2 += diff * diff
        e = -d2
        if e == -np.inf:  # d2 overflowed: no mass here (and exp(-inf - -inf) would be NaN)
            continue
        if e > m:
            acc = acc * np.exp(m - e) + 1.0
            m = e
        else:
            acc += np.exp(e - m)
    if m == -np.inf:  # every centre infinitely far (or none): the density is 0
        return -np.inf
    return m + np.log(acc)


@jit_parallel
def _gmm_log_sum(samples, centers, root, out):
    """``out[i] = log sum_j exp(-||root (samples_i - centers_j)||^2)``; prange over samples."""
    for i in prange(samples.shape[0]):
        out[i] = _logsumexp_sq_dist(samples[i], centers, root)


def _subsample(x, n_points):
    if x.shape[0] <= n_points:
        return np.ascontiguousarray(x)
    return np.ascontiguousarray(x[np.linspace(0, x.shape[0] - 1, n_points).astype(np.int64)])


def _kl_gmm(x_true, x_gen, sigma2, n_points, n_samples, seed, where):
    """Monte-Carlo KL between isotropic Gaussian mixtures centred on the trajectory points
    (Hershey & Olsen, ICASSP 2007); normalisers common to both mixtures cancel."""
    centers_p = _subsample(x_true, n_points)
    centers_q = _subsample(x_gen, n_points)
    rng = np.random.default_rng(seed)
    n_dims = centers_p.shape[1]

    def draw():
        pick = rng.integers(0, centers_p.shape[0], n_samples)
        noise = math.sqrt(sigma2) * rng.standard_normal((n_samples, n_dims))
        return centers_p[pick] + noise, np.empty(n_samples), np.empty(n_samples)

    # the samples, their noise, the picked centres and the indices, and the two log sums
    n_bytes = n_samples * (3 * n_dims + 3) * 8
    samples, log_p, log_q = allocated(
        draw, n_bytes, where, "the n_samples Monte-Carlo samples", "lower n_samples"
    )
    root = math.sqrt(0.5) / math.sqrt(sigma2)  # 0.5 / sigma2 overflows for sigma2 < 2.8e-309
    _gmm_log_sum(samples, centers_p, root, log_p)
    _gmm_log_sum(samples, centers_q, root, log_q)
    log_ratio = log_p - log_q + math.log(centers_q.shape[0] / centers_p.shape[0])
    return float(log_ratio.mean())


def state_space_divergence(
    x_true,
    x_gen,
    n_bins=30,
    method="bins",
    *,
    box="minmax",
    sigma2=1.0,
    n_points=GMM_POINTS,
    n_samples=GMM_SAMPLES,
    seed=0,
):
    """D_stsp: KL divergence ``KL(p_true || p_gen)`` of the trajectories' state-space densities.

    ``method="bins"`` (the lab's choice for N < 6): N-d histograms with ``n_bins`` bins per
    axis over a box fixed by ``x_true``, Laplace-smoothed with ``e = 1e-5``::

        p_i = (count_i + e) / (sum(count) + e * n_bins**N),

    summed exactly over all ``n_bins**N`` bins in closed form while storing only occupied bins
    (works for any N; note that for large N the ``e * n_bins**N`` mass dominates and the
    value shrinks toward 0 -- use ``method="gmm"`` there). Boxes:

    * ``"minmax"`` (default): ``[min - 0.1 sd, max + 0.1 sd]`` of ``x_true`` per axis
      (Hess et al., ICML 2023);
    * ``"sd2"``: ``[mean - 2 sd, mean + 2 sd]`` per axis, the legacy box of Brenner et al.
      (ICML 2022), equal to their ``[-2 sd, 2 sd]`` for standardised data.

    Points of either trajectory outside the half-open box ``[lo, hi)`` are dropped before
    counting, as the lab's histograms do; if no generated point is left the result is NaN
    (the lab's convention; :func:`evaluate` reports this as status ``"out_of_box"``). An
    ``x_gen`` of fewer than ``MIN_POINTS_PER_BIN`` (10) points per bin that ``x_true``
    occupies gets a :class:`StateSpaceResolutionWarning`: most of those bins stay empty in
    it, and even a stretch of the true trajectory scores far above 0.

    ``method="gmm"`` (N >= 6): each trajectory, evenly subsampled to at most ``n_points``
    points, defines a mixture of isotropic Gaussians of variance ``sigma2`` centred on its
    points; KL is estimated from ``n_samples`` draws of the true mixture (seeded by ``seed``)
    with exact log-sum-exp densities (the lab's code instead takes the first 10,000 points and
    drops samples whose float32 density underflows). The estimate can be slightly negative
    for near-identical trajectories, and is inf when some true sample has no generated point
    within float64 range of its density.

    Parameters
    ----------
    x_true : array_like, shape (T, N)
        Reference trajectory (finite; for bins also T >= 2 and no constant dimension). Fewer
        steps than dimensions, ``1 < T < N``, are refused as a transposed array.
    x_gen : array_like, shape (T', N)
        Generated trajectory (finite; ``1 < T' < N`` refused likewise); ``T'`` may differ
        from ``T``.
    n_bins : int
        Bins per axis (lab default 30; 8 for the 5-d ECG data), 2 to
        :data:`MAX_BINS_PER_AXIS` and ``n_bins**N <= 10**300`` for ``method="bins"``; an int
        >= 1 for ``"gmm"``, which does not read it.
    method : {"bins", "gmm"}
    box : {"minmax", "sd2"}
    sigma2 : float
        Mixture variance (lab default 1.0, for standardised data).
    n_points, n_samples, seed : int
        GMM subsample size, Monte-Carlo sample size and seed.

    Returns
    -------
    float
        ``>= 0`` for bins: 0 when both trajectories put the same counts into every bin (the
        pseudo-count ``e`` makes equal *proportions* from different numbers of points give a
        small positive value, e.g. 2e-5 for 3,000 against 6,000 Lorenz points); NaN if no
        generated point lies in the box.
    """
    where = "state_space_divergence"
    with Checks(where) as checks:
        method = checks.choice(method, "method", ("bins", "gmm"))
        with checks.caught("x"):
            x_true, x_gen = _pair(x_true, x_gen, where, strict=method == "bins")
        # every setting is checked, also those the method does not use (as evaluate does);
        # n_bins against the data only where it bins
        n_bins = checks.integer(n_bins, "n_bins")
        box = checks.choice(box, "box", ("minmax", "sd2"))
        sigma2 = checks.real(sigma2, "sigma2", positive=True)
        n_points = checks.integer(n_points, "n_points")
        n_samples = checks.integer(n_samples, "n_samples")
        seed = checks.seed(seed)
        if method == "bins" and checks.ok("x", "n_bins"):
            with checks.caught():
                _check_total_bins(n_bins, x_true.shape[1], where)
    if method == "gmm":
        return _kl_gmm(x_true, x_gen, sigma2, n_points, n_samples, seed, where)
    reference = _binned_reference(x_true, n_bins, box, where, "x_true")
    fix = "pass a longer x_gen or lower n_bins"
    _check_occupancy(x_gen.shape[0], reference, n_bins, where, fix, stacklevel=2)
    return _binned_kl(reference, x_gen, n_bins)


# ---------------------------------------------------------------------------------------------
# D_H
# ---------------------------------------------------------------------------------------------


class SpectrumResolutionWarning(UserWarning):
    """D_H of series too short for its smoothing width: both spectra are smoothed nearly flat
    and the distance cannot tell different signals apart."""


def check_dh_resolution(n_points, smoothing, *, where, fix, stacklevel=1):
    """Warn (:class:`SpectrumResolutionWarning`, naming ``where``) when D_H of ``n_points``
    points gives fewer than ``MIN_BINS_PER_SMOOTHING * smoothing`` frequency bins -- the
    check :func:`power_spectrum_distance` and :func:`evaluate` make, for a caller that scores
    many such runs (``fit``'s validation) or words the remedy ``fix`` (a clause: how its user
    compares more points or smooths less) in its own terms.

    Below that the Gaussian kernel (support ``+-4 smoothing`` bins) spans a large part of the
    spectrum: on 40 points with the lab's ``smoothing=20`` a sine scores D_H 0.005 against
    white noise (0.82 on 2,000 points).

    Parameters
    ----------
    n_points : int
        Points of each compared series.
    smoothing : float
        As for :func:`power_spectrum_distance` (0: no smoothing, no warning).
    where, fix : str
        The function the warning names, and how its user compares more points.
    stacklevel : int
        As for :func:`check_dstsp_resolution`.
    """
    n_freq = n_points // 2 + 1
    if smoothing > 0 and n_freq < MIN_BINS_PER_SMOOTHING * smoothing:
        needed = 2 * math.ceil(MIN_BINS_PER_SMOOTHING * smoothing) - 2
        warnings.warn(
            SpectrumResolutionWarning(
                f"{where}: D_H of {n_points} points has {n_freq} frequency bins, fewer than "
                f"{MIN_BINS_PER_SMOOTHING} x smoothing ({smoothing:g}); smoothing flattens both "
                f"spectra and D_H cannot tell signals apart. Compare at least {needed} points: "
                f"{fix}."
            ),
            stacklevel=stacklevel + 1,
        )


def smoothing_problem(n_points, smoothing):
    """Why D_H of ``n_points`` points cannot use ``smoothing`` (a sentence), or ``None``: a
    width above :data:`MAX_SMOOTHING_BEYOND_SPECTRUM` and above the spectrum's
    ``n_points // 2 + 1`` bins."""
    n_freq = n_points // 2 + 1
    if smoothing <= max(n_freq, MAX_SMOOTHING_BEYOND_SPECTRUM):
        return None
    return (
        f"smoothing={smoothing:g} frequency bins is wider than the whole spectrum of {n_points} "
        f"points ({n_freq} bins): it would flatten both spectra, so that D_H is near 0 for any "
        f"two series, and applying its kernel of 8 x smoothing taps takes seconds to hours, or "
        f"all memory. Use smoothing <= {n_freq / MIN_BINS_PER_SMOOTHING:g} (at least "
        f"{MIN_BINS_PER_SMOOTHING} bins per unit of smoothing)."
    )


def normalized_spectra(x, smoothing):
    """Per column: standardise, ``|rfft|^2``, Gaussian smoothing, normalise to sum 1.

    Constant columns (:func:`models.data.constant_columns`) give NaN columns (their spectrum
    is undefined). The columns' transforms run on as many threads as Numba's kernels
    (``numba.set_num_threads``), with the same bits as one by one."""
    mean, sd = column_mean_sd(x)
    constant = constant_columns(x, sd)
    z = (x - mean) / np.where(constant, 1.0, sd)
    spectra = np.abs(scipy.fft.rfft(z, axis=0, workers=n_threads())) ** 2
    if int(4 * smoothing + 0.5) > 0:  # else scipy's kernel is [1], the identity
        spectra = gaussian_filter1d(spectra, smoothing, axis=0, mode="reflect")
    total = spectra.sum(axis=0)
    spectra = spectra / np.where(constant, 1.0, total)
    spectra[:, constant] = np.nan
    return spectra


def spectrum_extent(spectrum: np.ndarray, power: float = 0.999, min_bins: int = 50) -> int:
    """How many leading frequency bins of ``spectrum`` hold ``power`` of every dimension's
    total, at least ``min_bins`` (at most all): the extent of a spectrum plot that shows where
    the power lies (``parscan-train``'s ``spectrum.png``).

    Parameters
    ----------
    spectrum : ndarray, shape (F, N)
        Power per frequency bin and dimension (:func:`normalized_spectra`; a NaN column, a
        constant dimension, is ignored).
    power : float
        The fraction of the power to show.
    min_bins : int
        The fewest bins shown.
    """
    total = np.nansum(spectrum, axis=0)
    cumulative = np.cumsum(np.nan_to_num(spectrum), axis=0)
    reached = cumulative >= power * total  # per column: False up to its bin, then True
    needed = int(np.max(np.argmax(reached, axis=0))) + 1
    return min(max(needed, min_bins), spectrum.shape[0])


def power_spectrum_distance(x_true, x_gen, smoothing=DH_SMOOTHING, *, per_dimension=False):
    """D_H: mean over dimensions of the Hellinger distance between power spectra.

    Per dimension and trajectory: standardise, power spectrum ``|rfft|^2``, smooth with a
    Gaussian of standard deviation ``smoothing`` frequency bins
    (``scipy.ndimage.gaussian_filter1d``, reflect padding, as the lab's code), normalise to sum
    1; then ``H(p, q) = sqrt(1 - sum sqrt(p q)) = sqrt(0.5 sum (sqrt p - sqrt q)^2)`` (the
    second, non-negative form is evaluated). A dimension that is constant in ``x_gen`` (e.g. a
    model collapsed to a fixed point) has no spectrum and gets the maximal distance 1.

    Parameters
    ----------
    x_true : array_like, shape (T, N)
        Reference trajectory (finite, no constant dimension; fewer steps than dimensions,
        ``1 < T < N``, are refused as a transposed array).
    x_gen : array_like, shape (T, N)
        Generated trajectory of the same length -- the frequency grids must match; slice the
        longer one (``x[:T]``) otherwise.
    smoothing : float
        Gaussian smoothing width in frequency bins (lab default 20; 0 = none; as in scipy,
        widths below 0.125 give a one-point kernel, i.e. no smoothing). The series needs
        ``T // 2 + 1 >= 10 * smoothing`` frequency bins (``T >= 398`` points for the default)
        for D_H to discriminate; shorter series give a :class:`SpectrumResolutionWarning`. A
        width above both the spectrum's bins and :data:`MAX_SMOOTHING_BEYOND_SPECTRUM` is
        refused (ValueError).
    per_dimension : bool
        Also return the per-dimension distances.

    Returns
    -------
    float in [0, 1], or (float, ndarray of shape (N,)) with ``per_dimension=True``
        0 for identical series; symmetric in the two series unless one has a constant
        dimension (refused in ``x_true``, distance 1 in ``x_gen``).
    """
    where = "power_spectrum_distance"
    with Checks(where) as checks:
        with checks.caught("x"):
            x_true, x_gen = _pair(x_true, x_gen, where)
        if checks.ok("x") and x_gen.shape[0] != x_true.shape[0]:
            checks.add(
                f"x_true and x_gen must have the same length for their spectra to share a "
                f"frequency grid; got {x_true.shape[0]} and {x_gen.shape[0]} steps. Slice the "
                f"longer one, e.g. x_gen[:{min(x_true.shape[0], x_gen.shape[0])}]."
            )
        smoothing = checks.real(smoothing, "smoothing", positive=False)
        per_dimension = checks.boolean(per_dimension, "per_dimension")
        if checks.ok("x", "smoothing") and (problem := smoothing_problem(len(x_true), smoothing)):
            checks.add(problem, "smoothing")
    fix = "pass longer series or lower smoothing"
    check_dh_resolution(x_true.shape[0], smoothing, where=where, fix=fix, stacklevel=2)
    h = _hellinger_per_run(x_true, x_gen[np.newaxis], smoothing)[0]
    mean = float(h.mean())
    return (mean, h) if per_dimension else mean


def _hellinger_per_run(x_true, runs, smoothing):
    """D_H per run and dimension, shape (R, N), of the validated float64 runs ``runs``
    (R, T, N) against the validated float64 reference ``x_true`` (T, N).

    The runs' spectra are taken together, as the columns of one array, in batches of at
    most :data:`_CHUNK_ELEMENTS` values: one threaded transform instead of one per run (the
    same bits; the 4 validation runs of ``fit`` on 19,999 points, a length whose factor 2,857
    makes each transform slow, 2.7x faster on the 2-core machine: ``bench/metrics.py``)."""
    n_runs, n_steps, n_dims = runs.shape
    root_true = np.sqrt(normalized_spectra(x_true, smoothing))[:, np.newaxis]
    batch = max(1, _CHUNK_ELEMENTS // (n_steps * n_dims))
    distances = []
    for first in range(0, n_runs, batch):
        part = runs[first : first + batch]
        columns = part.transpose(1, 0, 2).reshape(n_steps, part.shape[0] * n_dims)
        root = np.sqrt(normalized_spectra(columns, smoothing)).reshape(-1, part.shape[0], n_dims)
        distances.append(np.sqrt(0.5 * np.sum((root_true - root) ** 2, axis=0)))
    h = np.concatenate(distances)
    return np.where(np.isnan(h), 1.0, np.minimum(h, 1.0))


# ---------------------------------------------------------------------------------------------
# PE(n)
# ---------------------------------------------------------------------------------------------


def _check_model(checks, model):
    if not isinstance(model, Model):
        checks.add(f"expected a models.Model; got {type(model).__name__}.", wrong_kind=True)


def _check_obs(model, x, where, min_steps, constant=False, name="x"):
    """``x`` checked as the model's observations: :func:`models.data.check_trajectory` with
    the model's N, and within the range of the model's dtype, which its runs start in."""
    x = check_trajectory(
        x, where, name=name, min_steps=min_steps, constant=constant, n_obs=model.n_obs
    )
    check_in_range(
        x,
        model.dtype,
        where,
        name,
        f"the model's {np.dtype(model.dtype)}",
        "pass data in the model's units (standardised like its training data) or use "
        "model.astype('float64')",
    )
    return x


def prediction_error(model, x, n=20):
    """PE(n): mean squared error of n-step free-run predictions from every data point.

    From each ``x[t]``, ``t = 0 .. T-n-1``, the model runs ``n`` steps closed-loop
    (``model.generate``: latent models start from ``initial_state(x[t])``), and the prediction
    is compared with ``x[t + n]``; the squared error is averaged over all starts and
    dimensions (Hess et al., ICML 2023). The starts are batched (chunks bound the memory).

    Parameters
    ----------
    model : models.Model
    x : array_like, shape (T, N)
        Finite data, ``T > n`` (constant dimensions allowed); passed to the model in
        ``model.dtype``.
    n : int
        Prediction horizon in steps (lab default 20).

    Returns
    -------
    float
        The MSE; inf or NaN if the model's predictions overflow from some start.
    """
    where = "prediction_error"
    with Checks(where) as checks:
        _check_model(checks, model)
        n = checks.integer(n, "n")
    x = _check_obs(model, x, where, min_steps=n + 1, constant=True)
    return _prediction_error(model, x, n)[0]


def _prediction_error(model, x, n, check=None):
    """PE(n) of validated arguments; ``(pe, None)``, or ``(None, problem)`` when
    ``check(first, runs)`` returns a problem for a chunk of the ``n``-step runs
    ``(n_starts, n, N)`` (float64) from ``x[first], x[first + 1], ...``."""
    x_in = x.astype(model.dtype)
    starts = x.shape[0] - n
    width = getattr(model, "M", model.n_obs)
    chunk = max(1, _CHUNK_ELEMENTS // (n * width))
    total = 0.0
    for lo in range(0, starts, chunk):
        hi = min(lo + chunk, starts)
        runs = model.generate(x_in[lo:hi], n).astype(np.float64)
        problem = None if check is None else check(lo, runs)
        if problem is not None:
            return None, problem
        with np.errstate(over="ignore", invalid="ignore"):
            total += float(np.sum((runs[:, -1, :] - x[lo + n : hi + n]) ** 2))
    return total / (starts * x.shape[1]), None


# ---------------------------------------------------------------------------------------------
# Lyapunov exponents
# ---------------------------------------------------------------------------------------------


@jit
def _orthonormalize(y, r_diag):
    """Gram--Schmidt QR of the columns of ``y`` (D, k) in place; ``r_diag`` gets ``|R_ii|``.

    Modified Gram--Schmidt applied twice ("twice is enough", Giraud et al., Numer. Math. 101,
    2005) keeps the columns orthonormal to rounding; ``r_diag[j]`` is the norm of column j
    after the first projection pass. A column that vanishes gives ``r_diag[j] = 0`` (and a
    ``-inf`` exponent), which is exact for a singular Jacobian.
    """
    d, k = y.shape
    for j in range(k):
        for sweep in range(2):
            for i in range(j):
                proj = 0.0
                for m in range(d):
                    proj += y[m, i] * y[m, j]
                for m in range(d):
                    y[m, j] -= proj * y[m, i]
            norm = 0.0
            for m in range(d):
                norm += y[m, j] * y[m, j]
            norm = np.sqrt(norm)
            if sweep == 0:
                r_diag[j] = norm
            if norm > 0.0:
                for m in range(d):
                    y[m, j] /= norm


@jit
def _flow_lyapunov(kind, x, p, h, n_sub, n_transient, n_steps, y, logs, scratch):
    """Benettin/QR for a flow: ``n_transient + n_steps`` samples of ``n_sub`` RK4 steps each,
    re-orthonormalising the tangent vectors ``y`` (D, k) after every sample; ``logs`` (k,)
    accumulates ``log |R_ii|`` after the transient. ``scratch``: work arrays ``(5, D)``,
    ``(D, D)``, ``(5, D, k)`` and ``(k,)`` (allocated by the caller, which can refuse a size
    the machine cannot hold). Returns -1, or the first sample that is not finite, counting
    ``x`` as sample 0 and the transient's samples.
    """
    literally(kind)  # one specialisation per system (see models.systems.rk4_trajectory)
    work, jwork, ywork, r_diag = scratch
    k = y.shape[1]
    for s in range(n_transient + n_steps):
        for _ in range(n_sub):
            rk4_tangent_step(kind, x, y, p, h, work, jwork, ywork)
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
            return s + 1
        _orthonormalize(y, r_diag)
        if s >= n_transient:
            for i in range(k):
                logs[i] += np.log(r_diag[i])
    return -1


@jit
def _map_lyapunov(jacobians, y, n_skip, logs):
    """Benettin/QR for a map: ``y <- qr(J_t y)`` for each ``J_t`` in ``jacobians`` (T, M, M);
    ``logs`` (k,) accumulates ``log |R_ii|`` for ``t >= n_skip``."""
    k = y.shape[1]
    r_diag = np.empty(k)
    previous = np.empty_like(y)
    for t in range(jacobians.shape[0]):
        previous[:] = y
        matmul_into(jacobians[t], previous, y)
        _orthonormalize(y, r_diag)
        if t >= n_skip:
            for i in range(k):
                logs[i] += np.log(r_diag[i])


def _initial_tangents(dim, k):
    """``k`` orthonormal tangent vectors, shape (dim, k), in general position: the Q of a
    Gaussian matrix (a fixed seed, so the exponents are reproducible). The coordinate axes
    would not do: a Jacobian that keeps an axis invariant (a diagonal one: every ReLU off, a
    decoupled unit) never turns the first vector off it, whose exponent then stays that
    axis', not the largest."""
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((dim, k)))
    return np.ascontiguousarray(q)


def _n_exponents(k, dim, where):
    if k is None:
        return dim
    if k > dim:
        raise ValueError(f"{where}: n_exponents ({k}) exceeds the state dimension ({dim}).")
    return k


class NonFiniteRunError(ValueError):
    """A model's free run became NaN/inf, so a measure of it is undefined."""


def _model_spectrum(model, k, x0, n_steps, transient, where):
    if x0 is None:
        raise ValueError(
            f"{where}: a model needs x0, the observation to start from (e.g. x_test[0])."
        )
    x0 = as_array(x0, "x0", where)
    if x0.dtype.kind not in "iuf":
        raise TypeError(f"{where}: x0 must be a real array; got dtype {x0.dtype}.")
    if x0.shape != (model.n_obs,) or not np.all(np.isfinite(x0)):
        raise ValueError(
            f"{where}: x0 must be a finite array of shape ({model.n_obs},); got shape "
            f"{x0.shape}{'' if np.all(np.isfinite(x0)) else ' with NaN/inf'}."
        )
    z = model.initial_state(x0.astype(model.dtype))
    y = _initial_tangents(model.M, k)
    logs = np.zeros(k)
    chunk = max(1, _CHUNK_ELEMENTS // (model.M * model.M))
    total = transient + n_steps
    done = 0
    while done < total:
        length = min(chunk, total - done)
        states = np.concatenate([z[None], model.simulate(z, length - 1)]) if length > 1 else z[None]
        if not np.all(np.isfinite(states)):
            bad = done + int(np.argmax(~np.all(np.isfinite(states), axis=1)))
            raise NonFiniteRunError(
                f"{where}: the model's free run became non-finite at step {bad}; its "
                f"Lyapunov exponents are undefined (the run diverges)."
            )
        jacobians = np.ascontiguousarray(model.jacobian(states), dtype=np.float64)
        _map_lyapunov(jacobians, y, max(0, transient - done), logs)
        z = model.step(states[-1])
        done += length
    return np.sort(logs / n_steps)[::-1]


def _system_spectrum(system, k, run, n_steps, plan, dt, where):
    """Exponents of ``system`` along the run prepared as ``run`` with the RK4 ``plan``
    (``(n_sub, transient)`` of :meth:`~models.systems.System.plan_with`)."""
    n_sub, transient = plan
    p, x, _ = run
    k = _n_exponents(k, x.shape[0], where)
    d = x.shape[0]
    vectors = f"{k} tangent vector{'s' * (k != 1)}"
    what = f"{vectors} of {d} dimensions (several copies) and a {d} x {d} Jacobian"
    fix = "ask for fewer n_exponents" if k > 1 else f"use a system of fewer than {d} dimensions"

    def make():
        y = _initial_tangents(d, k)
        return y, (np.empty((5, d)), np.empty((d, d)), np.empty((5, d, k)), np.empty(k))

    y, scratch = allocated(make, 8 * (d * d + 7 * d * k + 5 * d + k), where, what, fix)
    logs = np.zeros(k)
    bad = _flow_lyapunov(system.kind, x, p, dt / n_sub, n_sub, transient, n_steps, y, logs, scratch)
    if bad >= 0:
        raise ValueError(
            f"{where}: the {system.name} trajectory became non-finite at t = {bad * dt:g} "
            f"(sample {bad}, counting the transient). Check params and x0, or use a smaller dt."
        )
    return np.sort(logs / (n_steps * dt))[::-1]


def lyapunov_spectrum(
    target,
    n_exponents=None,
    *,
    x0=None,
    n_steps=None,
    transient=None,
    dt=None,
    params=None,
    seed=None,
):
    """The ``n_exponents`` largest Lyapunov exponents, in decreasing order.

    Tangent vectors, orthonormal and in general position at the start (a fixed seed), are
    propagated with the Jacobians along a trajectory and re-orthonormalised by a QR
    decomposition after every step; the exponents are the averages of ``log |R_ii|`` (Benettin
    et al., Meccanica 15, 9-20, 1980). They are always returned in decreasing order; after a
    run too short for the vectors to align, the values are unreliable (two nearly equal
    exponents mix), not the order.

    * A **system** (name or :class:`~models.systems.System`): the flow and its variational
      equation are integrated with RK4 (as :func:`~models.systems.generate`); exponents are per
      unit time. The initial condition follows :func:`~models.systems.generate` (``x0`` /
      ``seed``, ``params``), ``dt`` is the re-orthonormalisation interval.
    * A :class:`~models.base.LatentRNN` (a map): Jacobians of ``model.step`` along the free run
      from ``model.initial_state(x0)``; exponents are per step (divide by the data's dt for per
      unit time). Jacobians are accumulated in float64.

    Parameters
    ----------
    target : str, System or LatentRNN
    n_exponents : int, optional
        How many exponents (default: all, D or M).
    x0 : array_like, shape (D,) or (N,)
        Initial condition (system, optional) or observation to start from (model, required).
    n_steps : int, optional
        Steps averaged over (default 20,000 samples for a system, 10,000 steps for a model).
    transient : int, optional
        Steps run first to settle on the attractor and align the tangent vectors (default: the
        system's transient; 1,000 for a model).
    dt, params, seed
        System only (refused with a model): sampling step, parameter overrides and the seed of
        the initial condition (default 0).

    Returns
    -------
    ndarray, shape (n_exponents,)
    """
    return _lyapunov_spectrum(
        target, n_exponents, x0, n_steps, transient, dt, params, seed, "lyapunov_spectrum"
    )


def _lyapunov_spectrum(target, n_exponents, x0, n_steps, transient, dt, params, seed, where):
    """:func:`lyapunov_spectrum`, with errors naming ``where`` (the public function)."""
    system = get_system(target, where) if isinstance(target, str | System) else None
    with Checks(where) as checks:
        if system is None and not isinstance(target, LatentRNN):
            checks.add(
                f"expected a system name, a System or a LatentRNN (a model with step and "
                f"jacobian); got {type(target).__name__}.",
                wrong_kind=True,
            )
        elif system is None:
            with checks.caught("model"):
                check_finite_params(
                    target.params,
                    where,
                    "the model's parameters",
                    " Its runs have no exponents; use a model with finite parameters (e.g. an "
                    "earlier checkpoint).",
                )
            given = [
                name
                for name, value in (("dt", dt), ("params", params), ("seed", seed))
                if value is not None
            ]
            if given:
                verb = "applies" if len(given) == 1 else "apply"
                checks.add(f"{', '.join(given)} {verb} to systems, not to models.")
        if n_exponents is not None:
            n_exponents = checks.integer(n_exponents, "n_exponents")
        if n_steps is not None:
            n_steps = checks.integer(n_steps, "n_steps")
        if transient is not None:
            transient = checks.integer(transient, "transient", 0)
        if system is not None:
            dt = system.dt if dt is None else checks.real(dt, "dt", positive=True)
            n_steps = 20_000 if n_steps is None else n_steps
            seed = 0 if seed is None else seed
            run = system.prepare_with(checks, params=params, x0=x0, seed=seed)
            if checks.ok("dt", "n_steps", "transient"):
                work = 1.0
                if run is not None and checks.ok("n_exponents"):
                    dim = run[1].shape[0]
                    work = rk4_work(dim, min(n_exponents or dim, dim))
                plan = system.plan_with(checks, dt, transient, n_steps, work=work, from_x0=False)
    if system is not None:
        return _system_spectrum(system, n_exponents, run, n_steps, plan, dt, where)
    n_steps = 10_000 if n_steps is None else n_steps
    transient = 1_000 if transient is None else transient
    k = _n_exponents(n_exponents, target.M, where)
    return _model_spectrum(target, k, x0, n_steps, transient, where)


def max_lyapunov(
    target, *, x0=None, n_steps=None, transient=None, dt=None, params=None, seed=None
) -> float:
    """Largest Lyapunov exponent: ``lyapunov_spectrum(target, 1, ...)[0]``.

    Per unit time for a system (a flow), per step for a :class:`~models.base.LatentRNN` (a map).
    Lorenz-63 gives about 0.906 (Sprott 2003). See :func:`lyapunov_spectrum` for the arguments;
    errors name ``max_lyapunov``.
    """
    return float(
        _lyapunov_spectrum(target, 1, x0, n_steps, transient, dt, params, seed, "max_lyapunov")[0]
    )


# ---------------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------------


def run_problem(runs, mean, limit, bound, label):
    """Why some generated runs cannot be measured, or None when all can.

    Parameters
    ----------
    runs : ndarray, shape (n_runs, n_steps, N)
        Generated observations, float64.
    mean, limit : ndarray, shape (N,), or float
        A value farther than ``limit`` from ``mean`` (per dimension) has diverged.
    bound : str
        What ``limit`` is, for the message (``"1000 data ranges"``).
    label : callable
        ``label(i)`` names run ``i`` in the message, e.g. ``"the free run"``.

    Returns
    -------
    (str, str) or None
        ``(status, message)`` of the first failed run: ``"non_finite"`` if it is NaN/inf
        anywhere, else ``"diverged"``; steps are counted from 1.
    """
    finite = np.all(np.isfinite(runs), axis=2)
    with np.errstate(invalid="ignore"):
        far = np.any(np.abs(runs - mean) > limit, axis=2)
    failed = np.any(~finite | far, axis=1)
    if not failed.any():
        return None
    run = int(np.argmax(failed))
    if not finite[run].all():
        return "non_finite", f"{label(run)} is NaN/inf from step {int(np.argmin(finite[run])) + 1}"
    step = int(np.argmax(far[run])) + 1
    return "diverged", f"{label(run)} leaves {bound} at step {step}"


#: :func:`fixed_point_onsets`' default tolerance: the largest move, in ``scale`` units, of a
#: resting step.
REST_TOLERANCE = 1e-6
#: :func:`fixed_point_onsets`' default least fraction of a run that must rest.
REST_FRACTION = 0.1
#: The fewest points a resting stretch holds (shorter runs never rest).
REST_MIN_POINTS = 10


def fixed_point_onsets(runs, scale=1.0, *, tolerance=REST_TOLERANCE, fraction=REST_FRACTION):
    """Where free runs come to rest on a fixed point: the index from which each run stays put.

    Run ``k`` rests from index ``r`` when no step after ``runs[k, r]`` moves more than
    ``tolerance * scale`` in any dimension and the resting stretch ``runs[k, r:]`` holds at
    least ``fraction`` of the run and :data:`REST_MIN_POINTS` points. A chaotic or periodic
    system's runs never rest; a model's run that does has fallen onto a fixed point -- a
    spurious attractor unless the system rests there, which a score from one start may or
    may not catch (:func:`evaluate` reports it as ``at_rest``).

    Parameters
    ----------
    runs : array_like, shape (..., n_steps, N)
        Generated observations (any leading shape: one run, or several); a NaN/inf step
        counts as a move.
    scale : ndarray, shape (N,), or float
        The unit of ``tolerance`` per dimension, e.g. the data's sd for runs in data units.
    tolerance : float
        Largest move of a resting step, in ``scale`` units.
    fraction : float
        Least fraction of the run that rests, in (0, 1].

    Returns
    -------
    ndarray of int64, shape (...)
        ``r`` for each run that rests (``runs[..., r:, :]`` stay within the tolerance;
        ``r + 1`` counts steps from 1), ``-1`` for each that does not.

    Raises
    ------
    TypeError
        ``runs`` or ``scale`` do not hold real numbers, or ``runs`` is a masked array.
    ValueError
        ``runs`` has fewer than 2 dimensions or N = 0, ``scale`` or ``tolerance`` is not
        finite and positive, or ``fraction`` is outside (0, 1].
    """
    with Checks("fixed_point_onsets") as checks:
        runs = checks.array(runs, "runs")
        scale = checks.array(scale, "scale")
        tolerance = checks.real(tolerance, "tolerance", positive=True)
        fraction = checks.real(fraction, "fraction", positive=True)
        if checks.ok("runs"):
            if runs.ndim < 2 or runs.shape[-1] == 0:
                checks.add(
                    f"runs must have shape (..., n_steps, N) with N >= 1; got shape {runs.shape}."
                )
            elif runs.dtype.kind not in "iuf":
                checks.add(f"runs must hold real numbers; got dtype {runs.dtype}.", wrong_kind=True)
        if checks.ok("scale"):
            if scale.dtype.kind not in "iuf":
                checks.add(
                    f"scale must hold real numbers; got dtype {scale.dtype}.", wrong_kind=True
                )
            elif not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
                checks.add(f"scale must be finite and > 0; got {scale}.")
            elif checks.ok("runs") and scale.shape not in ((), runs.shape[-1:]):
                checks.add(
                    f"scale must be a number or have shape (N,) = {runs.shape[-1:]}; got shape "
                    f"{scale.shape}."
                )
        if checks.ok("fraction") and fraction > 1:
            checks.add(f"fraction must be in (0, 1]; got {fraction}.")
    n = runs.shape[-2]
    onsets = np.full(runs.shape[:-2], -1, dtype=np.int64)
    if n < REST_MIN_POINTS:
        return onsets
    exact = runs if runs.dtype.kind == "f" else runs.astype(np.float64)  # int diffs wrap
    with np.errstate(invalid="ignore", over="ignore"):
        moving = ~(np.max(np.abs(np.diff(exact, axis=-2)) / scale, axis=-1) <= tolerance)
    # the index after each run's last move (0 when it never moves)
    after_last = np.where(moving.any(axis=-1), n - 1 - np.argmax(moving[..., ::-1], axis=-1), 0)
    rests = n - after_last >= max(fraction * n, REST_MIN_POINTS)
    onsets[rests] = after_last[rests]
    return onsets


def _pe_check(pe_steps, mean, limit, diverge_factor):
    """The ``check`` of :func:`_prediction_error` in :func:`evaluate`: each n-step PE run is
    judged by :func:`run_problem` like the free run."""

    def check(first, runs):
        return run_problem(
            runs,
            mean,
            limit,
            f"{diverge_factor:g} data ranges",
            lambda run: f"the {pe_steps}-step prediction (PE) from test point {first + run}",
        )

    return check


def _check_lengths(x, name, s, where):
    """Raise ValueError if the test trajectory ``x`` (``name`` in messages) or the measured
    part of its free runs is too short (or degenerate) for the measures of ``s``
    (:class:`_Settings`); checked up front so the error names ``where``."""
    n_test, measures = x.shape[0], s.measures
    if "pe" in measures and n_test < s.pe_steps + 1:
        raise ValueError(
            f"{where}: {name} has {n_test} time steps; PE needs at least pe_steps + 1 = "
            f"{s.pe_steps + 1} (it predicts {name}[t + {s.pe_steps}] from {name}[t]). Pass a "
            f"longer test trajectory or a smaller pe_steps."
        )
    if not _needs_variation(measures, s.dstsp_method):
        return
    if n_test < 3:
        raise ValueError(
            f"{where}: {name} has {n_test} time steps; D_stsp (bins) and D_H need at least 3 "
            f"(they compare the free run with {name}[1:], 2 points or more). Pass a longer "
            f"test trajectory."
        )
    n_steps = s.run_length(x)
    if "dh" in measures and n_steps - s.transient < 2:
        raise ValueError(
            f"{where}: D_H needs at least 2 measured steps of the free run; got n_steps - "
            f"transient = {n_steps} - {s.transient} = {n_steps - s.transient}. Raise n_steps "
            f"or lower transient."
        )
    stop = 1 + s.dh_length(x) if "dh" in measures else n_test
    check_trajectory(
        x[1:stop],
        where,
        name=f"{name}[1:{stop}] (compared with the run)",
        constant_reason=_CONSTANT_FOR_EVALUATE,
    )


@dataclass(frozen=True)
class _Settings:
    """:func:`evaluate`'s checked settings, the same for every test trajectory."""

    n_steps: int | None  # None: each test trajectory's own T - 1
    transient: int
    n_starts: int
    measures: tuple
    dstsp_method: str
    n_bins: int
    box: str
    sigma2: float
    smoothing: float
    pe_steps: int
    diverge_factor: float
    seed: int

    def run_length(self, x) -> int:
        """Steps of each free run from the test trajectory ``x``."""
        return x.shape[0] - 1 if self.n_steps is None else self.n_steps

    def dh_length(self, x) -> int:
        """Points D_H compares: the measured part of a run and ``x[1:]``, cut to the shorter."""
        return min(self.run_length(x) - self.transient, x.shape[0] - 1)


#: :func:`evaluate`'s refusal of a constant test dimension ends with this.
_CONSTANT_FOR_EVALUATE = (
    "D_H and binned D_stsp need non-constant dimensions (they standardise each one); PE, "
    "'lyapunov' and D_stsp with dstsp_method='gmm' accept constant ones. Request only those, "
    "e.g. measures=('pe',)."
)


def _needs_variation(measures, dstsp_method) -> bool:
    """Whether the measures refuse a constant test dimension: D_H and binned D_stsp."""
    return "dh" in measures or ("dstsp" in measures and dstsp_method == "bins")


def _test_trajectories(model, x_test, where) -> tuple[list[np.ndarray], list[str]]:
    """``x_test`` -- one trajectory, or several (:func:`models.data.several_trajectories`) --
    checked, constant dimensions allowed (only some measures refuse them), as a list of
    float64 arrays, and their names in messages."""
    check_trajectory_or_list(x_test, where, "x_test", model.n_obs)
    if not several_trajectories(x_test):
        x = _check_obs(model, x_test, where, 2, constant=True, name="x_test")
        return [x.astype(np.float64)], ["x_test"]
    names = [f"x_test[{k}]" for k in range(len(x_test))]
    tests = [
        _check_obs(model, x, where, 2, constant=True, name=name).astype(np.float64)
        for x, name in zip(x_test, names, strict=True)
    ]
    return tests, names


def evaluate(
    model,
    x_test,
    *,
    n_steps=None,
    transient=0,
    n_starts=1,
    measures=("dstsp", "dh", "pe"),
    n_bins=30,
    dstsp_method=None,
    box="minmax",
    sigma2=1.0,
    smoothing=DH_SMOOTHING,
    pe_steps=20,
    diverge_factor=1e3,
    seed=0,
):
    """Free run(s) from test points, then the DSR measures (DESIGN.md section 7).

    The model generates ``n_steps`` steps from ``x_test[0]`` (closed loop, in
    ``model.dtype``); the first ``transient`` generated steps are dropped. D_stsp compares the
    rest with ``x_test[1:]``; D_H compares equal lengths (both cut to the shorter). PE uses the
    test data only (n-step predictions from every test point).

    With ``n_starts = k > 1`` the model runs ``k`` free runs in one batched call, from the
    evenly spaced test points ``x_test[i T // k]``, ``i = 0 .. k-1``; D_stsp and D_H are the
    means over the runs (each against the whole test trajectory). A model with a second,
    spurious attractor is then caught from the starts in that attractor's basin, which a
    single run from ``x_test[0]`` may never visit.

    Several test trajectories (a list or tuple of 2-D array_likes: held-out trials, recordings,
    runs from other initial conditions) each get ``n_starts`` free runs from their own
    points, ``n_steps`` long (default: their own ``T_k - 1``). D_stsp compares the ``i``-th
    runs from all trajectories together with all test points together (the mean over ``i``):
    one trajectory's short stretch of an attractor is a poor sample of its occupation measure
    (true Lorenz-63 trajectories against true ones, 30 bins: 8 of 10,000 steps score
    0.06-0.09 together, 0.5-0.8 as the mean of their pairs; 40 of 2,000 0.05-0.08 together,
    3.6-4.2 as the mean; ``bench/several_trajectories.py --floors``). D_H is the mean over the
    trajectories (a
    spectrum needs one contiguous series), PE the mean over all prediction points. Each
    trajectory's own scores are reported too (``per_trajectory``). A run diverges when it
    leaves ``diverge_factor`` ranges of all test data together.

    A run is not measured if it is ``"non_finite"`` (NaN/inf), ``"diverged"`` (some value
    farther than ``diverge_factor`` data ranges from the test data's mean, per dimension; a
    constant dimension's range counts as 1) or
    ``"out_of_box"`` (binned D_stsp only: no generated point inside the data's box); all
    measures are then None. With several starts, one such run decides the status. The free
    runs serve D_stsp and D_H only: with ``measures`` of ``"pe"`` and ``"lyapunov"`` alone, a
    failed free run leaves ``at_rest`` None and decides nothing. The
    ``pe_steps``-step runs behind PE are judged in the same way (``"non_finite"`` or
    ``"diverged"``, the message naming the test point the failed prediction starts from).

    Parameters
    ----------
    model : models.Model
    x_test : array_like, shape (T, N), or list of them (shapes (T_k, N))
        Test trajectory, or several, typically standardised with the training data's mean
        and sd. A 3-D array is refused: pass ``list(x_test)``. A constant dimension is
        refused when D_H or binned D_stsp is requested (they standardise each dimension);
        PE, ``"lyapunov"`` and GMM D_stsp accept it, as :func:`prediction_error` does.
    n_steps : int, optional
        Length of each free run (default ``T - 1``); may exceed ``T - 1``.
    transient : int
        Generated steps dropped before measuring (from each run); ``n_steps - transient``
        points of each run are scored (``n_measured`` in the result).
    n_starts : int
        Number of free runs from each test trajectory (>= 1, at most its ``T``), each
        ``n_steps`` long.
    measures : sequence of {"dstsp", "dh", "pe", "lyapunov"}
        ``"lyapunov"`` (LatentRNN only): largest exponent per step from ``x_test[0]`` (from
        the first point of the first trajectory when there are several).
    n_bins, box, sigma2, seed
        Passed to :func:`state_space_divergence` (all settings are checked before the free
        run, also those of measures not requested; ``n_bins`` against the data's ``N`` only
        for the binned D_stsp, which reads it).
    dstsp_method : {"bins", "gmm"}, optional
        Default: bins for N < 6, GMM for N >= 6 (the lab's rule).
    smoothing : float
        Passed to :func:`power_spectrum_distance` (a
        :class:`SpectrumResolutionWarning` when the compared length is too short for it; a
        width beyond the spectrum and :data:`MAX_SMOOTHING_BEYOND_SPECTRUM` is refused).
    pe_steps : int
        Horizon of :func:`prediction_error` (``x_test`` needs ``pe_steps + 1`` steps).
    diverge_factor : float
        Divergence threshold in data ranges.

    Warns
    -----
    SpectrumResolutionWarning
        D_H compares fewer points than its ``smoothing`` needs (see
        :func:`power_spectrum_distance`); with several test trajectories, once, for the
        shortest comparison.
    StateSpaceResolutionWarning
        Binned D_stsp scores runs of ``n_steps - transient`` points, fewer than
        ``MIN_POINTS_PER_BIN`` (10) per bin that ``x_test[1:]`` occupies (see
        :func:`state_space_divergence`), e.g. after a large ``transient``; with several
        test trajectories, the points of all their runs together against all test points.

    Returns
    -------
    dict
        ``status`` ("ok", "non_finite", "diverged", "out_of_box"), ``message``, ``n_steps``
        (the length of each free run, the transient included), ``transient``,
        ``n_measured`` (``n_steps - transient``: the points of each run that D_stsp scores;
        D_H compares the first ``min(n_measured, T - 1)`` of them), ``n_starts``,
        ``dstsp_method``, one entry per requested measure (float, or None when the
        status is not "ok"), and ``at_rest``: the free runs that come to rest
        (:func:`fixed_point_onsets`, tolerance in sds of the test trajectory), a list of
        ``{"start": test point index, "step": first resting step counted from 1, "point":
        where it rests (the test data's units)}`` -- empty when none rests, None when the
        runs are non-finite or diverged (also when a later measure fails, the list stays:
        a run resting outside the data's box explains ``"out_of_box"``). With several test
        trajectories ``n_steps`` and ``n_measured`` are lists (one entry per trajectory),
        ``n_trajectories`` and ``per_trajectory`` (each trajectory's result as if it were the
        only one, without ``lyapunov``; but runs with no point in their own trajectory's box
        are scored in the box of all test points, and leave its entry ``"out_of_box"`` with
        its D_H and PE) are added, and the status is that of the first
        trajectory that cannot be measured, its message prefixed by the trajectory's name
        (``"x_test[2]: the free run ..."``) and counting the trajectories that cannot; each
        ``at_rest`` entry then also names its ``"trajectory"`` (index).
    """
    where = "evaluate"
    with Checks(where) as checks:
        _check_model(checks, model)
        checks.raise_problems()  # the test data and the settings below depend on the model
        several = several_trajectories(x_test)
        tests, names = _test_trajectories(model, x_test, where)
        n_steps = None if n_steps is None else checks.integer(n_steps, "n_steps")
        transient = checks.integer(transient, "transient", 0)
        if checks.ok("n_steps", "transient"):
            runs = [x.shape[0] - 1 if n_steps is None else n_steps for x in tests]
            k = int(np.argmin(runs))
            if transient >= runs[k]:
                of = f", for {names[k]}" if several and n_steps is None else ""
                checks.add(
                    f"transient ({transient}) must be smaller than n_steps ({runs[k]}{of}).",
                    "transient",
                )
        n_starts = checks.integer(n_starts, "n_starts")
        shortest = int(np.argmin([x.shape[0] for x in tests]))
        if checks.ok("n_starts") and n_starts > tests[shortest].shape[0]:
            points = f"{tests[shortest].shape[0]}" + f" in {names[shortest]}" * several
            checks.add(
                f"n_starts ({n_starts}) must not exceed the number of test points ({points})."
            )
        try:
            measures = (measures,) if isinstance(measures, str) else tuple(measures)
        except TypeError:
            checks.add(
                f"measures must be a name or a sequence of names from {MEASURES}; got "
                f"{type(measures).__name__}.",
                "measures",
                wrong_kind=True,
            )
        else:
            if not measures or any(m not in MEASURES for m in measures):
                checks.add(
                    f"measures must be a non-empty subset of {MEASURES}; got {measures}.",
                    "measures",
                )
            elif "lyapunov" in measures and not isinstance(model, LatentRNN):
                checks.add(
                    f"the 'lyapunov' measure needs a LatentRNN (step and jacobian); got "
                    f"{type(model).__name__}.",
                    wrong_kind=True,
                )
        if dstsp_method is None:
            dstsp_method = "bins" if model.n_obs < GMM_MIN_DIMS else "gmm"
        s = _Settings(
            n_steps=n_steps,
            transient=transient,
            n_starts=n_starts,
            measures=measures,
            dstsp_method=checks.choice(dstsp_method, "dstsp_method", ("bins", "gmm")),
            n_bins=checks.integer(n_bins, "n_bins"),
            box=checks.choice(box, "box", ("minmax", "sd2")),
            sigma2=checks.real(sigma2, "sigma2", positive=True),
            smoothing=checks.real(smoothing, "smoothing", positive=False),
            pe_steps=checks.integer(pe_steps, "pe_steps"),
            diverge_factor=checks.real(diverge_factor, "diverge_factor", positive=True),
            seed=checks.seed(seed),
        )
        if checks.ok("dstsp_method", "n_bins") and s.dstsp_method == "bins":
            with checks.caught():
                _check_total_bins(s.n_bins, model.n_obs, where)
        if checks.ok("measures", "dstsp_method") and _needs_variation(measures, s.dstsp_method):
            with checks.caught("x_test"):  # the first trajectory with a constant dimension
                for x, name in zip(tests, names, strict=True):
                    check_trajectory(x, where, name=name, constant_reason=_CONSTANT_FOR_EVALUATE)
        if checks.ok("x_test", "n_steps", "transient", "measures", "dstsp_method", "pe_steps"):
            with checks.caught():  # the first trajectory too short for the measures
                for x, name in zip(tests, names, strict=True):
                    _check_lengths(x, name, s, where)
        if checks.ok("n_steps", "transient", "measures", "smoothing") and "dh" in measures:
            compared = [s.dh_length(x) for x in tests]
            dh_short = int(np.argmin(compared))
            if problem := smoothing_problem(compared[dh_short], s.smoothing):
                checks.add(problem, "smoothing")
    if "dh" in measures:
        name = names[dh_short]
        fix = (
            f"min(n_steps - transient, len({name}) - 1) points are compared; raise n_steps, "
            f"lower transient, pass a longer {name} or lower smoothing"
        )
        check_dh_resolution(compared[dh_short], s.smoothing, where=where, fix=fix, stacklevel=2)
    binned = "dstsp" in measures and s.dstsp_method == "bins"
    # each test trajectory's box and bins are computed once, for all its runs
    references = [
        _binned_reference(x[1:], s.n_bins, s.box, where, name) if binned else None
        for x, name in zip(tests, names, strict=True)
    ]
    pooled = _pooled_reference(tests, s, where) if binned and len(tests) > 1 else references[0]
    if binned:
        n_measured = sum(s.run_length(x) - s.transient for x in tests)
        runs_of = f" (the runs from the {len(tests)} test trajectories together)" * several
        fix = (
            f"n_steps - transient are scored{' from each test trajectory' * several}; raise "
            "n_steps, lower transient or lower n_bins"
        )
        _check_occupancy(n_measured, pooled, s.n_bins, where, fix, 2, runs_of)

    joined = np.concatenate(tests) if several else tests[0]
    mean = joined.mean(axis=0)
    ranges = joined.max(axis=0) - joined.min(axis=0)
    limit = s.diverge_factor * np.where(ranges > 0, ranges, 1.0)  # 1: as in _at_rest
    scored = [
        _score_trajectory(model, x, s, reference, mean, limit, where, alone=not several)
        for x, reference in zip(tests, references, strict=True)
    ]
    if several:
        result = _combined(scored, tests, names, pooled, s)
    else:
        result = scored[0][0]
    if "lyapunov" in measures and result["status"] == "ok":
        try:
            result["lyapunov"] = max_lyapunov(model, x0=tests[0][0])
        except NonFiniteRunError as exc:
            failed = dict.fromkeys(measures)
            result.update(failed, status="non_finite", message=f"the Lyapunov run: {exc}")
    return result


def _pooled_reference(tests, s, where):
    """The binned D_stsp reference of several test trajectories together: every ``x[1:]``."""
    joined = np.concatenate([x[1:] for x in tests])
    return _binned_reference(joined, s.n_bins, s.box, where, "the test trajectories together")


def _mean_dstsp(true, runs, reference, s):
    """Mean D_stsp (settings ``s``) of the generated ``runs`` (n_runs, n, N) against the test
    points ``true`` (binned: their :func:`_binned_reference` ``reference`` instead, ``true``
    unused); NaN when a run has no point in the box."""
    if reference is not None:
        scores = [_binned_kl(reference, run, s.n_bins) for run in runs]
    else:
        scores = [
            _kl_gmm(true, run, s.sigma2, GMM_POINTS, GMM_SAMPLES, s.seed, "evaluate")
            for run in runs
        ]
    return float(np.mean(scores))


def _score_trajectory(model, x, s, reference, mean, limit, where, alone):
    """:func:`evaluate`'s free runs from one checked test trajectory ``x`` (float64) and its
    measures but ``"lyapunov"`` (left None); ``reference``: the binned D_stsp reference of
    ``x[1:]`` (None otherwise); ``mean``, ``limit``: the divergence bounds of
    :func:`run_problem`; ``where`` names :func:`evaluate` in errors. Returns the result and
    the measured part of the runs, ``(n_starts, n_steps - transient, N)`` (None when they
    cannot be measured). Runs with no point in ``x``'s own box are ``"out_of_box"``; unless
    ``x`` is the only test trajectory (``alone``) they are still measured (D_H, PE) and
    returned: the D_stsp of several trajectories pools them against all test points."""
    n_steps = s.run_length(x)
    starts = np.arange(s.n_starts) * x.shape[0] // s.n_starts
    try:
        gen = model.generate(x[starts].astype(model.dtype), n_steps).astype(np.float64)
    except TooLargeForThisMachine as exc:  # runs beyond memory, in generate's words
        raise ValueError(f"{where}: {exc} Lower n_steps or n_starts.") from None
    gen = gen.reshape(s.n_starts, n_steps, x.shape[1])
    result = {
        "status": "ok",
        "message": "",
        "n_steps": n_steps,
        "transient": s.transient,
        "n_measured": n_steps - s.transient,
        "n_starts": s.n_starts,
        "dstsp_method": s.dstsp_method,
    }
    result.update(dict.fromkeys(s.measures))

    def free_run(run):
        if s.n_starts == 1:
            return "the free run"
        return f"the free run (run {run + 1} of {s.n_starts}, from test point {starts[run]})"

    problem = run_problem(gen, mean, limit, f"{s.diverge_factor:g} data ranges", free_run)
    if problem is not None:
        result["at_rest"] = None
        if "dstsp" in s.measures or "dh" in s.measures:  # PE and Lyapunov do not use the runs
            result.update(status=problem[0], message=problem[1])
            return result, None
    else:
        result["at_rest"] = _at_rest(gen, starts, x)
    gen = gen[:, s.transient :]
    values = {}
    if "dstsp" in s.measures:
        dstsp = _mean_dstsp(x[1:], gen, reference, s)
        if not math.isnan(dstsp):
            values["dstsp"] = dstsp
        else:
            result.update(status="out_of_box", message=_OUT_OF_BOX)
            if alone:  # of several, _combined scores these runs in the pooled box
                return result, None
    if "dh" in s.measures:
        length = s.dh_length(x)
        h = _hellinger_per_run(x[1 : 1 + length], gen[:, :length], s.smoothing)
        values["dh"] = float(np.mean(h.mean(axis=1)))
    if "pe" in s.measures:
        check = _pe_check(s.pe_steps, mean, limit, s.diverge_factor)
        values["pe"], problem = _prediction_error(model, x, s.pe_steps, check)
        if problem is not None:
            result.update(status=problem[0], message=problem[1])
            return result, None
    result.update(values)
    return result, gen


def _at_rest(gen, starts, x):
    """:func:`evaluate`'s ``at_rest``: the free runs ``gen`` (from the points ``starts``
    of the test trajectory ``x``) that rest (:func:`fixed_point_onsets`, in sds of ``x``)."""
    sd = column_mean_sd(x)[1]  # x.std overflows near the largest float64, underflows near 0
    onsets = fixed_point_onsets(gen, np.where(sd > 0, sd, 1.0))
    return [
        {"start": int(starts[k]), "step": int(onsets[k]) + 1, "point": gen[k, -1].tolist()}
        for k in np.flatnonzero(onsets >= 0)
    ]


def _combined(scored, tests, names, pooled, s):
    """:func:`evaluate`'s result for several test trajectories (``tests``, called ``names``)
    from their :func:`_score_trajectory` ``(result, runs)`` pairs ``scored``: D_stsp of all
    their ``i``-th runs together against all test points together (``pooled``: the binned
    reference of those), averaged over ``i``; D_H averaged over the trajectories; PE over all
    prediction points (weighted by each trajectory's ``T_k - pe_steps``)."""
    results = [r for r, _ in scored]
    combined = {
        "status": "ok",
        "message": "",
        "n_steps": [r["n_steps"] for r in results],
        "transient": s.transient,
        "n_measured": [r["n_measured"] for r in results],
        "n_starts": s.n_starts,
        "dstsp_method": s.dstsp_method,
        "n_trajectories": len(results),
        **dict.fromkeys(s.measures),
        "per_trajectory": [{k: v for k, v in r.items() if k != "lyapunov"} for r in results],
        "at_rest": _combined_at_rest(results),
    }
    # a trajectory's runs out of its own box are scored in the pooled box below
    failed = [k for k, r in enumerate(results) if r["status"] not in ("ok", "out_of_box")]
    if failed:
        first = results[failed[0]]
        count = f" ({len(failed)} of the {len(results)} test trajectories cannot be measured)"
        combined.update(
            status=first["status"], message=f"{names[failed[0]]}: {first['message']}{count}"
        )
        return combined
    values = {}
    if "dstsp" in s.measures:
        for k, (r, gen) in enumerate(scored):  # out of its own box: in the pooled one, each?
            if r["status"] == "out_of_box" and any(
                math.isnan(_binned_kl(pooled, run, s.n_bins)) for run in gen
            ):
                combined.update(
                    status="out_of_box",
                    message=f"{names[k]}: {_OUT_OF_BOX} (nor that of all test trajectories "
                    "together)",
                )
                return combined
        runs = np.concatenate([gen for _, gen in scored], axis=1)
        true = None if pooled is not None else np.concatenate([x[1:] for x in tests])
        values["dstsp"] = _mean_dstsp(true, runs, pooled, s)
        if math.isnan(values["dstsp"]):
            combined.update(
                status="out_of_box", message=f"{_OUT_OF_BOX} (of all test trajectories together)"
            )
            return combined
    if "dh" in s.measures:
        values["dh"] = float(np.mean([r["dh"] for r in results]))
    if "pe" in s.measures:
        weights = [x.shape[0] - s.pe_steps for x in tests]
        values["pe"] = float(np.average([r["pe"] for r in results], weights=weights))
    combined.update(values)
    return combined


def _combined_at_rest(results):
    """The ``at_rest`` of several test trajectories' results, each tagged with its
    trajectory's index; None when some trajectory's runs could not be checked."""
    if any(r["at_rest"] is None for r in results):
        return None
    return [{"trajectory": k, **p} for k, r in enumerate(results) for p in r["at_rest"]]
