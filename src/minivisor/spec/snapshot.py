"""One snapshot of a VM, a node of its tree (:class:`minivisor.spec.vmsd.SnapshotTree`).

A plain class in a module of its own: what ``snapshot take`` returns, which the client rebuilds
from the service's answer on every snapshot command, without the ``.vmsd`` reader (the specfile
parser) and without dataclasses (a :class:`~minivisor.records.Record`).
"""

from __future__ import annotations

from ..records import Record

__all__ = ["Snapshot"]


class Snapshot(Record):
    """One node of the tree.

    ``disks``: node (scsi0:0) -> frozen file name, as the specfile named it; ``created_us``:
    microseconds since the epoch, as VMware stores it; ``memory_file``: the .vmsn with memory and
    device state (powered-on snapshots); ``config``: the specfile when it was taken (restored on
    revert, like VMware's .vmsn); ``ready_line``: what a guest that had said it was ready said (memory
    snapshots).
    """

    __slots__ = ("uid", "name", "parent", "disks", "description", "created_us", "memory_file", "config",
                 "ready_line")

    def __init__(self, uid: int, name: str, parent: int | None, disks: dict[str, str], description: str = "",
                 created_us: int = 0, memory_file: str | None = None, config: str | None = None,
                 ready_line: str | None = None) -> None:
        self.uid, self.name, self.parent, self.disks = uid, name, parent, disks
        self.description, self.created_us, self.memory_file = description, created_us, memory_file
        self.config, self.ready_line = config, ready_line

    def to_dict(self) -> dict[str, object]:
        return {"uid": self.uid, "name": self.name, "parent": self.parent, "description": self.description,
                "created": self.created_us / 1e6, "memory": self.memory_file is not None,
                "memory_file": self.memory_file, "disks": dict(self.disks)}
