"""The kernel-log reader that lets a guest test run once more after QEMU crashed (tests/qemu_crashes.py).

Other tests may crash QEMUs meanwhile (the log is the host's): each check looks for its own crash by pid."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

from qemu_crashes import SHELL_GAVE_UP, KernelLog, is_qemu_crash, is_shell_gave_up

# What the kernel logged when QEMU 7.2 crashed under a test, and another program's segfault
QEMU_CRASH = ("6,1234,5678,-;CPU 0/TCG[28134]: segfault at a0 ip 00005611f8650a7a sp 00007f0f5da4fe80 error 4 in "
              "qemu-system-x86_64[769a7a,5611f82ee000+597000] likely on CPU 1 (core 1, socket 0)")
OTHER_CRASH = ("6,1235,5679,-;python3[2913]: segfault at 0 ip 00000000004f4b8a sp 00007ffeed4fe050 error 4 in "
               "python3.11[f4b8a,41f000+2b3000] likely on CPU 0 (core 0, socket 0)")


def test_a_qemu_crash_is_told_from_another_programs():
    assert is_qemu_crash(QEMU_CRASH) and not is_qemu_crash(OTHER_CRASH)
    assert not is_qemu_crash("6,1236,5680,-;qemu-system-x86_64: terminating on signal 15 from pid 4000")


def crash(program: str) -> str:
    """Run a copy of Python under ``program``'s name that dies reading address 0, as QEMU's vCPU thread did;
    what the kernel's line about it says after the thread's name."""
    child = subprocess.Popen([program, "-c", "import faulthandler; faulthandler.disable(); faulthandler._read_null()"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert child.wait() == -11
    return f"[{child.pid}]: segfault at 0 "


def logged_crash(log: KernelLog, program: str) -> str:
    """Crash ``program`` until the kernel logs it (it logs at most 10 segfaults in 5 s: printk_ratelimit), and
    return the line ``log`` read."""
    for _ in range(8):
        mine = crash(program)
        if found := [line for line in log.qemu_crashes() if mine in line]:
            return found[0]
        time.sleep(1)
    raise AssertionError("the kernel logged none of 8 segfaults of a qemu-system-x86_64 (dmesg)")


def test_a_segfault_of_a_qemu_logged_after_the_mark_is_read_once(tmp_path):
    log = KernelLog()
    impostor = tmp_path / "qemu-system-x86_64"
    shutil.copy(sys.executable, impostor)
    line = logged_crash(log, str(impostor))
    assert "in qemu-system-x86_64[" in line and not [seen for seen in log.qemu_crashes() if line in seen]  # once
    before_mark = logged_crash(KernelLog(), str(impostor))  # a reader of its own saw it logged
    log.mark()
    assert not [seen for seen in log.qemu_crashes() if before_mark in seen]


def test_only_ovmfs_shell_giving_up_on_its_console_is_that_failure():
    console = "BdsDxe: starting Boot0002 \"EFI Internal Shell\" ...\nBdsDxe: No bootable option or device was found."
    assert is_shell_gave_up(AssertionError(f"{SHELL_GAVE_UP}: {console!r}"))
    assert not is_shell_gave_up(AssertionError("OVMF's shell never counted down to startup.nsh"))
    assert not is_shell_gave_up(None)
