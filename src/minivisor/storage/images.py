"""Virtual disks as files: formats, headers, backing chains, qemu-img.

A disk's format comes from its file name (``.qcow2``, ``.vmdk``, ``.raw``,
``.img``, ``.iso``), never from its contents: a guest can write any bytes to a
raw disk, and letting QEMU guess the format from them would let the guest
name a host file as its backing file. Backing chains are read from the image
headers by this module, every name checked by the caller's path policy, and
handed to QEMU and qemu-img explicitly, layer by layer (:func:`image_spec`):
a name in a header that QEMU would parse itself (``json:{...}``, ``nbd:``...)
is refused. qemu-img runs with umask 077: what it creates is owner-only.
"""

from __future__ import annotations

import errno
import json
import os
import re
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import DiskError, HostError, PathError

__all__ = [
    "ImageLayer",
    "format_for",
    "read_layer",
    "resolve_chain",
    "check_file_name",
    "image_spec",
    "parse_size",
    "create_disk",
    "convert_disk",
    "create_overlay",
    "disk_info",
    "resize_disk",
    "check_disk",
    "allocated_bytes",
    "layer_files",
    "commit_layer",
    "rebase_disk",
    "set_backing",
    "copy_sparse",
    "human_size",
]

FORMATS_BY_SUFFIX = {".qcow2": "qcow2", ".vmdk": "vmdk", ".raw": "raw", ".img": "raw", ".iso": "raw",
                     ".flp": "raw", ".bin": "raw"}
MAX_CHAIN = 64
PRIVATE_UMASK = 0o077
# Free bytes below which a failed qemu-img write is put down to a full file system: qemu-img does not
# always say ENOSPC (a full tmpfs gives "Invalid argument", or an assertion failure in its error path).
FULL_MARGIN = 16 * 1024 * 1024

# qcow2 header fields (docs/interop/qcow2.txt)
QCOW2_MAGIC = b"QFI\xfb"
QCOW2_EXT_BACKING_FORMAT = 0xE2792ACA
QCOW2_EXT_DATA_FILE = 0x44415441
QCOW2_INCOMPAT_DATA_FILE = 1 << 2
# VMware's sparse extent header (VMDK technote, "KDMV")
VMDK_MAGIC = b"KDMV"
# createTypes QEMU opens as they are (block/vmdk.c compares them case-sensitively)
VMDK_CREATE_TYPES = ("monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse", "twoGbMaxExtentFlat",
                     "streamOptimized", "vmfs", "vmfsSparse")


@dataclass(frozen=True)
class ImageLayer:
    """One image file of a disk's chain, top (the file the VM writes) first."""

    path: Path
    format: str
    virtual_size: int
    backing_name: str | None = None  # as recorded in the header
    backing_format: str | None = None
    extent_files: tuple[str, ...] = ()  # files a VMDK descriptor names
    create_type: str | None = None  # VMDK createType
    cid: str | None = None  # VMDK content ID (lower-case hex)
    parent_cid: str | None = None


def format_for(path: Path | str) -> str:
    """The image format a file name declares."""
    suffix = Path(path).suffix.lower()
    try:
        return FORMATS_BY_SUFFIX[suffix]
    except KeyError:
        raise DiskError(f"cannot tell the format of {Path(path).name!r} from its name",
                        hint="name disks .qcow2, .vmdk or .raw (.img and .iso are raw)") from None


def read_layer(path: Path, fmt: str) -> ImageLayer:
    """Read one image's header: its size and the backing file it names."""
    try:
        with open(path, "rb") as image:
            if fmt == "qcow2":
                return _read_qcow2(path, image)
            if fmt == "vmdk":
                return _read_vmdk(path, image)
            return ImageLayer(path, "raw", os.fstat(image.fileno()).st_size)
    except FileNotFoundError:
        raise DiskError(f"disk {path} does not exist",
                        hint="fix the fileName in the specfile, or restore the disk file") from None
    except IsADirectoryError:
        raise DiskError(f"disk {path} is a folder, not an image file", hint="fix the fileName in the specfile") from None
    except PermissionError as exc:
        raise DiskError(f"disk {path} cannot be read: {exc.strerror}", hint="fix its permissions") from exc


def _read_qcow2(path: Path, image) -> ImageLayer:
    header = image.read(104)
    if len(header) < 72 or header[:4] != QCOW2_MAGIC:
        raise DiskError(f"{path.name} is named .qcow2 but has no qcow2 header",
                        hint="rename it to match its real format (.raw, .vmdk)")
    version, backing_offset, backing_size = struct.unpack(">IQI", header[4:20])
    size = struct.unpack(">Q", header[24:32])[0]
    header_length, incompatible = 72, 0
    if version >= 3:
        incompatible = struct.unpack(">Q", header[72:80])[0]
        header_length = struct.unpack(">I", header[100:104])[0]
    if incompatible & QCOW2_INCOMPAT_DATA_FILE:
        raise DiskError(f"{path.name} keeps its data in an external data file",
                        hint="convert it to a self-contained image: qemu-img convert -f qcow2 -O qcow2")
    backing = backing_format = None
    if backing_offset:
        image.seek(backing_offset)
        backing = image.read(backing_size).decode("utf-8", "surrogateescape")
        backing_format = _qcow2_extension(image, header_length, QCOW2_EXT_BACKING_FORMAT)
    return ImageLayer(path, "qcow2", size, backing, backing_format)


