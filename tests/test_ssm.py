"""Linear-recurrence SSMs: teacher forcing and closed loop against NumPy step loops, explicit
adjoint gradients against central finite differences, save/load, init, and error paths."""

import math
import warnings
from dataclasses import replace

import numpy as np
import pytest

import models
from autodiff.optim import Adam
from autodiff.ssm_gradients import ssm_loss_and_grad
from models.ssm import LinearSSM, SelectiveSSM
from parscan import _buffers, linear_scan

N, H, L = 3, 4, 5
FD_EPS = 1e-6
FD_RTOL = 1e-6  # the bound on the relative error of the directional derivative


# --- slow, obviously correct references (one time step at a time) -----------------------------


def _mlp(p, feat):
    return p["W2"] @ np.maximum(p["W1"] @ feat + p["b1"], 0.0) + p["b2"]


def _linear_step(p, h, u):
    lam = np.exp(-np.exp(p["nu"]) + 1j * np.exp(p["theta"]))
    gamma = np.sqrt(1.0 - np.abs(lam) ** 2)
    h = lam * h + gamma * ((p["B_re"] + 1j * p["B_im"]) @ u)
    y = np.real((p["C_re"] + 1j * p["C_im"]) @ h)
    return h, _mlp(p, np.concatenate([y, u]))


def _selective_step(p, h, u):
    delta = np.log1p(np.exp(p["W_delta"] @ u + p["b_delta"]))
    A = -np.exp(p["log_A"])
    Bt, Ct = p["W_B"] @ u, p["W_C"] @ u
    h = np.exp(delta[:, None] * A) * h + (delta * u)[:, None] * Bt[None, :]
    y = h @ Ct
    return h, _mlp(p, np.concatenate([y, u]))


def _reference(model, x, closed_loop_steps=None):
    """Teacher-forced predictions for windows ``x (..., T+1, N)``, or with
    ``closed_loop_steps`` the free runs from ``x[..., 0, :]``."""
    p = model.unflatten()
    linear = isinstance(model, LinearSSM)
    step = _linear_step if linear else _selective_step
    h0 = np.zeros(model.H, complex) if linear else np.zeros((model.n_obs, model.H))
    windows = x.reshape(-1, *x.shape[-2:])
    n = windows.shape[1] - 1 if closed_loop_steps is None else closed_loop_steps
    out = np.empty((windows.shape[0], n, model.n_obs))
    for i, w in enumerate(windows):
        h, u = h0, w[0]
        for t in range(n):
            h, out[i, t] = step(p, h, u)
            u = w[t + 1] if closed_loop_steps is None else out[i, t]
    return out.reshape(*x.shape[:-2], n, model.n_obs)


# --- fixtures ----------------------------------------------------------------------------------


def _make(kind, dtype="float64"):
    if kind == "linear":
        return LinearSSM(N, H, L, r_min=0.5, r_max=0.95, dtype=dtype, seed=3)
    # larger step sizes than Mamba's default so the selective terms matter in a short window
    return SelectiveSSM(N, H, L, dt_min=0.05, dt_max=0.5, dtype=dtype, seed=3)


@pytest.fixture(scope="module")
def data():
    return np.random.default_rng(0).normal(size=(2, 9, N))


@pytest.fixture(scope="module", params=["linear", "selective"])
def model(request):
    return _make(request.param)


def _loss(model, x):
    return float(np.mean((model.teacher_forced(x) - x[:, 1:]) ** 2))


# --- forward -----------------------------------------------------------------------------------


def test_teacher_forced_matches_step_loop(model, data):
    pred = model.teacher_forced(data)
    assert pred.shape == (2, 8, N)
    np.testing.assert_allclose(pred, _reference(model, data), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["linear", "selective"])
def test_forward_scans_writeable_arrays(kind, monkeypatch):
    """The scan gets writeable arrays, also for one single-step window (where a broadcast of
    the linear SSM's eigenvalues is contiguous): Numba compiles every kernel again, seconds
    each, for read-only arrays."""
    seen = []

    def spy(a, b, *args, **kwargs):
        seen.append((a.flags.writeable, b.flags.writeable))
        return linear_scan(a, b, *args, **kwargs)

    monkeypatch.setattr(models.ssm, "linear_scan", spy)
    model = _make(kind)
    x = np.random.default_rng(1).normal(size=(1, 2, N))
    np.testing.assert_allclose(model.teacher_forced(x), _reference(model, x), rtol=1e-12)
    assert seen == [(True, True)]


