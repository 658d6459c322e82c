"""The training loop: GTF-DEER (or sequential BPTT) on random windows of the training data.

:func:`fit` trains a copy of a model on windows of length ``T + 1`` sampled with replacement
from a standardised trajectory, or from several (each window within one of them; DESIGN.md
section 8), with the GTF loss of
:func:`autodiff.gradients.gtf_loss_and_grad` for latent RNNs (Hess et al., ICML 2023; GTF-DEER:
Hess, Goetz & Durstewitz, arXiv:2605.12683) or the teacher-forced loss of
:func:`autodiff.ssm_gradients.ssm_loss_and_grad` for state-space models, RAdam/Adam with an
exponentially decaying learning rate, the lab's alpha annealing, validation-based model
selection (its best candidates re-checked for spurious fixed points and blow-ups by
:mod:`autodiff.selection`), atomic checkpoints and bit-identical resumption. Its settings are
:class:`autodiff.config.TrainConfig`; the validation data are checked and scored by
:mod:`autodiff.validation`, and a checkpoint is read back and checked against the run resuming
it by :mod:`autodiff.resume`.

Determinism: everything random (window starts, noise) comes from one
``np.random.Generator(PCG64(seed))`` whose state is checkpointed; the learning rate and the
alpha re-estimation schedule are functions of the global step (the learning-rate schedule is
fixed by the run that started training). Resuming from any checkpoint -- periodic, final, or
written when an exception (``KeyboardInterrupt`` included) stopped training -- gives bitwise
the parameters of an uninterrupted run (same machine, thread count and backend).
"""

