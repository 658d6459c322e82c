"""Choosing the generalized-teacher-forcing parameter alpha (GTF; Hess et al., ICML 2023).

With full forcing (every latent observed and forced, ``n_forced = M``) the forced map
``G_t(z) = (1 - alpha) F(z) + alpha d_t`` has Jacobian ``(1 - alpha) J_F(z)``; if
``(1 - alpha) sup ||J_F||_2 < 1`` along the trajectory it is a contraction, the Jacobian
products in the DEER scan stay bounded and Newton converges in a number of iterations that
does not grow with ``T`` (GTF-DEER: Hess, Goetz & Durstewitz, arXiv:2605.12683; DESIGN.md §4).
:func:`gtf_alpha` turns a bound ``s`` on ``||J_F||_2`` into ``alpha = max(0, 1 - 1/s) + margin``.
"""

import warnings

import numpy as np

from parscan._arguments import array_and_problem, bool_problem, in_model_dtype
from parscan._buffers import jacobian_chunk
from parscan._deer_kernels import spectral_norms
from parscan._jit import n_threads
from parscan._model_calls import check_latent_rnn, step_and_jacobian_into

METHODS = ("sup", "geomean", "param_bound")

#: default safety margin added to ``1 - 1/s``: with ``s = max ||J||`` the forced map then
#: contracts by ``(1 - alpha) s = 1 - margin * s`` at the points the bound was taken over.
DEFAULT_MARGIN = 0.02


class GTFGuaranteeWarning(UserWarning):
    """alpha was estimated for partial forcing (``n_forced < M``): the unforced latents are not
    damped by alpha, so no contraction (and no T-independent DEER convergence) is guaranteed."""


def jacobian_norms(model, points: np.ndarray, where: str = "jacobian_norms") -> np.ndarray:
    """Exact spectral norms ``||J_F(z)||_2`` at many states.

    Parameters
    ----------
    model : LatentRNN
        Provides ``step_and_jacobian(z, out=(f, j))``.
    points : ndarray, shape (P, M)
        C-contiguous states of the model dtype, taken in chunks whose Jacobians take at most
        64 MiB (:func:`parscan._buffers.jacobian_chunk`).
    where : str
        The public function whose message a refusal of the model's result starts with
        (:func:`parscan._model_calls.step_and_jacobian_into`).

    Returns
    -------
    ndarray, shape (P,), float64
        Largest singular values: the largest eigenvalue of ``J^T J`` in float64, by cyclic
        Jacobi for ``M <= 5`` and by Householder tridiagonalisation and Sturm bisection above
        (exact to about ``M * eps``, not a power-iteration estimate). NaN where ``J`` is not
        finite.
    """
    P, M = points.shape
    out = np.empty(P, dtype=np.float64)
    size = jacobian_chunk(P, M, points.dtype.itemsize)  # P = 0: a valid range step
    f_buf = np.empty((size, M), dtype=points.dtype)
    j_buf = np.empty((size, M, M), dtype=points.dtype)
    # the kernel runs in float64 only (one compiled specialisation)
    j64 = j_buf if j_buf.dtype == np.float64 else np.empty(j_buf.shape, dtype=np.float64)
    for lo in range(0, P, size):
        hi = min(P, lo + size)
        m = hi - lo
        step_and_jacobian_into(model, points[lo:hi], False, (f_buf[:m], j_buf[:m]), where)
        if j64 is not j_buf:
            j64[:m] = j_buf[:m]
        spectral_norms(j64[:m], max(1, min(m, 4 * n_threads())), out[lo:hi])
    return out


