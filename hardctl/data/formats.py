"""Readers of the on-disk data-set formats that hardctl knows without any plugin.

Each ``load_*_dataset(arg)`` builder turns the ``ARG`` of a ``--data NAME[:ARG]`` spec into an
:class:`~hardctl.data.ImageDatasets`: the scikit-learn digits, MNIST / Fashion-MNIST IDX files,
the CIFAR-10 python pickles, an ``imagefolder`` tree of PNG/JPEG files and the ILSVRC-2012
(``imagenet``) train/val tree, which shares the image-folder reader. The builders are
registered by the ``hardctl_builtins.datasets`` plugin; everything that can go wrong with the user's
files is reported as a one-line :class:`~hardctl.errors.DataError` naming the file and the fix.
"""

from __future__ import annotations

import codecs
import gzip
import importlib.util
import io
import math
import pickle
import struct
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from hardctl.data import ImageDatasets, TensorImages
from hardctl.errors import DataError

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "IMAGENET_HINT",
    "ImageFolderImages",
    "imagenet_eval_transform",
    "imagenet_train_transform",
    "load_cifar10_dataset",
    "load_digits_dataset",
    "load_fashion_mnist_dataset",
    "load_imagefolder_dataset",
    "load_imagenet_dataset",
    "load_mnist_dataset",
    "read_idx",
]

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
DIGITS_CANVAS = 16  # 8×8 digits centred on 16×16, so a 3 px shift moves ink instead of cropping it

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

_IDX_UINT8 = 0x08
_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


MNIST_HINT = ("download the four MNIST IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
              "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz; e.g. torchvision.datasets.MNIST(DIR, "
              "download=True)) into DIR and pass --data mnist:DIR")
CIFAR10_HINT = ("download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, extract it "
                "into DIR and pass --data cifar10:DIR")


def _folder(arg: str, name: str, hint: str | None = None) -> Path:
    folder = Path(arg).expanduser()
    if not folder.is_dir():
        raise DataError(f"{name}: no such folder {folder}", hint=hint or f"pass an existing folder as {name}:DIR")
    return folder


def _no_arg(name: str, arg: str | None) -> None:
    if arg is not None:
        raise DataError(f"{name} takes no argument, got {name}:{arg}", hint=f"use --data {name}")


# --- scikit-learn digits -------------------------------------------------------------------------


def _read_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """``(images n×8×8 in 0..16, labels)`` of scikit-learn's digits.

    Importing scikit-learn takes seconds, longer than a whole digits epoch, so the CSV that
    ``load_digits`` itself parses (64 pixel columns, then the label) is read straight from the
    installed package; ``load_digits`` is the fallback should a release move the file.
    """
    spec = importlib.util.find_spec("sklearn")  # locates the package without executing it
    for folder in (spec.submodule_search_locations or []) if spec else []:
        csv = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if csv.is_file():
            table = np.loadtxt(csv, delimiter=",", dtype=np.float64)
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target


def load_digits28_dataset(arg: str | None = None) -> ImageDatasets:
    """The same digits and split at MNIST's geometry: upscaled 2× (16×16 of ink) on a 28×28 canvas.

    MNIST centres 20×20 of ink in 28×28, so the paper's CNN ends in a 3×3 map before global pooling and
    is partly shift-invariant; on the 16×16 canvas it ends in 1×1 and is not (see the README).
    """
    return load_digits_dataset(arg, scale=2, canvas_size=28, name="digits28")


def load_digits_dataset(arg: str | None = None, *, scale: int = 1, canvas_size: int = DIGITS_CANVAS,
                        name: str = "digits") -> ImageDatasets:
    """The 1797 8×8 scikit-learn digits on a 16×16 canvas, split 1437 train / 360 test.

    ``scale``/``canvas_size`` give other geometries of the same images and split (see :func:`load_digits28_dataset`).
    """
    _no_arg(name, arg)
    pixels, targets = _read_sklearn_digits()
    n = len(pixels)
    ink = torch.from_numpy(np.asarray(pixels, dtype=np.float32) * (255.0 / 16.0)).unsqueeze(1)
    if scale != 1:  # bilinear, so strokes stay smooth like MNIST's anti-aliased ones
        ink = torch.nn.functional.interpolate(ink, scale_factor=scale, mode="bilinear", align_corners=False)
    side = ink.shape[-1]
    canvas = np.zeros((n, 1, canvas_size, canvas_size), dtype=np.uint8)
    lo = (canvas_size - side) // 2
    canvas[:, :, lo : lo + side, lo : lo + side] = ink.round().clamp(0, 255).to(torch.uint8).numpy()
    images, labels = torch.from_numpy(canvas), torch.as_tensor(targets, dtype=torch.long)

    # The digits ship without a test split; a fixed permutation gives every run the same one.
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(DIGITS_SPLIT_SEED))
    n_test = math.ceil(n * DIGITS_TEST_FRACTION)
    test_idx, train_idx = perm[:n_test].sort().values, perm[n_test:].sort().values
    return ImageDatasets(
        name=name,
        train=TensorImages(images[train_idx], labels[train_idx]),
        test=TensorImages(images[test_idx], labels[test_idx]),
        classes=[str(d) for d in range(10)],
        in_chans=1,
        img_size=(canvas_size, canvas_size),
        source="sklearn.datasets.load_digits",
    )


