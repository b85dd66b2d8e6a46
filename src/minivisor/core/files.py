"""The datastore browser: the folders and files of a datastore, and uploads of images into it.

Every path is relative to the datastore's root and must stay inside it once
resolved (no ``..``, no symbolic link out). Names that start with a dot are
minivisor's own (``.minivisor`` holds the catalog and the token): never listed,
never written. An upload goes into a folder at the top of the datastore
(``iso``, ``images``..., or a VM's own folder for a CD-ROM image, since a VM
opens only files in its folder), under a name that says its format (formats
come from names, never from contents), next to no file of the same name; it is
written in a staging folder and appears whole or not at all.

A file is deleted only if it is a plain file (not a folder, not a link) that no
registered VM uses: not its specfile or snapshot tree, nothing its specfile names
(a disk's whole chain, a CD-ROM or floppy image, its UEFI variables), and in a VM's
own folder nothing but a removable medium (``.iso``, ``.img``, ``.flp``) it does
not name (its disks, snapshots and state live there: they go with the VM).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..datastore.store import Datastore
from ..errors import ConflictError, HvError, NoSpaceError, NotFoundError, PathError
from ..images.layers import layer_files
from ..spec.vmsd import vmsd_path
from .context import VmContext, Vms

__all__ = ["list_folder", "upload", "delete", "UPLOAD_SUFFIXES", "MEDIA_SUFFIXES"]

UPLOAD_SUFFIXES = (".iso", ".img", ".vmdk", ".qcow2")
MEDIA_SUFFIXES = (".iso", ".img", ".flp")  # what may be deleted from a VM's folder, if the VM does not name it
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,126}$")


def list_folder(datastore: Datastore, folder: str = "") -> dict[str, Any]:
    """The folders and files in ``folder`` (relative to the datastore; "" is its root), folders first."""
    path = _inside(datastore, folder)
    if not path.is_dir():
        raise NotFoundError(f"the datastore has no folder {folder[:100]!r}", hint="list its root first")
    entries = []
    with os.scandir(path) as found:
        for entry in found:
            if entry.name.startswith("."):
                continue
            stat = entry.stat(follow_symlinks=False)
            kind = "folder" if entry.is_dir(follow_symlinks=False) else "file" if entry.is_file(
                follow_symlinks=False) else "other"
            entries.append({"name": entry.name, "kind": kind, "size": stat.st_size if kind == "file" else None,
                            "allocated": stat.st_blocks * 512 if kind == "file" else None,
                            "modified": stat.st_mtime})
    entries.sort(key=lambda e: (e["kind"] != "folder", e["name"].lower()))
    usage = shutil.disk_usage(datastore.root)
    return {"folder": datastore.relative(path) if path != datastore.root else "", "path": str(path), "entries": entries,
            "capacity": usage.total, "free": usage.free}


def upload(datastore: Datastore, folder: str, name: str, chunks: Iterable[bytes]) -> dict[str, Any]:
    """Write ``chunks`` as the new file ``folder/name``; the file's entry (as listed)."""
    if not _NAME.match(folder) or "/" in folder:
        raise PathError(f"upload folder {folder[:60]!r} is not a plain folder name at the top of the datastore",
                        hint="e.g. iso or images")
    if not _NAME.match(name) or not name.lower().endswith(UPLOAD_SUFFIXES):
        raise PathError(f"{name[:60]!r} is not a name an upload may take",
                        hint=f"letters, digits, . _ + -, ending in {', '.join(UPLOAD_SUFFIXES)}")
    target_dir = _inside(datastore, folder)
    # the folder as resolved: a link in the datastore to a VM's folder leads into that VM's folder
    real_dir = os.path.relpath(os.path.realpath(target_dir), os.path.realpath(datastore.root))
    is_vm_folder = datastore.catalog.find(folder) is not None or bool(datastore.catalog.in_folder(real_dir))
    if is_vm_folder and not name.lower().endswith(".iso"):
        raise PathError(f"{folder!r} is a VM's folder: only a CD-ROM image (.iso) may be uploaded into it",
                        hint="upload disk images into a folder of their own, e.g. images")
    try:
        target_dir.mkdir(exist_ok=True)
    except FileExistsError:  # a file, a FIFO or a link to nothing has the name: it was a 500
        raise PathError(f"{folder!r} is a file of the datastore, not a folder",
                        hint="upload into a folder, e.g. iso or images") from None
    target = _inside(datastore, f"{folder}/{name}")
    if target.exists():
        raise ConflictError(f"{folder}/{name} already exists in the datastore",
                            hint="choose another name, or delete that file first")
    work = datastore.staging_dir(f"upload-{name}")
    try:
        with open(work / name, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(work / name, 0o644)
        if target.exists():  # arrived meanwhile
            raise ConflictError(f"{folder}/{name} already exists in the datastore", hint="choose another name")
        os.replace(work / name, target)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise NoSpaceError(f"the datastore is full: {folder}/{name} was not uploaded",
                               hint="free some space and upload it again") from None
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return next(e for e in list_folder(datastore, folder)["entries"] if e["name"] == name)


def delete(vms: Vms, folder: str, name: str) -> dict[str, Any]:
    """Delete the plain file ``folder/name`` of the datastore, unless a registered VM uses it (ConflictError: which
    VM, and how). The folder is opened once, resolved, and the file removed relative to it: a link swapped in
    meanwhile cannot lead the removal elsewhere."""
    if not name or "/" in name or "\x00" in name or name.startswith(".") or len(name) > 255:
        raise PathError(f"{name[:60]!r} is not the name of a file in a folder",
                        hint="give the folder and the file's own name, as the datastore's listing shows them")
    real_dir = os.path.realpath(_inside(vms.datastore, folder))
    shown = f"{folder}/{name}" if folder else name
    try:
        handle = os.open(real_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:  # gone, not a folder, or a link put in its place since it was resolved
        raise NotFoundError(f"the datastore has no folder {folder[:100]!r}", hint="list its root first") from None
    try:
        if os.readlink(f"/proc/self/fd/{handle}") != real_dir:  # a folder on the way became a link meanwhile
            raise PathError(f"{folder[:100]!r} changed while it was opened", hint="list it again")
        try:
            info = os.stat(name, dir_fd=handle, follow_symlinks=False)
        except FileNotFoundError:
            raise NotFoundError(f"the datastore has no file {shown[:100]!r}", hint="list its folder again") from None
        if not stat.S_ISREG(info.st_mode):
            raise PathError(f"{shown[:100]!r} is not a plain file (a folder or a link): only files are deleted here",
                            hint="a VM's folder goes with the VM (delete the VM); other folders and links stay as they are")
        _refuse_used(vms, os.path.join(real_dir, name), shown)
        os.unlink(name, dir_fd=handle)
    finally:
        os.close(handle)
    return {"folder": folder, "name": name, "deleted": True}


def _refuse_used(vms: Vms, path: str, shown: str) -> None:
    """ConflictError naming the VM that uses the file at ``path`` (real) and how; nothing if none does."""
    for entry in vms.datastore.catalog.list():
        ctx = vms.context(entry.name)
        vm_dir = os.path.realpath(ctx.vm_dir)
        if os.path.dirname(path) == vm_dir and not path.lower().endswith(MEDIA_SUFFIXES):
            raise ConflictError(f"{shown[:100]!r} is in the folder of VM {entry.name!r}, which keeps its disks, "
                                "snapshots and state there", hint="delete the VM to delete its files")
        if path in _files_used(ctx):
            raise ConflictError(f"VM {entry.name!r} uses {shown[:100]!r}",
                                hint="take it out of the VM first (its hardware or specfile), then delete it")


def _files_used(ctx: VmContext) -> set[str]:
    """The real paths of the files a VM's specfile and snapshot tree name (disk chains layer by layer)."""
    used = {os.path.realpath(ctx.vmx), os.path.realpath(vmsd_path(ctx.vmx))}
    try:
        spec = ctx.read_spec()
    except HvError:  # unreadable: its own folder is protected anyway, and nothing outside it can be known
        return used
    named = [d.file_name for d in spec.disks if d.file_name] + [f.file_name for f in spec.floppies if f.file_name]
    used |= {os.path.realpath(ctx.vm_dir / file_name) for file_name in named + ([spec.nvram] if spec.nvram else [])}
    for disk in spec.disks:
        if disk.kind == "disk" and disk.file_name:
            try:
                chain = ctx.scope.disk_chain(ctx.vm_dir, disk.file_name, disk.node)
            except HvError:  # missing or refused: power-on would not open it either
                continue
            used |= {os.path.realpath(f) for layer in chain for f in layer_files(layer)}
    return used


def _inside(datastore: Datastore, relative: str) -> Path:
    """``relative`` resolved inside the datastore, or PathError (it escapes it, or names a hidden file)."""
    parts = [p for p in Path(relative).parts if p not in ("", ".")]
    if Path(relative).is_absolute() or "\x00" in relative or any(p == ".." or p.startswith(".") for p in parts):
        raise PathError(f"{relative[:100]!r} is not a folder or file of the datastore",
                        hint="name it relative to the datastore's root, without .. or hidden names")
    path = datastore.root.joinpath(*parts)
    real = os.path.realpath(path)
    if not datastore.contains(real):
        raise PathError(f"{relative[:100]!r} leads out of the datastore", hint="name a path inside it")
    inner = os.path.relpath(real, os.path.realpath(datastore.root))
    if inner != "." and any(part.startswith(".") for part in Path(inner).parts):  # a link to .minivisor
        raise PathError(f"{relative[:100]!r} leads into a hidden folder of the datastore", hint="name a path inside it")
    return path
