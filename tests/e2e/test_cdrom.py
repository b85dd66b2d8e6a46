"""End to end: ``vm cdrom`` puts an ISO in a running VM's drive and takes it out; the guest sees each
medium; the specfile keeps it for the next power-on; an image the VM may not use is refused."""

from __future__ import annotations

import pytest
from attacks import add_keys, plant_secret
from boot_media import READ_VOLUME, installer_iso
from cli_runner import run_cli
from guests import create_guest
from refusals import assert_one_clear_line

from minivisor.errors import PathError
from minivisor.spec.vmx import VmxDocument

pytestmark = pytest.mark.qemu


def test_an_iso_goes_in_and_out_of_a_running_vm_and_the_specfile_keeps_it(hv, appliance_image, tmp_path):
    create_guest(hv, "web", appliance_image, memory_mib=160, network="none")
    folder = hv.datastore.root / "web"
    installer_iso(appliance_image, folder / "installer.iso")
    add_keys(folder / "web.vmx", 'ide1:0.present = "TRUE"\nide1:0.deviceType = "cdrom-image"\nide1:0.fileName = ""\n')
    hv.start_vm("web", wait_ready=True, timeout=90)
    assert "No medium found" in hv.exec_in_vm("web", READ_VOLUME).output
    inserted = run_cli("vm", "cdrom", "web", "insert", str(folder / "installer.iso"), datastore=hv.datastore.root)
    assert inserted.returncode == 0 and "ide1:0 holds" in inserted.stdout, inserted.stderr
    assert "INSTALLER" in hv.exec_in_vm("web", READ_VOLUME).output  # the guest sees the new medium
    assert VmxDocument.load(folder / "web.vmx").get("ide1:0.fileName") == "installer.iso"
    secret = plant_secret(tmp_path / "host", "secret.iso")  # a host file in no allowed folder: refused
    refused = run_cli("vm", "cdrom", "web", "insert", str(secret.path), datastore=hv.datastore.root)
    assert_one_clear_line(refused, PathError.exit_code, "outside the datastore")
    assert "INSTALLER" in hv.exec_in_vm("web", READ_VOLUME).output
    hv.cdrom("web")  # eject
    assert "No medium found" in hv.exec_in_vm("web", READ_VOLUME).output
    assert VmxDocument.load(folder / "web.vmx").get("ide1:0.fileName") == ""
    hv.cdrom("web", folder / "installer.iso")
    hv.stop_vm("web", hard=True)
    hv.start_vm("web", wait_ready=True, timeout=90)  # the next power-on starts with it in the drive
    assert "INSTALLER" in hv.exec_in_vm("web", READ_VOLUME).output
