"""Benchmark systems: right-hand sides, Jacobians, integrator accuracy, generate()."""

import dataclasses
import math

import numpy as np
import pytest
from scipy.integrate import solve_ivp

from models.metrics import lyapunov_spectrum
from models.systems import (
    KERNELS,
    MAX_RK4_STEPS,
    SYSTEMS,
    System,
    generate,
    get_system,
    rk4_step,
    rk4_tangent_step,
    rk4_work,
)

# --- Plain NumPy references of the right-hand sides (written from the papers' equations) -----
# Each takes a state (D,) or states (D, K) column by column.


def ref_lorenz63(x, q):
    s, r, b = q["sigma"], q["rho"], q["beta"]
    return np.array([s * (x[1] - x[0]), x[0] * (r - x[2]) - x[1], x[0] * x[1] - b * x[2]])


def ref_rossler(x, q):
    return np.array([-x[1] - x[2], x[0] + q["a"] * x[1], q["b"] + x[2] * (x[0] - q["c"])])


def ref_lorenz96(x, q):
    return (np.roll(x, -1, axis=0) - np.roll(x, 2, axis=0)) * np.roll(x, 1, axis=0) - x + q["F"]


def ref_hindmarsh_rose(x, q):
    return np.array(
        [
            x[1] - q["a"] * x[0] ** 3 + q["b"] * x[0] ** 2 - x[2] + q["I"],
            q["c"] - q["d"] * x[0] ** 2 - x[1],
            q["r"] * (q["s"] * (x[0] - q["x_rest"]) - x[2]),
        ]
    )


def ref_slow_lorenz(x, q):
    w = 2 * np.pi / q["period"]
    g = 1 - x[3] ** 2 - x[4] ** 2
    rho = q["rho0"] + q["rho_amp"] * x[3]
    lor = ref_lorenz63(x[:3], {"sigma": q["sigma"], "rho": rho, "beta": q["beta"]})
    return np.concatenate([lor, [w * (g * x[3] - x[4]), w * (g * x[4] + x[3])]])


REFERENCES = {
    "lorenz63": ref_lorenz63,
    "rossler": ref_rossler,
    "lorenz96": ref_lorenz96,
    "hindmarsh_rose": ref_hindmarsh_rose,
    "slow_lorenz": ref_slow_lorenz,
}

# A state near each attractor's scale, for pointwise checks.
SCALES = {"lorenz63": 10.0, "rossler": 5.0, "lorenz96": 4.0, "hindmarsh_rose": 1.0}


def random_state(name, rng, dim):
    x = np.asarray(SYSTEMS[name].x0, dtype=np.float64)
    x = np.resize(x, dim) + SCALES.get(name, 1.0) * rng.standard_normal(dim)
    if name == "slow_lorenz":
        x[3:] = rng.uniform(-1, 1, 2)
    return x


def test_registry_has_the_required_systems():
    assert {"lorenz63", "rossler", "lorenz96", "hindmarsh_rose", "slow_lorenz"} <= set(SYSTEMS)
    for name, rec in SYSTEMS.items():
        assert isinstance(rec, System) and rec.name == name
        assert len(rec.x0) == rec.dim
        assert rec.dt > 0 and rec.max_step <= rec.dt
        assert rec.citation and rec.description
    assert SYSTEMS["lorenz63"].params["rho"] == 28.0
    assert SYSTEMS["rossler"].params["c"] == 5.7
    assert SYSTEMS["lorenz63"].lyapunov == pytest.approx(0.9056)
    with pytest.raises(TypeError):
        SYSTEMS["lorenz63"].params["rho"] = 1.0  # read-only


def test_slow_scale_of_the_slow_fast_system_is_much_longer_than_a_training_window():
    rec = SYSTEMS["slow_lorenz"]
    slow_period_steps = rec.params["period"] / rec.dt
    assert slow_period_steps >= 10 * 200
    assert f"{slow_period_steps:,.0f} steps" in rec.description


