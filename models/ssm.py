"""Linear-recurrence state-space models with a nonlinear readout (DESIGN.md section 6).

The paper's first class of parallel-in-time models: a *linear* non-autonomous recurrence over
a diagonal state, driven by the previous observation, and a one-hidden-layer ReLU MLP readout
predicting the next observation. Teacher-forced training needs one parallel
:func:`parscan.linear_scan` over time; reconstruction runs the model closed loop (feeding its
own predictions back), a nonlinear map training never saw (:meth:`DiagonalSSM.generate`).

For a window ``x_0 .. x_T`` with inputs ``u_t = x_{t-1}`` (t = 1..T) and ``h_0 = 0``::

    h_t   = a_t ⊙ h_{t-1} + b_t(u_t)                   diagonal state, one linear_scan
    y_t   = features(h_t, u_t)                          (K,) real
    x̂_t  = W2 relu(W1 [y_t; u_t] + b1) + b2             predicts x_t

* :class:`LinearSSM` -- LRU (Orvieto et al., ICML 2023): complex, time-invariant
  ``a_t = λ = exp(-exp(ν) + i exp(θ))``, ``b_t = γ ⊙ (B u_t)`` with ``γ = sqrt(1 - |λ|²)``,
  ``y_t = Re(C h_t)``.
* :class:`SelectiveSSM` -- Mamba / S6 (Gu & Dao, 2023): real, input-dependent
  ``a_t = exp(Δ_t A)``, ``b_t = Δ_t B_t u_t``, ``y_t = C_t h_t``.

The gradients (explicit adjoint: one reverse scan) are in :mod:`autodiff.ssm_gradients`; a model
supplies the local pieces :meth:`~DiagonalSSM.recurrence`, :meth:`~DiagonalSSM.features` and
their VJPs. Complex cotangents follow the convention ``g_z = ∂L/∂Re z + i ∂L/∂Im z``, so that
for ``w = c z`` the chain rule reads ``g_z = conj(c) g_w``.
"""

import math
from abc import abstractmethod
from dataclasses import dataclass

import numpy as np
from numba import prange

from models._checks import Checks, check_seed
from models.base import Model, new_run
from parscan._jit import jit, jit_parallel
from parscan.scan import linear_scan

# ---------------------------------------------------------------------------------------------
# Closed-loop kernels (sequential in time, parallel over independent trajectories)
# ---------------------------------------------------------------------------------------------


@jit
def _mlp_one(f, W1, b1, W2, b2, hid, out):
    """``out = W2 relu(W1 f + b1) + b2`` for one feature vector ``f``; ``hid`` is workspace."""
    for i in range(W1.shape[0]):
        acc = b1[i]
        for j in range(f.shape[0]):
            acc += W1[i, j] * f[j]
        hid[i] = 0.0 if acc <= 0.0 else acc  # relu, NaN propagated (as np.maximum)
    for i in range(W2.shape[0]):
        acc = b2[i]
        for j in range(W1.shape[0]):
            acc += W2[i, j] * hid[j]
        out[i] = acc


@jit
def _softplus(x):
    if x > 0.0:
        return x + math.log1p(math.exp(-x))
    return math.log1p(math.exp(x))


@jit
def _generate_linear_one(lam_re, lam_im, gB_re, gB_im, C_re, C_im, W1, b1, W2, b2, x0, out):
    """Closed loop of :class:`LinearSSM` for one trajectory, in real arithmetic.

    ``gB = γ ⊙ B`` (rows scaled), shapes ``(H, N)``; ``C_* (K, H)``; ``out (n_steps, N)``.
    """
    H, N = gB_re.shape
    K = C_re.shape[0]
    h_re = np.zeros(H, dtype=out.dtype)
    h_im = np.zeros(H, dtype=out.dtype)
    f = np.empty(K + N, dtype=out.dtype)
    hid = np.empty(W1.shape[0], dtype=out.dtype)
    for j in range(N):
        f[K + j] = x0[j]
    for t in range(out.shape[0]):
        for k in range(H):
            in_re = gB_re[k, 0] * f[K]
            in_im = gB_im[k, 0] * f[K]
            for j in range(1, N):
                in_re += gB_re[k, j] * f[K + j]
                in_im += gB_im[k, j] * f[K + j]
            re = lam_re[k] * h_re[k] - lam_im[k] * h_im[k] + in_re
            h_im[k] = lam_re[k] * h_im[k] + lam_im[k] * h_re[k] + in_im
            h_re[k] = re
        for k in range(K):
            acc = C_re[k, 0] * h_re[0] - C_im[k, 0] * h_im[0]
            for j in range(1, H):
                acc += C_re[k, j] * h_re[j] - C_im[k, j] * h_im[j]
            f[k] = acc
        _mlp_one(f, W1, b1, W2, b2, hid, out[t])
        for j in range(N):
            f[K + j] = out[t, j]


@jit_parallel
def _generate_linear(lam_re, lam_im, gB_re, gB_im, C_re, C_im, W1, b1, W2, b2, x0, out):
    """``x0 (P, N)``, ``out (P, n_steps, N)``: one closed-loop run per row, in parallel."""
    for p in prange(x0.shape[0]):
        _generate_linear_one(
            lam_re, lam_im, gB_re, gB_im, C_re, C_im, W1, b1, W2, b2, x0[p], out[p]
        )


