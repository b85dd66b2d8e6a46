"""Disk image files as qemu-img makes and changes them: create, convert, grow, merge, check.

Every call names each image's format and hands a checked chain over as one
explicit node description (:func:`image_spec`), so qemu-img follows no name
from a header and probes no format. A copy or check runs confined to the files
that were checked (:mod:`minivisor.images.confine`): nothing swapped in meanwhile is
read. qemu-img runs with umask 077: what it creates is owner-only.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

from ..errors import DiskError, HostError
from ..units import human_size
from .confine import confined_argv
from .layers import ImageLayer, Pin, format_for, read_layer

__all__ = ["image_spec", "chain_node", "create_disk", "set_backing", "commit_layer", "rebase_disk",
           "resize_disk", "check_resize", "check_disk", "convert_disk", "copy_sparse",
           "internal_snapshots", "internal_snapshot", "copy_qcow2"]

PRIVATE_UMASK = 0o077
# Free bytes below which a failed qemu-img write is put down to a full file system: qemu-img does not
# always say ENOSPC (a full tmpfs gives "Invalid argument", or an assertion failure in its error path).
FULL_MARGIN = 16 * 1024 * 1024


def image_spec(chain: tuple[ImageLayer, ...] | list[ImageLayer]) -> str:
    """A checked chain as one QEMU node description (``json:``) for qemu-img.

    Every layer's driver and file are spelled out, each layer's ``backing`` is
    the next one and the bottom's is ``null``: qemu-img follows no name from a
    header and probes no format.
    """
    return "json:" + json.dumps(chain_node(chain), separators=(",", ":"))


def chain_node(chain: tuple[ImageLayer, ...] | list[ImageLayer]) -> dict:
    """A checked chain as one QEMU node description (``--blockdev``'s JSON): every layer's driver and file spelled
    out, the bottom's backing ``null``."""
    node: dict | None = None
    for layer in reversed(chain):
        spec: dict = {"driver": layer.format, "file": {"driver": "file", "filename": os.path.abspath(layer.path)}}
        if layer.format != "raw":
            spec["backing"] = node
        node = spec
    assert node is not None, "a chain has a layer"
    return node


def _checked_files(chain: tuple[ImageLayer, ...] | list[ImageLayer]) -> list[Pin | str]:
    """Every file of the chain qemu-img may open: as checked (pinned), or by name for a layer minivisor made."""
    return [pin for layer in chain for pin in (layer.pinned or (str(layer.path),))]


def _qemu_img(*args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=True,
                              umask=PRIVATE_UMASK)
    except FileNotFoundError as exc:
        raise HostError("qemu-img not found", hint="apt-get install qemu-utils") from exc
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or exc.stdout or "").strip().splitlines()
        raise DiskError(f"qemu-img {args[0]} failed: {detail[-1] if detail else exc.returncode}",
                        hint="see the message above; check free space and the file's format") from exc


def create_disk(path: Path, size: int, fmt: str | None = None, *, thick: bool = False) -> None:
    """Create an empty disk: thin (sparse, grows on write) unless ``thick`` (fully allocated)."""
    fmt = fmt or format_for(path)
    options = {"qcow2": "preallocation=falloc" if thick else "lazy_refcounts=on",
               "raw": "preallocation=falloc" if thick else "preallocation=off",
               "vmdk": "subformat=monolithicFlat" if thick else "subformat=monolithicSparse"}[fmt]
    _qemu_img("create", "-q", "-f", fmt, "-o", options, str(path), str(size))
    if thick and fmt == "vmdk":  # qemu-img does not preallocate flat extents: do it here
        for extent in read_layer(path, "vmdk").extent_files:
            with open(path.parent / extent, "r+b") as handle:
                os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size or size)


def set_backing(path: Path, backing_name: str, backing_format: str) -> None:
    """Rewrite a qcow2 header's backing file name and format (``rebase -u``: nothing is opened)."""
    _qemu_img("rebase", "-q", "-u", "-f", "qcow2", "-F", backing_format, "-b", backing_name, str(path))


def commit_layer(chain: tuple[ImageLayer, ...]) -> None:
    """Copy the top layer's data into its backing file (``commit -d``: the top is kept), chain given explicitly."""
    _qemu_img("commit", "-q", "-d", image_spec(chain))


