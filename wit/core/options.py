"""Options are declared once, as dataclass fields; command-line flags are generated from them.

A field made with `option(default, help=...)` carries its help text, choices
and flag name; `add_arguments` turns an options dataclass (nested ones
flattened) into argparse flags with the same defaults, and `from_args` builds
the dataclass back from the parsed namespace. Every options class derives from
`Options`, which checks choices and runs its own `check`, so a wrong value is
refused wherever the options come from (flags, the demo, a test) with the
flag's name in the message.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from functools import lru_cache
from typing import Any, Callable, Optional, Sequence

from wit.core.errors import WitError

MISSING = dataclasses.MISSING


class OptionError(WitError):
    """A value no command accepts; the message starts with the flag."""


def option(default: Any = MISSING, *, help: str, default_factory: Callable[[], Any] | Any = MISSING,
           flag: Optional[str] = None, choices: Optional[Sequence] = None, positional: bool = False,
           cli: bool = True, metavar: Optional[str] = None) -> Any:
    """A dataclass field with what the command line needs to know of it.

    `flag` overrides the flag name (default: the field name with dashes); a boolean that defaults to
    True is offered as `--no-NAME`. `cli=False` keeps a field out of the flags (set by code only).
    A field whose type is an options dataclass is flattened into the same flags, `help` naming its group.
    """
    metadata = {"help": help, "flag": flag, "choices": tuple(choices) if choices is not None else None,
                "positional": positional, "cli": cli, "metavar": metavar}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def flag(cls: type, name: str) -> str:
    """The command-line spelling of a field: `--per-query-cap`, `--no-robots-txt`, or a positional's name."""
    f = _fields(cls)[name]
    meta = f.metadata
    if meta.get("positional"):
        return name.upper()
    base = meta.get("flag") or name.replace("_", "-")
    return f"--no-{base}" if f.default is True else f"--{base}"


class Options:
    """Base of every options dataclass: choices are checked, then the class's own `check`."""

    def __post_init__(self) -> None:
        for name, f in _fields(type(self)).items():
            choices = f.metadata.get("choices")
            if choices is not None and getattr(self, name) not in choices:
                self.refuse(name, f"must be one of {', '.join(map(str, choices))}")
        self.check()

    def check(self) -> None:
        """Refuse values that cannot work together or at all (override; call `refuse`)."""

    def refuse(self, name: str, reason: str) -> None:
        value = getattr(self, name)
        shown = "" if isinstance(value, bool) else f" {_shown(value)}"
        raise OptionError(f"{flag(type(self), name)}{shown}: {reason}")


@lru_cache(maxsize=None)
def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


@lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _scalar(tp: Any) -> Any:
    """int for Optional[int], str for tuple[str, ...], the type itself otherwise."""
    args = [a for a in typing.get_args(tp) if a is not type(None) and a is not Ellipsis]
    return _scalar(args[0]) if args else tp


def _is_nested(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _is_list(tp: Any) -> bool:
    return typing.get_origin(tp) in (tuple, list)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def _cli_fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    hints = _hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]


_METAVARS = {int: "N", float: "X"}


def _shown(value: Any) -> str:
    if isinstance(value, (tuple, list)):  # a repeatable flag: its values as they were given
        return " ".join(map(_shown, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_arguments(parser: argparse.ArgumentParser, cls: type, group: Optional[Any] = None) -> None:
    """Flags for every field of `cls` (and of its nested options), defaults taken from the fields."""
    target = group or parser
    for f, tp in _cli_fields(cls):
        meta, kind = f.metadata, _scalar(tp)
        if _is_nested(tp):
            add_arguments(parser, tp, parser.add_argument_group(meta.get("help")))
            continue
        default = _default(f)
        kwargs: dict[str, Any] = {"help": meta.get("help", "")}
        if meta.get("choices") is not None:
            kwargs["choices"] = meta["choices"]
        elif kind is not bool and (meta.get("metavar") or kind in _METAVARS):
            kwargs["metavar"] = meta.get("metavar") or _METAVARS[kind]
        if meta.get("positional"):
            target.add_argument(f.name, type=kind, **kwargs)
            continue
        if kind is bool:
            kwargs["action"] = "store_false" if default is True else "store_true"
            if default is True:
                kwargs["help"] += " (on unless this flag is given)"
        elif _is_list(tp):
            kwargs.update(action="append", type=kind, help=kwargs["help"] + "; repeatable")
        else:
            kwargs["type"] = kind
            if default is not MISSING and default is not None:
                kwargs["help"] += f" (default {_shown(default)})"
        if default is MISSING:
            kwargs["required"] = True
        elif not _is_list(tp):  # a list's default is filled in by from_args: argparse appends to a given one
            kwargs["default"] = default
        target.add_argument(flag(cls, f.name), dest=f.name, **kwargs)


def from_args(cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """The options `cls` the parsed flags describe; `overrides` set fields the flags do not offer."""
    values: dict[str, Any] = {}
    for f, tp in _cli_fields(cls):
        if _is_nested(tp):
            values[f.name] = from_args(tp, args)
            continue
        value = getattr(args, f.name)
        if _is_list(tp):
            value = tuple(value) if value is not None else _default(f)
        values[f.name] = value
    values.update(overrides)
    return cls(**values)
