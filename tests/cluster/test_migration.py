"""Live migration with local disks between two hosts, each in a network namespace of the test's own, etcd in
another: the guest keeps running (a counter in it goes on, no reboot), what it wrote is on the destination's disk,
and a migration whose destination VMM dies leaves the VM running on the source with nothing left on the
destination."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time

import pytest
from guests import create_guest
from lab import Host, in_netns, qemus_under, wait_for
from test_ownership import cluster_of

from minivisor import Hypervisor
from minivisor.service.models import Migrated
from minivisor.text import READY_MAX

pytestmark = pytest.mark.qemu

DISK = "/dev/sda"  # the boot disk (lsilogic SCSI)
BASE = 32768  # the guest writes record i at sector BASE + i of its disk (16 MiB in: past what it boots from)
# A counter and a writer in the guest: record i (its number, 8 digits) written and synced, then counted (the
# count replaced by a rename: never seen half-written).
WRITER = (f"(i=0; while :; do i=$((i+1)); printf '%08d' $i | dd of={DISK} bs=512 seek=$(({BASE}+i)) "
          "conv=notrunc,fsync 2>/dev/null; echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; sleep 0.05; done) "
          ">/dev/null 2>&1 & "
          "echo $! > /tmp/writer.pid")


def _guest(hv: Hypervisor, command: str) -> str:
    result = hv.exec_in_vm("web", command, timeout=30)
    assert result.exit_code == 0, result
    return result.output.strip()


def _progress(hv: Hypervisor) -> tuple[float, int]:
    """The guest's uptime and its counter."""
    uptime, count = _guest(hv, "cut -d' ' -f1 /proc/uptime; cat /tmp/count").split()
    return float(uptime), int(count)


def _owner(etcd, vm_uuid: str) -> dict | None:
    done = subprocess.run([*in_netns(etcd.netns), "etcdctl", "--endpoints", etcd.endpoints, "get",
                           f"/minivisor/owners/{vm_uuid}", "--print-value-only"], capture_output=True, text=True,
                          timeout=20, env={**os.environ, "ETCDCTL_API": "3"}, check=True)
    return json.loads(done.stdout) if done.stdout.strip() else None


def _pids_in(netns: str) -> list[int]:
    listed = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True, check=True, timeout=20)
    return [int(pid) for pid in listed.stdout.split()]


def _goes_on_and_keeps_every_record(b, before: tuple[float, int], disk, tmp_path) -> None:
    """After a move to ``b``: the same boot goes on (uptime and counter kept growing, the writer still runs); once
    the writer is stopped and the VM powered off, every record the guest wrote, before, during and after the
    move, is in ``disk``."""
    on_b = Hypervisor(b.root)
    uptime, count = before
    later_uptime, later_count = _progress(on_b)
    assert later_uptime > uptime and later_count > count
    wait_for("the counter to go on at the destination", lambda: _progress(on_b)[1] > later_count)
    _guest(on_b, "kill $(cat /tmp/writer.pid)")
    written = int(_guest(on_b, "sleep 0.2; cat /tmp/count"))
    b.ok("vm", "stop", "web", "--hard")
    raw = tmp_path / "web.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(disk), str(raw)], check=True, timeout=120)
    data = raw.read_bytes()
    bad = [i for i in range(1, written + 1) if data[(BASE + i) * 512:(BASE + i) * 512 + 8] != b"%08d" % i]
    assert written > later_count and bad == []


def _running_guest(fabric, fabric_etcd, hosts, appliance_image):
    a, b = hosts("a", "b", fabric=fabric)
    vm = create_guest(Hypervisor(a.root), "web", appliance_image, memory_mib=64, network="none")
    cluster_of(fabric_etcd, a, b)
    a.ok("vm", "start", "web", "--wait-ready")
    _guest(Hypervisor(a.root), WRITER + "; while [ ! -e /tmp/count ]; do sleep 0.05; done")
    return a, b, vm


