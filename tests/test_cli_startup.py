"""The CLI starts without torch: ``import hardctl.cli`` and every ``--help`` leave torch unimported.

Importing torch costs seconds and hundreds of MB; help and argument parsing need none of it, so the
command modules import the library inside their bodies. These tests check ``sys.modules`` in a fresh
interpreter at exit (not timings, which depend on the machine): a top-level import of a torch-using
module anywhere under ``hardctl.cli`` makes them fail and names the command.
``benchmarks/cli_startup.py`` measures the time this saves.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import typer

from hardctl.cli import app

# Modules that only running a command may import: each costs a large part of a second or more.
HEAVY = ("torch", "torchvision", "timm", "safetensors.torch", "numpy", "PIL.Image", "matplotlib")

# Runs in a fresh interpreter: prints {"import": [...heavy modules...], "runs": [[args, code, out, heavy]]}.
PROBE = r"""
import contextlib, io, json, sys
heavy = json.loads(sys.argv[1])
loaded = lambda: sorted(m for m in heavy if m in sys.modules)
import hardctl.cli
from hardctl.cli import main
report = {"import": loaded(), "runs": []}
for args in json.loads(sys.argv[2]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(args)
        except SystemExit as exc:
            code = exc.code
    report["runs"].append([args, code, out.getvalue(), loaded()])
print(json.dumps(report))
"""


def help_invocations() -> list[list[str]]:
    """``--help`` of the root, of every command and of every subcommand of a group, read from the app."""
    root = typer.main.get_command(app)
    invocations = [["--help"]]
    for name, command in sorted(root.commands.items()):
        invocations.append([name, "--help"])
        for sub in sorted(getattr(command, "commands", {}) or {}):
            invocations.append([name, sub, "--help"])
    return invocations


def probe(invocations: list[list[str]]) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(HEAVY), json.dumps(invocations)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_every_command_is_probed():
    invocations = help_invocations()
    commands = {args[0] for args in invocations if len(args) > 1}
    # the commands the README documents; a new command is probed without editing this test
    assert {"train", "distill", "eval", "export", "visualize", "plugins", "recipes"} <= commands
    assert ["recipes", "run", "--help"] in invocations


def test_import_and_every_help_leave_torch_unimported():
    report = probe(help_invocations())
    assert report["import"] == [], f"import hardctl.cli imported {report['import']}"
    assert len(report["runs"]) == len(help_invocations())
    for args, code, out, heavy in report["runs"]:
        shown = "hardctl " + " ".join(args)
        assert code == 0, shown
        assert "Usage:" in out and "--help" in out, f"{shown} printed no help: {out[:200]!r}"
        assert heavy == [], f"{shown} imported {heavy}"


def test_help_still_shows_what_came_from_the_library():
    """The defaults and the KD formula in the help text, now from torch-free modules, are the library's."""
    from hardctl.config import RunConfig

    report = probe([["distill", "--help"]])
    (_, code, out, heavy), = report["runs"]
    assert code == 0 and heavy == []
    text = " ".join(out.split())  # Rich wraps the panels: compare with the line breaks undone
    assert "T²·KL(softmax(t/T) ‖ softmax(s/T))" in text
    assert f"[default: {RunConfig().temperature}]" in text
    assert "--augmentor" in text and "--aug-opt" in text


@pytest.mark.slow  # a fresh interpreter that imports torch and loads the plugins: ~4 s
def test_version_reports_torch_and_cuda_without_importing_timm():
    """``--version`` needs torch (its version and CUDA), but timm's version comes from its metadata."""
    import importlib.metadata

    import torch

    report = probe([["--version"]])
    (_, code, out, heavy), = report["runs"]
    assert code == 0
    lines = out.splitlines()
    assert f"torch {torch.__version__}" in lines
    assert f"timm {importlib.metadata.version('timm')}" in lines
    assert any(line.startswith("CUDA ") for line in lines)
    assert "torch" in heavy and "timm" not in heavy
