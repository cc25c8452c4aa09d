"""The ``hardctl`` command line: one thin module per command over the library.

:func:`main` is the console script. It turns :class:`~hardctl.errors.HardctlError` into one line on
stderr and its exit code (2 usage, 1 runtime), Typer's own usage errors into exit 2, and anything else
into a one-line internal error; ``--debug`` (or ``HARDCTL_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings

import typer

from hardctl.errors import HardctlError
from hardctl.plugins import PluginWarning

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


def _version_callback(value: bool) -> None:
    if not value:
        return
    from hardctl.cli.plugins import version_report

    typer.echo(version_report())
    raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                 help="Show hardctl, torch and timm versions, CUDA availability and plugins."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    """Distil image classifiers with learned hard augmentations."""


# Importing the command modules registers them on ``app``.
from hardctl.cli import distill as _distill  # noqa: E402,F401
from hardctl.cli import eval as _eval  # noqa: E402,F401
from hardctl.cli import export as _export  # noqa: E402,F401
from hardctl.cli import plugins as _plugins  # noqa: E402,F401
from hardctl.cli import recipes as _recipes  # noqa: E402,F401
from hardctl.cli import train as _train  # noqa: E402,F401
from hardctl.cli import visualize as _visualize  # noqa: E402,F401


def _show_plugin_warning(message, category, filename, lineno, file=None, line=None):
    if issubclass(category, PluginWarning):
        print(f"hardctl: warning: {message}", file=sys.stderr)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point; always ends in ``sys.exit``."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("HARDCTL_DEBUG", "") not in ("", "0")
    warnings.showwarning = _show_plugin_warning
    command = typer.main.get_command(app)
    try:
        code = command.main(args=args, prog_name="hardctl", standalone_mode=False)
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.TyperException as exc:  # click-style usage errors (bad option, missing value): exit 2
        exc.show()
        code = exc.exit_code
    except typer.Abort:
        print("hardctl: aborted", file=sys.stderr)
        code = 1
    except HardctlError as exc:
        if debug:
            traceback.print_exc()
        print(f"hardctl: error: {exc.oneline()}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        print("hardctl: interrupted; a run can be continued with --resume RUN_DIR", file=sys.stderr)
        code = 130
    except Exception as exc:  # a bug: say so in one line, keep the traceback for --debug
        if debug:
            traceback.print_exc()
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"hardctl: internal error: {type(exc).__name__}: {first} (rerun with --debug for the traceback)",
              file=sys.stderr)
        code = 1
    finally:
        warnings.showwarning = _default_showwarning
    sys.exit(code or 0)
