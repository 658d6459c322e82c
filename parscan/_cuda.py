"""CUDA backend of :func:`parscan.linear_scan` (all ``numba.cuda`` code of the scan lives here).

Imported lazily, only when ``backend="cuda"`` is requested or device arrays are passed.

Algorithm: a single-pass scan with decoupled look-back (Merrill & Garland, "Single-pass
Parallel Prefix Scan with Decoupled Look-back", NVIDIA 2016), the shape CUB uses:

1. each block takes the next *tile* from a global counter (so every tile it may wait on is
   already running); each thread reduces a run of ``items`` consecutive steps to a pair
   ``(A, b)`` in registers (its loads unconditional, so that they go out together), and holds
   the run there or reads it again in step 4 (:data:`DIAG_TUNED`);
2. the block runs a Blelloch up-sweep over the per-thread pairs in shared memory, publishing
   the tile aggregate (flag 1), or its inclusive end state when it is the first tile (flag 2);
3. the block looks back over a *window* of ``lookback`` preceding tiles per round trip (each
   thread reads one flag; each lane of each channel loads the records of
   ``lookback // lanes`` of them at once, unrolled, as CUB's warp-wide look-back does): the
   nearest inclusive state in the window and the aggregates after it are combined by a tree
   in shared memory; without an inclusive state in the window, its combined aggregate is
   carried into the next window. The result is the tile's carry-in, and the tile publishes
   its own inclusive state (flag 2). (A look-back that inspects one predecessor per round
   trip lets the published inclusive states advance by one tile per memory latency, ~1 us,
   which caps the scan at about a tile per microsecond; a window of W raises that cap
   W-fold. The dense kernel, not bandwidth-bound, keeps the one-at-a-time walk.)
4. the Blelloch down-sweep gives each thread the exclusive prefix of its run; it applies it to
   the carry-in and re-walks its steps (held, or read again from L1/L2), writing ``h``.

The pair operator is ``(A2, b2) • (A1, b1) = (A2 A1, A2 b1 + b2)`` (A1 earlier). Every
diagonal ``(B, T, D)`` problem is ``B*D`` independent scalar scans: a block holds ``cw``
adjacent channels (coalesced along D) times ``block // cw`` runs of time. A dense problem
(``D <= DMAX``) holds one ``D x D`` pair per thread; its block scans ``lanes`` pairs packed in
shared memory (``lanes`` shrinks as ``D`` grows). Flags live in ``status`` (read with atomics,
values after a fence); published records are padded to 32 elements so that no L1 line mixes
records of different tiles.

The flags and published records are scratch reused across calls (:func:`_scratch`: per Python
thread and CUDA context, grown to the largest scan so far), so a scan allocates nothing but
its output.

How far a look-back walks depends on timing, so results may differ from run to run in the last
bits (never on dyadic data, where every association is exact).

A combined pair cannot always carry a state the way the sequential loop does. A product that
underflowed to 0 cannot carry a non-finite state: ``0 * inf`` is NaN where the loop keeps
``±inf`` through the tiny steps (and a dense product, the identity included, mixes ``0 * inf``
into every row). A product that is not finite (an ``a`` so large that it overflowed, inf or
NaN in ``a``, or ``inf * 0``) cannot carry any state: ``inf * 0`` is NaN where the loop keeps
a zero state 0, ``inf * tiny`` is inf where the loop carries a tiny state to a finite one, and
``inf * inf`` plus a ``b`` part that overflowed the other way is NaN where the loop keeps
``±inf``. There the state is walked through the pair's steps one by one instead: the loop
itself, so exact (diagonal: :func:`_apply` when the product is 0 and the state not finite, or
the product not finite, :func:`_walks`; dense: :func:`_rewalk` when the result is not finite,
which both make it). Ordinary data never walks, and the fast path pays a compare or two per
applied pair; a walk is a sequential pass over the pair's steps: per thread at most a tile per
sweep (up-sweep, down-sweep, the carry into its run), a window per look-back round trip, and
once more the tiles looked back over (the aggregates combined across look-back rounds, acc, are
not walked round by round but once, from the state met). In the diagonal look-back, the part of
a window from its nearest inclusive state back (the pair ``(0, state)``, identities for the
tiles before it) is never applied to, or walked from, the 0 those identities leave: its result
is the state, and only the aggregates after it are walked, from it.

Launch shapes are compile-time constants of :func:`make_kernels`; :data:`LAUNCH` holds the
production values and tests shrink them (``monkeypatch.setattr(_cuda, "LAUNCH", ...)``) so that
tiny inputs in the simulator (``NUMBA_ENABLE_CUDASIM=1``) cross tile boundaries.
"""

import dataclasses
import functools
import math
import threading

import numba
import numpy as np
from numba import cuda

from parscan._scan_sequential import not_finite

#: Largest dense state dimension of the CUDA backend.
DMAX = 16
#: Shared memory for the dense block's pairs, bytes (static shared memory is limited to 48 KiB).
DENSE_SHARED_BYTES = 32 * 1024
#: Record stride (elements) of published tile values: 32 elements = at least one 128-byte line.
RECORD = 32
#: The diagonal launch per dtype where :class:`Launch` leaves it to the dtype (None): bytes of
#: ``a`` (and as many of ``b``) one thread loads per tile, whether it holds them in registers
#: till it writes ``h`` (or reads them again there, from L1/L2 where the tile still is), and
#: blocks per SM. A tile's life is mostly latency (ticket, loads, fences, look-back), so the
#: bytes a block moves per tile, not the steps, keep the memory busy, as do more blocks per SM
#: (CUB sizes its tiles the same way). The fastest measured at T*D = 1e8, D = 16 on one H200
#: (``bench/results/cuda_launch_sweep_h200_20261204.jsonl``; float32 holds its run: reading
#: it again was slower; ``bench/scan.py --backend cuda`` times the alternatives again). At
#: their register caps (float32 128, the others 64) float32 spills nothing, the others 28-92
#: bytes (ptxas 13.5, sm_90: ``bench/cuda_code.py``); they were the fastest measured before
#: the kernel stepped flat offsets, when the same ptxas spilled 64-224 bytes of them.
DIAG_TUNED = {
    "float32": (128, True, 2),
    "float64": (512, False, 4),
    "complex64": (256, False, 4),
    "complex128": (256, False, 4),
}
#: A diagonal block holds at most one 128-byte line of channels per time step (32 float32, 16
#: float64 or complex64, 8 complex128): wider blocks add no coalescing, only registers
#: (float64 at 32 channels spills).
LINE_BYTES = 128


