"""Optimisers and schedules (paper appendix A): --optimizer, --schedule plateau, early stop, resume."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from hardctl.config import RunConfig
from hardctl.distill import rundir
from hardctl.distill.schedules import DECAY, IMPROVED, STOP, WAIT, PlateauSchedule, lr_lambda, make_optimizer
from hardctl.distill.run import run
from hardctl.distill.trainer import Trainer
from hardctl.errors import UsageError
from conftest import InterruptAt

LR = 1e-3
TINY = ["--model", "mnist_mlp", "--data", "digits", "--batch-size", "256", "--lr", str(LR)]  # 6 steps per epoch


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def one_param_optimizer(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def lrs_of_epoch(opt, sched, steps: int) -> list[float]:
    """The lr each of ``steps`` optimiser steps runs at (read before the step, as the optimiser uses it)."""
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


# --- the plateau schedule on its own --------------------------------------------------------------------------


def test_plateau_lr_sequence_with_warmup_matches_hand_computation():
    opt = one_param_optimizer(lr=1.0)
    sched = PlateauSchedule(opt, warmup_steps=4, patience=2, factor=0.5, max_decays=3)
    metrics = [0.5, 0.6, 0.6, 0.55, 0.7, 0.7, 0.7, 0.1, 0.1]
    lrs, events = [], []
    for metric in metrics:  # 2 steps per epoch
        lrs.append(lrs_of_epoch(opt, sched, 2))
        events.append(sched.observe(metric))
    assert lrs == [
        [0.25, 0.5],  # warm-up: (step + 1) / 4
        [0.75, 1.0],
        [1.0, 1.0],  # 0.6 is no improvement over 0.6 (strictly better only): 1 bad epoch
        [1.0, 1.0],  # 0.55: 2 bad epochs = patience -> decay 1
        [0.5, 0.5],  # 0.7 improves
        [0.5, 0.5],  # bad 1
        [0.5, 0.5],  # bad 2 -> decay 2
        [0.25, 0.25],  # bad 1
        [0.25, 0.25],  # bad 2 -> decay 3 = max_decays -> stop
    ]
    assert events == [IMPROVED, IMPROVED, WAIT, DECAY, IMPROVED, WAIT, DECAY, WAIT, STOP]
    assert sched.decays == 3 and sched.stopped_epoch == 9 and sched.best == 0.7 and sched.best_epoch == 5
    assert opt.param_groups[0]["lr"] == 0.125 and sched.get_last_lr() == [0.125]  # the decay applies at once
    with pytest.raises(RuntimeError, match="already stopped"):
        sched.observe(1.0)


def test_a_decay_during_the_warmup_scales_the_rest_of_the_warmup():
    opt = one_param_optimizer(lr=1.0)
    sched = PlateauSchedule(opt, warmup_steps=10, patience=1, factor=0.5, max_decays=5)
    assert lrs_of_epoch(opt, sched, 2) == [0.1, 0.2]
    assert sched.observe(0.3) == IMPROVED
    assert lrs_of_epoch(opt, sched, 2) == [0.3, 0.4]
    assert sched.observe(0.3) == DECAY
    assert lrs_of_epoch(opt, sched, 2) == [0.25, 0.3]  # (5/10)·0.5, (6/10)·0.5


def test_plateau_state_survives_a_weights_only_checkpoint(tmp_path):
    opt = one_param_optimizer(lr=1.0)
    sched = PlateauSchedule(opt, warmup_steps=2, patience=1, factor=0.5, max_decays=3)
    for metric in (0.5, 0.4):  # improve, then decay 1
        lrs_of_epoch(opt, sched, 2)
        sched.observe(metric)
    torch.save({"scheduler": sched.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)

    opt2 = one_param_optimizer(lr=1.0)
    sched2 = PlateauSchedule(opt2, warmup_steps=2, patience=1, factor=0.5, max_decays=3)
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    assert (sched2.decays, sched2.best, sched2.bad_epochs, sched2.last_epoch) == (1, 0.5, 0, 4)
    assert lrs_of_epoch(opt2, sched2, 2) == lrs_of_epoch(opt, sched, 2) == [0.5, 0.5]
    assert sched2.observe(0.4) == sched.observe(0.4) == DECAY


@pytest.mark.parametrize("kwargs, message", [
    (dict(patience=0), "patience"), (dict(factor=1.0), "factor"), (dict(factor=0.0), "factor"),
    (dict(max_decays=0), "max_decays"), (dict(warmup_steps=-1), "warmup_steps"),
])
def test_plateau_schedule_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PlateauSchedule(one_param_optimizer(), **kwargs)


def test_lion_steps_by_the_sign_of_its_interpolated_momentum():
    """Lion (Chen et al. 2023): c = β1·m + (1-β1)·g; p ← p·(1 - lr·wd) - lr·sign(c); m ← β2·m + (1-β2)·g,
    with timm's defaults β1 = 0.9, β2 = 0.99 and m starting at 0."""
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    opt = make_optimizer("lion", [p], lr=0.1, weight_decay=0.5)
    g1 = torch.tensor([1.0, -1.0, 0.0])
    p.grad = g1.clone()
    opt.step()
    # c = 0.1·g1 -> sign(g1) = (1, -1, 0); decay factor 1 - 0.1·0.5 = 0.95
    expected = torch.tensor([1.0 * 0.95 - 0.1, -2.0 * 0.95 + 0.1, 0.5 * 0.95 - 0.0])
    torch.testing.assert_close(p.detach(), expected)
    g2 = torch.tensor([-0.05, 0.05, 0.2])
    p.grad = g2.clone()
    opt.step()
    # m = 0.01·g1 = (0.01, -0.01, 0); c = 0.9·m + 0.1·g2 = (0.004, -0.004, 0.02): the momentum outvotes g2's sign
    expected = expected * 0.95 - 0.1 * torch.tensor([1.0, -1.0, 1.0])
    torch.testing.assert_close(p.detach(), expected)


