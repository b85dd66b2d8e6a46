"""A disk belongs to one VM: another VM reaching it by name, ``..``, symlink, hard link or a shared folder is refused.

The victim ``a`` has a snapshot, so its base disk is a frozen snapshot file
that nobody may write. The attacker ``b`` (or a specfile being registered)
names ``a``'s files every way the file system allows. Refusals come at
register and at power-on, before QEMU starts, and ``a``'s files stay as they were.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import uuid
from pathlib import Path

import pytest
from cli_runner import run_cli
from refusals import assert_one_clear_line, datastore_state
from attacks import assert_no_vmm_started, qcow2_backed_by, qemu_img

from minivisor.errors import ConflictError, PathError


@pytest.fixture
def victim(hv):
    """VM ``a`` with data on its disk and a snapshot (``a.qcow2`` is now frozen), and VM ``b``."""
    hv.create_vm("a", memory_mib=64, disk_size="16M", network="none")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x61 0 64k", str(hv.datastore.root / "a" / "a.qcow2")],
                   check=True, capture_output=True)
    hv.snapshot_take("a", "base")
    hv.create_vm("b", memory_mib=64, disk_size="16M", network="none")
    return hv


def files_of(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _by_name(b: Path) -> str:
    return "../a/a.qcow2"


def _through_dot_dot(b: Path) -> str:
    return "../b/../a/a-000001.qcow2"


def _absolute(b: Path) -> str:
    return str(b.parent / "a" / "a.qcow2")


def _symlink(b: Path) -> str:
    os.symlink("../a/a.qcow2", b / "alias.qcow2")
    return "alias.qcow2"


def _hardlink(b: Path) -> str:
    os.link(b.parent / "a" / "a.qcow2", b / "alias.qcow2")
    return "alias.qcow2"


def _backing_is_the_snapshot_base(b: Path) -> str:
    qcow2_backed_by(b / "top.qcow2", "../a/a.qcow2", "qcow2")
    return "top.qcow2"


def _backing_through_a_symlinked_folder(b: Path) -> str:
    os.symlink("../a", b / "shared")
    qcow2_backed_by(b / "top.qcow2", "shared/a.qcow2", "qcow2")
    return "top.qcow2"


ALIASES = [(_by_name, "outside the VM folder"), (_through_dot_dot, "outside the VM folder"),
           (_absolute, "outside the VM folder"), (_symlink, "outside the VM folder"),
           (_hardlink, "hard links"), (_backing_is_the_snapshot_base, "outside the VM folder"),
           (_backing_through_a_symlinked_folder, "outside the VM folder")]
IDS = [alias.__name__.strip("_") for alias, _ in ALIASES]


@pytest.mark.parametrize("alias, words", ALIASES, ids=IDS)
def test_power_on_refuses_a_disk_of_another_vm(victim, alias, words):
    hv = victim
    b = hv.datastore.root / "b"
    name = alias(b)
    vmx = b / "b.vmx"
    vmx.write_text(vmx.read_text().replace('"b.qcow2"', f'"{name}"'))
    before, a_files = datastore_state(hv.datastore.root), files_of(hv.datastore.root / "a")
    for command in ("start", "explain"):
        assert_one_clear_line(run_cli("vm", command, "b", datastore=hv.datastore.root), PathError.exit_code, words)
    assert_no_vmm_started(hv, "b")
    assert datastore_state(hv.datastore.root) == before and files_of(hv.datastore.root / "a") == a_files


@pytest.mark.parametrize("alias, words", ALIASES, ids=IDS)
def test_register_refuses_a_disk_of_another_vm(victim, alias, words):
    hv = victim
    c = hv.datastore.root / "c"
    c.mkdir(mode=0o700)
    name = alias(c)
    (c / "c.vmx").write_text(f'memSize = "64"\nscsi0.present = "TRUE"\nscsi0:0.fileName = "{name}"\n'
                             .replace("../b/", "../c/"))
    before = datastore_state(hv.datastore.root)
    assert_one_clear_line(run_cli("vm", "register", str(c / "c.vmx"), datastore=hv.datastore.root),
                    PathError.exit_code, words)
    assert datastore_state(hv.datastore.root) == before and {vm.name for vm in hv.list_vms()} == {"a", "b"}


def test_a_second_specfile_in_a_vms_folder_is_refused(victim):
    hv = victim
    second = hv.datastore.root / "a" / "second.vmx"
    second.write_text('memSize = "64"\nscsi0.present = "TRUE"\nscsi0:0.fileName = "a-000001.qcow2"\n')
    os.symlink("a", hv.datastore.root / "alias")  # the same folder under another name
    before = datastore_state(hv.datastore.root)
    for vmx in (second, hv.datastore.root / "alias" / "second.vmx"):
        result = run_cli("vm", "register", str(vmx), datastore=hv.datastore.root)
        assert_one_clear_line(result, ConflictError.exit_code, "share the folder")
    assert datastore_state(hv.datastore.root) == before and {vm.name for vm in hv.list_vms()} == {"a", "b"}


def test_power_on_refuses_vms_that_share_a_folder_or_live_behind_a_symlink(victim):
    """What a catalog from before these checks may hold: both refused, before QEMU."""
    hv = victim
    (hv.datastore.root / "a" / "second.vmx").write_text('memSize = "64"\nscsi0.present = "TRUE"\n'
                                                        'scsi0:0.fileName = "a-000001.qcow2"\n')
    os.symlink("b", hv.datastore.root / "b-alias")
    with hv.datastore.catalog.transaction() as db:
        hv.datastore.catalog.add(db, "second", str(uuid.uuid4()), "a/second.vmx")
        hv.datastore.catalog.add(db, "aliased", str(uuid.uuid4()), "b-alias/b.vmx")
    before = datastore_state(hv.datastore.root)
    for name in ("a", "second"):
        assert_one_clear_line(run_cli("vm", "start", name, datastore=hv.datastore.root), ConflictError.exit_code,
                        "share the folder")
    assert_one_clear_line(run_cli("vm", "start", "aliased", datastore=hv.datastore.root), PathError.exit_code, "symlink")
    for name in ("a", "second", "b"):
        assert_no_vmm_started(hv, name)
    assert datastore_state(hv.datastore.root) == before


@pytest.mark.qemu  # explaining a VM runs the KVM probe
def test_a_linked_clone_may_read_its_source_snapshot_and_nothing_else_of_it(victim):
    hv = victim
    hv.clone_vm("a", "kid", linked=True, snapshot="base")
    assert hv.explain_vm("kid").argv  # the exception: its backing layers are a's frozen snapshot files
    kid = hv.datastore.root / "kid"
    vmx = kid / "kid.vmx"
    good = vmx.read_text()
    attacks = {
        "the snapshot file as its own, writable disk": lambda: vmx.write_text(good.replace('"kid.qcow2"', '"../a/a.qcow2"')),
        "the source's current (writable) disk as backing": lambda: qemu_img(
            "rebase", "-q", "-u", "-f", "qcow2", "-F", "qcow2", "-b", "../a/a-000001.qcow2", str(kid / "kid.qcow2")),
        "a CD-ROM on the snapshot file": lambda: vmx.write_text(
            good + 'ide1:0.present = "TRUE"\nide1:0.deviceType = "cdrom-image"\nide1:0.fileName = "../a/a.qcow2"\n'),
    }
    for what, attack in attacks.items():
        attack()
        before, a_files = datastore_state(hv.datastore.root), files_of(hv.datastore.root / "a")
        result = run_cli("vm", "start", "kid", datastore=hv.datastore.root)
        assert_one_clear_line(result, PathError.exit_code, "outside the VM folder")
        assert_no_vmm_started(hv, "kid")
        assert datastore_state(hv.datastore.root) == before and files_of(hv.datastore.root / "a") == a_files, what
        vmx.write_text(good)
        qemu_img("rebase", "-q", "-u", "-f", "qcow2", "-F", "qcow2", "-b", "../a/a.qcow2", str(kid / "kid.qcow2"))
    # another VM gets no share of the exception
    b = hv.datastore.root / "b"
    qcow2_backed_by(b / "top.qcow2", "../a/a.qcow2", "qcow2")
    (b / "b.vmx").write_text((b / "b.vmx").read_text().replace('"b.qcow2"', '"top.qcow2"'))
    assert_one_clear_line(run_cli("vm", "start", "b", datastore=hv.datastore.root), PathError.exit_code,
                    "outside the VM folder")
    assert hv.explain_vm("kid").argv
