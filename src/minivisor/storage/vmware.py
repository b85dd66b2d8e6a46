"""Import a VMware VM folder (specfile + disks) into the datastore.

The folder is untrusted. Every file the specfile and the disk headers name
must lie inside it (after symlinks: the datastore's import scope), with no
name QEMU would parse itself (``json:``, ``nbd:``...); each disk's format
comes from its name and must match its header; VMDK createTypes are limited
to what QEMU opens; qcow2 images may not keep data in an external file; delta
disks must point at an unmodified parent (``parentCID``); virtual sizes are
capped; serial port files must stay in the folder. Only then is each disk's
chain, spelled out layer by layer, flattened into one qcow2 in a private
staging folder (with progress), CD-ROM and floppy images in the folder are
copied (others are left empty), and the VM appears in the datastore and
catalog at once.
"""

from __future__ import annotations

import os
import shutil
import uuid as uuidlib
from pathlib import Path
from typing import Callable

from ..datastore.store import Datastore, Scope, check_vm_name
from ..errors import DiskError, HvError, PathError, SpecError, StateError
from ..spec.identity import fill_identity, name_from, new_identity, uuid_to_vmx
from ..spec.vmspec import VmSpec
from ..spec.vmx import VmxDocument
from ..images.layers import ImageLayer, QCOW2_MAGIC, VMDK_MAGIC
from ..images.qemu_img import convert_disk, copy_sparse
from ..units import ProgressMeter, human_size

__all__ = ["import_vm", "inspect_folder", "MAX_VIRTUAL_SIZE"]

MAX_VIRTUAL_SIZE = 64 * 1024 ** 4  # 64 TiB: bigger is refused as an attack on the host's space


def inspect_folder(folder: Path, scope: Scope) -> tuple[Path, VmxDocument, VmSpec, dict[str, tuple[ImageLayer, ...]]]:
    """The specfile and every disk chain of a VMware folder, each checked under ``scope``; raises on anything unsafe."""
    folder = Path(os.path.realpath(folder))
    if not folder.is_dir():
        raise PathError(f"{folder} is not a folder", hint="give the VMware VM's folder (with its .vmx)")
    specfiles = sorted(folder.glob("*.vmx"))
    if len(specfiles) != 1:
        raise SpecError(f"{folder} holds {len(specfiles)} .vmx files", hint="give a folder with exactly one VM")
    vmx = specfiles[0]
    if not vmx.is_file():  # a FIFO would block the read below for ever; a folder is no specfile either
        raise PathError(f"{vmx} is not a file", hint="give the VMware VM's folder, with its .vmx file")
    real = os.path.realpath(vmx)
    if not real.startswith(f"{folder}/"):  # a symlink would have the import read (and copy) a host file
        raise PathError(f"{vmx} is a symlink to {real}, outside the VM folder",
                        hint="only files inside the VM's folder are imported: copy the specfile in place of the link")
    doc = VmxDocument.load(vmx)
    doc.raise_for_errors()
    if "encryption.keySafe" in doc or "encryption.data" in doc:
        raise SpecError(f"{vmx.name} is encrypted", hint="decrypt the VM in VMware first")
    state = doc.get("checkpoint.vmState") or ""
    saved = os.path.realpath(folder / state) if state else ""
    # only a state file in the folder is looked for: whether a host file the specfile names exists is not its to learn
    if saved.startswith(f"{folder}/") and os.path.exists(saved):
        raise StateError(f"the VM in {folder} is suspended ({state})",
                         hint="resume it in VMware and power it off, or discard its suspended state")
    spec = VmSpec.from_vmx(doc)
    chains: dict[str, tuple[ImageLayer, ...]] = {}
    for disk in spec.disks:
        if disk.kind != "disk" or not disk.file_name:
            continue
        chain = scope.disk_chain(folder, disk.file_name, f"{disk.node}.fileName")
        for layer in chain:
            _check_layer(layer)
        chains[disk.node] = chain
    for port in spec.serial_ports:  # the guest writes these: they may not leave the new folder
        if port.file_name:
            real = scope.output(folder, port.file_name, f"serial{port.index}.fileName", socket=port.file_type == "pipe")
            doc.set(f"serial{port.index}.fileName", os.path.relpath(real, folder))
    return vmx, doc, spec, chains


