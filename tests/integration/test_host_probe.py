"""The accelerator probe against real QEMU: the guest is correct, hangs are killed.

The probe guest must succeed under TCG on every host: that is what lets a
failure under KVM be blamed on KVM. Which accelerator this host ends up with is
deliberately not asserted (CI machines differ), only that the answer is
definite, timely and self-consistent.

Runs that must finish get a generous timeout (a loaded 2-core machine can take
seconds just to start QEMU); runs that must be cut short prove it by the kill
(timed out, process gone, the whole timeout waited), with a wide margin above.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from minivisor.host import accel

QEMU = shutil.which("qemu-system-x86_64")
pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed"),
]


def _sector(code: bytes) -> bytes:
    """A boot sector holding ``code`` at 0x7c00."""
    return code.ljust(510, b"\0") + b"\x55\xaa"


JMP_SELF = _sector(b"\xeb\xfe")  # jmp $: spins in real mode forever
PRINTS_THEN_HANGS = _sector(b"\xba\xf8\x03\xb0\x52\xee\xeb\xfe")  # mov dx,0x3f8; mov al,'R'; out dx,al; jmp $
EXIT_WRONG_RESULT = _sector(b"\xb0\x34\xe6\xf4")  # mov al,0x34; out 0xf4,al
# xor ax,ax; mov ds,ax; lidt [0x7c10] (limit 0); int3 -> #GP -> double -> triple fault
TRIPLE_FAULT = _sector(b"\x31\xc0\x8e\xd8\x0f\x01\x1e\x10\x7c\xcc\xeb\xfe")
FINISHES = 120.0  # seconds a run that ends by itself may take on a loaded machine (it takes ~0.1 s)
SLACK = 30.0  # above a timeout: QEMU started, killed and reaped on a loaded machine; a run that
# ignored its timeout would never end (these guests spin or hang forever)


def test_probe_guest_reaches_long_mode_under_tcg() -> None:
    run = accel.run_probe(str(QEMU), "tcg", timeout=FINISHES)
    assert run.ok, run.failure
    assert (run.returncode, run.serial) == (99, b"RPLMCLM64OK\r\n")
    assert run.failure is None


def test_probe_kvm_gives_a_definite_answer_within_the_timeout() -> None:
    start = time.monotonic()
    choice = accel.probe_kvm(str(QEMU), timeout=3.0)
    assert time.monotonic() - start < 3.0 + SLACK
    assert choice.probed and choice.reason.strip()
    if choice.accel == "kvm":
        assert choice.warning is None and choice.reason.startswith("KVM probe: a 64-bit guest booted")
    else:
        assert choice.accel == "tcg" and choice.warning and "using TCG" in choice.reason


def test_a_hanging_guest_is_killed_at_the_timeout() -> None:
    start = time.monotonic()
    run = accel.run_probe(str(QEMU), "tcg", timeout=1.0, image=JMP_SELF)
    assert 1.0 <= time.monotonic() - start < 1.0 + SLACK
    assert run.timed_out and not run.ok
    assert run.failure == "a 64-bit guest gave no sign of life within 1 s"
    assert not os.path.exists(f"/proc/{run.pid}"), "QEMU must be killed and reaped"


def test_a_guest_that_stops_making_progress_is_killed_after_the_stall_not_the_whole_timeout() -> None:
    """A broken KVM hangs in a stage after the first: the probe ends ``stall`` s after the last byte, however
    long ``timeout`` (the time QEMU gets to start) is."""
    start = time.monotonic()
    run = accel.run_probe(str(QEMU), "tcg", timeout=FINISHES, image=PRINTS_THEN_HANGS, stall=1.0)
    assert time.monotonic() - start < FINISHES
    assert run.timed_out and run.serial == b"R"
    assert run.failure == "a 64-bit guest did not leave real mode (no progress for 1 s)"
    assert not os.path.exists(f"/proc/{run.pid}"), "QEMU must be killed and reaped"


def test_guest_failures_are_reported_not_hung() -> None:
    wrong = accel.run_probe(str(QEMU), "tcg", timeout=FINISHES, image=EXIT_WRONG_RESULT)
    assert (wrong.returncode, wrong.failure) == (105, "the probe guest computed a wrong 64-bit result")
    crash = accel.run_probe(str(QEMU), "tcg", timeout=FINISHES, image=TRIPLE_FAULT)
    assert crash.returncode == 0 and "triple fault" in (crash.failure or "")


def test_choose_accel_probes_once_then_hits_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MINIVISOR_ACCEL", raising=False)
    first = accel.choose_accel(tmp_path, str(QEMU))
    second = accel.choose_accel(tmp_path, str(QEMU))
    assert first.probed and not second.probed
    assert (second.accel, second.reason) == (first.accel, first.reason)
