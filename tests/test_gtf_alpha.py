"""``parscan.gtf_alpha``: the GTF alpha estimators and their exact spectral norms."""

import numpy as np
import pytest

from models import ALRNN, PLRNN, ClippedShPLRNN, ShPLRNN
from parscan import gtf_alpha
from parscan._deer_kernels import spectral_norms
from parscan.gtf import DEFAULT_MARGIN, GTFGuaranteeWarning, jacobian_norms


def numpy_norms(j):
    return np.linalg.norm(j.astype(np.float64), ord=2, axis=(-2, -1))


def test_spectral_norms_are_exact():
    rng = np.random.default_rng(0)
    mats = [rng.standard_normal((50, M, M)) for M in (1, 2, 3, 5, 8, 16, 20, 33)]
    # graded scales and a near-tie of the two largest singular values
    u, _ = np.linalg.qr(rng.standard_normal((20, 20)))
    w, _ = np.linalg.qr(rng.standard_normal((20, 20)))
    sv = np.geomspace(1.0, 1e-12, 20)
    sv[1] = 1.0 - 1e-9
    mats.append(np.stack([u @ np.diag(sv) @ w.T, np.diag(sv[::-1]) @ u]))
    # the special cases again above the Jacobi size (tridiagonalisation + bisection)
    q8, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    mats.append(
        np.stack(
            [
                np.zeros((8, 8)),
                3.0 * np.eye(8),
                -2.0 * q8,
                np.outer(rng.standard_normal(8), rng.standard_normal(8)),
                np.diag([1.0, -5.0, 5.0, 0.5, 0.0, 2.0, -1.0, 3.0]),
                1e200 * rng.standard_normal((8, 8)),
            ]
        )
    )
    q, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    special = np.stack(
        [
            np.zeros((4, 4)),
            3.0 * np.eye(4),
            -2.0 * q,  # all singular values equal
            np.outer(rng.standard_normal(4), rng.standard_normal(4)),  # rank one
            np.diag([1.0, -5.0, 5.0, 0.5]),  # tie in |eigenvalues|
            1e200 * rng.standard_normal((4, 4)),  # J^T J would overflow unscaled
            1e-200 * rng.standard_normal((4, 4)),
        ]
    )
    for j in [*mats, special]:
        out = np.empty(j.shape[0])
        spectral_norms(np.ascontiguousarray(j), 3, out)
        np.testing.assert_allclose(out, numpy_norms(j), rtol=1e-13, atol=0)
    bad = np.ones((3, 2, 2))
    bad[1, 0, 1] = np.nan
    bad[2, 1, 1] = np.inf
    out = np.empty(3)
    spectral_norms(bad, 2, out)
    assert out[0] == pytest.approx(2.0) and np.isnan(out[1:]).all()


@pytest.fixture(scope="module")
def model():
    """A full-forcing model (M = N = 3) whose Jacobian norms exceed 1 at some points."""
    m = ShPLRNN(3, 8, seed=2)
    m["W1"][...] *= 4.0
    m["h2"][...] = np.linspace(-0.5, 0.5, 8)
    return m


@pytest.fixture(scope="module")
def forcing():
    return np.random.default_rng(1).standard_normal((2, 40, 3))


def test_sup_geomean_and_param_bound_follow_their_formulas(model, forcing):
    norms = numpy_norms(model.jacobian(forcing))
    assert norms.max() > 1.0  # the test is not trivial
    sup = norms.max()
    geo = np.exp(np.mean(np.log(norms)))
    assert gtf_alpha(model, forcing) == pytest.approx(1 - 1 / sup + DEFAULT_MARGIN, rel=1e-12)
    got = gtf_alpha(model, forcing, method="sup", margin=0.0)
    assert got == pytest.approx(1 - 1 / sup, rel=1e-12)
    got = gtf_alpha(model, forcing, method="geomean", margin=0.0)
    assert got == pytest.approx(max(0.0, 1 - 1 / geo), rel=1e-12, abs=1e-15)
    bound = model.norm_bound()
    got = gtf_alpha(model, forcing, method="param_bound", margin=0.01)
    assert got == pytest.approx(1 - 1 / bound + 0.01, rel=1e-12)
    assert gtf_alpha(model, forcing, method="param_bound") >= gtf_alpha(model, forcing)


