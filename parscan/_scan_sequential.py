"""Sequential scan kernels: one plain loop per sequence, the honest baseline.

Kernel signatures (shared by every backend module):

* ``scan_diag(a, b, h0, reverse, out)`` with ``a, b, out`` of shape ``(B, T, D)``, ``h0`` of
  shape ``(B, D)``;
* ``scan_dense(a, b, h0, reverse, transpose, out)`` with ``a`` of shape ``(B, T, D, D)``.

All arrays share one dtype and are C-contiguous; ``out`` is written completely. The per-sequence
helpers (``*_one``, ``*_range``) are also the bodies of the threaded kernels in
:mod:`parscan._scan_cpu`.
"""

import numpy as np
from numba import uint64

from parscan._jit import jit


@jit
def diag_range(a, b, h_in, lo, hi, reverse, out):
    """Scan steps ``lo..hi-1`` of one diagonal sequence, entering with state ``h_in``.

    ``a, b, out`` have shape ``(T, D)`` (C-contiguous), ``h_in`` shape ``(D,)``. Forward starts
    at ``lo`` (``h_in`` plays ``h[lo-1]``); reverse starts at ``hi-1`` (``h_in`` plays
    ``h[hi]``).

    The loop indexes flat views with unsigned offsets: Numba then emits no negative-index
    wraparound, and LLVM vectorises the loop over ``D`` (``bench/scan.py``, T = 1e6, D = 16:
    float32 0.61-0.76 -> 1.05-1.08 of a 1-thread STREAM triad, float64 0.89-0.94 ->
    1.04-1.09).
    """
    if hi <= lo:
        return
    D = uint64(b.shape[1])
    af, bf, of = a.reshape(a.size), b.reshape(b.size), out.reshape(out.size)
    first = uint64(hi - 1 if reverse else lo) * D
    for d in range(D):
        of[first + d] = af[first + d] * h_in[d] + bf[first + d]
    step = -1 if reverse else 1
    t = hi - 1 if reverse else lo
    for _ in range(1, hi - lo):
        prev = uint64(t) * D
        t += step
        base = uint64(t) * D
        for d in range(D):
            of[base + d] = af[base + d] * of[prev + d] + bf[base + d]


@jit
def flush_tiny(p, tiny):
    """``p``, or 0 where ``|p|`` is below ``tiny`` (complex: both parts); NaN is kept."""
    return p * ((abs(p.real) >= tiny) | (abs(p.imag) >= tiny))


@jit
def _is_zero(q):
    """Is every element of ``q`` (shape ``(D,)``) exactly 0?"""
    for d in range(q.shape[0]):
        if q[d] != 0:
            return False
    return True


@jit
def diag_reduce_range(a, b, lo, hi, reverse, a_agg, b_agg):
    """Aggregate pair of steps ``lo..hi-1``: ``h[last] = a_agg ∘ h_in + b_agg``.

    Applies the combine ``(A2, b2) • (A1, b1) = (A2 A1, A2 b1 + b2)`` step by step in time
    order (forward: increasing t; reverse: decreasing t). ``a_agg, b_agg`` have shape ``(D,)``.
    Flat unsigned indexing as in :func:`diag_range`.

    A product ``a_agg`` that falls below the dtype's smallest normal number is flushed to
    zero (NaN is kept). The running product of a contractive ``a`` otherwise sinks into
    the subnormals, where round-to-nearest can hold it at the smallest subnormal for ever
    (``5e-324 * 0.75`` rounds back to ``5e-324``), and every later multiply runs at
    subnormal speed: 10x slower at T = 1e6 with ``a`` uniform in (0.5, 1). The flushed term
    ``a_agg * h_in`` is below ``tiny * |h_in|``, far under the rounding of ``b_agg``.
    """
    D = uint64(b.shape[1])
    af, bf = a.reshape(a.size), b.reshape(b.size)
    tiny = np.finfo(a_agg.dtype).tiny
    for d in range(D):
        a_agg[d] = 1.0
        b_agg[d] = 0.0
    for s in range(hi - lo):
        base = uint64(hi - 1 - s if reverse else lo + s) * D
        for d in range(D):
            b_agg[d] = af[base + d] * b_agg[d] + bf[base + d]
            a_agg[d] = flush_tiny(af[base + d] * a_agg[d], tiny)


@jit
def diag_range_local(a, b, lo, hi, reverse, out, a_agg, with_product):
    """Scan steps ``lo..hi-1`` from a zero state; with ``with_product``, also ``a_agg = ∏ a_t``
    over them (shape ``(D,)``, flushed as in :func:`diag_reduce_range`).

    The first step writes ``b`` itself (the zero state is structural: ``inf * 0`` never makes
    a NaN that the true state would not have). Then ``h[t] = out[t] + (∏ a up to t) ∘ h_in``:
    pass 1 of the scan-then-fix strategy of :mod:`parscan._scan_cpu`. The product runs in the
    scan loop only until it is 0 in every channel (it stays 0), after which the loop is
    :func:`diag_range`'s: carrying the product's flush in every step measured 25-35 % slower.
    """
    if hi <= lo:
        return
    first = hi - 1 if reverse else lo
    out[first, :] = b[first, :]
    done = _scan_with_product(a, b, lo, hi, reverse, out, a_agg) if with_product else 1
    if reverse:
        diag_range(a, b, out[hi - done], lo, hi - done, reverse, out)
    else:
        diag_range(a, b, out[lo + done - 1], lo + done, hi, reverse, out)


