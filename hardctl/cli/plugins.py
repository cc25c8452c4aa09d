"""``hardctl plugins`` and ``hardctl --version``."""

from __future__ import annotations

import json as jsonlib
import sys

from rich.console import Console
from rich.table import Table

import hardctl
from hardctl import plugins as plugin_registry
from hardctl.cli import app
from hardctl.cli.common import Json


def version_report() -> str:
    import timm
    import torch

    cuda = f"available ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "not available"
    infos = plugin_registry.manager.plugin_infos()
    loaded = ", ".join(f"{i.name} ({i.distribution or '?'} {i.version or ''})".replace(" )", ")")
                       for i in infos if i.status == "loaded") or "none"
    return "\n".join([f"hardctl {hardctl.__version__}", f"torch {torch.__version__}", f"timm {timm.__version__}",
                      f"CUDA {cuda}", f"plugins: {loaded}"])


@app.command("plugins", epilog="Example:  hardctl plugins --json")
def plugins_command(json: Json = False) -> None:
    """List installed plugins, their versions and what each registered (data sets, augmentors, suites)."""
    infos = plugin_registry.manager.plugin_infos()
    if json:
        print(jsonlib.dumps([i.as_dict() for i in infos], indent=2, sort_keys=True))
        return
    table = Table(title="hardctl plugins")
    for column in ("plugin", "distribution", "version", "status", "registered"):
        table.add_column(column)
    for info in infos:
        registered = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in info.registered.items())
        status = info.status if not info.error else f"{info.status}: {info.error}"
        table.add_row(info.name, info.distribution or "-", info.version or "-", status, registered or "-")
    Console(file=sys.stdout).print(table)
