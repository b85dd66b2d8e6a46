"""Full and linked clones of a VM.

A *full* clone copies each hard disk's layers (data extents only, in the
kernel) into its own folder and relinks them there, so it shares nothing with
the source (with a progress bar); VMDK chains are flattened into one qcow2. A *linked* clone's disks are new qcow2 overlays whose
backing files are the source's snapshot layers (backing format recorded), so
it costs almost no space; the catalog records the link and the source's
snapshot stays read-only (not deletable) while the clone exists: those frozen
layers are the only files of another VM the datastore's path policy lets a VM
open, read-only, as backing layers. Either way the clone gets a new name, a
new ``uuid.bios``, new MAC addresses, and its own copies of the other files
its devices name in the source's folder (independent disks, CD-ROM and floppy
images); files in allowed host folders are shared.

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

from ..datastore.store import Datastore, check_vm_name
from .images import ImageLayer, allocated_bytes, convert_disk, copy_sparse, create_overlay, set_backing
from ..errors import HvError, StateError
from .journal import Journal, crashpoint
from .snapshots import Snapshot, VmFiles, snapshot_disks, take_offline
from ..vmm.plan import generated_mac
from ..spec.vmx import VmxDocument

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
    staging.parent.mkdir(mode=0o700, exist_ok=True)
    shutil.rmtree(staging, ignore_errors=True)
    journal = Journal(ctx.vm_dir, "clone")
    journal.begin([staging])
    staging.mkdir(mode=0o700)  # it becomes the clone's folder: owner only
    new_uuid = str(uuidlib.uuid4())
    stems = {node: (target if i == 0 else f"{target}_{node.replace(':', '-')}") for i, node in enumerate(sources)}
    names: dict[str, str] = {}
    if linked:
        for node, file_name in sources.items():
            names[node] = f"{stems[node]}.qcow2"
            create_overlay(staging / names[node], files.layer(file_name), relative_to=home)
    else:
        chains = {node: files.chain(name) for node, name in sources.items()}
        meter = _Meter(sum(allocated_bytes(layer) for chain in chains.values() for layer in chain), progress)
        for node, chain in chains.items():
            names[node] = _copy_chain(chain, staging, stems[node], meter)
        if progress:
            progress(100.0)
    doc = clone_specfile(files, target, new_uuid, names, staging, snap.config if snap else None)
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
        convert_disk(chain, staging / name, "qcow2", progress=lambda p: meter.progress and meter.progress(p))
        return name
    bottom_first = list(reversed(chain))
    names = [f"{stem}.{'raw' if bottom_first[0].format == 'raw' else 'qcow2'}"]
    names += [f"{stem}-{depth:06d}.qcow2" for depth in range(1, len(bottom_first))]
    for layer, name in zip(bottom_first, names):
        copy_sparse(layer.path, staging / name, meter.add)
    for depth in range(1, len(bottom_first)):
        set_backing(staging / names[depth], names[depth - 1], bottom_first[depth - 1].format)
    return names[-1]


def clone_specfile(files: VmFiles, target: str, new_uuid: str, disks: dict[str, str], staging: Path,
                   config: str | None = None) -> VmxDocument:
    """The source's specfile (or the snapshot's, when cloning one) with a new identity, the clone's
    disks, and copies in ``staging`` of the other files its devices name in the source's folder."""
    from ..spec.vmspec import VmSpec

    raw = config.encode("utf-8", "surrogateescape") if config else files.doc.to_bytes()
    doc = VmxDocument.parse(raw, source=f"{target}.vmx")
    spec = VmSpec.from_vmx(doc) if config else files.spec
    new_identity(doc, target, new_uuid, spec)
    for node, name in disks.items():
        doc.set(f"{node}.fileName", name)
    _carry_files(files, spec, doc, staging, set(disks))
    for key in ("checkpoint.vmState", "uuid.location", "vc.uuid", "nvram"):
        doc.delete(key)
    return doc


def _carry_files(files: VmFiles, spec, doc: VmxDocument, staging: Path, cloned: set[str]) -> None:
    """Give the clone its own copy of each file its other devices name in the source's folder.

    A VM may open only files in its own folder (and allowed host folders, whose
    names are kept): independent disks are copied with their chains, CD-ROM
    and floppy images as they are; serial port files are only renamed, the
    guest writes new ones. A file that does not exist keeps its name.
    """
    devices = [(d.node, d.file_name, d.kind) for d in spec.disks if d.file_name and d.node not in cloned]
    devices += [(f"floppy{f.index}", f.file_name, "floppy") for f in spec.floppies if f.file_name]
    devices += [(f"serial{p.index}", p.file_name, "serial") for p in spec.serial_ports if p.file_name]
    home = files.scope.home or ""
    for key, name, kind in devices:
        real = files.scope.path(files.vm_dir, name, f"{key}.fileName")
        if not files.datastore.contains(str(real)):
            doc.set(f"{key}.fileName", str(real))  # an allowed host folder: shared, by its full name
            continue
        relative = os.path.relpath(real, home)
        doc.set(f"{key}.fileName", relative)
        if kind == "serial" or not real.exists():
            continue
        if kind == "disk":  # an independent disk: snapshots (and so linked clones) leave it out
            stem = f"{staging.name}_{key.replace(':', '-')}"  # staging is named after the clone
            doc.set(f"{key}.fileName", _copy_chain(files.chain(name), staging, stem, _Meter(1, None)))
        else:
            (staging / relative).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            copy_sparse(real, staging / relative)


def new_identity(doc: VmxDocument, name: str, new_uuid: str, spec) -> None:
    """A new display name, ``uuid.bios`` and generated MAC for every NIC."""
    from ..spec.identity import uuid_to_vmx

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
