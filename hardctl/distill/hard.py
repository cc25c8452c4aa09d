"""The HARD loop: KD on augmentations an augmentor learns to make hard (paper section 4, appendix A).

Two losses, both the KD divergence ``D[a, b] = T²·KL(softmax(b/T) ‖ softmax(a/T))`` of
:mod:`hardctl.distill.losses`:

* student–teacher  ``L_st = D[f_s(x̃), f_t(x̃)]`` — the student minimises it;
* teacher–teacher  ``L_tt = D[f_t(x̃), f_t(x)]`` — the augmentor keeps it small, so the teacher still
  "sees the same image" (an invariance of the teacher that the student should learn).

The augmentor maximises ``λ_s·L_st − λ_t·L_tt``. The teacher is frozen (eval, no parameter gradients),
but in augmentor steps gradients flow through teacher and student back to the augmentor. Augmentors
with a teacher–teacher term train in phases (:class:`~hardctl.distill.phases.PhaseSwitch`) and the
student learns from augmentors drawn from the pool; augmentors without one (HARD-Mix) train jointly
with the student, the augmentor ascending the student's loss through a gradient-reversal.

An *epoch* is one pass of student steps over the training set, as in plain KD, so KD and HARD runs of
the same length make the same number of student updates. Augmentor steps draw their own batches
(``aug_batch_size`` images, sampled with a seeded generator) between the student's.

Baseline augmentations come first and the augmentor works on top of them: per-image ``--augment`` /
``--random-erasing`` in the dataset, ``--mixup``/``--cutmix`` in :meth:`Trainer.prepare_batch`, for
the student's batches and the augmentor's alike; labels are then soft targets ``B×K`` (the switching
error against labels and ``train_acc`` use their argmax).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch.utils.data import default_collate

from hardctl.augment import AugmentorPool, check_output
from hardctl.augment.pool import POOL_DIR
from hardctl.data.mixing import hard_labels
from hardctl.distill.losses import kd_divergence
from hardctl.distill.phases import AUGMENTOR, STUDENT, PhaseSwitch
from hardctl.distill.trainer import Components, Trainer
from hardctl.errors import TrainingError
from hardctl.eval import autocast_for

__all__ = ["HardTrainer", "GradReverse", "disagreement"]

JOINT = "joint"


class GradReverse(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``-scale`` (the augmentor ascends the loss)."""

    @staticmethod
    def forward(ctx, x, scale: float):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.scale * grad, None


def disagreement(student_logits: torch.Tensor, reference: torch.Tensor) -> float:
    """Fraction of images whose student top-1 differs from ``reference`` (logits or labels)."""
    target = reference.argmax(-1) if reference.ndim == 2 else reference
    return float((student_logits.detach().argmax(-1) != target).float().mean())


