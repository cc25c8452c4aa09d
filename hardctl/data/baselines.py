"""Baseline augmentations of the training images: the paper's comparison rows, not HARD's learned ones.

``--augment NAME[+NAME...]`` on ``train`` and ``distill`` wraps the training split in
:class:`AugmentedImages`, which applies a fresh random transform to every image it serves; a
``+``-joined list applies its parts in order (``standard+trivialaugment``), and ``--random-erasing P``
comes after the whole list. Batch-level MixUp/CutMix (:mod:`hardctl.data.batchmix`) follow in the
trainer, and a learned HARD augmentor, if any, comes on top of all of them, batch-wise. The
transforms come from ``torchvision.transforms.v2`` wherever it has them; images stay float ``C×H×W``
in ``[0, 1]`` with their shape and zero (black) fill.

``none``
    No augmentation.
``random-affine``
    The paper's *Random Affine* control (table 1): ``v2.RandomAffine`` with parameters drawn
    uniformly from a bounded range that keeps a centred digit fully visible — rotation ±15°,
    translation up to 10 % of the image side, scale 0.9–1.1, shear ±10° — bilinear, zero fill.
``shift``
    The paper's *MNIST-C Shifts* control: random integer shifts that cover the shifted test set
    (:mod:`hardctl.data.shift`, which moves every image by exactly ``±shift_px`` along x and y): each
    training image moves by ``dx, dy`` drawn uniformly from ``-shift_px … shift_px``, zero fill, with
    :func:`hardctl.data.shift.shift_image`. The test set's four displacements are among them, and so
    are smaller ones and none, so the student still sees centred images (training only on the four
    corner shifts never shows it one, while the paper's control keeps 98.1 % centred accuracy).
    Content never moves by more than ``shift_px``.
``standard``
    The usual natural-image recipe: ``v2.RandomCrop`` with zero padding of 4 px per 32 px of image
    side (2 px on the 16×16 digits, 4 px on 28×28), ``v2.RandomHorizontalFlip`` and
    ``v2.RandomRotation`` of ±10°. Horizontal flips are wrong for digits (a flipped 3 is no digit);
    the row exists because the paper's CIFAR-10 tables use it.
``trivialaugment``
    ``v2.TrivialAugmentWide``: one op of 14 (identity, shears, translations, rotation, brightness,
    colour, contrast, sharpness, posterize, solarize, autocontrast, equalize) with a uniformly drawn
    strength per image (Müller & Hutter 2021; the paper's ViT-S student baseline, appendix A.2).
``augmix``
    ``v2.AugMix`` with its defaults (severity 3, width 3, Dirichlet/Beta mixing; Hendrycks et al.
    2020; the paper's ImageNet KD baseline, appendix A.2).
``randaugment``
    ``v2.RandAugment`` with its defaults (2 ops of magnitude 9 of 31).

These three run on our float images directly, no uint8 round trip needed: in torchvision 0.29 every
op they draw is dtype-aware (solarize's threshold and posterize's levels scale with the dtype's
maximum, equalize converts to uint8 internally, brightness/contrast/sharpness clamp floats to
``[0, 1]``) and 1-channel images are accepted (``Color``, the saturation op, is then the identity,
as PIL's does for ``L`` images). With the same seed the float path picks the same ops as the uint8
path and agrees with it up to rounding (``tests/test_baselines.py`` checks this); converting would
only quantise the images to 256 levels.
``--random-erasing P`` (timm's ``--reprob``)
    ``v2.RandomErasing(p=P, value=0)``: with probability ``P`` a rectangle of 2-33 % of the image,
    aspect ratio 0.3-3.3, is set to 0, after the ``--augment`` list.

Randomness: with a ``seed``, each dataset object draws per-image seeds from its own generator (mixed
with the DataLoader worker's seed in worker processes), so the same seed and the same order of
requests give the same images, independently of the global RNG, which is left untouched.
"""

from __future__ import annotations

import os
from typing import Callable

import torch
from torch.utils.data import Dataset, get_worker_info
from torchvision.transforms import v2

from hardctl.data.shift import default_shift_px, shift_image
from hardctl.errors import DataError, UsageError, did_you_mean

