"""VMware's PCI slot numbers (``ethernet0.pciSlotNumber = "192"``): where a device sits in VMware's virtual
hardware, and so the name a guest gives it (``ens192``).

A slot number packs three fields: bits 0-4 the device number on its bus, bits 5-9 the bus (0: the root
bus; N: behind ``pciBridge<N-1>``), bits 10-12 the bridge's function. ``pciBridge0``-``3`` are PCI-to-PCI
bridges (devices 0-31 behind each); ``pciBridge4``-``7`` are PCIe root ports with 8 functions, one device
(number 0) behind each function: 160 is ``pciBridge4`` function 0, 1184 its function 1, 192 ``pciBridge5``.
On the root bus VMware puts its bridges at devices 17 (``pciBridge0``) to 24 (``pciBridge7``); the
chipset keeps device 0 and 1 (and Q35 device 31).
"""

from __future__ import annotations

from ..records import Record

__all__ = ["VmwareSlot", "decode_slot", "CONVENTIONAL_BRIDGES", "ROOT_PORT_BRIDGES", "ROOT_PORT_SLOTS",
           "bridge_root_device", "root_port_slot"]

CONVENTIONAL_BRIDGES = range(0, 4)  # pciBridge0-3: PCI-to-PCI bridges
ROOT_PORT_BRIDGES = range(4, 8)  # pciBridge4-7: PCIe root ports, 8 functions each
_ROOT_DEVICES = range(2, 31)  # root-bus devices a slot may name: not the chipset's (0, 1, 31)...
_BRIDGE_DEVICES = range(17, 25)  # ...nor the bridges'


def bridge_root_device(bridge: int) -> int:
    """The root-bus device number of ``pciBridge<bridge>`` (VMware's: 17 to 24)."""
    return 17 + bridge


def root_port_slot(bridge: int, function: int) -> int:
    """The slot number of the device behind function ``function`` of root port ``pciBridge<bridge>``."""
    return ((bridge + 1) << 5) | (function << 10)


# The root ports' slot numbers in the order VMware gives them to new devices: function 0 of each bridge
# (160, 192, 224, 256), then function 1 (1184, 1216...): the order of ESXi's ens160, ens192, ens224...
ROOT_PORT_SLOTS = tuple(root_port_slot(bridge, function) for function in range(8) for bridge in ROOT_PORT_BRIDGES)


class VmwareSlot(Record, frozen=True):
    """A decoded slot number: on the root bus (``bridge`` None) or behind ``pciBridge<bridge>``."""

    number: int
    bridge: int | None
    device: int
    function: int  # the bridge's function (root ports); the device's own is always 0

    @property
    def on_root_port(self) -> bool:
        return self.bridge in ROOT_PORT_BRIDGES


def decode_slot(number: int) -> VmwareSlot | None:
    """The place a slot number names, or None when it names none a VM can have (and QEMU can express)."""
    if not 0 <= number < 1 << 13:
        return None
    device, bus, function = number & 31, (number >> 5) & 31, number >> 10
    if bus == 0:
        ok = function == 0 and device in _ROOT_DEVICES and device not in _BRIDGE_DEVICES
        return VmwareSlot(number, None, device, 0) if ok else None
    bridge = bus - 1
    if bridge in CONVENTIONAL_BRIDGES and function == 0:
        return VmwareSlot(number, bridge, device, 0)
    if bridge in ROOT_PORT_BRIDGES and device == 0:
        return VmwareSlot(number, bridge, 0, function)
    return None
