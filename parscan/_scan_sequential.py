"""Sequential scan kernels: one plain loop per sequence, the honest baseline.

Kernel signatures (shared by every backend module):

* ``scan_diag(a, b, h0, reverse, out)`` with ``a, b, out`` of shape ``(B, T, D)``, ``h0`` of
  shape ``(B, D)``;
* ``scan_dense(a, b, h0, reverse, transpose, out)`` with ``a`` of shape ``(B, T, D, D)``.

All arrays share one dtype and are C-contiguous; ``out`` is written completely. The per-sequence
helpers (``*_one``, ``*_range``) are also the bodies of the threaded kernels in
:mod:`parscan._scan_cpu`.
"""

import math

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


# --------------------------------------------------------------------------- scaled products
# A chunk's product ``∏ a_t`` is kept as ``p * 2**(-k*e)``: whenever both parts of ``p`` fall
# below ``2**-k`` it is multiplied by ``2**k`` and its rescale count ``e`` grows; whenever a
# part exceeds ``2**k`` it is divided by ``2**k`` and ``e`` falls (without bound: a product of
# steps up to ``2**k`` never overflows, so a carry of exactly 0 contributes 0, as in the
# sequential loop, where ``inf * 0`` would be NaN, and a tiny carry through a huge product a
# number where ``inf`` would be returned; larger steps can outgrow one rescale per step, and a
# finite carry is then walked through the chunk, ``parscan._scan_cpu._walks``). The product
# of a contractive ``a`` otherwise sinks into the subnormals, where round-to-nearest can hold
# it at the smallest subnormal for ever (``5e-324 * 0.75`` rounds back to ``5e-324``) and
# every later multiply runs at subnormal speed (10x slower at T = 1e6, ``a`` uniform in
# (0.5, 1)); flushing it to 0 instead loses ``∏ a * h_in`` where ``h_in`` is huge (a carry of
# 1e30 through a product of 1e-61 is 1e-31, not 0). Only once the product is below
# ``2**-(k*(e_max+1))`` -- smaller than the smallest subnormal divided by the largest finite
# number, so that its product with any finite carry rounds to 0 -- is it set to 0 (and stays
# 0, which ends the product loops early). A 0 product (so flushed, or with a step of ``a``
# exactly 0) cannot carry an infinite state: 0 * inf is NaN, where the sequential loop gives
# ±inf through tiny steps; such a carry is walked through the chunk (:func:`diag_walk`).


@jit
def product_scale(x):
    """``(k, e_max)`` of the scaled products of ``x``'s dtype: rescale by ``2**k`` when both
    parts are below ``2**-k``, at most ``e_max`` times (float32 / complex64: 32, 8;
    float64 / complex128: 64, 32)."""
    if np.finfo(x.dtype).eps > 1e-10:  # 24-bit mantissa, exponents -149 .. 127
        return 32, 8  # 32 * 9 >= 149 + 128 + 1
    return 64, 32  # 64 * 33 >= 1074 + 1024 + 1


@jit
def product_up(x, k):
    """``2**k`` as a scalar of the real type of ``x``'s dtype (float32 for complex64)."""
    up = np.empty(1, x.dtype)
    up[0] = 2.0**k
    return up[0].real


@jit
def rescale(p, e, up, e_max):
    """One renormalisation step of a scaled product: ``(p, e)`` with ``p`` multiplied by
    ``up = 2**k`` (and ``e + 1``) when both parts are below ``1 / up``, or set to 0 when that
    would exceed ``e_max`` rescales; divided by ``up`` (and ``e - 1``) when a part is above
    ``up``; NaN and inf are kept (inf, from an infinite step of ``a``, with a falling ``e``
    that :func:`times_pow2` bounds)."""
    one, zero = up / up, up - up  # in up's precision: no float64 promotion of float32 lanes
    small = (abs(p.real) * up < one) & (abs(p.imag) * up < one)
    large = (abs(p.real) > up) | (abs(p.imag) > up)
    grow = small & (e < e_max)
    factor = up if grow else (zero if small else (one / up if large else one))
    return p * factor, e + (one if grow else (-one if large else zero))


#: beyond this binary exponent a factor of a unit-scale number (``|z|`` in [1/4, 1]) is 0 or
#: inf in float64: the largest finite float64 is below ``2**1024``, the smallest subnormal
#: ``2**-1074``
_POW2_BEYOND = 1100


@jit
def times_pow2(z, n):
    """``z * 2**n`` for any int ``n`` in the widest precision (float64 / complex128), in
    steps of normal powers of two (exact except for a final rounding into the subnormals);
    ``n`` is first bounded by ``±_POW2_BEYOND``, which changes nothing for ``|z| >= 2**-76``
    (0 or inf either way) and bounds the steps."""
    z = z * 1.0
    n = max(min(n, _POW2_BEYOND), -_POW2_BEYOND)
    while n > 960:
        z = z * 2.0**960
        n -= 960
    while n < -960:
        z = z * 2.0**-960
        n += 960
    return z * 2.0**n


