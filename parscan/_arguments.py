"""Argument conventions shared by the public functions of every package (``parscan`` itself,
and through :mod:`models._checks` ``models`` and ``autodiff``): each function gives the one
sentence of a convention's problem, for callers that gather the problems of a call and raise
them together.

* a flag is ``True`` or ``False`` (a NumPy bool too), never a truthy value
  (:func:`bool_problem`);
* a masked array is refused where converting it would drop its mask and read the masked
  entries as data (:func:`masked_problem`), and so are ragged nested sequences, which form
  no array (:func:`array_and_problem`, :func:`as_host_array`).
"""

import reprlib

import numpy as np


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


def as_host_array(x, name: str) -> np.ndarray:
    """``np.asarray(x)``, refusing what it would silently change or cannot convert: a masked
    array (``TypeError``, :func:`masked_problem`) and ragged nested sequences (``ValueError``).
    The message is one sentence naming ``name``; the caller prefixes its function's name."""
    arr, masked = array_and_problem(x, name)
    if masked is not None:
        raise TypeError(masked)
    return arr
