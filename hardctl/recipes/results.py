"""A recipe's results: mean ± s.e.m. per arm, the paper-layout table, Markdown and JSON files."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from hardctl import tomlio
from hardctl.atomic import atomic_path
from hardctl.codeversion import code_version, describe
from hardctl.config import RunConfig
from hardctl.errors import HardctlError
from hardctl.runfiles import LAST_CHECKPOINT, SUMMARY_FILE
from hardctl.stats import mean_sem
from hardctl.recipes.spec import IGNORED_FOR_REUSE, RESOLVED_RECIPE, RESULTS_JSON, RESULTS_MD, Arm, Recipe

# ---------------------------------------------------------------------------------------------- running
@dataclass
class PlannedRun:
    arm: Arm
    seed: int | None  # None: an eval arm, scored once for all seeds
    run_dir: Path
    cfg: RunConfig  # resolved (HARD defaults filled in), exactly what the run's config.toml will hold
    evaluate_only: bool = False  # an eval arm: cfg.model is the model it scores, nothing is trained


def _comparable(values: dict[str, Any]) -> dict[str, Any]:
    """A config as it reads back from TOML (tuples become lists), without what does not change results."""
    values = {k: v for k, v in values.items() if k not in IGNORED_FOR_REUSE}
    return tomlio.loads(tomli_w.dumps({"run": values}))["run"]


def saved_config_matches(run_dir: Path, cfg: RunConfig) -> bool:
    """Whether ``run_dir/config.toml`` holds ``cfg`` (up to what does not change results)."""
    try:
        saved = RunConfig.load(run_dir)
    except HardctlError:
        return False
    return _comparable(saved.to_dict()) == _comparable(cfg.to_dict())


def version_problem(summary: dict[str, Any]) -> str | None:
    """Why a finished run's result may not stand for this code: another hardctl version made it (or one that did
    not record its version). None when the versions agree; a different commit of the same version is reused, and
    said so (:func:`commit_note`)."""
    made = summary.get("code")
    if not made:
        return "an earlier hardctl made it, before runs recorded their version"
    if made.get("hardctl") != code_version()["hardctl"]:
        return f"{describe(made)} made it; this is {describe(code_version())}"
    return None


def commit_note(summary: dict[str, Any]) -> str | None:
    """A line for the log when a reused run was made at another commit of this version, else None."""
    made, now = summary.get("code") or {}, code_version()
    if made.get("commit") and now["commit"] and (made["commit"], made.get("dirty")) != (now["commit"], now["dirty"]):
        return f"made by {describe(made)}; the code is now {describe(now)} (--no-reuse retrains it)"
    return None


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return None


def resumable(run_dir: Path, epochs: int) -> bool:
    """Whether ``run_dir`` has a readable last checkpoint with epochs still to train."""
    from hardctl.distill import rundir

    last = run_dir / LAST_CHECKPOINT
    if not last.is_file():
        return False
    try:
        return int(rundir.load_checkpoint(last)["epoch"]) < epochs
    except (HardctlError, KeyError, TypeError, ValueError):
        return False  # damaged: train it again



def format_mean_sem(stat: dict[str, Any] | None, digits: int = 1) -> str:
    """``98.6 ± 0.1`` (or just the mean with one seed, ``-`` with none)."""
    if not stat or stat.get("mean") is None:
        return "-"
    if stat.get("sem") is None:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['sem']:.{digits}f}"


def format_delta(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:+.{digits}f}"


DEFAULT_LABELS = {
    "centered": "Centered", "imagenet-val": "Val", "imagenet-real": "ReaL", "imagenet-v2": "V2",
    "imagenet-a": "Im-A", "imagenet-r": "Im-R", "imagenet-c mCE": "Im-C mCE ↓", "imagenet-sketch": "Sketch",
    "stylized-imagenet": "Style", "cifar10": "CIFAR-10", "cifar10-shifted": "CIFAR-10 shifted",
    "cifar10-c mean acc (75 cells)": "CIFAR-10-C", "mnist-c/translate": "MNIST-C translate",
    "mnist-c mean acc (15 corruptions)": "MNIST-C",
}
SUMMARY_COLUMNS = ("centered", "shifted")  # what every trained run's summary.json holds


def _kd_reference(recipe: Recipe, arm_ids: list[str]) -> str | None:
    """The KD arm the other distill arms are compared with: ``[results] reference``, else the first
    distill arm without HARD and without any augmentation."""
    if recipe.results.reference is not None:
        return recipe.results.reference if recipe.results.reference in arm_ids else None
    for arm in recipe.arms:
        if arm.id not in arm_ids or recipe.is_eval(arm):
            continue
        cfg = recipe.config(arm, recipe.seeds[0])
        plain = (cfg.augment == "none" and not cfg.mixup and not cfg.cutmix and not cfg.random_erasing)
        if cfg.command == "distill" and cfg.augmentor.strip().lower() == "none" and plain:
            return arm.id
    return None


def _is_cell(key: str, saved: dict[str, Any]) -> bool:
    return key in saved.get("cells", ())


def _columns(recipe: Recipe, eval_keys: list[str], lower: set[str], cells: set[str]) -> list[dict[str, Any]]:
    """The table's columns: ``[results] columns``, else centered, shifted and the eval scores (no cells)."""
    keys = recipe.results.columns
    if keys is None:
        keys = [*SUMMARY_COLUMNS, *(k for k in eval_keys if k not in cells and " CE" not in k
                                   and not k.endswith(" relative mCE") and "extras" not in k)]
    out = []
    for key in keys:
        label = recipe.results.labels.get(key) or DEFAULT_LABELS.get(key) or key
        if key in lower and "↓" not in label:
            label += " ↓"
        out.append({"key": key, "label": label, "lower_is_better": key in lower})
    return out


