"""Search for the ``parscan-train`` default recipe: how reliably does it reconstruct Lorenz-63?

Question: with which settings does the embedded default run (no arguments) reach D_stsp <= 0.3
(30 bins) and D_H <= 0.15 (sigma = 20) on its 100,000-step test trajectory within the time
budget on 2 cores, and how much does that depend on the seed?

Protocol: exactly the CLI's (``cli.resolve_settings`` with overrides, ``cli.prepare_data``,
``cli.build_model``, ``cli.train_config``, :func:`autodiff.fit` with the validation part,
:func:`models.evaluate` of the selected model on the test trajectory). The seed changes the
generated data (training trajectory with 5 % noise; test trajectory from another initial
condition), the model initialisation and the window sampling, as ``--seed`` does. One JSON
line per seed: the overrides, wall and CPU seconds of ``fit`` (after an untimed warm-up that
loads or compiles the kernels), the selected epoch, validation and test scores. ``--set``
takes the command line's settings (``threads=1`` as ``--threads 1``); those this protocol
does not use (``seed``: ``--seeds``; ``out``, ``resume``, ``checkpoint_interval``, ``quiet``,
``verbose``) are refused.

    python bench/tune_default.py --seeds 0 1 2 3                 # the current defaults
    python bench/tune_default.py --set hidden_dim=200 epochs=200 --seeds 0 1
"""

import argparse
import sys
import time
from dataclasses import replace

from _timing import non_negative_int, print_row, quiet_resolution_warnings, test_scores, versions

import cli
from autodiff import fit


def _parse_value(text):
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return {"none": None, "true": True, "false": False}.get(text.lower(), text)


def run(settings):
    """Train and score one run of the CLI protocol; returns the JSON row."""
    data = cli.prepare_data(settings)
    n_obs = data.train.shape[1]
    model = cli.build_model(settings, n_obs)
    config = cli.train_config(settings, n_obs)
    t0, c0 = time.perf_counter(), time.process_time()
    result = fit(model, data.train, config, validation_data=data.validation)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "seed": settings.seed,
        "fit_wall_s": round(wall, 1),
        "fit_cpu_s": round(cpu, 1),
        **test_scores(result, data.test, settings.n_bins),
        "alpha": result.alpha,
    }


def _override(item):
    """``key=value`` of ``--set``: ``(key, value)`` with ints, floats, none/true/false parsed."""
    key, sep, value = item.partition("=")
    if not (sep and key):
        raise argparse.ArgumentTypeError(f"expected key=value, got {item!r}")
    return key, _parse_value(value)


#: ``--set`` keys this protocol does not use (it writes no run folder and prints JSON
#: lines), refused with why instead of being listed as overrides that changed nothing
NOT_SETTABLE = {
    "seed": "each --seeds value is one run's seed",
    "out": "no run folder is written",
    "resume": "no run folder is written",
    "checkpoint_interval": "no checkpoint is written",
    "quiet": "the rows are printed as JSON lines",
    "verbose": "the rows are printed as JSON lines",
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--set",
        nargs="+",
        action="extend",
        type=_override,
        default=[],
        help="cli.Settings overrides key=value (repeatable)",
    )
    ap.add_argument("--seeds", type=non_negative_int, nargs="+", default=[0])
    args = ap.parse_args(argv)
    args.set = [(cli._setting_name(key), value) for key, value in args.set]  # - or _
    keys = [key for key, _ in args.set]
    twice = sorted({key for key in keys if keys.count(key) > 1})
    if twice:  # as a config file refuses a repeated key
        ap.error(f"--set {', '.join(twice)} given twice; keep one")
    unused = [f"{key} ({NOT_SETTABLE[key]})" for key, _ in args.set if key in NOT_SETTABLE]
    if unused:
        ap.error(f"--set {', '.join(unused)}: not a setting of this protocol; drop it")
    try:  # names and types checked as a config file's (cli._typed_settings), then resolved;
        # then the data, model and training config of the settings themselves, as a run does
        overrides = cli._typed_settings(dict(args.set), "--set")
        base = cli.resolve_settings({**overrides, "quiet": True}, None)
        n_obs = cli.prepare_data(base).train.shape[1]
        cli.build_model(base, n_obs)
        cli.train_config(base, n_obs)
    except (cli.UserError, TypeError, ValueError) as exc:
        ap.error(getattr(exc, "message", str(exc)))
    if base.threads is not None:  # as the command line's --threads
        cli.use_threads(base.threads)
    warm_up = {"epochs": 1, "batches_per_epoch": 1, "validation_steps": 100}
    try:  # kernel compilation / cache loading, not timed
        with quiet_resolution_warnings():  # its 100-step validation runs are too short
            run(replace(base, **warm_up))
    except cli.UserError as exc:  # the settings passed above: the warm-up's changes are refused
        shown = ", ".join(f"{key}={value}" for key, value in warm_up.items())
        ap.error(f"the untimed warm-up run ({shown} over the settings) is refused: {exc.message}")
    for seed in args.seeds:
        row = {"overrides": overrides, **run(replace(base, seed=seed)), "versions": versions()}
        print_row(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
