"""The snapshot tree of a VM as VMware keeps it: the ``.vmsd`` next to its specfile.

VMware's keys (``snapshot.lastUID``, ``snapshotN.uid``, ``.parent``,
``.displayName``, ``.diskM.node``/``.fileName``, ``.filename`` for the memory
state...) read and written with :class:`~minivisor.spec.vmx.VmxDocument`, so
an unchanged tree round-trips. A ``.vmsd`` is input like a specfile: its size,
its number of snapshots and each snapshot's number of disks are bounded
(:data:`VMSD_LIMITS`, :data:`MAX_SNAPSHOTS`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from ..errors import ConflictError, NotFoundError, SpecError
from ..records import Record, default_factory
from ..text import excerpt, is_number
from .devices import CONTROLLER_COUNT, UNIT_COUNT
from .snapshot import Snapshot
from .vmx import VMX_LIMITS, Limits, VmxDocument

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from typing import Any

__all__ = ["Snapshot", "SnapshotTree", "vmsd_path", "MAX_SNAPSHOTS", "VMSD_LIMITS"]

_SLOT_UID = re.compile(r"snapshot(\d{1,9})\.uid$", re.IGNORECASE)
_SLOT = re.compile(r"snapshot(\d+)\.", re.IGNORECASE)  # any key of a slot, read or not
_MAX_SLOT = 10**9 - 1  # the largest slot number the reader takes
MAX_SNAPSHOTS = 100  # per VM; VMware supports 32 in a chain
MAX_UID = 1 << 32  # a snapshot's uid is read as VMware writes it: 32 bits (see _int)
MAX_DISKS = sum(CONTROLLER_COUNT[bus] * UNIT_COUNT[bus] for bus in CONTROLLER_COUNT)  # device slots of a VM
# Each snapshot keeps its specfile on one line, |XX-escaped: up to 3 bytes for each of the specfile's.
VMSD_LIMITS = Limits(file_bytes=32 * 1024 * 1024, lines=MAX_SNAPSHOTS * (12 + 2 * MAX_DISKS),
                     line_bytes=3 * VMX_LIMITS.file_bytes + 1024)


class SnapshotTree(Record):
    """The ``.vmsd`` contents."""

    snapshots: dict[int, Snapshot] = default_factory(dict)
    current: int | None = None
    last_uid: int = 0

    @classmethod
    def load(cls, path: Path) -> SnapshotTree:
        return cls.read(path)[0]

    @classmethod
    def read(cls, path: Path) -> tuple[SnapshotTree, VmxDocument | None]:
        """The tree, and the file as read (None if there is none): :meth:`bytes_with` adds to it."""
        try:
            doc = VmxDocument.load(path, VMSD_LIMITS)
        except FileNotFoundError:
            return cls(), None
        doc.raise_for_errors()
        return cls._from_document(doc, path), doc

    @classmethod
    def _from_document(cls, doc: VmxDocument, path: Path) -> SnapshotTree:
        tree = cls(last_uid=_int(doc.get("snapshot.lastUID")) or 0, current=_int(doc.get("snapshot.current")))
        slots = sorted({int(m.group(1)) for key in doc.keys_with_prefix("snapshot") if (m := _SLOT_UID.match(key))})
        if len(slots) > MAX_SNAPSHOTS:
            raise SpecError(f"{path} lists {len(slots)} snapshots, more than the {MAX_SNAPSHOTS} minivisor keeps",
                            hint="this is not a tree minivisor wrote: restore the VM's .vmsd from a backup")
        for slot in slots:
            p = f"snapshot{slot}."
            uid = _int(doc.get(p + "uid"))
            if uid is None:
                continue
            if uid in tree.snapshots:  # one would hide the other, and the next rewrite of the tree drop it
                raise SpecError(f"{path}: two snapshots have the uid {uid} ({excerpt(tree.snapshots[uid].name)} and "
                                f"snapshot{slot})", hint="this is not a tree minivisor wrote: restore the VM's .vmsd "
                                                         "from a backup")
            disks = {}
            for m in range(_disk_count(doc, p, path)):
                node, name = doc.get(f"{p}disk{m}.node"), doc.get(f"{p}disk{m}.fileName")
                if node and name:
                    disks[node.lower()] = name
            high, low = _int(doc.get(p + "createTimeHigh")) or 0, _int(doc.get(p + "createTimeLow")) or 0
            tree.snapshots[uid] = Snapshot(uid, doc.get(p + "displayName") or f"snapshot {uid}",
                                           _int(doc.get(p + "parent")), disks, doc.get(p + "description") or "",
                                           (high << 32) | (low & 0xFFFFFFFF), doc.get(p + "filename") or None,
                                           doc.get(p + "minivisor.config") or None,
                                           doc.get(p + "minivisor.readyLine") or None)
            tree.last_uid = max(tree.last_uid, uid)
        if tree.current not in tree.snapshots:
            tree.current = None
        _refuse_loops(tree, path)
        return tree

    def to_bytes(self) -> bytes:
        doc = VmxDocument.parse(b'.encoding = "UTF-8"\n', limits=VMSD_LIMITS)
        doc.set_many(self._entries())
        return doc.to_bytes()

    def bytes_with(self, snap: Snapshot, doc: VmxDocument | None) -> bytes:
        """The file of this tree (read from ``doc``) with ``snap`` added as the current snapshot.

        Only the new snapshot's keys and the tree's counters are written into the file as it was read, at a
        slot after every slot it uses (VMware's files may number them sparsely; snapshots are listed in slot
        order): not the whole tree again, whose keys grow with every snapshot. Without ``doc``, written whole.
        """
        tree = SnapshotTree({**self.snapshots, snap.uid: snap}, snap.uid, max(self.last_uid, snap.uid))
        used = [int(m.group(1)) for key in doc.keys_with_prefix("snapshot") if (m := _SLOT.match(key))] if doc else []
        slot = max(used, default=-1) + 1
        if doc is None or slot > _MAX_SLOT:
            return tree.to_bytes()
        doc = doc.copy()
        try:
            doc.set_many([("snapshot.lastUID", str(tree.last_uid)), ("snapshot.current", str(snap.uid)),
                          ("snapshot.numSnapshots", str(len(tree.snapshots))), *_snapshot_entries(slot, snap)])
        except SpecError:  # a value the file's own charset cannot hold (a VMware tree in windows-1252): UTF-8
            return tree.to_bytes()
        return doc.to_bytes()

    def _entries(self) -> Iterator[tuple[str, str]]:
        """The tree's keys and values, in the order the file lists them."""
        yield "snapshot.lastUID", str(self.last_uid)
        if self.current is not None:
            yield "snapshot.current", str(self.current)
        yield "snapshot.numSnapshots", str(len(self.snapshots))
        for slot, snap in enumerate(self.snapshots.values()):
            yield from _snapshot_entries(slot, snap)

    # -- queries -----------------------------------------------------------
    @property
    def next_uid(self) -> int:
        """The uid of the next snapshot: past the last one, unless that is past the 32 bits the tree is read with
        (a .vmsd may say lastUID = 4294967295): then the lowest free one, else the new snapshot, written, would
        be dropped when the tree is read back."""
        if self.last_uid + 1 < MAX_UID:
            return self.last_uid + 1
        return next(uid for uid in range(1, MAX_UID) if uid not in self.snapshots)

    def find(self, name: str, vm: str) -> Snapshot:
        """A snapshot by name (or uid), or NotFoundError."""
        matches = [s for s in self.snapshots.values() if s.name == name]
        if not matches and is_number(name, 10) and int(name) in self.snapshots:
            matches = [self.snapshots[int(name)]]
        if not matches:
            names = ", ".join(s.name for s in self.snapshots.values()) or "none"
            raise NotFoundError(f"VM {vm!r} has no snapshot named {excerpt(name)}",
                                hint=f"its snapshots: {names} (see: minivisor snapshot list {vm})")
        if len(matches) > 1:
            raise ConflictError(f"VM {vm!r} has {len(matches)} snapshots named {excerpt(name)}",
                                hint="name it by its uid instead: minivisor snapshot list " + vm)
        return matches[0]

    def children(self, uid: int | None) -> list[Snapshot]:
        return [s for s in self.snapshots.values() if s.parent == uid]

    def ancestors(self, uid: int | None) -> list[int]:
        """uid, its parent, ... up to the root."""
        chain = []
        while uid is not None and uid in self.snapshots and uid not in chain:
            chain.append(uid)
            uid = self.snapshots[uid].parent
        return chain

    def files(self) -> set[str]:
        return {name for snap in self.snapshots.values() for name in snap.disks.values()}

    def to_list(self) -> list[dict[str, Any]]:
        """Depth-first, each with its depth and whether it is the current position."""
        out: list[dict[str, Any]] = []

        def visit(snap: Snapshot, depth: int) -> None:
            out.append({**snap.to_dict(), "depth": depth, "current": snap.uid == self.current})
            for child in self.children(snap.uid):
                visit(child, depth + 1)

        for root in [s for s in self.snapshots.values() if s.parent not in self.snapshots]:
            visit(root, 0)
        return out


