"""Model specs -> built models, and hardctl's own weights files in and out.

A *model spec* is what a user types after ``--teacher``/``--student``: a timm name (``resnet18``), a
friendly alias (``mnist_cnn``), a ``.safetensors`` file written by hardctl, a hardctl run directory, or
``NAME:FILE``, a timm architecture with weights from someone else's file (``.pth``, ``.pth.tar``, ``.pt``
or ``.safetensors``, e.g. ``resnet50:~/weights/deepaugment_and_augmix.pth.tar``; read by
:mod:`hardctl.checkpoints`). :func:`load_model` turns any of them into ``(module, ModelInfo)``.

Weights are stored as safetensors (never pickle) with the model's :class:`ModelInfo` in the file's
string metadata, so a file alone is enough to rebuild its architecture and input normalisation.
Importing this module imports :mod:`hardctl.zoo`, which registers the paper's ``hard_*`` models in timm.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import safetensors
import safetensors.torch
import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

import hardctl
from hardctl import zoo  # noqa: F401  (registers the hard_* architectures in timm's registry)
from hardctl.atomic import atomic_path
from hardctl.errors import CheckpointError, ModelError, UsageError, did_you_mean

__all__ = [
    "ALIASES", "InputNormalize", "ModelInfo", "create_model", "describe", "load_model", "resolve_name",
    "save_model",
]

WEIGHTS_NAME = "model.safetensors"
"""The weights file inside a hardctl run directory."""

FORMAT = "hardctl"

ALIASES: dict[str, str] = {
    "vit_tiny": "vit_tiny_patch16_224",
    "vit_small": "vit_small_patch16_224",
    # ViT-S/14, the paper's ImageNet student: timm defines it only as DINOv2's architecture (LayerScale; the
    # register-token variant is vit_small_patch14_reg4_dinov2). Built at the data's size (224 px: 16x16 patches).
    "vit_s14": "vit_small_patch14_dinov2",
    "resnet18": "resnet18",
    "resnet50": "resnet50",
    "resnet101": "resnet101",
    "mnist_cnn": "hard_mnist_cnn",
    "mnist_mlp": "hard_mnist_mlp",
    "mnist_vit": "hard_vit_mnist",
    "resnet18_cifar": "hard_resnet18_cifar",
    "vit_cifar": "hard_vit_cifar",
    "cnn": "hard_mnist_cnn",
    "mlp": "hard_mnist_mlp",
}
"""Friendly names -> timm names. Any other timm name is accepted as is."""

# timm resolves these prefixes itself (Hugging Face Hub / local config folders); they contain "/"
# but are not hardctl weights files
_TIMM_SOURCE_PREFIXES = ("hf-hub:", "hf_hub:", "local-dir:")


@dataclass(frozen=True)
class ModelInfo:
    """What is needed to rebuild a model and feed it: architecture, head, input shape, normalisation."""

    arch: str
    num_classes: int
    in_chans: int
    img_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str = "timm"

    def to_metadata(self) -> dict[str, str]:
        """Safetensors metadata is str -> str, so sequences are stored as JSON lists."""
        return {
            "arch": self.arch,
            "num_classes": str(self.num_classes),
            "in_chans": str(self.in_chans),
            "img_size": json.dumps(list(self.img_size)),
            "mean": json.dumps(list(self.mean)),
            "std": json.dumps(list(self.std)),
            "source": self.source,
        }

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> ModelInfo:
        """Parse :meth:`to_metadata` output; raises ``ValueError`` naming the bad or missing field."""
        required = ("arch", "num_classes", "in_chans", "img_size", "mean", "std")
        missing = [k for k in required if k not in metadata]
        if missing:
            raise ValueError(f"metadata lacks {', '.join(missing)}")
        try:
            num_classes = int(metadata["num_classes"])
            in_chans = int(metadata["in_chans"])
            img_size = tuple(int(v) for v in json.loads(metadata["img_size"]))
            mean = tuple(float(v) for v in json.loads(metadata["mean"]))
            std = tuple(float(v) for v in json.loads(metadata["std"]))
        except (TypeError, ValueError) as e:  # json.JSONDecodeError is a ValueError
            raise ValueError(f"metadata field is malformed ({e})") from None
        if len(img_size) != 2 or len(mean) != in_chans or len(std) != in_chans:
            raise ValueError(f"metadata img_size/mean/std do not fit in_chans={in_chans}")
        return cls(
            arch=metadata["arch"],
            num_classes=num_classes,
            in_chans=in_chans,
            img_size=(img_size[0], img_size[1]),
            mean=mean,
            std=std,
            source=metadata.get("source", "timm"),
        )


def resolve_name(name: str) -> str:
    """Alias or timm name (optionally ``arch.tag``) -> timm name; unknown names raise :class:`ModelError`."""
    if name.startswith(_TIMM_SOURCE_PREFIXES):
        return name
    for candidate in (name, name.lower()):
        if candidate in ALIASES:
            return ALIASES[candidate]
        # "resnet18.a1_in1k" picks one pretrained tag of an architecture; keep the tag for timm
        if timm.is_model(timm.models.get_arch_name(candidate)):
            return candidate
    choices = sorted(set(ALIASES) | set(timm.list_models()))
    raise ModelError(
        f"unknown model {name!r}{did_you_mean(name.lower(), choices)}",
        hint="pass an alias such as mnist_cnn, a name from timm.list_models(), "
        "a .safetensors file or a run directory",
    )


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = tuple(size)
    return int(h), int(w)


def _adapt_stats(values: Sequence[float], in_chans: int) -> tuple[float, ...]:
    """Fit a cfg's per-channel mean/std to ``in_chans``.

    RGB stats for a grey model collapse to their average (a grey image is an equal mix of channels);
    any other mismatch repeats the first value, which is exact for the 1-value stats of grey models.
    """
    values = tuple(float(v) for v in values)
    if len(values) == in_chans:
        return values
    if len(values) == 3 and in_chans == 1:
        return (sum(values) / 3,)
    return (values[0],) * in_chans


def _build(arch: str, pretrained: bool, **kwargs: object) -> nn.Module:
    """``timm.create_model`` with ``img_size`` passed only to constructors that accept it.

    timm entrypoints take ``**kwargs``, so only calling the constructor tells whether ``img_size`` is
    understood: ViTs and the hard_* models need it, CNNs such as ResNet reject it (and adapt to any
    size anyway). The TypeError comes from the call itself, before any layer is built.
    """
    try:
        return timm.create_model(arch, pretrained=pretrained, **kwargs)
    except TypeError as e:
        if "img_size" not in str(e):
            raise
    kwargs.pop("img_size")
    return timm.create_model(arch, pretrained=pretrained, **kwargs)


def create_model(
    name: str,
    *,
    num_classes: int,
    in_chans: int,
    img_size: int | Sequence[int],
    pretrained: bool = False,
) -> tuple[nn.Module, ModelInfo]:
    """Build a timm model (name or alias) with a fresh head; returns it with its :class:`ModelInfo`."""
    arch = resolve_name(name)
    size = _pair(img_size)
    if pretrained and not name.startswith(_TIMM_SOURCE_PREFIXES) and not timm.is_model_pretrained(arch):
        raise ModelError(
            f"timm has no pretrained weights for {arch!r}",
            hint="drop --pretrained to train it from random initialisation",
        )
    kwargs = dict(num_classes=num_classes, in_chans=in_chans, img_size=size)
    try:
        model = _build(arch, pretrained, **kwargs)
    except (ValueError, AssertionError) as e:
        # constructors validate their arguments this way (e.g. an image too small for the CNN, a size
        # the patch does not tile): a bad spec, not a bug
        raise ModelError(f"cannot build {arch!r} for {in_chans}x{size[0]}x{size[1]} images: {e}") from None
    except Exception as e:
        if not pretrained:
            raise
        # download failures arrive as OSError, HTTP-client, hub and RuntimeError types alike, so no
        # narrower clause catches them all; the type and first line still show in the message
        lines = str(e).strip().splitlines()
        raise ModelError(
            f"no pretrained weights for {arch!r} in the local Hugging Face cache and no network "
            f"({type(e).__name__}: {lines[0] if lines else 'no details'})",
            hint="drop --pretrained or download the weights once with network access",
        ) from None
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = _adapt_stats(cfg.get("mean") or IMAGENET_DEFAULT_MEAN, in_chans)
    std = _adapt_stats(cfg.get("std") or IMAGENET_DEFAULT_STD, in_chans)
    info = ModelInfo(arch, num_classes, in_chans, size, mean, std, source="timm")
    return model, info


def save_model(
    model: nn.Module,
    info: ModelInfo,
    path: str | os.PathLike[str],
    extra: dict[str, str] | None = None,
) -> Path:
    """Write ``model``'s weights and ``info`` to a safetensors file, atomically; returns the path.

    The file is written next to its destination and moved in place with ``os.replace``, so a crash
    mid-write never leaves a truncated file under the final name.
    """
    path = Path(path)
    metadata = {**info.to_metadata(), "format": FORMAT, "hardctl_version": hardctl.__version__}
    for key, value in (extra or {}).items():
        if key in metadata:
            raise ValueError(f"extra metadata key {key!r} clashes with a reserved key")
        if not isinstance(value, str):
            raise ValueError(f"extra metadata {key!r} must be a str, got {type(value).__name__}")
        metadata[key] = value
    # wrappers prefix state-dict names ("module.", "_orig_mod."); save the inner model so the file
    # loads into a plain rebuild of the architecture
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    model = getattr(model, "_orig_mod", model)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            # save_model (not save_file) drops tied duplicates and makes tensors contiguous
            safetensors.torch.save_model(model, str(tmp), metadata=metadata)
    except (OSError, safetensors.SafetensorError) as e:
        reason = getattr(e, "strerror", None) or e
        raise CheckpointError(
            f"cannot write weights file {path}: {reason}", hint="check free disk space and permissions"
        ) from None
    return path


def _read_info(path: Path) -> ModelInfo:
    """Read and validate the hardctl metadata of a safetensors file (header only, no tensors)."""
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (safetensors.SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"cannot read weights file {path}: it is truncated or not a safetensors file ({e})",
            hint="re-export it or point at another file",
        ) from None
    if "arch" not in metadata:
        raise CheckpointError(
            f"weights file {path} lacks hardctl metadata (no architecture recorded)",
            hint=f"write it with `hardctl export`, or name its timm architecture: NAME:{path}",
        )
    try:
        info = ModelInfo.from_metadata(metadata)
    except ValueError as e:
        raise CheckpointError(
            f"weights file {path} has broken hardctl metadata: {e}", hint="re-export it"
        ) from None
    known = info.arch.startswith(_TIMM_SOURCE_PREFIXES) or timm.is_model(timm.models.get_arch_name(info.arch))
    if not known:
        raise CheckpointError(
            f"weights file {path} is for architecture {info.arch!r}, which this installation does not know",
            hint="install the timm version or hardctl plugin that provides it",
        )
    return info


def _load_file(path: Path, source: str) -> tuple[nn.Module, ModelInfo]:
    info = _read_info(path)
    model, _ = create_model(
        info.arch, num_classes=info.num_classes, in_chans=info.in_chans, img_size=info.img_size
    )
    try:
        safetensors.torch.load_model(model, str(path), strict=True)
    except (safetensors.SafetensorError, OSError) as e:
        raise CheckpointError(
            f"cannot read weights file {path}: it is truncated or not a safetensors file ({e})",
            hint="re-export it or point at another file",
        ) from None
    except RuntimeError as e:
        raise CheckpointError(
            f"weights file {path} does not match architecture {info.arch!r}: {state_dict_mismatch(e)}",
            hint="re-export it with this hardctl version or point at another file",
        ) from None
    # the file's metadata wins over the caller's request: callers compare and report mismatches
    return model, replace(info, source=source)


def _looks_like_path(spec: str) -> bool:
    if spec.startswith(_TIMM_SOURCE_PREFIXES):
        return False
    return "/" in spec or os.sep in spec or spec.endswith(".safetensors") or spec.startswith(("~", "."))


def state_dict_mismatch(error: RuntimeError) -> str:
    """The gist of ``load_state_dict``'s error: torch lists every key over many lines; keep the first detail."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    return (lines[1] if len(lines) > 1 else (lines[0] if lines else ""))[:300]