@dataclass
class Seen:
    """What :func:`collect` gathers across every arm's runs: the table's columns and the run count."""

    shift_px: set = field(default_factory=set)
    eval_keys: dict = field(default_factory=dict)  # evaluation columns in first-seen order
    lower: set = field(default_factory=set)  # columns where lower is better (mCE)
    cells: set = field(default_factory=set)  # per-corruption cells, kept out of the summary columns
    finished: int = 0


def collect(recipe: Recipe, plan: list[PlannedRun], statuses: dict[Path, str], *, seeds: list[int],
            overrides: dict[str, str], out_dir: Path) -> dict[str, Any]:
    """results.json's content from the runs of ``plan`` that have a summary (eval arms: scores)."""
    order = [arm.id for arm in recipe.arms if any(p.arm.id == arm.id for p in plan)]
    seen = Seen()
    arms_out = [arm_record(recipe, [p for p in plan if p.arm.id == arm_id], statuses, seen) for arm_id in order]
    columns = _columns(recipe, list(seen.eval_keys), seen.lower, seen.cells)
    shift_px = sorted(px for px in seen.shift_px if px is not None)
    for column in columns:  # the shifted column's default label names the shift: "Shifted (±2 px)"
        if column["key"] == column["label"] == "shifted":
            column["label"] = shift_label({"shift_px": shift_px})
    for record in arms_out:
        cells_of = record.pop("_cells", {})
        record["columns"] = {c["key"]: (record[c["key"]] if c["key"] in SUMMARY_COLUMNS else
                                        record.get("eval", {}).get(c["key"], cells_of.get(c["key"], mean_sem([]))))
                             for c in columns}
    reference = _kd_reference(recipe, order)
    if reference is not None:
        add_vs_kd(arms_out, next(a for a in arms_out if a["id"] == reference))
    eval_info = None
    if recipe.eval is not None:
        eval_info = {"suites": recipe.eval.suites, "data_root": recipe.eval.data_root, "sets": recipe.eval.sets}
    return {
        "recipe": recipe.name, "kind": recipe.kind, "description": recipe.description, "paper": recipe.paper,
        "source": recipe.source, "seeds": seeds, "overrides": overrides, "out_dir": str(out_dir),
        "data": sorted({p.cfg.data for p in plan if not p.evaluate_only} or {p.cfg.data for p in plan}),
        "shift_px": shift_px,
        "kd_reference": reference, "command": reproduce_command(recipe, seeds, order, overrides, out_dir),
        "complete": seen.finished == len(plan), "columns": columns, "eval": eval_info,
        "runs_finished": seen.finished, "runs_planned": len(plan), "arms": arms_out,
        "code": code_version(),  # the code that wrote this table; each run's entry says which code trained it
    }


