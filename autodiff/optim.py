"""Optimisers on flat parameter vectors: Adam, RAdam, exponential learning-rate decay, clipping.

The optimisers are small state objects (first and second moments and a step counter) that
update a flat ``params`` vector in place; their state round-trips bit for bit through
:meth:`Adam.state_dict` / :meth:`Adam.from_state_dict` (arrays only, so ``np.savez`` can store
it next to a checkpoint). The learning rate is passed to every :meth:`Adam.step` call, so a
schedule such as :class:`ExponentialDecay` stays a separate, stateless function of the step.

References
----------
Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.
Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond" (RAdam), ICLR 2020.
"""

import inspect
import math
from collections.abc import Mapping

import numpy as np

from models._checks import FLOAT_DTYPES, Checks, check_int
from models.base import allocated
from parscan._arguments import masked_problem


class NonFiniteStepError(ValueError):
    """Raised by :meth:`Adam.step` / :meth:`RAdam.step` for a step that cannot be taken: the
    parameters or the gradient are not finite, or the new moments or parameters would not be
    finite in the optimiser's dtype (e.g. ``grad**2`` overflowing float32). Optimiser state and
    ``params`` are left untouched, so the caller can reject the step and continue."""


class Adam:
    """Adam (Kingma & Ba, ICLR 2015) on a flat parameter vector.

    With gradient ``g_t`` at step ``t = 1, 2, ...``::

        m_t = beta1 m_{t-1} + (1 - beta1) g_t
        v_t = beta2 v_{t-1} + (1 - beta2) g_t**2
        m_hat = m_t / (1 - beta1**t),   v_hat = v_t / (1 - beta2**t)
        params -= lr * m_hat / (sqrt(v_hat) + eps)

    Parameters
    ----------
    n_params : int
        Length of the parameter vector.
    beta1, beta2 : float
        Exponential decay rates of the moment estimates, each in ``[0, 1)``.
    eps : float
        Denominator offset, > 0.
    dtype : float32 or float64
        Dtype of the moment vectors; ``params`` and ``grad`` passed to :meth:`step` must have it.

    Attributes
    ----------
    m, v : ndarray, shape (n_params,)
        First and second moment estimates.
    t : int
        Number of steps taken.
    """

    _NAME = "Adam"

    def __init__(self, n_params: int, *, beta1=0.9, beta2=0.999, eps=1e-8, dtype=np.float64):
        with Checks(type(self).__name__) as checks:
            n_params = checks.integer(n_params, "n_params")
            for name, beta in (("beta1", beta1), ("beta2", beta2)):
                beta = checks.real(beta, name, positive=False)
                if checks.ok(name) and beta >= 1.0:
                    checks.add(f"{name} must be in [0, 1); got {beta}.", name)
                setattr(self, name, beta)
            self.eps = checks.real(eps, "eps", positive=True)
            self.dtype = checks.float_dtype(dtype)
            if checks.ok("eps", "dtype"):
                with np.errstate(over="ignore"):
                    in_dtype = self.dtype.type(self.eps)
                if in_dtype == 0:
                    tiny = np.finfo(self.dtype).smallest_subnormal
                    checks.add(
                        f"eps={eps!r} is 0 in {self.dtype} (a zero gradient entry would divide "
                        f"0 by 0); use eps >= {tiny:.3g}.",
                        "eps",
                    )
                elif not np.isfinite(in_dtype):  # every step would be 0: a silent no-op
                    checks.add(
                        f"eps={eps!r} is inf in {self.dtype}; use eps <= "
                        f"{np.finfo(self.dtype).max:.3g} (typically 1e-8).",
                        "eps",
                    )
        self.m, self.v = allocated(
            lambda: (np.zeros(n_params, dtype=self.dtype), np.zeros(n_params, dtype=self.dtype)),
            2 * n_params * self.dtype.itemsize,
            type(self).__name__,
            f"the moments of {n_params} parameters",
            "train fewer parameters",
        )
        self.t = 0

    @property
    def n_params(self) -> int:
        return int(self.m.size)

    def _check_step_args(self, params, grad, lr) -> float:
        where = f"{type(self).__name__}.step"
        with Checks(where) as checks:
            for name, x in (("params", params), ("grad", grad)):
                masked = masked_problem(x, name)
                if masked is not None:
                    checks.add(masked, name, wrong_kind=True)
                    continue
                if not isinstance(x, np.ndarray):
                    checks.add(
                        f"{name} must be a NumPy array; got {type(x).__name__}.",
                        name,
                        wrong_kind=True,
                    )
                    continue
                if x.dtype != self.dtype:
                    checks.add(
                        f"{name} must have dtype {self.dtype} (the optimiser's dtype); got "
                        f"{x.dtype}. Build the optimiser with dtype=model.dtype.",
                        wrong_kind=True,
                    )
                if x.shape != (self.n_params,):
                    checks.add(f"{name} must have shape ({self.n_params},); got {x.shape}.")
            if checks.ok("params") and not params.flags.writeable:
                checks.add("params must be writeable (it is updated in place).")
            lr = checks.real(lr, "lr", positive=True)
        if not np.all(np.isfinite(params)):
            raise NonFiniteStepError(
                f"{where}: params contains NaN or inf (first at params"
                f"[{int(np.argmin(np.isfinite(params)))}]), so no step can make it finite: the "
                "model has diverged. Restore the parameters from a checkpoint (or the last good "
                "copy) before calling step()."
            )
        if not np.all(np.isfinite(grad)):
            raise NonFiniteStepError(
                f"{where}: grad contains NaN or inf; the optimiser state would be corrupted. "
                "Reject the step before calling step()."
            )
        return lr

    def _new_moments(self, grad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(m_t, v_t)`` after ``grad``, as new arrays (the state is not touched)."""
        # Python-float coefficients keep float32 moments in float32 (NEP 50 weak scalars).
        m = self.m * self.beta1
        m += (1.0 - self.beta1) * grad
        v = self.v * self.beta2
        v += (1.0 - self.beta2) * (grad * grad)
        return m, v

    def _update(self, m: np.ndarray, v: np.ndarray, t: int, lr: float) -> np.ndarray:
        """The vector subtracted from ``params`` at step ``t`` (a new array)."""
        bias1 = 1.0 - self.beta1**t
        bias2 = 1.0 - self.beta2**t
        m_hat = m / bias1
        denom = np.sqrt(v / bias2)
        denom += self.eps
        m_hat /= denom
        m_hat *= lr
        return m_hat

    def step(self, params: np.ndarray, grad: np.ndarray, lr: float) -> None:
        """Update ``params`` (shape ``(n_params,)``) in place with gradient ``grad``.

        The new moments and parameters are computed aside and committed only when all of them
        are finite in the optimiser's dtype; an accepted step is bitwise the in-place update.

        Raises
        ------
        TypeError, ValueError
            A dtype or shape mismatch, read-only ``params`` or an ``lr`` that is not a
            finite real number > 0, all of them in one message (``TypeError`` when one is a
            wrong type or dtype).
        NonFiniteStepError
            ``params`` or ``grad`` is not finite, or the step would make ``m``, ``v`` or
            ``params`` non-finite (overflow). State and ``params`` are left untouched.
        """
        lr = self._check_step_args(params, grad, lr)
        with np.errstate(over="ignore", invalid="ignore"):
            m, v = self._new_moments(grad)
            new_params = params - self._update(m, v, self.t + 1, lr)
        self._commit(params, grad, m, v, new_params)

    def _commit(self, params, grad, m, v, new_params) -> None:
        """Store the step's moments and parameters, or raise :class:`NonFiniteStepError`."""
        bad = [
            name
            for name, x in (("m", m), ("v", v), ("params", new_params))
            if not np.all(np.isfinite(x))
        ]
        if bad:
            remedies = "clip the gradient (grad_clip), lower the learning rate"
            remedies += (
                ", standardise the data or use float64"
                if self.dtype == np.float32
                else " or standardise the data"
            )
            raise NonFiniteStepError(
                f"{type(self).__name__}.step: expected a step that keeps the state finite, but "
                f"it would make {', '.join(bad)} overflow in {self.dtype} (max |grad| = "
                f"{float(np.max(np.abs(grad))):.3g}; params, lr and grad finite). The optimiser "
                f"state and params are left unchanged: reject the step, and {remedies}."
            )
        self.m[...] = m
        self.v[...] = v
        self.t += 1
        params[...] = new_params

    def state_dict(self) -> dict[str, np.ndarray]:
        """The complete state as NumPy arrays (``np.savez``-able, no pickling).

        Keys: ``kind``, ``m``, ``v``, ``t``, ``beta1``, ``beta2``, ``eps``, ``dtype``.
        """
        return {
            "kind": np.array(self._NAME),
            "m": self.m.copy(),
            "v": self.v.copy(),
            "t": np.array(self.t, dtype=np.int64),
            "beta1": np.array(self.beta1, dtype=np.float64),
            "beta2": np.array(self.beta2, dtype=np.float64),
            "eps": np.array(self.eps, dtype=np.float64),
            "dtype": np.array(self.dtype.name),
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> "Adam":
        """Rebuild an optimiser from :meth:`state_dict` output; continues bit-identically."""
        where = f"{cls.__name__}.from_state_dict"
        if not isinstance(state, Mapping):  # a dict, or the NpzFile of a saved one
            raise TypeError(
                f"{where}: state must be the dict of {cls.__name__}.state_dict(); got "
                f"{type(state).__name__}."
            )
        keys = ("kind", "m", "v", "t", "beta1", "beta2", "eps", "dtype")
        missing = [k for k in keys if k not in state]
        if missing:
            raise ValueError(f"{where}: state is missing {missing}; expected keys {list(keys)}.")
        kind = str(np.asarray(state["kind"]))
        if kind != cls._NAME:
            raise ValueError(
                f"{where}: state belongs to an {kind} optimiser, not {cls._NAME}. "
                f"Use {kind}.from_state_dict (or autodiff.optim.make_optimizer)."
            )
        masked = [k for k in keys if isinstance(state[k], np.ma.MaskedArray)]
        if masked:
            raise TypeError(
                f"{where}: state[{masked[0]!r}] is a masked array; a state_dict() holds plain "
                "arrays only (its masked entries would be read as data)."
            )
        m, v = np.asarray(state["m"]), np.asarray(state["v"])
        try:
            dtype = np.dtype(str(np.asarray(state["dtype"])))
        except TypeError:  # not a dtype name at all
            dtype = None
        if dtype is None or dtype not in FLOAT_DTYPES:  # (np.dtype(None) is float64)
            raise ValueError(
                f"{where}: dtype must be 'float32' or 'float64'; got {state['dtype']!r}. The "
                "state is damaged."
            )
        if m.ndim != 1 or m.shape != v.shape or m.dtype != dtype or v.dtype != dtype:
            raise ValueError(
                f"{where}: m and v must be 1-D arrays of one shape and dtype {dtype}; got "
                f"m {m.shape} {m.dtype}, v {v.shape} {v.dtype}."
            )
        if not (np.all(np.isfinite(m)) and np.all(np.isfinite(v)) and np.all(v >= 0)):
            raise ValueError(
                f"{where}: m must be finite and v finite and >= 0 (a step never stores "
                "anything else); the state is damaged."
            )
        t = np.asarray(state["t"])
        if t.shape != () or t.dtype.kind not in "iu" or t < 0:
            raise ValueError(
                f"{where}: step counter t must be an integer scalar >= 0; got {t.dtype} {t!r}."
            )
        t = int(t)
        try:
            opt = cls(
                m.size,
                beta1=float(np.asarray(state["beta1"])),
                beta2=float(np.asarray(state["beta2"])),
                eps=float(np.asarray(state["eps"])),
                dtype=dtype,
            )
        except (TypeError, ValueError) as exc:
            problem = str(exc).removeprefix(f"{cls.__name__}: ")
            raise ValueError(f"{where}: the state is damaged: {problem}") from None
        opt.m[...] = m
        opt.v[...] = v
        opt.t = t
        return opt


class RAdam(Adam):
    """Rectified Adam (Liu et al., ICLR 2020), with exactly the update of ``torch.optim.RAdam``
    (no weight decay).

    After the Adam moment updates at step ``t``::

        m_hat   = m_t / (1 - beta1**t)
        rho_inf = 2 / (1 - beta2) - 1
        rho_t   = rho_inf - 2 t beta2**t / (1 - beta2**t)
        if rho_t > 5:
            r = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
            params -= lr * m_hat * r * sqrt(1 - beta2**t) / (sqrt(v_t) + eps)
        else:                                    # variance not yet tractable: SGD + momentum
            params -= lr * m_hat

    The rectification threshold is ``rho_t > 5``, as in ``torch.optim.RAdam`` and the authors'
    code (github.com/LiyuanLucasLiu/RAdam: ``rho_t >= 5``, "more conservative since it's an
    approximated value"), not the ``rho_t > 4`` of Algorithm 2 of Liu et al. (ICLR 2020): with
    ``beta2 = 0.999`` the first rectified step is ``t = 6``, not 5.

    Same constructor, state and validation as :class:`Adam`. The lab's default optimiser.
    """

    _NAME = "RAdam"

    def __init__(self, n_params: int, *, beta1=0.9, beta2=0.999, eps=1e-8, dtype=np.float64):
        # Adam's, restated so that Python's own argument errors name RAdam, not Adam
        super().__init__(n_params, beta1=beta1, beta2=beta2, eps=eps, dtype=dtype)

    def _update(self, m: np.ndarray, v: np.ndarray, t: int, lr: float) -> np.ndarray:
        """The vector subtracted from ``params`` at step ``t``; see the class docstring."""
        bias1 = 1.0 - self.beta1**t
        bias2 = 1.0 - self.beta2**t
        m_hat = m / bias1
        rho_inf = 2.0 / (1.0 - self.beta2) - 1.0
        rho_t = rho_inf - 2.0 * t * self.beta2**t / bias2
        if rho_t > 5.0:
            rect = math.sqrt(
                (rho_t - 4.0)
                * (rho_t - 2.0)
                * rho_inf
                / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)
            )
            denom = np.sqrt(v)
            denom += self.eps
            m_hat *= lr
            m_hat *= rect * math.sqrt(bias2)
            m_hat /= denom
        else:
            m_hat *= lr
        return m_hat


def lr_ratio_problem(
    lr_start: float, lr_end: float, names: tuple[str, str] = ("lr_start", "lr_end")
) -> str | None:
    """Why :class:`ExponentialDecay` cannot decay from ``lr_start`` to ``lr_end`` (positive,
    finite floats, called ``names`` in the message): their ratio overflows to inf or
    underflows to 0 (its subnormal range is fine); None when it can. Shared with
    :class:`autodiff.TrainConfig` and ``parscan-train``, which check it before a run starts."""
    if 0.0 < lr_end / lr_start < math.inf:
        return None
    return (
        f"{names[1]} / {names[0]} = {lr_end!r} / {lr_start!r} is beyond the range of a float "
        "(about 1e-323 to 1e308), so the decay cannot be computed; choose learning rates "
        "closer to each other."
    )


class ExponentialDecay:
    """Learning rate decaying exponentially from ``lr_start`` to ``lr_end`` over a run.

    ``lr(k) = lr_start * (lr_end / lr_start) ** (k / (n_steps - 1))`` for ``k = 0 .. n_steps-1``
    (so ``lr(0) = lr_start`` and ``lr(n_steps - 1) = lr_end`` exactly), and ``lr_end`` for
    steps beyond the run (``k >= n_steps``, e.g. a resumed run given more epochs). With
    ``n_steps = 1`` the one step of the run uses ``lr_start`` (the run starts at
    ``lr_start``, with no step left to reach ``lr_end``), and steps beyond it ``lr_end``.
    ``lr_end > lr_start`` (exponential growth) is allowed. ``k`` counts training steps:
    :func:`autodiff.fit` indexes it by batch, rejected (non-finite) ones included, where the
    optimiser's ``t`` counts accepted steps only.

    Parameters
    ----------
    lr_start, lr_end : float
        Positive, finite learning rates whose ratio is representable (between about 1e-323
        and 1e308: :func:`lr_ratio_problem`).
    n_steps : int
        Number of optimiser steps of the run, >= 1.
    """

    def __init__(self, lr_start: float, lr_end: float, n_steps: int):
        with Checks("ExponentialDecay") as checks:
            self.lr_start = checks.real(lr_start, "lr_start", positive=True)
            self.lr_end = checks.real(lr_end, "lr_end", positive=True)
            self.n_steps = checks.integer(n_steps, "n_steps")
            if checks.ok("lr_start", "lr_end"):
                problem = lr_ratio_problem(self.lr_start, self.lr_end)
                if problem:
                    checks.add(problem)

    def __call__(self, step: int) -> float:
        """The learning rate at optimiser step ``step`` (0-based, >= 0)."""
        step = check_int(step, "step", "ExponentialDecay", 0)
        if step == 0:
            return self.lr_start
        if step >= self.n_steps - 1:
            return self.lr_end
        ratio = self.lr_end / self.lr_start
        return self.lr_start * ratio ** (step / (self.n_steps - 1))

    def __repr__(self) -> str:
        return (
            f"ExponentialDecay(lr_start={self.lr_start!r}, lr_end={self.lr_end!r}, "
            f"n_steps={self.n_steps})"
        )


#: the range of largest magnitudes outside which :func:`clip_grad_norm` scales before
#: squaring (``x**2`` would underflow below it or overflow above it in float64); inside it the
#: norm is the plain one, bit for bit
_UNSCALED_RANGE = (1e-150, 1e150)


def clip_grad_norm(grad: np.ndarray, max_norm: float | None) -> tuple[np.ndarray, float]:
    """Rescale ``grad`` to Euclidean norm ``max_norm`` when it is longer.

    Parameters
    ----------
    grad : ndarray, shape (n_params,)
        The gradient (float32 or float64, 1-D); never modified.
    max_norm : float or None
        Positive threshold; ``None`` disables clipping.

    Returns
    -------
    clipped : ndarray, shape (n_params,)
        ``grad`` itself when no clipping happens (``max_norm`` None, norm <= ``max_norm``, or a
        non-finite norm), otherwise a new array ``grad * (max_norm / norm)`` of the same dtype
        (the product computed in float64, so that a scale factor below float32's range
        does not lose the clipped gradient).
    norm : float
        The norm of the original ``grad``, computed in float64: ``np.linalg.norm(grad)``, or
        ``s * np.linalg.norm(grad / s)`` with ``s = max |grad|`` when ``s`` is beyond
        ``1e150`` or below ``1e-150`` (where the squares would overflow or underflow). NaN or
        inf when ``grad`` is not finite, which the caller must treat as a failed step.
    """
    with Checks("clip_grad_norm") as checks:
        masked = masked_problem(grad, "grad")
        if masked is not None:
            checks.add(masked, wrong_kind=True)
        elif not isinstance(grad, np.ndarray) or grad.dtype not in FLOAT_DTYPES:
            got = grad.dtype if isinstance(grad, np.ndarray) else type(grad).__name__
            checks.add(f"grad must be a float32/float64 array; got {got}.", wrong_kind=True)
        elif grad.ndim != 1:
            checks.add(
                f"grad must be 1-D, shape (n_params,); got shape {grad.shape}. Pass "
                "grad.ravel() for the norm over all entries."
            )
        if max_norm is not None:
            max_norm = checks.real(max_norm, "max_norm", positive=True)
    g = grad.astype(np.float64, copy=False)
    scale = float(np.max(np.abs(g))) if g.size else 0.0
    if (
        math.isfinite(scale)
        and 0.0 < scale
        and not (_UNSCALED_RANGE[0] <= scale <= _UNSCALED_RANGE[1])
    ):
        norm = scale * float(np.linalg.norm(g / scale))
    else:
        norm = float(np.linalg.norm(g))
    if max_norm is None or not math.isfinite(norm) or norm <= max_norm:
        return grad, norm
    return (g * (max_norm / norm)).astype(grad.dtype, copy=False), norm


OPTIMIZERS = {"adam": Adam, "radam": RAdam}

#: the keyword arguments of the optimiser constructors, which :func:`make_optimizer` passes on
_OPTIONS = tuple(
    name
    for name, p in inspect.signature(Adam.__init__).parameters.items()
    if p.kind is p.KEYWORD_ONLY
)


def make_optimizer(name: str, n_params: int, **kw) -> Adam:
    """Build an optimiser by name: ``"adam"`` (:class:`Adam`) or ``"radam"`` (:class:`RAdam`).

    ``kw`` are passed on (``beta1``, ``beta2``, ``eps``, ``dtype``; the learning rate is an
    argument of :meth:`Adam.step`). The name is case-insensitive.

    Raises
    ------
    TypeError
        ``name`` is not a str, or an unknown keyword argument (the message also lists an
        unknown name, when there is one).
    ValueError
        An unknown optimiser name, and nothing else wrong.
    """
    available = ", ".join(repr(k) for k in OPTIMIZERS)
    with Checks("make_optimizer") as checks:
        if not isinstance(name, str):
            checks.add(
                f"name must be a str ({available}); got {type(name).__name__}.", wrong_kind=True
            )
        elif name.lower() not in OPTIMIZERS:
            checks.add(f"unknown optimiser {name!r}; available: {available}.")
        unknown = sorted(set(kw) - set(_OPTIONS))
        if unknown:
            hint = " The learning rate is not an optimiser setting: pass lr to step()."
            hint = hint if "lr" in unknown else ""
            checks.add(
                f"unexpected keyword argument(s) {unknown}; allowed: {', '.join(_OPTIONS)}.{hint}",
                wrong_kind=True,
            )
    return OPTIMIZERS[name.lower()](n_params, **kw)
