"""The qcow2 overlays minivisor writes itself (images/qcow2.py), checked by the real qemu-img and qemu-io."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from minivisor.errors import DiskError, PathError
from minivisor.images.layers import ImageLayer, read_layer
from minivisor.images.qcow2 import create_overlay
from minivisor.images.qemu_img import image_spec

CLUSTER = 65536


def qemu_img(*args: str) -> str:
    return subprocess.run(["qemu-img", *args], check=True, capture_output=True, text=True).stdout


def made_by_qemu_img(path: Path, backing: ImageLayer) -> None:
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", os.path.relpath(backing.path, path.parent),
             "-F", backing.format, "-o", "lazy_refcounts=on", str(path), str(backing.virtual_size))


@pytest.mark.parametrize("fmt,size", [("qcow2", 64 << 20), ("raw", 1000), ("raw", 1), ("qcow2", 5 << 40),
                                      ("vmdk", 8 << 30)])
def test_an_overlay_is_the_image_qemu_img_makes_but_for_the_feature_name_table(tmp_path, fmt, size):
    base = tmp_path / f"base.{fmt}"
    qemu_img("create", "-q", "-f", fmt, str(base), str(size))
    backing = read_layer(base, fmt)
    ours, theirs = tmp_path / "ours.qcow2", tmp_path / "theirs.qcow2"
    create_overlay(ours, backing)
    made_by_qemu_img(theirs, backing)
    mine, reference = ours.read_bytes(), theirs.read_bytes()
    # every header field but the backing name's offset (8..16) is qemu-img's; the name sits after our extensions
    assert mine[:8] == reference[:8] and mine[16:112] == reference[16:112]
    assert mine[CLUSTER:] == reference[CLUSTER:]  # refcount table and block, the L1 table, the file's length
    info = json.loads(qemu_img("info", "--output=json", "-f", "qcow2", str(ours)))
    assert info["backing-filename"] == base.name and info["backing-filename-format"] == fmt
    assert info["format-specific"]["data"]["lazy-refcounts"] is True
    assert subprocess.run(["qemu-img", "check", "-f", "qcow2", str(ours)], capture_output=True).returncode == 0
    assert os.stat(ours).st_mode & 0o777 == 0o600


def test_the_guest_reads_the_backing_data_through_an_overlay_and_writes_into_it(tmp_path):
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(base), "16M")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x61 0 1M", str(base)], check=True, capture_output=True)
    top = tmp_path / "sub" / "top.qcow2"
    top.parent.mkdir()
    create_overlay(top, read_layer(base, "qcow2"))
    chain = (read_layer(top, "qcow2"), read_layer(base, "qcow2"))
    assert chain[0].backing_name == "../base.qcow2"
    spec = image_spec(chain)
    subprocess.run(["qemu-io", "-c", "write -P 0x62 64k 64k", spec], check=True, capture_output=True)
    for pattern, offset in ((0x61, 0), (0x62, 65536), (0x61, 131072)):
        read = subprocess.run(["qemu-io", "-r", "-c", f"read -P {pattern} {offset} 64k", spec],
                              capture_output=True, text=True)
        assert "Pattern verification failed" not in read.stdout and read.returncode == 0
    subprocess.run(["qemu-io", "-r", "-f", "qcow2", "-c", "read -P 0x61 64k 64k", str(base)], check=True,
                   capture_output=True)  # the backing file is untouched
    assert subprocess.run(["qemu-img", "check", "-f", "qcow2", str(top)], capture_output=True).returncode == 0


def test_an_overlay_never_replaces_a_file_nor_follows_a_symlink(tmp_path):
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(base), "16M")
    victim = tmp_path / "victim"
    victim.write_bytes(b"host data")
    (tmp_path / "link.qcow2").symlink_to(victim)
    for taken in (tmp_path / "link.qcow2", victim):
        with pytest.raises(FileExistsError):
            create_overlay(taken, read_layer(base, "qcow2"))
    assert victim.read_bytes() == b"host data"


@pytest.mark.parametrize("size", [1 << 63, (32 << 20) // 8 * (512 << 20) + 1])
def test_a_backing_size_qemu_would_refuse_writes_no_overlay(tmp_path, size):
    backing = ImageLayer(tmp_path / "base.qcow2", "qcow2", size)
    with pytest.raises(DiskError, match="too large"):
        create_overlay(tmp_path / "top.qcow2", backing)
    assert not (tmp_path / "top.qcow2").exists()


def test_a_backing_name_qemu_would_parse_is_refused(tmp_path):
    folder = tmp_path / "json:{x}"
    folder.mkdir()
    with pytest.raises(PathError):
        create_overlay(folder / "top.qcow2", ImageLayer(folder / "base.qcow2", "qcow2", 1 << 20),
                       relative_to=tmp_path)
    assert not (folder / "top.qcow2").exists()
