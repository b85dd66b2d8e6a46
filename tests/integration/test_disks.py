"""Disk files with the real qemu-img: thin and thick, info, resize, convert, chains, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_runner import run_cli
from refusals import host_refused_line, immutable

from minivisor import Hypervisor
from minivisor.images.layers import allocated_bytes, read_layer, resolve_chain
from minivisor.images.qemu_img import check_disk
from minivisor.errors import ArgumentError, DiskError, HostError, PathError

TIB = 1024 ** 4


@pytest.fixture
def hv(tmp_path) -> Hypervisor:
    return Hypervisor(tmp_path / "ds")


def cli(hv: Hypervisor, *args: str) -> subprocess.CompletedProcess:
    return run_cli(*args, datastore=hv.datastore.root, cwd=hv.datastore.root)


def qemu_img_info(path: Path, fmt: str) -> dict:
    out = subprocess.run(["qemu-img", "info", "--output=json", "-f", fmt, str(path)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


@pytest.mark.parametrize("fmt", ["qcow2", "vmdk", "raw"])
def test_a_thin_1_tib_disk_is_created_and_takes_almost_no_space(hv, fmt):
    info = hv.disk_create(hv.datastore.root / f"big.{fmt}", "1T")
    assert info["virtual_size"] == TIB and info["format"] == fmt and info["thin"]
    assert info["allocated"] < 2 * 1024 * 1024
    assert qemu_img_info(hv.datastore.root / f"big.{fmt}", fmt)["virtual-size"] == TIB
    assert check_disk(read_layer(hv.datastore.root / f"big.{fmt}", fmt))[0] == 0


@pytest.mark.parametrize("fmt", ["qcow2", "vmdk", "raw"])
def test_a_thick_disk_is_fully_allocated_up_front(hv, fmt):
    info = hv.disk_create(hv.datastore.root / f"thick.{fmt}", "32M", thick=True)
    assert not info["thin"] and info["allocated"] >= 32 * 1024 * 1024


def test_a_thin_disk_grows_as_data_is_written(hv):
    path = hv.datastore.root / "grow.qcow2"
    before = hv.disk_create(path, "1G")["allocated"]
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 8M", str(path)], check=True,
                   capture_output=True)
    after = hv.disk_info(path)["allocated"]
    assert after - before >= 8 * 1024 * 1024


def test_info_shows_the_chain_and_resize_grows_but_never_shrinks(hv):
    root = hv.datastore.root
    hv.disk_create(root / "base.qcow2", "64M")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
                    str(root / "top.qcow2")], check=True)
    info = hv.disk_info(root / "top.qcow2")
    assert [layer["file"] for layer in info["chain"]] == [str(root / "top.qcow2"), str(root / "base.qcow2")]
    assert info["chain"][0]["backing_format"] == "qcow2"
    assert hv.disk_resize(root / "top.qcow2", "128M")["virtual_size"] == 128 * 1024 * 1024
    before = (root / "top.qcow2").read_bytes()
    with pytest.raises(DiskError) as shrink:
        hv.disk_resize(root / "top.qcow2", "32M")
    assert "cut off data" in shrink.value.message
    assert (root / "top.qcow2").read_bytes() == before
    hv.disk_create(root / "v.vmdk", "8M")
    with pytest.raises(DiskError) as vmdk:
        hv.disk_resize(root / "v.vmdk", "16M")
    assert "convert" in vmdk.value.hint


def test_convert_reports_progress_and_copies_the_data(hv):
    root = hv.datastore.root
    hv.disk_create(root / "src.qcow2", "64M")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x33 1M 4M", str(root / "src.qcow2")], check=True,
                   capture_output=True)
    for target, fmt in (("copy.vmdk", "vmdk"), ("copy.raw", "raw"), ("copy2.qcow2", "qcow2")):
        seen: list[float] = []
        info = hv.disk_convert(root / "src.qcow2", root / target, progress=seen.append)
        assert info["format"] == fmt and seen[-1] == 100.0 and seen == sorted(seen)
        same = subprocess.run(["qemu-img", "compare", "-q", "-f", "qcow2", "-F", fmt, str(root / "src.qcow2"),
                               str(root / target)])
        assert same.returncode == 0
    # the CLI shows progress (on stderr; not a terminal here: a line per quarter) and the result
    result = cli(hv, "disk", "convert", "src.qcow2", "out.vmdk")
    assert result.returncode == 0 and "vmdk" in result.stdout
    shown = [int(line.removeprefix("converting src.qcow2: ").removesuffix("%")) for line in result.stderr.splitlines()]
    assert shown == sorted(set(shown)) and shown[-1] == 100 and all(p % 25 == 0 for p in shown), result.stderr


def test_vmdk_subformats_and_a_handwritten_delta_form_a_checked_chain(hv, tmp_path):
    root = hv.datastore.root
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse",
                    str(root / "base.vmdk"), "32M"], check=True)
    cid = qemu_img_info(root / "base.vmdk", "vmdk")["format-specific"]["data"]["cid"]
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse",
                    str(root / "scratch.vmdk"), "32M"], check=True)
    (root / "scratch-s001.vmdk").rename(root / "base-000001-s001.vmdk")
    (root / "scratch.vmdk").unlink()
    delta = root / "base-000001.vmdk"
    text = ('# Disk DescriptorFile\nversion=1\nCID=11112222\nparentCID={cid:08x}\ncreateType="twoGbMaxExtentSparse"\n'
            'parentFileNameHint="base.vmdk"\n\n# Extent description\nRW 65536 SPARSE "base-000001-s001.vmdk"\n')
    delta.write_text(text.format(cid=cid))

    def resolve(base: Path, name: str) -> Path:
        return hv.datastore.resolve(base, name)

    chain = resolve_chain(delta, "vmdk", resolve)
    assert [(layer.path.name, layer.format) for layer in chain] == [("base-000001.vmdk", "vmdk"),
                                                                    ("base.vmdk", "vmdk")]
    assert hv.disk_info(delta)["chain"][1]["create_type"] == "twoGbMaxExtentSparse"
    delta.write_text(text.format(cid=cid ^ 1))
    with pytest.raises(DiskError) as changed:
        resolve_chain(delta, "vmdk", resolve)
    assert "modified" in changed.value.message
    delta.write_text(text.format(cid=cid).replace("base.vmdk", "/etc/passwd.vmdk"))
    with pytest.raises(PathError):
        resolve_chain(delta, "vmdk", resolve)


def test_a_guest_written_qcow2_header_does_not_turn_a_raw_disk_into_qcow2(hv):
    """Probe attack: a raw disk whose first bytes look like a qcow2 pointing at a host file stays raw."""
    root = hv.datastore.root
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "/etc/shadow", "-F", "raw", "-u",
                    str(root / "evil.raw"), "1M"], check=True)
    info = hv.disk_info(root / "evil.raw")
    assert info["format"] == "raw" and len(info["chain"]) == 1
    hv.disk_resize(root / "evil.raw", "2M")  # qemu-img resize -f raw: the header is data
    assert qemu_img_info(root / "evil.raw", "raw")["virtual-size"] == 2 * 1024 * 1024


@pytest.mark.parametrize("args, code, words", [
    (["disk", "create", "/etc/minivisor-test.qcow2", "--size", "1G"], PathError.exit_code, "outside the datastore"),
    (["disk", "create", "x.qcow2", "--size", "lots"], ArgumentError.exit_code, "not a size"),
    (["disk", "create", "x.qcow2", "--size", "1G", "--format", "raw"], DiskError.exit_code, "named like"),
    (["disk", "info", "missing.qcow2"], DiskError.exit_code, "does not exist"),
    (["disk", "resize", "/etc/hostname", "1G"], PathError.exit_code, "outside the datastore"),
    (["disk", "convert", "missing.qcow2", "y.vmdk"], DiskError.exit_code, "does not exist"),
])
def test_bad_input_gives_one_line_and_writes_nothing(hv, args, code, words):
    before = sorted(os.listdir(hv.datastore.root))
    result = cli(hv, *args)
    assert result.returncode == code, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ") and words in result.stderr
    assert sorted(os.listdir(hv.datastore.root)) == before
    assert not Path("/etc/minivisor-test.qcow2").exists()


@pytest.mark.parametrize("folder, reason", [("gone", "No such file or directory"),
                                            ("frozen", "Operation not permitted")])
@pytest.mark.parametrize("args", [["disk", "create", "--size", "1M"], ["disk", "convert", "src.qcow2"]])
def test_a_disk_its_folder_cannot_take_is_refused_in_one_line_and_leaves_nothing(hv, folder, reason, args):
    """A new disk's folder is missing, or immutable (chattr +i: read-only even for root): one clear line, not an
    'internal error: PermissionError' once the disk was built, and nothing left there or in staging."""
    root = hv.datastore.root
    hv.disk_create(root / "src.qcow2", "1M")
    (root / "frozen").mkdir()
    with immutable(root / "frozen"):
        refused = cli(hv, *args, f"{folder}/new.vmdk")
    assert refused.returncode == HostError.exit_code and refused.stderr.splitlines()[-1:] == [
        host_refused_line(f"write the disk {root / folder / 'new.vmdk'}: {reason}")]
    assert all(line.startswith("converting ") for line in refused.stderr.splitlines()[:-1]), refused.stderr
    assert sorted(os.listdir(root)) == [".minivisor", "frozen", "src.qcow2"] and not os.listdir(root / "frozen")
    assert not os.listdir(root / ".minivisor" / "staging")


def test_a_vms_disks_are_listed_and_grown_through_the_vm(hv):
    hv.create_vm("v", memory_mib=64, disk_size="1G", network="none")
    (disk,) = hv.vm_disks("v")
    assert (disk["node"], disk["fileName"], disk["virtual_size"]) == ("scsi0:0", "v.qcow2", 1024 ** 3)
    assert allocated_bytes(read_layer(hv.datastore.root / "v" / "v.qcow2", "qcow2")) == disk["allocated"]
    assert hv.vm_disk_resize("v", "scsi0:0", "2G")["virtual_size"] == 2 * 1024 ** 3
    listed = cli(hv, "vm", "disk", "v", "list")
    assert listed.returncode == 0 and "scsi0:0" in listed.stdout and "2 GiB" in listed.stdout


def test_operations_on_one_vms_disks_from_many_processes_take_turns_and_lose_nothing(hv):
    """Eight processes snapshot one VM at once: each waits its turn, so every snapshot is in the tree,
    each on the one before, and the disk's chain has a layer for each (no lost update)."""
    hv.create_vm("v", memory_mib=64, disk_size="16M", network="none")
    env = {**os.environ, "MINIVISOR_DIRECT": "1"}
    argv = [sys.executable, "-m", "minivisor", "--datastore", str(hv.datastore.root), "snapshot", "take", "v"]
    takers = [subprocess.Popen([*argv, f"s{i}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for i in range(8)]
    for taker in takers:
        _, err = taker.communicate(timeout=120)
        assert taker.returncode == 0, err
    tree = hv.snapshot_list("v")
    assert sorted(s["name"] for s in tree) == [f"s{i}" for i in range(8)]
    assert [s["depth"] for s in tree] == list(range(8))  # one chain: each taken on the one before
    (disk,) = hv.vm_disks("v")
    assert len(disk["chain"]) == 9
    assert check_disk(read_layer(Path(disk["file"]), "qcow2"))[0] == 0
