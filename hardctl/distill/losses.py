"""Knowledge-distillation losses.

The KD loss is Hinton et al.'s softened KL divergence, scaled by T² so that its gradients keep the
same magnitude whatever the temperature::

    L_KD = T² · KL( softmax(z_t / T) ‖ softmax(z_s / T) )      averaged over the batch ("batchmean")
    L    = w_kd · L_KD + w_ce · CE(z_s, y)

``y`` may be class indices ``B`` or soft targets ``B×K`` (MixUp/CutMix, :mod:`hardctl.data.batchmix`):
``CE(z, y) = −Σ_k y_k log softmax(z)_k``, batch mean. Label smoothing ``ε`` replaces ``y`` by
``(1−ε)·y + ε/K`` first (PyTorch's ``cross_entropy(label_smoothing=ε)``, for either form).

``KL(p ‖ q) = Σ_k p_k (log p_k − log q_k)`` with the teacher ``p`` as the target distribution, exactly
timm's ``--kd-temperature`` loss (``kl_div(log_q, log_p, log_target=True, reduction="batchmean")``)
and DeiT's soft distillation with ``batchmean`` instead of ``numel`` reduction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy, batch mean, in float32, against class indices ``B`` or soft targets ``B×K``."""
    if targets.ndim == 2:
        targets = targets.float()
    return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)


def kd_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T²·KL(teacher ‖ student)`` on temperature-softened distributions, mean over the batch.

    Computed in float32 even under autocast: log-softmax differences of nearly equal bf16 logits lose
    most of their bits.
    """
    t = float(temperature)
    log_q = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * (t * t)


def hard_objective(l_st: torch.Tensor, l_tt: torch.Tensor, *, lambda_s: float, lambda_t: float) -> torch.Tensor:
    """What HARD's augmentor maximises (paper section 4): ``λ_s·L_st − λ_t·L_tt``.

    ``L_st = D[f_s(x̃), f_t(x̃)]`` (the student disagrees with the teacher on the augmented image) and
    ``L_tt = D[f_t(x̃), f_t(x)]`` (the teacher no longer sees the same image), ``D`` being
    :func:`kd_divergence`. The engine's augmentor steps and the toy example both use this one function.
    """
    return lambda_s * l_st - lambda_t * l_tt


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    temperature: float = 5.0,
    kd_weight: float = 1.0,
    ce_weight: float = 0.0,
    label_smoothing: float = 0.0,
) -> dict[str, torch.Tensor]:
    """The distillation objective and its parts: ``{"loss", "kd", "ce"}`` (ce only when weighted).

    ``labels``: class indices or soft targets; ``label_smoothing`` applies to the CE term only.
    """
    kd = kd_divergence(student_logits, teacher_logits, temperature)
    parts = {"kd": kd}  # attached: HARD's augmentor ascends it (callers detach what they log)
    loss = kd_weight * kd
    if ce_weight:
        if labels is None:
            raise ValueError("ce_weight > 0 needs labels")
        ce = soft_cross_entropy(student_logits, labels, label_smoothing)
        parts["ce"] = ce.detach()
        loss = loss + ce_weight * ce
    parts["loss"] = loss
    return parts
