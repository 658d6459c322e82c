"""Benchmark of ``parscan.linear_scan``: one JSON line per case.

Question: how close does each backend get to the memory bandwidth of this machine?

Every case reports backend (and what ``auto`` chose, and the threaded backend's plan: "batch",
"fix" = scan-then-fix or "reduce" = reduce-then-scan), B, T, D, dtype, diag/dense, the
``a`` distribution, the fields of ``bench/_timing.py`` (first call raw and minus the min, min
and median of ``--repeat`` (>= 5) runs, ``noisy``), GB/s of essential traffic (read ``a`` and
``b``, write ``h``), and the ratio to a STREAM triad ``x = y + s z`` (Numba ``prange``, same
dtype, arrays sized to move as many bytes as the scan) with 1 thread and with all threads,
whose runs are interleaved with the scans' in a rotating order (so a noisy moment of a shared
VM hits a scan and its baseline alike). Like the triad, the scan writes into a preallocated
``out`` (a fresh output array would add the page faults of its first touch). A timed run is a
batch of back-to-back calls sized to take 2 ms (one call for the large cases), divided by
its length: single calls of a few microseconds are below the timer's and the scheduler's
jitter on a shared VM. A case too large for :data:`MAX_CASE_BYTES` prints a "skipped" row.

``--crossover`` times sequential against cpu (interleaved the same way, >= 20 runs) near the
``auto`` thresholds; ``a_bytes`` is the size of ``a`` (what the thresholds compare); each row
has both backends' ``first_call_s``, ``compile_s``, ``min_s`` and ``median_s`` (prefixed
``sequential_`` and ``cpu_``).

``--backend cuda`` times device-resident cases against a device-to-device copy of as many
bytes, both with CUDA events around batches of back-to-back calls (no host synchronisation
between them: ``linear_scan``'s host work for a call overlaps the kernels of the one before),
the target sizes first and right after them a ``cuda_copy_target`` line: issue #2's target,
the diagonal scan at >= 70 % of the copy's bandwidth (min over min) at T*D >= 1e8, met or
not; after the other cases, ``launch_variant`` lines: the target case's kernels alone
(:data:`LAUNCH_VARIANTS`: the production launch, whose ratio against the target row's shows
the host's share, the 64 bytes per thread of earlier versions, float32 and float64 each with
the other's tuned shape, a look-back window of 32 tiles), so that one GPU session shows
whether the shapes of ``parscan._cuda.DIAG_TUNED`` still win. It needs a real GPU; ``--smoke`` runs
tiny cases that also run in the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``): a check that the
code runs, which measures nothing.

    python bench/scan.py              # full CPU table (issue #2 cases)
    python bench/scan.py --quick      # small sizes
    python bench/scan.py --crossover  # sequential vs cpu at small sizes (the ``auto`` thresholds)
    python bench/scan.py --backend cuda           # on a GPU (device arrays)
    NUMBA_ENABLE_CUDASIM=1 python bench/scan.py --backend cuda --smoke
"""

import argparse
import dataclasses
import sys
import traceback

import parscan  # isort: skip  (first: PARSCAN_THREADS before Numba loads)
import numba
import numpy as np
from _timing import check_runs, cuda_run, interleaved, no_gpu_reason, print_row, versions
from numba import prange

from parscan import _scan_cpu, scan
from parscan._jit import jit_parallel

DIAG_D = 16
DENSE_D = (3, 8, 16)
BACKENDS = ("sequential", "cpu", "auto")
#: Host cases whose a + b + h exceed this are skipped (the triad doubles it).
MAX_CASE_BYTES = 4 * 2**30
#: Fewest runs of a crossover case (its calls are short and its sizes near a threshold).
CROSSOVER_RUNS = 20
#: Issue #2: the CUDA diagonal scan at >= this fraction of copy bandwidth at T*D >= 1e8.
CUDA_TARGET_RATIO = 0.70
CUDA_TARGET_TD = 10**8
#: Share of the device's free memory (at start) a CUDA case may use.
CUDA_MEMORY_SHARE = 0.8


