"""Device-resident Newton iterations of ``deer_solve(backend="cuda")`` (``parscan._deer_cuda``).

* PTX: every kernel x float32/float64 compiles with ``cuda.compile_ptx`` for cc 9.0 (no GPU
  needed; skipped under the simulator);
* ``cudasim``: the kernels run in the simulator (``NUMBA_ENABLE_CUDASIM=1``) with tiny launch
  shapes, so grid-stride loops wrap and every sequence's norm spans several blocks, against
  the CPU kernels and the host Newton loop (per-sequence stopping, compaction, NaN inputs,
  free runs);
* ``gpu``: the same solve at realistic sizes on a real GPU.

This module imports cleanly with and without the simulator.
"""

import os

import numpy as np
import pytest
from numba import cuda
from test_models import random_model

from autodiff import _deer_adjoint_cuda
from autodiff.gradients import gtf_loss_and_grad
from models import _cuda_eval
from parscan import _buffers, _cuda, _deer_cuda, deer, deer_solve, sequential_solve
from parscan._deer_kernels import update_norms
from parscan.gtf import GTFGuaranteeWarning

CUDASIM = os.environ.get("NUMBA_ENABLE_CUDASIM", "") == "1"
SIM_LAUNCH = _deer_cuda.Launch(threads=4, max_blocks=2, norm_items=2)


@pytest.mark.skipif(CUDASIM, reason="the simulator has no PTX compiler")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_ptx_compiles(no_device_context, dtype):
    kernels = [*_deer_cuda.kernel_signatures(dtype), *_deer_adjoint_cuda.kernel_signatures(dtype)]
    for py_func, signature in kernels:
        ptx, _ = cuda.compile_ptx(py_func, signature, cc=(9, 0))
        assert ".entry" in ptx and "malloc" not in ptx, py_func.__name__


@pytest.fixture
def sim_launch(monkeypatch):
    monkeypatch.setattr(_deer_cuda, "LAUNCH", SIM_LAUNCH)
    monkeypatch.setattr(_cuda_eval, "LAUNCH", _cuda_eval.EvalLaunch(threads=4, max_blocks=2))
    monkeypatch.setattr(_cuda, "LAUNCH", _cuda.Launch(block=8, items=2, dense_block=4))


@pytest.fixture
def device_only(monkeypatch):
    """Every ``backend="cuda"`` solve of the test must use the device buffers and scan device
    arrays only (host solves for comparison are left alone)."""
    made, scans = [], []
    buffers, linear_scan = deer._newton_buffers, _deer_cuda.linear_scan

    def recording_buffers(model, p, guess, diag, backend, where):
        work = buffers(model, p, guess, diag, backend, where)
        made.append((backend, type(work) is _deer_cuda.DeviceNewton))
        return work

    def recording_scan(a, b, *args, **kw):
        scans.append(isinstance(b, np.ndarray))
        return linear_scan(a, b, *args, **kw)

    monkeypatch.setattr(deer, "_newton_buffers", recording_buffers)
    monkeypatch.setattr(_deer_cuda, "linear_scan", recording_scan)
    monkeypatch.setattr(_deer_adjoint_cuda, "linear_scan", recording_scan)
    yield
    assert any(backend == "cuda" for backend, _ in made)
    assert all(on_device == (backend == "cuda") for backend, on_device in made)
    assert scans and not any(scans)


