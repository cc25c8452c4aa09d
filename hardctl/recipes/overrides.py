"""Command-line overrides of a recipe: ``--set KEY=VALUE``, ``ARM.KEY=VALUE`` and ``eval.``/``results.KEY=VALUE``.

:func:`parse_overrides` reads the ``--set`` items; :func:`apply_overrides` converts each value to its
RunConfig field's type, applies it to ``[defaults]``, one arm or the ``[eval]``/``[results]`` section
of the recipe's TOML document, and parses the result again, so an overridden recipe is validated like a file.
"""

from __future__ import annotations

import copy
from typing import Any, Iterable

from hardctl.errors import UsageError, did_you_mean
from hardctl.values import key_value_pairs
from hardctl.values import parse_value as parse_typed
from hardctl.recipes.sections import EVAL_KEYS, RESULTS_KEYS
from hardctl.recipes.spec import ARM_OWN_KEYS, PER_SEED, RESERVED_IDS, RUN_FIELDS, Recipe, parse_recipe, parse_value

__all__ = ["apply_overrides", "parse_overrides"]


def apply_overrides(recipe: Recipe, overrides: dict[str, str] | Iterable[str]) -> Recipe:
    """A new recipe with ``KEY=VALUE`` (every arm), ``ARM_ID.KEY=VALUE`` (one arm), ``eval.KEY=VALUE``
    (``[eval]``) and ``results.KEY=VALUE`` (``[results]``) applied.

    Values are converted to the RunConfig field's type; ``none`` unsets an optional field. ``KEY=VALUE``
    sets ``[defaults]`` and replaces the value of every arm that sets KEY itself; arm-level overrides are
    applied after it whatever their order on the command line, so ``--set lr=1e-3 --set kd.lr=1e-4``
    and the reverse both give ``kd`` 1e-4.
    """
    pairs = parse_overrides(overrides) if not isinstance(overrides, dict) else dict(overrides)
    if not pairs:
        return recipe
    if recipe.kind != "transfer":
        raise UsageError(f"recipe {recipe.name!r} is a {recipe.kind} recipe; its overrides go to hardctl.{recipe.kind}")
    raw = copy.deepcopy(recipe.raw)
    defaults = raw.setdefault("defaults", {})
    arm_tables = {table["id"]: table for table in raw["arm"]}
    sections = [(k, v) for k, v in pairs.items() if k.split(".", 1)[0].strip() in RESERVED_IDS and "." in k]
    settings = [(k, v) for k, v in pairs.items() if (k, v) not in sections]
    for key, text in sections:
        _override_section(raw, key, text)
    ordered = [(k, v) for k, v in settings if "." not in k] + [(k, v) for k, v in settings if "." in k]
    for key, text in ordered:
        arm_id, dot, name = key.rpartition(".")
        where = f"--set {key}={text}"
        if dot and arm_id not in arm_tables:
            ids = list(arm_tables)
            raise UsageError(f"{where}: recipe {recipe.name!r} has no arm {arm_id!r}{did_you_mean(arm_id, ids)}",
                             hint=f"its arms: {', '.join(ids)}; [eval] and [results]: --set eval.KEY=VALUE")
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
        value = parse_value(name, text, where)
        if dot:
            arm_tables[arm_id][name] = value  # None in an arm: unset for that arm only
            continue
        # every arm: [defaults] (None: unset, so that the field's own default applies), and no arm keeps its own
        if value is None:
            defaults.pop(name, None)
        else:
            defaults[name] = value
        for table in arm_tables.values():
            table.pop(name, None)
    resolved = parse_recipe(raw, recipe.source, default_name=recipe.name)
    resolved.raw.setdefault("recipe", {})["name"] = recipe.name
    return resolved


def _names(text: str) -> list[str]:
    """``"a,b"`` or ``"a b"`` -> ``["a", "b"]`` (with a comma, names may hold spaces: ``"x,imagenet-c mCE"``);
    ``none`` (or nothing) -> ``[]``."""
    parts = [part.strip() for part in (text.split(",") if "," in text else text.split()) if part.strip()]
    return [] if [p.lower() for p in parts] in ([], ["none"]) else parts


def _override_section(raw: dict[str, Any], key: str, text: str) -> None:
    """``eval.suites=a,b``, ``eval.data_root=DIR``, ``eval.sets.NAME=DIR``, ``eval.batch_size=N``,
    ``eval.workers=N``, ``results.columns=a,b``, ``results.labels.KEY=LABEL``, ``results.reference=ARM``
    (``none`` unsets)."""
    section, _, rest = key.partition(".")
    section, rest = section.strip(), rest.strip()
    where = f"--set {key}={text}"
    table = raw.setdefault(section, {})
    allowed = EVAL_KEYS if section == "eval" else RESULTS_KEYS
    name, dot, sub = rest.partition(".")
    name = name.strip().replace("-", "_")
    if name not in allowed:
        raise UsageError(f"{where}: [{section}] has no setting {name!r}{did_you_mean(name, allowed)}",
                         hint=f"[{section}] settings: {', '.join(allowed)}")
    unset = text.strip().lower() in ("none", "")
    if name in ("sets", "labels"):
        if not dot or not sub.strip():
            example = "eval.sets.imagenet-a=/data/imagenet-a" if name == "sets" else "results.labels.centered=Test"
            raise UsageError(f"{where}: name the entry", hint=f"e.g. --set {example}")
        entries = table.setdefault(name, {})
        if unset:
            entries.pop(sub.strip(), None)
        else:
            entries[sub.strip()] = text.strip()
        return
    if dot:
        raise UsageError(f"{where}: [{section}] {name} has no entries", hint=f"use --set {section}.{name}=VALUE")
    if name in ("suites", "columns"):
        table[name] = _names(text)
        if name == "columns" and not table[name]:
            table.pop(name)  # none: the default columns
    elif unset:
        table.pop(name, None)
    elif name in ("batch_size", "workers"):
        table[name] = parse_typed(text, int, f"{where}: {section}.{name}")
    else:
        table[name] = text.strip()


def parse_overrides(items: Iterable[str]) -> dict[str, str]:
    """``["lr=0.01", "kd.epochs=3"]`` -> ``{"lr": "0.01", "kd.epochs": "3"}`` (later ones win)."""
    return dict(key_value_pairs(items, flag="--set", example="--set epochs=5 or --set kd.lr=0.01"))
