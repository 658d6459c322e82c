"""Every GPU check of the project in one short run, for a session that has a CUDA device.

Question: how close does the diagonal CUDA scan get to the device's copy bandwidth (issue #2's
target: >= 70 % at T*D >= 1e8), do the CUDA kernels pass their tests on real hardware, and how
much faster is GTF-DEER on the GPU than the sequential BPTT method at T = 1e4 and 1e5 (the
paper's claim: >= 100x at T = 1e5)?

Steps, most important first, each in a subprocess with its own time limit
(:data:`STEP_LIMITS`, 540 s in all, so that the whole check fits one 10-minute command on a
borrowed device machine and one hang cannot eat the budget):

0. preflight: the device, its compute capability, the driver's and the runtime's CUDA
   versions and one trivial kernel launched and checked (a driver too old for the toolkit
   that compiles the kernels fails here, in seconds, with the versions that say why);
1. ``python bench/scan.py --backend cuda``: JSON lines with GB/s against a device-to-device
   copy of as many bytes, both timed with CUDA events, and the ``cuda_copy_target`` line
   (``target_met``: true, false, or null when no case at T*D >= 1e8 was measured);
2. ``pytest -m gpu -q -rfE`` (the CUDA property tests on the device; ``$OUT/pytest_gpu.xml``
   names each test's outcome, and a test still running after 60 s dumps every thread's stack
   to stderr, which the report keeps: a hang is traced to its test);
3. ``python bench/train.py --backend cuda --T 10000 100000 --dtype float32 --no-frameworks``:
   ``gtf_loss_and_grad`` with the model and protocol of the README's CPU table (the shPLRNN,
   M=3, L=50, briefly pre-fitted to Lorenz-63; B=16 windows; alpha from ``gtf_alpha``),
   ``method="deer"`` on the GPU against ``method="sequential"`` on the CPU, first call and
   min / median of 5 runs each; the step fails when a DEER loss or gradient is not the
   sequential method's (``matches_sequential``).

Everything is written to ``$OUT/gpu_check.json`` (``$OUT`` unset: the current folder), rewritten
after every step (a step that hangs past its limit loses nothing measured before it), and
summarised on stdout. Exit status 0 only when every step passed (pytest: 0 or 5) and the
target was measured (met or not); 1 when a step failed or timed out, a benchmark case failed,
no case at T*D >= 1e8 was measured, or there is no real GPU (the CUDA simulator,
``NUMBA_ENABLE_CUDASIM=1``, is not one). ``--smoke`` runs every step on tiny sizes, and also
in the simulator (every step limit tripled: the simulator is slow): a check that this script and
its steps run (a few minutes on a CPU), which measures nothing. With ``--smoke`` the exit status
is 0 when every step passed, with no target measured, and so also without a real GPU when
``NUMBA_ENABLE_CUDASIM=1`` is set; without a real GPU and without the simulator it runs no step
and exits 1.

    PYTHONUNBUFFERED=1 python3 bench/gpu_check.py       # on the GPU machine: 2-9 minutes
    NUMBA_ENABLE_CUDASIM=1 python bench/gpu_check.py --smoke

The package need not be installed there: the script puts the repository root first on
``sys.path`` and runs the steps with it on ``PYTHONPATH``. Its dependencies must be (numpy,
numba, numba-cuda, scipy and click for the package, pytest and hypothesis for the tests), in
versions that work together: numba-cuda 0.30.4 compiles no kernel with numpy 2.5
(``pyproject.toml`` caps numpy below 2.5; a failed preflight then names the cause and this
remedy). On a GPU machine that has numpy 2.5 and no internet, bring wheels of numpy 2.4 and
numba-cuda 0.30.4 for its Python (here: 3.12)::

    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 -d .whl \
        numpy==2.4.6 numba-cuda==0.30.4                   # where pip reaches PyPI
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl \
        && PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 bench/gpu_check.py  # on the GPU

(checked on Python 3.12 with numba 0.67.0 and 0.68.1 over numpy 2.5.2: every CUDA kernel
compiles to PTX, and ``--smoke`` passes in the simulator).
"""

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the package need not be installed (``python3 bench/...``)

import parscan  # noqa: E402, F401  # isort: skip  (first: PARSCAN_THREADS before Numba loads)
import numba  # noqa: E402
from _timing import exit_on_sigterm, no_gpu_reason  # noqa: E402

