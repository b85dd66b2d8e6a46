"""Boot media for tests, made from the test guest's own kernel and initramfs (no EFI loader is packaged
here): a FAT disk where OVMF's shell runs ``startup.nsh``, which starts the kernel's EFI stub with the
initramfs and the command line SYSLINUX would give it; or a disk whose removable-media boot
file (``EFI/BOOT/BOOTX64.EFI``) is the kernel with its signature taken off, for Secure Boot to refuse;
or an ISOLINUX CD (xorriso, isolinux: Debian packages) booting the same kernel, as an installer CD does;
or such a CD whose initramfs installs the test guest onto the first hard disk and powers off."""

from __future__ import annotations

import gzip
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


def _fat(image: Path, size: int = SIZE) -> None:
    with image.open("wb") as f:
        f.truncate(size)
    subprocess.run(["mkfs.fat", "-n", "EFIBOOT", str(image)], check=True, capture_output=True)


def shell_boot_disk(appliance: Path, image: Path) -> Path:
    """A FAT disk OVMF boots through its shell: startup.nsh starts the kernel with its initramfs."""
    kernel, initrd, append = _appliance_files(appliance, image.parent)
    return _shell_fat(kernel, initrd, append, image, SIZE)


def _shell_fat(kernel: Path, initrd: Path, append: str, image: Path, size: int) -> Path:
    script = image.parent / "startup.nsh"
    script.write_bytes(f"fs0:\\vmlinuz initrd=\\initrd {append}\r\n".encode())
    _fat(image, size)
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
    tree.mkdir(parents=True)
    _, _, append = _appliance_files(appliance, tree)
    (tree / "syslinux.cfg").unlink()
    return _isolinux_iso(tree, append, iso)


# The installer's PID 1: the system image (gzip) stored after the CD's ISO 9660 volume goes onto the first hard
# disk, then the VM powers off, as an OS installer ends. The volume's size is in its primary volume descriptor
# (sector 16, bytes 80-83, little-endian blocks of 2048).
INSTALLER = """#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
echo "minivisor-installer: started"
while [ ! -b /dev/sr0 ] || [ ! -b /dev/sda ]; do sleep 0.2; done
blocks=$(dd if=/dev/sr0 bs=1 skip=32848 count=4 2>/dev/null | od -An -tu4 | tr -d ' ')
dd if=/dev/sr0 bs=2048 skip="$blocks" 2>/dev/null | gunzip 2>/dev/null | dd of=/dev/sda bs=65536 2>/dev/null
sync
echo "minivisor-installer: installed $(cat /sys/block/sda/size) sectors from block $blocks"
poweroff -f
"""


def system_installer_iso(appliance: Path, iso: Path, *, uefi: bool = False) -> Path:
    """An installer CD: it boots the appliance's kernel with an initramfs whose /init (an archive appended to
    the appliance's: the later file wins) writes a system image, stored compressed after the ISO volume, to
    the VM's first hard disk and powers the VM off. BIOS: ISOLINUX, and the appliance's disk as the system;
    ``uefi``: an El Torito EFI image that OVMF's shell boots (startup.nsh), and a disk it boots the same way."""
    tree = iso.parent / "installer-tree"
    tree.mkdir(parents=True)
    kernel, initrd, append = _appliance_files(appliance, tree)
    (tree / "syslinux.cfg").unlink()
    data = initrd.read_bytes()
    initrd.write_bytes(data + bytes(-len(data) % 4) + _newc({"init": INSTALLER.encode()}))
    if uefi:
        work = iso.parent / "installer-efi"
        (work / "system").mkdir(parents=True)
        system = shell_boot_disk(appliance, work / "system" / "system.img")
        size = kernel.stat().st_size + initrd.stat().st_size + 2 * 1024 * 1024
        _shell_fat(kernel, initrd, append, work / "efiboot.img", size - size % 65536 + 65536)
        for name in ("vmlinuz", "initrd"):
            (tree / name).unlink()
        shutil.move(str(work / "efiboot.img"), tree / "efiboot.img")
        subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-o", str(iso), "-V", "INSTALLER", "-e", "efiboot.img",
                        "-no-emul-boot", str(tree)], check=True, capture_output=True)
    else:
        system = appliance
        _isolinux_iso(tree, append, iso)
    volume = iso.stat().st_size
    assert struct.unpack_from("<I", iso.read_bytes(), 16 * 2048 + 80)[0] * 2048 == volume  # no padding outside it
    with iso.open("ab") as out:
        out.write(gzip.compress(system.read_bytes(), compresslevel=1))
        out.write(bytes(-out.tell() % 2048))
    return iso


def _newc(files: dict[str, bytes]) -> bytes:
    """An uncompressed cpio archive (newc, as the kernel's initramfs unpacker reads it) of executable files."""
    out = b""
    for number, (name, content) in enumerate([*files.items(), ("TRAILER!!!", b"")], start=1):
        mode = 0o100755 if content or name != "TRAILER!!!" else 0
        fields = (number, mode, 0, 0, 1, 0, len(content), 0, 0, 0, 0, len(name) + 1, 0)
        header = b"070701" + b"".join(b"%08X" % value for value in fields) + name.encode() + b"\0"
        out += header + bytes(-len(header) % 4) + content + bytes(-len(content) % 4)
    return out + bytes(-len(out) % 512)


def _isolinux_iso(tree: Path, append: str, iso: Path) -> Path:
    """``tree`` (with /vmlinuz and /initrd) as an ISOLINUX CD booting that kernel with ``append``."""
    (tree / "isolinux").mkdir()
    shutil.copy("/usr/lib/ISOLINUX/isolinux.bin", tree / "isolinux")
    shutil.copy("/usr/lib/syslinux/modules/bios/ldlinux.c32", tree / "isolinux")
    (tree / "isolinux" / "isolinux.cfg").write_text(
        f"SERIAL 0 115200\nDEFAULT cd\nPROMPT 0\nTIMEOUT 0\nLABEL cd\n  KERNEL /vmlinuz\n  INITRD /initrd\n"
        f"  APPEND {append}\n")
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-o", str(iso), "-V", "INSTALLER", "-b",
                    "isolinux/isolinux.bin", "-c", "isolinux/boot.cat", "-no-emul-boot", "-boot-load-size", "4",
                    "-boot-info-table", str(tree)], check=True, capture_output=True)
    return iso


def shell_only_disk(appliance: Path, image: Path) -> Path:
    """The appliance's disk with the kernel told to run busybox ``sh`` as init (``rdinit=/bin/sh``): a guest
    that is only a POSIX shell on its serial console (no ready line, no guest agent, nothing mounted)."""
    shutil.copyfile(appliance, image)
    cfg = image.parent / "syslinux.cfg"
    _mtools("mcopy", "-o", "-i", str(image), "::syslinux.cfg", str(cfg))
    lines = [line + " rdinit=/bin/sh" if line.strip().startswith("APPEND") else line
             for line in cfg.read_text().splitlines()]
    cfg.write_text("\n".join(lines) + "\n")
    _mtools("mcopy", "-o", "-i", str(image), str(cfg), "::syslinux.cfg")
    return image
