"""fit / TrainConfig / checkpoints: learning, bit-identical resumption, interrupts, rejected steps,
validation-based selection and argument errors. Tiny float64 runs (one compile per kernel)."""

import errno
import itertools
import json
import math
import os
import re
import shutil
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import autodiff.gradients
import autodiff.memory
import autodiff.selection
import autodiff.train
import models
import models.metrics
import parscan
from autodiff.checkpoint import (
    CHECKPOINT_NAME,
    checkpoint_path,
    load_checkpoint,
    save_checkpoint,
)
from autodiff.config import (
    AUTO_ALPHA_SETTINGS,
    DEER_SETTINGS,
    GTF_SETTINGS,
    TrainConfig,
    inapplicable_settings,
)
from autodiff.fingerprint import block_moments, fingerprint, sampled_rows
from autodiff.gradients import gtf_loss_and_grad
from autodiff.optim import ExponentialDecay
from autodiff.train import (
    EpochInfo,
    NoValidationScoreWarning,
    StepInfo,
    TrainingDivergedError,
    TrainResult,
    check_fit,
    fit,
    window_starts,
)
from models import LinearSSM, ShPLRNN
from models.data import standardize
from models.metrics import REST_MIN_POINTS

#: small, fast and still learning: Adam at 1e-2 on 8 windows of 50 steps, 10 batches per epoch
BASE = {
    "sequence_length": 50,
    "batch_size": 8,
    "batches_per_epoch": 10,
    "epochs": 3,
    "optimizer": "adam",
    "lr_start": 1e-2,
    "lr_end": 1e-3,
    "alpha_mode": "auto",
    "alpha_interval": 3,
    "noise_level": 0.01,
    "dtype": "float64",
    "checkpoint_interval": 1,
    "validation_interval": 1,
    "validation_steps": 400,
}


def config(**kw):
    base = dict(BASE)
    if kw.get("alpha_mode") == "constant":  # never re-estimated: alpha_interval is refused
        del base["alpha_interval"]
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def lorenz():
    return models.generate("lorenz63", 3000, seed=1), models.generate("lorenz63", 1000, seed=2)


def small_model():
    return ShPLRNN(3, 16, dtype="float64", seed=0)


class Interrupt:
    """Callback raising KeyboardInterrupt after global step ``at`` (0-based)."""

    def __init__(self, at):
        self.at = at

    def __call__(self, info):
        if isinstance(info, StepInfo) and info.step == self.at:
            raise KeyboardInterrupt


def test_fit_reduces_the_loss(lorenz):
    x, _ = lorenz
    model = small_model()
    xs, _, _ = standardize(x)
    batch = xs[np.arange(0, 2900, 100)[:, None] + np.arange(51)]
    before = gtf_loss_and_grad(model, batch, alpha=0.2)[0]
    infos = []
    result = fit(
        model, x, config(epochs=5, batches_per_epoch=20, alpha_mode="constant", alpha=0.2),
        callback=infos.append,
    )  # fmt: skip
    after = gtf_loss_and_grad(result.model, batch, alpha=0.2)[0]
    assert after < before / 3
    assert isinstance(result, TrainResult) and result.n_bad_steps == 0
    assert result.model is not model and np.array_equal(result.model.params, result.last_params)
    assert result.best_epoch is None and len(result.history) == 5
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    steps = [i for i in infos if isinstance(i, StepInfo)]
    epochs = [i for i in infos if isinstance(i, EpochInfo)]
    assert [s.step for s in steps] == list(range(100)) and len(epochs) == 5
    assert all(s.accepted and s.newton_iters_max >= 1 and s.alpha == 0.2 for s in steps)
    np.testing.assert_allclose(result.model.standardization[0], x.mean(axis=0))


def test_a_callback_cannot_change_the_history_or_the_checkpoints(lorenz, tmp_path):
    """EpochInfo hands out copies: a callback that annotates the record or the best scores
    changes neither the history nor a checkpoint (a resume refused the annotated history
    as damaged)."""
    x, xv = lorenz

    def annotate(info):
        if isinstance(info, EpochInfo):
            info.record["note"] = "seen"
            if info.best_scores is not None:
                info.best_scores["score"] = -1.0
            if info.record["epoch"] == 2:
                raise KeyboardInterrupt

    cfg = config(epochs=3, batches_per_epoch=2)
    with pytest.raises(KeyboardInterrupt):
        fit(small_model(), x, cfg, checkpoint_dir=tmp_path, validation_data=xv, callback=annotate)
    result = fit(small_model(), x, cfg, checkpoint_dir=tmp_path, validation_data=xv, resume=True)
    assert all("note" not in record for record in result.history)
    assert result.best_scores["score"] >= 0.0


def test_noise_level_is_in_data_sds_also_without_standardisation(lorenz, monkeypatch):
    """With standardize=False the noise is noise_level times each column's sd of the
    training data (it was noise_level in the data's units: 10 times the signal of a column
    with sd 0.01)."""
    x, _ = lorenz
    scale = np.array([1.0, 100.0, 0.01])
    data = standardize(x)[0] * scale
    batches = []
    real = autodiff.train._loss_and_grad

    def first_batch(model, windows, alpha, config):
        batches.append(windows.copy())
        raise KeyboardInterrupt

    monkeypatch.setattr(autodiff.train, "_loss_and_grad", first_batch)
    for noise in (0.0, 0.1):
        cfg = config(noise_level=noise, standardize=False, alpha_mode="constant", batch_size=64)
        with pytest.raises(KeyboardInterrupt):
            fit(small_model(), data, cfg)
    monkeypatch.setattr(autodiff.train, "_loss_and_grad", real)
    noise_sd = (batches[1] - batches[0]).reshape(-1, 3).std(axis=0)
    np.testing.assert_allclose(noise_sd / data.std(axis=0), 0.1, rtol=0.1)


@pytest.fixture(scope="module")
def full_run(lorenz, tmp_path_factory):
    """The uninterrupted validated run every resumed one must reproduce bit for bit."""
    x, xv = lorenz
    directory = tmp_path_factory.mktemp("full")
    return fit(small_model(), x, config(), checkpoint_dir=directory, validation_data=xv)


def assert_same_run(resumed, full):
    assert np.array_equal(resumed.last_params, full.last_params)
    assert np.array_equal(resumed.model.params, full.model.params)
    assert resumed.best_epoch == full.best_epoch and resumed.alpha == full.alpha
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    assert [h.get("val_score") for h in resumed.history] == [
        h.get("val_score") for h in full.history
    ]


def test_resume_is_bit_identical(lorenz, full_run, tmp_path):
    x, xv = lorenz
    cfg = config()

    # Interrupted mid-epoch 2 (step 14 of 30): the checkpoint holds the last completed step.
    cut = tmp_path / "cut"

    def keep_epoch_one(info):
        if isinstance(info, EpochInfo) and info.record["epoch"] == 1:
            shutil.copytree(cut, tmp_path / "epoch1")
        Interrupt(14)(info)

    with pytest.raises(KeyboardInterrupt):
        fit(small_model(), x, cfg, checkpoint_dir=cut, validation_data=xv, callback=keep_epoch_one)
    ckpt = load_checkpoint(cut)
    assert ckpt["state"]["train_state"]["step"] == 15
    assert isinstance(models.load(cut / CHECKPOINT_NAME), ShPLRNN)

    for directory in (cut, tmp_path / "epoch1"):
        resumed = fit(small_model(), x, cfg, checkpoint_dir=directory, resume=True,
                      validation_data=xv)  # fmt: skip
        assert_same_run(resumed, full_run)


def test_any_exception_writes_a_resumable_checkpoint(lorenz, full_run, tmp_path, monkeypatch):
    """An error in a callback or in the validation stops training like Ctrl-C: the last
    completed step is checkpointed and a resume reproduces the uninterrupted run."""
    x, xv = lorenz
    cfg = config()

    def fail_at_step_17(info):
        if isinstance(info, StepInfo) and info.step == 17:
            raise RuntimeError("callback bug")

    with pytest.raises(RuntimeError, match="callback bug"):
        fit(small_model(), x, cfg, checkpoint_dir=tmp_path / "a", validation_data=xv,
            callback=fail_at_step_17)  # fmt: skip
    assert load_checkpoint(tmp_path / "a")["state"]["train_state"]["step"] == 18

    real, calls = autodiff.train.validate, []

    def fail_second_validation(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise ValueError("validation bug")
        return real(*args, **kw)

    monkeypatch.setattr(autodiff.train, "validate", fail_second_validation)
    with pytest.raises(ValueError, match="validation bug"):
        fit(small_model(), x, cfg, checkpoint_dir=tmp_path / "b", validation_data=xv)
    monkeypatch.undo()
    saved = load_checkpoint(tmp_path / "b")["state"]["train_state"]
    assert saved["step"] == 20 and saved["epoch_pending"] and len(saved["history"]) == 1
    for directory in ("a", "b"):
        resumed = fit(small_model(), x, cfg, checkpoint_dir=tmp_path / directory, resume=True,
                      validation_data=xv)  # fmt: skip
        assert_same_run(resumed, full_run)


def test_resume_keeps_the_learning_rate_schedule_of_the_first_run(lorenz, tmp_path):
    """The schedule spans the epochs of the run that started training: resuming 2 epochs as
    4 runs the extra steps at lr_end (a monotone sequence); resuming 4 as 2 stops early."""
    x, _ = lorenz

    def lrs(cfg, directory, **kw):
        infos = []
        fit(small_model(), x, cfg, checkpoint_dir=directory, callback=infos.append, **kw)
        return [i.lr for i in infos if isinstance(i, StepInfo)]

    first = lrs(config(epochs=2), tmp_path / "a")
    more = lrs(config(epochs=4), tmp_path / "a", resume=True)
    assert first == [ExponentialDecay(1e-2, 1e-3, 20)(k) for k in range(20)]
    assert more == [1e-3] * 20
    steps = first + more
    assert all(a >= b for a, b in itertools.pairwise(steps))

    with pytest.raises(KeyboardInterrupt):
        fit(small_model(), x, config(epochs=4), checkpoint_dir=tmp_path / "b",
            callback=Interrupt(13))  # fmt: skip
    fewer = lrs(config(epochs=2), tmp_path / "b", resume=True)
    assert fewer == [ExponentialDecay(1e-2, 1e-3, 40)(k) for k in range(14, 20)]


def test_resuming_with_as_many_epochs_as_trained_validates_the_last_epoch(lorenz, tmp_path):
    """A checkpoint of a 5-epoch run after epoch 3, which it did not validate (interval 2),
    resumed with epochs=3: epoch 3 is the last and is validated, then selected from, as when
    the resume starts mid-epoch 3 -- bitwise the same run."""
    x, xv = lorenz
    cfg = config(epochs=5, validation_interval=2, selection_starts=4, selection_steps=200)

    def stop_after_epoch_3(info):
        if isinstance(info, EpochInfo) and info.record["epoch"] == 3:
            raise KeyboardInterrupt

    results = []
    for name, stop in (("end", stop_after_epoch_3), ("mid", Interrupt(24))):
        with pytest.raises(KeyboardInterrupt):
            fit(small_model(), x, cfg, checkpoint_dir=tmp_path / name, validation_data=xv,
                callback=stop)  # fmt: skip
        history = load_checkpoint(tmp_path / name)["state"]["train_state"]["history"]
        assert [("val_score" in h) for h in history] == [False, True, False][: len(history)]
        results.append(fit(small_model(), x, replace(cfg, epochs=3), resume=True,
                           checkpoint_dir=tmp_path / name, validation_data=xv))  # fmt: skip
    at_end, mid = results
    assert "val_score" in at_end.history[2] and at_end.selection is not None
    assert_same_run(at_end, mid)
    assert at_end.best_scores == mid.best_scores
    for result in results:
        result.selection.pop("seconds")
    assert at_end.selection == mid.selection
    again = fit(small_model(), x, replace(cfg, epochs=3), resume=True,
                checkpoint_dir=tmp_path / "end", validation_data=xv)  # fmt: skip
    assert_same_run(again, mid)  # from the final checkpoint, which holds the validation


def test_interrupt_during_first_steps_leaves_a_loadable_checkpoint(lorenz, tmp_path):
    x, _ = lorenz
    with pytest.raises(KeyboardInterrupt):
        fit(small_model(), x, config(), checkpoint_dir=tmp_path, callback=Interrupt(0))
    ckpt = load_checkpoint(tmp_path)
    assert ckpt["state"]["train_state"]["step"] == 1
    model, meta = models.load_with_metadata(tmp_path / CHECKPOINT_NAME)
    assert np.all(np.isfinite(model.params))
    assert meta["train_state"]["config"] == config().to_dict()
    assert not list(tmp_path.glob("*.tmp"))


def test_corrupt_checkpoints_are_refused_clearly(lorenz, tmp_path):
    x, _ = lorenz
    with pytest.raises(KeyboardInterrupt):
        fit(small_model(), x, config(), checkpoint_dir=tmp_path, callback=Interrupt(0))
    raw = (tmp_path / CHECKPOINT_NAME).read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"load_checkpoint: .*cut\.npz is not a readable \.npz"):
        load_checkpoint(cut)
    fields = dict(np.load(tmp_path / CHECKPOINT_NAME))
    fields.pop("data_std", None)
    fields["data_mean"] = np.zeros(3)
    half = tmp_path / "half.npz"
    np.savez(half, **fields)
    with pytest.raises(ValueError, match=r"load_checkpoint: .*has data_mean but not data_std"):
        load_checkpoint(half)


def test_validation_selects_the_best_epoch(lorenz):
    x, xv = lorenz
    result = fit(small_model(), x, config(validation_starts=3), validation_data=xv)
    scores = [h["val_score"] for h in result.history]
    assert result.best_epoch == int(np.argmin(scores)) + 1
    assert result.best_scores["score"] == min(scores)
    if result.best_epoch != len(scores):
        assert not np.array_equal(result.model.params, result.last_params)
    assert all(h["val_time"] > 0 for h in result.history)
    assert result.wall_time == pytest.approx(sum(h["time"] for h in result.history))


@pytest.mark.parametrize("score, best", [(0.6, 1), (math.inf, 3)])
def test_best_epoch_ties(lorenz, monkeypatch, score, best):
    """Equal finite scores keep the earliest epoch; while all are inf, the newest wins -- and
    when every one is inf, fit says that it selected nothing."""
    x, xv = lorenz
    status = "ok" if math.isfinite(score) else "diverged"
    scores = {"dstsp": None, "dh": None, "score": score, "status": status}
    monkeypatch.setattr(autodiff.train, "validate", lambda *args: dict(scores))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fit(small_model(), x, config(batches_per_epoch=2), validation_data=xv)
    assert result.best_epoch == best
    said = [str(w.message) for w in caught if w.category is NoValidationScoreWarning]
    if math.isfinite(score):
        assert said == []
    else:
        assert said == [
            "fit: no validation measured a finite score (the last one, epoch 3: free run "
            "diverged); result.model is the final model, not a selected one, and it does not "
            "reconstruct the validation data. Try alpha_method='sup', lr_start=0.00333."
        ]
        assert caught[-1].filename == __file__  # points at the caller's line


def _linear_alrnn(w, h):
    """``F(z) = w z + h`` as a 2-d ALRNN without relu units (float64)."""
    model = models.ALRNN(2, 0)
    model.unflatten()["A"][...] = 0.0
    model.unflatten()["W"][...] = w
    model.unflatten()["h"][...] = h
    return model


def test_selection_passes_over_candidates_whose_long_runs_rest():
    """The best-validated candidate is passed over when more than 1/8 of its long free runs
    come to rest (a contraction onto a fixed point) for the next one that does not (a
    rotation); all resting: the fewest, the best-validated among equals; nothing decided
    for one candidate or validation data that rest themselves."""
    turn = np.array([[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]])
    contraction = _linear_alrnn(0.5 * np.eye(2), np.ones(2)).params.copy()
    rotation = _linear_alrnn(turn, np.zeros(2)).params.copy()
    model = _linear_alrnn(turn, np.zeros(2))
    circle = model.generate(np.array([1.0, 0.0]), 300)
    candidates = [{"epoch": e, "scores": {"score": s}} for e, s in ((4, 0.1), (2, 0.2), (6, 0.3))]
    params = np.stack([contraction, rotation, rotation])
    select = autodiff.selection.select
    assert select(model, candidates, params, circle, 16, 200) == (1, [16, 0, 0], [0, 0, 0])
    assert select(model, candidates, params[[0, 0, 0]], [circle, circle], 16, 200) == (
        0,
        [16, 16, 16],
        [0, 0, 0],
    )
    assert select(model, candidates[:1], params[:1], circle, 16, 200) is None
    resting = _linear_alrnn(0.5 * np.eye(2), np.ones(2)).generate(np.zeros(2), 300)
    assert select(model, candidates, params, resting, 16, 200) is None


