"""Running a recipe: arms × seeds into OUT/<arm>/seed-<n>, reusing finished runs, then the results."""

from __future__ import annotations

import copy
import inspect
import os
import time
from pathlib import Path
from typing import Any, Iterable

from hardctl.dirlock import locked_folder
from hardctl.errors import DataError, HardctlError, UsageError
from hardctl.runfiles import SUMMARY_FILE
from hardctl.recipes.results import (PlannedRun, resumable, read_summary, collect, commit_note, format_delta,
                                     format_mean_sem, markdown, version_problem, mean_sem, reproduce_command, saved_config_matches, shift_label,
                                     write_results)
from hardctl.recipes.overrides import apply_overrides, parse_overrides
from hardctl.recipes.sections import EvalSpec
from hardctl.recipes.spec import KINDS, Arm, Recipe, toy_module, describe_file, load_recipe, parse_recipe, recipe_path
from hardctl.recipes.spec import RESOLVED_RECIPE, RESULTS_JSON, RESULTS_MD


def _main_rank() -> bool:
    """Whether this process writes the recipe's files: always, but under torchrun only rank 0 (every rank runs
    the recipe's runs together, one at a time; a lock or a results file per rank would collide)."""
    return int(os.environ.get("RANK", 0)) == 0


def _select_arms(recipe: Recipe, arms: Iterable[str] | None, log) -> list[str]:
    """The arm ids to run, in recipe order, with the arms they reference added."""
    if arms is None:
        return [a.id for a in recipe.arms]
    wanted = [a.strip() for a in arms if a.strip()]
    if not wanted:
        raise UsageError("--arms names no arm", hint=f"its arms: {', '.join(a.id for a in recipe.arms)}")
    chosen = {recipe.arm(a).id for a in wanted}
    changed = True
    while changed:
        changed = False
        for arm_id in list(chosen):
            for ref in recipe.arm(arm_id).refs:
                if ref not in chosen:
                    chosen.add(ref)
                    changed = True
                    log(f"arm {arm_id!r} needs arm {ref!r} (its teacher): running it too")
    return [a.id for a in recipe.arms if a.id in chosen]


def _run_toy(recipe: Recipe, out_dir: Path, *, seeds: list[int], overrides: dict[str, str],
             arms: list[str] | None, reuse: bool, progress) -> dict[str, Any]:
    """Hand a toy recipe to :func:`hardctl.toy.run_recipe` (with the options it takes)."""
    toy = toy_module()
    if toy is None:
        raise UsageError(f"recipe {recipe.name!r} is a toy recipe, and this hardctl has no hardctl.toy")
    accepted = inspect.signature(toy.run_recipe).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    extra: dict[str, Any] = {}
    log = progress.log if progress is not None else None  # the toy reports lines through a callable
    for key, value, unsupported in (("arms", arms, arms is not None), ("reuse", reuse, not reuse),
                                    ("progress", log, False)):
        if takes_all or key in accepted:
            extra[key] = value
        elif unsupported:
            option = {"arms": "--arms", "reuse": "--no-reuse"}[key]
            raise UsageError(f"{option} is not supported for toy recipes")
    return toy.run_recipe(copy.deepcopy(recipe.raw), out_dir, seeds=seeds, overrides=overrides, **extra)


def _with_recipe_hint(exc: DataError, cfg_data: str) -> DataError:
    """A data error of a recipe's run, its hint pointing at ``--set data=...`` instead of ``--data``."""
    name = cfg_data.partition(":")[0].strip() or cfg_data
    hint = exc.hint or ""
    if "--data " in hint:
        hint = hint.replace("--data ", "--set data=")
    else:
        hint = f"{hint}; " if hint else ""
        hint += f"this recipe reads data = {cfg_data!r}: --set data={name}:DIR"
    return DataError(exc.message, hint=hint)


