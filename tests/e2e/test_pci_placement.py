"""End to end: devices sit where their pciSlotNumber puts them in VMware's virtual hardware, seen from inside
the guest (its /sys), and the guest finds them in the same order at every power-on."""

from __future__ import annotations

import pytest
from attacks import add_keys
from guests import create_guest

pytestmark = pytest.mark.qemu

# Four e1000 NICs (one driver: the guest names them in PCI order) at a root slot, behind VMware's PCI-to-PCI
# bridge and behind two PCIe root ports (one of them at its function 1); the boot disk's controller behind
# pciBridge4's function 0, as ESXi places a first SCSI controller.
NICS = {"ethernet0": ("192", "00:0c:29:00:00:c0"), "ethernet1": ("1184", "00:0c:29:00:04:a0"),
        "ethernet2": ("33", "00:0c:29:00:00:21"), "ethernet3": ("16", "00:0c:29:00:00:10")}
# pciSlotNumber -> the guest's path to the device: its bridge on the root bus, then its own device number.
PATHS = {"192": ("0000:00:16.0", "00.0"), "1184": ("0000:00:15.1", "00.0"), "33": ("0000:00:11.0", "01.0"),
         "16": (None, "0000:00:10.0"), "160": ("0000:00:15.0", "00.0")}
INVENTORY = ("for n in /sys/class/net/eth*; do echo $(cat $n/address) $(readlink -f $n/device); done; "
             "readlink -f /sys/block/sda/device; cat /sys/bus/pci/slots/16/address")


def placed_vm(hv, appliance_image) -> None:
    create_guest(hv, "placed", appliance_image, memory_mib=128, network="none")
    keys = 'scsi0.pciSlotNumber = "160"\n'
    for nic, (slot, mac) in NICS.items():
        keys += (f'{nic}.present = "TRUE"\n{nic}.virtualDev = "e1000"\n{nic}.connectionType = "none"\n'
                 f'{nic}.addressType = "static"\n{nic}.address = "{mac}"\n{nic}.pciSlotNumber = "{slot}"\n')
    add_keys(hv.datastore.root / "placed" / "placed.vmx", keys)


def at_slot(path: str, slot: str) -> bool:
    """Whether a /sys device path is where VMware's slot number puts the device."""
    bridge, device = PATHS[slot]
    parent, _, own = path.rpartition("/")
    if bridge is None:
        return own == device and parent.endswith("/pci0000:00")
    return parent.endswith(f"/{bridge}") and own.endswith(f":{device}")


def test_devices_sit_at_their_vmware_slots_in_the_same_order_at_every_power_on(hv, appliance_image):
    placed_vm(hv, appliance_image)
    explained = {d.name: d.description for d in hv.explain_vm("placed").hardware}
    assert "behind pciBridge5 (pciSlotNumber 192)" in explained["ethernet0"]
    assert "PCI 00:10.0 (pciSlotNumber 16)" in explained["ethernet3"]
    seen = []
    for _ in range(2):
        hv.start_vm("placed", wait_ready=True, timeout=120)
        seen.append(hv.exec_in_vm("placed", INVENTORY).output.splitlines())
        hv.stop_vm("placed", hard=True)
    assert seen[0] == seen[1]  # the same devices, at the same addresses, named in the same order
    *nics, disk, root_slot = seen[0]
    by_mac = dict(line.split() for line in nics)
    for slot, mac in NICS.values():
        assert at_slot(by_mac[mac], slot), (slot, by_mac[mac])
    # the guest's NIC names follow the PCI order: the root slot first, then the bridges by address
    assert [line.split()[0] for line in nics] == [NICS[n][1] for n in ("ethernet3", "ethernet2", "ethernet1",
                                                                       "ethernet0")]
    assert at_slot(disk.split("/host")[0], "160"), disk  # the SCSI controller, its disk under it
    assert root_slot == "0000:00:10"  # the slot a guest names the NIC after (ens16), as on VMware
