"""Input conventions shared by the public functions (parscan/_arguments.py, used through
models/_checks.py): a flag is True or
False (a NumPy bool too, never a truthy value), a masked array is refused where its mask would
be dropped, gtf_loss_and_grad takes array_like data and refuses the DEER forward's settings
with method="sequential", an array in the other byte order is read as its values. Valid input
gives bitwise the same results as before."""

import numpy as np
import pytest

import autodiff
import models
import parscan
from autodiff.config import TrainConfig
from autodiff.gradients import gtf_loss_and_grad
from autodiff.train import _loss_and_grad
from models._checks import Checks, as_array, check_bool
from parscan._arguments import bool_problem, masked_problem

M, L, N, T = 3, 8, 3, 20


@pytest.fixture(scope="module")
def model():
    return models.ShPLRNN(M, L)


@pytest.fixture(scope="module")
def x():
    traj = models.generate("lorenz63", 300, seed=1)
    return (traj - traj.mean(0)) / traj.std(0)


@pytest.fixture(scope="module")
def windows(x):
    return np.stack([x[: T + 1], x[100 : 101 + T]])


def _masked(a, entry, value=1e6):
    """``a`` as a masked array whose ``entry`` holds ``value`` and is masked."""
    out = np.ma.masked_array(np.array(a, copy=True), mask=False)
    out.data[entry] = value
    out.mask[entry] = True
    return out


# ---- the shared helpers ------------------------------------------------------------------


def test_boolean_accepts_python_and_numpy_bools_only():
    for value, want in ((True, True), (False, False), (np.True_, True), (np.False_, False)):
        got = check_bool(value, "flag", "f")
        assert got is want  # a Python bool
        assert bool_problem(value, "flag") is None
    for value, shown in (
        (0, "int 0"),
        (1, "int 1"),
        ("False", "str 'False'"),
        (None, "NoneType None"),
    ):
        with pytest.raises(
            TypeError, match=rf"^f: flag must be a bool; got {shown}\. Pass True or False\.$"
        ):
            check_bool(value, "flag", "f")
    with Checks("f") as checks:  # one call gathers every problem
        checks.boolean("yes", "a")
        checks.boolean(np.int64(1), "b")
        assert not checks.ok("a") and not checks.ok("b")
        checks.problems.clear()


def test_array_refuses_masked_and_ragged_and_converts_the_rest():
    a = np.arange(6.0).reshape(2, 3)
    assert as_array(a, "x", "f") is a
    assert as_array(a.tolist(), "x", "f").dtype == np.float64
    assert masked_problem(a, "x") is None
    with pytest.raises(
        TypeError, match=r"^f: `x` is a masked array, .*x\.filled\(value\).*np\.asarray\(x\)"
    ):
        as_array(np.ma.masked_array(a), "`x`", "f")
    with pytest.raises(
        ValueError,
        match=r"^f: x is not an array \(nested sequences of unequal .*one shape\.$",
    ):
        as_array([[1.0, 2.0], [3.0]], "x", "f")


# ---- 1. NumPy bools accepted, truthy values refused, everywhere a flag is checked ------------


def test_deer_solve_throw(model, x):
    kw = dict(forcing=x[1 : T + 1], alpha=0.3)
    want = parscan.deer_solve(model, x[0], throw=True, **kw)
    for flag in (np.True_, np.False_):
        got = parscan.deer_solve(model, x[0], throw=flag, **kw)
        np.testing.assert_array_equal(got.states, want.states)
    for bad, shown in (("False", "str 'False'"), (1, "int 1")):
        with pytest.raises(TypeError, match=rf"^deer_solve: `throw` must be a bool; got {shown}\."):
            parscan.deer_solve(model, x[0], throw=bad, **kw)


def test_gtf_alpha_per_sequence(model, windows):
    forcing = windows[:, 1:]
    np.testing.assert_array_equal(
        parscan.gtf_alpha(model, forcing, per_sequence=np.True_),
        parscan.gtf_alpha(model, forcing, per_sequence=True),
    )
    assert parscan.gtf_alpha(model, forcing, per_sequence=np.False_) == parscan.gtf_alpha(
        model, forcing
    )
    with pytest.raises(
        TypeError, match=r"^gtf_alpha: `per_sequence` must be a bool; got str 'False'"
    ):
        parscan.gtf_alpha(model, forcing, per_sequence="False")


