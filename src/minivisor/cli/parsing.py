"""The values of the one command that runs, from its declaration (:func:`minivisor.cli.command`).

Most command lines are plain words: the command's positionals and its exact option names (``snapshot take
web base``, ``vm clone golden web2 --linked --snapshot base``). Those are read here, to the values argparse
gives, without argparse: its import, gettext's search for a translation (which imports locale) and building
a parser cost a command through a service ~5 ms of CPU, more than the rest of its own work. Anything else
(``--help``, a mistake, an abbreviation, a value that starts with ``-``, ``--``, a bad choice or number, an
argument of a kind not read here) goes to argparse (:mod:`minivisor.cli.argparser`), which answers it as
it always did. ``tests/unit/test_cli_parsing.py`` holds the two to the same values.
"""

from __future__ import annotations

from . import DECLARED

__all__ = ["parse", "plain_values"]

# argparse's default for each action read here (for --x/--no-x, None when given neither way)
ACTION_DEFAULTS = {None: None, "store": None, "store_true": False, "store_false": True, "store_const": None,
                   "boolean_optional": None}
_REFUSED = object()  # a value argparse would refuse (it says why)


def parse(path: str, args: list[str]):
    """The function declared for ``minivisor PATH`` and the values ARGS give its parameters."""
    function, declared = DECLARED[path]
    values = plain_values(declared, args)
    if values is None:
        from .argparser import build

        values = vars(build(path, function, declared).parse_args(args))
    return function, values


class _Argument:
    """One declared argument as read here: where its value goes, and what each of its option names stores."""

    __slots__ = ("dest", "options", "takes_value", "default", "choices", "type")

    def __init__(self, names: tuple[str, ...], spec: dict) -> None:
        action = spec.get("action")
        positional = not names[0].startswith("-")
        self.dest = spec.get("dest") or (names[0] if positional else _dest(names))
        self.takes_value = action in (None, "store")
        self.default = spec.get("default", ACTION_DEFAULTS[action])
        self.choices = tuple(spec["choices"]) if "choices" in spec else None
        self.type = spec.get("type")
        stored = {"store_true": True, "store_false": False, "store_const": spec.get("const"),
                  "boolean_optional": True}.get(action)
        self.options = {} if positional else {name: stored for name in names}
        if action == "boolean_optional":
            self.options.update({"--no-" + name[2:]: False for name in names if name.startswith("--")})

    def convert(self, word: str) -> object:
        """The word as argparse stores it (its ``choices`` checked, or its ``type`` applied), or _REFUSED."""
        if self.choices is not None:  # argparser checks choices in place of the type
            return word if word in self.choices else _REFUSED
        if self.type is None:
            return word
        try:
            return self.type(word)
        except (TypeError, ValueError):
            return _REFUSED


def _dest(names: tuple[str, ...]) -> str:
    """argparse's name for an option's value: its first long name (else its first), without dashes."""
    name = next((n for n in names if n.startswith("--")), names[0])
    return name.lstrip("-").replace("-", "_")


def _arguments(declared) -> list[_Argument] | None:
    """The declared arguments, or None if one is of a kind only argparse reads (nargs, required, other actions)."""
    if any("nargs" in spec or spec.get("required") or spec.get("action") not in ACTION_DEFAULTS
           or (not names[0].startswith("-") and spec.get("action") not in (None, "store"))
           for names, spec in declared):
        return None
    return [_Argument(names, spec) for names, spec in declared]


def plain_values(declared, args: list[str]) -> dict | None:
    """What argparse would make of ``args`` for the ``declared`` arguments, when every word is a positional's
    value or an exact option name (``--opt VALUE``, ``--opt=VALUE``, ``--flag``); None when argparse must read
    them."""
    arguments = _arguments(declared)
    if arguments is None:
        return None
    by_name = {name: argument for argument in arguments for name in argument.options}
    positionals = [argument for argument in arguments if not argument.options]
    words: list[str] = []  # the positionals' values, in order
    given: dict[str, object] = {}  # the options' values
    rest = iter(args)
    for word in rest:
        if not word.startswith("-"):
            words.append(word)
            continue
        name, equals, value = word.partition("=")
        argument = by_name.get(name if equals and name.startswith("--") else word)
        if argument is None:
            return None
        if not argument.takes_value:
            if equals:
                return None  # --flag=x: argparse refuses it
            given[argument.dest] = argument.options[word]
            continue
        if not equals:
            value = next(rest, None)
            if value is None:
                return None
        if value.startswith("-"):
            return None
        given[argument.dest] = argument.convert(value)
    if len(words) != len(positionals):
        return None  # one missing, or one too many: argparse says which
    given.update((argument.dest, argument.convert(word)) for argument, word in zip(positionals, words))
    return _with_defaults(arguments, given)


def _with_defaults(arguments: list[_Argument], given: dict[str, object]) -> dict | None:
    """Every argument's value: what was given, else its default (a string default converted, as argparse
    does); None when a value was refused."""
    values: dict[str, object] = {}
    for argument in arguments:  # in declaration order: of a shared dest's defaults, argparse keeps the first
        if argument.dest in given:
            values[argument.dest] = given[argument.dest]
        elif argument.dest not in values:
            default = argument.default
            values[argument.dest] = argument.convert(default) if isinstance(default, str) else default
    return None if any(value is _REFUSED for value in values.values()) else values
