"""Supervision: VMMs that die, stop, outlive the service, or were left half-started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from guests import console_relays, create_guest, wait_for

from minivisor import Hypervisor
from minivisor.locks import try_lock
from minivisor.service.supervisor import exit_reason
from minivisor.storage.journal import JOURNAL_NAME
from minivisor.vmm.states import VmState
from minivisor.procfs import start_ticks
from minivisor.vmm.process import RuntimeRecord

from .conftest import EventWatcher, Running, small_vm


def wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while start_ticks(pid) is not None:
        assert time.monotonic() < deadline, f"pid {pid} is still alive"
        time.sleep(0.02)


@pytest.mark.qemu
@pytest.mark.parametrize("sig, reason", [(signal.SIGKILL, "killed by SIGKILL"), (signal.SIGSEGV, "killed by SIGSEGV"),
                                         (signal.SIGTERM, "terminating on signal 15 from pid ")])
def test_a_vmm_killed_by_a_signal_is_noticed_marked_off_and_reported(service, sig, reason):
    small_vm(Hypervisor(service.root), "vm1")
    pid = service.client.start_vm("vm1").vm.pid
    watcher = EventWatcher(service.client, vm="vm1")
    os.kill(pid, sig)
    event = watcher.wait_for(lambda e: e["type"] in ("crashed", "poweredOff"))
    assert (event["type"], event["reason"][:len(reason)], event["pid"]) == ("crashed", reason, pid)
    assert service.client.get_vm("vm1").state is VmState.POWERED_OFF
    assert not (service.root / "vm1" / "runtime.json").exists()
    logged = service.client.vm_events("vm1")[-1]
    assert (logged["type"], logged["reason"]) == ("crashed", event["reason"])
    service.client.start_vm("vm1")  # and it can be powered on again


@pytest.mark.qemu
def test_a_stopped_vmm_is_not_powered_off(service):
    small_vm(Hypervisor(service.root), "vm1")
    pid = service.client.start_vm("vm1").vm.pid
    watcher = EventWatcher(service.client, vm="vm1")
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(AssertionError, match="no matching event"):
            watcher.wait_for(lambda e: e["type"] in ("crashed", "poweredOff"), timeout=1.5)
        assert service.client.get_vm("vm1").state is VmState.RUNNING
    finally:
        os.kill(pid, signal.SIGCONT)
    assert service.client.get_vm("vm1").pid == pid


@pytest.mark.qemu
def test_a_guest_power_off_is_reported_as_powered_off_not_a_crash(service):
    small_vm(Hypervisor(service.root), "vm1")
    client = service.client
    client.start_vm("vm1")
    watcher = EventWatcher(client, vm="vm1")
    from minivisor.vmm import qmp

    qmp.execute(Hypervisor(service.root).vm_paths("vm1").qmp_socket, "quit")  # as if the guest left
    event = watcher.wait_for(lambda e: e["type"] in ("crashed", "poweredOff"))
    assert event["type"] == "poweredOff" and "normally" in event["reason"]


@pytest.mark.qemu
def test_vms_outlive_a_killed_service_and_are_reattached(datastore):
    hv = Hypervisor(datastore)
    small_vm(hv, "vm1")
    small_vm(hv, "vm2")
    first = Running(datastore).start()
    try:
        pids = {name: first.client.start_vm(name).vm.pid for name in ("vm1", "vm2")}
        vmx_before = {name: (datastore / name / f"{name}.vmx").read_bytes() for name in pids}
        first.stop(signal.SIGKILL)
        for name, pid in pids.items():  # still running, same processes
            assert start_ticks(pid) is not None
            assert hv.get_vm(name).pid == pid
        second = Running(datastore).start()
        client = second.client
        for name, pid in pids.items():
            vm = client.get_vm(name)
            assert (vm.state, vm.pid) == (VmState.RUNNING, pid)
            assert client.vm_events(name)[-1]["type"] == "reattached"
            assert (datastore / name / f"{name}.vmx").read_bytes() == vmx_before[name]
        # the adopted VMMs are watched: a death is still noticed
        watcher = EventWatcher(client, vm="vm1")
        os.kill(pids["vm1"], signal.SIGKILL)
        event = watcher.wait_for(lambda e: e["type"] in ("crashed", "poweredOff"))
        assert (event["type"], event["pid"]) == ("crashed", pids["vm1"])
        assert client.get_vm("vm1").state is VmState.POWERED_OFF
        assert client.stop_vm("vm2", hard=True) in ("hard", "killed")
        second.stop()
    finally:
        first.stop(signal.SIGKILL)
        for vm in hv.list_vms():
            if vm.state is VmState.RUNNING:
                hv.stop_vm(vm.name, hard=True)


def test_a_reused_pid_is_neither_adopted_nor_killed(datastore):
    hv = Hypervisor(datastore)
    small_vm(hv, "vm1")
    impostor = subprocess.Popen(["sleep", "300"])
    try:
        # a runtime record left behind by a VMM that died; its pid now belongs to `sleep`
        record = RuntimeRecord(impostor.pid, start_ticks(impostor.pid), ["qemu-system-x86_64", "-name", "vm1"],
                               "/nonexistent/qmp.sock", None, "/nonexistent", "tcg")
        record.save(datastore / "vm1" / "runtime.json")
        service = Running(datastore).start()
        try:
            assert service.client.get_vm("vm1").state is VmState.POWERED_OFF
            assert "vm1" not in service.client.metrics()["vms"]
            time.sleep(0.5)  # let the supervisor look at it a few times
            assert impostor.poll() is None  # not killed
        finally:
            service.stop()
        assert not (datastore / "vm1" / "runtime.json").exists()
    finally:
        impostor.kill()
        impostor.wait()


HALF_START = """
import os, sys
from minivisor import Hypervisor
from minivisor.vmm import process as vmm
point = sys.argv[2]
if point == "before-record":
    original = vmm.Vmm._wait_for_relay
    def crash(self, relay):
        original(self, relay)
        os._exit(9)  # QEMU is up (running, holding the lock) but nothing recorded it
    vmm.Vmm._wait_for_relay = crash
