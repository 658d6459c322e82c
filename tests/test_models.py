"""Piecewise-linear DSR models: maps, Jacobians, parameter VJPs, free runs, init, save/load.

References here are written independently of the library: NumPy formulas of the maps,
central finite differences for every derivative, and a Python loop for the free run.
"""

import errno
import io
import json
import os
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest

import models
import parscan
from models import ALRNN, PLRNN, ClippedShPLRNN, ShPLRNN
from models._checks import Checks
from models.base import FORMAT_VERSION
from parscan import _buffers

M, L, P, N = 4, 6, 2, 3
CLASSES = {
    "ShPLRNN": lambda **kw: ShPLRNN(M, L, N, **kw),
    "ClippedShPLRNN": lambda **kw: ClippedShPLRNN(M, L, N, **kw),
    "ALRNN": lambda **kw: ALRNN(M, P, N, **kw),
    "PLRNN": lambda **kw: PLRNN(M, N, **kw),
}
NAMES = list(CLASSES)
SHAPES = [(), (3,), (2, 5)]
TOL = {np.float64: 1e-12, np.float32: 2e-5}
SIM_TOL = {np.float64: 1e-10, np.float32: 1e-4}


def random_model(name, dtype="float64", seed=1):
    """A model with random parameters (nonzero biases, both relu regimes visited)."""
    m = CLASSES[name](dtype="float64")
    rng = np.random.default_rng(seed)
    theta = rng.normal(0.0, 0.6, m.n_params)
    m.unflatten(theta)["A"][...] = rng.uniform(-0.9, 0.9, M)
    if name == "PLRNN":
        np.fill_diagonal(m.unflatten(theta)["W"], 0.0)
    m.set_params(theta)
    return m.astype(dtype)


@pytest.fixture(scope="module", params=NAMES)
def model(request):
    return random_model(request.param)


def relu(x):
    return np.maximum(x, 0.0)


def reference_step(m, z):
    """F(z) from the formulas of the issue, in NumPy (float64)."""
    p = {k: v.astype(np.float64) for k, v in m.unflatten().items()}
    z = z.astype(np.float64)
    if isinstance(m, ShPLRNN | ClippedShPLRNN):
        s = z @ p["W2"].T
        hidden = relu(s + p["h2"])
        if isinstance(m, ClippedShPLRNN):
            hidden = hidden - relu(s)
        return p["A"] * z + hidden @ p["W1"].T + p["h1"]
    n_relu = m.M if isinstance(m, PLRNN) else m.P
    phi = z.copy()
    phi[..., m.M - n_relu :] = relu(z[..., m.M - n_relu :])
    return p["A"] * z + phi @ p["W"].T + p["h"]


def fd_jacobian(m, z, eps=1e-6):
    """Central finite differences of m.step at z (..., M) -> (..., M, M)."""
    cols = []
    for j in range(m.M):
        dz = np.zeros(m.M)
        dz[j] = eps
        cols.append((m.step(z + dz) - m.step(z - dz)) / (2 * eps))
    return np.stack(cols, axis=-1)


def reference_jacobian(m, z):
    """dF/dz (..., M, M) from the formulas, in NumPy (float64), with the documented
    derivative at a NaN: relu'(NaN) (and, for the ALRNN / PLRNN, Phi'(NaN)) is NaN."""
    p = {k: v.astype(np.float64) for k, v in m.unflatten().items()}
    z = z.astype(np.float64)
    with np.errstate(invalid="ignore"):
        if isinstance(m, ShPLRNN | ClippedShPLRNN):
            s = z @ p["W2"].T
            d = np.where(np.isnan(s), np.nan, s + p["h2"] > 0)
            if isinstance(m, ClippedShPLRNN):
                d = d - (s > 0)
            J = np.einsum("il,...l,lj->...ij", p["W1"], d, p["W2"])
        else:
            n_relu = m.M if isinstance(m, PLRNN) else m.P
            d = np.where(np.arange(m.M) < m.M - n_relu, 1.0, z > 0)
            J = p["W"] * np.where(np.isnan(z), np.nan, d)[..., None, :]
    return J + np.diag(p["A"])


def states(shape, dtype=np.float64, seed=0):
    return np.random.default_rng(seed).normal(0.0, 1.5, (*shape, M)).astype(dtype)


# ---- maps -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", SHAPES)
def test_step_matches_formula(model, shape, dtype):
    m = model.astype(dtype)
    z = states(shape, dtype)
    F = m.step(z)
    assert F.shape == z.shape and F.dtype == dtype
    np.testing.assert_allclose(F, reference_step(m, z), rtol=TOL[dtype], atol=TOL[dtype])


def test_step_propagates_nan(model):
    z = states((2,))
    z[0, -1] = np.nan  # a relu unit for every family
    F = model.step(z)
    assert np.isnan(F[0]).any() and np.isfinite(F[1]).all()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n", [1, 70])  # one state (per-step function), many (drivers)
@pytest.mark.parametrize("name", NAMES)
def test_relu_of_minus_inf_is_zero(name, n, dtype):
    """A relu input of -inf contributes 0 (not -inf * 0 = NaN): the other outputs stay the
    finite affine part, and the Jacobian has no NaN."""
    m = random_model(name, dtype)
    p = m.unflatten()
    z = np.tile(states((), dtype, seed=19), (n, 1))
    if "W2" in p:  # every hidden unit reads z_0 with a positive weight: all at -inf
        p["W2"][:, 0] = np.abs(p["W2"][:, 0]) + 0.5
        z[:, 0] = -np.inf
        want = p["A"][1:] * z[:, 1:] + p["h1"][1:]
        F, J = m.step_and_jacobian(z)
        np.testing.assert_array_equal(J, np.broadcast_to(np.diag(p["A"]), J.shape))
    else:  # the last unit is a relu unit in both families
        z[:, -1] = -np.inf
        want = reference_step(m, np.where(np.isinf(z), 0, z))[:, :-1]  # relu(0) = 0
        F, J = m.step_and_jacobian(z)
        assert np.all(np.isfinite(J))
    assert np.all(np.isinf(F[:, 0 if "W2" in p else -1]))  # A * z there
    got = F[:, 1:] if "W2" in p else F[:, :-1]
    np.testing.assert_allclose(got, want, rtol=TOL[dtype], atol=TOL[dtype])
    np.testing.assert_array_equal(m.step(z), F)
    g = m.unflatten(m.param_vjp(z, np.ones_like(z)))
    assert np.all(np.isfinite(g["W1" if "W2" in p else "h"]))


def test_relu_of_an_overflowing_pre_activation_is_zero():
    """Finite float32 states whose pre-activation W2 z + h2 overflows to -inf."""
    m = ShPLRNN(2, 3, dtype="float32")
    m["W2"][...] = 1.0
    z = np.full((1, 2), -3e38, np.float32)  # W2 z = -6e38: -inf in float32
    F = m.step(z)
    np.testing.assert_array_equal(F, m["A"] * z + m["h1"])


@pytest.mark.parametrize("shape", SHAPES)
def test_jacobians_match_finite_differences(model, shape):
    z = states(shape, seed=3)
    J = model.jacobian(z)
    D = model.jacobian_diag(z)
    assert J.shape == (*shape, M, M) and D.shape == (*shape, M)
    np.testing.assert_allclose(J, fd_jacobian(model, z), atol=1e-7)
    np.testing.assert_array_equal(D, np.diagonal(J, axis1=-2, axis2=-1))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_step_and_jacobian_fused_and_out(model, dtype):
    m = model.astype(dtype)
    z = states((2, 3), dtype, seed=4)
    F, J = m.step_and_jacobian(z)
    np.testing.assert_allclose(F, m.step(z), rtol=TOL[dtype], atol=TOL[dtype])
    np.testing.assert_array_equal(J, m.jacobian(z))
    out = (np.empty_like(z), np.empty((2, 3, M), dtype))
    F2, D2 = m.step_and_jacobian(z, diag=True, out=out)
    assert F2 is out[0] and D2 is out[1]
    np.testing.assert_array_equal(D2, m.jacobian_diag(z))
    np.testing.assert_array_equal(F2, F)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", NAMES)