def test_teacher_forced_leading_dims(model, data):
    pred = model.teacher_forced(data)
    np.testing.assert_array_equal(model.teacher_forced(data[0]), pred[0])
    np.testing.assert_array_equal(model.teacher_forced(data[None]), pred[None])


def test_generate_matches_closed_loop(model, data):
    out = model.generate(data[:, 0], 12)
    assert out.shape == (2, 12, N)
    np.testing.assert_allclose(out, _reference(model, data, 12), rtol=1e-10, atol=1e-12)
    # the first free step is the first teacher-forced prediction
    np.testing.assert_allclose(out[:, 0], model.teacher_forced(data)[:, 0], rtol=1e-12)
    assert model.generate(data[0, 0], 5).shape == (5, N)
    assert model.generate(data[:, 0], 0).shape == (2, 0, N)


def test_free_runs_too_large_to_allocate_are_refused_naming_generate(model, data, monkeypatch):
    """A run this machine cannot allocate (NumPy's MemoryError; here without a reading of
    the memory available) or NumPy cannot address (a byte count beyond int64, a dimension
    beyond intp) is a ValueError naming the method, the memory needed and the fix."""
    monkeypatch.setattr(_buffers, "available_bytes", lambda: None)
    name = type(model).__name__
    fix = r"; use fewer steps \(or several shorter runs\)\.$"
    with pytest.raises(
        ValueError,
        match=rf"^{name}\.generate: a free run of {10**16} steps \(3 float64 values a step\) "
        rf"needs 213 PiB, more than this machine can allocate{fix}",
    ):
        model.generate(data[0, 0], 10**16)
    with pytest.raises(
        ValueError,
        match=rf"^{name}\.generate: a free run of {2**62} steps .* needs 96 EiB per start, 192 "
        r"EiB for the 2 starts, more than NumPy can address; use fewer steps or starts",
    ):
        model.generate(data[:, 0], 2**62)
    with pytest.raises(ValueError, match=rf"^{name}\.generate: .* 1\.99e\+7 YiB, .*address{fix}"):
        model.generate(data[0, 0], 10**30)


def test_free_runs_propagate_nan_and_inf(model, data):
    """NaN/inf in x0 reach the output as in the latent RNNs' generate: the readout's ReLU
    keeps NaN (it once mapped it to 0, giving rows equal to the bias b2)."""
    assert np.isnan(models.ShPLRNN(N, 8).generate(np.array([np.nan, 0.0, 0.0]), 3)).all()
    for bad in (np.nan, np.inf, -np.inf):
        x0 = data[:, 0].copy()
        x0[1, 0] = bad
        out = model.generate(x0, 4)
        assert not np.isfinite(out[1]).any(), bad
        np.testing.assert_array_equal(out[0], model.generate(data[0, 0], 4))


def test_teacher_forced_propagates_nan_without_a_numpy_warning(model, data):
    """Runs under the suite's warnings-as-errors: the selective SSM's softplus of a NaN
    pre-activation once raised NumPy's RuntimeWarning."""
    x = data.copy()
    x[0, 3, 1] = np.nan
    out = model.teacher_forced(x)
    assert np.isnan(out[0]).any()
    np.testing.assert_array_equal(out[1], model.teacher_forced(data)[1])


def test_a_diverging_free_run_ends_non_finite_and_evaluate_says_so():
    """A run past the float range becomes inf - inf = NaN in the readout, which stays NaN
    (it once settled on the finite bias b2) and evaluate reports it."""
    model = _make("selective")
    model["W1"][...] *= 40.0
    model["W2"][...] *= 40.0
    x = models.generate("lorenz63", 300, seed=1)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    out = model.generate(x[0], 200)
    assert np.abs(out[0]).max() > 10.0 and np.isnan(out[-1]).all()
    res = models.evaluate(model, x, measures=("dstsp", "dh"))
    assert res["status"] == "non_finite" and res["dstsp"] is None


# --- gradients ---------------------------------------------------------------------------------


def _fd_rel_errors(model, x, directions):
    loss, grad, info = ssm_loss_and_grad(model, x)
    assert info["method"] == "scan"
    assert grad.shape == model.params.shape and grad.dtype == model.dtype
    assert loss == pytest.approx(_loss(model, x), rel=1e-13)
    p0 = model.params.copy()
    errors = []
    try:
        for v in directions:
            model.params[...] = p0 + FD_EPS * v
            lp = _loss(model, x)
            model.params[...] = p0 - FD_EPS * v
            lm = _loss(model, x)
            fd = (lp - lm) / (2 * FD_EPS)
            errors.append(abs(fd - grad @ v) / abs(fd))
    finally:
        model.params[...] = p0
    return np.array(errors)


