"""The cluster in the REST API and the web page, against one lab of two real hosts (etcd of three members, a
``minivisor serve`` each, on loopback) shared by the module: the hosts' list, each VM's host, a live migration
through REST (a task with the migration's progress, the guest running on at the destination), what a migration
request refuses (and that nothing moved), and the page's Cluster view and Migrate action."""

from __future__ import annotations

import json

import os
import re
import subprocess
import threading

import pytest
from guests import create_guest
from lab import Host, in_netns, qemus_under, two_hosts, wait_for
from service.conftest import EventWatcher, chromium, page  # noqa: F401 - the browser's fixtures
from service.test_web_browser import log_in
from test_migration import WRITER, _guest, _owner, _progress
from test_ownership import cluster_of

from playwright.sync_api import expect

from minivisor import Hypervisor
from minivisor.client import connect
from minivisor.service.models import ClusterStatus, ErrorAnswer, Migrated, Vm

pytestmark = pytest.mark.qemu


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, appliance_image):
    """Hosts ``a`` and ``b`` in a cluster, their services running; ``web`` (the test guest, 64 MiB) made on
    ``a``, powered off. Every process ended and every folder removed at the end, pass or fail."""
    with two_hosts(tmp_path_factory.mktemp("cluster-web")) as (etcd, a, b):
        create_guest(Hypervisor(a.root), "web", appliance_image, memory_mib=64, network="none")
        Hypervisor(a.root).create_vm("cold", memory_mib=64, network="none")  # powered off, no disk
        cluster_of(etcd, a, b)
        yield etcd, a, b


def _running_here(host: Host) -> None:
    """``web`` running on ``host`` with the counter and writer going in it (powered on there if it is off)."""
    hv = Hypervisor(host.root)
    if hv.get_vm("web").state.value != "running":
        host.ok("vm", "start", "web", "--wait-ready")
        _guest(hv, WRITER + "; while [ ! -e /tmp/count ]; do sleep 0.05; done")


def _migrations_in(etcd) -> str:
    """Every migration request and answer in etcd (keys only)."""
    listed = subprocess.run([*in_netns(etcd.netns), "etcdctl", "--endpoints", etcd.endpoints, "get", "--prefix",
                             "--keys-only", "/minivisor/"], capture_output=True, text=True, timeout=20, check=True,
                            env={**os.environ, "ETCDCTL_API": "3"})
    return "\n".join(key for key in listed.stdout.split() if "/migrations/" in key or "/answers/" in key)


def _published(client, host: str) -> list[str]:
    """The running VMs ``host`` published in the cluster, as GET /v1/cluster lists them."""
    return next(h.get("vms") or [] for h in client.cluster_status()["hosts"] if h["name"] == host)


def _running_migration(client) -> dict | None:
    """The migrate_vm task while it runs and has said how far it is, from GET /v1/tasks."""
    status, tasks = client.request("GET", "/v1/tasks")
    return next((t for t in tasks if t["operation"] == "migrate_vm" and t["state"] == "running" and t["note"]), None)


def _events_of_migration(watcher: EventWatcher) -> list[dict]:
    """Every event until the migrate_vm task ended."""
    seen: list[dict] = []
    watcher.wait_for(lambda event: seen.append(event) or (event["type"] == "task" and event["task"]["operation"]
                                                          == "migrate_vm" and event["task"]["state"] != "running"),
                     timeout=30)
    return seen


