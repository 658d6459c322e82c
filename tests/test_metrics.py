"""DSR measures: golden values from independent NumPy computations, properties, evaluate()."""

import collections
import math
import re
import warnings

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from models import metrics
from models.base import LatentRNN
from models.data import standardize
from models.metrics import (
    SpectrumResolutionWarning,
    StateSpaceResolutionWarning,
    evaluate,
    fixed_point_onsets,
    lyapunov_spectrum,
    max_lyapunov,
    normalized_spectra,
    power_spectrum_distance,
    prediction_error,
    spectrum_extent,
    state_space_divergence,
)
from models.shplrnn import ShPLRNN
from models.systems import SYSTEMS, generate
from parscan import _buffers

EPS = 1e-5


class MapRNN(LatentRNN):
    """Test model: ``z_t = A z_{t-1} + c`` or ``tanh(A z_{t-1} + c)``; M = N (no L0)."""

    def __init__(self, A, c=None, nonlinear=False, dtype="float64"):
        A = np.asarray(A, dtype=np.float64)
        self.M = self.n_obs = A.shape[0]
        self.nonlinear = nonlinear
        self._setup(dtype)
        self["A"][...] = A
        self["c"][...] = 0.0 if c is None else c

    def param_spec(self):
        return [("A", (self.M, self.M)), ("c", (self.M,)), *self._init_map_spec()]

    def hyperparameters(self):
        return {
            "A": self["A"].tolist(),
            "c": self["c"].tolist(),
            "nonlinear": self.nonlinear,
            "dtype": self.dtype.name,
        }

    def init(self, seed=0):
        return self

    def _pre(self, z):
        with np.errstate(over="ignore", invalid="ignore"):
            return z @ self["A"].T + self["c"]

    def step(self, z):
        pre = self._pre(z)
        return np.tanh(pre) if self.nonlinear else pre

    def jacobian(self, z):
        a = self["A"]
        if not self.nonlinear:
            return np.broadcast_to(a, (*z.shape[:-1], self.M, self.M)).copy()
        return (1.0 - np.tanh(self._pre(z)) ** 2)[..., :, None] * a

    def jacobian_diag(self, z):
        return np.diagonal(self.jacobian(z), axis1=-2, axis2=-1).copy()

    def step_and_jacobian(self, z, diag=False, out=None):
        return self.step(z), (self.jacobian_diag(z) if diag else self.jacobian(z))

    def param_vjp(self, z_prev, cotangent):
        raise NotImplementedError

    def norm_bound(self):
        return float(np.linalg.norm(self["A"], 2))

    def simulate(self, z0, n_steps):
        out = np.empty((*z0.shape[:-1], n_steps, self.M), dtype=self.dtype)
        z = z0
        for t in range(n_steps):
            z = self.step(z)
            out[..., t, :] = z
        return out


def rotation(angle, radius=1.0):
    c, s = math.cos(angle), math.sin(angle)
    return radius * np.array([[c, -s], [s, c]])


@pytest.fixture(scope="module")
def lorenz_pair():
    return generate("lorenz63", 50_000, seed=1), generate("lorenz63", 50_000, seed=2)


# --------------------------------------------------------------------------------------------
# D_stsp, binned
# --------------------------------------------------------------------------------------------


def dense_dstsp(x_true, x_gen, n_bins, box="minmax"):
    """Reference: dense histograms over all n_bins**N bins, KL summed bin by bin."""
    sd = x_true.std(axis=0)
    if box == "minmax":
        lo, hi = x_true.min(axis=0) - 0.1 * sd, x_true.max(axis=0) + 0.1 * sd
    else:
        lo, hi = x_true.mean(axis=0) - 2 * sd, x_true.mean(axis=0) + 2 * sd
    edges = [np.linspace(lo[j], hi[j], n_bins + 1) for j in range(x_true.shape[1])]

    def hist(x):
        inside = np.all((x >= lo) & (x < hi), axis=1)
        return np.histogramdd(x[inside], bins=edges)[0]

    c, d = hist(x_true), hist(x_gen)
    p = (c + EPS) / (c.sum() + EPS * c.size)
    q = (d + EPS) / (d.sum() + EPS * d.size)
    return float(np.sum(p * np.log(p / q)))


def test_dstsp_hand_computed_one_dimensional_example():
    # x_true = [0, 1]: sd = 0.5, box [-0.05, 1.05), two bins split at 0.5 -> counts (1, 1).
    # x_gen = [0, 0.1, 2.0]: 2.0 is outside the box and dropped -> counts (2, 0).
    a = (2 + 2 * EPS) / (1 + EPS)  # sum(count) + eps * n_bins, over (count + eps), true
    p = 0.5
    q0 = (2 + EPS) / (2 + 2 * EPS)
    q1 = EPS / (2 + 2 * EPS)
    expected = p * math.log(p / q0) + p * math.log(p / q1)
    assert a == pytest.approx(2.0)
    got = state_space_divergence(np.array([[0.0], [1.0]]), np.array([[0.0], [0.1], [2.0]]), 2)
    assert got == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("seed", "n_dims", "n_bins", "box"),
    [(0, 1, 7, "minmax"), (1, 2, 5, "minmax"), (2, 3, 4, "sd2"), (3, 2, 6, "sd2")],
)
def test_dstsp_matches_dense_reference(seed, n_dims, n_bins, box):
    rng = np.random.default_rng(seed)
    x_true = rng.standard_normal((300, n_dims))
    # another distribution, another length, some points outside the box
    x_gen = 1.5 * rng.standard_normal((211, n_dims)) + 0.3
    got = state_space_divergence(x_true, x_gen, n_bins, box=box)
    assert got == pytest.approx(dense_dstsp(x_true, x_gen, n_bins, box), rel=1e-10, abs=1e-13)


def test_sparse_counts_match_a_dictionary_for_code_and_row_paths():
    rng = np.random.default_rng(4)
    for n_dims in (3, 14):  # 30**3 fits an int64 code, 30**14 does not (unique rows)
        idx_t = rng.integers(0, 3, (400, n_dims)) * 10
        idx_g = rng.integers(0, 3, (300, n_dims)) * 10
        c, d = metrics._joint_counts(idx_t, idx_g, 30)
        ref_t = collections.Counter(map(tuple, idx_t))
        ref_g = collections.Counter(map(tuple, idx_g))
        assert sorted(c[c > 0]) == sorted(ref_t.values())
        assert sorted(d[d > 0]) == sorted(ref_g.values())
        assert len(c) == len(set(ref_t) | set(ref_g))


def test_dstsp_works_in_ten_dimensions_without_dense_histograms():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2000, 10))
    value = state_space_divergence(x, rng.standard_normal((2000, 10)), 30)
    # 30**10 bins: the eps mass dwarfs 2000 counts, so the divergence is tiny but positive
    assert 0 < value < 1e-3
    assert state_space_divergence(x, x, 30) == 0.0


small_traj = hnp.arrays(
    np.float64,
    st.tuples(st.integers(3, 40), st.integers(1, 3)),
    elements=st.integers(-800, 800).map(lambda i: i / 8),
)


@given(small_traj, st.integers(2, 12), st.randoms(use_true_random=False))
def test_dstsp_properties(x, n_bins, rnd):
    if np.any(np.all(x == x[0], axis=0)):
        return
    assert state_space_divergence(x, x, n_bins) == 0.0
    perm = list(range(len(x)))
    rnd.shuffle(perm)
    y = x[::-1] * 0.5 + 1.0
    d = state_space_divergence(x, y, n_bins)
    assert np.isnan(d) or d >= 0.0
    if not np.isnan(d):
        assert state_space_divergence(x[perm], y, n_bins) == pytest.approx(d, abs=1e-12)
        assert state_space_divergence(x, y[perm[: len(y)]], n_bins) == pytest.approx(d, abs=1e-12)


def test_dstsp_same_attractor_small_noise_large(lorenz_pair):
    a, b = lorenz_pair
    noise = np.random.default_rng(0).standard_normal(a.shape) * a.std(axis=0) + a.mean(axis=0)
    same = state_space_divergence(a, b)
    assert 0 < same < 0.25
    assert state_space_divergence(a, noise) > 10 * same
    same_gmm = state_space_divergence(a, b, method="gmm")
    assert abs(same_gmm) < 0.2
    assert state_space_divergence(a, noise, method="gmm") > 1.0


def test_dstsp_no_generated_point_in_box_is_nan():
    x = np.random.default_rng(6).standard_normal((100, 2))
    assert np.isnan(state_space_divergence(x, x + 100.0))


# --------------------------------------------------------------------------------------------
# D_stsp, Gaussian mixtures
# --------------------------------------------------------------------------------------------


def test_gmm_matches_numpy_reference():
    from scipy.special import logsumexp

    rng = np.random.default_rng(7)
    x_true, x_gen = rng.standard_normal((60, 3)), 0.7 * rng.standard_normal((45, 3)) + 0.2
    sigma2, n_samples, seed = 0.5, 200, 11
    draw = np.random.default_rng(seed)
    pick = draw.integers(0, 60, n_samples)
    s = x_true[pick] + math.sqrt(sigma2) * draw.standard_normal((n_samples, 3))

    def log_mixture(centers):
        d2 = ((s[:, None, :] - centers[None]) ** 2).sum(-1)
        return logsumexp(-d2 / (2 * sigma2), axis=1) - math.log(len(centers))

    expected = float(np.mean(log_mixture(x_true) - log_mixture(x_gen)))
    got = state_space_divergence(
        x_true, x_gen, method="gmm", sigma2=sigma2, n_samples=n_samples, seed=seed
    )
    assert got == pytest.approx(expected, rel=1e-12)


def test_gmm_of_single_points_is_the_gaussian_kl():
    a, b = np.array([[0.0, 0.0]]), np.array([[1.0, 2.0]])
    # KL(N(a, s I) || N(b, s I)) = |a - b|^2 / (2 s); Monte Carlo error ~ |a-b| / sqrt(s n)
    got = state_space_divergence(
        np.vstack([a, a]), b, method="gmm", sigma2=2.0, n_samples=4000, seed=0
    )
    assert got == pytest.approx(5.0 / 4.0, abs=0.1)


