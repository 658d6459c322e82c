"""CUDA backend of linear_scan.

* PTX: every kernel x dtype compiles with ``cuda.compile_ptx`` for cc 9.0 (no GPU needed;
  skipped under the simulator, where there is no compiler);
* ``cudasim``: the kernels run in the simulator (``NUMBA_ENABLE_CUDASIM=1``) with blocks of 8
  threads x 2 steps, so tiny inputs cross many tiles and exercise the look-back;
* ``gpu``: the same properties with the production launch shape on a real GPU.

This module imports cleanly with and without the simulator.
"""

import dataclasses
import itertools
import os
import threading

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from numba import cuda
from reference import scan_reference
from test_scan import (
    DTYPES,
    adjoint_shift,
    assert_close,
    assert_same_non_finite,
    make_dyadic_inputs,
    make_inputs,
    make_non_finite_inputs,
    reference_non_finite,
    run_case,
    scan_cases,
)

import parscan
from parscan import _cuda

CUDASIM = os.environ.get("NUMBA_ENABLE_CUDASIM", "") == "1"
SIM_LAUNCH = _cuda.Launch(block=8, items=2, dense_block=4, dense_items=2, lookback=8)
#: Tiles publish only aggregates: every look-back combines them back to the first tile, in
#: windows of 4 (2 channels per block: 4 lanes of one predecessor each) or 8 tiles (1 channel).
SIM_LAUNCH_AGGREGATES = _cuda.Launch(
    block=8, items=2, dense_block=4, dense_items=2, lookback=4, publish_prefix=False
)
#: Lengths around the simulator tiles (8 or 16 diagonal steps, 8 dense steps per block).
SIM_T = (0, 1, 2, 7, 8, 9, 15, 16, 17, 33)
#: Lengths around the production tiles of every dtype (steps per tile: ``block // cw * items``
#: for ``cw`` = 1, 8, 16 or 32 channels per block).
GPU_T = tuple(
    sorted(
        {0, 1, 2, 31, 20_000}
        | {
            _cuda.LAUNCH.block // cw * _cuda.diag_items(dtype, _cuda.LAUNCH) + delta
            for dtype in DTYPES
            for cw in (1, 8, 16, 32)
            for delta in (-1, 0, 1)
        }
    )
)


def _to_device(x):
    return cuda.to_device(x)


# --------------------------------------------------------------------------- PTX (no GPU)


def test_launch_shapes_that_would_give_wrong_results_are_refused():
    from models._cuda_eval import EvalLaunch
    from parscan._deer_cuda import Launch as DeerLaunch

    for make, field, bad, kind in [
        (_cuda.Launch, "block", 24, "a power of 2"),
        (_cuda.Launch, "dense_block", 6, "a power of 2"),
        (_cuda.Launch, "items", 0, "an integer >= 1"),
        (_cuda.Launch, "blocks_per_sm", 0, "an integer >= 1"),
        (DeerLaunch, "threads", 12, "a power of 2"),
        (EvalLaunch, "threads", 48, "a power of 2"),
        (EvalLaunch, "vjp_blocks", 0, "an integer >= 1"),
    ]:
        with pytest.raises(ValueError, match=rf"^{make.__name__}: {field} must be {kind}; got"):
            make(**{field: bad})
    assert _cuda.Launch(block=8, items=3).block == 8  # items need not be powers of 2


def test_diagonal_tiles_are_sized_in_bytes():
    """By default a diagonal thread loads DIAG_TUNED's bytes of ``a`` for its dtype, holds
    them (float32) or reads them again, and asks for its dtype's blocks per SM; a block spans
    at most one 128-byte line of channels, whatever the dtype. Explicit fields win."""
    launch = _cuda.LAUNCH
    got = {
        np.dtype(dt).name: (*_cuda.diag_shape(dt, launch), _cuda.diag_channels(1000, dt, launch))
        for dt in DTYPES
    }
    assert got == {
        "float32": (32, True, 2, 32),
        "float64": (64, False, 4, 16),
        "complex64": (32, False, 4, 16),
        "complex128": (16, False, 4, 8),
    }
    explicit = _cuda.Launch(items=3, hold=False, blocks_per_sm=1)
    assert _cuda.diag_shape(np.float32, explicit) == (3, False, 1)
    assert _cuda.diag_items(np.float64, explicit) == 3
    assert _cuda.diag_channels(3, np.float32, launch) == 4  # enough to cover B*D, a power of 2
    assert _cuda.diag_channels(1000, np.float32, _cuda.Launch(block=8)) == 2  # >= 4 lanes each


@pytest.mark.skipif(CUDASIM, reason="the simulator has no PTX compiler")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", ["diag-narrowest", "diag-widest", "diag-other-hold", "dense"])
def test_ptx_compiles(no_device_context, dtype, kernel):
    """Each diagonal block width ``cw`` (channels per block, powers of 2 from 1 to a 128-byte
    line) is a kernel of its own: the two extremes compile, and the widest with the run held in
    registers or read again, whichever :data:`_cuda.DIAG_TUNED` does not pick for the dtype."""
    launch = _cuda.LAUNCH
    if kernel == "diag-other-hold":  # the way of getting a run again that the dtype does not use
        launch = dataclasses.replace(launch, hold=not _cuda.diag_shape(dtype, launch)[1])
    kernels = _cuda.make_kernels(np.dtype(dtype), launch)
    signature = getattr(kernels, f"{kernel.split('-')[0]}_signature")
    if kernel == "dense":
        compiled = kernels.dense
    else:  # one channel per block, or the most channels per block
        compiled = kernels.diag(
            _cuda.diag_channels(1 if "narrowest" in kernel else 10**6, dtype, launch)
        )
    bounds = compiled.targetoptions.get("launch_bounds")  # as the kernel runs: blocks per SM
    ptx, _ = cuda.compile_ptx(compiled.py_func, signature, cc=(9, 0), launch_bounds=bounds)
    assert ".entry" in ptx and "atom.global" in ptx and "bar.sync" in ptx
    if kernel != "dense" and np.dtype(dtype).itemsize <= 8:
        assert f".minnctapersm {bounds[1]}" in ptx
    if kernel != "dense":  # the per-thread runs and the look-back's window loads: registers
        assert ".local" not in ptx


