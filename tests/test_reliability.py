"""Issue 11's fault-injection corpus: bad input gets one line and the right exit code before any work, and a
run that was killed can always be finished."""

from __future__ import annotations

import json

import pytest
import torch

from hardctl.config import RunConfig
from hardctl.device import select_device
from hardctl.distill.run import run
from hardctl.errors import TrainingError, UsageError
from conftest import one_line_error

TINY = dict(data="digits", model="mnist_mlp", epochs=1, batch_size=256, lr=2e-3)


# ------------------------------------------------------------------------------------------------ devices
@pytest.mark.parametrize("device, message", [
    ("cpu:1", "--device cpu:1 does not exist: the CPU is one device"),
    ("tpu", "--device 'tpu' is not a device name"),
    ("cuda:abc", "--device 'cuda:abc' is not a device name"),
    ("mps", "--device 'mps' is not supported"),
])
def test_a_device_this_machine_lacks_is_a_usage_error(device, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        select_device(device)


def test_cpu_devices_are_accepted():
    assert select_device("cpu") == torch.device("cpu") == select_device("cpu:0")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA is not available"):
            select_device("cuda:0")


@pytest.mark.parametrize("device", ["cpu:1", "tpu", "cuda:abc"])
def test_a_bad_device_stops_the_run_before_anything_is_written(cli, tmp_path, device):
    out = tmp_path / "run"
    one_line_error(cli("train", "--model", "mlp", "--data", "digits", "--device", device, "--out", out), 2,
                   "--device")
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ resume
def test_a_run_killed_after_its_last_checkpoint_is_finished_by_resume(tmp_path):
    """Killed between the final checkpoint and summary.json: --resume redoes the final evaluation and summary."""
    cfg = RunConfig(command="train", **TINY)
    straight = run(cfg, tmp_path / "run")
    summary_file = tmp_path / "run" / "summary.json"
    summary_file.unlink()  # what a kill after checkpoints/last.pt leaves
    steps = (tmp_path / "run" / "steps.jsonl").read_text()
    finished = run(RunConfig.load(tmp_path / "run"), tmp_path / "run", resume=True)
    assert finished["student"] == straight["student"] and finished["steps"] == straight["steps"]
    assert json.loads(summary_file.read_text())["student"] == straight["student"]
    assert (tmp_path / "run" / "steps.jsonl").read_text() == steps  # no step was trained again
    with pytest.raises(UsageError, match="has already finished: it ran its 1 epochs"):
        run(RunConfig.load(tmp_path / "run"), tmp_path / "run", resume=True)


# ------------------------------------------------------------------------------------------------ NaN
def test_an_augmentor_whose_pixels_go_nan_is_named(tmp_path, digits_teacher, monkeypatch):
    """A learned augmentor that turns NaN after its first (checked) output is named, not the learning rate."""
    from hardctl_builtins.augmentors import AffineAugmentor

    calls = {"n": 0}
    original = AffineAugmentor.apply_transform

    def poisoned(self, x, params):
        calls["n"] += 1
        out = original(self, x, params)
        return out if calls["n"] < 3 else out * float("nan")

    monkeypatch.setattr(AffineAugmentor, "apply_transform", poisoned)
    cfg = RunConfig(command="distill", teacher=str(digits_teacher), augmentor="affine", **TINY)
    with pytest.raises(TrainingError, match=r"augmentor 'affine' \(plugin builtin_augmentors\) returned "
                                            r"non-finite .* at epoch 1, step \d+") as exc:
        run(cfg, tmp_path / "run")
    assert "lower --lr" not in str(exc.value)


# ------------------------------------------------------------------------------------------------ bad numbers
@pytest.mark.parametrize("args, message", [
    (("--lr", "inf"), "--lr must be a finite number, got inf"),
    (("--min-lr", "nan"), "--min-lr must be a finite number, got nan"),
    (("--temperature", "inf"), "--temperature must be a finite number, got inf"),
    (("--kd-weight", "inf"), "--kd-weight must be a finite number, got inf"),
    (("--aug-opt", "sigma_init=nan"), "option 'sigma_init' must be a number, got 'nan'"),
    (("--seed", str(2**64)), "--seed must be in [0, 2^63)"),
    (("--min-lr", "0.1", "--lr", "0.01"), "--min-lr (0.1) must be in [0, --lr (0.01)]"),
    (("--augmentor", "none", "--aug-opt", "sigma_init=0.1"), "--aug-opt sets options of a learned augmentor"),
    (("--shift-px", "100"), "--shift-px 100 moves 16x16 images out of view"),
])
def test_bad_numbers_are_usage_errors_before_any_work(cli, tmp_path, digits_teacher, args, message):
    out = tmp_path / "run"
    one_line_error(cli("distill", "--teacher", digits_teacher, "--student", "mlp", "--data", "digits", "--epochs", 1,
                       *args, "--out", out), 2, message)
    assert not out.exists()


def test_eval_refuses_a_negative_shift(cli, digits_teacher):
    one_line_error(cli("eval", "--model", digits_teacher, "--data", "digits", "--shifted", "--shift-px", "-1"), 2,
                   "--shift-px must be >= 0")


def test_a_weights_file_is_never_a_hub_name_nor_broken_statistics(cli, tmp_path):
    from hardctl.models import create_model, save_model

    model, info = create_model("mnist_mlp", num_classes=10, in_chans=1, img_size=16)
    for name, change, message in [("hub", {"arch": "hf-hub:someone/repo"}, "a model hub source"),
                                  ("nan", {"std": (float("nan"),)}, "broken normalisation metadata"),
                                  ("zero", {"std": (0.0,)}, "broken normalisation metadata")]:
        import dataclasses

        path = save_model(model, dataclasses.replace(info, **change), tmp_path / f"{name}.safetensors")
        result = cli("eval", "--model", path, "--data", "digits")
        assert result.code in (1, 2) and message in result.err and "Traceback" not in result.err, result.err


def test_a_foreign_file_that_is_no_weights_file_gets_a_clear_line(cli, tmp_path):
    text = tmp_path / "some.txt"
    text.write_text("hello")
    one_line_error(cli("eval", "--model", f"mnist_cnn:{text}", "--data", "digits"), 1,
                   "is neither a torch.save file")


def test_results_piped_to_a_file_are_complete_whatever_the_width(cli, tmp_path, digits_teacher):
    """Piped stdout has no width: the summary's table cells and lines are never cut or wrapped (at 80 columns the
    teacher path became 'tea…')."""
    out = tmp_path / ("a-long-folder-name-" * 4) / "run"
    result = cli("distill", "--teacher", digits_teacher, "--student", "mlp", "--data", "digits", "--epochs", 1,
                 "--augmentor", "none", "--out", out)
    assert result.code == 0, result.err
    assert str(digits_teacher) in result.out and "…" not in result.out
    assert any(line.startswith("run directory: ") and str(out) in line for line in result.out.splitlines())


def test_aug_temperature_from_the_command_line_lands_in_the_config(cli, tmp_path, digits_teacher):
    from hardctl.config import RunConfig

    out = tmp_path / "mix"
    result = cli("distill", "--teacher", digits_teacher, "--student", "mlp", "--data", "digits", "--epochs", 1,
                 "--augmentor", "mix", "--aug-temperature", "1", "--out", out)
    assert result.code == 0, result.err
    cfg = RunConfig.load(out)
    assert (cfg.temperature, cfg.aug_temperature) == (5.0, 1.0)
    one_line_error(cli("distill", "--teacher", digits_teacher, "--aug-temperature", "0", "--out", tmp_path / "x"), 2,
                   "--aug-temperature must be positive")