def test_gmm_subsamples_evenly_and_is_zero_for_identical_inputs():
    x = np.random.default_rng(8).standard_normal((500, 6))
    assert state_space_divergence(x, x.copy(), method="gmm", n_points=100) == 0.0
    got = state_space_divergence(x, x[::-1], method="gmm", n_points=50, n_samples=50)
    assert np.isfinite(got)


# --------------------------------------------------------------------------------------------
# D_H
# --------------------------------------------------------------------------------------------


def reference_spectrum(x, sigma):
    """Normalised smoothed power spectrum of one series, with an explicit reflect convolution."""
    z = (x - x.mean()) / x.std()
    ps = np.abs(np.fft.rfft(z)) ** 2
    if sigma > 0:
        radius = int(4 * sigma + 0.5)
        k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
        k /= k.sum()
        padded = np.pad(ps, radius, mode="symmetric")
        ps = np.convolve(padded, k, mode="valid")
    return ps / ps.sum()


def test_dh_golden_against_explicit_convolution():
    rng = np.random.default_rng(9)
    t = np.arange(400)
    x_true = np.column_stack([np.sin(0.3 * t) + 0.1 * rng.standard_normal(400), rng.random(400)])
    x_gen = np.column_stack([np.sin(0.35 * t), rng.standard_normal(400).cumsum()])
    for sigma in (0.0, 3.0):
        h = [
            math.sqrt(
                max(
                    0.0,
                    1.0
                    - np.sum(
                        np.sqrt(
                            reference_spectrum(x_true[:, j], sigma)
                            * reference_spectrum(x_gen[:, j], sigma)
                        )
                    ),
                )
            )
            for j in range(2)
        ]
        got, per_dim = power_spectrum_distance(x_true, x_gen, sigma, per_dimension=True)
        np.testing.assert_allclose(per_dim, h, rtol=1e-7, atol=1e-7)
        assert got == pytest.approx(np.mean(h), rel=1e-7)


def test_dh_pure_tones():
    t = np.arange(256)
    tone = lambda k, phase=0.0: np.cos(2 * np.pi * k * t / 256 + phase)[:, None]  # noqa: E731
    assert power_spectrum_distance(tone(5), tone(5, 1.0), 0) == pytest.approx(0.0, abs=1e-7)
    assert power_spectrum_distance(tone(5), tone(40), 0) == pytest.approx(1.0, abs=1e-7)


@given(small_traj, small_traj, st.floats(0, 5))
def test_dh_properties(x, y, sigma):
    n = min(len(x), len(y))
    x, y = x[:n], y[:n, :1].repeat(x.shape[1], axis=1)
    if np.any(np.all(x == x[0], axis=0)) or np.any(np.all(y == y[0], axis=0)):
        return
    d = power_spectrum_distance(x, y, sigma)
    assert 0.0 <= d <= 1.0
    assert power_spectrum_distance(y, x, sigma) == pytest.approx(d, abs=1e-12)
    assert power_spectrum_distance(x, x, sigma) == pytest.approx(0.0, abs=1e-7)


def test_dh_warns_when_the_series_is_too_short_for_the_smoothing():
    rng = np.random.default_rng(21)
    t = np.arange(2000)
    sine, noise = np.sin(2 * np.pi * t / 25)[:, None], rng.standard_normal((2000, 1))
    with pytest.warns(SpectrumResolutionWarning, match=r"power_spectrum_distance: D_H of 40 po"):
        flat = power_spectrum_distance(sine[:40], noise[:40])
    assert flat < 0.05  # why it warns: smoothing over 21 bins erases the difference
    with pytest.warns(
        SpectrumResolutionWarning,
        match=r"at least 38 points: pass longer series or lower smoothing\.$",
    ):
        power_spectrum_distance(sine[:37], noise[:37], smoothing=2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpectrumResolutionWarning)
        power_spectrum_distance(sine[:38], noise[:38], smoothing=2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpectrumResolutionWarning)
        assert power_spectrum_distance(sine[:400], noise[:400]) > 0.5
        assert power_spectrum_distance(sine[:40], noise[:40], smoothing=0.0) > 0.5
        assert power_spectrum_distance(sine, noise) > 0.8


def test_dh_refuses_a_smoothing_wider_than_the_spectrum_and_the_bound(monkeypatch):
    """Absurd widths (SciPy's kernel of 8 sigma taps: minutes, MemoryError or SciPy's own
    "Maximum allowed size exceeded") are refused up front, by both entry points, when they
    are also wider than the spectrum; a width within either bound is computed as before."""
    x = np.random.default_rng(23).standard_normal((40, 2))  # 21 frequency bins
    for smoothing in (1e9, 1e300):
        with pytest.raises(ValueError) as info:
            power_spectrum_distance(x, x[::-1], smoothing)
        assert str(info.value) == (
            f"power_spectrum_distance: smoothing={smoothing:g} frequency bins is wider than the "
            "whole spectrum of 40 points (21 bins): it would flatten both spectra, so that D_H "
            "is near 0 for any two series, and applying its kernel of 8 x smoothing taps takes "
            "seconds to hours, or all memory. Use smoothing <= 2.1 (at least 10 bins per unit "
            "of smoothing)."
        )
    model = ShPLRNN(2, 4, seed=1)
    with pytest.raises(ValueError, match=r"evaluate: n_bins must be .*smoothing=1e\+09 freq"):
        evaluate(model, x, n_bins=0, smoothing=1e9)
    assert evaluate(model, x, measures=("pe",), pe_steps=2, smoothing=1e9)["status"] == "ok"
    # the bound itself (lowered: computing at 1e6 bins takes seconds)
    monkeypatch.setattr(metrics, "MAX_SMOOTHING_BEYOND_SPECTRUM", 30.0)
    with pytest.warns(SpectrumResolutionWarning):
        assert power_spectrum_distance(x, x[::-1], 30.0) == pytest.approx(0.0, abs=1e-7)
        power_spectrum_distance(np.tile(x, (2, 1)), x[::-1].repeat(2, 0), 40.0)  # 41 bins
    with pytest.raises(ValueError, match=r"Use smoothing <= 2\.1 "):
        power_spectrum_distance(x, x[::-1], 30.5)


def test_measures_are_exact_at_the_float64_limits():
    rng = np.random.default_rng(22)
    x, y = rng.standard_normal((300, 2)), rng.standard_normal((300, 2)) * 1.3
    for scale in (1e-170, 1e160):
        assert power_spectrum_distance(x * scale, x * scale) == 0.0
        assert power_spectrum_distance(x * scale, y * scale) == pytest.approx(
            power_spectrum_distance(x, y), rel=1e-9
        )
        assert state_space_divergence(x * scale, x * scale) == 0.0
        assert state_space_divergence(x * scale, y * scale) == pytest.approx(
            state_space_divergence(x, y), rel=1e-9
        )


def test_binned_dstsp_of_a_box_wider_than_the_largest_float64(lorenz_pair):
    """hi - lo overflowed to inf and put every point into bin 0 (D_stsp about 0 for any
    pair); the box is measured in halves."""
    a = lorenz_pair[0][:5000, :2]
    rng = np.random.default_rng(0)
    noise = np.clip(a.mean(0) + a.std(0) * rng.standard_normal(a.shape), a.min(0), a.max(0))
    for box in ("minmax", "sd2"):
        expected = state_space_divergence(a, noise, box=box)
        assert expected > 1.0
        assert state_space_divergence(a * 6e306, noise * 6e306, box=box) == expected


def test_an_sd2_box_without_a_reference_point_is_refused():
    """Every row outside mean +- 2 sd in its own dimension: no occupation to compare (the
    score was KL of a uniform p, without a warning)."""
    rng = np.random.default_rng(1)
    x = np.zeros((2000, 5))
    x[np.arange(2000), np.arange(2000) % 5] = np.where(np.arange(2000) % 2, 10.0, -10.0)
    x += 0.01 * rng.standard_normal(x.shape)
    message = r"^state_space_divergence: no point of x_true lies in the box='sd2' box"
    with pytest.raises(ValueError, match=message + r".* use box='minmax'\.$"):
        state_space_divergence(x, rng.standard_normal(x.shape), n_bins=8, box="sd2")
    assert state_space_divergence(x, x, n_bins=8) == 0.0


def test_gmm_samples_beyond_memory_are_refused():
    x = np.random.default_rng(2).standard_normal((100, 2))
    message = r"^state_space_divergence: the n_samples Monte-Carlo samples need .*; lower n_samples"
    with pytest.raises(ValueError, match=message):
        state_space_divergence(x, x, method="gmm", n_samples=10**13)


def test_gmm_of_an_infinitely_distant_run_is_inf():
    x = np.random.default_rng(23).standard_normal((200, 2))
    assert state_space_divergence(x, x + 1e155, method="gmm") == math.inf


def test_gmm_is_invariant_to_scaling_data_and_mixture_width_together():
    """Differences are scaled before squaring: 1e150-wide data with sigma2 = 1e300 is unit data
    with sigma2 = 1 (the squared distances alone would overflow)."""
    rng = np.random.default_rng(31)
    x, y = rng.standard_normal((400, 3)), rng.standard_normal((300, 3))
    unit = state_space_divergence(x, y, method="gmm")
    for scale in (1e150, 1e-150):
        scaled = state_space_divergence(x * scale, y * scale, method="gmm", sigma2=scale**2)
        assert scaled == pytest.approx(unit, rel=1e-9)


def test_gmm_ignores_an_overflowing_distance_wherever_it_comes():
    """A centre whose squared distance overflows adds no mass, first or last in the sum (it
    was NaN when the running maximum started from it)."""
    x = np.random.default_rng(23).standard_normal((200, 2))
    for row in (0, 100, -1):
        y = x.copy()
        y[row] += 1e155
        without = state_space_divergence(x, np.delete(x, row, axis=0), method="gmm")
        # the far centre only dilutes the other 199: weights 1/200 instead of 1/199
        assert state_space_divergence(x, y, method="gmm") == pytest.approx(
            without + math.log(200 / 199), rel=1e-12
        )


