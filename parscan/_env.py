"""Environment variables read by parscan, validated in one place.

``PARSCAN_CACHE``   ``1`` (default) caches compiled kernels on disk (``cache=True``); ``0``
                    disables it.
``PARSCAN_THREADS`` number of CPU threads for ``prange`` kernels in every Python thread
                    (default: Numba's choice, i.e. ``NUMBA_NUM_THREADS``): read before
                    Numba is imported, it sizes Numba's thread pool (see
                    :func:`_size_numba_pool`).

This module imports nothing but the standard library, and every package of the project
imports it first (through ``parscan/__init__.py``), so that it runs before Numba reads its
configuration.
"""

import os
import sys


def _read_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if raw.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"parscan: environment variable {name}={raw!r} must be 0 or 1.")


def _read_positive_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(
            f"parscan: environment variable {name}={raw!r} must be a positive integer."
        )
    return value


def _numba_default_threads() -> int:
    """The pool size Numba chooses without ``NUMBA_NUM_THREADS``: the CPUs this process may
    run on (``numba.core.config.NUMBA_DEFAULT_NUM_THREADS``)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _size_numba_pool(n: int) -> bool:
    """``PARSCAN_THREADS=n``: make Numba's thread pool ``n`` threads (capped at the pool it
    would have) by setting ``NUMBA_NUM_THREADS`` before Numba is imported; also inherited by
    child processes. ``numba.set_num_threads`` could only limit the calling Python thread
    (others start with the whole pool). Returns False when Numba was imported already (its
    configuration is read): :mod:`parscan._jit` then limits the importing thread and says
    so."""
    if "numba" in sys.modules:
        return False
    given = os.environ.get("NUMBA_NUM_THREADS", "").strip()
    pool = int(given) if given.isdigit() and int(given) > 0 else _numba_default_threads()
    os.environ["NUMBA_NUM_THREADS"] = str(min(n, pool))
    return True


CACHE = _read_bool("PARSCAN_CACHE", True)
THREADS = _read_positive_int("PARSCAN_THREADS")
#: PARSCAN_THREADS sized Numba's pool (False: unset, or Numba was imported first)
POOL_SIZED = THREADS is not None and _size_numba_pool(THREADS)
