"""Building models by name, and hardctl's own weights files in and out.

Names are timm names or friendly aliases (:data:`ALIASES`); :func:`create_model` builds one with its
:class:`ModelInfo` (architecture, head, input shape, normalisation).

Weights are stored as safetensors (never pickle) with the model's :class:`ModelInfo` in the file's
string metadata, so a file alone is enough to rebuild its architecture and input normalisation.
Importing this module imports :mod:`hardctl.zoo`, which registers the paper's ``hard_*`` models in timm.
"""

from __future__ import annotations

import json
import math
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
from hardctl.atomic import atomic_path, os_reason
from hardctl.errors import CheckpointError, ModelError, did_you_mean, shorten
from hardctl.runfiles import MODEL_FILE

__all__ = [
    "ALIASES", "TIMM_SOURCE_PREFIXES", "WEIGHTS_NAME", "InputNormalize", "ModelInfo", "create_model", "describe",
    "load_weights_file", "resolve_name", "save_model", "state_dict_mismatch",
]

WEIGHTS_NAME = MODEL_FILE
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
    "mnist_mlp_wide": "hard_mnist_mlp_wide",
    "mnist_vit": "hard_vit_mnist",
    "resnet18_cifar": "hard_resnet18_cifar",
    "vit_cifar": "hard_vit_cifar",
    "cnn": "hard_mnist_cnn",
    "mlp": "hard_mnist_mlp",
}
"""Friendly names -> timm names. Any other timm name is accepted as is."""

# timm resolves these prefixes itself (Hugging Face Hub / local config folders); they contain "/"
# but are not hardctl weights files
TIMM_SOURCE_PREFIXES = ("hf-hub:", "hf_hub:", "local-dir:")


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
    if name.startswith(TIMM_SOURCE_PREFIXES):
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


class _WeightsUnavailable(Exception):
    """Pretrained weights are neither in the local cache nor reachable; ``reason`` says why, in a few words."""

    def __init__(self, reason: str, *, offline: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.offline = offline  # the user set HF_HUB_OFFLINE: the way out starts with unsetting it


def _hub_constants():  # huggingface_hub is optional for timm; without it timm downloads by URL only
    try:
        from huggingface_hub import constants
    except ImportError:
        return None
    return constants


def _weights_host(arch: str) -> tuple[str, int] | None:
    """The host (and port) timm downloads ``arch``'s weights from: the Hugging Face hub for almost all
    timm weights, else the cfg's URL; None when it cannot tell (then no reachability check is made)."""
    from urllib.parse import urlsplit

    hub = _hub_constants()
    if arch.startswith(TIMM_SOURCE_PREFIXES):  # hf-hub:/hf_hub: names the hub; local-dir: no network
        url = hub.ENDPOINT if hub is not None and not arch.startswith("local-dir:") else None
    else:
        try:
            cfg = timm.models.get_pretrained_cfg(arch)
        except Exception:  # an unknown tag: timm itself reports it when building
            cfg = None
        if cfg is None:
            url = None
        elif cfg.hf_hub_id and hub is not None:  # timm prefers the hub whenever it is installed
            url = hub.ENDPOINT
        else:
            url = cfg.url if isinstance(cfg.url, str) else None
    parts = urlsplit(url) if url else None
    if not parts or not parts.hostname:
        return None
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def _reachable(host: tuple[str, int], timeout: float = 3.0) -> str | None:
    """None if a TCP connection to ``host`` opens within ``timeout`` seconds, else the reason it did not.

    huggingface_hub retries a failed download 5 times with growing pauses (about a minute offline);
    one quick connection tells "no network" apart before any of that. Behind a proxy a direct
    connection proves nothing, so the check is skipped there.
    """
    import socket

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                                       "all_proxy")):
        return None
    try:
        socket.create_connection(host, timeout=timeout).close()
    except OSError as e:  # socket.gaierror (no DNS), timeout, connection refused: all OSErrors
        return f"{host[0]} is unreachable ({e.strerror or e or type(e).__name__})"
    return None


