"""Snapshots as VMware keeps them: delta disks in the VM folder, and the tree in its ``.vmsd``.

Taking a snapshot freezes each hard disk's current top file and gives the VM a
new delta on top of it (``web.qcow2`` -> ``web-000001.qcow2``; a VMDK's is a VMDK,
``web.vmdk`` -> ``web-000001.vmdk`` with its ``parentFileNameHint``); the
specfile's ``fileName`` then names the delta. The tree (names, parents, the
frozen files, the memory state file, "you are here") is the ``.vmsd`` next to
the specfile (:mod:`minivisor.spec.vmsd`); taking a snapshot never writes a tree
its bounds would refuse to read back.

A snapshot's files never change while it exists: reverting makes a new delta
on them, deleting merges the snapshot's data into the layers that depend on it
(``qemu-img commit`` into the snapshot's file when it has one dependent,
otherwise a safe ``qemu-img rebase`` of each dependent), so no other snapshot
or linked clone loses data. Every change goes through the VM's intent journal
(:mod:`minivisor.storage.journal`), whose disk steps (``commit``, ``relink``,
``rebase``) name files only: storage.py runs them after checking the chains
under the VM's path policy; its last step keeps, restores or forgets what the snapshot keeps of the UEFI
variable store (:mod:`minivisor.storage.nvram`).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

from ..datastore.store import Datastore, Scope
from ..errors import ConflictError, DiskError, StateError
from ..images.layers import ImageLayer, format_for, read_layer
from ..images.deltas import create_delta, delta_format
from ..images.vmdk import set_parent
from ..spec.vmsd import MAX_SNAPSHOTS, VMSD_LIMITS, Snapshot, SnapshotTree, vmsd_path
from ..spec.vmspec import VmSpec
from ..spec.vmx import VmxDocument
from ..text import excerpt
from . import nvram
from .journal import Journal, crashpoint, write_step

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from typing import Any

__all__ = ["VmFiles", "snapshot_disks", "delta_name", "plan_take", "plan_revert", "plan_delete", "take_offline",
           "commit_offline", "refresh_parent_ids"]

_DELTA_SUFFIX = re.compile(r"-\d{6}$")


def snapshot_disks(spec: VmSpec) -> list[tuple[str, str]]:
    """(node, fileName) of the hard disks snapshots cover (independent disks are skipped, like VMware)."""
    return [(d.node, d.file_name) for d in spec.disks
            if d.kind == "disk" and d.file_name and not d.mode.lower().startswith("independent")]


def delta_name(vm_dir: Path, file_name: str, taken: set[str]) -> str:
    """The next free VMware-style delta name: ``web.qcow2`` -> ``web-000001.qcow2``, ``web.vmdk`` ->
    ``web-000001.vmdk`` (a VMDK's delta is a VMDK; any other disk's a qcow2)."""
    stem = _DELTA_SUFFIX.sub("", Path(file_name).stem)
    existing = [int(m.group(1)) for p in vm_dir.iterdir() if (m := re.match(re.escape(stem) + r"-(\d{6})\.", p.name))]
    existing += [int(m.group(1)) for t in taken if (m := re.match(re.escape(stem) + r"-(\d{6})\.", t))]
    return f"{stem}-{max(existing, default=0) + 1:06d}.{delta_format(format_for(file_name))}"


# -- the operations on a VM's files (the caller holds the locks) ------------------
class VmFiles:
    """A VM's folder, specfile and snapshot tree, as one operation sees them."""

    def __init__(self, datastore: Datastore, vmx: Path, scope: Scope) -> None:
        self.datastore = datastore
        self.vmx = vmx
        self.vm_dir = vmx.parent
        self.scope = scope  # the VM's path policy
        self.vmsd = vmsd_path(vmx)
        self.doc = VmxDocument.load(vmx)
        self.tree, self.tree_doc = SnapshotTree.read(self.vmsd)  # the .vmsd as read: a new snapshot is added to it

    @cached_property
    def spec(self) -> VmSpec:
        """The specfile's meaning, read when first asked for: a linked clone of a snapshot reads the snapshot's."""
        return VmSpec.from_vmx(self.doc)

    def path(self, file_name: str) -> Path:
        return self.scope.path(self.vm_dir, file_name, "disk")

    def layer(self, file_name: str) -> ImageLayer:
        path = self.path(file_name)
        return read_layer(path, format_for(path))

    def chain(self, file_name: str) -> tuple[ImageLayer, ...]:
        """A disk's whole backing chain (top first), checked under the VM's path policy."""
        return self.scope.disk_chain(self.vm_dir, file_name, "disk")

    def chain_files(self, file_name: str) -> list[Path]:
        """Real paths of a disk's whole backing chain (top first)."""
        return [Path(os.path.realpath(layer.path)) for layer in self.chain(file_name)]

    def name_in_folder(self, path: Path) -> str:
        return os.path.relpath(path, self.vm_dir)

    def vmx_with(self, tops: dict[str, str], config: str | None = None) -> bytes:
        """The specfile (or a snapshot's saved one) with these disk files."""
        doc = VmxDocument.parse(config.encode("utf-8", "surrogateescape"), source=str(self.vmx)) if config else \
            self.doc.copy()
        for node, name in tops.items():
            doc.set(f"{node}.fileName", name)
        return doc.to_bytes()


