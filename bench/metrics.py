"""Benchmark of the DSR measures and the system generator: one JSON line per case.

Question: what does evaluating a 100k-step trajectory cost, next to generating it?

Data: two Lorenz-63 trajectories (``models.generate``, seeds 1 and 2), standardised. Every case
reports the first-call time (compile or cache load) separately and min / median seconds over
``--repeat`` (>= 5) runs, with the ratio to a same-process baseline: ``np.sort`` of the
trajectory along time (an O(T log T) pass over the same data).

    python bench/metrics.py            # T = 100,000
    python bench/metrics.py --quick    # T = 10,000, 5 repeats
"""

import argparse
import json
import platform

import numba
import numpy as np
import scipy
from _timing import timeit

from models.data import standardize
from models.metrics import max_lyapunov, power_spectrum_distance, state_space_divergence
from models.systems import generate
from parscan._jit import n_threads


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    if args.repeat < 5:
        parser.error("--repeat must be >= 5")
    T = 10_000 if args.quick else 100_000
    a, mean, sd = standardize(generate("lorenz63", T, seed=1))
    b = (generate("lorenz63", T, seed=2) - mean) / sd
    _, base, _ = timeit(lambda: np.sort(a, axis=0), args.repeat)
    cases = {
        "generate lorenz63": lambda: generate("lorenz63", T, seed=3),
        "dstsp bins 30": lambda: state_space_divergence(a, b, 30),
        "dstsp gmm": lambda: state_space_divergence(a, b, method="gmm"),
        "dh sigma 20": lambda: power_spectrum_distance(a, b, 20.0),
        "max_lyapunov lorenz63 (T samples)": lambda: max_lyapunov("lorenz63", n_steps=T),
    }
    meta = {
        "T": T,
        "N": 3,
        "threads": n_threads(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "scipy": scipy.__version__,
        "baseline": "np.sort(x, axis=0)",
        "baseline_s": base,
    }
    for what, fn in cases.items():
        first, best, median = timeit(fn, args.repeat)
        row = {"what": what, **meta, "first_s": first, "min_s": best, "median_s": median}
        row["ratio_to_baseline"] = best / base
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
