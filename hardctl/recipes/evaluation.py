"""A recipe's evaluation step: each finished arm's model scored on the ``[eval]`` suites of ``hardctl eval``.

Scores are saved next to the model they belong to (``OUT/<arm>/seed-<n>/eval.json``; an eval arm's in
``OUT/<arm>/eval.json``) with a key that says what was scored how, so a recipe that runs again reuses them
unless the model, the suites, the folders or the sets that were found changed. Sets that are not found are
skipped with the eval engine's message (the paths looked for) and the recipe goes on; their columns read
``-``. Column keys are a set's name (``imagenet-val``: top-1 accuracy in %) or a summary's set and metric
(``imagenet-c mCE``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable

from hardctl.atomic import atomic_path
from hardctl.models import split_named_file
from hardctl.config import RunConfig
from hardctl.errors import HardctlError, UsageError
from hardctl.recipes.sections import EvalSpec
from hardctl.recipes.spec import Recipe
from hardctl.runfiles import EVAL_FILE

STANDARD = "standard"  # the --data suite: "centered" and "shifted", what a training run's summary holds
BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")  # a TOML key that needs no quotes
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pth.tar", ".pt", ".tar", ".bin", ".ckpt")

__all__ = ["EVAL_FILE", "evaluate_model", "load_scores", "preview", "row_key", "suites_for", "weights_file"]


def weights_file(spec: str) -> Path | None:
    """The weights file a model spec names (``resnet50:FILE.pth.tar``, ``x.safetensors``), else None."""
    spec = spec.strip()
    if spec.startswith("@"):
        return None
    named = split_named_file(spec)
    candidate = named[1] if named is not None else spec
    return Path(candidate).expanduser() if candidate.lower().endswith(WEIGHT_SUFFIXES) else None


def suites_for(recipe: Recipe, *, eval_arm: bool, columns: list[str]) -> list[str]:
    """The suites a run is scored on: ``[eval]``'s, and for an eval arm also ``standard`` (its centered and
    shifted accuracy, which a trained arm's summary already holds) where the table shows those columns."""
    suites = list(recipe.eval.suites) if recipe.eval is not None else []
    if eval_arm and STANDARD not in suites and {"centered", "shifted"} & set(columns):
        suites.insert(0, STANDARD)
    return suites


def row_key(row: dict[str, Any]) -> str:
    """A result row's column key: the set's name, or ``"<set> <metric>"`` for a summary row."""
    return row["set"] if row["kind"] == "set" else f"{row['set']} {row['metric']}"


def _resolved(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def _collect(suites: list[str], cfg: RunConfig, spec: EvalSpec, shifted: bool):
    from hardctl.eval.runner import collect_sets

    return collect_sets(suites, data_spec=cfg.data, data_root=spec.data_root, sets=spec.sets, shift_px=cfg.shift_px,
                        shift_seed=cfg.shift_seed, shifted=shifted)


def _key(model: str, cfg: RunConfig, suites: list[str], spec: EvalSpec, shifted: bool, found: list[str]) -> dict:
    return {"model": model, "pretrained": cfg.pretrained, "suites": suites, "data_root": _resolved(spec.data_root),
            "sets": {k: _resolved(v) for k, v in sorted(spec.sets.items())},
            "data": cfg.data if STANDARD in suites else None, "shift_px": cfg.shift_px, "shift_seed": cfg.shift_seed,
            "shifted": shifted, "found": found}


def preview(recipe: Recipe, cfg: RunConfig, suites: list[str], log: Callable[[str], None], *,
            shifted: bool = False) -> None:
    """Say, before anything is trained, which sets of the ``[eval]`` suites were not found (and where)."""
    if not suites:
        return
    spec = recipe.eval or EvalSpec()
    pairs = _collect([s for s in suites if s != STANDARD], cfg, spec, shifted)
    skipped = [s for _, s in pairs if s.skipped]
    for eval_set in skipped:
        log(f"eval: {eval_set.name} skipped: {eval_set.skipped}")
    if skipped:
        log(f"eval: {len(skipped)} of {len(pairs)} sets not found; their columns stay empty "
            f"(--set eval.data_root=DIR or --set eval.sets.NAME=DIR)")


def load_scores(folder: Path) -> dict[str, Any] | None:
    try:
        saved = json.loads((Path(folder) / EVAL_FILE).read_text())
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) and isinstance(saved.get("scores"), dict) else None


