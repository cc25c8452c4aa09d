"""One trainer for ``hardctl train`` and ``hardctl distill``.

:func:`build` turns a :class:`~hardctl.config.RunConfig` into models, data, task and optimiser;
:class:`Trainer` runs the loop. The step itself (``Trainer.step``) fits on one screen: forward under
autocast, finite-loss check, (scaled) backward, optimiser and scheduler step.
"""

from __future__ import annotations

import time
from functools import partial
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from safetensors.torch import load_file
from safetensors.torch import load_model as load_weights
from torch.utils.data import DataLoader

from hardctl.config import RunConfig, atomic_write_json
from hardctl.data import DataBundle, load_data
from hardctl.data.mixing import hard_labels
from hardctl.distill import rundir
from hardctl.distill.progress import Reporter
from hardctl.distill.sampling import DistInfo, EpochSampler
from hardctl.distill.schedules import DECAY, STOP, PlateauSchedule, lr_lambda, make_optimizer
from hardctl.distill.tasks import DistillTask, SupervisedTask
from hardctl.errors import TrainingError, UsageError
from hardctl.eval import accuracy, autocast_for
from hardctl.models import ModelInfo, describe, load_for_data, save_model


def select_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but CUDA is not available", hint="use --device cpu")
    return device


def select_amp(requested: str, device: torch.device) -> str:
    """``auto`` is bf16 on a CUDA device that supports it and off elsewhere (CPU autocast is slow)."""
    if requested != "auto":
        return requested
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "off"


@dataclass
class Components:
    """Everything :func:`build` makes from a config."""

    cfg: RunConfig
    data: DataBundle
    task: nn.Module
    student_info: ModelInfo
    teacher_info: ModelInfo | None
    device: torch.device
    amp: str
    notes: list[str] = field(default_factory=list)
    augmentor: nn.Module | None = None  # HARD's learned augmentor (distill with --augmentor)
    mixer: Any = None  # --mixup/--cutmix: (images, labels) -> (mixed images, soft targets), per training batch


def build(cfg: RunConfig) -> Components:
    """Load data and models for ``cfg`` and wire them into a task. Raises on incompatible inputs."""
    cfg.validate()
    device = select_device(cfg.device)
    data = load_data(cfg.data, shift_px=cfg.shift_px, shift_seed=cfg.shift_seed, seed=cfg.seed)
    # Baseline augmentations: per image (--augment, --random-erasing), then per batch (--mixup/--cutmix, in
    # Trainer.prepare_batch); HARD's augmentor comes on top.
    aug_notes = []
    if cfg.augment != "none" or cfg.random_erasing > 0:
        from hardctl.data.transforms import augmented_train

        data.train = augmented_train(data.train, cfg.augment, in_chans=data.in_chans, img_size=data.img_size,
                                     shift_px=data.info["shift_px"], seed=cfg.seed, random_erasing=cfg.random_erasing)
        aug_notes.append(f"per-image augmentation: {getattr(data.train, 'name', cfg.augment)}")
    from hardctl.data.mixing import build_mixer

    mixer = build_mixer(data.num_classes, mixup=cfg.mixup, cutmix=cfg.cutmix, switch_prob=cfg.mix_switch_prob)
    if mixer is not None:
        aug_notes.append(f"batch mixing: {mixer!r} (soft targets)")
    sample = torch.stack([data.val[i][0] for i in range(min(2, len(data.val)))]).to(device)
    load = partial(load_for_data, data=data.spec, num_classes=data.num_classes, in_chans=data.in_chans,
                   img_size=data.img_size, sample=sample)
    torch.manual_seed(cfg.seed)  # the student's initialisation is part of the run's seed
    role = "model" if cfg.command == "train" else "student"
    student, student_info = load(role, cfg.model, pretrained=cfg.pretrained and cfg.command == "train")
    notes = [f"{role}: {describe(student_info)}", *aug_notes]
    teacher_info = None
    if cfg.command == "train":
        task: nn.Module = SupervisedTask(student, student_info, label_smoothing=cfg.label_smoothing)
    else:
        teacher, teacher_info = load("teacher", cfg.teacher, pretrained=cfg.pretrained, require_trained=True)
        notes.append(f"teacher: {describe(teacher_info)}")
        if (teacher_info.mean, teacher_info.std) != (student_info.mean, student_info.std):
            notes.append(
                f"inputs are re-normalised for the teacher: mean {teacher_info.mean} std {teacher_info.std} "
                f"(student: mean {student_info.mean} std {student_info.std})"
            )
        task = DistillTask(student, student_info, teacher, teacher_info, temperature=cfg.temperature,
                           kd_weight=cfg.kd_weight, ce_weight=cfg.ce_weight, label_smoothing=cfg.label_smoothing)
    augmentor = None
    if cfg.uses_hard:
        from hardctl.augment import build_augmentor

        augmentor = build_augmentor(cfg.augmentor, cfg.aug_options, in_chans=data.in_chans,
                                    img_size=data.img_size).to(device)
        notes.append(f"augmentor: {cfg.augmentor} {cfg.aug_options}")
    task.to(device)
    return Components(cfg, data, task, student_info, teacher_info, device, select_amp(cfg.amp, device), notes,
                      augmentor, mixer)


