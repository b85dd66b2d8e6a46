"""End to end: firmware = "efi" boots OVMF with the VM's own variable store; Secure Boot refuses unsigned code.

The test guest boots with SYSLINUX (BIOS only), so the UEFI disks are made here from its kernel and
initramfs (tests/efi_disks.py). OVMF has no driver for VMware's SCSI controllers, so they sit on SATA.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from boot_media import shell_boot_disk, unsigned_efi_disk
from guests import create_guest

from minivisor.errors import StateError

pytestmark = pytest.mark.qemu

NVRAM = b"VMware's own NVRAM: never touched\n"
# What OVMF's boot manager says when the shell it started returned before its countdown (see tests/qemu_crashes.py)
NO_BOOTABLE_OPTION = "BdsDxe: No bootable option or device was found."


def efi_vm(hv, name: str, disk: Path, extra: str = "") -> Path:
    """A VM booting ``disk`` from SATA with ``firmware = "efi"`` and a VMware .nvram beside it."""
    create_guest(hv, name, disk, memory_mib=256, network="none")
    vmx = hv.datastore.root / name / f"{name}.vmx"
    text = vmx.read_text().replace("scsi0:0.", "sata0:0.")
    vmx.write_text(text + f'sata0.present = "TRUE"\nfirmware = "efi"\nnvram = "{name}.nvram"\n{extra}')
    (vmx.parent / f"{name}.nvram").write_bytes(NVRAM)
    return vmx


def console_shows(hv, name: str, text: str, timeout: float = 90) -> bool:
    """Whether the firmware's console (serial.log) says ``text`` within ``timeout`` s; fails at once, with the
    console's and vmm.log's last lines, if the VM stops running meanwhile (QEMU ended: waiting would only hide why)."""
    return first_said(hv, name, (text,), timeout) == text


def first_said(hv, name: str, texts: tuple[str, ...], timeout: float) -> str | None:
    """The first of ``texts`` the VM's console (serial.log) says within ``timeout`` s, or None."""
    paths = hv.vm_paths(name)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        said = paths.serial_log.read_text(errors="replace") if paths.serial_log.exists() else ""
        if found := next((text for text in texts if text in said), None):
            return found
        state = hv.get_vm(name).state_label
        assert state == "running", f"{name} is {state}, {tail(paths.serial_log)=}, {tail(paths.vmm_log)=}"
        time.sleep(0.1)
    print(f"{name}'s console said none of {texts!r}: {tail(paths.serial_log)=}, {tail(paths.vmm_log)=}")
    return None


def tail(log: Path, size: int = 600) -> str:
    """The last ``size`` characters of ``log``, for a failure's message."""
    return log.read_text(errors="replace")[-size:] if log.exists() else "(missing)"


def start_through_shell(hv, name: str, *, wait_ready: bool = True, timeout: float = 180) -> None:
    """Power on an EFI VM whose disk boots through OVMF's shell (``startup.nsh``, see boot_media), without the
    shell's countdown: it waits five seconds for ESC (which would skip the script), and any other key ends the
    wait, so one is typed on the serial console as soon as the countdown shows. Then, if ``wait_ready``, waits
    for the guest's ready line."""
    hv.start_vm(name)
    said = first_said(hv, name, (" seconds to skip ", NO_BOOTABLE_OPTION), timeout)
    # its console's writes failed (they time out when QEMU's UART stays busy: a console that cannot take more)
    console_tail = tail(hv.vm_paths(name).serial_log)
    assert said != NO_BOOTABLE_OPTION, f"OVMF's shell returned before its countdown: {console_tail!r}"
    assert said, "OVMF's shell never counted down to startup.nsh"
    with socket.socket(socket.AF_UNIX) as console:
        console.connect(str(hv.vm_paths(name).console_socket))
        console.sendall(b"\r")
    if wait_ready:
        assert hv.wait_ready(name, timeout=timeout)


def test_an_efi_vm_boots_ovmf_with_a_variable_store_of_its_own(hv, appliance_image, tmp_path):
    disk = shell_boot_disk(appliance_image, tmp_path / "efi.img")
    vmx = efi_vm(hv, "uefi", disk)
    start_through_shell(hv, "uefi")
    seen = hv.exec_in_vm("uefi", "ls /sys/firmware/efi; dmesg | grep -o 'Secure boot [a-z]*'").output
    assert "systab" in seen and "Secure boot disabled" in seen  # booted by UEFI, not SeaBIOS
    store = vmx.parent / "efivars.qcow2"
    assert store.read_bytes()[:4] == b"QFI\xfb"  # qcow2: the VM's state can be saved with it open
    hv.snapshot_take("uefi", "booted")  # memory and devices too: a raw store would refuse this
    with pytest.raises(StateError):
        hv.reset_nvram("uefi")  # the firmware has it open
    hv.stop_vm("uefi", hard=True)
    assert (vmx.parent / "uefi.nvram").read_bytes() == NVRAM
    assert hv.reset_nvram("uefi") is True and not store.exists()
    assert hv.reset_nvram("uefi") is False


def test_secure_boot_refuses_an_unsigned_efi_binary_that_plain_uefi_starts(hv, appliance_image, tmp_path):
    disk = unsigned_efi_disk(appliance_image, tmp_path / "unsigned.img")
    efi_vm(hv, "plain", disk)
    efi_vm(hv, "secure", disk, 'uefi.secureBoot.enabled = "TRUE"\n')
    argv = " ".join(hv.explain_vm("secure").argv)
    assert "type=q35,smm=on" in argv and "OVMF_CODE_4M.secboot.fd" in argv and "secure,value=on" in argv
    hv.start_vm("plain")
    hv.start_vm("secure")
    assert console_shows(hv, "secure", "Security Violation")
    refused = hv.vm_paths("secure").serial_log.read_text(errors="replace")
    assert 'failed to load Boot0001 "UEFI QEMU HARDDISK' in refused  # the disk's EFI/BOOT/BOOTX64.EFI
    assert "Security Violation" in refused  # and so is OVMF's own shell, which is not signed either
    assert console_shows(hv, "plain", 'BdsDxe: starting Boot0001 "UEFI QEMU HARDDISK')  # the kernel's stub runs
    assert "Access Denied" not in hv.vm_paths("plain").serial_log.read_text(errors="replace")
