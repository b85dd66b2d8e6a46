"""The typed view of a specfile: what the seed asks for, and bad input named by line."""

from __future__ import annotations

from pathlib import Path

import pytest

from minivisor.errors import SpecError
from minivisor.spec.vmspec import VmSpec
from minivisor.spec.vmx import VmxDocument

SEED = Path(__file__).resolve().parents[2] / "src/minivisor/cli/seed/CentOS7-Minimal64-1708.vmx"


def spec_of(text: str) -> VmSpec:
    return VmSpec.from_vmx(VmxDocument.parse(text.encode(), source="test.vmx"))


def test_seed_reads_cleanly():
    spec = VmSpec.from_vmx(VmxDocument.parse(SEED.read_bytes(), source="seed.vmx"))
    assert spec.display_name == "CentOS7-Minimal64-1708"
    assert spec.guest_os == "centos-64"
    assert spec.memory_mib == 1024
    assert (spec.num_cpus, spec.cores_per_socket) == (1, 1)
    assert [(c.name, c.model) for c in spec.controllers] == [("scsi0", "lsilogic"), ("ide0", "piix4"),
                                                             ("ide1", "piix4")]
    assert spec.boot_disk.node == "scsi0:0"
    assert spec.boot_disk.file_name == "CentOS7-Minimal64-1708-000002.vmdk"
    (nic,) = spec.nics
    assert (nic.model, nic.mac, nic.network_name) == ("vmxnet3", "00:50:56:aa:aa:aa", "PAULO")
    assert spec.floppies == ()
    assert spec.display.present and spec.display.vram_bytes == 8388608
    # Keys with no virtual hardware behind them are reported, not lost.
    assert "sched.cpu.units" in spec.unused_keys
    assert "sched.cpu.shares" not in spec.unused_keys  # resource controls are read (spec.sched)
    assert "pciBridge4.virtualDev" not in spec.unused_keys  # VMware's bridges are rebuilt where a device needs one
    assert "memSize" not in spec.unused_keys


def test_keys_are_case_insensitive():
    spec = spec_of('MEMSIZE = "256"\nNumVCPUs = "2"\nSCSI0.PRESENT = "true"\nscsi0:0.PRESENT = "TRUE"\n'
                   'Scsi0:0.FileName = "d.qcow2"\n')
    assert (spec.memory_mib, spec.num_cpus) == (256, 2)
    assert spec.boot_disk.file_name == "d.qcow2"


def test_devices_on_absent_controllers_do_not_exist():
    spec = spec_of('scsi0.present = "FALSE"\nscsi0:0.present = "TRUE"\nscsi0:0.fileName = "d.vmdk"\n')
    assert spec.disks == ()


def test_iso_without_device_type_is_a_cdrom():
    spec = spec_of('sata0.present = "TRUE"\nsata0:1.present = "TRUE"\nsata0:1.fileName = "os.iso"\n')
    (cd,) = spec.disks
    assert (cd.kind, cd.read_only, cd.node) == ("cdrom", True, "sata0:1")


def test_boot_order_follows_hdd_order():
    spec = spec_of('ide0:0.present = "TRUE"\nide0:0.fileName = "a.qcow2"\n'
                   'ide1:0.present = "TRUE"\nide1:0.fileName = "b.qcow2"\nbios.hddOrder = "ide1:0"\n')
    assert spec.boot_disk.node == "ide1:0"


@pytest.mark.parametrize("text, line, words", [
    ('memSize = "lots"\n', 1, "not a whole number"),
    ('displayName = "x"\nmemSize = "0"\n', 2, "out of range"),
    ('numvcpus = "3"\ncpuid.coresPerSocket = "2"\n', 2, "multiple"),
    ('scsi0.present = "TRUE"\nscsi0.virtualDev = "floppytron"\n', 2, "SCSI controller"),
    ('scsi0.present = "TRUE"\nscsi0:0.present = "TRUE"\nscsi0:0.deviceType = "hologram"\n'
     'scsi0:0.fileName = "d.vmdk"\n', 3, "device type"),
    ('scsi0.present = "TRUE"\nscsi0:7.present = "TRUE"\nscsi0:7.fileName = "d.vmdk"\n', 2, "slot"),
    ('ethernet0.present = "TRUE"\nethernet0.virtualDev = "ne2000"\n', 2, "NIC"),
    ('ethernet0.present = "TRUE"\nethernet0.generatedAddress = "01:00:5e:00:00:01"\n', 2, "unicast"),
    ('sata0.present = "TRUE"\nsata0:0.present = "TRUE"\n', None, "no fileName"),
    ('firmware = "coreboot"\n', 1, "bios or efi"),
    ('memSize = "1024\n', 1, "quote"),
])
def test_bad_specs_name_the_line(text, line, words):
    with pytest.raises(SpecError) as caught:
        spec_of(text)
    message = caught.value.one_line()
    assert words in message
    if line is not None:
        assert f"test.vmx:{line}" in message
    assert caught.value.hint


def test_nic_without_present_key_exists_like_in_the_seed():
    spec = spec_of('ethernet0.virtualDev = "e1000"\n')
    assert [n.model for n in spec.nics] == ["e1000"]


def test_a_host_cdrom_starts_empty_with_a_note_naming_it():
    spec = spec_of('ide1:0.present = "TRUE"\nide1:0.deviceType = "cdrom-raw"\nide1:0.fileName = "/dev/sr0"\n')
    (cd,) = spec.disks
    assert (cd.kind, cd.file_name) == ("cdrom", None)  # never opened
    assert any(w.startswith("ide1:0: it is the host's drive") for w in spec.warnings)