@pytest.mark.cudasim
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_sim_norm_partials_match_cpu(sim_launch, dtype):
    rng = np.random.default_rng(0)
    new = rng.normal(size=(4, 7, 3)).astype(dtype)
    old = (new + rng.normal(scale=1e-6, size=new.shape)).astype(dtype)
    old[0] = new[0]  # within tolerance
    new[2, 5, 1] = np.nan
    old[3, 0, 2] = np.inf
    new[3, 6, 0] = -np.inf
    want = np.empty(4), np.empty(4, bool), np.empty(4, bool)
    update_norms(new, old, 1e-7, 1e-8, *want)
    chunk = SIM_LAUNCH.threads * SIM_LAUNCH.norm_items  # 8 elements: 3 blocks per row
    n_chunks = -(-21 // chunk)
    parts = cuda.device_array((4, 3, n_chunks), np.float64)
    kernel = _deer_cuda._norm_kernel(SIM_LAUNCH.threads)
    d_new, d_old = cuda.to_device(new.reshape(4, 21)), cuda.to_device(old.reshape(4, 21))
    kernel[4 * n_chunks, SIM_LAUNCH.threads](d_new, d_old, 1e-7, 1e-8, chunk, parts)
    biggest, ok, fin = parts.copy_to_host().transpose(1, 0, 2)
    assert set(np.unique(ok)) | set(np.unique(fin)) <= {0.0, 1.0}
    np.testing.assert_array_equal(biggest.max(axis=1), want[0])  # NaN in row 2, inf in row 3
    np.testing.assert_array_equal(ok.min(axis=1) == 1, want[1])
    np.testing.assert_array_equal(fin.min(axis=1) == 1, want[2])
    assert list(want[1]) == [True, False, False, False] and list(want[2]) == [1, 1, 0, 0]


def _problem(model, B, T, seed=3):
    rng = np.random.default_rng(seed)
    z0 = rng.standard_normal((B, model.M)).astype(model.dtype)
    forcing = rng.standard_normal((B, T, model.n_obs)).astype(model.dtype)
    return z0, forcing


@pytest.mark.cudasim
@pytest.mark.parametrize("jacobian", ["full", "diag"])
def test_sim_sequences_stop_at_different_iterations(sim_launch, device_only, jacobian):
    """Per-sequence alphas: sequences converge at different iterations, are copied out and
    the rest compacted on the device; states and counts equal the host loop's."""
    model = random_model("ALRNN")
    model["A"][...] *= 0.5
    z0, forcing = _problem(model, 3, 6)
    kw = {"forcing": forcing, "alpha": np.array([1.0, 0.0, 0.5]), "jacobian": jacobian}
    got = deer_solve(model, z0, backend="cuda", **kw)
    want = _host_solve(model, z0, **kw)
    assert len(set(want.n_iter.tolist())) > 1  # the compaction path ran
    np.testing.assert_array_equal(got.n_iter, want.n_iter)
    np.testing.assert_allclose(got.states, want.states, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got.predictions, want.predictions, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got.residuals, want.residuals, rtol=1e-6, atol=1e-14)


def _host_solve(model, z0, **kw):
    """The same solve on the host buffers (the CPU backend)."""
    return deer_solve(model, z0, backend="cpu", **kw)


@pytest.mark.cudasim
def test_sim_non_finite_input_and_free_run(sim_launch, device_only):
    model = random_model("ShPLRNN")
    model["A"][...] *= 0.5
    z0, forcing = _problem(model, 3, 5)
    forcing[1, 2, 0] = np.nan
    got = deer_solve(model, z0, forcing=forcing, alpha=0.5, backend="cuda", throw=False)
    want = _host_solve(model, z0, forcing=forcing, alpha=0.5, throw=False)
    assert got.status is want.status is deer.DeerStatus.NON_FINITE
    np.testing.assert_array_equal(got.converged, [True, False, True])
    np.testing.assert_array_equal(got.n_iter, want.n_iter)
    np.testing.assert_allclose(got.states, want.states, rtol=1e-12, atol=1e-12)  # NaN placed alike
    free = deer_solve(model, z0, 4, backend="cuda")  # no forcing: N = 0 on the device
    np.testing.assert_allclose(free.states, _host_solve(model, z0, T=4).states, rtol=1e-12)


def _check_against_the_sequential_loop(B, T):
    """A forced ShPLRNN solved on the device, full and quasi-DEER, equals the sequential loop."""
    model = random_model("ShPLRNN")
    model["A"][...] *= 0.5
    z0, forcing = _problem(model, B, T)
    seq = sequential_solve(model, z0, forcing=forcing, alpha=0.3)
    for jacobian in ("full", "diag"):
        res = deer_solve(model, z0, forcing=forcing, alpha=0.3, jacobian=jacobian, backend="cuda")
        np.testing.assert_allclose(res.states, seq, rtol=1e-8, atol=1e-8, err_msg=jacobian)


@pytest.mark.cudasim
def test_sim_memory_check_counts_the_host_arrays_of_a_device_solve(
    sim_launch, device_only, monkeypatch
):
    """On the GPU the host holds only the guess, states and predictions (3 M numbers a
    step), not the Jacobians (M (5 + M)): memory that refuses the host solve lets the
    device solve run; less than the host arrays refuses it too, naming them."""
    model = random_model("ShPLRNN")
    model["A"][...] *= 0.5
    z0, forcing = _problem(model, 2, 6)
    M, positions = model.M, 2 * 6
    host, whole = positions * 3 * M * 8, positions * M * (5 + M) * 8
    monkeypatch.setattr(_buffers, "CHECKED_BYTES", 0)
    monkeypatch.setattr(_buffers, "available_bytes", lambda: (host + whole) // 2)
    kw = {"forcing": forcing, "alpha": 0.3}
    with pytest.raises(ValueError, match=r"for the Newton solve, more than .* available now"):
        deer_solve(model, z0, backend="cpu", **kw)
    np.testing.assert_allclose(
        deer_solve(model, z0, backend="cuda", **kw).states,
        sequential_solve(model, z0, **kw),
        rtol=1e-8,
    )
    monkeypatch.setattr(_buffers, "available_bytes", lambda: host - 1)
    with pytest.raises(ValueError, match=r"for the host's copies, more than .* available now"):
        deer_solve(model, z0, backend="cuda", **kw)


@pytest.mark.cudasim
def test_sim_solve_equals_the_sequential_loop(sim_launch, device_only):
    _check_against_the_sequential_loop(2, 6)


@pytest.mark.gpu
def test_gpu_solve_equals_the_sequential_loop(device_only):
    _check_against_the_sequential_loop(2, 40)


@pytest.mark.cudasim
@pytest.mark.parametrize(
    ("name", "dtype", "n_forced"),
    [
        ("ShPLRNN", "float64", None),
        ("ShPLRNN", "float64", 1),
        ("ALRNN", "float32", None),
        ("ALRNN", "float32", 1),
        ("ClippedShPLRNN", "float32", 1),
        ("PLRNN", "float64", None),
    ],
)
def test_sim_gradient_on_device_equals_host(
    sim_launch, device_only, monkeypatch, name, dtype, n_forced
):
    """gtf_loss_and_grad(method="deer", backend="cuda"): forward, loss, Jacobians, reverse scan
    and parameter VJP on the device, the states never downloaded; the same loss and gradient
    as the host adjoint. Every model class, each family in both dtypes (one case each for the
    ClippedShPLRNN and the PLRNN: the simulator is slow)."""

    def no_download(self):
        raise AssertionError("the device gradient downloaded the states")

    monkeypatch.setattr(_deer_cuda.DeviceNewton, "result", no_download)
    model = random_model(name, dtype)
    model["A"][...] *= 0.5
    data = np.random.default_rng(5).standard_normal((2, 7, model.n_obs)).astype(dtype)
    kw = {"alpha": np.array([0.3, 0.6]), "n_forced": n_forced}
    loss, grad, info = gtf_loss_and_grad(model, data, backend="cuda", **kw)
    want_loss, want_grad, want_info = gtf_loss_and_grad(model, data, backend="cpu", **kw)
    np.testing.assert_array_equal(info.newton_iters, want_info.newton_iters)
    tol = 1e-10 if dtype == "float64" else 1e-4
    assert grad.dtype == model.dtype and loss == pytest.approx(want_loss, rel=tol)
    np.testing.assert_allclose(grad, want_grad, rtol=tol, atol=tol * np.abs(want_grad).max())
    if name == "PLRNN":  # the device VJP keeps the zero diag(W) out of the gradient
        assert np.all(np.diag(model.unflatten(grad)["W"]) == 0)


@pytest.mark.cudasim
def test_sim_gradient_of_unconverged_solve_is_refused(sim_launch, device_only):
    model = random_model("ALRNN")
    data = np.random.default_rng(7).standard_normal((2, 9, model.n_obs))
    loss, grad, info = gtf_loss_and_grad(
        model, data, alpha=0.1, backend="cuda", max_iter=1, throw=False
    )
    assert np.isnan(loss) and grad is None and info.status is deer.DeerStatus.MAX_ITER
    with pytest.raises(deer.DeerConvergenceError, match="max_iter"):
        gtf_loss_and_grad(model, data, alpha=0.1, backend="cuda", max_iter=1)


@pytest.mark.gpu
@pytest.mark.parametrize("jacobian", ["full", "diag"])
def test_gpu_device_newton_at_scale(device_only, jacobian):
    model = random_model("ShPLRNN")
    model["A"][...] *= 0.5
    z0, forcing = _problem(model, 5, 30_001)
    kw = {"forcing": forcing, "alpha": np.array([0.9, 0.0, 0.5, 0.2, 0.7]), "jacobian": jacobian}
    got = deer_solve(model, z0, backend="cuda", **kw)
    want = _host_solve(model, z0, **kw)
    np.testing.assert_array_equal(got.converged, want.converged)
    np.testing.assert_allclose(got.states, want.states, rtol=1e-9, atol=1e-9)


@pytest.mark.gpu
def test_gpu_gradient_at_scale(device_only):
    dtype = "float32"  # the training default (float64 is covered by the simulator tests)
    model = random_model("ShPLRNN", dtype)
    model["A"][...] *= 0.5
    data = np.random.default_rng(6).standard_normal((4, 20_001, model.n_obs)).astype(dtype)
    with pytest.warns(GTFGuaranteeWarning):  # n_forced = N < M (it failed the test on a GPU)
        loss, grad, _ = gtf_loss_and_grad(model, data, alpha="auto", backend="cuda")
        want_loss, want_grad, _ = gtf_loss_and_grad(model, data, alpha="auto", backend="cpu")
    tol = 2e-3
    assert loss == pytest.approx(want_loss, rel=tol)
    np.testing.assert_allclose(grad, want_grad, rtol=tol, atol=tol * np.abs(want_grad).max())


@pytest.mark.cudasim
def test_sim_gradient_refuses_a_latent_dimension_the_cuda_adjoint_cannot_scan():
    """The adjoint scans dense M x M Jacobians even after a quasi-DEER forward: M > DMAX is
    refused before the forward solve, not by the scan after it."""
    from models import ALRNN

    model = ALRNN(_cuda.DMAX + 1, 2, 2, seed=0)
    data = np.zeros((1, 3, 2))
    with pytest.raises(ValueError, match=r"gtf_loss_and_grad: backend='cuda': the gradient's"):
        gtf_loss_and_grad(model, data, alpha=0.5, backend="cuda", jacobian="diag")