@pytest.mark.parametrize("method", ["deer", "sequential"])
def test_gtf_loss_and_grad_throw(model, windows, method):
    loss, grad, _ = gtf_loss_and_grad(model, windows, alpha=0.3, method=method)
    for flag in (np.True_, np.False_):
        loss_b, grad_b, _ = gtf_loss_and_grad(model, windows, alpha=0.3, method=method, throw=flag)
        assert loss_b == loss
        np.testing.assert_array_equal(grad_b, grad)
    with pytest.raises(
        TypeError, match=r"^gtf_loss_and_grad: `throw` must be a bool; got str 'no'"
    ):
        gtf_loss_and_grad(model, windows, alpha=0.3, method=method, throw="no")


def test_train_config_standardize():
    config = TrainConfig(standardize=np.False_)
    assert (
        config.standardize is False and config.to_dict() == TrainConfig(standardize=False).to_dict()
    )
    assert TrainConfig(standardize=np.True_).standardize is True
    for bad, shown in (("False", "str 'False'"), (0, "int 0")):
        with pytest.raises(
            TypeError, match=rf"^TrainConfig: standardize must be a bool; got {shown}\."
        ):
            TrainConfig(standardize=bad)


def test_step_and_jacobian_diag(model, x):
    z = np.ascontiguousarray(x[:4])
    np.testing.assert_array_equal(
        model.step_and_jacobian(z, diag=np.True_)[1], model.jacobian_diag(z)
    )
    with pytest.raises(
        TypeError, match=r"step_and_jacobian: `diag` must be a bool; got str 'False'"
    ):
        model.step_and_jacobian(z, diag="False")


# ---- 2. resume: a bool, not a truthy value ---------------------------------------------------


def test_check_fit_resume_refuses_non_bools(model, x, tmp_path):
    config = TrainConfig(sequence_length=T, batch_size=2, batches_per_epoch=2, epochs=1)
    for bad, shown in (("no", "str 'no'"), (1, "int 1"), (None, "NoneType None")):
        with pytest.raises(TypeError, match=rf"^fit: resume must be a bool; got {shown}\. Pass"):
            autodiff.check_fit(model, x, config, checkpoint_dir=tmp_path, resume=bad)
        with pytest.raises(TypeError, match=rf"^fit: resume must be a bool; got {shown}\."):
            autodiff.fit(model, x, config, checkpoint_dir=tmp_path, resume=bad)
    autodiff.check_fit(model, x, config, checkpoint_dir=tmp_path, resume=np.False_)
    with pytest.raises(ValueError, match=r"^fit: resume=True needs checkpoint_dir"):
        autodiff.check_fit(model, x, config, resume=np.True_)
    assert not any(tmp_path.iterdir())  # nothing written


# ---- 3. masked arrays refused by name ----------------------------------------------------


MASKED = r"is a masked array, whose masked entries would be read as data; fill or drop"


def test_solvers_refuse_masked_arrays(model, x):
    forcing = x[1 : T + 1]
    F = _masked(forcing, (5, 0))
    for solve in (parscan.deer_solve, parscan.sequential_solve):
        name = solve.__name__
        with pytest.raises(TypeError, match=rf"^{name}: `forcing` {MASKED}.*forcing\.filled"):
            solve(model, x[0], forcing=F, alpha=0.5)
        with pytest.raises(TypeError, match=rf"^{name}: `z0` {MASKED}"):
            solve(model, np.ma.masked_array(x[0]), forcing=forcing, alpha=0.5)
        with pytest.raises(TypeError, match=rf"^{name}: `alpha` {MASKED}"):
            solve(
                model, x[:2], forcing=np.stack([forcing] * 2), alpha=np.ma.masked_array([0.5, 0.5])
            )
        # every problem at once: the mask and a wrong dtype
        with pytest.raises(TypeError, match=rf"`forcing` {MASKED}.*must have the model dtype"):
            solve(model, x[0], forcing=F.astype(np.float32), alpha=0.5)
    with pytest.raises(TypeError, match=rf"^deer_solve: `init` {MASKED}"):
        parscan.deer_solve(model, x[0], forcing=forcing, alpha=0.5, init=np.ma.zeros((T, M)))


