"""A VM's NICs added and removed: in its specfile (comments and order kept), and at once in its running VMM.

A NIC added to a running VM is planned exactly as a power-on would plan it (the
launch plan of the edited specfile: its MAC, its network, its tap), plugged into
its network's switch, then hot-plugged (:mod:`minivisor.vmm.hotplug`); if any step
fails, the specfile is put back as it was and nothing is left on the host. Such a NIC gets a
``pciSlotNumber`` first, as VMware writes one: the lowest root slot the running VM has free (on Q35, whose root
bus takes no hot-plug, its first empty PCIe root port). A power-on
places it there too, and moves no other device (each device placed in turn sits in a slot taken now), so
the guest finds the NIC at the same device path after a power cycle. A NIC
removed from a running VM is released by the guest first (ACPI PCI hot-plug),
then its tap goes; its port forwards go with it.
"""

from __future__ import annotations

import re

from ..datastore.inventory import read_vmx
from ..errors import ArgumentError, ConflictError, NotFoundError, SpecError
from ..files import write_atomic
from ..net.names import check_network_name
from ..spec.devices import CREATABLE_NICS
from ..spec.identity import nic_entries
from ..spec.vmspec import DEVICE_COUNT, Nic, VmSpec
from ..spec.vmx import VmxDocument
from ..text import excerpt
from ..vmm import hotplug
from ..vmm.states import VmState
from .context import VmContext

__all__ = ["add", "remove", "find_nic"]

_NIC_NAME = re.compile(r"ethernet(\d)\Z")


def add(ctx: VmContext, name: str, *, model: str, network: str) -> dict:
    """Add NIC ``name`` (``ethernetN``) of ``model`` on ``network``; a running VM gets it at once."""
    index = _index(name)
    if model not in CREATABLE_NICS:
        raise SpecError(f"NIC model {excerpt(model)} is not one minivisor can create",
                        hint=f"use one of {', '.join(CREATABLE_NICS)}")
    check_network_name(network)
    doc = read_vmx(ctx.vmx)
    original = doc.to_bytes()
    if any(nic.index == index for nic in VmSpec.from_vmx(doc).nics):
        raise ConflictError(f"VM {ctx.name!r} has an {name} already",
                            hint=f"remove it first (minivisor vm nic {ctx.name} {name} --remove), or add another")
    _delete_keys(doc, f"ethernet{index}.")  # what a NIC marked absent (present = "FALSE") left behind
    for key, value in nic_entries(index, ctx.uuid, network, model).items():
        doc.set(key, value)
    nic = find_nic(VmSpec.from_vmx(doc), name, ctx.name)  # the edited specfile reads, before it is written
    doc.save(ctx.vmx)
    warnings: tuple[str, ...] = ()
    try:
        if ctx.running:
            warnings = _hot_plug(ctx, index)
    except BaseException:
        write_atomic(ctx.vmx, original, mode=0o600)
        raise
    result = {"nic": nic.name, "model": nic.model, "mac": nic.mac, "network": nic.network,
              "hotplugged": ctx.running, "warnings": list(warnings)}
    ctx.emit("nicAdded", nic=nic.name, model=nic.model, mac=nic.mac, network=nic.network)
    return result


def remove(ctx: VmContext, name: str) -> dict:
    """Remove NIC ``name``; a running VM's guest releases it first. Its port forwards are removed too."""
    index = _index(name)
    doc = read_vmx(ctx.vmx)
    nic = find_nic(VmSpec.from_vmx(doc), name, ctx.name)
    if ctx.running:
        if ctx.vmm.state() is VmState.PAUSED:
            raise ConflictError(f"VM {ctx.name!r} is paused, so its guest cannot release {nic.name}",
                                hint=f"resume it first: minivisor vm resume {ctx.name}")
        hotplug.unplug_nic(ctx.vmm, nic)
        ctx.networks().unplug(ctx, only=index)
    _delete_keys(doc, f"{nic.name}.")
    doc.save(ctx.vmx)
    forwards = ctx.networks().forget_nic(ctx, index)
    ctx.emit("nicRemoved", nic=nic.name, mac=nic.mac)
    return {"nic": nic.name, "mac": nic.mac, "hotplugged": ctx.running, "forwards_removed": forwards}


def _hot_plug(ctx: VmContext, index: int) -> tuple[str, ...]:
    """Give the NIC a free slot, plan it as a power-on would, put its tap on its switch, hot-plug it; returns
    the warnings about it (a network that does not exist: its link is down; a place QEMU had to choose)."""
    plan = ctx.plan()
    nic = find_nic(plan.spec, f"ethernet{index}", ctx.name)
    if nic.pci_slot is None:
        slot = hotplug.free_nic_slot(ctx.vmm, plan.env.q35)
        if slot is None and plan.env.q35:  # QEMU could place it nowhere: Q35's root bus takes no hot-plug
            raise ConflictError(f"VM {ctx.name!r} has no empty PCIe root port left for {nic.name} while it runs",
                                hint="power it off and add the NIC then")
        if slot is not None:
            doc = read_vmx(ctx.vmx)
            doc.set(f"{nic.name}.pciSlotNumber", str(slot))
            doc.save(ctx.vmx)
            plan = ctx.plan()
            nic = find_nic(plan.spec, nic.name, ctx.name)
    networks = ctx.networks()
    networks.plug(ctx, plan, only=index)
    try:
        placed = hotplug.plug_nic(ctx.vmm, nic, plan.spec, plan.env)
    except BaseException:
        networks.unplug(ctx, only=index)
        raise
    return tuple(w for w in plan.warnings if w.startswith(f"{nic.name}:")) + placed


def _index(name: str) -> int:
    found = _NIC_NAME.match(name.strip().lower())
    if not found or int(found[1]) >= DEVICE_COUNT["ethernet"]:
        raise ArgumentError(f"{excerpt(name)} is not a NIC name",
                            hint=f"name it ethernet0 to ethernet{DEVICE_COUNT['ethernet'] - 1}")
    return int(found[1])


def find_nic(spec: VmSpec, name: str, vm: str) -> Nic:
    """The NIC named ``name`` (``ethernetN``, any case) of VM ``vm``'s spec, or NotFoundError naming its NICs."""
    wanted = name.strip().lower()
    for nic in spec.nics:
        if nic.name == wanted:
            return nic
    raise NotFoundError(f"VM {vm!r} has no NIC {excerpt(name)}",
                        hint=f"its NICs: {', '.join(n.name for n in spec.nics) or 'none'}")


def _delete_keys(doc: VmxDocument, prefix: str) -> None:
    for key in doc.keys_with_prefix(prefix):
        doc.delete(key)
