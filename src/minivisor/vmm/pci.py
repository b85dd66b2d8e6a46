"""Where each PCI device sits in the VMM: the place its ``pciSlotNumber`` names in VMware's virtual
hardware (:mod:`minivisor.spec.pci`), so a guest moved from VMware finds its devices in the same order
and at the same slots; the others on the root bus after them, in command-line order.

VMware's bridges are rebuilt where a device needs one: ``pciBridge0``-``3`` as PCI-to-PCI bridges at root
devices 17-20; ``pciBridge4``-``7`` at root devices 21-24, one bridge per function in use (function 0
always, or the guest would not look at the others). On Q35 those are PCIe root ports whose physical slot
number is VMware's slot number, so a guest that names NICs by slot finds ``ens192`` again (and all 32 are
there, below); the i440FX has no PCIe: PCI-to-PCI bridges stand at the same addresses.

Q35's root bus takes no hot-plug (QEMU's ACPI hot-plug is off there, so the guest's own PCIe hot-plug driver
has the root ports): a Q35 VM has every root port VMware's EFI hardware has (``pciBridge4``-``7``, 8 functions
each), and the empty ones take the NICs hot-plugged while it runs. A hot-plug so changes no bridge: the power-on
after it, and the restore of a memory snapshot taken after it, build the very buses the guest ran on.

A running VMM's buses (QMP's ``query-pci``) say whether a device hot-plugged there can have the place a
power-on would give it (:func:`slots_in_use`), and which place is free for one that has none yet
(:func:`free_slot`). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..errors import SpecError
from ..records import Record
from ..spec.pci import ROOT_PORT_SLOTS, VmwareSlot, bridge_root_device, decode_slot, root_port_slot

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from typing import Any

__all__ = ["PciPlace", "PciBridge", "PciLayout", "pci_layout", "root_bus", "slots_in_use", "free_slot"]


class PciPlace(Record, frozen=True):
    """A device's place: a slot and function on a bus (``pci.0``/``pcie.0``, or a bridge's id)."""

    bus: str
    slot: int
    function: int = 0
    vmware_slot: int | None = None  # the pciSlotNumber it honours

    @property
    def addr(self) -> str:
        return f"0x{self.slot:02x}.{self.function}"

    def fields(self) -> dict[str, object]:
        """The ``bus`` and ``addr`` properties of a ``-device``."""
        return {"bus": self.bus, "addr": self.addr}

    def describe(self) -> str:
        """``PCI 00:10.0``, or ``PCI device 00.0 behind pciBridge5``; with the pciSlotNumber it honours."""
        on_root = self.bus in ("pci.0", "pcie.0")
        where = f"PCI {'00:' if on_root else 'device '}{self.slot:02x}.{self.function}"
        where += "" if on_root else f" behind {self.bus}"
        return f"{where} (pciSlotNumber {self.vmware_slot})" if self.vmware_slot is not None else where


class PciBridge(Record, frozen=True):
    """A bridge rebuilt from VMware's hardware: ``pciBridge5``, or ``pciBridge5-3`` for its function 3."""

    id: str
    bridge: int
    function: int
    place: PciPlace
    multifunction: bool
    empty: bool = False  # a Q35's root port with no device of the spec behind it: for hot-plug

    def device(self, q35: bool, chassis: int) -> dict[str, object]:
        """The bridge's ``-device``; ``chassis``: unique per PCI bridge (QEMU refuses two alike). A root port's
        is one of its own, the same whichever devices the VM has (QEMU tells ports apart by chassis and the low
        byte of their slot number, which VMware's numbers share across a bridge's functions)."""
        fields: dict[str, object] = {"id": self.id, **self.place.fields()}
        if self.multifunction:
            fields["multifunction"] = True
        if q35 and self.bridge >= 4:
            # QEMU's root ports take hot-plug (its default): Linux's pciehp then registers the port's slot.
            # No I/O space kept for hot-plug: 32 ports' 4 KiB windows would take all of it, leaving none for the
            # devices behind them that have I/O ports (the firmware gives those the windows they need).
            return {"driver": "pcie-root-port", **fields, "chassis": self.bridge * 8 + self.function,
                    "slot": root_port_slot(self.bridge, self.function), "io-reserve": 0}
        if q35:
            # Without ACPI hot-plug (a Q35's is off) a bridge's hot-plug is its SHPC's, which takes no device 0,
            # where VMware puts one (pciSlotNumber 32): no hot-plug behind it, as behind no PCI bridge of a Q35.
            fields["shpc"] = False
        return {"driver": "pci-bridge", **fields, "chassis_nr": chassis}


