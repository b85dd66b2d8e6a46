"""What can name a VM (and its folder in the datastore).

A module of its own, with nothing but ``re`` and the errors: the client checks names too
(a "/" sent in a path would reach another route), on every CLI command that goes through a service.
"""

from __future__ import annotations

import re

from ..errors import SpecError
from ..text import excerpt

__all__ = ["VM_NAME", "check_vm_name"]

VM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")  # \Z: "$" would let a final newline in


def check_vm_name(name: str) -> str:
    """Return the name if it can name a VM (and its folder), else raise SpecError."""
    if not VM_NAME.match(name) or name.endswith((".tmp", ".vmx")):
        raise SpecError(f"{excerpt(name)} is not a valid VM name",
                        hint="use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name
