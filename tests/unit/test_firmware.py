"""firmware = "efi": a Q35 PC, OVMF's code and the VM's own variable store as pflash, Secure Boot with SMM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from minivisor.datastore.layout import VmPaths
from minivisor.host.facts import Ovmf
from minivisor.spec.vmspec import VmSpec
from minivisor.spec.vmx import VmxDocument
from minivisor.vmm.argv import LaunchEnv, build_qemu_argv, virtual_hardware
from minivisor.vmm.plan import check_specfile

PATHS = VmPaths(Path("/ds/vm/vm.vmx"), Path("/run/minivisor/abc"))
PLAIN = Ovmf(Path("/usr/share/OVMF/OVMF_CODE_4M.fd"), Path("/usr/share/OVMF/OVMF_VARS_4M.fd"), False)
SECURE = Ovmf(Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"), Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd"), True)
DEVICES = ('ide1:0.present = "TRUE"\nide1:0.deviceType = "cdrom-image"\nide1:0.fileName = ""\n'
           'floppy0.present = "TRUE"\n')


def argv_for(text: str, uefi: Ovmf | None) -> list[str]:
    spec = VmSpec.from_vmx(VmxDocument.parse(text.encode()))
    return build_qemu_argv(spec, LaunchEnv(name="vm", uuid="564d8c48-1de9-5312-9e23-96ef90e27a17",
                                           qemu="qemu-system-x86_64", accel="tcg", paths=PATHS, uefi=uefi))


def values(argv: list[str], option: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == option]


def devices(argv: list[str]) -> list[dict]:
    return [json.loads(v) for v in values(argv, "-device")]


def test_bios_vms_keep_seabios_on_the_i440fx():
    argv = argv_for('firmware = "bios"\n' + DEVICES, None)
    assert values(argv, "-machine") == ["type=pc,usb=off,vmport=off"]
    assert values(argv, "-global") == ["isa-fdc.bootindexA=1"]  # the floppy boots after the CD-ROM
    assert not [b for b in values(argv, "-blockdev") if "uefi" in b]


@pytest.mark.parametrize("uefi, code", [(PLAIN, "OVMF_CODE_4M.fd"), (SECURE, "OVMF_CODE_4M.secboot.fd")])
def test_ovmf_code_is_read_only_and_the_variables_are_the_vms_own_qcow2(uefi, code):
    argv = argv_for('firmware = "efi"\n', uefi)
    nodes = {n["node-name"]: n for n in map(json.loads, values(argv, "-blockdev"))}
    assert nodes["file-uefi-code"] == {"driver": "file", "node-name": "file-uefi-code",
                                       "filename": f"/usr/share/OVMF/{code}", "read-only": True}
    assert nodes["uefi-code"]["driver"] == "raw" and nodes["uefi-code"]["read-only"] is True
    assert nodes["file-uefi-vars"]["filename"] == "/ds/vm/efivars.qcow2"  # never the template, never VMware's .nvram
    assert nodes["uefi-vars"] == {"driver": "qcow2", "node-name": "uefi-vars", "file": "file-uefi-vars",
                                  "read-only": False, "backing": None}
    assert "pflash0=uefi-code,pflash1=uefi-vars" in values(argv, "-machine")


@pytest.mark.parametrize("secure_boot, uefi, machine", [
    ("FALSE", PLAIN, "type=q35,smm=off,usb=off,vmport=off"),  # OVMF_CODE_4M.fd has no SMM code: none is built
    ("TRUE", SECURE, "type=q35,smm=on,usb=off,vmport=off")])
def test_every_efi_vm_is_a_q35_its_ide_drives_on_the_ich9_ahci_its_floppy_on_an_isa_controller(
        secure_boot, uefi, machine):
    argv = argv_for(f'firmware = "efi"\nuefi.secureBoot.enabled = "{secure_boot}"\n' + DEVICES, uefi)
    assert values(argv, "-machine")[0] == machine
    # the root ports' hot-plug is the guest's own (pciehp, naming slots by VMware's numbers), not ACPI's
    assert "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off" in values(argv, "-global")
    found = devices(argv)
    assert {"driver": "ide-cd", "id": "ide1-0", "bus": "ide.2", "bootindex": 0} in found  # ICH9 AHCI port 3
    assert {"driver": "isa-fdc", "id": "fdc", "bootindexA": 1} in found
    assert {"driver": "floppy", "unit": 0, "bus": "fdc.0"} in found
    hardware = {d.name: d.description for d in virtual_hardware(
        VmSpec.from_vmx(VmxDocument.parse(f'firmware = "efi"\nuefi.secureBoot.enabled = "{secure_boot}"\n'.encode())),
        LaunchEnv(name="vm", uuid="u", qemu="q", accel="tcg", paths=PATHS, uefi=uefi))}
    assert hardware["machine"].startswith("PC (Q35 + ICH9, PCIe" + (", SMM for Secure Boot)" if uefi.secure_boot
                                                                     else ")"))


def test_secure_boot_is_a_q35_with_smm_whose_flash_only_smm_may_write():
    argv = argv_for('firmware = "efi"\nuefi.secureBoot.enabled = "TRUE"\n' + DEVICES, SECURE)
    assert values(argv, "-machine")[0] == "type=q35,smm=on,usb=off,vmport=off"
    assert "driver=cfi.pflash01,property=secure,value=on" in values(argv, "-global")
    assert "driver=cfi.pflash01,property=secure,value=on" not in values(argv_for('firmware = "efi"\n', PLAIN),
                                                                         "-global")
    firmware = next(d for d in virtual_hardware(VmSpec.from_vmx(VmxDocument.parse(b'firmware = "efi"\n')),
                                                LaunchEnv(name="vm", uuid="u", qemu="q", accel="tcg", paths=PATHS,
                                                          uefi=SECURE)) if d.name == "firmware")
    assert "Secure Boot on" in firmware.description


def test_secure_boot_without_uefi_is_ignored_with_the_reason():
    spec = VmSpec.from_vmx(VmxDocument.parse(b'uefi.secureBoot.enabled = "TRUE"\n'))
    assert not spec.secure_boot
    assert [(n.subject, n.verdict) for n in spec.notes] == [("uefi.secureBoot.enabled", "ignored")]


def test_an_efi_vm_booting_from_scsi_is_told_ovmf_cannot(tmp_path):
    (tmp_path / "d.qcow2").write_bytes(b"")
    vmx = tmp_path / "vm.vmx"
    vmx.write_text('firmware = "efi"\nscsi0.present = "TRUE"\nscsi0.virtualDev = "pvscsi"\nscsi0:0.fileName = "gone.vmdk"\n'
                   'sata0.present = "TRUE"\nsata0:0.fileName = "also-gone.vmdk"\nbios.hddOrder = "scsi0:0"\n')
    _, _, notes = check_specfile(vmx)
    (note,) = [n for n in notes if n.subject == "scsi0"]
    assert note.verdict == "approximated" and "cannot boot from scsi0:0" in note.reason
