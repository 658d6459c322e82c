"""The configuration of a training run: :class:`TrainConfig`, checked as it is built, and the
rules on which of its settings a run uses.

:func:`autodiff.fit` trains a latent RNN with generalized teacher forcing, its forward solved
in parallel over time by (quasi-)DEER Newton iterations (GTF-DEER: Hess, Goetz & Durstewitz,
arXiv:2605.12683), or sequentially (BPTT), and a state-space model teacher-forced with linear
scans. Settings a run would not use -- the Newton settings of a sequential forward
(:data:`DEER_SETTINGS`), alpha's re-estimation with a constant alpha
(:data:`AUTO_ALPHA_SETTINGS`), the selection check's runs with one candidate
(:data:`SELECTION_SETTINGS`), generalized teacher forcing for a state-space model
(:data:`GTF_SETTINGS`) -- are refused, not ignored, by one rule (:func:`inapplicable_settings`);
:func:`new_run_remedies` names the settings worth changing after a run failed.
"""

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from autodiff.optim import OPTIMIZERS, lr_ratio_problem
from autodiff.regularization import GROUPS
from models._checks import Checks, refusal
from models.metrics import REST_MIN_POINTS
from parscan._arguments import bool_problem, seed_problem, shown_int
from parscan.deer import MAX_ITER_CAP

CHOICES = {
    "method": ("deer", "sequential"),
    "optimizer": tuple(OPTIMIZERS),
    "alpha_mode": ("constant", "auto"),
    "alpha_method": ("sup", "geomean", "param_bound"),
    "jacobian": ("full", "diag"),
    "dtype": ("float32", "float64"),
    "backend": ("auto", "sequential", "cpu", "cuda"),
}
#: points D_stsp and D_H need in each trajectory they compare (models.metrics): the least
#: ``validation_steps`` and the least validation data after its first point
MIN_SCORED_STEPS = 2
#: config fields of the DEER (Newton) forward
NEWTON_SETTINGS = ("jacobian", "newton_tol", "newton_max_iter")
#: config fields of the DEER forward and its scans, which ``method="sequential"`` (a fused CPU
#: kernel) does not run
DEER_SETTINGS = (*NEWTON_SETTINGS, "backend")
#: config fields of alpha's re-estimation, which ``alpha_mode="constant"`` does not run
AUTO_ALPHA_SETTINGS = ("alpha_method", "alpha_gamma", "alpha_interval")
#: config fields of the selection check's free runs, which ``selection_candidates=1`` (the
#: best-validated epoch, unchecked) does not run
SELECTION_SETTINGS = ("selection_starts", "selection_steps")
#: config fields of generalized teacher forcing and its forward, which a state-space model
#: (trained teacher-forced with linear scans) does not use
GTF_SETTINGS = (
    "method",
    "alpha_mode",
    "alpha",
    "alpha_method",
    "alpha_gamma",
    "alpha_interval",
    *NEWTON_SETTINGS,
)


#: ``alpha_method`` -> the one that estimates a larger alpha (DESIGN.md section 4)
_LARGER_ALPHA_METHOD = {"geomean": "sup", "sup": "param_bound"}


