"""The generalized-teacher-forcing (GTF) loss of a latent RNN and its exact gradient.

For a batch of windows ``x_0 .. x_T`` (DESIGN.md sections 4-5; GTF: Hess et al., ICML 2023)::

    z~_0 = [x_0; L0 x_0]                                  model.initial_state
    z_t  = F(z~_{t-1}),   z~_t = (I - alpha P) z_t + alpha P x_t,     t = 1..T
    loss = mean over (B, T, N) of (z_t[:N] - x_t)^2       on the predictions, before forcing

with ``P = diag(1_{n_forced}, 0)``. The gradient is backpropagation through this forced
recursion, written as an adjoint: with ``e_t = d loss / d z_t`` (direct term) and
``J_t = dF/dz (z~_t)``, the total cotangent ``mu_t`` of the prediction ``z_t`` obeys::

    mu_t = e_t + (I - alpha P) J_t^T mu_{t+1} = e_t + (J_t (I - alpha P))^T mu_{t+1},
    mu_{T+1} = 0,
    grad_theta = sum_t (dF/dtheta at z~_{t-1})^T mu_t  +  (d z~_0 / d L0)^T (J_0^T mu_1).

Two ways to evaluate it:

* ``method="deer"`` (GTF-DEER; Hess, Goetz & Durstewitz, arXiv:2605.12683): the forward is
  :func:`parscan.deer_solve` (Newton over the whole sequence; DEER: Lim et al., ICLR 2024); the
  adjoint is **one** reverse :func:`parscan.linear_scan` with transposed Jacobians
  ``a_t = J_F(z~_t)(I - alpha P)`` evaluated at the converged states (one ``F`` + ``J`` pass
  at ``[z~_0; z~_1 .. z~_T]`` gives the predictions, these Jacobians and ``J_F(z~_0)``; the
  column scaling is done in place), followed by
  ``model.param_vjp`` over all ``(B, T)`` positions in parallel. With ``backend="cuda"`` and a
  model that evaluates on the GPU, the forward Newton iterations, the loss and these three
  steps run on the device from the solver's buffers, the states never crossing to the host
  (:mod:`parscan._deer_cuda`, :mod:`autodiff._deer_adjoint_cuda`).
* ``method="sequential"``: fused sequential forward + BPTT in Numba, parallel over the batch
  -- the baseline: SIMD kernels for the shallow PLRNN family (:mod:`autodiff._bptt_shplrnn`)
  and the ALRNN / PLRNN (:mod:`autodiff._bptt_alrnn`), the model's per-step functions for
  any other model (:mod:`autodiff._bptt_kernels`).

Both give the same loss and gradient up to the Newton tolerance. The adjoint always uses the
full Jacobian: ``jacobian="diag"`` (quasi-DEER) only changes how the forward is solved.
"""

from dataclasses import dataclass

import numpy as np

from models._checks import as_array, check_finite_windows, refusal
from models.alrnn import ALRNN_STEP_FUNCTIONS_JIT
from models.base import LatentRNN
from models.shplrnn import SHPLRNN_STEP_FUNCTIONS_JIT
from parscan._arguments import bool_problem
from parscan.deer import (
    Caller,
    DeerStatus,
    alpha_array,
    check_newton_limits,
    device_resident,
    either,
    gtf_remedies,
    newton_run,
)
from parscan.gtf import DEFAULT_MARGIN, estimate_alpha
from parscan.scan import cuda_unavailable, linear_scan, unknown_backend

METHODS = ("deer", "sequential")
JACOBIANS = ("full", "diag")

#: :func:`gtf_loss_and_grad` as the caller of :func:`parscan.deer.newton_run`: its errors
#: start with its name and the remedies speak its API.
_CALLER = Caller(
    name="gtf_loss_and_grad",
    forcing="data[:, 1:]",
    sequential="method='sequential'",
    sequential_free="method='sequential'",
    forced_limit="N",
    throw_false=(
        "Pass throw=False to get (nan, None, info) back instead, info.status and info.message "
        "saying why."
    ),
)


#: :attr:`GradInfo.message` of a finite sequential step (no Newton solve ran: the
#: ``status.value`` of ``DeerStatus.CONVERGED`` would speak of one)
SEQUENTIAL_DONE = "sequential: forward, loss and gradient are finite (no Newton solve)."


