"""The linear scan primitive ``h_t = a_t ∘ h_{t-1} + b_t``: validation and backend dispatch.

This is the one dispatch point: validate → allocate → pick a backend → call its kernel. Backend
modules (:mod:`parscan._scan_sequential`, :mod:`parscan._scan_cpu`, :mod:`parscan._cuda`) export
the same kernel signatures over C-contiguous ``(B, T, D)`` / ``(B, T, D, D)`` arrays; the
dispatcher flattens the batch dimensions and copies an input only when it is not C-contiguous,
aligned and in native byte order (once).

How ``backend="auto"`` chooses (thresholds measured with ``bench/scan.py`` on the 2-core CI
machine; see ``_choose_host_backend``):

* device input (numba device arrays, ``__cuda_array_interface__`` objects) → ``"cuda"``;
* host input is never moved to a GPU implicitly (the PCIe round trip of a memory-bound scan
  costs more than the scan); it runs on ``"sequential"`` or ``"cpu"``;
* diagonal: ``"cpu"`` when the batch fills the threads (``B >= threads``) and the problem is
  large enough to amortise the thread start (:data:`AUTO_MIN_BATCH_BYTES`, or
  :data:`AUTO_MIN_BATCH_STEPS` time steps in all for small ``D``), or when ``B <
  threads`` and ``T`` is long enough for a scan over time chunks (scan-then-fix when the carry
  between chunks dies out, from :data:`AUTO_MIN_FIX_BYTES`; reduce-then-scan otherwise, from
  :data:`AUTO_MIN_CHUNKED_BYTES`: :mod:`parscan._scan_cpu`) to beat one core; ``"sequential"``
  otherwise;
* dense: ``"cpu"`` (parallel over the batch only) when ``B >= threads`` and the problem is large
  enough to amortise the thread start (:data:`AUTO_MIN_DENSE_BYTES`); ``"sequential"`` otherwise.
  A time-parallel dense scan is never chosen on a CPU: its ``D³`` combines make it 2.5-5x
  slower than the sequential loop.

With one thread (e.g. ``PARSCAN_THREADS=1``) host input always runs on ``"sequential"``. The sizes
are bytes of one ``(B, T, D)`` array (dense: of ``a``).
"""

import functools
import math

import numpy as np

from parscan import _scan_cpu, _scan_sequential
from parscan._arguments import array_and_problem, as_host_array, bool_problem
from parscan._jit import n_threads

_DTYPES = (
    np.dtype(np.float32),
    np.dtype(np.float64),
    np.dtype(np.complex64),
    np.dtype(np.complex128),
)
_NATIVE_DTYPES = frozenset(_DTYPES)
_DTYPE_NAMES = "float32/float64/complex64/complex128"
_HOST_KERNELS = {"sequential": _scan_sequential, "cpu": _scan_cpu}

# Crossovers of ``backend="auto"`` in bytes of one array (B*T*D*itemsize; dense a:
# B*T*D*D*itemsize), from ``python bench/scan.py --crossover`` on the 2-core CI machine
# (numba 0.68, idle machine; two runs: bench/results/crossover_2core.jsonl). Speed-up of "cpu"
# over "sequential" (min of interleaved runs) around each threshold:
#   diag  B=1, D=16, a uniform in (0.999, 1) -- the carry never dies out, reduce-then-scan:
#                                   float64 512 KiB -> 0.72-0.77x   1 MiB -> 1.24-1.30x
#                                   float32 512 KiB -> 0.81-0.83x   1 MiB -> 1.02-1.03x
#                                 complex64 512 KiB -> 1.10-1.16x   1-8 MiB -> 0.78-1.24x
#   diag  B=1, D=16, signed a -- the carry dies out, scan-then-fix (``time_plan`` probe):
#                                   float64 128 KiB -> 0.58-0.59x 512 KiB -> 1.13-1.22x
#                                   float32 256 KiB -> 0.94-1.01x 512 KiB -> 1.21-1.31x
#                                 complex64 128 KiB -> 0.76-0.89x 512 KiB -> 1.10-1.27x
#   diag  B=8, D=16 (batch):        float64  64 KiB -> 0.83-0.86x 256 KiB -> 1.08-1.23x
#   diag  B=8, D=1  (batch):        float64  16 KiB -> 0.96-1.15x  64 KiB -> 1.18-1.51x
# For small D the per-step loop overhead, not the bytes, sets the batch crossover: it sits at
# about 2048 time steps in all (B*T) from D=1 to D=16 (the batch rows of ``bench/scan.py
# --crossover``, 20 interleaved runs, idle machine, 2026-12-01; speed-ups (min) at
# B*T = 1024 -> 2048 -> 4096):
#   B=8 D=1 float64 0.92 -> 1.13 -> 1.21   B=2 D=1 float64 0.94 -> 1.11 -> 1.28
#   B=8 D=4 float64 0.90 -> 0.98 -> 1.07   B=2 D=4 float64 0.93 -> 1.01 -> 1.18
#   B=8 D=2 float32 0.98 -> 0.97 -> 1.00   B=8 D=16 float32 0.95 -> 1.09 -> 1.16
#   B=2 D=16 float64 0.95 -> 1.18 -> 1.57  (B=8 D=64 float64: 1.01 at 128 KiB, 1.10 at 256 KiB)
# (a rerun on 2026-12-04, bench/results/crossover_2core_20261204.jsonl: B=8 D=1 float64
# 0.77-0.87 at B*T = 512, 0.96-1.03 at 2048, 1.35-1.37 at 8192.)
#   dense B=8, D=3  (batch):        float64  36 KiB -> 0.84-0.96x 144 KiB -> 0.94-1.28x
#   dense B=8, D=16 (batch):        float64 256 KiB -> 0.93-1.18x   1 MiB -> 1.12-1.65x
# The crossover sits at about the same number of bytes, not elements, across dtypes; complex64
# under reduce-then-scan gains little at any size (its reduction's complex products cost about
# as much as the scan), so "cpu" there is within noise of "sequential". Below the thresholds the
# fork/join of a ``prange`` region costs more than it saves. On a machine whose cores are
# busy with other processes every parallel region also waits for a scheduler tick (~4 ms);
# there, use backend="sequential" or PARSCAN_THREADS=1.
AUTO_MIN_BATCH_BYTES = 1 << 18
AUTO_MIN_BATCH_STEPS = 1 << 11
AUTO_MIN_CHUNKED_BYTES = 1 << 20
AUTO_MIN_FIX_BYTES = 1 << 19
AUTO_MIN_DENSE_BYTES = 1 << 17