def rebase_disk(chain: tuple[ImageLayer, ...], backing: tuple[ImageLayer, ...]) -> None:
    """Make ``backing`` (a chain, or empty for none) the qcow2 top's backing without changing what the disk reads.

    qemu-img's safe rebase opens the old chain and the new one by the names in
    their headers (it cannot take them as node descriptions): both chains must
    have been checked by the caller, and each header records its backing format.
    """
    top = chain[0].path
    target = ["-b", os.path.relpath(backing[0].path, top.parent), "-F", backing[0].format] if backing else ["-b", ""]
    _qemu_img("rebase", "-q", "-f", "qcow2", *target, str(top))


def resize_disk(layer: ImageLayer, size: int) -> None:
    """Grow a disk (shrinking would cut off the guest's data and is refused)."""
    check_resize(layer, size)
    if size == layer.virtual_size:
        return
    _qemu_img("resize", "-q", image_spec((layer,)), str(size))  # its backing is not needed: null


def check_resize(layer: ImageLayer, size: int) -> None:
    """Refuse a shrink, and formats QEMU cannot grow."""
    if size < layer.virtual_size:
        raise DiskError(f"{layer.path.name} is {human_size(layer.virtual_size)}; shrinking it to "
                        f"{human_size(size)} would cut off data", hint="give a size at least as large")
    if layer.format == "vmdk":
        raise DiskError(f"{layer.path.name} is a VMDK, which QEMU cannot resize",
                        hint=f"convert it to qcow2 first: minivisor disk convert {layer.path} --format qcow2")


def check_disk(layer: ImageLayer) -> tuple[int, str]:
    """``qemu-img check``: (exit code, output). 0 clean, 3 leaked clusters only, 2 corrupt."""
    if layer.format not in ("qcow2", "vmdk"):
        return 0, "raw images have no metadata to check"
    argv = confined_argv(["qemu-img", "check", image_spec((layer,))], read=_checked_files((layer,)), write=[])
    done = subprocess.run(argv, capture_output=True, text=True, umask=PRIVATE_UMASK)
    return done.returncode, (done.stdout + done.stderr).strip()


_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


def convert_disk(chain: tuple[ImageLayer, ...], target: Path, target_format: str | None = None, *,
                 progress: Callable[[float], None] | None = None, thick: bool = False,
                 subformat: str | None = None) -> None:
    """Copy a checked disk chain, flattened, into a new file, converting its format.

    The chain reaches qemu-img as one explicit node description (:func:`image_spec`).
    Thin output is sparse; ``thick`` preallocates. ``progress`` gets 0..100.
    """
    target_format = target_format or format_for(target)
    options = []
    if target_format == "vmdk":
        options.append(f"subformat={subformat or ('monolithicFlat' if thick else 'monolithicSparse')}")
    elif thick:
        options.append("preallocation=falloc" if target_format == "qcow2" else "preallocation=full")
    argv = ["qemu-img", "convert", "-p", "-W", "-m", "8"]
    argv += [image_spec(chain), "-O", target_format] + (["-o", ",".join(options)] if options else [])
    argv += (["-S", "0"] if thick else []) + [str(target)]
    argv = confined_argv(argv, read=_checked_files(chain), write=[str(target.parent)])
    try:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, umask=PRIVATE_UMASK)
    except FileNotFoundError as exc:
        raise HostError("qemu-img not found", hint="apt-get install qemu-utils") from exc
    buffer = b""
    assert process.stdout is not None
    while chunk := process.stdout.read1(4096):
        buffer = (buffer + chunk)[-256:]
        for match in _PROGRESS.finditer(buffer):
            if progress:
                progress(float(match.group(1)))
        buffer = buffer[buffer.rfind(b")") + 1:] if b")" in buffer else buffer
    error = process.stderr.read().decode(errors="replace").strip() if process.stderr else ""
    if process.wait() != 0:
        detail = error.splitlines()[-1] if error else str(process.returncode)
        if _free_bytes(target.parent) < FULL_MARGIN:
            detail += f" ({os.strerror(errno.ENOSPC)})"  # the file system is full, whatever qemu-img said
        raise DiskError(f"qemu-img convert failed: {detail}",
                        hint="check free space and that the source is intact: minivisor disk info")
    if thick and target_format == "vmdk":
        for extent in read_layer(target, "vmdk").extent_files:
            with open(target.parent / extent, "r+b") as handle:
                os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)


