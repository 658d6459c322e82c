"""Loading, validating and standardising trajectories (DESIGN.md section 8).

A dataset is one trajectory, a ``(T, N)`` array: T time steps of N observed dimensions.
"""

import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

SUFFIXES = (".npy", ".npz", ".csv", ".txt")


def check_trajectory(x, where: str, *, name: str = "x", min_steps: int = 2, constant: bool = False):
    """Validate an in-memory trajectory and return it as an ndarray (dtype unchanged).

    Parameters
    ----------
    x : array_like, shape (T, N)
        Real-valued (integer or floating) trajectory.
    where : str
        Public function name used in error messages.
    name : str
        The argument's name in error messages.
    min_steps : int
        Smallest admissible T.
    constant : bool
        Whether a dimension that is constant over time is allowed.

    Raises
    ------
    TypeError
        Not a real numeric array (bool, complex, object, str).
    ValueError
        Not 2-D, fewer than ``min_steps`` steps or no dimension, NaN/inf (the first bad
        row and column are reported), or a constant dimension when ``constant=False``.
    """
    arr = np.asarray(x)
    if arr.dtype.kind not in "iuf":
        raise TypeError(
            f"{where}: {name} must be a real numeric array; got dtype {arr.dtype}. "
            f"Convert it with np.asarray({name}, dtype=np.float64)."
        )
    if arr.ndim != 2:
        raise ValueError(
            f"{where}: {name} must be 2-D of shape (T, N); got shape {arr.shape}. "
            f"Use {name}[:, None] for a single series."
        )
    n_steps, n_dims = arr.shape
    if n_dims == 0:
        raise ValueError(f"{where}: {name} has no dimensions (shape {arr.shape}).")
    if n_steps < min_steps:
        raise ValueError(
            f"{where}: {name} has {n_steps} time steps; at least {min_steps} are needed here."
        )
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise ValueError(
                f"{where}: {name} contains {int(bad.sum())} NaN/inf value(s); the first is "
                f"{arr[row, col]} at row {row}, column {col}. Clean or interpolate the data."
            )
    if not constant:
        flat = np.flatnonzero(np.all(arr == arr[:1], axis=0))
        if flat.size:
            raise ValueError(
                f"{where}: {name} is constant in column(s) {flat.tolist()}; a constant "
                f"dimension cannot be standardised or modelled. Drop it."
            )
    return arr


def _numbered_lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, text)`` of the lines holding data or a header: blank lines and
    ``#`` comments are dropped, and so is a UTF-8 byte-order mark (Excel's "CSV UTF-8")."""
    text = path.read_text(encoding="utf-8-sig")
    return [
        (number, line.strip())
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]


def _delimiter(lines: list[tuple[int, str]]) -> str | None:
    """``","`` if the first data lines (up to ten after a possible header line) contain a
    comma, else None (whitespace); a truncated or odd last line does not decide it."""
    sample = lines[1:11] or lines[:1]
    return "," if any("," in text for _, text in sample) else None


def _parses(token: str, kind: type) -> bool:
    try:
        kind(token)
    except ValueError:
        return False
    return True


def _is_header(first: list[str], rest: list[list[str]]) -> bool:
    """Whether the first line is a header: it has a non-numeric entry, or it is exactly the
    integers ``0 .. N-1`` (pandas' names of unnamed columns, ``DataFrame.to_csv(index=False)``)
    and no later entry is written as an integer (pandas writes float columns with a decimal
    point or exponent)."""
    if not all(_parses(v, float) for v in first):
        return True
    pandas_names = first == [str(i) for i in range(len(first))]
    return pandas_names and not any(_parses(v, int) for row in rest for v in row)


def _to_array(rows: list[tuple[int, list[str]]]) -> np.ndarray:
    """Rows of equal width as a float64 array; a ragged row or a non-numeric entry raises
    ValueError naming its line."""
    first_line, first = rows[0]
    for line, row in rows:
        if len(row) != len(first):
            raise ValueError(
                f"rows have different numbers of columns: line {line} has {len(row)} "
                f"column{'s' * (len(row) != 1)}, expected {len(first)} (as in line {first_line})"
            )
    try:
        return np.array([[float(v) for v in row] for _, row in rows], dtype=np.float64)
    except ValueError:
        line, bad = next((line, v) for line, row in rows for v in row if not _parses(v, float))
        raise ValueError(f"non-numeric entry {bad!r} in line {line}") from None


def _read_text(path: Path) -> np.ndarray:
    lines = _numbered_lines(path)
    if not lines:
        raise ValueError("the file has no data rows")
    delimiter = _delimiter(lines)
    rows = [(line, [v.strip() for v in text.split(delimiter)]) for line, text in lines]
    if _is_header(rows[0][1], [row for _, row in rows[1:]]):
        rows = rows[1:]
    if not rows:
        raise ValueError("the file has a header but no data rows")
    return _to_array(rows)


def _read_npz(fh, key):
    with np.load(fh, allow_pickle=False) as npz:
        keys = list(npz.files)
        if key is None:
            if len(keys) != 1:
                raise KeyError(
                    f"it holds {len(keys)} arrays ({', '.join(keys) or 'none'}); "
                    f"pass key= to choose one"
                )
            key = keys[0]
        if key not in keys:
            raise KeyError(f"it has no array {key!r}; available: {', '.join(keys)}")
        return npz[key]


