"""Optimisers against the published update formulas (written out independently here), state
round trips, the learning-rate schedule, gradient clipping and the L2 penalty."""

import inspect
import math

import numpy as np
import pytest

from autodiff.optim import (
    Adam,
    ExponentialDecay,
    NonFiniteStepError,
    RAdam,
    clip_grad_norm,
    make_optimizer,
)
from autodiff.regularization import l2_penalty
from models.base import Model
from models.ssm import LinearSSM, SelectiveSSM

N_PARAMS = 7


def _grads(n_steps, seed=0):
    """A known gradient sequence with a sign flip and a zero entry."""
    g = np.random.default_rng(seed).normal(size=(n_steps, N_PARAMS))
    g[:, 3] = 0.0
    g[n_steps // 2 :, 1] *= -5.0
    return g


def _adam_reference(p, grads, lr, b1, b2, eps):
    """Kingma & Ba (ICLR 2015), Algorithm 1."""
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


def _radam_reference(p, grads, lr, b1, b2, eps):
    """Liu et al. (ICLR 2020), Algorithm 2, in the form of torch.optim.RAdam."""
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    rho_inf = 2 / (1 - b2) - 1
    n_rectified = 0
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        m_hat = m / (1 - b1**t)
        rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
        if rho > 5:
            n_rectified += 1
            r = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            p = p - lr * m_hat * r * math.sqrt(1 - b2**t) / (np.sqrt(v) + eps)
        else:
            p = p - lr * m_hat
    return p, n_rectified


@pytest.mark.parametrize(
    ("b1", "b2", "eps"), [(0.9, 0.999, 1e-8), (0.5, 0.9, 1e-3), (0.0, 0.0, 1e-8)]
)
def test_adam_matches_kingma_ba(b1, b2, eps):
    grads = _grads(25)
    p0 = np.linspace(-1, 1, N_PARAMS)
    p = p0.copy()
    opt = Adam(N_PARAMS, beta1=b1, beta2=b2, eps=eps)
    for g in grads:
        opt.step(p, g, 0.01)
    assert opt.t == 25
    np.testing.assert_allclose(p, _adam_reference(p0, grads, 0.01, b1, b2, eps), rtol=1e-13)


def test_adam_first_step_is_signed_lr():
    """After one step m_hat / sqrt(v_hat) = g / |g|: every entry moves by lr (eps aside)."""
    p = np.zeros(4)
    Adam(4, eps=1e-12).step(p, np.array([3.0, -0.5, 1e-3, -7.0]), 0.1)
    np.testing.assert_allclose(p, [-0.1, 0.1, -0.1, 0.1], rtol=1e-8)


@pytest.mark.parametrize(("b1", "b2"), [(0.9, 0.999), (0.9, 0.9)])
def test_radam_matches_liu_et_al(b1, b2):
    grads = _grads(40)
    p0 = np.linspace(-1, 1, N_PARAMS)
    p = p0.copy()
    opt = RAdam(N_PARAMS, beta1=b1, beta2=b2)
    for g in grads:
        opt.step(p, g, 0.01)
    ref, n_rectified = _radam_reference(p0, grads, 0.01, b1, b2, 1e-8)
    assert 0 < n_rectified < len(grads)  # both branches were exercised
    np.testing.assert_allclose(p, ref, rtol=1e-13)


def test_radam_warmup_is_sgd_with_momentum():
    """rho_1 = 1 <= 5: the first RAdam step is params -= lr * g (m_hat = g)."""
    p = np.zeros(3)
    g = np.array([1.0, -2.0, 0.5])
    RAdam(3).step(p, g, 0.1)
    np.testing.assert_allclose(p, -0.1 * g, rtol=1e-15)


@pytest.mark.parametrize("cls", [Adam, RAdam])
def test_float32_state_and_update(cls):
    grads = _grads(10).astype(np.float32)
    p = np.linspace(-1, 1, N_PARAMS, dtype=np.float32)
    p0 = p.astype(np.float64)
    opt = cls(N_PARAMS, dtype=np.float32)
    for g in grads:
        opt.step(p, g, 0.01)
    assert p.dtype == opt.m.dtype == opt.v.dtype == np.float32
    ref = (
        _adam_reference(p0, grads.astype(float), 0.01, 0.9, 0.999, 1e-8)
        if cls is Adam
        else _radam_reference(p0, grads.astype(float), 0.01, 0.9, 0.999, 1e-8)[0]
    )
    np.testing.assert_allclose(p, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", [Adam, RAdam])
def test_state_round_trip_is_bit_identical(cls, tmp_path):
    grads = _grads(30, seed=4)
    lrs = ExponentialDecay(1e-2, 1e-4, 30)
    p_full = np.linspace(-1, 1, N_PARAMS)
    full = cls(N_PARAMS, beta1=0.8, beta2=0.95, eps=1e-7)
    for k, g in enumerate(grads):
        full.step(p_full, g, lrs(k))

    p = np.linspace(-1, 1, N_PARAMS)
    first = cls(N_PARAMS, beta1=0.8, beta2=0.95, eps=1e-7)
    for k, g in enumerate(grads[:13]):
        first.step(p, g, lrs(k))
    np.savez(tmp_path / "opt.npz", **first.state_dict())
    with np.load(tmp_path / "opt.npz", allow_pickle=False) as npz:
        resumed = cls.from_state_dict({k: npz[k] for k in npz.files})
    assert (resumed.beta1, resumed.beta2, resumed.eps, resumed.t) == (0.8, 0.95, 1e-7, 13)
    for k, g in enumerate(grads[13:], start=13):
        resumed.step(p, g, lrs(k))
    np.testing.assert_array_equal(p, p_full)
    for key, value in resumed.state_dict().items():
        np.testing.assert_array_equal(value, full.state_dict()[key])


def test_state_dict_is_a_copy_and_checked():
    opt = Adam(3)
    state = opt.state_dict()
    opt.step(np.zeros(3), np.ones(3), 0.1)
    assert state["t"] == 0 and not state["m"].any()
    with pytest.raises(ValueError, match=r"an Adam optimiser, not RAdam\. Use Adam\.from_state_"):
        RAdam.from_state_dict(state)
    with pytest.raises(ValueError, match=r"Adam.from_state_dict: state is missing \['v'\]"):
        Adam.from_state_dict({k: v for k, v in state.items() if k != "v"})
    for key, value, message in [
        ("m", np.array([0.0, np.nan, 0.0]), "m must be finite"),
        ("v", np.array([0.0, -1.0, 0.0]), "v finite and >= 0"),
        ("t", np.array(2.7), "t must be an integer scalar >= 0; got float64"),
        ("t", np.array([1, 2]), "t must be an integer scalar"),
        ("t", np.array(-1), "t must be an integer scalar >= 0"),
        ("dtype", np.array("float16"), r"dtype must be 'float32' or 'float64'; got array\('float1"),
        ("dtype", "no dtype", "dtype must be 'float32' or 'float64'; got 'no dtype'. The state"),
        ("beta1", np.array(1.5), "the state is damaged: beta1 must be in"),
        ("eps", np.array("x"), "the state is damaged: could not convert"),
    ]:
        with pytest.raises(ValueError, match=f"^Adam.from_state_dict: .*{message}"):
            Adam.from_state_dict({**state, key: value})
    with pytest.raises(TypeError, match=r"^Adam.from_state_dict: state must be the dict of"):
        Adam.from_state_dict(None)


def test_step_validation_leaves_state_untouched():
    opt = Adam(3)
    p = np.zeros(3)
    g = np.ones(3)
    with pytest.raises(ValueError, match=r"Adam.step: lr must be finite and > 0"):
        opt.step(p, g, 0.0)
    with pytest.raises(ValueError, match=r"Adam.step: lr must be finite and > 0"):
        opt.step(p, g, float("nan"))
    with pytest.raises(TypeError, match=r"Adam.step: grad must have dtype float64"):
        opt.step(p, g.astype(np.float32), 0.1)
    with pytest.raises(ValueError, match=r"Adam.step: params must have shape \(3,\)"):
        opt.step(np.zeros(4), g, 0.1)
    with pytest.raises(TypeError, match=r"Adam.step: grad must be a NumPy array"):
        opt.step(p, [1.0, 1.0, 1.0], 0.1)
    with pytest.raises(ValueError, match=r"Adam.step: grad contains NaN or inf"):
        opt.step(p, np.array([1.0, np.inf, 0.0]), 0.1)
    with pytest.raises(ValueError, match=r"RAdam.step: params must be writeable"):
        ro = np.zeros(3)
        ro.flags.writeable = False
        RAdam(3).step(ro, g, 0.1)
    assert opt.t == 0 and not opt.m.any() and not p.any()


def test_masked_arrays_are_refused_not_read_as_data():
    """A masked entry would be read as data: the step, the clipping norm and a state dict
    refuse masked arrays (the norm counted a masked 1e10, the step moved its parameter)."""
    g = np.ma.array([1.0, 1e10], mask=[False, True])
    masked = r"grad is a masked array, whose masked entries would be read as data; .*filled"
    with pytest.raises(TypeError, match=rf"^clip_grad_norm: {masked}"):
        clip_grad_norm(g, 1.0)
    for cls in (Adam, RAdam):
        opt, p = cls(2), np.zeros(2)
        with pytest.raises(TypeError, match=rf"^{cls.__name__}.step: {masked}"):
            opt.step(p, g, 1e-3)
        assert opt.t == 0 and not p.any()
        state = {**opt.state_dict(), "v": np.ma.array(np.zeros(2), mask=[True, False])}
        with pytest.raises(TypeError, match=rf"^{cls.__name__}.from_state_dict: state\['v'\] "):
            cls.from_state_dict(state)


@pytest.mark.parametrize("cls", [Adam, RAdam])
@pytest.mark.parametrize(
    ("big", "lr", "overflows"),
    [(1e20, 1e-3, "v"), (1.0, 1e39, "params")],
)
def test_float32_overflowing_step_is_refused_and_state_kept(cls, big, lr, overflows):
    """A finite gradient whose moments (or update) overflow float32 is refused like a NaN one;
    training then continues bitwise as if the step had never been offered."""
    good = _grads(12, seed=5).astype(np.float32)
    p_ref = np.linspace(-1, 1, N_PARAMS, dtype=np.float32)
    ref = cls(N_PARAMS, dtype=np.float32)
    for g in good:
        ref.step(p_ref, g, 1e-3)

    p = np.linspace(-1, 1, N_PARAMS, dtype=np.float32)
    opt = cls(N_PARAMS, dtype=np.float32)
    for k, g in enumerate(good):
        if k == 6:
            before = (p.copy(), {key: v.copy() for key, v in opt.state_dict().items()})
            bad = g.copy()
            bad[2] = big
            with pytest.raises(NonFiniteStepError, match=rf"{cls.__name__}.step: .*make "
                               rf"{overflows} overflow in float32"):  # fmt: skip
                opt.step(p, bad, lr)
            np.testing.assert_array_equal(p, before[0])
            for key, value in opt.state_dict().items():
                np.testing.assert_array_equal(value, before[1][key])
        opt.step(p, g, 1e-3)
    assert np.all(np.isfinite(opt.v)) and opt.t == ref.t == 12
    np.testing.assert_array_equal(p, p_ref)
    np.testing.assert_array_equal(opt.v, ref.v)


def test_non_finite_step_error_is_a_value_error():
    with pytest.raises(NonFiniteStepError, match="grad contains NaN or inf"):
        Adam(2).step(np.zeros(2), np.array([np.nan, 0.0]), 0.1)
    assert issubclass(NonFiniteStepError, ValueError)


@pytest.mark.parametrize("cls", [Adam, RAdam])
def test_non_finite_params_are_refused_up_front(cls):
    """NaN/inf already in params is reported as such (not as an overflow of the step), and the
    state is left untouched."""
    opt = cls(3)
    p = np.array([0.0, np.inf, 1.0])
    with pytest.raises(
        NonFiniteStepError,
        match=rf"^{cls.__name__}\.step: params contains NaN or inf \(first at params\[1\]\).*"
        "Restore the parameters from a checkpoint",
    ):
        opt.step(p, np.ones(3), 1e-3)
    assert opt.t == 0 and not opt.m.any() and not opt.v.any() and p[0] == 0.0


@pytest.mark.parametrize(("dtype", "float64_hint"), [(np.float32, True), (np.float64, False)])
def test_overflow_message_suggests_float64_only_for_float32(dtype, float64_hint):
    big = np.finfo(dtype).max
    with pytest.raises(NonFiniteStepError, match="params, lr and grad finite") as err:
        Adam(2, dtype=dtype).step(np.zeros(2, dtype), np.array([big, 0.0], dtype), 1e-3)
    assert ("use float64" in str(err.value)) == float64_hint


def test_constructor_validation():
    with pytest.raises(ValueError, match=r"Adam: beta1 must be in \[0, 1\); got 1\.0\. beta2"):
        Adam(3, beta1=1.0, beta2=2.0)
    with pytest.raises(ValueError, match=r"RAdam: beta2 must be finite and >= 0; got -0\.1"):
        RAdam(3, beta2=-0.1)
    with pytest.raises(ValueError, match=r"RAdam: eps must be finite and > 0; got 0\.0"):
        RAdam(3, eps=0.0)
    with pytest.raises(ValueError, match="Adam: n_params must be >= 1"):
        Adam(0)
    for dtype, got in ((np.int32, "int32"), ("foo", "'foo'"), (None, "None")):
        with pytest.raises(TypeError, match=f"^Adam: dtype must be float32 or float64 .*got {got}"):
            Adam(3, dtype=dtype)
    # an eps that is inf in the dtype made every step 0; moments beyond memory were NumPy's
    # bare errors (array too big, MemoryError)
    with pytest.raises(ValueError, match=r"^Adam: eps=1e\+39 is inf in float32; use eps <= "):
        Adam(3, eps=1e39, dtype=np.float32)
    for n in (2**62, 10**12):
        with pytest.raises(ValueError, match=rf"^RAdam: the moments of {n} parameters need .*"):
            RAdam(n)


def test_python_argument_errors_name_the_class_called():
    """RAdam restates Adam's signature (so Python's messages name RAdam); it must not drift."""
    assert inspect.signature(RAdam.__init__) == inspect.signature(Adam.__init__)
    with pytest.raises(TypeError, match=r"^RAdam\.__init__\(\) missing .* 'n_params'"):
        RAdam()
    with pytest.raises(TypeError, match=r"^RAdam\.__init__\(\) got an unexpected .* 'lr'"):
        RAdam(3, lr=1e-3)


def test_constructors_report_every_bad_hyperparameter_at_once():
    for cls in (Adam, RAdam):
        with pytest.raises(ValueError) as err:
            cls(3, beta1=-0.1, beta2=1.5, eps=0.0)
        assert str(err.value) == (
            f"{cls.__name__}: beta1 must be finite and >= 0; got -0.1. beta2 must be in [0, 1); "
            "got 1.5. eps must be finite and > 0; got 0.0."
        )
    with pytest.raises(ValueError) as err:
        ExponentialDecay(-1, 0, 0)
    assert str(err.value) == (
        "ExponentialDecay: lr_start must be finite and > 0; got -1.0. lr_end must be finite and "
        "> 0; got 0.0. n_steps must be >= 1; got 0."
    )
    for lr_start, lr_end in [(1e-200, 1e200), (1e200, 1e-200)]:  # the ratio is inf / 0
        with pytest.raises(ValueError, match=r"^ExponentialDecay: lr_end / lr_start = .* beyond"):
            ExponentialDecay(lr_start, lr_end, 10)
    for cls in (Adam, RAdam):  # an eps that rounds to 0 would make 0/0 of a zero gradient
        with pytest.raises(ValueError, match=r"eps=1e-46 is 0 in float32 .* use eps >= 1.4e-45"):
            cls(3, eps=1e-46, dtype=np.float32)
        assert cls(3, eps=1e-46).eps == 1e-46  # representable in float64
    wide = ExponentialDecay(1e-150, 1e150, 3)
    assert wide(1) == pytest.approx(1.0) and wide(2) == 1e150
    assert ExponentialDecay(1.0, 1e-310, 3)(2) == 1e-310  # a subnormal ratio is computable


def test_a_wrong_kind_makes_a_type_error_that_still_lists_the_bad_values():
    with pytest.raises(TypeError) as err:
        RAdam("3", beta1=2.0, eps=-1.0, dtype="int8")
    assert str(err.value) == (
        "RAdam: n_params must be an int; got str. beta1 must be in [0, 1); got 2.0. eps must be "
        "finite and > 0; got -1.0. dtype must be float32 or float64 (e.g. dtype='float32'); "
        "got int8."
    )
    with pytest.raises(TypeError, match=r"^make_optimizer: unknown optimiser 'sgd'.*\['lr'\]"):
        make_optimizer("sgd", 3, lr=1e-3)
    with pytest.raises(TypeError, match=r"^clip_grad_norm: grad must be 1-D.* max_norm .* bool"):
        clip_grad_norm(np.ones((2, 2)), True)
    opt, p = Adam(3), np.zeros(3)
    with pytest.raises(TypeError) as err:
        opt.step(p, np.zeros(2, dtype=np.float32), 0.0)
    assert str(err.value) == (
        "Adam.step: grad must have dtype float64 (the optimiser's dtype); got float32. Build the "
        "optimiser with dtype=model.dtype. grad must have shape (3,); got (2,). lr must be "
        "finite and > 0; got 0.0."
    )
    assert opt.t == 0 and not p.any()


def test_bools_are_not_numbers():
    """True/False are refused wherever a real number is expected, naming the argument."""
    for name in ("beta1", "beta2", "eps"):
        with pytest.raises(TypeError, match=f"^Adam: {name} must be a real number; got bool"):
            Adam(3, **{name: False})
    p = np.zeros(3)
    with pytest.raises(TypeError, match=r"^Adam\.step: lr must be a real number; got bool"):
        Adam(3).step(p, np.ones(3), True)
    assert not p.any()
    with pytest.raises(
        TypeError, match=r"^clip_grad_norm: max_norm must be a real number; got bool"
    ):
        clip_grad_norm(np.ones(3), True)
    with pytest.raises(TypeError, match=r"^ExponentialDecay: lr_start must be a real number"):
        ExponentialDecay(True, 1e-3, 10)
    with pytest.raises(TypeError, match=r"^ExponentialDecay: lr_start must be a real number"):
        ExponentialDecay("1e-3", 1e-4, 3)  # not compared with lr_end (was a bare TypeError)
    with pytest.raises(ValueError, match=r"^ExponentialDecay: lr_start must be finite and > 0"):
        ExponentialDecay(0, 1e-4, 3)  # was ZeroDivisionError


def test_make_optimizer():
    assert type(make_optimizer("adam", 3)) is Adam
    opt = make_optimizer("RAdam", 3, beta1=0.5, dtype=np.float32)
    assert type(opt) is RAdam and opt.beta1 == 0.5 and opt.dtype == np.float32
    with pytest.raises(ValueError, match="unknown optimiser 'sgd'; available: 'adam', 'radam'"):
        make_optimizer("sgd", 3)
    with pytest.raises(
        TypeError,
        match=r"^make_optimizer: unexpected keyword argument\(s\) \['lr'\]; allowed: beta1, "
        r"beta2, eps, dtype\. .*pass lr to step\(\)",
    ):
        make_optimizer("adam", 3, lr=1e-3)
    with pytest.raises(TypeError, match=r"\['beta3'\]; allowed: beta1, beta2, eps, dtype\.$"):
        make_optimizer("adam", 3, beta3=0.9)
    with pytest.raises(TypeError, match=r"^make_optimizer: name must be a str .*; got list"):
        make_optimizer(["adam"], 3)


def test_exponential_decay():
    sched = ExponentialDecay(1e-3, 1e-5, 101)
    assert sched(0) == 1e-3 and sched(100) == 1e-5 and sched(10**6) == 1e-5
    assert sched(50) == pytest.approx(1e-4, rel=1e-12)  # geometric mean halfway
    ratios = [sched(k + 1) / sched(k) for k in range(99)]
    np.testing.assert_allclose(ratios, 0.01 ** (1 / 100), rtol=1e-12)
    one = ExponentialDecay(1e-2, 1e-4, 1)  # the run's only step starts at lr_start
    assert one(0) == 1e-2 and one(1) == one(7) == 1e-4
    two = ExponentialDecay(1e-2, 1e-4, 2)
    assert (two(0), two(1), two(2)) == (1e-2, 1e-4, 1e-4)
    with pytest.raises(ValueError, match="ExponentialDecay: lr_end must be finite and > 0"):
        ExponentialDecay(1e-3, 0.0, 10)
    with pytest.raises(ValueError, match="ExponentialDecay: n_steps must be >= 1"):
        ExponentialDecay(1e-3, 1e-4, 0)
    with pytest.raises(ValueError, match="ExponentialDecay: step must be >= 0"):
        sched(-1)


def test_clip_grad_norm():
    g = np.array([3.0, 4.0])
    out, norm = clip_grad_norm(g, None)
    assert out is g and norm == 5.0
    out, norm = clip_grad_norm(g, 10.0)
    assert out is g and norm == 5.0
    out, norm = clip_grad_norm(g, 1.0)
    np.testing.assert_allclose(out, [0.6, 0.8], rtol=1e-15)
    assert norm == 5.0 and g[0] == 3.0  # input untouched
    g32 = g.astype(np.float32)
    assert clip_grad_norm(g32, 1.0)[0].dtype == np.float32
    out, norm = clip_grad_norm(np.array([np.nan, 1.0]), 1.0)
    assert math.isnan(norm) and math.isnan(out[0])
    with pytest.raises(ValueError, match="clip_grad_norm: max_norm must be finite and > 0"):
        clip_grad_norm(g, 0.0)
    with pytest.raises(ValueError, match=r"clip_grad_norm: grad must be 1-D.*got shape \(2, 2\)"):
        clip_grad_norm(np.ones((2, 2)), 1.0)


def test_clip_grad_norm_at_the_float64_limits():
    """Entries beyond 1e150 or below 1e-150 are scaled before squaring (no overflow to inf,
    no underflow to 0); every other gradient gets bitwise the plain np.linalg.norm."""
    for scale in (1e200, 1e-200):
        out, norm = clip_grad_norm(np.array([3.0, 4.0]) * scale, scale)
        assert norm == pytest.approx(5.0 * scale, rel=1e-15)
        np.testing.assert_allclose(out / scale, [0.6, 0.8], rtol=1e-15)
    assert clip_grad_norm(np.array([3e-320, 4e-320]), None)[1] == pytest.approx(5e-320, rel=1e-3)
    out, norm = clip_grad_norm(np.array([np.inf, 1.0]), 1.0)
    assert norm == math.inf and out[0] == math.inf
    rng = np.random.default_rng(0)
    for g in (rng.normal(size=1000) * 1e100, rng.normal(size=1000) * 1e-100, np.zeros(3)):
        assert clip_grad_norm(g, None)[1] == float(np.linalg.norm(g))
    g32 = np.array([3e38, 3e38], dtype=np.float32)
    assert clip_grad_norm(g32, None)[1] == float(np.linalg.norm(g32.astype(np.float64)))
    for max_norm in (1e-6, 1e-8):  # max_norm / norm is below float32's (normal) range
        out, _ = clip_grad_norm(np.full(4, 3e38, dtype=np.float32), max_norm)
        assert out.dtype == np.float32
        assert np.linalg.norm(out.astype(np.float64)) == pytest.approx(max_norm, rel=1e-6)


# --- L2 regularisation -------------------------------------------------------------------------


class _Toy(Model):
    """A model with the lab's block names (shPLRNN-like) plus an unregularised L0."""

    def __init__(self, dtype="float64"):
        self.n_obs = 2
        self._setup(dtype)
        self.init()

    def param_spec(self):
        return [
            ("A", (3,)),
            ("W1", (3, 4)),
            ("W2", (4, 3)),
            ("h1", (3,)),
            ("h2", (4,)),
            ("L0", (1, 2)),
        ]

    def hyperparameters(self):
        return {"dtype": self.dtype.name}

    def init(self, seed=0):
        self.params[...] = np.random.default_rng(seed).normal(size=self.n_params)
        return self

    def generate(self, x0, n_steps):
        raise NotImplementedError


def test_l2_penalty_value_matches_lab_formula():
    m = _Toy()
    p = m.unflatten()
    expected = 0.1 * (
        np.sum((1 - p["A"]) ** 2)
        + np.sum(p["W1"] ** 2)
        + np.sum(p["W2"] ** 2)
        + np.sum(p["h1"] ** 2)
        + np.sum(p["h2"] ** 2)
    )
    penalty, grad = l2_penalty(m, 0.1)
    assert penalty == pytest.approx(expected, rel=1e-14)
    assert not m.unflatten(grad)["L0"].any()
    penalty, _ = l2_penalty(m, {"A": 2.0})
    assert penalty == pytest.approx(2.0 * np.sum((1 - p["A"]) ** 2), rel=1e-14)
    m.unflatten()["A"][...] = 1.0
    assert l2_penalty(m, {"A": 2.0})[0] == 0.0


@pytest.mark.parametrize("weights", [0.3, {"A": 0.5, "W": 0.2, "bias": 0.1}])
def test_l2_penalty_gradient_fd(weights):
    rng = np.random.default_rng(7)
    for m in (_Toy(), LinearSSM(2, 3, 4, seed=1)):
        if isinstance(m, LinearSSM) and isinstance(weights, dict):
            weights = {group: w for group, w in weights.items() if group != "A"}  # none there
        _, grad = l2_penalty(m, weights)
        p0 = m.params.copy()
        for _ in range(3):
            v = rng.normal(size=m.n_params)
            m.params[...] = p0 + 1e-6 * v
            lp = l2_penalty(m, weights)[0]
            m.params[...] = p0 - 1e-6 * v
            lm = l2_penalty(m, weights)[0]
            m.params[...] = p0
            fd = (lp - lm) / 2e-6
            assert abs(fd - grad @ v) <= 1e-6 * abs(fd)


def test_l2_penalty_errors():
    m = _Toy()
    with pytest.raises(ValueError, match=r"unknown weight group\(s\) \['C'\]; valid groups"):
        l2_penalty(m, {"C": 1.0})
    with pytest.raises(ValueError, match=r"^l2_penalty: unknown weight group\(s\) \['x', 1\]"):
        l2_penalty(m, {1: 0.1, "x": 0.2})  # keys that do not sort together
    with pytest.raises(ValueError, match="weight for 'W' must be finite and >= 0"):
        l2_penalty(m, {"W": -1.0})
    with pytest.raises(TypeError, match="weight for 'A' must be a real number"):
        l2_penalty(m, "big")
    with pytest.raises(TypeError, match="weight for 'W' must be a real number; got str"):
        l2_penalty(m, {"W": "1e-3"})
    with pytest.raises(TypeError, match="l2_penalty: model must be a parscan model; got object"):
        l2_penalty(object(), 0.1)
    assert l2_penalty(m, np.float32(0.5))[0] == l2_penalty(m, 0.5)[0]


@pytest.mark.parametrize(
    ("make", "recurrence"),
    [
        (lambda: LinearSSM(3, 4, 5), ("nu", "theta", "B_re", "B_im", "C_re", "C_im")),
        (lambda: SelectiveSSM(3, 4, 5), ("W_delta", "b_delta", "log_A", "W_B", "W_C")),
    ],
)
def test_l2_penalty_leaves_every_ssm_recurrence_unregularised(make, recurrence):
    model = make()
    _, grad = l2_penalty(model, 1.0)
    blocks = model.unflatten(grad)
    assert not any(blocks[name].any() for name in recurrence)
    assert all(blocks[name].any() for name in ("W1", "W2", "b1", "b2"))
    # a weight named for the group it has no block in would add nothing: refused
    name = type(model).__name__
    with pytest.raises(
        ValueError,
        match=rf"^l2_penalty: a {name} has no parameter in the l2 group\(s\) 'A' \(penalised "
        r"here: W \['W1', 'W2'\], bias \['b1', 'b2'\]\); drop it or set it to 0\.$",
    ):
        l2_penalty(model, {"A": 0.5, "W": 1.0})
    assert l2_penalty(model, {"A": 0.0, "W": 1.0})[0] == l2_penalty(model, {"W": 1.0})[0]
