"""Building augmentors by name: ``affine``, ``noise``, or compositions such as ``vdvae+affine``.

Names resolve through the plugin registry (:data:`hardctl.plugins.augmentors`), so a composition may mix
built-in and third-party augmentors. Options arrive as ``KEY=VALUE`` strings (or TOML values); in a
composition ``PART.KEY=VALUE`` addresses one part, and a bare ``KEY`` is fine when one part owns it.

A composition's parts train with one optimiser but each at its own learning rate, because their scales differ
by orders of magnitude (a pretrained VAE is wrecked by an affine warp's steps, and at a VAE's rate the warp never
leaves the identity). ``PART.lr`` sets one part's; without it a part takes ``--aug-lr`` when given, else its own
registered HARD default. :func:`resolved_options` records every part's rate, so a resumed run keeps them.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hardctl import plugins
from hardctl.augment.base import Augmentor, HardDefaults, Option
from hardctl.errors import TrainingError, UsageError, did_you_mean

__all__ = ["AugmentorSpec", "Compose", "build_augmentor", "check_module", "check_options", "resolve", "split_name",
           "check_output", "part_learning_rates", "NONE", "PART_LR"]

NONE = "none"  # --augmentor none: plain KD
PART_LR = "lr"  # a composition part's learning rate: a PART.lr option of the composition, not of the part's constructor


@dataclass(frozen=True)
class AugmentorSpec:
    """What the registry knows about one augmentor: its :class:`~hardctl.plugins.AugmentorEntry`, where
    each of ``options``, ``teacher_term`` and ``hard_defaults`` is the ``register`` call's keyword if it gave
    one and the factory's class attribute otherwise. The engine reads these, never the class."""

    name: str
    factory: Any
    help: str
    plugin: str
    options: tuple[Option, ...]
    teacher_term: bool
    hard_defaults: HardDefaults

    @classmethod
    def from_entry(cls, entry: plugins.AugmentorEntry) -> "AugmentorSpec":
        return cls(name=entry.name, factory=entry.obj, help=entry.help, plugin=entry.plugin,
                   options=tuple(entry.options), teacher_term=entry.teacher_term,
                   hard_defaults=entry.hard_defaults if entry.hard_defaults is not None else HardDefaults())

    def who(self) -> str:
        return f"augmentor {self.name!r} (plugin {self.plugin})"


def split_name(name: str) -> list[str]:
    parts = [p.strip() for p in name.split("+")]
    if not name.strip() or any(not p for p in parts):
        raise UsageError(f"--augmentor {name!r} is not a valid name", hint="e.g. affine, noise or vdvae+affine")
    return parts


def resolve(name: str) -> list[AugmentorSpec]:
    """The specs of ``name``'s parts (unknown names get the installed list and a did-you-mean)."""
    return [AugmentorSpec.from_entry(plugins.augmentors.get(part)) for part in split_name(name)]


def _part_lr_option(spec: AugmentorSpec) -> Option:
    return Option(PART_LR, float, spec.hard_defaults.lr, "this part's augmentor learning rate (Adam) in a composition",
                  min=0.0, min_inclusive=False)


def _options_of(specs: list[AugmentorSpec], i: int) -> tuple[Option, ...]:
    """Part ``i``'s options; in a composition also its learning rate (``PART.lr``)."""
    return specs[i].options + ((_part_lr_option(specs[i]),) if len(specs) > 1 else ())


def _parse_options(specs: list[AugmentorSpec], raw: dict[str, Any]) -> list[dict[str, Any]]:
    per_part: list[dict[str, Any]] = [{} for _ in specs]
    names = [s.name for s in specs]
    if len(specs) == 1 and PART_LR in raw and not any(o.name == PART_LR for o in specs[0].options):
        raise UsageError(f"augmentor option {PART_LR!r} is not an option of {names[0]!r}",
                         hint=f"set its learning rate with --aug-lr (PART.{PART_LR} is for the parts of a composition)")
    for key, value in raw.items():
        if "." in key:
            part, option = key.split(".", 1)
            if part not in names:
                raise UsageError(f"augmentor option {key!r} names no part of {'+'.join(names)}{did_you_mean(part, names)}")
            targets = [i for i, s in enumerate(specs) if s.name == part]
        else:
            option = key
            targets = [i for i in range(len(specs)) if any(o.name == option for o in _options_of(specs, i))]
            if len(targets) > 1:
                raise UsageError(f"augmentor option {key!r} is ambiguous in {'+'.join(names)}",
                                 hint=f"write it as PART.{key}, e.g. {names[targets[0]]}.{key}")
            if not targets:
                known = sorted({o.name for i in range(len(specs)) for o in _options_of(specs, i)})
                raise UsageError(f"unknown augmentor option {key!r} for {'+'.join(names)}{did_you_mean(key, known)}",
                                 hint=f"its options: {', '.join(known) or 'none'}")
        for i in targets:
            by_name = {o.name: o for o in _options_of(specs, i)}
            if option not in by_name:
                raise UsageError(f"unknown option {option!r} for augmentor {specs[i].name!r}"
                                 f"{did_you_mean(option, list(by_name))}",
                                 hint=f"its options: {', '.join(by_name) or 'none'}")
            per_part[i][option] = by_name[option].parse(value, f"augmentor {specs[i].name!r}")
    return per_part


