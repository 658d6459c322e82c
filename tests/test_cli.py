"""``parscan-train`` through click's CliRunner: layout, resume, evaluate, user mistakes."""

import csv
import datetime
import errno
import io
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import warnings
from dataclasses import fields, replace
from pathlib import Path
from types import SimpleNamespace

import numba
import numpy as np
import pytest
from click.testing import CliRunner

import autodiff
import cli
import models
import parscan
from autodiff.checkpoint import load_checkpoint
from models.metrics import normalized_spectra, spectrum_extent

TINY = ["--n-steps", "1500", "-T", "40", "-e", "2", "--batches-per-epoch", "3", "-L", "8", "-q"]


def run(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


#: the real reading, before :func:`idle_machine` replaces it in every test
MACHINE_LOAD = cli.machine_load


@pytest.fixture(autouse=True)
def idle_machine(monkeypatch):
    """The busy-machine warning off: the suite's own work loads the machine."""
    monkeypatch.setattr(cli, "machine_load", lambda: None)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    with pytest.MonkeyPatch.context() as patch:  # set up before idle_machine
        patch.setattr(cli, "machine_load", lambda: None)
        result = run(*TINY, "--out", out)
    assert result.exit_code == 0, result.output
    return out, result


def test_help_lists_every_option():
    result = run("--help")
    assert result.exit_code == 0
    for option in (
        "--data",
        "--data-key",
        "--system",
        "--model",
        "--alpha",
        "--sequence-length",
        "--resume",
        "--config",
        "--threads",
        "--backend",
        "--optimizer",
        "--n-relu",
        "--n-bins",
        "evaluate",
        "generate",
    ):
        assert option in result.output
    assert ".npy/.npz/.csv/.txt" in result.output  # the suffixes load_data reads


def test_evaluate_defaults_are_the_library_defaults():
    """``parscan-train evaluate``'s defaults restate those of ``models.evaluate`` (the command
    line imports no kernels to show its help): they must stay the same."""
    import inspect

    library = inspect.signature(models.evaluate).parameters
    command = {p.name: p.default for p in cli.evaluate_command.params}
    for name in ("smoothing", "pe_steps", "transient", "n_starts"):
        assert command[name] == library[name].default, name
    assert cli.TEST_PE_STEPS == library["pe_steps"].default


def test_version():
    result = run("--version")
    assert result.exit_code == 0 and "parscan-train" in result.output


def test_tiny_run_writes_the_layout(finished_run):
    out, result = finished_run
    for name in ("args.json", "model.npz", "metrics.json", "history.csv"):
        assert (out / name).is_file(), name
    assert (out / "checkpoints" / "checkpoint.npz").is_file()
    model = models.load(out / "model.npz")
    assert isinstance(model, models.ClippedShPLRNN) and model.standardization is not None
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["status"] == "ok"  # else the run exits 1 (finished_run: 0)
    assert metrics["best_epoch"] in (1, 2)
    args = json.loads((out / "args.json").read_text())
    assert args["settings"]["epochs"] == 2 and "numba" in args["versions"]
    assert args["settings"]["n_bins"] == args["train_config"]["validation_n_bins"] == 30
    assert metrics["n_bins"] == 30
    assert metrics["failed_after_kept_epoch"] <= metrics["validations_after_kept_epoch"] <= 1
    history = (out / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,") and len(history) == 3
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "plots skipped" in result.output
    else:
        assert metrics["test"]["status"] != "ok" or (out / "attractor.png").is_file()


def test_rerun_into_existing_out_is_refused(finished_run):
    out, _ = finished_run
    result = run(*TINY, "--out", out)
    assert result.exit_code == 2
    assert "already holds a run" in result.output


def test_runs_without_out_in_the_same_second_each_get_a_new_folder(tmp_path, monkeypatch):
    """The default folder runs/<data>-<model>-<time> is created anew: a run started in the
    same second (or a rerun) gets the next free -2, -3, ..., not the other run's folder."""

    class SameSecond(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 12, 2, 14, 8, 49)

    monkeypatch.setattr(cli, "datetime", SimpleNamespace(datetime=SameSecond))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "lorenz63-clipped-shplrnn-20261202-140849-2").mkdir(parents=True)
    folders = []
    for seed in (1, 2):
        result = run(*TINY, "--seed", seed)
        assert result.exit_code == 0, result.output
        folders.append(re.search(r"results: (\S+)", result.output)[1])
    first = "runs/lorenz63-clipped-shplrnn-20261202-140849"
    assert folders == [first, f"{first}-3"]
    for folder, seed in zip(folders, (1, 2), strict=True):
        settings = json.loads((tmp_path / folder / "args.json").read_text())["settings"]
        assert (settings["seed"], settings["out"]) == (seed, folder)
    assert not any((tmp_path / "runs" / f"{first.split('/')[1]}-2").iterdir())


def test_evaluate_a_run_and_a_model_file(finished_run, tmp_path):
    out, _ = finished_run
    result = run("evaluate", out)
    assert result.exit_code == 0, result.output
    assert (out / "evaluation.json").is_file()
    x = models.generate("lorenz63", 800, seed=7)
    np.save(tmp_path / "test.npy", x)
    result = run("evaluate", out / "model.npz", "--test-data", tmp_path / "test.npy")
    assert result.exit_code == 0, result.output
    np.savez(tmp_path / "two.npz", other=x[:5], test=x)
    keyed = run("evaluate", out / "model.npz", "--test-data", tmp_path / "two.npz",
                "--test-data-key", "test")  # fmt: skip
    assert keyed.exit_code == 0 and keyed.output == result.output, keyed.output
    assert run("evaluate", out / "model.npz").exit_code == 2
    spread = run("evaluate", out / "model.npz", "--test-data", tmp_path / "test.npy",
                 "--n-starts", 3, "--out", tmp_path / "spread.json")  # fmt: skip
    assert spread.exit_code == 0, spread.output
    assert _line(spread.output).endswith("(799 steps, 3 free runs from spread-out test points)")
    model = models.load(out / "model.npz")
    mean, sd = model.standardization
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = models.evaluate(model, (x - mean) / sd, n_starts=3)
    scores = json.loads((tmp_path / "spread.json").read_text())
    assert scores["n_starts"] == 3
    assert (scores["dstsp"], scores["dh"]) == pytest.approx((expected["dstsp"], expected["dh"]))


def test_evaluate_scores_several_test_files_together(finished_run, tmp_path):
    out, _ = finished_run
    a, b = models.generate("lorenz63", 800, seed=7), models.generate("lorenz63", 500, seed=8)
    np.save(tmp_path / "a.npy", a)
    np.savez(tmp_path / "b.npz", test=b)
    files = ["--test-data", tmp_path / "a.npy", "--test-data", tmp_path / "b.npz"]
    result = run("evaluate", out / "model.npz", *files, "--out", tmp_path / "scores.json")
    assert result.exit_code == 0, result.output
    model = models.load(out / "model.npz")
    mean, sd = model.standardization
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = models.evaluate(model, [(a - mean) / sd, (b - mean) / sd])
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["n_trajectories"] == 2 and scores["n_measured"] == [799, 499]
    assert (scores["dstsp"], scores["dh"], scores["pe"]) == pytest.approx(
        (expected["dstsp"], expected["dh"], expected["pe"]), rel=1e-12
    )
    assert len(scores["per_trajectory"]) == 2
    assert _line(result.output).endswith("(2 test trajectories, 799 + 499 steps)")
    dropped = run("evaluate", out / "model.npz", *files, "--transient", 10)
    assert _line(dropped.output).endswith(
        "(2 test trajectories, 789 + 489 steps after a transient of 10 each)"
    )
    np.save(tmp_path / "flat.npy", b[:, :2])
    for extra, message in [
        (["--test-data", tmp_path / "flat.npy"], f"--test-data {tmp_path}/flat.npy has 2 "
         "dimensions but the model has 3."),
        (["--test-data-key", "test"], "--test-data-key names an array in an .npz file; "
         f"--test-data {tmp_path}/a.npy is not one, drop --test-data-key."),
        (["--transient", 600], f"--transient (600) must be smaller than the free run's length "
         f"(499, for --test-data {tmp_path}/b.npz)"),  # evaluate's x_test[1], named by its file
    ]:  # fmt: skip
        refused = run("evaluate", out / "model.npz", *files, *extra)
        assert refused.exit_code == 2
        assert refused.output.startswith("parscan-train: error: "), refused.output
        assert message in refused.output and len(refused.output.splitlines()) == 1, refused.output


@pytest.mark.filterwarnings("always::models.metrics.SpectrumResolutionWarning")
def test_evaluate_warns_in_one_line_when_the_test_data_are_short_for_dh(finished_run, tmp_path):
    out, _ = finished_run
    np.save(tmp_path / "short.npy", models.generate("lorenz63", 300, seed=7))
    result = run("evaluate", out / "model.npz", "--test-data", tmp_path / "short.npy")
    assert result.exit_code == 0, result.output
    warned = [line for line in result.output.splitlines() if "warning" in line]
    assert len(warned) == 1, result.output
    assert warned[0].startswith("parscan-train: warning: test score: D_H of 299 points")
    assert warned[0].endswith(
        "Compare at least 398 points: the test data's steps are scored; pass a longer "
        "--test-data or lower --smoothing."  # not --transient: it is 0
    )
    quiet = run("evaluate", out / "model.npz", "--test-data", tmp_path / "short.npy",
                "--smoothing", "5")  # fmt: skip
    assert quiet.exit_code == 0 and "warning" not in quiet.output, quiet.output


@pytest.mark.filterwarnings("always::models.metrics.StateSpaceResolutionWarning")
def test_too_few_test_points_for_dstsp_warn_with_the_command_line_remedies(finished_run, tmp_path):
    out, _ = finished_run
    np.save(tmp_path / "short.npy", models.generate("lorenz63", 300, seed=7))
    evaluated = run("evaluate", out / "model.npz", "--test-data", tmp_path / "short.npy",
                    "--transient", 50)  # fmt: skip
    trained = run(*TINY, "-e", 1, "--out", tmp_path / "run")
    for result, fix in [
        (evaluated, "the test data's steps after --transient are scored; pass a longer "
                    "--test-data, lower --transient or lower --n-bins."),
        (trained, "the generated test trajectory is scored; raise --n-steps, or lower --n-bins."),
    ]:  # fmt: skip
        assert result.exit_code == 0, result.output
        warned = [line for line in result.output.splitlines() if "binned D_stsp" in line]
        assert len(warned) == 1, result.output
        assert warned[0].startswith("parscan-train: warning: test score: binned D_stsp of ")
        assert warned[0].endswith(fix) and "n_steps" not in warned[0]


@pytest.mark.filterwarnings("always::models.metrics.SpectrumResolutionWarning")
def test_short_training_test_data_warn_for_dh_with_the_command_line_remedies(tmp_path):
    """No ``smoothing`` in training's remedies: it has no such option."""
    x = models.generate("lorenz63", 2000, seed=3)
    np.save(tmp_path / "train.npy", x)
    np.save(tmp_path / "test.npy", x[:300])
    config = tmp_path / "short_validation.toml"
    config.write_text("validation_steps = 300\n")
    result = run("--data", tmp_path / "train.npy", "--test-data", tmp_path / "test.npy",
                 "-T", 20, "-L", 8, "-e", 1, "--batches-per-epoch", 2, "--n-bins", 4,
                 "--config", config, "--out", tmp_path / "run")  # fmt: skip
    assert result.exit_code == 0, result.output
    warned = [line for line in result.output.splitlines() if "D_H of" in line]
    assert warned == [
        "parscan-train: warning: validation: D_H of 300 points has 151 frequency bins, fewer "
        "than 10 x smoothing (20); smoothing flattens both spectra and D_H cannot tell signals "
        "apart. Compare at least 398 points: each validation run compares at most "
        "validation_steps points and no more than the validation part holds; raise "
        "validation_steps or validation_fraction (--config).",
        "parscan-train: warning: test score: D_H of 299 points has 150 frequency bins, fewer "
        "than 10 x smoothing (20); smoothing flattens both spectra and D_H cannot tell signals "
        "apart. Compare at least 398 points: every step of --test-data after the first is "
        "scored; pass a longer --test-data.",
    ], result.output


def test_test_data_that_is_also_training_data_warn(tmp_path):
    np.save(tmp_path / "train.npy", models.generate("lorenz63", 2000, seed=3))
    result = run("--data", tmp_path / "train.npy", "--test-data", tmp_path / "train.npy",
                 "-T", 20, "-L", 8, "-e", 1, "--batches-per-epoch", 2, "--n-bins", 4,
                 "--out", tmp_path / "run")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (
        f"parscan-train: warning: --test-data {tmp_path / 'train.npy'} is also a --data file: "
        "the model trains and is selected on it, so its test score measures the fit, not how "
        "well the model generalises to data it has not seen."
    ) in result.output.splitlines()
    # and when evaluate is given the run's training file, for the run or its model.npz (the
    # latter was silent); a training file gone since (moved here) leaves nothing to compare
    # with, and no error
    for target in (tmp_path / "run", tmp_path / "run" / "model.npz"):
        result = run("evaluate", target, "--test-data", tmp_path / "train.npy")
        assert result.exit_code == 0, result.output
        message = f"warning: --test-data {tmp_path / 'train.npy'} is the run's --data file: the "
        assert message in result.output, result.output
    (tmp_path / "train.npy").rename(tmp_path / "moved.npy")
    result = run("evaluate", tmp_path / "run", "--test-data", tmp_path / "moved.npy")
    assert result.exit_code == 0 and "warning" not in result.output, result.output


@pytest.mark.filterwarnings("always::models.metrics.StateSpaceResolutionWarning")
@pytest.mark.filterwarnings("always::autodiff.train.SelectionWarning")
def test_too_short_validation_runs_warn_once_with_the_command_line_remedies(tmp_path):
    """Also: the tiny model fails the selection check, a warning without fit's name."""
    config = tmp_path / "short_validation.toml"
    config.write_text("validation_steps = 500\nvalidation_interval = 1\n")
    result = run(*TINY, "--config", config, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    selection = [line for line in result.output.splitlines() if "selection check" in line]
    assert len(selection) == 1 and selection[0].startswith(
        "parscan-train: warning: every one of the 2 candidate epochs failed the selection "
        "check (more than 1/8 of its 16 free runs of 1000 steps came to rest or blew up); "
        "kept epoch 2"
    ), result.output
    assert selection[0].endswith("(shown once)")
    warned = [line for line in result.output.splitlines() if "binned D_stsp" in line]
    assert len(warned) == 2, result.output  # validation, once; the test score
    assert warned[0].startswith("parscan-train: warning: validation: binned D_stsp of 500 ")
    assert warned[0].endswith(
        "each validation run scores validation_steps points; raise validation_steps "
        "(--config), or lower --n-bins."
    )


def test_interrupted_run_saves_and_resumes(tmp_path, monkeypatch):
    out = tmp_path / "run"
    calls = {"n": 0}
    original = cli.Progress.__call__

    def interrupt_at_step_four(self, info):
        original(self, info)
        if info.kind == "step":
            calls["n"] += 1
            if calls["n"] == 4:
                raise KeyboardInterrupt

    monkeypatch.setattr(cli.Progress, "__call__", interrupt_at_step_four)
    result = run(*TINY, "--out", out)
    assert result.exit_code == 130
    assert "--resume" in result.output
    assert (out / "checkpoints" / "checkpoint.npz").is_file()
    monkeypatch.setattr(cli.Progress, "__call__", original)
    result = run("--out", out, "--resume", "-q")
    assert result.exit_code == 0, result.output
    assert len((out / "history.csv").read_text().splitlines()) == 3


def test_a_run_stopped_before_its_first_checkpoint_can_be_started_again(tmp_path, monkeypatch):
    out = tmp_path / "run"

    def killed_at_once(*args, **kwargs):
        raise KeyboardInterrupt  # as if no checkpoint could be written (SIGKILL, a full disk)

    monkeypatch.setattr(autodiff, "fit", killed_at_once)
    result = run(*TINY, "--out", out)
    assert result.exit_code == 130
    assert result.output.strip().endswith(
        "interrupted before a checkpoint was written, so there is nothing to continue; start "
        f"the run again (--out {out} can be reused)."
    )
    assert sorted(p.name for p in out.iterdir()) == ["args.json", "checkpoints"]
    monkeypatch.undo()
    resumed = run("--out", out, "--resume")
    assert resumed.exit_code == 2 and "stopped before its first checkpoint" in resumed.output
    for command in ("evaluate", "generate"):
        _one_error_line(
            run(command, out), f"{out} has no model.npz: the run stopped (or is still running) "
        )
    again = run(*TINY, "--out", out)
    assert again.exit_code == 0, again.output
    assert (out / "model.npz").is_file()


def test_a_stop_after_training_is_finished_by_a_resume(tmp_path, monkeypatch):
    out = tmp_path / "run"

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "score_test", stopped)
    result = run(*TINY, "--out", out)
    assert result.exit_code == 130
    assert "interrupted after training, before all results were written" in result.output
    assert f"Write them with: parscan-train --out {out} --resume" in result.output
    monkeypatch.undo()
    finished = run("--out", out, "--resume")
    assert finished.exit_code == 0, finished.output
    assert (out / "metrics.json").is_file()


def test_an_out_folder_that_cannot_be_made_is_named_as_out(tmp_path):
    """fit's checkpoint_dir is no name on the command line: --out is, with its folder."""
    os.symlink(tmp_path / "missing", tmp_path / "dangling")
    out = tmp_path / "dangling" / "run"
    result = run(*TINY, "--out", out)
    _one_error_line(
        result,
        f"--out {out}: the checkpoint folder {out / 'checkpoints'} cannot be created: "
        f"{tmp_path / 'dangling'} is a symbolic link to a missing target.",
    )


def _disk_full_for(monkeypatch, *names):
    """Files named ``names`` cannot be written, as on a full disk (ENOSPC)."""
    write = models.base._write_atomically

    def full(path, fill):
        if path.name in names:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write(path, fill)

    monkeypatch.setattr(models.base, "_write_atomically", full)


def test_a_full_disk_is_one_line_and_the_run_goes_on_from_what_was_saved(tmp_path, monkeypatch):
    """A write that fails in any phase of training (args.json, a checkpoint, the results,
    a plot) ends in one line (exit 2, no traceback) that says how to go on once the folder
    takes files again, and the folder allows it: the same command before the first
    checkpoint, --resume after it; the scores are written before the plots."""
    no_space = "(No space left on device)"
    out = tmp_path / "run"
    _disk_full_for(monkeypatch, "args.json")
    result = run(*TINY, "--out", out)
    _one_error_line(result, f"cannot write {out / 'args.json'} {no_space}")
    assert "No checkpoint was written; once the folder takes files again, run the command " in (
        result.output
    )
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints"]
    monkeypatch.undo()
    _disk_full_for(monkeypatch, "checkpoint.npz")
    result = run(*TINY, "--out", out)  # the folder is reused
    assert result.exit_code == 2, result.output
    assert f"cannot write {out / 'checkpoints' / 'checkpoint.npz'} {no_space}" in result.output
    assert f"(--out {out} can be reused)" in result.output
    monkeypatch.undo()
    _disk_full_for(monkeypatch, "model.npz")
    result = run(*TINY, "--out", out)
    assert result.exit_code == 2, result.output
    assert f"the checkpoint in {out / 'checkpoints'} holds the trained run. Once the folder " in (
        result.output
    )
    assert f"write the results with: parscan-train --out {out} --resume" in result.output
    monkeypatch.undo()

    def no_plots(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as from the image library

    monkeypatch.setattr(cli, "write_plots", no_plots)
    result = run("--out", out, "--resume")
    assert result.exit_code == 2, result.output
    assert f"cannot write the results in {out} {no_space}; the checkpoint in" in result.output
    assert "dstsp" in json.loads((out / "metrics.json").read_text())["test"]
    monkeypatch.undo()
    finished = run("--out", out, "--resume")
    assert finished.exit_code == 0, finished.output
    assert (out / "spectrum.png").is_file()


def test_a_stop_while_the_plotting_library_is_imported_is_an_interruption(tmp_path, monkeypatch):
    """Python 3.11 wraps a Ctrl-C that arrives while ``import matplotlib.pyplot`` creates its
    classes (in a ``__set_name__``) in a RuntimeError: it is still reported as a stop after
    training (exit 130, the --resume that writes the results), and a RuntimeError without an
    interruption behind it is not."""

    class InterruptedImport:
        """Finds the plotting library by raising what Python 3.11 raises for a Ctrl-C."""

        def __init__(self, cause):
            self.cause = cause

        def find_spec(self, name, path=None, target=None):
            if name == "matplotlib":
                raise RuntimeError("Error calling __set_name__") from self.cause
            return None

    monkeypatch.delitem(sys.modules, "matplotlib", raising=False)
    out = tmp_path / "run"
    monkeypatch.setattr(sys, "meta_path", [InterruptedImport(KeyboardInterrupt()), *sys.meta_path])
    result = run(*TINY, "--out", out)
    assert result.exit_code == 130, result.output
    assert f"before all results were written; the checkpoint in {out / 'checkpoints'}" in (
        result.output
    )
    assert f"Write them with: parscan-train --out {out} --resume" in result.output
    monkeypatch.setattr(sys, "meta_path", [InterruptedImport(ValueError()), *sys.meta_path[1:]])
    failed = run("--out", out, "--resume")
    assert failed.exit_code == 1 and isinstance(failed.exception, RuntimeError)


def test_sigterm_checkpoints_and_exits_143(tmp_path):
    """``timeout``, ``kill`` and batch systems stop a run with SIGTERM: it is handled as
    Ctrl-C is (a checkpoint of the last step), in a real process."""
    out = tmp_path / "run"
    config = tmp_path / "long.toml"
    config.write_text("checkpoint_interval = 1000\n")  # only the stop writes one
    tiny = [a for a in TINY if a not in ("-q",)]
    command = [sys.executable, "-c", "import cli; cli.main()", *tiny, "-e", "1000", "-v"]
    command += ["--config", str(config), "--out", str(out), "--threads", "1"]
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True) as process:
        watchdog = threading.Timer(120, process.kill)  # a regression must not hang the suite
        watchdog.start()
        try:
            for line in process.stderr:
                if line.startswith("epoch 2/"):
                    process.send_signal(signal.SIGTERM)
                    break
            rest = process.stderr.read()
        finally:
            watchdog.cancel()
            process.kill()  # a no-op once it has exited
        assert process.wait() == 143, rest
    assert f"stopped by SIGTERM; checkpoint saved in {out / 'checkpoints'}" in rest
    assert "Traceback" not in rest
    assert load_checkpoint(out / "checkpoints")["state"]["train_state"]["step"] >= 3
    recorded = json.loads((out / "args.json").read_text())
    assert recorded["train_config"]["checkpoint_interval"] == 1000


@pytest.mark.parametrize(
    ("name", "text", "encoding"),
    [
        ("run.toml", "epochs = 7\n", "utf-8"),
        ("run.json", '{"epochs": 7}', "utf-8-sig"),  # a byte-order mark is allowed
        ("run.cfg", "epochs = 7\n", "utf-8"),  # another suffix: TOML or JSON
        ("run.conf", '{"epochs": 7}', "utf-8"),
    ],
)
def test_config_formats(tmp_path, name, text, encoding):
    (tmp_path / name).write_text(text, encoding=encoding)
    assert cli.resolve_settings({}, str(tmp_path / name)).epochs == 7


def test_a_config_files_out_expands_the_home_folder(tmp_path, monkeypatch):
    """out = "~/run" in a config file (no shell expands it) is the run folder in the home
    folder, as the data paths are; it was a folder named "~" in the working directory."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.toml").write_text('out = "~/run"\n')
    result = run(*TINY, "--config", tmp_path / "c.toml")
    assert result.exit_code == 0, result.output
    assert (home / "run" / "model.npz").exists() and not (tmp_path / "~").exists()
    resumed = run("--config", tmp_path / "c.toml", "--resume", "-e", 3, "-q")  # found there
    assert resumed.exit_code == 0, resumed.output
    _one_error_line(  # a user without a home folder: one line (a RuntimeError traceback)
        run(*TINY, "--out", "~no_such_user_here/run"),
        "--out: no home folder is known for '~no_such_user_here'; write the path out in full.",
    )


def test_config_file_and_flag_precedence(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(
        "epochs = 5\nseed = 3\nhidden-dim = 8\nn_steps = 1500\nsequence_length = 40\n"
        "batches_per_epoch = 2\nquiet = true\n"
    )
    out = tmp_path / "run"
    result = run("--config", config, "--epochs", "1", "--out", out)
    assert result.exit_code == 0, result.output
    settings = json.loads((out / "args.json").read_text())["settings"]
    assert settings["epochs"] == 1 and settings["seed"] == 3 and settings["hidden_dim"] == 8


def _bad_files(tmp_path):
    nan = np.random.default_rng(0).standard_normal((500, 3))
    nan[10, 1] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    (tmp_path / "broken.csv").write_text("1,2\n3,x\n")
    np.save(tmp_path / "short.npy", np.random.default_rng(0).standard_normal((30, 3)))
    np.save(tmp_path / "narrow.npy", np.random.default_rng(0).standard_normal((30, 2)))
    (tmp_path / "bad.toml").write_text("epochs = [")
    (tmp_path / "unknown.json").write_text('{"colour": "blue"}')
    (tmp_path / "types.toml").write_text('noise = "x"\nout = 5\nresume = "no"\nepochs = 2.5\n')
    (tmp_path / "twice.toml").write_text("hidden_dim = 5\nhidden-dim = 6\n")
    (tmp_path / "latin1.toml").write_bytes(b"seed = 1 # \xe9\n")
    np.savez(tmp_path / "several.npz", train=nan[11:], test=nan[11:])
    np.savez(tmp_path / "empty.npz")
    (tmp_path / "key.toml").write_text('data-key = "train"\n')
    (tmp_path / "val.toml").write_text('data-key = "val"\n')
    (tmp_path / "settings.yaml").write_text("epochs: 2\n")
    (tmp_path / "bad.cfg").write_text("epochs: 2\n")
    (tmp_path / "twice.json").write_text('{"epochs": 2, "lr-start": 1e-3, "epochs": 3}')
    (tmp_path / "deep.json").write_text('{"epochs": ' + "[" * 10**5 + "]" * 10**5 + "}")
    (tmp_path / "digits.json").write_text('{"epochs": ' + "9" * 5000 + "}")
    (tmp_path / "ranges.toml").write_text(
        "validation_fraction = 0.9\ntest_fraction = 0.95\nvalidation-steps = 0\nnoise = -1\n"
    )
    (tmp_path / "generator.toml").write_text('system = "rossler"\n')
    (tmp_path / "gtf.toml").write_text('alpha_method = "geomean"\n')
    (tmp_path / "hidden.toml").write_text('model = "alrnn"\nhidden_dim = 30\n')
    (tmp_path / "steps.toml").write_text("validation_steps = 1\nepochs = 0\n")
    (tmp_path / "selection.toml").write_text("selection_candidates = 0\nselection_steps = 5\n")
    (tmp_path / "unchecked.toml").write_text("selection_candidates = 1\nselection_starts = 16\n")
    (tmp_path / "choices.toml").write_text('dtype = "float16"\nbackend = "gpu"\n')


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "{tmp}/missing.npy"], "no such file"),
        (["--data", "{tmp}/broken.csv"], "broken.csv"),
        (["--data", "{tmp}/nan.npy"], "NaN"),
        (["--data", "{tmp}/short.npy", "-T", "200"], "too few steps"),
        (["-M", "2"], "latent dimension must be >= N"),
        (
            ["--model", "alrnn", "-M", "3", "-P", "5"],
            "error: --n-relu 5 must not exceed the latent dimension --latent-dim/-M (3): the "
            "ALRNN's ReLU units are among its latents.",
        ),
        (["--system", "nope"], "error: --system nope: unknown system; known: lorenz63, rossler"),
        (
            ["--config", "{tmp}/choices.toml"],
            "--dtype float16 (dtype in --config {tmp}/choices.toml): choose one of float32, "
            "float64; --backend gpu (backend in --config {tmp}/choices.toml): choose one of",
        ),
        (["--n-steps", str(10**15)], "GiB are available; lower --n-steps."),
        (["--out", "{tmp}/short.npy/run"], "short.npy is a file, not a folder; choose another"),
        (
            ["--n-steps", "1500", "-T", "40", "--test-data", "{tmp}/narrow.npy"],
            "error: --test-data has 2 dimensions but the training data has 3.",
        ),
        (["--model", "lstm"], "lstm"),
        (["--n-relu", "2"], "--n-relu 2: it applies to --model alrnn only, not clipped-shplrnn"),
        (
            ["--config", "{tmp}/hidden.toml"],
            "--hidden-dim 30 (hidden_dim in --config {tmp}/hidden.toml): it applies to shplrnn",
        ),
        (
            ["--model", "linear-ssm", "--alpha", "0.3", "--jacobian", "diag"],
            "--alpha 0.3, --jacobian diag: they apply to the latent RNNs (GTF-DEER), not "
            "linear-ssm; drop them.",
        ),
        (["--model", "selective-ssm", "--method", "sequential"], "--method sequential: it"),
        # given, they are refused at their defaults too: the run would ignore them
        (
            ["--model", "linear-ssm", "--method", "deer", "--alpha", "auto"],
            "--method deer, --alpha auto: they apply to the latent RNNs (GTF-DEER), not "
            "linear-ssm; drop them.",
        ),
        (
            ["--model", "selective-ssm", "--config", "{tmp}/gtf.toml"],
            "--alpha-method geomean (alpha_method in --config {tmp}/gtf.toml): it applies to the "
            "latent RNNs",
        ),
        (["--method", "sequential", "--jacobian", "full"], "--jacobian full: it applies to"),
        (  # one candidate is kept unchecked: the check's free runs were ignored
            ["--model", "linear-ssm", "--alpha", "0.3", "--config", "{tmp}/unchecked.toml"],
            "--alpha 0.3: it applies to the latent RNNs (GTF-DEER), not linear-ssm; drop it; "
            "selection_starts 16 (selection_starts in --config {tmp}/unchecked.toml): it "
            "applies to selection_candidates > 1 (one candidate is kept unchecked, without free "
            "runs); drop it.",
        ),
        (
            ["--alpha", "0.2", "--config", "{tmp}/gtf.toml"],
            "--alpha-method geomean (alpha_method in --config {tmp}/gtf.toml): it applies to "
            "--alpha auto (a fixed --alpha is never re-estimated); drop it.",
        ),
        (
            "--method sequential --jacobian diag --alpha 0 --alpha-method sup".split(),
            "--jacobian diag: it applies to --method deer (the sequential method runs no Newton "
            "iterations or scans); drop it; --alpha-method sup: it applies to --alpha auto",
        ),
        (  # the sequential BPTT is a fused CPU kernel: a --backend cuda there ran on the CPU
            ["--method", "sequential", "--backend", "auto"],
            "--backend auto: it applies to --method deer",
        ),
        (
            ["--method", "sequential", "--jacobian", "diag"],
            "--jacobian diag: it applies to --method deer (the sequential method runs no Newton",
        ),
        pytest.param(
            ["--backend", "cuda"],
            "--backend cuda is not available here (numba.cuda finds no GPU; "
            "NUMBA_ENABLE_CUDASIM=1 runs the simulator); available: sequential, cpu.",
            marks=pytest.mark.skipif(
                "cuda" in parscan.available_backends(), reason="a CUDA GPU is present"
            ),
        ),
        (["--alpha", "1.5"], "--alpha must be 'auto' or a number in [0, 1], got '1.5'"),
        (["--seed", str(10**4299)], "--seed must be an integer >= 0 of at most 4299 digits (a "),
        (
            ["--lr-start", "1e300", "--lr-end", "1e-300"],
            "--lr-end / --lr-start = 1e-300 / 1e+300 is beyond the range of a float",
        ),
        # checked with the other settings: every problem at once
        (
            ["--alpha", "x", "--lr-start", "-1"],
            "--lr-start must be a positive number, got -1.0; "
            "--alpha must be 'auto' or a number in [0, 1]",
        ),
        (["--epochs", "0"], "epochs"),
        (["--n-bins", "0"], "--n-bins must be a positive integer, got 0."),
        (
            ["--n-steps", "1500", "-T", "40", "--n-bins", str(10**101)],
            f"error: --n-bins: n_bins**N = {10**101}**3 is too large for binning; lower --n-bins.",
        ),
        (["--config", "{tmp}/bad.toml"], "not valid TOML"),
        (["--config", "{tmp}/unknown.json"], "colour"),
        (["--out", "/proc/parscan-cannot-write"], "cannot write"),
        (["--resume", "--out", "{tmp}/nothing"], "--resume"),
        (["--config", "{tmp}/types.toml"], "noise must be a number, got 'x'; out must be a"),
        (["--config", "{tmp}/types.toml"], "resume must be true or false, got 'no'"),
        (["--config", "{tmp}/types.toml"], "epochs must be an integer, got 2.5"),
        (["--config", "{tmp}/twice.toml"], "hidden_dim and hidden-dim are the same setting"),
        (["--config", "{tmp}/latin1.toml"], "not a UTF-8 text file"),
        (["--data", "{tmp}"], "is a folder"),
        (["--data", "{tmp}/short.npy", "--system", "rossler"], "do not apply with --data"),
        (["--data", "{tmp}/short.npy", "-T", "5"], "held out from --data"),
        (["--n-steps", "15", "-T", "5"], "PE(20) needs at least 21"),
        (["--model", "plrnn", "-L", "5"], "--hidden-dim 5: it applies to shplrnn"),
        (
            ["--data", "{tmp}/several.npz"],
            "holds 2 arrays (train, test); choose one with --data-key",
        ),
        (["--data", "{tmp}/several.npz", "--data-key", "val"], "--data-key val: {tmp}/several.npz"),
        (["--data-key", "train"], "--data-key names an array in the --data .npz file; add --data"),
        (["--data", "{tmp}/short.npy", "--data-key", "x"], "--data {tmp}/short.npy is not one"),
        # a key from a config file: the message says where it was set and how to change that
        (
            ["--config", "{tmp}/key.toml", "--data", "{tmp}/short.npy"],
            "--data-key train (data-key in --config {tmp}/key.toml) names an array in an .npz "
            "file; --data {tmp}/short.npy is not one, remove it from that file.",
        ),
        (["--config", "{tmp}/key.toml"], "; add --data or remove it from that file."),
        (
            ["--config", "{tmp}/val.toml", "--data", "{tmp}/several.npz"],
            "--data-key val (data-key in --config {tmp}/val.toml): {tmp}/several.npz has no "
            "such array; it holds 2 arrays (train, test). Change it in that file or override "
            "it with --data-key KEY.",
        ),
        (["--data", "{tmp}/empty.npz"], "empty.npz: it holds no arrays; save the trajectory"),
        (
            ["--data", "{tmp}/short.npy", "--test-data", "{tmp}/several.npz"],
            "--test-data: {tmp}/several.npz holds 2 arrays (train, test); choose one with "
            "--test-data-key KEY.",
        ),
        (
            [
                "--data",
                "{tmp}/short.npy",
                "--test-data",
                "{tmp}/several.npz",
                "--test-data-key",
                "x",
            ],
            "--test-data-key x: {tmp}/several.npz has no such array",
        ),
        (["--test-data-key", "test"], "add --test-data or drop --test-data-key."),
        (["--data", "{tmp}/broken.csv"], "error: --data: cannot read {tmp}/broken.csv"),
        (["--config", "{tmp}/settings.yaml"], "YAML is not supported; write the settings as TOML"),
        (["--config", "{tmp}/bad.cfg"], "is not valid TOML or JSON (TOML: "),
        (["--config", "{tmp}/twice.json"], "is not valid JSON (the key 'epochs' is given twice)."),
        (["--config", "{tmp}/deep.json"], "deep.json is not valid JSON (nested too deeply to "),
        (["--config", "{tmp}/digits.json"], "is not valid JSON (a number too long to read)."),
        (["-q", "--data", "{tmp}/short.npy", "evaluate", "{tmp}"], "--data, --quiet: training"),
        # a missing file is named first, with the other problems of the settings
        (
            ["--data", "{tmp}/missing.npy", "--data-key", "train"],
            "--data: no such file {tmp}/missing.npy; --data-key names an array in an .npz file",
        ),
        (["--out", ""], "--out must not be empty"),
        (["--out", "", "--resume"], "--out must not be empty"),
        (["-q", "-v"], "-q/--quiet and -v/--verbose contradict each other; pick one"),
        (
            ["--n-steps", "1500", "-T", "40", "--out", "{tmp}"],
            "--out {tmp} is not empty and holds no parscan run; choose another --out.",
        ),
        # config-only settings are named as written there, every problem at once
        (
            ["--config", "{tmp}/ranges.toml"],
            "validation-steps in --config {tmp}/ranges.toml must be a positive integer, got 0; "
            "validation_fraction in --config {tmp}/ranges.toml must be in (0, 0.9), got 0.9; "
            "test_fraction 0.95 (test_fraction in --config {tmp}/ranges.toml): it holds test "
            "data out of --data, and --system generates it; drop it; noise in --config "
            "{tmp}/ranges.toml must be in [0, 10), got -1.0.",
        ),
        (["--data", "{tmp}/short.npy", "--config", "{tmp}/generator.toml"], "system in --config"),
        (
            ["--config", "{tmp}/steps.toml"],
            "epochs in --config {tmp}/steps.toml must be a positive integer, got 0; "
            "validation_steps in --config {tmp}/steps.toml must be >= 2 (D_H compares spectra "
            "of at least 2 points), got 1.",
        ),
        (
            ["--config", "{tmp}/selection.toml"],
            "selection_candidates in --config {tmp}/selection.toml must be a positive integer, "
            "got 0; selection_steps in --config {tmp}/selection.toml must be an integer >= 10 "
            "(a run rests for at least 10 points), got 5.",
        ),
    ],
)
def test_user_mistakes_exit_2_with_one_line(tmp_path, args, message):
    _bad_files(tmp_path)
    result = run(*[a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("parscan-train: error:")
    assert message.format(tmp=tmp_path) in lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "flags, config, lower",
    [
        (["-B", 10**8], "", "--batch-size, --sequence-length or --latent-dim"),
        (["-M", 10**5, "-B", 1, "-T", 2], "", "--latent-dim or --hidden-dim"),
        # an SSM's step holds its readout's hidden layer a step (left out, it passed 560x low)
        (["--model", "linear-ssm", "-M", 2, "-L", 10**5, "-B", 10**4], "",
         "--batch-size, --sequence-length, --latent-dim or --hidden-dim"),
        ([], "validation_steps = 100000000000\nselection_candidates = 1",
         "validation_steps in --config {config}, validation_starts or --latent-dim"),
        ([], "selection_steps = 100000000000\nselection_candidates = 2",
         "selection_steps in --config {config}, selection_starts or --latent-dim"),
    ],
)  # fmt: skip
def test_a_run_too_large_for_the_memory_is_refused_before_its_folder(
    tmp_path, flags, config, lower
):
    """A run whose largest arrays -- the batch and its solver, the initialisation, the
    validation or the selection free runs -- exceed the memory available is refused in one
    line naming what to lower, before the run folder exists (a run could not even be
    resumed)."""
    path = tmp_path / "run.toml"
    path.write_text(config)
    out = tmp_path / "run"
    _one_error_line(
        run(*TINY, *flags, "--config", path, "--out", out),
        f"GiB are available; lower {lower.format(config=path)}.",
    )
    assert not out.exists()


def _training_memory(s, parts) -> None:
    """:func:`cli._check_training_memory` of settings ``s`` for training, validation and test
    ``parts``, with the model and configuration they give."""
    n_obs = parts[0].shape[1]
    model, config = cli.build_model(s, n_obs), cli.train_config(s, n_obs)
    cli._check_training_memory(s, model, config, cli.Dataset(*([x] for x in parts), "test"), {})


def test_the_memory_estimate_of_the_readme_runs_is_small(monkeypatch):
    """The estimate refuses none of the README's runs anywhere: the default run, the ECG
    recipe (N = M = 5, L = 250, sequential) and windows of 10^4 steps need < 256 MiB."""
    needed = []
    monkeypatch.setattr(cli, "_check_memory", lambda n_bytes, fix: needed.append(n_bytes))
    for s, n_obs in (
        (cli.Settings(hidden_dim=200), 3),
        (cli.Settings(hidden_dim=250, method="sequential", alpha="0.3", n_bins=8), 5),
        (cli.Settings(hidden_dim=200, sequence_length=10_000), 3),
    ):
        _training_memory(s, [np.zeros((k, n_obs)) for k in (64_000, 16_000, 20_000)])
    assert len(needed) == 3 and max(needed) < 2**28


def test_the_free_run_estimates_count_the_scores_and_the_selection_batches(monkeypatch):
    """Validation runs are scored with ~6 float64 numbers an observation (4 runs of 200,000
    steps of Lorenz-63 peaked at 98 MB under tracemalloc; the estimate said 29 MB); selection
    runs are generated in batches (64 runs of 2e6 steps peaked at 192 MB; it said 1.2 GB)."""
    needed = []
    monkeypatch.setattr(cli, "_check_memory", lambda n_bytes, fix: needed.append(n_bytes))
    parts = [np.zeros((k, 3)) for k in (64_000, 16_000, 20_000)]
    s = cli.Settings(hidden_dim=16, validation_steps=200_000, validation_starts=4)
    _training_memory(replace(s, dtype="float32", selection_candidates=1), parts)
    assert 98e6 <= needed[-1] <= 1.5 * 98e6
    s = replace(s, validation_steps=1000, selection_steps=2_000_000, selection_starts=64)
    _training_memory(s, parts)
    assert needed[-1] == 2 * 2_000_000 * (3 * 4 + 3 * 12) + 64 * (8 + 3 * 8)


def test_data_key_selects_an_array_and_is_saved_with_the_run(tmp_path):
    x = models.generate("lorenz63", 1500, seed=3)
    np.savez(tmp_path / "both.npz", train=x, other=x[::-1] + 1)
    out = tmp_path / "run"
    tiny = [a for a in TINY if a not in ("--n-steps", "1500")]
    result = run(*tiny, "--data", tmp_path / "both.npz", "--data-key", "train", "--out", out)
    assert result.exit_code == 0, result.output
    args = json.loads((out / "args.json").read_text())
    assert (
        args["settings"]["data_key"] == "train"
        and "both.npz, array train (last" in args["data_source"]
    )
    result = run("evaluate", out)  # rebuilds the held-out test data from args.json
    assert result.exit_code == 0, result.output
    result = run("--out", out, "--resume", "-q", "--data-key", "other")
    _one_error_line(result, "--data-key other (the run's: train) would change them")
    # other data without a key: the key came from the run's args.json, not from a flag
    np.save(tmp_path / "x.npy", x)
    result = run("--out", out, "--resume", "-q", "--data", tmp_path / "x.npy")
    _one_error_line(
        result,
        f"--data {tmp_path / 'x.npy'} (the run's: {tmp_path / 'both.npz'}) would change them",
    )


def test_one_dimensional_data_with_the_default_latent_size_get_a_hint(tmp_path):
    np.save(tmp_path / "x.npy", models.generate("lorenz63", 1500, seed=3)[:, 0])  # 1-D: (T, 1)
    tiny = [a for a in TINY if a not in ("--n-steps", "1500")]
    hint = "warning: the data have 1 dimension and -M defaults to it"
    for extra, warned in (([], True), (["-M", "3"], False)):
        result = run(*tiny, "--data", tmp_path / "x.npy", *extra, "--out", tmp_path / str(warned))
        assert result.exit_code in (0, 1), result.output  # a 1-latent model may well fail
        assert (hint in result.output) == warned, result.output


def test_test_data_whose_header_names_other_columns_warn(tmp_path):
    """Columns are matched by position: a test file (or a second --data file) whose header
    lists the training data's names in another order warns, in training and in evaluate (the
    names are recorded in args.json); files without a header are not compared."""
    x = models.generate("lorenz63", 1500, seed=3)
    np.savetxt(tmp_path / "train.csv", x, delimiter=",", header="v,w,z", comments="")
    np.savetxt(tmp_path / "same.csv", x[::-1], delimiter=",", header="v,w,z", comments="")
    np.savetxt(tmp_path / "swapped.csv", x[:, [1, 0, 2]], delimiter=",", header="w,v,z",
               comments="")  # fmt: skip
    np.save(tmp_path / "bare.npy", x)
    tiny = [a for a in TINY if a not in ("--n-steps", "1500")]
    swapped = f"--test-data {tmp_path / 'swapped.csv'} names its columns w, v, z; the "
    result = run(*tiny, "--data", tmp_path / "train.csv", "--test-data", tmp_path / "swapped.csv",
                 "--out", tmp_path / "run")  # fmt: skip
    assert result.exit_code in (0, 1), result.output
    assert f"{swapped}training data's are v, w, z in another order: columns are matched" in (
        result.output
    )
    assert json.loads((tmp_path / "run" / "args.json").read_text())["data_columns"] == [
        "v", "w", "z"
    ]  # fmt: skip
    for test, warned in (("swapped.csv", True), ("same.csv", False), ("bare.npy", False)):
        result = run("evaluate", tmp_path / "run", "--test-data", tmp_path / test)
        assert ("names its columns" in result.output) == warned, result.output
    # a file of another width is refused for that alone, not first warned about its names
    np.savetxt(tmp_path / "narrow.csv", x[:, :2], delimiter=",", header="a,b", comments="")
    result = run("evaluate", tmp_path / "run", "--test-data", tmp_path / "narrow.csv")
    _one_error_line(result, f"--test-data {tmp_path / 'narrow.csv'} has 2 dimensions but the "
                    "model has 3.")  # fmt: skip
    result = run(*tiny, "--data", tmp_path / "train.csv", "--data", tmp_path / "swapped.csv",
                 "--out", tmp_path / "two")  # fmt: skip
    assert f"--data {tmp_path / 'swapped.csv'} names its columns w, v, z; --data " in (
        result.output
    )


def test_array_keys_and_data_files_are_given_once(tmp_path):
    """A repeated key would silently keep the last one (click's rule), a repeated --data
    file train and score one recording twice: both refused before anything is written. A
    test array of the training .npz under another key is not the training data: no
    warning."""
    x = models.generate("lorenz63", 1500, seed=3)
    both = tmp_path / "both.npz"
    np.savez(both, a=x, b=x[::-1] + 1)
    tiny = [a for a in TINY if a not in ("--n-steps", "1500")]
    out = tmp_path / "run"
    result = run(*tiny, "--data", both, "--data", both, "--data-key", "a", "--data-key", "b",
                 "--out", out)  # fmt: skip
    _one_error_line(result, "Invalid value for '--data-key': given 2 times (a, b); it takes one "
                    "value, give it once (it names the array of every --data .npz; to train on "
                    "several arrays of one .npz, save each to a file of its own")  # fmt: skip
    result = run("evaluate", out, "--test-data-key", "a", "--test-data-key", "b")
    _one_error_line(result, "Invalid value for '--test-data-key': given 2 times (a, b)")
    np.save(tmp_path / "x.npy", x)
    os.symlink(tmp_path / "x.npy", tmp_path / "y.npy")
    for second, also in [(tmp_path / "x.npy", ""), (tmp_path / "y.npy", " (also as --data ")]:
        result = run(*tiny, "--data", tmp_path / "x.npy", "--data", second, "--out", out)
        _one_error_line(result, f"--data {second} is given twice{also}")
        result = run(*tiny, "--data", both, "--data-key", "a", "--test-data", tmp_path / "x.npy",
                     "--test-data", second, "--out", out)  # fmt: skip
        also = also.replace("--data", "--test-data")
        _one_error_line(result, f"--test-data {second} is given twice{also}")
        assert "its recording would be scored twice" in result.output
    assert not out.exists()
    result = run(*tiny, "--data", both, "--data-key", "a", "--test-data", both,
                 "--test-data-key", "b", "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "is also a --data file" not in result.output
    for second in (tmp_path / "x.npy", tmp_path / "y.npy"):
        result = run("evaluate", out, "--test-data", tmp_path / "x.npy", "--test-data", second)
        _one_error_line(result, f"--test-data {second} is given twice")


# ------------------------------------------------------------------------------------------
# several recordings: a repeated --data (and --test-data)
# ------------------------------------------------------------------------------------------


def _recordings(folder, n=2, steps=1500):
    """``n`` Lorenz-63 recordings from other initial conditions saved as ``r1.npy``, ...;
    their paths and arrays."""
    paths, arrays = [], []
    for k in range(1, n + 1):
        x = models.generate("lorenz63", steps, seed=k)
        np.save(folder / f"r{k}.npy", x)
        paths.append(folder / f"r{k}.npy")
        arrays.append(x)
    return paths, arrays


@pytest.fixture(scope="module")
def several_run(tmp_path_factory):
    """A tiny run on two --data files: (the files, their arrays, the run folder, result)."""
    folder = tmp_path_factory.mktemp("several")
    paths, arrays = _recordings(folder)
    out = folder / "run"
    with pytest.MonkeyPatch.context() as patch:  # set up before idle_machine
        patch.setattr(cli, "machine_load", lambda: None)
        result = run(*TINY[2:], "--data", paths[0], "--data", paths[1], "--out", out)
    assert result.exit_code == 0, result.output
    return paths, arrays, out, result


def test_several_data_files_train_together_as_fit_on_their_parts(several_run):
    """Each file split as one is (1500 steps: 300 held out as test data, then 240 of the
    rest for validation); the model is fit's on the list of parts."""
    paths, arrays, out, result = several_run
    args = json.loads((out / "args.json").read_text())
    assert args["settings"]["data"] == [str(path) for path in paths]
    assert args["test_data_fingerprint"] == [cli.fingerprint(x[-300:]) for x in arrays]
    assert args["data_source"] == (
        f"files {paths[0]}, {paths[1]} (last 300 + 300 steps held out as test data)"
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["n_trajectories"] == 2 and metrics["test"]["n_measured"] == [299, 299]
    assert "test (2 test trajectories, 299 + 299 steps): D_stsp " in result.output
    s = cli.run_settings(out, "evaluate")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = autodiff.fit(
            cli.build_model(s, 3),
            [x[:960] for x in arrays],
            cli.train_config(s, 3),
            validation_data=[x[960:1200] for x in arrays],
        )
    trained = models.load(out / "model.npz")
    np.testing.assert_array_equal(trained.params, fitted.model.params)
    np.testing.assert_array_equal(trained.standardization[0], fitted.model.standardization[0])


def test_evaluate_rebuilds_the_test_tails_of_every_data_file(several_run, tmp_path):
    paths, _, run_dir, _ = several_run
    out = _copy_run((run_dir,), tmp_path)
    result = run("evaluate", out)
    assert result.exit_code == 0, result.output
    assert _line(result.output).endswith("(2 test trajectories, 299 + 299 steps)")
    scores = json.loads((out / "evaluation.json").read_text())
    trained = json.loads((out / "metrics.json").read_text())["test"]
    assert [scores[k] for k in ("dstsp", "dh", "pe")] == [trained[k] for k in ("dstsp", "dh", "pe")]
    original = paths[1].read_bytes()
    try:
        edited = np.load(paths[1])
        edited[-3] += 1.0  # inside the held-out tail of the second file
        np.save(paths[1], edited)
        _one_error_line(
            run("evaluate", out),
            f"the run's data file {paths[1]} changed since training: the test data it gives now "
            f"differ from those recorded in {out / 'args.json'}",
        )
        _one_error_line(
            run("--out", out, "--resume", "-e", "3"),
            f"--resume: the test data from {paths[1]} differ from those the run was started with",
        )
        edited[-3] = np.nan  # so that it no longer loads: no --test-data to blame
        np.save(paths[1], edited)
        _one_error_line(
            run("generate", out, "--starts", 2),
            f"the run's data files (recorded in {out / 'args.json'}) no longer load as in "
            "training: --data",
        )
        paths[1].unlink()
        _one_error_line(run("evaluate", out), f"the run's data file {paths[1]} (recorded in ")
    finally:
        paths[1].write_bytes(original)


def test_resume_needs_the_same_data_files_in_the_same_order(several_run, tmp_path):
    paths, _, run_dir, _ = several_run
    out = _copy_run((run_dir,), tmp_path)
    args = (out / "args.json").read_bytes()
    for files in ([paths[1], paths[0]], [paths[0]]):
        flags = [a for path in files for a in ("--data", path)]
        _one_error_line(
            run("--out", out, "--resume", "-q", *flags),
            f"--data {', '.join(map(str, files))} (the run's: {paths[0]}, {paths[1]}) would "
            "change them",
        )
        assert (out / "args.json").read_bytes() == args
    same = run("--out", out, "--resume", "-q", "-e", "3", "--data", paths[0], "--data", paths[1])
    assert same.exit_code == 0, same.output
    assert len((out / "history.csv").read_text().splitlines()) == 4
    assert "(2 test trajectories, 299 + 299 steps)" in same.output


def test_several_test_files_in_training_are_scored_together(tmp_path, monkeypatch):
    """A repeated --test-data: standardised with the model's mean and sd, warned about one
    by one, scored together, fingerprinted each and rebuilt by ``evaluate RUN``; the plots
    show the first."""
    (train,), _ = _recordings(tmp_path, n=1)
    test = models.generate("lorenz63", 800, seed=9)
    np.save(tmp_path / "t1.npy", test[:400])
    np.savez(tmp_path / "t2.npz", test=test[400:700])
    files = ["--test-data", tmp_path / "t1.npy", "--test-data", tmp_path / "t2.npz"]
    plotted = []
    monkeypatch.setattr(cli, "write_plots", lambda *a: plotted.append(a) or "plots: stub")
    out = tmp_path / "run"
    result = run(*TINY[2:], "--data", train, *files, "--out", out)
    assert result.exit_code == 0, result.output
    assert "test (2 test trajectories, 399 + 299 steps): D_stsp " in result.output
    args = json.loads((out / "args.json").read_text())
    assert args["settings"]["test_data"] == [str(tmp_path / "t1.npy"), str(tmp_path / "t2.npz")]
    assert args["test_data_fingerprint"] == [
        cli.fingerprint(test[:400]),
        cli.fingerprint(test[400:700]),
    ]
    (_, first, generated, title), = plotted  # fmt: skip
    assert first.shape == (399, 3) and generated.shape == (399, 3)
    assert title == "test data (first of 2)"
    evaluated = run("evaluate", out)
    assert evaluated.exit_code == 0, evaluated.output
    scores = json.loads((out / "evaluation.json").read_text())
    assert scores["dstsp"] == json.loads((out / "metrics.json").read_text())["test"]["dstsp"]
    np.savez(tmp_path / "t2.npz", test=test[401:701])
    _one_error_line(run("evaluate", out), f"the run's data file {tmp_path / 't2.npz'} changed")


def test_far_test_files_are_warned_about_one_by_one(capsys):
    x = models.generate("lorenz63", 1000, seed=3)
    mean, sd = x.mean(axis=0), x.std(axis=0)
    assert cli._warn_if_far_files(["a.npy", "b.npy"], [x, 10 * x], mean, sd)
    warned = capsys.readouterr().err.splitlines()
    assert len(warned) == 1 and warned[0].startswith(
        "parscan-train: warning: --test-data b.npy lies far from the training data"
    )
    assert not cli._warn_if_far_files(["a.npy"], [x], mean, sd)


@pytest.mark.filterwarnings("always::models.metrics.StateSpaceResolutionWarning")
@pytest.mark.filterwarnings("always::models.metrics.SpectrumResolutionWarning")
def test_validation_resolution_counts_the_runs_of_every_validation_part(capsys):
    """D_stsp: one run of validation_steps points from each part, against all of them; D_H:
    at most the shortest part's points."""
    x = models.generate("lorenz63", 600, seed=3)
    config = autodiff.TrainConfig(validation_steps=500)
    cli.warn_validation_resolution([x[:301], x[301:]], config)
    dstsp, dh = capsys.readouterr().err.splitlines()
    assert dstsp.startswith("parscan-train: warning: validation: binned D_stsp of 1000 ")
    assert dh.startswith("parscan-train: warning: validation: D_H of 298 points")


def test_data_files_in_a_config_file(tmp_path):
    paths = [str(tmp_path / name) for name in ("a.npy", "b.npy")]
    for path in paths:
        Path(path).touch()  # they must exist
    (tmp_path / "two.toml").write_text(f"data = {json.dumps(paths)}\n")
    (tmp_path / "one.json").write_text(json.dumps({"data": paths[:1], "test-data": paths}))
    assert cli.resolve_settings({"out": "x"}, str(tmp_path / "two.toml")).data == paths
    one = cli.resolve_settings({"out": "x"}, str(tmp_path / "one.json"))
    assert (one.data, one.test_data) == (paths[0], paths)  # a list of one file is that file
    for text, got in [("data = []", "[]"), ("data = [1]", "[1]"), ("data = 1", "1")]:
        (tmp_path / "bad.toml").write_text(text + "\n")
        with pytest.raises(cli.UserError, match=re.escape(
            f"data must be a string or a non-empty list of strings, got {got}."
        )):  # fmt: skip
            cli.resolve_settings({}, str(tmp_path / "bad.toml"))


def test_one_data_key_names_the_array_of_every_npz(tmp_path):
    _, (x, y) = _recordings(tmp_path)
    np.savez(tmp_path / "a.npz", train=x, other=x[:5])
    np.savez(tmp_path / "b.npz", train=y, other=y[:5])
    files = [str(tmp_path / "a.npz"), str(tmp_path / "b.npz")]
    s = cli.resolve_settings({"data": files, "data_key": "train", "sequence_length": 40}, None)
    data = cli.prepare_data(s)
    wanted = [x[:960], y[:960], x[-300:], y[-300:]]
    for got, want in zip(data.train_parts + data.test_parts, wanted, strict=True):
        np.testing.assert_array_equal(got, want)
    assert data.source.endswith(", array train (last 300 + 300 steps held out as test data)")


def test_several_data_files_are_refused_naming_the_file(tmp_path):
    (a, b), (x, y) = _recordings(tmp_path)
    np.save(tmp_path / "short.npy", y[:100])
    np.save(tmp_path / "flat.npy", y[:, :2])
    np.savez(tmp_path / "a.npz", train=x)
    flat_validation = y.copy()
    flat_validation[960:1200, 0] = 5.0  # the validation part of the second file
    np.save(tmp_path / "flat_validation.npy", flat_validation)
    np.save(tmp_path / "t_short.npy", y[:10])
    np.save(tmp_path / "t20.npy", y[:20])  # no test_fraction below 0.9 holds 21 of its steps
    out = tmp_path / "run"
    short, flat = tmp_path / "short.npy", tmp_path / "flat.npy"
    for flags, message in [
        (["--data", a, "--data", short], f"--data {short}: too few steps: the test data held out "
         "from --data (test_fraction 0.2, the default; a --config file sets it) needs at least "
         "21 of the 100 steps"),
        (["--data", a, "--data", tmp_path / "t20.npy"], "needs at least 21 of the 20 steps (0.2 "
         "of them is 4); provide at least 24 steps."),
        (["--data", a, "--data", b, "-T", 1000], f"--data {a}: too few steps: the training part "
         "has 960 steps (after holding out validation/test data) but --sequence-length 1000"),
        (["--data", a, "--data", flat], f"--data {flat} has 2 dimensions but --data {a} has 3; "
         "all --data files must record the same variables, in the same columns."),
        (["--data", tmp_path / "a.npz", "--data", b, "--data-key", "train"],
         f"--data-key names an array in an .npz file; --data {b} is not one, drop --data-key."),
        (["--data", a, "--data", tmp_path / "missing.npy"],
         f"--data: no such file {tmp_path / 'missing.npy'}."),
        (["--data", a, "--data", tmp_path / "flat_validation.npy"], "the validation part of "
         f"--data {tmp_path / 'flat_validation.npy'} is constant in column(s) [0]"),
        (["--data", a, "--test-data", b, "--test-data", flat],
         f"--test-data {flat} has 2 dimensions but the training data has 3."),
        (["--data", a, "--test-data", b, "--test-data", tmp_path / "t_short.npy"],
         f"--test-data {tmp_path / 't_short.npy'} has 10 steps; the evaluation's PE(20) needs"),
    ]:  # fmt: skip
        _one_error_line(run(*TINY[2:], *flags, "--out", out), message)
        assert not out.exists()


def test_hidden_dim_default_depends_on_the_model():
    assert cli.resolve_settings({}, None).hidden_dim == cli.DEFAULT_HIDDEN_DIM["clipped-shplrnn"]
    assert cli.resolve_settings({"model": "linear-ssm"}, None).hidden_dim == 100
    assert cli.resolve_settings({"model": "alrnn"}, None).hidden_dim is None
    assert cli.resolve_settings({"model": "shplrnn", "hidden_dim": 7}, None).hidden_dim == 7


def test_config_choices_are_case_insensitive_like_the_flags(tmp_path):
    config = tmp_path / "run.json"
    config.write_text('{"alpha": "AUTO", "model": "ALRNN", "lr-start": 1}')
    settings = cli.resolve_settings({}, str(config))
    assert (settings.alpha, settings.model, settings.lr_start) == ("auto", "alrnn", 1.0)


def test_unknown_config_settings_are_named_as_written_with_the_setting_meant(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('hiden-dim = 30\nepocs = 3\ncolour = "blue"\n')
    named = (r"unknown setting\(s\) colour, epocs \(did you mean epochs\?\), hiden-dim \(did "
             r"you mean hidden-dim\?\); known: data, ")  # fmt: skip
    with pytest.raises(cli.UserError, match=named):
        cli.resolve_settings({}, str(config))


def _copy_run(finished_run, tmp_path):
    out = tmp_path / "run copy"
    shutil.copytree(finished_run[0], out)
    return out


def _line(output: str, start: str = "D_stsp ") -> str:
    """The one line of ``output`` that begins with ``start`` (default: evaluate's score
    line; a note on free runs at rest may follow it)."""
    lines = [line for line in output.splitlines() if line.startswith(start)]
    assert len(lines) == 1, output
    return lines[0]


def _read_only(*args, **kwargs):
    """``tempfile.mkstemp`` in a folder no file can be written in."""
    raise OSError(errno.EROFS, "Read-only file system")


def _not_called(*args, **kwargs):
    raise AssertionError("the work ran before --out was checked")


def _one_error_line(result, message):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("parscan-train: error:"), result.output
    assert message in lines[0]


def test_a_path_too_long_to_look_at_is_one_error_line(finished_run, tmp_path, monkeypatch):
    """Path.exists raises ENAMETOOLONG (Python 3.11 ignores only ENOENT and a few others):
    it was a traceback; and a run that cannot start leaves no folder behind."""
    monkeypatch.chdir(tmp_path)
    folder, _ = finished_run
    long = "x" * 300
    _one_error_line(run(*TINY, "--out", long), f"--out {long}: File name too long.")
    _one_error_line(run("evaluate", long), f"{long}: File name too long.")
    _one_error_line(run("evaluate", folder, "--out", f"{long}.json"), "File name too long")
    _one_error_line(run("generate", folder, "--out", f"{long}.npy"), "File name too long")
    _one_error_line(run(*TINY, "--out", f"new/{long}/run"), "cannot write to --out new/")
    assert not any(tmp_path.iterdir())


def test_a_resume_reads_alpha_as_a_number():
    """args.json records --alpha as written: --alpha 0.3 resumes a run started with 0.30."""
    for same in ("0.3", "3e-1", "0.300"):
        cli._check_resume_changes({"alpha": same}, {"alpha": "0.30"}, Path("run"), {})
    cli._check_resume_changes({"alpha": "auto"}, {"alpha": "auto"}, Path("run"), {})
    for other in ("0.4", "auto"):
        with pytest.raises(cli.UserError, match=r"--alpha .* \(the run's: 0\.30\) would change"):
            cli._check_resume_changes({"alpha": other}, {"alpha": "0.30"}, Path("run"), {})


def test_an_uncreatable_default_run_folder_does_not_blame_out(tmp_path, monkeypatch):
    """Without --out the run folder is runs/...: the error named an --out never given."""
    monkeypatch.chdir(tmp_path)

    def denied(path):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(cli, "_new_folder", denied)
    _one_error_line(
        run(*TINY),
        "error: cannot create the run folder runs/lorenz63-clipped-shplrnn-",
    )
    assert "Permission denied; pass --out FOLDER somewhere writable." in run(*TINY).output
    # a folder made under another name (runs/r taken: runs/r-2) is removed too
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "r").mkdir(parents=True)

    def full(folder):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cli, "_check_writable", full)
    with pytest.raises(cli.UserError, match=r"cannot create the run folder runs/r-2: No space"):
        cli.create_out_dir(Path("runs/r"), new=True)
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["r"]
    # a folder named through a missing one (a/.. is this folder) is no folder made for it
    (tmp_path / "runs" / "r" / "checkpoints").mkdir()
    with pytest.raises(cli.UserError, match=r"cannot write to --out runs/r/a/\.\.: No space"):
        cli.create_out_dir(Path("runs/r/a/.."))
    assert [p.name for p in (tmp_path / "runs" / "r").iterdir()] == ["checkpoints"]


def test_refused_resume_leaves_the_run_resumable(finished_run, tmp_path):
    out = _copy_run(finished_run, tmp_path)
    args = (out / "args.json").read_bytes()
    checkpoint = out / "checkpoints" / "checkpoint.npz"
    for flags, message in [
        (["-B", "8"], "--batch-size 8 (the run's: 16) would change them"),
        (
            ["-B", "8"],
            "(only --epochs, --backend, --threads, validation_interval, selection_starts, "
            "selection_steps, checkpoint_interval and the output flags may change)",
        ),
        (["--model", "shplrnn"], "--model shplrnn (the run's: clipped-shplrnn)"),
        (["--system", "rossler", "--noise", "0.3"], "--system rossler (the run's: lorenz63)"),
        (["--test-data", tmp_path / "other.npy"], "--test-data"),
        (["--seed", "5"], "--seed 5 (the run's: 0)"),
        (["--n-bins", "8"], "--n-bins 8 (the run's: 30)"),
        (["-e", "1"], "--resume: the checkpoint at "),
        (["-e", "1"], "has trained 2 epochs, more than the 1 asked for; resume with 2 epochs or"),
    ]:
        _one_error_line(run("--out", out, "--resume", "-q", *flags), message)
        assert (out / "args.json").read_bytes() == args
    good = checkpoint.read_bytes()
    checkpoint.write_bytes(good[:2000])
    _one_error_line(run("--out", out, "--resume", "-q"), "not a readable .npz")
    checkpoint.write_bytes(good)
    # the output flags are the command's: -v on a run started with -q
    result = run("--out", out, "--resume", "-v", "-e", "3")
    assert result.exit_code == 0, result.output
    assert "epoch 3/3" in result.output
    assert len((out / "history.csv").read_text().splitlines()) == 4
    saved = json.loads((out / "args.json").read_text())
    assert saved["command"] == json.loads(args)["command"] and len(saved["resumed_by"]) == 1


def test_resume_refuses_changed_test_data_and_keeps_the_record(tmp_path):
    """The test data of a file-based run are part of the run: a resume with a test file (or
    the held-out tail of --data) that changed since is refused, and args.json keeps the
    fingerprint that ``evaluate RUN`` checks against."""
    x = models.generate("lorenz63", 1600, seed=3)
    np.save(tmp_path / "train.npy", x[:1000])
    np.save(tmp_path / "test.npy", x[1000:])
    np.save(tmp_path / "all.npy", x)
    for data, changed in [
        (["--data", tmp_path / "train.npy", "--test-data", tmp_path / "test.npy"], "test.npy"),
        (["--data", tmp_path / "all.npy"], "all.npy"),
    ]:
        out = tmp_path / f"run-{changed}"
        first = run(*TINY[2:], *data, "--out", out)
        assert first.exit_code == 0, first.output
        args = (out / "args.json").read_bytes()
        edited = np.load(tmp_path / changed)
        edited[-3] += 1.0  # inside the test data (also the held-out tail of all.npy)
        np.save(tmp_path / changed, edited)
        _one_error_line(
            run("--out", out, "--resume", "-e", "3"),
            f"--resume: the test data from {tmp_path / changed} differ from those the run was "
            "started with",
        )
        assert (out / "args.json").read_bytes() == args
        _one_error_line(run("evaluate", out), "changed since training")


def test_failure_on_test_data_in_other_units_names_the_units_first(tmp_path):
    """Test data found far from the training data (another scale): the failed score is
    explained by that first, before the training settings worth trying."""
    x = models.generate("lorenz63", 1600, seed=4)
    np.save(tmp_path / "train.npy", x[:1000])
    np.save(tmp_path / "shifted.npy", x[1000:] + 500)  # another origin: other units
    out = tmp_path / "run"
    result = run(*TINY[2:], "--data", tmp_path / "train.npy", "--test-data",
                 tmp_path / "shifted.npy", "--out", out)  # fmt: skip
    assert result.exit_code == 1, result.output
    assert (
        "not measurable (out_of_box): no generated point lies inside the test data's D_stsp "
        "box. --test-data lies far from the training data (warned above); if the two are in "
        "different units, the score measures that, not the model: score it on test data in "
        f"the training data's units (parscan-train evaluate {out} --test-data FILE). "
        "Otherwise, try --"
    ) in result.output
    again = run("evaluate", out, "--test-data", tmp_path / "shifted.npy")
    assert again.exit_code == 1, again.output
    verdict = again.stderr.splitlines()[-1]  # after the warning that the data lie far away
    assert verdict.startswith("parscan-train: not measurable (out_of_box): ")
    assert verdict.endswith(
        "box. --test-data lies far from the training data (warned above); if the two are in "
        "different units, the score measures that, not the model: pass test data in the "
        "training data's units."
    )


def test_a_damaged_model_file_is_named_by_its_path(finished_run, tmp_path):
    out = _copy_run(finished_run, tmp_path)
    (out / "model.npz").write_text("garbage")
    for command in ("evaluate", "generate"):
        _one_error_line(
            run(command, out),
            f"parscan-train: error: {out / 'model.npz'}: it is not a NumPy file (it looks like "
            "text)",
        )


def test_a_resume_that_trains_on_warns_of_the_results_made_from_the_model_before(
    finished_run, tmp_path
):
    """evaluation.json and generated.npy in the run folder come from its model.npz: a
    resume that replaces that model with another warns that they are outdated (naming the
    commands that remake them); one that keeps the model (nothing left to train) does not."""
    out = _copy_run(finished_run, tmp_path)
    assert run("evaluate", out).exit_code == 0
    assert run("generate", out, "--n-steps", "50").exit_code == 0
    result = run("--out", out, "--resume", "-q", "-e", "3")
    assert result.exit_code in (0, 1), result.output
    assert (
        f"evaluation.json and generated.npy in {out} were made from the model before this "
        f"resume, which model.npz no longer holds; make them again with parscan-train evaluate "
    ) in result.output
    again = run("--out", out, "--resume", "-q", "-e", "3")
    assert again.exit_code in (0, 1), again.output
    assert "were made from the model before" not in again.output


def test_a_resume_stopped_after_replacing_the_model_has_warned_and_keeps_no_old_plots(
    finished_run, tmp_path, monkeypatch
):
    """The warning comes as model.npz is replaced (a resume stopped before its summary was
    silent, and the next one found nothing changed); the plots of the model before are
    removed, so a run whose plots are skipped (no matplotlib) keeps none that lie."""
    out = _copy_run(finished_run, tmp_path)
    assert run("evaluate", out).exit_code == 0
    for name in cli.PLOT_FILES:  # also without matplotlib, which wrote none
        (out / name).write_bytes(b"the plot of the model before")

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "write_plots", stopped)
    result = run("--out", out, "--resume", "-q", "-e", "3")
    assert result.exit_code == 130, result.output
    assert (
        f"evaluation.json in {out} was made from the model before this resume, which model.npz "
        f"no longer holds; make it again with parscan-train evaluate {shlex.quote(str(out))}."
    ) in result.output
    assert not (out / "attractor.png").exists() and not (out / "spectrum.png").exists()