def test_a_running_guest_moves_with_its_disk_and_keeps_running(fabric, fabric_etcd, hosts, appliance_image, tmp_path):
    a, b, vm = _running_guest(fabric, fabric_etcd, hosts, appliance_image)
    on_a = Hypervisor(a.root)
    wait_for("the guest's counter", lambda: _progress(on_a)[1] > 5)
    uptime, count = _progress(on_a)

    for host, why in (("c", "host 'c' is not a live member of the cluster"), ("a", "already runs on host 'a'")):
        refused = a.cli("vm", "migrate", "web", host)
        assert refused.returncode == 69 and refused.stderr.count("\n") == 1 and why in refused.stderr, refused.stderr

    moved = a.cli("vm", "migrate", "web", "b", "--json", timeout=600)
    assert moved.returncode == 0, moved.stderr
    report = json.loads(moved.stdout)
    Migrated.model_validate(report)  # the fields POST /v1/vms/{name}/migrate answers (its model, in /openapi.json)
    assert report["source"] == "a" and report["destination"] == "b"
    assert report["disk_bytes"] >= 64 << 20 and report["memory_bytes"] > 0  # writes during the copy: more
    assert 0 <= report["downtime_ms"] and 0 < report["total_seconds"]

    # the source: no VMM, no VM; the destination runs it and owns it
    assert qemus_under(a.root) == [] and len(qemus_under(b.root)) == 1
    assert [v.name for v in on_a.list_vms()] == [] and not (a.root / "web").exists()
    owner = _owner(fabric_etcd, vm.uuid)
    assert owner["host"] == "b"
    on_b = Hypervisor(b.root)
    assert on_b.get_vm("web").uuid == vm.uuid
    assert on_b.wait_ready("web", timeout=1)  # the same boot: ready already
    assert not (on_b.vm_paths("web").runtime_dir / "keys.psk").exists()  # the one-time key is gone

    _goes_on_and_keeps_every_record(b, (uptime, count), b.root / "web" / "web.qcow2", tmp_path)
    assert _owner(fabric_etcd, vm.uuid) is None


def test_a_guest_on_shared_storage_moves_without_its_disk_being_copied(fabric, fabric_etcd, hosts, appliance_image,
                                                                       tmp_path):
    """A disk on storage both hosts mount (a folder allowed on both, named by its absolute path) is not copied:
    the destination opens the very file, the guest's writes before, during and after the move are all in it, and
    nothing of the migration is left next to it. A destination that does not allow that folder refuses."""
    a, b = hosts("a", "b", fabric=fabric)
    on_a, on_b = Hypervisor(a.root), Hypervisor(b.root)
    vm = create_guest(on_a, "web", appliance_image, memory_mib=64, network="none")
    shared = tmp_path / "shared"
    shared.mkdir()
    disk = shared / "web.qcow2"
    (vm.vmx.parent / "web.qcow2").rename(disk)
    vm.vmx.write_text(vm.vmx.read_text().replace('fileName = "web.qcow2"', f'fileName = "{disk}"'))
    on_a.allow_path(shared)
    cluster_of(fabric_etcd, a, b)
    a.ok("vm", "start", "web", "--wait-ready")
    _guest(on_a, WRITER + "; while [ ! -e /tmp/count ]; do sleep 0.05; done")

    refused = a.cli("vm", "migrate", "web", "b")  # b does not allow the folder
    progress, error = refused.stderr.splitlines()
    assert progress == "  asked host b to make web (1 disk(s) on shared storage, not copied)"
    assert refused.returncode == 69 and error.startswith("error: host 'b' could not take VM 'web': ") \
        and "outside the datastore" in error, refused.stderr
    assert on_a.get_vm("web").state == "running" and on_b.list_vms() == [] and qemus_under(b.root) == []

    on_b.allow_path(shared)
    subprocess.run(["chattr", "+i", str(shared)], check=True)  # read-only even for root: no note can be written
    try:
        refused = a.cli("vm", "migrate", "web", "b")
    finally:
        subprocess.run(["chattr", "-i", str(shared)], check=True)
    assert refused.returncode == 69 and refused.stderr.splitlines() == [
        f"error: cannot write the migration's one-time note next to the shared disks in {shared}: Operation not "
        "permitted; the destination reads it to prove it opens the same files: make the folder writable from this "
        "host (or move the VM's disks into its folder)"], refused.stderr
    assert on_a.get_vm("web").state == "running" and on_b.list_vms() == [] and qemus_under(b.root) == []
    assert sorted(path.name for path in shared.iterdir()) == ["web.qcow2"]

    wait_for("the guest's counter", lambda: _progress(on_a)[1] > 5)
    uptime, count = _progress(on_a)
    moved = a.cli("vm", "migrate", "web", "b", "--json", timeout=600)
    assert moved.returncode == 0, moved.stderr
    report = json.loads(moved.stdout)
    assert report["disk_bytes"] == 0 and report["memory_bytes"] > 0  # the memory only
    assert qemus_under(a.root) == [] and not (a.root / "web").exists() and disk.is_file()
    assert sorted(path.name for path in shared.iterdir()) == ["web.qcow2"]  # no proof note left
    assert _owner(fabric_etcd, vm.uuid)["host"] == "b"
    assert not (b.root / "web" / "web.qcow2").exists()  # nothing was made for it at the destination

    _goes_on_and_keeps_every_record(b, (uptime, count), disk, tmp_path)


