"""End to end: a guest runs from QEMU's first instant (no ``-S``) unless something must happen before it
does, and its console loses nothing meanwhile: QEMU connects at its start to the relay's sockets, and what
the guest prints waits there until the relay reads it, however late that is."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from guests import console_relays, create_guest, wait_for

from minivisor.vmm.states import VmState
from minivisor_appliance.first_line import LINE as FIRST_LINE, first_line_disk

pytestmark = pytest.mark.qemu

HELD = 192 * 1024  # bytes the guest prints while its relay does not read: under serial.out's 256 KiB

# A power-on whose console relay starts only once QEMU has exited (its guest printed and powered off with
# nobody reading): QEMU is left unreaped, as a VMM the launch has not looked at again yet.
LATE_RELAY = """
import os, sys
from minivisor import Hypervisor
from minivisor.vmm import process
original = process.Vmm._spawn_relay
def late(self, vmm_pid, *rest):
    os.waitid(os.P_PID, vmm_pid, os.WEXITED | os.WNOWAIT)
    return original(self, vmm_pid, *rest)
process.Vmm._spawn_relay = late
Hypervisor(sys.argv[1]).start_vm(sys.argv[2])
"""


@pytest.mark.parametrize("relay", ["at-once", "after-the-vmm-exited"])
def test_a_guest_that_prints_at_its_first_instant_then_powers_off_is_logged_and_seen_off(hv, tmp_path, relay):
    create_guest(hv, "first", first_line_disk(tmp_path / "first-line.img"), memory_mib=16, network="none")
    log = hv.vm_paths("first").serial_log
    if relay == "at-once":
        hv.start_vm("first")
    else:
        started = subprocess.run([sys.executable, "-c", LATE_RELAY, str(hv.datastore.root), "first"],
                                 capture_output=True, text=True)
        assert started.returncode == 0, started.stderr  # QEMU started (it greeted): not a failed start
    deadline = time.monotonic() + 30
    while console_relays(log) or hv.get_vm("first").state is not VmState.POWERED_OFF:
        assert time.monotonic() < deadline, "the VM is not seen off, or its relay did not end"
        time.sleep(0.1)
    assert log.read_bytes() == FIRST_LINE  # the very first thing the guest said, and all of it
    assert not hv.vm_paths("first").runtime_record.exists()
    hv.start_vm("first")  # nothing left in the way


def test_a_nic_whose_link_starts_down_is_down_before_the_guest_runs(hv, appliance_image):
    """The one power-on that still starts QEMU paused (``-S``): its link goes down, then the guest runs."""
    create_guest(hv, "cable", appliance_image, memory_mib=192, network="none")
    with open(hv.get_vm("cable").vmx, "a") as vmx:
        vmx.write('ethernet0.present = "TRUE"\nethernet0.virtualDev = "e1000"\nethernet0.startConnected = "FALSE"\n')
    assert "-S" in hv.explain_vm("cable").argv
    hv.start_vm("cable", wait_ready=True, timeout=60)
    assert hv.exec_in_vm("cable", "cat /sys/class/net/eth0/carrier").output.split() == ["0"]
    assert hv.get_vm("cable").state is VmState.RUNNING
    assert hv.vm_paths("cable").status_file.read_text().strip() == "running"  # seen by the relay: after cont


def test_a_guest_that_runs_at_once_is_ready_and_its_run_state_is_known(hv, appliance_image):
    create_guest(hv, "plain", appliance_image, memory_mib=192, network="none")
    assert "-S" not in hv.explain_vm("plain").argv
    hv.start_vm("plain", wait_ready=True, timeout=60)
    paths = hv.vm_paths("plain")
    assert paths.status_file.read_text().strip() == "running"  # asked by the relay once attached: no RESUME came
    assert paths.serial_log.read_bytes().lstrip().startswith(b"SYSLINUX")  # the boot loader's first line
    hv.pause_vm("plain")
    assert hv.get_vm("plain").state is VmState.PAUSED
    hv.resume_vm("plain")
    assert hv.exec_in_vm("plain", "echo on").output.strip() == "on"


def test_a_wait_for_the_ready_line_sleeps_on_the_relays_pipe_and_leaves_no_descriptor(hv, appliance_image):
    """``start_vm(wait_ready=True)`` hands the relay a pipe it closes once the ready line is noted (no inotify,
    whose close waits for an RCU grace period): the wait ends, and the pipe's end is closed, boot after boot."""
    create_guest(hv, "waits", appliance_image, memory_mib=192, network="none")
    hv.start_vm("waits", wait_ready=True, timeout=60)  # the first: what the process keeps open for good
    hv.stop_vm("waits", hard=True)
    before = open_descriptors()
    for _ in range(2):
        assert hv.start_vm("waits", wait_ready=True, timeout=60).ready_line == "minivisor-guest: ready"
        assert hv.vm_paths("waits").ready_file.read_text().strip() == "minivisor-guest: ready"
        hv.stop_vm("waits", hard=True)
    # none opened since (a descriptor of the test's own process closed meanwhile is no leak)
    assert open_descriptors() - before == set()


