"""Fingerprints of training data, so that a resumed run refuses data other than its own.

A checkpoint of :func:`autodiff.fit` stores, for the training and the validation data (the
trajectories concatenated when several), a :class:`Fingerprint`: the shape, up to
:data:`ROWS` evenly spaced rows (first and last included), and two moments of each block of
rows between consecutive sampled rows -- its column sums and its sums weighted by the position
in the block. The sampled rows see other data, another length or a time-reversed copy (which
keep the mean and sd); the block moments see a change between them (an edited, shuffled or
reversed stretch of a few rows). Everything is compared with a tolerance rather than hashed,
so data regenerated with last-bit differences (another machine) still resume.
"""

import itertools
from typing import NamedTuple

import numpy as np

from autodiff.checkpoint import is_count

#: the fingerprinted arguments of :func:`autodiff.fit`; a checkpoint stores, for each, its
#: ``<name>_shape`` in the training state (None when not given) and the arrays
#: ``array.<name>_rows`` and ``array.<name>_blocks``
FINGERPRINTED = ("data", "validation_data")
#: the most rows a fingerprint keeps, and the most values (wide data keep fewer rows, >= 16)
ROWS = 1024
VALUES = 1 << 16
#: a difference counts beyond this fraction of the column's range among the sampled rows (a
#: block's sums: of the range times the block's length) -- the spread of the data, not their
#: offset, which would hide any change of a signal far from 0 --
RTOL = 1e-5
#: -- and beyond this fraction of the column's largest magnitude (a block's: of its sum of
#: magnitudes), 8 float32 ulps: last-bit differences of regenerated data pass, whatever the
#: dtype of the run and of the data given now (float32 data far from 0, a constant column);
#: a change smaller than that passes too
ROUNDING = 8 * float(np.finfo(np.float32).eps)
#: the moments kept of each block: sum, position-weighted sum, sum of magnitudes
_MOMENTS = 3


class Fingerprint(NamedTuple):
    """The fingerprint of a ``(n_steps, n_dims)`` trajectory (:func:`fingerprint`)."""

    #: ``[n_steps, n_dims]``
    shape: list
    #: ``(n_rows, n_dims)`` float64: the rows :func:`sampled_rows` keeps
    rows: np.ndarray
    #: ``(n_rows - 1, 3, n_dims)`` float64: the moments of the rows from one sampled row to
    #: the next (exclusive), :func:`block_moments`; None in checkpoints written before them
    blocks: np.ndarray | None


def sampled_rows(n_steps: int, n_dims: int) -> np.ndarray:
    """Indices of the evenly spaced rows a fingerprint keeps of a ``(n_steps, n_dims)``
    trajectory, first and last included: at most :data:`ROWS`, and at most
    ``VALUES // n_dims`` (but 16) for wide data."""
    n_rows = min(n_steps, ROWS, max(16, VALUES // n_dims))
    return np.linspace(0, n_steps - 1, n_rows).round().astype(np.intp)


def block_moments(x: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """``(len(starts) - 1, 3, n_dims)`` float64 moments of the blocks ``x[starts[k] :
    starts[k + 1]]`` of a ``(n_steps, n_dims)`` trajectory: the column sums, the sums weighted
    by ``i / len(block)`` for the block's i-th row (a reversed or shuffled block changes
    them), and the sums of magnitudes (the scale the tolerance is relative to)."""
    moments = np.empty((len(starts) - 1, _MOMENTS, x.shape[1]))
    for k, (a, b) in enumerate(itertools.pairwise(starts)):
        block = x[a:b].astype(np.float64)
        moments[k, 0] = block.sum(axis=0)
        moments[k, 1] = (np.arange(b - a) / (b - a)) @ block
        moments[k, 2] = np.abs(block).sum(axis=0)
    return moments


def fingerprint(x: np.ndarray) -> Fingerprint:
    """The :class:`Fingerprint` of a ``(n_steps, n_dims)`` trajectory (``n_steps >= 2``)."""
    starts = sampled_rows(*x.shape)
    return Fingerprint(list(x.shape), x[starts].astype(np.float64), block_moments(x, starts))


def first_difference(before: Fingerprint, after: Fingerprint) -> tuple[int, int] | None:
    """The first rows ``(first, last)`` (inclusive) where the data of two fingerprints of the
    same shape differ beyond :data:`RTOL` of the data's range and :data:`ROUNDING` of their
    magnitude: a sampled row, or a block whose moments differ (a fingerprint without
    blocks, from an older checkpoint, compares the rows only); None when they agree."""
    starts = sampled_rows(*before.shape)
    top = np.max(np.abs(before.rows), axis=0)  # each column's largest sampled magnitude
    spread = np.ptp(before.rows, axis=0)
    tolerance = np.maximum(RTOL * spread, ROUNDING * top)
    rows = np.any(np.abs(after.rows - before.rows) > tolerance, axis=1)
    found = [(int(starts[np.argmax(rows)]),) * 2] if rows.any() else []
    if before.blocks is not None:
        change = np.abs(after.blocks[:, :2] - before.blocks[:, :2])
        lengths = np.diff(starts)[:, None, None]
        tolerance = np.maximum(RTOL * lengths * spread, ROUNDING * before.blocks[:, 2:])
        blocks = np.any(change > tolerance, axis=(1, 2))
        if blocks.any():
            k = int(np.argmax(blocks))
            found.append((int(starts[k]), int(starts[k + 1]) - 1))
    return min(found, default=None)


def stored(name: str, fp: Fingerprint | None) -> tuple[dict, dict]:
    """The training-state entries and the arrays a checkpoint stores for the fingerprint
    ``fp`` of the argument ``name`` (None: not given)."""
    if fp is None:
        return {f"{name}_shape": None}, {}
    return {f"{name}_shape": fp.shape}, {f"{name}_rows": fp.rows, f"{name}_blocks": fp.blocks}


def saved_fingerprint(meta: dict, arrays: dict, name: str) -> Fingerprint | None:
    """The fingerprint of the argument ``name`` a checkpoint stores (:func:`stored`; the
    training state ``meta``, the arrays ``arrays``), None when it was not given. Raises
    ValueError for a damaged one."""
    shape, rows, blocks = (
        meta[f"{name}_shape"],
        arrays.get(f"{name}_rows"),
        arrays.get(f"{name}_blocks"),
    )
    if shape is None and rows is None and blocks is None:
        return None
    ok = isinstance(shape, list) and len(shape) == 2 and all(is_count(n, 1) for n in shape)
    # a NaN would pass any comparison
    ok = ok and _finite_float64(rows) and (blocks is None or _finite_float64(blocks))
    if not ok:
        raise ValueError(f"the fingerprint of {name} is damaged")
    n_rows = len(sampled_rows(*shape))
    if rows.shape != (n_rows, shape[1]) or (
        blocks is not None and blocks.shape != (n_rows - 1, _MOMENTS, shape[1])
    ):
        raise ValueError(f"the fingerprint of {name} does not match its shape {shape}")
    return Fingerprint(shape, rows, blocks)


def _finite_float64(values) -> bool:
    """A finite float64 array."""
    return (
        isinstance(values, np.ndarray)
        and values.dtype == np.float64
        and bool(np.all(np.isfinite(values)))
    )
