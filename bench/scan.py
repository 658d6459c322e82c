"""Benchmark of ``parscan.linear_scan``: one JSON line per case.

Question: how close does each backend get to the memory bandwidth of this machine?

Every case reports backend (and what ``auto`` chose), B, T, D, dtype, diag/dense, the first-call
overhead (compile or cache load) separately, min and median seconds over ``--repeat`` (>= 5)
runs, GB/s of essential traffic (read ``a`` and ``b``, write ``h``), and the ratio to a STREAM
triad ``x = y + s z`` (Numba ``prange``, arrays of B*T*D elements, same dtype) with 1 thread and
with all threads, whose runs are interleaved with the scans' (so a noisy moment of a shared VM
hits a scan and its baseline alike). Like the triad, the scan writes into a
preallocated ``out`` (a fresh output array would add the page faults of its first touch). A
timed run is a batch of back-to-back calls lasting at least 2 ms (``calls_per_run``, one call
for the large cases), divided by its length: single calls of a few microseconds are below the
timer's and the scheduler's jitter on a shared VM.

    python bench/scan.py              # full CPU table (issue #2 cases)
    python bench/scan.py --quick      # smoke run, small sizes
    python bench/scan.py --backend cuda   # CUDA cases (device arrays) when a GPU is present
    python bench/scan.py --crossover  # sequential vs cpu at small sizes (the ``auto`` thresholds)
"""

import argparse
import functools
import json
import os
import platform
import sys
import time

import numba
import numpy as np
from _timing import calls_per_run, timeit, timeit_batched
from numba import prange

import parscan
from parscan import scan
from parscan._jit import jit_parallel

DIAG_D = 16
DENSE_D = (3, 8, 16)
BACKENDS = ("sequential", "cpu", "auto")
MAX_CASE_BYTES = 4 * 2**30  # skip cases whose a + b + h exceed this


@jit_parallel
def _triad(x, y, z, s):
    for i in prange(x.shape[0]):
        x[i] = y[i] + s * z[i]


def _triad_call(n, dtype):
    """A triad on fresh arrays of ``n`` elements of ``dtype``, as a call without arguments."""
    y, z, x = np.ones(n, dtype), np.ones(n, dtype), np.empty(n, dtype)
    return lambda: _triad(x, y, z, 0.5)


#: Distributions of a diagonal ``a``: "signed" uniform in (-0.95, 0.95) (chunk products reach
#: exact zero quickly), "decay" uniform in (0.5, 1) like the decay rates of an SSM or the
#: Jacobian diagonals of a contractive RNN (chunk products sink through the subnormals).
A_KINDS = {"signed": (-0.95, 0.95), "decay": (0.5, 1.0)}


def _inputs(B, T, D, dtype, dense, rng, a_kind="signed"):
    shape_a = (B, T, D, D) if dense else (B, T, D)
    low, high = (-0.9 / D, 0.9 / D) if dense else A_KINDS[a_kind]
    a = rng.uniform(low, high, shape_a)
    b = rng.standard_normal((B, T, D))
    return a.astype(dtype), b.astype(dtype)


def _essential_bytes(B, T, D, dtype, dense):
    return (B * T * D * (D if dense else 1) + 2 * B * T * D) * np.dtype(dtype).itemsize


def _versions():
    return {
        "loadavg_1min": round(os.getloadavg()[0], 2),
        "numba": numba.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(),
    }


