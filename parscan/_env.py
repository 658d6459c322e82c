"""Environment variables read by parscan, validated in one place.

``PARSCAN_CACHE``   ``1`` (default) caches compiled kernels on disk (``cache=True``); ``0``
                    disables it.
``PARSCAN_THREADS`` number of CPU threads for ``prange`` kernels in every Python thread
                    (default: Numba's choice, i.e. ``NUMBA_NUM_THREADS``; see
                    :func:`parscan._jit._limit_every_thread`).
"""

import os


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


CACHE = _read_bool("PARSCAN_CACHE", True)
THREADS = _read_positive_int("PARSCAN_THREADS")
