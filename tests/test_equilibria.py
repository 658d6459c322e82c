"""models.fixed_points and models.cycles: Newton's method on F^k(z) - z from observations,
against an exhaustive search over the relu patterns of small ALRNNs (tests/reference.py)."""

import numpy as np
import pytest
from reference import alrnn_cycles_reference, alrnn_fixed_points_reference

import models
from models import ALRNN, ClippedShPLRNN, LinearSSM, ShPLRNN


def _alrnn(M, P, seed):
    """An ALRNN with random parameters (several relu regions holding fixed points)."""
    model = ALRNN(M, P, seed=seed)
    rng = np.random.default_rng(seed)
    p = model.unflatten()
    p["A"][...] = rng.uniform(-0.9, 0.9, M)
    p["W"][...] = rng.normal(0.0, 0.8, (M, M))
    p["h"][...] = rng.normal(0.0, 0.5, M)
    return model


def _sorted_rows(a):
    return a[np.lexsort(a.T[::-1])]


@pytest.mark.parametrize("seed, count", [(1, 0), (0, 1), (17, 2), (19, 2), (12, 4), (15, 4)])
def test_fixed_points_of_an_alrnn_are_those_of_its_relu_regions(seed, count):
    """From starts spread over the state space, the search finds exactly the fixed points of
    the exhaustive reference (each region's linear fixed point, kept when it lies in that
    region; none to four of them here), with the same spectral radii, most attracting
    first."""
    model = _alrnn(4, 3, seed)
    p = model.unflatten()
    states, radii = alrnn_fixed_points_reference(p["A"], p["W"], p["h"], 3)
    assert len(states) == count
    starts = np.random.default_rng(seed).uniform(-20.0, 20.0, (400, 4))
    found = models.fixed_points(model, starts)
    np.testing.assert_allclose(_sorted_rows(found["states"]), _sorted_rows(states), atol=1e-9)
    np.testing.assert_allclose(np.sort(found["spectral_radius"]), np.sort(radii), rtol=1e-9)
    assert np.all(np.diff(found["spectral_radius"]) >= 0)
    np.testing.assert_array_equal(found["stable"], found["spectral_radius"] < 1)
    assert not found["on_boundary"].any()  # inside their regions: the radius is exact
    np.testing.assert_array_equal(found["points"], found["states"])  # M = N: all observed
    assert found["n_starts"] == 400 and (found["n_converged"] > 0) == (count > 0)


@pytest.mark.parametrize("cls", [ShPLRNN, ClippedShPLRNN])
def test_fixed_points_of_shallow_plrnns_solve_f_of_z_equals_z(cls):
    """Latent models with hidden units and unobserved latents: a contraction (norm bound < 1)
    has one fixed point, stable, which a free run approaches; it solves F(z) = z to rounding
    and its observed part is the first N latents. Float32 models are solved in float64 and
    give the same point up to the rounding of their parameters."""
    model = cls(5, 12, n_obs=3, seed=3)
    rng = np.random.default_rng(3)
    model.params = rng.normal(0.0, 0.1, model.n_params)
    model.unflatten()["A"][...] = rng.uniform(0.2, 0.6, 5)
    assert model.norm_bound() < 1
    found = models.fixed_points(model, rng.normal(0.0, 2.0, (200, 3)))
    assert len(found["states"]) == 1 and found["stable"][0]
    np.testing.assert_allclose(model.step(found["states"]), found["states"], atol=1e-12)
    np.testing.assert_allclose(model.generate(np.zeros(3), 400)[-1], found["points"][0], atol=1e-9)
    np.testing.assert_array_equal(found["points"], found["states"][:, :3])
    starts = rng.normal(0.0, 2.0, (200, 3))
    double = models.fixed_points(model, starts)
    single = models.fixed_points(model.astype("float32"), starts)
    assert len(single["states"]) == len(double["states"])  # parameters rounded to float32
    np.testing.assert_allclose(single["states"], double["states"], atol=1e-4)
    one = models.fixed_points(model, starts[3])  # one start, shape (N,)
    np.testing.assert_array_equal(one["states"], models.fixed_points(model, starts[3:4])["states"])


