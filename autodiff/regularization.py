"""L2 parameter regularisation as in the Durstewitz lab's training code.

The lab's ``regularize`` adds ``lambda * (||1 - A||^2 + sum_W ||W||^2 + sum_h ||h||^2)`` to the
loss: the diagonal ``A`` is pulled towards 1 (slow, line-attractor-like dynamics; Schmidt et
al., ICLR 2021), weights and biases towards 0. The blocks are found by name in the model's
:meth:`~models.base.Model.param_spec` (``A...``, ``W...``, ``h...`` / ``b...``), so the penalty
works for any model; the SSMs, whose recurrence parameters also start with ``W`` / ``b``, list
their penalised blocks (the readout MLP) in :data:`PENALISED`.
"""

import math
import numbers

import numpy as np

from models.base import Model

#: regularisation group -> target value its blocks are pulled towards
GROUPS = {"A": 1.0, "W": 0.0, "bias": 0.0}

#: the lab's naming convention: block-name prefixes of each group
PREFIXES = {"A": ("A",), "W": ("W",), "bias": ("h", "b")}

_SSM_READOUT = {"A": (), "W": ("W1", "W2"), "bias": ("b1", "b2")}
#: model class name -> {group: penalised block names}, for models whose block names do not
#: follow the convention: the SSMs, whose recurrence parameters (``W_delta``, ``W_B``,
#: ``b_delta`` ...) are never regularised, only their readout MLP
PENALISED = {"LinearSSM": _SSM_READOUT, "SelectiveSSM": _SSM_READOUT}


def _penalised_blocks(model) -> dict[str, tuple[str, ...]]:
    """``{group: block names}`` of ``model``: its class's (or nearest base class's) entry in
    :data:`PENALISED`, else its ``param_spec`` names classified by :data:`PREFIXES`."""
    for cls in type(model).__mro__:
        if cls.__name__ in PENALISED:
            return PENALISED[cls.__name__]
    names = [name for name, _ in model.param_spec()]
    return {g: tuple(n for n in names if n.startswith(PREFIXES[g])) for g in GROUPS}


def unpenalised_problem(model, weights, penalised: dict | None = None) -> str:
    """The refusal (a sentence) of a weights dict giving a positive weight to a group that
    has no parameter block in ``model`` (an SSM's ``"A"``: its recurrence is never
    regularised), which would add nothing; ``""`` when there is none. One number for all
    groups applies to those the model has, and is never refused. ``penalised``: the model's
    :func:`_penalised_blocks`, when the caller has them."""
    if not isinstance(weights, dict):
        return ""
    penalised = _penalised_blocks(model) if penalised is None else penalised
    empty = [g for g, w in weights.items() if g in penalised and not penalised[g] and w != 0]
    if not empty:
        return ""
    return (
        f"a {type(model).__name__} has no parameter in the l2 group(s) "
        f"{', '.join(map(repr, empty))} (penalised here: "
        f"{', '.join(f'{g} {list(n)}' for g, n in penalised.items() if n)}); drop "
        f"{'it or set it' if len(empty) == 1 else 'them or set them'} to 0."
    )


def _check_weights(weights) -> dict[str, float]:
    if isinstance(weights, dict):
        unknown = sorted(set(weights) - set(GROUPS), key=repr)  # keys of any type
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
        if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
            raise TypeError(
                f"l2_penalty: weight for {group!r} must be a real number; "
                f"got {type(value).__name__}."
            )
        x = float(value)
        if not (math.isfinite(x) and x >= 0.0):
            raise ValueError(f"l2_penalty: weight for {group!r} must be finite and >= 0; got {x}.")
        out[group] = x
    return out


def l2_penalty(model, weights: dict | float) -> tuple[float, np.ndarray]:
    """The lab's L2 penalty on a model's parameters and its gradient.

    ``penalty = lambda_A sum (1 - A)^2 + lambda_W sum W^2 + lambda_bias sum bias^2``

    over the model's named parameter blocks, classified by the start of the name
    (case-sensitive): ``"A..."`` -> group ``"A"`` (pulled towards 1), ``"W..."`` -> group
    ``"W"``, ``"h..."`` / ``"b..."`` -> group ``"bias"``; for ``LinearSSM`` and
    ``SelectiveSSM`` (and subclasses) only the readout MLP (``W1``, ``W2``; ``b1``, ``b2``),
    as :data:`PENALISED` lists. The initial-state map ``L0`` and the SSM recurrence
    parameters (``nu``, ``theta``, ``B_*``, ``C_*``; ``W_delta``, ``b_delta``, ``log_A``,
    ``W_B``, ``W_C``) are never regularised.

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
    if not isinstance(model, Model):
        raise TypeError(f"l2_penalty: model must be a parscan model; got {type(model).__name__}.")
    lam = _check_weights(weights)
    penalised = _penalised_blocks(model)
    problem = unpenalised_problem(model, weights, penalised)
    if problem:
        raise ValueError(f"l2_penalty: {problem}")
    grad = np.zeros(model.n_params, dtype=model.dtype)
    grad_blocks = model.unflatten(grad)
    blocks = model.unflatten()
    penalty = 0.0
    for group, names in penalised.items():
        if lam[group] == 0.0:
            continue
        for name in names:
            diff = blocks[name].astype(np.float64) - GROUPS[group]
            penalty += lam[group] * float(np.sum(diff * diff))
            grad_blocks[name][...] = 2.0 * lam[group] * diff
    return penalty, grad
