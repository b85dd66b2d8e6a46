"""The datastore: one folder that holds the catalog and every VM's files.

Layout::

    <root>/.minivisor/catalog.sqlite   the catalog
    <root>/.minivisor/trash/           VM folders being deleted (crash recovery)
    <root>/<vm>/<vm>.vmx               one folder per VM: specfile, disks, nvram, logs

The datastore owns the path policy (:class:`Scope`). A VM uses only files in
its own folder, which is a top-level folder of the datastore holding exactly
one registered VM, and files in host folders the user allowed with
``minivisor datastore allow-path``. Never the datastore's own metadata
(``.minivisor/``), never the files minivisor keeps in the VM's folder
(specfile, snapshot tree, journal, locks, logs), never another VM's folder,
never a device node, a hard-linked file or a name QEMU would parse as a
protocol. One exception: a linked clone's backing layers are its source's
frozen snapshot files, which only the clone's backing chain may name (QEMU
opens them read-only). Every name is resolved after symlinks and ``..``.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from ..records import Record
from .catalog import Catalog, VmEntry
from .layout import VM_FILES, VM_NAME, check_vm_name
from ..dirs import default_datastore
from ..images.layers import ImageLayer, check_file_name, format_for, layer_files, resolve_chain
from ..errors import ConflictError, DiskError, HostError, PathError, SpecError, host_refused
from ..realpaths import real_path
from ..text import excerpt

__all__ = ["Datastore", "Scope", "check_vm_name", "is_vm_metadata"]

META = ".minivisor"
PRIVATE_DIR = 0o700
# What minivisor writes into a VM folder for itself (layout.VM_FILES; and by suffix: the specfile, snapshot
# tree and memory states, locks, partial and temporary files): no device and no disk may be one of them.
VM_FILE_SUFFIXES = (".vmx", ".vmsd", ".vmsn", ".vmxf", ".lck", ".part", ".tmp")
CLONE_DEPTH = 16  # linked clones of linked clones...: deeper is refused as a loop


class Datastore:
    """An opened datastore folder."""

    def __init__(self, root: Path) -> None:
        self.root = root.absolute()
        self.meta = self.root / META
        try:
            self.meta.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        except OSError as exc:  # the root (or a folder above it) is a file, or may not be written
            raise PathError(f"cannot use {self.root} as a datastore: {exc.strerror} ({exc.filename})",
                            hint="name a folder (or a path that can become one) with --datastore") from exc
        self.catalog = Catalog(self.meta / "catalog.sqlite")
        self._real_root = os.path.realpath(self.root)
        self._recover_trash()
        self._recover_publishing()
        self._clear_stale_staging()

    @classmethod
    def open(cls, root: Path | str | None = None) -> Datastore:
        """Open (creating if needed) the datastore at ``root`` or the default."""
        return cls(Path(root) if root is not None else default_datastore())

    # -- layout ------------------------------------------------------------
    def vm_dir(self, name: str) -> Path:
        return self.root / check_vm_name(name)

    def check_new_name(self, name: str) -> None:
        """Refuse a name a new VM cannot take: invalid, in the catalog, or a folder already there."""
        check_vm_name(name)
        if self.catalog.find(name) or self.vm_dir(name).exists():
            raise ConflictError(f"a VM or folder named {name!r} already exists in the datastore",
                                hint="choose another name")

    def vmx_path(self, entry: VmEntry) -> Path:
        return self.root / entry.vmx

    def relative(self, path: Path) -> str:
        """A path inside the datastore as stored in the catalog."""
        return os.path.relpath(os.path.realpath(path), self._real_root)

    def staging_dir(self, name: str) -> Path:
        """A private folder where a new VM is assembled before it appears."""
        path = self.meta / "staging" / f"{name}.{os.getpid()}"
        if path.exists():
            _rmtree(path)
        path.parent.mkdir(mode=PRIVATE_DIR, exist_ok=True)
        path.mkdir(mode=PRIVATE_DIR)  # it becomes the VM's folder: owner only
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
                self.move_in(staging, name)
        except BaseException:
            if not staging.exists():  # moved, then the commit failed (a full datastore): move it back
                self.vm_dir(name).rename(staging)
            raise
        finally:
            marker.unlink(missing_ok=True)

    def move_in(self, staging: Path | str, name: str) -> None:
        """Rename an assembled folder to VM ``name``'s; a datastore folder that may not be written (read-only,
        immutable) is one HostError, and nothing has moved."""
        try:
            os.rename(staging, self.vm_dir(name))
        except OSError as exc:
            raise host_refused(f"move the folder of VM {name!r} into {self.root}", exc) from exc

    # -- path policy -------------------------------------------------------
    def vm_scope(self, entry: VmEntry, _depth: int = 0) -> Scope:
        """Where a registered VM's files may be; refuses a VM whose folder is not its own."""
        folder = self._own_folder(entry.vmx, entry.uuid, entry.name)
        return self._scope(folder, shared=self._clone_layers(entry, _depth))

    def new_vm_scope(self, vmx: Path) -> Scope:
        """Where the files of a specfile about to be registered may be (``vmx`` is a real path)."""
        return self._scope(self._own_folder(os.path.relpath(vmx, self._real_root), None, vmx.name))

    def folder_scope(self, folder: Path | str) -> Scope:
        """The rules for the files of a folder a user named: its VM's, a flat datastore root, or allowed folders."""
        real = os.path.realpath(folder)
        if not _inside(real, self._real_root):
            return self._scope(None)
        if real == self._real_root:
            return self._scope(real, flat=True)
        area = os.path.relpath(real, self._real_root).split(os.sep)[0]
        if area == META:
            raise PathError(f"{real} is inside the datastore's own metadata ({self.meta})",
                            hint="name a file in a VM's folder")
        entries = self.catalog.in_folder(area)
        return self.vm_scope(entries[0]) if entries else self._scope(os.path.join(self._real_root, area))

    def import_scope(self, folder: Path) -> Scope:
        """Where the files of a VM folder being imported may be: inside that folder, nowhere else."""
        return Scope(self._real_root, os.path.realpath(folder), allowed=(), importing=True)

    def resolve(self, base_dir: Path, file_name: str, *, what: str = "file") -> Path:
        """A path a user gave (relative to ``base_dir``), under the rules of the folder it lands in."""
        _check_name(file_name, what)
        full = os.path.realpath(base_dir / file_name)
        return self.folder_scope(os.path.dirname(full)).path(base_dir, file_name, what)

    def image_chain(self, path: Path | str, what: str) -> tuple[ImageLayer, ...]:
        """The checked chain of a host image to copy in (a boot disk): it must be in an allowed folder."""
        scope = self._scope(None)
        return scope.disk_chain(Path.cwd(), str(path), what)

    def allowed(self) -> tuple[str, ...]:
        """Real paths of the host folders the user allowed."""
        return tuple(os.path.realpath(p) for p in self.catalog.allowed_paths())

    def contains(self, real_path: str) -> bool:
        """True if a resolved path is inside the datastore."""
        return _inside(real_path, self._real_root)

    def _scope(self, home: str | None, *, flat: bool = False, shared: frozenset[str] = frozenset()) -> Scope:
        return Scope(self._real_root, home, allowed=self.allowed(), flat=flat, shared=shared)

    def _own_folder(self, vmx: str, uuid: str | None, name: str) -> str:
        """The real path of a VM's folder: a top-level, non-symlinked folder holding no other registered VM."""
        parts = vmx.split("/")
        if len(parts) != 2 or parts[0] in (META, "..", "."):
            raise PathError(f"the specfile of {name!r} ({vmx}) is not in its own folder at the top of the "
                            f"datastore {self.root}", hint=f"move it to {self.root}/<folder>/ and register it there")
        folder = os.path.join(self._real_root, parts[0])
        if os.path.realpath(folder) != folder:
            raise PathError(f"the folder of {name!r} ({self.root / parts[0]}) is a symlink to "
                            f"{os.path.realpath(folder)}", hint="move the VM's real folder into the datastore")
        others = [e.name for e in self.catalog.in_folder(parts[0]) if e.uuid != uuid]
        if others:
            raise ConflictError(f"{name!r} and the VM {others[0]!r} would share the folder {folder}, and so "
                                "each other's disks", hint="give each VM its own folder, then register it")
        return folder

    def _clone_layers(self, entry: VmEntry, depth: int) -> frozenset[str]:
        """Real paths of the source snapshot's layers a linked clone's disks sit on (empty if not linked)."""
        link = self.catalog.clone_source(entry.uuid)
        if link is None:
            return frozenset()
        if depth >= CLONE_DEPTH:
            raise ConflictError(f"the linked clones behind {entry.name!r} form a loop or are deeper than "
                                f"{CLONE_DEPTH}", hint="make a full clone: minivisor vm clone")
        from ..spec.vmsd import SnapshotTree, vmsd_path  # here: it parses specfiles, which reading the catalog never does

        source, uid = link
        scope = self.vm_scope(source, depth + 1)
        snap = SnapshotTree.load(vmsd_path(self.vmx_path(source))).snapshots.get(uid)
        folder = Path(scope.home or "")
        layers = set()
        for node, name in (snap.disks.items() if snap else ()):
            chain = scope.disk_chain(folder, name, f"{source.name}'s snapshot disk {node}")
            layers.update(os.path.realpath(path) for layer in chain for path in layer_files(layer))
        return frozenset(layers)

    # -- deletion, with crash recovery -----------------------------------
    def delete_vm(self, entry: VmEntry, folder: Path) -> HostError | None:
        """Remove a VM from the catalog and its folder from the datastore, as one step.

        The folder first moves to the trash under the VM's UUID: if we crash
        before the catalog row is gone, the next open moves it back; after, the
        next open empties the trash. Refused while linked clones sit on its snapshots.
        Returns None, or the error to raise once the deletion is announced: a file of the folder that could not be
        removed (immutable, say). The VM is deleted all the same; what is left waits in the trash.
        """
        if clones := self.catalog.clones_of(entry.uuid):
            raise ConflictError(f"cannot delete VM {entry.name!r}: linked clones depend on it "
                                f"({', '.join(c for c, _ in clones)})", hint="delete those clones first")
        bin_dir = self.meta / "trash"
        bin_dir.mkdir(exist_ok=True)
        trashed = bin_dir / entry.uuid
        if trashed.exists():
            raise ConflictError(f"a deletion of {entry.uuid} is already in progress", hint="retry in a moment")
        try:
            folder.rename(trashed)
        except OSError as exc:  # it (or the datastore's folder) is immutable or read-only: nothing was deleted
            raise host_refused(f"move the folder {folder} of VM {entry.name!r} out of the datastore to delete it",
                               exc) from exc
        try:
            with self.catalog.transaction() as db:
                self.catalog.remove(db, entry.name)
                self.catalog.remove_clone_link(db, entry.uuid)
        except BaseException:
            trashed.rename(folder)
            raise
        failures: list[str] = []
        _rmtree(trashed, onerror=lambda _, path, exc_info: failures.append(f"{path}: {exc_info[1].strerror}"))
        if not failures:
            return None
        return HostError(f"VM {entry.name!r} is deleted, but not every file of its folder could be removed: {failures[0]}",
                         hint=f"remove them by hand (chattr -i first if one is immutable, see lsattr): rm -rf {trashed}")

    def _recover_trash(self) -> None:
        """Finish or undo deletions interrupted by a crash."""
        left = _contents(self.meta / "trash")
        if not left:  # every open looks: reading the catalog is only for what there is to recover
            return
        entries = {e.uuid: e for e in self.catalog.list()}
        for trashed in left:
            entry = entries.get(trashed.name)
            home = (self.root / entry.vmx).parent if entry else None
            if home is not None and not home.exists():
                trashed.rename(home)
            else:
                _rmtree(trashed, ignore_errors=True)


    def _recover_publishing(self) -> None:
        """Undo a publish whose process died between moving the folder and committing."""
        left = _contents(self.meta / "publishing")
        if not left:
            return
        known = {e.uuid for e in self.catalog.list()}
        for marker in left:
            pid, _, name = marker.read_text().strip().partition(" ")
            if pid.isdigit() and os.path.exists(f"/proc/{pid}"):
                continue  # still publishing
            if marker.name not in known and VM_NAME.match(name) and (self.root / name).is_dir():
                _rmtree(self.root / name, ignore_errors=True)
            marker.unlink(missing_ok=True)

    def _clear_stale_staging(self) -> None:
        """Remove half-assembled VMs whose creating process is gone."""
        for folder in _contents(self.meta / "staging"):
            pid = folder.suffix.lstrip(".")
            if not (pid.isdigit() and os.path.exists(f"/proc/{pid}")):
                _rmtree(folder, ignore_errors=True)


