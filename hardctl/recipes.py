"""Recipes: one of the paper's tables as a TOML file of arms × seeds, run by one command.

A recipe file has three parts::

    [recipe]
    name = "transfer-digits"          # default: the file's stem
    kind = "transfer"                 # transfer (arms of train/distill runs) | toy (hardctl.toy)
    description = "CNN → MLP on digits, the paper's table 1 at CPU scale"
    paper = "Table 1 (CNN → MLP)"
    seeds = [0, 1, 2]

    [defaults]                        # RunConfig fields shared by every arm
    data = "digits"
    epochs = 30

    [[arm]]                           # one row of the table, in order
    id = "teacher"                    # its folder: OUT/<id>/seed-<n>
    label = "Teacher only"            # its row label
    command = "train"
    model = "mnist_cnn"

    [[arm]]
    id = "kd"
    label = "KD"
    command = "distill"
    teacher = "@teacher"              # that arm's run directory for the same seed
    model = "mnist_mlp"
    augmentor = "none"

Every arm key except ``id`` and ``label`` is a :class:`~hardctl.config.RunConfig` field that
overrides ``[defaults]``; ``seed`` is set per seed. :func:`run_recipe` trains the arms seed by seed
into ``OUT/<arm>/seed-<n>`` (reusing a finished run whose saved configuration is the same, so an
interrupted recipe continues where it stopped) and writes ``results.json``, ``results.md`` (the
paper's layout: rows = arms, columns centered and shifted test accuracy as mean ± s.e.m.) and the
resolved ``recipe.toml`` into ``OUT``.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import math
import re
import statistics
import sys
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import tomli_w

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from hardctl.atomic import atomic_path
from hardctl.config import RunConfig
from hardctl.errors import HardctlError, UsageError, did_you_mean

KINDS = ("transfer", "toy")
RECIPE_KEYS = ("name", "kind", "description", "paper", "seeds")
SECTIONS = {"transfer": ("recipe", "defaults", "arm"), "toy": ("recipe", "toy")}  # toy: settings in [toy]
ARM_OWN_KEYS = ("id", "label")
PER_SEED = "seed"  # set by the runner for every seed, never by a recipe
RUN_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(RunConfig) if f.name != PER_SEED)
FIELD_TYPES: dict[str, Any] = typing.get_type_hints(RunConfig)
IGNORED_FOR_REUSE = ("log_every",)  # how a run is watched, not what it computes
ARM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
RESULTS_JSON, RESULTS_MD, RESOLVED_RECIPE = "results.json", "results.md", "recipe.toml"


@dataclass
class Arm:
    """One row of a recipe's table: the RunConfig values that differ from ``[defaults]``."""

    id: str
    label: str
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def refs(self) -> list[str]:
        """The arms this one needs for the same seed (``teacher = "@ID"``)."""
        teacher = self.values.get("teacher")
        return [teacher[1:]] if isinstance(teacher, str) and teacher.startswith("@") else []


@dataclass
class Recipe:
    """A parsed and validated recipe. ``raw`` is the TOML document it came from (overrides applied)."""

    name: str
    kind: str
    description: str
    paper: str
    seeds: list[int]
    defaults: dict[str, Any]
    arms: list[Arm]
    source: str  # the file it was read from, or a description of where it came from
    raw: dict[str, Any] = field(default_factory=dict)

    def arm(self, arm_id: str) -> Arm:
        for arm in self.arms:
            if arm.id == arm_id:
                return arm
        ids = [a.id for a in self.arms]
        raise UsageError(f"recipe {self.name!r} has no arm {arm_id!r}{did_you_mean(arm_id, ids)}",
                         hint=f"its arms: {', '.join(ids)}")

    def config(self, arm: Arm, seed: int, run_dirs: dict[str, Path] | None = None) -> RunConfig:
        """The RunConfig of ``arm`` for ``seed``; ``run_dirs`` resolves ``@ID`` references."""
        values = {**self.defaults, **arm.values, PER_SEED: seed}
        values = {k: v for k, v in values.items() if v is not None}  # None: the field's own default
        for ref in arm.refs:
            values["teacher"] = str(run_dirs[ref]) if run_dirs is not None else f"@{ref}"
        try:
            return RunConfig.from_dict(values).validate()
        except UsageError as exc:
            raise UsageError(f"recipe {self.name!r}, arm {arm.id!r}: {exc.message}", hint=exc.hint) from None

    def to_toml(self) -> str:
        """The recipe as TOML (what ``recipe.toml`` in an output folder holds)."""
        raw = _without_none(self.raw)
        head = raw.setdefault("recipe", {})
        head.update(name=self.name, kind=self.kind)
        ordered = {"recipe": head, **{k: v for k, v in raw.items() if k != "recipe"}}
        return tomli_w.dumps(ordered)