@dataclass(frozen=True)
class GradInfo:
    """What :func:`gtf_loss_and_grad` did besides the numbers.

    Attributes
    ----------
    method : str
        ``"deer"`` or ``"sequential"``.
    alpha : float or ndarray of shape (B,)
        The GTF parameter used (the estimate when ``alpha="auto"`` was passed).
    status : DeerStatus
        Solver status of the forward (the sequential method: ``DeerStatus.CONVERGED``), or
        ``DeerStatus.NON_FINITE`` when the loss or gradient is NaN/inf (the states or the
        adjoint overflowed).
    newton_iters : ndarray of shape (B,), int
        Newton iterations per sequence (zeros for the sequential method).
    message : str
        What happened and the remedies: for a DEER forward that failed, the text of the
        :class:`parscan.DeerConvergenceError` that ``throw=True`` raises (counts, iterations,
        last update and the remedies that fit the run) without its ``gtf_loss_and_grad:``
        prefix and its ``throw=False`` sentence; for a NaN/inf loss or gradient from finite
        inputs (data and model parameters), that the forward or the adjoint overflowed and
        how to avoid that (``status.value`` would blame the inputs); else ``status.value``
        (the sequential method, which solves nothing: :data:`SEQUENTIAL_DONE`).
    cause : str
        ``message`` without the remedies: what failed (for :func:`autodiff.fit`, which
        words the remedies in its own terms).
    """

    method: str
    alpha: float | np.ndarray
    status: DeerStatus
    newton_iters: np.ndarray
    message: str
    cause: str

    @property
    def converged(self) -> bool:
        """Whether the forward converged (then ``loss`` and ``grad`` are valid)."""
        return self.status == DeerStatus.CONVERGED

    @property
    def newton_iters_max(self) -> int:
        return int(self.newton_iters.max(initial=0))

    @property
    def newton_iters_mean(self) -> float:
        return float(self.newton_iters.mean()) if self.newton_iters.size else 0.0


def _check_args(model, data, alpha, method, n_forced, jacobian, backend, throw, tol, max_iter):
    """Validate every argument of :func:`gtf_loss_and_grad` (for either method); return
    ``(data, alpha, n_forced, throw)`` with data an ndarray, alpha a float, ndarray (B,) or
    "auto" and throw a bool."""
    where = "gtf_loss_and_grad"
    if not isinstance(model, LatentRNN):
        raise TypeError(
            f"{where}: model must be a latent RNN (models.base.LatentRNN: ShPLRNN, "
            f"ClippedShPLRNN, ALRNN, PLRNN); got {type(model).__name__}. State-space models "
            "are trained teacher-forced: use autodiff.ssm_gradients.ssm_loss_and_grad."
        )
    # a list is converted to the model's dtype, an array of another dtype refused (as the
    # models' own methods do: models._checks.as_array)
    was_ndarray, data = isinstance(data, np.ndarray), as_array(data, "data", where, model.dtype)
    type_errors, value_errors = [], []
    if data.dtype != model.dtype:
        other = (
            f" or model.astype({data.dtype.name!r})"
            if data.dtype in (np.float32, np.float64)
            else ""
        )
        cast = (
            f"data.astype(np.{model.dtype})"
            if was_ndarray
            else f"np.asarray(data, dtype=np.{model.dtype})"
        )
        type_errors.append(
            f"data must have the model dtype {model.dtype}; got {data.dtype}. Use {cast}{other}."
        )
    if data.ndim != 3 or data.shape[1] < 2 or data.shape[2] != model.n_obs or data.shape[0] < 1:
        value_errors.append(
            f"data must have shape (B, T+1, N) with B >= 1, T >= 1 and N = model.n_obs = "
            f"{model.n_obs}; got {data.shape}."
        )
    # (an array has no truth value: every option is a str before it is compared)
    method_ok = isinstance(method, str) and method in METHODS
    jacobian_ok = isinstance(jacobian, str) and jacobian in JACOBIANS
    backend_ok = unknown_backend(backend) is None
    if not method_ok:
        value_errors.append(f"method must be one of {METHODS}; got {method!r}.")
    if not backend_ok:
        value_errors.append(unknown_backend(backend))
    if not jacobian_ok:
        value_errors.append(f"jacobian must be one of {JACOBIANS}; got {jacobian!r}.")
    check_newton_limits(tol, max_iter, {"type": type_errors, "value": value_errors})
    # a jacobian not in JACOBIANS is refused above, as for either method
    newton = {"jacobian": jacobian} if jacobian_ok and jacobian != "full" else {}
    if backend_ok and backend != "auto":
        newton["backend"] = backend
    newton.update((name, v) for name, v in (("tol", tol), ("max_iter", max_iter)) if v is not None)
    if method_ok and method == "sequential" and newton:
        value_errors.append(sequential_refusal(newton))
    problem = bool_problem(throw, "`throw`")
    if problem is not None:
        type_errors.append(problem)
    N = model.n_obs
    if n_forced is None:
        n_forced = N
    elif isinstance(n_forced, bool) or not isinstance(n_forced, int | np.integer):
        type_errors.append(f"n_forced must be an int or None; got {type(n_forced).__name__}.")
    elif not 0 <= n_forced <= N:
        value_errors.append(f"n_forced must be in [0, N={N}]; got {n_forced}.")
    if isinstance(alpha, str):
        if alpha != "auto":
            value_errors.append(
                f"alpha must be a float in [0, 1], an array or 'auto'; got {alpha!r}."
            )
        elif n_forced == 0:
            value_errors.append(
                "alpha='auto' needs forced latents (alpha acts on the n_forced forced ones); "
                "got n_forced=0. Pass n_forced >= 1, or alpha=0 (no teacher forcing)."
            )
    else:  # array_like, checked as parscan.deer_solve checks it
        batch = data.shape[:1] if data.ndim == 3 else None
        errors = {"type": type_errors, "value": value_errors}
        arr = alpha_array(alpha, "alpha", batch, "(B,)", errors)
        if arr is not None:
            alpha = float(arr) if arr.ndim == 0 else arr.astype(np.float64)
    if method_ok and backend_ok:
        value_errors += cuda_problems(model, method, backend)
    if type_errors:
        raise TypeError(f"{where}: " + " ".join(type_errors + value_errors))
    if value_errors:
        raise ValueError(f"{where}: " + " ".join(value_errors))
    check_finite_windows(data, where)
    return data, alpha, int(n_forced), bool(throw)


