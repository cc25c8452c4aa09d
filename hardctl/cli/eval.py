"""``hardctl eval``: score one or more models on evaluation suites (one column per model).

``--suite standard`` (the default) scores the test split of ``--data`` (and, with ``--shifted``, its
shifted copy). The other built-in suites read the official release layouts under ``--data-root`` or
``--set NAME=DIR``; ``hardctl eval --list`` shows every suite and the sets it reads.
"""

from __future__ import annotations

import json as jsonlib
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from hardctl import plugins
from hardctl.cli.root import app
from hardctl.cli.common import (
    DATA,
    MODEL,
    OUTPUT,
    results_console,
    RUN,
    Amp,
    Data,
    Device,
    Json,
    Pretrained,
    ShiftPx,
    ShiftSeed,
    explicit_options,
)
from hardctl.errors import UsageError

Models = Annotated[Optional[list[str]], typer.Option("--model", "-m", rich_help_panel=MODEL, help=(
    "Run directory, .safetensors file, or timm name (with --pretrained). Repeat to compare models."))]
Suites = Annotated[Optional[list[str]], typer.Option("--suite", "-s", rich_help_panel=DATA, help=(
    "Evaluation suite (see --list; default: standard). Repeat to run several."))]
DataRoot = Annotated[Optional[Path], typer.Option("--data-root", rich_help_panel=DATA, help=(
    "Folder holding the extracted release archives (imagenet/val, imagenet-a, CIFAR-10-C, mnist_c, ...)."))]
Sets = Annotated[Optional[list[str]], typer.Option("--set", rich_help_panel=DATA, help=(
    "NAME=DIR: read set NAME from DIR instead of under --data-root (e.g. imagenet-a=/data/imagenet-a)."))]
ListSuites = Annotated[bool, typer.Option("--list", rich_help_panel=OUTPUT, help="List the suites and the sets each reads.")]
OutFile = Annotated[Optional[Path], typer.Option("--out", "-o", rich_help_panel=OUTPUT, help=(
    "Also write the results to FILE: .json (every row), .csv (every row) or .md (the table)."))]
Workers = Annotated[Optional[int], typer.Option("--workers", min=0, rich_help_panel=RUN, help=(
    "DataLoader worker processes (default: min(8, CPUs) for image files, 0 for in-memory arrays)."))]
Shifted = Annotated[bool, typer.Option("--shifted", rich_help_panel=DATA, help=(
    "Also score the shifted copy of the --data test split (suite standard)."))]
BatchSize = Annotated[int, typer.Option("--batch-size", "-b", min=1, rich_help_panel=RUN, help=(
    "Evaluation batch size (halved and retried on CUDA out-of-memory)."))]


def _list_suites(as_json: bool) -> None:
    entries = list(plugins.eval_suites)
    listing = [{"name": e.name, "plugin": e.plugin, "help": e.help,
                "sets": [{"name": s.key, "paths": list(s.paths), "help": s.help} for s in e.sources]}
               for e in entries]
    if as_json:
        print(jsonlib.dumps(listing, indent=2))
        return
    table = Table(title="evaluation suites")
    for column in ("suite", "plugin", "reads", "what"):
        table.add_column(column)
    for item in listing:
        reads = ", ".join(s["name"] for s in item["sets"]) or "--data SPEC"
        table.add_row(item["name"], item["plugin"], reads, item["help"])
    # a pipe or file gets the table unwrapped up to 160 columns (Rich assumes 80 off a terminal)
    results_console().print(table)


@app.command("eval", epilog="Examples:  hardctl eval --model runs/kd --data digits --shifted\n\n"
             "hardctl eval --model runs/teacher --model runs/kd --suite imagenet-ood --data-root /data --out ood.md\n\n"
             "hardctl eval --model resnet50.a1_in1k --pretrained --suite imagenet-id --set imagenet-val=/data/val\n\n"
             "hardctl eval --list")
