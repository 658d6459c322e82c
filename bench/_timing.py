"""Shared helpers of the benchmark scripts (run as ``python bench/<script>.py``).

One convention for every script: a case's first call (compilation or cache load included) is
reported raw as ``first_call_s`` and, with ``compile_s``, minus the case's min; then min and
median of at least :data:`MIN_RUNS` timed runs, and ``noisy`` when the median is more than
:data:`NOISY_SPREAD` times the min (a stall of the shared machine hit several runs: compare
such a row's min, not its median). Rows carry :func:`versions` (with the 1-minute load)
under ``"versions"``.

Bad arguments are refused before any expensive work (warm-up, data generation, compilation)
with ``parser.error``: the usage line and one error line naming the script and the fix, exit
status 2. The argparse types :func:`positive_int` and :func:`non_negative_int`,
:func:`check_output_file` and :func:`check_output_folder` are the checks several scripts
share.
"""

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import signal
import tempfile
import time
import warnings
from pathlib import Path

import parscan  # isort: skip  (first: PARSCAN_THREADS before Numba loads)
import numba
import numpy as np

#: Fewest timed runs behind a min and a median.
MIN_RUNS = 5
#: A row whose median exceeds its min by this factor is flagged ``noisy``.
NOISY_SPREAD = 1.5


def print_row(row: dict) -> None:
    """Print ``row`` as one line of strict JSON, flushed: a non-finite number (a measure
    that could not be computed) becomes null, as in the command line's JSON files (bare
    ``NaN`` is no JSON: ``jq`` and ``JSON.parse`` refuse the line)."""
    from cli import finite_or_null

    print(json.dumps(finite_or_null(row), allow_nan=False), flush=True)


def exit_on_sigterm() -> None:
    """Make SIGTERM (``kill``, ``timeout``, a batch system's limit) end the script as Ctrl-C
    does: ``SystemExit(143)`` in the main thread, so that a running ``subprocess.run`` kills
    its child and ``finally`` blocks clean up (by default SIGTERM ends the script at once and
    its child keeps running, re-parented). For the scripts that run cases in subprocesses."""
    signal.signal(signal.SIGTERM, _exit_143)


def _exit_143(signum, frame):
    raise SystemExit(143)


def check_runs(parser, value, flag="--repeat", smoke=False):
    """``parser.error`` (exit 2) unless ``value >= MIN_RUNS`` (a smoke run, which
    measures nothing: ``value >= 1``)."""
    least = 1 if smoke else MIN_RUNS
    if value < least:
        why = "a smoke run" if smoke else "min and median of several runs"
        parser.error(f"{flag} must be >= {least} ({why}); got {value}")


def _int(text):
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer; got {text!r}") from None


def positive_int(text):
    """argparse ``type=``: an integer >= 1 (a count, a length)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1; got {value}")
    return value


def non_negative_int(text):
    """argparse ``type=``: an integer >= 0 (a seed, a limit where 0 means none)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0; got {value}")
    return value


def check_output_file(parser, path, flag):
    """``parser.error`` (exit 2) unless ``path`` can be written (created or appended to): its
    folder exists, ``path`` is not a folder, and opening it for appending works (a file this
    creates is removed again), so that a read-only or virtual file system, whose permissions
    do not stop root, fails here, not after the work. Call it before the work whose results
    go there."""
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        parser.error(f"{flag} {path}: no folder {folder}; create it or name a file in one")
    if path.is_dir():
        parser.error(f"{flag} {path}: is a folder; name a file")
    existed = path.exists()
    try:
        with open(path, "a"):
            pass
        if not existed:
            path.unlink()
    except OSError as exc:
        parser.error(
            f"{flag} {path}: not writable ({exc.strerror or exc}); name a file you can write"
        )


def check_output_folder(parser, path, flag):
    """``parser.error`` (exit 2) unless files can be written in the folder ``path``: it is
    created (with its parents) and a probe file written and removed in it, so that a
    read-only or virtual file system fails here, not after the work. Call it before the work
    whose results go there."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".bench-probe-"):
            pass
    except OSError as exc:
        parser.error(
            f"{flag} {path}: cannot write files there ({exc.strerror or exc}); "
            "name a folder you can write"
        )


@contextlib.contextmanager
def quiet_resolution_warnings():
    """Silence ``models.metrics``' StateSpaceResolutionWarning and SpectrumResolutionWarning
    (too few points for D_stsp's bins or D_H's spectrum) inside the ``with`` block: the short
    runs of a warm-up or of a timing are meant, and their scores are not the measurement."""
    from models.metrics import SpectrumResolutionWarning, StateSpaceResolutionWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StateSpaceResolutionWarning)
        warnings.simplefilter("ignore", SpectrumResolutionWarning)
        yield


def versions():
    """Software versions, machine and the 1-minute load average, for every JSON row."""
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "parscan": parscan.__version__,
        "machine": platform.processor() or platform.machine(),
        "loadavg_1min": round(os.getloadavg()[0], 2),
    }


@dataclasses.dataclass(frozen=True)
class Timing:
    """Seconds of one case: its first call, then the timed runs (per call)."""

    first_s: float
    times: tuple
    calls_per_run: int = 1
    result: object = None  # what the last call returned

    @property
    def min_s(self):
        return min(self.times)

    @property
    def median_s(self):
        return float(np.median(self.times))

    def fields(self):
        """The JSON fields of the module's convention."""
        return {
            "first_call_s": self.first_s,
            "compile_s": max(self.first_s - self.min_s, 0.0),
            "min_s": self.min_s,
            "median_s": self.median_s,
            "runs": len(self.times),
            "calls_per_run": self.calls_per_run,
            "noisy": self.median_s > NOISY_SPREAD * self.min_s,
        }


