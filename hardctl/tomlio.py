"""Reading configuration files: the one ``tomllib`` / ``tomli`` import (``tomllib`` is in the standard library
from Python 3.11; ``tomli`` is the same parser for 3.10), :func:`read_toml`, and :func:`read_yaml` for the VAEs'
upstream configuration files; their failures are one-line usage errors naming the file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from hardctl.errors import UsageError

TOMLDecodeError = tomllib.TOMLDecodeError

__all__ = ["TOMLDecodeError", "loads", "read_toml", "read_yaml"]


def loads(text: str) -> dict[str, Any]:
    """``text`` parsed as a TOML document (raises :data:`TOMLDecodeError`)."""
    return tomllib.loads(text)


def read_toml(path: str | Path, what: str = "") -> dict[str, Any]:
    """The TOML document in ``path``; ``what`` names it in the errors (``"recipe"``: ``cannot parse recipe
    PATH: ...``, ``recipe file PATH does not exist``)."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{what or 'TOML'} file {path} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"{what + ' ' if what else ''}{path} is a folder, not a TOML file") from None
    except (TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot parse {what + ' ' if what else ''}{path}: {exc}") from None


def read_yaml(path: str | Path, what: str) -> Any:
    """The document in a YAML (or JSON) file, read with ``yaml.safe_load`` (never constructs objects);
    ``what`` names the file in errors (e.g. "RQ-VAE config")."""
    import yaml

    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
