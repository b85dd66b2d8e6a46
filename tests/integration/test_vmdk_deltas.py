"""The VMDK deltas minivisor writes itself (images/vmdk.py), checked by the real qemu-img and qemu-io."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
from pathlib import Path

import pytest

from minivisor.errors import DiskError, PathError
from minivisor.images.layers import read_layer, resolve_chain
from minivisor.images.qemu_img import commit_layer, image_spec
from minivisor.images.vmdk import create_delta, set_cid, set_parent


def qemu_img(*args: str) -> str:
    return subprocess.run(["qemu-img", *args], check=True, capture_output=True, text=True).stdout


def qemu_io(spec: str, command: str) -> str:
    return subprocess.run(["qemu-io", "-c", command, spec], check=True, capture_output=True, text=True).stdout


def without_cid(data: bytes, name: str) -> bytes:
    """The file with its CID's value blanked (a random number, whose hex length varies) and its own name."""
    descriptor = data[512:21 * 512].rstrip(b"\0").replace(name.encode(), b"NAME")
    return data[:512] + re.sub(rb"\nCID=[0-9a-f]+\n", b"\nCID=-\n", descriptor, count=1) + data[21 * 512:]


@pytest.mark.parametrize("size", [64 << 20, 1_000_000_000, 20 << 30, 512])
def test_a_delta_is_the_file_qemu_img_makes_but_for_its_new_cid(tmp_path, size):
    qemu_img("create", "-q", "-f", "vmdk", str(tmp_path / "base.vmdk"), str(size))
    parent = read_layer(tmp_path / "base.vmdk", "vmdk")
    qemu_img("create", "-q", "-f", "vmdk", "-o", "backing_file=base.vmdk,backing_fmt=vmdk",
             str(tmp_path / "b-000001.vmdk"))
    create_delta(tmp_path / "a-000001.vmdk", parent)
    ours, theirs = (tmp_path / "a-000001.vmdk").read_bytes(), (tmp_path / "b-000001.vmdk").read_bytes()
    assert len(ours) == len(theirs)
    assert without_cid(ours, "a-000001.vmdk") == without_cid(theirs, "b-000001.vmdk")
    info = json.loads(qemu_img("info", "--output=json", "-f", "vmdk", str(tmp_path / "a-000001.vmdk")))
    assert info["format"] == "vmdk" and info["backing-filename"] == "base.vmdk"
    assert info["format-specific"]["data"]["parent-cid"] == int(parent.cid, 16)
    assert info["format-specific"]["data"]["create-type"] == "monolithicSparse"
    assert subprocess.run(["qemu-img", "check", "-f", "vmdk", str(tmp_path / "a-000001.vmdk")]).returncode == 0
    assert os.stat(tmp_path / "a-000001.vmdk").st_mode & 0o777 == 0o600


def chain_of(top: Path):
    return resolve_chain(top, "vmdk", lambda folder, name: folder / name)


def test_reads_go_through_a_delta_and_writes_stay_in_it(tmp_path):
    qemu_img("create", "-q", "-f", "vmdk", str(tmp_path / "d.vmdk"), "16M")
    qemu_io(image_spec(chain_of(tmp_path / "d.vmdk")), "write -P 0x61 0 1M")
    (tmp_path / "sub").mkdir()
    create_delta(tmp_path / "sub" / "d-000001.vmdk", read_layer(tmp_path / "d.vmdk", "vmdk"))
    chain = chain_of(tmp_path / "sub" / "d-000001.vmdk")  # the CIDs match, the hint is relative
    assert chain[0].backing_name == "../d.vmdk" and len(chain) == 2
    qemu_io(image_spec(chain), "write -P 0x62 64k 64k")
    for pattern, offset in ((0x61, 0), (0x62, 65536), (0x61, 131072)):
        assert "read 65536/65536" in qemu_io(image_spec(chain), f"read -P {pattern:#x} {offset} 64k")
    assert "read 65536/65536" in qemu_io(image_spec(chain[1:]), "read -P 0x61 64k 64k")  # the parent is unchanged


