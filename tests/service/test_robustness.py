"""Concurrency, CLI and API together, QMP faults and log flooding against a real service."""

from __future__ import annotations

import http.client
import json
import random
import socket
import threading
from collections import Counter
from pathlib import Path

import pytest
from vmm_guard import processes

from minivisor import Hypervisor
from minivisor.core.events import LOG_CAP, LOG_NAME
from minivisor.vmm.states import VmState

from .conftest import small_vm

ANSWERS = {200, 201, 409}  # 409: the VM was not in a state for that operation, or busy


def vmm_count(uuid: str) -> int:
    return len(processes(lambda argv: b"qemu-system" in argv[0] and any(uuid.encode() in arg for arg in argv)))


def power_sequence_is_sane(events: list[dict]) -> None:
    """poweredOn and poweredOff alternate: no VM was ever started twice."""
    running = False
    for event in events:
        if event["type"] == "poweredOn":
            assert not running, f"started twice: {events}"
            running = True
        elif event["type"] in ("poweredOff", "crashed", "failed"):
            assert running, f"off while off: {events}"
            running = False


@pytest.mark.qemu
def test_200_concurrent_requests_mixing_reads_and_power_operations(service):
    hv = Hypervisor(service.root)
    names = [small_vm(hv, f"vm{i}") for i in range(4)]
    uuids = {name: hv.get_vm(name).uuid for name in names}
    rng = random.Random(4)
    plan = []
    for i in range(200):
        name = "vm0" if i % 2 else rng.choice(names)  # half of the traffic on the same VM
        kind = rng.choice(["list", "show", "show", "metrics", "start", "start", "stop", "pause", "resume"])
        plan.append((kind, name))
    answers: list[tuple[str, str, int, dict]] = []
    peak = Counter()
    barrier = threading.Barrier(len(plan))

    def request(kind: str, name: str) -> None:
        method, path, body = {"list": ("GET", "/v1/vms", None), "show": ("GET", f"/v1/vms/{name}", None),
                              "metrics": ("GET", "/v1/metrics", None),
                              "stop": ("POST", f"/v1/vms/{name}/stop", b'{"hard": true}')}.get(
            kind, ("POST", f"/v1/vms/{name}/{kind}", b"{}"))
        conn = http.client.HTTPConnection(service.client.host, service.client.port, timeout=120)
        barrier.wait()
        try:
            conn.request(method, path, body=body, headers={"Authorization": f"Bearer {service.token}"})
            response = conn.getresponse()
            answers.append((kind, name, response.status, json.loads(response.read())))
        finally:
            conn.close()
        for vm, uuid in uuids.items():
            peak[vm] = max(peak[vm], vmm_count(uuid))

    threads = [threading.Thread(target=request, args=step) for step in plan]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answers) == 200  # every request answered
    statuses = Counter(status for _, _, status, _ in answers)
    assert set(statuses) <= ANSWERS, json.dumps([a for a in answers if a[2] not in ANSWERS])
    for kind, _, status, body in answers:
        if status == 409:
            assert kind in ("start", "stop", "pause", "resume")
            assert body["error"]["code"] in ("invalid-state", "locked")
    assert max(peak.values()) <= 1  # never two VMMs for one VM
    for name in names:
        power_sequence_is_sane(service.client.vm_events(name, limit=0))
        vm = service.client.get_vm(name)
        assert vmm_count(uuids[name]) == (1 if vm.state in (VmState.RUNNING, VmState.PAUSED) else 0)


CLI_LOOP = 6


@pytest.mark.qemu
def test_the_cli_directly_and_the_api_at_once_on_the_same_vm(service):
    hv = Hypervisor(service.root)
    small_vm(hv, "vm1")
    uuid = hv.get_vm("vm1").uuid
    outcomes: list[tuple[str, int]] = []
    peak = [0]

    def cli_loop() -> None:
        for i in range(CLI_LOOP):
            args = ("vm", "start", "vm1") if i % 2 == 0 else ("vm", "stop", "vm1", "--hard")
            result = service.cli(*args, direct=True)  # straight to the datastore, beside the service
            outcomes.append(("cli", result.returncode))
            assert result.returncode in (0, 4), result.stderr
            assert result.stderr.count("\n") <= 1
            peak[0] = max(peak[0], vmm_count(uuid))

    def api_loop() -> None:
        from minivisor.errors import StateError

        for i in range(CLI_LOOP):
            try:
                if i % 2 == 0:
                    service.client.start_vm("vm1")
                else:
                    service.client.stop_vm("vm1", hard=True)
                outcomes.append(("api", 0))
            except StateError:
                outcomes.append(("api", 4))
            peak[0] = max(peak[0], vmm_count(uuid))

    threads = [threading.Thread(target=cli_loop), threading.Thread(target=api_loop)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(outcomes) == 2 * CLI_LOOP and peak[0] <= 1
    assert any(code == 0 for _, code in outcomes)
    vm = service.client.get_vm("vm1")
    assert vm == Hypervisor(service.root).get_vm("vm1")  # service and datastore agree
    assert vmm_count(uuid) == (1 if vm.state is VmState.RUNNING else 0)


def fake_qmp(path: Path, behaviour: str) -> threading.Thread:
    """A QMP socket that misbehaves: drops the connection, or greets with garbage."""
    path.unlink(missing_ok=True)  # the real VMM keeps running, unreachable
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(8)

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            if behaviour == "garbage":
                conn.sendall(b"this is not QMP\n" + b"x" * 70000 + b"\n")
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.qemu
@pytest.mark.parametrize("behaviour", ["drop", "garbage"])
def test_qmp_faults_give_a_typed_error_and_the_service_stays_up(service, behaviour):
    hv = Hypervisor(service.root)
    small_vm(hv, "vm1")
    service.client.start_vm("vm1")
    fake_qmp(hv.vm_paths("vm1").qmp_socket, behaviour)
    conn = http.client.HTTPConnection(service.client.host, service.client.port, timeout=60)
    conn.request("POST", "/v1/vms/vm1/pause", body=b"{}", headers={"Authorization": f"Bearer {service.token}"})
    response = conn.getresponse()
    error = json.loads(response.read())["error"]
    conn.close()
    assert (response.status, error["code"]) == (502, "qmp-error")
    assert hv.get_vm("vm1").state is VmState.RUNNING  # nothing changed
    metrics = service.client.metrics()["vms"]["vm1"]  # /proc numbers still come, disk numbers do not
    assert metrics["cpu_seconds"] > 0 and "disks" not in metrics
    assert service.client.stop_vm("vm1", hard=True) == "killed"  # QMP gone: SIGKILL, and cleanup runs
    assert service.client.get_vm("vm1").state is VmState.POWERED_OFF


def test_event_log_flooding_is_capped_and_the_service_stays_responsive(service):
    hv = Hypervisor(service.root)
    small_vm(hv, "vm1")
    stop = threading.Event()
    answered = []

    def reader() -> None:
        while not stop.is_set():
            answered.append(len(service.client.list_vms()))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        flood = Hypervisor(service.root)
        for i in range(4000):
            flood.vms.emit("vm1", "guestSays", line="spam " * 20 + str(i))
    finally:
        stop.set()
        thread.join()
    log = service.root / "vm1" / LOG_NAME
    assert log.stat().st_size <= LOG_CAP
    assert log.with_name(LOG_NAME + ".1").stat().st_size <= LOG_CAP
    assert not log.with_name(LOG_NAME + ".2").exists()
    last = service.client.vm_events("vm1", limit=1)[0]
    assert last["line"].endswith(" 3999")
    assert answered and set(answered) == {1}