@functools.cache
def _cuda_import_failure() -> str | None:
    """Why ``numba.cuda`` cannot be imported, as ``"ExceptionType: message"``, or None when it
    can. numba-cuda not installed raises ImportError; a numba-cuda release built for another
    numba fails inside its own import (e.g. numba-cuda 0.30.0-0.30.3 with numba 0.68:
    AttributeError), which must make the CUDA backend unavailable, not break every scan."""
    try:
        from numba import cuda  # noqa: F401
    except Exception as exc:  # any failure of the optional GPU stack, reported, not raised
        return f"{type(exc).__name__}: {exc}"
    return None


@functools.cache
def _cuda_available() -> bool:
    if _cuda_import_failure() is not None:
        return False
    from parscan import _cuda

    return _cuda.is_available()


def available_backends() -> tuple[str, ...]:
    """Names accepted by ``linear_scan(..., backend=...)`` on this machine, besides ``"auto"``.

    ``("sequential", "cpu")``, plus ``"cuda"`` when numba.cuda imports and finds a GPU or runs
    in the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``); :func:`cuda_unavailable` says why not.
    """
    return ("sequential", "cpu", "cuda") if _cuda_available() else ("sequential", "cpu")


def no_cuda_reason() -> str:
    """Why the CUDA backend is unavailable, with the remedy: a clause for the messages of
    :func:`linear_scan`, :func:`cuda_unavailable` and ``parscan-train --backend cuda``."""
    failure = _cuda_import_failure()
    if failure is not None:
        return (
            f"numba.cuda fails to import: {failure}; install a numba-cuda release that matches "
            "the installed numba, e.g. pip install -U numba numba-cuda"
        )
    return "numba.cuda finds no GPU; NUMBA_ENABLE_CUDASIM=1 runs the simulator"


def cuda_unavailable() -> str | None:
    """Why ``backend="cuda"`` cannot run on this machine (numba.cuda finds no GPU, or fails to
    import), as one sentence with the remedy, for the messages of the functions that take a
    ``backend``; None when it can (a GPU, or the CUDA simulator)."""
    if _cuda_available():
        return None
    return f"backend='cuda' is not available ({no_cuda_reason()}). Use backend='cpu' (or 'auto')."


def is_device_array(x) -> bool:
    """A numba device array (also the simulator's) or any ``__cuda_array_interface__`` object
    (checked without importing ``numba.cuda``)."""
    if x is None or isinstance(x, np.ndarray):
        return False
    return hasattr(x, "__cuda_array_interface__") or bool(getattr(x, "__cuda_ndarray__", False))


#: the ``backend`` values of :func:`linear_scan` (and of the solvers built on it)
BACKENDS = ("auto", "sequential", "cpu", "cuda")


def unknown_backend(backend) -> str | None:
    """The problem with a ``backend`` argument that names no backend (one sentence listing
    those available here), or None."""
    if isinstance(backend, str) and backend in BACKENDS:
        return None
    available = ", ".join(repr(x) for x in ("auto", *available_backends()))
    return f"unknown backend {backend!r}; available: {available}."


def _check_backend(backend, on_device: bool) -> str:
    problem = unknown_backend(backend)
    if problem is not None:
        raise ValueError(f"linear_scan: {problem}")
    if backend == "cuda" or on_device:
        if not _cuda_available():
            raise ValueError(
                f"linear_scan: backend 'cuda' is not available ({no_cuda_reason()}); "
                f"available: {', '.join(repr(x) for x in ('auto', *available_backends()))}."
            )
        if backend in ("sequential", "cpu"):
            raise ValueError(
                "linear_scan: device arrays need backend 'cuda' or 'auto'; "
                f"got backend={backend!r}. "
                "Copy the inputs to the host first (e.g. x.copy_to_host()) to use a CPU backend."
            )
        return "cuda"
    return backend


