"""The frozen teacher's logits on the clean training images, computed once per run for HARD's augmentor steps.

Every augmentor step needs the teacher on its clean batch for the teacher–teacher term
``L_tt = D[f_t(x̃), f_t(x)]``. The teacher is frozen and the batch is drawn from the stored training images,
so a run would recompute the same logits thousands of times: on the default recipe that is a third of an
augmentor step (one teacher forward of the three in it). :class:`CleanTeacherLogits` computes the table of
every training image's logits at the first augmentor step, in fixed chunks in the data set's order, and
steps look their rows up.

The table depends only on the teacher and the data, never on which batches came first, so a resumed run
rebuilds exactly the table the uninterrupted one had (nothing goes into checkpoints) and every rank of a
torchrun job holds the same one. Against computing the logits with each step's batch it differs at most in
the last bits (a kernel may round differently for another batch size).

It is used only where it is the same computation: images served exactly as stored (no per-image random
transform such as ``--augment``, no MixUp/CutMix on the augmentor's batch) and a table that fits in memory.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Subset

from hardctl.data import TensorImages

__all__ = ["CleanTeacherLogits", "serves_stored_images"]

MAX_ENTRIES = 20_000_000  # images × classes kept at most (80 MB of float32): CIFAR-100 fits, ImageNet does not


def serves_stored_images(dataset: Dataset) -> bool:
    """Whether ``dataset[i]`` is the i-th stored image as it is, every time (no random transform)."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return isinstance(dataset, TensorImages)


class CleanTeacherLogits:
    """The teacher's logits on every image of ``train``, computed at the first lookup; rows by image index."""

    CHUNK = 256  # images per teacher forward while the table is computed (fixed: the table is reproducible)

    def __init__(self, teacher_logits, train: Dataset, device: torch.device):
        self.teacher_logits, self.train, self.device = teacher_logits, train, device
        self.logits: torch.Tensor | None = None

    @classmethod
    def for_run(cls, task, train: Dataset, *, num_classes: int, device: torch.device,
                mixer=None) -> "CleanTeacherLogits | None":
        """The table for a run's augmentor steps, or None where it would not be the same computation."""
        if mixer is not None or not serves_stored_images(train):
            return None
        if len(train) * num_classes > MAX_ENTRIES:
            return None
        return cls(task.teacher_logits, train, device)

    def compute(self) -> torch.Tensor:
        """The whole table, chunk by chunk in the data set's order (called by the caller's autocast context)."""
        rows = []
        for start in range(0, len(self.train), self.CHUNK):
            indices = range(start, min(start + self.CHUNK, len(self.train)))
            images = torch.stack([self.train[i][0] for i in indices]).to(self.device)
            rows.append(self.teacher_logits(images))
        return torch.cat(rows)

    def __call__(self, picks: torch.Tensor) -> torch.Tensor:
        """The teacher's logits on training images ``picks`` (as a step's clean batch holds them)."""
        if self.logits is None:
            self.logits = self.compute()
        return self.logits[picks.to(self.logits.device)]
