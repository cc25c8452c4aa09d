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
from hardctl.tomlio import read_yaml
from hardctl.vae.archs import arch_of, config_from
from hardctl.vae.statecheck import check_state_dict

__all__ = ["FORMAT", "METADATA_KEY", "convert_official", "load_official", "load_vae", "read_checkpoint_state",
           "read_vae_metadata", "save_vae", "sniff_arch", "vae_metadata"]

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


# -- official checkpoints -> hardctl VAE files ------------------------------------------------------------

_OTHER = {"vdvae": "an RQ-VAE", "rqvae": "a VDVAE"}


def sniff_arch(state: Mapping[str, Any]) -> str | None:
    """Which architecture a state dict's key names belong to (both keep upstream's names), or None."""
    keys = list(state)
    if any(k.startswith(("quantizer.codebooks.", "quant_conv.", "encoder.down.")) for k in keys):
        return "rqvae"
    if any(k.startswith(("encoder.enc_blocks.", "decoder.dec_blocks.", "decoder.out_net.")) for k in keys):
        return "vdvae"
    return None


def read_checkpoint_state(path: str | Path) -> dict[str, Any]:
    """The state dict in an official checkpoint: a plain state dict (VDVAE ``*.th``) or a training
    checkpoint's ``state_dict`` entry (RQ-VAE ``model.pt``, read without running code from the file).
    ``module.`` prefixes (DDP) are stripped."""
    from hardctl.vae.safepickle import load_state_dict_only

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no checkpoint file at {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # custom classes (an RQ-VAE model.pt's scheduler), a foreign or damaged file
        obj = {"state_dict": load_state_dict_only(path, key="state_dict")}
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                               for k, v in obj.items()):
        raise UsageError(f"{path} holds neither a state dict nor a checkpoint with a 'state_dict' entry")
    state = {}
    for key, value in obj.items():
        while key.startswith("module."):
            key = key[len("module."):]
        state[key] = value
    return state


def load_official(path: str | Path, *, arch: str, config: Any) -> nn.Module:
    """An official checkpoint loaded strictly into ``arch`` built from ``config`` (a config object), in eval
    mode. Keys and shapes are checked first (one line naming the first differences); a checkpoint of the
    other architecture is named as such; tensors must be finite floats."""
    from hardctl.vae.vdvae import official_state

    path = Path(path)
    a = arch_of(arch)
    state = read_checkpoint_state(path)
    kind = sniff_arch(state)
    if kind is not None and kind != arch:
        raise UsageError(f"{path} looks like {_OTHER[arch]} checkpoint; use --arch {kind}")
    if arch == "vdvae":
        state = official_state(state, str(path))  # the fork's bias_xs_K names
    with torch.device("meta"):
        model = a.model_cls(config)
    side, channels = a.size(config)
    check_state_dict(model, state, source=str(path), expected=f"the {arch} configuration given "
                     f"({channels}×{side}×{side}; pick another with --preset or --config)")
    for key, value in state.items():
        if value.is_floating_point():
            if not torch.isfinite(value).all():
                raise UsageError(f"{path} holds non-finite values in {key}; the file is damaged")
            state[key] = value.float()
    if arch == "rqvae" and config.shared_codebook:  # one codebook stored per depth: they must agree
        for key in [k for k in state if k.startswith("quantizer.codebooks.") and not k.startswith("quantizer.codebooks.0.")]:
            first = "quantizer.codebooks.0." + key.split(".", 3)[3]
            if not torch.equal(state[key], state[first]):
                raise UsageError(f"{path}: {key} differs from depth 0, but the config says shared_codebook: true")
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def convert_official(path: str | Path, out: str | Path, *, arch: str, config_file: str | Path | None = None,
                     preset: str | None = None, force: bool = False) -> dict[str, Any]:
    """``hardctl vae convert``: an official checkpoint → a hardctl VAE file at ``out``. The configuration:
    ``config_file`` (RQ-VAE: upstream's YAML; VDVAE: a YAML/JSON mapping of VDVAEConfig fields), else
    ``preset``, else (RQ-VAE) ``config.yaml`` beside the file, else the arch's official preset. Nothing is
    written unless every check passes; an existing ``out`` is replaced only with ``force``."""
    import hashlib

    a = arch_of(arch)
    path, out = Path(path), Path(out)
    if path.is_dir() and arch == "rqvae":
        path = path / "model.pt"
    if out.exists() and not force:
        raise UsageError(f"--out {out} already exists", hint="pass --force to replace it, or pick another --out")
    if out.exists() and out.is_dir():
        raise UsageError(f"--out {out} is a folder", hint="name the .safetensors file to write")
    if config_file is not None and preset is not None:
        raise UsageError("--config and --preset both name a configuration", hint="pass one of them")
    if not path.is_file():
        raise UsageError(f"no checkpoint file at {path}")
    beside = path.parent / "config.yaml"
    if config_file is not None:
        cfg = _config_file(arch, Path(config_file))
        described = f"config {config_file}"
    elif preset is not None:
        cfg, described = config_from(arch, preset), f"preset {preset}"
    elif arch == "rqvae" and beside.is_file():
        cfg, described = _config_file(arch, beside), f"config {beside}"
    else:
        cfg, described = config_from(arch, a.official_default), f"preset {a.official_default}"
    model = load_official(path, arch=arch, config=cfg)
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    source = f"official {arch} checkpoint {path.name}"
    extra = {"official_file": path.name, "sha256": digest.hexdigest(), "configuration": described}
    save_vae(model, out, arch=arch, config=cfg.to_dict(), source=source, extra=extra)
    side, channels = a.size(cfg)
    params = sum(p.numel() for p in model.parameters())
    return {"out": str(out), "arch": arch, "configuration": described, "image_size": side, "channels": channels,
            "parameters": params, "source": source, "sha256": digest.hexdigest()}


def _config_file(arch: str, path: Path) -> Any:
    """A configuration file: upstream's config.yaml for RQ-VAE; a YAML/JSON mapping for VDVAE."""
    if arch == "rqvae":
        from hardctl.vae.rqvae import RQVAEConfig

        return RQVAEConfig.from_yaml(path)
    data = read_yaml(path, "VDVAE config")
    if not isinstance(data, Mapping):
        raise UsageError(f"{path} must hold a mapping of VDVAE settings (image_size, width, enc_blocks, ...)")
    return config_from("vdvae", data)
