"""Recipe files: the :class:`Recipe` and :class:`Arm` model, reading and validating a recipe TOML.

:func:`parse_recipe` checks ``[recipe]``, ``[defaults]`` and the ``[[arm]]`` tables (RunConfig field
names and types, ``@ID`` references); the ``[eval]`` and ``[results]`` sections are parsed in
:mod:`hardctl.recipes.sections` and ``--set`` overrides are applied in :mod:`hardctl.recipes.overrides`
(see :mod:`hardctl.recipes` for the format).
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from hardctl import tomlio, values
from hardctl.config import FIELD_TYPES, RunConfig
from hardctl.errors import UsageError, did_you_mean
from hardctl.recipes.sections import EvalSpec, ResultsSpec, check_keys, parse_eval, parse_results, check_table

KINDS = ("transfer", "toy")
RECIPE_KEYS = ("name", "kind", "description", "paper", "seeds", "teacher_download", "augmentor_download")
SECTIONS = {"transfer": ("recipe", "defaults", "arm", "eval", "results"),
            "toy": ("recipe", "toy")}  # toy: settings in [toy]
EVAL_COMMAND = "eval"  # an arm that trains nothing: it scores its ``teacher`` (a model that exists)
RESERVED_IDS = ("eval", "results")  # --set eval.KEY / results.KEY address these sections, not arms
ARM_OWN_KEYS = ("id", "label")
PER_SEED = "seed"  # set by the runner for every seed, never by a recipe
RUN_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(RunConfig) if f.name != PER_SEED)
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
    eval: EvalSpec | None = None
    results: ResultsSpec = field(default_factory=ResultsSpec)
    teacher_download: str = ""  # where a teacher weights file comes from (named when the file is missing)
    augmentor_download: str = ""  # where an augmentor's weights file (aug_options weights) comes from, likewise

    def is_eval(self, arm: Arm) -> bool:
        """Whether ``arm`` only scores a model (``command = "eval"``) instead of training one."""
        return {**self.defaults, **arm.values}.get("command") == EVAL_COMMAND

    def arm(self, arm_id: str) -> Arm:
        for arm in self.arms:
            if arm.id == arm_id:
                return arm
        ids = [a.id for a in self.arms]
        raise UsageError(f"recipe {self.name!r} has no arm {arm_id!r}{did_you_mean(arm_id, ids)}",
                         hint=f"its arms: {', '.join(ids)}")

    def config(self, arm: Arm, seed: int, run_dirs: dict[str, Path] | None = None) -> RunConfig:
        """The RunConfig of ``arm`` for ``seed``; ``run_dirs`` resolves ``@ID`` references.

        An eval arm (``command = "eval"``) gets the config of the model it scores: ``model`` is its
        ``teacher`` (``command`` reads ``train``, so that the data, device and ``pretrained`` settings apply).
        """
        values = {**self.defaults, **arm.values, PER_SEED: seed}
        values = {k: v for k, v in values.items() if v is not None}  # None: the field's own default
        if values.get("command") == EVAL_COMMAND:
            spec = values.pop("teacher", None)
            if not isinstance(spec, str) or not spec.strip():
                raise UsageError(f"recipe {self.name!r}, arm {arm.id!r}: an eval arm scores its teacher, and it has none",
                                 hint='set teacher = "NAME:FILE", a .safetensors file, a run directory or a '
                                      'timm name with pretrained = true')
            if spec.startswith("@"):
                raise UsageError(f"recipe {self.name!r}, arm {arm.id!r}: an eval arm scores a model that exists, "
                                 f"not {spec!r}", hint="[eval] scores every trained arm anyway")
            values.update(command="train", model=spec)
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
def check_value(key: str, value: Any, where: str) -> Any:
    """``value`` (from TOML) for RunConfig field ``key``, checked against the field's type (see :mod:`hardctl.values`)."""
    return values.check_value(value, FIELD_TYPES[key], f"{where}: {key}")


def parse_value(key: str, text: str, where: str) -> Any:
    """A ``--set`` string for RunConfig field ``key``, converted to the field's type (``none``: unset)."""
    return values.parse_value(text, FIELD_TYPES[key], f"{where}: {key}")


