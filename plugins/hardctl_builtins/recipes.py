"""Built-in recipes: every TOML file in this package's ``recipes/`` folder, registered through the hook."""

from __future__ import annotations

from pathlib import Path

from hardctl import hookimpl

RECIPE_DIR = Path(__file__).with_name("recipes")


@hookimpl
def register_recipes(register):
    from hardctl.recipes import describe_file

    for path in sorted(RECIPE_DIR.glob("*.toml"), key=lambda p: p.stem):
        register(path.stem, path, help=describe_file(path))