# ---------------------------------------------------------------------------------------------- parsing
def _type_name(tp: Any) -> str:
    base = _base_type(tp)
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            dict: "a table"}.get(base, str(tp))


def _base_type(tp: Any) -> Any:
    """``int | None`` -> int, ``dict[str, Any]`` -> dict."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    return origin or tp


def _optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def check_value(key: str, value: Any, where: str) -> Any:
    """``value`` for RunConfig field ``key`` with the field's type (ints are accepted for floats)."""
    tp = FIELD_TYPES[key]
    base = _base_type(tp)
    if value is None and _optional(tp):
        return None
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
        dict: isinstance(value, dict),
    }.get(base, True)
    if not ok:
        raise UsageError(f"{where}: {key} must be {_type_name(tp)}, got {value!r}")
    return float(value) if base is float else value


def parse_value(key: str, text: str, where: str) -> Any:
    """A ``--set`` string for RunConfig field ``key``, converted to the field's type."""
    tp = FIELD_TYPES[key]
    base = _base_type(tp)
    stripped = text.strip()
    if _optional(tp) and stripped.lower() in ("none", "null", ""):
        return None
    try:
        if base is bool:
            words = {"true": True, "yes": True, "on": True, "1": True,
                     "false": False, "no": False, "off": False, "0": False}
            return words[stripped.lower()]
        if base is int:
            return int(stripped)
        if base is float:
            value = float(stripped)
            if not math.isfinite(value):
                raise ValueError(stripped)
            return value
        if base is dict:
            value = tomllib.loads(f"value = {stripped}")["value"]
            if not isinstance(value, dict):
                raise ValueError(stripped)
            return value
    except (KeyError, ValueError, tomllib.TOMLDecodeError):
        example = {dict: " such as {sigma = 0.1}"}.get(base, "")
        raise UsageError(f"{where}: {key} takes {_type_name(tp)}{example}, got {text!r}") from None
    return text