def resolved_options(name: str, raw: dict[str, Any], *, aug_lr: float | None = None) -> dict[str, Any]:
    """Every option of ``name`` with its value (defaults filled in), keyed as ``PART.KEY`` for compositions.

    A composition's entries include each part's learning rate ``PART.lr``: the one given, else ``aug_lr``
    (``--aug-lr``, when set), else the part's registered HARD default."""
    specs = resolve(name)
    chosen = _parse_options(specs, raw)
    out: dict[str, Any] = {}
    for i, (spec, values) in enumerate(zip(specs, chosen)):
        for option in _options_of(specs, i):
            key = option.name if len(specs) == 1 else f"{spec.name}.{option.name}"
            default = aug_lr if option.name == PART_LR and aug_lr is not None else option.default
            out[key] = values.get(option.name, default)
    return out


def _trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def part_learning_rates(augmentor: nn.Module, options: dict[str, Any], aug_lr: float) -> list[tuple[str, list, float]]:
    """The trainable parameters of ``augmentor`` grouped with their learning rates, as (part, parameters, lr):
    one group per part of a composition at its resolved ``PART.lr``, else one group (part ``""``) at ``aug_lr``.
    A composition run of an older version recorded no ``PART.lr``: it keeps its single group (and so its
    checkpointed optimiser state). Parts with nothing to train are left out."""
    keys = [f"{name}.{PART_LR}" for name in getattr(augmentor, "part_names", ())]
    if not keys or not all(key in options for key in keys):
        return [("", _trainable(augmentor), aug_lr)]
    groups = [(name, _trainable(part), float(options[key]))
              for part, name, key in zip(augmentor.parts, augmentor.part_names, keys)]
    return [group for group in groups if group[1]]


