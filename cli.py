"""``parscan-train``: reconstruct a dynamical system from a time series with GTF-DEER.

Parse -> resolve settings (built-in defaults < ``--config`` file < flags) -> data -> model ->
:func:`autodiff.fit` -> :func:`models.evaluate` -> one results folder. No maths lives here.
``parscan-train evaluate RUN`` scores a trained model again; ``parscan-train generate RUN``
writes its free-running trajectories in data units.

User mistakes end with one line on stderr and exit code 2; Ctrl-C saves a checkpoint and exits
with 130; internal failures (a solver that does not converge even with automatic alpha,
training that keeps producing non-finite steps) exit with 1 and say what was tried.
"""

import os
import sys

# One BLAS thread: NumPy's OpenBLAS threads otherwise fight Numba's prange threads on small
# machines (measured 10x slower SSM gradients on 2 cores). Must precede the NumPy import.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

try:
    #: run as the command (the console script, ``python cli.py``, ``python -m cli``): errors
    #: below are one line on stderr, as the command's own; imported: the library's exception
    _AS_COMMAND = __name__ == "__main__" or os.path.basename(sys.argv[0]) == "parscan-train"
    # Before numba: PARSCAN_THREADS sizes Numba's thread pool only if Numba is not imported yet.
    import parscan  # isort: skip
    import numba  # isort: skip
except ValueError as exc:  # a bad PARSCAN_THREADS, PARSCAN_CACHE or NUMBA_NUM_THREADS
    if not _AS_COMMAND:
        raise
    problem = str(exc).removeprefix("parscan: ")
    if "environment variable" not in problem:  # Numba's, which names no variable
        problem = f"NUMBA_NUM_THREADS={os.environ.get('NUMBA_NUM_THREADS')!r}: {problem}"
    sys.stderr.write(f"parscan-train: error: {problem} Fix or unset it.\n")
    raise SystemExit(2) from None
except KeyboardInterrupt:  # Ctrl-C while Numba loads (about a second): as at any other time
    if not _AS_COMMAND:
        raise
    sys.stderr.write("parscan-train: interrupted.\n")
    raise SystemExit(130) from None

import collections
import contextlib
import csv
import datetime
import difflib
import hashlib
import importlib.metadata
import io
import itertools
import json
import math
import platform
import re
import shlex
import signal
import tempfile
import time
import tomllib
import typing
import warnings
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from types import SimpleNamespace

import click
import numpy as np

from autodiff.memory import available_bytes
from models._signals import python_handles
from parscan import _env
from parscan._arguments import SEED_LIMIT, shown_int
from parscan._jit import set_threads
from parscan.scan import no_cuda_reason

MODEL_NAMES = ("shplrnn", "clipped-shplrnn", "alrnn", "plrnn", "linear-ssm", "selective-ssm")
SSM_NAMES = ("linear-ssm", "selective-ssm")
#: ``--hidden-dim`` when not given: the shPLRNN width of the tuned default recipe
#: (``bench/tune_default.py``), the SSM readout MLP's width.
DEFAULT_HIDDEN_DIM = {
    "shplrnn": 200,
    "clipped-shplrnn": 200,
    "linear-ssm": 100,
    "selective-ssm": 100,
}
#: settings passed unchanged to autodiff.TrainConfig (same names)
TRAIN_FIELDS = (
    "method",
    "jacobian",
    "alpha_method",
    "sequence_length",
    "batch_size",
    "batches_per_epoch",
    "epochs",
    "lr_start",
    "lr_end",
    "optimizer",
    "dtype",
    "backend",
    "seed",
    "validation_interval",
    "validation_steps",
    "validation_starts",
    "selection_candidates",
    "selection_starts",
    "selection_steps",
    "checkpoint_interval",
)


class UserError(click.ClickException):
    """A mistake in the command line, config file or data: one line on stderr, exit 2."""

    exit_code = 2


@dataclass(frozen=True)
class Settings:
    """Every resolved setting of a run (written to ``args.json``).

    The defaults are the embedded example: a clipped shPLRNN reconstructing Lorenz-63 with
    GTF-DEER and automatic alpha (the recipe of ``bench/tune_default.py``; README, "Default
    run"). ``data`` and ``test_data`` name one file (a string) or several (a list of two or
    more: recordings of one system, trained or scored together; see :func:`_files`).
    """

    data: str | list[str] | None = None
    data_key: str | None = None
    system: str = "lorenz63"
    n_steps: int = 100_000
    noise: float = 0.05
    test_data: str | list[str] | None = None
    test_data_key: str | None = None
    model: str = "clipped-shplrnn"
    latent_dim: int | None = None
    hidden_dim: int | None = None
    n_relu: int | None = None
    method: str = "deer"
    jacobian: str = "full"
    alpha: str = "auto"
    alpha_method: str = "geomean"
    sequence_length: int = 200
    batch_size: int = 16
    batches_per_epoch: int = 50
    epochs: int = 200
    lr_start: float = 6e-3
    lr_end: float = 1e-4
    optimizer: str = "radam"
    dtype: str = "float32"
    backend: str = "auto"
    threads: int | None = None
    seed: int = 0
    out: str | None = None
    resume: bool = False
    validation_interval: int = 2
    validation_steps: int = 25_000
    validation_starts: int = 4
    selection_candidates: int = 8
    selection_starts: int = 16
    selection_steps: int | None = None
    checkpoint_interval: int = 10
    n_bins: int = 30
    validation_fraction: float = 0.2
    test_fraction: float = 0.2
    quiet: bool = False
    verbose: bool = False


SETTING_NAMES = tuple(f.name for f in fields(Settings))
#: horizon of the prediction error in the final test evaluation (``models.evaluate``)
TEST_PE_STEPS = 20
#: ``validation_fraction`` and ``test_fraction`` must be below this (and above 0)
MAX_FRACTION = 0.9


# ------------------------------------------------------------------------------------------
# settings
# ------------------------------------------------------------------------------------------


#: settings whose values are names (lower-cased when read, like the case-insensitive flags)
CHOICE_SETTINGS = (
    "model",
    "method",
    "jacobian",
    "alpha",
    "alpha_method",
    "optimizer",
    "dtype",
    "backend",
)
#: settings that generate data, meaningless with ``--data``
GENERATOR_SETTINGS = ("system", "n_steps", "noise")
#: output flags: those of the command, never taken from a resumed run
OUTPUT_SETTINGS = ("quiet", "verbose")
#: settings a ``--resume`` may change (the rest are the run's: its data, model and training)
RESUME_MAY_CHANGE = (
    "epochs",
    "backend",
    "threads",
    "validation_interval",
    "selection_starts",
    "selection_steps",
    "checkpoint_interval",
    "out",
    "resume",
    *OUTPUT_SETTINGS,
)
#: settings that are file paths, one or several (stored absolute, so a run can be resumed
#: from anywhere)
PATH_SETTINGS = ("data", "test_data")
#: settings that name one array of an ``.npz`` file -> the setting of that file
KEY_SETTINGS = {"data_key": "data", "test_data_key": "test_data"}


def _flag(name: str) -> str:
    """The command-line option of setting ``name`` (``test_data`` -> ``--test-data``)."""
    return "--" + name.replace("_", "-")


#: the built-in default of every setting
_DEFAULTS = {f.name: f.default for f in fields(Settings)}


def _setting_type(name: str) -> tuple[type, bool, bool]:
    """The value type of a :class:`Settings` field, whether it may be None, and whether it
    may be a list of such values (several files)."""
    annotation = next(f.type for f in fields(Settings) if f.name == name)
    options = typing.get_args(annotation) or (annotation,)
    kind = next(t for t in options if t is not type(None) and typing.get_origin(t) is not list)
    return kind, type(None) in options, list[kind] in options


def _files(paths: str | list[str] | None) -> list[str]:
    """The files a path setting (``data``, ``test_data``) names: none (None), one (a string)
    or several (a list)."""
    if paths is None:
        return []
    return [paths] if isinstance(paths, str) else list(paths)


def _one_or_list(items: list):
    """``items[0]`` when there is one, else the list: a path setting of one file is its
    string, and a single file's trajectories go to ``fit`` and ``models.evaluate`` as one
    array, so a run on one file is exactly what it was before several were possible."""
    return items[0] if len(items) == 1 else list(items)


def _path_flag(paths: tuple[str, ...]) -> str | list[str] | None:
    """A repeatable path option's values (click's tuple) as the setting: None when not
    given, the path when given once, the list when repeated."""
    return _one_or_list(paths) if paths else None


def _shown(value) -> str:
    """A setting's value in a message (several files joined by commas)."""
    return ", ".join(value) if isinstance(value, list) else str(value)


def _setting_name(key) -> str:
    """The setting a config key names (``test-data`` and ``test_data`` -> ``test_data``)."""
    return str(key).replace("-", "_")


def _did_you_mean(name: str, written: str) -> str:
    """`` (did you mean hidden-dim?)`` for an unknown setting ``name`` (as written:
    ``written``) close to a known one, spelled the way it was written; else ``""``."""
    close = difflib.get_close_matches(name, SETTING_NAMES, n=1)
    if not close:
        return ""
    return f" (did you mean {close[0].replace('_', '-') if '-' in written else close[0]}?)"


def _typed_settings(raw: dict, source: str) -> dict:
    """``raw`` (a config file's or an args.json's table) checked against :class:`Settings`:
    known names (``-`` or ``_``), each given once, values of the right type."""
    config, spelled = {}, {}
    for key, value in raw.items():
        name = _setting_name(key)
        if name in config:
            raise UserError(f"{source}: {spelled[name]} and {key} are the same setting; keep one.")
        config[name], spelled[name] = value, key
    unknown = sorted(set(config) - set(SETTING_NAMES))
    if unknown:
        named = ", ".join(spelled[name] + _did_you_mean(name, spelled[name]) for name in unknown)
        raise UserError(f"{source}: unknown setting(s) {named}; known: {', '.join(SETTING_NAMES)}.")
    problems = []
    for name, value in config.items():
        kind, optional, listed = _setting_type(name)
        if name == "alpha" and isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if value is None and optional:
            continue
        if listed and isinstance(value, list) and value and all(isinstance(v, kind) for v in value):
            config[name] = _one_or_list(value)  # a list of one file is that file
            continue
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            wanted = {bool: "true or false", int: "an integer", float: "a number"}.get(
                kind, "a string"
            )
            if listed:
                wanted += " or a non-empty list of strings"
            problems.append(f"{name} must be {wanted}, got {value!r}")
            continue
        config[name] = value.lower() if name in CHOICE_SETTINGS else value
    if problems:
        raise UserError(f"{source}: " + "; ".join(problems) + ".")
    return config


class _DuplicateKey(ValueError):
    """A JSON object that gives a key twice (TOML refuses that itself)."""


def _json_loads(text: str):
    """``json.loads``, refusing an object that gives a key twice (``json`` keeps the last
    one silently; TOML refuses it): a setting given twice is a mistake, as on the command
    line."""

    def unique(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(f"the key {key!r} is given twice")
            seen.add(key)
        return dict(pairs)

    return json.loads(text, object_pairs_hook=unique)


#: config file parsers by suffix; a file with another suffix may be either
CONFIG_FORMATS = {".toml": ("TOML", tomllib.loads), ".json": ("JSON", _json_loads)}


def _read_config(path: str) -> tuple[dict, dict[str, str]]:
    """The settings table of a TOML or JSON ``--config`` file (format told by the suffix;
    another suffix is tried as TOML, then JSON), and each setting's name as written there
    (``{"test_data": "test-data"}``, for messages)."""
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix in (".yaml", ".yml"):
        raise UserError(
            f"--config {path}: YAML is not supported; write the settings as TOML "
            "(name = value lines, in a .toml file) or JSON (.json)."
        )
    try:
        text = file.read_text(encoding="utf-8-sig")  # a byte-order mark is dropped
    except OSError as exc:
        raise UserError(f"cannot read --config {path}: {exc.strerror or exc}.") from None
    except UnicodeDecodeError:
        raise UserError(f"--config {path} is not a UTF-8 text file (TOML/JSON).") from None
    formats = [CONFIG_FORMATS[suffix]] if suffix in CONFIG_FORMATS else CONFIG_FORMATS.values()
    errors = []
    for name, parse in formats:
        try:
            raw = parse(text)
            break
        except (tomllib.TOMLDecodeError, json.JSONDecodeError, _DuplicateKey) as exc:
            errors.append((name, str(exc)))
        except ValueError:  # an int beyond Python's digit limit (its advice does not apply)
            errors.append((name, "a number too long to read"))
        except RecursionError:  # arrays or tables nested thousands deep
            errors.append((name, "nested too deeply to read"))
    else:
        reasons = errors[0][1] if len(errors) == 1 else "; ".join(map(": ".join, errors))
        kinds = " or ".join(name for name, _ in errors)
        raise UserError(f"--config {path} is not valid {kinds} ({reasons}).")
    if not isinstance(raw, dict):
        raise UserError(f"--config {path} must hold a table/object of settings.")
    spelled = {_setting_name(key): str(key) for key in raw}
    return _typed_settings(raw, f"--config {path}"), spelled


def saved_settings(run: Path, what: str) -> dict:
    """The settings recorded in ``RUN/args.json`` (checked like a config file), without the
    data-generating settings that a ``--data`` run records as null (see
    :func:`_recorded_settings`).

    Parameters
    ----------
    run : Path
        A run folder written by ``parscan-train``.
    what : str
        The option or command reading it, for error messages.
    """
    path = run / "args.json"
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))["settings"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):  # bad UTF-8 or JSON
        raise UserError(f"{what}: {path} is missing or unreadable; is {run} a run?") from None
    if not isinstance(settings, dict):
        raise UserError(f"{what}: {path} has no table of settings; is {run} a run?")
    applied = {
        name: value
        for name, value in settings.items()
        if not (name in GENERATOR_SETTINGS and value is None)
    }
    return _typed_settings(applied, f"{what}: {path}")


def resolve_settings(flags: dict, config_path: str | None) -> Settings:
    """Built-in defaults < the resumed run's ``args.json`` < the config file < the flags."""
    return _resolve(flags, config_path)[0]


def _resolve(
    flags: dict, config_path: str | None
) -> tuple[Settings, dict[str, str], frozenset[str]]:
    """:func:`resolve_settings`; where the settings that the flags did not give were set
    (``{"data_key": "data-key in --config FILE"}``, named as written in that file), for the
    messages about them; and the settings this command gives (flags and config file)."""
    given = {key: value for key, value in flags.items() if value is not None}
    merged, spelled = _read_config(config_path) if config_path else ({}, {})
    if any(name in given for name in OUTPUT_SETTINGS):  # -q or -v replaces the config's choice
        merged = {name: value for name, value in merged.items() if name not in OUTPUT_SETTINGS}
    origins = {
        name: f"{spelled[name]} in --config {config_path}" for name in merged if name not in given
    }
    merged.update(given)
    if isinstance(merged.get("out"), str) and merged["out"].strip():
        # as the data paths: a config file's "~/runs/x" too (no shell expands it there)
        merged["out"] = str(_home_expanded(merged["out"], "--out"))
    this_command = set(merged)
    saved = None
    if merged.get("resume"):
        if merged.get("out") is None:
            raise UserError("--resume needs --out, the folder of the run to continue.")
        if merged["out"].strip():  # an empty --out is refused with the other problems
            saved = saved_settings(Path(merged["out"]), "--resume")
    generator = None
    if {**(saved or {}), **merged}.get("data") is not None:
        names = [name for name in GENERATOR_SETTINGS if name in merged]
        if names:
            generator = (
                f"{', '.join(_named(name, origins) for name in names)}: these settings generate "
                f"data and do not apply with --data; drop {'it' if len(names) == 1 else 'them'}"
            )
    if generator and saved is not None:  # before the comparison, which would call it a change
        raise UserError(f"{generator}.")
    if saved is not None:
        _check_resume_changes(merged, saved, Path(merged["out"]), origins)
        # the output flags are this command's own, not the resumed run's
        kept = {name: value for name, value in saved.items() if name not in OUTPUT_SETTINGS}
        record = Path(merged["out"]) / "args.json"
        origins.update(
            (name, f"{name.replace('_', '-')} recorded in {record}")
            for name in PATH_SETTINGS
            if name in kept and name not in merged
        )
        # settings the run recorded but did not use (refused since): their defaults, as the
        # checkpoint's configuration reads them (autodiff.resume)
        unused = [name for name in _unused_settings(Settings(**kept)) if name not in merged]
        merged = {**kept, **{name: _DEFAULTS[name] for name in unused}, **merged}
    for name in PATH_SETTINGS:
        if merged.get(name):
            merged[name] = _absolute_paths(merged[name])
    settings = Settings(**merged)
    if settings.hidden_dim is None and settings.model in DEFAULT_HIDDEN_DIM:
        settings = replace(settings, hidden_dim=DEFAULT_HIDDEN_DIM[settings.model])
    _check_settings(settings, origins, this_command, generator)
    return settings, origins, frozenset(this_command)


def _named(name: str, origins: dict[str, str]) -> str:
    """How messages name setting ``name``: as written in the config file that set it
    (``origins``, see :func:`_resolve`), else as its flag (a config-only setting by its
    name)."""
    if name in origins:
        return origins[name]
    return _flag(name) if any(param.name == name for param in main.params) else name


def _with_origin(name: str, value, origins: dict[str, str]) -> str:
    """Setting ``name`` and its ``value`` for a message: ``--alpha 0.3``, with where it was
    set when not by the flag (``--alpha 0.3 (alpha in --config run.toml)``)."""
    text = f"{_named(name, {})} {_shown(value)}"
    return text + (f" ({origins[name]})" if name in origins else "")


def _absolute(path: str) -> str:
    """``path`` as an absolute, normalised path (relative to the working directory, ``~``
    expanded, ``a/../b`` as ``b``): one file's spellings compare equal."""
    return os.path.normpath(_home_expanded(path, path).absolute())


def _home_expanded(path: str, named: str) -> Path:
    """``path`` with a leading ``~`` or ``~user`` expanded (:meth:`pathlib.Path.expanduser`);
    one whose home folder is unknown is a :class:`UserError` starting with ``named``."""
    try:
        return Path(path).expanduser()
    except RuntimeError:  # "Could not determine home directory."
        head = path.split(os.sep)[0]
        raise UserError(
            f"{named}: no home folder is known for {head!r}; write the path out in full."
        ) from None


