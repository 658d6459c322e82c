"""Threaded (Numba ``prange``) scan kernels, same signatures as :mod:`parscan._scan_sequential`.

Three strategies (DESIGN.md §2, measured on 2 cores):

* **parallel over the batch** when there are at least as many independent sequences as
  threads: each thread runs the sequential loop on its own sequences;
* **scan-then-fix with a decaying carry** (diagonal only) when ``B < threads`` and the carry
  between chunks dies out quickly (probed, see below): each sequence is cut into
  ``P = ceil(threads / B)`` chunks. Pass 1 scans chunk 0 with the true ``h0`` and every other chunk
  from a zero state (and its product ``∏ a``); a short serial loop gives the state entering
  every chunk; pass 2 adds the carried part ``q_t = a_t ∘ q_{t-1}`` to the start of each chunk
  and stops as soon as ``q`` is negligible in every channel: exactly 0, or below a quarter of
  an ulp of the state it is added to (the rounding error the sequential loop itself makes
  there, see :func:`~parscan._scan_sequential.diag_fix_range`). With a contractive ``a``
  that happens after a few dozen to a few hundred steps, so ``a, b`` are read once and ``h``
  written once, as in a STREAM triad. Whether it will happen is probed before: a unit carry
  is decayed through the first steps of chunk 1 of every sequence (at most a quarter of the
  chunk, at most :data:`FIX_PROBE_STEPS`) until it is below a quarter of the machine
  epsilon; the plan is taken only if it gets there. A wrong guess (the real carry, relative
  to the state, dies later) costs time, never accuracy;
* **reduce-then-scan over time** (diagonal only) otherwise (``|a|`` near 1: cumulative sums,
  slow SSM decay rates): ``P = ceil(threads / B) + 1`` chunks. Pass 1 scans chunk 0 with the
  true ``h0`` while the other threads reduce chunks ``1..P-2`` to aggregate pairs ``(A, b)``;
  a short serial loop turns the aggregates into the carry entering every chunk; pass 2 scans
  chunks ``1..P-1`` from their carries. ``a, b`` are read about ``2 (P-1) / P`` times (a
  full scan-then-fix, ``h`` read and written twice, always lost on 2 cores). The chunks are
  equally long: a traffic model (scanning an element reads ``a, b`` and writes ``h``, 3
  units; reducing one reads ``a, b``, 2 units) suggests a chunk 0 2/3 as long as the
  others, but equal chunks measured 5-15 % faster on 2 cores (T = 1e5 and 1e6, D = 16,
  float32 and float64): the reduction runs at the same speed as the scan, both being bound
  by the dependency through ``h`` and by bandwidth shared between the threads.

Both time-parallel plans round differently from the sequential loop (in the last bits; never
on dyadic data, where every association is exact). Where states overflow or are not finite,
the combinations can also differ in kind (``inf - inf``, a sum that overflows at one step
only, a loop that overflows inside a chunk whose product comes back): a carry whose combined
value is not finite is walked through its chunk (:func:`_walks`), and a last serial pass
(:func:`_redo_chunks`, ``O(P D)`` comparisons when all is finite) scans again, from the
loop's state, every chunk whose carry or fixed states may differ from the loop's.

Dense scans are only ever parallel over the batch: a time-parallel dense scan does ``D³`` work
per combine and was 2.5-5x slower than the sequential loop on 2 cores (D = 3..32).

``prange`` bodies are thin calls into jitted helpers (the same loop inlined in a ``prange`` body
ran 2-4x slower).
"""

import numpy as np
from numba import prange

from parscan._jit import jit, jit_parallel, n_threads
from parscan._scan_sequential import (
    dense_one,
    diag_decay_steps,
    diag_fix_range,
    diag_range,
    diag_range_local,
    diag_reduce_range,
    diag_walk,
    not_finite,
    product_scale,
    scaled_times,
)

#: Longest probe of the scan-then-fix plan, in steps (in float64 a carry through ``a``
#: uniform in (0.5, 1) dies after about 2,400 steps, through ``a`` uniform in (-0.95, 0.95)
#: after about 740; in float32 after about 290 and 130).
FIX_PROBE_STEPS = 16384


@jit
def _chunk_start(T, n_chunks, k):
    """First step of chunk ``k`` (forward order): equal chunks."""
    return T * k // n_chunks


@jit
def _chunk_bounds(T, n_chunks, k, reverse):
    """Steps ``[lo, hi)`` of the ``k``-th chunk in processing order (reverse: from the end)."""
    lo = _chunk_start(T, n_chunks, k)
    hi = _chunk_start(T, n_chunks, k + 1)
    if reverse:
        return T - hi, T - lo
    return lo, hi


