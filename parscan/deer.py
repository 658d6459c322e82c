"""DEER / GTF-DEER: a (teacher-forced) nonlinear recurrence solved by Newton's method over the
whole sequence, one linear scan per iteration.

The recurrence (DESIGN.md §4), for a batch of sequences, ``t = 0 .. T-1``::

    z_{t+1}  = F(z~_t)                                   prediction
    z~_{t+1} = (I - alpha P) z_{t+1} + alpha P d_{t+1}   generalized teacher forcing
    z~_0 = z0,   P = diag(1_{n_forced}, 0_{M - n_forced}),   d_{t+1} = [x_{t+1}; 0]

i.e. ``z~_{t+1} = G_{t+1}(z~_t)``. Newton (DEER; Lim et al., ICLR 2024) linearises every step
at the current iterate ``z^k`` at once,

    z^{k+1}_t = A_t z^{k+1}_{t-1} + b_t,   A_t = (I - alpha P) J_F(z^k_{t-1}),
    b_t = G_t(z^k_{t-1}) - A_t z^k_{t-1},

and solves the linear recurrence with one :func:`parscan.scan.linear_scan`. ``"diag"`` keeps
only the diagonal of ``A_t`` (quasi-DEER; Gonzalez et al., NeurIPS 2024): O(T M) memory and
work per iteration instead of O(T M^2) (O(T M^3) for a parallel dense scan), but linear instead
of quadratic convergence, so more iterations. GTF (Hess et al.,
ICML 2023) with ``alpha`` above ``1 - 1/sup ||J_F||`` makes the fully forced map a
contraction, so the iteration count no longer grows with ``T`` (GTF-DEER; Hess, Goetz &
Durstewitz, arXiv:2605.12683).
"""

import contextlib
import enum
import functools
import math
from dataclasses import dataclass, replace

import numba
import numpy as np

from parscan._arguments import array_and_problem, bool_problem, in_model_dtype
from parscan._buffers import short_of_memory
from parscan._deer_kernels import assemble, forced_sequential, update_norms
from parscan._model_calls import check_latent_rnn, step_and_jacobian_into
from parscan.gtf import DEFAULT_MARGIN, estimate_alpha
from parscan.scan import (
    available_backends,
    cuda_unavailable,
    linear_scan,
    unknown_backend,
)

#: default ``(rtol, atol)`` per dtype for ``max_t |dz| <= atol + rtol |z|``. About 4.5e6 eps
#: (float64) and 80 eps (float32): far above the rounding noise of a converged iterate, far
#: below model accuracy; with the full Jacobian the accepted iterate is exact to rounding
#: (quadratic convergence squares the last update).
DEFAULT_TOL = {np.dtype(np.float64): (1e-9, 1e-9), np.dtype(np.float32): (1e-5, 1e-5)}


#: default ``max_iter`` is ``min(T, cap)``: ``T`` iterations are exact by causality; beyond the
#: cap DEER is slower than the sequential loop anyway. Measured with ``alpha="auto"`` on
#: chaotic maps (bench/deer.py, tests): "full" 4-6 iterations, "diag" 20-40.
MAX_ITER_CAP = {"full": 100, "diag": 500}

#: a sequence is "diverging" when its iterate turns NaN/inf although its inputs and the model
#: parameters are finite (the iteration overflowed), its max update from the second iteration
#: on (the first is measured from the initial guess) exceeds
#: ``sqrt(finfo(dtype).max)``, or the update grew by more than ``DIVERGE_FACTOR`` in each of
#: ``DIVERGE_STREAK`` consecutive iterations. NaN/inf from the inputs is "non_finite". The
#: streak saves the iterations of a blow-up; rarely, updates that grow like this peak and
#: still converge (a free run of T = 80 of the Euler-Lorenz map of tests/test_deer.py: 2e63 at
#: iteration 8, converged at 12), hence "rarely help" in the messages, not "never".
DIVERGE_FACTOR = 10.0
DIVERGE_STREAK = 3

#: Numbers per position and latent a device-resident Newton solve holds on the host: the
#: initial guess, and the states and predictions it returns.
HOST_NUMBERS_ON_GPU = 3

#: A sequence that reaches ``max_iter`` with its last updates within this many ``eps`` of its
#: largest ``|z|`` has stalled at its dtype's rounding (measured: updates of 4-6 eps |z| in
#: float32 and float64 once Newton has converged): its tolerance asks for more than the dtype
#: resolves, and more iterations do not help.
ROUNDING_EPS = 16
#: ... over this many iterations, in which its updates no longer fall fourfold.
STALL_ITERATIONS = 3

#: below this many positions (B*T) per iteration the kernels run on one thread: starting a
#: prange region costs 10-30 us (DESIGN.md §2) and, when the cores are shared with other
#: processes, milliseconds (a barrier waits for a descheduled thread).
SERIAL_BELOW = 2048

_MAX_ITER_TEXT = "max_iter: not converged within max_iter Newton iterations."
_DIVERGING_TEXT = (
    "diverging: the Newton iterates blew up (the updates grew without bound or overflowed "
    "to inf/NaN from finite inputs), as plain DEER does on chaotic or unstable dynamics."
)
_AUTO_ALPHA = (
    "toward 1; alpha='auto' estimates about the least that makes the forced map a contraction"
)


class DeerStatus(enum.Enum):
    """Outcome of :func:`deer_solve`; each value is the user-facing message, remedy included.

    The remedies here cover every run; the :class:`DeerConvergenceError` message of
    :func:`deer_solve` gives only those that fit the run (its jacobian, forcing, alpha and
    dtype).
    The batch status is the worst over the sequences, in the order CONVERGED < MAX_ITER <
    DIVERGING < NON_FINITE.
    """

    CONVERGED = (
        "converged: every sequence met max_t |dz| <= atol + rtol |z| or is exact by causality."
    )
    MAX_ITER = (
        _MAX_ITER_TEXT
        + " Allow more iterations (max_iter; T iterations always suffice), switch to "
        "jacobian='full' if 'diag' was used, or, on a forced run, raise alpha ("
        + _AUTO_ALPHA
        + ")."
    )
    DIVERGING = (
        _DIVERGING_TEXT
        + " More iterations rarely help (the updates grow until they overflow). On a forced run "
        "raise alpha ("
        + _AUTO_ALPHA
        + "); run a float32 model in float64 (model.astype(np.float64)); for a free run (no "
        "forcing) of such dynamics use sequential_solve or model.simulate."
    )
    NON_FINITE = (
        "non_finite: NaN or inf in the inputs (z0, forcing, init or the model parameters) "
        "reached the iterate. Fix the inputs; NaN/inf are reported, never cleaned."
    )


_CODES = (DeerStatus.CONVERGED, DeerStatus.MAX_ITER, DeerStatus.DIVERGING, DeerStatus.NON_FINITE)
_CONVERGED, _MAX_ITER, _DIVERGING, _NON_FINITE = range(4)