TRANSFORM_HELP: dict[str, str] = {
    "none": "no baseline augmentation",
    "random-affine": "the paper's Random Affine control: rotation ±15°, translation ≤10 %, scale 0.9-1.1, shear ±10°",
    "shift": "the paper's MNIST-C Shifts control: random shifts of up to ±shift_px along x and y",
    "standard": "random crop with padding, horizontal flip, rotation ±10° (flips are wrong for digits)",
    "trivialaugment": "TrivialAugment (v2.TrivialAugmentWide): one random op of random strength per image",
    "augmix": "AugMix (v2.AugMix, severity 3, width 3): mixed chains of ops, the paper's ImageNet KD baseline",
    "randaugment": "RandAugment (v2.RandAugment): 2 random ops of magnitude 9/31 per image",
}
TRANSFORM_NAMES: tuple[str, ...] = tuple(TRANSFORM_HELP)
COMPOSE = "+"  # standard+trivialaugment: the parts in order

AFFINE_RANGE = {"degrees": 15.0, "translate": (0.1, 0.1), "scale": (0.9, 1.1), "shear": 10.0}
STANDARD_ROTATION = 10.0


def standard_padding(img_size: tuple[int, int]) -> int:
    """The crop padding of ``standard``: CIFAR's 4 px per 32 px of the shorter side, at least 1 px."""
    return max(1, round(4 * min(img_size) / 32))


class RandomShift:
    """Move a C×H×W image by ``dx, dy`` uniform in ``-shift_px … shift_px`` (covering MNIST-C's ``translate``)."""

    def __init__(self, shift_px: int):
        if shift_px < 0:
            raise UsageError(f"shift augmentation needs shift_px >= 0, got {shift_px}")
        self.shift_px = int(shift_px)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        dx, dy = torch.randint(-self.shift_px, self.shift_px + 1, (2,)).tolist()
        return shift_image(image, dx, dy)

    def __repr__(self) -> str:
        return f"RandomShift(shift_px={self.shift_px})"


def parse_augment(spec: str) -> list[str]:
    """``"standard+trivialaugment"`` -> ``["standard", "trivialaugment"]`` (``none`` parts drop out).

    An unknown part is a UsageError that names it, with a did-you-mean and the known names.
    """
    parts = [part.strip().lower() for part in str(spec).split(COMPOSE)]
    for part in parts:
        if part not in TRANSFORM_HELP:
            where = f" in --augment {spec.strip()!r}" if len(parts) > 1 else ""
            raise UsageError(f"unknown augmentation {part!r}{where}{did_you_mean(part, TRANSFORM_NAMES)}",
                             hint=f"known: {', '.join(TRANSFORM_NAMES)}; join several with '{COMPOSE}'")
    return [part for part in parts if part != "none"]


def _one_transform(key: str, *, in_chans: int, img_size: tuple[int, int],
                   shift_px: int | None) -> Callable[[torch.Tensor], torch.Tensor]:
    fill = [0.0] * in_chans
    if key == "random-affine":
        return v2.RandomAffine(**AFFINE_RANGE, interpolation=v2.InterpolationMode.BILINEAR, fill=fill)
    if key == "shift":
        return RandomShift(default_shift_px(img_size) if shift_px is None else shift_px)
    if key == "trivialaugment":  # float and 1-channel images are fine as they are (module docstring)
        return v2.TrivialAugmentWide(fill=fill)
    if key == "augmix":
        return v2.AugMix(fill=fill)
    if key == "randaugment":
        return v2.RandAugment(fill=fill)
    return v2.Compose([  # standard
        v2.RandomCrop(tuple(img_size), padding=standard_padding(img_size), fill=fill),
        v2.RandomHorizontalFlip(p=0.5),
        v2.RandomRotation(STANDARD_ROTATION, interpolation=v2.InterpolationMode.BILINEAR, fill=fill),
    ])