def test_evaluate_mistakes_exit_2(finished_run, tmp_path):
    out = _copy_run(finished_run, tmp_path)
    (tmp_path / "no-run").mkdir()
    _one_error_line(run("evaluate", out, "--out", tmp_path / "no" / "x.json"), "no folder")
    _one_error_line(run("evaluate", out, "--out", tmp_path), "is a folder")
    _one_error_line(run("evaluate", out, "--test-data-key", "x"), "add --test-data or drop")
    _one_error_line(run("evaluate", out, "--out", ""), "--out must not be empty")
    _one_error_line(run("evaluate", tmp_path / "no-run"), "no-run is a folder without model.npz")
    _one_error_line(run("evaluate", tmp_path / "gone"), "gone: no such run folder or model file")
    _one_error_line(run("evaluate", out, "--threads", 0), "--threads must be >= 1, got 0")
    _one_error_line(run("evaluate", out, "--n-starts", 0), "--n-starts must be >= 1, got 0")
    # models.evaluate's refusals name the options, not its arguments
    for option, value, message in (
        ("--n-starts", 1501, "--n-starts (1501) must not exceed the number of test points (1500)."),
        ("--smoothing", "1e9", "--smoothing=1e+09 frequency bins is wider than the whole"),
        ("--smoothing", -1, "--smoothing must be finite and >= 0; got -1.0."),
        ("--n-bins", 0, "--n-bins must be >= 1; got 0."),
        ("--n-bins", 10**105, f"--n-bins**N = {10**105}**3 is too large for binning; lower "
         "--n-bins."),
        ("--pe-steps", 0, "--pe-steps must be >= 1; got 0."),
        ("--pe-steps", 1500, "the test data have 1500 time steps; PE needs at least --pe-steps + 1 "
         "= 1501 (it predicts x_test[t + 1500] from x_test[t]). Pass a longer test trajectory or a "
         "smaller --pe-steps."),
        ("--transient", -1, "--transient must be >= 0; got -1."),
        ("--transient", 1498, "D_H needs at least 2 measured steps of the free run; got the free "
         "run's length less --transient: 1499 - 1498 = 1. Lower --transient or pass longer "
         "--test-data."),
        ("--transient", 1499, "--transient (1499) must be smaller than the free run's length "
         "(1499)."),
    ):  # fmt: skip
        _one_error_line(run("evaluate", out, option, value), f"parscan-train: error: {message}")
    used = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli, "set_threads", lambda n: used.append(n) or n)
        threaded = run("evaluate", out, "--threads", 1)
    assert threaded.exit_code == 0 and threaded.output == run("evaluate", out).output
    assert used == [1]
    (out / "args.json").write_text('{"settings": {"colour": 1}}')
    _one_error_line(run("evaluate", out), "unknown setting(s) colour")
    (out / "args.json").write_text("{")
    _one_error_line(run("evaluate", out), f"evaluate: {out / 'args.json'} is missing or unreadable")
    _one_error_line(run("generate", out), f"generate: {out / 'args.json'} is missing or unreadable")
    (out / "args.json").unlink()  # a folder with a model but no record of its test data
    _one_error_line(
        run("evaluate", out),
        f"{out / 'args.json'} is missing, so the run's test data cannot be rebuilt: pass "
        "--test-data.",
    )
    (out / "model.npz").unlink()  # an interrupted run: a checkpoint but no model yet
    _one_error_line(run("evaluate", out), "has no model.npz: the run did not finish. Continue")