def _cast(name: str, target: np.dtype, converted: frozenset, device: bool) -> str:
    """How a caller casts input ``name`` to ``target``: ``.astype`` for an array, ``np.asarray``
    for what ``linear_scan`` converted (``converted``: the names given as lists, scalars...),
    a copy through the host for a device array (``device``: Numba's have no ``astype``)."""
    if name in converted:
        return f"np.asarray({name}, dtype=np.{target})"
    if device:
        return f"cuda.to_device({name}.copy_to_host().astype(np.{target}))"
    return f"{name}.astype(np.{target})"


def _dtype_problems(a, b, h0, converted: frozenset, device: bool) -> list[str]:
    dt = b.dtype
    if a.dtype == dt and (h0 is None or h0.dtype == dt) and dt in _NATIVE_DTYPES:
        return []
    named = [
        (name, np.dtype(x.dtype)) for name, x in (("a", a), ("b", b), ("h0", h0)) if x is not None
    ]
    native = {name: dtype.newbyteorder("=") for name, dtype in named}
    usable = {name: d for name, d in native.items() if d in _NATIVE_DTYPES}
    # one dtype to cast to, so that the suggested fixes agree, and that loses nothing (not
    # the imaginary part, not precision): the usable arrays' common type (the precision of
    # inputs given as lists or scalars counts only without arrays: they have no dtype of
    # their own), complex when any input is (also an unusable one, e.g. complex256)
    arrays = {name: d for name, d in usable.items() if name not in converted} or usable
    target = np.result_type(*arrays.values()) if arrays else np.dtype(np.float64)
    if any(dtype.kind == "c" for _, dtype in named):
        target = np.result_type(target, np.complex64)
    problems = [
        f"expected {_DTYPE_NAMES} for `{name}`; got {name}.dtype={dtype}. "
        f"Use {_cast(name, target, converted, device)}."
        for name, dtype in named
        if name not in usable
    ]
    if any(d != target for d in usable.values()):
        got = ", ".join(f"{name}.dtype={dtype}" for name, dtype in named)
        casts = ", ".join(
            _cast(name, target, converted, device) for name, d in usable.items() if d != target
        )
        problems.append(
            f"`a`, `b` and `h0` must share one dtype; got {got}. Cast {casts}"
            + _narrower_h0(usable, target, converted, device)
            + "."
        )
    return problems


def _narrower_h0(usable: dict, target: np.dtype, converted: frozenset, device: bool) -> str:
    """The other fix when only an ``h0`` array is wider than ``a`` and ``b`` (which agree):
    cast ``h0`` to theirs (not when that would drop its imaginary part)."""
    ab = {usable.get("a"), usable.get("b")}
    if "h0" not in usable or "h0" in converted or len(ab) != 1 or usable["h0"] != target:
        return ""
    (dtype,) = ab
    if dtype is None or (target.kind == "c" and dtype.kind != "c"):
        return ""
    return f" (or, to scan in {dtype}, {_cast('h0', dtype, converted, device)})"


def _host_arrays(where: str, **inputs):
    """``np.asarray`` of the host ``inputs`` (name -> array-like or None), in order, refusing
    masked arrays and ragged nested lists (:func:`parscan._arguments.as_host_array`).
    Messages start with ``where``."""
    try:
        return [None if x is None else as_host_array(x, f"`{name}`") for name, x in inputs.items()]
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{where}: {exc}") from None


def _unprefixed(exc: Exception) -> str:
    """The message of a ``linear_scan`` error without its ``linear_scan:`` prefix."""
    return str(exc).removeprefix("linear_scan: ")


def _gathered(problems: list[tuple[type, str]]) -> Exception:
    """One error listing ``problems`` (``(exception class, sentence)``): a ``TypeError`` if
    any is one, else a ``ValueError``; the message starts with ``linear_scan:``."""
    kind = TypeError if any(cls is TypeError for cls, _ in problems) else ValueError
    return kind("linear_scan: " + " ".join(problem for _, problem in problems))


