"""autodiff: explicit adjoint gradients, optimisers, the training loop and checkpoints.

Public names are imported lazily from their modules:

* gradients: :func:`gtf_loss_and_grad` (:class:`GradInfo`), :func:`ssm_loss_and_grad`,
  :func:`l2_penalty`;
* optimisers: :class:`Adam`, :class:`RAdam`, :class:`ExponentialDecay`,
  :func:`clip_grad_norm`, :class:`NonFiniteStepError`;
* training: :func:`fit`, :func:`check_fit`, :class:`TrainConfig`, :class:`TrainResult`,
  :class:`StepInfo`, :class:`EpochInfo`, :class:`TrainingDivergedError`,
  :class:`NoValidationScoreWarning`, :class:`SelectionWarning`.
"""

from parscan._lazy import lazy_exports

_EXPORTS = {
    "gtf_loss_and_grad": "autodiff.gradients",
    "GradInfo": "autodiff.gradients",
    "ssm_loss_and_grad": "autodiff.ssm_gradients",
    "Adam": "autodiff.optim",
    "RAdam": "autodiff.optim",
    "ExponentialDecay": "autodiff.optim",
    "NonFiniteStepError": "autodiff.optim",
    "clip_grad_norm": "autodiff.optim",
    "l2_penalty": "autodiff.regularization",
    "TrainConfig": "autodiff.config",
    "TrainResult": "autodiff.train",
    "fit": "autodiff.train",
    "check_fit": "autodiff.train",
    "StepInfo": "autodiff.train",
    "EpochInfo": "autodiff.train",
    "TrainingDivergedError": "autodiff.train",
    "NoValidationScoreWarning": "autodiff.train",
    "SelectionWarning": "autodiff.train",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports("autodiff", _EXPORTS)
