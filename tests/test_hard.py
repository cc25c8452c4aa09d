"""The HARD engine: the switching rule, the pool, the augmentor's objective, joint training, resume, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from hardctl import hookimpl, plugins
from hardctl.augment import Augmentor, HardDefaults, Option, build_augmentor
from hardctl.augment.pool import pool_files, read_entry
from hardctl.config import RunConfig
from hardctl.distill.build import build
from hardctl.distill.losses import hard_objective, kd_divergence
from hardctl.distill.phases import AUGMENTOR, STUDENT, PhaseSwitch
from hardctl.distill.run import run
from hardctl.distill.trainer import Trainer
from hardctl.errors import TrainingError, UsageError
from hardctl.distill.build import resolve_config

SMALL = dict(data="digits", model="mnist_mlp", epochs=1, batch_size=64, lr=5e-3)


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------------------------------------- phase switch
def test_switching_rule_follows_the_thresholds_for_k_consecutive_iterations():
    switch = PhaseSwitch(l_min=0.1, l_max=0.5, patience=3)
    errors = [0.9, 0.05, 0.05, 0.2, 0.05, 0.05, 0.05,  # student: the 4th value breaks the streak; switch at 7
              0.6, 0.6, 0.3, 0.6, 0.6, 0.6,  # augmentor: streak broken at 10, switch at 13
              0.01, 0.01, 0.01]  # student again: switch at 16
    phases = []
    for i, error in enumerate(errors, start=1):
        switch.update(error, i)
        phases.append(switch.phase)
    assert phases == [STUDENT] * 6 + [AUGMENTOR] * 6 + [STUDENT] * 3 + [AUGMENTOR]
    assert switch.history == [(7, AUGMENTOR), (13, STUDENT), (16, AUGMENTOR)] and switch.switches == 3
    # equal to a threshold is not past it
    edge = PhaseSwitch(l_min=0.1, l_max=0.5, patience=1)
    assert not edge.update(0.1) and edge.update(0.0999)
    assert not edge.update(0.5) and edge.update(0.5001)
    with pytest.raises(ValueError, match="below l_max"):
        PhaseSwitch(l_min=0.5, l_max=0.5, patience=1)


def _trainer(tmp_path, teacher, **overrides) -> Trainer:
    cfg = resolve_config(RunConfig(command="distill", teacher=str(teacher), **{**SMALL, **overrides}))
    (tmp_path / "run").mkdir(parents=True, exist_ok=True)
    return Trainer(build(cfg), tmp_path / "run")


def test_scripted_errors_give_the_exact_phase_sequence_and_pool_growth(tmp_path, digits_teacher, monkeypatch):
    trainer = _trainer(tmp_path, digits_teacher, l_min=0.1, l_max=0.5, switch_patience=2)
    script = iter([0.0, 0.0,  # student steps 1-2 -> augmentor
                   0.9, 0.2, 0.9, 0.9,  # augmentor steps: switch back after the 2nd consecutive > 0.5
                   0.3, 0.05, 0.05,  # student steps 3-5 -> augmentor
                   0.7, 0.7,  # augmentor -> student
                   0.4])  # student step 6
    monkeypatch.setattr(trainer.hard, "switching_error", lambda *args: next(script))
    trainer.start_run()  # the identity entry
    images, labels = trainer.prepare_batch(*next(iter(trainer.loader)))
    for _ in range(6):
        trainer.train_batch(images, labels)
    records = read(tmp_path / "run" / "steps.jsonl")  # only augmentor steps log themselves here
    assert [r["pool_size"] for r in records] == [1, 1, 1, 2, 2, 3]
    hard = trainer.hard
    assert hard.switch.history == [(2, AUGMENTOR), (6, STUDENT), (9, AUGMENTOR), (11, STUDENT)]
    assert trainer.step_count == 6 and hard.steps == 6 and trainer.iteration == 12
    assert [info["reason"] for info in hard.pool.info] == ["identity", "switch", "switch"]
    files = pool_files(tmp_path / "run")
    assert len(files) == 3
    snapshot, info = read_entry(files[1])
    assert info["iteration"] == 6 and set(snapshot) == {"mean", "log_std"}


def test_pool_entries_record_how_often_the_teacher_kept_its_prediction(tmp_path, digits_teacher, monkeypatch):
    from hardctl.distill import hard as hard_module

    # an augmentor that stays at the identity (σ 1e-6, a step of 1e-9): the teacher must keep every prediction
    trainer = _trainer(tmp_path, digits_teacher, l_min=0.1, l_max=0.5, switch_patience=1, aug_lr=1e-9,
                       aug_options={"sigma_init": 1e-6})
    # student -> one augmentor step -> student -> two augmentor steps -> student
    script = iter([0.0, 0.9, 0.0, 0.2, 0.9, 0.3])
    monkeypatch.setattr(trainer.hard, "switching_error", lambda *args: next(script))
    trainer.start_run()
    images, labels = trainer.prepare_batch(*next(iter(trainer.loader)))
    for _ in range(3):
        trainer.train_batch(images, labels)
    steps = read(tmp_path / "run" / "steps.jsonl")  # the augmentor steps
    assert len(steps) == 3 and [r["teacher_kept"] for r in steps] == [1.0, 1.0, 1.0]
    info = trainer.hard.pool.info
    assert "teacher_kept" not in info[0]  # the identity entry was not made by an augmentor phase
    assert [i["teacher_kept"] for i in info[1:]] == [round(steps[0]["teacher_kept"], 4), round(steps[2]["teacher_kept"], 4)]
    assert read_entry(pool_files(tmp_path / "run")[2])[1]["teacher_kept"] == info[2]["teacher_kept"]  # in the file
    assert trainer.hard.summary(trainer.iteration, trainer.step_count)["off_class_entries"] == 0
    assert trainer.hard.end_warning() is None
    monkeypatch.setattr(hard_module, "OFF_CLASS", 1.01)  # every entry counts as off-class: the run says so at the end
    assert trainer.hard.summary(trainer.iteration, trainer.step_count)["off_class_entries"] == 2
    warning = trainer.hard.end_warning()
    assert warning.startswith("2 of 2 trained pool entries changed the teacher's prediction") and "--lambda-t" in warning


def test_without_a_teacher_term_nothing_is_recorded_of_the_teacher(tmp_path, digits_teacher, monkeypatch):
    trainer = _trainer(tmp_path, digits_teacher, l_min=0.1, l_max=0.5, switch_patience=1, lambda_t=0.0)
    script = iter([0.0, 0.9, 0.3])  # student -> one augmentor step -> student
    monkeypatch.setattr(trainer.hard, "switching_error", lambda *args: next(script))
    trainer.start_run()
    images, labels = trainer.prepare_batch(*next(iter(trainer.loader)))
    for _ in range(2):
        trainer.train_batch(images, labels)
    assert "teacher_kept" not in read(tmp_path / "run" / "steps.jsonl")[0]
    assert "off_class_entries" not in trainer.hard.summary(trainer.iteration, trainer.step_count)


def test_one_augmentor_step_raises_the_student_teacher_loss(tmp_path, digits_teacher):
    trainer = _trainer(tmp_path, digits_teacher, lambda_t=0.0, aug_lr=1e-3, aug_batch_size=256,
                       aug_options={"sigma_init": 0.05})
    aug, task = trainer.hard.augmentor, trainer.task
    student_before = {k: v.clone() for k, v in trainer.student.state_dict().items()}
    trainer.student.eval()

    def l_st(images):
        torch.manual_seed(1)  # the same ε for both evaluations
        x = aug(images)
        return float(kd_divergence(trainer.student(task.student_normalize(x)), task.teacher_logits(x), 5.0).detach())

    gen_state = trainer.hard.batches.get_state()
    images, _ = trainer.prepare_batch(*trainer.hard.draw_batch(trainer.components.data.train)[:2])
    trainer.hard.batches.set_state(gen_state)  # the step sees the same batch
    before = l_st(images)
    params_before = [p.detach().clone() for p in aug.parameters()]
    torch.manual_seed(1)
    x = aug(images)  # the gradient of L_st at the old parameters, for the step's own ε
    grads = torch.autograd.grad(kd_divergence(trainer.student(task.student_normalize(x)), task.teacher(
        task.teacher_normalize(x)), 5.0), list(aug.parameters()))
    torch.manual_seed(1)  # the step draws the same ε
    trainer.augmentor_step()
    trainer.student.eval()
    moved = [p.detach() - b for p, b in zip(aug.parameters(), params_before)]
    assert sum(float((g * d).sum()) for g, d in zip(grads, moved)) > 0  # an ascent direction of L_st
    assert l_st(images) > before
    assert all(torch.equal(v, trainer.student.state_dict()[k]) for k, v in student_before.items())
    assert all(p.grad is None for p in trainer.student.parameters())  # backward(inputs=...) skips the student
    assert all(p.grad is None for p in task.teacher.parameters())


# ---------------------------------------------------------------------------------------------- a HARD run
@pytest.mark.slow
def test_hard_run_switches_saves_a_pool_and_resumes_identically(tmp_path, digits_teacher):
    from conftest import InterruptAt

    cfg = RunConfig(command="distill", teacher=str(digits_teacher), augmentor="affine", l_min=0.45, l_max=0.5,
                    switch_patience=1, max_aug_steps=5, aug_batch_size=64, **{**SMALL, "epochs": 2})
    straight = run(cfg, tmp_path / "straight")
    hard = straight["hard"]
    assert [p["name"] for p in straight["plugins"]["augmentor"]] == ["affine"]
    assert straight["plugins"]["augmentor"][0]["plugin"] == "builtin_augmentors"
    assert hard["switches"] >= 2 and hard["pool_size"] == 1 + hard["switches"] // 2  # one entry per return
    assert len(pool_files(tmp_path / "straight")) == hard["pool_size"]
    assert 0 < hard["aug_fraction"] < 1 and set(hard["time_s"]) == {"student", "augmentor"}
    assert (tmp_path / "straight" / "augmentations.png").is_file() and "figures" in hard
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "resumed", reporter=InterruptAt(step=30))  # in epoch 2 (21 student steps per epoch)
    resumed = run(RunConfig.load(tmp_path / "resumed"), tmp_path / "resumed", resume=True)
    assert read(tmp_path / "resumed" / "steps.jsonl") == read(tmp_path / "straight" / "steps.jsonl")
    for key in ("student", "best_val_acc"):
        assert resumed[key] == straight[key]
    assert resumed["hard"]["switches"] == hard["switches"] and resumed["hard"]["pool_size"] == hard["pool_size"]


def test_resolved_config_takes_the_augmentors_paper_defaults(tmp_path):
    cfg = resolve_config(RunConfig(command="distill", teacher="t", augmentor="affine", l_max=0.6))
    assert (cfg.l_min, cfg.l_max, cfg.switch_patience, cfg.lambda_s, cfg.lambda_t, cfg.aug_lr, cfg.aug_batch_size) == (
        0.05, 0.6, 5, 1.0, 1.0, 0.05, 128)
    assert cfg.aug_options == {"sigma_init": 0.01, "padding_mode": "zeros", "align_corners": False,
                               "min_sigma": 0.0}
    cfg.save(tmp_path)
    assert RunConfig.load(tmp_path) == cfg  # the concrete numbers land in config.toml
    with pytest.raises(UsageError, match=r"--l-min \(0.5\) must be below --l-max \(0.4\)"):
        RunConfig(command="distill", teacher="t", l_min=0.5, l_max=0.4).validate()
    with pytest.raises(UsageError, match=r"--l-min \(0.5\) must be below --l-max \(0.4\)"):
        resolve_config(RunConfig(command="distill", teacher="t", l_min=0.5)).__class__(
            command="distill", teacher="t", l_min=0.5, l_max=0.4).validate()
    plain = resolve_config(RunConfig(command="distill", teacher="t", augmentor="none"))
    assert plain.l_min is None and not plain.uses_hard


# ---------------------------------------------------------------------------------------------- augmentors
def test_affine_identity_leaves_images_and_composition_chains_parts():
    x = torch.rand(4, 1, 16, 16)
    affine = build_augmentor("affine", {"sigma_init": "1e-8"}, in_chans=1, img_size=(16, 16))
    assert torch.allclose(affine(x), x, atol=1e-4)
    theta = torch.tensor([[1.0, 0.0, 0.5, 0.0, 1.0, 0.0]]).view(1, 2, 3)  # half a width: 4 px on 16
    shifted = affine.apply_transform(x[:1], {"theta": theta})
    assert torch.allclose(shifted[0, 0, :, :12], x[0, 0, :, 4:], atol=1e-5)  # content moved 4 px left
    combo = build_augmentor("noise+affine", {"noise.sigma_init": "1e-8", "affine.sigma_init": 1e-8},
                            in_chans=1, img_size=(16, 16))
    assert torch.allclose(combo(x), x, atol=1e-4) and combo.teacher_term
    snap = combo.snapshot()
    assert set(snap) == {"parts.0.mu", "parts.0.log_sigma", "parts.1.mean", "parts.1.log_std"}
    snap["parts.0.mu"] = torch.full_like(snap["parts.0.mu"], 0.25)
    out = combo.forward_with(snap, torch.zeros(2, 1, 16, 16))  # snapshot applied without touching the module
    assert torch.allclose(out, torch.full_like(out, 0.25), atol=1e-3) and float(combo.parts[0].mu.detach()) == 0.0


@pytest.mark.parametrize("options, message", [
    ({"sigma_int": "0.1"}, "unknown augmentor option 'sigma_int' for affine; did you mean 'sigma_init'?"),
    ({"sigma_init": "abc"}, "augmentor 'affine' option 'sigma_init' must be a number, got 'abc'"),
    ({"sigma_init": "-1"}, "augmentor 'affine' option sigma_init=-1.0 is out of range"),
    ({"padding_mode": "wrap"}, "option padding_mode='wrap' is not one of zeros, border, reflection"),
    ({"align_corners": "maybe"}, "must be true or false"),
    ({"nope.sigma_init": "1"}, "names no part of affine"),
])
def test_bad_augmentor_options_are_one_line_usage_errors(options, message):
    with pytest.raises(UsageError) as err:
        build_augmentor("affine", options, in_chans=1, img_size=(8, 8))
    assert message in str(err.value)


def test_unknown_augmentor_lists_the_installed_ones():
    with pytest.raises(UsageError) as err:
        build_augmentor("afine", {}, in_chans=1, img_size=(8, 8))
    assert "unknown augmentor 'afine'; did you mean 'affine'?" in str(err.value)
    assert "affine" in err.value.hint and "noise" in err.value.hint


class _Blend(Augmentor):
    """A tiny joint-mode augmentor: blends each image with a learned image (no teacher–teacher term)."""

    options = (Option("alpha", float, 0.1, "initial blend weight", min=0.0, max=1.0),)
    teacher_term = False
    hard_defaults = HardDefaults(lr=0.01)

    def __init__(self, *, in_chans, img_size, alpha=0.1):
        super().__init__(in_chans=in_chans, img_size=img_size)
        self.logit = nn.Parameter(torch.tensor(float(alpha)).logit())
        self.image = nn.Parameter(torch.full((in_chans, *img_size), 0.5))

    def apply_transform(self, x, params):
        weight = torch.sigmoid(self.logit)
        return ((1 - weight) * x + weight * self.image.clamp(0, 1)).clamp(0, 1)


class _BlendPlugin:
    @hookimpl
    def register_augmentors(self, register):
        register("blend", _Blend, help="test blend")


@pytest.fixture
def blend_plugin():
    plugins.reload()
    plugins.manager.register(_BlendPlugin(), "test-blend")
    yield
    plugins.reload()


def test_augmentor_without_teacher_term_trains_jointly_with_the_student(tmp_path, digits_teacher, blend_plugin):
    summary = run(RunConfig(command="distill", teacher=str(digits_teacher), augmentor="blend", **SMALL), tmp_path / "j")
    assert summary["hard"]["mode"] == "joint" and summary["hard"]["switches"] == 0
    assert summary["hard"]["aug_steps"] == 0 and summary["hard"]["pool_size"] == 2  # start + one per epoch
    first, last = (read_entry(p)[0] for p in pool_files(tmp_path / "j"))
    assert not torch.equal(first["image"], last["image"])  # the augmentor learned alongside the student
    steps = read(tmp_path / "j" / "steps.jsonl")
    assert {s["phase"] for s in steps} == {"joint"} and len(steps) == 21


def test_non_finite_augmentor_loss_stops_the_run_and_keeps_the_checkpoint(tmp_path, digits_teacher, monkeypatch):
    import hardctl.distill.trainer as trainer_module

    poison = {"on": False}
    original_end = Trainer.end_epoch

    def end_epoch(self, record):  # from epoch 2 on, the augmentor's loss is NaN
        original_end(self, record)
        poison["on"] = True

    def objective(l_st, l_tt, **weights):
        return hard_objective(l_st, l_tt, **weights) * (float("nan") if poison["on"] else 1)

    monkeypatch.setattr(trainer_module, "hard_objective", objective)
    monkeypatch.setattr(Trainer, "end_epoch", end_epoch)
    cfg = RunConfig(command="distill", teacher=str(digits_teacher), l_min=0.9, l_max=0.95, switch_patience=1,
                    max_aug_steps=2, **{**SMALL, "epochs": 2})
    with pytest.raises(TrainingError, match=r"the augmentor's loss became nan at epoch 2.*last.pt is intact"):
        run(cfg, tmp_path / "r")
    state = torch.load(tmp_path / "r" / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and not list((tmp_path / "r").rglob(".*.tmp"))


# ---------------------------------------------------------------------------------------------- the main job
def test_bare_distill_runs_the_default_recipe_and_caches_its_teacher(tmp_path, cli, monkeypatch):
    from hardctl import quickstart

    monkeypatch.setenv("HARDCTL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(quickstart.DEFAULT_TEACHER, "epochs", 1)  # the real recipe's lengths, shortened
    monkeypatch.setitem(quickstart.DEFAULT_DISTILL, "epochs", 1)
    first = cli("distill", "--out", tmp_path / "run", "--json")
    assert first.code == 0, first.err
    assert "running the default recipe" in first.err and "training hard_mnist_cnn once" in first.err
    summary = json.loads(first.out)
    assert summary["data"] == "digits" and summary["student"]["arch"] == "hard_mnist_mlp"
    assert summary["hard"]["augmentor"] == "affine" and "figures" in summary["hard"]
    kd = summary["kd_baseline"]  # the main job compares HARD with plain KD of the same recipe, like table 1
    kd_run = json.loads((tmp_path / "cache" / "kd" / Path(kd["run_dir"]).name / "summary.json").read_text())
    assert RunConfig.load(kd["run_dir"]).augmentor == "none" and kd["test_acc"] == kd_run["student"]["test_acc"]
    assert "training the plain-KD baseline once" in first.err
    teacher = tmp_path / "cache" / "teachers" / "digits-hard_mnist_cnn-e1-s0-shift"
    assert summary["teacher"]["spec"] == str(teacher) and (teacher / "model.safetensors").is_file()
    cfg = RunConfig.load(tmp_path / "run")
    assert (cfg.l_min, cfg.aug_lr, cfg.lr, cfg.clean_fraction) == (0.2, 0.02, 5e-3, 0.25)  # the recipe's, resolved
    again = cli("distill", "--out", tmp_path / "run2", "--l-min", "0.15", "--json")
    assert again.code == 0 and "using the cached default teacher" in again.err
    assert "using the cached plain-KD baseline" in again.err  # --l-min changes HARD, not the KD baseline
    assert "running the default recipe" not in again.err  # an option was typed: only the teacher is defaulted
    assert RunConfig.load(tmp_path / "run2").l_min == 0.15
    kd_cfg = RunConfig.load(kd["run_dir"])  # the baseline carries none of HARD's settings
    assert (kd_cfg.clean_fraction, kd_cfg.l_min, kd_cfg.max_aug_steps) == (0.0, None, RunConfig.max_aug_steps)


def test_the_main_job_prints_teacher_kd_and_hard_with_the_difference(tmp_path, cli, monkeypatch):
    from hardctl import quickstart

    monkeypatch.setenv("HARDCTL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(quickstart.DEFAULT_TEACHER, "epochs", 1)
    monkeypatch.setitem(quickstart.DEFAULT_DISTILL, "epochs", 1)
    monkeypatch.setenv("COLUMNS", "200")
    result = cli("distill", "--out", tmp_path / "run")
    assert result.code == 0, result.err
    rows = {line.split("│")[1].strip(): line for line in result.out.splitlines() if line.count("│") >= 4}
    assert {"teacher", "plain KD student", "HARD student", "HARD − KD"} <= set(rows)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    kd_dir = next((tmp_path / "cache" / "kd").iterdir())
    kd = json.loads((kd_dir / "summary.json").read_text())["student"]
    difference = summary["student"]["shifted_acc"] - kd["shifted_acc"]
    assert f"{difference:+.2f}" in rows["HARD − KD"]
    # one epoch is too short for the student to reach l_min: the run says HARD never switched, and why
    assert "HARD made no switch" in result.out and "--epochs" in result.out


def test_aug_opt_must_be_key_value(cli, tmp_path):
    result = cli("distill", "--teacher", tmp_path, "--aug-opt", "sigma_init", "--out", tmp_path / "r")
    assert result.code == 2 and "--aug-opt 'sigma_init' is not KEY=VALUE" in result.err
    assert "Traceback" not in result.err


def test_joint_training_keeps_about_ten_snapshots_however_long_it_runs():
    from hardctl.distill.trainer import joint_snapshot_due

    assert [e for e in range(1, 101) if joint_snapshot_due(e, 100)] == list(range(10, 101, 10))
    assert [e for e in range(1, 4) if joint_snapshot_due(e, 3)] == [1, 2, 3]  # short runs: every epoch
    assert [e for e in range(1, 26) if joint_snapshot_due(e, 25)] == [3, 6, 9, 12, 15, 18, 21, 24, 25]


def test_the_augmentors_own_temperature_moves_the_augmentor_and_not_the_student(tmp_path, digits_teacher):
    """--aug-temperature: HARD-Mix's augmentor ascends L_st at its own T while the student distils at --temperature
    (a table's arms can share the KD temperature); the student's update does not depend on the augmentor's T."""
    trainers = {t: _trainer(tmp_path / f"t{t}", digits_teacher, augmentor="mix", aug_temperature=t,
                            aug_options={"patch_size": 4}) for t in (1.0, 5.0)}
    images, labels = next(iter(trainers[1.0].loader))
    for trainer in trainers.values():
        assert trainer.cfg.temperature == 5.0 and trainer.hard.joint
        torch.manual_seed(3)  # the same draw of the mixing queries
        trainer.joint_step(*trainer.prepare_batch(images, labels))
    one, five = trainers[1.0], trainers[5.0]
    assert all(torch.equal(a, b) for a, b in zip(one.student.parameters(), five.student.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(one.hard.params, five.hard.params))
    assert resolve_config(RunConfig(command="distill", teacher="t", augmentor="mix")).aug_temperature == 5.0
    with pytest.raises(UsageError, match="--aug-temperature must be positive"):
        RunConfig(command="distill", teacher="t", aug_temperature=0.0).validate()
