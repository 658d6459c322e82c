"""Almost-linear RNN (Brenner et al., NeurIPS 2024) and the vanilla PLRNN (Koppe et al.,
PLoS Comput. Biol. 2019; Durstewitz, PLoS Comput. Biol. 2017).

    ALRNN:  F(z) = A * z + W Phi(z) + h,  Phi(z)_j = z_j (j < M - P), relu(z_j) (j >= M - P)
    PLRNN:  F(z) = A * z + W relu(z) + h,  diag(W) = 0

with ``A`` of shape (M,) (a diagonal), ``W`` (M, M), ``h`` (M,): only the last ``P`` units
pass through the relu. The PLRNN is the ALRNN with ``P = M`` and a zero diagonal in ``W``
(self-coupling lives in ``A`` alone); the zero diagonal is set by ``init``, required by
``set_params`` and kept by training because the gradient there is masked to zero. The relu
derivative at exactly 0 is 0 everywhere; ``relu(NaN)`` is NaN and ``relu(-inf)`` is 0.
``Phi'(NaN)`` is NaN, for linear units too (NaNs are never zeroed): a NaN ``z_j`` makes
column ``j`` of the Jacobian, and entry ``j`` of its diagonal and of ``vjp_state``, NaN.

Per-step functions (plain Python over explicit arrays; see
:class:`models._plrnn_kernels.StepFunctions`), all taking
``args = model.kernel_args() = (A, W, h, P, zero_diag)`` first, ``P`` and ``zero_diag``
ints:

* ``alrnn_step(*args, z, out)``
* ``alrnn_step_jacobian(*args, z, out, jac)``
* ``alrnn_step_jacobian_diag(*args, z, out, diag)``
* ``alrnn_vjp_state(*args, z, cot, out)``
* ``alrnn_vjp_params(*args, z, cot, grad)`` -- accumulates into the flat gradient in the
  order A, W (row-major), h; skips ``diag(W)`` when ``zero_diag``.

They are bundled (plain and CPU-compiled) as ``ALRNN.step_functions`` and
``ALRNN.step_functions_jit``.
"""

from abc import abstractmethod

import numpy as np
from numba import prange

from models._checks import Checks
from models._plrnn_kernels import (
    EVAL_F_DIAG,
    EVAL_F_FULL,
    PiecewiseLinearRNN,
    StepFunctions,
    normalized_positive_definite,
    spectral_norm,
)
from parscan._jit import jit, jit_parallel

# ---- per-step functions (plain Python; no allocation, no calls) ------------------------
# A pre-activation of ``-inf`` would give ``relu = -inf * 0 = NaN``: relu inputs are first
# clamped from below at ``lo``, the dtype's lowest finite value (``lo if x < lo else x``: a
# no-op for every finite x, NaN stays NaN; a 1e5-step float32 free run of ClippedShPLRNN(3, 200)
# measured 0-7 % slower), so a ``-inf`` pre-activation contributes 0 and finite ones give
# bitwise the results of ``x * (x > 0)``. The derivative ``Phi'(z_j)`` enters as the bool
# factor ``j < M - P or z_j > 0``, replaced by ``z_j`` itself where that is NaN (one select
# per unit; bitwise the bool factor's results elsewhere). The diagonal and ``vjp_state``
# select on their result: selecting the factor before the loop over the outputs measured
# 8 % slower there (M = 20, P = 4), this 1 %.


def alrnn_step(A, W, h, P, zero_diag, z, out):
    """``out = F(z)``; ``z``, ``out`` of shape (M,), not aliased."""
    M = z.shape[0]
    lo = np.finfo(z.dtype).min
    for i in range(M):
        out[i] = A[i] * z[i] + h[i]
    for j in range(M):
        zj = z[j]
        phi = zj if j < M - P else (lo if zj < lo else zj) * (zj > 0)
        for i in range(M):
            out[i] += W[i, j] * phi


def alrnn_step_jacobian(A, W, h, P, zero_diag, z, out, jac):
    """``out = F(z)`` (M,), ``jac = dF/dz`` (M, M) (row = output)."""
    M = z.shape[0]
    lo = np.finfo(z.dtype).min
    for i in range(M):
        out[i] = A[i] * z[i] + h[i]
    for j in range(M):
        zj = z[j]
        on = (j < M - P or zj > 0) if zj == zj else zj
        phi = zj if j < M - P else (lo if zj < lo else zj) * (zj > 0)
        for i in range(M):
            out[i] += W[i, j] * phi
            jac[i, j] = W[i, j] * on
        jac[j, j] += A[j]


