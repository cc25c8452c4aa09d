"""Checking a foreign state dict against the module it is meant for, before ``load_state_dict``.

PyTorch's own strict-load error lists every missing and unexpected key over many lines; a user holding
the wrong file needs one line that names the first difference of each kind, so they can tell "another
architecture" (many keys differ) from "another size of the same one" (shapes differ) at a glance.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from hardctl.errors import UsageError

_SHOWN = 2  # names quoted per kind of difference; the rest are counted


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    more = len(names) - _SHOWN
    return shown + (f" (+{more} more)" if more > 0 else "")


def state_differences(model: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    """The differences between ``model.state_dict()`` and ``state`` as short phrases, in the order
    missing keys, unexpected keys, shape mismatches (model order, then file order); empty when they fit."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} is {tuple(state[k].shape)} not {expected[k]}"
              for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    parts = []
    if missing:
        parts.append(f"missing {_listing(missing)}")
    if unexpected:
        parts.append(f"unexpected {_listing(unexpected)}")
    if shapes:
        parts.append(f"shape of {_listing(shapes)}")
    return parts


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str = "the state dict",
                     expected: str | None = None, hint: str | None = None) -> None:
    """Raise a one-line :class:`UsageError` unless ``state`` has exactly the keys and shapes of
    ``model.state_dict()``: "SOURCE is not EXPECTED: missing …; unexpected …; shape of K is (…) not (…)".
    ``expected`` names what the model is (default: its class name)."""
    parts = state_differences(model, state)
    if parts:
        what = expected or f"a {type(model).__name__}"
        raise UsageError(f"{source} is not {what}: " + "; ".join(parts), hint=hint)
