"""Boot media for tests, made from the test guest's own kernel and initramfs (no EFI loader is packaged
here): a FAT disk where OVMF's shell runs ``startup.nsh``, which starts the kernel's EFI stub with the
initramfs and the command line SYSLINUX would give it; or a disk whose removable-media boot
file (``EFI/BOOT/BOOTX64.EFI``) is the kernel with its signature taken off, for Secure Boot to refuse;
or an ISOLINUX CD (xorriso, isolinux: Debian packages) booting the same kernel, as an installer CD does."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

TOOLS_ENV = dict(os.environ, MTOOLS_SKIP_CHECK="1")
SIZE = 64 * 1024 * 1024


# The first read after a medium change fails (the drive reports the change, as a real one does): read again.
READ_VOLUME = ("for i in 1 2 3 4 5; do dd if=/dev/sr0 bs=2048 skip=16 count=1 2>/tmp/err >/tmp/vd && break; "
               "sleep 0.3; done; cat /tmp/err; head -c 56 /tmp/vd")

def _mtools(*argv: str) -> None:
    subprocess.run(argv, check=True, env=TOOLS_ENV, capture_output=True)


def _appliance_files(appliance: Path, into: Path) -> tuple[Path, Path, str]:
    """The appliance's kernel, initramfs and kernel command line."""
    for name in ("vmlinuz", "initrd", "syslinux.cfg"):
        _mtools("mcopy", "-o", "-i", str(appliance), f"::{name}", str(into / name))
    (append,) = [line.split("APPEND", 1)[1].strip() for line in (into / "syslinux.cfg").read_text().splitlines()
                 if line.strip().startswith("APPEND")]
    return into / "vmlinuz", into / "initrd", append


def _fat(image: Path) -> None:
    with image.open("wb") as f:
        f.truncate(SIZE)
    subprocess.run(["mkfs.fat", "-n", "EFIBOOT", str(image)], check=True, capture_output=True)


def shell_boot_disk(appliance: Path, image: Path) -> Path:
    """A FAT disk OVMF boots through its shell: startup.nsh starts the kernel with its initramfs."""
    work = image.parent
    kernel, initrd, append = _appliance_files(appliance, work)
    script = work / "startup.nsh"
    script.write_bytes(f"fs0:\\vmlinuz initrd=\\initrd {append}\r\n".encode())
    _fat(image)
    _mtools("mcopy", "-i", str(image), str(kernel), str(initrd), str(script), "::")
    return image


def unsigned_efi_disk(appliance: Path, image: Path) -> Path:
    """A FAT disk whose EFI/BOOT/BOOTX64.EFI is the appliance's kernel without its Authenticode signature."""
    kernel, _, _ = _appliance_files(appliance, image.parent)
    data = bytearray(kernel.read_bytes())
    pe = struct.unpack_from("<I", data, 0x3C)[0]
    security = pe + 24 + 112 + 4 * 8  # PE32+ optional header: data directory 4, the certificate table
    offset, size = struct.unpack_from("<II", data, security)
    struct.pack_into("<II", data, security, 0, 0)
    unsigned = image.parent / "BOOTX64.EFI"
    unsigned.write_bytes(bytes(data[:offset] if size else data))
    _fat(image)
    _mtools("mmd", "-i", str(image), "::EFI", "::EFI/BOOT")
    _mtools("mcopy", "-i", str(image), str(unsigned), "::EFI/BOOT/BOOTX64.EFI")
    return image


def installer_iso(appliance: Path, iso: Path) -> Path:
    """A bootable CD (ISOLINUX, El Torito) with the appliance's kernel and initramfs, as an OS installer is."""
    tree = iso.parent / "iso-tree"
    (tree / "isolinux").mkdir(parents=True)
    _, _, append = _appliance_files(appliance, tree)
    (tree / "syslinux.cfg").unlink()
    shutil.copy("/usr/lib/ISOLINUX/isolinux.bin", tree / "isolinux")
    shutil.copy("/usr/lib/syslinux/modules/bios/ldlinux.c32", tree / "isolinux")
    (tree / "isolinux" / "isolinux.cfg").write_text(
        f"SERIAL 0 115200\nDEFAULT cd\nPROMPT 0\nTIMEOUT 0\nLABEL cd\n  KERNEL /vmlinuz\n  INITRD /initrd\n"
        f"  APPEND {append}\n")
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-o", str(iso), "-V", "INSTALLER", "-b",
                    "isolinux/isolinux.bin", "-c", "isolinux/boot.cat", "-no-emul-boot", "-boot-load-size", "4",
                    "-boot-info-table", str(tree)], check=True, capture_output=True)
    return iso