def _table(raw: Any, what: str, source: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise UsageError(f"recipe {source}: {what} must be a table, got {type(raw).__name__}")
    return raw


def _check_keys(table: dict[str, Any], allowed: Iterable[str], what: str, source: str) -> None:
    allowed = list(allowed)
    for key in table:
        if key not in allowed:
            hint_names = ", ".join(allowed) if len(allowed) <= 8 else "the fields of hardctl.config.RunConfig"
            raise UsageError(f"recipe {source}: unknown key {key!r} in {what}{did_you_mean(key, allowed)}",
                             hint=f"allowed: {hint_names}")


def parse_recipe(raw: dict[str, Any], source: str, default_name: str = "recipe") -> Recipe:
    """Validate a recipe document (already read from TOML) and return it as a :class:`Recipe`."""
    head = _table(raw.get("recipe", {}), "[recipe]", source)
    _check_keys(head, RECIPE_KEYS, "[recipe]", source)
    name = head.get("name", default_name)
    kind = head.get("kind", "transfer")
    for key in ("name", "kind", "description", "paper"):
        if key in head and not isinstance(head[key], str):
            raise UsageError(f"recipe {source}: [recipe] {key} must be a string, got {head[key]!r}")
    if kind not in KINDS:
        raise UsageError(f"recipe {source}: unknown kind {kind!r}{did_you_mean(kind, KINDS)}",
                         hint=f"kinds: {', '.join(KINDS)}")
    _check_keys(raw, SECTIONS[kind], f"a {kind} recipe (sections)", source)
    seeds = head.get("seeds", [0])
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
        raise UsageError(f"recipe {source}: [recipe] seeds must be a non-empty list of integers >= 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"recipe {source}: [recipe] seeds lists a seed twice: {seeds}")
    if kind == "toy":  # hardctl.toy owns the [toy] settings and the arms
        return _parse_toy(raw, source, name=name, head=head, seeds=seeds)
    defaults = dict(_table(raw.get("defaults", {}), "[defaults]", source))
    raw_arms = raw.get("arm", [])
    if not isinstance(raw_arms, list) or not raw_arms:
        raise UsageError(f"recipe {source}: no [[arm]] tables", hint="a recipe needs at least one arm")
    arms: list[Arm] = []
    for number, raw_arm in enumerate(raw_arms, 1):
        table = dict(_table(raw_arm, f"[[arm]] number {number}", source))
        arm_id = table.pop("id", None)
        if not isinstance(arm_id, str) or not ARM_ID.match(arm_id):
            raise UsageError(f"recipe {source}: [[arm]] number {number} needs an id of letters, digits, '-' "
                             f"and '_', got {arm_id!r}")
        if any(a.id == arm_id for a in arms):
            raise UsageError(f"recipe {source}: two arms have the id {arm_id!r}")
        label = table.pop("label", arm_id)
        if not isinstance(label, str):
            raise UsageError(f"recipe {source}: arm {arm_id!r}: label must be a string, got {label!r}")
        arms.append(Arm(arm_id, label, table))
    recipe = Recipe(name=name, kind=kind, description=head.get("description", ""), paper=head.get("paper", ""),
                    seeds=list(seeds), defaults=defaults, arms=arms, source=source, raw=copy.deepcopy(raw))
    _validate_transfer(recipe)
    return recipe


def _toy_module():
    """:mod:`hardctl.toy`, or None where this hardctl has none."""
    try:
        from hardctl import toy
    except ModuleNotFoundError as exc:
        if exc.name != "hardctl.toy":
            raise
        return None
    return toy


def _parse_toy(raw: dict[str, Any], source: str, *, name: str, head: dict[str, Any], seeds: list[int]) -> Recipe:
    """A ``kind = "toy"`` recipe: ``[toy]`` holds :class:`hardctl.toy.ToySettings` values, checked here."""
    settings = dict(_table(raw.get("toy", {}), "[toy]", source))
    toy = _toy_module()
    arms: list[Arm] = []
    if toy is not None:
        try:
            toy.settings_from(settings, where="[toy] setting")
        except UsageError as exc:
            raise UsageError(f"recipe {source}: {exc.message}", hint=exc.hint) from None
        arms = [Arm(a, toy.ARM_TITLES.get(a, a)) for a in toy.ARMS]
    return Recipe(name=name, kind="toy", description=head.get("description", ""), paper=head.get("paper", ""),
                  seeds=list(seeds), defaults=settings, arms=arms, source=source, raw=copy.deepcopy(raw))


def _validate_transfer(recipe: Recipe) -> None:
    source = recipe.source
    if PER_SEED in recipe.defaults:
        raise UsageError(f"recipe {source}: [defaults] sets seed", hint="seeds come from [recipe] seeds or --seeds")
    _check_keys(recipe.defaults, RUN_FIELDS, "[defaults]", source)
    for key, value in recipe.defaults.items():
        recipe.defaults[key] = check_value(key, value, f"recipe {source}, [defaults]")
    seen: list[str] = []
    for arm in recipe.arms:
        if PER_SEED in arm.values:
            raise UsageError(f"recipe {source}: arm {arm.id!r} sets seed",
                             hint="seeds come from [recipe] seeds or --seeds")
        _check_keys(arm.values, (*ARM_OWN_KEYS, *RUN_FIELDS), f"arm {arm.id!r}", source)
        for key, value in arm.values.items():
            arm.values[key] = check_value(key, value, f"recipe {source}, arm {arm.id!r}")
        for ref in arm.refs:
            if ref not in seen:
                ids = [a.id for a in recipe.arms]
                where = "a later arm" if ref in ids else f"no arm{did_you_mean(ref, ids)}"
                raise UsageError(f"recipe {source}: arm {arm.id!r} takes its teacher from '@{ref}', which is {where}",
                                 hint=f"'@ID' must name an arm listed before it: {', '.join(seen) or 'none'}")
        cfg = recipe.config(arm, recipe.seeds[0])
        if cfg.augment != "none":
            from hardctl.data.transforms import TRANSFORM_NAMES

            if cfg.augment.strip().lower() not in TRANSFORM_NAMES:
                raise UsageError(f"recipe {source}, arm {arm.id!r}: unknown augment {cfg.augment!r}"
                                 f"{did_you_mean(cfg.augment, TRANSFORM_NAMES)}",
                                 hint=f"known: {', '.join(TRANSFORM_NAMES)}")
        seen.append(arm.id)


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"recipe file {path} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"recipe {path} is a folder, not a TOML file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot parse recipe {path}: {exc}") from None


def recipe_path(name_or_path: str | Path) -> Path:
    """The file of a registered recipe name, or ``name_or_path`` itself when it is a path."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.exists() or text.endswith(".toml") or "/" in text or "\\" in text:
        return path
    from hardctl import plugins

    try:
        return Path(plugins.recipes.get(text).obj)
    except UsageError as exc:
        raise UsageError(exc.message, hint=f"{exc.hint}; or pass a recipe file path") from None


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A registered recipe (``hardctl recipes``) by name, or a recipe TOML file by path, validated."""
    path = recipe_path(name_or_path)
    return parse_recipe(read_toml(path), str(path), default_name=path.stem)


def describe_file(path: str | Path) -> str:
    """The one-line description of a recipe file ("" when the file cannot be read)."""
    try:
        head = tomllib.loads(Path(path).read_text(encoding="utf-8")).get("recipe", {})
        text = head.get("description", "") if isinstance(head, dict) else ""
        return text.strip().splitlines()[0] if isinstance(text, str) and text.strip() else ""
    except Exception:  # a broken file must not break listing
        return ""


# ---------------------------------------------------------------------------------------------- overrides
def apply_overrides(recipe: Recipe, overrides: dict[str, str] | Iterable[str]) -> Recipe:
    """A new recipe with ``KEY=VALUE`` (``[defaults]``) and ``ARM_ID.KEY=VALUE`` (one arm) applied.

    Values are converted to the RunConfig field's type; ``none`` unsets an optional field.
    """
    pairs = parse_overrides(overrides) if not isinstance(overrides, dict) else dict(overrides)
    if not pairs:
        return recipe
    if recipe.kind != "transfer":
        raise UsageError(f"recipe {recipe.name!r} is a {recipe.kind} recipe; its overrides go to hardctl.{recipe.kind}")
    raw = copy.deepcopy(recipe.raw)
    defaults = raw.setdefault("defaults", {})
    arm_tables = {table["id"]: table for table in raw["arm"]}
    for key, text in pairs.items():
        arm_id, dot, name = key.rpartition(".")
        where = f"--set {key}={text}"
        if dot and arm_id not in arm_tables:
            ids = list(arm_tables)
            raise UsageError(f"{where}: recipe {recipe.name!r} has no arm {arm_id!r}{did_you_mean(arm_id, ids)}",
                             hint=f"its arms: {', '.join(ids)}")
        name = name.strip().replace("-", "_")
        if name == PER_SEED:
            raise UsageError(f"{where}: the seed is set per seed", hint="use --seeds")
        if name in ARM_OWN_KEYS and dot:
            if name == "id":
                raise UsageError(f"{where}: an arm's id cannot be overridden")
            arm_tables[arm_id][name] = text
            continue
        if name not in RUN_FIELDS:
            raise UsageError(f"{where}: unknown setting {name!r}{did_you_mean(name, RUN_FIELDS)}",
                             hint="settings are the fields of hardctl.config.RunConfig (the options of train/distill)")
        target = arm_tables[arm_id] if dot else defaults
        value = parse_value(name, text, where)
        if value is None and not dot:
            # unset in [defaults] and in every arm, so that the field's own default applies
            defaults.pop(name, None)
            for table in arm_tables.values():
                table.pop(name, None)
        else:
            target[name] = value  # None in an arm: unset for that arm only
    resolved = parse_recipe(raw, recipe.source, default_name=recipe.name)
    resolved.raw.setdefault("recipe", {})["name"] = recipe.name
    return resolved


def parse_overrides(items: Iterable[str]) -> dict[str, str]:
    """``["lr=0.01", "kd.epochs=3"]`` -> ``{"lr": "0.01", "kd.epochs": "3"}`` (later ones win)."""
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set {item!r} is not KEY=VALUE", hint="e.g. --set epochs=5 or --set kd.lr=0.01")
        pairs[key.strip()] = value
    return pairs


def _without_none(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` as TOML can hold it: an arm's explicit ``None`` (unset) cannot be written as such, so a
    default that an arm unsets moves down into the arms that keep it."""
    raw = copy.deepcopy(raw)
    defaults = raw.get("defaults", {})
    arms = raw.get("arm", [])
    for key in {k for table in arms for k, v in table.items() if v is None}:
        if key in defaults:
            value = defaults.pop(key)
            for table in arms:
                table.setdefault(key, value)
    for table in [defaults, *arms]:
        for key in [k for k, v in table.items() if v is None]:
            del table[key]
    return raw


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
    toy = _toy_module()
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


def run_recipe(recipe: Recipe | str | Path, out_dir: str | Path, *, seeds: Iterable[int] | None = None,
               arms: Iterable[str] | None = None, overrides: dict[str, str] | None = None, reuse: bool = True,
               progress=None) -> dict[str, Any]:
    """Run ``recipe``'s arms × seeds into ``out_dir`` and return (and write) the results.

    ``progress`` is a :class:`hardctl.distill.progress.Reporter` (silent by default): it gets one line
    per run and every run's training progress. With ``reuse``, a run whose ``summary.json`` exists and
    whose ``config.toml`` equals the planned configuration is not trained again (and one that stopped
    midway is resumed from its last checkpoint); without it, every run starts afresh.
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

    if recipe.kind == "toy":
        return _run_toy(recipe, out_dir, seeds=seeds, overrides=overrides,
                        arms=list(arms) if arms is not None else None, reuse=reuse, progress=reporter)

    recipe = apply_overrides(recipe, overrides)
    arm_ids = _select_arms(recipe, arms, reporter.log)
    plan: list[PlannedRun] = []
    for seed in seeds:  # seed by seed: an interrupted recipe leaves whole seeds behind
        run_dirs = {arm_id: out_dir / arm_id / f"seed-{seed}" for arm_id in arm_ids}
        for arm_id in arm_ids:
            arm = recipe.arm(arm_id)
            cfg = recipe.config(arm, seed, run_dirs)
            try:
                cfg = cfg.resolve_hard()
            except UsageError as exc:
                raise UsageError(f"recipe {recipe.name!r}, arm {arm_id!r}: {exc.message}", hint=exc.hint) from None
            plan.append(PlannedRun(arm, seed, run_dirs[arm_id], cfg))

    from hardctl.distill.trainer import run as train_run

    out_dir.mkdir(parents=True, exist_ok=True)
    statuses: dict[Path, str] = {}
    done_at: dict[Path, float] = {}  # when each run's summary was written (to never reuse over a newer teacher)
    for number, p in enumerate(plan, 1):
        tag = f"[{number}/{len(plan)}] {p.arm.label} ({p.arm.id}), seed {p.seed}"
        deps = [p.run_dir.parent.parent / ref / f"seed-{p.seed}" for ref in p.arm.refs]
        summary_file = p.run_dir / "summary.json"
        matches = reuse and p.run_dir.is_dir() and saved_config_matches(p.run_dir, p.cfg)
        newest_dep = max((done_at.get(d, 0.0) for d in deps), default=0.0)
        if matches and summary_file.is_file() and summary_file.stat().st_mtime >= newest_dep and _summary(p.run_dir):
            status = "reused"
            reporter.log(f"{tag}: finished before, reusing {p.run_dir}")
        else:
            resume = matches and not summary_file.is_file() and _resumable(p.run_dir, p.cfg.epochs)
            if resume:
                status = "resumed"
                reporter.log(f"{tag}: resuming the interrupted run in {p.run_dir}")
            else:
                status = "trained"
                why = "" if not p.run_dir.exists() or not any(p.run_dir.iterdir()) else (
                    " (replacing it: --no-reuse)" if not reuse else
                    " (replacing it: its configuration changed)" if not matches else
                    " (replacing it: its teacher was retrained)" if summary_file.is_file() else
                    " (replacing an unfinished run that cannot be resumed)")
                reporter.log(f"{tag}: training into {p.run_dir}{why}")
            started = time.perf_counter()
            try:
                train_run(p.cfg, p.run_dir, resume=resume, force=not resume, reporter=reporter)
            except HardctlError as exc:
                raise type(exc)(f"{p.arm.id} seed {p.seed}: {exc.message}", hint=exc.hint) from exc
            reporter.log(f"{tag}: done in {time.perf_counter() - started:.0f}s")
        statuses[p.run_dir] = status
        done_at[p.run_dir] = summary_file.stat().st_mtime
        write_results(out_dir, collect(recipe, plan, statuses, seeds=seeds, overrides=overrides, out_dir=out_dir),
                      recipe)
    results = collect(recipe, plan, statuses, seeds=seeds, overrides=overrides, out_dir=out_dir)
    files = write_results(out_dir, results, recipe)
    results["files"] = {k: str(v) for k, v in files.items()}
    return results


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
