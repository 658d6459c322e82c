"""Search for training defaults that reconstruct Lorenz-63 quickly (the ``parscan-train`` default).

Question: which model size and TrainConfig make a shPLRNN trained with GTF-DEER and automatic
alpha reach D_stsp <= 0.3 (30 bins) and D_H <= 0.15 (sigma = 20) on a 100,000-step test
trajectory within a few minutes on 2 cores, selecting the model by validation?

Protocol (what the CLI default does): Lorenz-63 generated with ``models.generate``, a training
trajectory (seed 1; its last ``--val-steps`` points are held out for validation) and a test
trajectory from another initial condition (seed 2, 100,000 steps). :func:`autodiff.fit` trains
with ``validation_data`` (best-scoring epoch kept); the selected model is then scored on the
test data with :func:`models.metrics.evaluate`. One JSON line per run: the settings, wall and
CPU seconds of ``fit`` (compile included; reported separately from a warm-up run), the
selected epoch, validation and test scores.

    python bench/tune_default.py                              # the default configuration
    python bench/tune_default.py --L 50 --set lr_start=3e-3 epochs=60 --seeds 0 1 2
"""

import argparse
import json
import sys
import time

import numpy as np

import models
from autodiff.train import TrainConfig, fit
from models.metrics import evaluate

MODELS = {"shplrnn": models.ShPLRNN, "clipped-shplrnn": models.ClippedShPLRNN}


def _parse_value(text):
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return {"none": None, "true": True, "false": False}.get(text.lower(), text)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=list(MODELS), default="clipped-shplrnn")
    ap.add_argument("--M", type=int, default=3)
    ap.add_argument("--L", type=int, default=50)
    ap.add_argument("--set", nargs="*", default=[], help="TrainConfig overrides key=value")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--train-steps", type=int, default=100_000)
    ap.add_argument("--val-steps", type=int, default=20_000)
    ap.add_argument("--test-steps", type=int, default=100_000)
    ap.add_argument("--noise", type=float, default=0.0, help="observation noise of the data")
    ap.add_argument("--verbose", action="store_true", help="print every epoch record")
    ap.add_argument("--save", help="write each selected model to SAVE_seed<k>.npz")
    args = ap.parse_args(argv)

    overrides = dict(item.split("=", 1) for item in args.set)
    overrides = {k: _parse_value(v) for k, v in overrides.items()}
    train = models.generate("lorenz63", args.train_steps, seed=1, noise=args.noise)
    test = models.generate("lorenz63", args.test_steps, seed=2)
    fit_part, val_part = train[: -args.val_steps], train[-args.val_steps :]

    warm = TrainConfig(**{**overrides, "epochs": 1, "batches_per_epoch": 1})
    t0 = time.perf_counter()
    fit(MODELS[args.model](args.M, args.L, seed=0), fit_part, warm, validation_data=val_part)
    warmup_s = time.perf_counter() - t0

    for seed in args.seeds:
        cfg = TrainConfig(**{**overrides, "seed": seed})
        model = MODELS[args.model](args.M, args.L, seed=seed)

        def show(info):
            if args.verbose and info.kind == "epoch":
                print(json.dumps(info.record), file=sys.stderr, flush=True)

        t0, c0 = time.perf_counter(), time.process_time()
        result = fit(model, fit_part, cfg, validation_data=val_part, callback=show)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if args.save:
            result.model.save(f"{args.save}_seed{seed}.npz")
        mean, sd = result.model.standardization
        scores = evaluate(result.model, (test - mean) / sd, measures=("dstsp", "dh"))
        hist = result.history
        row = {
            "model": args.model, "M": args.M, "L": args.L, "seed": seed,
            "config": {k: v for k, v in cfg.to_dict().items() if k in overrides},
            "fit_wall_s": round(wall, 1), "fit_cpu_s": round(cpu, 1),
            "warmup_s": round(warmup_s, 1), "best_epoch": result.best_epoch,
            "val": result.best_scores, "test_status": scores["status"],
            "test_dstsp": scores["dstsp"], "test_dh": scores["dh"],
            "final_loss": hist[-1]["loss"], "alpha": result.alpha,
            "newton_mean": float(np.mean([h["newton_iters_mean"] for h in hist])),
            "bad_steps": result.n_bad_steps,
            "val_curve": [
                (h["epoch"], None if h["val_dstsp"] is None else round(h["val_dstsp"], 3))
                for h in hist if "val_dstsp" in h
            ],
        }  # fmt: skip
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