@dataclass(frozen=True)
class DeerResult:
    """Result of :func:`deer_solve`.

    Attributes
    ----------
    states : ndarray, shape (..., T, M)
        ``states[..., t, :]`` is the forced state ``z~_{t+1}`` (``z0`` not included): the last
        Newton iterate of each sequence.
    predictions : ndarray, shape (..., T, M)
        ``predictions[..., t, :]`` is ``z_{t+1} = F(z~_t)``, recomputed from ``states`` (the
        loss is taken on these).
    n_iter : ndarray of int64, shape (...)
        Newton iterations (linear scans) per sequence.
    residuals : ndarray of float64, shape (n_iterations,)
        Per iteration, the largest ``max_t |dz|`` over the sequences still iterating.
    status : DeerStatus
        Worst status over the batch (``str(status.value)`` explains it and gives the remedy).
    converged : ndarray of bool, shape (...)
        Per sequence.
    alpha : float or ndarray of shape (...)
        The alpha used (the estimate when ``alpha="auto"``).
    rtol, atol : float
        The tolerances used.
    """

    states: np.ndarray
    predictions: np.ndarray
    n_iter: np.ndarray
    residuals: np.ndarray
    status: DeerStatus
    converged: np.ndarray
    alpha: float | np.ndarray
    rtol: float
    atol: float

    @property
    def ok(self) -> bool:
        """True when every sequence converged."""
        return self.status is DeerStatus.CONVERGED


class DeerConvergenceError(RuntimeError):
    """Raised by ``deer_solve(..., throw=True)`` when a sequence did not converge.

    Attributes
    ----------
    result : DeerResult
        The full result, for inspection.
    """

    def __init__(self, message: str, result: DeerResult):
        super().__init__(message)
        self.result = result

    def __reduce__(self):
        """Pickled with its result (``multiprocessing`` sends it to the caller)."""
        return type(self), (str(self), self.result)


@dataclass(frozen=True)
class Caller:
    """The public function that runs :func:`newton_run`, in the words of its messages.

    The argument errors and the :class:`DeerConvergenceError` of the run start with ``name``,
    and the remedies (:func:`gtf_remedies`) name its API, not :func:`deer_solve`'s.

    Attributes
    ----------
    name : str
        The function; every message starts with ``name + ": "``.
    forcing : str
        Its forcing as an expression, for the suggested :func:`parscan.gtf_alpha` call.
    sequential, sequential_free : str
        Its sequential alternative to DEER for a forced run and for a free run.
    forced_limit : {"M", "N"}
        What bounds the forced latents for its user: the latents (``"M"``: more forcing
        columns can be passed) or the forcing columns (``"N"``: fixed by the model).
    throw_false : str
        The sentence that ends the :class:`DeerConvergenceError` message: what ``throw=False``
        does instead.
    """

    name: str
    forcing: str
    sequential: str
    sequential_free: str
    forced_limit: str
    throw_false: str


#: :func:`deer_solve` as the caller of :func:`newton_run`.
DEER_SOLVE = Caller(
    name="deer_solve",
    forcing="forcing",
    sequential="sequential_solve",
    sequential_free="sequential_solve or model.simulate",
    forced_limit="M",
    throw_false="Pass throw=False to inspect the result.",
)


@dataclass(frozen=True)
class _Problem:
    """A validated problem, batch flattened to ``B`` sequences (C-contiguous arrays)."""

    batch: tuple
    z0: np.ndarray  # (B, M)
    forcing: np.ndarray  # (B, T, N), N = 0 for a free run
    alpha: np.ndarray | str  # (B,) model dtype, or "auto"
    alpha_report: float | np.ndarray | str
    n_forced: int
    T: int
    init: np.ndarray | None  # (B, T, M)


def _is_int(x) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool)


def alpha_array(alpha, name: str, batch, shape_name: str, errors: dict) -> np.ndarray | None:
    """A numeric GTF ``alpha`` checked: array_like (a Python or NumPy scalar, a list, an
    array) of real numbers in [0, 1], of shape ``()`` or ``batch``.

    Parameters
    ----------
    alpha : array_like
        The value given (not a string: ``"auto"`` is the caller's to handle).
    name : str
        ``alpha`` as the messages write it, e.g. ``"`alpha`"``.
    batch : tuple or None
        The batch shape; None when it is unknown (another argument has the wrong shape,
        reported by the caller): the shape of ``alpha`` is then not checked.
    shape_name : str
        How the message names ``batch``, e.g. ``"z0.shape[:-1]"``.
    errors : dict
        ``{"type": [...], "value": [...]}``, where the problems are appended: a masked array,
        ragged nesting, a dtype that is not real, another shape, values outside [0, 1] or NaN.

    Returns
    -------
    ndarray or None
        ``np.asarray(alpha)``, or None when it has a problem. Shared with
        :func:`autodiff.gtf_loss_and_grad`, which takes ``alpha`` as :func:`deer_solve` does.
    """
    try:
        arr, masked = array_and_problem(alpha, name)
    except ValueError as exc:  # ragged nesting
        errors["value"].append(str(exc))
        return None
    if masked is not None:
        errors["type"].append(masked)
        return None
    if arr.dtype.kind not in "fiu":
        errors["type"].append(
            f"{name} must be a real number or array; got dtype {arr.dtype} "
            f"({type(alpha).__name__})."
        )
        return None
    if batch is not None and arr.shape not in ((), batch):
        errors["value"].append(
            f"{name} must be a scalar or have shape {shape_name} = {batch}; got {arr.shape}."
        )
        return None
    outside = ~((arr >= 0) & (arr <= 1))
    if np.any(outside):
        first = tuple(int(i) for i in np.unravel_index(np.argmax(outside), arr.shape))
        at = f" at index {first[0] if len(first) == 1 else first}" * (arr.ndim > 0)
        errors["value"].append(f"{name} must lie in [0, 1] (and be finite); got {arr[first]}{at}.")
        return None
    return arr


def _check_alpha(alpha, batch, has_forcing, allow_auto, errors):
    """Append problems to ``errors`` (a dict kind -> list); return alpha as (B,) or a str."""
    if isinstance(alpha, str):
        if alpha != "auto" or not allow_auto:
            if allow_auto:
                errors["value"].append(
                    "`alpha` must be a float in [0, 1], an array of shape z0.shape[:-1] or "
                    f"'auto'; got {alpha!r}."
                )
            else:
                errors["value"].append(
                    "`alpha` must be a float in [0, 1] or an array of shape z0.shape[:-1]; got "
                    f"{alpha!r}. sequential_solve does not estimate alpha: compute one with "
                    "parscan.gtf_alpha(model, forcing) and pass it."
                )
        elif not has_forcing:
            errors["value"].append(
                "alpha='auto' needs `forcing` (alpha only acts on forced runs); pass forcing "
                "or alpha=0."
            )
        return alpha
    arr = alpha_array(alpha, "`alpha`", batch, "z0.shape[:-1]", errors)
    if arr is None:
        return None
    if not has_forcing and np.any(arr != 0):
        errors["value"].append(
            "`alpha` acts only on forced runs; got alpha != 0 with forcing=None. Pass forcing "
            "or alpha=0."
        )
    return arr


def _kernel_ready(x: np.ndarray) -> np.ndarray:
    """``x`` if C-contiguous, aligned and writeable, else a copy that is (one kernel
    specialisation per dtype: read-only or strided inputs would each compile another)."""
    return np.require(x, requirements=("C", "A", "W"))


