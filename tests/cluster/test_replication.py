"""HA from a replica (`vm replicate VM --to HOST --every 3s`): a running VM's disks are copied to another host in
rounds (the first whole, the next ones only what the guest wrote since); when the VM's host is cut off, HA powers
the replica on there with every write of the last good round, never on both hosts, and the old host refuses to
power its stale copy on. Hosts in network namespaces of the test's own (named mvrp-...), etcd in another."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from guests import create_guest
from lab import in_netns, live_hosts, qemus_under, wait_for
from test_ha import where
from test_ownership import cluster_of
from vmm_guard import processes, runs_under

from minivisor import Hypervisor
from minivisor.cluster.ha import restart_after
from minivisor.cluster.liveness import HA_POLL
from minivisor.client import connect
from minivisor.storage.journal import CRASH_ENV
from minivisor.service.models import ClusterStatus, Replicated, Vm

pytestmark = pytest.mark.qemu

TTL = 6
NETNS_PREFIX = "mvrp"  # the fabric fixture's namespaces
DISK = "/dev/sda"  # the boot disk (lsilogic SCSI)
SECTOR_A, SECTOR_B, SECTOR_C, SECTOR_D = 32768, 40960, 49152, 57344  # past what the guest boots from (16 MiB on)


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
    assert [(vm["owner"], vm["restarts_on"]) for vm in a.status()["ha"]] == [("a", ["b"])]  # b holds its replica
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


def _replica_file(host, vm_uuid: str) -> Path:
    return host.root / ".minivisor" / "replicas" / vm_uuid / "web.qcow2"


def _replica_sector(host, vm_uuid: str, sector: int, length: int, tmp_path: Path) -> bytes:
    """What the replica on ``host`` holds at ``sector`` (read from its file, not through any VM)."""
    raw = tmp_path / "replica.raw"
    subprocess.run(["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", str(_replica_file(host, vm_uuid)),
                    str(raw)], check=True, timeout=120)
    data = raw.read_bytes()[sector * 512:sector * 512 + length]
    raw.unlink()
    return data


def _storage_daemons(host) -> list[int]:
    """The pids of the qemu-storage-daemon processes serving a round of ``host``'s replicas."""
    return list(processes(runs_under(host.root, b"qemu-storage-daemon")))


def _kill_the_rounds_server(host, vm_uuid: str, stop: threading.Event) -> None:
    """SIGKILL the NBD server of the next round on ``host`` once it serves (its pid noted beside the replica)."""
    note = _replica_file(host, vm_uuid).parent / ".round" / "nbd.json"
    while not stop.is_set():
        try:
            os.kill(json.loads(note.read_text())["pid"], signal.SIGKILL)
            return
        except (OSError, ValueError, KeyError):
            time.sleep(0.005)


@pytest.fixture
def replicated(etcd, hosts, appliance_image):
    """web running on a, replicated to b once (every hour: the test runs the rounds, `vm replicate` again); hosts
    on loopback."""
    a, b = hosts("a", "b")
    vm = create_guest(Hypervisor(a.root), "web", appliance_image, memory_mib=64, network="none")
    cluster_of(etcd, a, b, ttl=TTL)
    a.ok("vm", "start", "web", "--wait-ready")
    _write(Hypervisor(a.root), SECTOR_A, "record-A")
    first = json.loads(a.ok("vm", "replicate", "web", "--to", "b", "--every", "1h", "--json"))
    assert first["full"] is True and first["generation"] == 1
    return a, b, vm


