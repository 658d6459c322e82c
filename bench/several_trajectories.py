"""Several short trajectories or one long one: does ``fit`` reconstruct Lorenz-63 as well?

Question: a measurement often comes as several recordings (trials, sessions, runs from other
initial conditions) rather than one long one. Trained on ``K`` trajectories of
``total // K`` steps each (``fit(model, [x_1, ..., x_K])``: windows never straddle two), does
the ``parscan-train`` default recipe reach the same test scores as on one trajectory of the
same total length?

Protocol: the CLI's model and configuration (``cli.resolve_settings``, ``cli.build_model``,
``cli.train_config``; ``--epochs`` may shorten the run). Training trajectories: Lorenz-63
with 5 % observation noise, each from its own initial condition (``models.generate`` seeds
``1000 * seed + 10 + k``); validation: 20,000 noisy steps (seed ``1000 * seed + 1``), or with
``--validation-parts J > 1`` as many steps in ``J`` trajectories from their own initial
conditions (seeds ``1000 * seed + 600 + j``), each validation run ``validation_steps // J``
long, so that a validation scores as many points as with one; test:
100,000 noise-free steps (seed ``1000 * seed + 2``), scored with :func:`models.evaluate` (30
bins, sigma 20) after the selected model's standardisation. One JSON line per (seed, K):
wall seconds of ``fit`` (after an untimed warm-up that loads or compiles the kernels), the
selected epoch, validation and test scores.

With ``--floors`` no model is trained: the floor of ``models.evaluate``'s D_stsp on ``K``
test trajectories. ``K`` true noise-free trajectories of ``total // K`` steps (seeds ``1000 *
seed + 10 + k``) are scored against ``K`` others as the "generated" runs (seeds ``1000 * seed +
510 + k``), standardised together, 30 bins: all of them together (what ``evaluate`` does with
several test trajectories) and the mean over the ``K`` pairs (scoring each alone); D_H is the
mean over the pairs.

    python bench/several_trajectories.py                        # K = 1, 8, 40; seed 0
    python bench/several_trajectories.py --ks 1 40 --seeds 0 1 --epochs 100
    python bench/several_trajectories.py --floors --seeds 0 1 2   # seconds
    python bench/several_trajectories.py --ks 8 --validation-parts 8 --seeds 0 1
"""

import argparse
import sys
import time
from dataclasses import replace

import numpy as np
from _timing import (
    non_negative_int,
    positive_int,
    print_row,
    quiet_resolution_warnings,
    test_scores,
    versions,
)

import cli
import models
from autodiff import fit
from autodiff.config import MIN_SCORED_STEPS
from models.metrics import power_spectrum_distance, state_space_divergence

SYSTEM = "lorenz63"
#: Noisy validation steps in all, in one trajectory or ``--validation-parts`` of them.
VALIDATION_STEPS = 20_000
#: Fewest steps of a ``--floors`` trajectory: D_stsp refuses fewer time steps than the
#: system's N = 3 dimensions (and scores NaN that close to it).
FLOOR_MIN_STEPS = 3


