"""The datastore: path policy, the SQLite catalog, crash-safe deletion."""

from __future__ import annotations

import os
import sqlite3

import pytest

from minivisor.datastore.store import Datastore, check_vm_name
from minivisor.errors import ConflictError, NotFoundError, PathError, SpecError


@pytest.fixture
def store(tmp_path):
    return Datastore.open(tmp_path / "ds")


@pytest.fixture
def vm_dir(store):
    folder = store.root / "vm1"
    folder.mkdir()
    (folder / "disk.qcow2").write_bytes(b"")
    return folder


def test_relative_names_resolve_inside_the_vm_folder(store, vm_dir):
    assert store.resolve(vm_dir, "disk.qcow2") == vm_dir / "disk.qcow2"


@pytest.mark.parametrize("name", ["../../etc/shadow", "/etc/shadow", "/proc/self/mem", "/dev/sda",
                                  "../../../../../../tmp/x.qcow2", "C:\\vms\\disk.vmdk", "bad\x00name"])
def test_paths_leaving_the_datastore_are_refused(store, vm_dir, name):
    with pytest.raises(PathError) as caught:
        store.resolve(vm_dir, name, what="scsi0:0.fileName")
    assert "scsi0:0.fileName" in caught.value.message or "not a usable path" in caught.value.message
    assert caught.value.hint


def test_a_symlink_that_escapes_is_refused(store, vm_dir, tmp_path):
    outside = tmp_path / "secret.qcow2"
    outside.write_bytes(b"")
    os.symlink(outside, vm_dir / "innocent.qcow2")
    with pytest.raises(PathError, match="outside the datastore"):
        store.resolve(vm_dir, "innocent.qcow2")


def test_an_allowed_host_folder_may_be_named(store, vm_dir, tmp_path):
    isos = tmp_path / "isos"
    isos.mkdir()
    (isos / "os.iso").write_bytes(b"")
    with pytest.raises(PathError):
        store.resolve(vm_dir, str(isos / "os.iso"))
    store.catalog.allow_path(str(isos))
    assert store.resolve(vm_dir, str(isos / "os.iso")) == isos / "os.iso"
    # a sibling whose name merely starts the same is still outside
    (tmp_path / "isos-evil").mkdir()
    with pytest.raises(PathError):
        store.resolve(vm_dir, str(tmp_path / "isos-evil" / "x.iso"))


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "x" * 64, "white space", "-flag", "vm.vmx", "ü"])
def test_bad_vm_names(name):
    with pytest.raises(SpecError, match="not a valid VM name"):
        check_vm_name(name)


def test_catalog_lives_inside_the_datastore_owner_only(store):
    assert store.catalog.path.parent == store.root / ".minivisor"
    assert (os.stat(store.meta).st_mode & 0o777) == 0o700


def test_catalog_names_are_unique_case_insensitively(store):
    with store.catalog.transaction() as db:
        store.catalog.add(db, "Web", "u1", "Web/Web.vmx")
    with pytest.raises(ConflictError, match="already exists"):
        with store.catalog.transaction() as db:
            store.catalog.add(db, "web", "u2", "web/web.vmx")
    assert [e.name for e in store.catalog.list()] == ["Web"]


def test_a_failed_transaction_leaves_the_catalog_unchanged(store):
    with pytest.raises(RuntimeError):
        with store.catalog.transaction() as db:
            store.catalog.add(db, "a", "u1", "a/a.vmx")
            raise RuntimeError("crash in the middle")
    assert store.catalog.list() == []
    # and another process sees the same (the data is on disk, not in a cache)
    assert sqlite3.connect(store.catalog.path).execute("SELECT count(*) FROM vms").fetchone() == (0,)


def test_unknown_vm_is_a_clear_error(store):
    with pytest.raises(NotFoundError, match="no VM named 'ghost'"):
        store.catalog.get("ghost")