def _plan(recipe: Recipe, arm_ids: list[str], seeds: list[int], out_dir: Path) -> list[PlannedRun]:
    from hardctl.distill.build import resolve_config

    plan: list[PlannedRun] = []
    for index, seed in enumerate(seeds):  # seed by seed: an interrupted recipe leaves whole seeds behind
        run_dirs = {arm_id: out_dir / arm_id / f"seed-{seed}" for arm_id in arm_ids}
        for arm_id in arm_ids:
            arm = recipe.arm(arm_id)
            if recipe.is_eval(arm):  # scores a fixed model: once, whatever the seeds
                if index == 0:
                    plan.append(PlannedRun(arm, None, out_dir / arm_id, recipe.config(arm, seed), evaluate_only=True))
                continue
            cfg = recipe.config(arm, seed, run_dirs)
            try:
                cfg = resolve_config(cfg)
            except UsageError as exc:
                raise UsageError(f"recipe {recipe.name!r}, arm {arm_id!r}: {exc.message}", hint=exc.hint) from None
            plan.append(PlannedRun(arm, seed, run_dirs[arm_id], cfg))
    return plan


def _reusable(p: PlannedRun, reuse: bool) -> bool:
    if not (reuse and p.run_dir.is_dir() and saved_config_matches(p.run_dir, p.cfg)
            and (p.run_dir / SUMMARY_FILE).is_file()):
        return False
    summary = read_summary(p.run_dir)
    return summary is not None and version_problem(summary) is None


def _check_data(plan: list[PlannedRun], reuse: bool) -> None:
    """Read each data set that a run still to be trained needs, so that a missing one stops the recipe
    before anything runs (an eval arm may come first and take long)."""
    from hardctl.data import build_datasets

    specs = dict.fromkeys(p.cfg.data for p in plan if not p.evaluate_only and not _reusable(p, reuse))
    for spec in specs:
        try:
            build_datasets(spec)
        except DataError as exc:
            raise _with_recipe_hint(exc, spec) from None


def run_recipe(recipe: Recipe | str | Path, out_dir: str | Path, *, seeds: Iterable[int] | None = None,
               arms: Iterable[str] | None = None, overrides: dict[str, str] | None = None, reuse: bool = True,
               progress=None) -> dict[str, Any]:
    """Run ``recipe``'s arms × seeds into ``out_dir`` and return (and write) the results.

    ``progress`` is a :class:`hardctl.distill.progress.Reporter` (silent by default): it gets one line
    per run and every run's training progress. With ``reuse``, a run whose ``summary.json`` exists and
    whose ``config.toml`` equals the planned configuration is not trained again (and one that stopped
    midway is resumed from its last checkpoint); without it, every run starts afresh. With an ``[eval]``
    section every finished run is then scored on its suites (scores saved in the run's ``eval.json`` and
    reused likewise); an eval arm (``command = "eval"``) trains nothing and scores its teacher once.
    """
    from hardctl.distill.progress import Reporter

    reporter = progress if progress is not None else Reporter()
    overrides = dict(overrides or {})
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    seeds = list(recipe.seeds if seeds is None else seeds)
    if not seeds or any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in seeds):
        raise UsageError(f"--seeds must list integers >= 0, got {seeds}")
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds lists a seed twice: {seeds}")
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} exists and is not a folder", hint="pick another --out")
    if not _main_rank():  # rank 0 holds the lock for the whole job
        return _run_locked(recipe, out_dir, seeds=seeds, arms=arms, overrides=overrides, reuse=reuse,
                           reporter=reporter)
    with locked_folder(out_dir):  # one `recipes run` per --out: a second one is refused (exit 2)
        return _run_locked(recipe, out_dir, seeds=seeds, arms=arms, overrides=overrides, reuse=reuse,
                           reporter=reporter)


def _run_locked(recipe: Recipe, out_dir: Path, *, seeds: list[int], arms: Iterable[str] | None,
                overrides: dict[str, str], reuse: bool, reporter) -> dict[str, Any]:
    """:func:`run_recipe` once it holds the lock on ``out_dir``: plan, check, then run each planned run."""
    if recipe.kind == "toy":
        return _run_toy(recipe, out_dir, seeds=seeds, overrides=overrides,
                        arms=list(arms) if arms is not None else None, reuse=reuse, progress=reporter)
    recipe = apply_overrides(recipe, overrides)
    plan = _plan(recipe, _select_arms(recipe, arms, reporter.log), seeds, out_dir)
    runs = RecipeRuns(recipe, plan, out_dir, seeds=seeds, overrides=overrides, reuse=reuse, reporter=reporter)
    runs.check()
    out_dir.mkdir(parents=True, exist_ok=True)
    for number, p in enumerate(plan, 1):
        if p.evaluate_only:
            runs.evaluate_only(p, f"[{number}/{len(plan)}] {p.arm.label} ({p.arm.id})")
        else:
            runs.train(p, f"[{number}/{len(plan)}] {p.arm.label} ({p.arm.id}), seed {p.seed}")
        runs.write()  # the table so far: an interrupted recipe leaves its finished rows behind
    results = runs.collect()
    results["files"] = {k: str(v) for k, v in runs.write().items()}
    return results


