"""Placement: `vm start` on a cluster runs the VM on the host with room that the rules allow, or on --host;
real etcd, real services, real QEMU. One lab for the module: hosts a and b, each with web1 and web2 registered
(same UUIDs: what a datastore both hosts share shows them)."""

from __future__ import annotations

import json
import shutil

import pytest
from guests import create_guest
from lab import Host, live_hosts, qemus_under, two_hosts, wait_for

from minivisor import Hypervisor
from minivisor.host.admission import overhead_mib

pytestmark = pytest.mark.qemu

VMS = ("web1", "web2")


@pytest.fixture(scope="module")
def lab(tmp_path_factory, appliance_image):
    """Hosts a and b in one cluster (three etcd members), web1 and web2 registered on both, their services
    running; everything ended and removed at the end, pass or fail."""
    with two_hosts(tmp_path_factory.mktemp("placement")) as (etcd, a, b):
        for vm in VMS:
            made_vm = create_guest(Hypervisor(a.root), vm, appliance_image, memory_mib=64, network="none")
            shutil.copytree(made_vm.vmx.parent, b.root / made_vm.vmx.parent.name)
            Hypervisor(b.root).register_vm(b.root / made_vm.vmx.parent.name / made_vm.vmx.name)
        a.ok("cluster", "init", "--etcd", etcd.endpoints, "--name", "a", "--ttl", "6")
        b.ok("cluster", "join", "--etcd", etcd.endpoints, "--name", "b")
        for host in (a, b):
            host.serve()
        a.status_when("both hosts live", lambda s: live_hosts(s) == {"a", "b"})
        yield a, b, etcd


def start(host: Host, *args: str) -> str:
    """``vm start ARGS --json`` on ``host``; the host the VM runs on, by the answer."""
    return json.loads(host.ok("vm", "start", *args, "--json"))["host"]


def running(*hosts: Host) -> dict[str, list[str]]:
    """Each host's running VMs, as its own datastore sees them."""
    return {host.name: sorted(vm.name for vm in Hypervisor(host.root).list_vms() if vm.pid) for host in hosts}


def refused(host: Host, *args: str) -> str:
    """The one line a refused ``vm start ARGS`` says (exit 69: a cluster's refusal)."""
    result = host.cli("vm", "start", *args)
    assert result.returncode == 69 and result.stderr.count("\n") == 1, result.stderr
    return result.stderr


def test_vm_start_runs_here_on_the_host_named_or_where_there_is_room(lab):
    a, b, _ = lab
    assert start(a, "web1") == "a" and running(a, b) == {"a": ["web1"], "b": []}
    a.ok("vm", "stop", "web1", "--hard")

    # --host b: asked through etcd, b powers it on and says so, the guest ready there
    said = json.loads(a.ok("vm", "start", "web1", "--host", "b", "--wait-ready", "--json"))
    assert said["host"] == "b" and said["vm"]["state"] == "running" and said["ready_line"]
    assert running(a, b) == {"a": [], "b": ["web1"]} and qemus_under(a.root) == []
    assert Hypervisor(b.root).exec_in_vm("web1", "echo on-b").output.strip() == "on-b"
    b.ok("vm", "stop", "web1", "--hard")

    # a VM filling a's room (no disk: its firmware idles, touching little of its memory); once a says so,
    # web1 started on a runs on b, and --host a is refused in one line, nothing started
    room = _row(a.status_when("a's room published", lambda s: _row(s, "a").get("memory_room_mib")), "a")
    room = room["memory_room_mib"]
    big = room - overhead_mib(room, "tcg") - 100
    a.ok("vm", "create", "big", "--memory", str(big), "--network", "none")
    a.ok("vm", "start", "big", "--host", "a")
    a.status_when("a full", lambda s: _row(s, "a")["memory_room_mib"] < 200)
    again = a.cli("vm", "start", "big")  # it runs here: said so, not that no host has room for it
    assert again.returncode == 4 and "no host" not in again.stderr and "running" in again.stderr, again.stderr
    assert start(a, "web1") == "b" and running(a, b) == {"a": ["big"], "b": ["web1"]}
    line = refused(a, "web2", "--host", "a")
    assert line.startswith("error: no host can power 'web2' on: a has room for ") and "'web2' needs 136 MiB" in line
    assert running(a, b) == {"a": ["big"], "b": ["web1"]}

    # no host at all: b already runs web1, which a rule keeps apart from web2
    a.ok("vm", "rule", "add", "web1", "web2", "--apart")
    line = refused(a, "web2")
    assert line == ("error: no host can power 'web2' on: a has room for "
                    f"{_row(a.status(), 'a')['memory_room_mib']} MiB of VMs, and 'web2' needs 136 MiB; b runs 'web1', "
                    "which rule 1 keeps apart from 'web2'; free memory on a host, register the VM there, or change "
                    "the rules (vm rule list)\n")
    assert running(a, b) == {"a": ["big"], "b": ["web1"]}
    a.ok("vm", "rule", "remove", "1")
    for host, vm in ((a, "big"), (b, "web1")):
        host.ok("vm", "stop", vm, "--hard")


