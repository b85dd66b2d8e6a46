"""A corpus of specfiles written the way VMware Workstation, Fusion and ESXi write them (tests/corpus):
each reads, round-trips byte for byte, is checked key by key (``vm check``), and registers, or is refused
where VMware itself would refuse it; a few representative ones power on and are looked at from inside."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cli_runner import run_cli

from minivisor.core.check import check_vmx
from minivisor.errors import SpecError, StateError
from minivisor.images.layers import format_for
from minivisor.spec.pci import decode_slot
from minivisor.spec.vmspec import VmSpec
from minivisor.spec.vmx import VmxDocument
from minivisor.vmm.process import Vmm

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
FILES = sorted(p.name for p in CORPUS.glob("*.vmx"))
REFUSED = {"ws-suspended.vmx": StateError, "ws-encrypted.vmx": SpecError, "ws-template.vmx": SpecError}
SPOT_CHECKS = {  # file -> key -> verdict (besides: every key has one)
    "ws16-win10-crlf.vmx": {"sata0:1.fileName": "disconnected", "floppy0.fileName": "disconnected",
                            "serial0.fileType": "disconnected", "sound.present": "virtualized",
                            "scsi0.virtualDev": "virtualized", "memsize": "virtualized"},
    "ws12-centos7.vmx": {"ide1:0.fileName": "disconnected", "scsi0.virtualDev": "approximated",
                         "floppy0.fileName": "ignored", "checkpoint.vmState": "virtualized"},
    "esxi8-rhel9-pvscsi.vmx": {"sata0:0.fileName": "disconnected", "scsi0.pciSlotNumber": "virtualized",
                               "scsi0.virtualDev": "virtualized", "sched.swap.derivedName": "ignored"},
    "esxi67-win2016-efi.vmx": {"sata0:0.fileName": "disconnected", "uefi.secureBoot.enabled": "virtualized",
                               "scsi0.virtualDev": "approximated"},  # OVMF cannot boot from the SAS disk
    "esx3-hw4-buslogic.vmx": {"scsi0.virtualDev": "approximated", "ide0:0.fileName": "disconnected",
                              "floppy0.fileName": "disconnected"},  # nt4sp6.iso and boot.flp are not there
    "ws-serial-ports.vmx": {"serial0.fileName": "virtualized", "serial1.fileName": "virtualized",
                            "serial2.fileName": "approximated", "serial3.fileType": "disconnected"},
    "ws-escapes-mixed-case.vmx": {"Scsi0:0.FileName": "virtualized", "Ethernet0.GeneratedAddress": "virtualized"},
    "ws-independent-disks.vmx": {"scsi0:0.mode": "virtualized", "scsi0:1.mode": "virtualized"},
    "ws-startconnected-false.vmx": {"sata0:1.fileName": "disconnected"},
    "ws-winxp-flexible.vmx": {"ide1:0.fileName": "disconnected", "floppy0.fileName": "disconnected",
                              "sound.virtualDev": "approximated"},
    "ws-present-false-leftovers.vmx": {"scsi1:0.fileName": "ignored", "ide1:0.deviceType": "ignored",
                                       "serial0.fileType": "ignored", "scsi0:0.fileName": "virtualized"},
    "esxi-client-cdrom.vmx": {"ide1:0.clientDevice": "disconnected"},
    "ws-many-vcpus.vmx": {"numvcpus": "approximated"},
    "packer-lowercase.vmx": {"scsi0:0.filename": "virtualized", "sata0:0.filename": "disconnected"},
    "fusion13-macos.vmx": {"smc.present": "ignored", "sata0:1.fileName": "disconnected"},
    "fusion-win11-secureboot.vmx": {"vtpm.present": "ignored", "sata0:1.fileName": "disconnected"},
    "fusion8-centos7-bad-slots.vmx": {"ethernet0.pciSlotNumber": "virtualized",
                                      "ethernet1.pciSlotNumber": "approximated",
                                      "sound.pciSlotNumber": "approximated", "ehci.pciSlotNumber": "approximated",
                                      "sata0.pciSlotNumber": "approximated", "sound.virtualDev": "approximated"},
    "ws45-hw4-win98-sb16.vmx": {"sound.virtualDev": "virtualized", "Ethernet0.present": "virtualized",
                                "annotation": "ignored", "ide1:0.fileName": "disconnected"},
    "esxi70-hw17-win2019-nvme-secureboot.vmx": {"uefi.secureBoot.enabled": "virtualized",
                                                "ethernet1.pciSlotNumber": "virtualized",
                                                "usb_xhci.present": "approximated", "sata0:0.fileName": "disconnected"},
    "ws16-serial-parallel-clients.vmx": {"serial0.fileName": "approximated", "serial1.fileName": "disconnected",
                                         "serial2.fileType": "disconnected", "serial3.fileName": "virtualized",
                                         "parallel0.present": "ignored"},
    "ws15-win7-nics-mixed-case.vmx": {"Sound.VirtualDev": "virtualized", "USB.Present": "approximated",
                                      "Ethernet1.PciSlotNumber": "virtualized", "Ethernet1.Address": "virtualized",
                                      "ide1:0.fileName": "disconnected"},
    "ws17-win11-tpm-nvme.vmx": {"vtpm.present": "ignored", "usb:0.deviceType": "ignored",
                                "nvme0.pciSlotNumber": "virtualized", "sound.fileName": "ignored"},
    "ws6-hw6-winxp-es1371-usb.vmx": {"sound.virtualDev": "approximated", "usb.pciSlotNumber": "virtualized",
                                     "ide1:0.fileName": "disconnected"},
    "esxi55-hw10-centos6-lsisas.vmx": {"ide1:0.fileName": "disconnected", "floppy0.clientDevice": "ignored",
                                       "ehci.pciSlotNumber": "virtualized", "scsi0.virtualDev": "virtualized"},
}


def provide_disks(vmx: Path) -> None:
    """An empty disk, in the format its name says, for every hard disk the specfile names in its folder."""
    spec = VmSpec.from_vmx(VmxDocument.load(vmx))
    for disk in spec.disks:
        if disk.kind == "disk" and "/" not in disk.file_name:
            target = vmx.parent / disk.file_name
            subprocess.run(["qemu-img", "create", "-q", "-f", format_for(target), str(target), "16M"], check=True)


def place(datastore: Path, name: str) -> Path:
    """A corpus specfile in a folder of its own in the datastore (``vm register`` wants that)."""
    folder = datastore / Path(name).stem
    folder.mkdir(parents=True)
    return Path(shutil.copy(CORPUS / name, folder / name))


def test_the_corpus_is_large_and_varied_enough():
    assert len(FILES) >= 30
    corpus = b"".join((CORPUS / f).read_bytes().lower() for f in FILES)
    for key in (b"usb.present", b"usb_xhci.present", b"ehci.present", b"sound.virtualdev = \"sb16\"",
                b"sound.virtualdev = \"es1371\"", b"sound.virtualdev = \"hdaudio\"", b"pcislotnumber = \"1184\"",
                b"uefi.secureboot.enabled = \"true\"", b"lsisas1068", b"pvscsi", b"buslogic", b"nvme0.present",
                b"filetype = \"thinprint\"", b"filetype = \"pipe\"", b"filetype = \"network\""):
        assert key in corpus, key
    assert set(REFUSED) | set(SPOT_CHECKS) <= set(FILES)
    assert any(b"\r\n" in (CORPUS / f).read_bytes() for f in FILES)  # Windows line ends
    assert any(b"|22" in (CORPUS / f).read_bytes() for f in FILES)


@pytest.mark.parametrize("name", FILES)
def test_each_specfile_round_trips_byte_for_byte(name):
    data = (CORPUS / name).read_bytes()
    assert VmxDocument.parse(data).to_bytes() == data


@pytest.mark.parametrize("name", FILES)
def test_each_specfile_is_checked_key_by_key_and_registers_or_is_refused_with_the_reason(name, tmp_path):
    datastore = tmp_path / "datastore"
    vmx = place(datastore, name)
    if name in REFUSED:
        with pytest.raises(REFUSED[name]):
            check_vmx(vmx)
        result = run_cli("vm", "register", str(vmx), datastore=datastore)
        assert result.returncode == REFUSED[name].exit_code and result.stderr.count("\n") == 1
        return
    provide_disks(vmx)
    report = check_vmx(vmx)
    verdicts = {k["key"]: k["verdict"] for k in report["keys"]}
    assert len(report["keys"]) == len(VmxDocument.load(vmx).items()) and report["powers_on"], report
    assert {key: verdicts[key] for key in SPOT_CHECKS.get(name, {})} == SPOT_CHECKS.get(name, {})
    before = vmx.read_bytes()
    result = run_cli("vm", "register", str(vmx), "--name", "vm", datastore=datastore)
    assert result.returncode == 0, result.stderr
    after = VmxDocument.load(vmx)  # register adds only the identity VMware would add at first power-on
    added = {k for k, _ in after.items()} - {k for k, _ in VmxDocument.parse(before).items()}
    assert added <= {"uuid.bios"} | {f"ethernet{i}.{k}" for i in range(10) for k in ("generatedAddress", "addressType")}


@pytest.mark.qemu  # the KVM probe does not run, but vm check must not need QEMU: proven by the stand-in
def test_vm_check_needs_no_datastore_and_speaks_json(tmp_path):
    datastore = tmp_path / "never-made"
    result = run_cli("vm", "check", str(CORPUS / "ws16-win10-crlf.vmx"), "--json", datastore=datastore)
    report = json.loads(result.stdout)
    assert result.returncode == 66 and not report["powers_on"]  # its disk is not beside it here
    assert report["counts"]["disconnected"] >= 3 and not datastore.exists()
    text = run_cli("vm", "check", str(CORPUS / "ws-encrypted.vmx"), datastore=datastore)
    assert text.returncode == 65 and "encrypted" in text.stderr and not datastore.exists()


def test_vm_check_refuses_what_power_on_would_refuse_on_this_host(tmp_path):
    """CPUs the host does not have for a VM pinned to them: start refuses, so check does too (the same line)."""
    (tmp_path / "ds" / "pinned").mkdir(parents=True)
    vmx = tmp_path / "ds" / "pinned" / "pinned.vmx"
    beyond = max(os.sched_getaffinity(0)) + 1
    vmx.write_text(f'config.version = "8"\nmemSize = "64"\nsched.cpu.affinity = "{beyond}"\n')
    result = run_cli("vm", "check", str(vmx), datastore=tmp_path / "ds")
    assert result.returncode != 0 and f"CPU(s) {beyond}" in result.stderr and len(result.stderr.splitlines()) == 1
    registered = run_cli("vm", "register", str(vmx), "--name", "pinned", datastore=tmp_path / "ds")
    assert registered.returncode == 0, registered.stderr
    started = run_cli("vm", "start", "pinned", datastore=tmp_path / "ds")
    assert started.returncode == result.returncode and started.stderr == result.stderr


BOOTED = {  # file -> (the guest's driver of its disk, how many CD-ROM drives it sees)
    "ws12-centos7.vmx": ("sym53c8xx", 1),
    "esxi8-rhel9-pvscsi.vmx": ("vmw_pvscsi", 1),
    "esxi65-hw13-ubuntu-ide.vmx": ("ata_piix", 1),
}


@pytest.mark.qemu
@pytest.mark.parametrize("name", BOOTED)
def test_representative_specfiles_power_on_as_written(name, hv, appliance_image):
    driver, cdroms = BOOTED[name]
    vmx = place(hv.datastore.root, name)
    disk = vmx.parent / VmSpec.from_vmx(VmxDocument.load(vmx)).disks[0].file_name
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", format_for(disk), str(appliance_image),
                    str(disk)], check=True)
    vm = hv.register_vm(vmx)
    result = hv.start_vm(vm.name, wait_ready=True, timeout=120)
    assert any(w.startswith(("ide1:0: it is the host's drive", "sata0:0: its image \"/vmfs/")) for w in result.warnings)
    inventory = next(json.loads(line.split("inventory ", 1)[1]) for line in
                     hv.vm_paths(vm.name).serial_log.read_text(errors="replace").splitlines()
                     if "minivisor-guest: inventory " in line)
    assert [d["controller"] for d in inventory["disks"] if d["driver"] == "sd"] == [driver]
    assert len([d for d in inventory["disks"] if d["driver"] == "sr"]) == cdroms
    assert inventory["cpus"] == VmSpec.from_vmx(VmxDocument.load(vmx)).num_cpus


EFI = [name for name in FILES if name not in REFUSED and b'firmware = "efi"' in (CORPUS / name).read_bytes().lower()]
Q35_HOST_BRIDGE = (0x8086, 0x29C0)  # what QEMU's Q35 puts at 00:00.0 (the i440FX's is 8086:1237)


@pytest.mark.qemu
@pytest.mark.parametrize("name", EFI)
def test_each_efi_specfile_powers_on_as_a_q35_pc_its_devices_behind_vmwares_root_ports_and_slot_numbers(name, hv):
    """Its disks empty (the firmware finds nothing to boot): QEMU takes the whole Q35 command line and runs it."""
    vmx = place(hv.datastore.root, name)
    provide_disks(vmx)
    vm = hv.register_vm(vmx)
    hv.start_vm(vm.name)
    (root,) = Vmm(vm.name, hv.vm_paths(vm.name)).execute("query-pci")
    host_bridge = next(d for d in root["devices"] if d["slot"] == 0)
    assert (host_bridge["id"]["vendor"], host_bridge["id"]["device"]) == Q35_HOST_BRIDGE
    ports = [d["qdev_id"] for d in root["devices"] if d.get("pci_bridge")]
    placed = [n for n in VmSpec.from_vmx(VmxDocument.load(vmx)).nics
              if n.pci_slot and decode_slot(n.pci_slot).on_root_port]
    for nic in placed:  # (query-pci shows no device behind a port before the firmware numbered its bus)
        slot = decode_slot(nic.pci_slot)
        port = f"pciBridge{slot.bridge}" + (f"-{slot.function}" if slot.function else "")
        assert qom(hv, vm.name, nic.name, "parent_bus").startswith(f"/machine/peripheral/{port}/")
        assert qom(hv, vm.name, port, "slot") == nic.pci_slot  # the Physical Slot Number the guest names it by
    assert len([p for p in ports if qom(hv, vm.name, p, "type") == "pcie-root-port"]) == 32  # as VMware's
    hv.stop_vm(vm.name, hard=True)


def qom(hv, vm: str, device: str, prop: str):
    return Vmm(vm, hv.vm_paths(vm)).execute("qom-get", {"path": f"/machine/peripheral/{device}", "property": prop})
