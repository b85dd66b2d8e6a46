"""End to end: devices sit where their pciSlotNumber puts them in VMware's virtual hardware, seen from inside
the guest (its /sys), and the guest finds them in the same order at every power-on."""

from __future__ import annotations

import pytest
from attacks import add_keys
from guests import create_guest

from minivisor.spec.pci import bridge_root_device, decode_slot

pytestmark = pytest.mark.qemu

# Four e1000 NICs (one driver: the guest names them in PCI order) at a root slot, behind VMware's PCI-to-PCI
# bridge and behind two PCIe root ports (one of them at its function 1); the boot disk's controller behind
# pciBridge4's function 0, as ESXi places a first SCSI controller.
NICS = {"ethernet0": ("192", "00:0c:29:00:00:c0"), "ethernet1": ("1184", "00:0c:29:00:04:a0"),
        "ethernet2": ("33", "00:0c:29:00:00:21"), "ethernet3": ("16", "00:0c:29:00:00:10")}
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
    place = decode_slot(int(slot))
    parent, _, own = path.rpartition("/")
    if place.bridge is None:
        return own == f"0000:00:{place.device:02x}.0" and parent.endswith("/pci0000:00")
    bridge = f"0000:00:{bridge_root_device(place.bridge):02x}.{place.function}"
    return parent.endswith(f"/{bridge}") and own.endswith(f":{place.device:02x}.0")


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


# Every NIC model and disk controller, each at a slot of its own: (key prefix, keys, pciSlotNumber, the PCI
# vendor:device of the chip QEMU builds for it).
DEVICES = [
    ("ethernet0", 'virtualDev = "vmxnet3"', "192", "15ad:07b0"),
    ("ethernet1", 'virtualDev = "e1000"', "33", "8086:100e"),
    ("ethernet2", 'virtualDev = "e1000e"', "1184", "8086:10d3"),
    ("ethernet3", 'virtualDev = "vlance"', "16", "1022:2000"),
    ("ethernet4", 'virtualDev = "virtio"', "224", "1af4:1000"),
    ("scsi0", 'virtualDev = "lsilogic"', "160", "1000:0012"),  # the boot disk's: the 53C895A stands in
    ("scsi1", 'virtualDev = "lsisas1068"', "256", "1000:0054"),
    ("scsi2", 'virtualDev = "pvscsi"', "34", "15ad:07c0"),
    ("sata0", 'present = "TRUE"', "35", "8086:2922"),
    ("nvme0", 'present = "TRUE"', "1216", "1b36:0010"),  # QEMU's own NVMe
]
ALL_PCI = "for d in /sys/bus/pci/devices/*; do echo $(readlink -f $d) $(cat $d/vendor):$(cat $d/device); done"


def test_each_nic_model_and_controller_is_the_chip_its_specfile_names_at_the_slot_it_names(hv, appliance_image):
    create_guest(hv, "chips", appliance_image, memory_mib=128, network="none")
    keys = "".join(f'{name}.present = "TRUE"\n{name}.{setting}\n{name}.pciSlotNumber = "{slot}"\n'
                   + (f'{name}.connectionType = "none"\n' if name.startswith("ethernet") else "")
                   for name, setting, slot, _ in DEVICES)
    add_keys(hv.datastore.root / "chips" / "chips.vmx", keys)
    hv.start_vm("chips", wait_ready=True, timeout=120)
    found = [line.replace("0x", "").split() for line in hv.exec_in_vm("chips", ALL_PCI).output.splitlines()]
    for name, _, slot, chip in DEVICES:
        at = [ids for path, ids in found if at_slot(path, slot)]
        assert at == [chip], (name, slot, found)
