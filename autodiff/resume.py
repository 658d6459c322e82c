"""Resuming :func:`autodiff.fit` from a checkpoint: the checkpoint folder checked, and a
checkpoint read back and checked against the run that resumes it.

A resume continues the same run: the same model (class, hyperparameters, dtype and seed), the
same configuration (but for :data:`RESUMABLE_CHANGES`) and the same training and validation
data (:mod:`autodiff.fingerprint`); anything else is refused, naming what differs, and so is a
damaged checkpoint. The parameters, optimiser, window-sampling RNG and training state
(:class:`State`) it stores are loaded into what :func:`autodiff.fit` starts from
(:class:`Start`), so that the resumed GTF-DEER training (Hess, Goetz & Durstewitz,
arXiv:2605.12683) gives bitwise the parameters of an uninterrupted run.
"""

import dataclasses
import math
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from autodiff.checkpoint import damaged, is_count
from autodiff.config import CHOICES, TrainConfig, inapplicable_settings
from autodiff.fingerprint import FINGERPRINTED, first_difference, saved_fingerprint
from autodiff.optim import OPTIMIZERS
from models._checks import check_path
from models.base import LatentRNN, Model, reworded_os_error

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


@dataclass
class State:
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

    def copy(self) -> "State":
        new = dataclasses.replace(self)
        new.epoch_acc = dict(self.epoch_acc)
        new.history = list(self.history)
        new.candidates = list(self.candidates)
        return new


def new_epoch_acc() -> dict:
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


@dataclass
class Start:
    """Everything :func:`autodiff.fit` starts from, checked: the model in the training dtype (with
    its standardisation), the training data in its units (the trajectories concatenated) and the
    validation data (one array, or a list of them), the trajectories' lengths and
    fingerprints (:func:`autodiff.fingerprint.fingerprint`, of each of
    :data:`~autodiff.fingerprint.FINGERPRINTED` concatenated), and the (resumed) optimiser,
    training state and window-sampling RNG."""

    model: Model
    data: np.ndarray
    validation_data: np.ndarray | list[np.ndarray] | None
    #: name (of :data:`~autodiff.fingerprint.FINGERPRINTED`) -> the lengths of its
    #: trajectories, None when not given
    lengths: dict
    fingerprints: dict
    checkpoint_file: Path | None
    optimizer: object
    state: State
    rng: np.random.Generator
    best_params: np.ndarray | None = None
    candidate_params: np.ndarray | None = None


def check_checkpoint_dir(checkpoint_dir) -> Path:
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
        why = (
            f"{existing} is on a read-only file system"
            if os.statvfs(existing).f_flag & os.ST_RDONLY
            else f"no write permission on {existing}"
        )
        raise ValueError(
            f"fit: checkpoint_dir {directory} is not writable ({why}). Choose a writable directory."
        )
    return directory