@pytest.mark.skipif(CUDASIM, reason="the simulator has no PTX compiler")
def test_ptx_zero_fill():
    for dt in (numba.int32, numba.float64):
        ptx, _ = cuda.compile_ptx(_cuda._zero_fill.py_func, (dt[::1],), cc=(9, 0))
    assert ".entry" in ptx


# --------------------------------------------------------------------------- simulator


@pytest.fixture(scope="module")
def sim_launch():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_cuda, "LAUNCH", SIM_LAUNCH)
        yield


@pytest.mark.cudasim
@given(case=scan_cases(t_values=SIM_T, max_d=3))
def test_sim_matches_reference(sim_launch, case):
    out, ref = run_case(case, "cuda")
    assert isinstance(out, np.ndarray) and out.dtype == ref.dtype
    assert_close(out, ref)


@pytest.mark.cudasim
@settings(max_examples=20)
@given(case=scan_cases(t_values=SIM_T, max_d=3))
def test_sim_dyadic_bit_exact_on_device(sim_launch, case):
    out, ref = run_case(case, "auto", make=make_dyadic_inputs, convert=_to_device)
    assert not isinstance(out, np.ndarray)  # device in, device out
    np.testing.assert_array_equal(out.copy_to_host(), ref)


@pytest.mark.cudasim
@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_sim_lookback_through_aggregates(dense, dtype):
    """The sequential simulator never shows a tile in progress; force the aggregate path."""
    cases = [  # 5 tiles in 3 channel groups; 3 tiles; 13 and 11 tiles: several windows
        (make_inputs, ((3,), 33, 2)),
        (make_dyadic_inputs, ((), 40, 1)),
        (make_inputs, ((2,), 100, 1)),
        (make_dyadic_inputs, ((), 170, 1)),
    ]
    for make, (batch, T, D) in cases:
        a, b, h0 = make(T, dtype, dense, batch, T, D)
        for reverse in (False, True):
            out = cuda.device_array(b.shape, b.dtype)
            args = (cuda.to_device(a), cuda.to_device(b), cuda.to_device(h0), reverse, dense, dense)
            _cuda.scan_device(*args, out, SIM_LAUNCH_AGGREGATES)
            ref = scan_reference(a, b, h0, reverse, dense)
            if make is make_inputs:
                assert_close(out.copy_to_host(), ref)
            else:
                np.testing.assert_array_equal(out.copy_to_host(), ref)


