"""Benchmark of the DSR measures and the system generator: one JSON line per case.

Question: what does evaluating a 100k-step trajectory cost, next to generating it (the system,
or a model's free run) and next to sorting it? PE(20) and the free runs are timed with the
default model's architecture (a ``ClippedShPLRNN`` with M = 3, L = 200, float32, as
initialised: the cost does not depend on the fit); PE steps its ~100k runs of 20 steps
together in SIMD lanes, a free run steps with the hidden layer's loops innermost
(``model.simulate``), timed next to the same run by the per-step function
(``model.step_functions_jit.step`` in a jitted loop: the same states, bitwise). ``fit``'s
validation is timed as ``evaluate`` with its settings (four free runs of T/4 steps from the
last T/5 points, D_stsp and D_H), and its D_H part both ways: the four runs' spectra in one
transform (what ``evaluate`` does) and one ``power_spectrum_distance`` per run.

Data: two Lorenz-63 trajectories (``models.generate``, seeds 1 and 2), standardised. Every case
reports the fields of ``bench/_timing.py`` (first call raw and minus the min, min and median
of ``--repeat`` (>= 5) runs, ``noisy``) and its ratio (min over min, and median over median)
to a baseline timed in the same process, its runs interleaved with the cases' in a rotating
order: ``np.sort`` of the trajectory along time (an O(T log T) pass over the same data). The
README quotes the ratios; raw lines of the 2-core machine: ``bench/results/metrics_2core.jsonl``.

    python bench/metrics.py            # T = 100,000
    python bench/metrics.py --quick    # T = 10,000
"""

import argparse

import parscan  # noqa: F401  # isort: skip  (first: PARSCAN_THREADS before Numba loads)
import numba
import numpy as np
import scipy
from _timing import check_runs, interleaved, print_row, quiet_resolution_warnings, versions

from models import ClippedShPLRNN, evaluate
from models.data import standardize
from models.metrics import (
    _hellinger_per_run,
    max_lyapunov,
    power_spectrum_distance,
    prediction_error,
    state_space_divergence,
)
from models.systems import generate
from parscan._jit import n_threads

BASELINE = "np.sort(x, axis=0)"


def _per_step_run(model):
    """A free run ``(z0, out)`` by the model's per-step function, one state at a time."""
    step = model.step_functions_jit.step
    args = model.kernel_args()

    @numba.njit
    def run(args, z0, out):
        step(*args, z0, out[0])
        for t in range(1, out.shape[0]):
            step(*args, out[t - 1], out[t])

    return lambda z0, out: run(args, z0, out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="T = 10,000")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per case (>= 5)")
    args = parser.parse_args(argv)
    check_runs(parser, args.repeat)
    T = 10_000 if args.quick else 100_000
    a, mean, sd = standardize(generate("lorenz63", T, seed=1))
    b = (generate("lorenz63", T, seed=2) - mean) / sd
    model = ClippedShPLRNN(3, 200, seed=0).astype(np.float32)
    z0, out = model.initial_state(b[0].astype(np.float32)), np.empty((T, 3), np.float32)
    per_step = _per_step_run(model)
    per_step(z0, out)
    if not np.array_equal(out, model.simulate(z0, T)):
        raise SystemExit("bench/metrics.py: the free runs differ (they must be bitwise equal)")
    validation, n_run = b[-T // 5 :], T // 4
    starts = np.arange(4) * validation.shape[0] // 4
    runs = model.generate(validation[starts].astype(np.float32), n_run).astype(np.float64)
    compared = (validation[1:], runs[:, : validation.shape[0] - 1])
    cases = {
        BASELINE: lambda: np.sort(a, axis=0),
        "validation: evaluate dstsp + dh, 4 runs": lambda: evaluate(
            model, validation, n_steps=n_run, n_starts=4, measures=("dstsp", "dh")
        ),
        "validation dh, 4 runs in one transform": lambda: _hellinger_per_run(*compared, 20.0),
        "validation dh, 4 runs one by one": lambda: [
            power_spectrum_distance(compared[0], run, 20.0) for run in compared[1]
        ],
        "generate lorenz63": lambda: generate("lorenz63", T, seed=3),
        "dstsp bins 30": lambda: state_space_divergence(a, b, 30),
        "dstsp gmm": lambda: state_space_divergence(a, b, method="gmm"),
        "dh sigma 20": lambda: power_spectrum_distance(a, b, 20.0),
        "max_lyapunov lorenz63 (T samples)": lambda: max_lyapunov("lorenz63", n_steps=T),
        "pe 20 clipped-shplrnn L=200 float32": lambda: prediction_error(model, b, 20),
        "free run clipped-shplrnn L=200 float32": lambda: model.simulate(z0, T),
        "free run clipped-shplrnn L=200 float32, per-step function": lambda: per_step(z0, out),
    }
    with quiet_resolution_warnings():  # --quick scores too few points for 30 bins: timed anyway
        times = interleaved(cases, args.repeat)
    base = times[BASELINE]
    for what, timing in times.items():
        row = {"what": what, "T": T, "N": 3, **timing.fields()}
        row["baseline"] = BASELINE
        row["baseline_min_s"] = base.min_s
        row["ratio_to_baseline"] = round(timing.min_s / base.min_s, 2)
        row["ratio_to_baseline_median"] = round(timing.median_s / base.median_s, 2)
        row.update(repeat=args.repeat, threads=n_threads(), scipy=scipy.__version__)
        print_row({**row, "versions": versions()})


if __name__ == "__main__":
    main()