def plan_take(files: VmFiles, name: str, description: str, memory_file: str | None,
              ready_line: str | None = None) -> tuple[Snapshot, dict[str, str], list[list[Any]]]:
    """The new snapshot (freezing the current tops), the new delta name per disk, and the journal steps
    that commit it (the new tree, the specfile naming the deltas, the variable store kept)."""
    if any(s.name == name for s in files.tree.snapshots.values()):
        raise ConflictError(f"VM already has a snapshot named {excerpt(name)}", hint="choose another name")
    if not name.strip() or "\n" in name:
        raise ConflictError(f"{excerpt(name)} cannot name a snapshot", hint="use a short name on one line")
    if len(files.tree.snapshots) >= MAX_SNAPSHOTS:
        raise ConflictError(f"the VM already has {len(files.tree.snapshots)} snapshots, as many as minivisor keeps",
                            hint="delete a snapshot first")
    disks = dict(snapshot_disks(files.spec))
    if not disks:
        raise DiskError("the VM has no hard disk to snapshot", hint="add a disk to its specfile first")
    for top in disks.values():
        files.chain(top)  # a delta is made only on a chain that passes the path policy, whole
    uid = files.tree.next_uid
    snap = Snapshot(uid, name, files.tree.current, disks, description, int(time.time() * 1e6), memory_file,
                    files.doc.to_bytes().decode("utf-8", "surrogateescape"), ready_line)
    tree = files.tree.bytes_with(snap, files.tree_doc)
    if len(tree) > VMSD_LIMITS.file_bytes:
        raise ConflictError(f"the snapshot tree would be larger than the {VMSD_LIMITS.file_bytes >> 20} MiB "
                            "minivisor reads back", hint="delete a snapshot first")
    taken: set[str] = set()
    deltas = {}
    for node in disks:
        deltas[node] = delta_name(files.vm_dir, disks[node], taken)
        taken.add(deltas[node])
    return snap, deltas, [write_step(files.vmsd.name, tree), write_step(files.vmx.name, files.vmx_with(deltas)),
                          nvram.step(nvram.KEEP, uid)]


def refresh_parent_ids(files: VmFiles, snap: Snapshot, deltas: dict[str, str]) -> None:
    """Give each new VMDK delta its parent's content ID as it is now.

    QEMU gives a VMDK a new CID on the first write after opening it: a running VM that had not written
    its top yet when the delta was made may have since. Called while the VM is paused, before it writes
    to the deltas.
    """
    for node, delta in deltas.items():
        path = files.vm_dir / delta
        if format_for(path) != "vmdk":
            continue
        parent = files.layer(snap.disks[node])
        if read_layer(path, "vmdk").parent_cid != parent.cid:
            set_parent(path, parent, os.path.relpath(parent.path, path.parent))


