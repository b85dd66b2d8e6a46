"""What can name a VM (and its folder in the datastore).

A module of its own, with nothing but the errors: the client checks names too (a "/" sent in a path would
reach another route), on every CLI command that goes through a service. For the same reason the rule is
checked character by character, without ``re`` (whose import, with enum, would cost such a command ~3 ms);
:data:`VM_NAME`, the same rule as a regex (the OpenAPI document's pattern, the datastore's scans), is
compiled when a module first asks for it.
"""

from __future__ import annotations

from ..errors import SpecError
from ..text import excerpt

__all__ = ["VM_NAME", "VM_NAME_RULE", "is_vm_name", "check_vm_name"]

VM_NAME_RULE = r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z"  # \Z: "$" would let a final newline in
_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")  # ASCII: str.isalnum() is not
_OTHERS = _FIRST | frozenset("._-")


def is_vm_name(name: str) -> bool:
    """Whether ``name`` follows :data:`VM_NAME_RULE` (1-63 ASCII letters, digits, '.', '_', '-'; a letter or digit
    first)."""
    return 0 < len(name) <= 63 and name[0] in _FIRST and _OTHERS.issuperset(name)


def check_vm_name(name: str) -> str:
    """Return the name if it can name a VM (and its folder), else raise SpecError."""
    if not is_vm_name(name) or name.endswith((".tmp", ".vmx")):
        raise SpecError(f"{excerpt(name)} is not a valid VM name",
                        hint="use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


def __getattr__(attribute: str):
    """:data:`VM_NAME`, compiled at its first use."""
    if attribute != "VM_NAME":
        raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")
    import re

    globals()["VM_NAME"] = pattern = re.compile(VM_NAME_RULE)
    return pattern
