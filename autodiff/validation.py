"""The validation data of :func:`autodiff.fit`, checked, and the score that selects its
model: the mean D_stsp + D_H of free runs from evenly spaced validation points
(:func:`models.metrics.evaluate`).

Dynamical-systems reconstruction is judged by the long-term behaviour of free runs, not by the
training loss, and training it is not monotone (DESIGN.md section 7): :func:`autodiff.fit`
(GTF-DEER: Hess, Goetz & Durstewitz, arXiv:2605.12683) scores the model with :func:`validate`
every ``validation_interval`` epochs and after the last one, and its best-scoring epochs are
the candidates for the model it returns (:mod:`autodiff.selection`).
"""

import math
import warnings

import numpy as np

from autodiff.config import MIN_SCORED_STEPS
from models.data import check_trajectory, check_trajectory_or_list, several_trajectories


def check_validation_data(model, validation_data, config):
    """``validation_data`` checked -- one trajectory, or several
    (:func:`models.data.several_trajectories`), each one :func:`validate` can score
    (:func:`_check_validation_length`) -- as one array, or a list of arrays (several; a list
    of one included)."""
    from models.metrics import check_n_bins

    check_trajectory_or_list(validation_data, "fit", "validation_data", model.n_obs)
    checked = []
    for name, x in named_validation(validation_data):
        x = check_trajectory(
            x,
            "fit",
            name=name,
            min_steps=MIN_SCORED_STEPS + 1,
            n_obs=model.n_obs,
            steps_reason=(
                f" The free runs are scored against {name}[1:], and D_stsp and D_H need "
                f"{MIN_SCORED_STEPS} points: pass a longer validation trajectory or "
                "validation_data=None."
            ),
        )
        _check_validation_length(x, name, config.validation_steps)
        checked.append(x)
    check_n_bins(
        config.validation_n_bins,
        model.n_obs,
        where="fit",
        fix="lower validation_n_bins",
        name="validation_n_bins",
    )
    return checked if several_trajectories(validation_data) else checked[0]


def named_validation(validation_data) -> list[tuple[str, object]]:
    """``(name, trajectory)`` of each validation trajectory, named as messages name it:
    ``validation_data``, or ``validation_data[k]`` when several
    (:func:`models.data.several_trajectories`)."""
    if several_trajectories(validation_data):
        return [(f"validation_data[{k}]", x) for k, x in enumerate(validation_data)]
    return [("validation_data", validation_data)]


def _check_validation_length(x, name, validation_steps):
    """Raise unless :func:`validate` can score runs on the validation trajectory ``x`` (named
    ``name``): the free runs start at its points and are compared with ``x[1:]`` (D_stsp) and
    with its first ``min(validation_steps, T_val - 1)`` points (D_H), each needing
    ``MIN_SCORED_STEPS`` points without a constant dimension."""
    where = "fit"
    n_val = x.shape[0]  # at least MIN_SCORED_STEPS + 1 (check_trajectory)
    length = n_val - 1 if validation_steps is None else min(validation_steps, n_val - 1)
    check_trajectory(
        x[1 : 1 + length],
        where,
        name=f"{name}[1:{1 + length}] (the part the validation runs are scored on)",
        min_steps=MIN_SCORED_STEPS,
    )


def check_validation_resolution(validation_data, validation_steps, n_bins):
    """Warn once, in ``fit``'s terms, when the validation runs are too short for a binned
    D_stsp with ``n_bins`` bins per axis against the validation points after the first
    (:func:`models.metrics.check_dstsp_resolution`; several validation trajectories: one run
    from each scored together against all of them, as :func:`models.metrics.evaluate` scores
    them), or for D_H's smoothing (:func:`models.metrics.check_dh_resolution`; several: the
    shortest comparison, naming its trajectory); :func:`validate` then scores without
    repeating them."""
    from models.metrics import DH_SMOOTHING, check_dh_resolution, check_dstsp_resolution

    named = named_validation(validation_data)
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


def validate(model, validation_data, steps, starts, n_bins):
    """Free-run score on the validation trajectory, or trajectories (a list of them), by
    :func:`models.metrics.evaluate`: mean D_stsp (``n_bins`` bins per axis) + D_H over
    ``starts`` runs from each trajectory, at most as many as the shortest one has points
    (several: D_stsp of the i-th runs from all together against all of them, D_H the mean over
    them); inf when not measurable. Their resolution was checked once, at the start
    (:func:`check_validation_resolution`)."""
    from models.metrics import SpectrumResolutionWarning, StateSpaceResolutionWarning, evaluate

    starts = min(starts, *(x.shape[0] for _, x in named_validation(validation_data)))
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
    if out["status"] == "ok" and math.isnan(out["dstsp"] + out["dh"]):  # never a best score
        out = {"status": "non_finite"}
    if out["status"] != "ok":
        return {"dstsp": None, "dh": None, "score": math.inf, "status": out["status"]}
    return {
        "dstsp": out["dstsp"],
        "dh": out["dh"],
        "score": out["dstsp"] + out["dh"],
        "status": "ok",
    }
