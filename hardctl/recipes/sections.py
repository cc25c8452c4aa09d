"""The ``[eval]`` and ``[results]`` sections of a recipe, and the table checks every section uses.

``[eval]`` (:class:`EvalSpec`) names the ``hardctl eval`` suites every finished arm's model is scored on,
where they find their sets and how they batch; ``[results]`` (:class:`ResultsSpec`) picks the columns
of the results table, their labels and the reference arm of the KD deltas. :func:`parse_eval` and
:func:`parse_results` validate them for :func:`hardctl.recipes.spec.parse_recipe`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from hardctl.errors import UsageError, did_you_mean

__all__ = ["EVAL_KEYS", "RESULTS_KEYS", "EvalSpec", "ResultsSpec", "check_keys", "check_table", "parse_eval", "parse_results"]

EVAL_KEYS = ("suites", "data_root", "sets", "batch_size", "workers")
RESULTS_KEYS = ("columns", "labels", "reference")
EVAL_BATCH_SIZE = 256


@dataclass
class EvalSpec:
    """``[eval]``: the evaluation suites (``hardctl eval``) every finished arm's model is scored on."""

    suites: list[str] = field(default_factory=list)
    data_root: str | None = None  # where the suites look for their sets (relative: to the working directory)
    sets: dict[str, str] = field(default_factory=dict)  # set name -> folder, as hardctl eval --set NAME=DIR
    batch_size: int = EVAL_BATCH_SIZE
    workers: int | None = None  # None: the eval engine's default (min(8, CPUs) for image files)


@dataclass
class ResultsSpec:
    """``[results]``: which columns the table shows, their labels, and the KD row deltas refer to."""

    columns: list[str] | None = None  # None: centered, shifted and the eval scores that are not cells
    labels: dict[str, str] = field(default_factory=dict)
    reference: str | None = None  # None: the first distill arm without any augmentation


def check_table(raw: Any, what: str, source: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise UsageError(f"recipe {source}: {what} must be a table, got {type(raw).__name__}")
    return raw


def check_keys(table: dict[str, Any], allowed: Iterable[str], what: str, source: str) -> None:
    allowed = list(allowed)
    for key in table:
        if key not in allowed:
            hint_names = ", ".join(allowed) if len(allowed) <= 8 else "the fields of hardctl.config.RunConfig"
            raise UsageError(f"recipe {source}: unknown key {key!r} in {what}{did_you_mean(key, allowed)}",
                             hint=f"allowed: {hint_names}")


def _string_list(value: Any, what: str, source: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise UsageError(f"recipe {source}: {what} must be a list of names, got {value!r}")
    if len(set(value)) != len(value):
        raise UsageError(f"recipe {source}: {what} lists a name twice: {value}")
    return [v.strip() for v in value]


def _string_table(value: Any, what: str, source: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise UsageError(f"recipe {source}: {what} must be a table of strings, got {value!r}")
    return dict(value)


def parse_eval(raw: dict[str, Any], source: str) -> EvalSpec | None:
    """``[eval]``: suites known to the plugin registry, and ``sets`` names that those suites read."""
    if "eval" not in raw:
        return None
    table = check_table(raw["eval"], "[eval]", source)
    check_keys(table, EVAL_KEYS, "[eval]", source)
    spec = EvalSpec(suites=_string_list(table.get("suites", []), "[eval] suites", source),
                    sets=_string_table(table.get("sets", {}), "[eval] sets", source))
    if "data_root" in table:
        if not isinstance(table["data_root"], str) or not table["data_root"].strip():
            raise UsageError(f"recipe {source}: [eval] data_root must be a folder name, got {table['data_root']!r}")
        spec.data_root = table["data_root"]
    for key, minimum in (("batch_size", 1), ("workers", 0)):
        if key in table:
            value = table[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise UsageError(f"recipe {source}: [eval] {key} must be an integer >= {minimum}, got {value!r}")
            setattr(spec, key, value)
    from hardctl import plugins

    for suite in spec.suites:
        try:
            plugins.eval_suites.get(suite)
        except UsageError as exc:
            raise UsageError(f"recipe {source}: [eval] suites: {exc.message}", hint=exc.hint) from None
    if spec.sets:
        from hardctl.eval.runner import suite_sources

        known = suite_sources(spec.suites)
        for key in spec.sets:
            if key not in known:
                raise UsageError(f"recipe {source}: [eval] sets: the suites read no set {key!r}{did_you_mean(key, known)}",
                                 hint=f"they read: {', '.join(sorted(known)) or 'none'}")
    return spec


def parse_results(raw: dict[str, Any], source: str, arm_ids: list[str]) -> ResultsSpec:
    table = check_table(raw.get("results", {}), "[results]", source)
    check_keys(table, RESULTS_KEYS, "[results]", source)
    spec = ResultsSpec(labels=_string_table(table.get("labels", {}), "[results] labels", source))
    if "columns" in table:
        spec.columns = _string_list(table["columns"], "[results] columns", source)
        if not spec.columns:
            raise UsageError(f"recipe {source}: [results] columns is empty", hint="name at least one column")
    if "reference" in table:
        reference = table["reference"]
        if reference not in arm_ids:
            raise UsageError(f"recipe {source}: [results] reference {reference!r} is no arm"
                             f"{did_you_mean(str(reference), arm_ids)}", hint=f"its arms: {', '.join(arm_ids)}")
        spec.reference = reference
    return spec
