"""HA restart (`vm ha VM on`): a VM marked HA runs again on another host that has it registered (a datastore the
hosts share, modelled as in test_partition.py) when its host dies: cut off from etcd (it fences its VMs first), or
its service killed (its watchdog process fences them); never on two hosts at once. A VM without HA, or one its
user powered off, is not restarted. Hosts in network namespaces of the test's own (named mvha-...), etcd in
another."""

from __future__ import annotations

import json
import os
import time

import pytest
from lab import live_hosts, qemus_under, wait_for
from test_ownership import cluster_of, same_vm_on
from vmm_guard import processes

from minivisor import Hypervisor
from minivisor.cluster.ha import restart_after
from minivisor.cluster.liveness import HA_POLL
from minivisor.service.models import ClusterStatus, Vm

TTL = 6
NETNS_PREFIX = "mvha"  # the fabric fixture's namespaces


def where(members, name: str) -> list[str]:
    """The hosts on which a VMM of the VM ``name`` runs now."""
    return [host.name for host in members if qemus_under(host.root / name)]


def watchdogs(host) -> list[int]:
    """The pids of the watchdog processes guarding ``host``'s datastore."""
    root = os.fsencode(os.path.realpath(host.root))
    return list(processes(lambda argv: argv[1:3] == [b"-m", b"minivisor.core.watchdog"] and len(argv) > 3
                          and os.path.realpath(argv[3]) == root))


def ha_events(host, name: str) -> list[dict]:
    return [event for event in Hypervisor(host.root).vm_events(name) if event["type"] == "haRestarted"]


def web_restarted(members, gone: str) -> object:
    """The host that runs web once it runs on a host other than ``gone``; throughout, web never runs on two hosts,
    db (not HA) runs nowhere but on ``gone`` and idle (HA, powered off by its user) nowhere. A generous deadline:
    this asserts that the restart happens, not how fast."""
    deadline = time.monotonic() + TTL + restart_after(TTL) + 90
    while True:
        on = where(members, "web")
        assert len(on) <= 1, f"web runs on {on} at once"
        assert set(where(members, "db")) <= {gone} and where(members, "idle") == []
        if on and on != [gone]:
            break
        assert time.monotonic() < deadline, "web was never restarted elsewhere"
        time.sleep(0.1)
    settle = time.monotonic() + 3 * HA_POLL  # the members' next looks restart nothing more
    while time.monotonic() < settle:
        assert where(members, "web") == on and set(where(members, "db")) <= {gone} and where(members, "idle") == []
        time.sleep(0.1)
    return next(host for host in members if host.name == on[0])


