"""A powered-off VM's virtual hardware changed by a structured request: its CPUs and memory, a new hard disk.

Each change edits the specfile with the document writer (comments, order and the keys
minivisor does not know stay as they are) and writes it only once power-on's checks pass
(:func:`minivisor.core.specfile.save_edit`), so the VM powers on as it did or the edit is refused
with the line it is about. NICs and CD-ROM media have their own modules (:mod:`nics`,
:mod:`media`): they change a running VM too.
"""

from __future__ import annotations

from typing import Any

from ..datastore.inventory import read_vmx
from ..errors import ArgumentError, ConflictError
from ..host import facts
from ..images.qemu_img import create_disk
from ..spec.devices import CONTROLLER_COUNT, UNIT_COUNT
from ..spec.vmspec import DiskController, VmSpec
from ..spec.vmx import VmxDocument
from ..storage.journal import Journal, crashpoint, write_step
from ..units import parse_size
from ..vmm.plan import check_host_fit
from .context import VmContext
from .specfile import save_edit

__all__ = ["set_resources", "add_disk", "NEW_DISK_BUSES", "NEW_CONTROLLER"]

NEW_DISK_BUSES = ("scsi", "sata", "nvme")  # a new disk goes on one of these (IDE's two units are for CD-ROMs)
NEW_CONTROLLER = ("scsi", "lsilogic")  # the controller added when no present one has a free unit
_RESERVED_UNITS = {"scsi": {7}}  # the SCSI controller's own ID


def set_resources(ctx: VmContext, *, cpus: int | None, memory_mib: int | None) -> dict[str, Any]:
    """Set the VM's vCPUs (``numvcpus``) and memory (``memSize``); the host must be able to run it."""
    if cpus is None and memory_mib is None:
        raise ArgumentError("say what to change", hint="give cpus, memory_mib or both")
    doc = read_vmx(ctx.vmx)
    if cpus is not None:
        doc.set("numvcpus", str(cpus))
    if memory_mib is not None:
        doc.set("memSize", str(memory_mib))
    spec = VmSpec.from_vmx(doc)
    check_host_fit(spec, host_memory_mib=facts.host_memory_mib(), host_cpus=facts.host_cpus())
    saved = save_edit(ctx, doc, "hardwareChanged", cpus=spec.num_cpus, memory_mib=spec.memory_mib)
    return {"cpus": spec.num_cpus, "memory_mib": spec.memory_mib, **saved}


def add_disk(ctx: VmContext, size: str, *, thick: bool) -> dict[str, Any]:
    """A new empty qcow2 disk of ``size`` in the VM's folder (thin unless ``thick``), on the first free unit of
    the controller of its first hard disk (or another present one; else a new SCSI controller)."""
    size_bytes = parse_size(size)
    doc = read_vmx(ctx.vmx)
    spec = VmSpec.from_vmx(doc)
    node = _free_unit(doc, spec)
    file_name = f"{ctx.name}_{node.replace(':', '-')}.qcow2"  # as a full clone names its second disk's file
    target = ctx.vm_dir / file_name
    if target.exists():
        raise ConflictError(f"VM {ctx.name!r} has a file {file_name} already, not named by its specfile",
                            hint="delete or rename that file, then add the disk again")
    for key in doc.keys_with_prefix(f"{node}."):  # what a device marked absent (present = "FALSE") left behind
        doc.delete(key)
    doc.set(f"{node}.present", "TRUE")
    doc.set(f"{node}.fileName", file_name)  # no deviceType: a hard disk, as VMware writes most
    journal = Journal(vm_dir=ctx.vm_dir, op="add-disk")
    journal.begin([target])  # killed from here until the specfile is committed: the next operation deletes it
    create_disk(target, size_bytes, "qcow2", thick=thick)
    crashpoint("add-disk:created")

    def commit(data: bytes) -> None:  # the specfile naming the disk: written even if killed now (rolled forward)
        journal.commit([write_step(ctx.vmx.name, data)])
        try:
            journal.run()
        except BaseException:  # the write failed (a full datastore): the specfile is the old one, so undo it now
            if ctx.vmx.read_bytes() != data:
                journal.rollback()
            raise

    saved = save_edit(ctx, doc, "diskAdded", write=commit, node=node, file=file_name, size=size_bytes)
    return {"node": node, "file": file_name, "size": size_bytes, "thick": thick, **saved}


def _free_unit(doc: VmxDocument, spec: VmSpec) -> str:
    """The node (``scsi0:1``) a new disk takes; adds its controller's keys to ``doc`` if it needs a new one."""
    controllers = [c for c in spec.controllers if c.bus in NEW_DISK_BUSES]
    first = next((d.controller for d in spec.disks if d.kind == "disk"), None)
    controllers.sort(key=lambda c: c.name != first)  # the first hard disk's controller first, then file order
    taken = {d.node for d in spec.disks}
    for controller in controllers:
        node = _free_node(controller, taken)
        if node:
            return node
    bus, model = NEW_CONTROLLER
    present = {c.name for c in spec.controllers}
    index = next((i for i in range(CONTROLLER_COUNT[bus]) if f"{bus}{i}" not in present), None)
    if index is None:
        raise ConflictError("every controller a new disk could go on is full",
                            hint="remove a disk first, or edit the specfile")
    doc.set(f"{bus}{index}.present", "TRUE")
    doc.set(f"{bus}{index}.virtualDev", model)
    return f"{bus}{index}:0"


def _free_node(controller: DiskController, taken: set[str]) -> str | None:
    reserved = _RESERVED_UNITS.get(controller.bus, set())
    for unit in range(UNIT_COUNT[controller.bus]):
        node = f"{controller.name}:{unit}"
        if unit not in reserved and node not in taken:
            return node
    return None