@jit
def _exponent(z):
    """Binary exponent of the larger part of ``z``; 0 for 0, NaN and inf."""
    m = max(abs(z.real), abs(z.imag))
    if m == 0 or not m < np.inf:
        return 0
    return math.frexp(m)[1]


@jit
def scaled_times(p, e, k, h):
    """``(p * 2**(-k*e)) * h`` without intermediate overflow or underflow: both factors are
    brought to unit scale, multiplied, and the exponents applied once at the end."""
    sp, sh = _exponent(p), _exponent(h)
    unit = times_pow2(p, -sp) * times_pow2(h, -sh)
    return times_pow2(unit, sp + sh - k * int(e))


@jit
def not_finite(z):
    """Is a part of the scalar ``z`` inf or NaN?"""
    return not (abs(z.real) < np.inf and abs(z.imag) < np.inf)


@jit
def diag_walk(a, b, lo, hi, reverse, h):
    """``h`` (shape ``(D,)``) becomes the state after the steps ``lo..hi-1`` in scan order,
    entering as ``h``: the loop of :func:`diag_range` without the writes to ``out``.

    How a non-finite carry crosses a chunk whose scaled product is 0: the product cannot tell
    an underflow (the sequential loop keeps ``±inf``: a tiny ``a`` times inf is inf) from a
    step with ``a`` exactly 0 (NaN from there on), the loop itself can.
    """
    D = b.shape[1]
    for s in range(hi - lo):
        t = hi - 1 - s if reverse else lo + s
        for d in range(D):
            h[d] = a[t, d] * h[d] + b[t, d]


# --------------------------------------------------------------------------- time chunks


@jit
def diag_reduce_range(a, b, lo, hi, reverse, a_agg, a_exp, b_agg):
    """Aggregate pair of steps ``lo..hi-1``: ``h[last] = (a_agg * 2**(-k*a_exp)) ∘ h_in +
    b_agg`` (``k`` of :func:`product_scale`).

    Applies the combine ``(A2, b2) • (A1, b1) = (A2 A1, A2 b1 + b2)`` step by step in time
    order (forward: increasing t; reverse: decreasing t). ``a_agg, b_agg`` have shape ``(D,)``,
    ``a_exp`` too (whole numbers in a float array of ``a_agg``'s real dtype, the precision
    :func:`rescale` counts in): the product is kept scaled (see :func:`rescale`), so that it
    neither sinks into the subnormals nor loses a huge carry. Flat unsigned indexing as in
    :func:`diag_range`.
    """
    D = uint64(b.shape[1])
    af, bf = a.reshape(a.size), b.reshape(b.size)
    k, e_max = product_scale(a_agg)
    up = product_up(a_agg, k)
    for d in range(D):
        a_agg[d] = 1.0
        a_exp[d] = 0
        b_agg[d] = 0.0
    for s in range(hi - lo):
        base = uint64(hi - 1 - s if reverse else lo + s) * D
        for d in range(D):
            b_agg[d] = af[base + d] * b_agg[d] + bf[base + d]
            a_agg[d], a_exp[d] = rescale(af[base + d] * a_agg[d], a_exp[d], up, e_max)


@jit
def diag_range_local(a, b, lo, hi, reverse, out, a_agg, a_exp, with_product):
    """Scan steps ``lo..hi-1`` from a zero state; with ``with_product``, also the scaled
    product ``a_agg * 2**(-k*a_exp) = ∏ a_t`` over them (shape ``(D,)``, see
    :func:`diag_reduce_range`).

    The first step writes ``b`` itself (the zero state is structural: ``inf * 0`` never makes
    a NaN that the true state would not have). Then ``h[t] = out[t] + (∏ a up to t) ∘ h_in``:
    pass 1 of the scan-then-fix strategy of :mod:`parscan._scan_cpu`. The product runs in the
    scan loop only until it is 0 in every channel (below any finite carry's reach; it stays
    0), after which the loop is :func:`diag_range`'s: carrying the product in every step
    measured 25-35 % slower.
    """
    if hi <= lo:
        return
    first = hi - 1 if reverse else lo
    out[first, :] = b[first, :]
    done = _scan_with_product(a, b, lo, hi, reverse, out, a_agg, a_exp) if with_product else 1
    if reverse:
        diag_range(a, b, out[hi - done], lo, hi - done, reverse, out)
    else:
        diag_range(a, b, out[lo + done - 1], lo + done, hi, reverse, out)


@jit
def _scan_with_product(a, b, lo, hi, reverse, out, a_agg, a_exp):
    """Continue :func:`diag_range_local` after its first step with the scaled product
    alongside, until it is 0 in every channel or the range ends; returns the steps done."""
    D = uint64(b.shape[1])
    af, bf, of = a.reshape(a.size), b.reshape(b.size), out.reshape(out.size)
    k, e_max = product_scale(a_agg)
    up = product_up(a_agg, k)
    a_agg[:] = a[hi - 1 if reverse else lo]
    a_exp[:] = 0
    alive = not _is_zero(a_agg)
    done = 1
    while alive and done < hi - lo:
        prev = uint64(hi - done if reverse else lo + done - 1) * D
        base = uint64(hi - 1 - done if reverse else lo + done) * D
        alive = False
        for d in range(D):
            of[base + d] = af[base + d] * of[prev + d] + bf[base + d]
            a_agg[d], a_exp[d] = rescale(af[base + d] * a_agg[d], a_exp[d], up, e_max)
            alive |= a_agg[d] != 0
        done += 1
    return done