def test_gtf_alpha_refuses_masked_arrays(model, windows):
    forcing = windows[:, 1:]
    with pytest.raises(TypeError, match=rf"^gtf_alpha: `forcing` {MASKED}"):
        parscan.gtf_alpha(model, _masked(forcing, (0, 3, 1)))
    with pytest.raises(TypeError, match=rf"^gtf_alpha: `states` {MASKED}"):
        parscan.gtf_alpha(model, forcing, states=np.ma.masked_array(forcing))


def test_model_methods_refuse_masked_arrays(model, x):
    z = _masked(x[:4], (1, 2))
    cls = type(model).__name__
    for method in ("step", "jacobian", "jacobian_diag", "step_and_jacobian"):
        with pytest.raises(TypeError, match=rf"^{cls}\.{method}: `z` {MASKED}.*z\.filled"):
            getattr(model, method)(z)
    with pytest.raises(TypeError, match=rf"^{cls}\.simulate: `z0` {MASKED}"):
        model.simulate(z, 3)
    with pytest.raises(
        TypeError, match=rf"^{cls}\.param_vjp: `z_prev` {MASKED}.*`cotangent` {MASKED}"
    ):
        model.param_vjp(z, z)
    with pytest.raises(TypeError, match=rf"^{cls}\.initial_state: x0 {MASKED}"):
        model.initial_state(z)
    with pytest.raises(TypeError, match=rf"^{cls}\.generate: x0 {MASKED}"):
        model.generate(z, 3)
    with pytest.raises(
        TypeError, match=rf"^{cls}\.initial_state_vjp: x0 {MASKED}.*cotangent {MASKED}"
    ):
        model.initial_state_vjp(z, z)
    m = model.copy()
    before = m.params.copy()
    with pytest.raises(TypeError, match=rf"^{cls}\.set_params: params {MASKED}"):
        m.set_params(_masked(before, 0))
    with pytest.raises(TypeError, match=rf"^{cls}\.params: params {MASKED}"):
        m.params = _masked(before, 0)
    np.testing.assert_array_equal(m.params, before)  # nothing written
    with pytest.raises(TypeError, match=rf"^{cls}\.standardization: mean {MASKED}"):
        m.standardization = (np.ma.masked_array(np.zeros(N)), np.ones(N))
    assert m.standardization is None


def test_data_and_measures_refuse_masked_arrays(model, x, tmp_path):
    """Trajectories (check_trajectory: fit, check_fit, evaluate, the measures, standardize),
    a generated run, a start point and destandardize's arrays."""
    masked = _masked(x, (5, 0))
    cases = [
        (lambda: models.standardize(masked), r"^standardize: x is a masked array"),
        (lambda: models.evaluate(model, masked), r"^evaluate: x_test is a masked array"),
        (
            lambda: models.power_spectrum_distance(x, masked),
            r"^power_spectrum_distance: x_gen is a masked array",
        ),
        (
            lambda: models.state_space_divergence(masked, x),
            r"^state_space_divergence: x_true is a masked array",
        ),
        (
            lambda: models.max_lyapunov(model, x0=_masked(x[0], 0), n_steps=10),
            r"^max_lyapunov: x0 is a masked array",
        ),
        (
            lambda: models.destandardize(masked, np.zeros(N), np.ones(N)),
            r"^destandardize: x_std is a masked array",
        ),
        (
            lambda: autodiff.fit(model, masked, TrainConfig(epochs=1)),
            r"^fit: data is a masked array",
        ),
    ]
    for call, match in cases:
        with pytest.raises(TypeError, match=match + r".*filled\(value\)"):
            call()


