"""pciSlotNumber -> a place in VMware's virtual hardware -> a QEMU bus and address (guests: tests/e2e)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_launcher import env_for, json_options

from minivisor.host.facts import Ovmf
from minivisor.spec.fidelity import key_verdicts
from minivisor.spec.pci import ROOT_PORT_SLOTS, decode_slot
from minivisor.spec.vmspec import VmSpec
from minivisor.spec.vmx import VmxDocument
from minivisor.vmm.argv import build_qemu_argv, virtual_hardware
from minivisor.vmm.pci import free_slot


@pytest.mark.parametrize("number, bridge, device, function", [
    (16, None, 16, 0), (33, 0, 1, 0), (63, 0, 31, 0), (160, 4, 0, 0), (1184, 4, 0, 1), (192, 5, 0, 0),
    (224, 6, 0, 0), (256, 7, 0, 0), (7424, 7, 0, 7)])
def test_vmware_slot_numbers_decode_to_the_bridge_and_device_they_name(number, bridge, device, function):
    slot = decode_slot(number)
    assert (slot.bridge, slot.device, slot.function) == (bridge, device, function)


@pytest.mark.parametrize("number", [0, 1, 17, 21, 24, 31, 161, 1057, 288, 8192, -1])
def test_slot_numbers_naming_no_place_a_vm_can_have_decode_to_nothing(number):
    """The chipset's and bridges' own root slots, a second device behind a root port, no such bridge."""
    assert decode_slot(number) is None


def spec_of(text: str) -> VmSpec:
    return VmSpec.from_vmx(VmxDocument.parse(text.encode()))


PLACED = ('scsi0.present = "TRUE"\nscsi0.virtualDev = "pvscsi"\nscsi0.pciSlotNumber = "160"\n'
          'sata0.present = "TRUE"\n'
          'ethernet0.present = "TRUE"\nethernet0.pciSlotNumber = "192"\n'
          'ethernet1.present = "TRUE"\nethernet1.pciSlotNumber = "1184"\n'
          'ethernet2.present = "TRUE"\nethernet2.pciSlotNumber = "33"\n'
          'ethernet3.present = "TRUE"\nethernet3.pciSlotNumber = "16"\n')


def devices_by_id(argv: list[str]) -> dict[str, dict]:
    return {d["id"]: d for d in json_options(argv, "-device") if "id" in d}


def test_on_the_i440fx_vmware_bridges_are_pci_bridges_and_unplaced_devices_take_free_root_slots():
    spec = spec_of(PLACED)
    devices = devices_by_id(build_qemu_argv(spec, env_for(spec)))
    assert devices["pciBridge4"] == {"driver": "pci-bridge", "id": "pciBridge4", "bus": "pci.0", "addr": "0x15.0",
                                     "multifunction": True, "chassis_nr": 2}
    assert devices["pciBridge4-1"]["addr"] == "0x15.1" and devices["pciBridge0"]["addr"] == "0x11.0"
    assert {k: devices[k]["bus"] + "/" + devices[k]["addr"] for k in ("scsi0", "ethernet0", "ethernet1",
                                                                       "ethernet2", "ethernet3", "sata0", "svga")} \
        == {"scsi0": "pciBridge4/0x00.0", "ethernet0": "pciBridge5/0x00.0", "ethernet1": "pciBridge4-1/0x00.0",
            "ethernet2": "pciBridge0/0x01.0", "ethernet3": "pci.0/0x10.0", "sata0": "pci.0/0x02.0",
            "svga": "pci.0/0x03.0"}
    chassis = [d.get("chassis_nr") for d in devices.values() if d["driver"] == "pci-bridge"]
    assert len(set(chassis)) == len(chassis) == 4


def test_on_q35_the_root_ports_are_pcie_root_ports_whose_physical_slot_is_vmwares_number():
    """A guest that names NICs by slot (systemd: ens192) finds the name VMware gave it."""
    spec = spec_of(PLACED + 'firmware = "efi"\nuefi.secureBoot.enabled = "TRUE"\n')
    env = env_for(spec, uefi=Ovmf(Path("/ovmf/code.fd"), Path("/ovmf/vars.fd"), secure_boot=True))
    devices = devices_by_id(build_qemu_argv(spec, env))
    assert devices["pciBridge5"]["driver"] == "pcie-root-port" and devices["pciBridge5"]["slot"] == 192
    assert devices["pciBridge4-1"]["slot"] == 1184 and devices["pciBridge0"]["driver"] == "pci-bridge"
    assert devices["pciBridge0"]["shpc"] is False  # SHPC takes no device 0, where VMware puts one (slot 32)
    assert devices["ethernet3"]["bus"] == "pcie.0" and devices["sata0"]["addr"] == "0x01.0"  # 00:1f is ICH9's


def test_vm_explain_shows_where_each_device_sits():
    spec = spec_of(PLACED)
    described = {d.name: d.description for d in virtual_hardware(spec, env_for(spec))}
    assert "at PCI device 00.0 behind pciBridge5 (pciSlotNumber 192)" in described["ethernet0"]
    assert "at PCI 00:02.0" in described["sata0"]
    assert "pciBridge4-1 at PCI 00:15.1" in described["pci-bridges"]


@pytest.mark.parametrize("slot, words", [("17", "names no PCI slot"), ("banana", "names no PCI slot"),
                                         ("²", "names no PCI slot"),  # a digit to str.isdigit(), not to int()
                                         ("192", "is ethernet0's already")])
def test_a_slot_that_cannot_be_honoured_is_approximated_and_the_device_placed_after_the_others(slot, words):
    spec = spec_of('ethernet0.present = "TRUE"\nethernet0.pciSlotNumber = "192"\n'
                   f'ethernet1.present = "TRUE"\nethernet1.pciSlotNumber = "{slot}"\n')
    assert spec.nics[1].pci_slot is None
    (note,) = [n for n in spec.notes if n.subject == "ethernet1.pciSlotNumber"]
    assert note.verdict == "approximated" and words in note.reason
    devices = devices_by_id(build_qemu_argv(spec, env_for(spec)))
    assert devices["ethernet1"]["bus"] == "pci.0" and devices["ethernet1"]["addr"] == "0x02.0"


def test_an_honoured_slot_is_virtualized_and_unplaced_minus_one_is_no_slot():
    doc = VmxDocument.parse(b'ethernet0.present = "TRUE"\nethernet0.pciSlotNumber = "-1"\n'
                            b'ethernet1.present = "TRUE"\nethernet1.pciSlotNumber = "160"\n')
    spec = VmSpec.from_vmx(doc)
    assert [n.pci_slot for n in spec.nics] == [None, 160]
    verdicts = {v.key: v.verdict for v in key_verdicts(doc.items(), spec.notes, spec.unused_keys,
                                                       spec.unread_device_keys)}
    assert verdicts["ethernet1.pciSlotNumber"] == "virtualized"


@pytest.mark.parametrize("taken, free", [({0, 1, 2, 3}, 4), (set(range(17)), 25), (set(range(17)) | set(range(25, 32)), None)])
def test_on_the_i440fx_a_hot_plugged_device_gets_the_lowest_free_root_slot_a_pci_slot_number_can_name(taken, free):
    """Never the chipset's slots nor those of VMware's bridges (17-24), which a power-on may rebuild."""
    assert free_slot({"pci.0": taken}, q35=False) == free


@pytest.mark.parametrize("ports, free", [
    ({"pciBridge4": {0}, "pciBridge5": set(), "pciBridge6": set()}, 192),  # the first empty one, in VMware's order
    ({"pciBridge4": set(), "pciBridge4-1": set()}, 160),
    ({"pciBridge4": {0}, "pciBridge4-1": set(), "pciBridge7": {0}}, 1184),
    ({"pciBridge4": {0}, "pciBridge0": set()}, None)])  # a PCI-to-PCI bridge is no root port
def test_on_q35_a_hot_plugged_device_gets_the_first_empty_root_port_never_the_root_bus(ports, free):
    assert free_slot({"pcie.0": {1, 2, 3}, **ports}, q35=True) == free


def root_ports(text: str) -> dict[str, dict]:
    spec = spec_of(text + 'firmware = "efi"\n')
    env = env_for(spec, uefi=Ovmf(Path("/ovmf/code.fd"), Path("/ovmf/vars.fd"), secure_boot=False))
    return {id: d for id, d in devices_by_id(build_qemu_argv(spec, env)).items() if d["driver"] == "pcie-root-port"}


def test_a_q35_vm_has_every_root_port_vmwares_efi_hardware_has_the_empty_ones_for_hot_plug():
    ports = root_ports("")
    assert len(ports) == 32 and {d["slot"] for d in ports.values()} == set(ROOT_PORT_SLOTS)
    assert ports["pciBridge4"] == {"driver": "pcie-root-port", "id": "pciBridge4", "bus": "pcie.0", "addr": "0x15.0",
                                   "multifunction": True, "chassis": 32, "slot": 160, "io-reserve": 0}
    assert (ports["pciBridge7-7"]["addr"], ports["pciBridge7-7"]["slot"]) == ("0x18.7", 7424)
    assert [id for id, d in ports.items() if d.get("multifunction")] == [f"pciBridge{n}" for n in range(4, 8)]
    assert len({d["chassis"] for d in ports.values()}) == 32  # QEMU refuses two ports alike


def test_a_nic_hot_plugged_into_a_root_port_changes_no_bridge_at_the_next_power_on():
    """So the guest finds its buses numbered as they were, and a memory snapshot taken after the hot-plug
    restores into the very same device tree."""
    assert root_ports('ethernet0.present = "TRUE"\nethernet0.pciSlotNumber = "160"\n') == root_ports("")
    assert root_ports(PLACED) == root_ports("")


def test_vm_explain_names_the_root_ports_with_devices_behind_and_counts_the_empty_ones():
    spec = spec_of(PLACED + 'firmware = "efi"\n')
    env = env_for(spec, uefi=Ovmf(Path("/ovmf/code.fd"), Path("/ovmf/vars.fd"), secure_boot=False))
    described = {d.name: d.description for d in virtual_hardware(spec, env)}["pci-bridges"]
    assert ("devices behind pciBridge0 at PCI 00:11.0, pciBridge4 at PCI 00:15.0, pciBridge4-1 at PCI 00:15.1, "
            "pciBridge5 at PCI 00:16.0; 29 empty for NICs plugged in while it runs") in described