def run_case(B, T, D, dtype, dense, a_kind, repeat, rng, all_threads):
    """Rows for sequential, cpu and auto on one case; their runs and those of the triad with 1
    and with all threads are interleaved (in a rotating order) so that noise from other
    processes hits the scans and their baselines alike."""
    if _essential_bytes(B, T, D, dtype, dense) > MAX_CASE_BYTES:
        return []
    a, b = _inputs(B, T, D, dtype, dense, rng, a_kind)
    out = np.zeros_like(b)
    calls = {
        backend: (lambda backend=backend: parscan.linear_scan(a, b, backend=backend, out=out))
        for backend in BACKENDS
    }
    first = {}
    for backend, call in calls.items():
        t0 = time.perf_counter()
        call()
        first[backend] = time.perf_counter() - t0
    n = B * T * D
    triad = _triad_call(n, dtype)
    calls["triad1"] = calls["triad_all"] = triad
    threads = {"triad1": 1, "triad_all": all_threads}
    number = {name: calls_per_run(call) for name, call in calls.items()}
    names = list(calls)
    times = {name: [] for name in names}
    saved = numba.get_num_threads()
    for i in range(repeat):
        # Rotate the order: a run right after a threaded one finds the data in the other
        # core's cache; every call gets runs in every position, and the min picks them.
        for name in names[i % len(names) :] + names[: i % len(names)]:
            call, k = calls[name], number[name]
            numba.set_num_threads(threads.get(name, saved))
            t0 = time.perf_counter()
            for _ in range(k):
                call()
            times[name].append((time.perf_counter() - t0) / k)
            numba.set_num_threads(saved)
    triad_bytes = 3 * n * np.dtype(dtype).itemsize
    t1, tn = (triad_bytes / min(times[name]) / 1e9 for name in ("triad1", "triad_all"))
    best = min(min(times["sequential"]), min(times["cpu"]))
    itemsize = np.dtype(dtype).itemsize
    chosen = scan._choose_host_backend(dense, B, T, D, itemsize, None if dense else a)
    rows = []
    for backend in BACKENDS:
        tmin = min(times[backend])
        gbps = _essential_bytes(B, T, D, dtype, dense) / tmin / 1e9
        rows.append(
            {
                "what": "linear_scan",
                "backend": backend,
                "chosen": chosen if backend == "auto" else backend,
                "B": B,
                "T": T,
                "D": D,
                "dtype": np.dtype(dtype).name,
                "kind": "dense" if dense else "diag",
                "a": "dense" if dense else a_kind,
                "first_call_s": round(max(first[backend] - tmin, 0.0), 4),
                "min_s": tmin,
                "median_s": float(np.median(times[backend])),
                "gbps": round(gbps, 3),
                "triad1_gbps": round(t1, 3),
                "triad_all_gbps": round(tn, 3),
                "ratio_triad1": round(gbps / t1, 3),
                "ratio_triad_all": round(gbps / tn, 3),
                "ratio_best_backend": round(best / tmin, 3),
                "calls_per_run": number[backend],
                "threads": all_threads,
                **_versions(),
            }
        )
    return rows


def cpu_cases(quick):
    Ts = (1_000, 10_000) if quick else (1_000, 10_000, 100_000, 1_000_000)
    dtypes = (np.float64,) if quick else (np.float32, np.float64)
    for dtype in dtypes:
        for B in (1, 8):
            for T in Ts:
                yield B, T, DIAG_D, dtype, False, "signed"
    for dtype in dtypes:
        for B in (1, 8):
            yield B, Ts[-1], DIAG_D, dtype, False, "decay"
    for D in (3,) if quick else DENSE_D:
        for B in (1, 8):
            for T in Ts:
                yield B, T, D, np.float64, True, "signed"


def bench_cpu(args):
    rng = np.random.default_rng(0)
    threads = numba.get_num_threads()
    for case in cpu_cases(args.quick):
        for row in run_case(*case, args.repeat, rng, threads):
            print(json.dumps(row), flush=True)


