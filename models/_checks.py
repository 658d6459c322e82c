"""Argument checks shared by the public functions of :mod:`models` (one definition each).

Each raises ``TypeError`` for a value of the wrong kind and ``ValueError`` for one out of
range, naming the public function (``where``) and the argument (``name``).
"""

import math

import numpy as np


def check_int(value, name: str, where: str, minimum: int = 1) -> int:
    """``value`` as an ``int`` >= ``minimum`` (NumPy integers accepted, ``bool`` refused)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{where}: {name} must be an int; got {type(value).__name__}.")
    if value < minimum:
        raise ValueError(f"{where}: {name} must be >= {minimum}; got {value}.")
    return int(value)


def check_real(value, name: str, where: str, *, positive: bool) -> float:
    """``value`` as a finite ``float``, ``> 0`` if ``positive`` else ``>= 0``."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{where}: {name} must be a real number; got {type(value).__name__}.")
    value = float(value)
    if not math.isfinite(value) or (value <= 0 if positive else value < 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{where}: {name} must be finite and {bound}; got {value}.")
    return value


def check_choice(value, name: str, where: str, options: tuple):
    """``value`` if it is one of ``options``."""
    if value not in options:
        raise ValueError(f"{where}: {name} must be one of {options}; got {value!r}.")
    return value
