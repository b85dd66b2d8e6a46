"""The bounds of the core API's arguments, checked before an operation does any work.

Every interface (the CLI, the REST service, Python callers) reaches the core
through :class:`~minivisor.core.hypervisor.Hypervisor`, whose public methods call
:func:`check_args` first: a NaN timeout, a negative count or a petabyte disk is
refused the same way everywhere, as an :class:`~minivisor.errors.ArgumentError`
(exit status 2, HTTP 400), and nothing has changed when it is.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import ArgumentError, DiskError
from ..text import excerpt
from ..units import parse_size

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from typing import Any

__all__ = ["check_args", "MAX_TIMEOUT", "MAX_EVENTS", "MAX_COMMAND", "MAX_SIZE_TEXT", "MAX_SNAPSHOT_NAME",
           "MAX_DESCRIPTION"]

MAX_TIMEOUT = 24 * 3600.0  # seconds: longer than any boot, shutdown or command minivisor waits for
MAX_EVENTS = 100_000  # events.jsonl holds far fewer (LOG_CAP bytes per generation); 0 means all
MAX_GUEST_PATH = 4095  # characters of a path in the guest (Linux's PATH_MAX, less its NUL)
MAX_COMMAND = 4096  # characters of a guest command line (the serial console's line is 4095 bytes)
MAX_SIZE_TEXT = 32  # characters of a size such as "20G"
MAX_SNAPSHOT_NAME = 128  # characters
MAX_DESCRIPTION = 4096  # characters of a snapshot's description


def check_args(**args: Any) -> None:
    """Refuse the first argument outside its bounds, by the parameter's name (``timeout=...``)."""
    for name, value in args.items():
        _CHECKS[name](name, value)


def _number(low: float, high: float, unit: str = "", *, whole: bool = False) -> Callable[[str, Any], None]:
    kind = "a whole number" if whole else "a number"

    def check(name: str, value: Any) -> None:
        hint = f"give {name} as {kind} from {low:.0f} to {high:.0f}{unit}"
        if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
            raise ArgumentError(f"{name} must be {kind}, not {_shown(value)}", hint=hint)
        # NaN compares false with everything, so it fails this test too; ints never overflow it
        if not low <= value <= high:
            raise ArgumentError(f"{name} = {_shown(value)} is out of range", hint=hint)
    return check


def _spec_number(bounds: str, unit: str = "") -> Callable[[str, Any], None]:
    """A whole number within ``minivisor.spec.vmspec.<bounds>``, imported when first checked (`vm list` never is)."""
    def check(name: str, value: Any) -> None:
        from ..spec import vmspec

        _number(*getattr(vmspec, bounds), unit, whole=True)(name, value)
    return check


def _text(limit: int) -> Callable[[str, Any], None]:
    def check(name: str, value: Any) -> None:
        parts = value if isinstance(value, list) else [value]  # a command may come as its words
        if not all(isinstance(part, str) for part in parts):
            raise ArgumentError(f"{name} must be text, not {_shown(value)}", hint=f"give {name} as a string")
        length = sum(len(part) + 1 for part in parts) - 1
        if length > limit:
            raise ArgumentError(f"{name} is {length} characters long", hint=f"give at most {limit} characters")
    return check


def _shown(value: Any) -> str:
    """A rejected argument in a message: numbers as Python writes them, anything else as a short excerpt."""
    if isinstance(value, float):
        return repr(value)  # nan, inf, -5.0
    if isinstance(value, int):  # str() of a 5,000-digit int raises: say how big it is instead
        return str(value) if value.bit_length() <= 128 else f"a {value.bit_length()}-bit number"
    return excerpt(value) if isinstance(value, str) else type(value).__name__


def _size(name: str, value: Any) -> None:
    """A size such as ``20G``: well-formed, and no larger than a disk minivisor creates or imports."""
    from ..storage.vmware import MAX_VIRTUAL_SIZE  # as vmspec above: only a size to check needs it

    if value is None:
        return
    _text(MAX_SIZE_TEXT)(name, value)
    try:
        size = parse_size(value)
    except DiskError as exc:  # a malformed size is a bad argument, not a bad disk
        raise ArgumentError(exc.message, hint=exc.hint) from None
    if size > MAX_VIRTUAL_SIZE:
        raise ArgumentError(f"{name} = {excerpt(value)} is larger than the {MAX_VIRTUAL_SIZE >> 40} TiB "
                            "minivisor creates", hint="give a smaller size, e.g. 100G")


_CHECKS: dict[str, Callable[[str, Any], None]] = {
    "timeout": _number(0, MAX_TIMEOUT, " seconds"),
    "limit": _number(0, MAX_EVENTS, whole=True),
    "memory_mib": _spec_number("MEMORY_MIB", " MiB"),
    "cpus": _spec_number("VCPUS"),
    "size": _size,
    "disk_size": _size,
    "command": _text(MAX_COMMAND),
    "guest_path": _text(MAX_GUEST_PATH),
    "snapshot": _text(MAX_SNAPSHOT_NAME),
    "description": _text(MAX_DESCRIPTION),
}
