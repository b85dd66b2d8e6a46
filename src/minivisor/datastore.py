"""The datastore: one folder that holds the catalog and every VM's files.

Layout::

    <root>/.minivisor/catalog.sqlite   the catalog
    <root>/.minivisor/trash/           VM folders being deleted (crash recovery)
    <root>/<vm>/<vm>.vmx               one folder per VM: specfile, disks, nvram, logs

The datastore owns the path policy: every file a specfile names is resolved
relative to the specfile's folder and must stay inside the datastore (after
following symlinks) unless the user allowed that host folder.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from .catalog import Catalog, VmEntry
from .errors import ConflictError, PathError, SpecError
from .text import excerpt

__all__ = ["Datastore", "default_root", "check_vm_name"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")  # \Z: "$" would let a final newline in


def default_root() -> Path:
    """``MINIVISOR_DATASTORE`` or ``./datastore``."""
    return Path(os.environ.get("MINIVISOR_DATASTORE") or "datastore")


def check_vm_name(name: str) -> str:
    """Return the name if it can name a VM (and its folder), else raise SpecError."""
    if not _NAME.match(name) or name.endswith((".tmp", ".vmx")):
        raise SpecError(f"{excerpt(name)} is not a valid VM name",
                        hint="use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


class Datastore:
    """An opened datastore folder."""

    def __init__(self, root: Path) -> None:
        self.root = root.absolute()
        self.meta = self.root / ".minivisor"
        self.meta.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.catalog = Catalog(self.meta / "catalog.sqlite")
        self._real_root = os.path.realpath(self.root)
        self._recover_trash()
        self._recover_publishing()
        self._clear_stale_staging()

    @classmethod
    def open(cls, root: Path | str | None = None) -> Datastore:
        """Open (creating if needed) the datastore at ``root`` or the default."""
        return cls(Path(root) if root is not None else default_root())

    # -- layout ------------------------------------------------------------
    def vm_dir(self, name: str) -> Path:
        return self.root / check_vm_name(name)

    def vmx_path(self, entry: VmEntry) -> Path:
        return self.root / entry.vmx

    def relative(self, path: Path) -> str:
        """A path inside the datastore as stored in the catalog."""
        return os.path.relpath(os.path.realpath(path), self._real_root)

    def staging_dir(self, name: str) -> Path:
        """A private folder where a new VM is assembled before it appears."""
        path = self.meta / "staging" / f"{name}.{os.getpid()}"
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    def publish(self, staging: Path, name: str, uuid: str) -> None:
        """Move an assembled VM folder into place and add it to the catalog, as one step.

        The rename happens inside the catalog transaction; a marker names the
        folder meanwhile, so if this process dies between the rename and the
        commit, the next open removes the folder: the VM never existed.
        """
        markers = self.meta / "publishing"
        markers.mkdir(mode=0o700, exist_ok=True)
        marker = markers / uuid
        marker.write_text(f"{os.getpid()} {name}\n")
        try:
            with self.catalog.transaction() as db:
                self.catalog.add(db, name, uuid, f"{name}/{name}.vmx")
                staging.rename(self.vm_dir(name))
        finally:
            marker.unlink(missing_ok=True)

    # -- path policy -------------------------------------------------------
    def resolve(self, base_dir: Path, file_name: str, *, what: str = "file") -> Path:
        """Resolve a file name from a specfile (relative to ``base_dir``).

        Raises PathError when the path, after symlinks, leaves the datastore
        and no allowed host folder contains it.
        """
        if "\x00" in file_name or file_name.strip() == "":
            raise PathError(f"{what} name {file_name!r} is not a usable path", hint="name a file in the VM's folder")
        if _is_windows_path(file_name):
            raise PathError(f"{what} {file_name!r} is a Windows path",
                            hint="copy the file into the VM's folder and name it relatively")
        full = base_dir / file_name  # an absolute file_name replaces base_dir
        real = os.path.realpath(full)
        if self.contains(real):
            return Path(real)
        raise PathError(f"{what} {file_name!r} resolves to {real}, outside the datastore {self.root}",
                        hint="move it into the VM's folder, or allow that host folder with: "
                             f"minivisor datastore allow-path {os.path.dirname(real)}")

    def contains(self, real_path: str) -> bool:
        """True if a resolved path is inside the datastore or an allowed folder."""
        roots = [self._real_root, *(os.path.realpath(p) for p in self.catalog.allowed_paths())]
        return any(real_path == root or real_path.startswith(root.rstrip("/") + "/") for root in roots)

    # -- deletion with crash recovery ------------------------------------
    def trash(self, folder: Path, uuid: str) -> Path:
        """Move a VM folder out of sight; deleted for good by :meth:`empty_trash`.

        The trash entry is named by the VM's UUID: if we crash before the
        catalog row is gone, recovery moves the folder back.
        """
        bin_dir = self.meta / "trash"
        bin_dir.mkdir(exist_ok=True)
        target = bin_dir / uuid
        if target.exists():
            raise ConflictError(f"a deletion of {uuid} is already in progress", hint="retry in a moment")
        folder.rename(target)
        return target

    def restore(self, trashed: Path, folder: Path) -> None:
        trashed.rename(folder)

    def empty_trash(self, trashed: Path) -> None:
        shutil.rmtree(trashed, ignore_errors=True)

    def _recover_trash(self) -> None:
        """Finish or undo deletions interrupted by a crash."""
        bin_dir = self.meta / "trash"
        if not bin_dir.is_dir():
            return
        entries = {e.uuid: e for e in self.catalog.list()}
        for trashed in bin_dir.iterdir():
            entry = entries.get(trashed.name)
            home = (self.root / entry.vmx).parent if entry else None
            if home is not None and not home.exists():
                trashed.rename(home)
            else:
                shutil.rmtree(trashed, ignore_errors=True)


    def _recover_publishing(self) -> None:
        """Undo a publish whose process died between moving the folder and committing."""
        markers = self.meta / "publishing"
        if not markers.is_dir():
            return
        known = {e.uuid for e in self.catalog.list()}
        for marker in markers.iterdir():
            pid, _, name = marker.read_text().strip().partition(" ")
            if pid.isdigit() and os.path.exists(f"/proc/{pid}"):
                continue  # still publishing
            if marker.name not in known and _NAME.match(name) and (self.root / name).is_dir():
                shutil.rmtree(self.root / name, ignore_errors=True)
            marker.unlink(missing_ok=True)

    def _clear_stale_staging(self) -> None:
        """Remove half-assembled VMs whose creating process is gone."""
        staging = self.meta / "staging"
        if not staging.is_dir():
            return
        for folder in staging.iterdir():
            pid = folder.suffix.lstrip(".")
            if not (pid.isdigit() and os.path.exists(f"/proc/{pid}")):
                shutil.rmtree(folder, ignore_errors=True)


def _is_windows_path(name: str) -> bool:
    return bool(re.match(r"^[A-Za-z]:[\\/]", name)) or name.startswith("\\\\")