@pytest.mark.parametrize("killed", ["vmm", "host", "migration"])
def test_a_migration_killed_halfway_leaves_the_vm_running_on_the_source(fabric, fabric_etcd, hosts,
                                                                        appliance_image, killed):
    """``vmm``: the destination's VMM is killed; ``host``: every process of the destination's namespace (its
    service and the VMM), and its service started again finds and removes what the first one made;
    ``migration``: the source's ``vm migrate`` process, whose VMM its host's service then sets back."""
    a, b, vm = _running_guest(fabric, fabric_etcd, hosts, appliance_image)
    on_a = Hypervisor(a.root)
    (pid,) = qemus_under(a.root)
    _, count = _progress(on_a)

    env = {name: value for name, value in os.environ.items() if name != "MINIVISOR_DIRECT"}
    migration = subprocess.Popen([*in_netns(a.netns), sys.executable, "-m", "minivisor", "-d", str(a.root), "vm",
                                  "migrate", "web", "b"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=env)
    try:
        # halfway: once the source reports its disks' copy under way, the destination's VMM is killed
        progress = []
        for line in iter(migration.stderr.readline, ""):
            progress.append(line)
            if line.startswith("  disks"):
                break
        incoming = qemus_under(b.root)
        assert len(incoming) == 1, (progress, migration.poll(), b.log_path.read_text()[-3000:])
        incoming = incoming[0]
        victims = {"vmm": [incoming], "host": _pids_in(b.netns), "migration": [migration.pid]}[killed]
        for victim in victims:
            os.kill(victim, 9)
        _, rest = migration.communicate(timeout=300)
    finally:
        if migration.poll() is None:
            migration.kill()
            migration.wait()
    errors = [line for line in (*progress, *rest.splitlines()) if line and not line.startswith("  ")]
    if killed == "migration":
        assert migration.returncode == -9 and errors == []
    else:
        assert migration.returncode == 69 and len(errors) == 1, errors
        assert errors[0].startswith("error: ") and "host 'b'" in errors[0], errors

    # the VM runs on at the source, the same VMM, owned there; nothing of it is left on the destination
    if killed == "migration":
        wait_for("the source's service to withdraw the request",
                 lambda: not list((a.root / ".minivisor" / "outgoing").iterdir()), timeout=30)
    assert qemus_under(a.root) == [pid] and on_a.get_vm("web").state == "running"
    assert _owner(fabric_etcd, vm.uuid)["host"] == "a"
    if killed == "host":
        b.serve()
    try:
        wait_for("the destination to remove what it made",
                 lambda: not (b.root / "web").exists() and Hypervisor(b.root).list_vms() == [], timeout=60)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; b's service log ends with:\n{b.log_path.read_text()[-3000:]}") from None
    assert qemus_under(b.root) == []
    time.sleep(0.5)
    assert _progress(on_a)[1] > count
    a.ok("vm", "stop", "web", "--hard")


def test_a_migration_whose_process_died_after_the_handover_leaves_no_old_copy_at_the_source(etcd, hosts,
                                                                                              appliance_image):
    """A ``vm migrate`` killed between the handover and removing the VM at the source: the source's service finds
    its marker, sees the destination owning the VM, and removes the VM there (its disks are an old copy, which
    must never be powered on again); a marker whose VM this host still owns undoes the migration instead."""
    from minivisor import procfs
    from minivisor.cluster.records import LiveRecord, OwnerRecord, from_value, to_value
    from minivisor.cluster.store import Store

    a, b = hosts("a", "b")
    vm = create_guest(Hypervisor(a.root), "web", appliance_image, memory_mib=64, network="none")
    cluster_of(etcd, a, b)
    a.ok("vm", "start", "web")
    store = Store(tuple(etcd.urls))
    gone = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True)  # a process that ended
    dead_pid = int(gone.stdout)
    alive_b = store.get("alive/b")
    b_id = from_value(LiveRecord, alive_b.value, alive_b.key).id
    b.stop_service()  # its member would give up a VM it owns and does not run: this handover is made by hand
    held = store.grant(120)  # b's lease went with its service
    assert store.replace(f"owners/{vm.uuid}", to_value(OwnerRecord("b", b_id, "web")),
                         store.get(f"owners/{vm.uuid}").mod_revision, lease=held)  # the handover happened
    marker = a.root / ".minivisor" / "outgoing" / ("ab" * 16)
    marker.parent.mkdir(mode=0o700, exist_ok=True)
    marker.write_text(json.dumps({"pid": dead_pid, "start": procfs.start_ticks(os.getpid()), "vm": "web",
                                  "dest": "b"}))
    wait_for("the source's service to remove its old copy", lambda: not marker.exists(), timeout=60)
    assert Hypervisor(a.root).list_vms() == [] and not (a.root / "web").exists() and qemus_under(a.root) == []
    assert _owner(etcd, vm.uuid)["host"] == "b"  # untouched: b's to release
    store.revoke(held)


