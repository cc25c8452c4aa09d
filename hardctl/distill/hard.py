"""HARD's state beside the student's: the augmentor, its optimiser, the phase switch and the pool.

The HARD *loop* is in :meth:`hardctl.distill.trainer.Trainer.fit` (epoch → batch → augmentor phase →
student step → switch → pool, on one screen) and its three steps are the trainer's ``student_step``,
``augmentor_step`` and ``joint_step``. This module holds what those steps share and what a checkpoint
keeps of HARD (paper section 4, appendix A):

* the augmentor and its own Adam optimiser and AMP scaler;
* the :class:`~hardctl.distill.phases.PhaseSwitch` (student ↔ augmentor on the student's error on
  augmented data, ``l_min``/``l_max`` for ``patience`` iterations);
* the :class:`~hardctl.augment.AugmentorPool` of snapshots that student steps draw from;
* the seeded generators of the augmentor steps' own batches and of the student steps' pool entries, and
  the run's HARD statistics.

Under ``torchrun`` (W ranks) both generators are seeded the same on every rank: an augmentor step's batch is
drawn for the global ``--aug-batch-size`` and each rank takes rows ``rank::W`` of it, and every rank draws
the *same* pool entry for a student step. One entry per step, shared, keeps the global batch exactly the
one-process run's (one entry augments the whole batch there) and so makes a run's result independent of the
number of ranks; an entry per rank would add diversity but tie the training to W. The pool entry's own
generator also keeps the draw independent of how many random numbers an augmentor's ε took on a rank.

Augmentors that declare a teacher–teacher term train in phases; the others (HARD-Mix) train *jointly*
with the student, ascending the student's loss from the same forward pass (``Trainer.joint_step``).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import default_collate

from hardctl.augment import AugmentorPool, check_output, part_learning_rates
from hardctl.augment.pool import POOL_DIR
from hardctl.distill.phases import AUGMENTOR, STUDENT, PhaseSwitch
from hardctl.errors import TrainingError
from hardctl.eval.metrics import top1_correct

__all__ = ["Hard", "HardSettings", "disagreement", "JOINT", "PHASES"]

JOINT, PHASES = "joint", "phases"
# a pool entry on whose last batch the teacher kept its clean prediction less often than this has left the class
OFF_CLASS = 0.5


def disagreement(student_logits: torch.Tensor, reference: torch.Tensor) -> float:
    """Fraction of images whose student top-1 differs from ``reference`` (logits, soft targets or labels)."""
    return float((~top1_correct(student_logits, reference)).float().mean())


@dataclass(frozen=True)
class HardSettings:
    """The numbers HARD runs with (resolved: the augmentor's paper defaults filled in)."""

    augmentor: str  # its name, for the pool's records and the summary
    l_min: float
    l_max: float
    switch_patience: int
    lambda_s: float
    lambda_t: float
    aug_lr: float
    aug_batch_size: int
    max_aug_steps: int
    switch_on: str = "teacher"  # the switching error against the teacher's prediction on x̃, or the labels
    pool_sampling: str = "uniform"  # which entry a student step draws (AugmentorPool.sample)
    clean_fraction: float = 0.0  # the share of a student batch left unaugmented
    seed: int = 0
    aug_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg) -> "HardSettings":
        """From a resolved :class:`~hardctl.config.RunConfig`."""
        return cls(**{name: getattr(cfg, name) for name in cls.__dataclass_fields__})