def test_gradient_random_directions(model, data):
    rng = np.random.default_rng(1)
    directions = rng.normal(size=(4, model.n_params))
    assert np.all(_fd_rel_errors(model, data, directions) <= FD_RTOL)


def test_gradient_every_block(model, data):
    """A random direction inside each named block, so no block hides behind a larger one
    (``theta`` and the imaginary parts check the complex adjoint with conj(λ))."""
    rng = np.random.default_rng(2)
    directions = []
    for name, block in model.unflatten(np.zeros(model.n_params)).items():
        v = np.zeros(model.n_params)
        model.unflatten(v)[name][...] = rng.normal(size=block.shape)
        directions.append(v)
    errors = _fd_rel_errors(model, data, directions)
    names = list(model.unflatten())
    assert np.all(errors <= FD_RTOL), dict(zip(names, errors, strict=True))


def test_gradient_float32_close_to_float64(data):
    for kind in ("linear", "selective"):
        m64, m32 = _make(kind), _make(kind, "float32")
        l64, g64, _ = ssm_loss_and_grad(m64, data)
        l32, g32, _ = ssm_loss_and_grad(m32, data.astype(np.float32))
        assert g32.dtype == np.float32
        assert l32 == pytest.approx(l64, rel=1e-5)
        np.testing.assert_allclose(g32, g64, rtol=1e-3, atol=1e-5 * np.abs(g64).max())
        out32 = m32.generate(data[:, 0].astype(np.float32), 6)
        assert out32.dtype == np.float32
        np.testing.assert_allclose(out32, m64.generate(data[:, 0], 6), rtol=1e-4, atol=1e-5)


def test_float32_step_size_gradient_where_softplus_is_tiny(data):
    """softplus' at very negative pre-activations (Δ ~ 1e-9): float32 keeps its relative
    accuracy there (1 + tanh(pre / 2) cancelled to 0 or to a few bits)."""
    m64 = _make("selective")
    m64["b_delta"][...] = [-12.0, -15.0, -20.0][:N]
    m64["W_delta"][...] *= 0.1
    m32 = m64.astype("float32")
    g64 = m64.unflatten(ssm_loss_and_grad(m64, data)[1])["b_delta"]
    g32 = m32.unflatten(ssm_loss_and_grad(m32, data.astype(np.float32))[1])["b_delta"]
    np.testing.assert_allclose(g32, g64, rtol=2e-3)


def test_nonfinite_data_and_single_windows_are_refused(data):
    """As gtf_loss_and_grad refuses them: NaN/inf located, a (T+1, N) window not read as B=1."""
    model = _make("linear")
    for value in (np.nan, -np.inf):
        bad = data.copy()
        bad[0, 3, 1] = value
        bad[1, 5, 2] = np.nan
        with pytest.raises(
            ValueError,
            match=r"^ssm_loss_and_grad: data contains NaN or inf \(first at data\[0, 3, 1\]\)\. "
            r"Clean the trajectory before windowing it\.$",
        ):
            ssm_loss_and_grad(model, bad)
    stacked = np.stack([data, data])  # (2, B, T+1, N): leading dimensions are flattened
    bad = stacked.copy()
    bad[1, 0, 2, 0] = np.inf
    with pytest.raises(ValueError, match=r"first at data\[1, 0, 2, 0\]"):
        ssm_loss_and_grad(model, bad)
    assert ssm_loss_and_grad(model, stacked)[2]["batch"] == 2 * data.shape[0]
    with pytest.raises(
        ValueError,
        match=rf"^ssm_loss_and_grad: data must have shape \(B, T\+1, N\) with B >= 1, T >= 1 "
        rf"and N = model\.n_obs = {N}; got \({data.shape[1]}, {N}\)\. Use data\[None\] for "
        r"one window\.$",
    ):
        ssm_loss_and_grad(model, data[0])
    loss, grad, info = ssm_loss_and_grad(model, data[:1])
    assert info == {"method": "scan", "backend": "auto", "batch": 1, "T": data.shape[1] - 1}
    assert math.isfinite(loss) and np.all(np.isfinite(grad))


