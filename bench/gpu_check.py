"""Every GPU check of the project in one short run, for a session that has a CUDA device.

Question: how close does the diagonal CUDA scan get to the device's copy bandwidth (issue #2's
target: >= 70 % at T*D >= 1e8), do the CUDA kernels pass their tests on real hardware, and how
much faster is GTF-DEER on the GPU than the sequential BPTT method at T = 1e4 and 1e5 (the
paper's claim: >= 100x at T = 1e5)?

Steps, most important first, each in a subprocess with its own time limit
(:data:`STEP_LIMITS`, 570 s in all, so that the whole check fits one 10-minute command on a
borrowed device machine and one hang cannot eat the budget):

1. ``python bench/scan.py --backend cuda``: JSON lines with GB/s against a device-to-device
   copy of as many bytes, both timed with CUDA events, and the ``cuda_copy_target`` line
   (``target_met``: true, false, or null when no case at T*D >= 1e8 was measured);
2. ``pytest -m gpu -q`` (the CUDA property tests on the device);
3. ``python bench/train.py --backend cuda --T 10000 100000 --dtype float32 --no-frameworks``:
   ``gtf_loss_and_grad`` with the model and protocol of the README's CPU table (the shPLRNN,
   M=3, L=50, briefly pre-fitted to Lorenz-63; B=16 windows; alpha from ``gtf_alpha``),
   ``method="deer"`` on the GPU against ``method="sequential"`` on the CPU, first call and
   min / median of 5 runs each.

Everything is written to ``$OUT/gpu_check.json`` (``$OUT`` unset: the current folder), rewritten
after every step (a step that hangs past its limit loses nothing measured before it), and
summarised on stdout. Exit status 0 only when every step passed (pytest: 0 or 5) and the
target was measured (met or not); 1 when a step failed or timed out, a benchmark case failed,
no case at T*D >= 1e8 was measured, or there is no real GPU (the CUDA simulator,
``NUMBA_ENABLE_CUDASIM=1``, is not one). ``--smoke`` runs every step on tiny sizes, and also
in the simulator: a check that this script and its steps run (a few minutes on a CPU), which
measures nothing.

    PYTHONUNBUFFERED=1 python3 bench/gpu_check.py       # on the GPU machine: 2-9 minutes
    NUMBA_ENABLE_CUDASIM=1 python bench/gpu_check.py --smoke

The package need not be installed there: the steps run with the repository root on
``PYTHONPATH``.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numba
from _timing import no_gpu_reason

ROOT = Path(__file__).resolve().parent.parent
#: Seconds each step may run.
STEP_LIMITS = {"scan_cuda": 170, "pytest_gpu": 200, "gradients": 200}
#: The steps' commands (after ``python``) and the exit codes that pass.
STEPS = {
    "scan_cuda": ("bench/scan.py --backend cuda", (0,)),
    "pytest_gpu": ("-m pytest -m gpu -q", (0, 5)),  # 5: none collected
    "gradients": (
        "bench/train.py --backend cuda --T 10000 100000 --dtype float32 --no-frameworks",
        (0,),
    ),
}
#: The commands of ``--smoke`` where they differ.
SMOKE_COMMANDS = {
    "scan_cuda": "bench/scan.py --backend cuda --smoke --repeat 1",
    "gradients": "bench/train.py --backend cuda --smoke --repeat 1",
}


def _run(cmd, timeout):
    """Run ``cmd`` in the repository root with the root on ``PYTHONPATH`` (the device machine
    has the dependencies but not this package installed); return (exit code, stdout, stderr
    tail, seconds). Exit code 124: timed out."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    t0 = time.perf_counter()
    try:
        done = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
        code, out, err = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as exc:
        code, out, err = 124, exc.stdout or "", f"timed out after {timeout} s"
        out = out.decode() if isinstance(out, bytes) else out
    return code, out, err[-2000:], round(time.perf_counter() - t0, 1)


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
    command, ok_codes = STEPS[name]
    command = SMOKE_COMMANDS.get(name, command) if smoke else command
    limit = STEP_LIMITS[name]
    code, out, err, secs = _run([sys.executable, *command.split()], limit)
    record = {"exit": code, "passed": code in ok_codes, "s": secs, "limit_s": limit}
    lines = out.strip().splitlines()
    if name == "pytest_gpu":
        record["summary"] = lines[-1:]
    else:
        record["rows"], record["unparsed"] = _json_rows(lines)
    if not record["passed"]:
        record.update(stdout_tail=lines[-80:], stderr=err)
    return record


def summary_lines(report):
    """Human-readable summary of the report."""
    lines = [f"device: {report.get('device')}  smoke: {report['smoke']}"]
    if report["no_gpu"]:
        lines.append(f"NO REAL CUDA GPU: {report['no_gpu']}")
    lines += [_step_line(name, report[name]) for name in STEPS if name in report]
    for row in report.get("scan_cuda", {}).get("rows", []):
        if row["what"] == "linear_scan":
            result = (
                row.get("skipped")
                or row.get("error")
                or (
                    f"{row['gbps']} GB/s, copy {row['copy_gbps']} GB/s, ratio {row['ratio_copy']}"
                    f" (median {row['ratio_copy_median']}), target_met {row['target_met']}"
                )
            )
            lines.append(
                f"  scan {row['kind']} {row['dtype']} B={row['B']} T={row['T']} D={row['D']}: "
                f"{result}"
            )
    for row in report.get("gradients", {}).get("rows", []):
        if row["what"] == "gtf_loss_and_grad":
            extra = (
                f", {row['speedup_vs_sequential']:.3g}x" if "speedup_vs_sequential" in row else ""
            )
            lines.append(
                f"  gradient {row['method']} ({row['backend'] or 'cpu'}) T={row['T']}: median "
                f"{row['median_s']:.4g} s, first call {row['first_call_s']:.3g} s, "
                f"Newton iters {row['newton_iters_max']}{extra}"
            )
    lines.append(f"CUDA copy-bandwidth target met: {report['target_met']}")
    lines.append("gpu_check: " + ("OK" if report["ok"] else f"FAILED: {report['failed']}"))
    return lines


def main(argv=None):
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
    target = Path(os.environ.get("OUT", ".")) / "gpu_check.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    report = {"python": sys.version.split()[0], "smoke": args.smoke, "target_met": None}

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
        rows = report["scan_cuda"]["rows"]
        report["device"] = next((r["device"] for r in rows if "device" in r), None)
        target_line = next((r for r in rows if r["what"] == "cuda_copy_target"), {})
        report["target_met"] = target_line.get("target_met")
        report["failed"] = [name for name in STEPS if not report[name]["passed"]]
        if report["target_met"] is None and not args.smoke:
            report["failed"].append("no diagonal CUDA case at T*D >= 1e8 was measured")
        report["ok"] = not report["failed"]
    save()
    print("\n".join(summary_lines(report)))
    print(f"written: {target}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