@pytest.mark.qemu
def test_an_ha_vm_runs_again_elsewhere_when_its_host_is_cut_off_or_dies(fabric, fabric_etcd, hosts,
                                                                        appliance_image):
    members = a, b, c = hosts("a", "b", "c", fabric=fabric)
    for name in ("web", "db", "idle"):  # HA and running; running, not HA; HA, and powered off by its user
        same_vm_on(members, appliance_image, name)
    cluster_of(fabric_etcd, *members, ttl=TTL)
    assert all(len(watchdogs(host)) == 1 for host in members)
    for name in ("web", "idle"):
        assert a.ok("vm", "ha", name, "on").startswith(f"{name}: HA on")  # through a's service
    assert Vm.model_validate(json.loads(b.ok("vm", "show", "web", "--json"))).ha is True  # the mark is the cluster's
    assert json.loads(b.ok("vm", "show", "db", "--json"))["ha"] is False
    assert [line.split() for line in c.ok("vm", "show", "web").splitlines() if line.startswith("HA ")] == [["HA", "yes"]]
    for name in ("idle", "web", "db"):
        a.ok("vm", "start", name)
    status = c.status_when("a owning its HA VMs", lambda s: all(vm["owner"] == "a" for vm in s["ha"]))
    assert [vm.vm for vm in ClusterStatus.model_validate(status).ha] == ["idle", "web"]
    assert ("\nHA (restarted elsewhere when their host dies): idle (on a; can restart on b, c), web (on a; can restart "
            "on b, c)\n") in c.ok("cluster", "status")
    time.sleep(2 * HA_POLL)  # every member has seen idle owned: were its release taken for a death, it would restart
    a.ok("vm", "stop", "idle", "--hard")  # its user powers it off: released, its host alive
    (pid,) = qemus_under(a.root / "web")

    # a cut off from etcd: it fences web and db; web runs again on b or c once a's lease expired (and the
    # fencing delay passed); db and idle do not
    fabric.cut(1)
    cut = time.monotonic()
    winner = web_restarted(members, "a")
    took = time.monotonic() - cut
    print(f"web ran again on {winner.name} {took:.1f} s after a was cut off "
          f"(lease TTL {TTL} s, fencing delay {restart_after(TTL):g} s)")
    assert took > TTL * 4 / 5 + restart_after(TTL)  # a's last renewal was at most TTL/5 before the cut
    fenced = {e["vm"]: e for name in ("web", "db") for e in Hypervisor(a.root).vm_events(name) if e["type"] == "fenced"}
    assert fenced.keys() == {"web", "db"} and fenced["web"]["pid"] == pid
    (restarted,) = ha_events(winner, "web")
    assert "its host 'a' is gone from the cluster" in restarted["reason"]
    assert restarted["time"] > fenced["web"]["time"] and restarted["pid"] == qemus_under(winner.root / "web")[0]

    # a back on the network: live again, it sees web owned by the winner and restarts nothing
    fabric.mend(1)
    winner.status_when("a live again", lambda s: live_hosts(s) == {"a", "b", "c"})
    refused = a.cli("vm", "start", "web")
    assert refused.returncode == 4 and f"runs on host '{winner.name}'" in refused.stderr
    assert [vm["owner"] for vm in winner.status()["ha"]] == [None, winner.name]

    # the winner's service killed (SIGKILL): nothing renews its lease, and its watchdog process, which outlives the
    # service, fences web before the lease can expire; web then runs again on one of the others
    time.sleep(2 * HA_POLL)  # a's member, live again, has seen web's new owner too
    (pid,) = qemus_under(winner.root / "web")
    winner.proc.kill()
    winner.proc.wait(timeout=10)
    winner.proc = None
    second = web_restarted(members, winner.name)
    assert second is not winner and len(ha_events(second, "web")) == 1
    (restarted,) = ha_events(second, "web")
    assert f"its host {winner.name!r} is gone" in restarted["reason"]
    (fenced,) = [e for e in Hypervisor(winner.root).vm_events("web") if e["type"] == "fenced"]
    assert fenced["pid"] == pid and fenced["reason"].startswith("fenced by the watchdog: the lease was last renewed")
    assert restarted["time"] > fenced["time"]
    second.ok("vm", "stop", "web", "--hard")

    # a service stopped with no VM running ends its watchdog; the killed one's guards on until a service is back
    others = [host for host in members if host is not winner]
    for host in others:
        host.stop_service()
    wait_for("the stopped services' watchdogs to end", lambda: not any(watchdogs(host) for host in others),
             timeout=10)
    assert len(watchdogs(winner)) == 1


def test_vm_ha_needs_a_cluster_a_known_vm_and_etcd(etcd, hosts):
    (a,) = hosts("a")
    Hypervisor(a.root).create_vm("web", network="none", disk_size="16M")
    alone = a.cli("vm", "ha", "web", "on")
    assert alone.returncode == 69 and alone.stderr == (
        "error: this datastore's host is not in a cluster; make one with `minivisor cluster init --etcd URL`, or "
        "join one with `cluster join`\n")
    assert json.loads(a.ok("vm", "show", "web", "--json"))["ha"] is None
    assert "HA" not in a.ok("vm", "show", "web")

    a.ok("cluster", "init", "--etcd", etcd.endpoints, "--name", "a")
    unknown = a.cli("vm", "ha", "nosuch", "on")
    assert unknown.returncode == 3 and unknown.stderr.count("\n") == 1 and "nosuch" in unknown.stderr
    assert a.ok("vm", "ha", "web", "on") == "web: HA on: powered on by another host of the cluster that has it " \
                                            "registered when its host dies\n"
    assert json.loads(a.ok("vm", "show", "web", "--json"))["ha"] is True
    assert Vm.model_validate(json.loads(a.ok("vm", "ha", "web", "off", "--json"))).ha is False
    assert json.loads(a.ok("vm", "show", "web", "--json"))["ha"] is False
    assert [e["enabled"] for e in Hypervisor(a.root).vm_events("web") if e["type"] == "haChanged"] == [True, False]

    etcd.close()  # no endpoint answers: the mark cannot change, and a VM shown does not say
    down = a.cli("vm", "ha", "web", "on")
    assert down.returncode == 69 and down.stderr.count("\n") == 1
    assert down.stderr.startswith(f"error: the cluster store at {etcd.endpoints} is unreachable: ")
    assert json.loads(a.ok("vm", "show", "web", "--json"))["ha"] is None