def test_a_fixed_point_on_a_relu_boundary_is_judged_by_the_map_not_by_rounding():
    """z = 0 of a fresh shPLRNN (biases 0) lies on every hidden unit's boundary; the
    converged state is 0 up to 1e-15 of either sign, and its own dF/dz was one side's or
    the other's by rounding: radius 1.0101 (unstable) from one set of starts, 0.7950 from
    another. It is on_boundary, and its radius is the contraction measured on the map, the
    same from every set of starts: stable, as free runs from near it show."""
    model = ShPLRNN(M=3, L=8, seed=0)
    radii = []
    for seed in range(4):
        found = models.fixed_points(model, np.random.default_rng(seed).normal(0, 2, (20, 3)))
        np.testing.assert_allclose(found["states"], 0.0, atol=1e-12)
        assert found["on_boundary"].tolist() == found["stable"].tolist() == [True]
        radii.append(found["spectral_radius"][0])
    np.testing.assert_allclose(radii, radii[0], rtol=1e-5)
    near = np.random.default_rng(9).normal(0.0, 1e-6, (30, 3))
    runs = model.simulate(near, 300)
    measured = (np.max(np.abs(runs[:, -1])) / np.max(np.abs(runs[:, 99]))) ** (1 / 200)
    assert radii[0] < 1 and abs(measured - radii[0]) < 0.05


def test_a_large_coordinate_does_not_move_the_small_ones_across_a_boundary():
    """The boundary probe moves each coordinate by its own size: z* = (1e8, -0.005), whose
    ReLU input -0.005 is far from 0, is inside its region (radius 0.5, stable). A probe
    scaled by max|z| (10 in every coordinate) crossed that ReLU's kink and measured 1.5."""
    model = ALRNN(2, 1)
    p = model.unflatten()
    p["A"][...] = [0.5, 0.5]
    p["W"][...] = [[0.0, 0.0], [0.0, 1.0]]
    p["h"][...] = [5e7, -0.0025]
    found = models.fixed_points(model, [[1e8, -0.005]])
    np.testing.assert_allclose(found["states"], [[1e8, -0.005]], rtol=1e-12)
    np.testing.assert_allclose(found["spectral_radius"], [0.5], rtol=1e-12)
    assert found["stable"].tolist() == [True] and found["on_boundary"].tolist() == [False]


def test_an_unstable_boundary_point_beside_a_large_coordinate_is_unstable():
    """z* = (1e8, 0) on the ReLU's boundary, unstable there (slope 1.5 on its side): the
    growth of the small coordinate is measured in its own units, not hidden by the large
    one's contraction (0.5, stable, before)."""
    model = ALRNN(2, 1)
    p = model.unflatten()
    p["A"][...] = [0.5, 0.5]
    p["W"][...] = [[0.0, 0.0], [0.0, 1.0]]
    p["h"][...] = [5e7, 0.0]
    found = models.fixed_points(model, [[1e8, 0.0]])
    assert found["on_boundary"].tolist() == [True] and found["stable"].tolist() == [False]
    np.testing.assert_allclose(found["spectral_radius"], [1.5], rtol=1e-3)


@pytest.mark.parametrize("big", [1e4, 1e8])
def test_a_stable_boundary_point_driving_a_small_coordinate_is_stable(big):
    """z* = (big, 0) on the ReLU's boundary, J lower triangular with eigenvalues 0.5 and
    0.5 or 0.8 on either side: stable. The large coordinate's perturbation drives the small
    one at first (5e7 times its own size in its units); the rate is measured after such
    transients (renormalised periods), not at the first period (5e7, unstable, before)."""
    model = ALRNN(2, 1)
    p = model.unflatten()
    p["A"][...] = [0.5, 0.5]
    p["W"][...] = [[0.0, 0.0], [0.5, 0.3]]
    p["h"][...] = [big / 2, -0.5 * big]
    found = models.fixed_points(model, [[big, 0.0]])
    assert found["on_boundary"].tolist() == [True] and found["stable"].tolist() == [True]
    assert 0.5 <= found["spectral_radius"][0] <= 0.81