def new_run_remedies(config: "TrainConfig", alpha: float | None, gtf: bool) -> dict:
    """Settings worth changing after a run with ``config`` failed (its steps kept being
    rejected, or the trained model does not reconstruct the system), none of them the ones
    it used.

    Parameters
    ----------
    config : TrainConfig
        The failed run's configuration.
    alpha : float or None
        The GTF alpha the run ended with (None: no GTF).
    gtf : bool
        The model is a latent RNN trained with generalized teacher forcing (a state-space
        model has no alpha or Newton solve).

    Returns
    -------
    dict
        :class:`TrainConfig` field -> suggested value, in the order worth trying: a larger
        GTF alpha while it is below 1 (``alpha_mode="auto"``, else the next larger
        ``alpha_method``), ``newton_max_iter=None`` (the solver's default) after a cap
        below it, a third of ``lr_start`` (at most the default 6e-3: a far larger rate is
        no place to creep down from) and the same ``lr_end`` when the run's was larger (a
        schedule rising back to the rate that failed is no remedy), ``jacobian="full"`` after
        ``"diag"``, float64 after float32.
    """
    remedies = {}
    if gtf and (alpha is None or alpha < 1.0):  # fully forced already: more alpha is no remedy
        if config.alpha_mode != "auto":
            remedies["alpha_mode"] = "auto"
        elif config.alpha_method in _LARGER_ALPHA_METHOD:
            remedies["alpha_method"] = _LARGER_ALPHA_METHOD[config.alpha_method]
    if gtf and config.method == "deer" and config.newton_max_iter is not None:
        solver_default = min(config.sequence_length, MAX_ITER_CAP[config.jacobian])
        if config.newton_max_iter < solver_default:  # a cap below deer_solve's own
            remedies["newton_max_iter"] = None
    default_lr = TrainConfig.__dataclass_fields__["lr_start"].default
    remedies["lr_start"] = float(f"{min(config.lr_start / 3, default_lr):.3g}")
    if config.lr_end > remedies["lr_start"]:  # else the schedule would climb back up
        remedies["lr_end"] = remedies["lr_start"]
    if gtf and config.jacobian == "diag":
        remedies["jacobian"] = "full"
    if config.dtype == "float32":
        remedies["dtype"] = "float64"
    return remedies


def inapplicable_settings(config: "TrainConfig", latent_rnn: bool) -> list[str]:
    """The fields of ``config`` set to a value other than their default that a run with it
    would not use -- the one rule behind the refusals of :class:`TrainConfig`, :func:`autodiff.fit`
    and the command line.

    Parameters
    ----------
    config : TrainConfig
        The run's configuration.
    latent_rnn : bool
        The model is a :class:`models.base.LatentRNN` (trained with GTF); else a state-space
        model (trained teacher-forced with linear scans).

    Returns
    -------
    list of str
        Field names, in the order of :class:`TrainConfig`'s fields: for a latent RNN with
        ``method="sequential"`` those of :data:`DEER_SETTINGS` (``jacobian``, ``newton_tol``,
        ``newton_max_iter``, ``backend``: the sequential forward has no Newton solve and no
        scans) and with
        ``alpha_mode="constant"`` those of :data:`AUTO_ALPHA_SETTINGS` (``alpha_method``,
        ``alpha_gamma``, ``alpha_interval``: alpha is never re-estimated); for a state-space
        model those of :data:`GTF_SETTINGS` (``method`` and the alpha, Jacobian and Newton
        settings); for either, with ``selection_candidates=1``, those of
        :data:`SELECTION_SETTINGS` (``selection_starts``, ``selection_steps``: the
        best-validated epoch is kept unchecked); none otherwise. A field at its default is
        never listed.
    """
    names = unused_fields(config.method, latent_rnn, config.alpha_mode, config.selection_candidates)
    return [
        f.name
        for f in dataclasses.fields(TrainConfig)
        if f.name in names and getattr(config, f.name) != f.default
    ]


def unused_fields(
    method: str, latent_rnn: bool, alpha_mode: str, selection_candidates: int
) -> tuple[str, ...]:
    """The :class:`TrainConfig` fields a run does not use, whatever their values: for a
    latent RNN those of :data:`DEER_SETTINGS` with ``method="sequential"`` and those of
    :data:`AUTO_ALPHA_SETTINGS` with ``alpha_mode="constant"``; for a state-space model those
    of :data:`GTF_SETTINGS`; for either those of :data:`SELECTION_SETTINGS` with
    ``selection_candidates=1``."""
    unchecked = SELECTION_SETTINGS if _is(selection_candidates, 1) else ()
    if not latent_rnn:
        return GTF_SETTINGS + unchecked
    newton = DEER_SETTINGS if _is(method, "sequential") else ()
    return newton + (AUTO_ALPHA_SETTINGS if _is(alpha_mode, "constant") else ()) + unchecked


def _is(value, option) -> bool:
    """``value == option`` (a str or an int) for any value: an array (refused as a setting,
    but compared before the refusal) has no truth value."""
    kinds = str | np.str_ if isinstance(option, str) else int | np.integer
    return isinstance(value, kinds) and not isinstance(value, bool) and value == option