@jit
def _generate_selective_one(W_delta, b_delta, A, W_B, W_C, W1, b1, W2, b2, x0, out):
    """Closed loop of :class:`SelectiveSSM` for one trajectory; ``A (N, H)`` (negative)."""
    N, H = A.shape
    h = np.zeros((N, H), dtype=out.dtype)
    delta = np.empty(N, dtype=out.dtype)
    Bt = np.empty(H, dtype=out.dtype)
    Ct = np.empty(H, dtype=out.dtype)
    f = np.empty(2 * N, dtype=out.dtype)
    hid = np.empty(W1.shape[0], dtype=out.dtype)
    for j in range(N):
        f[N + j] = x0[j]
    for t in range(out.shape[0]):
        for d in range(N):
            acc = b_delta[d]
            for j in range(N):
                acc += W_delta[d, j] * f[N + j]
            delta[d] = _softplus(acc)
        for n in range(H):
            bb = W_B[n, 0] * f[N]
            cc = W_C[n, 0] * f[N]
            for j in range(1, N):
                bb += W_B[n, j] * f[N + j]
                cc += W_C[n, j] * f[N + j]
            Bt[n] = bb
            Ct[n] = cc
        for d in range(N):
            scale = delta[d] * f[N + d]
            acc = 0.0
            for n in range(H):
                h[d, n] = math.exp(delta[d] * A[d, n]) * h[d, n] + scale * Bt[n]
                acc += Ct[n] * h[d, n]
            f[d] = acc
        _mlp_one(f, W1, b1, W2, b2, hid, out[t])
        for j in range(N):
            f[N + j] = out[t, j]


@jit_parallel
def _generate_selective(W_delta, b_delta, A, W_B, W_C, W1, b1, W2, b2, x0, out):
    """``x0 (P, N)``, ``out (P, n_steps, N)``: one closed-loop run per row, in parallel."""
    for p in prange(x0.shape[0]):
        _generate_selective_one(W_delta, b_delta, A, W_B, W_C, W1, b1, W2, b2, x0[p], out[p])


# ---------------------------------------------------------------------------------------------
# Common base: teacher forcing, readout MLP, validation
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SSMTrace:
    """Intermediates of a teacher-forced pass over ``B`` windows of ``T`` steps.

    Attributes
    ----------
    u : ndarray, shape (B, T, N)
        Inputs ``x_0 .. x_{T-1}``.
    a : ndarray, shape (D,) or (B, T, D)
        Scan coefficients (``(D,)`` for a time-invariant recurrence).
    h : ndarray, shape (B, T, D)
        States ``h_1 .. h_T`` (complex for :class:`LinearSSM`).
    aux : dict of ndarray
        Model-specific intermediates of :meth:`DiagonalSSM.recurrence`.
    y : ndarray, shape (B, T, K)
        Readout features.
    hidden : ndarray, shape (B, T, L)
        Pre-activations ``W1 [y; u] + b1`` of the MLP.
    pred : ndarray, shape (B, T, N)
        Predictions of ``x_1 .. x_T``.
    """

    u: np.ndarray
    a: np.ndarray
    h: np.ndarray
    aux: dict
    y: np.ndarray
    hidden: np.ndarray
    pred: np.ndarray


def _torch_linear_init(rng, shape, fan_in, dtype):
    bound = 1.0 / math.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


#: the smallest value of ``1 - rng.random()``, a draw uniform on ``(0, 1]`` (NumPy's doubles
#: are multiples of 2**-53)
_SMALLEST_DRAW = 2.0**-53


def _inverse_softplus(dt):
    """``b`` with ``softplus(b) = log(1 + exp(b)) = dt`` for ``dt > 0`` (float64)."""
    return dt + np.log(-np.expm1(-dt))


def _apply(x, M):
    """``x (..., P) @ M (P, Q) -> (..., Q)`` as one 2-D BLAS product (a stacked 3-D matmul
    runs one small product per leading index and was ~10x slower)."""
    return (x.reshape(-1, x.shape[-1]) @ M).reshape(*x.shape[:-1], M.shape[-1])


def _sum_outer(g, x):
    """``sum over (B, T) of g ⊗ x``: ``(B, T, P), (B, T, Q) -> (P, Q)``."""
    return g.reshape(-1, g.shape[-1]).T @ x.reshape(-1, x.shape[-1])


