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


def calls_per_run(fn, min_seconds=2e-3):
    """How many back-to-back calls of ``fn`` make one timed run of at least ``min_seconds``.

    A single call of a few microseconds is below the timer's and the scheduler's jitter on a
    shared VM; timing batches of calls and dividing (as ``timeit`` does) keeps the min honest.
    """
    fn()  # warm: compile, cache load, first touch
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-7)
    return max(1, int(np.ceil(min_seconds / once)))


def timeit_batched(fn, repeat, min_seconds=2e-3):
    """:func:`timeit` over runs of :func:`calls_per_run` back-to-back calls, per call.

    Returns
    -------
    number, best, median : int, float, float
        Calls per run, and min and median seconds per call.
    """
    number = calls_per_run(fn, min_seconds)
    _, best, median = timeit(lambda: [fn() for _ in range(number)], repeat)
    return number, best / number, median / number