def test_power_spectrum_distance_per_dimension(x):
    mean, per_dim = models.power_spectrum_distance(x, x[::-1], per_dimension=np.True_)
    assert per_dim.shape == (N,) and mean == per_dim.mean()
    with pytest.raises(TypeError, match=r"per_dimension must be a bool; got str 'False'"):
        models.power_spectrum_distance(x, x[::-1], per_dimension="False")


def test_gtf_loss_and_grad_refuses_masked_arrays(model, windows):
    with pytest.raises(TypeError, match=rf"^gtf_loss_and_grad: data {MASKED}.*data\.filled"):
        gtf_loss_and_grad(model, _masked(windows, (1, 5, 0)), alpha=0.3)
    with pytest.raises(TypeError, match=rf"^gtf_loss_and_grad: alpha {MASKED}"):
        gtf_loss_and_grad(model, windows, alpha=np.ma.masked_array([0.3, 0.3]))


def test_ssm_windows_refuse_masked_arrays(windows):
    """State-space models check windows through the same model-side conversion."""
    ssm = models.LinearSSM(N, 4, 8)
    with pytest.raises(TypeError, match=rf"^ssm_loss_and_grad: data {MASKED}"):
        autodiff.ssm_loss_and_grad(ssm, _masked(windows, (0, 1, 2)))


# ---- 4. gtf_loss_and_grad takes array_like data ------------------------------------------


@pytest.mark.parametrize("method", ["deer", "sequential"])
def test_gtf_loss_and_grad_accepts_lists(model, windows, method):
    loss, grad, info = gtf_loss_and_grad(model, windows, alpha=0.3, method=method)
    loss_l, grad_l, info_l = gtf_loss_and_grad(model, windows.tolist(), alpha=0.3, method=method)
    assert loss_l == loss
    np.testing.assert_array_equal(grad_l, grad)
    np.testing.assert_array_equal(info_l.newton_iters, info.newton_iters)


def test_gtf_loss_and_grad_list_dtype_and_shape_errors(model, windows):
    m32 = model.astype("float32")
    # a list has no dtype of its own: it takes the model's, as in the models' methods
    loss, grad, _ = gtf_loss_and_grad(m32, windows.astype(np.float32), alpha=0.3)
    loss_l, grad_l, _ = gtf_loss_and_grad(m32, windows.tolist(), alpha=0.3)
    assert loss_l == loss and np.array_equal(grad_l, grad)
    with pytest.raises(
        TypeError,
        match=r"^gtf_loss_and_grad: data must have the model dtype float32; got float64\. Use "
        r"data\.astype\(np\.float32\) or model\.astype\('float64'\)\.$",
    ):
        gtf_loss_and_grad(m32, windows, alpha=0.3)  # an array of another dtype is refused
    with pytest.raises(
        ValueError, match=r"^gtf_loss_and_grad: data is not an array \(nested sequences"
    ):
        gtf_loss_and_grad(model, [windows[0].tolist(), windows[1, :5].tolist()], alpha=0.3)
    with pytest.raises(
        ValueError, match=r"^gtf_loss_and_grad: data must have shape \(B, T\+1, N\)"
    ):
        gtf_loss_and_grad(model, windows[0].tolist(), alpha=0.3)


def test_solvers_and_gtf_alpha_take_lists_in_the_model_dtype(model, x):
    """A list has no dtype of its own: ``deer_solve``, ``sequential_solve`` and ``gtf_alpha``
    read it in the model's dtype, as the models' methods and ``gtf_loss_and_grad`` do (they
    refused it for a float32 model, suggesting ``z0.astype``, which a list has not); values
    that would become inf in float32 are refused, an array of another dtype still is."""
    m32 = model.astype("float32")
    z0, forcing = x[0].astype(np.float32), x[1 : T + 1].astype(np.float32)
    as_lists = {"z0": z0.tolist(), "forcing": forcing.tolist(), "alpha": 0.4}
    as_arrays = {"z0": z0, "forcing": forcing, "alpha": 0.4}
    got, want = parscan.deer_solve(m32, **as_lists), parscan.deer_solve(m32, **as_arrays)
    assert got.states.dtype == np.float32 and np.array_equal(got.states, want.states)
    np.testing.assert_array_equal(
        parscan.sequential_solve(m32, **as_lists), parscan.sequential_solve(m32, **as_arrays)
    )
    assert parscan.gtf_alpha(m32, forcing.tolist()) == parscan.gtf_alpha(m32, forcing)
    huge = [[1e300] * N]
    with pytest.raises(ValueError, match=r"^deer_solve: `z0` has values too large for float32"):
        parscan.deer_solve(m32, huge[0], 3)
    with pytest.raises(ValueError, match=r"^gtf_alpha: `forcing` has values too large for flo"):
        parscan.gtf_alpha(m32, huge)
    with pytest.raises(TypeError, match=r"^sequential_solve: `z0` must have the model dtype"):
        parscan.sequential_solve(m32, x[0], 3)


