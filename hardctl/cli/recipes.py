"""``hardctl recipes``: list, show and run the recipes (the paper's tables as arms × seeds).

Thin: parsing and printing only; the runner is :mod:`hardctl.recipes`.
"""

from __future__ import annotations

import json as jsonlib
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from hardctl.cli.root import app
from hardctl.cli.common import OUTPUT, Json, results_console
from hardctl.errors import UsageError

recipes_app = typer.Typer(
    name="recipes",
    help="List, show and run recipes: the paper's tables as arms × seeds (no subcommand: list).",
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode="rich",
    invoke_without_command=True,
    no_args_is_help=False,
)
app.add_typer(recipes_app, name="recipes")

RUN = "Run"
Target = Annotated[list[str], typer.Argument(metavar="NAME_OR_PATH", show_default=False, help=(
    "A recipe name from 'hardctl recipes' or a recipe TOML file."))]
Seeds = Annotated[Optional[list[str]], typer.Option("--seeds", rich_help_panel=RUN, show_default=False, help=(
    "Seeds to run instead of the recipe's: --seeds 0 1 2 or --seeds 0,1,2."))]
Arms = Annotated[Optional[list[str]], typer.Option("--arms", rich_help_panel=RUN, show_default=False, help=(
    "Run only these arms (comma-separated or repeated); arms they take their teacher from run too."))]
Sets = Annotated[Optional[list[str]], typer.Option("--set", rich_help_panel=RUN, show_default=False, help=(
    "KEY=VALUE sets a run setting of every arm, the arms' own values included (e.g. epochs=5, "
    "data=cifar10:DIR, teacher=resnet50:FILE); ARM.KEY=VALUE of one arm (e.g. hard-affine.l_max=0.5); "
    "eval.data_root=DIR, eval.sets.NAME=DIR, eval.suites=A,B and results.columns=A,B the \\[eval] and \\[results] "
    "sections; 'none' unsets an optional one. Repeatable."))]
Out = Annotated[Optional[Path], typer.Option("--out", "-o", rich_help_panel=OUTPUT, show_default=False, help=(
    "Output folder: OUT/<arm>/seed-<n> per run, plus results.md, results.json and recipe.toml "
    "\\[default: runs/<recipe>]."))]
Reuse = Annotated[bool, typer.Option("--reuse/--no-reuse", rich_help_panel=RUN, help=(
    "Reuse finished runs in OUT whose configuration is unchanged (and resume interrupted ones); "
    "--no-reuse trains every run again."))]


def _split(values: list[str] | None) -> list[str]:
    return [part.strip() for value in values or [] for part in value.replace(",", " ").split() if part.strip()]


def _seeds(values: list[str]) -> list[int]:
    seeds = []
    for text in values:
        try:
            seeds.append(int(text))
        except ValueError:
            raise UsageError(f"--seeds takes integers, got {text!r}",
                             hint="e.g. --seeds 0 1 2 or --seeds 0,1,2") from None
    return seeds


def _target_and_seeds(target: list[str], seeds: list[str] | None) -> tuple[str, list[int] | None]:
    """``run NAME --seeds 0 1 2``: the seeds after the first reach us as extra arguments."""
    names = [t for t in target if not t.lstrip("-").isdigit()]
    numbers = [t for t in target if t.lstrip("-").isdigit()]
    if len(names) != 1:
        found = ", ".join(map(repr, names)) or "none"
        raise UsageError(f"name exactly one recipe (found {found})", hint="hardctl recipes run NAME_OR_PATH")
    if numbers and seeds is None:
        raise UsageError(f"unexpected argument {numbers[0]!r}", hint="seeds go after --seeds: --seeds 0 1 2")
    if seeds is None:
        return names[0], None
    return names[0], _seeds(_split(seeds) + numbers)


