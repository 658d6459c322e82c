"""Loading, validating and standardising trajectories (DESIGN.md section 8).

A dataset is one trajectory, a ``(T, N)`` array: T time steps of N observed dimensions, or
several recordings of one system, a list of such arrays (:func:`several_trajectories`), which
``fit`` and ``evaluate`` take as they are, never concatenated.
"""

import csv
import itertools
import keyword
import re
import stat
import zipfile
import zlib
from pathlib import Path

import numpy as np

from models._checks import Checks, as_array

SUFFIXES = (".npy", ".npz", ".csv", ".txt")
#: How :func:`check_trajectory` ends the refusal of a constant dimension by default.
CONSTANT_REASON = "a constant dimension cannot be standardised or modelled. Drop it."


class MissingFileError(FileNotFoundError, ValueError):
    """A file to read does not exist: a ``FileNotFoundError``, as ``open`` raises, and a
    ``ValueError``, like every other refusal of the function (``models.load_data``,
    ``models.load``, a model's ``load``, ``autodiff.checkpoint.load_checkpoint``); the message
    names the function and the path."""


class ArrayChoiceError(ValueError):
    """:func:`load_data`: an ``.npz`` archive holds several arrays and no ``key`` chose one, or
    it has no array ``key``.

    Attributes
    ----------
    names : list of str
        The arrays in the archive.
    """

    def __init__(self, message: str, names: list[str]):
        super().__init__(message)
        self.names = names

    def __reduce__(self):
        """Pickled with its names (``multiprocessing`` sends it to the caller)."""
        return type(self), (str(self), self.names)


def check_trajectory(
    x,
    where: str,
    *,
    name: str = "x",
    min_steps: int = 2,
    constant: bool = False,
    row_label=None,
    n_obs: int | None = None,
    wide: bool = True,
    constant_reason: str = CONSTANT_REASON,
    steps_reason: str = "",
):
    """Validate an in-memory trajectory and return it as an ndarray (dtype unchanged).

    Parameters
    ----------
    x : array_like, shape (T, N)
        Real-valued (integer or floating) trajectory.
    where : str
        Public function name used in error messages.
    name : str
        The argument's name in error messages. Fixes are written as code (``x[:, None]``) only
        when it is a Python identifier; a description (``"the data in x.npy"``) gets them in
        words.
    min_steps : int
        Smallest admissible T (>= 1).
    constant : bool
        Whether a dimension that is constant over time is allowed. A column counts as
        constant when its standard deviation is at most ``1e-12`` times its largest magnitude
        (rounding noise that standardising would blow up to unit scale).
    row_label : callable, optional
        Maps a row index to the words that locate it in messages (default ``"row i"``, with
        the column index; :func:`load_data` passes the line of a text file, whose field is
        then counted from 1 as the line is).
    n_obs : int, optional
        The number of columns the caller's model observes (its ``N``); a trajectory with
        another number is refused, with the hint to transpose it when it looks transposed
        (``1 < T < N``) and its ``T`` rows match ``n_obs``.
    wide : bool
        Whether fewer time steps than dimensions (``1 < T < N``) are allowed; False refuses
        them as a transposed array, with the hint to transpose it (for callers without a
        model's ``N`` to compare with whose result would be meaningless for so few points,
        e.g. the DSR measures).
    constant_reason : str
        How the refusal of a constant dimension (``constant=False``) ends: why the caller
        needs non-constant dimensions, and the fix.
    steps_reason : str
        Why the caller needs ``min_steps`` steps, and the fix: sentences (with a leading
        space) that end the refusal of a shorter trajectory.

    Raises
    ------
    TypeError
        Not a real numeric array (bool, complex, structured, object, str).
    ValueError
        Not 2-D, fewer than ``min_steps`` steps (with a hint to transpose when
        ``1 <= T < N``) or no dimension, fewer steps than dimensions with ``wide=False``,
        another number of columns than ``n_obs``, NaN/inf
        (the first bad row and column are reported), or a constant dimension when
        ``constant=False``.
    """
    arr = as_array(x, name, where)  # refuses a masked array, ragged nested lists
    code = name.isidentifier() and not keyword.iskeyword(name)  # the fix must be valid code
    if arr.dtype.kind not in "iuf":
        fixes = {"b": f"{name}.astype(np.float64)", "c": f"{name}.real or np.abs({name})"}
        if arr.dtype.names is not None:
            fixes["V"] = f"numpy.lib.recfunctions.structured_to_unstructured({name})"
        fix = fixes.get(arr.dtype.kind)
        hint = f"Convert it, e.g. with {fix}." if code and fix else "Convert it to real numbers."
        raise TypeError(
            f"{where}: {name} must be a real numeric array; got dtype {arr.dtype}. {hint}"
        )
    if arr.ndim != 2:
        if arr.ndim == 1:
            fix = f"Use {name}[:, None]" if code else "Reshape it to (T, 1)"
            hint = f" {fix} for a single series."
        else:
            hint = " Pass one trajectory, one row per time step."
        raise ValueError(
            f"{where}: {name} must be 2-D of shape (T, N); got shape {arr.shape}.{hint}"
        )
    n_steps, n_dims = arr.shape
    if n_dims == 0:
        raise ValueError(f"{where}: {name} has no dimensions (shape {arr.shape}).")
    fix = f"{f'pass {name}.T' if code else 'transpose it'} (one row per time step)"
    transposed = f"Shape {arr.shape} looks transposed: {fix}."
    if n_steps < min_steps:
        hint = ""
        if n_steps == 1 < n_dims and n_dims != n_obs:  # n_obs values: one time step
            hint = f" If its {n_dims} values are one series, {fix}."
        elif n_dims != n_obs and _looks_transposed(arr.shape):
            hint = f" {transposed}"
        raise ValueError(
            f"{where}: {name} has {n_steps} time step{'s' * (n_steps != 1)}; at least "
            f"{min_steps} {'are' if min_steps != 1 else 'is'} needed here.{steps_reason}{hint}"
        )
    if not wide and _looks_transposed(arr.shape):
        raise ValueError(
            f"{where}: {name} has fewer time steps ({n_steps}) than dimensions ({n_dims}). "
            f"{transposed}"
        )
    if n_obs is not None and n_dims != n_obs:
        if _looks_transposed(arr.shape) and n_steps == n_obs:
            hint = transposed
        else:
            hint = f"Pass a (T, {n_obs}) trajectory or use a model with n_obs={n_dims}."
        raise ValueError(
            f"{where}: {name} has {n_dims} columns but the model observes N = {n_obs}. {hint}"
        )
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            # array indices from 0; a text file's line and field from 1, as an editor counts
            at = f"row {row}, column {col}"
            if row_label is not None:
                at = f"{row_label(int(row))}, field {col + 1}"
            raise ValueError(
                f"{where}: {name} contains {int(bad.sum())} NaN/inf value(s); the first is "
                f"{arr[row, col]} at {at}. Clean or interpolate the data."
            )
        check_in_range(arr, np.float64, where, name, "float64 (which parscan computes in)")
    if not constant:
        _check_not_constant(arr, column_mean_sd(arr)[1], where, name, constant_reason)
    return arr


