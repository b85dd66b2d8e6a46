"""End to end: snapshots seen from inside the guest.

The appliance's root is an initramfs in RAM, so disk data lives on a second
virtual disk (the 16 MiB one) that the guest writes and reads with dd.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from guests import create_guest

from minivisor import Hypervisor
from minivisor.images.layers import format_for, read_layer
from minivisor.images.qemu_img import check_disk
from minivisor.errors import ConflictError, DiskError, NotFoundError
from minivisor.spec.vmsd import SnapshotTree
from minivisor.vmm.states import VmState

pytestmark = pytest.mark.qemu


def make_vm(hv: Hypervisor, name: str, appliance_image: Path, network: str = "none") -> str:
    """The appliance on scsi0:0 and an empty 16 MiB data disk on scsi0:1."""
    create_guest(hv, name, appliance_image, memory_mib=160, network=network)
    folder = hv.datastore.root / name
    hv.disk_create(folder / "data.qcow2", "16M")
    vmx = folder / f"{name}.vmx"
    vmx.write_text(vmx.read_text() + 'scsi0:1.present = "TRUE"\nscsi0:1.fileName = "data.qcow2"\n')
    return name


# The 16 MiB data disk (Linux names SCSI disks in probe order, so sda/sdb is not stable).
DATA_DISK = """$(awk '$3 == 16384 {print "/dev/" $4}' /proc/partitions)"""


def write_mark(hv: Hypervisor, name: str, mark: str) -> None:
    result = hv.exec_in_vm(name, f"printf '{mark}' > /tmp/m; dd if=/tmp/m of={DATA_DISK} bs=512 count=1 "
                                 "conv=sync,fsync 2>/dev/null; sync; echo written")
    assert result.output.strip().endswith("written"), result.output


def read_mark(hv: Hypervisor, name: str) -> str:
    result = hv.exec_in_vm(name, f"dd if={DATA_DISK} bs=512 count=1 2>/dev/null | tr -d '\\000'")
    assert result.exit_code == 0
    return result.output.strip()


def boot_and_read(hv: Hypervisor, name: str) -> str:
    hv.start_vm(name, wait_ready=True, timeout=90)
    return read_mark(hv, name)


def disk_mark(path: Path, tmp_path: Path) -> str:
    """The first sector of a disk file (through its chain), read on the host with qemu-img."""
    out = tmp_path / "sector.raw"
    out.unlink(missing_ok=True)
    subprocess.run(["qemu-img", "dd", "-f", format_for(path), "-O", "raw", f"if={path}", f"of={out}", "bs=512",
                    "count=1"], check=True, capture_output=True)
    return out.read_bytes().rstrip(b"\0").decode()


def assert_all_disks_clean(folder: Path) -> None:
    for image in folder.glob("*.qcow2"):
        code, output = check_disk(read_layer(image, "qcow2"))
        assert code == 0, output


def test_write_snapshot_change_revert_reads_the_original(hv, appliance_image):
    vm = make_vm(hv, "snap", appliance_image)
    hv.start_vm(vm, wait_ready=True, timeout=90)
    write_mark(hv, vm, "original")
    hv.stop_vm(vm, hard=True)
    snap = hv.snapshot_take(vm, "before", description="the original data")
    folder = hv.datastore.root / vm
    vmx = (folder / f"{vm}.vmx").read_text()
    # like VMware: the specfile now names new deltas, whose recorded backing format is explicit
    assert 'scsi0:0.fileName = "snap-000001.qcow2"' in vmx and 'scsi0:1.fileName = "data-000001.qcow2"' in vmx
    delta = read_layer(folder / "data-000001.qcow2", "qcow2")
    assert (delta.backing_name, delta.backing_format) == ("data.qcow2", "qcow2")
    assert snap.disks == {"scsi0:0": "snap.qcow2", "scsi0:1": "data.qcow2"}

    assert boot_and_read(hv, vm) == "original"
    write_mark(hv, vm, "changed")
    assert read_mark(hv, vm) == "changed"
    with pytest.raises(ConflictError):  # names are unique within a VM
        hv.snapshot_take(vm, "before")
    snap_back, running = hv.snapshot_revert(vm, "before")
    assert not running and hv.get_vm(vm).state is VmState.POWERED_OFF  # disk-only snapshot: powered off
    assert boot_and_read(hv, vm) == "original"
    hv.stop_vm(vm, hard=True)
    assert_all_disks_clean(folder)
    # the discarded delta is gone; only the frozen files and the new tops are left
    assert sorted(p.name for p in folder.glob("*.qcow2")) == [
        "data-000002.qcow2", "data.qcow2", "snap-000002.qcow2", "snap.qcow2"]


def test_a_tree_of_snapshots_with_reverts_between_branches_and_deletes_that_keep_every_snapshot(
        hv, appliance_image, tmp_path):
    vm = make_vm(hv, "tree", appliance_image)
    folder = hv.datastore.root / vm
    # s1 (A) -> s2 (B) -> s3 (C), and s1 -> s4 (D): written from the guest, snapshots taken while it runs
    hv.start_vm(vm, wait_ready=True, timeout=90)
    for mark, snap in (("A", "s1"), ("B", "s2"), ("C", "s3")):
        write_mark(hv, vm, mark)
        hv.snapshot_take(vm, snap, memory=False)
    hv.snapshot_revert(vm, "s1")  # disk-only: the VM is powered off on s1's disks
    assert boot_and_read(hv, vm) == "A"
    write_mark(hv, vm, "D")
    hv.snapshot_take(vm, "s4", memory=False)
    hv.stop_vm(vm, hard=True)

    tree = hv.snapshot_list(vm)
    assert [(s["name"], s["depth"], s["current"]) for s in tree] == [
        ("s1", 0, False), ("s2", 1, False), ("s3", 2, False), ("s4", 1, True)]
    hv.snapshot_revert(vm, "s3")
    assert boot_and_read(hv, vm) == "C"
    hv.snapshot_revert(vm, "s2")  # reverting a running VM stops it first
    assert boot_and_read(hv, vm) == "B"
    hv.stop_vm(vm, hard=True)

    def frozen(name: str) -> Path:
        snaps = SnapshotTree.load(folder / f"{vm}.vmsd")
        return folder / snaps.find(name, vm).disks["scsi0:1"]

    hv.snapshot_delete(vm, "s2")  # a middle snapshot: its data folds into s3's layer
    assert {s["name"] for s in hv.snapshot_list(vm)} == {"s1", "s3", "s4"}
    assert [disk_mark(frozen(n), tmp_path) for n in ("s1", "s3", "s4")] == ["A", "C", "D"]
    hv.snapshot_delete(vm, "s1")  # the root, two dependents: each gets its data
    assert [(s["name"], s["parent"]) for s in hv.snapshot_list(vm)] == [("s3", None), ("s4", None)]
    assert [disk_mark(frozen(n), tmp_path) for n in ("s3", "s4")] == ["C", "D"]
    assert_all_disks_clean(folder)
    hv.snapshot_revert(vm, "s3")
    assert boot_and_read(hv, vm) == "C"
    hv.snapshot_revert(vm, "s4")
    assert boot_and_read(hv, vm) == "D"
    with pytest.raises(NotFoundError) as missing:
        hv.snapshot_delete(vm, "s2")
    assert "s3" in missing.value.hint


def test_a_memory_snapshot_resumes_the_running_guest_where_it_was(hv, appliance_image):
    vm = make_vm(hv, "mem", appliance_image)
    hv.start_vm(vm, wait_ready=True, timeout=90)
    # a counter in guest memory, ticking in the background
    # (written aside and renamed: a reader never finds the file empty, which would end the wait below early)
    hv.exec_in_vm(vm, "(i=0; while :; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; "
                      "sleep 0.05; done) >/dev/null 2>&1 &")
    hv.exec_in_vm(vm, "while [ ! -s /tmp/count ]; do sleep 0.05; done")
    before = int(hv.exec_in_vm(vm, "cat /tmp/count").output)  # the counter at the snapshot is at least this
    hv.pause_vm(vm)  # freeze the counter for the snapshot
    snap = hv.snapshot_take(vm, "hot", description="counter running")
    assert snap.memory_file and (hv.datastore.root / vm / snap.memory_file).stat().st_size > 0
    assert hv.get_vm(vm).state is VmState.PAUSED  # a paused VM stays paused
    hv.resume_vm(vm)
    at_snapshot = int(hv.exec_in_vm(vm, "cat /tmp/count").output)
    hv.exec_in_vm(vm, f"while [ $(cat /tmp/count) -lt {at_snapshot + 40} ]; do sleep 0.05; done")
    later = int(hv.exec_in_vm(vm, "cat /tmp/count").output)
    assert later >= at_snapshot + 40

    hv.stop_vm(vm, hard=True)
    vmx = hv.datastore.root / vm / f"{vm}.vmx"
    vmx.write_text(vmx.read_text().replace('memSize = "160"', 'memSize = "192"'))  # edited after the snapshot
    snap, running = hv.snapshot_revert(vm, "hot")  # powered off: a memory snapshot powers it on, as it was
    assert running and hv.get_vm(vm).state is VmState.RUNNING
    assert hv.get_vm(vm).memory_mib == 160  # the snapshot's own hardware came back with it
    resumed = int(hv.exec_in_vm(vm, "cat /tmp/count").output)
    # back where it was, not rebooted (a reboot would lose /tmp); the counter ticks while minivisor works,
    # so the value at the snapshot is only known to lie between the reads around the pause
    assert before <= resumed < later
    hv.exec_in_vm(vm, f"while [ $(cat /tmp/count) -le {resumed} ]; do sleep 0.05; done")  # and still counting
    assert [s["current"] for s in hv.snapshot_list(vm)] == [True]
    hv.stop_vm(vm, hard=True)
    assert_all_disks_clean(hv.datastore.root / vm)


def test_deleting_snapshots_of_a_running_vm_merges_them_in_the_vmm(hv, appliance_image):
    vm = make_vm(hv, "live", appliance_image)
    folder = hv.datastore.root / vm
    hv.start_vm(vm, wait_ready=True, timeout=90)
    write_mark(hv, vm, "A")
    hv.snapshot_take(vm, "s1", memory=False)
    write_mark(hv, vm, "B")
    hv.snapshot_take(vm, "s2", memory=False)
    write_mark(hv, vm, "C")
    hv.snapshot_delete(vm, "s1")  # a layer under the running disk: block-commit, the overlay relinked
    assert read_mark(hv, vm) == "C"
    hv.snapshot_delete(vm, "s2")  # the running disk's own parent: active commit, the VMM pivots
    assert read_mark(hv, vm) == "C" and hv.snapshot_list(vm) == []
    assert 'scsi0:1.fileName = "data.qcow2"' in (folder / "live.vmx").read_text()
    write_mark(hv, vm, "D")
    # and a running VM's disk grows: the VMM resizes it and the guest sees the new size
    device = hv.exec_in_vm(vm, f"basename {DATA_DISK}").output.strip()
    assert hv.vm_disk_resize(vm, "scsi0:1", "32M")["virtual_size"] == 32 * 1024 * 1024
    seen = hv.exec_in_vm(vm, f"echo 1 > /sys/class/block/{device}/device/rescan; cat /sys/class/block/{device}/size")
    assert int(seen.output.strip()) * 512 == 32 * 1024 * 1024
    with pytest.raises(DiskError):
        hv.vm_disk_resize(vm, "scsi0:1", "16M")  # never shrinks
    hv.stop_vm(vm, hard=True)
    assert sorted(p.name for p in folder.glob("*.qcow2")) == ["data.qcow2", "live.qcow2"]
    assert_all_disks_clean(folder)
    hv.start_vm(vm, wait_ready=True, timeout=90)
    assert hv.exec_in_vm(vm, "grep -c ' 32768 ' /proc/partitions").output.strip() == "1"


def test_deleting_a_snapshot_with_two_branches_while_one_runs_streams_into_the_running_layer(
        hv, appliance_image, tmp_path):
    vm = make_vm(hv, "branches", appliance_image)
    folder = hv.datastore.root / vm
    hv.start_vm(vm, wait_ready=True, timeout=90)
    write_mark(hv, vm, "A")
    hv.snapshot_take(vm, "s1", memory=False)
    write_mark(hv, vm, "B")
    hv.snapshot_take(vm, "s2", memory=False)
    hv.snapshot_revert(vm, "s1")
    assert boot_and_read(hv, vm) == "A"
    write_mark(hv, vm, "C")
    hv.snapshot_take(vm, "s3", memory=False)  # s1 now has two children, s3's layer is under the running disk
    hv.snapshot_delete(vm, "s1")  # s2's layer is rebased offline, the running one gets block-stream
    assert read_mark(hv, vm) == "C"
    assert sorted((s["name"], s["parent"]) for s in hv.snapshot_list(vm)) == [("s2", None), ("s3", None)]
    hv.stop_vm(vm, hard=True)
    tree = SnapshotTree.load(folder / f"{vm}.vmsd")
    assert disk_mark(folder / tree.find("s2", vm).disks["scsi0:1"], tmp_path) == "B"
    assert disk_mark(folder / tree.find("s3", vm).disks["scsi0:1"], tmp_path) == "C"
    assert not (folder / "data.qcow2").exists() and not (folder / "branches.qcow2").exists()
    assert_all_disks_clean(folder)
    assert boot_and_read(hv, vm) == "C"
