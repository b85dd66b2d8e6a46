"""End to end: an EFI VM is a Q35 PC whose PCIe root ports carry VMware's slot numbers, so a guest moved from
VMware names its NICs as it did there (systemd's slot names: ens160, ens192), seen by udev inside the guest;
and a NIC added while it runs is plugged into an empty root port, named after that port's slot too, and is
at the same place after a power cycle."""

from __future__ import annotations

import re

import pytest
from attacks import add_keys
from boot_media import shell_boot_disk
from guests import wait_for
from test_uefi import efi_vm, start_through_shell

from minivisor.errors import ConflictError

pytestmark = pytest.mark.qemu

# As ESXi writes an EFI VM: the PCIe root ports pciBridge4-7 with their 8 functions each, and NICs whose
# slots are behind three of them (160: pciBridge4, 192: pciBridge5, 1184: pciBridge4's function 1).
ROOT_PORTS = "".join(f'pciBridge{n}.present = "TRUE"\npciBridge{n}.virtualDev = "pcieRootPort"\n'
                     f'pciBridge{n}.functions = "8"\npciBridge{n}.pciSlotNumber = "{17 + n}"\n' for n in range(4, 8))
NICS = {"ethernet0": ("vmxnet3", "160", "00:50:56:a0:01:60"), "ethernet1": ("e1000e", "192", "00:50:56:a0:01:92"),
        "ethernet2": ("vmxnet3", "1184", "00:50:56:a0:11:84")}  # pciBridge4's function 1: a 13-bit slot number
# What udev names each NIC, by MAC: systemd's net_id builtin, which reads the slots the kernel registered.
NET_NAMES = ("for n in /sys/class/net/eth*; do [ -e $n ] || continue; echo $(cat $n/address) "
             "$(udevadm test-builtin net_id $n 2>/dev/null | grep -E '^ID_NET_NAME_(SLOT|PATH)=' | sort); done")


def net_names(hv, vm: str) -> dict[str, dict[str, str]]:
    """MAC -> udev's properties ID_NET_NAME_SLOT and ID_NET_NAME_PATH of that NIC, from inside the guest."""
    found = {}
    for line in hv.exec_in_vm(vm, NET_NAMES, timeout=60).output.splitlines():
        mac, *properties = line.split()
        found[mac] = dict(p.split("=", 1) for p in properties)
    return found


def test_a_vmware_efi_vms_nics_keep_the_slot_names_vmware_gave_them(hv, appliance_image, tmp_path):
    efi_vm(hv, "esxi", shell_boot_disk(appliance_image, tmp_path / "efi.img"), ROOT_PORTS + "".join(
        f'{nic}.present = "TRUE"\n{nic}.virtualDev = "{model}"\n{nic}.connectionType = "none"\n'
        f'{nic}.addressType = "static"\n{nic}.address = "{mac}"\n{nic}.pciSlotNumber = "{slot}"\n'
        for nic, (model, slot, mac) in NICS.items()))
    explained = hv.explain_vm("esxi")
    hardware = {d.name: d.description for d in explained.hardware}
    assert hardware["machine"].startswith("PC (Q35 + ICH9, PCIe)")
    assert "behind pciBridge4 (pciSlotNumber 160)" in hardware["ethernet0"]
    assert ("devices behind pciBridge4 at PCI 00:15.0, pciBridge4-1 at PCI 00:15.1, pciBridge5 at PCI 00:16.0; "
            "29 empty") in hardware["pci-bridges"]
    start_through_shell(hv, "esxi")
    names = net_names(hv, "esxi")
    assert {mac: names[mac]["ID_NET_NAME_SLOT"] for _, _, mac in NICS.values()} == {
        "00:50:56:a0:01:60": "ens160", "00:50:56:a0:01:92": "ens192", "00:50:56:a0:11:84": "ens1184"}
    # the kernel's PCIe hot-plug driver has each root port's slot, by VMware's number
    slots = hv.exec_in_vm("esxi", "cd /sys/bus/pci/slots && for s in *; do echo $s $(cat $s/address); done").output
    assert {"160", "192", "1184"} <= {line.split()[0] for line in slots.splitlines()}


def test_a_nic_hot_plugged_into_a_running_q35_vm_takes_an_empty_root_port_and_keeps_it(hv, appliance_image,
                                                                                        tmp_path):
    vmx = efi_vm(hv, "hot", shell_boot_disk(appliance_image, tmp_path / "efi.img"))
    start_through_shell(hv, "hot")
    before = vmx.read_bytes()
    with pytest.raises(ConflictError, match="e1000 NIC needs I/O ports"):  # its driver would not start in the guest
        hv.add_nic("hot", "ethernet1", model="e1000", network="nat")
    assert vmx.read_bytes() == before
    added = hv.add_nic("hot", "ethernet1", model="vmxnet3", network="nat")
    assert added["hotplugged"] and added["warnings"] == []
    assert 'ethernet1.pciSlotNumber = "160"' in vmx.read_text()  # the first empty root port, as VMware's first
    names = wait_for("the guest has no NIC with the added MAC",
                     lambda: (found := net_names(hv, "hot")).get(added["mac"]) and found, timeout=60)
    assert names[added["mac"]]["ID_NET_NAME_SLOT"] == "ens160"
    ifname = hv.exec_in_vm("hot", f"grep -l {added['mac']} /sys/class/net/*/address").output.split("/")[4]
    wait_for(f"{ifname} got no address", lambda: re.search(r"inet 10\.0\.2\.\d+/", hv.exec_in_vm(
        "hot", f"ip -4 -o addr show dev {ifname}").output), timeout=60)  # from the user-mode NAT's DHCP server
    hv.stop_vm("hot", hard=True)
    start_through_shell(hv, "hot")
    assert net_names(hv, "hot")[added["mac"]] == names[added["mac"]]  # the same slot name and device path
    removed = hv.remove_nic("hot", "ethernet1")  # the guest lets go of it through the same port
    assert removed["hotplugged"]
    assert added["mac"] not in net_names(hv, "hot")