def build_transform(name: str, *, in_chans: int, img_size: tuple[int, int], shift_px: int | None,
                    random_erasing: float = 0.0) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The per-image transform ``name`` (one name or a ``+``-joined list, applied in order), then random
    erasing with probability ``random_erasing``; ``None`` when that is nothing. Unknown names are a UsageError."""
    if not 0 <= random_erasing <= 1:
        raise UsageError(f"--random-erasing must be a probability in [0, 1], got {random_erasing}")
    steps = [_one_transform(key, in_chans=in_chans, img_size=tuple(img_size), shift_px=shift_px)
             for key in parse_augment(name)]
    if random_erasing > 0:
        steps.append(v2.RandomErasing(p=random_erasing, value=0))
    if not steps:
        return None
    return steps[0] if len(steps) == 1 else v2.Compose(steps)


def describe_augment(name: str, random_erasing: float = 0.0) -> str:
    """The canonical spelling of a per-image pipeline, e.g. ``standard+trivialaugment+random-erasing(0.25)``."""
    parts = parse_augment(name) + ([f"random-erasing({random_erasing:g})"] if random_erasing > 0 else [])
    return COMPOSE.join(parts) or "none"


class AugmentedImages(Dataset):
    """``base`` (items ``(image, label)``) with ``transform`` applied to each image as it is served."""

    def __init__(self, base: Dataset, transform: Callable[[torch.Tensor], torch.Tensor], *, name: str,
                 seed: int | None = None):
        self.base, self.transform, self.name, self.seed = base, transform, name, seed
        self.epoch: int | None = None  # set by the trainer: each epoch's images then depend on (seed, epoch) only
        self._generator: torch.Generator | None = None
        self._owner: tuple | None = None

    def set_epoch(self, epoch: int) -> None:
        """Restart the per-image seeds from ``(seed, epoch)``, so that a run resumed at an epoch boundary
        serves the same images as one never interrupted (the generator itself is not checkpointed)."""
        self.epoch, self._owner = int(epoch), None

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def _next_seed(self) -> int:
        """The seed of the next image's transform, from this object's generator (per worker process)."""
        worker = get_worker_info()
        owner = (os.getpid(), worker.seed if worker is not None else None)
        if owner != self._owner:  # a fresh process (DataLoader worker) or epoch gets its own stream
            base = int(self.seed) if self.epoch is None else int(self.seed) * 1_000_003 + self.epoch + 1
            mixed = (base * 1_000_003 + (worker.seed if worker is not None else 0)) % (2**63)
            self._generator, self._owner = torch.Generator().manual_seed(mixed), owner
        return int(torch.randint(0, 2**62, (1,), generator=self._generator))

    def __getitem__(self, index: int):
        image, label = self.base[index]
        if self.seed is None:  # the global RNG (seeded and checkpointed by the trainer)
            return self.transform(image), label
        # The transforms draw from the global CPU generator: seed it for this image, then restore it.
        # (torch.manual_seed would also reseed CUDA and costs ~0.5 ms; the CPU generator alone ~5 µs.)
        saved = torch.get_rng_state()
        try:
            torch.default_generator.manual_seed(self._next_seed())
            return self.transform(image), label
        finally:
            torch.set_rng_state(saved)

    def __repr__(self) -> str:
        return f"AugmentedImages({self.name}, {len(self)} images, seed={self.seed})"


def augmented_train(dataset: Dataset, name: str, *, in_chans: int, img_size: tuple[int, int],
                    shift_px: int | None = None, seed: int | None = None, random_erasing: float = 0.0) -> Dataset:
    """``dataset`` with the baseline augmentation ``name`` (``a+b``: a, then b) and then random erasing
    with probability ``random_erasing`` applied per image (nothing to do: ``dataset`` unchanged).

    ``shift_px`` is the shifted test set's shift (``None``: the data's default, see
    :func:`hardctl.data.shift.default_shift_px`); only ``shift`` uses it.
    """
    transform = build_transform(name, in_chans=in_chans, img_size=tuple(img_size), shift_px=shift_px,
                                random_erasing=random_erasing)
    if transform is None:
        return dataset
    if len(dataset) > 0:  # type: ignore[arg-type]
        image = dataset[0][0]
        expected = (in_chans, *img_size)
        if not isinstance(image, torch.Tensor) or tuple(image.shape) != expected:
            got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise DataError(f"--augment {name} expects {'×'.join(map(str, expected))} image tensors, got {got}")
    return AugmentedImages(dataset, transform, name=describe_augment(name, random_erasing), seed=seed)


__all__ = ["COMPOSE", "TRANSFORM_HELP", "TRANSFORM_NAMES", "AugmentedImages", "RandomShift", "augmented_train",
           "build_transform", "describe_augment", "parse_augment", "standard_padding"]
