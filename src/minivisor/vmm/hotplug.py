"""NICs plugged into and out of a running VMM, and the port forwards of its user-mode NAT changed, over QMP.

The backend and the device come from the launcher's own functions
(:func:`~minivisor.vmm.argv.nic_netdev`, :func:`~minivisor.vmm.argv.nic_device`), so a
hot-plugged NIC is exactly the one a power-on would build: QMP's ``netdev_add`` and
``device_add`` take the same dictionaries ``-netdev`` and ``-device`` take as JSON. Its place on the PCI
bus is the one the launcher's placement (:func:`~minivisor.vmm.pci.pci_layout`) gives it at the next power-on,
so the guest finds it at the same device path after a power cycle; where the running VMM has that slot taken,
or lacks the bridge it is behind, QEMU places it and a warning says that the next power-on moves it.
A NIC leaves when the guest lets go of it (ACPI PCI hot-plug on the i440FX, its PCIe hot-plug on a Q35's root
ports: QEMU reports ``DEVICE_DELETED``), then its backend goes.
"""

from __future__ import annotations

import time

from ..errors import GuestError, NetworkError, QmpCommandError, QmpError
from ..spec.vmspec import Nic, VmSpec
from ..text import clip
from .argv import HostForward, LaunchEnv, nic_device, nic_netdev, netdev_id, pci_devices
from .pci import PciPlace, free_slot, pci_layout, slots_in_use
from .process import Vmm
from .qmp import QmpSession

__all__ = ["plug_nic", "unplug_nic", "free_nic_slot", "add_host_forward", "remove_host_forward", "UNPLUG_TIMEOUT"]

UNPLUG_TIMEOUT = 30.0  # seconds the guest has to release a NIC (a TCG guest answers in about one)


def free_nic_slot(vmm: Vmm, q35: bool) -> int | None:
    """The place free in the running VMM for a NIC (:func:`~minivisor.vmm.pci.free_slot`: a root slot, or on Q35
    an empty root port), as a ``pciSlotNumber`` (None if there is none)."""
    return free_slot(slots_in_use(vmm.execute("query-pci"), q35), q35)


def plug_nic(vmm: Vmm, nic: Nic, spec: VmSpec, env: LaunchEnv) -> tuple[str, ...]:
    """Add the NIC of ``spec`` (its backend, then the device on the PCI bus, at the place a power-on gives it)
    to the running VMM; nothing is left if it fails. Returns a warning if QEMU had to place it instead."""
    netdev = nic_netdev(nic, env)
    place = pci_layout(pci_devices(spec), env.q35).places[nic.name]
    with vmm.session() as qmp:
        taken_because = _place_taken(place, slots_in_use(qmp.execute("query-pci"), env.q35))
        qmp.execute("netdev_add", netdev)
        try:
            qmp.execute("device_add", {**nic_device(nic, env), **({} if taken_because else place.fields())})
            if env.networks.get(nic.index, "unconnected") == "unconnected":
                qmp.execute("set_link", {"name": nic.name, "up": False})  # as a power-on leaves it
        except BaseException:
            _quietly(qmp, "device_del", {"id": nic.name})
            _quietly(qmp, "netdev_del", {"id": netdev["id"]})
            raise
    if taken_because:
        return (f"{nic.name}: {taken_because}, so QEMU placed it; the next power-on moves it to "
                f"{place.describe()}, where the guest may name it differently",)
    return ()


def _place_taken(place: PciPlace, used: dict[str, set[int]]) -> str | None:
    """Why a running VMM cannot have a device at ``place`` (its bus missing, its slot taken), or None."""
    if place.bus not in used:
        return f"its place {place.describe()} is behind a bridge the running VM does not have"
    if place.slot in used[place.bus]:
        return f"its place {place.describe()} is taken in the running VM"
    return None


def unplug_nic(vmm: Vmm, nic: Nic, *, timeout: float = UNPLUG_TIMEOUT) -> None:
    """Ask the guest to release the NIC, wait until QEMU has deleted it, then delete its backend. A NIC QEMU no
    longer has was released after an earlier removal gave up waiting: only its backend is left to delete; one
    the guest has not released yet is waited for as if asked now."""
    with vmm.session() as qmp:
        try:
            qmp.execute("device_del", {"id": nic.name})
        except QmpCommandError as exc:
            if exc.error_class == "DeviceNotFound":
                _quietly(qmp, "netdev_del", {"id": netdev_id(nic)})  # gone with the VMM's own clean-up is fine too
                return
            if "in the process of unplug" not in exc.desc:  # QEMU's words for a request still pending
                raise
        deadline = time.monotonic() + timeout
        while True:
            try:
                event = qmp.wait_event({"DEVICE_DELETED"}, max(0.0, deadline - time.monotonic()))
            except QmpError as exc:
                raise GuestError(f"the guest of {vmm.name!r} did not release {nic.name} within {timeout:.0f} s",
                                 hint="its kernel needs ACPI PCI hot-plug (PCIe hot-plug on an EFI VM's Q35); or "
                                      "power the VM off and remove the NIC then") from exc
            if (event.get("data") or {}).get("device") == nic.name:
                break
        qmp.execute("netdev_del", {"id": netdev_id(nic)})


def add_host_forward(vmm: Vmm, nic: Nic, forward: HostForward) -> None:
    """Have the user-mode NAT behind a running NIC listen for a forward (HMP: QMP has no command for it)."""
    answer = _hmp(vmm, f"hostfwd_add {netdev_id(nic)} {forward.rule}")
    if answer:
        raise NetworkError(f"the VMM of {vmm.name!r} could not forward {forward.rule}: {clip(answer)}",
                           hint="choose another host port")


def remove_host_forward(vmm: Vmm, nic: Nic, forward: HostForward) -> None:
    """Stop the user-mode NAT behind a running NIC from listening for a forward."""
    host_side = f"{forward.protocol}:{forward.host_addr}:{forward.host_port}"
    answer = _hmp(vmm, f"hostfwd_remove {netdev_id(nic)} {host_side}")
    if "removed" not in answer:
        raise NetworkError(f"the VMM of {vmm.name!r} could not remove the forward {host_side}: {clip(answer)}",
                           hint="see the VM's vmm.log")


def _hmp(vmm: Vmm, command_line: str) -> str:
    """A human monitor command; its text answer (empty: it said nothing, which for these commands is success).
    ``command_line`` is built from checked numbers, an IPv4 address and our own netdev id: nothing a user wrote."""
    return str(vmm.execute("human-monitor-command", {"command-line": command_line})).strip()


def _quietly(qmp: QmpSession, command: str, arguments: dict[str, object]) -> None:
    try:
        qmp.execute(command, arguments)
    except QmpError:
        pass  # undoing what did not happen
