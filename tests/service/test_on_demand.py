"""The service a command starts for the commands after it when none runs (minivisor.service.on_demand), as
libvirt's session daemon and VirtualBox's VBoxSVC are: the next command is answered by it, a service started
by hand takes its place, and it leaves once idle. Real processes, a real datastore; the commands' loaded modules
say which way each one went."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from cli_runner import modules_loaded_by_cli
from guests import create_guest, wait_for
from vmm_guard import processes

from minivisor import Hypervisor
from minivisor.client import connect
from minivisor.locks import try_lock
from minivisor.procfs import is_same_process
from minivisor.service import on_demand
from minivisor.service.discovery import LOCK_FILE, SERVICE_FILE
from minivisor.service.server import GRACE
from minivisor.vmm.console import wait_for_line

from .conftest import small_vm

THE_CORE = "minivisor.core.hypervisor"  # what a command that does its work itself loads, and a client does not


def environment(root, **more: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in ("MINIVISOR_DIRECT", on_demand.ENABLED_ENV)}
    return env | {"MINIVISOR_DATASTORE": str(root)} | more


def serving(root, *, on_demand_one: bool) -> dict:
    """The service file of the datastore's service, once that kind of service serves."""
    def record() -> dict | None:
        try:
            found = json.loads((root / SERVICE_FILE).read_text())
        except (OSError, ValueError):
            return None
        return found if found["on_demand"] is on_demand_one and connect(root) is not None else None

    return wait_for("the service to serve", record, timeout=30)


def on_demand_processes(root) -> list[int]:
    return list(processes(lambda argv: b"--on-demand" in argv and os.fsencode(root) in argv))


def lock_is_free(root) -> bool:
    fd = try_lock(root / LOCK_FILE)
    if fd is not None:
        os.close(fd)
    return fd is not None


def test_a_command_without_a_service_starts_one_that_answers_the_next_and_leaves_once_idle(tmp_path):
    root = tmp_path / "datastore"
    small_vm(Hypervisor(root), "vm1")
    env = environment(root, **{on_demand.IDLE_ENV: "3"})
    assert THE_CORE in modules_loaded_by_cli("snapshot", "take", "vm1", "first", env=env)  # by itself
    assert on_demand_processes(root)  # and started one
    record = serving(root, on_demand_one=True)
    try:
        listed = modules_loaded_by_cli("snapshot", "take", "vm1", "second", env=env)
        assert THE_CORE not in listed and "uvicorn" not in listed  # only asked the service
        assert [s["name"] for s in Hypervisor(root).snapshot_list("vm1")] == ["first", "second"]
        # idle for 3 s: it ends, its file and lock go with it; the VM and its snapshots stay
        wait_for("the idle service to leave", lambda: not is_same_process(record["pid"], record["start_ticks"]),
                 timeout=30)
        assert not (root / SERVICE_FILE).exists() and lock_is_free(root)
    finally:
        if is_same_process(record["pid"], record["start_ticks"]):
            os.kill(record["pid"], 15)