def test_derivatives_at_a_nan_state_are_nan_where_it_reaches(name, dtype):
    """A NaN state entry is not read as an inactive relu (NaNs are never zeroed): it enters
    every hidden unit of the shPLRNNs (``NaN * w`` is NaN), whose Jacobian is then NaN
    throughout, and makes column j of the ALRNN / PLRNN Jacobian NaN, for a linear unit too.
    Every path: one state (the per-step function), 70 states (the lane blocks of 64 or the
    chunked drivers), the plain and compiled per-step functions, ``vjp_state``. NaN-free
    states in the same call keep the per-step function's results, bitwise."""
    m = random_model(name, dtype)
    z = states((70,), dtype, seed=21)
    z[3, 1] = z[5, -1] = z[66, 0] = z[66, 2] = np.nan  # a linear unit, a relu unit; 2 blocks
    clean = ~np.isnan(z).any(axis=1)
    want = reference_jacobian(m, z)
    assert np.isnan(want).any() and np.isfinite(want[clean]).all()
    tol = {"rtol": TOL[dtype], "atol": TOL[dtype]}
    F, J = m.step_and_jacobian(z)
    F2, D = m.step_and_jacobian(z, diag=True)
    for got in (J, m.jacobian(z), np.stack([m.jacobian(zp) for zp in z])):
        np.testing.assert_allclose(got, want, **tol)  # NaN where want has NaN, only there
    one_by_one = np.stack([m.step_and_jacobian(zp, diag=True)[1] for zp in z])
    for got in (D, m.jacobian_diag(z), one_by_one):
        np.testing.assert_allclose(got, np.diagonal(want, axis1=-2, axis2=-1), **tol)
    args, c = m.kernel_args(), states((), dtype, seed=22)
    out, jac, diag, vs = (np.empty(shape, dtype) for shape in (M, (M, M), M, M))
    for fns in (m.step_functions_jit, m.step_functions):  # compiled and plain Python
        for p in range(8):
            with np.errstate(invalid="ignore"):
                fns.step_jacobian(*args, z[p], out, jac)
                fns.step_jacobian_diag(*args, z[p], out, diag)
                fns.vjp_state(*args, z[p], c, vs)
            np.testing.assert_array_equal(jac, J[p])
            np.testing.assert_array_equal(diag, D[p])
            np.testing.assert_allclose(vs, want[p].T @ c, rtol=1e-4, atol=1e-4)
    fns = m.step_functions_jit
    for p in np.flatnonzero(clean):
        fns.step_jacobian(*args, z[p], out, jac)
        np.testing.assert_array_equal(J[p], jac)
        np.testing.assert_array_equal(F[p], out)
        fns.step_jacobian_diag(*args, z[p], out, diag)
        np.testing.assert_array_equal(D[p], diag)
        np.testing.assert_array_equal(F2[p], out)


def test_relu_derivative_at_zero_is_zero():
    # shPLRNN family with h2 = 0 at z = 0: every pre-activation is exactly 0.
    for cls in (ShPLRNN, ClippedShPLRNN):
        m = cls(M, L)
        m["h2"][...] = 0.0
        z = np.zeros(M)
        np.testing.assert_array_equal(m.jacobian(z), np.diag(m["A"]))
        _, D = m.step_and_jacobian(z, diag=True)
        np.testing.assert_array_equal(D, m["A"])
        assert np.all(m.unflatten(m.param_vjp(z, np.ones(M)))["h2"] == 0)
    # ALRNN at z = 0: the relu columns vanish, the linear ones stay.
    m = ALRNN(M, P)
    J = m.jacobian(np.zeros(M))
    np.testing.assert_array_equal(J[:, M - P :], np.diag(m["A"])[:, M - P :])
    np.testing.assert_array_equal(J[:, : M - P], (m["W"] + np.diag(m["A"]))[:, : M - P])
    # the same in a batch, which the batched drivers (not the per-step functions) evaluate
    for m in (ShPLRNN(M, L), ClippedShPLRNN(M, L), ALRNN(M, P), PLRNN(M)):
        if "h2" in m.unflatten():
            m["h2"][...] = 0.0
        for diag in (False, True):
            one = m.step_and_jacobian(np.zeros(M), diag=diag)[1]
            batch = m.step_and_jacobian(np.zeros((70, M)), diag=diag)[1]
            np.testing.assert_array_equal(batch, np.broadcast_to(one, batch.shape))


def test_norm_bound_dominates_jacobian_norms(model):
    J = model.jacobian(states((200,), seed=5) * 3)
    assert np.linalg.norm(J, 2, axis=(-2, -1)).max() <= model.norm_bound() * (1 + 1e-12)