def _fresh(folder: Path, key: dict, newer_than: float) -> dict[str, Any] | None:
    saved = load_scores(folder)
    if saved is None or saved.get("key") != key:
        return None
    return saved if (folder / EVAL_FILE).stat().st_mtime >= newer_than else None


def evaluate_model(model: str, cfg: RunConfig, suites: list[str], spec: EvalSpec, folder: Path, *,
                   shifted: bool, reuse: bool, newer_than: float, log: Callable[[str], None]) -> tuple[dict, str]:
    """Score ``model`` (a run directory or a model spec) on ``suites`` and save ``folder/eval.json``.

    Returns the saved record (``scores``: column key -> value; ``lower_is_better``: the keys where lower
    is better; ``skipped``: set -> reason) and ``"reused"`` or ``"evaluated"``.
    """
    from hardctl.eval.runner import score_models

    pairs = _collect(suites, cfg, spec, shifted)
    found = [s.name for _, s in pairs if not s.skipped]
    key = _key(model, cfg, suites, spec, shifted, found)
    saved = _fresh(folder, key, newer_than) if reuse else None
    if saved is not None:
        return saved, "reused"
    rows: list[dict] = []
    if found:  # load nothing when every set is missing (a model need not fit sets that are not there)
        _, rows = score_models([model], pairs, device=cfg.device, amp=cfg.amp, pretrained=cfg.pretrained,
                               batch_size=spec.batch_size, workers=spec.workers, data_specs={STANDARD: cfg.data},
                               progress=lambda m: log(f"eval: {m}"))
    ok = [r for r in rows if r.get("status") == "ok" and (r.get("acc") if r["kind"] == "set" else r.get("value")) is not None]
    record = {
        "key": key,
        "scores": {row_key(r): (r["acc"] if r["kind"] == "set" else r["value"]) for r in ok},
        "lower_is_better": sorted(row_key(r) for r in ok if r.get("lower_is_better")),
        "cells": sorted(row_key(r) for r in ok if "severity" in (r.get("meta") or {})),
        "skipped": {s.name: s.skipped for _, s in pairs if s.skipped},
        "rows": rows,
    }
    if int(os.environ.get("RANK", 0)) == 0:  # under torchrun every rank scored its shard; rank 0 writes
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / EVAL_FILE) as tmp:
            tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    return record, "evaluated"


def check_weights(recipe: Recipe, specs: list[tuple[str, str, str]]) -> None:
    """Every ``(arm, role, spec)`` that names a weights file must find it: else a one-line usage error that
    names the file, where to get it (``[recipe] teacher_download``) and the ``--set`` that points at it."""
    for arm_id, role, spec in specs:
        path = weights_file(spec)
        if path is None or path.is_file():
            continue
        named = split_named_file(spec.strip())
        target = f"{named[0]}:/path/to/{path.name}" if named is not None else f"/path/to/{path.name}"
        where = f"get {recipe.teacher_download}, then " if recipe.teacher_download and role == "teacher" else ""
        flag = f"--set {role if role == 'teacher' else f'{arm_id}.model'}={target}"
        if role == "augmentor":  # aug_options is one table: the --set repeats the arm's other options
            where = f"get {recipe.augmentor_download}; or " if recipe.augmentor_download else ""
            flag = " ".join(f"--set '{a}.aug_options={_inline(_aug_options(recipe, a) | {'weights': target})}'"
                            for a in dict.fromkeys(a for a, r, s in specs if r == role and weights_file(s) == path))
        raise UsageError(f"recipe {recipe.name!r}, arm {arm_id!r}: {role} weights file {path} does not exist",
                         hint=f"{where}{flag}")


def _aug_options(recipe: Recipe, arm_id: str) -> dict[str, Any]:
    return dict({**recipe.defaults, **recipe.arm(arm_id).values}.get("aug_options", {}))


def _inline(table: dict[str, Any]) -> str:
    """``{"weights": "/p", "start": 10}`` -> ``{weights = "/p", start = 10}`` (a TOML inline table for ``--set``)."""
    # a key that is not a bare TOML key (a composition's "affine.lr") is quoted, else TOML reads it as a nested table
    return "{" + ", ".join(f"{k if BARE_KEY.fullmatch(k) else json.dumps(k)} = {json.dumps(v)}"
                           for k, v in table.items()) + "}"


def describe_error(exc: HardctlError, arm_id: str) -> HardctlError:
    return type(exc)(f"{arm_id}: evaluation: {exc.message}", hint=exc.hint)