def eval_command(
    ctx: typer.Context,
    model: Models = None,
    suite: Suites = None,
    data: Data = "digits",
    shifted: Shifted = False,
    data_root: DataRoot = None,
    set_: Sets = None,
    list_: ListSuites = False,
    pretrained: Pretrained = False,
    batch_size: BatchSize = 256,
    workers: Workers = None,
    amp: Amp = "auto",
    device: Device = "auto",
    shift_px: ShiftPx = None,
    shift_seed: ShiftSeed = 0,
    json: Json = False,
    out: OutFile = None,
) -> None:
    """Score models on evaluation suites: top-1 accuracy (%), mCE and friends, a column per model."""
    from hardctl.eval import report, runner

    if list_:
        _list_suites(json)
        return
    if not model:
        raise UsageError("eval needs --model", hint="e.g. hardctl eval --model runs/kd --data digits")
    suites, spec_suites, set_dirs = _check_request(suite, data_root, set_, explicit_options(ctx))
    out_path = report.check_out_path(out) if out is not None else None
    pairs = runner.collect_sets(suites, data_spec=data, data_root=data_root, sets=set_dirs, shift_px=shift_px,
                                shift_seed=shift_seed, shifted=shifted)
    runner.require_found(pairs, f"under {data_root}" if data_root is not None else "in the --set folders")
    models, rows = runner.score_models(model, pairs, device=device, amp=amp, pretrained=pretrained,
                                       batch_size=batch_size, workers=workers,
                                       data_specs={name: data for name in spec_suites},
                                       progress=lambda message: print(f"hardctl: eval: {message}", file=sys.stderr))
    if int(os.environ.get("RANK", 0)):  # under torchrun every rank has the same rows; rank 0 reports them
        return
    title = (f"top-1 accuracy (%) on {data}" if suites == ["standard"]
             else f"top-1 accuracy (%): {', '.join(suites)}")
    _report(models, rows, title, out_path, as_json=json)


def _check_request(suite, data_root, set_, typed: set[str]):
    """The suites asked for, those that take a --data spec, and the --set folders; a combination of options
    that cannot apply to those suites is a usage error naming them."""
    from hardctl.eval import runner
    from hardctl.eval.sources import parse_set_options

    suites = list(dict.fromkeys(suite or ["standard"]))
    entries = [plugins.eval_suites.get(name) for name in suites]  # unknown names: usage error with did-you-mean
    root_suites = [e.name for e in entries if e.sources]
    spec_suites = [e.name for e in entries if not e.sources]
    if (data_root is not None or set_) and not root_suites:
        raise UsageError(f"--data-root and --set apply to suites that read release folders, not {', '.join(suites)}",
                         hint="use --data SPEC with these suites; hardctl eval --list shows which suite reads what")
    if not spec_suites and typed & {"data", "shifted"}:
        flags = " and ".join(f"--{f}" for f in sorted(typed & {"data", "shifted"}))
        raise UsageError(f"{flags} apply to suites that take a --data spec, not {', '.join(suites)}",
                         hint="point --data-root or --set NAME=DIR at the release folders")
    if data_root is not None and not data_root.expanduser().is_dir():
        raise UsageError(f"--data-root: no such folder {data_root}", hint="pass the folder holding the extracted archives")
    return suites, spec_suites, parse_set_options(set_ or [], runner.suite_sources(suites))


def _report(models, rows, title: str, out_path, *, as_json: bool) -> None:
    """The results on stdout (a table and its footnotes, or JSON); the path of --out goes to stderr."""
    from hardctl.eval import report, runner

    labels = {m.spec: m.label for m in models}
    if out_path is not None:
        report.write(out_path, rows, title, labels)
    if as_json:
        sys.stdout.write(report.render_json(rows))
        return
    table, notes = report.rich_table(rows, title, labels)
    paired = runner.teacher_pairs(models)
    for m in models:
        if m.teacher and m.spec not in paired:
            notes.append(f"{m.label} was distilled from {m.teacher}; add --model {m.teacher} for the gap column")
    results_console().print(table)
    for note in notes:  # the table's footnotes (skipped or partial sets, preprocessing): plain, never wrapped
        print(note)
    if out_path is not None:
        print(f"hardctl: written: {out_path}", file=sys.stderr)
