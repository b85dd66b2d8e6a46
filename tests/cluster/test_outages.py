"""etcd outages: a member killed (the cluster goes on), then every member (cluster operations fail with one
line, running VMs keep running until the host fences them, before its lease can expire), then etcd back."""

from __future__ import annotations

import time

import pytest
from lab import live_hosts, qemus_under, wait_for
from test_ownership import cluster_of, same_vm_on

from minivisor import Hypervisor
from minivisor.cluster.config import fence_after

pytestmark = pytest.mark.qemu
TTL = 10


def test_an_etcd_member_killed_the_cluster_goes_on(etcd, hosts, appliance_image):
    a, b = hosts("a", "b")
    same_vm_on((a, b), appliance_image)
    cluster_of(etcd, a, b, ttl=TTL)
    a.ok("vm", "start", "web")
    running = qemus_under(a.root)

    etcd.kill(0)  # the first endpoint each host tries
    refused = b.cli("vm", "start", "web")
    assert refused.returncode == 4 and "runs on host 'a'" in refused.stderr
    time.sleep(TTL + 1)  # longer than a lease: renewals went to the two members left
    assert live_hosts(b.status()) == {"a", "b"}
    assert qemus_under(a.root) == running and qemus_under(b.root) == []
    a.ok("vm", "stop", "web", "--hard")
    b.ok("vm", "start", "web")
    b.ok("vm", "stop", "web", "--hard")


def test_etcd_unreachable_operations_fail_and_the_host_fences(etcd, hosts, appliance_image):
    (a,) = hosts("a")
    same_vm_on((a,), appliance_image)
    Hypervisor(a.root).clone_vm("web", "db")  # another VM, powered off
    cluster_of(etcd, a, ttl=TTL)
    a.ok("vm", "start", "web")
    running = qemus_under(a.root)
    assert len(running) == 1

    etcd.close()  # every member: nothing answers
    assert qemus_under(a.root) == running  # the VM keeps running while its lease may still be alive
    for args in (("cluster", "status"), ("vm", "start", "db")):
        result = a.cli(*args)
        assert result.returncode == 69 and result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith(f"error: the cluster store at {etcd.endpoints} is unreachable: ")
        assert "connection refused" in result.stderr

    wait_for("the host to fence its VM", lambda: qemus_under(a.root) == [], timeout=TTL + 30)
    fenced = wait_for("the fence's event (written once the VMM is gone)",
                      lambda: [e for e in Hypervisor(a.root).vm_events("web") if e["type"] == "fenced"], timeout=10)
    assert len(fenced) == 1 and fenced[0]["pid"] == running[0]
    assert f"not renewed for {fence_after(TTL):g} s (TTL {TTL} s)" in fenced[0]["reason"]
    assert qemus_under(a.root) == []  # and db never started

    # etcd back: the host takes a new lease, the old one and its claims are gone, the VM may run again
    etcd.start()
    a.status_when("a live again", lambda s: live_hosts(s) == {"a"})
    a.ok("vm", "start", "web")
    assert len(qemus_under(a.root)) == 1
    a.ok("vm", "stop", "web", "--hard")