def _checked_arrays(a, b, h0, out, on_device: bool, problems: list):
    """``(a, b, h0, out, dense)`` of :func:`linear_scan`'s array arguments: device arrays
    (``on_device``) as Numba's, host ones as ``np.asarray``; the problems of their dtypes and
    shapes (:func:`_shape_and_dtype_problems`) and of ``out`` (:func:`_out_problems`), and a
    masked input's, added to ``problems``. Raises the first error that stops the checks."""
    if on_device:
        if not all(is_device_array(x) for x in (a, b, h0, out) if x is not None):
            raise TypeError(
                "`a`, `b`, `h0` and `out` must all be device arrays or all host arrays; got a "
                "mix. Copy the host arrays to the device (numba.cuda.to_device)."
            )
        from parscan import _cuda

        a, b, h0, out = (None if x is None else _cuda.as_device_array(x) for x in (a, b, h0, out))
        given = {"a": a, "b": b, "h0": h0, "out": out}
        swapped = [f"{name}.dtype={x.dtype}" for name, x in given.items() if _swapped(x)]
        if swapped:
            raise TypeError(
                f"device arrays must be in native byte order; got {', '.join(swapped)}. Copy "
                "them from native host arrays: cuda.to_device(x.astype(x.dtype.newbyteorder("
                "'='))) (host inputs in any byte order are converted once)."
            )
        converted = frozenset()
    else:
        given = {"a": a, "b": b, "h0": h0}
        converted = frozenset(
            name for name, x in given.items() if x is not None and not isinstance(x, np.ndarray)
        )
        arrays = {}
        for name, x in given.items():
            arrays[name], masked = (None, None) if x is None else array_and_problem(x, f"`{name}`")
            if masked is not None:
                problems.append((TypeError, masked))
        a, b, h0 = arrays.values()
    dense = _shape_and_dtype_problems(a, b, h0, converted, on_device, problems)
    if out is not None:
        if isinstance(out, np.ma.MaskedArray) or not (
            isinstance(out, np.ndarray) or is_device_array(out)
        ):
            kind = "a masked array" if isinstance(out, np.ma.MaskedArray) else type(out).__name__
            problems.append(
                (
                    TypeError,
                    f"`out` must be an array like `b` (shape {tuple(b.shape)}, dtype {b.dtype}) "
                    f"or None; got {kind}.",
                )
            )
        else:
            problems.extend(_out_problems(out, a, b, h0))
    return a, b, h0, out, dense


def _swapped(x) -> bool:
    """Whether array ``x`` (or None) holds its dtype in the other byte order."""
    return x is not None and not np.dtype(x.dtype).isnative


def _shape_and_dtype_problems(
    a, b, h0, converted: frozenset, device: bool, problems: list[tuple[type, str]]
) -> bool:
    """Add every dtype (``TypeError``) and shape (``ValueError``) mismatch of ``a, b, h0``
    (anything with ``.shape``/``.dtype``; ``converted``: the names of those the caller gave as
    other than arrays, and ``device``: whether they are device arrays, for the fixes) to
    ``problems``. Returns True for a dense ``a``."""
    problems.extend((TypeError, p) for p in _dtype_problems(a, b, h0, converted, device))
    if b.ndim < 2:
        problems.append(
            (ValueError, f"`b` must have shape (..., T, D); got b.shape={tuple(b.shape)}.")
        )
        return False
    batch, D = tuple(b.shape)[:-2], tuple(b.shape)[-1]
    diag_shape = tuple(b.shape)
    dense_shape = (*b.shape, D)
    if tuple(a.shape) not in (diag_shape, dense_shape):
        problems.append(
            (
                ValueError,
                "`a` must have shape (..., T, D) (diagonal) or (..., T, D, D) (dense) to match "
                f"b.shape={tuple(b.shape)}, i.e. {diag_shape} or {dense_shape}; "
                f"got a.shape={tuple(a.shape)}. Leading batch dimensions must agree exactly "
                "(no broadcasting).",
            )
        )
    if h0 is not None and tuple(h0.shape) != (*batch, D):
        problems.append(
            (
                ValueError,
                f"`h0` must have shape b.shape[:-2] + (D,) = {(*batch, D)}; "
                f"got h0.shape={tuple(h0.shape)}.",
            )
        )
    return a.ndim == b.ndim + 1


def _extent(x) -> tuple[int, int]:
    """Byte range ``[lo, hi)`` spanned by a host or device array (for overlap checks)."""
    if hasattr(x, "__cuda_array_interface__"):
        lo = hi = x.__cuda_array_interface__["data"][0]
    else:  # NumPy, or the CUDA simulator's arrays, which wrap NumPy
        lo = hi = x.__array_interface__["data"][0]
    for n, stride in zip(x.shape, x.strides, strict=True):
        if n == 0:
            return lo, lo
        if stride < 0:
            lo += (n - 1) * stride
        else:
            hi += (n - 1) * stride
    return lo, hi + np.dtype(x.dtype).itemsize


def _overlap(x, y) -> bool:
    (lo1, hi1), (lo2, hi2) = _extent(x), _extent(y)
    return lo1 < hi2 and lo2 < hi1


