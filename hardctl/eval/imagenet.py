"""ImageNet and its test sets: class conventions, folder layouts and the ``imagenet-*`` suites.

Class index = position of the wnid in the sorted list of the 1000 ImageNet-1k wnids (timm's
``_info/imagenet_synsets.txt``). Folders are walked by timm's reader (``find_images_and_targets``:
``.png/.jpg/.jpeg`` in any case, files in natural order) and each folder is then mapped *by name*:

* wnid folders (val, Sketch, Stylized val, ImageNet-C cells) -> the wnid's ImageNet-1k index, so a
  tree with some classes missing still gets every label right;
* ImageNet-V2's folders ``0 .. 999`` are class indices: label = ``int(folder)``, never the rank of the
  name in a string sort (modestyachts/ImageNetV2 issue #10);
* ImageNet-A / -R: label = position of the wnid among the 200 sorted subset wnids, and the model's
  1000 logits are sliced to the subset's ImageNet-1k indices (timm's ``_info/imagenet_{a,r}_indices.txt``)
  before the argmax;
* ReaL: the target is the image's number in the validation set, read from its original file name
  ``ILSVRC2012_val_XXXXXXXX.JPEG``; the score uses the ReaL label lists (:class:`~hardctl.eval.metrics.RealTopK`).

A folder that is not a class of the set is an error naming it, never silently dropped.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from hardctl.errors import DataError
from hardctl.eval import EvalSet
from hardctl.eval.corruptions import CORRUPTIONS, EXTRAS, SEVERITIES, category_of
from hardctl.eval.metrics import RealTopK, real_labels, timm_info_file
from hardctl.eval.preprocess import FileImages
from hardctl.eval.sources import Locator, Source, skip_reason

__all__ = ["IMAGENET_ID_SOURCES", "IMAGENET_OOD_SOURCES", "imagenet_id_suite", "imagenet_ood_suite",
           "imagenet_subset", "scan_folder", "wnid_index"]

SOURCES = {s.key: s for s in (
    Source("imagenet-val", ("imagenet/val", "val"), "ImageNet val: val/<wnid>/ILSVRC2012_val_XXXXXXXX.JPEG"),
    Source("imagenet-real", ("imagenet/val", "val"), "ReaL labels on the val folder (defaults to imagenet-val)"),
    Source("imagenet-v2", ("imagenetv2-matched-frequency-format-val", "imagenet-v2/imagenetv2-matched-frequency-format-val"),
           "ImageNet-V2 MatchedFrequency: folders 0..999 = class index",
           nested=("imagenetv2-matched-frequency-format-val",)),
    Source("imagenet-a", ("imagenet-a",), "ImageNet-A: imagenet-a/<wnid>/ (200 classes)", nested=("imagenet-a",)),
    Source("imagenet-r", ("imagenet-r",), "ImageNet-R: imagenet-r/<wnid>/ (200 classes)", nested=("imagenet-r",)),
    Source("imagenet-sketch", ("sketch", "imagenet-sketch/sketch", "imagenet-sketch"),
           "ImageNet-Sketch: sketch/<wnid>/*.JPEG", nested=("sketch",)),
    Source("stylized-imagenet", ("stylized-imagenet/val",), "Stylized-ImageNet val: val/<wnid>/*.png",
           nested=("val",)),
    Source("imagenet-c", ("imagenet-c", "ImageNet-C"),
           "ImageNet-C: <corruption>/<1..5>/<wnid>/ or <category>/<corruption>/<1..5>/<wnid>/"),
)}  # fmt: skip
IMAGENET_ID_SOURCES = ("imagenet-val", "imagenet-real", "imagenet-v2")
IMAGENET_OOD_SOURCES = ("imagenet-val", "imagenet-a", "imagenet-r", "imagenet-sketch", "stylized-imagenet",
                        "imagenet-c")
OFFICIAL_IMAGES = {"imagenet-val": 50_000, "imagenet-real": 46_837, "imagenet-v2": 10_000, "imagenet-a": 7_500,
                   "imagenet-r": 30_000, "imagenet-sketch": 50_889, "stylized-imagenet": 50_000}
_VAL_NAME = re.compile(r"^ILSVRC2012_val_(\d{8})\.JPEG$")


@lru_cache(maxsize=1)
def wnid_index() -> dict[str, int]:
    """wnid -> ImageNet-1k class index, from timm's ``imagenet_synsets.txt``."""
    data, _ = timm_info_file("imagenet_synsets.txt")
    return {w: i for i, w in enumerate(data.decode().split())}