# ---- parameter VJP --------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(), (3,), (30, 100)])
def test_param_vjp_matches_finite_differences(model, shape):
    z = states(shape, seed=6)
    c = states(shape, seed=7)
    g = model.param_vjp(z, c)
    assert g.shape == (model.n_params,) and g.dtype == model.dtype
    fd = np.empty(model.n_params)
    probe = model.copy()
    eps = 1e-6
    for k in range(model.n_params):
        probe.params[...] = model.params
        probe.params[k] += eps
        up = np.sum(probe.step(z) * c)
        probe.params[k] -= 2 * eps
        fd[k] = (up - np.sum(probe.step(z) * c)) / (2 * eps)
    blocks = model.unflatten(g)
    if isinstance(model, PLRNN):  # masked: the diagonal of W is not a parameter
        np.testing.assert_array_equal(np.diagonal(blocks["W"]), 0.0)
        np.fill_diagonal(model.unflatten(fd)["W"], 0.0)
    np.testing.assert_array_equal(blocks["L0"], 0.0)
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-6 * max(1, z.size // M))


def test_param_vjp_independent_of_thread_count(model):
    import numba

    z, c = states((8, 700), seed=14), states((8, 700), seed=15)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = model.param_vjp(z, c)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(model.param_vjp(z, c), one)


def test_param_vjp_float32_matches_float64(model):
    z, c = states((20, 50), seed=8), states((20, 50), seed=9)
    m32 = model.astype("float32")
    g32 = m32.param_vjp(z.astype(np.float32), c.astype(np.float32))
    g64 = m32.astype("float64").param_vjp(
        z.astype(np.float32).astype(np.float64), c.astype(np.float32).astype(np.float64)
    )
    assert g32.dtype == np.float32
    np.testing.assert_allclose(g32, g64, rtol=1e-4, atol=1e-3)


# ---- per-step functions ---------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))  # several states: every relu and clip regime
def test_step_functions_agree_with_batched_methods(model, seed):
    z, c = states((), seed=10 + 2 * seed), states((), seed=11 + 2 * seed)
    args = model.kernel_args()
    for fns in (model.step_functions_jit, model.step_functions):  # compiled and plain Python
        out, jac, diag, zc = np.empty(M), np.empty((M, M)), np.empty(M), np.empty(M)
        fns.step(*args, z, out)
        np.testing.assert_allclose(out, model.step(z), rtol=1e-14)
        fns.step_jacobian(*args, z, out, jac)
        np.testing.assert_allclose(jac, model.jacobian(z), rtol=1e-14)
        fns.step_jacobian_diag(*args, z, out, diag)
        np.testing.assert_allclose(diag, model.jacobian_diag(z), rtol=1e-14)
        fns.vjp_state(*args, z, c, zc)
        np.testing.assert_allclose(zc, model.jacobian(z).T @ c, rtol=1e-12, atol=1e-14)
        grad = np.zeros(model.n_map_params)
        fns.vjp_params(*args, z, c, grad)
        np.testing.assert_allclose(grad, model.param_vjp(z, c)[: model.n_map_params], 1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n", [2, 63, 64, 133])
def test_many_state_drivers_match_per_step_functions(model, dtype, n):
    """The drivers over many states (lane-blocked SIMD for the shPLRNN family) give F and J
    bitwise equal to the per-step functions, and the parameter VJP up to summation order."""
    m = model.astype(dtype)
    z, c = states((n,), dtype, seed=16), states((n,), dtype, seed=17)
    fns, args = m.step_functions_jit, m.kernel_args()
    F, J = m.step_and_jacobian(z)
    _, Jd = m.step_and_jacobian(z, diag=True)
    Fs = m.step(z)
    out, jac, diag = np.empty(M, dtype), np.empty((M, M), dtype), np.empty(M, dtype)
    grad = np.zeros(m.n_map_params)
    for p in range(n):
        fns.step_jacobian(*args, z[p], out, jac)
        np.testing.assert_array_equal(F[p], out)
        np.testing.assert_array_equal(Fs[p], out)
        np.testing.assert_array_equal(J[p], jac)
        fns.step_jacobian_diag(*args, z[p], out, diag)
        np.testing.assert_array_equal(Jd[p], diag)
        fns.vjp_params(*args, z[p], c[p], grad)
    rtol = 1e-12 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(m.param_vjp(z, c)[: m.n_map_params], grad, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("cls", [ALRNN, PLRNN])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_row_jacobian_driver_is_bitwise_the_per_step_function_at_ecg_size(cls, dtype):
    """The ALRNN / PLRNN many-state driver walks W by rows (M = 20: 2-3x faster); F and J
    stay bitwise equal to the per-step function, which walks it by columns."""
    m = (ALRNN(20, 4, 5, seed=3) if cls is ALRNN else PLRNN(20, 5, seed=3)).astype(dtype)
    z = np.random.default_rng(18).normal(0.0, 1.5, (100, 20)).astype(dtype)
    F, J = m.step_and_jacobian(z)
    out, jac = np.empty(20, dtype), np.empty((20, 20), dtype)
    for p in range(z.shape[0]):
        m.step_functions_jit.step_jacobian(*m.kernel_args(), z[p], out, jac)
        np.testing.assert_array_equal(F[p], out)
        np.testing.assert_array_equal(J[p], jac)


TRANSPOSED_RUN_MODELS = {  # sizes with a SIMD body and a remainder in the vectorised loops
    "ShPLRNN": lambda: ShPLRNN(5, 37, 5, seed=4),
    "ClippedShPLRNN": lambda: ClippedShPLRNN(5, 37, 5, seed=4),
    "ALRNN": lambda: ALRNN(21, 4, 5, seed=4),
    "PLRNN": lambda: PLRNN(21, 5, seed=4),
}


@pytest.mark.parametrize("name", list(TRANSPOSED_RUN_MODELS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n_runs", [1, 3])
def test_transposed_free_run_is_bitwise_the_per_step_function(name, dtype, n_runs):
    """A few free runs step with transposed weights, so that the innermost loops are
    contiguous and vectorised (shPLRNNs: over the L hidden units, 2x faster at L = 250;
    (A)LRNNs: W in Fortran order, over the outputs, 3x at M = 20); every state stays bitwise
    the per-step function's, non-finite and overflowing ones included."""
    m = TRANSPOSED_RUN_MODELS[name]().astype(dtype)
    z0 = np.random.default_rng(20).normal(0.0, 1.5, (n_runs, m.M)).astype(dtype)
    if n_runs > 1:
        z0[1, 2], z0[2] = np.nan, 1e30
    runs = m.simulate(z0, 40)
    out = np.empty(m.M, dtype)
    for run, z in zip(runs, z0, strict=True):
        for t in range(40):
            m.step_functions_jit.step(*m.kernel_args(), z, out)
            np.testing.assert_array_equal(run[t], out)
            z = out.copy()


@pytest.mark.parametrize("family", ["ShPLRNN", "ALRNN"])
def test_step_functions_compile_for_cuda_in_float32(no_device_context, family):
    """The plain per-step functions are valid CUDA device functions, and in float32 they
    stay in float32 (``vjp_params`` accumulates into a float64 gradient by design)."""
    cuda = pytest.importorskip("numba.cuda")
    from numba import float32, float64, int64

    f = float32[::1]
    m = float32[:, ::1]
    args = (f, m, m, f, f, int64) if family == "ShPLRNN" else (f, m, f, int64, int64)
    tails = {
        "step": (f, f),
        "step_jacobian": (f, f, m),
        "step_jacobian_diag": (f, f, f),
        "vjp_state": (f, f, f),
        "vjp_params": (f, f, float64[::1]),
    }
    try:  # needs NVVM (numba-cuda[cu13]), not a GPU
        cuda.compile_ptx(lambda x: None, (f,), device=True, cc=(8, 0))
    except Exception as exc:
        pytest.skip(f"numba.cuda cannot compile PTX here: {exc}")
    for name, fn in CLASSES[family]().step_functions._asdict().items():
        ptx, _ = cuda.compile_ptx(fn, args + tails[name], device=True, cc=(8, 0))
        assert name == "vjp_params" or ".f64" not in ptx, name


# ---- free run -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", SHAPES)
def test_simulate_matches_loop(model, shape, dtype):
    m = model.astype(dtype)
    z0 = states(shape, dtype, seed=12) * 0.3
    traj = m.simulate(z0, 7)
    assert traj.shape == (*shape, 7, M) and traj.dtype == dtype
    z, ref = z0.astype(np.float64), []
    for _ in range(7):
        z = reference_step(m, z)
        ref.append(z)
    np.testing.assert_allclose(
        traj, np.stack(ref, axis=-2), rtol=SIM_TOL[dtype], atol=SIM_TOL[dtype]
    )
    assert m.simulate(z0, 0).shape == (*shape, 0, M)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n", [15, 300])
def test_batched_free_runs_are_bitwise_the_runs_one_by_one(model, dtype, n):
    """Many free runs (the shPLRNN family steps 16 per thread or more together in SIMD lanes:
    300 on up to 18 threads) give bitwise the states of each run alone, non-finite and
    overflowing ones included."""
    m = model.astype(dtype)
    z0 = states((n,), dtype, seed=19)
    z0[3, 0], z0[7, -1], z0[9] = np.inf, np.nan, 1e30
    alone = np.stack([m.simulate(z, 9) for z in z0])
    np.testing.assert_array_equal(m.simulate(z0, 9), alone)


def test_generate_uses_initial_state_map(model):
    x0 = states((2,), seed=13)[:, :N]
    z0 = model.initial_state(x0)
    np.testing.assert_allclose(z0[:, N:], x0 @ model["L0"].T, rtol=1e-14)
    np.testing.assert_array_equal(z0[:, :N], x0)
    np.testing.assert_array_equal(model.generate(x0, 3), model.simulate(z0, 3)[..., :N])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_start_gives_the_same_bits_alone_and_in_any_batch(dtype):
    """``L0 x0`` in one summation order for every start (not BLAS, whose rounding depends
    on the batch's shape): initial states, and so chaotic free runs, of a start do not
    depend on the starts beside it."""
    m = ALRNN(20, 4, N, seed=3).astype(dtype)
    x0 = np.random.default_rng(4).standard_normal((64, N)).astype(dtype)
    batch, runs = m.initial_state(x0), m.generate(x0, 50)
    want = np.zeros((64, 20 - N), dtype)  # the sum in order, one rounding per operation
    for j in range(N):
        want += x0[:, j, None] * m["L0"][:, j]
    np.testing.assert_array_equal(batch[:, N:], want)
    for rows in (slice(k, k + 1) for k in range(64)), (slice(0, 7), slice(5, 21), slice(3, 64)):
        for r in rows:
            np.testing.assert_array_equal(m.initial_state(x0[r]), batch[r])
            np.testing.assert_array_equal(m.generate(x0[r], 50), runs[r])
    np.testing.assert_array_equal(m.initial_state(x0[9]), batch[9])
    np.testing.assert_array_equal(m.initial_state(x0.reshape(8, 8, N)), batch.reshape(8, 8, -1))


@pytest.mark.parametrize("ssm", [False, True])
def test_generate_in_data_units_standardises_x0_and_maps_the_runs_back(model, ssm):
    """x0 of any real dtype and batch shape, in data units: the float32 model's generate from
    (x0 - mean) / sd, mapped back with sd and mean; without a standardisation, generate
    itself (as float64). Errors name the method."""
    m = (models.LinearSSM(N, 5, 4, seed=2) if ssm else model).astype("float32")
    x0 = np.arange(2 * 3 * N).reshape(2, 3, N) - 4  # integers, shape (2, 3, N)
    mean, sd = np.array([1.0, -2.0, 30.0]), np.array([2.0, 0.5, 8.0])
    m.standardization = (mean, sd)
    expected = m.generate(((x0 - mean) / sd).astype(np.float32), 6).astype(np.float64) * sd + mean
    got = m.generate_in_data_units(x0, 6)
    assert got.shape == (2, 3, 6, N) and got.dtype == np.float64
    np.testing.assert_array_equal(got, expected)
    one = m.generate_in_data_units(x0[0, 0].tolist(), 6)  # one run: the same bits
    np.testing.assert_array_equal(one, expected[0, 0])
    m.standardization = None
    np.testing.assert_array_equal(
        m.generate_in_data_units(x0, 2), m.generate(x0.astype(np.float32), 2)
    )
    where = f"{type(m).__name__}.generate_in_data_units"
    shape = r"x0 must have shape \(..., N\) with N=3; got \(2,\)\."
    with pytest.raises(ValueError, match=rf"^{where}: {shape} n_steps must be >= 0; got -1\.$"):
        m.generate_in_data_units(np.zeros(2), -1)
    with pytest.raises(TypeError, match=rf"^{where}: x0 must be real numeric; got dtype complex"):
        m.generate_in_data_units(np.zeros(N, complex), 2)


@pytest.mark.parametrize("name", NAMES)
def test_free_runs_too_large_to_allocate_are_refused_naming_the_method(name, monkeypatch):
    """A run this machine cannot allocate (NumPy's MemoryError; here without a reading of
    the memory available) or NumPy cannot address (a byte count beyond int64, a dimension
    beyond intp) is a ValueError naming the method called, the memory needed and the fix;
    generate's run of M latents counts."""
    monkeypatch.setattr(_buffers, "available_bytes", lambda: None)
    m = CLASSES[name]()
    fix = r"; use fewer steps \(or several shorter runs\)\.$"
    with pytest.raises(
        ValueError,
        match=rf"^{name}\.simulate: a free run of {10**16} steps \(4 float64 values a step\) "
        rf"needs 284 PiB, more than this machine can allocate{fix}",
    ):
        m.simulate(np.zeros(M), 10**16)
    with pytest.raises(
        ValueError,
        match=rf"^{name}\.generate: a free run of {2**62} steps \(4 float64 values a step\) "
        r"needs 128 EiB per start, 256 EiB for the 2 starts, more than NumPy can address; use "
        r"fewer steps or starts \(or several shorter runs\)\.$",
    ):
        m.generate(np.zeros((2, N)), 2**62)
    with pytest.raises(ValueError, match=rf"^{name}\.generate: .* 2\.65e\+7 YiB, .*address{fix}"):
        m.generate(np.zeros(N), 10**30)
    with pytest.raises(
        ValueError,
        match=rf"^{name}\.generate_in_data_units: a free run of {10**16} steps \(3 float64 "
        rf"values a step\) needs 213 PiB, more than this machine can allocate{fix}",
    ):
        m.generate_in_data_units(np.zeros(N), 10**16)
    assert m.generate(np.zeros((0, N)), 10**16).shape == (0, 10**16, N)  # nothing to allocate


def test_memory_checks_count_what_is_allocated_and_only_that(monkeypatch):
    """generate_in_data_units needs the model's run and its float64 copy at once: checked
    together (each alone fit, and Linux counts no untouched page); a contiguous batch of
    states is used as it is, allocating nothing, so no check refuses it."""
    monkeypatch.setattr(_buffers, "CHECKED_BYTES", 0)
    model = ShPLRNN(4, 6, n_obs=3)  # a step: 4 latents, their 3 observed, 3 in data units
    monkeypatch.setattr(_buffers, "available_bytes", lambda: 40_000)
    with pytest.raises(
        ValueError,
        match=r"^ShPLRNN\.generate_in_data_units: free runs of 1000 steps from 1 start\(s\) "
        r"need 78\.1 KiB \(the model's run and its float64 copy in data units\), more than "
        r"the 39\.1 KiB of memory available now; use fewer steps or starts",
    ):
        model.generate_in_data_units(np.zeros(3), 1000)
    states = np.zeros((1000, 4))
    monkeypatch.setattr(_buffers, "available_bytes", lambda: 0)
    F, J = np.empty((1000, 4)), np.empty((1000, 4, 4))
    model.step_and_jacobian(states, out=(F, J))  # only the given arrays: nothing refused
    with pytest.raises(ValueError, match=r"`z`'s states need 31\.2 KiB, more than the 0 B "):
        model.step_and_jacobian(np.zeros((1000, 8))[:, ::2], out=(F, J))  # a copy


@pytest.mark.parametrize("name", ["ShPLRNN", "ALRNN"])
def test_free_runs_beyond_the_memory_available_now_are_refused(name, monkeypatch):
    """A run larger than the memory available now (MemAvailable) is refused before it is
    allocated: Linux grants such an array, and filling it gets the process killed. Runs
    under 64 MiB are not checked."""
    monkeypatch.setattr(_buffers, "available_bytes", lambda: 2**30)
    m = CLASSES[name]()
    with pytest.raises(
        ValueError,
        match=rf"^{name}\.generate: a free run of {10**8} steps \(4 float64 values a step\) "
        r"needs 2\.98 GiB, more than the 1 GiB of memory available now; use fewer steps",
    ):
        m.generate(np.zeros(N), 10**8)
    monkeypatch.setattr(_buffers, "available_bytes", lambda: 0)
    assert m.generate(np.zeros(N), 1000).shape == (1000, N)


# ---- construction, init, save/load ----------------------------------------------------


def test_init_follows_lab_scheme_and_is_deterministic():
    for name in NAMES:
        a, b = CLASSES[name](seed=3), CLASSES[name](seed=3)
        np.testing.assert_array_equal(a.params, b.params)
        assert not np.array_equal(a.params, CLASSES[name](seed=4).params)
        assert np.all(a["A"] > 0) and np.all(a["A"] <= 1)
        assert np.all(np.abs(a["L0"]) <= 1 / np.sqrt(N))
        c = type(a)(**a.hyperparameters())
        np.testing.assert_array_equal(c.params, a.params)
        assert a.init(9).hyperparameters()["seed"] == 9
    sh, cl = ShPLRNN(M, L), ClippedShPLRNN(M, L)
    assert np.all(np.abs(sh["W1"]) <= 1 / np.sqrt(L)) and np.all(np.abs(sh["W2"]) <= 0.5)
    assert np.all(sh["h1"] == 0) and np.all(sh["h2"] == 0)
    assert np.all(cl["h2"] != 0) and np.all(np.abs(cl["h2"]) <= 1 / np.sqrt(L))
    # ALRNN (DurstewitzLab/ALRNN-DSR): W Gaussian with standard deviation 0.01
    al = ALRNN(20, 4, seed=1)
    assert 0.008 < al["W"].std() < 0.012 and abs(al["W"].mean()) < 0.002
    assert np.all(al["h"] == 0)
    # PLRNN (GTF-shPLRNN initialize_A_W_h): A + W is one symmetric positive-definite matrix
    # with largest eigenvalue 1, W its off-diagonal part
    pl = PLRNN(M)
    K = np.diag(pl["A"]) + pl["W"]
    np.testing.assert_array_equal(np.diagonal(pl["W"]), 0.0)
    np.testing.assert_array_equal(K, K.T)
    eig = np.linalg.eigvalsh(K)
    assert eig.min() > 0 and abs(eig.max() - 1) < 1e-12 and np.all(pl["h"] == 0)


@pytest.mark.parametrize(
    "make",
    [
        lambda s: ALRNN(3, 1, seed=s),
        lambda s: ALRNN(20, 4, 5, seed=s),
        lambda s: PLRNN(3, seed=s),
        lambda s: PLRNN(20, 5, seed=s),
        lambda s: ClippedShPLRNN(3, 16, seed=s),
        lambda s: ClippedShPLRNN(20, 50, 5, seed=s),
    ],
    ids=["alrnn-3-1", "alrnn-20-4", "plrnn-3", "plrnn-20", "clipped-3-16", "clipped-20-50"],
)
def test_fresh_models_stay_bounded_in_free_runs(make):
    """With the lab's initialisation a fresh ALRNN / PLRNN starts near a stable linear map:
    2000 free steps from a standard-normal state stay bounded (the uniform +-1/sqrt(M) W
    used before diverged in 15 of 20 seeds for ALRNN(3, 1)). A clipped shPLRNN is bounded by
    construction (its clipped relus are; the unclipped ShPLRNN(3, 16) grows past 1e20
    from some of these seeds)."""
    for seed in range(10):
        m = make(seed)
        z0 = np.random.default_rng(seed).standard_normal(m.M)
        assert np.abs(m.simulate(z0, 2000)).max() < 100, seed


def test_hyperparameters_and_param_spec():
    assert ShPLRNN(3, 5).hyperparameters() == {
        "M": 3,
        "L": 5,
        "n_obs": 3,
        "dtype": "float64",
        "seed": 0,
    }
    assert ALRNN(3, 1, dtype="float32").hyperparameters()["P"] == 1
    assert PLRNN(3, 2).hyperparameters() == {"M": 3, "n_obs": 2, "dtype": "float64", "seed": 0}
    assert [n for n, _ in ClippedShPLRNN(4, 6, 3).param_spec()] == [
        "A",
        "W1",
        "W2",
        "h1",
        "h2",
        "L0",
    ]
    assert [n for n, _ in ALRNN(3, 1).param_spec()] == ["A", "W", "h"]
    assert ShPLRNN(3, 5, 2).n_params == 3 + 15 + 15 + 3 + 5 + 2


def test_save_load_round_trip(tmp_path):
    for name in NAMES:
        m = random_model(name, "float32")
        m.standardization = (np.arange(N, dtype=float), np.ones(N))
        path = m.save(tmp_path / f"{name}.npz", metadata={"epoch": 3})
        back = models.load(path)
        assert type(back) is type(m) and back.hyperparameters() == m.hyperparameters()
        np.testing.assert_array_equal(back.params, m.params)
        np.testing.assert_array_equal(back.standardization[0], m.standardization[0])
        assert type(m).load(path).dtype == np.float32
    with pytest.raises(ValueError, match="holds a model of class ClippedShPLRNN, not ShPLRNN"):
        ShPLRNN.load(tmp_path / "ClippedShPLRNN.npz")
    with pytest.raises(ValueError, match="holds a model of class ALRNN, not PLRNN"):
        PLRNN.load(tmp_path / "ALRNN.npz")


def test_save_refuses_what_load_would_refuse(tmp_path):
    """save runs load's checks first: no file is written that models.load rejects."""
    target = tmp_path / "m.npz"
    good = ShPLRNN(M, L, N)
    good.standardization = (np.zeros(N), np.ones(N))
    nan_params = ShPLRNN(M, L, N)
    nan_params.params[3] = np.nan  # written directly, bypassing set_params
    plrnn = PLRNN(M, N)
    plrnn["W"][1, 1] = 0.5
    bad = [
        (good, {"metadata": [1, 2]}, TypeError, r"metadata must be a dict .*got list\. Wrap it"),
        (good, {"metadata": {"a": np.zeros(2)}}, TypeError, r"cannot be stored as JSON.*ndarray"),
        (good, {"metadata": {1: "x"}}, TypeError, r"keys must be strings .*has the key 1 \(int\)"),
        (
            good,
            {"metadata": {"runs": [{"a": 1}, {None: 2}]}},
            TypeError,
            r"metadata\['runs'\]\[1\] has the key None \(NoneType\)\. Convert the keys",
        ),
        (nan_params, {}, ValueError, r"invalid params \(ShPLRNN\.set_params: parameters contain"),
        (plrnn, {}, ValueError, r"invalid params \(PLRNN\.set_params: the diagonal of W"),
    ]
    edited = good.copy()
    edited.standardization[1][1] = 0.0  # written in place, bypassing the setter's checks
    bad.append((edited, {}, ValueError, r"the standardisation must have .* data_std > 0"))
    for model, kw, exc, match in bad:
        name = type(model).__name__
        with pytest.raises(exc, match=rf"^{name}\.save: .*{match}"):
            model.save(target, **kw)
        assert not target.exists()
    meta = {"epoch": np.int64(3), "loss": np.float32(0.5), "ok": np.bool_(True)}
    _, back = models.load_with_metadata(good.save(target, metadata=meta))
    assert back == {"epoch": 3, "loss": 0.5, "ok": True}
    assert type(back["epoch"]) is int and type(back["loss"]) is float


def test_model_files_carry_a_format_version(tmp_path):
    path = ALRNN(M, P).save(tmp_path / "m.npz")
    with np.load(path) as npz:
        assert int(npz["format_version"]) == FORMAT_VERSION == 1
        version = str(npz["parscan_version"]) if "parscan_version" in npz.files else None
    assert version in (None, parscan.__version__)
    old = corrupt_variant(tmp_path, path, "old", format_version=None, parscan_version=None)
    np.testing.assert_array_equal(models.load(old).params, ALRNN(M, P).params)  # format 1
    newer = corrupt_variant(tmp_path, path, "newer", format_version=np.array(2))
    with pytest.raises(ValueError, match=r"newer\.npz has model-file format 2 .*Upgrade parscan"):
        models.load(newer)
    odd = corrupt_variant(tmp_path, path, "odd", format_version=np.array("1"))
    with pytest.raises(ValueError, match=r"odd\.npz: format_version must be a positive integer"):
        models.load(odd)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_saved_files_get_the_umask_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = ShPLRNN(M, L).save(tmp_path / "sub" / "m.npz")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [f.name for f in path.parent.iterdir()] == ["m.npz"]  # no temporary file left


def test_a_replaced_file_keeps_its_mode_and_long_names_save(tmp_path):
    path = ShPLRNN(M, L).save(tmp_path / "m.npz")
    path.chmod(0o600)
    ShPLRNN(M, L).save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    long_name = tmp_path / ("x" * 240 + ".npz")  # 244 characters: the temporary name is cut
    assert models.load(ShPLRNN(M, L).save(long_name)).M == M


def test_a_failed_write_names_save_and_the_path_and_keeps_the_file(tmp_path, monkeypatch):
    path = ShPLRNN(M, L).save(tmp_path / "m.npz")
    before = path.read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", full_disk)
    with pytest.raises(OSError) as err:
        ShPLRNN(M, L).save(path)
    assert err.value.errno == errno.ENOSPC
    assert str(err.value) == (
        f"ShPLRNN.save: cannot write {path} (No space left on device); a file already there is "
        "unchanged. Fix that or choose another path."
    )
    assert path.read_bytes() == before and [f.name for f in tmp_path.iterdir()] == ["m.npz"]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs the /proc file system")
def test_a_save_refused_by_the_os_keeps_its_class_and_hides_the_temporary_file():
    with pytest.raises(OSError) as err:
        ShPLRNN(M, L).save("/proc/x.npz")
    with pytest.raises(OSError) as direct:
        open("/proc/x.npz", "x")
    assert type(err.value) is type(direct.value) and err.value.errno == direct.value.errno
    assert str(err.value).startswith(
        f"ShPLRNN.save: cannot write /proc/x.npz ({direct.value.strerror}); "
    )
    assert ".tmp" not in str(err.value)


def test_a_subclass_outside_the_library_is_refused_before_writing(tmp_path):
    class MyShPLRNN(ShPLRNN):
        pass

    with pytest.raises(ValueError, match=r"^MyShPLRNN\.save: the model to write to .*unknown"):
        MyShPLRNN(M, L).save(tmp_path / "m.npz")
    assert not list(tmp_path.iterdir())


# ---- errors ---------------------------------------------------------------------------


def test_checks_gathers_the_problems_and_picks_the_exception_type():
    with pytest.raises(ValueError) as err, Checks("f") as checks:
        assert checks.integer(np.int64(2), "a") == 2 and type(checks.integer(2, "a")) is int
        assert checks.integer(0, "b") == 0 and checks.choice("y", "c", ("x",)) == "y"
        assert checks.ok("a") and not checks.ok("a", "b") and not checks.ok("c")
    assert str(err.value) == "f: b must be >= 1; got 0. c must be one of ('x',); got 'y'."
    checks = Checks("g")
    assert (
        checks.real(2, "d", positive=True) == 2.0 and checks.real("2", "e", positive=False) == "2"
    )
    with checks.caught("h"):
        raise ValueError("g: h must be 1-D; got shape (2, 2).")
    with pytest.raises(TypeError, match=r"^g: e must be a real number; got str\. h must be 1-D"):
        checks.raise_problems()  # one problem of kind: TypeError, with the value problem too

    class SpecialError(ValueError):
        pass

    with pytest.raises(SpecialError), checks.caught():  # subclasses keep their meaning
        raise SpecialError("kept")
    with pytest.raises(KeyError), Checks("k") as checks:  # an error in the block is not masked
        checks.integer(0, "n")
        raise KeyError("x")


def test_constructors_report_every_bad_argument_and_skip_comparisons_with_bad_ones():
    with pytest.raises(TypeError) as err:
        ALRNN(2.0, 3, n_obs=5, seed=-1)  # P > M and n_obs > M are not compared with M=2.0
    assert str(err.value) == "ALRNN: M must be an int; got float. seed must be >= 0; got -1."
    with pytest.raises(ValueError) as err:
        ALRNN(2, 3, n_obs=5)
    assert str(err.value) == (
        "ALRNN: the number of relu units P must be <= M; got P=3, M=2. n_obs must be <= M (the "
        "observations are the first n_obs latents); got n_obs=5, M=2. Increase M or reduce n_obs."
    )
    with pytest.raises(TypeError, match=r"^ShPLRNN: L must be >= 1; got 0\. n_obs .* got None\.$"):
        ShPLRNN(3, 0, 4, dtype=None)
    with pytest.raises(ValueError, match=r"^PLRNN: M must be >= 1; got 0\. n_obs must be >= 1"):
        PLRNN(0, n_obs=0)
    model = ShPLRNN(3, 4)
    with pytest.raises(ValueError, match=r"^ShPLRNN.simulate: `z0` must have shape .* n_steps"):
        model.simulate(np.zeros(2), -1)
    with pytest.raises(TypeError, match=r"^ShPLRNN.param_vjp: `z_prev` must .* `cotangent` must"):
        model.param_vjp(np.zeros(2), np.zeros(3, dtype=np.float32))
    with pytest.raises(TypeError, match=r"step_and_jacobian: backend must .* `diag` must be a"):
        model.step_and_jacobian(np.zeros(3), diag=1, backend="gpu")


@pytest.mark.parametrize("cls", [ShPLRNN, ClippedShPLRNN, ALRNN, PLRNN])
def test_python_argument_errors_name_the_class_called(cls):
    with pytest.raises(TypeError, match=rf"^{cls.__name__}\.__init__\(\) got an unexpected"):
        cls(3, 2, foo=1)


def test_a_seed_of_4300_digits_is_written_and_read(tmp_path):
    model = ALRNN(3, 1, seed=10**4300 - 1)
    model.save(tmp_path / "m.npz")
    assert ALRNN.load(tmp_path / "m.npz").seed == 10**4300 - 1


def test_constructor_errors():
    with pytest.raises(ValueError, match=r"ShPLRNN: n_obs must be <= M.*n_obs=4, M=3"):
        ShPLRNN(3, 5, 4)
    with pytest.raises(ValueError, match="ALRNN: the number of relu units P must be <= M"):
        ALRNN(3, 4)
    with pytest.raises(TypeError, match="ClippedShPLRNN: L must be an int"):
        ClippedShPLRNN(3, 5.0)
    with pytest.raises(ValueError, match="PLRNN: M must be >= 1"):
        PLRNN(0)
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        ShPLRNN(3, 5, dtype="float16")
    for dtype in (None, "bogus", ">f8"):
        with pytest.raises(TypeError, match=r"^ALRNN: dtype must be float32 or float64"):
            ALRNN(3, 1, dtype=dtype)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        ALRNN(3, 1, seed=-1)
    # seeds a model file could not write (it failed on save, after training)
    with pytest.raises(ValueError, match=r"^ALRNN: seed must be >= 0 with at most 4300 .* 5000 di"):
        ALRNN(3, 1, seed=10**5000)
    with pytest.raises(ValueError, match=r"^PLRNN: seed must be >= 0; got a negative int of about"):
        PLRNN(3, seed=-(10**5000))
    with pytest.raises(ValueError, match=r"^ShPLRNN\.init: seed must be >= 0 with at most 4300"):
        ShPLRNN(3, 5).init(10**4300)
    assert ALRNN(3, 1, seed=10**4300 - 1).seed == 10**4300 - 1  # files write it
    # a NumPy scalar is a value, not a type (its dtype was read)
    with pytest.raises(TypeError, match=r"^ALRNN: dtype must be .*; got np\.float64\(0\.5\)"):
        ALRNN(3, 1, dtype=np.float64(0.5))
    assert ALRNN(3, 1, dtype=np.str_("float32")).dtype == np.float32  # a NumPy string is a name
    with pytest.raises(ValueError, match=r"^ShPLRNN: these dimensions need 2\d{20} parameters"):
        ShPLRNN(10**10, 10**10)  # more elements than an array can have: no int64 wrap-around


def test_an_initialisation_beyond_memory_is_refused_naming_the_dimensions(monkeypatch, tmp_path):
    """init draws float64 scratch larger than a float32 model's parameters (a PLRNN's M x M
    matrices): its MemoryError was raw, from a model whose parameters fit; a file holding
    such a model is too large, not corrupt."""
    ALRNN(3, 1).save(tmp_path / "m.npz")

    def exhausted(self, seed=0):
        raise MemoryError("Unable to allocate 1.07 GiB")

    monkeypatch.setattr(ALRNN, "init", exhausted)
    message = r"^ALRNN: these dimensions need float64 scratch for their initialisation, more "
    with pytest.raises(ValueError, match=message + r".*; reduce the dimensions \(A \(3,\)"):
        ALRNN(3, 1, dtype="float32")
    with pytest.raises(ValueError, match=r"m\.npz holds a model too large for this machine: AL"):
        models.load(tmp_path / "m.npz")


def test_astype_checks_the_values_and_copies_everything():
    m = ShPLRNN(3, 4)
    m.set_params(np.full(m.n_params, 1e39))
    with pytest.raises(
        ValueError, match=r"^ShPLRNN\.astype: parameter 0 = 1e\+39 overflows float32"
    ):
        m.astype("float32")
    for dtype in ("float16", "bogus", None):
        with pytest.raises(TypeError, match=r"^ShPLRNN\.astype: dtype must be float32 or float64"):
            m.astype(dtype)
    pl = PLRNN(3)
    pl["W"][0, 0] = 0.5  # written directly, bypassing set_params
    with pytest.raises(ValueError, match=r"^PLRNN\.astype: the diagonal of W must be zero"):
        pl.astype("float32")
    m = ALRNN(M, P, N)
    m.standardization = (np.zeros(N), np.ones(N))
    for other in (m.copy(), m.astype("float32"), m.astype("float64")):
        assert not np.shares_memory(other.params, m.params)
        for a, b in zip(other.standardization, m.standardization, strict=True):
            np.testing.assert_array_equal(a, b)
            assert not np.shares_memory(a, b)
    np.testing.assert_array_equal(m.astype("float32").params, m.params.astype(np.float32))


def test_initial_state_vjp_checks_its_inputs_and_pairs_positions():
    m = ShPLRNN(M, L, N)
    x0, cot = states((2, 3), seed=20)[..., :N], states((2, 3), seed=21)
    g = m.unflatten(m.initial_state_vjp(x0, cot))
    want = np.einsum("bti,btj->ij", cot[..., N:], x0)
    np.testing.assert_allclose(g["L0"], want, rtol=1e-12)
    assert np.count_nonzero(m.initial_state_vjp(x0, cot)) == (M - N) * N
    np.testing.assert_array_equal(
        m.initial_state_vjp(x0.tolist(), cot.tolist()), m.initial_state_vjp(x0, cot)
    )
    where = r"^ShPLRNN\.initial_state_vjp: "
    with pytest.raises(ValueError, match=where + r"x0 and cotangent must have the same leading"):
        m.initial_state_vjp(x0.reshape(3, 2, N), cot)  # same size, positions paired wrongly
    with pytest.raises(ValueError, match=where + r"cotangent must have shape \(\.\.\., M\)"):
        m.initial_state_vjp(x0, cot[..., :N])
    with pytest.raises(ValueError, match=where + r"x0 must have shape \(\.\.\., N\)"):
        m.initial_state_vjp(cot, cot)
    with pytest.raises(TypeError, match=where + r"cotangent must have dtype float64"):
        m.initial_state_vjp(x0, cot.astype(np.float32))


def test_plrnn_set_params_requires_zero_diagonal():
    m = PLRNN(3)
    theta = m.params.copy()
    m.unflatten(theta)["W"][1, 1] = 0.5
    before = m.params.copy()
    with pytest.raises(ValueError, match=r"PLRNN\.set_params: the diagonal of W must be zero"):
        m.set_params(theta)
    assert np.array_equal(m.params, before)  # nothing half-written
    with pytest.raises(TypeError):  # the dtype check comes first
        m.set_params(np.array(["x"] * m.n_params))


def test_assigning_params_checks_like_set_params_and_keeps_the_array():
    m = ShPLRNN(M, L, N)
    own = m.params
    theta = np.random.default_rng(3).normal(size=m.n_params)
    m.params = theta.astype(np.float32)  # cast into the model's float64 array
    assert m.params is own and m.params.dtype == np.float64
    np.testing.assert_array_equal(m.params, theta.astype(np.float32))
    m.params[...] = theta  # in place, as the optimisers write: the same array, unchecked
    assert m.params is own and np.array_equal(m.params, theta)
    m.params += 1.0
    assert m.params is own and np.array_equal(m.params, theta + 1.0)
    nan = theta.copy()
    nan[5] = np.nan
    bad = [
        (
            theta[:-1],
            ValueError,
            rf"expected shape \({m.n_params},\); got \({m.n_params - 1},\)\.$",
        ),
        (np.append(theta, 0.0), ValueError, rf"expected shape \({m.n_params},\); got"),
        (nan, ValueError, r"parameters contain NaN or inf \(first at index 5\)\.$"),
        (theta.astype(complex), TypeError, r"expected a real numeric \(integer or float\) array"),
    ]
    for value, error, match in bad:
        with pytest.raises(error, match=r"^ShPLRNN\.params: " + match):
            m.params = value
        assert m.params is own and np.array_equal(m.params, theta + 1.0)  # nothing written
    pl = PLRNN(3)
    theta = pl.params.copy()
    pl.unflatten(theta)["W"][1, 1] = 0.5
    with pytest.raises(ValueError, match=r"^PLRNN\.params: the diagonal of W must be zero"):
        pl.params = theta


def test_assigning_standardization_checks_like_load():
    m = ALRNN(M, P, N)
    assert m.standardization is None
    mean, sd = np.arange(N), np.array([1.0, 2.0, 3.0], np.float32)
    m.standardization = (mean, sd)
    got = m.standardization
    assert all(a.dtype == np.float64 and a.shape == (N,) for a in got)
    assert not np.shares_memory(got[1], sd)  # copies
    np.testing.assert_array_equal(got[0], mean)
    where = r"^ALRNN\.standardization: "
    bad = [
        (3, TypeError, r"expected None or a pair \(mean, sd\) of real arrays of shape \(3,\); "),
        ((1, 2, 3), TypeError, r"expected None or a pair .*; got tuple \(1, 2, 3\)\.$"),
        (
            (np.zeros(2), np.ones(4)),
            ValueError,
            r"mean must be a real array of shape \(3,\), one entry per observed dimension; got "
            r"dtype float64, shape \(2,\)\. sd must be .*shape \(4,\)\.$",
        ),
        ((np.zeros(N, bool), np.ones(N)), TypeError, r"mean must be a real array .* dtype bool"),
        (
            (np.zeros(N), np.array([1.0, 0.0, 1.0])),
            ValueError,
            r"the standardisation must have a finite mean and a finite sd > 0; got mean=",
        ),
        (
            (np.array([0.0, np.nan, 0.0]), np.ones(N)),
            ValueError,
            r"the standardisation must have .*; got mean=\[.*nan.*\], sd=",
        ),
    ]
    for value, error, match in bad:
        with pytest.raises(error, match=where + match):
            m.standardization = value
        assert m.standardization is got  # unchanged
    m.standardization = None
    assert m.standardization is None


def test_input_errors():
    m = ShPLRNN(M, L)
    with pytest.raises(TypeError, match=r"ShPLRNN.step: `z` must have the model dtype float64"):
        m.step(np.zeros(M, np.float32))
    with pytest.raises(ValueError, match=r"ShPLRNN.jacobian: `z` must have shape \(\.\.\., 4\)"):
        m.jacobian(np.zeros((2, M + 1)))
    with pytest.raises(ValueError, match="param_vjp: `cotangent` must have the shape"):
        m.param_vjp(np.zeros((2, M)), np.zeros((3, M)))
    with pytest.raises(TypeError, match="simulate: n_steps must be an int"):
        m.simulate(np.zeros(M), 2.0)
    z = np.zeros((2, M))
    with pytest.raises(ValueError, match=r"step_and_jacobian: `out\[1\]` must be .*\(2, 4, 4\)"):
        m.step_and_jacobian(z, out=(np.empty((2, M)), np.empty((2, M))))
    with pytest.raises(TypeError, match=r"`out\[0\]` must have the model dtype float64"):
        m.step_and_jacobian(z, diag=True, out=(np.empty((2, M), np.float32), np.empty((2, M))))
    with pytest.raises(TypeError, match=r"`out\[0\]` must be a numpy array"):
        m.step_and_jacobian(z, diag=True, out=(None, np.empty((2, M))))
    read_only = np.empty((2, M))
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match=r"`out\[1\]` must be a writeable .* not writeable"):
        m.step_and_jacobian(z, diag=True, out=(np.empty((2, M)), read_only))
    with pytest.raises(ValueError, match="must not overlap `z`"):
        m.step_and_jacobian(z, diag=True, out=(z, np.empty((2, M))))
    with pytest.raises(TypeError, match=r"`out` must be a pair"):
        m.step_and_jacobian(z, out=np.empty((2, M)))
    for diag in ("yes", None, 1):
        with pytest.raises(TypeError, match=r"step_and_jacobian: `diag` must be a bool"):
            m.step_and_jacobian(z, diag=diag)
    np.testing.assert_array_equal(m.step_and_jacobian(z, diag=np.True_)[1], m.jacobian_diag(z))


def test_dtype_hint_offers_astype_only_for_model_dtypes():
    m = ShPLRNN(M, L)
    with pytest.raises(
        TypeError, match=r"np\.asarray\(z, dtype=np\.float64\) or model\.astype\('float32'\)\."
    ):
        m.step(np.zeros(M, np.float32))
    for dtype in (np.int64, np.complex128, np.dtype(">f4"), np.float16):
        with pytest.raises(TypeError) as info:
            m.step(np.zeros(M, dtype))
        message = str(info.value)
        assert "model.astype" not in message and "np.asarray(z, dtype=np.float64)." in message
    with pytest.raises(TypeError, match=r"np\.asarray\(x0, dtype=np\.float64\)\.$"):
        m.generate(np.zeros(M, np.int64), 2)
    with pytest.raises(TypeError, match=r"np\.asarray\(z, dtype=np\.float32\) or model\.astype"):
        m.astype("float32").step(np.zeros(M))


@pytest.mark.parametrize("name", NAMES)
def test_out_arrays_must_not_overlap_each_other(name):
    m = CLASSES[name]()
    z = states((3,))
    buf = np.empty((3, M))
    with pytest.raises(ValueError, match=rf"^{name}\.step_and_jacobian: `out\[0\]` and `out\[1\]`"):
        m.step_and_jacobian(z, diag=True, out=(buf, buf))
    big = np.empty(3 * M + 3 * M * M)  # overlapping views of one buffer
    f_out, j_out = big[: 3 * M].reshape(3, M), big[M : M + 3 * M * M].reshape(3, M, M)
    with pytest.raises(ValueError, match="must not overlap each other"):
        m.step_and_jacobian(z, out=(f_out, j_out))
    f_out, j_out = big[: 3 * M].reshape(3, M), big[3 * M :].reshape(3, M, M)  # adjacent: fine
    m.step_and_jacobian(z, out=(f_out, j_out))
    np.testing.assert_array_equal(j_out, m.jacobian(z))


def test_array_likes_are_accepted_like_arrays():
    """Host inputs are array_like throughout (lists included), as in initial_state and
    generate; the views of unflatten write into their vector, so it must be an array."""
    m = ALRNN(M, P, N)
    z, c = states((2,)), states((2,), seed=1)
    np.testing.assert_array_equal(m.step(z.tolist()), m.step(z))
    np.testing.assert_array_equal(m.step_and_jacobian(z.tolist())[1], m.jacobian(z))
    np.testing.assert_array_equal(m.simulate(z.tolist(), 3), m.simulate(z, 3))
    np.testing.assert_array_equal(m.param_vjp(z.tolist(), c.tolist()), m.param_vjp(z, c))
    np.testing.assert_array_equal(m.generate(z[:, :N].tolist(), 3), m.generate(z[:, :N], 3))
    with pytest.raises(TypeError, match=r"ALRNN\.unflatten: expected a numpy array"):
        m.unflatten(m.params.tolist())


@pytest.mark.parametrize("name", NAMES)
def test_lists_take_the_model_dtype_and_arrays_keep_theirs(name):
    """A list (which NumPy would read as float64) is converted to the model's dtype, so that a
    float32 model takes one as a float64 model does; an array of another dtype is still
    refused, and list values that float32 cannot hold are refused rather than made inf."""
    m = random_model(name, "float32")
    z = states((2,), np.float32)
    x0 = np.ascontiguousarray(z[:, :N])
    zl, xl = z.tolist(), x0.tolist()  # Python floats holding the float32 values exactly
    for got, want in [
        (m.step(zl), m.step(z)),
        (m.jacobian(zl), m.jacobian(z)),
        (m.jacobian_diag(zl[0]), m.jacobian_diag(z[0])),
        (m.step_and_jacobian(zl, diag=True)[1], m.jacobian_diag(z)),
        (m.simulate(zl, 3), m.simulate(z, 3)),
        (m.param_vjp(zl, zl), m.param_vjp(z, z)),
        (m.initial_state(xl), m.initial_state(x0)),
        (m.generate(xl, 3), m.generate(x0, 3)),
        (m.generate([[1, 0, -1]], 3), m.generate(np.array([[1, 0, -1]], np.float32), 3)),
    ]:
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)
    for bad in (z.astype(np.float64), z.astype(np.int64)):
        with pytest.raises(
            TypeError, match=rf"^{name}\.step: `z` must have the model dtype float32"
        ):
            m.step(bad)
    with pytest.raises(TypeError, match=rf"^{name}\.generate: x0 must have dtype float32; got fl"):
        m.generate(x0.astype(np.float64), 3)
    with pytest.raises(TypeError, match=r"must have the model dtype float32; got bool"):
        m.step([True] * M)  # not read as 1.0 / 0.0
    with pytest.raises(
        ValueError,
        match=rf"^{name}\.simulate: `z0` has values too large for float32 \(they would become "
        r"inf\); the largest is 1e\+39\. Scale them down, or use a float64 model",
    ):
        m.simulate([1e39] + [0.0] * (M - 1), 2)


class _DeviceLike:
    """Looks like a device array (``__cuda_array_interface__``) without a GPU."""

    def __init__(self):
        self.__cuda_array_interface__ = {"shape": (2, M), "typestr": "<f8", "data": (0, False)}


def test_host_methods_refuse_device_arrays_with_a_host_hint():
    m = ShPLRNN(M, L)
    with pytest.raises(TypeError, match=r"param_vjp: `cotangent` is a device array.*copy_to_host"):
        m.param_vjp(states((2,)), _DeviceLike())
    with pytest.raises(TypeError, match=r"ShPLRNN\.step: `z` is a device array"):
        m.step(_DeviceLike())


@pytest.mark.skipif("cuda" in parscan.available_backends(), reason="numba.cuda can run here")
def test_backend_cuda_is_refused_up_front_without_a_gpu():
    m = ShPLRNN(M, L)
    for z in (states((3,)), np.empty((0, M))):  # also with nothing to evaluate
        with pytest.raises(ValueError, match=r"^ShPLRNN\.step_and_jacobian: backend='cuda' is not"):
            m.step_and_jacobian(z, backend="cuda")


def test_set_params_checks_the_dtype_and_finiteness_after_the_cast():
    m = ShPLRNN(3, 2, dtype="float32")
    with pytest.raises(ValueError, match=r"ShPLRNN\.set_params: parameter 0 = 1e\+300 overflows"):
        m.set_params(np.full(m.n_params, 1e300))
    for bad in (np.ones(m.n_params, complex), np.ones(m.n_params, bool), ["a"] * m.n_params):
        with pytest.raises(TypeError, match=r"ShPLRNN\.set_params: expected a real numeric"):
            m.set_params(bad)
    with pytest.raises(ValueError, match=r"parameters contain NaN or inf \(first at index 1\)"):
        m.set_params(np.array([0.0, np.inf] + [0.0] * (m.n_params - 2)))
    np.testing.assert_array_equal(m.params, ShPLRNN(3, 2, dtype="float32").params)  # unchanged
    m.set_params(np.arange(m.n_params))
    assert m.params.dtype == np.float32 and m.params[-1] == m.n_params - 1


def corrupt_variant(tmp_path, path, name, **changes):
    """A copy of the model file ``path`` with entries replaced (None: removed)."""
    with np.load(path) as npz:
        fields = dict(npz)
    for key, value in changes.items():
        if value is None:
            del fields[key]
        else:
            fields[key] = value
    out = tmp_path / f"{name}.npz"
    np.savez(out, **fields)
    return out


def test_load_rejects_corrupt_or_foreign_files_naming_the_path(tmp_path):
    m = ShPLRNN(M, L, N)
    m.standardization = (np.zeros(N), np.ones(N))
    path = m.save(tmp_path / "good.npz")
    hyper = json.dumps({**m.hyperparameters(), "foo": 1})
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(path.read_bytes()[:300])
    single = tmp_path / "single.npz"
    with open(single, "wb") as fh:  # an .npy saved under an .npz name
        np.save(fh, np.zeros(3))
    text = tmp_path / "text.npz"
    text.write_text("M = 4\n")
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    vast = tmp_path / "vast.npz"  # params.npy's header declares 2^57 float64: 1 EiB, beyond
    # any address space (and so refused even where the kernel overcommits memory)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (2**57,)}
    )
    with zipfile.ZipFile(path) as good, zipfile.ZipFile(vast, "w") as bad:
        for name in good.namelist():
            body = header.getvalue() + bytes(64) if name == "params.npy" else good.read(name)
            bad.writestr(name, body)
    cases = [
        (vast, r"vast\.npz declares an array larger than this machine can hold \(.*\)\. It may "),
        (truncated, r"truncated\.npz is not a readable \.npz file \(BadZipFile"),
        (single, r"single\.npz: it is an \.npy file \(one array\), not an \.npz archive"),
        (text, r"text\.npz: it is not a NumPy file \(it looks like text\); check the path"),
        (empty, r"empty\.npz: it is empty \(0 bytes\)"),
        (
            corrupt_variant(tmp_path, path, "unknown", hyperparameters=np.array(hyper)),
            r"unknown\.npz: the hyperparameters .* do not build a ShPLRNN .*'foo'",
        ),
        (
            corrupt_variant(tmp_path, path, "hjson", hyperparameters=np.array('{"M": 4,')),
            r"hjson\.npz: the 'hyperparameters' entry is not valid JSON",
        ),
        (
            corrupt_variant(tmp_path, path, "mjson", metadata=np.array("{oops")),
            r"mjson\.npz: the 'metadata' entry is not valid JSON",
        ),
        (
            corrupt_variant(tmp_path, path, "deep", metadata=np.array("[" * 10**5 + "]" * 10**5)),
            r"deep\.npz: the 'metadata' entry is not valid JSON \(nested too deeply to read\)",
        ),
        (
            corrupt_variant(tmp_path, path, "digits", metadata=np.array("[" + "9" * 5000 + "]")),
            r"digits\.npz: the 'metadata' entry is not valid JSON \(a number too long to read\);",
        ),
        (
            corrupt_variant(tmp_path, path, "mlist", metadata=np.array("[1]")),
            r"mlist\.npz: the 'metadata' entry must be a JSON object .*got list",
        ),
        (
            corrupt_variant(tmp_path, path, "nostd", data_std=None),
            r"nostd\.npz has data_mean but not data_std",
        ),
        (
            corrupt_variant(tmp_path, path, "nomean", data_mean=None),
            r"nomean\.npz has data_std but not data_mean",
        ),
        (
            corrupt_variant(tmp_path, path, "length", data_mean=np.zeros(2)),
            r"length\.npz: data_mean must be a real array of shape \(3,\).*shape \(2,\)",
        ),
        (
            corrupt_variant(tmp_path, path, "params", params=np.zeros(2)),
            r"params\.npz: invalid params \(ShPLRNN\.set_params: expected shape",
        ),
    ]
    for i, sd in enumerate(([1.0, 0.0, 1.0], [1.0, -1.0, 1.0], [1.0, np.nan, 1.0])):
        file = corrupt_variant(tmp_path, path, f"sd{i}", data_std=np.array(sd))
        cases.append((file, rf"sd{i}\.npz: the standardisation must have .* data_std > 0"))
    for file, match in cases:
        with pytest.raises(ValueError, match=r"models\.load: .*" + match):
            models.load(file)
    with pytest.raises(ValueError, match=r"models\.load: .* is a directory, not a model file"):
        models.load(tmp_path)
    for missing in (tmp_path / "missing.npz", path / "model.npz"):  # the latter under a file
        with pytest.raises(FileNotFoundError, match=r"models\.load: no such file") as info:
            models.load(missing)
        assert isinstance(info.value, ValueError)


def test_save_and_load_refuse_devices_pipes_and_impossible_names(tmp_path):
    """Replacing a device or pipe would swap it out of the file system (as root: /dev/null);
    a NUL byte or an over-long name got Python's errors, naming no function."""
    model = ShPLRNN(3, 8)
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    with pytest.raises(OSError, match=r"^ShPLRNN\.save: cannot write .*it is not a regular "):
        model.save(pipe)  # (not tried on a device: a regression would replace it)
    assert stat.S_ISFIFO(pipe.stat().st_mode)
    for under in (pipe / "m.npz", pipe / "sub" / "m.npz"):  # it said "File exists"
        with pytest.raises(
            NotADirectoryError, match=rf"cannot write {under} \({pipe} is a file, not a folder\)"
        ):
            model.save(under)
    broken = tmp_path / "broken"
    broken.symlink_to(tmp_path / "nowhere")
    with pytest.raises(
        FileNotFoundError, match=rf"cannot write {broken}/m\.npz \({broken} is a broken symbolic"
    ):
        model.save(broken / "m.npz")
    for path in (pipe, Path(os.devnull)):
        with pytest.raises(ValueError, match=r"^models\.load: .* is not a regular file \(a dev"):
            models.load(path)
    with pytest.raises(ValueError, match=r"^ShPLRNN\.save: the path .* contains a NUL byte"):
        model.save(f"{tmp_path}/a\0b.npz")
    with pytest.raises(ValueError, match=r"^models\.load: the path .* contains a NUL byte"):
        models.load(f"{tmp_path}/a\0b.npz")
    with pytest.raises(ValueError, match=r"^models\.load: cannot read .*\(File name too long\)"):
        models.load(tmp_path / ("a" * 300 + ".npz"))


def test_a_ragged_standardization_is_refused_by_name():
    model = ALRNN(5, 2, 3)
    with pytest.raises(TypeError, match=r"^ALRNN.standardization: mean must be a real array of "
                       r"shape \(3,\); got a ragged list that is no array\.$"):  # fmt: skip
        model.standardization = ([[1, 2], [3]], [1, 1, 1])


def test_a_model_pickled_before_params_became_a_property_unpickles():
    import pickle

    model = ALRNN(5, 2, 3, seed=1)
    model.standardization = (np.zeros(3), np.ones(3))
    old = model.__dict__.copy()  # as pickled before: plain attributes
    old["params"], old["standardization"] = old.pop("_params"), old.pop("_standardization")
    restored = ALRNN.__new__(ALRNN)
    restored.__setstate__(old)
    np.testing.assert_array_equal(restored.params, model.params)
    assert restored.standardization[1].tolist() == [1.0, 1.0, 1.0]
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(model)).params, model.params)


