"""models: learnable DSR models, ground-truth systems, data loading and DSR measures.

Public names are imported lazily from their modules (``models.ShPLRNN`` imports
``models.shplrnn`` on first use):

* models: :class:`ShPLRNN`, :class:`ClippedShPLRNN`, :class:`ALRNN`, :class:`PLRNN` (latent
  RNNs), :class:`LinearSSM`, :class:`SelectiveSSM`; their bases :class:`Model`,
  :class:`LatentRNN`; :func:`load`, :func:`load_with_metadata`;
* ground truth: :data:`SYSTEMS`, :class:`System`, :func:`generate`;
* data: :func:`load_data`, :func:`standardize`, :func:`destandardize`;
* DSR measures: :func:`evaluate`, :func:`state_space_divergence`,
  :func:`power_spectrum_distance`, :func:`prediction_error`, :func:`max_lyapunov`,
  :func:`lyapunov_spectrum`, :func:`fixed_point_onsets`;
* model analysis: :func:`fixed_points` (equilibria and their stability), :func:`cycles`
  (periodic orbits).
"""

from parscan._lazy import lazy_exports

_EXPORTS = {
    "Model": "models.base",
    "LatentRNN": "models.base",
    "load": "models.base",
    "load_with_metadata": "models.base",
    "ShPLRNN": "models.shplrnn",
    "ClippedShPLRNN": "models.shplrnn",
    "ALRNN": "models.alrnn",
    "PLRNN": "models.alrnn",
    "LinearSSM": "models.ssm",
    "SelectiveSSM": "models.ssm",
    "SYSTEMS": "models.systems",
    "generate": "models.systems",
    "load_data": "models.data",
    "standardize": "models.data",
    "destandardize": "models.data",
    "System": "models.systems",
    "state_space_divergence": "models.metrics",
    "power_spectrum_distance": "models.metrics",
    "prediction_error": "models.metrics",
    "max_lyapunov": "models.metrics",
    "lyapunov_spectrum": "models.metrics",
    "fixed_point_onsets": "models.metrics",
    "fixed_points": "models.equilibria",
    "cycles": "models.equilibria",
    "evaluate": "models.metrics",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports("models", _EXPORTS)