def _absolute_paths(paths: str | list[str]) -> str | list[str]:
    """A path setting's file, or files, as absolute paths (:func:`_absolute`)."""
    return _one_or_list([_absolute(path) for path in _files(paths)])


def _check_resume_changes(given: dict, saved: dict, run: Path, origins: dict[str, str]) -> None:
    """Refuse settings given to ``--resume`` (flags or config: ``origins``, see
    :func:`_resolve`) that differ from the run's ``args.json`` and may not change
    (:data:`RESUME_MAY_CHANGE`); a setting the run does not record (added since, e.g.
    ``n_bins``) had its default."""

    def recorded(name):
        return saved.get(name, _DEFAULTS[name])

    def same(name):
        old, new = recorded(name), given[name]
        if name in PATH_SETTINGS and old and new:  # the same files in the same order
            return _absolute_paths(old) == _absolute_paths(new)
        if name == "alpha":  # as written: 0.30 and 3e-1 are the alpha 0.3 of the run
            return old == new or _float_or_nan(old) == _float_or_nan(new)
        return old == new

    changed = [n for n in given if n not in RESUME_MAY_CHANGE and not same(n)]
    if changed:
        may_change = [
            _named(n, {}) for n in RESUME_MAY_CHANGE if n not in ("out", "resume", *OUTPUT_SETTINGS)
        ]
        shown = ", ".join(
            f"{_with_origin(n, given[n], origins)} (the run's: "
            f"{'none' if recorded(n) is None else _shown(recorded(n))})"
            for n in changed
        )
        raise UserError(
            f"--resume continues the run in {run} with its own data, model and training "
            f"settings; {shown} would change them. Drop "
            f"{'it' if len(changed) == 1 else 'them'}, or start a new run in another --out "
            f"(only {', '.join(may_change)} and the output flags may change)."
        )


def _array_key_problem(s: Settings, name: str, origin: str | None) -> str | None:
    """What is wrong with the array key setting ``name`` (``data_key``/``test_data_key``,
    the array of every ``.npz`` among its files, so each of them must be one), with the fix
    where it was set: the flag (``origin`` None) or a config file (``origin`` says where)."""
    key, files = getattr(s, name), _files(getattr(s, KEY_SETTINGS[name]))
    others = [file for file in files if Path(file).suffix.lower() != ".npz"]
    if key is None or (files and not others):
        return None
    file_option = _flag(KEY_SETTINGS[name])
    if origin is None:
        option, fix = _flag(name), f"drop {_flag(name)}"
    else:
        option, fix = f"{_flag(name)} {key} ({origin})", "remove it from that file"
    if not files:
        return f"{option} names an array in the {file_option} .npz file; add {file_option} or {fix}"
    named = f"{file_option} {', '.join(others)}"
    verb = "is not one" if len(others) == 1 else "are not .npz files"
    return f"{option} names an array in an .npz file; {named} {verb}, {fix}"


def _check_settings(
    s: Settings, origins: dict[str, str], given: typing.Collection[str], generator: str | None
) -> None:
    """Refuse settings that cannot run, all problems in one message (a missing file first);
    ``origins``: where the settings that the flags did not give were set (see
    :func:`_resolve`); ``given``: the settings this command sets (flags and config file),
    refused where the run would not use them even at their defaults; ``generator``: the
    problem of data-generating settings given with ``--data``, or None."""
    problems = [
        *_source_problems(s, origins, generator),
        *_applicability_problems(s, origins, given),
        *_integer_problems(s, origins),
        *_number_problems(s, origins, given),
    ]
    if s.out is not None and not s.out.strip():
        problems.append(
            "--out must not be empty (without --out the run goes to runs/<data>-<model>-<time>)"
        )
    if s.quiet and s.verbose:
        problems.append("-q/--quiet and -v/--verbose contradict each other; pick one")
    if s.backend == "cuda" and "cuda" not in parscan.available_backends():
        problems.append(
            f"--backend cuda is not available here ({no_cuda_reason()}); available: "
            + ", ".join(parscan.available_backends())
        )
    if problems:
        raise UserError("; ".join(problems) + ".")


def _source_problems(s: Settings, origins: dict[str, str], generator: str | None) -> list[str]:
    """:func:`_check_settings`'s problems of files and named choices: a missing file, the
    data-generating settings given with ``--data`` (``generator``), an unknown system, a
    config file's value outside a flag's choices."""
    from models.systems import SYSTEMS

    problems = [
        f"{_named(name, origins)}: no such file {file}"
        for name in PATH_SETTINGS
        for file in _files(getattr(s, name))
        if not Path(file).exists()
    ]
    if generator:
        problems.append(generator)
    if s.data is None and s.system not in SYSTEMS:
        named = _with_origin("system", s.system, origins)
        problems.append(f"{named}: unknown system; known: {', '.join(SYSTEMS)}")
    for param in main.params:  # values a config file set (the flags' Click checked)
        value = getattr(s, param.name, None)
        if isinstance(param.type, click.Choice) and value is not None:
            if value not in param.type.choices:
                named = _with_origin(param.name, value, origins)
                problems.append(f"{named}: choose one of {', '.join(param.type.choices)}")
    return problems


def _applicability_problems(
    s: Settings, origins: dict[str, str], given: typing.Collection[str]
) -> list[str]:
    """:func:`_check_settings`'s problems of settings given where they do not apply (a
    hidden width or ``n_relu`` to another model, training settings the method does not use)
    and of array keys that do not fit the files."""
    problems = []
    if s.hidden_dim is not None and s.model not in DEFAULT_HIDDEN_DIM:
        named = _with_origin("hidden_dim", s.hidden_dim, origins)
        problems.append(f"{named}: it applies to {', '.join(DEFAULT_HIDDEN_DIM)}, not {s.model}")
    for name in KEY_SETTINGS:
        key_problem = _array_key_problem(s, name, origins.get(name))
        if key_problem:
            problems.append(key_problem)
    if s.n_relu is not None and s.model != "alrnn":
        named = _with_origin("n_relu", s.n_relu, origins)
        problems.append(f"{named}: it applies to --model alrnn only, not {s.model}")
    inapplicable = _inapplicable_training_settings(s, origins, given)
    if inapplicable:
        problems.append(inapplicable)
    return problems


