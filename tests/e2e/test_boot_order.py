"""End to end: bios.bootOrder and the CD-ROM's place decide what boots, as on VMware; a new VM with an
empty disk and an installer CD boots the CD (the firmware passes over a disk with nothing to boot)."""

from __future__ import annotations

import pytest
from attacks import add_keys
from boot_media import installer_iso

pytestmark = pytest.mark.qemu

CD = 'ide1:0.present = "TRUE"\nide1:0.deviceType = "cdrom-image"\nide1:0.fileName = "installer.iso"\n'


@pytest.fixture(scope="module")
def iso(appliance_image, tmp_path_factory):
    return installer_iso(appliance_image, tmp_path_factory.mktemp("iso") / "installer.iso")


def booted_from(hv, name: str) -> str:
    """The device SeaBIOS last tried (its log): ``Booting from DVD/CD...``."""
    lines = hv.vm_paths(name).bios_log.read_text(errors="replace").splitlines()
    return [line for line in lines if line.startswith("Booting from ") and line.endswith("...")][-1]


def test_a_new_vm_with_an_empty_disk_boots_its_installer_cd(hv, iso):
    hv.create_vm("fresh", memory_mib=192, disk_size="64M", network="none")
    folder = hv.datastore.root / "fresh"
    (folder / "installer.iso").write_bytes(iso.read_bytes())
    add_keys(folder / "fresh.vmx", CD)
    hv.start_vm("fresh", wait_ready=True, timeout=90)
    assert booted_from(hv, "fresh").startswith("Booting from DVD/CD")
    bios = hv.vm_paths("fresh").bios_log.read_text(errors="replace")
    assert bios.index("Boot failed: not a bootable disk") < bios.index("Booting from DVD/CD")  # the disk came first
    seen = hv.exec_in_vm("fresh", "dd if=/dev/sr0 bs=2048 skip=16 count=1 2>/dev/null | head -c 56").output
    assert "CD001" in seen and "INSTALLER" in seen  # the guest reads its installer CD's volume descriptor


@pytest.mark.parametrize("order, first", [("cdrom,hdd", "DVD/CD"), ("hdd,cdrom", "Hard Disk"), ("", "Hard Disk")])
def test_bios_boot_order_decides_between_a_bootable_disk_and_a_bootable_cd(hv, appliance_image, iso, order, first):
    from guests import create_guest

    create_guest(hv, "web", appliance_image, memory_mib=192, network="none")
    folder = hv.datastore.root / "web"
    (folder / "installer.iso").write_bytes(iso.read_bytes())
    add_keys(folder / "web.vmx", CD + (f'bios.bootOrder = "{order}"\n' if order else ""))
    hv.start_vm("web", wait_ready=True, timeout=90)
    assert booted_from(hv, "web").startswith(f"Booting from {first}")
