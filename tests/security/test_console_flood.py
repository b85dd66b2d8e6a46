"""A guest flooding its console cannot fill the datastore or slow ``vm exec`` down: the console
relay caps serial.log (one previous generation kept), and exec reads only what its command prints."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from guests import console_relays, create_guest

from minivisor.vmm.relay import LOG_CAP

pytestmark = pytest.mark.qemu

FLOOD = 3 * LOG_CAP  # bytes the guest prints (it runs at ~100 KiB/s under TCG: keep it a few caps)
END = b"FLOOD-END"


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0])


def test_a_flooded_console_keeps_its_log_capped_and_exec_answering(hv, appliance_image):
    create_guest(hv, "noisy", appliance_image, memory_mib=128, network="none")
    hv.start_vm("noisy", wait_ready=True, timeout=90)
    paths = hv.vm_paths("noisy")
    [relay] = console_relays(paths.console_socket)
    rss_before = rss_kib(relay)
    # in the background, straight to the serial port: 64 KiB lines of x, then an end mark (printf builds
    # it, so the echo of this command line cannot be mistaken for it)
    hv.exec_in_vm("noisy", f"(head -c 65535 /dev/zero | tr '\\0' x; echo) > /tmp/line; "
                           f"(i=0; while [ $i -lt {FLOOD // 65536} ]; do cat /tmp/line; i=$((i+1)); done; "
                           f"printf 'FLOOD%sEND\\n' -) > /dev/ttyS0 2>&1 &")
    log, previous = paths.serial_log, paths.serial_log.with_name("serial.log.1")
    deadline = time.monotonic() + 240
    while END not in (previous.read_bytes()[-64:] if previous.exists() else b"") + log.read_bytes():
        assert log.stat().st_size <= LOG_CAP
        assert time.monotonic() < deadline, "the flood did not end"
        time.sleep(0.5)
    assert log.stat().st_size <= LOG_CAP and previous.stat().st_size <= LOG_CAP
    assert b"xxxx" in previous.read_bytes()  # rotated, not just dropped

    # exec answers with its own output only: nothing of the flood before it, and no rescan of the log
    for word in ("one", "two", "three"):
        result = hv.exec_in_vm("noisy", f"echo {word}")
        assert (result.output, result.exit_code) == (f"{word}\n", 0)
    assert [e["type"] for e in hv.vm_events("noisy")].count("guestReady") == 1  # exec adds none
    assert rss_kib(relay) < rss_before + 8 * 1024  # the relay holds no backlog of what it relayed