def _qcow2_extension(image, offset: int, wanted: int) -> str | None:
    image.seek(offset)
    for _ in range(64):
        raw = image.read(8)
        if len(raw) < 8:
            return None
        kind, length = struct.unpack(">II", raw)
        if kind == 0:
            return None
        data = image.read((length + 7) & ~7)[:length]
        if kind == wanted:
            return data.decode("ascii", "replace")
    return None


def _read_vmdk(path: Path, image) -> ImageLayer:
    head = image.read(512)
    if head[:4] == VMDK_MAGIC:
        capacity, _grain, desc_offset, desc_size = struct.unpack("<QQQQ", head[12:44])
        descriptor = b""
        if desc_offset:
            image.seek(desc_offset * 512)
            descriptor = image.read(desc_size * 512).rstrip(b"\0")
        fields, _ = _parse_descriptor(descriptor)
        fields.setdefault("createtype", "monolithicSparse")
        return _vmdk_layer(path, capacity * 512, fields, [])
    image.seek(0)
    text = image.read(64 * 1024)
    if b"disk descriptorfile" not in text[:4096].lower() and b"createtype" not in text.lower():
        raise DiskError(f"{path.name} is named .vmdk but is neither a VMware sparse disk nor a descriptor",
                        hint="rename it to match its real format (.raw, .qcow2)")
    fields, extents = _parse_descriptor(text)
    size = sum(sectors for sectors, _ in extents) * 512
    return _vmdk_layer(path, size, fields, [name for _, name in extents if name])


def _vmdk_layer(path: Path, size: int, fields: dict[str, str], extent_files: list[str]) -> ImageLayer:
    parent = fields.get("parentfilenamehint") or None
    create_type = fields.get("createtype")
    if create_type is not None and create_type not in VMDK_CREATE_TYPES:
        raise DiskError(f"{path.name} is a VMDK of type {create_type!r}, which minivisor does not run",
                        hint="convert it on the VMware side to monolithicSparse, monolithicFlat or "
                             "twoGbMaxExtentSparse")
    cid, parent_cid = _cid(fields.get("cid")), _cid(fields.get("parentcid"))
    return ImageLayer(path, "vmdk", size, parent, "vmdk" if parent else None, tuple(extent_files),
                      create_type, cid, parent_cid)


def _cid(value: str | None) -> str | None:
    """A content ID as 8 lower-case hex digits (QEMU writes them without leading zeros)."""
    try:
        return f"{int(value, 16):08x}" if value else None
    except ValueError:
        return value.lower()


_EXTENT = re.compile(r'^(RW|RDONLY|NOACCESS)\s+(\d+)\s+(\w+)(?:\s+"([^"]*)")?', re.IGNORECASE)


def _parse_descriptor(text: bytes) -> tuple[dict[str, str], list[tuple[int, str | None]]]:
    """Header fields (lower-cased keys) and extents (sectors, file) of a descriptor."""
    fields: dict[str, str] = {}
    extents: list[tuple[int, str | None]] = []
    for raw_line in text.decode("utf-8", "surrogateescape").splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        match = _EXTENT.match(line)
        if match:
            extents.append((int(match.group(2)), match.group(4)))
        elif "=" in line:
            key, _, value = line.partition("=")
            fields[key.strip().lower()] = value.strip().strip('"')
    return fields, extents


def resolve_chain(top: Path, fmt: str, resolve: Callable[[Path, str], Path]) -> tuple[ImageLayer, ...]:
    """The disk's layers, top first, each with an explicit format.

    ``resolve(base_dir, name)`` applies the datastore's path policy to every
    backing file and extent the headers name (raising PathError).
    """
    layers: list[ImageLayer] = []
    seen: set[str] = set()
    path, layer_format = top, fmt
    while True:
        layer = read_layer(path, layer_format)
        for extent in layer.extent_files:
            check_file_name(extent, f"an extent of {path.name}")
            resolve(path.parent, extent)
        layers.append(layer)
        seen.add(os.path.realpath(path))
        if not layer.backing_name:
            return tuple(layers)
        if not layer.backing_format:
            raise DiskError(f"{path.name} names its backing file {layer.backing_name!r} without its format",
                            hint=f"record it: qemu-img rebase -u -f {layer_format} -F <format> "
                                 f"-b {layer.backing_name} {path}")
        check_file_name(layer.backing_name, f"the backing file of {path.name}")
        path, layer_format = resolve(path.parent, layer.backing_name), layer.backing_format
        if layer.parent_cid and layer.parent_cid != "ffffffff":
            parent = read_layer(path, layer_format)
            if parent.cid and parent.cid != layer.parent_cid:
                raise DiskError(f"the parent {path.name} of {layer.path.name} was modified after the child was "
                                f"created (its CID is {parent.cid}, the child expects {layer.parent_cid})",
                                hint="restore the original parent disk; the chain would read corrupt data")
        if os.path.realpath(path) in seen or len(layers) >= MAX_CHAIN:
            raise DiskError(f"the backing chain of {top.name} loops or is deeper than {MAX_CHAIN}",
                            hint="rebuild the disk with qemu-img convert")


