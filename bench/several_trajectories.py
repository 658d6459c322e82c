"""Several short trajectories or one long one: does ``fit`` reconstruct Lorenz-63 as well?

Question: a measurement often comes as several recordings (trials, sessions, runs from other
initial conditions) rather than one long one. Trained on ``K`` trajectories of
``total // K`` steps each (``fit(model, [x_1, ..., x_K])``: windows never straddle two), does
the ``parscan-train`` default recipe reach the same test scores as on one trajectory of the
same total length?

Protocol: the CLI's model and configuration (``cli.resolve_settings``, ``cli.build_model``,
``cli.train_config``; ``--epochs`` may shorten the run). Training trajectories: Lorenz-63
with 5 % observation noise, each from its own initial condition (``models.generate`` seeds
``1000 * seed + 10 + k``); validation: 20,000 noisy steps (seed ``1000 * seed + 1``); test:
100,000 noise-free steps (seed ``1000 * seed + 2``), scored with :func:`models.evaluate` (30
bins, sigma 20) after the selected model's standardisation. One JSON line per (seed, K):
wall seconds of ``fit`` (after an untimed warm-up that loads or compiles the kernels), the
selected epoch, validation and test scores.

    python bench/several_trajectories.py                        # K = 1, 8, 40; seed 0
    python bench/several_trajectories.py --ks 1 40 --seeds 0 1 --epochs 100
"""

import argparse
import json
import sys
import time
import warnings
from dataclasses import replace

from _timing import test_scores, versions

import cli
import models
from autodiff import fit

SYSTEM = "lorenz63"


def run(settings, k: int, total: int):
    """Train on ``k`` trajectories of ``total // k`` steps and score on the test data."""
    base = 1000 * settings.seed
    parts = [models.generate(SYSTEM, total // k, seed=base + 10 + i, noise=0.05) for i in range(k)]
    validation = models.generate(SYSTEM, 20_000, seed=base + 1, noise=0.05)
    test = models.generate(SYSTEM, 100_000, seed=base + 2)
    model = cli.build_model(settings, 3)
    config = cli.train_config(settings, 3)
    t0 = time.perf_counter()
    result = fit(model, parts, config, validation_data=validation)
    wall = time.perf_counter() - t0
    return {
        "system": SYSTEM,
        "seed": settings.seed,
        "trajectories": k,
        "steps_each": total // k,
        "epochs": settings.epochs,
        "fit_wall_s": round(wall, 1),
        **test_scores(result, test),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 8, 40], help="trajectory counts")
    ap.add_argument("--total", type=int, default=80_000, help="training steps in all")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--epochs", type=int, help="shorter runs (default: the CLI's 200)")
    args = ap.parse_args(argv)
    flags = {"quiet": True} if args.epochs is None else {"quiet": True, "epochs": args.epochs}
    base = cli.resolve_settings(flags, None)
    if any(k < 1 or args.total // k < base.sequence_length + 1 for k in args.ks):
        ap.error(f"every K needs total // K >= sequence_length + 1 = {base.sequence_length + 1}")
    with warnings.catch_warnings():  # warm-up: its 100-step validation runs are too short
        warnings.simplefilter("ignore")
        run(replace(base, epochs=1, batches_per_epoch=1, validation_steps=100), 2, 1_000)
    for seed in args.seeds:
        for k in args.ks:
            row = {**run(replace(base, seed=seed), k, args.total), "versions": versions()}
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