class DiagonalSSM(Model):
    """Abstract diagonal linear recurrence with a one-hidden-layer ReLU MLP readout.

    Contract for subclasses (``u`` are the inputs, shape ``(B, T, N)``)
    --------------------------------------------------------------------
    * ``K`` (readout feature width) and ``D`` (scan width) attributes.
    * :meth:`recurrence`: ``u -> (a, b, aux)``, the scan coefficients of
      ``h_t = a_t ⊙ h_{t-1} + b_t``.
    * :meth:`features`: ``(h, u, aux) -> y (B, T, K)``, real.
    * :meth:`features_vjp` / :meth:`recurrence_vjp`: add parameter gradients into a flat vector
      and (``features_vjp``) return the cotangent of ``h``.
    * :meth:`generate`: the jitted closed loop.
    The readout blocks ``W1 (L, K+N)``, ``b1 (L,)``, ``W2 (N, L)``, ``b2 (N,)`` come last in
    :meth:`param_spec`.
    """

    K: int
    D: int

    def _check_sizes(self, N, H, L) -> Checks:
        """Set the sizes ``n_obs``, ``H``, ``L`` every diagonal SSM takes; return the
        constructor's :class:`~models._checks.Checks` holding their problems (the
        constructor adds its own and ends with :meth:`_setup_checked`)."""
        checks = Checks(type(self).__name__)
        self.n_obs = checks.integer(N, "N")
        self.H = checks.integer(H, "H")
        self.L = checks.integer(L, "L")
        return checks

    def _setup_finite(self, checks: Checks, dtype, seed, blocks: dict[str, str]) -> None:
        """:meth:`_setup_checked`, then refuse initialisation settings under which some
        initial parameter :meth:`init` can draw, whatever the seed, is not representable in
        ``dtype`` (:meth:`_unrepresentable_draws`, e.g. a ``float32`` overflow): ``blocks``
        maps each of its labels to the settings that set it (``"nu": "r_min, r_max"``),
        which the message names with their values; the dtype's warnings are not shown."""
        with np.errstate(all="ignore"):
            self._setup_checked(checks, dtype, seed)
            bad = self._unrepresentable_draws()
        if bad:
            settings = dict.fromkeys(s for name in bad for s in blocks[name].split(", "))
            given = ", ".join(f"{s}={getattr(self, s)!r}" for s in settings)
            raise ValueError(
                f"{type(self).__name__}: {given} give{'s' * (len(settings) == 1)} an "
                f"initialisation that overflows or underflows in {self.dtype} "
                f"({', '.join(bad)}); choose values of moderate size (see the defaults)"
                + (" or dtype='float64'." if self.dtype != np.float64 else ".")
            )

    @abstractmethod
    def _unrepresentable_draws(self) -> list[str]:
        """Labels of the initial parameters (or of the recurrence coefficients they make)
        that are not finite, or vanish, in the model's dtype at an end of the range
        :meth:`init` draws them from; empty when every draw is representable."""

    def _readout_spec(self) -> list[tuple[str, tuple[int, ...]]]:
        N, L = self.n_obs, self.L
        return [("W1", (L, self.K + N)), ("b1", (L,)), ("W2", (N, L)), ("b2", (N,))]

    def _init_readout(self, rng) -> None:
        p = self.unflatten()
        N, L, fan1 = self.n_obs, self.L, self.K + self.n_obs
        p["W1"][...] = _torch_linear_init(rng, (L, fan1), fan1, self.dtype)
        p["b1"][...] = _torch_linear_init(rng, (L,), fan1, self.dtype)
        p["W2"][...] = _torch_linear_init(rng, (N, L), L, self.dtype)
        p["b2"][...] = _torch_linear_init(rng, (N,), L, self.dtype)

    # -- model-specific pieces ------------------------------------------------------------------

    @abstractmethod
    def recurrence(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
        """Scan coefficients ``(a, b, aux)`` for inputs ``u (..., T, N)`` (array_like, model
        dtype): ``a`` of shape ``(D,)`` or ``(..., T, D)``, ``b (..., T, D)``, ``aux``
        intermediates for :meth:`recurrence_vjp`. Implementations start with
        :meth:`_check_inputs`."""

    @abstractmethod
    def _aux_shapes(self, steps: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        """The arrays :meth:`recurrence` returns in ``aux`` for inputs of shape ``(*steps,
        N)``: name -> shape."""

    @abstractmethod
    def features(self, h: np.ndarray, u: np.ndarray, aux: dict) -> np.ndarray:
        """Readout features ``y (B, T, K)`` from states ``h (B, T, D)``, inputs ``u (B, T, N)``
        and the ``aux`` of :meth:`recurrence`. Implementations start with
        :meth:`_check_features_args`."""

    @abstractmethod
    def features_vjp(self, trace: SSMTrace, g_y: np.ndarray, grad: np.ndarray) -> np.ndarray:
        """Add ``(∂y/∂θ)^T g_y`` into ``grad (n_params,)`` for the :class:`SSMTrace` of
        :meth:`forward` and ``g_y`` of the shape of ``trace.y``; return ``g_h (B, T, D)``.
        Implementations start with :meth:`_check_vjp_args`."""

    @abstractmethod
    def recurrence_vjp(
        self, trace: SSMTrace, g_a: np.ndarray, g_b: np.ndarray, grad: np.ndarray
    ) -> None:
        """Add the parameter gradient of ``<a, g_a> + <b, g_b>`` (real inner products of
        ``(B, T, D)`` arrays, the shape of ``trace.h``; complex ones as ``Re(conj(g) dz)``)
        into ``grad (n_params,)``. Implementations start with :meth:`_check_vjp_args`."""

    # -- shared machinery -----------------------------------------------------------------------

    def forward(self, x: np.ndarray, *, backend: str = "auto") -> SSMTrace:
        """Teacher-forced pass over windows ``x (B, T+1, N)`` keeping every intermediate.

        ``x`` may have any number of leading batch dimensions (flattened to ``B``); ``T >= 1``.
        The recurrence is one :func:`parscan.linear_scan` over time (``backend`` is passed on,
        and a bad one raises linear_scan's error).
        """
        return self._forward(self._check_windows(x, f"{type(self).__name__}.forward", "x"), backend)

    def _forward(self, x: np.ndarray, backend: str) -> SSMTrace:
        """:meth:`forward` of windows that passed :meth:`_check_windows`."""
        u = np.ascontiguousarray(x.reshape(-1, *x.shape[-2:])[:, :-1, :])
        a, b, aux = self.recurrence(u)
        # a (D,) spread over the steps is a writeable copy: a read-only broadcast view would
        # compile scan kernels of its own (numba types read-only arrays separately).
        a_steps = a if a.shape == b.shape else np.broadcast_to(a, b.shape).copy()
        h = linear_scan(a_steps, b, backend=backend)
        y = self.features(h, u, aux)
        p = self.unflatten()
        f = np.concatenate([y, u], axis=-1)
        hidden = _apply(f, p["W1"].T)
        hidden += p["b1"]
        pred = _apply(np.maximum(hidden, 0.0), p["W2"].T)
        pred += p["b2"]
        return SSMTrace(u=u, a=a, h=h, aux=aux, y=y, hidden=hidden, pred=pred)

    def _check_windows(self, x, where: str, what: str) -> np.ndarray:
        """``x`` (array_like) as windows ``(..., T+1, N)`` with ``T >= 1`` in the model's dtype;
        ValueError/TypeError naming ``where`` and ``what``."""
        x = self._check_obs(x, where, what, min_ndim=2)
        if x.shape[-2] < 2:
            raise ValueError(
                f"{where}: need at least 2 time points (T+1 >= 2) per "
                f"window; got {what}.shape={x.shape}."
            )
        return x

    def _check_inputs(self, u, where: str) -> np.ndarray:
        """``u`` (array_like) as inputs ``(..., T, N)`` in the model's dtype; ValueError/TypeError
        naming ``where``."""
        shape, dims = "(..., T, N)", f"N={self.n_obs}"
        return self._check_last_axis(u, where, "u", self.n_obs, shape, dims, min_ndim=2)

    def _check_features_args(self, h, u, aux, where: str) -> None:
        """Refuse (naming ``where``) arguments of :meth:`features` that are not what
        :meth:`forward` passes: states ``h (B, T, D)``, inputs ``u (B, T, N)`` and the dict
        ``aux`` of :meth:`recurrence` for ``u`` (:meth:`_aux_shapes`). O(1): kinds and
        shapes, not values."""
        with Checks(where) as checks:
            for name, value, width in (("h", h, "D"), ("u", u, "N")):
                if not isinstance(value, np.ndarray):
                    checks.add(
                        f"{name} must be a numpy array of shape (B, T, {width}); got "
                        f"{type(value).__name__}.",
                        name,
                        wrong_kind=True,
                    )
            if checks.ok("h", "u") and (
                u.ndim != 3 or u.shape[-1] != self.n_obs or h.shape != (*u.shape[:-1], self.D)
            ):
                checks.add(
                    f"need u of shape (B, T, N) and h of shape (B, T, D) with N={self.n_obs}, "
                    f"D={self.D}; got u.shape={u.shape}, h.shape={h.shape}."
                )
            self._check_aux(checks, aux, u.shape[:-1] if checks.ok("u") else None, "u")

    def _check_aux(self, checks: Checks, aux, steps, inputs: str, name: str = "aux") -> None:
        """Add to ``checks`` the problem of an ``aux`` (``name`` in the message) that is not
        what :meth:`recurrence` returns for inputs of shape ``(*steps, N)`` (``inputs``: their
        name; ``steps`` None: only the keys and kinds are checked)."""
        if not isinstance(aux, dict):
            checks.add(
                f"aux must be the dict returned by recurrence({inputs}); got {type(aux).__name__}.",
                wrong_kind=True,
            )
            return
        shapes = self._aux_shapes(steps if steps is not None else ())
        fits = set(aux) == set(shapes) and all(
            isinstance(aux[k], np.ndarray) and (steps is None or aux[k].shape == shapes[k])
            for k in shapes
        )
        if not fits:
            got = {k: getattr(v, "shape", type(v).__name__) for k, v in aux.items()}
            expected = ", ".join(f"{k} {shape}" for k, shape in shapes.items())
            checks.add(
                f"{name} must be the dict returned by recurrence({inputs}), arrays "
                f"{expected}; got {got}."
            )

    def _check_vjp_args(self, where: str, trace, grad, **cotangents) -> None:
        """Refuse (naming ``where``) arguments of a VJP hook that are not what
        :func:`autodiff.ssm_gradients.ssm_loss_and_grad` passes: the :class:`SSMTrace` of
        :meth:`forward` (its ``aux`` that of its inputs), cotangents given as ``name=(array,
        field)`` of the shape and kind (real, complex) of ``trace.<field>``, and a vector
        ``grad (n_params,)`` of the model's dtype. O(1): kinds and shapes, not values (these
        run every training step)."""
        with Checks(where) as checks:
            if not isinstance(trace, SSMTrace):
                checks.add(
                    f"trace must be the SSMTrace returned by forward(x); got "
                    f"{type(trace).__name__}.",
                    "trace",
                    wrong_kind=True,
                )
            elif isinstance(trace.u, np.ndarray):
                self._check_aux(checks, trace.aux, trace.u.shape[:-1], "trace.u", "trace.aux")
            for name, (value, field) in cotangents.items():
                if not isinstance(value, np.ndarray):
                    checks.add(
                        f"{name} must be a numpy array of the shape of trace.{field}; got "
                        f"{type(value).__name__}.",
                        wrong_kind=True,
                    )
                    continue
                if not checks.ok("trace"):
                    continue
                target = getattr(trace, field)
                if value.shape != target.shape:
                    checks.add(
                        f"{name} must have the shape of trace.{field}, {target.shape}; got "
                        f"{value.shape}."
                    )
                if not np.can_cast(value.dtype, target.dtype, "same_kind"):
                    checks.add(
                        f"{name} must be of the kind of trace.{field} ({target.dtype}); got "
                        f"{value.dtype}.",
                        wrong_kind=True,
                    )
            if not isinstance(grad, np.ndarray):
                checks.add(
                    f"grad must be a numpy array of shape ({self.n_params},), the gradient "
                    f"added into; got {type(grad).__name__}. {self._grad_fix()}",
                    wrong_kind=True,
                )
            else:
                if grad.shape != (self.n_params,):
                    checks.add(f"grad must have shape ({self.n_params},); got {grad.shape}.")
                if grad.dtype != self.dtype:
                    checks.add(
                        f"grad must have the model's dtype; got {grad.dtype}. {self._grad_fix()}",
                        wrong_kind=True,
                    )

    def _grad_fix(self) -> str:
        """How to make the ``grad`` the VJP hooks add into."""
        return f"Use np.zeros(model.n_params, dtype=model.dtype) ({self.dtype})."

    def readout_vjp(self, trace: SSMTrace, g_pred: np.ndarray, grad: np.ndarray) -> np.ndarray:
        """Add the MLP-readout parameter gradients for ``g_pred`` (the shape of ``trace.pred``,
        ``(B, T, N)``) into ``grad (n_params,)`` for the :class:`SSMTrace` of :meth:`forward`;
        return the cotangent of the features ``g_y (B, T, K)``."""
        where = f"{type(self).__name__}.readout_vjp"
        self._check_vjp_args(where, trace, grad, g_pred=(g_pred, "pred"))
        p, g = self.unflatten(), self.unflatten(grad)
        act = np.maximum(trace.hidden, 0.0)
        g["W2"][...] += _sum_outer(g_pred, act)
        g["b2"][...] += g_pred.sum(axis=(0, 1))
        g_hidden = _apply(g_pred, p["W2"])
        g_hidden *= trace.hidden > 0.0
        g["W1"][:, : self.K] += _sum_outer(g_hidden, trace.y)
        g["W1"][:, self.K :] += _sum_outer(g_hidden, trace.u)
        g["b1"][...] += g_hidden.sum(axis=(0, 1))
        return _apply(g_hidden, p["W1"][:, : self.K])

    def teacher_forced(self, x: np.ndarray, *, backend: str = "auto") -> np.ndarray:
        """One-step-ahead predictions with the data as inputs.

        Parameters
        ----------
        x : ndarray, shape (..., T+1, N)
            Windows ``x_0 .. x_T`` (model dtype), ``T >= 1``.
        backend : str
            Backend of the :func:`parscan.linear_scan` over time.

        Returns
        -------
        ndarray, shape (..., T, N)
            Predictions of ``x_1 .. x_T`` from inputs ``x_0 .. x_{T-1}`` (state ``h_0 = 0`` at
            the start of every window).
        """
        where = f"{type(self).__name__}.teacher_forced"
        x = self._check_windows(x, where, "x")
        try:
            pred = self._forward(x, backend).pred
        except (TypeError, ValueError) as exc:  # a bad backend, refused by linear_scan
            raise type(exc)(f"{where}: {exc}") from None
        return pred.reshape(*x.shape[:-2], x.shape[-2] - 1, self.n_obs)

    def generate(self, x0: np.ndarray, n_steps: int) -> np.ndarray:
        """Closed-loop free run from ``x0`` with ``h_0 = 0``, feeding each prediction back.

        Parameters
        ----------
        x0 : ndarray, shape (..., N)
            Initial observation(s), model dtype.
        n_steps : int
            Number of steps, >= 0.

        Returns
        -------
        ndarray, shape (..., n_steps, N)
            ``x̂_1 .. x̂_n`` (``x0`` excluded). ``x̂_1`` equals the first teacher-forced
            prediction of a window starting at ``x0``. As for the latent RNNs, NaN/inf in
            ``x0`` and a run that diverges give huge, inf or NaN entries, not flagged;
            :func:`models.evaluate` reports such runs.

        Raises
        ------
        TypeError, ValueError
            Naming this method: ``x0`` of another shape or dtype, ``n_steps`` not an int
            >= 0, runs too large to allocate (:func:`models.base.new_run`).
        """
        where = f"{type(self).__name__}.generate"
        with Checks(where) as checks:
            with checks.caught():
                x0 = self._check_obs(x0, where, "x0")
            n_steps = checks.integer(n_steps, "n_steps", 0)
        flat = np.ascontiguousarray(x0.reshape(-1, self.n_obs))
        out = new_run((*x0.shape[:-1], n_steps, self.n_obs), self.dtype, where)
        if out.size:
            self._generate_kernel(flat, out.reshape(flat.shape[0], n_steps, self.n_obs))
        return out

    @abstractmethod
    def _generate_kernel(self, x0: np.ndarray, out: np.ndarray) -> None:
        """Fill ``out (P, n_steps, N)`` with closed-loop runs from ``x0 (P, N)``."""


# ---------------------------------------------------------------------------------------------
# LRU-style linear SSM
# ---------------------------------------------------------------------------------------------


class LinearSSM(DiagonalSSM):
    """Linear recurrent unit (LRU; Orvieto et al., ICML 2023) with an MLP readout.

    State ``h_t ∈ C^H``, time-invariant diagonal recurrence::

        λ   = exp(-exp(ν) + i exp(θ))                   |λ| < 1 for every real ν, θ
                                                        (exp(θ) finite: a θ beyond is refused)
        γ   = sqrt(1 - |λ|²)                            input normalisation (a function of ν)
        h_t = λ ⊙ h_{t-1} + γ ⊙ (B x_{t-1}),  h_0 = 0,  B = B_re + i B_im  (H, N)
        y_t = Re(C h_t),                                C = C_re + i C_im  (K, H)
        x̂_t = W2 relu(W1 [y_t; x_{t-1}] + b1) + b2

    Unlike the LRU paper, ``γ`` is not a free parameter but always ``sqrt(1 - |λ|²)``, which
    keeps the stationary state variance of a white-noise input independent of ``|λ|``.

    Parameters
    ----------
    N : int
        Observed dimensions.
    H : int
        Complex state size (2H real degrees of freedom).
    L : int
        Hidden width of the readout MLP.
    K : int, optional
        Readout feature width (rows of ``C``); default ``H``, so ``[Re(C h); x]`` can carry a
        full-rank linear image of the state.
    r_min, r_max : float
        Ring initialisation of ``|λ|``, uniform in area on ``r_min <= |λ| <= r_max``,
        ``0 <= r_min <= r_max < 1`` and ``r_max > 0`` (LRU; default 0.9-0.999). Settings
        under which some initial parameter is not finite in ``dtype``, whatever the seed (an
        ``r_max`` whose square underflows, a ``max_phase`` beyond float32's range), are
        refused.
    max_phase : float
        Phases ``arg λ`` initialised uniformly in ``[0, max_phase]`` (default 2π).
    dtype : {"float64", "float32"}
        Parameter dtype; the state is complex128 / complex64 respectively.
    seed : int
        Seed of :meth:`init`, an int >= 0 of at most 4300 digits.

    Parameter blocks (in order): ``nu (H,)``, ``theta (H,)``, ``B_re, B_im (H, N)``,
    ``C_re, C_im (K, H)``, ``W1 (L, K+N)``, ``b1 (L,)``, ``W2 (N, L)``, ``b2 (N,)``.
    """

    def __init__(
        self,
        N: int,
        H: int,
        L: int,
        *,
        K: int | None = None,
        r_min: float = 0.9,
        r_max: float = 0.999,
        max_phase: float = 2.0 * math.pi,
        dtype="float64",
        seed: int = 0,
    ):
        checks = self._check_sizes(N, H, L)
        self.K = self.H if K is None else checks.integer(K, "K")
        self.D = self.H
        self.r_min = checks.real(r_min, "r_min", positive=False)
        self.r_max = checks.real(r_max, "r_max", positive=True)
        self.max_phase = checks.real(max_phase, "max_phase", positive=True)
        if checks.ok("r_min", "r_max") and not self.r_min <= self.r_max < 1.0:
            checks.add(f"need 0 <= r_min <= r_max < 1; got r_min={r_min}, r_max={r_max}.")
        blocks = {"nu": "r_min, r_max", "theta": "max_phase", "phases exp(theta)": "max_phase"}
        self._setup_finite(checks, dtype, seed, blocks)

    def param_spec(self):
        H, N, K = self.H, self.n_obs, self.K
        return [
            ("nu", (H,)),
            ("theta", (H,)),
            ("B_re", (H, N)),
            ("B_im", (H, N)),
            ("C_re", (K, H)),
            ("C_im", (K, H)),
            *self._readout_spec(),
        ]

    def hyperparameters(self) -> dict:
        return {
            "N": self.n_obs,
            "H": self.H,
            "L": self.L,
            "K": self.K,
            "r_min": self.r_min,
            "r_max": self.r_max,
            "max_phase": self.max_phase,
            "dtype": self.dtype.name,
            "seed": self.seed,
        }

    def init(self, seed: int = 0) -> "LinearSSM":
        """LRU initialisation: ``|λ|²`` uniform on ``[r_min², r_max²]``, phases uniform on
        ``[0, max_phase]``; ``B ~ N(0, 1/(2N))`` and ``C ~ N(0, 1/(2H))`` per real part; the MLP
        as PyTorch's ``nn.Linear`` (uniform ``±1/sqrt(fan_in)``)."""
        self.seed = check_seed(seed, "LinearSSM.init")
        rng = np.random.default_rng(self.seed)
        H, N, K = self.H, self.n_obs, self.K
        p = self.unflatten()
        p["nu"][...] = self._initial_nu(1.0 - rng.random(H))
        p["theta"][...] = self._initial_theta(1.0 - rng.random(H))
        p["B_re"][...] = rng.normal(0.0, 1.0 / math.sqrt(2 * N), (H, N))
        p["B_im"][...] = rng.normal(0.0, 1.0 / math.sqrt(2 * N), (H, N))
        p["C_re"][...] = rng.normal(0.0, 1.0 / math.sqrt(2 * H), (K, H))
        p["C_im"][...] = rng.normal(0.0, 1.0 / math.sqrt(2 * H), (K, H))
        self._init_readout(rng)
        return self

    def _initial_nu(self, u):
        """``ν`` of ``|λ|²`` uniform on ``[r_min², r_max²]``, from draws ``u`` uniform on
        ``(0, 1]`` (not 0: keeps ``|λ| > 0`` even for ``r_min = 0``)."""
        mod2 = u * (self.r_max**2 - self.r_min**2) + self.r_min**2
        return np.log(-0.5 * np.log(mod2))

    def _initial_theta(self, u):
        """``θ`` of phases uniform on ``(0, max_phase]``, from draws ``u`` uniform on ``(0, 1]``."""
        return np.log(self.max_phase * u)

    def _unrepresentable_draws(self) -> list[str]:
        ends = np.array([_SMALLEST_DRAW, 1.0])
        nu = self._initial_nu(ends).astype(self.dtype)
        theta = self._initial_theta(ends).astype(self.dtype)
        bad = [name for name, v in (("nu", nu), ("theta", theta)) if not np.isfinite(v).all()]
        if "theta" not in bad and not np.isfinite(np.exp(theta)).all():
            bad.append("phases exp(theta)")  # the phase itself overflows
        return bad

    def _check_param_values(self, params: np.ndarray, where: str) -> None:
        """The phases ``exp(θ)`` must be finite in the model dtype: an overflowed one makes
        ``λ = exp(i inf)`` NaN (float32 from ``θ ≈ 88.7``, float64 from ``θ ≈ 709.8``)."""
        theta = self.unflatten(params)["theta"]  # (in params' dtype: fit's, or the model's)
        with np.errstate(over="ignore"):
            finite = np.isfinite(np.exp(theta))
        if not np.all(finite):
            first = int(np.argmin(finite))
            raise ValueError(
                f"{where}: theta[{first}] = {theta[first]:.6g} gives a phase exp(theta) beyond "
                f"{params.dtype} (largest finite value {np.finfo(params.dtype).max:.6g}), "
                "which makes λ NaN. A phase is an angle: set theta to log(exp(theta) mod 2π), "
                "or keep float64 (fit: TrainConfig(dtype='float64'))."
            )

    def eigenvalues(self) -> tuple[np.ndarray, np.ndarray]:
        """``(λ, γ)``: the complex diagonal ``(H,)`` and the input normalisation ``(H,)``."""
        p = self.unflatten()
        with np.errstate(over="ignore"):  # exp(ν) = inf: λ = 0 and γ = 1, their limits
            rate = np.exp(p["nu"])
        lam = np.exp(-rate + 1j * np.exp(p["theta"]))
        gamma = np.sqrt(-np.expm1(-2.0 * rate))
        return lam, gamma

    def recurrence(self, u):
        u = self._check_inputs(u, "LinearSSM.recurrence")
        p = self.unflatten()
        lam, gamma = self.eigenvalues()
        b = np.empty((*u.shape[:-1], self.H), dtype=lam.dtype)
        b.real = _apply(u, (gamma[:, None] * p["B_re"]).T)
        b.imag = _apply(u, (gamma[:, None] * p["B_im"]).T)
        return lam, b, {"gamma": gamma}

    def _aux_shapes(self, steps):
        return {"gamma": (self.H,)}

    def features(self, h, u, aux):
        self._check_features_args(h, u, aux, "LinearSSM.features")
        p = self.unflatten()
        return _apply(h.real, p["C_re"].T) - _apply(h.imag, p["C_im"].T)

    def features_vjp(self, trace, g_y, grad):
        self._check_vjp_args("LinearSSM.features_vjp", trace, grad, g_y=(g_y, "y"))
        p, g = self.unflatten(), self.unflatten(grad)
        g["C_re"][...] += _sum_outer(g_y, trace.h.real)
        g["C_im"][...] -= _sum_outer(g_y, trace.h.imag)
        g_h = np.empty(trace.h.shape, dtype=trace.h.dtype)  # conj(C)^T g_y
        g_h.real = _apply(g_y, p["C_re"])
        g_h.imag = -_apply(g_y, p["C_im"])
        return g_h

    def recurrence_vjp(self, trace, g_a, g_b, grad):
        where = "LinearSSM.recurrence_vjp"
        self._check_vjp_args(where, trace, grad, g_a=(g_a, "h"), g_b=(g_b, "h"))
        p, g = self.unflatten(), self.unflatten(grad)
        lam, gamma = trace.a, trace.aux["gamma"]
        g_lam = g_a.sum(axis=(0, 1))
        # b = γ ⊙ (B u): real and imaginary parts separately.
        G_re = _sum_outer(g_b.real, trace.u)
        G_im = _sum_outer(g_b.imag, trace.u)
        g["B_re"][...] += gamma[:, None] * G_re
        g["B_im"][...] += gamma[:, None] * G_im
        g_gamma = np.sum(p["B_re"] * G_re + p["B_im"] * G_im, axis=1)
        # λ = exp(s), s = -exp(ν) + i exp(θ): dL = Re(conj(g_λ) λ ds).
        w = np.conj(g_lam) * lam
        with np.errstate(over="ignore"):
            rate = np.exp(p["nu"])
        # exp(ν) beyond the dtype's range: λ = 0 and γ = 1 for every such ν, whose derivatives
        # are 0 (the limit, not inf * 0)
        rate[np.isinf(rate)] = 0.0
        # dγ/dν -> 0 as exp(ν) underflows (γ -> 0): the limit, not 0/0.
        dgamma_dnu = np.divide(
            rate * np.exp(-2.0 * rate), gamma, out=np.zeros_like(gamma), where=gamma > 0
        )
        g["nu"][...] += -rate * w.real + g_gamma * dgamma_dnu
        g["theta"][...] += -np.exp(p["theta"]) * w.imag

    def _generate_kernel(self, x0, out):
        p = self.unflatten()
        lam, gamma = self.eigenvalues()
        c = np.ascontiguousarray
        _generate_linear(
            c(lam.real),
            c(lam.imag),
            c(gamma[:, None] * p["B_re"]),
            c(gamma[:, None] * p["B_im"]),
            c(p["C_re"]),
            c(p["C_im"]),
            c(p["W1"]),
            c(p["b1"]),
            c(p["W2"]),
            c(p["b2"]),
            x0,
            out,
        )


# ---------------------------------------------------------------------------------------------
# Mamba / S6-style selective SSM
# ---------------------------------------------------------------------------------------------


def _state_matrix(log_A: np.ndarray) -> np.ndarray:
    """The selective SSM's ``A = -exp(log_A)``, (N, H): ``-inf`` where ``exp`` overflows, which
    makes ``a = exp(Δ A) = 0``, its limit (the VJP handles it), without NumPy's warning."""
    with np.errstate(over="ignore"):
        return -np.exp(log_A)


class SelectiveSSM(DiagonalSSM):
    """Selective diagonal SSM after Mamba's S6 layer (Gu & Dao, 2023), with an MLP readout.

    As in S6, every observed channel ``d = 1..N`` drives its own real state ``h[d] ∈ R^H``
    (total state ``N·H``, one diagonal scan of width ``D = N H``); the step size ``Δ`` is per
    channel and ``B_t``, ``C_t`` are shared by the channels; all are functions of the input
    ``u_t = x_{t-1}``. Discretisation is Mamba's ZOH-simplified form (ZOH for ``A``, Euler for
    ``B``)::

        Δ_t      = softplus(W_Δ u_t + b_Δ)                     (N,)
        B_t      = W_B u_t,   C_t = W_C u_t                      (H,) each
        A        = -exp(log_A)                                   (N, H), real negative
        h_t[d]   = exp(Δ_t[d] A[d]) ⊙ h_{t-1}[d] + Δ_t[d] u_t[d] B_t,   h_0 = 0
        y_t[d]   = C_t · h_t[d]                                  (K = N features)
        x̂_t     = W2 relu(W1 [y_t; u_t] + b1) + b2

    Parameters
    ----------
    N : int
        Observed dimensions (= S6 channels).
    H : int
        State size per channel.
    L : int
        Hidden width of the readout MLP.
    dt_min, dt_max : float
        Initial step sizes ``softplus(b_Δ)`` are log-uniform on ``[dt_min, dt_max]`` (Mamba's
        default 1e-3..1e-1), ``0 < dt_min <= dt_max``; a ``dt_max`` beyond ``dtype``'s range
        or a ``dt_min`` whose step size is 0 in it (below about 1e-45 in float32) is refused.
    dtype : {"float64", "float32"}
    seed : int

    Parameter blocks (in order): ``W_delta (N, N)``, ``b_delta (N,)``, ``log_A (N, H)``,
    ``W_B (H, N)``, ``W_C (H, N)``, ``W1 (L, 2N)``, ``b1 (L,)``, ``W2 (N, L)``, ``b2 (N,)``.
    """

    def __init__(
        self,
        N: int,
        H: int,
        L: int,
        *,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dtype="float64",
        seed: int = 0,
    ):
        checks = self._check_sizes(N, H, L)
        self.K = self.n_obs
        self.dt_min = checks.real(dt_min, "dt_min", positive=True)
        self.dt_max = checks.real(dt_max, "dt_max", positive=True)
        if checks.ok("dt_min", "dt_max") and not self.dt_min <= self.dt_max:
            checks.add(f"need dt_min <= dt_max; got dt_min={dt_min}, dt_max={dt_max}.")
        blocks = {"b_delta": "dt_min, dt_max", "step sizes softplus(b_delta)": "dt_min"}
        self._setup_finite(checks, dtype, seed, blocks)

    @property
    def D(self) -> int:
        """The scan width ``N·H`` (a property: ``N`` and ``H`` may be invalid while the
        constructor gathers their problems)."""
        return self.n_obs * self.H

    def param_spec(self):
        N, H = self.n_obs, self.H
        return [
            ("W_delta", (N, N)),
            ("b_delta", (N,)),
            ("log_A", (N, H)),
            ("W_B", (H, N)),
            ("W_C", (H, N)),
            *self._readout_spec(),
        ]

    def hyperparameters(self) -> dict:
        return {
            "N": self.n_obs,
            "H": self.H,
            "L": self.L,
            "dt_min": self.dt_min,
            "dt_max": self.dt_max,
            "dtype": self.dtype.name,
            "seed": self.seed,
        }

    def init(self, seed: int = 0) -> "SelectiveSSM":
        """Mamba initialisation: S4D-real ``A[d, n] = -(n+1)``; ``b_Δ = softplus⁻¹(dt)`` with
        ``dt`` log-uniform on ``[dt_min, dt_max]``; ``W_Δ`` uniform ``±1/sqrt(N)``;
        ``W_B, W_C ~ N(0, 1/N)``; the MLP as PyTorch's ``nn.Linear``."""
        self.seed = check_seed(seed, "SelectiveSSM.init")
        rng = np.random.default_rng(self.seed)
        N, H = self.n_obs, self.H
        p = self.unflatten()
        p["W_delta"][...] = _torch_linear_init(rng, (N, N), N, self.dtype)
        dt = np.exp(rng.uniform(math.log(self.dt_min), math.log(self.dt_max), N))
        p["b_delta"][...] = _inverse_softplus(dt)
        p["log_A"][...] = np.log(np.arange(1, H + 1, dtype=np.float64))[None, :]
        p["W_B"][...] = rng.normal(0.0, 1.0 / math.sqrt(N), (H, N))
        p["W_C"][...] = rng.normal(0.0, 1.0 / math.sqrt(N), (H, N))
        self._init_readout(rng)
        return self

    def _unrepresentable_draws(self) -> list[str]:
        b_delta = _inverse_softplus(np.array([self.dt_min, self.dt_max])).astype(self.dtype)
        if not np.isfinite(b_delta).all():
            return ["b_delta"]
        # the smallest step size vanishing in the dtype: that channel could never train
        return [] if np.logaddexp(0.0, b_delta[0]) > 0.0 else ["step sizes softplus(b_delta)"]

    def recurrence(self, u):
        u = self._check_inputs(u, "SelectiveSSM.recurrence")
        p = self.unflatten()
        pre = _apply(u, p["W_delta"].T)
        pre += p["b_delta"]
        with np.errstate(invalid="ignore"):  # NaN inputs propagate, as in the linear SSM
            delta = np.logaddexp(0.0, pre)
        A = _state_matrix(p["log_A"])
        a = np.exp(delta[..., None] * A)  # (B, T, N, H)
        Bt = _apply(u, p["W_B"].T)
        b = (delta * u)[..., None] * Bt[..., None, :]
        shape = (*u.shape[:-1], self.D)
        aux = {"delta": delta, "A": A, "Bt": Bt, "Ct": _apply(u, p["W_C"].T)}
        return a.reshape(shape), b.reshape(shape), aux

    def _aux_shapes(self, steps):
        N, H = self.n_obs, self.H
        return {"delta": (*steps, N), "A": (N, H), "Bt": (*steps, H), "Ct": (*steps, H)}

    def features(self, h, u, aux):
        self._check_features_args(h, u, aux, "SelectiveSSM.features")
        h4 = h.reshape(*h.shape[:-1], self.n_obs, self.H)
        return np.einsum("btdn,btn->btd", h4, aux["Ct"])

    def features_vjp(self, trace, g_y, grad):
        self._check_vjp_args("SelectiveSSM.features_vjp", trace, grad, g_y=(g_y, "y"))
        g = self.unflatten(grad)
        h4 = trace.h.reshape(*trace.h.shape[:-1], self.n_obs, self.H)
        g_Ct = np.einsum("btd,btdn->btn", g_y, h4)
        g["W_C"][...] += _sum_outer(g_Ct, trace.u)
        g_h = g_y[..., :, None] * trace.aux["Ct"][..., None, :]
        return g_h.reshape(trace.h.shape)

    def recurrence_vjp(self, trace, g_a, g_b, grad):
        where = "SelectiveSSM.recurrence_vjp"
        self._check_vjp_args(where, trace, grad, g_a=(g_a, "h"), g_b=(g_b, "h"))
        g = self.unflatten(grad)
        aux, u = trace.aux, trace.u
        shape4 = (*u.shape[:-1], self.n_obs, self.H)
        A, delta, Bt = aux["A"], aux["delta"], aux["Bt"]
        # a = exp(Δ A): cotangent of the exponent Δ[d] A[d, n].
        g_exp = g_a.reshape(shape4) * trace.a.reshape(shape4)
        g_b4 = g_b.reshape(shape4)
        # An A that overflowed to -inf makes a = 0 for every Δ > 0: its exact terms are 0
        # (g_exp is 0 there), not 0 * inf.
        A = np.where(np.isinf(A), 0.0, A).astype(A.dtype, copy=False)
        g_delta = np.einsum("btdn,dn->btd", g_exp, A)
        g_delta += u * np.einsum("btdn,btn->btd", g_b4, Bt)
        g["log_A"][...] += np.einsum("btdn,btd->dn", g_exp, delta) * A
        g["W_B"][...] += _sum_outer(np.einsum("btdn,btd->btn", g_b4, delta * u), u)
        # softplus'(pre) = sigmoid(pre) = 1 - exp(-softplus(pre)): from delta without the
        # cancellation of 1 + tanh(pre / 2) at very negative pre (float32: 3 % off at -15)
        g_pre = g_delta * -np.expm1(-delta)
        g["W_delta"][...] += _sum_outer(g_pre, u)
        g["b_delta"][...] += g_pre.sum(axis=(0, 1))

    def _generate_kernel(self, x0, out):
        p = self.unflatten()
        c = np.ascontiguousarray
        _generate_selective(
            c(p["W_delta"]),
            c(p["b_delta"]),
            c(_state_matrix(p["log_A"])),
            c(p["W_B"]),
            c(p["W_C"]),
            c(p["W1"]),
            c(p["b1"]),
            c(p["W2"]),
            c(p["b2"]),
            x0,
            out,
        )
