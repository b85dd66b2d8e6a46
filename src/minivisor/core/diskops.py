"""Disk files by path (create, inspect, grow, convert) and a VM's hard disks (list, grow).

A path a user gives is relative to the current folder, inside the datastore or
an allowed folder, and follows the rules of the folder it is in; its chain is
read under the same rules. A new or converted disk is built in a private
staging folder and moved into place whole.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from ..datastore.store import Datastore
from ..errors import ConflictError, DiskError, NoSuchDiskError, host_refused
from ..images.layers import ImageLayer, disk_info, format_for
from ..images.qemu_img import check_resize, convert_disk, create_disk, resize_disk
from ..units import parse_size
from ..storage.journal import crashpoint

from ..vmm import jobs
from ..vmm.argv import device_id
from ..vmm.states import Action
from .context import Vms
from .recovery import disk_operation

__all__ = ["create", "info", "resize", "convert", "vm_disks", "vm_disk_resize", "FORMATS"]

FORMATS = ("qcow2", "raw", "vmdk")  # what minivisor creates


def create(datastore: Datastore, path: Path | str, size: str, *, fmt: str | None, thick: bool) -> dict:
    """A new empty disk at ``path``: thin unless ``thick``."""
    target = _user_path(datastore, path)
    fmt = _format(target, fmt)
    _refuse_existing(target)
    size_bytes = parse_size(size)
    _build_then_move(datastore, target, lambda work: create_disk(work, size_bytes, fmt, thick=thick))
    return info(datastore, target)


def info(datastore: Datastore, path: Path | str) -> dict:
    """Virtual size, bytes allocated, format and chain of parents of a disk file."""
    return disk_info(_chain(datastore, _user_path(datastore, path)))


def resize(datastore: Datastore, path: Path | str, size: str) -> dict:
    """Grow a disk file."""
    target = _user_path(datastore, path)
    resize_disk(_chain(datastore, target)[0], parse_size(size))
    return info(datastore, target)


def convert(datastore: Datastore, source: Path | str, target: Path | str, *, fmt: str | None, thick: bool,
            progress: Callable[[float], None] | None = None) -> dict:
    """Copy a disk (its chain flattened) into a new file of another format, written whole or not at all."""
    src, dst = _user_path(datastore, source), _user_path(datastore, target)
    fmt = _format(dst, fmt, creating=False)
    _refuse_existing(dst)
    chain = _chain(datastore, src)

    def build(work: Path) -> None:
        convert_disk(chain, work, fmt, progress=progress, thick=thick)
        crashpoint("convert:written")

    _build_then_move(datastore, dst, build)
    return info(datastore, dst)


def vm_disks(vms: Vms, name: str) -> list[dict]:
    """Each hard disk of a VM: node, file, format, sizes, chain."""
    ctx = vms.context(name)
    files = ctx.files()
    return [{"node": disk.node, "fileName": disk.file_name, "mode": disk.mode, **disk_info(files.chain(disk.file_name))}
            for disk in files.spec.disks if disk.kind == "disk" and disk.file_name]


def vm_disk_resize(vms: Vms, name: str, node: str, size: str) -> dict:
    """Grow a VM's disk (its top layer); a running VM's VMM does it (block_resize) and the guest sees it."""
    node = node.lower()
    with disk_operation(vms, name, Action.RESIZE_DISK) as ctx:
        files = ctx.files()
        disks = {d.node: d for d in files.spec.disks if d.kind == "disk" and d.file_name}
        if node not in disks:
            raise NoSuchDiskError(f"VM {ctx.name!r} has no hard disk {node!r}",
                                  hint=f"its disks: {', '.join(disks) or 'none'}")
        top: ImageLayer = files.chain(disks[node].file_name)[0]
        wanted = parse_size(size)
        if not ctx.running:
            resize_disk(top, wanted)
        else:
            check_resize(top, wanted)
            with ctx.vmm.session() as qmp:
                jobs.resize_disk(qmp, device_id(node), wanted)
    return next(d for d in vm_disks(vms, name) if d["node"] == node)


def _user_path(datastore: Datastore, path: Path | str) -> Path:
    """A disk path given by a user: relative to the current folder, and inside the datastore."""
    return datastore.resolve(Path.cwd(), str(path), what="disk")


def _chain(datastore: Datastore, path: Path) -> tuple[ImageLayer, ...]:
    """A disk a user named, and its backing chain, under the rules of the folder it is in."""
    scope = datastore.folder_scope(path.parent)
    return scope.disk_chain(path.parent, path.name, "disk")


def _format(target: Path, fmt: str | None, *, creating: bool = True) -> str:
    """The format asked for, which the file name must declare (formats come from names, never contents)."""
    fmt = fmt or format_for(target)
    if creating and fmt not in FORMATS:
        raise DiskError(f"format {fmt!r} is not one minivisor creates", hint="use qcow2, vmdk or raw")
    if format_for(target) != fmt:
        raise DiskError(f"{target.name} is named like a {format_for(target)} disk, not {fmt}",
                        hint=f"name it with the .{fmt} suffix: formats come from file names")
    return fmt


def _refuse_existing(target: Path) -> None:
    if target.exists():
        raise ConflictError(f"{target} already exists", hint="choose another file name, or delete it first")


def _build_then_move(datastore: Datastore, target: Path, build: Callable[[Path], None]) -> None:
    """Make a disk in a private staging folder (cleared if we die), then move its files into place.

    A VMDK's extent files move first and its descriptor last, so the disk appears whole or not at all.
    """
    work = datastore.staging_dir(f"disk-{target.name}")
    moved: list[Path] = []
    try:
        build(work / target.name)
        for extra in sorted(work.iterdir()):
            if extra.name != target.name:
                os.replace(extra, target.parent / extra.name)
                moved.append(target.parent / extra.name)
        os.replace(work / target.name, target)
    except OSError as exc:  # its folder is missing, read-only or immutable: no part of the disk stays there
        for path in moved:
            path.unlink(missing_ok=True)
        raise host_refused(f"write the disk {target}", exc) from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
