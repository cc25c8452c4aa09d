"""What one training step computes, as modules that own their loss (timm's ``TrainingTask`` idea).

A task takes a batch of pixels in ``[0, 1]`` and labels and returns ``{"loss", "logits", ...}``; the
labels are class indices ``B`` or, after MixUp/CutMix (:mod:`hardctl.data.batchmix`), soft targets
``B×K``. Each model normalises its own input with its own mean/std, so a teacher trained with other
statistics than the student gets correctly re-normalised pixels (timm's
``DistillationTeacher.normalize_input``).
Only ``task.student`` is trained; under DDP only it is wrapped, and only it is checkpointed.
"""

from __future__ import annotations

import torch
from torch import nn

from hardctl.distill.losses import kd_divergence, kd_loss, soft_cross_entropy
from hardctl.models import InputNormalize, ModelInfo


class SupervisedTask(nn.Module):
    """Plain supervised training with cross-entropy: the paper's "Teacher only"/"Student only" rows."""

    def __init__(self, student: nn.Module, info: ModelInfo, *, label_smoothing: float = 0.0):
        super().__init__()
        self.student = student
        self.student_normalize = InputNormalize(info.mean, info.std)
        self.label_smoothing = label_smoothing

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.student(self.student_normalize(images))
        loss = soft_cross_entropy(logits, labels, self.label_smoothing)
        return {"loss": loss, "logits": logits, "ce": loss.detach()}


class DistillTask(nn.Module):
    """Knowledge distillation from a frozen teacher (see :mod:`hardctl.distill.losses`)."""

    def __init__(
        self,
        student: nn.Module,
        student_info: ModelInfo,
        teacher: nn.Module,
        teacher_info: ModelInfo,
        *,
        temperature: float,
        kd_weight: float = 1.0,
        ce_weight: float = 0.0,
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        self.student = student
        self.student_normalize = InputNormalize(student_info.mean, student_info.std)
        self.teacher = teacher.eval().requires_grad_(False)
        self.teacher_normalize = InputNormalize(teacher_info.mean, teacher_info.std)
        self.temperature, self.kd_weight, self.ce_weight = temperature, kd_weight, ce_weight
        self.label_smoothing = label_smoothing  # of the CE term only; the KD term's target is the teacher

    def train(self, mode: bool = True) -> "DistillTask":
        super().train(mode)
        self.teacher.eval()  # dropout/batch-norm of the teacher stay frozen while the student trains
        return self

    @torch.no_grad()
    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.teacher(self.teacher_normalize(images))

    def loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
             labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The KD objective with this task's temperature and weights (HARD's steps reuse it on x̃)."""
        return kd_loss(student_logits, teacher_logits, labels, temperature=self.temperature,
                       kd_weight=self.kd_weight, ce_weight=self.ce_weight, label_smoothing=self.label_smoothing)

    def forward(self, images: torch.Tensor, labels: torch.Tensor, *,
                input_grad: bool = False) -> dict[str, torch.Tensor]:
        """The KD objective on ``images``: ``{"loss", "kd", ["ce"], "logits", "teacher_logits"}``.

        The teacher sees the very batch the student sees (mixed, when --mixup/--cutmix are on; augmented,
        in HARD). ``input_grad``: gradients reach ``images`` through the teacher as well (its parameters
        stay frozen), which HARD's augmentor needs; otherwise the teacher runs without autograd.
        """
        logits = self.student(self.student_normalize(images))
        if input_grad:
            teacher_logits = self.teacher(self.teacher_normalize(images))
        else:
            teacher_logits = self.teacher_logits(images)
        return {**self.loss(logits, teacher_logits, labels), "logits": logits, "teacher_logits": teacher_logits}

    def invariance(self, teacher_logits: torch.Tensor, clean_logits: torch.Tensor, *,
                   temperature: float | None = None) -> torch.Tensor:
        """HARD's teacher–teacher term ``L_tt = D[f_t(x̃), f_t(x)]``: how far the teacher's view of the
        augmented batch (``teacher_logits``) moved from its view of the clean one (``clean_logits``, a constant
        target: :meth:`teacher_logits` of the clean batch)."""
        t = self.temperature if temperature is None else temperature
        return kd_divergence(teacher_logits, clean_logits, t)
