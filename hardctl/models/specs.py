"""Model specs -> loaded models: what a user types after ``--teacher``/``--student``/``--model``.

A spec is a timm name (``resnet18``), a friendly alias (``mnist_cnn``), a ``.safetensors`` file written by
hardctl, a hardctl run directory, or ``NAME:FILE``, a timm architecture with weights from someone else's
file (:mod:`hardctl.models.foreign`). :func:`load_model` turns any of them into ``(module, ModelInfo)``;
:func:`load_for_data` also checks that the model fits a data set (classes, channels, input size).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from hardctl.errors import ModelError, UsageError, shorten
from hardctl.models.factory import (TIMM_SOURCE_PREFIXES, WEIGHTS_NAME, InputNormalize, ModelInfo, create_model,
                                    load_weights_file, resolve_name)
from hardctl.models.foreign import load_named_file, split_named_file

__all__ = ["check_accepts", "check_compatible", "load_for_data", "load_model"]


def _looks_like_path(spec: str) -> bool:
    if spec.startswith(TIMM_SOURCE_PREFIXES):
        return False
    return "/" in spec or os.sep in spec or spec.endswith(".safetensors") or spec.startswith(("~", "."))


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
    text = os.fspath(spec)
    path = Path(text).expanduser()
    named_file = split_named_file(text)
    if named_file is not None and not path.exists():  # an existing file whose name has a ":" stays a file
        return load_named_file(text, *named_file, num_classes, in_chans, img_size, pretrained)
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
        return load_weights_file(weights, f"run:{path}")
    if path.is_file():
        return load_weights_file(path, f"file:{path}")
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
        first = shorten(str(exc))
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
