"""The training loop: GTF-DEER (or sequential BPTT) on random windows of the training data.

:func:`fit` trains a copy of a model on windows of length ``T + 1`` sampled with replacement
from a standardised trajectory, or from several (each window within one of them; DESIGN.md
section 8), with the GTF loss of
:func:`autodiff.gradients.gtf_loss_and_grad` for latent RNNs (Hess et al., ICML 2023; GTF-DEER:
Hess, Goetz & Durstewitz, arXiv:2605.12683) or the teacher-forced loss of
:func:`autodiff.ssm_gradients.ssm_loss_and_grad` for state-space models, RAdam/Adam with an
exponentially decaying learning rate, the lab's alpha annealing, validation-based model
selection (its best candidates re-checked for spurious fixed points and blow-ups by
:mod:`autodiff.selection`), atomic checkpoints and bit-identical resumption.

Determinism: everything random (window starts, noise) comes from one
``np.random.Generator(PCG64(seed))`` whose state is checkpointed; the learning rate and the
alpha re-estimation schedule are functions of the global step (the learning-rate schedule is
fixed by the run that started training). Resuming from any checkpoint -- periodic, final, or
written when an exception (``KeyboardInterrupt`` included) stopped training -- gives bitwise
the parameters of an uninterrupted run (same machine, thread count and backend).
"""

import dataclasses
import math
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from autodiff.checkpoint import (
    checkpoint_path,
    damaged,
    is_count,
    load_checkpoint,
    save_checkpoint,
)
from autodiff.fingerprint import (
    FINGERPRINTED,
    fingerprint,
    first_difference,
    saved_fingerprint,
    stored,
)
from autodiff.optim import (
    OPTIMIZERS,
    ExponentialDecay,
    NonFiniteStepError,
    clip_grad_norm,
    lr_ratio_problem,
    make_optimizer,
)
from autodiff.regularization import GROUPS, l2_penalty
from models._checks import Checks, check_bool, check_path, refusal
from models._signals import signals_deferred
from models.base import LatentRNN, Model, reworded_os_error
from models.data import (
    check_trajectory,
    check_trajectory_or_list,
    several_trajectories,
    standardize,
)
from models.metrics import REST_MIN_POINTS
from parscan._arguments import bool_problem
from parscan.deer import MAX_ITER_CAP, DeerStatus

_CHOICES = {
    "method": ("deer", "sequential"),
    "optimizer": tuple(OPTIMIZERS),
    "alpha_mode": ("constant", "auto"),
    "alpha_method": ("sup", "geomean", "param_bound"),
    "jacobian": ("full", "diag"),
    "dtype": ("float32", "float64"),
    "backend": ("auto", "sequential", "cpu", "cuda"),
}
#: config fields that may differ between a checkpoint and the run resuming it
RESUMABLE_CHANGES = frozenset(
    {
        "epochs",
        "checkpoint_interval",
        "max_bad_steps",
        "backend",
        "validation_interval",
        "selection_starts",
        "selection_steps",
    }
)
#: config fields added since checkpoints were first written: a stored config without them was
#: written before they existed, by a run that used their defaults, and reads them as such
_LATER_FIELDS = (
    "validation_n_bins",
    "selection_candidates",
    "selection_starts",
    "selection_steps",
)
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


class NoValidationScoreWarning(UserWarning):
    """:func:`fit` validated the model, but no validation measured a finite score (every
    free run diverged, became non-finite or left the data's box): ``result.model`` is the
    final model, not a selected one, and it does not reconstruct the validation data."""


class SelectionWarning(UserWarning):
    """Every candidate of :func:`fit`'s selection check failed it (more than 1/8 of its long
    free runs came to rest or blew up, :mod:`autodiff.selection`): ``result.model`` is the
    one with the fewest failed runs, likely with a spurious attractor."""


class TrainingDivergedError(RuntimeError):
    """``max_bad_steps`` consecutive steps were rejected, or every step of a run with fewer
    steps than that (``epochs * batches_per_epoch``); or a run without validation data ended
    with parameters that fail on the training data (:func:`fit`'s final check; ``final``).

    A step is rejected (parameters and optimiser state unchanged) when its alpha
    re-estimation failed (a NaN/inf Jacobian norm: the model overflows on the data), its
    DEER or sequential forward did not converge or was not finite, its loss or gradient is
    not finite, or the optimiser refused it (:class:`autodiff.optim.NonFiniteStepError`: the
    moments or parameters would overflow). The final check computes the loss and gradient of
    a step at the last parameters (on ``batch_size`` evenly spaced windows of the training
    data, at the final alpha, without noise; a latent RNN's by the sequential BPTT kernel,
    exactly); it fails as a rejected step would. The settings
    of a run cannot change on resume, so the remedies the message lists are for a new run.

    Attributes
    ----------
    streak : int
        The number of consecutive rejected steps (at the end of the run, for ``final``:
        possibly 0).
    reason : str
        Why the last step was rejected, or the final check failed (what failed, without
        remedies).
    epoch, batch : int
        Where (1-based) the last rejected step was (for ``final``: the last step).
    alpha, lr : float
        The GTF alpha and learning rate of that step.
    params : ndarray
        The last good (finite) parameters; for ``final``, the last ones, which failed.
    checkpoint : pathlib.Path or None
        The last checkpoint written (never overwritten by a bad state: the state that failed
        the final check is not written either); None when none was written yet.
    remedies : dict
        :class:`TrainConfig` fields worth changing for a new run, with suggested values
        (:func:`new_run_remedies`); the message lists them, and ``grad_clip`` when the run
        had none.
    final : bool
        The final check failed (not a streak of ``max_bad_steps`` rejections).
    """

    def __init__(
        self,
        *,
        streak,
        reason,
        epoch,
        batch,
        alpha,
        lr,
        params,
        checkpoint,
        remedies,
        clipped,
        final=False,
    ):
        kept = (
            f"; the last checkpoint {checkpoint} is kept"
            if checkpoint is not None
            else "; no checkpoint had been written yet"
        )
        tries = [f"{name}={value!r}" for name, value in remedies.items()]
        if not clipped:
            tries.append("a grad_clip (a bound on the gradient norm)")
        where = f"epoch {epoch}, batch {batch}, alpha={alpha:.4g}, lr={lr:.3g}"
        if final:
            last = f"ended {streak} rejected steps in a row" if streak else "was accepted"
            what = (
                f"the parameters the run ended with fail on evenly spaced windows of the "
                f"training data ({reason}); its last step ({where}) {last}. They were not "
                f"checkpointed{kept}"
            )
        else:
            what = (
                f"{rejections(streak)} (last: {reason}) at {where}. Parameters were left at "
                f"the last good step{kept}"
            )
        super().__init__(
            f"fit: {what}. A resume keeps the settings; start a new run with one or more of: "
            f"{', '.join(tries)}."
        )
        self.streak, self.reason, self.epoch, self.batch = streak, reason, epoch, batch
        self.alpha, self.lr = alpha, lr
        self.params = params
        self.checkpoint = checkpoint
        self.remedies = remedies
        self.final = final


def rejections(streak: int) -> str:
    """``"4 consecutive steps were rejected"``, in the singular for one."""
    return "1 step was rejected" if streak == 1 else f"{streak} consecutive steps were rejected"


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
        no place to creep down from), ``jacobian="full"`` after ``"diag"``,
        float64 after float32.
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
    if gtf and config.jacobian == "diag":
        remedies["jacobian"] = "full"
    if config.dtype == "float32":
        remedies["dtype"] = "float64"
    return remedies


def inapplicable_settings(config: "TrainConfig", latent_rnn: bool) -> list[str]:
    """The fields of ``config`` set to a value other than their default that a run with it
    would not use -- the one rule behind the refusals of :class:`TrainConfig`, :func:`fit`
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
        settings); none otherwise. A field at its default is never listed.
    """
    names = unused_fields(config.method, latent_rnn, config.alpha_mode)
    return [
        f.name
        for f in dataclasses.fields(TrainConfig)
        if f.name in names and getattr(config, f.name) != f.default
    ]


def unused_fields(method: str, latent_rnn: bool, alpha_mode: str) -> tuple[str, ...]:
    """The :class:`TrainConfig` fields a run does not use, whatever their values: for a
    latent RNN those of :data:`DEER_SETTINGS` with ``method="sequential"`` and those of
    :data:`AUTO_ALPHA_SETTINGS` with ``alpha_mode="constant"``; for a state-space model those
    of :data:`GTF_SETTINGS`."""
    if not latent_rnn:
        return GTF_SETTINGS
    newton = DEER_SETTINGS if method == "sequential" else ()
    return newton + (AUTO_ALPHA_SETTINGS if alpha_mode == "constant" else ())


def constant_alpha_refusal(given: dict) -> str:
    """The refusal of alpha's re-estimation settings ``given`` (name -> value) with
    ``alpha_mode="constant"``."""
    reason = "alpha_mode='constant' keeps alpha fixed and never re-estimates it"
    return refusal(given, "alpha_mode='auto'", reason) + " or use alpha_mode='auto'."


