"""Peak memory of one GTF-DEER gradient (``autodiff.gtf_loss_and_grad``) per time step.

Question: how many bytes per time step and window does a training step need on the host, and
how does that depend on M, the dtype, B and ``jacobian`` (README "Loss and gradient",
"Memory")?

Each case runs in a fresh subprocess (so that no earlier allocation hides its peak), with one
thread, after a small warm-up call (compilation). ``tracemalloc_per_step`` is the
``tracemalloc`` peak of the measured call (NumPy arrays are traced) less what was traced
before it, divided by ``B * T``; ``rss_per_step`` is the growth of the peak resident set
(``VmHWM`` reset through ``/proc/self/clear_refs`` where Linux allows it, else null) over
the same call. Data: standardised Lorenz-63 windows (N = 3), ``alpha="auto"``.

Usage::

    python bench/memory.py                 # the README's cases (about 2 minutes on 2 cores)
    python bench/memory.py --T 20000       # shorter windows
    python bench/memory.py --solve         # deer_solve alone, for comparison

Prints one JSON line per case (software versions and load under ``"versions"``, as in the
other scripts; ``bench/results/memory_2core.jsonl`` predates that and has them at the top
level).
"""

import argparse
import json
import os
import subprocess
import sys

from _timing import exit_on_sigterm, positive_int, print_row, versions

#: (model class, M, hidden width or ReLU units, dtype, jacobian, B)
CASES = [
    ("ClippedShPLRNN", 3, 200, "float64", "full", 1),
    ("ClippedShPLRNN", 3, 200, "float64", "full", 4),
    ("ClippedShPLRNN", 3, 200, "float32", "full", 4),
    ("ClippedShPLRNN", 16, 50, "float32", "full", 1),
    ("ClippedShPLRNN", 16, 50, "float32", "full", 4),
    ("ClippedShPLRNN", 16, 50, "float32", "diag", 4),
    ("ALRNN", 16, 4, "float32", "full", 4),
]

_CASE = """
import json, sys, tracemalloc, warnings
import numpy as np
import models
from autodiff import gtf_loss_and_grad
from parscan import deer_solve

warnings.simplefilter("ignore")  # partial-forcing warnings of M > N
name, M, width, dtype, jacobian, B, T, solve = json.loads(sys.argv[1])
model = getattr(models, name)(M, width, 3, dtype=dtype, seed=0)
x = models.generate("lorenz63", max(T, 50) + 1 + 7 * B, seed=1)  # and the warm-up's windows
x = ((x - x.mean(0)) / x.std(0)).astype(dtype)


def windows(b, t):
    return np.ascontiguousarray(np.stack([x[7 * i : 7 * i + t + 1] for i in range(b)]))


def call(data):
    if solve:
        z0 = model.initial_state(data[:, 0])
        return deer_solve(model, z0, forcing=data[:, 1:], alpha="auto", jacobian=jacobian,
                          throw=False).status.name
    return gtf_loss_and_grad(model, data, alpha="auto", jacobian=jacobian,
                             throw=False)[2].status.name


def vm(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024


call(windows(2, 50))
data = windows(B, T)
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    rss_before = vm("VmRSS")
except OSError:
    rss_before = None
status = call(data)
rss = None if rss_before is None else (vm("VmHWM") - rss_before) / (B * T)
tracemalloc.start()
before = tracemalloc.get_traced_memory()[0]
call(data)
peak = tracemalloc.get_traced_memory()[1] - before
print(json.dumps({"status": status, "tracemalloc_per_step": round(peak / (B * T), 1),
                  "rss_per_step": None if rss is None else round(rss, 1)}))
"""


def main() -> None:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--T", type=positive_int, default=100_000, help="window length (time steps, >= 1)"
    )
    parser.add_argument("--solve", action="store_true", help="deer_solve instead of the gradient")
    args = parser.parse_args()
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "PARSCAN_THREADS": "1"}
    failed = 0
    for name, M, width, dtype, jacobian, B in CASES:
        spec = [name, M, width, dtype, jacobian, B, args.T, args.solve]
        done = subprocess.run(
            [sys.executable, "-c", _CASE, json.dumps(spec)],
            env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        function = "deer_solve" if args.solve else "gtf_loss_and_grad"
        row = {"function": function, "model": name, "M": M, "width": width, "dtype": dtype,
               "jacobian": jacobian, "B": B, "T": args.T, "threads": 1}  # fmt: skip
        if done.returncode == 0:
            row.update(json.loads(done.stdout.strip().splitlines()[-1]))
        else:
            row["error"] = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
            failed += 1
        print_row({**row, "versions": versions()})
    if failed:  # the rows say which and why
        sys.exit(f"bench/memory.py: {failed} of {len(CASES)} cases failed (their 'error' fields)")


if __name__ == "__main__":
    main()
