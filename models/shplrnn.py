"""Shallow PLRNN and its clipped variant (Hess, Mikhaeil, Koppe & Durstewitz, ICML 2023).

    shPLRNN:          F(z) = A * z + W1 relu(W2 z + h2) + h1
    clipped shPLRNN:  F(z) = A * z + W1 [relu(W2 z + h2) - relu(W2 z)] + h1

with ``A`` of shape (M,) (a diagonal), ``W1`` (M, L), ``W2`` (L, M), ``h1`` (M,), ``h2``
(L,). The clipped nonlinearity is bounded, so orbits stay bounded when ``max|A| < 1``.
The relu derivative at exactly 0 is 0 everywhere (Jacobians and VJPs), as in the lab's
code; ``relu(NaN)`` is NaN (NaNs are never zeroed) and a hidden unit whose pre-activation
``W2 z + h2`` is ``-inf`` contributes 0. A ``+inf`` pre-activation gives NaN (``inf - inf``
in the clipped variant, ``inf * 0`` in the unclipped one): the state has already overflowed.
A NaN in ``z`` enters every pre-activation (``NaN * w`` is NaN, also for ``w = 0``), and
the derivative of relu there is NaN too: the Jacobian, its diagonal and ``vjp_state`` at
such a state are NaN throughout (the parameter VJP is NaN through ``relu(NaN)``).

Per-step functions (plain Python over explicit arrays; see
:class:`models._plrnn_kernels.StepFunctions`), all taking
``args = model.kernel_args() = (A, W1, W2, h1, h2, clipped)`` first, ``clipped`` an int
(0 or 1):

* ``shplrnn_step(*args, z, out)``
* ``shplrnn_step_jacobian(*args, z, out, jac)``
* ``shplrnn_step_jacobian_diag(*args, z, out, diag)``
* ``shplrnn_vjp_state(*args, z, cot, out)``
* ``shplrnn_vjp_params(*args, z, cot, grad)`` -- accumulates into the flat gradient in the
  order A, W1, W2, h1, h2 (row-major); ``d/dh2`` uses ``1[W2 z + h2 > 0]`` while
  ``d/dW2`` and ``d/dz`` use ``1[W2 z + h2 > 0] - clipped * 1[W2 z > 0]``.

They are bundled (plain and CPU-compiled) as ``ShPLRNN.step_functions`` and
``ShPLRNN.step_functions_jit``; a CUDA module compiles the plain ones with
``numba.cuda.jit(device=True)``.
"""

from typing import ClassVar

import numpy as np
from numba import prange

from models import _shplrnn_lanes
from models._checks import Checks
from models._plrnn_kernels import (
    EVAL_F_DIAG,
    EVAL_F_FULL,
    PiecewiseLinearRNN,
    StepFunctions,
    normalized_positive_definite,
    spectral_norm,
    uniform_fan_in,
)
from parscan._jit import jit, jit_parallel, n_threads

# ---- per-step functions (plain Python; no allocation, no calls) ------------------------
# Branch-free in the activation pattern: relu' enters as a bool factor (``x * (u > 0)``
# keeps the dtype, propagates NaN, and costs less than a mispredicted branch on the CPU or
# a divergent one on a GPU).
# A pre-activation of ``-inf`` would give ``relu = -inf * 0 = NaN``: relu inputs are first
# clamped from below at ``lo``, the dtype's lowest finite value (``lo if x < lo else x``: a
# no-op for every finite x, NaN stays NaN; a 1e5-step float32 free run of ClippedShPLRNN(3, 200)
# measured 0-7 % slower), so a ``-inf`` pre-activation contributes 0 and finite ones give
# bitwise the results of ``x * (x > 0)``.
# ``u > 0`` is False at a NaN ``u``: a derivative computed with it would read a NaN state as
# inactive units, so the Jacobian, its diagonal and ``vjp_state`` end by writing the NaN of
# ``z`` over their output (a check per state entry; NaN-free states keep bitwise their
# results, and the hot loops stay as they were).


