"""Data sets named by a ``--data`` spec.

A spec is ``NAME`` or ``NAME:ARG`` (``digits``, ``fashion-mnist``, ``mnist:/data/mnist``,
``cifar10:~/cifar-10-batches-py``, ``imagefolder:/data/pets``, ``imagenet:/data/ILSVRC2012``). ``NAME`` is looked up in the data-set
registry that plugins fill (:func:`hardctl.hookspecs.register_datasets`); the built-in formats live in
the ``hardctl_builtins`` plugin. Every builder returns images as float tensors in ``[0, 1]`` with shape
``C×H×W``: normalisation belongs to the model (each model carries its own mean/std), so that teacher,
student and augmentor all see pixels.

:func:`load_data` adds what every run needs on top of the raw splits: a deterministic validation split
of the training set (10 % unless the data set declares another fraction; ImageNet holds out 1 %) and a
reproducibly shifted copy of the test set.

Data sets whose training images come out of a random transform (ImageNet's random resized crop) also
give a second view of the same training images with the test split's deterministic transform
(:attr:`ImageDatasets.train_eval`): the validation split is drawn from that view, so validation images
are scored the way test images are, while the training split keeps the random one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.data import Dataset, Subset

from hardctl import plugins
from hardctl.errors import DataError
from hardctl.data.shift import ShiftedImages, default_shift_px

__all__ = ["ImageDatasets", "DataBundle", "TensorImages", "ShiftedImages", "load_data", "parse_spec"]

VAL_FRACTION = 0.1
SPLIT_SEED = 0  # fixed, so that every run and every seed validates on the same images


class TensorImages(Dataset):
    """In-memory images stored compactly as uint8 ``N×C×H×W`` and served as float ``[0, 1]``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 N×C×H×W, got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.long()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index].float().div_(255.0), int(self.labels[index])


@dataclass
class ImageDatasets:
    """What a data-set builder returns: the full official splits and what they look like."""

    name: str
    train: Dataset
    test: Dataset
    classes: list[str]
    in_chans: int
    img_size: tuple[int, int]
    source: str = ""  # where the files came from, for logs and run configs
    val_fraction: float = VAL_FRACTION  # share of ``train`` held out for validation (ImageNet: 0.01)
    # ``train``'s images in the same order through the test split's deterministic transform: the view the
    # validation split is drawn from. None: ``train`` itself (images served as stored, no random transform).
    train_eval: Dataset | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass
class DataBundle:
    """Train / validation / test / shifted-test splits of one data set, ready for loaders."""

    spec: str
    sets: ImageDatasets
    train: Dataset
    val: Dataset
    test: Dataset
    shifted_test: Dataset
    info: dict = field(default_factory=dict)
    shifted_val: Dataset | None = None  # the validation split shifted like the test set: logged, never selected on

    @property
    def num_classes(self) -> int:
        return self.sets.num_classes

    @property
    def in_chans(self) -> int:
        return self.sets.in_chans

    @property
    def img_size(self) -> tuple[int, int]:
        return self.sets.img_size


def parse_spec(spec: str) -> tuple[str, str | None]:
    """Split ``NAME[:ARG]``; ARG keeps any further colons (``imagefolder:C:/x`` stays intact)."""
    spec = spec.strip()
    if not spec:
        raise DataError("empty --data spec", hint="try --data digits")
    name, sep, arg = spec.partition(":")
    return name.strip().lower(), (arg if sep and arg else None)


def build_datasets(spec: str) -> ImageDatasets:
    """Resolve a spec through the registry and build its raw train/test splits."""
    name, arg = parse_spec(spec)
    entry = plugins.datasets.get(name)
    if entry.needs_arg and arg is None:
        raise DataError(f"data set {name!r} needs a folder", hint=f"use --data {name}:DIR")
    return entry.obj(arg)


def validation_split(n: int, fraction: float = VAL_FRACTION, seed: int = SPLIT_SEED) -> tuple[list, list]:
    """Deterministic (train_indices, val_indices) for a training set of ``n`` items."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, int(round(n * fraction))) if n > 1 else 0
    return sorted(perm[n_val:]), sorted(perm[:n_val])


def load_data(spec: str, *, shift_px: int | None = None, shift_seed: int = 0, seed: int | None = None) -> DataBundle:
    """Everything a run needs from ``--data SPEC``.

    The shifted test set moves every test image by ``shift_px`` pixels horizontally and vertically,
    each direction's sign drawn per image from ``shift_seed``, with zero fill (MNIST-C's ``translate``).
    ``None`` scales MNIST-C's 3 px on 28 px to the data's image size (:func:`default_shift_px`).

    The validation split holds out ``sets.val_fraction`` of the training set (always the same images)
    and is read through ``sets.train_eval`` where the data set has one. ``seed`` seeds the random
    transform of a data set whose training view has one (ImageNet's crops; per image, as
    :class:`hardctl.data.baselines.AugmentedImages` does); ``None`` leaves it on the global RNG.
    """
    sets = build_datasets(spec)
    if shift_px is None:
        shift_px = default_shift_px(sets.img_size)
    if seed is not None and sets.train_eval is not None:
        from hardctl.data.baselines import AugmentedImages

        if isinstance(sets.train, AugmentedImages):
            sets.train.seed = seed
    if not 0 <= sets.val_fraction < 1:
        raise DataError(f"data set {sets.name!r} declares a validation fraction of {sets.val_fraction}",
                        hint="ImageDatasets.val_fraction must be in [0, 1)")
    if len(sets.train) == 0 or len(sets.test) == 0:
        empty = "training" if len(sets.train) == 0 else "test"
        raise DataError(f"data set {spec!r} has no {empty} images", hint="check the folder or files it reads")
    if shift_px < 0:
        raise DataError(f"--shift-px must be >= 0, got {shift_px}", hint="it is the shift in pixels of the shifted test set")
    if shift_px >= min(sets.img_size):  # every shifted image would be blank
        raise DataError(f"--shift-px {shift_px} moves {sets.img_size[0]}x{sets.img_size[1]} images out of view",
                        hint=f"use a shift below {min(sets.img_size)} px (default {default_shift_px(sets.img_size)})")
    train_idx, val_idx = validation_split(len(sets.train), sets.val_fraction)
    return DataBundle(
        spec=spec,
        sets=sets,
        train=Subset(sets.train, train_idx),
        val=Subset(sets.train_eval if sets.train_eval is not None else sets.train, val_idx),
        test=sets.test,
        shifted_test=ShiftedImages(sets.test, shift_px=shift_px, seed=shift_seed),
        shifted_val=ShiftedImages(Subset(sets.train_eval if sets.train_eval is not None else sets.train, val_idx),
                                  shift_px=shift_px, seed=shift_seed + 1),
        info={
            "name": sets.name,
            "source": sets.source,
            "num_classes": sets.num_classes,
            "in_chans": sets.in_chans,
            "img_size": list(sets.img_size),
            "train": len(train_idx),
            "val": len(val_idx),
            "val_fraction": sets.val_fraction,
            "test": len(sets.test),
            "shift_px": shift_px,
            "shift_seed": shift_seed,
        },
    )