def test_scores(result, test, n_bins=30) -> dict:
    """The row fields of a :func:`autodiff.fit` result scored on the ``test`` trajectory (data
    units; standardised with the selected model's mean and sd): selected epoch, validation
    scores, test status, D_stsp (``n_bins`` per axis) and D_H, and the last epoch's loss."""
    import models

    mean, sd = result.model.standardization
    standardised = (test - mean) / sd
    scores = models.evaluate(result.model, standardised, measures=("dstsp", "dh"), n_bins=n_bins)
    return {
        "best_epoch": result.best_epoch,
        "val": result.best_scores,
        "test_status": scores["status"],
        "test_dstsp": scores["dstsp"],
        "test_dh": scores["dh"],
        "final_loss": result.history[-1]["loss"],
    }


def _seconds(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def timeit(fn, repeat, budget_s=math.inf):
    """Time ``fn()``: its first call, then ``repeat`` calls, fewer (never below
    :data:`MIN_RUNS`) when the next one would take the runs past ``budget_s`` seconds."""
    first, out = _seconds(fn)
    times = []
    while len(times) < repeat and (len(times) < MIN_RUNS or sum(times) + max(times) <= budget_s):
        seconds, out = _seconds(fn)
        times.append(seconds)
    return Timing(first, tuple(times), 1, out)


def wall_run(call, k):
    """Wall-clock seconds of ``k`` back-to-back calls of ``call``."""
    t0 = time.perf_counter()
    for _ in range(k):
        call()
    return time.perf_counter() - t0


def cuda_run(call, k):
    """GPU seconds of ``k`` back-to-back calls of ``call`` (which only enqueues work on the
    default stream), between two CUDA events: Python dispatch and launch latency overlap the
    queued kernels instead of being added to them. The simulator's events measure nothing
    (it runs kernels synchronously): there, wall-clock seconds."""
    from numba import cuda

    if numba.config.ENABLE_CUDASIM:
        return wall_run(call, k)
    start, end = cuda.event(), cuda.event()
    start.record()
    for _ in range(k):
        call()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def calls_per_run(call, run=wall_run, min_seconds=2e-3, probes=5):
    """How many back-to-back calls of ``call`` make one timed run of at least ``min_seconds``,
    from the fastest of ``probes`` single calls (after a warm-up call): a single call of a few
    microseconds is below the timer's and the scheduler's jitter on a shared VM, and a single
    probe that hits a stall would make every run one call long. A call inside a warm batch
    costs less than one alone, so one batch of that many is timed too, and the count raised
    (with 10 % to spare) when it fell short."""
    run(call, 1)
    once = min(run(call, 1) for _ in range(probes))
    k = max(1, math.ceil(min_seconds / max(once, 1e-7)))
    batch = run(call, k)
    if batch < min_seconds:
        k = math.ceil(1.1 * k * min_seconds / max(batch, 1e-9))
    return k


def interleaved(calls, repeat, run=wall_run, threads=None, min_seconds=2e-3):
    """Time several calls against each other: a :class:`Timing` per name of ``calls``.

    Each call's first call is timed alone; then ``repeat`` rounds run every call once as a
    batch of :func:`calls_per_run` calls, in an order rotating from round to round, so that
    a noisy moment of a shared machine hits every call and its baseline alike, and every call
    gets runs in every position (a run right after a threaded one finds its data in the other
    core's cache). ``threads`` maps names to the numba thread count of their runs.
    """
    threads = threads or {}
    saved = numba.get_num_threads()
    first = {name: run(call, 1) for name, call in calls.items()}
    number = {name: calls_per_run(call, run, min_seconds) for name, call in calls.items()}
    names = list(calls)
    times = {name: [] for name in names}
    for i in range(repeat):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            numba.set_num_threads(threads.get(name, saved))
            try:
                times[name].append(run(calls[name], number[name]) / number[name])
            finally:
                numba.set_num_threads(saved)
    return {name: Timing(first[name], tuple(times[name]), number[name]) for name in names}


def no_gpu_reason():
    """Why there is no real CUDA GPU to measure on, or None when there is one. The CUDA
    simulator (``NUMBA_ENABLE_CUDASIM=1``) is not one: its timings mean nothing."""
    if numba.config.ENABLE_CUDASIM:
        return "NUMBA_ENABLE_CUDASIM=1: numba.cuda is the simulator, not a GPU"
    try:
        from numba import cuda

        return None if cuda.is_available() else "numba.cuda finds no CUDA GPU"
    except Exception as exc:  # a broken driver or toolkit reads as no GPU, with its reason
        return f"numba.cuda failed: {exc}"