def shplrnn_step(A, W1, W2, h1, h2, clipped, z, out):
    """``out = F(z)``; ``z``, ``out`` of shape (M,), not aliased."""
    M = z.shape[0]
    lo = np.finfo(z.dtype).min
    for i in range(M):
        out[i] = A[i] * z[i] + h1[i]
    for l in range(h2.shape[0]):
        s = W2[l, 0] * z[0]
        for j in range(1, M):
            s += W2[l, j] * z[j]
        s = lo if s < lo else s
        u = s + h2[l]
        u = lo if u < lo else u
        phi = u * (u > 0) - s * ((s > 0) & (clipped != 0))
        for i in range(M):
            out[i] += W1[i, l] * phi


def shplrnn_step_jacobian(A, W1, W2, h1, h2, clipped, z, out, jac):
    """``out = F(z)`` (M,), ``jac = dF/dz`` (M, M) (row = output)."""
    M = z.shape[0]
    lo = np.finfo(z.dtype).min
    for i in range(M):
        out[i] = A[i] * z[i] + h1[i]
        for j in range(M):
            jac[i, j] = 0.0
        jac[i, i] = A[i]
    for l in range(h2.shape[0]):
        s = W2[l, 0] * z[0]
        for j in range(1, M):
            s += W2[l, j] * z[j]
        s = lo if s < lo else s
        u = s + h2[l]
        u = lo if u < lo else u
        up = u > 0
        sp = (s > 0) & (clipped != 0)
        phi = u * up - s * sp
        for i in range(M):
            w1 = W1[i, l]
            out[i] += w1 * phi
            w = w1 * up - w1 * sp  # relu' of the hidden unit, in {-1, 0, 1}, times W1
            for j in range(M):
                jac[i, j] += w * W2[l, j]
    for j in range(M):
        if z[j] != z[j]:
            for i in range(M):
                for k in range(M):
                    jac[i, k] = z[j]


def shplrnn_step_jacobian_diag(A, W1, W2, h1, h2, clipped, z, out, diag):
    """``out = F(z)`` (M,), ``diag = diag(dF/dz)`` (M,)."""
    M = z.shape[0]
    lo = np.finfo(z.dtype).min
    for i in range(M):
        out[i] = A[i] * z[i] + h1[i]
        diag[i] = A[i]
    for l in range(h2.shape[0]):
        s = W2[l, 0] * z[0]
        for j in range(1, M):
            s += W2[l, j] * z[j]
        s = lo if s < lo else s
        u = s + h2[l]
        u = lo if u < lo else u
        up = u > 0
        sp = (s > 0) & (clipped != 0)
        phi = u * up - s * sp
        for i in range(M):
            out[i] += W1[i, l] * phi
            w = W1[i, l] * W2[l, i]
            diag[i] += w * up - w * sp
    for j in range(M):
        if z[j] != z[j]:
            for i in range(M):
                diag[i] = z[j]


def shplrnn_vjp_state(A, W1, W2, h1, h2, clipped, z, cot, out):
    """``out = (dF/dz)^T cot`` (M,)."""
    M = z.shape[0]
    for j in range(M):
        out[j] = A[j] * cot[j]
    for l in range(h2.shape[0]):
        s = W2[l, 0] * z[0]
        for j in range(1, M):
            s += W2[l, j] * z[j]
        up = s + h2[l] > 0
        sp = (s > 0) & (clipped != 0)
        a = W1[0, l] * cot[0]
        for i in range(1, M):
            a += W1[i, l] * cot[i]
        g = a * up - a * sp
        for j in range(M):
            out[j] += g * W2[l, j]
    for j in range(M):
        if z[j] != z[j]:
            for i in range(M):
                out[i] = z[j]


