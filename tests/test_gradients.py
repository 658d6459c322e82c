"""gtf_loss_and_grad: finite differences, DEER vs sequential BPTT, the NumPy BPTT oracle, errors.

Sizes are tiny and float64 almost everywhere: one compile per model family and method (the
generic per-step BPTT kernel, exercised through re-bundled step functions, is compiled once
per process and family; see autodiff/_bptt_kernels).
"""

import contextlib
from functools import partial

import numba
import numpy as np
import pytest
from reference import alrnn_reference_step, gtf_bptt_reference, shplrnn_reference_step

from autodiff import _bptt_alrnn, _bptt_shplrnn
from autodiff.gradients import SEQUENTIAL_DONE, GradInfo, gtf_loss_and_grad
from models import ALRNN, PLRNN, ClippedShPLRNN, LinearSSM, ShPLRNN
from models._plrnn_kernels import StepFunctions
from parscan import DeerConvergenceError, DeerStatus, gtf_alpha
from parscan.deer import SERIAL_BELOW
from parscan.gtf import DEFAULT_MARGIN, GTFGuaranteeWarning

B, T, N = 3, 12, 2
ALPHAS = np.array([0.15, 0.4, 0.0])
FD_STEP = 1e-6
FD_RTOL = 1e-6

MODELS = {
    "shplrnn": lambda: ShPLRNN(3, 6, n_obs=N, seed=1),
    "clipped": lambda: ClippedShPLRNN(3, 6, n_obs=N, seed=2),
    "alrnn": lambda: ALRNN(4, 2, n_obs=N, seed=3),
    "plrnn": lambda: PLRNN(3, n_obs=N, seed=4),
}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return 0.7 * rng.standard_normal((B, T + 1, N))


@pytest.fixture(scope="module", params=list(MODELS))
def model(request):
    m = MODELS[request.param]()
    # Move the parameters off the lab's initialisation so every block matters.
    rng = np.random.default_rng(5)
    mask = _tangent_mask(m)
    m.params[...] += 0.1 * rng.standard_normal(m.n_params) * mask
    return m


def _tangent_mask(model):
    """1 for free parameters, 0 for structurally fixed ones (the PLRNN's zero diag(W))."""
    mask = np.ones(model.n_params)
    if isinstance(model, PLRNN):
        np.fill_diagonal(model.unflatten(mask)["W"], 0.0)
    return mask


def _loss(model, data, params, **kw):
    saved = model.params.copy()
    model.params[...] = params
    try:
        return gtf_loss_and_grad(model, data, **kw)[0]
    finally:
        model.params[...] = saved


def _assert_directional_derivatives(model, data, grad, kw, directions):
    """``grad @ v`` equals the central difference of the loss along each ``v``."""
    p0 = model.params.copy()
    for v in directions:
        fd = (
            _loss(model, data, p0 + FD_STEP * v, **kw) - _loss(model, data, p0 - FD_STEP * v, **kw)
        ) / (2 * FD_STEP)
        assert abs(grad @ v - fd) <= FD_RTOL * abs(fd), (grad @ v, fd)


@pytest.mark.parametrize("method", ["deer", "sequential"])
@pytest.mark.parametrize("n_forced", [None, 1, 0])
def test_gradient_matches_finite_differences(model, data, method, n_forced):
    kw = {"alpha": ALPHAS, "method": method, "n_forced": n_forced}
    loss, grad, info = gtf_loss_and_grad(model, data, **kw)
    if n_forced == 0:  # nothing forced: the free run's loss, whatever alpha is
        free = gtf_loss_and_grad(model, data, alpha=0.0, method=method)[0]
        np.testing.assert_allclose(loss, free, rtol=1e-12)
    assert isinstance(info, GradInfo) and info.converged and info.method == method
    done = DeerStatus.CONVERGED.value if method == "deer" else SEQUENTIAL_DONE
    assert info.message == info.cause == done  # no Newton solve ran for "sequential"
    assert grad.shape == model.params.shape and grad.dtype == model.dtype
    assert np.isfinite(loss)
    rng = np.random.default_rng(11)
    mask = _tangent_mask(model)
    _assert_directional_derivatives(
        model, data, grad, kw, [rng.standard_normal(model.n_params) * mask for _ in range(3)]
    )
    # The initial-state map gets its gradient through initial_state_vjp.
    if "L0" in model.unflatten():
        assert np.any(model.unflatten(grad)["L0"] != 0)