def sequential_refusal(given: dict) -> str:
    """The refusal of the DEER forward's settings ``given`` (name -> value) with
    ``method="sequential"``, which runs the forward without Newton iterations or scans (for
    this module's ``jacobian``/``tol``/``max_iter``/``backend`` and
    :class:`autodiff.TrainConfig`'s ``jacobian``/``newton_tol``/``newton_max_iter``/
    ``backend``)."""
    reason = "method='sequential' (BPTT, a fused CPU kernel) runs no Newton iterations or scans"
    return refusal(given, "method='deer' (the DEER forward)", reason) + " or use method='deer'."


def cuda_problems(model, method, backend) -> list[str]:
    """Why ``model``'s loss and gradient cannot run on ``backend="cuda"``, found before the
    forward solve (shared with :func:`autodiff.fit`, which finds them before its first step):
    no GPU; for a latent RNN with ``method="deer"``, an ``M`` beyond the CUDA backend's dense
    scans (``D <= DMAX``: the adjoint scans dense ``M x M`` Jacobians whatever ``jacobian``
    the forward uses). None with ``method="sequential"``, which refuses any ``backend``."""
    latent_rnn = isinstance(model, LatentRNN)
    if backend != "cuda" or (latent_rnn and method != "deer"):
        return []
    unavailable = cuda_unavailable()
    if unavailable:
        return [unavailable]
    from parscan._cuda import DMAX  # lazy: numba.cuda only when asked for

    if not latent_rnn or model.M <= DMAX:
        return []
    return [
        f"backend='cuda': the gradient's adjoint scans dense M x M Jacobians (with either "
        f"jacobian), supported up to M = {DMAX}; got M={model.M}. Use backend='cpu' or 'auto'."
    ]


