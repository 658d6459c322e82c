"""Ground-truth dynamical systems for DSR benchmarks, and their integrator.

Each system is defined once, by

* a jitted right-hand side, e.g. ``lorenz63_rhs(x, p, out)``, writing ``dx/dt`` at state ``x``
  (shape ``(D,)``) with parameter vector ``p`` into ``out``,
* a jitted Jacobian, e.g. ``lorenz63_jac(x, p, out)``, writing ``d rhs / dx`` (shape
  ``(D, D)``, row = output) into ``out`` -- the variational equation used by
  :func:`models.metrics.max_lyapunov`,
* a frozen :class:`System` record: parameters, default initial condition, recommended sampling
  step ``dt``, the largest Lyapunov exponent where the literature gives one, a citation and the
  system's time scales, and the kernel id ``kind`` through which the compiled integrator reaches
  the right-hand side (:func:`system_rhs`, :func:`system_jac`).

:data:`SYSTEMS` maps names to records; :func:`generate` samples a trajectory. Integration is the
classical fixed-step fourth-order Runge--Kutta method in float64 with ``ceil(dt / max_step)``
internal steps per sample; ``max_step`` is part of each record. Against
``scipy.integrate.solve_ivp`` (DOP853, ``rtol = atol = 1e-13``), over 3 Lyapunov times (the
exponents of the README's table) from 48 points on each attractor (12 along each default run
of seeds 0-3), sampled at the recommended ``dt``, the largest deviation is typically ~1e-8 of
the attractor's scale (the largest per-dimension sd) and at worst ~1e-6. Median / worst of
the 48: ``lorenz63`` 7e-9 / 1.2e-7 (1.5e-6 from a rarer start), ``rossler`` 3e-9 / 2e-8,
``lorenz96`` 4e-8 / 1.3e-6, ``hindmarsh_rose`` 5e-9 / 4e-7, ``slow_lorenz`` 1.5e-8 / 9e-7.
The error is RK4's (a smaller ``max_step``, through ``dataclasses.replace``, shrinks it) and
grows like ``exp(lambda t)``, fastest from the points where trajectories separate fastest.
``tests/test_systems.py`` checks 12 starts per system: median <= 1e-7, worst <= 2e-6.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from numba import literally

from models._checks import Checks
from models.base import format_bytes, new_run
from parscan._jit import jit

# ---------------------------------------------------------------------------------------------
# Right-hand sides and Jacobians. p is the parameter vector in the order of KERNELS[kind][0]
# (without the dimension parameter of Lorenz-96).
# ---------------------------------------------------------------------------------------------


@jit
def lorenz63_rhs(x, p, out):
    """Lorenz (1963); ``p = (sigma, rho, beta)``."""
    out[0] = p[0] * (x[1] - x[0])
    out[1] = x[0] * (p[1] - x[2]) - x[1]
    out[2] = x[0] * x[1] - p[2] * x[2]


@jit
def lorenz63_jac(x, p, out):
    out[0, 0] = -p[0]
    out[0, 1] = p[0]
    out[0, 2] = 0.0
    out[1, 0] = p[1] - x[2]
    out[1, 1] = -1.0
    out[1, 2] = -x[0]
    out[2, 0] = x[1]
    out[2, 1] = x[0]
    out[2, 2] = -p[2]


@jit
def rossler_rhs(x, p, out):
    """Rössler (1976); ``p = (a, b, c)``."""
    out[0] = -x[1] - x[2]
    out[1] = x[0] + p[0] * x[1]
    out[2] = p[1] + x[2] * (x[0] - p[2])


@jit
def rossler_jac(x, p, out):
    out[0, 0] = 0.0
    out[0, 1] = -1.0
    out[0, 2] = -1.0
    out[1, 0] = 1.0
    out[1, 1] = p[0]
    out[1, 2] = 0.0
    out[2, 0] = x[2]
    out[2, 1] = 0.0
    out[2, 2] = x[0] - p[2]


@jit
def lorenz96_rhs(x, p, out):
    """Lorenz (1996), cyclic in ``D = len(x) >= 4``; ``p = (F,)``."""
    d = x.shape[0]
    for i in range(d):
        out[i] = (x[(i + 1) % d] - x[(i - 2) % d]) * x[(i - 1) % d] - x[i] + p[0]


@jit
def lorenz96_jac(x, p, out):
    d = x.shape[0]
    out[:, :] = 0.0
    for i in range(d):
        out[i, (i + 1) % d] = x[(i - 1) % d]
        out[i, (i - 2) % d] = -x[(i - 1) % d]
        out[i, (i - 1) % d] = x[(i + 1) % d] - x[(i - 2) % d]
        out[i, i] = -1.0


@jit
def hindmarsh_rose_rhs(x, p, out):
    """Hindmarsh & Rose (1984); ``p = (a, b, c, d, r, s, x_rest, I)``."""
    out[0] = x[1] - p[0] * x[0] ** 3 + p[1] * x[0] ** 2 - x[2] + p[7]
    out[1] = p[2] - p[3] * x[0] ** 2 - x[1]
    out[2] = p[4] * (p[5] * (x[0] - p[6]) - x[2])


@jit
def hindmarsh_rose_jac(x, p, out):
    out[0, 0] = -3.0 * p[0] * x[0] ** 2 + 2.0 * p[1] * x[0]
    out[0, 1] = 1.0
    out[0, 2] = -1.0
    out[1, 0] = -2.0 * p[3] * x[0]
    out[1, 1] = -1.0
    out[1, 2] = 0.0
    out[2, 0] = p[4] * p[5]
    out[2, 1] = 0.0
    out[2, 2] = -p[4]


@jit
def slow_lorenz_rhs(x, p, out):
    """Lorenz-63 with ``rho = rho0 + rho_amp * u`` driven by a slow Stuart--Landau oscillator
    ``(u, v)`` of period ``T``; ``p = (sigma, rho0, beta, rho_amp, T)``."""
    w = 2.0 * np.pi / p[4]
    g = 1.0 - x[3] ** 2 - x[4] ** 2
    out[0] = p[0] * (x[1] - x[0])
    out[1] = x[0] * (p[1] + p[3] * x[3] - x[2]) - x[1]
    out[2] = x[0] * x[1] - p[2] * x[2]
    out[3] = w * (g * x[3] - x[4])
    out[4] = w * (g * x[4] + x[3])


@jit
def slow_lorenz_jac(x, p, out):
    w = 2.0 * np.pi / p[4]
    out[:, :] = 0.0
    out[0, 0] = -p[0]
    out[0, 1] = p[0]
    out[1, 0] = p[1] + p[3] * x[3] - x[2]
    out[1, 1] = -1.0
    out[1, 2] = -x[0]
    out[1, 3] = p[3] * x[0]
    out[2, 0] = x[1]
    out[2, 1] = x[0]
    out[2, 2] = -p[2]
    out[3, 3] = w * (1.0 - 3.0 * x[3] ** 2 - x[4] ** 2)
    out[3, 4] = w * (-2.0 * x[3] * x[4] - 1.0)
    out[4, 3] = w * (1.0 - 2.0 * x[3] * x[4])
    out[4, 4] = w * (1.0 - x[3] ** 2 - 3.0 * x[4] ** 2)


#: Most RK4 steps one run (:func:`generate`) may take, transient included, counted in steps of
#: a 3-D system's work (:func:`rk4_work`: a step of Lorenz-96 with N = 3000, or one with
#: tangent vectors, weighs more). The integrator is a compiled loop that Ctrl-C cannot
#: interrupt; at the ~10^7 steps/s of a 3-D system on one core this is 15 minutes to an hour
#: or more, while the defaults need at most ~10^7 (``hindmarsh_rose``: 50 steps per sample,
#: 40,000 transient samples) and 10^6 samples of any system at its ``dt`` at most 5 x 10^7.
#: Longer runs are split into calls that continue from the last sample (``x0=out[-1],
#: transient=0``). The bound also keeps every step count within the int64 arguments of the
#: kernels.
MAX_RK4_STEPS = 10**10


def rk4_work(dim: int, tangents: int = 0) -> float:
    """The time of one RK4 step of a ``dim``-dimensional system, in steps of a 3-dimensional
    one (at least 1), for :data:`MAX_RK4_STEPS`: ``(dim - 1) / 2`` (the right-hand side), and
    with ``tangents`` tangent vectors (Lyapunov exponents) ``dim (1 + dim (1 + tangents)) /
    24`` (the dense Jacobian and its product with them). Fitted to Lorenz-96 on one core
    (a plain 3-D step 82 ns): 6,597 steps' time for N = 10^4; with tangents 0.034-0.051 of
    ``dim (1 + dim (1 + tangents))`` for N = 40, 100, 1000 and 1 or N of them."""
    per_step = dim * (1 + dim * (1 + tangents)) / 24 if tangents else (dim - 1) / 2
    return max(1.0, per_step)


#: Kernel ids of the built-in systems, the ``kind`` argument of the kernels below.
LORENZ63, ROSSLER, LORENZ96, HINDMARSH_ROSE, SLOW_LORENZ = range(5)

#: Per kernel id: the names of the entries of the parameter vector ``p``, in the order its
#: right-hand side and Jacobian read them, and the state dimension they assume (None: any,
#: set by the record's integer ``dim_param``, which is not part of ``p``).
KERNELS = {
    LORENZ63: (("sigma", "rho", "beta"), 3),
    ROSSLER: (("a", "b", "c"), 3),
    LORENZ96: (("F",), None),
    HINDMARSH_ROSE: (("a", "b", "c", "d", "r", "s", "x_rest", "I"), 3),
    SLOW_LORENZ: (("sigma", "rho0", "beta", "rho_amp", "period"), 5),
}


@jit
def system_rhs(kind, x, p, out):
    """``rhs`` of the system with kernel id ``kind``.

    The kernels dispatch on an integer instead of taking the jitted right-hand side as an
    argument: a dispatcher-typed argument changes its type every session and defeats Numba's
    on-disk cache (numba/numba#6264). The outer kernels force ``kind`` to a compile-time
    literal (``numba.literally``), so each system gets its own specialisation in which this
    branch is folded away (a runtime branch over five calls costs ~5x in the RK4 loop).
    """
    if kind == LORENZ63:
        lorenz63_rhs(x, p, out)
    elif kind == ROSSLER:
        rossler_rhs(x, p, out)
    elif kind == LORENZ96:
        lorenz96_rhs(x, p, out)
    elif kind == HINDMARSH_ROSE:
        hindmarsh_rose_rhs(x, p, out)
    else:
        slow_lorenz_rhs(x, p, out)


@jit
def system_jac(kind, x, p, out):
    """Jacobian of the system with kernel id ``kind`` (see :func:`system_rhs`)."""
    if kind == LORENZ63:
        lorenz63_jac(x, p, out)
    elif kind == ROSSLER:
        rossler_jac(x, p, out)
    elif kind == LORENZ96:
        lorenz96_jac(x, p, out)
    elif kind == HINDMARSH_ROSE:
        hindmarsh_rose_jac(x, p, out)
    else:
        slow_lorenz_jac(x, p, out)


# ---------------------------------------------------------------------------------------------
# Integrator kernels (classical RK4, float64).
# ---------------------------------------------------------------------------------------------


@jit
def rk4_step(kind, x, p, h, work):
    """One classical RK4 step of size ``h``, in place on ``x``; ``work`` has shape (5, D)."""
    d = x.shape[0]
    k1, k2, k3, k4, tmp = work[0], work[1], work[2], work[3], work[4]
    system_rhs(kind, x, p, k1)
    for i in range(d):
        tmp[i] = x[i] + 0.5 * h * k1[i]
    system_rhs(kind, tmp, p, k2)
    for i in range(d):
        tmp[i] = x[i] + 0.5 * h * k2[i]
    system_rhs(kind, tmp, p, k3)
    for i in range(d):
        tmp[i] = x[i] + h * k3[i]
    system_rhs(kind, tmp, p, k4)
    for i in range(d):
        x[i] += h / 6.0 * (k1[i] + 2.0 * k2[i] + 2.0 * k3[i] + k4[i])


@jit
def matmul_into(a, b, out):
    """``out[:] = a @ b`` for 2-D float arrays (a plain loop: cheap to compile)."""
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            acc = 0.0
            for m in range(a.shape[1]):
                acc += a[i, m] * b[m, j]
            out[i, j] = acc


@jit
def _axpy_into(y, a, q, out):
    for i in range(y.shape[0]):
        for j in range(y.shape[1]):
            out[i, j] = y[i, j] + a * q[i, j]


@jit
def rk4_tangent_step(kind, x, y, p, h, work, jwork, ywork):
    """One RK4 step of the flow and its variational equation ``dY/dt = J(x) Y``, in place.

    ``x`` has shape (D,), ``y`` (D, k) (k tangent vectors); ``work`` (5, D), ``jwork`` (D, D)
    and ``ywork`` (5, D, k) are scratch. The tangent vectors are propagated with the Jacobian
    at each RK stage, so ``y`` is the derivative of the discrete RK4 map (Benettin et al.,
    Meccanica 15, 9-20, 1980; Parker & Chua, Practical Numerical Algorithms for Chaotic
    Systems, 1989).
    """
    d = x.shape[0]
    k1, k2, k3, k4, tmp = work[0], work[1], work[2], work[3], work[4]
    q1, q2, q3, q4, ytmp = ywork[0], ywork[1], ywork[2], ywork[3], ywork[4]
    system_rhs(kind, x, p, k1)
    system_jac(kind, x, p, jwork)
    matmul_into(jwork, y, q1)
    for i in range(d):
        tmp[i] = x[i] + 0.5 * h * k1[i]
    _axpy_into(y, 0.5 * h, q1, ytmp)
    system_rhs(kind, tmp, p, k2)
    system_jac(kind, tmp, p, jwork)
    matmul_into(jwork, ytmp, q2)
    for i in range(d):
        tmp[i] = x[i] + 0.5 * h * k2[i]
    _axpy_into(y, 0.5 * h, q2, ytmp)
    system_rhs(kind, tmp, p, k3)
    system_jac(kind, tmp, p, jwork)
    matmul_into(jwork, ytmp, q3)
    for i in range(d):
        tmp[i] = x[i] + h * k3[i]
    _axpy_into(y, h, q3, ytmp)
    system_rhs(kind, tmp, p, k4)
    system_jac(kind, tmp, p, jwork)
    matmul_into(jwork, ytmp, q4)
    for i in range(d):
        x[i] += h / 6.0 * (k1[i] + 2.0 * k2[i] + 2.0 * k3[i] + k4[i])
    for i in range(d):
        for j in range(y.shape[1]):
            y[i, j] += h / 6.0 * (q1[i, j] + 2.0 * q2[i, j] + 2.0 * q3[i, j] + q4[i, j])


@jit
def rk4_trajectory(kind, x0, p, h, n_sub, n_skip, out):
    """Sample the flow from ``x0`` every ``n_sub`` RK4 steps of size ``h``.

    ``out[i]`` (shape ``(n_out, D)``) receives the state at time ``(n_skip + i) * n_sub * h``;
    the first ``n_skip`` samples are discarded. Returns -1, or the index of the first sample
    (counting the discarded ones) whose state is not finite, at which point it stops.
    """
    literally(kind)  # one specialisation per system: the dispatch in system_rhs folds away
    if out.shape[1] != x0.shape[0]:  # the samples are stored element by element, unchecked
        raise ValueError("rk4_trajectory: out must have shape (n_out, len(x0))")
    x = x0.copy()
    work = np.empty((5, x.shape[0]))
    n_total = n_skip + out.shape[0]
    for s in range(n_total):
        if not np.all(np.isfinite(x)):
            return s
        if s >= n_skip:
            for d in range(x.shape[0]):  # not `out[i] = x`: the message of its shape check
                out[s - n_skip, d] = x[d]  # costs ~4 s of compiling on a first run
        if s < n_total - 1:
            for _ in range(n_sub):
                rk4_step(kind, x, p, h, work)
    return -1


# ---------------------------------------------------------------------------------------------
# Records.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class System:
    """A ground-truth dynamical system ``dx/dt = rhs(x, p)``.

    Attributes
    ----------
    name : str
        Registry key in :data:`SYSTEMS`.
    dim : int
        State dimension D for the default parameters; for a system whose dimension is a
        parameter it must equal ``params[dim_param]`` (set both in ``dataclasses.replace``).
    params : Mapping[str, float]
        Default parameters (read-only): exactly the names the kernels read
        (``KERNELS[kind][0]``) plus ``dim_param``, in any order. The parameter vector ``p``
        passed to the kernels is built in the kernels' order.
    x0 : tuple of float
        Default initial condition (on or near the attractor), finite real numbers: ``dim``
        of them, or for a system whose dimension is a parameter any number >= 1, repeated
        cyclically and cut to the dimension D of the run (``np.resize``: entry ``i`` is
        ``x0[i % len(x0)]``, also when D is not a multiple of ``len(x0)``).
    dt : float
        Recommended sampling step (time units per observation).
    max_step : float
        Largest internal RK4 step; each sample uses ``ceil(dt / max_step)`` steps.
    transient_time : float
        Default transient (time units) discarded by :func:`generate`.
    x0_spread : float
        Standard deviation of the seeded Gaussian perturbation of ``x0`` that makes different
        seeds start from different initial conditions.
    lyapunov : float or None
        Largest Lyapunov exponent per unit time for the default parameters, from the cited
        literature; None where no reference value exists.
    citation : str
    description : str
        What the variables are, the regime, and the time scales (in time units and in steps of
        the recommended ``dt``).
    kind : int
        Kernel id selecting the right-hand side and Jacobian in :func:`system_rhs` and
        :func:`system_jac` (e.g. :data:`LORENZ63`); a Python ``int``, which Numba can make a
        compile-time literal (a NumPy integer cannot be one).
    dim_param : str or None
        Name of the integer parameter that sets the dimension (Lorenz-96: ``"N"``).
    """

    name: str
    dim: int
    params: Mapping[str, float]
    x0: tuple[float, ...]
    dt: float
    max_step: float
    transient_time: float
    x0_spread: float
    lyapunov: float | None
    citation: str
    description: str
    kind: int
    dim_param: str | None = None

    def __post_init__(self):
        """Refuse a record (e.g. made with ``dataclasses.replace``) whose kernel would read
        parameters or state entries it does not have, or whose fields contradict each other."""
        dim = f"dim of {self.name!r}"
        with Checks("System") as checks:
            if isinstance(self.kind, bool) or type(self.kind) is not int:
                checks.add(
                    f"kind of {self.name!r} must be a Python int (a kernel id such as LORENZ63); "
                    f"got {type(self.kind).__name__}. Use int(kind).",
                    "kind",
                    wrong_kind=True,
                )
            elif self.kind not in KERNELS:
                checks.add(
                    f"unknown kernel id kind={self.kind!r}; known: {sorted(KERNELS)} (LORENZ63, "
                    f"ROSSLER, LORENZ96, HINDMARSH_ROSE, SLOW_LORENZ).",
                    "kind",
                )
            if not isinstance(self.params, Mapping):
                checks.add(
                    f"params of {self.name!r} must be a dict; got {type(self.params).__name__}.",
                    "params",
                    wrong_kind=True,
                )
            checks.integer(self.dim, dim)
            checks.real(self.dt, f"dt of {self.name!r}", positive=True)
            checks.real(self.max_step, f"max_step of {self.name!r}", positive=True)
            checks.real(self.transient_time, f"transient_time of {self.name!r}", positive=False)
            checks.real(self.x0_spread, f"x0_spread of {self.name!r}", positive=False)
            if checks.ok("kind"):
                self._check_kernel_fit(checks, dim)
            self._check_x0(checks, dim)

    def _check_kernel_fit(self, checks: Checks, dim: str) -> None:
        """Record in ``checks`` the parameters and dimension (argument ``dim``) the kernel of
        a valid ``kind`` cannot run with."""
        names, kernel_dim = KERNELS[self.kind]
        if checks.ok("params"):
            expected = set(names) | ({self.dim_param} if self.dim_param else set())
            missing = [k for k in (*names, self.dim_param) if k and k not in self.params]
            extra = sorted(set(self.params) - expected)
            if missing or extra:
                checks.add(
                    f"params of {self.name!r} must name exactly the parameters its kernel reads "
                    f"({', '.join(sorted(expected))}); missing {missing}, unknown {extra}.",
                    "params",
                )
        if not checks.ok(dim):
            return
        misfit = (kernel_dim is None) != (self.dim_param is not None)
        if misfit or kernel_dim not in (None, self.dim):
            needs = f"dim={kernel_dim} and no dim_param" if kernel_dim else "a dim_param (e.g. 'N')"
            checks.add(
                f"the kernel of {self.name!r} needs {needs}; got dim={self.dim}, "
                f"dim_param={self.dim_param!r}.",
                dim,
            )
        elif (
            checks.ok("params")
            and self.dim_param is not None
            and self.params[self.dim_param] != self.dim
        ):
            checks.add(
                f"dim={self.dim!r} of {self.name!r} contradicts params[{self.dim_param!r}]="
                f"{self.params[self.dim_param]!r}; set both to the same D: dataclasses.replace("
                f"record, dim=D, params={{**record.params, {self.dim_param!r}: D}}).",
                dim,
            )

    def _check_x0(self, checks: Checks, dim: str) -> None:
        """Record in ``checks`` an ``x0`` that is not a sequence of finite reals of an
        admissible length (the length only against a valid ``dim``, the argument so named)."""
        real = int | float | np.integer | np.floating
        if isinstance(self.x0, str) or not isinstance(self.x0, Sequence | np.ndarray):
            checks.add(
                f"x0 of {self.name!r} must be a tuple of floats (the default initial "
                f"condition); got {type(self.x0).__name__}.",
                wrong_kind=True,
            )
            return
        if not all(isinstance(v, real) and not isinstance(v, bool) for v in self.x0):
            checks.add(
                f"x0 of {self.name!r} must hold real numbers; got {self.x0!r}.", wrong_kind=True
            )
            return
        if not all(math.isfinite(v) for v in self.x0):
            checks.add(f"x0 of {self.name!r} must be finite; got {self.x0!r}.")
        if self.dim_param is not None and len(self.x0) == 0:
            checks.add(
                f"x0 of {self.name!r} must have at least one entry (it is repeated to the "
                f"dimension {self.dim_param}); got none."
            )
        if self.dim_param is None and checks.ok(dim) and len(self.x0) != self.dim:
            checks.add(f"x0 of {self.name!r} must have dim={self.dim} entries; got {len(self.x0)}.")

    def resolve(self, params: Mapping | None = None, where: str = "System.resolve"):
        """Merge ``params`` into the defaults and validate them (all problems in one error).

        Returns
        -------
        dim : int
            The state dimension D.
        p : ndarray, shape (n_params,), float64
            Parameter vector for ``rhs`` and ``jac``.
        """
        with Checks(where) as checks:
            dim, p = self._resolve(checks, params)
        return dim, p

    def _resolve(self, checks: Checks, params):
        """:meth:`resolve`, recording the problems in ``checks`` (the argument ``params``
        marked bad): ``p`` is None when there are any, ``dim`` when the dimension parameter
        is bad (a fixed dimension is returned all the same, for the checks that need it)."""
        merged = dict(self.params)
        if params is not None and not isinstance(params, Mapping):
            checks.add(
                f"params must be a dict; got {type(params).__name__}. Known parameters of "
                f"{self.name}: {', '.join(self.params)}.",
                "params",
                wrong_kind=True,
            )
        elif params is not None:
            unknown = sorted(set(params) - set(self.params))
            if unknown:
                checks.add(
                    f"unknown parameter(s) {unknown} for system {self.name!r}; known: "
                    f"{', '.join(self.params)}.",
                    "params",
                )
            merged.update((k, v) for k, v in params.items() if k in self.params)
        real = int | float | np.integer | np.floating
        kinds = [k for k, v in merged.items() if isinstance(v, bool) or not isinstance(v, real)]
        if kinds:
            checks.add(
                f"parameters of {self.name!r} must be real numbers; got "
                f"{', '.join(f'{k}={merged[k]!r}' for k in kinds)}.",
                "params",
                wrong_kind=True,
            )
        infinite = [k for k, v in merged.items() if k not in kinds and not math.isfinite(v)]
        if infinite:
            checks.add(
                f"parameters of {self.name!r} must be finite; got "
                f"{', '.join(f'{k}={merged[k]!r}' for k in infinite)}.",
                "params",
            )
        dim = self.dim
        if self.dim_param is not None and self.dim_param in kinds + infinite:
            dim = None
        elif self.dim_param is not None:
            name = f"{self.name} parameter {self.dim_param}"
            dim = checks.integer(merged[self.dim_param], name, 4)
            dim = dim if checks.ok(name) else None
        if dim is None or not checks.ok("params"):
            return dim, None
        return dim, np.array([float(merged[k]) for k in KERNELS[self.kind][0]])

    def rhs(self, x, params: Mapping | None = None) -> np.ndarray:
        """``dx/dt`` at ``x`` (shape ``(D,)``, float64) for ``params`` (default parameters)."""
        x, p = self._point(x, params, "System.rhs")
        out = np.empty_like(x)
        system_rhs(self.kind, x, p, out)
        return out

    def jacobian(self, x, params: Mapping | None = None) -> np.ndarray:
        """``d rhs / dx`` at ``x``, shape ``(D, D)`` (row = output), float64."""
        x, p = self._point(x, params, "System.jacobian")
        out = np.empty((x.shape[0], x.shape[0]))
        system_jac(self.kind, x, p, out)
        return out

    def _point(self, x, params, where):
        with Checks(where) as checks:
            dim, p = self._resolve(checks, params)
            x = checks.array(x, "x")
            if not checks.ok("x"):
                pass  # a masked array or ragged lists: recorded
            elif x.dtype != np.float64:
                checks.add(
                    f"x must be a float64 array; got dtype {x.dtype}. Use "
                    f"np.asarray(x, dtype=np.float64).",
                    wrong_kind=True,
                )
            elif dim is not None and x.shape != (dim,):
                checks.add(f"x must have shape ({dim},) for {self.name}; got {x.shape}.")
        return x, p

    def substeps(self, dt: float, where: str = "System.substeps") -> int:
        """Internal RK4 steps per sample of size ``dt``: ``ceil(dt / max_step)``, at least 1.

        Raises
        ------
        TypeError, ValueError
            Naming ``where``: ``dt`` is not a finite real number > 0, or it needs more than
            :data:`MAX_RK4_STEPS` steps per sample.
        """
        with Checks(where) as checks:
            dt = checks.real(dt, "dt", positive=True)
            if checks.ok("dt") and dt / self.max_step > MAX_RK4_STEPS:
                checks.add(
                    f"dt={dt:g} needs {dt / self.max_step:.3g} RK4 steps (of at most max_step="
                    f"{self.max_step:g}) per sample, more than MAX_RK4_STEPS = "
                    f"{MAX_RK4_STEPS:.0e} in all. Use dt <= {MAX_RK4_STEPS * self.max_step:g}.",
                    "dt",
                )
        return max(1, math.ceil(dt / self.max_step - 1e-9))

    def plan_with(
        self,
        checks: Checks,
        dt: float,
        transient: int | None,
        n_steps: int,
        split: str | None = None,
        work: float = 1.0,
        from_x0: bool = True,
    ):
        """Internal RK4 steps per sample and samples of transient of a run of ``n_steps``
        samples at the sampling step ``dt``, for a function that gathers the problems of its
        arguments (so named) in ``checks``; call it when they passed their own checks.

        ``transient`` None means ``ceil(transient_time / dt)``. A run of more than
        :data:`MAX_RK4_STEPS` RK4 steps in all (``n_sub * (transient + n_steps - 1)``, the
        steps of :func:`rk4_trajectory`, whose first sample is the start when ``from_x0``;
        else ``n_sub * (transient + n_steps)``, as a tangent run integrates every sample),
        each weighing ``work`` (:func:`rk4_work`), is
        recorded in ``checks`` instead of started; the message offers ``split`` (a clause:
        how the caller's user splits a run into calls) when given, besides smaller
        ``n_steps`` or ``transient``.

        Returns
        -------
        tuple of (int, int), or None
            ``(n_sub, transient)``: :meth:`substeps` of ``dt`` and the samples of transient;
            None when a problem was recorded.
        """
        with checks.caught("dt"):
            n_sub = self.substeps(dt, checks.where)
        or_split = f", or {split}" if split else ""
        for name, value in (("n_steps", n_steps), ("transient", transient)):
            if value is not None and value > MAX_RK4_STEPS:
                checks.add(
                    f"{name} must be <= MAX_RK4_STEPS = {MAX_RK4_STEPS:.0e} (each sample takes "
                    f"at least one RK4 step); got {value}. Use a smaller {name}{or_split}.",
                    name,
                )
        if not checks.ok("dt", "n_steps", "transient"):
            return None
        skip = transient
        if skip is None:  # ceil, less a rounding margin: 20 / 0.01 is 2000 samples, not 2001
            skip = self.transient_time / dt  # a float of any size, inf for a tiny dt
            skip = float(math.ceil(skip - 1e-9)) if math.isfinite(skip) else skip
        total = n_sub * (skip + n_steps - from_x0)
        if total * work > MAX_RK4_STEPS:
            default = " (the default, ceil(transient_time / dt))" if transient is None else ""
            weighed = f", the work of {total * work:.3g} steps of a 3-D system" if work > 1 else ""
            checks.add(
                f"the run would take {total:.3g} RK4 steps ({n_sub} per sample of dt={dt:g} over "
                f"transient={skip:.6g}{default} + n_steps={n_steps} samples){weighed}, more "
                f"than MAX_RK4_STEPS = {MAX_RK4_STEPS:.0e} (too long for one call of a "
                f"compiled loop that Ctrl-C cannot stop). Use a smaller n_steps or "
                f"transient{or_split}.",
                "dt",
            )
            return None
        return n_sub, int(skip)

    def prepare(self, *, params=None, x0=None, seed=0, where="System.prepare"):
        """Parameters and initial condition for a run.

        Without ``x0`` the initial condition is ``x0_default + x0_spread * N(0, I)`` drawn from
        ``numpy.random.default_rng(seed)``; the generator is returned so that later draws
        (observation noise) continue the same stream. The problems of ``params``, ``x0`` and
        ``seed`` are raised together, naming ``where``.

        Returns
        -------
        p : ndarray, shape (n_params,)
        x0 : ndarray, shape (D,), float64
        rng : numpy.random.Generator
        """
        with Checks(where) as checks:
            run = self.prepare_with(checks, params=params, x0=x0, seed=seed)
        return run

    def prepare_with(self, checks: Checks, *, params=None, x0=None, seed=0):
        """:meth:`prepare` for a function that gathers the problems of its own arguments in
        ``checks``: the problems of ``params``, ``x0`` and ``seed`` are recorded there, and
        the result is None when there are any (``checks`` then raises them)."""
        dim, p = self._resolve(checks, params)
        seed = checks.seed(seed)
        if x0 is not None:
            arr = checks.array(x0, "x0")
            if not checks.ok("x0"):
                pass  # a masked array or ragged lists: recorded
            elif arr.dtype.kind not in "iuf":
                checks.add(
                    f"x0 must be a real numeric array; got dtype {arr.dtype}.",
                    "x0",
                    wrong_kind=True,
                )
            elif dim is not None and arr.shape != (dim,):
                checks.add(f"x0 must have shape ({dim},) for {self.name}; got {arr.shape}.", "x0")
            elif not np.all(np.isfinite(arr)):
                checks.add(f"x0 contains NaN or inf: {arr}.", "x0")
        if p is None or not checks.ok("seed", "x0"):
            return None
        rng = np.random.default_rng(seed)
        if x0 is None:
            try:
                start = np.resize(np.asarray(self.x0, dtype=np.float64), dim)
            except (MemoryError, ValueError, OverflowError):  # NumPy: too large, or no index
                checks.add(
                    f"{self.name} parameter {self.dim_param} = {dim}: a state of {dim} values "
                    f"needs {format_bytes(8 * dim)}, more than this machine can allocate; use "
                    f"a smaller {self.dim_param}.",
                    "params",
                )
                return None
            start = start + self.x0_spread * rng.standard_normal(dim)
        else:
            start = arr.astype(np.float64)
        return p, start, rng


_TAU = "time units"

SYSTEMS: dict[str, System] = {
    "lorenz63": System(
        name="lorenz63",
        dim=3,
        params=MappingProxyType({"sigma": 10.0, "rho": 28.0, "beta": 8.0 / 3.0}),
        x0=(-8.0, 7.0, 27.0),
        dt=0.01,
        max_step=0.001,
        transient_time=20.0,
        x0_spread=1.0,
        lyapunov=0.9056,
        citation=(
            "E. N. Lorenz, Deterministic nonperiodic flow, J. Atmos. Sci. 20, 130-141 (1963); "
            "Lyapunov exponent from J. C. Sprott, Chaos and Time-Series Analysis, Oxford "
            "University Press (2003)."
        ),
        description=(
            "Convection model, chaotic butterfly attractor. Oscillation around a wing ~0.7 "
            f"{_TAU} (~70 steps at dt=0.01), Lyapunov time 1.1 {_TAU} (~110 steps), "
            "wing switches every ~1-10 time units."
        ),
        kind=LORENZ63,
    ),
    "rossler": System(
        name="rossler",
        dim=3,
        params=MappingProxyType({"a": 0.2, "b": 0.2, "c": 5.7}),
        x0=(-9.0, 0.0, 0.0),
        dt=0.05,
        max_step=0.002,
        transient_time=200.0,
        x0_spread=1.0,
        lyapunov=0.0714,
        citation=(
            "O. E. Rössler, An equation for continuous chaos, Phys. Lett. A 57, 397-398 (1976); "
            "Lyapunov exponent from J. C. Sprott, Chaos and Time-Series Analysis (2003)."
        ),
        description=(
            "Spiral chaos with rare excursions in z. Rotation period ~6 "
            f"{_TAU} (~120 steps at dt=0.05), Lyapunov time ~14 {_TAU} (~280 steps)."
        ),
        kind=ROSSLER,
    ),
    "lorenz96": System(
        name="lorenz96",
        dim=10,
        params=MappingProxyType({"N": 10, "F": 8.0}),
        x0=(8.01, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0),
        dt=0.01,
        max_step=0.002,
        transient_time=20.0,
        x0_spread=1.0,
        lyapunov=None,
        citation=(
            "E. N. Lorenz, Predictability: a problem partly solved, Proc. Seminar on "
            "Predictability, ECMWF (1996); E. N. Lorenz & K. A. Emanuel, J. Atmos. Sci. 55, "
            "399-414 (1998)."
        ),
        description=(
            "Cyclic chain dx_i/dt = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F, any N >= 4 "
            "(params={'N': N, 'F': F}); chaotic for F = 8 from N = 5 (N = 4 is regular: "
            "lambda_max ~0). Damping time 1 time unit (100 steps "
            "at dt=0.01). lambda_max from max_lyapunov over 10^6 samples: 1.18 for N=10 "
            "(Lyapunov time ~85 steps), 1.70 for N=40 (literature ~1.7); the default 20,000 "
            "give 1.08 and 1.69. x0 is x_i = 8 (the fixed point for "
            "F = 8) with x_0 kicked by 0.01, these 10 values repeated cyclically and cut to N."
        ),
        kind=LORENZ96,
        dim_param="N",
    ),
    "hindmarsh_rose": System(
        name="hindmarsh_rose",
        dim=3,
        params=MappingProxyType(
            {
                "a": 1.0,
                "b": 3.0,
                "c": 1.0,
                "d": 5.0,
                "r": 0.006,
                "s": 4.0,
                "x_rest": -1.6,
                "I": 3.25,
            }
        ),
        x0=(-1.3, -7.3, 3.1),
        dt=0.05,
        max_step=0.001,
        transient_time=2000.0,
        x0_spread=0.1,
        lyapunov=None,
        citation=(
            "J. L. Hindmarsh & R. M. Rose, A model of neuronal bursting using three coupled "
            "first order differential equations, Proc. R. Soc. Lond. B 221, 87-102 (1984)."
        ),
        description=(
            "Bursting neuron: membrane potential x, fast recovery y, slow adaptation current z "
            "(rate r = 0.006, time scale 1/r ~170 time units = 3,300 steps at dt=0.05). "
            "I = 3.25 is the chaotic bursting regime: bursts of 2-4 spikes, a spike lasts ~1 "
            "time unit (20 steps), interspike intervals 12-30 time units (250-600 steps), "
            "quiet phases 45-70 time units, burst cycle 80-140 time units (median ~105, "
            "~2,100 steps; seeds 0-2 over 10,000-20,000 time units). "
            "lambda_max from max_lyapunov: 0.013 per time unit over 10^6 samples (Lyapunov "
            "time ~77 time units, ~1,500 steps); the default 20,000, which hold a few bursts, "
            "give 0.017."
        ),
        kind=HINDMARSH_ROSE,
    ),
    "slow_lorenz": System(
        name="slow_lorenz",
        dim=5,
        params=MappingProxyType(
            {"sigma": 10.0, "rho0": 28.0, "beta": 8.0 / 3.0, "rho_amp": 8.0, "period": 100.0}
        ),
        x0=(-8.0, 7.0, 27.0, 1.0, 0.0),
        dt=0.01,
        max_step=0.001,
        transient_time=200.0,
        x0_spread=1.0,
        lyapunov=None,
        citation=(
            "Lorenz (1963) with its parameter rho modulated by a Stuart-Landau (Hopf normal "
            "form) oscillator, constructed for this benchmark."
        ),
        description=(
            "Slow-fast system (x, y, z, u, v): Lorenz-63 with rho = rho0 + rho_amp * u, where "
            "(u, v) is a limit cycle of period T = 100 time units = 10,000 steps at dt=0.01, "
            "i.e. 50 training windows of 200 steps per slow cycle. rho sweeps 20..36, across "
            "the Lorenz bifurcations at rho = 24.06 / 24.74: chaotic epochs alternate with "
            "epochs spiralling into a fixed point. Fast scale as Lorenz-63 (~70 steps). Drop u, "
            "v from the observations to make the slow variable hidden."
        ),
        kind=SLOW_LORENZ,
    ),
}


def get_system(system, where: str) -> System:
    """Return the :class:`System` for a registry name or a record."""
    if isinstance(system, System):
        return system
    if isinstance(system, str):
        if system not in SYSTEMS:
            raise ValueError(f"{where}: unknown system {system!r}; known: {', '.join(SYSTEMS)}.")
        return SYSTEMS[system]
    raise TypeError(
        f"{where}: expected a system name ({', '.join(SYSTEMS)}) or a System record; "
        f"got {type(system).__name__}."
    )


def generate(
    system,
    n_steps,
    *,
    dt=None,
    seed=0,
    noise=0.0,
    transient=None,
    params=None,
    x0=None,
):
    """Sample a trajectory of a benchmark system.

    Parameters
    ----------
    system : str or System
        A key of :data:`SYSTEMS` or a record.
    n_steps : int
        Number of samples returned (T).
    dt : float, optional
        Sampling step; default ``system.dt``. Integration uses RK4 with
        ``ceil(dt / system.max_step)`` internal steps per sample, so accuracy does not depend
        on ``dt``.
    seed : int
        Seeds ``numpy.random.default_rng``: the initial condition (when ``x0`` is None) and the
        noise. Different seeds give different initial conditions -- use one seed for the
        training set and another for the test set.
    noise : float
        Gaussian observation noise, as a fraction of each dimension's standard deviation over
        the returned trajectory (the lab's "5 % noise" is ``noise=0.05``); needs
        ``n_steps >= 2``.
    transient : int, optional
        Samples discarded before the first returned one; default
        ``ceil(system.transient_time / dt)``, so at least ``transient_time`` is discarded.
    params : dict, optional
        Parameters overriding ``system.params`` (Lorenz-96: ``{"N": 20, "F": 8.0}``).
    x0 : array_like, shape (D,), optional
        Initial condition (converted to float64); default ``system.x0`` plus a seeded
        Gaussian perturbation of standard deviation ``system.x0_spread``.

    Returns
    -------
    ndarray, shape (n_steps, D), float64
        Row ``i`` is the (noisy) state at time ``(transient + i) * dt``; with ``transient=0``
        and no noise, row 0 is ``x0``.

    Raises
    ------
    ValueError
        Unknown system or parameter, a non-finite parameter, invalid sizes, noise with
        ``n_steps < 2``, a run of more than :data:`MAX_RK4_STEPS` RK4 steps
        (``ceil(dt / max_step) * (transient + n_steps - 1)``; 10^10, 15 minutes to an hour
        or more), or a
        trajectory that becomes non-finite.
    TypeError
        Arguments of the wrong kind.
    """
    where = "generate"
    sys_ = get_system(system, where)
    with Checks(where) as checks:
        noise = checks.real(noise, "noise", positive=False)
        n_steps = checks.integer(n_steps, "n_steps")
        if checks.ok("noise", "n_steps") and noise > 0 and n_steps < 2:
            checks.add(
                f"noise is a fraction of each dimension's sd over the returned trajectory and "
                f"needs n_steps >= 2; got n_steps={n_steps}."
            )
        dt = sys_.dt if dt is None else checks.real(dt, "dt", positive=True)
        if transient is not None:
            transient = checks.integer(transient, "transient", 0)
        run = sys_.prepare_with(checks, params=params, x0=x0, seed=seed)
        if checks.ok("dt", "transient", "n_steps"):
            split = "split the run into calls that continue from x0=out[-1] with transient=0"
            work = rk4_work(run[1].shape[0]) if run is not None else 1.0
            plan = sys_.plan_with(checks, dt, transient, n_steps, split, work)
    p, start, rng = run
    n_sub, transient = plan
    out = new_run((n_steps, start.shape[0]), np.float64, where)
    bad = rk4_trajectory(sys_.kind, start, p, dt / n_sub, n_sub, transient, out)
    if bad >= 0:
        raise ValueError(
            f"{where}: the {sys_.name} trajectory became non-finite at t = {bad * dt:g} "
            f"(sample {bad}, counting the transient). Check params and x0, or use a smaller dt."
        )
    if noise > 0:
        with np.errstate(over="ignore", invalid="ignore"):
            out += noise * out.std(axis=0) * rng.standard_normal(out.shape)
        if not np.isfinite(out).all():
            raise ValueError(
                f"{where}: noise={noise:g} times the data's sd overflows float64 (the noisy "
                "trajectory is not finite); use a noise of a few percent, e.g. 0.05."
            )
    return out
