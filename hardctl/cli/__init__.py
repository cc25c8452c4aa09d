"""The ``hardctl`` command line: one thin module per command over the library.

:mod:`hardctl.cli.root` holds the app and ``--version``; each command module registers its command on it.
None of them imports torch at module level, so ``--help`` stays fast (``tests/test_cli_startup.py``).

:func:`main` is the console script. It turns :class:`~hardctl.errors.HardctlError` into one line on
stderr and its exit code (2 usage, 1 runtime), the option parser's errors into the same one line and
exit 2 (:mod:`hardctl.cli.parse_errors`), Ctrl-C into one line saying how to continue the run and exit
130, and anything else into a one-line internal error; ``--debug`` (or ``HARDCTL_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings

import typer
from typer._click import exceptions as click_errors

from hardctl.cli import distill as _distill  # noqa: F401  (importing a command module registers it on app)
from hardctl.cli import eval as _eval  # noqa: F401
from hardctl.cli import export as _export  # noqa: F401
from hardctl.cli import plugins as _plugins  # noqa: F401
from hardctl.cli import recipes as _recipes  # noqa: F401
from hardctl.cli import train as _train  # noqa: F401
from hardctl.cli import vae as _vae  # noqa: F401
from hardctl.cli import visualize as _visualize  # noqa: F401
from hardctl.cli import common
from hardctl.cli.common import interrupted_line
from hardctl.cli.parse_errors import parser_error
from hardctl.cli.root import app, reflow_help
from hardctl.errors import HardctlError
from hardctl.plugins import PluginWarning

__all__ = ["app", "main"]

reflow_help(app)  # after every command module registered its command


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
        common.LAST_INTERRUPT = None
        code = command.main(args=args, prog_name="hardctl", standalone_mode=False)
        if code == 130:  # Typer turns Ctrl-C into a silent return of 130: say so, and how to continue
            print(f"hardctl: {interrupted_line(common.LAST_INTERRUPT or KeyboardInterrupt())}", file=sys.stderr)
    except typer.Exit as exc:
        code = exc.exit_code
    except click_errors.NoArgsIsHelpError as exc:  # bare ``hardctl`` or a bare group: its help
        exc.show()
        code = exc.exit_code
    except click_errors.UsageError as exc:  # the parser's errors, in hardctl's one-line style: exit 2
        if debug:
            traceback.print_exc()
        error = parser_error(exc, command, args)
        print(f"hardctl: error: {error.oneline()}", file=sys.stderr)
        code = error.exit_code
    except typer.TyperException as exc:
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
    except KeyboardInterrupt as exc:  # Ctrl-C: one line, and how to continue when there is a run to continue
        print(f"hardctl: {interrupted_line(exc)}", file=sys.stderr)
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