SPECFILE = ('.encoding = "UTF-8"\nconfig.version = "8"\nvirtualHW.version = "19"\ndisplayName = "evil"\n'
            'guestOS = "other-64"\nmemSize = "64"\nscsi0.present = "TRUE"\nscsi0.virtualDev = "lsilogic"\n'
            'scsi0:0.present = "TRUE"\nscsi0:0.fileName = "{name}"\n')


def _request(name: str, specfile_disk: str, disk: str, size: int = 1 << 20) -> dict:
    """A migration request, with an id of its own (a destination's answers to earlier ones stay in etcd)."""
    return {"id": secrets.token_hex(16), "vm": name, "uuid": "0123abcd-0000-4000-8000-000000000001",
            "source": "elsewhere", "source_id": "x", "specfile": SPECFILE.format(name=specfile_disk),
            "disks": [{"file": disk, "format": "qcow2", "size": size, "shared": False}], "key": "cd" * 32,
            "ready": "", "proof": ""}


def _shared_request(path: str, name: str = "evil") -> dict:
    request = _request(name, path, path)
    request["disks"][0]["shared"] = True
    return {**request, "proof": "ef" * 16}


def test_a_shared_disk_the_destination_sees_without_the_sources_note_is_refused(etcd, hosts, tmp_path):
    """A request naming a disk on 'shared' storage that the destination allows, but whose note from the source is
    not next to it (another file at that path, or a forged request), is refused: nothing is made, the file is
    untouched."""
    from minivisor.cluster.store import Store

    (b,) = hosts("b")
    shared = tmp_path / "shared"
    shared.mkdir()
    disk = shared / "web.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "1M"], check=True)
    before = disk.read_bytes()
    Hypervisor(b.root).allow_path(shared)
    cluster_of(etcd, b)
    store = Store(tuple(etcd.urls))
    for note in (None, "00" * 16):
        request = {**_shared_request(str(disk), "web"), "id": (note or "ab")[:2] * 16}
        if note:
            (shared / f".minivisor-migration-{request['id']}").write_text(note)
        store.put("migrations/b/" + request["id"], request)
        answer = wait_for("the answer", lambda: store.get("answers/" + request["id"]), timeout=30).value
        assert answer["state"] == "failed" and "does not see the disk" in answer["error"], answer
        store.delete("migrations/b/" + request["id"])
    assert Hypervisor(b.root).list_vms() == [] and qemus_under(b.root) == [] and disk.read_bytes() == before


@pytest.fixture(scope="module")
def destination(module_etcd, tmp_path_factory):
    """Host ``b``, alone in a cluster on the module's etcd, its service running: where the two tests below send
    their requests. Each leaves it as it found it, and asserts so (no VM, no VMM, nothing in its datastore but
    ``.minivisor``)."""
    folder = tmp_path_factory.mktemp("host-b")
    b = Host("b", folder)
    try:
        cluster_of(module_etcd, b)
        yield b
    finally:
        trouble = b.close()
        shutil.rmtree(folder)
        if trouble:
            pytest.fail("VMs left running that would not stop (killed): " + "; ".join(trouble))


