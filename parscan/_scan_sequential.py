"""Sequential scan kernels: one plain loop per sequence, the honest baseline.

Kernel signatures (shared by every backend module):

* ``scan_diag(a, b, h0, reverse, out)`` with ``a, b, out`` of shape ``(B, T, D)``, ``h0`` of
  shape ``(B, D)``;
* ``scan_dense(a, b, h0, reverse, transpose, out)`` with ``a`` of shape ``(B, T, D, D)``.

All arrays share one dtype and are C-contiguous; ``out`` is written completely. The per-sequence
helpers (``*_one``, ``*_range``) are also the bodies of the threaded kernels in
:mod:`parscan._scan_cpu`.
"""

from parscan._jit import jit


@jit
def diag_range(a, b, h_in, lo, hi, reverse, out):
    """Scan steps ``lo..hi-1`` of one diagonal sequence, entering with state ``h_in``.

    ``a, b, out`` have shape ``(T, D)``, ``h_in`` shape ``(D,)``. Forward starts at ``lo``
    (``h_in`` plays ``h[lo-1]``); reverse starts at ``hi-1`` (``h_in`` plays ``h[hi]``).
    """
    if hi <= lo:
        return
    D = b.shape[1]
    first = hi - 1 if reverse else lo
    for d in range(D):
        out[first, d] = a[first, d] * h_in[d] + b[first, d]
    for s in range(1, hi - lo):
        if reverse:
            t = hi - 1 - s
            p = t + 1
        else:
            t = lo + s
            p = t - 1
        for d in range(D):
            out[t, d] = a[t, d] * out[p, d] + b[t, d]


@jit
def diag_reduce_range(a, b, lo, hi, reverse, a_agg, b_agg):
    """Aggregate pair of steps ``lo..hi-1``: ``h[last] = a_agg ∘ h_in + b_agg``.

    Applies the combine ``(A2, b2) • (A1, b1) = (A2 A1, A2 b1 + b2)`` step by step in time
    order (forward: increasing t; reverse: decreasing t). ``a_agg, b_agg`` have shape ``(D,)``.
    """
    D = b.shape[1]
    for d in range(D):
        a_agg[d] = 1.0
        b_agg[d] = 0.0
    for s in range(hi - lo):
        t = hi - 1 - s if reverse else lo + s
        for d in range(D):
            b_agg[d] = a[t, d] * b_agg[d] + b[t, d]
            a_agg[d] = a[t, d] * a_agg[d]


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