def shplrnn_vjp_params(A, W1, W2, h1, h2, clipped, z, cot, grad):
    """``grad[:n_map_params] += (dF/dtheta)^T cot``, blocks A, W1, W2, h1, h2."""
    M = z.shape[0]
    lo = np.finfo(z.dtype).min
    L = h2.shape[0]
    o_w1 = M
    o_w2 = M + M * L
    o_h1 = M + 2 * M * L
    o_h2 = 2 * M + 2 * M * L
    for i in range(M):
        grad[i] += cot[i] * z[i]
        grad[o_h1 + i] += cot[i]
    for l in range(L):
        s = W2[l, 0] * z[0]
        for j in range(1, M):
            s += W2[l, j] * z[j]
        s = lo if s < lo else s
        u = s + h2[l]
        u = lo if u < lo else u
        up = u > 0
        sp = (s > 0) & (clipped != 0)
        phi = u * up - s * sp
        a = W1[0, l] * cot[0]
        for i in range(1, M):
            a += W1[i, l] * cot[i]
        for i in range(M):
            grad[o_w1 + i * L + l] += cot[i] * phi
        ap = a * up
        grad[o_h2 + l] += ap
        g = ap - a * sp
        for j in range(M):
            grad[o_w2 + l * M + j] += g * z[j]


SHPLRNN_STEP_FUNCTIONS = StepFunctions(
    step=shplrnn_step,
    step_jacobian=shplrnn_step_jacobian,
    step_jacobian_diag=shplrnn_step_jacobian_diag,
    vjp_state=shplrnn_vjp_state,
    vjp_params=shplrnn_vjp_params,
)
SHPLRNN_STEP_FUNCTIONS_JIT = StepFunctions(*(jit(fn) for fn in SHPLRNN_STEP_FUNCTIONS))
_step = SHPLRNN_STEP_FUNCTIONS_JIT.step
_step_jacobian = SHPLRNN_STEP_FUNCTIONS_JIT.step_jacobian
_step_jacobian_diag = SHPLRNN_STEP_FUNCTIONS_JIT.step_jacobian_diag

# ---- CPU drivers: one state (below), many states (models._shplrnn_lanes), free run -----

#: Free runs per thread from which they are stepped together in lanes: a block of ``LANES``
#: runs on one thread costs as much as 15-20 runs one by one (:func:`_transposed_run`; measured at
#: M = 3, L = 100 and 200, M = 5, L = 250, float32 / float64), and runs one by one spread
#: over every thread. (PE(20) over a test set steps thousands of runs: 7x faster in lanes.)
_LANE_RUNS_PER_THREAD = 16


@jit
def _eval_item(A, W1, W2, h1, h2, clipped, z, f, j, mode):
    if mode == EVAL_F_FULL:
        _step_jacobian(A, W1, W2, h1, h2, clipped, z, f, j.reshape((z.shape[0], z.shape[0])))
    elif mode == EVAL_F_DIAG:
        _step_jacobian_diag(A, W1, W2, h1, h2, clipped, z, f, j)
    else:
        _step(A, W1, W2, h1, h2, clipped, z, f)


@jit
def _transposed_step(A, W1T, W2T, h1, h2, clipped, z, out, s, phi):
    """``out = F(z)`` as :func:`shplrnn_step` computes it, operation for operation in the
    same order (bitwise equal), with every loop over the L hidden units innermost and
    contiguous (``W1T = W1.T``, ``W2T = W2.T``, C-contiguous; scratch ``s``, ``phi`` of shape
    (L,)), so that LLVM vectorises them: a free run of one state at M = 5, L = 250 (float32)
    steps in 0.70 instead of 1.46 us."""
    M = z.shape[0]
    L = h2.shape[0]
    lo = np.finfo(z.dtype).min
    z0 = z[0]
    for l in range(L):
        s[l] = W2T[0, l] * z0
    for j in range(1, M):
        zj = z[j]
        for l in range(L):
            s[l] += W2T[j, l] * zj
    for l in range(L):
        sl = s[l]
        sl = lo if sl < lo else sl
        u = sl + h2[l]
        u = lo if u < lo else u
        phi[l] = u * (u > 0) - sl * ((sl > 0) & (clipped != 0))
    for i in range(M):
        out[i] = A[i] * z[i] + h1[i]
    for l in range(L):
        p = phi[l]
        for i in range(M):
            out[i] += W1T[l, i] * p