@jit
def _scan_with_product(a, b, lo, hi, reverse, out, a_agg):
    """Continue :func:`diag_range_local` after its first step with ``a_agg = ∏ a_t`` alongside,
    until the product is 0 in every channel or the range ends; returns the steps done."""
    D = uint64(b.shape[1])
    af, bf, of = a.reshape(a.size), b.reshape(b.size), out.reshape(out.size)
    tiny = np.finfo(a_agg.dtype).tiny
    a_agg[:] = a[hi - 1 if reverse else lo]
    alive = not _is_zero(a_agg)
    done = 1
    while alive and done < hi - lo:
        prev = uint64(hi - done if reverse else lo + done - 1) * D
        base = uint64(hi - 1 - done if reverse else lo + done) * D
        alive = False
        for d in range(D):
            of[base + d] = af[base + d] * of[prev + d] + bf[base + d]
            a_agg[d] = flush_tiny(af[base + d] * a_agg[d], tiny)
            alive |= a_agg[d] != 0
        done += 1
    return done


#: Steps between the checks whether a decaying carry is 0 in every channel (checking every
#: step kept the loop from vectorising: 45-60 ns per step at D = 16 instead of 5-7).
DECAY_CHECK_STEPS = 32


@jit
def _decay_carry(a, lo, hi, reverse, q, out, add):
    """``q = a_t ∘ q`` for the steps ``lo..hi-1`` in scan order (flushed below the smallest
    normal number), adding each ``q`` to ``out[t]`` when ``add``; stops once every channel of
    ``q`` is exactly 0, checked every :data:`DECAY_CHECK_STEPS` steps. Returns the steps
    done, ``hi - lo + 1`` if ``q`` is still alive at the end."""
    D = uint64(a.shape[1])
    af, of = a.reshape(a.size), out.reshape(out.size)
    tiny = np.finfo(q.dtype).tiny
    done = 0
    while done < hi - lo:
        stop = min(done + DECAY_CHECK_STEPS, hi - lo)
        for s in range(done, stop):
            base = uint64(hi - 1 - s if reverse else lo + s) * D
            for d in range(D):
                q[d] = flush_tiny(af[base + d] * q[d], tiny)
            if add:
                for d in range(D):
                    of[base + d] += q[d]
        done = stop
        if _is_zero(q):
            return done
    return hi - lo + 1


@jit
def diag_fix_range(a, lo, hi, reverse, h_in, q, out):
    """Add the part of the state carried in from ``h_in``: ``out[t] += q_t`` for the steps
    ``lo..hi-1`` in scan order, ``q_t = a_t ∘ q_{t-1}`` with ``q`` entering as ``h_in``.

    Pass 2 of scan-then-fix. Stops once every channel of ``q`` is exactly 0 (flushed below the
    smallest normal number: an absolute change under ``tiny`` per step), checked every
    :data:`DECAY_CHECK_STEPS` steps: from there on the carried part is 0 and ``out`` is final.
    ``q`` is scratch of shape ``(D,)``. Returns the number of steps fixed.
    """
    q[:] = h_in
    return min(_decay_carry(a, lo, hi, reverse, q, out, True), hi - lo)


@jit
def diag_decay_steps(a, lo, hi, reverse, q):
    """Steps (in scan order from the start of ``lo..hi-1``, rounded up to a multiple of
    :data:`DECAY_CHECK_STEPS`) after which a unit state carried in has decayed to exactly 0 in
    every channel (see :func:`diag_fix_range`); ``hi - lo + 1`` if it has not by the end.
    ``q`` is scratch of shape ``(D,)``."""
    q[:] = 1.0
    return _decay_carry(a, lo, hi, reverse, q, a, False)  # a stands in for the unused out


@jit
def dense_one(a, b, h0, reverse, transpose, out):
    """Scan one dense sequence: ``a`` ``(T, D, D)``, ``b, out`` ``(T, D)``, ``h0`` ``(D,)``.

    ``out[t, i] = b[t, i] + sum_j m[i, j] h_prev[j]`` with ``m = a[t]`` (or ``a[t].T``), the sum
    taken in increasing ``j``.
    """
    T, D = b.shape
    for s in range(T):
        t = T - 1 - s if reverse else s
        p = t + 1 if reverse else t - 1
        prev = h0 if s == 0 else out[p]
        if transpose:
            for i in range(D):
                acc = b[t, i]
                for j in range(D):
                    acc += a[t, j, i] * prev[j]
                out[t, i] = acc
        else:
            for i in range(D):
                acc = b[t, i]
                for j in range(D):
                    acc += a[t, i, j] * prev[j]
                out[t, i] = acc


@jit
def scan_diag(a, b, h0, reverse, out):
    """Diagonal scan of a batch ``(B, T, D)``, one sequence after the other."""
    T = b.shape[1]
    for i in range(b.shape[0]):
        diag_range(a[i], b[i], h0[i], 0, T, reverse, out[i])


@jit
def scan_dense(a, b, h0, reverse, transpose, out):
    """Dense scan of a batch: ``a`` ``(B, T, D, D)``, one sequence after the other."""
    for i in range(b.shape[0]):
        dense_one(a[i], b[i], h0[i], reverse, transpose, out[i])
