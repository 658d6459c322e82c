"""Sizes of the scratch buffers of parscan's chunked kernels, and the memory this machine
has available for new buffers.

Imports nothing but the standard library, so that :mod:`autodiff.memory` can count these
buffers in its estimates without loading NumPy's or Numba's kernels.
"""

#: Most positions per call of ``model.step_and_jacobian`` in :func:`parscan.gtf.jacobian_norms`.
JACOBIAN_POSITIONS = 1 << 15
#: Most bytes of Jacobian buffers a call of :func:`parscan.gtf.jacobian_norms` holds (64 MiB;
#: fewer positions per call for a large M: 32,768 positions of M = 48 in float32 took 913 MB).
JACOBIAN_BYTES = 1 << 26


def jacobian_position_bytes(M: int, itemsize: int) -> int:
    """The buffer bytes per position of :func:`parscan.gtf.jacobian_norms`: its state and
    ``M x M`` Jacobian in a dtype of ``itemsize`` bytes, and a float64 copy of the Jacobian
    for a float32 one (the norm kernel runs in float64)."""
    return M * itemsize + M * M * (itemsize if itemsize == 8 else itemsize + 8)


def jacobian_chunk(P: int, M: int, itemsize: int) -> int:
    """Positions per call of :func:`parscan.gtf.jacobian_norms` for ``P`` positions (at least
    1, also for ``P = 0``): at most :data:`JACOBIAN_POSITIONS`, and at most
    :data:`JACOBIAN_BYTES` of buffers."""
    most = JACOBIAN_BYTES // jacobian_position_bytes(M, itemsize)
    return max(1, min(P, JACOBIAN_POSITIONS, most))


def available_bytes() -> int | None:
    """The memory available now for new allocations without swapping (``MemAvailable`` of
    ``/proc/meminfo``), in bytes; None where the system does not say (no ``/proc``)."""
    try:
        with open("/proc/meminfo") as fh:
            return next(
                int(line.split()[1]) * 1024 for line in fh if line.startswith("MemAvailable:")
            )
    except (OSError, StopIteration, ValueError, IndexError):
        return None


#: Allocations from this size on (64 MiB) are checked against the memory available now
#: first: Linux grants a larger one than it can back, and the work that fills it is then
#: killed (or swaps) instead of refused.
CHECKED_BYTES = 1 << 26


def short_of_memory(n_bytes: int) -> int | None:
    """The memory available now (:func:`available_bytes`) if an allocation of ``n_bytes``
    (at least :data:`CHECKED_BYTES`) exceeds it; None otherwise, and where the system does
    not say."""
    if n_bytes < CHECKED_BYTES:
        return None
    available = available_bytes()
    return available if available is not None and n_bytes > available else None