class RecipeRuns:
    """The planned runs of one recipe and what happened to each (trained, resumed, reused, evaluated)."""

    def __init__(self, recipe: Recipe, plan: list[PlannedRun], out_dir: Path, *, seeds: list[int],
                 overrides: dict[str, str], reuse: bool, reporter):
        self.recipe, self.plan, self.out_dir, self.seeds = recipe, plan, out_dir, seeds
        self.overrides, self.reuse, self.reporter = overrides, reuse, reporter
        self.columns = list(recipe.results.columns or ["centered", "shifted"])
        self.statuses: dict[Path, str] = {}
        self.done_at: dict[Path, float] = {}  # when each run's summary was written (never reuse over a newer teacher)

    def check(self) -> None:
        """Everything that can fail on bad input, before the first run: weights, data, what scores eval arms."""
        from hardctl.recipes import evaluation

        recipe, plan = self.recipe, self.plan
        specs = [(p.arm.id, "model" if not p.evaluate_only else "teacher", p.cfg.model) for p in plan]
        specs += [(p.arm.id, "teacher", p.cfg.teacher) for p in plan if p.cfg.command == "distill"
                  and not p.evaluate_only and p.cfg.teacher and not p.arm.refs]
        evaluation.check_weights(recipe, specs)
        _check_data(plan, self.reuse)
        # a VAE augmentor's file (aug_options weights), once the data are there: it concerns a few arms only
        evaluation.check_weights(recipe, [(p.arm.id, "augmentor", v) for p in plan if p.cfg.uses_hard for k, v in
                                          p.cfg.aug_options.items() if k.rpartition(".")[2] == "weights"
                                          and isinstance(v, str)])  # weights, or PART.weights in a composition
        for p in plan:
            if p.evaluate_only and not evaluation.suites_for(recipe, eval_arm=True, columns=self.columns):
                raise UsageError(f"recipe {recipe.name!r}: arm {p.arm.id!r} only evaluates, but nothing would score it",
                                 hint="give the recipe [eval] suites, or show the centered/shifted columns")
        if plan:
            evaluation.preview(recipe, plan[0].cfg, evaluation.suites_for(recipe, eval_arm=False, columns=self.columns),
                               self.reporter.log)

    def evaluate_only(self, p: PlannedRun, tag: str) -> None:
        """An arm that scores a fixed model (an external teacher): no training."""
        from hardctl.recipes import evaluation

        self.reporter.log(f"{tag}: evaluating {p.cfg.model} (no training)")
        weights = evaluation.weights_file(p.cfg.model)
        newer_than = weights.stat().st_mtime if weights is not None else 0.0
        self.statuses[p.run_dir] = self.score(p, tag, newer_than) or "evaluated"

    def train(self, p: PlannedRun, tag: str) -> None:
        """Reuse a finished run of the same configuration, resume an interrupted one, or train it; then score it."""
        from hardctl.distill.run import run as train_run

        deps = [p.run_dir.parent.parent / ref / f"seed-{p.seed}" for ref in p.arm.refs]
        summary_file = p.run_dir / SUMMARY_FILE
        matches = self.reuse and p.run_dir.is_dir() and saved_config_matches(p.run_dir, p.cfg)
        newest_dep = max((self.done_at.get(d, 0.0) for d in deps), default=0.0)
        summary = read_summary(p.run_dir) if matches and summary_file.is_file() else None
        stale = version_problem(summary) if summary else None
        if summary and not stale and summary_file.stat().st_mtime >= newest_dep:
            status = "reused"
            note = commit_note(summary)
            self.reporter.log(f"{tag}: finished before, reusing {p.run_dir}" + (f" ({note})" if note else ""))
        else:
            resume = matches and not summary_file.is_file() and resumable(p.run_dir, p.cfg.epochs)
            status = "resumed" if resume else "trained"
            if resume:
                self.reporter.log(f"{tag}: resuming the interrupted run in {p.run_dir}")
            else:
                why = "" if not p.run_dir.exists() or not any(p.run_dir.iterdir()) else (
                    " (replacing it: --no-reuse)" if not self.reuse else
                    " (replacing it: its configuration changed)" if not matches else
                    f" (replacing it: {stale})" if stale else
                    " (replacing it: its teacher was retrained)" if summary_file.is_file() else
                    " (replacing an unfinished run that cannot be resumed)")
                self.reporter.log(f"{tag}: training into {p.run_dir}{why}")
            started = time.perf_counter()
            from hardctl import distributed

            distributed.setup(p.cfg.device)  # under torchrun: every rank has read the run's state before rank 0
            distributed.barrier()  # replaces or resumes it (a no-op in one process)
            try:
                train_run(p.cfg, p.run_dir, resume=resume, force=not resume, reporter=self.reporter)
            except DataError as exc:
                raise _with_recipe_hint(DataError(f"{p.arm.id} seed {p.seed}: {exc.message}", hint=exc.hint),
                                        p.cfg.data) from exc
            except HardctlError as exc:
                raise type(exc)(f"{p.arm.id} seed {p.seed}: {exc.message}", hint=exc.hint) from exc
            self.reporter.log(f"{tag}: done in {time.perf_counter() - started:.0f}s")
        self.statuses[p.run_dir] = status
        self.done_at[p.run_dir] = summary_file.stat().st_mtime
        self.score(p, tag, self.done_at[p.run_dir])

    def score(self, p: PlannedRun, tag: str, newer_than: float) -> str | None:
        """The recipe's [eval] suites on this run's model (reused when scored after ``newer_than``)."""
        from hardctl.recipes import evaluation

        suites = evaluation.suites_for(self.recipe, eval_arm=p.evaluate_only, columns=self.columns)
        if not suites:
            return None
        model = p.cfg.model if p.evaluate_only else str(p.run_dir)
        started = time.perf_counter()
        try:
            _, status = evaluation.evaluate_model(model, p.cfg, suites, self.recipe.eval or EvalSpec(), p.run_dir,
                                                  shifted="shifted" in self.columns and p.evaluate_only,
                                                  reuse=self.reuse, newer_than=newer_than, log=self.reporter.log)
        except HardctlError as exc:
            raise evaluation.describe_error(exc, p.arm.id if p.seed is None else f"{p.arm.id} seed {p.seed}") from exc
        if status == "reused":
            self.reporter.log(f"{tag}: scored before on {', '.join(suites)}, reusing {p.run_dir / evaluation.EVAL_FILE}")
        else:
            self.reporter.log(f"{tag}: scored on {', '.join(suites)} in {time.perf_counter() - started:.0f}s")
        return status

    def collect(self) -> dict[str, Any]:
        return collect(self.recipe, self.plan, self.statuses, seeds=self.seeds, overrides=self.overrides,
                       out_dir=self.out_dir)

    def write(self) -> dict[str, Path]:
        if not _main_rank():
            return {"json": self.out_dir / RESULTS_JSON, "markdown": self.out_dir / RESULTS_MD,
                    "recipe": self.out_dir / RESOLVED_RECIPE}
        return write_results(self.out_dir, self.collect(), self.recipe)


def list_recipes() -> list[dict[str, Any]]:
    """Every registered recipe: name, kind, description, arms, seeds, file (and an error if it is broken)."""
    from hardctl import plugins

    rows = []
    for entry in plugins.recipes:
        row: dict[str, Any] = {"name": entry.name, "plugin": entry.plugin, "path": str(entry.obj),
                               "description": entry.help}
        try:
            recipe = load_recipe(Path(entry.obj))
            row.update(kind=recipe.kind, description=recipe.description, paper=recipe.paper,
                       arms=[a.id for a in recipe.arms], seeds=recipe.seeds, error=None)
        except HardctlError as exc:
            row.update(kind=None, paper="", arms=[], seeds=[], error=exc.oneline())
        rows.append(row)
    return rows


__all__ = ["KINDS", "Arm", "Recipe", "load_recipe", "parse_recipe", "describe_file", "apply_overrides",
           "parse_overrides", "run_recipe", "list_recipes", "markdown", "format_mean_sem", "recipe_path",
           "saved_config_matches", "mean_sem", "format_delta", "shift_label", "reproduce_command"]