def _snapshot_entries(slot: int, snap: Snapshot) -> Iterator[tuple[str, str]]:
    """One snapshot's keys and values at ``slot``, in the order the file lists them."""
    p = f"snapshot{slot}."
    yield p + "uid", str(snap.uid)
    if snap.parent is not None:
        yield p + "parent", str(snap.parent)
    if snap.memory_file:
        yield p + "filename", snap.memory_file
    yield p + "displayName", snap.name
    if snap.description:
        yield p + "description", snap.description
    yield p + "type", "1" if snap.memory_file else "0"
    high, low = snap.created_us >> 32, snap.created_us & 0xFFFFFFFF
    yield p + "createTimeHigh", str(high)
    yield p + "createTimeLow", str(low - (1 << 32) if low >= 1 << 31 else low)  # signed, like VMware
    yield p + "numDisks", str(len(snap.disks))
    for m, (node, name) in enumerate(snap.disks.items()):
        yield f"{p}disk{m}.fileName", name
        yield f"{p}disk{m}.node", node
    if snap.config:
        yield p + "minivisor.config", snap.config  # escaped onto one line (|0A)
    if snap.ready_line:
        yield p + "minivisor.readyLine", snap.ready_line


def _refuse_loops(tree: SnapshotTree, path: Path) -> None:
    """A snapshot that is its own ancestor is in no listing (none of its ancestors is a root), and deleting it
    hands its children to itself: it was still there after 'deleted', and the disks of the loop merged away."""
    for uid, snap in tree.snapshots.items():
        if snap.parent is not None and snap.parent in tree.snapshots and uid in tree.ancestors(snap.parent):
            raise SpecError(f"{path}: snapshot {excerpt(snap.name)} (uid {uid}) is its own ancestor: the tree's "
                            "parent links loop", hint="this is not a tree minivisor wrote: restore the VM's .vmsd "
                                                      "from a backup")


def _int(value: str | None) -> int | None:
    """A number as VMware writes them in a .vmsd (32 bits, signed or not), else None."""
    try:
        number = int(value) if value and len(value) <= 12 else None
    except ValueError:
        return None
    return number if number is not None and -(1 << 31) <= number < MAX_UID else None


def _disk_count(doc: VmxDocument, prefix: str, path: Path) -> int:
    count = _int(doc.get(prefix + "numDisks")) or 0
    if not 0 <= count <= MAX_DISKS:
        raise SpecError(f"{path}: {prefix}numDisks = {count} is not a number of disks a VM can have (0 to {MAX_DISKS})",
                        hint="this is not a tree minivisor wrote: restore the VM's .vmsd from a backup")
    return count


def vmsd_path(vmx: Path) -> Path:
    return vmx.with_suffix(".vmsd")
