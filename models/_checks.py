"""Argument checks shared by the public functions of :mod:`models` and :mod:`autodiff`.

A function that checks several arguments gathers their problems in one :class:`Checks` and
raises them together, so that one call shows every mistake::

    with Checks("ExponentialDecay") as checks:
        lr_start = checks.real(lr_start, "lr_start", positive=True)
        n_steps = checks.integer(n_steps, "n_steps")
    # leaving the block raises the problems found, if any

Each problem is one sentence naming the argument, what was expected and what was received;
the message is ``f"{where}: " + " ".join(problems)``, ``where`` naming the public function.
The exception is a ``TypeError`` when any problem is one of kind (a wrong type or dtype),
otherwise a ``ValueError`` (a value out of range, an unknown option, values that contradict
each other). A check that depends on other arguments runs only when they passed
(:meth:`Checks.ok`); checks that raise on their own join in through :meth:`Checks.caught`.
:func:`check_int`, :func:`check_seed`, :func:`check_float_dtype`, :func:`check_bool`,
:func:`check_path` and :func:`as_array` check a single value in the same way. Functions that
gather their problems in lists of their own take the sentence of a convention from
:mod:`parscan._arguments` (``bool_problem``: a flag is ``True`` or ``False``, a NumPy bool
too, never a truthy value; ``seed_problem``: a seed has at most 4300 digits; ``masked_problem``:
a masked array is refused where its mask would be dropped), as :class:`Checks` does;
:func:`refusal` words a setting given where it does not apply.
"""

import contextlib
import math
import os
from pathlib import Path

import numpy as np

from parscan._arguments import as_host_array, bool_problem, in_model_dtype, seed_problem, shown_int

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def refusal(given: dict, scope: str, reason: str) -> str:
    """``"<name>=<value>, ... apply to <scope> only; <reason>; drop them"``: the refusal of
    the settings ``given`` (name -> value) where they do not apply."""
    one = len(given) == 1
    settings = ", ".join(f"{name}={value!r}" for name, value in given.items())
    return (
        f"{settings} {'applies' if one else 'apply'} to {scope} only; {reason}; drop "
        f"{'it' if one else 'them'}"
    )


