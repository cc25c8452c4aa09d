"""Typed setting values: the one parser behind RunConfig, recipe ``--set``, augmentor options and the toy.

A setting's type is a plain annotation: ``bool``, ``int``, ``float``, ``str``, ``dict``, ``X | None``,
``tuple[X, ...]`` or ``tuple[X, Y]``. Two entry points:

* :func:`check_value` takes a value that already has a type (read from TOML, given in Python) and checks
  it: an ``int`` is accepted for a ``float`` (and becomes one), a list for a tuple; nothing else is converted,
  so ``epochs = "ten"`` in a file is an error, not a guess.
* :func:`parse_value` also takes the strings of ``KEY=VALUE`` flags and converts them first: ``true/yes/on/1``
  and ``false/no/off/0`` for booleans, finite numbers, ``none`` (or nothing) for an optional value, and TOML
  syntax for tables and lists (``{sigma = 0.1}``, ``[[-8, -7], [5, 6]]``).

:func:`key_value_pairs` splits the repeatable ``FLAG KEY=VALUE`` options into the pairs these parse.
Every failure is one :class:`~hardctl.errors.UsageError`: ``{what} must be {the type}, got {the value!r}``.
The module imports neither torch nor any other part of hardctl above :mod:`hardctl.errors`.
"""

from __future__ import annotations

import math
import types
import typing
from typing import Any

from hardctl import tomlio
from hardctl.errors import UsageError

__all__ = ["check_value", "key_value_pairs", "parse_value", "type_name"]

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
NONE_WORDS = ("none", "null", "")
_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a table"}


def _split_optional(kind: Any) -> tuple[Any, bool]:
    """``int | None`` -> ``(int, True)``; ``int`` -> ``(int, False)``."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        inner = args[0] if len(args) == 1 else typing.Union[tuple(args)]
        return inner, type(None) in typing.get_args(kind)
    return kind, False


def type_name(kind: Any) -> str:
    """How a message names ``kind``: ``an integer``, ``a table``, ``a list of integers``."""
    kind, _ = _split_optional(kind)
    origin = typing.get_origin(kind) or kind
    if origin is tuple:
        args = typing.get_args(kind)
        if len(args) == 2 and args[1] is Ellipsis:
            inner = type_name(args[0])
            plural = {"an integer": "integers", "a number": "numbers", "a string": "strings"}.get(inner)
            return f"a list of {plural or inner.removeprefix('a ').removeprefix('an ') + 's'}"
        return f"a list of {len(args)} numbers" if all(a in (int, float) for a in args) else f"a list of {len(args)}"
    return _NAMES.get(origin, getattr(origin, "__name__", str(origin)))


def _fail(kind: Any, raw: Any, what: str) -> UsageError:
    example = " such as {key = 1}" if (typing.get_origin(kind) or kind) is dict else ""
    return UsageError(f"{what} must be {type_name(kind)}{example}, got {raw!r}")


def _checked(value: Any, kind: Any, raw: Any, what: str) -> Any:
    """``value`` as ``kind`` (ints widened to float, lists to tuples) or a usage error showing ``raw``."""
    origin = typing.get_origin(kind) or kind
    if origin is bool:
        ok = isinstance(value, bool)
    elif origin is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif origin is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif origin is tuple:
        args = typing.get_args(kind)
        if not isinstance(value, (list, tuple)):
            raise _fail(kind, raw, what)
        parts = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(parts) != len(value):
            raise _fail(kind, raw, what)
        try:
            return tuple(_checked(v, k, raw, what) for v, k in zip(value, parts, strict=True))
        except UsageError:
            raise _fail(kind, raw, what) from None
    elif origin in (str, dict, list):
        ok = isinstance(value, origin)
    else:  # Any, or a type this parser does not know: the caller checks it
        ok = True
    if not ok:
        raise _fail(kind, raw, what)
    return value


def check_value(value: Any, kind: Any, what: str) -> Any:
    """``value`` (already typed: TOML, Python) checked against ``kind``; see the module's docstring."""
    inner, optional = _split_optional(kind)
    if value is None:
        if optional:
            return None
        raise _fail(inner, value, what)
    return _checked(value, inner, value, what)


def parse_value(raw: Any, kind: Any, what: str) -> Any:
    """Like :func:`check_value`, but a string for a non-string ``kind`` is converted first (``KEY=VALUE``)."""
    inner, optional = _split_optional(kind)
    origin = typing.get_origin(inner) or inner
    if not isinstance(raw, str) or origin is str:
        return check_value(raw, kind, what)
    text = raw.strip()
    if optional and text.lower() in NONE_WORDS:
        return None
    if origin is bool:
        if text.lower() in TRUE_WORDS + FALSE_WORDS:
            return text.lower() in TRUE_WORDS
        raise _fail(inner, raw, what)
    try:
        if origin is int:
            return int(text)
        if origin is float:
            number = float(text)
            if not math.isfinite(number):
                raise ValueError(text)
            return number
        value = tomlio.loads(f"value = {text}")["value"]  # tables, lists: TOML's inline syntax
    except (ValueError, tomlio.TOMLDecodeError):
        raise _fail(inner, raw, what) from None
    return _checked(value, inner, raw, what)


def key_value_pairs(items, *, flag: str, example: str, form: str = "KEY=VALUE",
                    need_value: bool = False) -> list[tuple[str, str]]:
    """``["a=1", "b = x"]`` -> ``[("a", "1"), ("b", "x")]`` for repeatable ``FLAG KEY=VALUE`` options.

    An item without ``=`` or with an empty key (or, with ``need_value``, an empty value) is a usage error
    naming ``flag`` and showing ``example``. Values stay strings: each caller types them against its own
    schema (augmentor options, RunConfig fields, data folders).
    """
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or (need_value and not value):
            raise UsageError(f"{flag} {item!r} is not {form}", hint=f"e.g. {example}")
        pairs.append((key, value))
    return pairs