def test_per_sequence_alpha(model, forcing):
    per = gtf_alpha(model, forcing, per_sequence=True)
    assert per.shape == (2,)
    for i in range(2):
        assert per[i] == pytest.approx(gtf_alpha(model, forcing[i]), rel=1e-14)
    assert gtf_alpha(model, forcing) == pytest.approx(per.max(), rel=1e-14)
    assert gtf_alpha(model, forcing[None], per_sequence=True).shape == (1, 2)
    one = gtf_alpha(model, forcing[0], per_sequence=True)
    assert isinstance(one, np.ndarray) and one.shape == () and one.dtype == np.float64
    assert one == per[0]


@pytest.mark.parametrize("method", ["sup", "geomean"])
def test_empty_batch_gives_the_margin(model, method):
    """No points to bound: the bound is taken as 0, alpha is the margin."""
    empty = np.zeros((0, 10, 3))
    assert gtf_alpha(model, empty, method=method) == DEFAULT_MARGIN
    assert gtf_alpha(model, empty, method=method, margin=0.0) == 0.0
    per = gtf_alpha(model, empty, method=method, per_sequence=True)
    assert isinstance(per, np.ndarray) and per.shape == (0,)
    assert gtf_alpha(model, np.zeros((2, 0, 10, 3)), per_sequence=True).shape == (2, 0)
    assert jacobian_norms(model, np.zeros((0, 3))).shape == (0,)


def test_contracting_model_gets_the_margin_and_alpha_is_clipped(forcing):
    small = ShPLRNN(3, 8, seed=0)
    small.params[...] *= 0.01
    assert gtf_alpha(small, forcing, margin=0.05) == pytest.approx(0.05)
    assert gtf_alpha(small, forcing, margin=0.0) == 0.0
    big = ShPLRNN(3, 8, seed=0)
    big["W1"][...] *= 1e3
    assert gtf_alpha(big, forcing, margin=0.5) == 1.0


def test_partial_forcing_uses_states_and_warns():
    m = ShPLRNN(4, 8, n_obs=3, seed=3)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((30, 3))
    states = rng.standard_normal((30, 4))
    points = np.concatenate([x, states[:, 3:]], axis=-1)
    sup = max(numpy_norms(m.jacobian(points)).max(), numpy_norms(m.jacobian(states)).max())
    with pytest.warns(
        GTFGuaranteeWarning, match=r"^gtf_alpha: partial forcing \(n_forced=3 < M=4\)"
    ) as record:
        got = gtf_alpha(m, x, states=states, margin=0.0)
    assert [w.filename for w in record] == [__file__]  # the warning points at the call
    assert got == pytest.approx(max(0.0, 1 - 1 / sup), rel=1e-12, abs=1e-15)
    with pytest.warns(GTFGuaranteeWarning, match="n_forced=1"):
        gtf_alpha(ShPLRNN(3, 4), x, n_forced=1)


def test_partial_forcing_takes_the_states_own_points_too():
    """The bound is taken over the data-based points ``[x; states[N:]]`` and over ``states``
    itself: here only the states' observed coordinate switches on a steep hidden unit."""
    m = ShPLRNN(4, 8, n_obs=3, seed=3)
    m["W2"][0] = [1.0, 0.0, 0.0, 0.0]  # unit 0 reads the first (observed) latent ...
    m["h2"][0] = -5.0  # ... and is on only beyond 5
    m["W1"][:, 0] = 5.0
    rng = np.random.default_rng(2)
    x = rng.uniform(-3, 3, (30, 3))
    states = rng.standard_normal((30, 4))
    states[:, 0] = 10.0
    points = np.concatenate([x, states[:, 3:]], axis=-1)
    on_states = numpy_norms(m.jacobian(states)).max()
    assert on_states > numpy_norms(m.jacobian(points)).max() + 1
    with pytest.warns(GTFGuaranteeWarning):
        got = gtf_alpha(m, x, states=states, margin=0.0)
    assert got == pytest.approx(1 - 1 / on_states, rel=1e-12)