def parse_recipe(raw: dict[str, Any], source: str, default_name: str = "recipe") -> Recipe:
    """Validate a recipe document (already read from TOML) and return it as a :class:`Recipe`."""
    head = check_table(raw.get("recipe", {}), "[recipe]", source)
    check_keys(head, RECIPE_KEYS, "[recipe]", source)
    name = head.get("name", default_name)
    kind = head.get("kind", "transfer")
    for key in ("name", "kind", "description", "paper"):
        if key in head and not isinstance(head[key], str):
            raise UsageError(f"recipe {source}: [recipe] {key} must be a string, got {head[key]!r}")
    if kind not in KINDS:
        raise UsageError(f"recipe {source}: unknown kind {kind!r}{did_you_mean(kind, KINDS)}",
                         hint=f"kinds: {', '.join(KINDS)}")
    check_keys(raw, SECTIONS[kind], f"a {kind} recipe (sections)", source)
    seeds = head.get("seeds", [0])
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
        raise UsageError(f"recipe {source}: [recipe] seeds must be a non-empty list of integers >= 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"recipe {source}: [recipe] seeds lists a seed twice: {seeds}")
    if kind == "toy":  # hardctl.toy owns the [toy] settings and the arms
        return _parse_toy(raw, source, name=name, head=head, seeds=seeds)
    defaults = dict(check_table(raw.get("defaults", {}), "[defaults]", source))
    raw_arms = raw.get("arm", [])
    if not isinstance(raw_arms, list) or not raw_arms:
        raise UsageError(f"recipe {source}: no [[arm]] tables", hint="a recipe needs at least one arm")
    arms: list[Arm] = []
    for number, raw_arm in enumerate(raw_arms, 1):
        table = dict(check_table(raw_arm, f"[[arm]] number {number}", source))
        arm_id = table.pop("id", None)
        if not isinstance(arm_id, str) or not ARM_ID.match(arm_id):
            raise UsageError(f"recipe {source}: [[arm]] number {number} needs an id of letters, digits, '-' "
                             f"and '_', got {arm_id!r}")
        if any(a.id == arm_id for a in arms):
            raise UsageError(f"recipe {source}: two arms have the id {arm_id!r}")
        if arm_id in RESERVED_IDS:
            raise UsageError(f"recipe {source}: {arm_id!r} cannot be an arm id",
                             hint=f"--set {arm_id}.KEY=VALUE addresses the [{arm_id}] section")
        label = table.pop("label", arm_id)
        if not isinstance(label, str):
            raise UsageError(f"recipe {source}: arm {arm_id!r}: label must be a string, got {label!r}")
        arms.append(Arm(arm_id, label, table))
    for key in ("teacher_download", "augmentor_download"):
        if key in head and not isinstance(head[key], str):
            raise UsageError(f"recipe {source}: [recipe] {key} must be a string, got {head[key]!r}")
    recipe = Recipe(name=name, kind=kind, description=head.get("description", ""), paper=head.get("paper", ""),
                    seeds=list(seeds), defaults=defaults, arms=arms, source=source, raw=copy.deepcopy(raw),
                    eval=parse_eval(raw, source), results=parse_results(raw, source, [a.id for a in arms]),
                    teacher_download=head.get("teacher_download", ""),
                    augmentor_download=head.get("augmentor_download", ""))
    _validate_transfer(recipe)
    return recipe


def toy_module():
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
    settings = dict(check_table(raw.get("toy", {}), "[toy]", source))
    toy = toy_module()
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
    check_keys(recipe.defaults, RUN_FIELDS, "[defaults]", source)
    for key, value in recipe.defaults.items():
        recipe.defaults[key] = check_value(key, value, f"recipe {source}, [defaults]")
    seen: list[str] = []
    for arm in recipe.arms:
        if PER_SEED in arm.values:
            raise UsageError(f"recipe {source}: arm {arm.id!r} sets seed",
                             hint="seeds come from [recipe] seeds or --seeds")
        check_keys(arm.values, (*ARM_OWN_KEYS, *RUN_FIELDS), f"arm {arm.id!r}", source)
        for key, value in arm.values.items():
            arm.values[key] = check_value(key, value, f"recipe {source}, arm {arm.id!r}")
        for ref in arm.refs:
            if ref not in seen:
                ids = [a.id for a in recipe.arms]
                where = "a later arm" if ref in ids else f"no arm{did_you_mean(ref, ids)}"
                raise UsageError(f"recipe {source}: arm {arm.id!r} takes its teacher from '@{ref}', which is {where}",
                                 hint=f"'@ID' must name an arm listed before it: {', '.join(seen) or 'none'}")
        if recipe.is_eval(arm) and arm.refs:
            raise UsageError(f"recipe {source}: arm {arm.id!r} only evaluates, so its teacher cannot be '@{arm.refs[0]}'",
                             hint="[eval] scores every trained arm anyway")
        cfg = recipe.config(arm, recipe.seeds[0])
        if cfg.augment != "none":
            from hardctl.data.baselines import TRANSFORM_NAMES

            for part in cfg.augment.split("+"):  # a '+'-joined list applies its parts in order
                if part.strip().lower() not in TRANSFORM_NAMES:
                    raise UsageError(f"recipe {source}, arm {arm.id!r}: unknown augment {part.strip()!r}"
                                     f"{did_you_mean(part.strip(), TRANSFORM_NAMES)}",
                                     hint=f"known: {', '.join(TRANSFORM_NAMES)}")
        seen.append(arm.id)


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
    return parse_recipe(tomlio.read_toml(path, "recipe"), str(path), default_name=path.stem)


def describe_file(path: str | Path) -> str:
    """The one-line description of a recipe file ("" when the file cannot be read)."""
    try:
        head = tomlio.read_toml(path).get("recipe", {})
        text = head.get("description", "") if isinstance(head, dict) else ""
        return text.strip().splitlines()[0] if isinstance(text, str) and text.strip() else ""
    except Exception:  # a broken file must not break listing
        return ""


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