def test_rounds_that_fail_halfway_leave_the_previous_replica_and_the_next_one_copies_their_writes(replicated,
                                                                                                  tmp_path,
                                                                                                  monkeypatch):
    a, b, vm = replicated
    on_a = Hypervisor(a.root)
    _write(on_a, SECTOR_B, "record-B-of-the-failed-round")
    stop = threading.Event()
    killer = threading.Thread(target=_kill_the_rounds_server, args=(b, vm.uuid, stop))
    killer.start()
    try:
        failed = a.cli("vm", "replicate", "web", "--to", "b", "--every", "1h")
    finally:
        stop.set()
        killer.join()
    error = failed.stderr.splitlines()[-1]  # after the progress lines
    assert failed.returncode == 69 and error.startswith(("error: host 'b' could not replicate 'web': ",  # it saw
                                                         "error: the replication round of VM 'web' to host 'b' "
                                                         "failed: ")), failed.stderr  # the source saw it first

    # the replica is generation 1's: no new top left, no server, record A in it and not record B (b drops the round
    # once it sees its NBD server gone: a source that saw the failure first has answered by then)
    folder = _replica_file(b, vm.uuid).parent
    wait_for("b dropped the failed round",
             lambda: sorted(p.name for p in folder.iterdir()) == ["state.json", "web.qcow2", "web.vmx"], 10)
    assert json.loads((folder / "state.json").read_text())["generation"] == 1 and _storage_daemons(b) == []
    assert _replica_sector(b, vm.uuid, SECTOR_A, 8, tmp_path) == b"record-A"
    assert _replica_sector(b, vm.uuid, SECTOR_B, 8, tmp_path) == bytes(8)
    assert _replication(a)["generation"] == 1

    shown = Vm.model_validate(json.loads(a.ok("vm", "show", "web", "--json")))  # through a's service
    assert shown.replica.target == "b" and shown.replica.generation == 1 and shown.replica.every == 3600
    (line,) = [line for line in a.ok("vm", "show", "web").splitlines() if line.startswith("Replica")]
    assert line.split(None, 1)[1].startswith("on b, last good copy ") and "(generation 1, every 3600 s)" in line
    assert "Replicated (vm replicate):\n" in a.ok("cluster", "status")
    again = connect(a.root).replicate_vm("web", "b", 3600.0)  # over REST: the service runs the round
    Replicated.model_validate(again)
    assert again["full"] is False and again["generation"] == 2 and 0 < again["bytes"] < 4 << 20
    assert _replica_sector(b, vm.uuid, SECTOR_B, 28, tmp_path) == b"record-B-of-the-failed-round"
    assert _replica_sector(b, vm.uuid, SECTOR_A, 8, tmp_path) == b"record-A"
    assert sorted(p.name for p in folder.iterdir()) == ["state.json", "web.qcow2", "web.vmx"]

    # b's service killed in the middle of making a round the replica (the overlay committed into the replica file,
    # neither deleted nor recorded): a's round fails; b's next service finishes that commit before the next round
    _write(on_a, SECTOR_C, "record-C-of-the-cut-commit")
    b.stop_service()
    monkeypatch.setenv(CRASH_ENV, "replica-committed")
    b.serve()
    monkeypatch.delenv(CRASH_ENV)
    a.status_when("b live again", lambda s: live_hosts(s) == {"a", "b"})
    cut = a.cli("vm", "replicate", "web", "--to", "b", "--every", "1h")
    assert cut.returncode == 69 and "error: host 'b' gave up the replication round of 'web'" in cut.stderr, cut.stderr
    assert b.proc.wait(timeout=10) == -signal.SIGKILL
    b.proc = None
    state = json.loads((folder / "state.json").read_text())
    assert state["generation"] == 2 and state["pending"]["files"] == ["web.qcow2"] and (folder / "web.qcow2.next").exists()
    b.serve()
    a.status_when("b live again", lambda s: live_hosts(s) == {"a", "b"})
    recovered = json.loads(a.ok("vm", "replicate", "web", "--to", "b", "--every", "1h", "--json"))
    assert recovered["full"] is False and recovered["generation"] == 4  # 3: the commit b's new service finished
    assert _replica_sector(b, vm.uuid, SECTOR_C, 26, tmp_path) == b"record-C-of-the-cut-commit"
    assert sorted(p.name for p in folder.iterdir()) == ["state.json", "web.qcow2", "web.vmx"]

    # powered off: the round opens its disks in a storage daemon (the VM cannot be powered on meanwhile)
    _write(on_a, SECTOR_D, "record-D-before-the-power-off")
    a.ok("vm", "stop", "web", "--hard")
    off = json.loads(a.ok("vm", "replicate", "web", "--to", "b", "--every", "1h", "--json"))
    assert off["generation"] == 5 and off["bytes"] < 4 << 20  # the bitmap, stored by its VMM, still tracks
    assert _replica_sector(b, vm.uuid, SECTOR_D, 29, tmp_path) == b"record-D-before-the-power-off"
    assert _storage_daemons(a) == [] and _storage_daemons(b) == []
    a.ok("vm", "start", "web", "--wait-ready")  # its disk as the round left it: it boots

    # the replica lost on b: the round fails, and the next one copies the disk whole
    shutil.rmtree(folder)
    lost = a.cli("vm", "replicate", "web", "--to", "b", "--every", "1h")
    assert lost.returncode == 69 and "this host has no replica of disk 'web.qcow2' to update" in lost.stderr
    anew = json.loads(a.ok("vm", "replicate", "web", "--to", "b", "--every", "1h", "--json"))
    assert anew["full"] is True and anew["generation"] == 1
    assert _replica_sector(b, vm.uuid, SECTOR_D, 29, tmp_path) == b"record-D-before-the-power-off"

    # --off: the record goes, and b's service removes the replica
    assert a.ok("vm", "replicate", "web", "--off") == "web: replication to b ended\n"
    assert a.status()["replicas"] == []
    wait_for("b to remove the replica", lambda: not folder.exists(), timeout=30)
    a.ok("vm", "stop", "web", "--hard")


