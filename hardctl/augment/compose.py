"""Building augmentors by name: ``affine``, ``noise``, or compositions such as ``vdvae+affine``.

Names resolve through the plugin registry (:data:`hardctl.plugins.augmentors`), so a composition may mix
built-in and third-party augmentors. Options arrive as ``KEY=VALUE`` strings (or TOML values); in a
composition ``PART.KEY=VALUE`` addresses one part, and a bare ``KEY`` is fine when one part owns it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hardctl import plugins
from hardctl.augment.base import Augmentor, HardDefaults, Option
from hardctl.errors import TrainingError, UsageError, did_you_mean

__all__ = ["AugmentorSpec", "Compose", "build_augmentor", "resolve", "split_name", "check_output", "NONE"]

NONE = "none"  # --augmentor none: plain KD


@dataclass(frozen=True)
class AugmentorSpec:
    """What the registry knows about one augmentor, read from its class (or the ``register`` call)."""

    name: str
    factory: Any
    help: str
    plugin: str
    options: tuple[Option, ...]
    teacher_term: bool
    hard_defaults: HardDefaults

    @classmethod
    def from_entry(cls, entry: plugins.Entry) -> "AugmentorSpec":
        factory, meta = entry.obj, entry.meta
        return cls(
            name=entry.name,
            factory=factory,
            help=entry.help,
            plugin=entry.plugin,
            options=tuple(meta.get("options", getattr(factory, "options", ()))),
            teacher_term=bool(meta.get("teacher_term", getattr(factory, "teacher_term", True))),
            hard_defaults=meta.get("hard_defaults", getattr(factory, "hard_defaults", HardDefaults())),
        )


def split_name(name: str) -> list[str]:
    parts = [p.strip() for p in name.split("+")]
    if not name.strip() or any(not p for p in parts):
        raise UsageError(f"--augmentor {name!r} is not a valid name", hint="e.g. affine, noise or vdvae+affine")
    return parts


def resolve(name: str) -> list[AugmentorSpec]:
    """The specs of ``name``'s parts (unknown names get the installed list and a did-you-mean)."""
    return [AugmentorSpec.from_entry(plugins.augmentors.get(part)) for part in split_name(name)]


def _parse_options(specs: list[AugmentorSpec], raw: dict[str, Any]) -> list[dict[str, Any]]:
    per_part: list[dict[str, Any]] = [{} for _ in specs]
    names = [s.name for s in specs]
    for key, value in raw.items():
        if "." in key:
            part, option = key.split(".", 1)
            if part not in names:
                raise UsageError(f"augmentor option {key!r} names no part of {'+'.join(names)}{did_you_mean(part, names)}")
            targets = [i for i, s in enumerate(specs) if s.name == part]
        else:
            option = key
            targets = [i for i, s in enumerate(specs) if any(o.name == option for o in s.options)]
            if len(targets) > 1:
                raise UsageError(f"augmentor option {key!r} is ambiguous in {'+'.join(names)}",
                                 hint=f"write it as PART.{key}, e.g. {names[targets[0]]}.{key}")
            if not targets:
                known = sorted({o.name for s in specs for o in s.options})
                raise UsageError(f"unknown augmentor option {key!r} for {'+'.join(names)}{did_you_mean(key, known)}",
                                 hint=f"its options: {', '.join(known) or 'none'}")
        for i in targets:
            by_name = {o.name: o for o in specs[i].options}
            if option not in by_name:
                raise UsageError(f"unknown option {option!r} for augmentor {specs[i].name!r}"
                                 f"{did_you_mean(option, list(by_name))}",
                                 hint=f"its options: {', '.join(by_name) or 'none'}")
            per_part[i][option] = by_name[option].parse(value, f"augmentor {specs[i].name!r}")
    return per_part


def resolved_options(name: str, raw: dict[str, Any]) -> dict[str, Any]:
    """Every option of ``name`` with its value (defaults filled in), keyed as ``PART.KEY`` for compositions."""
    specs = resolve(name)
    chosen = _parse_options(specs, raw)
    out: dict[str, Any] = {}
    for spec, values in zip(specs, chosen):
        for option in spec.options:
            key = option.name if len(specs) == 1 else f"{spec.name}.{option.name}"
            out[key] = values.get(option.name, option.default)
    return out