@jit
def _is_zero(q):
    """Is every element of ``q`` (shape ``(D,)``) exactly 0?"""
    for d in range(q.shape[0]):
        if q[d] != 0:
            return False
    return True


@jit
def _negligible(q, h, unit, c):
    """Is every channel of the carried part ``q`` (shape ``(D,)``) exactly 0, or finite and
    at most ``c |h|`` with ``h`` finite (``h = 1`` when ``unit``)?"""
    big = np.finfo(q.dtype).max
    for d in range(q.shape[0]):
        if q[d] == 0:
            continue
        hd = 1.0 if unit else h[d]
        finite = abs(hd.real) <= big and abs(hd.imag) <= big
        if not (finite and abs(q[d]) <= c * abs(hd)):
            return False
    return True


#: Steps between the checks whether a decaying carry is negligible in every channel
#: (checking every step kept the loop from vectorising: 45-60 ns per step at D = 16
#: instead of 5-7).
DECAY_CHECK_STEPS = 32


@jit
def _decay_carry(a, lo, hi, reverse, q, out, add, seen):
    """``q = a_t ∘ q`` for the steps ``lo..hi-1`` in scan order, adding each ``q`` to
    ``out[t]`` when ``add`` (and ``out[t] - out[t]`` to ``seen``, shape ``(D,)``: NaN in a
    channel once a sum was not finite, which it can be at one step only; fused into the
    loop, as a separate pass cost 25-30 % where the fix runs through a whole chunk). Every
    :data:`DECAY_CHECK_STEPS` steps it stops if every channel of ``q`` is exactly 0 or below
    a quarter of the machine epsilon relative to ``out[t]`` (``add``) or to 1 (a unit carry,
    not ``add``; ``out`` is then not touched and may be any writeable 2-D array of ``q``'s
    dtype, so ``a`` may be read-only). Returns the steps done,
    ``hi - lo + 1`` if ``q`` is still not negligible at the end."""
    D = uint64(a.shape[1])
    af, of = a.reshape(a.size), out.reshape(out.size)
    c = np.finfo(q.dtype).eps / 4
    done = 0
    while done < hi - lo:
        stop = min(done + DECAY_CHECK_STEPS, hi - lo)
        for s in range(done, stop):
            base = uint64(hi - 1 - s if reverse else lo + s) * D
            for d in range(D):
                q[d] = af[base + d] * q[d]
            if add:
                for d in range(D):
                    v = of[base + d] + q[d]
                    of[base + d] = v
                    seen[d] += v - v
        done = stop
        t = hi - done if reverse else lo + done - 1
        if _negligible(q, out[t] if add else q, not add, c):
            return done
    return hi - lo + 1


@jit
def diag_fix_range(a, lo, hi, reverse, h_in, q, out, seen):
    """Add the part of the state carried in from ``h_in``: ``out[t] += q_t`` for the steps
    ``lo..hi-1`` in scan order, ``q_t = a_t ∘ q_{t-1}`` with ``q`` entering as ``h_in``.

    Pass 2 of scan-then-fix. Stops once every channel of ``q`` is exactly 0 or finite and
    below ``eps/4 |out[t]|`` (``out[t]`` finite), checked every :data:`DECAY_CHECK_STEPS`
    steps: adding it no longer changes ``out[t]``. What is left out after that is
    ``(∏ a) q_t``, at most ``eps/4`` of ``(∏ a) out[t]``: the same size as the rounding error
    the sequential loop itself makes at step ``t`` and carries on through the same ``∏ a``,
    so the result agrees with the sequential loop to rounding even where later steps cancel
    ``out``. A ``q`` that stays large against ``out`` (``out`` near 0, NaN, inf) is added to
    the end of the chunk. ``q`` is scratch of shape ``(D,)``; ``seen`` (shape ``(D,)``, 0 on
    entry) becomes NaN in a channel where a fixed state is not finite. Returns the number of
    steps fixed.
    """
    q[:] = h_in
    return min(_decay_carry(a, lo, hi, reverse, q, out, True, seen), hi - lo)


@jit
def diag_decay_steps(a, lo, hi, reverse, q):
    """Steps (in scan order from the start of ``lo..hi-1``, rounded up to a multiple of
    :data:`DECAY_CHECK_STEPS`) after which a unit state carried in has decayed below a
    quarter of the machine epsilon in every channel (see :func:`diag_fix_range`);
    ``hi - lo + 1`` if it has not by the end. ``q`` is scratch of shape ``(D,)``."""
    q[:] = 1.0
    return _decay_carry(a, lo, hi, reverse, q, q.reshape((1, q.size)), False, q)  # unused


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