def test_binned_dstsp_of_equal_proportions_is_small_and_never_negative():
    x = np.random.default_rng(24).standard_normal((300, 2))
    for n_bins in (5, 30):
        for copies in (1, 2, 3):
            d = state_space_divergence(x, np.vstack([x] * copies), n_bins)
            assert 0.0 <= d < 1e-3
            assert (d == 0.0) == (copies == 1)


def test_dh_constant_generated_dimension_is_maximal():
    x = np.random.default_rng(10).standard_normal((100, 2))
    gen = x.copy()
    gen[:, 1] = 3.0
    total, per_dim = power_spectrum_distance(x, gen, 2.0, per_dimension=True)
    np.testing.assert_allclose(per_dim, [0.0, 1.0], atol=1e-7)
    assert total == pytest.approx(0.5)
    gen[:, 1] = 90.09273926518705  # its computed sd is 1.4e-14, not 0: still constant
    assert np.std(gen[:, 1]) > 0
    _, per_dim = power_spectrum_distance(x, gen, 2.0, per_dimension=True)
    assert per_dim[1] == 1.0


def test_dh_same_attractor_small(lorenz_pair):
    a, b = lorenz_pair
    assert power_spectrum_distance(a, b) < 0.15
    noise = np.random.default_rng(0).standard_normal(a.shape)
    assert power_spectrum_distance(a, noise) > 0.5


def test_spectrum_extent_holds_the_test_power():
    rng = np.random.default_rng(0)
    t = np.arange(4000)
    slow = np.sin(2 * np.pi * 5 * t / 4000)[:, None] + 1e-3 * rng.standard_normal((4000, 1))
    spectrum = normalized_spectra(slow, 0.0)
    assert spectrum_extent(spectrum) == 50  # the power lies in the first bins
    noise = normalized_spectra(rng.standard_normal((4000, 2)), 0.0)
    extent = spectrum_extent(noise)
    assert 0.99 * noise.shape[0] < extent <= noise.shape[0]
    both = np.concatenate([spectrum, np.full_like(spectrum, np.nan), noise[:, :1]], axis=1)
    assert spectrum_extent(both) == spectrum_extent(noise[:, :1])
    assert spectrum_extent(spectrum[:20]) == 20


# --------------------------------------------------------------------------------------------
# Validation of the divergence inputs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda x: state_space_divergence(x, x[:, :1]), ValueError, r"same number of dimensions"),
        (lambda x: state_space_divergence(x, x, method="kde"), ValueError, r"method must be one"),
        (lambda x: state_space_divergence(x, x, box="3sd"), ValueError, r"box must be one of"),
        (lambda x: state_space_divergence(x, x, 0), ValueError, r"n_bins must be >= 1"),
        (lambda x: state_space_divergence(x, x, 30.0), TypeError, r"n_bins must be an int"),
        (
            lambda x: state_space_divergence(x, x, method="gmm", sigma2=0),
            ValueError,
            r"sigma2 must be finite and > 0",
        ),
        (
            lambda x: state_space_divergence(x, np.full_like(x, np.nan)),
            ValueError,
            r"state_space_divergence: x_gen contains NaN or inf",
        ),
        (
            lambda x: state_space_divergence(np.ones_like(x), x),
            ValueError,
            r"x_true is constant in column",
        ),
        (lambda x: power_spectrum_distance(x, x[:-1]), ValueError, r"same length"),
        (lambda x: power_spectrum_distance(x, x, -1.0), ValueError, r"smoothing must be"),
        (lambda x: power_spectrum_distance(x[:, 0], x), ValueError, r"x_true must be 2-D"),
        (
            lambda x: state_space_divergence(x, x[::-1], 1),
            ValueError,
            r"^state_space_divergence: n_bins = 1: one bin per axis holds every point, so D_stsp "
            r"is 0 for any two trajectories; use at least 2",
        ),
        (
            lambda x: evaluate(ShPLRNN(2, 4), x, measures="dstsp", n_bins=10**25),
            ValueError,
            r"^evaluate: n_bins = 10{25} bins per axis are more than float64 positions can tell "
            r"apart \(2\*\*53\); use fewer",
        ),
        (
            lambda x: power_spectrum_distance(x.T, x.T, 0.0),
            ValueError,
            r"^power_spectrum_distance: x_true has fewer time steps \(2\) than dimensions "
            r"\(20\)\. Shape \(2, 20\) looks transposed: pass x_true\.T",
        ),
        (
            lambda x: state_space_divergence(x.T, x.T),
            ValueError,
            r"^state_space_divergence: x_true has .* looks transposed: pass x_true\.T",
        ),
        (
            lambda x: state_space_divergence(x, x[:3].T, method="gmm"),
            ValueError,
            r"x_gen has fewer time steps \(2\) than dimensions \(3\)\. .* pass x_gen\.T",
        ),
    ],
)
def test_divergence_validation(call, exc, match):
    x = np.random.default_rng(11).standard_normal((20, 2))
    with pytest.raises(exc, match=match):
        call(x)


# --------------------------------------------------------------------------------------------
# PE(n)
# --------------------------------------------------------------------------------------------


def test_prediction_error_golden_and_chunking(monkeypatch):
    a = np.array([[0.9, -0.2], [0.3, 0.7]])
    model = MapRNN(a)
    x = np.random.default_rng(12).standard_normal((50, 2))
    for n in (1, 3):
        pred = x[:-n] @ np.linalg.matrix_power(a, n).T
        expected = np.mean((pred - x[n:]) ** 2)
        assert prediction_error(model, x, n) == pytest.approx(expected, rel=1e-12)
        monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 7)  # chunks of 1-3 starts
        assert prediction_error(model, x, n) == pytest.approx(expected, rel=1e-12)
        monkeypatch.undo()


def test_prediction_error_of_the_data_generating_model_is_zero():
    model = MapRNN(rotation(0.1))
    x0 = np.array([1.0, 0.0])
    x = np.vstack([x0, model.generate(x0, 99)])
    assert prediction_error(model, x, 20) == pytest.approx(0.0, abs=1e-28)
    model32 = model.astype(np.float32)
    assert prediction_error(model32, x, 20) < 1e-10


def test_prediction_error_validation():
    model = MapRNN(np.eye(2))
    x = np.random.default_rng(13).standard_normal((10, 2))
    with pytest.raises(ValueError, match=r"prediction_error: x has 10 time steps; at least 11"):
        prediction_error(model, x, 10)
    with pytest.raises(ValueError, match=r"x has 3 columns but the model observes N = 2\. Pass"):
        prediction_error(model, np.random.default_rng(0).standard_normal((10, 3)), 2)
    with pytest.raises(ValueError, match=r"evaluate: x_test .* looks transposed: pass x_test\.T"):
        evaluate(model, x.T[:, :3])
    with pytest.raises(TypeError, match=r"prediction_error: expected a models.Model"):
        prediction_error("model", x, 2)
    flat = x.copy()
    flat[:, 1] = 0.5  # a constant observable has a prediction error like any other
    expected = np.mean((flat[:-2] - flat[2:]) ** 2)
    assert prediction_error(model, flat, 2) == pytest.approx(expected, rel=1e-14)


# --------------------------------------------------------------------------------------------
# Lyapunov exponents
# --------------------------------------------------------------------------------------------


def reference_map_lyapunov(model, z0, n_steps, transient, k):
    q = metrics._initial_tangents(model.M, k)
    z = z0
    logs = np.zeros(k)
    for t in range(transient + n_steps):
        q, r = np.linalg.qr(model.jacobian(z) @ q)
        if t >= transient:
            logs += np.log(np.abs(np.diag(r)))
        z = model.step(z)
    return np.sort(logs / n_steps)[::-1]


def test_map_lyapunov_matches_numpy_qr_reference(monkeypatch):
    rng = np.random.default_rng(14)
    model = MapRNN(1.8 * rng.standard_normal((4, 4)) / 2, nonlinear=True)
    x0 = rng.standard_normal(4)
    expected = reference_map_lyapunov(model, x0, 300, 50, 3)
    got = lyapunov_spectrum(model, 3, x0=x0, n_steps=300, transient=50)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 16 * 7)  # blocks of 7 Jacobians
    np.testing.assert_allclose(
        lyapunov_spectrum(model, 3, x0=x0, n_steps=300, transient=50), expected, rtol=1e-9
    )
    assert max_lyapunov(model, x0=x0, n_steps=300, transient=50) == pytest.approx(expected[0])


def test_linear_map_exponents_are_log_eigenvalue_moduli():
    model = MapRNN(np.array([[2.0, 1.0], [0.0, 0.5]]))
    got = lyapunov_spectrum(model, x0=np.array([0.1, 0.2]), n_steps=500, transient=50)
    np.testing.assert_allclose(got, [math.log(2.0), math.log(0.5)], atol=1e-3)


def test_exponents_of_a_map_that_keeps_the_axes_invariant():
    """A diagonal Jacobian (every ReLU off, decoupled units) keeps each coordinate axis: tangent
    vectors started on the axes would report the first axis' exponent as the largest."""
    model = MapRNN(np.diag([0.5, 0.6, 0.9]))
    expected = np.log([0.9, 0.6, 0.5])
    got = lyapunov_spectrum(model, x0=np.ones(3), n_steps=1000)
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    assert max_lyapunov(model, x0=np.ones(3), n_steps=1000) == pytest.approx(expected[0])
    short = lyapunov_spectrum(model, x0=np.ones(3), n_steps=2, transient=0)
    assert short[0] >= short[1] >= short[2]  # unaligned vectors, sorted all the same


