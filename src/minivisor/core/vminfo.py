"""What the core API says of one VM (:class:`VmInfo`) and of a power-on (:class:`StartResult`).

:class:`~minivisor.records.Record` classes, not dataclasses (no inspect), in a module that imports
nothing of the core: the client rebuilds them from the service's JSON (:meth:`VmInfo.from_dict`)
on every ``vm list``, ``vm show``, ``vm clone`` and ``vm start`` that goes through a service.
"""

from __future__ import annotations

from pathlib import Path

from ..records import Record
from ..vmm.states import FAULTS, VmState

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from typing import Any

__all__ = ["VmInfo", "StartResult"]


class VmInfo(Record):
    """A VM: its identity, its state and the hardware its specfile asks for (read-only by convention).

    ``state_reason``: why QEMU paused it by itself (io-error: the datastore is full). ``host``: in a cluster,
    the host whose datastore holds it, the only one it runs on (None: a single host). ``ha``: whether it is
    restarted elsewhere when its host dies (None: not in a cluster, or not known; only ``vm show`` asks);
    ``replica``: its replication's record (``vm replicate``; None: none, or not known).
    """

    __slots__ = ("name", "uuid", "vmx", "state", "display_name", "guest_os", "memory_mib", "cpus", "disks", "nics",
                 "autostart", "pid", "accel", "state_reason", "host", "ha", "replica")

    def __init__(self, name: str, uuid: str, vmx: Path, state: VmState, display_name: str, guest_os: str,
                 memory_mib: int, cpus: int, disks: tuple[dict[str, Any], ...], nics: tuple[dict[str, Any], ...],
                 autostart: bool = False, pid: int | None = None, accel: str | None = None,
                 state_reason: str | None = None, host: str | None = None, ha: bool | None = None,
                 replica: dict[str, Any] | None = None) -> None:
        self.name, self.uuid, self.vmx, self.state = name, uuid, vmx, state
        self.display_name, self.guest_os, self.memory_mib, self.cpus = display_name, guest_os, memory_mib, cpus
        self.disks, self.nics, self.autostart, self.pid = disks, nics, autostart, pid
        self.accel, self.state_reason, self.host, self.ha = accel, state_reason, host, ha
        self.replica = replica

    @property
    def state_label(self) -> str:
        """The state as users read it: ``paused (io-error)`` for a VM QEMU paused on a fault."""
        return f"{self.state.value} ({self.state_reason})" if self.state_reason else self.state.value

    @property
    def state_hint(self) -> str | None:
        """What to do about a fault, or None."""
        return FAULTS[self.state_reason].format(name=self.name) if self.state_reason in FAULTS else None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "uuid": self.uuid, "vmx": str(self.vmx), "state": self.state.value,
                "state_reason": self.state_reason, "state_hint": self.state_hint,
                "display_name": self.display_name, "guest_os": self.guest_os,
                "memory_mib": self.memory_mib, "cpus": self.cpus, "disks": list(self.disks),
                "nics": list(self.nics), "autostart": self.autostart, "pid": self.pid, "accel": self.accel,
                "host": self.host, "ha": self.ha, "replica": self.replica}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VmInfo:
        """The VmInfo whose :meth:`to_dict` gave ``data``."""
        return cls(data["name"], data["uuid"], Path(data["vmx"]), VmState(data["state"]), data["display_name"],
                   data["guest_os"], data["memory_mib"], data["cpus"], tuple(data["disks"]), tuple(data["nics"]),
                   data["autostart"], data["pid"], data["accel"], data["state_reason"], data["host"], data.get("ha"),
                   data.get("replica"))


class StartResult(Record):
    """A powered-on VM, with the warnings the user should see; ``host``: the cluster's host it runs on (None on a
    single host)."""

    __slots__ = ("vm", "warnings", "ready_line", "host")

    def __init__(self, vm: VmInfo, warnings: tuple[str, ...] = (), ready_line: str | None = None,
                 host: str | None = None) -> None:
        self.vm, self.warnings, self.ready_line, self.host = vm, warnings, ready_line, host

    def to_dict(self) -> dict[str, Any]:
        return {"vm": self.vm.to_dict(), "warnings": list(self.warnings), "ready_line": self.ready_line,
                "host": self.host}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StartResult:
        return cls(VmInfo.from_dict(data["vm"]), tuple(data["warnings"]), data["ready_line"], data.get("host"))
