"""A host cut off from etcd (its namespace's link down) fences its VM before its lease can expire; the VM may then
run on another host, and it never runs on both. Hosts in network namespaces of the test's own, etcd in another."""

from __future__ import annotations

import time

import pytest
from lab import live_hosts, qemus_under, wait_for
from test_ownership import cluster_of, same_vm_on

from minivisor import Hypervisor

pytestmark = pytest.mark.qemu
TTL = 6


def test_a_host_cut_off_fences_and_its_vm_runs_elsewhere_never_on_both(fabric, fabric_etcd, hosts, appliance_image):
    a, b = hosts("a", "b", fabric=fabric)
    same_vm_on((a, b), appliance_image)
    cluster_of(fabric_etcd, a, b, ttl=TTL)
    a.ok("vm", "start", "web")
    (pid,) = qemus_under(a.root)

    fabric.cut(1)  # a's link
    attempts = []
    deadline = time.monotonic() + TTL + 60
    while True:  # b tries to power it on, once a second, until it is allowed to
        on_a, on_b = qemus_under(a.root), qemus_under(b.root)
        assert not (on_a and on_b), "web runs on both hosts"
        result = b.cli("vm", "start", "web")
        attempts.append(result)
        if result.returncode == 0:
            break
        assert result.returncode == 4 and "runs on host 'a'" in result.stderr, result.stderr
        assert time.monotonic() < deadline, "b never got web"
        time.sleep(1)
    assert qemus_under(a.root) == [] and len(qemus_under(b.root)) == 1
    assert len(attempts) > 1  # refused while a's lease lived
    fenced = wait_for("the fence's event (written once the VMM is gone)",
                      lambda: [e for e in Hypervisor(a.root).vm_events("web") if e["type"] == "fenced"], timeout=10)
    assert len(fenced) == 1 and fenced[0]["pid"] == pid

    # a back on the network: live again with a new lease, and told that b owns web now
    fabric.mend(1)
    b.status_when("a live again", lambda s: live_hosts(s) == {"a", "b"})
    refused = a.cli("vm", "start", "web")
    assert refused.returncode == 4 and "runs on host 'b'" in refused.stderr
    assert qemus_under(a.root) == []
    b.ok("vm", "stop", "web", "--hard")