@jit
def _transposed_run(A, W1T, W2T, h1, h2, clipped, z0, out):
    """The free run ``out[t] = F^(t+1)(z0)`` (``out`` (n_steps >= 1, M)) by
    :func:`_transposed_step`, with its scratch."""
    s = np.empty(h2.shape[0], dtype=z0.dtype)
    phi = np.empty(h2.shape[0], dtype=z0.dtype)
    _transposed_step(A, W1T, W2T, h1, h2, clipped, z0, out[0], s, phi)
    for t in range(1, out.shape[0]):
        _transposed_step(A, W1T, W2T, h1, h2, clipped, out[t - 1], out[t], s, phi)


@jit
def _simulate_item(A, W1, W2, h1, h2, clipped, z0, out):
    W1T = np.ascontiguousarray(W1.T)
    W2T = np.ascontiguousarray(W2.T)
    _transposed_run(A, W1T, W2T, h1, h2, clipped, z0, out)


@jit_parallel
def _simulate_kernel(A, W1, W2, h1, h2, clipped, Z0, out):
    W1T = np.ascontiguousarray(W1.T)
    W2T = np.ascontiguousarray(W2.T)
    for b in prange(Z0.shape[0]):
        _transposed_run(A, W1T, W2T, h1, h2, clipped, Z0[b], out[b])


def _simulate_runs(A, W1, W2, h1, h2, clipped, Z0, out):
    """Free runs of the states ``Z0`` (n, M) into ``out`` (n, n_steps, M): a few one by one
    (parallel over the runs), ``16 * threads`` or more in blocks of ``LANES`` stepped together
    (:func:`models._shplrnn_lanes.simulate_kernel`: SIMD across the runs, bitwise the same
    states). Two kernels, so that a process compiles only the one it uses."""
    lanes = Z0.shape[0] >= _LANE_RUNS_PER_THREAD * n_threads()
    kernel = _shplrnn_lanes.simulate_kernel if lanes else _simulate_kernel
    kernel(A, W1, W2, h1, h2, clipped, Z0, out)


# ---- models ---------------------------------------------------------------------------


