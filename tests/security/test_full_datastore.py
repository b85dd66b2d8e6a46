"""A full datastore leaves a usable system: the VM that filled it pauses (it is not given I/O
errors), it can be listed, resumed once space is freed and always powered off; any operation that
runs out of space fails with one line and leaves nothing half-built.

The datastore is a small tmpfs mounted by the test (root only), so "full" is real ENOSPC.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from guests import create_guest
from cli_runner import run_cli

from minivisor import Hypervisor
from minivisor.images.layers import read_layer
from minivisor.images.qemu_img import convert_disk
from minivisor.errors import NoSpaceError
from minivisor.storage.journal import JOURNAL_NAME
from minivisor.vmm.console import console_lock
from minivisor.vmm.states import VmState
from minivisor.procfs import start_ticks

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs datastore needs root")

MiB = 1024 * 1024
DATA_MIB = 48  # the data disk's size, which tells it apart in the guest (the boot disk is 64 MiB)
DATA_DISK = f"""$(awk '$3 == {DATA_MIB * 1024} {{print "/dev/" $4}}' /proc/partitions)"""


@pytest.fixture
def small_datastore(tmp_path, request) -> Iterator[Hypervisor]:
    """A datastore on a tmpfs with room for a copy of the test guest and ``request.param`` MiB more
    (a negative param: a tmpfs of that many MiB, no room for a guest); its VMs are powered off and it
    is unmounted after."""
    spare = request.param
    size = -spare if spare < 0 else guest_copy_mib(request.getfixturevalue("appliance_image")) + spare
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}m,mode=0700", "tmpfs", str(mount)], check=True)
    hv = None
    try:
        hv = Hypervisor(mount / "ds")
        yield hv
    finally:
        if hv is not None:
            for vm in hv.list_vms():
                if vm.state in (VmState.RUNNING, VmState.PAUSED):
                    hv.stop_vm(vm.name, hard=True)
            hv.datastore.catalog.close()
        _unmount(mount)


def guest_copy_mib(image: Path) -> int:
    """MiB a qcow2 copy of the (raw, sparse) test guest takes: its data, plus 1 MiB of metadata and slack."""
    return -(-image.stat().st_blocks * 512 // (1024 * 1024)) + 1


def _unmount(mount: Path) -> None:
    """Unmount, waiting a moment for console relays of VMs just stopped to close their logs."""
    deadline = time.monotonic() + 10
    while subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            subprocess.run(["umount", "-l", str(mount)], check=True)
            raise AssertionError(f"something still held {mount} open 10 s after its VMs stopped")
        time.sleep(0.1)


def fill(datastore: Path, leave: int = 0) -> Path:
    """A file that takes all the space left on the datastore's file system but ``leave`` bytes."""
    filler = datastore.parent / f"filler-{time.monotonic_ns()}"
    with open(filler, "wb") as handle:
        block = b"\x01" * MiB
        try:
            while shutil.disk_usage(datastore).free - leave >= len(block):
                handle.write(block)
                handle.flush()
            handle.write(block[:max(0, shutil.disk_usage(datastore).free - leave)])
            handle.flush()
        except OSError:
            pass  # full
    return filler


def cli(hv: Hypervisor, *args: str):
    return run_cli(*args, datastore=hv.datastore.root, env={**os.environ, "MINIVISOR_DIRECT": "1"})


def listed(hv: Hypervisor) -> dict[str, dict]:
    """``vm list --json`` from a fresh process: it must work on a full datastore."""
    result = cli(hv, "vm", "list", "--json")
    assert result.returncode == 0, result.stderr
    return {vm["name"]: vm for vm in json.loads(result.stdout)}