def gtf_loss_and_grad(
    model,
    data,
    *,
    alpha,
    method="deer",
    n_forced=None,
    jacobian="full",
    backend="auto",
    throw=True,
    tol=None,
    max_iter=None,
):
    """GTF loss of a latent RNN on a batch of windows and its exact parameter gradient.

    Parameters
    ----------
    model : models.base.LatentRNN
        ShPLRNN, ClippedShPLRNN, ALRNN or PLRNN (state-space models are trained with
        :func:`autodiff.ssm_gradients.ssm_loss_and_grad` instead).
    data : array_like, shape (B, T+1, N)
        Windows ``x_0 .. x_T`` of the model dtype (a list is read in it),
        finite, ``T >= 1``, ``N = model.n_obs``; converted once (a masked array is refused).
        ``x_0`` initialises ``z~_0 = model.initial_state(x_0)``; ``x_1 .. x_T`` are the targets
        and the forcing signal.
    alpha : float in [0, 1], array_like of shape (B,), or "auto"
        GTF parameter (one per sequence, or shared), taken as :func:`parscan.deer_solve`
        takes it (a Python or NumPy number, a list, an array). ``"auto"`` estimates one for
        the batch with :func:`parscan.gtf_alpha` (``method="sup"``), which makes the fully
        forced map a contraction along the data (DESIGN.md section 4); with NaN/inf
        parameters it takes the margin, and the call reports ``non_finite`` as below. The
        gradient is taken with that estimate held fixed (alpha is not differentiated).
        ``"auto"`` with ``n_forced=0`` is refused (alpha acts on forced latents only).
    method : {"deer", "sequential"}
        GTF-DEER (Newton forward, one reverse scan, parallel VJPs) or the fused sequential
        forward + BPTT baseline. Same loss and gradient up to the Newton tolerance.
    n_forced : int, optional
        Number of forced latents (the first ones), ``0 <= n_forced <= N``; default ``N``.
    jacobian : {"full", "diag"}
        Newton (DEER) or quasi-Newton (quasi-DEER, diagonal Jacobian) forward solve. The
        adjoint always uses the full Jacobian, so the gradient is exact either way. With
        ``method="sequential"`` (no Newton solve) only ``"full"``, the default, is accepted.
    backend : {"auto", "sequential", "cpu", "cuda"}
        Backend of the DEER solver and the reverse scan; ``method="sequential"`` (a fused
        CPU kernel without scans) accepts only ``"auto"``.
        ``"cuda"`` with the models of ``models/`` keeps the Newton iterations, the loss and
        the adjoint (Jacobians, reverse scan, parameter VJP) on the GPU.
    throw : bool
        ``True`` or ``False`` (a NumPy bool too). If the DEER forward does not converge:
        raise :class:`parscan.DeerConvergenceError` (True) or return ``(nan, None, info)``
        with ``info.status`` and ``info.message`` (the error's text: counts, iterations and
        remedies) saying why (False). A
        gradient of an unconverged (wrong) trajectory is never returned. A loss or gradient
        that is not finite although the forward ran (the sequential forward overflowed, or
        the adjoint of a converged DEER forward did: ``|dF/dz| > 1`` along an unforced
        direction grows the adjoint geometrically) has no Newton failure to raise with: it
        returns ``(nan, None, info)`` with ``info.status == DeerStatus.NON_FINITE`` whatever
        ``throw`` is (``info.message`` then tells an overflow from finite inputs from NaN/inf
        in the model parameters).
    tol, max_iter : optional
        Passed to :func:`parscan.deer_solve` (its defaults when None). ``method="sequential"``
        has no Newton iterations: it refuses them unless None.

    Returns
    -------
    loss : float
        Mean squared error over the batch, time steps ``1..T`` and the ``N`` observed
        dimensions, of the predictions ``z_t`` (before forcing), accumulated in float64.
    grad : ndarray, shape (n_params,), or None
        ``d loss / d model.params`` (model dtype), including the ``L0`` block of the initial
        state map (a PLRNN's ``diag(W)`` entries are 0: the model holds them at zero); None
        when the DEER forward did not converge and ``throw=False``, or the loss or gradient
        is not finite (``loss`` is then NaN).
    info : GradInfo
        Method, alpha used, solver status and Newton iterations.

    Raises
    ------
    TypeError, ValueError
        Wrong model kind, dtype, shapes, alpha, method, jacobian, backend, ``throw``, ``tol``
        or ``max_iter`` (checked for either method; ``method="sequential"`` refuses
        ``jacobian``, ``tol`` and ``max_iter`` off their defaults); a masked array; non-finite
        data.
    parscan.DeerConvergenceError
        The DEER forward did not converge and ``throw=True`` (its message gives the remedies
        that fit the run, in this function's terms; never raised by ``method="sequential"``).
        Every message starts with ``gtf_loss_and_grad:``.
    """
    data, alpha, n_forced, throw = _check_args(
        model, data, alpha, method, n_forced, jacobian, backend, throw, tol, max_iter
    )
    x0 = data[:, 0]
    forcing = data[:, 1:]
    auto = isinstance(alpha, str)
    if auto and not np.isfinite(model.params).all():
        # no Jacobian to estimate from: the margin, as deer_solve's "auto" takes when no
        # sequence is finite; the run below then reports NON_FINITE as with a numeric alpha
        alpha = DEFAULT_MARGIN
    elif auto:
        alpha = estimate_alpha(
            model, forcing, None, "sup", DEFAULT_MARGIN, n_forced, False, "gtf_loss_and_grad", 3
        )
    z0 = model.initial_state(x0)
    if method == "sequential":
        loss, grad, g0 = _sequential(model, z0, forcing, alpha, n_forced)
        iters = np.zeros(data.shape[0], dtype=np.int64)
        status = DeerStatus.CONVERGED
    else:
        run = newton_run(
            model, z0, None, forcing, alpha, n_forced, jacobian, tol, max_iter, None, backend,
            throw, caller=_CALLER, estimated_alpha=auto,
        )  # fmt: skip
        iters = run.n_iter.copy()
        status = run.status
        if status != DeerStatus.CONVERGED:
            if throw:
                run.result(throw)  # raises DeerConvergenceError, remedies included
            message, cause = run.failure_message(), run.failure_message(remedies=False)
            if not np.isfinite(model.params).all():  # named, as the sequential method does
                message, cause = _non_finite_message(model, np.nan, alpha, n_forced, auto)
            info = GradInfo(method, alpha, status, iters, message, cause)
            return float("nan"), None, info
        B = data.shape[0]
        keep = 1.0 - np.broadcast_to(np.asarray(alpha, dtype=np.float64), (B,))
        keep = keep.astype(model.dtype)
        if device_resident(model, backend):
            from autodiff._deer_adjoint_cuda import deer_loss_and_grad_cuda  # lazy: numba.cuda

            loss, grad, g0 = deer_loss_and_grad_cuda(model, run.work, z0, keep, n_forced)
        else:
            states = run.states()
            del run  # its Newton buffers (Jacobians included) go before the adjoint's arrive
            loss, grad, g0 = _deer_adjoint(model, z0, forcing, states, keep, n_forced, backend)
    grad += model.initial_state_vjp(x0, g0)
    if not (np.isfinite(loss) and np.all(np.isfinite(grad))):
        # The sequential forward, or the adjoint of a converged DEER forward, overflowed: no
        # solver failure to raise with a DeerResult, so reported, never raised.
        status = DeerStatus.NON_FINITE
        message, cause = _non_finite_message(model, loss, alpha, n_forced, auto)
        return float("nan"), None, GradInfo(method, alpha, status, iters, message, cause)
    done = SEQUENTIAL_DONE if method == "sequential" else status.value
    return loss, grad, GradInfo(method, alpha, status, iters, done, done)


