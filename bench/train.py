"""Benchmark of ``autodiff.gtf_loss_and_grad``: one JSON line per case.

Question: how long does one GTF loss + exact gradient take, GTF-DEER (Newton forward, one
reverse scan, parallel VJPs) against the fused sequential forward + BPTT baseline, as the
window length T grows?

Model: shPLRNN (M=3, L=50) fitted for a few epochs to generated Lorenz-63 data (so that the
forced dynamics are chaotic-like and the Newton iteration counts are representative), or one
loaded with ``--model``. Batch: B=16 random windows of the standardised trajectory. alpha is
estimated once per T with ``parscan.gtf_alpha`` (the "auto" rule) and passed to both methods,
so both solve the same problem. Every case (dtype, method, T) reports the fields of
``bench/_timing.py``: its first call (compile or cache load included) raw as
``first_call_s``, then min and median over ``--repeat`` (>= 5) runs; the Newton iterations,
threads and versions, and the DEER rows the speed-up (median over median) over the sequential
method measured in the same process, and how far their loss and gradient are from its
(``loss_rel_diff``, ``grad_rel_diff``, ``matches_sequential``: within :data:`AGREEMENT`;
the script exits 1 when a row does not match). ``--backend`` is the DEER backend (``cuda``:
Newton iterations and adjoint on a GPU, against the sequential method on the CPU; it needs a
real GPU). JAX (jitted ``lax.scan`` BPTT) and PyTorch (eager BPTT) rows are added when those
packages are importable, skipped otherwise (they are not dependencies). Each framework row
runs in its own subprocess on the same windows, model and alpha (written to a temporary
folder), so that a framework's thread pool cannot slow the Numba kernels down or the other
way round; its row reports ``framework / fastest parscan`` (median over median).

``--quick`` and ``--smoke`` set defaults; explicit flags win. ``--smoke`` (T = 8, B = 1,
float32, 1 pre-fit epoch, no frameworks, ``--repeat`` >= 1) checks that the code runs: with
``--backend cuda`` it accepts the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) and measures
nothing.

    python bench/train.py                 # T in 1e2..1e5, float32 and float64
    python bench/train.py --quick         # T in 1e2, 1e3; float64
    python bench/train.py --model run/model.npz --T 1000 10000
    python bench/train.py --backend cuda --T 10000 100000 --dtype float32   # on a GPU
"""

import argparse
import functools
import importlib.metadata
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import parscan  # noqa: F401  # isort: skip  (first: PARSCAN_THREADS before Numba loads)
import numba
import numpy as np
from _timing import (
    check_runs,
    exit_on_sigterm,
    no_gpu_reason,
    non_negative_int,
    positive_int,
    print_row,
    timeit,
    versions,
)

import models
from autodiff.config import TrainConfig
from autodiff.gradients import gtf_loss_and_grad
from autodiff.train import fit
from parscan import gtf_alpha
from parscan._jit import n_threads

#: The largest relative difference of GTF-DEER's loss and gradient (2-norm) from the sequential
#: method's on the same windows before a row is marked wrong (``matches_sequential``): both
#: compute the exact gradient of one loss, DEER from its Newton solution (converged to about
#: the dtype's resolution), with sums in other orders.
AGREEMENT = {"float32": 1e-3, "float64": 1e-8}


def _agreement(result, baseline, dtype) -> dict:
    """``loss_rel_diff``, ``grad_rel_diff`` of ``(loss, grad)`` from the sequential method's
    ``baseline`` and ``matches_sequential`` (both within :data:`AGREEMENT`; False for a
    non-finite result)."""
    (loss, grad), (loss_s, grad_s) = result, baseline
    diffs = {
        "loss_rel_diff": abs(loss - loss_s) / max(abs(loss_s), np.finfo(dtype).tiny),
        "grad_rel_diff": float(
            np.linalg.norm(grad - grad_s) / max(np.linalg.norm(grad_s), np.finfo(dtype).tiny)
        ),
    }
    ok = all(np.isfinite(v) and v <= AGREEMENT[dtype] for v in diffs.values())
    return {k: float(v) if np.isfinite(v) else None for k, v in diffs.items()} | {
        "matches_sequential": bool(ok)
    }


def _model(args, x):
    if args.model is not None:  # loaded by _parse_args
        return args.model, 0.0
    t0 = time.perf_counter()
    cfg = TrainConfig(
        sequence_length=200, epochs=args.pretrain_epochs, optimizer="adam", lr_start=3e-3,
        lr_end=1e-3, dtype="float64", method="sequential", alpha_mode="constant", alpha=0.2,
    )  # fmt: skip
    model = fit(models.ShPLRNN(3, 50, dtype="float64", seed=0), x, cfg).model
    return model, time.perf_counter() - t0