def _validate(where, model, z0, T, forcing, alpha, n_forced, init, allow_auto, errors=None):
    """Check every argument, collecting all mismatches (appended to ``errors``, a dict of
    ``"type"`` and ``"value"`` message lists, when given); return a :class:`_Problem`."""
    check_latent_rnn(model, ("step", "step_and_jacobian"), where)
    M, dtype = model.M, model.dtype
    if dtype not in DEFAULT_TOL:
        raise TypeError(
            f"{where}: `model.dtype` must be float32 or float64; got {dtype}. "
            "Use model.astype(np.float64) (or np.float32)."
        )
    errors = errors or {"type": [], "value": []}

    def array(given, name, tail, min_ndim):
        try:
            x, masked = array_and_problem(given, f"`{name}`")
        except ValueError as exc:  # ragged: no array to check further
            raise ValueError(f"{where}: {exc}") from None
        if masked is not None:
            errors["type"].append(masked)
        x, too_large = in_model_dtype(given, x, f"`{name}`", dtype)
        if too_large is not None:
            errors["value"].append(too_large)
        elif x.dtype != dtype:
            errors["type"].append(
                f"`{name}` must have the model dtype {dtype}; got {x.dtype}. "
                f"Use {name}.astype(np.{dtype}) (or model.astype(...))."
            )
        if x.ndim < min_ndim:
            errors["value"].append(f"`{name}` must have shape {tail}; got {x.shape}.")
        return x

    z0 = array(z0, "z0", "(..., M)", 1)
    batch = z0.shape[:-1] if z0.ndim >= 1 else ()
    if z0.ndim >= 1 and z0.shape[-1] != M:
        hint = ""
        if z0.shape[-1] == getattr(model, "n_obs", None):  # an observation, not a state
            hint = " z0 is a latent state: for an observation x0 pass model.initial_state(x0)."
        errors["value"].append(f"`z0` must have shape (..., M) with M={M}; got {z0.shape}.{hint}")
    T_given = T is not None
    if T_given and (not _is_int(T) or T < 0):
        errors["value" if _is_int(T) else "type"].append(
            f"`T` must be a non-negative int or None; got {T!r}."
        )
        T = None
    elif T_given:  # a NumPy integer of a small type would overflow B * T
        T = int(T)
    N = 0
    if forcing is not None:
        forcing = array(forcing, "forcing", "(..., T, N)", 2)
        if forcing.ndim >= 2:
            N = forcing.shape[-1]
            if T is not None and forcing.shape[-2] != T:
                errors["value"].append(
                    f"`T`={T} disagrees with forcing.shape[-2]={forcing.shape[-2]}; pass T=None "
                    "(T is taken from forcing)."
                )
            T = forcing.shape[-2]
            if forcing.shape[:-2] != batch or not 1 <= N <= M:
                errors["value"].append(
                    f"`forcing` must have shape z0.shape[:-1] + (T, N) = {(*batch, T, 'N')} with "
                    f"1 <= N <= M={M}; got forcing.shape={forcing.shape}."
                )
    elif not T_given:
        errors["value"].append("`T` is required for a free run (forcing=None).")
    if n_forced is not None:
        if not _is_int(n_forced):
            errors["type"].append(f"`n_forced` must be an int; got {type(n_forced).__name__}.")
        elif forcing is None:
            errors["value"].append("`n_forced` needs `forcing`; got forcing=None.")
        elif not 0 <= n_forced <= N:
            errors["value"].append(
                f"`n_forced` must be in [0, N] with N=forcing.shape[-1]={N}; got {n_forced}."
            )
    alpha_arr = _check_alpha(alpha, batch, forcing is not None, allow_auto, errors)
    # (forcing of 0 columns, the default n_forced=0, is refused with its shape above)
    if isinstance(alpha, str) and alpha == "auto" and forcing is not None and n_forced == 0:
        errors["value"].append(
            "alpha='auto' needs forced latents (alpha acts on the n_forced forced ones); got "
            "n_forced=0. Pass n_forced >= 1, or alpha=0 for a free run."
        )
    if init is not None:
        init = array(init, "init", "(..., T, M)", 2)
        if T is not None and init.shape != (*batch, T, M):
            errors["value"].append(
                f"`init` must have shape z0.shape[:-1] + (T, M) = {(*batch, T, M)}; "
                f"got {init.shape}."
            )
    if errors["type"]:
        raise TypeError(f"{where}: " + " ".join(errors["type"] + errors["value"]))
    if errors["value"]:
        raise ValueError(f"{where}: " + " ".join(errors["value"]))

    B = int(np.prod(batch, dtype=np.int64))
    if isinstance(alpha_arr, str):
        alpha_flat, report = alpha_arr, alpha_arr
    else:
        alpha_flat = np.broadcast_to(alpha_arr, batch).astype(dtype).reshape(B)
        report = float(alpha_arr) if alpha_arr.ndim == 0 else alpha_arr.astype(dtype)
    if forcing is None:
        try:
            forcing_flat = np.empty((B, T, 0), dtype=dtype)
        except ValueError:  # NumPy refuses shapes whose bytes exceed its address space
            raise ValueError(
                f"{where}: {B} sequence(s) of T={T} steps of {dtype} are beyond NumPy's "
                "address space, far more than this machine can allocate; solve a shorter T "
                "(fewer steps) or fewer sequences at a time."
            ) from None
    else:
        forcing_flat = _kernel_ready(forcing).reshape(B, T, N)
    return _Problem(
        batch=batch,
        z0=_kernel_ready(z0).reshape(B, M),
        forcing=forcing_flat,
        alpha=alpha_flat,
        alpha_report=report,
        n_forced=N if n_forced is None else int(n_forced),
        T=T,
        init=None if init is None else _kernel_ready(init).reshape(B, T, M),
    )


def _tol_items(tol) -> tuple:
    """The entries of a ``tol`` that is not None: ``(tol, tol)`` for a scalar (a 0-d array
    too), else ``tuple(tol)`` (its kinds and length still unchecked)."""
    if isinstance(tol, np.ndarray):
        tol = tol[()] if tol.ndim == 0 else tuple(tol)
    return tuple(tol) if isinstance(tol, tuple | list) else (tol, tol)


def _check_options(jacobian, tol, max_iter, throw, backend, M) -> dict:
    """Problems with the solver options of :func:`deer_solve` (``M`` the model's, when it is
    an int), as ``{"type": [...], "value": [...]}`` (merged into the argument check so that
    every mismatch is reported at once)."""
    errors = {"type": [], "value": []}
    if not isinstance(jacobian, str) or jacobian not in ("full", "diag"):
        errors["value"].append(f"`jacobian` must be 'full' or 'diag'; got {jacobian!r}.")
    check_newton_limits(tol, max_iter, errors)
    problem = bool_problem(throw, "`throw`")
    if problem is not None:
        errors["type"].append(problem)
    if (problem := unknown_backend(backend)) is not None:
        errors["value"].append(problem)
    elif backend == "cuda":
        errors["value"] += _cuda_problems(jacobian, M)
    return errors


def check_newton_limits(tol, max_iter, errors: dict) -> None:
    """Append the problems with the Newton stopping settings ``tol`` and ``max_iter`` of
    :func:`deer_solve` to ``errors`` (``{"type": [...], "value": [...]}``); shared with
    :func:`autodiff.gtf_loss_and_grad`, which validates them for either method."""
    if tol is not None:
        items = _tol_items(tol)
        if not all(
            isinstance(x, int | float | np.integer | np.floating) and not isinstance(x, bool)
            for x in items
        ):
            errors["type"].append(
                f"`tol` must be None, a float or a pair (rtol, atol) of floats; got {tol!r}."
            )
        elif len(items) != 2 or not all(_finite(x) and x >= 0 for x in items) or max(items) <= 0:
            errors["value"].append(
                "`tol` must be None (dtype defaults), a positive float (rtol = atol = tol) or a "
                f"pair (rtol, atol) of non-negative floats, not both 0; got {tol!r}."
            )
    if max_iter is not None and (not _is_int(max_iter) or max_iter < 1):
        errors["value" if _is_int(max_iter) else "type"].append(
            f"`max_iter` must be a positive int or None; got {max_iter!r}."
        )