# ---- 5. every argument validated; the DEER settings refused with method="sequential" --------


def test_sequential_validates_and_refuses_deer_settings(model, windows):
    with pytest.raises(TypeError) as err:
        gtf_loss_and_grad(
            model, windows, alpha=0.3, method="sequential", tol=-1.0, max_iter="x", throw="no"
        )
    message = str(err.value)
    assert message.startswith("gtf_loss_and_grad: ")
    for part in (
        "`max_iter` must be a positive int or None; got 'x'.",
        "`throw` must be a bool; got str 'no'.",
        "`tol` must be None (dtype defaults)",
        "tol=-1.0, max_iter='x' apply to method='deer' (the DEER forward) only; "
        "method='sequential' (BPTT, a fused CPU kernel) runs no Newton iterations or scans; drop "
        "them or use method='deer'.",
    ):
        assert part in message
    for kw, given in (
        (dict(tol=1e-9), "tol=1e-09 applies"),
        (dict(max_iter=5), "max_iter=5 applies"),
        (dict(jacobian="diag"), "jacobian='diag' applies"),
        (dict(backend="cuda"), "backend='cuda' applies"),  # it ran on the CPU without a word
    ):
        with pytest.raises(
            ValueError,
            match=rf"^gtf_loss_and_grad: {given} to method='deer' .* drop it or use method='deer'",
        ):
            gtf_loss_and_grad(model, windows, alpha=0.3, method="sequential", **kw)
    # the DEER forward takes them; the defaults pass with either method
    gtf_loss_and_grad(
        model, windows, alpha=0.3, method="deer", tol=1e-9, max_iter=T, jacobian="diag"
    )
    with pytest.raises(ValueError, match=r"^gtf_loss_and_grad: `tol` must be None .*got -1\.0\.$"):
        gtf_loss_and_grad(model, windows, alpha=0.3, tol=-1.0)
    with pytest.raises(TypeError, match=r"^gtf_loss_and_grad: n_forced must be an int"):
        gtf_loss_and_grad(model, windows, alpha=0.3, method="sequential", n_forced=1.0)


def test_training_passes_default_deer_settings_to_the_sequential_method(model, windows):
    """fit's step passes config.jacobian/newton_tol/newton_max_iter for both methods;
    TrainConfig keeps them at their defaults for method="sequential", so the step runs."""
    config = TrainConfig(method="sequential")
    loss, grad, newton, reason, _ = _loss_and_grad(model, windows, 0.3, config)
    want_loss, want_grad, _ = gtf_loss_and_grad(model, windows, alpha=0.3, method="sequential")
    assert reason == "" and newton == (0, 0.0) and loss == want_loss
    np.testing.assert_array_equal(grad, want_grad)


def test_paths_must_be_non_empty_str_or_path(model, tmp_path):
    """save/load/load_data name themselves; an empty path is not the working directory."""
    cases = [
        (lambda p: model.save(p), "ShPLRNN.save"),
        (lambda p: models.load(p), "models.load"),
        (lambda p: models.load_with_metadata(p), "models.load_with_metadata"),
        (lambda p: models.ShPLRNN.load(p), "ShPLRNN.load"),
        (lambda p: models.load_data(p), "load_data"),
    ]
    for call, where in cases:
        with pytest.raises(TypeError, match=rf"^{where}: path must be a str or Path; got NoneT"):
            call(None)
        with pytest.raises(ValueError, match=rf"^{where}: path must not be empty \(it would"):
            call("")
    with pytest.raises(ValueError, match=r"^ShPLRNN.load: no such file "):
        models.ShPLRNN.load(tmp_path / "missing.npz")
    with pytest.raises(IsADirectoryError, match=r"^ShPLRNN.save: cannot write .*it is a direc"):
        model.save(tmp_path)
    assert models.load(model.save(tmp_path / "m.npz")).hyperparameters() == (
        model.hyperparameters()
    )


