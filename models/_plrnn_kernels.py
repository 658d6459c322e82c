"""Shared machinery of the piecewise-linear RNN families (shPLRNN, ALRNN / PLRNN).

Each family module (``models.shplrnn``, ``models.alrnn``) defines

* plain per-step functions over explicit arrays (no allocation, no calls to other
  functions, scalar loops only) -- compiled for the CPU with :func:`parscan._jit.jit` and
  usable from CUDA through ``numba.cuda.jit(device=True)(fn)``;
* three ``prange`` drivers: evaluation of ``F`` and ``J`` at many states, the parameter VJP
  summed over positions, and the sequential free run. They call the per-step functions
  state by state (ALRNN / PLRNN; their full Jacobian is evaluated by a row-wise variant of
  the per-step function with bitwise the same results), or, for the shallow PLRNNs, whose
  hidden layer is wide, SIMD kernels over blocks of states (:mod:`models._shplrnn_lanes`)
  with the same results.

The drivers are written per family rather than once with the per-step functions passed
as arguments: Numba cannot cache a kernel that takes (or closes over) a jitted function
argument, and cold parfor compiles cost seconds each.

This module holds what the families share: the :class:`StepFunctions` bundle, the lab's
initialisers and :class:`PiecewiseLinearRNN`, which validates inputs, flattens leading
dimensions and calls the family's drivers.

A relu whose pre-activation is ``-inf`` gives 0 (``x * (x > 0)`` alone would give
``-inf * 0 = NaN``): the per-step functions and drivers clamp relu inputs from below at the
dtype's lowest finite value (``lo = np.finfo(dtype).min``, ``lo if x < lo else x``), a no-op
for finite inputs, whose results stay bitwise those of ``x * (x > 0)``. A NaN
pre-activation stays NaN, and so do the derivatives at a state with a NaN (``u > 0`` alone
would read it as an inactive unit): the Jacobian, its diagonal and ``vjp_state`` are NaN
where the NaN reaches them -- everywhere for the shPLRNNs, whose hidden units all read the
whole state, in the NaN entry's column for the ALRNN / PLRNN. NaN-free states keep bitwise
their results.
"""

import math
from abc import abstractmethod
from typing import Any, ClassVar, NamedTuple

import numpy as np

from models._checks import Checks, as_array, check_seed, not_numeric
from models.base import LatentRNN, allocated, astype_hint, new_run
from parscan.scan import cuda_unavailable, is_device_array

#: ``mode`` argument of the evaluation drivers.
EVAL_F, EVAL_F_DIAG, EVAL_F_FULL = 0, 1, 2

#: ``param_vjp`` splits the positions into ``clip(n // _MIN_CHUNK, 1, _MAX_CHUNKS)`` chunks,
#: independent of the thread count so that the summation order (hence the result, to the
#: last bit) does not depend on it.
_MIN_CHUNK, _MAX_CHUNKS = 1024, 64


class StepFunctions(NamedTuple):
    """The per-step functions of a family, all taking ``(*model.kernel_args(), ...)``.

    ``z``, ``out``, ``cot`` have shape ``(M,)``; ``jac`` ``(M, M)``; ``grad`` is a flat
    vector of at least ``n_map_params`` entries (the parameters before ``L0``, in
    ``param_spec`` order). Outputs must not alias inputs.

    Attributes
    ----------
    step : ``step(*args, z, out)``
        ``out = F(z)``.
    step_jacobian : ``step_jacobian(*args, z, out, jac)``
        ``out = F(z)`` and ``jac = dF/dz (z)`` (row = output).
    step_jacobian_diag : ``step_jacobian_diag(*args, z, out, diag)``
        ``out = F(z)`` and ``diag = diag(dF/dz (z))``.
    vjp_state : ``vjp_state(*args, z, cot, out)``
        ``out = (dF/dz (z))^T cot``.
    vjp_params : ``vjp_params(*args, z, cot, grad)``
        ``grad += (dF/dtheta (z))^T cot`` (accumulates; ``grad`` may be float64 for a
        float32 model).
    """

    step: Any
    step_jacobian: Any
    step_jacobian_diag: Any
    vjp_state: Any
    vjp_params: Any