@lru_cache(maxsize=2)
def imagenet_subset(name: str) -> tuple[tuple[str, ...], tuple[int, ...], str]:
    """``(wnids, indices, md5 of the indices file)`` of the 200-class subset ``"a"`` or ``"r"``."""
    synsets, _ = timm_info_file(f"imagenet_{name}_synsets.txt")
    indices, md5 = timm_info_file(f"imagenet_{name}_indices.txt")
    wnids, idx = tuple(synsets.decode().split()), tuple(int(v) for v in indices.decode().split())
    index = wnid_index()
    if len(wnids) != 200 or [index[w] for w in wnids] != list(idx):  # the two files must agree
        raise RuntimeError(f"timm's imagenet_{name} synsets and indices disagree")
    return wnids, idx, md5


def scan_folder(root: Path, label: Callable[[str], int | None], what: str) -> tuple[list[str], list[int]]:
    """Every image under ``root`` (timm's folder walk), labelled by ``label(folder name)``.

    ``label`` returns ``None`` for a folder that is not a class of the set, which is an error.
    """
    from timm.data.readers.reader_image_folder import find_images_and_targets

    samples, class_to_idx = find_images_and_targets(str(root))
    by_index = {i: name for name, i in class_to_idx.items()}
    mapping: dict[int, int] = {}
    for i, name in by_index.items():
        target = label(name)
        if target is None:
            where = root / name if name else root
            raise DataError(f"{what}: {where} is not a class folder of this set",
                            hint="point at the folder the official archive extracted to")
        mapping[i] = target
    return [p for p, _ in samples], [mapping[t] for _, t in samples]


def _wnid_label(name: str) -> int | None:
    return wnid_index().get(name)


def _v2_label(name: str) -> int | None:
    return int(name) if name.isdigit() and int(name) < 1000 else None


def _empty(what: str, root: Path) -> DataError:
    return DataError(f"{what}: no .jpg/.jpeg/.png images under {root}", hint="check the folder")


def _check_class_folders(root: Path, label: Callable[[str], int | None], what: str) -> None:
    """Name the first sub-folder that is not a class now, before anything is scored (the full walk of
    the files waits until the set is scored)."""
    try:
        names = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    except OSError as exc:
        raise DataError(f"{what}: cannot list {root}: {exc.strerror or exc}", hint="check the folder") from None
    bad = next((n for n in names if label(n) is None), None)
    if bad is not None:
        raise DataError(f"{what}: {root / bad} is not a class folder of this set",
                        hint="point at the folder the official archive extracted to")


def _folder_set(name: str, description: str, root: Path, label: Callable[[str], int | None], *,
                policy: str = "crop", **kwargs) -> EvalSet:
    _check_class_folders(root, label, name)

    def open_set() -> FileImages:
        paths, targets = scan_folder(root, label, name)
        if not paths:
            raise _empty(name, root)
        return FileImages(paths, targets)

    meta = {"expected_images": OFFICIAL_IMAGES[name]} if name in OFFICIAL_IMAGES else {}
    meta.update(kwargs.pop("meta", {}))
    return EvalSet(name, None, description, num_classes=1000, in_chans=3, open=open_set, preprocess=policy,
                   path=str(root), meta=meta, **kwargs)


def _real_set(root: Path) -> EvalSet:
    labels = real_labels()

    def open_set() -> FileImages:
        from timm.data.readers.reader_image_folder import find_images_and_targets

        samples, _ = find_images_and_targets(str(root))
        if not samples:
            raise _empty("imagenet-real", root)
        ids = []
        for path, _ in samples:
            match = _VAL_NAME.match(Path(path).name)
            if match is None or not 1 <= int(match.group(1)) <= len(labels):
                raise DataError(f"imagenet-real: {path} is not named like ILSVRC2012_val_00000001.JPEG",
                                hint="ReaL needs the original validation file names")
            ids.append(int(match.group(1)) - 1)
        return FileImages([p for p, _ in samples], ids)

    return EvalSet("imagenet-real", None, "ImageNet val scored against the ReaL labels (images without one excluded)",
                   num_classes=1000, in_chans=3, open=open_set, preprocess="crop", path=str(root),
                   scorer=lambda: RealTopK(labels), meta={"expected_images": OFFICIAL_IMAGES["imagenet-real"]})


