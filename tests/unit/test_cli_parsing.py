"""Plain command lines are read without argparse, to exactly the values argparse gives them.

For every declared command, many command lines (right, wrong, odd) are read both ways: whenever
:func:`minivisor.cli.parsing.plain_values` reads one, argparse (:mod:`minivisor.cli.argparser`) accepts it
and gives the same values; everything else is left to argparse. The usual command lines of the commands
that go through a service are read without it, and such a command then loads no argparse.
"""

from __future__ import annotations

import contextlib
import io
import random
import subprocess
import sys
from importlib import import_module

import pytest

from minivisor.cli import COMMANDS, DECLARED
from minivisor.cli.argparser import build
from minivisor.cli.parsing import plain_values
from minivisor.errors import ArgumentError

for _path in COMMANDS:
    import_module(f"minivisor.cli.{_path.split()[0]}")

WORDS = ["web", "x y", "", "a=b", "\u00e9t\u00e9", "12", "1.5", "on", "list", "nat"]
VALUES = ["v", "12", "-3", "1.5", "", "x=y", "-v", "--x", "info", "20G", "nan"]
ODD = ["-h", "--help", "--", "-", "--unknown", "-x", "extra"]


def argparse_values(path: str, args: list[str]) -> dict | None:
    """What argparse makes of ``args`` (None when it refuses them or prints a help)."""
    function, declared = DECLARED[path]
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return vars(build(path, function, declared).parse_args(args))
    except (ArgumentError, SystemExit):
        return None


def same(ours: dict, theirs: dict | None) -> bool:
    """The same values (a NaN is the same NaN), of the same types."""
    return theirs is not None and sorted(ours) == sorted(theirs) and all(
        type(ours[k]) is type(theirs[k]) and repr(ours[k]) == repr(theirs[k]) for k in ours)


def command_lines(path: str) -> list[list[str]]:
    """Command lines for ``minivisor PATH``: its positionals with each option (and each odd word) around them."""
    _, declared = DECLARED[path]
    positionals = [names for names, spec in declared if not names[0].startswith("-")]
    options = [name for names, _ in declared if names[0].startswith("-") for name in names]
    options += ["--no-" + names[0][2:] for names, spec in declared if spec.get("action") == "boolean_optional"]
    rng = random.Random(path)
    lines = []
    for count in range(len(positionals) + 2):
        base = [rng.choice(WORDS) for _ in range(count)]
        lines.append(base)
        for option in options:
            for value in VALUES:
                lines += [base + [option, value], [option, value] + base, base + [f"{option}={value}"]]
            lines += [base + [option], [option] + base, base + [option[:-1]], base + [option, option]]
        for odd in ODD:
            lines += [base + [odd], [odd] + base]
    for _ in range(200):  # several options at once, in any order
        words = [rng.choice(WORDS) for _ in positionals]
        for option in rng.sample(options, min(len(options), rng.randint(1, 4))):
            words.insert(rng.randint(0, len(words)), option)
            if rng.random() < 0.6:
                words.insert(words.index(option) + 1, rng.choice(VALUES))
        lines.append(words)
    return lines


@pytest.mark.parametrize("path", list(COMMANDS))
def test_what_is_read_without_argparse_is_what_argparse_reads(path):
    _, declared = DECLARED[path]
    read = 0
    for args in command_lines(path):
        ours = plain_values(declared, args)
        if ours is not None:
            read += 1
            assert same(ours, argparse_values(path, args)), args
    assert read or plain_values(declared, ["x"] * 10) is None  # a command with nargs is left to argparse whole


@pytest.mark.parametrize("args", [["snapshot", "take", "web", "base"], ["snapshot", "take", "web", "base", "--no-memory"],
                                  ["vm", "clone", "golden", "web2", "--linked", "--snapshot", "base"],
                                  ["vm", "clone", "golden", "web2", "--full", "--json"], ["vm", "list"],
                                  ["vm", "list", "--json"], ["vm", "register", "ds/web/web.vmx", "--name", "web"],
                                  ["vm", "start", "web", "--wait-ready"], ["vm", "stop", "web", "--hard"],
                                  ["snapshot", "revert", "web", "base"], ["vm", "show", "web"]])
def test_the_usual_command_lines_need_no_argparse(args):
    path = " ".join(args[:2])
    values = plain_values(DECLARED[path][1], args[2:])
    assert values is not None and same(values, argparse_values(path, args[2:]))


def test_a_plain_command_line_loads_no_argparse_and_a_mistake_is_still_argparse_s(tmp_path):
    # atexit: the CLI ends with os._exit (cli._exit), after the atexit functions
    listed = subprocess.run([sys.executable, "-c", "import atexit, sys, runpy; sys.argv[0] = 'minivisor'\n"
                             "atexit.register(lambda: print('argparse' in sys.modules, file=sys.stderr))\n"
                             "runpy.run_module('minivisor', run_name='__main__', alter_sys=True)",
                             "-d", str(tmp_path / "ds"), "vm", "list"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and listed.stderr.split()[-1] == "False", listed.stderr
    wrong = subprocess.run([sys.executable, "-m", "minivisor", "-d", str(tmp_path / "ds"), "snapshot", "take", "web",
                            "base", "--memroy"], capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and wrong.stdout == ""
    assert wrong.stderr == "error: unrecognized arguments: --memroy; see: minivisor snapshot take --help\n"


def test_declarations_are_plain_data():
    """No declaration needs argparse to be written (an action by name): the command modules do not import it."""
    for path in COMMANDS:
        assert "argparse" not in vars(sys.modules[f"minivisor.cli.{path.split()[0]}"]), path