def test_inputs_that_are_no_numbers_or_too_large_are_refused_naming_the_method(monkeypatch):
    """None, a str or a dict as a state is a TypeError about its kind (it was "shape ()"); a
    batch of states too large to allocate is a ValueError naming the method (a raw
    MemoryError; here without a reading of the memory available); a block name that is no
    str says what is available."""
    monkeypatch.setattr(_buffers, "available_bytes", lambda: None)
    model = ShPLRNN(3, 4)
    for given, shown in (
        (None, "NoneType None"),
        ("abc", "str 'abc'"),
        ({"a": 1}, "dict"),
        (np.zeros((2, 2, 3), "U3"), r"ndarray \(dtype <U3\)"),  # the dtype once, not per axis
    ):
        with pytest.raises(TypeError, match=rf"^ShPLRNN.step: `z` must be a real numeric array; "
                           rf"got {shown}\.$"):  # fmt: skip
            model.step(given)
        with pytest.raises(TypeError, match=r"^ShPLRNN.initial_state: x0 must be a real numeric"):
            model.initial_state(given)
    huge = np.broadcast_to(np.zeros(3), (10**11, 3))
    for method, what in (("simulate", "`z0`'s states"), ("step", "`z`'s states"),
                         ("initial_state", "the states")):  # fmt: skip
        with pytest.raises(
            ValueError, match=rf"^ShPLRNN.{method}: {what} need 2.18 TiB, more than this machine "
        ):
            getattr(model, method)(huge, 0) if method == "simulate" else getattr(model, method)(
                huge
            )
    with pytest.raises(TypeError, match=r"^ShPLRNN: a parameter block is named by a str; got list"):
        model[["A"]]


