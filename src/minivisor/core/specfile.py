"""A VM's specfile as text: read it, and replace it with an edit checked as power-on would check it.

What the user sends is written byte for byte (comments, order and keys minivisor
does not know stay as they are), or not at all: the edit is parsed with the
project's own reader and checked with the code power-on runs
(:func:`minivisor.vmm.plan.check_document`, under the VM's path policy) first.
Every refusal names the line it is about (``SpecError.line``), so an editor can
show it there. The stamp (a digest of the file's bytes) makes a save fail
rather than overwrite an edit someone else saved meanwhile.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from ..digest import sha256
from ..errors import ArgumentError, ConflictError, SpecError, host_refused
from ..files import write_atomic
from ..spec.fidelity import KeyNote
from ..spec.vmx import VMX_LIMITS, VmxDocument, read_bounded
from ..vmm.plan import check_document
from .context import VmContext

__all__ = ["read", "replace", "save_edit", "stamp_of"]


def stamp_of(data: bytes) -> str:
    """What tells two versions of a specfile apart (its content: an mtime may not change within a write)."""
    return sha256(data).hexdigest()


def read(ctx: VmContext) -> dict[str, Any]:
    """The specfile's text (in the charset its ``.encoding`` names) and its stamp."""
    data = read_bounded(ctx.vmx, VMX_LIMITS.file_bytes)
    codec = VmxDocument.parse(data, source=str(ctx.vmx)).encoding
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as exc:  # shown as it is not, it would be saved as it was not
        line = data.count(b"\n", 0, exc.start) + 1
        raise SpecError(f"line {line} of the specfile of VM {ctx.name!r} is not valid {codec}, so it cannot be "
                        "edited as text", hint="fix that line on the host, or name the file's charset in .encoding",
                        line=line) from None
    return {"text": text, "stamp": stamp_of(data)}


def replace(ctx: VmContext, text: str, stamp: str) -> dict[str, Any]:
    """Write ``text`` as the (powered-off) VM's specfile if it was at ``stamp`` and the edit checks out.

    Returns the new stamp and what power-on would say (``powers_on``, ``warnings``); raises
    ConflictError for a stale stamp, SpecError (PathError) with the line for an edit that does not check out."""
    data = _encoded(text)
    current = read_bounded(ctx.vmx, VMX_LIMITS.file_bytes)
    if stamp != stamp_of(current):
        raise ConflictError(f"the specfile of VM {ctx.name!r} has changed since it was read",
                            hint="reload it, make your change again and save")
    return _write_checked(ctx, VmxDocument.parse(data, source=ctx.vmx.name), data, "specfileChanged")


def save_edit(ctx: VmContext, doc: VmxDocument, event: str, *, write: Callable[[bytes], None] | None = None,
              **details: Any) -> dict[str, Any]:
    """Write ``doc``, the (powered-off) VM's specfile as read and then changed by the core (a structured edit:
    CPUs, memory, a disk), if power-on's checks pass, as :func:`replace` writes a user's text; ``event`` (with
    ``details``) says what changed; ``write`` writes the bytes [default: atomically, in place]. Returns what
    :func:`replace` returns."""
    return _write_checked(ctx, doc, doc.to_bytes(), event, write=write, **details)


def _write_checked(ctx: VmContext, doc: VmxDocument, data: bytes, event: str, *,
                   write: Callable[[bytes], None] | None = None, **details: Any) -> dict[str, Any]:
    """``data`` (the bytes of ``doc``) as the VM's specfile once ``doc`` checks out; nothing written otherwise."""
    notes = _checked(ctx, doc)
    try:
        if write is None:
            write_atomic(ctx.vmx, data, mode=0o600)
        else:
            write(data)
    except OSError as exc:  # the file or its folder is immutable or read-only: the old specfile stays
        raise host_refused(f"write {ctx.vmx}", exc) from exc
    ctx.inventory.summaries([ctx.entry])  # the cached summary (vm list, the inventory) is the new file's
    new_stamp = stamp_of(data)
    ctx.emit(event, stamp=new_stamp, **details)
    refused = [note.warning for note in notes if note.verdict == "refused"]
    return {"stamp": new_stamp, "powers_on": not refused,
            "warnings": refused + [note.warning for note in notes if note.warns]}


def _encoded(text: str) -> bytes:
    """``text`` as the bytes of a specfile, in the charset its ``.encoding`` line names (the line is ASCII)."""
    if len(text) > VMX_LIMITS.file_bytes:  # before encoding it: a character takes a byte at least
        raise _too_big(len(text))
    codec = VmxDocument.parse(text.encode("utf-8", "replace")[:VMX_LIMITS.file_bytes]).encoding
    try:
        data = text.encode(codec)
    except UnicodeEncodeError as exc:  # JSON can carry a lone surrogate; a charset may lack a character
        line = text.count("\n", 0, exc.start) + 1
        raise SpecError(f"line {line} has a character the file's encoding {codec} cannot store",
                        hint='remove it, or set .encoding = "UTF-8"', line=line) from None
    if len(data) > VMX_LIMITS.file_bytes:
        raise _too_big(len(data))
    return data


def _too_big(size: int) -> ArgumentError:
    return ArgumentError(f"the specfile would be {size} bytes, more than the {VMX_LIMITS.file_bytes} minivisor reads",
                         hint="a specfile is a few KB: remove what does not belong in it")


def _checked(ctx: VmContext, doc: VmxDocument) -> tuple[KeyNote, ...]:
    """What power-on would make of ``doc`` in the VM's folder under its path policy; a refusal gets its line."""
    try:
        _, notes = check_document(doc, ctx.vmx, ctx.scope, ctx.networks().for_plan(ctx.uuid))
    except SpecError as exc:
        if exc.line is None:
            exc.line = _line_named(doc, exc.message)
        raise
    return notes


def _line_named(doc: VmxDocument, message: str) -> int | None:
    """The line of the key a message names (the path policy and the host checks name keys, not lines): the
    longest key found in it as a whole word (a message naming ``scsi0:0.fileName`` may also name ``scsi0:0``)."""
    lowered = message.lower()
    named = [key for key, _ in doc.items()
             if re.search(r"(?<![\w.:])" + re.escape(key.lower()) + r"(?![\w.:])", lowered)]
    return doc.line_of(max(named, key=len)) if named else None
