"""The resolved configuration of a run, written into its run directory and read back on ``--resume``.

One flat dataclass keeps every knob of ``train`` and ``distill`` in one place: the CLI fills it, the
trainer reads it, and ``config.toml`` in the run directory is its exact image (TOML cannot hold
``None``, so unset optional values are simply absent).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from hardctl.atomic import atomic_write_bytes
from hardctl.errors import UsageError, did_you_mean
from hardctl.runfiles import CONFIG_FILE
from hardctl.tomlio import read_toml
from hardctl.values import check_value

OPTIMIZERS = ("adam", "adamw", "lion", "sgd")  # --optimizer (built in hardctl.distill.schedules)
SCHEDULES = ("cosine", "plateau")  # --schedule
SELECT_CHOICES = ("auto", "last", "best")  # --select


def default_select(command: str) -> str:
    """``--select auto``: the final student for ``distill`` (the paper trains to a fixed budget, and centered
    validation accuracy cannot see the invariance HARD transfers), the best-validation model for ``train``."""
    return "last" if command == "distill" else "best"

# RunConfig field -> HardDefaults field, for the HARD settings an augmentor gives defaults for.
HARD_SETTINGS = {"l_min": "l_min", "l_max": "l_max", "switch_patience": "patience", "lambda_s": "lambda_s",
                 "lambda_t": "lambda_t", "aug_lr": "lr", "aug_batch_size": "batch_size"}
DISTILL_ONLY = {"teacher", "augmentor", "aug_options", "switch_on", "aug_temperature",
                "max_aug_steps", "pool_sampling", "clean_fraction", *HARD_SETTINGS}
POOL_SAMPLING = ("uniform", "recent")  # --pool-sampling (hardctl.augment.pool.AugmentorPool.sample)
DECODE_CHOICES = ("cpu", "gpu", "auto")  # --decode (hardctl.data.gpudecode): who decodes training JPEGs


@dataclass
class RunConfig:
    """Everything that determines a ``train`` or ``distill`` run."""

    command: str = "train"  # "train" (supervised) or "distill" (KD)
    data: str = "digits"
    model: str = "hard_mnist_cnn"  # the model being trained (the student, in distill)
    teacher: str | None = None
    pretrained: bool = False  # timm-named teacher/model: start from pretrained weights
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adam"  # adam | adamw | lion | sgd (hardctl.distill.schedules)
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    schedule: str = "cosine"  # cosine (warm-up + cosine to min_lr) | plateau (appendix A.1, see PlateauSchedule)
    plateau_patience: int = 20  # plateau: epochs without a better val acc before the lr decays
    plateau_factor: float = 0.8  # plateau: lr multiplier of a decay (the best weights are restored)
    plateau_decays: int = 5  # plateau: the run stops at this many decays
    temperature: float = 5.0
    kd_weight: float = 1.0
    ce_weight: float = 0.0
    label_smoothing: float = 0.0
    amp: str = "auto"  # auto | bf16 | fp16 | off
    device: str = "auto"
    seed: int = 0
    workers: int = 0
    # speed only (hardctl.distill.speed): results agree with the plain run up to float rounding
    compile: bool = False  # torch.compile the student and the teacher (the augmentor stays eager)
    channels_last: bool = False  # student, teacher and input batches in channels_last memory format
    decode: str = "cpu"  # training JPEGs of imagefolder/imagenet: cpu (PIL, workers) | gpu (nvJPEG) | auto (= cpu)
    shift_px: int | None = None  # None: 3 px per 28 px of image side (see hardctl.data.shift)
    shift_seed: int = 0
    log_every: int = 20
    # which student the run reports (summary.json, model.safetensors, eval RUN, recipes): "last" (the final
    # weights) or "best" (best centered validation accuracy); "auto" resolves to last for distill, best for train
    select: str = "auto"
    augment: str = "none"  # baseline augmentation of the training images (hardctl.data.baselines), before HARD's
    random_erasing: float = 0.0  # probability of v2.RandomErasing per image, after --augment (timm's --reprob)
    mixup: float = 0.0  # MixUp's Beta(α, α) per batch (hardctl.data.batchmix); 0 = off
    cutmix: float = 0.0  # CutMix's Beta(α, α) per batch; 0 = off
    mix_switch_prob: float = 0.5  # with both on: probability of CutMix for a batch (timm's --mixup-switch-prob)
    # HARD (distill only). None: the augmentor's own default (see hardctl.augment.HardDefaults).
    augmentor: str = "affine"  # a registered augmentor, a composition "a+b", or "none" (plain KD)
    aug_options: dict[str, Any] = field(default_factory=dict)
    l_min: float | None = None
    l_max: float | None = None
    switch_patience: int | None = None
    lambda_s: float | None = None
    lambda_t: float | None = None
    aug_lr: float | None = None
    aug_batch_size: int | None = None
    aug_temperature: float | None = None  # the temperature of the augmentor's objective; None: --temperature
    switch_on: str = "teacher"  # the error of the switching rule: against the teacher's prediction, or labels
    max_aug_steps: int = 500  # an augmentor phase longer than this ends anyway (logged)
    # which pool entry a student step draws: uniform over all (the paper), or recent: half of the draws the newest
    pool_sampling: str = "uniform"
    clean_fraction: float = 0.0  # the share of each HARD student batch left unaugmented (0: the paper)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        values = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        if self.command == "train":  # a supervised run has no teacher and no augmentor
            values = {k: v for k, v in values.items() if k not in DISTILL_ONLY}
        return values

    @property
    def uses_hard(self) -> bool:
        return self.command == "distill" and self.augmentor.strip().lower() != "none"

    def with_hard_defaults(self, defaults: Any, aug_options: dict[str, Any]) -> "RunConfig":
        """A new config whose unset HARD settings come from ``defaults`` (an augmentor's
        :class:`~hardctl.augment.HardDefaults`) and whose augmentor options are ``aug_options`` (all resolved).
        :func:`hardctl.distill.build.resolve_config` looks both up in the plugin registry."""
        values = dataclasses.asdict(self)
        for name, default_name in HARD_SETTINGS.items():
            if values[name] is None:
                values[name] = getattr(defaults, default_name)
        values["aug_options"] = aug_options
        return RunConfig(**values).validate()

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        """A config from typed values (``config.toml``, a recipe): an unknown key or a value of the wrong
        type (``epochs = "ten"``) is a usage error naming the key."""
        unknown = sorted(set(values) - set(FIELD_TYPES))
        if unknown:
            raise UsageError(f"unknown config keys {unknown}", hint=f"known keys: {', '.join(sorted(FIELD_TYPES))}")
        return cls(**{key: check_value(value, FIELD_TYPES[key], f"config {key}") for key, value in values.items()})

    def validate(self) -> "RunConfig":
        """Check every value that needs nothing installed (names of augmentations and augmentors are checked
        against what is installed by :func:`hardctl.distill.build.resolve_config`)."""
        for flag, value, choices in (("--optimizer", self.optimizer, OPTIMIZERS),
                                     ("--schedule", self.schedule, SCHEDULES)):
            if value not in choices:
                raise UsageError(f"unknown {flag} {value!r}{did_you_mean(str(value).lower(), choices)}",
                                 hint=f"choose {', '.join(choices[:-1])} or {choices[-1]}")
        for name, value in dataclasses.asdict(self).items():  # inf/nan reach no loss: name the option now
            if isinstance(value, float) and not math.isfinite(value):
                raise UsageError(f"--{name.replace('_', '-')} must be a finite number, got {value}")
        thresholds = (threshold_problem(self.l_min, self.l_max, names=("--l-min", "--l-max"))
                      if self.l_min is not None and self.l_max is not None else None)
        checks = [
            (self.epochs >= 1, "--epochs must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.lr > 0, "--lr must be positive"),
            (self.weight_decay >= 0, "--weight-decay must be >= 0"),
            (self.warmup_epochs >= 0, "--warmup-epochs must be >= 0 (longer than --epochs: the run ends mid-warm-up)"),
            (self.temperature > 0, "--temperature must be positive"),
            (self.kd_weight >= 0 and self.ce_weight >= 0, "loss weights must be >= 0"),
            (0 <= self.label_smoothing < 1, "--label-smoothing must be in [0, 1)"),
            (self.plateau_patience >= 1, "--plateau-patience must be at least 1"),
            (0 < self.plateau_factor < 1, "--plateau-factor must be between 0 and 1 (exclusive)"),
            (self.plateau_decays >= 1, "--plateau-decays must be at least 1"),
            (self.schedule != "plateau" or self.min_lr == 0, "--min-lr applies to --schedule cosine only"),
            (0 <= self.min_lr <= self.lr, f"--min-lr ({self.min_lr}) must be in [0, --lr ({self.lr})]"),
            (0 <= self.seed < 2**63, "--seed must be in [0, 2^63)"),
            (self.uses_hard or not self.aug_options or self.command != "distill",
             "--aug-opt sets options of a learned augmentor, but --augmentor is none"),
            (self.amp in ("auto", "bf16", "fp16", "off"), "--amp must be auto, bf16, fp16 or off"),
            (self.workers >= 0, "--workers must be >= 0"),
            (self.decode in DECODE_CHOICES, f"--decode must be one of {', '.join(DECODE_CHOICES)}"),
            (self.shift_px is None or self.shift_px >= 0, "--shift-px must be >= 0"),
            (bool(self.augment.strip()), "--augment must name an augmentation or none"),
            (0 <= self.random_erasing <= 1, "--random-erasing must be a probability in [0, 1]"),
            (self.mixup >= 0, "--mixup must be >= 0 (MixUp's Beta alpha; 0 turns it off)"),
            (self.cutmix >= 0, "--cutmix must be >= 0 (CutMix's Beta alpha; 0 turns it off)"),
            (0 <= self.mix_switch_prob <= 1, "--mix-switch-prob must be a probability in [0, 1]"),
            (self.switch_on in ("teacher", "labels"), "--switch-on must be teacher or labels"),
            (self.select in SELECT_CHOICES, "--select must be last or best"),
            (self.max_aug_steps >= 1, "--max-aug-steps must be at least 1"),
            (self.pool_sampling in POOL_SAMPLING, f"--pool-sampling must be one of {', '.join(POOL_SAMPLING)}"),
            (0 <= self.clean_fraction < 1, "--clean-fraction must be in [0, 1) (the share of a batch left unaugmented)"),
            (self.l_min is None or 0 <= self.l_min <= 1, "--l-min must be an error rate in [0, 1]"),
            (self.l_max is None or 0 <= self.l_max <= 1, "--l-max must be an error rate in [0, 1]"),
            (thresholds is None, thresholds),
            (self.switch_patience is None or self.switch_patience >= 1, "--switch-patience must be at least 1"),
            (self.lambda_s is None or self.lambda_s >= 0, "--lambda-s must be >= 0"),
            (self.lambda_t is None or self.lambda_t >= 0, "--lambda-t must be >= 0"),
            (self.aug_lr is None or self.aug_lr > 0, "--aug-lr must be positive"),
            (self.aug_temperature is None or self.aug_temperature > 0, "--aug-temperature must be positive"),
            (self.aug_batch_size is None or self.aug_batch_size >= 1, "--aug-batch-size must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)
        if self.command == "distill" and not self.teacher:
            raise UsageError("distill needs --teacher", hint="pass a run directory, safetensors file or timm name")
        return self

    def save(self, run_dir: Path) -> Path:
        path = Path(run_dir) / CONFIG_FILE
        payload = {"hardctl": {"format": 1}, "run": self.to_dict()}
        atomic_write_bytes(path, tomli_w.dumps(payload).encode())
        return path

    @classmethod
    def load(cls, run_dir: Path) -> "RunConfig":
        path = Path(run_dir) / CONFIG_FILE
        if not path.is_file():
            raise UsageError(f"{run_dir} is not a hardctl run directory (no {CONFIG_FILE})")
        return cls.from_dict(read_toml(path).get("run", {}))



def threshold_problem(l_min: float, l_max: float, *, names: tuple[str, str] = ("l_min", "l_max")) -> str | None:
    """What is wrong with HARD's switching thresholds (``0 <= l_min < l_max``), or None; ``names`` are how
    the caller's user spells them (``--l-min`` here, ``l_min`` in the toy's settings).

    The one user-facing check of the thresholds: :class:`hardctl.distill.phases.PhaseSwitch` asserts the
    same rule with a ValueError, as an invariant of the engine for callers that bypass the configuration.
    """
    low, high = names
    if l_min < 0:
        return f"{low} ({l_min}) must be >= 0"
    if not l_min < l_max:
        return f"{low} ({l_min}) must be below {high} ({l_max})"
    return None

FIELD_TYPES: dict[str, Any] = typing.get_type_hints(RunConfig)  # field -> its annotation, for hardctl.values