def take_offline(files: VmFiles, name: str, description: str,
                 handlers: dict[str, Callable[..., None]]) -> Snapshot:
    """Freeze the disks of a powered-off VM (the caller holds the VM lock; ``handlers`` run the steps that
    need the datastore or the VMM: :func:`minivisor.core.recovery.step_handlers`)."""
    snap, journal = commit_offline(files, name, description)
    journal.run(handlers)
    return snap


def commit_offline(files: VmFiles, name: str, description: str) -> tuple[Snapshot, Journal]:
    """:func:`take_offline` up to its journal's durable commit (the deltas made): its steps are the caller's to run."""
    snap, deltas, steps = plan_take(files, name, description, None)
    journal = Journal(files.vm_dir, "take")
    journal.begin([files.vm_dir / d for d in deltas.values()])
    for node, delta in deltas.items():
        create_delta(files.vm_dir / delta, files.layer(snap.disks[node]))
    crashpoint("take:prepared")
    journal.commit(steps)
    return snap, journal


def plan_revert(files: VmFiles, snap: Snapshot, clone_files: set[str]) -> tuple[Journal, dict[str, str]]:
    """Prepare new deltas on the snapshot's frozen files and commit the journal that switches to them (the old
    tops become obsolete) and then restores the variable store the snapshot kept."""
    taken: set[str] = set()
    deltas: dict[str, str] = {}
    for node in snap.disks:
        files.chain(snap.disks[node])  # the .vmsd names the files: checked whole before a delta sits on them
        deltas[node] = delta_name(files.vm_dir, snap.disks[node], taken)
        taken.add(deltas[node])
    journal = Journal(files.vm_dir, "revert")
    journal.begin([files.vm_dir / d for d in deltas.values()])
    for node, delta in deltas.items():
        create_delta(files.vm_dir / delta, files.layer(snap.disks[node]))
    crashpoint("revert:prepared")
    keep = files.tree.files() | clone_files
    obsolete = []
    current_tops = dict(snapshot_disks(files.spec))
    for node, top in current_tops.items():
        if node in deltas and top not in keep and top not in deltas.values() and files.layer(top).backing_name:
            obsolete.append(["unlink", top])
    tree = SnapshotTree(dict(files.tree.snapshots), snap.uid, files.tree.last_uid)
    journal.commit([write_step(files.vmsd.name, tree.to_bytes()),
                    write_step(files.vmx.name, files.vmx_with(deltas, snap.config)), *obsolete,
                    nvram.step(nvram.RESTORE, snap.uid)])
    return journal, deltas