class Hard:
    """Everything HARD adds to a run, for a training loop and its steps to use (the trainer's, the toy's)."""

    def __init__(self, augmentor: nn.Module, cfg: HardSettings, *, device: torch.device, amp: str = "off",
                 pool_dir: Path | None = None, rank: int = 0, world_size: int = 1):
        self.augmentor, self.cfg = augmentor, cfg
        # the registration says whether the augmentor has a teacher–teacher term (see hardctl.augment)
        self.mode = PHASES if getattr(augmentor, "teacher_term", True) else JOINT
        # one Adam, a parameter group per part of a composition at that part's learning rate
        groups = part_learning_rates(augmentor, cfg.aug_options, cfg.aug_lr)
        self.params = [p for _, params, _ in groups for p in params]
        if not self.params:
            raise TrainingError(f"augmentor {cfg.augmentor!r} has no trainable parameters")
        self.learning_rates = " + ".join(f"{name} {lr:g}" if name else f"{lr:g}" for name, _, lr in groups)
        self.optimizer = torch.optim.Adam([{"params": params, "lr": lr} for _, params, lr in groups], lr=cfg.aug_lr)
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
        self.switch = PhaseSwitch(cfg.l_min, cfg.l_max, cfg.switch_patience)
        self.pool = AugmentorPool(augmentor, pool_dir)
        self.batches = torch.Generator().manual_seed(cfg.seed + 1_000_003)  # augmentor-step batch draws
        self.entry_draws = torch.Generator().manual_seed(cfg.seed + 2_000_003)  # student steps' pool entries
        self.rank, self.world_size = rank, world_size  # this rank takes rows rank::world_size of a drawn batch
        self.steps, self.phase_steps = 0, 0  # augmentor steps in all, and in the current phase
        self.phase_time = {STUDENT: 0.0, AUGMENTOR: 0.0, JOINT: 0.0}
        self.output_checked = False
        self.last_output: torch.Tensor | None = None

    @property
    def joint(self) -> bool:
        return self.mode == JOINT

    @property
    def in_augmentor_phase(self) -> bool:
        return self.switch.phase == AUGMENTOR

    def switching_error(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> float:
        """The switching statistic: the student's error on augmented data (see ``--switch-on``)."""
        return disagreement(student_logits, teacher_logits if self.cfg.switch_on == "teacher" else labels)

    def check(self, images: torch.Tensor, augmented: torch.Tensor) -> None:
        """The augmentor's first output is checked for shape, finiteness and range (one line naming the plugin);
        later outputs are kept for :meth:`blame`, which looks at them only when a loss is no longer finite."""
        self.last_output = augmented
        if not self.output_checked:
            check_output(self.augmentor, images, augmented)
            self.output_checked = True

    def blame(self) -> None:
        """Raise the one-line error naming the augmentor plugin if its last output is what made a loss NaN."""
        out = self.last_output
        if out is not None and not bool(torch.isfinite(out.detach()).all()):
            check_output(self.augmentor, out, out)

    def draw_batch(self, dataset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """An augmentor step's own batch of ``aug_batch_size`` training images (seeded, resumable): this rank's
        rows ``rank::world_size`` of it, as images, labels and their indices in ``dataset``."""
        picks = torch.randint(len(dataset), (self.cfg.aug_batch_size,), generator=self.batches)
        picks = picks[self.rank :: self.world_size]
        images, labels = default_collate([dataset[i] for i in picks.tolist()])
        return images, labels, picks

    def draw_entry(self) -> int:
        """The pool entry a student step augments with (``--pool-sampling``)."""
        return self.pool.sample(self.cfg.pool_sampling, generator=self.entry_draws)

    def augment(self, entry: int, images: torch.Tensor) -> torch.Tensor:
        """``images`` as pool entry ``entry`` augments them, without gradients (a student step's input); the
        first ``clean_fraction`` of the batch stays as it is (the batch order is already random)."""
        clean = int(round(self.cfg.clean_fraction * images.shape[0]))
        with torch.no_grad():
            augmented = self.pool.augment(entry, images[clean:])
        self.check(images[clean:], augmented)
        return torch.cat([images[:clean], augmented.to(images.dtype)]) if clean else augmented

    def student_stepped(self, error: float, iteration: int) -> bool:
        """Feed a student step's error to the switch; True when the augmentor phase begins."""
        if self.switch.update(error, iteration):
            self.phase_steps = 0
            return True
        return False

    def augmentor_stepped(self, error: float, iteration: int, *, teacher_kept: float | None = None,
                          **where: Any) -> str | None:
        """Count an augmentor step and feed its error to the switch. When the phase ends — the error stayed
        above ``l_max`` (``"switch"``) or ``max_aug_steps`` ran out (``"step cap"``) — the augmentor joins the
        pool and the reason is returned; otherwise ``None``."""
        self.steps += 1
        self.phase_steps += 1
        if self.switch.update(error, iteration):
            reason = "switch"
        elif self.phase_steps >= self.cfg.max_aug_steps:
            self.switch.force(STUDENT, iteration)
            reason = "step cap"
        else:
            return None
        if teacher_kept is not None:  # the entry remembers whether its last batch kept the teacher's predictions
            where["teacher_kept"] = round(teacher_kept, 4)
        self.save(reason, iteration=iteration, **where)
        return reason

    def save(self, reason: str, **where: Any) -> None:
        """A pool entry of the augmentor as it is now (at a switch back to the student, or per joint epoch)."""
        self.pool.add(reason=reason, augmentor=self.cfg.augmentor, **where)

    @contextmanager
    def timed(self, phase: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.phase_time[phase] += time.perf_counter() - started

    # ------------------------------------------------------------------ statistics and checkpoints
    def stats(self, iterations: int) -> dict[str, Any]:
        return {"switches": self.switch.switches, "pool_size": len(self.pool), "aug_steps": self.steps,
                "aug_fraction": self.steps / max(1, iterations)}

    def summary(self, iterations: int, student_steps: int) -> dict[str, Any]:
        out = {"augmentor": self.cfg.augmentor, "mode": self.mode, "options": self.cfg.aug_options,
               **self.stats(iterations), "student_steps": student_steps,
               "time_s": {k: round(v, 3) for k, v in self.phase_time.items() if v}}
        off_class = self.off_class_entries()
        if off_class is not None:
            out["off_class_entries"] = off_class
        return out

    def off_class_entries(self) -> int | None:
        """How many pool entries changed the teacher's prediction on more than half of their last batch; None
        where no entry recorded it (no teacher–teacher term, or no augmentor phase yet)."""
        kept = [info["teacher_kept"] for info in self.pool.info if info.get("teacher_kept") is not None]
        return sum(k < OFF_CLASS for k in kept) if kept else None

    def end_warning(self) -> str | None:
        """What a run that did not do what HARD is for says at its end, with the likely fix: no switch at all (the
        augmentor never trained), or trained pool entries that left the class (the teacher changed its prediction
        on more than half of their last batch, so the student learned the teacher's guesses on them)."""
        c = self.cfg
        if not self.joint and self.switch.switches == 0:  # the run was plain KD on the identity augmentor
            return (f"HARD made no switch: the student's error on augmented data never stayed below l_min ({c.l_min}) "
                    f"for {c.switch_patience} iterations, so the augmentor never trained (train longer with --epochs, "
                    f"or raise --l-min)")
        off_class = self.off_class_entries()
        if off_class:
            return (f"{off_class} of {len(self.pool) - 1} trained pool entries changed the teacher's prediction "
                    f"on more than half of their last batch: they left the class, and the student learned the "
                    f"teacher's guesses on them (see augmentations.png; a larger --lambda-t or a lower --aug-lr holds "
                    f"the augmentor closer)")
        return None

    def describe(self) -> str:
        c = self.cfg
        return (f"HARD: augmentor {c.augmentor} ({self.mode}), l_min {c.l_min}, l_max {c.l_max}, patience "
                f"{c.switch_patience}, lambda_s {c.lambda_s}, lambda_t {c.lambda_t}, augmentor lr {self.learning_rates}, "
                f"batch {c.aug_batch_size}, error against {c.switch_on}, pool sampling {c.pool_sampling}"
                + (f", {c.clean_fraction:.0%} of each student batch clean" if c.clean_fraction else ""))

    def state_dict(self) -> dict[str, Any]:
        return {"augmentor": self.augmentor.state_dict(), "aug_optimizer": self.optimizer.state_dict(),
                "aug_scaler": self.scaler.state_dict(), "switch": self.switch.state_dict(),
                "pool_size": len(self.pool), "aug_batches": self.batches.get_state(),
                "entry_draws": self.entry_draws.get_state(), "aug_steps": self.steps,
                "phase_steps": self.phase_steps, "phase_time": dict(self.phase_time)}

    def load_state_dict(self, state: dict[str, Any], run_dir: Path, device: torch.device) -> None:
        """Continue from a checkpoint; pool files written after it are stale and removed."""
        self.augmentor.load_state_dict(state["augmentor"])
        self.optimizer.load_state_dict(state["aug_optimizer"])
        self.scaler.load_state_dict(state["aug_scaler"])
        self.switch.load_state_dict(state["switch"])
        # every rank reads the pool files, but only rank 0's pool has the directory to write (and prune) them
        self.pool.load(state["pool_size"], device, directory=Path(run_dir) / POOL_DIR)
        self.batches.set_state(state["aug_batches"])
        if "entry_draws" in state:  # checkpoints of versions that drew entries from the global RNG lack it
            self.entry_draws.set_state(state["entry_draws"])
        self.steps, self.phase_steps = state["aug_steps"], state["phase_steps"]
        self.phase_time = dict(state["phase_time"])
