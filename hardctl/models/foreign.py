"""Foreign weights files: ``NAME:FILE``, a timm architecture with someone else's weights.

``NAME`` is a timm name or alias; ``FILE`` is a ``.pth``, ``.pth.tar``, ``.pt`` or ``.safetensors`` file
written by another project (e.g. ``resnet50:~/weights/deepaugment_and_augmix.pth.tar``). Reading it
unwraps training checkpoints (``state_dict``/``model`` entries), strips the ``module.`` and ``_orig_mod.``
prefixes of wrappers, takes the head and input channels from the tensors and loads the weights strictly
into the model that :func:`hardctl.models.create_model` builds. :func:`hardctl.models.load_model` sends
such specs here; hardctl's own ``.safetensors`` files (with :class:`~hardctl.models.ModelInfo` metadata)
are read and written in :mod:`hardctl.models.factory`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

import timm
import torch
from torch import nn

from hardctl.errors import CheckpointError, ModelError, UsageError, shorten
from hardctl.models.factory import TIMM_SOURCE_PREFIXES, ModelInfo, create_model, resolve_name, state_dict_mismatch

__all__ = ["load_named_file", "split_named_file"]


def split_named_file(spec: str) -> tuple[str, str] | None:
    """``"resnet50:~/w.pth.tar"`` -> ``("resnet50", "~/w.pth.tar")``; ``None`` for specs of any other form.

    The part before the first ``:`` must look like a model name (no path separator, at least two
    characters, so that a Windows drive ``C:`` stays a path); timm's ``hf-hub:``-style sources are not files.
    """
    if spec.startswith(TIMM_SOURCE_PREFIXES) or ":" not in spec:
        return None
    name, _, file = spec.partition(":")
    if len(name) < 2 or not file or any(c in name for c in "/\\~") or name.startswith("."):
        return None
    return name, file


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a foreign weights file: ``.safetensors``, or ``torch.save`` output read with
    ``weights_only=True`` (nothing but tensors and plain containers is unpickled).

    timm's ``load_state_dict`` takes the tensors from a ``state_dict`` or ``model`` entry when the file
    wraps them (training checkpoints such as ``.pth.tar``; an EMA copy is not preferred) and strips the
    ``module.`` prefix of (Distributed)DataParallel; the ``_orig_mod.`` prefix of ``torch.compile`` goes too.
    """
    import zipfile

    from timm.models import load_state_dict as timm_load_state_dict

    with open(path, "rb") as handle:  # torch.save writes a zip, old versions a pickle (protocol 2+: 0x80)
        head = handle.read(8)
    is_safetensors = path.suffix == ".safetensors"
    if not is_safetensors and not zipfile.is_zipfile(path) and not head.startswith(b"\x80"):
        raise CheckpointError(f"cannot read weights file {path}: it is neither a torch.save file (.pth/.pt/.pth.tar) nor "
                              ".safetensors",
                              hint="NAME:FILE takes a saved state dict, e.g. resnet50:weights.pth.tar")
    try:
        state = timm_load_state_dict(str(path), use_ema=False, device="cpu", weights_only=True)
    except Exception as e:  # pickle, zip, safetensors and torch errors alike: the file cannot be read safely
        lines = str(e).strip().splitlines()
        raise CheckpointError(
            f"cannot read weights file {path}: {type(e).__name__}: {shorten(lines[0]) if lines else 'no details'}",
            hint="save a plain state dict with torch.save(model.state_dict(), FILE) or as .safetensors",
        ) from None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"weights file {path} holds no state dict of tensors (nor one under 'state_dict' or 'model')",
            hint="save a plain state dict with torch.save(model.state_dict(), FILE) or as .safetensors",
        )
    return {k.removeprefix("_orig_mod."): v for k, v in state.items()}


def _leading_dim(state: dict[str, torch.Tensor], layer: str | Sequence[str] | None, dim: int) -> int | None:
    """Size ``dim`` of ``layer.weight`` in ``state`` (``None`` when absent): classes of a head, channels of a stem."""
    if isinstance(layer, (tuple, list)):
        layer = layer[0] if layer else None
    weight = state.get(f"{layer}.weight") if layer else None
    if weight is None or weight.ndim <= dim:
        return None
    return int(weight.shape[dim])


def load_named_file(
    spec: str,
    name: str,
    file: str,
    num_classes: int | None,
    in_chans: int | None,
    img_size: int | Sequence[int] | None,
    pretrained: bool,
) -> tuple[nn.Module, ModelInfo]:
    """``NAME:FILE``: build timm's ``NAME`` and load ``FILE``'s weights into it, strictly.

    The head and the input channels are those of the file (read from the cfg's ``classifier`` and
    ``first_conv`` layers), so a head trained for other classes builds, and callers such as
    :func:`~hardctl.models.check_compatible` report the mismatch with the data in one line. The input
    size and the normalisation are the requested size and the architecture's cfg statistics.
    """
    try:
        arch = resolve_name(name)
    except ModelError as e:
        raise ModelError(f"{spec} is no file and {e.message}",
                         hint="the form is NAME:FILE with a timm name or alias, e.g. resnet50:weights.pth.tar") from None
    path = Path(file).expanduser()
    if pretrained:
        raise UsageError(f"model spec {spec} already names its weights file", hint="drop --pretrained")
    if not path.is_file():
        raise ModelError(
            f"no such weights file {path} (model spec {spec})",
            hint="check the path; the form is NAME:FILE, e.g. resnet50:~/weights/deepaugment_and_augmix.pth.tar",
        )
    state = _read_state_dict(path)
    cfg = timm.models.get_pretrained_cfg(arch)
    classes = _leading_dim(state, getattr(cfg, "classifier", None), 0) or num_classes
    chans = _leading_dim(state, getattr(cfg, "first_conv", None), 1) or in_chans
    if img_size is None:
        img_size = tuple(cfg.input_size[-2:]) if cfg is not None and cfg.input_size else (224, 224)
    if classes is None or chans is None:
        raise ValueError(f"loading {spec!r} needs num_classes and in_chans: the file does not tell them")
    model, info = create_model(name, num_classes=classes, in_chans=chans, img_size=img_size)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelError(
            f"weights file {path} does not fit architecture {arch!r}: {state_dict_mismatch(e)}",
            hint="NAME in NAME:FILE must be the timm architecture the weights were trained as",
        ) from None
    return model, replace(info, source=f"file:{path}")