def _non_finite_message(model, loss, alpha, n_forced, auto) -> tuple[str, str]:
    """``(message, cause)`` of :class:`GradInfo` for a NaN/inf ``loss`` or gradient: the
    first NaN/inf model parameter when there is one (the data was checked finite), else which
    pass overflowed from finite inputs, then (``message``
    only) the remedies: the GTF levers left (:func:`parscan.deer.gtf_remedies`: a larger
    ``alpha``, the one used, only where it is below 1; ``auto``: it was ``"auto"``'s
    estimate), a smaller initialisation or learning rate, float64 for a float32 model."""
    finite = np.isfinite(model.params)
    if not finite.all():
        cause = (
            "non_finite: the model parameters contain NaN or inf (first at model.params"
            f"[{int(np.argmin(finite))}]); the data are finite."
        )
        return cause + " Restore finite parameters (a checkpoint, or the last good copy).", cause
    where = "adjoint (the gradient)" if np.isfinite(loss) else "forward (the states)"
    steps = gtf_remedies(_CALLER, alpha, n_forced, model.n_obs, model.M, auto)
    steps.append("use a smaller initialisation or a lower learning rate")
    if model.dtype == np.float32:
        steps.append("train in float64")
    cause = (
        f"non_finite: the {where} overflowed to NaN/inf from finite inputs (the data and the "
        "model parameters are finite): the model's dynamics grow too fast along the directions "
        "the forcing does not hold."
    )
    return cause + f" To avoid it: {either(steps)}.", cause