def check_in_range(arr: np.ndarray, dtype, where: str, name: str, what: str, fix="") -> None:
    """Refuse a finite ``arr`` (T, N) with a value beyond the range of ``dtype`` (a longdouble
    beyond float64, data beyond a float32 model's), which would become inf once converted:
    ``ValueError`` naming ``where``, the first such value and ``what`` the dtype is."""
    largest = np.finfo(dtype).max
    if arr.dtype.kind != "f" or np.finfo(arr.dtype).max <= largest:
        return
    beyond = np.abs(arr) > largest
    if beyond.any():
        row, col = np.argwhere(beyond)[0]
        raise ValueError(
            f"{where}: {name}[{row}, {col}] = {arr[row, col]!s} is beyond the range of {what}; "
            f"{fix or 'rescale the data'}."
        )


def several_trajectories(x) -> bool:
    """Is ``x`` several trajectories: a non-empty list or tuple of 2-D array_likes (arrays, or
    nested lists such as ``[x_1.tolist(), x_2.tolist()]``)? Anything else is read as one
    array_like trajectory, a list of rows included."""
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(_ndim(a) == 2 for a in x)


def _ndim(a) -> int | None:
    """The number of dimensions of the array_like ``a`` (None for a ragged nested list, or
    an object that is neither an array nor a list or tuple)."""
    if isinstance(a, (list, tuple)):
        try:
            return np.ndim(a)
        except ValueError:  # ragged: NumPy refuses to make it an array
            return None
    return getattr(a, "ndim", None)


def check_trajectory_or_list(x, where: str, name: str, n_obs: int | None = None) -> None:
    """Refuse, for the argument ``name`` of ``where`` (which takes one trajectory ``(T, N)`` or
    a list of them, :func:`several_trajectories`), the forms :func:`check_trajectory` would
    misread as one trajectory: a 3-D ndarray (a stack of trajectories, passed as
    ``list(x)``), an empty list or tuple, and a list or tuple of one-dimensional series
    (:func:`_series_list`; ``n_obs``: the caller's model's N, if any).

    Raises
    ------
    ValueError
        ``x`` is an ndarray with 3 dimensions, an empty list or tuple, or a list or tuple of
        1-D arrays that are series, not rows.
    """
    if _series_list(x, n_obs):
        lengths = sorted({len(a) for a in x})
        shown = ", ".join(map(str, lengths[:3])) + ", ..." * (len(lengths) > 3)
        fixes = []
        if n_obs in (None, 1):
            fixes.append(f"pass [s[:, None] for s in {name}] for series of one variable each")
        if len(lengths) == 1 and n_obs in (None, len(x)):
            stacked = f"np.column_stack({name})"
            fixes.append(f"pass {stacked} for the {len(x)} variables of one trajectory")
        fix = ", or ".join(fixes) or f"pass each as a (T_k, {n_obs}) array"
        raise ValueError(
            f"{where}: {name} is a {type(x).__name__} of {len(x)} one-dimensional arrays (of "
            f"{shown} values), which would be read as the rows of one trajectory; several "
            f"trajectories are 2-D, (T_k, N) each: {fix}."
        )
    if isinstance(x, np.ndarray) and x.ndim == 3:
        raise ValueError(
            f"{where}: {name} must be one trajectory of shape (T, N) or a list of them; got an "
            f"array of shape {x.shape}. Pass list({name}) for {x.shape[0]} trajectories of "
            f"{x.shape[1]} steps each."
        )
    if isinstance(x, (list, tuple)) and not x:
        raise ValueError(
            f"{where}: {name} must be one trajectory of shape (T, N) or a list of them; got an "
            f"empty {type(x).__name__}."
        )


def _series_list(x, n_obs: int | None) -> bool:
    """Whether ``x`` is a list or tuple of two or more 1-D ndarrays that are series, not the
    rows of one trajectory: of different lengths, or (with the model's ``n_obs``) fewer
    than their length, of another length than ``n_obs``, and as many as ``n_obs`` (the
    variables of one trajectory) or a model of one variable (one trajectory each)."""
    if not (
        isinstance(x, (list, tuple))
        and len(x) > 1
        and all(isinstance(a, np.ndarray) and a.ndim == 1 for a in x)
    ):
        return False
    lengths = {len(a) for a in x}
    if len(lengths) > 1:
        return True
    (length,) = lengths
    return n_obs in (1, len(x)) and length != n_obs and len(x) < length


def _looks_transposed(shape: tuple[int, int]) -> bool:
    """Whether a ``(T, N)`` trajectory of ``shape`` looks transposed: several time steps, but
    fewer than its dimensions (an ``(N, T)`` array passed for a ``(T, N)`` one)."""
    n_steps, n_dims = shape
    return 1 < n_steps < n_dims


#: a column is constant when its sd is at most this fraction of its largest magnitude
CONSTANT_RTOL = 1e-12