def test_exponents_of_chaotic_piecewise_linear_maps():
    """The skew tent map (slopes 1/p, -1/(1-p)) as a 1-unit ALRNN: the exponent is the mean
    of log|F'| along the same orbit, near -p log p - (1-p) log(1-p); the Lozi map
    (x, y) -> (1 - a|x| + y, b x), |x| = 2 relu(x) - x, as a 3-unit ALRNN (x, y, u = x): the
    exponents sum to log b (det J = -b), the largest about 0.470."""
    from models import ALRNN

    p = 0.3
    tent = ALRNN(1, 1)
    tent["A"][...], tent["W"][...], tent["h"][...] = 1 / p, -1 / p - 1 / (1 - p), 1 - p
    z0 = tent.initial_state(np.array([0.123]))
    run = np.concatenate([z0[None], tent.simulate(z0, 20_999)])
    direct = np.mean(np.log(np.abs(tent.jacobian(run[1000:])[:, 0, 0])))
    got = max_lyapunov(tent, x0=np.array([0.123]), n_steps=20_000)
    assert got == pytest.approx(direct, abs=1e-12)
    assert direct == pytest.approx(-p * np.log(p) - (1 - p) * np.log(1 - p), abs=0.01)
    a, b = 1.7, 0.5
    lozi = ALRNN(3, 1)
    lozi["A"][...], lozi["h"][...] = 0.0, [1.0, 0.0, 1.0]
    lozi["W"][...] = [[a, 1, -2 * a], [b, 0, 0], [a, 1, -2 * a]]
    got = lyapunov_spectrum(lozi, 2, x0=np.array([0.1, 0.1, 0.1]), n_steps=20_000)
    assert got.sum() == pytest.approx(np.log(b), abs=1e-12)
    assert got[0] == pytest.approx(0.470, abs=0.005)


def test_exponents_of_a_model_with_nan_parameters_are_refused_naming_them():
    """They blamed the run ("became non-finite at step 1; the run diverges")."""
    from models import ALRNN

    model = ALRNN(1, 1)
    model.params[0] = np.nan
    for function in (max_lyapunov, lyapunov_spectrum):
        with pytest.raises(ValueError, match=rf"^{function.__name__}: the model's parameters "
                           r"contain NaN or inf \(first at index 0\)"):  # fmt: skip
            function(model, x0=np.array([1.0]))


def test_lorenz63_largest_exponent_and_spectrum_sum():
    lam = max_lyapunov("lorenz63")
    assert lam == pytest.approx(SYSTEMS["lorenz63"].lyapunov, rel=0.1)
    spectrum = lyapunov_spectrum("lorenz63", n_steps=2000)
    p = SYSTEMS["lorenz63"].params
    # volume contraction: the sum is the (constant) trace of the Jacobian
    assert spectrum.sum() == pytest.approx(-(p["sigma"] + 1 + p["beta"]), rel=1e-3)
    assert spectrum[0] > spectrum[1] > spectrum[2]


def test_hindmarsh_rose_largest_exponent_is_the_described_one():
    """SYSTEMS' description and the README: 0.017 from the default 20,000 samples, which hold
    a few bursts (0.013 over 10^6 samples, 20 s: not run here)."""
    description = SYSTEMS["hindmarsh_rose"].description
    assert "0.013 per time unit over 10^6 samples" in description and "give 0.017" in description
    assert max_lyapunov("hindmarsh_rose") == pytest.approx(0.017, abs=5e-4)


def test_spectrum_is_in_decreasing_order_even_after_a_few_steps():
    """After a short run the values are unreliable (far from Lorenz-63's 0.906, 0, -14.57),
    never their order: the averages of log |R_ii| come out of order here (the second the
    largest), the spectrum is returned sorted."""
    for n_steps in (1, 2, 5):
        spectrum = lyapunov_spectrum("lorenz63", n_steps=n_steps, transient=0)
        assert np.all(np.diff(spectrum) <= 0), spectrum


def test_rossler_largest_exponent_is_the_tabulated_one():
    """README/SYSTEMS: 0.0714 per time unit (Sprott 2003); the default run (its Lyapunov time
    is ~280 samples) measures 0.072: within 5 %."""
    assert max_lyapunov("rossler") == pytest.approx(SYSTEMS["rossler"].lyapunov, rel=0.05)


def test_lyapunov_validation():
    model = MapRNN(np.eye(2))
    for function in (max_lyapunov, lyapunov_spectrum):  # each names itself
        with pytest.raises(ValueError, match=rf"^{function.__name__}: a model needs x0"):
            function(model)
    with pytest.raises(ValueError, match=r"n_exponents \(3\) exceeds the state dimension \(2\)"):
        lyapunov_spectrum(model, 3, x0=np.zeros(2))
    with pytest.raises(ValueError, match=r"x0 must be a finite array of shape \(2,\).*NaN/inf"):
        max_lyapunov(model, x0=np.array([np.nan, 0.0]))
    with pytest.raises(ValueError, match=r"x0 must be a finite array of shape \(2,\); got shape"):
        max_lyapunov(model, x0=np.zeros(3))
    for x0 in (np.array([True, False]), np.zeros(2, complex)):
        with pytest.raises(TypeError, match=r"^max_lyapunov: x0 must be a real array"):
            max_lyapunov(model, x0=x0)
    with pytest.raises(ValueError, match=r": dt applies to systems, not to models\.$"):
        max_lyapunov(model, x0=np.zeros(2), dt=0.1)
    with pytest.raises(ValueError, match=r": params, seed apply to systems, not to models\.$"):
        lyapunov_spectrum(model, x0=np.zeros(2), params={}, seed=123)  # seed was ignored
    with pytest.raises(TypeError, match=r"expected a system name, a System or a LatentRNN"):
        max_lyapunov(np.eye(2))
    with pytest.raises(ValueError, match=r"unknown system 'lorentz'"):
        max_lyapunov("lorentz")
    blow_up = MapRNN(3.0 * np.eye(2))
    with pytest.raises(ValueError, match=r"free run became non-finite at step"):
        max_lyapunov(blow_up, x0=np.ones(2), n_steps=1000)
    # runs a compiled loop could not finish (or whose step count leaves int64) are refused
    for kwargs, match in [
        ({"dt": 1e20}, r"dt=1e\+20 needs 1e\+23 RK4 steps"),
        ({"transient": 10**12}, r"transient must be <= MAX_RK4_STEPS .*Use a smaller transi"),
        ({"dt": 1e-300}, r"the run would take .* RK4 steps"),
    ]:
        with pytest.raises(ValueError, match=r"^lyapunov_spectrum: " + match):
            lyapunov_spectrum("lorenz63", **kwargs)
    # a step weighs its dimensions and tangent vectors: 1.1e5 steps of a 3000-D tangent run
    with pytest.raises(ValueError, match=r"1\.1e\+05 RK4 steps .*the work of 8\.25e\+10 steps"):
        max_lyapunov("lorenz96", params={"N": 3000})  # about 5 hours on one core
    # the sample that is not finite is named from x0 = sample 0 on (it said "sample 0")
    with pytest.raises(ValueError, match=r"non-finite at t = 0\.01 \(sample 1, counting the"):
        lyapunov_spectrum("lorenz63", n_steps=200, transient=0, x0=[1e200] * 3)


def test_lyapunov_scratch_the_machine_cannot_hold_is_a_clear_error(monkeypatch):
    """The tangent run's D x D Jacobian and tangent vectors are allocated before the compiled
    loop (Lorenz-96 with N = 10^5 raised a bare MemoryError from inside it)."""

    def too_large(dim, k):
        raise MemoryError

    monkeypatch.setattr(metrics, "_initial_tangents", too_large)
    with pytest.raises(
        ValueError,
        match=r"^max_lyapunov: 1 tangent vector of 40 dimensions \(several copies\) and a 40 x "
        r"40 Jacobian need 16.3 KiB, more than this machine can allocate; use a system of fewer",
    ):
        max_lyapunov("lorenz96", params={"N": 40}, n_steps=10)
    # one beyond the memory available now is refused before it is allocated (Linux grants
    # it, and the run that fills it is killed)
    monkeypatch.setattr(_buffers, "available_bytes", lambda: 2**20)
    with pytest.raises(
        ValueError,
        match=r"^max_lyapunov: 1 tangent vector of 3000 dimensions \(several copies\) and a "
        r"3000 x 3000 Jacobian need 68\.9 MiB, more than the 1 MiB of memory available now; ",
    ):
        max_lyapunov("lorenz96", params={"N": 3000}, n_steps=1, transient=0)


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rotation_data():
    model = MapRNN(rotation(2 * math.pi / 37.3))
    x0 = np.array([1.0, 0.0])
    return model, np.vstack([x0, model.generate(x0, 999)])


def test_evaluate_perfect_model(rotation_data):
    model, x = rotation_data
    res = evaluate(model, x, measures=("dstsp", "dh", "pe", "lyapunov"))
    assert res["status"] == "ok" and res["dstsp_method"] == "bins"
    assert res["dstsp"] == 0.0
    assert res["dh"] == pytest.approx(0.0, abs=1e-7)
    assert res["pe"] == pytest.approx(0.0, abs=1e-28)
    assert res["lyapunov"] == pytest.approx(0.0, abs=1e-6)
    longer = evaluate(model, x, n_steps=1500, transient=100, measures=("dstsp", "dh"))
    assert longer["status"] == "ok" and longer["dstsp"] < 0.1 and longer["dh"] < 0.05


