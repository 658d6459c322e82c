"""CUDA evaluation of ``F`` and its Jacobian for the piecewise-linear RNN families.

The only module of ``models`` that uses ``numba.cuda`` (taken from :mod:`parscan._cuda`, the
module that imports it); :class:`~models._plrnn_kernels.PiecewiseLinearRNN` imports this
one lazily, when ``step_and_jacobian(..., backend="cuda")`` is called or device arrays are
passed.

Each family's plain per-step functions (``model.step_functions``: ``step_jacobian`` and
``step_jacobian_diag``) are compiled with ``numba.cuda.jit(device=True)`` and called from one
kernel per (family, argument types, mode), generated for the family's number of leading
arguments (``model.kernel_args()``)::

    eval_kernel(*args, Z (P, M), F (P, M), J (P, M, M) or (P, M))

one thread per position, grid-stride loop, no allocation. The model parameters travel to the
GPU on every call (one transfer of the flat parameter vector; they are small and may change
between calls, e.g. in training).

The parameter VJP (``step_functions.vjp_params``, the adjoint of the DEER gradient) runs the
same way::

    vjp_kernel(*args, Z (P, M), C (P, M), G (n_map_params, n_threads) float64)

each thread accumulating its positions into its own column of ``G`` (adjacent threads write
adjacent addresses; no atomics), then :func:`sum_rows` sums every row in a fixed order:
the result does not depend on timing, like the CPU kernel's per-chunk rows.

Launch shapes are read from :data:`LAUNCH` at call time; tests shrink it so that tiny inputs in
the simulator (``NUMBA_ENABLE_CUDASIM=1``) exercise the grid-stride loop.
"""

import dataclasses
import functools

import numba
import numpy as np

from models._plrnn_kernels import EVAL_F_DIAG, EVAL_F_FULL, check_out_pair
from parscan import _cuda
from parscan._cuda import cuda
from parscan.scan import is_device_array

#: ``mode`` of :func:`make_eval_kernel`.
MODES = ("full", "diag")


@dataclasses.dataclass(frozen=True)
class EvalLaunch:
    """Threads per block (a power of 2) and the largest grid; positions beyond
    ``threads * max_blocks`` are handled by the grid-stride loop. The parameter VJP uses at
    most ``vjp_blocks`` blocks, and fewer where its float64 partial sums, ``n_map_params *
    threads * blocks * 8`` bytes, would exceed ``vjp_scratch_bytes`` (at least one block):
    47 MB for a shPLRNN with M = 3, L = 50 at the defaults (about the size of an H100/H200 L2
    cache); a shPLRNN with M = 20, L = 1000 gets 6 blocks (252 MB) instead of 5.4 GB."""

    threads: int = 128
    max_blocks: int = 4096
    vjp_blocks: int = 128
    vjp_scratch_bytes: int = 256 << 20

    def __post_init__(self):
        _cuda.check_launch(self, ("threads",))


#: The launch shape used by :func:`launch_eval` (read at call time). Under the simulator
#: (``NUMBA_ENABLE_CUDASIM=1``) every thread is a Python thread and large blocks cost ~10x
#: more than small ones for the same work, so the default there is a small grid.
LAUNCH = (
    EvalLaunch(threads=32, max_blocks=4, vjp_blocks=2)
    if numba.config.ENABLE_CUDASIM
    else EvalLaunch()
)


@dataclasses.dataclass(frozen=True)
class EvalKernel:
    """A compiled-on-first-use evaluation kernel and its explicit signature.

    Attributes
    ----------
    kernel : numba.cuda dispatcher
        ``kernel[blocks, threads](*args, Z, F, J)``.
    py_func : function
        The generated Python source of the kernel (for ``cuda.compile_ptx``).
    signature : tuple of numba types
        ``(*arg_types, Z, F, J)`` with C-contiguous arrays of the model dtype.
    """

    kernel: object
    py_func: object
    signature: tuple


@functools.cache
def _device_function(fn):
    """``numba.cuda.jit(device=True)`` of a plain per-step function (compiled once)."""
    return cuda.jit(device=True)(fn)


_EVAL_SOURCE = """
def eval_kernel({args}Z, F, J):
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for p in range(start, Z.shape[0], stride):
        step_fn({args}Z[p], F[p], J[p])
"""

_VJP_SOURCE = """
def vjp_kernel({args}Z, C, G):
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    grad = G[:, start]
    for p in range(start, Z.shape[0], stride):
        step_fn({args}Z[p], C[p], grad)
"""