def alrnn_step_jacobian_diag(A, W, h, P, zero_diag, z, out, diag):
    """``out = F(z)`` (M,), ``diag = diag(dF/dz)`` (M,)."""
    M = z.shape[0]
    lo = np.finfo(z.dtype).min
    for i in range(M):
        out[i] = A[i] * z[i] + h[i]
    for j in range(M):
        on = j < M - P or z[j] > 0
        zj = z[j]
        phi = zj if j < M - P else (lo if zj < lo else zj) * (zj > 0)
        for i in range(M):
            out[i] += W[i, j] * phi
        d = A[j] + W[j, j] * on
        diag[j] = d if zj == zj else zj


def alrnn_vjp_state(A, W, h, P, zero_diag, z, cot, out):
    """``out = (dF/dz)^T cot`` (M,)."""
    M = z.shape[0]
    for j in range(M):
        acc = W[0, j] * cot[0]
        for i in range(1, M):
            acc += W[i, j] * cot[i]
        zj = z[j]
        g = A[j] * cot[j] + acc * (j < M - P or zj > 0)
        out[j] = g if zj == zj else zj


def alrnn_vjp_params(A, W, h, P, zero_diag, z, cot, grad):
    """``grad[:n_map_params] += (dF/dtheta)^T cot``, blocks A, W, h."""
    M = z.shape[0]
    lo = np.finfo(z.dtype).min
    o_h = M + M * M
    for i in range(M):
        grad[i] += cot[i] * z[i]
        grad[o_h + i] += cot[i]
    for j in range(M):
        zj = z[j]
        phi = zj if j < M - P else (lo if zj < lo else zj) * (zj > 0)
        for i in range(M):
            if i != j or zero_diag == 0:  # a held diagonal gets 0, also for a NaN/inf state
                grad[M + i * M + j] += cot[i] * phi


ALRNN_STEP_FUNCTIONS = StepFunctions(
    step=alrnn_step,
    step_jacobian=alrnn_step_jacobian,
    step_jacobian_diag=alrnn_step_jacobian_diag,
    vjp_state=alrnn_vjp_state,
    vjp_params=alrnn_vjp_params,
)
ALRNN_STEP_FUNCTIONS_JIT = StepFunctions(*(jit(fn) for fn in ALRNN_STEP_FUNCTIONS))
_step = ALRNN_STEP_FUNCTIONS_JIT.step
_step_jacobian = ALRNN_STEP_FUNCTIONS_JIT.step_jacobian
_step_jacobian_diag = ALRNN_STEP_FUNCTIONS_JIT.step_jacobian_diag
_vjp_params = ALRNN_STEP_FUNCTIONS_JIT.vjp_params

# ---- CPU drivers (prange over chunks of items; bodies call jitted per-item helpers) -----

#: Evaluation launches are split into at most this many chunks of at least this many states
#: (one scratch allocation per chunk).
_MAX_EVAL_CHUNKS, _MIN_EVAL_CHUNK = 64, 32


@jit
def _eval_item(A, W, h, P, zero_diag, z, f, j, mode):
    if mode == EVAL_F_FULL:
        _step_jacobian(A, W, h, P, zero_diag, z, f, j.reshape((z.shape[0], z.shape[0])))
    elif mode == EVAL_F_DIAG:
        _step_jacobian_diag(A, W, h, P, zero_diag, z, f, j)
    else:
        _step(A, W, h, P, zero_diag, z, f)


@jit
def activation_row(Z, p, n_linear, phi, on):
    """``phi = Phi(Z[p])`` and its derivative pattern ``on`` (1 for the ``n_linear`` linear
    units and for active relus, NaN at a NaN state entry), both (M,). Indexes ``Z`` (n, M)
    directly: a row view per state would cost a reference-count pair."""
    lo = np.finfo(Z.dtype).min
    for k in range(phi.shape[0]):
        zk = Z[p, k]
        linear = k < n_linear
        on[k] = (linear | (zk > 0)) if zk == zk else zk
        phi[k] = zk if linear else (lo if zk < lo else zk) * (zk > 0)


@jit
def _step_jacobian_rows(A, W, h, P, Z, F, J, p, phi, on):
    """``F[p] = F(Z[p])`` and ``J[p]`` = its Jacobian flattened row-major, walking ``W`` and
    ``J[p]`` along rows (the per-step function walks columns; this is 2-3x faster at M = 20
    and performs the same operations in the same order, so the results are bitwise equal).
    ``phi, on`` are (M,) scratch."""
    M = Z.shape[1]
    activation_row(Z, p, M - P, phi, on)
    for i in range(M):
        acc = A[i] * Z[p, i] + h[i]
        for k in range(M):
            acc += W[i, k] * phi[k]
        F[p, i] = acc
        for k in range(M):
            J[p, i * M + k] = W[i, k] * on[k]
        J[p, i * M + i] += A[i]


