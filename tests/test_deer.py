"""DEER / GTF-DEER (``parscan.deer``) against the sequential solve and a NumPy loop.

Models: an Euler-discretised Lorenz-63 map written here in NumPy (chaotic, no compile) and
every piecewise-linear model of ``models/``. Sizes are small: JIT compilation dominates.
"""

import itertools
import pickle
import re

import numba
import numpy as np
import pytest
from reference import forced_recursion_reference

from models import ALRNN, PLRNN, ClippedShPLRNN, ShPLRNN
from models.base import LatentRNN
from parscan import (
    DeerConvergenceError,
    DeerResult,
    DeerStatus,
    _buffers,
    deer_solve,
    gtf_alpha,
    sequential_solve,
)
from parscan import deer as deer_module
from parscan import scan as scan_module
from parscan._deer_kernels import update_norms
from parscan.deer import SERIAL_BELOW
from parscan.gtf import DEFAULT_MARGIN, GTFGuaranteeWarning

# Agreement of DEER with the sequential solves (default stopping tolerances), per dtype.
TOL = {np.dtype(np.float64): 1e-8, np.dtype(np.float32): 2e-4}


class EulerLorenz(LatentRNN):
    """``z' = z + dt f(z)`` with the Lorenz-63 vector field (sigma, rho, beta = 10, 28, 8/3);
    chaotic for ``dt = 0.01``. NumPy only (the solver is duck-typed on the contract)."""

    def __init__(self, dt=0.01, dtype="float64", seed=0):
        self.M = self.n_obs = 3
        self.dt = dt
        self._setup(dtype)
        self.init(seed)

    def param_spec(self):
        return [("p", (3,))]

    def hyperparameters(self):
        return {"dt": self.dt, "dtype": self.dtype.name}

    def init(self, seed=0):
        self.params[:] = (10.0, 28.0, 8.0 / 3.0)
        return self

    @np.errstate(over="ignore", invalid="ignore")  # NaN/inf must propagate, not warn
    def _evaluate(self, z, diag):
        s, r, b = self.params
        dt = self.dtype.type(self.dt)
        x, y, w = z[..., 0], z[..., 1], z[..., 2]
        f = np.stack(
            [x + dt * s * (y - x), y + dt * (x * (r - w) - y), w + dt * (x * y - b * w)], -1
        )
        one, zero = np.ones_like(x), np.zeros_like(x)
        if diag:
            return f, np.stack([one - dt * s, one - dt, one - dt * b], -1)
        rows = [
            [one - dt * s, dt * s * one, zero],
            [dt * (r - w), one - dt, -dt * x],
            [dt * y, dt * x, one - dt * b],
        ]
        return f, np.stack([np.stack(row, -1) for row in rows], -2)

    def step(self, z):
        return self._evaluate(z, True)[0]

    def jacobian(self, z):
        return self._evaluate(z, False)[1]

    def jacobian_diag(self, z):
        return self._evaluate(z, True)[1]

    def step_and_jacobian(self, z, diag=False, out=None):
        f, j = self._evaluate(z, diag)
        if out is None:
            return f, j
        out[0][...] = f
        out[1][...] = j
        return out

    def param_vjp(self, z_prev, cotangent):
        raise NotImplementedError

    def norm_bound(self):
        return np.inf

    def simulate(self, z0, n_steps):
        out = np.empty((*z0.shape[:-1], n_steps, 3), dtype=self.dtype)
        z = z0
        for t in range(n_steps):
            z = out[..., t, :] = self.step(z)
        return out


class DiagLinear:
    """``z' = a * z`` elementwise: the smallest model of the solver contract (NumPy, no
    ``simulate``, so forced and free sequential solves take the Python loop)."""

    def __init__(self, a, dtype="float64"):
        self.dtype = np.dtype(dtype)
        self.a = np.asarray(a, dtype=self.dtype)
        self.M = self.a.size

    @np.errstate(over="ignore", invalid="ignore")  # overflow is the point of some tests
    def step(self, z):
        return self.a * z

    def step_and_jacobian(self, z, diag=False, out=None):
        f = self.step(z)
        shape = z.shape if diag else (*z.shape, self.M)
        j = np.broadcast_to(self.a if diag else np.diag(self.a), shape)
        if out is None:
            return f, j
        out[0][...] = f
        out[1][...] = j
        return out


def lorenz_data(T, seed=0, noise=0.5):
    """A point on the attractor and ``T`` noisy observations of the orbit after it."""
    m = EulerLorenz()
    z0 = m.simulate(np.array([1.0, 1.0, 20.0]), 3000)[-1]
    orbit = m.simulate(z0, T)
    return z0, orbit + noise * np.random.default_rng(seed).standard_normal(orbit.shape)


def make_model(name, dtype="float64", seed=0):
    """A model of ``models/`` (M=4, N=3) with lab-initialised weights and random biases, so
    both relu regimes are visited; orbits stay bounded."""
    if name == "Lorenz":
        return EulerLorenz(dtype=dtype)
    cls = {"ShPLRNN": ShPLRNN, "ClippedShPLRNN": ClippedShPLRNN, "ALRNN": ALRNN, "PLRNN": PLRNN}
    kwargs = {"L": 6} if "Sh" in name else {"P": 2} if name == "ALRNN" else {}
    m = cls[name](M=4, n_obs=3, seed=seed, **kwargs)
    rng = np.random.default_rng(seed + 100)
    for block in ("h1", "h2", "h"):
        if block in m.unflatten():
            m[block][...] = rng.uniform(-0.5, 0.5, m[block].shape)
    return m.astype(dtype)


MODEL_NAMES = ["Lorenz", "ShPLRNN", "ClippedShPLRNN", "ALRNN", "PLRNN"]


def problem(model, batch, T, mode, seed=0):
    """``(z0, forcing, alpha, n_forced)`` for a free run, full or partial forcing."""
    rng = np.random.default_rng(seed)
    dt = model.dtype
    if isinstance(model, EulerLorenz):
        z0_one, data = lorenz_data(T, seed)
        z0 = (z0_one + rng.standard_normal((*batch, 3))).astype(dt)
        forcing = (data + rng.standard_normal((*batch, T, 3))).astype(dt)
    else:
        z0 = rng.standard_normal((*batch, model.M)).astype(dt)
        forcing = rng.standard_normal((*batch, T, model.n_obs)).astype(dt)
    if mode == "free":
        return z0, None, 0.0, None
    if mode == "full":
        return z0, forcing, 0.3, None
    alpha = rng.uniform(0.1, 0.9, batch).astype(dt) if batch else 0.5
    return z0, forcing[..., :2], alpha, 1  # partial: N = 2 observed, 1 forced


CASES = [
    (batch, T, mode)
    for (batch, T), mode in zip(
        itertools.product([(), (3,), (2, 3)], [1, 2, 7, 50]),
        itertools.cycle(["free", "full", "partial"]),
        strict=False,
    )
]


@pytest.fixture(scope="module", params=MODEL_NAMES)
def model_name(request):
    return request.param