def test_sgd_is_nesterov_with_momentum_and_adam_stays_the_default():
    p = torch.nn.Parameter(torch.zeros(2))
    sgd = make_optimizer("sgd", [p], lr=0.1, weight_decay=0.0)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.param_groups[0]["momentum"] == 0.9 and sgd.param_groups[0]["nesterov"] is True
    assert isinstance(make_optimizer("adamw", [p], lr=0.1, weight_decay=0.1), torch.optim.AdamW)
    assert RunConfig().optimizer == "adam" and RunConfig().schedule == "cosine"
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("rmsprop", [p], lr=0.1, weight_decay=0.0)


# --- validation ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field, value, message", [
    ("optimizer", "lino", "unknown --optimizer 'lino'; did you mean 'lion'?"),
    ("optimizer", "Adam", "did you mean 'adam'"),
    ("schedule", "platau", "unknown --schedule 'platau'; did you mean 'plateau'?"),
    ("plateau_patience", 0, "--plateau-patience must be at least 1"),
    ("plateau_factor", 1.0, "--plateau-factor must be between 0 and 1"),
    ("plateau_factor", 0.0, "--plateau-factor must be between 0 and 1"),
    ("plateau_decays", 0, "--plateau-decays must be at least 1"),
])
def test_bad_optimisation_settings_are_usage_errors(field, value, message):
    with pytest.raises(UsageError) as err:
        RunConfig(**{field: value}).validate()
    assert message in str(err.value) and "\n" not in str(err.value)


def test_min_lr_belongs_to_the_cosine():
    with pytest.raises(UsageError, match="--min-lr applies to --schedule cosine only"):
        RunConfig(schedule="plateau", min_lr=1e-5).validate()


@pytest.mark.parametrize("args, message", [
    (["--optimizer", "lino"], "did you mean 'lion'?"),
    (["--schedule", "plateau", "--plateau-factor", "1.5"], "--plateau-factor must be between 0 and 1"),
    (["--schedule", "plateau", "--plateau-patience", "0"], "--plateau-patience must be at least 1"),
])
def test_cli_reports_bad_settings_in_one_line(cli, tmp_path, args, message):
    result = cli("train", *TINY, "--out", tmp_path / "run", *args)
    assert result.code == 2 and message in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


# --- the plateau schedule in the trainer --------------------------------------------------------------------------


@pytest.fixture
def scripted_val(monkeypatch):
    """Replace the validation accuracy of epoch ``e`` (1-based) by ``accs[e - 1]``; test sets stay real."""

    def install(accs):
        original = Trainer.evaluate

        def evaluate(self, dataset, model=None, normalize=None):
            if dataset is self.components.data.val:
                return {"acc": float(accs[self.epoch]), "loss": 0.0}
            return original(self, dataset, model, normalize)

        monkeypatch.setattr(Trainer, "evaluate", evaluate)

    return install


