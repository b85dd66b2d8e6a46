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

__all__ = ["ImageLayer", "Pin", "format_for", "read_layer", "resolve_chain", "check_file_name", "layer_files",
           "allocated_bytes", "disk_info", "QCOW2_MAGIC", "VMDK_MAGIC"]

FORMATS_BY_SUFFIX = {".qcow2": "qcow2", ".vmdk": "vmdk", ".raw": "raw", ".img": "raw", ".iso": "raw",
                     ".flp": "raw", ".bin": "raw"}
MAX_CHAIN = 64
# qcow2 header fields (docs/interop/qcow2.txt)
QCOW2_MAGIC = b"QFI\xfb"
QCOW2_EXT_BACKING_FORMAT = 0xE2792ACA
QCOW2_INCOMPAT_DATA_FILE = 1 << 2
# what QEMU opens (block/qcow2.c): the header and its backing file name fit in the first cluster, at most 2 MiB
MAX_QCOW2_CLUSTER = 1 << 21
MAX_QCOW2_BACKING_NAME = 1023
# VMware's sparse extent header (VMDK technote, "KDMV")
VMDK_MAGIC = b"KDMV"
# QEMU reads at most this much of a descriptor (block/vmdk.c, vmdk_read_desc)
DESCRIPTOR_LIMIT = (1 << 20) - 1
# extent types whose file QEMU opens as a sparse VMDK, whose header may hold a descriptor of its own
SPARSE_EXTENT_TYPES = ("SPARSE", "VMFSSPARSE")
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
    sparse_extents: tuple[str, ...] = ()  # the extent files QEMU opens as sparse VMDKs
    # The files of the layer as they were read and checked (the image, then each extent), by identity: qemu-img
    # may open these very files and no other (:mod:`minivisor.images.confine`), whatever their names point at by then.
    pinned: tuple[Pin, ...] = ()


class Pin(Record, frozen=True):
    """A file by its name and its identity (device, inode) when it was checked."""

    path: str
    device: int
    inode: int

    @classmethod
    def of(cls, path: Path | str, stat: os.stat_result) -> Pin:
        return cls(str(path), stat.st_dev, stat.st_ino)


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
                layer = _read_qcow2(path, image)
            elif fmt == "vmdk":
                layer = _read_vmdk(path, image)
            else:
                layer = ImageLayer(path, "raw", os.fstat(image.fileno()).st_size)
            return layer.replace(pinned=(Pin.of(path, os.fstat(image.fileno())), *_extent_pins(layer)))
    except FileNotFoundError:
        raise DiskError(f"disk {path} does not exist",
                        hint="fix the fileName in the specfile, or restore the disk file") from None
    except IsADirectoryError:
        raise DiskError(f"disk {path} is a folder, not an image file", hint="fix the fileName in the specfile") from None
    except PermissionError as exc:
        raise DiskError(f"disk {path} cannot be read: {exc.strerror}", hint="fix its permissions") from exc


def _extent_pins(layer: ImageLayer) -> list[Pin]:
    """The extent files a VMDK descriptor names as they are now (:func:`resolve_chain` pins them as checked)."""
    pins = []
    for name in layer.extent_files:
        try:
            pins.append(Pin.of(layer.path.parent / name, os.stat(layer.path.parent / name)))
        except OSError:
            pass  # missing: qemu-img says so
    return pins


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
    if backing_offset > MAX_QCOW2_CLUSTER or backing_size > MAX_QCOW2_BACKING_NAME:
        raise DiskError(f"{path.name} has a corrupt qcow2 header: it puts a {backing_size}-byte backing file name "
                        f"at offset {backing_offset}", hint="QEMU cannot open it either; restore the disk from a "
                                                            "copy, or recreate it where it came from")
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
        if length > MAX_QCOW2_CLUSTER:  # QEMU refuses the image; reading it would take up to 4 GiB of memory
            return None
        data = image.read((length + 7) & ~7)[:length]
        if kind == wanted:
            return data.decode("ascii", "replace")
    return None


def _read_vmdk(path: Path, image) -> ImageLayer:
    head = image.read(512)
    if head[:4] == VMDK_MAGIC:
        capacity, _grain, desc_offset, desc_size = struct.unpack("<QQQQ", head[12:44])
        if capacity == 0 and desc_offset:
            # QEMU opens such a header's descriptor as a descriptor file, extents and all (vmdk_open_vmdk4)
            fields, extents = _parse_descriptor(path, _read_at(image, desc_offset << 9, DESCRIPTOR_LIMIT))
            return _vmdk_layer(path, sum(sectors for sectors, _, _ in extents) * 512, fields, extents)
        descriptor = _read_at(image, desc_offset << 9, desc_size << 9) if desc_offset else b""
        fields, extents = _parse_descriptor(path, descriptor, opened=False)
        fields.setdefault("createtype", "monolithicSparse")
        # the size QEMU gives the disk: its descriptor's extent, not the header's capacity (rounded to a grain)
        sectors = sum(count for count, _, _ in extents) or capacity
        return _vmdk_layer(path, sectors * 512, fields, [])
    text = _read_at(image, 0, DESCRIPTOR_LIMIT)
    if b"disk descriptorfile" not in text[:4096].lower() and b"createtype" not in text.lower():
        raise DiskError(f"{path.name} is named .vmdk but is neither a VMware sparse disk nor a descriptor",
                        hint="rename it to match its real format (.raw, .qcow2)")
    fields, extents = _parse_descriptor(path, text)
    return _vmdk_layer(path, sum(sectors for sectors, _, _ in extents) * 512, fields, extents)