def _out_problems(out, a, b, h0) -> list[tuple[type, str]]:
    """Why the array ``out`` cannot take the scan of ``b`` (``(exception class, sentence)``
    pairs; none when it can): it must be a C-contiguous, writeable array like ``b``, and may
    be ``b`` itself."""
    if (  # the common case (a NumPy buffer reused in a loop), decided in ~1 us
        isinstance(out, np.ndarray)
        and out.shape == b.shape
        and out.dtype == b.dtype
        and out.flags.c_contiguous
        and out.flags.writeable
        and out.flags.aligned
        and out.dtype.isnative
        and not np.may_share_memory(out, a)
        and (h0 is None or not np.may_share_memory(out, h0))
        and (out is b or not np.may_share_memory(out, b))
    ):
        return []
    problems = []
    if tuple(out.shape) != tuple(b.shape):
        problems.append(
            (
                ValueError,
                f"`out` must have b's shape {tuple(b.shape)}; got out.shape={tuple(out.shape)}.",
            )
        )
    host = isinstance(out, np.ndarray)
    like = "np.empty_like(b)" if host else "numba.cuda.device_array_like(b)"
    if np.dtype(out.dtype).newbyteorder("=") != np.dtype(b.dtype).newbyteorder("="):
        got = np.dtype(out.dtype)
        return [
            (TypeError, f"`out` must have b's dtype {np.dtype(b.dtype)}; got out.dtype={got}."),
            *problems,
            (TypeError, f"Allocate it like `b`, e.g. with {like}."),
        ]
    if host:
        flags = out.flags
        needs = {
            "C-contiguous": flags.c_contiguous,
            "aligned": flags.aligned,
            "writeable": flags.writeable,
            "native-endian": out.dtype.isnative,
        }
    else:
        needs = {"C-contiguous": out.is_c_contiguous()}
    failed = [name for name, ok in needs.items() if not ok]
    if failed:
        problems.append(
            (
                ValueError,
                f"`out` must be {', '.join(needs)}; got one that is not "
                f"{' and not '.join(failed)}. Allocate it with {like}.",
            )
        )
    overlap = np.may_share_memory if host else _overlap
    if any(x is not None and overlap(out, x) for x in (a, h0)) or (
        overlap(out, b) and (_extent(out) != _extent(b) or tuple(out.strides) != tuple(b.strides))
    ):
        problems.append(
            (ValueError, "`out` may be `b` itself but must not overlap `a`, `h0` or part of `b`.")
        )
    return problems


def _host_ready_as_is(x: np.ndarray) -> bool:
    """Whether ``x`` is C-contiguous, aligned and native-endian (the kernels read it as is)."""
    flags = x.flags
    return bool(flags.c_contiguous and flags.aligned and x.dtype.isnative)


def _host_ready(x: np.ndarray) -> np.ndarray:
    """``x`` itself when C-contiguous, aligned and native-endian, else one copy that is."""
    if _host_ready_as_is(x):
        return x
    return np.require(x, dtype=x.dtype.newbyteorder("="), requirements=("C", "A"))


def _too_large(a: np.ndarray, b: np.ndarray, h0, out) -> str:
    """The message of a host scan whose result, or copies of its inputs (those
    :func:`_host_ready` copies: a broadcast view, a strided slice), this machine cannot
    allocate."""
    needed = {} if out is not None else {"the result h": b}
    for name, x in (("a", a), ("b", b), ("h0", h0)):
        if x is not None and not _host_ready_as_is(x):
            needed[f"a contiguous copy of {name}"] = x
    if h0 is None:
        needed["the zero state h0"] = b[..., 0, :]
    gib = sum(x.size * x.dtype.itemsize for x in needed.values()) / 2**30
    *others, last = needed
    what = f"{', '.join(others)} and {last}" if others else last
    return (
        f"linear_scan: a of shape {a.shape} and b of shape {b.shape} ({b.dtype}) need "
        f"{gib:,.1f} GiB for {what}, more than this machine can allocate now; "
        "scan fewer sequences or steps at a time."
    )


def _auto_host(dense: bool, B: int, T: int, D: int, itemsize: int, a=None, reverse=False):
    """``backend="auto"`` on the host: ``("cpu" or "sequential", time plan or None)``.

    Thresholds above. ``a`` (the diagonal ``(B, T, D)`` kernel input), when given, lets a
    time-chunked scan between :data:`AUTO_MIN_FIX_BYTES` and :data:`AUTO_MIN_CHUNKED_BYTES`
    go threaded when its carry dies out (the scan-then-fix plan, which is then returned so
    that the kernel does not probe again).
    """
    threads = n_threads()
    if threads < 2:
        return "sequential", None
    nbytes = B * T * D * itemsize
    if dense:
        cpu = B >= threads and nbytes * D >= AUTO_MIN_DENSE_BYTES
        return ("cpu" if cpu else "sequential"), None
    if B >= threads:
        cpu = nbytes >= AUTO_MIN_BATCH_BYTES or B * T >= AUTO_MIN_BATCH_STEPS
        return ("cpu" if cpu else "sequential"), None
    if nbytes >= AUTO_MIN_CHUNKED_BYTES:
        return "cpu", None
    if nbytes >= AUTO_MIN_FIX_BYTES and a is not None:
        plan = _scan_cpu.time_plan(a, reverse, threads)
        if plan[0] == "fix":
            return "cpu", plan
    return "sequential", None


def _choose_host_backend(
    dense: bool, B: int, T: int, D: int, itemsize: int, a=None, reverse=False
) -> str:
    """The backend :func:`_auto_host` picks."""
    return _auto_host(dense, B, T, D, itemsize, a, reverse)[0]