def test_hostile_round_requests_and_bad_input_are_refused_leaving_nothing(etcd, hosts):
    a, b = hosts("a", "b")
    Hypervisor(a.root).create_vm("web", network="none", disk_size="16M")
    alone = a.cli("vm", "replicate", "web", "--to", "b")
    assert alone.returncode == 69 and alone.stderr.count("\n") == 1 and "not in a cluster" in alone.stderr
    cluster_of(etcd, a, b, ttl=TTL)
    _refuses_bad_input_in_one_line(a)
    specfile = (a.root / "web" / "web.vmx").read_text()
    good = {"id": "0" * 32, "vm": "web", "uuid": "12345678-1234-1234-1234-123456789abc", "source": "a",
            "specfile": specfile, "disks": [{"file": "web.qcow2", "size": 16 << 20}], "key": "ab" * 32,
            "full": True, "copied": False}
    malformed = {
        "not JSON": "{not json",
        "a path for a UUID": {**good, "uuid": "../../../../etc"},
        "a disk out of the folder": {**good, "disks": [{"file": "../../escape.qcow2", "size": 1 << 20}]},
        "an absolute disk": {**good, "disks": [{"file": "/etc/passwd", "size": 1 << 20}]},
        "a raw disk": {**good, "disks": [{"file": "web.raw", "size": 1 << 20}]},
        "a huge disk": {**good, "disks": [{"file": "web.qcow2", "size": 1 << 80}]},
        "a size that is text": {**good, "disks": [{"file": "web.qcow2", "size": "16M"}]},
        "a short key": {**good, "key": "ab"},
        "no disk": {**good, "disks": []},
    }
    for number, (what, value) in enumerate(malformed.items(), start=1):
        request_id = f"{number:032x}"
        body = value if isinstance(value, str) else json.dumps({**value, "id": request_id})
        etcd.put_raw(f"/minivisor/replications/b/{request_id}", body)
    wait_for("b to delete every malformed request", lambda: _etcd_keys(etcd, "replications/") == [], timeout=30)

    refused = {"a VM name that is a path": {**good, "vm": "../evil"},
               "a specfile naming another disk": {**good, "specfile": specfile.replace("web.qcow2", "other.qcow2")}}
    for number, (what, value) in enumerate(refused.items(), start=100):
        request_id = f"{number:032x}"
        etcd.put_raw(f"/minivisor/replications/b/{request_id}", json.dumps({**value, "id": request_id}))
    answers = wait_for("b's answers", lambda: len(keys := _etcd_keys(etcd, "replicated/")) == 2 and keys,
                       timeout=30)
    assert len(answers) == 2
    assert not (b.root / ".minivisor" / "replicas").exists() and _storage_daemons(b) == []
    assert [v.name for v in Hypervisor(b.root).list_vms()] == [] and not (b.root / "evil").exists()
    assert "malformed replication request" in b.log_path.read_text()