def _finite(x) -> bool:
    """Whether the number ``x`` is finite as a float (an int beyond float's range is not)."""
    try:
        return math.isfinite(x)
    except OverflowError:
        return False


def _cuda_problems(jacobian, M) -> list[str]:
    """Why ``backend="cuda"`` cannot run (no GPU; a dense scan above the CUDA backend's
    ``D <= DMAX``), found before the first iteration rather than inside it."""
    unavailable = cuda_unavailable()
    if unavailable:
        return [unavailable]
    from parscan._cuda import DMAX  # lazy: numba.cuda only when asked for

    if jacobian == "full" and _is_int(M) and M > DMAX:
        return [
            f"backend='cuda' with jacobian='full' scans dense M x M Jacobians, supported up to "
            f"M = {DMAX}; got M={M}. Use jacobian='diag' or backend='cpu'."
        ]
    return []


def _tolerances(tol, dtype) -> tuple[float, float]:
    """``(rtol, atol)`` from a validated ``tol``."""
    if tol is None:
        return DEFAULT_TOL[np.dtype(dtype)]
    rtol, atol = _tol_items(tol)
    return float(rtol), float(atol)


@contextlib.contextmanager
def _threads_for(positions: int):
    """One thread for small problems (:data:`SERIAL_BELOW`), else the current setting."""
    previous = numba.get_num_threads()
    if positions >= SERIAL_BELOW or previous == 1:
        yield
        return
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


def _shift(states, z0, out):
    """``out[:, 0] = z0``, ``out[:, t] = states[:, t-1]``: the linearisation points."""
    out[:, 0] = z0
    out[:, 1:] = states[:, :-1]


def _initial_guess(p: _Problem, M: int) -> np.ndarray:
    """``init``, else the data in the observed part and ``z0``'s other latents, broadcast.
    Non-finite data are replaced by ``z0``'s values: where the recurrence does not read them
    (columns ``n_forced..N-1``, sequences with alpha 0) they must not poison the guess, and
    where it does they reach the iterate through ``b_t`` anyway (never cleaned)."""
    if p.init is not None:
        return p.init.copy()
    guess = np.empty((*p.forcing.shape[:2], M), dtype=p.z0.dtype)
    guess[...] = p.z0[:, None, :]
    N = p.forcing.shape[-1]
    observed = guess[..., :N]
    observed[...] = p.forcing
    bad = ~np.isfinite(observed)
    if bad.any():
        observed[bad] = np.broadcast_to(p.z0[:, None, :N], observed.shape)[bad]
    return guess


class _HostNewton:
    """The Newton buffers and per-iteration work of :func:`_newton` on the host (``F``/``J``
    by ``model.step_and_jacobian``, the scan by ``backend``: with ``"cuda"`` it runs on the GPU
    with a round trip per call, for models without GPU evaluation).
    :class:`parscan._deer_cuda.DeviceNewton` is the device-resident twin.

    Buffers are allocated once: the iterate ``cur`` (the guess, owned), ``nxt`` (``F`` -> ``b``
    -> the next iterate, the scan runs in place), the linearisation points and the Jacobians.
    ``rows`` maps the leading (active) rows to the original sequences: stopped sequences are
    copied out and the others compacted, so they cost nothing further.
    """

    def __init__(self, model, p: _Problem, guess, diag: bool, backend: str, where: str):
        B, T, M = guess.shape
        self.model, self.diag, self.backend, self.where = model, diag, backend, where
        self.cur, self.nxt, self.zprev = guess, np.empty_like(guess), np.empty_like(guess)
        self.j = np.empty((B, T, M) if diag else (B, T, M, M), dtype=guess.dtype)
        self.z0, self.forcing, self.alpha, self.n_forced = p.z0, p.forcing, p.alpha, p.n_forced
        self.z0_all = p.z0
        self.rows = np.arange(B)
        self.states = None  # allocated when some, not all, sequences stop
        self.update = np.empty(B, dtype=np.float64)
        self.within = np.empty(B, dtype=np.bool_)
        self.finite = np.empty(B, dtype=np.bool_)

    def iterate(self, rtol: float, atol: float):
        """One Newton step of the active rows; returns their ``(max update, within tolerance,
        finite)``, each of shape (n_active,)."""
        n = self.rows.size
        zprev, b, j = self.zprev[:n], self.nxt[:n], self.j[:n]
        _shift(self.cur[:n], self.z0, zprev)
        step_and_jacobian_into(self.model, zprev, self.diag, (b, j), self.where)
        assemble(b, j.reshape(n, b.shape[1], -1), zprev, self.forcing, self.alpha, self.n_forced)
        linear_scan(j, b, self.z0, backend=self.backend, out=b)
        update_norms(b, self.cur[:n], rtol, atol, self.update, self.within, self.finite)
        self.cur, self.nxt = self.nxt, self.cur
        return self.update[:n].copy(), self.within[:n].copy(), self.finite[:n].copy()

    def retire(self, stop) -> None:
        """Rows ``stop`` (bool, (n_active,)) keep their current iterate; the others stay."""
        n = self.rows.size
        if self.states is None:
            self.states = np.empty_like(self.cur)
        self.states[self.rows[stop]] = self.cur[:n][stop]
        keep = ~stop
        self.cur[: int(keep.sum())] = self.cur[:n][keep]
        self.rows, self.z0 = self.rows[keep], self.z0[keep]
        self.forcing, self.alpha = self.forcing[keep], self.alpha[keep]

    def result(self) -> np.ndarray:
        """The states of every sequence, (B, T, M), in the original order."""
        if self.states is None:
            return self.cur  # nothing retired: rows still in their original order
        self.states[self.rows] = self.cur[: self.rows.size]
        return self.states

    def predictions(self, states) -> np.ndarray:
        """``F(z~_t)`` for ``t = 0 .. T-1`` of the final ``states`` (B, T, M)."""
        return _predictions(self.model, self.z0_all, states)


def device_resident(model, backend: str) -> bool:
    """Does ``backend`` keep the DEER iteration (and the DEER gradient's adjoint) on the GPU
    for ``model``? True for ``backend="cuda"`` with a model that evaluates ``F`` and ``J`` on
    the GPU (``supports_cuda_eval``) when a GPU (or the simulator) is there."""
    return (
        backend == "cuda"
        and bool(getattr(model, "supports_cuda_eval", False))
        and "cuda" in available_backends()
    )


def _newton_buffers(model, p: _Problem, guess, diag: bool, backend: str, where: str):
    """Device-resident buffers (:class:`parscan._deer_cuda.DeviceNewton`) when
    :func:`device_resident`, host buffers (:class:`_HostNewton`; refusals start with
    ``where``) otherwise."""
    if device_resident(model, backend):
        from parscan import _deer_cuda  # lazy: numba.cuda only when asked for

        return _deer_cuda.DeviceNewton(model, p, guess, diag)
    return _HostNewton(model, p, guess, diag, backend, where)