def run(settings, k: int, total: int, n_validation: int = 1):
    """Train on ``k`` trajectories of ``total // k`` steps, validate on ``n_validation`` of
    20,000 steps in all, and score on the test data."""
    base = 1000 * settings.seed
    parts = [models.generate(SYSTEM, total // k, seed=base + 10 + i, noise=0.05) for i in range(k)]
    if n_validation == 1:
        validation = models.generate(SYSTEM, VALIDATION_STEPS, seed=base + 1, noise=0.05)
    else:
        steps = VALIDATION_STEPS // n_validation
        validation = [
            models.generate(SYSTEM, steps, seed=base + 600 + j, noise=0.05)
            for j in range(n_validation)
        ]
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
        "validation_trajectories": n_validation,
        "validation_steps": settings.validation_steps,
        "epochs": settings.epochs,
        "fit_wall_s": round(wall, 1),
        **test_scores(result, test),
    }


def floors(seed: int, k: int, total: int) -> dict:
    """D_stsp of ``k`` true trajectories against ``k`` others, together and pair by pair."""
    base = 1000 * seed
    steps = total // k
    test = [models.generate(SYSTEM, steps, seed=base + 10 + i) for i in range(k)]
    other = [models.generate(SYSTEM, steps, seed=base + 510 + i) for i in range(k)]
    _, mean, sd = models.standardize(np.concatenate(test))
    test, other = [(x - mean) / sd for x in test], [(x - mean) / sd for x in other]
    with quiet_resolution_warnings():  # short pairs are the point: they score high
        pairs = [state_space_divergence(x, y) for x, y in zip(test, other, strict=True)]
    return {
        "system": SYSTEM,
        "seed": seed,
        "trajectories": k,
        "steps_each": steps,
        "floor_dstsp_together": round(
            state_space_divergence(np.concatenate(test), np.concatenate(other)), 4
        ),
        "floor_dstsp_mean_of_pairs": round(float(np.mean(pairs)), 4),
        "floor_dh_mean_of_pairs": round(
            float(
                np.mean([power_spectrum_distance(x, y) for x, y in zip(test, other, strict=True)])
            ),
            4,
        ),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--ks", type=positive_int, nargs="+", default=[1, 8, 40], help="trajectory counts"
    )
    ap.add_argument("--total", type=positive_int, default=80_000, help="training steps in all")
    ap.add_argument("--seeds", type=non_negative_int, nargs="+", default=[0])
    ap.add_argument("--epochs", type=positive_int, help="shorter runs (default: the CLI's 200)")
    ap.add_argument("--floors", action="store_true", help="D_stsp floors, no training")
    ap.add_argument(
        "--validation-parts",
        type=positive_int,
        default=1,
        help="validation trajectories (20,000 steps)",
    )
    args = ap.parse_args(argv)
    if args.floors:
        short = [k for k in args.ks if args.total // k < FLOOR_MIN_STEPS]
        if short:
            ap.error(
                f"--floors needs total // K >= {FLOOR_MIN_STEPS} steps per trajectory; "
                f"--total {args.total} leaves fewer for K = {', '.join(map(str, short))}: "
                f"lower --ks or raise --total"
            )
        for seed in args.seeds:
            for k in args.ks:
                print_row({**floors(seed, k, args.total), "versions": versions()})
        return 0
    flags = {"quiet": True} if args.epochs is None else {"quiet": True, "epochs": args.epochs}
    try:
        base = cli.resolve_settings(flags, None)
    except cli.UserError as exc:
        ap.error(exc.message)
    least = base.sequence_length + 1
    short = [k for k in args.ks if args.total // k < least]
    if short:
        ap.error(
            f"every K needs total // K >= sequence_length + 1 = {least}; --total {args.total} "
            f"leaves fewer for K = {', '.join(map(str, short))}: lower --ks or raise --total"
        )
    n_val = args.validation_parts
    # fit scores each part's points after its first, against runs of validation_steps // J
    most = min(
        VALIDATION_STEPS // (MIN_SCORED_STEPS + 1), base.validation_steps // MIN_SCORED_STEPS
    )
    if n_val > most:
        ap.error(
            f"--validation-parts {n_val} leaves validation trajectories too short to score "
            f"({VALIDATION_STEPS} steps in all, >= {MIN_SCORED_STEPS + 1} each): at most {most}"
        )
    with quiet_resolution_warnings():  # warm-up: its 100-step validation runs are too short
        run(replace(base, epochs=1, batches_per_epoch=1, validation_steps=100), 2, 1_000)
    for seed in args.seeds:
        for k in args.ks:
            settings = replace(base, seed=seed, validation_steps=base.validation_steps // n_val)
            row = {**run(settings, k, args.total, n_val), "versions": versions()}
            print_row(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