def arg_types(kernel_args) -> tuple:
    """Numba types of ``model.kernel_args()``: C-contiguous arrays keep their dtype and
    ``ndim``, Python / NumPy integers become ``int64``."""
    types = []
    for a in kernel_args:
        if isinstance(a, np.ndarray):
            types.append(numba.types.Array(numba.from_dtype(a.dtype), a.ndim, "C"))
        elif isinstance(a, int | np.integer) and not isinstance(a, bool):
            types.append(numba.int64)
        else:
            raise TypeError(
                f"arg_types: kernel_args entries must be numpy arrays or ints; got "
                f"{type(a).__name__}."
            )
    return tuple(types)


@functools.cache
def make_eval_kernel(step_functions, types: tuple, mode: str) -> EvalKernel:
    """The evaluation kernel of one family (``step_functions``, a
    :class:`~models._plrnn_kernels.StepFunctions`) for the leading argument types ``types``
    (:func:`arg_types`; they fix the dtype) and ``mode`` (``"full"`` or ``"diag"``)."""
    if mode not in MODES:
        raise ValueError(f"make_eval_kernel: mode must be one of {MODES}; got {mode!r}.")
    fn = step_functions.step_jacobian if mode == "full" else step_functions.step_jacobian_diag
    dt = _dtype_of(types, "make_eval_kernel")
    py_func = _from_template(_EVAL_SOURCE, "eval_kernel", fn, len(types))
    j_type = dt[:, :, ::1] if mode == "full" else dt[:, ::1]
    signature = (*types, dt[:, ::1], dt[:, ::1], j_type)
    return EvalKernel(cuda.jit(py_func), py_func, signature)


@functools.cache
def make_vjp_kernel(step_functions, types: tuple) -> EvalKernel:
    """The parameter-VJP kernel of one family for the leading argument types ``types``:
    ``kernel[blocks, threads](*args, Z, C, G)`` with ``G`` (n_map_params, blocks * threads)
    float64, zeroed by the caller."""
    dt = _dtype_of(types, "make_vjp_kernel")
    py_func = _from_template(_VJP_SOURCE, "vjp_kernel", step_functions.vjp_params, len(types))
    signature = (*types, dt[:, ::1], dt[:, ::1], numba.float64[:, ::1])
    return EvalKernel(cuda.jit(py_func), py_func, signature)


def _dtype_of(types: tuple, where: str):
    """The one dtype of the parameter arrays among ``types``."""
    dtypes = {t.dtype for t in types if isinstance(t, numba.types.Array)}
    if len(dtypes) != 1:
        raise TypeError(
            f"{where}: the parameter arrays must share one dtype; got {sorted(map(str, dtypes))}."
        )
    return dtypes.pop()


def _from_template(source: str, name: str, fn, n_args: int):
    """The Python function ``name`` of the kernel template ``source`` for ``n_args`` leading
    arguments, calling ``fn`` compiled as a device function."""
    names = "".join(f"a{i}, " for i in range(n_args))
    namespace = {"cuda": cuda, "step_fn": _device_function(fn)}
    exec(source.format(args=names), namespace)  # a fixed template, one per arity
    return namespace[name]


@functools.cache
def _row_sum_kernel(threads: int):
    """``out[k] = sum(G[k, :])``, one block of ``threads`` (a power of 2) per row; every
    thread sums a strided share, then a tree in shared memory: a fixed order."""

    @cuda.jit
    def row_sums(G, out):
        partial = cuda.shared.array(threads, numba.float64)
        k = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        acc = 0.0
        for c in range(tid, G.shape[1], threads):
            acc += G[k, c]
        partial[tid] = acc
        cuda.syncthreads()
        off = threads // 2
        while off > 0:
            if tid < off:
                partial[tid] += partial[tid + off]
            cuda.syncthreads()
            off //= 2
        if tid == 0:
            out[k] = partial[0]

    return row_sums


def sum_rows(G, threads: int | None = None):
    """``G.sum(axis=1)`` of a float64 device array ``G`` (n, m) on the GPU, each row in a
    fixed order (deterministic); a device array (n,). ``threads`` (a power of 2) per row,
    default :data:`LAUNCH`'s."""
    threads = LAUNCH.threads if threads is None else threads
    out = cuda.device_array(G.shape[0], np.float64)
    _row_sum_kernel(threads)[G.shape[0], threads](G, out)
    return out


# --------------------------------------------------------------------------- host side


def device_args(model) -> tuple:
    """``model.kernel_args()`` on the GPU: the arrays that are views of ``model.params`` come
    from one transfer of the flat vector, others are copied one by one; ints pass as they are."""
    args = model.kernel_args()
    params = getattr(model, "params", None)
    d_params = None
    out = []
    for a in args:
        if not isinstance(a, np.ndarray):
            out.append(a)
            continue
        offset = _offset_in(a, params)
        if offset is None:
            out.append(_cuda.to_device(a))
            continue
        if d_params is None:
            d_params = _cuda.to_device(params)
        out.append(d_params[offset : offset + a.size].reshape(a.shape))
    return tuple(out)