def test_adam_reduces_teacher_forced_loss():
    """A few hundred Adam steps on a noisy sine fit the one-step map clearly better."""
    t = np.arange(201) * 0.1
    x = np.stack([np.sin(t), np.cos(t), np.sin(2 * t)], axis=-1)[None]
    model = _make("linear")
    opt = Adam(model.n_params)
    first = ssm_loss_and_grad(model, x)[0]
    for _ in range(300):
        loss, grad, _ = ssm_loss_and_grad(model, x)
        opt.step(model.params, grad, 3e-3)
    assert loss < first / 10


#: (kind, N, H, L, K): each size 1 somewhere, N > H and N < H, and K != H for the LRU (every
#: other test has N, H, L = 3, 4, 5 and K = H)
_OTHER_SIZES = [
    ("linear", 1, 1, 1, None),
    ("linear", 2, 5, 3, 1),
    ("linear", 4, 2, 3, 6),
    ("selective", 1, 1, 1, None),
    ("selective", 2, 5, 3, None),
    ("selective", 4, 1, 3, None),
]
#: the blocks a single-step window (T = 1, h_1 = b_1) cannot reach
_NOT_AT_T1 = {"linear": "theta", "selective": "log_A"}


def _make_off_init(kind, n, h, l, k, seed=0):
    """A model of these sizes with every parameter moved by 0.3 N(0, 1) off its initialisation
    (where the selective SSM's log_A rows are all equal, hiding a mixed-up channel index)."""
    if kind == "linear":
        model = LinearSSM(n, h, l, K=k, r_min=0.5, r_max=0.95, seed=seed)
    else:
        model = SelectiveSSM(n, h, l, dt_min=0.05, dt_max=0.5, seed=seed)
    model.params[...] += 0.3 * np.random.default_rng(seed).normal(size=model.n_params)
    return model


@pytest.mark.parametrize("T", [1, 6])
@pytest.mark.parametrize("sizes", _OTHER_SIZES, ids=lambda s: "{}-N{}H{}L{}K{}".format(*s))
def test_gradient_off_init_at_other_sizes_and_batch_shapes(sizes, T):
    """Central differences per block (and of all blocks) with the parameters off their
    initialisation, windows (2, 2, T+1, N) with two leading batch dimensions, and T = 1 (no
    recurrence: theta, log_A get an exact 0) or T = 6. Each direction is the unit block
    gradient plus half a random unit block vector, so that |fd| >= |g_block| / 2 and the
    relative error is not dominated by the difference's rounding (eps * loss / FD_EPS, allowed
    4 times as an absolute floor: a block of size 1 drew directional derivatives of 1e-6 of
    the loss)."""
    kind = sizes[0]
    model = _make_off_init(*sizes)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 2, T + 1, model.n_obs))
    flat = x.reshape(-1, T + 1, model.n_obs)
    expected = _reference(model, x)
    np.testing.assert_allclose(model.teacher_forced(x), expected, rtol=1e-12, atol=1e-12)
    loss, grad, info = ssm_loss_and_grad(model, x)
    assert info["batch"] == 4 and info["T"] == T
    assert loss == pytest.approx(np.mean((expected - x[..., 1:, :]) ** 2), rel=1e-12)
    floor = 4 * np.finfo(np.float64).eps * loss / FD_EPS
    p0, errors = model.params.copy(), {}  # name: |fd - grad @ v| / tolerance
    try:
        for name in ["all", *model.unflatten()]:
            mask = np.ones(model.n_params, bool)
            if name != "all":
                mask[:] = False
                model.unflatten(mask)[name][...] = True
            g, r = np.where(mask, grad, 0.0), np.where(mask, rng.normal(size=model.n_params), 0)
            unreachable = T == 1 and name == _NOT_AT_T1[kind]
            assert (np.linalg.norm(g) == 0) == unreachable, name  # no vacuous block either
            v = 0.5 * r / np.linalg.norm(r) + (0 if unreachable else g / np.linalg.norm(g))
            fd = []
            for sign in (1, -1):
                model.params[...] = p0 + sign * FD_EPS * v
                fd.append(np.mean((model.teacher_forced(flat) - flat[:, 1:]) ** 2))
            fd = (fd[0] - fd[1]) / (2 * FD_EPS)
            errors[name] = abs(fd - grad @ v) / (FD_RTOL * abs(fd) + floor)
    finally:
        model.params[...] = p0
    assert max(errors.values()) <= 1.0, errors  # in units of the tolerance


