"""parscan: parallel-in-time linear scans and the DEER / GTF-DEER Newton solver.

Public API (imported lazily, so ``import parscan`` stays cheap):

* :func:`linear_scan`, :func:`combine`, :func:`available_backends` -- the scan primitive.
* :func:`deer_solve`, :func:`sequential_solve`, :class:`DeerResult`, :class:`DeerStatus`,
  :class:`DeerConvergenceError`, :func:`gtf_alpha`, :class:`GTFGuaranteeWarning` -- the
  (GTF-)DEER solver
  (Lim et al., ICLR 2024; Hess, Goetz & Durstewitz, arXiv:2605.12683).
"""

from parscan import _env  # noqa: F401  (first: PARSCAN_THREADS before Numba's configuration)
from parscan._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "linear_scan": "parscan.scan",
    "combine": "parscan.scan",
    "available_backends": "parscan.scan",
    "deer_solve": "parscan.deer",
    "sequential_solve": "parscan.deer",
    "DeerResult": "parscan.deer",
    "DeerStatus": "parscan.deer",
    "DeerConvergenceError": "parscan.deer",
    "gtf_alpha": "parscan.gtf",
    "GTFGuaranteeWarning": "parscan.gtf",
}

__all__ = ["__version__", *_EXPORTS]

__getattr__, __dir__ = lazy_exports("parscan", _EXPORTS)
