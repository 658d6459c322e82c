"""GTF-DEER against the sequential solve on a chaotic shPLRNN (M=3, L=50), T up to 1e6.

Question: with ``alpha="auto"`` does the Newton iteration count stay small and flat in T, what
does a solve cost next to the sequential loop on the same problem, and does memory stay
O(T M^2)?

Model. A randomly initialised shPLRNN is not chaotic (DEER converges on it even with
alpha = 0), so the benchmark model is made chaotic by fitting it to the Lorenz-63 data: ``W2``
(standard normal) and ``h2`` (uniform +-2) are drawn once, then ``A``, ``W1`` and ``h1`` are
least-squares fits (ridge 1e-4) of the one-step map ``x_t -> x_{t+1}`` (random-feature
regression; deterministic, < 1 s). Its free run stays on a Lorenz-like attractor and its
largest Lyapunov exponent (in every row, ``models.metrics.max_lyapunov``) is about 0.010 per
step (0.01035 in ``bench/results/deer_2core.jsonl``), close to Lorenz-63's 0.9 per unit time
at dt = 0.01 (0.009 per step).

Data. ``lorenz63_on0.05_train.npy`` (standardised, 5 % noise, 1e5 points) of ``--data-dir``
(default ``../shared/data``, next to the repository) for the fit and for windows that fit in
it; longer windows (and everything when the default folder lacks the file) use
``models.systems.generate("lorenz63", noise=0.05)`` standardised. A ``--data-dir`` given that
lacks the file is refused. The problem is the GTF-forced recurrence with full forcing
(N = M = 3): ``z0 = x_0``, forcing ``x_1..x_T``.

Cases per T: alpha in {0, "auto"} x jacobian in {"full", "diag"}, default tolerances and
``max_iter``, ``throw=False`` (alpha = 0 fails on chaotic data: its status is reported). An
"auto" case times ``deer_solve(alpha="auto")`` (``auto_*`` fields: the estimate included),
then DEER and the sequential solve both with the alpha it chose (``median_s``,
``deer_over_seq``): ``sequential_solve`` estimates none, so a ratio against the "auto" call
would charge DEER for the estimate (about a third of its time at T = 1e4).
Each T runs in a fresh subprocess so that its peak RSS (``resource.getrusage``, the whole
process: data, model, every case) is its own; ``solver_peak_mb`` is the peak of what one
``deer_solve`` call allocates (``tracemalloc``, a separate untimed call on the same backend).
Times (``bench/_timing.py``): the first call (compilation included) reported raw, then min and
median of ``--repeats`` (>= 5) runs, fewer (never below 5) where the next run would take a
case past ``--budget`` seconds; the sequential baseline is ``parscan.sequential_solve`` on the
same problem in the same process (one compiled loop).

Usage::

    python bench/deer.py                # T = 1e2 .. 1e6 (several minutes on 2 cores)
    python bench/deer.py --quick        # T = 1e2 .. 1e4
    python bench/deer.py --T 1000 --repeats 7 --json out.jsonl
    python bench/deer.py --quick --data-dir ../shared/data
    python bench/deer.py --backend cuda --T 100000 1000000   # DEER on a GPU vs the CPU loop

Prints one JSON line per case, then a Markdown table.
"""

import argparse
import functools
import json
import resource
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
from _timing import (
    check_output_file,
    check_runs,
    exit_on_sigterm,
    no_gpu_reason,
    positive_int,
    print_row,
    timeit,
    versions,
)

#: The default data file (``--data-dir`` names another folder holding a file of this name).
DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "lorenz63_on0.05_train.npy"
FULL_T = [100, 1_000, 10_000, 100_000, 1_000_000]
QUICK_T = [100, 1_000, 10_000]


def _standardize(x):
    return (x - x.mean(axis=0)) / x.std(axis=0)


def load_data(T, data=DATA):
    """``(fit_data, window, source)``: data to fit the model on and ``T + 1`` points, from the
    file ``data`` (generated when it is absent or shorter than ``T + 1`` points)."""
    from models.systems import generate

    shared = np.load(data).astype(np.float64) if data.is_file() else None
    if shared is not None and shared.shape[0] > T:
        return shared, shared[: T + 1], "shared"
    generated = _standardize(generate("lorenz63", max(T + 1, 100_000), noise=0.05, seed=1))
    return (generated if shared is None else shared), generated[: T + 1], "generated"


def fit_chaotic_shplrnn(x, L=50, seed=3, ridge=1e-4):
    """A shPLRNN (M = x.shape[1], L) fitted to one-step prediction of ``x`` (module docstring)."""
    from models import ShPLRNN

    M = x.shape[1]
    model = ShPLRNN(M, L, seed=seed)
    rng = np.random.default_rng(seed)
    W2, h2 = rng.standard_normal((L, M)), rng.uniform(-2.0, 2.0, L)
    X, Y = x[:-1][:50_000], x[1:][:50_000]
    H = np.maximum(X @ W2.T + h2, 0.0)
    for i in range(M):
        phi = np.column_stack([X[:, i], H, np.ones(len(X))])
        coef = np.linalg.solve(phi.T @ phi + ridge * np.eye(L + 2), phi.T @ Y[:, i])
        model["A"][i], model["W1"][i], model["h1"][i] = coef[0], coef[1 : L + 1], coef[L + 1]
    model["W2"][...], model["h2"][...] = W2, h2
    return model