def test_dstsp_of_too_few_points_per_occupied_bin_warns():
    """The threshold is MIN_POINTS_PER_BIN points per bin the reference occupies (2 here)."""
    x_true = np.array([[0.0, 0.0], [1.0, 1.0]] * 5)
    needed = metrics.MIN_POINTS_PER_BIN * 2
    with pytest.warns(StateSpaceResolutionWarning) as record:
        state_space_divergence(x_true, np.resize(x_true, (needed - 1, 2)), n_bins=2)
    assert str(record[0].message) == (
        f"state_space_divergence: binned D_stsp of {needed - 1} generated points, fewer than 10 "
        "per bin the reference occupies (2 bins): most of them stay empty in the run, and even "
        f"the true system scores far above 0. Score at least {needed} points: pass a longer "
        "x_gen or lower n_bins."
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", StateSpaceResolutionWarning)
        assert state_space_divergence(x_true, np.resize(x_true, (needed, 2)), n_bins=2) < 1e-4
        state_space_divergence(x_true, x_true[:3], method="gmm")  # histograms only


def test_dstsp_with_far_more_bins_than_points_says_every_score_tends_to_0():
    """n_bins**N pseudo-counts outweighing the points shrink any score towards 0 (noise
    against a trajectory scores near 0): the warning says that, not that scores are high."""
    rng = np.random.default_rng(24)
    x_true, noise = rng.standard_normal((2000, 3)), rng.uniform(-3.0, 3.0, (2000, 3))
    with pytest.warns(StateSpaceResolutionWarning) as record:
        score = state_space_divergence(x_true, noise, n_bins=10_000)
    assert score < 0.05 < state_space_divergence(x_true, noise, n_bins=5)
    assert str(record[0].message) == (
        "state_space_divergence: binned D_stsp of 2000 generated points, fewer than 10 per bin "
        "the reference occupies (2000 bins): the pseudo-count 1e-05 of each of the 1e+12 bins "
        "adds up to 1e+07 points, more than the 2000 scored, and pulls every score towards 0 "
        "(by a factor of about 0.0002), the true system's and a useless model's alike. Score "
        "at least 20000 points: pass a longer x_gen or lower n_bins."
    )


def test_evaluate_warns_when_dstsp_scores_too_few_points_and_reports_how_many(rotation_data):
    model, x = rotation_data  # x[1:] occupies 116 of the 30 x 30 bins: 1160 points needed
    with pytest.warns(StateSpaceResolutionWarning, match=r"^evaluate: binned D_stsp of 9 gen.*"
                      r"\(116 bins\).* at least 1160 points: n_steps - transient are scored; "
                      r"raise n_steps, lower transient or lower n_bins\.$"):  # fmt: skip
        res = evaluate(model, x, transient=990, measures=("dstsp",))
    assert (res["n_steps"], res["transient"], res["n_measured"]) == (999, 990, 9)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StateSpaceResolutionWarning)
        res = evaluate(model, x, n_steps=1200, transient=40, measures=("dstsp",))
        assert res["n_measured"] == 1160 and res["dstsp"] < 0.05
        evaluate(model, x, transient=990, measures=("dstsp",), dstsp_method="gmm")


def test_evaluate_reports_failed_runs(rotation_data):
    _, x = rotation_data
    expanding = MapRNN(rotation(0.3, radius=2.0))
    res = evaluate(expanding, x, n_steps=100)
    assert res["status"] == "diverged" and res["dstsp"] is None and res["pe"] is None
    res = evaluate(expanding, x, n_steps=1200)
    assert res["status"] == "non_finite" and "step" in res["message"]
    assert res["dh"] is None
    offset = MapRNN(0.5 * np.eye(2), c=np.array([5.0, 5.0]))  # fixed point (10, 10)
    res = evaluate(offset, x, transient=50)
    assert res["status"] == "out_of_box" and res["dstsp"] is None


def test_fixed_point_onsets_finds_where_runs_come_to_rest():
    """A run rests from the index after its last move larger than ``tolerance`` sds when
    that stretch holds at least 10 % of the run and 10 points; moving or short runs do not."""
    sd = np.array([1.0, 1e-3])
    t = np.arange(100.0)
    moving = np.stack([np.sin(t / 5), np.cos(t / 5) * 1e-3], axis=1)
    resting = moving.copy()
    resting[30:] = resting[29] + np.array([1e-8, 1e-12]) * (t[30:, None] % 2)  # jitters < tol
    late = moving.copy()
    late[95:] = late[94]  # rests for its last 5 % only
    runs = np.stack([moving, resting, late])
    np.testing.assert_array_equal(fixed_point_onsets(runs, sd), [-1, 29, -1])
    assert fixed_point_onsets(resting, sd) == 29 and fixed_point_onsets(resting[:9], sd) == -1
    jittery = resting.copy()
    jittery[30:, 1] += 1e-8 * (t[30:] % 2)  # 1e-5 sds of that dimension: moves
    assert fixed_point_onsets(jittery, sd) == -1 and fixed_point_onsets(jittery, 1.0) == 29
    assert fixed_point_onsets(resting, sd, tolerance=1e-9) == -1  # the jitter is a move now
    assert fixed_point_onsets(late, sd, fraction=0.05) == -1  # 6 points: fewer than 10
    long = np.sin(np.arange(1000.0) / 5)[:, None]
    long[940:] = long[939]  # 6 % of the run
    assert fixed_point_onsets(long) == -1 and fixed_point_onsets(long, fraction=0.05) == 939
    np.testing.assert_array_equal(fixed_point_onsets(np.zeros((3, 2, 50, 1))), np.zeros((3, 2)))
    assert fixed_point_onsets(resting.astype(np.float32), sd) == 29
    broken = resting.copy()
    broken[60:] = np.nan  # NaN steps move: the run rests from 29 to 59 only
    assert fixed_point_onsets(broken, sd) == -1 and fixed_point_onsets(resting.tolist(), sd) == 29


def test_fixed_point_onsets_of_integer_runs_do_not_wrap():
    """Integer runs: the moves 100 -> -100 (int8) and 5 -> 4 (uint8) wrapped around in the
    dtype's differences (56 and 255), so a move read as rest and a rest as a move."""
    jump = np.array([[100]] + [[-100]] * 11, np.int8)
    assert fixed_point_onsets(jump, scale=1e8, tolerance=1e-6) == 1
    assert fixed_point_onsets(jump.astype(float), scale=1e8, tolerance=1e-6) == 1
    step = np.array([[5]] + [[4]] * 11, np.uint8)
    assert fixed_point_onsets(step, scale=1000.0, tolerance=0.01) == 0


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        (
            (np.zeros(10),),
            {},
            ValueError,
            r"runs must have shape \(\.\.\., n_steps, N\) with N >= 1; got shape",
        ),
        ((np.zeros((50, 0)),), {}, ValueError, r"runs .* with N >= 1; got shape \(50, 0\)\."),
        ((np.zeros((20, 2)), np.array([1.0, 0.0])), {}, ValueError, "scale must be finite and > 0"),
        ((np.zeros((20, 2)), np.nan), {}, ValueError, "scale must be finite and > 0"),
        ((np.zeros((20, 2)),), {"fraction": 1.5}, ValueError, r"fraction must be in \(0, 1\]"),
        ((np.zeros((20, 2)),), {"tolerance": 0}, ValueError, "tolerance must be finite and > 0"),
        ((np.zeros((20, 2), complex),), {}, TypeError, "runs must hold real numbers"),
        ((np.ma.zeros((20, 2)),), {}, TypeError, "runs is a masked array"),
        ((np.zeros((20, 2)), "1"), {}, TypeError, "scale must hold real numbers"),
        ((np.zeros((20, 2)), np.ones(3)), {}, ValueError, r"scale must be a number or have shape"),
    ],
)
def test_fixed_point_onsets_refuses_bad_arguments(args, kwargs, error, match):
    with pytest.raises(error, match="^fixed_point_onsets: " + match):
        fixed_point_onsets(*args, **kwargs)


def test_evaluate_reports_runs_that_come_to_rest(rotation_data):
    """``at_rest`` lists each free run that rests (test point, first resting step,
    where), also when a later measure fails; None when the runs are not finite."""
    model, x = rotation_data
    assert evaluate(model, x, n_starts=3)["at_rest"] == []
    offset = MapRNN(0.5 * np.eye(2), c=np.array([5.0, 5.0]))  # fixed point (10, 10)
    res = evaluate(offset, x, n_starts=2)
    assert res["status"] == "out_of_box"  # the runs rest outside the data's box
    # each step halves the distance to (10, 10): the moves fall below 1e-6 sds at step 23
    assert [(p["start"], p["step"]) for p in res["at_rest"]] == [(0, 23), (500, 23)]
    np.testing.assert_allclose(res["at_rest"][1]["point"], [10.0, 10.0], atol=1e-6)
    several = evaluate(offset, [x, x[:400]], measures=("dh",))
    assert [(p["trajectory"], p["start"]) for p in several["at_rest"]] == [(0, 0), (1, 0)]
    assert several["per_trajectory"][1]["at_rest"][0]["start"] == 0
    assert evaluate(MapRNN(rotation(0.3, radius=2.0)), x)["at_rest"] is None


@pytest.mark.filterwarnings("ignore::models.metrics.StateSpaceResolutionWarning")
def test_resting_runs_are_sized_in_sds_also_at_the_float64_limits(rotation_data):
    """x.std underflowed to 0 (1e-170: the rotation read as resting from step 1, in
    absolute units) or overflowed to inf (1e160: an error about fixed_point_onsets)."""
    model, x = rotation_data
    for scale in (1e-170, 1e160):
        res = evaluate(model, x * scale, n_starts=2, measures=("dstsp", "dh"))
        assert res["status"] == "ok" and res["at_rest"] == []


