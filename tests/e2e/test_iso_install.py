"""End to end: an OS installed from an ISO, as the lecture's CentOS was. A new VM with an empty thin disk
boots the installer CD (the firmware passes over the empty disk), the installer writes a bootable system to
the disk and powers the VM off; at the next power-on the VM boots from its disk."""

from __future__ import annotations

import time

import pytest
from attacks import add_keys
from boot_media import system_installer_iso
from test_boot_order import CD, booted_from
from test_uefi import start_through_shell

pytestmark = pytest.mark.qemu


def wait_powered_off(hv, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while hv.get_vm(name).state.value != "poweredOff":
        assert time.monotonic() < deadline, f"{name} is still {hv.get_vm(name).state.value}"
        time.sleep(0.5)


def test_an_os_installed_from_an_iso_onto_an_empty_thin_disk_boots_from_the_disk(hv, appliance_image, tmp_path):
    iso = system_installer_iso(appliance_image, tmp_path / "installer.iso")
    hv.create_vm("fresh", memory_mib=192, disk_size="128M", network="none")
    folder = hv.datastore.root / "fresh"
    (folder / "installer.iso").write_bytes(iso.read_bytes())
    add_keys(folder / "fresh.vmx", CD)
    disk = folder / "fresh.qcow2"
    empty = disk.stat().st_size
    hv.start_vm("fresh")
    wait_powered_off(hv, "fresh", timeout=180)  # the installer's last act
    log = hv.vm_paths("fresh").serial_log.read_text(errors="replace")
    assert "minivisor-installer: installed 262144 sectors" in log, log[-2000:]
    assert booted_from(hv, "fresh").startswith("Booting from DVD/CD")
    assert disk.stat().st_size > empty  # the thin disk holds the system now
    hv.start_vm("fresh", wait_ready=True, timeout=120)  # the CD is still in: the disk comes first now
    assert booted_from(hv, "fresh").startswith("Booting from Hard Disk")
    assert "minivisor-installer" not in hv.vm_paths("fresh").serial_log.read_text(errors="replace")
    assert hv.exec_in_vm("fresh", "head -c 512 /dev/sda | tail -c 2 | od -An -tx1").output.split() == ["55", "aa"]


def test_under_uefi_too_an_os_installed_from_an_iso_boots_from_the_disk(hv, appliance_image, tmp_path):
    """OVMF has no driver for VMware's SCSI: the disk and the CD sit on SATA, the disk first."""
    iso = system_installer_iso(appliance_image, tmp_path / "installer.iso", uefi=True)
    hv.create_vm("fresh", memory_mib=256, disk_size="128M", network="none")
    folder = hv.datastore.root / "fresh"
    (folder / "installer.iso").write_bytes(iso.read_bytes())
    vmx = folder / "fresh.vmx"
    vmx.write_text(vmx.read_text().replace("scsi0:0.", "sata0:0.") + 'sata0.present = "TRUE"\nfirmware = "efi"\n'
                   + CD.replace("ide1:0", "sata0:1"))
    start_through_shell(hv, "fresh", wait_ready=False)
    wait_powered_off(hv, "fresh", timeout=300)
    log = hv.vm_paths("fresh").serial_log.read_text(errors="replace")
    assert "minivisor-installer: installed 262144 sectors" in log, log[-2000:]
    start_through_shell(hv, "fresh")  # the CD is still in: the disk's system starts
    assert "minivisor-installer" not in hv.vm_paths("fresh").serial_log.read_text(errors="replace")
    assert "systab" in hv.exec_in_vm("fresh", "ls /sys/firmware/efi").output  # booted by UEFI
