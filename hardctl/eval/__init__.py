"""Scoring classifiers on labelled image sets.

:func:`accuracy` streams a data set through a model (batched, no gradients, autocast on CUDA) and
counts top-1 hits. Evaluation suites, registered by plugins through
:func:`hardctl.hookspecs.register_eval_suites`, turn a data spec (or, for suites registered with
``sources=``, a ``--data-root`` and ``--set`` folders) into a list of :class:`EvalSet`.

The modules of this package, one concept each: :mod:`~hardctl.eval.sources` (finding the sets),
:mod:`~hardctl.eval.preprocess` (per-model preprocessing, image files),
:mod:`~hardctl.eval.imagenet` and :mod:`~hardctl.eval.arrays` (the built-in sets),
:mod:`~hardctl.eval.metrics` (per-set scores), :mod:`~hardctl.eval.corruptions` (mCE and friends),
:mod:`~hardctl.eval.engine` (the streaming loop), :mod:`~hardctl.eval.runner` (models x sets -> result
rows) and :mod:`~hardctl.eval.report` (table, JSON, CSV, Markdown). None of them imports the CLI.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from hardctl import plugins

__all__ = ["EvalSet", "accuracy", "autocast_for", "run_suite"]


@dataclass
class EvalSet:
    """One labelled test set of a suite.

    ``dataset`` yields ``(image, target)`` with images as float ``[0, 1]`` or uint8 ``C×H×W``; a set
    too large to list up front gives ``open`` instead, called when the set is scored (ImageNet-C has
    3.75 M files). ``preprocess`` says how images reach a model: ``"tensor"`` (as stored, the model
    must take ``img_size``), or, for image files, ``"crop"`` / ``"resize"`` per model (see
    :mod:`hardctl.eval.preprocess`). ``logit_indices`` restricts scoring to those logit columns (the
    targets are then positions in that list), ``scorer`` replaces top-k scoring (ReaL), and a set that
    was not found has ``skipped`` set to the reason, naming the paths looked for.
    """

    name: str
    dataset: Dataset | None = None
    description: str = ""
    num_classes: int = 0  # what a model must predict and take to be scored on this set
    in_chans: int = 0
    img_size: tuple[int, int] = (0, 0)  # (0, 0): each model's own input size (image-file sets)
    meta: dict = field(default_factory=dict)
    open: Callable[[], Dataset] | None = None
    preprocess: str = "tensor"
    logit_indices: Sequence[int] | None = None
    scorer: Callable[[], object] | None = None
    path: str = ""
    skipped: str = ""

    def load(self) -> Dataset:
        """The data set (``open()`` is called each time, so a lazily listed set is not kept around)."""
        if self.dataset is not None:
            return self.dataset
        if self.open is None:
            raise ValueError(f"eval set {self.name!r} has neither a dataset nor an open()")
        return self.open()


def autocast_for(device: torch.device, amp: str):
    """The autocast context for ``amp`` in ``{"bf16", "fp16", "off"}`` on ``device``."""
    if amp == "off":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def accuracy(
    model: nn.Module,
    dataset: Dataset,
    *,
    normalize: nn.Module | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    amp: str = "off",
    workers: int = 0,
) -> dict[str, float]:
    """Top-1 accuracy (in %) and mean cross-entropy of ``model`` on ``dataset``."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda")
    correct, total, loss_sum = 0, 0, 0.0
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if normalize is not None:
            images = normalize(images)
        with autocast_for(device, amp):
            logits = model(images)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(dim=-1) == labels).sum().item()
        total += labels.numel()
    model.train(was_training)
    if total == 0:
        return {"acc": float("nan"), "loss": float("nan"), "n": 0}
    return {"acc": 100.0 * correct / total, "loss": loss_sum / total, "n": total}


def run_suite(name: str, data_spec: str, **options) -> list[EvalSet]:
    """The test sets of suite ``name`` for ``data_spec`` (suites come from plugins)."""
    return plugins.eval_suites.get(name).obj(data_spec, **options)