#: Seconds each step may run.
STEP_LIMITS = {"preflight": 30, "scan_cuda": 200, "pytest_gpu": 220, "gradients": 90}
#: The preflight step's program: one JSON line.
PREFLIGHT = """
import json
import numpy as np
from numba import cuda
from parscan._cuda import device_name

def version(get):
    try:
        return get()
    except Exception as exc:  # the simulator has no driver
        return repr(exc)

@cuda.jit
def increment(x):
    i = cuda.grid(1)
    if i < x.size:
        x[i] += 1.0

device = cuda.get_current_device()
x = cuda.to_device(np.zeros(256))
increment[2, 128](x)
ok = bool((x.copy_to_host() == 1.0).all())
print(json.dumps({
    "what": "preflight",
    "device": device_name(),
    "compute_capability": list(getattr(device, "compute_capability", ())),
    "driver_cuda": version(lambda: cuda.cudadrv.driver.driver.get_version()),
    "runtime_cuda": version(lambda: cuda.runtime.get_version()),
    "kernel_ok": ok,
}, default=str))
raise SystemExit(0 if ok else 1)
"""
#: What a preflight that failed on ``np.row_stack`` prints (see the module docstring).
NUMPY_REMEDY = (
    "numba-cuda <= 0.30.4 compiles no kernel with numpy >= 2.5 (np.row_stack is gone): "
    "install numpy<2.5 first (offline: the wheels in this script's docstring)"
)
#: The steps' arguments (after ``python``) and the exit codes that pass.
STEPS = {
    "preflight": (["-c", PREFLIGHT], (0,)),
    "scan_cuda": ("bench/scan.py --backend cuda".split(), (0,)),
    "pytest_gpu": ("-m pytest -m gpu -q -rfE -o faulthandler_timeout=60".split(), (0, 5)),
    "gradients": (
        "bench/train.py --backend cuda --T 10000 100000 --dtype float32 --no-frameworks".split(),
        (0,),
    ),
}
#: The arguments of ``--smoke`` where they differ.
SMOKE_ARGS = {
    "scan_cuda": "bench/scan.py --backend cuda --smoke --repeat 1".split(),
    "gradients": "bench/train.py --backend cuda --smoke --repeat 1".split(),
}


def _package_versions() -> dict:
    """Installed versions of the GPU stack (numba-cuda compiles no kernel with numpy 2.5, see
    pyproject.toml): a failed preflight says which combination failed."""
    names = ("numpy", "numba", "llvmlite", "numba-cuda", "cuda-bindings", "scipy")
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _run(cmd, timeout):
    """Run ``cmd`` in the repository root with the root on ``PYTHONPATH`` (the device machine
    has the dependencies but not this package installed); return (exit code, stdout, stderr
    tail, seconds). Exit code 124: timed out."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # a killed step keeps what it printed
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    t0 = time.perf_counter()
    try:
        done = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, errors="replace",
            timeout=timeout,
        )  # fmt: skip
        code, out, err = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as exc:  # its partial output may be bytes, cut anywhere
        code, out, err = 124, _text(exc.stdout), _text(exc.stderr)
        err += f"\n[timed out after {timeout} s]"
    return code, out, err[-4000:], round(time.perf_counter() - t0, 1)


def _text(output) -> str:
    """Captured output as text (None: empty; bytes decoded, a cut character replaced)."""
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


def out_dir() -> Path:
    """Where the results go: ``$OUT``, else the current folder (absolute: the steps run in the
    repository root)."""
    return Path(os.environ.get("OUT", ".")).resolve()


def _json_rows(lines):
    """The JSON objects among ``lines``, and how many lines looked like one but did not parse
    (a line cut off by a timeout)."""
    rows, bad = [], 0
    for line in lines:
        if line.startswith("{"):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                bad += 1
    return rows, bad


def _step_line(name, step):
    state = "passed" if step["passed"] else f"FAILED (exit {step['exit']})"
    return f"{name}: {state} in {step['s']} s (limit {step['limit_s']} s)"


def run_step(name, smoke):
    """One step's record: exit code, whether it passed, seconds, JSON rows (or pytest's
    summary), and the output's tail when it failed."""
    args, ok_codes = STEPS[name]
    args = SMOKE_ARGS.get(name, args) if smoke else args
    if name == "pytest_gpu":
        args = [*args, f"--junitxml={out_dir() / 'pytest_gpu.xml'}"]
    limit = STEP_LIMITS[name] * (3 if smoke else 1)  # the simulator: slow, and no device time
    code, out, err, secs = _run([sys.executable, *args], limit)
    record = {"exit": code, "passed": code in ok_codes, "s": secs, "limit_s": limit}
    lines = out.strip().splitlines()
    if name == "pytest_gpu":
        record["summary"] = lines[-1:]
        if err.strip():  # a stack dump of a test past faulthandler_timeout, warnings
            record["stderr"] = err
    else:
        record["rows"], record["unparsed"] = _json_rows(lines)
    if not record["passed"]:
        record.update(stdout_tail=lines[-80:], stderr=err)
    return record


def _mismatch(row) -> str:
    """``", WRONG: <difference>"`` for a timed scan row that did not match the cpu backend."""
    if row["matches_cpu"]:
        return ""
    diff = row["max_diff_vs_cpu"]  # null: NaN or inf in the result
    return f", WRONG: {diff:.3g}" if diff is not None else ", WRONG: non-finite result"


