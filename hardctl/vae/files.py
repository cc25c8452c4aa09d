"""The hardctl VAE file: a model's weights as safetensors, with what is needed to rebuild it in the metadata.

One metadata key, ``hardctl_vae``, holds JSON::

    {"format": 1, "arch": "vdvae" | "rqvae", "config": {...}, "normalisation": "...",
     "image_size": S, "channels": C, "source": "...", "hardctl_version": "...", "aliases": {...},
     "extra": {...}}

``config`` is the architecture's ``to_dict()``, so :func:`load_vae` builds exactly the recorded model and
loads it strictly. ``normalisation`` says in words what the model does to [0, 1] images inside (each
architecture has its own; callers always pass [0, 1]). ``aliases`` exists because safetensors refuses
tensors that share storage, and an RQ-VAE with a shared codebook has the same tensors under every depth's
keys (``quantizer.codebooks.D.*``): each such tensor is stored once and its other names are mapped to the
stored one, so the reloaded state dict has every key the model expects and the strict load still checks
them all. Files are written atomically; an official checkpoint becomes one with ``hardctl vae convert``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from hardctl.atomic import atomic_path, os_reason
from hardctl.errors import UsageError, shorten
from hardctl.vae.archs import arch_of, config_from
from hardctl.vae.statecheck import check_state_dict

__all__ = ["FORMAT", "METADATA_KEY", "load_vae", "read_vae_metadata", "save_vae", "vae_metadata"]

FORMAT = 1
METADATA_KEY = "hardctl_vae"


def _split_aliases(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors to store (each storage once) and ``{alias: stored key}`` for the names left out. Two names
    are aliases when they are the same view of one storage; a partial overlap is stored as a copy."""
    stored: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    storages: set[int] = set()
    for key, value in state.items():
        value = value.detach().cpu()
        ptr = value.untyped_storage().data_ptr() if value.numel() else None
        view = (ptr, value.storage_offset(), tuple(value.shape), value.stride(), value.dtype)
        if ptr is not None and view in seen:
            aliases[key] = seen[view]
            continue
        if ptr is not None and ptr in storages:  # another view of a storage already stored
            value = value.clone()
        elif ptr is not None:
            seen[view] = key
            storages.add(ptr)
        stored[key] = value.contiguous()
    return stored, aliases


def vae_metadata(*, arch: str, config: Mapping[str, Any], source: str, extra: Mapping[str, Any] | None = None,
                 aliases: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ``hardctl_vae`` record for a model of ``arch`` built from ``config`` (a ``to_dict()``)."""
    from hardctl import __version__

    a = arch_of(arch)
    cfg = config_from(arch, dict(config))
    side, channels = a.size(cfg)
    return {"format": FORMAT, "arch": arch, "config": cfg.to_dict(), "normalisation": a.normalisation,
            "image_size": side, "channels": channels, "source": source, "hardctl_version": __version__,
            "aliases": dict(aliases or {}), "extra": dict(extra or {})}


def save_vae(model: nn.Module, path: str | Path, *, arch: str, config: Mapping[str, Any], source: str,
             extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``model``'s state dict and its ``hardctl_vae`` metadata to ``path`` atomically (the old
    file, if any, stays whole until the new one is complete). ``config`` is the model's ``to_dict()``;
    ``source`` says where the weights came from (an official file, a training run)."""
    from safetensors.torch import save_file

    path = Path(path)
    stored, aliases = _split_aliases(model.state_dict())
    meta = vae_metadata(arch=arch, config=config, source=source, extra=extra, aliases=aliases)
    try:
        with atomic_path(path) as tmp:
            save_file(stored, str(tmp), metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)})
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {os_reason(exc) or exc}") from None
    except Exception as exc:  # safetensors reports a full disk as its own error type
        reason = os_reason(exc)
        if reason is None:
            raise
        raise UsageError(f"cannot write {path}: {reason}") from None
    return path


def _not_vae(path: Path) -> UsageError:
    return UsageError(f"{path} is not a hardctl VAE file; convert an official checkpoint with "
                      f"`hardctl vae convert`")


def read_vae_metadata(path: str | Path) -> dict[str, Any]:
    """The ``hardctl_vae`` record of a VAE file, checked, without reading the weights."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        path = path / "vae.safetensors"
    if not path.is_file():
        raise UsageError(f"no VAE file at {path}",
                         hint="train one with `hardctl vae train` or convert one with `hardctl vae convert`")
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get(METADATA_KEY)
    except Exception as exc:  # safetensors raises its own error type for foreign or truncated files
        raise UsageError(f"{path} is not a safetensors file: {shorten(exc)}",
                         hint="a hardctl VAE file comes from `hardctl vae convert` or `hardctl vae train`") from None
    if raw is None:
        raise _not_vae(path)
    try:
        meta = json.loads(raw)
    except ValueError:
        raise UsageError(f"{path} has unreadable {METADATA_KEY} metadata (not JSON); the file is damaged") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise UsageError(f"{path} is a hardctl VAE file of format {found!r}; this hardctl reads format {FORMAT}")
    for key in ("arch", "config"):
        if key not in meta:
            raise UsageError(f"{path}: the {METADATA_KEY} metadata lacks {key!r}; the file is damaged")
    arch_of(meta["arch"])
    meta["path"] = str(path)
    return meta


def load_vae(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The model of a hardctl VAE file (a path, or a run folder holding ``vae.safetensors``), loaded
    strictly, on ``device``, in eval mode; and its metadata. Every failure is one line (exit 2)."""
    from safetensors.torch import load_file

    meta = read_vae_metadata(path)
    path = Path(meta["path"])
    arch = arch_of(meta["arch"])
    cfg = config_from(meta["arch"], meta["config"])
    try:
        state = load_file(str(path), device="cpu")
    except Exception as exc:
        raise UsageError(f"cannot read the weights in {path}: {shorten(exc)}") from None
    for alias, key in (meta.get("aliases") or {}).items():
        if key not in state:
            raise UsageError(f"{path}: alias {alias} names {key}, which the file lacks; the file is damaged")
        state[alias] = state[key]
    with torch.device("meta"):  # shapes only: the tensors come from the file
        model = arch.model_cls(cfg)
    check_state_dict(model, state, source=str(path),
                     expected=f"the {meta['arch']} its metadata describes")
    for key, value in state.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise UsageError(f"{path} holds non-finite values in {key}; the file is damaged")
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device).eval(), meta