def _jax_bptt(model, windows, alpha):
    """A callable running a jitted JAX lax.scan GTF loss + grad (compiled here), or None."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    jax.config.update("jax_enable_x64", windows.dtype == np.float64)
    p = {k: jnp.asarray(v) for k, v in model.unflatten().items()}
    N = model.n_obs

    def loss_fn(p, w):
        z0 = w[:, 0]

        def step(z, x):
            pred = p["A"] * z + jax.nn.relu(z @ p["W2"].T + p["h2"]) @ p["W1"].T + p["h1"]
            forced = pred.at[:, :N].set((1 - alpha) * pred[:, :N] + alpha * x)
            return forced, pred

        _, preds = jax.lax.scan(step, z0, jnp.swapaxes(w[:, 1:], 0, 1))
        return jnp.mean((jnp.swapaxes(preds, 0, 1)[..., :N] - w[:, 1:]) ** 2)

    f = jax.jit(jax.value_and_grad(loss_fn))
    w = jnp.asarray(windows)
    jax.block_until_ready(f(p, w))
    return lambda: float(jax.block_until_ready(f(p, w))[0])


def _torch_bptt(model, windows, alpha):
    """A callable running an eager PyTorch GTF loss + backward, or None."""
    try:
        import torch
    except ImportError:
        return None
    dt = torch.float64 if windows.dtype == np.float64 else torch.float32
    p = {k: torch.tensor(v, dtype=dt, requires_grad=True) for k, v in model.unflatten().items()}
    w = torch.tensor(windows, dtype=dt)
    N = model.n_obs

    def run():
        z = w[:, 0]
        loss = 0.0
        for t in range(1, w.shape[1]):
            pred = p["A"] * z + torch.relu(z @ p["W2"].T + p["h2"]) @ p["W1"].T + p["h1"]
            loss = loss + ((pred[:, :N] - w[:, t]) ** 2).sum()
            z = torch.cat([(1 - alpha) * pred[:, :N] + alpha * w[:, t], pred[:, N:]], dim=1)
        loss = loss / w[:, 1:].numel()
        for v in p.values():
            v.grad = None
        loss.backward()
        return float(loss.detach())

    return run


FRAMEWORKS = {"jax_lax_scan": _jax_bptt, "torch_eager": _torch_bptt}


def _framework_row(name, model, windows, alpha, repeat):
    """Time framework ``name`` on the case in a fresh subprocess; its JSON row (or a skip)."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save(Path(tmp) / "model.npz")
        np.savez(Path(tmp) / "case.npz", windows=windows, alpha=alpha)
        cmd = [sys.executable, __file__, "--framework-worker", name, tmp, "--repeat", str(repeat)]
        done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return {"what": name, "skipped": f"worker failed: {done.stderr.strip()[-300:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _framework_worker(name, folder, repeat):
    """Body of ``--framework-worker``: time one framework on a saved case, print its row."""
    model = models.load(Path(folder) / "model.npz")
    case = np.load(Path(folder) / "case.npz")
    windows, alpha = case["windows"], float(case["alpha"])
    run = FRAMEWORKS[name](model, windows, alpha)
    if run is None:
        print_row({"what": name, "skipped": "not installed"})
        return 0
    timing = timeit(run, repeat)  # JAX compiles in ``_jax_bptt``: its first call is warm
    B, T = windows.shape[0], windows.shape[1] - 1
    package = {"jax_lax_scan": "jax", "torch_eager": "torch"}[name]
    row = {"what": name, "dtype": windows.dtype.name, "B": B, "T": T, "loss": timing.result,
           **timing.fields(), "repeat": repeat,
           "framework_version": importlib.metadata.version(package)}  # fmt: skip
    print_row(row)
    return 0


#: Defaults of ``--quick`` and ``--smoke`` (explicit flags win) and without either.
PRESETS = {
    "full": {"T": [100, 1000, 10_000, 100_000], "dtype": ["float32", "float64"], "B": 16,
             "pretrain_epochs": 20},
    "quick": {"T": [100, 1000], "dtype": ["float64"], "B": 16, "pretrain_epochs": 20},
    "smoke": {"T": [8], "dtype": ["float32"], "B": 1, "pretrain_epochs": 1,
              "no_frameworks": True},
}  # fmt: skip


def _parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=positive_int, nargs="+", help="window lengths (1e2..1e5)")
    ap.add_argument("--dtype", nargs="+", choices=("float32", "float64"))
    ap.add_argument("--method", nargs="+", choices=("deer", "sequential"),
                    default=["deer", "sequential"])  # fmt: skip
    ap.add_argument("--backend", choices=("auto", "sequential", "cpu", "cuda"), default="auto",
                    help="backend of the deer method (sequential: CPU)")  # fmt: skip
    ap.add_argument("--B", type=positive_int, help="windows per batch (16)")
    ap.add_argument(
        "--repeat", type=int, default=5, help="timed runs per case (>= 5; --smoke: >= 1)"
    )
    ap.add_argument("--model", help="a trained LatentRNN .npz (default: a quick pre-fit)")
    ap.add_argument("--pretrain-epochs", type=positive_int, help="epochs of the pre-fit (20)")
    preset = ap.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="T in 1e2, 1e3; float64")
    preset.add_argument("--smoke", action="store_true", help="tiny sizes; a code check")
    ap.add_argument("--no-frameworks", action="store_true", help="skip JAX / PyTorch rows")
    ap.add_argument(
        "--frameworks-max-T", type=non_negative_int, default=10_000,
        help="largest T for the JAX / PyTorch rows (eager PyTorch loops over T in Python)",
    )  # fmt: skip
    ap.add_argument("--framework-worker", nargs=2, metavar=("NAME", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    check_runs(ap, args.repeat, smoke=args.smoke)
    preset = PRESETS["smoke" if args.smoke else "quick" if args.quick else "full"]
    for key, value in preset.items():
        if getattr(args, key) in (None, False):
            setattr(args, key, value)
    if args.backend == "cuda" and (reason := no_gpu_reason()):
        if not (args.smoke and numba.config.ENABLE_CUDASIM):
            ap.error(f"--backend cuda needs a real GPU: {reason}")
    if args.model is not None:  # loaded here, before the data are generated
        args.model = _load_model(ap, args.model)
    return args


def _load_model(ap, path):
    """The ``--model`` file's model; ``ap.error`` (exit 2) when it cannot be read, is no
    :class:`models.base.LatentRNN` or does not model the benchmark's 3-dimensional Lorenz-63
    data."""
    try:
        model = models.load(path)
    except (OSError, ValueError) as exc:  # models.load names the file and the problem
        ap.error(f"--model: {exc}")
    if not isinstance(model, models.base.LatentRNN):
        ap.error(
            f"--model {path}: a {type(model).__name__}; the benchmark times the GTF-DEER "
            "training of a LatentRNN: pass a LatentRNN model file"
        )
    if model.n_obs != 3:
        ap.error(
            f"--model {path}: the model has N = {model.n_obs} observed dimensions; the "
            f"benchmark's Lorenz-63 windows have 3: pass a model trained on 3-d data"
        )
    return model


def main(argv=None):
    exit_on_sigterm()
    args = _parse_args(argv)
    if args.framework_worker:
        return _framework_worker(*args.framework_worker, args.repeat)
    x = models.generate("lorenz63", max(args.T) + 20_000, seed=1)
    x, _, _ = models.standardize(x)
    model64, pretrain_s = _model(args, x)
    rng = np.random.default_rng(0)
    common = {"threads": n_threads(), "versions": versions(), "model": repr(model64)}
    print_row({"what": "setup", "pretrain_s": round(pretrain_s, 2), **common})
    wrong = 0  # DEER rows whose loss or gradient is not the sequential method's

    for dtype in args.dtype:
        model = model64.astype(dtype)
        for T in args.T:
            starts = rng.integers(0, x.shape[0] - T, size=args.B)
            windows = x[starts[:, None] + np.arange(T + 1)].astype(dtype)
            alpha = gtf_alpha(model, windows[:, 1:])
            medians, baseline = {}, None
            for method in sorted(args.method, reverse=True):  # sequential first: the baseline
                backend = args.backend if method == "deer" else "auto"  # sequential: CPU only
                call = functools.partial(
                    gtf_loss_and_grad, model, windows, alpha=alpha, method=method,
                    backend=backend,
                )  # fmt: skip
                timing = timeit(call, args.repeat)
                loss, grad, info = timing.result
                row = {
                    "what": "gtf_loss_and_grad", "method": method, "dtype": dtype, "B": args.B,
                    "T": T, "M": model.M, "alpha": round(alpha, 4), "loss": loss,
                    "backend": args.backend if method == "deer" else None,
                    "newton_iters_max": info.newton_iters_max,
                    "newton_iters_mean": info.newton_iters_mean,
                    **timing.fields(), "repeat": args.repeat, **common,
                    "model": repr(model),  # this dtype's copy of the pretrained model
                }  # fmt: skip
                medians[method] = timing.median_s
                if method == "sequential":
                    baseline = (loss, grad)
                elif baseline is not None:
                    row["speedup_vs_sequential"] = medians["sequential"] / timing.median_s
                    row.update(_agreement((loss, grad), baseline, dtype))
                    wrong += not row["matches_sequential"]
                print_row(row)
            if args.no_frameworks or T > args.frameworks_max_T:
                continue
            comparable = type(model) is models.ShPLRNN and model.M == model.n_obs
            for name in FRAMEWORKS:
                if not comparable:
                    row = {"what": name, "skipped": "only for a ShPLRNN with M == N"}
                else:
                    row = _framework_row(name, model, windows, alpha, args.repeat)
                    if "median_s" in row:
                        row["vs_fastest_parscan"] = row["median_s"] / min(medians.values())
                print_row({**row, "dtype": dtype, "B": args.B, "T": T, **common})
    if wrong:
        print(
            f"bench/train.py: {wrong} GTF-DEER row(s) do not match the sequential method "
            "(matches_sequential false): their timings are of a wrong result",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