def _build_pretrained(arch: str, **kwargs: object) -> nn.Module:
    """:func:`_build` with pretrained weights: from the local Hugging Face cache without any network
    access if they are there, else downloaded if the hub answers; raises :class:`_WeightsUnavailable`
    at once when the user set ``HF_HUB_OFFLINE`` or the host does not answer."""
    hub = _hub_constants()
    user_offline = bool(hub and hub.is_offline_mode())
    if hub is not None:
        # the cache first, with the hub's own offline switch (read at every request): no request is made
        previous = hub.HF_HUB_OFFLINE
        hub.HF_HUB_OFFLINE = True
        try:
            return _build(arch, True, **kwargs)
        except (ValueError, AssertionError, TypeError):
            raise  # a bad spec, not a missing file: create_model reports it
        except Exception as e:
            if user_offline:
                raise _WeightsUnavailable("not in the local Hugging Face cache and HF_HUB_OFFLINE is set",
                                          offline=True) from e
        finally:
            hub.HF_HUB_OFFLINE = previous
    host = _weights_host(arch)
    reason = _reachable(host) if host is not None else None
    if reason is not None:
        raise _WeightsUnavailable(f"not in the local Hugging Face cache and {reason}")
    try:
        return _build(arch, True, **kwargs)
    except (ValueError, AssertionError, TypeError):
        raise
    except Exception as e:
        # download failures arrive as OSError, HTTP-client, hub and RuntimeError types alike, so no
        # narrower clause catches them all; the type and first line still show in the message
        lines = str(e).strip().splitlines()
        raise _WeightsUnavailable(f"{type(e).__name__}: {lines[0] if lines else 'no details'}") from None


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
    if pretrained and not name.startswith(TIMM_SOURCE_PREFIXES) and not timm.is_model_pretrained(arch):
        raise ModelError(
            f"timm has no pretrained weights for {arch!r}",
            hint="drop --pretrained to train it from random initialisation",
        )
    kwargs = dict(num_classes=num_classes, in_chans=in_chans, img_size=size)
    try:
        model = _build_pretrained(arch, **kwargs) if pretrained else _build(arch, False, **kwargs)
    except (ValueError, AssertionError) as e:
        # constructors validate their arguments this way (e.g. an image too small for the CNN, a size
        # the patch does not tile): a bad spec, not a bug
        raise ModelError(f"cannot build {arch!r} for {in_chans}x{size[0]}x{size[1]} images: {e}") from None
    except _WeightsUnavailable as e:
        network = ("unset HF_HUB_OFFLINE and run once with network access" if e.offline else
                   "run once with network access")
        skip = "" if e.offline else "; HF_HUB_OFFLINE=1 skips the network"
        raise ModelError(
            f"the pretrained weights of {name} could not be downloaded: {e.reason}",
            hint=f"{network} so they land in the Hugging Face cache, or pass a weights file as {name}:FILE "
            f"or a .safetensors file{skip}",
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
        reason = os_reason(e) or e  # "no space left on device", not safetensors' "I/O error: ... (os error 28)"
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
    if info.arch.startswith(TIMM_SOURCE_PREFIXES):  # a file must never make hardctl contact a hub
        raise CheckpointError(f"weights file {path} names architecture {info.arch!r}, a model hub source",
                              hint="hardctl never takes a hub name from a file; re-export it with a timm architecture")
    bad_stats = [v for v in (*info.mean, *info.std) if not math.isfinite(v)] or [v for v in info.std if v <= 0]
    if bad_stats or len(info.mean) != len(info.std):
        raise CheckpointError(f"weights file {path} has broken normalisation metadata: mean {info.mean} std "
                              f"{info.std}", hint="finite means and positive finite stds, one per channel; re-export it")
    if not timm.is_model(timm.models.get_arch_name(info.arch)):
        raise CheckpointError(
            f"weights file {path} is for architecture {info.arch!r}, which this installation does not know",
            hint="install the timm version or hardctl plugin that provides it",
        )
    return info


def load_weights_file(path: Path, source: str) -> tuple[nn.Module, ModelInfo]:
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


def state_dict_mismatch(error: RuntimeError) -> str:
    """The gist of ``load_state_dict``'s error: torch lists every key over many lines; keep the first detail."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    return shorten(lines[1] if len(lines) > 1 else (lines[0] if lines else ""), 300)


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
