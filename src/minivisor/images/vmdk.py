"""New VMDK delta disks, written by minivisor itself, and the parent links in their descriptors.

A VMware snapshot delta (``web-000001.vmdk``) is a ``monolithicSparse`` file whose
embedded descriptor names its parent (``parentFileNameHint``, relative to the
delta's folder) and the parent's content ID (``parentCID``). The file written
here is the one ``qemu-img create -f vmdk -o backing_file=NAME,backing_fmt=vmdk``
makes (the header, the descriptor at sector 1, the redundant and the primary
grain directory, the grain tables left as holes), byte for byte but for the new
CID. qemu-img would open the parent by its name, probing its format; here nothing
is opened: the parent's size and CID are those of the checked layer the caller
passes (:func:`minivisor.images.layers.read_layer`).

A parent link is rewritten in place (:func:`set_parent`) when a delete folds a
layer into its parent: QEMU gives a VMDK a new CID on its first write, so the
layers above must be told the new one, as VMware does when it consolidates.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

from ..errors import DiskError
from ..files import write_atomic, write_new_sparse
from .layers import DESCRIPTOR_LIMIT, VMDK_MAGIC, ImageLayer, check_file_name, read_layer

__all__ = ["create_delta", "delta_bytes", "set_parent", "set_cid"]

SECTOR = 512
GRANULARITY = 128  # sectors per grain: 64 KiB, as QEMU writes
GTES_PER_GT = 512
DESCRIPTOR_OFFSET, DESCRIPTOR_SECTORS = 1, 20
FLAGS = 0x3  # valid newline detection, redundant grain directory
CHECK_BYTES = b"\n \r\n"
MAX_PARENT_NAME = 1023
_HEADER = struct.Struct("<4sIIQQQQIQQQx4sH")
_FIELD = re.compile(rb"^(cid|parentcid|parentfilenamehint)\s*=.*$", re.IGNORECASE | re.MULTILINE)


def delta_bytes(path_name: str, virtual_size: int, parent_name: str, parent_cid: str,
                cid: int | None = None) -> tuple[list[tuple[int, bytes]], int]:
    """The delta's metadata as (offset, bytes) pieces, and the file's length (the grain tables are holes)."""
    check_file_name(parent_name, "a delta's parent file")
    if not parent_name or len(parent_name.encode()) > MAX_PARENT_NAME or '"' in parent_name or "\n" in parent_name:
        raise DiskError(f"cannot name {parent_name!r} as a VMDK parent",
                        hint="keep the datastore's path short and free of quotes")
    sectors = -(-virtual_size // SECTOR)
    grains = -(-sectors // GRANULARITY)
    gt_sectors = GTES_PER_GT * 4 // SECTOR
    gt_count = -(-grains // GTES_PER_GT)
    gd_sectors = -(-gt_count * 4 // SECTOR)
    rgd_offset = DESCRIPTOR_OFFSET + DESCRIPTOR_SECTORS
    gd_offset = rgd_offset + gd_sectors + gt_sectors * gt_count
    grain_offset = -(-(gd_offset + gd_sectors + gt_sectors * gt_count) // GRANULARITY) * GRANULARITY
    header = _HEADER.pack(VMDK_MAGIC, 1, FLAGS, sectors, GRANULARITY, DESCRIPTOR_OFFSET, DESCRIPTOR_SECTORS,
                          GTES_PER_GT, rgd_offset, gd_offset, grain_offset, CHECK_BYTES, 0)
    descriptor = _descriptor(path_name, sectors, parent_name, parent_cid,
                             _random_cid() if cid is None else cid)
    if len(descriptor) > DESCRIPTOR_SECTORS * SECTOR:
        raise DiskError("a VMDK delta's descriptor would not fit in its header", hint="use shorter file names")
    pieces = [(0, header), (DESCRIPTOR_OFFSET * SECTOR, descriptor)]
    for directory in (rgd_offset, gd_offset):
        tables = range(directory + gd_sectors, directory + gd_sectors + gt_count * gt_sectors, gt_sectors)
        pieces.append((directory * SECTOR, struct.pack(f"<{gt_count}I", *tables)))
    return pieces, grain_offset * SECTOR


def _random_cid() -> int:
    """A new content ID (VMware's CID: random 32 bits), from os.urandom as secrets.randbits would take it
    (secrets imports hmac and random: ~3 ms of every power-on, which loads this module for recovery)."""
    return int.from_bytes(os.urandom(4), "little")


def _descriptor(name: str, sectors: int, parent_name: str, parent_cid: str, cid: int) -> bytes:
    cylinders = sectors * SECTOR // (63 * 16 * SECTOR)
    return (f'# Disk DescriptorFile\nversion=1\nCID={cid:x}\nparentCID={_hex(parent_cid)}\n'
            f'createType="monolithicSparse"\nparentFileNameHint="{parent_name}"\n'
            f'# Extent description\nRW {sectors} SPARSE "{name}"\n\n# The Disk Data Base\n#DDB\n\n'
            f'ddb.virtualHWVersion = "4"\nddb.geometry.cylinders = "{cylinders}"\nddb.geometry.heads = "16"\n'
            f'ddb.geometry.sectors = "63"\nddb.adapterType = "ide"\nddb.toolsVersion = "2147483647"\n').encode()


def create_delta(path: Path, parent: ImageLayer, *, relative_to: Path | None = None) -> None:
    """A new VMDK delta on ``parent`` (a checked VMDK layer), named relative to the delta's folder.

    Like :func:`minivisor.images.qcow2.create_overlay`: never replaces a file, owner-only, durable on return.
    """
    if parent.format != "vmdk":
        raise DiskError(f"a VMDK delta cannot sit on {parent.path.name} ({parent.format})",
                        hint="snapshots of a qcow2 or raw disk are qcow2")
    name = os.path.relpath(parent.path, relative_to or path.parent)
    pieces, length = delta_bytes(path.name, parent.virtual_size, name, parent.cid or "ffffffff")
    write_new_sparse(path, pieces, length)


def set_parent(path: Path, parent: ImageLayer, parent_name: str) -> None:
    """Point a VMDK at another parent: its ``parentFileNameHint`` and ``parentCID`` (idempotent)."""
    check_file_name(parent_name, f"the parent of {path.name}")
    _rewrite(path, {b"parentfilenamehint": f'parentFileNameHint="{parent_name}"'.encode(),
                    b"parentcid": f"parentCID={_hex(parent.cid or 'ffffffff')}".encode()})


def set_cid(path: Path, cid: str) -> None:
    """Give a VMDK the content ID its children expect (after data they already see was folded into it)."""
    _rewrite(path, {b"cid": f"CID={_hex(cid)}".encode()})


def _hex(cid: str) -> str:
    """A content ID as QEMU writes it: lower-case hex without leading zeros."""
    try:
        return f"{int(cid, 16):x}"
    except ValueError:
        raise DiskError(f"the VMDK content ID {cid[:20]!r} is not a hexadecimal number",
                        hint="fix the CID line of the parent disk's descriptor") from None


def _rewrite(path: Path, lines: dict[bytes, bytes]) -> None:
    """Replace descriptor lines by key (the embedded descriptor in place, a descriptor file atomically)."""
    read_layer(path, "vmdk")  # a file that is no VMDK is refused before anything is written
    with open(path, "r+b") as image:
        head = image.read(SECTOR)
        embedded = head[:4] == VMDK_MAGIC
        if embedded:
            offset, size = (value * SECTOR for value in struct.unpack("<QQ", head[28:44]))
            if not 0 < offset < os.fstat(image.fileno()).st_size or size > DESCRIPTOR_LIMIT:
                # not a header QEMU or VMware wrote: seeking or reading there was an internal error
                raise DiskError(f"{path.name} has a corrupt VMDK header: it puts a {size}-byte descriptor at "
                                f"offset {offset}", hint="restore the disk from a copy")
            image.seek(offset)
            text = image.read(size)
        else:
            offset, size, text = 0, 64 * 1024, head + image.read(64 * 1024)
        body = text.rstrip(b"\0")
        new = _FIELD.sub(lambda m: lines.get(m.group(1).lower(), m.group(0)), body)
        if len(new) > size:
            raise DiskError(f"the descriptor of {path.name} has no room for its new parent link",
                            hint="use shorter file names")
        if embedded:
            image.seek(offset)
            image.write(new.ljust(len(text), b"\0")[:size])
            image.flush()
            os.fsync(image.fileno())
    if not embedded:
        write_atomic(path, new)