def build_augmentor(name: str, raw_options: dict[str, Any] | None = None, *, in_chans: int,
                    img_size: tuple[int, int]) -> Augmentor:
    """The augmentor ``name`` (or composition) for images of ``in_chans`` × ``img_size``."""
    specs = resolve(name)
    chosen = _parse_options(specs, dict(raw_options or {}))
    parts = []
    for spec, options in zip(specs, chosen):
        try:
            module = spec.factory(in_chans=in_chans, img_size=tuple(img_size), **options)
        except (UsageError, TrainingError):
            raise
        except Exception as exc:  # a plugin's constructor failed: name the plugin, keep one line
            raise TrainingError(f"augmentor {spec.name!r} (plugin {spec.plugin}) could not be built: "
                                f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(module, nn.Module):
            raise TrainingError(f"augmentor {spec.name!r} (plugin {spec.plugin}) built a "
                                f"{type(module).__name__}, not a torch.nn.Module")
        module.hardctl_spec = spec  # remembered for error messages
        parts.append(module)
    if len(parts) == 1:
        return parts[0]
    return Compose(parts, specs, in_chans=in_chans, img_size=img_size)


class Compose(Augmentor):
    """Parts applied in order (``vdvae+affine``: the VAE first, the warp on its output), trained together.

    It uses the teacher–teacher term (and phases) only if every part does; its HARD defaults are the
    first part's, so ``vdvae+affine`` keeps the VAE's thresholds and learning rate.
    """

    def __init__(self, parts: list[nn.Module], specs: list[AugmentorSpec], *, in_chans: int, img_size):
        super().__init__(in_chans=in_chans, img_size=img_size)
        self.parts = nn.ModuleList(parts)
        self.part_names = [s.name for s in specs]
        self.teacher_term = all(s.teacher_term for s in specs)  # instance attribute shadows the class one
        self.hard_defaults = specs[0].hard_defaults

    def sample_params(self, x: torch.Tensor) -> dict[str, Any]:
        raise RuntimeError("Compose samples each part's parameters on that part's input; call forward()")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for part in self.parts:
            x = part(x)
        return x

    def forward_with(self, snapshot, x, params=None):
        for i, part in enumerate(self.parts):
            prefix = f"parts.{i}."
            own = {k[len(prefix):]: v for k, v in snapshot.items() if k.startswith(prefix)}
            x = part.forward_with(own, x) if hasattr(part, "forward_with") else part(x)
        return x


def spec_of(augmentor: nn.Module) -> str:
    spec = getattr(augmentor, "hardctl_spec", None)
    if spec is None:
        return f"augmentor {type(augmentor).__name__}"
    return f"augmentor {spec.name!r} (plugin {spec.plugin})"


def check_output(augmentor: nn.Module, images: torch.Tensor, out: torch.Tensor, *, tolerance: float = 1e-3) -> None:
    """Reject an augmentor whose output is not an image batch like its input (run once, at the first step)."""
    parts = list(augmentor.parts) if isinstance(augmentor, Compose) else [augmentor]
    who = " + ".join(spec_of(p) for p in parts)
    if not isinstance(out, torch.Tensor):
        raise TrainingError(f"{who} returned {type(out).__name__}, not a tensor",
                            hint="an augmentor maps a B×C×H×W batch to a batch of the same shape")
    if out.shape != images.shape:
        raise TrainingError(f"{who} changed the batch shape from {tuple(images.shape)} to {tuple(out.shape)}",
                            hint="an augmentor must return images of its input's shape")
    out = out.detach()
    if not out.is_floating_point() or not torch.isfinite(out).all():
        raise TrainingError(f"{who} returned non-finite or non-float pixels")
    low, high = float(out.min()), float(out.max())
    if low < -tolerance or high > 1 + tolerance:
        raise TrainingError(f"{who} returned pixels in [{low:.3g}, {high:.3g}], outside the input range [0, 1]",
                            hint="clamp the output to [0, 1] (pixels are normalised inside the models)")