def _refuses_bad_input_in_one_line(a) -> None:
    """`vm replicate` on ``a`` (in a cluster with a live b; web powered off): each mistake is one line."""
    hv = Hypervisor(a.root)
    hv.create_vm("flat", network="none")
    raw = a.root / "flat" / "flat.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(raw), "16M"], check=True)
    vmx = a.root / "flat" / "flat.vmx"
    vmx.write_text(vmx.read_text() + 'scsi0.present = "TRUE"\nscsi0.virtualDev = "lsilogic"\n'
                   'scsi0:0.present = "TRUE"\nscsi0:0.fileName = "flat.raw"\n')
    cases = [
        (("web", "--to", "b", "--every", "5x"), 2, "'5x' is not a usable replication interval"),
        (("web", "--to", "b", "--every", "1s"), 2, "at least 2 s"),
        (("web", "--to", "a"), 69, "host 'a' is this host"),
        (("web", "--to", "nosuch"), 69, "host 'nosuch' is not a live member"),
        (("web", "--to", "../b"), 2, "is not a usable host name"),
        (("web",), 2, "--to HOST"),
        (("web", "--to", "b", "--off"), 2, "not both"),
        (("nosuch", "--to", "b"), 3, "nosuch"),
        (("flat", "--to", "b"), 69, "persistent dirty bitmaps, which need qcow2"),
        (("web", "--off"), 3, "not replicated"),
    ]
    for args, code, words in cases:
        done = a.cli("vm", "replicate", *args)
        assert done.returncode == code and done.stderr.count("\n") == 1 and words in done.stderr, (args, done.stderr)
    assert a.status()["replicas"] == []


def test_a_replication_follows_its_vm_to_another_host_and_ends_on_its_replicas_host(etcd):
    """What `vm migrate` does to the moved VM's replication record (in a real etcd): the rounds run from the new
    host, the next one whole; moved onto the host of its replica, the replication ends; changed meanwhile, left."""
    from dataclasses import replace

    from minivisor.cluster.replication import ReplicaRecord, get_record, put_record
    from minivisor.cluster.store import Store
    from minivisor.core.replication import follow_migration

    store = Store(tuple(etcd.urls))
    vm_uuid = "564d1f0e-2b3c-4d5e-8f60-718293a4b5c6"
    record = ReplicaRecord("web", "a", "b", 300.0, 1.0, last_copy=2.0, generation=7, last_bytes=65536,
                           bitmap="minivisor-replica-0123456789ab")
    put_record(store, vm_uuid, record)

    follow_migration(store, vm_uuid, "a", "c")
    assert get_record(store, vm_uuid)[0] == replace(record, source="c", bitmap="")  # no bitmap on c: a full round

    follow_migration(store, vm_uuid, "a", "d")  # not its source: the record is someone else's news
    assert get_record(store, vm_uuid)[0].source == "c"
    put_record(store, vm_uuid, replace(record, source="c", failed_over_to="b"))
    follow_migration(store, vm_uuid, "c", "d")  # failed over meanwhile: it stands
    assert get_record(store, vm_uuid)[0].failed_over_to == "b"

    put_record(store, vm_uuid, replace(record, source="c"))
    follow_migration(store, vm_uuid, "c", "b")  # onto the replica's host
    assert get_record(store, vm_uuid) is None
