"""Argument conventions shared by the public functions of every package (``parscan`` itself,
and through :mod:`models._checks` ``models`` and ``autodiff``): each function gives the one
sentence of a convention's problem, for callers that gather the problems of a call and raise
them together.

* a flag is ``True`` or ``False`` (a NumPy bool too), never a truthy value
  (:func:`bool_problem`);
* a seed is an int ``>= 0`` of at most 4300 digits, which a model file, a checkpoint and a
  run's ``args.json`` can write (:func:`seed_problem`);
* a masked array is refused where converting it would drop its mask and read the masked
  entries as data (:func:`masked_problem`), and so are ragged nested sequences, which form
  no array (:func:`array_and_problem`, :func:`as_host_array`).
"""

import math
import reprlib

import numpy as np

SEED_LIMIT = 10**4300
"""Seeds are below this, ints of at most 4300 digits: NumPy takes any int >= 0, but Python
converts no longer one to text (``sys.get_int_max_str_digits()``'s default), so a model file,
a checkpoint or ``args.json`` could not write it (after the training)."""


def bool_problem(value, name: str) -> str | None:
    """The problem with the flag ``value`` (one sentence naming ``name`` as the message
    writes it, e.g. ``"`throw`"``), or None when it is ``True`` or ``False`` (a NumPy bool
    too). Anything else is refused, truthy or not: ``0``/``1``, ``"False"``, ``None``."""
    if isinstance(value, bool | np.bool_):
        return None
    return (
        f"{name} must be a bool; got {type(value).__name__} {reprlib.repr(value)}. "
        "Pass True or False."
    )


def shown_int(v) -> str:
    """An int for a message: as written, or for one of more than 15 digits (an int of more
    than 4300 digits cannot be converted to text) its size."""
    if abs(v) < 10**15:
        return str(v)
    sign = "a negative" if v < 0 else "an"
    return f"{sign} int of about {round(abs(int(v)).bit_length() * math.log10(2))} digits"


def seed_problem(value: int, name: str = "seed") -> str | None:
    """The problem with the seed ``value``, an int (a NumPy integer too; the caller refuses
    other types): one sentence naming ``name`` as the message writes it, or None when it is
    ``>= 0`` with at most 4300 digits (below :data:`SEED_LIMIT`)."""
    if 0 <= value < SEED_LIMIT:
        return None
    return (
        f"{name} must be >= 0 with at most 4300 digits (model files, checkpoints and "
        f"args.json write it as text); got {shown_int(value)}."
    )


def masked_problem(x, name: str) -> str | None:
    """The problem with an array argument ``x`` that is a ``np.ma.MaskedArray`` (one sentence
    naming ``name`` as the message writes it), else None: converting it with ``np.asarray``
    would drop the mask and read the masked entries as data."""
    if not isinstance(x, np.ma.MaskedArray):
        return None
    bare = name.strip("`")
    return (
        f"{name} is a masked array, whose masked entries would be read as data; fill or drop "
        f"the masked entries first: {bare}.filled(value) with the values they should have, "
        f"or np.asarray({bare}) if nothing is masked."
    )


def array_and_problem(x, name: str) -> tuple[np.ndarray, str | None]:
    """``np.asarray(x)`` and the problem of a masked ``x`` (:func:`masked_problem`; its data
    are returned, so that a function gathering the problems of a call can run its other
    checks), or None. Ragged nested sequences, which form no array, raise ``ValueError`` (one
    sentence naming ``name``; the caller prefixes its function's name)."""
    masked = masked_problem(x, name)
    try:
        return np.asarray(x), masked
    except ValueError as exc:  # ragged nesting
        raise ValueError(
            f"{name} is not an array (nested sequences of unequal lengths: {exc}); pass an "
            "array_like of one shape."
        ) from None


def in_native_order(x: np.ndarray, dtype) -> np.ndarray:
    """``x`` converted to ``dtype`` when it holds ``dtype`` in the other byte order (e.g. read
    from a big-endian file: the same values, copied once); else ``x`` itself, for the caller's
    dtype check."""
    dtype = np.dtype(dtype)
    if x.dtype != dtype and x.dtype.newbyteorder("=") == dtype:
        return x.astype(dtype)
    return x


def in_model_dtype(x, arr: np.ndarray, name: str, dtype) -> tuple[np.ndarray, str | None]:
    """``arr`` (``np.asarray(x)``) for a model of ``dtype`` (float32/float64), and the problem
    (one sentence naming ``name``) or None.

    Input that has no dtype of its own -- a list, a tuple, a Python number -- of real numbers
    is converted to ``dtype``: a float32 model could not take a list otherwise (NumPy reads it
    as float64). Values that the conversion would turn into inf are the problem (``arr`` is
    then returned as it is). Arrays and everything else carrying a dtype (NumPy scalars,
    pandas objects) keep theirs, for the caller's dtype check, and so do lists of bools or
    complex numbers; an array of ``dtype`` in the other byte order is converted to it
    (:func:`in_native_order`).
    """
    if hasattr(x, "dtype") or arr.dtype.kind not in "iuf":
        return in_native_order(arr, dtype), None
    with np.errstate(over="ignore"):
        converted = arr.astype(dtype)
    if np.isinf(converted).sum() != np.isinf(arr).sum():
        return arr, (
            f"{name} has values too large for {np.dtype(dtype)} (they would become inf); the "
            f"largest is {np.abs(arr[np.isfinite(arr)]).max():.3g}. Scale them down, or use a "
            "float64 model (model.astype('float64'))."
        )
    return converted, None


def as_host_array(x, name: str) -> np.ndarray:
    """``np.asarray(x)``, refusing what it would silently change or cannot convert: a masked
    array (``TypeError``, :func:`masked_problem`) and ragged nested sequences (``ValueError``).
    The message is one sentence naming ``name``; the caller prefixes its function's name."""
    arr, masked = array_and_problem(x, name)
    if masked is not None:
        raise TypeError(masked)
    return arr
