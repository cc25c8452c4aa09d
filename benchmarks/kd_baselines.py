"""Measure the paper's baseline rows (teacher only, student only, KD) on a data set, over seeds.

A thin wrapper over the recipe runner (:func:`hardctl.recipes.run_recipe`): it builds a three-arm
recipe from the options, runs it into ``OUT/<arm>/seed-<n>`` (finished runs with an unchanged
configuration are reused, so a second call only scores), and prints a Markdown table of test accuracy
(mean ± standard error of the mean) on the centered test split, the default shifted copy, and any
``--extra-shifts`` (scored with ``hardctl eval``). ``OUT/results.json`` and ``OUT/results.md`` are the
runner's; the extra shifts go to ``OUT/extra-shifts.json``.

    python benchmarks/kd_baselines.py --data digits --seeds 0 1 2 --epochs 30 --lr 5e-3 \\
        --extra-shifts 3 1 --out runs/baselines-digits

For the full table-1 arms (random affine, shifts, HARD-Affine) use ``hardctl recipes run transfer-digits``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from hardctl.distill.progress import reporter_for
from hardctl.errors import HardctlError
from hardctl.recipes import format_mean_sem, parse_recipe, run_recipe, shift_label, mean_sem


def baseline_recipe(args) -> dict:
    return {
        "recipe": {"name": f"kd-baselines-{args.data}", "kind": "transfer", "seeds": args.seeds,
                   "description": f"{args.teacher} → {args.student}: teacher only, student only, KD"},
        "defaults": {"data": args.data, "epochs": args.epochs, "lr": args.lr, "temperature": args.temperature},
        "arm": [
            {"id": "teacher", "label": "Teacher only", "command": "train", "model": args.teacher},
            {"id": "student", "label": "Student only", "command": "train", "model": args.student},
            {"id": "kd", "label": "KD", "command": "distill", "teacher": "@teacher", "model": args.student,
             "augmentor": "none"},
        ],
    }


def shifted_acc(run_dir: str, data: str, px: int) -> float:
    cmd = [sys.executable, "-c", "from hardctl.cli import main; main()", "eval", "--model", run_dir,
           "--data", data, "--shifted", "--shift-px", str(px), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd[3:])}\n{proc.stderr}")
    return next(r["acc"] for r in json.loads(proc.stdout) if r["set"] == "shifted")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="digits")
    parser.add_argument("--teacher", default="mnist_cnn")
    parser.add_argument("--student", default="mnist_mlp")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=5e-3, help="learning rate of every arm")
    parser.add_argument("--temperature", type=float, default=5.0, help="KD temperature")
    parser.add_argument("--extra-shifts", type=int, nargs="*", default=[], help="more shifts (px) to score")
    parser.add_argument("--no-reuse", action="store_true", help="train every run again, even finished ones")
    parser.add_argument("--out", type=Path, default=Path("runs/baselines"))
    args = parser.parse_args()

    try:
        recipe = parse_recipe(baseline_recipe(args), "<benchmarks/kd_baselines.py>")
        results = run_recipe(recipe, args.out, reuse=not args.no_reuse, progress=reporter_for())
    except HardctlError as exc:
        sys.exit(f"kd_baselines: error: {exc.oneline()}")

    names = ["Centered", shift_label(results), *(f"Shifted (±{px} px)" for px in args.extra_shifts)]
    extra: dict[str, dict[int, list[float]]] = {}
    print(f"{args.teacher} → {args.student} on {args.data}: {args.epochs} epochs, lr {args.lr}, "
          f"T {args.temperature}, seeds {args.seeds}\n")
    print("| Method | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for arm in results["arms"]:
        cells = [format_mean_sem(arm["centered"]), format_mean_sem(arm["shifted"])]
        for px in args.extra_shifts:
            values = [shifted_acc(run["run_dir"], args.data, px) for run in arm["runs"]]
            extra.setdefault(arm["id"], {})[px] = values
            cells.append(format_mean_sem(mean_sem(values)))
        print(f"| {arm['label']} | " + " | ".join(cells) + " |")
    if extra:
        (Path(results["out_dir"]) / "extra-shifts.json").write_text(json.dumps(extra, indent=2) + "\n")


if __name__ == "__main__":
    main()
