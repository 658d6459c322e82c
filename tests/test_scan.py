"""linear_scan on the host backends ("sequential", "cpu", "auto") against the NumPy reference.

The input builders (:func:`make_inputs`, :func:`make_dyadic_inputs`) and the tolerance table are
reused by ``test_scan_cuda.py``.
"""

import importlib.abc
import importlib.util
import os
import re
import subprocess
import sys
import threading

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from reference import scan_reference

import parscan
from parscan import _scan_cpu, scan
from parscan._jit import n_threads, set_threads
from parscan._scan_sequential import diag_reduce_range, product_scale

HOST_BACKENDS = ("sequential", "cpu", "auto")
DTYPES = (np.float32, np.float64, np.complex64, np.complex128)

#: |out - ref| <= RTOL * |ref| + ATOL * (1 + max |ref|), per dtype (contractive ``a``, b ~ N(0, 1)).
TOLERANCES = {
    np.dtype(np.float32): (2e-5, 2e-6),
    np.dtype(np.complex64): (2e-5, 2e-6),
    np.dtype(np.float64): (1e-12, 1e-14),
    np.dtype(np.complex128): (1e-12, 1e-14),
}

#: Lengths around chunk and block boundaries (CUDA tests shrink blocks to 4-16 steps).
T_VALUES = (0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 100, 257)


def assert_close(out, ref):
    rtol, atol = TOLERANCES[np.dtype(ref.dtype)]
    scale = 1.0 + (np.abs(ref).max() if ref.size else 0.0)
    np.testing.assert_allclose(out, ref, rtol=rtol, atol=atol * scale)


def _random(rng, shape, dtype):
    x = rng.standard_normal(shape)
    if np.dtype(dtype).kind == "c":
        x = x + 1j * rng.standard_normal(shape)
    return x.astype(dtype)


def make_inputs(seed, dtype, dense, batch, T, D, with_h0=True):
    """Contractive random ``a`` (|a| <= 0.95, dense: spectral norm <= 0.9), b, h0 ~ N(0, 1)."""
    rng = np.random.default_rng(seed)
    complex_ = np.dtype(dtype).kind == "c"
    if dense:
        a = rng.standard_normal((*batch, T, D, D))
        if complex_:
            a = a + 1j * rng.standard_normal((*batch, T, D, D))
        if a.size:
            a *= 0.9 / np.maximum(np.linalg.norm(a, ord=2, axis=(-2, -1)), 1e-3)[..., None, None]
    else:
        a = rng.uniform(0.0, 0.95, (*batch, T, D))
        if complex_:
            a = a * np.exp(1j * rng.uniform(0, 2 * np.pi, a.shape))
        a *= rng.choice((-1.0, 1.0), a.shape)
    b = _random(rng, (*batch, T, D), dtype)
    h0 = _random(rng, (*batch, D), dtype) if with_h0 else None
    return a.astype(dtype), b, h0


def make_dyadic_inputs(seed, dtype, dense, batch, T, D, reset=7):
    """``a`` in {0, 1/2, 1} (zero every ``reset`` steps), small integer ``b`` and ``h0``.

    Every partial product and sum of any association order then fits the mantissa, so all
    backends must agree with the reference bit for bit. ``reset`` is odd so that the zeros do
    not line up with power-of-two chunks or tiles (a zero at every tile start would hide the
    carry between tiles).
    """
    rng = np.random.default_rng(seed)
    shape = (*batch, T, D, D) if dense else (*batch, T, D)
    a = rng.choice((0.0, 0.5, 1.0), shape)
    if dense:
        a *= rng.random(shape) < 1.0 / D  # about one nonzero per row keeps the products small
        a[..., ::reset, :, :] = 0.0
    else:
        a[..., ::reset, :] = 0.0
    b = rng.integers(-4, 5, (*batch, T, D)).astype(float)
    h0 = rng.integers(-4, 5, (*batch, D)).astype(float)
    if np.dtype(dtype).kind == "c":
        b = b + 1j * rng.integers(-4, 5, b.shape)
        a = a * rng.choice((1, 1j, -1j), a.shape)
    return a.astype(dtype), b.astype(dtype), h0.astype(dtype)


