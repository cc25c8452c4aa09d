"""Batch-level MixUp and CutMix (``--mixup``, ``--cutmix``, ``--mix-switch-prob``): the paper's baselines.

:class:`BatchMix` takes a batch of images ``B×C×H×W`` and integer labels ``B`` and returns mixed
images and *soft targets* ``B×K`` (float rows summing to 1). It wraps ``torchvision.transforms.v2``:

* ``v2.MixUp(alpha)``: ``λ ~ Beta(α, α)``, one per batch; image ``i`` becomes
  ``λ·x_i + (1−λ)·x_{i−1}`` (the batch rolled by one) and its target ``λ·e_{y_i} + (1−λ)·e_{y_{i−1}}``.
* ``v2.CutMix(alpha)``: ``λ ~ Beta(α, α)``; a box of area about ``(1−λ)·H·W`` at a uniform centre
  (clipped at the border) is pasted from ``x_{i−1}`` into ``x_i``; the target weights ``y_{i−1}``
  by the pasted area fraction actually used, ``y_i`` by the rest.
* both on: ``v2.RandomChoice`` picks CutMix with probability ``switch_prob`` and MixUp otherwise, per
  batch (timm's ``--mixup-switch-prob``; the paper's ImageNet KD recipe is ``--mixup 1 --cutmix 1``).

The trainer applies it to each training batch (and HARD to each augmentor batch) after the
per-image ``--augment`` pipeline and before a learned augmentor, so a KD teacher sees the same mixed
images as the student. All draws (λ, box, which mixer) come from the global CPU torch generator,
which the trainer seeds and checkpoints: a resumed run mixes exactly as one never interrupted, on
any device.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from hardctl.errors import UsageError


class BatchMix:
    """MixUp and/or CutMix of a batch: ``(images, labels) -> (mixed images, soft targets B×K)``."""

    def __init__(self, num_classes: int, *, mixup: float = 0.0, cutmix: float = 0.0, switch_prob: float = 0.5):
        if mixup < 0 or cutmix < 0:
            raise UsageError(f"--mixup and --cutmix must be >= 0, got {mixup} and {cutmix}")
        if not 0 <= switch_prob <= 1:
            raise UsageError(f"--mix-switch-prob must be a probability in [0, 1], got {switch_prob}")
        if not mixup and not cutmix:
            raise UsageError("BatchMix needs --mixup or --cutmix above 0")
        if num_classes < 2:
            raise UsageError(f"MixUp/CutMix need at least 2 classes, the data has {num_classes}")
        self.num_classes, self.mixup, self.cutmix, self.switch_prob = int(num_classes), mixup, cutmix, switch_prob
        mixers, weights = [], []
        if cutmix:
            mixers.append(v2.CutMix(alpha=float(cutmix), num_classes=self.num_classes))
            weights.append(switch_prob if mixup else 1.0)
        if mixup:
            mixers.append(v2.MixUp(alpha=float(mixup), num_classes=self.num_classes))
            weights.append(1.0 - switch_prob if cutmix else 1.0)
        self.transform = mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers, p=weights)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if labels.ndim != 1:  # already soft: mixing twice would be a wiring bug
            raise ValueError(f"BatchMix expects integer labels of shape (B,), got {tuple(labels.shape)}")
        return self.transform(images, labels)

    def __repr__(self) -> str:
        return (f"BatchMix(num_classes={self.num_classes}, mixup={self.mixup}, cutmix={self.cutmix}, "
                f"switch_prob={self.switch_prob})")


def build_mixer(num_classes: int, *, mixup: float = 0.0, cutmix: float = 0.0,
                switch_prob: float = 0.5) -> BatchMix | None:
    """The batch mixer of ``--mixup/--cutmix``, or ``None`` when both are 0."""
    if not mixup and not cutmix:
        return None
    return BatchMix(num_classes, mixup=mixup, cutmix=cutmix, switch_prob=switch_prob)


def hard_labels(targets: torch.Tensor) -> torch.Tensor:
    """Class indices of ``targets``: the argmax of soft targets ``B×K``, integer labels unchanged."""
    return targets.argmax(-1) if targets.ndim == 2 else targets


__all__ = ["BatchMix", "build_mixer", "hard_labels"]
