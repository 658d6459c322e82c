"""``parscan-train`` through click's CliRunner: layout, resume, evaluate, user mistakes."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

import cli
import models
import parscan

TINY = ["--n-steps", "1500", "-T", "40", "-e", "2", "--batches-per-epoch", "3", "-L", "8", "-q"]


def run(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    result = run(*TINY, "--out", out)
    assert result.exit_code == 0, result.output
    return out, result


def test_help_lists_every_option():
    result = run("--help")
    assert result.exit_code == 0
    for option in (
        "--data",
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
        "evaluate",
    ):
        assert option in result.output


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
    assert metrics["test"]["status"] in ("ok", "diverged", "non_finite", "out_of_box")
    assert metrics["best_epoch"] in (1, 2)
    args = json.loads((out / "args.json").read_text())
    assert args["settings"]["epochs"] == 2 and "numba" in args["versions"]
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


def test_evaluate_a_run_and_a_model_file(finished_run, tmp_path):
    out, _ = finished_run
    result = run("evaluate", out)
    assert result.exit_code == 0, result.output
    assert (out / "evaluation.json").is_file()
    x = models.generate("lorenz63", 800, seed=7)
    np.save(tmp_path / "test.npy", x)
    result = run("evaluate", out / "model.npz", "--test-data", tmp_path / "test.npy")
    assert result.exit_code == 0, result.output
    assert run("evaluate", out / "model.npz").exit_code == 2


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
    (tmp_path / "bad.toml").write_text("epochs = [")
    (tmp_path / "unknown.json").write_text('{"colour": "blue"}')


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "{tmp}/missing.npy"], "no such file"),
        (["--data", "{tmp}/broken.csv"], "broken.csv"),
        (["--data", "{tmp}/nan.npy"], "NaN"),
        (["--data", "{tmp}/short.npy", "-T", "200"], "too few steps"),
        (["-M", "2"], "latent dimension must be >= N"),
        (["--model", "lstm"], "lstm"),
        (["--n-relu", "2"], "--n-relu"),
        pytest.param(
            ["--backend", "cuda"],
            "cuda",
            marks=pytest.mark.skipif(
                "cuda" in parscan.available_backends(), reason="a CUDA GPU is present"
            ),
        ),
        (["--alpha", "1.5"], "alpha"),
        (["--epochs", "0"], "epochs"),
        (["--config", "{tmp}/bad.toml"], "not valid TOML"),
        (["--config", "{tmp}/unknown.json"], "colour"),
        (["--out", "/proc/parscan-cannot-write"], "cannot write"),
        (["--resume", "--out", "{tmp}/nothing"], "--resume"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(tmp_path, args, message):
    _bad_files(tmp_path)
    result = run(*[a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("parscan-train: error:")
    assert message in lines[0]
    assert "Traceback" not in result.output


def test_hidden_dim_default_depends_on_the_model():
    assert cli.resolve_settings({}, None).hidden_dim == cli.DEFAULT_HIDDEN_DIM["clipped-shplrnn"]
    assert cli.resolve_settings({"model": "linear-ssm"}, None).hidden_dim == 100
    assert cli.resolve_settings({"model": "alrnn"}, None).hidden_dim is None
    assert cli.resolve_settings({"model": "shplrnn", "hidden_dim": 7}, None).hidden_dim == 7