def load_data(path, *, key: str | None = None, min_steps: int = 2) -> np.ndarray:
    """Load one trajectory from ``.npy``, ``.npz``, ``.csv`` or ``.txt`` and validate it.

    Parameters
    ----------
    path : str or os.PathLike
        ``.npy``: one array. ``.npz``: the array named ``key``, or the only array in the file.
        ``.csv`` / ``.txt``: one row per time step, comma- or whitespace-separated (decided
        from the first data lines), with an optional header line; blank lines and lines
        starting with ``#`` are skipped, a UTF-8 byte-order mark is ignored. The first line
        is a header if it has a non-numeric entry, or if it is exactly the integers
        ``0,1,...,N-1`` (the names ``pandas.DataFrame.to_csv(index=False)`` gives unnamed
        columns) and no later entry is written as an integer (pandas writes floats with a
        decimal point or exponent). A first *data* row ``0,1,...,N-1`` above such float-only
        rows is therefore read as a header: write ``0.0,1.0,...`` or a named header.
    key : str, optional
        Array name inside an ``.npz`` (required when it holds several arrays).
    min_steps : int
        Smallest admissible number of time steps, e.g. ``T_seq + 1`` for training windows of
        length ``T_seq``.

    Returns
    -------
    ndarray, shape (T, N), float64
        A 1-D series is returned as ``(T, 1)``. Integer data are converted to float64.

    Raises
    ------
    ValueError
        Missing or unreadable file (including pickled ``.npy`` files, which are refused),
        unsupported suffix, missing ``key``, a text row with another number of columns than
        the first or a non-numeric entry (its line reported), not 1-D/2-D, fewer than
        ``min_steps`` steps, NaN/inf (first bad row and column reported), or a constant
        dimension.
    TypeError
        Non-numeric data (bool, complex, strings, objects).
    """
    where = "load_data"
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"{where}: path must be a str or Path; got {type(path).__name__}.")
    if isinstance(min_steps, bool) or not isinstance(min_steps, int) or min_steps < 1:
        raise ValueError(f"{where}: min_steps must be an int >= 1; got {min_steps!r}.")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{where}: {path} is a folder; pass a trajectory file in it.")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(
            f"{where}: unsupported file type {path.suffix!r} ({path}); "
            f"supported: {', '.join(SUFFIXES)}."
        )
    if not path.is_file():
        raise ValueError(f"{where}: no such file {path}.")
    if key is not None and suffix != ".npz":
        raise ValueError(f"{where}: key={key!r} applies to .npz files only; {path} is {suffix}.")
    try:
        if suffix in (".npy", ".npz"):
            with open(path, "rb") as fh:  # numpy leaks the handle of a corrupt zip otherwise
                arr = np.load(fh, allow_pickle=False) if suffix == ".npy" else _read_npz(fh, key)
        else:
            arr = _read_text(path)
    except (
        OSError,
        ValueError,
        KeyError,
        EOFError,
        UnicodeDecodeError,
        zipfile.BadZipFile,
        zlib.error,
    ) as exc:
        reason = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise ValueError(f"{where}: cannot read {path}: {reason}.") from None
    if arr.ndim == 1:
        arr = arr[:, None]
    arr = check_trajectory(arr, where, name=f"the data in {path.name}", min_steps=min_steps)
    return arr.astype(np.float64)


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
    arr = check_trajectory(x, "standardize").astype(np.float64)
    mean, sd = column_mean_sd(arr)
    return (arr - mean) / sd, mean, sd


def column_mean_sd(x):
    """Per-column mean and population sd of a finite trajectory, without over- or underflow.

    A column whose largest magnitude is beyond ``1e150`` (where ``x**2`` can overflow) or
    below ``1e-150`` (where it can underflow) is divided by that magnitude before the moments
    are taken and the results are scaled back; other columns are computed directly (the same
    bits as ``x.mean(axis=0)``, ``x.std(axis=0)``).

    Parameters
    ----------
    x : ndarray, shape (T, N)
        Finite real values, ``T >= 1``.

    Returns
    -------
    mean, sd : ndarray, shape (N,), float64
        ``sd`` is 0 exactly for a constant column.
    """
    arr = np.asarray(x, dtype=np.float64)
    scale = np.max(np.abs(arr), axis=0) if arr.size else np.ones(arr.shape[1:])
    scale = np.where((scale > 0) & ((scale > 1e150) | (scale < 1e-150)), scale, 1.0)
    unit = arr / scale
    return unit.mean(axis=0) * scale, unit.std(axis=0) * scale


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
    where = "destandardize"
    arrs = [np.asarray(a) for a in (x_std, mean, sd)]
    for label, a in zip(("x_std", "mean", "sd"), arrs, strict=True):
        if a.dtype.kind not in "iuf":
            raise TypeError(f"{where}: {label} must be real numeric; got dtype {a.dtype}.")
    x_std, mean, sd = (a.astype(np.float64) for a in arrs)
    n = x_std.shape[-1] if x_std.ndim else 0
    if x_std.ndim < 1 or mean.shape != (n,) or sd.shape != (n,):
        raise ValueError(
            f"{where}: expected x_std of shape (..., N) with mean and sd of shape (N,); got "
            f"{x_std.shape}, {mean.shape}, {sd.shape}."
        )
    if np.any(sd <= 0) or not np.all(np.isfinite(sd)):
        raise ValueError(f"{where}: sd must be finite and > 0; got {sd}.")
    return x_std * sd + mean