def test_float32_model(model, forcing):
    m32 = model.astype("float32")
    got = gtf_alpha(m32, forcing.astype(np.float32))
    assert got == pytest.approx(gtf_alpha(model, forcing), rel=1e-5)
    norms = jacobian_norms(m32, forcing.reshape(-1, 3).astype(np.float32))
    assert norms.dtype == np.float64 and norms.shape == (80,)


def test_errors(model, forcing):
    x = forcing
    cases = [
        (ValueError, r"`method` must be one of", dict(method="max")),
        (ValueError, r"`margin` must be in \[0, 1\)", dict(margin=1.0)),
        (TypeError, r"`margin` must be a float", dict(margin="0.1")),
        (TypeError, r"`forcing` must have the model dtype", dict(forcing=x.astype(np.float32))),
        (ValueError, r"`forcing` must have shape \(\.\.\., T, N\)", dict(forcing=x[0, 0])),
        (ValueError, r"1 <= N <= M=3", dict(forcing=np.zeros((5, 4)))),
        (ValueError, r"`states` must have shape", dict(states=np.zeros((2, 40, 2)))),
        (ValueError, r"`n_forced` must be in \[0, N=3\]", dict(n_forced=5)),
        (ValueError, r"needs T >= 1", dict(forcing=np.zeros((0, 3)))),
    ]
    for exc, match, kwargs in cases:
        kwargs = {"forcing": x, **kwargs}
        with pytest.raises(exc, match="^gtf_alpha: .*" + match):
            gtf_alpha(model, **kwargs)
    bad = x.copy()
    bad[1, 3, 2] = np.nan
    with pytest.raises(ValueError, match=r"`forcing` contains NaN/inf \(1 values\)"):
        gtf_alpha(model, bad)
    with pytest.raises(TypeError, match=r"^gtf_alpha: `model` must follow"):
        gtf_alpha(object(), x)

    class NoDtype:
        M = 3

        def step_and_jacobian(self, z, diag=False, out=None):
            raise AssertionError("not reached")

    with pytest.raises(
        TypeError, match=r"^gtf_alpha: `model` must follow .*; NoDtype: dtype must be a np.dtype "
    ):
        gtf_alpha(NoDtype(), x)
    NoDtype.dtype = np.float64  # the scalar type, not a dtype: named, with the fix
    with pytest.raises(
        TypeError,
        match=r"NoDtype: dtype must be a np.dtype instance \(np.dtype\('float64'\)\); got <class",
    ):
        gtf_alpha(NoDtype(), x)
    NoDtype.dtype = np.dtype(np.float64)
    with pytest.raises(TypeError, match=r"^gtf_alpha: method='param_bound' needs model.norm_b"):
        gtf_alpha(NoDtype(), x, method="param_bound")
    broken = model.copy()
    broken.params[0] = np.nan
    for method in ("param_bound", "sup"):
        with pytest.raises(ValueError, match=r"^gtf_alpha: .*NaN.*parameters"):
            gtf_alpha(broken, x, method=method)


def test_infinite_norm_bound_is_refused(model, forcing):
    """An inf ``model.norm_bound()`` (an inf parameter, or finite ones whose bound overflows)
    is refused as a NaN one is, not turned into alpha = 1."""
    infinite = model.copy()
    infinite.params[0] = np.inf
    huge = model.copy()
    huge["W1"][...] *= 1e200
    huge["W2"][...] *= 1e200
    for m in (infinite, huge):
        with (
            np.errstate(over="ignore"),  # the huge model's norm_bound() overflows
            pytest.raises(ValueError, match=r"^gtf_alpha: model.norm_bound\(\) is inf: .*NaN/inf"),
        ):
            gtf_alpha(m, forcing, method="param_bound")


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize(
    ("family", "block"),
    [(ShPLRNN, "W1"), (ShPLRNN, "W2"), (ClippedShPLRNN, "W2"), (ALRNN, "W"), (PLRNN, "W")],
)
def test_non_finite_weights_give_a_non_finite_norm_bound(family, block, value, forcing):
    """NaN/inf in a weight matrix: ``norm_bound()`` is that value (LAPACK's SVD raised
    LinAlgError on it) and ``gtf_alpha`` refuses it with its own message."""
    model = family(3) if family is PLRNN else family(3, 2)
    model[block][0, 1] = value
    assert np.isnan(model.norm_bound()) if np.isnan(value) else model.norm_bound() == np.inf
    with pytest.raises(ValueError, match=r"^gtf_alpha: model.norm_bound\(\) is (nan|inf): "):
        gtf_alpha(model, forcing, method="param_bound")