@pytest.mark.parametrize("method", ["deer", "sequential"])
@pytest.mark.parametrize(
    ("make", "shape", "kw"),
    [
        (lambda: ShPLRNN(3, 5, n_obs=3, seed=6), (2, 5, 3), {"alpha": 0.3}),  # M = N: no L0
        (lambda: ALRNN(3, 0, n_obs=1, seed=7), (1, 2, 1), {"alpha": 0.5}),  # T = 1, P = 0
        (lambda: ALRNN(3, 3, n_obs=3, seed=8), (2, 6, 3), {"alpha": 1.0, "n_forced": 2}),
        (lambda: ClippedShPLRNN(4, 5, n_obs=3, seed=9), (3, 7, 3), {"alpha": [1.0, 0.0, 0.6]}),
    ],
    ids=["M=N", "T=1,N=1,P=0", "alpha=1,n_forced<N,P=M", "alpha-per-sequence"],
)
def test_gradient_matches_finite_differences_at_edge_sizes(make, shape, kw, method):
    model = make()
    rng = np.random.default_rng(12)
    model.params[...] += 0.1 * rng.standard_normal(model.n_params)
    data = 0.7 * rng.standard_normal(shape)
    kw = {**kw, "method": method}
    _, grad, info = gtf_loss_and_grad(model, data, **kw)
    assert info.converged
    _assert_directional_derivatives(model, data, grad, kw, rng.standard_normal((2, model.n_params)))