class PciLayout(Record, frozen=True):
    """Every placed device by name (``scsi0``, ``ethernet1``, ``svga``), and the bridges they need."""

    places: dict[str, PciPlace]
    bridges: tuple[PciBridge, ...]


def pci_layout(devices: list[tuple[str, int | None]], q35: bool) -> PciLayout:
    """Places for ``devices`` (name and honoured pciSlotNumber, in command-line order). Devices without a
    slot take the lowest free root slots in turn, as QEMU's own placement would: a VM whose specfile names
    no slots keeps the addresses it always had."""
    root = root_bus(q35)
    slots = {name: decode_slot(number) for name, number in devices if number is not None}
    behind = [slot for slot in slots.values() if slot is not None and slot.bridge is not None]
    every_port = [slot for number in ROOT_PORT_SLOTS if (slot := decode_slot(number))] if q35 else []
    bridges = _bridges(behind, every_port, root)
    taken = {0, 31} if q35 else {0, 1}  # the chipset's own devices
    taken |= {b.place.slot for b in bridges} | {s.device for s in slots.values() if s and s.bridge is None}
    places: dict[str, PciPlace] = {}
    free = iter([slot for slot in range(32) if slot not in taken])
    for name, _ in devices:
        slot = slots.get(name)
        if slot is None:
            places[name] = PciPlace(root, _next_free(free, name))
        elif slot.bridge is None:
            places[name] = PciPlace(root, slot.device, vmware_slot=slot.number)
        else:
            bus = _bridge_id(slot.bridge, slot.function)
            places[name] = PciPlace(bus, slot.device, vmware_slot=slot.number)
    return PciLayout(places, bridges)


def root_bus(q35: bool) -> str:
    """The id of the chipset's own bus."""
    return "pcie.0" if q35 else "pci.0"


def slots_in_use(buses: list[dict[str, Any]], q35: bool) -> dict[str, set[int]]:
    """The device numbers taken on each bus of a running VMM, from QMP's ``query-pci``: the root bus by its
    id, a bridge's bus by the bridge's id (``pciBridge5``); a bus with nothing on it is there, empty."""
    used: dict[str, set[int]] = {}

    def visit(bus: str, devices: list[dict[str, Any]]) -> None:
        taken = used.setdefault(bus, set())
        for device in devices:
            taken.add(device["slot"])
            bridge = device.get("pci_bridge")
            if bridge is not None and device.get("qdev_id"):
                visit(device["qdev_id"], bridge.get("devices", []))

    for bus in buses:
        if bus.get("bus") == 0:
            visit(root_bus(q35), bus.get("devices", []))
    return used


def free_slot(used: dict[str, set[int]], q35: bool) -> int | None:
    """The place free in a running VMM (``used``: :func:`slots_in_use`) for a device hot-plugged there, as the
    ``pciSlotNumber`` that names it; None if none is. On the i440FX the lowest root-bus slot a number can name
    (there, the device number); on Q35, whose root bus takes no hot-plug, the first empty root port in the order
    VMware gives them out."""
    if q35:
        return next((number for number in ROOT_PORT_SLOTS if used.get(_port_id(number)) == set()), None)
    taken = used.get(root_bus(q35), set())
    return next((number for number in range(32)
                 if number not in taken and decode_slot(number) is not None), None)


def _port_id(number: int) -> str:
    slot = decode_slot(number)
    assert slot is not None and slot.bridge is not None
    return _bridge_id(slot.bridge, slot.function)


def _next_free(free: Iterator[int], name: str) -> int:
    for slot in free:
        return slot
    raise SpecError(f"{name}: no PCI slot is left on the root bus for it",
                    hint="remove devices (controllers, NICs), or give some a pciSlotNumber behind a bridge")


def _bridge_id(bridge: int, function: int) -> str:
    return f"pciBridge{bridge}" + (f"-{function}" if function else "")


def _bridges(slots: list[VmwareSlot], ports: list[VmwareSlot], root: str) -> tuple[PciBridge, ...]:
    """The bridges (and functions of root ports) the slots are behind, and the root ports a Q35 has anyway,
    by root address."""
    functions: dict[int, set[int]] = {}
    for slot in slots + ports:
        functions.setdefault(slot.bridge, {0}).add(slot.function)  # type: ignore[arg-type]
    in_use = {(slot.bridge, slot.function) for slot in slots}
    return tuple(PciBridge(_bridge_id(bridge, function), bridge, function,
                           PciPlace(root, bridge_root_device(bridge), function),
                           multifunction=function == 0 and len(used) > 1, empty=(bridge, function) not in in_use)
                 for bridge, used in sorted(functions.items()) for function in sorted(used))
