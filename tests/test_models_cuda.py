"""CUDA evaluation of F and J for the piecewise-linear models (``models._cuda_eval``).

* PTX: the evaluation kernel of both families x float32/float64 x full/diag compiles with
  ``cuda.compile_ptx`` for cc 9.0 (no GPU needed; skipped under the simulator);
* ``cudasim``: the kernel runs in the simulator (``NUMBA_ENABLE_CUDASIM=1``) on tiny inputs
  with blocks of 4 threads and a grid of 2 blocks (so the grid-stride loop wraps), compared
  with the CPU ``step_and_jacobian``; ``deer_solve(..., backend="cuda")`` equals the CPU run;
* ``gpu``: the same at realistic sizes on a real GPU.

This module imports cleanly with and without the simulator.
"""

import os
import re

import numba
import numpy as np
import pytest
from numba import cuda
from test_models import NAMES, random_model

from models import ALRNN, ShPLRNN, _cuda_eval
from parscan import _cuda, deer_solve, sequential_solve

CUDASIM = os.environ.get("NUMBA_ENABLE_CUDASIM", "") == "1"
SIM_LAUNCH = _cuda_eval.EvalLaunch(threads=4, max_blocks=2, vjp_blocks=2)
SIM_SCAN_LAUNCH = _cuda.Launch(block=8, items=2, dense_block=4, dense_items=2)
#: CPU vs CUDA: the same operations in the same order, but the GPU may contract a*b+c to FMA.
TOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5}


def states(model, shape, seed=0):
    return np.random.default_rng(seed).normal(0.0, 1.5, (*shape, model.M)).astype(model.dtype)


def assert_close(got, want, dtype):
    tol = TOL[np.dtype(dtype)]
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * (1 + np.max(np.abs(want))))


# --------------------------------------------------------------------------- no GPU