def test_selection_counts_runs_that_blow_up_as_failed_like_resting_ones():
    """A run that leaves 1000 data ranges (a slow spiral outwards, finite) or becomes inf (a
    fast one) fails the candidate as a resting run does: such a candidate is passed over, and
    it is never kept over a best-validated one whose runs rest."""
    turn = np.array([[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]])
    model = _linear_alrnn(turn, np.zeros(2))
    circle = model.generate(np.array([1.0, 0.0]), 300)  # 2 data ranges: 2.0
    resting = _linear_alrnn(0.5 * np.eye(2), np.ones(2)).params.copy()
    rotation = model.params.copy()
    candidates = [{"epoch": e, "scores": {"score": s}} for e, s in ((4, 0.1), (2, 0.2), (6, 0.3))]
    select = autodiff.selection.select
    for growth, finite in ((1.05, True), (50.0, False)):  # x 1.7e4 in 200 steps; x 1e340
        spiral = _linear_alrnn(growth * turn, np.zeros(2))
        with np.errstate(over="ignore", invalid="ignore"):
            assert np.all(np.isfinite(spiral.generate(circle[:16], 200))) == finite
        params = np.stack([spiral.params, rotation, resting])
        assert select(model, candidates, params, circle, 16, 200) == (1, [0, 0, 16], [16, 0, 0])
        params = np.stack([resting, spiral.params])
        assert select(model, candidates[:2], params, circle, 16, 200) == (0, [16, 0], [0, 16])


def _scripted_selection(monkeypatch, counts, starts):
    """:func:`autodiff.selection.select` of ``len(counts)`` candidates whose long free runs
    fail as scripted: ``counts[k] = (resting, blown_up)`` of candidate k (the real runs
    replaced by these counts; the validation data, a circle, do not rest)."""
    turn = np.array([[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]])
    model = _linear_alrnn(turn, np.zeros(2))
    circle = model.generate(np.array([1.0, 0.0]), 300)
    scripted = iter(counts)
    monkeypatch.setattr(autodiff.selection, "_failed_runs", lambda *args: next(scripted))
    candidates = [{"epoch": k + 1, "scores": {"score": 0.1 * k}} for k in range(len(counts))]
    params = np.stack([model.params] * len(counts))
    result = autodiff.selection.select(model, candidates, params, circle, starts, 200)
    assert next(scripted, None) is None  # every candidate was run, once
    return result


@pytest.mark.parametrize(
    ("counts", "kept"),
    [
        ([(16, 0), (5, 0), (9, 0)], 1),
        ([(9, 0), (16, 0), (3, 2)], 2),
        ([(6, 0), (16, 0), (2, 5)], 0),  # failed = resting + blown up: 6, 16, 7
        ([(5, 0), (16, 0), (5, 0)], 0),  # a tie: the best-validated of the fewest
        ([(16, 0), (2, 3), (5, 0), (0, 5)], 1),
    ],
)
def test_selection_keeps_the_fewest_failures_when_every_candidate_fails(monkeypatch, counts, kept):
    """With more than FAILED_FRACTION_ALLOWED of every candidate's runs failed, the kept one
    is the one with the fewest failed (resting + blown-up) runs, the earliest (best-validated)
    among equals -- not the most, nor simply the first."""
    resting, blown_up = map(list, zip(*counts, strict=True))
    assert _scripted_selection(monkeypatch, counts, 16) == (kept, resting, blown_up)


def test_selection_allows_exactly_the_allowed_fraction_of_failed_runs(monkeypatch):
    """FAILED_FRACTION_ALLOWED of a candidate's runs failing still passes it (``<=``); one
    failed run more passes it over for the next candidate, whose runs all succeed."""
    fraction = autodiff.selection.FAILED_FRACTION_ALLOWED
    starts = 2 * round(1 / fraction)
    allowed = round(fraction * starts)
    assert allowed == fraction * starts >= 2  # an exact boundary, split between both kinds
    for first in ((allowed, 0), (0, allowed), (1, allowed - 1)):
        assert _scripted_selection(monkeypatch, [first, (0, 0)], starts)[0] == 0
    for first in ((allowed + 1, 0), (0, allowed + 1), (1, allowed)):
        assert _scripted_selection(monkeypatch, [first, (0, 0)], starts)[0] == 1


def test_fit_keeps_the_candidate_the_selection_chose(lorenz, monkeypatch):
    """fit keeps up to selection_candidates best-validated epochs (earliest first among
    equal scores) and returns the one the check keeps, with its scores and the report."""
    x, xv = lorenz
    scripted = iter([0.5, 0.3, 0.3, 0.9, 0.4])
    monkeypatch.setattr(
        autodiff.train,
        "validate",
        lambda *args: {"dstsp": 0.0, "dh": 0.0, "score": next(scripted), "status": "ok"},
    )
    seen = []

    def second(model, candidates, params, validation, starts, steps):
        seen.append(([c["epoch"] for c in candidates], starts, steps))
        return 1, [9, 0, 3], [2, 0, 0]

    monkeypatch.setattr(autodiff.selection, "select", second)
    cfg = config(epochs=5, batches_per_epoch=2, selection_candidates=3, selection_starts=5)
    result = fit(small_model(), x, cfg, validation_data=xv)
    assert seen == [([2, 3, 5], 5, 800)]  # 2 x validation_steps
    assert result.best_epoch == 3 and result.best_scores["score"] == 0.3
    assert result.selection.pop("seconds") >= 0
    assert result.selection == {
        "starts": 5,
        "steps": 800,
        "candidates": [
            {"epoch": 2, "score": 0.3, "at_rest": 9, "blown_up": 2},
            {"epoch": 3, "score": 0.3, "at_rest": 0, "blown_up": 0},
            {"epoch": 5, "score": 0.4, "at_rest": 3, "blown_up": 0},
        ],
    }
    scripted = iter([0.5, 0.3, 0.3, 0.9, 0.4])
    unchecked = replace(cfg, selection_candidates=1, selection_starts=16)
    alone = fit(small_model(), x, unchecked, validation_data=xv)
    assert alone.selection is None and alone.best_epoch == 2 and len(seen) == 1
    scripted = iter([0.5, 0.3, 0.3, 0.9, 0.4])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 3-step validation runs: too short to resolve D_H
        fit(small_model(), x, replace(cfg, validation_steps=3), validation_data=xv)
    assert seen[1][2] == REST_MIN_POINTS  # not 2 x 3: shorter runs cannot come to rest


