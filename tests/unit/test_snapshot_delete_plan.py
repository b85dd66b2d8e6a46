"""The snapshot delete planner (storage.snapshots.plan_delete) on real qcow2 files, no QEMU.

A VM ``w`` with one disk is built in a datastore with qemu-img (``take_offline``, ``plan_revert``:
the same code the CLI runs), so each tree below is what minivisor itself leaves on disk::

    take s1:   w.qcow2 (s1) <- w-000001.qcow2 (top)
    take s2:   w.qcow2 (s1) <- w-000001.qcow2 (s2) <- w-000002.qcow2 (top)
    revert s1: a new top w-000003.qcow2 on w.qcow2; s1 has two dependents

Each test plans a delete and checks the steps, the tree the plan writes, and that planning
changed no file (the journal runs the steps, not the planner).
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
from pathlib import Path

import pytest

from minivisor.datastore.layout import EFI_VARS
from minivisor.datastore.store import Datastore
from minivisor.errors import StateError
from minivisor.spec.vmx import VmxDocument
from minivisor.spec.vmsd import SnapshotTree
from minivisor.storage import nvram
from minivisor.storage.snapshots import VmFiles, plan_delete, plan_revert, snapshot_disks, take_offline


class Vm:
    """The VM ``w``: one 1 MiB qcow2 disk on scsi0:0, in a datastore of its own."""

    def __init__(self, root: Path) -> None:
        self.datastore = Datastore.open(root)
        self.folder = self.datastore.root / "w"
        self.folder.mkdir(mode=0o700)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(self.folder / "w.qcow2"), "1M"], check=True)
        self.vmx = self.folder / "w.vmx"
        self.vmx.write_text('scsi0.present = "TRUE"\nscsi0:0.present = "TRUE"\nscsi0:0.fileName = "w.qcow2"\n')

    def files(self) -> VmFiles:
        return VmFiles(self.datastore, self.vmx, self.datastore.folder_scope(self.folder))

    def take(self, *names: str) -> None:
        for name in names:
            take_offline(self.files(), name, "", nvram.handlers(self.folder / EFI_VARS))

    def revert(self, name: str) -> None:
        files = self.files()
        journal, _ = plan_revert(files, files.tree.find(name, "w"), set())
        journal.run(nvram.handlers(self.folder / EFI_VARS))

    def uid(self, name: str) -> int:
        return self.files().tree.find(name, "w").uid

    def busy(self) -> set[Path]:
        """What a running VMM would hold open: every layer of each disk's chain (as core passes it)."""
        files = self.files()
        return {path for _, top in snapshot_disks(files.spec) for path in files.chain_files(top)}

    def plan(self, name: str, *, clones: dict[str, list[str]] | None = None, running: bool = False) -> list:
        """The steps that delete snapshot ``name``, but the last, checked here: it forgets what the snapshot kept of
        the UEFI variable store. The folder must be unchanged by planning."""
        before = self.state()
        files = self.files()
        pinned = {files.tree.find(snap, "w").uid: kids for snap, kids in (clones or {}).items()}
        steps = plan_delete(files, files.tree.find(name, "w"), pinned, self.busy() if running else set())
        assert self.state() == before, "planning changed a file"
        assert steps[-1] == nvram.step(nvram.FORGET, files.tree.find(name, "w").uid)
        return steps[:-1]

    def state(self) -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(self.folder.iterdir())}


@pytest.fixture
def vm(tmp_path) -> Vm:
    return Vm(tmp_path / "ds")


def shape(steps: list) -> list[tuple]:
    """The steps with each file write shown by its file name only (its content is checked apart)."""
    return [("write", step[1]) if step[0] == "write" else tuple(step) for step in steps]


def written(steps: list, name: str) -> bytes:
    (data,) = [base64.b64decode(step[2]) for step in steps if step[:2] == ["write", name]]
    return data


def tree_after(steps: list, tmp_path: Path) -> list[tuple[str, str | None, str, bool]]:
    """The tree the plan writes: (name, parent's name, scsi0:0's frozen file, current) per snapshot."""
    path = tmp_path / "after.vmsd"
    path.write_bytes(written(steps, "w.vmsd"))
    tree = SnapshotTree.load(path)
    names = {uid: snap.name for uid, snap in tree.snapshots.items()}
    return [(s.name, names.get(s.parent), s.disks["scsi0:0"], s.uid == tree.current)
            for s in tree.snapshots.values()]


def disk_in_specfile(steps: list) -> str:
    return VmxDocument.parse(written(steps, "w.vmx")).get("scsi0:0.fileName")


def test_a_leaf_off_the_current_branch_only_loses_its_frozen_file(vm, tmp_path):
    vm.take("s1", "s2")
    vm.revert("s1")
    steps = vm.plan("s2")
    assert shape(steps) == [("write", "w.vmsd"), ("unlink", "w-000001.qcow2")]
    assert tree_after(steps, tmp_path) == [("s1", None, "w.qcow2", True)]


