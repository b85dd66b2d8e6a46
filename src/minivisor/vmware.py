"""Import a VMware VM folder (specfile + disks) into the datastore.

The folder is untrusted. Every file the specfile and the disk headers name
must lie inside it (after symlinks); each disk's format comes from its name
and must match its header; VMDK createTypes are limited to what QEMU opens;
qcow2 images may not keep data in an external file; delta disks must point
at an unmodified parent (``parentCID``); virtual sizes are capped. Only then
is each disk's chain flattened into one qcow2 in a private staging folder
(with progress), and the VM appears in the datastore and catalog at once.
"""

from __future__ import annotations

import os
import shutil
import uuid as uuidlib
from pathlib import Path
from typing import Callable

from .datastore import check_vm_name
from .disks import (
    QCOW2_MAGIC,
    VMDK_MAGIC,
    ImageLayer,
    convert_disk,
    format_for,
    human_size,
    resolve_chain,
)
from .errors import DiskError, PathError, SpecError, StateError
from .spec import VmSpec
from .vmx import VmxDocument

__all__ = ["import_vm", "inspect_folder", "MAX_VIRTUAL_SIZE"]

MAX_VIRTUAL_SIZE = 64 * 1024 ** 4  # 64 TiB: bigger is refused as an attack on the host's space


def inspect_folder(folder: Path) -> tuple[Path, VmxDocument, VmSpec, dict[str, tuple[ImageLayer, ...]]]:
    """The specfile and every disk chain of a VMware folder, each checked; raises on anything unsafe."""
    folder = Path(os.path.realpath(folder))
    if not folder.is_dir():
        raise PathError(f"{folder} is not a folder", hint="give the VMware VM's folder (with its .vmx)")
    specfiles = sorted(folder.glob("*.vmx"))
    if len(specfiles) != 1:
        raise SpecError(f"{folder} holds {len(specfiles)} .vmx files", hint="give a folder with exactly one VM")
    vmx = specfiles[0]
    doc = VmxDocument.load(vmx)
    doc.raise_for_errors()
    if "encryption.keySafe" in doc or "encryption.data" in doc:
        raise SpecError(f"{vmx.name} is encrypted", hint="decrypt the VM in VMware first")
    state = doc.get("checkpoint.vmState") or ""
    if state and (folder / state).exists():
        raise StateError(f"the VM in {folder} is suspended ({state})",
                         hint="resume it in VMware and power it off, or discard its suspended state")
    spec = VmSpec.from_vmx(doc)

    def inside(base: Path, name: str) -> Path:
        real = Path(os.path.realpath(base / name))
        if real != folder and folder not in real.parents:
            raise PathError(f"{name!r} (named in {base.name if base != folder else vmx.name}) resolves to {real}, "
                            f"outside the VM folder {folder}", hint="only files inside the VM's folder are imported")
        return real

    chains: dict[str, tuple[ImageLayer, ...]] = {}
    for disk in spec.disks:
        if disk.kind != "disk" or not disk.file_name:
            continue
        if "\\" in disk.file_name or ":" in disk.file_name[:3]:
            raise PathError(f"{disk.node}.fileName {disk.file_name!r} is a Windows path",
                            hint="edit it to name the disk relative to the .vmx")
        top = inside(folder, disk.file_name)
        chain = resolve_chain(top, format_for(top), inside)
        for layer in chain:
            _check_layer(layer)
        chains[disk.node] = chain
    return vmx, doc, spec, chains


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


def import_vm(hv, folder: Path, name: str | None = None, *,
              progress: Callable[[str, float], None] | None = None) -> str:
    """Copy a VMware VM in; returns its name in the catalog."""
    from .identity import fill_identity, name_from, uuid_to_vmx

    vmx, doc, spec, chains = inspect_folder(folder)
    name = check_vm_name(name or name_from(spec.display_name or vmx.stem))
    hv._check_new_name(name)
    staging = hv.datastore.staging_dir(name)
    try:
        taken: set[str] = set()
        for node, chain in chains.items():
            target = f"{Path(chain[-1].path).stem}.qcow2"
            if target in taken:
                target = f"{Path(chain[-1].path).stem}-{node.replace(':', '-')}.qcow2"
            taken.add(target)
            convert_disk(chain[0].path, chain[0].format, staging / target, "qcow2",
                         progress=(lambda p, t=target: progress(t, p)) if progress else None)
            doc.set(f"{node}.fileName", target)
        for disk in spec.disks:  # CD images inside the folder come along; others are left empty
            if disk.kind == "cdrom" and disk.file_name and disk.file_name.lower().endswith(".iso"):
                source = Path(os.path.realpath(vmx.parent / disk.file_name))
                if vmx.parent in source.parents and source.is_file():
                    shutil.copyfile(source, staging / source.name)
                    doc.set(f"{disk.node}.fileName", source.name)
                else:
                    doc.set(f"{disk.node}.fileName", "")
        for key in ("nvram", "checkpoint.vmState", "extendedConfigFile"):
            doc.delete(key)
        vm_uuid = fill_identity(doc, spec)
        if any(vm.uuid == vm_uuid for vm in hv.datastore.catalog.list()):
            vm_uuid = str(uuidlib.uuid4())  # imported twice: the copy gets its own identity
            from .clones import new_identity

            new_identity(doc, spec.display_name or name, vm_uuid, spec)
            doc.set("uuid.bios", uuid_to_vmx(vm_uuid))
        doc.save(staging / f"{name}.vmx")
        hv.datastore.publish(staging, name, vm_uuid)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return name
