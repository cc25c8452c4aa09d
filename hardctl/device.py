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
    """``auto`` is CUDA when present, else the CPU; an explicit CUDA device must exist."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but CUDA is not available", hint="use --device cpu")
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
