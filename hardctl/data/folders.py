"""Readers of folder-of-images data sets: one file per image, one sub-folder per class.

``imagefolder`` (``DIR/train/CLASS/*.png`` and ``DIR/val/CLASS/*``) and ILSVRC-2012 ``imagenet``
(``DIR/train/<wnid>/*.JPEG`` and ``DIR/val/<wnid>/*.JPEG``) share the split scan, the lazy PIL
reader :class:`ImageFolderImages` and :func:`pil_to_tensor`; ImageNet adds its training and
evaluation crops. Like the array formats in :mod:`hardctl.data.formats`, the builders are
registered by the ``hardctl_builtins.datasets`` plugin and report every problem with the user's
files as a one-line :class:`~hardctl.errors.DataError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from hardctl.data import ImageDatasets
from hardctl.data.formats import data_folder
from hardctl.errors import DataError

__all__ = [
    "IMAGENET_HINT",
    "ImageFolderImages",
    "imagenet_eval_transform",
    "imagenet_train_transform",
    "load_imagefolder_dataset",
    "load_imagenet_dataset",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


# --- image folders -------------------------------------------------------------------------------


class ImageFolderImages(Dataset):
    """Image files decoded on access with PIL (converted to ``mode``, ``"L"`` or ``"RGB"``).

    Without ``transform`` each image is resized (bilinear) to ``size`` (H, W) where it differs and
    served as float ``C×H×W`` in ``[0, 1]``; with one, the decoded PIL image goes through ``transform``
    and comes out as it returns it (ImageNet's crops, see :func:`load_imagenet_dataset`).
    """

    def __init__(self, paths: list[str], labels: list[int], size: tuple[int, int] | None, mode: str,
                 transform: Callable[[Any], Any] | None = None):
        if size is None and transform is None:
            raise ValueError("ImageFolderImages needs a size or a transform")
        self.paths, self.labels = paths, labels
        self.size, self.mode = size, mode  # size is (H, W); mode is "L" or "RGB"
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def decode(self, index: int):
        """The PIL image of item ``index`` in ``mode`` (a :class:`DataError` naming the file if unreadable)."""
        from PIL import Image

        try:
            with Image.open(self.paths[index]) as img:
                img = img.convert(self.mode)  # convert() loads the pixels, so the file can close
        except OSError as exc:
            raise DataError(
                f"cannot decode image {self.paths[index]}: {exc}",
                hint="remove or replace the file",
            ) from exc
        return img

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = self.decode(index)
        if self.transform is not None:
            return self.transform(img), self.labels[index]
        return pil_to_tensor(img, self.size), self.labels[index]

    def with_transform(self, transform: Callable[[Any], Any] | None) -> "ImageFolderImages":
        """The same files and labels through another transform (a train and an eval view of one split)."""
        return ImageFolderImages(self.paths, self.labels, self.size, self.mode, transform)


def pil_to_tensor(img, size: tuple[int, int] | None = None) -> torch.Tensor:
    """A PIL image as float ``C×H×W`` in ``[0, 1]``, first resized (bilinear) to ``size`` (H, W) if given."""
    from PIL import Image

    if size is not None and img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.BILINEAR)
    tensor = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).float().div_(255.0)
    return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)


def _scan_split(split: Path, name: str = "imagefolder", hint: str = "put each class's images in DIR/train/CLASS/",
                ) -> dict[str, list[Path]]:
    """``{class folder: sorted image files}`` of one split; no class folder or an empty one is a DataError."""
    classes = sorted(d.name for d in split.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{name}: no class folders in {split}", hint=hint)
    files: dict[str, list[Path]] = {}
    for cls in classes:
        files[cls] = sorted(
            p for p in (split / cls).iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
        )  # fmt: skip
        if not files[cls]:
            raise DataError(
                f"{name}: no {'/'.join(IMAGE_SUFFIXES)} images in {split / cls}",
                hint="add images or remove the empty class folder",
            )
    return files


def _pairs(files: dict[str, list[Path]], index: dict[str, int]) -> tuple[list[str], list[int]]:
    """Paths and labels of a scanned split, classes in sorted order, files sorted within each class."""
    pairs = [(str(p), index[cls]) for cls in sorted(files) for p in files[cls]]
    return [p for p, _ in pairs], [y for _, y in pairs]


def load_imagefolder_dataset(arg: str | None) -> ImageDatasets:
    """``DIR/train/CLASS/*.png`` and ``DIR/val/CLASS/*`` (or ``test/``), decoded lazily with PIL."""
    if arg is None:
        raise DataError("imagefolder needs a folder", hint="use --data imagefolder:DIR")
    from PIL import Image, UnidentifiedImageError

    folder = data_folder(arg, "imagefolder")
    test_dir = next((folder / s for s in ("val", "test") if (folder / s).is_dir()), None)
    if not (folder / "train").is_dir() or test_dir is None:
        raise DataError(
            f"imagefolder: {folder} needs train/ and val/ (or test/) subfolders",
            hint="lay out DIR/train/CLASS/*.png and DIR/val/CLASS/*.png",
        )
    train_files, test_files = _scan_split(folder / "train"), _scan_split(test_dir)
    extra, missing = sorted(set(test_files) - set(train_files)), sorted(set(train_files) - set(test_files))
    if extra or missing:
        problems = ([f"{test_dir.name}/ has extra classes {', '.join(extra)}"] if extra else []) + (
            [f"{test_dir.name}/ lacks classes {', '.join(missing)}"] if missing else []
        )
        raise DataError(
            f"imagefolder: {'; '.join(problems)} in {folder}",
            hint="use the same class folders in train/ and val/",
        )

    classes = sorted(train_files)
    modes: set[str] = set()
    first: tuple[int, int] | None = None
    for path in (p for cls in classes for p in train_files[cls]):
        try:
            with Image.open(path) as img:  # reads the header only
                modes.add(img.mode)
                first = first or img.size
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(
                f"imagefolder: cannot read image {path}: {exc}",
                hint="remove or replace the file",
            ) from exc
    assert first is not None  # _scan_split guarantees at least one image per class
    # One size for every image so that batches stack: the first training image's; images that
    # differ from it (train or val) are resized bilinearly when they are read.
    size = (first[1], first[0])  # PIL gives (W, H); tensors are H×W
    mode = "L" if modes == {"L"} else "RGB"

    index = {cls: i for i, cls in enumerate(classes)}

    def split(files: dict[str, list[Path]]) -> ImageFolderImages:
        return ImageFolderImages(*_pairs(files, index), size, mode)

    return ImageDatasets(
        name="imagefolder",
        train=split(train_files),
        test=split(test_files),
        classes=classes,
        in_chans=1 if mode == "L" else 3,
        img_size=size,
        source=str(folder),
    )


# --- ImageNet (ILSVRC-2012) ------------------------------------------------------------------------

IMAGENET_SIZE = 224  # training crops and evaluation crops (appendix A.2 of the paper)
IMAGENET_RESIZE = 256  # evaluation: shorter side to 256, then the central 224×224
IMAGENET_VAL_FRACTION = 0.01  # appendix A.2: 1 % of the training images are held out for validation
IMAGENET_HINT = (
    "download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from https://image-net.org (ILSVRC 2012), "
    "extract them into DIR/train/<wnid>/*.JPEG and DIR/val/<wnid>/*.JPEG with the validation images sorted "
    "into wnid folders (e.g. with valprep.sh), then pass --data imagenet:DIR"
)


def imagenet_train_transform(size: int = IMAGENET_SIZE) -> Callable[[Any], torch.Tensor]:
    """PIL image -> float ``3×size×size``: ``RandomResizedCrop(size)`` (scale 0.08-1, ratio 3/4-4/3,
    bilinear) and a horizontal flip with probability 0.5, as in appendix A.2 and torchvision's recipe."""
    from torchvision.transforms import v2

    return v2.Compose([
        v2.RandomResizedCrop(size, interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
        v2.RandomHorizontalFlip(p=0.5),
        v2.PILToTensor(),
        v2.ToDtype(torch.float32, scale=True),
        v2.ToPureTensor(),
    ])


def imagenet_eval_transform(size: int = IMAGENET_SIZE, resize: int = IMAGENET_RESIZE) -> Callable[[Any], torch.Tensor]:
    """PIL image -> float ``3×size×size``: shorter side resized to ``resize`` (bilinear), centre crop ``size``."""
    from torchvision.transforms import v2

    return v2.Compose([
        v2.Resize(resize, interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
        v2.CenterCrop(size),
        v2.PILToTensor(),
        v2.ToDtype(torch.float32, scale=True),
        v2.ToPureTensor(),
    ])


def load_imagenet_dataset(arg: str | None) -> ImageDatasets:
    """ILSVRC-2012 from ``DIR/train/<wnid>/*.JPEG`` and ``DIR/val/<wnid>/*.JPEG``, decoded lazily with PIL.

    Classes are the wnid folders of ``train/`` in sorted order: for the full release the 1000 indices
    that timm's and torchvision's ImageNet models use; a smaller tree has as many classes as folders.
    ``val/`` may lack classes but must not add any. Training images: random resized crop to 224 and a
    horizontal flip, per image seeded (:class:`~hardctl.data.baselines.AugmentedImages`; ``load_data``
    passes the run's seed). The validation split (1 % of the training images, appendix A.2) and the test
    split (``val/``) are resized to 256 and centre-cropped to 224. No header is read up front: with
    1.28 M files that alone would take minutes, and every image is converted to RGB anyway.
    """
    if arg is None:
        raise DataError("imagenet needs a folder", hint=IMAGENET_HINT)
    folder = Path(arg).expanduser()
    missing = [f"{folder / s}/" for s in ("train", "val") if not (folder / s).is_dir()]
    if missing:
        what = "no folder" if folder.is_dir() else "no such folder"
        shown = f"{folder}" if not folder.is_dir() else " or ".join(missing)
        raise DataError(f"imagenet: {what} {shown}", hint=IMAGENET_HINT)
    val_dir = folder / "val"
    loose = [p for p in val_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if loose and not any(d.is_dir() for d in val_dir.iterdir()):
        raise DataError(
            f"imagenet: {val_dir} holds {len(loose)} images but no wnid folders",
            hint="sort the validation images into DIR/val/<wnid>/ (valprep.sh from the PyTorch ImageNet example)",
        )
    hint = "lay out DIR/train/<wnid>/*.JPEG and DIR/val/<wnid>/*.JPEG"
    train_files, val_files = _scan_split(folder / "train", "imagenet", hint), _scan_split(val_dir, "imagenet", hint)
    extra = sorted(set(val_files) - set(train_files))
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise DataError(f"imagenet: {val_dir} has class folders that train/ lacks: {shown}",
                        hint="use the same wnid folders in train/ and val/")
    classes = sorted(train_files)
    index = {cls: i for i, cls in enumerate(classes)}
    train_paths, train_labels = _pairs(train_files, index)
    test = ImageFolderImages(*_pairs(val_files, index), None, "RGB", imagenet_eval_transform())
    train_eval = ImageFolderImages(train_paths, train_labels, None, "RGB", imagenet_eval_transform())
    from hardctl.data.baselines import AugmentedImages

    # The decoded PIL image is the "image" AugmentedImages hands to its transform: the crop happens at
    # full resolution, seeded per image like every baseline augmentation.
    decoded = ImageFolderImages(train_paths, train_labels, None, "RGB", transform=_identity)
    train = AugmentedImages(decoded, imagenet_train_transform(), name="imagenet-train")
    return ImageDatasets(
        name="imagenet",
        train=train,
        test=test,
        classes=classes,
        in_chans=3,
        img_size=(IMAGENET_SIZE, IMAGENET_SIZE),
        source=str(folder),
        val_fraction=IMAGENET_VAL_FRACTION,
        train_eval=train_eval,
    )


def _identity(img: Any) -> Any:  # module level, so that DataLoader workers can pickle the dataset
    return img