def _values(config: "TrainConfig", names: list[str]) -> dict:
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
    defaults with ``alpha_mode="constant"`` (alpha is never re-estimated), and :func:`fit`
    refuses for a state-space model every field of
    :data:`GTF_SETTINGS` (``method``, the alpha, Jacobian and Newton settings) other than its
    default.

    Attributes
    ----------
    method : {"deer", "sequential"}
        GTF-DEER (parallel in time) or the sequential BPTT baseline (latent RNNs only;
        :func:`fit` refuses it for a state-space model, which is trained with linear scans).
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
    alpha : float in [0, 1]
        The constant alpha, or the initial one in auto mode.
    alpha_method : {"sup", "geomean", "param_bound"}
        Estimator for auto mode (see :func:`parscan.gtf_alpha`).
    alpha_gamma : float in [0, 1)
        Annealing factor ``gamma`` (auto mode).
    alpha_interval : int
        Re-estimate alpha every this many steps (auto mode).
    jacobian : {"full", "diag"}
        DEER (Newton) or quasi-DEER forward (``method="deer"`` and latent RNNs only).
    noise_level : float >= 0
        Gaussian noise of this standard deviation (relative to each dimension's sd, i.e.
        absolute on standardised data) added to every training window.
    seed : int
        Seed of the window sampler and the noise.
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
        Clip the gradient to this Euclidean norm (None: no clipping).
    l2 : float or dict
        The lab's L2 regularisation weights (:func:`autodiff.regularization.l2_penalty`): one
        lambda, or ``{"A": .., "W": .., "bias": ..}``. 0 disables it.
    max_bad_steps : int
        Stop with :class:`TrainingDivergedError` after this many consecutive rejected steps
        (or at the end of a shorter run none of whose steps was accepted). A run without
        validation data that ends on fewer, or on an accepted step, raises it too when its
        last parameters fail on the training data (:func:`fit`'s final check).
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
        bin, or too many for N, is refused by :func:`fit` (with validation data).
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
        Free runs per candidate in that check.
    selection_steps : int or None
        Their length, at least 10 (None: twice the validation runs', ``2 *
        validation_steps``, or twice the longest validation trajectory's length - 1, and at
        least 10: shorter runs cannot come to rest).
    newton_tol, newton_max_iter : optional
        ``tol`` and ``max_iter`` of :func:`parscan.deer_solve` (its defaults when None;
        ``method="deer"`` and latent RNNs only).
    standardize : bool
        Standardise the data per dimension (mean and sd stored with the model); when False the
        data are used as given.
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
                value_errors.append(f"{name} must be >= {minimum}; got {v}.")

        def real(name, lo, hi, *, lo_open=False, hi_open=False, optional=False):
            v = getattr(self, name)
            if optional and v is None:
                return
            if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
                type_errors.append(f"{name} must be a float; got {type(v).__name__} {v!r}.")
                return
            ok = math.isfinite(v) and (v > lo if lo_open else v >= lo)
            ok = ok and (hi is None or (v < hi if hi_open else v <= hi))
            if not ok:
                rng = f"{'(' if lo_open else '['}{lo}, {hi if hi is not None else 'inf'}"
                rng += ")" if hi_open or hi is None else "]"
                value_errors.append(f"{name} must be finite and in {rng}; got {v!r}.")

        for name, options in _CHOICES.items():
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
        integer("seed", 0)
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
            unknown = sorted(set(l2) - set(GROUPS))
            if unknown:
                value_errors.append(f"l2 has unknown groups {unknown}; valid: {list(GROUPS)}.")
            values = list(l2.values())
        else:
            values = [l2]
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
                type_errors.append(f"l2 weights must be floats; got {type(v).__name__} {v!r}.")
            elif not (math.isfinite(v) and v >= 0):
                value_errors.append(f"l2 weights must be finite and >= 0; got {v!r}.")
        unused = inapplicable_settings(self, latent_rnn=True)
        newton = [name for name in unused if name in DEER_SETTINGS]
        if newton:
            from autodiff.gradients import sequential_refusal

            value_errors.append(sequential_refusal(_values(self, newton)))
        re_estimation = [name for name in unused if name in AUTO_ALPHA_SETTINGS]
        if re_estimation:
            value_errors.append(constant_alpha_refusal(_values(self, re_estimation)))
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
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(
                f"TrainConfig.from_dict: unknown keys {unknown}; valid keys: {sorted(names)}."
            )
        return cls(**d)


@dataclass(frozen=True)
class StepInfo:
    """Passed to ``callback`` after every optimiser step (``kind == "step"``).

    Attributes
    ----------
    epoch, batch, step : int
        0-based epoch, batch within the epoch and global step (this step).
    n_steps : int
        Total steps of the run.
    loss : float
        Data loss of the batch (the GTF or teacher-forced MSE, without the L2 penalty; NaN
        for a rejected step whose forward or alpha estimate failed).
    penalty : float
        L2 penalty of the step's parameters (:func:`autodiff.regularization.l2_penalty`; 0
        when ``config.l2`` is 0 or no gradient was computed). The minimised objective is
        ``loss + penalty``.
    alpha : float
        GTF alpha used (0 for state-space models).
    lr : float
        Learning rate of this step.
    newton_iters_max, newton_iters_mean : int, float
        DEER iterations over the batch (0 for the sequential method and SSMs).
    grad_norm : float
        Gradient norm before clipping.
    accepted : bool
        False when the step was rejected (parameters unchanged); ``reason`` says why.
    reason : str
        Empty for an accepted step, else why it was rejected, in one paragraph:
        ``"alpha estimation failed: ..."``, ``"optimiser step refused: ..."``,
        ``"non-finite loss or gradient"``, or, for a forward or adjoint that failed,
        ``"GTF-DEER failed: "`` (``"sequential BPTT failed: "``) followed by
        :attr:`autodiff.gradients.GradInfo.cause` (what failed, the counts and Newton
        iterations; the remedies of :class:`TrainingDivergedError` are in ``fit``'s terms).
    bad_steps : int
        Consecutive rejected steps so far.
    step_time : float
        Seconds spent in this step.
    steps_per_s : float
        Average rate since this call of :func:`fit` started.
    sequential : bool
        True when the step's GTF-DEER forward diverged and the batch was evaluated by the
        sequential BPTT kernel instead (same loss and gradient; see ``sequential_steps`` in
        :attr:`TrainResult.history`).
    """

    epoch: int
    batch: int
    step: int
    n_steps: int
    loss: float
    penalty: float
    alpha: float
    lr: float
    newton_iters_max: int
    newton_iters_mean: float
    grad_norm: float
    accepted: bool
    reason: str
    bad_steps: int
    step_time: float
    steps_per_s: float
    sequential: bool = False
    kind: str = "step"


@dataclass(frozen=True)
class EpochInfo:
    """Passed to ``callback`` at the end of every epoch (``kind == "epoch"``).

    Attributes
    ----------
    record : dict
        The epoch's entry of :attr:`TrainResult.history`.
    best_epoch : int or None
        Best validated epoch so far (1-based), None before the first validation.
    best_scores : dict or None
        Its validation scores.
    """

    record: dict
    best_epoch: int | None
    best_scores: dict | None
    kind: str = "epoch"


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`fit`.

    Attributes
    ----------
    model : Model
        The selected model: the best-validated parameters when ``validation_data`` was
        given (of those whose long free runs neither come to rest nor blow up:
        ``selection``), else the last ones. Carries the data standardisation.
    last_params : ndarray
        Parameters after the last step.
    best_epoch : int or None
        1-based epoch of the selected model (None without validation): the validated epoch
        with the lowest score, the earliest one among equal finite scores (unless
        ``selection`` passed it over); while every
        validation so far scored inf (diverged free runs), the latest.
    best_scores : dict or None
        ``{"dstsp", "dh", "score", "status"}`` of the selected model.
    history : list of dict
        One record per epoch: ``epoch`` (1-based), ``step``, ``loss`` (mean data loss over
        accepted steps, as :attr:`StepInfo.loss`), ``penalty`` (mean L2 penalty over them, as
        :attr:`StepInfo.penalty`), ``alpha``, ``lr`` (of the epoch's last step),
        ``newton_iters_mean``, ``newton_iters_max``, ``grad_norm_mean``, ``bad_steps``,
        ``sequential_steps`` (accepted steps whose diverging GTF-DEER forward was evaluated
        sequentially instead, :attr:`StepInfo.sequential`),
        ``time`` (seconds in the epoch's optimiser steps, as :attr:`StepInfo.step_time`), and
        when validated ``val_dstsp``, ``val_dh``, ``val_score``, ``val_status`` and
        ``val_time`` (seconds of the validation).
    n_bad_steps : int
        Rejected steps over the whole run.
    alpha : float or None
        Final GTF alpha (None for state-space models).
    config : TrainConfig
    wall_time : float
        Seconds spent in optimiser steps (window sampling, forward, gradient, update), summed
        over resumed sessions: the sum of the history's ``time``, without validation,
        checkpoint writing and callbacks (with the compilation of kernels not yet in the
        on-disk cache, which the first steps of a process trigger).
    checkpoint : pathlib.Path or None
        The final checkpoint (an absolute path), when a directory was given.
    selection : dict or None
        The check of the ``selection_candidates`` (:mod:`autodiff.selection`): ``starts``
        and ``steps`` of its free runs, its ``seconds``, and ``candidates``, one
        ``{"epoch", "score", "at_rest", "blown_up"}`` each, best validation score first
        (``at_rest``: how many of its runs came to rest, ``blown_up``: how many became NaN/inf
        or left 1000 data ranges; :func:`autodiff.selection.select`); None when it was not
        made (fewer than 2 candidates, or validation data that rest).
    """

    model: Model
    last_params: np.ndarray
    best_epoch: int | None
    best_scores: dict | None
    history: list
    n_bad_steps: int
    alpha: float | None
    config: TrainConfig
    wall_time: float
    checkpoint: Path | None = None
    selection: dict | None = None


@dataclass
class _State:
    """Everything that evolves during training besides params, optimiser and RNG (JSON-able).

    ``schedule_steps`` is the length of the learning-rate schedule, ``n_steps`` of the
    configuration that started the run (a resume with other ``epochs`` keeps it)."""

    schedule_steps: int
    step: int = 0
    alpha: float = 0.0
    bad_streak: int = 0
    n_bad_total: int = 0
    force_alpha_estimate: bool = False
    epoch_pending: bool = False
    wall_time: float = 0.0
    best_epoch: int | None = None
    best_scores: dict | None = None
    epoch_acc: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    #: ``{"epoch", "scores"}`` of the best-validated epochs (finite scores), best first, at
    #: most ``selection_candidates``; their parameters are ``candidate_params``
    candidates: list = field(default_factory=list)

    def copy(self) -> "_State":
        new = dataclasses.replace(self)
        new.epoch_acc = dict(self.epoch_acc)
        new.history = list(self.history)
        new.candidates = list(self.candidates)
        return new


def _new_epoch_acc() -> dict:
    return {
        "loss_sum": 0.0,
        "penalty_sum": 0.0,
        "n_ok": 0,
        "newton_sum": 0.0,
        "newton_max": 0,
        "grad_norm_sum": 0.0,
        "bad": 0,
        "sequential": 0,
        "time": 0.0,
    }


@dataclass(frozen=True)
class _Snapshot:
    """A consistent copy of the whole training state after a completed step."""

    params: np.ndarray
    optimizer: dict
    rng_state: dict
    state: _State
    best_params: np.ndarray | None
    candidate_params: np.ndarray


def _training_data(model, data, config) -> tuple[np.ndarray, list[int]]:
    """``data`` checked -- one trajectory, or several
    (:func:`models.data.several_trajectories`), each with at least ``sequence_length + 1``
    steps -- as one concatenated ``(T_total, N)`` array, and the trajectories' lengths."""
    where = "fit"
    check_trajectory_or_list(data, where, "data")
    if not several_trajectories(data):
        data = check_trajectory(data, where, name="data", n_obs=model.n_obs)
        _check_window_room([data.shape[0]], config.sequence_length, several=False)
        return data, [data.shape[0]]
    # a column may be constant within one trajectory, not in all of them together
    pieces = [
        check_trajectory(x, where, name=f"data[{k}]", constant=True, n_obs=model.n_obs)
        for k, x in enumerate(data)
    ]
    lengths = [x.shape[0] for x in pieces]
    _check_window_room(lengths, config.sequence_length, several=True)
    joined = np.concatenate(pieces)
    check_trajectory(joined, where, name="data (the trajectories together)", n_obs=model.n_obs)
    return joined, lengths


def _check_window_room(lengths: list[int], T: int, several: bool) -> None:
    """Refuse trajectories (of ``lengths``) shorter than a window of ``T + 1`` steps."""
    short = [k for k, n in enumerate(lengths) if n < T + 1]
    if not short:
        return
    if several:
        got = ", ".join(f"data[{k}] has {lengths[k]}" for k in short)
        fix = f"Drop {'it' if len(short) == 1 else 'them'} or lower"
    else:
        got, fix = f"got {lengths[0]}", "Lower"
    raise ValueError(
        f"fit: windows of sequence_length + 1 = {T + 1} steps need at least that many data "
        f"points{' in every trajectory' * several}; {got}. {fix} sequence_length to at most "
        f"{min(lengths) - 1}."
    )


def window_starts(lengths: list[int], T: int) -> np.ndarray:
    """First rows, in the concatenated data, of every window of ``T + 1`` steps that lies
    within one trajectory (``lengths``: the trajectories' lengths, each at least ``T + 1``);
    for one trajectory ``0 .. lengths[0] - T - 1``."""
    first = np.cumsum([0, *lengths[:-1]])
    return np.concatenate([f + np.arange(n - T) for f, n in zip(first, lengths, strict=True)])


def _check_data(model, data, validation_data, config):
    """``data`` and ``validation_data`` checked: ``(data, lengths, validation_data)`` with the
    training data as by :func:`_training_data` and the validation data as by
    :func:`_validation_data` (None when not given)."""
    data, lengths = _training_data(model, data, config)
    if validation_data is not None:
        validation_data = _validation_data(model, validation_data, config)
    return data, lengths, validation_data


def _validation_data(model, validation_data, config):
    """``validation_data`` checked -- one trajectory, or several
    (:func:`models.data.several_trajectories`), each one :func:`_validate` can score
    (:func:`_check_validation_length`) -- as one array, or a list of arrays (several; a list
    of one included)."""
    from models.metrics import check_n_bins

    check_trajectory_or_list(validation_data, "fit", "validation_data")
    checked = []
    for name, x in _named_validation(validation_data):
        x = check_trajectory(x, "fit", name=name, min_steps=2, n_obs=model.n_obs)
        _check_validation_length(x, name, config.validation_steps)
        checked.append(x)
    check_n_bins(config.validation_n_bins, model.n_obs, where="fit", fix="lower validation_n_bins")
    return checked if several_trajectories(validation_data) else checked[0]


def _named_validation(validation_data) -> list[tuple[str, object]]:
    """``(name, trajectory)`` of each validation trajectory, named as messages name it:
    ``validation_data``, or ``validation_data[k]`` when several
    (:func:`models.data.several_trajectories`)."""
    if several_trajectories(validation_data):
        return [(f"validation_data[{k}]", x) for k, x in enumerate(validation_data)]
    return [("validation_data", validation_data)]


def _check_validation_length(x, name, validation_steps):
    """Raise unless :func:`_validate` can score runs on the validation trajectory ``x`` (named
    ``name``): the free runs start at its points and are compared with ``x[1:]`` (D_stsp) and
    with its first ``min(validation_steps, T_val - 1)`` points (D_H), each needing
    ``MIN_SCORED_STEPS`` points without a constant dimension."""
    where = "fit"
    n_val = x.shape[0]
    if n_val - 1 < MIN_SCORED_STEPS:
        raise ValueError(
            f"{where}: {name} needs at least {MIN_SCORED_STEPS + 1} time steps (the free runs "
            f"are scored against {name}[1:], and D_stsp and D_H need {MIN_SCORED_STEPS} "
            f"points); got {n_val}. Pass a longer validation trajectory or "
            "validation_data=None."
        )
    length = n_val - 1 if validation_steps is None else min(validation_steps, n_val - 1)
    check_trajectory(
        x[1 : 1 + length],
        where,
        name=f"{name}[1:{1 + length}] (the part the validation runs are scored on)",
        min_steps=MIN_SCORED_STEPS,
    )


def _check_validation_resolution(validation_data, validation_steps, n_bins):
    """Warn once, in ``fit``'s terms, when the validation runs are too short for a binned
    D_stsp with ``n_bins`` bins per axis against the validation points after the first
    (:func:`models.metrics.check_dstsp_resolution`; several validation trajectories: one run
    from each scored together against all of them, as :func:`models.metrics.evaluate` scores
    them), or for D_H's smoothing (:func:`models.metrics.check_dh_resolution`; several: the
    shortest comparison, naming its trajectory); :func:`_validate` then scores without
    repeating them."""
    from models.metrics import DH_SMOOTHING, check_dh_resolution, check_dstsp_resolution

    named = _named_validation(validation_data)
    points = [x.shape[0] - 1 if validation_steps is None else validation_steps for _, x in named]
    if several_trajectories(validation_data):
        fix = (
            f"D_stsp scores one validation run from each of the {len(named)} validation "
            "trajectories together, validation_steps points each "
            "(None: len(validation_data[k]) - 1); pass longer or more validation trajectories "
            "or raise validation_steps, or lower validation_n_bins"
        )
    else:
        fix = (
            "each validation run scores validation_steps points "
            "(None: len(validation_data) - 1); pass a longer validation_data or raise "
            "validation_steps, or lower validation_n_bins"
        )
    reference = np.concatenate([x[1:] for _, x in named]) if len(named) > 1 else named[0][1][1:]
    # stacklevel 3: the warnings point at the user's call of fit (this helper, fit, its caller)
    check_dstsp_resolution(
        sum(points), reference, where="fit", fix=fix, n_bins=n_bins, stacklevel=3
    )
    compared = [min(n, x.shape[0] - 1) for (_, x), n in zip(named, points, strict=True)]
    shortest = int(np.argmin(compared))
    name = named[shortest][0]
    fix = (
        f"each validation run compares min(validation_steps, len({name}) - 1) points; "
        f"pass a longer {name} or raise validation_steps"
    )
    check_dh_resolution(compared[shortest], DH_SMOOTHING, where="fit", fix=fix, stacklevel=3)


def _validate(model, validation_data, steps, starts, n_bins):
    """Free-run score on the validation trajectory, or trajectories (a list of them), by
    :func:`models.metrics.evaluate`: mean D_stsp (``n_bins`` bins per axis) + D_H over
    ``starts`` runs from each trajectory, at most as many as the shortest one has points
    (several: D_stsp of the i-th runs from all together against all of them, D_H the mean over
    them); inf when not measurable. Their resolution was checked once, at the start
    (:func:`_check_validation_resolution`)."""
    from models.metrics import SpectrumResolutionWarning, StateSpaceResolutionWarning, evaluate

    starts = min(starts, *(x.shape[0] for _, x in _named_validation(validation_data)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StateSpaceResolutionWarning)
        warnings.simplefilter("ignore", SpectrumResolutionWarning)
        out = evaluate(
            model,
            validation_data,
            n_steps=steps,
            n_starts=starts,
            measures=("dstsp", "dh"),
            n_bins=n_bins,
        )
    if out["status"] != "ok":
        return {"dstsp": None, "dh": None, "score": math.inf, "status": out["status"]}
    return {
        "dstsp": out["dstsp"],
        "dh": out["dh"],
        "score": out["dstsp"] + out["dh"],
        "status": "ok",
    }


def _loss_and_grad(model, windows, alpha, config):
    """One batch: ``(loss, grad or None, newton (max, mean), reason-if-failed, sequential)``.

    A GTF-DEER forward whose Newton iterates blew up (``DeerStatus.DIVERGING``, plain DEER's
    failure on unstable dynamics: the forced recursion itself may well be finite) is
    evaluated by the fused sequential BPTT kernel instead, at the same alpha -- the same
    loss and gradient, so the step is taken, not rejected (``sequential`` True; models
    without the fused kernels are rejected as before). A forward out of Newton iterations
    (``newton_max_iter``) stays a rejected step."""
    if not isinstance(model, LatentRNN):
        from autodiff.ssm_gradients import ssm_loss_and_grad

        loss, grad, _ = ssm_loss_and_grad(model, windows, backend=config.backend)
        return loss, grad, (0, 0.0), "", False
    from autodiff.gradients import gtf_loss_and_grad

    loss, grad, info = gtf_loss_and_grad(
        model,
        windows,
        alpha=alpha,
        method=config.method,
        jacobian=config.jacobian,
        backend=config.backend,
        throw=False,
        tol=config.newton_tol,
        max_iter=config.newton_max_iter,
    )
    newton = (info.newton_iters_max, info.newton_iters_mean)
    method = "GTF-DEER" if config.method == "deer" else "sequential BPTT"
    sequential = info.status is DeerStatus.DIVERGING and hasattr(model, "step_functions_jit")
    if sequential:
        loss, grad, info = gtf_loss_and_grad(
            model, windows, alpha=info.alpha, method="sequential", throw=False
        )
        method = "GTF-DEER diverged and its sequential fallback"
    if not info.converged:  # a forward that failed, or an adjoint that overflowed
        return loss, None, newton, f"{method} failed: {info.cause}", sequential
    return loss, grad, newton, "", sequential


@dataclass
class _Start:
    """Everything :func:`fit` starts from, checked: the model in the training dtype (with its
    standardisation), the training data in its units (the trajectories concatenated) and the
    validation data (one array, or a list of them), the trajectories' lengths and
    fingerprints (:func:`autodiff.fingerprint.fingerprint`, of each of
    :data:`~autodiff.fingerprint.FINGERPRINTED` concatenated), and the (resumed) optimiser,
    training state and window-sampling RNG."""

    model: Model
    data: np.ndarray
    validation_data: np.ndarray | list[np.ndarray] | None
    #: name (of :data:`FINGERPRINTED`) -> the lengths of its trajectories, None when not given
    lengths: dict
    fingerprints: dict
    checkpoint_file: Path | None
    optimizer: object
    state: _State
    rng: np.random.Generator
    best_params: np.ndarray | None = None
    candidate_params: np.ndarray | None = None


def _prepare(model, data, config, callback, checkpoint_dir, resume, validation_data) -> _Start:
    """Check fit's arguments (and the checkpoint it resumes) and build its starting point;
    writes nothing."""
    if not isinstance(config, TrainConfig):
        raise TypeError(f"fit: config must be a TrainConfig; got {type(config).__name__}.")
    if not isinstance(model, Model):
        raise TypeError(f"fit: model must be a parscan model; got {type(model).__name__}.")
    _check_params(model, config.dtype)
    unused = [] if isinstance(model, LatentRNN) else inapplicable_settings(config, latent_rnn=False)
    if unused:
        reason = (
            f"a {type(model).__name__} is trained by teacher-forced linear scans, without GTF "
            "or Newton iterations"
        )
        scans = " (backend='sequential' runs the scans sequentially)" * ("method" in unused)
        raise ValueError(
            "fit: "
            + refusal(_values(config, unused), "the latent RNNs (GTF-DEER)", reason)
            + f"{scans}."
        )
    from autodiff.gradients import cuda_problems

    cuda = cuda_problems(model, config.method, config.backend)
    if cuda:
        raise ValueError("fit: " + " ".join(cuda))
    resume = check_bool(resume, "resume", "fit")
    if resume and checkpoint_dir is None:
        raise ValueError("fit: resume=True needs checkpoint_dir (where the checkpoint is).")
    if callback is not None and not callable(callback):
        raise TypeError(f"fit: callback must be callable; got {type(callback).__name__}.")
    several = several_trajectories(data)
    data, lengths, validation_data = _check_data(model, data, validation_data, config)
    ckpt_file = None
    if checkpoint_dir is not None:
        ckpt_file = checkpoint_path(_check_checkpoint_dir(checkpoint_dir))
    if ckpt_file is not None and ckpt_file.exists() and not resume:
        raise ValueError(
            f"fit: {ckpt_file} already exists; pass resume=True to continue that run or choose "
            "an empty checkpoint_dir."
        )

    given = {"data": (data, lengths), "validation_data": _joined(validation_data)}
    fingerprints = {
        name: None if given[name] is None else fingerprint(given[name][0]) for name in FINGERPRINTED
    }
    model = model.astype(config.dtype)
    dtype = model.dtype
    units = data
    if config.standardize:
        units, mean, sd = standardize(data)
        model.standardization = (mean, sd)
    names = [f"data[{k}]" for k in range(len(lengths))] if several else ["data"]
    data = _in_training_dtype(units, data, names, lengths, config)

    def in_training_units(name, x):
        """A validation trajectory standardised like the data, in the training dtype."""
        units = (x - mean) / sd if config.standardize else x
        return _in_training_dtype(units, x, [name], [x.shape[0]], config)

    if validation_data is not None:
        named = _named_validation(validation_data)
        converted = [in_training_units(name, x) for name, x in named]
        validation_data = converted if isinstance(validation_data, list) else converted[0]
    start = _Start(
        model=model,
        data=data,
        validation_data=validation_data,
        lengths={name: None if given[name] is None else given[name][1] for name in FINGERPRINTED},
        fingerprints=fingerprints,
        checkpoint_file=ckpt_file,
        optimizer=make_optimizer(config.optimizer, model.n_params, dtype=dtype),
        state=_State(
            schedule_steps=config.n_steps, alpha=float(config.alpha), epoch_acc=_new_epoch_acc()
        ),
        rng=np.random.Generator(np.random.PCG64(config.seed)),
    )
    if resume:
        _resume_from(start, load_checkpoint(ckpt_file, "fit"), config)
    return start


def _check_params(model, dtype: str) -> None:
    """Refuse a ``model`` whose parameters are NaN/inf or overflow the training ``dtype``
    (``config.dtype``) to inf, naming :func:`fit` and the first such index: training could
    not start from them (``model.astype(dtype)`` would refuse them in its own name)."""
    params = model.params
    with np.errstate(over="ignore"):
        bad = ~np.isfinite(params.astype(dtype, copy=False))
    if not bad.any():
        return
    first = int(np.argmax(bad))
    value = params[first]
    if not np.isfinite(value):
        raise ValueError(
            f"fit: model.params contains NaN or inf (first at index {first}: {value}); "
            "training cannot start from it. Re-initialise the model (model.init(seed)) or set "
            "finite parameters (model.set_params)."
        )
    raise ValueError(
        f"fit: model.params[{first}] = {value:.6g} {_beyond(dtype)}. Pass "
        "TrainConfig(dtype='float64') or rescale the parameters."
    )


def _beyond(dtype: str) -> str:
    """Why a value is refused that ``dtype``, the training dtype, would make inf."""
    return (
        f"is beyond the range of {dtype}, the training dtype (config.dtype; largest finite "
        f"value {np.finfo(dtype).max:.6g}): it would become inf"
    )


def _in_training_dtype(units, given, names, lengths, config) -> np.ndarray:
    """``units`` -- checked trajectories in the training units (standardised when
    ``config.standardize``), concatenated, of ``lengths``, named ``names``; ``given``: the
    same as given -- in ``config.dtype``, refused (naming the first value, its trajectory,
    row and column, and the fixes) when a value would become inf there."""
    with np.errstate(over="ignore"):
        cast = np.ascontiguousarray(units, dtype=config.dtype)
    if np.all(np.isfinite(cast)):
        return cast
    at, col = divmod(int(np.argmin(np.isfinite(cast))), cast.shape[1])
    k = int(np.searchsorted(np.cumsum(lengths), at, "right"))
    what = f"{names[k]}[{at - sum(lengths[:k])}, {col}] = {given[at, col]:.6g}"
    if config.standardize:  # standardised, only validation data can be that far out
        what += f" (standardised with the training data's mean and sd: {units[at, col]:.6g})"
        fixes = ["validation_data in the units of data"]
    else:
        fixes = ["TrainConfig(standardize=True)"]
    if config.dtype == "float32":
        fixes.append("TrainConfig(dtype='float64')")
    raise ValueError(f"fit: {what} {_beyond(config.dtype)}. Pass {' or '.join(fixes)}.")


def _joined(validation_data) -> tuple[np.ndarray, list[int]] | None:
    """``(joined, lengths)``: the checked ``validation_data`` (one array, or a list of them) as
    one array, the trajectories concatenated, and their lengths; None when it is None."""
    if validation_data is None:
        return None
    pieces = [x for _, x in _named_validation(validation_data)]
    joined = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
    return joined, [x.shape[0] for x in pieces]


def _check_checkpoint_dir(checkpoint_dir) -> Path:
    """``checkpoint_dir`` as an absolute Path (a relative one resolved against the working
    directory now, so that a later ``os.chdir`` moves no checkpoint); refused unless it is a
    writable directory or can be created as one (its nearest existing ancestor is a writable
    directory), and when it holds a NUL byte or a name the file system refuses (e.g. one too
    long). Creates nothing."""
    directory = check_path(checkpoint_dir, "fit", "checkpoint_dir")
    if "\0" in str(directory):  # os functions would raise a ValueError naming no path
        raise ValueError(f"fit: checkpoint_dir {str(directory)!r} contains a NUL byte; remove it.")
    try:
        existing = directory = directory.absolute()
        while not existing.exists() and existing.parent != existing:
            if existing.is_symlink():
                raise ValueError(
                    f"fit: checkpoint_dir {directory} cannot be created: {existing} is a "
                    "symbolic link to a missing target. Create the target or pass another "
                    "directory."
                )
            existing = existing.parent
        is_dir = existing.is_dir()
    except OSError as exc:  # e.g. a name too long for the file system
        raise ValueError(
            f"fit: checkpoint_dir {directory} is not a usable path ({exc.strerror or exc}). "
            "Pass another directory."
        ) from None
    if not is_dir:
        problem = (
            "is not a directory"
            if existing == directory
            else f"cannot be created: {existing} is not a directory"
        )
        raise ValueError(
            f"fit: checkpoint_dir {directory} {problem}. Pass a directory (it is created if "
            "missing)."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(
            f"fit: checkpoint_dir {directory} is not writable (no write permission on "
            f"{existing}). Choose a writable directory."
        )
    return directory


def _try_checkpoint_dir(directory: Path) -> None:
    """Create ``directory`` and write and remove a file in it, so that a place where no
    checkpoint can be written although the permissions checked by
    :func:`_check_checkpoint_dir` allow it (a read-only or virtual file system such as
    ``/proc``, whose permissions do not stop root) fails before the first step, not at the
    first checkpoint. Raises :func:`models.base.reworded_os_error` of the failed operation."""
    action = "create"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        action = "write a file in"
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".fit-probe-"):
            pass
    except OSError as exc:
        raise reworded_os_error(
            exc,
            f"fit: cannot {action} checkpoint_dir {directory} ({exc.strerror or exc}). "
            "Choose a writable directory.",
        ) from None


def _resume_from(start: _Start, ckpt: dict, config) -> None:
    """Load a checkpoint's parameters, optimiser, RNG and training state into ``start``,
    refusing a checkpoint of another model, configuration or data, and a damaged one."""
    path = ckpt["path"]
    _check_architecture(ckpt, start.model)
    try:
        saved_config, saved_fingerprints, saved_lengths = _load_run(start, ckpt)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise damaged(path, f"{type(exc).__name__}: {exc}", "fit") from None
    _check_config(saved_config, config, path)
    _check_same_data(saved_fingerprints, saved_lengths, start, path)  # names what differs
    if config.standardize:  # (older checkpoints fingerprint sampled rows only)
        saved_mean, saved_sd = ckpt["standardization"]
        mean, sd = start.model.standardization
        if not (np.allclose(saved_mean, mean) and np.allclose(saved_sd, sd)):
            raise ValueError(
                "fit: the data's mean/sd differ from the checkpoint's; resume with the "
                "training data of the interrupted run."
            )
        start.model.standardization = (saved_mean, saved_sd)
    if start.state.step > config.n_steps:
        done = -(-start.state.step // config.batches_per_epoch)
        raise ValueError(
            f"fit: the checkpoint at {path} has trained {done} epochs, more than the "
            f"{config.epochs} asked for; resume with {done} epochs or more."
        )


def _check_architecture(ckpt, model):
    """Refuse a checkpoint of another model class, hyperparameters, dtype or seed, naming
    what differs."""
    saved, given = ckpt["hyperparameters"], model.hyperparameters()
    if ckpt["model_class"] != type(model).__name__:
        found = (
            f"a model of class {ckpt['model_class']} {saved}, not the {type(model).__name__} "
            f"{given} given"
        )
    elif saved != given:
        differ = [key for key in {**saved, **given} if saved.get(key) != given.get(key)]
        found = f"a {ckpt['model_class']} with " + ", ".join(
            f"{key}={saved.get(key)!r} (the model given: {given.get(key)!r})" for key in differ
        )
    else:
        return
    raise ValueError(
        f"fit: the checkpoint at {ckpt['path']} holds {found}. Resume with a model like the "
        "one the run started with (class, hyperparameters, dtype and seed)."
    )


def _check_config(saved: "TrainConfig", config: "TrainConfig", path):
    """Refuse a resume that changes a setting outside :data:`RESUMABLE_CHANGES`."""
    diff = [
        f.name
        for f in dataclasses.fields(TrainConfig)
        if f.name not in RESUMABLE_CHANGES and getattr(saved, f.name) != getattr(config, f.name)
    ]
    if diff:
        changes = ", ".join(f"{k}: {getattr(saved, k)!r} -> {getattr(config, k)!r}" for k in diff)
        raise ValueError(
            f"fit: cannot resume the run in {path} with a different configuration ({changes}); "
            f"only {sorted(RESUMABLE_CHANGES)} may change. Start a new run instead."
        )


def _check_same_data(saved: dict, saved_lengths: dict, start: _Start, path):
    """Refuse a resume whose training or validation data are not those of the saved run:
    ``saved`` and ``saved_lengths`` are its fingerprints
    (:func:`autodiff.fingerprint.fingerprint` of the trajectories concatenated) and trajectory
    lengths, for each of :data:`~autodiff.fingerprint.FINGERPRINTED` (None: no validation
    data), to compare with those of ``start``."""
    for name in FINGERPRINTED:
        before, after = saved[name], start.fingerprints[name]
        if before is None and after is None:
            continue
        if before is None:
            raise ValueError(
                f"fit: the run in {path} was trained without validation_data; resume without "
                "it, or start a new run to validate."
            )
        lengths0, lengths1 = saved_lengths[name], start.lengths[name]
        if after is None:
            given = (
                f"validation_data of shape {tuple(before[0])}"
                if len(lengths0) == 1
                else f"{len(lengths0)} validation trajectories of {lengths0} steps"
            )
            raise ValueError(
                f"fit: the run in {path} was validated on {given} and selects its best model "
                "on it; resume with that validation_data."
            )
        if lengths0 != lengths1 and max(len(lengths0), len(lengths1)) > 1:
            what = f"trajectories of {lengths0} steps -> {lengths1}"
        elif before.shape != after.shape:
            what = f"shape {tuple(before.shape)} -> {tuple(after.shape)}"
        elif rows := first_difference(before, after):
            what = "same shape, different values " + _rows_named(rows, name, lengths1)
        else:
            continue
        raise ValueError(
            f"fit: {name} differs from the {name} of the run in {path} ({what}); resume with "
            f"the {name} of that run, or start a new run."
        )


def _rows_named(rows: tuple[int, int], name: str, lengths: list[int]) -> str:
    """``"at row 5"``, ``"in rows 1200-1300"`` of the data ``name`` made of trajectories of
    ``lengths`` concatenated, naming the trajectory when several (``"in rows 3-9 of
    data[1]"``, ``"in rows 998 of data[0] to 4 of data[1]"``)."""
    ends = np.cumsum(lengths)
    where = []
    for row in rows:
        k = int(np.searchsorted(ends, row, "right"))
        where.append((row - (ends[k - 1] if k else 0), f" of {name}[{k}]" * (len(lengths) > 1)))
    (first, in_first), (last, in_last) = where
    if rows[0] == rows[1]:
        return f"at row {first}{in_first}"
    if in_first == in_last:
        return f"in rows {first}-{last}{in_first}"
    return f"in rows {first}{in_first} to {last}{in_last}"


def _load_run(start: _Start, ckpt: dict) -> tuple["TrainConfig", dict, dict]:
    """Put a checkpoint's parameters, optimiser, RNG state, training state and best
    parameters into ``start`` (and its model), each checked alone and against the others;
    return the checkpoint's configuration, and the fingerprints and trajectory lengths of its
    training and validation data (:func:`autodiff.fingerprint.saved_fingerprint`,
    :func:`_saved_lengths`). Raises KeyError, TypeError or ValueError for a damaged
    checkpoint (:func:`_resume_from` reports them as one)."""
    model, meta, arrays = start.model, ckpt["state"], ckpt["arrays"]
    if not isinstance(meta, dict):
        raise TypeError(f"the training state must be a JSON object; got {type(meta).__name__}")
    config = _saved_config(meta["config"], isinstance(model, LatentRNN))
    stored = ckpt["standardization"] is not None
    if stored != config.standardize:
        raise ValueError(
            f"its config has standardize={config.standardize} but it stores "
            f"{'a' if stored else 'no'} standardisation"
        )
    state = _saved_state(meta["train_state"], config.batches_per_epoch)
    start.rng.bit_generator.state = meta["rng_state"]
    optimizer = OPTIMIZERS[config.optimizer].from_state_dict(ckpt["optimizer"])
    accepted = state.step - state.n_bad_total
    found = (optimizer.n_params, optimizer.dtype, optimizer.t)
    if found != (model.n_params, model.dtype, accepted):
        raise ValueError(
            f"the optimiser state has {optimizer.n_params} {optimizer.dtype} parameters and "
            f"t={optimizer.t}; expected {model.n_params} {model.dtype} and t={accepted} (the "
            "accepted steps)"
        )
    model.set_params(_saved_params(ckpt["params"], "params", model))
    best = arrays.get("best_params")
    if (best is None) != (state.best_epoch is None):
        raise ValueError("best_params must be stored exactly when a best epoch is")
    candidates = arrays.get("candidate_params")
    if candidates is None and "candidates" not in meta["train_state"] and best is not None:
        # written before candidates existed: the best epoch is the one candidate
        if math.isfinite(state.best_scores["score"]):
            state.candidates = [{"epoch": state.best_epoch, "scores": state.best_scores}]
            candidates = best[None]
    n = len(state.candidates)
    if (candidates is None) != (n == 0) or (
        candidates is not None
        and not (
            isinstance(candidates, np.ndarray)
            and candidates.shape == (n, model.n_params)
            and candidates.dtype == model.dtype
            and np.all(np.isfinite(candidates))
        )
    ):
        raise ValueError(
            f"candidate_params must be a finite {model.dtype} array of shape ({n}, "
            f"{model.n_params}), one row per candidate"
        )
    fingerprints = {name: saved_fingerprint(meta, arrays, name) for name in FINGERPRINTED}
    if fingerprints["data"] is None:
        raise ValueError("the data fingerprint is missing")
    lengths = {name: _saved_lengths(meta, name, fingerprints[name]) for name in FINGERPRINTED}
    if state.best_epoch is not None and fingerprints["validation_data"] is None:
        raise ValueError("a best epoch is stored for a run without validation_data")
    start.state, start.optimizer = state, optimizer
    start.best_params = None if best is None else _saved_params(best, "best_params", model)
    start.candidate_params = candidates
    return config, fingerprints, lengths


def _saved_config(d, latent_rnn: bool) -> "TrainConfig":
    """The checkpoint's configuration: every field of :class:`TrainConfig`, valid. Fields added
    since (:data:`_LATER_FIELDS`: a checkpoint written before them) and fields the run did
    not use (:func:`inapplicable_settings`: a checkpoint written before they were refused)
    are read as their defaults, which a resume must then pass."""
    fields = dataclasses.fields(TrainConfig)
    names = {f.name for f in fields}
    if not isinstance(d, dict) or not names - set(_LATER_FIELDS) <= set(d) <= names:
        raise ValueError(
            "the stored config must have the fields of TrainConfig (those added since, "
            f"{', '.join(_LATER_FIELDS)}, may be missing) and no others"
        )
    method = d["method"] if d["method"] in _CHOICES["method"] else "deer"
    unused = inapplicable_settings(SimpleNamespace(**{**d, "method": method}), latent_rnn)
    return TrainConfig.from_dict({**d, **{f.name: f.default for f in fields if f.name in unused}})


def _saved_params(x, name, model) -> np.ndarray:
    """A stored parameter vector: ``model``'s dtype and length, finite."""
    if not (isinstance(x, np.ndarray) and x.dtype == model.dtype and x.shape == (model.n_params,)):
        raise ValueError(f"{name} must be a {model.dtype} array of shape ({model.n_params},)")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} are not finite")
    return x


def _saved_lengths(meta, name, fingerprint) -> list[int] | None:
    """The stored lengths of the trajectories ``name`` (see :data:`FINGERPRINTED`) whose
    stored fingerprint is ``fingerprint``: None when it is (no such data); one trajectory when
    a checkpoint written before several were accepted stores none."""
    key = f"{name}_lengths"
    if fingerprint is None:
        if meta.get(key) is not None:
            raise ValueError(f"{key} are stored for a run without {name}")
        return None
    n_total = fingerprint.shape[0]
    lengths = meta.get(key, [n_total])
    if not (
        isinstance(lengths, list)
        and all(is_count(n, 2) for n in lengths)
        and sum(lengths) == n_total
    ):
        raise ValueError(
            f"the {name} lengths {lengths!r} are not trajectory lengths (each >= 2) adding up "
            f"to the {name}'s {n_total} rows"
        )
    return lengths


#: bound of the stored reals that must be finite (JSON numbers may be inf or NaN)
_FLOAT_MAX = sys.float_info.max


def _is_real(x, lo=0.0, hi=math.inf) -> bool:
    """A Python int/float (JSON number) in ``[lo, hi]`` (NaN never is)."""
    return isinstance(x, int | float) and not isinstance(x, bool) and lo <= x <= hi


def _saved_state(d, batches_per_epoch: int) -> _State:
    """The checkpoint's training state, each field checked and the counters consistent."""
    names = {f.name for f in dataclasses.fields(_State)}
    if not isinstance(d, dict) or set(d) - {"candidates"} != names - {"candidates"}:
        raise ValueError(
            f"train_state must have exactly the keys {sorted(names)} (candidates may be "
            "missing: a checkpoint written before it existed)"
        )
    if isinstance(d.get("epoch_acc"), dict):  # written before sequential fallbacks were counted
        d["epoch_acc"].setdefault("sequential", 0)
    s = _State(**d)
    scores = s.best_scores
    checks = {
        "schedule_steps": is_count(s.schedule_steps, 1),
        "step": is_count(s.step),
        "bad_streak": is_count(s.bad_streak),
        "n_bad_total": is_count(s.n_bad_total),
        "alpha": _is_real(s.alpha, 0.0, 1.0),
        "wall_time": _is_real(s.wall_time, 0.0, _FLOAT_MAX),
        "force_alpha_estimate": isinstance(s.force_alpha_estimate, bool),
        "epoch_pending": isinstance(s.epoch_pending, bool),
        "best_epoch": s.best_epoch is None or is_count(s.best_epoch, 1),
        "best_scores": (scores is None) == (s.best_epoch is None)
        and (scores is None or (isinstance(scores, dict) and _is_real(scores.get("score")))),
        "epoch_acc": isinstance(s.epoch_acc, dict)
        and set(s.epoch_acc) == set(_new_epoch_acc())
        and all(_is_real(v, 0.0, _FLOAT_MAX) for v in s.epoch_acc.values()),
        "history": isinstance(s.history, list)
        and all(_is_record(r, k + 1, batches_per_epoch) for k, r in enumerate(s.history)),
        "candidates": isinstance(s.candidates, list)
        and all(
            isinstance(c, dict)
            and set(c) == {"epoch", "scores"}
            and is_count(c["epoch"], 1)
            and isinstance(c["scores"], dict)
            and _is_real(c["scores"].get("score"), 0.0, _FLOAT_MAX)
            for c in s.candidates
        ),
    }
    bad = [name for name, ok in checks.items() if not ok]
    if bad:
        raise ValueError(f"train_state has invalid {', '.join(bad)}")
    epochs_done = s.step // batches_per_epoch - s.epoch_pending
    if (
        len(s.history) != epochs_done
        or (s.epoch_pending and s.step % batches_per_epoch != 0)
        or not s.bad_streak <= s.n_bad_total <= s.step
        or (s.best_epoch is not None and s.best_epoch > epochs_done)
        or any(c["epoch"] > epochs_done for c in s.candidates)
    ):
        raise ValueError(
            f"train_state is inconsistent: step {s.step}, {len(s.history)} epochs recorded, "
            f"epoch_pending={s.epoch_pending}, bad steps {s.bad_streak} in a row of "
            f"{s.n_bad_total}, best epoch {s.best_epoch}, candidate epochs "
            f"{[c['epoch'] for c in s.candidates]}"
        )
    return s


def _is_record(r, epoch: int, batches_per_epoch: int) -> bool:
    """A history record of epoch ``epoch`` (1-based; :attr:`TrainResult.history`): its
    ``epoch`` and ``step``, and numbers (None where there is none) but for ``val_status``, a
    string."""
    return (
        isinstance(r, dict)
        and is_count(r.get("epoch"))
        and r["epoch"] == epoch
        and is_count(r.get("step"))
        and r["step"] == epoch * batches_per_epoch
        and all(
            isinstance(v, str)
            if k == "val_status"
            else v is None or (isinstance(v, int | float) and not isinstance(v, bool))
            for k, v in r.items()
        )
    )


def check_fit(model, data, config=None, *, checkpoint_dir=None, resume=False, validation_data=None):
    """Raise what :func:`fit` would raise for these arguments before training; train nothing,
    write nothing.

    A caller that creates files around a run (the CLI writes ``args.json``) checks first, so a
    refused run (bad data, an unusable ``checkpoint_dir``, a resume with another
    configuration or other data, a damaged checkpoint) leaves the run folder as it was.
    Every check :func:`fit` makes before its first step is made, except that of its
    ``callback`` and its trial write in ``checkpoint_dir`` (this function writes nothing, so
    it checks the permissions only: a read-only or virtual file system that they allow
    passes here and fails in :func:`fit`, with an ``OSError``); an error only a training step
    meets is not found (``backend="cuda"`` without a GPU, or beyond the dense scans' ``M``, is
    found). It warns of nothing
    (:func:`fit` warns of validation runs too short for D_stsp's bins or D_H's smoothing).

    Parameters
    ----------
    model, data, config, checkpoint_dir, resume, validation_data
        As for :func:`fit`.

    Raises
    ------
    TypeError, ValueError
        Those :func:`fit` raises before its first step (messages start with ``fit:``).
    """
    config = TrainConfig() if config is None else config
    _prepare(model, data, config, None, checkpoint_dir, resume, validation_data)


def fit(
    model,
    data,
    config=None,
    *,
    callback=None,
    checkpoint_dir=None,
    resume=False,
    validation_data=None,
):
    """Train a model on a trajectory (or several); return the selected model and the run's
    history.

    Parameters
    ----------
    model : models.base.Model
        A latent RNN (trained with the GTF loss, :func:`autodiff.gtf_loss_and_grad`) or a
        state-space model (teacher-forced loss, :func:`autodiff.ssm_loss_and_grad`; a config
        whose ``method``, alpha, Jacobian or Newton settings differ from their defaults is
        refused, :func:`inapplicable_settings`). Not modified: training works on
        ``model.astype(config.dtype)``, returned in the result -- so the result has
        ``config.dtype`` (float32 by default) whatever ``model.dtype`` is; pass
        ``TrainConfig(dtype="float64")`` to train and keep a float64 model. Its parameters
        must be finite and within the range of ``config.dtype``.
    data : array_like, shape (T_total, N), or list of arrays of shapes (T_k, N)
        The training trajectory, ``N = model.n_obs``, finite, ``T_total >= sequence_length +
        1``; or several (a list or tuple of 2-D arrays: recordings, trials, runs from other
        initial conditions), each at least ``sequence_length + 1`` steps long. Every window
        lies within one trajectory, all windows equally likely (so a trajectory is sampled
        in proportion to its ``T_k - sequence_length`` windows); a list of one is that
        trajectory. A 3-D array is refused (``list(data)`` makes it a list). Standardised per
        dimension when ``config.standardize``, all trajectories with one mean and sd (stored
        in ``result.model.standardization``); a dimension may be constant within one
        trajectory, not in all of them. In the training units (standardised or not) every
        value must be within the range of ``config.dtype`` (``validation_data`` too). A
        resume needs the same trajectories in the same order.
    config : TrainConfig, optional
        Default ``TrainConfig()``.
    callback : callable, optional
        ``callback(info)`` after every step, accepted or rejected (:class:`StepInfo`, also
        for the rejected step after which :class:`TrainingDivergedError` is raised), and at
        the end of every epoch (:class:`EpochInfo`). An exception it raises stops training
        (see Raises).
    checkpoint_dir : path-like, optional
        A writable directory (created if missing) where ``checkpoint.npz`` is written
        (atomically) every ``checkpoint_interval`` epochs, at the end, and when an exception
        stops training. Must not hold a checkpoint unless ``resume``. A relative path is
        resolved against the working directory once, when ``fit`` starts (a callback's
        ``os.chdir`` moves no checkpoint). Checked before the first step: as
        :func:`check_fit` checks it (a directory, or creatable as one, with write
        permission; no NUL byte, no name the file system refuses, such as one too long),
        then by creating it and writing (and removing) a file in it.
    resume : bool
        Continue from the checkpoint in ``checkpoint_dir``, with the same model, ``data``,
        ``validation_data`` (the same trajectories in the same order, or none, as before) and
        configuration (only the fields in ``autodiff.train.RESUMABLE_CHANGES`` may differ:
        ``epochs``, ``checkpoint_interval``, ``max_bad_steps``, ``backend``,
        ``validation_interval``); the final parameters are bitwise those of an uninterrupted
        run with the same settings. The learning-rate
        schedule stays that of the run that started training: with more ``epochs`` the extra
        steps run at ``lr_end``, with fewer (at least as many as trained) training stops early
        on it -- with as many as trained, a last epoch the checkpoint did not validate is
        validated then, as the last epoch of a run is, before the selection.
    validation_data : array_like, shape (T_val, N), or list of arrays of shapes (T_k, N), optional
        Held-out trajectory in the units of ``data`` (standardised like it), or several (a
        list or tuple of 2-D arrays, each checked as one and named ``validation_data[k]`` in
        messages; a 3-D array is refused, ``list(validation_data)`` makes it a list). Every
        ``validation_interval`` epochs and after the last one, the model free-runs from
        ``validation_starts`` evenly spaced points of each validation trajectory (at most as
        many as the shortest has points) and is scored by the mean ``D_stsp + D_H`` of the
        runs (:func:`models.metrics.evaluate`, D_stsp with ``validation_n_bins`` bins per
        axis; a diverged run scores inf; several trajectories: D_stsp of the i-th runs from all
        together against all their points, D_H the mean over them, with equal weights); the
        best-scoring parameters become ``result.model`` (ties: see
        :attr:`TrainResult.best_epoch`; DSR training is not monotone, DESIGN.md section 7).
        A ``validation_n_bins`` too large for the data's dimension is refused before
        training.

    Warns
    -----
    NoValidationScoreWarning
        No validation measured a finite score: ``result.model`` is the final model, not a
        selected one (``result.best_scores["status"]`` says how the last validation failed).

    Returns
    -------
    TrainResult
        ``result.model`` has dtype ``config.dtype``, not necessarily ``model.dtype``.

    Raises
    ------
    TypeError, ValueError
        Bad model (parameters NaN/inf or beyond ``config.dtype``'s range included), data
        (values beyond ``config.dtype``'s range in the training units included), config,
        ``checkpoint_dir`` or checkpoint (messages start with ``fit:``), found before
        training as :func:`check_fit` finds them.
    OSError
        ``checkpoint_dir`` cannot be created or holds no new file (e.g. a read-only or
        virtual file system such as ``/proc``), found before the first step; or a checkpoint
        cannot be written later (e.g. a full disk). The class and ``errno`` are those of
        the failed operation (``FileNotFoundError``, ``PermissionError``, ...); the message
        starts with ``fit:`` and names the directory or file and the reason.
    TrainingDivergedError
        ``max_bad_steps`` consecutive rejected steps (the class lists the causes); the last
        checkpoint is kept, not overwritten, and the last good parameters are attached. Also,
        without ``validation_data`` (whose last parameters are the result), when the
        parameters the run ends with fail on the training data: the loss and gradient of a
        step on ``batch_size`` evenly spaced windows, at the final alpha (a latent RNN's by
        the sequential BPTT kernel), are not finite or their forward fails (``final`` True:
        an accepted step blew them up, or the steps rejected since, fewer than
        ``max_bad_steps``, left them so); that state is not checkpointed and the parameters
        are attached.
    Exception, KeyboardInterrupt
        Anything else raised during training -- by ``callback``, the validation or a step,
        ``KeyboardInterrupt`` included -- is re-raised after writing a checkpoint of the last
        completed step (of the starting point if none completed) when ``checkpoint_dir`` is
        given; ``resume=True`` continues it.
    """
    config = TrainConfig() if config is None else config
    start = _prepare(model, data, config, callback, checkpoint_dir, resume, validation_data)
    if start.checkpoint_file is not None:
        _try_checkpoint_dir(start.checkpoint_file.parent)
    model, data, validation_data = start.model, start.data, start.validation_data
    if validation_data is not None:
        _check_validation_resolution(
            validation_data, config.validation_steps, config.validation_n_bins
        )
    ckpt_file, optimizer, state = start.checkpoint_file, start.optimizer, start.state
    best_params = start.best_params
    candidate_params = start.candidate_params
    if candidate_params is None:
        candidate_params = np.empty((0, model.n_params), dtype=model.dtype)
    rng = start.rng

    schedule = ExponentialDecay(config.lr_start, config.lr_end, state.schedule_steps)
    T, B, bpe = config.sequence_length, config.batch_size, config.batches_per_epoch
    first_rows = window_starts(start.lengths["data"], T)
    offsets = np.arange(T + 1)
    is_rnn = isinstance(model, LatentRNN)

    def snapshot():
        return _Snapshot(
            params=model.params.copy(),
            optimizer=optimizer.state_dict(),
            rng_state=rng.bit_generator.state,
            state=state.copy(),
            best_params=best_params,
            candidate_params=candidate_params,
        )

    def write(snap: _Snapshot):
        """Checkpoint ``snap``; a Ctrl-C or SIGTERM meanwhile (a second one, after the one
        being handled) acts once it is written, not halfway through building it."""
        if ckpt_file is None:
            return None
        with signals_deferred():
            meta = {
                "config": config.to_dict(),
                "rng_state": snap.rng_state,
                "train_state": dataclasses.asdict(snap.state),
            }
            arrays = {} if snap.best_params is None else {"best_params": snap.best_params}
            if len(snap.candidate_params):
                arrays["candidate_params"] = snap.candidate_params
            for name in FINGERPRINTED:
                entries, fingerprint_arrays = stored(name, start.fingerprints[name])
                meta.update(entries, **{f"{name}_lengths": start.lengths[name]})
                arrays.update(fingerprint_arrays)
            return save_checkpoint(
                ckpt_file.parent, model, snap.params, meta, arrays, snap.optimizer, where="fit"
            )

    def validate(record):
        """Score the model of the epoch of ``record`` (its history record) on the validation
        data into ``record``; it becomes the best model and a candidate as its score says."""
        nonlocal best_params, candidate_params
        epoch = record["epoch"]
        t0 = time.perf_counter()
        scores = _validate(
            model,
            validation_data,
            config.validation_steps,
            config.validation_starts,
            config.validation_n_bins,
        )
        record.update(
            val_dstsp=scores["dstsp"],
            val_dh=scores["dh"],
            val_score=scores["score"],
            val_status=scores["status"],
            val_time=time.perf_counter() - t0,
        )
        best = state.best_scores
        # A strictly lower score wins, so among equal finite scores the earliest epoch
        # stays; while the best so far is inf (its free runs diverged), the newest
        # model replaces it.
        if best is None or scores["score"] < best["score"] or best["score"] == math.inf:
            state.best_epoch, state.best_scores = epoch, scores
            best_params = model.params.copy()
        if math.isfinite(scores["score"]):
            state.candidates, candidate_params = _with_candidate(
                state.candidates, candidate_params, epoch, scores, model.params, config
            )

    def finish_epoch():
        epoch = state.step // bpe  # 1-based number of the epoch just completed
        acc = state.epoch_acc
        n_ok = acc["n_ok"]
        record = {
            "epoch": epoch,
            "step": state.step,
            "loss": acc["loss_sum"] / n_ok if n_ok else math.nan,
            "penalty": acc["penalty_sum"] / n_ok if n_ok else math.nan,
            "alpha": state.alpha if is_rnn else None,
            "lr": schedule(state.step - 1),
            "newton_iters_mean": acc["newton_sum"] / n_ok if n_ok else math.nan,
            "newton_iters_max": acc["newton_max"],
            "grad_norm_mean": acc["grad_norm_sum"] / n_ok if n_ok else math.nan,
            "bad_steps": acc["bad"],
            "sequential_steps": acc["sequential"],
            "time": acc["time"],
        }
        last = state.step >= config.n_steps
        if validation_data is not None and (epoch % config.validation_interval == 0 or last):
            validate(record)
        state.history.append(record)
        state.epoch_acc = _new_epoch_acc()
        state.epoch_pending = False
        return record, last

    def diverged(reason, step, final=False):
        """The :class:`TrainingDivergedError` of a failure at ``step`` (0-based)."""
        return TrainingDivergedError(
            streak=state.bad_streak,
            reason=reason,
            epoch=step // bpe + 1,
            batch=step % bpe + 1,
            alpha=state.alpha,
            lr=schedule(step),
            params=model.params.copy(),
            checkpoint=ckpt_file if ckpt_file is not None and ckpt_file.exists() else None,
            remedies=new_run_remedies(config, state.alpha if is_rnn else None, is_rnn),
            clipped=config.grad_clip is not None,
            final=final,
        )

    # max_bad_steps rejections in a row stop the run -- and so does a run (shorter than that)
    # none of whose steps was accepted: its "trained" model would be the initial one
    stop_streak = min(config.max_bad_steps, config.n_steps)
    snap = snapshot()
    t_session = time.perf_counter()
    steps_session = 0
    try:
        if (
            validation_data is not None
            and state.step == config.n_steps
            and not state.epoch_pending
            and "val_score" not in state.history[-1]
        ):
            # resumed with as many epochs as trained, from a checkpoint of a longer run that
            # did not validate its last epoch: validate it now, as the last epoch of a run
            # of this length is
            state.history[-1] = record = dict(state.history[-1])
            validate(record)
            snap = snapshot()
        while state.step < config.n_steps or state.epoch_pending:
            if state.epoch_pending:
                record, last = finish_epoch()
                snap = snapshot()
                if not last and record["epoch"] % config.checkpoint_interval == 0:
                    write(snap)
                if callback is not None:
                    callback(EpochInfo(record, state.best_epoch, state.best_scores))
                continue

            t0 = time.perf_counter()
            step = state.step
            lr = schedule(step)
            starts = first_rows[rng.integers(0, first_rows.size, size=B)]
            windows = data[starts[:, None] + offsets]
            if config.noise_level > 0:
                windows += config.noise_level * rng.standard_normal(windows.shape, dtype=data.dtype)
            loss, penalty, grad_norm, newton, reason, sequential = _train_step(
                model, optimizer, windows, state, lr, config
            )
            acc = state.epoch_acc
            if reason:
                state.bad_streak += 1
                state.n_bad_total += 1
                acc["bad"] += 1
                state.force_alpha_estimate = is_rnn and config.alpha_mode == "auto"
            else:
                state.bad_streak = 0
                acc["loss_sum"] += loss
                acc["penalty_sum"] += penalty
                acc["n_ok"] += 1
                acc["newton_sum"] += newton[1]
                acc["newton_max"] = max(acc["newton_max"], newton[0])
                acc["grad_norm_sum"] += grad_norm
                acc["sequential"] += sequential
            dt = time.perf_counter() - t0
            acc["time"] += dt
            state.wall_time += dt
            state.step = step + 1
            state.epoch_pending = state.step % bpe == 0
            steps_session += 1
            snap = snapshot()
            if callback is not None:
                elapsed = time.perf_counter() - t_session
                callback(
                    StepInfo(
                        epoch=step // bpe,
                        batch=step % bpe,
                        step=step,
                        n_steps=config.n_steps,
                        loss=loss,
                        penalty=penalty,
                        alpha=state.alpha if is_rnn else 0.0,
                        lr=lr,
                        newton_iters_max=newton[0],
                        newton_iters_mean=newton[1],
                        grad_norm=grad_norm,
                        accepted=not reason,
                        reason=reason,
                        sequential=sequential,
                        bad_steps=state.bad_streak,
                        step_time=dt,
                        steps_per_s=steps_session / elapsed if elapsed > 0 else math.inf,
                    )
                )
            if state.bad_streak >= stop_streak:
                raise diverged(reason, step)
        # Without validation data the last parameters are the result: they must still work
        # on the training data (an accepted step may have blown them up, and the steps
        # rejected since, fewer than max_bad_steps, left them so).
        if validation_data is None:
            failure = _final_check(model, data, first_rows, offsets, state.alpha, config)
            if failure:
                raise diverged(failure, state.step - 1, final=True)
    except TrainingDivergedError:
        raise  # keep the last checkpoint: the steps since it were rejected
    except BaseException as exc:
        # The last completed step: finite parameters, consistent state -- unless it ended a
        # streak of max_bad_steps rejections (a callback raised at the step fit would have
        # stopped at): the last checkpoint then stays, and a resume diverges there again.
        if snap.state.bad_streak < stop_streak:
            try:
                write(snap)
            except Exception as failed:  # the original exception matters more
                exc.add_note(f"fit: the checkpoint could not be written ({failed}).")
        raise

    final = write(snap)
    last_params = model.params.copy()
    selection = None
    if len(state.candidates) > 1:
        selection, kept = _select(model, state, candidate_params, validation_data, config)
        if selection is not None:
            best_params = candidate_params[kept]
    if best_params is not None:
        model.params[...] = best_params
    if state.best_scores is not None and state.best_scores["score"] == math.inf:
        _warn_no_validation_score(state, config, is_rnn)
    return TrainResult(
        model=model,
        last_params=last_params,
        best_epoch=state.best_epoch,
        best_scores=state.best_scores,
        history=state.history,
        n_bad_steps=state.n_bad_total,
        alpha=state.alpha if is_rnn else None,
        config=config,
        wall_time=state.wall_time,
        checkpoint=final,
        selection=selection,
    )


def _with_candidate(candidates, params, epoch, scores, current, config):
    """``candidates`` (``_State.candidates``) and their ``params`` (K, n_params) with the
    epoch just validated added in its place by score (an earlier epoch first among equal
    scores), the worst dropped beyond ``config.selection_candidates``."""
    entries = [*candidates, {"epoch": epoch, "scores": scores}]
    rows = np.concatenate([params, current[None]])
    order = sorted(range(len(entries)), key=lambda k: (entries[k]["scores"]["score"], k))
    order = order[: config.selection_candidates]
    return [entries[k] for k in order], rows[order]


def _select(model, state, params, validation_data, config):
    """The check of the candidates (:func:`autodiff.selection.select`): its report for
    :attr:`TrainResult.selection` (None when not made) and the index of the candidate kept,
    whose epoch and scores become ``state.best_epoch`` and ``state.best_scores``."""
    from autodiff.selection import FAILED_FRACTION_ALLOWED, select

    steps = config.selection_steps
    if steps is None:
        trajectories = validation_data if isinstance(validation_data, list) else [validation_data]
        longest = max(len(x) for x in trajectories) - 1
        steps = max(2 * (config.validation_steps or longest), REST_MIN_POINTS)
    t0 = time.perf_counter()
    checked = select(
        model, state.candidates, params, validation_data, config.selection_starts, steps
    )
    if checked is None:
        return None, None
    kept, resting, blown_up = checked
    chosen = state.candidates[kept]
    state.best_epoch, state.best_scores = chosen["epoch"], chosen["scores"]
    if resting[kept] + blown_up[kept] > FAILED_FRACTION_ALLOWED * config.selection_starts:
        warnings.warn(
            f"fit: every one of the {len(state.candidates)} candidate epochs failed the "
            f"selection check (more than 1/8 of its {config.selection_starts} free runs of "
            f"{steps} steps came to rest or blew up); kept epoch {chosen['epoch']}, whose "
            f"runs failed least ({resting[kept]} at rest, {blown_up[kept]} blown up): its "
            "attractor is likely spurious. Look at its free runs and fixed points, or train "
            "anew (another seed, more epochs, more selection_candidates).",
            SelectionWarning,
            stacklevel=3,
        )
    report = {
        "starts": config.selection_starts,
        "steps": steps,
        "seconds": time.perf_counter() - t0,
        "candidates": [
            {"epoch": c["epoch"], "score": c["scores"]["score"], "at_rest": r, "blown_up": b}
            for c, r, b in zip(state.candidates, resting, blown_up, strict=True)
        ],
    }
    return report, kept


def _warn_no_validation_score(state, config, is_rnn: bool) -> None:
    """:class:`NoValidationScoreWarning`, with why the best validation failed and the settings
    worth trying (:func:`new_run_remedies`)."""
    status = state.best_scores["status"].replace("_", "-")
    remedies = new_run_remedies(config, state.alpha if is_rnn else None, is_rnn)
    warnings.warn(
        f"fit: no validation measured a finite score (the last one, epoch {state.best_epoch}: "
        f"free run {status}); result.model is the final model, not a selected one, and it does not "
        "reconstruct the validation data. Try "
        + ", ".join(f"{name}={value!r}" for name, value in remedies.items())
        + ".",
        NoValidationScoreWarning,
        stacklevel=3,
    )


def _train_step(model, optimizer, windows, state, lr, config):
    """One batch: alpha re-estimation (auto mode), loss, L2 penalty, clipping, optimiser step.

    Updates ``state.alpha`` / ``state.force_alpha_estimate`` after a successful estimate and
    ``model.params`` after an accepted step. Returns ``(loss, penalty, grad_norm, newton
    (max, mean), reason, sequential)``: the data loss (NaN when it was not computed), the L2
    penalty, the gradient norm before clipping (NaN when there is none), for a rejected step
    (params unchanged) why, and whether the batch was evaluated sequentially after its
    GTF-DEER forward diverged (:func:`_loss_and_grad`).
    """
    if (
        isinstance(model, LatentRNN)
        and config.alpha_mode == "auto"
        and (state.step % config.alpha_interval == 0 or state.force_alpha_estimate)
    ):
        alpha, reason = _anneal_alpha(model, windows, state.alpha, config)
        if reason:
            return math.nan, 0.0, math.nan, (0, 0.0), reason, False
        state.alpha = alpha
        state.force_alpha_estimate = False

    loss, grad, newton, reason, sequential = _loss_and_grad(model, windows, state.alpha, config)
    penalty = 0.0
    if grad is not None and config.l2:
        penalty, g_l2 = l2_penalty(model, config.l2)
        grad = grad + g_l2
    grad_norm = math.nan
    if grad is not None:
        grad, grad_norm = clip_grad_norm(grad, config.grad_clip)
    reason = _rejection(loss, grad_norm, reason)
    if not reason:
        try:
            optimizer.step(model.params, grad, lr)
        except NonFiniteStepError as exc:
            reason = f"optimiser step refused: {exc}"
    return loss, penalty, grad_norm, newton, reason, sequential


def _rejection(loss, grad_norm, reason):
    """Why a batch with this ``loss``, gradient norm and ``reason`` (of :func:`_loss_and_grad`)
    fails: ``reason``, else ``"non-finite loss or gradient"`` when one is not finite, else
    ``""``."""
    if not reason and not (math.isfinite(loss) and math.isfinite(grad_norm)):
        return "non-finite loss or gradient"
    return reason


def _final_check(model, data, first_rows, offsets, alpha, config):
    """Why the parameters a run ends with fail on the training data (``data``, the windows'
    first rows ``first_rows`` and ``offsets``), ``""`` when they do not: the loss and gradient
    of a step (:func:`_loss_and_grad`, :func:`_rejection`) at ``alpha``, without noise, on
    ``batch_size`` evenly spaced windows (no random numbers drawn: a resume stays bitwise).
    A latent RNN with the fused sequential kernel is evaluated by it, as a diverging GTF-DEER
    forward is: exactly, so that a Newton solve out of iterations fails no model."""
    if isinstance(model, LatentRNN) and hasattr(model, "step_functions_jit"):
        fields = TrainConfig.__dataclass_fields__
        exact = {name: fields[name].default for name in DEER_SETTINGS}
        config = dataclasses.replace(config, method="sequential", **exact)
    B = config.batch_size
    rows = first_rows[np.arange(B) * first_rows.size // B]
    loss, grad, _, reason, _ = _loss_and_grad(model, data[rows[:, None] + offsets], alpha, config)
    grad_norm = math.nan if grad is None else clip_grad_norm(grad, None)[1]
    return _rejection(loss, grad_norm, reason)


def _anneal_alpha(model, windows, alpha, config):
    """The lab's annealing: raise to the estimate at once, else decay toward it.

    Returns ``(alpha, "")``, or ``(alpha unchanged, reason)`` when the estimate failed: the
    windows were validated by :func:`fit`, so :func:`parscan.gtf_alpha` fails only on a
    Jacobian norm that is NaN/inf, i.e. a model that overflows on the data (a bad step).
    """
    from parscan.gtf import gtf_alpha

    try:
        estimate = gtf_alpha(model, windows[:, 1:], method=config.alpha_method)
    except ValueError as exc:
        return alpha, f"alpha estimation failed: {exc}"
    if estimate > alpha:
        return float(estimate), ""
    return float(config.alpha_gamma * alpha + (1.0 - config.alpha_gamma) * estimate), ""