@pytest.mark.parametrize("sizes", _OTHER_SIZES, ids=lambda s: "{}-N{}H{}L{}K{}".format(*s))
def test_gradient_float32_off_init_at_other_sizes(sizes):
    """The float32 gradient agrees with the float64 one off the initialisation and at other
    sizes (measured: at most 5e-6 of the largest entry; the existing test covers the
    initial parameters at N, H, L = 3, 4, 5)."""
    m64 = _make_off_init(*sizes)
    m32 = m64.astype("float32")
    x = np.random.default_rng(2).normal(size=(3, 9, m64.n_obs))
    l64, g64, _ = ssm_loss_and_grad(m64, x)
    l32, g32, _ = ssm_loss_and_grad(m32, x.astype(np.float32))
    assert g32.dtype == np.float32 and l32 == pytest.approx(l64, rel=1e-5)
    np.testing.assert_allclose(g32, g64, rtol=1e-3, atol=1e-4 * np.abs(g64).max())


# --- initialisation, persistence ---------------------------------------------------------------


def test_linear_init_ring():
    m = LinearSSM(N, 64, L, r_min=0.9, r_max=0.999, max_phase=math.pi, seed=5)
    lam, gamma = m.eigenvalues()
    assert np.all((np.abs(lam) >= 0.9 - 1e-12) & (np.abs(lam) <= 0.999 + 1e-12))
    assert np.all((np.angle(lam) >= 0.0) & (np.angle(lam) <= math.pi))
    np.testing.assert_allclose(gamma, np.sqrt(1 - np.abs(lam) ** 2), rtol=1e-12)
    np.testing.assert_array_equal(LinearSSM(N, 64, L, max_phase=math.pi, seed=5).params, m.params)
    assert m.K == 64 and m["W1"].shape == (L, 64 + N)


def test_selective_init():
    m = SelectiveSSM(N, H, L, seed=5)
    np.testing.assert_allclose(-np.exp(m["log_A"]), -np.tile(np.arange(1.0, H + 1), (N, 1)))
    dt = np.log1p(np.exp(m["b_delta"]))
    assert np.all((dt >= 1e-3 * (1 - 1e-9)) & (dt <= 1e-1 * (1 + 1e-9)))


@pytest.mark.parametrize("kind", ["linear", "selective"])
def test_save_load_round_trip(tmp_path, kind, data):
    m = _make(kind)
    m.standardization = (np.arange(N, dtype=float), np.ones(N))
    path = m.save(tmp_path / "m.npz", metadata={"epoch": 7})
    loaded, meta = models.load_with_metadata(path)
    assert type(loaded) is type(m) and meta == {"epoch": 7}
    assert loaded.hyperparameters() == m.hyperparameters()
    np.testing.assert_array_equal(loaded.params, m.params)
    np.testing.assert_array_equal(loaded.teacher_forced(data), m.teacher_forced(data))
    np.testing.assert_array_equal(loaded.standardization[0], m.standardization[0])
    assert type(m).load(path).n_params == m.n_params
    other = SelectiveSSM if kind == "linear" else LinearSSM
    with pytest.raises(ValueError, match=r"Use models\.load"):
        other.load(path)
    assert type(m)(**m.hyperparameters()).hyperparameters() == m.hyperparameters()


# --- errors ------------------------------------------------------------------------------------


def test_input_errors(model, data):
    name = type(model).__name__
    for method in ("teacher_forced", "forward"):
        call = getattr(model, method)
        with pytest.raises(ValueError, match=rf"^{name}.{method}: x must have shape .*N=3"):
            call(data[..., :2])
        with pytest.raises(TypeError, match=rf"^{name}.{method}: x must have dtype float64"):
            call(data.astype(np.float32))
        with pytest.raises(ValueError, match=rf"^{name}.{method}: need at least 2 time points"):
            call(data[:, :1])
        with pytest.raises(
            TypeError,
            match=rf"^{name}.{method}: x must be a real numeric array; got list \(dtype <U1\)\.$",
        ):
            call([["a"] * 3] * 2)
    np.testing.assert_array_equal(model.teacher_forced(data.tolist()), model.teacher_forced(data))
    with pytest.raises(ValueError, match=rf"^{name}.teacher_forced: linear_scan: unknown backend"):
        model.teacher_forced(data, backend="gpu")
    with pytest.raises(ValueError, match=rf"{name}.generate: n_steps must be >= 0"):
        model.generate(data[:, 0], -1)
    with pytest.raises(ValueError, match=rf"{name}.generate: x0 must have shape"):
        model.generate(data[:, 0, :2], 3)