class Checks:
    """The problems with the arguments of one public function, raised together.

    The checking methods return the value converted when it passes, and the value as given
    when it does not: then they record the problem and mark the argument bad (see :meth:`ok`),
    so the caller goes on checking the other arguments. As a context manager, leaving the
    block calls :meth:`raise_problems` (unless an exception is already on its way out).

    Parameters
    ----------
    where : str
        The public function or constructor the messages name, e.g. ``"Adam"``.

    Attributes
    ----------
    problems : list of str
        The problems found so far, one sentence each, in the order of the checks.
    """

    def __init__(self, where: str):
        self.where = where
        self.problems: list[str] = []
        self._bad: set[str] = set()
        self._wrong_kind = False

    def __enter__(self) -> "Checks":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.raise_problems()

    def add(self, problem: str, *names: str, wrong_kind: bool = False) -> None:
        """Record ``problem`` and mark the arguments ``names`` bad.

        Parameters
        ----------
        problem : str
            One sentence: the argument, what was expected, what was received (and the fix).
        *names : str
            The arguments at fault; checks that depend on them are skipped (:meth:`ok`).
        wrong_kind : bool
            A problem of type or dtype, which makes the exception a ``TypeError``.
        """
        self.problems.append(problem)
        self._bad.update(names)
        self._wrong_kind |= wrong_kind

    @contextlib.contextmanager
    def caught(self, *names: str):
        """Record instead of raising the ``TypeError`` or ``ValueError`` of a check inside the
        block that raises on its own (a helper shared with callers of one argument, such as
        an array check), marking the arguments ``names`` bad. The message loses its
        ``f"{where}: "`` prefix; subclasses of the two (errors with a meaning of their own)
        pass through."""
        try:
            yield
        except (TypeError, ValueError) as exc:
            if type(exc) not in (TypeError, ValueError):
                raise
            problem = str(exc).removeprefix(f"{self.where}: ")
            self.add(problem, *names, wrong_kind=type(exc) is TypeError)

    def ok(self, *names: str) -> bool:
        """Whether none of the arguments ``names`` has a problem; a check that uses them
        (e.g. compares one with another) runs only then, so that a bad value gives no
        confusing follow-up message."""
        return self._bad.isdisjoint(names)

    def raise_problems(self) -> None:
        """Raise the problems found, if any: ``TypeError`` when one of them is of kind,
        else ``ValueError``, with the message ``f"{where}: " + " ".join(problems)``."""
        if self.problems:
            error = TypeError if self._wrong_kind else ValueError
            raise error(f"{self.where}: " + " ".join(self.problems))

    def integer(self, value, name: str, minimum: int = 1):
        """``value`` as an ``int`` >= ``minimum`` (NumPy integers accepted, ``bool`` refused)."""
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            self.add(f"{name} must be an int; got {type(value).__name__}.", name, wrong_kind=True)
        elif value < minimum:
            self.add(f"{name} must be >= {minimum}; got {shown_int(value)}.", name)
        else:
            return int(value)
        return value

    def seed(self, value, name: str = "seed"):
        """``value`` as an ``int >= 0`` of at most 4300 digits
        (:func:`parscan._arguments.seed_problem`; NumPy integers accepted, ``bool`` refused)."""
        value = self.integer(value, name, 0)
        problem = seed_problem(value, name) if self.ok(name) else None
        if problem is not None:
            self.add(problem, name)
        return value

    def real(self, value, name: str, *, positive: bool):
        """``value`` as a finite ``float``, ``> 0`` if ``positive`` else ``>= 0`` (``bool``
        refused)."""
        if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
            self.add(
                f"{name} must be a real number; got {type(value).__name__}.", name, wrong_kind=True
            )
            return value
        number = float(value)
        if not math.isfinite(number) or (number <= 0 if positive else number < 0):
            bound = "> 0" if positive else ">= 0"
            self.add(f"{name} must be finite and {bound}; got {number}.", name)
            return value
        return number

    def boolean(self, value, name: str):
        """``value`` as a Python ``bool`` if it is ``True``/``False`` or a NumPy bool
        (:func:`bool_problem`)."""
        problem = bool_problem(value, name)
        if problem is not None:
            self.add(problem, name, wrong_kind=True)
            return value
        return bool(value)

    def array(self, x, name: str):
        """``np.asarray(x)`` unless ``x`` is a masked array or ragged nested sequences that
        form no array (:func:`parscan._arguments.as_host_array`), or the tuple ``(x_std,
        mean, sd)`` of :func:`models.standardize` (a slip for its first element, which
        NumPy would call ragged)."""
        if _is_standardize_result(x):
            self.add(
                f"{name} must be an array; got a tuple of a {x[0].shape} array and two "
                f"{x[1].shape} arrays, as models.standardize returns; pass its first element "
                "(x_std, mean, sd = standardize(x)).",
                name,
                wrong_kind=True,
            )
            return x
        with self.caught(name):
            return as_host_array(x, name)
        return x

    def path(self, value, name: str = "path"):
        """``value`` as a :class:`pathlib.Path` if it is a non-empty str or path-like object
        (``Path("")`` would silently name the working directory)."""
        if not isinstance(value, str | os.PathLike):
            self.add(
                f"{name} must be a str or Path; got {type(value).__name__}.", name, wrong_kind=True
            )
            return value
        if not os.fspath(value):
            self.add(f"{name} must not be empty (it would name the working directory).", name)
            return value
        return Path(value)

    def choice(self, value, name: str, options: tuple):
        """``value`` if it is one of ``options``."""
        if not isinstance(value, str) or value not in options:  # (an array: no truth value)
            self.add(f"{name} must be one of {options}; got {value!r}.", name)
        return value

    def float_dtype(self, value):
        """The argument ``dtype`` as a NumPy dtype if it is (native) float32/float64. ``None``
        is refused (NumPy would read it as float64), and so is a NumPy scalar such as
        ``np.float64(0.5)`` (NumPy would read its dtype: a value passed for a type)."""
        try:
            scalar = isinstance(value, np.generic) and not isinstance(value, str | bytes)
            dtype = None if value is None or scalar else np.dtype(value)
        except (TypeError, ValueError):
            dtype = None
        if dtype is None or dtype not in FLOAT_DTYPES:  # (``None in FLOAT_DTYPES`` is True)
            got = dtype if dtype is not None else repr(value)
            self.add(
                f"dtype must be float32 or float64 (e.g. dtype='float32'); got {got}.",
                "dtype",
                wrong_kind=True,
            )
            return value
        return dtype


