"""Threaded (Numba ``prange``) scan kernels, same signatures as :mod:`parscan._scan_sequential`.

Two strategies (DESIGN.md §2, measured on 2 cores):

* **parallel over the batch** when there are at least as many independent sequences as
  threads: each thread runs the sequential loop on its own sequences;
* **reduce-then-scan over time** (diagonal only) when ``B < threads``: each sequence is cut
  into ``P = ceil(threads / B) + 1`` chunks. Pass 1 scans chunk 0 with the true ``h0`` while the
  other threads reduce chunks ``1..P-2`` to aggregate pairs ``(A, b)``; a short serial loop turns
  the aggregates into the carry entering every chunk; pass 2 scans chunks ``1..P-1`` from their
  carries. ``a, b`` are read about ``2 (P-1) / P`` times instead of twice for scan-then-fix,
  which always lost on 2 cores. The chunks are equally long: a traffic model (scanning an
  element reads ``a, b`` and writes ``h``, 3 units; reducing one reads ``a, b``, 2 units)
  suggests a chunk 0 2/3 as long as the others, but equal chunks measured 5-15 % faster on
  2 cores (T = 1e5 and 1e6, D = 16, float32 and float64): the reduction runs at the same
  speed as the scan, both being bound by the dependency through ``h`` and by bandwidth
  shared between the threads.

Dense scans are only ever parallel over the batch: a time-parallel dense scan does ``D³`` work
per combine and was 2.5-5x slower than the sequential loop on 2 cores (D = 3..32).

``prange`` bodies are thin calls into jitted helpers (the same loop inlined in a ``prange`` body
ran 2-4x slower).
"""

import numpy as np
from numba import prange

from parscan._jit import jit, jit_parallel, n_threads
from parscan._scan_sequential import dense_one, diag_range, diag_reduce_range


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
def _reduce_task(a, b, h0, reverse, n_chunks, k, a_agg, b_agg, out):
    """Pass 1 for one sequence: scan chunk 0 for real, reduce chunk ``k >= 1`` to a pair."""
    lo, hi = _chunk_bounds(b.shape[0], n_chunks, k, reverse)
    if k == 0:
        diag_range(a, b, h0, lo, hi, reverse, out)
    else:
        diag_reduce_range(a, b, lo, hi, reverse, a_agg[k], b_agg[k])


@jit
def _carry_task(b, h0, reverse, n_chunks, a_agg, b_agg, out):
    """Serial step: ``b_agg[k]`` becomes the state at the end of chunk ``k`` (``k < P-1``)."""
    lo, hi = _chunk_bounds(b.shape[0], n_chunks, 0, reverse)
    if hi > lo:
        b_agg[0, :] = out[lo if reverse else hi - 1]
    else:
        b_agg[0, :] = h0
    for k in range(1, n_chunks - 1):
        for d in range(b.shape[1]):
            b_agg[k, d] = a_agg[k, d] * b_agg[k - 1, d] + b_agg[k, d]


@jit
def _scan_task(a, b, reverse, n_chunks, k, b_agg, out):
    """Pass 2 for one sequence: scan chunk ``k >= 1`` entering with the carry ``b_agg[k-1]``."""
    lo, hi = _chunk_bounds(b.shape[0], n_chunks, k, reverse)
    diag_range(a, b, b_agg[k - 1], lo, hi, reverse, out)


@jit_parallel
def _diag_chunked(a, b, h0, reverse, n_chunks, a_agg, b_agg, out):
    """Reduce-then-scan over ``n_chunks`` time chunks per sequence; ``a_agg, b_agg``:
    workspace of shape ``(B, n_chunks - 1, D)``."""
    n_tasks = n_chunks - 1
    for i in prange(b.shape[0] * n_tasks):
        s = i // n_tasks
        _reduce_task(a[s], b[s], h0[s], reverse, n_chunks, i % n_tasks, a_agg[s], b_agg[s], out[s])
    for s in range(b.shape[0]):
        _carry_task(b[s], h0[s], reverse, n_chunks, a_agg[s], b_agg[s], out[s])
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


def n_time_chunks(B: int, T: int, threads: int) -> int:
    """Chunks per sequence of the reduce-then-scan; 1 means parallel over the batch instead."""
    if B >= threads:
        return 1
    n_chunks = -(-threads // B) + 1
    return n_chunks if T >= 2 * n_chunks else 1


def scan_diag(a, b, h0, reverse, out):
    """Diagonal scan ``(B, T, D)``: over the batch when ``B >= threads``, else over time."""
    B, T, D = b.shape
    n_chunks = n_time_chunks(B, T, n_threads())
    if n_chunks == 1:
        _diag_batch(a, b, h0, reverse, out)
        return
    a_agg = np.empty((B, n_chunks - 1, D), b.dtype)
    b_agg = np.empty((B, n_chunks - 1, D), b.dtype)
    _diag_chunked(a, b, h0, reverse, n_chunks, a_agg, b_agg, out)