@jit
def _reduce_task(a, b, h0, reverse, n_chunks, k, a_agg, a_exp, b_agg, out):
    """Pass 1 for one sequence: scan chunk 0 for real, reduce chunk ``k >= 1`` to a pair."""
    lo, hi = _chunk_bounds(b.shape[0], n_chunks, k, reverse)
    if k == 0:
        diag_range(a, b, h0, lo, hi, reverse, out)
    else:
        diag_reduce_range(a, b, lo, hi, reverse, a_agg[k], a_exp[k], b_agg[k])


@jit
def _carry_task(a, b, h0, reverse, n_chunks, a_agg, a_exp, b_agg, out):
    """Serial step: ``b_agg[k]`` becomes the state at the end of chunk ``k`` (``k < P-1``),
    the scaled products ``a_agg * 2**(-k*a_exp)`` applied without overflow or underflow.

    A channel whose combined state is not finite where the loop's may differ (:func:`_walks`)
    takes the state the sequential loop reaches instead: the chunk is walked step by step
    (:func:`~parscan._scan_sequential.diag_walk`), one more serial pass over it, taken only
    then."""
    T, D = b.shape
    lo, hi = _chunk_bounds(T, n_chunks, 0, reverse)
    if hi > lo:
        b_agg[0, :] = out[lo if reverse else hi - 1]
    else:
        b_agg[0, :] = h0
    scale = product_scale(a_agg)[0]
    real = not np.iscomplexobj(b)
    walked = np.empty(D, b.dtype)
    carried = np.empty(D, b.dtype)
    walks = np.empty(D, np.bool_)
    for k in range(1, n_chunks - 1):
        walk = False
        for d in range(D):
            p, h = a_agg[k, d], b_agg[k - 1, d]
            carried[d] = scaled_times(p, a_exp[k, d], scale, h) + b_agg[k, d]
            walks[d] = _walks(p, h, b_agg[k, d], carried[d], real)
            walk |= walks[d]
        if walk:
            lo, hi = _chunk_bounds(T, n_chunks, k, reverse)
            walked[:] = b_agg[k - 1]
            diag_walk(a, b, lo, hi, reverse, walked)
        for d in range(D):
            b_agg[k, d] = walked[d] if walks[d] else carried[d]


@jit
def _walks(p, h, offset, carried, real) -> bool:
    """Must the state ``h`` be walked through a chunk of scaled product ``p`` and offset
    ``offset`` (``carried = p h + offset``)? Only when ``carried`` is not finite (a finite one
    is the loop's state to rounding, or the loop overflowed inside the chunk, which
    :func:`_redo_chunks` finds), and then unless the loop provably gives it too: ``h`` NaN
    (NaN from the first step on) or, real dtypes, ``h = ±inf`` through a finite nonzero
    product and a finite offset (every step finite, nonzero, adding a finite number: ``±inf``
    with the product's sign). Elsewhere the combination can differ from the loop: a product of
    0 (flushed, or an ``a`` of exactly 0) times inf is NaN where the loop keeps ``±inf``
    through tiny steps; a non-finite product (inf or NaN in ``a``, or steps beyond ``2**k``
    that outgrow the scale kept) times a finite ``h`` is NaN or inf where the loop may keep 0
    or a finite state; an offset that overflowed to ``∓inf`` plus ``h = ±inf`` is NaN where
    the loop stays ``±inf``."""
    if not not_finite(carried) or h != h:
        return False
    return not (real and p != 0 and not not_finite(p) and not not_finite(offset))


@jit
def _alike(x, y) -> bool:
    """Does the loop go on alike from the states ``x`` and ``y``: both finite, or the same
    non-finite value (NaN parts in the same places)?"""
    if not (not_finite(x) or not_finite(y)):
        return True
    re = x.real == y.real or (x.real != x.real and y.real != y.real)
    im = x.imag == y.imag or (x.imag != x.imag and y.imag != y.imag)
    return re and im


@jit
def _fixed_as_loop(h, last, real) -> bool:
    """Is ``last``, scan-then-fix's state at the end of a chunk entered with the loop's state
    ``h``, one the loop gives there too? Finite: yes where the fixed states were finite too
    (``seen``; a state the loop makes non-finite stays non-finite). Not finite: only
    where ``h`` is NaN (every state NaN) or, real dtypes, ``h`` and ``last`` are both ``±inf``
    (the carried part ``±inf`` all through the chunk, steps of no 0 or NaN, the local part
    never the opposite infinity, which would stay so and make ``last`` NaN)."""
    if not not_finite(last) or h != h:
        return True
    return real and last == last and not (abs(h) < np.inf)


