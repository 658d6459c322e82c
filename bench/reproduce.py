"""Reproduce the README's runs on the lab's benchmark data, exactly as a user types them.

Question: what does ``parscan-train`` reach on the public DSR benchmark trajectories the
README uses as examples (Lorenz-63 with 5 % noise, a 5-d ECG embedding, Rössler), how long
does it take on this machine, and how close are the scores to the floors -- the distances
between real trajectories of the same system (the data folder's README), which no model can be
expected to beat by much?

Protocol: each case runs ``parscan-train`` in a subprocess with the README's flags (``--out``
in a temporary folder), then ``parscan-train evaluate RUN --n-starts 4`` (four free runs from
spread-out test points: a spurious second attractor shows there). One JSON line per case:
the command, exit codes, wall seconds of the training command (data, kernels from the warm
cache, training, evaluation and plots), the test scores of ``metrics.json`` (one free run from
the first test point), selected epoch, the four-run scores, and how many of those runs came
to rest on a fixed point (``test_at_rest``, ``four_starts.at_rest``). A first case may include
compile time if the Numba cache is cold: run ``parscan-train --epochs 1`` once before.
Exit status 1 (after every row) when a case's training or evaluation exited non-zero.

    python bench/reproduce.py --data-dir ../shared/data                 # every case
    python bench/reproduce.py --data-dir ../shared/data --cases rossler --seeds 0 1 2
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _timing import check_output_folder, exit_on_sigterm, non_negative_int, print_row, versions

#: the README's commands on the lab's files (shared/data), and the floors of those files:
#: D_stsp and D_H between two real trajectories of the system, with the bins the case uses
CASES = {
    "lorenz63": {
        "args": "--data lorenz63_on0.05_train.npy --test-data lorenz63_test.npy".split(),
        "floor": {"what": "noisy train vs test", "dstsp": 0.12, "dh": 0.070},
    },
    "ecg": {
        "args": (
            "--data ECG_pecuzal_5d_train.npy --test-data ECG_pecuzal_5d_test.npy -L 250 "
            "--alpha 0.3 --method sequential --epochs 1000 --lr-start 1e-3 --lr-end 1e-6 "
            "--n-bins 8"
        ).split(),
        "floor": {"what": "train vs test, 8 bins", "dstsp": 0.026, "dh": 0.060},
    },
    "rossler": {
        "args": "--data rossler.npy".split(),
        "floor": {"what": "first vs second half", "dstsp": 0.10, "dh": 0.052},
    },
}


def _command(args: list[str]) -> list[str]:
    """``parscan-train`` with ``args``, from this interpreter's environment."""
    return [sys.executable, "-c", "import cli; cli.main()", *args]


def run_case(name: str, data_dir: Path, seed: int, folder: Path) -> dict:
    """Train and score one case; its JSON row."""
    case = CASES[name]
    args = [str(data_dir / a) if a.endswith(".npy") else a for a in case["args"]] + [
        "--seed",
        str(seed),
        "-q",
    ]
    out = folder / f"{name}-{seed}"
    t0 = time.perf_counter()
    trained = subprocess.run(_command([*args, "--out", str(out)]), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    row = {
        "case": name,
        "command": "parscan-train " + " ".join(case["args"] + ["--seed", str(seed)]),
        "exit_code": trained.returncode,
        "wall_s": round(wall, 1),
        "floor": case["floor"],
    }
    if not (out / "metrics.json").is_file():
        return {**row, "error": trained.stderr.strip().splitlines()[-1:]}
    metrics = json.loads((out / "metrics.json").read_text())
    row.update(
        best_epoch=metrics["best_epoch"],
        train_s=round(metrics["train_seconds"], 1),
        test={key: metrics["test"][key] for key in ("status", "dstsp", "dh", "pe", "message")},
        n_bins=metrics["n_bins"],
        test_at_rest=_at_rest(metrics["test"]),
        passed_over=_passed_over(metrics.get("selection"), metrics["best_epoch"]),
    )
    scored = subprocess.run(
        _command(["evaluate", str(out), "--n-starts", "4", "--out", str(out / "four.json")]),
        capture_output=True,
        text=True,
    )
    four = json.loads((out / "four.json").read_text()) if (out / "four.json").is_file() else {}
    row["four_starts"] = {
        "exit_code": scored.returncode,
        **{key: four.get(key) for key in ("status", "dstsp", "dh", "message")},
        "at_rest": _at_rest(four),
    }
    return row


def _passed_over(selection, kept):
    """The better-validated epochs the selection check passed over for the ``kept`` one,
    each with how many of its free runs came to rest or blew up: ``{"144": {"at_rest": 10,
    "blown_up": 0}, ...}`` (README's "passed over"); empty when it kept the best-validated
    one, None without a selection check."""
    if selection is None:
        return None
    passed = {}
    for candidate in selection["candidates"]:
        if candidate["epoch"] == kept:
            break
        passed[str(candidate["epoch"])] = {
            "at_rest": candidate["at_rest"],
            "blown_up": candidate.get("blown_up", 0),
        }
    return passed


def _at_rest(scores: dict) -> int | None:
    """How many of the scored free runs came to rest on a fixed point (None: not checked)."""
    resting = scores.get("at_rest")
    return None if resting is None else len(resting)


def main(argv=None):
    exit_on_sigterm()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True, help="the lab's files (shared/data)")
    ap.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    ap.add_argument(
        "--seeds", type=non_negative_int, nargs="+", default=[0], help="one run per seed"
    )
    ap.add_argument("--keep", type=Path, help="keep the run folders here (default: deleted)")
    args = ap.parse_args(argv)
    missing = [
        a for name in args.cases for a in CASES[name]["args"]
        if a.endswith(".npy") and not (args.data_dir / a).is_file()
    ]  # fmt: skip
    if missing:
        ap.error(f"--data-dir {args.data_dir} lacks {', '.join(missing)}")
    if args.keep is not None:
        check_output_folder(ap, args.keep, "--keep")
    folder = Path(tempfile.mkdtemp(prefix="parscan-reproduce-"))
    failed = []
    try:
        for name in args.cases:
            for seed in args.seeds:
                row = run_case(name, args.data_dir, seed, folder)
                print_row({**row, "versions": versions()})
                if _failed(row):
                    failed.append(f"{name} seed {seed}")
                if args.keep is not None:  # at once: a stop later keeps the finished cases
                    shutil.copytree(folder, args.keep, dirs_exist_ok=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if failed:  # the rows say why (exit codes, "error")
        total = len(args.cases) * len(args.seeds)
        print(
            f"bench/reproduce.py: {len(failed)} of {total} cases failed: {', '.join(failed)} "
            f"(their exit_code and error fields)",
            file=sys.stderr,
        )
        return 1
    return 0


def _failed(row: dict) -> bool:
    """Whether a case's training or its four-start evaluation exited non-zero."""
    return row["exit_code"] != 0 or row.get("four_starts", {"exit_code": 1})["exit_code"] != 0


if __name__ == "__main__":
    sys.exit(main())