def test_recurrence_checks_its_inputs(model, data):
    name = type(model).__name__
    u = data[:, :-1]
    a, b, _ = model.recurrence(u)
    a_list, b_list, _ = model.recurrence(u.tolist())  # array_like, same result
    np.testing.assert_array_equal(a_list, a)
    np.testing.assert_array_equal(b_list, b)
    assert model.recurrence(u[0])[1].shape == (8, model.D)  # (..., T, N)
    for bad in (np.array(1.0), np.ones(N), np.ones((2, 5))):
        with pytest.raises(
            ValueError, match=rf"^{name}.recurrence: u must have shape \(\.\.\., T, N\)"
        ):
            model.recurrence(bad)
    with pytest.raises(TypeError, match=rf"^{name}.recurrence: u must have dtype float64"):
        model.recurrence(u.astype(np.float32))


def test_adjoint_hooks_refuse_what_forward_does_not_produce(model, data):
    name = type(model).__name__
    trace = model.forward(data)
    grad = np.zeros(model.n_params)
    with pytest.raises(TypeError, match=rf"^{name}.features: h must be a numpy array .* aux must"):
        model.features(None, None, None)
    with pytest.raises(ValueError, match=rf"^{name}.features: need u of shape \(B, T, N\)"):
        model.features(trace.h[..., :1], trace.u, trace.aux)
    with pytest.raises(
        TypeError, match=rf"^{name}.readout_vjp: trace must be the SSMTrace returned by forward"
    ):
        model.readout_vjp(None, None, None)
    with pytest.raises(ValueError, match=rf"^{name}.features_vjp: g_y must have the shape of "):
        model.features_vjp(trace, np.ones((2, 8, model.K + 1)), grad)
    with pytest.raises(TypeError, match=rf"^{name}.recurrence_vjp: .*grad must be a numpy array"):
        model.recurrence_vjp(trace, trace.h, trace.h, [0.0] * model.n_params)
    with pytest.raises(ValueError, match=rf"^{name}.readout_vjp: grad must have shape"):
        model.readout_vjp(trace, trace.pred, grad[:-1])
    with pytest.raises(TypeError, match=rf"^{name}.readout_vjp: grad must have the model's dtype"):
        model.readout_vjp(trace, trace.pred, grad.astype(int))
    with pytest.raises(TypeError, match=rf"^{name}.features_vjp: g_y must be of the kind of "):
        model.features_vjp(trace, trace.y + 0j, grad)
    # aux: the dict of recurrence(u) for these inputs, not another batch's (which broadcast)
    other = model.forward(data[:1]).aux
    aux = r"aux must be the dict returned by recurrence\(u\), arrays "
    with pytest.raises(ValueError, match=rf"^{name}.features: {aux}"):
        model.features(trace.h, trace.u, {})
    if isinstance(model, SelectiveSSM):
        with pytest.raises(ValueError, match=rf"^{name}.features: {aux}.*'Ct': \(1, 8, 4\)"):
            model.features(trace.h, trace.u, other)
        with pytest.raises(ValueError, match=rf"^{name}.recurrence_vjp: trace.aux must be the"):
            model.recurrence_vjp(replace(trace, aux=other), trace.h, trace.h, grad)