def check_launch(launch, powers_of_two: tuple[str, ...]) -> None:
    """Refuse a launch shape whose integer fields are not >= 1, or whose ``powers_of_two``
    fields (thread counts of the tree sweeps and reductions) are not powers of 2: such shapes
    would give wrong results silently, not errors."""
    where = type(launch).__name__
    for field in dataclasses.fields(launch):
        value = getattr(launch, field.name)
        if isinstance(value, bool) or not isinstance(value, int):
            continue
        if value < 1 or (field.name in powers_of_two and value & (value - 1)):
            kind = "a power of 2" if field.name in powers_of_two else "an integer >= 1"
            raise ValueError(f"{where}: {field.name} must be {kind}; got {value}.")


@dataclasses.dataclass(frozen=True)
class Launch:
    """Compile-time launch shape: threads per block and steps per thread (diag / dense);
    the diagonal fields left None take :data:`DIAG_TUNED`'s values for the dtype
    (:func:`diag_shape`).

    ``publish_prefix=False`` is for tests only: tiles after the first then publish just their
    aggregates, so every look-back walks back to the first tile. The simulator runs blocks one
    after the other (a predecessor is always complete), so this is the only way to exercise the
    aggregate path of the look-back without a GPU.
    """

    block: int = 256
    #: steps per thread of the diagonal kernel (None: :data:`DIAG_TUNED`'s bytes of the dtype)
    items: int | None = None
    dense_block: int = 32
    dense_items: int = 4
    #: predecessor tiles the diagonal look-back inspects per round trip (a thread reads one
    #: flag: ``block`` at most; a tile's lanes at least, e.g. 256 for one channel per block)
    lookback: int = 128
    #: keep each thread's run of ``a`` and ``b`` in registers from the reduction to the writes
    #: (False: read it again there, from L1/L2 where the tile still is: no registers per step,
    #: so longer runs fit); None: :data:`DIAG_TUNED`'s choice for the dtype
    hold: bool | None = None
    #: diagonal blocks per SM asked of the compiler (``launch_bounds``: registers per thread
    #: capped at 65536 / (block * blocks_per_sm)); None: :data:`DIAG_TUNED`'s for the dtype.
    #: Not for complex128 runs held in registers, which need over 160 (246 at 16 steps)
    blocks_per_sm: int | None = None
    publish_prefix: bool = True

    def __post_init__(self):
        check_launch(self, ("block", "dense_block", "lookback"))


LAUNCH = Launch()