def try_checkpoint_dir(directory: Path) -> None:
    """Create ``directory`` and write and remove a file in it, so that a place where no
    checkpoint can be written although the permissions checked by
    :func:`check_checkpoint_dir` allow it (a read-only or virtual file system such as
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


def resume_from(start: Start, ckpt: dict, config) -> None:
    """Load a checkpoint's parameters, optimiser, RNG and training state into ``start``,
    refusing a checkpoint of another model, configuration or data, and a damaged one."""
    path = ckpt["path"]
    _check_architecture(ckpt, start.model, config, start.data)
    try:
        saved_config, saved_fingerprints, saved_lengths = _load_run(start, ckpt)
    except (AttributeError, KeyError, OverflowError, TypeError, ValueError) as exc:
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


def _check_architecture(ckpt, model, config, data):
    """Refuse a checkpoint of another model class, hyperparameters, dtype or seed, naming
    what differs (``model`` is trained in ``config.dtype``: a dtype that differs is that
    setting's) -- or, when the training ``data`` have another number of columns than the
    run's (which the model's follows), naming that."""
    saved, given = ckpt["hyperparameters"], model.hyperparameters()
    if saved == given and ckpt["model_class"] == type(model).__name__:
        return
    shape = ckpt["state"].get("data_shape") if isinstance(ckpt["state"], dict) else None
    if isinstance(shape, list) and len(shape) == 2 and shape[1] != data.shape[1]:
        raise ValueError(  # (the command line names "data" by its --data file)
            f"fit: data has {data.shape[1]} columns, but the run in {ckpt['path']} was "
            f"trained on {shape[1]}; resume with what it was trained on."
        )
    if ckpt["model_class"] != type(model).__name__:
        found = (
            f"a model of class {ckpt['model_class']} {saved}, not the {type(model).__name__} "
            f"{given} given"
        )
    else:
        differ = [key for key in {**saved, **given} if saved.get(key) != given.get(key)]
        found = f"a {ckpt['model_class']} with " + ", ".join(
            f"{key}={saved.get(key)!r} (the model given: {given.get(key)!r})" for key in differ
        )
    dtype = ""
    if saved.get("dtype") != given.get("dtype") == config.dtype:
        dtype = (
            f" The model is trained in config.dtype ({config.dtype!r}); the run used "
            f"{saved.get('dtype')!r}: resume with dtype={saved.get('dtype')!r}."
        )
    raise ValueError(
        f"fit: the checkpoint at {ckpt['path']} holds {found}. Resume with a model like the "
        f"one the run started with (class, hyperparameters, dtype and seed).{dtype}"
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


def _check_same_data(saved: dict, saved_lengths: dict, start: Start, path):
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


def _load_run(start: Start, ckpt: dict) -> tuple["TrainConfig", dict, dict]:
    """Put a checkpoint's parameters, optimiser, RNG state, training state and best
    parameters into ``start`` (and its model), each checked alone and against the others;
    return the checkpoint's configuration, and the fingerprints and trajectory lengths of its
    training and validation data (:func:`autodiff.fingerprint.saved_fingerprint`,
    :func:`_saved_lengths`). Raises KeyError, TypeError or ValueError for a damaged
    checkpoint (:func:`resume_from` reports them as one)."""
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
    fixed = isinstance(model, LatentRNN) and config.alpha_mode == "constant"
    if fixed and state.alpha != config.alpha:
        raise ValueError(
            f"its alpha is {state.alpha!r} but its config keeps alpha={config.alpha!r} fixed"
        )
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
    built = OPTIMIZERS[config.optimizer](model.n_params, dtype=model.dtype)  # fit's settings
    names = ("beta1", "beta2", "eps")
    if any(getattr(optimizer, name) != getattr(built, name) for name in names):
        found = ", ".join(f"{name}={getattr(optimizer, name)!r}" for name in names)
        made = ", ".join(f"{name}={getattr(built, name)!r}" for name in names)
        raise ValueError(f"the optimiser has {found}; fit builds it with {made}")
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
    """The checkpoint's configuration: every field of :class:`autodiff.TrainConfig`, valid.
    Fields added since (:data:`_LATER_FIELDS`: a checkpoint written before them) and fields the
    run did not use (:func:`autodiff.config.inapplicable_settings`: a checkpoint written before
    they were refused) are read as their defaults, which a resume must then pass."""
    fields = dataclasses.fields(TrainConfig)
    names = {f.name for f in fields}
    if not isinstance(d, dict) or not names - set(_LATER_FIELDS) <= set(d) <= names:
        raise ValueError(
            "the stored config must have the fields of TrainConfig (those added since, "
            f"{', '.join(_LATER_FIELDS)}, may be missing) and no others"
        )
    method = d["method"] if d["method"] in CHOICES["method"] else "deer"
    later = {f.name: f.default for f in fields if f.name in _LATER_FIELDS}
    d = {**later, **d}  # the fields added since at their defaults
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
    """The stored lengths of the trajectories ``name`` (see
    :data:`~autodiff.fingerprint.FINGERPRINTED`) whose stored fingerprint is ``fingerprint``:
    None when it is (no such data); one trajectory when a checkpoint written before several
    were accepted stores none."""
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


def _saved_state(d, batches_per_epoch: int) -> State:
    """The checkpoint's training state, each field checked and the counters consistent."""
    names = {f.name for f in dataclasses.fields(State)}
    if not isinstance(d, dict) or set(d) - {"candidates"} != names - {"candidates"}:
        raise ValueError(
            f"train_state must have exactly the keys {sorted(names)} (candidates may be "
            "missing: a checkpoint written before it existed)"
        )
    if isinstance(d.get("epoch_acc"), dict):  # written before sequential fallbacks were counted
        d["epoch_acc"].setdefault("sequential", 0)
    s = State(**d)
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
        # a score (D_stsp + D_H) may be slightly negative: GMM D_stsp is a Monte-Carlo estimate
        and (
            scores is None
            or (isinstance(scores, dict) and _is_real(scores.get("score"), -_FLOAT_MAX))
        ),
        "epoch_acc": isinstance(s.epoch_acc, dict)
        and set(s.epoch_acc) == set(new_epoch_acc())
        and all(_is_real(v, 0.0, _FLOAT_MAX) for v in s.epoch_acc.values()),
        "history": isinstance(s.history, list)
        and all(_is_record(r, k + 1, batches_per_epoch) for k, r in enumerate(s.history)),
        "candidates": isinstance(s.candidates, list)
        and all(
            isinstance(c, dict)
            and set(c) == {"epoch", "scores"}
            and is_count(c["epoch"], 1)
            and isinstance(c["scores"], dict)
            and _is_real(c["scores"].get("score"), -_FLOAT_MAX, _FLOAT_MAX)
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
    """A history record of epoch ``epoch`` (1-based; :attr:`autodiff.TrainResult.history`): its
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
