"""Full and linked clones of a VM.

A *full* clone has one consolidated disk per drive, with no backing file and
nothing shared with the source (with a progress bar): a qcow2 or raw disk of one
layer is copied (data extents only, in the kernel), a chain or a VMDK is written
by ``qemu-img convert`` (explicit formats) in the format of its top, so a VMDK
stays a VMDK (with a descriptor naming its new file). A *linked* clone's disks
are new deltas (a VMDK's a VMDK with its ``parentFileNameHint``, any other's a
qcow2) whose backing files are the source's snapshot layers (backing format
recorded), so it costs almost no space; the catalog records the link and the source's
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
from collections.abc import Callable
from pathlib import Path

from ..datastore.inventory import summary_row
from ..datastore.layout import EFI_VARS
from ..datastore.store import Datastore
from ..errors import NoHardDiskError
from ..files import fsync_dir
from ..spec.identity import new_identity, random_uuid
from ..spec.vmspec import VmSpec
from ..spec.vmx import VmxDocument
from ..images.layers import ImageLayer, allocated_bytes
from ..images.deltas import create_delta, delta_format
from .journal import Journal, crashpoint
from ..spec.vmsd import Snapshot
from ..units import ProgressMeter
from .nvram import copy_for_clone
from .snapshots import VmFiles, snapshot_disks

__all__ = ["build_clone", "abandon_clone", "publish_clone", "clone_specfile"]


def build_clone(files: VmFiles, source_uuid: str, target: str, snap: Snapshot | None, *, linked: bool,
                progress: Callable[[float], None] | None = None) -> None:
    """Assemble the clone of the VM in ``files`` (of ``snap``, else of its current disks), then publish it.

    The staging folder is recorded in the source's journal first, so a crash leaves nothing behind;
    publishing is the journal's one committed step. ``linked`` clones sit on ``snap``'s frozen layers.
    """
    sources = dict(snap.disks) if snap else dict(snapshot_disks(files.spec))
    if not sources:
        raise NoHardDiskError(f"VM {files.vm_dir.name!r} has no hard disk to clone", hint="add a disk to its specfile")
    datastore = files.datastore
    home = datastore.root / target
    staging = datastore.meta / "clones" / target
    staging.parent.mkdir(mode=0o700, exist_ok=True)
    if os.path.lexists(staging):  # left by a clone whose journal was rolled back
        import shutil  # here: with bz2, lzma and threading, ~3 ms a clone needs only after such a crash

        shutil.rmtree(staging, ignore_errors=True)
    journal = Journal(files.vm_dir, "clone")
    journal.begin([staging])
    staging.mkdir(mode=0o700)  # it becomes the clone's folder: owner only
    new_uuid = random_uuid()
    stems = {node: (target if i == 0 else f"{target}_{node.replace(':', '-')}") for i, node in enumerate(sources)}
    names: dict[str, str] = {}
    if linked:
        for node, file_name in sources.items():
            backing = files.chain(file_name)[0]  # the clone's whole chain passes the path policy first
            names[node] = f"{stems[node]}.{delta_format(backing.format)}"
            create_delta(staging / names[node], backing, relative_to=home)
    else:
        chains = {node: files.chain(name) for node, name in sources.items()}
        meter = ProgressMeter(sum(allocated_bytes(layer) for chain in chains.values() for layer in chain), progress)
        for node, chain in chains.items():
            names[node] = _copy_chain(chain, staging, stems[node], meter)
        if progress:
            progress(100.0)
    copy_for_clone(files.vm_dir / EFI_VARS, snap.uid if snap else None, staging / EFI_VARS)
    doc = clone_specfile(files, target, new_uuid, names, staging, snap.config if snap else None)
    doc.save(staging / f"{target}.vmx")
    crashpoint("clone:prepared")
    journal.commit([["publish-clone", str(staging), target, new_uuid, source_uuid,
                     snap.uid if (linked and snap) else None]])
    journal.run({"publish-clone": lambda *args: publish_clone(datastore, *args)})


def abandon_clone(files: VmFiles, target: str) -> None:
    """After a failed clone (no space, a bad disk): remove its staging folder.

    A clone that is not in the catalog was not published (publishing is one step), so its journal can be
    rolled back even past its commit.
    """
    journal = Journal.load(files.vm_dir)
    if journal is not None and journal.op == "clone" and files.datastore.catalog.find(target) is None:
        journal.rollback()


def _copy_chain(chain: tuple[ImageLayer, ...], staging: Path, stem: str, meter: ProgressMeter) -> str:
    """One consolidated disk in the clone (no backing file) with what the chain's top reads.

    A single qcow2 or raw layer is copied (data extents only, in the kernel); a chain is flattened by
    qemu-img into the top's format (a VMDK, whose descriptor names its own file and extents, is always
    written anew: a monolithicSparse VMDK; anything else becomes a qcow2).
    """
    from ..images.qemu_img import convert_disk, copy_sparse  # here: a linked clone copies nothing

    top = chain[0]
    if len(chain) == 1 and top.format != "vmdk":
        name = f"{stem}{top.path.suffix.lower()}"
        copy_sparse(top.path, staging / name, meter.add)
        return name
    name = f"{stem}.{delta_format(top.format)}"
    size = sum(allocated_bytes(layer) for layer in chain)
    start = meter.done
    convert_disk(chain, staging / name, progress=lambda percent: meter.reach(start + size * percent / 100))
    meter.reach(start + size)
    return name


def clone_specfile(files: VmFiles, target: str, new_uuid: str, disks: dict[str, str], staging: Path,
                   config: str | None = None) -> VmxDocument:
    """The source's specfile (or the snapshot's, when cloning one) with a new identity, the clone's
    disks, and copies in ``staging`` of the other files its devices name in the source's folder."""
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


def _carry_files(files: VmFiles, spec: VmSpec, doc: VmxDocument, staging: Path, cloned: set[str]) -> None:
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
            doc.set(f"{key}.fileName", _copy_chain(files.chain(name), staging, stem, ProgressMeter(1, None)))
        else:
            from ..images.qemu_img import copy_sparse

            (staging / relative).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            copy_sparse(real, staging / relative)


def publish_clone(datastore: Datastore, staging: str, name: str, new_uuid: str, source_uuid: str,
                  snapshot_uid: int | None) -> None:
    """Move the assembled clone into place and into the catalog (idempotent: a re-run finishes it).

    If the catalog refuses (a full datastore), the folder goes back: nothing is published.
    """
    home = datastore.root / name
    moved = Path(staging).exists() and not home.exists()
    if moved:
        datastore.move_in(staging, name)
        fsync_dir(datastore.root)  # the folder is where the catalog will say before the journal is gone
    try:
        with datastore.catalog.transaction() as db:
            if datastore.catalog.find(name) is None:
                vmx = f"{name}/{name}.vmx"
                datastore.catalog.add(db, name, new_uuid, vmx)
                if row := summary_row(datastore.root, vmx, new_uuid):  # what `vm show` reads, in the same commit
                    datastore.catalog.put_summaries(db, [row])
            if snapshot_uid is not None:
                datastore.catalog.add_clone_link(db, new_uuid, source_uuid, snapshot_uid)
    except BaseException:
        if moved:
            os.rename(home, staging)
        raise