def _newton(model, p: _Problem, work, max_iter, rtol, atol):
    """Newton iterations with per-sequence stopping on the buffers ``work``
    (:class:`_HostNewton` or :class:`parscan._deer_cuda.DeviceNewton`, which then hold the
    states); returns n_iter, codes, the history of the largest update and each sequence's
    last update."""
    B, T = p.forcing.shape[:2]
    n_iter = np.zeros(B, dtype=np.int64)
    codes = np.full(B, _MAX_ITER, dtype=np.int64)
    huge = float(np.sqrt(np.finfo(model.dtype).max))
    history = []
    final = np.zeros(B)
    last = np.full(B, np.inf)
    streak = np.zeros(B, dtype=np.int64)
    for k in range(1, max_iter + 1):
        upd, within, finite = work.iterate(rtol, atol)
        active = work.rows
        n_iter[active] = k
        final[active] = upd
        history.append(np.max(upd))
        streak = np.where(upd > DIVERGE_FACTOR * last, streak + 1, 0)
        last = upd
        code = np.full(active.size, -1, dtype=np.int64)
        done = finite & (within | (k >= T))
        code[done] = _CONVERGED
        # the first update is measured from the initial guess, not from a Newton iterate
        blown_up = (upd > huge) & (k > 1)
        code[~done & (blown_up | (streak >= DIVERGE_STREAK))] = _DIVERGING
        if not finite.all():
            bad = ~finite
            rows = active[bad]
            code[bad] = np.where(
                _bad_inputs(model, p, rows, p.alpha[rows] != 0), _NON_FINITE, _DIVERGING
            )
        stop = code >= 0
        if not stop.any():
            continue
        codes[active[stop]] = code[stop]
        if stop.all():
            break
        work.retire(stop)
        keep = ~stop
        last, streak = last[keep], streak[keep]
    return n_iter, codes, np.asarray(history, dtype=np.float64), final


def _bad_inputs(model, p: _Problem, idx, reads_data) -> np.ndarray:
    """Per sequence ``idx``: does an input the recurrence reads hold NaN/inf? ``z0``,
    ``init``, the parameters, and the forced data ``forcing[..., :n_forced]`` where
    ``reads_data`` (bool, like ``idx``: alpha != 0)."""
    params = getattr(model, "params", None)
    if isinstance(params, np.ndarray) and not np.isfinite(params).all():
        return np.ones(idx.size, dtype=bool)
    bad = ~np.isfinite(p.z0[idx]).all(axis=-1)
    bad |= reads_data & ~np.isfinite(p.forcing[idx, :, : p.n_forced]).all(axis=(-2, -1))
    if p.init is not None:
        bad |= ~np.isfinite(p.init[idx]).all(axis=(-2, -1))
    return bad


def _predictions(model, z0, states):
    """``F(z~_t)`` for ``t = 0 .. T-1``: shape (B, T, M)."""
    zprev = np.empty_like(states)
    _shift(states, z0, zprev)
    return model.step(zprev)


def _remedies(run: "NewtonRun", code: int) -> str:
    """What helps the sequences that ended ``code`` (``_MAX_ITER`` or ``_DIVERGING``) in this
    run, in the words of ``run.caller``, as a clause (``"a; b; or c"``, never empty): more
    iterations only for max_iter, ``jacobian="full"`` only after ``"diag"``, the GTF levers
    left (:func:`gtf_remedies`: a larger alpha only where these sequences ran below 1), the
    sequential solve for a free run (``n_forced == 0``, or alpha 0 in each of these
    sequences) or once their alpha is 1, float64 only for a float32 model."""
    p, caller = run.p, run.caller
    alpha = p.alpha[run.codes == code]
    steps = gtf_remedies(
        caller, alpha, p.n_forced, p.forcing.shape[-1], run.model.M, run.auto_alpha
    )
    if p.n_forced == 0 or not np.any(alpha):  # a free run: alpha 0 reads no data
        if code == _MAX_ITER:
            free = "plain DEER needs about T iterations on a chaotic free run"
        else:
            free = "plain DEER diverges on chaotic or unstable free runs"
        steps.insert(0, f"use {caller.sequential_free} ({free})")
    elif not np.any(alpha < 1):
        steps.append(f"use {caller.sequential} (alpha is already 1, its maximum)")
    if code == _MAX_ITER:
        stalled = _stalled_at_rounding(run)
        if stalled is not None:
            return either([stalled, *_float64_remedy(run)])
        more = [
            f"allow more iterations (max_iter={run.max_iter} < T={p.T}; T iterations always "
            "suffice)"
        ]
        if run.jacobian == "diag":
            more.append("switch to jacobian='full' (quadratic convergence, fewer iterations)")
        return either(more + steps)
    return either(steps + _float64_remedy(run))


def _float64_remedy(run: "NewtonRun") -> list:
    """Running in float64, as a clause for :func:`either`, for a float32 model."""
    if run.model.dtype == np.float32:
        return ["run in float64 (model.astype(np.float64), float64 inputs)"]
    return []


def _stalled_at_rounding(run: "NewtonRun") -> str | None:
    """For a run some of whose sequences reached ``max_iter``: the remedy "loosen tol" if
    its last :data:`STALL_ITERATIONS` updates are at their dtype's rounding level (at most
    :data:`ROUNDING_EPS` ``eps`` of their largest ``|z|``) and no longer fall fourfold:
    Newton has converged as far as the dtype resolves, the tolerance asks for more. Else
    None (updates still falling fast are a Newton still converging)."""
    failed = run.codes == _MAX_ITER
    last = float(np.max(run.final_updates[failed]))
    dtype = np.dtype(run.model.dtype)
    level = ROUNDING_EPS * float(np.finfo(dtype).eps) * float(np.max(np.abs(run.states()[failed])))
    recent = run.history[-STALL_ITERATIONS:]  # the last iterations' largest updates
    shrinking = recent[-1] < recent[0] / 4  # still falling: Newton is converging, not stuck
    if len(recent) < STALL_ITERATIONS or np.max(recent) > level or shrinking:
        return None
    rtol, atol = DEFAULT_TOL[dtype]
    return (
        f"loosen tol (the last update {last:.3g} is at {dtype}'s rounding level, "
        f"{ROUNDING_EPS} eps x max|z| = {level:.3g}, which no number of iterations goes "
        f"below; {dtype}'s default is rtol={rtol:g}, atol={atol:g})"
    )


