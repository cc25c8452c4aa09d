"""A recipe's results: mean ± s.e.m. per arm, the paper-layout table, Markdown and JSON files."""

from __future__ import annotations

import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from hardctl.atomic import atomic_path
from hardctl.config import RunConfig
from hardctl.errors import HardctlError
from hardctl.recipes.spec import IGNORED_FOR_REUSE, RESOLVED_RECIPE, RESULTS_JSON, RESULTS_MD, Arm, Recipe

# ---------------------------------------------------------------------------------------------- running
@dataclass
class PlannedRun:
    arm: Arm
    seed: int
    run_dir: Path
    cfg: RunConfig  # resolved (HARD defaults filled in), exactly what the run's config.toml will hold


def _comparable(values: dict[str, Any]) -> dict[str, Any]:
    """A config as it reads back from TOML (tuples become lists), without what does not change results."""
    values = {k: v for k, v in values.items() if k not in IGNORED_FOR_REUSE}
    return tomllib.loads(tomli_w.dumps({"run": values}))["run"]


def saved_config_matches(run_dir: Path, cfg: RunConfig) -> bool:
    """Whether ``run_dir/config.toml`` holds ``cfg`` (up to what does not change results)."""
    try:
        saved = RunConfig.load(run_dir)
    except HardctlError:
        return False
    return _comparable(saved.to_dict()) == _comparable(cfg.to_dict())


def _summary(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def _resumable(run_dir: Path, epochs: int) -> bool:
    """Whether ``run_dir`` has a readable last checkpoint with epochs still to train."""
    from hardctl.distill import rundir

    last = run_dir / rundir.CHECKPOINT_DIR / "last.pt"
    if not last.is_file():
        return False
    try:
        return int(rundir.load_checkpoint(last)["epoch"]) < epochs
    except (HardctlError, KeyError, TypeError, ValueError):
        return False  # damaged: train it again



def mean_sem(values: list[float]) -> dict[str, Any]:
    n = len(values)
    mean = statistics.fmean(values) if values else None
    sem = statistics.stdev(values) / math.sqrt(n) if n >= 2 else None
    return {"mean": mean, "sem": sem, "n": n, "values": values}


def format_mean_sem(stat: dict[str, Any] | None, digits: int = 1) -> str:
    """``98.6 ± 0.1`` (or just the mean with one seed, ``-`` with none)."""
    if not stat or stat.get("mean") is None:
        return "-"
    if stat.get("sem") is None:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['sem']:.{digits}f}"


def format_delta(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:+.{digits}f}"


def _kd_reference(recipe: Recipe, arm_ids: list[str]) -> str | None:
    """The plain-KD arm the other distill arms are compared with: distill, no HARD, no augmentation."""
    for arm in recipe.arms:
        if arm.id not in arm_ids:
            continue
        cfg = recipe.config(arm, recipe.seeds[0])
        if cfg.command == "distill" and cfg.augmentor.strip().lower() == "none" and cfg.augment == "none":
            return arm.id
    return None


def collect(recipe: Recipe, plan: list[PlannedRun], statuses: dict[Path, str], *, seeds: list[int],
            overrides: dict[str, str], out_dir: Path) -> dict[str, Any]:
    """results.json's content from the runs of ``plan`` that have a summary."""
    order = [arm.id for arm in recipe.arms if any(p.arm.id == arm.id for p in plan)]
    arms_out: list[dict[str, Any]] = []
    shift_px: set[int] = set()
    for arm_id in order:
        arm = recipe.arm(arm_id)
        planned = [p for p in plan if p.arm.id == arm_id]
        cfg = planned[0].cfg
        runs, centered, shifted, teacher_c, teacher_s = [], [], [], [], []
        hard: dict[str, list[float]] = {}
        for p in planned:
            summary = _summary(p.run_dir)
            if summary is None or p.run_dir not in statuses:
                continue
            shift_px.add(summary.get("shift_px"))
            model = summary["student"]  # in a train run, "student" is the trained model
            entry = {"seed": p.seed, "run_dir": str(p.run_dir), "status": statuses[p.run_dir],
                     "test_acc": model["test_acc"], "shifted_acc": model["shifted_acc"]}
            centered.append(model["test_acc"])
            shifted.append(model["shifted_acc"])
            if "teacher" in summary:
                entry["teacher"] = {k: summary["teacher"][k] for k in ("test_acc", "shifted_acc")}
                teacher_c.append(summary["teacher"]["test_acc"])
                teacher_s.append(summary["teacher"]["shifted_acc"])
            if isinstance(summary.get("hard"), dict):
                stats = {k: summary["hard"][k] for k in ("switches", "pool_size", "aug_fraction")
                         if isinstance(summary["hard"].get(k), (int, float))}
                entry["hard"] = stats
                for k, v in stats.items():
                    hard.setdefault(k, []).append(float(v))
            runs.append(entry)
        record: dict[str, Any] = {
            "id": arm.id, "label": arm.label, "command": cfg.command, "model": cfg.model,
            "teacher": arm.values.get("teacher", recipe.defaults.get("teacher")) if cfg.command == "distill" else None,
            "augment": cfg.augment, "augmentor": cfg.augmentor if cfg.command == "distill" else None,
            "runs": runs, "centered": mean_sem(centered), "shifted": mean_sem(shifted),
        }
        if teacher_c:
            record["teacher_acc"] = {"centered": mean_sem(teacher_c), "shifted": mean_sem(teacher_s)}
        if hard:
            record["hard"] = {k: statistics.fmean(v) for k, v in hard.items()}
        arms_out.append(record)
    reference = _kd_reference(recipe, order)
    if reference is not None:
        ref = next(a for a in arms_out if a["id"] == reference)
        for record in arms_out:
            if record["command"] == "distill" and record["id"] != reference:
                record["vs_kd"] = {col: (record[col]["mean"] - ref[col]["mean"]
                                         if record[col]["mean"] is not None and ref[col]["mean"] is not None else None)
                                   for col in ("centered", "shifted")}
    planned_total = len(plan)
    finished = sum(1 for p in plan if p.run_dir in statuses and _summary(p.run_dir) is not None)
    return {
        "recipe": recipe.name, "kind": recipe.kind, "description": recipe.description, "paper": recipe.paper,
        "source": recipe.source, "seeds": seeds, "overrides": overrides, "out_dir": str(out_dir),
        "data": sorted({p.cfg.data for p in plan}),
        "shift_px": sorted(px for px in shift_px if px is not None),
        "kd_reference": reference, "command": reproduce_command(recipe, seeds, order, overrides, out_dir),
        "complete": finished == planned_total,
        "runs_finished": finished, "runs_planned": planned_total, "arms": arms_out,
    }


