"""The memory a training step, a validation and the selection check need, estimated before
a run starts (:func:`autodiff.fit`, ``parscan-train``), and the memory this machine has
available now.

Imports nothing heavier than the standard library, so that the command line can check its
settings before NumPy's and Numba's kernels are loaded.
"""

from parscan._buffers import available_bytes, jacobian_chunk, jacobian_position_bytes

__all__ = [
    "available_bytes",
    "free_run_step_bytes",
    "rnn_step_bytes",
    "runs_per_batch",
    "selection_bytes",
    "ssm_step_bytes",
    "step_bytes",
    "training_step_bytes",
    "validation_bytes",
]

#: Elements (runs x steps x latents) of one batch of the selection check's free runs
#: (:mod:`autodiff.selection`; bounds their memory).
SELECTION_BATCH_ELEMENTS = 1 << 24
#: Bytes per observation that scoring a free run's step (D_stsp, D_H) holds: about 6 float64
#: numbers (``tracemalloc`` measured 41-46 bytes for N = 3, 42 for N = 12).
SCORED_OBSERVATION_BYTES = 48


def training_step_bytes(
    kind: str,
    B: int,
    T: int,
    n_obs: int,
    M: int,
    L: int,
    itemsize: int,
    deer: bool,
    auto_alpha: bool,
) -> int:
    """An estimate of the bytes one training step (:func:`autodiff.fit`) allocates at its
    peak: :func:`step_bytes` of ``B`` windows of ``T`` steps with ``n_obs`` observations in
    a dtype of ``itemsize`` bytes, for a latent RNN (``kind`` ``"rnn"``, ``M`` latents,
    trained with GTF-DEER if ``deer``; :func:`rnn_step_bytes`) or a ``"linear"`` or
    ``"selective"`` state-space model (state size ``M``, readout width ``L``;
    :func:`ssm_step_bytes`); plus, for a latent RNN whose alpha is re-estimated
    (``auto_alpha``), the Jacobian buffers of that estimate over the batch
    (:func:`parscan._buffers.jacobian_chunk`, at most 64 MiB)."""
    if kind != "rnn":
        return step_bytes(B, T, n_obs, itemsize, ssm_step_bytes(kind, n_obs, M, L, itemsize))
    need = step_bytes(B, T, n_obs, itemsize, rnn_step_bytes(M, itemsize, deer))
    if auto_alpha:
        positions = jacobian_chunk(B * T, M, itemsize)
        need += positions * jacobian_position_bytes(M, itemsize) + B * T * 8  # and the norms
    return need


def step_bytes(B: int, T: int, n_obs: int, itemsize: int, per_step: int) -> int:
    """An estimate of the bytes one training step allocates at its peak, for ``B`` windows of
    ``T`` steps (``sequence_length``) with ``n_obs`` observations in a dtype of ``itemsize``
    bytes: the windows' row indices, ``(B, T + 1)`` int64, and values, ``(B, T + 1, n_obs)``,
    and ``per_step`` bytes of the gradient's arrays per window step (:func:`rnn_step_bytes`,
    :func:`ssm_step_bytes`)."""
    return B * (T + 1) * (8 + n_obs * itemsize) + B * T * per_step


def rnn_step_bytes(M: int, itemsize: int, deer: bool) -> int:
    """The bytes per window step of a latent RNN's gradient (``M`` latents, a dtype of
    ``itemsize`` bytes), for :func:`step_bytes`: ``M (M + 5)`` numbers for GTF-DEER
    (``deer``), whatever its ``jacobian`` (the adjoint holds every step's M x M Jacobian; the
    peak ``bench/memory.py`` measures, README "Memory"), and ``6 M`` otherwise (sequential
    BPTT). A hidden layer adds no per-step array."""
    return (M * (M + 5) if deer else 6 * M) * itemsize


def ssm_step_bytes(kind: str, n_obs: int, H: int, L: int, itemsize: int) -> int:
    """The bytes per window step of a state-space model's loss and gradient
    (:func:`autodiff.ssm_gradients.ssm_loss_and_grad`), for :func:`step_bytes`: a
    ``"linear"`` or ``"selective"`` SSM with ``n_obs`` observations, state size ``H`` and a
    readout of hidden width ``L``, in a dtype of ``itemsize`` bytes.

    The larger of its two peaks, in real numbers a step, with ``D`` the scan's reals a step
    (``2 H`` complex states, or ``N H``: a state of size ``H`` per channel): the adjoint's
    scans, ``7 D + 2 L`` (linear) or ``9 D + 4 H + L`` (selective, whose coefficients vary in
    time), and the readout's gradient, ``2 D + 3 L`` or ``4 D + 4 H + 3 L``, plus a boolean
    mask (``L`` bytes); then ``8 N + 16`` numbers for the small arrays. An upper envelope of
    the ``tracemalloc`` peaks of ``N`` 1-8, ``H`` 2-80, ``L`` 10-1000 (at most about 40 %
    above them; ``tests/test_train.py`` checks 60 %).
    """
    if kind == "linear":
        D = 2 * H
        scan, readout = 7 * D + 2 * L, 2 * D + 3 * L
    else:
        D = n_obs * H
        scan, readout = 9 * D + 4 * H + L, 4 * D + 4 * H + 3 * L
    return max(scan * itemsize, readout * itemsize + L) + (8 * n_obs + 16) * itemsize


def free_run_step_bytes(width: int, n_obs: int, itemsize: int) -> int:
    """The bytes of one step of a free run that is scored against data: its ``width``
    latents (a state-space model: its observations) and ``n_obs`` observations in a dtype of
    ``itemsize`` bytes, and the float64 copy scored."""
    return (width + n_obs) * itemsize + n_obs * 8


def validation_bytes(
    n_parts: int, starts: int, steps: int, width: int, n_obs: int, itemsize: int
) -> int:
    """An estimate of the bytes one validation (:func:`autodiff.validation.validate`) holds:
    ``starts`` free runs of ``steps`` steps from each of ``n_parts`` validation trajectories,
    each step :func:`free_run_step_bytes` or, more, what scoring it holds
    (:data:`SCORED_OBSERVATION_BYTES` an observation)."""
    step = max(free_run_step_bytes(width, n_obs, itemsize), SCORED_OBSERVATION_BYTES * n_obs)
    return n_parts * starts * steps * step


def runs_per_batch(steps: int, width: int) -> int:
    """Selection runs of ``steps`` steps of ``width`` latents (a state-space model: its
    observations) generated at once: at most :data:`SELECTION_BATCH_ELEMENTS` elements, at
    least one run."""
    return max(1, SELECTION_BATCH_ELEMENTS // (steps * width))


def selection_bytes(starts: int, steps: int, width: int, n_obs: int, itemsize: int) -> int:
    """An estimate of the bytes the selection check (:func:`autodiff.selection.select`)
    holds: ``starts`` free runs of ``steps`` steps, generated :func:`runs_per_batch` at a
    time (each step :func:`free_run_step_bytes`), and their starting points (an index and
    ``n_obs`` float64 numbers each)."""
    batch = min(starts, runs_per_batch(steps, width)) * steps
    return batch * free_run_step_bytes(width, n_obs, itemsize) + starts * (8 + 8 * n_obs)
