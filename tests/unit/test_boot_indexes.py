"""bios.bootOrder and bios.hddOrder become QEMU bootindexes on the devices, as VMware's BIOS tries them."""

from __future__ import annotations

import pytest

from minivisor.spec.vmspec import VmSpec
from minivisor.spec.vmx import VmxDocument

DEVICES = ('scsi0.present = "TRUE"\nscsi0:0.fileName = "a.qcow2"\nscsi0:1.fileName = "b.qcow2"\n'
           'sata0.present = "TRUE"\nsata0:0.fileName = "install.iso"\nfloppy0.present = "TRUE"\n')


def indexes(extra: str) -> dict[str, int]:
    return VmSpec.from_vmx(VmxDocument.parse((DEVICES + extra).encode())).boot_indexes()


@pytest.mark.parametrize("extra, expected", [
    ("", {"scsi0:0": 0, "scsi0:1": 1, "sata0:0": 2, "floppy0": 3}),  # VMware's order: disks, CD, floppy
    ('bios.bootOrder = "cdrom,hdd"\n', {"sata0:0": 0, "scsi0:0": 1, "scsi0:1": 2, "floppy0": 3}),
    ('bios.bootOrder = "CDROM"\n', {"sata0:0": 0, "scsi0:0": 1, "scsi0:1": 2, "floppy0": 3}),
    ('bios.bootOrder = "floppy,cdrom,hdd"\nbios.hddOrder = "scsi0:1"\n',
     {"floppy0": 0, "sata0:0": 1, "scsi0:1": 2, "scsi0:0": 3}),
    ('bios.hddOrder = "scsi0:1,scsi0:0"\n', {"scsi0:1": 0, "scsi0:0": 1, "sata0:0": 2, "floppy0": 3}),
])
def test_the_boot_order_is_the_specfiles(extra, expected):
    assert indexes(extra) == expected
    assert list(indexes(extra)) == list(expected)


def test_network_boot_is_not_offered_and_says_so():
    spec = VmSpec.from_vmx(VmxDocument.parse((DEVICES + 'bios.bootOrder = "ethernet,cdrom"\n').encode()))
    assert spec.boot_indexes()["sata0:0"] == 0
    (note,) = [n for n in spec.notes if n.subject == "bios.bootOrder"]
    assert note.verdict == "approximated" and "network boot" in note.reason