@jit_parallel
def _triad(x, y, z, s):
    for i in prange(x.shape[0]):
        x[i] = y[i] + s * z[i]


def _triad_call(nbytes, dtype):
    """A triad moving ``nbytes`` (reads ``y, z``, writes ``x``) on fresh arrays of ``dtype``,
    as a call without arguments."""
    n = max(nbytes // (3 * np.dtype(dtype).itemsize), 1)
    y, z, x = np.ones(n, dtype), np.ones(n, dtype), np.empty(n, dtype)
    s = np.dtype(dtype).type(0.5)  # a Python float would make a float32 triad run in float64
    return lambda: _triad(x, y, z, s)


#: Distributions of a diagonal ``a``: "signed" uniform in (-0.95, 0.95) (chunk products reach
#: exact zero quickly), "decay" uniform in (0.5, 1) like the decay rates of an SSM or the
#: Jacobian diagonals of a contractive RNN (chunk products sink through the subnormals); with
#: both the carry between time chunks dies out and the threaded backend takes scan-then-fix.
#: "near1" uniform in (0.999, 1), slow decay like a cumulative sum: the carry survives whole
#: chunks and the threaded backend takes reduce-then-scan (``_scan_cpu.time_plan``).
A_KINDS = {"signed": (-0.95, 0.95), "decay": (0.5, 1.0), "near1": (0.999, 1.0)}


def _inputs(B, T, D, dtype, dense, rng, a_kind="signed"):
    """``a`` (dense: spectral norm <= 0.9) and standard normal ``b`` of ``dtype``."""
    real = np.finfo(dtype).dtype
    low, high = (-0.9 / D, 0.9 / D) if dense else A_KINDS[a_kind]
    a = rng.random((B, T, D, D) if dense else (B, T, D), dtype=real)
    a *= high - low
    a += low
    b = rng.standard_normal((B, T, D), dtype=real)
    return a.astype(dtype, copy=False), b.astype(dtype, copy=False)


def _essential_bytes(B, T, D, dtype, dense):
    return (B * T * D * (D if dense else 1) + 2 * B * T * D) * np.dtype(dtype).itemsize


def _case(B, T, D, dtype, dense, a_kind):
    return {
        "B": B,
        "T": T,
        "D": D,
        "dtype": np.dtype(dtype).name,
        "kind": "dense" if dense else "diag",
        "a": "dense" if dense else a_kind,
    }


def _scan_calls(a, b, out, backends):
    """``{backend: call}``: ``linear_scan`` of ``a, b`` into ``out`` on each backend."""
    return {
        backend: (lambda backend=backend: parscan.linear_scan(a, b, backend=backend, out=out))
        for backend in backends
    }


def _cpu_plan(a, dense, threads):
    """The threaded backend's plan for this input ("batch", "fix" or "reduce")."""
    return "batch" if dense else _scan_cpu.time_plan(a, False, threads)[0]


def run_case(B, T, D, dtype, dense, a_kind, repeat, rng, all_threads):
    """Rows for sequential, cpu and auto on one case, their runs interleaved with those of
    the triad with 1 and with all threads (``_timing.interleaved``)."""
    case = {"what": "linear_scan", **_case(B, T, D, dtype, dense, a_kind)}
    nbytes = _essential_bytes(B, T, D, dtype, dense)
    if nbytes > MAX_CASE_BYTES:
        gib = f"{nbytes / 2**30:.1f} GiB > {MAX_CASE_BYTES / 2**30:.0f} GiB"
        return [{**case, "backend": "all", "skipped": f"a + b + h = {gib} (MAX_CASE_BYTES)"}]
    a, b = _inputs(B, T, D, dtype, dense, rng, a_kind)
    out = np.zeros_like(b)
    calls = _scan_calls(a, b, out, BACKENDS)
    calls["triad1"] = calls["triad_all"] = _triad_call(nbytes, dtype)
    times = interleaved(calls, repeat, threads={"triad1": 1, "triad_all": all_threads})
    t1, tn = (nbytes / times[name].min_s / 1e9 for name in ("triad1", "triad_all"))
    best = min(times["sequential"].min_s, times["cpu"].min_s)
    itemsize = np.dtype(dtype).itemsize
    chosen = scan._choose_host_backend(dense, B, T, D, itemsize, None if dense else a)
    plan = _cpu_plan(a, dense, all_threads)
    rows = []
    for backend in BACKENDS:
        timing = times[backend]
        gbps = nbytes / timing.min_s / 1e9
        rows.append(
            {
                **case,
                "backend": backend,
                "chosen": chosen if backend == "auto" else backend,
                "cpu_plan": plan,
                **timing.fields(),
                "gbps": round(gbps, 3),
                "triad1_gbps": round(t1, 3),
                "triad_all_gbps": round(tn, 3),
                "ratio_triad1": round(gbps / t1, 3),
                "ratio_triad_all": round(gbps / tn, 3),
                "ratio_best_backend": round(best / timing.min_s, 3),
                "repeat": repeat,
                "threads": all_threads,
                "versions": versions(),
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
    for a_kind in ("decay", "near1"):
        for dtype in dtypes:
            for B in (1, 8):
                yield B, Ts[-1], DIAG_D, dtype, False, a_kind
    for D in (3,) if quick else DENSE_D:
        for B in (1, 8):
            for T in Ts:
                yield B, T, D, np.float64, True, "signed"


def bench_cpu(args):
    rng = np.random.default_rng(0)
    threads = numba.get_num_threads()
    for case in cpu_cases(args.quick):
        for row in run_case(*case, args.repeat, rng, threads):
            print_row(row)
    return 0


#: The crossover grid: (dense, B, D, Ts, dtype, a kind). The time-chunked cases (B = 1) run
#: with "signed" ``a`` (scan-then-fix) and "near1" ``a`` (reduce-then-scan), in three dtypes
#: (the crossover is a number of bytes, not elements).
CROSSOVER_GRID = [
    (False, 1, DIAG_D, (256, 1024, 4096, 8192, 16384, 65536), dtype, a_kind)
    for a_kind in ("signed", "near1")
    for dtype in (np.float64, np.float32, np.complex64)
] + [
    (False, 8, DIAG_D, (16, 64, 256, 1024, 4096), np.float64, "signed"),
    (False, 8, 1, (64, 256, 1024, 4096, 16384), np.float64, "signed"),
    # small D: the batch crossover is a number of time steps (B*T ~ 2048), not of bytes
    (False, 2, 1, (512, 1024, 2048), np.float64, "signed"),
    (False, 8, 4, (128, 256, 512), np.float64, "signed"),
    (False, 8, DIAG_D, (128, 256, 512), np.float32, "signed"),
    (True, 8, 3, (64, 256, 1024, 4096, 16384), np.float64, "signed"),
    (True, 8, 16, (16, 64, 256, 1024), np.float64, "signed"),
]


def bench_crossover(args):
    """Sequential vs cpu near the ``auto`` thresholds, interleaved, >= 20 runs each."""
    rng = np.random.default_rng(0)
    threads = numba.get_num_threads()
    repeat = max(args.repeat, CROSSOVER_RUNS)
    for dense, B, D, Ts, dtype, a_kind in CROSSOVER_GRID:
        for T in Ts:
            a, b = _inputs(B, T, D, dtype, dense, rng, a_kind)
            out = np.zeros_like(b)
            calls = _scan_calls(a, b, out, ("sequential", "cpu"))
            seq, cpu = interleaved(calls, repeat).values()
            itemsize = np.dtype(dtype).itemsize
            row = {
                "what": "crossover",
                **_case(B, T, D, dtype, dense, a_kind),
                "a_bytes": a.nbytes,
                "cpu_plan": _cpu_plan(a, dense, threads),
                **{
                    f"{name}_{key}": timing.fields()[key]
                    for name, timing in (("sequential", seq), ("cpu", cpu))
                    for key in ("first_call_s", "compile_s", "min_s", "median_s")
                },
                "cpu_speedup": round(seq.min_s / cpu.min_s, 3),
                "cpu_speedup_median": round(seq.median_s / cpu.median_s, 3),
                "noisy": seq.fields()["noisy"] or cpu.fields()["noisy"],
                "calls_per_run": {"sequential": seq.calls_per_run, "cpu": cpu.calls_per_run},
                "auto": scan._choose_host_backend(dense, B, T, D, itemsize, None if dense else a),
                "repeat": repeat,
                "threads": threads,
                "versions": versions(),
            }
            print_row(row)
    return 0


def cuda_cases(args):
    """Diagonal D=16 up to T*D = 4e8, the target sizes (T*D >= 1e8, both dtypes) first so
    that a run cut short has measured them; B = 8; dense D = 3, 8, 16. ``--smoke``: tiny
    cases."""
    if args.smoke:
        yield 1, 300, 2, np.float32, False
        yield 2, 40, 3, np.float64, True
        return
    small = (10_000, 1_000_000)
    for Ts in ((), small) if args.quick else ((6_250_000, 25_000_000), small):
        for dtype in (np.float32, np.float64):
            for T in Ts:
                yield 1, T, DIAG_D, dtype, False
    for T in small:
        yield 8, T, DIAG_D, np.float64, False
    for D in DENSE_D:
        for B in (1, 8):
            yield B, 10_000 if args.quick else 100_000, D, np.float64, True


#: Launch shapes timed on the target case (T*D = 1e8, D = 16) after the other cases, as a
#: dtype and changes to ``parscan._cuda.LAUNCH``, all called through ``scan_device`` (the
#: kernels without ``linear_scan``'s host checks): none (the production shape: how much of the
#: target row's time is the host's), the 64 bytes of ``a`` per thread of earlier versions,
#: each real dtype with the other's shape from :data:`parscan._cuda.DIAG_TUNED` (float32
#: holds 128 bytes in registers at two blocks per SM; float64 reads 512 bytes again at four),
#: and a look-back window of 32 tiles (default 128).
LAUNCH_VARIANTS = (
    (np.float32, {}),
    (np.float32, {"items": 16}),
    (np.float32, {"items": 128, "hold": False, "blocks_per_sm": 4}),
    (np.float64, {"items": 16, "hold": True, "blocks_per_sm": 2}),
    (np.float32, {"lookback": 32}),
)


#: A timed CUDA result must match the ``"cpu"`` backend to this many ulps of its largest state
#: (the order of the combines differs; the bench data are contractive).
MATCH_EPS = 1000
#: The least GPU seconds of one timed batch of CUDA launches (:func:`_timing.interleaved`).
CUDA_RUN_SECONDS = 0.05


def _cuda_case(B, T, D, dtype, dense, repeat, rng, launch=None):
    """Fields of one CUDA case: the scan and a device-to-device copy of as many bytes,
    interleaved batches of back-to-back launches timed with CUDA events, and how far one more
    scan (into a zeroed array) is from the ``"cpu"`` backend's (``matches_cpu``: within
    :data:`MATCH_EPS` ulps of the largest state; a fast wrong kernel meets no target).
    ``launch``: a :class:`parscan._cuda.Launch` other than the production one (called through
    ``scan_device``, without ``linear_scan``'s checks)."""
    from numba import cuda

    from parscan import _cuda

    a, b = _inputs(B, T, D, dtype, dense, rng)
    da, db = _cuda.to_device(a), _cuda.to_device(b)
    dout = cuda.device_array_like(db)
    nbytes = _essential_bytes(B, T, D, dtype, dense)
    src = cuda.device_array(max(nbytes // 16, 1), np.float64)  # src + dst = nbytes
    dst = cuda.device_array_like(src)

    def scan_into(out):
        if launch is None:
            return parscan.linear_scan(da, db, out=out)
        return _cuda.scan_device(da, db, None, False, False, dense, out, launch)

    calls = {"scan": lambda: scan_into(dout), "copy": lambda: dst.copy_to_device(src)}
    # runs of >= 50 ms: the host's work before a run's first launch (linear_scan's checks,
    # while the device idles) is then a fraction of a percent of the time, not ~20 %
    times = interleaved(calls, repeat, run=cuda_run, min_seconds=CUDA_RUN_SECONDS)
    scan_t, copy_t = times["scan"], times["copy"]
    checked = cuda.device_array_like(db)
    _cuda.zero_fill(checked)  # an entry the scan leaves unwritten stays 0 (b is normal)
    scan_into(checked)
    ref = parscan.linear_scan(a, b, backend="cpu")
    scale = max(float(np.max(np.abs(ref), initial=0.0)), 1.0)
    got = checked.copy_to_host()
    np.abs(np.subtract(got, ref, out=got), out=got)  # in place: these arrays are GBs
    diff = float(np.max(got, initial=0.0)) / scale
    matches = bool(diff <= MATCH_EPS * np.finfo(dtype).eps)
    gbps, gbps_median = (nbytes / t / 1e9 for t in (scan_t.min_s, scan_t.median_s))
    copy_gbps, copy_median = (2 * src.nbytes / t / 1e9 for t in (copy_t.min_s, copy_t.median_s))
    ratio = gbps / copy_gbps
    at_target = not dense and T * D >= CUDA_TARGET_TD
    return {
        **scan_t.fields(),
        "gbps": round(gbps, 2),
        "gbps_median": round(gbps_median, 2),
        "copy_gbps": round(copy_gbps, 2),
        "copy_gbps_median": round(copy_median, 2),
        "copy_noisy": copy_t.fields()["noisy"],
        "ratio_copy": round(ratio, 3),
        "ratio_copy_median": round(gbps_median / copy_median, 3),
        "max_diff_vs_cpu": diff,
        "matches_cpu": matches,
        "target_met": bool(ratio >= CUDA_TARGET_RATIO and matches) if at_target else None,
    }


def bench_cuda(args):
    """CUDA cases on device arrays (no transfers), against a device-to-device copy, with the
    ``cuda_copy_target`` line after the target cases (:func:`cuda_cases` yields them first).
    Returns 1 when a case failed or did not match the cpu backend."""
    from numba import cuda

    from parscan import _cuda

    simulator = bool(numba.config.ENABLE_CUDASIM)
    free = cuda.current_context().get_memory_info()[0]
    cap = CUDA_MEMORY_SHARE * free
    meta = {
        "device": _cuda.device_name(),
        "simulator": simulator,
        "timer": "wall clock (simulator: measures nothing)" if simulator else "cuda events",
        "repeat": args.repeat,
    }
    rng = np.random.default_rng(0)
    target_rows, failed, summarised = [], False, False

    def summarise():  # as soon as the target cases are measured: a run cut short keeps it
        print_row({**target_summary(target_rows, simulator), "versions": versions()})

    for B, T, D, dtype, dense in cuda_cases(args):
        if (dense or T * D < CUDA_TARGET_TD) and not summarised:
            summarise()
            summarised = True
        row = {"what": "linear_scan", "backend": "cuda", **_case(B, T, D, dtype, dense, "signed")}
        row["T_times_D"] = T * D
        # scan arrays, copy arrays, the array the check's scan fills
        need = 2 * _essential_bytes(B, T, D, dtype, dense) + B * T * D * np.dtype(dtype).itemsize
        if need > cap:
            row["skipped"] = (
                f"needs {need / 1e9:.1f} GB of device memory; cap {cap / 1e9:.1f} GB "
                f"({CUDA_MEMORY_SHARE:.0%} of {free / 1e9:.1f} GB free at start)"
            )
        else:
            try:
                row.update(_cuda_case(B, T, D, dtype, dense, args.repeat, rng))
                failed |= not row["matches_cpu"]
            except Exception as exc:  # report it, keep measuring the other cases
                row["error"] = "".join(traceback.format_exception_only(exc)).strip()[-500:]
                failed = True
        if not dense and T * D >= CUDA_TARGET_TD:
            target_rows.append(row)
        print_row({**row, **meta, "versions": versions()})
    if not summarised:
        summarise()
    T = 300 if args.smoke else CUDA_TARGET_TD // DIAG_D  # smoke: 2-3 tiles
    for dtype, change in LAUNCH_VARIANTS:
        launch = dataclasses.replace(_cuda.LAUNCH, **change)
        items, hold, blocks_per_sm = _cuda.diag_shape(dtype, launch)
        row = {
            "what": "launch_variant",
            "change": change,
            "dtype": np.dtype(dtype).name,
            "block": launch.block,
            "items": items,
            "hold": hold,
            "blocks_per_sm": blocks_per_sm,
            "lookback": launch.lookback,
            "T": T,
            "D": DIAG_D,
        }
        try:
            row.update(_cuda_case(1, T, DIAG_D, dtype, False, args.repeat, rng, launch))
            failed |= not row["matches_cpu"]
        except Exception as exc:
            row["error"] = "".join(traceback.format_exception_only(exc)).strip()[-500:]
            failed = True
        print_row({**row, **meta, "versions": versions()})
    return 1 if failed else 0


def target_summary(rows, simulator):
    """Issue #2's CUDA target over the diagonal rows at T*D >= 1e8: met (every measured row
    >= 70 % of copy bandwidth), not met, or None when none was measured (or simulated)."""
    measured = [r for r in rows if "ratio_copy" in r]
    if simulator or not measured:
        met = None
        why = "simulator" if simulator else "no diagonal case at T*D >= 1e8 was measured"
    else:
        met = all(r["target_met"] for r in measured)
        why = f"{len(measured)} case(s) measured, {len(rows) - len(measured)} not"
    return {
        "what": "cuda_copy_target",
        "target": f"diagonal scan >= {CUDA_TARGET_RATIO:.0%} of device copy GB/s at T*D >= 1e8",
        "target_met": met,
        "why": why,
        "ratios": [
            {
                k: r.get(k)
                for k in ("dtype", "T", "D", "ratio_copy", "ratio_copy_median", "matches_cpu")
            }
            for r in measured
        ],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument(
        "--repeat", type=int, default=7, help="timed runs per case (>= 5; --smoke: >= 1)"
    )
    parser.add_argument("--backend", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--crossover", action="store_true", help="measure auto thresholds (CPU)")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="with --backend cuda: tiny cases, the CUDA simulator accepted (measures nothing)",
    )
    args = parser.parse_args(argv)
    check_runs(parser, args.repeat, smoke=args.smoke)
    if args.crossover and (args.backend == "cuda" or args.quick or args.smoke):
        parser.error("--crossover is a CPU grid of its own: drop --backend cuda/--quick/--smoke")
    if args.smoke and args.backend != "cuda":
        parser.error("--smoke is for --backend cuda (use --quick for small CPU cases)")
    if args.backend == "cuda":
        reason = no_gpu_reason()
        if reason and not (args.smoke and numba.config.ENABLE_CUDASIM):
            parser.error(f"--backend cuda needs a real GPU: {reason}")
        return bench_cuda(args)
    return bench_crossover(args) if args.crossover else bench_cpu(args)


if __name__ == "__main__":
    sys.exit(main())