def make_non_finite_inputs(dtype, T):
    """``(1, T, 4)`` diagonal inputs whose infinities cross two runs of tiny ``a`` (factors of
    ``sqrt(tiny)``, at least 3 steps: the run's product underflows to 0, also in every
    chunk's scaled product), ``a`` of random sign elsewhere. Channels: 0: ``h0 = inf``;
    1: ``h0 = -inf`` and an ``a`` of exactly 0 in the second run (NaN from there, 0 * inf);
    2: ``b = inf`` near the start and ``-inf`` near the end; 3: a huge finite ``h0``."""
    rng = np.random.default_rng(T)
    a = rng.uniform(0.3, 0.95, (1, T, 4)) * rng.choice((-1.0, 1.0), (1, T, 4))
    run = max(3, T // 15)
    lo1, lo2 = int(0.3 * T), int(0.63 * T)
    a[0, lo1 : lo1 + run] *= np.sqrt(np.finfo(dtype).tiny)
    a[0, lo2 : lo2 + run] *= np.sqrt(np.finfo(dtype).tiny)
    a[0, lo2 + 1, 1] = 0.0
    b = rng.standard_normal((1, T, 4))
    b[0, int(0.1 * T), 2] = np.inf
    b[0, int(0.9 * T), 2] = -np.inf
    h0 = np.array([[np.inf, -np.inf, 1.0, float(np.finfo(dtype).max) / 4]])
    return a.astype(dtype), b.astype(dtype), h0.astype(dtype)


def assert_same_non_finite(got, expected, rtol):
    """NaN, +inf and -inf in the same places; the finite values close."""
    for pick in (np.isnan, np.isposinf, np.isneginf):
        np.testing.assert_array_equal(pick(got), pick(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(got[finite], expected[finite], rtol=rtol, atol=rtol)


def reference_non_finite(a, b, h0, reverse=False, transpose=False):
    """:func:`scan_reference` without NumPy's warnings about ``0 * inf``."""
    with np.errstate(invalid="ignore"):
        return scan_reference(a, b, h0, reverse, transpose)


@st.composite
def scan_cases(draw, t_values=T_VALUES, max_d=5, dtypes=DTYPES):
    """(seed, dtype, dense, batch, T, D, reverse, transpose, with_h0)."""
    return dict(
        seed=draw(st.integers(0, 2**32 - 1)),
        dtype=draw(st.sampled_from(dtypes)),
        dense=draw(st.booleans()),
        batch=draw(st.sampled_from(((), (1,), (3,), (2, 3), (4, 1)))),
        T=draw(st.sampled_from(t_values)),
        D=draw(st.integers(1, max_d)),
        reverse=draw(st.booleans()),
        transpose=draw(st.booleans()),
        with_h0=draw(st.booleans()),
    )


def run_case(case, backend, make=make_inputs, convert=None):
    """Scan one drawn case on ``backend``; returns (out, reference)."""
    a, b, h0 = make(case["seed"], case["dtype"], case["dense"], case["batch"], case["T"], case["D"])
    if make is make_inputs and not case["with_h0"]:
        h0 = None
    ref = scan_reference(a, b, h0, case["reverse"], case["transpose"])
    args = (
        (a, b, h0)
        if convert is None
        else tuple(None if x is None else convert(x) for x in (a, b, h0))
    )
    out = parscan.linear_scan(
        *args, reverse=case["reverse"], transpose=case["transpose"], backend=backend
    )
    return out, ref


# --------------------------------------------------------------------------- correctness


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@given(case=scan_cases())
def test_matches_reference(backend, case):
    out, ref = run_case(case, backend)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert out.flags.c_contiguous
    assert_close(out, ref)


def _awkward(x):
    """A copy of ``x`` the kernels cannot read as it is, chosen by its size: strided,
    misaligned (one byte off), or in the other byte order."""
    kind = x.size % 3
    if kind == 0:
        return np.repeat(x, 2, axis=-1)[..., ::2]
    if kind == 1:
        raw = np.zeros(x.nbytes + 1, np.uint8)[1:].view(x.dtype).reshape(x.shape)
        raw[...] = x
        return raw
    return x.astype(x.dtype.newbyteorder())


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@given(case=scan_cases())
def test_matches_reference_on_awkward_layouts(backend, case):
    """Every drawn case (diagonal and dense, all dtypes, reverse, transpose, with and without
    h0) with inputs that are strided, misaligned or byte-swapped: copied once, same result."""
    out, ref = run_case(case, backend, convert=_awkward)
    assert out.shape == ref.shape and out.flags.c_contiguous and out.dtype.isnative
    assert_close(out, ref)


@given(
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from(DTYPES),
    dense=st.booleans(),
    reverse=st.booleans(),
    T=st.sampled_from([1, 5, 40, 3000]),
)
def test_non_finite_values_propagate_as_in_the_loop(seed, dtype, dense, reverse, T):
    """NaN, +-inf and exact zeros at random places of a, b and h0 (real and complex): each
    backend gives NaN and +-inf in each part where the loop does, and the loop's finite
    values elsewhere."""
    rng = np.random.default_rng(seed)
    T, D = (min(T, 40), 2) if dense else (T, 2)
    a = rng.uniform(-0.95, 0.95, (1, T, D, D) if dense else (1, T, D)).astype(dtype)
    b, h0 = (rng.standard_normal(shape).astype(dtype) for shape in ((1, T, D), (1, D)))
    for _ in range(3):
        x = (a, b, h0)[rng.integers(3)]
        x[tuple(rng.integers(n) for n in x.shape)] = rng.choice([np.nan, np.inf, -np.inf, 0.0])
    with np.errstate(all="ignore"):
        ref = scan_reference(a, b, h0, reverse)
        outs = [parscan.linear_scan(a, b, h0, reverse=reverse, backend=be) for be in HOST_BACKENDS]
    finite = np.isfinite(ref)
    for out in outs:
        for part in (np.real, np.imag):
            for pick in (np.isnan, np.isposinf, np.isneginf):
                np.testing.assert_array_equal(pick(part(out)), pick(part(ref)))
        np.testing.assert_allclose(out[finite], ref[finite], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@given(case=scan_cases())
def test_dyadic_bit_exact(backend, case):
    out, ref = run_case(case, backend, make=make_dyadic_inputs)
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("n_chunks", [2, 3, 4, 7])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("B", [1, 3])
def test_reduce_then_scan_any_chunk_count(n_chunks, reverse, B):
    """The time-chunked kernel is exact for any chunk count, not only threads + 1."""
    for T in (1, n_chunks, n_chunks + 1, 50):
        a, b, h0 = make_dyadic_inputs(T, np.float64, False, (B,), T, 3)
        out = np.empty_like(b)
        agg = np.empty((B, n_chunks - 1, 3))
        exp = np.empty_like(agg)
        _scan_cpu._diag_chunked(a, b, h0, reverse, n_chunks, agg, exp, agg.copy(), out)
        np.testing.assert_array_equal(out, scan_reference(a, b, h0, reverse))


def _scan_then_fix(a, b, h0, reverse, n_chunks):
    out = np.empty_like(b)
    work = np.empty((b.shape[0], n_chunks, b.shape[2]), b.dtype)
    exp = np.empty(work.shape, np.finfo(b.dtype).dtype)
    _scan_cpu._diag_scan_then_fix(a, b, h0, reverse, n_chunks, work, exp, work.copy(), out)
    return out


@pytest.mark.parametrize("n_chunks", [2, 3, 4, 7])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("B", [1, 3])
def test_scan_then_fix_any_chunk_count(n_chunks, reverse, B):
    """Exact on dyadic data for any chunk count (empty chunks included); to rounding when the
    carry dies out early (contractive ``a``) and when it never does (``|a| = 1``: the fix
    then runs through every chunk and the products through every middle chunk)."""
    for T in (1, n_chunks, n_chunks + 1, 50):
        a, b, h0 = make_dyadic_inputs(T, np.float64, False, (B,), T, 3)
        got = _scan_then_fix(a, b, h0, reverse, n_chunks)
        np.testing.assert_array_equal(got, scan_reference(a, b, h0, reverse))
    rng = np.random.default_rng(n_chunks)
    for dtype, low in ((np.float64, 0.0), (np.complex128, 0.0), (np.float32, 1.0)):
        a = rng.uniform(low, 0.95 if low == 0 else 1.0, (B, 3000, 3)).astype(dtype)
        a *= rng.choice((-1, 1), a.shape).astype(dtype)
        b = rng.standard_normal(a.shape).astype(dtype)
        h0 = rng.standard_normal((B, 3)).astype(dtype)
        got = _scan_then_fix(a, b, h0, reverse, n_chunks)
        expected = scan_reference(a, b, h0, reverse)
        tol = 1e-12 if dtype != np.float32 else 2e-4
        np.testing.assert_allclose(got, expected, rtol=tol, atol=tol * np.abs(expected).max())


def test_scan_then_fix_huge_carry_and_non_finite_values():
    """The carried part is flushed below the smallest normal number in absolute terms, so a
    huge carry is followed as far as it matters; NaN and inf reach the same places as in
    the sequential loop."""
    rng = np.random.default_rng(5)
    T, D = 4000, 4
    a = rng.uniform(-0.9, 0.9, (1, T, D))
    b = rng.standard_normal((1, T, D))
    h0 = np.full((1, D), 1e300)
    np.testing.assert_allclose(
        _scan_then_fix(a, b, h0, False, 2), scan_reference(a, b, h0), rtol=1e-12, atol=1e-12
    )
    h0 = np.array([[np.inf, -np.inf, np.nan, 1.0]])
    a[0, 100, 3] = np.nan  # in chunk 0
    a[0, 2000, 1] = 0.0  # the first step of chunk 1: -inf * 0
    b[0, 2500, 0] = np.inf
    for reverse in (False, True):
        got = _scan_then_fix(a, b, h0, reverse, 2)
        expected = parscan.linear_scan(a, b, h0, reverse=reverse, backend="sequential")
        assert_same_non_finite(got, expected, 1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("plan", [("reduce", 4), ("fix", 3), ("fix", 4)])
def test_time_chunks_carry_inf_through_an_underflowed_product(dtype, plan):
    """A chunk's scaled product that underflowed is 0 (as is one with a step of ``a = 0``):
    an infinite carry crossing it must still come out as the sequential loop gives it (±inf
    through tiny steps, NaN after a zero), not as 0 * inf = NaN. The runs of tiny ``a`` lie
    in middle chunks in both scan orders."""
    a, b, h0 = make_non_finite_inputs(dtype, 3000)
    for reverse in (False, True):
        expected = reference_non_finite(a, b, h0, reverse)
        assert np.isinf(expected[0, :, 0]).all() and np.isnan(expected[0, :, 1]).any()
        got = np.empty_like(b)
        _scan_cpu.scan_diag(a, b, h0, reverse, got, plan)
        assert_same_non_finite(got, expected, 1e-4 if dtype == np.float32 else 1e-12)


def test_auto_carries_inf_through_an_underflowed_chunk():
    T, D = 9000, 16
    a = np.full((T, D), 0.5)
    a[4500:5700] = 0.99999
    a[3000:3400] = 1e-10
    b, h0 = np.ones((T, D)), np.full(D, np.inf)
    for reverse in (False, True):
        got = parscan.linear_scan(a, b, h0, reverse=reverse)
        np.testing.assert_array_equal(got, reference_non_finite(a, b, h0, reverse))


def test_time_plan_takes_scan_then_fix_only_when_the_carry_dies_out():
    rng = np.random.default_rng(6)
    contractive = rng.uniform(-0.95, 0.95, (1, 100_000, 4))
    assert _scan_cpu.time_plan(contractive, False, 2) == ("fix", 2)
    assert _scan_cpu.time_plan(contractive, True, 2) == ("fix", 2)
    assert _scan_cpu.time_plan(contractive[:, :20_000], False, 2) == ("fix", 2)
    assert _scan_cpu.time_plan(contractive[:, :200], False, 2) == ("reduce", 3)  # probe: 25
    assert _scan_cpu.time_plan(np.repeat(contractive, 3, axis=0), False, 4) == ("fix", 2)
    assert _scan_cpu.time_plan(contractive, False, 16) == ("fix", 16)
    slow = contractive.copy()
    slow[..., 2] = 0.9999  # one channel keeps its carry: a full fix would cost a second pass
    assert _scan_cpu.time_plan(slow, False, 2) == ("reduce", 3)
    ends = contractive.copy()
    ends[0, 35_000:50_000, :] = 1.0  # chunk 1 in reverse order starts with 15,000 steps of 1
    assert _scan_cpu.time_plan(ends, False, 2) == ("fix", 2)
    assert _scan_cpu.time_plan(ends, True, 2) == ("reduce", 3)
    assert _scan_cpu.time_plan(contractive[:, :4], False, 2) == ("batch", 1)
    assert _scan_cpu.time_plan(np.repeat(contractive, 2, axis=0), False, 2) == ("batch", 1)
    for reverse in (False, True):
        got = parscan.linear_scan(ends, ends, reverse=reverse, backend="cpu")
        expected = parscan.linear_scan(ends, ends, reverse=reverse, backend="sequential")
        np.testing.assert_allclose(got, expected, rtol=1e-12)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@given(case=scan_cases(dtypes=(np.float64,)))
def test_reverse_is_flipped_forward(backend, case):
    a, b, h0 = make_inputs(
        case["seed"], np.float64, case["dense"], case["batch"], case["T"], case["D"]
    )
    kw = dict(transpose=case["transpose"], backend=backend)
    rev = parscan.linear_scan(a, b, h0, reverse=True, **kw)
    fwd = parscan.linear_scan(np.flip(a, b.ndim - 2), np.flip(b, -2), h0, **kw)
    np.testing.assert_array_equal(rev, np.flip(fwd, -2))


def adjoint_shift(a, dense):
    """Transition of the adjoint scan: ``a_adj[t] = a[t+1]`` (t < T-1), ``a_adj[T-1] = 0``.

    The forward map ``L: (u, h0) -> h``, ``h_t = a_t h_{t-1} + u_t``, is ``h = (I - S)^{-1}(u +
    e_0 a_0 h0)`` with the shift ``(S h)_t = a_t h_{t-1}``. Its adjoint under the bilinear pairing
    ``<x, y> = sum x * y`` is ``g = (I - S^T)^{-1} v`` with ``(S^T g)_t = a_{t+1}^T g_{t+1}``: a
    *reverse* scan of ``v`` with ``transpose=True`` whose step-t matrix is ``a[t+1]`` (the last
    one multiplies ``g_T = 0``, so any value works; we use 0), plus ``a_0^T g_0`` for ``h0``.
    For the reverse scan the roles swap: a forward scan with ``a_adj[t] = a[t-1]``.
    """
    taxis = a.ndim - 3 if dense else a.ndim - 2
    shifted = np.zeros_like(a)
    src = [slice(None)] * a.ndim
    dst = [slice(None)] * a.ndim
    src[taxis], dst[taxis] = slice(1, None), slice(None, -1)
    shifted[tuple(dst)] = a[tuple(src)]
    return shifted


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@given(case=scan_cases(t_values=(1, 2, 5, 33), dtypes=(np.float64, np.complex128)))
def test_adjoint_identity(backend, case):
    """<L(u, h0), v> = <u, g> + <h0, a_0^T g_0>, with g the transposed, shifted reverse scan."""
    dense, reverse = case["dense"], case["reverse"]
    a, u, h0 = make_inputs(case["seed"], case["dtype"], dense, case["batch"], case["T"], case["D"])
    v = make_inputs(case["seed"] + 1, case["dtype"], dense, case["batch"], case["T"], case["D"])[1]
    h = parscan.linear_scan(a, u, h0, reverse=reverse, backend=backend)
    if reverse:  # adjoint of a reverse scan: forward scan with a_adj[t] = a[t-1]
        a_adj = np.flip(
            adjoint_shift(np.flip(a, a.ndim - 3 if dense else a.ndim - 2), dense),
            a.ndim - 3 if dense else a.ndim - 2,
        )
    else:
        a_adj = adjoint_shift(a, dense)
    g = parscan.linear_scan(a_adj, v, reverse=not reverse, transpose=True, backend=backend)
    first = -1 if reverse else 0  # the step that sees h0
    g_first = g[..., first, :]
    a_first = a[..., first, :, :] if dense else a[..., first, :]
    h0_term = np.einsum("...ji,...j->...i", a_first, g_first) if dense else a_first * g_first
    lhs = np.sum(h * v)
    rhs = np.sum(u * g) + np.sum(h0 * h0_term)
    assert abs(lhs - rhs) <= 1e-10 * (1 + np.sum(np.abs(h * v)))


@given(case=scan_cases(t_values=(1, 2, 3, 8), dtypes=(np.float64, np.complex128)))
def test_combine_associative_and_folds_to_scan(case):
    a, b, h0 = make_dyadic_inputs(
        case["seed"], case["dtype"], case["dense"], (), case["T"] + 2, case["D"]
    )
    p = [(a[t], b[t]) for t in range(a.shape[0])]
    left = parscan.combine(parscan.combine(p[2], p[1]), p[0])
    right = parscan.combine(p[2], parscan.combine(p[1], p[0]))
    for x, y in zip(left, right, strict=True):
        np.testing.assert_array_equal(x, y)
    # Folding the pairs (later • earlier) and applying them to h0 gives every h_t.
    ref = scan_reference(a, b, h0)
    acc = p[0]
    for t in range(a.shape[0]):
        if t:
            acc = parscan.combine(p[t], acc)
        A, c = acc
        h_t = (A @ h0 if case["dense"] else A * h0) + c
        np.testing.assert_array_equal(h_t, ref[t])


def test_combine_batched_dense():
    rng = np.random.default_rng(0)
    A2, A1 = rng.standard_normal((2, 5, 3, 3))
    b2, b1 = rng.standard_normal((2, 5, 3))
    A, c = parscan.combine((A2, b2), (A1, b1))
    np.testing.assert_allclose(A, np.einsum("nij,njk->nik", A2, A1))
    np.testing.assert_allclose(c, np.einsum("nij,nj->ni", A2, b1) + b2)


# --------------------------------------------------------------------------- edge inputs


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("dense", [False, True])
def test_empty_shapes(backend, dense):
    for batch, T in (((2,), 0), ((0,), 5), ((), 0)):
        a, b, h0 = make_inputs(0, np.float64, dense, batch, T, 3)
        out = parscan.linear_scan(a, b, h0, backend=backend)
        assert out.shape == b.shape and out.dtype == b.dtype


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_strided_unaligned_big_endian_inputs_untouched(backend):
    a, b, h0 = make_inputs(1, np.float64, True, (3,), 40, 4)
    ref = scan_reference(a, b, h0, False, True)
    a_strided = np.repeat(a, 2, axis=1)[:, ::2]  # non-contiguous view
    raw = np.zeros(b.nbytes + 1, np.uint8)
    b_unaligned = raw[1:].view(np.float64).reshape(b.shape)  # misaligned buffer
    b_unaligned[...] = b
    assert not b_unaligned.flags.aligned
    h0_be = h0.astype(">f8")
    before = [x.copy() for x in (a_strided, b_unaligned, h0_be)]
    out = parscan.linear_scan(a_strided, b_unaligned, h0_be, transpose=True, backend=backend)
    assert_close(out, ref)
    for x, y in zip(before, (a_strided, b_unaligned, h0_be), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("plan", [None, ("batch", 1), ("reduce", 3), ("fix", 2)])
def test_read_only_inputs_on_every_plan(plan):
    """Read-only views (e.g. ``np.broadcast_to``) are valid input to every kernel."""
    a, b, h0 = make_inputs(3, np.float64, False, (1,), 5000, 4)
    a = 0.5 + 0.4 * np.tanh(a)  # contractive, so the scan-then-fix probe succeeds
    ref = scan_reference(a, b, h0, False)
    for x in (a, b, h0):
        x.setflags(write=False)
    if plan is None:
        for backend in HOST_BACKENDS:
            assert_close(parscan.linear_scan(a, b, h0, backend=backend), ref)
        dense, _, _ = make_inputs(3, np.float64, True, (1,), 50, 4)
        dense.setflags(write=False)
        ref_dense = scan_reference(dense, b[:, :50], h0, False)
        for backend in HOST_BACKENDS:
            assert_close(parscan.linear_scan(dense, b[:, :50], h0, backend=backend), ref_dense)
        return
    out = np.empty_like(b)
    _scan_cpu.scan_diag(a, b, h0, False, out, plan)
    assert_close(out, ref)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_nan_and_inf_propagate(backend):
    a, b, h0 = make_inputs(2, np.float64, False, (3,), 64, 2)
    a = np.abs(a) + 0.01  # never zero, so a NaN reaches every later step
    b[0, 10, 0] = np.nan
    b[1, 20, 1] = np.inf
    out = parscan.linear_scan(a, b, h0, backend=backend)
    assert np.isnan(out[0, 10:, 0]).all() and np.isfinite(out[0, :10, 0]).all()
    assert np.isposinf(out[1, 20:, 1]).all() and np.isfinite(out[1, :20, 1]).all()
    assert np.isfinite(out[2]).all()
    assert np.isfinite(out[0, :, 1]).all() and np.isfinite(out[1, :, 0]).all()


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("dense", [False, True])
def test_out_and_in_place(backend, dense):
    a, b, h0 = make_inputs(3, np.float64, dense, (3,), 50, 3)
    expected = parscan.linear_scan(a, b, h0, backend=backend)
    out = np.empty_like(b)
    assert parscan.linear_scan(a, b, h0, backend=backend, out=out) is out
    np.testing.assert_array_equal(out, expected)
    assert parscan.linear_scan(a, b, h0, backend=backend, out=b) is b
    np.testing.assert_array_equal(b, expected)


@pytest.mark.parametrize("plan", [("reduce", 3), ("fix", 2)])
def test_in_place_time_chunked_scan_of_non_finite_values_is_the_loops(plan):
    """A chunk whose state is not finite is walked again from b, which an in-place scan has
    already overwritten: every channel came out wrong (13 instead of 7), finite ones too."""
    from parscan import _scan_cpu

    T = 9
    a, b = np.ones((1, T, 2)), np.zeros((1, T, 2))
    b[0, :, 0] = 1.0
    b[0, 1, 1] = b[0, 4, 1] = -1e308  # channel 1 overflows to -inf at t = 4
    b[0, 5, 1] = 1e308
    with np.errstate(over="ignore", invalid="ignore"):
        expected = scan_reference(a, b)
    h0 = np.zeros((1, 2))
    _scan_cpu.scan_diag(a, b, h0, False, b, plan)
    np.testing.assert_array_equal(b, expected)


def test_out_errors():
    a, b, h0 = make_inputs(3, np.float64, False, (2,), 10, 3)
    with pytest.raises(ValueError, match=r"^linear_scan: `out` must have b's shape \(2, 10, 3\)"):
        parscan.linear_scan(a, b, out=np.empty((2, 10, 4)))
    with pytest.raises(
        TypeError,
        match=r"^linear_scan: `out` must have b's dtype float64; got out\.dtype=float32\. "
        r"Allocate it like `b`, e\.g\. with np\.empty_like\(b\)\.$",
    ):
        parscan.linear_scan(a, b, out=np.empty(b.shape, np.float32))
    with pytest.raises(ValueError, match=r"`out` must be C-contiguous.*; got one that is not C-c"):
        parscan.linear_scan(a, b, out=np.empty((2, 10, 6))[..., ::2])
    # which requirement failed, and the fix (the message listed all four, whichever it was)
    read_only = np.broadcast_to(np.empty(3), b.shape)
    message = r"got one that is not C-contiguous and not writeable\. Allocate it with np\.empty_l"
    with pytest.raises(ValueError, match=message):
        parscan.linear_scan(a, b, out=read_only)
    with pytest.raises(ValueError, match=r"must not overlap `a`, `h0` or part of `b`"):
        parscan.linear_scan(a, b, h0, out=a)
    with pytest.raises(ValueError, match=r"must not overlap"):
        parscan.linear_scan(a[:, 1:], b[:, :-1], out=b[:, 1:])


def test_lists_and_transpose_ignored_for_diagonal():
    out = parscan.linear_scan([[0.5], [0.5]], [[1.0], [1.0]], transpose=True)
    np.testing.assert_array_equal(out, [[1.0], [1.5]])


def test_auto_never_picks_threads_for_short_or_unbatched_dense(monkeypatch):
    monkeypatch.setattr(scan, "n_threads", lambda: 2)
    assert scan._choose_host_backend(True, 1, 10**6, 16, 8) == "sequential"
    assert scan._choose_host_backend(True, 8, 10**4, 16, 8) == "cpu"
    assert scan._choose_host_backend(False, 1, 10, 16, 8) == "sequential"
    assert scan._choose_host_backend(False, 1, 10**6, 16, 8) == "cpu"
    assert scan._choose_host_backend(False, 8, 10**5, 16, 8) == "cpu"
    # a batch of small D: from 2048 time steps in all, whatever the bytes
    assert scan._choose_host_backend(False, 8, 256, 1, 8) == "cpu"
    assert scan._choose_host_backend(False, 8, 255, 1, 8) == "sequential"
    assert scan._choose_host_backend(False, 2, 1024, 4, 4) == "cpu"
    # the thresholds are in bytes: the same elements in float32 stay sequential
    assert scan._choose_host_backend(False, 1, 10**4, 16, 8) == "cpu"
    assert scan._choose_host_backend(False, 1, 10**4, 16, 4) == "sequential"
    # from 512 KiB when the carry dies out (scan-then-fix), from 1 MiB otherwise
    a = np.random.default_rng(0).uniform(-0.95, 0.95, (1, 10**4, 16)).astype(np.float32)
    assert scan._choose_host_backend(False, 1, 10**4, 16, 4, a) == "cpu"
    assert scan._choose_host_backend(False, 1, 10**4, 16, 4, np.ones_like(a)) == "sequential"
    assert scan._choose_host_backend(False, 1, 6000, 16, 4, a[:, :6000]) == "sequential"
    monkeypatch.setattr(scan, "n_threads", lambda: 1)
    assert scan._choose_host_backend(False, 8, 10**6, 16, 8) == "sequential"


def test_thread_count_follows_numba_in_every_python_thread():
    saved = numba.get_num_threads()
    try:
        set_threads(1)
        assert n_threads() == numba.get_num_threads() == 1
        set_threads(saved)
        assert n_threads() == saved
        seen = []
        worker = threading.Thread(
            target=lambda: (numba.set_num_threads(1), seen.append(n_threads()))
        )
        worker.start()
        worker.join()
        assert seen == [1] and n_threads() == saved  # the setting is per Python thread
    finally:
        numba.set_num_threads(saved)


_THREADS_IN_A_WORKER = """
import threading
{first}
from parscan._jit import n_threads
import numba
seen = []
worker = threading.Thread(target=lambda: seen.append(n_threads()))
worker.start()
worker.join()
print(n_threads(), seen[0], numba.config.NUMBA_NUM_THREADS)
"""


@pytest.mark.parametrize(
    "first, expected, warned",
    [
        ("import parscan", "1 1 1", False),  # the pool is sized before Numba reads its config
        ("import numba", "1 2 2", True),  # too late: only the importing thread is limited
    ],
)
def test_parscan_threads_limits_every_python_thread_or_says_it_cannot(first, expected, warned):
    env = {**os.environ, "PARSCAN_THREADS": "1", "NUMBA_NUM_THREADS": "2"}
    code = _THREADS_IN_A_WORKER.format(first=first)
    done = subprocess.run(
        [sys.executable, "-W", "always", "-c", code], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == expected.split()
    assert ("RuntimeWarning: PARSCAN_THREADS=1 limits only the Python thread" in done.stderr) == (
        warned
    ), done.stderr


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.complex128])
def test_chunk_aggregates_keep_scaled_products(dtype):
    # A product of thousands of contractive factors is far below the smallest normal
    # number: it is kept as p * 2**(-k*e) (never subnormal, never flushed while a finite
    # carry could still feel it), NaN is kept, and only a product below every finite
    # carry's reach becomes 0.
    rng = np.random.default_rng(4)
    T, D = 4000, 3
    a = rng.uniform(0.5, 0.9, (T, D)).astype(dtype)
    b = rng.standard_normal((T, D)).astype(dtype)
    a[:, 2] = np.nan
    a_agg, b_agg = np.empty(D, dtype), np.empty(D, dtype)
    a_exp = np.empty(D, np.finfo(dtype).dtype)
    k, e_max = product_scale(a_agg)
    diag_reduce_range(a, b, 0, 300, False, a_agg, a_exp, b_agg)
    log2_true = np.sum(np.log2(np.abs(a[:300, :2])), axis=0)
    log2_kept = np.log2(np.abs(a_agg[:2])) - k * a_exp[:2]
    assert np.all(a_exp[:2] > 0) and np.all(np.abs(a_agg[:2]) * 2.0**k >= 1)
    np.testing.assert_allclose(log2_kept, log2_true, rtol=1e-4)
    assert np.isnan(a_agg[2])
    diag_reduce_range(a, b, 0, T, False, a_agg, a_exp, b_agg)
    assert np.all(a_agg[:2] == 0) and np.all(a_exp[:2] == e_max)
    # growing factors: the product shrinks by 2**k, e falls below 0, never inf
    growing = rng.uniform(1.1, 2.0, (T, D)).astype(dtype)
    diag_reduce_range(growing, b, 0, T, False, a_agg, a_exp, b_agg)
    log2_kept = np.log2(np.abs(a_agg[:2])) - k * a_exp[:2]
    np.testing.assert_allclose(log2_kept, np.sum(np.log2(growing[:, :2]), axis=0), rtol=1e-4)
    assert np.all(a_exp[:2] < -e_max) and np.all(np.abs(a_agg[:2]) <= 2.0**k)


def _time_chunks(plan, a, b, h0, n_chunks):
    """The forward scan of ``(1, T, D)`` inputs by a time-chunked plan (``"reduce"``:
    reduce-then-scan, ``"fix"``: scan-then-fix) over ``n_chunks`` chunks."""
    shape = (1, n_chunks, b.shape[2])
    work, exp = np.empty(shape, b.dtype), np.empty(shape, np.finfo(b.dtype).dtype)
    out = np.empty_like(b)
    kernel = _scan_cpu._diag_chunked if plan == "reduce" else _scan_cpu._diag_scan_then_fix
    kernel(a, b, h0, False, n_chunks, work, exp, work.copy(), out)
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("plan", ["reduce", "fix"])
def test_time_chunks_keep_a_huge_carry_through_a_tiny_product(dtype, plan):
    # A carry of 1e30 (float32) / 1e300 (float64) through a chunk whose product is below the
    # smallest normal number still contributes a normal number at the end of the chunk.
    T, n_chunks = 3000, 3
    huge = 1e30 if dtype == np.float32 else 1e300
    steps = 200 if dtype == np.float32 else 1100
    a = np.ones((1, T, 2), dtype)
    a[0, 1100 : 1100 + steps] = 0.5
    b = np.zeros((1, T, 2), dtype)
    b[0, 2500:, 1] = 1e-33 if dtype == np.float32 else 1e-303
    h0 = np.full((1, 2), huge, dtype)
    out = _time_chunks(plan, a, b, h0, n_chunks)
    expected = scan_reference(a, b, h0, False)
    assert np.all(expected[0, -1] > 0)
    # (the reference rounds at every one of the 500 additions of b; the chunks sum b first)
    np.testing.assert_allclose(out, expected, rtol=1e-4 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.complex128])
@pytest.mark.parametrize("plan", ["reduce", "fix"])
def test_time_chunks_keep_a_zero_or_tiny_carry_through_a_huge_product(dtype, plan):
    # A chunk's product of growing steps far beyond the largest finite number is kept scaled
    # too: a carry of exactly 0 contributes 0 (not inf * 0 = NaN) and a tiny carry the
    # normal number the sequential loop reaches (not inf).
    T, n_chunks = 3000, 3
    wide = np.finfo(dtype).dtype == np.float64
    a = np.full((1, T, 2), 1.5, dtype)
    b = np.zeros((1, T, 2), dtype)
    b[0, -1, 0] = 1.0
    h0 = np.array([[0.0, 1e-300 if wide else 1e-37]], dtype)
    a[0, 1750 if wide else 215 :, 1] = 1.0  # the second channel stops growing: a normal state
    out = _time_chunks(plan, a, b, h0, n_chunks)
    expected = scan_reference(a, b, h0, False)
    assert np.all(np.isfinite(expected)) and expected[0, -1, 0] == 1.0
    assert abs(expected[0, -1, 1]) > 1.0
    np.testing.assert_allclose(out, expected, rtol=1e-4 if not wide else 1e-11)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.complex128])
@pytest.mark.parametrize("plan", ["reduce", "fix"])
def test_time_chunks_walk_a_finite_carry_through_an_overflowed_product(dtype, plan):
    # Steps beyond 2**k outgrow the scale kept (one rescale per step): the product becomes
    # inf, which cannot carry a zero carry (inf * 0) nor a tiny one to its finite end; the
    # chunk is walked instead, as the sequential loop steps.
    T, n_chunks = 3000, 3
    wide = np.finfo(dtype).dtype == np.float64
    a = np.ones((1, T, 2), dtype)
    a[0, :, 0] = 1e30 if wide else 1e10  # every step: the zero state stays 0
    a[0, 1400 : 1420 if wide else 1403, 1] = 1e30 if wide else 1e20
    b = np.zeros((1, T, 2), dtype)
    h0 = np.array([[0.0, 1e-300 if wide else 1e-38]], dtype)
    out = _time_chunks(plan, a, b, h0, n_chunks)
    expected = scan_reference(a, b, h0, False)
    assert np.all(expected[0, :, 0] == 0) and np.all(np.isfinite(expected))
    assert abs(expected[0, -1, 1]) > 1.0
    np.testing.assert_allclose(out, expected, rtol=1e-5 if not wide else 1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex128])
def test_scan_then_fix_keeps_carries_of_values_near_the_smallest_normal(dtype):
    # The carried part is dropped only once it is negligible against the state itself, not
    # below an absolute threshold: a signal living near the smallest normal number keeps it.
    tiny = float(np.finfo(dtype).tiny)
    T = 4000
    a = np.full((1, T, 2), 0.9, dtype)
    b = np.full((1, T, 2), 0.1 * tiny, dtype)
    b[0, :, 1] = 100 * tiny
    got = _scan_then_fix(a, b, np.zeros((1, 2), dtype), False, 2)
    expected = scan_reference(a, b, np.zeros((1, 2), dtype), False)
    np.testing.assert_allclose(got, expected, rtol=1e-5 if dtype == np.float32 else 1e-12)


def _overflow_case(name, dtype):
    """``(a, b, h0)`` of shape ``(1, 12, 2)``, forward order, where a chunk's combination
    (product and offset, or local scan plus carried part) over the chunks ``[0, 4), [4, 8),
    [8, 12)`` overflows differently from the sequential loop."""
    big = float(np.finfo(dtype).max)
    a, b, h0 = np.ones((1, 12, 2)), np.zeros((1, 12, 2)), np.zeros((1, 2))
    if name == "inf-carry-meets-offset-overflowed-to-minus-inf":  # the loop stays +inf
        b[0, 4:6] = -big
        h0[:] = np.inf
    elif name == "loop-overflows-in-a-chunk-whose-product-comes-back":
        a[0, 4] = 8.0
        a[0, 5, 0] = 0.125  # the product comes back to 1: the loop stays inf
        a[0, 6, 1] = 0.0  # the product is 0: the loop is NaN from there
        h0[:] = big / 4
    elif name == "fixed-sum-overflows-and-comes-back":
        b[0, 3:5] = -big  # the loop: -inf from step 4 on
        a[0, 5] = 0.5  # scan-then-fix: -big/2 + -big/2 at step 5, finite
    elif name == "a-minus-inf-meets-parts-of-opposite-signs":
        b[0, 4] = -0.5  # local part -0.5, carried part 1 at step 4
        a[0, 5] = -np.inf  # scan-then-fix: inf - inf where the loop gives -inf
        h0[:] = 1.0
    return a.astype(dtype), b.astype(dtype), h0.astype(dtype)


@pytest.mark.parametrize(
    ("plan", "case"),
    [
        (plan, case)
        for plan in ("reduce", "fix")
        for case in (
            "inf-carry-meets-offset-overflowed-to-minus-inf",
            "loop-overflows-in-a-chunk-whose-product-comes-back",
            "fixed-sum-overflows-and-comes-back",
            "a-minus-inf-meets-parts-of-opposite-signs",
        )
        if plan == "fix" or not case.startswith("a-minus-inf")  # reduce: the loop per chunk
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_time_chunks_follow_the_loop_through_overflow(plan, case, dtype):
    # The chunk combinations overflow differently from the loop; the serial last pass scans
    # a chunk again from the loop's state where its carry or (scan-then-fix) its states
    # could differ: inf, -inf and NaN come out where the sequential loop gives them.
    a, b, h0 = _overflow_case(case, dtype)
    for reverse in (False, True):
        if reverse:
            a, b = np.ascontiguousarray(a[:, ::-1]), np.ascontiguousarray(b[:, ::-1])
        got = np.empty_like(b)
        _scan_cpu.scan_diag(a, b, h0, reverse, got, (plan, 3))
        with np.errstate(over="ignore", invalid="ignore"):
            expected = scan_reference(a, b, h0, reverse)
        assert not np.isfinite(expected).all()
        assert_same_non_finite(got, expected, 1e-6)


def test_available_backends():
    backends = parscan.available_backends()
    assert backends[:2] == ("sequential", "cpu")
    assert set(backends) <= {"sequential", "cpu", "cuda"}


# --------------------------------------------------------------------------- errors

GOOD_A, GOOD_B = np.ones((2, 5, 3)), np.ones((2, 5, 3))


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        (
            (GOOD_A.astype(np.int64), GOOD_B),
            {},
            TypeError,
            r"^linear_scan: expected .*got a\.dtype=int64",
        ),
        (
            (GOOD_A, GOOD_B.astype(np.float32)),
            {},
            TypeError,
            r"^linear_scan: .*share one dtype; got a\.dtype=float64, b\.dtype=float32",
        ),
        ((GOOD_A, GOOD_B, np.ones((2, 3), np.complex128)), {}, TypeError, r"h0\.dtype=complex128"),
        (
            (np.ones((2, 5, 4)), GOOD_B),
            {},
            ValueError,
            r"^linear_scan: `a` must have shape .*\(2, 5, 3\) or \(2, 5, 3, 3\); "
            r"got a\.shape=\(2, 5, 4\)",
        ),
        ((np.ones((3, 5, 3)), GOOD_B), {}, ValueError, r"no broadcasting"),
        ((np.ones((2, 5, 3, 2)), GOOD_B), {}, ValueError, r"got a\.shape=\(2, 5, 3, 2\)"),
        (
            (GOOD_A, GOOD_B, np.ones((2, 4))),
            {},
            ValueError,
            r"^linear_scan: `h0` must have shape .*\(2, 3\); got h0\.shape=\(2, 4\)",
        ),
        (
            (np.ones(5), np.ones(5)),
            {},
            ValueError,
            r"^linear_scan: `b` must have shape \(\.\.\., T, D\)",
        ),
        (
            (GOOD_A, GOOD_B),
            {"backend": "gpu"},
            ValueError,
            r"^linear_scan: unknown backend 'gpu'; available: 'auto', 'sequential', 'cpu'",
        ),
        # the cast suggested for a bad dtype is the one that also matches the others
        (
            (GOOD_A.astype(np.int64), GOOD_B.astype(np.float32)),
            {},
            TypeError,
            r"^linear_scan: expected .*got a\.dtype=int64\. Use a\.astype\(np\.float32\)\.$",
        ),
        (
            (GOOD_A, GOOD_B.astype(np.float32), np.ones((2, 3), ">f8")),
            {},
            TypeError,
            r"share one dtype; .*Cast b\.astype\(np\.float64\)\.$",  # the common type
        ),
        (
            (GOOD_A.astype(np.complex128), GOOD_B.astype(np.float32)),
            {},
            TypeError,
            r"share one dtype; .*Cast b\.astype\(np\.complex128\)\.$",  # a's imaginary part kept
        ),
        (  # a list has no astype: the cast suggested converts it
            (GOOD_A, GOOD_B, [[0, 0, 0], [0, 0, 0]]),
            {},
            TypeError,
            r"h0\.dtype=int64\. Use np\.asarray\(h0, dtype=np\.float64\)\.$",
        ),
        (  # a list has no precision of its own: it is cast, not the arrays
            (GOOD_A.astype(np.float32), GOOD_B.astype(np.float32), [[0.0] * 3] * 2),
            {},
            TypeError,
            r"h0\.dtype=float64\. Cast np\.asarray\(h0, dtype=np\.float32\)\.$",
        ),
        (  # a wider h0 array: casting the others loses nothing, casting h0 is the other fix
            (GOOD_A.astype(np.float32), GOOD_B.astype(np.float32), np.zeros((2, 3))),
            {},
            TypeError,
            r"Cast a\.astype\(np\.float64\), b\.astype\(np\.float64\) \(or, to scan in "
            r"float32, h0\.astype\(np\.float32\)\)\.$",
        ),
        (
            (GOOD_A, GOOD_B),
            {"reverse": "False"},
            TypeError,
            r"^linear_scan: `reverse` must be a bool; got str 'False'\. Pass True or False\.$",
        ),
        (
            (GOOD_A, GOOD_B),
            {"transpose": 1},
            TypeError,
            r"^linear_scan: `transpose` must be a bool; got int 1",
        ),
        (
            (np.ma.masked_array(GOOD_A, GOOD_A > 0), GOOD_B),
            {},
            TypeError,
            r"^linear_scan: `a` is a masked array.*a\.filled\(value\)",
        ),
        (
            ([[1.0, 2.0], [3.0]], GOOD_B),
            {},
            ValueError,
            r"^linear_scan: `a` is not an array \(nested sequences of unequal lengths",
        ),
    ],
)
def test_errors(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        parscan.linear_scan(*args, **kwargs)


@pytest.mark.skipif(
    np.dtype(np.clongdouble).itemsize <= 16, reason="long double complex is complex128 here"
)
def test_cast_suggested_for_long_double_complex_keeps_the_imaginary_part():
    """complex256 is not scanned: the cast suggested is complex (complex128 alone, complex64
    next to float32, which is then cast too), never a float that drops the imaginary part."""
    c = np.ones((2, 5, 3), np.clongdouble)
    with pytest.raises(
        TypeError,
        match=rf"^linear_scan: expected .*got a\.dtype={c.dtype}\. Use a\.astype\(np\.complex128\)"
        rf"\. expected .*got b\.dtype={c.dtype}\. Use b\.astype\(np\.complex128\)\.$",
    ):
        parscan.linear_scan(c, c)
    with pytest.raises(
        TypeError,
        match=r"Use b\.astype\(np\.complex64\)\. `a`, `b` and `h0` must share one dtype; got "
        rf"a\.dtype=float32, b\.dtype={c.dtype}\. Cast a\.astype\(np\.complex64\)\.$",
    ):
        parscan.linear_scan(GOOD_A.astype(np.float32), c)


def test_errors_are_reported_together():
    with pytest.raises(TypeError, match=r"int64.*`a` must have shape.*`h0` must have shape"):
        parscan.linear_scan(np.ones((2, 5, 4), np.int64), GOOD_B, np.ones(7))
    with pytest.raises(ValueError, match=r"`a` must have shape.*`h0` must have shape"):
        parscan.linear_scan(np.ones((2, 5, 4)), GOOD_B, np.ones(7))
    # the flags, the backend and masked inputs are listed with the shapes, not alone
    bad_a = np.ones((2, 5, 4))
    for args, kwargs, error, match in [
        ((bad_a, GOOD_B), {"reverse": 1}, TypeError, r"^linear_scan: `reverse` must be a bool;"),
        ((bad_a, GOOD_B), {"backend": "x"}, ValueError, r"^linear_scan: unknown backend 'x';"),
        ((np.ma.masked_array(bad_a), np.ma.masked_array(GOOD_B)), {"transpose": 0}, TypeError,
         r"^linear_scan: `transpose` must be a bool.* `a` is a masked array.* `b` is a masked "
         r"array"),
    ]:  # fmt: skip
        with pytest.raises(error, match=match + r".*`a` must have shape .*\(2, 5, 4\)"):
            parscan.linear_scan(*args, **kwargs)
    with pytest.raises(TypeError, match=r"`reverse` must be a bool.* `a` must be an array; got"):
        parscan.linear_scan(None, GOOD_B, reverse=None)


@pytest.mark.parametrize("backend", ["sequential", "cpu", "auto"])
def test_a_masked_out_is_refused(backend):
    out = np.ma.masked_array(np.zeros_like(GOOD_B))
    with pytest.raises(
        TypeError,
        match=r"^linear_scan: `out` must be an array like `b` \(shape \(2, 5, 3\), dtype "
        r"float64\) or None; got a masked array\.$",
    ):
        parscan.linear_scan(GOOD_A, GOOD_B, out=out, backend=backend)


def test_cuda_unavailable_error_lists_backends():
    if "cuda" in parscan.available_backends():
        pytest.skip("a GPU or the simulator is present")
    with pytest.raises(ValueError, match=r"^linear_scan: backend 'cuda' is not available.*'cpu'"):
        parscan.linear_scan(GOOD_A, GOOD_B, backend="cuda")


class _BrokenNumbaCuda(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports of ``numba.cuda`` fail inside the module, as a numba-cuda built for another
    numba does (numba-cuda 0.30.3 with numba 0.68: AttributeError)."""

    def find_spec(self, name, path, target=None):
        if name == "numba.cuda":
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise AttributeError("module 'numba.cuda.types' has no attribute 'NPDatetime'")


@pytest.fixture
def broken_numba_cuda(monkeypatch):
    """``numba.cuda`` unimportable for this test (and the availability caches cleared)."""
    for name in [m for m in sys.modules if m == "numba.cuda" or m.startswith("numba.cuda.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delattr(numba, "cuda", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_BrokenNumbaCuda(), *sys.meta_path])
    scan._cuda_import_failure.cache_clear()
    scan._cuda_available.cache_clear()
    yield
    scan._cuda_import_failure.cache_clear()
    scan._cuda_available.cache_clear()


def test_a_broken_numba_cuda_leaves_the_cpu_backends_and_says_why(broken_numba_cuda):
    assert parscan.available_backends() == ("sequential", "cpu")
    a, b = np.full((2, 5, 3), 0.5), np.ones((2, 5, 3))
    np.testing.assert_array_equal(
        parscan.linear_scan(a, b), scan_reference(a, b, np.zeros((2, 3)), False)
    )
    reason = r"numba\.cuda fails to import: AttributeError: .*NPDatetime.*pip install -U numba"
    with pytest.raises(
        ValueError, match=rf"^linear_scan: backend 'cuda' is not available \({reason}"
    ):
        parscan.linear_scan(a, b, backend="cuda")
    assert re.match(rf"backend='cuda' is not available \({reason}", scan.cuda_unavailable())


def test_combine_rejects_mixed_kinds():
    with pytest.raises(ValueError, match=r"^combine: both pairs must be diagonal"):
        parscan.combine((np.ones((3, 3)), np.ones(3)), (np.ones(3), np.ones(3)))
    with pytest.raises(ValueError, match=r"^combine: both pairs .* within a pair"):
        parscan.combine((np.ones((4, 3, 3)), np.ones(3)), (np.ones((3, 3)), np.ones(3)))
    with pytest.raises(ValueError, match=r"^combine: the two pairs must share D"):
        parscan.combine((np.ones(3), np.ones(3)), (np.ones(4), np.ones(4)))
    with pytest.raises(ValueError, match=r"^combine: the leading dimensions .* do not broadcast"):
        parscan.combine((np.ones((2, 3)), np.ones((2, 3))), (np.ones((3, 3)), np.ones((3, 3))))
    with pytest.raises(
        TypeError, match=r"^combine: pair2 must be a pair \(A, b\).* tuple of length 3"
    ):
        parscan.combine((np.ones(3),) * 3, (np.ones(3), np.ones(3)))
    with pytest.raises(TypeError, match=r"^combine: pair2 must be a pair .*; got None for A2\.$"):
        parscan.combine((None, np.ones(3)), (np.ones(3), np.ones(3)))  # an AttributeError
    with pytest.raises(TypeError, match=r"^combine: pair1 must .*; got None for A1 and b1\.$"):
        parscan.combine((np.ones(3), np.ones(3)), [None, None])
    with pytest.raises(TypeError, match=r"^combine: pair2 must be .*; got a ndarray\.$"):
        parscan.combine(np.array(2.0), (np.ones(3), np.ones(3)))  # a 0-d array has no len
    masked = (np.ma.masked_array(np.ones(3), [0, 1, 0]), np.ones(3))
    with pytest.raises(TypeError, match=r"^combine: `A1` is a masked array"):
        parscan.combine((np.ones(3), np.ones(3)), masked)
    with pytest.raises(ValueError, match=r"^combine: `b2` is not an array"):
        parscan.combine((np.ones(2), [[1.0, 2.0], [3.0]]), (np.ones(2), np.ones(2)))
    words = (np.array(["a"]), np.array(["b"]))
    with pytest.raises(TypeError, match=r"^combine: the pairs must hold numbers .*A2\.dtype=<U1"):
        parscan.combine(words, words)
    flags = (np.array([True]), np.array([True]))  # would give b = True, not 2
    with pytest.raises(TypeError, match=r"A2\.dtype=bool.*Cast them, e\.g\. \.astype"):
        parscan.combine(flags, flags)
    objects = (np.array([1.0], dtype=object), np.array([1.0]))
    with pytest.raises(TypeError, match=r"must hold numbers .*A1\.dtype=object"):
        parscan.combine((np.ones(1), np.ones(1)), objects)
    A, c = parscan.combine((np.full(2, 2), np.ones(2, np.int64)), (np.ones(2), np.ones(2)))
    assert np.array_equal(A, [2.0, 2.0]) and np.array_equal(c, [3.0, 3.0])
    A, c = parscan.combine((np.ones((4, 3, 3)), np.ones((4, 3))), (np.eye(3), np.ones(3)))
    assert A.shape == (4, 3, 3) and np.array_equal(c, np.full((4, 3), 4.0))


def test_missing_a_or_b_is_a_type_error():
    with pytest.raises(TypeError, match=r"^linear_scan: `a` must be an array; got None\.$"):
        parscan.linear_scan(None, GOOD_B)
    with pytest.raises(TypeError, match=r"^linear_scan: `a` and `b` must be arrays; got None"):
        parscan.linear_scan(None, None)


def test_out_that_is_not_an_array_is_a_type_error():
    with pytest.raises(TypeError, match=r"^linear_scan: `out` must be an array like `b`"):
        parscan.linear_scan(GOOD_A, GOOD_B, out=[0.0] * GOOD_B.size)


def test_out_problems_are_listed_with_those_of_the_inputs():
    wrong_a = np.ones((2, 5, 4))
    with pytest.raises(ValueError, match=r"got a\.shape=\(2, 5, 4\).*`out` must have b's sha"):
        parscan.linear_scan(wrong_a, np.ones((2, 5, 3)), out=np.empty((2, 5, 4)))
    with pytest.raises(TypeError, match=r"got a\.dtype=int64.*`out` must have b's shape"):
        parscan.linear_scan(wrong_a[..., :3].astype(np.int64), GOOD_B, out=np.empty((2, 5, 4)))
    with pytest.raises(TypeError, match=r"got a\.shape=\(2, 5, 4\).*`out` must be an array li"):
        parscan.linear_scan(wrong_a, np.ones((2, 5, 3)), out=[1.0])


@pytest.mark.parametrize("package", ["parscan", "models", "autodiff"])
def test_dir_lists_the_public_names_and_the_module_attributes(package):
    import importlib

    module = importlib.import_module(package)
    listed = dir(module)
    assert set(module.__all__) <= set(listed) and "__name__" in listed
    assert all(hasattr(module, name) for name in module.__all__)


@pytest.mark.parametrize(
    "expression", ["models.data.column_names", "autodiff.memory.step_bytes", "models.metrics"]
)
def test_a_submodule_is_reachable_from_its_package_alone(expression):
    """``import models`` then ``models.data.column_names`` (as the README writes it) in a
    fresh interpreter: the lazy package imports the submodule (AttributeError before); an
    unknown name is still an AttributeError."""
    package = expression.split(".")[0]
    code = (
        f"import {package}; {expression}\n"
        f"try:\n    {package}.no_such_name\nexcept AttributeError:\n    print('refused')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == "refused\n", done.stderr
    module = importlib.import_module(package)  # and no more than submodules
    assert getattr(module, "a.b", None) is None and getattr(module, "__pycache__", None) is None


def test_a_scan_beyond_memory_names_linear_scan_and_what_it_allocates():
    """Broadcast views of 2**50 steps (8 PiB in float64, beyond any address space) pass the
    checks; the result and the inputs' contiguous copies cannot be allocated (NumPy's bare
    MemoryError before)."""
    a = np.broadcast_to(0.5, (2**50, 1))
    b = np.broadcast_to(1.0, (2**50, 1))
    match = (
        r"^linear_scan: a of shape \(1125899906842624, 1\) and b of shape \(1125899906842624, "
        r"1\) \(float64\) need 25,165,824\.0 GiB for the result h, a contiguous copy of a, a "
        r"contiguous copy of b and the zero state h0, more than this machine can allocate now"
    )
    with pytest.raises(MemoryError, match=match):
        parscan.linear_scan(a, b, backend="sequential")