@pytest.mark.parametrize("name", list(SYSTEMS))
def test_rhs_matches_numpy_reference(name):
    rng = np.random.default_rng(1)
    rec = SYSTEMS[name]
    for _ in range(5):
        x = random_state(name, rng, rec.dim)
        np.testing.assert_allclose(
            rec.rhs(x), REFERENCES[name](x, rec.params), rtol=1e-13, atol=1e-12
        )


@pytest.mark.parametrize("name", list(SYSTEMS))
def test_jacobian_matches_central_differences(name):
    rng = np.random.default_rng(2)
    rec = SYSTEMS[name]
    for _ in range(3):
        x = random_state(name, rng, rec.dim)
        jac = rec.jacobian(x)
        h = 1e-6 * max(1.0, np.abs(x).max())
        fd = np.empty_like(jac)
        for j in range(rec.dim):
            e = np.zeros(rec.dim)
            e[j] = h
            fd[:, j] = (rec.rhs(x + e) - rec.rhs(x - e)) / (2 * h)
        np.testing.assert_allclose(jac, fd, rtol=1e-6, atol=1e-6 * np.abs(jac).max())


@pytest.mark.parametrize("name", list(SYSTEMS))
def test_tangent_step_is_the_derivative_of_the_rk4_step(name):
    """The integrator behind lyapunov_spectrum: one RK4 step of the variational equation maps
    tangent vectors by the Jacobian of the discrete RK4 step (central differences, whose
    error, ~1e-9 of the scale here, the tolerance allows), and moves x as rk4_step does."""
    rng = np.random.default_rng(3)
    rec = SYSTEMS[name]
    _, p = rec._point(np.zeros(rec.dim), None, "test")
    D, h = rec.dim, rec.dt  # a whole sample in one step: larger than max_step, more nonlinear
    for x0 in (generate(name, 1, seed=5)[0], random_state(name, rng, D)):
        y0 = rng.standard_normal((D, 2))  # k = 2 < D tangent vectors
        x, y = x0.copy(), y0.copy()
        rk4_tangent_step(rec.kind, x, y, p, h, np.empty((5, D)), np.empty((D, D)),
                         np.empty((5, D, 2)))  # fmt: skip
        stepped = x0.copy()
        rk4_step(rec.kind, stepped, p, h, np.empty((5, D)))
        np.testing.assert_array_equal(x, stepped)
        eps = 1e-6 * max(1.0, np.abs(x0).max())
        fd = np.empty((D, D))
        for j in range(D):
            plus, minus = x0.copy(), x0.copy()
            plus[j] += eps
            minus[j] -= eps
            rk4_step(rec.kind, plus, p, h, np.empty((5, D)))
            rk4_step(rec.kind, minus, p, h, np.empty((5, D)))
            fd[:, j] = (plus - minus) / (2 * eps)
        want = fd @ y0
        np.testing.assert_allclose(y, want, rtol=0, atol=1e-7 * np.abs(want).max(), err_msg=name)


def test_lorenz96_any_dimension_and_its_jacobian():
    rec = SYSTEMS["lorenz96"]
    rng = np.random.default_rng(3)
    for n in (4, 7):
        params = {"N": n, "F": 5.0}
        x = rng.standard_normal(n)
        np.testing.assert_allclose(rec.rhs(x, params), ref_lorenz96(x, {"F": 5.0}), rtol=1e-14)
        jac = rec.jacobian(x, params)
        fd = np.stack(
            [
                (rec.rhs(x + 1e-6 * e, params) - rec.rhs(x - 1e-6 * e, params)) / 2e-6
                for e in np.eye(n)
            ],
            axis=1,
        )
        np.testing.assert_allclose(jac, fd, rtol=1e-6, atol=1e-8)
    assert generate("lorenz96", 3, params={"N": 6}).shape == (3, 6)
    with pytest.raises(ValueError, match=r"generate: lorenz96 parameter N must be >= 4; got 3"):
        generate("lorenz96", 3, params={"N": 3})
    with pytest.raises(TypeError, match=r"generate: lorenz96 parameter N must be an int; got fl"):
        generate("lorenz96", 3, params={"N": 20.0})