else:
    from minivisor.vmm import qmp
    original_execute = qmp.QmpSession.execute
    def crash_on_cont(self, command, *args, **kw):
        if command == "cont":
            os._exit(9)  # recorded, but the guest never started running
        return original_execute(self, command, *args, **kw)
    qmp.QmpSession.execute = crash_on_cont
Hypervisor(sys.argv[1]).start_vm("vm1")
"""


@pytest.mark.qemu
@pytest.mark.parametrize("point", ["before-record", "before-cont"])
def test_a_power_on_cut_short_by_a_crash_is_cleaned_up_when_the_service_starts(datastore, point):
    hv = Hypervisor(datastore)
    small_vm(hv, "vm1")
    if point == "before-cont":  # a NIC whose link must go down before the guest runs: QEMU starts paused
        with open(hv.get_vm("vm1").vmx, "a") as vmx:
            vmx.write('ethernet0.present = "TRUE"\nethernet0.virtualDev = "e1000"\nethernet0.startConnected = "FALSE"\n')
    crashed = subprocess.run([sys.executable, "-c", HALF_START, str(datastore), point], capture_output=True)
    assert crashed.returncode == 9, crashed.stderr
    uuid = hv.get_vm("vm1").uuid
    (orphan,) = [int(p) for p in os.listdir("/proc") if p.isdigit() and _cmdline_has(p, uuid)]
    assert hv.get_vm("vm1").state in (VmState.STARTING, VmState.RUNNING)  # half-done
    service = Running(datastore).start()
    try:
        wait_gone(orphan)
        vm = service.client.get_vm("vm1")
        assert vm.state is VmState.POWERED_OFF
        assert service.client.vm_events("vm1")[-1]["type"] == "failed"
        assert not (datastore / "vm1" / "runtime.json").exists()
        service.client.start_vm("vm1")  # nothing left in the way
        service.client.stop_vm("vm1", hard=True)
    finally:
        service.stop()


def _cmdline_has(pid: str, text: str) -> bool:
    try:
        return text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@pytest.mark.qemu
def test_autostart_vms_power_on_when_the_service_starts(datastore):
    hv = Hypervisor(datastore)
    small_vm(hv, "auto")
    small_vm(hv, "manual")
    marked = Running(datastore).start()
    try:
        assert marked.cli("vm", "autostart", "auto", "on", check=True).stdout == "auto: autostart on\n"
        assert marked.client.get_vm("auto").autostart is True
    finally:
        marked.stop()
    service = Running(datastore).start()
    try:
        deadline = time.monotonic() + 20
        while service.client.get_vm("auto").state is not VmState.RUNNING:
            assert time.monotonic() < deadline, service.client.vm_events("auto")
            time.sleep(0.05)
        assert service.client.get_vm("manual").state is VmState.POWERED_OFF
    finally:
        service.stop()
        hv.stop_vm("auto", hard=True)


@pytest.mark.qemu
def test_a_vm_started_by_the_cli_directly_is_watched_too(service):
    small_vm(Hypervisor(service.root), "vm1")
    watcher = EventWatcher(service.client, vm="vm1")
    service.cli("vm", "start", "vm1", direct=True, check=True)
    pid = Hypervisor(service.root).get_vm("vm1").pid
    deadline = time.monotonic() + 10
    while "vm1" not in service.client.metrics()["vms"]:  # the supervisor picked it up
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    event = watcher.wait_for(lambda e: e["type"] in ("crashed", "poweredOff") and e.get("pid") == pid)
    assert event["vm"] == "vm1"
    assert service.client.get_vm("vm1").state is VmState.POWERED_OFF


@pytest.mark.qemu
def test_a_killed_console_relay_is_replaced_by_the_service_before_anyone_looks(service):
    small_vm(Hypervisor(service.root), "vm1")
    service.client.start_vm("vm1")
    log = Hypervisor(service.root).vm_paths("vm1").serial_log
    [relay] = console_relays(log)
    os.kill(relay, signal.SIGKILL)
    # no command looks at the VM: the supervisor's scan finds its relay gone and starts another
    # one: a relay's first process (gone once it detached) shares its command line for a moment
    [successor] = wait_for("a new relay", lambda: len(found := console_relays(log)) == 1 and found != [relay] and found)
    assert b"--reattach" in Path(f"/proc/{successor}/cmdline").read_bytes()
    paths = Hypervisor(service.root).vm_paths("vm1")
    assert try_lock(paths.relay_lock) is None  # it holds it: no other starts
    assert console_relays(log) == [successor]
    # the log's note of it leaves the power-on's part of the log as it was: a kill is still told from it
    pid = service.client.get_vm("vm1").pid
    os.kill(pid, signal.SIGKILL)
    wait_gone(pid)
    assert exit_reason(None, paths.vmm_log) == ("killed: the VMM ended without a shutdown request (SIGKILL, or it "
                                                "crashed)", True)


@pytest.mark.qemu
def test_a_booted_guest_keeps_running_through_a_service_restart(datastore, appliance_image):
    hv = Hypervisor(datastore)
    create_guest(hv, "guest", appliance_image, memory_mib=256, network="none")
    first = Running(datastore).start()
    try:
        first.client.start_vm("guest", wait_ready=True, timeout=90)
        before = float(first.client.exec_in_vm("guest", "cut -d' ' -f1 /proc/uptime").output)
        first.client.exec_in_vm("guest", "echo kept > /tmp/state")
        vmx = (datastore / "guest" / "guest.vmx").read_bytes()
        pid = first.client.get_vm("guest").pid
        first.stop(signal.SIGKILL)
        second = Running(datastore).start()
        result = second.client.exec_in_vm("guest", "cat /tmp/state; cut -d' ' -f1 /proc/uptime")
        state, uptime = result.output.split()
        assert (state, result.exit_code) == ("kept", 0)  # same guest, same memory: no reboot
        assert float(uptime) > before
        assert second.client.get_vm("guest").pid == pid
        assert (datastore / "guest" / "guest.vmx").read_bytes() == vmx
        assert second.client.stop_vm("guest", timeout=30) == "soft"
        second.stop()
    finally:
        first.stop(signal.SIGKILL)
        if hv.get_vm("guest").state is VmState.RUNNING:
            hv.stop_vm("guest", hard=True)


@pytest.mark.qemu
@pytest.mark.parametrize("ending, kind, reason", [
    ("kill -9", "crashed", "killed: the VMM ended without a shutdown request"),
    ("guest poweroff", "poweredOff", "the VMM exited normally (the guest powered off)")])
def test_an_adopted_vmm_killed_is_a_crash_and_a_guest_power_off_is_not(datastore, appliance_image, ending, kind,
                                                                       reason):
    """After a restart the service did not launch the VMM (no exit status): QEMU's log tells the two apart."""
    hv = Hypervisor(datastore)
    create_guest(hv, "guest", appliance_image, memory_mib=256, network="none")
    first = Running(datastore).start()
    second = Running(datastore)
    try:
        pid = first.client.start_vm("guest", wait_ready=True, timeout=90).vm.pid
        first.stop(signal.SIGKILL)
        second.start()
        reattached = second.client.vm_events("guest")[-1]
        assert (reattached["type"], reattached["pid"]) == ("reattached", pid)
        watcher = EventWatcher(second.client, vm="guest")
        if ending == "kill -9":
            os.kill(pid, signal.SIGKILL)
        else:  # from inside the guest, once the command has answered
            second.client.exec_in_vm("guest", "(sleep 1; poweroff -f) >/dev/null 2>&1 &")
        event = watcher.wait_for(lambda e: e["type"] in ("crashed", "poweredOff"), timeout=60)
        assert (event["type"], event["pid"], event["reason"][:len(reason)]) == (kind, pid, reason)
        assert second.client.get_vm("guest").state is VmState.POWERED_OFF
        logged = second.client.vm_events("guest")[-1]
        assert (logged["type"], logged["reason"]) == (kind, event["reason"])
    finally:
        first.stop(signal.SIGKILL)
        second.stop()
        if hv.get_vm("guest").state is VmState.RUNNING:
            hv.stop_vm("guest", hard=True)