def test_constructor_and_gradient_errors():
    with pytest.raises(ValueError, match="LinearSSM: need 0 <= r_min <= r_max < 1"):
        LinearSSM(N, H, L, r_min=0.99, r_max=0.9)
    with pytest.raises(ValueError, match="LinearSSM: need 0 <= r_min <= r_max < 1"):
        LinearSSM(N, H, L, r_max=1.0)
    with pytest.raises(ValueError, match=r"SelectiveSSM: dt_min must be finite and > 0; got 0\.0"):
        SelectiveSSM(N, H, L, dt_min=0.0)
    with pytest.raises(ValueError, match=r"SelectiveSSM: need dt_min <= dt_max; got dt_min=0\.2"):
        SelectiveSSM(N, H, L, dt_min=0.2, dt_max=0.1)
    for name in ("dt_min", "dt_max"):
        with pytest.raises(
            TypeError, match=f"^SelectiveSSM: {name} must be a real number; got bool"
        ):
            SelectiveSSM(N, H, L, **{name: True})
    for name, value in (("r_min", True), ("r_max", "0.9"), ("max_phase", None)):
        with pytest.raises(TypeError, match=f"^LinearSSM: {name} must be a real number; got "):
            LinearSSM(N, H, L, **{name: value})
    with pytest.raises(ValueError, match=r"^LinearSSM: max_phase must be finite and > 0; got inf"):
        LinearSSM(N, H, L, max_phase=math.inf)
    # settings whose initial parameters are not finite in the dtype, without NumPy's warnings
    not_finite = "give an initialisation that overflows or underflows in"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for make, message in [
            (lambda: LinearSSM(N, H, L, r_min=0.0, r_max=1e-170),
             rf"^LinearSSM: r_min=0.0, r_max=1e-170 {not_finite} float64 \(nu\); choose values "
             r"of moderate size \(see the defaults\)\.$"),
            (lambda: LinearSSM(N, H, L, max_phase=1e39, dtype="float32"),
             r"^LinearSSM: max_phase=1e\+39 gives an initialisation that overflows or "
             r"underflows in float32 \(phases exp\(theta\)\); .* or dtype='float64'\.$"),
            (lambda: SelectiveSSM(N, H, L, dt_min=1e39, dt_max=1e39, dtype="float32"),
             rf"^SelectiveSSM: dt_min=1e\+39, dt_max=1e\+39 {not_finite} float32 \(b_delta\)"),
            (lambda: SelectiveSSM(N, H, L, dt_min=1e-50, dt_max=1e-49, dtype="float32"),
             r"^SelectiveSSM: dt_min=1e-50 gives an .* \(step sizes softplus\(b_delta\)\)"),
        ]:  # fmt: skip
            with pytest.raises(ValueError, match=message):
                make()
        # the ranges decide, not the seed's draws (some seeds drew only finite values)
        for seed in range(8):
            with pytest.raises(ValueError, match="phases exp"):
                LinearSSM(N, 16, L, max_phase=1e39, dtype="float32", seed=seed)
            with pytest.raises(ValueError, match=r"\(b_delta\)"):
                SelectiveSSM(N, H, L, dt_max=1e39, dtype="float32", seed=seed)
            with pytest.raises(ValueError, match=r"\(nu\)"):  # the smallest draw underflows
                LinearSSM(N, H, L, r_min=0.0, r_max=1e-160, seed=seed)
    small = SelectiveSSM(N, H, L, dt_min=1e-44, dt_max=1e-43, dtype="float32")
    assert np.all(np.logaddexp(0.0, small["b_delta"]) > 0)  # subnormal step sizes still train
    with pytest.raises(ValueError, match="LinearSSM: H must be >= 1"):
        LinearSSM(N, 0, L)
    with pytest.raises(TypeError, match="LinearSSM: dtype must be float32 or float64"):
        LinearSSM(N, H, L, dtype="int64")
    with pytest.raises(TypeError, match="ssm_loss_and_grad: model must be a LinearSSM"):
        ssm_loss_and_grad(object(), np.zeros((1, 3, N)))
    with pytest.raises(ValueError, match=r"ssm_loss_and_grad: data of shape \(0, 5, 3\) holds no"):
        ssm_loss_and_grad(_make("linear"), np.zeros((0, 5, N)))
    with pytest.raises(
        ValueError, match=r"^ssm_loss_and_grad: data must have shape \(\.\.\., T\+1, N\)"
    ):
        ssm_loss_and_grad(_make("selective"), np.zeros((1, 5, 2)))
    with pytest.raises(
        TypeError,
        match=r"^ssm_loss_and_grad: data must have dtype float64; got float32\. Use "
        r"np\.asarray\(data, dtype=np\.float64\)",
    ):
        ssm_loss_and_grad(_make("linear"), np.zeros((1, 5, N), np.float32))
    with pytest.raises(ValueError, match=r"^ssm_loss_and_grad: need at least 2 time .*data\.shape"):
        ssm_loss_and_grad(_make("linear"), np.zeros((1, 1, N)))
    with pytest.raises(ValueError, match="ssm_loss_and_grad: linear_scan: unknown backend 'gpu'"):
        ssm_loss_and_grad(_make("linear"), np.zeros((1, 5, N)), backend="gpu")