def gtf_remedies(caller: Caller, alpha, n_forced: int, N: int, M: int, estimated: bool) -> list:
    """The generalized-teacher-forcing levers left to sequences run with ``alpha`` (a float or
    an array: theirs), in the words of ``caller``, as clauses for :func:`either`.

    With forced latents (``n_forced >= 1``): raise alpha where some is below 1 (with
    ``estimated``, alpha was ``"auto"``'s estimate: a :func:`parscan.gtf_alpha` call with a
    larger margin, ``n_forced`` included when below ``M``), and force more latents where
    ``n_forced`` is below ``caller.forced_limit``. Without (``n_forced == 0``): force some,
    with the ``N`` forcing columns there are, or with data (``N == 0``). May be empty (alpha
    1 with every latent the caller can force forced).
    """
    if n_forced == 0:
        if N > 0:
            return ["force some latents (n_forced >= 1) with alpha='auto'"]
        return ["force the run with data (forcing=data, alpha='auto': GTF-DEER)"]
    steps = []
    if np.any(np.asarray(alpha) < 1):
        if estimated:
            partial = f", n_forced={n_forced}" if n_forced < M else ""
            steps.append(
                "raise alpha (alpha='auto' gave its estimate; pass a larger one, e.g. "
                f"parscan.gtf_alpha(model, {caller.forcing}, margin=0.1{partial}))"
            )
        else:
            steps.append(f"raise alpha ({_AUTO_ALPHA})")
    limit = M if caller.forced_limit == "M" else N
    if n_forced < limit:
        steps.append(
            f"force more latents (n_forced={n_forced} < {caller.forced_limit}={limit}: alpha "
            "damps only the forced ones)"
        )
    return steps


def either(steps: list) -> str:
    """``"a"``, ``"a, or b"``, ``"a; b; or c"``."""
    if len(steps) <= 2:
        return ", or ".join(steps)
    return "; ".join(steps[:-1]) + "; or " + steps[-1]


def _describe_alpha(alpha):
    if np.ndim(alpha) == 0:
        return f"{float(alpha):.4g}"
    return f"[{np.min(alpha):.4g} .. {np.max(alpha):.4g}]"


def deer_solve(
    model,
    z0,
    T=None,
    *,
    forcing=None,
    alpha=0.0,
    n_forced=None,
    jacobian="full",
    tol=None,
    max_iter=None,
    init=None,
    backend="auto",
    throw=True,
) -> DeerResult:
    """Solve the (GTF-forced) recurrence of a batch of sequences by Newton's method (DEER).

    Each iteration evaluates ``F`` and its Jacobian at all ``B*T`` positions in one parallel
    pass (``model.step_and_jacobian``), assembles the linearised system in one parallel kernel
    and solves it with one :func:`~parscan.scan.linear_scan` (module docstring).

    Parameters
    ----------
    model : LatentRNN
        Any object with ``M``, ``dtype``, ``step(z)`` and ``step_and_jacobian(z, diag, out)``
        (see ``models.base.LatentRNN``), the latter writing ``F(z)`` and its Jacobian (its
        diagonal, ``(..., M)``, with ``diag=True``) into ``out = (f, j)`` and returning them;
        a model returning new arrays instead costs a copy, one returning no such pair is
        refused. NaN/inf parameters end ``non_finite`` when the model exposes them as an
        ndarray ``params`` (the models in ``models/`` do); otherwise the NaN/inf they cause is
        reported as ``diverging``.
    z0 : array_like, shape (..., M)
        Initial states ``z~_0``, model dtype (a list is read in it). Leading dimensions are
        the batch.
    T : int, optional
        Number of steps. Taken from ``forcing`` when given (must agree); required otherwise.
    forcing : array_like, shape (..., T, N), optional
        Data ``forcing[..., t, :] = x_{t+1}``, ``N <= M``, model dtype (a list is read in
        it). None: free run.
    alpha : float, array_like of shape (...), or "auto"
        GTF parameter in [0, 1], one for all or one per sequence; a sequence with alpha 0 does
        not read its data (a free run). ``"auto"``: :func:`parscan.gtf_alpha`
        (``method="sup"``) over the forced data ``forcing[..., :n_forced]`` and the initial
        guess, one alpha for the batch, taken over the sequences whose inputs are finite (the
        others end ``non_finite`` as with a numeric alpha; with none left, and for an empty
        problem (no sequences or ``T=0``), the margin 0.02, ``parscan.gtf.DEFAULT_MARGIN``);
        warns (:class:`parscan.gtf.GTFGuaranteeWarning`) for partial forcing. Must be 0 for a
        free run.
    n_forced : int, optional
        Number of latents forced toward the data (the first ``n_forced`` columns), default
        ``N``.
    jacobian : {"full", "diag"}
        Newton (DEER) or its diagonal approximation (quasi-DEER).
    tol : float or (float, float), optional
        ``(rtol, atol)`` (a float sets both) for the per-sequence stopping test
        ``max_t |z^{k+1}_t - z^k_t| <= atol + rtol |z^{k+1}_t|`` (elementwise). Default
        :data:`DEFAULT_TOL`: 1e-9 for float64, 1e-5 for float32.
    max_iter : int, optional
        Default ``min(T, 100)`` (full) or ``min(T, 500)`` (diag). By causality the first ``k``
        states are exact after ``k`` iterations, so ``T`` iterations always suffice: a
        sequence that reaches ``T`` iterations is reported converged.
    init : ndarray, shape (..., T, M), optional
        Initial guess. Default: ``forcing`` in the first ``N`` latents and ``z0``'s other
        latents at every step (free run: ``z0`` at every step).
    backend : str
        Passed to :func:`~parscan.scan.linear_scan` (``"auto"``, ``"sequential"``, ``"cpu"``,
        ``"cuda"``; ``"cuda"`` needs a GPU or the simulator, and ``M <= 16`` with
        ``jacobian="full"``). With ``"cuda"`` and a model that declares the optional capability
        ``supports_cuda_eval = True`` (its ``step_and_jacobian`` then takes device arrays, as
        the models in ``models/`` do), the whole Newton iteration stays on the GPU
        (:mod:`parscan._deer_cuda`): per iteration only the update-norm partials (3 numbers
        per 4,096 elements of the iterate) cross to the host, and the states once at the end.
        For other models ``F`` and ``J`` are evaluated by ``model.step_and_jacobian`` on the
        host and only the scan runs on the GPU.
    throw : bool
        Raise :class:`DeerConvergenceError` when a sequence fails; otherwise return the result
        for inspection. ``True`` or ``False`` (a NumPy bool too; ``1`` or ``"no"`` is refused).

    Returns
    -------
    DeerResult
        ``states`` and ``predictions`` of shape (..., T, M), per-sequence ``n_iter`` and
        ``converged``, the residual history, the worst ``status`` and the ``alpha`` used.

    Raises
    ------
    TypeError, ValueError
        Invalid arguments (all mismatches in one message starting with ``deer_solve:``); a
        masked array (``z0``, ``forcing``, ``alpha``, ``init``) is refused, its masked entries
        would be read as data: pass ``x.filled(value)``. ``ValueError`` also for a ``T`` or
        batch whose arrays this machine cannot allocate (the message gives their size).
    DeerConvergenceError
        ``throw=True`` and some sequence ended ``max_iter``, ``diverging`` or ``non_finite``.

    Notes
    -----
    Per sequence the iteration stops when the update meets the tolerance (converged), when it
    reached ``T`` iterations (exact by causality: converged), when the iterate is not finite
    because the inputs it reads are not (``non_finite``: NaN/inf in ``z0``, ``init``, the
    parameters, or the forced columns ``forcing[..., :n_forced]`` of a sequence with alpha >
    0; never cleaned), or when the iterates blow up (``diverging``: NaN/inf from
    finite inputs, an update above ``sqrt(finfo.max)`` after the first, or updates growing
    by more than 10x in 3 consecutive iterations).
    A stopped
    sequence keeps its last iterate and costs nothing further. For piecewise-linear models
    Newton is exact once the activation pattern stops changing, so with ``jacobian="full"`` a
    converged result equals :func:`sequential_solve` to rounding. Quasi-DEER
    (``jacobian="diag"``) converges only linearly: a converged result guarantees the stopping
    test (the last update within ``atol + rtol |z|``), so it differs from
    :func:`sequential_solve` by about the tolerance, not by rounding (exact by causality only
    after ``T`` iterations). On chaotic dynamics plain DEER (``alpha=0``) needs
    about ``T`` iterations; ``alpha="auto"`` keeps the count small and flat in ``T``.
    """
    run = newton_run(
        model, z0, T, forcing, alpha, n_forced, jacobian, tol, max_iter, init, backend, throw, 3,
        caller=DEER_SOLVE,
    )  # fmt: skip
    return run.result(throw)


