"""The augmentor contract: a batched, differentiable image-to-image ``nn.Module``.

An augmentor maps pixels in ``[0, 1]`` (``B×C×H×W``) to pixels in ``[0, 1]`` of the same shape, and
gradients flow from its output back to its parameters. As in kornia, drawing the random parameters
(:meth:`Augmentor.sample_params`, reparameterised so they stay differentiable) is separate from
applying them (:meth:`Augmentor.apply_transform`, kornia's name; ``apply`` stays torch's
``nn.Module.apply(fn)``), which lets ``visualize`` replay one draw under several pool snapshots.

A plugin declares, as class attributes next to the code:

* ``options``: the constructor's keyword options, each an :class:`Option` with default, type, range and help;
* ``teacher_term``: whether the augmentor uses the teacher–teacher invariance loss (then HARD trains it
  in phases that alternate with the student) or not (then it is trained jointly with the student). The
  registration may override it (``register(..., teacher_term=False)``); the built module then carries
  the registration's value as an instance attribute, so ``augmentor.teacher_term`` is always the truth;
* ``hard_defaults``: the switching thresholds, λ's, learning rate and batch size the paper uses for it;

and may override :meth:`Augmentor.snapshot` / :meth:`Augmentor.forward_with` when its pool state is more
(or less) than its trainable parameters.

An augmentor that combines several images of the batch (HARD-Mix) may also implement
:meth:`Augmentor.sources`: for a batch and a draw, ``{"index": B×G LongTensor, "weight": B×G tensor}``, the
batch indices of the images each output was made from (column 0 the image itself) and how much of each
went into it (rows summing to 1). ``hardctl visualize`` then shows the sources next to the mixes and
their weights; the default ``None`` keeps the plain one-column-per-snapshot grid.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from torch import nn

from hardctl.values import parse_value

__all__ = ["Option", "HardDefaults", "Augmentor"]


@dataclass(frozen=True)
class HardDefaults:
    """Per-augmentor defaults of the HARD engine (appendix A of the paper; affine values here)."""

    l_min: float = 0.05  # student -> augmentor once the student's error falls below this ...
    l_max: float = 0.40  # augmentor -> student once it rises above this ...
    patience: int = 5  # ... for this many consecutive iterations
    lambda_s: float = 1.0  # weight of the student–teacher term the augmentor maximises
    lambda_t: float = 1.0  # weight of the teacher–teacher term it minimises
    lr: float = 0.05  # augmentor learning rate (Adam)
    batch_size: int = 128  # images per augmentor step

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


@dataclass(frozen=True)
class Option:
    """One constructor option of an augmentor, validated before the augmentor is built."""

    name: str
    type: type  # float | int | bool | str
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None
    min_inclusive: bool = True

    def parse(self, raw: Any, owner: str) -> Any:
        """``raw`` (a string from the command line or a TOML value) checked and converted, or UsageError."""
        value = parse_value(raw, self.type, f"{owner} option {self.name!r}")
        where = f"{owner} option {self.name}={value!r}"
        from hardctl.errors import UsageError

        if self.choices is not None and value not in self.choices:
            raise UsageError(f"{where} is not one of {', '.join(self.choices)}")
        if self.min is not None and (value < self.min or (value == self.min and not self.min_inclusive)):
            bound = ">=" if self.min_inclusive else ">"
            raise UsageError(f"{where} is out of range", hint=f"it must be {bound} {self.min}")
        if self.max is not None and value > self.max:
            raise UsageError(f"{where} is out of range", hint=f"it must be <= {self.max}")
        return value

    def describe(self) -> str:
        bounds = ""
        if self.choices:
            bounds = f" ({'|'.join(self.choices)})"
        elif self.min is not None or self.max is not None:
            bounds = f" (range {self.min if self.min is not None else '-inf'}..{self.max if self.max is not None else 'inf'})"
        return f"{self.name}={self.default!r}{bounds}: {self.help}"


class Augmentor(nn.Module):
    """Base class of learned augmentors. Subclasses implement ``sample_params`` and ``apply_transform``."""

    options: ClassVar[tuple[Option, ...]] = ()
    teacher_term: ClassVar[bool] = True
    hard_defaults: ClassVar[HardDefaults] = HardDefaults()

    def __init__(self, *, in_chans: int, img_size: tuple[int, int]):
        super().__init__()
        self.in_chans, self.img_size = in_chans, tuple(img_size)

    # -- the two halves of a forward pass ------------------------------------------------------
    def sample_params(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Draw this batch's random parameters (differentiable w.r.t. the module's parameters)."""
        return {}

    def apply_transform(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Augment ``x`` with the draw ``params``: deterministic given them (``forward_with`` replays draws)."""
        raise NotImplementedError(f"{type(self).__name__} implements neither apply_transform nor forward")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply_transform(x, self.sample_params(x))

    def sources(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """For augmentors that mix images of the batch: ``{"index": B×G long, "weight": B×G}``, each
        output's source images (batch indices, column 0 the image itself) and their mean weights under the
        draw ``params``. ``None`` (the default): every output is made from its own image only."""
        return None

    # -- pool snapshots ------------------------------------------------------------------------
    def snapshot(self) -> dict[str, torch.Tensor]:
        """The state a pool entry keeps: the trainable parameters (frozen pretrained weights are shared)."""
        return {name: p.detach().clone() for name, p in self.named_parameters() if p.requires_grad}

    def restore(self, snapshot: dict[str, torch.Tensor]) -> None:
        """Load a :meth:`snapshot` back into the module."""
        missing = set(self.snapshot()) - set(snapshot)
        if missing:
            raise KeyError(f"snapshot lacks {sorted(missing)}")
        with torch.no_grad():
            own = dict(self.named_parameters())
            for name, value in snapshot.items():
                own[name].copy_(value.to(own[name].device, own[name].dtype))

    def forward_with(self, snapshot: dict[str, torch.Tensor], x: torch.Tensor,
                     params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Augment ``x`` as the augmentor saved in ``snapshot`` would, without touching this module.

        ``params`` replays a given draw instead of sampling a new one (``visualize`` uses it).
        """
        def run(inp):
            return self.apply_transform(inp, params if params is not None else self.sample_params(inp))

        with _swapped_parameters(self, snapshot):
            return run(x)

    def sources_with(self, snapshot: dict[str, torch.Tensor], x: torch.Tensor,
                     params: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor] | None:
        """:meth:`sources` as the augmentor saved in ``snapshot`` would report them (``params`` as in
        :meth:`forward_with`: without it a draw is sampled, so seed the RNG as for ``forward_with``)."""
        if type(self).sources is Augmentor.sources:  # nothing to report: do not draw (keeps the RNG untouched)
            return None
        with _swapped_parameters(self, snapshot):
            return self.sources(x, params if params is not None else self.sample_params(x))

    def extra_repr(self) -> str:
        return f"in_chans={self.in_chans}, img_size={self.img_size}"


class _swapped_parameters:
    """Temporarily point this module's parameters at a snapshot's tensors (no copies, no autograd)."""

    def __init__(self, module: nn.Module, snapshot: dict[str, torch.Tensor]):
        self.module, self.snapshot, self.saved = module, snapshot, {}

    def __enter__(self):
        for name, value in self.snapshot.items():
            owner, attr = _owner(self.module, name)
            self.saved[name] = owner._parameters[attr]
            owner._parameters[attr] = value.to(self.saved[name].device)
        return self

    def __exit__(self, *exc):
        for name, param in self.saved.items():
            owner, attr = _owner(self.module, name)
            owner._parameters[attr] = param
        return False


def _owner(module: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    *path, attr = dotted.split(".")
    for part in path:
        module = getattr(module, part)
    return module, attr
