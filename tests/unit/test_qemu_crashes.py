"""The kernel-log reader that lets a guest test run once more after QEMU crashed (tests/qemu_crashes.py).

Other tests may crash QEMUs meanwhile (the log is the host's): a check here expects only the lines it wrote."""

from __future__ import annotations

import os

from qemu_crashes import KernelLog, is_qemu_crash

# What the kernel logged when QEMU 7.2 crashed under a test, and another program's segfault
QEMU_CRASH = ("6,1234,5678,-;CPU 0/TCG[28134]: segfault at a0 ip 00005611f8650a7a sp 00007f0f5da4fe80 error 4 in "
              "qemu-system-x86_64[769a7a,5611f82ee000+597000] likely on CPU 1 (core 1, socket 0)")
OTHER_CRASH = ("6,1235,5679,-;python3[2913]: segfault at 0 ip 00000000004f4b8a sp 00007ffeed4fe050 error 4 in "
               "python3.11[f4b8a,41f000+2b3000] likely on CPU 0 (core 0, socket 0)")


def test_a_qemu_crash_is_told_from_another_programs():
    assert is_qemu_crash(QEMU_CRASH) and not is_qemu_crash(OTHER_CRASH)
    assert not is_qemu_crash("6,1236,5680,-;qemu-system-x86_64: terminating on signal 15 from pid 4000")


def log_crash(tag: str) -> str:
    """Write a QEMU crash's line, as the kernel words it, into the kernel's log (root may add records to
    /dev/kmsg); the text it is read back with. A real segfault's line is not used: the kernel logs those
    through printk_ratelimit, shared with the whole host, and a busy host drops them."""
    # named for this test, so that a reader of dmesg sees whose line it is
    text = QEMU_CRASH.partition(";")[2].replace("CPU 0/TCG[28134]", f"test_qemu_crashes[{tag}]")
    with open("/dev/kmsg", "w") as kmsg:
        kmsg.write(text + "\n")
    return text


def test_a_qemu_crash_logged_after_the_mark_is_read_once():
    log = KernelLog()
    first = log_crash(f"{os.getpid()}1")
    assert first in log.qemu_crashes()
    assert first not in log.qemu_crashes()  # read once
    second = log_crash(f"{os.getpid()}2")
    assert second not in KernelLog().qemu_crashes()  # a reader opened after it does not see it
    log.mark()
    assert second not in log.qemu_crashes()  # nor one that marked after it

