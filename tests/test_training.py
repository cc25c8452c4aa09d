"""The trainer: run directory contents, resume equivalence, determinism, schedule, non-finite loss."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from hardctl.config import RunConfig
from hardctl.distill import rundir
from hardctl.distill.tasks import SupervisedTask
from hardctl.distill.run import run
from hardctl.distill.schedules import lr_lambda
from hardctl.errors import TrainingError, UsageError
from conftest import InterruptAt

TINY = dict(data="digits", model="mnist_mlp", epochs=3, batch_size=128, lr=2e-3, warmup_epochs=1.0)


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]



def test_run_directory_has_every_artifact(tmp_path):
    summary = run(RunConfig(command="train", **TINY), tmp_path / "run")
    run_dir = tmp_path / "run"
    for name in ("config.toml", "steps.jsonl", "epochs.jsonl", "model.safetensors", "last.safetensors", "best.safetensors",
                 "checkpoints/last.pt", "checkpoints/best.pt", "summary.json", "log.txt"):
        assert (run_dir / name).is_file(), name
    assert not list(run_dir.rglob(".*.tmp"))  # atomic writes leave no temp files
    steps, epochs = read(run_dir / "steps.jsonl"), read(run_dir / "epochs.jsonl")
    assert len(steps) == 3 * 11 and [s["step"] for s in steps] == list(range(1, 34))  # 1293 images / 128
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert summary["best_val_acc"] == max(e["val_acc"] for e in epochs)
    assert all(0 <= e["val_shifted_acc"] <= 100 for e in epochs)  # logged next to the centered one, never selected on
    with safe_open(run_dir / "model.safetensors", "pt") as fh:
        meta = fh.metadata()
    assert meta["arch"] == "hard_mnist_mlp" and meta["num_classes"] == "10" and meta["data"] == "digits"
    assert RunConfig.load(run_dir) == RunConfig(command="train", select="best", **TINY)  # --select auto, resolved
    assert summary["student"]["test_acc"] > 60  # 3 epochs of an MLP on digits already learn something
    assert summary["plugins"]["data"]["plugin"] == "builtin_datasets"  # who supplied the data set
    assert summary["plugins"]["data"]["distribution"] == "hardctl" and "augmentor" not in summary["plugins"]


def test_distill_checkpoint_never_contains_the_teacher(tmp_path, digits_teacher):
    run(RunConfig(command="distill", teacher=str(digits_teacher), augmentor="none", **{**TINY, "epochs": 1}),
        tmp_path / "kd")
    state = rundir.load_checkpoint(tmp_path / "kd" / "checkpoints" / "last.pt")
    keys = set(state["student"])
    assert keys and not any("teacher" in k or k.startswith("conv") for k in keys)
    with safe_open(tmp_path / "kd" / "model.safetensors", "pt") as fh:
        assert set(fh.keys()) == keys


@pytest.mark.slow
def test_interrupted_and_resumed_run_ends_with_the_same_metrics(tmp_path, digits_teacher):
    cfg = RunConfig(command="distill", teacher=str(digits_teacher), augmentor="none", **TINY)
    straight = run(cfg, tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "resumed", reporter=InterruptAt(step=20))  # in the middle of epoch 2
    assert [e["epoch"] for e in read(tmp_path / "resumed" / "epochs.jsonl")] == [1]
    resumed = run(RunConfig.load(tmp_path / "resumed"), tmp_path / "resumed", resume=True)
    for key in ("best_val_acc", "student", "teacher", "steps"):
        assert resumed[key] == straight[key], key
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time_s"} for r in rows]  # noqa: E731
    assert strip(read(tmp_path / "resumed" / "epochs.jsonl")) == strip(read(tmp_path / "straight" / "epochs.jsonl"))
    assert read(tmp_path / "resumed" / "steps.jsonl") == read(tmp_path / "straight" / "steps.jsonl")
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)["student"]
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=True)["student"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_same_run_other_seed_other_run(tmp_path):
    cfg = RunConfig(command="train", **{**TINY, "epochs": 1})
    first, second = run(cfg, tmp_path / "a"), run(cfg, tmp_path / "b")
    other = run(RunConfig(command="train", **{**TINY, "epochs": 1, "seed": 1}), tmp_path / "c")
    assert read(tmp_path / "a" / "steps.jsonl") == read(tmp_path / "b" / "steps.jsonl")
    assert first["student"] == second["student"]
    assert read(tmp_path / "a" / "steps.jsonl")[0]["loss"] != read(tmp_path / "c" / "steps.jsonl")[0]["loss"]
    assert other["steps"] == first["steps"]


def test_warmup_then_cosine_schedule():
    f = lambda s: lr_lambda(s, warmup_steps=4, total_steps=14, min_ratio=0.1)  # noqa: E731
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0)
    assert f(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(14) == pytest.approx(0.1) and f(100) == pytest.approx(0.1)


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    original = SupervisedTask.forward
    calls = {"n": 0}

    def poisoned(self, images, labels):  # 11 good steps (epoch 1), then NaN
        out = original(self, images, labels)
        calls["n"] += 1
        if calls["n"] > 11:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(SupervisedTask, "forward", poisoned)
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"the loss became nan at epoch 2, step 12; the last good checkpoint .*last.pt is intact"):
        run(RunConfig(command="train", **{**TINY, "epochs": 2}), run_dir)
    state = rundir.load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["epoch"] == 1 and state["step"] == 11
    assert [e["epoch"] for e in read(run_dir / "epochs.jsonl")] == [1]
    assert not list(run_dir.rglob(".*.tmp"))


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_paths_train_and_only_fp16_scales(tmp_path, amp):
    from hardctl.distill.build import build
    from hardctl.distill.trainer import Trainer

    parts = build(RunConfig(command="train", **{**TINY, "epochs": 1, "amp": amp}))
    trainer = Trainer(parts, tmp_path)
    assert trainer.amp == amp and trainer.scaler.is_enabled() == (amp == "fp16")
    images, labels = next(iter(trainer.loader))
    metrics = trainer.student_step(*trainer.prepare_batch(images, labels))
    assert math.isfinite(metrics["loss"]) and trainer.step_count == 1


def test_teacher_with_other_statistics_gets_renormalised_input(tmp_path, digits_teacher):
    import dataclasses

    from hardctl.distill.build import build
    from hardctl.models import load_model, save_model

    teacher, info = load_model(str(digits_teacher))
    odd = dataclasses.replace(info, mean=(0.5,), std=(0.25,))
    save_model(teacher, odd, tmp_path / "teacher.safetensors")
    parts = build(RunConfig(command="distill", teacher=str(tmp_path / "teacher.safetensors"), **TINY))
    assert any("re-normalised for the teacher: mean (0.5,) std (0.25,)" in note for note in parts.notes)
    x = torch.full((1, 1, 16, 16), 0.75)
    assert torch.allclose(parts.task.teacher_normalize(x), torch.full_like(x, 1.0))  # (0.75 - 0.5) / 0.25
    assert torch.equal(parts.task.student_normalize(x), x)  # the MLP takes raw pixels (mean 0, std 1)
    same = build(RunConfig(command="distill", teacher=str(digits_teacher), **TINY))
    assert not any("re-normalised" in note for note in same.notes)


def test_ranks_split_one_permutation_per_epoch():
    from hardctl.distill.sampling import DistInfo, EpochSampler

    ranks = [EpochSampler(10, seed=3, dist=DistInfo(rank=r, world_size=3)) for r in range(3)]
    for epoch in (0, 1):
        for sampler in ranks:
            sampler.set_epoch(epoch)
        parts = [list(s) for s in ranks]
        assert sorted(sum(parts, [])) == list(range(10))  # disjoint and complete
        assert [len(p) for p in parts] == [4, 3, 3] == [len(s) for s in ranks]
    single = EpochSampler(10, seed=3)
    single.set_epoch(0)
    first = list(single)
    single.set_epoch(1)
    assert list(single) != first
    single.set_epoch(0)
    assert list(single) == first


def test_torchrun_world_is_refused_until_supported(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UsageError, match="torchrun"):
        run(RunConfig(command="train", **{**TINY, "epochs": 1}), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_progress_is_a_rich_bar_on_a_terminal_and_plain_lines_elsewhere():
    import io

    from hardctl.distill.progress import PlainReporter, RichReporter, reporter_for

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert isinstance(reporter_for(Terminal()), RichReporter)
    stream = io.StringIO()
    reporter = reporter_for(stream, every=4)
    assert isinstance(reporter, PlainReporter)
    reporter.start_epoch(2, 3, 10)
    for step in range(1, 11):
        reporter.step({"step": step, "loss": 1.0 / step, "lr": 1e-3})
    lines = stream.getvalue().splitlines()
    assert [line.split(" loss")[0] for line in lines] == ["epoch 2/3 step 4/10", "epoch 2/3 step 8/10",
                                                         "epoch 2/3 step 10/10"]
    assert "loss 0.2500 lr 1.00e-03" in lines[0]


@pytest.mark.parametrize("command, select, reported", [("train", "auto", "best"), ("train", "last", "last"),
                                                       ("distill", "auto", "last"), ("distill", "best", "best")])
def test_select_decides_which_model_the_run_reports_and_keeps_the_other(tmp_path, digits_teacher, monkeypatch,
                                                                         command, select, reported):
    """--select: summary.json's student and model.safetensors are the last or the best-validation weights; both
    candidates are scored and kept. Validation accuracy is scripted so the best epoch (2 of 3) is not the last."""
    from hardctl.distill.trainer import Trainer

    scripted, original = iter([10.0, 50.0, 20.0]), Trainer.evaluate

    def evaluate(self, dataset, model=None, normalize=None):
        result = original(self, dataset, model, normalize)
        return {**result, "acc": next(scripted)} if dataset is self.components.data.val else result

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    extra = {"teacher": str(digits_teacher), "augmentor": "none"} if command == "distill" else {}
    summary = run(RunConfig(command=command, select=select, **TINY, **extra), tmp_path / "run")
    candidates = summary["candidates"]
    assert summary["select"] == reported and RunConfig.load(tmp_path / "run").select == reported
    assert (candidates["best"]["epoch"], candidates["last"]["epoch"]) == (2, 3)
    assert candidates["best"]["val_acc"] == 50.0 and candidates["best"]["file"] == "best.safetensors"
    for key in ("test_acc", "shifted_acc"):
        assert summary["student"][key] == candidates[reported][key]
    reported_file = tmp_path / "run" / candidates[reported]["file"]
    model, best = (load_file(tmp_path / "run" / name) for name in ("model.safetensors", reported_file.name))
    assert all(torch.equal(model[k], best[k]) for k in model)  # model.safetensors is the reported student
    with safe_open(tmp_path / "run" / "model.safetensors", "pt") as fh:
        assert fh.metadata()["epoch"] == str(candidates[reported]["epoch"])