def linear_scan(a, b, h0=None, *, reverse=False, transpose=False, backend="auto", out=None):
    """Solve the linear recurrence ``h_t = a_t ∘ h_{t-1} + b_t`` for all t at once.

    Equivalent to this loop (forward; ``h[-1] = h0``, zeros when ``h0`` is None)::

        h = h0
        for t in range(T):                       # reverse=True: range(T - 1, -1, -1)
            h = a[..., t] ∘ h + b[..., t, :]     # ∘: a[..., t, :] * h   (diagonal)
            out[..., t, :] = h                   #    a[..., t, :, :] @ h (dense)

    With ``reverse=True`` the loop runs backwards, ``h[..., t, :] = a[..., t] ∘ h[..., t+1, :]
    + b[..., t, :]`` with ``h[..., T, :] = h0``.

    The scan is the prefix product under the associative combine of :func:`combine`,
    ``(A2, b2) • (A1, b1) = (A2 A1, A2 b1 + b2)``: ``(a_t, b_t) • ... • (a_0, b_0)`` applied to
    ``h0`` gives ``h_t``, which is what the parallel backends exploit.

    Parameters
    ----------
    a : ndarray, shape (..., T, D) or (..., T, D, D)
        Diagonal (elementwise) or dense (matrix-vector) transition per step.
    b : ndarray, shape (..., T, D)
        Input per step. Leading batch dimensions (any number, including none) must equal
        those of ``a`` and ``h0`` exactly; there is no broadcasting.
    h0 : ndarray, shape (..., D), optional
        State before the first step (``h[-1]``, or ``h[T]`` in reverse). Zeros when None.
    reverse : bool
        Run the recurrence from ``t = T-1`` down to 0. ``reverse`` and ``transpose`` must be
        ``True`` or ``False`` (a NumPy bool too; the string ``"False"`` is refused).
    transpose : bool
        Dense ``a`` only: use ``a[..., t, :, :].T`` without copying ``a``. The adjoint of the
        forward scan ``b -> h`` is the reverse scan of the cotangent with these transposes
        of the matrices one step later: ``a_adj[t] = a[t + 1]`` (``a_adj[T - 1]`` multiplies
        ``h[T] = 0`` and is never felt; for a ``T - 1``-step scan pass ``a[..., 1:, :, :]``).
        This is the plain transpose, also for complex ``a``: for the Hermitian adjoint pass
        ``a.conj()``. Ignored for diagonal ``a``.
    backend : {"auto", "sequential", "cpu", "cuda"}
        ``"sequential"``: one compiled loop. ``"cpu"``: Numba threads, parallel over the batch
        when ``B >= threads``, else over time chunks (diagonal: scan-then-fix when the carry
        between chunks dies out, else reduce-then-scan; dense is only ever parallel over the
        batch). ``"cuda"``: Blelloch scan on the GPU (diagonal, and
        dense for ``D <= 16``). ``"auto"``: see the module docstring. :func:`available_backends`
        lists what this machine has.
    out : ndarray, shape (..., T, D), optional
        Where to write ``h`` (saves the allocation and page faults of a new array in loops):
        C-contiguous, writeable, ``b``'s dtype, on the same device as the inputs. It may be
        ``b`` itself (in-place scan) but must not overlap ``a``, ``h0`` or part of ``b``. (On
        the cuda backend an in-place scan of device arrays allocates a temporary result and
        copies it into ``b``: the walks that carry a state step by step through an
        overflowed product of ``a`` re-read ``b``, which other tiles would have
        overwritten.)

    Returns
    -------
    h : ndarray, shape (..., T, D)
        Same shape and dtype as ``b``, in native byte order (C-contiguous; the ``out`` object
        itself when given, a CuPy array included). A numba device array when the inputs are
        device arrays (``__cuda_array_interface__``) and ``out`` is None, with no host round
        trip.

    Raises
    ------
    TypeError
        ``a`` or ``b`` None; integer, non-float, or mixed dtypes (all of ``a, b, h0`` must be
        one of float32, float64, complex64, complex128); host and device arrays mixed; a
        masked array (a scan cannot skip entries: pass ``x.filled(value)``);
        ``reverse``/``transpose`` not a bool.
    ValueError
        Wrong ndim or shapes, ``h0`` of the wrong shape, ragged nested lists, unknown or
        unavailable backend, an unsuitable ``out``.
    MemoryError
        The result, or the contiguous copies of inputs that need one (a broadcast view, a
        strided slice), cannot be allocated on the host; the message gives the GiB.

    Notes
    -----
    NaN and inf propagate as values (no error). ``T = 0`` returns an empty array of ``b``'s
    shape. The parallel backends combine steps in another order, so backends agree to rounding
    (the threaded plans leave out a carried part only once it is below a quarter of an ulp of
    the state: an error of the size the sequential loop itself makes), and bit for bit on
    dyadic data whose every partial result is exact (``a`` in {0, 1/2, 1} with zeros
    recurring, small integer ``b``; long runs of ``a = 1/2`` eventually round) up to the sign
    of zero: a threaded chunk starts from a zero state and cannot know the sign of the zero
    the true carry contributes, so an exact zero may come out as ``-0.0`` where the
    sequential loop gives ``+0.0`` (they compare equal). The time-chunked ``"cpu"`` plans (a
    batch smaller than the thread count) place chunk boundaries by the number of threads, so
    their last bits can change with it (``PARSCAN_THREADS``). ``±inf`` and
    NaN in ``h0`` or ``b`` (real dtypes) come out where, and with the sign, the sequential loop
    gives them, also across a chunk or tile whose product of ``a`` underflowed to 0 (a tiny
    ``a`` times inf is inf, an ``a`` of exactly 0 times inf is NaN): where a combined product
    cannot carry such a state (one that is 0; on ``"cuda"`` any dense one), the parallel
    backends walk it through the steps one by one, as slowly as the sequential loop. The
    ``"cpu"`` chunks keep their products of ``a`` scaled by powers of two, so a product far
    beyond the largest finite number still carries a zero or tiny state as the loop does
    (steps beyond ``2**64``, ``2**32`` in single precision, outgrow the scale: a finite state
    is then walked through that chunk). ``"cuda"`` walks a state, finite or not, through the
    steps of any combined product of ``a`` that is not finite (overflowed, or ``±inf`` / NaN
    in ``a``), so an ``a`` so large that its product over a tile overflows still carries a
    zero or tiny state as the loop does, and an infinite state through a pair whose offset
    overflowed to the opposite infinity. On ``"cuda"``, a state that overflows inside a tile
    whose product of ``a`` stays finite can stay finite where the loop gives ``±inf`` (as the
    ``"cpu"`` chunks may where the loop overflows only in the product ``a[t] * h[t-1]``),
    and finite where the loop gives NaN after an ``a`` of 0 in that stretch (``0 * inf``),
    also in the tiles after it.
    Where states overflow, the time-chunked ``"cpu"``
    plans give the loop's ``±inf`` and NaN (real dtypes) also where their combinations differ
    in kind (an infinite state meeting an offset overflowed to the opposite infinity, the
    loop overflowing inside a chunk whose product comes back or is 0, ``±inf`` in ``a``): a
    last serial pass scans such a chunk again from the loop's state. What they cannot see:
    a loop that overflows only in ``a[t] * h[t-1]`` before ``b[t]`` brings it back below
    the largest finite number (the chunks may keep the finite value), cancellations of
    values near it (rounding), and an inf decided by a value of rounding size: ``±inf`` in
    ``a`` times a state (complex: a part) that is 0 in the loop and rounding-size in the
    chunks, or the other way round (NaN against ``±inf``), or of the other sign. The
    ``"cuda"`` look-back combines a timing-dependent number of tile aggregates, so its last
    bits may differ from run to run (as in CUB's floating-point scans).

    Host inputs that are C-contiguous, aligned and native-endian are read where they are, also
    read-only ones (a ``np.broadcast_to`` view of matching shape, a read-only memmap); others
    are copied once. Numba compiles separate kernels for read-only arrays: the first call with
    one compiles them (seconds per kernel; cached on disk like the others). Device inputs
    that are not C-contiguous are copied once on the device.
    """
    given_out = out
    problems = [
        (TypeError, problem)
        for name, flag in (("reverse", reverse), ("transpose", transpose))
        if (problem := bool_problem(flag, f"`{name}`")) is not None
    ]
    missing = [f"`{name}`" for name, x in (("a", a), ("b", b)) if x is None]
    if missing:
        what = "must be arrays" if len(missing) == 2 else "must be an array"
        raise _gathered([*problems, (TypeError, f"{' and '.join(missing)} {what}; got None.")])
    on_device = any(is_device_array(x) for x in (a, b, h0, out))
    try:
        backend = _check_backend(backend, on_device)
    except ValueError as exc:
        if on_device:  # device arrays without a usable CUDA backend: nothing more to check
            raise _gathered([*problems, (ValueError, _unprefixed(exc))]) from None
        problems.append((ValueError, _unprefixed(exc)))
    try:
        a, b, h0, out, dense = _checked_arrays(a, b, h0, out, on_device, problems)
    except (TypeError, ValueError) as exc:
        raise _gathered([*problems, (type(exc), _unprefixed(exc))]) from None
    if problems:
        raise _gathered(problems)
    if backend == "cuda":
        from parscan import _cuda

        h = _cuda.linear_scan_cuda(a, b, h0, bool(reverse), bool(transpose), dense, out)
        return h if given_out is None else given_out  # a foreign out, not numba's view of it

    try:
        if out is None:
            out = np.empty(b.shape, dtype=b.dtype.newbyteorder("="))
        if out.size == 0:
            return out
        T, D = b.shape[-2:]
        B = math.prod(b.shape[:-2])
        a3 = _host_ready(a).reshape((B, T, D, D) if dense else (B, T, D))
        b3 = _host_ready(b).reshape(B, T, D)
        h03 = np.zeros((B, D), out.dtype) if h0 is None else _host_ready(h0).reshape(B, D)
    except MemoryError:
        raise MemoryError(_too_large(a, b, h0, given_out)) from None
    plan = None
    if backend == "auto":
        backend, plan = _auto_host(dense, B, T, D, b.dtype.itemsize, a3, bool(reverse))
    out3 = out.reshape(B, T, D)
    if dense:
        _HOST_KERNELS[backend].scan_dense(a3, b3, h03, bool(reverse), bool(transpose), out3)
    elif backend == "cpu":
        _scan_cpu.scan_diag(a3, b3, h03, bool(reverse), out3, plan)
    else:
        _scan_sequential.scan_diag(a3, b3, h03, bool(reverse), out3)
    return out