def test_a_model_file_is_scored_when_the_args_json_beside_it_is_damaged(finished_run, tmp_path):
    """The run's args.json is read beside its model.npz only for the test-data warnings: a
    damaged one skips them (it refused the model file, exit 2), while the run folder as the
    target still needs it."""
    out = _copy_run(finished_run, tmp_path)
    np.save(tmp_path / "test.npy", cli.run_test_data(out, "evaluate")[0])
    (out / "args.json").write_text("{")
    result = run("evaluate", out / "model.npz", "--test-data", tmp_path / "test.npy")
    assert result.exit_code == 0, result.output
    _one_error_line(run("evaluate", out, "--test-data", tmp_path / "test.npy"), "unreadable")


def test_evaluate_out_is_a_json_file_that_replaces_nothing_it_reads(
    finished_run, tmp_path, monkeypatch
):
    """``evaluate --out`` is refused, leaving every file as it was, when it is a file of the
    run (model, checkpoint, settings, metrics, history, plots; also with the run's model.npz
    as the target) or a --test-data file, when it is not .json, and -- before anything is
    scored -- when its folder takes no new file."""
    out = _copy_run(finished_run, tmp_path)
    np.save(tmp_path / "test.npy", cli.run_test_data(out, "evaluate")[0])
    files = [path for path in [*out.rglob("*"), tmp_path / "test.npy"] if path.is_file()]
    before = {path: path.read_bytes() for path in files}
    for name, what in cli.RUN_FILES.items():
        if (out / name).is_file():
            _one_error_line(
                run("evaluate", out, "--out", out / name),
                f"--out {out / name} would replace {what}; choose another file.",
            )
    test = ["--test-data", tmp_path / "test.npy"]
    for target, destination, message in (
        (out / "model.npz", out / "model.npz", "would replace the run's model"),
        (out / "model.npz", out / "args.json", "would replace the run's settings (args.json)"),
        (out, tmp_path / "test.npy", f"would replace the --test-data file {tmp_path / 'test.npy'}"),
        (out, tmp_path / "scores.npy", "write .json, not '.npy'"),
    ):
        _one_error_line(run("evaluate", target, *test, "--out", destination), message)
    other = _copy_run(finished_run, tmp_path / "other")  # another run's evaluate/generate
    for name, command in cli.DERIVED_RESULTS.items():  # results (written over before)
        (other / name).write_bytes(b"kept")
        _one_error_line(
            run(command, out, "--out", other / name),
            f"--out {other / name} would replace the run's {command} results in {other}; "
            "choose another file.",
        )
        assert (other / name).read_bytes() == b"kept"
    with monkeypatch.context() as patch:  # a folder no file can be written in, found first
        patch.setattr(tempfile, "mkstemp", _read_only)
        patch.setattr(cli, "score_test", _not_called)
        for given, destination in (
            ([], out / "evaluation.json"),
            (["--out", tmp_path / "s.json"], tmp_path / "s.json"),
        ):
            _one_error_line(
                run("evaluate", out, *given),
                f"cannot write the JSON file {destination}: Read-only file system; choose "
                "another --out.",
            )
    assert {path: path.read_bytes() for path in files} == before
    assert run("evaluate", out, "--out", tmp_path / "scores.JSON").exit_code == 0
    assert json.loads((tmp_path / "scores.JSON").read_text())["status"] == "ok"