def _integer_problems(s: Settings, origins: dict[str, str]) -> list[str]:
    """:func:`_check_settings`'s problems of the counts, sizes, step numbers and the seed."""
    from autodiff.config import MIN_SCORED_STEPS
    from models.metrics import REST_MIN_POINTS

    problems = []
    for name in (
        "n_steps",
        "sequence_length",
        "batch_size",
        "batches_per_epoch",
        "epochs",
        "validation_interval",
        "validation_steps",
        "validation_starts",
        "selection_candidates",
        "selection_starts",
        "checkpoint_interval",
        "n_bins",
    ):
        value = getattr(s, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            problems.append(f"{_named(name, origins)} must be a positive integer, got {value!r}")
        elif name == "validation_steps" and value < MIN_SCORED_STEPS:
            problems.append(
                f"{_named(name, origins)} must be >= {MIN_SCORED_STEPS} (D_H compares spectra "
                f"of at least {MIN_SCORED_STEPS} points), got {value}"
            )
    for name in ("latent_dim", "hidden_dim", "n_relu", "threads"):
        value = getattr(s, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            problems.append(f"{_named(name, origins)} must be an integer, got {value!r}")
        elif value is not None and value < 1:
            problems.append(f"{_named(name, origins)} must be >= 1, got {value}")
    steps = s.selection_steps
    if steps is not None and (
        isinstance(steps, bool) or not isinstance(steps, int) or steps < REST_MIN_POINTS
    ):
        problems.append(
            f"{_named('selection_steps', origins)} must be an integer >= {REST_MIN_POINTS} (a "
            f"run rests for at least {REST_MIN_POINTS} points), got {steps!r}"
        )
    seed = s.seed
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT // 10:
        shown = shown_int(seed) if isinstance(seed, int) else repr(seed)
        problems.append(
            f"{_named('seed', origins)} must be an integer >= 0 of at most 4299 digits (a "
            f"seed has at most 4300, and generated test data take seed + 1), got {shown}"
        )
    return problems


def _number_problems(
    s: Settings, origins: dict[str, str], given: typing.Collection[str]
) -> list[str]:
    """:func:`_check_settings`'s problems of the real-valued settings: learning rates and
    their ratio, alpha, the held-out fractions (and a ``test_fraction`` given where nothing is
    held out), the noise level."""
    from autodiff.optim import lr_ratio_problem

    problems = []
    rates = []
    for name in ("lr_start", "lr_end"):
        value = getattr(s, name)
        if isinstance(value, bool) or not 0.0 < _float_or_nan(value) < float("inf"):
            problems.append(f"{_named(name, origins)} must be a positive number, got {value!r}")
        else:
            rates.append(float(value))
    if len(rates) == 2:
        names = (_named("lr_start", origins), _named("lr_end", origins))
        ratio = lr_ratio_problem(*rates, names)
        if ratio:
            problems.append(ratio.removesuffix("."))
    if s.alpha != "auto" and not 0.0 <= _float_or_nan(s.alpha) <= 1.0:
        problems.append(
            f"{_named('alpha', origins)} must be 'auto' or a number in [0, 1], got {s.alpha!r}"
        )
    holds_out = s.data is not None and not s.test_data  # test_fraction applies
    for name in ("validation_fraction", "test_fraction")[: 2 if holds_out else 1]:
        if not 0.0 < getattr(s, name) < MAX_FRACTION:
            problems.append(
                f"{_named(name, origins)} must be in (0, {MAX_FRACTION}), got {getattr(s, name)}"
            )
    if "test_fraction" in given and not holds_out:
        instead = "--test-data gives the test data" if s.test_data else "--system generates it"
        problems.append(
            f"{_with_origin('test_fraction', s.test_fraction, origins)}: it holds test data out "
            f"of --data, and {instead}; drop it"
        )
    if not 0.0 <= s.noise < 10:
        problems.append(f"{_named('noise', origins)} must be in [0, 10), got {s.noise}")
    return problems


def _float_or_nan(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")


def _train_fields(s: Settings) -> dict:
    """The :class:`autodiff.TrainConfig` fields these settings give (``--n-bins`` sets
    ``validation_n_bins``; ``--alpha`` sets ``alpha_mode``, and ``alpha`` unless it is
    ``auto``)."""
    kwargs = {name: getattr(s, name) for name in TRAIN_FIELDS}
    kwargs["validation_n_bins"] = s.n_bins
    if s.alpha == "auto":
        kwargs["alpha_mode"] = "auto"
    else:
        kwargs.update(alpha_mode="constant", alpha=_float_or_nan(s.alpha))
    return kwargs


def train_config(s: Settings, n_obs: int):
    """The :class:`autodiff.TrainConfig` of these settings for data of ``n_obs`` dimensions
    (refused when ``--n-bins`` is too large for them: validation and the test score could
    not bin D_stsp)."""
    from autodiff import TrainConfig
    from models.metrics import check_n_bins

    try:
        config = TrainConfig(**_train_fields(s))
        check_n_bins(s.n_bins, n_obs, where="--n-bins", fix="lower --n-bins")
    except (TypeError, ValueError) as exc:
        raise UserError(str(exc)) from None
    return config


def _unused_settings(s: Settings, given: typing.Collection[str] = ()) -> list[str]:
    """The settings a run with ``s`` would not use (:func:`autodiff.config.unused_fields`, the
    rule :func:`autodiff.fit` applies: the GTF-DEER ones for a state-space model, the Newton
    ones for ``--method sequential``, the selection check's with one candidate), by their
    :class:`Settings` names: those not at their defaults
    (:func:`autodiff.config.inapplicable_settings`), and those in ``given`` (set by this
    command's flags or config file) whatever their values."""
    from autodiff.config import TrainConfig, inapplicable_settings, unused_fields

    defaults = {f.name: f.default for f in fields(TrainConfig)}
    config = SimpleNamespace(**{**defaults, **_train_fields(s)})
    latent_rnn = s.model not in SSM_NAMES
    off_default = set(inapplicable_settings(config, latent_rnn))
    unused = unused_fields(
        config.method, latent_rnn, config.alpha_mode, config.selection_candidates
    )
    named = {field: "alpha" if field == "alpha_mode" else field for field in unused}
    return list(dict.fromkeys(named[f] for f in unused if f in off_default or named[f] in given))


def _inapplicable_training_settings(
    s: Settings, origins: dict[str, str], given: typing.Collection[str]
) -> str | None:
    """:func:`_unused_settings` (``given``: the settings this command sets) as a problem, each
    named by its flag and where it was set when not by the flag (``origins``), or None."""
    from autodiff.config import AUTO_ALPHA_SETTINGS, SELECTION_SETTINGS

    shown = _unused_settings(s, given)
    selection = [name for name in shown if name in SELECTION_SETTINGS]
    shown = [name for name in shown if name not in SELECTION_SETTINGS]
    if s.model in SSM_NAMES:
        groups = [(shown, f"the latent RNNs (GTF-DEER), not {s.model}")]
    else:
        groups = [
            (
                [name for name in shown if name not in AUTO_ALPHA_SETTINGS],
                "--method deer (the sequential method runs no Newton iterations or scans)",
            ),
            (
                [name for name in shown if name in AUTO_ALPHA_SETTINGS],
                "--alpha auto (a fixed --alpha is never re-estimated)",
            ),
        ]
    groups.append(
        (selection, "selection_candidates > 1 (one candidate is kept unchecked, without free runs)")
    )
    clauses = []
    for names, scope in groups:
        if names:
            named = ", ".join(_with_origin(name, getattr(s, name), origins) for name in names)
            verb, pronoun = ("it applies", "it") if len(names) == 1 else ("they apply", "them")
            clauses.append(f"{named}: {verb} to {scope}; drop {pronoun}")
    return "; ".join(clauses) or None


# ------------------------------------------------------------------------------------------
# data and model
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    """Training, validation and test trajectories in data units, and where they came from.

    One recording (the generated trajectory, or one ``--data`` file) gives one part of each
    kind; several ``--data`` files give a training and a validation part per file, and a
    test trajectory per file (its held-out tail) or per ``--test-data`` file.
    """

    train_parts: list[np.ndarray]
    validation_parts: list[np.ndarray]
    test_parts: list[np.ndarray]
    source: str
    #: the header names of the (first) ``--data`` file; None: generated data, no header
    columns: list[str] | None = None

    @property
    def train(self) -> np.ndarray | list[np.ndarray]:
        """The training data as :func:`autodiff.fit` takes them: one trajectory, or a list."""
        return _one_or_list(self.train_parts)

    @property
    def validation(self) -> np.ndarray | list[np.ndarray]:
        """The validation data as ``fit(validation_data=...)`` takes them."""
        return _one_or_list(self.validation_parts)

    @property
    def test(self) -> np.ndarray | list[np.ndarray]:
        """The test data as :func:`models.evaluate` takes them."""
        return _one_or_list(self.test_parts)

    @property
    def n_obs(self) -> int:
        """The number of observed dimensions N."""
        return self.train_parts[0].shape[1]


def _load(path: str, what: str, key: str | None = None, origin: str | None = None) -> np.ndarray:
    """``load_data`` for option ``what`` (``--data`` or ``--test-data``), reading the array
    ``key`` of an .npz, given by option ``what``-key (``origin`` None) or a config file
    (``origin`` says where, as :func:`_resolve` does)."""
    from models.data import ArrayChoiceError, load_data

    try:
        return load_data(path, key=key)
    except ArrayChoiceError as exc:
        n = len(exc.names)
        arrays = f"{n} array{'s' * (n != 1)} ({', '.join(exc.names)})"
        if origin is not None:
            message = (
                f"{what}-key {key} ({origin}): {path} has no such array; it holds {arrays}. "
                f"Change it in that file or override it with {what}-key KEY."
            )
        elif key is not None:
            message = f"{what}-key {key}: {path} has no such array; it holds {arrays}."
        else:
            message = f"{what}: {path} holds {arrays}; choose one with {what}-key KEY."
        raise UserError(message) from None
    except (TypeError, ValueError) as exc:  # "load_data: ..." becomes "--data: ..."
        raise UserError(f"{what}: {str(exc).removeprefix('load_data: ')}") from None


def _load_files(s: Settings, name: str, origins: dict[str, str] | None = None) -> list:
    """The arrays of the files of path setting ``name`` (``data`` or ``test_data``), each
    read by :func:`_load`, the array of an ``.npz`` named by the key setting (``data_key``,
    ``test_data_key``; ``origins``: see :func:`prepare_data`)."""
    key_name = f"{name}_key"
    key, origin = getattr(s, key_name), (origins or {}).get(key_name)
    return [_load(file, _flag(name), key, origin) for file in _files(getattr(s, name))]


def _labels(option: str, files: list[str]) -> list[str]:
    """How messages name each of the ``files`` given to ``option``: by the option alone when
    there is one (as before several were possible), else with its file (``--data b.npy``)."""
    return [option] if len(files) == 1 else [f"{option} {file}" for file in files]


def _check_dimensions(
    arrays: list, labels: list[str], n_dims: int, reference: str, fix: str = ""
) -> None:
    """Refuse the ``arrays`` (named by ``labels``) that do not have the ``n_dims`` columns
    of ``reference`` (the words for the data they must match), all of them at once, with
    ``fix`` (a clause) when given."""
    wrong = [
        f"{label} has {x.shape[1]} dimension{'s' * (x.shape[1] != 1)}"
        for label, x in zip(labels, arrays, strict=True)
        if x.shape[1] != n_dims
    ]
    if wrong:
        raise UserError(f"{', '.join(wrong)} but {reference} has {n_dims}{fix}.")


def _split(x: np.ndarray, fraction: float, what: str, min_steps: int):
    """``x`` without its last ``round(fraction T)`` steps, and those steps (at least
    ``min_steps``)."""
    T = x.shape[0]
    n_tail = round(fraction * T)
    if n_tail < min_steps or T - n_tail < 2:
        fix = "provide more data"
        if n_tail < min_steps and round(MAX_FRACTION * T) >= min_steps and T - min_steps >= 2:
            fix += " or raise the fraction"  # a fraction below MAX_FRACTION holds enough
        elif n_tail >= min_steps:
            fix += " or lower the fraction"
        else:  # no fraction can: more data only
            fix = (
                f"provide at least {max(math.ceil(min_steps / MAX_FRACTION), min_steps + 2)} steps"
            )
        raise UserError(
            f"too few steps: {what} needs at least {min_steps} of the {T} steps "
            f"({fraction:g} of them is {n_tail}); {fix}."
        )
    return x[:-n_tail], x[-n_tail:]


def _check_test(test: np.ndarray, what: str) -> None:
    """Refuse test data the final evaluation could not score (before training, not after)."""
    from models.data import check_trajectory

    if test.shape[0] < TEST_PE_STEPS + 1:
        raise UserError(
            f"{what} has {test.shape[0]} steps; the evaluation's PE({TEST_PE_STEPS}) needs at "
            f"least {TEST_PE_STEPS + 1}; provide more test data."
        )
    try:
        check_trajectory(test[1:], what, name="the test data after its first step")
    except (TypeError, ValueError) as exc:
        raise UserError(str(exc)) from None


def prepare_data(s: Settings, origins: dict[str, str] | None = None) -> Dataset:
    """Load or generate the data; split validation (and test, without ``--test-data``) off
    each recording: the generated trajectory, or each ``--data`` file, whose problems are
    named by it when there are several (``--data b.npy: ...``). ``origins``: where the
    settings that no flag gave were set (see :func:`_resolve`)."""
    origins = origins or {}
    files = _files(s.data)
    tests, columns = None, None
    if files:
        recordings = _load_files(s, "data", origins)
        _check_distinct(files)
        columns = _header_names(files[:1])[0]
        _warn_if_other_columns("--data", files[1:], columns, f"--data {files[0]}'s")
        labels = _labels("--data", files)
        _check_dimensions(
            recordings[1:],
            labels[1:],
            recordings[0].shape[1],
            labels[0],
            "; all --data files must record the same variables, in the same columns",
        )
        source = f"file{'s' * (len(files) > 1)} {', '.join(files)}"
        source += "" if s.data_key is None else f", array {s.data_key}"
    else:
        x, test, source = _generated(s)
        recordings = [x]
        if test is not None:
            _check_test(test, f"the generated test data (--n-steps {s.n_steps})")
            tests = [test]
    if s.test_data is not None:
        tests = _test_files_data(s, recordings[0].shape[1], columns, origins)
    held_out = tests is None
    named_by = files if len(files) > 1 else [None]  # one recording: the messages as they were
    parts = [
        _split_recording(x, s, origins, held_out, file)
        for x, file in zip(recordings, named_by, strict=True)
    ]
    train, validation, tails = (list(part) for part in zip(*parts, strict=True))
    if held_out:
        tests = tails
        steps = " + ".join(str(test.shape[0]) for test in tests)
        source += f" (last {steps} steps held out as test data)"
    return Dataset(train, validation, tests, source, columns)


def _generated(s: Settings) -> tuple[np.ndarray, np.ndarray | None, str]:
    """The trajectory ``--system`` generates, its test trajectory (from another initial
    condition; None with ``--test-data``) and the words for their source."""
    from models import SYSTEMS, generate

    copies = 1 if s.test_data else 2  # the training and the test trajectory
    _check_memory(copies * s.n_steps * SYSTEMS[s.system].dim * 8, "--n-steps")
    try:
        x = generate(s.system, s.n_steps, seed=s.seed, noise=s.noise)
        test = None if s.test_data else generate(s.system, s.n_steps, seed=s.seed + 1)
    except (TypeError, ValueError) as exc:
        raise UserError(str(exc)) from None
    return x, test, f"system {s.system}, {s.n_steps} steps, noise {s.noise:g}, seed {s.seed}"


def _check_distinct(files: list[str], option: str = "--data") -> None:
    """Refuse a file of ``option`` (``--data``, ``--test-data``) given twice (the same file
    under two names too): its recording would be trained on and scored twice, or its test
    trajectory count twice in the score."""
    use = "trained on and scored" if option == "--data" else "scored"
    for k, file in enumerate(files):
        for earlier in files[:k]:
            if _same_file(file, earlier):
                also = "" if file == earlier else f" (also as {option} {earlier})"
                raise UserError(
                    f"{option} {file} is given twice{also}: its recording would be {use} "
                    "twice; give each file once (several arrays of one .npz: save each to a "
                    "file of its own)."
                )


def _test_files_data(
    s: Settings, n_dims: int, columns: list[str] | None, origins: dict[str, str]
) -> list[np.ndarray]:
    """The ``--test-data`` arrays, each refused (named by its file when there are several)
    unless it has the training data's ``n_dims`` dimensions and can be scored; a file whose
    header names differ from the training data's ``columns`` warns."""
    tests = _load_files(s, "test_data", origins)
    _check_distinct(_files(s.test_data), "--test-data")
    labels = _labels("--test-data", _files(s.test_data))
    _check_dimensions(tests, labels, n_dims, "the training data")
    for label, test in zip(labels, tests, strict=True):
        _check_test(test, label)
    _warn_if_training_data(_files(s.test_data), s.test_data_key, s, "also a --data file")
    _warn_if_other_columns("--test-data", _files(s.test_data), columns, "the training data's")
    return tests


def _same_file(a: str, b: str) -> bool:
    """Whether paths ``a`` and ``b`` name one file (False when either is gone: a run's
    training file may have moved since)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _warn_if_training_data(files: list[str], key: str | None, s: Settings, what: str) -> None:
    """Warn for each test file among ``files`` (with the array key ``key``) that holds the
    training data of settings ``s`` (the same file, and for an ``.npz`` the same key), ``what``
    it is called."""
    for file in files:
        same_array = Path(file).suffix.lower() != ".npz" or key == s.data_key
        if same_array and any(_same_file(file, data) for data in _files(s.data)):
            _warn(
                f"--test-data {file} is {what}: the model trains and is selected on it, so its "
                "test score measures the fit, not how well the model generalises to data it "
                "has not seen."
            )


def _header_names(files: list[str]) -> list[list[str] | None]:
    """The header names of each of ``files`` (:func:`models.data.column_names`; None for a
    file without a header and for NumPy files)."""
    from models.data import column_names

    return [column_names(file) for file in files]


def _warn_if_other_columns(
    option: str, files: list[str], reference: list[str] | None, what: str
) -> None:
    """Warn for each of ``files`` (given to ``option``) whose header names differ from
    ``reference`` (the names of ``what``, e.g. the training data; nothing to compare when
    either has no header): the same variables in another order would be scored, or trained
    on, as other variables."""
    if reference is None:
        return
    for file, names in zip(files, _header_names(files), strict=True):
        if names is not None and names != reference:
            order = " in another order" * (sorted(names) == sorted(reference))
            _warn(
                f"{option} {file} names its columns {', '.join(names)}; {what} are "
                f"{', '.join(reference)}{order}: columns are matched by position, so these "
                "are read as the same variables. Reorder the columns if they differ."
            )


def _warn_if_run_data(run: Path, files: list[str], key: str | None) -> None:
    """``evaluate``'s warnings for test ``files`` (array key ``key``) of the run in folder
    ``run``: one that is the run's training data, one whose header names other columns than
    the run's training data (``data_columns`` of its ``args.json``: null without a header,
    for generated data and runs recorded before)."""
    _warn_if_training_data(files, key, run_settings(run, "evaluate"), "the run's --data file")
    columns = json.loads((run / "args.json").read_text(encoding="utf-8")).get("data_columns")
    if isinstance(columns, list) and all(isinstance(c, str) for c in columns):
        _warn_if_other_columns("--test-data", files, columns, "the run's training data's")


def _split_recording(
    x: np.ndarray, s: Settings, origins: dict[str, str], hold_out_test: bool, file: str | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One recording's training and validation parts and, with ``hold_out_test``, its
    held-out test tail (else None), each refused unless long enough for its use; ``file``:
    the ``--data`` file it came from when there are several, which a refusal then names."""
    try:
        test = None
        if hold_out_test:
            held_out = _fraction("test_fraction", s, origins)
            what = f"the test data held out from --data ({held_out})"
            x, test = _split(x, s.test_fraction, what, TEST_PE_STEPS + 1)
            _check_test(test, what)
        what = f"validation ({_fraction('validation_fraction', s, origins)})"
        train, validation = _split(x, s.validation_fraction, what, 3)
        if train.shape[0] < s.sequence_length + 1:
            raise UserError(
                f"too few steps: the training part has {train.shape[0]} steps (after holding "
                f"out validation/test data) but --sequence-length {s.sequence_length} needs "
                f"{s.sequence_length + 1}; use a shorter --sequence-length or more data."
            )
    except UserError as exc:
        if file is None:
            raise
        raise UserError(f"--data {file}: {exc.message}") from None
    return train, validation, test


def _fraction(name: str, s: Settings, origins: dict[str, str]) -> str:
    """A fraction setting for a message: where a config file set it, else its value as the
    default and that a config file changes it (no flag does)."""
    return origins.get(name, f"{name} {getattr(s, name):g}, the default; a --config file sets it")


def warn_if_far(test: np.ndarray, mean: np.ndarray, sd: np.ndarray, what: str) -> bool:
    """Warn (one line) when test data look like another scale than the training data's, and
    say whether it warned.

    The test data are standardised with the training data's mean and sd, so test data in
    other units (e.g. a file standardised already, for raw training data) leave every free run
    outside their box; :func:`models.data.far_dimensions` says which dimensions look so (a
    genuine change of regime can too, hence a warning, not an error).

    Parameters
    ----------
    test : ndarray, shape (T, N)
        The test data in data units.
    mean, sd : ndarray, shape (N,)
        The training data's mean and sd (the model's standardisation).
    what : str
        The test data, for the message (``--test-data FILE``).
    """
    from models.data import far_dimensions

    far, test_mean, test_sd = far_dimensions(test, mean, sd)
    if far.size == 0:
        return False
    d = far[0]
    others = f" and {far.size - 1} other dimension{'s' * (far.size > 2)}" if far.size > 1 else ""
    _warn(
        f"{what} lies far from the training data in dimension {d} (mean {test_mean[d]:.3g}, "
        f"sd {test_sd[d]:.3g}; training data: mean {mean[d]:.3g}, sd {sd[d]:.3g}){others}; are "
        "both in the same units (one of them standardised)?"
    )
    return True


def _warn_if_far_files(files: list[str], tests: list, mean: np.ndarray, sd: np.ndarray) -> bool:
    """:func:`warn_if_far` for the data of each ``--test-data`` file (``tests[k]`` from
    ``files[k]``, in data units); whether any warned."""
    warned = [
        warn_if_far(test, mean, sd, f"--test-data {file}")
        for file, test in zip(files, tests, strict=True)
    ]
    return any(warned)


#: the start of a failure's explanation when the test data were found far from the training
#: data (:func:`warn_if_far`): a failed score may measure the units, not the model
FAR_TEST_DATA = (
    "--test-data lies far from the training data (warned above); if the two are in different "
    "units, the score measures that, not the model: "
)


def fingerprint(x: np.ndarray) -> dict:
    """Shape, dtype and SHA-256 of the bytes (C order) of array ``x``: what ``args.json``
    records of test data read from a file, so ``evaluate RUN`` can tell if they changed."""
    x = np.ascontiguousarray(x)
    return {
        "shape": list(x.shape),
        "dtype": str(x.dtype),
        "sha256": hashlib.sha256(x.data).hexdigest(),
    }


def _test_files(s: Settings) -> list[str]:
    """The files the test data of settings ``s`` are read from, one per test trajectory:
    the ``--test-data`` files, else the ``--data`` files (their held-out tails); none for
    generated test data."""
    return _files(s.test_data) or _files(s.data)


def _fingerprints(s: Settings, tests: list[np.ndarray]) -> dict | list[dict] | None:
    """What ``args.json`` records of the test data ``tests`` (in data units, one per
    :func:`_test_files`) as ``test_data_fingerprint``: the :func:`fingerprint` of one file's,
    a list of them for several files', None for generated test data (the settings define
    them)."""
    if not _test_files(s):
        return None
    return _one_or_list([fingerprint(test) for test in tests])


def _changed_test_file(s: Settings, tests: list[np.ndarray], args: Path) -> str | None:
    """The first of the files of :func:`_test_files` whose test data now (``tests``)
    differ from the fingerprint that ``args`` (a run's ``args.json``) records for it, or
    None; runs recorded before fingerprints were (none recorded) are not checked."""
    recorded = json.loads(args.read_text(encoding="utf-8")).get("test_data_fingerprint")
    if recorded is None:
        return None
    recorded = [recorded] if isinstance(recorded, dict) else list(recorded)
    now = [fingerprint(test) for test in tests]
    for k, file in enumerate(_test_files(s)):
        if k >= min(len(recorded), len(now)) or recorded[k] != now[k]:
            return file
    return None


def _check_resumed_test_data(s: Settings, run: Path, tests: list[np.ndarray]) -> None:
    """Refuse a ``--resume`` whose test data ``tests`` read from files differ from those
    recorded in the run's ``args.json`` (:func:`fingerprint`; the training and validation
    data are ``fit``'s to check), naming the file: the run's test score and ``evaluate RUN``
    use them. Runs recorded before fingerprints are not checked."""
    args = run / "args.json"
    changed = _changed_test_file(s, tests, args)
    if changed is not None:
        raise UserError(
            f"--resume: the test data from {changed} differ from those the run was started "
            f"with (shape, SHA-256 recorded in {args}); resume with the run's test data, or "
            "start a new run."
        )


def run_settings(run: Path, command: str) -> Settings:
    """The settings of the run in folder ``run`` (its ``args.json``, read for subcommand
    ``command``, which its errors name), those it does not record (added since) at their
    defaults, as a new run's (no ``--out``, no ``--resume``)."""
    return Settings(**{**saved_settings(run, command), "out": None, "resume": False})


def run_test_data(
    run: Path, command: str, remedy: str = "pass --test-data FILE to score other data"
) -> list[np.ndarray]:
    """The test data of the run in folder ``run``, rebuilt from its ``args.json`` as training
    built them, in data units: one trajectory per test file (the ``--test-data`` files, or
    the held-out tails of the ``--data`` files), or the generated one.

    Test data read from files must match the fingerprints recorded at training time (a
    refusal names the first file that changed or is gone, and ends with ``remedy``); runs
    written before fingerprints were recorded are not checked. Generated test data are
    defined by the run's settings and not fingerprinted. ``command``: the subcommand reading
    them, which errors about ``args.json`` name.
    """
    s = run_settings(run, command)
    args = run / "args.json"
    missing = [file for file in _test_files(s) if not Path(file).exists()]
    if missing:
        raise UserError(
            f"the run's data file {missing[0]} (recorded in {args}) is missing; {remedy}."
        )
    try:
        tests = (
            _load_files(s, "test_data") if s.test_data is not None else prepare_data(s).test_parts
        )
    except UserError as exc:  # a file changed since training so that it no longer loads
        raise UserError(
            f"the run's data files (recorded in {args}) no longer load as in training: "
            f"{exc.message.rstrip('.')}; {remedy}."
        ) from None
    changed = _changed_test_file(s, tests, args)
    if changed is not None:
        raise UserError(
            f"the run's data file {changed} changed since training: the test data it gives "
            f"now differ from those recorded in {args} (shape, SHA-256); {remedy}."
        )
    return tests


def build_model(s: Settings, n_obs: int):
    """The untrained model named by ``--model`` for ``n_obs`` observed dimensions."""
    import models

    latent = _latent_size(s, n_obs)
    if s.model not in SSM_NAMES and latent < n_obs:
        raise UserError(
            f"the data have N = {n_obs} dimensions but --latent-dim/-M is {latent}; "
            f"the latent dimension must be >= N."
        )
    common = {"dtype": s.dtype, "seed": s.seed}
    try:
        if s.model == "shplrnn":
            return models.ShPLRNN(latent, s.hidden_dim, n_obs, **common)
        if s.model == "clipped-shplrnn":
            return models.ClippedShPLRNN(latent, s.hidden_dim, n_obs, **common)
        if s.model == "alrnn":
            n_relu = latent if s.n_relu is None else s.n_relu
            if n_relu > latent:
                raise UserError(
                    f"--n-relu {n_relu} must not exceed the latent dimension --latent-dim/-M "
                    f"({latent}): the ALRNN's ReLU units are among its latents."
                )
            return models.ALRNN(latent, n_relu, n_obs, **common)
        if s.model == "plrnn":
            return models.PLRNN(latent, n_obs, **common)
        cls = models.LinearSSM if s.model == "linear-ssm" else models.SelectiveSSM
        return cls(n_obs, latent, s.hidden_dim, **common)
    except (TypeError, ValueError) as exc:
        raise UserError(str(exc)) from None


def _latent_size(s: Settings, n_obs: int) -> int:
    """The latent dimension M of the model of settings ``s`` for ``n_obs``-dimensional data:
    ``--latent-dim``, else N for a latent RNN and a state size of 32 for an SSM."""
    if s.latent_dim is not None:
        return s.latent_dim
    return 32 if s.model in SSM_NAMES else n_obs


#: float64 M x M temporaries of a latent RNN's initialisation (``R``, ``R^T R``, its scaled
#: copy, the identity and their sum in ``models._plrnn_kernels.normalized_positive_definite``)
INIT_TEMPORARIES = 5


def _check_init_memory(s: Settings, n_obs: int, origins: dict[str, str]) -> None:
    """Refuse (:func:`_check_memory`, before the model is built) an initialisation that would
    not fit in the memory available now: a latent RNN's :data:`INIT_TEMPORARIES` float64
    M x M temporaries, and the M x L and L x M weights of a hidden layer of width L (float64),
    for ``n_obs``-dimensional data. ``origins``: see :func:`_resolve` (the message names a
    setting where it was set)."""
    M, L = _latent_size(s, n_obs), s.hidden_dim or 0
    rnn = s.model not in SSM_NAMES
    sizes = ["latent_dim", "hidden_dim"] if L else ["latent_dim"]
    need = (INIT_TEMPORARIES * M * M * rnn + 2 * M * L) * 8
    _check_memory(need, _either([_named(name, origins) for name in sizes]))


def _check_training_memory(
    s: Settings, model, config, data: Dataset, origins: dict[str, str]
) -> None:
    """Refuse (:func:`_check_memory`, before anything is written) a run whose largest job --
    a training step, a validation or the selection check, as ``fit`` estimates them
    (:func:`autodiff.train.memory_jobs`; they are not held at once) -- would not fit in the
    memory available now, naming the settings that lower it: ``fit``'s, and the sizes of
    the model (its latents, for an SSM also its hidden width) that the job holds.
    ``origins``: see :func:`_resolve`."""
    from autodiff.train import memory_jobs

    rnn = s.model not in SSM_NAMES
    model_sizes = {
        "step": ["latent_dim"] if rnn else ["latent_dim", "hidden_dim"],
        "validation": ["latent_dim"] if rnn else [],  # a free run's width
        "selection": ["latent_dim"] if rnn else [],
    }
    job = max(memory_jobs(model, config, data.validation), key=lambda job: job.need)
    names = [*job.settings, *model_sizes[job.name]]
    _check_memory(job.need, _either([_named(name, origins) for name in names]))


# ------------------------------------------------------------------------------------------
# results folder
# ------------------------------------------------------------------------------------------


def out_dir(s: Settings) -> Path:
    """The run folder of these settings: ``--out``, refused when it would overwrite a run or
    when ``--resume`` finds no run there; without ``--out``,
    ``runs/<data>-<model>-<time>`` (named after the first ``--data`` file, or the system),
    which :func:`create_out_dir` creates as a new folder."""
    if s.out is None:
        stem = Path(_files(s.data)[0]).stem if s.data else s.system
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        return Path("runs") / f"{stem}-{s.model}-{stamp}"
    out = Path(s.out)
    with _path_errors(f"--out {out}"):
        return _checked_out(out, s.resume)


@contextlib.contextmanager
def _path_errors(named: str):
    """An ``OSError`` of a look at a path (``Path.exists`` raises ENAMETOOLONG, EACCES...) as
    a :class:`UserError` that starts with ``named``."""
    try:
        yield
    except OSError as exc:
        raise UserError(f"{named}: {exc.strerror or exc}.") from None


def _checked_out(out: Path, resume: bool) -> Path:
    """:func:`out_dir` for an ``--out`` given."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder.")
    blocking = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise UserError(f"--out {out}: {blocking} is a file, not a folder; choose another --out.")
    has_content = out.is_dir() and any(out.iterdir()) and not _saved_nothing(out)
    if resume and not (out / "checkpoints" / "checkpoint.npz").is_file():
        if _saved_nothing(out):
            raise UserError(
                f"--resume: the run in {out} stopped before its first checkpoint, so there is "
                "nothing to continue; start it again without --resume (--out can be reused)."
            )
        raise UserError(f"--resume: no checkpoint in {out / 'checkpoints'} to continue from.")
    if has_content and not resume:
        if (out / "args.json").is_file():
            raise UserError(
                f"--out {out} already holds a run; pass --resume to continue it or choose "
                f"another --out."
            )
        raise UserError(f"--out {out} is not empty and holds no parscan run; choose another --out.")
    return out


def _training_write_failed(exc: OSError, out: Path) -> UserError:
    """The error of a write in run folder ``out`` that failed before training ended, with how
    the run continues once ``out`` takes files again: from its last checkpoint with
    ``--resume``, or, before the first one, by running the command again (the folder can be
    reused: :func:`_saved_nothing`)."""
    if (out / "checkpoints" / "checkpoint.npz").is_file():
        how = (
            f"The last checkpoint in {out / 'checkpoints'} is intact; once the folder takes "
            f"files again, continue with: parscan-train --out {shlex.quote(str(out))} --resume"
        )
    else:
        how = (
            "No checkpoint was written; once the folder takes files again, run the command "
            f"again (--out {shlex.quote(str(out))} can be reused)."
        )
    return UserError(f"{_write_failure(exc, out)}. {how}")


def _saved_nothing(out: Path) -> bool:
    """``out`` holds a run that stopped before its first checkpoint (killed, or a write that
    failed): its ``args.json`` (absent when writing it failed) and a ``checkpoints`` folder
    without a checkpoint, nothing else. Such a folder may take a new run: nothing in it would
    be lost."""
    if not out.is_dir() or (out / "checkpoints" / "checkpoint.npz").exists():
        return False
    names = {p.name for p in out.iterdir()}
    started = (out / "args.json").is_file() or (out / "checkpoints").is_dir()
    return started and names <= {"args.json", "checkpoints"}


def create_out_dir(out: Path, new: bool = False) -> Path:
    """Create ``out/checkpoints``, check that files can be written there and return the run
    folder: ``out``, or with ``new`` (the default folder, no ``--out``) a folder that did not
    exist -- ``out`` created exclusively, else ``out-2``, ``out-3``, ... (runs started in the
    same second each get their own)."""
    existing = {real for real in _real_folders(out) if os.path.lexists(real)}
    try:
        if new:
            out = _new_folder(out)  # out-2, out-3, ... when out exists
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        _check_writable(out)
    except OSError as exc:
        for real in _real_folders(out):  # innermost first
            if real not in existing:  # made for a run that cannot start
                with contextlib.suppress(OSError):
                    os.rmdir(real)
        if new:  # the default folder: no --out was given
            raise UserError(
                f"cannot create the run folder {out}: {exc.strerror or exc}; pass --out FOLDER "
                "somewhere writable."
            ) from None
        raise UserError(f"cannot write to --out {out}: {exc.strerror or exc}.") from None
    return out


def _real_folders(out: Path) -> list[str]:
    """``out/checkpoints``, ``out`` and its parents, innermost first, as real paths (``a/..``
    is the folder it names even while ``a`` is missing)."""
    return [os.path.realpath(folder) for folder in (out / "checkpoints", out, *out.parents)]


def _new_folder(path: Path) -> Path:
    """Create ``path``, or when it exists the first of ``path-2``, ``path-3``, ... that does
    not, exclusively (``mkdir`` fails on a folder another process has just created), and
    return it; its parent folders are created when missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for n in itertools.count(1):
        folder = path if n == 1 else path.with_name(f"{path.name}-{n}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder


def _check_writable(folder: Path) -> None:
    """Create and remove a new file in ``folder``: an ``OSError`` where none can be written
    (no permission, a read-only or virtual file system)."""
    handle, name = tempfile.mkstemp(dir=folder, prefix=".write-test-")
    os.close(handle)
    os.unlink(name)


def _versions() -> dict:
    import scipy

    return {
        "parscan": parscan.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "scipy": scipy.__version__,
        "click": importlib.metadata.version("click"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }


def _write_json(path: Path, obj) -> None:
    """``obj`` as standard JSON, written atomically (``models.base.atomic_write``: a failed
    write leaves a file already there unchanged; its ``OSError`` names ``parscan-train``):
    NaN and inf (a score that was not measurable) become null, which every JSON reader
    accepts (``json.dumps`` would write ``Infinity``)."""
    from models.base import atomic_write

    text = json.dumps(finite_or_null(obj), indent=2, default=_json_default, allow_nan=False)
    atomic_write(path, lambda fh: fh.write(f"{text}\n".encode()), "parscan-train")


def finite_or_null(obj):
    """``obj`` with every non-finite float (NumPy scalars and arrays included) as None: JSON
    that every reader parses (the run files here, the JSON lines of ``bench/``)."""
    if isinstance(obj, dict):
        return {key: finite_or_null(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_or_null(value) for value in obj]
    if isinstance(obj, np.ndarray):
        return finite_or_null(obj.tolist())
    if isinstance(obj, float | np.floating) and not math.isfinite(obj):
        return None
    return obj


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


#: history columns of the Newton iterations, empty in a run that has none (as in
#: metrics.json: null)
NEWTON_COLUMNS = ("newton_iters_mean", "newton_iters_max")


def write_history(path: Path, history: list, newton: bool) -> None:
    """One CSV row per epoch; the union of the record keys as columns; written atomically
    (``models.base.atomic_write``). ``newton``: whether the run iterated (GTF-DEER);
    without, the Newton columns are empty (``fit`` records 0)."""
    from models.base import atomic_write

    columns = []
    for record in history:
        columns.extend(key for key in record if key not in columns)
    rows = history if newton else [{**r, **dict.fromkeys(NEWTON_COLUMNS, "")} for r in history]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda fh: fh.write(text.getvalue().encode()), "parscan-train")


def _save_figure(fig, path: Path) -> None:
    """``fig`` as a PNG at ``path``, written atomically (a failed write leaves the file
    already there)."""
    from models.base import atomic_write

    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=120), "parscan-train")


#: steps of a one-dimensional series that ``attractor.png`` shows over time
SERIES_PLOT_STEPS = 2000


#: the plots of a run folder (:func:`write_plots`)
PLOT_FILES = ("attractor.png", "spectrum.png")


def write_plots(
    out: Path, test: np.ndarray, generated: np.ndarray, title: str = "test data"
) -> str:
    """``attractor.png`` and ``spectrum.png`` with matplotlib, or a note why not.

    Both attractor panels share the axis limits (the test data's range, widened to the
    generated run's), so a model collapsed to a point looks like one (one-dimensional data:
    the first :data:`SERIES_PLOT_STEPS` steps of the series over time); the spectra are shown up
    to the frequency bin below which the test spectrum holds 99.9 % of its power (see
    :func:`models.metrics.spectrum_extent`).

    Parameters
    ----------
    out : Path
        The run folder.
    test, generated : ndarray, shape (T, N)
        The test data (standardised) and the free run from its first point, finite.
    title : str
        What the test data are, in the panel titles and legends (the first of several test
        trajectories says so).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plots skipped: matplotlib is not installed (pip install matplotlib)"
    from models.metrics import DH_SMOOTHING, normalized_spectra, spectrum_extent

    n_obs = test.shape[1]
    lo = np.minimum(test.min(axis=0), generated.min(axis=0))
    hi = np.maximum(test.max(axis=0), generated.max(axis=0))
    y = 1 if n_obs >= 3 else n_obs - 1  # the dimension on the vertical (2-d) / second axis
    fig = plt.figure(figsize=(10, 4.5))
    for k, (x, panel) in enumerate(((test, title), (generated, "generated"))):
        ax = fig.add_subplot(1, 2, k + 1, projection="3d" if n_obs >= 3 else None)
        if n_obs == 1:  # x against x would be a line: the series over its first steps
            ax.plot(x[:SERIES_PLOT_STEPS, 0], lw=0.5)
            ax.set_xlabel("step")
        elif n_obs == 2:
            ax.plot(x[:, 0], x[:, 1], lw=0.3)
        else:
            ax.plot(x[:, 0], x[:, 1], x[:, 2], lw=0.3)
            ax.set_zlim(lo[2], hi[2])
        if n_obs > 1:
            ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[y], hi[y])
        ax.set_title(panel)
    fig.tight_layout()
    _save_figure(fig, out / PLOT_FILES[0])
    plt.close(fig)
    length = min(len(test), len(generated))
    spectra = (
        normalized_spectra(test[:length], DH_SMOOTHING),
        normalized_spectra(generated[:length], DH_SMOOTHING),
    )
    fig, axes = plt.subplots(n_obs, 1, figsize=(8, 2.2 * n_obs), squeeze=False)
    extent = spectrum_extent(spectra[0])
    for d in range(n_obs):
        for spectrum, label in zip(spectra, (title, "generated"), strict=True):
            axes[d, 0].semilogy(spectrum[:extent, d], label=label, lw=0.8)
        axes[d, 0].set_xlim(0, extent - 1)
        axes[d, 0].set_ylabel(f"dim {d}")
    axes[0, 0].legend()
    axes[-1, 0].set_xlabel("frequency bin")
    fig.tight_layout()
    _save_figure(fig, out / PLOT_FILES[1])
    plt.close(fig)
    return "plots: attractor.png, spectrum.png"


# ------------------------------------------------------------------------------------------
# progress
# ------------------------------------------------------------------------------------------


def echo_warning(message, category, filename, lineno, file=None, line=None):
    """``warnings.showwarning`` outside training: the warning as one line on stderr."""
    _warn(str(message))


def score_test(
    model,
    test: np.ndarray | list,
    *,
    dstsp_fix: str,
    dh_fix: str,
    n_bins: int,
    labels: list[str] = (),
    renamed: tuple[tuple[str, typing.Any], ...] = (),
    **options,
) -> dict:
    """``models.evaluate(model, test, n_bins=n_bins, **options)`` (default box; ``test`` one
    trajectory or a list of them) with its warnings as one line each; the warnings that too
    few points were scored for binned D_stsp (all runs together) or for D_H's smoothing (the
    shortest comparison) name the command line's remedies (``dstsp_fix``, ``dh_fix``:
    clauses) instead of ``evaluate``'s arguments, and only when the scores were measured.
    Its errors name its arguments as ``renamed`` says (``(pattern, replacement)`` pairs for
    :func:`re.sub`, in order; e.g. :data:`EVALUATE_OPTIONS`), and they and its failure
    message name the k-th of several test trajectories (``x_test[k]``) by ``labels[k]``
    (:func:`_test_labels`). ``test`` is in the units of ``model`` (standardised with its
    ``standardization``); the points of ``at_rest`` are returned in data units."""
    import models
    from models.metrics import (
        DH_SMOOTHING,
        SpectrumResolutionWarning,
        StateSpaceResolutionWarning,
        check_dh_resolution,
        check_dstsp_resolution,
    )

    with warnings.catch_warnings():
        warnings.showwarning = echo_warning
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", StateSpaceResolutionWarning)
            warnings.simplefilter("ignore", SpectrumResolutionWarning)
            try:
                scores = models.evaluate(model, test, n_bins=n_bins, **options)
            except (TypeError, ValueError) as exc:
                message = str(exc)
                for pattern, replacement in renamed:
                    message = re.sub(pattern, replacement, message)
                raise type(exc)(_named_tests(message, labels)) from None
        _rest_in_data_units(scores, model.standardization)
        if scores["status"] != "ok":
            scores["message"] = _named_tests(scores["message"], labels)
            return scores
        tests = test if isinstance(test, list) else [test]
        measured = scores["n_measured"] if isinstance(test, list) else [scores["n_measured"]]
        if scores["dstsp_method"] == "bins":
            reference = np.concatenate([x[1:] for x in tests])
            check_dstsp_resolution(
                sum(measured), reference, where="test score", fix=dstsp_fix, n_bins=n_bins
            )
        compared = min(min(n, x.shape[0] - 1) for n, x in zip(measured, tests, strict=True))
        smoothing = options.get("smoothing", DH_SMOOTHING)
        check_dh_resolution(compared, smoothing, where="test score", fix=dh_fix)
    return scores


#: how ``parscan-train evaluate`` names the arguments of ``models.evaluate`` in its errors
#: (:func:`score_test`'s ``renamed``): by its options, ``n_steps`` as what it is there, the
#: length of each free run (each test trajectory's after its first point; no option sets
#: it), and one test trajectory ``x_test`` as the test data
EVALUATE_OPTIONS = (
    (r"^evaluate: ", ""),
    (r"use method='gmm'", "lower --n-bins"),
    (r"\b(n_bins|n_starts|pe_steps|smoothing|transient)\b", lambda match: _flag(match[1])),
    (r"Raise n_steps or lower --transient", "Lower --transient or pass longer --test-data"),
    (r"n_steps - --transient =", "the free run's length less --transient:"),
    (r"\bn_steps\b", "the free run's length"),
    (r"^x_test has", "the test data have"),
)


def _rest_in_data_units(scores: dict, standardization) -> None:
    """The points of ``scores``' ``at_rest`` (``models.evaluate``'s, of several test
    trajectories also those of each trajectory's entry) from model units to data units, in
    place (``standardization``: the model's ``(mean, sd)``, or None: the same units)."""
    if standardization is None:
        return
    from models.data import from_sd_units

    mean, sd = standardization
    trajectories = scores.get("per_trajectory", [])
    for entries in [scores["at_rest"], *(r["at_rest"] for r in trajectories)]:
        for entry in entries or []:
            entry["point"] = from_sd_units(np.asarray(entry["point"]), mean, sd).tolist()


def _scored_rest_note(scores: dict, labels: list[str]) -> str | None:
    """:func:`_rest_note` for the free runs ``models.evaluate`` scored (its
    ``at_rest``; ``labels`` name several test trajectories, :func:`_test_labels`)."""

    def name(entry: dict) -> str:
        if "trajectory" in entry:
            return f"the free run from point {entry['start']} of {labels[entry['trajectory']]}"
        return f"the free run from test point {entry['start']}"

    if not scores["at_rest"]:
        return None
    resting = [(name(e), e["step"], e["point"]) for e in scores["at_rest"]]
    return _rest_note(resting, scores["n_starts"] * scores.get("n_trajectories", 1))


def _test_labels(s: Settings) -> list[str]:
    """How messages name each test trajectory of a run with settings ``s`` when it has
    several: by its ``--test-data`` file, or as the test part of its ``--data`` file."""
    if s.test_data is not None:
        return [f"--test-data {file}" for file in _files(s.test_data)]
    return [f"the test part of --data {file}" for file in _files(s.data)]


def _named_tests(message: str, labels: list[str]) -> str:
    """``models.evaluate``'s ``message`` with the test trajectories it names by their index
    (``x_test[1]``) named by ``labels`` (:func:`_test_labels`), when there are several."""
    if len(labels) < 2:
        return message
    return re.sub(r"\bx_test\[(\d+)\]", lambda match: labels[int(match[1])], message)


def warn_validation_resolution(validation: list[np.ndarray], config) -> None:
    """The warnings ``fit`` gives once when its validation runs score too few points for
    binned D_stsp or for D_H's smoothing, worded for the command line (``fit``'s names
    ``validation_data`` and ``validation_n_bins`` are no options here). ``validation``: the
    validation parts, one per ``--data`` file; D_stsp scores one run from each of them
    together against all of them, D_H compares at most as many points as the shortest
    holds."""
    from models.metrics import DH_SMOOTHING, check_dh_resolution, check_dstsp_resolution

    with warnings.catch_warnings():
        warnings.showwarning = echo_warning
        check_dstsp_resolution(
            config.validation_steps * len(validation),
            np.concatenate([np.asarray(x[1:], dtype=np.float64) for x in validation]),
            where="validation",
            fix="each validation run scores validation_steps points; raise validation_steps "
            "(--config), or lower --n-bins",
            n_bins=config.validation_n_bins,
        )
        check_dh_resolution(
            min(config.validation_steps, *(x.shape[0] - 1 for x in validation)),
            DH_SMOOTHING,
            where="validation",
            fix="each validation run compares at most validation_steps points and no more "
            "than the validation part holds; raise validation_steps or validation_fraction "
            "(--config)",
        )


def _test_points(s: "Settings") -> str:
    """Which test points a training run scores and how it scores more (a clause of the
    warnings of :func:`score_test`)."""
    if isinstance(s.test_data, list):
        return (
            "every step of each --test-data after the first is scored; pass longer or more "
            "--test-data files"
        )
    if s.test_data is not None:
        return "every step of --test-data after the first is scored; pass a longer --test-data"
    if isinstance(s.data, list):
        return (
            "the held-out tail of each --data is scored; pass longer or more --data files, or "
            "--test-data"
        )
    if s.data is not None:
        return "the held-out tail of --data is scored; pass a longer --data or --test-data"
    return "the generated test trajectory is scored; raise --n-steps"


def _warn(text: str) -> None:
    """One warning line on stderr (also with ``--quiet``: warnings are about the result)."""
    click.echo(f"parscan-train: warning: {text}", err=True)


#: what the progress bar says before the first step has run
FIRST_RUN_NOTE = "a first run on this machine compiles the kernels: up to a minute"


class Progress:
    """Progress bar on a terminal, plain log lines per epoch otherwise (``fit`` callback).

    ``gtf``: the model is a latent RNN trained with GTF, so alpha is shown (a state-space
    model has none); ``newton``: it is trained with GTF-DEER, so the Newton iterations are
    shown (a state-space model and sequential BPTT have none), and an epoch's steps whose
    diverging GTF-DEER forward was evaluated sequentially (``sequential N``) when it had any.
    """

    def __init__(
        self,
        epochs: int,
        quiet: bool,
        verbose: bool,
        gtf: bool = True,
        stream=None,
        newton: bool = True,
    ):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.epochs = epochs
        self.gtf = gtf
        self.newton = newton
        self._warned = set()
        self.quiet = quiet
        self.verbose = verbose
        self._last_draw = 0.0

    def start(self) -> None:
        """On a terminal, say that training is starting: the first steps load the compiled
        kernels from Numba's cache, or compile them on a machine's first run."""
        if self.tty and not self.quiet:
            self.stream.write(f"\r[{'.' * 24}] starting ({FIRST_RUN_NOTE})")
            self.stream.flush()

    def __call__(self, info) -> None:
        if self.quiet:
            return
        if info.kind == "step":
            if self.tty and time.monotonic() - self._last_draw > 0.2:
                self._draw(info)
            if self.verbose and not info.accepted:
                self._line(f"step {info.step}: rejected ({info.reason})")
            return
        record = info.record
        if self.tty and not self.verbose:
            return
        text = f"epoch {record['epoch']}/{self.epochs}  loss {record['loss']:.4g}  "
        if self.gtf:
            text += f"alpha {record['alpha']:.3f}  "
        if self.newton:
            text += f"newton {record['newton_iters_mean']:.1f}  "
        if record.get("sequential_steps"):
            text += f"sequential {record['sequential_steps']}  "
        text += f"{record['time']:.1f}s"
        status = record.get("val_status", "ok")
        if record.get("val_score") is not None and status != "ok":
            text += f"  val not measured (free run {status.replace('_', '-')})"
        elif record.get("val_score") is not None:
            text += f"  val D_stsp {_fmt(record.get('val_dstsp'))} D_H {_fmt(record.get('val_dh'))}"
        self._line(text)

    def _draw(self, info) -> None:
        self._last_draw = time.monotonic()
        done = (info.step + 1) / info.n_steps
        eta = (info.n_steps - info.step - 1) / info.steps_per_s if info.steps_per_s > 0 else 0
        bar = "#" * int(24 * done) + "." * (24 - int(24 * done))
        text = f"\r\033[K[{bar}] {100 * done:5.1f}% epoch {info.epoch + 1}/{self.epochs} "
        text += f"loss {info.loss:.4g} "
        if self.gtf:
            text += f"alpha {info.alpha:.3f} "
        if self.newton:
            text += f"newton {info.newton_iters_max} "
        text += f"{info.steps_per_s:.1f} steps/s ETA {int(eta) // 60}:{int(eta) % 60:02d} "
        self.stream.write(text)
        self.stream.flush()

    def _line(self, text: str) -> None:
        prefix = "\r\033[K" if self.tty else ""
        self.stream.write(prefix + text + "\n")
        self.stream.flush()

    def show_warning(self, message, category, filename, lineno, file=None, line=None):
        """``warnings.showwarning`` during training: one line per warning category (also
        with ``--quiet``: a warning is about the result, as the evaluation's are), without
        ``fit``'s name (no name on the command line)."""
        if category in self._warned:
            return
        self._warned.add(category)
        text = str(message).removeprefix("fit: ")
        self._line(f"parscan-train: warning: {text} (shown once)")

    def close(self) -> None:
        if self.tty and not self.quiet:
            self.stream.write("\n")
            self.stream.flush()


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


# ------------------------------------------------------------------------------------------
# commands
# ------------------------------------------------------------------------------------------


class _OneLineErrors(click.Group):
    """A click group whose usage errors are one line on stderr (exit 2), no traceback."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            click.echo(f"parscan-train: error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.Abort as exc:  # Ctrl-C (or SIGTERM) outside training
            terminated = isinstance(exc.__context__, Terminated)
            click.echo(
                f"parscan-train: {'stopped by SIGTERM' if terminated else 'interrupted'}.", err=True
            )
            sys.exit(143 if terminated else 130)


class _AlphaType(click.ParamType):
    """``--alpha``, as written (lower-cased); its range is checked with the other settings,
    so that every problem of a command line is reported at once."""

    name = "FLOAT|auto"

    def convert(self, value, param, ctx):
        return str(value).strip().lower()


def _choice(*options):
    return click.Choice(options, case_sensitive=False)


class _Once(click.Option):
    """An option that takes one value and refuses to be given twice, where a repetition
    means a misunderstanding rather than an override: the array keys, next to the
    repeatable ``--data`` / ``--test-data`` (click would keep the last value silently:
    ``--data-key a --data-key b`` read only ``b``), and ``--config`` (a second file would
    replace the first). Other options keep click's rule, the last value given wins."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, multiple=True, **kwargs)

    def process_value(self, ctx, value):
        values = super().process_value(ctx, value)
        if len(values) > 1:
            given = ", ".join(str(v) for v in values)
            raise click.BadParameter(
                f"given {len(values)} times ({given}); it takes one value, give it once"
                + _ONCE_HINTS.get(self.name, "")
                + ".",
                ctx,
                self,
            )
        return values[0] if values else None


#: what to do instead of repeating an option given once (:class:`_Once`)
_ONCE_HINTS = {
    "data_key": " (it names the array of every --data .npz; to train on several arrays of "
    "one .npz, save each to a file of its own, e.g. with np.save, and repeat --data)",
    "test_data_key": " (it names the array of every --test-data .npz; save each array to a "
    "file of its own to test on several)",
    "config_path": " (a second file would replace the first's settings silently; merge them "
    "into one file, and give the others as flags, which override it)",
}


def _once(*param_decls, **attrs):
    """``click.option`` for an option given at most once (:class:`_Once`)."""
    return click.option(*param_decls, cls=_Once, **attrs)


@click.group(
    cls=_OneLineErrors,
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--data",
    type=str,
    multiple=True,
    help="Training trajectory (.npy/.npz/.csv/.txt), T x N; repeat it for several recordings "
    "of one system (trained together, each split alike).",
)
@_once("--data-key", type=str, metavar="KEY", help="Array of each --data .npz holding several.")
@click.option("--system", type=str, help="Generate data from this system (default lorenz63).")
@click.option("--n-steps", type=int, help="Steps generated for --system (train and test each).")
@click.option("--noise", type=float, help="Observation noise of --system data (fraction of sd).")
@click.option(
    "--test-data",
    type=str,
    multiple=True,
    help="Test trajectory; default: generated / held out; repeat it to score several together.",
)
@_once("--test-data-key", type=str, metavar="KEY", help="Array of each --test-data .npz.")
@click.option("--model", type=_choice(*MODEL_NAMES), help="Model class (default clipped-shplrnn).")
@click.option("--latent-dim", "-M", type=int, help="Latent dimension M (SSMs: state size H).")
@click.option(
    "--hidden-dim",
    "-L",
    type=int,
    help="Hidden width L: shPLRNN ReLU units (default 200) / SSM readout MLP (default 100).",
)
@click.option("--n-relu", "-P", type=int, help="ALRNN: number of ReLU units P (default M).")
@click.option("--method", type=_choice("deer", "sequential"), help="GTF-DEER or sequential BPTT.")
@click.option("--jacobian", type=_choice("full", "diag"), help="DEER (full) or quasi-DEER (diag).")
@click.option("--alpha", type=_AlphaType(), help="GTF forcing alpha in [0, 1], or 'auto'.")
@click.option(
    "--alpha-method",
    type=_choice("sup", "geomean", "param_bound"),
    help="Estimator behind --alpha auto.",
)
@click.option("--sequence-length", "-T", type=int, help="Training window length T.")
@click.option("--batch-size", "-B", type=int, help="Windows per batch.")
@click.option("--batches-per-epoch", type=int, help="Optimiser steps per epoch.")
@click.option("--epochs", "-e", type=int, help="Number of epochs.")
@click.option("--lr-start", type=float, help="Initial learning rate.")
@click.option("--lr-end", type=float, help="Final learning rate (exponential decay).")
@click.option("--optimizer", type=_choice("adam", "radam"), help="Optimiser (default radam).")
@click.option("--dtype", type=_choice("float32", "float64"), help="Floating-point precision.")
@click.option("--backend", type=_choice("auto", "sequential", "cpu", "cuda"), help="Scan backend.")
@click.option("--threads", type=int, help="CPU threads for the parallel kernels.")
@click.option("--seed", type=int, help="Seed of data generation, initialisation and sampling.")
@click.option(
    "--n-bins",
    type=int,
    help="D_stsp bins per axis of validation and the test score (default 30; fewer as N "
    "grows; data with N >= 6 use a Gaussian mixture and refuse it).",
)
@click.option("--out", type=str, help="Results folder (default runs/<data>-<model>-<time>).")
@click.option("--resume", is_flag=True, default=None, help="Continue the run in --out.")
@_once("--config", "config_path", type=str, help="TOML/JSON file with these settings.")
@click.option("--quiet", "-q", is_flag=True, default=None, help="Only warnings and the summary.")
@click.option("--verbose", "-v", is_flag=True, default=None, help="Log every epoch.")
@click.version_option(parscan.__version__, "--version", prog_name="parscan-train")
@click.pass_context
def main(ctx, config_path, **flags):
    """Train a recurrent model that reconstructs a dynamical system (GTF-DEER).

    Without arguments: generate Lorenz-63 data, train a clipped shPLRNN with GTF-DEER and
    automatic alpha, evaluate it on a test trajectory and write the results folder. A
    repeated --data trains on several recordings together (not concatenated). Use
    `parscan-train evaluate RUN` to score a trained model again and `parscan-train generate
    RUN` to write its free-running trajectories.
    """
    for name in PATH_SETTINGS:  # click's tuple of a repeatable option: none, one or several
        flags[name] = _path_flag(flags[name])
    if ctx.invoked_subcommand is not None:
        given = [
            param.opts[0]
            for param in ctx.command.params
            if param.name in flags and flags[param.name] is not None
        ] + (["--config"] if config_path is not None else [])
        if given:
            raise UserError(
                f"{', '.join(given)}: training options do not apply to "
                f"{ctx.invoked_subcommand}; put {ctx.invoked_subcommand}'s own options after it "
                f"(parscan-train {ctx.invoked_subcommand} --help)."
            )
        return
    with _sigterm_as_interrupt(), _threads_restored():
        train(*_resolve(flags, config_path))


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, a batch system's time limit) during a training run,
    raised where a Ctrl-C would be, so that ``fit`` checkpoints as it does for Ctrl-C."""


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Within the block, SIGTERM raises :class:`Terminated` (main thread only: elsewhere
    Python cannot install signal handlers; nor where the handler was not installed from
    Python, which could not be restored)."""
    if not python_handles(signal.SIGTERM):
        yield
        return

    def terminate(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _threads_restored():
    """A command's ``--threads`` holds until it ends (the count is per Python thread and
    would outlive the command in a process that runs several, e.g. tests)."""
    before = numba.get_num_threads()
    try:
        yield
    finally:
        numba.set_num_threads(before)


def use_threads(n: int, note: str = "") -> int:
    """``--threads n``: use ``n`` threads, or as many as there are, with a warning (and
    ``note``) then; return the number used."""
    used = set_threads(n)
    if used < n:
        sized = _env.POOL_SIZED and used == _env.THREADS
        limit = "PARSCAN_THREADS" if sized else "NUMBA_NUM_THREADS"
        _warn(
            f"--threads {n}: only {used} {'thread is' if used == 1 else 'threads are'} "
            f"available here ({limit}); using {used}{note}."
        )
    return used


def _stopped(exc: KeyboardInterrupt, out: Path, trained: bool) -> typing.NoReturn:
    """Report a training run stopped by Ctrl-C or SIGTERM -- what was kept and the command
    that continues it -- and exit with 130 (143 for SIGTERM). Further Ctrl-Cs are ignored
    while the report is written, so it is not cut short by a traceback."""
    what = "stopped by SIGTERM" if isinstance(exc, Terminated) else "interrupted"
    checkpoints = out / "checkpoints"
    resume = f"parscan-train --out {shlex.quote(str(out))} --resume"
    if trained:
        told = (
            f"{what} after training, before all results were written; the checkpoint in "
            f"{checkpoints} holds the trained run. Write them with: {resume}"
        )
    elif (checkpoints / "checkpoint.npz").is_file():
        told = f"{what}; checkpoint saved in {checkpoints}. Continue with: {resume}"
    else:
        told = (
            f"{what} before a checkpoint was written, so there is nothing to continue; "
            f"start the run again (--out {shlex.quote(str(out))} can be reused)."
        )
    quiet = python_handles(signal.SIGINT)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if quiet else None
    try:
        click.echo(f"parscan-train: {told}", err=True)
    finally:
        if quiet:
            signal.signal(signal.SIGINT, previous)
    sys.exit(143 if isinstance(exc, Terminated) else 130)


def train(
    s: Settings, origins: dict[str, str] | None = None, given: typing.Collection[str] = ()
) -> None:
    """Run one training job end to end (the default command).

    Everything that can be refused (settings, data, a checkpoint that ``--resume`` cannot
    continue) is checked before the run folder is touched. ``origins``: see
    :func:`prepare_data`; ``given``: the settings this command gives (see :func:`_resolve`),
    refused where the data make them unused.
    """
    started = time.perf_counter()
    s, data, model, config, out, far = _prepare_run(s, origins or {}, given)
    out = create_out_dir(out, new=s.out is None)
    settings, record = _record_run(s, out, config, data)
    if not s.quiet:
        click.echo(
            f"parscan-train: {type(model).__name__} on {data.source}; results in {out}", err=True
        )
    result = _fit_or_exit(s, model, data, config, out, record)
    try:  # a stop now leaves a finished checkpoint: a resume writes the results
        _write_results(s, out, result, data, config, settings, started, far)
    except (KeyboardInterrupt, RuntimeError) as exc:
        stop = _interruption(exc)
        if stop is None:
            raise
        _stopped(stop, out, trained=True)
    except OSError as exc:  # a full disk, a folder made read-only: the checkpoint is complete
        raise UserError(
            f"{_write_failure(exc, out)}; the checkpoint in {out / 'checkpoints'} holds the "
            "trained run. Once the folder takes files again, write the results with: "
            f"parscan-train --out {shlex.quote(str(out))} --resume"
        ) from None


def _prepare_run(s: Settings, origins: dict[str, str], given: typing.Collection[str]):
    """The checks and preparation of :func:`train` before the run folder is touched: threads,
    data, the model and its ``TrainConfig``; ``fit``'s own checks (``check_fit``, in the
    command line's terms); for ``--resume``, the test data against the run's. Returns the
    settings (``threads`` as used), the :class:`Dataset`, the model, the config, the run
    folder (:func:`out_dir`, not created yet) and whether the test data lie far from the
    training data (warned)."""
    from autodiff import check_fit
    from models.data import column_mean_sd

    threads_chosen = s.threads is not None or _env.THREADS is not None
    if s.threads is not None:
        s = replace(s, threads=use_threads(s.threads, ", as args.json records"))
    data = prepare_data(s, origins)
    if "n_bins" in given:
        _check_bins_apply(data.n_obs, _named("n_bins", origins))
    far = s.test_data is not None and _warn_if_far_files(  # fit standardises the parts together
        _files(s.test_data), data.test_parts, *column_mean_sd(np.concatenate(data.train_parts))
    )
    _check_init_memory(s, data.n_obs, origins)
    model = build_model(s, data.n_obs)
    if data.n_obs == 1 and s.latent_dim is None and s.model not in SSM_NAMES and not s.resume:
        _warn(
            "the data have 1 dimension and -M defaults to it: a model with one latent state "
            "cannot carry an oscillation (its free runs tend to settle). Delay-embed the "
            "series into a few columns (x(t), x(t + tau), ...; the README's ECG example is a "
            "5-d embedding), or raise -M."
        )
    config = train_config(s, data.n_obs)
    _check_training_memory(s, model, config, data, origins)
    out = out_dir(s)
    try:  # the default folder is a new one (create_out_dir): nothing in it to check
        check_fit(
            model,
            data.train,
            config,
            resume=s.resume,
            validation_data=data.validation,
            checkpoint_dir=None if s.out is None else out / "checkpoints",
        )
    except (TypeError, ValueError) as exc:
        message = str(exc).removeprefix("fit: ")  # fit is no name on the command line
        if "checkpoint_dir" in message:  # nor is its checkpoint_dir: --out holds it
            message = f"--out {out}: " + message.replace("checkpoint_dir", "the checkpoint folder")
        message = _named_parts(message, _files(s.data))
        raise UserError(("--resume: " if s.resume else "") + message) from None
    if s.resume:
        _check_resumed_test_data(s, out, data.test_parts)
    if not threads_chosen and numba.get_num_threads() > 1:  # after the refusals: it is no cause
        load = machine_load()
        if load is not None:
            _warn_if_busy(*load, numba.get_num_threads())
    return s, data, model, config, out, far


def _record_run(s: Settings, out: Path, config, data: Dataset) -> tuple[dict, dict]:
    """Write ``args.json`` of a run starting (or resumed) in ``out``: settings, ``TrainConfig``,
    data source and columns, test data fingerprints, versions and the commands (a resume keeps
    the one that started the run and lists those that continued it). Returns the recorded
    settings and the whole record."""
    commands = {"command": sys.argv}
    if s.resume:
        started_by = json.loads((out / "args.json").read_text(encoding="utf-8"))
        commands = {
            "command": started_by.get("command"),
            "resumed_by": [*started_by.get("resumed_by", []), sys.argv],
        }
    settings = _recorded_settings(s, out)
    record = {
        "settings": settings,
        "train_config": config.to_dict(),
        "data_source": data.source,
        "test_data_fingerprint": _fingerprints(s, data.test_parts),
        "data_columns": data.columns,
        "versions": _versions(),
        **commands,
    }
    try:
        _write_json(out / "args.json", record)
    except OSError as exc:
        raise _training_write_failed(exc, out) from None
    return settings, record


def _fit_or_exit(s: Settings, model, data: Dataset, config, out: Path, record: dict):
    """``autodiff.fit`` with the progress display, checkpoints in ``out``; its ``FitResult``.
    A stop (Ctrl-C, SIGTERM) and a failed checkpoint write end the command with how the run
    continues (``--resume``, or before the first checkpoint a new start); a diverged run ends
    it with exit 1 and its failure, also recorded in ``args.json`` (``record``: what is there)
    for ``evaluate``/``generate RUN``."""
    from autodiff import fit
    from autodiff.train import NoValidationScoreWarning, TrainingDivergedError
    from models.metrics import SpectrumResolutionWarning, StateSpaceResolutionWarning

    gtf = s.model not in SSM_NAMES
    newton = gtf and s.method == "deer"  # sequential BPTT runs no Newton iterations
    progress = Progress(s.epochs, s.quiet, s.verbose, gtf=gtf, newton=newton)
    warn_validation_resolution(data.validation_parts, config)
    progress.start()
    try:
        with warnings.catch_warnings():
            warnings.showwarning = progress.show_warning
            warnings.simplefilter("ignore", StateSpaceResolutionWarning)  # worded above
            warnings.simplefilter("ignore", SpectrumResolutionWarning)
            # worded after training, in the command line's terms (_reconstruction_failure)
            warnings.simplefilter("ignore", NoValidationScoreWarning)
            result = fit(
                model,
                data.train,
                config,
                callback=progress,
                resume=s.resume,
                validation_data=data.validation,
                checkpoint_dir=out / "checkpoints",
            )
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated): fit checkpointed
        progress.close()
        _stopped(exc, out, trained=False)
    except OSError as exc:  # a checkpoint write failed (a full disk): the last one is intact
        progress.close()
        raise _training_write_failed(exc, out) from None
    except TrainingDivergedError as exc:
        progress.close()
        failure = _diverged_message(config, exc)
        click.echo(f"parscan-train: {failure}", err=True)
        # recorded for evaluate/generate RUN, which then suggest no --resume: it would fail again
        try:
            _write_json(out / "args.json", {**record, "failure": failure})
        except OSError as write_error:  # a full disk: the failure is reported all the same
            reason = os.strerror(write_error.errno) if write_error.errno else str(write_error)
            _warn(f"the failure could not be recorded in {out / 'args.json'} ({reason}).")
        sys.exit(1)
    progress.close()
    return result


def _write_results(
    s: Settings, out: Path, result, data: Dataset, config, settings: dict, started: float, far
) -> None:
    """The results of a finished run in ``out``: ``model.npz`` (its ``settings`` recorded),
    ``history.csv``, the test scores in ``metrics.json`` (with the wall time since
    ``started``), the plots, the summary on the terminal; exit 1 when the trained model does
    not reconstruct the system (``far``: the test data lie far from the training data, a
    likely cause then)."""
    from autodiff.config import new_run_remedies
    from models.data import to_sd_units

    gtf = s.model not in SSM_NAMES
    newton = gtf and s.method == "deer"
    trained = result.model
    metadata = {
        "best_epoch": result.best_epoch,
        "best_scores": result.best_scores,
        "settings": settings,
    }
    replaced = s.resume and _model_replaced(out, trained)
    trained.save(out / "model.npz", metadata=metadata)
    if replaced:
        _forget_results_of_the_replaced_model(out)
    write_history(out / "history.csv", result.history, newton)
    mean, sd = trained.standardization
    tests = [to_sd_units(test, mean, sd).astype(np.float64) for test in data.test_parts]
    scores = score_test(
        trained,
        _one_or_list(tests),
        dstsp_fix=f"{_test_points(s)}, or lower --n-bins",
        dh_fix=_test_points(s),
        pe_steps=TEST_PE_STEPS,
        n_bins=s.n_bins,
        labels=_test_labels(s),
    )
    last = result.history[-1] if result.history else {}
    summary = {
        "test": scores,
        "n_bins": _bins_used(scores, s.n_bins),
        "best_epoch": result.best_epoch,
        "validation": result.best_scores,
        "selection": result.selection,
        "final_loss": last.get("loss"),
        "newton_iters_mean": last.get("newton_iters_mean") if newton else None,
        "newton_iters_max": last.get("newton_iters_max") if newton else None,
        "alpha": result.alpha,
        "bad_steps": result.n_bad_steps,
        "train_seconds": result.wall_time,
    }
    late = _late_validation_failures(result.history, result.best_epoch)
    summary["validations_after_kept_epoch"], summary["failed_after_kept_epoch"] = late[:2]
    summary["wall_seconds"] = time.perf_counter() - started
    _write_json(out / "metrics.json", summary)  # before the plots: a failed plot loses none
    # the plots show the free run whenever it is finite, also when the evaluation failed
    # elsewhere (a PE prediction, or a run outside the D_stsp box); of several test
    # trajectories, the first
    test = tests[0]
    generated = trained.generate(test[0].astype(trained.dtype), test.shape[0] - 1)
    generated = np.asarray(generated, dtype=np.float64)
    if np.all(np.isfinite(generated)):
        title = "test data" if len(tests) == 1 else f"test data (first of {len(tests)})"
        note = write_plots(out, test[1:], generated, title)
    else:
        note = "plots skipped: the free run did not produce finite values"
    at_rest = _scored_rest_note(scores, _test_labels(s))
    if at_rest:
        note += (
            f"\n{at_rest} Score the model from several test points: parscan-train "
            f"evaluate {shlex.quote(str(out))} --n-starts 8."
        )
    summary["wall_seconds"] = time.perf_counter() - started  # the plots included
    _write_json(out / "metrics.json", summary)
    _print_summary(out, summary, note)
    _warn_late_failures(late, result.best_epoch, s)
    failure = _reconstruction_failure(scores, result.best_scores)
    if failure:
        click.echo(
            f"parscan-train: the trained model does not reconstruct the system; {failure}. "
            + _failure_advice(far, out, new_run_remedies(config, result.alpha, gtf)),
            err=True,
        )
        sys.exit(1)


def _write_failure(exc: OSError, out: Path) -> str:
    """What a failed write in run folder ``out`` says, without a function's prefix
    (``parscan-train: cannot write ...``, ``fit: cannot write ...``); an ``OSError`` of
    another library (a plot's ``[Errno 28] No space left on device``) names ``out``."""
    message = str(exc)
    for prefix in ("parscan-train: ", "fit: "):
        message = message.removeprefix(prefix)
    if not message.startswith("cannot write"):
        message = f"cannot write the results in {out} ({exc.strerror or message})"
    return message.rstrip(".")


#: what ``evaluate RUN`` and ``generate RUN`` write into a run folder by default, and which
#: of the two commands writes each
DERIVED_RESULTS = {"evaluation.json": "evaluate", "generated.npy": "generate"}


def _model_replaced(out: Path, trained) -> bool:
    """Whether ``trained`` differs from the model ``out/model.npz`` holds (its parameters or
    standardisation: a resume that trained on); False without a readable one (nothing was
    made from it)."""
    import models

    try:
        saved = models.load(out / "model.npz")
    except (OSError, ValueError, TypeError):
        return False
    before, after = saved.standardization, trained.standardization
    same = (
        np.array_equal(saved.params, trained.params)
        and (before is None) == (after is None)
        and all(np.array_equal(a, b) for a, b in zip(before or (), after or (), strict=True))
    )
    return not same


def _forget_results_of_the_replaced_model(out: Path) -> None:
    """After a resume replaced ``out/model.npz``: remove the plots of the model before (this
    run writes its own, or says why not), and warn that the files of
    :data:`DERIVED_RESULTS` there were made from it -- at once, so that a run stopped before
    its summary has said so too."""
    for name in PLOT_FILES:
        (out / name).unlink(missing_ok=True)
    outdated = [name for name in DERIVED_RESULTS if (out / name).is_file()]
    if outdated:
        run_dir = shlex.quote(str(out))
        commands = [f"parscan-train {DERIVED_RESULTS[name]} {run_dir}" for name in outdated]
        _warn(
            f"{' and '.join(outdated)} in {out} {'was' if len(outdated) == 1 else 'were'} "
            f"made from the model before this resume, which model.npz no longer holds; make "
            f"{'it' if len(outdated) == 1 else 'them'} again with {' and '.join(commands)}."
        )


def _interruption(exc: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM (:class:`Terminated`) behind ``exc``: ``exc`` itself, or the
    ``KeyboardInterrupt`` among its causes (``__cause__``, followed to the first) -- Python
    3.11 wraps one raised in a ``__set_name__`` while a class is created, e.g. during ``import
    matplotlib.pyplot`` in :func:`write_plots`, in a ``RuntimeError``; None when there is
    none."""
    while exc is not None and not isinstance(exc, KeyboardInterrupt):
        exc = exc.__cause__
    return exc


#: models whose free runs are not bounded by construction (the clipped shPLRNN's are)
UNBOUNDED_MODELS = ("shplrnn", "alrnn", "plrnn")


def _late_validation_failures(history: list, best_epoch: int | None) -> tuple[int, int, dict]:
    """The validations after the kept epoch in a run's ``history``: how many, how many could
    not be measured, and those by status (``{"non_finite": 40, "diverged": 4}``)."""
    late = [
        record["val_status"]
        for record in history
        if record.get("val_status") and best_epoch is not None and record["epoch"] > best_epoch
    ]
    failed = collections.Counter(status for status in late if status != "ok")
    return len(late), sum(failed.values()), dict(failed)


def _warn_late_failures(late: tuple[int, int, dict], best_epoch: int | None, s: Settings) -> None:
    """Warn when most validations after the kept epoch (at least 3) could not be measured:
    the model's free runs failed as it trained on, so the kept model is an early one."""
    n_late, n_failed, statuses = late
    if n_late < 3 or 2 * n_failed < n_late:
        return
    kinds = ", ".join(f"{status} {n}" for status, n in sorted(statuses.items()))
    fix = " Try --model clipped-shplrnn, whose free runs stay bounded." * (
        s.model in UNBOUNDED_MODELS
    )
    _warn(
        f"{n_failed} of the {n_late} validations after the kept epoch {best_epoch} (of "
        f"{s.epochs}) could not be measured ({kinds}): the model's free runs failed as it "
        f"trained on, so the kept model is an early one.{fix}"
    )


def _named_parts(message: str, files: list[str]) -> str:
    """``fit``'s ``message`` with the trajectories it names (``data[1]``,
    ``validation_data[1]``; ``data``, ``validation_data`` for one file) named by the
    ``--data`` file they come from (the k-th training and validation parts are those of the
    k-th of ``files``): "the validation part of --data FILE"."""

    def named(match: re.Match) -> str:
        part = "validation" if match[1] else "training"
        return f"the {part} part of --data {files[int(match[2] or 0)]}"

    if len(files) > 1:
        return re.sub(r"(?:\bthe )?\b(validation_)?data\[(\d+)\]", named, message)
    # one file: the bare names (not --data, nor an attribute or a longer word)
    return re.sub(r"(?:\bthe )?(?<![-\w.])(validation_)?data()(?![\w\[])", named, message)


def _recorded_settings(s: Settings, out: Path) -> dict:
    """The settings as ``args.json`` and ``model.npz`` record them: with the run folder used,
    and the data-generating settings null for a ``--data`` run (they did not apply)."""
    unused = dict.fromkeys(GENERATOR_SETTINGS) if s.data is not None else {}
    return asdict(replace(s, out=str(out), **unused))


#: how long :func:`machine_load` watches the cores (seconds)
LOAD_SAMPLE_SECONDS = 0.25


def machine_load() -> tuple[float, int] | None:
    """How many of the cores this process may run on other processes keep busy now, and
    how many there are: the busy share of each core's time (``/proc/stat``) over
    :data:`LOAD_SAMPLE_SECONDS` while this process sleeps, summed. None where the counters
    cannot be read (not Linux). Unlike the load average it neither remembers the previous
    command nor counts the host's cores outside this process's set."""
    try:
        cores = sorted(os.sched_getaffinity(0))
        before = _cpu_times()
        time.sleep(LOAD_SAMPLE_SECONDS)
        after = _cpu_times()
    except (AttributeError, OSError, ValueError, IndexError):
        return None
    busy = 0.0
    for core in cores:
        if core in before and core in after:
            (busy0, total0), (busy1, total1) = before[core], after[core]
            busy += (busy1 - busy0) / max(total1 - total0, 1)
    return busy, len(cores)


def _cpu_times() -> dict[int, tuple[int, int]]:
    """``{core: (busy, total)}`` clock ticks since boot, from the ``cpuN`` lines of
    ``/proc/stat`` (idle and iowait are the 4th and 5th counters)."""
    times = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *counters = line.split()
        if name.startswith("cpu") and name != "cpu":
            ticks = [int(c) for c in counters[:8]]
            times[int(name[3:])] = (sum(ticks) - ticks[3] - ticks[4], sum(ticks))
    return times


def _warn_if_busy(busy: float, cores: int, threads: int) -> None:
    """Warn when other processes keep so many cores busy that fewer than ``threads`` stay
    free (by half a core): each threaded (``prange``) region then waits for scheduler ticks,
    measured 4-11x slower with 2 threads than with ``--threads 1`` on a 2-core machine with
    one core busy."""
    if threads > 1 and cores - busy < threads - 0.5:
        _warn(
            f"the machine is busy (other processes keep {busy:.1f} of its {cores} cores busy): "
            "threaded steps wait for the scheduler and can run several times slower; if "
            "training is slow, try --threads 1."
        )


def _check_bins_apply(n_dims: int, named: str) -> None:
    """Refuse ``--n-bins`` (``named`` as the messages name it) for ``n_dims``-dimensional data
    that D_stsp scores with the Gaussian mixture, which has no bins."""
    from models.metrics import GMM_MIN_DIMS

    if n_dims >= GMM_MIN_DIMS:
        raise UserError(
            f"{named}: the data have {n_dims} dimensions, and D_stsp scores data with "
            f"{GMM_MIN_DIMS} or more with a Gaussian mixture, which uses no bins; drop it."
        )


def _bins_used(scores: dict, n_bins: int) -> int | None:
    """The D_stsp bins per axis :func:`models.evaluate` used for ``scores``: ``n_bins``, or
    None where it used the Gaussian mixture (N >= 6)."""
    return None if scores.get("dstsp_method") == "gmm" else n_bins


def _recorded(metadata: dict, name: str):
    """Setting ``name`` of the training run a model file's metadata records, or None (not
    recorded, or a file not written by parscan-train)."""
    settings = metadata.get("settings")
    return settings.get(name) if isinstance(settings, dict) else None


def _recorded_n_bins(metadata: dict) -> int:
    """The ``--n-bins`` a model file's training run used (its metadata's settings; a
    checkpoint's: the ``validation_n_bins`` of its training configuration, which
    ``--n-bins`` sets), or the default for a file without one (written before the option,
    or not by parscan-train)."""
    n_bins = _recorded(metadata, "n_bins")
    state = metadata.get("train_state")  # a checkpoint of fit
    config = state.get("config") if isinstance(state, dict) else None
    if n_bins is None and isinstance(config, dict):
        n_bins = config.get("validation_n_bins")
    valid = isinstance(n_bins, int) and not isinstance(n_bins, bool) and n_bins >= 1
    return n_bins if valid else _DEFAULTS["n_bins"]


def _scored_steps(scores: dict) -> str:
    """The points of each free run that :func:`models.evaluate` scored (``"99999 steps"``;
    several test trajectories: ``"2 test trajectories, 799 + 499 steps"``), with the
    transient it dropped before them and the number of runs per trajectory when several."""
    several = "n_trajectories" in scores
    dropped = scores["transient"] if several else scores["n_steps"] - scores["n_measured"]
    after = f" after a transient of {dropped}" if dropped else ""
    runs = scores.get("n_starts", 1)
    if not several:
        spread = f", {runs} free runs from spread-out test points" * (runs > 1)
        return f"{scores['n_measured']} steps{after}{spread}"
    steps = " + ".join(str(n) for n in scores["n_measured"])
    each = " each" * bool(dropped)
    spread = f", {runs} free runs from spread-out points of each" * (runs > 1)
    return f"{scores['n_trajectories']} test trajectories, {steps} steps{after}{each}{spread}"


def _reconstruction_failure(test: dict, validation: dict | None) -> str | None:
    """Why a trained model does not reconstruct the system, or None: its test evaluation
    failed, or no validation of any epoch was measurable -- some of the validation runs
    from spread-out starting points diverged every time, even if the one test run (from
    the first test point) did not."""
    if test["status"] != "ok":
        return f"its test evaluation is {_not_measured(test)}"
    if validation is not None and validation["status"] != "ok":
        return (
            f"no validation of any epoch was measurable (last: {validation['status']}: a free "
            "run from one of the spread-out validation points failed), although the test run "
            "from the first test point was"
        )
    return None


def _not_measured(scores: dict) -> str:
    """Why :func:`models.evaluate` gave no scores, in its words: its message names the run
    that failed (the free run, an n-step prediction behind PE, or the Lyapunov run)."""
    return f"not measurable ({scores['status']}): {scores['message']}"


def _failure_advice(far: bool, out: Path, remedies: dict) -> str:
    """What to try after the run in ``out`` failed its test score: the ``remedies``
    (:func:`_suggestions`), after the units remedy when the test data were found far from the
    training data (``far``)."""
    if not far:
        return _suggestions(remedies)
    return (
        f"{FAR_TEST_DATA}score it on test data in the training data's units (parscan-train "
        f"evaluate {shlex.quote(str(out))} --test-data FILE). "
        + _suggestions(remedies, lead="Otherwise, try")
    )


def _suggestions(remedies: dict, lead: str = "Try") -> str:
    """The settings worth trying after a failed run (:func:`autodiff.config.new_run_remedies`,
    none of them the ones just used) as flags, after ``lead``."""
    tries = []
    for name, value in remedies.items():
        if name == "alpha_mode":
            tries.append("--alpha auto")
        elif name == "alpha_method":
            tries.append(f"--alpha-method {value} (a larger alpha)")
        else:
            tries.append(f"{_flag(name)} {value}")
    return f"{lead} " + ", ".join(tries) + "."


def _diverged_message(config, exc) -> str:
    """One line for a run that kept producing rejected steps (TrainingDivergedError)."""
    from autodiff.train import rejections

    if exc.checkpoint is not None:
        kept = f"The last good checkpoint is {exc.checkpoint}."
    else:
        kept = (
            "No checkpoint was written yet (the first is written after epoch "
            f"{min(config.checkpoint_interval, config.epochs)})."
        )
    alpha = "" if exc.alpha is None else f"alpha {exc.alpha:.4g} and "  # None: an SSM
    return (
        f"training failed: {rejections(exc.streak)} (last: {exc.reason}) "
        f"in epoch {exc.epoch} with {alpha}learning rate {exc.lr:.3g}. "
        f"{kept} {_suggestions(exc.remedies)}"
    )


def _print_summary(out: Path, summary: dict, note: str) -> None:
    """The summary lines of a finished run on stdout (``summary``: as in metrics.json; its
    Newton iterations are None for a run without them, e.g. ``--method sequential``)."""
    test = summary["test"]
    if test["status"] == "ok":
        measures = (
            f"D_stsp {test['dstsp']:.3f}   D_H {test['dh']:.3f}   "
            f"PE({TEST_PE_STEPS}) {test['pe']:#.3g}"
        )
    else:
        measures = _not_measured(test)
    validation = summary["validation"]
    selected = f"selected epoch {summary['best_epoch']}"
    if validation is not None and validation["status"] != "ok":
        selected = (
            f"no validation free run was measurable (last: {validation['status']}); kept "
            f"epoch {summary['best_epoch']}"
        )
    loss = summary["final_loss"]  # as the epoch lines show it: a small loss is not 0.000
    training = f"{selected}   final loss {'n/a' if loss is None else f'{loss:.4g}'}"
    passed_over = _passed_over(summary["selection"], summary["best_epoch"])
    if summary["newton_iters_mean"] is not None:
        training += f"   Newton iterations {_fmt(summary['newton_iters_mean'])} (mean, last epoch)"
    if summary["alpha"] is not None:
        training += f"   alpha {summary['alpha']:.3f}"
    lines = [
        f"test ({_scored_steps(test)}): {measures}",
        training,
        *([passed_over] if passed_over else []),
        f"training steps {summary['train_seconds']:.0f} s (whole run), this command "
        f"{summary['wall_seconds']:.0f} s (data, training, evaluation, plots)   results: {out}",
        note,
    ]
    click.echo("\n".join(lines))


def _passed_over(selection: dict | None, kept: int | None) -> str | None:
    """The summary line saying that the best-validated epoch was passed over for ``kept``
    because its long free runs came to rest or blew up (``selection``: ``autodiff.fit``'s),
    or None."""
    if selection is None or selection["candidates"][0]["epoch"] == kept:
        return None
    best = selection["candidates"][0]
    chosen = next(c for c in selection["candidates"] if c["epoch"] == kept)
    runs = f"of {selection['starts']} free runs of {selection['steps']} steps"
    blown = [c.get("blown_up", 0) for c in (best, chosen)]  # not recorded before 2026-12-02
    also = f" and {blown[0]} blew up (NaN/inf, or beyond 1000 data ranges)" * any(blown)
    return (
        f"the best-validated epoch {best['epoch']} was passed over: {best['at_rest']} {runs} "
        f"came to rest on a fixed point (a spurious attractor){also}; epoch {kept}'s: "
        f"{chosen['at_rest']}{f' and {blown[1]}' * any(blown)}"
    )


def _target_path(target: str) -> Path:
    """The run folder or model file ``TARGET`` of ``evaluate``/``generate``; it must exist."""
    path = Path(target)
    with _path_errors(target):
        exists = path.exists()
    if not exists:
        raise UserError(
            f"{target}: no such run folder or model file; pass a folder written by "
            "parscan-train or a model .npz."
        )
    return path


def _command_threads(threads: int | None) -> None:
    """A subcommand's ``--threads``, which holds until the command ends."""
    if threads is None:
        return
    if threads < 1:
        raise UserError(f"--threads must be >= 1, got {threads}.")
    click.get_current_context().with_resource(_threads_restored())
    use_threads(threads)


def _destination(out_file: str | None, path: Path, default: str, what: str) -> Path | None:
    """Where a subcommand writes: ``--out``, else ``default`` inside a run folder ``path``
    (None for a model file), refused unless a file can be written in its folder (checked
    before the work); ``what`` is the kind of file, for the messages."""
    if out_file is not None and not out_file.strip():
        raise UserError(f"--out must not be empty; name {what} to write.")
    destination = (
        Path(out_file) if out_file is not None else (path / default if path.is_dir() else None)
    )
    if destination is None:
        return None
    with _path_errors(f"--out {destination}"):
        if destination.is_dir():
            raise UserError(f"--out {destination} is a folder; name {what} to write.")
        if not destination.parent.is_dir():
            raise UserError(f"--out {destination}: there is no folder {destination.parent}.")
    try:  # before the work: a file is written atomically, so the folder decides
        _check_writable(destination.parent)
    except OSError as exc:
        raise UserError(
            f"cannot write {what} {destination}: {exc.strerror or exc}; choose another --out."
        ) from None
    return destination


def _target_model(path: Path, target: str):
    """The model and metadata of the run folder (its ``model.npz``) or model file ``path``;
    an unfinished run is refused with the ``--resume`` command that finishes it, a run whose
    training failed with why (:func:`_recorded_failure`)."""
    import models

    model_file = path / "model.npz" if path.is_dir() else path
    if path.is_dir() and not model_file.is_file():
        failure = _recorded_failure(path)
        if failure is not None:
            raise UserError(
                f"{target} has no model.npz, and a --resume would fail again (it keeps the "
                f"run's settings): {failure}"
            )
        if (path / "checkpoints" / "checkpoint.npz").is_file():
            raise UserError(
                f"{target} has no model.npz: the run did not finish. Continue it with: "
                f"parscan-train --out {shlex.quote(target)} --resume"
            )
        if _saved_nothing(path):
            raise UserError(
                f"{target} has no model.npz: the run stopped (or is still running) before its "
                "first checkpoint, so there is no model yet; start it again with its command "
                "(the folder can be reused)."
            )
        raise UserError(
            f"{target} is a folder without model.npz; pass a run folder written by "
            "parscan-train or a model .npz file."
        )
    try:
        return models.load_with_metadata(model_file)
    except (TypeError, ValueError) as exc:  # its message starts with the model file's name
        raise UserError(str(exc).removeprefix("models.load_with_metadata: ")) from None


def _recorded_failure(run: Path) -> str | None:
    """Why the training of the run in folder ``run`` failed, as :func:`train` records it in
    its ``args.json`` (``failure``), or None (no failure recorded, or no readable record)."""
    try:
        failure = json.loads((run / "args.json").read_text(encoding="utf-8")).get("failure")
    except (OSError, ValueError, AttributeError, RecursionError):  # bad UTF-8 or JSON
        return None
    return failure if isinstance(failure, str) else None


@main.command("evaluate")
@click.argument("target", type=str)
@click.option(
    "--test-data",
    type=str,
    multiple=True,
    help="Test trajectory (default: the run's own test set); repeat it to score several "
    "together (held-out trials or recordings).",
)
@_once("--test-data-key", type=str, metavar="KEY", help="Array of each --test-data .npz.")
@click.option(
    "--n-bins",
    type=int,
    help="D_stsp bins per axis (default: those the model's training run used, else 30). Data "
    "with N >= 6 dimensions use a Gaussian mixture and refuse it.",
)
@click.option("--smoothing", type=float, default=20.0, show_default=True, help="D_H sigma.")
@click.option(
    "--pe-steps", type=int, default=TEST_PE_STEPS, show_default=True, help="PE horizon n."
)
@click.option("--transient", type=int, default=0, show_default=True, help="Dropped steps.")
@click.option(
    "--n-starts",
    type=int,
    default=1,
    show_default=True,
    help="Free runs per test trajectory, from evenly spaced test points (scores averaged; "
    "one failing run fails the score).",
)
@click.option(
    "--lyapunov",
    is_flag=True,
    help="Also the model's largest Lyapunov exponent (latent RNNs), per step and per time unit.",
)
@click.option(
    "--dt",
    type=float,
    help="Time units per data step, for --lyapunov per time unit (default: a generated system's).",
)
@click.option(
    "--fixed-points",
    is_flag=True,
    help="Also the model's fixed points near the test data and their stability (latent RNNs).",
)
@click.option(
    "--cycles",
    type=int,
    metavar="K",
    help="Also the model's cycles of least period K >= 2 near the test data and their "
    "stability (latent RNNs).",
)
@click.option("--out", "out_file", type=str, help="JSON file for the scores.")
@click.option("--threads", type=int, help="CPU threads for the parallel kernels.")
def evaluate_command(
    target,
    test_data,
    test_data_key,
    n_bins,
    smoothing,
    pe_steps,
    transient,
    n_starts,
    lyapunov,
    dt,
    fixed_points,
    cycles,
    out_file,
    threads,
):
    """Score a trained model (a run folder or a model .npz) on test data.

    For a run folder without --test-data the run's own test data are rebuilt from its
    args.json (the generated test trajectory, its --test-data files, or the held-out tail
    of each --data file); without --n-bins a model is scored with its run's D_stsp bins, as
    its training summary was. Several --test-data files (or a run's several test files) are
    scored as models.evaluate scores several test trajectories (D_stsp of all free runs
    together, D_H and PE averaged). Scores are printed and written to --out (default:
    RUN/evaluation.json for a run folder). --fixed-points adds the model's fixed points found
    by Newton's method from test points, with their stability (models.fixed_points), --cycles
    K its cycles of least period K (models.cycles).
    """
    _check_evaluate_options(test_data, test_data_key, n_starts, cycles, dt, lyapunov)
    path = _target_path(target)
    _command_threads(threads)
    destination = _destination(out_file, path, "evaluation.json", "the JSON file")
    model, metadata = _target_model(path, target)
    if destination is not None:
        _check_not_an_input(destination, path, metadata, test_data)
        _check_suffix(destination, (".json",))
    if lyapunov:
        dt, system = _lyapunov_time_step(model, metadata, dt)
    if fixed_points:
        _require_latent_rnn(model, "--fixed-points")
        _check_memory(_orbit_search_bytes(model, 1), f"the latents (M = {model.M})")
    if cycles is not None:
        _require_latent_rnn(model, "--cycles")
        _check_memory(_orbit_search_bytes(model, cycles), "--cycles")
    if n_bins is not None:
        _check_bins_apply(model.n_obs, "--n-bins")
    else:
        n_bins = _recorded_n_bins(metadata)
    raws, labels, far = _evaluation_data(target, path, model, test_data, test_data_key)
    try:
        # the options that would help: those given, or that can be (a --transient of 0 and
        # the run's own test data are not "lowered" or "lengthened")
        longer = "pass a longer --test-data" if test_data else "pass --test-data with more steps"
        helps = [longer, *["lower --transient"] * bool(transient)]
        scored = f"the test data's steps{' after --transient' * bool(transient)} are scored; "
        scores = score_test(
            model,
            _one_or_list(raws),
            dstsp_fix=scored + _either([*helps, "lower --n-bins"]),
            dh_fix=scored + _either([*helps, "lower --smoothing"]),
            n_bins=n_bins,
            smoothing=smoothing,
            pe_steps=pe_steps,
            transient=transient,
            n_starts=n_starts,
            measures=("dstsp", "dh", "pe", "lyapunov")[: 4 if lyapunov else 3],
            labels=labels,
            renamed=EVALUATE_OPTIONS,
        )
    except (TypeError, ValueError) as exc:
        raise UserError(str(exc)) from None
    scores.update(n_bins=_bins_used(scores, n_bins), pe_steps=pe_steps, smoothing=smoothing)
    ok = scores["status"] == "ok"
    if lyapunov and ok:
        scores.update(dt=dt, lyapunov_per_time=None if dt is None else scores["lyapunov"] / dt)
    if fixed_points:
        scores["fixed_points"] = _model_orbits(model, raws, 1)
    if cycles is not None:
        scores["cycles"] = _model_orbits(model, raws, cycles)
    if destination is not None:
        try:
            _write_json(destination, scores)
        except OSError as exc:
            raise UserError(str(exc).removeprefix("parscan-train: ")) from None
    exponent = _lyapunov_line(scores, system) if lyapunov and ok else None
    _print_evaluation(scores, labels, far, exponent, destination)


def _check_evaluate_options(test_data, test_data_key, n_starts, cycles, dt, lyapunov) -> None:
    """Refuse ``evaluate`` options that are wrong whatever the model: an array key that does
    not fit the ``--test-data`` files, ``--n-starts`` < 1, ``--cycles`` < 2, a ``--dt`` that
    is not finite and > 0 or is given without ``--lyapunov``."""
    key_problem = _array_key_problem(
        Settings(test_data=_path_flag(test_data), test_data_key=test_data_key),
        "test_data_key",
        None,
    )
    if key_problem:
        raise UserError(key_problem + ".")
    if n_starts < 1:
        raise UserError(f"--n-starts must be >= 1, got {n_starts}.")
    if cycles is not None and cycles < 2:
        raise UserError(f"--cycles must be >= 2 (fixed points: --fixed-points), got {cycles}.")
    if dt is not None and not (lyapunov and math.isfinite(dt) and dt > 0):
        raise UserError(
            f"--dt must be finite and > 0, got {dt}."
            if lyapunov
            else "--dt converts the exponent of --lyapunov; add --lyapunov or drop --dt."
        )


def _evaluation_data(target: str, path: Path, model, test_data, test_data_key):
    """The test trajectories ``evaluate`` scores ``model`` (read from ``target``, at ``path``)
    on: the ``--test-data`` files, else those the run folder's ``args.json`` rebuilds. Returns
    them in the model's standardised units, their labels for messages, and whether a
    ``--test-data`` file lies far from the training data (warned; so is a file that is the
    run's training data or has other columns)."""
    if test_data:
        raws = [_load(file, "--test-data", test_data_key) for file in test_data]
        _check_distinct(list(test_data), "--test-data")
        labels = [f"--test-data {file}" for file in test_data]
    elif not path.is_dir():
        raise UserError(f"{target} is a model file: pass --test-data.")
    elif not (path / "args.json").is_file():
        raise UserError(
            f"{path / 'args.json'} is missing, so the run's test data cannot be rebuilt: pass "
            "--test-data."
        )
    else:
        raws = run_test_data(path, "evaluate")
        labels = _test_labels(run_settings(path, "evaluate")) or ["the run's generated test data"]
    _check_dimensions(raws, labels, model.n_obs, "the model")
    run = _run_of(path)  # also for the run's model.npz
    if test_data and run is not None and (run / "args.json").is_file():
        try:
            _warn_if_run_data(run, list(test_data), test_data_key)
        except UserError:  # an unreadable args.json beside a model file: no warning, no error
            if path.is_dir():
                raise
    far = False
    if model.standardization is not None:
        from models.data import to_sd_units

        mean, sd = model.standardization
        if test_data:  # the run's own test data were checked in training
            far = _warn_if_far_files(list(test_data), raws, mean, sd)
        raws = [to_sd_units(raw, mean, sd) for raw in raws]
    return raws, labels, far


def _print_evaluation(
    scores: dict, labels: list[str], far: bool, exponent: str | None, destination
) -> None:
    """Print ``evaluate``'s ``scores`` (test trajectories named by ``labels``): the scores,
    the Lyapunov ``exponent`` line (None: none), a note on runs that came to rest, the orbits
    found (their listing points to ``destination``); a failure on stderr, then exit 1
    (``far``: the test data lie far from the training data, a likely cause)."""
    pe_steps = scores["pe_steps"]
    if scores["status"] == "ok":
        click.echo(
            f"D_stsp {scores['dstsp']:.3f}   D_H {scores['dh']:.3f}   "
            f"PE({pe_steps}) {scores['pe']:#.3g}   ({_scored_steps(scores)})"
        )
        if exponent is not None:
            click.echo(exponent)
        at_rest = _scored_rest_note(scores, labels)
        if at_rest:
            click.echo(at_rest)
    else:  # as after training: the model does not reconstruct the system (exit 1)
        units = f". {FAR_TEST_DATA}pass test data in the training data's units." if far else ""
        click.echo(f"parscan-train: {_not_measured(scores)}{units}", err=True)
    for key in ("fixed_points", "cycles"):
        if key in scores:
            click.echo("\n".join(_orbit_lines(scores[key], destination)))
    if scores["status"] != "ok":
        sys.exit(1)


#: ``evaluate --fixed-points`` and ``--cycles`` start Newton's method from this many evenly
#: spread test points
FIXED_POINT_STARTS = 256
#: ``evaluate --fixed-points`` / ``--cycles`` list at most this many on screen (all in the JSON)
FIXED_POINT_LINES = 10
#: ``evaluate --cycles`` shows at most this many points of a cycle on its line
CYCLE_POINTS_SHOWN = 4


def _orbit_search_bytes(model, period: int) -> int:
    """The memory ``models.cycles`` takes from :data:`FIXED_POINT_STARTS` starts: the orbits
    (twice) and the Newton steps' Jacobians (three times)."""
    return 8 * FIXED_POINT_STARTS * (2 * period * model.M + 3 * model.M**2)


def _model_orbits(model, tests: list[np.ndarray], period: int) -> dict:
    """``models.cycles`` of ``model`` of least period ``period`` (1: its fixed points) from
    :data:`FIXED_POINT_STARTS` evenly spread points of the (standardised) test trajectories
    ``tests`` together, as JSON values, the points in data units: ``points`` (C, N) for fixed
    points, (C, period, N) with ``period`` for cycles."""
    import models
    from models.data import from_sd_units

    joined = np.concatenate(tests)
    picked = np.linspace(0, len(joined) - 1, min(FIXED_POINT_STARTS, len(joined))).astype(int)
    try:
        found = models.cycles(model, joined[picked], period)
    except ValueError as exc:  # more than NumPy can allocate after all (the check above)
        raise UserError(f"{'--cycles' if period > 1 else '--fixed-points'}: {exc}") from None
    points = found["points"]
    if model.standardization is not None:
        points = from_sd_units(points, *model.standardization)
    return {
        **({"period": period} if period > 1 else {}),
        "points": (points if period > 1 else points[:, 0]).tolist(),
        "spectral_radius": found["spectral_radius"].tolist(),
        "stable": found["stable"].tolist(),
        "on_boundary": found["on_boundary"].tolist(),
        "n_starts": found["n_starts"],
        "n_converged": found["n_converged"],
    }


def _orbit_lines(found: dict, destination: Path | None) -> list[str]:
    """What ``evaluate --fixed-points`` / ``--cycles`` print for :func:`_model_orbits`'s
    ``found``: a headline, then one line per fixed point or cycle (most attracting first; at
    most :data:`FIXED_POINT_LINES`, the rest counted, all of them in the JSON file
    ``destination`` when there is one; a cycle's first :data:`CYCLE_POINTS_SHOWN` points)."""
    period = found.get("period", 1)
    what = "fixed points" if period == 1 else f"{period}-cycles"
    n = len(found["points"])
    searched = (
        f"by Newton's method from {found['n_starts']} test points "
        f"({found['n_converged']} converged"
        f"{f' to points whose period divides {period}' if period > 1 else ''})"
    )
    if n == 0:
        return [f"{what}: none found {searched}."]
    stable = sum(found["stable"])
    lines = [f"{what}: {n} found {searched}, {stable} stable (spectral radius < 1):"]
    keys = ("points", "spectral_radius", "stable", "on_boundary")
    listed = zip(*(found[key] for key in keys), strict=True)
    for orbit, radius, is_stable, on_boundary in list(listed)[:FIXED_POINT_LINES]:
        shown = [orbit] if period == 1 else orbit[:CYCLE_POINTS_SHOWN]
        where = " -> ".join("(" + ", ".join(f"{v:.4g}" for v in point) + ")" for point in shown)
        if period > CYCLE_POINTS_SHOWN:
            where += f" -> ... ({period} points)"
        kind = "stable" if is_stable else "unstable"
        rate = "growth rate (on a region boundary)" if on_boundary else "spectral radius"
        lines.append(f"  {where}  {kind}, {rate} {radius:.4g}")
    if n > FIXED_POINT_LINES:
        kept = f" (all in {destination})" if destination is not None else ""
        lines.append(f"  ... and {n - FIXED_POINT_LINES} more{kept}")
    return lines


def _lyapunov_time_step(model, metadata: dict, dt: float | None):
    """For ``evaluate --lyapunov``: the data's time step (``--dt``, else that of the system
    the model's training run generated its data from, as its metadata records, else None)
    and that system (None for data read from files). A model without a Jacobian is refused."""
    from models import SYSTEMS

    _require_latent_rnn(model, "--lyapunov")
    name = _recorded(metadata, "system") if _recorded(metadata, "data") is None else None
    system = SYSTEMS.get(name) if isinstance(name, str) else None
    return (dt if dt is not None or system is None else system.dt), system


def _require_latent_rnn(model, flag: str) -> None:
    """Refuse ``flag`` for a model without a state map and its Jacobian (an SSM)."""
    from models import LatentRNN

    if not isinstance(model, LatentRNN):
        raise UserError(
            f"{flag} needs a latent RNN (shplrnn, clipped-shplrnn, alrnn, plrnn); the model "
            f"is a {type(model).__name__}."
        )


def _lyapunov_line(scores: dict, system) -> str:
    """The line ``evaluate --lyapunov`` prints: the exponent per step, per time unit when the
    time step is known, and the exponent of the ``system`` the data came from (if any)."""
    line = f"lambda_max {scores['lyapunov']:.4g} per step"
    if scores["dt"] is not None:
        line += f" = {scores['lyapunov_per_time']:.4g} per time unit (dt {scores['dt']:g})"
    else:
        line += "; pass --dt (time units per data step) for the exponent per time unit"
    if system is not None and system.lyapunov is not None:
        line += f"; {system.name}: {system.lyapunov:g} per time unit"
    return line


#: a generated run farther than this many training-data sds from the training mean (in any
#: dimension) has diverged; an initial observation farther than FAR_X0 sds gets a warning
GENERATE_LIMIT = 1e3
FAR_X0 = 10.0
#: what ``generate`` writes: .npy (any number of runs) and text (one run, comma- or
#: whitespace-separated, read back by ``load_data``)
GENERATE_SUFFIXES = {".npy": None, ".csv": ",", ".txt": " "}


@main.command("generate")
@click.argument("target", type=str)
@click.option(
    "--n-steps",
    type=int,
    help="Steps per run (default for a run folder: its first test trajectory's length - 1).",
)
@click.option(
    "--x0",
    type=str,
    multiple=True,
    metavar="X1,...,XN",
    help="Initial observation in data units, comma-separated; repeat it for several runs.",
)
@click.option(
    "--starts",
    type=int,
    help="Runs from this many evenly spread points of the run's first test trajectory "
    "(default 1: its first point).",
)
@click.option(
    "--out", "out_file", type=str, help="The .npy, .csv or .txt file (default RUN/generated.npy)."
)
@click.option("--threads", type=int, help="CPU threads for the parallel kernels.")
def generate_command(target, n_steps, x0, starts, out_file, threads):
    """Free-running trajectories of a trained model (a run folder or a model .npz).

    Each run starts from an initial observation (--x0, in data units; default for a run
    folder: the first point of its test data, or --starts evenly spread points of it) and
    holds the --n-steps observations that follow it (the initial one not included), in data
    units (the model's standardisation undone). One run is written as an n x N array; several
    as K x n x N (.npy only). A run that becomes NaN/inf or diverges (leaves 1000 training-data
    sds) is written as computed and named; the command then exits with 1.
    """
    if x0 and starts is not None:
        raise UserError("--x0 and --starts both choose initial observations; pass one of them.")
    problems = [
        f"{flag} must be >= 1, got {value}"
        for flag, value in (("--n-steps", n_steps), ("--starts", starts))
        if value is not None and value < 1
    ]
    if x0 and n_steps is None:
        problems.append("--x0 needs --n-steps N, the number of steps each run generates")
    try:
        path = _target_path(target)
    except UserError as exc:  # reported with the options' problems
        raise UserError("; ".join([*problems, str(exc).removesuffix(".")]) + ".") from None
    destination = _destination(out_file, path, "generated.npy", "the .npy, .csv or .txt file")
    if destination is None:
        problems.append(f"{target} is a model file: pass --out FILE (.npy, .csv or .txt)")
    if problems:
        raise UserError("; ".join(problems) + ".")
    _command_threads(threads)
    model, metadata = _target_model(path, target)
    _check_not_an_input(destination, path, metadata)
    suffix = _check_suffix(destination, GENERATE_SUFFIXES)
    n_runs = len(x0) if x0 else (starts or 1)
    if n_runs > 1 and suffix != ".npy":
        raise UserError(
            f"--out {destination}: {n_runs} runs make a K x n x N array; write .npy for them."
        )
    points, origin, n_default = _initial_points(path, target, model, x0, n_runs)
    n_steps = n_steps or n_default  # None only with --x0, refused above
    # a latent RNN's runs hold their M latents a step (model dtype), then N observations
    # in float64 (the model's units, data units, the written copy); an SSM's only the latter
    latents = getattr(model, "M", 0) * np.dtype(model.dtype).itemsize
    per_step = latents + model.n_obs * 3 * 8
    _check_memory(n_runs * n_steps * per_step, "--n-steps or the number of runs")
    try:
        runs, units, problem = _free_runs(model, points, n_steps, origin)
    except ValueError as exc:  # beyond the address space, or memory taken since the check
        raise UserError(str(exc)) from None
    try:
        _write_runs(destination, runs[0] if n_runs == 1 else runs, GENERATE_SUFFIXES[suffix])
    except OSError as exc:
        raise UserError(str(exc).removeprefix("parscan-train generate: ")) from None
    shape = " x ".join(str(n) for n in runs.shape[1 if n_runs == 1 else 0 :])
    plural = "s" * (n_runs > 1)
    click.echo(f"{n_runs} free run{plural} ({shape}, {units}) from {origin[0]} -> {destination}")
    if problem is None:
        from models.metrics import fixed_point_onsets

        sd = model.standardization[1] if model.standardization is not None else 1.0
        onsets = fixed_point_onsets(runs, sd)
        resting = [(origin[1](k), onsets[k] + 1, runs[k, -1]) for k in np.flatnonzero(onsets >= 0)]
        note = _rest_note(resting, n_runs)
        if note:
            click.echo(note)
    else:
        click.echo(f"parscan-train: {problem[1]} (written as computed).", err=True)
        sys.exit(1)


def _initial_points(path: Path, target: str, model, x0: tuple[str, ...], n_runs: int):
    """The initial observations of ``generate`` in data units, ``(n_runs, N)``; what they
    are, ``(origin, label)`` (for the summary, and ``label(k)`` naming run ``k``); and the
    default ``--n-steps`` (None without test data).

    ``--x0`` values, else ``n_runs`` evenly spread points of the first test trajectory of
    the run folder ``path`` (as ``models.evaluate`` spreads its ``n_starts``)."""
    if x0:
        points = np.stack([_parse_x0(text, model.n_obs) for text in x0])
        origin = "--x0" if len(x0) == 1 else f"{len(x0)} --x0 points"
        return points, (origin, lambda k: f"the free run from --x0 {x0[k]}"), None
    if not (path.is_dir() and (path / "args.json").is_file()):
        raise UserError(f"{target} has no test data to start from: pass --x0 X1,...,XN.")
    test = run_test_data(path, "generate", remedy="pass --x0 X1,...,XN to start elsewhere")[0]
    if test.shape[1] != model.n_obs:
        raise UserError(
            f"the run's test data have {test.shape[1]} dimensions; its model has {model.n_obs}."
        )
    if n_runs > test.shape[0]:
        raise UserError(
            f"--starts {n_runs} exceeds the {test.shape[0]} points of the run's test data."
        )
    first = np.arange(n_runs) * test.shape[0] // n_runs
    if n_runs == 1:
        origin = "the first test point"
    else:
        origin = f"test points {', '.join(str(k) for k in first)}"
    return (
        test[first],
        (origin, lambda k: f"the free run from test point {first[k]}"),
        (test.shape[0] - 1),
    )


def _parse_x0(text: str, n_obs: int) -> np.ndarray:
    """One ``--x0`` value: ``n_obs`` finite numbers separated by commas."""
    try:  # Python's float reads 1_0 as 10: a digit separator is no part of a number here
        point = None if "_" in text else np.array([float(v) for v in text.split(",")])
    except ValueError:
        point = None
    if point is None or point.shape != (n_obs,) or not np.all(np.isfinite(point)):
        raise UserError(
            f"--x0 {text}: expected {n_obs} finite numbers separated by commas (the model has "
            f"{n_obs} dimension{'s' * (n_obs != 1)}), e.g. --x0 {','.join(['0.5'] * n_obs)}."
        )
    return point


#: the files of a run folder (besides its data), which no ``--out`` of ``evaluate`` or
#: ``generate`` may replace
RUN_FILES = {
    "model.npz": "the run's model",
    "checkpoints/checkpoint.npz": "the run's checkpoint",
    "args.json": "the run's settings (args.json)",
    "metrics.json": "the run's metrics",
    "history.csv": "the run's history",
    **dict.fromkeys(PLOT_FILES, "the run's plot"),
}


def _run_of(path: Path) -> Path | None:
    """The run folder of the ``evaluate``/``generate`` target ``path``: the folder itself, or
    the folder holding a target ``model.npz`` and an ``args.json``; None for a model file
    elsewhere."""
    if path.is_dir():
        return path
    if path.name == "model.npz" and (path.parent / "args.json").is_file():
        return path.parent
    return None


def _check_not_an_input(
    destination: Path, path: Path, metadata: dict, given: tuple[str, ...] = ()
) -> None:
    """Refuse an ``--out`` (``destination``) that is a file the target ``path`` consists of
    or was made from: the model file, a run folder's :data:`RUN_FILES` (also of the run whose
    ``model.npz`` is the target: a folder holding it and an ``args.json``); the data files the
    model was trained or tested on (as its ``metadata`` records them); and the files
    ``given`` (``evaluate``'s ``--test-data``). What a command writes must not replace what
    it reads -- nor the :data:`RUN_FILES` of another run (a folder holding an ``args.json``,
    the target's checkpoint's run too)."""
    if not destination.exists():
        return
    run = _run_of(path)
    inputs = {} if path.is_dir() else {path: "the model file"}
    if run is not None:
        inputs.update((run / name, what) for name, what in RUN_FILES.items())
    others = {  # another run's files, and what evaluate/generate wrote in it
        **RUN_FILES,
        **{name: f"the run's {command} results" for name, command in DERIVED_RESULTS.items()},
    }
    for folder in (destination.parent, destination.parent.parent):  # any run's own files
        if (folder / "args.json").is_file() and not (run and _same_file(folder, run)):
            inputs.update((folder / name, f"{what} in {folder}") for name, what in others.items())
    for name in PATH_SETTINGS:
        recorded = _recorded(metadata, name)
        for file in recorded if isinstance(recorded, list) else [recorded]:
            if isinstance(file, str):
                inputs[Path(file)] = f"a data file the model was trained or tested on ({file})"
    inputs.update((Path(file), f"the --test-data file {file}") for file in given)
    for file, what in inputs.items():
        if file.exists() and destination.samefile(file):
            raise UserError(f"--out {destination} would replace {what}; choose another file.")


def _check_suffix(destination: Path, suffixes: typing.Collection[str]) -> str:
    """The suffix of ``--out`` (``destination``, lower-cased), refused unless it is one of
    ``suffixes``."""
    suffix = destination.suffix.lower()
    if suffix not in suffixes:
        raise UserError(f"--out {destination}: write {_either(list(suffixes))}, not '{suffix}'.")
    return suffix


def _either(items: list[str]) -> str:
    """``items`` joined for a message: ``a``, ``a or b``, ``a, b or c``."""
    return " or ".join(filter(None, [", ".join(items[:-1]), items[-1]]))


def _check_memory(n_bytes: int, fix: str) -> None:
    """Refuse a job needing more than the memory available now (``MemAvailable``; no check
    where ``/proc/meminfo`` is missing), naming what to lower."""
    available = available_bytes()
    if available is not None and n_bytes > available:
        raise UserError(
            f"this needs about {n_bytes / 2**30:.1f} GiB of memory and {available / 2**30:.1f} "
            f"GiB are available; lower {fix}."
        )


def _free_runs(model, points: np.ndarray, n_steps: int, origin):
    """``model``'s free runs from ``points`` (data units, ``(K, N)``) as ``(K, n_steps, N)``
    float64 in data units; the units' name; and :func:`models.metrics.run_problem`'s
    verdict (non-finite, or beyond :data:`GENERATE_LIMIT` training-data sds), or None."""
    from models.data import to_sd_units
    from models.metrics import run_problem

    if model.standardization is None:
        mean, sd = np.zeros(model.n_obs), np.ones(model.n_obs)
        units, bound = "model units: the model has no standardisation", f"|x| <= {GENERATE_LIMIT:g}"
    else:
        mean, sd = model.standardization
        units, bound = "data units", f"{GENERATE_LIMIT:g} training-data sds"
        _warn_if_far_points(points, mean, sd, origin[1])
    runs = model.generate_in_data_units(points, n_steps)
    with np.errstate(over="ignore", invalid="ignore"):
        problem = run_problem(to_sd_units(runs, mean, sd), 0.0, GENERATE_LIMIT, bound, origin[1])
    return runs, units, problem


def _rest_note(resting: list[tuple], n_runs: int) -> str | None:
    """A note when some of ``n_runs`` free runs settle on a fixed point
    (:func:`models.metrics.fixed_point_onsets`; ``resting``: ``(name, first resting step,
    point in data units)`` of each that does): how many, and where and from which step the
    first of them rests -- often a spurious attractor (data that never rest there); None
    when none does."""
    if not resting:
        return None
    name, step, point = resting[0]
    rest = f"at ({', '.join(f'{v:.4g}' for v in point)}) from step {step}"
    if n_runs == 1:
        found = f"{name} settles on a fixed point {rest}"
    else:
        verb = "settles" if len(resting) == 1 else "settle"
        found = f"{len(resting)} of the {n_runs} runs {verb} on a fixed point, first {name} {rest}"
    return f"note: {found}: a spurious attractor unless the system rests there."


def _warn_if_far_points(points: np.ndarray, mean: np.ndarray, sd: np.ndarray, label) -> None:
    """One warning for the initial observations farther than :data:`FAR_X0` training sds
    from the training mean, naming the first (``label(k)`` names its run) and counting the
    others: in other units, or off the attractor."""
    from models.data import to_sd_units

    with np.errstate(over="ignore"):
        shift = np.abs(to_sd_units(points, mean, sd))
    far = np.argwhere(shift > FAR_X0)
    if far.size:
        k, d = far[0]
        others = len(np.unique(far[:, 0])) - 1
        also = f" (and {others} other initial observation{'s' * (others > 1)})" * bool(others)
        _warn(
            f"{label(k).replace('the free run from ', '')} lies {shift[k, d]:.3g} training-data "
            f"sds from the training mean in dimension {d} (mean {mean[d]:.3g}, sd {sd[d]:.3g})"
            f"{also}; is it in the training data's units?"
        )


def _write_runs(destination: Path, runs: np.ndarray, delimiter: str | None) -> None:
    """``runs`` to ``destination`` atomically: ``.npy``, or text (``delimiter``; one run,
    ``%.17g`` so each float64 reads back exactly)."""
    from models.base import atomic_write

    def write(fh):
        if delimiter is None:
            np.save(fh, runs)
        else:
            np.savetxt(fh, runs, fmt="%.17g", delimiter=delimiter)

    atomic_write(destination, write, "parscan-train generate")


if __name__ == "__main__":
    main(prog_name="parscan-train")
