"""The last step of model selection in :func:`autodiff.fit`: the best-validated epochs
re-checked for spurious fixed points with long free runs.

D_stsp, a Kullback-Leibler divergence of the data's occupation measure from the model's,
barely registers a run that collapses late: a run that rests on a fixed point for its last
40 % only lacks 40 % of its mass elsewhere, about log(1 / 0.6) = 0.5 more. A model whose chaos
is transient (long chaotic stretches, then a stable equilibrium) can therefore validate best
and still lose the attractor from almost every start -- Lorenz-63 reconstructions whose
equilibria C+/- turned stable do (``README``, "What is measured"). :func:`select` re-runs the
candidates far longer, from more starts, and passes over those whose runs come to rest
(:func:`models.metrics.fixed_point_onsets`).
"""

import numpy as np

from models.metrics import fixed_point_onsets

#: a candidate more than this fraction of whose selection runs rest is passed over
REST_FRACTION_ALLOWED = 1 / 8
#: elements (runs x steps x latents) of one batch of selection runs (bounds their memory)
_BATCH_ELEMENTS = 1 << 24


def select(model, candidates, params, validation, starts, steps):
    """The candidate to keep and each candidate's resting runs.

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
    (int, list of int) or None
        The index of the kept candidate -- the best-validated one of those with at most
        :data:`REST_FRACTION_ALLOWED` of their runs at rest, else the one with the fewest --
        and how many runs of each candidate rest; None when there is nothing to decide (one
        candidate) or the validation data rest themselves (a system with a stable
        equilibrium: resting runs are then no failure).
    """
    trajectories = validation if isinstance(validation, list) else [validation]
    joined = np.concatenate(trajectories).astype(np.float64)
    sd = joined.std(axis=0)
    scale = np.where(sd > 0, sd, 1.0)
    if len(candidates) < 2 or any(fixed_point_onsets(x, scale) >= 0 for x in trajectories):
        return None
    points = joined[np.arange(starts) * len(joined) // starts].astype(model.dtype)
    resting = []
    for row in params:
        model.params[...] = row
        resting.append(_resting_runs(model, points, steps, scale))
    allowed = [k for k, n in enumerate(resting) if n <= REST_FRACTION_ALLOWED * starts]
    kept = allowed[0] if allowed else int(np.argmin(resting))
    return kept, resting


def _resting_runs(model, points, steps, scale):
    """How many free runs of ``model`` from ``points`` (K, N), ``steps`` long, rest; run in
    batches of at most :data:`_BATCH_ELEMENTS` elements. A run that becomes non-finite does
    not rest (:func:`models.metrics.fixed_point_onsets`)."""
    width = getattr(model, "M", model.n_obs)
    batch = max(1, _BATCH_ELEMENTS // (steps * width))
    count = 0
    for first in range(0, len(points), batch):
        with np.errstate(over="ignore", invalid="ignore"):
            runs = model.generate(points[first : first + batch], steps)
        count += int(np.sum(fixed_point_onsets(runs, scale) >= 0))
    return count
