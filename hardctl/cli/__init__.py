"""The ``hardctl`` command line: one thin module per command over the library.

:mod:`hardctl.cli.root` holds the app and ``--version``; each command module registers its command on it.
None of them imports torch at module level, so ``--help`` stays fast (``tests/test_cli_startup.py``).

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

from hardctl.cli import distill as _distill  # noqa: F401  (importing a command module registers it on app)
from hardctl.cli import eval as _eval  # noqa: F401
from hardctl.cli import export as _export  # noqa: F401
from hardctl.cli import plugins as _plugins  # noqa: F401
from hardctl.cli import recipes as _recipes  # noqa: F401
from hardctl.cli import train as _train  # noqa: F401
from hardctl.cli import visualize as _visualize  # noqa: F401
from hardctl.cli.root import app
from hardctl.errors import HardctlError
from hardctl.plugins import PluginWarning

__all__ = ["app", "main"]


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