def load_model(
    spec: str | os.PathLike[str],
    *,
    num_classes: int | None = None,
    in_chans: int | None = None,
    img_size: int | Sequence[int] | None = None,
    pretrained: bool = False,
) -> tuple[nn.Module, ModelInfo]:
    """Load a model from a spec: weights file, run directory, ``NAME:FILE``, or timm name/alias.

    For files and run directories the architecture, head and input shape come from the file's
    metadata and the keyword arguments are ignored; for names they are required. ``NAME:FILE`` takes
    its head and input channels from the file and its input size from ``img_size``.
    """
    from hardctl.checkpoints import _load_named_file, split_named_file  # imports this module

    text = os.fspath(spec)
    path = Path(text).expanduser()
    named_file = split_named_file(text)
    if named_file is not None and not path.exists():  # an existing file whose name has a ":" stays a file
        return _load_named_file(text, *named_file, num_classes, in_chans, img_size, pretrained)
    if not _looks_like_path(text):
        # a bare word is a model name unless it is unknown and a file or folder of that name exists:
        # a known name wins over a same-named entry in the working directory
        known = True
        if path.exists():
            try:
                resolve_name(text)
            except ModelError:
                known = False
        if known:
            return _create_named(text, num_classes, in_chans, img_size, pretrained)
    if path.is_dir():
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            raise ModelError(
                f"{path} is a folder but not a hardctl run directory (no {WEIGHTS_NAME})",
                hint="point at a run directory or a .safetensors file",
            )
        return _load_file(weights, f"run:{path}")
    if path.is_file():
        return _load_file(path, f"file:{path}")
    raise ModelError(f"no such model file {path}", hint="check the path, or pass a timm model name")


