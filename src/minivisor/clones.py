"""Full and linked clones of a VM.

A *full* clone copies each hard disk's layers (data extents only, in the
kernel) into its own folder and relinks them there, so it shares nothing with
the source (with a progress bar); VMDK chains are flattened into one qcow2. A *linked* clone's disks are new qcow2 overlays whose
backing files are the source's snapshot layers (backing format recorded), so
it costs almost no space; the catalog records the link and the source's
snapshot stays read-only (not deletable) while the clone exists. Either way
the clone gets a new name, a new ``uuid.bios`` and new MAC addresses.

The clone is assembled in ``<datastore>/.minivisor/clones/<name>`` and
published (folder renamed into place, catalog rows added) by one journal step
on the source VM, so a crash leaves either no clone or a complete one.
"""

from __future__ import annotations

import os
import shutil
import uuid as uuidlib
from pathlib import Path
from typing import Callable

from .datastore import Datastore, check_vm_name
from .disks import (
    ImageLayer,
    allocated_bytes,
    convert_disk,
    copy_sparse,
    create_overlay,
    format_for,
    qemu_img,
    resolve_chain,
)
from .errors import HvError, StateError
from .journal import Journal, crashpoint
from .snapshots import Snapshot, VmFiles, snapshot_disks, take_offline
from .validate import generated_mac
from .vmx import VmxDocument

__all__ = ["clone_vm", "publish_clone", "new_identity"]


def clone_vm(hv, source: str, target: str, *, linked: bool, snapshot: str | None,
             progress: Callable[[float], None] | None = None) -> None:
    check_vm_name(target)
    hv._check_new_name(target)
    ops = hv._disk_ops()
    with ops.operation(source, online=True, what="clone") as ctx:
        files = VmFiles(hv.datastore, ctx.vmx)
        snap: Snapshot | None = None
        made = False  # a snapshot taken for this clone
        if snapshot is not None:
            snap = files.tree.find(snapshot, source)
        elif linked or ctx.running:
            # A linked clone needs frozen layers; a running VM's disks change under a copy: freeze them first.
            name = f"clone-{target}"
            snap = (ops._take_online(ctx, files, name, f"taken to clone {target}", False) if ctx.running
                    else take_offline(files, name, f"taken to clone {target}"))
            files = VmFiles(hv.datastore, ctx.vmx)
            made = True
        try:
            _assemble_and_publish(hv, ctx, files, target, snap, linked, progress)
        except BaseException:
            _undo(hv, ops, ctx, target, snap if made else None)
            raise
        if made and not linked and snap is not None:  # a full clone needs it only while copying, like VMware's
            ops.delete_in(ctx, str(snap.uid))


def _assemble_and_publish(hv, ctx, files: VmFiles, target: str, snap: Snapshot | None, linked: bool,
                          progress: Callable[[float], None] | None) -> None:
    """Build the clone in a staging folder (recorded in the source's journal), then publish it."""
    sources = dict(snap.disks) if snap else dict(snapshot_disks(files.spec))
    if not sources:
        raise StateError(f"VM {ctx.name!r} has no hard disk to clone", hint="add a disk to its specfile")
    home = hv.datastore.root / target
    staging = hv.datastore.meta / "clones" / target
    staging.parent.mkdir(exist_ok=True)
    shutil.rmtree(staging, ignore_errors=True)
    journal = Journal(ctx.vm_dir, "clone")
    journal.begin([staging])
    staging.mkdir()
    new_uuid = str(uuidlib.uuid4())
    stems = {node: (target if i == 0 else f"{target}_{node.replace(':', '-')}") for i, node in enumerate(sources)}
    names: dict[str, str] = {}
    if linked:
        for node, file_name in sources.items():
            names[node] = f"{stems[node]}.qcow2"
            create_overlay(staging / names[node], files.layer(file_name), relative_to=home)
    else:
        chains = {node: _chain(files, name) for node, name in sources.items()}
        meter = _Meter(sum(allocated_bytes(layer) for chain in chains.values() for layer in chain), progress)
        for node, chain in chains.items():
            names[node] = _copy_chain(chain, staging, stems[node], meter)
        if progress:
            progress(100.0)
    doc = clone_specfile(files, target, new_uuid, names, home, snap.config if snap else None)
    doc.save(staging / f"{target}.vmx")
    crashpoint("clone:prepared")
    journal.commit([["publish-clone", str(staging), target, new_uuid, ctx.uuid,
                     snap.uid if (linked and snap) else None]])
    journal.run({"publish-clone": lambda *args: publish_clone(hv.datastore, *args)})