@pytest.mark.parametrize("backend", ["auto", "cpu"])
def test_deer_and_sequential_agree(model, data, backend):
    """``backend="cpu"``: the forward's and the adjoint's threaded scans, parallel over a
    batch that fills the threads, on enough positions (B T >= 2048) to run threaded."""
    if backend == "cpu":
        B = max(4, numba.get_num_threads())
        rng = np.random.default_rng(12)
        data = 0.7 * rng.standard_normal((B, -(-SERIAL_BELOW // B) + 1, N))
    alpha = np.resize(ALPHAS, data.shape[0])
    kw = {"alpha": alpha, "backend": backend}
    l_d, g_d, info_d = gtf_loss_and_grad(model, data, method="deer", **kw)
    l_s, g_s, info_s = gtf_loss_and_grad(model, data, alpha=alpha, method="sequential")
    assert info_d.newton_iters_max >= 1 and info_s.newton_iters_max == 0
    np.testing.assert_allclose(l_d, l_s, rtol=1e-10)
    np.testing.assert_allclose(g_d, g_s, rtol=1e-8, atol=1e-10 * np.abs(g_s).max())


def _reference_step(model):
    """The NumPy oracle's step of ``model`` (tests/reference.py), hyperparameters bound."""
    if isinstance(model, PLRNN):  # every unit a relu, diag(W) held at 0
        return partial(alrnn_reference_step, P=model.M, zero_diag=True)
    if isinstance(model, ALRNN):
        return partial(alrnn_reference_step, P=model.P)
    return partial(shplrnn_reference_step, clipped=isinstance(model, ClippedShPLRNN))


@pytest.mark.parametrize("method", ["deer", "sequential"])
@pytest.mark.parametrize(
    ("make", "kw"),
    [
        (lambda: ShPLRNN(3, 6, n_obs=N, seed=7), {"alpha": ALPHAS, "n_forced": 1}),
        (lambda: ClippedShPLRNN(3, 6, n_obs=N, seed=7), {"alpha": ALPHAS, "n_forced": 1}),
        (lambda: ALRNN(4, 2, n_obs=N, seed=7), {"alpha": ALPHAS, "n_forced": 1}),
        (lambda: ALRNN(3, 0, n_obs=N, seed=7), {"alpha": 0.3, "n_forced": 0}),
        (lambda: ALRNN(3, 3, n_obs=N, seed=7), {"alpha": 1.0}),
        (lambda: PLRNN(4, n_obs=N, seed=7), {"alpha": ALPHAS, "n_forced": 1}),
    ],
    ids=["shplrnn", "clipped", "alrnn", "alrnn-P=0-free", "alrnn-P=M-alpha=1", "plrnn"],
)
def test_matches_numpy_bptt_reference(data, make, kw, method):
    model = make()
    rng = np.random.default_rng(1)
    model.params[...] += 0.1 * rng.standard_normal(model.n_params) * _tangent_mask(model)
    blocks = {k: v.copy() for k, v in model.unflatten().items()}
    ref_loss, ref_grads = gtf_bptt_reference(blocks, _reference_step(model), data, **kw)
    loss, grad, _ = gtf_loss_and_grad(model, data, method=method, **kw)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    for name, g in model.unflatten(grad).items():
        np.testing.assert_allclose(g, ref_grads[name], rtol=1e-8, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("cls", [ShPLRNN, ClippedShPLRNN])
@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-10), ("float32", 2e-4)])
def test_simd_sequential_kernel_on_a_wide_hidden_layer(cls, dtype, rtol):
    # L = 37 fills SIMD vectors and leaves a remainder; the reductions over hidden units are
    # reassociated (fastmath), so float32 agrees to rounding only.
    model = cls(4, 37, n_obs=N, seed=8, dtype=dtype)
    rng = np.random.default_rng(3)
    model.params[...] += (0.05 * rng.standard_normal(model.n_params)).astype(dtype)
    x = 0.7 * rng.standard_normal((3, 41, N))
    blocks = {k: v.astype(np.float64) for k, v in model.unflatten().items()}
    ref_loss, ref_grads = gtf_bptt_reference(blocks, _reference_step(model), x, ALPHAS, n_forced=1)
    loss, grad, _ = gtf_loss_and_grad(
        model, x.astype(dtype), alpha=ALPHAS, method="sequential", n_forced=1
    )
    np.testing.assert_allclose(loss, ref_loss, rtol=rtol)
    scale = max(np.abs(g).max() for g in ref_grads.values())
    for name, g in model.unflatten(grad).items():
        np.testing.assert_allclose(g, ref_grads[name], rtol=rtol, atol=rtol * scale, err_msg=name)


def _per_step_variant(model):
    """The same model, its step functions re-bundled: ``method="sequential"`` then runs the
    generic per-step BPTT kernel (the path of a model from outside ``models/``) instead of
    the family's SIMD kernel."""
    per_step = type(
        f"PerStep{type(model).__name__}",
        (type(model),),
        {"step_functions_jit": StepFunctions(*model.step_functions_jit)},
    )
    clone = per_step(**model.hyperparameters())
    clone.params[...] = model.params
    return clone


@pytest.mark.parametrize(
    "make",
    [
        lambda: ShPLRNN(4, 37, n_obs=N, seed=8),
        lambda: ClippedShPLRNN(3, 19, n_obs=N, seed=9),
        lambda: ALRNN(20, 4, n_obs=N, seed=10),
        lambda: PLRNN(9, n_obs=N, seed=11),
    ],
    ids=["shplrnn", "clipped", "alrnn", "plrnn"],
)
def test_simd_sequential_kernels_match_the_generic_kernel(make):
    model = make()
    rng = np.random.default_rng(6)
    model.params[...] += 0.05 * rng.standard_normal(model.n_params) * _tangent_mask(model)
    x = 0.7 * rng.standard_normal((3, 30, N))
    kw = {"alpha": ALPHAS, "method": "sequential", "n_forced": 1}
    loss, grad, _ = gtf_loss_and_grad(model, x, **kw)
    loss_g, grad_g, _ = gtf_loss_and_grad(_per_step_variant(model), x, **kw)
    np.testing.assert_allclose(loss, loss_g, rtol=1e-12)
    np.testing.assert_allclose(grad, grad_g, rtol=1e-9, atol=1e-12 * np.abs(grad_g).max())
    if isinstance(model, PLRNN):
        assert np.all(np.diag(model.unflatten(grad)["W"]) == 0)
    # float32 through the same SIMD kernel agrees to float32 rounding
    loss32, grad32, _ = gtf_loss_and_grad(model.astype("float32"), x.astype(np.float32), **kw)
    np.testing.assert_allclose(loss32, loss, rtol=1e-4)
    np.testing.assert_allclose(grad32, grad, rtol=1e-3, atol=1e-4 * np.abs(grad).max())


def test_quasi_deer_forward_gives_the_same_gradient(model, data):
    _, g_full, _ = gtf_loss_and_grad(model, data, alpha=0.3, jacobian="full")
    _, g_diag, info = gtf_loss_and_grad(model, data, alpha=0.3, jacobian="diag")
    assert info.converged
    np.testing.assert_allclose(g_diag, g_full, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize(
    "kw", [{"alpha": 0.3}, {"alpha": ALPHAS, "n_forced": 1}], ids=["alpha=0.3", "n_forced=1"]
)
def test_float32_agrees_with_float64(model, data, kw):
    """Every model family, the DEER (full and quasi-DEER forward) and the sequential method:
    the float32 loss and gradient are the float64 ones to float32 rounding."""
    m32 = model.astype("float32")
    l64, g64, _ = gtf_loss_and_grad(model, data, **kw)
    for method, jacobian in (("deer", "full"), ("deer", "diag"), ("sequential", "full")):
        l32, g32, info = gtf_loss_and_grad(
            m32, data.astype(np.float32), method=method, jacobian=jacobian, **kw
        )
        where = f"{method} {jacobian}"
        assert info.converged and g32.dtype == np.float32, where
        np.testing.assert_allclose(l32, l64, rtol=1e-6, err_msg=where)
        np.testing.assert_allclose(
            g32, g64, rtol=3e-5, atol=3e-7 * np.abs(g64).max(), err_msg=where
        )
        if isinstance(model, PLRNN):  # the zero diag(W) gets no gradient in float32 either
            assert np.all(np.diag(m32.unflatten(g32)["W"]) == 0), where


@pytest.mark.parametrize("cls", [ShPLRNN, ClippedShPLRNN])
def test_overflowing_pre_activation_gives_the_same_finite_loss_in_both_methods(cls):
    """Finite float32 states whose ``W2 z`` overflows to -inf: relu gives 0, not NaN, in the
    sequential kernel as in the model's step (used by DEER)."""
    model = cls(2, 1, dtype="float32")
    model["W2"][...] = [[1e30, 0.0]]
    model["h2"][...] = 0.0
    x = np.zeros((1, 6, 2), np.float32)
    x[0, :, 0] = -1e10
    results = [gtf_loss_and_grad(model, x, alpha=1.0, method=m) for m in ("sequential", "deer")]
    for loss, grad, info in results:
        assert info.status is DeerStatus.CONVERGED and np.isfinite(loss)
        assert np.all(np.isfinite(grad))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5)


def test_single_step_window():
    model = MODELS["shplrnn"]()
    x = np.random.default_rng(2).standard_normal((2, 2, N))
    l_d, g_d, _ = gtf_loss_and_grad(model, x, alpha=0.5)
    l_s, g_s, _ = gtf_loss_and_grad(model, x, alpha=0.5, method="sequential")
    np.testing.assert_allclose(l_d, l_s, rtol=1e-12)
    np.testing.assert_allclose(g_d, g_s, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", ["shplrnn", "alrnn"])
@pytest.mark.parametrize("alpha", [0.3, np.array([0.3])])
def test_sequential_kernels_get_writeable_arrays(name, alpha, monkeypatch):
    """One window, or α given per window: no read-only broadcast view reaches the SIMD BPTT
    kernels (Numba would compile each again, seconds, for read-only arrays)."""
    module, kernel = {
        "shplrnn": (_bptt_shplrnn, "gtf_bptt_shplrnn"),
        "alrnn": (_bptt_alrnn, "gtf_bptt_alrnn"),
    }[name]
    compiled = getattr(module, kernel)
    calls = []

    def spy(*args):
        arrays = [(i, x) for i, x in enumerate(args) if isinstance(x, np.ndarray)]
        calls.append([i for i, x in arrays if not x.flags.writeable])
        return compiled(*args)

    monkeypatch.setattr(module, kernel, spy)
    x = np.random.default_rng(3).standard_normal((1, 4, N))
    gtf_loss_and_grad(MODELS[name](), x, alpha=alpha, method="sequential")
    assert calls == [[]]  # called once, no read-only argument


def test_auto_alpha_is_the_sup_estimate(data):
    model = ShPLRNN(2, 6, seed=3)
    _, _, info = gtf_loss_and_grad(model, data, alpha="auto")
    assert info.alpha == gtf_alpha(model, data[:, 1:])
    _, _, info_s = gtf_loss_and_grad(model, data, alpha="auto", method="sequential")
    assert info_s.alpha == info.alpha


THROW_FALSE = (
    " Pass throw=False to get (nan, None, info) back instead, info.status and info.message "
    "saying why."
)


def _failure(*args, **kwargs) -> str:
    with pytest.raises(DeerConvergenceError) as info:
        gtf_loss_and_grad(*args, **kwargs)
    return str(info.value)


def test_unconverged_forward_never_returns_a_gradient(data):
    """throw=False returns no gradient, and info.message is the error's text (counts,
    iterations, remedies) without its prefix and its throw=False sentence."""
    model = MODELS["shplrnn"]()
    with pytest.raises(DeerConvergenceError, match=r"^gtf_loss_and_grad: max_iter: ") as err:
        gtf_loss_and_grad(model, data, alpha=0.0, max_iter=1)
    assert err.value.result.status is DeerStatus.MAX_ITER
    loss, grad, info = gtf_loss_and_grad(model, data, alpha=0.0, max_iter=1, throw=False)
    assert grad is None and np.isnan(loss)
    assert not info.converged and info.status is DeerStatus.MAX_ITER
    assert str(err.value) == f"gtf_loss_and_grad: {info.message}{THROW_FALSE}"
    assert info.message.startswith(
        "max_iter: not converged within max_iter Newton iterations. Failed: 3 max_iter of 3 "
        "sequence(s), after 1 iteration(s) (max_iter=1, jacobian='full', alpha=0); last max "
        "update "
    )
    assert info.message.endswith(
        "To converge: allow more iterations (max_iter=1 < T=12; T iterations always suffice); "
        "use method='sequential' (plain DEER needs about T iterations on a chaotic free run); or "
        "raise alpha (toward 1; alpha='auto' estimates about the least that makes the forced map a "
        "contraction)."
    )
    assert "throw=False" not in info.message and "\n" not in info.message
    assert info.cause == info.message[: info.message.index(" To converge: ")]


def test_failure_messages_speak_the_api_of_gtf_loss_and_grad(data):
    """The remedies name gtf_loss_and_grad's arguments: method='sequential' (not
    sequential_solve), the forcing as data[:, 1:], no alpha='auto' once it was passed, no
    larger alpha than 1, and only the latents the data can force."""
    model = MODELS["shplrnn"]()  # M = 3 latents, N = 2 observed
    free = _failure(model, data, alpha=0.3, n_forced=0, max_iter=1)
    assert free.startswith("gtf_loss_and_grad: max_iter:") and free.endswith(THROW_FALSE)
    assert "use method='sequential' (plain DEER needs about T iterations" in free
    assert "force some latents (n_forced >= 1) with alpha='auto'" in free
    assert "sequential_solve" not in free and "model.simulate" not in free
    assert "raise alpha" not in free and "inspect the result" not in free
    with pytest.warns(GTFGuaranteeWarning):  # n_forced=1 < M
        auto = _failure(model, data, alpha="auto", n_forced=1, max_iter=1)
    assert (
        "raise alpha (alpha='auto' gave its estimate; pass a larger one, e.g. "
        "parscan.gtf_alpha(model, data[:, 1:], margin=0.1, n_forced=1))"
    ) in auto
    assert "alpha='auto' picks" not in auto
    assert "force more latents (n_forced=1 < N=2: alpha damps only the forced ones)" in auto
    full = _failure(model, data, alpha=1.0, max_iter=1)  # every observed latent forced
    assert "raise alpha" not in full and "force more latents" not in full
    assert full.endswith(
        "To converge: allow more iterations (max_iter=1 < T=12; T iterations always suffice), "
        "or use method='sequential' (alpha is already 1, its maximum)." + THROW_FALSE
    )


def test_diverging_forward_at_alpha_1_gets_the_remedies_left():
    """An unforced latent that doubles every step overflows the float32 forward whatever
    alpha is: at alpha 1 only the sequential method and float64 are left to suggest."""
    model = ALRNN(2, 0, n_obs=1, dtype="float32")
    p = model.unflatten()
    p["A"][:] = [0.5, 2.0]
    p["W"][:] = 0.0
    p["h"][:] = 0.0
    p["L0"][:] = 1.0
    x = np.full((1, 141, 1), 0.3, np.float32)
    loss, grad, info = gtf_loss_and_grad(model, x, alpha=1.0, throw=False)
    assert np.isnan(loss) and grad is None and info.status is DeerStatus.DIVERGING
    assert info.message.startswith("diverging:") and info.message.endswith(
        "More iterations rarely help a diverging run: use method='sequential' (alpha is "
        "already 1, its maximum), or run in float64 (model.astype(np.float64), float64 inputs)."
    )


@pytest.mark.parametrize("throw", [True, False])
def test_sequential_non_finite_forward_is_reported_not_converged(throw):
    """Overflowing states give (nan, None, NON_FINITE) like a failed DEER forward, never a
    CONVERGED NaN gradient; the sequential method reports it whatever ``throw`` is."""
    model = ShPLRNN(3, 4, seed=0)
    model["A"][...] = 3.0  # |z| grows like 3**t: overflow within a few hundred steps
    x = np.random.default_rng(0).standard_normal((2, 801, 3))
    loss, grad, info = gtf_loss_and_grad(model, x, alpha=0.0, method="sequential", throw=throw)
    assert np.isnan(loss) and grad is None
    assert info.status is DeerStatus.NON_FINITE and not info.converged
    assert info.message.startswith("non_finite: the forward (the states) overflowed")
    _, _, info_deer = gtf_loss_and_grad(model, x, alpha=0.0, throw=False)
    assert not info_deer.converged


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_overflow_from_finite_inputs_is_not_blamed_on_the_inputs(dtype):
    """Finite data and parameters that overflow the forward get a message saying so, with the
    remedies (float64 only for a float32 model); NaN in the parameters keeps the status text
    that blames the inputs. The status code is NON_FINITE either way."""
    model = ShPLRNN(2, 5, seed=1, dtype=dtype)
    model.params[...] *= 1e3
    x = np.random.default_rng(0).standard_normal((2, 400, 2)).astype(dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        loss, grad, info = gtf_loss_and_grad(model, x, alpha=0.0, method="sequential")
    assert np.isnan(loss) and grad is None and info.status is DeerStatus.NON_FINITE
    assert info.message.startswith(
        "non_finite: the forward (the states) overflowed to NaN/inf from finite inputs (the "
        "data and the model parameters are finite)"
    )
    assert "raise alpha (toward 1; alpha='auto' estimates" in info.message
    assert "use a smaller initialisation or a lower learning rate" in info.message
    assert ("float64" in info.message) == (dtype == "float32")
    model.params[0] = np.nan
    for method in ("sequential", "deer"):
        _, _, info = gtf_loss_and_grad(model, x, alpha=0.0, method=method, throw=False)
        assert info.status is DeerStatus.NON_FINITE
        assert info.cause == (
            "non_finite: the model parameters contain NaN or inf (first at model.params[0]); "
            "the data are finite."
        )
        restore = " Restore finite parameters (a checkpoint, or the last good copy)."
        assert info.message == info.cause + restore


@pytest.mark.parametrize("method", ["deer", "sequential"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_parameters_with_auto_alpha_are_reported_not_raised(method, value):
    """alpha="auto" on NaN/inf parameters has no Jacobian to estimate from: it takes the
    margin, as deer_solve's does, and returns (nan, None, NON_FINITE) as a numeric alpha
    does (it raised "||J_F|| is NaN/inf", blaming the finite data); throw=True raises the
    DEER forward's error."""
    model = ShPLRNN(3, 5, seed=1)
    model["W1"][0, 0] = value
    x = np.random.default_rng(0).standard_normal((2, 30, 3))
    loss, grad, info = gtf_loss_and_grad(model, x, alpha="auto", method=method, throw=False)
    assert np.isnan(loss) and grad is None and info.status is DeerStatus.NON_FINITE
    assert info.alpha == DEFAULT_MARGIN
    assert info.message.startswith("non_finite: the model parameters contain NaN or inf (first")
    if method == "deer":
        with pytest.raises(DeerConvergenceError, match=r"^gtf_loss_and_grad: non_finite: NaN"):
            gtf_loss_and_grad(model, x, alpha="auto")


#: the remedies of an overflowing adjoint, after "To avoid it: ", per alpha passed
ADJOINT_REMEDIES = {
    0.0: "raise alpha (toward 1; alpha='auto' estimates about the least that makes the forced "
    "map a contraction); use a smaller initialisation or a lower learning rate; or train in "
    "float64.",
    1.0: "use a smaller initialisation or a lower learning rate, or train in float64.",
    "auto": "raise alpha (alpha='auto' gave its estimate; pass a larger one, e.g. "
    "parscan.gtf_alpha(model, data[:, 1:], margin=0.1, n_forced=1)); use a smaller "
    "initialisation or a lower learning rate; or train in float64.",
}


@pytest.mark.parametrize("alpha", list(ADJOINT_REMEDIES))
@pytest.mark.parametrize("method", ["deer", "sequential"])
def test_overflowing_adjoint_is_reported_not_converged(method, alpha):
    """States that converge while the adjoint grows like 2^T (a latent with dF/dz = 2 that
    stays at 0) give (nan, None, NON_FINITE), never a CONVERGED NaN gradient; the message
    offers a larger alpha only below 1, and no alpha='auto' once it was passed."""
    model = ALRNN(2, 0, n_obs=1, dtype="float32")
    p = model.unflatten()
    p["A"][:] = [0.5, 2.0]
    p["W"][:] = [[0.0, 1.0], [0.0, 0.0]]
    p["h"][:] = 0.0
    p["L0"][:] = 0.0
    x = np.full((1, 141, 1), 0.3, np.float32)
    partial = pytest.warns(GTFGuaranteeWarning) if alpha == "auto" else contextlib.nullcontext()
    with np.errstate(over="ignore", invalid="ignore"), partial:
        loss, grad, info = gtf_loss_and_grad(model, x, alpha=alpha, method=method)
    assert np.isnan(loss) and grad is None
    assert info.status is DeerStatus.NON_FINITE and not info.converged
    assert info.message.startswith("non_finite: the adjoint (the gradient) overflowed")
    assert info.message.endswith(" To avoid it: " + ADJOINT_REMEDIES[alpha])
    assert info.message.startswith(info.cause) and "To avoid it" not in info.cause


def test_auto_alpha_without_forced_latents_is_refused(data):
    """As deer_solve refuses it: the estimate acted on nothing (and warned of partial
    forcing)."""
    model = MODELS["shplrnn"]()
    for method in ("deer", "sequential"):
        with pytest.raises(ValueError, match=r"^gtf_loss_and_grad: alpha='auto' needs forced"):
            gtf_loss_and_grad(model, data, alpha="auto", n_forced=0, method=method)


def test_errors(data):
    model = MODELS["shplrnn"]()
    with pytest.raises(TypeError, match=r"gtf_loss_and_grad: .*ssm_loss_and_grad"):
        gtf_loss_and_grad(LinearSSM(N, 4, 8), data, alpha=0.1)
    with pytest.raises(TypeError, match=r"gtf_loss_and_grad: .*dtype float64; got float32"):
        gtf_loss_and_grad(model, data.astype(np.float32), alpha=0.1)
    with pytest.raises(ValueError, match=r"gtf_loss_and_grad: .*\(B, T\+1, N\)"):
        gtf_loss_and_grad(model, data[:, :1], alpha=0.1)
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        gtf_loss_and_grad(model, data, alpha=1.5)
    with pytest.raises(
        ValueError,
        match=r"^gtf_loss_and_grad: alpha must be a float in \[0, 1\], an array or 'auto'; "
        r"got 'sup'\.$",
    ):
        gtf_loss_and_grad(model, data, alpha="sup")  # a gtf_alpha method is not an alpha
    with pytest.raises(ValueError, match=r"shape \(B,\) = \(3,\)"):
        gtf_loss_and_grad(model, data, alpha=np.zeros(2))
    with pytest.raises(ValueError, match="method must be one of"):
        gtf_loss_and_grad(model, data, alpha=0.1, method="bptt")
    with pytest.raises(ValueError, match="jacobian must be one of"):
        gtf_loss_and_grad(model, data, alpha=0.1, jacobian="dense")
    with pytest.raises(ValueError, match=r"n_forced must be in \[0, N=2\]"):
        gtf_loss_and_grad(model, data, alpha=0.1, n_forced=3)
    with pytest.raises(ValueError, match=r"unknown backend 'gpu'; available: 'auto', 'seq"):
        gtf_loss_and_grad(model, data, alpha=0.1, method="sequential", backend="gpu")
    with pytest.raises(TypeError, match=r"got int64\. Use data\.astype\(np\.float64\)\.$"):
        gtf_loss_and_grad(model, data.astype(np.int64), alpha=0.1)
    for alpha, kind in ((np.array([0.1j, 0, 0]), "complex128"), (np.array(["a"] * 3), "<U1")):
        with pytest.raises(
            TypeError, match=f"alpha must be a real number or array; got dtype {kind} \\(ndarray"
        ):
            gtf_loss_and_grad(model, data, alpha=alpha)
    with pytest.raises(TypeError, match=r"got dtype bool \(ndarray\)"):
        gtf_loss_and_grad(model, data, alpha=np.array([True, False, True]))
    with pytest.raises(ValueError, match=r"^gtf_loss_and_grad: `tol` must be None .*got -1\.0"):
        gtf_loss_and_grad(model, data, alpha=0.1, tol=-1.0)
    with pytest.raises(ValueError, match=r"^gtf_loss_and_grad: `max_iter` must be a positive int"):
        gtf_loss_and_grad(model, data, alpha=0.1, max_iter=0)
    with pytest.raises(TypeError, match=r"^gtf_loss_and_grad: `throw` must be a bool; got str"):
        gtf_loss_and_grad(model, data, alpha=0.1, throw="yes")
    assert (
        gtf_loss_and_grad(model, data, alpha=np.int64(0))[0]
        == (gtf_loss_and_grad(model, data, alpha=0.0)[0])
    )
    bad = data.copy()
    bad[1, 4, 0] = np.nan
    with pytest.raises(ValueError, match=r"NaN or inf \(first at data\[1, 4, 0\]\)"):
        gtf_loss_and_grad(model, bad, alpha=0.1)


@pytest.mark.parametrize("method", ["deer", "sequential"])
def test_alpha_is_array_like_as_deer_solve_takes_it(data, method):
    """A list (or tuple) of alphas is the array of them, as for deer_solve; it is checked as
    deer_solve checks it (shape, range, ragged nesting), with this function's name."""
    model = MODELS["shplrnn"]()
    want = gtf_loss_and_grad(model, data, alpha=ALPHAS, method=method)
    for alpha in (list(ALPHAS), tuple(ALPHAS)):
        loss, grad, info = gtf_loss_and_grad(model, data, alpha=alpha, method=method)
        assert loss == want[0]
        np.testing.assert_array_equal(grad, want[1])
        assert info.alpha.dtype == np.float64
        np.testing.assert_array_equal(info.alpha, ALPHAS)
    cases = [
        (ValueError, r"alpha must be a scalar or have shape \(B,\) = \(3,\); got \(2,\)", [0, 0]),
        (
            ValueError,
            r"alpha must lie in \[0, 1\] \(and be finite\); got 2\.0 at index 1\.$",
            [0.1, 2.0, 0.0],
        ),
        # the first value outside, not min and max (NaN for an array holding one)
        (ValueError, r"alpha must lie .*; got nan at index 1\.$", [0.1, np.nan, 0.2]),
        (ValueError, r"alpha is not an array \(nested sequences of unequal", [0.1, [0.2]]),
        (TypeError, r"alpha must be a real number or array; got dtype bool \(list\)", [True]),
        (TypeError, r"alpha must be a real number or array; got dtype object", None),
    ]
    for error, match, alpha in cases:
        with pytest.raises(error, match="^gtf_loss_and_grad: " + match):
            gtf_loss_and_grad(model, data, alpha=alpha, method=method)


def test_overflowing_loss_is_reported_without_a_warning():
    """A converged forward whose predictions are finite but whose squared residuals overflow
    (fully forced states, huge parameters) returns (nan, None, NON_FINITE) and warns of
    nothing (the test run turns warnings into errors)."""
    model = ClippedShPLRNN(3, 20)
    model.params[:] = 1e100  # F ~ 1e200 at the data: its square overflows float64
    x = np.random.default_rng(0).standard_normal((2, 21, 3))
    loss, grad, info = gtf_loss_and_grad(model, x, alpha=1.0, throw=False)
    assert np.isnan(loss) and grad is None
    assert info.status is DeerStatus.NON_FINITE
    assert info.message.startswith("non_finite: the forward (the states) overflowed")


@pytest.mark.parametrize(
    "option, value, match",
    [
        ("method", ["deer", "sequential"], "method must be one of"),
        ("jacobian", ["full", "diag"], "jacobian must be one of"),
        ("backend", ["cpu", "auto"], "unknown backend array"),
    ],
)
def test_an_array_as_an_option_is_an_argument_error(option, value, match):
    """NumPy's "truth value is ambiguous" before."""
    model = ShPLRNN(3, 4, dtype="float64")
    windows = np.random.default_rng(0).standard_normal((2, 10, 3))
    with pytest.raises(ValueError, match=rf"^gtf_loss_and_grad: {match}"):
        gtf_loss_and_grad(model, windows, alpha=0.1, **{option: np.array(value)})
