"""The memory a training step needs, estimated before a run starts (:func:`autodiff.fit`,
``parscan-train``), and the memory this machine has available now.

Imports nothing heavier than the standard library, so that the command line can check its
settings before NumPy's and Numba's kernels are loaded.
"""


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


def step_bytes(B: int, T: int, M: int, n_obs: int, itemsize: int, deer: bool) -> int:
    """An estimate of the bytes one training step allocates at its peak, for ``B`` windows of
    ``T`` steps (``sequence_length``) of a model with ``M`` latents (a state-space model: the
    real numbers of its scan's state a step, :func:`ssm_width`) and ``n_obs`` observations,
    computed in a dtype of ``itemsize`` bytes.

    The windows' row indices, ``(B, T + 1)`` int64, and values, ``(B, T + 1, n_obs)``, and
    the gradient's arrays: ``M (M + 5)`` numbers per window step for GTF-DEER (``deer``),
    whatever its ``jacobian`` (the adjoint holds every step's M x M Jacobian; the peak
    ``bench/memory.py`` measures, README "Memory"), and ``6 M`` otherwise (sequential BPTT,
    a state-space model's scans). A hidden layer adds no per-step array.
    """
    per_step = M * (M + 5) if deer else 6 * M
    return B * (T + 1) * (8 + n_obs * itemsize) + B * T * per_step * itemsize


def ssm_width(kind: str, n_obs: int, H: int) -> int:
    """The real numbers a step of a state-space model's scan holds, for :func:`step_bytes`:
    ``2 H`` for a ``"linear"`` SSM (complex states), ``N H`` for a ``"selective"`` one (a
    state of size ``H`` per observed channel)."""
    return 2 * H if kind == "linear" else n_obs * H