def bench_crossover(args):
    """Sequential vs cpu near the ``auto`` thresholds (float64; the time-chunked case also in
    float32 and complex64, which show that the crossover is a number of bytes)."""
    rng = np.random.default_rng(0)
    threads = numba.get_num_threads()
    chunked_Ts = (256, 1024, 4096, 8192, 16384, 65536)
    grid = [
        (False, 1, DIAG_D, chunked_Ts, np.float64),
        (False, 1, DIAG_D, chunked_Ts, np.float32),
        (False, 1, DIAG_D, chunked_Ts, np.complex64),
        (False, 8, DIAG_D, (16, 64, 256, 1024, 4096), np.float64),
        (False, 8, 1, (64, 256, 1024, 4096, 16384), np.float64),
        (True, 8, 3, (64, 256, 1024, 4096, 16384), np.float64),
        (True, 8, 16, (16, 64, 256, 1024), np.float64),
    ]
    for dense, B, D, Ts, dtype in grid:
        for T in Ts:
            a, b = _inputs(B, T, D, dtype, dense, rng)
            out = np.zeros_like(b)
            res = {}
            for backend in ("sequential", "cpu"):
                call = functools.partial(parscan.linear_scan, a, b, backend=backend, out=out)
                _, res[backend], _ = timeit_batched(call, max(args.repeat, 20))
            itemsize = np.dtype(dtype).itemsize
            print(
                json.dumps(
                    {
                        "what": "crossover",
                        "kind": "dense" if dense else "diag",
                        "dtype": np.dtype(dtype).name,
                        "B": B,
                        "T": T,
                        "D": D,
                        "bytes": B * T * D * (D if dense else 1) * itemsize,
                        "sequential_s": res["sequential"],
                        "cpu_s": res["cpu"],
                        "cpu_speedup": round(res["sequential"] / res["cpu"], 3),
                        "auto": scan._choose_host_backend(
                            dense, B, T, D, itemsize, None if dense else a
                        ),
                        "threads": threads,
                    }
                ),
                flush=True,
            )


def cuda_cases(quick):
    """Diagonal D=16 up to T*D = 4e8 (the copy-bandwidth target is at T*D >= 1e8), dense."""
    Ts = (10_000, 1_000_000) if quick else (10_000, 1_000_000, 6_250_000, 25_000_000)
    for dtype in (np.float32, np.float64):
        for T in Ts:
            yield 1, T, DIAG_D, dtype, False
    for T in Ts[:3]:
        yield 8, T, DIAG_D, np.float64, False
    for D in DENSE_D:
        for B in (1, 8):
            yield B, 10_000 if quick else 100_000, D, np.float64, True


def bench_cuda(args):
    """CUDA cases on device arrays (no transfers), against a device-to-device copy."""
    if "cuda" not in parscan.available_backends():
        print(json.dumps({"what": "linear_scan", "backend": "cuda", "skipped": "no GPU"}))
        return
    from parscan import _cuda

    rng = np.random.default_rng(0)
    for B, T, D, dtype, dense in cuda_cases(args.quick):
        if _essential_bytes(B, T, D, dtype, dense) > 4 * MAX_CASE_BYTES:
            continue
        a, b = _inputs(B, T, D, dtype, dense, rng)
        da, db, dout = _cuda.to_device(a), _cuda.to_device(b), _cuda.to_device(b)
        fn = lambda da=da, db=db, dout=dout: _cuda.synchronize(  # noqa: E731
            parscan.linear_scan(da, db, out=dout)
        )
        first, tmin, tmed = timeit(fn, args.repeat)
        gbps = _essential_bytes(B, T, D, dtype, dense) / tmin / 1e9
        copy = _cuda.copy_bandwidth_gbps(b.nbytes, args.repeat)
        print(
            json.dumps(
                {
                    "what": "linear_scan",
                    "backend": "cuda",
                    "B": B,
                    "T": T,
                    "D": D,
                    "dtype": np.dtype(dtype).name,
                    "kind": "dense" if dense else "diag",
                    "first_call_s": round(max(first - tmin, 0.0), 4),
                    "min_s": tmin,
                    "median_s": tmed,
                    "gbps": round(gbps, 2),
                    "copy_gbps": round(copy, 2),
                    "ratio_copy": round(gbps / copy, 3),
                    "device": _cuda.device_name(),
                    **_versions(),
                }
            ),
            flush=True,
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per case (>= 5)")
    parser.add_argument("--backend", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--crossover", action="store_true", help="measure auto thresholds")
    args = parser.parse_args(argv)
    if args.repeat < 5:
        parser.error("--repeat must be >= 5")
    if args.crossover:
        bench_crossover(args)
    elif args.backend == "cuda":
        bench_cuda(args)
    else:
        bench_cpu(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
