"""End to end: snapshots that keep VMware's format, memory snapshots of any disk format, and full clones
that are one consolidated disk per drive, seen from inside the guest.

The appliance's root is an initramfs in RAM: a marker file in /tmp lives in the guest's memory (a
memory snapshot brings it back), a marker on the 16 MiB data disk lives in the disk layers.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from guests import create_guest
from test_snapshots import read_mark, write_mark

from minivisor import Hypervisor
from minivisor.images.layers import read_layer
from minivisor.images.qemu_img import convert_disk
from minivisor.vmm.states import VmState

pytestmark = pytest.mark.qemu


def make_vm(hv: Hypervisor, name: str, appliance_image: Path, fmt: str) -> Path:
    """The appliance on scsi0:0 and an empty 16 MiB data disk on scsi0:1, both ``fmt`` (as VMware left them)."""
    if fmt == "vmdk":
        hv.create_vm(name, memory_mib=160, disk_size="1M", network="none")
    else:
        create_guest(hv, name, appliance_image, memory_mib=160, network="none")
    folder = hv.datastore.root / name
    vmx = folder / f"{name}.vmx"
    if fmt == "vmdk":
        (folder / f"{name}.qcow2").unlink()
        convert_disk((read_layer(appliance_image, "raw"),), folder / f"{name}.vmdk", "vmdk")
        vmx.write_text(vmx.read_text().replace(f'"{name}.qcow2"', f'"{name}.vmdk"'))
    hv.disk_create(folder / f"data.{fmt}", "16M")
    vmx.write_text(vmx.read_text() + f'scsi0:1.present = "TRUE"\nscsi0:1.fileName = "data.{fmt}"\n')
    return folder


def guest_files(hv: Hypervisor, vm: str) -> str:
    return hv.exec_in_vm(vm, "cat /tmp/marker-* 2>/dev/null; echo end").output.split()


def qemu_img_info(path: Path) -> dict:
    done = subprocess.run(["qemu-img", "info", "--output=json", "-f", "vmdk", str(path)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def assert_vmware_folder(folder: Path) -> None:
    """Every disk file is a VMDK qemu-img accepts; every delta is VMware-named and names its parent in the
    same folder, relative, with the parent's CID."""
    for image in sorted(folder.glob("*.vmdk")):
        check = subprocess.run(["qemu-img", "check", "-f", "vmdk", str(image)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        info = qemu_img_info(image)
        assert info["format"] == "vmdk"
        layer = read_layer(image, "vmdk")
        if re.search(r"-\d{6}\.vmdk$", image.name):
            assert layer.backing_name and "/" not in layer.backing_name, layer
            assert info["backing-filename"] == layer.backing_name
            parent = read_layer(folder / layer.backing_name, "vmdk")
            assert layer.parent_cid == parent.cid
        else:
            assert layer.backing_name is None
    assert not list(folder.glob("*.qcow2"))


@pytest.mark.parametrize("fmt", ["vmdk", "qcow2"])
def test_a_memory_snapshot_reverts_the_guest_to_its_instant(hv, appliance_image, fmt):
    vm = f"mem-{fmt}"
    folder = make_vm(hv, vm, appliance_image, fmt)
    hv.start_vm(vm, wait_ready=True, timeout=90)
    hv.exec_in_vm(vm, "echo one > /tmp/marker-1")
    write_mark(hv, vm, "at-snapshot")

    snap = hv.snapshot_take(vm, "hot", memory=True)
    assert snap.memory_file and (folder / snap.memory_file).stat().st_size > 0
    assert hv.get_vm(vm).state is VmState.RUNNING
    hv.exec_in_vm(vm, "echo two > /tmp/marker-2")
    write_mark(hv, vm, "after")
    assert guest_files(hv, vm) == ["one", "two", "end"]

    _, running = hv.snapshot_revert(vm, "hot")
    assert running and hv.get_vm(vm).state is VmState.RUNNING
    assert guest_files(hv, vm) == ["one", "end"]  # the guest's memory as it was at the snapshot
    assert read_mark(hv, vm) == "at-snapshot"  # and its disks, consistent with it
    hv.exec_in_vm(vm, "echo three > /tmp/marker-3")  # it goes on from there
    write_mark(hv, vm, "later")
    assert guest_files(hv, vm) == ["one", "three", "end"] and read_mark(hv, vm) == "later"
    hv.stop_vm(vm, hard=True)
    if fmt == "vmdk":
        vmx = (folder / f"{vm}.vmx").read_text()
        assert f'scsi0:0.fileName = "{vm}-000002.vmdk"' in vmx and 'scsi0:1.fileName = "data-000002.vmdk"' in vmx
        assert_vmware_folder(folder)
        vmsd = (folder / f"{vm}.vmsd").read_text()  # the tree names the frozen files, in VMware's keys
        assert f'snapshot0.disk0.fileName = "{vm}.vmdk"' in vmsd and f'snapshot0.filename = "{snap.memory_file}"' in vmsd


def test_a_vmdk_vm_keeps_vmdk_through_offline_snapshots_and_a_linked_clone(hv, appliance_image):
    folder = make_vm(hv, "vmw", appliance_image, "vmdk")
    vmx = folder / "vmw.vmx"
    vmx.write_text("# kept by VMware's tools\n" + vmx.read_text() + 'vendor.unknownKey = "as it was"\n')
    hv.start_vm("vmw", wait_ready=True, timeout=90)
    write_mark(hv, "vmw", "first")
    hv.stop_vm("vmw", hard=True)
    hv.snapshot_take("vmw", "one")
    hv.start_vm("vmw", wait_ready=True, timeout=90)
    write_mark(hv, "vmw", "second")
    hv.snapshot_take("vmw", "two", memory=False)  # a running VM's disks, switched by the VMM
    write_mark(hv, "vmw", "third")
    hv.stop_vm("vmw", hard=True)
    assert_vmware_folder(folder)
    lines = vmx.read_text().splitlines()  # only the disks' fileName lines changed: comments, order, unknown keys kept
    assert lines[0] == "# kept by VMware's tools" and lines[-1] == 'vendor.unknownKey = "as it was"'
    assert 'scsi0:0.fileName = "vmw-000002.vmdk"' in lines
    assert sorted(p.name for p in folder.glob("*.vmdk")) == [
        "data-000001.vmdk", "data-000002.vmdk", "data.vmdk", "vmw-000001.vmdk", "vmw-000002.vmdk", "vmw.vmdk"]

    hv.clone_vm("vmw", "vmw-linked", linked=True, snapshot="two")
    clone = hv.datastore.root / "vmw-linked"
    disks = sorted(p.name for p in clone.glob("*.vmdk"))
    assert disks == ["vmw-linked.vmdk", "vmw-linked_scsi0-1.vmdk"] and not list(clone.glob("*.qcow2"))
    for disk in disks:
        layer = read_layer(clone / disk, "vmdk")
        assert layer.backing_name.startswith("../vmw/") and layer.backing_name.endswith("-000001.vmdk")
        assert subprocess.run(["qemu-img", "check", "-f", "vmdk", str(clone / disk)]).returncode == 0
    hv.start_vm("vmw-linked", wait_ready=True, timeout=90)
    assert read_mark(hv, "vmw-linked") == "second"


def test_a_full_clone_of_a_vm_with_three_snapshots_is_one_disk_per_drive(hv, appliance_image):
    for fmt in ("vmdk", "qcow2"):
        vm = f"src-{fmt}"
        make_vm(hv, vm, appliance_image, fmt)
        hv.start_vm(vm, wait_ready=True, timeout=90)
        for n in range(3):
            write_mark(hv, vm, f"mark-{n}")
            hv.snapshot_take(vm, f"s{n}", memory=False)
        write_mark(hv, vm, "current")
        percents: list[float] = []
        hv.clone_vm(vm, f"full-{fmt}", progress=percents.append)  # the source runs: frozen for the copy
        assert percents and percents[-1] == 100.0 and percents == sorted(percents)
        hv.stop_vm(vm, hard=True)
        clone = hv.datastore.root / f"full-{fmt}"
        disks = sorted(p.name for p in clone.iterdir() if p.suffix in (".vmdk", ".qcow2"))
        assert disks == [f"full-{fmt}.{fmt}", f"full-{fmt}_scsi0-1.{fmt}"]
        for disk in disks:
            info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-f", fmt, str(clone / disk)],
                                             capture_output=True, text=True, check=True).stdout)
            assert "backing-filename" not in info and info["format"] == fmt
        hv.start_vm(f"full-{fmt}", wait_ready=True, timeout=90)
        assert read_mark(hv, f"full-{fmt}") == "current"
        hv.stop_vm(f"full-{fmt}", hard=True)
        assert [s["name"] for s in hv.snapshot_list(vm)] == ["s0", "s1", "s2"]  # the copy's own one is gone


@pytest.mark.parametrize("fmt", ["vmdk", "qcow2"])
def test_the_snapshot_a_running_guest_was_reverted_to_can_be_deleted_while_it_runs(hv, appliance_image, fmt):
    """The VMM a revert starts opens the snapshot's layers read-only: the merge makes its target writable."""
    vm = f"del-{fmt}"
    folder = make_vm(hv, vm, appliance_image, fmt)
    hv.start_vm(vm, wait_ready=True, timeout=90)
    write_mark(hv, vm, "kept")
    hv.snapshot_take(vm, "hot", memory=True)
    hv.snapshot_revert(vm, "hot")
    write_mark(hv, vm, "after-revert")
    hv.snapshot_delete(vm, "hot")  # block-commit of the running delta into the snapshot's file
    assert read_mark(hv, vm) == "after-revert" and hv.snapshot_list(vm) == []
    hv.stop_vm(vm, hard=True)
    assert sorted(p.name for p in folder.glob(f"*.{fmt}")) == [f"data.{fmt}", f"{vm}.{fmt}"]
    hv.start_vm(vm, wait_ready=True, timeout=90)
    assert read_mark(hv, vm) == "after-revert"
