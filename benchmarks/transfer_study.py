"""What limits HARD's transfer: named variants of one distillation, several seeds, scored on validation data.

Issue 12 asks for a study of what limits the shift-invariance transfer (the pool's sampling, clean images in
the student's batches, the augmentor's σ, its steps per phase, the teacher, the epochs) with every choice made
on *validation* data. This script runs each variant of a ``study`` TOML file for each seed with
``hardctl distill`` (a subprocess, exactly what a user runs), reads the run's ``summary.json`` and
``epochs.jsonl`` and writes one table:

* ``val`` / ``val shifted``: the final student's accuracy on the validation split and on its shifted copy (what
  the choices are made on; logged every epoch as ``val_acc`` / ``val_shifted_acc``);
* ``test`` / ``test shifted``: the same student on the test split and its shifted copy, reported, never chosen on.

The study file::

    [study]
    data = "digits"
    seeds = [0, 1, 2, 3, 4]
    teacher = ["--model", "mnist_cnn", "--epochs", "30", "--lr", "5e-3", "--augment", "shift"]  # per seed
    # or: shared_teacher = "runs/fm-teacher"   (one teacher for every seed, trained beforehand)
    base = ["--student", "mnist_mlp", "--epochs", "100", "--lr", "5e-3"]

    [variant.kd]
    args = ["--augmentor", "none"]

    [variant.hard]
    args = ["--augmentor", "affine", "--l-min", "0.1"]

Run::

    python benchmarks/transfer_study.py docs/results/study-digits.toml --out runs/study-digits [--only hard,kd]

Finished runs are reused (their ``config.toml`` must match the variant's arguments, or the run is redone), so
adding a variant and re-running costs only the new runs. Results: ``<out>/study.json`` and ``<out>/study.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hardctl.recipes.results import format_mean_sem as fmt  # noqa: E402  (the tables' one formatter)
from hardctl.stats import mean_sem  # noqa: E402
from hardctl.tomlio import read_toml  # noqa: E402

HARDCTL = [sys.executable, "-m", "hardctl"]
COLUMNS = ("val_acc", "val_shifted_acc", "test_acc", "shifted_acc")


def run(args: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as handle:
        code = subprocess.call(HARDCTL + args, stdout=handle, stderr=subprocess.STDOUT)
    if code:
        raise SystemExit(f"failed ({code}): hardctl {shlex.join(args)} — see {log}")


def stamp(run_dir: Path) -> Path:
    return run_dir / "study-args.json"


def finished(run_dir: Path, args: list[str]) -> bool:
    """A run is reused only if it finished with exactly these arguments."""
    try:
        return json.loads(stamp(run_dir).read_text()) == args and (run_dir / "summary.json").exists()
    except (OSError, ValueError):
        return False


def teacher_for(study: dict, seed: int, out: Path) -> str:
    if "shared_teacher" in study:
        return study["shared_teacher"]
    target = out / "teachers" / f"seed-{seed}"
    args = ["train", "--data", study["data"], *study["teacher"], "--seed", str(seed), "--out", str(target), "--force"]
    if not finished(target, args):
        run(args, out / "logs" / f"teacher-{seed}.txt")
        stamp(target).write_text(json.dumps(args))
    return str(target)


def score(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    epochs = [json.loads(line) for line in (run_dir / "epochs.jsonl").read_text().splitlines() if line.strip()]
    last = epochs[-1]
    hard = summary.get("hard") or {}
    return {"val_acc": last["val_acc"], "val_shifted_acc": last.get("val_shifted_acc"),
            "test_acc": summary["student"]["test_acc"], "shifted_acc": summary["student"]["shifted_acc"],
            "switches": hard.get("switches"), "pool_size": hard.get("pool_size"),
            "aug_fraction": hard.get("aug_fraction"),
            "teacher_test": (summary.get("teacher") or {}).get("test_acc"),
            "teacher_shifted": (summary.get("teacher") or {}).get("shifted_acc"),
            "commit": (summary.get("code") or {}).get("commit"),  # the code that trained it (None: unknown)
            # the convergence measurement: shifted validation accuracy per epoch and the student steps so far
            "curve": [(e["step"], e.get("val_shifted_acc")) for e in epochs]}


def table(results: dict, variants: dict, seeds: list[int]) -> str:
    lines = ["| variant | what changes | val | val shifted | test | test shifted | switches | n |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    teachers = {}  # the teacher of each seed, as the runs scored it
    for name in variants:
        for seed in seeds:
            run = results.get(name, {}).get(str(seed))
            if run and run.get("teacher_test") is not None:
                teachers[seed] = (run["teacher_test"], run["teacher_shifted"])
    if teachers:
        test, shifted = zip(*teachers.values())
        lines.append(f"| teacher | the teacher every student distils from | | | {fmt(mean_sem(list(test)))} | "
                     f"{fmt(mean_sem(list(shifted)))} | | {len(teachers)} |")
    for name, variant in variants.items():
        runs = [results[name][str(s)] for s in seeds if str(s) in results.get(name, {})]
        if not runs:
            continue
        cells = []
        for column in COLUMNS:
            values = [r[column] for r in runs if r[column] is not None]
            cells.append(fmt(mean_sem(values)) if values else "")
        switches = [r["switches"] for r in runs if r["switches"] is not None]
        lines.append(f"| {name} | {variant.get('why', '')} | {' | '.join(cells)} | "
                     f"{sum(switches) / len(switches):.1f} |" if switches else
                     f"| {name} | {variant.get('why', '')} | {' | '.join(cells)} |  |")
        lines[-1] += f" {len(runs)} |"
    return "\n".join(lines) + "\n"


def convergence(results: dict, variants: dict, seeds: list[int], reference: str = "kd") -> str:
    """After how many student steps each variant first reaches its reference's (plain KD's) final shifted
    validation accuracy of the same seed, as a fraction of the reference's steps (the paper's claim that HARD
    converges faster, measured). A variant names its own reference with ``reference = "..."`` in the study file
    (a KD run with the same student); the default is ``reference``."""
    lines = ["| variant | reference | first epoch-end at or above the reference's final shifted val acc: student steps, "
             "% of the reference's steps | seeds that reach it |", "|---|---|---:|---:|"]
    for name in variants:
        own = variants[name].get("reference", reference)
        if name == own or name not in results:
            continue
        fractions = []
        for seed in seeds:
            ref, run = results.get(own, {}).get(str(seed)), results[name].get(str(seed))
            if not ref or not run or ref["val_shifted_acc"] is None:
                continue
            total = ref["curve"][-1][0]
            hit = next((step for step, acc in run["curve"] if acc is not None and acc >= ref["val_shifted_acc"]), None)
            fractions.append(None if hit is None else 100 * hit / total)
        reached = [f for f in fractions if f is not None]
        if fractions:
            lines.append(f"| {name} | {own} | {fmt(mean_sem(reached)) if reached else '-'} | {len(reached)}/{len(fractions)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    parser.add_argument("--seeds", default="", help="comma-separated seeds (default: the study's)")
    options = parser.parse_args()
    spec = read_toml(options.study)
    study, variants = spec["study"], spec["variant"]
    seeds = [int(s) for s in options.seeds.split(",")] if options.seeds else list(study["seeds"])
    chosen = [v for v in options.only.split(",") if v] or list(variants)
    out = options.out
    results_path = out / "study.json"
    results = json.loads(results_path.read_text())["results"] if results_path.exists() else {}
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    for seed in seeds:
        teacher = teacher_for(study, seed, out)
        for name in chosen:
            run_dir = out / name / f"seed-{seed}"
            args = ["distill", "--teacher", teacher, "--data", study["data"], *study["base"], *variants[name]["args"],
                    "--seed", str(seed), "--out", str(run_dir), "--force"]
            if not finished(run_dir, args):
                started = time.perf_counter()
                run(args, out / "logs" / f"{name}-{seed}.txt")
                stamp(run_dir).write_text(json.dumps(args))
                print(f"{name} seed {seed}: {time.perf_counter() - started:.0f} s", flush=True)
            results.setdefault(name, {})[str(seed)] = score(run_dir)
            results_path.parent.mkdir(parents=True, exist_ok=True)
            results_path.write_text(json.dumps({"study": str(options.study), "results": results}, indent=1))
    text = table(results, variants, seeds) + "\n" + convergence(results, variants, seeds)
    (out / "study.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