@dataclass
class NewtonRun:
    """A finished Newton solve whose states are still in its buffers (host or GPU).

    :func:`deer_solve` turns it into a :class:`DeerResult` (:meth:`result`); the GTF-DEER
    gradient on the GPU (:mod:`autodiff._deer_adjoint_cuda`) takes the states from the
    device buffers instead, with no round trip through the host.

    Attributes
    ----------
    model, p
        The model and the validated problem (``p.alpha`` the alpha used, per sequence).
    work : _HostNewton, parscan._deer_cuda.DeviceNewton or None
        The buffers holding the states; None for an empty problem (``B*T == 0``).
    guess : ndarray, shape (B, T, M)
        Built as the initial iterate, but not kept as a record of it: host buffers
        (:class:`_HostNewton`) iterate in it (overwritten), device buffers copy it. For an
        empty problem (``work`` None) it is the states.
    n_iter, codes : ndarray of int64, shape (B,)
        Iterations and outcome code per sequence.
    history : ndarray of float64
        Largest update per iteration.
    final_updates : ndarray of float64, shape (B,)
        Each sequence's last update (the failure message quotes the failed sequences').
    alpha_report : float or ndarray
        The alpha as :class:`DeerResult` reports it.
    rtol, atol, max_iter, jacobian
        The solver settings used.
    caller : Caller
        Who ran it: the name and the API its failure messages use.
    auto_alpha : bool
        Whether alpha was estimated (``alpha="auto"``, by :func:`newton_run` or by the
        caller before it).
    """

    model: object
    p: _Problem
    work: object
    guess: np.ndarray
    n_iter: np.ndarray
    codes: np.ndarray
    history: np.ndarray
    final_updates: np.ndarray
    alpha_report: object
    rtol: float
    atol: float
    max_iter: int
    jacobian: str
    caller: Caller
    auto_alpha: bool

    @property
    def status(self) -> DeerStatus:
        """Worst outcome over the batch."""
        return _CODES[int(self.codes.max())] if self.codes.size else DeerStatus.CONVERGED

    def states(self) -> np.ndarray:
        """The final states ``z~_1 .. z~_T``, (B, T, M) on the host in the original order,
        without evaluating the predictions (the GTF-DEER gradient on the host evaluates
        ``F`` and ``J`` there itself)."""
        return self.guess if self.work is None else self.work.result()

    def result(self, throw: bool) -> DeerResult:
        """The :class:`DeerResult` (states and predictions on the host); raises
        :class:`DeerConvergenceError` when ``throw`` and some sequence failed."""
        p, M = self.p, self.model.M
        if self.work is None:
            states, predictions = self.guess, np.empty_like(self.guess)
        else:
            with _threads_for(self.guess.shape[0] * p.T):
                states = self.states()
                predictions = self.work.predictions(states)
        shape = (*p.batch, p.T, M)
        result = DeerResult(
            states=states.reshape(shape),
            predictions=predictions.reshape(shape),
            n_iter=self.n_iter.reshape(p.batch),
            residuals=self.history,
            status=self.status,
            converged=(self.codes == _CONVERGED).reshape(p.batch),
            alpha=self.alpha_report,
            rtol=self.rtol,
            atol=self.atol,
        )
        if throw and not result.ok:
            message = f"{self.caller.name}: {self.failure_message()} {self.caller.throw_false}"
            raise DeerConvergenceError(message, result)
        return result

    def failure_message(self, remedies: bool = True) -> str:
        """Why some sequence failed and what helps, in the words of ``caller``: the worst
        status, the counts, the iterations and the last update, then (``remedies``) the
        remedies that fit the failed sequences (:func:`_remedies`). The
        :class:`DeerConvergenceError` message is this text between the caller's name and its
        ``throw_false`` sentence. Only for a run that failed (``status`` is not
        ``CONVERGED``)."""
        codes = self.codes
        failed = [c for c in (_NON_FINITE, _DIVERGING, _MAX_ITER) if np.any(codes == c)]
        counts = ", ".join(
            f"{int(np.sum(codes == c))} {_CODES[c].name.lower()}" for c in failed[::-1]
        )
        updates = self.final_updates[codes != _CONVERGED]
        last = f"{np.max(updates):.3g}" if np.all(np.isfinite(updates)) else "inf/NaN"
        worst = failed[0]
        head = {_MAX_ITER: _MAX_ITER_TEXT, _DIVERGING: _DIVERGING_TEXT}.get(
            worst, self.status.value
        )
        fixes = []
        if remedies:  # the remedy of _NON_FINITE (fix the inputs) is in head
            fixes = [c for c in failed if c != _NON_FINITE]
        lead = {
            _MAX_ITER: "To converge",
            _DIVERGING: "More iterations rarely help a diverging run",
        }
        if len(failed) > 1:
            lead = {
                _MAX_ITER: "For the max_iter sequences",
                _DIVERGING: "For the diverging sequences (more iterations rarely help)",
            }
        fixes = [f" {lead[c]}: {_remedies(self, c)}." for c in fixes]
        return (
            f"{head} Failed: {counts} of {codes.size} sequence(s), after "
            f"{int(self.n_iter.max())} iteration(s) (max_iter={self.max_iter}, "
            f"jacobian={self.jacobian!r}, alpha={_describe_alpha(self.alpha_report)}); last max "
            f"update {last} of the failed sequence(s) (tolerance atol={self.atol:g} + "
            f"rtol={self.rtol:g} |z|)." + "".join(fixes)
        )


