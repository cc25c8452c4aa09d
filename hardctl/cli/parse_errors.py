"""The option parser's errors as hardctl's one line: ``hardctl: error: <problem> (<fix>)``.

Typer (which vendors Click as ``typer._click``) reports a missing option value, a value that does not
parse, an unknown option or command and a missing argument with a usage box of four lines and its own
wording; every other hardctl error is one line naming the problem and the fix. :func:`parser_error`
rewrites the parser's exception in that style, with hardctl's own did-you-mean. Imports no torch.
"""

from __future__ import annotations

import re

from typer._click import exceptions as click_errors

from hardctl.errors import UsageError, did_you_mean

__all__ = ["parser_error"]


def _option_names(command) -> list[str]:
    return sorted({name for param in getattr(command, "params", []) for name in (*param.opts, *param.secondary_opts)
                   if name.startswith("-")})


def _suggest_option(name: str, command) -> str:
    """did_you_mean over the option names without their dashes (``--bogus`` is not close to ``--out``)."""
    names = {option.lstrip("-"): option for option in _option_names(command)}
    close = did_you_mean(name.lstrip("-"), names)
    for bare, option in sorted(names.items(), key=lambda item: -len(item[0])):
        close = close.replace(repr(bare), repr(option))
    return close


def _command_path(root, args: list[str]) -> str:
    """``hardctl train`` from the command line, for the errors Click raises without a context."""
    words, command = ["hardctl"], root
    for arg in args:
        sub = getattr(command, "commands", {}).get(arg)
        if sub is None:
            if not arg.startswith("-"):
                break
            continue
        words.append(arg)
        command = sub
    return " ".join(words)


def _param_name(param) -> str:
    """``--epochs`` for an option (its longest name), ``RUN`` for an argument."""
    if param is None:
        return "a parameter"
    if getattr(param, "param_type_name", "") == "argument":
        return (param.metavar or param.name or "ARG").upper()
    return max(param.opts, key=len)


def _sentence(text: str) -> str:
    """Click's sentences as a clause of ours: lower-case start, no final full stop."""
    text = text.strip().rstrip(".")
    return text[:1].lower() + text[1:]


def parser_error(exc: click_errors.UsageError, root=None, args: list[str] = ()) -> UsageError:
    """The hardctl :class:`~hardctl.errors.UsageError` (exit 2, one line) that says what ``exc`` says;
    ``root`` and ``args`` (the click command and the command line) name the command when ``exc`` does not."""
    ctx = exc.ctx
    path = ctx.command_path if ctx is not None else _command_path(root, list(args)) if root else "hardctl"
    hint = f"see {path} --help"
    if isinstance(exc, click_errors.NoSuchOption):
        name = exc.option_name
        suggestion = _suggest_option(name, ctx.command) if ctx is not None else ""
        return UsageError(f"{path} has no option {name!r}{suggestion}", hint=hint)
    if isinstance(exc, click_errors.MissingParameter):
        kind = "argument" if getattr(exc.param, "param_type_name", "") == "argument" else "option"
        return UsageError(f"{path} needs the {kind} {_param_name(exc.param)}", hint=hint)
    if isinstance(exc, click_errors.BadParameter):
        return UsageError(f"invalid value for {_param_name(exc.param)}: {_sentence(exc.message)}", hint=hint)
    if isinstance(exc, click_errors.BadOptionUsage):
        if "requires an argument" in exc.message:
            return UsageError(f"{exc.option_name} needs a value", hint=hint)
        if "does not take a value" in exc.message:
            return UsageError(f"{exc.option_name} takes no value", hint=f"write {exc.option_name} alone; {hint}")
        return UsageError(_sentence(exc.message), hint=hint)
    unknown = re.match(r"No such command '(.*?)'", exc.message)
    if unknown and ctx is not None:
        commands = ctx.command.list_commands(ctx) if hasattr(ctx.command, "list_commands") else []
        name = unknown.group(1)
        return UsageError(f"unknown command {name!r}{did_you_mean(name, commands)}",
                          hint=f"commands: {', '.join(commands)}; {hint}")
    return UsageError(_sentence(exc.message), hint=hint)