@pytest.mark.skipif(CUDASIM, reason="the simulator has no PTX compiler")
@pytest.mark.parametrize("mode", _cuda_eval.MODES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("family", [ShPLRNN(3, 5), ALRNN(4, 2)], ids=["shplrnn", "alrnn"])
def test_ptx_compiles(no_device_context, family, dtype, mode):
    model = family.astype(dtype)
    types = _cuda_eval.arg_types(model.kernel_args())
    ek = _cuda_eval.make_eval_kernel(type(model).step_functions, types, mode)
    assert ek is _cuda_eval.make_eval_kernel(type(model).step_functions, types, mode)  # cached
    ptx, _ = cuda.compile_ptx(ek.py_func, ek.signature, cc=(9, 0))
    assert ".entry" in ptx
    # float32 models stay in float32 (".f64" instructions would be slow on most GPUs)
    assert (re.search(r"\.f64\b", ptx) is not None) == (dtype == "float64")
    assert "malloc" not in ptx  # no allocation in the kernel


@pytest.mark.skipif(CUDASIM, reason="the simulator has no PTX compiler")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("family", [ShPLRNN(3, 5), ALRNN(4, 2)], ids=["shplrnn", "alrnn"])
def test_vjp_ptx_compiles(no_device_context, family, dtype):
    model = family.astype(dtype)
    vk = _cuda_eval.make_vjp_kernel(
        type(model).step_functions, _cuda_eval.arg_types(model.kernel_args())
    )
    sums = _cuda_eval._row_sum_kernel(128)
    f64 = numba.float64
    for py_func, signature in (
        (vk.py_func, vk.signature),
        (sums.py_func, (f64[:, ::1], f64[::1])),
    ):
        ptx, _ = cuda.compile_ptx(py_func, signature, cc=(9, 0))
        assert ".entry" in ptx and "malloc" not in ptx


def test_backend_argument_is_validated():
    model = ShPLRNN(3, 5)
    with pytest.raises(ValueError, match=r"^ShPLRNN.step_and_jacobian: backend must be"):
        model.step_and_jacobian(states(model, (2,)), backend="gpu")
    assert model.supports_cuda_eval is True


def test_arg_types_and_param_views():
    model = ShPLRNN(3, 5, dtype="float32")
    types = _cuda_eval.arg_types(model.kernel_args())
    assert [str(t) for t in types] == [
        "array(float32, 1d, C)",
        "array(float32, 2d, C)",
        "array(float32, 2d, C)",
        "array(float32, 1d, C)",
        "array(float32, 1d, C)",
        "int64",
    ]
    offsets = [_cuda_eval._offset_in(a, model.params) for a in model.kernel_args()[:-1]]
    assert offsets == [0, 3, 18, 33, 36]
    with pytest.raises(TypeError, match=r"^arg_types: "):
        _cuda_eval.arg_types((1.5,))


# --------------------------------------------------------------------------- simulator


@pytest.fixture
def sim_launch(monkeypatch):
    monkeypatch.setattr(_cuda_eval, "LAUNCH", SIM_LAUNCH)
    monkeypatch.setattr(_cuda, "LAUNCH", SIM_SCAN_LAUNCH)


@pytest.mark.cudasim
@pytest.mark.parametrize("diag", [False, True])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", NAMES)
def test_sim_matches_cpu(sim_launch, name, dtype, diag):
    model = random_model(name, dtype)
    for shape in [(), (1,), (3,), (5, 7)]:  # (5, 7): 35 positions over 8 threads
        z = states(model, shape, seed=len(shape))
        f_cpu, j_cpu = model.step_and_jacobian(z, diag)
        f, j = model.step_and_jacobian(z, diag, backend="cuda")  # host in, host out
        assert isinstance(f, np.ndarray) and isinstance(j, np.ndarray)
        assert f.shape == f_cpu.shape and j.shape == j_cpu.shape and f.dtype == model.dtype
        assert_close(f, f_cpu, dtype)
        assert_close(j, j_cpu, dtype)
        d_f, d_j = model.step_and_jacobian(cuda.to_device(z), diag)  # device in, device out
        assert not isinstance(d_f, np.ndarray) and not isinstance(d_j, np.ndarray)
        assert_close(d_f.copy_to_host(), f_cpu, dtype)
        assert_close(d_j.copy_to_host(), j_cpu, dtype)


@pytest.mark.cudasim
def test_sim_out_arrays_and_empty(sim_launch):
    model = random_model("ShPLRNN")
    z = states(model, (2, 3))
    f_cpu, j_cpu = model.step_and_jacobian(z)
    out = (np.empty_like(f_cpu), np.empty_like(j_cpu))
    got = model.step_and_jacobian(z, out=out, backend="cuda")
    assert got[0] is out[0] and got[1] is out[1]
    assert_close(out[1], j_cpu, model.dtype)
    d_out = (cuda.device_array(f_cpu.shape), cuda.device_array(j_cpu.shape))
    got = model.step_and_jacobian(cuda.to_device(z), out=d_out)
    assert got[0] is d_out[0] and got[1] is d_out[1]
    assert_close(d_out[0].copy_to_host(), f_cpu, model.dtype)
    f, j = model.step_and_jacobian(np.empty((0, model.M)), diag=True, backend="cuda")
    assert f.shape == (0, model.M) and j.shape == (0, model.M)
    f, j = model.step_and_jacobian(cuda.device_array((2, 0, model.M)))
    assert tuple(f.shape) == (2, 0, model.M) and tuple(j.shape) == (2, 0, model.M, model.M)


@pytest.mark.cudasim
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", NAMES)
def test_sim_param_vjp_matches_cpu(sim_launch, name, dtype):
    """35 positions over 8 threads: every thread sums several positions into its column."""
    model = random_model(name, dtype)
    z = states(model, (5, 7), seed=2)
    cot = states(model, (5, 7), seed=3)
    want = model.param_vjp(z, cot)
    got = model.param_vjp(cuda.to_device(z), cuda.to_device(cot))
    assert isinstance(got, np.ndarray) and got.dtype == model.dtype and got.shape == want.shape
    assert_close(got, want, dtype)
    np.testing.assert_array_equal(got[model.n_map_params :], 0)
    one_block = _cuda_eval.EvalLaunch(threads=4, max_blocks=2, vjp_blocks=2, vjp_scratch_bytes=1)
    capped = _cuda_eval.param_vjp_cuda(model, cuda.to_device(z), cuda.to_device(cot), one_block)
    assert_close(capped, want, dtype)  # scratch too small for 2 blocks: one block sums all
    empty = model.param_vjp(
        cuda.device_array((0, model.M), model.dtype), cuda.device_array((0, model.M), model.dtype)
    )
    np.testing.assert_array_equal(empty, 0)
    where = rf"^{name}.param_vjp: "
    with pytest.raises(TypeError, match=where + "`cotangent` must be a device array"):
        model.param_vjp(cuda.to_device(z), cot)
    with pytest.raises(ValueError, match=where + "`cotangent` must have the shape of `z_prev`"):
        model.param_vjp(cuda.to_device(z), cuda.to_device(cot[:4]))
    with pytest.raises(TypeError, match=where + "`z_prev` must have the model dtype"):
        model.param_vjp(cuda.to_device(z.astype(np.float16)), cuda.to_device(cot))
    with pytest.raises(TypeError, match=where + "`cotangent` is a device array.*copy_to_host"):
        model.param_vjp(z, cuda.to_device(cot))  # host z_prev: the host path


@pytest.mark.cudasim
@pytest.mark.filterwarnings("ignore:.*invalid value:RuntimeWarning")  # the simulator's NumPy
@pytest.mark.parametrize("name", ["ClippedShPLRNN", "ALRNN"])
def test_sim_non_finite_states_match_cpu(sim_launch, name):
    """relu(-inf) = 0 and NaN propagation are the same on the device as on the CPU."""
    model = random_model(name, "float32")
    if "W2" in model.unflatten():  # every hidden unit reads z[-1] with a positive weight
        model["W2"][:, -1] = np.abs(model["W2"][:, -1]) + 0.5
    z = states(model, (3,))
    z[0, -1], z[1, 0], z[2, 1] = -np.inf, np.nan, np.inf
    f_cpu, j_cpu = model.step_and_jacobian(z)
    f, j = model.step_and_jacobian(z, backend="cuda")
    for got, want in ((f, f_cpu), (j, j_cpu)):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
        ok = np.isfinite(want)
        assert ok[0].any()  # relu(-inf) = 0 leaves finite outputs in row 0
        assert_close(got[ok], want[ok], model.dtype)


@pytest.mark.cudasim
def test_sim_params_follow_model_updates(sim_launch):
    """Parameters travel with every call: an in-place update is seen by the next one."""
    model = random_model("ALRNN")
    z = states(model, (4,))
    model["h"][...] += 1.0
    assert_close(model.step_and_jacobian(z, backend="cuda")[0], model.step(z), model.dtype)


@pytest.mark.cudasim
def test_sim_errors(sim_launch):
    model = random_model("ShPLRNN")
    M = model.M
    z = states(model, (3,))
    d_z = cuda.to_device(z)
    where = r"^ShPLRNN.step_and_jacobian: "
    with pytest.raises(ValueError, match=where + "device arrays need backend 'cuda'"):
        model.step_and_jacobian(d_z, backend="cpu")
    with pytest.raises(TypeError, match=where + r"`out\[0\]` must be a device array"):
        model.step_and_jacobian(d_z, out=(np.empty((3, M)), np.empty((3, M, M))))
    with pytest.raises(ValueError, match=where + r"`out\[1\]` must be a C-contiguous"):
        model.step_and_jacobian(d_z, out=(cuda.device_array((3, M)), cuda.device_array((3, M))))
    with pytest.raises(ValueError, match=where + "`out` arrays must not overlap"):
        model.step_and_jacobian(d_z, diag=True, out=(d_z, cuda.device_array((3, M))))
    d_buf = cuda.device_array((3, M))
    with pytest.raises(ValueError, match=where + r"`out\[0\]` and `out\[1\]` must not overlap"):
        model.step_and_jacobian(d_z, diag=True, out=(d_buf, d_buf))
    buf = np.empty((3, M))  # host arrays with backend="cuda": the CPU path's checks
    with pytest.raises(ValueError, match=where + r"`out\[0\]` and `out\[1\]` must not overlap"):
        model.step_and_jacobian(z, diag=True, out=(buf, buf), backend="cuda")
    with pytest.raises(TypeError, match=where + "`diag` must be a bool"):
        model.step_and_jacobian(d_z, diag="yes")
    with pytest.raises(TypeError, match=where + "`z` must have the model dtype"):
        model.step_and_jacobian(cuda.to_device(z.astype(np.float32)))
    with pytest.raises(ValueError, match=where + rf"`z` must have shape \(\.\.\., {M}\)"):
        model.step_and_jacobian(cuda.to_device(np.ones((3, M + 1))))
    with pytest.raises(ValueError, match=where + "device `z` must be C-contiguous"):
        model.step_and_jacobian(cuda.to_device(np.ones((3, 2 * M)))[:, ::2])
    with pytest.raises(TypeError, match=where + "`z` must have the model dtype"):
        model.step_and_jacobian(z.astype(np.float32), backend="cuda")
    with pytest.raises(TypeError, match=where + "`out` must be a pair"):
        model.step_and_jacobian(z, out=np.empty(3), backend="cuda")


@pytest.mark.cudasim
@pytest.mark.parametrize(
    ("name", "jacobian"),
    [
        ("ClippedShPLRNN", "full"),
        ("ClippedShPLRNN", "diag"),
        ("ALRNN", "full"),
        ("ALRNN", "diag"),
        ("PLRNN", "full"),  # the ShPLRNN: test_deer_cuda.test_sim_solve_equals_the_sequential_loop
    ],
)
def test_sim_deer_backend_cuda_equals_cpu(sim_launch, monkeypatch, name, jacobian):
    model = random_model(name)
    model["A"][...] *= 0.5  # a contracting map: few Newton iterations
    rng = np.random.default_rng(3)
    z0 = rng.standard_normal((2, model.M))
    forcing = rng.standard_normal((2, 9, model.n_obs))
    calls = []
    launch = _cuda_eval.launch_eval
    monkeypatch.setattr(_cuda_eval, "launch_eval", lambda *a: calls.append(1) or launch(*a))
    kw = {"forcing": forcing, "alpha": 0.4, "jacobian": jacobian}
    res = deer_solve(model, z0, backend="cuda", **kw)
    # every Newton iteration on the "GPU", and the predictions at the solution
    assert len(calls) == int(res.n_iter.max()) + 1 >= 2
    cpu = deer_solve(model, z0, backend="cpu", **kw)
    np.testing.assert_array_equal(res.n_iter, cpu.n_iter)
    np.testing.assert_allclose(res.states, cpu.states, rtol=1e-12, atol=1e-12)
    seq = sequential_solve(model, z0, forcing=forcing, alpha=0.4)
    np.testing.assert_allclose(res.states, seq, rtol=1e-8, atol=1e-8)


# --------------------------------------------------------------------------- real GPU


class _Interface:
    """A foreign device array: only ``__cuda_array_interface__``."""

    def __init__(self, array):
        self._array = array
        self.__cuda_array_interface__ = array.__cuda_array_interface__


@pytest.mark.gpu
@pytest.mark.parametrize("diag", [False, True])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(
    "make", [lambda: ShPLRNN(3, 50, seed=1), lambda: ALRNN(16, 8, seed=2)], ids=["sh", "al"]
)
def test_gpu_matches_cpu_at_scale(make, dtype, diag):
    model = make().astype(dtype)
    model["h1" if "h1" in model.unflatten() else "h"][...] = 0.3
    z = states(model, (8, 50_001), seed=5)
    f_cpu, j_cpu = model.step_and_jacobian(z, diag)
    f, j = model.step_and_jacobian(z, diag, backend="cuda")
    assert_close(f, f_cpu, dtype)
    assert_close(j, j_cpu, dtype)
    d_f, d_j = model.step_and_jacobian(_Interface(cuda.to_device(z)), diag)
    assert_close(d_f.copy_to_host(), f_cpu, dtype)
    assert_close(d_j.copy_to_host(), j_cpu, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("jacobian", ["full", "diag"])
def test_gpu_deer_backend_cuda_equals_cpu(jacobian):
    model = ShPLRNN(3, 50, seed=1)
    model["A"][...] *= 0.5
    rng = np.random.default_rng(4)
    z0 = rng.standard_normal((4, 3))
    forcing = rng.standard_normal((4, 10_000, 3))
    kw = {"forcing": forcing, "alpha": "auto", "jacobian": jacobian}
    res = deer_solve(model, z0, backend="cuda", **kw)
    cpu = deer_solve(model, z0, backend="cpu", **kw)
    np.testing.assert_allclose(res.states, cpu.states, rtol=1e-9, atol=1e-9)
    seq = sequential_solve(model, z0, forcing=forcing, alpha=res.alpha)
    np.testing.assert_allclose(res.states, seq, rtol=1e-8, atol=1e-8)
