"""argparse for the one command that runs, built from its declaration (:func:`minivisor.cli.command`).

:mod:`minivisor.cli.parsing` asks for it when a command line needs more than plain words (help, a
mistake, an abbreviation, a value that looks like an option...). A usage mistake (an unknown option, a
missing or bad argument) is an :class:`~minivisor.errors.ArgumentError`: main() prints it as one line,
exit 2, with the command's help to read as the hint.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import ArgumentError
from ..text import clip, excerpt
from . import COMMANDS

__all__ = ["build"]

USAGE_CHARS = 200  # of argparse's own message, which may echo a whole (hostile) value


class _Parser(argparse.ArgumentParser):
    def __init__(self, **options) -> None:
        super().__init__(**options)
        # declarations name actions as data: --x / --no-x (True, False, or the default when neither is given)
        self.register("action", "boolean_optional", argparse.BooleanOptionalAction)

    def error(self, message: str):
        raise ArgumentError(clip(" ".join(message.split()), USAGE_CHARS), hint=f"see: {self.prog} --help")


def _formatter(prog: str) -> argparse.HelpFormatter:
    """argparse's help layout, as wide as the terminal. (argparse builds one for every argument it adds, and
    finds the width with shutil, whose import alone would cost a command more than its parsing.)"""
    try:
        width = int(os.environ.get("COLUMNS") or os.get_terminal_size(sys.stdout.fileno()).columns)
    except (OSError, ValueError):
        width = 80
    return argparse.HelpFormatter(prog, width=width - 2)


def build(path: str, function, declared) -> argparse.ArgumentParser:
    """The parser of ``minivisor PATH``, whose function is ``function`` and arguments ``declared``."""
    parser = _Parser(prog=f"minivisor {path}", description=COMMANDS[path], allow_abbrev=False,
                     formatter_class=_formatter, epilog=function.__doc__ and " ".join(function.__doc__.split()))
    for names, options in declared:
        parser.add_argument(*names, **_with_choices(options))
    return parser


def _with_choices(options: dict) -> dict:
    """argparse's options, ``choices`` checked by a type that echoes a bad value as a short excerpt."""
    if "choices" not in options:
        return options
    choices = tuple(options["choices"])

    def one_of(value: str) -> str:
        if value not in choices:
            raise argparse.ArgumentTypeError(f"{excerpt(value)} is not one of {', '.join(choices)}")
        return value

    rest = {key: value for key, value in options.items() if key != "choices"}
    return {**rest, "type": one_of}
