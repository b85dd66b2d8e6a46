"""VMDK deltas whose ``parentFileNameHint`` names a host file: refused by every operation that would open
the chain or build on it (power-on, snapshots, linked and full clones), before anything is written.

A delta's descriptor is as hostile as a qcow2 header: the attacker edits the hint of the VM's own
``-000001.vmdk`` (shipped in a VM folder, or written by hand into one). The chain's rules are the
qcow2 chain's: no name leaves the VM's folder, none is a protocol, and the parent's format comes from
its name (a raw disk's bytes, which the guest writes, are never read as a VMDK).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from attacks import assert_no_leak, assert_no_vmm_started, plant_secret, qemu_img
from refusals import datastore_state

from minivisor import Hypervisor
from minivisor.errors import DiskError, PathError
from minivisor.images.layers import read_layer
from minivisor.images.vmdk import create_delta


def vmdk_vm(hv: Hypervisor) -> Path:
    """A registered VM on ``web.vmdk`` <- ``web-000001.vmdk`` (the delta minivisor itself would write)."""
    hv.create_vm("web", memory_mib=64, disk_size="1M", network="none")
    folder = hv.datastore.root / "web"
    (folder / "web.qcow2").unlink()
    qemu_img("create", "-q", "-f", "vmdk", str(folder / "web.vmdk"), "1M")
    create_delta(folder / "web-000001.vmdk", read_layer(folder / "web.vmdk", "vmdk"))
    vmx = folder / "web.vmx"
    vmx.write_text(vmx.read_text().replace('"web.qcow2"', '"web-000001.vmdk"'))
    return folder


def rehint(delta: Path, hint: str) -> None:
    """The attacker's edit: the same delta, its parentFileNameHint replaced (bytes in place, like a hex editor)."""
    data = delta.read_bytes()
    old = b'parentFileNameHint="web.vmdk"'
    assert old in data
    delta.write_bytes(data.replace(old, f'parentFileNameHint="{hint}"'.encode()))


def _absolute_host_file(folder: Path, secret) -> str:
    return str(secret.path)


def _etc_passwd(folder: Path, secret) -> str:
    return "/etc/passwd"


def _relative_escape(folder: Path, secret) -> str:
    return os.path.relpath(secret.path, folder)


def _symlink_named_vmdk(folder: Path, secret) -> str:
    os.symlink(secret.path, folder / "base.vmdk")
    return "base.vmdk"


def _raw_file_of_the_vm(folder: Path, secret) -> str:
    # the VM's own raw disk, into which the guest wrote a VMDK delta that names the host file
    qemu_img("create", "-q", "-f", "vmdk", str(folder / "evil.vmdk"), "1M")
    create_delta(folder / "inner-000001.vmdk", read_layer(folder / "evil.vmdk", "vmdk"))
    inner = (folder / "inner-000001.vmdk").read_bytes().replace(b'"evil.vmdk"', f'"{secret.path}"'.encode())
    (folder / "data.raw").write_bytes(inner)
    for made in ("evil.vmdk", "inner-000001.vmdk"):
        (folder / made).unlink()
    return "data.raw"


def _another_vms_disk(folder: Path, secret) -> str:
    other = folder.parent / "other"
    other.mkdir(mode=0o700)
    qemu_img("create", "-q", "-f", "vmdk", str(other / "other.vmdk"), "1M")
    return "../other/other.vmdk"


ATTACKS = [(_absolute_host_file, PathError), (_etc_passwd, PathError), (_relative_escape, PathError),
           (_symlink_named_vmdk, PathError), (_raw_file_of_the_vm, DiskError), (_another_vms_disk, PathError)]
OPERATIONS = {
    "start": lambda hv: hv.start_vm("web"),
    "snapshot": lambda hv: hv.snapshot_take("web", "s"),
    "linked-clone": lambda hv: hv.clone_vm("web", "copy", linked=True),
    "full-clone": lambda hv: hv.clone_vm("web", "copy"),
}


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
@pytest.mark.parametrize("plant, error", ATTACKS, ids=[a[0].__name__.strip("_") for a in ATTACKS])
def test_a_delta_whose_parent_hint_leaves_the_vm_is_refused_and_nothing_leaks(hv, tmp_path, plant, error,
                                                                             operation):
    secret = plant_secret(tmp_path / "host", "secret.vmdk")
    folder = vmdk_vm(hv)
    rehint(folder / "web-000001.vmdk", plant(folder, secret))
    before = datastore_state(hv.datastore.root)

    with pytest.raises(error):
        OPERATIONS[operation](hv)

    assert datastore_state(hv.datastore.root) == before  # no delta, no clone, no tree, no specfile change
    assert_no_vmm_started(hv, "web")
    assert [vm.name for vm in hv.list_vms()] == ["web"]
    assert_no_leak(hv, secret)