def diag_shape(dtype, launch: Launch) -> tuple[int, bool, int]:
    """``(items, hold, blocks_per_sm)`` of the diagonal kernel for ``dtype``: the launch's
    fields, or :data:`DIAG_TUNED`'s values for the dtype where they are None (items: its bytes
    of ``a`` per thread in steps)."""
    nbytes, hold, blocks = DIAG_TUNED[np.dtype(dtype).name]
    items = max(nbytes // np.dtype(dtype).itemsize, 1) if launch.items is None else launch.items
    return (
        items,
        hold if launch.hold is None else launch.hold,
        blocks if launch.blocks_per_sm is None else launch.blocks_per_sm,
    )


def diag_items(dtype, launch: Launch) -> int:
    """Steps per thread of the diagonal kernel for ``dtype`` (:func:`diag_shape`)."""
    return diag_shape(dtype, launch)[0]


def diag_channels(n_channels: int, dtype, launch: Launch) -> int:
    """Channels per diagonal block (``cw``, a power of 2) for ``n_channels = B*D``: enough to
    cover them, at most one :data:`LINE_BYTES` line, at most a quarter of the block (each
    channel keeps at least 4 lanes of time)."""
    line = max(LINE_BYTES // np.dtype(dtype).itemsize, 1)
    return min(line, _pow2_ceil(n_channels), max(launch.block // 4, 1))


def is_available() -> bool:
    """True when numba.cuda sees a GPU or runs in the simulator."""
    try:
        return bool(cuda.is_available())
    except Exception:
        return False


# --------------------------------------------------------------------------- device functions
# Dense pairs are flat records ``[A (D*D, row-major), v (D)]`` at an offset into any array
# (local, shared or global), so one set of helpers serves registers, shared memory and scratch.


@cuda.jit(device=True)
def _pair_identity(z, zo, D):
    for i in range(D * D):
        z[zo + i] = 0
    for i in range(D):
        z[zo + i * D + i] = 1
        z[zo + D * D + i] = 0


@cuda.jit(device=True)
def _pair_copy(x, xo, z, zo, D):
    for i in range(D * D + D):
        z[zo + i] = x[xo + i]


@cuda.jit(device=True)
def _pair_mul(x, xo, y, yo, D, z, zo):
    """``z = x • y = (Ax Ay, Ax vy + vx)``; ``z`` must not alias ``x`` or ``y``."""
    for i in range(D):
        for j in range(D):
            acc = x[xo + i * D] * y[yo + j]
            for k in range(1, D):
                acc += x[xo + i * D + k] * y[yo + k * D + j]
            z[zo + i * D + j] = acc
        acc = x[xo + D * D + i]
        for k in range(D):
            acc += x[xo + i * D + k] * y[yo + D * D + k]
        z[zo + D * D + i] = acc


@cuda.jit(device=True)
def _pair_apply(x, xo, h, ho, D, z, zo):
    """``z = A h + v`` for the pair ``x``."""
    for i in range(D):
        acc = x[xo + D * D + i]
        for k in range(D):
            acc += x[xo + i * D + k] * h[ho + k]
        z[zo + i] = acc


_not_finite = cuda.jit(device=True)(not_finite.py_func)


@cuda.jit(device=True)
def _dense_step(a, b, g, t, transpose, D, h, z):
    """``z = a[g, t] h + b[g, t]`` (``a[g, t]`` transposed with ``transpose``), sums in the
    order of :func:`parscan._scan_sequential.dense_one`; ``z`` must not alias ``h``."""
    for i in range(D):
        acc = b[g, t, i]
        for m in range(D):
            acc += (a[g, t, m, i] if transpose else a[g, t, i, m]) * h[m]
        z[i] = acc


@cuda.jit(device=True)
def _rewalk(x, xo, z, zo, D, a, b, g, T, reverse, transpose, lo, hi, cur, nxt):
    """When ``z[zo : zo+D]`` is not finite, it becomes the state after the steps ``lo..hi-1``
    (scan order; those from ``T`` on are padding) entering as ``x[xo : xo+D]``: the
    sequential loop (sums in the order of :func:`parscan._scan_sequential.dense_one`).

    Called after a pair ``(A, v)`` of those steps was applied to ``x`` (``z = A x + v``),
    which cannot always give what the loop gives: a non-finite ``x`` meets ``0 * inf`` = NaN
    in every row (the loop keeps ``±inf`` through an underflowed product or an identity
    pair), and a product ``A`` that overflowed (or holds inf * 0 = NaN) turns a finite ``x``
    into inf or NaN in its rows (the loop keeps a zero or tiny state finite through huge
    steps). Either makes ``z`` non-finite, which is all that is checked; a ``z`` that the
    loop also makes non-finite is walked too (exact, and as rare). ``cur, nxt``: scratch of
    ``D``, aliasing neither ``x`` nor ``z``.
    """
    finite = True
    for i in range(D):
        finite = finite and not _not_finite(z[zo + i])
    if finite:
        return
    for i in range(D):
        cur[i] = x[xo + i]
    for s in range(lo, min(hi, T)):
        _dense_step(a, b, g, T - 1 - s if reverse else s, transpose, D, cur, nxt)
        for i in range(D):
            cur[i] = nxt[i]
    for i in range(D):
        z[zo + i] = cur[i]


@cuda.jit(device=True)
def _load_step(a, b, g, t, transpose, D, z):
    """``z = (a[g, t] (or its transpose), b[g, t])``."""
    for i in range(D):
        for j in range(D):
            z[i * D + j] = a[g, t, j, i] if transpose else a[g, t, i, j]
        z[D * D + i] = b[g, t, i]


@cuda.jit(device=True)
def _index(offset):
    """``offset`` (>= 0) as an unsigned index: Numba adds no negative-index wraparound to the
    address of an unsigned one (a compare, a shift and an and per access otherwise)."""
    return numba.uint64(offset)


@cuda.jit(device=True)
def _load_diag(a, b, offset, inside, one, zero):
    """``(a, b)`` at the flat ``offset`` when ``inside``, else the identity ``(1, 0)`` (for
    padding and the channels past the last of a block; the offset is then any valid one).

    The loads are unconditional (padding reads the last step again, a channel past the last
    reads channel ``(0, 0)``; the identity is selected after): a load under a branch waits for
    the one before it, unconditional ones go out together, a thread's run at once.
    """
    xa, xb = a[_index(offset)], b[_index(offset)]
    if inside:
        return xa, xb
    return one, zero


@cuda.jit(device=True)
def _read_flag(status, i):
    return cuda.atomic.add(status, i, 0)


@cuda.jit(device=True)
def _walk(a, b, row0, stride, T, lo, hi, h):
    """State of a channel after the steps ``lo..hi-1`` (scan order; those from ``T`` on are
    padding) entering as ``h``: the sequential loop. The channel's step ``s`` (scan order) is
    at the flat offset ``row0 + s * stride`` of ``a`` and ``b``."""
    for s in range(lo, min(hi, T)):
        i = _index(row0 + s * stride)
        h = a[i] * h + b[i]
    return h


@cuda.jit(device=True)
def _walks(pa, pb, h):
    """Must ``h`` be walked through the steps of the pair ``(pa, pb)`` instead of taking ``pa
    * h + pb`` (:func:`_apply`)? When ``pa`` is not finite, whatever ``h`` (a finite one
    meets ``inf * 0`` or ``inf * tiny``, a non-finite one a ``pb`` that may have overflowed
    to the other sign), and when ``pa * h`` is not finite (``0 * inf`` is NaN) with ``pa``
    0 (the loop keeps ``±inf`` through tiny steps) or ``pb`` not finite: an infinite ``h``
    plus a ``pb`` that overflowed to the opposite infinity is NaN where the loop keeps
    ``±inf`` (so is a ``pa * h`` that overflowed plus ``inf`` of the other sign from ``b``).
    A finite ``pa`` (the fast path) costs a multiply and a few compares."""
    if _not_finite(pa):
        return True
    return _not_finite(pa * h) and (pa == 0 or _not_finite(pb))


@cuda.jit(device=True)
def _apply(pa, pb, h, a, b, row0, stride, T, lo, hi):
    """``pa * h + pb``: the pair ``(pa, pb)`` of the steps ``lo..hi-1`` applied to ``h``.

    Two products cannot carry ``h`` as the sequential loop does (:func:`_walks`): a ``pa`` of
    0 (underflowed, or a step with ``a = 0``) a non-finite ``h`` (``0 * inf`` is NaN where
    the loop keeps ``±inf`` through tiny steps), and a non-finite ``pa`` (overflowed, inf or
    NaN in ``a``, or inf * 0) any ``h``: ``inf * 0`` is NaN where the loop keeps a zero state
    0, ``inf * tiny`` is inf where it carries a tiny one to a finite state, and ``inf * inf``
    plus a ``pb`` that overflowed to ``-inf`` is NaN where it keeps inf. Nor can a finite
    ``pa`` carry an ``h`` to a ``pa * h`` that is not finite when ``pb`` is not finite either
    (``inf`` plus a ``pb`` that overflowed to ``-inf``: NaN). The steps are then walked from
    ``h`` (:func:`_walk`), which gives what the loop gives.
    """
    if _walks(pa, pb, h):
        return _walk(a, b, row0, stride, T, lo, hi, h)
    return pa * h + pb


@cuda.jit(device=True)
def _slot(agg_a, agg_b, incl, r, w, near, one, zero):
    """The pair of look-back window slot ``w`` (record offset ``r``): a predecessor's
    aggregate before the window's nearest inclusive state (slot ``near``), that state as the
    pair ``(0, incl)``, the identity after it (earlier tiles, or before the first tile)."""
    if w < near:
        return agg_a[r], agg_b[r]
    if w == near:
        return zero, incl[r]
    return one, zero


# --------------------------------------------------------------------------- kernels


@cuda.jit
def _zero_fill(x):
    """``x[:] = 0`` for a 1-D array, one thread per element."""
    i = cuda.grid(1)
    if i < x.shape[0]:
        x[i] = 0


def zero_fill(x) -> None:
    """Zero the C-contiguous device array ``x`` (any shape) on the GPU."""
    flat = x.reshape(x.size)
    _zero_fill[(x.size + 255) // 256, 256](flat)


@dataclasses.dataclass(frozen=True)
class Kernels:
    """Compiled-on-first-use kernels of one dtype and launch shape, with their signatures
    (``diag(cw)``: the diagonal kernel for ``cw`` channels per block)."""

    diag: object
    dense: object
    launch: Launch
    diag_signature: tuple
    dense_signature: tuple


@functools.cache
def make_kernels(dtype, launch: Launch = LAUNCH) -> Kernels:
    """Kernels for ``dtype`` with the launch shape baked in as compile-time constants."""
    dt = numba.from_dtype(np.dtype(dtype))
    NT, LOOKBACK = launch.block, min(launch.lookback, launch.block)
    ITEMS, HOLD, BLOCKS_PER_SM = diag_shape(dtype, launch)
    # several blocks per SM (two: at most 128 registers per thread for 256): a block spends
    # much of its time waiting (look-back, barriers), so another one keeps loads in flight; not
    # for complex128 runs held in registers, which need over 160 and would spill (the
    # simulator has no such option)
    small = np.dtype(dtype).itemsize <= 8 or not HOLD
    bounded = small and not numba.config.ENABLE_CUDASIM
    DIAG_OPTIONS = {"launch_bounds": (NT, BLOCKS_PER_SM)} if bounded else {}
    PUBLISH = launch.publish_prefix
    SH = DENSE_SHARED_BYTES // np.dtype(dtype).itemsize
    REC = DMAX * DMAX + DMAX

    @functools.cache
    def diag(cw: int):
        """The diagonal kernel for ``cw`` channels per block (:func:`diag_channels`):
        ``cw`` fixes the lanes per channel and the look-back's predecessors per lane, so that
        each thread's window loads unroll and go out together."""
        NTL = NT // cw  # lanes (runs of time) per channel
        PER = max(1, LOOKBACK // NTL)  # look-back predecessors per lane
        WINDOW = NTL * PER  # predecessors per look-back round, <= NT: one flag per thread

        @cuda.jit(device=True)
        def reduce_run(a, b, run0, stride, n_in, ra, rb, one, zero):
            """The pair ``(A, b)`` of a thread's run of ``ITEMS`` steps, ``n_in`` of them
            inside (the others the identity), the ``k``-th at the flat offset ``run0 + k *
            stride`` (those past ``n_in``: the last inside, read again); held in ``ra, rb``
            when ``HOLD``."""
            run_a, run_b = one, zero
            offset = run0
            for k in range(ITEMS):
                xa, xb = _load_diag(a, b, offset, k < n_in, one, zero)
                if HOLD:
                    ra[k] = xa
                    rb[k] = xb
                run_b = xa * run_b + xb
                run_a = xa * run_a
                if k + 1 < n_in:
                    offset += stride
            return run_a, run_b

        @cuda.jit(device=True)
        def write_run(a, b, out, run0, stride, n_in, ra, rb, h, one, zero):
            """Walk ``h`` through the run of :func:`reduce_run` (held in ``ra, rb`` or read
            again), writing the states inside to ``out``."""
            offset = run0
            for k in range(ITEMS):
                if HOLD:
                    h = ra[k] * h + rb[k]
                else:
                    xa, xb = _load_diag(a, b, offset, k < n_in, one, zero)
                    h = xa * h + xb
                if k < n_in:
                    out[_index(offset)] = h
                if k + 1 < n_in:
                    offset += stride

        @cuda.jit(**DIAG_OPTIONS)
        def kernel(a, b, h0, has_h0, reverse, out, status, agg_a, agg_b, incl, B, T, D):
            """Diagonal scan, ``a, b, out`` (B, T, D) C-contiguous, passed flat (``B*T*D``):
            a thread's offsets are computed once and stepped, not re-derived per access."""
            n_ch = B * D
            n_groups = (n_ch + cw - 1) // cw
            one, zero = dt(1), dt(0)
            sh_a = cuda.shared.array(NT, dt)
            sh_b = cuda.shared.array(NT, dt)
            sh_carry = cuda.shared.array(NT, dt)
            lb_a = cuda.shared.array(NT, dt)  # look-back: each thread's part of the window
            lb_b = cuda.shared.array(NT, dt)
            sh_id = cuda.shared.array(1, numba.int32)
            sh_near = cuda.shared.array(1, numba.int32)  # the window's nearest inclusive state
            tid = cuda.threadIdx.x
            if tid == 0:
                sh_id[0] = cuda.atomic.add(status, status.shape[0] - 1, 1)
                sh_near[0] = WINDOW
            cuda.syncthreads()
            tile_id = numba.int64(sh_id[0])
            j = tile_id // n_groups
            g = tile_id - j * n_groups
            c = tid % cw
            lane = tid // cw
            ch = g * cw + c
            valid = ch < n_ch
            bi = ch // D if valid else 0
            d = ch - bi * D if valid else 0
            tile = NTL * ITEMS  # steps per tile
            first = j * tile  # the tile's first step
            s0 = first + lane * ITEMS
            # the channel's step s (scan order) is at the flat offset row0 + s * stride; the
            # run's first n_in steps are inside (a channel past the last: none; its loads read
            # channel (0, 0)), from the flat offset run0 (no step inside: the last step)
            stride = -D if reverse else D
            row0 = (bi * T + (T - 1 if reverse else 0)) * D + d
            n_in = min(max(T - s0, 0), ITEMS) if valid else 0
            run0 = row0 + (s0 if n_in > 0 else T - 1) * stride

            # 1. per-thread run reduced in registers (held there till step 4 when HOLD). A whole
            # run inside (all but the last tile's) held takes a copy of the loops without clamps
            # or selects (ptxas 13.5, sm_90: float32 ~6 instructions per step instead of ~35, no
            # spills); for runs read again the copy added spills (float64 28 -> 104 bytes)
            # and saved about one instruction per load
            ra = cuda.local.array(ITEMS if HOLD else 1, dt)
            rb = cuda.local.array(ITEMS if HOLD else 1, dt)
            whole = HOLD and n_in == ITEMS
            if whole:
                run_a, run_b = reduce_run(a, b, run0, stride, ITEMS, ra, rb, one, zero)
            else:
                run_a, run_b = reduce_run(a, b, run0, stride, n_in, ra, rb, one, zero)
            sh_a[tid] = run_a
            sh_b[tid] = run_b
            cuda.syncthreads()

            # 2. Blelloch up-sweep over the runs of each channel
            off = 1
            while off < NTL:
                if (lane + 1) % (2 * off) == 0:
                    left = tid - off * cw
                    x = sh_a[tid]  # the runs of lanes lane-off+1 .. lane
                    lo, hi = s0 - (off - 1) * ITEMS, s0 + ITEMS
                    sh_b[tid] = _apply(x, sh_b[tid], sh_b[left], a, b, row0, stride, T, lo, hi)
                    sh_a[tid] = x * sh_a[left]
                off *= 2
                cuda.syncthreads()

            last = lane == NTL - 1
            rec = tile_id * RECORD + c
            tot_a, tot_b = sh_a[tid], sh_b[tid]  # the tile's aggregate, in the last lane
            if last:
                if j == 0:
                    carry = h0[bi, d] if has_h0 and valid else zero
                    sh_carry[c] = carry
                    if valid:
                        incl[rec] = _apply(tot_a, tot_b, carry, a, b, row0, stride, T, 0, tile)
                elif valid:
                    agg_a[rec] = tot_a
                    agg_b[rec] = tot_b
                cuda.threadfence()
            cuda.syncthreads()
            if tid == 0:
                cuda.atomic.exch(status, tile_id, 2 if j == 0 else 1)

            # 3. decoupled look-back for the carry entering the tile, WINDOW predecessors per
            # round trip: window slot w = lane * PER + q is tile k0 - w (w = 0 the nearest)
            if j > 0:  # the same for the whole block: every barrier below is reached by all
                acc_a, acc_b = one, zero  # lane 0: the tiles k0 + 1 .. j - 1 (aggregates)
                acc_walk = False  # lane 0: acc cannot carry a state (acc_b then left unfixed)
                k0 = j - 1
                buf_a = cuda.local.array(PER, dt)
                buf_b = cuda.local.array(PER, dt)
                searching = True
                while searching:
                    if tid < WINDOW and k0 - tid >= 0:  # one flag per thread, read at once
                        flag = 0
                        while flag == 0:
                            flag = _read_flag(status, (k0 - tid) * n_groups + g)
                        if flag == 2:
                            cuda.atomic.min(sh_near, 0, tid)
                        cuda.threadfence()  # records are read after the flags publishing them
                    cuda.syncthreads()
                    near = sh_near[0]
                    # this thread's slots, loaded together: aggregates before the nearest
                    # inclusive state, the state itself as the pair (0, incl), identities after
                    # it (earlier tiles, or before the first tile)
                    base = (k0 - lane * PER) * n_groups + g  # slot q: record base - q*n_groups
                    for q in range(PER):  # unrolled: the loads go out together, into registers
                        r = (base - q * n_groups) * RECORD + c
                        w = lane * PER + q
                        buf_a[q], buf_b[q] = _slot(agg_a, agg_b, incl, r, w, near, one, zero)
                        if not valid:
                            buf_a[q], buf_b[q] = one, zero
                    part_a, part_b = one, zero  # the slots' pair, combined earliest first
                    exact = True
                    for q in range(PER - 1, -1, -1):
                        exact = exact and not _walks(buf_a[q], buf_b[q], part_b)
                        part_b = buf_a[q] * part_b + buf_b[q]
                        part_a = buf_a[q] * part_a
                    if not exact or _not_finite(part_a):  # a slot's product cannot carry its
                        # state (_walks; one not finite makes part_a so): again, walking where
                        # _apply does. Only an aggregate walks (w < near), from the state met in
                        # this lane or the b part of its earlier aggregates
                        part_a, part_b = one, zero
                        for q in range(PER - 1, -1, -1):
                            r = (base - q * n_groups) * RECORD + c
                            w = lane * PER + q
                            pa, pb = _slot(agg_a, agg_b, incl, r, w, near, one, zero)
                            k = k0 - lane * PER - q
                            lo, hi = max(k * tile, 0), (k + 1) * tile
                            part_b = _apply(pa, pb, part_b, a, b, row0, stride, T, lo, hi)
                            part_a = pa * part_a
                    lb_a[tid] = part_a
                    lb_b[tid] = part_b
                    cuda.syncthreads()
                    if tid == 0:
                        sh_near[0] = WINDOW  # for the next round (all have read it)
                    # tree over the lanes: lane 0 ends with the whole window's pair. A part from
                    # the inclusive state on (slots w >= near: (0, state), identities) stands as
                    # it is: it does not depend on the earlier part's state, 0 from identities,
                    # and must not be walked from it (its product, NaN where aggregates after
                    # the state overflowed, goes unused). A later part, aggregates only, is
                    # applied to the earlier part's state (the true state, or the b part of
                    # earlier aggregates), walked where _apply walks.
                    off = 1
                    while off < NTL:
                        if lane % (2 * off) == 0 and (lane + off) * PER <= near:
                            x = lb_a[tid]  # slots lane*PER .. (lane+off)*PER-1: the later tiles
                            earlier = tid + off * cw
                            lo = max((k0 - (lane + off) * PER + 1) * tile, 0)
                            hi = (k0 - lane * PER + 1) * tile
                            lb_b[tid] = _apply(
                                x, lb_b[tid], lb_b[earlier], a, b, row0, stride, T, lo, hi
                            )
                            lb_a[tid] = x * lb_a[earlier]
                        off *= 2
                        cuda.syncthreads()
                    if lane == 0:
                        # acc applied to the window's state (an inclusive state met) or b part.
                        # Where acc cannot carry it (_walks), acc's steps are walked once, from
                        # the state met, not in every round: acc_b is left unfixed till then
                        state = lb_b[tid]
                        acc_walk = acc_walk or _walks(acc_a, acc_b, state)
                        if acc_walk and near < WINDOW:
                            acc_b = _walk(a, b, row0, stride, T, (k0 + 1) * tile, first, state)
                        else:
                            acc_b = acc_a * state + acc_b
                        acc_a = acc_a * lb_a[tid]
                    searching = near == WINDOW
                    k0 -= WINDOW
                    cuda.syncthreads()
                if lane == 0:
                    sh_carry[c] = acc_b  # the inclusive state was met: acc_b is the carry
                cuda.syncthreads()
                if PUBLISH and last and valid:
                    hi = first + tile
                    carry = sh_carry[c]
                    incl[rec] = _apply(tot_a, tot_b, carry, a, b, row0, stride, T, first, hi)
                    cuda.threadfence()
            if last:
                sh_a[tid] = one
                sh_b[tid] = zero
            cuda.syncthreads()
            if PUBLISH and tid == 0 and j > 0:
                cuda.atomic.exch(status, tile_id, 2)

            # 4. Blelloch down-sweep: exclusive prefix of every run within the tile
            off = NTL // 2
            while off >= 1:
                if (lane + 1) % (2 * off) == 0:
                    left = tid - off * cw
                    la, lb = sh_a[left], sh_b[left]
                    pa, pb = sh_a[tid], sh_b[tid]
                    sh_a[left] = pa
                    sh_b[left] = pb
                    sh_a[tid] = la * pa
                    lo, hi = s0 - (2 * off - 1) * ITEMS, s0 - (off - 1) * ITEMS  # la: left runs
                    sh_b[tid] = _apply(la, lb, pb, a, b, row0, stride, T, lo, hi)
                off //= 2
                cuda.syncthreads()

            h = _apply(sh_a[tid], sh_b[tid], sh_carry[c], a, b, row0, stride, T, first, s0)
            if whole:
                write_run(a, b, out, run0, stride, ITEMS, ra, rb, h, one, zero)
            else:
                write_run(a, b, out, run0, stride, n_in, ra, rb, h, one, zero)

        return kernel

    @cuda.jit
    def dense(a, b, h0, has_h0, reverse, transpose, out, status, agg, incl, lanes, items):
        """Dense scan, ``a`` (B, T, D, D); ``lanes`` (power of 2) runs of ``items`` steps."""
        B, T, D = b.shape
        R = D * D + D
        RA = (R + RECORD - 1) // RECORD * RECORD
        RI = (D + RECORD - 1) // RECORD * RECORD
        sh = cuda.shared.array(SH, dt)
        sh_carry = cuda.shared.array(DMAX, dt)
        sh_id = cuda.shared.array(1, numba.int32)
        step = cuda.local.array(REC, dt)
        acc = cuda.local.array(REC, dt)
        t1 = cuda.local.array(REC, dt)
        t2 = cuda.local.array(REC, dt)
        h = cuda.local.array(DMAX, dt)
        hn = cuda.local.array(DMAX, dt)
        tid = cuda.threadIdx.x
        if tid == 0:
            sh_id[0] = cuda.atomic.add(status, status.shape[0] - 1, 1)
        cuda.syncthreads()
        tile_id = numba.int64(sh_id[0])
        j = tile_id // B
        g = tile_id - j * B
        active = tid < lanes
        tile = lanes * items  # steps per tile
        first = j * tile  # the tile's first step
        s0 = first + tid * items
        DD = D * D  # offset of v in a pair

        # 1. per-thread run reduced to one pair
        if active:
            _pair_identity(acc, 0, D)
            for k in range(items):
                s = s0 + k
                if s < T:
                    t = T - 1 - s if reverse else s
                    _load_step(a, b, g, t, transpose, D, step)
                    _pair_mul(step, 0, acc, 0, D, t1, 0)
                    _pair_copy(t1, 0, acc, 0, D)
            _pair_copy(acc, 0, sh, tid * R, D)
        cuda.syncthreads()

        # 2. Blelloch up-sweep
        off = 1
        while off < lanes:
            if active and (tid + 1) % (2 * off) == 0:
                left = (tid - off) * R
                _pair_mul(sh, tid * R, sh, left, D, t1, 0)
                lo, hi = s0 - (off - 1) * items, s0 + items  # sh[tid]: runs tid-off+1 .. tid
                _rewalk(sh, left + DD, t1, DD, D, a, b, g, T, reverse, transpose, lo, hi, h, hn)
                _pair_copy(t1, 0, sh, tid * R, D)
            off *= 2
            cuda.syncthreads()

        last = tid == lanes - 1
        if last:
            for i in range(D):
                h[i] = h0[g, i] if has_h0 and j == 0 else 0
            if j == 0:
                _pair_apply(sh, tid * R, h, 0, D, step, 0)
                _rewalk(h, 0, step, 0, D, a, b, g, T, reverse, transpose, 0, tile, t1, t2)
                for i in range(D):
                    incl[tile_id * RI + i] = step[i]
            else:
                _pair_copy(sh, tid * R, agg, tile_id * RA, D)
            cuda.threadfence()
        cuda.syncthreads()
        if tid == 0:
            cuda.atomic.exch(status, tile_id, 2 if j == 0 else 1)

        # 3. decoupled look-back, one predecessor at a time: acc, the aggregates of the tiles
        # k+1 .. j-1, is applied to the inclusive state met and walked only then, once, where it
        # cannot carry it (_rewalk). Its combinations are not walked: where one would be (a
        # non-finite b part or product of acc), acc's b part stays non-finite in every later
        # one and makes h non-finite, which _rewalk sees.
        if last and j > 0:
            _pair_identity(acc, 0, D)
            k = j - 1
            while True:
                pred = k * B + g
                flag = _read_flag(status, pred)
                if flag == 0:
                    continue
                cuda.threadfence()
                if flag == 2:  # h = acc applied to the inclusive state
                    r, lo = pred * RI, (k + 1) * tile
                    _pair_apply(acc, 0, incl, r, D, h, 0)
                    _rewalk(incl, r, h, 0, D, a, b, g, T, reverse, transpose, lo, first, t2, hn)
                    break
                _pair_mul(acc, 0, agg, pred * RA, D, t1, 0)  # acc • aggregate
                _pair_copy(t1, 0, acc, 0, D)
                k -= 1
            if PUBLISH:
                _pair_apply(sh, tid * R, h, 0, D, step, 0)
                hi = first + tile
                _rewalk(h, 0, step, 0, D, a, b, g, T, reverse, transpose, first, hi, t1, t2)
                for i in range(D):
                    incl[tile_id * RI + i] = step[i]
                cuda.threadfence()
        if last:
            for i in range(D):
                sh_carry[i] = h[i]
            _pair_identity(sh, tid * R, D)
        cuda.syncthreads()
        if PUBLISH and tid == 0 and j > 0:
            cuda.atomic.exch(status, tile_id, 2)

        # 4. Blelloch down-sweep, then re-walk the run from the carry
        off = lanes // 2
        while off >= 1:
            if active and (tid + 1) % (2 * off) == 0:
                left = (tid - off) * R
                _pair_copy(sh, left, t1, 0, D)
                _pair_copy(sh, tid * R, sh, left, D)
                _pair_mul(t1, 0, sh, tid * R, D, t2, 0)
                lo, hi = s0 - (2 * off - 1) * items, s0 - (off - 1) * items  # t1: the left runs
                r = tid * R + DD
                _rewalk(sh, r, t2, DD, D, a, b, g, T, reverse, transpose, lo, hi, h, hn)
                _pair_copy(t2, 0, sh, tid * R, D)
            off //= 2
            cuda.syncthreads()

        if active:
            _pair_apply(sh, tid * R, sh_carry, 0, D, h, 0)
            _rewalk(sh_carry, 0, h, 0, D, a, b, g, T, reverse, transpose, first, s0, t1, t2)
            for k in range(items):
                s = s0 + k
                if s < T:
                    t = T - 1 - s if reverse else s
                    _dense_step(a, b, g, t, transpose, D, h, hn)
                    for i in range(D):
                        h[i] = hn[i]
                        out[g, t, i] = hn[i]

    arr3, arr2, arr1 = dt[:, :, ::1], dt[:, ::1], dt[::1]
    flags, size = numba.int32[::1], numba.int64
    diag_signature = (
        arr1,
        arr1,
        arr2,
        numba.boolean,
        numba.boolean,
        arr1,
        flags,
        arr1,
        arr1,
        arr1,
        size,
        size,
        size,
    )
    dense_signature = (
        dt[:, :, :, ::1],
        arr3,
        arr2,
        numba.boolean,
        numba.boolean,
        numba.boolean,
        arr3,
        flags,
        arr1,
        arr1,
        numba.int64,
        numba.int64,
    )
    return Kernels(diag, dense, launch, diag_signature, dense_signature)


# --------------------------------------------------------------------------- host side


def as_device_array(x):
    """A numba device array viewing ``x`` (a device array or ``__cuda_array_interface__``)."""
    return x if getattr(x, "__cuda_ndarray__", False) else cuda.as_cuda_array(x)


def to_device(x):
    """Copy a host array to the GPU (made C-contiguous and native-endian on the host first)."""
    return cuda.to_device(np.require(x, x.dtype.newbyteorder("="), ("C", "A")))


def synchronize(result=None):
    """Wait for the GPU; returns ``result`` (for timing)."""
    cuda.synchronize()
    return result


def device_name() -> str:
    """The current device's name (some numba-cuda versions give bytes)."""
    name = getattr(cuda.get_current_device(), "name", "CUDA simulator")
    return name.decode() if isinstance(name, bytes) else str(name)


#: Per Python thread: ``(context, {name: device array})``, the scratch of the last scans.
_SCRATCH = threading.local()


def _scratch(n_tiles: int, n_values: int, dtype):
    """Zeroed tile flags (int32, ``n_tiles + 1``: the last one is the tile counter) and an
    uninitialised buffer of ``n_values`` elements of ``dtype`` for the published records.

    Reused across the scans of this Python thread in this CUDA context instead of allocated
    per call (a ``cuMemAlloc`` / free per array per scan, e.g. 37 MB of records at
    T*D = 1e8 in float64); they grow to the largest scan so far and stay allocated. Only the
    flags need zeroing: a record is read only after its flag says it was written. (The
    simulator makes a new context object per call: there the one fake context is assumed.)
    """
    context = cuda.current_context()
    held = getattr(_SCRATCH, "held", None)
    if held is None or not (held[0] is context or numba.config.ENABLE_CUDASIM):
        held = _SCRATCH.held = (context, {})
    arrays = held[1]
    need = {"flags": (n_tiles + 1, np.dtype(np.int32)), "values": (n_values, np.dtype(dtype))}
    views = []
    for name, (size, dt) in need.items():
        key = (name, dt.str)
        if key not in arrays or arrays[key].shape[0] < size:
            arrays.pop(key, None)  # free the smaller one first
            arrays[key] = cuda.device_array(max(size, 1), dt)
        views.append(arrays[key][:size])
    flags, values = views
    zero_fill(flags)
    return flags, values


def _pow2_floor(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


def _pow2_ceil(n: int) -> int:
    return 1 << (max(n, 1) - 1).bit_length()


def dense_lanes(D: int, dtype, launch: Launch) -> int:
    """Runs per dense block: as many pairs as the shared budget holds, a power of 2."""
    fit = DENSE_SHARED_BYTES // np.dtype(dtype).itemsize // (D * D + D)
    return min(launch.dense_block, _pow2_floor(fit))


def _contiguous(x):
    """The device array ``x`` itself when C-contiguous (or None), else one C-contiguous copy
    made on the device (Numba's strided assignment kernel): the scan kernels index ``(B, T,
    D)`` views (dense) or flat ones (diagonal) of their inputs."""
    if x is None or x.is_c_contiguous():
        return x
    copy = cuda.device_array(x.shape, x.dtype)
    if x.size:
        copy[:] = x
    return copy


def scan_device(a, b, h0, reverse, transpose, dense, out, launch: Launch | None = None):
    """Scan device arrays ``a, b, h0`` (validated, C-contiguous) into the device array ``out``.

    ``launch`` defaults to the module's :data:`LAUNCH`, read at call time.
    """
    launch = LAUNCH if launch is None else launch
    T, D = tuple(b.shape)[-2:]
    B = math.prod(tuple(b.shape)[:-2])
    if out.size == 0:
        return out
    kernels = make_kernels(np.dtype(b.dtype), launch)
    b3 = b.reshape(B, T, D)
    out3 = out.reshape(B, T, D)
    h03 = out3[0] if h0 is None else h0.reshape(B, D)
    if dense:
        lanes = dense_lanes(D, b.dtype, launch)
        n_tiles = B * -(-T // (lanes * launch.dense_items))
        ra = (D * D + D + RECORD - 1) // RECORD * RECORD
        ri = (D + RECORD - 1) // RECORD * RECORD
        status, records = _scratch(n_tiles, n_tiles * (ra + ri), b.dtype)
        agg, incl = records[: n_tiles * ra], records[n_tiles * ra :]
        kernels.dense[n_tiles, launch.dense_block](
            a.reshape(B, T, D, D),
            b3,
            h03,
            h0 is not None,
            reverse,
            transpose,
            out3,
            status,
            agg,
            incl,
            lanes,
            launch.dense_items,
        )
    else:
        cw = diag_channels(B * D, b.dtype, launch)
        n_tiles = -(-(B * D) // cw) * -(-T // (launch.block // cw * diag_items(b.dtype, launch)))
        status, records = _scratch(n_tiles, 3 * n_tiles * RECORD, b.dtype)
        agg_a, agg_b, incl = (
            records[k * n_tiles * RECORD : (k + 1) * n_tiles * RECORD] for k in range(3)
        )
        kernels.diag(cw)[n_tiles, launch.block](
            a.reshape(B * T * D),
            b.reshape(B * T * D),
            h03,
            h0 is not None,
            reverse,
            out.reshape(B * T * D),
            status,
            agg_a,
            agg_b,
            incl,
            B,
            T,
            D,
        )
    return out


def linear_scan_cuda(a, b, h0, reverse, transpose, dense, out):
    """``backend="cuda"`` of :func:`parscan.linear_scan` (inputs already validated).

    Device inputs give a device result without host round trips (a non-contiguous one is
    copied once on the device); host inputs are copied to the GPU and the result back into a
    host array (``out`` when given).
    """
    D = tuple(b.shape)[-1]
    if dense and D > DMAX:
        raise ValueError(
            f"linear_scan: the cuda backend supports dense `a` with D <= {DMAX}; got D={D}. "
            "Use backend='cpu' or 'sequential' for larger D."
        )
    if isinstance(b, np.ndarray):
        dtype = b.dtype.newbyteorder("=")
        dev = [None if x is None else to_device(x) for x in (a, b, h0)]
        d_out = scan_device(*dev, reverse, transpose, dense, cuda.device_array(b.shape, dtype))
        host = np.empty(b.shape, dtype) if out is None else out
        if host.size:
            d_out.copy_to_host(host)
        return host
    from parscan.scan import _extent  # the module that checked out's overlap with b

    a, b, h0 = (_contiguous(x) for x in (a, b, h0))
    if out is None:
        out = cuda.device_array(b.shape, b.dtype)
    elif out.size and _extent(out) == _extent(b):  # in place: the walks below re-read b
        # (a state carried step by step through a product of ``a`` that overflowed reads
        # b[t] after other tiles wrote h there), so the scan gets a result of its own
        fresh = scan_device(a, b, h0, reverse, transpose, dense, cuda.device_array_like(out))
        out.copy_to_device(fresh)
        return out
    return scan_device(a, b, h0, reverse, transpose, dense, out)