def combine(pair2, pair1):
    """Associative operator of the scan: ``(A2, b2) • (A1, b1) = (A2 A1, A2 b1 + b2)``.

    ``pair1 = (A1, b1)`` is the *earlier* step. Applying the result to a state ``h`` equals
    applying ``pair1`` then ``pair2``: ``A2 (A1 h + b1) + b2``. Diagonal pairs (``A`` of shape
    ``(..., D)``) multiply elementwise; dense pairs (``A`` of shape ``(..., D, D)``) use matrix
    products. A pair is dense exactly when ``A`` has one dimension more than ``b``, diagonal
    when it has as many; within a pair ``A`` and ``b`` must have the same leading dimensions,
    and the leading dimensions of the two pairs broadcast as in NumPy.

    Parameters
    ----------
    pair2 : tuple of ndarray, shapes ((..., D) or (..., D, D), (..., D))
        The later step ``(A2, b2)``.
    pair1 : tuple of ndarray, same kind as ``pair2``
        The earlier step ``(A1, b1)``.

    Returns
    -------
    (A, b) : tuple of ndarray
        ``(A2 A1, A2 b1 + b2)``.

    Raises
    ------
    TypeError
        A pair that is not a 2-tuple/list or holds None, a masked array, a non-number dtype
        (bool, object, strings: integer, float and complex are combined as NumPy does).
    ValueError
        Ragged nested lists, pairs of different kinds (diagonal/dense) or ``D``, leading
        dimensions that do not broadcast.
    """
    pairs = []
    for name, pair, (a_name, b_name) in (
        ("pair2", pair2, ("A2", "b2")),
        ("pair1", pair1, ("A1", "b1")),
    ):
        if not (isinstance(pair, tuple | list) and len(pair) == 2):
            sized = hasattr(pair, "__len__") and getattr(pair, "ndim", 1) > 0  # 0-d: no len
            got = type(pair).__name__ + (f" of length {len(pair)}" if sized else "")
            raise TypeError(
                f"combine: {name} must be a pair (A, b) of arrays (tuple or list); got a {got}."
            )
        missing = [n for n, x in ((a_name, pair[0]), (b_name, pair[1])) if x is None]
        if missing:
            raise TypeError(
                f"combine: {name} must be a pair (A, b) of arrays; got None for "
                f"{' and '.join(missing)}."
            )
        pairs.append(tuple(_host_arrays("combine", **{a_name: pair[0], b_name: pair[1]})))
    (A2, b2), (A1, b1) = pairs
    shapes = f"A2.shape={A2.shape}, b2.shape={b2.shape}, A1.shape={A1.shape}, b1.shape={b1.shape}"
    kinds = [_pair_kind(A, b) for A, b in pairs]
    if None in kinds or kinds[0] != kinds[1]:
        raise ValueError(
            "combine: both pairs must be diagonal (A and b of shape (..., D)) or both dense "
            f"(A of shape (..., D, D), b of shape (..., D)), with the same leading dimensions "
            f"within a pair; got {shapes}."
        )
    if b2.shape[-1:] != b1.shape[-1:]:
        raise ValueError(f"combine: the two pairs must share D; got {shapes}.")
    named = dict(zip(("A2", "b2", "A1", "b1"), (A2, b2, A1, b1), strict=True))
    if any(x.dtype.kind not in _NUMBER_KINDS for x in named.values()):
        dtypes = ", ".join(f"{n}.dtype={x.dtype}" for n, x in named.items())
        raise TypeError(
            f"combine: the pairs must hold numbers (integer, float or complex; bools would "
            f"combine by logical and/or); got {dtypes}. Cast them, e.g. .astype(np.float64)."
        )
    try:
        if kinds[0] == "dense":
            return A2 @ A1, (A2 @ b1[..., None])[..., 0] + b2
        return A2 * A1, A2 * b1 + b2
    except ValueError:
        raise ValueError(
            f"combine: the leading dimensions of the two pairs do not broadcast; got {shapes}."
        ) from None


#: dtype kinds :func:`combine` computes with: signed and unsigned integers, floats, complex
_NUMBER_KINDS = "iufc"


def _pair_kind(A, b) -> str | None:
    """``"diag"`` or ``"dense"`` for a well-formed pair ``(A, b)``, else None."""
    if b.ndim < 1:
        return None
    D = b.shape[-1]
    if A.shape == b.shape:
        return "diag"
    if A.shape == (*b.shape, D):
        return "dense"
    return None