def arm_record(recipe: Recipe, planned: list[PlannedRun], statuses: dict[Path, str], seen: Seen) -> dict[str, Any]:
    """One arm's row: its finished runs and their mean ± s.e.m. (centered, shifted, teacher, HARD, eval)."""
    from hardctl.recipes.evaluation import load_scores

    arm, cfg = planned[0].arm, planned[0].cfg
    runs, centered, shifted, teacher_c, teacher_s = [], [], [], [], []
    hard: dict[str, list[float]] = {}
    scores: dict[str, list[float]] = {}
    for p in planned:
        if p.run_dir not in statuses:
            continue
        saved = load_scores(p.run_dir)
        entry = run_entry(p, statuses[p.run_dir], saved, seen)
        if entry is None:
            continue
        seen.finished += 1
        if entry["test_acc"] is not None:
            centered.append(entry["test_acc"])
        if entry["shifted_acc"] is not None:
            shifted.append(entry["shifted_acc"])
        if "teacher" in entry:
            teacher_c.append(entry["teacher"]["test_acc"])
            teacher_s.append(entry["teacher"]["shifted_acc"])
        for k, v in entry.get("hard", {}).items():
            hard.setdefault(k, []).append(float(v))
        if saved is not None and ((recipe.eval is not None and recipe.eval.suites) or p.evaluate_only):
            entry["eval"] = {k: v for k, v in saved["scores"].items()
                             if not _is_cell(k, saved) and k not in SUMMARY_COLUMNS}
            if saved.get("skipped"):
                entry["eval_skipped"] = sorted(saved["skipped"])
            for k, v in saved["scores"].items():
                if k in SUMMARY_COLUMNS:
                    continue
                seen.eval_keys.setdefault(k)
                scores.setdefault(k, []).append(float(v))
            seen.lower.update(saved.get("lower_is_better", ()))
            seen.cells.update(saved.get("cells", ()))
        runs.append(entry)
    record: dict[str, Any] = {
        "id": arm.id, "label": arm.label, "command": "eval" if planned[0].evaluate_only else cfg.command,
        "model": cfg.model,
        "teacher": arm.values.get("teacher", recipe.defaults.get("teacher")) if cfg.command == "distill" else None,
        "augment": cfg.augment, "augmentor": cfg.augmentor if cfg.command == "distill" else None,
        "runs": runs, "n": len(runs), "centered": mean_sem(centered), "shifted": mean_sem(shifted),
    }
    if planned[0].evaluate_only:
        record.update(teacher=None, augment=None)
    if teacher_c:
        record["teacher_acc"] = {"centered": mean_sem(teacher_c), "shifted": mean_sem(teacher_s)}
    if hard:
        record["hard"] = {k: statistics.fmean(v) for k, v in hard.items()}
    if scores:
        record["eval"] = {k: mean_sem(v) for k, v in scores.items() if k not in seen.cells}
        record["_cells"] = {k: mean_sem(v) for k, v in scores.items() if k in seen.cells}
    return record


def run_entry(p: PlannedRun, status: str, saved: dict | None, seen: Seen) -> dict[str, Any] | None:
    """One finished run's entry of results.json (``None`` while it has no summary or, eval arms, no scores)."""
    if p.evaluate_only:
        if saved is None:
            return None
        own = saved["scores"]
        return {"seed": None, "run_dir": str(p.run_dir), "status": status,
                "test_acc": own.get("centered"), "shifted_acc": own.get("shifted")}
    summary = read_summary(p.run_dir)
    if summary is None:
        return None
    seen.shift_px.add(summary.get("shift_px"))
    model = summary["student"]  # in a train run, "student" is the trained model
    entry = {"seed": p.seed, "run_dir": str(p.run_dir), "status": status,
             "test_acc": model["test_acc"], "shifted_acc": model["shifted_acc"], "code": summary.get("code")}
    if "teacher" in summary:
        entry["teacher"] = {k: summary["teacher"][k] for k in ("test_acc", "shifted_acc")}
    if isinstance(summary.get("hard"), dict):
        entry["hard"] = {k: summary["hard"][k] for k in ("switches", "pool_size", "aug_fraction")
                         if isinstance(summary["hard"].get(k), (int, float))}
    return entry