# Largest Lyapunov exponents per time unit: the README's table (Sprott's for lorenz63 and
# rossler, max_lyapunov over 10^6 samples for the others). The integrator's error grows like
# exp(lambda t), so 3 Lyapunov times is a fixed amount of amplification for every system.
LYAPUNOV = {
    "lorenz63": 0.906,
    "rossler": 0.0714,
    "lorenz96": 1.18,
    "hindmarsh_rose": 0.013,
    "slow_lorenz": 0.64,
}
# The module docstring's bound, in the attractor's scale, over 3 Lyapunov times: measured
# from 48 starts per system, the median deviation lies between 3e-9 and 4e-8 and the worst
# reaches 1.5e-6 (lorenz63 from a rare start, lorenz96 1.3e-6).
TYPICAL, WORST = 1e-7, 2e-6


@pytest.mark.parametrize("name", list(SYSTEMS))
def test_generate_agrees_with_solve_ivp_over_three_lyapunov_times(name):
    """From 12 points along a default run (one solve_ivp call integrates them all, stacked;
    DOP853 at 1e-13, whose own error stays below 1e-8 of the scale: at 1e-12 it is 2e-7 off
    for hindmarsh_rose over its 230 time units)."""
    rec = SYSTEMS[name]
    attractor = generate(name, 20_000, seed=0)
    scale = attractor.std(axis=0).max()
    starts = attractor[:: 20_000 // 12][:12]
    n = math.ceil(3 / LYAPUNOV[name] / rec.dt) + 1
    x = np.stack([generate(name, n, x0=x0, transient=0) for x0 in starts], axis=-1)
    np.testing.assert_array_equal(x[0], starts.T)
    t_eval = rec.dt * np.arange(n)
    D, K = starts.shape[1], len(starts)
    sol = solve_ivp(
        lambda t, y: REFERENCES[name](y.reshape(D, K), rec.params).ravel(),
        (0.0, t_eval[-1]),
        starts.T.ravel(),
        method="DOP853",
        t_eval=t_eval,
        rtol=1e-13,
        atol=1e-13,
    )
    assert sol.success
    error = np.abs(x - sol.y.T.reshape(n, D, K)).max(axis=(0, 1)) / scale  # per start
    assert np.median(error) <= TYPICAL and error.max() <= WORST, error


def test_generate_is_reproducible_and_seeds_give_different_initial_conditions():
    a = generate("lorenz63", 500, seed=1)
    np.testing.assert_array_equal(a, generate("lorenz63", 500, seed=1))
    b = generate("lorenz63", 500, seed=2)
    assert np.abs(a - b).max() > 1.0


def test_transient_drops_leading_samples_exactly():
    x0 = np.array([1.0, 2.0, 20.0])
    full = generate("lorenz63", 50, x0=x0, transient=0)
    np.testing.assert_array_equal(generate("lorenz63", 40, x0=x0, transient=10), full[10:])
    # the default transient is the record's transient_time in samples
    rec = SYSTEMS["rossler"]
    long = generate("rossler", round(rec.transient_time / rec.dt) + 5, seed=4, transient=0)
    np.testing.assert_array_equal(generate("rossler", 5, seed=4), long[-5:])
    # ... rounded up: a transient_time shorter than half a sample still discards one
    short = dataclasses.replace(SYSTEMS["lorenz63"], transient_time=0.004)
    long = generate(short, 6, seed=4, transient=0)
    np.testing.assert_array_equal(generate(short, 5, seed=4), long[1:])


def test_sampling_step_does_not_change_the_trajectory_beyond_rk4_error():
    x0 = np.array([1.0, 2.0, 20.0])
    fine = generate("lorenz63", 101, x0=x0, transient=0, dt=0.005)
    coarse = generate("lorenz63", 51, x0=x0, transient=0, dt=0.01)
    np.testing.assert_allclose(fine[::2], coarse, atol=1e-8)


def test_observation_noise_is_relative_to_each_dimension_sd():
    clean = generate("lorenz63", 20_000, seed=3)
    noisy = generate("lorenz63", 20_000, seed=3, noise=0.05)
    ratio = (noisy - clean).std(axis=0) / clean.std(axis=0)
    np.testing.assert_allclose(ratio, 0.05, rtol=0.03)
    np.testing.assert_allclose((noisy - clean).mean(axis=0) / clean.std(axis=0), 0, atol=2e-3)


def test_noise_or_a_state_beyond_float64_is_refused_naming_the_setting():
    """A noise so large that the noisy data overflow, a Lorenz-96 N whose state NumPy cannot
    allocate or index, a spread that is not finite and a spectrum whose tangent vectors
    cannot be allocated are refused (they returned inf data, raised a bare MemoryError or
    OverflowError, or blamed params and dt)."""
    with pytest.raises(ValueError, match=r"^generate: noise=1e\+308 times the data's sd "):
        generate("lorenz63", 10, noise=1e308)
    for n in (10**11, 10**30):
        with pytest.raises(ValueError, match=rf"^generate: lorenz96 parameter N = {n}: a state "):
            generate("lorenz96", 10, params={"N": n})
    with pytest.raises(ValueError, match=r"^System: x0_spread of 'lorenz63' must be finite"):
        dataclasses.replace(SYSTEMS["lorenz63"], x0_spread=math.nan)
    with pytest.raises(  # one sample of 10^6 tangent vectors: never started
        ValueError, match=r"^lyapunov_spectrum: the run would take 5 RK4 steps .* the work of"
    ):
        lyapunov_spectrum("lorenz96", params={"N": 10**6}, n_steps=1, transient=0)


def test_noise_needs_two_steps():
    with pytest.raises(ValueError, match=r"generate: noise is a fraction .* needs n_steps >= 2"):
        generate("lorenz63", 1, noise=0.05)
    assert generate("lorenz63", 1).shape == (1, 3)


def test_record_variants_via_dataclasses_replace():
    rec = dataclasses.replace(SYSTEMS["lorenz63"], params={"sigma": 10.0, "rho": 15.0, "beta": 2.0})
    x = generate(rec, 2000, seed=0)
    # rho = 15 < 24.06: the trajectory settles on a fixed point C+ or C-
    c = np.sqrt(2.0 * 14.0)
    np.testing.assert_allclose(np.abs(x[-1, :2]), [c, c], rtol=1e-3)
    assert get_system(rec, "generate") is rec


def test_record_params_are_read_by_name_not_position():
    base = SYSTEMS["hindmarsh_rose"]
    shuffled = dataclasses.replace(base, params=dict(reversed(base.params.items())))
    np.testing.assert_array_equal(generate(shuffled, 50, seed=1), generate(base, 50, seed=1))
    x = np.array([-1.0, -5.0, 3.0])
    np.testing.assert_array_equal(shuffled.rhs(x), base.rhs(x))
    l96 = SYSTEMS["lorenz96"]
    swapped = dataclasses.replace(l96, params={"F": 5.0, "N": 10})
    np.testing.assert_array_equal(
        swapped.rhs(np.arange(10.0)), l96.rhs(np.arange(10.0), {"F": 5.0})
    )


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"params": {"sigma": 10.0, "rho": 28.0}}, r"missing \['beta'\], unknown \[\]"),
        ({"params": {"sigma": 1.0, "rho": 2.0, "beta": 3.0, "gamma": 4.0}}, r"unknown \['gamma'\]"),
        ({"kind": 9}, r"System: unknown kernel id kind=9"),
        ({"dim": 4, "x0": (1.0, 2.0, 3.0, 4.0)}, r"needs dim=3 and no dim_param; got dim=4"),
        ({"x0": (1.0, 2.0)}, r"x0 of 'lorenz63' must have dim=3 entries; got 2"),
        ({"x0": (1.0, np.nan, 2.0)}, r"x0 of 'lorenz63' must be finite; got \(1.0, nan"),
    ],
)
def test_records_the_kernels_cannot_run_are_refused(changes, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(SYSTEMS["lorenz63"], **changes)
    assert set(KERNELS) == {rec.kind for rec in SYSTEMS.values()}


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        # a NumPy integer cannot be the compile-time literal the integrator specialises on
        ({"kind": np.int64(0)}, r"System: kind of 'lorenz63' must be a Python int .*int\(kind\)"),
        ({"kind": True}, r"kind of 'lorenz63' must be a Python int .*; got bool"),
        ({"x0": None}, r"System: x0 of 'lorenz63' must be a tuple of floats .*; got NoneType"),
        ({"x0": "abc"}, r"x0 of 'lorenz63' must be a tuple of floats .*; got str"),
        ({"x0": (1.0, "2", 3.0)}, r"x0 of 'lorenz63' must hold real numbers"),
        ({"dim": 3.0}, r"System: dim of 'lorenz63' must be an int; got float"),
        ({"x0_spread": "a"}, r"System: x0_spread of 'lorenz63' must be a real number; got str"),
    ],
)
def test_record_fields_of_the_wrong_kind_are_refused(changes, match):
    with pytest.raises(TypeError, match=match):
        dataclasses.replace(SYSTEMS["lorenz63"], **changes)


