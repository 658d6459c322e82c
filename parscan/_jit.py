"""The one jit policy of the project.

Every CPU kernel in ``parscan``, ``models`` and ``autodiff`` is compiled through :func:`jit`
or :func:`jit_parallel`: on-disk caching (``PARSCAN_CACHE``), ``error_model="numpy"`` so that
division by zero gives inf/NaN as on CUDA instead of raising, and no ``fastmath`` reassociation
so that the sequential, threaded and CUDA backends agree.
"""

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


def n_threads() -> int:
    """Number of threads ``prange`` kernels will use now."""
    return numba.get_num_threads()


def set_threads(n: int) -> int:
    """Use ``n`` threads in ``prange`` kernels (capped at ``NUMBA_NUM_THREADS``); return it."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_threads: n must be a positive int; got {n!r}.")
    n = min(n, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(n)
    return n


if _env.THREADS is not None:
    set_threads(_env.THREADS)