def check_options(spec: AugmentorSpec) -> None:
    """Refuse ``Option`` declarations that disagree with the factory's signature (a plugin bug).

    The defaults are written twice, in ``options`` (what ``--aug-opt`` validates and the run records) and
    in the constructor's keywords (what a direct ``Class(...)`` call uses); :func:`build_augmentor` passes
    every option explicitly, so the ``Option`` is what a run uses, and this check keeps a direct call from
    silently differing. Every option must also name a keyword the factory accepts (or it takes ``**kw``).
    """
    try:
        signature = inspect.signature(spec.factory)
    except (TypeError, ValueError):  # a C callable without a signature: nothing to compare
        return
    keywords = {name: p for name, p in signature.parameters.items()
                if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    for option in spec.options:
        param = keywords.get(option.name)
        if param is None:
            if takes_any:
                continue
            raise TrainingError(f"{spec.who()} declares option {option.name!r}, which its constructor does not take",
                                hint=f"its keywords: {', '.join(k for k in keywords if k not in ('in_chans', 'img_size'))}")
        if param.default is not inspect.Parameter.empty and param.default != option.default:
            raise TrainingError(f"{spec.who()} declares option {option.name}={option.default!r} but its constructor's "
                                f"default is {param.default!r}", hint="make the Option and the keyword default agree")


def _old_style_apply(cls: type) -> type | None:
    """The class that still defines the pre-rename ``apply(self, x, params)``, if any (torch's
    ``Module.apply(self, fn)`` takes one argument, so a two-argument ``apply`` is the old contract)."""
    for klass in cls.__mro__:
        if klass is Augmentor:
            return None
        method = klass.__dict__.get("apply")
        if callable(method):
            try:
                positional = [p for p in inspect.signature(method).parameters.values()
                              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            except (TypeError, ValueError):
                continue
            if len(positional) >= 3:  # self, x, params
                return klass
    return None


def check_module(spec: AugmentorSpec, module: Any) -> None:
    """Refuse a factory result that cannot keep the contract the engine and the pool rely on."""
    if not isinstance(module, Augmentor):
        raise TrainingError(f"{spec.who()} built a {type(module).__name__}, not a hardctl.augment.Augmentor",
                            hint="subclass hardctl.augment.Augmentor: the pool calls snapshot() and forward_with()")
    old = _old_style_apply(type(module))
    if old is not None:
        raise TrainingError(f"{spec.who()} defines {old.__name__}.apply(x, params), which hardctl now calls "
                            f"apply_transform", hint="rename it to apply_transform; apply is torch's nn.Module.apply(fn)")


def build_augmentor(name: str, raw_options: dict[str, Any] | None = None, *, in_chans: int,
                    img_size: tuple[int, int]) -> Augmentor:
    """The augmentor ``name`` (or composition) for images of ``in_chans`` × ``img_size``.

    Each built part carries its registration's ``teacher_term`` and ``hard_defaults`` as instance
    attributes (and ``hardctl_spec``, the whole :class:`AugmentorSpec`), so code that holds only the module
    reads what the plugin registered, not the class attribute the registration may have overridden.
    """
    specs = resolve(name)
    chosen = _parse_options(specs, dict(raw_options or {}))
    parts = []
    for spec, options in zip(specs, chosen):
        check_options(spec)
        values = {o.name: options.get(o.name, o.default) for o in spec.options}  # the Option is the default
        try:
            module = spec.factory(in_chans=in_chans, img_size=tuple(img_size), **values)
        except (UsageError, TrainingError):
            raise
        except Exception as exc:  # a plugin's constructor failed: name the plugin, keep one line
            raise TrainingError(f"{spec.who()} could not be built: {type(exc).__name__}: {exc}") from exc
        check_module(spec, module)
        module.hardctl_spec = spec  # remembered for error messages and provenance
        module.teacher_term = spec.teacher_term  # instance attributes shadow the class's: the registration wins
        module.hard_defaults = spec.hard_defaults
        parts.append(module)
    if len(parts) == 1:
        return parts[0]
    return Compose(parts, specs, in_chans=in_chans, img_size=img_size)


def _part(flat: dict[str, Any], index: int) -> dict[str, Any]:
    """Part ``index``'s share of a composition's flat ``parts.I.KEY`` dict (a snapshot or a draw)."""
    prefix = f"parts.{index}."
    return {key[len(prefix):]: value for key, value in flat.items() if key.startswith(prefix)}


class Compose(Augmentor):
    """Parts applied in order (``vdvae+affine``: the VAE first, the warp on its output), trained together.

    It uses the teacher–teacher term (and phases) only if every part does; its HARD defaults are the
    first part's, so ``vdvae+affine`` keeps the VAE's thresholds, while each part trains at its own learning
    rate (``PART.lr``, see :func:`part_learning_rates`). Snapshots and draws
    are flat dicts keyed ``parts.I.KEY`` (each part's own snapshot / draw under a prefix), so the pool,
    safetensors and ``forward_with`` treat a composition like any augmentor.
    """

    def __init__(self, parts: list[Augmentor], specs: list[AugmentorSpec], *, in_chans: int, img_size):
        super().__init__(in_chans=in_chans, img_size=img_size)
        self.parts = nn.ModuleList(parts)
        self.part_names = [s.name for s in specs]
        self.teacher_term = all(s.teacher_term for s in specs)  # instance attribute shadows the class one
        self.hard_defaults = specs[0].hard_defaults

    def sample_params(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each part's draw on that part's input: a part may look at more than the shape (an encoder), so
        the chain runs up to the last part to produce the intermediate images."""
        params: dict[str, torch.Tensor] = {}
        for i, part in enumerate(self.parts):
            own = part.sample_params(x)
            params.update({f"parts.{i}.{key}": value for key, value in own.items()})
            if i < len(self.parts) - 1:
                x = part.apply_transform(x, own)
        return params

    def apply_transform(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        for i, part in enumerate(self.parts):
            x = part.apply_transform(x, _part(params, i))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The same draws, in the same RNG order, as apply_transform(x, sample_params(x)), without running
        # the parts twice; and a part that overrides forward() (randomness it cannot split) still works.
        for part in self.parts:
            x = part(x)
        return x

    def snapshot(self) -> dict[str, torch.Tensor]:
        """The parts' own snapshots (a part's buffers included if its snapshot keeps them)."""
        return {f"parts.{i}.{key}": value for i, part in enumerate(self.parts) for key, value in part.snapshot().items()}

    def restore(self, snapshot: dict[str, torch.Tensor]) -> None:
        for i, part in enumerate(self.parts):
            part.restore(_part(snapshot, i))

    def forward_with(self, snapshot, x, params=None):
        for i, part in enumerate(self.parts):
            x = part.forward_with(_part(snapshot, i), x, None if params is None else _part(params, i))
        return x


def spec_of(augmentor: nn.Module) -> str:
    spec = getattr(augmentor, "hardctl_spec", None)
    if spec is None:
        return f"augmentor {type(augmentor).__name__}"
    return spec.who()


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