def wait_for_state(hv: Hypervisor, name: str, state: str, reason: str | None, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        vm = listed(hv)[name]
        if (vm["state"], vm["state_reason"]) == (state, reason):
            return vm
        assert time.monotonic() < deadline, f"{name} is {vm['state']} ({vm['state_reason']}), not {state} ({reason})"
        time.sleep(0.2)


def guest_writes(hv: Hypervisor, name: str, mib: int, seek_mib: int, done: str) -> Callable[[], None]:
    """In the background in the guest, once the returned function is called: write ``mib`` MiB to the data
    disk, then note dd's exit status.

    The write waits for a go typed on the console, not for the exec that sets it up to answer: a write
    started at once could fill the datastore, and so pause the guest, before the guest's shell had printed
    the exec's answer (seen on a loaded host)."""
    go = f"{done}.go"
    hv.exec_in_vm(name, f"(while [ ! -e {go} ]; do sleep 0.05; done; "
                        f"dd if=/dev/zero of={DATA_DISK} bs=1M count={mib} seek={seek_mib} conv=fsync; "
                        f"echo $? > {done}) >/dev/null 2>&1 &")
    return lambda: type_on_console(hv, name, f"touch {go}")


def type_on_console(hv: Hypervisor, name: str, line: str) -> None:
    """Type ``line`` into the guest's serial shell without waiting for anything back."""
    paths = hv.vm_paths(name)
    lock = console_lock(paths.runtime_dir)
    try:
        with socket.socket(socket.AF_UNIX) as console:
            console.connect(str(paths.console_socket))
            console.sendall(line.encode() + b"\n")
    finally:
        os.close(lock)


@pytest.mark.qemu
@needs_root
@pytest.mark.parametrize("small_datastore", [29], indirect=True)
def test_a_guest_filling_the_datastore_is_paused_listed_resumed_and_powered_off(small_datastore, appliance_image):
    hv = small_datastore
    create_guest(hv, "filler", appliance_image, memory_mib=128, network="none")
    folder = hv.datastore.root / "filler"
    hv.disk_create(folder / "data.qcow2", f"{DATA_MIB}M")
    vmx = folder / "filler.vmx"
    vmx.write_text(vmx.read_text() + 'scsi0:1.present = "TRUE"\nscsi0:1.fileName = "data.qcow2"\n')
    hv.start_vm("filler", wait_ready=True, timeout=90)
    pid = hv.get_vm("filler").pid

    start_writing = guest_writes(hv, "filler", 16, 0, "/tmp/first")
    filler = fill(hv.datastore.root, leave=4 * MiB)
    start_writing()  # 16 MiB into 4: the datastore fills up
    vm = wait_for_state(hv, "filler", "paused", "io-error")
    assert shutil.disk_usage(hv.datastore.root).free < MiB  # really full
    assert "vm resume filler" in vm["state_hint"] and "vm stop filler --hard" in vm["state_hint"]
    shown = cli(hv, "vm", "show", "filler")
    assert shown.returncode == 0 and "paused (io-error)" in shown.stdout and "free space" in shown.stdout

    filler.unlink()  # space again: the guest goes on where it stopped
    resumed = cli(hv, "vm", "resume", "filler")
    assert resumed.returncode == 0, resumed.stderr
    # dd finished without an error: QEMU paused the guest instead of failing its writes
    answer = hv.exec_in_vm("filler", "while [ ! -e /tmp/first ]; do sleep 0.1; done; cat /tmp/first", timeout=120)
    assert answer.output.strip() == "0"
    assert listed(hv)["filler"]["state"] == "running"

    start_writing = guest_writes(hv, "filler", 8, 16, "/tmp/second")
    fill(hv.datastore.root)  # full again, and the guest writes on: a hard power-off still works
    start_writing()
    wait_for_state(hv, "filler", "paused", "io-error")
    stopped = cli(hv, "vm", "stop", "filler", "--hard")
    assert stopped.returncode == 0, stopped.stderr
    assert listed(hv)["filler"]["state"] == "poweredOff"
    assert start_ticks(pid) is None
    assert not (folder / "runtime.json").exists()


@pytest.mark.qemu
@needs_root
# 4 MiB spare: room for a snapshot and a running VM's logs, none for a copy of the guest (~6 MiB).
@pytest.mark.parametrize("small_datastore", [4], indirect=True)
def test_operations_that_run_out_of_space_fail_in_one_line_and_leave_nothing(small_datastore, appliance_image,
                                                                             tmp_path):
    hv = small_datastore
    root = hv.datastore.root
    create_guest(hv, "src", appliance_image, memory_mib=128, network="none")  # all but 4 MiB
    hv.snapshot_take("src", "base")
    folder = root / "src"
    vmware = tmp_path / "vmware"  # a VMware VM to import (outside the datastore)
    vmware.mkdir()
    convert_disk((read_layer(appliance_image, "raw"),), vmware / "big.vmdk", "vmdk")
    (vmware / "big.vmx").write_text('config.version = "8"\nvirtualHW.version = "14"\nmemSize = "128"\n'
                                    'scsi0.present = "TRUE"\nscsi0:0.present = "TRUE"\nscsi0:0.fileName = "big.vmdk"\n')
    specfiles = {p.name: p.read_bytes() for p in folder.glob("src.vm[xs]*")}
    disks = {p.name: p.read_bytes() for p in folder.glob("*.qcow2")}

    def nothing_left() -> None:
        assert [vm.name for vm in hv.list_vms()] == ["src"]
        assert sorted(p.name for p in root.iterdir()) == [".minivisor", "src"]
        for leftovers in ("staging", "clones", "publishing"):
            where = root / ".minivisor" / leftovers
            assert not where.exists() or not any(where.iterdir()), f"left in {leftovers}: {list(where.iterdir())}"
        assert not (folder / JOURNAL_NAME).exists()
        assert sorted(p.name for p in folder.glob("*.qcow2")) == sorted(disks)  # no new delta, no copy
        assert not list(folder.glob("*.vmsn*")) and not list(folder.glob("*.vmdk"))
        assert [s["name"] for s in hv.snapshot_list("src")] == ["base"]

    attempts = [("vm", "create", "new", "--boot-disk", str(appliance_image)),
                ("vm", "clone", "src", "copy"),
                ("vm", "import", str(vmware), "--name", "imported"),
                ("disk", "convert", str(folder / "src.qcow2"), str(folder / "flat.vmdk"))]
    for args in attempts:
        result = cli(hv, *args)
        assert result.returncode == NoSpaceError.exit_code, (args, result.stderr)
        assert result.stderr.strip().splitlines()[-1].startswith("error: no space left in the datastore"), \
            (args, result.stderr)
        assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    nothing_left()
    assert {p.name: p.read_bytes() for p in folder.glob("*.qcow2")} == disks
    assert {p.name: p.read_bytes() for p in folder.glob("src.vm[xs]*")} == specfiles

    # a running VM: a memory snapshot that does not fit changes nothing at all
    hv.start_vm("src", wait_ready=True, timeout=90)
    with pytest.raises(NoSpaceError):
        hv.snapshot_take("src", "hot", memory=True)
    assert {p.name: p.read_bytes() for p in folder.glob("src.vm[xs]*")} == specfiles
    # a full clone freezes a running VM's disks with a snapshot first: it is gone again after the failure
    result = cli(hv, "vm", "clone", "src", "copy")
    assert result.returncode == NoSpaceError.exit_code, result.stderr
    assert (folder / "src.vmx").read_bytes() == specfiles["src.vmx"]
    assert hv.exec_in_vm("src", "echo still running").output.strip() == "still running"
    hv.stop_vm("src", hard=True)
    nothing_left()


@needs_root
@pytest.mark.parametrize("small_datastore", [-48], indirect=True)
def test_a_vmware_folder_on_another_file_system_imports_its_iso_with_progress_or_says_it_does_not_fit(
        small_datastore, tmp_path):
    """The datastore is a tmpfs, the VMware folder on the test's own file system (ext4): the kernel copies
    nothing between two file systems of different types (copy_file_range: EXDEV, Linux 5.19 on; Debian 12's 6.1
    does so: on an older kernel the copy needs no fallback and this shows less), as from a USB disk."""
    hv = small_datastore
    vmware = tmp_path / "vmware"
    vmware.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", str(vmware / "a.vmdk"), "100M"], check=True)
    iso = os.urandom(20 * 1024 * 1024)
    (vmware / "install.iso").write_bytes(iso)
    (vmware / "a.vmx").write_text('config.version = "8"\nvirtualHW.version = "14"\nmemSize = "128"\n'
                                  'scsi0.present = "TRUE"\nscsi0:0.present = "TRUE"\nscsi0:0.fileName = "a.vmdk"\n'
                                  'ide1:0.present = "TRUE"\nide1:0.deviceType = "cdrom-image"\n'
                                  'ide1:0.fileName = "install.iso"\n')
    result = cli(hv, "vm", "import", str(vmware), "--name", "a")
    assert result.returncode == 0, result.stderr
    assert "importing install.iso: 100%" in result.stderr
    assert (hv.datastore.root / "a" / "install.iso").read_bytes() == iso

    (vmware / "install.iso").write_bytes(iso * 2)  # 40 MiB: more than the datastore has left
    result = cli(hv, "vm", "import", str(vmware), "--name", "b")
    assert result.returncode == NoSpaceError.exit_code, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: no space left in the datastore")
    assert [vm.name for vm in hv.list_vms()] == ["a"] and not (hv.datastore.root / "b").exists()
    assert not any((hv.datastore.root / ".minivisor" / "staging").iterdir())


@pytest.mark.qemu  # the power-on runs the KVM probe before it finds no room for its records
@needs_root
@pytest.mark.parametrize("small_datastore", [-24], indirect=True)
def test_a_full_datastore_lists_shows_and_refuses_a_power_on_in_one_line(small_datastore):
    hv = small_datastore
    hv.create_vm("vm1", memory_mib=64, disk_size="16M", network="none")
    fill(hv.datastore.root)
    assert listed(hv)["vm1"]["state"] == "poweredOff"
    shown = cli(hv, "vm", "show", "vm1")
    assert shown.returncode == 0, shown.stderr
    started = cli(hv, "vm", "start", "vm1")  # its runtime record and logs cannot be written
    assert started.returncode == NoSpaceError.exit_code, started.stderr
    assert started.stderr.startswith("error: no space left in the datastore") and len(started.stderr.splitlines()) == 1
    assert listed(hv)["vm1"]["state"] == "poweredOff"
    assert not (hv.datastore.root / "vm1" / "runtime.json").exists()


def test_deleting_a_vm_whose_folder_is_gone_says_so_and_unregister_removes_it(tmp_path):
    hv = Hypervisor(tmp_path / "ds")
    hv.create_vm("gone", disk_size="1M", network="none")
    shutil.rmtree(hv.datastore.root / "gone")
    deleted = cli(hv, "vm", "delete", "gone")
    assert deleted.returncode == 3 and len(deleted.stderr.splitlines()) == 1, deleted.stderr
    assert "is gone" in deleted.stderr and "minivisor vm unregister gone" in deleted.stderr
    assert list(listed(hv)) == ["gone"]  # nothing changed
    unregistered = cli(hv, "vm", "unregister", "gone")
    assert unregistered.returncode == 0, unregistered.stderr
    assert listed(hv) == {}


def test_a_datastore_path_that_is_a_file_is_one_line(tmp_path):
    path = tmp_path / "not-a-folder"
    path.write_text("a file")
    for root in (path, path / "below"):
        result = run_cli("vm", "list", datastore=root)
        assert result.returncode == 65 and len(result.stderr.splitlines()) == 1, result.stderr
        assert result.stderr.startswith(f"error: cannot use {root} as a datastore: Not a directory")
    assert path.read_text() == "a file"
