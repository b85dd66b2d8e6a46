"""The kernel-log reader that lets a guest test run once more after QEMU crashed (tests/qemu_crashes.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys

from qemu_crashes import KernelLog


def crash(program: str) -> None:
    """Run a copy of Python under ``program``'s name that dies reading address 0, as QEMU's vCPU thread did."""
    result = subprocess.run([program, "-c", "import faulthandler; faulthandler.disable(); faulthandler._read_null()"],
                            capture_output=True)
    assert result.returncode == -11


def test_a_segfault_of_a_qemu_logged_after_the_mark_is_seen_once(tmp_path):
    log = KernelLog()
    impostor = tmp_path / "qemu-system-x86_64"
    shutil.copy(sys.executable, impostor)
    other = tmp_path / "python-crash"
    shutil.copy(sys.executable, other)
    crash(str(other))
    assert log.qemu_crashes() == []  # another program's crash is no reason to run a test again
    crash(str(impostor))
    seen = log.qemu_crashes()
    assert len(seen) == 1 and "segfault at 0" in seen[0] and "in qemu-system-x86_64[" in seen[0]
    assert log.qemu_crashes() == []  # read once
    crash(str(impostor))
    log.mark()
    assert log.qemu_crashes() == []  # before the mark