def test_the_hosts_and_each_vms_host_and_what_a_migration_request_refuses(cluster):
    etcd, a, b = cluster
    _running_here(a)
    client = connect(a.root)
    status, hosts = client.request("GET", "/v1/cluster")
    assert status == 200 and ClusterStatus.model_validate(hosts)
    listed = {host["name"]: host for host in hosts["hosts"]}
    assert set(listed) == {"a", "b"} and all(host["live"] for host in listed.values())
    assert listed["a"]["this"] and not listed["b"]["this"]
    for host in listed.values():  # each live host's facts, as its own service published them
        assert host["cpus"] >= 1 and 0 < host["memory_free_mib"] <= host["memory_total_mib"]
        assert host["minivisor"] and host["qemu"] not in ("", "none")
    wait_for("a to publish web as running here", lambda: _published(client, "a") == ["web"], timeout=30)
    status, vms = client.request("GET", "/v1/vms")
    assert status == 200 and {vm["name"]: vm["host"] for vm in vms} == {"web": "a", "cold": "a"}
    assert all(Vm.model_validate(vm) for vm in vms)
    (pid,) = qemus_under(a.root)
    owner = _owner(etcd, Hypervisor(a.root).get_vm("web").uuid)

    refusals = [  # (path, body, status, words in the one-line message)
        ("/v1/vms/web/migrate", {"host": "c"}, 503, "host 'c' is not a live member"),
        ("/v1/vms/web/migrate", {"host": "a"}, 503, "already runs on host 'a'"),
        ("/v1/vms/cold/migrate", {"host": "b"}, 409, "cold"),  # powered off: nothing to move live
        ("/v1/vms/nothere/migrate", {"host": "b"}, 404, "nothere"),
        ("/v1/vms/web/migrate", {}, 400, "missing field 'host'"),
        ("/v1/vms/web/migrate", {"host": "../b"}, 400, "'host'"),
        ("/v1/vms/web/migrate", {"host": "b/../../etc"}, 400, "'host'"),
        ("/v1/vms/web/migrate", {"host": "b" * 100_000}, 413, ""),  # past the body's bound
        ("/v1/vms/web/migrate", {"host": "b" * 5000}, 400, "'host'"),
        ("/v1/vms/web/migrate", {"host": 5}, 400, "wrong type"),
        ("/v1/vms/web/migrate", {"host": ["b"]}, 400, "wrong type"),
        ("/v1/vms/web/migrate", {"host": "b", "hard": True}, 400, "unknown field"),
        ("/v1/vms/web/migrate", {"host": "b\nX-Injected: 1"}, 400, "'host'"),
        ("/v1/vms/..%2F..%2Fweb/migrate", {"host": "b"}, None, ""),
        ("/v1/vms/" + "w" * 300 + "/migrate", {"host": "b"}, None, ""),
    ]
    for path, body, expected, words in refusals:
        status, answer = client.request("POST", path, body)
        assert 400 <= status < 600 and status == (expected or status), (path, body, status, answer)
        error = ErrorAnswer.model_validate(answer).error
        assert "\n" not in error.message and words in error.message, (path, body, error)
        assert len(error.message) < 300, error.message  # a huge value is echoed cut short

    # nothing moved: the same VMM on a, owned by a, nothing made on b, no request left in etcd
    assert qemus_under(a.root) == [pid] and qemus_under(b.root) == []
    assert _owner(etcd, Hypervisor(a.root).get_vm("web").uuid) == owner and owner["host"] == "a"
    assert Hypervisor(b.root).list_vms() == [] and sorted(p.name for p in b.root.iterdir()) == [".minivisor"]
    assert _migrations_in(etcd) == ""
    assert connect(b.root).request("GET", "/v1/vms") == (200, [])