def test_numpy_scalar_margin(model, forcing):
    """A NumPy integer or float margin is the Python number; a bool (NumPy's too) is not."""
    for margin, same in ((np.int64(0), 0), (np.float32(0.25), 0.25), (np.float64(0.1), 0.1)):
        assert gtf_alpha(model, forcing, margin=margin) == gtf_alpha(model, forcing, margin=same)
    with pytest.raises(ValueError, match=r"^gtf_alpha: `margin` must be in \[0, 1\); got 1\.$"):
        gtf_alpha(model, forcing, margin=np.uint8(1))
    for margin in (False, np.bool_(False)):
        with pytest.raises(TypeError, match=r"^gtf_alpha: `margin` must be a float; got bool"):
            gtf_alpha(model, forcing, margin=margin)


def test_jacobian_norms_holds_at_most_64_mib_of_jacobians():
    """The chunk is bounded in bytes too: 6000 positions of M = 48 in float32 held 166 MB of
    Jacobians (and their float64 copy) at once; autodiff.memory counts the same bound."""
    import tracemalloc

    from autodiff.memory import training_step_bytes
    from parscan._buffers import JACOBIAN_BYTES, jacobian_chunk, jacobian_position_bytes

    m = ShPLRNN(48, 8, 3, dtype="float32", seed=0)
    points = np.random.default_rng(0).normal(size=(6000, 48)).astype(np.float32)
    jacobian_norms(m, points[:10])  # compiled outside the trace
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        jacobian_norms(m, points)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert JACOBIAN_BYTES / 2 < peak < 1.1 * JACOBIAN_BYTES  # and a few temporaries
    chunk = jacobian_chunk(6000, 48, 4)
    assert chunk * jacobian_position_bytes(48, 4) <= JACOBIAN_BYTES < 6000 * 48 * 48 * 12
    auto, constant = (training_step_bytes("rnn", 6, 1000, 3, 48, 0, 4, False, a) for a in (1, 0))
    assert auto - constant == chunk * jacobian_position_bytes(48, 4) + 6000 * 8


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_jacobian_norms_over_several_chunks(model, forcing, monkeypatch, dtype):
    """Points in chunks of 7 (the last one partial: 80 = 11 * 7 + 3) give every norm, at its
    own position, as one chunk does; so do the alpha estimates built on them."""
    import parscan._buffers

    m = model.astype(dtype)
    x = forcing.astype(dtype)
    points = x.reshape(-1, 3)
    want = numpy_norms(m.jacobian(points))
    one_chunk = jacobian_norms(m, points)
    alphas = [gtf_alpha(m, x, method=method) for method in ("sup", "geomean")]
    per_sequence = gtf_alpha(m, x, per_sequence=True)
    monkeypatch.setattr(parscan._buffers, "JACOBIAN_POSITIONS", 7)
    chunked = jacobian_norms(m, points[::-1].copy())[::-1]  # reversed: no stale buffer fits
    np.testing.assert_array_equal(chunked, one_chunk)
    np.testing.assert_allclose(chunked, want, rtol=1e-13 if dtype == "float64" else 1e-6)
    assert [gtf_alpha(m, x, method=method) for method in ("sup", "geomean")] == alphas
    np.testing.assert_array_equal(gtf_alpha(m, x, per_sequence=True), per_sequence)
