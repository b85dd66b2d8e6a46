"""What the core API says of one VM (:class:`VmInfo`) and of a power-on (:class:`StartResult`).

:class:`~minivisor.records.Record` classes, not dataclasses (no inspect), in a module that imports
nothing of the core: the client rebuilds them from the service's JSON (:meth:`VmInfo.from_dict`)
on every ``vm list``, ``vm show``, ``vm clone`` and ``vm start`` that goes through a service.

Its specfile's path (a :class:`~pathlib.Path`) and its state (a :class:`~minivisor.vmm.states.VmState`)
are made on first use: what the client rebuilds holds the service's strings until then, since pathlib
(with fnmatch, re, urllib.parse and ipaddress) and enum would cost a ``vm clone``, ``vm register`` or
``vm list`` through a service more CPU than the rest of its client (~10 ms of ~45). What the CLI prints
(:attr:`VmInfo.specfile`, :attr:`VmInfo.state_label`, :meth:`VmInfo.to_dict`) reads the strings.
"""

from __future__ import annotations

import os

from ..records import Record

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

    from ..vmm.states import VmState

__all__ = ["VmInfo", "StartResult"]


class VmInfo(Record):
    """A VM: its identity, its state and the hardware its specfile asks for (read-only by convention).

    ``state_reason``: why QEMU paused it by itself (io-error: the datastore is full). ``host``: in a cluster,
    the host whose datastore holds it, the only one it runs on (None: a single host). ``ha``: whether it is
    restarted elsewhere when its host dies (None: not in a cluster, or not known; only ``vm show`` asks);
    ``replica``: its replication's record (``vm replicate``; None: none, or not known).
    """

    __slots__ = ("name", "uuid", "_vmx", "_state", "display_name", "guest_os", "memory_mib", "cpus", "disks", "nics",
                 "autostart", "pid", "accel", "state_reason", "host", "ha", "replica")
    _fields = ("name", "uuid", "vmx", "state", *__slots__[4:])

    def __init__(self, name: str, uuid: str, vmx: Path | str, state: VmState | str, display_name: str, guest_os: str,
                 memory_mib: int, cpus: int, disks: tuple[dict[str, Any], ...], nics: tuple[dict[str, Any], ...],
                 autostart: bool = False, pid: int | None = None, accel: str | None = None,
                 state_reason: str | None = None, host: str | None = None, ha: bool | None = None,
                 replica: dict[str, Any] | None = None) -> None:
        self.name, self.uuid, self._vmx, self._state = name, uuid, vmx, state
        self.display_name, self.guest_os, self.memory_mib, self.cpus = display_name, guest_os, memory_mib, cpus
        self.disks, self.nics, self.autostart, self.pid = disks, nics, autostart, pid
        self.accel, self.state_reason, self.host, self.ha = accel, state_reason, host, ha
        self.replica = replica

    @property
    def vmx(self) -> Path:
        """The specfile's path (a Path, made from the text the client received when first asked for)."""
        if isinstance(self._vmx, str):
            from pathlib import Path

            self._vmx = Path(self._vmx)
        return self._vmx

    @property
    def specfile(self) -> str:
        """The specfile's path as text (what the CLI prints), without making a Path."""
        return os.fspath(self._vmx)

    @property
    def state(self) -> VmState:
        """The power state (a VmState, made from the text the client received when first asked for)."""
        if type(self._state) is str:
            from ..vmm.states import VmState

            self._state = VmState(self._state)
        return self._state

    @property
    def _state_value(self) -> str:
        return self._state if type(self._state) is str else self._state.value

    @property
    def state_label(self) -> str:
        """The state as users read it: ``paused (io-error)`` for a VM QEMU paused on a fault."""
        return f"{self._state_value} ({self.state_reason})" if self.state_reason else self._state_value

    @property
    def state_hint(self) -> str | None:
        """What to do about a fault, or None."""
        if self.state_reason is None:
            return None
        from ..vmm.states import FAULTS

        return FAULTS[self.state_reason].format(name=self.name) if self.state_reason in FAULTS else None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "uuid": self.uuid, "vmx": self.specfile, "state": self._state_value,
                "state_reason": self.state_reason, "state_hint": self.state_hint,
                "display_name": self.display_name, "guest_os": self.guest_os,
                "memory_mib": self.memory_mib, "cpus": self.cpus, "disks": list(self.disks),
                "nics": list(self.nics), "autostart": self.autostart, "pid": self.pid, "accel": self.accel,
                "host": self.host, "ha": self.ha, "replica": self.replica}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VmInfo:
        """The VmInfo whose :meth:`to_dict` gave ``data``."""
        return cls(data["name"], data["uuid"], data["vmx"], data["state"], data["display_name"],
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