def test_plateau_restores_the_best_weights_and_stops_early(cli, tmp_path, scripted_val):
    scripted_val([10, 20, 15, 15, 30, 30, 30, 30])
    out = tmp_path / "run"
    result = cli("train", *TINY, "--epochs", "8", "--schedule", "plateau", "--plateau-patience", "1",
                 "--plateau-factor", "0.5", "--plateau-decays", "2", "--out", out, "--json")
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    # epoch 1, 2 improve; 3 is bad -> decay 1 (restore epoch 2); 4 is bad -> decay 2 = --plateau-decays -> stop
    assert summary["stopped_early"] == 4 and summary["lr_decays"] == 2 and summary["epochs"] == 8
    assert summary["steps"] == 4 * 6
    epochs = read(out / "epochs.jsonl")
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4]
    assert [e["lr"] for e in epochs] == pytest.approx([LR, LR, LR, LR / 2])  # epoch 4 ran at the decayed lr
    assert [e["lr_decays"] for e in epochs] == [0, 0, 1, 2]
    assert [e.get("restored_epoch") for e in epochs] == [None, None, 2, 2]
    assert epochs[-1]["stopped_early"] is True
    assert [s["epoch"] for s in read(out / "steps.jsonl")] == [e for e in (1, 2, 3, 4) for _ in range(6)]
    log = (out / "log.txt").read_text()
    assert log.count("restored the best weights (epoch 2") == 2
    assert "stopping early after epoch 4 of 8 (2 lr decays)" in log
    # the state after the last epoch holds the restored (epoch-2) weights, not those epoch 4 trained
    best = load_file(out / "model.safetensors")
    trained = load_file(out / "last.safetensors")
    state = rundir.load_checkpoint(out / "checkpoints" / "last.pt")
    for key, value in best.items():
        torch.testing.assert_close(state["student"][key], value)
    assert any(not torch.equal(trained[k], best[k]) for k in best)
    assert state["scheduler"]["stopped_epoch"] == 4 and state["scheduler"]["decays"] == 2
    # a finished run cannot be resumed, stopped early or not
    again = cli("train", "--resume", out)
    assert again.code == 2 and "stopped it after epoch 4" in again.err



def test_resume_restores_the_plateau_state(tmp_path, scripted_val):
    scripted_val([10, 20, 15, 15, 30, 30])
    cfg = RunConfig(command="train", data="digits", model="mnist_mlp", batch_size=256, lr=LR, epochs=6,
                    schedule="plateau", plateau_patience=1, plateau_factor=0.5, plateau_decays=2)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run(cfg, out, reporter=InterruptAt(3 * 6 + 2))  # in epoch 4, after decay 1 at the end of epoch 3
    assert rundir.load_checkpoint(out / "checkpoints" / "last.pt")["scheduler"]["decays"] == 1
    summary = run(cfg, out, resume=True)
    # a fresh schedule would call epoch 4's 15 an improvement and train all 6 epochs
    assert summary["stopped_early"] == 4 and summary["lr_decays"] == 2
    steps = read(out / "steps.jsonl")
    assert [s["step"] for s in steps] == list(range(1, 4 * 6 + 1))
    assert {s["lr"] for s in steps if s["epoch"] == 4} == {LR / 2}


def test_hard_distillation_stops_early_too(cli, tmp_path, scripted_val):
    """HARD runs through the one Trainer loop: the plateau stop ends a HARD run as well."""
    from hardctl.models import create_model

    teacher, _ = create_model("mnist_cnn", num_classes=10, in_chans=1, img_size=16)
    weights = tmp_path / "teacher.pth"
    torch.save(teacher.state_dict(), weights)
    scripted_val([10, 10, 10, 10])
    out = tmp_path / "hard"
    result = cli("distill", "--teacher", f"mnist_cnn:{weights}", "--student", "mnist_mlp", "--data", "digits",
                 "--batch-size", "256", "--augmentor", "affine", "--max-aug-steps", "2", "--epochs", "4",
                 "--schedule", "plateau", "--plateau-patience", "1", "--plateau-decays", "1", "--out", out, "--json")
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert summary["stopped_early"] == 2 and summary["hard"]["student_steps"] == 2 * 6
    assert [e["epoch"] for e in read(out / "epochs.jsonl")] == [1, 2]