@pytest.mark.cudasim
@pytest.mark.parametrize("dtype", DTYPES)
def test_sim_byte_sized_tiles(dtype):
    """The production tile rule (``items=None``: DIAG_TUNED's bytes of ``a`` per thread;
    channels capped at one 128-byte line) on the smallest blocks where the cap applies
    (float32: 32 channels need 128 threads): 20 channels (a partial group), three tiles and a
    partial one; forward with inclusive states published, reverse with aggregates only."""
    itemsize = np.dtype(dtype).itemsize
    launch = _cuda.Launch(block=4 * _cuda.LINE_BYTES // itemsize, lookback=4)
    B, D = 2, 10
    cw = _cuda.diag_channels(B * D, dtype, launch)
    assert cw == _cuda.LINE_BYTES // itemsize
    tile = launch.block // cw * _cuda.diag_items(dtype, launch)
    a, b, h0 = make_inputs(5, dtype, False, (B,), 3 * tile + 5, D)
    for reverse, publish in ((False, True), (True, False)):
        out = cuda.device_array(b.shape, b.dtype)
        args = (cuda.to_device(a), cuda.to_device(b), cuda.to_device(h0), reverse, False, False)
        _cuda.scan_device(*args, out, dataclasses.replace(launch, publish_prefix=publish))
        assert_close(out.copy_to_host(), scan_reference(a, b, h0, reverse, False))


@pytest.mark.cudasim
@pytest.mark.parametrize("dtype", [np.float32, np.complex128])
def test_sim_runs_held_or_read_again(dtype):
    """The way of getting a thread's run back to write ``h`` that :data:`_cuda.DIAG_TUNED` does
    not pick for the dtype (float32 holds it in registers, complex128 reads it again; the
    other tests run the picked one) gives the loop's result too: several tiles, a partial
    group of channels, forward from ``h0`` and reverse, a NaN in ``b`` that reaches the same
    states."""
    launch = dataclasses.replace(SIM_LAUNCH, hold=not _cuda.diag_shape(dtype, SIM_LAUNCH)[1])
    a, b, h0 = make_inputs(7, dtype, False, (3,), 37, 3)
    assert 3 * 3 % _cuda.diag_channels(3 * 3, dtype, launch)  # the last group is partial
    b[1, 20, 2] = np.nan
    for reverse in (False, True):
        out = cuda.device_array(b.shape, b.dtype)
        args = (cuda.to_device(a), cuda.to_device(b), cuda.to_device(h0), reverse, False)
        _cuda.scan_device(*args, False, out, launch)
        got, want = out.copy_to_host(), scan_reference(a, b, h0, reverse, False)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        assert_close(np.nan_to_num(got), np.nan_to_num(want))


#: Per dtype: ``|a|`` whose product overflows within a simulator tile (8 steps) but not within
#: a thread's run (2 steps); a tiny state that 9 such steps carry to a finite one; and how
#: close the scan must come to the loop where that is finite.
OVERFLOW = {
    np.dtype(np.float32): (1e5, 1e-37, 2e-6),
    np.dtype(np.float64): (1e60, 1e-300, 1e-12),
    np.dtype(np.complex64): (1e5, 1e-37, 2e-6),
    np.dtype(np.complex128): (1e60, 1e-300, 1e-12),
}


def _loop(a, b, h0, reverse=False):
    """:func:`scan_reference` without NumPy's warnings about ``0 * inf`` and overflow."""
    with np.errstate(all="ignore"):
        return scan_reference(a, b, h0, reverse, False)


def make_overflow_inputs(dtype, T):
    """``(1, T, 6)`` diagonal inputs (scan order) whose products of ``a = ±big`` overflow
    within a tile (:data:`OVERFLOW`). Channels: 0: ``b = 0``, ``h0 = 0``: the loop stays 0
    (a pair gives inf * 0 = NaN); 1: ``h0`` tiny and every 10th step ``a = 0``, ``b`` tiny:
    the loop climbs from tiny to at most ``tiny * big**9``, finite, and restarts (a pair
    gives inf, and NaN across a restart); 2: contractive ``a``, ``b ~ N(0, 1)``; 3: ``h0 =
    1``, ``b ~ N(0, 1)``: the loop overflows within a few steps and stays ±inf (a pair's
    ``b`` part overflows to either sign: inf - inf); 4: ``b = NaN`` at one step, 0
    elsewhere, ``h0 = 0``; 5: channel 0 of :func:`make_non_finite_inputs` (``h0 = inf``
    through underflowed runs). Complex dtypes: channels 0-2, ``a`` rotated."""
    big, tiny, _ = OVERFLOW[np.dtype(dtype)]
    rng = np.random.default_rng(T)
    a = big * rng.choice((-1.0, 1.0), (1, T, 5))
    b = np.zeros((1, T, 5))
    h0 = np.array([[0.0, tiny, 1.0, 1.0, 0.0]])
    a[0, 7::10, 1], b[0, 7::10, 1] = 0.0, tiny
    a[0, :, 2] *= rng.uniform(0.3, 0.95, T) / big
    b[0, :, 2:4] = rng.standard_normal((T, 2))
    b[0, T // 3, 4] = np.nan
    if np.dtype(dtype).kind == "c":
        a = a[..., :3] * np.exp(1j * rng.uniform(0, 2 * np.pi, (1, T, 3)))
        return a.astype(dtype), b[..., :3].astype(dtype), h0[:, :3].astype(dtype)
    pairs = zip((a, b, h0), make_non_finite_inputs(dtype, T), strict=True)
    return tuple(np.concatenate([x.astype(dtype), y[..., :1]], -1) for x, y in pairs)


def _seed_predecessors(rng, a, b, h0, cw, tile, n_done, near=None):
    """Flags and records of the first ``n_done`` tile rows as a GPU can leave them while later
    tiles look back: tile 0 inclusive, the others a random mix of aggregates (flag 1) and
    inclusive states (flag 2), or with ``near``, aggregates but for tile ``n_done - 1 -
    near`` (slot ``near`` of the first look-back window); the tile counter set to the first
    tile not done."""
    (B, T, D), RECORD = b.shape, _cuda.RECORD
    n_groups = -(-(B * D) // cw)
    n_tiles = n_groups * -(-T // tile)
    status = np.zeros(n_tiles + 1, np.int32)
    status[-1] = n_done * n_groups
    records = np.zeros((3, n_tiles * RECORD), b.dtype)  # agg_a, agg_b, incl
    ref = _loop(a, b, h0)
    for j in range(n_done):
        lo, hi = j * tile, min((j + 1) * tile, T)
        for g in range(n_groups):
            k = j * n_groups + g
            incl = rng.random() < 0.3 if near is None else j == n_done - 1 - near
            status[k] = 2 if j == 0 or incl else 1
            for c in range(min(cw, B * D - g * cw)):
                bi, d = divmod(g * cw + c, D)
                pa, pb = b.dtype.type(1), b.dtype.type(0)
                with np.errstate(all="ignore"):  # the products of overflow data
                    for t in range(lo, hi):
                        pa, pb = a[bi, t, d] * pa, a[bi, t, d] * pb + b[bi, t, d]
                records[:, k * RECORD + c] = pa, pb, ref[bi, hi - 1, d]
    return status, records, ref


def _scan_seeded(rng, a, b, h0, launch, near=None):
    """Scan with the tiles of a random number of leading tile rows seeded (``near + 2`` with
    ``near``: :func:`_seed_predecessors`); returns the states of the other tiles and the
    loop's."""
    dtype = b.dtype
    cw = _cuda.diag_channels(b.shape[0] * b.shape[2], dtype, launch)
    tile = launch.block // cw * _cuda.diag_items(dtype, launch)
    n_done = int(rng.integers(1, -(-b.shape[1] // tile))) if near is None else near + 2
    status, records, ref = _seed_predecessors(rng, a, b, h0, cw, tile, n_done, near)
    out = cuda.to_device(np.full(b.size, 12345, dtype))  # the kernel takes a, b, out flat
    kernels = _cuda.make_kernels(dtype, launch)
    args = [cuda.to_device(x) for x in (a.ravel(), b.ravel(), h0)]
    records = [cuda.to_device(np.ascontiguousarray(r)) for r in records]
    n_left = status.size - 1 - int(status[-1])  # the tiles not seeded
    kernels.diag(cw)[n_left, launch.block](
        *args, True, False, out, cuda.to_device(status), *records, *b.shape
    )
    got = out.copy_to_host().reshape(b.shape)
    return got[:, n_done * tile :], ref[:, n_done * tile :]


@pytest.mark.cudasim
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # 0 * inf
@pytest.mark.parametrize("launch", [SIM_LAUNCH, SIM_LAUNCH_AGGREGATES], ids=["prefix", "aggr"])
def test_sim_lookback_meets_inclusive_states_mid_window(launch):
    """The simulator runs blocks one after another, so a look-back always meets complete
    predecessors. Seed them as a GPU can leave them (aggregates and inclusive states mixed,
    the nearest inclusive state anywhere in a window), launch only the later tiles, and
    compare with the loop (finite data, and inf/underflow data)."""
    rng = np.random.default_rng(7)
    for seed, (D, T) in enumerate([(1, 150), (3, 90), (4, 61)]):
        a, b, h0 = make_inputs(seed, np.float64, False, (1,), T, D)
        if seed == 2:  # four channels of inf, NaN and underflowed runs
            a, b, h0 = make_non_finite_inputs(np.float64, T)
        got, expected = _scan_seeded(rng, a, b, h0, launch)
        assert_same_non_finite(got, expected, 1e-9)


@pytest.mark.cudasim
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # 0 * inf
@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("launch", [SIM_LAUNCH, SIM_LAUNCH_AGGREGATES], ids=["prefix", "aggr"])
def test_sim_inf_crosses_underflowed_tiles(dense, launch):
    """Products of tiny ``a`` underflow to 0 within runs, in the sweeps and across tiles:
    infinities in ``h0`` and ``b`` must still come out as the sequential loop gives them
    (±inf through tiny steps, NaN after a zero), not as 0 * inf = NaN. Dense: the same four
    channels as a batch of 1 x 1 matrices."""
    _check_inf_crosses_underflowed_runs(dense, 24, launch)


def _check_inf_crosses_underflowed_runs(dense: bool, T: int, launch) -> None:
    """:func:`test_sim_inf_crosses_underflowed_tiles` on ``T`` steps with ``launch``."""
    a, b, h0 = make_non_finite_inputs(np.float64, T)
    if dense:  # a (1, T, 4) -> (4, T, 1, 1), b (1, T, 4) -> (4, T, 1), h0 (1, 4) -> (4, 1)
        a, b = (np.ascontiguousarray(x[0].T[..., None]) for x in (a, b))
        a, h0 = a[..., None], np.ascontiguousarray(h0.T)
    for reverse in (False, True):
        expected = reference_non_finite(a, b, h0, reverse)
        assert np.isinf(expected[0, :, 0]).all()  # h0 = inf through every tiny run
        out = cuda.device_array(b.shape, b.dtype)
        args = (cuda.to_device(a), cuda.to_device(b), cuda.to_device(h0), reverse, False, dense)
        _cuda.scan_device(*args, out, launch)
        assert_same_non_finite(out.copy_to_host(), expected, 1e-12)


@pytest.mark.cudasim
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf * 0
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize(
    ("dense", "launch", "dtype", "reverse"),
    [
        pytest.param(False, SIM_LAUNCH, np.float32, False, id="diag-prefix-f32"),
        pytest.param(False, SIM_LAUNCH_AGGREGATES, np.float64, True, id="diag-aggr-f64-reverse"),
        pytest.param(False, SIM_LAUNCH_AGGREGATES, np.complex128, False, id="diag-aggr-c128"),
        pytest.param(True, SIM_LAUNCH, np.float64, True, id="dense-prefix-f64-reverse"),
        pytest.param(True, SIM_LAUNCH_AGGREGATES, np.float32, False, id="dense-aggr-f32"),
    ],
)
def test_sim_states_cross_overflowed_tiles(dense, launch, dtype, reverse):
    """Products of huge ``a`` overflow within a tile while the loop stays finite (a zero or
    tiny state) or runs into ±inf and NaN as it goes: a state is walked through the steps of
    such a product, not multiplied by inf (:func:`make_overflow_inputs`; 4 tiles, or 6 for
    ``aggr``: the last look-back takes two windows). Dense: channels 1 and 3 as a batch of
    1 x 1 matrices, and 2 x 2 rotations by ``big`` restarted every 10th step. Complex: no
    ``h0`` (channel 1 then starts from 0)."""
    T = 25 if launch.publish_prefix else 41
    a, b, h0 = make_overflow_inputs(dtype, T)
    if np.dtype(dtype).kind == "c":
        h0 = None
    cases = [(a, b, h0)]
    if dense:  # a (1, T, C) -> (C, T, 1, 1), b (1, T, C) -> (C, T, 1), h0 (1, C) -> (C, 1)
        a, b = (np.ascontiguousarray(x[0, :, [1, 3]][..., None]) for x in (a, b))
        h0 = np.ascontiguousarray(h0[0, [1, 3]][:, None])
        cases = [(a[..., None], b, h0), _rotations(dtype, T)]
    for a, b, h0 in cases:
        if reverse:  # the same data in scan order
            a, b = (np.ascontiguousarray(np.flip(x, 1)) for x in (a, b))
        out = cuda.device_array(b.shape, b.dtype)
        args = (cuda.to_device(a), cuda.to_device(b), h0 if h0 is None else cuda.to_device(h0))
        _cuda.scan_device(*args, reverse, False, dense, out, launch)
        expected = _loop(a, b, h0, reverse)
        rtol = OVERFLOW[np.dtype(dtype)][2]
        if np.dtype(dtype).kind == "c":  # channels 0-2: the loop is finite
            np.testing.assert_allclose(out.copy_to_host(), expected, rtol=rtol, atol=rtol)
        else:
            assert_same_non_finite(out.copy_to_host(), expected, rtol)
    if not dense:  # channels 0-2 finite: 0; tiny states carried to big ones; contractive
        assert (expected[0, :, 0] == 0).all() and np.abs(expected[0, :, 1]).max() > 1e6
        assert np.isfinite(expected[0, :, :3]).all()


@pytest.mark.cudasim
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf * 0
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_sim_lookback_walks_aggregates_once_across_windows():
    """Aggregates only, windows of 4 tiles of 8 steps: the look-back of tile 9 takes three
    windows, and a walk that acc (the tiles of the windows before) needs in the second one
    is taken in the third, once, from the state met there (tile 0). Channel 0: contractive,
    ``b = inf`` in tile 2 and tiny ``a`` in tiles 5-7 (the loop: ±inf from tile 2 on; acc's
    product is 0, the second window's ``b`` part inf); channel 1: a tiny state through
    products that overflow from the first window on (:func:`make_overflow_inputs`)."""
    a, b, h0 = (np.ascontiguousarray(x[..., [2, 1]]) for x in make_overflow_inputs(np.float64, 75))
    b[0, 20, 0] = np.inf
    a[0, 40:64, 0] *= np.sqrt(np.finfo(np.float64).tiny)
    out = cuda.device_array(b.shape, b.dtype)
    args = (cuda.to_device(a), cuda.to_device(b), cuda.to_device(h0), False, False, False)
    _cuda.scan_device(*args, out, SIM_LAUNCH_AGGREGATES)
    expected = _loop(a, b, h0)
    assert np.isinf(expected[0, 20:, 0]).all() and np.isfinite(expected[0, :, 1]).all()
    assert_same_non_finite(out.copy_to_host(), expected, 1e-12)


def _rotations(dtype, T):
    """Dense ``(2, T, 2, 2)``: ``a = big`` times a rotation, every 10th step 0; element 0:
    ``b`` tiny there and 0 elsewhere, ``h0`` tiny (finite states through overflowed
    products); element 1: ``b = 0``, ``h0 = 0`` (the loop stays 0)."""
    big, tiny, _ = OVERFLOW[np.dtype(dtype)]
    theta = np.random.default_rng(T).uniform(0, 2 * np.pi, (2, T))
    c, s = np.cos(theta), np.sin(theta)
    a = big * np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)
    a[:, 7::10] = 0.0
    b = np.zeros((2, T, 2))
    b[0, 7::10] = tiny, -tiny
    h0 = np.array([[tiny, tiny], [0.0, 0.0]])
    return a.astype(dtype), b.astype(dtype), h0.astype(dtype)


@pytest.mark.cudasim
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf * 0
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("launch", [SIM_LAUNCH, SIM_LAUNCH_AGGREGATES], ids=["prefix", "aggr"])
def test_sim_lookback_meets_inclusive_states_mid_window_after_overflowed_tiles(launch):
    """As :func:`test_sim_lookback_meets_inclusive_states_mid_window`, with the products of
    the aggregates after the nearest inclusive state overflowed (channels 1 and 3 of
    :func:`make_overflow_inputs`, one block: tiles of 8 steps; windows of 4 lanes x 2
    slots, or 4 x 1 for ``aggr``): the part of a window from that state on must not depend
    on the 0 its earlier slots, identities, leave (inf * 0 is NaN; a walk from that 0 over
    the state's tile misses the state), and only the aggregates after it are walked, from it.
    The state is met in slot 1 (the slot after it in its lane overflowed), 2 (the lane after
    it), 3 or 5 (a second window for ``aggr``), and for ``aggr`` one slot further on too."""
    rng = np.random.default_rng(11)
    for dtype, near in [(np.float64, 1), (np.float64, 2), (np.float32, 3), (np.float64, 5)]:
        a, b, h0 = make_overflow_inputs(dtype, 8 * (near + 3) + 3)
        a, b, h0 = (np.ascontiguousarray(x[..., [1, 3]]) for x in (a, b, h0))
        got, expected = _scan_seeded(rng, a, b, h0, launch, near)
        assert_same_non_finite(got, expected, OVERFLOW[np.dtype(dtype)][2])


@pytest.mark.cudasim
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf - inf
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize(
    ("launch", "dtype", "reverse"),
    [
        pytest.param(SIM_LAUNCH, np.float64, False, id="prefix-f64"),
        pytest.param(SIM_LAUNCH_AGGREGATES, np.float64, True, id="aggr-f64-reverse"),
        pytest.param(SIM_LAUNCH, np.float32, True, id="prefix-f32-reverse"),
        pytest.param(SIM_LAUNCH_AGGREGATES, np.float32, False, id="aggr-f32"),
    ],
)
def test_sim_inf_meets_offsets_overflowed_to_the_other_sign(launch, dtype, reverse):
    """``a = 1`` and ``h0 = ±inf``, with ``b`` of the largest size of the other sign at a few
    steps of later tiles (5 tiles of 8 steps): the loop keeps ``±inf`` everywhere, but the
    offsets of runs, tiles and look-back windows over two such steps overflow to ``∓inf``,
    and ``inf + -inf`` is NaN: the state must be walked through them. Channel 0: ``h0 =
    inf``, ``b = -big`` in one run (steps 18, 19) and the next; channel 1: ``h0 = -inf``,
    ``b = big`` at steps 25, 26 and 29 (across runs)."""
    big = 1e308 if np.dtype(dtype) == np.float64 else np.finfo(dtype).max
    T = 40
    a, b = np.ones((1, T, 2), dtype), np.zeros((1, T, 2), dtype)
    b[0, [18, 19, 21], 0] = -big
    b[0, [25, 26, 29], 1] = big
    h0 = np.array([[np.inf, -np.inf]], dtype)
    if reverse:  # the same data in scan order
        a, b = (np.ascontiguousarray(np.flip(x, 1)) for x in (a, b))
    out = cuda.device_array(b.shape, b.dtype)
    args = (cuda.to_device(a), cuda.to_device(b), cuda.to_device(h0), reverse, False, False)
    _cuda.scan_device(*args, out, launch)
    expected = _loop(a, b, h0, reverse)
    assert np.isposinf(expected[..., 0]).all() and np.isneginf(expected[..., 1]).all()
    assert_same_non_finite(out.copy_to_host(), expected, 0)


@pytest.mark.cudasim
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf - inf
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sim_lookback_applies_inf_offset_to_an_overflowing_state(dtype):
    """Aggregates only, windows of 4 tiles of 8 steps (a case found by fuzzing, made small):
    ``b = inf`` at step 12 (tile 1) and ``a = big`` at 6 steps of tiles 2-4 make the first
    look-back window of tile 5 the pair ``(big**6, inf)``, finite product; applied to the
    state met in tile 0, ``-1e10``, its product overflows to ``-inf``, and ``-inf + inf``
    is NaN where the loop gives inf from step 12 on. Channel 1: the same with the signs of
    ``h0`` and ``b`` swapped."""
    big = 1e6 if np.dtype(dtype) == np.float32 else 1e50
    T = 48
    a, b = np.ones((1, T, 2), dtype), np.zeros((1, T, 2), dtype)
    a[0, 16:40:4] = big  # products: big**2 per tile, big**6 over tiles 2-4 (1e36, 1e300)
    b[0, 12] = np.inf, -np.inf
    h0 = np.array([[-1e10, 1e10]], dtype)
    out = cuda.device_array(b.shape, b.dtype)
    args = (cuda.to_device(a), cuda.to_device(b), cuda.to_device(h0), False, False, False)
    _cuda.scan_device(*args, out, SIM_LAUNCH_AGGREGATES)
    expected = _loop(a, b, h0)
    assert np.isposinf(expected[0, 12:, 0]).all() and np.isneginf(expected[0, 12:, 1]).all()
    assert_same_non_finite(out.copy_to_host(), expected, 0)


@pytest.mark.cudasim
@pytest.mark.parametrize("dense", [False, True])
def test_sim_scratch_reused_and_grown(sim_launch, monkeypatch, dense):
    """The flags and records are reused between scans and grow for a larger one; stale flags
    or records of an earlier scan never leak into a later one (the tile counter included)."""
    monkeypatch.setattr(_cuda, "_SCRATCH", threading.local())  # start empty
    held = []
    for seed, T in enumerate((24, 24, 64, 5)):
        a, b, h0 = make_inputs(seed, np.float64, dense, (2,), T, 2)
        d_args = (cuda.to_device(x) for x in (a, b, h0))
        out = parscan.linear_scan(*d_args, backend="cuda")
        assert_close(out.copy_to_host(), scan_reference(a, b, h0))
        held.append(dict(_cuda._SCRATCH.held[1]))
    same = [all(x[k] is y[k] for k in x) for x, y in itertools.pairwise(held)]
    assert same == [True, False, True]  # reused, grown for T = 64, reused for T = 5


def _check_reverse_and_adjoint(dense: bool, T: int) -> None:
    """Reverse = flip∘forward∘flip, bit for bit on dyadic data (on a GPU the look-back
    combines a timing-dependent number of tiles, so random data may differ in the last
    bits), and the adjoint identity ⟨scan(b), v⟩ = ⟨b, transposed reverse scan(v)⟩."""
    a, b, h0 = make_dyadic_inputs(3, np.float64, dense, (2,), T, 2)
    rev = parscan.linear_scan(a, b, h0, reverse=True, backend="cuda")
    fwd = parscan.linear_scan(np.flip(a, 1), np.flip(b, 1), h0, backend="cuda")
    np.testing.assert_array_equal(rev, np.flip(fwd, 1))
    a, b, _ = make_inputs(3, np.float64, dense, (2,), T, 2)
    v = make_inputs(4, np.float64, dense, (2,), T, 2)[1]
    h = parscan.linear_scan(a, b, backend="cuda")
    g = parscan.linear_scan(
        adjoint_shift(a, dense), v, reverse=True, transpose=True, backend="cuda"
    )
    assert abs(np.sum(h * v) - np.sum(b * g)) <= 1e-12 * (1 + np.sum(np.abs(h * v)))


@pytest.mark.cudasim
@pytest.mark.parametrize("dense", [False, True])
def test_sim_reverse_is_flipped_forward_and_adjoint(sim_launch, dense):
    _check_reverse_and_adjoint(dense, 19)


@pytest.mark.cudasim
def test_sim_out_and_in_place_on_device(sim_launch):
    a, b, h0 = make_dyadic_inputs(5, np.float64, False, (3,), 20, 2)
    ref = scan_reference(a, b, h0)
    da, db, dh0 = (cuda.to_device(x) for x in (a, b, h0))
    out = cuda.device_array(b.shape, b.dtype)
    assert parscan.linear_scan(da, db, dh0, out=out) is out
    np.testing.assert_array_equal(out.copy_to_host(), ref)
    parscan.linear_scan(da, db, dh0, out=db)  # in place
    np.testing.assert_array_equal(db.copy_to_host(), ref)
    host_out = np.empty_like(b)
    assert parscan.linear_scan(a, b, h0, backend="cuda", out=host_out) is host_out
    np.testing.assert_array_equal(host_out, ref)


@pytest.mark.cudasim
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf * 0
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("dense", [False, True])
def test_sim_in_place_scan_across_an_overflowed_product_is_the_loops(sim_launch, dense):
    """In place (``out=b``), the state walked step by step through a product of ``a`` that
    overflowed reads the b of those steps, not the h other tiles wrote there (it gave 22
    for 7, and 375 for 31 with the full launch)."""
    T = 48
    a, b = np.ones((1, T, 1), np.float32), np.ones((1, T, 1), np.float32)
    a[0, 0:2, 0], b[0, 0:2, 0] = 1e30, 0.0  # the product overflows; the states stay 0, 1, 2, ...
    if dense:
        a = a[..., None]
    ref = parscan.linear_scan(a, b, backend="sequential")
    db = cuda.to_device(b)
    assert parscan.linear_scan(cuda.to_device(a), db, out=db) is db
    np.testing.assert_array_equal(db.copy_to_host(), ref)
    assert ref[0, -1, 0] == T - 2


@pytest.mark.cudasim
def test_sim_device_arrays_of_the_other_byte_order_or_dtype_get_fixes_that_work(sim_launch):
    """A big-endian device array is refused naming the fix (it crashed inside Numba); the
    cast suggested for a device array goes through the host (Numba's have no astype)."""
    a, b = np.ones((2, 5, 3)), np.ones((2, 5, 3))
    with pytest.raises(
        TypeError,
        match=r"^linear_scan: device arrays must be in native byte order; got a\.dtype=>f8, "
        r"b\.dtype=>f8\. Copy them",
    ):
        parscan.linear_scan(cuda.to_device(a.astype(">f8")), cuda.to_device(b.astype(">f8")))
    with pytest.raises(
        TypeError,
        match=r"got a\.dtype=int32\. Use cuda\.to_device\(a\.copy_to_host\(\)\.astype\(np\."
        r"float64\)\)\.$",
    ):
        parscan.linear_scan(cuda.to_device(a.astype(np.int32)), cuda.to_device(b))


@pytest.mark.cudasim
def test_sim_empty_and_errors(sim_launch):
    a, b, _ = make_inputs(0, np.float64, False, (2,), 0, 3)
    assert parscan.linear_scan(cuda.to_device(a), cuda.to_device(b)).shape == (2, 0, 3)
    a, b, _ = make_inputs(0, np.float64, True, (), 4, 17)
    with pytest.raises(ValueError, match=r"^linear_scan: the cuda backend supports dense .*D=17"):
        parscan.linear_scan(a, b, backend="cuda")
    with pytest.raises(TypeError, match=r"^linear_scan: .*must all be device arrays"):
        parscan.linear_scan(cuda.to_device(a), b)
    with pytest.raises(ValueError, match=r"^linear_scan: device arrays need backend 'cuda'"):
        parscan.linear_scan(cuda.to_device(a), cuda.to_device(b), backend="cpu")
    a2, b2 = cuda.to_device(np.ones((4, 6))), cuda.to_device(np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"^linear_scan: `out` must be C-contiguous; got one "):
        parscan.linear_scan(b2, b2, out=a2[:, ::2])


def _strided_device_view(x, reverse_time: bool):
    """``x`` on the device as a view that is not C-contiguous: every other element of the
    last axis, and with ``reverse_time`` a negative stride over the time axis too. (Numba's
    device arrays take no ``...`` in an index: every axis is spelled out.)"""
    wide = np.zeros((*x.shape[:-1], 2 * x.shape[-1]), x.dtype)
    wide[..., ::2] = np.flip(x, -2) if reverse_time else x
    whole = (slice(None),) * (x.ndim - 2)
    view = cuda.to_device(wide)[(*whole, slice(None), slice(None, None, 2))]
    return view[(*whole, slice(None, None, -1), slice(None))] if reverse_time else view


def _check_strided_device_inputs(dense: bool, T: int) -> None:
    """Non-contiguous device inputs (copied once on the device) scan as their host values."""
    a, b, h0 = make_dyadic_inputs(5, np.float64, dense, (2,), T, 3)
    for reverse_time in (False, True):
        dev_a = _strided_device_view(a, reverse_time and not dense)
        dev_b = _strided_device_view(b, reverse_time)
        dev_h0 = cuda.to_device(np.stack([h0, h0], -1))[:, :, 0]
        assert not (dev_a.is_c_contiguous() or dev_b.is_c_contiguous())
        assert not dev_h0.is_c_contiguous()
        for reverse in (False, True):
            ref = scan_reference(a, b, h0, reverse=reverse, transpose=dense)
            out = parscan.linear_scan(dev_a, dev_b, dev_h0, reverse=reverse, transpose=dense)
            np.testing.assert_array_equal(out.copy_to_host(), ref)


@pytest.mark.cudasim
@pytest.mark.parametrize("dense", [False, True])
def test_sim_non_contiguous_device_inputs(sim_launch, monkeypatch, dense):
    """The kernels get C-contiguous copies (the simulator's reshape would copy silently where
    a GPU's refuses)."""
    scan_device = _cuda.scan_device

    def contiguous_only(a, b, h0, *args, **kwargs):
        assert all(x is None or x.is_c_contiguous() for x in (a, b, h0))
        return scan_device(a, b, h0, *args, **kwargs)

    monkeypatch.setattr(_cuda, "scan_device", contiguous_only)
    _check_strided_device_inputs(dense, 19)


# --------------------------------------------------------------------------- real GPU


class _Interface:
    """A foreign device array: only ``__cuda_array_interface__``."""

    def __init__(self, array):
        self._array = array
        self.__cuda_array_interface__ = array.__cuda_array_interface__


@pytest.mark.gpu
def test_gpu_foreign_out_is_returned_as_given():  # the simulator's arrays have no interface
    a, b, h0 = make_dyadic_inputs(3, np.float64, False, (2,), 9, 3)
    out = _Interface(cuda.device_array(b.shape, b.dtype))
    h = parscan.linear_scan(*(_Interface(cuda.to_device(x)) for x in (a, b, h0)), out=out)
    assert h is out
    ref = parscan.linear_scan(a, b, h0, backend="sequential")
    np.testing.assert_array_equal(out._array.copy_to_host(), ref)


@cuda.jit
def _fill_alternating(a, b):
    """``a_t = 1/2`` for odd ``t``, 0 for even; ``b_t = t mod 7`` (64-bit ``t``)."""
    for t in range(cuda.grid(1), a.shape[1], cuda.gridsize(1)):
        a[0, t, 0] = 0.5 if t % 2 else 0.0
        b[0, t, 0] = t % 7


@pytest.mark.gpu
def test_gpu_indices_beyond_2_to_the_31():
    """A float32 scan of 2**31 + 2**20 steps (8.6 GB per array, made on the device): every
    index past int32 range must be right. ``a_t = 0`` restarts the state at even ``t``, so
    ``h_t = b_t`` there and ``b_t + b_{t-1}/2`` (reverse: ``b_{t+1}/2``) at odd ``t``, exact."""
    T = 2**31 + 2**20
    if cuda.current_context().get_memory_info()[0] < 4 * 4 * T:
        pytest.skip("needs 35 GB of free device memory")
    a, b = (cuda.device_array((1, T, 1), np.float32) for _ in range(2))
    _fill_alternating[1024, 256](a, b)
    out = cuda.device_array_like(b)
    t = np.concatenate([np.arange(10), 2**31 + np.arange(-6, 6), T - 10 + np.arange(10)])
    for reverse in (False, True):
        parscan.linear_scan(a, b, reverse=reverse, out=out)
        got = np.array([out[0, i, 0] for i in t])  # element reads: no 8.6 GB copy
        np.testing.assert_array_equal(got, _alternating_states(t, T, reverse))


def _alternating_states(t, T, reverse):
    """``h_t`` of the scan of :func:`_fill_alternating`'s inputs (``h0 = 0``)."""
    neighbour = t + (1 if reverse else -1)  # the state an odd step carries: b of its neighbour
    carried = np.where((neighbour >= 0) & (neighbour < T), neighbour % 7, 0)
    return np.where(t % 2 == 1, t % 7 + 0.5 * carried, t % 7).astype(np.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("dense", [False, True])
def test_gpu_reverse_is_flipped_forward_and_adjoint(dense):
    _check_reverse_and_adjoint(dense, 20_001)


@pytest.mark.gpu
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # 0 * inf
@pytest.mark.parametrize("dense", [False, True])
def test_gpu_inf_crosses_underflowed_tiles(dense):
    """Runs of tiny ``a`` (1/15 of T each) longer than a production tile."""
    _check_inf_crosses_underflowed_runs(dense, 60_000, _cuda.LAUNCH)


@pytest.mark.gpu
@pytest.mark.parametrize("dense", [False, True])
def test_gpu_non_contiguous_device_inputs(dense):
    _check_strided_device_inputs(dense, 5_001)


@pytest.mark.gpu
@given(case=scan_cases(t_values=GPU_T, max_d=16))
def test_gpu_matches_reference(case):
    out, ref = run_case(case, "cuda")
    assert_close(out, ref)


@pytest.mark.gpu
@given(case=scan_cases(t_values=GPU_T, max_d=16))
def test_gpu_dyadic_bit_exact(case):
    out, ref = run_case(case, "cuda", make=make_dyadic_inputs)
    np.testing.assert_array_equal(out, ref)


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("dense", "B", "T", "D"),
    [
        (False, 1, 3_000_001, 1),
        (False, 3, 400_001, 16),
        (True, 2, 50_001, 16),
        (True, 1, 100_003, 3),
    ],
)
def test_gpu_long_sequences_match_sequential(dense, B, T, D):
    """Many tiles: exercises the look-back under real concurrency."""
    a, b, h0 = make_dyadic_inputs(7, np.float64, dense, (B,), T, D)
    for reverse in (False, True):
        ref = parscan.linear_scan(a, b, h0, reverse=reverse, transpose=dense, backend="sequential")
        out = parscan.linear_scan(
            *(_Interface(cuda.to_device(x)) for x in (a, b, h0)), reverse=reverse, transpose=dense
        )
        assert not isinstance(out, np.ndarray)
        np.testing.assert_array_equal(out.copy_to_host(), ref)