@pytest.mark.parametrize("theta", np.linspace(0.1, 3.0, 30))
def test_a_neutral_centre_is_not_stable(theta):
    """F(z) = R(theta) z + h, a rotation about its fixed point: spectral radius 1, which
    rounding put at 0.9999999999999999 for 9 of these 30 angles (stable before)."""
    model = ALRNN(2, 0)
    p = model.unflatten()
    p["A"][...] = 0.0
    p["W"][...] = [[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]
    p["h"][...] = [1.0, 0.5]
    found = models.fixed_points(model, np.zeros((3, 2)))
    np.testing.assert_allclose(found["spectral_radius"], [1.0], rtol=1e-12)
    assert found["stable"].tolist() == found["on_boundary"].tolist() == [False]


def test_a_map_without_fixed_points_finds_nothing():
    """A map without a fixed point (the translation ``F(z) = z + 1``, whose ``dF/dz - I`` is
    singular) leaves every start unconverged: nothing found."""
    model = ALRNN(1, 0)
    model.unflatten()["A"][...] = 1.0  # F(z) = z + W z + h with W = 0: F(z) = z + 1
    model.unflatten()["W"][...] = 0.0
    model.unflatten()["h"][...] = 1.0
    found = models.fixed_points(model, np.zeros((5, 1)))
    assert found["states"].shape == (0, 1) and found["n_converged"] == 0
    assert found["spectral_radius"].shape == (0,) and found["stable"].dtype == bool


def test_a_point_where_newton_converges_only_relative_to_a_huge_state_is_no_fixed_point():
    """F(z) = a z + w relu(z) + 1 with a = 1 - 1e-13, w = 2e-13 has no fixed point (each
    region's lies in the other); Newton reached |z| = 1e13, where F(z) - z = 2 is below the
    tolerance relative to |z|, and reported two "fixed points" (one stable)."""
    model = ALRNN(1, 1)
    p = model.unflatten()
    p["A"][...], p["W"][...], p["h"][...] = 1.0 - 1e-13, 2e-13, 1.0
    found = models.fixed_points(model, np.array([[-1.0], [0.5], [3.0]]))
    assert found["states"].shape == (0, 1) and found["n_converged"] == 0


def test_a_search_beyond_memory_is_refused_before_the_newton_work():
    """A period of 10**12 ran forever (and a large one ran the Newton steps, then failed
    with NumPy's MemoryError)."""
    message = r"^cycles: the orbits and Newton Jacobians of 2 starts need .*; lower period"
    with pytest.raises(ValueError, match=message):
        models.cycles(ShPLRNN(3, 8), np.zeros((2, 3)), 10**12)


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        ((LinearSSM(4, 8, 3), np.zeros((2, 3))), {}, TypeError, "model must be a models.LatentRNN"),
        ((ShPLRNN(3, 8), np.zeros((2, 2))), {}, ValueError, "3"),
        ((ShPLRNN(3, 8), np.full((2, 3), np.nan)), {}, ValueError, "NaN"),
        ((ShPLRNN(3, 8), np.zeros((2, 3))), {"max_iter": 0}, ValueError, "max_iter must be >= 1"),
        ((ShPLRNN(3, 8), np.zeros((2, 3))), {"max_iter": 2.5}, TypeError, "max_iter must be an"),
        ((ShPLRNN(3, 8), np.ma.zeros((2, 3))), {}, TypeError, "masked"),
        ((ShPLRNN(3, 8), [[0.0, 1.0, 2.0], [1.0]]), {}, ValueError, "unequal lengths"),
        # starts, not a trajectory: the fix is in their terms (was "Pass one trajectory")
        ((ShPLRNN(3, 8), np.zeros(())), {}, ValueError, r"x has shape \(\), which holds no "
         r"start of N=3; pass one start of shape \(3,\) or K starts of shape \(K, 3\)\.$"),
        ((ALRNN(1, 1), np.zeros(3)), {}, ValueError,  # was "use a model with n_obs=3"
         r"x has shape \(3,\), .*; pass x\[:, None\] for K starts of this 1-d model\.$"),
    ],
)  # fmt: skip
def test_fixed_points_refuses_bad_arguments(args, kwargs, error, match):
    with pytest.raises(error, match="^fixed_points: .*" + match):
        models.fixed_points(*args, **kwargs)


