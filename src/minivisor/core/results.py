"""What the core API returns: plain data the CLI prints and the service sends as JSON.

Apart from :mod:`minivisor.core.hypervisor` so that reading them costs little: the
client (:mod:`minivisor.client`) rebuilds them from the service's JSON without
importing the core, and ``vm list`` through the service stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..vmm.states import FAULTS, VmState

if TYPE_CHECKING:  # only `vm explain` needs them (the client imports them when it rebuilds an Explanation)
    from ..spec.vmspec import VmSpec
    from ..vmm.argv import VirtualDevice

__all__ = ["VmInfo", "StartResult", "Explanation", "NetworkInfo"]


@dataclass(frozen=True)
class VmInfo:
    """A VM: its identity, its state and the hardware its specfile asks for."""

    name: str
    uuid: str
    vmx: Path
    state: VmState
    display_name: str
    guest_os: str
    memory_mib: int
    cpus: int
    disks: tuple[dict[str, Any], ...]
    nics: tuple[dict[str, Any], ...]
    autostart: bool = False
    pid: int | None = None
    accel: str | None = None
    state_reason: str | None = None  # why QEMU paused it by itself (io-error: the datastore is full)

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
                "nics": list(self.nics), "autostart": self.autostart, "pid": self.pid, "accel": self.accel}


@dataclass(frozen=True)
class StartResult:
    """A powered-on VM, with the warnings the user should see."""

    vm: VmInfo
    warnings: tuple[str, ...] = ()
    ready_line: str | None = None


@dataclass(frozen=True)
class Explanation:
    """How a specfile becomes a VMM: the spec, the devices, what is left out, the argv."""

    spec: VmSpec
    hardware: tuple[VirtualDevice, ...]
    argv: tuple[str, ...]
    warnings: tuple[str, ...] = field(default=())



@dataclass(frozen=True)
class NetworkInfo:
    """A virtual network: its definition, and what of it exists on the host now."""

    name: str
    mode: str  # nat, isolated, bridged
    subnet: str | None  # 192.168.100.0/24 (None: bridged)
    gateway: str | None  # the host's address on it
    dhcp: bool
    bridge: str | None
    uplink: str | None  # bridged: the host interface
    state: str  # active, inactive (made when a VM needs it), user-mode (this host makes no networks)
    dhcp_pid: int | None = None
    vms: tuple[str, ...] = ()  # the running VMs with a NIC on it

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "mode": self.mode, "subnet": self.subnet, "gateway": self.gateway,
                "dhcp": self.dhcp, "bridge": self.bridge, "uplink": self.uplink, "state": self.state,
                "dhcp_pid": self.dhcp_pid, "vms": list(self.vms)}
