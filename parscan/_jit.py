"""The one jit policy of the project.

Every CPU kernel in ``parscan``, ``models`` and ``autodiff`` is compiled through :func:`jit`
or :func:`jit_parallel`: on-disk caching (``PARSCAN_CACHE``), ``error_model="numpy"`` so that
division by zero gives inf/NaN as on CUDA instead of raising, and no ``fastmath`` reassociation
so that the sequential, threaded and CUDA backends agree. The exceptions are the SIMD BPTT
baselines (:mod:`autodiff._bptt_shplrnn`, :mod:`autodiff._bptt_alrnn`), whose sums are
reassociated so that they vectorise.
"""

import functools
import warnings

import numba

from parscan import _env

JIT_OPTIONS = {"cache": _env.CACHE, "error_model": "numpy", "nogil": True}


def jit(fn=None, **overrides):
    """``numba.njit`` with the project policy; usable bare or with keyword overrides."""
    options = {**JIT_OPTIONS, **overrides}
    if fn is None:
        return numba.njit(**options)
    return numba.njit(**options)(fn)


def jit_parallel(fn=None, **overrides):
    """Like :func:`jit` with ``parallel=True`` (for kernels whose outer loop is a ``prange``)."""
    return jit(fn, parallel=True, **overrides)


@functools.cache
def _thread_count_getter():
    """The threading layer's C getter of this thread's thread count, once the layer runs.

    ``numba.get_num_threads()`` takes a lock in ``_launch_threads`` on every call (1.6 us
    from Python, most of ``linear_scan(backend="auto")``'s dispatch on small scans); the
    getter behind it costs 0.14 us. It is a private name of Numba, so fall back to the
    public function if it ever moves.
    """
    numba.get_num_threads()  # launches the threading layer
    getter = getattr(numba.np.ufunc.parallel, "_get_num_threads", None)
    return getter if callable(getter) else numba.get_num_threads


def n_threads() -> int:
    """Number of threads ``prange`` kernels will use now (this Python thread's setting)."""
    n = _thread_count_getter()()
    return n if n > 0 else numba.get_num_threads()


def set_threads(n: int) -> int:
    """Use ``n`` threads in ``prange`` kernels called from this Python thread (capped at
    ``NUMBA_NUM_THREADS``; other Python threads keep theirs, as with
    ``numba.set_num_threads``); return it."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_threads: n must be a positive int; got {n!r}.")
    n = min(n, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(n)
    return n


def _limit_this_thread(n: int) -> None:
    """``PARSCAN_THREADS=n`` when Numba was imported before parscan (its pool is sized
    already): limit the importing Python thread, and say that the others keep the whole pool
    (when it is larger)."""
    used = set_threads(n)
    pool = numba.config.NUMBA_NUM_THREADS
    if pool > used:
        warnings.warn(
            f"PARSCAN_THREADS={n} limits only the Python thread that imported parscan (to "
            f"{used} of {pool} threads): Numba was imported first, so its thread pool keeps "
            f"all {pool} threads for every other Python thread. Import parscan before numba, "
            f"or set NUMBA_NUM_THREADS={used} instead.",
            RuntimeWarning,
            stacklevel=3,  # at import: the line importing parscan (or the module that did)
        )


if _env.THREADS is not None and not _env.POOL_SIZED:
    _limit_this_thread(_env.THREADS)