def newton_run(
    model,
    z0,
    T,
    forcing,
    alpha,
    n_forced,
    jacobian,
    tol,
    max_iter,
    init,
    backend,
    throw,
    stacklevel=2,
    *,
    caller,
    estimated_alpha=False,
) -> NewtonRun:
    """Validate the arguments of :func:`deer_solve` (same meaning, all positional; ``throw``
    is only checked here, :meth:`NewtonRun.result` applies it) and run the Newton iterations;
    see :class:`NewtonRun`. ``stacklevel`` places the :class:`~parscan.gtf.GTFGuaranteeWarning`
    of ``alpha="auto"`` as :func:`warnings.warn` called here would (2: the caller;
    :func:`deer_solve` passes 3, its own caller). ``caller`` (a :class:`Caller`, e.g.
    :data:`DEER_SOLVE`) names the function in the argument errors and words the failure
    messages; ``estimated_alpha``: the numeric ``alpha`` is the caller's own estimate for an
    ``alpha="auto"`` it was given (its messages then do not suggest ``alpha='auto'``)."""
    errors = _check_options(jacobian, tol, max_iter, throw, backend, getattr(model, "M", None))
    p = _validate(
        caller.name, model, z0, T, forcing, alpha, n_forced, init, allow_auto=True, errors=errors
    )
    rtol, atol = _tolerances(tol, model.dtype)
    if max_iter is None:
        max_iter = max(1, min(p.T, MAX_ITER_CAP[jacobian]))

    B, T, M = p.z0.shape[0], p.T, model.M
    too_large = functools.partial(
        _too_large,
        caller.name,
        p,
        _newton_numbers(M, jacobian),
        "the Newton solve",
        diag=jacobian == "full" and M > 1,
    )
    # on the GPU the host holds the guess, and the states and predictions returned
    on_host = HOST_NUMBERS_ON_GPU * M if device_resident(model, backend) else None
    available = short_of_memory(
        B * T * (on_host or _newton_numbers(M, jacobian)) * p.z0.dtype.itemsize
    )
    if available is not None:  # Linux would grant it, and filling it would get us killed
        if on_host is not None:
            raise _too_large(caller.name, p, on_host, "the host's copies", available)
        raise too_large(available)
    try:
        guess = _initial_guess(p, M)
    except (MemoryError, ValueError):  # ValueError: a size beyond NumPy's address space
        raise too_large() from None
    auto = isinstance(p.alpha, str)
    work = None
    if B * T == 0:
        # no points to bound: the margin alone, as parscan.gtf_alpha gives for an empty batch
        alpha_report = float(DEFAULT_MARGIN) if auto else p.alpha_report
        n_iter, codes, history = np.zeros(B, np.int64), np.full(B, _CONVERGED), np.empty(0)
        final = np.zeros(B)
    else:
        with _threads_for(B * T):
            alpha_report = p.alpha_report
            try:
                if auto:
                    alpha_report = _auto_alpha(model, p, guess, caller.name, stacklevel + 1)
                    p = replace(p, alpha=np.full(B, alpha_report, dtype=model.dtype))
                work = _newton_buffers(model, p, guess, jacobian == "diag", backend, caller.name)
                n_iter, codes, history, final = _newton(model, p, work, int(max_iter), rtol, atol)
            except MemoryError:
                raise too_large() from None
    return NewtonRun(
        model,
        p,
        work,
        guess,
        n_iter,
        codes,
        history,
        final,
        alpha_report,
        rtol,
        atol,
        max_iter,
        jacobian,
        caller,
        auto or estimated_alpha,
    )


def _newton_numbers(M: int, jacobian: str) -> int:
    """The numbers per position a Newton solve allocates: about ``M (5 + M)`` (``"full"``;
    ``6 M`` for ``"diag"``; the iterate, its update, the linearisation points, the
    Jacobians, the states and predictions returned)."""
    return M * (6 if jacobian == "diag" else 5 + M)


def _too_large(
    where, p: _Problem, per_position: int, what: str, available: int | None = None, diag=False
) -> ValueError:
    """The error of a solve whose arrays (``per_position`` numbers for each of the ``B * T``
    positions, for ``what``) this machine cannot allocate (NumPy raised ``MemoryError``, or
    ``ValueError`` for a size beyond its address space), or that need more than the
    ``available`` bytes of memory available now: their size and the remedy (with ``diag``,
    also ``jacobian='diag'``). Messages start with ``where``."""
    B, T = p.forcing.shape[:2]
    M = p.z0.shape[-1]
    numbers = B * T * per_position  # Python ints: no overflow
    gib = numbers * p.z0.dtype.itemsize / 2**30
    limit = (
        "this machine can allocate"
        if available is None
        else f"the {available / 2**30:.3g} GiB of memory available now"
    )
    diag = ", or use jacobian='diag' (no M x M Jacobian per step)" * diag
    return ValueError(
        f"{where}: {B} sequence(s) of T={T} steps with M={M} latents need about {numbers} "
        f"numbers ({gib:.3g} GiB of {p.z0.dtype}) for {what}, more than {limit}; solve a "
        f"shorter T (fewer steps) or fewer sequences at a time{diag}."
    )


def _auto_alpha(model, p: _Problem, guess, where, stacklevel) -> float:
    """``alpha="auto"``: :func:`parscan.gtf_alpha` (``"sup"``) over the forced data
    ``forcing[..., :n_forced]`` and the initial ``guess`` of the sequences whose inputs are
    finite (the others end ``non_finite``, as with a numeric alpha; with none left, the
    margin). Errors and the warning start with ``where``; ``stacklevel`` as for
    :func:`warnings.warn` called here."""
    B = p.z0.shape[0]
    ok = ~_bad_inputs(model, p, np.arange(B), np.ones(B, dtype=bool))
    forced = p.forcing[ok, :, : p.n_forced]
    return estimate_alpha(
        model, forced, guess[ok], "sup", DEFAULT_MARGIN, p.n_forced, False, where,
        stacklevel + 1,
    )  # fmt: skip


def sequential_solve(model, z0, T=None, *, forcing=None, alpha=0.0, n_forced=None) -> np.ndarray:
    """The recurrence of :func:`deer_solve`, one step after the other (the reference).

    Parameters are those of :func:`deer_solve` (``alpha="auto"`` is not accepted: estimate it
    with :func:`parscan.gtf_alpha` first).

    Returns
    -------
    states : ndarray, shape (..., T, M)
        ``states[..., t, :] = z~_{t+1}``.

    Notes
    -----
    Free runs use ``model.simulate``. Forced runs use one compiled loop when the model
    exposes its jitted step function (``model.step_functions_jit.step(*model.kernel_args(),
    z, out)``, as the models in ``models/`` do; compiled once per model class and dtype per
    process, not cached on disk), else a Python loop over ``model.step`` on the batch.
    """
    p = _validate(
        "sequential_solve", model, z0, T, forcing, alpha, n_forced, None, allow_auto=False
    )
    B, T, M = p.z0.shape[0], p.T, model.M
    shape = (*p.batch, T, M)
    if B * T == 0:
        return np.empty(shape, dtype=model.dtype)
    if (p.n_forced == 0 or not np.any(p.alpha)) and hasattr(model, "simulate"):
        return model.simulate(p.z0, T).reshape(shape)
    functions = getattr(model, "step_functions_jit", None)
    compiled = functions is not None and hasattr(model, "kernel_args")
    arrays = 2 if compiled else 1  # the states, and the compiled loop's predictions
    what = "the states and predictions" if compiled else "the states"
    too_large = functools.partial(_too_large, "sequential_solve", p, arrays * M, what)
    available = short_of_memory(B * T * arrays * M * p.z0.dtype.itemsize)
    if available is not None:  # Linux would grant it, and filling it would get us killed
        raise too_large(available)
    try:
        states = np.empty((B, T, M), dtype=model.dtype)
        predictions = np.empty_like(states) if compiled else None
    except MemoryError:
        raise too_large() from None
    if compiled:
        forced_sequential(
            functions.step,
            model.kernel_args(),
            p.z0,
            p.forcing,
            p.alpha,
            p.n_forced,
            states,
            predictions,
        )
        return states.reshape(shape)
    nf = p.n_forced
    forced = p.alpha != 0  # alpha 0: the data are not read (a free run)
    a = p.alpha[forced, None]
    z = p.z0
    for t in range(T):
        z = model.step(z)
        z[forced, :nf] = (1 - a) * z[forced, :nf] + a * p.forcing[forced, t, :nf]
        states[:, t] = z
    return states.reshape(shape)
