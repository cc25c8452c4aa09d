"""``hardctl plugins``: the installed plugins and what each registered (``--version``: :mod:`hardctl.cli.root`)."""

from __future__ import annotations

import json as jsonlib

import typer
from rich.table import Table

from hardctl import plugins as plugin_registry
from hardctl.cli.root import app
from hardctl.cli.common import Json, results_console


def augmentor_report() -> list[dict]:
    """Every registered augmentor with its options, training mode and HARD defaults."""
    from dataclasses import asdict

    from hardctl.augment import AugmentorSpec

    rows = []
    for entry in plugin_registry.augmentors:
        spec = AugmentorSpec.from_entry(entry)
        rows.append({"name": spec.name, "plugin": spec.plugin, "help": spec.help,
                     "mode": "phases" if spec.teacher_term else "joint",
                     "options": [{"name": o.name, "type": o.type.__name__, "default": o.default, "help": o.help,
                                  "min": o.min, "max": o.max, "choices": list(o.choices or [])} for o in spec.options],
                     "hard_defaults": asdict(spec.hard_defaults)})
    return rows


@app.command("plugins", epilog="Examples:  hardctl plugins --json\n\nhardctl plugins --augmentors")
def plugins_command(
    json: Json = False,
    augmentors: bool = typer.Option(False, "--augmentors", help="List the augmentors with their options and HARD defaults."),
) -> None:
    """List installed plugins, their versions and what each registered (data sets, augmentors, suites)."""
    if augmentors:
        rows = augmentor_report()
        if json:
            print(jsonlib.dumps(rows, indent=2, sort_keys=True))
            return
        table = Table(title="augmentors (--augmentor NAME, --aug-opt KEY=VALUE)")
        for column in ("augmentor", "plugin", "training", "options", "HARD defaults"):
            table.add_column(column)
        for row in rows:
            options = "\n".join(f"{o['name']}={o['default']!r}: {o['help']}" for o in row["options"]) or "-"
            hard = ", ".join(f"{k} {v}" for k, v in row["hard_defaults"].items())
            table.add_row(row["name"], row["plugin"], row["mode"], options, hard)
        results_console().print(table)
        return
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
    results_console().print(table)