def test_constructors_report_every_bad_argument_at_once():
    with pytest.raises(TypeError) as err:
        LinearSSM(0, 2.0, 3, r_min=-0.5, r_max=0.5, seed=-1)  # no r_min <= r_max comparison
    assert str(err.value) == (
        "LinearSSM: N must be >= 1; got 0. H must be an int; got float. r_min must be finite and "
        ">= 0; got -0.5. seed must be >= 0; got -1."
    )
    with pytest.raises(ValueError) as err:
        SelectiveSSM(3, 2, 4, dt_min=0.5, dt_max=0.1, seed=-1)
    assert str(err.value) == (
        "SelectiveSSM: need dt_min <= dt_max; got dt_min=0.5, dt_max=0.1. seed must be >= 0; "
        "got -1."
    )
    with pytest.raises(TypeError, match=r"^SelectiveSSM: N must be an int.*H must be an int"):
        SelectiveSSM(2.5, "a", 3)  # N * H (the scan width) is not formed from bad sizes
    with pytest.raises(ValueError, match=r"^LinearSSM.generate: x0 must have shape .* n_steps"):
        LinearSSM(3, 2, 2).generate(np.zeros(2), -1)


def test_long_single_window_on_the_threaded_backend():
    """One long window (the GTF-DEER use case) takes the time-chunked CPU scan under "cpu";
    the selective model's coefficients are read-only broadcasts there."""
    x = np.random.default_rng(4).normal(size=(1, 3001, N))
    for kind in ("linear", "selective"):
        model = _make(kind)
        loss, grad, _ = ssm_loss_and_grad(model, x, backend="sequential")
        for backend in ("cpu", "auto"):
            loss_b, grad_b, _ = ssm_loss_and_grad(model, x, backend=backend)
            assert loss_b == pytest.approx(loss, rel=1e-12)
            np.testing.assert_allclose(grad_b, grad, rtol=1e-9, atol=1e-12 * np.abs(grad).max())


def test_a_phase_beyond_the_dtype_is_refused(data):
    """exp(theta) = inf makes lambda = exp(i inf) NaN: every free run NaN, and a float32 fit
    of a float64 model with theta = 89 (finite there) failed as 'diverged' with advice to
    lower the learning rate. set_params, astype, load and fit refuse it in their names."""
    from autodiff import TrainConfig, fit

    model = _make("linear")
    model["theta"][0] = 89.0  # exp(89) is beyond float32's largest, within float64's
    match = r"theta\[0\] = 89 gives a phase exp\(theta\) beyond float32 \(.*\), which makes λ N"
    with pytest.raises(ValueError, match=r"^LinearSSM\.astype: " + match):
        model.astype("float32")
    with pytest.raises(ValueError, match=r"^LinearSSM\.set_params: " + match):
        _make("linear", "float32").set_params(model.params)
    with pytest.raises(ValueError, match=r"^fit: " + match):
        fit(model, data[0], TrainConfig(sequence_length=4))
    fresh = _make("linear")
    params = fresh.params.copy()
    fresh.unflatten(params)["theta"][1] = 710.0  # beyond float64 too
    with pytest.raises(ValueError, match=r"theta\[1\] = 710 gives a phase .* beyond float64"):
        fresh.set_params(params)


def test_saturated_decays_run_without_a_numpy_warning(data):
    """A = -exp(log_A) overflowing to -inf is a decay to 0 (its limit), in free runs and teacher
    forcing alike, without NumPy's overflow warning."""
    model = _make("selective")
    model["log_A"][0, 0] = 800.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.all(np.isfinite(model.generate(data[0, 0], 3)))
        assert np.all(np.isfinite(model.teacher_forced(data[0])))


def test_gradient_limits_where_a_parameter_saturates(data):
    """exp(nu) underflowing (|lambda| -> 1, gamma -> 0) or overflowing (lambda -> 0, gamma -> 1,
    in float32 from nu = 89) and A = -exp(log_A) overflowing (a -> 0) give the gradient's limit
    (0 for that entry), not 0/0 or 0 * inf."""
    linear, selective = _make("linear"), _make("selective")
    linear["nu"][0] = -800.0
    selective["log_A"][0, 0] = 800.0
    fast = _make("linear")
    fast["nu"][0] = 100.0
    fast32 = fast.astype("float32")
    fast["nu"][0] = 800.0
    cases = [(linear, "nu"), (selective, "log_A"), (fast, "nu"), (fast32, "nu")]
    for model, name in cases:
        with np.errstate(over="ignore"):  # exp(800) = inf is the point
            loss, grad, _ = ssm_loss_and_grad(model, data.astype(model.dtype))
        assert math.isfinite(loss) and np.all(np.isfinite(grad)), name
        assert model.unflatten(grad)[name].flat[0] == 0.0