def test_a_migration_through_rest_is_a_task_and_the_guest_runs_on_at_the_destination(cluster):
    etcd, a, b = cluster
    _running_here(a)
    on_a, on_b = Hypervisor(a.root), Hypervisor(b.root)
    wait_for("the guest's counter", lambda: _progress(on_a)[1] > 3)
    uptime, count = _progress(on_a)
    vm_uuid = on_a.get_vm("web").uuid
    client = connect(a.root)
    watcher = EventWatcher(client)
    answered: list[tuple[int, dict]] = []
    mover = threading.Thread(target=lambda: answered.append(client.request("POST", "/v1/vms/web/migrate",
                                                                           {"host": "b"}, timeout=600)))
    mover.start()
    try:
        # while it moves, the service answers the rest: the VM and the cluster are read, not held up by its turn
        wait_for("the migration's first progress line", lambda: _running_migration(client), timeout=60)
        status, vm = client.request("GET", "/v1/vms/web")
        assert status == 200 and vm["state"] == "running" and vm["host"] == "a"
        assert client.request("GET", "/v1/cluster")[0] == 200 and _running_migration(client)
    finally:
        mover.join(timeout=600)
        try:
            events = _events_of_migration(watcher)
        finally:
            watcher.close()
    ((status, moved),) = answered
    assert status == 200, moved
    seen = [event["task"] for event in events if event["type"] == "task" and event["task"]["operation"] == "migrate_vm"]
    # the VMM the migration ended at the source is no crash (unless this host's member fenced it first, after the
    # handover: see docs/cluster.md)
    kinds = [event["type"] for event in events if event.get("vm") == "web" and event["type"] != "task"]
    assert "migrated" in kinds and ("crashed" not in kinds or "fenced" in kinds), kinds
    report = Migrated.model_validate(moved)
    assert (report.vm, report.source, report.destination) == ("web", "a", "b")
    assert report.disk_bytes >= 64 << 20 and report.memory_bytes > 0 and report.total_seconds > 0

    # one task: running with the migration's own lines as it went, then done; in the list as well
    assert len({task["id"] for task in seen}) == 1 and seen[0]["state"] == "running" and seen[-1]["state"] == "done"
    notes = [task["note"] for task in seen if task["state"] == "running" and task["note"]]
    assert notes[0].startswith("asked host b to make web"), notes
    assert any(note.startswith("disks in sync") for note in notes) and "handing web over" in notes[-1], notes
    status, listed = client.request("GET", "/v1/tasks")
    (task,) = [t for t in listed if t["operation"] == "migrate_vm" and t["state"] == "done"]
    assert (task["id"], task["vm"], task["subject"], task["error"], task["progress"]) == (seen[0]["id"], "web",
                                                                                         "b", None, 100)

    # the source: no VMM, no VM; the destination runs it, owns it, lists it with its host
    assert qemus_under(a.root) == [] and len(qemus_under(b.root)) == 1
    assert [vm["name"] for vm in client.request("GET", "/v1/vms")[1]] == ["cold"]
    assert _owner(etcd, vm_uuid)["host"] == "b"
    status, there = connect(b.root).request("GET", "/v1/vms/web")
    assert status == 200 and there["host"] == "b" and there["state"] == "running" and there["uuid"] == vm_uuid
    assert re.search(r"^host +b$", b.ok("vm", "show", "web"), re.M)  # the CLI's `vm show` says it too
    # the same boot goes on there: uptime and counter kept growing
    later_uptime, later_count = _progress(on_b)
    assert later_uptime > uptime and later_count > count
    wait_for("the counter to go on at the destination", lambda: _progress(on_b)[1] > later_count)