def _check(model, forcing, states, method, margin, n_forced, per_sequence):
    """Validate the arguments of :func:`gtf_alpha`; return ``(forcing, states, n_forced,
    per_sequence)``."""
    type_errors, value_errors = [], []
    check_latent_rnn(model, ("step_and_jacobian",), "gtf_alpha")
    M, dtype = model.M, model.dtype
    if not isinstance(method, str) or method not in METHODS:
        value_errors.append(f"`method` must be one of {METHODS}; got {method!r}.")
    elif method == "param_bound" and not hasattr(model, "norm_bound"):
        type_errors.append(
            f"method='param_bound' needs model.norm_bound(); {type(model).__name__} has none. "
            "Use method='sup'."
        )
    if isinstance(margin, bool) or not isinstance(margin, int | float | np.integer | np.floating):
        type_errors.append(f"`margin` must be a float; got {type(margin).__name__}.")
    elif not (0.0 <= margin < 1.0):
        value_errors.append(f"`margin` must be in [0, 1); got {margin}.")
    given_forcing, given_states = forcing, states
    try:
        forcing, masked_forcing = array_and_problem(forcing, "`forcing`")
        states, masked_states = (
            (None, None) if states is None else array_and_problem(states, "`states`")
        )
    except ValueError as exc:  # ragged: no array to check further
        raise ValueError(f"gtf_alpha: {exc}") from None
    forcing, too_large_forcing = in_model_dtype(given_forcing, forcing, "`forcing`", dtype)
    states, too_large_states = (
        (None, None) if states is None else in_model_dtype(given_states, states, "`states`", dtype)
    )
    problems = (bool_problem(per_sequence, "`per_sequence`"), masked_forcing, masked_states)
    type_errors += [problem for problem in problems if problem is not None]
    value_errors += [p for p in (too_large_forcing, too_large_states) if p is not None]
    N = forcing.shape[-1] if forcing.ndim >= 2 else None
    if forcing.ndim < 2:
        value_errors.append(f"`forcing` must have shape (..., T, N); got {forcing.shape}.")
    elif not 1 <= N <= M:
        value_errors.append(
            f"`forcing` must have 1 <= N <= M={M} columns (the observed latents); "
            f"got forcing.shape={forcing.shape}."
        )
    if forcing.dtype != dtype and too_large_forcing is None:
        type_errors.append(
            f"`forcing` must have the model dtype {dtype}; got {forcing.dtype}. "
            f"Use forcing.astype(np.{dtype})."
        )
    if states is not None:
        if forcing.ndim >= 2 and states.shape != (*forcing.shape[:-1], M):
            value_errors.append(
                f"`states` must have shape forcing.shape[:-1] + (M,) = "
                f"{(*forcing.shape[:-1], M)}; got {states.shape}."
            )
        if states.dtype != dtype and too_large_states is None:
            type_errors.append(
                f"`states` must have the model dtype {dtype}; got {states.dtype}. "
                f"Use states.astype(np.{dtype})."
            )
    if n_forced is None:
        n_forced = N
    elif isinstance(n_forced, bool) or not isinstance(n_forced, int | np.integer):
        type_errors.append(f"`n_forced` must be an int; got {type(n_forced).__name__}.")
    elif N is not None and not 0 <= n_forced <= N:
        value_errors.append(f"`n_forced` must be in [0, N={N}]; got {n_forced}.")
    if type_errors:
        raise TypeError("gtf_alpha: " + " ".join(type_errors + value_errors))
    if value_errors:
        raise ValueError("gtf_alpha: " + " ".join(value_errors))
    return forcing, states, int(n_forced), bool(per_sequence)


def gtf_alpha(
    model,
    forcing,
    *,
    states=None,
    method="sup",
    margin=DEFAULT_MARGIN,
    n_forced=None,
    per_sequence=False,
):
    """GTF parameter alpha from a bound ``s`` on ``||J_F||_2``: ``max(0, 1 - 1/s) + margin``.

    Parameters
    ----------
    model : LatentRNN
        The map ``F`` (``M``, ``dtype``, ``step_and_jacobian``; ``norm_bound`` for
        ``"param_bound"``).
    forcing : array_like, shape (..., T, N)
        Teacher signal (observed part of the latents, ``N <= M``), model dtype (a list is
        read in it).
    states : ndarray, shape (..., T, M), optional
        Current latent trajectory (e.g. a DEER iterate). It supplies the unobserved latents of
        the evaluation points and is itself evaluated. Without it the unobserved latents are 0.
    method : {"sup", "geomean", "param_bound"}
        How ``s`` is obtained:

        * ``"sup"`` (default): ``max ||J_F(z)||_2`` over the data points ``z = [x_t; u_t]``
          (``x_t`` from ``forcing``, ``u_t`` the unobserved part of ``states`` or 0) and over
          ``states``. Makes the fully forced map a contraction at those points, which is what
          GTF-DEER needs for ``T``-independent Newton iteration counts (DESIGN.md §4).
        * ``"geomean"``: geometric mean ``exp(mean log ||J_F(z)||_2)`` over the same points --
          the Durstewitz lab's "product upper bound" estimator, which bounds the growth of
          Jacobian products (gradients) on average but not at every step; it can leave DEER
          slow on chaotic data.
        * ``"param_bound"``: ``model.norm_bound()``, a bound over all states from the
          parameters alone (cheap, pessimistic: larger alpha than needed).
    margin : float in [0, 1)
        Added to ``max(0, 1 - 1/s)``; the result is clipped to ``[0, 1]``. With ``"sup"`` the
        forced map then contracts by ``1 - margin * s`` at the evaluated points; the margin
        also covers iterates that stray from the data. ``margin=0`` reproduces the plain
        estimators. A Python or NumPy float or int (not a bool).
    n_forced : int, optional
        Number of forced latents (default ``N``). When ``n_forced < M`` a
        :class:`GTFGuaranteeWarning` is emitted: the unforced latents are not damped.
    per_sequence : bool
        Return one alpha per sequence (shape ``forcing.shape[:-2]``, the bound taken over each
        sequence's own points) instead of one for the whole batch. ``True`` or ``False`` (a
        NumPy bool too).

    Returns
    -------
    float, or ndarray of float64 with shape forcing.shape[:-2] (``per_sequence=True``; shape
    ``()`` for 2-D ``forcing``)
        An empty batch (``0`` in ``forcing.shape[:-2]``, ``T >= 1``) has no points to bound:
        ``"sup"`` and ``"geomean"`` then give ``margin`` (an empty array with
        ``per_sequence=True``).

    Raises
    ------
    TypeError, ValueError
        Bad arguments (messages start with ``gtf_alpha:``; a masked ``forcing`` or ``states``
        is refused: fill it first); NaN/inf Jacobian norms (non-finite
        ``forcing``, ``states`` or parameters) or a NaN/inf ``model.norm_bound()`` (NaN/inf
        parameters, ``"param_bound"``) -- they are never ignored.

    Notes
    -----
    Spectral norms are exact (:func:`jacobian_norms`), computed for all points in parallel.
    """
    forcing, states, n_forced, per_sequence = _check(
        model, forcing, states, method, margin, n_forced, per_sequence
    )
    return estimate_alpha(
        model, forcing, states, method, margin, n_forced, per_sequence, "gtf_alpha", 3
    )