def _rmtree(path: Path, **options: object) -> None:
    """shutil.rmtree, imported when first needed: opening a datastore (every command does) mostly removes nothing."""
    import shutil

    shutil.rmtree(path, **options)


def _contents(folder: Path) -> list[Path]:
    """What a folder of the datastore's own holds (nothing if it does not exist)."""
    try:
        return list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _is_windows_path(name: str) -> bool:
    return bool(re.match(r"^[A-Za-z]:[\\/]", name)) or name.startswith("\\\\")


def is_vm_metadata(name: str) -> bool:
    """True for the files minivisor keeps in a VM folder for itself (see VM_FILES)."""
    base = name.removesuffix(".1").removesuffix(".new")  # a rotated log, or the one replacing it (vmm/relay.py)
    return name.startswith(META) or base in VM_FILES or name.lower().endswith(VM_FILE_SUFFIXES)


def _check_name(name: str, what: str) -> None:
    """Refuse names that are no plain host path (before anything resolves them)."""
    if "\x00" in name or name.strip() == "":
        raise PathError(f"{what} name {name!r} is not a usable path", hint="name a file in the VM's folder")
    if _is_windows_path(name):
        raise PathError(f"{what} {name!r} is a Windows path",
                        hint="copy the file into the VM's folder and name it relatively")
    check_file_name(name, what)