@pytest.mark.parametrize(
    "period, seed, count", [(2, 2, 0), (2, 0, 1), (2, 1, 2), (2, 24, 2), (3, 7, 2), (3, 22, 1)]
)
def test_cycles_of_an_alrnn_are_those_of_its_relu_regions(period, seed, count):
    """The k-cycles found from starts spread over the state space are exactly those of the
    exhaustive reference (every pattern of relu regions along the orbit), each listed once
    from its lexicographically smallest state, with the spectral radius of the Jacobian
    product around it; starts that reach a fixed point (period 1) count as converged but
    are not listed."""
    model = _alrnn(4, 3, seed)
    p = model.unflatten()
    orbits, radii = alrnn_cycles_reference(p["A"], p["W"], p["h"], 3, period)
    assert len(orbits) == count
    found = models.cycles(model, np.random.default_rng(seed).uniform(-20.0, 20.0, (400, 4)), period)
    assert found["states"].shape == (count, period, 4) and found["period"] == period
    order = np.argsort(radii, kind="stable")
    np.testing.assert_allclose(found["states"], orbits[order], atol=1e-9)
    np.testing.assert_allclose(found["spectral_radius"], radii[order], rtol=1e-9)
    np.testing.assert_array_equal(found["stable"], found["spectral_radius"] < 1)
    np.testing.assert_array_equal(found["points"], found["states"])
    for orbit in found["states"]:
        np.testing.assert_allclose(model.step(orbit), np.roll(orbit, -1, axis=0), atol=1e-9)


def test_cycles_of_period_one_are_the_fixed_points():
    model = _alrnn(4, 3, 12)
    starts = np.random.default_rng(12).uniform(-20.0, 20.0, (100, 4))
    cycles, points = models.cycles(model, starts, 1), models.fixed_points(model, starts)
    np.testing.assert_array_equal(cycles["states"][:, 0], points["states"])
    np.testing.assert_array_equal(cycles["spectral_radius"], points["spectral_radius"])
    assert cycles["n_converged"] == points["n_converged"] == 100


def test_a_stable_cycle_is_where_free_runs_end():
    """An ALRNN with an unobserved relu unit that oscillates: ``z_1 -> 1 - z_1 / 2`` below 0,
    ``1 - 3 z_1 / 2`` above, a stable 2-cycle (2, -2) around an unstable fixed point (0.4),
    and an observed unit driven by it. The search from data points finds the cycle, stable
    (Jacobian product eigenvalues 0.75 and 0.09), and a free run ends on it; its observed
    parts are the first latent's."""
    model = ALRNN(2, 1, n_obs=1, seed=0)
    p = model.unflatten()
    p["A"][...] = [0.3, -0.5]
    p["W"][...] = [[0.0, 0.5], [0.0, -1.0]]
    p["h"][...] = [0.0, 1.0]
    starts = np.linspace(-2.0, 2.0, 21)[:, None]
    found = models.cycles(model, starts, 2)
    assert found["states"].shape == (1, 2, 2) and found["stable"][0]
    np.testing.assert_allclose(np.sort(found["states"][0, :, 1]), [-2.0, 2.0], atol=1e-12)
    np.testing.assert_allclose(found["spectral_radius"], [0.75], rtol=1e-12)
    np.testing.assert_array_equal(found["points"], found["states"][..., :1])
    run = model.simulate(model.initial_state(starts[3]), 400)
    cycle = found["states"][0]
    assert any(np.allclose(run[-2:], np.roll(cycle, r, axis=0), atol=1e-9) for r in (0, 1))
    points = models.fixed_points(model, starts)
    assert len(points["states"]) == 1 and not points["stable"][0]
    np.testing.assert_allclose(points["states"][0, 1], 0.4, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"period": 0}, ValueError, "period must be >= 1"),
        ({"period": 1.5}, TypeError, "period must be an"),
        ({"period": 2, "max_iter": 0}, ValueError, "max_iter must be >= 1"),
    ],
)
def test_cycles_refuses_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match="^cycles: .*" + match):
        models.cycles(ShPLRNN(3, 8), np.zeros((2, 3)), **kwargs)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_model_with_non_finite_parameters_is_refused(value, dtype):
    """Every start would fail and the result be empty, as for a map without fixed points:
    the search refuses such a model, naming the function and the first bad parameter."""
    model = ClippedShPLRNN(3, 10, dtype=dtype)
    model.params[[4, 7]] = value
    for search, args in ((models.fixed_points, ()), (models.cycles, (2,))):
        with pytest.raises(
            ValueError,
            match=rf"^{search.__name__}: the model's parameters contain NaN or inf \(first at "
            r"index 4\)\. .* search a model with finite parameters",
        ):
            search(model, np.zeros((10, 3)), *args)
