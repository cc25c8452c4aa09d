"""The KD loss against values computed by hand."""

import math

import pytest
import torch

from hardctl.distill.losses import kd_divergence, kd_loss


def test_kd_matches_hand_computed_kl_at_t1():
    # teacher softmax [0.75, 0.25], student softmax [0.5, 0.5]
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    student = torch.tensor([[0.0, 0.0]])
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # 0.130812...
    assert kd_divergence(student, teacher, 1.0).item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.1308120, abs=1e-6)


def test_kd_scales_by_t_squared_and_averages_over_the_batch():
    # At T=2 the teacher logits [2 ln 3, 0] soften to the same [0.75, 0.25]; the second row has KL 0.
    teacher = torch.tensor([[2 * math.log(3.0), 0.0], [1.0, 2.0]])
    student = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    kl_row = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert kd_divergence(student, teacher, 2.0).item() == pytest.approx(4 * kl_row / 2, abs=1e-6)


def test_kd_is_zero_for_identical_logits_and_direction_is_teacher_first():
    logits = torch.randn(4, 10)
    assert kd_divergence(logits, logits, 5.0).item() == pytest.approx(0.0, abs=1e-6)
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    student = torch.tensor([[0.0, 0.0]])
    reverse = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)  # KL(student ‖ teacher) differs
    assert kd_divergence(student, teacher, 1.0).item() != pytest.approx(reverse, abs=1e-4)


def test_kd_loss_adds_weighted_cross_entropy():
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    student = torch.tensor([[0.0, 0.0]])
    labels = torch.tensor([1])
    parts = kd_loss(student, teacher, labels, temperature=1.0, kd_weight=0.5, ce_weight=2.0)
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    ce = math.log(2.0)
    assert parts["ce"].item() == pytest.approx(ce, abs=1e-6)
    assert parts["loss"].item() == pytest.approx(0.5 * kl + 2.0 * ce, abs=1e-6)
    assert "ce" not in kd_loss(student, teacher, labels, temperature=1.0)


def test_kd_gradient_flows_to_student_only_through_student_logits():
    student = torch.zeros(1, 2, requires_grad=True)
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    kd_divergence(student, teacher, 1.0).backward()
    # d/ds KL(p ‖ softmax(s)) = softmax(s) - p = [0.5 - 0.75, 0.5 - 0.25]
    assert student.grad[0].tolist() == pytest.approx([-0.25, 0.25], abs=1e-6)
