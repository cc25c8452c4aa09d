"""The default recipe behind a bare ``hardctl distill``: digits, a cached CNN teacher, an MLP student, HARD-Affine.

Without ``--teacher``, ``distill`` starts from :data:`DEFAULT_DISTILL` (options typed on the command
line still win) and uses the default teacher for ``--data``: the paper's CNN, trained once with
:data:`DEFAULT_TEACHER` and kept in the cache (``$HARDCTL_CACHE``, else ``$XDG_CACHE_HOME/hardctl``,
else ``~/.cache/hardctl``). A teacher is trained into a temporary folder and renamed into place when
it is complete, so an interrupted first run never leaves a half-trained teacher behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

from hardctl.config import DISTILL_ONLY, RunConfig
from hardctl.runfiles import SUMMARY_FILE

__all__ = ["DEFAULT_DISTILL", "DEFAULT_TEACHER", "cache_dir", "default_teacher", "apply_default_recipe", "plain_kd"]

# What a bare `hardctl distill` runs (the README's main job): the `hard-affine` arm of the transfer-digits
# recipe, whose settings are explained there.
# HARD-Affine as the transfer study chose it on validation data (docs/results/transfer-study.md): l_min 0.2 gives
# many short phases and a pool of ~20 augmentors (0.1 gave 6 switches and a pool of 4), a quarter of each
# student batch stays clean, which keeps centered accuracy near plain KD's, and an augmentor phase is at most 50
# steps at lr 0.02: the same shifted validation accuracy as 100 at 0.01 with a third of the augmentor steps.
DEFAULT_DISTILL = {"data": "digits", "model": "hard_mnist_mlp", "augmentor": "affine", "epochs": 100, "lr": 5e-3,
                   "l_min": 0.2, "aug_lr": 0.02, "max_aug_steps": 50, "aug_options": {"min_sigma": 0.05},
                   "clean_fraction": 0.25}
# How the cached default teacher is trained: random shifts give it the invariance HARD transfers.
DEFAULT_TEACHER = {"model": "hard_mnist_cnn", "epochs": 30, "lr": 5e-3, "seed": 0, "augment": "shift"}


def cache_dir() -> Path:
    if os.environ.get("HARDCTL_CACHE"):
        return Path(os.environ["HARDCTL_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "hardctl"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "data"


def default_teacher(data: str, *, shift_px: int | None = None, say=None) -> Path:
    """The run directory of the default teacher for ``data``, training it first if the cache lacks it."""
    from hardctl.distill.progress import reporter_for
    from hardctl.distill.run import run

    say = say or (lambda message: print(message, file=sys.stderr))
    spec = DEFAULT_TEACHER
    target = cache_dir() / "teachers" / (f"{_slug(data)}-{spec['model']}-e{spec['epochs']}-s{spec['seed']}"
                                         f"-{spec['augment']}")
    if (target / SUMMARY_FILE).is_file():
        say(f"hardctl: using the cached default teacher {target}")
        return target
    say(f"hardctl: no --teacher given and no cached teacher for {data}: training {spec['model']} once "
        f"({spec['epochs']} epochs) into {target}; later runs reuse it")
    partial = target.with_name(target.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    cfg = RunConfig(command="train", data=data, shift_px=shift_px, **spec)
    run(cfg, partial, reporter=reporter_for())
    partial.rename(target)
    return target


def apply_default_recipe(cfg: RunConfig, *, explicit: set[str], say=None) -> RunConfig:
    """``cfg`` with the default recipe under what the user typed, and the default teacher for its data."""
    say = say or (lambda message: print(message, file=sys.stderr))
    values = dataclasses.asdict(cfg)
    option_of = {"model": "student", "aug_options": "aug_opt"}  # config field -> the option that sets it
    for key, value in DEFAULT_DISTILL.items():
        if option_of.get(key, key) not in explicit:
            values[key] = value
    resolved = RunConfig(**values)
    if not explicit - {"out", "force", "json", "log_every", "workers", "device"}:
        say("hardctl: no --teacher: running the default recipe (digits, CNN teacher -> MLP student, HARD-Affine); "
            "options on the command line override it")
    resolved.teacher = str(default_teacher(resolved.data, shift_px=resolved.shift_px, say=say))
    return resolved


def plain_kd(cfg: RunConfig, say=None) -> dict:
    """The summary of plain KD with ``cfg``'s teacher, student, data and schedule (``--augmentor none``): the
    main job's baseline row. Trained once per configuration and cached like the teacher."""
    from hardctl.distill.progress import reporter_for
    from hardctl.distill.run import run

    say = say or (lambda message: print(message, file=sys.stderr))
    # every HARD-only setting back to its default, so the baseline (and its cache key) does not depend on them
    hard_only = {f.name: f.default for f in dataclasses.fields(RunConfig)
                 if f.name in DISTILL_ONLY - {"teacher", "augmentor", "aug_options"}}
    kd = dataclasses.replace(cfg, augmentor="none", aug_options={}, **hard_only)
    settings = {k: v for k, v in kd.to_dict().items() if k not in ("device", "workers", "log_every")}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]
    target = cache_dir() / "kd" / f"{_slug(kd.data)}-{_slug(Path(kd.model).name)}-{key}"
    if (target / SUMMARY_FILE).is_file():
        say(f"hardctl: using the cached plain-KD baseline {target}")
    else:
        say(f"hardctl: training the plain-KD baseline once ({kd.epochs} epochs, --augmentor none) into {target}")
        partial = target.with_name(target.name + ".partial")
        if partial.exists():
            shutil.rmtree(partial)
        run(kd, partial, reporter=reporter_for(every=kd.log_every))
        partial.rename(target)
    summary = json.loads((target / SUMMARY_FILE).read_text())
    return {**summary, "run_dir": str(target)}  # trained as .partial, then renamed into place