def _read_at(image, offset: int, length: int) -> bytes:
    """Up to ``length`` bytes (at most DESCRIPTOR_LIMIT) at ``offset``, where a header's absurd offset or size
    points: offsets wrap at 64 bits as QEMU's do, and one QEMU cannot read (from 2**63 up) gives nothing."""
    offset &= (1 << 64) - 1
    if offset >= 1 << 63:
        return b""
    image.seek(offset)
    return image.read(min(length, DESCRIPTOR_LIMIT))


def _vmdk_layer(path: Path, size: int, fields: dict[str, str],
                extents: list[tuple[int, str, str | None]]) -> ImageLayer:
    parent = fields.get("parentfilenamehint") or None
    create_type = fields.get("createtype")
    if create_type is not None and create_type not in VMDK_CREATE_TYPES:
        raise DiskError(f"{path.name} is a VMDK of type {create_type!r}, which minivisor does not run",
                        hint="convert it on the VMware side to monolithicSparse, monolithicFlat or "
                             "twoGbMaxExtentSparse")
    cid, parent_cid = _cid(fields.get("cid")), _cid(fields.get("parentcid"))
    named = [(kind, name) for _, kind, name in extents if name]
    return ImageLayer(path, "vmdk", size, parent, "vmdk" if parent else None, tuple(name for _, name in named),
                      create_type, cid, parent_cid,
                      tuple(name for kind, name in named if kind.upper() in SPARSE_EXTENT_TYPES))


def _cid(value: str | None) -> str | None:
    """A content ID as 8 lower-case hex digits (QEMU writes them without leading zeros)."""
    try:
        return f"{int(value, 16):08x}" if value else None
    except ValueError:
        return value.lower()


_EXTENT = re.compile(r'^(RW|RDONLY|NOACCESS)\s+(\d+)\s+(\w+)(?:\s+"([^"]*)")?', re.IGNORECASE)
# An extent line as QEMU reads one (block/vmdk.c, vmdk_parse_extents): sscanf's "%10s %d %10s \"%511[^\n\r\"]\""
# on the text from a line's start, its spaces C's (isspace), which also skip line ends. This is the one
# form of its start minivisor accepts: access, size, type and the quoted file name on one line (what follows
# the name names no file).
_C_SPACE = " \t\v\f\r"
_QEMU_EXTENT = re.compile(rf'RW[{_C_SPACE}]+([0-9]+)[{_C_SPACE}]+([A-Za-z]+)[{_C_SPACE}]+"([^"\r\n]*)"')


def _parse_descriptor(path: Path, text: bytes, *, opened: bool = True) -> tuple[dict[str, str],
                                                                             list[tuple[int, str, str | None]]]:
    """Header fields (lower-cased keys) and extents (sectors, type, file) of a descriptor.

    QEMU opens the file of every extent it parses: every line it could read as one must be read so here
    (else a name it opens would escape the path policy). It reads the text up to its first NUL, and a line
    whose first word is ``RW`` may be an extent, spread over any number of lines, its sector count signed:
    such a line must be one plain extent, or the descriptor is refused. ``opened=False``: QEMU opens none of
    its extents (a sparse disk's own descriptor), so such a line is only read as before, for the size.
    """
    fields: dict[str, str] = {}
    extents: list[tuple[int, str, str | None]] = []
    for raw_line in text.split(b"\0", 1)[0].split(b"\n"):
        line = raw_line.decode("utf-8", "surrogateescape").strip(_C_SPACE)
        match = _QEMU_EXTENT.match(line)
        if match:
            extents.append((int(match.group(1)), match.group(2), match.group(3)))
            continue
        if opened and re.split(f"[{_C_SPACE}]", line, maxsplit=1)[0] == "RW":
            shown = line if len(line) <= 60 else line[:57] + "..."
            raise DiskError(f"{path.name} has an extent line QEMU would read differently from minivisor: {shown!r}",
                            hint='write each extent on one line: RW <sectors> <type> "<file>" [<offset>]; or '
                                 "flatten the disk where it came from")
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _EXTENT.match(line)
        if match:  # an extent QEMU skips (RDONLY, NOACCESS): its file is checked all the same
            extents.append((int(match.group(2)), match.group(3), match.group(4)))
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
        extents = []
        for extent in layer.extent_files:
            check_file_name(extent, f"an extent of {path.name}")
            real_extent = resolve(path.parent, extent)
            if extent in layer.sparse_extents:
                _check_sparse_extent(path, extent, real_extent)
            extents.append(Pin.of(path.parent / extent, os.stat(real_extent)))
        layers.append(layer.replace(pinned=(layer.pinned[0], *extents)))  # the extents as checked
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


def _check_sparse_extent(path: Path, name: str, real: Path) -> None:
    """Refuse a sparse extent whose header holds a descriptor: QEMU would open the extents it names too, each
    relative to the top descriptor's folder, and one that names itself would recurse until QEMU crashes."""
    with open(real, "rb") as extent:
        head = extent.read(44)
    if head[:4] == VMDK_MAGIC and len(head) == 44:
        capacity, _grain, desc_offset = struct.unpack("<QQQ", head[12:36])
        if capacity == 0 and desc_offset:
            raise DiskError(f"the extent {name[:60]!r} of {path.name} holds a descriptor of its own, naming more "
                            "extents", hint="flatten the disk where it came from (qemu-img convert -O vmdk)")


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