def normalized_positive_definite(rng: np.random.Generator, M: int) -> np.ndarray:
    """``K / lambda_max(K)`` with ``K = R^T R / M + I``, ``R`` standard normal ``(M, M)``.

    The recurrent initialisation of Talathi & Vartak (2016), arXiv:1511.03771, which the
    Durstewitz lab uses for its PLRNNs (``normalized_positive_definite`` and
    ``initialize_A_W_h`` in DurstewitzLab/GTF-shPLRNN, ``src/models/initialization.jl``): a
    symmetric positive-definite matrix with largest eigenvalue 1, so ``diag`` lies in
    ``(0, 1]``. Its diagonal initialises ``A`` of every family, its off-diagonal ``W`` of the
    vanilla PLRNN.
    """
    R = rng.standard_normal((M, M))
    K = R.T @ R / M + np.eye(M)
    return K / np.max(np.abs(np.linalg.eigvalsh(K)))


def uniform_fan_in(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform on ``[-1/sqrt(fan_in), 1/sqrt(fan_in)]``, ``fan_in = shape[-1]`` (the lab's
    ``uniform_init``)."""
    r = 1.0 / np.sqrt(shape[-1])
    return rng.uniform(-r, r, size=shape)


def spectral_norm(w: np.ndarray) -> float:
    """``||w||_2``, the largest singular value of matrix ``w``, in float64; NaN when ``w`` holds
    a NaN and inf when it holds an inf (LAPACK's SVD does not converge on them), so that
    ``norm_bound`` reports non-finite parameters as its value, as ``gtf_alpha`` expects."""
    w = np.asarray(w, dtype=np.float64)
    if not np.isfinite(w).all():
        return math.nan if np.isnan(w).any() else math.inf
    return float(np.linalg.norm(w, 2))


def _jacobian_tail(mode: int, M: int) -> tuple[int, ...]:
    """Shape of the Jacobian part of one position in evaluation ``mode``."""
    return {EVAL_F: (0,), EVAL_F_DIAG: (M,), EVAL_F_FULL: (M, M)}[mode]


def check_out_pair(out, where: str) -> tuple:
    """``out`` as the pair ``(f_out, j_out)``, else ``TypeError`` naming ``where``."""
    if not (isinstance(out, tuple | list) and len(out) == 2):
        raise TypeError(
            f"{where}: `out` must be a pair (f_out, j_out) or None; got {type(out).__name__}."
        )
    return out[0], out[1]


class PiecewiseLinearRNN(LatentRNN):
    """Common implementation of the :class:`~models.base.LatentRNN` contract.

    A family subclass provides :meth:`kernel_args`, :meth:`norm_bound`, :meth:`init`,
    :meth:`param_spec`, :meth:`hyperparameters` and the class attributes below.

    Attributes
    ----------
    step_functions : StepFunctions
        The plain (uncompiled) per-step functions of the family, for
        ``numba.cuda.jit(device=True)`` and for fused sequential kernels.
    step_functions_jit : StepFunctions
        The same, compiled for the CPU with the project jit policy.
    """

    step_functions: ClassVar[StepFunctions]
    step_functions_jit: ClassVar[StepFunctions]
    #: Optional capability read by ``parscan.deer_solve``: ``step_and_jacobian`` accepts
    #: ``backend="cuda"`` (evaluation on the GPU, :mod:`models._cuda_eval`).
    supports_cuda_eval: ClassVar[bool] = True
    # Family drivers (jitted, or a Python function choosing among jitted kernels; see the
    # family module), called as
    #   _eval_kernel(*args, Z (n, M), F (n, M), J (n, K), mode)   K = 0, M or M*M
    #   _vjp_kernel(*args, Z (n, M), C (n, M), G (n_chunks, n_map_params) float64)
    #   _simulate_kernel(*args, Z0 (n, M), out (n, n_steps, M))
    # and their serial per-item bodies, called directly when there is a single item (a
    # parallel launch costs more than the work there):
    #   _eval_item(*args, z, f, j, mode), _vjp_chunk(*args, Z, C, start, stop, g),
    #   _simulate_item(*args, z0, out (n_steps, M))
    _eval_kernel: ClassVar[Any]
    _vjp_kernel: ClassVar[Any]
    _simulate_kernel: ClassVar[Any]
    _eval_item: ClassVar[Any]
    _vjp_chunk: ClassVar[Any]
    _simulate_item: ClassVar[Any]

    def _setup_latent(self, checks: Checks, M, n_obs, dtype, seed) -> None:
        """The end of a latent model's constructor: ``M`` was checked into ``checks`` by the
        caller; add the problems of ``n_obs``, ``dtype`` and ``seed``, then
        :meth:`_setup_checked`."""
        self.M = M
        self.n_obs = M if n_obs is None else checks.integer(n_obs, "n_obs")
        if checks.ok("M", "n_obs") and self.n_obs > M:
            checks.add(
                f"n_obs must be <= M (the observations are the first n_obs latents); got "
                f"n_obs={self.n_obs}, M={M}. Increase M or reduce n_obs."
            )
        self._setup_checked(checks, dtype, seed)

    @abstractmethod
    def kernel_args(self) -> tuple:
        """The leading arguments of every per-step function and driver: views into
        ``params`` (C-contiguous, model dtype) followed by integer flags."""

    @property
    def n_map_params(self) -> int:
        """Number of parameters of the map ``F`` (all blocks before ``L0``)."""
        return self._offsets["L0"][0] if "L0" in self._offsets else self.n_params

    def _rng(self, seed) -> np.random.Generator:
        self.seed = check_seed(seed, f"{type(self).__name__}.init")
        return np.random.default_rng(self.seed)

    def _init_L0(self, rng: np.random.Generator) -> None:
        if self.M > self.n_obs:
            self["L0"][...] = uniform_fan_in(rng, (self.M - self.n_obs, self.n_obs))

    # ---- input validation -------------------------------------------------------------

    def _states(self, z, method: str, name: str = "z") -> tuple[np.ndarray, np.ndarray]:
        """``z`` (array_like on the host; a list is converted to the model dtype, an array
        of another dtype refused: :func:`models._checks.as_array`) validated, and as a
        C-contiguous ``(n, M)`` array (a view if possible): ``(z, Z)``. Errors name
        ``method``."""
        where = f"{type(self).__name__}.{method}"
        if is_device_array(z):
            raise TypeError(
                f"{where}: `{name}` is a device array, but this call computes on the host "
                f"(only step_and_jacobian and param_vjp take device arrays, and param_vjp "
                f"needs both arguments on the device). Pass a host array "
                f"({name}.copy_to_host()) or keep every array argument on the device."
            )
        given, z = z, as_array(z, f"`{name}`", where, self.dtype)
        not_numeric(given, z, where, f"`{name}`")
        if z.ndim < 1 or z.shape[-1] != self.M:
            raise ValueError(
                f"{where}: `{name}` must have shape (..., {self.M}) (M={self.M}); got "
                f"{name}.shape={z.shape}."
            )
        if z.dtype != self.dtype:
            raise TypeError(
                f"{where}: `{name}` must have the model dtype {self.dtype}; got {z.dtype}. "
                f"Use np.asarray({name}, dtype=np.{self.dtype}){astype_hint(z.dtype)}."
            )
        flat = z
        if not z.flags.c_contiguous:  # a copy: checked (a contiguous z allocates nothing)
            n_bytes = z.size * self.dtype.itemsize
            flat = allocated(lambda: np.ascontiguousarray(z), n_bytes, where, f"`{name}`'s states")
        return z, flat.reshape(-1, self.M)

    def _check_out(self, arr, shape: tuple, where: str, name: str) -> np.ndarray:
        """``arr`` if it is a writeable C-contiguous host array of ``shape`` and the model
        dtype: ``TypeError`` for another kind or dtype, ``ValueError`` for the rest."""
        fix = f"Allocate it with np.empty({shape}, dtype=np.{self.dtype}) or pass out=None."
        if not isinstance(arr, np.ndarray):
            raise TypeError(
                f"{where}: `{name}` must be a numpy array like `z` (host in, host out); got "
                f"{type(arr).__name__}. {fix}"
            )
        if arr.dtype != self.dtype:
            raise TypeError(
                f"{where}: `{name}` must have the model dtype {self.dtype}; got {arr.dtype}. {fix}"
            )
        problems = [f"has shape {arr.shape}"] if arr.shape != shape else []
        problems += [] if arr.flags.c_contiguous else ["is not C-contiguous"]
        problems += [] if arr.flags.writeable else ["is not writeable"]
        if problems:
            raise ValueError(
                f"{where}: `{name}` must be a writeable C-contiguous array of shape {shape}, "
                f"but it {' and '.join(problems)}. {fix}"
            )
        return arr

    def _eval_arrays(self, z, mode: int, out, method: str):
        """Validated host input and outputs of an evaluation in ``mode``: ``(Z, F, J)`` with
        ``Z`` the states as ``(n, M)``, ``F`` of ``z``'s shape and ``J`` of shape
        ``(*lead, *tail)`` (tail ``(0,)``, ``(M,)`` or ``(M, M)``): ``out``'s arrays after
        the checks of :meth:`step_and_jacobian`, or new ones."""
        where = f"{type(self).__name__}.{method}"
        z, Z = self._states(z, method)
        j_shape = (*z.shape[:-1], *_jacobian_tail(mode, self.M))
        if out is None:
            n_bytes = (z.size + math.prod(j_shape)) * self.dtype.itemsize
            F, J = allocated(
                lambda: (np.empty(z.shape, self.dtype), np.empty(j_shape, self.dtype)),
                n_bytes,
                where,
                "the states' steps and Jacobians",
            )
            return Z, F, J
        f_out, j_out = check_out_pair(out, where)
        F = self._check_out(f_out, z.shape, where, "out[0]")
        J = self._check_out(j_out, j_shape, where, "out[1]")
        if np.may_share_memory(F, z) or np.may_share_memory(J, z):
            raise ValueError(f"{where}: `out` arrays must not overlap `z`.")
        if np.may_share_memory(F, J):
            raise ValueError(
                f"{where}: `out[0]` and `out[1]` must not overlap each other; pass two "
                f"separate arrays."
            )
        return Z, F, J

    # ---- the contract -----------------------------------------------------------------

    def _evaluate(self, z, mode: int, out, method: str):
        Z, F, J = self._eval_arrays(z, mode, out, method)
        n, M = Z.shape
        F2, J2 = F.reshape(n, M), J.reshape(n, math.prod(_jacobian_tail(mode, M)))
        if n == 1:
            self._eval_item(*self.kernel_args(), Z[0], F2[0], J2[0], mode)
        else:
            self._eval_kernel(*self.kernel_args(), Z, F2, J2, mode)
        return F, J

    def step(self, z: np.ndarray) -> np.ndarray:
        """One step of the map, ``F(z)``.

        Parameters
        ----------
        z : array_like, shape (..., M)
            States, of the model dtype.

        Returns
        -------
        ndarray, shape (..., M)
        """
        return self._evaluate(z, EVAL_F, None, "step")[0]

    def jacobian(self, z: np.ndarray) -> np.ndarray:
        """``dF/dz`` at ``z``: ``(..., M) -> (..., M, M)``, row index = output component.

        The relu derivative at exactly 0 is taken as 0 (as in the lab's code). At a state
        with a NaN, the entries the NaN reaches are NaN: all of them for the shPLRNNs, the
        NaN entry's column for the ALRNN / PLRNN.
        """
        return self._evaluate(z, EVAL_F_FULL, None, "jacobian")[1]

    def jacobian_diag(self, z: np.ndarray) -> np.ndarray:
        """Diagonal of ``dF/dz`` at ``z``: ``(..., M) -> (..., M)``."""
        return self._evaluate(z, EVAL_F_DIAG, None, "jacobian_diag")[1]

    def step_and_jacobian(self, z: np.ndarray, diag: bool = False, out=None, backend="auto"):
        """``F(z)`` and its Jacobian in one parallel pass over all leading positions.

        Parameters
        ----------
        z : array_like or device array, shape (..., M)
            States, of the model dtype. Device arrays (numba device arrays or any
            ``__cuda_array_interface__`` object, C-contiguous) are evaluated on the GPU.
        diag : bool
            Return only the Jacobian diagonal (quasi-DEER). A ``bool`` (NumPy bools too).
        out : (ndarray, ndarray) or None
            Caller arrays ``(f_out, j_out)`` of shapes ``(..., M)`` and ``(..., M, M)``
            (``(..., M)`` with ``diag=True``), C-contiguous, writeable, model dtype, on the
            same side (host / device) as ``z``, overlapping neither ``z`` nor each other;
            they are filled and returned.
        backend : {"auto", "cpu", "cuda"}
            ``"auto"``: the ``prange`` kernel for host arrays, the CUDA kernel
            (:mod:`models._cuda_eval`) for device arrays. ``"cpu"``: host arrays only.
            ``"cuda"``: the CUDA kernel also for host arrays (copied to the GPU and back);
            refused with ``ValueError`` where numba.cuda finds no GPU (and no simulator).

        Returns
        -------
        F : ndarray or device array, shape (..., M)
        J : ndarray or device array, shape (..., M, M), or (..., M) with ``diag=True``
            Device arrays exactly when ``z`` is one.
        """
        where = f"{type(self).__name__}.step_and_jacobian"
        with Checks(where) as checks:
            if not isinstance(backend, str) or backend not in ("auto", "cpu", "cuda"):
                checks.add(f"backend must be 'auto', 'cpu' or 'cuda'; got {backend!r}.")
            diag = checks.boolean(diag, "`diag`")
        on_device = is_device_array(z)
        if on_device and backend == "cpu":
            raise ValueError(
                f"{where}: device arrays need backend 'cuda' or 'auto'; got backend='cpu'. Copy "
                "`z` to the host first (z.copy_to_host())."
            )
        if on_device or backend == "cuda":
            unavailable = cuda_unavailable()  # may import numba.cuda
            if unavailable:
                raise ValueError(f"{where}: {unavailable}")
            from models import _cuda_eval  # lazy: numba.cuda only when asked for

            return _cuda_eval.step_and_jacobian_cuda(self, z, diag, out)
        return self._evaluate(z, EVAL_F_DIAG if diag else EVAL_F_FULL, out, "step_and_jacobian")

    def param_vjp(self, z_prev: np.ndarray, cotangent: np.ndarray) -> np.ndarray:
        """``sum over ... of (dF/dtheta at z_prev)^T cotangent``.

        Parallel over chunks of positions; each chunk accumulates in float64 into its own
        row and the rows are summed at the end: no races, and the result does not depend on
        the number of threads. Device arrays run the same per-step function on the GPU
        (:func:`models._cuda_eval.param_vjp_cuda`, one float64 column per thread).

        Parameters
        ----------
        z_prev : array_like or device array, shape (..., M)
            States at which ``F`` is evaluated.
        cotangent : array_like or device array, shape (..., M)
            Cotangents of ``F(z_prev)``, same shape, on the same side as ``z_prev``.

        Returns
        -------
        ndarray, shape (n_params,)
            Model dtype, on the host also for device input; zero in the ``L0`` block.
        """
        if is_device_array(z_prev):
            from models import _cuda_eval  # lazy: numba.cuda only when asked for

            return _cuda_eval.param_vjp_cuda(self, z_prev, cotangent)
        with Checks(f"{type(self).__name__}.param_vjp") as checks:
            with checks.caught("z_prev"):
                z_prev, Z = self._states(z_prev, "param_vjp", "z_prev")
            with checks.caught("cotangent"):
                cotangent, C = self._states(cotangent, "param_vjp", "cotangent")
            if checks.ok("z_prev", "cotangent") and cotangent.shape != z_prev.shape:
                checks.add(
                    f"`cotangent` must have the shape of `z_prev` {z_prev.shape}; got "
                    f"{cotangent.shape}."
                )
        n = Z.shape[0]
        n_chunks = max(1, min(_MAX_CHUNKS, n // _MIN_CHUNK))
        G = np.zeros((n_chunks, self.n_map_params), dtype=np.float64)
        if n_chunks == 1:
            self._vjp_chunk(*self.kernel_args(), Z, C, 0, n, G[0])
        else:
            self._vjp_kernel(*self.kernel_args(), Z, C, G)
        grad = np.zeros(self.n_params, dtype=self.dtype)
        grad[: self.n_map_params] = G.sum(axis=0)
        return grad

    def simulate(self, z0: np.ndarray, n_steps: int) -> np.ndarray:
        """Sequential free run ``z_{t+1} = F(z_t)``, parallel over the batch.

        Parameters
        ----------
        z0 : array_like, shape (..., M)
            Initial states, of the model dtype.
        n_steps : int
            Number of steps (>= 0).

        Returns
        -------
        ndarray, shape (..., n_steps, M)
            ``z_1 .. z_n`` (``z0`` not included). A run that diverges or becomes non-finite
            is returned as computed (huge, inf or NaN entries), not flagged;
            :func:`models.evaluate` reports such runs.

        Raises
        ------
        TypeError, ValueError
            Naming this method: ``z0`` of another shape or dtype, ``n_steps`` not an int
            >= 0, runs too large to allocate (:func:`models.base.new_run`).
        """
        where = f"{type(self).__name__}.simulate"
        with Checks(where) as checks:
            with checks.caught():
                z0 = self._states(z0, "simulate", "z0")[0]
            n_steps = checks.integer(n_steps, "n_steps", minimum=0)
        return self._free_run(z0, n_steps, where)

    def _free_run(self, z0: np.ndarray, n_steps: int, where: str) -> np.ndarray:
        """:meth:`simulate` of checked ``z0`` and ``n_steps``; a run too large to allocate
        raises ``ValueError`` naming ``where`` (:func:`models.base.new_run`)."""
        Z0 = np.ascontiguousarray(z0).reshape(-1, self.M)
        out = new_run((*z0.shape[:-1], n_steps, self.M), self.dtype, where)
        out3 = out.reshape(Z0.shape[0], n_steps, self.M)
        if n_steps and Z0.shape[0] == 1:
            self._simulate_item(*self.kernel_args(), Z0[0], out3[0])
        elif n_steps:
            self._simulate_kernel(*self.kernel_args(), Z0, out3)
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"