# --- IDX (MNIST, Fashion-MNIST) ------------------------------------------------------------------


def read_idx(path: str | Path) -> np.ndarray:
    """Parse one uint8 IDX file (gzipped or plain; ``x`` also finds ``x.gz`` and vice versa)."""
    path = Path(path)
    other = path.with_name(path.name[:-3]) if path.suffix == ".gz" else Path(f"{path}.gz")
    candidates = [path, other]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise DataError(f"no IDX file {path}[.gz]", hint="check the folder and the file name")
    try:
        raw = found.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # gzip magic: decide by content, since files get renamed
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:  # zlib.error: a corrupt deflate stream
        raise DataError(f"cannot read IDX file {found}: {exc}", hint="download the file again") from exc
    if len(raw) < 4 or raw[:2] != b"\x00\x00":
        raise DataError(f"{found} is not an IDX file (bad magic number)", hint="download the file again")
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != _IDX_UINT8:
        raise DataError(
            f"{found}: IDX data type 0x{dtype_code:02x} is not uint8 (0x08)",
            hint="use the official ubyte files",
        )
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{found}: truncated IDX header", hint="download the file again")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + math.prod(shape)
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        raise DataError(
            f"{found}: IDX file {what} ({len(raw)} bytes, header says {expected})",
            hint="download the file again",
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def _idx_dir(name: str, folder: Path, layouts: tuple[str, ...], hint: str) -> Path:
    """The first of ``folder`` and its torchvision sub-layouts that holds all four IDX files."""

    def has(d: Path, f: str) -> bool:
        return (d / f).is_file() or (d / f"{f}.gz").is_file()

    for candidate in (folder, *(folder / sub for sub in layouts)):
        if all(has(candidate, f) for f in _IDX_FILES.values()):
            return candidate
    missing = [f"{f}[.gz]" for f in _IDX_FILES.values() if not has(folder, f)]
    raise DataError(f"{name}: no {', '.join(missing)} in {folder}", hint=hint)


def _idx_split(folder: Path, images: str, labels: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = read_idx(folder / _IDX_FILES[images]), read_idx(folder / _IDX_FILES[labels])
    if x.ndim != 3 or y.ndim != 1:
        raise DataError(
            f"{folder}: {_IDX_FILES[images]} must be N×H×W and {_IDX_FILES[labels]} N, "
            f"got {x.shape} and {y.shape}",
            hint="the image and label files may be swapped",
        )
    if len(x) != len(y):
        raise DataError(
            f"{folder}: {_IDX_FILES[images]} has {len(x)} images but {_IDX_FILES[labels]} {len(y)} labels",
            hint="the files come from different releases; download them again",
        )
    return x, y


def _load_idx_set(
    name: str, folder: Path, layouts: tuple[str, ...], classes: list[str], hint: str
) -> ImageDatasets:
    found = _idx_dir(name, folder, layouts, hint)
    train_x, train_y = _idx_split(found, "train_images", "train_labels")
    test_x, test_y = _idx_split(found, "test_images", "test_labels")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(
            f"{name}: train and test images differ in size in {found}",
            hint="download the files again",
        )
    top = int(max(train_y.max(initial=0), test_y.max(initial=0)))
    if top >= len(classes):
        raise DataError(
            f"{name}: label {top} in {found} but only {len(classes)} classes",
            hint="check the label files",
        )
    return ImageDatasets(
        name=name,
        # IDX images carry no channel axis; the models expect N×1×H×W
        train=TensorImages(torch.from_numpy(train_x).unsqueeze(1), torch.from_numpy(train_y).long()),
        test=TensorImages(torch.from_numpy(test_x).unsqueeze(1), torch.from_numpy(test_y).long()),
        classes=list(classes),
        in_chans=1,
        img_size=(int(train_x.shape[1]), int(train_x.shape[2])),
        source=str(found),
    )


def load_mnist_dataset(arg: str | None) -> ImageDatasets:
    """MNIST from ``DIR`` (the four IDX files, plain or ``.gz``; also ``DIR/MNIST/raw``)."""
    if arg is None:
        raise DataError("mnist needs a folder", hint="use --data mnist:DIR")
    hint = "download the four MNIST IDX files into that folder"
    folder = _folder(arg, "mnist", MNIST_HINT)
    return _load_idx_set("mnist", folder, ("MNIST/raw",), [str(d) for d in range(10)], hint)


def load_fashion_mnist_dataset(arg: str | None = None) -> ImageDatasets:
    """Fashion-MNIST from ``DIR`` or, by default, Debian's ``/usr/share/datasets/fashion-mnist``."""
    if arg is None:
        folder = Path(FASHION_MNIST_DIR)
        hint = "apt-get install dataset-fashion-mnist, or pass --data fashion-mnist:DIR"
        if not folder.is_dir():
            raise DataError(f"fashion-mnist: no folder {folder}", hint=hint)
    else:
        folder = _folder(arg, "fashion-mnist")
        hint = "download the four Fashion-MNIST IDX files into that folder"
    return _load_idx_set("fashion-mnist", folder, ("FashionMNIST/raw",), FASHION_MNIST_CLASSES, hint)


# --- CIFAR-10 python pickles ---------------------------------------------------------------------


def _numpy_reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _numpy_frombuffer() -> Any:
    try:
        from numpy._core.numeric import _frombuffer
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.numeric import _frombuffer
    return _frombuffer


# Pickles run whatever callables they name, so only what rebuilds a numpy array is resolved. The
# names are mapped to objects here rather than imported by name, so that the numpy 1 spelling of
# the official files (numpy.core...) works on numpy 2 without its deprecation shim.
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _numpy_frombuffer,  # protocol 5 (Python >= 3.14 default)
    ("numpy._core.numeric", "_frombuffer"): _numpy_frombuffer,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: codecs.encode,  # bytes in protocol 2 from Python 3
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global except numpy array reconstruction."""

    def __init__(self, file: io.BufferedIOBase, path: Path):
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        factory = _PICKLE_ALLOWED.get((module, name))
        if factory is None:
            raise DataError(
                f"{self.path}: refusing to unpickle {module}.{name} (only numpy arrays are allowed)",
                hint="use the official CIFAR-10 python batches",
            )
        return factory()


def _unpickle(path: Path) -> dict:
    try:
        with path.open("rb") as fh:
            obj = _NumpyOnlyUnpickler(fh, path).load()
    except DataError:
        raise
    except Exception as exc:  # a corrupt pickle can raise almost anything
        raise DataError(
            f"cannot read {path}: {type(exc).__name__}: {exc}",
            hint="download the file again",
        ) from exc
    if not isinstance(obj, dict):
        raise DataError(
            f"{path}: expected a pickled dict, got {type(obj).__name__}",
            hint="use the official CIFAR-10 python batches",
        )
    return obj


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    data, labels = batch.get(b"data"), batch.get(b"labels")
    shape_ok = isinstance(data, np.ndarray) and data.ndim == 2 and data.shape[1] == 3 * 32 * 32
    if not shape_ok or data.dtype != np.uint8:
        raise DataError(
            f"{path}: b'data' must be a uint8 N×3072 array",
            hint="use the official CIFAR-10 python batches",
        )
    labels = np.asarray(labels if labels is not None else [], dtype=np.int64)
    if labels.shape != (len(data),):
        raise DataError(
            f"{path}: {len(data)} images but {labels.size} labels",
            hint="download the file again",
        )
    # rows are three 32×32 planes (R, G, B), each row-major
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10_dataset(arg: str | None) -> ImageDatasets:
    """CIFAR-10 from the python batches in ``DIR`` or ``DIR/cifar-10-batches-py``."""
    if arg is None:
        raise DataError("cifar10 needs a folder", hint="use --data cifar10:DIR")
    folder = _folder(arg, "cifar10", CIFAR10_HINT)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    layouts = (folder, folder / "cifar-10-batches-py")  # the tarball extracts into the latter
    found = next((d for d in layouts if all((d / n).is_file() for n in names)), None)
    if found is None:
        missing = [n for n in names if not (folder / n).is_file()]
        raise DataError(
            f"cifar10: no {', '.join(missing)} in {folder}",
            hint="extract cifar-10-python.tar.gz into that folder",
        )
    train = [_cifar_batch(found / n) for n in names[:-1]]
    test_x, test_y = _cifar_batch(found / "test_batch")
    train_x, train_y = np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train])
    classes = list(CIFAR10_CLASSES)
    if (found / "batches.meta").is_file():
        meta = _unpickle(found / "batches.meta").get(b"label_names")
        if meta:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta]
    top = int(max(train_y.max(initial=0), test_y.max(initial=0)))
    if top >= len(classes) or min(train_y.min(initial=0), test_y.min(initial=0)) < 0:
        raise DataError(
            f"cifar10: labels outside 0..{len(classes) - 1} in {found}",
            hint="check batches.meta",
        )
    return ImageDatasets(
        name="cifar10",
        train=TensorImages(torch.from_numpy(train_x), torch.from_numpy(train_y)),
        test=TensorImages(torch.from_numpy(test_x), torch.from_numpy(test_y)),
        classes=classes,
        in_chans=3,
        img_size=(32, 32),
        source=str(found),
    )


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

    folder = _folder(arg, "imagefolder")
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
    horizontal flip, per image seeded (:class:`~hardctl.data.transforms.AugmentedImages`; ``load_data``
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
    from hardctl.data.transforms import AugmentedImages

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
