"""The student's optimiser and learning-rate schedule (paper appendix A).

* :func:`make_optimizer`: ``adam`` (the paper's MNIST/CIFAR optimiser; ``weight_decay`` is an L2 term),
  ``adamw``, ``lion`` (timm's Lion, the paper's ImageNet optimiser; decoupled weight decay) and ``sgd``
  (momentum 0.9, Nesterov).
* ``cosine``: linear warm-up, then cosine annealing to ``min_lr`` (:func:`lr_lambda`, per step). The
  paper's ImageNet schedule (appendix A.2, with a final value of 0).
* ``plateau``: :class:`PlateauSchedule`, appendix A.1 (CIFAR-10) and the MNIST recipes: linear warm-up,
  then a constant lr; after ``patience`` epochs without a better validation accuracy the lr is multiplied
  by ``factor`` and the best weights are restored (by the trainer); the run stops at the
  ``max_decays``-th decay.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from torch.optim.lr_scheduler import LRScheduler

from hardctl.config import OPTIMIZERS, SCHEDULES

__all__ = ["OPTIMIZERS", "SCHEDULES", "PlateauSchedule", "lr_lambda", "make_optimizer", "make_schedule",
           "IMPROVED", "WAIT", "DECAY", "STOP"]

SGD_MOMENTUM = 0.9

# what PlateauSchedule.observe returns
IMPROVED, WAIT, DECAY, STOP = "improved", "wait", "decay", "stop"


def make_optimizer(name: str, params: Iterable[torch.nn.Parameter], *, lr: float,
                   weight_decay: float) -> torch.optim.Optimizer:
    """The student's optimiser by name (one of :data:`OPTIMIZERS`)."""
    params = list(params)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "lion":
        from timm.optim import Lion

        return Lion(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=SGD_MOMENTUM, nesterov=True)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def warmup_scale(step: int, warmup_steps: int) -> float:
    """``(step + 1) / warmup_steps`` during the warm-up, 1 after it (step 0 is the first optimiser step)."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    return 1.0


def lr_lambda(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine annealing down to ``min_ratio``."""
    if warmup_steps and step < warmup_steps:
        return warmup_scale(step, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class PlateauSchedule(LRScheduler):
    """Warm-up, then a constant lr that decays when the validation accuracy stops improving.

    Stepped once per optimiser step like any scheduler (the warm-up is per step, as in ``cosine``); the
    lr of step ``s`` is ``base_lr * warmup_scale(s) * factor ** decays``. After every epoch the trainer
    calls :meth:`observe` with the validation accuracy:

    * a strictly higher accuracy than the best so far is an improvement (the first epoch always is);
    * ``patience`` consecutive epochs without one make a *decay*: the lr is multiplied by ``factor`` at
      once (the next step already uses it), the count of bad epochs restarts, and the trainer restores
      the best weights (the optimiser's moments are kept);
    * the ``max_decays``-th decay is a *stop*: the run ends after this epoch.

    Epochs of the warm-up count like any other. Everything here is plain numbers, so ``state_dict``
    (the base class's: every attribute but the optimiser) goes through ``torch.load(weights_only=True)``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, warmup_steps: int = 0, patience: int = 20,
                 factor: float = 0.8, max_decays: int = 5, last_epoch: int = -1) -> None:
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if patience < 1:
            raise ValueError(f"patience must be at least 1, got {patience}")
        if not 0 < factor < 1:
            raise ValueError(f"factor must be in (0, 1), got {factor}")
        if max_decays < 1:
            raise ValueError(f"max_decays must be at least 1, got {max_decays}")
        self.warmup_steps, self.patience, self.factor, self.max_decays = warmup_steps, patience, factor, max_decays
        self.best: float | None = None
        self.best_epoch = 0  # 1-based epoch of the best metric (0: none yet)
        self.bad_epochs = 0  # epochs since the last improvement or decay
        self.decays = 0
        self.epochs_seen = 0
        self.stopped_epoch: int | None = None  # the epoch after which the run stopped early
        super().__init__(optimizer, last_epoch)

    def scale(self, step: int) -> float:
        """The multiplier of the base lr at optimiser step ``step``."""
        return warmup_scale(step, self.warmup_steps) * self.factor ** self.decays

    def get_lr(self) -> list[float]:
        return [base * self.scale(self.last_epoch) for base in self.base_lrs]

    @property
    def stopped(self) -> bool:
        return self.stopped_epoch is not None

    def observe(self, metric: float) -> str:
        """Feed one epoch's validation accuracy; returns ``IMPROVED``, ``WAIT``, ``DECAY`` or ``STOP``."""
        if self.stopped:
            raise RuntimeError(f"the schedule already stopped after epoch {self.stopped_epoch}")
        self.epochs_seen += 1
        if self.best is None or metric > self.best:
            self.best, self.best_epoch, self.bad_epochs = float(metric), self.epochs_seen, 0
            return IMPROVED
        self.bad_epochs += 1
        if self.bad_epochs < self.patience:
            return WAIT
        self.bad_epochs = 0
        self.decays += 1
        self._apply_lr()
        if self.decays >= self.max_decays:
            self.stopped_epoch = self.epochs_seen
            return STOP
        return DECAY

    def _apply_lr(self) -> None:
        """Set the decayed lr now: the scheduler only writes the optimiser's lr when it steps."""
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def make_schedule(optimizer: torch.optim.Optimizer, cfg, steps_per_epoch: int) -> LRScheduler:
    """The run's schedule (``cfg.schedule``), stepped once per student step: warm-up of ``cfg.warmup_epochs``
    epochs, then cosine to ``cfg.min_lr`` over ``cfg.epochs`` epochs, or the plateau schedule."""
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.schedule == "plateau":  # appendix A.1: decays and best-weight restores in the trainer's end_epoch
        return PlateauSchedule(optimizer, warmup_steps=warmup, patience=cfg.plateau_patience,
                               factor=cfg.plateau_factor, max_decays=cfg.plateau_decays)
    total, min_ratio = steps_per_epoch * cfg.epochs, cfg.min_lr / cfg.lr
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_lambda(step, warmup_steps=warmup, total_steps=total, min_ratio=min_ratio))
