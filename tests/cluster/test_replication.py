"""HA from a replica (`vm replicate VM --to HOST --every 3s`): a running VM's disks are copied to another host in
rounds (the first whole, the next ones only what the guest wrote since); when the VM's host is cut off, HA powers
the replica on there with every write of the last good round, never on both hosts, and the old host refuses to
power its stale copy on. Hosts in network namespaces of the test's own (named mvrp-...), etcd in another."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from guests import create_guest
from lab import in_netns, live_hosts, qemus_under, wait_for
from test_ha import where
from test_ownership import cluster_of

from minivisor import Hypervisor
from minivisor.cluster.ha import restart_after
from minivisor.cluster.liveness import HA_POLL
from minivisor.service.models import ClusterStatus

pytestmark = pytest.mark.qemu

TTL = 6
NETNS_PREFIX = "mvrp"  # the fabric fixture's namespaces
DISK = "/dev/sda"  # the boot disk (lsilogic SCSI)
SECTOR_A, SECTOR_B = 32768, 40960  # past what the guest boots from (16 and 20 MiB in)


def _guest(hv: Hypervisor, command: str) -> str:
    result = hv.exec_in_vm("web", command, timeout=30)
    assert result.exit_code == 0, result
    return result.output.strip()


def _write(hv: Hypervisor, sector: int, text: str) -> None:
    """``text`` at ``sector`` of the guest's disk, synced to the disk before this returns."""
    _guest(hv, f"printf '{text}' | dd of={DISK} bs=512 seek={sector} conv=notrunc,fsync 2>/dev/null")


def _read(hv: Hypervisor, sector: int, length: int) -> str:
    return _guest(hv, f"dd if={DISK} bs=512 skip={sector} count=1 2>/dev/null | head -c {length}")


def _replication(host, name: str = "web") -> dict | None:
    found = [item for item in host.status()["replicas"] if item["vm"] == name]
    return found[0] if found else None


def _etcd_keys(etcd, prefix: str) -> list[str]:
    done = subprocess.run([*in_netns(etcd.netns), "etcdctl", "--endpoints", etcd.endpoints, "get", "--prefix",
                           f"/minivisor/{prefix}", "--keys-only"], capture_output=True, text=True, timeout=20,
                          env={**os.environ, "ETCDCTL_API": "3"}, check=True)
    return [line for line in done.stdout.split() if line]


def test_an_ha_vm_runs_again_from_its_replica_with_the_last_rounds_writes(fabric, fabric_etcd, hosts,
                                                                          appliance_image):
    a, b = hosts("a", "b", fabric=fabric)
    vm = create_guest(Hypervisor(a.root), "web", appliance_image, memory_mib=64, network="none")
    cluster_of(fabric_etcd, a, b, ttl=TTL)
    a.ok("vm", "start", "web", "--wait-ready")
    on_a = Hypervisor(a.root)
    _write(on_a, SECTOR_A, "record-A-before-the-first-copy")

    first = a.cli("vm", "replicate", "web", "--to", "b", "--every", "3s", "--json", timeout=300)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    disk_size = (a.root / "web" / "web.qcow2").stat().st_size  # at most what a full copy reads, at least its data
    assert report["full"] is True and report["generation"] == 1 and report["target"] == "b"
    assert report["bytes"] >= 64 << 20  # the whole virtual disk
    status = ClusterStatus.model_validate(a.status())
    (listed,) = status.replicas
    assert (listed.vm, listed.source, listed.target, listed.every, listed.uuid) == ("web", "a", "b", 3.0, vm.uuid)
    assert not (b.root / "web").exists() and [v.name for v in Hypervisor(b.root).list_vms()] == []  # not a VM there

    _write(on_a, SECTOR_B, "record-B-after-the-first-copy")
    written = time.time()
    later = wait_for("a round that began after record B was written",
                     lambda: (r := _replication(a)) and r["last_copy"] > written and r, timeout=120)
    assert later["generation"] >= 2 and 0 < later["last_bytes"] < disk_size / 4 < report["bytes"]
    print(f"first copy {report['bytes']} bytes; a later incremental round {later['last_bytes']} bytes")

    a.ok("vm", "ha", "web", "on")
    time.sleep(2 * HA_POLL)  # b's restarter has seen web owned by a (a release would not be a death)
    fabric.cut(1)
    cut = time.monotonic()
    deadline = cut + TTL + restart_after(TTL) + 90
    while (on := where((a, b), "web")) != ["b"]:
        assert len(on) <= 1, f"web runs on {on} at once"
        assert time.monotonic() < deadline, "web was never powered on from its replica"
        time.sleep(0.1)
    print(f"web ran from its replica on b {time.monotonic() - cut:.1f} s after a was cut off")
    on_b = Hypervisor(b.root)
    assert on_b.get_vm("web").uuid == vm.uuid
    wait_for("b's power-on of web to be done", lambda: on_b.get_vm("web").pid)  # its QEMU shows before
    assert on_b.wait_ready("web", timeout=120)
    assert _read(on_b, SECTOR_A, 30) == "record-A-before-the-first-copy"
    assert _read(on_b, SECTOR_B, 29) == "record-B-after-the-first-copy"
    assert not (b.root / ".minivisor" / "replicas" / vm.uuid).exists()

    fabric.mend(1)
    b.status_when("a live again", lambda s: live_hosts(s) == {"a", "b"})
    assert qemus_under(a.root) == []  # fenced when it was cut off
    refused = a.cli("vm", "start", "web")
    assert refused.returncode == 4 and refused.stderr.count("\n") == 1, refused.stderr
    assert "VM 'web' failed over to host 'b' at " in refused.stderr and "the copy here is older" in refused.stderr
    assert "minivisor vm delete web" in refused.stderr
    (record,) = b.status()["replicas"]
    assert record["failed_over_to"] == "b"
    time.sleep(2 * HA_POLL)  # a's replicator runs no round of a VM that failed over
    assert _etcd_keys(fabric_etcd, "replications/") == [] and where((a, b), "web") == ["b"]
    b.ok("vm", "stop", "web", "--hard")