def test_dimension_parameter_and_dim_must_agree_and_x0_is_repeated():
    l96 = SYSTEMS["lorenz96"]
    for changes in ({"dim": 20, "x0": (8.0,) * 20}, {"params": {"N": 20, "F": 8.0}}):
        with pytest.raises(
            ValueError, match=r"dim=(20|10) of 'lorenz96' contradicts params\['N'\]"
        ):
            dataclasses.replace(l96, **changes)
    # the default 10-value x0 is repeated to dim=20; any length >= 1 is, cyclically and cut
    wide = dataclasses.replace(l96, dim=20, params={"N": 20, "F": 8.0})
    assert generate(wide, 3).shape == (3, 20)
    short = dataclasses.replace(l96, dim=7, params={"N": 7, "F": 8.0}, x0=(1.0, 2.0, 3.0))
    start = generate(short, 1, transient=0, seed=0)[0]
    kick = short.x0_spread * np.random.default_rng(0).standard_normal(7)
    np.testing.assert_array_equal(start, np.array([1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 1.0]) + kick)
    with pytest.raises(ValueError, match=r"x0 of 'lorenz96' must have at least one entry"):
        dataclasses.replace(l96, x0=())


def test_point_checks_name_the_method():
    rec = SYSTEMS["lorenz63"]
    with pytest.raises(ValueError, match=r"System.rhs: x must have shape \(3,\) for lorenz63"):
        rec.rhs(np.zeros(4))
    with pytest.raises(TypeError, match=r"System.jacobian: x must be a float64 array; got"):
        rec.jacobian(np.zeros(3, dtype=np.float32))


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"system": "lorenz"}, ValueError, r"generate: unknown system 'lorenz'; known: lorenz63"),
        ({"system": 3}, TypeError, r"generate: expected a system name"),
        ({"n_steps": 0}, ValueError, r"generate: n_steps must be >= 1; got 0"),
        ({"n_steps": 2.0}, TypeError, r"generate: n_steps must be an int"),
        ({"dt": -0.1}, ValueError, r"generate: dt must be finite and > 0"),
        ({"noise": -1.0}, ValueError, r"generate: noise must be finite and >= 0"),
        ({"seed": -1}, ValueError, r"generate: seed must be >= 0"),
        ({"seed": 10**4300}, ValueError, r"generate: seed must be >= 0 with at most 4300 digits"),
        ({"transient": -1}, ValueError, r"generate: transient must be >= 0"),
        ({"params": {"gamma": 1.0}}, ValueError, r"unknown parameter\(s\) \['gamma'\].*sigma"),
        ({"params": {"rho": np.nan}}, ValueError, r"of 'lorenz63' must be finite; got rho=nan"),
        ({"params": {"rho": "28"}}, TypeError, r"must be real numbers; got rho='28'"),
        ({"seed": 1.0}, TypeError, r"generate: seed must be an int; got float"),
        ({"params": [1.0]}, TypeError, r"generate: params must be a dict"),
        ({"x0": [1.0, 2.0]}, ValueError, r"generate: x0 must have shape \(3,\)"),
        ({"x0": [1.0, np.inf, 0.0]}, ValueError, r"generate: x0 contains NaN or inf"),
        ({"x0": ["a", "b", "c"]}, TypeError, r"generate: x0 must be a real numeric array"),
        ({"dt": np.inf}, ValueError, r"^generate: dt must be finite and > 0; got inf\.$"),
    ],
)
def test_generate_validation(kwargs, exc, match):
    args = {"system": "lorenz63", "n_steps": 5, **kwargs}
    with pytest.raises(exc, match=match):
        generate(args.pop("system"), args.pop("n_steps"), **args)