def test_evaluate_drops_the_first_transient_steps_of_the_free_run(rotation_data):
    """A run that starts far from the data (inside the divergence limit, outside the box) and
    then follows them exactly scores 0 once those first steps are the transient dropped."""
    model, x = rotation_data
    k = 200
    far = np.full((k, 2), x.max() + 5.0)
    runs = np.concatenate([far, x[1:]])

    class FarThenExact(MapRNN):
        def generate(self, x0, n_steps):
            assert n_steps == len(runs)
            return np.broadcast_to(runs, (*x0.shape[:-1], *runs.shape)).copy()

    fake = FarThenExact(model["A"])
    res = evaluate(fake, x, n_steps=len(runs), transient=k, measures=("dstsp", "dh"))
    assert res["status"] == "ok" and res["n_measured"] == len(x) - 1
    assert res["dstsp"] == 0.0 and res["dh"] == pytest.approx(0.0, abs=1e-12)
    kept = evaluate(fake, x, n_steps=len(runs), transient=k // 2, measures=("dh",))
    assert kept["dh"] > 0.1  # the far steps left count (D_stsp skips points out of its box)


def test_evaluate_several_starts_average_runs_from_spaced_points(rotation_data):
    _, x = rotation_data
    decaying = MapRNN(rotation(2 * math.pi / 37.3, radius=0.999))  # an imperfect model
    res = evaluate(decaying, x, n_starts=3, measures=("dstsp", "dh"))
    runs = [decaying.generate(x[i], 999) for i in (0, 333, 666)]  # starts i * 1000 // 3
    assert res["status"] == "ok" and res["n_starts"] == 3
    dstsp = [state_space_divergence(x[1:], run) for run in runs]
    assert res["dstsp"] == pytest.approx(np.mean(dstsp), rel=1e-12)
    dh = [power_spectrum_distance(x[1:], run) for run in runs]
    assert res["dh"] == pytest.approx(np.mean(dh), rel=1e-12)
    one = evaluate(decaying, x, measures=("dstsp",))
    assert one["n_starts"] == 1 and one["dstsp"] == dstsp[0]
    expanding = MapRNN(rotation(0.3, radius=2.0))
    res = evaluate(expanding, x, n_steps=100, n_starts=3)
    assert res["status"] == "diverged" and "(run 1 of 3, from test point 0)" in res["message"]


def test_evaluate_dh_is_bitwise_that_of_each_run_in_any_batch_on_any_threads(
    rotation_data, monkeypatch
):
    """The runs' spectra are taken together, in batches bounded by _CHUNK_ELEMENTS, on the
    kernels' threads: the same bits as power_spectrum_distance of each run alone."""
    _, x = rotation_data
    decaying = MapRNN(rotation(2 * math.pi / 37.3, radius=0.999))
    runs = decaying.generate(x[[0, 200, 400, 600, 800]], 999)  # starts i * 1000 // 5
    dh = [power_spectrum_distance(x[1:], run) for run in runs]
    saved = numba.get_num_threads()
    try:
        for threads in sorted({1, saved}):
            numba.set_num_threads(threads)
            for batch in (1, 2, 5):  # runs per transform: 999 steps x 2 dimensions each
                monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", batch * 999 * 2)
                res = evaluate(decaying, x, n_starts=5, measures=("dh",))
                assert res["dh"] == np.mean(dh)
    finally:
        numba.set_num_threads(saved)


def test_evaluate_uses_gmm_from_six_dimensions():
    rng = np.random.default_rng(15)
    model = MapRNN(np.linalg.qr(rng.standard_normal((6, 6)))[0])
    x0 = rng.standard_normal(6)
    x = np.vstack([x0, model.generate(x0, 299)])
    res = evaluate(model, x, measures=("dstsp",))
    assert res["dstsp_method"] == "gmm" and res["dstsp"] == 0.0
    assert "dh" not in res


def test_evaluate_validation(rotation_data):
    model, x = rotation_data
    with pytest.raises(ValueError, match=r"evaluate: measures must be a non-empty subset"):
        evaluate(model, x, measures=("mse",))
    with pytest.raises(ValueError, match=r"transient \(10\) must be smaller than n_steps \(10\)"):
        evaluate(model, x, n_steps=10, transient=10)
    with pytest.raises(ValueError, match=r"evaluate: x_test has 3 columns but the model obse"):
        evaluate(model, np.random.default_rng(0).standard_normal((50, 3)))
    with pytest.raises(ValueError, match=r"dstsp_method must be one of"):
        evaluate(model, x, dstsp_method="kde")
    with pytest.raises(ValueError, match=r"evaluate: n_starts \(1001\) must not exceed"):
        evaluate(model, x, n_starts=1001)
    with pytest.raises(TypeError, match=r"evaluate: measures must be a name or a sequence"):
        evaluate(model, x, measures=None)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"n_bins": 0}, ValueError, r"evaluate: n_bins must be >= 1"),
        ({"box": "bad"}, ValueError, r"evaluate: box must be one of"),
        ({"sigma2": 0.0}, ValueError, r"evaluate: sigma2 must be finite and > 0"),
        ({"smoothing": -1.0}, ValueError, r"evaluate: smoothing must be finite and >= 0"),
        ({"seed": -1}, ValueError, r"evaluate: seed must be >= 0"),
        ({"n_bins": 2.0}, TypeError, r"evaluate: n_bins must be an int"),
    ],
)
def test_evaluate_checks_every_setting_before_the_free_run(rotation_data, kwargs, exc, match):
    _, x = rotation_data
    expanding = MapRNN(rotation(0.3, radius=2.0))  # would be reported as diverged
    with pytest.raises(exc, match=match):
        evaluate(expanding, x, n_steps=100, **kwargs)


def test_measures_report_every_bad_argument_at_once(rotation_data):
    model, x = rotation_data
    with pytest.raises(ValueError) as err:
        state_space_divergence(x, x, n_bins=0, box="bad")
    assert str(err.value) == (
        "state_space_divergence: n_bins must be >= 1; got 0. box must be one of ('minmax', "
        "'sd2'); got 'bad'."
    )
    match = r"^power_spectrum_distance: x_true and x_gen must .* smoothing must be finite"
    with pytest.raises(ValueError, match=match):
        power_spectrum_distance(x, x[:500], smoothing=-1.0)
    with pytest.raises(ValueError) as err:
        lyapunov_spectrum("lorenz63", 0, n_steps=0, dt=-1.0, seed=-1)
    assert str(err.value) == (
        "lyapunov_spectrum: n_exponents must be >= 1; got 0. n_steps must be >= 1; got 0. dt must "
        "be finite and > 0; got -1.0. seed must be >= 0; got -1."
    )
    with pytest.raises(TypeError) as err:  # a kind problem: TypeError, the value problems too
        evaluate(model, x, n_steps=5, transient=9, n_starts=0, measures="mse", seed=1.5)
    assert str(err.value) == (
        "evaluate: transient (9) must be smaller than n_steps (5). n_starts must be >= 1; got 0. "
        "measures must be a non-empty subset of ('dstsp', 'dh', 'pe', 'lyapunov'); got "
        "('mse',). seed must be an int; got float."
    )


def test_evaluate_warns_once_when_the_measured_run_is_too_short_for_dh(rotation_data):
    model, x = rotation_data
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = evaluate(model, x, n_steps=100, n_starts=3, measures=("dh",))
    assert res["status"] == "ok"
    messages = [str(w.message) for w in caught if w.category is SpectrumResolutionWarning]
    assert len(messages) == 1 and messages[0].startswith("evaluate: D_H of 100 points")
    assert caught[0].filename == __file__  # points at the caller


def threshold_model(w1):
    """ShPLRNN(3, 1) that is linear and contracting until x_0 > 1.5 switches on a relu unit
    of output weight ``w1``: the free run from x_test[0] stays tame, some PE starts blow up."""
    model = ShPLRNN(3, 1)
    model["A"][...] = 0.9
    model["W2"][...] = [[1.0, 0.0, 0.0]]
    model["h2"][...] = -1.5
    model["h1"][...] = 0.0
    model["W1"][...] = [[w1], [0.0], [0.0]]
    return model


@pytest.mark.parametrize(("w1", "status"), [(1e200, "non_finite"), (50.0, "diverged")])
def test_evaluate_checks_the_prediction_runs_like_the_free_run(w1, status):
    x, _, _ = standardize(generate("lorenz63", 1500, seed=2))
    model = threshold_model(w1)
    assert evaluate(model, x, measures=("dstsp", "dh"))["status"] == "ok"
    res = evaluate(model, x)
    assert res["status"] == status
    assert res["pe"] is None and res["dstsp"] is None and res["dh"] is None
    assert re.search(
        r"the 20-step prediction \(PE\) from test point \d+ (is|leaves)", res["message"]
    )


def test_evaluate_reports_the_first_failed_prediction_run(rotation_data):
    _, x = rotation_data
    expanding = MapRNN(rotation(0.3, radius=2.0))  # 2**11 > 1000 data ranges (2)
    res = evaluate(expanding, x, n_steps=1, measures=("pe",))
    assert res == {
        "status": "diverged",
        "message": "the 20-step prediction (PE) from test point 0 leaves 1000 data ranges at "
        "step 11",
        "n_steps": 1,
        "transient": 0,
        "n_measured": 1,
        "n_starts": 1,
        "dstsp_method": "bins",
        "pe": None,
        "at_rest": [],  # a run of 1 step is too short to rest
    }
    assert prediction_error(expanding, x) > 1e10  # the measure itself still gives a number


@pytest.mark.parametrize(
    ("length", "kwargs", "match"),
    [
        (2, {}, r"evaluate: x_test has 2 time steps; PE needs at least pe_steps \+ 1 = 21"),
        (2, {"measures": ("dstsp",)}, r"evaluate: x_test has 2 .*D_stsp \(bins\) and D_H need"),
        (2, {"measures": ("dh",)}, r"at least 3 .* Pass a longer test trajectory\.$"),
        (None, {"n_steps": 50, "transient": 49}, r"evaluate: D_H needs at least 2 measured"),
        (10, {"measures": ("pe",)}, r"evaluate: x_test has 10 .* or a smaller pe_steps\.$"),
        (10, {"measures": ("pe",), "pe_steps": 0}, r"evaluate: pe_steps must be >= 1"),
    ],
)
def test_evaluate_rejects_too_short_data_up_front(rotation_data, length, kwargs, match):
    model, x = rotation_data
    with pytest.raises(ValueError, match=match):
        evaluate(model, x[:length], **kwargs)


def test_evaluate_short_data_fits_the_requested_measures(rotation_data):
    model, x = rotation_data
    assert evaluate(model, x[:2], measures=("dstsp",), dstsp_method="gmm")["status"] == "ok"
    assert evaluate(model, x[:3], measures=("dstsp", "dh"))["status"] == "ok"
    assert evaluate(model, x[:6], measures=("pe",), pe_steps=5)["pe"] == pytest.approx(0.0)
    steps = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 2.0], [1.0, 3.0]])
    with pytest.raises(ValueError, match=r"evaluate: x_test\[1:4\] .* is constant in column"):
        evaluate(MapRNN(np.eye(2)), steps, measures=("dh",))


