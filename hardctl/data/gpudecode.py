"""``--decode gpu``: training JPEGs of ``imagefolder`` and ``imagenet`` data sets decoded by nvJPEG on the GPU.

With ``--decode cpu`` (the default) the loader's workers open each file with PIL, crop and resize it and ship
float pixels to the main process. With ``--decode gpu`` they only read the file's bytes
(:class:`EncodedImages`: cheap, no decoding), and the main process decodes the whole batch at once with
``torchvision.io.decode_jpeg(list, device="cuda")`` and applies the same per-image steps to the decoded
tensors on the GPU (:class:`BatchDecoder`): the resize of an ``imagefolder`` image to the data set's size, or
ImageNet's seeded random resized crop and flip. Each image's crop seed is drawn in the worker exactly as
:class:`hardctl.data.baselines.AugmentedImages` draws it, so both paths crop the same boxes; the pixels differ
by rounding (nvJPEG's IDCT and torch's antialiased resize instead of libjpeg and PIL), which is why the choice
is part of the run's configuration. Files that are not JPEG (PNG, ...) are decoded on the CPU and moved.

Only the student's batches go this way; HARD's augmentor draws its own batches from the data set (CPU decoding).
``auto`` resolves to ``cpu``: GPU decoding has not been measured faster than enough CPU workers yet
(``benchmarks/ddp_throughput.py --decode`` measures it).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from hardctl.errors import UsageError

__all__ = ["BatchDecoder", "EncodedBatch", "EncodedImages", "collate_encoded", "encoded_view", "resolve_decode"]

JPEG_MAGIC = (0xFF, 0xD8)


def resolve_decode(decode: str, device: torch.device) -> str:
    """``--decode`` for a run on ``device``: ``auto`` is ``cpu``; ``gpu`` needs CUDA (a usage error otherwise)."""
    if decode == "auto":
        return "cpu"
    if decode == "gpu" and device.type != "cuda":
        raise UsageError(f"--decode gpu needs a CUDA device, and this run is on {device}",
                         hint="use --decode cpu (the default) or --device cuda")
    return decode


class EncodedBatch:
    """A training batch before decoding: each file's bytes (1-D uint8) and its crop seed (-1: none)."""

    def __init__(self, data: list[torch.Tensor], seeds: torch.Tensor):
        self.data, self.seeds = data, seeds

    def __len__(self) -> int:
        return len(self.data)

    def pin_memory(self) -> "EncodedBatch":  # DataLoader's pin_memory calls it; nvJPEG reads host bytes anyway
        return self


def collate_encoded(items: list[tuple[torch.Tensor, int, int]]) -> tuple[EncodedBatch, torch.Tensor]:
    """``(bytes, seed, label)`` items -> ``(EncodedBatch, labels)``: files differ in length, so nothing stacks."""
    data = [item[0] for item in items]
    seeds = torch.tensor([item[1] for item in items], dtype=torch.int64)
    return EncodedBatch(data, seeds), torch.tensor([item[2] for item in items], dtype=torch.int64)


class EncodedImages(Dataset):
    """The training split of a folder data set as ``(file bytes, crop seed, label)``, in the split's order."""

    def __init__(self, files: Any, indices: list[int], augmented: Any = None):
        self.paths, self.labels, self.indices = files.paths, files.labels, indices
        self.augmented = augmented  # the AugmentedImages whose seeds the crops use (ImageNet), or None

    def __len__(self) -> int:
        return len(self.indices)

    def set_epoch(self, epoch: int) -> None:
        if self.augmented is not None:
            self.augmented.set_epoch(epoch)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        from torchvision.io import read_file

        item = self.indices[index]
        seed = -1
        if self.augmented is not None and self.augmented.seed is not None:
            seed = self.augmented._next_seed()  # the very draw AugmentedImages would make for this image
        return read_file(self.paths[item]), seed, self.labels[item]


class BatchDecoder:
    """Decodes an :class:`EncodedBatch` on ``device`` into float ``B×C×H×W`` in ``[0, 1]``."""

    def __init__(self, *, mode: str, size: tuple[int, int] | None = None, transform: Any = None):
        if size is None and transform is None:
            raise ValueError("BatchDecoder needs a size or a transform")
        self.mode, self.size, self.transform = mode, size, transform

    def decode(self, batch: EncodedBatch, device: torch.device) -> list[torch.Tensor]:
        """Each file as uint8 ``C×H×W`` on ``device``: the JPEGs in one nvJPEG call, the others on the CPU."""
        from torchvision.io import ImageReadMode, decode_image, decode_jpeg

        read_mode = ImageReadMode.RGB if self.mode == "RGB" else ImageReadMode.GRAY
        images: list[torch.Tensor | None] = [None] * len(batch)
        jpegs = [i for i, data in enumerate(batch.data) if len(data) > 1 and tuple(data[:2].tolist()) == JPEG_MAGIC]
        if jpegs:
            decoded = decode_jpeg([batch.data[i] for i in jpegs], mode=read_mode, device=device)
            for i, image in zip(jpegs, decoded, strict=True):
                images[i] = image
        for i, image in enumerate(images):
            if image is None:
                images[i] = decode_image(batch.data[i], mode=read_mode).to(device)
        return images  # type: ignore[return-value]

    def __call__(self, batch: EncodedBatch, device: torch.device) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as TF

        out = []
        for image, seed in zip(self.decode(batch, device), batch.seeds.tolist(), strict=True):
            if self.transform is None:  # imagefolder: the data set's one size, bilinear like PIL
                if tuple(image.shape[-2:]) != self.size:
                    image = TF.resize(image, list(self.size), interpolation=TF.InterpolationMode.BILINEAR,
                                      antialias=True)
                out.append(image.float().div_(255.0))
                continue
            if seed < 0:
                out.append(self.transform(image))
                continue
            saved = torch.get_rng_state()  # the crop draws from the CPU generator, seeded per image (AugmentedImages)
            try:
                torch.default_generator.manual_seed(seed)
                out.append(self.transform(image))
            finally:
                torch.set_rng_state(saved)
        return torch.stack(out)


def encoded_view(train: Dataset, data_name: str) -> tuple[EncodedImages, BatchDecoder]:
    """The loader's data set and the decoder of ``--decode gpu`` for a run's training split ``train`` (the
    ``Subset`` :func:`hardctl.data.load_data` makes). Anything but a plain imagefolder/imagenet split (another
    data set, or per-image ``--augment`` on top) is a usage error: those augmentations run on PIL images or
    CPU tensors in the workers."""
    from hardctl.data.baselines import AugmentedImages
    from hardctl.data.folders import ImageFolderImages

    problem = UsageError(f"--decode gpu decodes the JPEG files of imagefolder/imagenet data, and the training "
                         f"images of {data_name!r} are not read from such files as they are",
                         hint="use --decode cpu (with --augment or --random-erasing, or other data sets)")
    if not isinstance(train, Subset):
        raise problem
    base, indices = train.dataset, [int(i) for i in train.indices]
    if isinstance(base, ImageFolderImages) and base.transform is None:
        return EncodedImages(base, indices), BatchDecoder(mode=base.mode, size=tuple(base.size))
    if isinstance(base, AugmentedImages) and isinstance(base.base, ImageFolderImages):
        files = base.base
        return EncodedImages(files, indices, augmented=base), BatchDecoder(mode=files.mode, transform=base.transform)
    raise problem