def test_generate_reports_every_bad_argument_at_once():
    with pytest.raises(ValueError) as err:
        generate("lorenz63", 1, dt=-0.1, noise=0.1, seed=-1, transient=-2)
    assert str(err.value) == (
        "generate: noise is a fraction of each dimension's sd over the returned trajectory and "
        "needs n_steps >= 2; got n_steps=1. dt must be finite and > 0; got -0.1. transient must "
        "be >= 0; got -2. seed must be >= 0; got -1."
    )
    with pytest.raises(TypeError) as err:  # noise is not compared with a bad n_steps
        generate("lorenz63", 1.0, noise=0.1, params={"rho": "x", "gamma": 1.0}, x0=[1.0, 2.0])
    assert str(err.value) == (
        "generate: n_steps must be an int; got float. unknown parameter(s) ['gamma'] for system "
        "'lorenz63'; known: sigma, rho, beta. parameters of 'lorenz63' must be real numbers; got "
        "rho='x'. x0 must have shape (3,) for lorenz63; got (2,)."
    )
    with pytest.raises(TypeError) as err:
        generate("lorenz96", 5, params={"N": 3.0, "F": np.nan}, x0=[1.0, 2.0])
    assert str(err.value) == (  # nor is x0 compared with the dimension of a bad N
        "generate: parameters of 'lorenz96' must be finite; got F=nan. lorenz96 parameter N must "
        "be an int; got float."
    )


