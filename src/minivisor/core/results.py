"""What the core API returns: plain data the CLI prints and the service sends as JSON.

Apart from :mod:`minivisor.core.hypervisor` so that reading them costs little: the
client (:mod:`minivisor.client`) rebuilds them from the service's JSON without
importing the core. The results of the commands that must answer fastest, :class:`VmInfo` and
:class:`StartResult`, live in :mod:`minivisor.core.vminfo`, without dataclasses.
"""

from __future__ import annotations

from ..records import Record
from .vminfo import StartResult, VmInfo

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:  # only `vm explain` needs them (the client imports them when it rebuilds an Explanation)
    from typing import Any

    from ..spec.vmspec import VmSpec
    from ..vmm.argv import VirtualDevice

__all__ = ["VmInfo", "StartResult", "Explanation", "NetworkInfo"]


class Explanation(Record, frozen=True):
    """How a specfile becomes a VMM: the spec, the devices, what is left out, the argv."""

    spec: VmSpec
    hardware: tuple[VirtualDevice, ...]
    argv: tuple[str, ...]
    warnings: tuple[str, ...] = ()


class NetworkInfo(Record, frozen=True):
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