def open_descriptors() -> set[tuple[str, str]]:
    """This process's open descriptors, each with what it points at (a pipe's, socket's or file's name)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            found.add((fd, os.readlink(f"/proc/self/fd/{fd}")))
        except FileNotFoundError:  # the listing's own descriptor, or one closed meanwhile
            pass
    return found


def test_a_relay_that_does_not_read_holds_back_neither_the_guest_nor_its_output(hv, appliance_image):
    """A host under load may leave the relay unscheduled for a while: the guest's console output waits in
    serial.out meanwhile, and the guest goes on printing (QEMU's UART writes a byte at a time, and a socket
    held ~280 of them: firmware printing behind a late relay timed out, OVMF's shell gave up)."""
    create_guest(hv, "late", appliance_image, memory_mib=128, network="none")
    hv.start_vm("late", wait_ready=True, timeout=90)
    hv.exec_in_vm("late", "true", via="agent")  # the agent's channel does not pass through the relay
    log = hv.vm_paths("late").serial_log
    [relay] = console_relays(log)
    os.kill(relay, signal.SIGSTOP)
    try:
        printed = hv.exec_in_vm("late", f"head -c {HELD} /dev/zero | tr '\\0' y > /dev/ttyS0; "
                                        "printf 'HELD%sEND\\n' - > /dev/ttyS0", timeout=60, via="agent")
    finally:
        os.kill(relay, signal.SIGCONT)
    assert printed.exit_code == 0
    wait_for("the held output in serial.log", lambda: b"HELD-END" in log.read_bytes())
    assert log.read_bytes().count(b"y" * HELD) == 1  # every byte, in order


def test_a_killed_relay_is_replaced_at_the_next_look_and_the_guest_never_waits_for_its_console(hv, appliance_image):
    """A relay killed (``pkill -f minivisor``) leaves the console unread: once serial.out is full, the guest's
    console output would wait. The next look at the VM starts another relay, which reads the FIFOs and serves the
    console, and takes QEMU's event monitor when QEMU reconnects it (pause and resume are seen again)."""
    create_guest(hv, "orphan", appliance_image, memory_mib=128, network="none")
    hv.start_vm("orphan", wait_ready=True, timeout=90)
    hv.exec_in_vm("orphan", "true", via="agent")
    log = hv.vm_paths("orphan").serial_log
    [relay] = console_relays(log)
    os.kill(relay, signal.SIGKILL)
    wait_for("the relay gone", lambda: relay not in console_relays(log))
    # more than serial.out holds: without a relay, the guest's write would wait out the timeout
    printed = hv.exec_in_vm("orphan", f"head -c {2 * HELD} /dev/zero | tr '\\0' z > /dev/ttyS0; "
                                      "printf 'AFTER%sKILL\\n' - > /dev/ttyS0", timeout=60, via="agent")
    assert printed.exit_code == 0
    [successor] = console_relays(log)
    assert successor != relay
    wait_for("the output in serial.log", lambda: b"AFTER-KILL" in log.read_bytes())
    assert hv.exec_in_vm("orphan", "echo served", via="serial").output == "served\n"  # its console socket
    hv.pause_vm("orphan")  # seen through QEMU's event monitor, reconnected to the new relay
    assert hv.get_vm("orphan").state is VmState.PAUSED
    hv.resume_vm("orphan")
    assert hv.get_vm("orphan").state is VmState.RUNNING
    assert console_relays(log) == [successor]  # one relay, however often the VM was looked at
    vmm_log = hv.vm_paths("orphan").vmm_log.read_text()
    assert "the console relay was gone: another was started" in vmm_log  # what QEMU's complaint was about
    hv.stop_vm("orphan", hard=True)
    wait_for("the new relay ended with its VMM", lambda: not console_relays(log))
