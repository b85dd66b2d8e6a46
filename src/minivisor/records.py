"""Plain data classes without the dataclasses module: cheap to define, cheap to import.

``dataclasses`` imports ``inspect`` (and with it ast, dis, tokenize): ~10 ms, and it writes and
compiles (``exec``) each class's ``__init__``, ``__repr__``, ``__eq__`` (and ``__setattr__``,
``__hash__`` when frozen): ~0.5-1 ms a class. A power-on defines about fifty: with dataclasses that
was a third of the CLI's work before QEMU starts. A :class:`Record` gets the same behaviour from
plain methods that read its field names, with no code generated.

A record names its fields in one of two ways:

- as class annotations, with defaults as class attributes (as a dataclass does; a mutable default
  is a :func:`default_factory`): it gets an ``__init__`` taking them by position or name;
- in ``__slots__``, with its own ``__init__`` (the results a client rebuilds: smallest and fastest); a
  ``_fields`` of its own then names them where a field is a property over a slot of another name (made
  on first use, such as a path the client should not import pathlib for).

``frozen=True`` in the class statement makes assigning a field afterwards an error, and makes the
record hashable by value, as ``dataclass(frozen=True)`` does.
"""

from __future__ import annotations

__all__ = ["Record", "default_factory", "as_dict"]


class _Factory:
    __slots__ = ("make",)

    def __init__(self, make) -> None:
        self.make = make


def default_factory(make) -> object:
    """A default made anew for each record that does not get the field (a list, a dict, the time)."""
    return _Factory(make)


class Record:
    """Equality, repr and replace from a subclass's fields (its annotations, or its ``__slots__``)."""

    __slots__ = ()
    _fields: tuple[str, ...] = ()
    _defaults: dict[str, object] = {}

    def __init_subclass__(cls, frozen: bool = False, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "__slots__" in cls.__dict__:
            cls._fields = cls.__dict__.get("_fields", tuple(cls.__slots__))
            return
        own = tuple(cls.__dict__.get("__annotations__", {}))
        cls._fields = cls._fields + tuple(name for name in own if name not in cls._fields)
        cls._defaults = {**cls._defaults, **{name: cls.__dict__[name] for name in own if name in cls.__dict__}}
        if "__init__" not in cls.__dict__:
            cls.__init__ = _init
        if frozen:
            cls.__setattr__ = cls.__delattr__ = _refuse_change
            cls.__hash__ = _hash_values

    def _values(self) -> tuple:
        return tuple(getattr(self, name) for name in self._fields)

    def __eq__(self, other: object) -> bool:
        return self._values() == other._values() if type(other) is type(self) else NotImplemented

    __hash__ = None  # equal by value, and (unless frozen) nothing keeps them from changing: not hashable

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{name}={getattr(self, name)!r}' for name in self._fields)})"

    def replace(self, **changes: object) -> Record:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return type(self)(**{**{name: getattr(self, name) for name in self._fields}, **changes})


def _init(self: Record, *args: object, **kwargs: object) -> None:
    """A record's fields from its arguments, by position then by name, else from their defaults."""
    cls = type(self)
    fields = cls._fields
    if len(args) > len(fields):
        raise TypeError(f"{cls.__name__}() takes {len(fields)} arguments but {len(args)} were given")
    values = dict(zip(fields, args))
    for name, value in kwargs.items():
        if name in values or name not in fields:
            raise TypeError(f"{cls.__name__}() got {'multiple values for' if name in values else 'an unexpected'} "
                            f"argument {name!r}")
        values[name] = value
    for name in fields:
        if name not in values:
            if name not in cls._defaults:
                raise TypeError(f"{cls.__name__}() missing argument {name!r}")
            default = cls._defaults[name]
            values[name] = default.make() if isinstance(default, _Factory) else default
        object.__setattr__(self, name, values[name])
    post_init = getattr(self, "__post_init__", None)
    if post_init is not None:
        post_init()


def _refuse_change(self: Record, name: str, *value: object) -> None:
    raise AttributeError(f"cannot change field {name!r} of a {type(self).__name__}: it is frozen")


def _hash_values(self: Record) -> int:
    return hash(self._values())


def as_dict(value: object) -> object:
    """A record as a dict of its fields, nested records, lists, tuples and dicts converted too
    (``dataclasses.asdict``); anything else as it is."""
    if isinstance(value, Record):
        return {name: as_dict(getattr(value, name)) for name in value._fields}
    if isinstance(value, (list, tuple)):
        return type(value)(as_dict(item) for item in value)
    if isinstance(value, dict):
        return {key: as_dict(item) for key, item in value.items()}
    return value