def constant_columns(x: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """Which columns of ``x`` (finite, shape (T, N), ``T >= 1``) are constant: population sd
    ``sd`` (shape (N,), e.g. from :func:`column_mean_sd`) at most :data:`CONSTANT_RTOL` times
    the column's largest magnitude -- a constant (whose computed sd is 0 or rounding noise:
    ``np.full(1000, 90.09273926518705).std()`` is 1.4e-14) or rounding noise around one.
    Returns a bool array of shape (N,)."""
    return sd <= CONSTANT_RTOL * np.max(np.abs(x), axis=0)


#: :func:`far_dimensions`: a dimension's mean farther than this many reference sds from the
#: reference mean, or its sd more than this ratio apart from the reference sd, looks like
#: other units
FAR_SHIFT, FAR_SD_RATIO = 3.0, 5.0


def far_dimensions(x: np.ndarray, mean: np.ndarray, sd: np.ndarray):
    """The dimensions in which trajectory ``x`` looks like another scale than data of column
    means ``mean`` and sds ``sd`` (e.g. a file standardised already, against raw data).

    A dimension is far when its mean lies more than :data:`FAR_SHIFT` reference sds from the
    reference mean or its sd ratio is outside ``[1 / FAR_SD_RATIO, FAR_SD_RATIO]`` (a NaN
    ratio, e.g. of an infinite sd, counts as far). A genuine change of regime does that too:
    callers warn, they do not refuse.

    Parameters
    ----------
    x : ndarray, shape (T, N)
        Finite trajectory, ``T >= 1``.
    mean, sd : ndarray, shape (N,)
        The reference data's column means and (positive) population sds
        (:func:`column_mean_sd`).

    Returns
    -------
    far : ndarray of int, shape (K,)
        The far dimensions, ascending.
    x_mean, x_sd : ndarray, shape (N,)
        The column means and sds of ``x`` (:func:`column_mean_sd`), for the message.
    """
    x_mean, x_sd = column_mean_sd(x)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        shift = np.abs(to_sd_units(x_mean, mean, sd))
        ratio = x_sd / sd
    near = (shift <= FAR_SHIFT) & (ratio >= 1 / FAR_SD_RATIO) & (ratio <= FAR_SD_RATIO)
    return np.flatnonzero(~near), x_mean, x_sd


def _check_not_constant(
    arr: np.ndarray, sd: np.ndarray, where: str, name: str, reason: str = CONSTANT_REASON
) -> None:
    """Refuse a column of ``arr`` (finite, ``T >= 1``) that :func:`constant_columns` calls
    constant; the message ends with ``reason``."""
    top = np.max(np.abs(arr), axis=0)
    flat = np.flatnonzero(constant_columns(arr, sd))
    if flat.size:
        ratios = ", ".join(f"{sd[i] / top[i]:.1e}" if top[i] else "0" for i in flat)
        raise ValueError(
            f"{where}: {name} is constant in column(s) {flat.tolist()} (sd / max|x| = "
            f"{ratios}, at most 1e-12); {reason}"
        )


# ---------------------------------------------------------------------------------------------
# Text files. The first lines decide the delimiter and the header; NumPy's parser reads the
# body. Only when it fails are the lines streamed in Python, to name the bad one.
# ---------------------------------------------------------------------------------------------

#: Data lines after the first that decide the delimiter and the pandas-names header.
_SAMPLE = 10


def _data_lines(fh, skip: int = 0):
    """``(line number, text)`` of the lines after line ``skip`` that hold data (or a header):
    the text before a ``#``, stripped of whitespace; lines left empty are dropped."""
    for number, line in enumerate(fh, start=1):
        text = line.split("#", 1)[0].strip()
        if text and number > skip:
            yield number, text


#: Text encoding: UTF-8, a byte-order mark (Excel's "CSV UTF-8") dropped.
_ENCODING = "utf-8-sig"


def _open_text(path: Path):
    return open(path, encoding=_ENCODING)


def _split(text: str, delimiter: str | None) -> list[str]:
    """The entries of a data line as NumPy's parser (``quotechar='"'``) reads them: stripped
    of whitespace and of a pair of double quotes around the whole entry (R's ``write.csv``
    quotes names and row names). A quote after leading whitespace is part of the entry."""
    if delimiter is None:
        return [v[1:-1] if len(v) > 1 and v[0] == v[-1] == '"' else v for v in text.split()]
    return [v.strip() for v in next(csv.reader([text], delimiter=delimiter))]


def _parses(token: str, kind: type) -> bool:
    """Whether ``kind(token)`` reads the token, for tokens NumPy's parser reads too (ASCII,
    no ``_`` digit separators)."""
    if not token.isascii() or "_" in token:
        return False
    try:
        kind(token)
    except ValueError:
        return False
    return True


def _pandas_names(tokens: list[str]) -> bool:
    return tokens == [str(i) for i in range(len(tokens))]


def _is_header(first: list[str], rest: list[list[str]]) -> bool:
    """Whether the first line is a header: none of its entries is a number, or it is exactly
    the integers ``0 .. N-1`` (pandas' names of unnamed columns,
    ``DataFrame.to_csv(index=False)``) and no entry of the sampled lines after it is written
    as an integer (pandas writes float columns with a decimal point or exponent)."""
    if not any(_parses(v, float) for v in first):
        return True
    return _pandas_names(first) and not any(_parses(v, int) for row in rest for v in row)


#: The fix for a file with ``;`` separators (and, usually, decimal commas).
_SEMICOLON = (
    "the values look separated by ';': use ',' or whitespace between values and '.' as "
    "decimal point"
)
#: How to save a table without its row index, for the messages that find one.
_NO_INDEX = "pandas: to_csv(index=False); R: write.csv(x, row.names=FALSE)"


def _shown(text: str, limit: int = 60) -> str:
    """``repr`` of a line for a message, cut to about ``limit`` characters."""
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


#: A number written with a decimal comma (``-0,25``, ``1,5e-3``), as one entry.
_COMMA_NUMBER = re.compile(r"[-+]?\d+,\d+(?:[eE][-+]?\d+)?")
#: Two integers separated by a comma that a one-column file with decimal commas has and a
#: two-column integer file would not: a second one with a leading zero (not a first one of
#: -0: ``np.round`` gives -0.0, which ``%g`` writes as ``-0``).
_COMMA_DECIMALS = re.compile(r"[-+]?\d+,0\d+")


def _decimal_commas(text: str) -> str | None:
    """How a line's numbers are separated, ``";"`` or ``"whitespace"``, when it reads as
    numbers written with ``,`` as decimal mark (``0,05;-0,12;1,5`` or ``0,05\t-0,12``, as
    spreadsheets write in locales whose decimal mark is a comma): two entries or more, each a
    number once its ``,`` is read as ``.`` (separated by whitespace: each ``,`` between two
    digits), and a ``,`` between two digits; None otherwise. Such a file is refused, not
    read: ``1,500;2,000`` may also be thousands."""
    entries = _split(text, ";")
    if entries and not entries[-1].strip():  # a trailing ';', as some exporters write
        entries = entries[:-1]
    if re.search(r"\d,\d", text) is None:
        return None
    if len(entries) > 1 and all(_parses(v.replace(",", "."), float) for v in entries):
        return ";"
    entries = _split(text, None)
    if len(entries) > 1 and all(
        _COMMA_NUMBER.fullmatch(v) or ("," not in v and _parses(v, float)) for v in entries
    ):
        return "whitespace"
    return None


#: What a line of :data:`_COMMA_DECIMALS` holds, searched for in a file's bytes at once.
_COMMA_LEADING_ZERO = re.compile(rb",0\d")


def _one_column_of_decimal_commas(
    path: Path, head: list[tuple[int, str]]
) -> tuple[int, str] | None:
    """The first line that shows a one-column file written with decimal commas (``21,5``,
    ``22,05``, which a comma-separated reader takes for two integer columns): every data line
    (after a header, or a first ``0``) is two comma-separated integers and one of them has a
    second one with a leading zero, which an integer column has not; None otherwise. Past the
    sampled lines ``head`` (in a series written with two decimals a third of the files show
    it only later) the lines are read only if the file's bytes hold a ``,0`` and a digit."""
    lines = head[1:] if head and not _COMMA_NUMBER.fullmatch(head[0][1]) else head
    if not lines or not all(_COMMA_NUMBER.fullmatch(text) for _, text in lines):
        return None
    found = next(((n, t) for n, t in lines if _COMMA_DECIMALS.fullmatch(t)), None)
    if found or len(head) <= _SAMPLE or not _COMMA_LEADING_ZERO.search(path.read_bytes()):
        return found
    with _open_text(path) as fh:
        for number, text in _data_lines(fh, head[-1][0]):
            if not _COMMA_NUMBER.fullmatch(text):
                return None
            if _COMMA_DECIMALS.fullmatch(text):
                return number, text
    return None


def _counts_up(tokens: list[str]) -> bool:
    """Whether two or more tokens are integers that count up in equal steps (``0, 1, 2,
    ...``, ``1, 2, 3, ...``, ``0, 10, 20, ...`` after subsampling): the first entries of data
    lines that hold a row index."""
    if len(tokens) < 2 or not all(_parses(v, int) for v in tokens):
        return False
    start, step = int(tokens[0]), int(tokens[1]) - int(tokens[0])
    return step > 0 and [int(v) for v in tokens] == list(
        range(start, start + step * len(tokens), step)
    )


def _layout(path: Path) -> tuple[str | None, int]:
    """Delimiter (``","``, or None for whitespace) and the line number of the header (0: no
    header), from the first data lines; refuses a row-index column and a header with another
    number of names than the data have columns."""
    with _open_text(path) as fh:
        head = list(itertools.islice(_data_lines(fh), _SAMPLE + 1))
    if not head:
        raise ValueError("the file has no data rows")
    layouts = ((n, t, _decimal_commas(t)) for n, t in head)  # each line's, once
    comma = next((line for line in layouts if line[2] is not None), None)
    if comma is None and (column := _one_column_of_decimal_commas(path, head)) is not None:
        comma = (*column, "one column")
    if comma is not None:
        line, text, layout = comma
        first = _split(head[0][1], ";" if layout == ";" else None)  # data, or a header?
        numbers = all(_parses(v.replace(",", "."), float) for v in first)
        header = ", header=None" if numbers else ""  # (a spreadsheet writes 0 as 0)
        what, sep, replace = {
            ";": ("a semicolon-separated CSV", "';'", " and then ';' by ','"),
            "whitespace": ("numbers separated by spaces or tabs", "r'\\s+'", ""),
            "one column": ("one column of numbers", "';'", ""),
        }[layout]
        raise ValueError(
            f"the file looks like {what} with decimal commas (line {line}: {_shown(text)}); "
            f"load_data reads '.' as the decimal mark and ',' or whitespace between values, "
            f"and does not guess (',' may also group thousands or separate columns). Convert "
            f"it, e.g. np.save('x.npy', pandas.read_csv(path, sep={sep}, decimal=',', "
            f"comment='#'{header}).to_numpy()), or replace ',' by '.'{replace}"
        )
    sample = head[1:] or head
    delimiter = "," if any("," in text for _, text in sample) else None
    first, *rest = (_split(text, delimiter) for _, text in head)
    if delimiter and delimiter not in head[0][1]:  # names separated by whitespace
        first = _split(head[0][1], None)
    names = first[1:]
    if (
        first[0] == ""
        and names
        and (_pandas_names(names) or not any(_parses(v, float) for v in names))
    ):
        raise ValueError(
            f"the first column looks like a row index (line {head[0][0]} starts with an "
            f"empty name, as pandas to_csv() and R write.csv() write one); save without it "
            f"({_NO_INDEX}) or drop that column"
        )
    if all(v in _MISSING_MARKERS for v in first):  # (exact case: a column "Na" is sodium)
        raise ValueError(
            f"line {head[0][0]} holds only missing-value markers ({_shown(head[0][1])}), not "
            "column names; fill or interpolate the missing values, or cut the recording there"
        )
    if not _is_header(first, rest):
        return delimiter, 0
    if len(head) == 1:
        raise ValueError("the file has a header but no data rows")
    (line, text), (data_line, data_text) = head[:2]
    if len(first) != len(rest[0]):
        fix = "give one name per column or remove the header line"
        index = [row[0] for row in rest]  # the first column, when it is a row index
        if ";" in text + data_text:
            fix = _SEMICOLON
        elif len(first) == len(rest[0]) - 1 and _counts_up(index):
            fix = (
                f"the first column ({', '.join(index[:3])}, ...) looks like a row index "
                f"without a name (pandas to_csv(sep='\\t'), R write.table()): save without it "
                f"({_NO_INDEX})"
            )
        raise ValueError(
            f"the header (line {line}, read as {_shown(text)}) has {len(first)} "
            f"name{'s' * (len(first) != 1)} but the data have {len(rest[0])} "
            f"column{'s' * (len(rest[0]) != 1)} (line {data_line}, read as "
            f"{_shown(data_text)}); {fix}"
        )
    return delimiter, line


#: Options of NumPy's parser for the body of a text file.
_LOADTXT = {"ndmin": 2, "dtype": np.float64, "quotechar": '"'}


def _read_lines(path: Path, delimiter: str | None, header: int) -> np.ndarray:
    """After NumPy's parser failed on the file: parse the data lines alone (NumPy trips over
    lines this reader skips, e.g. whitespace only or an indented comment), and if that fails
    too, raise ValueError naming the first ragged row or non-numeric entry."""
    with _open_text(path) as fh:
        lines = (text for _, text in _data_lines(fh, header))
        try:
            return np.loadtxt(lines, delimiter=delimiter, **_LOADTXT)
        except ValueError as exc:
            error = exc
    _locate_bad_line(path, delimiter, header)
    raise ValueError(f"cannot parse the numbers: {error}")


#: Entries that mark a missing value (R, MATLAB, pandas, spreadsheets), upper case.
_MISSING_MARKERS = {"NA", "N/A", "NULL", "NONE", "MISSING", "-", "?", "--", "\u2212"}


def _locate_bad_line(path: Path, delimiter: str | None, header: int) -> None:
    """Raise ValueError naming the first ragged row or non-numeric entry, if there is one."""
    width = None
    with _open_text(path) as fh:
        for line, text in _data_lines(fh, header):
            row = _split(text, delimiter)
            if width is None:
                width, first_line = len(row), line
            elif len(row) != width:
                raise ValueError(
                    f"rows have different numbers of columns: line {line} has {len(row)} "
                    f"column{'s' * (len(row) != 1)}, expected {width} (as in line {first_line})"
                    f"{_separator_hint(text, delimiter, width)}"
                )
            bad = next((v for v in row if not _parses(v, float)), None)
            if bad is not None:
                hint = ""
                if ";" in bad:
                    hint = f"; {_SEMICOLON}"
                elif bad == "" and delimiter == ",":
                    hint = "; an empty entry: a missing value, or a trailing or doubled comma"
                elif bad.upper() in _MISSING_MARKERS:
                    hint = "; a missing-value marker: fill or interpolate the missing values"
                elif '"' in bad:
                    hint = (
                        "; quotes count only around a whole entry, right after the separator: "
                        "remove them"
                    )
                elif "," in bad:
                    hint = "; a decimal comma: use '.' as decimal point"
                elif len(bad.split()) > 1 and all(_parses(v, float) for v in bad.split()):
                    hint = (
                        "; numbers separated by spaces or tabs, where other lines use commas: "
                        "use one separator throughout"
                    )
                raise ValueError(f"non-numeric entry {bad!r} in line {line}{hint}")


def _separator_hint(text: str, delimiter: str | None, width: int) -> str:
    """A clause for a row (``text``) of the wrong width that has ``width`` values when split by
    the other separator (commas against spaces or tabs), else empty."""
    other = None if delimiter == "," else ","
    if len(_split(text, other)) != width:
        return ""
    words = {",": "commas", None: "spaces or tabs"}
    return (
        f"; its values are separated by {words[other]}, the file's by {words[delimiter]}: "
        "use one separator throughout"
    )


def _locate_decode_error(path: Path):
    """Raise ValueError naming the first line that is not UTF-8 text."""
    with open(path, "rb") as fh:
        for line, raw in enumerate(fh, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(
                    f"line {line} is not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the "
                    f'file as UTF-8 (e.g. Excel: "CSV UTF-8")'
                ) from None
    raise ValueError('the file is not UTF-8 text; save it as UTF-8 (e.g. Excel: "CSV UTF-8")')


#: A spreadsheet's error value (Excel, LibreOffice, Google Sheets) for a missing or failed cell.
_SPREADSHEET_ERROR = re.compile(
    rb"#(?:N/A|DIV/0!|VALUE!|REF!|NUM!|NAME\?|NULL!|SPILL!|CALC!|ERROR!|FIELD!|BLOCKED!"
    rb"|CONNECT!|BUSY!|UNKNOWN!|PYTHON!|EXTERNAL!|GETTING_DATA)"
)


def _may_have_gap(data: bytes, run: int) -> bool:
    """Whether the text ``data`` may have ``run`` (1 or 2) empty or whitespace-only lines in a
    row between two written lines, by array operations over its bytes (0.1 s for a 10**6-line
    CSV, where walking its lines in Python takes 0.5 s): :func:`_refuse_gaps` walks them only
    then.
    Line ends are ``\\n``, ``\\r\\n`` and a lone ``\\r``; ``\\r\\r\\n`` is one
    (Windows text mode writing a ``\\r\\n``). Bytes above the space count as written (a
    comment line too)."""
    text = np.frombuffer(data, np.uint8)
    cr, lf = text == ord("\r"), text == ord("\n")
    lone_cr = cr.copy()
    lone_cr[:-1] &= ~lf[1:]
    lone_cr[:-2] &= ~(cr[1:-1] & lf[2:])
    starts = np.flatnonzero(lf | lone_cr)
    # line k >= 1 runs from the end of line k-1 (a byte below the space) to its own end
    written = np.logical_or.reduceat(text > ord(" "), np.concatenate([[0], starts]))
    lines = np.flatnonzero(written)
    if lines.size < 2:
        return False
    blank = ~written[lines[0] : lines[-1]]
    return bool(np.any(blank if run == 1 else blank[:-1] & blank[1:]))


def _refuse_gaps(path: Path, data: bytes, header: int, width: int) -> None:
    """Raise ValueError for empty lines between data lines (after the header ``header``) that
    are no mere spacing: in a one-column file (``width`` 1) one empty line, as a spreadsheet
    writes an empty cell of a one-column sheet (a missing value); at any width two or more in
    a row, as gnuplot separates data blocks (several recordings, which would be joined into
    one trajectory with a jump). A comment line between them ends a run; the ``\\r\\n``
    of a ``\\r\\r\\n`` line end is none. ``data`` are the file's bytes, checked first
    (:func:`_may_have_gap`)."""
    if data == b"" or not _may_have_gap(data, 1 if width == 1 else 2):
        return
    seen, run, previous = False, [], ""
    with open(path, encoding=_ENCODING, newline="") as fh:  # line ends as written
        for number, line in enumerate(fh, start=1):
            doubled_end = line == "\r\n" and previous.endswith("\r")
            previous = line
            if number <= header or doubled_end:
                continue
            content = line.split("#", 1)[0].strip()
            if not line.strip():
                run += [number] if seen else []
                continue
            if content and run and (width == 1 or len(run) >= 2):
                lines = f"line {run[0]} is" if len(run) == 1 else f"lines {run[0]}-{run[-1]} are"
                if width == 1:
                    raise ValueError(
                        f"{lines} empty between data lines, which in a one-column file marks "
                        "a missing value (a spreadsheet's empty cell); fill or interpolate "
                        "it, or delete the line"
                    )
                raise ValueError(
                    f"{lines} empty between data lines, as blocks of several recordings are "
                    "separated (gnuplot); they would be joined into one trajectory with a "
                    "jump: save each recording to a file of its own (parscan-train takes "
                    "several --data files), or delete the empty lines if it is one recording"
                )
            seen, run = seen or bool(content), []


def _refuse_spreadsheet_errors(path: Path, data: bytes) -> None:
    """Raise ValueError naming the first spreadsheet error value (``#N/A``, ``#DIV/0!``, ...)
    that is an entry of a text file (at the start of its line or after a separator or quote,
    before any comment): its ``#`` would start a comment, silently dropping that time step
    (or the rest of the row). ``data`` are the file's bytes."""
    found = _SPREADSHEET_ERROR.search(data)
    while found is not None:
        start = data.rfind(b"\n", 0, found.start()) + 1
        before = data[start : found.start()]
        if start == 0:
            before = before.removeprefix(b"\xef\xbb\xbf")  # Excel's "CSV UTF-8"
        if b"#" not in before and (not before or before[-1:] in b' \t\r,;"'):
            line = data.count(b"\n", 0, start) + 1
            raise ValueError(
                f"line {line} holds the spreadsheet error value {found[0].decode()!r} (a missing "
                "or failed cell), which would otherwise start a comment and drop the time step; "
                "fill or interpolate the missing values, or cut the recording there"
            )
        found = _SPREADSHEET_ERROR.search(data, found.end())


def _read_text(path: Path):
    """The numbers of a text file, shape (T, N), and a function naming the line of a row."""
    try:
        delimiter, header = _layout(path)
        data = path.read_bytes()
        _refuse_spreadsheet_errors(path, data)
        try:
            arr = np.loadtxt(
                path,
                delimiter=delimiter,
                comments="#",
                skiprows=header,
                encoding=_ENCODING,
                **_LOADTXT,
            )
        except UnicodeDecodeError:
            raise
        except ValueError:
            arr = _read_lines(path, delimiter, header)
        _refuse_gaps(path, data, header, arr.shape[1])
    except UnicodeDecodeError:
        _locate_decode_error(path)

    def row_label(row: int) -> str:
        with _open_text(path) as fh:
            line, _ = next(itertools.islice(_data_lines(fh, header), row, None))
        return f"line {line}"

    return arr, row_label


# ---------------------------------------------------------------------------------------------
# Files.
# ---------------------------------------------------------------------------------------------


#: How NumPy's files start: ``np.save``'s magic string and the zip signatures of
#: ``np.savez`` (a local file header; an empty archive is only its end record).
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def not_numpy_reason(head: bytes, suffix: str, text_fix: str | None = None) -> str:
    """Why a file whose first bytes are ``head`` is not a NumPy ``suffix`` file (with
    ``text_fix`` as the fix when it looks like text)."""
    if not head:
        return f"it is empty (0 bytes), not a NumPy {suffix} file"
    if all(b >= 32 or b in b"\t\n\r\f\v" for b in head):
        return "it is not a NumPy file (it looks like text" + (
            f": {text_fix})" if text_fix else ")"
        )
    writer = "np.save" if suffix == ".npy" else "np.savez"
    return f"it is not a NumPy {suffix} file (it does not start as {writer} writes one)"


def _npz_arrays(loaded) -> list[str]:
    """The names of the arrays of an open ``.npz`` archive ``loaded`` (``np.load``'s
    ``NpzFile``): its members that are ``.npy`` streams. Other members (a ``readme.txt``
    zipped in beside them) are no arrays: ``NpzFile`` would give their raw bytes."""
    names = []
    for name in loaded.files:
        member = f"{name}.npy" if f"{name}.npy" in loaded.zip.namelist() else name
        with loaded.zip.open(member) as stream:
            if stream.read(len(NPY_MAGIC)) == NPY_MAGIC:
                names.append(name)
    return names


def _object_array_reason(fh, what: str, save: str) -> str | None:
    """Why the array of the ``.npy`` stream ``fh`` (seekable, at its start) cannot be read,
    when its dtype holds Python objects (``np.save`` of a list of arrays of different lengths,
    or of values with None); None otherwise, for a stream that is not ``.npy`` and for header
    versions NumPy reads only internally (``np.load`` explains those). ``what`` names the
    array, ``save`` is the code that saves a float one instead."""
    if fh.read(len(NPY_MAGIC)) != NPY_MAGIC:
        return None
    fh.seek(0)
    version = np.lib.format.read_magic(fh)
    read_header = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }.get(version)
    if read_header is None:
        return None
    shape, _, dtype = read_header(fh)
    if not dtype.hasobject:
        return None
    ragged = ""
    if len(shape) == 1:  # a list of arrays, if of different lengths, is several trajectories
        ragged = (
            "; arrays of different lengths are separate trajectories: "
            "np.savez(path, run0=x[0], run1=x[1], ...), then load_data(path, key='run0')"
        )
    return (
        f"{what} is an object array (dtype {dtype}, shape {shape}), as NumPy stores a list of "
        f"arrays of different lengths or values with None; reading it needs pickle, which "
        f"load_data does not do (unpickling a file can run any code). Save a float array "
        f"instead: {save}{ragged}"
    )


def _read_numpy(path: Path, suffix: str, key: str | None) -> np.ndarray:
    """The array of an ``.npy`` file, or the one chosen by ``key`` in an ``.npz`` archive;
    refuses a file whose content does not match its suffix (told by its first bytes)."""
    with open(path, "rb") as fh:  # numpy leaks the handle of a corrupt zip otherwise
        head = fh.read(512)
        fh.seek(0)
        if head.startswith(NPY_MAGIC):
            if suffix == ".npz":
                raise ValueError(
                    "it is an .npy file (one array), not an .npz archive; rename it to .npy"
                )
            save = "np.save(path, np.asarray(x, dtype=float))"
            reason = _object_array_reason(fh, "it", save)
            if reason:
                raise ValueError(reason)
            fh.seek(0)
            return np.load(fh, allow_pickle=False)
        if not head.startswith(ZIP_MAGIC):
            raise ValueError(not_numpy_reason(head, suffix, "rename it to .csv"))
        if suffix == ".npy":
            raise ValueError(
                "it is an .npz archive (zipped arrays), not an .npy file; rename it to .npz"
            )
        with np.load(fh, allow_pickle=False) as loaded:
            names = _npz_arrays(loaded)
            if not names:
                raise ValueError("it holds no arrays; save the trajectory in it (np.savez)")
            if key is None and len(names) == 1:
                key = names[0]
            if key is None:
                raise ArrayChoiceError(
                    f"it holds {len(names)} arrays ({', '.join(names)}); pass key= to choose one",
                    names,
                )
            if key not in names:
                raise ArrayChoiceError(
                    f"it has no array {key!r}; available: {', '.join(names)}", names
                )
            member = f"{key}.npy" if f"{key}.npy" in loaded.zip.namelist() else key
            value = "np.asarray(x, dtype=float)"
            plain = key.isidentifier() and not keyword.iskeyword(key)
            arg = f"{key}={value}" if plain else f"**{{{key!r}: {value}}}"
            save = f"np.savez(path, {arg})"
            with loaded.zip.open(member) as stream:
                reason = _object_array_reason(stream, f"its array {key!r}", save)
            if reason:
                raise ValueError(reason)
            return loaded[key]


_SPECIAL_FILES = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _check_path(path: Path, where: str) -> str:
    """The lower-case suffix of an existing regular file with a supported suffix."""
    if path.is_dir():
        raise ValueError(f"{where}: {path} is a folder; pass a trajectory file in it.")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(
            f"{where}: unsupported file type {path.suffix!r} ({path}); "
            f"supported: {', '.join(SUFFIXES)}."
        )
    if not path.exists():
        raise MissingFileError(f"{where}: no such file {path}.")
    if not path.is_file():
        mode = path.stat().st_mode
        what = next((text for test, text in _SPECIAL_FILES if test(mode)), "a special file")
        raise ValueError(f"{where}: {path} is {what}, not a regular file; pass a trajectory file.")
    return suffix


def column_names(path) -> list[str] | None:
    """The column names of the header of a ``.csv``/``.txt`` trajectory, as
    :func:`load_data` reads them (None: no header, or a NumPy file, which has none).

    Parameters
    ----------
    path : str or os.PathLike
        A file :func:`load_data` reads (call it first: this reads only the first lines and
        assumes a valid file).

    Returns
    -------
    list of str or None
        One name per column, unquoted and stripped.
    """
    path = Path(path)
    if path.suffix.lower() not in (".csv", ".txt"):
        return None
    delimiter, header = _layout(path)
    if not header:
        return None
    with _open_text(path) as fh:
        _, text = next(_data_lines(fh, header - 1))
    return _split(text, delimiter if delimiter and delimiter in text else None)


def load_data(path, *, key: str | None = None, min_steps: int = 2) -> np.ndarray:
    """Load one trajectory from ``.npy``, ``.npz``, ``.csv`` or ``.txt`` and validate it.

    Parameters
    ----------
    path : str or os.PathLike
        ``.npy``: one array. ``.npz``: the array named ``key``, or the only array in the file.
        ``.csv`` / ``.txt``: UTF-8 text, one row per time step, comma- or whitespace-separated
        (decided from the first data lines), with an optional header line; ``#`` starts a comment,
        single blank lines are skipped (see Raises), a UTF-8 byte-order mark is ignored, and an
        entry may be quoted as a whole (``"1.5"``, as R and ``csv.QUOTE_ALL`` write). The first line
        is a header if none of its entries is a number, or if it is exactly the integers
        ``0,1,...,N-1`` (the names ``pandas.DataFrame.to_csv(index=False)`` gives unnamed columns)
        and no entry of the next ten data lines is written as an integer (pandas writes floats with
        a decimal point or exponent); a header needs one name per column.
        The trade-offs of this rule: a first *data* row ``0,1,...,N-1`` whose next ten lines
        have no integer entry is read as a header and dropped, whatever the lines after those
        ten hold -- also the first value of a one-column series written ``0`` (as ``%g``
        formats write 0.0: ``np.savetxt(fmt="%g")``, MATLAB's ``csvwrite``); write
        ``0.0,1.0,...`` or a named header. A header of other numbers (``1,2,...,N``) is read
        as a data row. A first line with numbers and other entries (``1.5,NA``) is a bad
        data line.
    key : str, optional
        Array name inside an ``.npz`` (required when it holds several arrays).
    min_steps : int
        Smallest admissible number of time steps, at least 2 (one step has no dynamics and no
        standard deviation), e.g. ``T_seq + 1`` for training windows of length ``T_seq``.

    Returns
    -------
    ndarray, shape (T, N), float64
        A 1-D series is returned as ``(T, 1)``. Other real dtypes are converted to float64.

    Raises
    ------
    ArrayChoiceError
        A ``ValueError``: an ``.npz`` with several arrays and no ``key``, or with no array
        named ``key`` (``names`` lists its arrays).
    MissingFileError
        A ``FileNotFoundError`` and a ``ValueError``: no file at ``path``.
    ValueError
        Special (FIFO, device) or unreadable file, an object array in an ``.npy`` or
        ``.npz`` (it needs pickle, which is refused), an ``.npy``/``.npz`` that is not a NumPy
        file by its first bytes (text gets the advice to rename it ``.csv``), an ``.npz``
        archive named ``.npy`` or the reverse, an ``.npz`` holding no arrays, unsupported
        suffix, text that is not UTF-8, a semicolon-separated text with decimal commas
        (``0,5;1,2``: refused with how to convert it, as ``,`` may also group thousands), a text
        row with another number of columns than the first or a non-numeric entry (its line
        reported), a row-index column (an empty first header name, as pandas ``to_csv()`` and R
        ``write.csv()`` write), a header with another number of names than the data have columns
        (both lines quoted; one name short above a first column that counts up by one is called
        a row index), not 1-D/2-D, one time step of several values or fewer time steps than
        dimensions (a transposed array), fewer than ``min_steps`` steps, NaN/inf (the first
        reported by row and column, by line for text files; long double values beyond the
        float64 range count as inf), a constant dimension, or a first column that is an
        arithmetic progression (``T >= 3``, beside other columns: a row index such as ``0..T-1``
        or ``100..``, or a time column such as ``0, 0.01, ...``; equal steps up to ``1e-9`` of
        the step plus the rounding of the stored values), and so is a later one of ``T >= 10``
        steps (a time column written last, ``x, y, t``). In a text file: a first line of only
        missing-value markers (``NA,NA``: no column names), an empty line between data lines
        of a one-column file (a spreadsheet's empty cell), two or more in a row between data
        lines of any file (blocks of several recordings, as gnuplot writes them).
    TypeError
        ``path``, ``key`` or ``min_steps`` of the wrong kind; non-numeric data (bool,
        complex, strings, objects).
    """
    where = "load_data"
    with Checks(where) as checks:
        path = checks.path(path)
        if key is not None and not isinstance(key, str):
            checks.add(
                f"key must be a str (an array name); got {type(key).__name__}.", wrong_kind=True
            )
        min_steps = checks.integer(min_steps, "min_steps", 2)  # a trajectory moves
    suffix = _check_path(path, where)
    if key is not None and suffix != ".npz":
        raise ValueError(f"{where}: key={key!r} applies to .npz files only; {path} is {suffix}.")
    row_label = None
    try:
        if suffix in (".npy", ".npz"):
            arr = _read_numpy(path, suffix, key)
        else:
            arr, row_label = _read_text(path)
    except ArrayChoiceError as exc:
        raise ArrayChoiceError(f"{where}: cannot read {path}: {exc}.", exc.names) from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise ValueError(f"{where}: cannot read {path}: {exc}.") from None
    except MemoryError as exc:  # a header claiming more than fits (corrupt, or too large)
        raise ValueError(
            f"{where}: cannot read {path}: {exc} (a damaged header, or data larger than the "
            "memory available)."
        ) from None
    name = f"the data in {path}"  # the path as given: two files may share a name
    stored = arr.dtype
    arr = _float64(arr[:, None] if arr.ndim == 1 else arr)
    if arr.ndim == 2 and arr.shape[0] == 1 < arr.shape[1]:
        raise ValueError(
            f"{where}: {name} have 1 time step (one row of {arr.shape[1]} values); a "
            f"trajectory has one row per time step. If the row is one series, save x.T."
        )
    if arr.ndim == 2 and _looks_transposed(arr.shape):
        raise ValueError(
            f"{where}: {name} have shape {arr.shape}: fewer time steps (rows) than dimensions "
            f"(columns), which looks transposed; save x.T (one row per time step)."
        )
    arr = check_trajectory(arr, where, name=name, min_steps=min_steps, row_label=row_label)
    n_steps, n_dims = arr.shape
    eps = np.finfo(stored if stored.itemsize < 8 and stored.kind == "f" else np.float64).eps
    for j in range(n_dims if n_dims >= 2 else 0):
        if n_steps < (3 if j == 0 else _MIN_STEPS_OF_A_LATER_CLOCK):
            break
        step = _progression_step(arr[:, j], eps)
        if step is not None:
            c = arr[:, j]
            column, how = ("the first column", f" ({_NO_INDEX})") if j == 0 else (f"column {j}", "")
            raise ValueError(
                f"{where}: {column} of {name} runs {c[0]:.10g}, {c[1]:.10g}, ..., "
                f"{c[-1]:.10g} in equal steps of {step:.10g}: a row index or time column, "
                f"not a measured variable; drop it{how}."
            )
    return arr


#: The fewest steps at which a column after the first that runs in equal steps is refused as
#: a clock (a time column written last, ``x, y, t``): fewer make a short table of small
#: integers (``1, 2, 3``) as likely.
_MIN_STEPS_OF_A_LATER_CLOCK = 10


def _progression_step(column: np.ndarray, eps: float):
    """The step of a finite column that is an arithmetic progression, or None: each
    difference equals the mean step within ``1e-9`` of it plus the rounding of the values
    (4 ``eps`` of the largest, ``eps`` that of the dtype the values were stored in) plus,
    for a step of at least ten units of the last decimal of the finer-written tenth of the
    values, the rounding of their decimals as written (:func:`_decimal_units`: time stamps
    printed with ``%.4f`` or ``%g``). A zero step (a constant) is not one."""
    with np.errstate(over="ignore", invalid="ignore"):
        step = (column[-1] - column[0]) / (column.size - 1)
        if step == 0 or not np.isfinite(step):
            return None
        deviation = np.abs(np.diff(column) - step)
        tol = 1e-9 * abs(step) + 4 * eps * np.max(np.abs(column))
        if not np.max(deviation) <= abs(step) / 2 + tol:  # far from equal steps (NaN too)
            return None
        units = _decimal_units(column, eps)
        if abs(step) >= 10 * np.quantile(units, 0.1):
            tol = tol + (units[1:] + units[:-1]) / 2  # each value within half its unit
        if np.all(deviation <= tol):
            return float(step)
    return None


def _decimal_units(column: np.ndarray, eps: float) -> np.ndarray:
    """Per value of ``column``, the unit of its last decimal as written: ``10**-k`` for the
    fewest decimals ``k`` (0 to 17) that give the value within rounding (4 ``eps`` of it), 0
    for a value that needs more (written in full precision)."""
    units = np.zeros(column.shape)
    for k in range(17, -1, -1):  # the fewest decimals win: they are written last
        scaled = column * 10.0**k
        units[np.abs(scaled - np.round(scaled)) <= 4 * eps * np.abs(scaled)] = 10.0**-k
    return units


def _float64(x) -> np.ndarray:
    """A real array as float64 (no copy when it is one already); other kinds unchanged, for
    :func:`check_trajectory` to refuse. Cast first, checked after: a long double beyond the
    float64 range becomes inf, which the finiteness check then reports. A masked array is
    returned as it is, for :func:`check_trajectory` to refuse (its mask would be lost)."""
    if isinstance(x, np.ma.MaskedArray):
        return x
    arr = np.asarray(x)
    if arr.dtype.kind not in "iuf":
        return arr
    with np.errstate(over="ignore"):
        return arr.astype(np.float64, copy=False)


def standardize(x):
    """Standardise each dimension to zero mean and unit standard deviation.

    Parameters
    ----------
    x : array_like, shape (T, N)
        Finite real trajectory, no constant dimension.

    Returns
    -------
    x_std : ndarray, shape (T, N), float64
        ``(x - mean) / sd``.
    mean : ndarray, shape (N,), float64
    sd : ndarray, shape (N,), float64
        Population standard deviation (``ddof=0``). Store ``(mean, sd)`` with the model
        (``model.standardization``) to map predictions back with :func:`destandardize`.
    """
    where = "standardize"
    arr = check_trajectory(_float64(as_array(x, "x", where)), where, constant=True)
    mean, sd = column_mean_sd(arr)
    _check_not_constant(arr, sd, where, "x")
    return to_sd_units(arr, mean, sd), mean, sd


#: Columns whose ``|mean|`` or sd exceed this are converted in scaled units
#: (:func:`to_sd_units`): their ``x - mean`` or ``x_std * sd`` can pass the largest float64.
SCALED_UNITS_ABOVE = 1e150


def _unit_scale(mean: np.ndarray, sd: np.ndarray) -> np.ndarray | None:
    """Per column, ``max(|mean|, sd)`` where it exceeds :data:`SCALED_UNITS_ABOVE`, else 1;
    None when no column needs scaling."""
    size = np.maximum(np.abs(mean), sd)
    big = size > SCALED_UNITS_ABOVE
    return np.where(big, size, 1.0) if big.any() else None


def to_sd_units(x, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """``(x - mean) / sd`` (float64 ``mean``, ``sd > 0`` of shape (N,); ``x`` (..., N)),
    without its overflow for data near the largest float64 (``x - mean`` of 1.7e308 and
    -1.7e308 is -inf): columns with ``|mean|`` or sd above :data:`SCALED_UNITS_ABOVE` are
    computed as ``(x/c - mean/c) / (sd/c)`` with ``c = max(|mean|, sd)``; the others are the
    plain formula, bit for bit. Unchecked (callers check their arguments)."""
    c = _unit_scale(mean, sd)
    if c is None:
        return (x - mean) / sd
    return (x / c - mean / c) / (sd / c)


def from_sd_units(x_std, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """``x_std * sd + mean``, the inverse of :func:`to_sd_units`, without its overflow
    (``(x_std * (sd/c) + mean/c) * c`` in the columns it scales; bit for bit the plain
    formula elsewhere). Unchecked."""
    c = _unit_scale(mean, sd)
    if c is None:
        return x_std * sd + mean
    return (x_std * (sd / c) + mean / c) * c


def column_mean_sd(x):
    """Per-column mean and population sd of a finite trajectory, without over- or underflow.

    A column whose largest magnitude is beyond ``1e150`` (where ``x**2`` can overflow) or
    below ``1e-150`` (where it can underflow) is divided by that magnitude before the moments
    are taken and the results are scaled back; a column whose sd comes out below ``1e-140`` of
    that magnitude, where squared deviations can underflow (``2e-150 + 1e-161 z``), has it
    taken again from the deviations divided by their largest magnitude; other columns are
    computed directly (the same bits as ``x.mean(axis=0)``, ``x.std(axis=0)``).

    Parameters
    ----------
    x : ndarray, shape (T, N)
        Finite real values, ``T >= 1``.

    Returns
    -------
    mean, sd : ndarray, shape (N,), float64
        ``sd`` of a constant column is 0 or rounding noise (:func:`constant_columns` tells
        them apart).
    """
    arr = np.asarray(x, dtype=np.float64)
    scale = np.max(np.abs(arr), axis=0)
    scale = np.where((scale > 0) & ((scale > 1e150) | (scale < 1e-150)), scale, 1.0)
    unit = arr / scale
    mean, sd = unit.mean(axis=0), unit.std(axis=0)
    tiny = sd < 1e-140  # squared deviations near the subnormals (a pass only for these)
    if tiny.any():
        deviations = unit[:, tiny] - mean[tiny]
        spread = np.max(np.abs(deviations), axis=0)
        spread = np.where(spread > 0, spread, 1.0)  # a constant column keeps sd 0
        sd[tiny] = np.sqrt(np.mean((deviations / spread) ** 2, axis=0)) * spread
    return mean * scale, sd * scale


def destandardize(x_std, mean, sd):
    """Inverse of :func:`standardize`: ``x_std * sd + mean``.

    Parameters
    ----------
    x_std : array_like, shape (..., N)
    mean, sd : array_like, shape (N,)

    Returns
    -------
    ndarray, shape (..., N), float64
    """
    with Checks("destandardize") as checks:
        labels = ("x_std", "mean", "sd")
        arrs = [checks.array(a, label) for label, a in zip(labels, (x_std, mean, sd), strict=True)]
        for label, a in zip(labels, arrs, strict=True):
            if checks.ok(label) and a.dtype.kind not in "iuf":
                checks.add(f"{label} must be real numeric; got dtype {a.dtype}.", wrong_kind=True)
        checks.raise_problems()  # the checks below compare the values
        x_std, mean, sd = (a.astype(np.float64) for a in arrs)
        n = x_std.shape[-1] if x_std.ndim else 0
        if x_std.ndim < 1 or mean.shape != (n,) or sd.shape != (n,):
            checks.add(
                f"expected x_std of shape (..., N) with mean and sd of shape (N,); got "
                f"{x_std.shape}, {mean.shape}, {sd.shape}."
            )
        if np.any(sd <= 0) or not np.all(np.isfinite(sd)):
            checks.add(f"sd must be finite and > 0; got {sd}.")
        if not np.all(np.isfinite(mean)):
            checks.add(f"mean must be finite; got {mean}.")
    return from_sd_units(x_std, mean, sd)