class Trainer:
    """The training loop, its checkpoints and its logs for one run directory."""

    def __init__(self, parts: Components, run_dir: Path, *, reporter: Reporter | None = None,
                 dist: DistInfo | None = None):
        self.parts, self.cfg, self.run_dir = parts, parts.cfg, Path(run_dir)
        self.dist = dist or DistInfo.from_env()
        if self.dist.world_size > 1:
            raise UsageError("multi-process (torchrun) training is not supported yet", hint="run a single process")
        self.reporter = reporter or Reporter()
        self.task, self.device, self.amp = parts.task, parts.device, parts.amp
        self.student = self.task.student
        self.sampler = EpochSampler(len(parts.data.train), seed=self.cfg.seed, dist=self.dist)
        # A last batch of a single image would crash batch-norm in train mode ("Expected more than 1 value per
        # channel", e.g. ResNets whose last feature map is 1×1); drop only that one, so that step counts
        # (and the published tables) stay those of the full epoch otherwise.
        drop_single = len(self.sampler) > self.cfg.batch_size and len(self.sampler) % self.cfg.batch_size == 1
        self.loader = DataLoader(parts.data.train, batch_size=self.cfg.batch_size, sampler=self.sampler,
                                 drop_last=drop_single,
                                 num_workers=self.cfg.workers, pin_memory=self.device.type == "cuda")
        params = [p for p in self.student.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(self.cfg.optimizer, params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        steps_per_epoch = len(self.loader)
        self.total_steps = steps_per_epoch * self.cfg.epochs
        warmup = int(round(self.cfg.warmup_epochs * steps_per_epoch))
        self.stopped_early: int | None = None  # the epoch after which the plateau schedule ended the run
        if self.cfg.schedule == "plateau":  # appendix A.1: decays and best-weight restores in end_epoch
            self.scheduler = PlateauSchedule(self.optimizer, warmup_steps=warmup, patience=self.cfg.plateau_patience,
                                             factor=self.cfg.plateau_factor, max_decays=self.cfg.plateau_decays)
        else:
            min_ratio = self.cfg.min_lr / self.cfg.lr
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.optimizer,
                lambda s: lr_lambda(s, warmup_steps=warmup, total_steps=self.total_steps, min_ratio=min_ratio),
            )
        # A loss scaler only makes sense for fp16: bf16 has float32's exponent range.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")
        self.epoch, self.step_count, self.best_val = 0, 0, -1.0
        self.iteration = 0  # every optimisation step (HARD adds augmentor steps between the student's)
        main = self.dist.is_main
        self.steps_log = rundir.JsonlLog(self.run_dir / "steps.jsonl") if main else None
        self.epochs_log = rundir.JsonlLog(self.run_dir / "epochs.jsonl") if main else None
        self.log = rundir.RunLog(self.run_dir / "log.txt" if main else None, self.reporter.log if main else None)

    # ------------------------------------------------------------------ the step
    def prepare_batch(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A training batch on the device, MixUp/CutMix-ed when configured (labels then soft targets B×K).

        The mixer draws from the global CPU generator, which the trainer seeds and checkpoints."""
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        if self.parts.mixer is not None:
            images, labels = self.parts.mixer(images, labels)
        return images, labels

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """One optimisation step on a batch from :meth:`prepare_batch` (on the device, mixed if configured)."""
        with autocast_for(self.device, self.amp):
            out = self.task(images, labels)
        loss = out["loss"]
        self.check_finite(loss)
        self.optimise(loss)
        hits = (out["logits"].detach().argmax(-1) == hard_labels(labels)).float().mean()
        metrics = {k: float(v.detach()) for k, v in out.items() if k != "logits"}
        return {**metrics, "train_acc": 100.0 * float(hits)}

    def optimise(self, loss: torch.Tensor, *also: torch.optim.Optimizer) -> None:
        """One (scaled) backward and step of the student's optimiser and schedule, and of ``also``'s optimisers."""
        optimizers = (self.optimizer, *also)
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        for optimizer in optimizers:
            self.scaler.step(optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step_count += 1
        self.iteration += 1

    def check_finite(self, loss: torch.Tensor, what: str = "the loss") -> None:
        """Stop the run on a NaN/inf loss, before it reaches the weights; the last checkpoint stays good."""
        if torch.isfinite(loss):
            return
        last = self.run_dir / rundir.CHECKPOINT_DIR / "last.pt"
        kept = f"; the last good checkpoint {last} is intact" if last.is_file() else ""
        raise TrainingError(
            f"{what} became {loss.item()} at epoch {self.epoch + 1}, step {self.step_count + 1}{kept}",
            hint="lower --lr, or use --amp off",
        )

    def log_step(self, record: dict[str, Any], *, progress: bool = True) -> None:
        if self.steps_log is not None:
            self.steps_log.append(record)
        if progress:
            self.reporter.step(record)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict[str, Any]:
        for note in self.parts.notes:
            self.log(note)
        self.log(f"device {self.device}, amp {self.amp}, {len(self.parts.data.train)} train / "
                 f"{len(self.parts.data.val)} val images, {len(self.loader)} steps per epoch")
        for epoch in range(self.epoch, self.cfg.epochs):
            self.epoch = epoch
            self.sampler.set_epoch(epoch)
            if hasattr(self.parts.data.train, "set_epoch"):  # per-image augmentation seeds: resumable per epoch
                self.parts.data.train.set_epoch(epoch)
            self.task.train()
            self.reporter.start_epoch(epoch + 1, self.cfg.epochs, len(self.loader))
            started, sums, count = time.perf_counter(), {}, 0
            for images, labels in self.loader:
                metrics = self.step(*self.prepare_batch(images, labels))
                count += 1
                for key, value in metrics.items():
                    if isinstance(value, float):  # averaged into the epoch record (not indices or labels)
                        sums[key] = sums.get(key, 0.0) + value
                record = {"iter": self.iteration, "step": self.step_count, "epoch": epoch + 1,
                          "lr": self.scheduler.get_last_lr()[0], **metrics}
                self.log_step(record)
            val = self.evaluate(self.parts.data.val)
            record = {"epoch": epoch + 1, "step": self.step_count, "val_acc": val["acc"], "val_loss": val["loss"],
                      "lr": self.scheduler.get_last_lr()[0], "time_s": round(time.perf_counter() - started, 3),
                      **{f"train_{k}" if not k.startswith("train_") else k: v / max(1, count) for k, v in sums.items()}}
            self.end_epoch(record)
            if self.stopped_early is not None:  # the plateau schedule ran out of decays
                break
        return self.finish()

    def evaluate(self, dataset, model: nn.Module | None = None, normalize: nn.Module | None = None) -> dict[str, float]:
        model = model if model is not None else self.student
        normalize = normalize if normalize is not None else self.task.student_normalize
        return accuracy(model, dataset, normalize=normalize, device=self.device,
                        batch_size=max(256, self.cfg.batch_size), amp=self.amp)

    def end_epoch(self, record: dict[str, Any]) -> None:
        improved = record["val_acc"] > self.best_val
        if improved:
            self.best_val = record["val_acc"]
        record["best_val_acc"] = self.best_val
        event = None
        if isinstance(self.scheduler, PlateauSchedule):
            event = self.scheduler.observe(record["val_acc"])
            record["lr_decays"] = self.scheduler.decays
            if event in (DECAY, STOP):
                record["restored_epoch"] = self.scheduler.best_epoch
            if event == STOP:
                self.stopped_early = record["epoch"]
                record["stopped_early"] = True
        if self.dist.is_main:
            self.epochs_log.append(record)
            extra = {"data": self.cfg.data, "epoch": str(record["epoch"]), "val_acc": f"{record['val_acc']:.4f}"}
            save_model(self.student, self.parts.student_info, self.run_dir / rundir.LAST_MODEL_FILE, extra=extra)
            if improved:
                save_model(self.student, self.parts.student_info, self.run_dir / rundir.MODEL_FILE, extra=extra)
        if event in (DECAY, STOP):
            self.restore_best()  # before the state is taken: a resumed run continues from the restored weights
        if self.dist.is_main:
            state = self.state_dict()
            if improved:
                rundir.save_checkpoint(self.run_dir / rundir.CHECKPOINT_DIR / "best.pt", state)
            # last.pt goes last: once it names an epoch, everything that epoch wrote is on disk.
            rundir.save_checkpoint(self.run_dir / rundir.CHECKPOINT_DIR / "last.pt", state)
        self.reporter.end_epoch(record)
        self.log(f"epoch {record['epoch']}/{self.cfg.epochs}: loss {record['train_loss']:.4f} "
                 f"val acc {record['val_acc']:.2f}% (best {self.best_val:.2f}%) in {record['time_s']:.1f}s")
        if event in (DECAY, STOP):
            sched = self.scheduler
            waited = f"{sched.patience} epoch{'s' * (sched.patience != 1)}"
            self.log(f"plateau: no better val acc for {waited} -> lr decay {sched.decays}/"
                     f"{sched.max_decays} (x{sched.factor:g}, now {sched.get_last_lr()[0]:.3g}), restored the best "
                     f"weights (epoch {sched.best_epoch}, val acc {self.best_val:.2f}%)")
        if event == STOP:
            self.log(f"plateau: stopping early after epoch {record['epoch']} of {self.cfg.epochs} "
                     f"({sched.max_decays} lr decays)")

    def restore_best(self) -> None:
        """Load the best-validation weights (``model.safetensors``) back into the student."""
        load_weights(self.student, str(self.run_dir / rundir.MODEL_FILE), strict=True, device=str(self.device))

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "student": self.student.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch + 1,  # epochs finished
            "step": self.step_count,
            "iteration": self.iteration,
            "best_val": self.best_val,
            "rng": rundir.rng_state(),
        }

    def resume(self) -> dict[str, Any]:
        """Continue from ``checkpoints/last.pt``: weights, optimiser, schedule, scaler, RNG and logs."""
        state = rundir.load_checkpoint(self.run_dir / rundir.CHECKPOINT_DIR / "last.pt")
        if state["epoch"] >= self.cfg.epochs:
            raise UsageError(f"{self.run_dir} has already finished its {self.cfg.epochs} epochs",
                             hint="start a new run with --out")
        stopped = state["scheduler"].get("stopped_epoch")
        if stopped is not None:
            raise UsageError(f"{self.run_dir} has already finished: the plateau schedule stopped it after epoch "
                             f"{stopped}", hint="start a new run with --out")
        self.student.load_state_dict(state["student"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step_count, self.best_val = state["epoch"], state["step"], state["best_val"]
        self.iteration = state.get("iteration", self.step_count)
        rundir.set_rng_state(state["rng"])
        if self.dist.is_main:  # forget what an interrupted epoch logged after the checkpoint
            self.steps_log.truncate_after("iter", self.iteration)
            self.epochs_log.truncate_after("epoch", self.epoch)
        self.log(f"resuming after epoch {self.epoch} (step {self.step_count}, best val acc {self.best_val:.2f}%)")
        return state

    # ------------------------------------------------------------------ the end
    def finish(self) -> dict[str, Any]:
        """Score the best weights (and the teacher) on the centered and shifted test sets."""
        data = self.parts.data
        best = self.run_dir / rundir.MODEL_FILE
        if best.is_file():
            self.student.load_state_dict(load_file(best, device=str(self.device)))
        summary: dict[str, Any] = {
            "command": self.cfg.command,
            "data": self.cfg.data,
            "epochs": self.cfg.epochs,
            "steps": self.step_count,
            "best_val_acc": self.best_val,
            "stopped_early": self.stopped_early,  # the last epoch of a run the plateau schedule ended, else None
            "shift_px": data.info["shift_px"],
            "student": {"spec": self.cfg.model, "arch": self.parts.student_info.arch,
                        "test_acc": self.evaluate(data.test)["acc"],
                        "shifted_acc": self.evaluate(data.shifted_test)["acc"]},
            "run_dir": str(self.run_dir),
        }
        if isinstance(self.scheduler, PlateauSchedule):
            summary["lr_decays"] = self.scheduler.decays
        if isinstance(self.task, DistillTask):
            teacher, norm = self.task.teacher, self.task.teacher_normalize
            summary["teacher"] = {"spec": self.cfg.teacher, "arch": self.parts.teacher_info.arch,
                                  "test_acc": self.evaluate(data.test, teacher, norm)["acc"],
                                  "shifted_acc": self.evaluate(data.shifted_test, teacher, norm)["acc"]}
        if self.dist.is_main:
            atomic_write_json(self.run_dir / "summary.json", summary)
        self.log(f"done: test acc {summary['student']['test_acc']:.2f}%, shifted {summary['student']['shifted_acc']:.2f}%")
        return summary


def run(cfg: RunConfig, out: Path, *, resume: bool = False, force: bool = False,
        reporter: Reporter | None = None) -> dict[str, Any]:
    """Build, train and summarise one run in ``out`` (the library entry point behind the CLI)."""
    cfg = cfg.validate().resolve_hard()
    out = Path(out).expanduser()
    created = not out.exists()
    run_dir = rundir.prepare_run_dir(out, resume=resume, force=force)
    try:
        trainer_cls = Trainer
        if cfg.uses_hard:
            from hardctl.distill.hard import HardTrainer as trainer_cls
        trainer = trainer_cls(build(cfg), run_dir, reporter=reporter)
    except BaseException:
        if created and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()  # a run that never started leaves nothing behind
        raise
    if resume:
        trainer.resume()
    else:
        cfg.save(run_dir)
    return trainer.fit()


__all__ = ["Components", "Trainer", "build", "run", "select_device", "select_amp", "lr_lambda"]