def test_state_space_model_logs_without_alpha(tmp_path):
    tiny = [a for a in TINY if a != "-q"]
    result = run(*tiny, "--model", "linear-ssm", "-v", "--out", tmp_path / "ssm")
    assert result.exit_code in (0, 1), result.output
    epochs = [line for line in result.output.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 2 and not any("alpha" in line for line in epochs)


def test_unmeasurable_test_run_exits_1_and_names_the_failure(tmp_path, monkeypatch):
    failure = "the 20-step prediction (PE) from test point 3 leaves 1000 data ranges at step 9"

    def pe_diverged(model, x_test, **kwargs):
        keys = ("dstsp", "dh", "pe")
        return {"status": "diverged", "message": failure,
                "n_steps": len(x_test) - 1, "n_measured": len(x_test) - 1,
                "at_rest": None, **dict.fromkeys(keys)}  # fmt: skip

    plotted = []
    monkeypatch.setattr(models, "evaluate", pe_diverged)
    monkeypatch.setattr(cli, "write_plots", lambda *a: plotted.append(a) or "plots: stub")
    result = run(*TINY, "--out", tmp_path / "run", "--alpha", "0.3", "--dtype", "float64")
    assert result.exit_code == 1, result.output
    assert f"test (1499 steps): not measurable (diverged): {failure}\n" in result.output
    assert "does not reconstruct the system; its test evaluation is not measurable" in (
        result.output
    )
    verdicts = [line for line in result.output.splitlines() if "not measurable" in line]
    assert len(verdicts) == 2  # the score line and the failure
    assert not any("free run" in line for line in verdicts)  # PE failed, not the free run
    assert "--alpha auto" in result.output and "--dtype float64" not in result.output
    assert (tmp_path / "run" / "metrics.json").is_file()
    # the free run itself is finite: it is plotted all the same
    assert len(plotted) == 1 and np.isfinite(plotted[0][2]).all(), result.output
    assert "plots: stub" in result.output


def test_a_resume_names_its_data_by_any_spelling_and_a_changed_file_by_its_part(
    tmp_path, monkeypatch
):
    """The run's --data file under another spelling (../d/x.npy) resumes the run (it was a
    change); a changed file is named by its part and file, not by fit's validation_data;
    the Newton columns of a sequential run's history are empty (fit records 0)."""
    x = models.generate("lorenz63", 1500, seed=3)
    (tmp_path / "d").mkdir()
    np.save(tmp_path / "d" / "x.npy", x)
    monkeypatch.chdir(tmp_path / "d")
    args = [*TINY[2:], "--method", "sequential", "--alpha", "0.3", "--out", "run"]
    assert run(*args, "--data", "x.npy").exit_code == 0
    with open(tmp_path / "d" / "run" / "history.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [row["newton_iters_mean"] for row in rows] == ["", ""]
    result = run("--out", "run", "--resume", "-q", "-e", "3", "--data", "../d/x.npy")
    assert result.exit_code == 0, result.output
    changed = x.copy()
    changed[1100] += 1.0  # in the validation part (rows 960-1199; the last 300 are test data)
    np.save(tmp_path / "d" / "x.npy", changed)
    _one_error_line(
        run("--out", "run", "--resume", "-q", "-e", "4"),
        f"--resume: the validation part of --data {tmp_path / 'd' / 'x.npy'} differs from the "
        f"validation part of --data {tmp_path / 'd' / 'x.npy'} of the run in ",
    )


def test_settings_mistakes_are_reported_together_and_once(tmp_path):
    """A missing file comes with the other problems of the line (the generator settings
    stopped the checks before it), an unknown --system with them too; test_fraction where
    nothing is held out of --data, and a second --config, are refused (both were ignored)."""
    missing = tmp_path / "nonexist.npy"
    _one_error_line(
        run("--data", missing, "--n-steps", "100", "-T", "0"),
        f"--data: no such file {missing}; --n-steps: these settings generate data and do not "
        "apply with --data; drop it;",
    )
    result = run("--system", "nope", "-e", "0")
    _one_error_line(result, "--system nope: unknown system; known: lorenz63")
    assert "--epochs" in result.output or "-e" in result.output
    config = tmp_path / "run.toml"
    config.write_text("test_fraction = 0.5\n")
    x = models.generate("lorenz63", 1500, seed=3)
    np.save(tmp_path / "x.npy", x)
    for extra, instead in (
        (["--data", tmp_path / "x.npy", "--test-data", tmp_path / "x.npy"], "--test-data gives"),
        (TINY[:2], "--system generates it"),
    ):
        _one_error_line(
            run(*TINY[2:], *extra, "--config", config, "--out", tmp_path / "out"),
            f"test_fraction 0.5 (test_fraction in --config {config}): it holds test data out of "
            f"--data, and {instead}",
        )
    _one_error_line(
        run(*TINY, "--config", config, "--config", config),
        "Invalid value for '--config': given 2 times",
    )
    assert not (tmp_path / "out").exists()


def test_data_paths_are_stored_absolute(tmp_path, monkeypatch):
    x = models.generate("lorenz63", 1500, seed=3)
    np.save(tmp_path / "x.npy", x)
    monkeypatch.chdir(tmp_path)
    result = run(*TINY[2:], "--data", "x.npy", "--out", "run")
    assert result.exit_code == 0, result.output
    args_file = tmp_path / "run" / "args.json"
    args = json.loads(args_file.read_text())
    assert args["settings"]["data"] == str(tmp_path / "x.npy")
    # the generator settings did not apply; the held-out test data are fingerprinted
    assert [args["settings"][name] for name in ("system", "n_steps", "noise")] == [None] * 3
    assert args["test_data_fingerprint"] == cli.fingerprint(x[-300:])
    monkeypatch.chdir("/")  # the run is found, and its data too, from anywhere
    assert run("evaluate", tmp_path / "run").exit_code == 0
    result = run("--out", tmp_path / "run", "--resume", "-q", "-e", "3")
    assert result.exit_code == 0, result.output
    _one_error_line(
        run("--out", tmp_path / "run", "--resume", "-q", "--noise", "0.1"),
        "--noise: these settings generate data and do not apply with --data",
    )
    # a run written before: generator settings recorded, no fingerprint; it still resumes
    args = json.loads(args_file.read_text())
    args["settings"].update(system="lorenz63", n_steps=100_000, noise=0.05)
    del args["test_data_fingerprint"]
    args_file.write_text(json.dumps(args))
    result = run("--out", tmp_path / "run", "--resume", "-q", "-e", "4")
    assert result.exit_code == 0, result.output
    assert json.loads(args_file.read_text())["settings"]["system"] is None
    # other data in the run's file: refused; without a fingerprint (an old run): scored
    x[-5, 0] += 1e-3
    np.save(tmp_path / "x.npy", x)
    _one_error_line(
        run("evaluate", tmp_path / "run"),
        f"the run's data file {tmp_path / 'x.npy'} changed since training: the test data it "
        f"gives now differ from those recorded in {args_file} (shape, SHA-256); pass "
        "--test-data FILE to score other data.",
    )
    args = json.loads(args_file.read_text())
    del args["test_data_fingerprint"]
    args_file.write_text(json.dumps(args))
    assert run("evaluate", tmp_path / "run").exit_code == 0
    (tmp_path / "x.npy").unlink()
    _one_error_line(
        run("evaluate", tmp_path / "run"),
        f"the run's data file {tmp_path / 'x.npy'} (recorded in {args_file}) is missing; pass "
        "--test-data FILE to score other data.",
    )


def test_evaluate_exits_1_when_the_free_run_fails(finished_run, tmp_path, monkeypatch):
    out = _copy_run(finished_run, tmp_path)

    def out_of_box(model, x_test, **kwargs):
        keys = ("dstsp", "dh", "pe")
        return {"status": "out_of_box", "message": "no generated point lies inside the box",
                "n_steps": len(x_test) - 1, "n_measured": len(x_test) - 1,
                "at_rest": None, **dict.fromkeys(keys)}  # fmt: skip

    monkeypatch.setattr(models, "evaluate", out_of_box)
    result = run("evaluate", out)
    assert result.exit_code == 1, result.output
    assert result.stderr == (
        "parscan-train: not measurable (out_of_box): no generated point lies inside the box\n"
    )
    assert json.loads((out / "evaluation.json").read_text())["status"] == "out_of_box"


def test_the_failure_line_of_a_state_space_model_names_no_alpha():
    """An SSM's TrainingDivergedError has alpha None (no GTF): the line leaves it out."""
    from autodiff.train import TrainingDivergedError

    exc = TrainingDivergedError(streak=2, reason="the loss is not finite", epoch=1, batch=2,
                                alpha=None, lr=1e30, params=np.zeros(3), checkpoint=None,
                                remedies={}, clipped=True)  # fmt: skip
    line = cli._diverged_message(autodiff.TrainConfig(), exc)
    assert "in epoch 1 with learning rate 1e+30. No checkpoint" in line and "alpha" not in line


def test_summary_says_when_no_validation_run_was_measurable(capsys):
    test = {
        "status": "ok",
        "message": "",
        "n_steps": 99,
        "n_measured": 99,
        "dstsp": 1.0,
        "dh": 0.5,
        "pe": 0.1,
    }
    summary = {
        "test": test,
        "best_epoch": 4,
        "validation": {"dstsp": None, "dh": None, "score": float("inf"), "status": "diverged"},
        "final_loss": 0.2,
        "newton_iters_mean": 3.0,
        "alpha": None,
        "train_seconds": 0.5,
        "wall_seconds": 1.0,
        "selection": None,
    }
    cli._print_summary(Path("runs/x"), summary, "plots skipped")
    text = capsys.readouterr().out
    assert "no validation free run was measurable (last: diverged); kept epoch 4" in text
    assert "alpha" not in text and "final loss 0.2 " in text
    cli._print_summary(Path("runs/x"), {**summary, "final_loss": 0.00015209}, "plots skipped")
    assert "final loss 0.0001521 " in capsys.readouterr().out  # as the epoch lines (0.000)


def test_summary_says_when_the_best_validated_epoch_was_passed_over():
    candidates = [
        {"epoch": 144, "score": 1.24, "at_rest": 10},
        {"epoch": 118, "score": 1.32, "at_rest": 1},
    ]
    selection = {"starts": 16, "steps": 50000, "candidates": candidates}
    assert cli._passed_over(selection, 118) == (
        "the best-validated epoch 144 was passed over: 10 of 16 free runs of 50000 steps came "
        "to rest on a fixed point (a spurious attractor); epoch 118's: 1"
    )
    assert cli._passed_over(selection, 144) is None and cli._passed_over(None, 3) is None
    candidates[0]["blown_up"], candidates[1]["blown_up"] = 4, 0
    assert cli._passed_over(selection, 118) == (
        "the best-validated epoch 144 was passed over: 10 of 16 free runs of 50000 steps came "
        "to rest on a fixed point (a spurious attractor) and 4 blew up (NaN/inf, or beyond 1000 "
        "data ranges); epoch 118's: 1 and 0"
    )


def test_diverged_message_names_the_checkpoint_state_and_new_settings():
    from autodiff import TrainingDivergedError
    from autodiff.config import new_run_remedies

    s = cli.Settings(alpha_method="param_bound", jacobian="diag", dtype="float64")
    config = cli.train_config(s, 3)
    remedies = new_run_remedies(config, 0.25, True)
    exc = TrainingDivergedError(streak=20, reason="deer not converged", epoch=3, batch=7,
                                alpha=0.25, lr=3e-3, params=None, checkpoint=None,
                                remedies=remedies, clipped=False)  # fmt: skip
    text = cli._diverged_message(config, exc)
    assert "20 consecutive steps were rejected (last: deer not converged) in epoch 3" in text
    assert "No checkpoint was written yet (the first is written after epoch 10)" in text
    short = cli.train_config(replace(s, epochs=4), 3)
    assert "(the first is written after epoch 4)" in cli._diverged_message(short, exc)
    assert "--jacobian full" in text and "--lr-start 0.002" in text
    assert "--alpha-method" not in text and "--dtype" not in text


@pytest.mark.parametrize("quiet", [False, True])
def test_warnings_during_training_are_one_line_once_per_kind(quiet):
    from parscan import GTFGuaranteeWarning

    stream = io.StringIO()
    progress = cli.Progress(2, quiet=quiet, verbose=False, stream=stream)
    for n in (3, 4):
        progress.show_warning(f"partial forcing (n_forced={n})", GTFGuaranteeWarning, "f.py", 1)
    progress.show_warning("other", RuntimeWarning, "f.py", 2)
    assert stream.getvalue().splitlines() == [
        "parscan-train: warning: partial forcing (n_forced=3) (shown once)",
        "parscan-train: warning: other (shown once)",
    ]


def test_the_bar_says_it_is_starting_until_the_first_step_replaces_it():
    from autodiff.train import StepInfo

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    progress = cli.Progress(2, quiet=False, verbose=False, stream=stream)
    progress.start()
    assert stream.getvalue() == f"\r[{'.' * 24}] starting ({cli.FIRST_RUN_NOTE})"
    step = StepInfo(0, 0, 0, 4, 0.5, 0.0, 0.1, 1e-3, 5, 5.0, 1.0, True, "", 0, 0.1, 10.0)
    progress(step)
    drawn = stream.getvalue().split("\r")[-1]  # the line cleared before the bar is drawn
    assert drawn.startswith("\033[K[######") and "epoch 1/2 loss 0.5 alpha 0.100" in drawn
    quiet, piped = Terminal(), io.StringIO()
    cli.Progress(2, quiet=True, verbose=False, stream=quiet).start()
    cli.Progress(2, quiet=False, verbose=False, stream=piped).start()
    assert quiet.getvalue() == piped.getvalue() == ""


def test_epoch_lines_say_why_validation_was_not_measured():
    from autodiff.train import EpochInfo

    stream = io.StringIO()
    progress = cli.Progress(2, quiet=False, verbose=True, gtf=False, newton=False, stream=stream)
    record = {"epoch": 1, "loss": 0.5, "time": 1.0, "val_dstsp": None, "val_dh": None}
    progress(EpochInfo({**record, "val_score": math.inf, "val_status": "non_finite"}, 1, None))
    progress(EpochInfo({**record, "epoch": 2, "val_score": 0.5, "val_status": "ok",
                        "val_dstsp": 0.25, "val_dh": 0.125}, 2, None))  # fmt: skip
    progress(EpochInfo({**record, "epoch": 2, "sequential_steps": 3}, 1, None))
    assert stream.getvalue().splitlines() == [
        "epoch 1/2  loss 0.5  1.0s  val not measured (free run non-finite)",
        "epoch 2/2  loss 0.5  1.0s  val D_stsp 0.250 D_H 0.125",
        "epoch 2/2  loss 0.5  sequential 3  1.0s",
    ]


def test_suggestions_skip_more_alpha_when_fully_forced():
    from autodiff.config import new_run_remedies

    def suggestions(s, alpha):
        gtf = s.model not in cli.SSM_NAMES
        return cli._suggestions(new_run_remedies(cli.train_config(s, 3), alpha, gtf))

    s = cli.Settings()
    assert "--alpha-method sup (a larger alpha)" in suggestions(s, 0.3)
    assert "--alpha" not in suggestions(s, 1.0)
    assert "--alpha auto" in suggestions(cli.Settings(alpha="0.2"), 0.2)
    assert suggestions(cli.Settings(model="linear-ssm"), None) == (
        "Try --lr-start 0.002, --dtype float64."
    )
    constant = cli.Settings(model="linear-ssm", lr_start=3e-3, lr_end=3e-3)
    assert suggestions(constant, None) == "Try --lr-start 0.001, --lr-end 0.001, --dtype float64."


@pytest.mark.parametrize(
    ("variable", "message"),
    [
        ("PARSCAN_THREADS=0", "environment variable PARSCAN_THREADS='0' must be a positive"),
        ("PARSCAN_CACHE=maybe", "environment variable PARSCAN_CACHE='maybe' must be 0 or 1."),
        ("NUMBA_NUM_THREADS=0", "NUMBA_NUM_THREADS='0': Number of threads specified must be"),
    ],
)
def test_a_bad_environment_variable_is_one_line_for_the_command(variable, message):
    """The variables are read when the packages are imported, before Click runs: the command
    (argv[0] parscan-train) says so in one line, exit 2; an import by Python code raises."""
    name, value = variable.split("=")
    env = {**os.environ, name: value}
    env.pop("PARSCAN_THREADS" if name == "NUMBA_NUM_THREADS" else "NUMBA_NUM_THREADS", None)
    command = "import sys; sys.argv[0] = '/bin/parscan-train'; import cli; cli.main()"
    result = subprocess.run(
        [sys.executable, "-c", command, "--version"], env=env, capture_output=True, text=True
    )
    assert (result.returncode, result.stdout) == (2, ""), result.stderr
    assert result.stderr.startswith(f"parscan-train: error: {message}"), result.stderr
    assert result.stderr.endswith(" Fix or unset it.\n") and result.stderr.count("\n") == 1
    imported = subprocess.run(
        [sys.executable, "-c", "import cli"], env=env, capture_output=True, text=True
    )
    assert imported.returncode == 1 and "ValueError" in imported.stderr


@pytest.mark.parametrize("started", ["script", "module"])
def test_python_runs_cli_as_the_command(started):
    """``python cli.py`` and ``python -m cli`` are the command (they did nothing, exit 0): a
    bad option and a bad environment variable are one line, exit 2."""
    start = [str(Path(cli.__file__))] if started == "script" else ["-m", "cli"]
    cwd = Path(cli.__file__).parent
    result = subprocess.run(
        [sys.executable, *start, "--epochs", "0"], cwd=cwd, capture_output=True, text=True
    )
    assert (result.returncode, result.stdout) == (2, ""), result.stderr
    assert result.stderr == "parscan-train: error: --epochs must be a positive integer, got 0.\n"
    env = {**os.environ, "PARSCAN_THREADS": "0"}
    result = subprocess.run(
        [sys.executable, *start, "--version"], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("parscan-train: error: environment variable PARSCAN_THREADS")


def test_ctrl_c_while_numba_loads_is_one_line_for_the_command():
    """A Ctrl-C during the import of Numba (the first second of every command) ends the
    command as one at any other time does, "interrupted", exit 130, no traceback; an import
    by Python code gets its KeyboardInterrupt."""
    interrupt = (
        "import builtins, sys\n"
        "real = builtins.__import__\n"
        "def interrupted(name, *args, **kwargs):\n"
        "    if name == 'numba':\n"
        "        raise KeyboardInterrupt\n"
        "    return real(name, *args, **kwargs)\n"
        "builtins.__import__ = interrupted\n"
    )
    for argv0, code, stderr in [
        ("/bin/parscan-train", 130, "parscan-train: interrupted.\n"),
        ("-c", -signal.SIGINT, "KeyboardInterrupt\n"),  # Python's exit by the signal
    ]:
        command = f"{interrupt}sys.argv[0] = {argv0!r}\nimport cli"
        result = subprocess.run([sys.executable, "-c", command], capture_output=True, text=True)
        assert (result.returncode, result.stdout) == (code, ""), result.stderr
        assert result.stderr.endswith(stderr), result.stderr
        assert ("Traceback" in result.stderr) == (code < 0)


def test_sequential_run_shows_no_newton_iterations_and_records_the_threads_used(tmp_path):
    import numba

    tiny = [a for a in TINY if a != "-q"]
    out = tmp_path / "run"
    result = run(*tiny, "--method", "sequential", "--threads", "999", "-v", "--out", out)
    assert result.exit_code in (0, 1), result.output
    used = numba.config.NUMBA_NUM_THREADS
    sized = parscan._env.POOL_SIZED and used == parscan._env.THREADS
    limit = "PARSCAN_THREADS" if sized else "NUMBA_NUM_THREADS"
    assert (
        f"parscan-train: warning: --threads 999: only {used} "
        f"{'thread is' if used == 1 else 'threads are'} available here ({limit}); using {used}, "
        "as args.json records."
    ) in result.output.splitlines()
    assert json.loads((out / "args.json").read_text())["settings"]["threads"] == used
    epochs = [line for line in result.output.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 2 and all("alpha" in line for line in epochs)
    assert "newton" not in result.output.lower(), result.output
    assert json.loads((out / "metrics.json").read_text())["newton_iters_mean"] is None


BUSY = (
    "parscan-train: warning: the machine is busy (other processes keep 1.0 of its 2 cores "
    "busy): threaded steps wait for the scheduler and can run several times slower; if "
    "training is slow, try --threads 1."
)


def test_warn_if_busy(capsys):
    for busy, cores, threads in ((0.4, 2, 2), (2.0, 2, 1), (0.4, 4, 4), (1.0, 4, 2)):
        cli._warn_if_busy(busy, cores, threads)
    assert capsys.readouterr().err == ""
    cli._warn_if_busy(1.0, 2, 2)
    assert capsys.readouterr().err == BUSY + "\n"


def test_machine_load_reads_the_cores_of_this_process():
    load = MACHINE_LOAD()
    if load is None:
        pytest.skip("no /proc/stat here")
    busy, cores = load
    assert cores == len(os.sched_getaffinity(0)) and 0.0 <= busy <= cores


def test_warn_if_far(capsys):
    x = models.generate("lorenz63", 2000, seed=1)
    mean, sd = x.mean(axis=0), x.std(axis=0)
    cli.warn_if_far(models.generate("lorenz63", 2000, seed=2), mean, sd, "--test-data a.npy")
    assert capsys.readouterr().err == ""
    for shifted in ((x - mean) / sd, x * [1, 1, 6]):  # standardised; dimension 2 scaled by 6
        cli.warn_if_far(shifted, mean, sd, "--test-data a.npy")
    first, second = capsys.readouterr().err.splitlines()
    assert first.startswith(
        "parscan-train: warning: --test-data a.npy lies far from the training data in "
        "dimension 0 (mean "
    ), first
    training = f"training data: mean {mean[0]:.3g}, sd {sd[0]:.3g}"
    assert f"sd 1; {training}) and 2 other dimensions; are" in first
    assert first.endswith("; are both in the same units (one of them standardised)?")
    assert f"in dimension 2 (mean {6 * mean[2]:.3g}, sd {6 * sd[2]:.3g};" in second
    assert "other dimension" not in second
    cli.warn_if_far(x + np.array([100, 100, 0]), mean, sd, "--test-data a.npy")
    assert "in dimension 0 (" in capsys.readouterr().err


def test_warnings_before_training_also_with_quiet(finished_run, tmp_path, monkeypatch):
    import numba

    if parscan._env.THREADS is not None or numba.get_num_threads() < 2:
        pytest.skip("the kernels run one thread or PARSCAN_THREADS chose them")
    monkeypatch.setattr(cli, "machine_load", lambda: (1.0, 2))
    x = models.generate("lorenz63", 1500, seed=3)
    raw, standardised = tmp_path / "raw.npy", tmp_path / "standardised.npy"
    np.save(raw, x)
    np.save(standardised, (x - x.mean(axis=0)) / x.std(axis=0))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("not a run")
    result = run(*TINY[2:], "--data", raw, "--test-data", standardised, "--out", tmp_path / "full")
    assert result.exit_code == 2, result.output
    far, error = result.output.splitlines()  # a busy machine is no cause of a refusal
    assert far.startswith(
        f"parscan-train: warning: --test-data {standardised} lies far from the training data "
        "in dimension 0 (mean"
    ), far
    assert error == (
        f"parscan-train: error: --out {tmp_path / 'full'} is not empty and holds no parscan "
        "run; choose another --out."
    )
    # once nothing is refused, the busy machine is warned of before the run (a resume here)
    shutil.copytree(finished_run[0], tmp_path / "copy")
    result = run("--out", tmp_path / "copy", "--resume", "-q")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == BUSY, result.output
    # evaluate compares with the model's standardisation
    result = run("evaluate", finished_run[0] / "model.npz", "--test-data", standardised)
    assert f"warning: --test-data {standardised} lies far" in result.output, result.output


def test_a_busy_machine_is_not_warned_of_before_a_refusal(tmp_path, monkeypatch):
    """Data, memory and fit refusals come alone: the busy-machine warning is printed once the
    run is about to start (it was printed first, above an error it has nothing to do with)."""
    import numba

    if parscan._env.THREADS is not None or numba.get_num_threads() < 2:
        pytest.skip("the kernels run one thread or PARSCAN_THREADS chose them")
    monkeypatch.setattr(cli, "machine_load", lambda: (1.0, 2))
    x = models.generate("lorenz63", 200, seed=3)
    x[5, 1] = np.nan
    np.save(tmp_path / "gap.npy", x)
    _one_error_line(run(*TINY[2:], "--data", tmp_path / "gap.npy"), "gap.npy")


def test_plots_share_the_attractor_axes_and_cut_the_spectrum(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    figures = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *args, **kwargs: figures.append(self))
    x = models.generate("lorenz63", 3000, seed=1)
    test = (x - x.mean(axis=0)) / x.std(axis=0)
    collapsed = np.full_like(test, 0.1)
    assert cli.write_plots(tmp_path, test, collapsed) == "plots: attractor.png, spectrum.png"
    attractor, spectrum = figures
    left, right = attractor.axes
    for get in ("get_xlim", "get_ylim", "get_zlim"):
        assert getattr(left, get)() == getattr(right, get)()
    assert left.get_xlim() == (test[:, 0].min(), test[:, 0].max())
    extent = spectrum_extent(normalized_spectra(test, 20.0))
    assert 50 <= extent < 1501
    assert all(ax.get_xlim() == (0, extent - 1) for ax in spectrum.axes)
    # one dimension: the series over time, not x against x (a diagonal line)
    figures.clear()
    cli.write_plots(tmp_path, test[:, :1], collapsed[:, :1])
    for ax in figures[0].axes:
        (line,) = ax.get_lines()
        np.testing.assert_array_equal(line.get_xdata(), np.arange(cli.SERIES_PLOT_STEPS))
        assert ax.get_xlabel() == "step" and ax.get_ylim() == figures[0].axes[0].get_ylim()


def _rewrite_run(out, edit_settings, edit_config):
    """Rewrite the run in ``out`` as an older version wrote it: ``edit_settings`` edits the
    settings of its args.json, ``edit_config`` the configuration of its checkpoint."""
    args_file = out / "args.json"
    args = json.loads(args_file.read_text())
    edit_settings(args["settings"])
    args_file.write_text(json.dumps(args))
    path = out / "checkpoints" / "checkpoint.npz"
    fields = dict(np.load(path))
    meta = json.loads(str(fields["metadata"]))
    edit_config(meta["train_state"]["config"])
    fields["metadata"] = np.array(json.dumps(meta))
    np.savez(path, **fields)


def test_a_run_recorded_with_settings_refused_since_still_resumes(tmp_path):
    """An SSM run whose args.json and checkpoint recorded GTF settings it did not use (written
    before they were refused) resumes; the settings go back to their defaults."""
    out = tmp_path / "run"
    result = run(*TINY[:-3], "-q", "--model", "linear-ssm", "--out", out)
    assert result.exit_code == 0, result.output
    args_file = out / "args.json"
    _rewrite_run(
        out,
        lambda settings: settings.update(jacobian="diag", alpha="0.3"),
        lambda config: config.update(jacobian="diag", alpha_mode="constant", alpha=0.3),
    )
    result = run("--out", out, "--resume", "-q", "-e", "3")
    assert result.exit_code == 0, result.output
    settings = json.loads(args_file.read_text())["settings"]
    assert (settings["jacobian"], settings["alpha"]) == ("full", "auto")
    # a latent RNN with a fixed alpha and an estimator recorded for it
    out = tmp_path / "fixed"
    result = run(*TINY[:-3], "-q", "--alpha", "0.3", "--out", out)
    assert result.exit_code == 0, result.output
    _rewrite_run(
        out,
        lambda settings: settings.update(alpha_method="sup"),
        lambda config: config.update(alpha_method="sup", alpha_interval=2),
    )
    result = run("--out", out, "--resume", "-q", "-e", "3")
    assert result.exit_code == 0, result.output
    recorded = json.loads((out / "args.json").read_text())
    assert recorded["settings"]["alpha_method"] == "geomean"
    assert recorded["train_config"]["alpha_interval"] == 5


def test_an_output_flag_replaces_the_configs(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("quiet = true\n")
    assert cli.resolve_settings({"verbose": True}, str(config)).quiet is False
    assert cli.resolve_settings({}, str(config)).quiet is True
    _one_error_line(run("-q", "-v"), "-q/--quiet and -v/--verbose contradict each other")


def test_n_bins_scores_validation_and_test_and_evaluate_keeps_the_runs(tmp_path):
    out = tmp_path / "run"
    result = run(*TINY, "--n-bins", "8", "--out", out)
    assert result.exit_code == 0, result.output
    args = json.loads((out / "args.json").read_text())
    assert args["settings"]["n_bins"] == args["train_config"]["validation_n_bins"] == 8
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_bins"] == 8
    # the re-score of a run uses its bins, so it matches the training summary
    assert run("evaluate", out).exit_code == 0
    scores = json.loads((out / "evaluation.json").read_text())
    assert scores["n_bins"] == 8 and scores["dstsp"] == metrics["test"]["dstsp"]
    assert (scores["pe_steps"], scores["smoothing"]) == (20, 20.0)  # the defaults, recorded
    finer = tmp_path / "finer.json"
    options = ["--n-bins", "30", "--pe-steps", "5", "--smoothing", "4", "--out", finer]
    assert run("evaluate", out, *options).exit_code == 0
    scores = json.loads(finer.read_text())
    assert scores["n_bins"] == 30 and scores["dstsp"] != metrics["test"]["dstsp"]
    assert (scores["pe_steps"], scores["smoothing"]) == (5, 4.0)
    np.save(tmp_path / "test.npy", models.generate("lorenz63", 800, seed=7))
    model_file = tmp_path / "model.json"
    result = run("evaluate", out / "model.npz", "--test-data", tmp_path / "test.npy",
                 "--out", model_file)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(model_file.read_text())["n_bins"] == 8  # a model file: its run's bins
    result = run("evaluate", out / "checkpoints" / "checkpoint.npz", "--test-data",
                 tmp_path / "test.npy", "--out", model_file)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(model_file.read_text())["n_bins"] == 8  # a checkpoint: its config's
    _one_error_line(
        run("--out", out, "--resume", "-q", "-e", "3", "--n-bins", "30"),
        "--n-bins 30 (the run's: 8) would change them",
    )


def test_a_run_recorded_before_n_bins_evaluates_and_resumes_with_30(finished_run, tmp_path):
    out = _copy_run(finished_run, tmp_path)
    _rewrite_run(
        out,
        lambda settings: settings.pop("n_bins"),
        lambda config: config.pop("validation_n_bins"),
    )
    assert run("evaluate", out).exit_code == 0
    assert json.loads((out / "evaluation.json").read_text())["n_bins"] == 30
    _one_error_line(
        run("--out", out, "--resume", "-q", "--n-bins", "8"),
        "--n-bins 8 (the run's: 30) would change them",
    )
    result = run("--out", out, "--resume", "-q", "-e", "3")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "args.json").read_text())["settings"]["n_bins"] == 30


def test_n_bins_is_refused_for_data_scored_with_the_gaussian_mixture(tmp_path):
    six = models.generate("lorenz96", 600, seed=3, params={"N": 6})
    np.save(tmp_path / "six.npy", six)
    out = tmp_path / "run"
    message = "the data have 6 dimensions, and D_stsp scores data with 6 or more with a Gaussian"
    _one_error_line(run("--data", tmp_path / "six.npy", "--n-bins", "8", "--out", out), message)
    (tmp_path / "bins.toml").write_text("n-bins = 30\n")  # even at the default
    _one_error_line(
        run("--data", tmp_path / "six.npy", "--config", tmp_path / "bins.toml", "--out", out),
        f"n-bins in --config {tmp_path / 'bins.toml'}: the data have 6 dimensions",
    )
    assert not out.exists()
    model_file = tmp_path / "model.npz"
    models.ShPLRNN(6, 4).save(model_file)
    _one_error_line(
        run("evaluate", model_file, "--test-data", tmp_path / "six.npy", "--n-bins", "8"),
        message,
    )


def test_n_bins_in_a_config_file(tmp_path):
    (tmp_path / "eight.toml").write_text("n-bins = 8\n")
    (tmp_path / "zero.json").write_text('{"n_bins": 0}')
    assert cli.resolve_settings({}, str(tmp_path / "eight.toml")).n_bins == 8
    with pytest.raises(cli.UserError, match=r"n_bins in --config .*zero.json must be a positive"):
        cli.resolve_settings({}, str(tmp_path / "zero.json"))


#: TrainConfig fields no parscan-train setting sets: every run trains with their TrainConfig
#: defaults. A field added to TrainConfig fails
#: test_every_train_config_field_is_forwarded_or_deliberately_left_out until it is forwarded
#: (TRAIN_FIELDS) or listed here.
NOT_FROM_SETTINGS = {
    "alpha_gamma",  # --alpha auto anneals with the default gamma and interval
    "alpha_interval",
    "noise_level",  # no training noise (--noise is the generated data's observation noise)
    "grad_clip",  # no gradient clipping (README, on TrainingDivergedError)
    "l2",  # no L2 penalty
    "max_bad_steps",
    "newton_tol",  # no Newton tolerance or cap: deer_solve's own
    "newton_max_iter",
    "standardize",  # always trained on standardised data
}
#: a valid value for each forwarded setting, off both its Settings and its TrainConfig default
FORWARDED = {
    "method": "sequential",
    "jacobian": "diag",
    "alpha_method": "sup",
    "sequence_length": 40,
    "batch_size": 5,
    "batches_per_epoch": 3,
    "epochs": 7,
    "lr_start": 2e-3,
    "lr_end": 5e-5,
    "optimizer": "adam",
    "dtype": "float64",
    "backend": "cpu",
    "seed": 11,
    "validation_interval": 3,
    "validation_steps": 5000,
    "validation_starts": 6,
    "selection_candidates": 3,
    "selection_starts": 9,
    "selection_steps": 3000,
    "checkpoint_interval": 4,
    "n_bins": 12,
    "alpha": 0.3,
}
#: the TrainConfig fields the settings of another name give, with the FORWARDED values
#: (cli._train_fields); the others give the field of their own name
RENAMED = {"n_bins": {"validation_n_bins": 12}, "alpha": {"alpha_mode": "constant", "alpha": 0.3}}


def test_every_train_config_field_is_forwarded_or_deliberately_left_out():
    """The TrainConfig fields parscan-train sets are TRAIN_FIELDS and the renamed ones, and
    every other field is in NOT_FROM_SETTINGS; FORWARDED covers every setting that sets one."""
    config_fields = {f.name for f in fields(autodiff.TrainConfig)}
    renamed = {name for names in RENAMED.values() for name in names}
    assert set(cli.TRAIN_FIELDS) | renamed == config_fields - NOT_FROM_SETTINGS
    assert set(FORWARDED) == set(cli.TRAIN_FIELDS) | set(RENAMED)
    assert set(cli.TRAIN_FIELDS) | set(RENAMED) <= set(cli.SETTING_NAMES)


@pytest.mark.parametrize("name", sorted(FORWARDED))
def test_each_training_setting_of_a_config_file_reaches_the_train_config(tmp_path, name):
    """A --config value of every setting that TrainConfig takes reaches the TrainConfig the
    run trains with (cli.train_config), under its own name or its TrainConfig one."""
    value = FORWARDED[name]
    expected = RENAMED.get(name, {name: value})
    (tmp_path / "run.json").write_text(json.dumps({name: value}))
    settings = cli.resolve_settings({}, str(tmp_path / "run.json"))
    config = cli.train_config(settings, 3)
    by_default = cli.train_config(cli.resolve_settings({}, None), 3)
    defaults = autodiff.TrainConfig()
    for field, wanted in expected.items():
        assert getattr(config, field) == wanted
        assert getattr(by_default, field) != wanted and getattr(defaults, field) != wanted


def test_result_files_are_standard_json_with_null_for_what_was_not_measured(tmp_path):
    def refuse(name):
        raise AssertionError(f"not standard JSON: {name}")

    path = tmp_path / "metrics.json"
    cli._write_json(path, {"score": np.inf, "runs": [np.float32("nan"), 1.5], "n": np.int64(3)})
    assert json.loads(path.read_text(), parse_constant=refuse) == {
        "score": None,
        "runs": [None, 1.5],
        "n": 3,
    }


def test_a_model_no_validation_could_measure_is_a_failed_run(tmp_path, monkeypatch):
    """Every validation had a free run that diverged: the model fails from some starting
    points even where the single test run (from the first test point) succeeds."""
    import autodiff.train

    diverged = {"dstsp": None, "dh": None, "score": np.inf, "status": "diverged"}
    monkeypatch.setattr(autodiff.train, "validate", lambda *args: dict(diverged))
    result = run(*TINY, "--out", tmp_path / "run")
    assert result.exit_code == 1, result.output
    assert (
        "the trained model does not reconstruct the system; no validation of any epoch was "
        "measurable (last: diverged: a free run from one of the spread-out validation points "
        "failed), although the test run from the first test point was. Try "
    ) in result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["validation"]["score"] is None  # standard JSON


def test_threads_of_a_command_end_with_it(finished_run, tmp_path):
    out = _copy_run(finished_run, tmp_path)
    before = numba.get_num_threads()
    assert run("evaluate", out, "--threads", 1).exit_code == 0
    assert run(*TINY, "--threads", 1, "--out", tmp_path / "run").exit_code == 0
    assert numba.get_num_threads() == before


def test_sigterm_before_training_exits_143(monkeypatch):
    def terminated(*args):
        raise cli.Terminated

    monkeypatch.setattr(cli, "prepare_data", terminated)
    result = run(*TINY)
    assert result.exit_code == 143
    assert result.output.strip() == "parscan-train: stopped by SIGTERM."  # click adds a newline


@pytest.mark.parametrize(
    ("flags", "cls", "hyperparameters"),
    [
        (["--model", "alrnn", "-M", "5", "-P", "2"], models.ALRNN, {"M": 5, "P": 2, "n_obs": 3}),
        (["--model", "plrnn", "-M", "4"], models.PLRNN, {"M": 4, "n_obs": 3}),
        (["--model", "shplrnn", "-L", "8"], models.ShPLRNN, {"M": 3, "L": 8, "n_obs": 3}),
        (["--model", "selective-ssm", "-L", "8"], models.SelectiveSSM, {"N": 3, "L": 8}),
        (
            ["--optimizer", "adam", "--jacobian", "diag", "-L", "8"],
            models.ClippedShPLRNN,
            {"M": 3, "L": 8, "n_obs": 3},
        ),
    ],
    ids=["alrnn", "plrnn", "shplrnn", "selective-ssm", "adam-diag"],
)
@pytest.mark.filterwarnings("always::parscan.gtf.GTFGuaranteeWarning")  # M > N: a warning line
def test_tiny_runs_of_the_other_models_and_settings(tmp_path, flags, cls, hyperparameters):
    out = tmp_path / "run"
    result = run(*TINY[:-3], "-q", *flags, "--out", out)  # TINY without its -L 8
    assert result.exit_code == 0, result.output
    model = models.load(out / "model.npz")
    assert type(model) is cls and model.standardization is not None
    got = model.hyperparameters()
    assert {name: got[name] for name in hyperparameters} == hyperparameters
    assert got["dtype"] == "float32" and got["seed"] == 0  # the command line's defaults
    config = json.loads((out / "args.json").read_text())["train_config"]
    assert (config["optimizer"], config["jacobian"]) == (
        ("adam", "diag") if "adam" in flags else ("radam", "full")
    )


def test_a_run_whose_steps_are_all_rejected_exits_1_with_one_line(tmp_path, monkeypatch):
    """TrainingDivergedError (every one of the 6 steps has a NaN gradient): exit 1, one line
    on stderr, no model.npz."""
    real = autodiff.gradients.gtf_loss_and_grad

    def nan_gradient(*args, **kwargs):
        loss, grad, info = real(*args, **kwargs)
        return loss, np.full_like(grad, np.nan), info

    monkeypatch.setattr(autodiff.gradients, "gtf_loss_and_grad", nan_gradient)
    out = tmp_path / "run"
    result = run(*TINY, "--out", out)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("parscan-train: "), result.stderr
    assert "6 consecutive steps were rejected (last: non-finite loss or gradient)" in lines[0]
    assert "Traceback" not in result.output
    assert not (out / "model.npz").exists()
    # the run records why it failed: evaluate and generate say so, and suggest no --resume
    # (it keeps the settings, so it would fail again) but the settings of a new run
    failure = lines[0].removeprefix("parscan-train: ")
    assert json.loads((out / "args.json").read_text())["failure"] == failure
    for command in ("evaluate", "generate"):
        _one_error_line(
            run(command, out),
            f"{out} has no model.npz, and a --resume would fail again (it keeps the run's "
            f"settings): {failure}",
        )


def test_a_failure_that_cannot_be_recorded_is_still_reported(tmp_path, monkeypatch):
    """The disk fills up when the failure of a diverged run is recorded in args.json: the
    failure line all the same, then one clean warning (the reworded OSError of atomic_write
    repeated the prefix and the path and advised another path), exit 1, no traceback."""
    real_gradient, real_write = autodiff.gradients.gtf_loss_and_grad, models.base._write_atomically
    writes = []

    def nan_gradient(*args, **kwargs):
        loss, grad, info = real_gradient(*args, **kwargs)
        return loss, np.full_like(grad, np.nan), info

    def disk_full_for_the_second_args_json(path, write):
        if path.name == "args.json":
            writes.append(path)
            if len(writes) == 2:  # the first records the run, the second its failure
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, write)

    monkeypatch.setattr(autodiff.gradients, "gtf_loss_and_grad", nan_gradient)
    monkeypatch.setattr(models.base, "_write_atomically", disk_full_for_the_second_args_json)
    out = tmp_path / "run"
    result = run(*TINY, "--out", out)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and "6 consecutive steps were rejected" in lines[0], result.stderr
    assert lines[1] == (
        f"parscan-train: warning: the failure could not be recorded in {out / 'args.json'} "
        "(No space left on device)."
    )
    assert "failure" not in json.loads((out / "args.json").read_text())


def _data_units_run(model, x0, n_steps):
    """``model``'s free runs from ``x0`` (data units), in data units, as generate makes them."""
    mean, sd = model.standardization
    z0 = ((np.asarray(x0) - mean) / sd).astype(model.dtype)
    return model.generate(z0, n_steps).astype(np.float64) * sd + mean


def test_generate_from_the_runs_test_data_in_data_units(finished_run, tmp_path):
    """Default: one run from the first test point, as long as the test data, written to
    RUN/generated.npy in data units; --starts spreads runs over the test data as evaluate's
    n_starts does."""
    out = _copy_run(finished_run, tmp_path)
    model = models.load(out / "model.npz")
    test = cli.run_test_data(out, "evaluate")[0]
    result = run("generate", out)
    assert result.exit_code == 0, result.output
    n = len(test) - 1
    assert f"1 free run ({n} x 3, data units) from the first test point -> " in result.output
    generated = np.load(out / "generated.npy")
    np.testing.assert_allclose(generated, _data_units_run(model, test[0], n), rtol=1e-12)
    assert run("evaluate", out).exit_code == 0  # the run folder is still a run folder

    result = run("generate", out, "--starts", 3, "--n-steps", 25, "--out", tmp_path / "s.npy")
    assert result.exit_code == 0, result.output
    first = np.arange(3) * len(test) // 3
    assert f"3 free runs (3 x 25 x 3, data units) from test points {first[0]}, " in result.output
    np.testing.assert_allclose(
        np.load(tmp_path / "s.npy"), _data_units_run(model, test[first], 25), rtol=1e-12
    )


def test_generate_from_given_points_and_to_text(finished_run, tmp_path):
    """--x0 in data units (negative values too), repeated for several runs; a model file
    needs --x0, --n-steps and --out; .csv/.txt hold one run that reads back exactly."""
    model_file = finished_run[0] / "model.npz"
    model = models.load(model_file)
    result = run("generate", model_file, "--x0", "-5,0,25", "--x0", "1,2,20", "--n-steps", 30,
                 "--out", tmp_path / "two.npy")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "2 free runs (2 x 30 x 3, data units) from 2 --x0 points" in result.output
    expected = _data_units_run(model, [[-5, 0, 25], [1, 2, 20]], 30)
    np.testing.assert_allclose(np.load(tmp_path / "two.npy"), expected, rtol=1e-12)
    for suffix in (".csv", ".txt"):
        target = tmp_path / f"one{suffix}"
        result = run("generate", model_file, "--x0", "-5,0,25", "--n-steps", 30, "--out", target)
        assert result.exit_code == 0, result.output
        np.testing.assert_array_equal(models.load_data(target), np.load(tmp_path / "two.npy")[0])
    for missing, message in (
        (["--x0", "1,2,3", "--n-steps", 5], "is a model file: pass --out FILE"),
        (["--x0", "1,2,3", "--out", tmp_path / "a.npy"], "--x0 needs --n-steps N, the number"),
        (["--n-steps", 5, "--out", tmp_path / "a.npy"], "has no test data to start from"),
    ):
        _one_error_line(run("generate", model_file, *missing), message)


def test_generate_of_a_model_without_standardisation_is_in_model_units(finished_run, tmp_path):
    model = models.load(finished_run[0] / "model.npz")
    model.standardization = None
    model.save(tmp_path / "raw.npz")
    result = run("generate", tmp_path / "raw.npz", "--x0", "0.1,0.2,0.3", "--n-steps", 10,
                 "--out", tmp_path / "g.npy")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "model units: the model has no standardisation" in result.output
    np.testing.assert_allclose(
        np.load(tmp_path / "g.npy"),
        model.generate(np.array([0.1, 0.2, 0.3], dtype=model.dtype), 10),
        rtol=1e-6,
    )


def test_generate_writes_a_failing_run_and_exits_1_naming_it(finished_run, tmp_path, monkeypatch):
    """A run that becomes NaN (or leaves 1000 training sds) is written as computed and named;
    an initial point far from the training data is warned about first."""
    out = _copy_run(finished_run, tmp_path)
    cls = type(models.load(out / "model.npz"))
    generate = cls.generate

    def blows_up(self, x0, n_steps):
        runs = generate(self, x0, n_steps)
        runs[..., 7:, 1] = np.nan
        return runs

    monkeypatch.setattr(cls, "generate", blows_up)
    result = run("generate", out, "--n-steps", 20)
    assert result.exit_code == 1, result.output
    assert result.stderr.endswith(
        "parscan-train: the free run from test point 0 is NaN/inf from step 8 (written as "
        "computed).\n"
    )
    assert np.isnan(np.load(out / "generated.npy")[7:, 1]).all()

    def diverges(self, x0, n_steps):
        runs = generate(self, x0, n_steps)
        runs[..., 4:, 0] = 2e3
        return runs

    monkeypatch.setattr(cls, "generate", diverges)
    result = run(
        "generate", out, "--x0", "1,1,20", "--x0", "1e4,1,20", "--x0", "1,1e4,20", "--n-steps", 9
    )
    assert result.exit_code == 1, result.output
    assert "warning: --x0 1e4,1,20 lies " in result.output
    assert "training-data sds from the training mean in dimension 0" in result.output
    assert "(and 1 other initial observation); is it in the training data's units?" in (
        result.output
    )
    assert "the free run from --x0 1,1,20 leaves 1000 training-data sds at step 5" in result.output


def test_generate_counts_the_latents_of_a_free_run_in_its_memory_check(tmp_path, monkeypatch):
    """A latent RNN's free runs hold M latents a step before the N observations: the memory
    check counts them (an ALRNN with M = 100 > N = 3 passed it and then failed in a
    traceback), and a run beyond NumPy's address space is one line, exit 2."""
    model = models.ALRNN(100, 10, 3, dtype="float32")
    model.standardization = (np.zeros(3), np.ones(3))
    path = model.save(tmp_path / "alrnn.npz")
    args = ["generate", path, "--x0", "1,1,1", "--out", tmp_path / "g.npy"]
    monkeypatch.setattr(cli, "available_bytes", lambda: 10**8)  # 95 MiB
    # 10^6 steps: 400 MB of float32 latents and 72 MB of float64 observations
    _one_error_line(
        run(*args, "--n-steps", 10**6),
        "GiB are available; lower --n-steps or the number of runs.",
    )
    monkeypatch.setattr(cli, "available_bytes", lambda: None)  # no check: NumPy refuses
    _one_error_line(
        run(*args, "--n-steps", 2**60),
        "a free run of 1152921504606846976 steps (3 float64 values a step) needs 24 EiB, more "
        "than NumPy can address",
    )
    assert not (tmp_path / "g.npy").exists()


def test_generate_mistakes_exit_2_and_leave_files_alone(several_run, tmp_path, monkeypatch):
    """Bad options are refused in one line before anything runs; --out never replaces the
    model, the run's files or its data (also with the model file as the target: its metadata
    records the data); a failed write leaves the old file."""
    paths, arrays, out, _ = several_run
    data_file = "would replace a data file the model was trained or tested on"
    for args, message in (
        (["--x0", "1,2,3", "--starts", 2], "--x0 and --starts both choose initial observations"),
        (["--n-steps", 0, "--starts", 0], "--n-steps must be >= 1, got 0; --starts must be >= 1"),
        (["--x0", "1,a,3", "--n-steps", 5], "--x0 1,a,3: expected 3 finite numbers separated by"),
        (["--x0", "1,2", "--n-steps", 5], "--x0 1,2: expected 3 finite numbers"),
        (["--x0", "1,inf,2", "--n-steps", 5], "--x0 1,inf,2: expected 3 finite numbers"),
        (["--x0", "1_0,2,3", "--n-steps", 5], "--x0 1_0,2,3: expected 3 finite numbers"),  # not 10
        (["--x0", "1,2,3"], "--x0 needs --n-steps N, the number of steps each run generates."),
        (["--out", tmp_path / "g.json"], "write .npy, .csv or .txt, not '.json'"),
        (["--starts", 2, "--out", tmp_path / "g.csv"], "2 runs make a K x n x N array; write .npy"),
        (["--starts", 301], "--starts 301 exceeds the 300 points of the run's test data"),
        (["--out", ""], "--out must not be empty"),
        (["--out", tmp_path], "is a folder; name the .npy, .csv or .txt file to write"),
        (["--out", paths[0]], f"{data_file} ({paths[0]})"),
        (["--out", out / "history.csv"], "would replace the run's history"),
        (["--out", out / "model.npz"], "would replace the run's model"),
        (["--threads", 0], "--threads must be >= 1, got 0"),
        (["--n-steps", 10**12], "GiB of memory and"),
    ):
        _one_error_line(run("generate", out, *args), message)
    x0 = ["--x0", "1,2,3", "--n-steps", 5]
    shutil.copy(out / "model.npz", tmp_path / "model.npz")  # a model file outside its run
    for target, file, message in (
        (out / "model.npz", paths[1], f"{data_file} ({paths[1]})"),
        (out / "model.npz", out / "history.csv", "would replace the run's history"),
        (tmp_path / "model.npz", paths[1], f"{data_file} ({paths[1]})"),
        (tmp_path / "model.npz", tmp_path / "model.npz", "would replace the model file"),
        # the files of another run, and of the run of a checkpoint given as the target
        (tmp_path / "model.npz", out / "history.csv", f"would replace the run's history in {out}"),
        (out / "checkpoints" / "checkpoint.npz", out / "args.json",
         f"would replace the run's settings (args.json) in {out}"),
        (out / "checkpoints" / "checkpoint.npz", out / "model.npz",
         f"would replace the run's model in {out}"),
    ):  # fmt: skip
        _one_error_line(run("generate", target, *x0, "--out", file), message)
    assert (out / "args.json").is_file() and (out / "history.csv").is_file()
    np.testing.assert_array_equal(np.load(paths[0]), arrays[0])
    np.testing.assert_array_equal(np.load(paths[1]), arrays[1])
    _one_error_line(run("generate", tmp_path / "nothing"), "no such run folder or model file")
    _one_error_line(
        run("generate", tmp_path / "nothing", "--n-steps", 0),
        f"--n-steps must be >= 1, got 0; {tmp_path / 'nothing'}: no such run folder or model",
    )
    # a model file needs --x0, --n-steps and --out: the missing ones in one line
    _one_error_line(
        run("generate", tmp_path / "model.npz", "--x0", "1,2,3"),
        f"--x0 needs --n-steps N, the number of steps each run generates; {tmp_path / 'model.npz'} "
        "is a model file: pass --out FILE (.npy, .csv or .txt).",
    )
    with monkeypatch.context() as patch:  # a folder no file can be written in, found first
        patch.setattr(tempfile, "mkstemp", _read_only)
        patch.setattr(cli, "_free_runs", _not_called)
        _one_error_line(
            run("generate", out, "--out", tmp_path / "g.npy"),
            f"cannot write the .npy, .csv or .txt file {tmp_path / 'g.npy'}: Read-only file "
            "system; choose another --out.",
        )

    import models.base

    np.save(tmp_path / "old.npy", np.arange(3.0))

    def full_disk(path, write):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(models.base, "_write_atomically", full_disk)
    _one_error_line(
        run("generate", out, "--out", tmp_path / "old.npy"),
        f"cannot write {tmp_path / 'old.npy'} (No space left on device); a file already there "
        "is unchanged.",
    )
    np.testing.assert_array_equal(np.load(tmp_path / "old.npy"), np.arange(3.0))


def test_failures_of_several_test_trajectories_are_named_by_their_file():
    """evaluate's x_test[k] becomes the k-th test file (or --data file's test part) in the
    messages of a run with several; one test trajectory keeps evaluate's words."""
    message = "x_test[1]: the free run is NaN/inf from step 3 (1 of the 2 test trajectories …)"
    several = cli.Settings(data=["a.npy", "b.npy"])
    assert cli._named_tests(message, cli._test_labels(several)) == (
        "the test part of --data b.npy: the free run is NaN/inf from step 3 (1 of the 2 test "
        "trajectories …)"
    )
    tests = cli._test_labels(replace(several, test_data=["t1.npy", "t2.npy"]))
    assert cli._named_tests(message, tests).startswith("--test-data t2.npy: the free run")
    assert cli._named_tests(message, cli._test_labels(cli.Settings())) == message


def test_evaluate_lyapunov_per_step_and_per_time_unit(finished_run, tmp_path):
    """--lyapunov: evaluate's exponent per step, per time unit with the generated system's dt
    (or --dt), next to the system's own; refused for a model without a Jacobian, and --dt
    without --lyapunov or out of range."""
    out, _ = finished_run
    result = run("evaluate", out, "--lyapunov", "--out", tmp_path / "l.json")
    assert result.exit_code == 0, result.output
    model = models.load(out / "model.npz")
    mean, sd = model.standardization
    test = (cli.run_test_data(out, "evaluate")[0] - mean) / sd
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = models.evaluate(model, test, measures=("lyapunov",))["lyapunov"]
    scores = json.loads((tmp_path / "l.json").read_text())
    assert scores["lyapunov"] == expected and scores["dt"] == 0.01
    assert scores["lyapunov_per_time"] == pytest.approx(expected / 0.01, rel=1e-12)
    assert _line(result.output, "lambda_max") == (
        f"lambda_max {expected:.4g} per step = {expected / 0.01:.4g} per time unit (dt 0.01); "
        f"lorenz63: {models.SYSTEMS['lorenz63'].lyapunov:g} per time unit"
    )
    np.save(tmp_path / "test.npy", cli.run_test_data(out, "evaluate")[0])
    bare = models.load(out / "model.npz")
    bare.save(tmp_path / "bare.npz")  # no metadata: the time step is unknown
    result = run("evaluate", tmp_path / "bare.npz", "--test-data", tmp_path / "test.npy",
                 "--lyapunov")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert _line(result.output, "lambda_max").endswith(
        "per step; pass --dt (time units per data step) for the exponent per time unit"
    )
    result = run("evaluate", tmp_path / "bare.npz", "--test-data", tmp_path / "test.npy",
                 "--lyapunov", "--dt", 0.5)  # fmt: skip
    assert f"per step = {expected / 0.5:.4g} per time unit (dt 0.5)" in result.output
    models.LinearSSM(3, 4, 5).save(tmp_path / "ssm.npz")
    for args, message in (
        ([tmp_path / "ssm.npz", "--test-data", tmp_path / "test.npy", "--lyapunov"],
         "--lyapunov needs a latent RNN (shplrnn, clipped-shplrnn, alrnn, plrnn); the model is "
         "a LinearSSM."),
        ([out, "--dt", 0.01], "--dt converts the exponent of --lyapunov; add --lyapunov"),
        ([out, "--dt", 0, "--lyapunov"], "--dt must be finite and > 0, got 0.0."),
        ([out, "--dt", "nan", "--lyapunov"], "--dt must be finite and > 0, got nan."),
    ):  # fmt: skip
        _one_error_line(run("evaluate", *args), message)


def test_evaluate_lists_the_fixed_points_of_the_model(finished_run, tmp_path):
    """--fixed-points: models.fixed_points from 256 spread test points, in data units, on
    screen (at most 10 lines) and in the JSON; refused for an SSM."""
    out = _copy_run(finished_run, tmp_path)
    model = models.load(out / "model.npz")
    result = run("evaluate", out, "--fixed-points")
    assert result.exit_code == 0, result.output
    found = json.loads((out / "evaluation.json").read_text())["fixed_points"]
    assert found["n_starts"] == 256 and len(found["points"]) == len(found["stable"]) >= 1
    mean, sd = model.standardization
    exact = model.astype("float64")  # M = N: the points are the whole states
    states = exact.initial_state((np.array(found["points"]) - mean) / sd)
    np.testing.assert_allclose(exact.step(states), states, atol=1e-9)
    lines = result.output.splitlines()
    first = lines.index(_line(result.output, "fixed points:"))
    assert lines[first] == (
        f"fixed points: {len(found['points'])} found by Newton's method from 256 test points "
        f"({found['n_converged']} converged), {sum(found['stable'])} stable (spectral radius < 1):"
    )
    where = ", ".join(f"{v:.4g}" for v in found["points"][0])
    kind = "stable" if found["stable"][0] else "unstable"
    assert lines[first + 1] == (
        f"  ({where})  {kind}, spectral radius {found['spectral_radius'][0]:.4g}"
    )

    assert len(found["on_boundary"]) == len(found["points"])
    many = {"points": [[float(k), 0.0, 1.0] for k in range(12)], "spectral_radius": [0.5] * 12,
            "stable": [True] * 12, "on_boundary": [True] + [False] * 11, "n_starts": 256,
            "n_converged": 200}  # fmt: skip
    lines = cli._orbit_lines(many, tmp_path / "e.json")
    assert len(lines) == 12 and lines[-1] == f"  ... and 2 more (all in {tmp_path / 'e.json'})"
    assert lines[1:3] == [
        "  (0, 0, 1)  stable, growth rate (on a region boundary) 0.5",
        "  (1, 0, 1)  stable, spectral radius 0.5",
    ]
    none = dict(many, points=[], spectral_radius=[], stable=[], on_boundary=[], n_converged=0)
    assert cli._orbit_lines(none, None) == [
        "fixed points: none found by Newton's method from 256 test points (0 converged)."
    ]
    np.save(tmp_path / "test.npy", cli.run_test_data(out, "evaluate")[0])
    models.LinearSSM(3, 4, 5).save(tmp_path / "ssm.npz")
    _one_error_line(
        run("evaluate", tmp_path / "ssm.npz", "--test-data", tmp_path / "test.npy",
            "--fixed-points"),
        "--fixed-points needs a latent RNN (shplrnn, clipped-shplrnn, alrnn, plrnn)",
    )  # fmt: skip


def test_evaluate_lists_the_cycles_of_the_model(tmp_path, monkeypatch):
    """--cycles K: models.cycles from 256 spread test points, each cycle's K points in data
    units in the JSON and (up to four) on its line; K < 2 and SSMs refused. The model: an
    ALRNN whose unobserved relu unit oscillates on a stable 2-cycle (tests/test_equilibria)."""
    model = models.ALRNN(2, 1, n_obs=1, seed=0)
    p = model.unflatten()
    p["A"][...], p["W"][...], p["h"][...] = [0.3, -0.5], [[0.0, 0.5], [0.0, -1.0]], [0.0, 1.0]
    model.standardization = (np.array([1.0]), np.array([2.0]))
    model.save(tmp_path / "m.npz")
    x = np.random.default_rng(0).normal(0.0, 1.0, (3000, 1))
    np.save(tmp_path / "test.npy", model.generate_in_data_units(x[0], 3000) + 0.01 * x)
    result = run("evaluate", tmp_path / "m.npz", "--test-data", tmp_path / "test.npy",
                 "--cycles", 2, "--out", tmp_path / "e.json")  # fmt: skip
    assert result.exit_code == 0, result.output
    found = json.loads((tmp_path / "e.json").read_text())["cycles"]
    assert found["period"] == 2 and found["n_starts"] == 256 and found["stable"] == [True]
    cycle = np.array(found["points"][0])  # data units: 1 + 2 z_0
    exact = models.cycles(model, (np.linspace(-3.0, 3.0, 9)[:, None] - 1.0) / 2.0, 2)
    np.testing.assert_allclose(cycle, 1.0 + 2.0 * exact["points"][0], atol=1e-9)
    assert _line(result.output, "2-cycles:") == (
        f"2-cycles: 1 found by Newton's method from 256 test points ({found['n_converged']} "
        "converged to points whose period divides 2), 1 stable (spectral radius < 1):"
    )
    shown = " -> ".join(f"({v:.4g})" for v in cycle[:, 0])
    assert f"  {shown}  stable, spectral radius 0.75" in result.output.splitlines()

    six = {"period": 6, "points": [[[k, 0.5]] * 6 for k in range(2)], "spectral_radius": [0.5, 2],
           "stable": [True, False], "on_boundary": [False, False], "n_starts": 256,
           "n_converged": 30}  # fmt: skip
    assert cli._orbit_lines(six, None) == [
        "6-cycles: 2 found by Newton's method from 256 test points (30 converged to points "
        "whose period divides 6), 1 stable (spectral radius < 1):",
        "  (0, 0.5) -> (0, 0.5) -> (0, 0.5) -> (0, 0.5) -> ... (6 points)  stable, spectral "
        "radius 0.5",
        "  (1, 0.5) -> (1, 0.5) -> (1, 0.5) -> (1, 0.5) -> ... (6 points)  unstable, spectral "
        "radius 2",
    ]
    _one_error_line(
        run("evaluate", tmp_path / "m.npz", "--test-data", tmp_path / "test.npy", "--cycles", 1),
        "--cycles must be >= 2 (fixed points: --fixed-points), got 1.",
    )
    _one_error_line(
        run("evaluate", tmp_path / "m.npz", "--test-data", tmp_path / "test.npy", "--cycles",
            10**12),
        "GiB of memory and",
    )  # fmt: skip
    models.LinearSSM(1, 4, 5).save(tmp_path / "ssm.npz")
    _one_error_line(
        run("evaluate", tmp_path / "ssm.npz", "--test-data", tmp_path / "test.npy", "--cycles", 3),
        "--cycles needs a latent RNN (shplrnn, clipped-shplrnn, alrnn, plrnn)",
    )
    # the Newton steps' M x M Jacobians count (the orbits alone were 65x too few bytes)
    monkeypatch.setattr(cli, "available_bytes", lambda: 30_000)  # the search takes 32,768
    _one_error_line(
        run("evaluate", tmp_path / "m.npz", "--test-data", tmp_path / "test.npy", "--fixed-points"),
        "this needs about 0.0 GiB of memory and 0.0 GiB are available; lower the latents (M = 2).",
    )


def test_a_run_whose_later_validations_fail_warns_that_the_kept_model_is_early(capsys):
    """Most validations after the kept epoch not measurable (free runs that blow up as the
    model trains on): one warning, with the bounded model as the fix for an unbounded one."""
    statuses = ["ok", "ok", "non_finite", "diverged", "non_finite", "ok"]
    history = [{"epoch": e} for e in range(1, 13)]
    for record, status in zip(history[1::2], statuses, strict=True):
        record["val_status"] = status
    late = cli._late_validation_failures(history, 4)
    assert late == (4, 3, {"non_finite": 2, "diverged": 1})
    cli._warn_late_failures(late, 4, cli.Settings(model="alrnn", epochs=12))
    assert capsys.readouterr().err == (
        "parscan-train: warning: 3 of the 4 validations after the kept epoch 4 (of 12) could not "
        "be measured (diverged 1, non_finite 2): the model's free runs failed as it trained on, "
        "so the kept model is an early one. Try --model clipped-shplrnn, whose free runs stay "
        "bounded.\n"
    )
    cli._warn_late_failures(late, 4, cli.Settings(model="clipped-shplrnn", epochs=12))
    assert capsys.readouterr().err.endswith("so the kept model is an early one.\n")
    for quiet in (cli._late_validation_failures(history, 8), (2, 2, {"non_finite": 2})):
        cli._warn_late_failures(quiet, 8, cli.Settings(epochs=12))  # too few, or half are fine
    assert capsys.readouterr().err == ""
    assert cli._late_validation_failures(history, None) == (0, 0, {})


def test_generate_notes_runs_that_settle_on_a_fixed_point(finished_run, tmp_path, monkeypatch):
    """A run resting on a fixed point (``models.metrics.fixed_point_onsets``) is noted with
    where and from which step it rests; how many of several do, naming the first."""
    point = np.array([1.0, -2.5, 0.125])
    one = cli._rest_note([("run 0", 30, point)], 1)
    assert one == (
        "note: run 0 settles on a fixed point at (1, -2.5, 0.125) from step 30: a spurious "
        "attractor unless the system rests there."
    )
    assert cli._rest_note([], 3) is None
    three = cli._rest_note([("run 1", 30, point)], 3)
    assert three.startswith("note: 1 of the 3 runs settles on a fixed point, first run 1 at (")
    both = cli._rest_note([("run 0", 30, point), ("run 2", 40, point)], 3)
    assert both.startswith("note: 2 of the 3 runs settle on a fixed point, first run 0 at (")

    out = _copy_run(finished_run, tmp_path)
    _rest_from_step_20(monkeypatch, type(models.load(out / "model.npz")))
    result = run("generate", out, "--n-steps", 50)
    assert result.exit_code == 0, result.output
    assert "note: the free run from test point 0 settles on a fixed point at (" in result.output
    assert ") from step 20: a spurious attractor" in result.output


def _rest_from_step_20(monkeypatch, cls):
    """Make the free runs of model class ``cls`` rest at their step 20 (a fixed point)."""
    generate = cls.generate

    def rests(self, x0, n_steps):
        runs = generate(self, x0, n_steps)
        runs[..., 20:, :] = runs[..., 19:20, :]
        return runs

    monkeypatch.setattr(cls, "generate", rests)


def test_training_notes_a_test_run_that_settles_on_a_fixed_point(tmp_path, monkeypatch):
    _rest_from_step_20(monkeypatch, models.ClippedShPLRNN)  # the model of TINY runs
    result = run(*TINY, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[-2].startswith("plots")  # written, or skipped without matplotlib
    assert lines[-1].startswith("note: the free run from test point 0 settles on a fixed point "
                                "at (")  # fmt: skip
    resting = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]["at_rest"]
    assert [(p["start"], p["step"]) for p in resting] == [(0, 20)]
    where = ", ".join(f"{v:.4g}" for v in resting[0]["point"])
    assert lines[-1].endswith(
        f"at ({where}) from step 20: a spurious attractor unless the system rests there. Score "
        f"the model from several test points: parscan-train evaluate {tmp_path / 'run'} "
        "--n-starts 8."
    )


def test_evaluate_notes_runs_that_settle_on_a_fixed_point(finished_run, tmp_path, monkeypatch):
    """``evaluate`` names the free runs that rest, in data units, on screen and in its JSON."""
    out = _copy_run(finished_run, tmp_path)
    model = models.load(out / "model.npz")
    _rest_from_step_20(monkeypatch, type(model))
    result = run("evaluate", out, "--n-starts", 2)
    assert result.exit_code == 0, result.output
    resting = json.loads((out / "evaluation.json").read_text())["at_rest"]
    second = resting[1]["start"]
    assert [(p["start"], p["step"]) for p in resting] == [(0, 20), (second, 20)] and second > 0
    where = ", ".join(f"{v:.4g}" for v in resting[0]["point"])
    assert result.output.splitlines()[-1] == (
        f"note: 2 of the 2 runs settle on a fixed point, first the free run from test point 0 "
        f"at ({where}) from step 20: a spurious attractor unless the system rests there."
    )
    test = cli.run_test_data(out, "evaluate")[0]
    mean, sd = model.standardization
    rest = model.generate(((test[second] - mean) / sd).astype(model.dtype), 30)[-1]
    np.testing.assert_allclose(resting[1]["point"], rest * sd + mean, rtol=1e-5)