def test_float32_messages_and_runs_in_data_units_stay_finite_or_refuse():
    """A finite x0 beyond float32 in the standardised units is refused (the runs were all NaN);
    the value a "too large" message reports is the largest finite one, not an inf beside it."""
    model = ShPLRNN(2, 4, dtype="float32")
    model.standardization = (np.zeros(2), np.ones(2))
    with pytest.raises(ValueError, match=r"^ShPLRNN.generate_in_data_units: x0 in the model's "
                       r"standardised units reaches 1e\+39, beyond float32"):  # fmt: skip
        model.generate_in_data_units(np.array([1e39, 0.0]), 2)
    with pytest.raises(ValueError, match=r"the largest is 1e\+300\. Scale them down"):
        ShPLRNN(3, 4, dtype="float32").step([np.inf, 1e300, 0.0])


def test_generate_returns_the_observed_part_alone_and_a_held_diagonal_gets_no_gradient():
    """generate's result owns only the N observed columns (a view kept all M latents of every
    step alive); a PLRNN's diag(W) gradient is 0 also at a NaN state (it was NaN)."""
    runs = ALRNN(20, 4, 3).generate(np.zeros((10, 3)), 100)
    assert runs.flags.c_contiguous and (runs.base is None or runs.base.nbytes == runs.nbytes)
    model = PLRNN(3)
    grad = model.unflatten(model.param_vjp([np.nan, 0.1, 0.2], [1.0, 1.0, 1.0]))
    assert np.array_equal(np.diag(grad["W"]), np.zeros(3))