def add_vs_kd(arms_out: list[dict[str, Any]], ref: dict[str, Any]) -> None:
    """Each distillation arm's difference from the plain KD arm ``ref``, per column (``vs_kd``)."""
    for record in arms_out:
        if record["command"] == "distill" and record["id"] != ref["id"]:
            keys = list(dict.fromkeys([*SUMMARY_COLUMNS, *record["columns"]]))
            stats = {**record["columns"], **{k: record[k] for k in SUMMARY_COLUMNS}}
            ref_stats = {**ref["columns"], **{k: ref[k] for k in SUMMARY_COLUMNS}}
            record["vs_kd"] = {col: (stats[col]["mean"] - ref_stats[col]["mean"]
                                     if stats[col]["mean"] is not None and ref_stats[col]["mean"] is not None
                                     else None) for col in keys}


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


def table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The paper-layout table (header, rows): one row per arm, the chosen columns as mean ± s.e.m., the
    difference from the KD reference for the centered and shifted columns, and the number of runs."""
    columns = results.get("columns") or [{"key": k, "label": DEFAULT_LABELS.get(k, k)} for k in SUMMARY_COLUMNS]
    keys = [c["key"] for c in columns]
    deltas = [k for k in SUMMARY_COLUMNS if k in keys] if results.get("kd_reference") is not None else []
    # the shifted column's default label names the shift: "Shifted (±2 px)"
    labels = [shift_label(results) if c["key"] == c["label"] == "shifted" else c["label"] for c in columns]
    header = ["Method", *labels, *(f"Δ {k} vs KD" for k in deltas), "n"]
    rows = []
    for arm in results["arms"]:
        values = arm.get("columns") or {k: arm.get(k) for k in keys}
        row = [arm["label"]] + [format_mean_sem(values.get(k)) for k in keys]
        delta = arm.get("vs_kd", {})
        row += [format_delta(delta.get(k)) for k in deltas]
        row.append(str(arm.get("n", arm["centered"]["n"])))
        rows.append(row)
    return header, rows


def markdown(results: dict[str, Any]) -> str:
    """results.md: the paper's layout (rows = arms; the chosen columns as mean ± s.e.m.)."""
    lines = [f"# {results['recipe']}", ""]
    if results.get("description"):
        lines += [results["description"], ""]
    facts = [f"data {', '.join(results['data'])}", f"seeds {', '.join(map(str, results['seeds']))}"]
    if results.get("paper"):
        facts.insert(0, f"paper: {results['paper']}")
    if results.get("eval"):
        ev = results["eval"]
        where = f" under {ev['data_root']}" if ev.get("data_root") else ""
        facts.append(f"eval suites {', '.join(ev['suites']) or 'none'}{where}")
    if results.get("overrides"):
        facts.append("overrides " + " ".join(f"{k}={v}" for k, v in results["overrides"].items()))
    lines += ["; ".join(facts) + ".", ""]
    if results.get("command"):
        lines += [f"Command: `{results['command']}`", ""]
    trained_by = sorted({describe(run.get("code")) for arm in results["arms"] for run in arm.get("runs", [])})
    if results.get("code"):
        lines += [f"Written by {describe(results['code'])}"
                  + (f"; runs trained by {', '.join(trained_by)}" if trained_by else "") + ".", ""]
    if not results["complete"]:
        lines += [f"**Incomplete:** {results['runs_finished']} of {results['runs_planned']} runs finished.", ""]
    header, rows = table(results)
    with_delta = any(h.startswith("Δ ") for h in header)
    reference_label = next((a["label"] for a in results["arms"] if a["id"] == results.get("kd_reference")), "")
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lower = [c["label"] for c in results.get("columns") or [] if c.get("lower_is_better")]
    lines += ["", "Test accuracy in %, mean ± standard error of the mean over seeds"
              + (f" ({', '.join(lower)}: an error in %, lower is better)" if lower else "")
              + (f"; Δ: difference of the means from the {reference_label} row." if with_delta else ".")]
    skipped = sorted({name for arm in results["arms"] for run in arm["runs"] for name in run.get("eval_skipped", ())})
    if skipped:
        lines += ["", f"Evaluation sets not found (skipped, '-' in their columns): {', '.join(skipped)}; "
                  "point --set eval.data_root=DIR or --set eval.sets.NAME=DIR at them."]
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