def _list(as_json: bool) -> None:
    from hardctl.recipes import list_recipes

    rows = list_recipes()
    if as_json:
        print(jsonlib.dumps(rows, indent=2, sort_keys=True))
        return
    table = Table(title="hardctl recipes")
    table.add_column("recipe", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    for column in ("arms", "seeds", "description"):
        table.add_column(column, overflow="fold")
    for row in rows:
        description = row["description"] if not row["error"] else f"[red]broken:[/red] {row['error']}"
        table.add_row(row["name"], row["kind"] or "-", ", ".join(row["arms"]) or "-",
                      " ".join(map(str, row["seeds"])) or "-", description)
    # a pipe or file gets the table unwrapped up to 200 columns (Rich assumes 80 off a terminal)
    console = results_console()
    console.print(table)
    console.print("Run one with: hardctl recipes run NAME [--seeds 0 1 2] [--set KEY=VALUE] [--out DIR]",
                  highlight=False, soft_wrap=True)


@recipes_app.callback()
def recipes_root(ctx: typer.Context, json: Json = False) -> None:
    """List, show and run recipes. Without a subcommand: the list."""
    if ctx.invoked_subcommand is None:
        _list(json)


@recipes_app.command("list", epilog="Example:  hardctl recipes list --json")
def list_command(json: Json = False) -> None:
    """List the installed recipes: name, kind, arms, seeds and a one-line description."""
    _list(json)


@recipes_app.command("show", epilog="Example:  hardctl recipes show transfer-digits > my-recipe.toml")
def show_command(name: Annotated[str, typer.Argument(metavar="NAME_OR_PATH", help="A recipe name or file.")]) -> None:
    """Print a recipe's TOML (copy it to make your own and run it by path)."""
    from hardctl.recipes import load_recipe, recipe_path

    path = recipe_path(name)
    load_recipe(path)  # a broken file is an error here too
    sys.stdout.write(path.read_text(encoding="utf-8"))


def results_table(results: dict[str, Any]) -> Table:
    """The recipe's table in the paper's layout (the columns results.md shows), for the terminal."""
    from hardctl.recipes.results import table as layout

    title = results["recipe"] + (f" — {results['paper']}" if results.get("paper") else "")
    lower = any(c.get("lower_is_better") for c in results.get("columns") or [])
    table = Table(title=title, caption="test accuracy %, mean ± s.e.m. over seeds"
                  + (" (↓: an error in %, lower is better)" if lower else ""))
    header, rows = layout(results)
    for number, name in enumerate(header):
        if number == 0:
            table.add_column(name, no_wrap=True)
        else:
            table.add_column(name, justify="right")
    for row in rows:
        table.add_row(*row)
    return table


@recipes_app.command("run", epilog="Examples:  hardctl recipes run transfer-digits --out runs/transfer-digits\n\n"
                     "hardctl recipes run transfer-digits --seeds 0 --arms kd,hard-affine --set epochs=5\n\n"
                     "hardctl recipes run imagenet-resnet50-resnet18 --set data=imagenet:/data/ILSVRC2012 "
                     "--set teacher=resnet50:/weights/deepaugment_and_augmix.pth.tar --set eval.data_root=/data\n\n"
                     "hardctl recipes run my-recipe.toml --set hard-affine.l_max=0.5 --json")
def run_command(target: Target, seeds: Seeds = None, arms: Arms = None, set_: Sets = None, out: Out = None,
                reuse: Reuse = True, json: Json = False) -> None:
    """Run a recipe's arms × seeds and print its table (also written as results.md and results.json)."""
    from hardctl.distill.progress import reporter_for
    from hardctl.recipes import load_recipe, parse_overrides, run_recipe

    name, seed_list = _target_and_seeds(target, seeds)
    recipe = load_recipe(name)
    overrides = parse_overrides(set_ or [])
    arm_list = _split(arms) if arms is not None else None
    out_dir = out if out is not None else Path("runs") / recipe.name
    reporter = reporter_for()
    try:
        results = run_recipe(recipe, out_dir, seeds=seed_list, arms=arm_list, overrides=overrides, reuse=reuse,
                             progress=reporter)
    finally:
        reporter.close()
    if os.environ.get("RANK", "0") != "0":  # under torchrun rank 0 alone prints the results
        return
    if json:
        print(jsonlib.dumps(results, indent=2, sort_keys=True, default=str))
        return
    console = results_console()
    files = results.get("files") or {}
    markdown_file = files.get("markdown") or files.get("results.md")
    if recipe.kind == "transfer":
        console.print(results_table(results))
    elif markdown_file and Path(markdown_file).is_file():  # another kind's own table
        console.print(Path(markdown_file).read_text(encoding="utf-8").rstrip(), highlight=False, markup=False)
    else:
        console.print_json(jsonlib.dumps(results, default=str))
    if files:
        console.print("written: " + ", ".join(str(v) for v in files.values()), highlight=False, soft_wrap=True)

