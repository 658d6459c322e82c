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
on dyadic data, where every association is exact).

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

    A channel whose product cannot carry its carry (:func:`_walks`) takes the state the
    sequential loop reaches instead: the chunk is walked step by step
    (:func:`~parscan._scan_sequential.diag_walk`), one more serial pass over it, taken only
    then."""
    T, D = b.shape
    lo, hi = _chunk_bounds(T, n_chunks, 0, reverse)
    if hi > lo:
        b_agg[0, :] = out[lo if reverse else hi - 1]
    else:
        b_agg[0, :] = h0
    scale = product_scale(a_agg)[0]
    walked = np.empty(D, b.dtype)
    for k in range(1, n_chunks - 1):
        walk = False
        for d in range(D):
            walk |= _walks(a_agg[k, d], b_agg[k - 1, d])
        if walk:
            lo, hi = _chunk_bounds(T, n_chunks, k, reverse)
            walked[:] = b_agg[k - 1]
            diag_walk(a, b, lo, hi, reverse, walked)
        for d in range(D):
            if walk and _walks(a_agg[k, d], b_agg[k - 1, d]):
                b_agg[k, d] = walked[d]
            else:
                carried = scaled_times(a_agg[k, d], a_exp[k, d], scale, b_agg[k - 1, d])
                b_agg[k, d] = carried + b_agg[k, d]


@jit
def _walks(p, h) -> bool:
    """Must the carry ``h`` be walked through a chunk whose scaled product is ``p``? A
    product of 0 (flushed, or a step with ``a = 0``) cannot carry a non-finite ``h`` (``0 *
    inf`` is NaN where a flushed product of nonzero steps keeps ``±inf``), and a non-finite
    product (inf or NaN in ``a``, or steps beyond ``2**k`` that outgrow the scale kept)
    cannot carry a finite one (``inf * 0`` is NaN where the loop keeps 0)."""
    return (p == 0 and not_finite(h)) or (not_finite(p) and not not_finite(h))


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
def _fix_task(a, reverse, n_chunks, k, b_agg, out):
    """Pass 2 of scan-then-fix for one sequence: add the carry ``b_agg[k-1]`` to chunk ``k``."""
    lo, hi = _chunk_bounds(a.shape[0], n_chunks, k, reverse)
    diag_fix_range(a, lo, hi, reverse, b_agg[k - 1], np.empty(a.shape[1], a.dtype), out)


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
    n_fixes = n_chunks - 1
    for i in prange(B * n_fixes):
        s = i // n_fixes
        _fix_task(a[s], reverse, n_chunks, i % n_fixes + 1, b_agg[s], out[s])


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
    B, _, D = b.shape
    a_agg = np.empty((B, n_chunks, D), b.dtype)
    a_exp = np.empty((B, n_chunks, D), np.finfo(b.dtype).dtype)
    b_agg = np.empty((B, n_chunks, D), b.dtype)
    kernel = _diag_scan_then_fix if plan == "fix" else _diag_chunked
    kernel(a, b, h0, reverse, n_chunks, a_agg, a_exp, b_agg, out)