def test_the_page_shows_the_cluster_and_its_migrate_action_moves_a_running_vm(cluster, page):
    """Logged in to the host that runs ``web`` (b, after the migration above; a otherwise). Last: it stops the
    other host's service."""
    etcd, a, b = cluster
    _running_here(b if Hypervisor(b.root).list_vms() else a)
    here, there = (b, a) if Hypervisor(b.root).list_vms() else (a, b)
    on_there = Hypervisor(there.root)
    log_in(page, connect(here.root))

    # the Cluster view: both hosts, live, with their facts; this one marked, the VM among its running VMs
    hosts = page.locator("#cluster-hosts tbody tr")
    expect(hosts).to_have_count(2)
    for host in (a, b):
        row = page.locator(f"#cluster-hosts tr[data-host={host.name}]")
        expect(row.locator("td.live")).to_have_text("yes")
        expect(row.locator("td.memory")).to_contain_text(" of ")
        expect(row.locator("td.versions")).to_contain_text("QEMU ")
    expect(page.locator(f"#cluster-hosts tr[data-host={here.name}] td.name")).to_have_text(f"{here.name} (this host)")
    expect(page.locator(f"#cluster-hosts tr[data-host={here.name}] td.vms")).to_have_text("web")
    # the inventory's Host column, and Migrate on the running VM only, to the live other host only
    expect(page.locator("#inventory th.cluster-only")).to_be_visible()
    expect(page.locator("tr[data-vm=web] td.host")).to_have_text(here.name)
    expect(page.locator("select.migrate-host[data-vm=web] option")).to_have_text([there.name])
    assert page.locator("select.migrate-host").count() == 1

    # HA: the switch marks the VM in the cluster (what the CLI's vm ha reads back), and unmarks it
    ha = page.locator("button[data-action=ha][data-vm=web]")
    expect(page.locator("#cluster-ha")).to_have_text("HA (restarted on another host when theirs dies): none")
    expect(ha).to_have_text("HA on")
    ha.click()
    expect(page.locator("#cluster-ha")).to_have_text(f"HA (restarted on another host when theirs dies): web (on {here.name})")
    expect(ha).to_have_text("HA off")
    # registered on this host alone, with no replica: nothing could restart it, and the status says so
    assert [(vm["vm"], vm["restarts_on"]) for vm in json.loads(here.ok("cluster", "status", "--json"))["ha"]] == [
        ("web", [])]
    assert "web (on " + here.name + "; no other live host can restart it" in here.ok("cluster", "status")
    ha.click()
    expect(page.locator("#cluster-ha")).to_have_text("HA (restarted on another host when theirs dies): none")
    expect(ha).to_have_text("HA on")
    assert json.loads(here.ok("cluster", "status", "--json"))["ha"] == []

    # replication: a round copies web's disks to a replica on the other host; its end, and that host removes it
    replicas = page.locator("#cluster-replicas")
    expect(replicas).to_have_text("Replicated (disks copied to a replica on another host): none")
    expect(page.locator("select.replicate-host[data-vm=web] option")).to_have_text([there.name])
    page.select_option("select.replicate-every[data-vm=web]", "900")
    page.click("button[data-action=replicate][data-vm=web]")
    expect(replicas).to_contain_text(f"web → {there.name} (last good copy ")
    expect(replicas).to_contain_text(", generation 1, every 15 min)")
    expect(page.locator("span.replica[data-vm=web]")).to_have_text(f"replica on {there.name}")
    vm_uuid = Hypervisor(here.root).get_vm("web").uuid
    replica = there.root / ".minivisor" / "replicas" / vm_uuid.lower()
    assert (replica / "state.json").exists()
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button[data-action=replicate-off][data-vm=web]")
    expect(replicas).to_have_text("Replicated (disks copied to a replica on another host): none")
    expect(page.locator("button[data-action=replicate][data-vm=web]")).to_be_visible()
    assert json.loads(here.ok("cluster", "status", "--json"))["replicas"] == []
    wait_for(f"{there.name} to remove the replica", lambda: not replica.exists(), timeout=30)

    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button[data-action=migrate][data-vm=web]")
    done = page.locator("#tasks tr[data-operation=migrate_vm][data-state=done]")
    expect(done).to_have_count(1)
    expect(done).to_contain_text(f"Migrate to {there.name}")
    expect(page.locator("tr[data-vm=web]")).to_have_count(0)  # gone from here, with its folder
    expect(page.locator("#datastore tr[data-file=web]")).to_have_count(0)
    expect(page.locator(f"#cluster-hosts tr[data-host={there.name}] td.vms")).to_have_text("web")

    # it runs there, the same boot: its counter goes on
    assert on_there.get_vm("web").state.value == "running" and qemus_under(here.root) == []
    _, count = _progress(on_there)
    wait_for("the counter to go on after the move", lambda: _progress(on_there)[1] > count)

    # a host whose service stops is shown so once its lease has expired: not live, no facts
    there.stop_service()
    gone = page.locator(f"#cluster-hosts tr[data-host={there.name}]")
    expect(gone.locator("td.live")).to_have_text("no")
    expect(gone.locator("td.memory")).to_have_text("")