import copy
import dataclasses
import functools
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from autodiff.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from autodiff.config import (
    DEER_SETTINGS,
    TrainConfig,
    field_values,
    inapplicable_settings,
    new_run_remedies,
)
from autodiff.fingerprint import FINGERPRINTED, fingerprint, stored
from autodiff.memory import (
    available_bytes,
    selection_bytes,
    training_step_bytes,
    validation_bytes,
)
from autodiff.optim import (
    ExponentialDecay,
    NonFiniteStepError,
    clip_grad_norm,
    make_optimizer,
)
from autodiff.regularization import l2_penalty, unpenalised_problem
from autodiff.resume import (
    Start,
    State,
    check_checkpoint_dir,
    new_epoch_acc,
    resume_from,
    try_checkpoint_dir,
)
from autodiff.validation import (
    check_validation_data,
    check_validation_resolution,
    named_validation,
    validate,
)
from models._checks import check_bool, refusal
from models._signals import signals_deferred
from models.base import LatentRNN, Model, format_bytes
from models.data import (
    check_trajectory,
    check_trajectory_or_list,
    column_mean_sd,
    several_trajectories,
    standardize,
    to_sd_units,
)
from models.metrics import REST_MIN_POINTS
from models.ssm import LinearSSM
from parscan.deer import DeerStatus


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
        The GTF alpha (None for a state-space model, trained without GTF) and learning rate
        of that step.
    params : ndarray
        The last good (finite) parameters; for ``final``, the last ones, which failed.
    checkpoint : pathlib.Path or None
        The last checkpoint written (never overwritten by a bad state: the state that failed
        the final check is not written either); None when none was written yet.
    remedies : dict
        :class:`autodiff.TrainConfig` fields worth changing for a new run, with suggested values
        (:func:`autodiff.config.new_run_remedies`); the message lists them, and ``grad_clip``
        when the run had none.
    clipped : bool
        The run clipped gradient norms (had a ``grad_clip``).
    final : bool
        The final check failed (not a streak of ``max_bad_steps`` rejections).
    """

    #: the keyword arguments, kept as attributes of the same names (and pickled as such)
    _FIELDS = (
        "streak",
        "reason",
        "epoch",
        "batch",
        "alpha",
        "lr",
        "params",
        "checkpoint",
        "remedies",
        "clipped",
        "final",
    )

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
        gtf = "" if alpha is None else f", alpha={alpha:.4g}"  # None: a state-space model
        where = f"epoch {epoch}, batch {batch}{gtf}, lr={lr:.3g}"
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
        self.remedies, self.clipped, self.final = remedies, clipped, final

    def __reduce__(self):
        """Pickled by its keyword arguments (``multiprocessing`` sends it to the caller)."""
        return functools.partial(type(self), **{n: getattr(self, n) for n in self._FIELDS}), ()


def rejections(streak: int) -> str:
    """``"4 consecutive steps were rejected"``, in the singular for one."""
    return "1 step was rejected" if streak == 1 else f"{streak} consecutive steps were rejected"


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
        Euclidean norm of the total gradient (loss plus L2) over the whole parameter vector,
        before clipping.
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
        The epoch's entry of :attr:`TrainResult.history` (a copy: changing it changes
        neither the history nor a checkpoint).
    best_epoch : int or None
        Best validated epoch so far (1-based), None before the first validation.
    best_scores : dict or None
        Its validation scores (a copy).
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


@dataclass(frozen=True)
class _Snapshot:
    """A consistent copy of the whole training state after a completed step."""

    params: np.ndarray
    optimizer: dict
    rng_state: dict
    state: State
    best_params: np.ndarray | None
    candidate_params: np.ndarray


def _training_data(model, data, config) -> tuple[np.ndarray, list[int]]:
    """``data`` checked -- one trajectory, or several
    (:func:`models.data.several_trajectories`), each with at least ``sequence_length + 1``
    steps -- as one concatenated ``(T_total, N)`` array, and the trajectories' lengths."""
    where = "fit"
    check_trajectory_or_list(data, where, "data", model.n_obs)
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
    :func:`autodiff.validation.check_validation_data` (None when not given)."""
    data, lengths = _training_data(model, data, config)
    if validation_data is not None:
        validation_data = check_validation_data(model, validation_data, config)
    return data, lengths, validation_data


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

        # parameters a step blew up overflow here: the loss or gradient is then not finite,
        # and the step is rejected saying so (no RuntimeWarning on the way)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
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


def _prepare(model, data, config, callback, checkpoint_dir, resume, validation_data) -> Start:
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
            + refusal(field_values(config, unused), "the latent RNNs (GTF-DEER)", reason)
            + f"{scans}."
        )
    unpenalised = unpenalised_problem(model, config.l2)
    if unpenalised:
        raise ValueError(f"fit: config.l2: {unpenalised}")
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
    _check_memory(model, config, validation_data)
    ckpt_file = None
    if checkpoint_dir is not None:
        ckpt_file = checkpoint_path(check_checkpoint_dir(checkpoint_dir))
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
        units = to_sd_units(x, mean, sd) if config.standardize else x
        return _in_training_dtype(units, x, [name], [x.shape[0]], config)

    if validation_data is not None:
        named = named_validation(validation_data)
        converted = [in_training_units(name, x) for name, x in named]
        validation_data = converted if isinstance(validation_data, list) else converted[0]
    start = Start(
        model=model,
        data=data,
        validation_data=validation_data,
        lengths={name: None if given[name] is None else given[name][1] for name in FINGERPRINTED},
        fingerprints=fingerprints,
        checkpoint_file=ckpt_file,
        optimizer=make_optimizer(config.optimizer, model.n_params, dtype=dtype),
        state=State(
            schedule_steps=config.n_steps, alpha=float(config.alpha), epoch_acc=new_epoch_acc()
        ),
        rng=np.random.Generator(np.random.PCG64(config.seed)),
    )
    if resume:
        resume_from(start, load_checkpoint(ckpt_file, "fit"), config)
    return start


class MemoryJob(NamedTuple):
    """A part of a training run whose arrays are held together, and not with those of the
    other parts (:func:`memory_jobs`)."""

    #: ``"step"``, ``"validation"`` or ``"selection"``
    name: str
    #: the bytes it needs (an estimate, :mod:`autodiff.memory`)
    need: int
    #: what it is, the subject of a message and its verb ("each validation's free runs need")
    what: str
    #: the :class:`TrainConfig` fields that lower it
    settings: tuple[str, ...]


def memory_jobs(model, config, validation_data=None) -> list[MemoryJob]:
    """The memory :func:`fit` needs: a training step (:func:`autodiff.memory.training_step_bytes`)
    and, with ``validation_data`` (one ``(T, N)`` trajectory or a list), a validation
    (:func:`autodiff.memory.validation_bytes`: ``validation_starts`` free runs of
    ``validation_steps`` steps, at most as many starts as a part has points, each part for
    its own length when ``validation_steps`` is None) and the selection check
    (:func:`autodiff.memory.selection_bytes`, more than one candidate). ``fit`` refuses a run
    one of whose jobs needs more than the memory available; ``parscan-train`` does, naming
    its flags, before it writes anything."""
    rnn = isinstance(model, LatentRNN)
    itemsize = np.dtype(config.dtype).itemsize
    step = training_step_bytes(
        "rnn" if rnn else "linear" if isinstance(model, LinearSSM) else "selective",
        config.batch_size,
        config.sequence_length,
        model.n_obs,
        model.M if rnn else model.H,
        0 if rnn else model.L,
        itemsize,
        config.method == "deer",
        rnn and config.alpha_mode == "auto",
    )
    jobs = [
        MemoryJob(
            "step",
            step,
            f"a training step of batch_size={config.batch_size} windows of "
            f"sequence_length={config.sequence_length} steps needs",
            ("batch_size", "sequence_length"),
        )
    ]
    if validation_data is None:
        return jobs
    trajectories = validation_data if isinstance(validation_data, list) else [validation_data]
    lengths = [len(x) for x in trajectories]
    width = model.M if rnn else model.n_obs
    # steps of each part's runs: validation_steps, or the part's own length - 1 (None)
    steps = sum(config.validation_steps or n - 1 for n in lengths)
    starts = min(config.validation_starts, *lengths)
    jobs.append(
        MemoryJob(
            "validation",
            validation_bytes(1, starts, steps, width, model.n_obs, itemsize),
            "each validation's free runs need",
            ("validation_steps", "validation_starts"),
        )
    )
    if config.selection_candidates > 1:
        need = selection_bytes(
            config.selection_starts,
            _selection_steps(config, validation_data),
            width,
            model.n_obs,
            itemsize,
        )
        lengthened = ("validation_steps",) if config.selection_steps is None else ()
        settings = (*lengthened, "selection_steps", "selection_starts")
        jobs.append(MemoryJob("selection", need, "the selection check's free runs need", settings))
    return jobs


def _check_memory(model, config, validation_data) -> None:
    """Refuse a training step, validation or selection check (:func:`memory_jobs`) that
    would not fit in the memory available now: a step would raise ``MemoryError``, or swap,
    only after the run started, and free runs too long for the memory would be found only
    after training, with settings a resume keeps."""
    available = available_bytes()
    if available is None:
        return
    for job in memory_jobs(model, config, validation_data):
        if job.need > available:
            settings = ", ".join(job.settings[:-1]) + f" or {job.settings[-1]}"
            raise ValueError(
                f"fit: {job.what} about {format_bytes(job.need)} of memory and "
                f"{format_bytes(available)} are available now; lower {settings}."
            )


def _check_params(model, dtype: str) -> None:
    """Refuse a ``model`` whose parameters are NaN/inf or overflow the training ``dtype``
    (``config.dtype``) to inf, naming :func:`fit` and the first such index, or break its
    class's limits in that dtype (a LinearSSM phase ``exp(θ)``): training could not start
    from them (``model.astype(dtype)`` would refuse them in its own name)."""
    params = model.params
    with np.errstate(over="ignore"):
        cast = params.astype(dtype, copy=False)
    bad = ~np.isfinite(cast)
    if not bad.any():
        model._check_param_values(cast, "fit")  # the class's own limits, in that dtype
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
    same as given -- in ``config.dtype``, never the caller's array, refused (naming the first
    value, its trajectory, row and column, and the fixes) when a value would become inf
    there."""
    # a copy of data trained on unstandardised (units is given), which could be the
    # caller's own array: changing it during the run (in a callback) changed the training
    with np.errstate(over="ignore"):
        cast = np.array(units, dtype=config.dtype, order="C", copy=True if units is given else None)
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
    pieces = [x for _, x in named_validation(validation_data)]
    joined = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
    return joined, [x.shape[0] for x in pieces]


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
        refused, :func:`autodiff.config.inapplicable_settings`). Not modified: training works on
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
        configuration (only the fields in ``autodiff.resume.RESUMABLE_CHANGES`` may differ:
        ``epochs``, ``checkpoint_interval``, ``max_bad_steps``, ``backend``,
        ``validation_interval``, ``selection_starts``, ``selection_steps``); the final
        parameters are bitwise those of an uninterrupted run with the same settings (the
        selection's with the same selection settings). The learning-rate
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
        training as :func:`check_fit` finds them; and a training step larger than the
        memory available now (``/proc/meminfo``'s ``MemAvailable``; an estimate,
        :func:`autodiff.memory.step_bytes`), which names ``batch_size`` and
        ``sequence_length`` to lower.
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
        try_checkpoint_dir(start.checkpoint_file.parent)
    model, data, validation_data = start.model, start.data, start.validation_data
    if validation_data is not None:
        check_validation_resolution(
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
    # the noise's sd in the training units: noise_level data sds (1 when standardised)
    noise_sd = config.noise_level
    if not config.standardize and config.noise_level > 0:
        noise_sd = (config.noise_level * column_mean_sd(data)[1]).astype(data.dtype)
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

    def validate_epoch(record):
        """Score the model of the epoch of ``record`` (its history record) on the validation
        data into ``record``; it becomes the best model and a candidate as its score says."""
        nonlocal best_params, candidate_params
        epoch = record["epoch"]
        t0 = time.perf_counter()
        scores = validate(
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
            validate_epoch(record)
        state.history.append(record)
        state.epoch_acc = new_epoch_acc()
        state.epoch_pending = False
        return record, last

    def diverged(reason, step, final=False):
        """The :class:`TrainingDivergedError` of a failure at ``step`` (0-based)."""
        return TrainingDivergedError(
            streak=state.bad_streak,
            reason=reason,
            epoch=step // bpe + 1,
            batch=step % bpe + 1,
            alpha=state.alpha if is_rnn else None,
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
    final_check = False  # set while the end-of-run check runs: its state is not written
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
            validate_epoch(record)
            snap = snapshot()
        while state.step < config.n_steps or state.epoch_pending:
            if state.epoch_pending:
                record, last = finish_epoch()
                snap = snapshot()
                if not last and record["epoch"] % config.checkpoint_interval == 0:
                    write(snap)
                if callback is not None:  # copies: a callback cannot change the run's state
                    shown, best = copy.deepcopy((record, state.best_scores))
                    callback(EpochInfo(shown, state.best_epoch, best))
                continue

            t0 = time.perf_counter()
            step = state.step
            lr = schedule(step)
            starts = first_rows[rng.integers(0, first_rows.size, size=B)]
            windows = data[starts[:, None] + offsets]
            if config.noise_level > 0:
                windows += noise_sd * rng.standard_normal(windows.shape, dtype=data.dtype)
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
            final_check = True
            failure = _final_check(model, data, first_rows, offsets, state.alpha, config)
            if failure:
                raise diverged(failure, state.step - 1, final=True)
    except TrainingDivergedError:
        raise  # keep the last checkpoint: the steps since it were rejected
    except BaseException as exc:
        # The last completed step: finite parameters, consistent state -- unless it ended a
        # streak of max_bad_steps rejections (a callback raised at the step fit would have
        # stopped at): the last checkpoint then stays, and a resume diverges there again.
        # Nor during the end-of-run check (a Ctrl-C then): the state it was judging may fail
        # it, and a resume from the last checkpoint redoes the steps since, bitwise.
        if snap.state.bad_streak < stop_streak and not final_check:
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
    """``candidates`` (``State.candidates``) and their ``params`` (K, n_params) with the
    epoch just validated added in its place by score (an earlier epoch first among equal
    scores), the worst dropped beyond ``config.selection_candidates``."""
    entries = [*candidates, {"epoch": epoch, "scores": scores}]
    rows = np.concatenate([params, current[None]])
    order = sorted(range(len(entries)), key=lambda k: (entries[k]["scores"]["score"], k))
    order = order[: config.selection_candidates]
    return [entries[k] for k in order], rows[order]


def _selection_steps(config, validation_data) -> int:
    """The length of the selection check's free runs: ``config.selection_steps``, or twice
    the validation runs' (at least :data:`models.metrics.REST_MIN_POINTS`)."""
    if config.selection_steps is not None:
        return config.selection_steps
    trajectories = validation_data if isinstance(validation_data, list) else [validation_data]
    longest = max(len(x) for x in trajectories) - 1
    return max(2 * (config.validation_steps or longest), REST_MIN_POINTS)


def _select(model, state, params, validation_data, config):
    """The check of the candidates (:func:`autodiff.selection.select`): its report for
    :attr:`TrainResult.selection` (None when not made) and the index of the candidate kept,
    whose epoch and scores become ``state.best_epoch`` and ``state.best_scores``."""
    from autodiff.selection import FAILED_FRACTION_ALLOWED, select

    steps = _selection_steps(config, validation_data)
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
    worth trying (:func:`autodiff.config.new_run_remedies`)."""
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
    windows were validated by :func:`fit`, so the estimate (:func:`parscan.gtf_alpha` without
    its argument checks) fails only on a Jacobian norm that is NaN/inf, i.e. a model that
    overflows on the data (a bad step)."""
    from parscan.gtf import DEFAULT_MARGIN, estimate_alpha

    forcing = windows[:, 1:]
    try:  # the arguments are fit's, checked; a partial-forcing warning points at fit's caller
        estimate = estimate_alpha(
            model, forcing, None, config.alpha_method, DEFAULT_MARGIN, forcing.shape[-1], False,
            where="fit", stacklevel=5, fix="",
        )  # fmt: skip
    except ValueError as exc:
        return alpha, "alpha estimation failed: " + str(exc).removeprefix("fit: ")
    if estimate > alpha:
        return float(estimate), ""
    return float(config.alpha_gamma * alpha + (1.0 - config.alpha_gamma) * estimate), ""