def _free_bytes(folder: Path) -> int:
    """Bytes an unprivileged writer may still use on ``folder``'s file system."""
    try:
        info = os.statvfs(folder)
    except OSError:
        return FULL_MARGIN  # unknown: do not claim the file system is full
    return info.f_bavail * info.f_frsize


COPY_STEP = 8 * 1024 * 1024  # bytes one copy_file_range call is asked for: the progress moves at least this often


def copy_sparse(source: Path, target: Path, progress: Callable[[int], None] | None = None) -> None:
    """Copy a file's data extents only (holes stay holes), in the kernel (copy_file_range) where the two file
    systems allow it, else through memory; ``progress`` gets the bytes of each step. ``source`` is the real path
    the caller checked: a file found elsewhere by then (a link swapped in on the way) is not read."""
    with _checked_source(source) as src, _private_file(target) as dst:
        size = os.fstat(src.fileno()).st_size
        copy = _copier(src.fileno(), dst.fileno())
        offset = 0
        while offset < size:
            try:
                start = os.lseek(src.fileno(), offset, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            end = os.lseek(src.fileno(), start, os.SEEK_HOLE)
            position = start
            while position < end:
                copied = copy(position, min(end - position, COPY_STEP))
                if copied == 0:
                    break
                position += copied
                if progress:
                    progress(copied)
            offset = end
        os.ftruncate(dst.fileno(), size)
        os.fsync(dst.fileno())


def _checked_source(source: Path):
    """``source`` open for reading, if it is still the file at that real path (not a link, nor reached through
    one)."""
    try:  # not blocking: a FIFO swapped in opens at once, and is refused below
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise DiskError(f"cannot read {source}: {exc.strerror}",
                        hint="it changed since minivisor checked it (a link?): check the folder and try again") from exc
    handle = os.fdopen(fd, "rb")
    try:
        same = stat.S_ISREG(os.fstat(fd).st_mode) and os.readlink(f"/proc/self/fd/{fd}") == str(source)
    except OSError:
        same = False
    if not same:
        handle.close()
        raise DiskError(f"{source} is no longer the file minivisor checked (replaced, or a folder on its way was)",
                        hint="check the folder and try again")
    os.set_blocking(fd, True)
    return handle


def _copier(src: int, dst: int) -> Callable[[int, int], int]:
    """A function copying ``length`` bytes at ``position`` from ``src`` to the same place in ``dst``; returns
    how many it copied. copy_file_range, until the kernel refuses it for these two files (Linux 5.19+ refuses
    two file systems of different types: a VMware folder on a USB disk, say), then pread and pwrite."""
    in_kernel = True

    def copy(position: int, length: int) -> int:
        nonlocal in_kernel
        if in_kernel:
            try:
                return os.copy_file_range(src, dst, length, position, position)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
                in_kernel = False
        return os.pwrite(dst, os.pread(src, length, position), position)

    return copy


def _private_file(path: Path):
    """A new file only its owner can read: a VM's data."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), "wb")


# -- internal snapshots of a small qcow2 file (the UEFI variable store) ------------
def internal_snapshots(path: Path) -> set[str]:
    """The names of a qcow2 file's internal snapshots (read even while a VMM has it open)."""
    info = json.loads(_qemu_img("info", "-U", "-f", "qcow2", "--output=json", str(path)).stdout)
    return {snapshot["name"] for snapshot in info.get("snapshots", ())}


def internal_snapshot(path: Path, action: str, name: str) -> None:
    """``create``, ``apply`` or ``delete`` the internal snapshot ``name`` of a qcow2 file no VMM has open."""
    flag = {"create": "-c", "apply": "-a", "delete": "-d"}[action]
    _qemu_img("snapshot", "-q", flag, name, image_spec((read_layer(path, "qcow2"),)))  # its format said: no probe


def copy_qcow2(path: Path, target: Path, snapshot: str | None = None) -> None:
    """A new qcow2 file with ``path``'s data now (read even while a VMM has it open), or as its internal
    snapshot ``snapshot`` has it; without internal snapshots of its own."""
    state = ["-l", f"snapshot.name={snapshot}"] if snapshot is not None else []
    _qemu_img("convert", "-U", "-f", "qcow2", *state, "-O", "qcow2", str(path), str(target))