class HardTrainer(Trainer):
    """:class:`Trainer` whose step is HARD's: student steps on pool augmentations, augmentor phases between."""

    def __init__(self, parts: Components, run_dir, **kwargs):
        super().__init__(parts, run_dir, **kwargs)
        cfg = self.cfg
        self.augmentor = parts.augmentor
        self.mode = "phases" if getattr(self.augmentor, "teacher_term", True) else JOINT
        params = [p for p in self.augmentor.parameters() if p.requires_grad]
        if not params:
            raise TrainingError(f"augmentor {cfg.augmentor!r} has no trainable parameters")
        self.aug_params = params
        self.aug_optimizer = torch.optim.Adam(params, lr=cfg.aug_lr)
        self.aug_scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")
        self.switch = PhaseSwitch(cfg.l_min, cfg.l_max, cfg.switch_patience)
        self.pool = AugmentorPool(self.augmentor, self.run_dir / POOL_DIR if self.dist.is_main else None)
        self.aug_batches = torch.Generator().manual_seed(cfg.seed + 1_000_003)  # augmentor-step batch draws
        self.aug_steps, self.phase_steps = 0, 0  # augmentor steps in all, and in the current phase
        self.phase_time = {STUDENT: 0.0, AUGMENTOR: 0.0, JOINT: 0.0}
        self.output_checked = False

    # ------------------------------------------------------------------ helpers
    def error(self, student_logits, teacher_logits, labels) -> float:
        """The switching statistic: the student's error on augmented data (see ``--switch-on``)."""
        return disagreement(student_logits, teacher_logits if self.cfg.switch_on == "teacher" else labels)

    def check_augmented(self, images, augmented) -> None:
        if not self.output_checked:
            check_output(self.augmentor, images, augmented)
            self.output_checked = True

    def next_aug_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        train = self.parts.data.train
        picks = torch.randint(len(train), (self.cfg.aug_batch_size,), generator=self.aug_batches)
        images, labels = default_collate([train[i] for i in picks.tolist()])
        return self.prepare_batch(images, labels)  # on the device, MixUp/CutMix-ed like the student's batches

    def save_to_pool(self, reason: str) -> None:
        self.pool.add(reason=reason, iteration=self.iteration, step=self.step_count, epoch=self.epoch + 1,
                      augmentor=self.cfg.augmentor)

    # ------------------------------------------------------------------ the step
    def step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        if self.mode == JOINT:
            return self.timed(JOINT, self.joint_step, images, labels)
        while self.switch.phase == AUGMENTOR:
            self.timed(AUGMENTOR, self.augmentor_step)
        return self.timed(STUDENT, self.student_step, images, labels)

    def timed(self, phase: str, fn, *args):
        started = time.perf_counter()
        out = fn(*args)
        self.phase_time[phase] += time.perf_counter() - started
        return out

    def student_step(self, images, labels) -> dict[str, float]:
        """One KD step on a batch augmented by a pool entry drawn at random."""
        entry = self.pool.sample()
        with torch.no_grad():
            augmented = self.pool.augment(entry, images)
        self.check_augmented(images, augmented)
        with autocast_for(self.device, self.amp):
            teacher_logits = self.task.teacher_logits(augmented)
            logits = self.student(self.task.student_normalize(augmented))
            parts = self.task.loss(logits, teacher_logits, labels)
        loss = parts["loss"]
        self.check_finite(loss)
        self.optimise(loss)
        error = self.error(logits, teacher_logits, labels)
        if self.switch.update(error, self.iteration):
            self.phase_steps = 0
            self.log(f"iteration {self.iteration}: student error {error:.3f} below l_min {self.cfg.l_min} for "
                     f"{self.cfg.switch_patience} iterations -> augmentor phase")
        return {"loss": float(loss.detach()), "l_st": float(parts["kd"]), "aug_error": error, "pool_entry": entry,
                "pool_size": len(self.pool),
                "train_acc": 100.0 * float((logits.argmax(-1) == hard_labels(labels)).float().mean()),
                "phase": STUDENT}

    def augmentor_step(self) -> None:
        """One augmentor step: ascend ``λ_s·L_st − λ_t·L_tt`` with the student and teacher frozen."""
        images, labels = self.next_aug_batch()
        self.student.eval()  # dropout/batch-norm must not react to the augmentor's batches
        with autocast_for(self.device, self.amp):
            augmented = self.augmentor(images)
            self.check_augmented(images, augmented)
            teacher_aug = self.task.teacher(self.task.teacher_normalize(augmented))  # gradients flow to x̃
            student_aug = self.student(self.task.student_normalize(augmented))
            # the clean teacher output is a constant target (no_grad), needed only for the invariance term
            teacher_clean = self.task.teacher_logits(images) if self.cfg.lambda_t else None
        self.student.train()
        l_st = kd_divergence(student_aug, teacher_aug, self.cfg.temperature)
        l_tt = (kd_divergence(teacher_aug, teacher_clean, self.cfg.temperature) if teacher_clean is not None
                else torch.zeros((), device=l_st.device))
        loss = -(self.cfg.lambda_s * l_st - self.cfg.lambda_t * l_tt)
        self.check_finite(loss, "the augmentor's loss")
        self.aug_optimizer.zero_grad(set_to_none=True)
        self.aug_scaler.scale(loss).backward(inputs=self.aug_params)  # no gradients for student or teacher
        self.aug_scaler.step(self.aug_optimizer)
        self.aug_scaler.update()
        self.iteration += 1
        self.aug_steps += 1
        self.phase_steps += 1
        error = self.error(student_aug, teacher_aug, labels)
        record = {"iter": self.iteration, "step": self.step_count, "epoch": self.epoch + 1, "phase": AUGMENTOR,
                  "loss": float(loss.detach()), "l_st": float(l_st.detach()), "l_tt": float(l_tt.detach()), "aug_error": error,
                  "pool_size": len(self.pool)}
        if self.switch.update(error, self.iteration):
            self.save_to_pool("switch")
            self.log(f"iteration {self.iteration}: student error {error:.3f} above l_max {self.cfg.l_max} for "
                     f"{self.cfg.switch_patience} iterations -> student phase (pool {len(self.pool)})")
        elif self.phase_steps >= self.cfg.max_aug_steps:
            self.switch.force(STUDENT, self.iteration)
            self.save_to_pool("step cap")
            self.log(f"iteration {self.iteration}: augmentor phase reached --max-aug-steps {self.cfg.max_aug_steps} "
                     f"(student error {error:.3f} < l_max {self.cfg.l_max}) -> student phase")
        record["pool_size"] = len(self.pool)
        self.log_step(record, progress=False)

    def joint_step(self, images, labels) -> dict[str, float]:
        """Augmentor and student in one step (no teacher–teacher term): the student descends ``L_st``,
        the augmentor ascends ``λ_s·L_st`` through a gradient reversal on ``x̃``."""
        with autocast_for(self.device, self.amp):
            augmented = self.augmentor(images)
            self.check_augmented(images, augmented)
            reversed_input = GradReverse.apply(augmented, float(self.cfg.lambda_s))
            teacher_logits = self.task.teacher(self.task.teacher_normalize(reversed_input))
            logits = self.student(self.task.student_normalize(reversed_input))
            parts = self.task.loss(logits, teacher_logits, labels)
        loss = parts["loss"]
        self.check_finite(loss)
        self.optimise(loss, self.aug_optimizer)  # one scaler for the one backward pass
        error = self.error(logits, teacher_logits, labels)
        return {"loss": float(loss.detach()), "l_st": float(parts["kd"]), "aug_error": error, "pool_size": len(self.pool),
                "train_acc": 100.0 * float((logits.argmax(-1) == hard_labels(labels)).float().mean()), "phase": JOINT}

    # ------------------------------------------------------------------ loop, checkpoints, summary
    def fit(self) -> dict[str, Any]:
        if not len(self.pool):
            self.save_to_pool("identity" if self.mode != JOINT else "start")
        self.log(f"HARD: augmentor {self.cfg.augmentor} ({self.mode}), l_min {self.cfg.l_min}, "
                 f"l_max {self.cfg.l_max}, patience {self.cfg.switch_patience}, lambda_s {self.cfg.lambda_s}, "
                 f"lambda_t {self.cfg.lambda_t}, augmentor lr {self.cfg.aug_lr}, batch {self.cfg.aug_batch_size}, "
                 f"error against {self.cfg.switch_on}")
        return super().fit()

    def end_epoch(self, record: dict[str, Any]) -> None:
        if self.mode == JOINT:  # joint training has no switches: keep one snapshot per epoch for visualize
            self.save_to_pool("epoch")
        record.update(self.hard_stats())
        super().end_epoch(record)

    def hard_stats(self) -> dict[str, Any]:
        return {"switches": self.switch.switches, "pool_size": len(self.pool), "aug_steps": self.aug_steps,
                "aug_fraction": self.aug_steps / max(1, self.iteration)}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "augmentor": self.augmentor.state_dict(),
                "aug_optimizer": self.aug_optimizer.state_dict(), "aug_scaler": self.aug_scaler.state_dict(),
                "switch": self.switch.state_dict(), "pool_size": len(self.pool),
                "aug_batches": self.aug_batches.get_state(), "aug_steps": self.aug_steps,
                "phase_steps": self.phase_steps, "phase_time": dict(self.phase_time)}

    def resume(self) -> dict[str, Any]:
        state = super().resume()
        self.augmentor.load_state_dict(state["augmentor"])
        self.aug_optimizer.load_state_dict(state["aug_optimizer"])
        self.aug_scaler.load_state_dict(state["aug_scaler"])
        self.switch.load_state_dict(state["switch"])
        self.pool.directory = self.run_dir / POOL_DIR
        self.pool.load(state["pool_size"], self.device)
        self.aug_batches.set_state(state["aug_batches"])
        self.aug_steps, self.phase_steps = state["aug_steps"], state["phase_steps"]
        self.phase_time = dict(state["phase_time"])
        return state

    def finish(self) -> dict[str, Any]:
        summary = super().finish()
        stats = self.hard_stats()
        summary["hard"] = {
            "augmentor": self.cfg.augmentor, "mode": self.mode, "options": self.cfg.aug_options,
            **stats, "student_steps": self.step_count,
            "time_s": {k: round(v, 3) for k, v in self.phase_time.items() if v},
            "pool_dir": str(self.run_dir / POOL_DIR),
        }
        if self.dist.is_main:
            try:
                from hardctl.visualize import render

                summary["hard"]["figures"] = {k: str(v) for k, v in render(self.run_dir, data=self.parts.data).items()}
            except Exception as exc:  # a figure must never cost the user a finished run
                self.log(f"could not draw the augmentation grid: {type(exc).__name__}: {exc}")
            from hardctl.config import atomic_write_json

            atomic_write_json(self.run_dir / "summary.json", summary)
        self.log(f"HARD: {stats['switches']} switches, pool of {stats['pool_size']}, "
                 f"{100 * stats['aug_fraction']:.1f}% of iterations in augmentor phases")
        return summary
