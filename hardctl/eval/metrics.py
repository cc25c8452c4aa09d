"""Per-set scores: top-1/top-5 accuracy and loss, on a class subset or against the ReaL labels.

A *scorer* consumes the logits of one batch at a time (``update``) and reports at the end
(``result``). Batches arrive in data-set order and are never shuffled. Counts are kept on the logits'
device, so a batch costs no host synchronisation, except for ReaL, whose label lists live on the host.

* :func:`top1_correct` / :func:`top1_accuracy`: the one top-1 comparison of hardctl (class indices or soft
  targets), used by the scorers here and by training's accuracy and HARD's switching statistic.
* :class:`TopK` is the standard 1000-way (or N-way) top-1/top-5 accuracy and mean cross-entropy. With
  ``logit_indices`` it first keeps only those logit columns, in that order, as hendrycks' ImageNet-A/R
  ``eval.py`` and timm's ``validate.py --valid-labels`` do: the targets are then positions in the
  subset (0..199), and the argmax runs over the subset, never over all 1000 classes.
* :class:`RealTopK` scores against the reassessed labels of Beyer et al. (2020): a prediction is
  right when it is any of the image's ReaL labels, and images whose label list is empty are left out
  of both the numerator and the denominator. The targets are the images' positions in the official
  validation set (``ILSVRC2012_val_00000001.JPEG`` is 0), so the order of the batches does not matter.
"""

from __future__ import annotations

import hashlib
import json
import pkgutil
from collections.abc import Sequence
from functools import lru_cache
from typing import Protocol

import torch
import torch.nn.functional as F

from hardctl.data.batchmix import hard_labels

__all__ = ["RealTopK", "Scorer", "TopK", "real_labels", "timm_info_file", "top1_accuracy", "top1_correct"]


def top1_correct(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per row of ``logits``, whether its argmax is the target: a bool tensor ``B``, left on the device.

    ``targets`` are class indices ``B`` or soft targets ``B×K`` (MixUp/CutMix, a teacher's logits), whose
    argmax is the class (:func:`hardctl.data.batchmix.hard_labels`). Every top-1 count of hardctl (the
    evaluation loop, training accuracy, HARD's disagreement with the teacher) is this comparison.
    """
    return logits.detach().argmax(-1) == hard_labels(targets).to(logits.device)


def top1_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Top-1 accuracy in % of one batch (see :func:`top1_correct`); NaN for an empty batch."""
    correct = top1_correct(logits, targets)
    return 100.0 * float(correct.float().mean()) if correct.numel() else float("nan")


class Scorer(Protocol):
    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None: ...

    def result(self) -> dict: ...


def timm_info_file(name: str) -> tuple[bytes, str]:
    """A file of ``timm/data/_info`` (shipped in the timm wheel) and its md5, for the record."""
    data = pkgutil.get_data("timm.data", f"_info/{name}")
    if data is None:  # pragma: no cover - a timm build without its _info files
        raise FileNotFoundError(f"timm.data/_info/{name}")
    return data, hashlib.md5(data).hexdigest()


@lru_cache(maxsize=1)
def real_labels() -> tuple[tuple[int, ...], ...]:
    """The ReaL label lists of the 50,000 validation images, from timm's copy of ``real.json``."""
    data, _ = timm_info_file("imagenet_real_labels.json")
    return tuple(tuple(int(c) for c in labels) for labels in json.loads(data))


class TopK:
    """Top-1 and top-k accuracy (%) and mean cross-entropy, optionally over a subset of logit columns."""

    def __init__(self, logit_indices: Sequence[int] | None = None, k: int = 5):
        self.logit_indices = list(logit_indices) if logit_indices is not None else None
        self.k = k
        self._index: torch.Tensor | None = None
        self._hits1 = self._hitsk = self._loss = None
        self.n = 0

    def _select(self, logits: torch.Tensor) -> torch.Tensor:
        if self.logit_indices is None:
            return logits
        if self._index is None or self._index.device != logits.device:
            if max(self.logit_indices) >= logits.shape[1]:
                raise ValueError(f"the set scores logit {max(self.logit_indices)} but the model has {logits.shape[1]}")
            self._index = torch.tensor(self.logit_indices, device=logits.device)
        return logits.index_select(1, self._index)

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        logits = self._select(logits.float())
        targets = targets.to(logits.device)
        hits1 = top1_correct(logits, targets).sum()
        k = min(self.k, logits.shape[1])
        hitsk = logits.topk(k, dim=1).indices.eq(hard_labels(targets)[:, None]).any(dim=1).sum()
        loss = F.cross_entropy(logits, targets, reduction="sum")  # soft targets B×K: their cross-entropy
        if self._hits1 is None:
            self._hits1, self._hitsk, self._loss = hits1, hitsk, loss
        else:
            self._hits1, self._hitsk, self._loss = self._hits1 + hits1, self._hitsk + hitsk, self._loss + loss
        self.n += len(targets)

    def result(self) -> dict:
        if self.n == 0:
            return {"images": 0, "acc": None, "top5": None, "loss": None}
        return {
            "images": self.n,
            "acc": 100.0 * int(self._hits1) / self.n,
            "top5": 100.0 * int(self._hitsk) / self.n,
            "loss": float(self._loss) / self.n,
        }


class RealTopK:
    """Top-1/top-k accuracy (%) against multi-label ReaL targets; images without a label are excluded."""

    def __init__(self, labels: Sequence[Sequence[int]] | None = None, k: int = 5):
        self.labels = labels if labels is not None else real_labels()
        self.k = k
        self.hits1 = self.hitsk = self.n = self.excluded = 0

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        top = logits.float().topk(min(self.k, logits.shape[1]), dim=1).indices.cpu().tolist()
        for preds, image in zip(top, targets.tolist(), strict=True):
            allowed = self.labels[image]
            if not allowed:
                self.excluded += 1
                continue
            self.n += 1
            self.hits1 += preds[0] in allowed
            self.hitsk += any(p in allowed for p in preds)

    def result(self) -> dict:
        base = {"images": self.n, "excluded": self.excluded, "loss": None}
        if self.n == 0:
            return {**base, "acc": None, "top5": None}
        return {**base, "acc": 100.0 * self.hits1 / self.n, "top5": 100.0 * self.hitsk / self.n}