def _deer_adjoint(model, z0, forcing, states, keep, n_forced, backend):
    """Loss, parameter gradient of the map and ``d loss / d z~_0`` from the converged
    ``states`` (B, T, M) on the host; ``keep`` is ``1 - alpha`` per sequence in the model dtype.

    ``F`` + ``J`` at ``z~_1 .. z~_T`` and, apart, at ``z~_0`` (the GPU,
    :mod:`autodiff._deer_adjoint_cuda`, evaluates all ``T + 1`` in one pass) give the
    predictions ``F(z~_0 .. z~_{T-1})``, the Jacobians ``J(z~_1 .. z~_T)`` of the adjoint and
    ``J(z~_0)`` of the initial-state cotangent; ``F(z~_T)`` is the one value not used.
    Evaluating ``z~_0`` apart keeps the adjoint's Jacobians one contiguous ``(B, T, M, M)``
    block that the reverse scan reads in place (a slice of a ``(B, T+1, M, M)`` one it would
    copy for ``B > 1``).
    """
    N = forcing.shape[2]
    f0, j0 = model.step_and_jacobian(z0[:, None])
    f, jac = model.step_and_jacobian(states)
    resid = np.empty_like(forcing)
    resid[:, 0] = f0[:, 0, :N] - forcing[:, 0]
    resid[:, 1:] = f[:, :-1, :N] - forcing[:, 1:]
    with np.errstate(over="ignore"):  # an overflowing loss is reported (NON_FINITE), not warned
        loss = float(np.mean(np.square(resid, dtype=np.float64)))
    e = np.zeros_like(states)
    e[..., :N] = resid * (2.0 / resid.size)
    del f, resid
    # a[t] = J_F(z~_{t+1}) (I - alpha P): Jacobians at the states, forced columns scaled.
    # a[T-1] (at z~_T) multiplies mu_{T+1} = 0 and is never used otherwise.
    jac[..., :n_forced] *= keep[:, None, None, None]
    mu = linear_scan(jac, e, reverse=True, transpose=True, backend=backend)
    del jac, e
    z_prev = np.empty_like(states)  # z~_0 .. z~_{T-1}, where the parameter VJP is taken
    z_prev[:, 0] = z0
    z_prev[:, 1:] = states[:, :-1]
    grad = model.param_vjp(z_prev, mu)
    g0 = np.einsum("bij,bi->bj", j0[:, 0], mu[:, 0])
    return loss, grad, g0


def _sequential(model, z0, forcing, alpha, n_forced):
    """Loss, gradient of the map and ``d loss / d z~_0`` with a fused BPTT kernel: the SIMD
    kernels of :mod:`autodiff._bptt_shplrnn` and :mod:`autodiff._bptt_alrnn` for the model
    families of ``models/``, the generic one of :mod:`autodiff._bptt_kernels` (the model's
    per-step functions) for any other model."""
    from autodiff._bptt_alrnn import gtf_bptt_alrnn
    from autodiff._bptt_kernels import gtf_bptt
    from autodiff._bptt_shplrnn import gtf_bptt_shplrnn

    fns = getattr(model, "step_functions_jit", None)
    if fns is None:
        raise TypeError(
            "gtf_loss_and_grad: method='sequential' needs the model's jitted per-step functions "
            "(step_functions_jit, kernel_args, n_map_params, as the models in models/ provide); "
            f"{type(model).__name__} has none. Use method='deer'."
        )
    B, T, N = forcing.shape
    M = model.M
    # a writeable copy also for B = 1, where a broadcast view would stay read-only and compile
    # a kernel specialisation of its own
    alpha_b = np.broadcast_to(np.asarray(alpha, np.float64), (B,)).copy()
    zt = np.empty((B, T, M), dtype=model.dtype)
    zp = np.empty((B, T, M), dtype=model.dtype)
    mu = np.empty((B, M), dtype=model.dtype)
    g0 = np.empty((B, M), dtype=model.dtype)
    G = np.zeros((B, model.n_map_params), dtype=np.float64)
    sse = np.empty(B, dtype=np.float64)
    args = model.kernel_args()
    common = (
        np.ascontiguousarray(z0), np.ascontiguousarray(forcing), alpha_b, n_forced,
        2.0 / (B * T * N), zt, zp, mu, g0, G, sse,
    )  # fmt: skip
    if fns is SHPLRNN_STEP_FUNCTIONS_JIT:
        A, W1, W2, h1, h2, clipped = args
        gtf_bptt_shplrnn(A, W1, np.ascontiguousarray(W2.T), h1, h2, clipped, *common)
    elif fns is ALRNN_STEP_FUNCTIONS_JIT:
        gtf_bptt_alrnn(*args, *common)
    else:
        gtf_bptt(fns.step, fns.vjp_state, fns.vjp_params, args, *common)
    grad = np.zeros(model.n_params, dtype=model.dtype)
    grad[: model.n_map_params] = G.sum(axis=0)
    return float(sse.sum() / (B * T * N)), grad, g0
