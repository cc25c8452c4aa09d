"""Models x suites -> result rows: which sets, which models, one pass per set, summaries and gaps.

:func:`collect_sets` asks each suite (from the plugin registry) for its sets. :func:`load_models`
loads every model once, checks that it fits the sets, and reads the teacher of a distillation run
directory. :func:`evaluate` scores each set once per group of models that share a preprocessing and
returns plain dict rows (see :mod:`hardctl.eval.report` for their fields), adding the corruption
summaries (:func:`hardctl.eval.corruptions.summarize`) and the student - teacher gap wherever a run
directory's teacher is among the models.

Under ``torchrun``, :func:`score_models` joins the job (:func:`hardctl.distributed.setup`) and every pass
is sharded over the ranks (:mod:`hardctl.eval.engine`): each rank gets the same rows, the one-process
numbers (mCE included, since the summaries are computed from the summed counts). Rank 0 alone reports
progress; the caller writes the report on rank 0 only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch import nn

import hardctl
from hardctl import distributed, plugins
from hardctl.config import RunConfig
from hardctl.device import select_amp, select_device
from hardctl.errors import DataError, HardctlError, ModelError, UsageError
from hardctl.eval import EvalSet
from hardctl.eval.corruptions import summarize
from hardctl.eval.engine import Feed, score
from hardctl.eval.metrics import TopK
from hardctl.eval.preprocess import FileImages, Preprocessing, preprocessing_for

__all__ = ["EvalModel", "collect_sets", "evaluate", "load_models", "require_found", "score_models", "suite_sources",
           "teacher_pairs"]


@dataclass
class EvalModel:
    """A loaded model with what the report needs to name it and pair it with its teacher."""

    spec: str
    model: nn.Module
    info: object  # hardctl.models.ModelInfo
    normalize: nn.Module
    teacher: str | None = None  # the --teacher a distillation run directory was trained from
    run_dir: Path | None = None
    label: str = ""
    meta: dict = field(default_factory=dict)


def suite_sources(names: Sequence[str]) -> dict[str, str]:
    """``--set`` keys (-> help) that the suites ``names`` read; empty for data-spec suites."""
    known: dict[str, str] = {}
    for name in names:
        for source in plugins.eval_suites.get(name).sources:
            known.setdefault(source.key, source.help)
    return known


def collect_sets(suites: Sequence[str], *, data_spec: str = "digits", data_root=None, sets=None,
                 shift_px: int | None = None, shift_seed: int = 0, shifted: bool = True) -> list[tuple[str, EvalSet]]:
    """``(suite, set)`` pairs of every suite in order; a set two suites share is kept once.

    Suites registered with ``sources=`` read ``data_root``/``sets``; the others get ``data_spec`` (and
    their ``shifted`` set only when ``shifted`` is true, as ``hardctl eval --shifted`` always had it).
    """
    out: list[tuple[str, EvalSet]] = []
    seen: set[str] = set()
    for name in suites:
        entry = plugins.eval_suites.get(name)
        if entry.sources:
            got = entry.obj(None, data_root=data_root, sets=dict(sets or {}), shift_px=shift_px, shift_seed=shift_seed)
        else:
            got = entry.obj(data_spec, shift_px=shift_px, shift_seed=shift_seed)
            got = [s for s in got if shifted or s.name != "shifted"]
        for eval_set in got:
            if eval_set.name not in seen:
                seen.add(eval_set.name)
                out.append((name, eval_set))
    return out


def require_found(pairs: Sequence[tuple[str, EvalSet]], where: str) -> None:
    """Skipped sets are reported and the run goes on, but a run that finds no set at all is a usage error."""
    if pairs and all(s.skipped for _, s in pairs):
        looked = "; ".join(f"{s.name}: {s.skipped}" for _, s in pairs[:3]) + (" ..." if len(pairs) > 3 else "")
        raise DataError(f"no set of the chosen suites was found {where} ({looked})",
                        hint="pass --data-root DIR holding the extracted archives, or --set NAME=DIR")


def teacher_of(run_dir: Path) -> str | None:
    """The ``--teacher`` a run directory was distilled from (None: not a distillation, or unreadable)."""
    try:
        return RunConfig.load(run_dir).teacher or None
    except HardctlError:
        return None


def load_models(specs: Sequence[str], pairs: Sequence[tuple[str, EvalSet]], *, device: torch.device,
                pretrained: bool = False) -> list[EvalModel]:
    """Load each spec once, on ``device``, checked against the classes, channels and size of the sets."""
    import timm

    from hardctl.models import (
        InputNormalize,
        check_accepts,
        check_compatible,
        load_model,
        resolve_name,
    )

    twice = sorted({s for s in specs if list(specs).count(s) > 1})
    if twice:
        raise UsageError(f"--model {twice[0]} given twice", hint="name each model once")
    found = [s for _, s in pairs if not s.skipped]
    shapes = {(s.num_classes, s.in_chans) for s in found}
    if len(shapes) > 1:
        desc = ", ".join(f"{c} classes x {ch} channels" for c, ch in sorted(shapes))
        raise UsageError(f"the chosen suites need different models ({desc})", hint="evaluate them in separate calls")
    num_classes, in_chans = shapes.pop() if shapes else (1000, 3)
    tensor_set = next((s for s in found if s.preprocess == "tensor"), None)
    named = tensor_set if tensor_set is not None else (found[0] if found else None)
    where = named.meta.get("data", named.name) if named is not None else "the suite"  # --data's spec if known
    models = []
    for spec in specs:
        if tensor_set is not None:
            size = tuple(tensor_set.img_size)
        else:  # image files: a timm-named model is built at its pretrained input size
            try:
                cfg = timm.models.get_pretrained_cfg(resolve_name(spec))
            except ModelError:  # a file or run directory: its metadata decides, size unused
                cfg = None
            size = tuple(cfg.input_size[1:]) if cfg is not None and getattr(cfg, "input_size", None) else (224, 224)
        model, info = load_model(spec, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, img_size=size)
        if info.source == "timm" and not pretrained:
            raise UsageError(f"model {spec!r} is a bare architecture with random weights",
                             hint="pass a run directory or .safetensors file, or add --pretrained")
        check_compatible("model", spec, info, num_classes, in_chans, where)
        model.to(device)
        if device.type == "cuda":
            model.to(memory_format=torch.channels_last)
        if tensor_set is not None and len(tensor_set.load()):
            image = tensor_set.load()[0][0]
            sample = (image.float() / 255.0 if image.dtype == torch.uint8 else image.float())[None].to(device)
        else:
            shape = tensor_set.img_size if tensor_set is not None else info.img_size
            sample = torch.zeros(1, in_chans, *shape, device=device)
        check_accepts("model", spec, model, info, sample, where)
        run_dir = Path(info.source[4:]) if info.source.startswith("run:") else None
        models.append(EvalModel(spec=spec, model=model, info=info, normalize=InputNormalize(info.mean, info.std).to(device),
                                teacher=teacher_of(run_dir) if run_dir is not None else None, run_dir=run_dir))
    _label(models)
    return models


def _label(models: list[EvalModel]) -> None:
    """Short column names: the file or folder name, or the whole spec where two would clash."""
    short = [Path(m.spec.rstrip("/")).name.removesuffix(".safetensors") or m.spec for m in models]
    for model, name in zip(models, short, strict=True):
        model.label = name if short.count(name) == 1 else model.spec


def _same_model(spec: str, other: EvalModel) -> bool:
    if spec == other.spec:
        return True
    a, b = Path(spec).expanduser(), Path(other.spec).expanduser()
    return a.exists() and b.exists() and a.resolve() == b.resolve()


def teacher_pairs(models: Sequence[EvalModel]) -> dict[str, EvalModel]:
    """student spec -> its teacher among ``models`` (run directories that know their teacher)."""
    pairs = {}
    for student in models:
        if student.teacher:
            teacher = next((m for m in models if m is not student and _same_model(student.teacher, m)), None)
            if teacher is not None:
                pairs[student.spec] = teacher
    return pairs


def _auto_workers(eval_set: EvalSet, workers: int | None) -> int:
    if workers is not None:
        return workers
    return 0 if eval_set.preprocess == "tensor" else min(8, os.cpu_count() or 1)


def _base_row(model: EvalModel, suite: str, eval_set: EvalSet, data_spec: str | None) -> dict:
    return {"kind": "set", "model": model.spec, "arch": model.info.arch, "suite": suite, "set": eval_set.name,
            "dataset": data_spec or eval_set.name, "description": eval_set.description, "path": eval_set.path,
            "hardctl_version": hardctl.__version__, "meta": dict(eval_set.meta)}


def evaluate(models: Sequence[EvalModel], pairs: Sequence[tuple[str, EvalSet]], *, device: torch.device,
             batch_size: int = 256, amp: str = "off", workers: int | None = None,
             data_specs: dict[str, str] | None = None, progress: Callable[[str], None] | None = None) -> list[dict]:
    """Score every model on every set; rows ordered by model, then set, then that model's summaries."""
    say = progress if progress is not None and distributed.current().is_main else (lambda message: None)
    by_model: dict[str, list[dict]] = {m.spec: [] for m in models}
    state = {"batch_size": batch_size}
    for suite, eval_set in pairs:
        data_spec = (data_specs or {}).get(suite)
        if eval_set.skipped:
            for m in models:
                by_model[m.spec].append({**_base_row(m, suite, eval_set, data_spec), "status": "skipped",
                                         "reason": eval_set.skipped, "images": 0, "acc": None})
            continue  # the report lists it with the paths looked for
        dataset = eval_set.load()
        if len(dataset) == 0:
            for m in models:
                by_model[m.spec].append({**_base_row(m, suite, eval_set, data_spec), "status": "skipped",
                                         "reason": "the set holds no images", "images": 0, "acc": None})
            continue
        groups: dict[tuple, list[tuple[EvalModel, Preprocessing]]] = {}
        for m in models:
            pre = preprocessing_for(m.model, m.info, eval_set.preprocess)
            groups.setdefault(pre.key, []).append((m, pre))
        for members in groups.values():
            pre = members[0][1]
            data = dataset.with_preprocessing(pre) if isinstance(dataset, FileImages) else dataset
            make_scorer = eval_set.scorer or partial(TopK, eval_set.logit_indices)

            def retry(old: int, new: int, name: str = eval_set.name) -> None:
                say(f"{name}: out of GPU memory at batch size {old}; retrying at {new}")

            scorers, stats = score([Feed(m.model, m.normalize) for m, _ in members], data, make_scorer,
                                   device=device, batch_size=state["batch_size"], amp=amp,
                                   workers=_auto_workers(eval_set, workers), on_retry=retry)
            state["batch_size"] = stats.batch_size
            rate = stats.images / stats.seconds if stats.seconds > 0 else float("inf")
            say(f"{eval_set.name}: {stats.images} images x {len(members)} model(s) in {stats.seconds:.1f} s "
                f"({rate:.0f} images/s)")
            for (m, m_pre), scorer in zip(members, scorers, strict=True):
                by_model[m.spec].append({**_base_row(m, suite, eval_set, data_spec), "status": "ok", **scorer.result(),
                                         "preprocessing": m_pre.describe(), "batch_size": stats.batch_size,
                                         "seconds": round(stats.seconds, 3)})
    rows = []
    for m in models:
        own = by_model[m.spec]
        suite_of = {r["set"]: r["suite"] for r in own}
        extra = []
        for summary in summarize(own):
            bench = summary["set"].split(" ")[0].split("/")[0]
            suite = next((s for name, s in suite_of.items() if name.startswith(bench)), "")
            extra.append({**summary, "model": m.spec, "arch": m.info.arch, "suite": suite,
                          "hardctl_version": hardctl.__version__, "meta": {}})
        rows.extend(own + extra)
    _add_gaps(rows, models)
    return rows


