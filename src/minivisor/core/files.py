"""The datastore browser: the folders and files of a datastore, and uploads of images into it.

Every path is relative to the datastore's root and must stay inside it once
resolved (no ``..``, no symbolic link out). Names that start with a dot are
minivisor's own (``.minivisor`` holds the catalog and the token): never listed,
never written. An upload goes into a folder at the top of the datastore
(``iso``, ``images``..., or a VM's own folder for a CD-ROM image, since a VM
opens only files in its folder), under a name that says its format (formats
come from names, never from contents), next to no file of the same name; it is
written in a staging folder and appears whole or not at all.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..datastore.store import Datastore
from ..errors import ConflictError, NoSpaceError, NotFoundError, PathError

__all__ = ["list_folder", "upload", "UPLOAD_SUFFIXES"]

UPLOAD_SUFFIXES = (".iso", ".img", ".vmdk", ".qcow2")
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
    if datastore.catalog.find(folder) is not None and not name.lower().endswith(".iso"):
        raise PathError(f"{folder!r} is a VM's folder: only a CD-ROM image (.iso) may be uploaded into it",
                        hint="upload disk images into a folder of their own, e.g. images")
    target_dir = _inside(datastore, folder)
    target_dir.mkdir(exist_ok=True)
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


def _inside(datastore: Datastore, relative: str) -> Path:
    """``relative`` resolved inside the datastore, or PathError (it escapes it, or names a hidden file)."""
    parts = [p for p in Path(relative).parts if p not in ("", ".")]
    if Path(relative).is_absolute() or "\x00" in relative or any(p == ".." or p.startswith(".") for p in parts):
        raise PathError(f"{relative[:100]!r} is not a folder or file of the datastore",
                        hint="name it relative to the datastore's root, without .. or hidden names")
    path = datastore.root.joinpath(*parts)
    if not datastore.contains(os.path.realpath(path)):
        raise PathError(f"{relative[:100]!r} leads out of the datastore", hint="name a path inside it")
    return path