def test_records_report_every_bad_field_at_once():
    with pytest.raises(TypeError) as err:  # the x0 length is not compared with a bad dim
        dataclasses.replace(SYSTEMS["lorenz63"], dim=3.0, params={"sigma": 1.0}, x0=(1.0, np.nan))
    assert str(err.value) == (
        "System: dim of 'lorenz63' must be an int; got float. params of 'lorenz63' must name "
        "exactly the parameters its kernel reads (beta, rho, sigma); missing ['rho', 'beta'], "
        "unknown []. x0 of 'lorenz63' must be finite; got (1.0, nan)."
    )
    with pytest.raises(
        TypeError, match=r"^System.rhs: parameters .* rho=inf\. x must be a float64"
    ):
        SYSTEMS["lorenz63"].rhs(np.zeros(3, dtype=np.float32), {"rho": np.inf})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        # ceil(dt / max_step) steps per sample once overflowed int64 (a Numba TypingError)
        ({"dt": 1e20}, r"dt=1e\+20 needs 1e\+23 RK4 steps .* per sample.* Use dt <= 1e\+07\.$"),
        ({"dt": 1e300}, r"dt=1e\+300 needs 1e\+303 RK4 steps"),
        ({"dt": 1e10}, r"dt=1e\+10 needs 1e\+13 RK4 steps"),
        # or ran for days in a compiled loop that Ctrl-C cannot stop
        ({"transient": 10**12}, r"transient must be <= MAX_RK4_STEPS = 1e\+10 .*; got 10{12}\."),
        ({"n_steps": 10**11}, r"n_steps must be <= MAX_RK4_STEPS = 1e\+10 .*; got 10{11}\."),
        ({"dt": 1e6, "n_steps": 20}, r"the run would take 2e\+10 RK4 steps \(1000000000 per "),
        (
            {"dt": 1e-300},
            r"the run would take 2e\+301 RK4 steps .*=2e\+301 \(the default, ceil\(transient_",
        ),
        ({"dt": 5e-324}, r"the run would take inf RK4 steps .*transient=inf \(the default"),
        ({"transient": 2 * 10**9}, r"the run would take 2e\+10 RK4 steps .*transient=2e\+09 \+ n_"),
    ],
)
def test_runs_longer_than_the_step_budget_are_refused_up_front(kwargs, match):
    args = {"n_steps": 3, **kwargs}
    with pytest.raises(ValueError, match="^generate: " + match):
        generate("lorenz63", args.pop("n_steps"), **args)