def _undo(hv, ops, ctx, target: str, made: Snapshot | None) -> None:
    """After a failed clone (no space, a bad disk): remove the staging folder and the snapshot made for it.

    A clone that is not in the catalog was not published (publishing is one step), so its journal can be
    rolled back even past its commit.
    """
    journal = Journal.load(ctx.vm_dir)
    if journal is not None and journal.op == "clone" and hv.datastore.catalog.find(target) is None:
        journal.rollback()
    if made is not None and Journal.load(ctx.vm_dir) is None:
        try:
            ops.delete_in(ctx, str(made.uid))
        except (HvError, OSError):
            pass  # its delete is journaled: the next operation on the source finishes it


def _chain(files: VmFiles, file_name: str) -> tuple[ImageLayer, ...]:
    path = files.path(file_name)
    return resolve_chain(path, format_for(path), lambda base, name: files.datastore.resolve(base, name))


class _Meter:
    """Bytes copied -> percent for the progress callback."""

    def __init__(self, total: int, progress: Callable[[float], None] | None) -> None:
        self.total, self.done, self.progress = max(total, 1), 0, progress

    def add(self, count: int) -> None:
        self.done += count
        if self.progress:
            self.progress(min(100.0, 100.0 * self.done / self.total))


def _copy_chain(chain: tuple[ImageLayer, ...], staging: Path, stem: str, meter: _Meter) -> str:
    """Copy a disk's layers into the clone (data extents only, in the kernel) and relink them there.

    The copies form the same chain, but every backing file is the clone's own
    (``stem.qcow2`` at the bottom, ``stem-00000N.qcow2`` above, formats recorded).
    A chain with VMDK layers is flattened with qemu-img convert instead.
    """
    if any(layer.format == "vmdk" for layer in chain):
        name = f"{stem}.qcow2"
        convert_disk(chain[0].path, chain[0].format, staging / name, "qcow2",
                     progress=lambda p: meter.progress and meter.progress(p))
        return name
    bottom_first = list(reversed(chain))
    names = [f"{stem}.{'raw' if bottom_first[0].format == 'raw' else 'qcow2'}"]
    names += [f"{stem}-{depth:06d}.qcow2" for depth in range(1, len(bottom_first))]
    for layer, name in zip(bottom_first, names):
        copy_sparse(layer.path, staging / name, meter.add)
    for depth in range(1, len(bottom_first)):
        qemu_img("rebase", "-q", "-u", "-f", "qcow2", "-F", bottom_first[depth - 1].format, "-b", names[depth - 1],
                 str(staging / names[depth]))
    return names[-1]


def clone_specfile(files: VmFiles, target: str, new_uuid: str, disks: dict[str, str], home: Path,
                   config: str | None = None) -> VmxDocument:
    """The source's specfile (or the snapshot's, when cloning one) with a new identity, the clone's
    disks, and other files named from the new folder."""
    from .spec import VmSpec

    raw = config.encode("utf-8", "surrogateescape") if config else files.doc.to_bytes()
    doc = VmxDocument.parse(raw, source=f"{target}.vmx")
    spec = VmSpec.from_vmx(doc) if config else files.spec
    new_identity(doc, target, new_uuid, spec)
    for disk in spec.disks:
        if disk.node in disks:
            doc.set(f"{disk.node}.fileName", disks[disk.node])
        elif disk.file_name and not os.path.isabs(disk.file_name):
            # independent disks and CD images stay where they are: name them from the clone's folder
            doc.set(f"{disk.node}.fileName", os.path.relpath(files.path(disk.file_name), home))
    for key in ("checkpoint.vmState", "uuid.location", "vc.uuid", "nvram"):
        doc.delete(key)
    return doc


def new_identity(doc: VmxDocument, name: str, new_uuid: str, spec) -> None:
    """A new display name, ``uuid.bios`` and generated MAC for every NIC."""
    from .identity import uuid_to_vmx

    doc.set("displayName", name)
    doc.set("uuid.bios", uuid_to_vmx(new_uuid))
    for nic in spec.nics:
        doc.delete(f"{nic.name}.address")
        doc.delete(f"{nic.name}.generatedAddressOffset")
        doc.set(f"{nic.name}.addressType", "generated")
        doc.set(f"{nic.name}.generatedAddress", generated_mac(new_uuid, nic.index))


def publish_clone(datastore: Datastore, staging: str, name: str, new_uuid: str, source_uuid: str,
                  snapshot_uid: int | None) -> None:
    """Move the assembled clone into place and into the catalog (idempotent: a re-run finishes it).

    If the catalog refuses (a full datastore), the folder goes back: nothing is published.
    """
    home = datastore.root / name
    moved = Path(staging).exists() and not home.exists()
    if moved:
        os.rename(staging, home)
    try:
        with datastore.catalog.transaction() as db:
            if datastore.catalog.find(name) is None:
                datastore.catalog.add(db, name, new_uuid, f"{name}/{name}.vmx")
            if snapshot_uid is not None:
                datastore.catalog.add_clone_link(db, new_uuid, source_uuid, snapshot_uid)
    except BaseException:
        if moved:
            os.rename(home, staging)
        raise