def test_a_commit_keeps_the_parents_cid_and_a_relink_names_the_new_parent(tmp_path):
    qemu_img("create", "-q", "-f", "vmdk", str(tmp_path / "d.vmdk"), "4M")
    create_delta(tmp_path / "d-000001.vmdk", read_layer(tmp_path / "d.vmdk", "vmdk"))
    create_delta(tmp_path / "d-000002.vmdk", read_layer(tmp_path / "d-000001.vmdk", "vmdk"))
    qemu_io(image_spec(chain_of(tmp_path / "d-000002.vmdk")[1:]), "write -P 0x63 0 64k")  # into d-000001
    before = read_layer(tmp_path / "d.vmdk", "vmdk").cid
    commit_layer(chain_of(tmp_path / "d-000001.vmdk"))
    assert read_layer(tmp_path / "d.vmdk", "vmdk").cid != before  # QEMU gave the written file a new CID
    set_cid(tmp_path / "d.vmdk", before)
    chain_of(tmp_path / "d-000001.vmdk")  # still intact: a re-run of the commit would find its chain
    set_parent(tmp_path / "d-000002.vmdk", read_layer(tmp_path / "d.vmdk", "vmdk"), "d.vmdk")
    (tmp_path / "d-000001.vmdk").unlink()
    chain = chain_of(tmp_path / "d-000002.vmdk")
    assert [layer.path.name for layer in chain] == ["d-000002.vmdk", "d.vmdk"]
    assert "read 65536/65536" in qemu_io(image_spec(chain), "read -P 0x63 0 64k")
    assert subprocess.run(["qemu-img", "check", "-f", "vmdk", str(tmp_path / "d-000002.vmdk")]).returncode == 0


def test_a_delta_never_replaces_a_file_and_names_no_protocol(tmp_path):
    qemu_img("create", "-q", "-f", "vmdk", str(tmp_path / "d.vmdk"), "1M")
    parent = read_layer(tmp_path / "d.vmdk", "vmdk")
    (tmp_path / "taken.vmdk").write_bytes(b"kept")
    with pytest.raises(FileExistsError):
        create_delta(tmp_path / "taken.vmdk", parent)
    assert (tmp_path / "taken.vmdk").read_bytes() == b"kept"
    with pytest.raises(PathError):
        set_parent(tmp_path / "d.vmdk", parent, "json:{}")
    qemu_img("create", "-q", "-f", "qcow2", str(tmp_path / "q.qcow2"), "1M")
    with pytest.raises(DiskError):
        create_delta(tmp_path / "q-000001.vmdk", read_layer(tmp_path / "q.qcow2", "qcow2"))
    assert not (tmp_path / "q-000001.vmdk").exists()


@pytest.mark.parametrize("offset, size", [(1, 2 ** 40), (2 ** 60, 20), (1, 2 ** 62)],
                         ids=["size-past-memory", "offset-past-int64", "size-past-index"])
def test_relinking_a_vmdk_whose_header_puts_its_descriptor_absurdly_is_one_error_and_writes_nothing(tmp_path, offset,
                                                                                                    size):
    """set_cid and set_parent seeked and read where the header said: MemoryError, ValueError, OverflowError."""
    qemu_img("create", "-q", "-f", "vmdk", str(tmp_path / "d.vmdk"), "1M")
    data = bytearray((tmp_path / "d.vmdk").read_bytes())
    data[28:44] = struct.pack("<QQ", offset, size)
    (tmp_path / "d.vmdk").write_bytes(data)
    parent = read_layer(tmp_path / "d.vmdk", "vmdk")
    for relink in (lambda: set_cid(tmp_path / "d.vmdk", "abcdef12"),
                   lambda: set_parent(tmp_path / "d.vmdk", parent, "other.vmdk")):
        with pytest.raises(DiskError, match="corrupt VMDK header"):
            relink()
    assert (tmp_path / "d.vmdk").read_bytes() == data


def test_an_odd_extent_line_in_a_sparse_disks_own_descriptor_is_read_as_before(tmp_path):
    """QEMU opens none of the extents a monolithicSparse disk's embedded descriptor lists: a line there that is
    no plain extent is no reason to refuse the disk (a descriptor file's is: see tests/security/test_images.py)."""
    qemu_img("create", "-q", "-f", "vmdk", str(tmp_path / "d.vmdk"), "1M")
    data = (tmp_path / "d.vmdk").read_bytes()
    (tmp_path / "d.vmdk").write_bytes(data.replace(b'RW 2048 SPARSE "d.vmdk"', b'RW +2048 SPARSE "d.vmdk"'))
    assert read_layer(tmp_path / "d.vmdk", "vmdk").virtual_size == 1024 * 1024
