"""Batch MixUp/CutMix (hardctl.data.batchmix), soft targets in the losses, and their wiring into train,
distill and HARD: real numbers, the teacher's input, the run directory, resume and bad values."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

from hardctl.config import RunConfig
from hardctl.data.batchmix import BatchMix, build_mixer, hard_labels
from hardctl.distill.losses import kd_loss, soft_cross_entropy
from hardctl.distill.tasks import SupervisedTask
from hardctl.errors import UsageError
from hardctl.models import ModelInfo
from hardctl.distill.build import resolve_config
from conftest import InterruptAt

B, K = 8, 10
BASELINE = ("--mixup", 1, "--cutmix", 1, "--augment", "standard+trivialaugment", "--random-erasing", 0.25)


def batch(seed: int = 0, size: int = 12):
    """Random-noise images (every pixel differs between images) and distinct labels 0..B-1."""
    images = torch.rand(B, 1, size, size, generator=torch.Generator().manual_seed(seed))
    return images, torch.arange(B)


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def mixup_lambdas(images, mixed):
    """λ_i from the pixels: mixed_i = λ_i·x_i + (1−λ_i)·x_{i−1} solved by least squares."""
    partner = images.roll(1, 0)
    d = (images - partner).flatten(1)
    return ((mixed - partner).flatten(1) * d).sum(1) / (d * d).sum(1)


def kind(images, mixed) -> str:
    """cutmix if every pixel is taken whole from x_i or x_{i−1}, else mixup."""
    whole = (mixed == images) | (mixed == images.roll(1, 0))
    return "cutmix" if bool(whole.all()) else "mixup"


# ------------------------------------------------------------------ the mixer itself
def test_mixup_images_are_convex_pairs_and_soft_labels_carry_lambda():
    images, labels = batch()
    kept = images.clone()
    mixer = BatchMix(K, mixup=1.0)
    torch.manual_seed(0)
    mixed, targets = mixer(images, labels)
    assert torch.equal(images, kept)  # the input batch is not modified
    lam = mixup_lambdas(images, mixed)
    assert torch.allclose(lam, lam[0].expand(B), atol=1e-5) and 0 < float(lam[0]) < 1  # one λ per batch
    lam = float(lam[0])
    assert torch.allclose(mixed, lam * images + (1 - lam) * images.roll(1, 0), atol=1e-6)
    assert targets.shape == (B, K) and targets.dtype == torch.float32
    expected = lam * F.one_hot(labels, K) + (1 - lam) * F.one_hot(labels.roll(1, 0), K)
    assert torch.allclose(targets, expected, atol=1e-6)  # the labels agree with λ read off the images
    torch.manual_seed(0)
    again = mixer(images, labels)
    assert torch.equal(again[0], mixed) and torch.equal(again[1], targets)  # same seed, same mix
    torch.manual_seed(1)
    assert not torch.equal(mixer(images, labels)[0], mixed)


def test_mixup_lambda_follows_beta_alpha():
    images, labels = batch()
    torch.manual_seed(0)
    small = torch.stack([mixup_lambdas(images, BatchMix(K, mixup=0.2)(images, labels)[0])[0] for _ in range(200)])
    large = torch.stack([mixup_lambdas(images, BatchMix(K, mixup=8.0)(images, labels)[0])[0] for _ in range(200)])
    # Beta(0.2, 0.2) piles up near 0 and 1, Beta(8, 8) near 1/2
    assert float((small - 0.5).abs().mean()) > 0.3 and float((large - 0.5).abs().mean()) < 0.12


def test_cutmix_soft_labels_equal_the_pasted_area_fraction():
    images, labels = batch(size=16)
    mixer = BatchMix(K, cutmix=1.0)
    torch.manual_seed(0)
    fractions = []
    for _ in range(30):
        mixed, targets = mixer(images, labels)
        pasted = (mixed != images).any(1)  # B×H×W: where x_{i−1} replaced x_i (noise images differ everywhere)
        assert torch.equal(pasted, pasted[:1].expand_as(pasted))  # one box for the batch
        box = pasted[0]
        if box.any():
            ys, xs = torch.nonzero(box, as_tuple=True)
            assert int(box.sum()) == int(ys.max() - ys.min() + 1) * int(xs.max() - xs.min() + 1)  # a rectangle
        assert torch.equal(mixed[:, :, box], images.roll(1, 0)[:, :, box])
        area = float(box.float().mean())
        fractions.append(area)
        expected = (1 - area) * F.one_hot(labels, K) + area * F.one_hot(labels.roll(1, 0), K)
        assert torch.allclose(targets, expected, atol=1e-6)
    assert 0.2 < sum(fractions) / len(fractions) < 0.8 and max(fractions) > 0.5  # areas really vary


@pytest.mark.parametrize("switch_prob, expected", [(1.0, {"cutmix"}), (0.0, {"mixup"}), (0.5, {"cutmix", "mixup"})])
def test_switch_prob_picks_the_mixer(switch_prob, expected):
    images, labels = batch()
    mixer = BatchMix(K, mixup=1.0, cutmix=1.0, switch_prob=switch_prob)
    assert isinstance(mixer.transform, v2.RandomChoice)
    assert mixer.transform.p == [switch_prob, 1 - switch_prob]  # [CutMix, MixUp]
    torch.manual_seed(0)
    kinds = [kind(images, mixer(images, labels)[0]) for _ in range(30)]
    assert set(kinds) == expected
    if switch_prob == 0.5:
        assert 5 <= kinds.count("cutmix") <= 25


def test_one_mixer_alone_and_none():
    assert build_mixer(K) is None
    assert isinstance(build_mixer(K, mixup=0.2).transform, v2.MixUp)
    assert isinstance(build_mixer(K, cutmix=1.0, switch_prob=0.0).transform, v2.CutMix)  # switch needs both
    with pytest.raises(ValueError, match="integer labels"):
        build_mixer(K, mixup=1.0)(*batch()[:1], torch.zeros(B, K))
    with pytest.raises(UsageError, match="--mix-switch-prob"):
        BatchMix(K, mixup=1.0, switch_prob=2.0)


def test_hard_labels_is_the_argmax_of_soft_targets():
    assert torch.equal(hard_labels(torch.tensor([[0.3, 0.7], [0.9, 0.1]])), torch.tensor([1, 0]))
    assert torch.equal(hard_labels(torch.tensor([3, 1])), torch.tensor([3, 1]))


# ------------------------------------------------------------------ the losses
def test_soft_target_cross_entropy_equals_the_hand_computation_with_label_smoothing():
    torch.manual_seed(0)
    logits = torch.randn(B, K)
    torch.manual_seed(1)
    _, targets = BatchMix(K, mixup=1.0)(*batch())
    for eps in (0.0, 0.1):
        smoothed = (1 - eps) * targets + eps / K
        by_hand = -(smoothed * torch.log_softmax(logits, -1)).sum(-1).mean()
        assert float(soft_cross_entropy(logits, targets, eps)) == pytest.approx(float(by_hand), rel=1e-6)
        student = nn.Sequential(nn.Flatten(), nn.Identity())
        task = SupervisedTask(student, ModelInfo(arch="id", num_classes=K, in_chans=1, img_size=(K, 1), mean=(0.0,),
                                                 std=(1.0,)), label_smoothing=eps)
        out = task(logits.view(B, 1, K, 1), targets)
        assert float(out["loss"]) == pytest.approx(float(by_hand), rel=1e-6)
        # the KD objective's CE term: the same soft cross-entropy with the same smoothing
        teacher = torch.randn(B, K)
        parts = kd_loss(logits, teacher, targets, temperature=2.0, kd_weight=0.5, ce_weight=0.3, label_smoothing=eps)
        assert float(parts["ce"]) == pytest.approx(float(by_hand), rel=1e-6)
        assert float(parts["loss"]) == pytest.approx(0.5 * float(parts["kd"]) + 0.3 * float(by_hand), rel=1e-6)
    hard = torch.arange(B) % K  # integer labels still work, smoothing included
    assert float(soft_cross_entropy(logits, hard, 0.1)) == pytest.approx(
        float(F.cross_entropy(logits, hard, label_smoothing=0.1)), rel=1e-6)


# ------------------------------------------------------------------ wiring
def test_the_kd_teacher_sees_the_mixed_batch_and_the_loss_gets_soft_targets(tmp_path, digits_teacher):
    from hardctl.distill.build import build
    from hardctl.distill.trainer import Trainer

    cfg = RunConfig(command="distill", teacher=str(digits_teacher), model="mnist_mlp", augmentor="none",
                    mixup=1.0, cutmix=1.0, ce_weight=0.5, label_smoothing=0.1, batch_size=32)
    trainer = Trainer(build(cfg), tmp_path / "run")
    task = trainer.task
    seen = {"teacher": [], "student": []}
    task.teacher.register_forward_pre_hook(lambda m, args: seen["teacher"].append(args[0].detach().clone()))
    task.student.register_forward_pre_hook(lambda m, args: seen["student"].append(args[0].detach().clone()))
    losses = []
    original = task.loss
    task.loss = lambda s, t, y: losses.append(y) or original(s, t, y)
    images, labels = next(iter(trainer.loader))
    for seed in range(6):  # both mixers get their turn
        torch.manual_seed(seed)
        mixed, targets = trainer.prepare_batch(images, labels)
        torch.manual_seed(seed)
        expected = BatchMix(10, mixup=1.0, cutmix=1.0)(images, labels)
        assert torch.equal(mixed, expected[0]) and torch.equal(targets, expected[1]) and targets.shape == (32, 10)
        metrics = trainer.student_step(mixed, targets)
        assert torch.equal(seen["teacher"][-1], task.teacher_normalize(mixed))  # the teacher sees the mixed batch
        assert torch.equal(seen["student"][-1], task.student_normalize(mixed))
        assert not torch.equal(seen["teacher"][-1], task.teacher_normalize(images))
        assert losses[-1] is targets and "ce" in metrics and 0 <= metrics["train_acc"] <= 100


def test_hard_augmentor_batches_are_mixed_too(tmp_path, digits_teacher):
    from hardctl.distill.build import build
    from hardctl.distill.trainer import Trainer

    cfg = resolve_config(RunConfig(command="distill", teacher=str(digits_teacher), model="mnist_mlp", augmentor="affine",
                    mixup=0.2, switch_on="labels", aug_batch_size=16))
    (tmp_path / "run").mkdir()
    trainer = Trainer(build(cfg), tmp_path / "run")
    trainer.start_run()  # the pool starts with the identity entry
    images, targets = trainer.prepare_batch(*trainer.hard.draw_batch(trainer.components.data.train)[:2])
    assert images.shape == (16, 1, 16, 16) and targets.shape == (16, 10)
    assert torch.allclose(targets.sum(1), torch.ones(16)) and bool((targets.max(1).values < 1).any())
    trainer.augmentor_step()  # the switching error against soft labels uses their argmax
    metrics = trainer.student_step(*trainer.prepare_batch(*next(iter(trainer.loader))), entry=0)
    assert 0 <= metrics["train_acc"] <= 100 and 0 <= metrics["aug_error"] <= 1


def test_train_and_distill_end_to_end_with_every_baseline_augmentation(cli, tmp_path, digits_teacher):
    result = cli("train", "--model", "mnist_mlp", "--data", "digits", "--epochs", 1, "--label-smoothing", 0.1,
                 *BASELINE, "--out", tmp_path / "train", "--json")
    assert result.code == 0, result.err
    saved = RunConfig.load(tmp_path / "train")
    assert (saved.mixup, saved.cutmix, saved.mix_switch_prob, saved.random_erasing, saved.augment) == (
        1.0, 1.0, 0.5, 0.25, "standard+trivialaugment")
    log = (tmp_path / "train" / "log.txt").read_text()
    assert "per-image augmentation: standard+trivialaugment+random-erasing(0.25)" in log and "BatchMix(" in log
    steps = read(tmp_path / "train" / "steps.jsonl")
    assert len(steps) == 11 and all(0 <= s["train_acc"] <= 100 and s["loss"] > 0 for s in steps)
    assert 0 <= json.loads(result.out)["student"]["test_acc"] <= 100

    result = cli("distill", "--teacher", digits_teacher, "--student", "mnist_mlp", "--data", "digits", "--epochs", 1,
                 "--augmentor", "none", "--ce-weight", 0.5, "--label-smoothing", 0.1, *BASELINE,
                 "--out", tmp_path / "kd", "--json")
    assert result.code == 0, result.err
    saved = RunConfig.load(tmp_path / "kd")
    assert (saved.mixup, saved.cutmix, saved.random_erasing, saved.label_smoothing) == (1.0, 1.0, 0.25, 0.1)
    steps = read(tmp_path / "kd" / "steps.jsonl")
    assert all("ce" in s and "kd" in s for s in steps)


def test_hard_distill_with_mixup_runs(cli, tmp_path, digits_teacher):
    result = cli("distill", "--teacher", digits_teacher, "--student", "mnist_mlp", "--data", "digits", "--epochs", 1,
                 "--mixup", 0.2, "--augmentor", "affine", "--out", tmp_path / "hard", "--json")
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert summary["hard"]["augmentor"] == "affine" and 0 <= summary["student"]["test_acc"] <= 100
    assert RunConfig.load(tmp_path / "hard").mixup == 0.2



def test_a_resumed_run_mixes_and_augments_as_one_never_stopped(tmp_path):
    from hardctl.distill.run import run

    cfg = RunConfig(command="train", model="mnist_mlp", epochs=2, batch_size=128, mixup=1.0, cutmix=1.0,
                    augment="shift+trivialaugment", random_erasing=0.25)
    run(cfg, tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "resumed", reporter=InterruptAt(step=15))  # in the middle of epoch 2
    run(RunConfig.load(tmp_path / "resumed"), tmp_path / "resumed", resume=True)
    assert read(tmp_path / "resumed" / "steps.jsonl") == read(tmp_path / "straight" / "steps.jsonl")
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)["student"]
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=True)["student"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("args, fragment", [
    (("--mixup", -1), "--mixup must be >= 0"),
    (("--cutmix", -0.5), "--cutmix must be >= 0"),
    (("--mix-switch-prob", 1.5), "--mix-switch-prob must be a probability in [0, 1]"),
    (("--random-erasing", 2), "--random-erasing must be a probability in [0, 1]"),
    (("--augment", "standard+trivalaugment"), "unknown augmentation 'trivalaugment' in --augment"),
])
@pytest.mark.parametrize("command", ["train", "distill"])
def test_bad_values_are_one_line_usage_errors(cli, tmp_path, command, args, fragment):
    extra = ("--teacher", tmp_path / "no-teacher") if command == "distill" else ()
    result = cli(command, "--data", "digits", *extra, *args, "--out", tmp_path / "r")
    assert result.code == 2, result.err
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("hardctl: error: ") and fragment in lines[0], result.err
    assert not (tmp_path / "r").exists()
