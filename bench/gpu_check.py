"""Every GPU check of the project in one short run, for a session that has a CUDA device.

Question: do the CUDA kernels pass their tests on real hardware, how close does the diagonal
CUDA scan get to the device's copy bandwidth (issue target: >= 70 % at T*D >= 1e8), and how
much faster is GTF-DEER on the GPU than the sequential BPTT method at T = 1e4 and 1e5 (the
paper's claim: >= 100x at T = 1e5)?

Steps, each in a subprocess with its own time limit (:data:`STEP_LIMITS`, 570 s in all, so
that the whole check fits one 10-minute command on a borrowed device machine and one hang
cannot eat the budget):

1. ``pytest -m gpu -q`` (the CUDA property tests on the device);
2. ``python bench/scan.py --backend cuda`` (JSON lines: GB/s and ratio to a device copy);
3. ``gtf_loss_and_grad`` of a shPLRNN (M=3, L=50, float32, B=16): ``method="deer",
   backend="cuda"`` (Newton iterations and adjoint on the device) against
   ``method="sequential"`` (the CPU baseline), first call (CUDA compilation included) and
   min/median of 3 runs each.

Everything is written to ``$OUT/gpu_check.json`` (``$OUT`` unset: the current folder) and
summarised on stdout. Without a GPU it says so and exits 0 after step 1 reports the skips.

    python bench/gpu_check.py            # 3-10 minutes on a GPU machine (python3 on the device)

The package need not be installed there: the steps run with the repository root on
``PYTHONPATH``, and the JSON is rewritten after every step, so a step that hangs past its
limit loses nothing measured before it.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Seconds each step may run: GPU tests, CUDA scan benchmark, gradient timing.
STEP_LIMITS = {"pytest_gpu": 220, "scan_cuda": 200, "gradients": 150}


def _run(cmd, timeout):
    """Run ``cmd`` in the repository root with the root on ``PYTHONPATH`` (the device machine
    has the dependencies but not this package installed); return (exit code, stdout, stderr
    tail, seconds)."""
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


def _gradient_timing():
    """Body of ``--gradients``: DEER on the GPU vs sequential BPTT, one JSON line per case."""
    import numpy as np

    import models
    from autodiff.gradients import gtf_loss_and_grad
    from parscan import gtf_alpha

    x, _, _ = models.standardize(models.generate("lorenz63", 120_000, seed=1, noise=0.05))
    model = models.ShPLRNN(3, 50, dtype="float32", seed=0)
    rng = np.random.default_rng(0)
    for T in (10_000, 100_000):
        starts = rng.integers(0, x.shape[0] - T, size=16)
        windows = x[starts[:, None] + np.arange(T + 1)].astype(np.float32)
        alpha = gtf_alpha(model, windows[:, 1:])  # the "auto" rule, as bench/train.py
        row = {"what": "gtf_loss_and_grad", "T": T, "B": 16, "alpha": alpha}
        for name, kw in (("deer_cuda", {"method": "deer", "backend": "cuda"}),
                         ("sequential_cpu", {"method": "sequential"})):  # fmt: skip
            t0 = time.perf_counter()
            loss, _, info = gtf_loss_and_grad(model, windows, alpha=alpha, **kw)
            first = time.perf_counter() - t0
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                gtf_loss_and_grad(model, windows, alpha=alpha, **kw)
                times.append(time.perf_counter() - t0)
            row[name] = {"first_s": first, "min_s": min(times), "median_s": sorted(times)[1],
                         "loss": loss, "newton_iters_max": info.newton_iters_max}  # fmt: skip
        row["speedup"] = row["sequential_cpu"]["median_s"] / row["deer_cuda"]["median_s"]
        print(json.dumps(row), flush=True)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Writes $OUT/gpu_check.json ($OUT unset: the current folder).",
    )
    ap.add_argument("--gradients", action="store_true", help="only step 3 (internal)")
    args = ap.parse_args(argv)
    if args.gradients:
        return _gradient_timing()
    report = {"python": sys.version.split()[0]}
    target = Path(os.environ.get("OUT", ".")) / "gpu_check.json"
    target.parent.mkdir(parents=True, exist_ok=True)

    def save():  # after every step: a later step that hangs loses nothing
        target.write_text(json.dumps(report, indent=1, default=str))

    code, out, err, secs = _run(
        [sys.executable, "-m", "pytest", "-m", "gpu", "-q"], STEP_LIMITS["pytest_gpu"]
    )
    lines = out.strip().splitlines()
    report["pytest_gpu"] = {"exit": code, "summary": lines[-1:], "s": secs}
    if code not in (0, 5):  # the failures' short summaries and tracebacks' ends
        report["pytest_gpu"].update(stdout_tail=lines[-80:], stderr=err)
    save()
    sys.path.insert(0, str(ROOT))
    import parscan

    if "cuda" not in parscan.available_backends():
        report["skipped"] = "no CUDA GPU: only the gpu-marked tests were collected (skipped)"
    else:
        code, out, err, secs = _run(
            [sys.executable, "bench/scan.py", "--backend", "cuda"], STEP_LIMITS["scan_cuda"]
        )
        report["scan_cuda"] = {"exit": code, "s": secs, "stderr": err if code else ""}
        report["scan_cuda"]["rows"] = [json.loads(x) for x in out.splitlines() if x[:1] == "{"]
        save()
        code, out, err, secs = _run(
            [sys.executable, __file__, "--gradients"], STEP_LIMITS["gradients"]
        )
        report["gradients"] = {"exit": code, "s": secs, "stderr": err if code else ""}
        report["gradients"]["rows"] = [json.loads(x) for x in out.splitlines() if x[:1] == "{"]
    save()
    print(json.dumps({k: v for k, v in report.items() if k != "scan_cuda"}, default=str)[:4000])
    for row in report.get("scan_cuda", {}).get("rows", []):
        print({k: row.get(k) for k in ("B", "T", "D", "dtype", "kind", "gbps", "ratio_copy")})
    print(f"written: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
