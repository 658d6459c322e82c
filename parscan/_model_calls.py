"""The model contract the DEER solver and the alpha estimate rely on, and the one call they
make into a user's model, both checked.

``model.step_and_jacobian(z, diag=diag, out=(f, j))`` writes ``F(z)`` and its Jacobian into
the buffers ``out`` and returns them (the contract of ``models.base.LatentRNN``, which every
model in ``models/`` keeps). A model that returns new arrays instead would leave the buffers
as ``np.empty`` made them, and the solver would read garbage as ``F`` and ``J`` (a
"converged" solve of all zeros); its arrays are copied into the buffers, and a result that
is no such pair is refused.
"""

import numpy as np


def check_latent_rnn(model, methods: tuple[str, ...], where: str) -> None:
    """Raise ``TypeError`` (starting with ``where``, naming each problem) unless ``model``
    follows the ``models.base.LatentRNN`` contract that ``where`` relies on: an int ``M``,
    a ``dtype`` that is a ``np.dtype`` instance (``np.float64``, the scalar type, is not: it
    compares and hashes differently) and the methods ``methods``."""
    M = getattr(model, "M", None)
    dtype = getattr(model, "dtype", None)
    problems = []
    if not isinstance(M, int | np.integer) or isinstance(M, bool):
        problems.append(f"M must be an int; got {M!r}")
    if not isinstance(dtype, np.dtype):
        hint = ""
        try:
            hint = f" (np.dtype({np.dtype(dtype).name!r}))" if dtype is not None else ""
        except (TypeError, ValueError):  # names no dtype at all: no hint
            pass
        problems.append(f"dtype must be a np.dtype instance{hint}; got {dtype!r}")
    missing = [name for name in methods if not callable(getattr(model, name, None))]
    if missing:
        problems.append(f"missing method(s) {', '.join(missing)}")
    if problems:
        raise TypeError(
            f"{where}: `model` must follow the LatentRNN contract (attributes M, dtype and "
            f"methods {', '.join(methods)}); {type(model).__name__}: {'; '.join(problems)}."
        )


def step_and_jacobian_into(model, z: np.ndarray, diag: bool, out: tuple, where: str) -> None:
    """Evaluate ``F(z)`` and ``J(z)`` of ``model`` into ``out = (f, j)``.

    Parameters
    ----------
    model : LatentRNN
        Provides ``step_and_jacobian(z, diag=diag, out=(f, j))`` returning ``(F, J)``.
    z : ndarray, shape (..., M)
        States of the model dtype.
    diag : bool
        Only the diagonal of ``J`` (``j`` of shape ``(..., M)``) instead of ``(..., M, M)``.
    out : tuple of ndarray
        ``(f, j)``: ``f`` of ``z``'s shape, ``j`` of shape ``(..., M)`` or ``(..., M, M)``.
    where : str
        The public function whose message a refusal starts with.

    Raises
    ------
    TypeError
        The model returned no pair of arrays, or arrays of another kind (complex for a real
        model).
    ValueError
        A returned array's shape is not its buffer's.
    """
    result = model.step_and_jacobian(z, diag=diag, out=out)
    call = f"model.step_and_jacobian(z, diag={diag}, out=(F, J))"
    if not (isinstance(result, tuple | list) and len(result) == 2):
        raise TypeError(
            f"{where}: {call} must return the pair (F, J) it wrote into out; got "
            f"{type(result).__name__}. Write F(z) and its Jacobian into out and return them."
        )
    for name, got, buffer in zip(("F", "J"), result, out, strict=True):
        if got is buffer:
            continue
        got = np.asarray(got)
        if not np.can_cast(got.dtype, buffer.dtype, casting="same_kind"):
            raise TypeError(
                f"{where}: {call} returned {name} of dtype {got.dtype}; expected "
                f"{buffer.dtype}, the model's. Write F(z) and its Jacobian into out and "
                "return them."
            )
        if got.shape != buffer.shape:
            raise ValueError(
                f"{where}: {call} returned {name} of shape {got.shape}; expected "
                f"{buffer.shape}{' (the diagonal of J only)' * (diag and name == 'J')}. "
                "Write F(z) and its Jacobian into out and return them."
            )
        buffer[...] = got
