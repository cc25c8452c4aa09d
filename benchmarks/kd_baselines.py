"""Measure the paper's baseline rows (teacher only, student only, KD) on a data set, over seeds.

Runs the real CLI for every arm and seed and prints a Markdown table of centered and shifted test
accuracy (mean ± standard error of the mean), plus the JSON of every run.

    python benchmarks/kd_baselines.py --data digits --seeds 0 1 2 --epochs 30 --lr 5e-3 --out runs/baselines-digits
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path


def hardctl(*args: str) -> dict:
    cmd = [sys.executable, "-c", "from hardctl.cli import main; main()", *args, "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(args)}\n{proc.stderr}")
    return json.loads(proc.stdout)


def mean_sem(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values) / len(values) ** 0.5:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="digits")
    parser.add_argument("--teacher", default="mnist_cnn")
    parser.add_argument("--student", default="mnist_mlp")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", default="5e-3", help="learning rate of every arm")
    parser.add_argument("--temperature", default="5", help="KD temperature")
    parser.add_argument("--out", type=Path, default=Path("runs/baselines"))
    args = parser.parse_args()
    common = ["--data", args.data, "--epochs", str(args.epochs), "--lr", args.lr, "--force"]
    rows: dict[str, list[dict]] = {"Teacher only": [], "Student only": [], "KD": []}
    for seed in args.seeds:
        s = ["--seed", str(seed)]
        teacher_dir = args.out / f"teacher-{seed}"
        rows["Teacher only"].append(hardctl("train", "--model", args.teacher, *common, *s, "--out", str(teacher_dir)))
        rows["Student only"].append(hardctl("train", "--model", args.student, *common, *s,
                                            "--out", str(args.out / f"student-{seed}")))
        rows["KD"].append(hardctl("distill", "--teacher", str(teacher_dir), "--student", args.student, "-T", args.temperature,
                                  *common, *s,
                                  "--out", str(args.out / f"kd-{seed}")))
    print(f"{args.teacher} → {args.student} on {args.data}: {args.epochs} epochs, lr {args.lr}, "
          f"T {args.temperature}, seeds {args.seeds}\n")
    print("| Method | Centered | Shifted |\n|---|---|---|")
    for name, runs in rows.items():
        print(f"| {name} | {mean_sem([r['student']['test_acc'] for r in runs])} "
              f"| {mean_sem([r['student']['shifted_acc'] for r in runs])} |")
    (args.out / "results.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