def _copy_media(spec: VmSpec, doc: VmxDocument, scope: Scope, folder: Path, staging: Path, taken: set[str],
                progress: Callable[[str, float], None] | None) -> None:
    """CD-ROM and floppy images inside the folder come along (``taken``: names already used in the new
    folder), with progress as the disks have it; any other is left empty, like unplugged media."""
    media = [(d.node, d.file_name) for d in spec.disks if d.kind == "cdrom" and d.file_name]
    media += [(f"floppy{f.index}", f.file_name) for f in spec.floppies if f.file_name]
    copies: dict[Path, str] = {}  # source -> its copy's name
    for key, name in media:
        try:
            source = scope.image(folder, name, f"{key}.fileName")
        except HvError:  # outside the folder, missing, or not a plain file
            doc.set(f"{key}.fileName", "")
            continue
        if source not in copies:
            copies[source] = source.name if source.name not in taken else f"{key.replace(':', '-')}-{source.name}"
            taken.add(copies[source])
            meter = ProgressMeter(os.stat(source).st_size,
                                  (lambda percent, copy=copies[source]: progress(copy, percent)) if progress else None)
            copy_sparse(source, staging / copies[source], meter.add)
            meter.reach(meter.total)
        doc.set(f"{key}.fileName", copies[source])


def _check_layer(layer: ImageLayer) -> None:
    if layer.virtual_size > MAX_VIRTUAL_SIZE:
        raise DiskError(f"{layer.path.name} claims a virtual size of {human_size(layer.virtual_size)}, more than "
                        f"the {human_size(MAX_VIRTUAL_SIZE)} minivisor imports", hint="shrink the disk in VMware")
    if layer.format == "raw":
        with open(layer.path, "rb") as image:
            magic = image.read(4)
        if magic in (QCOW2_MAGIC, VMDK_MAGIC):
            kind = "qcow2" if magic == QCOW2_MAGIC else "VMDK"
            raise DiskError(f"{layer.path.name} is named as a raw disk but holds a {kind} header",
                            hint="rename it to its real format; minivisor never guesses formats")
    if layer.format == "qcow2" and layer.backing_name and layer.backing_format not in ("qcow2", "vmdk", "raw"):
        raise DiskError(f"{layer.path.name} names a backing file of format {layer.backing_format!r}",
                        hint="flatten the disk before importing it")


def import_vm(datastore: Datastore, folder: Path, name: str | None = None, *,
              progress: Callable[[str, float], None] | None = None) -> str:
    """Copy a VMware VM in; returns its name in the catalog."""
    scope = datastore.import_scope(folder)
    vmx, doc, spec, chains = inspect_folder(folder, scope)
    name = check_vm_name(name or name_from(spec.display_name or vmx.stem))
    datastore.check_new_name(name)
    staging = datastore.staging_dir(name)
    try:
        taken: set[str] = set()
        for node, chain in chains.items():
            target = f"{Path(chain[-1].path).stem}.qcow2"
            if target in taken:
                target = f"{Path(chain[-1].path).stem}-{node.replace(':', '-')}.qcow2"
            taken.add(target)
            convert_disk(chain, staging / target, "qcow2",
                         progress=(lambda p, t=target: progress(t, p)) if progress else None)
            doc.set(f"{node}.fileName", target)
        _copy_media(spec, doc, scope, vmx.parent, staging, taken, progress)
        for key in ("nvram", "checkpoint.vmState", "extendedConfigFile"):
            doc.delete(key)
        vm_uuid = fill_identity(doc, spec)
        if any(vm.uuid == vm_uuid for vm in datastore.catalog.list()):
            vm_uuid = str(uuidlib.uuid4())  # imported twice: the copy gets its own identity
            new_identity(doc, spec.display_name or name, vm_uuid, spec)
            doc.set("uuid.bios", uuid_to_vmx(vm_uuid))
        doc.save(staging / f"{name}.vmx")
        datastore.publish(staging, name, vm_uuid)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return name
