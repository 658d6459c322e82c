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


def _read_text(path: Path) -> np.ndarray:
    lines = [
        ln.strip()
        for ln in path.read_text().splitlines()
        if ln.strip() and not ln.lstrip().startswith("#")
    ]
    if not lines:
        raise ValueError("the file has no data rows")
    delimiter = "," if "," in lines[-1] else None
    first = lines[0].split(delimiter)
    try:
        [float(v) for v in first]
        skip = 0
    except ValueError:
        skip = 1
    rows = [ln.split(delimiter) for ln in lines[skip:]]
    widths = {len(r) for r in rows}
    if len(widths) > 1:
        counts = [len(r) for r in rows]
        bad = next(i for i, c in enumerate(counts) if c != counts[0])
        raise ValueError(
            f"rows have different numbers of columns ({counts[0]} in the first data row, "
            f"{counts[bad]} in data row {bad})"
        )
    try:
        return np.array([[float(v) for v in r] for r in rows], dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"non-numeric entry ({exc})") from None


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
        ``.csv`` / ``.txt``: one row per time step, comma- or whitespace-separated, with an
        optional header line; lines starting with ``#`` are skipped.
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
        unsupported suffix, missing ``key``, not 1-D/2-D, fewer than ``min_steps`` steps,
        NaN/inf (first bad row and column reported), or a constant dimension.
    TypeError
        Non-numeric data (bool, complex, strings, objects).
    """
    where = "load_data"
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"{where}: path must be a str or Path; got {type(path).__name__}.")
    if isinstance(min_steps, bool) or not isinstance(min_steps, int) or min_steps < 1:
        raise ValueError(f"{where}: min_steps must be an int >= 1; got {min_steps!r}.")
    path = Path(path)
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
    mean = arr.mean(axis=0)
    sd = arr.std(axis=0)
    return (arr - mean) / sd, mean, sd


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
