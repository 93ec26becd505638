"""Options declared once: flags, defaults, validation and nesting all come from the dataclass fields."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Optional

import pytest

from wit.core.errors import WitError
from wit.core.options import Options, OptionError, add_arguments, flag, from_args, option


@dataclass(frozen=True)
class Inner(Options):
    size: int = option(3, help="a size")
    mode: str = option("a", help="a mode", choices=("a", "b"))


@dataclass(frozen=True)
class Outer(Options):
    paths: tuple[str, ...] = option(help="inputs")
    name: str = option(help="a name", metavar="NAME")
    ratio: float = option(0.5, help="a ratio")
    limit: Optional[int] = option(None, help="an optional limit")
    fast: bool = option(False, help="go fast")
    checks: bool = option(True, help="run the checks")
    weight_decay: float = option(0.1, help="decay", flag="wd")
    hidden: str = option("code only", help="not on the command line", cli=False)
    inner: Inner = option(default_factory=Inner, help="inner options")

    def check(self) -> None:
        if self.ratio > 1:
            self.refuse("ratio", "must be at most 1")


def _parse(*argv: str) -> Outer:
    p = argparse.ArgumentParser(allow_abbrev=False)
    add_arguments(p, Outer)
    return from_args(Outer, p.parse_args(list(argv)))


def test_defaults_on_the_command_line_are_the_fields_defaults():
    assert _parse("--paths", "x", "--name", "n") == Outer(paths=("x",), name="n")


def test_every_kind_of_field_becomes_the_expected_flag():
    got = _parse("--paths", "a", "--paths", "b", "--name", "n", "--ratio", "0.25", "--limit", "7", "--fast",
                 "--no-checks", "--wd", "0.3", "--size", "9", "--mode", "b")
    assert got == Outer(paths=("a", "b"), name="n", ratio=0.25, limit=7, fast=True, checks=False, weight_decay=0.3,
                        inner=Inner(size=9, mode="b"))
    assert got.hidden == "code only"
    assert flag(Outer, "checks") == "--no-checks" and flag(Outer, "weight_decay") == "--wd"
    assert flag(Outer, "paths") == "--paths"


def test_hidden_fields_are_not_flags_and_required_ones_are_required():
    p = argparse.ArgumentParser(allow_abbrev=False)
    add_arguments(p, Outer)
    with pytest.raises(SystemExit):
        p.parse_args(["--paths", "x", "--name", "n", "--hidden", "y"])
    with pytest.raises(SystemExit):
        p.parse_args(["--paths", "x"])
    with pytest.raises(SystemExit):
        p.parse_args(["--paths", "x", "--name", "n", "--mode", "c"])  # not among the choices


def test_a_wrong_value_names_its_flag_wherever_the_options_come_from():
    with pytest.raises(OptionError, match=r"^--ratio 2: must be at most 1$"):
        _parse("--paths", "x", "--name", "n", "--ratio", "2")
    with pytest.raises(OptionError, match=r"^--ratio 1.5: must be at most 1$"):
        Outer(paths=(), name="n", ratio=1.5)
    with pytest.raises(OptionError, match=r"^--mode c: must be one of a, b$"):
        Inner(mode="c")
    assert issubclass(OptionError, WitError)