def plan_delete(files: VmFiles, snap: Snapshot, clones: dict[int, list[str]],
                busy: set[Path]) -> list[list[Any]]:
    """The journal steps that remove ``snap`` and merge its data into what depends on it.

    ``clones``: snapshot uid -> names of linked clones on it. ``busy``: real
    paths a running VMM has open: those layers are merged by the VMM
    (``online-commit``: block-commit; ``online-stream``: block-stream).
    """
    tree = files.tree
    if clones.get(snap.uid):
        names = ", ".join(clones[snap.uid])
        raise StateError(f"snapshot {snap.name!r} is read-only: linked clones depend on it ({names})",
                         hint="delete those clones first, or make them full clones")
    tops = dict(snapshot_disks(files.spec))
    children = tree.children(snap.uid)
    steps: list[list[Any]] = []
    new_disks: dict[int, dict[str, str]] = {c.uid: dict(c.disks) for c in children}
    new_tops: dict[str, str] = {}
    unlinks: list[str] = []
    for node, frozen in snap.disks.items():
        # the layers that sit directly on the frozen file
        dependents: list[tuple[str, int | None]] = [(c.disks[node], c.uid) for c in children if node in c.disks]
        if tree.current == snap.uid and node in tops:
            dependents.append((tops[node], None))
        for dep, _ in dependents:
            files.chain(dep)  # every chain a step opens passes the path policy before the journal commits

        def is_busy(name: str) -> bool:
            return Path(os.path.realpath(files.path(name))) in busy

        running_dep = [d for d, _ in dependents if is_busy(d)]
        if not dependents:
            if frozen not in _other_files(tree, snap.uid) and frozen not in tops.values():
                unlinks.append(frozen)
            continue
        frozen_layer = files.layer(frozen)
        single = len(dependents) == 1
        dep_name, dep_uid = dependents[0]
        grandchildren = _dependents_of(tree, dep_uid, node, tops) if single else []
        dep_format = files.layer(dep_name).format
        commit = single and not (dep_uid is not None and clones.get(dep_uid)) and dep_format in ("qcow2", "vmdk")
        if commit:
            # one dependent: fold it into the frozen file (its view never changes), then it takes its place
            above = [g for g in grandchildren if is_busy(g)]
            if above and dep_format == "vmdk":
                # QEMU cannot rewrite a VMDK's parent link, which a running intermediate commit must
                raise DiskError(f"cannot delete snapshot {snap.name!r} while the VM runs: a VMDK layer above it "
                                "would have to be relinked", hint="power the VM off, then delete the snapshot")
            if running_dep:  # the running VMM does it (block-commit); offline recovery falls back to qemu-img
                steps.append(["online-commit", node, dep_name, frozen, frozen_layer.format,
                              above[0] if above else None])
            else:
                steps.append(["commit", dep_name])
            for grandchild in grandchildren:
                if running_dep and grandchild in above:
                    continue
                steps.append(["relink", grandchild, frozen, frozen_layer.format])
            if dep_uid is None:
                new_tops[node] = frozen
            else:
                new_disks[dep_uid][node] = frozen
            unlinks.append(dep_name)
        else:
            # several dependents: each gets the frozen file's data copied in, and the frozen file's backing
            below = files.chain(frozen)[1:2]
            for dep, _ in dependents:
                if files.layer(dep).format != "qcow2":
                    raise DiskError(f"cannot merge snapshot {snap.name!r} into {dep}: several layers depend on it "
                                    "and only qcow2 layers can be rebased",
                                    hint="delete the snapshots that depend on it first, or convert the VM's "
                                         "disks to qcow2")
                if is_busy(dep):  # the running VMM streams the data in (block-stream); offline: the same rebase
                    steps.append(["online-stream", node, dep, frozen,
                                  os.path.relpath(below[0].path, files.path(dep).parent) if below else "",
                                  below[0].format if below else None])
                else:
                    steps.append(["rebase", dep, frozen])
            unlinks.append(frozen)
    snapshots = {uid: s for uid, s in tree.snapshots.items() if uid != snap.uid}
    for child in children:
        snapshots[child.uid] = Snapshot(child.uid, child.name, snap.parent, new_disks[child.uid], child.description,
                                        child.created_us, child.memory_file, child.config, child.ready_line)
    current = snap.parent if tree.current == snap.uid else tree.current
    new_tree = SnapshotTree(snapshots, current, tree.last_uid)
    steps.append(write_step(files.vmsd.name, new_tree.to_bytes()))
    if new_tops:
        steps.append(write_step(files.vmx.name, files.vmx_with(new_tops)))
    for name in dict.fromkeys(unlinks):  # names from the .vmsd: only the VM's own files may be deleted
        files.path(name)
        steps.append(["unlink", name])
    if snap.memory_file:
        files.scope.state_file(files.vm_dir, snap.memory_file, f"the memory state of {snap.name!r}")
        steps.append(["unlink", snap.memory_file])
    steps.append(nvram.step(nvram.FORGET, snap.uid))
    return steps


def _other_files(tree: SnapshotTree, uid: int) -> set[str]:
    return {name for s in tree.snapshots.values() if s.uid != uid for name in s.disks.values()}


def _dependents_of(tree: SnapshotTree, uid: int | None, node: str, tops: dict[str, str]) -> list[str]:
    """Files that sit directly on snapshot ``uid``'s frozen file of ``node`` (None: the current top has none)."""
    if uid is None:
        return []
    out = [c.disks[node] for c in tree.children(uid) if node in c.disks]
    if tree.current == uid and node in tops:
        out.append(tops[node])
    return out