def test_fit_warns_when_every_candidate_failed_the_selection_check(lorenz, monkeypatch):
    x, xv = lorenz
    monkeypatch.setattr(
        autodiff.train,
        "validate",
        lambda *args: {"dstsp": 0.0, "dh": 0.0, "score": 1.0, "status": "ok"},
    )
    counts = ([1, 0], [0, 1])  # 1 failed run of 8 each: within the 1/8 allowed
    monkeypatch.setattr(autodiff.selection, "select", lambda *args: (0, *counts))
    cfg = config(epochs=2, batches_per_epoch=2, selection_candidates=2, selection_starts=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", autodiff.SelectionWarning)
        fit(small_model(), x, cfg, validation_data=xv)
    counts = ([1, 5], [1, 0])  # 2 and 5 failed runs of 8: none passes, epoch 1 fails least
    with pytest.warns(autodiff.SelectionWarning) as caught:
        result = fit(small_model(), x, cfg, validation_data=xv)
    (warned,) = [w for w in caught if w.category is autodiff.SelectionWarning]
    assert result.best_epoch == 1 and str(warned.message) == (
        "fit: every one of the 2 candidate epochs failed the selection check (more than 1/8 of "
        "its 8 free runs of 800 steps came to rest or blew up); kept epoch 1, whose runs "
        "failed least (1 at rest, 1 blown up): its attractor is likely spurious. Look at its "
        "free runs and fixed points, or train anew (another seed, more epochs, more "
        "selection_candidates)."
    )
    assert warned.filename == __file__  # it points at the call of fit


def _poisoned(bad_steps):
    """A gtf_loss_and_grad that returns a NaN gradient on the given call numbers."""
    real = autodiff.gradients.gtf_loss_and_grad
    calls = {"n": 0}

    def fake(*args, **kw):
        loss, grad, info = real(*args, **kw)
        calls["n"] += 1
        if calls["n"] - 1 in bad_steps:
            grad = grad.copy()
            grad[3] = np.nan
        return loss, grad, info

    return fake


def test_non_finite_steps_are_rejected(lorenz, monkeypatch):
    x, _ = lorenz
    monkeypatch.setattr(autodiff.gradients, "gtf_loss_and_grad", _poisoned({4, 5, 17}))
    infos = []
    result = fit(small_model(), x, config(epochs=2), callback=infos.append)
    steps = [i for i in infos if isinstance(i, StepInfo)]
    assert [s.step for s in steps if not s.accepted] == [4, 5, 17]
    assert steps[5].bad_steps == 2 and steps[6].bad_steps == 0
    assert "non-finite" in steps[4].reason
    assert result.n_bad_steps == 3
    assert [h["bad_steps"] for h in result.history] == [2, 1]
    assert np.all(np.isfinite(result.model.params))


def test_rejected_step_leaves_parameters_unchanged(lorenz, monkeypatch):
    x, _ = lorenz
    monkeypatch.setattr(autodiff.gradients, "gtf_loss_and_grad", _poisoned({1}))
    infos = []
    fit(small_model(), x, config(epochs=1, batches_per_epoch=2), callback=infos.append)
    steps = [i for i in infos if isinstance(i, StepInfo)]
    assert [s.accepted for s in steps] == [True, False]
    monkeypatch.undo()
    after_first = fit(small_model(), x, config(epochs=1, batches_per_epoch=1)).last_params
    monkeypatch.setattr(autodiff.gradients, "gtf_loss_and_grad", _poisoned({1}))
    result = fit(small_model(), x, config(epochs=1, batches_per_epoch=2))
    np.testing.assert_array_equal(result.last_params, after_first)


def test_a_short_run_with_every_step_rejected_is_an_error_not_a_result(lorenz, monkeypatch):
    """Fewer steps than max_bad_steps, all rejected: the "trained" model would be the initial
    one, so fit stops as after max_bad_steps rejections in a row."""
    x, _ = lorenz
    monkeypatch.setattr(autodiff.gradients, "gtf_loss_and_grad", _poisoned(set(range(100))))
    short = config(epochs=1, batches_per_epoch=3, max_bad_steps=20)
    with pytest.raises(TrainingDivergedError, match=r"^fit: 3 consecutive steps were rej") as err:
        fit(small_model(), x, short)
    np.testing.assert_array_equal(err.value.params, small_model().params)
    monkeypatch.undo()
    monkeypatch.setattr(autodiff.gradients, "gtf_loss_and_grad", _poisoned({0, 1}))
    result = fit(small_model(), x, short)
    assert result.n_bad_steps == 2  # one accepted step: a result


def test_a_run_ending_with_parameters_that_fail_on_the_data_is_an_error(
    lorenz, tmp_path, monkeypatch
):
    """Without validation data the last parameters are the result: a run that ends on fewer
    rejected steps than max_bad_steps (or none) whose parameters then fail the final check --
    a step's loss and gradient on evenly spaced windows (gtf_loss_and_grad's 21st call) --
    raises, without checkpointing that state; one whose parameters pass it returns, and with
    validation data the validation judges them."""
    x, xv = lorenz
    cfg = config(epochs=2)  # 20 steps, max_bad_steps 20
    monkeypatch.setattr(autodiff.gradients, "gtf_loss_and_grad", _poisoned({17, 18, 19, 20}))
    with pytest.raises(TrainingDivergedError) as err:
        fit(small_model(), x, cfg, checkpoint_dir=tmp_path)
    assert str(err.value).startswith(
        "fit: the parameters the run ended with fail on evenly spaced windows of the training "
        "data (non-finite loss or gradient); its last step (epoch 2, batch 10, alpha="
    )
    kept = f"the last checkpoint {tmp_path / CHECKPOINT_NAME} is kept. "
    assert f"ended 3 rejected steps in a row. They were not checkpointed; {kept}" in str(err.value)
    assert "start a new run with one or more of: " in str(err.value)
    assert err.value.final and (err.value.streak, err.value.epoch, err.value.batch) == (3, 2, 10)
    ckpt = load_checkpoint(tmp_path)
    assert ckpt["state"]["train_state"]["step"] == 10  # the epoch-1 checkpoint
    monkeypatch.undo()  # a new count of gtf_loss_and_grad calls
    monkeypatch.setattr(autodiff.gradients, "gtf_loss_and_grad", _poisoned({7, 8, 9, 10}))
    with pytest.raises(TrainingDivergedError, match="the run ended with") as again:
        fit(small_model(), x, cfg, checkpoint_dir=tmp_path, resume=True)  # 10 steps, 1 check
    np.testing.assert_array_equal(again.value.params, err.value.params)
    monkeypatch.undo()  # a new count of gtf_loss_and_grad calls
    monkeypatch.setattr(autodiff.gradients, "gtf_loss_and_grad", _poisoned({20}))
    with pytest.raises(TrainingDivergedError, match=r"its last step \(.*\) was accepted\. "):
        fit(small_model(), x, cfg)
    monkeypatch.undo()  # a new count of gtf_loss_and_grad calls
    monkeypatch.setattr(autodiff.gradients, "gtf_loss_and_grad", _poisoned({17, 18, 19}))
    assert fit(small_model(), x, cfg).n_bad_steps == 3  # the parameters pass: a result
    monkeypatch.undo()  # a new count of gtf_loss_and_grad calls
    monkeypatch.setattr(autodiff.gradients, "gtf_loss_and_grad", _poisoned({17, 18, 19, 20}))
    assert fit(small_model(), x, cfg, validation_data=xv).n_bad_steps == 3  # no final check
    monkeypatch.undo()
    real, methods = autodiff.gradients.gtf_loss_and_grad, []

    def recording(model, data, **kw):
        methods.append(kw["method"])
        return real(model, data, **kw)

    monkeypatch.setattr(autodiff.gradients, "gtf_loss_and_grad", recording)
    fit(small_model(), x, config(epochs=1))
    assert methods == ["deer"] * 10 + ["sequential"]  # exact: no Newton solve out of iterations


def test_repeated_failures_stop_training_keeping_the_good_checkpoint(lorenz, tmp_path, monkeypatch):
    x, _ = lorenz
    cfg = config(epochs=3, max_bad_steps=4)
    monkeypatch.setattr(autodiff.gradients, "gtf_loss_and_grad", _poisoned(set(range(10, 100))))
    infos = []
    with pytest.raises(TrainingDivergedError, match="4 consecutive steps were rejected") as err:
        fit(small_model(), x, cfg, checkpoint_dir=tmp_path, callback=infos.append)
    assert "start a new run with" in str(err.value)
    assert (infos[-1].step, infos[-1].accepted, infos[-1].bad_steps) == (13, False, 4)
    ckpt = load_checkpoint(tmp_path)
    assert ckpt["state"]["train_state"]["step"] == 10  # the epoch-1 checkpoint, not overwritten
    np.testing.assert_array_equal(ckpt["params"], err.value.params)
    assert err.value.checkpoint == tmp_path / CHECKPOINT_NAME
    assert (err.value.streak, err.value.epoch, err.value.batch) == (4, 2, 4)
    assert "non-finite" in err.value.reason or "nan" in err.value.reason.lower(), err.value.reason


def test_interrupt_at_the_diverging_step_keeps_the_good_checkpoint(lorenz, tmp_path, monkeypatch):
    """A callback raising at the step where fit would raise TrainingDivergedError must not
    checkpoint that state: the resumed run diverges there again, as the uninterrupted one."""
    x, _ = lorenz
    cfg = config(epochs=3, max_bad_steps=4)
    monkeypatch.setattr(autodiff.gradients, "gtf_loss_and_grad", _poisoned(set(range(10, 100))))

    def interrupt_at_fourth_rejection(info):
        if isinstance(info, StepInfo) and info.bad_steps == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(
            small_model(),
            x,
            cfg,
            checkpoint_dir=tmp_path,
            callback=interrupt_at_fourth_rejection,
        )
    assert load_checkpoint(tmp_path)["state"]["train_state"]["step"] == 10
    monkeypatch.setattr(autodiff.gradients, "gtf_loss_and_grad", _poisoned(set(range(100))))
    with pytest.raises(TrainingDivergedError, match="4 consecutive steps were rejected"):
        fit(small_model(), x, cfg, checkpoint_dir=tmp_path, resume=True)


def test_an_interrupted_end_of_run_check_writes_no_checkpoint(lorenz, tmp_path, monkeypatch):
    """A Ctrl-C during the end-of-run check (no validation data) leaves the last periodic
    checkpoint: the state being checked may fail the check, which is never checkpointed.
    The resume redoes the steps since and ends bitwise as the uninterrupted run."""
    x, _ = lorenz
    cfg = config(epochs=2, checkpoint_interval=1)
    whole = fit(small_model(), x, cfg).model.params
    check = autodiff.train._final_check

    def interrupted(*args):
        check(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(autodiff.train, "_final_check", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit(small_model(), x, cfg, checkpoint_dir=tmp_path)
    assert load_checkpoint(tmp_path)["state"]["train_state"]["step"] == cfg.batches_per_epoch
    monkeypatch.setattr(autodiff.train, "_final_check", check)
    resumed = fit(small_model(), x, cfg, checkpoint_dir=tmp_path, resume=True).model.params
    np.testing.assert_array_equal(resumed, whole)


def test_a_failed_checkpoint_write_does_not_hide_the_exception(lorenz, tmp_path, monkeypatch):
    x, _ = lorenz

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    def interrupt(info):
        raise KeyboardInterrupt

    monkeypatch.setattr(autodiff.train, "save_checkpoint", no_space)
    with pytest.raises(KeyboardInterrupt) as err:
        fit(small_model(), x, config(), checkpoint_dir=tmp_path, callback=interrupt)
    assert any("checkpoint could not be written" in note for note in err.value.__notes__)


def test_single_window_spanning_the_data_and_sequential_method(lorenz):
    x, _ = lorenz
    short = x[:301]
    for method in ("deer", "sequential"):
        cfg = config(method=method, sequence_length=300, batch_size=2, epochs=1,
                     batches_per_epoch=2)  # fmt: skip
        result = fit(small_model(), short, cfg)
        assert result.n_bad_steps == 0 and np.isfinite(result.history[0]["loss"])


def ssm_config(**kw):
    """:func:`config` without its GTF settings, which fit refuses for a state-space model."""
    return config(alpha_interval=TrainConfig.alpha_interval, **kw)


def test_state_space_model_trains(lorenz):
    x, xv = lorenz
    model = LinearSSM(3, 4, 8, dtype="float64")
    result = fit(model, x, ssm_config(epochs=1, batches_per_epoch=3), validation_data=xv)
    assert result.n_bad_steps == 0 and result.history[0]["newton_iters_max"] == 0
    assert isinstance(result.model, LinearSSM)


def test_a_state_space_model_that_diverges_reports_no_alpha(lorenz):
    """It trains without GTF: its TrainingDivergedError has alpha None and its message none
    (it said alpha=0.1, the config's unused start)."""
    x, _ = lorenz
    model = LinearSSM(3, 4, 8, dtype="float64")
    cfg = ssm_config(epochs=1, batches_per_epoch=3, max_bad_steps=2, lr_start=1e30, lr_end=1e30)
    with pytest.raises(TrainingDivergedError, match=r"at epoch 1, batch \d, lr=1e\+30\.") as err:
        fit(model, x, cfg)
    assert err.value.alpha is None and "alpha=" not in str(err.value)


def test_unstandardised_data_are_copied_when_fit_starts(lorenz):
    """With standardize=False the caller's float64 array was trained on as it is: a callback
    that zeroed it at step 0 changed the run. The run's data are fixed when fit starts."""
    x, xv = lorenz
    cfg = config(epochs=1, standardize=False, dtype="float64")
    whole = fit(small_model(), x.copy(), cfg, validation_data=xv.copy()).model.params
    data, validation = x.copy(), xv.copy()

    def zero_the_data(info):
        data[...] = 0.0
        validation[...] = 0.0

    changed = fit(small_model(), data, cfg, validation_data=validation, callback=zero_the_data)
    np.testing.assert_array_equal(changed.model.params, whole)


def test_numpy_scalars_in_the_config_become_python_numbers(lorenz, tmp_path):
    x, _ = lorenz
    cfg = config(epochs=np.int64(2), batches_per_epoch=np.int32(2), alpha=np.float32(0.25),
                 lr_start=np.float32(0.5), l2={"W": np.float32(1e-3)}, seed=np.int8(3))  # fmt: skip
    assert type(cfg.epochs) is int and type(cfg.alpha) is float and cfg.alpha == 0.25
    assert type(cfg.l2["W"]) is float and type(cfg.lr_start) is float
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    fit(small_model(), x, cfg, checkpoint_dir=tmp_path)
    check_fit(small_model(), x, cfg, checkpoint_dir=tmp_path, resume=True)


def test_config_round_trips_through_json():
    cfg = config(grad_clip=1.0, l2={"A": 1e-3, "W": 1e-4}, validation_steps=None)
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert TrainConfig().batch_size == 16 and TrainConfig().batches_per_epoch == 50
    assert TrainConfig().alpha_gamma == 0.999 and TrainConfig().optimizer == "radam"


def test_config_dtype_accepts_numpy_float_types_and_dtypes_as_their_names():
    """Whatever np.dtype makes float32/float64, as the models take dtype."""
    for given, name in (
        (np.float64, "float64"),
        (np.float32, "float32"),
        (np.dtype("float64"), "float64"),
        (np.dtype("float32"), "float32"),
        ("float64", "float64"),
        ("f8", "float64"),
        ("f4", "float32"),
        ("double", "float64"),
        (float, "float64"),
    ):
        cfg = TrainConfig(dtype=given)
        assert cfg.dtype == name and type(cfg.dtype) is str
        assert cfg == TrainConfig(dtype=name) and cfg.to_dict()["dtype"] == name
        assert replace(cfg, epochs=3).dtype == name
    assert TrainConfig(dtype=ShPLRNN(3, 4, dtype="float32").dtype).dtype == "float32"
    for bad in (np.float16, np.dtype("float16"), np.dtype(">f8"), ">f8", np.int64, int, "x", None):
        with pytest.raises(ValueError, match=r"^TrainConfig: dtype must be one of \('float32'"):
            TrainConfig(dtype=bad)


def test_config_dtype_given_as_a_dtype_code_resumes_as_its_name(lorenz, tmp_path):
    """The checkpoint stores the canonical name; a resume giving the dtype another way is the
    same configuration."""
    x, _ = lorenz
    fit(
        small_model(), x, config(epochs=1, batches_per_epoch=1, dtype="f8"), checkpoint_dir=tmp_path
    )
    assert load_checkpoint(tmp_path)["state"]["config"]["dtype"] == "float64"
    again = config(epochs=2, batches_per_epoch=1, dtype=np.float64)
    assert (
        fit(small_model(), x, again, checkpoint_dir=tmp_path, resume=True).model.dtype == np.float64
    )


@pytest.mark.parametrize(
    "kw, exc, match",
    [
        ({"method": "bptt"}, ValueError, "method must be one of"),
        ({"sequence_length": 0}, ValueError, "sequence_length must be >= 1"),
        ({"batch_size": 2.5}, TypeError, "batch_size must be an int"),
        ({"epochs": True}, TypeError, "epochs must be an int"),
        ({"optimizer": "sgd"}, ValueError, "optimizer must be one of"),
        ({"lr_start": -1e-3}, ValueError, "lr_start must be finite"),
        ({"lr_end": float("nan")}, ValueError, "lr_end must be finite"),
        ({"alpha": 1.5}, ValueError, r"alpha must be finite and in \[0.0, 1.0\]"),
        ({"lr_start": 10**400}, ValueError, r"lr_start .*; got an int of about 400 digits\.$"),
        ({"epochs": -(10**5000)}, ValueError, r"epochs must be >= 1; got a negative int of about "),
        # a seed the checkpoints and args.json could not write (more than 4300 digits)
        ({"seed": 10**5000}, ValueError, r"seed must be >= 0 with at most 4300 digits \(model f"),
        ({"seed": 10**4300}, ValueError, r"seed must be .*; got an int of about 4300 digits\.$"),
        ({"seed": -1}, ValueError, r"seed must be >= 0 with at most 4300 digits .*; got -1\.$"),
        ({"seed": 1.0}, TypeError, r"seed must be an int; got float 1\.0\.$"),
        # a NumPy scalar's dtype was read: dtype=np.float64(nan) was "float64"
        (
            {"dtype": np.float64("nan")},
            ValueError,
            r"dtype must be one of .*; got np\.float64\(nan\)",
        ),
        # an array has no truth value: "ambiguous" from NumPy before the choice was refused
        ({"method": np.array(["deer", "sequential"])}, ValueError, r"method must be one of"),
        ({"alpha_mode": np.array(["auto"])}, ValueError, r"alpha_mode must be one of"),
        (
            {"selection_candidates": np.int64(1), "selection_starts": 100},
            ValueError,
            r"selection_starts=100 applies to selection_candidates > 1 only",
        ),
        ({"alpha": -(10**5000)}, ValueError, r"alpha .*; got a negative int of about 5000 digits"),
        ({"alpha": "auto"}, TypeError, r"got str 'auto'\. alpha_mode='auto' \(the default\)"),
        ({"alpha_mode": "fixed"}, ValueError, "alpha_mode must be one of"),
        ({"alpha_method": "max"}, ValueError, "alpha_method must be one of"),
        ({"alpha_gamma": 1.0}, ValueError, "alpha_gamma must be finite"),
        ({"jacobian": "dense"}, ValueError, "jacobian must be one of"),
        ({"noise_level": -0.1}, ValueError, "noise_level must be finite"),
        ({"dtype": "float16"}, ValueError, "dtype must be one of"),
        ({"grad_clip": 0.0}, ValueError, "grad_clip must be finite"),
        ({"l2": {"V": 1.0}}, ValueError, "l2 has unknown groups"),
        ({"l2": {1: 0.1, "x": 0.2}}, ValueError, r"l2 has unknown groups \['x', 1\]"),
        ({"l2": -1.0}, ValueError, "l2 weights must be finite and >= 0"),
        # beyond float (a bare OverflowError before)
        ({"l2": 10**400}, ValueError, r"l2 weights .*; got an int of about 400 digits\.$"),
        ({"l2": {"W": 10**400}}, ValueError, r"l2 weights .*; got an int of about 400 digits"),
        ({"checkpoint_interval": 0}, ValueError, "checkpoint_interval must be >= 1"),
        ({"validation_steps": 1}, ValueError, "validation_steps must be >= 2"),
        (
            {"lr_start": 1e300, "lr_end": 1e-300},
            ValueError,
            r"lr_end / lr_start = 1e-300 / 1e\+300",
        ),
        ({"validation_starts": 0}, ValueError, "validation_starts must be >= 1"),
        ({"validation_n_bins": 0}, ValueError, "validation_n_bins must be >= 1"),
        (
            {"method": "sequential", "jacobian": "diag"},
            ValueError,
            r"jacobian='diag' applies to method='deer' \(the DEER forward\) only; "
            r"method='sequential' \(BPTT, a fused CPU kernel\) .*; drop it or use method='deer'\.$",
        ),
        (
            {"method": "sequential", "newton_tol": 1e-6, "newton_max_iter": 3},
            ValueError,
            r"newton_tol=1e-06, newton_max_iter=3 apply to .*; drop them or use method='deer'",
        ),
    ],
)
def test_bad_config_values(kw, exc, match):
    with pytest.raises(exc, match="TrainConfig: .*" + match):
        TrainConfig(**kw)


def test_bad_config_reports_all_problems_and_unknown_keys():
    with pytest.raises(ValueError, match=r"batch_size.*epochs"):
        TrainConfig(batch_size=0, epochs=0)
    with pytest.raises(ValueError, match=r"unknown keys \['lr'\]"):
        TrainConfig.from_dict({"lr": 1e-3})
    with pytest.raises(ValueError, match=r"unknown keys \['a', 1\]"):  # keys of two types
        TrainConfig.from_dict({1: 2, "a": 3})


def test_fit_argument_errors(lorenz, tmp_path):
    x, _ = lorenz
    model = small_model()
    with pytest.raises(ValueError, match="fit: data has 2 columns"):
        fit(model, x[:, :2], config())
    with pytest.raises(ValueError, match="Lower sequence_length to at most 40"):
        fit(model, x[:41], config())
    with pytest.raises(ValueError, match="fit: resume=True needs checkpoint_dir"):
        fit(model, x, config(), resume=True)
    with pytest.raises(FileNotFoundError, match=r"^fit: no checkpoint at"):
        fit(model, x, config(), checkpoint_dir=tmp_path, resume=True)
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(ValueError, match=r"^fit: .* is not a readable .*start a new run\.$"):
        fit(model, x, config(), checkpoint_dir=tmp_path, resume=True)
    (tmp_path / CHECKPOINT_NAME).unlink()
    with pytest.raises(TypeError, match="fit: config must be a TrainConfig"):
        fit(model, x, {"epochs": 1})
    fit(model, x, config(epochs=1, batches_per_epoch=1), checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="already exists; pass resume=True"):
        fit(model, x, config(epochs=1, batches_per_epoch=1), checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match=r"cannot resume .*lr_start: 0.01 -> 0.02"):
        fit(model, x, config(lr_start=2e-2, batches_per_epoch=1), checkpoint_dir=tmp_path,
            resume=True)  # fmt: skip
    one_step = config(epochs=1, batches_per_epoch=1)
    with pytest.raises(ValueError, match=r"holds a ShPLRNN with L=16 \(the model given: 8\)\. "):
        fit(ShPLRNN(3, 8, dtype="float64"), x, one_step, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match=r"with seed=0 \(the model given: 5\)\. Resume with a "):
        fit(ShPLRNN(3, 16, dtype="float64", seed=5), x, one_step, checkpoint_dir=tmp_path,
            resume=True)  # fmt: skip
    with pytest.raises(ValueError, match=r"holds a model of class ShPLRNN \{.*\}, not the "):
        fit(models.ClippedShPLRNN(3, 16, dtype="float64"), x, one_step, checkpoint_dir=tmp_path,
            resume=True)  # fmt: skip
    # data with another number of columns (and a model built for them): the data are named
    with pytest.raises(
        ValueError,
        match=r"^fit: data has 4 columns, but the run in .* was trained on 3; resume with what "
        r"it was trained on\.$",
    ):
        fit(ShPLRNN(4, 16, dtype="float64"), np.c_[x, x[:, 0]], one_step,
            checkpoint_dir=tmp_path, resume=True)  # fmt: skip
    other = "float32" if one_step.dtype == "float64" else "float64"
    with pytest.raises(  # the same model: config.dtype changed, and is named
        ValueError,
        match=rf"The model is trained in config.dtype \('{other}'\); the run used "
        rf"'{one_step.dtype}': resume with dtype='{one_step.dtype}'\.$",
    ):
        fit(model, x, replace(one_step, dtype=other), checkpoint_dir=tmp_path, resume=True)


def test_unusable_checkpoint_dir_is_refused_before_training(lorenz, tmp_path):
    x, _ = lorenz
    a_file = tmp_path / "file"
    a_file.write_text("x")
    steps = []
    for directory, message in [
        (a_file, r"checkpoint_dir .*file is not a directory"),
        (a_file / "sub", r"checkpoint_dir .*sub cannot be created: .*file is not a directory"),
    ]:
        with pytest.raises(ValueError, match="fit: " + message):
            check_fit(small_model(), x, config(), checkpoint_dir=directory)
        with pytest.raises(ValueError, match="fit: " + message):
            fit(small_model(), x, config(), checkpoint_dir=directory, callback=steps.append)
    assert not steps
    with pytest.raises(TypeError, match=r"^fit: checkpoint_dir must be a str or Path; got int"):
        check_fit(small_model(), x, config(), checkpoint_dir=3)
    with pytest.raises(ValueError, match=r"^fit: checkpoint_dir must not be empty"):
        check_fit(small_model(), x, config(), checkpoint_dir="")
    dangling = tmp_path / "link"
    dangling.symlink_to(tmp_path / "missing" / "target")
    for directory in (dangling, dangling / "sub"):
        with pytest.raises(ValueError, match=r"link is a symbolic link to a missing target"):
            check_fit(small_model(), x, config(), checkpoint_dir=directory)
    # bare errors from the OS functions before: "embedded null byte", "File name too long"
    too_long = tmp_path / ("a" * 300)
    for directory, message in [
        (
            f"{tmp_path}/x\0y",
            r"^fit: checkpoint_dir '.*/x\\x00y' contains a NUL byte; remove it\.$",
        ),
        (too_long, r"^fit: checkpoint_dir .*a{300} is not a usable path \(File name too long\)\. "),
        (too_long / "sub", r"^fit: checkpoint_dir .*a{300}/sub is not a usable path \(File name "),
    ]:
        for run, resume in itertools.product((check_fit, fit), (False, True)):
            with pytest.raises(ValueError, match=message):
                run(small_model(), x, config(), checkpoint_dir=directory, resume=resume)
    assert set(tmp_path.iterdir()) == {a_file, dangling}  # nothing created


def test_a_relative_checkpoint_dir_is_resolved_once_when_fit_starts(lorenz, tmp_path, monkeypatch):
    """A callback's os.chdir moves no later checkpoint; result.checkpoint is absolute."""
    x, _ = lorenz
    monkeypatch.chdir(tmp_path)
    (tmp_path / "elsewhere").mkdir()

    def move_after_epoch_1(info):
        if isinstance(info, EpochInfo) and info.record["epoch"] == 1:
            os.chdir(tmp_path / "elsewhere")

    cfg = config(epochs=2, batches_per_epoch=2)
    result = fit(small_model(), x, cfg, checkpoint_dir="run", callback=move_after_epoch_1)
    assert result.checkpoint == tmp_path / "run" / CHECKPOINT_NAME
    assert load_checkpoint(tmp_path / "run")["state"]["train_state"]["step"] == 4
    assert not (tmp_path / "elsewhere" / "run").exists()


def test_fingerprints_of_wide_data_keep_fewer_rows():
    assert len(sampled_rows(100_000, 3)) == 1024
    assert len(sampled_rows(500, 3)) == 500
    assert len(sampled_rows(100_000, 1000)) == 65
    assert len(sampled_rows(100_000, 10**6)) == 16


def test_fingerprint_block_moments_match_a_plain_loop():
    x = np.random.default_rng(0).standard_normal((1000, 2)).astype(np.float32)
    starts = np.array([0, 1, 4, 999])
    expected = [
        [
            x[a:b].astype(np.float64).sum(axis=0),
            sum(i / (b - a) * x[a + i].astype(np.float64) for i in range(b - a)),
            np.abs(x[a:b].astype(np.float64)).sum(axis=0),
        ]
        for a, b in itertools.pairwise(starts)
    ]
    np.testing.assert_allclose(block_moments(x, starts), expected, rtol=1e-12)
    fp = fingerprint(x)
    assert fp.shape == [1000, 2] and fp.rows.dtype == fp.blocks.dtype == np.float64
    assert fp.rows.shape == (1000, 2) and fp.blocks.shape == (999, 3, 2)


def test_resume_refuses_data_changed_between_the_sampled_rows(lorenz, tmp_path):
    """Two rows swapped between sampled rows keep the sampled rows, the mean and the sd; the
    block moments see them (and the message names the rows). A last-bit change passes."""
    x, _ = lorenz
    cfg = config(epochs=2, batches_per_epoch=2)
    fit(small_model(), x, cfg, checkpoint_dir=tmp_path)
    starts = sampled_rows(*x.shape)
    k = int(np.flatnonzero(np.diff(starts) >= 3)[500])
    a, b = starts[k], starts[k + 1]
    swapped = x.copy()
    swapped[[a + 1, a + 2]] = x[[a + 2, a + 1]]
    message = rf"\(same shape, different values in rows {a}-{b - 1}\); resume with the data"
    with pytest.raises(ValueError, match=rf"^fit: data differs .* {message}"):
        check_fit(small_model(), swapped, cfg, checkpoint_dir=tmp_path, resume=True)
    check_fit(small_model(), np.nextafter(x, np.inf), cfg, checkpoint_dir=tmp_path, resume=True)


def test_resume_passes_a_stretch_of_zeros_regenerated_with_last_bit_noise(lorenz, tmp_path):
    """A block of zeros has no magnitude of its own: it keeps a row's tolerance, so noise of
    1e-17 there (regenerated data) resumes, while a real change there is refused."""
    x, _ = lorenz
    x = x.copy()
    x[1000:2000] = 0.0
    cfg = config(epochs=2, batches_per_epoch=2)
    fit(small_model(), x, cfg, checkpoint_dir=tmp_path)
    noisy = x.copy()
    noisy[1000:2000] = 1e-17 * np.random.default_rng(0).standard_normal((1000, 3))
    check_fit(small_model(), noisy, cfg, checkpoint_dir=tmp_path, resume=True)
    edited = x.copy()
    edited[1500, 0] = 1.0  # a real change there: refused (by the rows or the blocks)
    with pytest.raises(ValueError, match=r"^fit: data differs .* \(same shape, different values"):
        check_fit(small_model(), edited, cfg, checkpoint_dir=tmp_path, resume=True)


@pytest.mark.parametrize(("dtype", "scale"), [("float64", 1e-4), ("float32", 0.05)])
def test_resume_refuses_other_data_on_a_large_offset(lorenz, tmp_path, dtype, scale):
    """The tolerance is relative to the data's range, not their magnitude: a signal of sd
    1e-3 on an offset of 1000 is refused time-reversed (which keeps its mean and sd); data
    regenerated with last-bit differences pass, in float32 too (a few of its ulps at the
    offset are more than 1e-5 of the range)."""
    x, _ = lorenz
    offset = (1000.0 + scale * x).astype(dtype)
    cfg = config(epochs=2, batches_per_epoch=2)
    fit(small_model(), offset, cfg, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match=r"^fit: data differs .* \(same shape, different values"):
        check_fit(small_model(), offset[::-1].copy(), cfg, checkpoint_dir=tmp_path, resume=True)
    regenerated = np.nextafter(offset, np.zeros(1, dtype))
    check_fit(small_model(), regenerated, cfg, checkpoint_dir=tmp_path, resume=True)


def test_unwritable_checkpoint_dir_is_refused(lorenz, tmp_path, monkeypatch):
    x, _ = lorenz
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    real_access = os.access  # root may write anywhere: deny like the OS would for a user
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode))
    for directory in (locked, locked / "sub"):
        with pytest.raises(ValueError, match=r"fit: checkpoint_dir .* is not writable \(no write"):
            check_fit(small_model(), x, config(), checkpoint_dir=directory)
    # a read-only file system is named as such: no permission would help
    read_only = os.statvfs_result((0,) * 8 + (os.ST_RDONLY, 255))
    monkeypatch.setattr(os, "statvfs", lambda p: read_only)
    message = rf"is not writable \({re.escape(str(locked))} is on a read-only file system\)"
    with pytest.raises(ValueError, match=message):
        check_fit(small_model(), x, config(), checkpoint_dir=locked)


def test_gtf_settings_are_refused_for_state_space_models(lorenz):
    """Every GTF/DEER setting off its default is listed at once, never silently ignored."""
    x, _ = lorenz
    ssm = LinearSSM(3, 4, 8, dtype="float64")
    cfg = ssm_config(alpha_mode="constant", jacobian="diag", newton_max_iter=5, seed=3)
    message = (
        "fit: alpha_mode='constant', jacobian='diag', newton_max_iter=5 apply to the latent "
        "RNNs (GTF-DEER) only; a LinearSSM is trained by teacher-forced linear scans, without "
        "GTF or Newton iterations; drop them."
    )
    for call in (check_fit, fit):
        with pytest.raises(ValueError) as err:
            call(ssm, x, cfg)
        assert str(err.value) == message
        with pytest.raises(ValueError, match=r"^fit: method='sequential' applies to the latent "):
            call(ssm, x, ssm_config(method="sequential"))
    with pytest.raises(ValueError, match=r"^fit: alpha_interval=3 applies .*; drop it\.$"):
        check_fit(ssm, x, config())
    check_fit(small_model(), x, cfg)  # all of them apply to a latent RNN


def test_inapplicable_settings_is_the_one_rule():
    defaults = TrainConfig()
    gtf = TrainConfig(alpha=0.5, alpha_method="sup", alpha_gamma=0.9, newton_tol=1e-6, seed=1)
    assert inapplicable_settings(defaults, latent_rnn=False) == []
    assert inapplicable_settings(gtf, latent_rnn=False) == [
        "alpha", "alpha_method", "alpha_gamma", "newton_tol"]  # fmt: skip
    assert inapplicable_settings(gtf, latent_rnn=True) == []
    sequential = TrainConfig(method="sequential", alpha_mode="constant")
    assert inapplicable_settings(sequential, latent_rnn=True) == []
    assert inapplicable_settings(sequential, latent_rnn=False) == ["method", "alpha_mode"]
    assert set(DEER_SETTINGS) - set(GTF_SETTINGS) == {"backend"}  # an SSM's scans use it
    fused = SimpleNamespace(**{**asdict(sequential), "backend": "cpu"})
    assert inapplicable_settings(fused, latent_rnn=True) == ["backend"]
    assert inapplicable_settings(fused, latent_rnn=False) == ["method", "alpha_mode"]
    assert set(AUTO_ALPHA_SETTINGS) < set(GTF_SETTINGS)
    # a constant alpha is never re-estimated
    fixed = SimpleNamespace(**{**asdict(gtf), "alpha_mode": "constant", "alpha_interval": 2})
    assert inapplicable_settings(fixed, latent_rnn=True) == [
        "alpha_method", "alpha_gamma", "alpha_interval"]  # fmt: skip
    with pytest.raises(ValueError) as info:
        TrainConfig(alpha_mode="constant", alpha=0.2, alpha_method="sup", alpha_gamma=0.9)
    assert str(info.value) == (
        "TrainConfig: alpha_method='sup', alpha_gamma=0.9 apply to alpha_mode='auto' only; "
        "alpha_mode='constant' keeps alpha fixed and never re-estimates it; drop them or use "
        "alpha_mode='auto'."
    )


def test_the_selection_runs_are_refused_with_one_candidate():
    """selection_candidates=1 keeps the best-validated epoch unchecked: the check's free runs
    were ignored."""
    one = TrainConfig(selection_candidates=1)
    assert inapplicable_settings(one, latent_rnn=True) == []
    runs = SimpleNamespace(**{**asdict(one), "selection_starts": 4, "selection_steps": 50})
    assert inapplicable_settings(runs, latent_rnn=True) == ["selection_starts", "selection_steps"]
    assert inapplicable_settings(runs, latent_rnn=False) == ["selection_starts", "selection_steps"]
    assert TrainConfig(selection_candidates=2, selection_starts=4).selection_starts == 4
    with pytest.raises(ValueError) as info:
        TrainConfig(selection_candidates=1, selection_starts=4, selection_steps=50)
    assert str(info.value) == (
        "TrainConfig: selection_starts=4, selection_steps=50 apply to selection_candidates > 1 "
        "only; selection_candidates=1 keeps the best-validated epoch unchecked; drop them or "
        "raise selection_candidates."
    )


def test_backend_is_refused_with_the_sequential_method():
    with pytest.raises(ValueError, match=r"^TrainConfig: backend='cuda' applies to method='deer'"):
        TrainConfig(method="sequential", backend="cuda")  # it ran on the CPU without a word


@pytest.mark.skipif("cuda" in parscan.available_backends(), reason="needs a machine without GPU")
def test_backend_cuda_without_a_gpu_is_refused_before_the_first_step(lorenz, tmp_path):
    x, _ = lorenz
    for model, cfg in [
        (small_model(), config(backend="cuda")),
        (LinearSSM(3, 4, 5), ssm_config(backend="cuda")),
    ]:
        with pytest.raises(ValueError, match=r"^fit: backend='cuda' is not available \(numba"):
            check_fit(model, x, cfg)
        with pytest.raises(ValueError, match=r"^fit: backend='cuda' is not available"):
            fit(model, x, cfg, checkpoint_dir=tmp_path)
        assert not any(tmp_path.iterdir())  # no checkpoint that a rerun would have to resume


def test_transposed_data_are_recognised(lorenz):
    x, xv = lorenz
    wide = x[:, :2].T  # (2, 3000): as many rows as a 2-d model observes, but transposed
    with pytest.raises(ValueError, match=r"^fit: data has 3000 columns but the model observes "
                       r"N = 2\. Shape \(2, 3000\) looks transposed: pass data\.T "):  # fmt: skip
        check_fit(ShPLRNN(2, 8, dtype="float64"), wide, config())
    with pytest.raises(ValueError, match=r"validation_data has 1000 columns .* pass validation"):
        check_fit(small_model(), x, config(), validation_data=xv.T)
    with pytest.raises(ValueError, match=r"N = 3\. Pass a \(T, 3\) trajectory or use a model "
                       r"with n_obs=2\.$"):  # fmt: skip
        check_fit(small_model(), x[:, :2], config())


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs the /proc file system")
def test_a_checkpoint_dir_where_nothing_can_be_written_fails_before_the_first_step(
    lorenz, monkeypatch
):
    """/proc passes the permission check for root (simulated for everyone): fit's trial
    write finds it, naming fit, the directory and the OS's reason, with the OS's class."""
    x, _ = lorenz
    monkeypatch.setattr(os, "access", lambda path, mode: True)
    steps = []
    for directory, action, attempt in [
        ("/proc/nope", "create", lambda: os.mkdir("/proc/nope")),
        ("/proc", "write a file in", lambda: open("/proc/parscan-probe", "x")),
    ]:
        check_fit(small_model(), x, config(), checkpoint_dir=directory)  # writes nothing
        with pytest.raises(OSError) as err:
            fit(small_model(), x, config(), checkpoint_dir=directory, callback=steps.append)
        with pytest.raises(OSError) as direct:
            attempt()
        assert type(err.value) is type(direct.value) and err.value.errno == direct.value.errno
        assert str(err.value) == (
            f"fit: cannot {action} checkpoint_dir {directory} ({direct.value.strerror}). "
            "Choose a writable directory."
        )
    assert not steps


def test_a_checkpoint_that_cannot_be_written_names_fit_and_the_file(lorenz, tmp_path, monkeypatch):
    x, _ = lorenz

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", full_disk)
    with pytest.raises(OSError) as err:
        fit(small_model(), x, config(epochs=1, batches_per_epoch=1), checkpoint_dir=tmp_path)
    assert err.value.errno == errno.ENOSPC
    assert str(err.value).startswith(
        f"fit: cannot write {tmp_path / CHECKPOINT_NAME} (No space left on device); "
    )
    assert not list(tmp_path.iterdir())  # neither a checkpoint nor a temporary file


def test_resume_refuses_other_data_and_validation(lorenz, tmp_path):
    """Validation used or not, and the data (shape, values at evenly spaced rows: a reversed
    copy has the same mean and sd), must be those of the interrupted run."""
    x, xv = lorenz
    cfg = config(epochs=2, batches_per_epoch=2)
    fit(small_model(), x, cfg, checkpoint_dir=tmp_path / "val", validation_data=xv)
    fit(small_model(), x, cfg, checkpoint_dir=tmp_path / "noval")
    before = (tmp_path / "val" / CHECKPOINT_NAME).read_bytes()
    for directory, kw, message in [
        ("val", {}, r"was validated on validation_data of shape \(1000, 3\)"),
        ("noval", {"validation_data": xv}, "was trained without validation_data"),
        ("val", {"validation_data": xv[::-1]}, "validation_data differs .*different values"),
        ("val", {"validation_data": xv[:-1]}, r"shape \(1000, 3\) -> \(999, 3\)"),
        ("noval", {"data": x[::-1]}, "fit: data differs .*different values"),
    ]:
        kw = {"data": x, **kw}
        with pytest.raises(ValueError, match=message):
            check_fit(small_model(), config=cfg, checkpoint_dir=tmp_path / directory,
                      resume=True, **kw)  # fmt: skip
    assert (tmp_path / "val" / CHECKPOINT_NAME).read_bytes() == before
    check_fit(small_model(), x, cfg, checkpoint_dir=tmp_path / "val", resume=True,
              validation_data=xv.astype(np.float32))  # fmt: skip


def _rewrite(path, edit_meta=None, edit_fields=None):
    """Rewrite the checkpoint at ``path`` with its training metadata or fields edited."""
    fields = dict(np.load(path))
    if edit_meta is not None:
        meta = json.loads(str(fields["metadata"]))
        edit_meta(meta)
        fields["metadata"] = np.array(json.dumps(meta))
    if edit_fields is not None:
        edit_fields(fields)
    np.savez(path, **fields)


def _train_state(edit):
    return lambda meta: edit(meta["train_state"]["train_state"])


@pytest.mark.parametrize(
    "settings, what",
    [
        ({"validation_steps": 10**7}, "each validation's free runs need about 5.36 GiB"),
        ({"selection_steps": 2 * 10**7}, "the selection check's free runs need about 1.34 GiB"),
        ({"selection_starts": 10**8}, "the selection check's free runs need about 3.36 GiB"),
    ],
)
def test_validation_and_selection_runs_beyond_memory_are_refused_before_training(
    lorenz, tmp_path, monkeypatch, settings, what
):
    """They were found only after training (validation_steps, which a resume keeps: the run
    could never finish), naming generate, or as NumPy's bare MemoryError."""
    x, xv = lorenz
    monkeypatch.setattr(autodiff.train, "available_bytes", lambda: 2**30)
    cfg = config(epochs=1, **settings)
    names = "validation_steps or validation_starts" if "validation" in what else "selection_"
    for call in (check_fit, fit):
        with pytest.raises(ValueError, match=rf"^fit: {what} of memory and 1 GiB are .*{names}"):
            call(small_model(), x, cfg, checkpoint_dir=tmp_path, validation_data=xv)
    assert not list(tmp_path.iterdir())


def test_the_validation_estimate_sums_the_parts_own_lengths(lorenz, monkeypatch):
    """validation_steps=None runs each part for its own length: one long and several short
    parts need the sum of their lengths, not the longest times their number (refused
    before with 4x the memory the runs need)."""
    x, xv = lorenz
    parts = [xv] + [xv[:50]] * 9
    cfg = config(epochs=1, validation_steps=None, validation_starts=4, selection_candidates=1)
    need = 4 * sum(len(p) - 1 for p in parts) * 48 * 3  # scores dominate: 48 bytes an obs.
    monkeypatch.setattr(autodiff.train, "available_bytes", lambda: 2 * need)
    check_fit(small_model(), x, cfg, validation_data=parts)
    monkeypatch.setattr(autodiff.train, "available_bytes", lambda: need - 1)
    with pytest.raises(ValueError, match=r"^fit: each validation's free runs need about "):
        check_fit(small_model(), x, cfg, validation_data=parts)


@pytest.mark.parametrize(
    "edit_meta, edit_fields",
    [
        (lambda m: m["train_state"].pop("config"), None),
        (lambda m: m.update(train_state=[1, 2]), None),
        (lambda m: m["train_state"]["config"].update(epochs="2"), None),
        (lambda m: m["train_state"]["config"].pop("seed"), None),  # not a field added since
        (lambda m: m["train_state"]["config"].update(colour="blue"), None),
        (lambda m: m["train_state"].update(rng_state={"x": 1}), None),
        # numbers no uint64 or float holds (OverflowError before)
        (lambda m: m["train_state"]["rng_state"]["state"].update(state=-1), None),
        (lambda m: m["train_state"]["config"].update(lr_start=10**400), None),
        (lambda m: m["train_state"].update(data_shape=[3000]), None),
        (lambda m: m["train_state"].update(validation_data_shape=None), None),
        (lambda m: m["train_state"].update(data_lengths=[1000, 1000]), None),  # sum != 3000
        (lambda m: m["train_state"].update(data_lengths=[2999, 1]), None),  # a 1-step one
        (lambda m: m["train_state"].update(data_lengths="3000"), None),
        (lambda m: m["train_state"].update(validation_data_lengths=[500, 400]), None),  # != 1000
        (lambda m: m["train_state"].update(validation_data_lengths=[999, 1]), None),
        (lambda m: m["train_state"].update(validation_data_lengths=None), None),
        (lambda m: m["train_state"].update(validation_data_lengths=[1000.0]), None),
        (_train_state(lambda s: s.update(step="3")), None),
        (_train_state(lambda s: s.update(step=-5)), None),
        (_train_state(lambda s: s.update(step=1)), None),
        (_train_state(lambda s: s.update(history="x")), None),
        (_train_state(lambda s: s.update(schedule_steps=0)), None),
        (_train_state(lambda s: s.update(alpha=float("nan"))), None),
        (_train_state(lambda s: s.update(best_epoch=None)), None),
        (_train_state(lambda s: s["epoch_acc"].pop("time")), None),
        (None, lambda f: f.update({"optimizer.m": f["optimizer.m"][:5]})),
        (None, lambda f: f.update({"optimizer.v": np.full_like(f["optimizer.v"], np.nan)})),
        (None, lambda f: f.update({"optimizer.t": np.array(2.7)})),
        (None, lambda f: f.update({"optimizer.t": np.array(1)})),
        # fit builds its optimiser with the default betas and eps: others come from an edit
        (None, lambda f: f.update({"optimizer.beta2": np.array(0.5)})),
        (None, lambda f: f.update({"array.best_params": f["array.best_params"][:3]})),
        (None, lambda f: f.update({"array.candidate_params": f["array.candidate_params"][:1]})),
        (None, lambda f: f.pop("array.candidate_params")),
        (_train_state(lambda s: s["candidates"][0].update(epoch=0)), None),
        (_train_state(lambda s: s["candidates"][0]["scores"].update(score=math.inf)), None),
        (None, lambda f: f.update(params=f["params"].astype(np.float32))),
        (None, lambda f: f.pop("array.data_rows")),
        # a NaN fingerprint value would pass any comparison of the data (its column's)
        (None, lambda f: f["array.data_rows"].__setitem__((5, 1), np.nan)),
        (None, lambda f: f["array.validation_data_rows"].__setitem__((5, 1), np.inf)),
        (None, lambda f: f["array.data_blocks"].__setitem__((5, 0, 1), np.nan)),
        (None, lambda f: f.update({"array.data_blocks": f["array.data_blocks"][1:]})),
        (None, lambda f: f.update({"array.data_blocks": f["array.data_blocks"].astype(int)})),
        # bare Python errors before: a list is no mapping; (2,) and (3,) do not broadcast
        (None, lambda f: f.update(hyperparameters=np.array("[3, 16]"))),
        # JSON that json cannot read: nested 10^5 deep (RecursionError), a 5000-digit number
        (None, lambda f: f.update(metadata=np.array("[" * 10**5 + "]" * 10**5))),
        (None, lambda f: f.update(hyperparameters=np.array('{"M": ' + "9" * 5000 + "}"))),
        (None, lambda f: f.update(data_mean=f["data_mean"][:2], data_std=f["data_std"][:2])),
        (None, lambda f: f.update(format_version=np.array(99))),  # models.load refuses it
        (lambda m: m.update(format_version="2"), None),
        (_train_state(lambda s: s["history"].__setitem__(0, {"epoch": "x"})), None),
        (_train_state(lambda s: s["history"][1].update(loss="x")), None),
        (_train_state(lambda s: s["history"][1].update(epoch=1)), None),
        (_train_state(lambda s: s["candidates"][0].update(epoch=99)), None),  # not trained
    ],
)
def test_inconsistent_checkpoint_contents_are_refused(lorenz, tmp_path, edit_meta, edit_fields):
    x, xv = lorenz
    cfg = config(epochs=2, batches_per_epoch=2)
    fit(small_model(), x, cfg, checkpoint_dir=tmp_path, validation_data=xv)
    _rewrite(tmp_path / CHECKPOINT_NAME, edit_meta, edit_fields)
    for call in (check_fit, fit):
        with pytest.raises(ValueError, match="is damaged or from another version"):
            call(small_model(), x, cfg, checkpoint_dir=tmp_path, resume=True, validation_data=xv)


def test_a_stored_alpha_other_than_a_constant_one_is_refused(lorenz, tmp_path):
    """alpha_mode='constant' never changes alpha: another stored alpha is damage (it was
    trained on with, while the config said 0.2)."""
    x, _ = lorenz
    cfg = config(epochs=2, batches_per_epoch=2, alpha_mode="constant", alpha=0.2)
    fit(small_model(), x, replace(cfg, epochs=1), checkpoint_dir=tmp_path)
    _rewrite(tmp_path / CHECKPOINT_NAME, _train_state(lambda s: s.update(alpha=0.9)))
    with pytest.raises(ValueError, match=r"damaged .*its alpha is 0\.9 but its config keeps"):
        fit(small_model(), x, cfg, checkpoint_dir=tmp_path, resume=True)


def test_checkpoint_of_another_format_version_is_refused(lorenz, tmp_path):
    x, _ = lorenz
    cfg = config(epochs=1, batches_per_epoch=1)
    fit(small_model(), x, cfg, checkpoint_dir=tmp_path)
    _rewrite(tmp_path / CHECKPOINT_NAME, lambda meta: meta.update(format_version=1))
    with pytest.raises(ValueError, match="has checkpoint format 1, from another version"):
        check_fit(small_model(), x, cfg, checkpoint_dir=tmp_path, resume=True)


def test_fit_refuses_parameters_it_cannot_train_from(lorenz):
    """NaN/inf parameters, or parameters beyond the range of config.dtype, are refused by fit
    (and check_fit) in fit's name with the first index, before the model is cast."""
    x, _ = lorenz
    one = config(epochs=1, batches_per_epoch=1)
    for bad in (np.nan, np.inf):
        model = small_model()
        model.params[5] = bad
        for run in (fit, check_fit):
            with pytest.raises(
                ValueError,
                match=r"^fit: model.params contains NaN or inf \(first at index 5: (nan|inf)\); "
                r"training cannot start from it\. Re-initialise the model",
            ):
                run(model, x, one)
    model = small_model()
    model.params[7] = 1e39  # finite in float64, inf in float32
    for run in (fit, check_fit):
        with pytest.raises(
            ValueError,
            match=r"^fit: model.params\[7\] = 1e\+39 is beyond the range of float32, the training "
            r"dtype .* Pass TrainConfig\(dtype='float64'\) or rescale the parameters\.$",
        ):
            run(model, x, replace(one, dtype="float32"))
    check_fit(model, x, one)  # float64: in range


def test_data_beyond_the_range_of_the_training_dtype_are_refused_before_training(lorenz, tmp_path):
    """Training or validation data that the training dtype would make inf -- in the training
    units: as given, or standardised with the training data's mean and sd -- are refused by
    fit and check_fit before the first step, naming the first value and the fixes."""
    x, xv = lorenz
    f32 = config(epochs=1, batches_per_epoch=1, dtype="float32")
    raw = replace(f32, standardize=False)
    where = r" is beyond the range of float32, the training dtype \(config\.dtype; largest "
    for data, kw, message in [
        (
            x * 1e40,
            {"config": raw},
            "^fit: data\\[0, 0\\] = " + re.escape(f"{x[0, 0] * 1e40:.6g}") + where,
        ),
        ([x[:1000], x[1000:] * 1e40], {"config": raw}, r"^fit: data\[1\]\[0, 0\] = "),
        (x, {"config": f32, "validation_data": xv * 1e40}, r"^fit: validation_data\[0, 0\] "),
        (x, {"config": f32, "validation_data": [xv, xv * 1e40]}, r"validation_data\[1\]\[0, "),
    ]:
        fix = "standardize=True" if kw["config"] is raw else "validation_data in the units of"
        for run in (check_fit, fit):
            with pytest.raises(ValueError, match=message) as err:
                run(small_model(), data, checkpoint_dir=tmp_path / "run", **kw)
            assert fix in str(err.value)
            assert str(err.value).endswith(" or TrainConfig(dtype='float64').")
    assert "(standardised with the training data's mean and sd: " in str(err.value)
    assert not (tmp_path / "run").exists()  # refused before the first step
    check_fit(small_model(), x * 1e40, replace(raw, dtype="float64"))  # in range


def test_check_fit_refuses_what_fit_refuses_and_writes_nothing(lorenz, tmp_path):
    x, _ = lorenz
    one = config(epochs=1, batches_per_epoch=1)
    check_fit(small_model(), x, one, checkpoint_dir=tmp_path / "new")
    assert not (tmp_path / "new").exists()
    with pytest.raises(ValueError, match="fit: data has 2 columns"):
        check_fit(small_model(), x[:, :2], one)
    fit(small_model(), x, config(epochs=2, batches_per_epoch=1), checkpoint_dir=tmp_path)
    before = (tmp_path / CHECKPOINT_NAME).read_bytes()
    check_fit(small_model(), x, config(epochs=3, batches_per_epoch=1), checkpoint_dir=tmp_path,
              resume=True)  # fmt: skip
    for cfg, message in [
        (
            config(epochs=1, batches_per_epoch=1),
            r"has trained 2 epochs, more than the 1 asked for; resume with 2 epochs or more\.$",
        ),
        (config(epochs=2, batch_size=4, batches_per_epoch=1), "batch_size: 8 -> 4"),
    ]:
        with pytest.raises(ValueError, match=message):
            check_fit(small_model(), x, cfg, checkpoint_dir=tmp_path, resume=True)
        with pytest.raises(ValueError, match=message):
            fit(small_model(), x, cfg, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match=r"data differs .* \(same shape, different values at "):
        check_fit(small_model(), x + 1.0, config(epochs=2, batches_per_epoch=1),
                  checkpoint_dir=tmp_path, resume=True)  # fmt: skip
    between = x.copy()  # a change between the rows the fingerprint keeps: its blocks see it
    between[1] += 100.0
    with pytest.raises(ValueError, match=r"\(same shape, different values in rows 0-2\)"):
        check_fit(small_model(), between, config(epochs=2, batches_per_epoch=1),
                  checkpoint_dir=tmp_path, resume=True)  # fmt: skip
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == before
    # and the mean/sd, in a checkpoint written before the fingerprints kept blocks
    _rewrite(tmp_path / CHECKPOINT_NAME, edit_fields=lambda f: f.pop("array.data_blocks"))
    with pytest.raises(ValueError, match="mean/sd differ"):
        check_fit(small_model(), between, config(epochs=2, batches_per_epoch=1),
                  checkpoint_dir=tmp_path, resume=True)  # fmt: skip


def test_a_step_too_large_for_the_memory_is_refused_before_training(lorenz, tmp_path, monkeypatch):
    """fit and check_fit refuse a step whose estimated arrays exceed the memory available,
    naming the settings to lower, before anything is written; with no /proc/meminfo (None)
    nothing is checked."""
    x, _ = lorenz
    one = config(epochs=1, batches_per_epoch=1)
    need = autodiff.memory.training_step_bytes(
        "rnn", 8, one.sequence_length, 3, 3, 0, 8, True, one.alpha_mode == "auto"
    )
    monkeypatch.setattr(autodiff.train, "available_bytes", lambda: need - 1)
    message = (
        rf"^fit: a training step of batch_size=8 windows of sequence_length="
        rf"{one.sequence_length} steps needs about .* of memory and .* are available now; "
        r"lower batch_size or sequence_length\.$"
    )
    for call in (check_fit, fit):
        with pytest.raises(ValueError, match=message):
            call(small_model(), x, replace(one, batch_size=8), checkpoint_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    check_fit(small_model(), x, replace(one, batch_size=7))  # fits
    monkeypatch.setattr(autodiff.train, "available_bytes", lambda: None)
    check_fit(small_model(), x, replace(one, batch_size=10**12))


def test_the_step_estimate_counts_the_windows_and_the_gradients_arrays():
    """B (T + 1) int64 rows and N values, and B T M (M + 5) numbers for GTF-DEER (B T 6M
    otherwise), in the given itemsize; the README's measured peak for M = 3 float64 is 192
    bytes per step and window, the estimate's solver part."""
    from autodiff.memory import rnn_step_bytes, step_bytes

    B, T, M, N = 4, 100, 3, 2
    windows = B * (T + 1) * (8 + N * 4)
    assert step_bytes(B, T, N, 4, rnn_step_bytes(M, 4, deer=True)) == windows + B * T * 24 * 4
    assert step_bytes(B, T, N, 4, rnn_step_bytes(M, 4, deer=False)) == windows + B * T * 18 * 4
    assert rnn_step_bytes(3, 8, deer=True) == 192


@pytest.mark.parametrize("kind", ["linear", "selective"])
@pytest.mark.parametrize(("N", "H", "L"), [(1, 2, 600), (3, 40, 10), (8, 20, 100), (2, 8, 40)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_ssm_step_estimate_bounds_the_measured_peak_closely(kind, N, H, L, dtype):
    """ssm_step_bytes is at least the tracemalloc peak of ssm_loss_and_grad (NumPy's
    arrays are traced) less its windows, and at most 1.6 times it (readout- and
    scan-dominated shapes; the readout's hidden layer used to be left out: 560x too low)."""
    import tracemalloc

    from autodiff.memory import ssm_step_bytes
    from autodiff.ssm_gradients import ssm_loss_and_grad
    from models.ssm import LinearSSM, SelectiveSSM

    B, T = 4, 1000  # enough steps that fixed-size temporaries (~0.2 MB) do not count
    cls = LinearSSM if kind == "linear" else SelectiveSSM
    model = cls(N, H, L, dtype=dtype, seed=0)
    x = np.random.default_rng(0).normal(size=(B, T + 1, N)).astype(dtype)
    ssm_loss_and_grad(model, x[:, :5], backend="sequential")  # compiled outside the trace
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        ssm_loss_and_grad(model, x, backend="sequential")
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    estimate = B * T * ssm_step_bytes(kind, N, H, L, np.dtype(dtype).itemsize)
    assert peak <= estimate <= 1.6 * peak, (peak, estimate)


def test_damaged_checkpoint_state_is_refused_clearly(lorenz, tmp_path):
    x, _ = lorenz
    cfg = config(epochs=1, batches_per_epoch=1)
    model = small_model()
    fit(model, x, cfg, checkpoint_dir=tmp_path)
    ckpt = load_checkpoint(tmp_path)
    state = dict(ckpt["state"], train_state={"step": 1, "colour": "blue"})
    saved = model.astype("float64")
    saved.standardization = ckpt["standardization"]
    save_checkpoint(tmp_path, saved, ckpt["params"], state, {}, ckpt["optimizer"])
    with pytest.raises(ValueError, match="is damaged or from another version"):
        fit(small_model(), x, cfg, checkpoint_dir=tmp_path, resume=True)


def test_overflowing_optimiser_step_is_a_rejected_step(tmp_path):
    """Raw (unstandardised) Lorenz data in float32 (the default dtype): a finite gradient whose
    square overflows is refused by the optimiser and rejected; its moments stay finite."""
    cfg = TrainConfig(standardize=False, sequence_length=20, batch_size=4, batches_per_epoch=5,
                      epochs=2)  # fmt: skip
    infos = []
    result = fit(ShPLRNN(3, 8, seed=0), models.generate("lorenz63", 600, seed=1), cfg,
                 callback=infos.append, checkpoint_dir=tmp_path)  # fmt: skip
    refused = [i for i in infos if isinstance(i, StepInfo) and "optimiser step refused" in i.reason]
    assert refused and not any(i.accepted for i in refused)
    assert result.n_bad_steps >= len(refused)
    optimizer = load_checkpoint(tmp_path)["optimizer"]
    assert np.all(np.isfinite(optimizer["m"])) and np.all(np.isfinite(optimizer["v"]))
    assert np.all(np.isfinite(result.last_params))


def test_non_finite_sequential_forward_is_a_rejected_step(lorenz):
    x, _ = lorenz
    model = ShPLRNN(3, 8, dtype="float32", seed=0)
    model["A"][...] = 3.0  # float32 states overflow after ~80 unforced steps
    cfg = config(method="sequential", dtype="float32", alpha_mode="constant", alpha=0.0,
                 sequence_length=200, max_bad_steps=2)  # fmt: skip
    with pytest.raises(
        TrainingDivergedError, match="sequential BPTT failed: non_finite: the forward"
    ) as err:
        fit(model, x, cfg)
    assert err.value.checkpoint is None and "no checkpoint had been written yet" in str(err.value)


def test_unconverged_deer_forward_is_a_rejected_step_with_its_diagnosis(lorenz):
    """The reason of a step whose Newton forward failed is one paragraph: what failed, the
    counts and iterations; the remedies are fit's (its config's names), never
    gtf_loss_and_grad's or the throw=False advice."""
    x, _ = lorenz
    cfg = config(alpha_mode="constant", alpha=0.0, newton_max_iter=1, max_bad_steps=1)
    with pytest.raises(TrainingDivergedError) as err:
        fit(small_model(), x, cfg)
    reason = err.value.reason
    assert reason.startswith(
        "GTF-DEER failed: max_iter: not converged within max_iter Newton iterations. Failed: "
        "8 max_iter of 8 sequence(s), after 1 iteration(s)"
    )
    assert reason.endswith("(tolerance atol=1e-09 + rtol=1e-09 |z|).")
    assert "allow more iterations" not in reason and "alpha='auto'" not in reason
    assert "throw=False" not in reason and "\n" not in reason
    assert f"(last: {reason}) at epoch 1, batch 1" in str(err.value)
    assert err.value.remedies == {
        "alpha_mode": "auto",
        "newton_max_iter": None,  # the cap that was set caused it
        "lr_start": 0.00333,
    }
    assert str(err.value).endswith(
        "A resume keeps the settings; start a new run with one or more of: alpha_mode='auto', "
        "newton_max_iter=None, lr_start=0.00333, a grad_clip (a bound on the gradient norm)."
    )


def _deer_diverges(monkeypatch, sequential_result=None):
    """Make every GTF-DEER forward report ``DIVERGING``; the sequential method runs for real
    (or returns ``sequential_result``)."""
    real = autodiff.gradients.gtf_loss_and_grad

    def diverging(model, data, **kw):
        if kw.get("method") == "sequential":
            return real(model, data, **kw) if sequential_result is None else sequential_result
        _, _, info = real(model, data, **kw)
        status = parscan.DeerStatus.DIVERGING
        return math.nan, None, replace(info, status=status, cause="diverging: stub")

    monkeypatch.setattr(autodiff.gradients, "gtf_loss_and_grad", diverging)


def test_a_diverging_deer_forward_is_evaluated_sequentially(lorenz, monkeypatch):
    """A batch whose Newton iterates blew up is evaluated by the sequential kernel instead:
    the steps are taken, counted, and the run is the sequential method's, bit for bit."""
    x, _ = lorenz
    cfg = config(epochs=2, batches_per_epoch=3)
    _deer_diverges(monkeypatch)
    steps = []
    result = fit(small_model(), x, cfg, callback=steps.append)
    monkeypatch.undo()
    sequential = fit(small_model(), x, replace(cfg, method="sequential"))
    assert np.array_equal(result.model.params, sequential.model.params)
    assert [h["sequential_steps"] for h in result.history] == [3, 3]
    assert [h["sequential_steps"] for h in sequential.history] == [0, 0]
    taken = [s for s in steps if isinstance(s, StepInfo)]
    assert len(taken) == 6 and all(s.accepted and s.sequential for s in taken)


def test_a_failed_sequential_fallback_is_a_rejected_step(lorenz, monkeypatch):
    x, _ = lorenz
    info = autodiff.gradients.GradInfo(
        "sequential", 0.1, parscan.DeerStatus.NON_FINITE, np.zeros(8, int), "stub", "non_finite"
    )
    _deer_diverges(monkeypatch, (math.nan, None, info))
    with pytest.raises(TrainingDivergedError) as err:
        fit(small_model(), x, config(max_bad_steps=2))
    assert err.value.reason == "GTF-DEER diverged and its sequential fallback failed: non_finite"


def test_short_validation_data_is_refused_before_training(lorenz, tmp_path):
    x, xv = lorenz
    with pytest.raises(ValueError, match=r"fit: validation_data has 2 time steps; at least 3 "):
        fit(small_model(), x, config(), validation_data=xv[:2], checkpoint_dir=tmp_path)
    assert not (tmp_path / CHECKPOINT_NAME).exists()
    short = config(epochs=1, batches_per_epoch=2)
    # the box of 3 points holds no free run: validated, though never measured
    with pytest.warns(NoValidationScoreWarning, match=r"epoch 1: free run out-of-box"):
        result = fit(small_model(), x, short, validation_data=xv[:3])
    assert result.best_scores is not None


def test_failed_alpha_estimate_is_a_bad_step(lorenz, tmp_path, monkeypatch):
    """A model that overflows on the data (NaN/inf Jacobian norms in gtf_alpha) rejects the
    step; repeated, it ends in TrainingDivergedError keeping the last good checkpoint."""
    x, _ = lorenz
    real = autodiff.gradients.gtf_loss_and_grad
    calls = {"n": 0}

    def blow_up_after_epoch_one(model, *args, **kw):
        out = real(model, *args, **kw)
        calls["n"] += 1
        if calls["n"] == 11:  # an accepted step lands where F overflows (|params| ~ 1e200)
            model.params[...] *= 1e200
        return out

    monkeypatch.setattr(autodiff.gradients, "gtf_loss_and_grad", blow_up_after_epoch_one)
    infos = []
    cfg = config(alpha_interval=1, max_bad_steps=3)
    with pytest.raises(TrainingDivergedError, match=r"last: alpha estimation failed: \|\|J_F\|\|"):
        fit(small_model(), x, cfg, checkpoint_dir=tmp_path, callback=infos.append)
    reasons = [i.reason for i in infos if isinstance(i, StepInfo)]
    assert reasons[:11] == [""] * 11 and all("alpha estimation failed" in r for r in reasons[11:])
    assert load_checkpoint(tmp_path)["state"]["train_state"]["step"] == 10


def test_history_and_step_info_report_loss_and_penalty_alike(lorenz):
    x, _ = lorenz
    infos = []
    result = fit(small_model(), x, config(epochs=1, l2=1e-2), callback=infos.append)
    steps = [i for i in infos if isinstance(i, StepInfo) and i.accepted]
    record = result.history[0]
    assert record["penalty"] > 0
    np.testing.assert_allclose(record["loss"], np.mean([s.loss for s in steps]), rtol=1e-12)
    np.testing.assert_allclose(record["penalty"], np.mean([s.penalty for s in steps]), rtol=1e-12)


def test_history_records_the_learning_rate_of_each_epochs_last_step(lorenz):
    """history[i]["lr"] is the schedule's rate at the epoch's last step (that of its last
    StepInfo), not at the next epoch's first; the last epoch's is lr_end."""
    x, _ = lorenz
    infos = []
    cfg = config(epochs=3, batches_per_epoch=4, lr_start=1e-2, lr_end=1e-4)
    result = fit(small_model(), x, cfg, callback=infos.append)
    schedule = ExponentialDecay(1e-2, 1e-4, 12)
    lrs = [record["lr"] for record in result.history]
    assert lrs == [schedule(k) for k in (3, 7, 11)]
    assert lrs[-1] == 1e-4
    last_steps = [i for i in infos if isinstance(i, StepInfo) and i.batch == 3]
    assert [s.step for s in last_steps] == [3, 7, 11]
    assert lrs == [s.lr for s in last_steps]
    assert lrs == [i.record["lr"] for i in infos if isinstance(i, EpochInfo)]


def test_short_validation_runs_warn_once_in_fits_terms(lorenz):
    """Validation runs too short for binned D_stsp warn once, at the start, naming fit's
    settings (not evaluate's n_steps), however many validations follow."""
    import warnings

    from models.metrics import StateSpaceResolutionWarning

    x, val = lorenz
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(small_model(), x, config(epochs=2, batches_per_epoch=2), validation_data=val)
    found = [w for w in caught if w.category is StateSpaceResolutionWarning]
    messages = [str(w.message) for w in found]
    assert len(messages) == 1, messages
    assert found[0].filename == __file__  # points at the call of fit, not into autodiff
    assert messages[0].startswith("fit: binned D_stsp of 400 generated points")
    assert messages[0].endswith(
        "each validation run scores validation_steps points (None: len(validation_data) - 1); "
        "pass a longer validation_data or raise validation_steps, or lower validation_n_bins."
    )


def test_validation_runs_short_for_dh_warn_once_in_fits_terms(lorenz):
    import warnings

    from models.metrics import SpectrumResolutionWarning

    x, val = lorenz
    cfg = config(epochs=2, batches_per_epoch=2, validation_interval=1, validation_steps=300)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(small_model(), x, cfg, validation_data=val)
    found = [w for w in caught if w.category is SpectrumResolutionWarning]
    assert len(found) == 1, [str(w.message) for w in found]
    assert found[0].filename == __file__
    assert str(found[0].message).startswith("fit: D_H of 300 points has 151 frequency bins")
    assert str(found[0].message).endswith(
        "Compare at least 398 points: each validation run compares min(validation_steps, "
        "len(validation_data) - 1) points; pass a longer validation_data or raise "
        "validation_steps."
    )


def test_validation_n_bins_sets_the_bins_of_every_validation_and_of_its_warning(
    lorenz, monkeypatch
):
    """The 400-point validation runs, too short for 30 bins per axis (553 occupied), are
    long enough for 4 (29 occupied): no warning, and every validation bins with 4."""
    import warnings

    from models.metrics import StateSpaceResolutionWarning

    x, val = lorenz
    real, bins = models.metrics.evaluate, []

    def recording(*args, **kwargs):
        bins.append(kwargs["n_bins"])
        return real(*args, **kwargs)

    monkeypatch.setattr(models.metrics, "evaluate", recording)
    cfg = config(epochs=2, batches_per_epoch=2, validation_n_bins=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StateSpaceResolutionWarning)
        result = fit(small_model(), x, cfg, validation_data=val)
    assert bins == [4, 4] and result.best_scores["status"] == "ok"


def test_validation_bins_too_many_for_the_data_are_refused_before_training(lorenz, tmp_path):
    x, val = lorenz
    cfg = config(validation_n_bins=10**101)
    message = (
        r"^fit: validation_n_bins\*\*N = 10{101}\*\*3 is too large for binning; lower "
        r"validation_n_bins\.$"
    )
    for call in (check_fit, fit):
        with pytest.raises(ValueError, match=message):
            call(small_model(), x, cfg, checkpoint_dir=tmp_path / "run", validation_data=val)
        with pytest.raises(ValueError, match=r"^fit: validation_n_bins = 1: one bin per axis "):
            call(small_model(), x, config(validation_n_bins=1), validation_data=val)
    assert not (tmp_path / "run").exists()
    check_fit(small_model(), x, cfg)  # no validation, no bins
    # N >= 6 dimensions are scored with the Gaussian mixture, without bins
    wide = np.random.default_rng(0).standard_normal((400, 6))
    check_fit(ShPLRNN(6, 8, dtype="float64"), wide[:300], cfg, validation_data=wide[300:])


def test_checkpoints_without_validation_n_bins_resume_with_30_and_keep_it(lorenz, tmp_path):
    """A checkpoint written before validation_n_bins existed (its config lacks the field,
    and those of the selection) resumes with the default the run used; no resume may change
    it (it selects the model)."""
    x, val = lorenz
    cfg = config(epochs=2, batches_per_epoch=2)
    kw = {"checkpoint_dir": tmp_path, "validation_data": val}
    first = fit(small_model(), x, replace(cfg, epochs=1), **kw)
    refused = r"cannot resume .*\(validation_n_bins: 30 -> 8\); only \["
    with pytest.raises(ValueError, match=refused):
        check_fit(small_model(), x, replace(cfg, validation_n_bins=8), resume=True, **kw)
    later = ("validation_n_bins", "selection_candidates", "selection_starts", "selection_steps")
    _rewrite(  # written before all four fields existed
        checkpoint_path(tmp_path),
        edit_meta=lambda m: [m["train_state"]["config"].pop(name) for name in later],
    )
    with pytest.raises(ValueError, match=refused):
        check_fit(small_model(), x, replace(cfg, validation_n_bins=8), resume=True, **kw)
    resumed = fit(small_model(), x, cfg, resume=True, **kw)
    assert len(resumed.history) == 2 and resumed.history[0] == first.history[0]
    assert load_checkpoint(tmp_path)["state"]["config"]["validation_n_bins"] == 30


def test_checkpoints_without_candidates_resume_with_the_best_epoch_as_one(lorenz, tmp_path):
    """A checkpoint written before the selection candidates existed resumes with its best
    validated epoch as the one candidate so far."""
    x, val = lorenz
    cfg = config(epochs=2, batches_per_epoch=2)
    kw = {"checkpoint_dir": tmp_path, "validation_data": val}
    fit(small_model(), x, replace(cfg, epochs=1), **kw)

    def drop_candidates(fields):
        fields.pop("array.candidate_params")
        meta = json.loads(str(fields["metadata"]))
        del meta["train_state"]["train_state"]["candidates"]
        fields["metadata"] = np.array(json.dumps(meta))

    _rewrite(checkpoint_path(tmp_path), edit_fields=drop_candidates)
    resumed = fit(small_model(), x, cfg, resume=True, **kw)
    assert sorted(c["epoch"] for c in resumed.selection["candidates"]) == [1, 2]


@pytest.mark.parametrize(
    ("model", "stale"),
    [
        (
            lambda: LinearSSM(3, 4, 8, dtype="float64"),
            {"alpha_mode": "constant", "jacobian": "diag"},
        ),
        (small_model, {"method": "sequential", "jacobian": "diag", "newton_max_iter": 5}),
    ],
)
def test_checkpoints_with_settings_refused_since_still_resume(lorenz, tmp_path, model, stale):
    """A checkpoint written before settings the run did not use were refused (an SSM's GTF
    settings, a sequential run's Newton settings) resumes with a config without them."""
    x, _ = lorenz
    ssm = "method" not in stale
    cfg = (ssm_config if ssm else config)(epochs=2, **({} if ssm else {"method": "sequential"}))
    first = fit(model(), x, replace(cfg, epochs=1), checkpoint_dir=tmp_path)
    path = checkpoint_path(tmp_path)
    _rewrite(path, edit_meta=lambda m: m["train_state"]["config"].update(stale))
    resumed = fit(model(), x, cfg, checkpoint_dir=tmp_path, resume=True)
    assert len(resumed.history) == 2 and resumed.history[0] == first.history[0]


def test_a_checkpoint_with_selection_runs_of_one_candidate_still_resumes(lorenz, tmp_path):
    """A one-candidate checkpoint written before its selection check's free runs were refused
    resumes with them at their defaults."""
    x, xv = lorenz
    cfg = config(epochs=2, selection_candidates=1)
    first = fit(
        small_model(), x, replace(cfg, epochs=1), checkpoint_dir=tmp_path, validation_data=xv
    )
    stale = {"selection_starts": 9, "selection_steps": 300}
    _rewrite(
        checkpoint_path(tmp_path), edit_meta=lambda m: m["train_state"]["config"].update(stale)
    )
    resumed = fit(small_model(), x, cfg, checkpoint_dir=tmp_path, resume=True, validation_data=xv)
    assert len(resumed.history) == 2 and resumed.history[0] == first.history[0]


class _Stopped(Exception):
    """What the test's SIGTERM handler raises."""


@pytest.fixture
def python_sigint():
    """Ctrl-C raises KeyboardInterrupt during the test, also when pytest started with SIGINT
    ignored (as a background job of a non-interactive shell starts)."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_a_signal_during_an_atomic_save_acts_once_it_is_done(
    tmp_path, monkeypatch, signum, python_sigint
):
    """A second Ctrl-C (or a SIGTERM) while fit writes its checkpoint must not abort the
    write: it is delivered, to the handler installed before, once the file is in place."""
    import signal

    import models.base

    signum = getattr(signal, signum)
    write = models.base._write_atomically

    def signalled_mid_write(path, writer):
        signal.raise_signal(signum)  # held back: the write goes on
        write(path, writer)

    def stop(*args):
        raise _Stopped

    def failing_write(path, writer):
        signal.raise_signal(signum)
        raise OSError(28, "No space left on device")

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    original_sigterm = handlers[signal.SIGTERM]
    if signum == signal.SIGTERM:
        signal.signal(signal.SIGTERM, stop)
        handlers[signal.SIGTERM] = stop
    try:
        monkeypatch.setattr(models.base, "_write_atomically", signalled_mid_write)
        expected = KeyboardInterrupt if signum == signal.SIGINT else _Stopped
        with pytest.raises(expected):
            models.base.atomic_save_npz(tmp_path / "file.npz", {"x": np.arange(3.0)}, "test")
        np.testing.assert_array_equal(np.load(tmp_path / "file.npz")["x"], np.arange(3.0))
        assert all(signal.getsignal(s) is handler for s, handler in handlers.items())
        # a write that fails says why; the held signal does not hide the error
        monkeypatch.setattr(models.base, "_write_atomically", failing_write)
        with pytest.raises(OSError, match="No space left on device"):
            models.base.atomic_save_npz(tmp_path / "file.npz", {"x": np.arange(3.0)}, "test")
        assert all(signal.getsignal(s) is handler for s, handler in handlers.items())
    finally:
        signal.signal(signal.SIGTERM, original_sigterm)


def test_the_newton_cap_is_a_remedy_only_below_the_solvers_default():
    from autodiff.config import new_run_remedies

    def remedies(**fields):
        return new_run_remedies(TrainConfig(sequence_length=200, **fields), 0.1, True)

    assert remedies(newton_max_iter=5)["newton_max_iter"] is None  # back to min(T, 100)
    assert "newton_max_iter" not in remedies(newton_max_iter=150)  # the default is lower
    assert "newton_max_iter" not in remedies(jacobian="diag", newton_max_iter=200)
    assert remedies(jacobian="diag", newton_max_iter=150)["newton_max_iter"] is None


def test_the_learning_rate_remedy_is_a_third_of_the_run_s_at_most_the_default():
    from autodiff.config import new_run_remedies

    def lr(lr_start):
        return new_run_remedies(TrainConfig(lr_start=lr_start, lr_end=lr_start), 0.1, True)

    assert lr(3e-3)["lr_start"] == 1e-3
    assert lr(1e300)["lr_start"] == lr(0.1)["lr_start"] == TrainConfig().lr_start


def test_fit_s_partial_forcing_warning_is_its_own_and_points_at_its_caller(lorenz):
    """M > N: the alpha estimate's warning names fit (it said gtf_alpha) and the line that
    called fit (it pointed inside autodiff/train.py)."""
    from parscan import GTFGuaranteeWarning

    x, _ = lorenz
    with pytest.warns(GTFGuaranteeWarning, match=r"^fit: partial forcing") as record:
        fit(ShPLRNN(5, 8, 3, seed=0), x, config(epochs=1, batches_per_epoch=1))
    assert {w.filename for w in record if w.category is GTFGuaranteeWarning} == {__file__}


def test_the_learning_rate_remedy_never_schedules_a_climb_back_to_the_failed_rate():
    from autodiff.config import new_run_remedies

    def remedies(lr_start, lr_end):
        return new_run_remedies(TrainConfig(lr_start=lr_start, lr_end=lr_end), 0.1, True)

    assert remedies(3e-3, 3e-3)["lr_end"] == remedies(3e-3, 3e-3)["lr_start"] == 1e-3
    assert remedies(1e-4, 1e-2)["lr_end"] == 3.33e-5  # a rising schedule
    assert "lr_end" not in remedies(3e-3, 1e-4)  # still decays to below the new start


def test_a_training_diverged_error_survives_pickling_for_multiprocessing(lorenz):
    import pickle

    x, _ = lorenz
    cfg = config(alpha_mode="constant", alpha=0.0, newton_max_iter=1, max_bad_steps=1)
    with pytest.raises(TrainingDivergedError) as err:
        fit(small_model(), x, cfg)
    copy = pickle.loads(pickle.dumps(err.value))
    assert type(copy) is TrainingDivergedError and str(copy) == str(err.value)
    for name in TrainingDivergedError._FIELDS:
        np.testing.assert_equal(getattr(copy, name), getattr(err.value, name))


def test_a_ctrl_c_while_fit_builds_a_checkpoint_acts_after_it(
    lorenz, tmp_path, monkeypatch, python_sigint
):
    import signal

    x, _ = lorenz
    real = autodiff.train.save_checkpoint

    def interrupted(*args, **kwargs):
        signal.raise_signal(signal.SIGINT)  # before the file write's own protection starts
        return real(*args, **kwargs)

    monkeypatch.setattr(autodiff.train, "save_checkpoint", interrupted)
    cfg = config(epochs=1)
    with pytest.raises(KeyboardInterrupt):
        fit(small_model(), x, cfg, checkpoint_dir=tmp_path)
    assert load_checkpoint(tmp_path)["state"]["train_state"]["step"] == cfg.n_steps
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def _scripted_alpha(monkeypatch, estimates):
    """Replace the alpha estimator fit calls by one returning ``estimates`` in turn; returns
    the list of its calls' ``(forcing shape, method)``."""
    import parscan.gtf

    script, calls = iter(estimates), []

    def scripted(model, forcing, states, method, *args, **kw):
        calls.append((forcing.shape, method))
        return next(script)

    monkeypatch.setattr(parscan.gtf, "estimate_alpha", scripted)
    return calls


def test_alpha_annealing_raises_at_once_and_decays_towards_lower_estimates(lorenz, monkeypatch):
    """README: every alpha_interval steps, alpha becomes a higher estimate at once, else
    gamma * alpha + (1 - gamma) * estimate; in between it stays."""
    x, _ = lorenz
    calls = _scripted_alpha(monkeypatch, [0.5, 0.2, 0.2, 0.8])
    infos = []
    cfg = config(epochs=1, alpha=0.1, alpha_gamma=0.9, alpha_interval=3, alpha_method="sup")
    result = fit(small_model(), x, cfg, callback=infos.append)
    gamma = 0.9
    a0 = 0.5  # above the initial 0.1: raised at once
    a1 = gamma * a0 + (1 - gamma) * 0.2
    a2 = gamma * a1 + (1 - gamma) * 0.2
    a3 = 0.8  # above a2: raised at once
    want = [a0] * 3 + [a1] * 3 + [a2] * 3 + [a3]
    got = [i.alpha for i in infos if isinstance(i, StepInfo)]
    np.testing.assert_allclose(got, want, rtol=1e-15)  # the same arithmetic, to rounding
    assert calls == [((8, 50, 3), "sup")] * 4  # steps 0, 3, 6, 9, on the windows' x_1..x_T
    assert result.alpha == got[-1] == result.history[0]["alpha"]


def test_a_rejected_step_makes_the_next_step_re_estimate_alpha(lorenz, monkeypatch):
    """A rejected step (step 4) forces an estimate at step 5, off the every-3-steps schedule;
    the schedule (steps 0, 3, 6, 9) goes on."""
    x, _ = lorenz
    calls = _scripted_alpha(monkeypatch, [0.3, 0.25, 0.6, 0.2, 0.1])
    monkeypatch.setattr(autodiff.gradients, "gtf_loss_and_grad", _poisoned({4}))
    estimated_by = []

    def count(info):
        if isinstance(info, StepInfo):
            estimated_by.append(len(calls))

    fit(small_model(), x, config(epochs=1, alpha_gamma=0.5), callback=count)
    assert estimated_by == [1, 1, 1, 2, 2, 3, 4, 4, 4, 5]


def _spy_on_the_optimiser(monkeypatch):
    """Record ``(grad, params before the step)`` of every optimiser step fit takes, and
    ``(grad, params)`` of every loss gradient it computes."""
    real_make, real_loss = autodiff.train.make_optimizer, autodiff.gradients.gtf_loss_and_grad
    steps, losses = [], []

    def make(*args, **kw):
        optimizer = real_make(*args, **kw)
        real_step = optimizer.step

        def step(params, grad, lr):
            steps.append((grad.copy(), params.copy()))
            return real_step(params, grad, lr)

        optimizer.step = step
        return optimizer

    def loss_and_grad(model, *args, **kw):
        out = real_loss(model, *args, **kw)
        losses.append((out[1].copy(), model.params.copy()))
        return out

    monkeypatch.setattr(autodiff.train, "make_optimizer", make)
    monkeypatch.setattr(autodiff.gradients, "gtf_loss_and_grad", loss_and_grad)
    return steps, losses


def _l2_gradient(model, params, lam):
    """The gradient of ``lam * (sum (A - 1)^2 + sum W^2 + sum h^2)`` of a shPLRNN."""
    grad = np.zeros_like(params)
    for name, block in model.unflatten(params).items():
        model.unflatten(grad)[name][...] = 2 * lam * (block - 1.0 if name == "A" else block)
    return grad


@pytest.mark.parametrize("clip", [1e-3, None])
def test_the_optimiser_gets_the_clipped_sum_of_loss_and_l2_gradients(lorenz, monkeypatch, clip):
    x, _ = lorenz
    steps, losses = _spy_on_the_optimiser(monkeypatch)
    infos = []
    lam = 0.5
    cfg = config(epochs=1, batches_per_epoch=3, l2=lam, grad_clip=clip, alpha_mode="constant")
    fit(small_model(), x, cfg, callback=infos.append)
    norms = [i.grad_norm for i in infos if isinstance(i, StepInfo)]
    assert len(steps) == len(losses) - 1 == len(norms) == 3  # the 4th: the final check
    model = small_model()
    for (got, params), (g_loss, at), norm in zip(steps, losses[:3], norms, strict=True):
        np.testing.assert_array_equal(params, at)
        g_l2 = _l2_gradient(model, params, lam)
        assert np.linalg.norm(g_l2) > 0.3 * np.linalg.norm(g_loss)  # the L2 term matters
        total = g_loss + g_l2
        assert norm == pytest.approx(np.linalg.norm(total), rel=1e-12)  # before clipping
        if clip is None:
            np.testing.assert_allclose(got, total, rtol=1e-15, atol=0)
        else:
            assert norm > 10 * clip  # every step is clipped
            np.testing.assert_allclose(got, total * (clip / norm), rtol=1e-12, atol=0)


@pytest.mark.parametrize("noise", [0.05, 0.0])
def test_noise_level_adds_gaussian_noise_of_that_sd_to_the_windows(lorenz, monkeypatch, noise):
    """Each training window is a slice of the standardised data plus N(0, noise_level^2)
    noise in every entry (absolute on standardised data); none at noise_level 0."""
    x, _ = lorenz
    real, windows = autodiff.gradients.gtf_loss_and_grad, []

    def recording(model, data, **kw):
        windows.append(data.copy())
        return real(model, data, **kw)

    monkeypatch.setattr(autodiff.gradients, "gtf_loss_and_grad", recording)
    cfg = config(epochs=1, noise_level=noise, alpha_mode="constant")
    fit(small_model(), x, cfg)
    xs, _, _ = standardize(x)
    T = cfg.sequence_length
    slices = np.lib.stride_tricks.sliding_window_view(xs, (T + 1, 3))[:, 0]  # (starts, T+1, 3)
    assert len(windows) == cfg.n_steps + 1  # the last: fit's final check, without noise
    residuals = []
    for w in np.concatenate(windows[:-1]):
        start = np.argmin(np.sum((slices - w) ** 2, axis=(1, 2)))
        residuals.append(w - slices[start])
    residuals = np.array(residuals).reshape(-1, 3)  # 10 steps x 8 windows x 51 points
    if noise == 0:
        assert np.all(residuals == 0)
        return
    # per dimension, 4080 draws: the sd within 5 % (4 standard errors), the mean near 0
    np.testing.assert_allclose(residuals.std(axis=0), noise, rtol=0.05)
    assert np.all(np.abs(residuals.mean(axis=0)) < 4 * noise / np.sqrt(len(residuals)))


# ---- several trajectories -----------------------------------------------------------


def labelled_trajectories(lengths):
    """Trajectories whose first column is ``1000 k + t`` (trajectory k, step t), so that a
    window (unstandardised, noise-free) shows where it came from."""
    rng = np.random.default_rng(0)
    return [
        np.column_stack([1000.0 * k + np.arange(n), rng.standard_normal((n, 2))])
        for k, n in enumerate(lengths)
    ]


def test_windows_of_several_trajectories_never_straddle_two(monkeypatch):
    """Every window lies within one trajectory, and every trajectory is sampled about in
    proportion to the windows it holds."""
    lengths, T = [60, 300, 41, 150], 40
    windows = []

    def record(model, optimizer, w, state, lr, config):
        windows.append(w.copy())
        return 1.0, 0.0, 0.0, (1, 1.0), "", False  # accepted, nothing trained

    monkeypatch.setattr(autodiff.train, "_train_step", record)
    cfg = config(sequence_length=T, batch_size=16, batches_per_epoch=25, epochs=2,
                 noise_level=0.0, standardize=False)  # fmt: skip
    fit(small_model(), labelled_trajectories(lengths), cfg)
    labels = np.concatenate(windows)[:, :, 0]  # (windows, T + 1)
    assert labels.shape == (16 * 50, T + 1)
    assert np.all(np.diff(labels, axis=1) == 1)  # consecutive steps of one trajectory
    k, t = np.divmod(labels[:, 0], 1000)
    assert np.all(t + T < np.array(lengths)[k.astype(int)])
    counts = np.bincount(k.astype(int), minlength=len(lengths))
    expected = 800 * (np.array(lengths) - T) / sum(n - T for n in lengths)
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected) + 2), (counts, expected)
    np.testing.assert_array_equal(window_starts([5, 3], 2), [0, 1, 2, 5])


def test_one_trajectory_in_a_list_is_that_trajectory(lorenz):
    x, _ = lorenz
    cfg = config(epochs=1)
    alone, listed = fit(small_model(), x, cfg), fit(small_model(), (x,), cfg)
    assert np.array_equal(alone.model.params, listed.model.params)
    assert [h["loss"] for h in alone.history] == [h["loss"] for h in listed.history]


def test_several_trajectories_are_standardised_together(lorenz):
    x, _ = lorenz
    parts = [x[:1000], 3.0 * x[1000:2500] + 1.0]
    result = fit(small_model(), parts, config(epochs=1))
    joined = np.concatenate(parts)
    np.testing.assert_allclose(result.model.standardization[0], joined.mean(axis=0))
    np.testing.assert_allclose(result.model.standardization[1], joined.std(axis=0))


def test_bad_trajectories_are_refused_by_index(lorenz):
    x, _ = lorenz
    cfg = config(sequence_length=50)
    with pytest.raises(ValueError, match=r"^fit: data must be one trajectory of shape \(T, N\) or "
                       r"a list of them; got an array of shape \(2, 1000, 3\)\. Pass list\(data\) "
                       r"for 2 trajectories of 1000 steps each\.$"):  # fmt: skip
        check_fit(small_model(), np.stack([x[:1000], x[1000:2000]]), cfg)
    with pytest.raises(ValueError, match=r"^fit: data must be .* got an empty tuple\.$"):
        check_fit(small_model(), (), cfg)
    short = (
        r"^fit: windows of sequence_length \+ 1 = 51 steps need at least that many data points "
        r"in every trajectory; data\[1\] has 50, data\[2\] has 9\. Drop them or lower "
        r"sequence_length to at most 8\.$"
    )
    with pytest.raises(ValueError, match=short):
        check_fit(small_model(), [x[:1000], x[1000:1050], x[2000:2009]], cfg)
    with pytest.raises(ValueError, match=r"^fit: data\[1\] has 2 columns but the model observes"):
        check_fit(small_model(), [x[:1000], x[1000:2000, :2]], cfg)
    nan = r"^fit: data\[0\] contains 1 NaN/inf value\(s\); the first is nan at row 3, column 1\."
    with pytest.raises(ValueError, match=nan):
        check_fit(small_model(), [np.where(x == x[3, 1], np.nan, x)[:500], x[500:]], cfg)
    flat = [np.column_stack([x[:500, :2], np.ones(500)]), np.column_stack([x[500:900, :2],
            np.ones(400)])]  # fmt: skip
    with pytest.raises(ValueError, match=r"^fit: data \(the trajectories together\) .*constant"):
        check_fit(small_model(), flat, cfg)
    flat[1][:, 2] = 2.0  # constant within each trajectory, not across them: accepted
    check_fit(small_model(), flat, cfg)


def test_several_trajectories_resume_bitwise_and_only_with_the_same_split(lorenz, tmp_path):
    x, _ = lorenz
    parts = [x[:1200], x[1200:]]
    cfg = config(epochs=2)
    full = fit(small_model(), parts, cfg)
    with pytest.raises(KeyboardInterrupt):
        fit(small_model(), parts, cfg, checkpoint_dir=tmp_path, callback=Interrupt(14))
    for other, what in [
        (x, r"trajectories of \[1200, 1800\] steps -> \[3000\]"),
        ([x[:1000], x[1000:]], r"trajectories of \[1200, 1800\] steps -> \[1000, 2000\]"),
        ([x[:1200], x[:1199:-1]], r"same shape, different values in rows 1199 of data\[0\] "
         r"to 1 of data\[1\]"),  # a block of rows across the two trajectories
    ]:  # fmt: skip
        with pytest.raises(ValueError, match=rf"^fit: data differs .* \({what}\)"):
            check_fit(small_model(), other, cfg, checkpoint_dir=tmp_path, resume=True)
    resumed = fit(small_model(), parts, cfg, checkpoint_dir=tmp_path, resume=True)
    assert np.array_equal(resumed.model.params, full.model.params)


def _pop_lengths(meta):
    del meta["train_state"]["data_lengths"], meta["train_state"]["validation_data_lengths"]


def _pop_blocks(fields):
    del fields["array.data_blocks"], fields["array.validation_data_blocks"]


@pytest.mark.parametrize(
    "edit_meta, edit_fields", [(_pop_lengths, None), (None, _pop_blocks)], ids=["lengths", "blocks"]
)
def test_checkpoints_of_earlier_versions_resume(lorenz, tmp_path, edit_meta, edit_fields):
    """Checkpoints written before several (training or validation) trajectories were accepted
    store no lengths (one trajectory each); those written before the fingerprints kept block
    moments compare the sampled rows alone."""
    x, xv = lorenz
    cfg = config(epochs=2)
    full = fit(small_model(), x, cfg, validation_data=xv)
    with pytest.raises(KeyboardInterrupt):
        fit(small_model(), x, cfg, checkpoint_dir=tmp_path, callback=Interrupt(14),
            validation_data=xv)  # fmt: skip
    _rewrite(checkpoint_path(tmp_path), edit_meta, edit_fields)
    with pytest.raises(ValueError, match=r"\(same shape, different values at row 0\)"):
        check_fit(small_model(), x[::-1], cfg, checkpoint_dir=tmp_path, resume=True,
                  validation_data=xv)  # fmt: skip
    resumed = fit(small_model(), x, cfg, checkpoint_dir=tmp_path, resume=True, validation_data=xv)
    assert_same_run(resumed, full)


# ---- several validation trajectories ------------------------------------------------


def _val_history(result):
    return [{k: v for k, v in h.items() if k.startswith("val_") and k != "val_time"}
            for h in result.history]  # fmt: skip


def test_one_validation_trajectory_in_a_list_is_that_trajectory(lorenz):
    x, xv = lorenz
    cfg = config(epochs=2, batches_per_epoch=2)
    alone = fit(small_model(), x, cfg, validation_data=xv)
    listed = fit(small_model(), x, cfg, validation_data=[xv])
    assert _val_history(listed) == _val_history(alone)
    assert alone.best_scores["status"] == "ok"
    assert np.array_equal(listed.model.params, alone.model.params)
    assert np.array_equal(listed.last_params, alone.last_params)


def test_several_validation_trajectories_are_scored_as_evaluate_scores_them(lorenz):
    """The validation scores are evaluate's on the validation trajectories (standardised with
    the training data's mean and sd), from validation_starts points of each, capped at the
    shortest trajectory's points: D_H the mean of each one's, D_stsp of the runs together."""
    x, xv = lorenz
    parts = [xv[:600], 2.0 * xv[600:]]  # another scale: each standardised with the data's
    for starts, steps in [(4, 400), (600, None)]:  # 600 starts: capped at 400
        cfg = config(epochs=1, batches_per_epoch=2, validation_starts=starts,
                     validation_steps=steps)  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", models.metrics.StateSpaceResolutionWarning)
            result = fit(small_model(), x, cfg, validation_data=parts)
            mean, sd = result.model.standardization
            kw = {"n_steps": steps, "n_starts": min(starts, 400), "measures": ("dstsp", "dh")}
            each = [models.evaluate(result.model, (v - mean) / sd, **kw) for v in parts]
            together = models.evaluate(result.model, [(v - mean) / sd for v in parts], **kw)
        record = result.history[-1]
        assert [e["status"] for e in each] == ["ok", "ok"] and record["val_status"] == "ok"
        assert record["val_dstsp"] == together["dstsp"] and record["val_dh"] == together["dh"]
        np.testing.assert_allclose(record["val_dh"], np.mean([e["dh"] for e in each]), rtol=1e-12)
        assert record["val_score"] == record["val_dstsp"] + record["val_dh"]


def test_bad_validation_trajectories_are_refused_by_index(lorenz, tmp_path):
    x, xv = lorenz
    cfg = config(epochs=1, batches_per_epoch=1)
    nan = np.where(xv == xv[3, 1], np.nan, xv)
    flat = xv[500:].copy()
    flat[1:, 2] = 1.0  # constant where its runs are scored (validation_data[1][1:401])
    for validation_data, message in [
        (np.stack([xv[:500], xv[500:]]), r"^fit: validation_data must be one trajectory of "
         r"shape \(T, N\) or a list of them; got an array of shape \(2, 500, 3\)\. Pass "
         r"list\(validation_data\) for 2 trajectories of 500 steps each\.$"),
        ([], r"^fit: validation_data must be one trajectory of shape \(T, N\) or a list of "
         r"them; got an empty list\.$"),
        ([xv[:500, 0], xv[500:, 0], xv[:, 1]], r"^fit: validation_data is a list of 3 "
         r"one-dimensional arrays \(of 500, 1000 values\), which would be read as the rows of "
         r"one trajectory; several trajectories are 2-D, \(T_k, N\) each: pass each as a "
         r"\(T_k, 3\) array\.$"),
        ([xv[:500], xv[500:502]], r"^fit: validation_data\[1\] has 2 time steps; at least 3 are "
         r"needed here\. The free runs are scored against validation_data\[1\]\[1:\], .*None\.$"),
        ([xv[:500], xv[500:501]], r"^fit: validation_data\[1\] has 1 time step; at least 3 are "
         r"needed here\. The free runs .* validation_data=None\.$"),  # no hint to transpose
        ((xv[:500], xv[500:, :2]), r"^fit: validation_data\[1\] has 2 columns but the model "
         "observes"),
        ([nan[:500], xv[500:]], r"^fit: validation_data\[0\] contains 1 NaN/inf value\(s\); "
         "the first is nan at row 3, column 1"),
        ([xv[:500], flat], r"^fit: validation_data\[1\]\[1:401\] \(the part the validation "
         r"runs are scored on\) .*constant"),
    ]:  # fmt: skip
        for call in (check_fit, fit):
            with pytest.raises(ValueError, match=message):
                call(small_model(), x, cfg, checkpoint_dir=tmp_path / "run",
                     validation_data=validation_data)  # fmt: skip
    assert not (tmp_path / "run").exists()
    many_bins = config(validation_n_bins=10**101)
    too_many = r"^fit: validation_n_bins\*\*N = 10{101}\*\*3 is too large"
    with pytest.raises(ValueError, match=too_many):
        check_fit(small_model(), x, many_bins, validation_data=[xv[:500], xv[500:]])


def test_short_validation_trajectories_warn_once_for_d_stsp_and_for_d_h(lorenz):
    """Runs too short for binned D_stsp with 30 bins warn once (the i-th runs from all
    trajectories are scored against all of them together), too short for D_H once, naming
    the trajectory of the shortest comparison; both point at the call of fit."""
    x, xv = lorenz
    cfg = config(epochs=1, batches_per_epoch=1, validation_steps=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(small_model(), x, cfg, validation_data=[xv[:700], xv[700:]])
    binned = [w for w in caught if w.category is models.metrics.StateSpaceResolutionWarning]
    spectra = [w for w in caught if w.category is models.metrics.SpectrumResolutionWarning]
    assert len(binned) == 1 and len(spectra) == 1, [str(w.message) for w in caught]
    assert all(w.filename == __file__ for w in binned + spectra)
    message = str(binned[0].message)
    assert message.startswith("fit: binned D_stsp of 998 generated points")
    assert message.endswith(
        "D_stsp scores one validation run from each of the 2 validation trajectories together, "
        "validation_steps points each (None: len(validation_data[k]) - 1); pass longer or more "
        "validation trajectories or raise validation_steps, or lower validation_n_bins."
    )
    message = str(spectra[0].message)
    assert message.startswith("fit: D_H of 299 points has 150 frequency bins")
    assert message.endswith(
        "min(validation_steps, len(validation_data[1]) - 1) points; pass a longer "
        "validation_data[1] or raise validation_steps."
    )


def test_several_validation_trajectories_resume_bitwise_and_only_with_the_same_split(
    lorenz, tmp_path
):
    x, xv = lorenz
    parts = [xv[:600], xv[600:]]
    cfg = config(epochs=2)
    full = fit(small_model(), x, cfg, validation_data=parts)
    with pytest.raises(KeyboardInterrupt):
        fit(small_model(), x, cfg, checkpoint_dir=tmp_path, callback=Interrupt(14),
            validation_data=parts)  # fmt: skip
    state = load_checkpoint(tmp_path)["state"]
    assert state["validation_data_lengths"] == [600, 400] and state["data_lengths"] == [3000]
    for other, what in [
        (xv, r"trajectories of \[600, 400\] steps -> \[1000\]"),
        ([xv[:500], xv[500:]], r"trajectories of \[600, 400\] steps -> \[500, 500\]"),
        ([xv[:600], xv[600:-1]], r"trajectories of \[600, 400\] steps -> \[600, 399\]"),
        (
            [xv[:600], xv[:599:-1]],
            r"same shape, different values at row 0 of validation_data\[1\]",
        ),
    ]:
        with pytest.raises(
            ValueError, match=rf"^fit: validation_data differs from the validation_data of the "
            rf"run in .* \({what}\); resume with the validation_data of that run"
        ):  # fmt: skip
            check_fit(small_model(), x, cfg, checkpoint_dir=tmp_path, resume=True,
                      validation_data=other)  # fmt: skip
    with pytest.raises(ValueError, match=r"^fit: the run in .* was validated on 2 validation "
                       r"trajectories of \[600, 400\] steps and selects its best model on it; "
                       "resume with that validation_data\\.$"):  # fmt: skip
        check_fit(small_model(), x, cfg, checkpoint_dir=tmp_path, resume=True)
    resumed = fit(small_model(), x, cfg, checkpoint_dir=tmp_path, resume=True,
                  validation_data=tuple(parts))  # fmt: skip
    assert_same_run(resumed, full)
    assert _val_history(resumed) == _val_history(full)


def test_validation_lengths_stored_without_validation_data_are_damage(lorenz, tmp_path):
    x, _ = lorenz
    cfg = config(epochs=1, batches_per_epoch=1)
    fit(small_model(), x, cfg, checkpoint_dir=tmp_path)
    assert load_checkpoint(tmp_path)["state"]["validation_data_lengths"] is None
    _rewrite(checkpoint_path(tmp_path),
             lambda m: m["train_state"].update(validation_data_lengths=[1000]))  # fmt: skip
    with pytest.raises(ValueError, match=r"is damaged .*validation_data_lengths are stored for "
                       "a run without validation_data"):  # fmt: skip
        check_fit(small_model(), x, replace(cfg, epochs=2), checkpoint_dir=tmp_path, resume=True)


def _planted_scores(monkeypatch, scores):
    """``fit``'s validations score ``scores`` in turn (status ok, the score as D_stsp)."""
    it = iter(scores)

    def validate(*args):
        score = next(it)
        return {"dstsp": score, "dh": 0.0, "score": score, "status": "ok"}

    monkeypatch.setattr(autodiff.train, "validate", validate)


def test_a_run_whose_best_score_is_negative_resumes(lorenz, monkeypatch, tmp_path):
    """GMM D_stsp (N >= 6) is a Monte-Carlo estimate that can be slightly negative (-1e-5 for
    near-identical data), so can a score: the checkpoint was refused on resume as damaged."""
    x, xv = lorenz
    cfg = config(epochs=2, selection_candidates=2, validation_steps=100)
    _planted_scores(monkeypatch, [-1e-5])
    with pytest.raises(KeyboardInterrupt):
        fit(
            small_model(),
            x,
            cfg,
            validation_data=xv,
            checkpoint_dir=tmp_path,
            callback=Interrupt(12),
        )
    _planted_scores(monkeypatch, [1.0])
    result = fit(small_model(), x, cfg, validation_data=xv, checkpoint_dir=tmp_path, resume=True)
    scores = [(c["epoch"], c["score"]) for c in result.selection["candidates"]]
    assert scores == [(1, -1e-5), (2, 1.0)]


def test_a_validation_whose_score_is_nan_is_a_failure(lorenz, monkeypatch):
    """A NaN score compares False with every other: taken as the first best, no later score
    could replace it (and its checkpoint could not be resumed)."""
    x, xv = lorenz
    real = models.metrics.evaluate
    calls = []

    def nan_first(*args, **kwargs):
        calls.append(1)
        out = real(*args, **kwargs)
        return {**out, "dstsp": math.nan} if len(calls) == 1 else out

    monkeypatch.setattr(models.metrics, "evaluate", nan_first)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fit(small_model(), x, config(epochs=2, selection_candidates=1), validation_data=xv)
    first, second = result.history
    assert first["val_score"] == math.inf and first["val_status"] == "non_finite"
    assert result.best_epoch == 2 and math.isfinite(second["val_score"])
