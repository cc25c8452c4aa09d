"""The root ``hardctl`` command: the Typer app every command module registers on, ``--version`` and ``--debug``.

A module of its own so that the command modules import the app from here, not from the package that
imports them (which would be an import cycle). Like every ``hardctl.cli`` module it imports no torch at
module level: ``--version`` imports it when asked for the versions.
"""

from __future__ import annotations

import typer

import hardctl
from hardctl import plugins as plugin_registry

app = typer.Typer(
    name="hardctl",
    help="Knowledge distillation of image classifiers with learned hard augmentations (HARD).",
    epilog="Examples:  hardctl train --model mnist_cnn --data digits --out runs/teacher\n\n"
    "hardctl distill --teacher runs/teacher --student mnist_mlp --data digits --out runs/kd\n\n"
    "hardctl eval --model runs/kd --data digits --shifted",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
)


def version_report() -> str:
    """hardctl, torch and timm versions, CUDA availability and the loaded plugins, one per line."""
    # torch is imported for its CUDA check; timm only for its version, read from its metadata instead
    # (importing timm imports torchvision too and would double the time --version takes).
    from importlib.metadata import version

    import torch

    cuda = f"available ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "not available"
    infos = plugin_registry.manager.plugin_infos()
    loaded = ", ".join(f"{i.name} ({i.distribution or '?'} {i.version or ''})".replace(" )", ")")
                       for i in infos if i.status == "loaded") or "none"
    return "\n".join([f"hardctl {hardctl.__version__}", f"torch {torch.__version__}", f"timm {version('timm')}",
                      f"CUDA {cuda}", f"plugins: {loaded}"])


def _version_callback(value: bool) -> None:
    if not value:
        return
    typer.echo(version_report())
    raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                 help="Show hardctl, torch and timm versions, CUDA availability and plugins."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    """Distil image classifiers with learned hard augmentations."""


def reflow_help(typer_app: typer.Typer) -> None:
    """Make every command's docstring render well at any terminal width: each paragraph becomes one line (Rich
    re-wraps it; source lines wrapped at 100 columns broke mid-sentence at 80) and ``[`` is escaped, so
    ``D[s(x̃), t(x̃)]`` is not taken for Rich markup and dropped."""
    import inspect

    def reflow(doc: str) -> str:
        paragraphs = [" ".join(line.strip() for line in block.splitlines())
                      for block in inspect.cleandoc(doc).split("\n\n")]
        return "\n\n".join(p.replace("[", "\\[") for p in paragraphs if p)

    for info in typer_app.registered_commands:
        if info.callback is not None and info.callback.__doc__ and not getattr(info.callback, "_reflowed", False):
            info.callback.__doc__ = reflow(info.callback.__doc__)
            info.callback._reflowed = True
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            reflow_help(group.typer_instance)