@pytest.mark.parametrize(("request_value", "answered"), [
    (_request("evil", "/etc/passwd", "evil.qcow2"), "names other disks"),  # the disk the specfile opens is not made
    (_request("evil", "..", ".."), "no disk file of a VM's folder"),
    (_request("evil", "evil.vmx", "evil.vmx"), "no disk file of a VM's folder"),
    (_request("evil", "json:{}", "json:{}"), "QEMU would read as a protocol"),
    (_request("../evil", "evil.qcow2", "evil.qcow2"), "not a valid VM name"),
    (_request("evil", "evil.qcow2", "evil.qcow2", size=1 << 60), None),  # out of bounds: not even answered
    (_request("evil", "evil.qcow2", "../evil.qcow2"), None),
    ({**_request("evil", "evil.qcow2", "evil.qcow2"), "key": "'; rm -rf /"}, None),
    (_shared_request("/etc/passwd"), "outside the datastore"),  # a host file as a "shared" disk
    (_shared_request("/etc/../etc/passwd"), None),
    ({**_shared_request("/etc/passwd"), "proof": ""}, None),
    ({**_request("evil", "evil.qcow2", "evil.qcow2"), "proof": "ef" * 16}, None),  # a proof without shared disks
    ({**_request("evil", "evil.qcow2", "evil.qcow2"), "ready": "r" * (READY_MAX + 1)}, None),  # more than a relay notes
], ids=["disk-elsewhere", "dot-dot", "specfile-as-disk", "protocol", "name", "huge", "slash", "key", "shared-host-file",
        "shared-dot-dot", "shared-no-proof", "proof-unshared", "ready-line"])
def test_a_hostile_migration_request_is_refused_and_nothing_is_made(module_etcd, destination, request_value,
                                                                    answered):
    from minivisor.cluster.store import Store

    b = destination
    store = Store(tuple(module_etcd.urls))
    key = "migrations/b/" + request_value["id"]
    store.put(key, request_value)
    if answered is None:  # malformed: dropped, with no answer
        wait_for("the request to be dropped", lambda: store.get(key) is None, timeout=30)
        assert store.get("answers/" + request_value["id"]) is None
    else:
        answer = wait_for("the answer", lambda: store.get("answers/" + request_value["id"]), timeout=30).value
        assert answer["state"] == "failed" and answered in answer["error"], answer
    assert Hypervisor(b.root).list_vms() == [] and qemus_under(b.root) == []
    assert sorted(path.name for path in b.root.iterdir()) == [".minivisor"]
    assert not list((b.root / ".minivisor").glob("staging/*"))


def test_the_destination_serves_the_disks_only_to_the_key_holder_and_removes_all_once_withdrawn(module_etcd,
                                                                                                destination, tmp_path):
    """While the destination waits, its NBD server answers only a client with the request's key (TLS-PSK); the
    source withdrawing its request makes it kill its VMM and remove the VM."""
    from minivisor.cluster.store import Store

    b = destination
    store = Store(tuple(module_etcd.urls))
    request = _request("web", "web.qcow2", "web.qcow2")
    store.put("migrations/b/" + request["id"], request)
    answer = wait_for("the answer", lambda: store.get("answers/" + request["id"]), timeout=60).value
    assert answer["state"] == "ready", answer
    assert len(qemus_under(b.root)) == 1 and Hypervisor(b.root).get_vm("web").uuid == request["uuid"]

    def nbd_info(key: str | None) -> subprocess.CompletedProcess:
        target = f"driver=nbd,host={answer['address']},port={answer['nbd_port']},export=scsi0-0"
        tls = []
        if key is not None:
            folder = tmp_path / key[:8]
            folder.mkdir(mode=0o700)
            (folder / "keys.psk").write_text(f"minivisor:{key}\n")
            tls = ["--object", f"tls-creds-psk,id=tls0,endpoint=client,dir={folder},username=minivisor"]
            target += ",tls-creds=tls0"
        return subprocess.run(["qemu-img", "info", *tls, "--image-opts", target], capture_output=True, text=True,
                              timeout=30)

    assert nbd_info(None).returncode != 0  # no TLS: refused
    assert nbd_info("ef" * 32).returncode != 0  # another key: refused
    served = nbd_info(request["key"])
    assert served.returncode == 0 and "virtual size: 1 MiB" in served.stdout, served.stderr

    store.delete("migrations/b/" + request["id"])  # the source withdraws (or dies, and its lease takes it)
    wait_for("the destination to remove what it made",
             lambda: qemus_under(b.root) == [] and Hypervisor(b.root).list_vms() == [], timeout=30)
    assert sorted(path.name for path in b.root.iterdir()) == [".minivisor"]
    assert store.get("answers/" + request["id"]) is None