def score_models(specs: Sequence[str], pairs: Sequence[tuple[str, EvalSet]], *, device: str = "auto",
                 amp: str = "auto", pretrained: bool = False, batch_size: int = 256, workers: int | None = None,
                 data_specs: dict[str, str] | None = None,
                 progress: Callable[[str], None] | None = None) -> tuple[list[EvalModel], list[dict]]:
    """The evaluation pipeline of ``hardctl eval`` and of a recipe's ``[eval]``: pick the device and AMP
    (``--device``/``--amp`` words), load each model once and score it on every set of ``pairs``
    (from :func:`collect_sets`). Returns the loaded models and the result rows of :func:`evaluate`."""
    distributed.setup(device)  # under torchrun: join the job (LOCAL_RANK's GPU) before anything moves to "cuda"
    dev = select_device(device)
    models = load_models(specs, pairs, device=dev, pretrained=pretrained)
    rows = evaluate(models, pairs, device=dev, batch_size=batch_size, amp=select_amp(amp, dev), workers=workers,
                    data_specs=data_specs, progress=progress)
    return models, rows


def _value(row: dict) -> float | None:
    return row.get("value") if row["kind"] == "summary" else row.get("acc")


def _add_gaps(rows: list[dict], models: Sequence[EvalModel]) -> None:
    """``teacher`` and ``gap`` (student - teacher, in points) on every row of a student whose teacher ran."""
    index = {(r["model"], r["kind"], r["set"], r.get("metric")): r for r in rows}
    for student, teacher in teacher_pairs(models).items():
        for row in rows:
            if row["model"] != student:
                continue
            row["teacher"] = teacher.spec
            other = index.get((teacher.spec, row["kind"], row["set"], row.get("metric")))
            mine, theirs = _value(row), _value(other) if other else None
            row["gap"] = mine - theirs if mine is not None and theirs is not None else None