@contextmanager
def killed_at(datastore: Path, point: str, act: Callable[[Running], None],
              left: Callable[[], bool] = lambda: True) -> Iterator[Running]:
    """A service that kills itself at crash point ``point`` while ``act(service)`` runs, leaving vm1's journal (and
    ``left()`` true); then a new service, which recovered vm1, for the block; stopped after, pass or fail."""
    doomed = Running(datastore).start(env={"MINIVISOR_TEST_CRASH_AT": point})
    try:
        act(doomed)
        doomed.proc.wait(timeout=10)
        assert (datastore / "vm1" / JOURNAL_NAME).exists() and left()  # half-done
    finally:
        doomed.stop(signal.SIGKILL)
    service = Running(datastore).start()
    try:
        assert service.client.vm_events("vm1")[-1]["type"] == "recovered"
        assert not (datastore / "vm1" / JOURNAL_NAME).exists()
        yield service
    finally:
        service.stop()


@pytest.mark.qemu
def test_a_snapshot_cut_short_by_a_killed_service_before_its_commit_is_undone_at_restart(datastore):
    hv = Hypervisor(datastore)
    small_vm(hv, "vm1")
    vmx_before = (datastore / "vm1" / "vm1.vmx").read_bytes()
    from minivisor.errors import HostError

    def take(doomed: Running) -> None:
        with pytest.raises(HostError):  # the service died under the request
            doomed.client.snapshot_take("vm1", "s1")

    with killed_at(datastore, "take:prepared", take) as service:
        # cut short before its commit, the take is undone: no snapshot, the specfile as it was, no overlay
        assert service.client.snapshot_list("vm1") == []
        assert (datastore / "vm1" / "vm1.vmx").read_bytes() == vmx_before
        assert sorted(p.name for p in (datastore / "vm1").glob("*.qcow2")) == ["vm1.qcow2"]
        service.client.start_vm("vm1")
        service.client.stop_vm("vm1", hard=True)


@pytest.mark.qemu
def test_a_snapshot_answered_before_its_last_steps_ran_is_finished_at_restart_when_the_service_was_killed(datastore):
    """The service answers a snapshot once its journal's commit is durable and writes the tree and the
    specfile after the answer: killed in between, the snapshot the client was told of is there at restart."""
    hv = Hypervisor(datastore)
    small_vm(hv, "vm1")
    answered = []

    def take(doomed: Running) -> None:
        answered.append(doomed.client.snapshot_take("vm1", "s1"))  # answered: the crash comes after

    with killed_at(datastore, "take:answered", take, left=lambda: not (datastore / "vm1" / "vm1.vmsd").exists()) \
            as service:
        (snap,) = answered
        assert [(s["name"], s["uid"]) for s in service.client.snapshot_list("vm1")] == [("s1", snap.uid)]
        top = service.client.get_vm("vm1").disks[0]["file"]
        assert top == "vm1-000001.qcow2" and snap.disks == {"scsi0:0": "vm1.qcow2"}
        service.client.start_vm("vm1")
        service.client.stop_vm("vm1", hard=True)