@jit
def _redo_chunks(a, b, h0, reverse, n_chunks, b_agg, out, seen):
    """Serial last pass of both time-chunked plans for one sequence: chunk ``k >= 1`` was
    scanned from the carry ``b_agg[k-1]``, a combination that can differ from the loop where
    states overflow or are not finite (the loop overflows inside a chunk whose product and
    offset stay finite and comes out ``±inf`` or, after an ``a`` of 0, NaN, where the
    combination is finite; ...). Where that carry and the state at the end of chunk ``k-1``
    (the loop's, by induction from chunk 0) would not lead the loop alike (:func:`_alike`),
    chunk ``k`` is scanned again from that state, serially; ``O(P D)`` comparisons when
    every state is finite.

    Scan-then-fix (``seen`` of shape ``(P, D)``, from :func:`_fix_task`; empty for
    reduce-then-scan, whose chunks are the loop from their carry) adds the carried part to
    the chunk's local scan, and that sum is no recursion: it can overflow at a step and be
    finite again after, where the loop stays ``±inf``, or be NaN (``inf - inf``) where the
    loop is ``±inf``. A chunk is also scanned again where a channel entered with a finite
    state has a non-finite fixed state (``seen``), or ends on a non-finite state the loop may
    not give (:func:`_fixed_as_loop`)."""
    T, D = b.shape
    fixed = seen.shape[0] > 0
    real = not np.iscomplexobj(b)
    state = h0.copy()  # the loop's state entering chunk k
    for k in range(n_chunks):
        lo, hi = _chunk_bounds(T, n_chunks, k, reverse)
        if hi <= lo:
            continue
        last = lo if reverse else hi - 1
        redo = False
        if k > 0:
            for d in range(D):
                redo |= not _alike(b_agg[k - 1, d], state[d])
                if fixed:
                    redo |= seen[k, d] != 0 and not not_finite(state[d])
                    redo |= not _fixed_as_loop(state[d], out[last, d], real)
        if redo:
            diag_range(a, b, state, lo, hi, reverse, out)
        state[:] = out[last]


@jit
def _scan_task(a, b, reverse, n_chunks, k, b_agg, out):
    """Pass 2 for one sequence: scan chunk ``k >= 1`` entering with the carry ``b_agg[k-1]``."""
    lo, hi = _chunk_bounds(b.shape[0], n_chunks, k, reverse)
    diag_range(a, b, b_agg[k - 1], lo, hi, reverse, out)


@jit_parallel
def _diag_chunked(a, b, h0, reverse, n_chunks, a_agg, a_exp, b_agg, out):
    """Reduce-then-scan over ``n_chunks`` time chunks per sequence; ``a_agg, a_exp, b_agg``:
    workspace of shape ``(B, n, D)``, ``n >= n_chunks - 1`` (``a_exp`` of ``a_agg``'s real
    dtype, see :func:`~parscan._scan_sequential.diag_reduce_range`)."""
    n_tasks = n_chunks - 1
    for i in prange(b.shape[0] * n_tasks):
        s = i // n_tasks
        k = i % n_tasks
        _reduce_task(a[s], b[s], h0[s], reverse, n_chunks, k, a_agg[s], a_exp[s], b_agg[s], out[s])
    for s in range(b.shape[0]):
        _carry_task(a[s], b[s], h0[s], reverse, n_chunks, a_agg[s], a_exp[s], b_agg[s], out[s])
    for i in prange(b.shape[0] * n_tasks):
        s = i // n_tasks
        _scan_task(a[s], b[s], reverse, n_chunks, i % n_tasks + 1, b_agg[s], out[s])
    for s in range(b.shape[0]):
        _redo_chunks(a[s], b[s], h0[s], reverse, n_chunks, b_agg[s], out[s], b_agg[s, :0])


@jit_parallel
def _diag_batch(a, b, h0, reverse, out):
    """One sequence per ``prange`` iteration."""
    T = b.shape[1]
    for i in prange(b.shape[0]):
        diag_range(a[i], b[i], h0[i], 0, T, reverse, out[i])


@jit_parallel
def scan_dense(a, b, h0, reverse, transpose, out):
    """Dense scan ``a`` ``(B, T, D, D)``: parallel over the batch only."""
    for i in prange(b.shape[0]):
        dense_one(a[i], b[i], h0[i], reverse, transpose, out[i])


@jit
def _local_task(a, b, h0, reverse, n_chunks, k, a_agg, a_exp, b_agg, out):
    """Pass 1 of scan-then-fix for one sequence: chunk 0 with the true ``h0``; chunk
    ``k >= 1`` from a zero state, its end state into ``b_agg[k]`` and, unless it is the last
    chunk, its scaled product into ``a_agg[k], a_exp[k]``."""
    lo, hi = _chunk_bounds(b.shape[0], n_chunks, k, reverse)
    if k == 0:
        diag_range(a, b, h0, lo, hi, reverse, out)
    elif hi <= lo:  # an empty chunk (T < n_chunks) passes the state on unchanged
        a_agg[k, :] = 1.0
        a_exp[k, :] = 0
        b_agg[k, :] = 0.0
    else:
        diag_range_local(a, b, lo, hi, reverse, out, a_agg[k], a_exp[k], k < n_chunks - 1)
        b_agg[k, :] = out[lo if reverse else hi - 1]


