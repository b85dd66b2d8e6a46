"""QEMU crashes the kernel saw: why a guest test runs once more.

QEMU 7.2's multi-threaded TCG segfaults, rarely, in a vCPU thread while a guest boots (the kernel logs
``CPU 0/TCG[pid]: segfault at a0 ip ... in qemu-system-x86_64[...]``: a few times in this suite's full
runs, each time a different test). The logged address is the first instruction of QEMU's
``memory_region_dispatch_write`` that reads its region (offset 0xa0: ``mr->alias``) with the region NULL:
a vCPU's write to device memory through a stale entry of its TLB, a race in QEMU, not a guest's doing. A test whose guest died that way says nothing about
minivisor, so conftest marks every ``qemu`` test to run once more when it fails *and* the kernel logged
such a crash while it ran (any QEMU of the host's: the crashed process is gone before anyone could ask
whose it was). A test that fails again, or fails without a crash, fails as always; a rerun shows as
``R`` and in the summary.
"""

from __future__ import annotations

import os

SIGNATURE = ("segfault at", "in qemu-system-x86_64[")


class KernelLog:
    """The kernel's log (``/dev/kmsg``) from a mark on: the crashes of QEMUs logged since."""

    def __init__(self, path: str = "/dev/kmsg") -> None:
        try:
            self.fd: int | None = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            self.fd = None  # not root, or no /dev/kmsg: no crash is ever seen, so nothing runs twice
        self.mark()

    def mark(self) -> None:
        """Forget what the log holds so far."""
        if self.fd is not None:
            os.lseek(self.fd, 0, os.SEEK_END)

    def qemu_crashes(self) -> list[str]:
        """The crashes of QEMU processes logged since the last mark (or the last call)."""
        crashes = []
        while self.fd is not None:
            try:
                record = os.read(self.fd, 8192).decode(errors="replace")
            except BlockingIOError:
                break
            except BrokenPipeError:
                continue  # records were overwritten before being read: the read goes on with the next one
            if is_qemu_crash(record):
                crashes.append(record.partition(";")[2].strip())
        return crashes


def is_qemu_crash(record: str) -> bool:
    """Whether a record of the kernel's log says a QEMU process (any of its threads) segfaulted."""
    return all(part in record for part in SIGNATURE)

