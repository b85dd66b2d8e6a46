"""One owner per VM: two hosts that power on the same VM at once, real QEMU processes counted."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest
from guests import create_guest
from lab import live_hosts, qemus_under, wait_for

from minivisor import Hypervisor

pytestmark = pytest.mark.qemu


def same_vm_on(hosts, appliance_image, name: str = "web"):
    """A VM made on the first host and registered, same folder contents and UUID, on the others (what a
    datastore shared by the hosts would show each of them)."""
    first, *others = hosts
    vm = create_guest(Hypervisor(first.root), name, appliance_image, memory_mib=64, network="none")
    for host in others:
        shutil.copytree(vm.vmx.parent, host.root / vm.vmx.parent.name)
        assert Hypervisor(host.root).register_vm(host.root / vm.vmx.parent.name / vm.vmx.name).uuid == vm.uuid
    return vm


def cluster_of(etcd, *members, ttl: int = 6):
    """``members`` in a cluster (the first makes it), their services running, every one live."""
    first, *others = members
    first.ok("cluster", "init", "--etcd", etcd.endpoints, "--name", first.name, "--ttl", str(ttl))
    for host in others:
        host.ok("cluster", "join", "--etcd", etcd.endpoints, "--name", host.name)
    for host in members:
        host.serve()
    first.status_when("every host live", lambda s: live_hosts(s) == {h.name for h in members})


def test_three_hosts_power_on_the_same_vm_at_once_exactly_one_runs(etcd, hosts, appliance_image):
    members = hosts("a", "b", "c")
    same_vm_on(members, appliance_image)
    cluster_of(etcd, *members)

    starts = {host: subprocess.Popen([sys.executable, "-m", "minivisor", "-d", str(host.root), "vm", "start", "web"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for host in members}
    results = {host: (proc.wait(timeout=120), *proc.communicate()) for host, proc in starts.items()}
    winners = [host for host, (code, _, _) in results.items() if code == 0]
    assert len(winners) == 1, results
    winner, losers = winners[0], [host for host in members if host is not winners[0]]
    for loser in losers:
        code, _, stderr = results[loser]
        assert code == 4 and stderr == (f"error: VM 'web' runs on host '{winner.name}', which owns it in the "
                                        f"cluster; stop it on {winner.name} first\n")
    assert len(qemus_under(winner.root)) == 1 and all(qemus_under(loser.root) == [] for loser in losers)
    winner.status_when("the owner reporting its VM",
                       lambda s: _vms(s) == {host.name: ["web"] if host is winner else [] for host in members})

    # powered off on its owner, the VM is free: another host may run it now, and then only there
    winner.ok("vm", "stop", "web", "--hard")
    other = losers[0]
    again = other.cli("vm", "start", "web")
    assert again.returncode == 0, again.stderr
    for host in (winner, losers[1]):
        refused = host.cli("vm", "start", "web")
        assert refused.returncode == 4 and f"runs on host '{other.name}'" in refused.stderr
    assert [len(qemus_under(host.root)) for host in members] == [int(host is other) for host in members]
    other.ok("vm", "stop", "web", "--hard")


def test_a_power_on_needs_a_live_member(etcd, hosts, appliance_image):
    """A host in the cluster whose service does not run holds no lease: it powers nothing on."""
    (a,) = hosts("a")
    same_vm_on((a,), appliance_image)
    a.ok("cluster", "init", "--etcd", etcd.endpoints, "--name", "a")
    result = a.cli("vm", "start", "web")
    assert result.returncode == 69 and result.stderr.count("\n") == 1
    assert "host 'a' is not a live member of the cluster" in result.stderr and "minivisor serve" in result.stderr
    assert qemus_under(a.root) == []


def _vms(status: dict) -> dict[str, list[str]]:
    return {host["name"]: host.get("vms") for host in status["hosts"]}


def test_a_restarted_service_keeps_its_lease_and_its_vms_owned(etcd, hosts, appliance_image):
    from minivisor.cluster.store import Store

    a, b = hosts("a", "b")
    same_vm_on((a, b), appliance_image)
    cluster_of(etcd, a, b, ttl=10)
    a.ok("vm", "start", "web")
    running = qemus_under(a.root)
    store = Store(tuple(etcd.urls))
    lease = store.get("alive/a").lease

    a.stop_service()  # its VMs keep running; it comes back within the fence delay
    a.serve()
    a.status_when("a live again, with its VM", lambda s: _vms(s).get("a") == ["web"] and "a" in live_hosts(s))
    assert store.get("alive/a").lease == lease and store.get(f"owners/{Hypervisor(a.root).get_vm('web').uuid}").lease \
        == lease
    assert qemus_under(a.root) == running
    refused = b.cli("vm", "start", "web")
    assert refused.returncode == 4 and "runs on host 'a'" in refused.stderr
    leave = a.cli("cluster", "leave")  # its VM would have no owner
    assert leave.returncode == 4 and leave.stderr == ("error: host 'a' runs VMs (web), which it owns; stop them first, "
                                                      "then leave the cluster\n")
    a.ok("vm", "stop", "web", "--hard")


def test_a_vm_that_dies_on_its_own_is_released_by_its_member(etcd, hosts, appliance_image):
    """No `vm stop` to release the claim: the owner's member sees the VM powered off and gives it up."""
    a, b = hosts("a", "b")
    same_vm_on((a, b), appliance_image)
    cluster_of(etcd, a, b)
    a.ok("vm", "start", "web")
    (pid,) = qemus_under(a.root)
    os.kill(pid, signal.SIGKILL)  # a crash: nothing of minivisor's power-off runs
    wait_for("b to be allowed to run web", lambda: b.cli("vm", "start", "web").returncode == 0, timeout=60, every=1)
    assert qemus_under(a.root) == [] and len(qemus_under(b.root)) == 1
    b.ok("vm", "stop", "web", "--hard")


def test_a_host_running_a_vm_another_host_owns_may_not_join(etcd, hosts, appliance_image):
    """Joined, it would have to fence that VM at once: refused instead, and it joins once the VM is stopped."""
    a, b = hosts("a", "b")
    same_vm_on((a, b), appliance_image)
    cluster_of(etcd, a)
    a.ok("vm", "start", "web")
    b.ok("vm", "start", "web")  # b is a single host still: no cluster, no claim
    refused = b.cli("cluster", "join", "--etcd", etcd.endpoints, "--name", "b")
    assert refused.returncode == 4 and refused.stderr == ("error: VM 'web' runs here, and host 'a' runs it in the "
                                                          "cluster; stop it here before joining\n")
    assert not (b.root / ".minivisor" / "cluster.json").exists() and len(qemus_under(b.root)) == 1
    b.ok("vm", "stop", "web", "--hard")
    b.ok("cluster", "join", "--etcd", etcd.endpoints, "--name", "b")
    a.ok("vm", "stop", "web", "--hard")
