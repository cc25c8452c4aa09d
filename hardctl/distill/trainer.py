"""One trainer for ``hardctl train`` and ``hardctl distill``, with HARD's loop in plain sight.

:meth:`Trainer.fit` is the whole loop on one screen: epoch → batch → (HARD) augmentor phase → student
step → phase switch → pool. The steps it calls are below it: :meth:`Trainer.student_step` (supervised,
KD, or KD on a pool augmentation), :meth:`Trainer.augmentor_step` (ascend ``λ_s·L_st − λ_t·L_tt``, see
:func:`hardctl.distill.losses.hard_objective`) and :meth:`Trainer.joint_step` (HARD-Mix). Every step is a
call of the task (:mod:`hardctl.distill.tasks`), so the KD objective is written once. HARD's state lives
in :class:`hardctl.distill.hard.Hard`; wiring is :mod:`hardctl.distill.build`, the run entry point
:mod:`hardctl.distill.run`.

Under ``torchrun`` (W ranks, :mod:`hardctl.distributed`) the same loop runs on every rank in lockstep:

* ``--batch-size`` (and ``--aug-batch-size``) are global; rank ``r`` takes rows ``r::W`` of each batch, so
  the ranks together see the one-process run's batch at every step.
* The student is DDP-wrapped for its own steps (gradients averaged; each rank's loss is weighted by its
  share of the global batch, so the average is the global batch's mean even for an epoch's smaller last
  batch); ``--sync-bn`` makes its batch-norm layers synchronise. The teacher is frozen and not wrapped.
* Every logged number is the global batch's (:func:`hardctl.distributed.global_means`), so HARD's switching
  statistic is the same on all ranks and all switch on the same iteration. The augmentor is not wrapped:
  its gradients are averaged explicitly after each augmentor (or joint) step, so all ranks hold the same
  augmentor — checked bit for bit whenever it joins the pool — and the same pool; rank 0 writes its files.
* Evaluation shards the images over the ranks and sums the counts (:mod:`hardctl.eval.engine`).
* Each rank has its own global RNG stream (augmentors' ε, MixUp/CutMix draws: they mix within a rank's
  rows), saved per rank in the checkpoint; a resumed run must have the same world size.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import load_model as load_weights
from torch import nn

from hardctl import distributed

from hardctl.augment.pool import POOL_DIR
from hardctl.data.gpudecode import EncodedBatch
from hardctl.distill import rundir, speed
from hardctl.distill.build import Components
from hardctl.distill.hard import JOINT, Hard, HardSettings, disagreement
from hardctl.distill.losses import hard_objective, kd_divergence
from hardctl.distill.phases import AUGMENTOR, STUDENT
from hardctl.distill.progress import Reporter
from hardctl.distill.sampling import DistInfo, EpochSampler
from hardctl.distill.schedules import DECAY, STOP, PlateauSchedule, make_optimizer, make_schedule
from hardctl.distill.tasks import DistillTask
from hardctl.distill.teachercache import CleanTeacherLogits
from hardctl.device import autocast_for
from hardctl.errors import TrainingError, UsageError
from hardctl.eval import accuracy
from hardctl.eval.metrics import top1_accuracy
from hardctl.models import save_model

__all__ = ["Trainer"]


class Trainer:
    """The training loop, its checkpoints and its logs for one run directory."""

    def __init__(self, components: Components, run_dir: Path, *, reporter: Reporter | None = None,
                 dist: DistInfo | None = None, sync_bn: bool = False):
        self.components, self.cfg, self.run_dir = components, components.cfg, Path(run_dir)
        self.dist = dist or distributed.current()
        world, main = self.dist.world_size, self.dist.is_main
        self.reporter = (reporter or Reporter()) if main else Reporter()  # one progress display: rank 0's
        self.task, self.device, self.amp = components.task, components.device, components.amp
        self.wrappers = speed.StudentWrappers(self.task, self.cfg, device=self.device, world_size=world,
                                              sync_bn=sync_bn)  # channels-last, DDP, compile
        self.student = self.wrappers.student
        # A last batch of a single image would crash batch-norm in train mode ("Expected more than 1 value per
        # channel", e.g. ResNets whose last feature map is 1×1), and one smaller than the world leaves a rank
        # without a batch: the sampler drops only those, so step counts stay those of the full epoch otherwise.
        self.sampler = EpochSampler(len(components.data.train), seed=self.cfg.seed, dist=self.dist,
                                    batch_size=self.cfg.batch_size)
        self.share = 1.0  # this rank's fraction of the current global batch (1 in a single process)
        self.loader, self.decoder = speed.training_loader(components.data.train, self.cfg, self.sampler,
                                                          device=self.device, rank=self.dist.rank, world_size=world)
        params = self.student_params = [p for p in self.student.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(self.cfg.optimizer, params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        self.scheduler = make_schedule(self.optimizer, self.cfg, len(self.loader))
        self.stopped_early: int | None = None  # the epoch after which the plateau schedule ended the run
        # A loss scaler only makes sense for fp16: bf16 has float32's exponent range.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")
        self.epoch, self.step_count, self.best_val = 0, 0, -1.0
        self.iteration = 0  # every optimisation step (HARD adds augmentor steps between the student's)
        self.steps_log = rundir.JsonlLog(self.run_dir / rundir.STEPS_FILE) if main else None
        self.epochs_log = rundir.JsonlLog(self.run_dir / rundir.EPOCHS_FILE) if main else None
        log_file = rundir.LOG_FILE if main else distributed.rank_log_name(self.dist.rank)
        self.log = rundir.RunLog(self.run_dir / log_file, self.reporter.log if main else None)
        self.hard = None  # HARD's augmentor, switch and pool (distill with --augmentor)
        if components.augmentor is not None:
            self.hard = Hard(components.augmentor, HardSettings.from_config(self.cfg), device=self.device, amp=self.amp,
                             pool_dir=self.run_dir / POOL_DIR if main else None, rank=self.dist.rank, world_size=world)
        # the teacher's logits on the clean training images, computed once for all augmentor steps (a third of one)
        self.clean_logits = (CleanTeacherLogits.for_run(self.task, components.data.train, mixer=components.mixer,
                                                        num_classes=components.data.num_classes, device=self.device)
                             if self.hard is not None and not self.hard.joint else None)
        if world > 1 and not main:  # each rank its own random stream (ε, MixUp); the student was seeded alike
            torch.manual_seed(self.cfg.seed * 1_000_003 + self.dist.rank)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict[str, Any]:
        """Train to the end (or the plateau schedule's stop) and return the run's summary."""
        self.start_run()
        for epoch in range(self.epoch, self.cfg.epochs):
            if self.stopped_early is not None:  # the plateau schedule ended the run (before a resume)
                break
            self.start_epoch(epoch)
            started, totals = time.perf_counter(), EpochTotals()
            for index, (images, labels) in enumerate(self.loader):
                record = self.train_batch(*self.prepare_batch(images, labels, index))
                record = {"iter": self.iteration, "step": self.step_count, "epoch": epoch + 1,
                          "lr": self.scheduler.get_last_lr()[0], **record}
                totals.add(record)
                self.log_step(record)
            record = totals.record(epoch + 1, self.step_count, self.scheduler.get_last_lr()[0],
                                   self.evaluate(self.components.data.val), time.perf_counter() - started)
            if self.components.data.shifted_val is not None and len(self.components.data.shifted_val):
                # how much invariance the student has so far (HARD's convergence); never used to pick a checkpoint
                record["val_shifted_acc"] = self.evaluate(self.components.data.shifted_val)["acc"]
            self.end_epoch(record)
        return self.finish()

    def train_batch(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        """What one batch of the epoch does: a student step, and in HARD the augmentor around it."""
        hard = self.hard
        if hard is None:  # supervised training, or plain KD
            return self.student_step(images, labels)
        if hard.joint:  # HARD-Mix: augmentor and student in one backward pass
            with hard.timed(JOINT):
                return self.joint_step(images, labels)
        if hard.in_augmentor_phase:  # until the student's error stays above l_max (or the step cap) ...
            with hard.timed(AUGMENTOR):
                self.augmentor_phase()  # ... which ends by adding the augmentor to the pool
        with hard.timed(STUDENT):  # KD on the batch as a random pool entry augments it
            record = self.student_step(images, labels, entry=hard.draw_entry())
        if hard.student_stepped(record["aug_error"], self.iteration):  # below l_min for k iterations
            self.log(f"iteration {self.iteration}: student error {record['aug_error']:.3f} below l_min "
                     f"{self.cfg.l_min} for {self.cfg.switch_patience} iterations -> augmentor phase")
        return record

    def augmentor_phase(self) -> None:
        """Augmentor steps until the student's error stays above ``l_max`` (or ``--max-aug-steps``), then the
        augmentor joins the pool and the student phase begins."""
        hard, cfg = self.hard, self.cfg
        while True:
            record = self.augmentor_step()
            error = record["aug_error"]
            ended = hard.augmentor_stepped(error, self.iteration, teacher_kept=record.get("teacher_kept"),
                                           step=self.step_count, epoch=self.epoch + 1)
            self.log_step({**record, "pool_size": len(hard.pool)}, progress=False)
            if ended == "switch":
                self.log(f"iteration {self.iteration}: student error {error:.3f} above l_max {cfg.l_max} for "
                         f"{cfg.switch_patience} iterations -> student phase (pool {len(hard.pool)})")
            elif ended == "step cap":
                self.log(f"iteration {self.iteration}: augmentor phase reached --max-aug-steps {cfg.max_aug_steps} "
                         f"(student error {error:.3f} < l_max {cfg.l_max}) -> student phase (pool {len(hard.pool)})")
            if ended:
                self.check_lockstep()
                return

    # ------------------------------------------------------------------ the steps
    def prepare_batch(self, images: torch.Tensor, labels: torch.Tensor,
                      index: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A training batch on the device, MixUp/CutMix-ed when configured (labels then soft targets B×K);
        ``index``: its place in the epoch, whose global batch size gives this rank's :attr:`share`.

        The mixer draws from the global CPU generator, which the trainer seeds and checkpoints."""
        if index is not None:
            self.share = len(images) / self.sampler.global_batch(index, self.cfg.batch_size)
        if isinstance(images, EncodedBatch):
            images = self.decoder(images, self.device)
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        if self.cfg.channels_last:
            images = speed.to_channels_last(images)
        if self.components.mixer is not None:
            images, labels = self.components.mixer(images, labels)
        return images, labels

    def student_step(self, images: torch.Tensor, labels: torch.Tensor, *, entry: int | None = None) -> dict[str, Any]:
        """One optimisation step of the student on a prepared batch; in HARD, on the batch as pool entry
        ``entry`` augments it (``L_st``, no gradients to the augmentor)."""
        if entry is not None:
            images = self.hard.augment(entry, images)
        with autocast_for(self.device, self.amp):
            out = self.task(images, labels)
        self.check_finite(out["loss"])
        self.optimise(out["loss"])
        train_acc = top1_accuracy(out["logits"], labels)
        if entry is None:
            metrics = {k: float(v.detach()) for k, v in out.items() if k not in ("logits", "teacher_logits")}
            return distributed.global_means({**metrics, "train_acc": train_acc}, self.share)
        return distributed.global_means({  # the global batch's numbers: every rank switches on the same iteration
            "loss": float(out["loss"].detach()), "l_st": float(out["kd"].detach()),
            "aug_error": self.hard.switching_error(out["logits"], out["teacher_logits"], labels), "pool_entry": entry,
            "pool_size": len(self.hard.pool), "train_acc": train_acc, "phase": STUDENT}, self.share)

    def augmentor_step(self) -> dict[str, Any]:
        """One augmentor step on its own batch: ascend ``λ_s·L_st − λ_t·L_tt``, student and teacher frozen.
        Returns its step record, with the switching statistic ``aug_error``."""
        hard, cfg = self.hard, self.cfg
        images, labels, picks = hard.draw_batch(self.components.data.train)
        images, labels = self.prepare_batch(images, labels)  # mixed like the student's
        self.student.eval()  # dropout/batch-norm must not react to the augmentor's batches
        with autocast_for(self.device, self.amp), self.wrappers.plain_student():
            augmented = hard.augmentor(images)
            hard.check(images, augmented)
            out = self.task(augmented, labels, input_grad=True)  # gradients reach x̃ through both models
            l_st = self.augmentor_kd(out)
            # the invariance term needs the teacher on the clean batch too: skipped when λ_t = 0
            clean = self.clean_teacher_logits(images, picks) if cfg.lambda_t else None
            l_tt = (self.task.invariance(out["teacher_logits"], clean, temperature=cfg.aug_temperature)
                    if clean is not None else torch.zeros(()))
        self.student.train()
        loss = -hard_objective(l_st, l_tt.to(l_st.device), lambda_s=cfg.lambda_s, lambda_t=cfg.lambda_t)
        self.check_finite(loss, "the augmentor's loss")
        hard.optimizer.zero_grad(set_to_none=True)
        hard.scaler.scale(loss).backward(inputs=hard.params)  # no gradients for student or teacher
        distributed.average_gradients(hard.params)  # equal shards: the mean is the global batch's gradient
        hard.scaler.step(hard.optimizer)
        hard.scaler.update()
        self.iteration += 1
        return distributed.global_means({
            "iter": self.iteration, "step": self.step_count, "epoch": self.epoch + 1, "phase": AUGMENTOR,
            "loss": float(loss.detach()), "l_st": float(l_st.detach()), "l_tt": float(l_tt.detach()),
            "aug_error": hard.switching_error(out["logits"], out["teacher_logits"], labels), "pool_size": len(hard.pool),
            # how often the teacher still predicts what it does on the clean image (what L_tt asks for)
            **({"teacher_kept": 1.0 - disagreement(out["teacher_logits"], clean)} if clean is not None else {}),
        }, 1.0 / self.dist.world_size)

    def clean_teacher_logits(self, images: torch.Tensor, picks: torch.Tensor) -> torch.Tensor:
        """The teacher's logits on an augmentor step's clean batch (training images ``picks``): rows of the run's
        table where it has one, else a teacher forward."""
        return self.clean_logits(picks) if self.clean_logits is not None else self.task.teacher_logits(images)

    def joint_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        """Augmentor and student in one step (no teacher–teacher term, HARD-Mix): the student descends its KD
        loss, the augmentor ascends ``λ_s·L_st`` at its own temperature (``--aug-temperature``), from one
        forward pass."""
        hard, cfg = self.hard, self.cfg
        with autocast_for(self.device, self.amp):
            augmented = hard.augmentor(images)
            hard.check(images, augmented)
            out = self.task(augmented, labels, input_grad=True)
            l_st = self.augmentor_kd(out)
        self.check_finite(out["loss"])
        self.optimise(out["loss"], augmentor_loss=-hard_objective(l_st, 0.0, lambda_s=cfg.lambda_s, lambda_t=0.0))
        return distributed.global_means({
            "loss": float(out["loss"].detach()), "l_st": float(l_st.detach()),
            "aug_error": hard.switching_error(out["logits"], out["teacher_logits"], labels), "pool_size": len(hard.pool),
            "train_acc": top1_accuracy(out["logits"], labels), "phase": JOINT}, self.share)

    def augmentor_kd(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        """``L_st`` of the augmentor's objective, at ``--aug-temperature``: the task's own KD term when the two
        temperatures agree (computed once), else the divergence at the augmentor's temperature."""
        if self.cfg.aug_temperature == self.task.temperature:
            return out["kd"]
        return kd_divergence(out["logits"], out["teacher_logits"], self.cfg.aug_temperature)

    def optimise(self, loss: torch.Tensor, *, augmentor_loss: torch.Tensor | None = None) -> None:
        """One (scaled) backward and step of the student's optimiser and schedule; with ``augmentor_loss`` (joint
        training) also of the augmentor's, each loss reaching only its own parameters.

        Under DDP each rank's mean loss is weighted by W × its share of the global batch, so the averaged
        gradients are those of the global batch's mean (a factor of exactly 1 for equal shards)."""
        self.optimizer.zero_grad(set_to_none=True)
        weight = self.share * self.dist.world_size
        if weight != 1.0:
            loss = loss * weight
            augmentor_loss = augmentor_loss * weight if augmentor_loss is not None else None
        if augmentor_loss is None:
            self.scaler.scale(loss).backward()
        else:
            self.hard.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward(inputs=self.student_params, retain_graph=True)
            self.scaler.scale(augmentor_loss).backward(inputs=self.hard.params)
            distributed.average_gradients(self.hard.params)
            self.scaler.step(self.hard.optimizer)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step_count += 1
        self.iteration += 1

    # ------------------------------------------------------------------ bookkeeping
    def start_run(self) -> None:
        for note in self.components.notes:
            self.log(note)
        self.log(f"device {self.device}, amp {self.amp}, {len(self.components.data.train)} train / "
                 f"{len(self.components.data.val)} val images, {len(self.loader)} steps per epoch")
        if self.hard is not None:
            if not len(self.hard.pool):  # entry 0: the identity-initialised augmentor
                self.hard.save("start" if self.hard.joint else "identity", iteration=self.iteration,
                               step=self.step_count, epoch=self.epoch + 1)
            self.log(self.hard.describe())

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)
        if hasattr(self.components.data.train, "set_epoch"):  # per-image augmentation seeds: resumable per epoch
            self.components.data.train.set_epoch(epoch)
        self.task.train()
        self.reporter.start_epoch(epoch + 1, self.cfg.epochs, len(self.loader))

    def check_finite(self, loss: torch.Tensor, what: str = "the loss") -> None:
        """Stop the run on a NaN/inf loss, before it reaches the weights; the last checkpoint stays good."""
        if torch.isfinite(loss):
            return
        last = self.run_dir / rundir.LAST_CHECKPOINT
        kept = f"; the last good checkpoint {last} is intact" if last.is_file() else ""
        where = f"at epoch {self.epoch + 1}, step {self.step_count + 1}{kept}"
        if self.hard is not None:
            try:  # a learned augmentor whose pixels went NaN is named, instead of blaming the learning rate
                self.hard.blame()
            except TrainingError as exc:
                raise TrainingError(f"{exc.message} {where}", hint="check the augmentor's parameters and "
                                    "--aug-lr; a plugin's author can reproduce it with --debug") from None
        raise TrainingError(f"{what} became {loss.item()} {where}", hint="lower --lr, or use --amp off")

    def check_lockstep(self) -> None:
        """Under DDP, the augmentor that just joined the pool must be bit-identical on every rank (its gradients
        were averaged and its steps are the same); say so in each rank's log, with a checksum to compare."""
        if self.dist.world_size == 1:
            return
        if not distributed.same_on_all_ranks(self.hard.params):
            raise TrainingError(f"the ranks' augmentors differ after iteration {self.iteration}",
                                hint="a rank computed differently; rerun with one process and report it")
        checksum = sum(float(p.detach().double().sum()) for p in self.hard.params)
        self.log(f"pool entry {len(self.hard.pool) - 1}: augmentor identical on all {self.dist.world_size} ranks "
                 f"(parameter sum {checksum:.12g})")

    def log_step(self, record: dict[str, Any], *, progress: bool = True) -> None:
        if self.steps_log is not None:
            self.steps_log.append(record)
        if progress:
            self.reporter.step(record)

    def evaluate(self, dataset, model: nn.Module | None = None, normalize: nn.Module | None = None) -> dict[str, float]:
        model = model if model is not None else self.student
        distributed.broadcast_buffers(self.student)  # rank 0's batch-norm statistics, as DDP's next forward would
        normalize = normalize if normalize is not None else self.task.student_normalize
        return accuracy(model, dataset, normalize=normalize, device=self.device,
                        batch_size=max(256, self.cfg.batch_size), amp=self.amp)

    @rundir.one_checkpoint  # its weights files and checkpoints replace the previous epoch's together, on return
    def end_epoch(self, record: dict[str, Any]) -> None:
        """Validation bookkeeping, the plateau schedule, weights and the checkpoint of a finished epoch."""
        if self.hard is not None:
            if self.hard.joint and joint_snapshot_due(self.epoch + 1, self.cfg.epochs):  # for visualize
                self.hard.save("epoch", iteration=self.iteration, step=self.step_count, epoch=self.epoch + 1)
                self.check_lockstep()
            record.update(self.hard.stats(self.iteration))
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
            info = self.components.student_info
            save_model(self.student, info, self.run_dir / rundir.LAST_MODEL_FILE, extra=extra)
            if improved:
                save_model(self.student, info, self.run_dir / rundir.BEST_MODEL_FILE, extra=extra)
            if improved or self.cfg.select == "last":  # model.safetensors: the student the run reports
                save_model(self.student, info, self.run_dir / rundir.MODEL_FILE, extra={**extra, "select": self.cfg.select})
        if event in (DECAY, STOP):
            self.restore_best()  # before the state is taken: a resumed run continues from the restored weights
        state = self.state_dict()  # on every rank: it gathers their random streams
        if self.dist.is_main:
            if improved:
                rundir.save_checkpoint(self.run_dir / rundir.BEST_CHECKPOINT, state)
            # last.pt goes last: once it names an epoch, everything that epoch wrote is on disk.
            rundir.save_checkpoint(self.run_dir / rundir.LAST_CHECKPOINT, state)
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
        """Load the best-validation weights back into the student (``model.safetensors`` in runs of hardctl
        versions that wrote no ``best.safetensors``)."""
        best = self.run_dir / rundir.BEST_MODEL_FILE
        best = best if best.is_file() else self.run_dir / rundir.MODEL_FILE
        load_weights(self.student, str(best), strict=True, device=str(self.device))

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
            "world_size": self.dist.world_size,
            "rank_rngs": distributed.all_gather_object(rundir.rng_state()) if self.dist.world_size > 1 else [],
            **(self.hard.state_dict() if self.hard is not None else {}),
        }

    def resume(self) -> dict[str, Any]:
        """Continue from ``checkpoints/last.pt``: weights, optimiser, schedule, scaler, RNG and logs."""
        state = rundir.load_checkpoint(self.run_dir / rundir.LAST_CHECKPOINT)
        stopped = state["scheduler"].get("stopped_epoch")
        trained = state["epoch"] >= self.cfg.epochs or stopped is not None
        if trained and (self.run_dir / rundir.SUMMARY_FILE).is_file():
            done = (f"the plateau schedule stopped it after epoch {stopped}" if stopped is not None
                    else f"it ran its {self.cfg.epochs} epochs")
            raise UsageError(f"{self.run_dir} has already finished: {done}", hint="start a new run with --out")
        saved_world = state.get("world_size", 1)
        if saved_world != self.dist.world_size:  # the data shards, random streams and batch split depend on it
            raise UsageError(f"{self.run_dir} was trained by {saved_world} process{'es' * (saved_world != 1)}, "
                             f"this resume has {self.dist.world_size}",
                             hint=f"resume it with torchrun --nproc-per-node {saved_world}" if saved_world > 1
                             else "resume it without torchrun (one process)")
        # trained but without a summary: killed after its last checkpoint; fit() goes straight to finish()
        self.stopped_early = stopped
        self.student.load_state_dict(state["student"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step_count, self.best_val = state["epoch"], state["step"], state["best_val"]
        self.iteration = state.get("iteration", self.step_count)
        rank_rngs = state.get("rank_rngs") or [state["rng"]]
        rundir.set_rng_state(rank_rngs[self.dist.rank])
        if self.hard is not None:
            self.hard.load_state_dict(state, self.run_dir, self.device)
        if self.dist.is_main:  # forget what an interrupted epoch logged after the checkpoint
            self.steps_log.truncate_after("iter", self.iteration)
            self.epochs_log.truncate_after("epoch", self.epoch)
        self.log(f"resuming after epoch {self.epoch} (step {self.step_count}, best val acc {self.best_val:.2f}%)")
        return state

    def score_candidates(self) -> dict[str, dict[str, Any]]:
        """The last and the best-validation weights, each scored on the centered and shifted test sets, with
        the epoch and validation accuracy it was saved at. The checkpoint is never picked on test data."""
        data, scored = self.components.data, {}
        for which, name in (("last", rundir.LAST_MODEL_FILE), ("best", rundir.BEST_MODEL_FILE)):
            path = self.run_dir / name
            if not path.is_file():
                continue
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
            self.student.load_state_dict(load_file(path, device=str(self.device)))
            scored[which] = {"file": name, "epoch": int(meta.get("epoch", 0)) or None,
                             "val_acc": float(meta["val_acc"]) if "val_acc" in meta else None,
                             "test_acc": self.evaluate(data.test)["acc"],
                             "shifted_acc": self.evaluate(data.shifted_test)["acc"]}
        return scored

    def finish(self) -> dict[str, Any]:
        """Score the reported student (``--select``), the other candidate and the teacher on the centered and
        shifted test sets: the run's summary (written by :func:`hardctl.distill.run.run`, with the figures)."""
        data = self.components.data
        distributed.barrier()  # rank 0 has committed the last epoch's weights files, which every rank reads next
        candidates = self.score_candidates()
        selected = candidates.get(self.cfg.select) or candidates.get("last") or {}
        if self.cfg.select in candidates:  # the student in memory is the one reported
            self.student.load_state_dict(load_file(self.run_dir / rundir.MODEL_FILE, device=str(self.device)))
        summary: dict[str, Any] = {
            "command": self.cfg.command,
            "data": self.cfg.data,
            "epochs": self.cfg.epochs,
            "steps": self.step_count,
            "best_val_acc": self.best_val,
            "stopped_early": self.stopped_early,  # the last epoch of a run the plateau schedule ended, else None
            "shift_px": data.info["shift_px"],
            "select": self.cfg.select,  # which of the candidates "student" is: the last or the best-validation one
            "student": {"spec": self.cfg.model, "arch": self.components.student_info.arch,
                        "test_acc": selected.get("test_acc"), "shifted_acc": selected.get("shifted_acc")},
            "candidates": candidates,
            "run_dir": str(self.run_dir),
            "plugins": self.components.provenance,
        }
        if isinstance(self.scheduler, PlateauSchedule):
            summary["lr_decays"] = self.scheduler.decays
        if isinstance(self.task, DistillTask):
            teacher, norm = getattr(self.task.teacher, "_orig_mod", self.task.teacher), self.task.teacher_normalize
            summary["teacher"] = {"spec": self.cfg.teacher, "arch": self.components.teacher_info.arch,
                                  "test_acc": self.evaluate(data.test, teacher, norm)["acc"],
                                  "shifted_acc": self.evaluate(data.shifted_test, teacher, norm)["acc"]}
        if self.hard is not None:
            stats = self.hard.stats(self.iteration)
            summary["hard"] = {**self.hard.summary(self.iteration, self.step_count),
                               "pool_dir": str(self.run_dir / POOL_DIR)}
            self.log(f"HARD: {stats['switches']} switches, pool of {stats['pool_size']}, "
                     f"{100 * stats['aug_fraction']:.1f}% of iterations in augmentor phases")
            warning = self.hard.end_warning()
            if warning:
                summary["hard"]["warning"] = warning
                self.log(warning)
        self.log(f"done: test acc {summary['student']['test_acc']:.2f}%, shifted {summary['student']['shifted_acc']:.2f}%")
        return summary


JOINT_SNAPSHOTS = 10  # joint training (HARD-Mix) keeps about this many pool snapshots, evenly spread, and the last


def joint_snapshot_due(epoch: int, epochs: int) -> bool:
    """Whether a jointly trained augmentor is saved after ``epoch`` (1-based) of ``epochs``: it has no switches,
    so the pool is only for ``visualize``; every epoch would be 100 files for 100 epochs."""
    every = -(-epochs // JOINT_SNAPSHOTS)
    return epoch % every == 0 or epoch == epochs


class EpochTotals:
    """Sums of an epoch's per-step numbers, for the epoch record (``train_loss``, ``train_acc``, ...)."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, record: dict[str, Any]) -> None:
        self.count += 1
        for key, value in record.items():
            if isinstance(value, float) and key != "lr":  # averaged: losses, accuracies (not indices or labels)
                self.sums[key] = self.sums.get(key, 0.0) + value

    def record(self, epoch: int, step: int, lr: float, val: dict[str, float], seconds: float) -> dict[str, Any]:
        means = {(k if k.startswith("train_") else f"train_{k}"): v / max(1, self.count) for k, v in self.sums.items()}
        return {"epoch": epoch, "step": step, "val_acc": val["acc"], "val_loss": val["loss"], "lr": lr,
                "time_s": round(seconds, 3), **means}