def traced_peak_mb(fn):
    """Peak of the host memory NumPy allocates during ``fn()`` (tracemalloc), in MiB (device
    memory of ``backend="cuda"`` is not traced)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def run_one_T(T, repeats, budget_s, backend="auto", data=DATA):
    """All cases for one T, in this process (data file ``data``: :func:`load_data`); one dict
    per case."""
    import numba

    from models.metrics import max_lyapunov
    from parscan import deer_solve, sequential_solve

    fit, window, source = load_data(T, data)
    model = fit_chaotic_shplrnn(fit)
    lyap = float(max_lyapunov(model, x0=fit[0], n_steps=5_000))
    z0, forcing = np.ascontiguousarray(window[0]), np.ascontiguousarray(window[1:])
    rows = []
    for alpha in (0.0, "auto"):
        for jacobian in ("full", "diag"):
            given = functools.partial(
                deer_solve, model, z0, forcing=forcing, alpha=alpha, jacobian=jacobian,
                throw=False, backend=backend,
            )  # fmt: skip
            solve, estimated = given, {}
            if alpha == "auto":  # its cost apart: the comparison gives both solves one alpha
                auto = timeit(given, repeats, budget_s)
                estimated = {f"auto_{key}": value for key, value in auto.fields().items()}
                solve = functools.partial(given, alpha=float(auto.result.alpha))
            deer = timeit(solve, repeats, budget_s)
            res = deer.result
            seq = timeit(
                functools.partial(sequential_solve, model, z0, forcing=forcing, alpha=res.alpha),
                repeats,
                budget_s,
            )
            solver_mb = traced_peak_mb(given)  # the call as given: an estimate's buffers too
            ok = res.status.name == "CONVERGED"
            rows.append(
                {
                    "what": "deer_solve vs sequential_solve",
                    "model": "ShPLRNN(M=3, L=50) fitted to Lorenz-63",
                    "max_lyapunov_per_step": round(lyap, 5),
                    "data": source,
                    "T": T,
                    "B": 1,
                    "dtype": "float64",
                    "alpha": alpha,
                    "alpha_value": round(float(res.alpha), 5),
                    **estimated,
                    "jacobian": jacobian,
                    "backend": backend,
                    "status": res.status.name.lower(),
                    "n_iter": int(res.n_iter),
                    "max_abs_err_vs_sequential": float(np.max(np.abs(res.states - seq.result)))
                    if ok
                    else None,
                    **deer.fields(),
                    **{f"seq_{key}": value for key, value in seq.fields().items()},
                    "deer_over_seq": round(deer.median_s / seq.median_s, 2),
                    "solver_peak_mb": round(solver_mb, 1),
                    "solver_bytes_per_step": round(solver_mb * 2**20 / T, 1),
                    "repeat": repeats,
                    "budget_s": budget_s,
                    "threads": numba.get_num_threads(),
                    "versions": versions(),
                }
            )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    for row in rows:
        row["peak_rss_mb_process"] = round(peak_mb, 1)
    return rows


def table(rows):
    lines = [
        "| T | alpha | jacobian | status | Newton iters | DEER median s | with the alpha "
        "estimate | sequential median s | DEER / seq | solver peak MiB | process peak RSS MiB |",
        "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        alpha = f"auto ({r['alpha_value']:.3f})" if r["alpha"] == "auto" else "0"
        auto = f"{r['auto_median_s']:.4g}" if r["alpha"] == "auto" else ""
        lines.append(
            f"| {r['T']:.0e} | {alpha} | {r['jacobian']} | {r['status']} | {r['n_iter']} "
            f"| {r['median_s']:.4g} | {auto} | {r['seq_median_s']:.4g} "
            f"| {r['deer_over_seq']:.3g} | {r['solver_peak_mb']:.1f} "
            f"| {r['peak_rss_mb_process']:.0f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="T = 1e2..1e4 (unless --T)")
    parser.add_argument(
        "--T", type=positive_int, nargs="+", help="sequence lengths (default 1e2..1e6)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case (>= 5)")
    parser.add_argument("--budget", type=float, default=30.0, help="seconds per case (30)")
    parser.add_argument("--json", type=Path, help="also append the JSON lines to this file")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help=f"folder holding {DATA.name} (default: ../shared/data, generated data if it lacks it)",
    )
    parser.add_argument(
        "--backend",
        choices=("auto", "sequential", "cpu", "cuda"),
        default="auto",
        help="deer_solve backend (cuda: Newton iterations on the GPU)",
    )
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    check_runs(parser, args.repeats, "--repeats")
    if not args.budget > 0:
        parser.error(f"--budget must be > 0 seconds; got {args.budget}")
    if args.backend == "cuda" and (reason := no_gpu_reason()):
        parser.error(f"--backend cuda needs a real GPU: {reason}")
    data = DATA if args.data_dir is None else args.data_dir / DATA.name
    if args.data_dir is not None and not data.is_file():
        parser.error(f"--data-dir {args.data_dir} lacks {DATA.name}; name the folder holding it")
    if args.json is not None:
        check_output_file(parser, args.json, "--json")
    if args.child is not None:
        for row in run_one_T(args.child, args.repeats, args.budget, args.backend, data):
            print_row(row)
        return
    rows = []
    for T in args.T or (QUICK_T if args.quick else FULL_T):
        cmd = [sys.executable, __file__, "--child", str(T), "--repeats", str(args.repeats)]
        cmd += ["--budget", str(args.budget), "--backend", args.backend]
        if args.data_dir is not None:
            cmd += ["--data-dir", str(args.data_dir)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.stderr.write(done.stderr)
            raise SystemExit(f"bench/deer.py: the run for T={T} failed")
        for line in done.stdout.splitlines():
            print(line, flush=True)
            rows.append(json.loads(line))
            if args.json:
                with open(args.json, "a") as fh:
                    fh.write(line + "\n")
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