def _skipped(name: str, reason: str, **meta) -> EvalSet:
    return EvalSet(name, None, "", num_classes=1000, in_chans=3, skipped=reason, meta=meta)


def _subset_set(name: str, root: Path, which: str) -> EvalSet:
    wnids, indices, md5 = imagenet_subset(which)
    position = {w: i for i, w in enumerate(wnids)}
    title = f"ImageNet-{which.upper()}"
    return _folder_set(name, f"{title}, 200 classes: the 1000 logits sliced to the subset before the argmax",
                       root, position.get, logit_indices=list(indices),
                       meta={"subset": f"timm/data/_info/imagenet_{which}_indices.txt", "subset_md5": md5})


def _imagenet_c_sets(locator: Locator) -> list[EvalSet]:
    found = locator.find(SOURCES["imagenet-c"])
    if found.path is None:
        return [_skipped("imagenet-c", found.reason, benchmark="imagenet-c")]
    root, sets = found.path, []
    for corruption in CORRUPTIONS + EXTRAS:
        candidates = [root / corruption, root / category_of(corruption) / corruption]
        folder = next((c for c in candidates if c.is_dir()), None)
        meta = {"benchmark": "imagenet-c", "corruption": corruption, "extra": corruption in EXTRAS}
        if folder is None:
            sets.append(_skipped(f"imagenet-c/{corruption}", skip_reason(candidates), **meta))
            continue
        for severity in SEVERITIES:
            cell, name = folder / str(severity), f"imagenet-c/{corruption}/{severity}"
            cell_meta = {**meta, "severity": severity, "expected_images": 50_000}
            if not cell.is_dir():
                sets.append(_skipped(name, skip_reason([cell]), **cell_meta))
                continue
            kind = "extra corruption, not in mCE" if corruption in EXTRAS else "benchmark corruption"
            sets.append(_folder_set(name, f"ImageNet-C {corruption} severity {severity} ({kind})", cell,
                                    _wnid_label, policy="resize", meta=cell_meta))
    return sets


def _build(key: str, locator: Locator) -> list[EvalSet]:
    if key == "imagenet-c":
        return _imagenet_c_sets(locator)
    found = locator.find(SOURCES[key], fallback="imagenet-val" if key == "imagenet-real" else None)
    if found.path is None:
        return [_skipped(key, found.reason)]
    root = found.path
    if key == "imagenet-val":
        return [_folder_set(key, "ImageNet-1k validation (1000-way)", root, _wnid_label)]
    if key == "imagenet-real":
        return [_real_set(root)]
    if key == "imagenet-v2":
        return [_folder_set(key, "ImageNet-V2 MatchedFrequency (folder name = class index)", root, _v2_label)]
    if key in ("imagenet-a", "imagenet-r"):
        return [_subset_set(key, root, key[-1])]
    if key == "imagenet-sketch":
        return [_folder_set(key, "ImageNet-Sketch (1000-way)", root, _wnid_label)]
    return [_folder_set(key, "Stylized-ImageNet val (1000-way; 224x224 stylized centre crops)", root, _wnid_label,
                        policy="resize")]


def imagenet_id_suite(data_spec: str | None = None, *, data_root=None, sets=None, **_options) -> list[EvalSet]:
    """In-distribution: ImageNet val, ReaL and ImageNet-V2 MatchedFrequency."""
    locator = Locator(data_root, sets)
    return [s for key in IMAGENET_ID_SOURCES for s in _build(key, locator)]


def imagenet_ood_suite(data_spec: str | None = None, *, data_root=None, sets=None, **_options) -> list[EvalSet]:
    """Out-of-distribution: A, R, Sketch, Stylized val and ImageNet-C (with val as the clean reference)."""
    locator = Locator(data_root, sets)
    return [s for key in IMAGENET_OOD_SOURCES for s in _build(key, locator)]
