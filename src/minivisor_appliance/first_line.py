"""A one-sector guest that prints one line on COM1 at its very first instant, then powers the machine off.

What tests and benchmarks boot to see when a guest starts to run (nothing of a kernel's own time in
the way): its line must be the first thing in ``serial.log``, and QEMU's shutdown request (its
``qemu_system_shutdown_request`` trace, which minivisor's command line asks for) comes right after it.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["LINE", "first_line_disk"]

LINE = b"minivisor-first-line\r\n"
# The boot sector's code (real mode, at 0x7c00), LINE right after it at 0x7c1d: print LINE, then ACPI S5
# through PIIX4's PM1a control register, where SeaBIOS puts it on an i440FX PC (port 0x604).
#   xor ax,ax; mov ds,ax; cld; mov si,0x7c1d; mov dx,0x3f8
#   next: lodsb; test al,al; jz off; out dx,al; jmp next
#   off: mov dx,0x604; mov ax,0x2000; out dx,ax; hlt; jmp $-1
CODE = bytes.fromhex("31c08ed8fcbe1d7cbaf803ac84c07403eeebf8ba0406b80020eff4ebfd")


def first_line_disk(path: Path) -> Path:
    """Write the guest's 1 MiB raw disk at ``path`` (an MBR boot sector, zeros after it); returns ``path``."""
    sector = (CODE + LINE + b"\0").ljust(510, b"\0") + b"\x55\xaa"
    path.write_bytes(sector.ljust(1 << 20, b"\0"))
    return path
