"""autodiff: explicit adjoint gradients, optimisers, the training loop and checkpoints.

Public names are imported lazily from their modules.
"""

import importlib

_EXPORTS = {
    "gtf_loss_and_grad": "autodiff.gradients",
    "GradInfo": "autodiff.gradients",
    "ssm_loss_and_grad": "autodiff.ssm_gradients",
    "Adam": "autodiff.optim",
    "RAdam": "autodiff.optim",
    "ExponentialDecay": "autodiff.optim",
    "TrainConfig": "autodiff.train",
    "TrainResult": "autodiff.train",
    "fit": "autodiff.train",
    "StepInfo": "autodiff.train",
    "EpochInfo": "autodiff.train",
    "TrainingDivergedError": "autodiff.train",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'autodiff' has no attribute {name!r}")


def __dir__():
    return __all__
