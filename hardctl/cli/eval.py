"""``hardctl eval``: top-1 accuracy of one or more models on a data set's test split (and shifted copy)."""

from __future__ import annotations

import json as jsonlib
import sys
from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.table import Table

import hardctl
from hardctl.cli import app
from hardctl.cli.common import MODEL, OUTPUT, Amp, Data, Device, Json, Pretrained, ShiftPx, ShiftSeed
from hardctl.eval import accuracy, run_suite

Models = Annotated[list[str], typer.Option("--model", "-m", rich_help_panel=MODEL, help=(
    "Run directory, .safetensors file, or timm name (with --pretrained). Repeat to compare models."))]


@app.command("eval", epilog="Examples:  hardctl eval --model runs/kd --data digits --shifted\n\n"
             "hardctl eval --model runs/teacher --model runs/kd --data fashion-mnist --shifted --json")
def eval_command(
    model: Models,
    data: Data = "digits",
    shifted: Annotated[bool, typer.Option("--shifted", rich_help_panel=OUTPUT,
                                          help="Also score the shifted copy of the test split.")] = False,
    suite: Annotated[str, typer.Option("--suite", help="Evaluation suite (registered by plugins).")] = "standard",
    pretrained: Pretrained = False,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Evaluation batch size.")] = 256,
    amp: Amp = "auto",
    device: Device = "auto",
    shift_px: ShiftPx = None,
    shift_seed: ShiftSeed = 0,
    json: Json = False,
) -> None:
    """Score models on the test split of --data (top-1 accuracy, %); --shifted adds the shifted copy."""
    from hardctl.distill.trainer import select_amp, select_device
    from hardctl.models import InputNormalize, load_for_data

    dev = select_device(device)
    amp = select_amp(amp, dev)
    sets = run_suite(suite, data, shift_px=shift_px, shift_seed=shift_seed)
    if not shifted:
        sets = [s for s in sets if s.name != "shifted"]
    shape = sets[0]
    results = []
    sample = torch.stack([shape.dataset[0][0]]).to(dev)
    for spec in model:
        net, info = load_for_data("model", spec, data=data, num_classes=shape.num_classes, in_chans=shape.in_chans,
                                  img_size=shape.img_size, sample=sample, pretrained=pretrained,
                                  require_trained=True)
        normalize = InputNormalize(info.mean, info.std).to(dev)
        for eval_set in sets:
            score = accuracy(net, eval_set.dataset, normalize=normalize, device=dev, batch_size=batch_size, amp=amp)
            results.append({"model": spec, "arch": info.arch, "set": eval_set.name, "dataset": data,
                            "description": eval_set.description, "images": score["n"], "acc": score["acc"],
                            "loss": score["loss"], "hardctl_version": hardctl.__version__})
    if json:
        print(jsonlib.dumps(results, indent=2))
        return
    table = Table(title=f"top-1 accuracy (%) on {data}")
    table.add_column("set")
    table.add_column("images", justify="right")
    for spec in model:
        table.add_column(spec, justify="right")
    for eval_set in sets:
        row = [r for r in results if r["set"] == eval_set.name]
        table.add_row(eval_set.name, str(row[0]["images"]), *(f"{r['acc']:.2f}" for r in row))
    Console(file=sys.stdout).print(table)