def test_rules_keep_vms_apart_or_together(lab):
    a, b, _ = lab
    added = json.loads(a.ok("vm", "rule", "add", "web1", "web2", "--apart", "--json"))
    assert json.loads(b.ok("vm", "rule", "list", "--json")) == [added] and added["kind"] == "apart"
    assert start(a, "web1") == "a" and start(a, "web2") == "b"
    assert running(a, b) == {"a": ["web1"], "b": ["web2"]}
    for host, vm in ((a, "web1"), (b, "web2")):
        host.ok("vm", "stop", vm, "--hard")

    both = [a.popen("vm", "start", vm, "--host", "a") for vm in VMS]  # at once: each placed before the other claims
    said = [(proc.wait(timeout=120), proc.stderr.read()) for proc in both]
    assert sorted(code for code, _ in said) == [0, 69], said
    refusal = max(said)[1]  # placement's, or the claim's when the other VM's claim came between
    assert refusal.count("\n") == 1 and f"which rule {added['id']} keeps apart from" in refusal, refusal
    assert len(running(a, b)["a"]) == 1 and running(a, b)["b"] == []
    a.ok("vm", "stop", running(a, b)["a"][0], "--hard")

    contradiction = a.cli("vm", "rule", "add", "web2", "web1", "--together")
    assert contradiction.returncode == 4 and contradiction.stderr == (
        f"error: rule {added['id']} keeps 'web1' and 'web2' apart; remove it first: minivisor vm rule remove "
        f"{added['id']}\n")
    a.ok("vm", "rule", "remove", str(added["id"]))
    together = json.loads(a.ok("vm", "rule", "add", "web2", "web1", "--together", "--json"))
    assert start(b, "web1", "--host", "a") == "a" and start(b, "web2") == "a"  # b asks, web2 follows web1 to a
    assert running(a, b) == {"a": ["web1", "web2"], "b": []}
    a.ok("vm", "stop", "web2", "--hard")
    assert refused(b, "web2", "--host", "b") == (
        f"error: no host can power 'web2' on: b is not where 'web1' runs (a), which rule {together['id']} keeps "
        "together with 'web2'; free memory on a host, register the VM there, or change the rules (vm rule list)\n")
    a.ok("vm", "rule", "remove", str(together["id"]))
    assert json.loads(a.ok("vm", "rule", "list", "--json")) == []
    assert "host 'ghost' is not a live member of the cluster" in refused(a, "web2", "--host", "ghost")

    a.ok("vm", "stop", "web1", "--hard")
    b.stop_service()  # nothing runs there: its lease is revoked at once
    a.status_when("b not live", lambda s: live_hosts(s) == {"a"})
    assert refused(a, "web2", "--host", "b") == (
        "error: host 'b' is not a live member of the cluster: 'web2' cannot start there; see `minivisor cluster "
        "status` (its service, minivisor serve, must run)\n")
    assert running(a, b) == {"a": [], "b": []} and qemus_under(b.root) == []
    b.serve()
    a.status_when("b live again", lambda s: live_hosts(s) == {"a", "b"})


def test_hostile_start_requests_start_nothing(lab):
    """Anyone who can write etcd can ask b: a malformed request (even a value that is not JSON, here or among the
    migration requests) is deleted unanswered and hides no request after it; one naming a VM b does not have (or
    has under another UUID) is answered failed; nothing is started."""
    from minivisor.cluster.store import PREFIX, Store

    a, b, etcd = lab
    store = Store(tuple(etcd.urls))
    web1 = Hypervisor(b.root).get_vm("web1")
    good = {"vm": "web1", "uuid": web1.uuid, "source": "a", "wait_ready": False, "timeout": 10}
    malformed = [{"id": "1" * 32}, {**good, "vm": "../web1"}, {**good, "vm": ["web1"]}, {**good, "uuid": "x;y"},
                 {**good, "timeout": 1e9}, {**good, "wait_ready": "yes"}, {**good, "source": "a/../b"}]
    for mailbox in ("starts", "migrations"):
        etcd.put_raw(f"{PREFIX}{mailbox}/b/{'0' * 31}-", "not json {")
    for index, value in enumerate(malformed):
        request_id = f"{index:032x}"
        store.put(f"starts/b/{request_id}", {"id": request_id, **value} if "vm" in value else value)
    wait_for("b to drop the malformed requests", lambda: store.list("starts/b/", malformed_as_empty=True)
             == store.list("migrations/b/", malformed_as_empty=True) == [], timeout=30)
    assert store.list("started/") == []

    errors = []
    for index, (name, uuid) in enumerate((("web1", "564d0000-0000-0000-0000-000000000000"), ("nope", web1.uuid))):
        request_id = f"a{index:031x}"
        store.put(f"starts/b/{request_id}", {**good, "id": request_id, "vm": name, "uuid": uuid})
        answer = wait_for("b's answer", lambda: store.get(f"started/{request_id}"), timeout=30).value
        assert answer["state"] == "failed" and answer["pid"] == 0, answer
        errors.append(answer["error"])
        store.delete(f"starts/b/{request_id}")
        store.delete(f"started/{request_id}")
    assert f"its VM 'web1' is another VM (UUID {web1.uuid})" in errors[0] and "'nope'" in errors[1], errors
    assert running(a, b) == {"a": [], "b": []} and qemus_under(b.root) == []


def _row(status: dict, host: str) -> dict:
    return next(row for row in status["hosts"] if row["name"] == host)