def test_a_service_started_by_hand_takes_the_place_of_an_on_demand_one(tmp_path, monkeypatch):
    monkeypatch.delenv(on_demand.ENABLED_ENV)
    root = tmp_path / "datastore"
    small_vm(Hypervisor(root), "vm1")
    env = environment(root)
    subprocess.run([sys.executable, "-m", "minivisor", "vm", "list"], env=env, check=True, capture_output=True)
    record = serving(root, on_demand_one=True)
    by_hand = subprocess.Popen([sys.executable, "-m", "minivisor", "serve", "--listen", "127.0.0.1:0"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        # it asked the on-demand service to stop, then took the datastore's service lock
        assert serving(root, on_demand_one=False)["pid"] == by_hand.pid
        assert not is_same_process(record["pid"], record["start_ticks"])
        listed = modules_loaded_by_cli("vm", "list", env=env)
        assert THE_CORE not in listed  # the one by hand answers now
    finally:
        by_hand.terminate()
        assert by_hand.wait(timeout=30) == 0
        if is_same_process(record["pid"], record["start_ticks"]):
            os.kill(record["pid"], 15)
    # and a command starts none while such a service starts: it holds the lock before it has written its file
    held = try_lock(root / LOCK_FILE)
    try:
        assert held is not None and not on_demand.wanted(str(root))
    finally:
        os.close(held)


def test_no_service_is_started_for_a_new_datastore_a_cluster_member_or_when_turned_off(tmp_path, monkeypatch):
    monkeypatch.delenv(on_demand.ENABLED_ENV)
    root = tmp_path / "datastore"
    env = environment(root)
    made = subprocess.run([sys.executable, "-m", "minivisor", "vm", "create", "vm1", "--disk-size", "16M",
                           "--memory", "64", "--network", "none"], env=env, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    off = environment(root, **{on_demand.ENABLED_ENV: "off"})
    subprocess.run([sys.executable, "-m", "minivisor", "vm", "list"], env=off, check=True, capture_output=True)
    assert not on_demand_processes(root)  # one started would be there, a child of nobody, before the command ends
    assert lock_is_free(root) and not (root / SERVICE_FILE).exists()
    assert on_demand.wanted(str(root))
    (root / ".minivisor" / "cluster.json").write_text("{}")  # a member's datastore: its service runs by hand
    assert not on_demand.wanted(str(root))
    started = subprocess.run([sys.executable, "-m", "minivisor", "serve", "--on-demand"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert started.returncode != 0 and started.stderr.strip().splitlines() == [
        f"error: the datastore {root} is a cluster member: its service is started by hand; "
        "run `minivisor serve` on this host (a systemd unit, say)"]
    assert lock_is_free(root) and not (root / SERVICE_FILE).exists()


def test_a_service_started_by_hand_while_an_on_demand_one_starts_waits_for_it_and_takes_its_place(tmp_path,
                                                                                                   monkeypatch):
    """The on-demand service holds the lock before it has written its file: a plain serve started then waits."""
    monkeypatch.delenv(on_demand.ENABLED_ENV)
    root = tmp_path / "datastore"
    small_vm(Hypervisor(root), "vm1")
    env = environment(root)
    first = subprocess.Popen([sys.executable, "-m", "minivisor", "serve", "--on-demand"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for("the on-demand service to hold the lock", lambda: not lock_is_free(root), timeout=30)
    by_hand = subprocess.Popen([sys.executable, "-m", "minivisor", "serve", "--listen", "127.0.0.1:0"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        assert serving(root, on_demand_one=False)["pid"] == by_hand.pid
        assert first.wait(timeout=30) == 0  # it left, asked to
    finally:
        by_hand.terminate()
        by_hand.wait(timeout=30)
        first.kill()
        first.wait()


@pytest.mark.qemu
def test_a_call_the_on_demand_service_answers_is_not_cut_short_by_a_service_started_by_hand(tmp_path, monkeypatch,
                                                                                            appliance_image):
    """Replaced, the on-demand service leaves once its calls are done, however long (longer than a stopping
    service's grace): the command it answers gets its answer."""
    monkeypatch.delenv(on_demand.ENABLED_ENV)
    root = tmp_path / "datastore"
    hv = Hypervisor(root)
    create_guest(hv, "ga", appliance_image, memory_mib=128, network="none")
    hv.start_vm("ga", wait_ready=True, timeout=90)
    hv.exec_in_vm("ga", "true", via="agent")
    env = environment(root)
    try:
        subprocess.run([sys.executable, "-m", "minivisor", "vm", "list"], env=env, check=True, capture_output=True)
        serving(root, on_demand_one=True)
        long_call = subprocess.Popen([sys.executable, "-m", "minivisor", "vm", "exec", "ga", "--",
                                      "sh", "-c", f"printf 'long-call-%s\\n' runs >/dev/ttyS0; "
                                      f"sleep {GRACE + 3:.0f}; echo finished"],
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for_line(hv.vm_paths("ga").serial_log, "long-call-runs", 60)  # the call runs in the on-demand service
        by_hand = subprocess.Popen([sys.executable, "-m", "minivisor", "serve", "--listen", "127.0.0.1:0"],
                                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
        try:
            output, errors = long_call.communicate(timeout=60)
            assert long_call.returncode == 0 and output == "finished\n", errors
            assert serving(root, on_demand_one=False)["pid"] == by_hand.pid
        finally:
            by_hand.terminate()
            by_hand.wait(timeout=30)
    finally:
        hv.stop_vm("ga", hard=True)