def test_generate_names_itself(model, x):
    with pytest.raises(TypeError) as info:
        model.generate(x[0, :2], 2.5)
    assert str(info.value) == (
        "ShPLRNN.generate: x0 must have shape (..., N) with N=3; got (2,). n_steps must be an "
        "int; got float."
    )
    with pytest.raises(ValueError, match=r"^ShPLRNN.generate: n_steps must be >= 0; got -1"):
        model.generate(x[0], -1)
    np.testing.assert_array_equal(
        model.generate(x[0], 5), model.simulate(model.initial_state(x[0]), 5)[..., :N]
    )


def test_ragged_and_masked_inputs_of_the_solvers_and_systems(model, x):
    with pytest.raises(ValueError, match=r"^deer_solve: `z0` is not an array \(nested"):
        parscan.deer_solve(model, [[1.0, 2.0, 3.0], [1.0]], 5)
    with pytest.raises(ValueError, match=r"^gtf_alpha: `forcing` is not an array \(nested"):
        parscan.gtf_alpha(model, [[[1.0, 2.0, 3.0], [1.0]]])
    masked = _masked(np.array([1.0, 2.0, 3.0]), 1)
    with pytest.raises(TypeError, match=r"^generate: x0 is a masked array"):
        models.generate("lorenz63", 5, x0=masked)
    with pytest.raises(TypeError, match=r"^lyapunov_spectrum: x0 is a masked array"):
        models.lyapunov_spectrum("lorenz63", x0=masked, n_steps=5)
    with pytest.raises(TypeError, match=r"^System.rhs: x is a masked array"):
        models.SYSTEMS["lorenz63"].rhs(masked)


# ---- 4. An array in the other byte order (read from a big-endian file) is its values ---------


def _swapped(a):
    """``a`` in the other byte order: the same values, another dtype object."""
    a = np.asarray(a)
    return a.astype(a.dtype.newbyteorder("S"))


def test_the_other_byte_order_gives_the_same_results(model, x, windows):
    z0, forcing = x[0], x[1 : T + 1]
    assert _swapped(z0).dtype != z0.dtype and _swapped(z0).dtype.newbyteorder("=") == z0.dtype
    calls = [
        lambda z0, forcing: model.step(forcing),
        lambda z0, forcing: model.step_and_jacobian(forcing)[1],
        lambda z0, forcing: model.simulate(z0, 5),
        lambda z0, forcing: model.generate(z0, 5),
        lambda z0, forcing: parscan.deer_solve(model, z0, forcing=forcing, alpha=0.3).states,
        lambda z0, forcing: parscan.sequential_solve(model, z0, forcing=forcing, alpha=0.3),
        lambda z0, forcing: parscan.gtf_alpha(model, forcing, states=forcing),
        lambda z0, forcing: parscan.linear_scan(forcing, forcing, z0),
        lambda z0, forcing: models.generate("lorenz63", 5, x0=z0),
    ]
    for k, call in enumerate(calls):
        want = call(z0, forcing)
        np.testing.assert_array_equal(call(_swapped(z0), _swapped(forcing)), want, err_msg=k)
    for method in ("deer", "sequential"):
        loss, grad, _ = gtf_loss_and_grad(model, windows, alpha=0.3, method=method)
        loss_s, grad_s, _ = gtf_loss_and_grad(model, _swapped(windows), alpha=0.3, method=method)
        assert loss_s == loss and grad_s.dtype == grad.dtype
        np.testing.assert_array_equal(grad_s, grad)
    with pytest.raises(TypeError, match=r"^deer_solve: `z0` must have the model dtype float32"):
        parscan.deer_solve(model.astype("float32"), _swapped(z0), 5)
