"""Measure the paper's baseline rows (teacher only, student only, KD) on a data set, over seeds.

Runs the real CLI for every arm and seed and prints a Markdown table of test accuracy (mean ± standard
error of the mean) on the centered test split, the default shifted copy, and any ``--extra-shifts``;
every run's summary goes to ``OUT/results.json``.

    python benchmarks/kd_baselines.py --data digits --seeds 0 1 2 --epochs 30 --lr 5e-3 \\
        --extra-shifts 3 1 --out runs/baselines-digits

``--reuse`` scores the runs already in OUT instead of training them again.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ARMS = ("Teacher only", "Student only", "KD")


def hardctl(*args: str) -> dict | list:
    cmd = [sys.executable, "-c", "from hardctl.cli import main; main()", *args, "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed: hardctl {' '.join(args)}\n{proc.stderr}")
    return json.loads(proc.stdout)


def mean_sem(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values) / len(values) ** 0.5:.1f}"


def train_arms(args, seed: int) -> dict[str, Path]:
    """Train (or, with --reuse, find) the three runs of one seed."""
    runs = {arm: args.out / f"{key}-{seed}" for arm, key in zip(ARMS, ("teacher", "student", "kd"), strict=True)}
    if args.reuse:
        return runs
    common = ["--data", args.data, "--epochs", str(args.epochs), "--lr", args.lr, "--seed", str(seed), "--force"]
    hardctl("train", "--model", args.teacher, *common, "--out", str(runs["Teacher only"]))
    hardctl("train", "--model", args.student, *common, "--out", str(runs["Student only"]))
    hardctl("distill", "--teacher", str(runs["Teacher only"]), "--student", args.student, "-T", args.temperature,
            *common, "--out", str(runs["KD"]))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="digits")
    parser.add_argument("--teacher", default="mnist_cnn")
    parser.add_argument("--student", default="mnist_mlp")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", default="5e-3", help="learning rate of every arm")
    parser.add_argument("--temperature", default="5", help="KD temperature")
    parser.add_argument("--extra-shifts", type=int, nargs="*", default=[], help="more shifts (px) to score")
    parser.add_argument("--reuse", action="store_true", help="score existing runs in --out, train nothing")
    parser.add_argument("--out", type=Path, default=Path("runs/baselines"))
    args = parser.parse_args()

    columns: dict[str, dict[str, list[float]]] = {arm: {} for arm in ARMS}
    summaries: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for seed in args.seeds:
        for arm, run_dir in train_arms(args, seed).items():
            summary = json.loads((run_dir / "summary.json").read_text())
            summaries[arm].append(summary)
            scores = {"Centered": summary["student"]["test_acc"],
                      f"Shifted (±{summary['shift_px']} px)": summary["student"]["shifted_acc"]}
            for px in args.extra_shifts:
                rows = hardctl("eval", "--model", str(run_dir), "--data", args.data, "--shifted", "--shift-px", str(px))
                scores[f"Shifted (±{px} px)"] = next(r["acc"] for r in rows if r["set"] == "shifted")
            for name, value in scores.items():
                columns[arm].setdefault(name, []).append(value)

    names = list(columns[ARMS[0]])
    print(f"{args.teacher} → {args.student} on {args.data}: {args.epochs} epochs, lr {args.lr}, "
          f"T {args.temperature}, seeds {args.seeds}\n")
    print("| Method | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for arm in ARMS:
        print(f"| {arm} | " + " | ".join(mean_sem(columns[arm][n]) for n in names) + " |")
    (args.out / "results.json").write_text(json.dumps({"summaries": summaries, "columns": columns}, indent=2))


if __name__ == "__main__":
    main()
