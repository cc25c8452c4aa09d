"""Wiring: a :class:`~hardctl.config.RunConfig` becomes data, models, a task and (for HARD) an augmentor.

:func:`build` does every load that can fail on bad input before any training starts, so a wrong
model, data set or augmentor is reported in one line before a run directory holds anything.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn

from hardctl import plugins
from hardctl.augment import build_augmentor, resolve, resolved_options, split_name
from hardctl.config import RunConfig, default_select
from hardctl.data import DataBundle, load_data, parse_spec
from hardctl.data.batchmix import build_mixer
from hardctl.data.gpudecode import resolve_decode
from hardctl.data.baselines import augmented_train, parse_augment
from hardctl.device import select_amp, select_device
from hardctl.distill.tasks import DistillTask, SupervisedTask
from hardctl.models import ModelInfo, describe, load_for_data

__all__ = ["Components", "build", "resolve_config"]


@dataclass
class Components:
    """Everything :func:`build` makes from a config."""

    cfg: RunConfig
    data: DataBundle
    task: nn.Module
    student_info: ModelInfo
    teacher_info: ModelInfo | None
    device: torch.device
    amp: str
    notes: list[str] = field(default_factory=list)
    augmentor: nn.Module | None = None  # HARD's learned augmentor (distill with --augmentor)
    mixer: Any = None  # --mixup/--cutmix: (images, labels) -> (mixed images, soft targets), per training batch
    provenance: dict[str, Any] = field(default_factory=dict)  # which plugin (and version) supplied data, augmentor


def resolve_config(cfg: RunConfig) -> RunConfig:
    """``cfg`` checked against this machine and what is installed, with HARD's settings resolved: the device,
    the baseline augmentation names, and for HARD the augmentor (its options checked, its paper defaults
    filling the unset thresholds, λ's, learning rate and batch size). What a run's ``config.toml`` records."""
    cfg = cfg.validate()
    select_device(cfg.device)  # a device this machine lacks (cpu:1, cuda:3) is a usage error now, not after a run
    parse_augment(cfg.augment)  # an unknown part is a usage error naming it
    if cfg.select == "auto":
        cfg = dataclasses.replace(cfg, select=default_select(cfg.command))
    decode = resolve_decode(cfg.decode, select_device(cfg.device))  # auto -> cpu; gpu without CUDA: exit 2
    if decode != cfg.decode:
        cfg = dataclasses.replace(cfg, decode=decode)
    if not cfg.uses_hard:
        return cfg
    if cfg.aug_temperature is None:  # the augmentor's objective at the KD temperature unless told otherwise
        cfg = dataclasses.replace(cfg, aug_temperature=cfg.temperature)
    defaults = resolve(cfg.augmentor)[0].hard_defaults  # a composition takes its first part's (but each part's lr)
    return cfg.with_hard_defaults(defaults, resolved_options(cfg.augmentor, cfg.aug_options, aug_lr=cfg.aug_lr))


def build(cfg: RunConfig) -> Components:
    """Load data and models for ``cfg`` and wire them into a task. Raises on incompatible inputs."""
    cfg.validate()
    device = select_device(cfg.device)
    data = load_data(cfg.data, shift_px=cfg.shift_px, shift_seed=cfg.shift_seed, seed=cfg.seed)
    # Baseline augmentations: per image (--augment, --random-erasing), then per batch (--mixup/--cutmix, in
    # Trainer.prepare_batch); HARD's augmentor comes on top.
    aug_notes = []
    if cfg.augment != "none" or cfg.random_erasing > 0:
        data.train = augmented_train(data.train, cfg.augment, in_chans=data.in_chans, img_size=data.img_size,
                                     shift_px=data.info["shift_px"], seed=cfg.seed, random_erasing=cfg.random_erasing)
        aug_notes.append(f"per-image augmentation: {getattr(data.train, 'name', cfg.augment)}")
    mixer = build_mixer(data.num_classes, mixup=cfg.mixup, cutmix=cfg.cutmix, switch_prob=cfg.mix_switch_prob)
    if mixer is not None:
        aug_notes.append(f"batch mixing: {mixer!r} (soft targets)")
    sample = torch.stack([data.val[i][0] for i in range(min(2, len(data.val)))]).to(device)
    load = partial(load_for_data, data=data.spec, num_classes=data.num_classes, in_chans=data.in_chans,
                   img_size=data.img_size, sample=sample)
    torch.manual_seed(cfg.seed)  # the student's initialisation is part of the run's seed
    role = "model" if cfg.command == "train" else "student"
    student, student_info = load(role, cfg.model, pretrained=cfg.pretrained and cfg.command == "train")
    notes = [f"{role}: {describe(student_info)}", *aug_notes]
    teacher_info = None
    if cfg.command == "train":
        task: nn.Module = SupervisedTask(student, student_info, label_smoothing=cfg.label_smoothing)
    else:
        teacher, teacher_info = load("teacher", cfg.teacher, pretrained=cfg.pretrained, require_trained=True)
        notes.append(f"teacher: {describe(teacher_info)}")
        if (teacher_info.mean, teacher_info.std) != (student_info.mean, student_info.std):
            notes.append(
                f"inputs are re-normalised for the teacher: mean {teacher_info.mean} std {teacher_info.std} "
                f"(student: mean {student_info.mean} std {student_info.std})"
            )
        task = DistillTask(student, student_info, teacher, teacher_info, temperature=cfg.temperature,
                           kd_weight=cfg.kd_weight, ce_weight=cfg.ce_weight, label_smoothing=cfg.label_smoothing)
    augmentor = None
    if cfg.uses_hard:
        augmentor = build_augmentor(cfg.augmentor, cfg.aug_options, in_chans=data.in_chans,
                                    img_size=data.img_size).to(device)
        notes.append(f"augmentor: {cfg.augmentor} {cfg.aug_options}")
    task.to(device)
    return Components(cfg, data, task, student_info, teacher_info, device, select_amp(cfg.amp, device), notes,
                      augmentor, mixer, provenance(cfg))


def provenance(cfg: RunConfig) -> dict[str, Any]:
    """Which plugin and version supplied the run's data set and each part of its augmentor (for summary.json):
    a third-party package may register data sets and augmentors, and a result should say whose code made it."""
    supplied: dict[str, Any] = {"data": plugins.provenance("datasets", parse_spec(cfg.data)[0])}
    if cfg.uses_hard:
        supplied["augmentor"] = [plugins.provenance("augmentors", part) for part in split_name(cfg.augmentor)]
    return supplied