def _offset_in(a: np.ndarray, params) -> int | None:
    """Element offset of the C-contiguous view ``a`` in the 1-D contiguous ``params``."""
    if not (
        isinstance(params, np.ndarray)
        and params.ndim == 1
        and params.flags.c_contiguous
        and a.flags.c_contiguous
        and a.dtype == params.dtype
        and a.base is not None
        and np.shares_memory(a, params)
    ):
        return None
    delta = a.__array_interface__["data"][0] - params.__array_interface__["data"][0]
    offset, rem = divmod(delta, params.itemsize)
    return offset if rem == 0 and 0 <= offset and offset + a.size <= params.size else None


def launch_eval(model, d_Z, d_F, d_J, diag: bool, launch: EvalLaunch | None = None) -> None:
    """Run the evaluation kernel on device arrays ``Z, F`` (P, M) and ``J`` (P, M, M) or
    (P, M) (C-contiguous, model dtype; validated by the caller)."""
    launch = LAUNCH if launch is None else launch
    P = d_Z.shape[0]
    if P == 0:
        return
    args = model.kernel_args()
    ek = make_eval_kernel(type(model).step_functions, arg_types(args), "diag" if diag else "full")
    blocks = min(-(-P // launch.threads), launch.max_blocks)
    ek.kernel[blocks, launch.threads](*device_args(model), d_Z, d_F, d_J)


def _overlap(x, y) -> bool:
    """Do the device arrays ``x`` and ``y`` share memory (conservative: address ranges)?"""
    if getattr(x, "__cuda_ndarray__", False) and hasattr(x, "_ary"):  # simulator arrays
        return np.may_share_memory(x._ary, getattr(y, "_ary", None))
    xi, yi = x.__cuda_array_interface__, y.__cuda_array_interface__
    x0, y0 = xi["data"][0], yi["data"][0]
    return x0 < y0 + max(y.nbytes, 1) and y0 < x0 + max(x.nbytes, 1)


def _device_checked(x, shape, dtype, where, name):
    """``x`` as a numba device array of ``shape`` and ``dtype``, C-contiguous, else an error."""
    if not is_device_array(x):
        raise TypeError(
            f"{where}: `{name}` must be a device array like `z` (device in, device out); got "
            f"{type(x).__name__}."
        )
    d = _cuda.as_device_array(x)
    if tuple(d.shape) != tuple(shape) or np.dtype(d.dtype) != dtype or not d.is_c_contiguous():
        raise ValueError(
            f"{where}: `{name}` must be a C-contiguous device array of shape {tuple(shape)} and "
            f"dtype {dtype}; got shape {tuple(d.shape)}, dtype {d.dtype}, C-contiguous "
            f"{d.is_c_contiguous()}. Allocate it with cuda.device_array({tuple(shape)}, "
            f"np.{dtype}) or pass out=None."
        )
    return d


def step_and_jacobian_cuda(model, z, diag: bool = False, out=None):
    """``F(z)`` and its Jacobian on the GPU, one thread per leading position.

    Parameters
    ----------
    model : PiecewiseLinearRNN
        Provides ``M``, ``dtype``, ``kernel_args()``, ``step_functions`` and ``params``.
    z : ndarray or device array, shape (..., M)
        States of the model dtype. A host array is copied to the GPU and the results back;
        a device array (numba device array or any ``__cuda_array_interface__`` object,
        C-contiguous) gives device results with no host round trip.
    diag : bool
        Return only the Jacobian diagonal.
    out : (f_out, j_out) or None
        Arrays of shapes ``(..., M)`` and ``(..., M, M)`` (``(..., M)`` with ``diag=True``),
        on the same side (host / device) as ``z``, C-contiguous, model dtype, overlapping
        neither ``z`` nor each other; filled and returned. Host arrays are checked as by
        the CPU path (``model._eval_arrays``).

    Returns
    -------
    F : ndarray or device array, shape (..., M)
    J : ndarray or device array, shape (..., M, M), or (..., M) with ``diag=True``
    """
    where = f"{type(model).__name__}.step_and_jacobian"
    M, dtype = model.M, model.dtype
    if not is_device_array(z):
        mode = EVAL_F_DIAG if diag else EVAL_F_FULL
        Z, F, J = model._eval_arrays(z, mode, out, "step_and_jacobian")
        P = Z.shape[0]
        if P == 0:
            return F, J
        d_Z = _cuda.to_device(Z)
        d_F = cuda.device_array((P, M), dtype)
        d_J = cuda.device_array((P, M) if diag else (P, M, M), dtype)
        launch_eval(model, d_Z, d_F, d_J, diag)
        d_F.copy_to_host(F.reshape(P, M))
        d_J.copy_to_host(J.reshape(d_J.shape))
        return F, J

    d_z = _device_states(model, z, where, "z")
    shape = tuple(d_z.shape)
    lead = shape[:-1]
    j_shape = (*lead, M) if diag else (*lead, M, M)
    if out is None:
        F = cuda.device_array(shape, dtype)
        J = cuda.device_array(j_shape, dtype)
        d_F, d_J = F, J
    else:
        F, J = check_out_pair(out, where)
        d_F = _device_checked(F, shape, dtype, where, "out[0]")
        d_J = _device_checked(J, j_shape, dtype, where, "out[1]")
        if _overlap(d_F, d_z) or _overlap(d_J, d_z):
            raise ValueError(f"{where}: `out` arrays must not overlap `z`.")
        if _overlap(d_F, d_J):
            raise ValueError(
                f"{where}: `out[0]` and `out[1]` must not overlap each other; pass two "
                f"separate arrays."
            )
    P = int(np.prod(lead, dtype=np.int64))
    if P:
        jf = (P, M) if diag else (P, M, M)
        launch_eval(model, d_z.reshape(P, M), d_F.reshape(P, M), d_J.reshape(*jf), diag)
    return F, J


def _device_states(model, z, where: str, name: str):
    """The device array ``z`` of states (..., M) of the model dtype, C-contiguous, else an
    error naming ``where`` and ``name``."""
    M, dtype = model.M, model.dtype
    d_z = _cuda.as_device_array(z)
    shape = tuple(d_z.shape)
    if len(shape) < 1 or shape[-1] != M:
        raise ValueError(
            f"{where}: `{name}` must have shape (..., {M}) (M={M}); got {name}.shape={shape}."
        )
    if np.dtype(d_z.dtype) != dtype:
        raise TypeError(f"{where}: `{name}` must have the model dtype {dtype}; got {d_z.dtype}.")
    if not d_z.is_c_contiguous():
        raise ValueError(
            f"{where}: device `{name}` must be C-contiguous; make a contiguous copy first "
            f"(e.g. cupy.ascontiguousarray({name}))."
        )
    return d_z


def param_vjp_cuda(model, z_prev, cotangent, launch: EvalLaunch | None = None) -> np.ndarray:
    """``sum over ... of (dF/dtheta at z_prev)^T cotangent`` on the GPU.

    Parameters
    ----------
    model : PiecewiseLinearRNN
        Provides ``M``, ``dtype``, ``kernel_args()``, ``step_functions``, ``n_map_params``
        and ``n_params``.
    z_prev, cotangent : device arrays, shape (..., M)
        States and cotangents of ``F(z_prev)`` (numba device arrays or any
        ``__cuda_array_interface__`` objects), model dtype, C-contiguous, same shape.
    launch : EvalLaunch, optional
        Default :data:`LAUNCH`, read at call time.

    Returns
    -------
    ndarray, shape (n_params,)
        On the host (the flat parameter vector lives there), model dtype, accumulated in
        float64; zero in the ``L0`` block.
    """
    where = f"{type(model).__name__}.param_vjp"
    launch = LAUNCH if launch is None else launch
    d_z = _device_states(model, z_prev, where, "z_prev")
    if not is_device_array(cotangent):
        raise TypeError(
            f"{where}: `cotangent` must be a device array like `z_prev`; got "
            f"{type(cotangent).__name__}."
        )
    d_c = _device_states(model, cotangent, where, "cotangent")
    if tuple(d_c.shape) != tuple(d_z.shape):
        raise ValueError(
            f"{where}: `cotangent` must have the shape of `z_prev` {tuple(d_z.shape)}; got "
            f"{tuple(d_c.shape)}."
        )
    grad = np.zeros(model.n_params, dtype=model.dtype)
    P = int(np.prod(d_z.shape[:-1], dtype=np.int64))
    if P == 0:
        return grad
    args = model.kernel_args()
    vk = make_vjp_kernel(type(model).step_functions, arg_types(args))
    bytes_per_block = model.n_map_params * launch.threads * 8
    fit = max(1, launch.vjp_scratch_bytes // bytes_per_block)
    blocks = min(-(-P // launch.threads), launch.vjp_blocks, fit)
    G = cuda.device_array((model.n_map_params, blocks * launch.threads), np.float64)
    _cuda.zero_fill(G)
    M = model.M
    vk.kernel[blocks, launch.threads](*device_args(model), d_z.reshape(P, M), d_c.reshape(P, M), G)
    grad[: model.n_map_params] = sum_rows(G, launch.threads).copy_to_host()
    return grad
