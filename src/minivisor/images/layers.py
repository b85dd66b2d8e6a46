"""Disk image files as minivisor reads them: formats, headers and backing chains.

A disk's format comes from its file name (``.qcow2``, ``.vmdk``, ``.raw``,
``.img``, ``.iso``), never from its contents: a guest can write any bytes to a
raw disk, and letting QEMU guess the format from them would let the guest
name a host file as its backing file. Backing chains are read from the image
headers here (bounded reads), every name checked by the caller's path policy
(a name QEMU would parse itself, ``json:{...}``, ``nbd:``..., is refused), and
handed to QEMU and qemu-img explicitly, layer by layer.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable
from pathlib import Path

from ..errors import DiskError, PathError
from ..realpaths import real_path
from ..records import Record

__all__ = ["ImageLayer", "format_for", "read_layer", "resolve_chain", "check_file_name", "layer_files",
           "allocated_bytes", "disk_info", "QCOW2_MAGIC", "VMDK_MAGIC"]

FORMATS_BY_SUFFIX = {".qcow2": "qcow2", ".vmdk": "vmdk", ".raw": "raw", ".img": "raw", ".iso": "raw",
                     ".flp": "raw", ".bin": "raw"}
MAX_CHAIN = 64
# qcow2 header fields (docs/interop/qcow2.txt)
QCOW2_MAGIC = b"QFI\xfb"
QCOW2_EXT_BACKING_FORMAT = 0xE2792ACA
QCOW2_INCOMPAT_DATA_FILE = 1 << 2
# VMware's sparse extent header (VMDK technote, "KDMV")
VMDK_MAGIC = b"KDMV"
# createTypes QEMU opens as they are (block/vmdk.c compares them case-sensitively)
VMDK_CREATE_TYPES = ("monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse", "twoGbMaxExtentFlat",
                     "streamOptimized", "vmfs", "vmfsSparse")


class ImageLayer(Record, frozen=True):
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
        fields, extents = _parse_descriptor(descriptor)
        fields.setdefault("createtype", "monolithicSparse")
        # the size QEMU gives the disk: its descriptor's extent, not the header's capacity (rounded to a grain)
        sectors = sum(count for count, _ in extents) or capacity
        return _vmdk_layer(path, sectors * 512, fields, [])
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
    real = real_path(path)
    while True:
        layer = read_layer(path, layer_format)
        for extent in layer.extent_files:
            check_file_name(extent, f"an extent of {path.name}")
            resolve(path.parent, extent)
        layers.append(layer)
        seen.add(real)
        if not layer.backing_name:
            return tuple(layers)
        if not layer.backing_format:
            raise DiskError(f"{path.name} names its backing file {layer.backing_name!r} without its format",
                            hint=f"record it: qemu-img rebase -u -f {layer_format} -F <format> "
                                 f"-b {layer.backing_name} {path}")
        check_file_name(layer.backing_name, f"the backing file of {path.name}")
        parent = resolve(path.parent, layer.backing_name)
        if layer.format == "vmdk" and Path(layer.backing_name).suffix.lower() != ".vmdk":
            # a parent's format comes from its name too: a raw disk's guest-written bytes are never a VMDK
            raise DiskError(f"{path.name} names {layer.backing_name[:60]!r} as its parent, which is not a .vmdk",
                            hint="a VMDK's parentFileNameHint must name a .vmdk file; flatten the disk where it "
                                 "came from (qemu-img convert)")
        path, layer_format = parent, layer.backing_format
        if layer.parent_cid and layer.parent_cid != "ffffffff":
            parent = read_layer(path, layer_format)
            if parent.cid and parent.cid != layer.parent_cid:
                raise DiskError(f"the parent {path.name} of {layer.path.name} was modified after the child was "
                                f"created (its CID is {parent.cid}, the child expects {layer.parent_cid})",
                                hint="restore the original parent disk; the chain would read corrupt data")
        real = real_path(path)  # once a layer
        if real in seen or len(layers) >= MAX_CHAIN:
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