def _kind(mode: int) -> str:
    """What a file that is neither an image nor a device is, for a refusal's line."""
    return "folder" if stat.S_ISDIR(mode) else "FIFO" if stat.S_ISFIFO(mode) else "socket"


def _inside(real_path: str, folder: str) -> bool:
    return real_path == folder or real_path.startswith(folder.rstrip("/") + "/")


class Scope(Record, frozen=True):
    """The path policy for one VM (or one folder): where the files it may open are.

    ``home``: the real path of its own folder (None: it has none, only allowed
    folders count); ``flat``: only the files directly in ``home`` (the
    datastore root); ``shared``: a linked clone's source layers, allowed as
    backing layers only; ``importing``: ``home`` is a VM folder being imported
    (outside the datastore).
    """

    root: str
    home: str | None
    allowed: tuple[str, ...]
    flat: bool = False
    shared: frozenset[str] = frozenset()
    importing: bool = False

    def path(self, base: Path, name: str, what: str) -> Path:
        """Resolve ``name`` (relative to ``base``) and apply the rules of place; the file need not exist."""
        return Path(self._place(base, name, what, backing=False))

    def outside(self, base: Path, name: str, what: str) -> bool:
        """True if ``name`` resolves outside the datastore and every folder the user allowed: nothing the VM
        may open (a removable drive's image there stays unconnected, unopened)."""
        _check_name(name, what)
        real = real_path(base / name)
        return not (_inside(real, self.root) or self._is_home(real) or any(_inside(real, f) for f in self.allowed))

    def image(self, base: Path, name: str, what: str) -> Path:
        """An existing image file (disk, CD-ROM, floppy) ``name`` names, checked."""
        return self._existing(self._place(base, name, what, backing=False), name, what)

    def output(self, base: Path, name: str, what: str, *, socket: bool) -> Path:
        """A file QEMU creates or truncates (a serial port's file) or a UNIX socket it binds or connects to."""
        real = self._place(base, name, what, backing=False)
        try:
            mode = os.stat(real).st_mode
        except FileNotFoundError:
            return Path(real)
        if _inside(real, self.root) or self._is_home(real):
            expected = stat.S_ISSOCK(mode) if socket else stat.S_ISREG(mode)
            if not expected:
                raise PathError(f"{what} {name!r} names {real}, which is not a {'socket' if socket else 'file'}",
                                hint="name a new file in the VM's folder")
            self._single_link(real, name, what)
        return Path(real)

    def state_file(self, base: Path, name: str, what: str) -> Path:
        """A file minivisor keeps for the VM (a snapshot's memory state): in the VM's own folder, nowhere else."""
        _check_name(name, what)
        real = real_path(base / name)
        if not self._is_home(real) or _inside(real, os.path.join(self.root, META)):
            raise PathError(f"{what} {name!r} resolves to {real}, {self._outside_home()}",
                            hint="a VM's snapshot files stay in its own folder: restore them there")
        return Path(real)

    def disk_chain(self, base: Path, name: str, what: str) -> tuple[ImageLayer, ...]:
        """The checked chain of the disk ``name`` (relative to ``base``): the image and every layer below it."""
        return self.chain(self.image(base, name, what))

    def chain(self, top: Path) -> tuple[ImageLayer, ...]:
        """A checked disk's layers, top first: every backing file and extent under these rules."""
        what = f"a backing file or extent in the chain of {top.name}"
        return resolve_chain(top, format_for(top), lambda base, name: self._backing(base, name, what))

    # -- the rules -------------------------------------------------------
    def _backing(self, base: Path, name: str, what: str) -> Path:
        return self._existing(self._place(base, name, what, backing=True), name, what)

    def _place(self, base: Path, name: str, what: str, *, backing: bool) -> str:
        _check_name(name, what)
        real = real_path(base / name)  # an absolute name replaces base
        if _inside(real, os.path.join(self.root, META)):
            raise PathError(f"{what} {name!r} resolves to {real}, inside the datastore's own metadata",
                            hint="name a file in the VM's folder")
        if self._is_home(real):
            if is_vm_metadata(os.path.basename(real)):
                raise PathError(f"{what} {name!r} names {os.path.basename(real)}, a file minivisor keeps for the "
                                "VM itself", hint="name another file")
            return real
        if backing and real in self.shared:
            return real
        if _inside(real, self.root):
            raise PathError(f"{what} {name!r} resolves to {real}, {self._outside_home()}",
                            hint="a VM uses only files in its own folder: copy the file in "
                                 "(minivisor disk convert SRC DST)")
        if any(_inside(real, folder) for folder in self.allowed):
            return real
        if self.importing:
            raise PathError(f"{what} {name!r} resolves to {real}, outside the VM folder {self.home}",
                            hint="only files inside the VM's folder are imported")
        raise PathError(f"{what} {name!r} resolves to {real}, outside the datastore {self.root} and the "
                        "folders allowed with allow-path", hint="allow that folder first: minivisor datastore "
                        f"allow-path {os.path.dirname(real)} (from Python: hv.allow_path)")

    def _is_home(self, real: str) -> bool:
        if self.home is None:
            return False
        return os.path.dirname(real) == self.home if self.flat else _inside(real, self.home) and real != self.home

    def _outside_home(self) -> str:
        if self.home is None:
            return "inside the datastore, where images to copy in may not be (clone a VM instead: minivisor vm clone)"
        return f"outside {'the datastore root' if self.flat else 'the VM folder ' + self.home}"

    def _existing(self, real: str, name: str, what: str) -> Path:
        """A regular file with one name; in an allowed host folder, whatever the user allowed."""
        try:
            mode = os.stat(real).st_mode
        except FileNotFoundError:
            raise DiskError(f"{what} {name!r} names {real}, which does not exist",
                            hint="fix the file name, or restore the file") from None
        if _inside(real, self.root) or self._is_home(real):
            if not stat.S_ISREG(mode):
                raise PathError(f"{what} {name!r} names {real}, which is not a regular file",
                                hint="name an image file; devices are allowed only in allowed host folders")
            self._single_link(real, name, what)
        elif not (stat.S_ISREG(mode) or stat.S_ISBLK(mode) or stat.S_ISCHR(mode)):  # a folder, FIFO or socket
            raise PathError(f"{what} {name!r} names {real}, which is a {_kind(mode)}",
                            hint="name an image file or a block device")
        return Path(real)

    def _single_link(self, real: str, name: str, what: str) -> None:
        """A second hard link could be another VM's file under a name in this folder."""
        links = os.stat(real).st_nlink
        if links > 1:
            raise PathError(f"{what} {name!r} names {real}, which has {links} hard links (another folder may "
                            "hold the same file)", hint=f"give it a copy of its own: cp --sparse=always "
                                                        f"{real} NEW && mv NEW {real}")