def test_a_trajectory_larger_than_memory_is_refused_naming_generate(monkeypatch):
    """Within the step budget but beyond the memory (here: an allocation made to fail):
    generate's refusal, not NumPy's bare MemoryError."""
    empty = np.empty

    def no_memory(shape, *args, **kwargs):
        if shape == (10**6, 3):
            raise MemoryError
        return empty(shape, *args, **kwargs)

    monkeypatch.setattr(np, "empty", no_memory)
    with pytest.raises(ValueError, match=r"^generate: a free run of 1000000 steps \(3 float64 "):
        generate("lorenz63", 10**6)


def test_the_step_budget_is_the_kernels_step_count():
    """``ceil(dt / max_step) * (transient + n_steps - 1)`` RK4 steps: exactly MAX_RK4_STEPS
    passes the checks (here at no cost: one sample, no transient)."""
    rec = dataclasses.replace(SYSTEMS["lorenz63"], max_step=1.0)
    dt = float(MAX_RK4_STEPS)
    start = generate(rec, 1, dt=dt, transient=0, x0=[1.0, 2.0, 3.0])
    np.testing.assert_array_equal(start, [[1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match=r"^System.substeps: dt=1e\+10 needs 1e\+10 RK4"):
        rec.substeps(np.nextafter(dt, np.inf))
    assert rec.substeps(dt) == MAX_RK4_STEPS
    with pytest.raises(ValueError, match=r"^System.substeps: dt must be finite and > 0; got nan"):
        rec.substeps(np.nan)
    with pytest.raises(TypeError, match=r"^System.substeps: dt must be a real number; got str"):
        rec.substeps("0.01")


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"max_step": 0.0}, r"^System: max_step of 'lorenz63' must be finite and > 0; got 0\.0"),
        ({"dt": np.nan}, r"^System: dt of 'lorenz63' must be finite and > 0; got nan"),
        ({"transient_time": -1.0}, r"transient_time of 'lorenz63' must be finite and >= 0"),
    ],
)
def test_records_with_step_sizes_the_integrator_cannot_use_are_refused(changes, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(SYSTEMS["lorenz63"], **changes)


def test_blow_up_is_reported():
    with pytest.raises(ValueError, match=r"generate: the lorenz63 trajectory became non-finite"):
        generate("lorenz63", 10, params={"beta": -50.0})


def test_the_step_budget_counts_the_work_of_a_step():
    """A run of few steps of a huge system is refused like a long run of a small one (Lorenz-96
    with N = 10^7: an hour for 2 samples); a 3-D step counts 1, a D-dimensional D/3."""
    assert rk4_work(3) == 1.0 and rk4_work(31) == 15.0 and rk4_work(3, 3) == 1.625
    with pytest.raises(ValueError, match=r"1e\+04 RK4 steps .*the work of 5e\+10 steps"):
        generate("lorenz96", 2, params={"N": 10**7})
