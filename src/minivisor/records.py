"""Plain data classes without the dataclasses module, for the results a client rebuilds.

``dataclasses`` imports ``inspect`` (and with it ast, dis, tokenize): ~10 ms of a CLI command
through a service that takes ~50. A :class:`Record` declares its fields in ``__slots__`` and its
own ``__init__``, and gets equality, a repr and :meth:`Record.replace` from them, as a dataclass
would.
"""

from __future__ import annotations

__all__ = ["Record"]


class Record:
    """Equality, repr and replace from the fields named in a subclass's ``__slots__``."""

    __slots__ = ()

    def _values(self) -> tuple:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return self._values() == other._values() if type(other) is type(self) else NotImplemented

    __hash__ = None  # equal by value, and nothing keeps them from changing: not hashable, like a plain dataclass

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{name}={getattr(self, name)!r}' for name in self.__slots__)})"

    def replace(self, **changes: object) -> Record:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return type(self)(**{**{name: getattr(self, name) for name in self.__slots__}, **changes})