def check_file_name(name: str, what: str) -> None:
    """Refuse a name QEMU would not open as a plain file: ``json:{...}`` or any ``<protocol>:`` prefix.

    QEMU takes a name as a protocol when a ``:`` comes before the first ``/``
    (block.c, path_has_protocol); ``json:`` then describes any node, host files included.
    """
    if ":" in name.split("/", 1)[0]:
        shown = name if len(name) <= 60 else name[:57] + "..."
        raise PathError(f"{what} is {shown!r}, which QEMU would read as a protocol or option string, not a file",
                        hint="only plain file names are allowed; flatten the disk where it came from "
                             "(qemu-img convert -O qcow2)")


def image_spec(chain: tuple[ImageLayer, ...] | list[ImageLayer]) -> str:
    """A checked chain as one QEMU node description (``json:``) for qemu-img.

    Every layer's driver and file are spelled out, each layer's ``backing`` is
    the next one and the bottom's is ``null``: qemu-img follows no name from a
    header and probes no format.
    """
    node: dict | None = None
    for layer in reversed(chain):
        spec: dict = {"driver": layer.format, "file": {"driver": "file", "filename": os.path.abspath(layer.path)}}
        if layer.format != "raw":
            spec["backing"] = node
        node = spec
    return "json:" + json.dumps(node, separators=(",", ":"))


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(i?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``100G``, ``512M``, ``1TiB`` or a byte count -> bytes (powers of 1024)."""
    match = _SIZE.match(text)
    if not match:
        raise DiskError(f"{text!r} is not a size", hint="write sizes like 512M, 20G or 1T")
    number, unit = float(match.group(1)), match.group(2).upper()
    size = int(number * 1024 ** " KMGTP".index(unit or " "))
    if size < 512:
        raise DiskError(f"size {text!r} is smaller than one sector", hint="use at least 1M")
    return size


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


def create_overlay(path: Path, backing: ImageLayer, *, relative_to: Path | None = None) -> None:
    """A new qcow2 file whose backing file is ``backing``, its format recorded in the header.

    The backing file is named relative to the overlay's folder, so the datastore can move.
    ``-u``: the backing is not opened (a running VMM may hold it), its size is known.
    """
    name = os.path.relpath(backing.path, relative_to or path.parent)
    _qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", name, "-F", backing.format,
              "-o", "lazy_refcounts=on", str(path), str(backing.virtual_size))


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


def layer_files(layer: ImageLayer) -> list[Path]:
    """The image file and every extent file a VMDK descriptor names."""
    return [layer.path, *(layer.path.parent / name for name in layer.extent_files)]


def allocated_bytes(layer: ImageLayer) -> int:
    """Bytes the host really stores for this layer (its files' allocated blocks)."""
    total = 0
    for path in layer_files(layer):
        try:
            total += os.stat(path).st_blocks * 512
        except FileNotFoundError:
            pass
    return total


def disk_info(chain: tuple[ImageLayer, ...]) -> dict:
    """What ``disk info`` shows: sizes, format and the chain of parents (top first)."""
    top = chain[0]
    layers = [{"file": str(layer.path), "format": layer.format, "virtual_size": layer.virtual_size,
               "allocated": allocated_bytes(layer), "backing_file": layer.backing_name,
               "backing_format": layer.backing_format,
               **({"create_type": layer.create_type} if layer.create_type else {})} for layer in chain]
    return {"file": str(top.path), "format": top.format, "virtual_size": top.virtual_size,
            "allocated": layers[0]["allocated"], "chain_allocated": sum(x["allocated"] for x in layers),
            "thin": layers[0]["allocated"] < top.virtual_size, "chain": layers}


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
    argv = ["qemu-img", "check", image_spec((layer,))]
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


def copy_sparse(source: Path, target: Path, progress: Callable[[int], None] | None = None) -> None:
    """Copy a file's data extents only (holes stay holes), in the kernel (copy_file_range)."""
    with open(source, "rb") as src, _private_file(target) as dst:
        size = os.fstat(src.fileno()).st_size
        offset = 0
        while offset < size:
            try:
                start = os.lseek(src.fileno(), offset, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            end = os.lseek(src.fileno(), start, os.SEEK_HOLE)
            position = start
            while position < end:
                copied = os.copy_file_range(src.fileno(), dst.fileno(), end - position, position, position)
                if copied == 0:
                    break
                position += copied
                if progress:
                    progress(copied)
            offset = end
        os.ftruncate(dst.fileno(), size)
        os.fsync(dst.fileno())


def _private_file(path: Path):
    """A new file only its owner can read: a VM's data."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), "wb")


def human_size(size: int) -> str:
    """``1073741824`` -> ``1 GiB``; ``1610612736`` -> ``1.5 GiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "PiB":
            break
        value /= 1024
    else:
        unit = "PiB"
    return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