def test_evaluate_refuses_a_constant_test_dimension_only_for_dh_and_binned_dstsp():
    """The model observes every test column, so one that is constant cannot be dropped: PE
    (as prediction_error), 'lyapunov' and GMM D_stsp score it; D_H and binned D_stsp, which
    standardise each dimension, refuse it, saying which measures do take it."""
    x = standardize(generate("lorenz63", 500, seed=1))[0]
    x[:, 2] = 0.0
    model = ShPLRNN(3, 4, seed=2)
    for several in (False, True):
        x_test = [x, x[:300]] if several else x
        res = evaluate(model, x_test, measures=("pe", "lyapunov"))
        assert res["status"] == "ok" and math.isfinite(res["lyapunov"])
        if not several:
            assert res["pe"] == prediction_error(model, x)
        res = evaluate(model, x_test, measures="dstsp", dstsp_method="gmm")
        assert res["status"] == "ok" and res["dstsp"] >= 0
        name = "x_test[0]" if several else "x_test"
        for kwargs in ({}, {"measures": "dh"}, {"measures": ("pe", "dstsp")}):
            with pytest.raises(
                ValueError,
                match=rf"^evaluate: {re.escape(name)} is constant in column\(s\) \[2\] \(sd / "
                r"max\|x\| = 0, at most 1e-12\); D_H and binned D_stsp need non-constant "
                r"dimensions \(they standardise each one\); PE, 'lyapunov' and D_stsp with "
                r"dstsp_method='gmm' accept constant ones\. Request only those, e\.g\. "
                r"measures=\('pe',\)\.$",
            ):
                evaluate(model, x_test, **kwargs)


def test_a_standardize_result_passed_as_a_trajectory_names_the_slip(rotation_data):
    model, x = rotation_data
    fix = (
        r"must be an array; got a tuple of a \(1000, 2\) array and two \(2,\) arrays, as "
        r"models\.standardize returns; pass its first element \(x_std, mean, sd = "
        r"standardize\(x\)\)\.$"
    )
    with pytest.raises(TypeError, match=rf"^evaluate: x_test {fix}"):
        evaluate(model, standardize(x))
    with pytest.raises(TypeError, match=rf"^state_space_divergence: x_true {fix}"):
        state_space_divergence(standardize(x), x)
    with pytest.raises(TypeError, match=rf"^state_space_divergence: x_gen {fix}"):
        state_space_divergence(x, standardize(x))


def test_evaluate_reports_a_lyapunov_run_that_overflows():
    # Slow growth: the 299-step free run and the PE runs stay in range, the 11,000-step
    # Lyapunov run overflows float32 (1.01**8946 > 3.4e38).
    xs = standardize(generate("lorenz63", 300, seed=2))[0].astype(np.float32)
    m = ShPLRNN(3, 2, dtype="float32")
    m["A"][...] = 1.01
    for name in ("W1", "W2", "h1", "h2"):
        m[name][...] = 0
    r = evaluate(m, xs, measures=("dstsp", "dh", "pe", "lyapunov"))
    assert r["status"] == "non_finite" and "Lyapunov run" in r["message"]
    assert all(r[k] is None for k in ("dstsp", "dh", "pe", "lyapunov"))


# ---- several test trajectories --------------------------------------------------------------


def test_evaluate_scores_several_test_trajectories_together(rotation_data):
    """D_stsp: the i-th runs from all trajectories against all test points (mean over i);
    D_H: the mean of each trajectory's; PE: over all prediction points."""
    _, x = rotation_data
    decaying = MapRNN(rotation(2 * math.pi / 37.3, radius=0.999))
    a, b = x[:400], x[400:]
    res = evaluate(decaying, [a, b], n_starts=2)
    each = [evaluate(decaying, t, n_starts=2) for t in (a, b)]
    assert res["status"] == "ok" and res["n_trajectories"] == 2
    assert res["per_trajectory"] == each
    assert evaluate(decaying, [a.tolist(), b.tolist()], n_starts=2) == res  # nested lists
    assert evaluate(decaying, (a, b.tolist()), n_starts=2) == res
    assert (res["n_steps"], res["n_measured"]) == ([399, 599], [399, 599])
    true = np.concatenate([a[1:], b[1:]])
    runs = [  # starts i * T_k // 2
        np.concatenate([decaying.generate(a[i * 200], 399), decaying.generate(b[i * 300], 599)])
        for i in (0, 1)
    ]
    dstsp = np.mean([state_space_divergence(true, run) for run in runs])
    assert res["dstsp"] == pytest.approx(dstsp, rel=1e-12)
    assert res["dh"] == pytest.approx((each[0]["dh"] + each[1]["dh"]) / 2, rel=1e-12)
    pe = (380 * each[0]["pe"] + 580 * each[1]["pe"]) / 960  # 380 and 580 prediction starts
    assert res["pe"] == pytest.approx(pe, rel=1e-12)
    given = evaluate(decaying, (a, b), n_steps=300, transient=10, measures=("dh",))
    assert given["n_steps"] == [300, 300] and given["n_measured"] == [290, 290]
    one = evaluate(decaying, [x], measures=("dstsp", "dh"))
    alone = evaluate(decaying, x, measures=("dstsp", "dh"))
    assert (one["dstsp"], one["dh"]) == (alone["dstsp"], alone["dh"])
    assert one["per_trajectory"] == [alone] and one["n_steps"] == [999]


def test_evaluate_names_the_first_test_trajectory_that_cannot_be_measured(rotation_data):
    model, x = rotation_data

    class NaNFarOut(MapRNN):  # exact near the unit circle, NaN from starts far out
        def generate(self, x0, n_steps):
            runs = super().generate(x0, n_steps)
            runs[np.linalg.norm(x0, axis=-1) > 5.0] = np.nan
            return runs

    fake = NaNFarOut(model["A"])
    res = evaluate(fake, [x, 20.0 * x, 30.0 * x], measures=("dstsp", "dh"))
    assert res["status"] == "non_finite" and res["dstsp"] is None and res["dh"] is None
    assert res["message"] == (
        "x_test[1]: the free run is NaN/inf from step 1 (2 of the 3 test trajectories cannot "
        "be measured)"
    )
    first = res["per_trajectory"][0]
    assert first["status"] == "ok" and first["dstsp"] == 0.0
    assert [r["status"] for r in res["per_trajectory"][1:]] == ["non_finite"] * 2
    assert res["at_rest"] is None and first["at_rest"] == []


def test_evaluate_lyapunov_of_several_test_trajectories_runs_once_from_the_first(rotation_data):
    model, x = rotation_data
    res = evaluate(model, [x[500:], x], measures=("dh", "lyapunov"))
    assert res["lyapunov"] == max_lyapunov(model, x0=x[500])
    assert list(res) == [
        *("status", "message", "n_steps", "transient", "n_measured", "n_starts"),
        *("dstsp_method", "n_trajectories", "dh", "lyapunov", "per_trajectory", "at_rest"),
    ]
    assert all("lyapunov" not in r for r in res["per_trajectory"])


@pytest.mark.parametrize(
    ("make", "kwargs", "exc", "match"),
    [
        (lambda x: np.stack([x, x]), {}, ValueError, r"^evaluate: x_test must be one trajector"
         r"y of shape \(T, N\) or a list of them; got an array of shape \(2, 1000, 2\)\. Pass "
         r"list\(x_test\) for 2 trajectories of 1000 steps each\.$"),
        (lambda x: [], {}, ValueError, r"^evaluate: x_test must be one trajectory of shape "
         r"\(T, N\) or a list of them; got an empty list\.$"),
        (lambda x: (), {}, ValueError, r"got an empty tuple\.$"),
        (lambda x: [x[:, 0], x[:, 1]], {}, ValueError, r"^evaluate: x_test is a list of 2 "
         r"one-dimensional arrays \(of 1000 values\), which would be read as the rows of one "
         r"trajectory; several trajectories are 2-D, \(T_k, N\) each: pass "
         r"np\.column_stack\(x_test\) for the 2 variables of one trajectory\.$"),
        (lambda x: [x, x[:, :1]], {}, ValueError, r"^evaluate: x_test\[1\] has 1 columns but"),
        (lambda x: [x, np.where(x == x[7], np.nan, x)], {}, ValueError,
         r"^evaluate: x_test\[1\] contains 2 NaN/inf"),
        (lambda x: [x, x[:3].astype(complex)], {}, TypeError, r"^evaluate: x_test\[1\] must be"),
        (lambda x: [x, x[:10]], {}, ValueError, r"^evaluate: x_test\[1\] has 10 time steps; PE "
         r"needs at least pe_steps \+ 1 = 21 \(it predicts x_test\[1\]\[t \+ 20\] from"),
        (lambda x: [x, x[:50]], {"n_starts": 60}, ValueError, r"^evaluate: n_starts \(60\) must "
         r"not exceed the number of test points \(50 in x_test\[1\]\)\.$"),
        (lambda x: [x, x[:50]], {"transient": 60}, ValueError, r"^evaluate: transient \(60\) "
         r"must be smaller than n_steps \(49, for x_test\[1\]\)\.$"),
        (lambda x: [x, x[:50]], {"n_steps": 40, "transient": 40}, ValueError,
         r"^evaluate: transient \(40\) must be smaller than n_steps \(40\)\.$"),
    ],
)  # fmt: skip
def test_evaluate_refuses_bad_test_trajectories_by_index(rotation_data, make, kwargs, exc, match):
    model, x = rotation_data
    with pytest.raises(exc, match=match):
        evaluate(model, make(x), **kwargs)