def summary_lines(report):
    """Human-readable summary of the report."""
    lines = [f"device: {report.get('device')}  smoke: {report['smoke']}"]
    if report["no_gpu"]:
        lines.append(f"NO REAL CUDA GPU: {report['no_gpu']}")
    lines += [_step_line(name, report[name]) for name in STEPS if name in report]
    preflight = report.get("preflight", {})
    if "row_stack" in preflight.get("stderr", ""):
        lines.append(f"  remedy: {NUMPY_REMEDY}")
    for row in preflight.get("rows", []):
        lines.append(
            f"  preflight: {row['device']} (compute capability {row['compute_capability']}), "
            f"driver CUDA {row['driver_cuda']}, runtime CUDA {row['runtime_cuda']}, "
            f"trivial kernel {'ok' if row['kernel_ok'] else 'WRONG RESULT'}"
        )
    for row in report.get("scan_cuda", {}).get("rows", []):
        if row["what"] == "linear_scan":
            result = (
                row.get("skipped")
                or row.get("error")
                or (
                    f"{row['gbps']} GB/s, copy {row['copy_gbps']} GB/s, ratio {row['ratio_copy']}"
                    f" (median {row['ratio_copy_median']}), target_met {row['target_met']}"
                    + _mismatch(row)
                )
            )
            lines.append(
                f"  scan {row['kind']} {row['dtype']} B={row['B']} T={row['T']} D={row['D']}: "
                f"{result}"
            )
        elif row["what"] == "launch_variant":
            result = row.get("error") or f"ratio to copy {row['ratio_copy']}{_mismatch(row)}"
            shape = (
                f"block {row['block']}, items {row['items']}, hold {row['hold']}, "
                f"{row['blocks_per_sm']} blocks per SM, look-back {row['lookback']}"
            )
            which = "the production launch, " if not row["change"] else ""
            lines.append(
                f"  launch {shape} ({which}kernels alone, {row['dtype']} T={row['T']}): {result}"
            )
    for row in report.get("gradients", {}).get("rows", []):
        if row["what"] == "gtf_loss_and_grad":
            extra = (
                f", {row['speedup_vs_sequential']:.3g}x" if "speedup_vs_sequential" in row else ""
            )
            if row.get("matches_sequential") is False:
                extra += (
                    f", WRONG: relative difference from sequential: loss {row['loss_rel_diff']}"
                    f", gradient {row['grad_rel_diff']}"
                )
            lines.append(
                f"  gradient {row['method']} ({row['backend'] or 'cpu'}) T={row['T']}: median "
                f"{row['median_s']:.4g} s, first call {row['first_call_s']:.3g} s, "
                f"Newton iters {row['newton_iters_max']}{extra}"
            )
    lines.append(f"CUDA copy-bandwidth target met: {report['target_met']}")
    lines.append("gpu_check: " + ("OK" if report["ok"] else f"FAILED: {report['failed']}"))
    return lines


def _target_met(rows: list[dict], smoke: bool) -> bool | None:
    """The ``target_met`` of the scan step's ``cuda_copy_target`` line; when the step was cut
    short before printing it, that of :func:`scan.target_summary` over the target rows it
    printed (None: none measured)."""
    line = next((r for r in rows if r["what"] == "cuda_copy_target"), None)
    if line is not None:
        return line.get("target_met")
    from scan import CUDA_TARGET_TD, target_summary

    measured = [
        r
        for r in rows
        if r["what"] == "linear_scan" and r["kind"] == "diag" and r["T_times_D"] >= CUDA_TARGET_TD
    ]
    return target_summary(measured, simulator=smoke)["target_met"]


def main(argv=None):
    exit_on_sigterm()
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Writes $OUT/gpu_check.json ($OUT unset: the current folder).",
    )
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes, the CUDA simulator accepted: checks the code runs, measures nothing",
    )
    args = ap.parse_args(argv)
    target = out_dir() / "gpu_check.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "python": sys.version.split()[0],
        "packages": _package_versions(),
        "smoke": args.smoke,
        "target_met": None,
    }

    def save():  # after every step: a later step that hangs loses nothing
        target.write_text(json.dumps(report, indent=1, default=str))

    reason = no_gpu_reason()
    report["no_gpu"] = reason
    if reason and not (args.smoke and numba.config.ENABLE_CUDASIM):
        report.update(ok=False, failed=[f"no real CUDA GPU ({reason}): nothing measured"])
        if args.smoke:
            report["failed"].append("--smoke without a GPU needs NUMBA_ENABLE_CUDASIM=1")
    else:
        for name in STEPS:
            report[name] = run_step(name, args.smoke)
            save()
            print(_step_line(name, report[name]), flush=True)
            if name == "preflight" and not report[name]["passed"]:
                break  # no kernel runs: the other steps would only burn the device time
        rows = report.get("scan_cuda", {}).get("rows", [])
        report["device"] = next((r["device"] for r in rows if "device" in r), None)
        report["target_met"] = _target_met(rows, args.smoke)
        report["failed"] = [
            name for name in STEPS if not report.get(name, {"passed": False})["passed"]
        ]
        if report["target_met"] is None and not args.smoke:
            report["failed"].append("no diagonal CUDA case at T*D >= 1e8 was measured")
        report["ok"] = not report["failed"]
    save()
    print("\n".join(summary_lines(report)))
    print(f"written: {target}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
