"""A VM's files are its owner's only: 0700 folders, 0600 files, whoever creates them (minivisor, qemu-img, QEMU).

The tests run under umask 022, the usual default, which would otherwise give
other local users read access to every disk, specfile and log.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cli_runner import run_cli
from attacks import qemu_img

from minivisor.vmm.states import VmState


@pytest.fixture(autouse=True)
def usual_umask():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def assert_private(folder: Path) -> None:
    """The folder and everything in it: folders 0700, files 0600 (or stricter)."""
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    for path in folder.rglob("*"):
        mode = stat.S_IMODE(path.lstat().st_mode)
        if path.is_dir():
            assert mode == 0o700, f"{path} is {mode:o}"
        else:
            assert mode & 0o077 == 0, f"{path} is {mode:o}"


def boot_image(tmp_path: Path, hv) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    qemu_img("create", "-q", "-f", "qcow2", str(images / "boot.qcow2"), "8M")
    hv.allow_path(images)
    return images / "boot.qcow2"


def test_create_snapshot_clone_and_disk_create_write_private_files(hv, tmp_path):
    hv.create_vm("empty", memory_mib=64, disk_size="16M", network="none")
    hv.create_vm("booted", memory_mib=64, boot_disk=boot_image(tmp_path, hv), network="none")
    created = run_cli("vm", "create", "by-cli", "--memory", "64", "--disk-size", "16M", "--network", "none",
                      datastore=hv.datastore.root)
    assert created.returncode == 0, created.stderr
    hv.disk_create(hv.datastore.root / "empty" / "data.vmdk", "8M", thick=True)
    hv.disk_convert(hv.datastore.root / "empty" / "data.vmdk", hv.datastore.root / "empty" / "data.qcow2")
    hv.snapshot_take("empty", "s1")
    hv.clone_vm("empty", "full", linked=False)
    hv.clone_vm("empty", "linked", linked=True, snapshot="s1")
    hv.snapshot_take("empty", "s2")
    hv.snapshot_delete("empty", "s2")
    for name in ("empty", "booted", "by-cli", "full", "linked"):
        assert_private(hv.datastore.root / name)
    assert stat.S_IMODE(hv.datastore.meta.stat().st_mode) == 0o700  # the catalog and token folder


def test_import_writes_private_files(hv, tmp_path):
    folder = tmp_path / "downloads" / "vm"
    folder.mkdir(parents=True)
    qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse", str(folder / "d.vmdk"), "8M")
    (folder / "tools.iso").write_bytes(b"iso" * 100)
    (folder / "vm.vmx").write_text('memSize = "64"\nscsi0.present = "TRUE"\nscsi0:0.present = "TRUE"\n'
                                   'scsi0:0.fileName = "d.vmdk"\nide1:0.present = "TRUE"\n'
                                   'ide1:0.deviceType = "cdrom-image"\nide1:0.fileName = "tools.iso"\n')
    os.chmod(folder / "tools.iso", 0o644)
    hv.import_vm(folder, "imported")
    assert {p.name for p in (hv.datastore.root / "imported").iterdir()} >= {"d.qcow2", "tools.iso", "imported.vmx"}
    assert_private(hv.datastore.root / "imported")


@pytest.mark.qemu
def test_a_powered_on_vms_logs_and_records_are_private(hv):
    hv.create_vm("run", memory_mib=64, disk_size="16M", network="none")
    hv.start_vm("run")  # nothing to boot: SeaBIOS runs and waits, which is enough to write the logs
    try:
        assert hv.get_vm("run").state is VmState.RUNNING
        folder = hv.datastore.root / "run"
        assert {"vmm.log", "serial.log", "bios.log", "events.jsonl", "runtime.json"} <= {p.name for p in folder.iterdir()}
        assert_private(folder)
    finally:
        hv.stop_vm("run", hard=True)
    assert_private(hv.datastore.root / "run")  # and after QEMU is gone