def test_a_snapshot_with_one_child_is_committed_into_and_the_child_takes_its_file(vm, tmp_path):
    vm.take("s1", "s2")
    steps = vm.plan("s1")
    # s2's layer folds into s1's file; the current top, which sat on s2's layer, is relinked to it
    assert shape(steps) == [("commit", "w-000001.qcow2"), ("relink", "w-000002.qcow2", "w.qcow2", "qcow2"),
                            ("write", "w.vmsd"), ("unlink", "w-000001.qcow2")]
    assert tree_after(steps, tmp_path) == [("s2", None, "w.qcow2", True)]


def test_a_snapshot_with_two_children_copies_its_data_into_each(vm, tmp_path):
    vm.take("s1", "s2")
    vm.revert("s1")
    vm.take("s3")
    steps = vm.plan("s1")
    assert shape(steps) == [("rebase", "w-000001.qcow2", "w.qcow2"), ("rebase", "w-000003.qcow2", "w.qcow2"),
                            ("write", "w.vmsd"), ("unlink", "w.qcow2")]
    assert tree_after(steps, tmp_path) == [("s2", None, "w-000001.qcow2", False),
                                           ("s3", None, "w-000003.qcow2", True)]


def test_the_current_position_folds_the_running_top_into_it_and_the_specfile_follows(vm, tmp_path):
    vm.take("s1")
    steps = vm.plan("s1")
    assert shape(steps) == [("commit", "w-000001.qcow2"), ("write", "w.vmsd"), ("write", "w.vmx"),
                            ("unlink", "w-000001.qcow2")]
    assert tree_after(steps, tmp_path) == []
    assert disk_in_specfile(steps) == "w.qcow2"


def test_the_current_position_with_a_child_and_the_top_on_it_rebases_both_and_moves_up(vm, tmp_path):
    vm.take("s1", "s2")
    vm.revert("s1")  # s1 is current again: s2's layer and the new top both sit on w.qcow2
    steps = vm.plan("s1")
    assert shape(steps) == [("rebase", "w-000001.qcow2", "w.qcow2"), ("rebase", "w-000003.qcow2", "w.qcow2"),
                            ("write", "w.vmsd"), ("unlink", "w.qcow2")]
    assert tree_after(steps, tmp_path) == [("s2", None, "w-000001.qcow2", False)]  # current: no snapshot


def test_a_snapshot_a_linked_clone_is_built_on_is_refused_and_nothing_is_planned(vm):
    vm.take("s1", "s2")
    before = vm.state()
    with pytest.raises(StateError) as refused:
        vm.plan("s1", clones={"s1": ["kid", "kid2"]})
    assert "'s1'" in refused.value.message and "kid, kid2" in refused.value.message
    assert "clones" in refused.value.hint
    assert vm.state() == before


def test_a_child_a_linked_clone_is_built_on_keeps_its_file_the_parent_is_rebased_into_it(vm, tmp_path):
    vm.take("s1", "s2")
    steps = vm.plan("s1", clones={"s2": ["kid"]})  # committing would delete the file the clone backs on
    assert shape(steps) == [("rebase", "w-000001.qcow2", "w.qcow2"), ("write", "w.vmsd"), ("unlink", "w.qcow2")]
    assert tree_after(steps, tmp_path) == [("s2", None, "w-000001.qcow2", True)]


def test_a_running_vms_current_snapshot_is_committed_by_the_vmm(vm, tmp_path):
    vm.take("s1", "s2")
    steps = vm.plan("s2", running=True)
    # the running top folds into s2's file (an active block-commit: the VMM pivots to it)
    assert shape(steps) == [("online-commit", "scsi0:0", "w-000002.qcow2", "w-000001.qcow2", "qcow2", None),
                            ("write", "w.vmsd"), ("write", "w.vmx"), ("unlink", "w-000002.qcow2")]
    assert tree_after(steps, tmp_path) == [("s1", None, "w.qcow2", True)]
    assert disk_in_specfile(steps) == "w-000001.qcow2"


def test_a_layer_under_a_running_disk_is_committed_by_the_vmm_which_relinks_the_layer_above(vm, tmp_path):
    vm.take("s1", "s2")
    steps = vm.plan("s1", running=True)
    # no offline relink step for the top: the VMM's block-commit names it as the layer above
    assert shape(steps) == [("online-commit", "scsi0:0", "w-000001.qcow2", "w.qcow2", "qcow2", "w-000002.qcow2"),
                            ("write", "w.vmsd"), ("unlink", "w-000001.qcow2")]
    assert tree_after(steps, tmp_path) == [("s2", None, "w.qcow2", True)]


def test_two_branches_of_a_running_vm_stream_into_the_running_one_and_rebase_the_other(vm, tmp_path):
    vm.take("s1", "s2")
    vm.revert("s1")
    vm.take("s3")  # the running disk: w-000004.qcow2 on s3's w-000003.qcow2 on s1's w.qcow2
    steps = vm.plan("s1", running=True)
    assert shape(steps) == [("rebase", "w-000001.qcow2", "w.qcow2"),
                            ("online-stream", "scsi0:0", "w-000003.qcow2", "w.qcow2", "", None),
                            ("write", "w.vmsd"), ("unlink", "w.qcow2")]
    assert tree_after(steps, tmp_path) == [("s2", None, "w-000001.qcow2", False),
                                           ("s3", None, "w-000003.qcow2", True)]
