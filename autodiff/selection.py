"""The last step of model selection in :func:`autodiff.fit`: the best-validated epochs
re-checked for spurious fixed points and blow-ups with long free runs.

D_stsp, a Kullback-Leibler divergence of the data's occupation measure from the model's,
barely registers a run that collapses late: a run that rests on a fixed point for its last
40 % only lacks 40 % of its mass elsewhere, about log(1 / 0.6) = 0.5 more. A model whose chaos
is transient (long chaotic stretches, then a stable equilibrium) can therefore validate best
and still lose the attractor from almost every start -- Lorenz-63 reconstructions whose
equilibria C+/- turned stable do (``README``, "What is measured"). Nor do the validation runs
see a model that escapes the attractor after they end and grows without bound. :func:`select`
re-runs the candidates far longer, from more starts, and passes over those whose runs fail:
runs that blow up -- become NaN/inf or leave :data:`DIVERGE_FACTOR` data ranges of the
validation data's mean, :func:`models.metrics.evaluate`'s rule (:func:`models.metrics.run_problem`)
-- and runs that come to rest (:func:`models.metrics.fixed_point_onsets`) count alike.
"""

import numpy as np

from autodiff.memory import runs_per_batch
from models.data import column_mean_sd
from models.metrics import fixed_point_onsets, run_problem

#: a candidate more than this fraction of whose selection runs fail (blow up or rest) is
#: passed over
FAILED_FRACTION_ALLOWED = 1 / 8
#: a selection run farther than this many data ranges (of the validation data, per dimension)
#: from their mean has blown up: the ``diverge_factor`` of :func:`models.metrics.evaluate`,
#: which scores the validation runs
DIVERGE_FACTOR = 1e3


def select(model, candidates, params, validation, starts, steps):
    """The candidate to keep and how many runs of each candidate fail.

    Parameters
    ----------
    model : models.Model
        Its parameters are overwritten (the caller sets the kept ones afterwards).
    candidates : list of dict
        ``{"epoch", "scores"}`` of the best-validated epochs, best validation score first.
    params : ndarray, shape (len(candidates), n_params)
        Their parameters.
    validation : ndarray, shape (T, N), or list of them
        The validation data in the model's units.
    starts, steps : int
        Free runs per candidate, from evenly spread validation points (of all validation
        trajectories together), and their length.

    Returns
    -------
    (int, list of int, list of int) or None
        The index of the kept candidate -- the best-validated one of those with at most
        :data:`FAILED_FRACTION_ALLOWED` of their runs failed, else the one with the fewest
        failed runs (the best-validated among equals) -- and, for each candidate, how many of
        its runs rest and how many blow up (NaN/inf, or beyond :data:`DIVERGE_FACTOR` data
        ranges; such a run is not counted as resting too); a failed run is one of either.
        None when there is nothing to decide (one candidate) or the validation data rest
        themselves (a system with a stable equilibrium: resting runs are then no failure).
    """
    trajectories = validation if isinstance(validation, list) else [validation]
    joined = np.concatenate(trajectories).astype(np.float64)
    sd = column_mean_sd(joined)[1]  # joined.std overflows near the largest float64
    scale = np.where(sd > 0, sd, 1.0)
    if len(candidates) < 2 or any(fixed_point_onsets(x, scale) >= 0 for x in trajectories):
        return None
    points = joined[np.arange(starts) * len(joined) // starts].astype(model.dtype)
    mean = joined.mean(axis=0)
    limit = DIVERGE_FACTOR * (joined.max(axis=0) - joined.min(axis=0))
    resting, blown_up = [], []
    for row in params:
        model.params[...] = row
        rest, blow_up = _failed_runs(model, points, steps, scale, mean, limit)
        resting.append(rest)
        blown_up.append(blow_up)
    failed = [a + b for a, b in zip(resting, blown_up, strict=True)]
    allowed = [k for k, n in enumerate(failed) if n <= FAILED_FRACTION_ALLOWED * starts]
    kept = allowed[0] if allowed else int(np.argmin(failed))
    return kept, resting, blown_up


def _failed_runs(model, points, steps, scale, mean, limit):
    """``(resting, blown_up)``: how many free runs of ``model`` from ``points`` (K, N),
    ``steps`` long, blow up (:func:`models.metrics.run_problem` with ``mean`` and ``limit``)
    and how many of the others rest (:func:`models.metrics.fixed_point_onsets`); run in
    batches of :func:`autodiff.memory.runs_per_batch` runs."""
    batch = runs_per_batch(steps, getattr(model, "M", model.n_obs))
    resting = blown_up = 0
    for first in range(0, len(points), batch):
        with np.errstate(over="ignore", invalid="ignore"):
            runs = model.generate(points[first : first + batch], steps)
        # run by run: whether run_problem finds a problem (its message is not needed)
        blows_up = np.array(
            [run_problem(run[None], mean, limit, "", str) is not None for run in runs]
        )
        blown_up += int(np.sum(blows_up))
        resting += int(np.sum((fixed_point_onsets(runs, scale) >= 0) & ~blows_up))
    return resting, blown_up