def _create_named(
    name: str,
    num_classes: int | None,
    in_chans: int | None,
    img_size: int | Sequence[int] | None,
    pretrained: bool,
) -> tuple[nn.Module, ModelInfo]:
    given = {"num_classes": num_classes, "in_chans": in_chans, "img_size": img_size}
    unset = [k for k, v in given.items() if v is None]
    if unset:
        raise ValueError(f"building {name!r} by name needs {', '.join(unset)}")
    assert num_classes is not None and in_chans is not None and img_size is not None
    return create_model(
        name, num_classes=num_classes, in_chans=in_chans, img_size=img_size, pretrained=pretrained
    )


class InputNormalize(nn.Module):
    """``(x - mean) / std`` per channel, for models that expect normalised input.

    The buffers are non-persistent: mean/std already live in the weights file's metadata, and keeping
    them out of ``state_dict`` means wrapping a model in ``nn.Sequential(norm, model)`` adds no keys.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} channels but std has {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {tuple(std)}")
        shape = (1, -1, 1, 1)  # broadcasts over (N, C, H, W)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(shape), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(shape), persistent=False)

    @classmethod
    def from_info(cls, info: ModelInfo) -> InputNormalize:
        return cls(info.mean, info.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={tuple(self.mean.flatten().tolist())}, std={tuple(self.std.flatten().tolist())}"


def check_compatible(role: str, spec: str, info: ModelInfo, num_classes: int, in_chans: int, data: str) -> None:
    """A model loaded from a file must predict the data's classes from the data's channels."""
    for what, have, want in (("classes", info.num_classes, num_classes), ("channels", info.in_chans, in_chans)):
        if have != want:
            verb = "predicts" if what == "classes" else "takes images with"
            raise UsageError(f"{role} {spec} {verb} {have} {what} but data {data!r} has {want}",
                             hint=f"use a {role} trained on this data")


def check_accepts(role: str, spec: str, model: nn.Module, info: ModelInfo, images: torch.Tensor, data: str) -> None:
    """One no-grad forward pass on a couple of real images, so a model built for another input size
    fails now with a usage error instead of deep inside a matrix multiplication."""
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(InputNormalize(info.mean, info.std).to(images.device)(images))
    except RuntimeError as exc:
        first = str(exc).splitlines()[0][:200]
        raise UsageError(f"{role} {spec} cannot take {tuple(images.shape[1:])} images from {data!r}: {first}",
                         hint=f"use a {role} built for this input size") from None
    finally:
        model.train(was_training)


def load_for_data(
    role: str,
    spec: str,
    *,
    data: str,
    num_classes: int,
    in_chans: int,
    img_size: tuple[int, int],
    sample: torch.Tensor,
    pretrained: bool = False,
    require_trained: bool = False,
) -> tuple[nn.Module, ModelInfo]:
    """Load ``spec`` for data of the given shape, on ``sample``'s device, and check that it fits.

    ``require_trained`` refuses a bare timm architecture without ``--pretrained`` (random weights make
    no teacher and nothing worth evaluating). ``sample`` is a batch of real images from the data.
    """
    model, info = load_model(spec, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans,
                             img_size=img_size)
    if require_trained and info.source == "timm" and not pretrained:
        raise UsageError(f"{role} {spec!r} is a bare architecture with random weights",
                         hint="pass a run directory or .safetensors file, or add --pretrained")
    check_compatible(role, spec, info, num_classes, in_chans, data)
    model.to(sample.device)
    check_accepts(role, spec, model, info, sample, data)
    return model, info


def describe(info: ModelInfo) -> str:
    """One line for logs, e.g.
    ``hard_mnist_cnn: 10 classes, input 1x28x28, mean (0,) std (1,), from timm``.
    """

    def fmt(values: tuple[float, ...]) -> str:
        inner = ", ".join(f"{v:.4g}" for v in values)
        return f"({inner},)" if len(values) == 1 else f"({inner})"

    h, w = info.img_size
    return (
        f"{info.arch}: {info.num_classes} classes, input {info.in_chans}x{h}x{w}, "
        f"mean {fmt(info.mean)} std {fmt(info.std)}, from {info.source}"
    )
