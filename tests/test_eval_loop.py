"""The one evaluation loop and the one top-1 comparison: a training run's ``accuracy`` and ``hardctl eval``'s
``score`` give the same numbers, and top-1 reads class indices and soft targets alike."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from hardctl.eval import accuracy
from hardctl.eval.engine import Feed, score
from hardctl.eval.metrics import TopK, top1_accuracy, top1_correct


class FixedLogits(nn.Module):
    """Returns row ``i`` of a fixed logit table for input value ``i`` (inputs are indices as floats)."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.register_buffer("table", table)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x.flatten(1)[:, 0].long()]


LOGITS = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0], [5.0, 0.0, 0.0], [0.0, 1.0, 4.0]])
LABELS = torch.tensor([0, 1, 0, 2, 2])  # hits on rows 0, 1 and 4: 3 of 5


def indexed_set() -> TensorDataset:
    return TensorDataset(torch.arange(len(LABELS), dtype=torch.float32)[:, None], LABELS)


def test_top1_reads_class_indices_and_soft_targets():
    assert top1_correct(LOGITS, LABELS).tolist() == [True, True, False, False, True]
    soft = torch.nn.functional.one_hot(LABELS, 3).float() * 0.6 + 0.1  # argmax = the label
    assert top1_correct(LOGITS, soft).tolist() == [True, True, False, False, True]
    assert top1_accuracy(LOGITS, LABELS) == pytest.approx(60.0)
    assert math.isnan(top1_accuracy(LOGITS[:0], LABELS[:0]))


def test_accuracy_is_the_scoring_loop_with_one_model():
    model = FixedLogits(LOGITS)
    got = accuracy(model, indexed_set(), batch_size=2)
    loss = torch.nn.functional.cross_entropy(LOGITS, LABELS).item()
    assert got == {"acc": pytest.approx(60.0), "loss": pytest.approx(loss), "n": 5}
    (scorer,), stats = score([Feed(model)], indexed_set(), TopK, batch_size=3)
    result = scorer.result()
    assert stats.images == 5 and result["acc"] == pytest.approx(got["acc"]) and result["loss"] == pytest.approx(loss)
    assert result["top5"] == pytest.approx(100.0)  # 3 classes: every label is among the top 5


def test_accuracy_restores_training_mode_and_reports_an_empty_set_as_nan():
    model = FixedLogits(LOGITS).train()
    empty = accuracy(model, TensorDataset(torch.zeros(0, 1), torch.zeros(0, dtype=torch.long)))
    assert empty["n"] == 0 and math.isnan(empty["acc"]) and math.isnan(empty["loss"])
    accuracy(model, indexed_set())
    assert model.training


def test_topk_scores_soft_targets_by_their_argmax():
    soft = torch.tensor([[0.7, 0.3, 0.0], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8], [0.0, 0.4, 0.6], [0.5, 0.5, 0.0]])
    scorer = TopK(k=1)
    scorer.update(LOGITS, soft)  # argmax targets 0, 1, 2, 2, 0: hits on rows 0, 1, 2
    expected = torch.nn.functional.cross_entropy(LOGITS, soft, reduction="sum").item() / 5
    assert scorer.result()["acc"] == pytest.approx(60.0) and scorer.result()["loss"] == pytest.approx(expected)