@jit
def _eval_range(A, W, h, P, zero_diag, Z, F, J, mode, lo, hi):
    M = Z.shape[1]
    phi = np.empty(M, Z.dtype)
    on = np.empty(M, Z.dtype)
    for p in range(lo, hi):
        if mode == EVAL_F_FULL:
            _step_jacobian_rows(A, W, h, P, Z, F, J, p, phi, on)
        else:
            _eval_item(A, W, h, P, zero_diag, Z[p], F[p], J[p], mode)


@jit_parallel
def _eval_kernel(A, W, h, P, zero_diag, Z, F, J, mode):
    n = Z.shape[0]
    n_chunks = min(_MAX_EVAL_CHUNKS, max(1, n // _MIN_EVAL_CHUNK))
    for c in prange(n_chunks):
        _eval_range(
            A, W, h, P, zero_diag, Z, F, J, mode, c * n // n_chunks, (c + 1) * n // n_chunks
        )


@jit
def _vjp_chunk(A, W, h, P, zero_diag, Z, C, start, stop, g):
    for p in range(start, stop):
        _vjp_params(A, W, h, P, zero_diag, Z[p], C[p], g)


@jit_parallel
def _vjp_kernel(A, W, h, P, zero_diag, Z, C, G):
    n = Z.shape[0]
    n_chunks = G.shape[0]
    for c in prange(n_chunks):
        start = c * n // n_chunks
        stop = (c + 1) * n // n_chunks
        _vjp_chunk(A, W, h, P, zero_diag, Z, C, start, stop, G[c])


@jit
def _run(A, W, h, P, zero_diag, z0, out):
    """The free run ``out[t] = F^(t+1)(z0)`` (``out`` (n_steps >= 1, M)) by the per-step
    function, given ``W`` in Fortran order: its loop over the outputs then reads a column of
    ``W`` contiguously and LLVM vectorises it (M = 20, P = 4: 0.49 instead of 1.5 us per step
    on one thread, float32 and float64), the same operations in the same order (bitwise)."""
    _step(A, W, h, P, zero_diag, z0, out[0])
    for t in range(1, out.shape[0]):
        _step(A, W, h, P, zero_diag, out[t - 1], out[t])


@jit
def _simulate_item(A, W, h, P, zero_diag, z0, out):
    _run(A, np.asfortranarray(W), h, P, zero_diag, z0, out)


@jit_parallel
def _simulate_kernel(A, W, h, P, zero_diag, Z0, out):
    WF = np.asfortranarray(W)
    for b in prange(Z0.shape[0]):
        _run(A, WF, h, P, zero_diag, Z0[b], out[b])


# ---- models ---------------------------------------------------------------------------


class _ALRNNFamily(PiecewiseLinearRNN):
    """Shared code of :class:`ALRNN` and :class:`PLRNN` (kept as siblings so that each
    one's ``load`` rejects a file of the other)."""

    step_functions = ALRNN_STEP_FUNCTIONS
    step_functions_jit = ALRNN_STEP_FUNCTIONS_JIT
    _eval_kernel = staticmethod(_eval_kernel)
    _vjp_kernel = staticmethod(_vjp_kernel)
    _simulate_kernel = staticmethod(_simulate_kernel)
    _eval_item = staticmethod(_eval_item)
    _vjp_chunk = staticmethod(_vjp_chunk)
    _simulate_item = staticmethod(_simulate_item)

    P: int
    _ZERO_DIAG: int

    def param_spec(self):
        M = self.M
        return [("A", (M,)), ("W", (M, M)), ("h", (M,)), *self._init_map_spec()]

    def init(self, seed: int = 0):
        """Re-initialise in place with the lab's scheme (see the class docstring); returns
        ``self``. Deterministic in ``seed``."""
        rng = self._rng(seed)
        self.params[...] = 0
        K = normalized_positive_definite(rng, self.M)
        self["A"][...] = np.diag(K)
        self["W"][...] = self._init_W(rng, K)
        self._init_L0(rng)
        return self

    @abstractmethod
    def _init_W(self, rng: np.random.Generator, K: np.ndarray) -> np.ndarray:
        """The initial ``W`` (M, M), given the matrix ``K`` whose diagonal became ``A``."""

    def kernel_args(self) -> tuple:
        """``(A, W, h, P, zero_diag)``: views into ``params`` and two int flags."""
        p = self.unflatten()
        return (p["A"], p["W"], p["h"], self.P, self._ZERO_DIAG)

    def norm_bound(self) -> float:
        """``max|A| + ||W||_2 >= sup_z ||dF/dz||_2`` (the Jacobian is
        ``diag(A) + W diag(Phi')`` with ``Phi'`` in {0, 1})."""
        return float(np.max(np.abs(self["A"].astype(np.float64))) + spectral_norm(self["W"]))


class ALRNN(_ALRNNFamily):
    """Almost-linear RNN, ``F(z) = A * z + W Phi(z) + h`` (Brenner et al., NeurIPS 2024).

    ``Phi`` is the identity on the first ``M - P`` units and relu on the last ``P``.

    :meth:`init` follows the lab's AL-RNN code (DurstewitzLab/ALRNN-DSR,
    ``alrnn_python/AL-RNN_tutorial.ipynb``): ``A`` is the diagonal of
    :func:`~models._plrnn_kernels.normalized_positive_definite` (entries in (0, 1]), ``W`` is
    Gaussian with standard deviation 0.01, ``h = 0``; ``L0`` is uniform ``+-1/sqrt(N)``. The
    map starts close to the diagonal ``A``, so free runs of fresh models stay bounded for
    almost every seed (an ``A`` entry within about 0.01 of 1 can still grow slowly).

    Parameters
    ----------
    M : int
        Latent dimension.
    P : int
        Number of relu units, ``0 <= P <= M`` (``P = 0`` is a linear map).
    n_obs : int, optional
        Observed dimensions N <= M (the first N latents); default M.
    dtype : {"float64", "float32"}
        Parameter and computation dtype; inputs must match it.
    seed : int
        Seed of :meth:`init`, an int >= 0 of at most 4300 digits.

    Notes
    -----
    ``params`` blocks, in order: ``A`` (M,), ``W`` (M, M), ``h`` (M,), then ``L0``
    (M - N, N) when M > N. See the module docstring for the per-step functions.
    """

    _ZERO_DIAG = 0

    def _init_W(self, rng, K):
        return 0.01 * rng.standard_normal((self.M, self.M))

    def __init__(self, M: int, P: int, n_obs: int | None = None, *, dtype="float64", seed=0):
        checks = Checks(type(self).__name__)
        M = checks.integer(M, "M")
        self.P = checks.integer(P, "P", minimum=0)
        if checks.ok("M", "P") and self.P > M:
            checks.add(f"the number of relu units P must be <= M; got P={self.P}, M={M}.")
        self._setup_latent(checks, M, n_obs, dtype, seed)

    def hyperparameters(self) -> dict:
        return {
            "M": self.M,
            "P": self.P,
            "n_obs": self.n_obs,
            "dtype": self.dtype.name,
            "seed": self.seed,
        }


class PLRNN(_ALRNNFamily):
    """Vanilla PLRNN, ``F(z) = A * z + W relu(z) + h`` with ``diag(W) = 0`` (Koppe et al.,
    2019; Durstewitz, 2017).

    The zero diagonal of ``W`` is an invariant: :meth:`init` sets it, :meth:`set_params`
    (and :meth:`astype`, :meth:`save`, :func:`models.load`) rejects a vector that breaks it,
    and :meth:`param_vjp` returns zero there, so gradient steps keep it. Writing into
    ``params`` directly bypasses the check.

    :meth:`init` follows the lab's ``initialize_A_W_h`` (DurstewitzLab/GTF-shPLRNN,
    ``src/models/initialization.jl``): with ``K`` from
    :func:`~models._plrnn_kernels.normalized_positive_definite` (symmetric positive definite,
    largest eigenvalue 1), ``A = diag(K)`` and ``W`` = the off-diagonal part of ``K``, so
    ``A + W = K`` has spectral radius 1; ``h = 0``; ``L0`` is uniform ``+-1/sqrt(N)``.

    Parameters
    ----------
    M : int
        Latent dimension (all units pass through the relu).
    n_obs : int, optional
        Observed dimensions N <= M (the first N latents); default M.
    dtype : {"float64", "float32"}
        Parameter and computation dtype; inputs must match it.
    seed : int
        Seed of :meth:`init`, an int >= 0 of at most 4300 digits.

    Notes
    -----
    ``params`` blocks, in order: ``A`` (M,), ``W`` (M, M), ``h`` (M,), then ``L0``
    (M - N, N) when M > N.
    """

    _ZERO_DIAG = 1

    def _init_W(self, rng, K):
        return K - np.diag(np.diag(K))

    def __init__(self, M: int, n_obs: int | None = None, *, dtype="float64", seed=0):
        checks = Checks(type(self).__name__)
        self.P = checks.integer(M, "M")
        self._setup_latent(checks, self.P, n_obs, dtype, seed)

    def hyperparameters(self) -> dict:
        return {"M": self.M, "n_obs": self.n_obs, "dtype": self.dtype.name, "seed": self.seed}

    def _check_param_values(self, params: np.ndarray, where: str) -> None:
        """``diag(W)`` must be zero."""
        diag = np.diagonal(self.unflatten(params)["W"])
        if np.any(diag != 0):
            raise ValueError(
                f"{where}: the diagonal of W must be zero (self-coupling is A's role); got "
                f"diag(W)={diag}. Zero it, or use an ALRNN with P = M for a full W."
            )