def constant_alpha_refusal(given: dict) -> str:
    """The refusal of alpha's re-estimation settings ``given`` (name -> value) with
    ``alpha_mode="constant"``."""
    reason = "alpha_mode='constant' keeps alpha fixed and never re-estimates it"
    return refusal(given, "alpha_mode='auto'", reason) + " or use alpha_mode='auto'."


def unchecked_selection_refusal(given: dict) -> str:
    """The refusal of the selection check's settings ``given`` (name -> value) with
    ``selection_candidates=1``."""
    reason = "selection_candidates=1 keeps the best-validated epoch unchecked"
    return refusal(given, "selection_candidates > 1", reason) + " or raise selection_candidates."


def field_values(config: "TrainConfig", names: list[str]) -> dict:
    """The fields ``names`` of ``config`` and their values (for :func:`models._checks.refusal`
    of :func:`inapplicable_settings`)."""
    return {name: getattr(config, name) for name in names}


def _python_number(value):
    """``value`` as a Python int/float when it is a NumPy integer/floating scalar, else as is."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _dtype_name(value):
    """``"float32"``/``"float64"`` when ``np.dtype(value)`` is float32/float64 (as the models
    take ``dtype``, :meth:`models._checks.Checks.float_dtype`: ``"f8"``, ``float``,
    ``np.float32``, ``np.dtype("float64")``...), else ``value`` as is (a value that
    :class:`TrainConfig` refuses)."""
    checks = Checks("TrainConfig")
    dtype = checks.float_dtype(value)
    return value if checks.problems else dtype.name


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run (JSON round trip with :meth:`to_dict` / :meth:`from_dict`).

    The defaults are the lab's (16 windows per batch, 50 batches per epoch, RAdam, the
    product-upper-bound ("geomean") alpha estimator annealed with gamma = 0.999 every 5
    steps) with the window length, epochs and learning rates chosen with
    ``bench/tune_default.py``: a clipped shPLRNN (M=3, L=200) trained with them on 80,000
    steps of Lorenz-63 with 5 % noise, selected on the other 20,000 (``validation_steps =
    25_000``, 4 starts), reconstructs the attractor: D_stsp 0.10-0.26 and D_H 0.07-0.09 on a
    100,000-step test trajectory for seeds 0-3 (README).

    Settings a run would not use are refused, not ignored (one rule,
    :func:`inapplicable_settings`): ``TrainConfig`` refuses ``jacobian``, ``newton_tol`` and
    ``newton_max_iter`` other than their defaults with ``method="sequential"`` (no Newton
    solve) and ``alpha_method``, ``alpha_gamma`` and ``alpha_interval`` other than their
    defaults with ``alpha_mode="constant"`` (alpha is never re-estimated) and
    ``selection_starts`` and ``selection_steps`` other than their defaults with
    ``selection_candidates=1`` (no selection check), and :func:`autodiff.fit`
    refuses for a state-space model every field of
    :data:`GTF_SETTINGS` (``method``, the alpha, Jacobian and Newton settings) other than its
    default.

    Attributes
    ----------
    method : {"deer", "sequential"}
        GTF-DEER (parallel in time) or the sequential BPTT baseline (latent RNNs only;
        :func:`autodiff.fit` refuses it for a state-space model, which is trained with linear
        scans).
    sequence_length : int
        Window length ``T`` (steps after the initial one); up to ``len(data) - 1`` (several
        trajectories: up to the shortest one's length - 1).
    batch_size : int
        Windows per batch (lab default 16).
    batches_per_epoch : int
        Optimiser steps per epoch (lab default 50).
    epochs : int
        Number of epochs. A resume may change it: to fewer (but at least as many as already
        trained), which stops early on the original learning-rate schedule, or to more, whose
        extra steps run at ``lr_end``.
    optimizer : {"radam", "adam"}
        The lab's default is RAdam.
    lr_start, lr_end : float
        Exponential learning-rate decay (:class:`autodiff.optim.ExponentialDecay`) over the
        ``epochs * batches_per_epoch`` steps of the run that started training; a resume
        keeps that schedule whatever its ``epochs``, and steps beyond it run at ``lr_end``.
    alpha_mode : {"auto", "constant"}
        ``"constant"``: GTF alpha fixed at ``alpha``. ``"auto"``: start at ``alpha`` and every
        ``alpha_interval`` steps estimate ``a`` on the current batch with
        :func:`parscan.gtf_alpha` (``alpha_method``); raise alpha to ``a`` at once when
        ``a > alpha``, else ``alpha <- gamma alpha + (1 - gamma) a`` (the lab's annealing).
        The step after a rejected one estimates too (a rejection is often an alpha too small
        for its batch: the next batch gets its own estimate), so many rejections anneal
        faster.
    alpha : float in [0, 1]
        The constant alpha, or the initial one in auto mode.
    alpha_method : {"sup", "geomean", "param_bound"}
        Estimator for auto mode (see :func:`parscan.gtf_alpha`).
    alpha_gamma : float in [0, 1)
        Annealing factor ``gamma`` (auto mode).
    alpha_interval : int
        Re-estimate alpha every this many steps, and after a rejected step (auto mode).
    jacobian : {"full", "diag"}
        DEER (Newton) or quasi-DEER forward (``method="deer"`` and latent RNNs only).
    noise_level : float >= 0
        Gaussian noise of this standard deviation, relative to each dimension's sd of the
        training data (with ``standardize=False`` too), added to every training window.
    seed : int
        Seed of the window sampler and the noise, an int >= 0 of at most 4300 digits.
    dtype : {"float32", "float64"}
        Dtype of the training, its data and the returned model (``result.model``), whatever
        the given model's: a float64 model comes back float32 with the default; pass
        ``dtype="float64"`` (or ``dtype=model.dtype``) to keep it. Whatever ``np.dtype``
        makes float32/float64 (``"f8"``, ``float``, ``np.float32``, ``np.dtype("float64")``,
        as the models take it) is accepted and stored as its name, so ``to_dict``,
        checkpoints and comparisons see the string.
    backend : {"auto", "sequential", "cpu", "cuda"}
        Backend of the scans.
    checkpoint_interval : int
        Write a checkpoint every this many epochs (and always at the end).
    grad_clip : float or None
        Clip the total gradient (loss plus L2) to this Euclidean norm, one norm over the
        whole parameter vector (None: no clipping).
    l2 : float or dict
        The lab's L2 regularisation weights (:func:`autodiff.regularization.l2_penalty`): one
        lambda, or ``{"A": .., "W": .., "bias": ..}``. 0 disables it.
    max_bad_steps : int
        Stop with :class:`autodiff.TrainingDivergedError` after this many consecutive rejected steps
        (or at the end of a shorter run none of whose steps was accepted). A run without
        validation data that ends on fewer, or on an accepted step, raises it too when its
        last parameters fail on the training data (:func:`autodiff.fit`'s final check).
    validation_interval : int
        Score the model on ``validation_data`` every this many epochs (and at the last one).
    validation_steps : int or None
        Length of each validation free run, at least 2 (None: ``len(validation_data) - 1``,
        with several validation trajectories each one's length - 1). It may exceed that: a
        longer free run makes D_stsp against a short validation set less noisy.
    validation_starts : int
        Number of validation free runs (from each validation trajectory, at most as many as
        the shortest has points), from evenly spaced validation points, run as one batch; the
        score is their mean D_stsp + D_H (:func:`models.metrics.evaluate` with ``n_starts``;
        several trajectories: D_stsp of the i-th runs from all together, D_H the mean over the
        trajectories). Several starts catch a model that found a second, spurious attractor
        (it can score well from one initial condition and fail from another).
    validation_n_bins : int
        D_stsp bins per axis of the validation score (``n_bins`` of
        :func:`models.metrics.evaluate`; data with ``N >= 6`` dimensions are scored with the
        Gaussian mixture instead). 30 suits N = 3; use fewer as N grows (8 for the lab's
        5-d ECG), or the validation runs leave most bins empty and even the true system
        scores far above 0. It selects the best model, so a resume cannot change it. One
        bin, or too many for N, is refused by :func:`autodiff.fit` (with validation data).
    selection_candidates : int
        How many of the best-validated epochs stay candidates for the returned model (their
        parameters are kept, and checkpointed). At the end each runs ``selection_starts``
        free runs of ``selection_steps`` from evenly spread validation points; a candidate
        more than 1/8 of whose runs fail -- come to rest on a fixed point
        (:func:`models.metrics.fixed_point_onsets`) or blow up (become NaN/inf or leave 1000
        data ranges of the validation data, as a validation run that diverged) -- is passed
        over for the best-validated one that is not (the one with the fewest failed runs
        when all are): D_stsp barely registers runs that collapse late, a model whose chaos
        is transient has lost the attractor, and the validation runs do not see a blow-up
        after they end (:mod:`autodiff.selection`). Not done when the validation data rest
        themselves; 1 keeps the best-validated epoch unchecked.
    selection_starts : int
        Free runs per candidate in that check (refused off its default with
        ``selection_candidates=1``).
    selection_steps : int or None
        Their length, at least 10 (None: twice the validation runs', ``2 *
        validation_steps``, or twice the longest validation trajectory's length - 1, and at
        least 10: shorter runs cannot come to rest; refused with ``selection_candidates=1``).
    newton_tol, newton_max_iter : optional
        ``tol`` and ``max_iter`` of :func:`parscan.deer_solve` (its defaults when None;
        ``method="deer"`` and latent RNNs only).
    standardize : bool
        Standardise the data per dimension (mean and sd stored with the model); when False the
        data are used as given, and the model keeps the standardisation it has (None for a new
        model): pass data in its units (e.g. standardised with it, to train a fitted model
        on).
    """

    method: str = "deer"
    sequence_length: int = 200
    batch_size: int = 16
    batches_per_epoch: int = 50
    epochs: int = 200
    optimizer: str = "radam"
    lr_start: float = 6e-3
    lr_end: float = 1e-4
    alpha_mode: str = "auto"
    alpha: float = 0.1
    alpha_method: str = "geomean"
    alpha_gamma: float = 0.999
    alpha_interval: int = 5
    jacobian: str = "full"
    noise_level: float = 0.0
    seed: int = 0
    dtype: str = "float32"
    backend: str = "auto"
    checkpoint_interval: int = 10
    grad_clip: float | None = None
    l2: float | dict = 0.0
    max_bad_steps: int = 20
    validation_interval: int = 2
    validation_steps: int | None = None
    validation_starts: int = 4
    validation_n_bins: int = 30
    selection_candidates: int = 8
    selection_starts: int = 16
    selection_steps: int | None = None
    newton_tol: float | None = None
    newton_max_iter: int | None = None
    standardize: bool = True

    def __post_init__(self):
        object.__setattr__(self, "dtype", _dtype_name(self.dtype))
        type_errors, value_errors = [], []

        def integer(name, minimum, optional=False):
            v = getattr(self, name)
            if optional and v is None:
                return
            if isinstance(v, bool) or not isinstance(v, int | np.integer):
                type_errors.append(f"{name} must be an int; got {type(v).__name__} {v!r}.")
            elif v < minimum:
                value_errors.append(f"{name} must be >= {minimum}; got {shown_int(v)}.")

        def real(name, lo, hi, *, lo_open=False, hi_open=False, optional=False):
            v = getattr(self, name)
            if optional and v is None:
                return
            if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
                hint = ""
                if name == "alpha" and v == "auto":  # deer_solve's and the CLI's spelling
                    hint = " alpha_mode='auto' (the default) estimates it; alpha is its start."
                type_errors.append(f"{name} must be a float; got {type(v).__name__} {v!r}.{hint}")
                return
            try:
                ok = math.isfinite(v) and (v > lo if lo_open else v >= lo)
                shown = repr(v)
            except OverflowError:  # an int beyond float's range (and maybe repr's digit limit)
                ok, shown = False, shown_int(v)
            ok = ok and (hi is None or (v < hi if hi_open else v <= hi))
            if not ok:
                rng = f"{'(' if lo_open else '['}{lo}, {hi if hi is not None else 'inf'}"
                rng += ")" if hi_open or hi is None else "]"
                value_errors.append(f"{name} must be finite and in {rng}; got {shown}.")

        for name, options in CHOICES.items():
            v = getattr(self, name)
            if not isinstance(v, str) or v not in options:
                value_errors.append(f"{name} must be one of {options}; got {v!r}.")
        for name in ("sequence_length", "batch_size", "batches_per_epoch", "epochs"):
            integer(name, 1)
        for name in ("alpha_interval", "checkpoint_interval", "max_bad_steps"):
            integer(name, 1)
        integer("validation_interval", 1)
        integer("validation_steps", MIN_SCORED_STEPS, optional=True)
        integer("validation_starts", 1)
        integer("validation_n_bins", 1)
        integer("selection_candidates", 1)
        integer("selection_starts", 1)
        integer("selection_steps", REST_MIN_POINTS, optional=True)
        integer("newton_max_iter", 1, optional=True)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int | np.integer):
            integer("seed", 0)  # refuses the type
        elif problem := seed_problem(self.seed):
            value_errors.append(problem)
        found = len(type_errors) + len(value_errors)
        real("lr_start", 0.0, None, lo_open=True)
        real("lr_end", 0.0, None, lo_open=True)
        if len(type_errors) + len(value_errors) == found:  # both fine: their ratio may not be
            ratio = lr_ratio_problem(self.lr_start, self.lr_end)
            if ratio:
                value_errors.append(ratio)
        real("alpha", 0.0, 1.0)
        real("alpha_gamma", 0.0, 1.0, hi_open=True)
        real("noise_level", 0.0, None)
        real("grad_clip", 0.0, None, lo_open=True, optional=True)
        real("newton_tol", 0.0, None, lo_open=True, optional=True)
        problem = bool_problem(self.standardize, "standardize")
        if problem is not None:
            type_errors.append(problem)
        else:  # a NumPy bool becomes a Python bool, so to_dict() is JSON-able
            object.__setattr__(self, "standardize", bool(self.standardize))
        l2 = self.l2
        if isinstance(l2, dict):
            unknown = sorted(set(l2) - set(GROUPS), key=repr)  # keys of any types
            if unknown:
                value_errors.append(f"l2 has unknown groups {unknown}; valid: {list(GROUPS)}.")
            values = list(l2.values())
        else:
            values = [l2]
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
                type_errors.append(f"l2 weights must be floats; got {type(v).__name__} {v!r}.")
            else:
                try:
                    ok, shown = math.isfinite(v) and v >= 0, repr(v)
                except OverflowError:  # an int beyond float's range
                    ok, shown = False, shown_int(v)
                if not ok:
                    value_errors.append(f"l2 weights must be finite and >= 0; got {shown}.")
        unused = inapplicable_settings(self, latent_rnn=True)
        newton = [name for name in unused if name in DEER_SETTINGS]
        if newton:
            from autodiff.gradients import sequential_refusal

            value_errors.append(sequential_refusal(field_values(self, newton)))
        re_estimation = [name for name in unused if name in AUTO_ALPHA_SETTINGS]
        if re_estimation:
            value_errors.append(constant_alpha_refusal(field_values(self, re_estimation)))
        selection = [name for name in unused if name in SELECTION_SETTINGS]
        if selection:
            value_errors.append(unchecked_selection_refusal(field_values(self, selection)))
        if type_errors:
            raise TypeError("TrainConfig: " + " ".join(type_errors + value_errors))
        if value_errors:
            raise ValueError("TrainConfig: " + " ".join(value_errors))
        # NumPy scalars (accepted above) become Python numbers, so to_dict() is JSON-able.
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _python_number(getattr(self, f.name)))
        if isinstance(l2, dict):
            object.__setattr__(self, "l2", {k: _python_number(v) for k, v in l2.items()})

    @property
    def n_steps(self) -> int:
        """Total number of optimiser steps, ``epochs * batches_per_epoch``."""
        return self.epochs * self.batches_per_epoch

    def to_dict(self) -> dict:
        """All fields as a JSON-able dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Build from a dict (e.g. parsed JSON/TOML); missing keys take their defaults."""
        if not isinstance(d, dict):
            raise TypeError(f"TrainConfig.from_dict: expected a dict; got {type(d).__name__}.")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names, key=repr)  # keys of any types
        if unknown:
            raise ValueError(
                f"TrainConfig.from_dict: unknown keys {unknown}; valid keys: {sorted(names)}."
            )
        return cls(**d)