def test_evaluate_warns_once_for_several_test_trajectories_too_short_to_score(rotation_data):
    """D_stsp counts the points of all runs (116 occupied bins need 1160); D_H warns for the
    shortest comparison (its smoothing needs 398 points)."""
    model, x = rotation_data
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = evaluate(model, [x[:501], x[:301], x[:201]], measures=("dstsp", "dh"))
    assert res["status"] == "ok"
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2, messages
    assert messages[0].startswith("evaluate: D_H of 200 points")
    assert "pass a longer x_test[2] or lower smoothing" in messages[0]
    assert messages[1].startswith(
        "evaluate: binned D_stsp of 1000 generated points (the runs from the 3 test "
        "trajectories together), fewer than 10 per bin the reference occupies (116 bins)"
    )
    assert messages[1].endswith(
        "Score at least 1160 points: n_steps - transient are scored from each test trajectory; "
        "raise n_steps, lower transient or lower n_bins."
    )
    assert all(w.filename == __file__ for w in caught)  # they point at the caller
    with warnings.catch_warnings():
        warnings.simplefilter("error", StateSpaceResolutionWarning)
        evaluate(model, [x[:601], x[:601]], measures=("dstsp",))  # 1200 points together


def test_evaluate_reports_runs_outside_the_box_of_all_test_trajectories_together():
    """Each trajectory's box reaches 0.1 of its own sd beyond its extremes: a run can lie
    inside its trajectory's box and outside the box of all test points together."""
    wide, narrow = np.tile([0.0, 10.0], 50), np.full(100, 5.0)
    narrow[1], narrow[3] = 0.0, 10.0
    a, b = np.column_stack([wide, narrow]), np.column_stack([narrow, wide])
    b[0] = 5.0, 0.0  # the fake model tells the trajectories apart by their first point

    class JustOutside(MapRNN):  # a constant run at -0.45 in the wide dimension
        def generate(self, x0, n_steps):
            point = [-0.45, 5.0] if x0[0, 0] == 0.0 else [5.0, -0.45]
            return np.broadcast_to(point, (len(x0), n_steps, 2)).copy()

    res = evaluate(JustOutside(np.eye(2)), [a, b], measures=("dstsp",))
    assert [r["status"] for r in res["per_trajectory"]] == ["ok", "ok"]
    assert res["status"] == "out_of_box" and res["dstsp"] is None
    assert res["message"] == (
        "no generated point lies inside the test data's D_stsp box (of all test trajectories "
        "together)"
    )


def _contracting_to(point):
    """An ALRNN without ReLUs whose free runs settle at ``point`` (2-d) from anywhere."""
    from models import ALRNN

    model = ALRNN(2, 0)
    model["A"][...] = 0.0
    model["W"][...] = 0.5 * np.eye(2)
    model["h"][...] = 0.5 * np.asarray(point)
    return model


def test_evaluate_pools_runs_that_leave_only_their_own_trajectorys_box():
    """D_stsp of several test trajectories pools all runs against all test points: runs from
    one trajectory that settle in the other's region were refused (out_of_box, every measure
    None) although the pooled box holds them. Their trajectory's own entry says out_of_box;
    D_H and PE are measured."""
    rng = np.random.default_rng(16)
    x1 = np.array([3.0, 0.0]) + 0.3 * rng.standard_normal((400, 2))
    x2 = np.array([-3.0, 0.0]) + 0.3 * rng.standard_normal((400, 2))
    model = _contracting_to([-3.0, 0.0])
    res = evaluate(model, [x1, x2], transient=10, smoothing=2.0)
    runs = np.concatenate([model.generate(x[0], 399)[10:] for x in (x1, x2)])
    expected = state_space_divergence(np.concatenate([x1[1:], x2[1:]]), runs)
    assert res["status"] == "ok" and res["dstsp"] == pytest.approx(expected, rel=1e-12)
    first, second = res["per_trajectory"]
    assert first["status"] == "out_of_box" and first["dstsp"] is None
    assert first["dh"] is not None and first["pe"] is not None
    assert second["status"] == "ok"
    assert res["pe"] == pytest.approx(
        np.average([prediction_error(model, x, 20) for x in (x1, x2)]), rel=1e-12
    )
    # alone, x1's runs have no point in its box
    assert evaluate(model, x1, transient=10, measures=("dstsp",))["status"] == "out_of_box"


def test_evaluate_refuses_runs_outside_the_pooled_box_too():
    """Runs out of their own trajectory's box and of the box of all test points together had
    no point to score: the pooled D_stsp dropped them and scored the other runs alone."""
    rng = np.random.default_rng(0)
    a = np.array([3.0, 0.0]) + 0.3 * rng.standard_normal((100, 2))
    b = np.array([-3.0, 0.0]) + 0.3 * rng.standard_normal((100, 2))

    class FarFromA(MapRNN):  # runs from a's points sit far above both boxes
        def generate(self, x0, n_steps):
            far, replay = np.full((n_steps, 2), [0.0, 50.0]), np.resize(b[1:], (n_steps, 2))
            return np.array([far if point[0] > 0 else replay for point in x0])

    res = evaluate(FarFromA(np.eye(2)), [a, b], measures=("dstsp",))
    assert res["status"] == "out_of_box" and res["dstsp"] is None
    assert res["message"].startswith("x_test[0]: no generated point lies inside the test data's")
    assert res["message"].endswith("(nor that of all test trajectories together)")


@pytest.mark.parametrize("measures", [("pe",), ("pe", "lyapunov")])
def test_pe_and_lyapunov_are_not_decided_by_the_free_run_they_do_not_use(measures):
    """A free run that slowly leaves the data (a rotation growing 2 % a step) made PE and the
    Lyapunov exponent None (diverged), although neither uses it; D_stsp and D_H still
    fail on it."""
    model = _contracting_to([0.0, 0.0])
    angle = 0.1
    rotation = [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
    model["W"][...] = 1.02 * np.array(rotation)
    x = np.random.default_rng(17).standard_normal((2000, 2))
    res = evaluate(model, x, measures=measures)
    assert res["status"] == "ok" and res["at_rest"] is None
    assert res["pe"] == pytest.approx(prediction_error(model, x, 20), rel=1e-12)
    if "lyapunov" in measures:
        assert res["lyapunov"] == pytest.approx(math.log(1.02), abs=1e-6)
    assert evaluate(model, x, measures=("pe", "dh"))["status"] == "diverged"


def test_values_beyond_the_computing_dtype_are_refused_not_scored():
    """A longdouble beyond float64 became inf once converted: dropped from D_stsp, D_H 1 for
    its column, PE NaN. Data beyond a float32 model's range started its runs from inf, and
    evaluate blamed the model (non_finite). Both are refused naming the value."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((500, 3)), rng.standard_normal((500, 3))
    wide = x.astype(np.longdouble)
    wide[3, 0] = np.longdouble("1e400")
    beyond = r"\[3, 0\] = 1e\+400 is beyond the range of float64 \(which parscan computes in\)"
    with pytest.raises(ValueError, match=rf"^power_spectrum_distance: x_true{beyond}"):
        power_spectrum_distance(wide, y)
    with pytest.raises(ValueError, match=rf"^state_space_divergence: x_gen{beyond}"):
        state_space_divergence(x, wide)
    model = ShPLRNN(3, 5, dtype="float32")
    big = y.copy()
    big[7, 1] = 1e39
    for call, name in ((prediction_error, "x"), (evaluate, "x_test")):
        with pytest.raises(
            ValueError,
            match=rf"^{call.__name__}: {name}\[7, 1\] = 1e\+39 is beyond the range of the model's "
            r"float32; pass data in the model's units .* or use model.astype\('float64'\)\.$",
        ):
            call(model, big)


def test_check_dstsp_resolution_checks_its_reference():
    """A list is read as an array (it raised AttributeError); a constant column, where the
    box has no width, is named (the message blamed the sd2 box and advised box='minmax',
    already in use)."""
    x = np.random.default_rng(1).standard_normal((2000, 3))
    metrics.check_dstsp_resolution(1000, x.tolist(), where="mine", fix="do X")
    x[:, 2] = 1.0
    with pytest.raises(
        ValueError, match=r"^mine: x_true is constant in column\(s\) \[2\], where the box='minmax'"
    ):
        metrics.check_dstsp_resolution(1000, x, where="mine", fix="do X")


def test_options_given_as_arrays_and_extreme_numbers_are_argument_errors():
    """An array as a string option (NumPy's "truth value is ambiguous" before); a sigma2
    whose 0.5 / sigma2 overflows (NaN before: D_stsp is then inf, 0 for equal data); runs
    of N = 0; a ragged list to standardize; free runs too large, named by evaluate."""
    rng = np.random.default_rng(0)
    xs, ys = rng.standard_normal((300, 3)), rng.standard_normal((300, 3))
    model = ShPLRNN(3, 4)
    for call, name in (
        (lambda: state_space_divergence(xs, ys, box=np.array(["minmax", "sd2"])), "box"),
        (lambda: evaluate(model, xs, dstsp_method=np.array(["bins", "gmm"])), "dstsp_method"),
    ):
        with pytest.raises(ValueError, match=rf": {name} must be one of .*; got array\("):
            call()
    assert state_space_divergence(xs, ys, method="gmm", sigma2=1e-320) == math.inf
    assert state_space_divergence(xs, xs, method="gmm", sigma2=1e-320) == 0.0
    with pytest.raises(ValueError, match=r"^standardize: x is not an array \(nested sequences"):
        standardize([[1.0, 2.0], [3.0, 4.0], [5.0]])
    with pytest.raises(
        ValueError,
        match=r"^evaluate: ShPLRNN\.generate: a free run of 9223372036854775808 steps .* Lower "
        r"n_steps or n_starts\.$",
    ):
        evaluate(model, xs, n_steps=2**63, measures=("dh",))


def test_evaluate_renames_only_runs_beyond_memory():
    """A ValueError of a model's own generate is passed on as it is; only a run too large
    for the machine is told to lower n_steps or n_starts."""

    class Boxed(ShPLRNN):
        def _free_run(self, z0, n_steps, where):
            raise ValueError(f"{where}: runs only from states inside [-1, 1]; clip x0.")

    xs = np.random.default_rng(0).standard_normal((300, 3))
    with pytest.raises(ValueError, match=r"^Boxed\.generate: runs only .*; clip x0\.$"):
        evaluate(Boxed(3, 4), xs, measures=("dh",))