@jit
def _fix_task(a, reverse, n_chunks, k, b_agg, out, seen):
    """Pass 2 of scan-then-fix for one sequence: add the carry ``b_agg[k-1]`` to chunk ``k``;
    ``seen[d]`` (0 on entry) becomes NaN where a fixed state of channel ``d`` is not finite."""
    lo, hi = _chunk_bounds(a.shape[0], n_chunks, k, reverse)
    diag_fix_range(a, lo, hi, reverse, b_agg[k - 1], np.empty(a.shape[1], a.dtype), out, seen)


@jit_parallel
def _diag_scan_then_fix(a, b, h0, reverse, n_chunks, a_agg, a_exp, b_agg, out):
    """Scan-then-fix over ``n_chunks >= 2`` time chunks per sequence; ``a_agg, a_exp, b_agg``:
    workspace of shape ``(B, n_chunks, D)`` (``a_exp`` of ``a_agg``'s real dtype; slot 0
    unused in ``a_agg``)."""
    B = b.shape[0]
    for i in prange(B * n_chunks):
        s = i // n_chunks
        k = i % n_chunks
        _local_task(a[s], b[s], h0[s], reverse, n_chunks, k, a_agg[s], a_exp[s], b_agg[s], out[s])
    for s in range(B):
        _carry_task(a[s], b[s], h0[s], reverse, n_chunks, a_agg[s], a_exp[s], b_agg[s], out[s])
    seen = np.zeros(b_agg.shape, b.dtype)
    n_fixes = n_chunks - 1
    for i in prange(B * n_fixes):
        s, k = i // n_fixes, i % n_fixes + 1
        _fix_task(a[s], reverse, n_chunks, k, b_agg[s], out[s], seen[s, k])
    for s in range(B):
        _redo_chunks(a[s], b[s], h0[s], reverse, n_chunks, b_agg[s], out[s], seen[s])


@jit
def carries_die_out(a, reverse, n_chunks, limit):
    """Does a unit carry entering chunk 1 decay below a quarter of the machine epsilon within
    its first ``limit`` steps (scan order) in every sequence of ``a`` ``(B, T, D)``? The probe
    of scan-then-fix."""
    q = np.empty(a.shape[2], a.dtype)
    for s in range(a.shape[0]):
        lo, hi = _chunk_bounds(a.shape[1], n_chunks, 1, reverse)
        lo, hi = (max(lo, hi - limit), hi) if reverse else (lo, min(hi, lo + limit))
        if diag_decay_steps(a[s], lo, hi, reverse, q) > hi - lo:
            return False
    return True


def time_plan(a, reverse: bool, threads: int) -> tuple[str, int]:
    """Strategy for a diagonal ``a`` ``(B, T, D)`` on ``threads`` threads: ``("batch", 1)``,
    ``("fix", P)`` (scan-then-fix) or ``("reduce", P)`` (reduce-then-scan), ``P`` chunks per
    sequence."""
    B, T = a.shape[0], a.shape[1]
    if B >= threads:
        return "batch", 1
    n_fix = -(-threads // B)
    limit = min(T // n_fix // 4, FIX_PROBE_STEPS)
    if limit >= 1 and carries_die_out(a, reverse, n_fix, limit):
        return "fix", n_fix
    n_reduce = n_fix + 1
    return ("reduce", n_reduce) if T >= 2 * n_reduce else ("batch", 1)


def scan_diag(a, b, h0, reverse, out, plan=None):
    """Diagonal scan ``(B, T, D)``: over the batch when ``B >= threads``, else over time
    (``plan``: :func:`time_plan`'s answer when the caller already has it)."""
    plan, n_chunks = time_plan(a, reverse, n_threads()) if plan is None else plan
    if plan == "batch":
        _diag_batch(a, b, h0, reverse, out)
        return
    if np.may_share_memory(b, out):  # in place: a chunk re-walked (non-finite) re-reads b
        b = b.copy()
    B, _, D = b.shape
    a_agg = np.empty((B, n_chunks, D), b.dtype)
    a_exp = np.empty((B, n_chunks, D), np.finfo(b.dtype).dtype)
    b_agg = np.empty((B, n_chunks, D), b.dtype)
    kernel = _diag_scan_then_fix if plan == "fix" else _diag_chunked
    kernel(a, b, h0, reverse, n_chunks, a_agg, a_exp, b_agg, out)