def _crashed_mid_delete(store, vm_dir, uuid):
    """What a delete killed between moving the folder to the trash and removing the catalog row leaves."""
    (store.meta / "trash").mkdir(exist_ok=True)
    vm_dir.rename(store.meta / "trash" / uuid)


def test_interrupted_delete_is_undone_when_the_catalog_still_has_the_vm(store, vm_dir):
    with store.catalog.transaction() as db:
        store.catalog.add(db, "vm1", "uuid-1", "vm1/vm1.vmx")
    _crashed_mid_delete(store, vm_dir, "uuid-1")  # folder moved, catalog row still there
    assert not vm_dir.exists()
    reopened = Datastore.open(store.root)
    assert (reopened.root / "vm1" / "disk.qcow2").exists()
    assert not (reopened.meta / "trash" / "uuid-1").exists()


def test_interrupted_delete_is_finished_when_the_catalog_row_is_gone(store, vm_dir):
    _crashed_mid_delete(store, vm_dir, "uuid-gone")
    Datastore.open(store.root)
    assert not vm_dir.exists()
    assert not (store.meta / "trash" / "uuid-gone").exists()


def test_a_publish_cut_short_between_move_and_commit_leaves_no_vm(store, tmp_path):
    # What a process killed right after the rename leaves: the folder in place,
    # no catalog row, and its marker naming a dead pid.
    (store.root / "half").mkdir()
    (store.root / "half" / "half.vmx").write_text('memSize = "64"\n')
    markers = store.meta / "publishing"
    markers.mkdir()
    (markers / "uuid-half").write_text("999999999 half\n")
    Datastore.open(store.root)
    assert not (store.root / "half").exists()
    assert not (markers / "uuid-half").exists()


def test_publish_moves_the_folder_and_adds_the_row_together(store):
    staging = store.staging_dir("web")
    (staging / "web.vmx").write_text('memSize = "64"\n')
    store.publish(staging, "web", "uuid-web")
    assert (store.root / "web" / "web.vmx").exists()
    assert store.catalog.get("web").uuid == "uuid-web"
    assert list((store.meta / "publishing").iterdir()) == []
    clash = store.staging_dir("web")
    with pytest.raises(ConflictError):
        store.publish(clash, "web", "uuid-other")
    assert clash.exists() and store.catalog.get("web").uuid == "uuid-web"


def test_a_registration_caches_the_summary_its_written_specfile_gives(tmp_path):
    """register_vm caches the summary from the spec it read before generating the UUID and the NICs' addresses:
    it is the one the specfile it wrote gives (generated addresses included), and `vm show` reads it."""
    import json

    from minivisor import Hypervisor
    from minivisor.datastore.inventory import file_stamp, summary_of

    hv = Hypervisor(tmp_path / "ds")
    folder = hv.datastore.root / "reg"
    folder.mkdir()
    (folder / "reg.vmx").write_text('displayName = "reg"\nmemSize = "64"\nguestOS = "other-64"\nnumvcpus = "2"\n'
                                    'ethernet0.present = "TRUE"\nethernet0.virtualDev = "e1000"\n'
                                    'ethernet0.connectionType = "hostonly"\nethernet1.present = "TRUE"\n'
                                    'ethernet1.addressType = "static"\nethernet1.address = "00:50:56:00:00:01"\n')
    vm = hv.register_vm(folder / "reg.vmx")
    written = (folder / "reg.vmx").read_text()
    assert "uuid.bios" in written and "ethernet0.generatedAddress" in written
    ((uuid, stamp, cached),) = hv.datastore.catalog.summaries(["reg/reg.vmx"]).values()
    assert uuid == vm.uuid and stamp == file_stamp(str(folder / "reg.vmx"))
    assert json.loads(cached) == summary_of(folder / "reg.vmx", vm.uuid)
    assert [nic["mac"] for nic in json.loads(cached)["nics"]] == [nic["mac"] for nic in vm.nics]