def reproduce_command(recipe: Recipe, seeds: list[int], arm_ids: list[str], overrides: dict[str, str],
                      out_dir: Path) -> str:
    """The ``hardctl recipes run`` line that makes (or continues) these results."""
    import shlex

    from hardctl import plugins

    target = recipe.source
    if not (target.endswith(".toml") and Path(target).is_file()):
        # built in memory (by a script): the resolved copy in OUT is the file to run
        target, overrides = str(out_dir / RESOLVED_RECIPE), {}
    elif recipe.name in plugins.recipes:
        registered = Path(plugins.recipes.get(recipe.name).obj)
        if registered.resolve() == Path(recipe.source).resolve():
            target = recipe.name
    try:
        target = str(Path(target).relative_to(Path.cwd()))
    except ValueError:
        pass
    parts = ["hardctl", "recipes", "run", target]
    if seeds != recipe.seeds:
        parts += ["--seeds", ",".join(map(str, seeds))]
    if arm_ids != [a.id for a in recipe.arms]:
        parts += ["--arms", ",".join(arm_ids)]
    for key, value in overrides.items():
        parts += ["--set", f"{key}={value}"]
    try:
        out = str(out_dir.relative_to(Path.cwd()))
    except ValueError:
        out = str(out_dir)
    parts += ["--out", out]
    return " ".join(shlex.quote(p) for p in parts)


def shift_label(results: dict[str, Any]) -> str:
    px = results.get("shift_px") or []
    return f"Shifted (±{px[0]} px)" if len(px) == 1 else "Shifted"


def markdown(results: dict[str, Any]) -> str:
    """results.md: the paper's table-1 layout (rows = arms; centered / shifted as mean ± s.e.m.)."""
    lines = [f"# {results['recipe']}", ""]
    if results.get("description"):
        lines += [results["description"], ""]
    facts = [f"data {', '.join(results['data'])}", f"seeds {', '.join(map(str, results['seeds']))}"]
    if results.get("paper"):
        facts.insert(0, f"paper: {results['paper']}")
    if results.get("overrides"):
        facts.append("overrides " + " ".join(f"{k}={v}" for k, v in results["overrides"].items()))
    lines += ["; ".join(facts) + ".", ""]
    if results.get("command"):
        lines += [f"Command: `{results['command']}`", ""]
    if not results["complete"]:
        lines += [f"**Incomplete:** {results['runs_finished']} of {results['runs_planned']} runs finished.", ""]
    with_delta = results.get("kd_reference") is not None
    reference_label = next((a["label"] for a in results["arms"] if a["id"] == results.get("kd_reference")), "")
    header = ["Method", "Centered", shift_label(results)]
    if with_delta:
        header += ["Δ centered vs KD", "Δ shifted vs KD"]
    header.append("n")
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for arm in results["arms"]:
        row = [arm["label"], format_mean_sem(arm["centered"]), format_mean_sem(arm["shifted"])]
        if with_delta:
            delta = arm.get("vs_kd", {})
            row += [format_delta(delta.get("centered")), format_delta(delta.get("shifted"))]
        row.append(str(arm["centered"]["n"]))
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Test accuracy in %, mean ± standard error of the mean over seeds"
              + (f"; Δ: difference of the means from the {reference_label} row." if with_delta else ".")]
    hard_arms = [a for a in results["arms"] if a.get("hard")]
    if hard_arms:
        lines += ["", "| HARD arm | switches | pool size | iterations in augmentor phases |", "|---|---:|---:|---:|"]
        for arm in hard_arms:
            h = arm["hard"]
            nan = float("nan")
            lines.append(f"| {arm['label']} | {h.get('switches', nan):.1f} | {h.get('pool_size', nan):.1f} | "
                         f"{100 * h.get('aug_fraction', nan):.1f} % |")
    return "\n".join(lines) + "\n"


def write_results(out_dir: Path, results: dict[str, Any], recipe: Recipe) -> dict[str, Path]:
    """results.json, results.md and the resolved recipe.toml, each replaced atomically."""
    files = {"json": out_dir / RESULTS_JSON, "markdown": out_dir / RESULTS_MD, "recipe": out_dir / RESOLVED_RECIPE}
    payloads = {"json": json.dumps(results, indent=2, sort_keys=True) + "\n", "markdown": markdown(results),
                "recipe": recipe.to_toml()}
    for key, path in files.items():
        with atomic_path(path) as tmp:
            tmp.write_text(payloads[key], encoding="utf-8")
    return files