@pytest.mark.parametrize("jacobian", ["full", "diag"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_deer_matches_sequential_and_reference(model_name, dtype, jacobian):
    model = make_model(model_name, dtype)
    tol = TOL[model.dtype]
    for batch, T, mode in CASES:
        z0, forcing, alpha, n_forced = problem(model, batch, T, mode)
        kw = {"forcing": forcing, "alpha": alpha, "n_forced": n_forced}
        res = deer_solve(model, z0, T, jacobian=jacobian, **kw)
        seq = sequential_solve(model, z0, T, **kw)
        ref_states, ref_pred = forced_recursion_reference(model.step, z0, T, **kw)
        where = f"{model_name} {dtype} {jacobian} batch={batch} T={T} {mode}"
        assert isinstance(res, DeerResult)
        assert res.states.shape == res.predictions.shape == (*batch, T, model.M), where
        assert res.states.dtype == res.predictions.dtype == model.dtype, where
        assert res.status is DeerStatus.CONVERGED and res.converged.all(), where
        assert res.n_iter.shape == res.converged.shape == batch, where
        assert np.all((res.n_iter >= 1) & (res.n_iter <= T)), where
        assert res.residuals.ndim == 1 and res.residuals.size == res.n_iter.max(), where
        scale = 1.0 + np.max(np.abs(ref_states))
        for got, want in [(res.states, seq), (res.states, ref_states), (seq, ref_states)]:
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale, err_msg=where)
        np.testing.assert_allclose(
            res.predictions, ref_pred, rtol=tol, atol=tol * scale, err_msg=where
        )


@pytest.mark.parametrize("backend", ["auto", "cpu"])
def test_full_newton_on_piecewise_linear_model_is_exact_to_rounding(backend):
    """Newton stops once the relu pattern is fixed: the result is the sequential one to
    rounding, not just to the stopping tolerance. ``backend="cpu"``: the threaded scans,
    parallel over a batch that fills the threads, with enough positions (B T >= 2048) for
    the kernels to run threaded."""
    model = make_model("ShPLRNN")
    B = max(4, numba.get_num_threads())
    T = max(200, -(-SERIAL_BELOW // B))
    z0, forcing, alpha, _ = problem(model, (B,), T, "full")
    res = deer_solve(model, z0, forcing=forcing, alpha=alpha, backend=backend)
    seq = sequential_solve(model, z0, forcing=forcing, alpha=alpha)
    np.testing.assert_allclose(res.states, seq, rtol=0, atol=1e-13)


@pytest.mark.parametrize("model_name", MODEL_NAMES[1:])
def test_free_run_equals_simulate(model_name):
    model = make_model(model_name)
    z0 = np.random.default_rng(3).standard_normal((2, model.M))
    res = deer_solve(model, z0, 40)
    np.testing.assert_allclose(res.states, model.simulate(z0, 40), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(res.predictions, res.states, rtol=1e-12, atol=1e-12)
    assert res.alpha == 0.0


def test_free_run_of_chaotic_lorenz_equals_simulate():
    model = EulerLorenz()
    z0, _ = lorenz_data(1)
    res = deer_solve(model, z0, 50)
    np.testing.assert_allclose(res.states, model.simulate(z0, 50), rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize(
    ("model_name", "jacobian", "mode"),
    [("Lorenz", "full", "free"), ("Lorenz", "diag", "full"), ("ALRNN", "full", "partial")],
)
def test_causality_first_k_states_exact_after_k_iterations(model_name, jacobian, mode):
    model = make_model(model_name)
    T = 40
    z0, forcing, alpha, n_forced = problem(model, (2,), T, mode)
    kw = {"forcing": forcing, "alpha": 0.0 if forcing is None else alpha, "n_forced": n_forced}
    ref, _ = forced_recursion_reference(model.step, z0, T, **kw)
    scale = np.max(np.abs(ref))
    for k in (1, 2, 3, 5):
        res = deer_solve(model, z0, T, jacobian=jacobian, max_iter=k, throw=False, **kw)
        assert np.all(res.n_iter <= k)
        np.testing.assert_allclose(
            res.states[:, :k], ref[:, :k], rtol=0, atol=1e-12 * scale, err_msg=f"k={k}"
        )
    # T iterations are always enough (exact by causality): reported as converged even when
    # the last update does not meet the tolerance.
    kw3 = {**kw, "forcing": None if forcing is None else forcing[:, :3]}
    res = deer_solve(model, z0, 3, jacobian=jacobian, max_iter=3, tol=1e-300, **kw3)
    assert res.ok and np.all(res.n_iter == 3) and res.residuals[-1] > 1e-300


@pytest.mark.parametrize("T", [100, 1000, 10000])
def test_auto_alpha_keeps_newton_iterations_small_on_chaotic_lorenz(T):
    model = EulerLorenz()
    z0, data = lorenz_data(T, seed=1)
    res = deer_solve(model, z0, forcing=data, alpha="auto")
    assert res.ok
    assert int(res.n_iter) <= 10
    assert res.alpha == pytest.approx(gtf_alpha(model, data))
    assert 0.09 < res.alpha < 0.2  # 1 - 1/max||J|| is about 0.1 for dt = 0.01
    seq = sequential_solve(model, z0, forcing=data, alpha=res.alpha)
    np.testing.assert_allclose(res.states, seq, rtol=1e-9, atol=1e-9)


def test_plain_deer_on_chaotic_lorenz_needs_many_iterations():
    """The contrast that makes the auto-alpha test meaningful: alpha = 0 is slow."""
    model = EulerLorenz()
    z0, data = lorenz_data(1000, seed=1)
    res = deer_solve(model, z0, forcing=data, alpha=0.0, max_iter=10, throw=False)
    assert not res.ok  # max_iter, or the iterates blew up (diverging / overflow to inf)


def test_per_sequence_alpha_and_stopping():
    """Each sequence uses its own alpha and stops on its own; a stopped one does not change."""
    model = make_model("ShPLRNN")
    z0, forcing, _, _ = problem(model, (3,), 60, "full")
    alpha = np.array([0.0, 0.5, 1.0])
    res = deer_solve(model, z0, forcing=forcing, alpha=alpha)
    for i in range(3):
        one = deer_solve(model, z0[i], forcing=forcing[i], alpha=float(alpha[i]))
        np.testing.assert_array_equal(res.states[i], one.states)
        assert res.n_iter[i] == one.n_iter
    np.testing.assert_array_equal(res.alpha, alpha)
    # alpha = 1 copies the data into the forced part
    np.testing.assert_array_equal(res.states[2, :, :3], forcing[2])


def test_user_init_is_used():
    model = make_model("PLRNN")
    z0, forcing, alpha, _ = problem(model, (2,), 30, "full")
    seq = sequential_solve(model, z0, forcing=forcing, alpha=alpha)
    res = deer_solve(model, z0, forcing=forcing, alpha=alpha, init=seq)
    assert np.all(res.n_iter == 1)
    np.testing.assert_allclose(res.states, seq, rtol=1e-13, atol=1e-13)


def test_empty_time_and_batch():
    model = make_model("ShPLRNN")
    res = deer_solve(model, np.zeros(4), 0)
    assert res.states.shape == (0, 4) and res.ok and res.n_iter == 0
    res = deer_solve(model, np.zeros((0, 4)), 5)
    assert res.states.shape == (0, 5, 4) and res.ok
    assert sequential_solve(model, np.zeros(4), 0).shape == (0, 4)


def test_auto_alpha_of_an_empty_problem_is_the_margin_as_gtf_alpha_gives():
    """No points to bound: the margin alone, as gtf_alpha for an empty batch."""
    model = make_model("ShPLRNN")
    forcing = np.zeros((0, 5, 3))
    with pytest.warns(GTFGuaranteeWarning):
        assert gtf_alpha(model, forcing) == DEFAULT_MARGIN
    res = deer_solve(model, np.zeros((0, 4)), forcing=forcing, alpha="auto")
    assert res.ok and res.alpha == DEFAULT_MARGIN and res.states.shape == (0, 5, 4)
    res = deer_solve(model, np.zeros((2, 4)), forcing=np.zeros((2, 0, 3)), alpha="auto")
    assert res.ok and res.alpha == DEFAULT_MARGIN and res.states.shape == (2, 0, 4)


@pytest.mark.parametrize("dtype, tol", [("float32", 1e-7), ("float64", 1e-16)])
def test_a_tolerance_below_rounding_is_named_as_the_cause_of_max_iter(dtype, tol):
    """A tol tighter than the dtype resolves: Newton converges in 5 iterations, then its
    updates sit at 4-6 eps |z| until max_iter. The message says to loosen tol (and, in
    float32, to run in float64), not to iterate more or raise alpha, which cannot help."""
    model = make_model("ShPLRNN", dtype)
    rng = np.random.default_rng(0)
    z0 = rng.standard_normal(4).astype(dtype)
    forcing = rng.standard_normal((1000, 3)).astype(dtype)
    with pytest.warns(GTFGuaranteeWarning):
        assert deer_solve(model, z0, forcing=forcing, alpha="auto").n_iter == 5
    with pytest.warns(GTFGuaranteeWarning), pytest.raises(DeerConvergenceError) as info:
        deer_solve(model, z0, forcing=forcing, alpha="auto", tol=tol)
    message = str(info.value)
    default = "rtol=1e-05, atol=1e-05" if dtype == "float32" else "rtol=1e-09, atol=1e-09"
    assert re.search(
        rf"To converge: loosen tol \(the last update \S+ is at {dtype}'s rounding level, 16 "
        rf"eps x max\|z\| = \S+, which no number of iterations goes below; {dtype}'s default is "
        rf"{default}\)",
        message,
    ), message
    assert ("run in float64" in message) == (dtype == "float32")
    assert "allow more iterations" not in message and "raise alpha" not in message


def test_updates_still_falling_are_no_stall_at_rounding():
    """Updates below the rounding level of a large |z| (~300 here: 16 eps |z| = 5.7e-4) that
    still fall sevenfold an iteration are a Newton converging (it does at iteration 11):
    "allow more iterations", not "loosen tol"."""
    model = make_model("ShPLRNN", "float32")
    rng = np.random.default_rng(0)
    z0 = (100 * rng.standard_normal(4)).astype(np.float32)
    forcing = (100 * rng.standard_normal((200, 3))).astype(np.float32)
    kw = {"forcing": forcing, "alpha": 0.3, "jacobian": "diag"}
    with pytest.raises(DeerConvergenceError) as info:
        deer_solve(model, z0, max_iter=9, **kw)
    message = str(info.value)
    assert "allow more iterations (max_iter=9" in message and "loosen tol" not in message
    assert deer_solve(model, z0, **kw).n_iter == 11


def test_a_jacobian_array_or_a_tol_beyond_float_is_an_argument_error():
    """NumPy's "truth value is ambiguous" and "ufunc 'isfinite' not supported" before."""
    model = make_model("ShPLRNN")
    with pytest.raises(ValueError, match=r"^deer_solve: `jacobian` must be 'full' or 'diag'; "):
        deer_solve(model, np.zeros(4), 10, jacobian=np.array(["full", "diag"]))
    with pytest.raises(ValueError, match=r"^deer_solve: `tol` must be None .*; got \(1e-06, 1"):
        deer_solve(model, np.zeros(4), 10, tol=(1e-6, 10**400))
    assert deer_solve(model, np.zeros(4), 10, tol=2**64).ok  # finite: converged at once


def test_max_iter_too_small_raises_documented_error():
    model = EulerLorenz()
    z0, data = lorenz_data(500, seed=2)
    with pytest.raises(DeerConvergenceError, match=r"max_iter.*alpha='auto'") as info:
        deer_solve(model, z0, forcing=data, alpha=0.2, max_iter=2)
    err = info.value
    assert isinstance(err, RuntimeError)
    assert "2 iteration(s)" in str(err) and "last max update" in str(err)
    message = str(err)
    assert "allow more iterations (max_iter=2 < T=500" in message and "raise alpha" in message
    assert "switch to jacobian='full'" not in message  # 'full' was used
    assert err.result.status is DeerStatus.MAX_ITER
    assert not err.result.converged and err.result.n_iter == 2
    copy = pickle.loads(pickle.dumps(err))  # as multiprocessing sends it to the caller
    assert str(copy) == message and copy.result.status is DeerStatus.MAX_ITER
    np.testing.assert_array_equal(copy.result.states, err.result.states)
    res = deer_solve(model, z0, forcing=data, alpha=0.2, max_iter=2, throw=False)
    assert res.status is DeerStatus.MAX_ITER and not res.ok
    assert str(res.status.value).startswith("max_iter:")


def test_nan_in_forcing_or_z0_is_non_finite_and_kept():
    model = make_model("ClippedShPLRNN")
    z0, forcing, alpha, _ = problem(model, (3,), 20, "full")
    forcing[1, 7, 0] = np.nan
    res = deer_solve(model, z0, forcing=forcing, alpha=alpha, throw=False)
    assert res.status is DeerStatus.NON_FINITE
    np.testing.assert_array_equal(res.converged, [True, False, True])
    assert np.isfinite(res.states[1, :7]).all() and np.isnan(res.states[1, 7, 0])
    assert np.isnan(res.states[1, 8:]).all()
    assert np.isfinite(res.states[[0, 2]]).all()
    with pytest.raises(DeerConvergenceError, match="non_finite"):
        deer_solve(model, z0, forcing=forcing, alpha=alpha)
    z0[0, 1] = np.inf
    res = deer_solve(model, z0, 20, throw=False)
    assert res.status is DeerStatus.NON_FINITE and not res.converged[0]
    assert not np.isfinite(res.states[0]).any()
    broken = model.copy()
    broken.params[0] = np.nan
    res = deer_solve(broken, z0[1:], 20, throw=False)
    assert res.status is DeerStatus.NON_FINITE and not res.converged.any()


def test_nan_in_a_column_that_is_not_forced_is_ignored_as_by_the_recursion():
    model = make_model("ClippedShPLRNN")
    z0, forcing, alpha, _ = problem(model, (2,), 20, "full")
    forcing[1, 7, -1] = np.nan  # the last observed column, not forced with n_forced = N - 1
    n_forced = forcing.shape[-1] - 1
    res = deer_solve(model, z0, forcing=forcing, alpha=alpha, n_forced=n_forced)
    ref = sequential_solve(model, z0, forcing=forcing, alpha=alpha, n_forced=n_forced)
    assert res.ok and np.isfinite(res.states).all()
    np.testing.assert_allclose(res.states, ref, rtol=1e-10, atol=1e-12)


class ReturnsNewArrays(DiagLinear):
    """Returns ``(F, J)`` as new arrays instead of writing them into ``out``; or, with
    ``result``, returns that."""

    def __init__(self, a, result=None):
        super().__init__(a)
        self.result = result

    def step_and_jacobian(self, z, diag=False, out=None):
        pair = super().step_and_jacobian(z, diag)
        return pair if self.result is None else self.result(pair)


def test_a_model_returning_new_arrays_is_solved_with_them():
    """Its F and J are copied into the solver's buffers, not left as np.empty made them (a
    'converged' solve of zeros before)."""
    z0, forcing = np.ones(3), np.random.default_rng(0).standard_normal((5000, 3))
    a = [0.5, -0.9, 0.8]
    for kw in ({}, {"jacobian": "diag"}, {"forcing": forcing, "alpha": "auto"}):
        if "forcing" not in kw:
            kw = {"T": 5000, **kw}
        expected = deer_solve(DiagLinear(a), z0, **kw)
        res = deer_solve(ReturnsNewArrays(a), z0, **kw)
        np.testing.assert_array_equal(res.states, expected.states)
        assert res.n_iter == expected.n_iter and res.alpha == expected.alpha
    assert gtf_alpha(ReturnsNewArrays(a), forcing) == gtf_alpha(DiagLinear(a), forcing)


@pytest.mark.parametrize(
    ("result", "error", "match"),
    [
        (lambda pair: None, TypeError, r"must return the pair \(F, J\) it wrote into out; got "
         r"NoneType\. Write F\(z\) and its Jacobian into out and return them\.$"),
        (lambda pair: pair[0], TypeError, r"must return the pair .* got ndarray\."),
        (lambda pair: (pair[0] + 0j, pair[1]), TypeError, r"returned F of dtype complex128; "
         r"expected float64, the model's\."),
        (lambda pair: (pair[0], np.ones((*pair[0].shape, 2))), ValueError,
         r"returned J of shape \(1, 50, 3, 2\); expected \(1, 50, 3\) \(the diagonal of J "
         r"only\)\."),
    ],
)  # fmt: skip
def test_a_model_returning_no_pair_of_arrays_is_refused(result, error, match):
    model = ReturnsNewArrays([0.5, -0.9, 0.8], result)
    with pytest.raises(error, match=r"^deer_solve: model\.step_and_jacobian\(z, diag=True, "
                       r"out=\(F, J\)\) " + match):  # fmt: skip
        deer_solve(model, np.ones(3), 50, jacobian="diag")
    with pytest.raises(error, match=r"^gtf_alpha: model\.step_and_jacobian\(z, diag=False"):
        gtf_alpha(model, np.ones((10, 3)))


def test_non_finite_is_judged_on_the_data_the_recursion_reads():
    """An unstable unforced latent overflows (diverging) whatever the data in the column
    that is not forced holds; NaN in the forced column is non_finite."""
    model = DiagLinear([0.5, 2.0])
    forcing = np.random.default_rng(0).standard_normal((1100, 2))
    kw = {"alpha": 0.5, "n_forced": 1, "throw": False}
    clean = deer_solve(model, np.ones(2), forcing=forcing, **kw)
    assert clean.status is DeerStatus.DIVERGING and not np.isfinite(clean.states[-1, 1])
    unforced = forcing.copy()
    unforced[3, 1] = np.nan
    res = deer_solve(model, np.ones(2), forcing=unforced, **kw)
    assert res.status is DeerStatus.DIVERGING
    np.testing.assert_array_equal(res.states, clean.states)
    forced = forcing.copy()
    forced[3, 0] = np.nan
    assert deer_solve(model, np.ones(2), forcing=forced, **kw).status is DeerStatus.NON_FINITE


@pytest.mark.parametrize("jacobian", ["full", "diag"])
@pytest.mark.parametrize("model_name", ["ShPLRNN", "Linear"])
def test_alpha_zero_does_not_read_the_data(model_name, jacobian):
    """A sequence with alpha 0 is a free run: NaN data are not read, by DEER, by the
    sequential solves (jitted kernel for ShPLRNN, Python loop for the linear model) and by
    the non-finite check."""
    model = DiagLinear([0.5, -0.9, 0.8]) if model_name == "Linear" else make_model(model_name)
    rng = np.random.default_rng(4)
    z0 = rng.standard_normal((2, model.M))
    forcing = rng.standard_normal((2, 30, 3))
    forcing[:, 5] = np.nan
    free = sequential_solve(model, z0, 30)
    tol = {"rtol": 1e-8, "atol": 1e-8}  # DEER: to its stopping tolerance
    alpha = np.array([0.0, 0.3])
    res = deer_solve(model, z0, forcing=forcing, alpha=alpha, jacobian=jacobian, throw=False)
    np.testing.assert_array_equal(res.converged, [True, False])
    assert res.status is DeerStatus.NON_FINITE
    np.testing.assert_allclose(res.states[0], free[0], **tol)
    seq = sequential_solve(model, z0, forcing=forcing, alpha=alpha)
    np.testing.assert_allclose(seq[0], free[0], rtol=1e-12, atol=1e-12)
    assert np.isnan(seq[1, 5:]).any()
    res = deer_solve(model, z0, forcing=forcing, alpha=0.0, jacobian=jacobian)
    np.testing.assert_allclose(res.states, free, **tol)
    seq = sequential_solve(model, z0, forcing=forcing, alpha=0.0)
    np.testing.assert_allclose(seq, free, rtol=1e-12, atol=1e-12)


def test_auto_alpha_is_estimated_over_the_sequences_with_finite_inputs():
    """alpha='auto' gives the statuses of a numeric alpha: sequences with NaN/inf inputs end
    non_finite (z0, forced data), NaN in a column that is not forced is not read."""
    model = make_model("ShPLRNN")  # M = 4 > N = 3: z0's last latent is in the guess only
    z0, forcing, _, _ = problem(model, (4,), 20, "full")
    z0[0, 3] = np.nan
    forcing[1, 5, 2] = np.nan  # not forced with n_forced = 2
    forcing[2, 5, 0] = np.inf
    kw = {"forcing": forcing, "n_forced": 2, "throw": False}
    with pytest.warns(GTFGuaranteeWarning):
        res = deer_solve(model, z0, alpha="auto", **kw)
    np.testing.assert_array_equal(res.converged, [False, True, False, True])
    assert res.status is DeerStatus.NON_FINITE
    numeric = deer_solve(model, z0, alpha=res.alpha, **kw)
    np.testing.assert_array_equal(numeric.converged, res.converged)
    np.testing.assert_array_equal(numeric.states, res.states)
    with pytest.warns(GTFGuaranteeWarning):
        finite_only = deer_solve(
            model, z0[[1, 3]], alpha="auto", **{**kw, "forcing": forcing[[1, 3]]}
        )
    assert res.alpha == finite_only.alpha
    broken = model.copy()
    broken.params[0] = np.nan
    with pytest.warns(GTFGuaranteeWarning):
        res = deer_solve(broken, z0, alpha="auto", **kw)
    assert res.status is DeerStatus.NON_FINITE and res.alpha == DEFAULT_MARGIN


def test_the_failure_message_quotes_the_failed_sequences_last_update():
    """A sequence that blows up early beside one that converges later: the message's last
    update is the failed one's (inf/NaN), not the converged one's last tiny step."""
    model = EulerLorenz()
    z0, data = lorenz_data(1000, seed=2)
    alpha = np.array([0.0, 0.005])  # plain DEER diverges; forced by 0.005 converges
    res = deer_solve(model, np.stack([z0, z0]), forcing=np.stack([data, data]), alpha=alpha,
                     throw=False)  # fmt: skip
    assert list(res.converged) == [False, True] and res.n_iter[0] < res.n_iter[1]
    assert res.residuals[-1] < 1e-9  # the converged sequence's last update
    with pytest.raises(DeerConvergenceError) as info:
        deer_solve(model, np.stack([z0, z0]), forcing=np.stack([data, data]), alpha=alpha)
    assert "; last max update inf/NaN of the failed sequence(s) (tolerance" in str(info.value)
    late = deer_solve(model, z0, forcing=data, alpha=0.005, max_iter=3, throw=False)
    assert late.status is DeerStatus.MAX_ITER
    with pytest.raises(DeerConvergenceError) as info:
        deer_solve(model, z0, forcing=data, alpha=0.005, max_iter=3)
    assert f"last max update {late.residuals[-1]:.3g} of the failed sequence(s)" in str(info.value)


def test_a_large_first_update_from_the_guess_is_no_divergence():
    """The first update is measured from the initial guess: a float32 orbit that grows past
    sqrt(finfo.max) (but stays finite) is solved exactly by the first iterate and converges at
    the second, as does a sequence whose unread data column is huge (it seeds the guess)."""
    growing = DiagLinear([1.5, 0.5], "float32")
    z0 = np.ones(2, np.float32)
    res = deer_solve(growing, z0, 120)
    assert res.status is DeerStatus.CONVERGED and res.n_iter == 2
    assert np.array_equal(res.states, sequential_solve(growing, z0, 120))
    model = make_model("ShPLRNN", "float32")
    z0, orbit = lorenz_data(60)
    forcing = np.concatenate([orbit, np.full((60, 1), 1e25)], axis=1).astype(np.float32)
    z0 = np.concatenate([z0, [0.0]]).astype(np.float32)[: model.M]
    res = deer_solve(model, z0, forcing=forcing[:, : model.M], alpha=0.3, n_forced=2)
    assert res.status is DeerStatus.CONVERGED
    reference = sequential_solve(model, z0, forcing=forcing[:, : model.M], alpha=0.3, n_forced=2)
    np.testing.assert_allclose(res.states, reference, rtol=1e-4, atol=1e-4)


def test_a_numpy_integer_T_of_a_small_type_is_the_same_T():
    """B * T of an np.uint8 T wrapped to 0: the empty problem, returned as converged."""
    model = make_model("ShPLRNN")
    z0 = np.random.default_rng(0).standard_normal((2, model.M))
    expected = sequential_solve(model, z0, 128)
    assert np.array_equal(sequential_solve(model, z0, np.uint8(128)), expected)
    res = deer_solve(model, z0, np.uint8(128))
    assert res.states.shape == (2, 128, model.M)
    np.testing.assert_allclose(res.states, expected, rtol=1e-10, atol=1e-10)


def test_diverging_plain_deer_on_chaotic_free_run():
    model = EulerLorenz()
    z0, _ = lorenz_data(1)
    res = deer_solve(model, z0, 100, throw=False)
    assert res.status is DeerStatus.DIVERGING
    assert res.n_iter < 100
    with pytest.raises(DeerConvergenceError, match=r"^deer_solve: diverging") as info:
        deer_solve(model, z0, 100)
    message = str(info.value)
    assert f"after {int(res.n_iter)} iteration(s)" in message and "last max update" in message
    assert "use sequential_solve or model.simulate" in message and "forcing=data" in message
    # the remedies that cannot help this run are not offered: it overflowed (more iterations),
    # it used 'full', it is a free run (alpha) in float64
    for useless in ("allow more iterations", "switch to jacobian", "raise alpha", "float64"):
        assert useless not in message


def test_a_forced_run_at_alpha_0_is_offered_the_sequential_solve():
    """alpha = 0 reads no data: the run is a free run, and its failure offers the sequential
    solve next to a larger alpha (it offered alpha only, which changes the problem)."""
    model = EulerLorenz()
    z0, data = lorenz_data(1000, seed=1)
    message = _failure(model, z0, forcing=data, alpha=0.0, max_iter=10)
    assert "use sequential_solve or model.simulate" in message and "raise alpha" in message
    # per sequence: the remedies of the failed ones (here the one at alpha 0)
    z0, data = np.stack([z0, z0]), np.stack([data, data])
    message = _failure(model, z0, forcing=data, alpha=np.array([0.0, 1.0]), max_iter=10)
    assert "use sequential_solve or model.simulate" in message


def test_auto_alpha_without_forced_latents_is_refused():
    """alpha='auto' with n_forced=0 estimated an alpha that acted on nothing (and warned of
    partial forcing)."""
    model = EulerLorenz()
    z0, data = lorenz_data(50, seed=1)
    with pytest.raises(
        ValueError,
        match=r"^deer_solve: alpha='auto' needs forced latents .*"
        r"got n_forced=0\. Pass n_forced >= 1, or alpha=0 for a free run\.$",
    ):
        deer_solve(model, z0, forcing=data, alpha="auto", n_forced=0)


def _failure(*args, **kwargs) -> str:
    with pytest.raises(DeerConvergenceError) as info:
        deer_solve(*args, **kwargs)
    return str(info.value)


def test_failure_message_offers_the_remedies_that_fit_the_run():
    lorenz = EulerLorenz()
    z0, data = lorenz_data(500, seed=2)
    message = _failure(lorenz, z0, forcing=data, alpha=0.2, max_iter=2, jacobian="diag")
    assert message.startswith("deer_solve: max_iter:") and "switch to jacobian='full'" in message
    assert "allow more iterations" in message and "raise alpha" in message
    with pytest.warns(GTFGuaranteeWarning):  # partial forcing
        message = _failure(lorenz, z0, forcing=data[:, :1], alpha="auto", max_iter=2)
    assert "alpha='auto' gave its estimate; pass a larger one" in message
    assert "parscan.gtf_alpha(model, forcing, margin=0.1, n_forced=1))" in message
    assert "force more latents (n_forced=1 < M=3" in message
    # full forcing: gtf_alpha's default n_forced is the one used
    message = _failure(lorenz, z0, forcing=data, alpha="auto", max_iter=1)
    assert "e.g. parscan.gtf_alpha(model, forcing, margin=0.1))" in message
    # a free max_iter run: the sequential solve, or forcing, instead of alpha
    model = make_model("ShPLRNN")
    message = _failure(model, np.full(4, 0.3), 30, max_iter=1)
    assert "allow more iterations (max_iter=1 < T=30" in message
    assert "use sequential_solve or model.simulate" in message and "raise alpha" not in message
    # float32 overflow: float64 is offered
    unstable = DiagLinear([2.0], dtype="float32")
    message = _failure(unstable, np.ones(1, np.float32), 200)
    assert message.startswith("deer_solve: diverging:") and "run in float64" in message
    assert "allow more iterations" not in message and "switch to jacobian" not in message
    # a forced run whose unforced latent overflows, next to a sequence with NaN data: the
    # worst status leads, each failure gets its remedies
    forcing = np.random.default_rng(0).standard_normal((2, 1100, 2))
    forcing[1, 3, 0] = np.nan
    kw = {"forcing": forcing, "alpha": 0.5, "n_forced": 1}
    message = _failure(DiagLinear([0.5, 2.0]), np.ones((2, 2)), **kw)
    assert message.startswith("deer_solve: non_finite:") and "Fix the inputs" in message
    assert "1 diverging, 1 non_finite of 2 sequence(s)" in message
    assert "For the diverging sequences (more iterations rarely help): raise alpha" in message
    assert "force more latents (n_forced=1 < M=2" in message
    assert "float64" not in message and "allow more iterations" not in message


def test_failure_message_never_offers_to_raise_an_alpha_of_1():
    """A failing sequence forced with alpha = 1 gets the levers left (more iterations, more
    forced latents, the sequential solve), judged on the failing sequences only."""
    lorenz = EulerLorenz()
    z0, data = lorenz_data(500, seed=2)
    message = _failure(lorenz, z0, forcing=data[:, :1], alpha=1.0, max_iter=1)
    assert message.startswith("deer_solve: max_iter:") and "raise alpha" not in message
    assert "allow more iterations (max_iter=1 < T=500" in message
    assert "force more latents (n_forced=1 < M=3" in message
    assert "use sequential_solve (alpha is already 1, its maximum)" in message
    # the unforced latent of sequence 0 (alpha 1) overflows; sequence 1 (alpha 0.3) converges
    forcing = np.random.default_rng(0).standard_normal((2, 1100, 2))
    z0 = np.array([[1.0, 1.0], [1.0, 0.0]])
    kw = {"forcing": forcing, "alpha": np.array([1.0, 0.3]), "n_forced": 1}
    message = _failure(DiagLinear([0.5, 2.0]), z0, **kw)
    assert message.startswith("deer_solve: diverging:") and "1 diverging of 2" in message
    assert "raise alpha" not in message and "alpha='auto'" not in message
    assert (
        "More iterations rarely help a diverging run: force more latents (n_forced=1 < M=2: "
        "alpha damps only the forced ones), or use sequential_solve (alpha is already 1, its "
        "maximum). Pass throw=False to inspect the result."
    ) in message
    # every latent forced with alpha 1: exact after one iteration, which max_iter=1 cannot
    # confirm from a zero guess; only the levers that exist are offered
    z0, data = lorenz_data(20)
    message = _failure(lorenz, z0, forcing=data, alpha=1.0, max_iter=1, init=np.zeros((20, 3)))
    assert message.endswith(
        "To converge: allow more iterations (max_iter=1 < T=20; T iterations always suffice), "
        "or use sequential_solve (alpha is already 1, its maximum). Pass throw=False to inspect "
        "the result."
    )


def test_auto_alpha_with_partial_forcing_warns_at_the_call():
    model = make_model("ShPLRNN")
    z0, forcing, _, _ = problem(model, (2,), 30, "full")
    with pytest.warns(GTFGuaranteeWarning, match="^deer_solve: partial forcing") as record:
        res = deer_solve(model, z0, forcing=forcing, alpha="auto")
    assert res.ok and 0.0 <= res.alpha <= 1.0
    assert [w.filename for w in record] == [__file__]


def test_validation_errors():
    model = make_model("ShPLRNN")
    z0 = np.zeros((2, 4))
    x = np.zeros((2, 10, 3))
    cases = [
        (ValueError, r"`z0` must have shape \(\.\.\., M\) with M=4", dict(z0=np.zeros(2), T=5)),
        # an observation given as z0 (the README's example has M = N): the fix is named
        (
            ValueError,
            r"got \(3,\)\. z0 is a latent state: for an observation x0 pass "
            r"model\.initial_state\(x0\)\.",
            dict(z0=np.zeros(3), T=5),
        ),
        (TypeError, r"model dtype float64; got float32", dict(z0=z0.astype(np.float32), T=5)),
        (TypeError, r"`forcing` must have the model dtype", dict(forcing=x.astype(np.float32))),
        (ValueError, r"`T` is required", dict()),
        (ValueError, r"`T`=7 disagrees with forcing.shape\[-2\]=10", dict(T=7, forcing=x)),
        (ValueError, r"1 <= N <= M=4", dict(forcing=np.zeros((2, 10, 5)))),
        (ValueError, r"z0.shape\[:-1\] \+ \(T, N\)", dict(forcing=np.zeros((3, 10, 3)))),
        (ValueError, r"`alpha` must lie in \[0, 1\]", dict(forcing=x, alpha=1.5)),
        (ValueError, r"`alpha` must lie in \[0, 1\]", dict(forcing=x, alpha=-0.1)),
        (ValueError, r"`alpha` must lie in \[0, 1\]", dict(forcing=x, alpha=np.nan)),
        (ValueError, r"shape z0.shape\[:-1\] = \(2,\)", dict(forcing=x, alpha=np.zeros(3))),
        (ValueError, r"`alpha` is not an array \(nested", dict(forcing=x, alpha=[0.1, [0.2]])),
        (ValueError, r"acts only on forced runs", dict(T=5, alpha=0.5)),
        (ValueError, r"alpha='auto' needs `forcing`", dict(T=5, alpha="auto")),
        (ValueError, r"or 'auto'; got 'sup'", dict(forcing=x, alpha="sup")),
        (ValueError, r"`n_forced` must be in \[0, N\]", dict(forcing=x, n_forced=4)),
        (ValueError, r"`n_forced` needs `forcing`", dict(T=5, n_forced=1)),
        (ValueError, r"`init` must have shape", dict(forcing=x, init=np.zeros((2, 9, 4)))),
        (ValueError, r"`jacobian` must be 'full' or 'diag'", dict(T=5, jacobian="dense")),
        (ValueError, r"`tol` must be", dict(T=5, tol=-1.0)),
        (ValueError, r"`tol` must be", dict(T=5, tol=(0.0, 0.0))),
        (ValueError, r"`tol` must be", dict(T=5, tol=(1e-9,))),
        (TypeError, r"`tol` must be None, a float or a pair", dict(T=5, tol="abc")),
        (TypeError, r"`tol` must be None, a float or a pair", dict(T=5, tol=(None, 1e-9))),
        (TypeError, r"`T` must be a non-negative int or None; got 5\.0\.$", dict(T=5.0)),
        (ValueError, r"`max_iter` must be a positive int", dict(T=5, max_iter=0)),
        (
            TypeError,
            r"`max_iter` must be a positive int or None; got 2\.0\.$",
            dict(T=5, max_iter=2.0),
        ),
        (TypeError, r"`max_iter` must be a positive int", dict(T=5, max_iter=True)),
        (TypeError, r"`n_forced` must be an int; got float", dict(forcing=x, n_forced=1.0)),
        (TypeError, r"`n_forced` must be an int; got bool", dict(forcing=x, n_forced=True)),
        (TypeError, r"`T` must be a non-negative int", dict(T=True)),
        (ValueError, r"`T` must be a non-negative int", dict(T=-1)),
        (TypeError, r"`throw` must be a bool", dict(T=5, throw="yes")),
    ]
    for exc, match, kwargs in cases:
        kwargs = {"z0": z0, **kwargs}
        with pytest.raises(exc, match="^deer_solve: .*" + match):
            deer_solve(model, **kwargs)
    with pytest.raises(TypeError, match=r"^deer_solve: `model` must follow the LatentRNN"):
        deer_solve(object(), z0, 5)
    half = DiagLinear([0.5], dtype="float16")
    for solve in (deer_solve, sequential_solve):
        with pytest.raises(TypeError, match=r": `model.dtype` must be float32 or float64; got f"):
            solve(half, np.zeros(1, np.float16), 5)
    with pytest.raises(ValueError, match=r"^sequential_solve: .*compute one with parscan\.gtf"):
        sequential_solve(model, z0, forcing=x, alpha="auto")
    with pytest.raises(
        ValueError,
        match=r"^sequential_solve: `alpha` must be a float in \[0, 1\] or an array of shape "
        r"z0\.shape\[:-1\]; got 'auto'\. sequential_solve does not estimate alpha",
    ):
        sequential_solve(model, z0, forcing=x, alpha="auto")


def test_arrays_too_large_to_allocate_are_an_argument_error(monkeypatch):
    """A T or batch whose Newton arrays this machine cannot allocate is refused naming
    deer_solve, their size and the fix, not with NumPy's bare MemoryError (or, beyond the
    address space, its ValueError); also when an allocation after the first one fails, and
    before allocating when they need more than the memory available now (Linux would grant
    them, and the solve that fills them would be killed)."""
    model = make_model("ShPLRNN")  # M = 4: 5 + M numbers per latent and step ("full")
    monkeypatch.setattr(_buffers, "available_bytes", lambda: 2**30)
    T = 10**7
    with pytest.raises(
        ValueError,
        match=rf"^deer_solve: 1 sequence\(s\) of T={T} steps with M=4 latents need about "
        rf"{T * 4 * 9} numbers \(2\.68 GiB of float64\) for the Newton solve, more than the 1 "
        r"GiB of memory available now; solve a shorter T",
    ):
        deer_solve(model, np.zeros(4), T)
    forcing = np.zeros((2 * 10**6, 3))  # 46 MiB; the loop's states and predictions 122 MiB
    monkeypatch.setattr(_buffers, "available_bytes", lambda: 2**26)
    with pytest.raises(
        ValueError,
        match=r"^sequential_solve: 1 sequence\(s\) of T=2000000 steps with M=4 latents need "
        r"about 16000000 numbers \(0\.119 GiB of float64\) for the states and predictions, "
        r"more than the 0\.0625 GiB of memory available now; solve a shorter T",
    ):
        sequential_solve(model, np.zeros(4), forcing=forcing, alpha=0.5)
    monkeypatch.setattr(_buffers, "available_bytes", lambda: None)  # NumPy's MemoryError
    T = 10**13
    with pytest.raises(
        ValueError,
        match=rf"^deer_solve: 1 sequence\(s\) of T={T} steps with M=4 latents need about "
        rf"{T * 4 * 9} numbers \(\S+ GiB of float64\) for the Newton solve, more than this "
        r"machine can allocate; solve a shorter T \(fewer steps\) or fewer sequences at a "
        r"time, or use jacobian='diag' \(no M x M Jacobian per step\)\.$",
    ):
        deer_solve(model, np.zeros(4), T)
    T = 10**18  # T * M * 8 bytes: beyond NumPy's address space
    with pytest.raises(
        ValueError, match=rf"^deer_solve: .* need about {T * 4 * 6} numbers .* at a time\.$"
    ):
        deer_solve(model, np.zeros(4), T, jacobian="diag")
    T = 2**60  # not even the free run's empty (B, T, 0) forcing fits NumPy's address space
    for solve in (deer_solve, sequential_solve):
        with pytest.raises(
            ValueError,
            match=rf"^{solve.__name__}: 1 sequence\(s\) of T={T} steps of float64 are beyond "
            r"NumPy's address space, .*; solve a shorter T \(fewer steps\) or fewer sequences",
        ):
            solve(model, np.zeros(4), T)

    def out_of_memory(*args):
        raise MemoryError

    monkeypatch.setattr(deer_module, "_newton_buffers", out_of_memory)
    with pytest.raises(ValueError, match=r"^deer_solve: 2 sequence\(s\) of T=5 steps .* 360 "):
        deer_solve(model, np.zeros((2, 4)), 5)


def test_unknown_backend_is_an_argument_error():
    model = make_model("ShPLRNN")
    available = r"available: 'auto', 'sequential', 'cpu'"  # and 'cuda' where it is
    with pytest.raises(ValueError, match=rf"^deer_solve: .*unknown backend 'gpu'; {available}"):
        deer_solve(model, np.zeros(model.M), 5, backend="gpu")


def test_tol_as_0d_array():
    model = make_model("ShPLRNN")
    res = deer_solve(model, np.zeros(model.M), 5, tol=np.array(1e-7))
    assert res.ok and res.rtol == res.atol == 1e-7


def test_cuda_backend_problems_are_argument_errors(monkeypatch):
    """Found before the first iteration, not as linear_scan errors inside it."""
    model = DiagLinear(np.full(17, 0.5))
    z0 = np.zeros(17)
    monkeypatch.setattr(scan_module, "_cuda_available", lambda: False)
    with pytest.raises(ValueError, match=r"^deer_solve: backend='cuda' is not available.*'cpu'"):
        deer_solve(model, z0, 5, jacobian="diag", backend="cuda")
    monkeypatch.setattr(scan_module, "_cuda_available", lambda: True)
    with pytest.raises(
        ValueError, match=r"^deer_solve: .*up to M = 16; got M=17\. Use jacobian='diag' or backend"
    ):
        deer_solve(model, z0, 5, backend="cuda")


def test_all_mismatches_reported_at_once():
    model = make_model("ShPLRNN")
    with pytest.raises(ValueError) as info:
        deer_solve(
            model, np.zeros(5), forcing=np.zeros((10, 3)), alpha=2.0, n_forced=7, jacobian="x"
        )
    message = str(info.value)
    for part in ("`z0` must", "`n_forced` must", "`alpha` must", "`jacobian` must"):
        assert part in message


def expanding_plrnn(w):
    """``z' = W relu(z)`` with ``W = [[0, w], [w, 0]]``: from ``z0 = (1, 1)`` the orbit is
    ``w^t (1, 1)``; quasi-DEER's diagonal Jacobian is 0 (a PLRNN's diag(W) is 0), so each
    iteration is a Picard sweep whose update grows like ``w``."""
    model = PLRNN(2, seed=0)
    model["A"][...] = 0.0
    model["W"][...] = [[0.0, w], [w, 0.0]]
    model["h"][...] = 0.0
    return model


def test_updates_growing_tenfold_three_times_in_a_row_are_diverging():
    """Updates 19, 380, 7600, 152000 (x20 each): the third tenfold growth in a row, at
    iteration 4, stops the sequence; fivefold growth does not."""
    res = deer_solve(expanding_plrnn(20.0), np.ones(2), 50, jacobian="diag", throw=False)
    assert res.status is DeerStatus.DIVERGING and not res.converged and res.n_iter == 4
    np.testing.assert_allclose(res.residuals, [19.0, 380.0, 7600.0, 152000.0], rtol=1e-12)
    # 5x per iteration never diverges: T = 20 iterations, exact by causality
    res = deer_solve(expanding_plrnn(5.0), np.ones(2), 20, jacobian="diag", throw=False)
    assert res.status is DeerStatus.CONVERGED and res.n_iter == 20
    assert np.all(res.residuals[1:] > 4 * res.residuals[:-1])


def test_an_update_above_sqrt_of_the_largest_float_is_diverging():
    """Updates 1e80, then 1e160 > sqrt(finfo.max) ~ 1.3e154: diverging at iteration 2, long
    before three tenfold growths or an overflow to inf."""
    for dtype, w, n_iter in [("float64", 1e80, 2), ("float32", 1e10, 2)]:
        model = expanding_plrnn(w).astype(dtype)
        res = deer_solve(model, np.ones(2, dtype), 5, jacobian="diag", throw=False)
        assert res.status is DeerStatus.DIVERGING and res.n_iter == n_iter, dtype
        huge = np.sqrt(np.finfo(dtype).max)
        assert res.residuals[-2] < huge < res.residuals[-1] < np.inf, dtype


def test_update_norms_follow_the_mixed_tolerance_and_keep_nan():
    """``within``: every ``|new - old| <= atol + rtol |new|`` (relative to the new iterate's
    own scale); the largest update keeps a NaN; ``finite`` looks at ``new`` only."""
    new = np.array([[[1e6 + 1.0, 2.0]], [[1e6 + 20.0, 2.0]], [[1.0, 1.0]]])
    old = np.array([[[1e6, 2.0]], [[1e6, 2.0]], [[np.nan, 1.0]]])
    got = np.empty(3), np.empty(3, bool), np.empty(3, bool)
    update_norms(new, old, 1e-5, 0.0, *got)
    np.testing.assert_array_equal(got[0], [1.0, 20.0, np.nan])
    np.testing.assert_array_equal(got[1], [True, False, False])
    np.testing.assert_array_equal(got[2], [True, True, True])
    update_norms(new[:1] * 1e-6, old[:1] * 1e-6, 0.0, 1e-6, *(g[:1] for g in got))
    assert got[1][0]  # atol alone: an update of 1e-6


def test_the_data_based_initial_guess_saves_newton_iterations():
    """The default guess of a forced solve starts from the data (DESIGN.md §4), not from
    ``z0`` repeated, which a solve from that guess needs more iterations to correct."""
    model = make_model("ShPLRNN")
    z0, forcing, alpha, _ = problem(model, (), 300, "full")
    data_based = deer_solve(model, z0, forcing=forcing, alpha=alpha)
    repeated = np.broadcast_to(z0, (300, model.M)).copy()
    flat = deer_solve(model, z0, forcing=forcing, alpha=alpha, init=repeated)
    np.testing.assert_allclose(data_based.states, flat.states, rtol=1e-9, atol=1e-12)
    assert data_based.n_iter < flat.n_iter


def test_nan_in_the_initial_guess_is_non_finite():
    """README: NaN/inf in ``init`` reaching the iterate is the input's fault (non_finite),
    for a forced and a free run; the other sequence converges."""
    model = make_model("ShPLRNN")
    z0, forcing, alpha, _ = problem(model, (2,), 30, "full")
    init = sequential_solve(model, z0, forcing=forcing, alpha=alpha) + 0.1
    init[1, 7, 2] = np.nan
    res = deer_solve(model, z0, forcing=forcing, alpha=alpha, init=init, throw=False)
    assert res.status is DeerStatus.NON_FINITE
    np.testing.assert_array_equal(res.converged, [True, False])
    assert np.isnan(res.residuals[0])  # the first update, from the NaN, is NaN: not dropped
    with pytest.raises(DeerConvergenceError, match=r"^deer_solve: non_finite: "):
        deer_solve(model, z0, forcing=forcing, alpha=alpha, init=init)
    init[0, 0, 0] = np.inf
    res = deer_solve(model, z0, 30, init=init, throw=False)
    assert res.status is DeerStatus.NON_FINITE and not res.converged.any()


def tent_map(slope):
    """A chaotic clipped shPLRNN (M = 1, L = 2): the tent map ``u' = slope (1/2 - |u|) - 1/2``
    on ``[-1/2, 1/2]`` (Lyapunov exponent ``log(slope)`` per step), bounded everywhere
    (``|u| = 1 - r1 - r2`` with the clipped ramps ``r1 = relu(u + 1/2) - relu(u)`` and
    ``r2 = relu(1/2 - u) - relu(-u)``): Newton's iterates stay finite but need about ``T``
    iterations."""
    model = ClippedShPLRNN(1, 2, seed=0)
    model["A"][...] = 0.0
    model["W1"][...] = slope
    model["W2"][...] = [[1.0], [-1.0]]
    model["h1"][...] = -slope / 2 - 0.5
    model["h2"][...] = 0.5
    return model


def test_default_max_iter_is_t_capped_at_100_for_full_and_500_for_diag():
    model = tent_map(1.8)
    z0 = np.array([[0.1234], [-0.3], [0.41]])
    for T, jacobian, cap in [(150, "full", 100), (600, "diag", 500)]:
        res = deer_solve(model, z0, T, jacobian=jacobian, throw=False)
        assert res.status is DeerStatus.MAX_ITER and np.all(res.n_iter == cap), jacobian
    # below its cap, diag gets T iterations (and is exact by causality there)
    res = deer_solve(model, z0, 300, jacobian="diag")
    assert res.ok and res.n_iter.max() == 300
