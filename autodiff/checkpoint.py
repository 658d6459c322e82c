"""Atomic, resumable training checkpoints.

A checkpoint is one ``.npz`` file holding NumPy arrays plus a JSON metadata string. It is a
superset of a model file written by :meth:`models.base.Model.save` (``model_class``,
``hyperparameters``, ``params``, ``metadata``, ``data_mean``/``data_std``), so
``models.load(path)`` reads the model of any checkpoint directly. Files are written to a
temporary file in the target directory and moved into place with :func:`os.replace`, so a run
killed at any moment leaves either the previous or the new checkpoint, never a partial one.
"""

import json
from pathlib import Path

import numpy as np

from models._checks import check_path
from models.base import atomic_save_npz, model_from_fields, parse_problem, read_npz_fields
from models.data import MissingFileError

#: file name of the latest checkpoint inside a checkpoint directory
CHECKPOINT_NAME = "checkpoint.npz"
#: bumped when the layout changes incompatibly (2: the learning-rate schedule length and the
#: fingerprints of the training and validation data)
FORMAT_VERSION = 2


def checkpoint_path(directory) -> Path:
    """The path of the latest checkpoint inside ``directory``."""
    return Path(directory) / CHECKPOINT_NAME


def save_checkpoint(
    directory,
    model,
    params: np.ndarray,
    state: dict,
    arrays: dict[str, np.ndarray],
    optimizer_state: dict[str, np.ndarray] | None,
    *,
    where: str = "save_checkpoint",
) -> Path:
    """Atomically write the training state to ``directory/checkpoint.npz``.

    Parameters
    ----------
    directory : path-like
        Checkpoint directory (created if missing).
    model : models.base.Model
        The model being trained; its class, hyperparameters and standardisation are stored in
        the layout of :meth:`~models.base.Model.save`.
    params : ndarray, shape (n_params,)
        The parameters to store (those of the last completed step, not necessarily
        ``model.params``).
    state : dict
        JSON-able training state (epoch, step, alpha, RNG state, config, history, ...),
        stored as the ``metadata`` string under key ``"train_state"``.
    arrays : dict of str to ndarray
        Extra arrays (e.g. the best parameters so far), stored under ``"array.<name>"``.
    optimizer_state : dict of str to ndarray or None
        The optimiser's ``state_dict()``, stored under ``"optimizer.<name>"``.
    where : str
        The public function named in error messages (:func:`autodiff.fit` passes ``"fit"``).

    Returns
    -------
    pathlib.Path
        The checkpoint file written.

    Raises
    ------
    OSError
        The file cannot be written: the class and ``errno`` of the failed operation, the
        message naming ``where``, the checkpoint file and the reason
        (:func:`models.base.atomic_save_npz`); the previous checkpoint is unchanged.
    """
    payload = model.npz_payload(
        {"format_version": FORMAT_VERSION, "train_state": state}, params=params
    )
    for name, value in arrays.items():
        payload[f"array.{name}"] = value
    for name, value in (optimizer_state or {}).items():
        payload[f"optimizer.{name}"] = value
    return atomic_save_npz(checkpoint_path(directory), payload, where)


def load_checkpoint(path, where: str = "load_checkpoint") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Parameters
    ----------
    path : path-like
        A checkpoint file, or a directory holding ``checkpoint.npz``.
    where : str
        The function the messages name (``"fit"`` when it resumes a run).

    Returns
    -------
    dict
        ``model_class`` (str), ``hyperparameters`` (dict), ``params`` (ndarray),
        ``standardization`` ((mean, sd) or None), ``state`` (the JSON training state),
        ``arrays`` (dict of extra arrays) and ``optimizer`` (dict, possibly empty).

    Raises
    ------
    ValueError
        No such file (:class:`models.data.MissingFileError`, also a ``FileNotFoundError``),
        not a readable ``.npz`` (truncated, corrupt), not a parscan training
        checkpoint, a checkpoint of another format version (or a damaged one), or a model
        part that :func:`models.load` refuses (:func:`models.base.model_from_fields`: a
        model-file format it does not read, hyperparameters that are no JSON object or do
        not build the model, invalid parameters, an incomplete or invalid standardisation,
        e.g. not one entry per observed dimension). The training state itself is checked
        by :func:`autodiff.fit`.
    """
    path = check_path(path, where)
    if path.is_dir():
        path = checkpoint_path(path)
    if not path.is_file():
        raise (ValueError if path.exists() else MissingFileError)(
            f"{where}: no checkpoint at {path}. Start without resume, or point to the "
            "checkpoint directory of an earlier run."
        )
    fields = read_npz_fields(path, where, "restore it or start a new run")
    try:
        meta = json.loads(str(fields["metadata"]))
        state = meta["train_state"]
        version = meta["format_version"]
        hyper = json.loads(str(fields["hyperparameters"]))
        model_class = str(fields["model_class"])
        params = fields["params"]
    except (ValueError, RecursionError) as exc:  # JSON that json cannot read
        raise damaged(path, f"its JSON is unreadable: {parse_problem(exc)}", where) from None
    except (KeyError, TypeError):
        raise ValueError(
            f"{where}: {path} is not a parscan training checkpoint (a model file "
            "written by model.save has no training state; load it with models.load)."
        ) from None
    if not isinstance(version, int) or isinstance(version, bool):
        raise damaged(path, f"its format_version {version!r} is not an integer", where)
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{where}: {path} has checkpoint format {version!r}, from another version "
            f"of parscan; this one reads format {FORMAT_VERSION}. Resume it with the version "
            "that wrote it, or start a new run (models.load still reads its model)."
        )
    try:  # the model part, as models.load checks it
        model, _ = model_from_fields(fields, path, where)
    except ValueError as exc:  # its message names where and path: this one does
        raise damaged(path, str(exc).removeprefix(f"{where}: {path}").lstrip(": "), where) from None
    return {
        "path": path,
        "model_class": model_class,
        "hyperparameters": hyper,
        "params": params,
        "standardization": model.standardization,
        "state": state,
        "arrays": {k[6:]: v for k, v in fields.items() if k.startswith("array.")},
        "optimizer": {k[10:]: v for k, v in fields.items() if k.startswith("optimizer.")},
    }


def damaged(path, problem: str, where: str) -> ValueError:
    """The error refusing the damaged checkpoint at ``path``: ``problem`` says what is wrong;
    ``where`` is the function the message names."""
    return ValueError(
        f"{where}: the checkpoint at {path} is damaged or from another version ({problem}); "
        "start a new run."
    )


def is_count(x, minimum=0) -> bool:
    """A Python int (not bool) >= ``minimum``."""
    return isinstance(x, int) and not isinstance(x, bool) and x >= minimum