#: The fix a failed estimate names, unless its caller gives its own.
PASS_ALPHA = " Fix the data or pass alpha explicitly."


def estimate_alpha(
    model,
    forcing,
    states,
    method,
    margin,
    n_forced,
    per_sequence,
    where,
    stacklevel,
    fix=PASS_ALPHA,
):
    """:func:`gtf_alpha` after validation, also called by ``deer_solve(alpha="auto")``.
    Errors start with ``where`` (the public function called) and end with ``fix`` (a caller
    that names its own remedies passes ``""``); ``stacklevel`` is that of
    :func:`warnings.warn` called here (3: the caller of :func:`gtf_alpha`)."""
    M, N = model.M, forcing.shape[-1]
    batch = forcing.shape[:-2]
    if method == "param_bound":
        s = float(model.norm_bound())
        if not np.isfinite(s):
            raise ValueError(
                f"{where}: model.norm_bound() is {s}: the model parameters contain NaN/inf "
                "(or are so large that the bound overflows). Fix the parameters."
            )
        bound = np.full(batch if per_sequence else (), s)
    elif forcing.shape[-2] == 0:
        raise ValueError(
            f"{where}: method {method!r} needs T >= 1; got forcing.shape "
            f"{forcing.shape}. Use method='param_bound'."
        )
    elif 0 in batch:
        bound = np.zeros(batch if per_sequence else ())  # no points: the margin alone
    else:
        for name, arr in (("forcing", forcing), ("states", states)):
            if arr is not None and not np.isfinite(arr).all():
                raise ValueError(
                    f"{where}: `{name}` contains NaN/inf ({int(np.sum(~np.isfinite(arr)))} "
                    f"values); they are never ignored.{fix}"
                )
        points = np.zeros((*forcing.shape[:-1], M), dtype=model.dtype)
        points[..., :N] = forcing
        if states is not None:
            points[..., N:] = states[..., N:]
        sets = [points]
        if states is not None and not np.array_equal(points, states):
            sets.append(states)
        norms = np.concatenate(
            [jacobian_norms(model, p.reshape(-1, M), where).reshape(*batch, -1) for p in sets],
            axis=-1,
        )
        bad = ~np.isfinite(norms)
        if bad.any():
            raise ValueError(
                f"{where}: ||J_F|| is NaN/inf at {int(bad.sum())} of {norms.size} points; "
                "the points (data, states) or the model parameters contain NaN/inf, or F "
                f"overflows there.{fix}"
            )
        axis = -1 if per_sequence else None
        if method == "sup":
            bound = np.max(norms, axis=axis)
        else:
            with np.errstate(divide="ignore"):
                bound = np.exp(np.mean(np.log(norms), axis=axis))
    base = np.where(bound > 1.0, 1.0 - 1.0 / np.maximum(bound, 1.0), 0.0)
    alpha = np.clip(base + margin, 0.0, 1.0)
    if n_forced < M:
        warnings.warn(
            f"{where}: partial forcing (n_forced={n_forced} < M={M}): alpha damps only the "
            "forced latents, so no contraction guarantee holds (the Jacobian products of the "
            "forced map may grow: a DEER solve may need many iterations, BPTT gradients may "
            "grow). Observe/force more latents, or check the iteration counts and the loss.",
            GTFGuaranteeWarning,
            stacklevel=stacklevel,
        )
    return np.asarray(alpha, dtype=np.float64) if per_sequence else float(alpha)
