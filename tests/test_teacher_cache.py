"""The teacher's logits on clean training images, kept across HARD's augmentor steps (distill/teachercache.py)."""

from __future__ import annotations

import pytest
import torch

from hardctl.config import RunConfig
from hardctl.data import TensorImages
from hardctl.data.baselines import AugmentedImages
from hardctl.distill.build import build, resolve_config
from hardctl.distill.phases import AUGMENTOR
from hardctl.distill.teachercache import CleanTeacherLogits, serves_stored_images
from hardctl.distill.trainer import Trainer

SMALL = dict(data="digits", model="mnist_mlp", epochs=1, batch_size=64, lr=5e-3, aug_batch_size=48)


def _trainer(tmp_path, teacher, name, **overrides) -> Trainer:
    cfg = resolve_config(RunConfig(command="distill", teacher=str(teacher), **{**SMALL, **overrides}))
    (tmp_path / name).mkdir(parents=True)
    return Trainer(build(cfg), tmp_path / name)


def _augmentor_steps(trainer: Trainer, n: int) -> list[float]:
    trainer.start_run()
    trainer.hard.switch.force(AUGMENTOR, 0)
    torch.manual_seed(7)  # the same ε in both runs
    return [trainer.augmentor_step()["l_tt"] for _ in range(n)]


def test_cached_clean_logits_match_the_teacher_on_each_batch(tmp_path, digits_teacher):
    cached = _trainer(tmp_path, digits_teacher, "cached")
    plain = _trainer(tmp_path, digits_teacher, "plain")
    assert cached.clean_logits is not None
    plain.clean_logits = None  # the teacher on every clean batch, as without the table
    l_cached, l_plain = _augmentor_steps(cached, 6), _augmentor_steps(plain, 6)
    assert l_cached == pytest.approx(l_plain, rel=1e-4, abs=1e-9)  # the same term, up to float rounding
    for a, b in zip(cached.hard.augmentor.parameters(), plain.hard.augmentor.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # the table holds the teacher's logits on every stored training image, in the data set's order
    train = cached.components.data.train
    table = cached.clean_logits.logits
    assert table.shape == (len(train), 10)
    picks = torch.tensor([0, 5, len(train) - 1, 5])
    images = torch.stack([train[i][0] for i in picks.tolist()])
    torch.testing.assert_close(cached.clean_logits(picks), cached.task.teacher_logits(images), rtol=1e-5, atol=1e-5)


def test_the_table_is_computed_once_in_fixed_chunks():
    calls = []

    def teacher_logits(images):
        calls.append(len(images))
        return images.flatten(1)[:, :3] * 2  # a "teacher" whose logits are easy to check

    stored = TensorImages(torch.arange(300 * 4, dtype=torch.uint8).reshape(300, 1, 2, 2) % 251, torch.zeros(300))
    train = torch.utils.data.Subset(stored, list(range(0, 300, 1)))
    cache = CleanTeacherLogits(teacher_logits, train, torch.device("cpu"))
    assert calls == []  # nothing before the first augmentor step
    picks = torch.tensor([3, 299, 3])
    expected = torch.stack([train[i][0] for i in picks.tolist()]).flatten(1)[:, :3] * 2
    assert torch.equal(cache(picks), expected)
    assert calls == [256, 44]  # the whole table, in chunks of 256, whatever the first batch held
    assert torch.equal(cache(torch.tensor([7])), train[7][0].flatten()[:3][None] * 2) and calls == [256, 44]


def test_no_cache_where_it_would_not_be_the_same_computation(tmp_path, digits_teacher):
    stored = TensorImages(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.zeros(4))
    assert serves_stored_images(torch.utils.data.Subset(torch.utils.data.Subset(stored, [0, 1, 2]), [0, 1]))
    assert not serves_stored_images(AugmentedImages(stored, lambda x: x, name="identity"))
    for name, overrides in {"shift": {"augment": "shift"}, "mixup": {"mixup": 0.2}}.items():
        assert _trainer(tmp_path, digits_teacher, name, **overrides).clean_logits is None, name
    kd = _trainer(tmp_path, digits_teacher, "kd", augmentor="none")
    assert kd.clean_logits is None
    task = kd.task
    cpu = torch.device("cpu")
    assert CleanTeacherLogits.for_run(task, stored, num_classes=10, device=cpu) is not None
    assert CleanTeacherLogits.for_run(task, stored, num_classes=20_000_000, device=cpu) is None  # would not fit