class _ShallowPLRNNFamily(PiecewiseLinearRNN):
    """Shared code of :class:`ShPLRNN` and :class:`ClippedShPLRNN` (kept as siblings so
    that each one's ``load`` rejects a file of the other)."""

    _CLIPPED: ClassVar[int]
    step_functions = SHPLRNN_STEP_FUNCTIONS
    step_functions_jit = SHPLRNN_STEP_FUNCTIONS_JIT
    _eval_kernel = staticmethod(_shplrnn_lanes.eval_kernel)
    _vjp_kernel = staticmethod(_shplrnn_lanes.vjp_kernel)
    _simulate_kernel = staticmethod(_simulate_runs)
    _eval_item = staticmethod(_eval_item)
    _vjp_chunk = staticmethod(_shplrnn_lanes.vjp_chunk)
    _simulate_item = staticmethod(_simulate_item)

    def _setup_shallow(self, M, L, n_obs, dtype, seed) -> None:
        """The leaf classes' ``__init__`` (theirs, so that argument errors name them)."""
        checks = Checks(type(self).__name__)
        M = checks.integer(M, "M")
        self.L = checks.integer(L, "L")
        self._setup_latent(checks, M, n_obs, dtype, seed)

    def param_spec(self):
        M, L = self.M, self.L
        return [
            ("A", (M,)),
            ("W1", (M, L)),
            ("W2", (L, M)),
            ("h1", (M,)),
            ("h2", (L,)),
            *self._init_map_spec(),
        ]

    def hyperparameters(self) -> dict:
        return {
            "M": self.M,
            "L": self.L,
            "n_obs": self.n_obs,
            "dtype": self.dtype.name,
            "seed": self.seed,
        }

    def init(self, seed: int = 0):
        """Re-initialise in place with the lab's scheme; returns ``self``.

        ``A = diag(normalized_positive_definite(M))`` (entries in (0, 1]); ``W1`` uniform
        ``+-1/sqrt(L)``, ``W2`` uniform ``+-1/sqrt(M)`` (fan-in); ``h1 = 0``; ``h2 = 0``
        for the shPLRNN and uniform ``+-1/sqrt(L)`` for the clipped one (with ``h2 = 0``
        its nonlinearity would vanish); ``L0`` uniform ``+-1/sqrt(N)``. Deterministic in
        ``seed``.
        """
        rng = self._rng(seed)
        M, L = self.M, self.L
        self.params[...] = 0
        self["A"][...] = np.diag(normalized_positive_definite(rng, M))
        self["W1"][...] = uniform_fan_in(rng, (M, L))
        self["W2"][...] = uniform_fan_in(rng, (L, M))
        if self._CLIPPED:
            self["h2"][...] = uniform_fan_in(rng, (L,))
        self._init_L0(rng)
        return self

    def kernel_args(self) -> tuple:
        """``(A, W1, W2, h1, h2, clipped)``: views into ``params`` and an int flag."""
        p = self.unflatten()
        return (p["A"], p["W1"], p["W2"], p["h1"], p["h2"], self._CLIPPED)

    def norm_bound(self) -> float:
        """``max|A| + ||W1||_2 ||W2||_2 >= sup_z ||dF/dz||_2`` (the relu derivatives, and
        their clipped differences, lie in [-1, 1])."""
        A = self["A"].astype(np.float64)
        return float(np.max(np.abs(A)) + spectral_norm(self["W1"]) * spectral_norm(self["W2"]))


class ShPLRNN(_ShallowPLRNNFamily):
    """Shallow PLRNN, ``F(z) = A * z + W1 relu(W2 z + h2) + h1`` (Hess et al., ICML 2023).

    Parameters
    ----------
    M : int
        Latent dimension.
    L : int
        Hidden (relu) layer width.
    n_obs : int, optional
        Observed dimensions N <= M (the first N latents); default M.
    dtype : {"float64", "float32"}
        Parameter and computation dtype; inputs must match it.
    seed : int
        Seed of :meth:`init`, an int >= 0 of at most 4300 digits.

    Notes
    -----
    ``params`` blocks, in order: ``A`` (M,), ``W1`` (M, L), ``W2`` (L, M), ``h1`` (M,),
    ``h2`` (L,), then ``L0`` (M - N, N) when M > N. See the module docstring for the
    per-step functions and :class:`~models.base.LatentRNN` for the batched methods.
    """

    _CLIPPED = 0

    def __init__(self, M: int, L: int, n_obs: int | None = None, *, dtype="float64", seed=0):
        self._setup_shallow(M, L, n_obs, dtype, seed)


class ClippedShPLRNN(_ShallowPLRNNFamily):
    """Clipped shallow PLRNN, ``F(z) = A * z + W1 [relu(W2 z + h2) - relu(W2 z)] + h1``.

    Each hidden unit is a bounded ramp, so orbits are bounded when ``max|A| < 1``
    (Hess et al., ICML 2023). Parameters, blocks and methods as :class:`ShPLRNN`.
    """

    _CLIPPED = 1

    def __init__(self, M: int, L: int, n_obs: int | None = None, *, dtype="float64", seed=0):
        self._setup_shallow(M, L, n_obs, dtype, seed)