def _is_standardize_result(x) -> bool:
    """Whether ``x`` is shaped like the ``(x_std, mean, sd)`` that :func:`models.standardize`
    returns: a tuple of a 2-D array and two 1-D arrays of its width."""
    return (
        isinstance(x, tuple)
        and len(x) == 3
        and all(isinstance(a, np.ndarray) for a in x)
        and x[0].ndim == 2
        and x[1].shape == x[2].shape == (x[0].shape[1],)
    )


def check_finite_windows(data: np.ndarray, where: str) -> None:
    """Raise ``ValueError`` naming ``where`` and the first NaN/inf entry of the training
    windows ``data`` (B, T+1, N)."""
    if not np.all(np.isfinite(data)):
        first = ", ".join(str(i) for i in np.argwhere(~np.isfinite(data))[0])
        raise ValueError(
            f"{where}: data contains NaN or inf (first at data[{first}]). Clean the trajectory "
            "before windowing it."
        )


def check_int(value, name: str, where: str, minimum: int = 1) -> int:
    """``value`` as an ``int`` >= ``minimum``, else raise (see :meth:`Checks.integer`)."""
    with Checks(where) as checks:
        value = checks.integer(value, name, minimum)
    return value


def check_seed(value, where: str, name: str = "seed") -> int:
    """``value`` as an ``int`` seed, else raise (see :meth:`Checks.seed`)."""
    with Checks(where) as checks:
        value = checks.seed(value, name)
    return value


def check_float_dtype(dtype, where: str) -> np.dtype:
    """``dtype`` as a float32/float64 NumPy dtype, else raise ``TypeError`` naming ``where``
    (see :meth:`Checks.float_dtype`)."""
    with Checks(where) as checks:
        dtype = checks.float_dtype(dtype)
    return dtype


def check_bool(value, name: str, where: str) -> bool:
    """``value`` as a Python ``bool``, else raise ``TypeError`` naming ``where`` (see
    :meth:`Checks.boolean`)."""
    with Checks(where) as checks:
        value = checks.boolean(value, name)
    return value


def as_array(x, name: str, where: str, dtype=None) -> np.ndarray:
    """``np.asarray(x)``, refusing a masked array (``TypeError``) and ragged nesting
    (``ValueError``) with messages naming ``where`` (see :meth:`Checks.array`).

    With ``dtype`` (a model's float32/float64), input that has no dtype of its own -- a list,
    a tuple, a Python number -- of real numbers is converted to it, and values that would
    become inf are refused with ``ValueError`` (:func:`parscan._arguments.in_model_dtype`).
    """
    with Checks(where) as checks:
        arr = checks.array(x, name)
    if dtype is None:
        return arr
    arr, problem = in_model_dtype(x, arr, name, dtype)
    if problem is not None:
        raise ValueError(f"{where}: {problem}")
    return arr


def check_path(value, where: str, name: str = "path") -> Path:
    """``value`` (the argument ``name``) as a :class:`pathlib.Path`, else raise naming
    ``where`` (see :meth:`Checks.path`)."""
    with Checks(where) as checks:
        value = checks.path(value, name)
    return value


def not_numeric(x, arr: np.ndarray, where: str, what: str) -> None:
    """Raise ``TypeError`` naming ``where`` when ``arr`` (``np.asarray(x)``) holds no numbers
    at all (``None``, a string, a dict: object or text dtype), before a shape check would
    describe it as an array of shape ``()``."""
    if arr.dtype.kind in "OUSV":
        shown = f" {x!r}" if isinstance(x, str | None) else f" (dtype {arr.dtype})" * (arr.ndim > 0)
        raise TypeError(
            f"{where}: {what} must be a real numeric array; got {type(x).__name__}{shown}."
        )
