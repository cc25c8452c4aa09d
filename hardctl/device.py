"""Where a run computes and at which precision: device selection, AMP selection and the autocast context.

One module for the three so that ``train``/``distill``, ``eval`` and the recipes agree on what ``--device auto``
and ``--amp auto`` mean. It depends on torch and :mod:`hardctl.errors` only.
"""

from __future__ import annotations

import contextlib

import torch

from hardctl.errors import UsageError

__all__ = ["select_device", "select_amp", "autocast_for", "AMP_MODES"]

AMP_MODES = ("auto", "bf16", "fp16", "off")


def select_device(requested: str) -> torch.device:
    """``auto`` is CUDA when present, else the CPU. Anything else must name a device this machine has, checked
    here, before any work: ``cpu``, ``cuda`` or ``cuda:N`` with ``N`` below the number of GPUs."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    hint = "use --device auto, cpu, cuda or cuda:N"
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError, TypeError):
        raise UsageError(f"--device {requested!r} is not a device name", hint=hint) from None
    if device.type == "cpu":
        if device.index not in (None, 0):
            raise UsageError(f"--device {requested} does not exist: the CPU is one device", hint="use --device cpu")
        return torch.device("cpu")
    if device.type != "cuda":
        raise UsageError(f"--device {requested!r} is not supported (hardctl trains on cpu or cuda)", hint=hint)
    if not torch.cuda.is_available():
        raise UsageError(f"--device {requested} was asked for but CUDA is not available", hint="use --device cpu")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise UsageError(f"--device {requested} does not exist: this machine has {count} GPU{'s' * (count != 1)}",
                         hint=f"use cuda:0 .. cuda:{count - 1}")
    return device


def select_amp(requested: str, device: torch.device) -> str:
    """``auto`` is bf16 on a CUDA device that supports it and off elsewhere (CPU autocast is slow)."""
    if requested != "auto":
        return requested
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "off"


def autocast_for(device: torch.device, amp: str):
    """The autocast context for ``amp`` in ``{"bf16", "fp16", "off"}`` on ``device``."""
    if amp == "off":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
