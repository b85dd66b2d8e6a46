"""`vm create` with the choices of the web page's wizard: the firmware, a thick disk, an empty CD-ROM drive."""

from __future__ import annotations

from cli_runner import run_cli
from refusals import assert_one_clear_line

from minivisor.errors import SpecError
from minivisor.spec.vmx import VmxDocument


def test_create_an_efi_vm_with_a_thick_disk_and_an_empty_cd_drive(tmp_path):
    root = tmp_path / "datastore"
    made = run_cli("vm", "create", "inst", "--disk-size", "16M", "--memory", "64", "--network", "none",
                   "--firmware", "efi", "--thick", "--cdrom", datastore=root)
    assert made.returncode == 0, made.stderr
    doc = VmxDocument.load(root / "inst" / "inst.vmx")
    assert doc.get("firmware") == "efi"
    assert (doc.get("ide1:0.deviceType"), doc.get("ide1:0.fileName")) == ("cdrom-image", "")
    assert (root / "inst" / "inst.qcow2").stat().st_blocks * 512 >= 16 * 1024 * 1024
    thin = run_cli("vm", "create", "thin", "--disk-size", "16M", "--memory", "64", "--network", "none",
                   datastore=root)
    assert thin.returncode == 0 and (root / "thin" / "thin.qcow2").stat().st_blocks * 512 < 1024 * 1024
    assert VmxDocument.load(root / "thin" / "thin.vmx").get("ide1:0.present") is None


def test_an_unknown_firmware_is_one_clear_line_and_nothing_is_made(tmp_path):
    root = tmp_path / "datastore"
    refused = run_cli("vm", "create", "x", "--firmware", "coreboot", datastore=root)
    assert_one_clear_line(refused, SpecError.exit_code, "coreboot", "bios, efi")
    assert not (root / "x").exists()
