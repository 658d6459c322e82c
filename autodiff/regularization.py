"""L2 parameter regularisation as in the Durstewitz lab's training code.

The lab's ``regularize`` adds ``lambda * (||1 - A||^2 + sum_W ||W||^2 + sum_h ||h||^2)`` to the
loss: the diagonal ``A`` is pulled towards 1 (slow, line-attractor-like dynamics; Schmidt et
al., ICLR 2021), weights and biases towards 0. Here the blocks are found by name in the model's
:meth:`~models.base.Model.param_spec`, so the penalty works for any model.
"""

import math

import numpy as np

#: regularisation group -> (block-name prefixes, target value the block is pulled towards)
GROUPS = {
    "A": (("A",), 1.0),
    "W": (("W",), 0.0),
    "bias": (("h", "b"), 0.0),
}


def _group_of(name: str) -> str | None:
    for group, (prefixes, _) in GROUPS.items():
        if name.startswith(prefixes):
            return group
    return None


def _check_weights(weights) -> dict[str, float]:
    if isinstance(weights, dict):
        unknown = sorted(set(weights) - set(GROUPS))
        if unknown:
            raise ValueError(
                f"l2_penalty: unknown weight group(s) {unknown}; valid groups: "
                f"{', '.join(repr(g) for g in GROUPS)}."
            )
        raw = {g: weights.get(g, 0.0) for g in GROUPS}
    else:
        raw = dict.fromkeys(GROUPS, weights)
    out = {}
    for group, value in raw.items():
        if isinstance(value, bool):
            raise TypeError(f"l2_penalty: weight for {group!r} must be a real number; got bool.")
        try:
            x = float(value)
        except (TypeError, ValueError):
            raise TypeError(
                f"l2_penalty: weight for {group!r} must be a real number; "
                f"got {type(value).__name__}."
            ) from None
        if not (math.isfinite(x) and x >= 0.0):
            raise ValueError(f"l2_penalty: weight for {group!r} must be finite and >= 0; got {x}.")
        out[group] = x
    return out


def l2_penalty(model, weights: dict | float) -> tuple[float, np.ndarray]:
    """The lab's L2 penalty on a model's parameters and its gradient.

    ``penalty = lambda_A sum (1 - A)^2 + lambda_W sum W^2 + lambda_bias sum bias^2``

    over the model's named parameter blocks, classified by the first character of the name
    (case-sensitive): ``"A..."`` -> group ``"A"`` (pulled towards 1), ``"W..."`` -> group
    ``"W"``, ``"h..."`` / ``"b..."`` -> group ``"bias"``. All other blocks -- the initial-state
    map ``L0``, the SSMs' ``nu``, ``theta``, ``B_re`` ... -- are not regularised.

    Parameters
    ----------
    model : models.base.Model
        Any model with ``param_spec()`` / ``unflatten()``.
    weights : float or dict
        One lambda for all groups (the lab's convention), or ``{"A": .., "W": .., "bias": ..}``
        (missing groups get 0). Each >= 0.

    Returns
    -------
    penalty : float
        The penalty value (to be added to the loss).
    grad : ndarray, shape (n_params,)
        Its gradient with respect to ``model.params``, dtype ``model.dtype``.
    """
    lam = _check_weights(weights)
    grad = np.zeros(model.n_params, dtype=model.dtype)
    grad_blocks = model.unflatten(grad)
    penalty = 0.0
    for name, block in model.unflatten().items():
        group = _group_of(name)
        if group is None or lam[group] == 0.0:
            continue
        diff = block.astype(np.float64) - GROUPS[group][1]
        penalty += lam[group] * float(np.sum(diff * diff))
        grad_blocks[name][...] = 2.0 * lam[group] * diff
    return penalty, grad
