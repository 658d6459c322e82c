"""Shared timing helper of the benchmark scripts (run as ``python bench/<script>.py``)."""

import time

import numpy as np


def timeit(fn, repeat):
    """Time ``fn()``: the first call separately (compile or cache load), then ``repeat`` calls.

    Returns
    -------
    first, best, median : float
        Seconds of the first call, and min and median of the following ones.
    """
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return first, min(times), float(np.median(times))
