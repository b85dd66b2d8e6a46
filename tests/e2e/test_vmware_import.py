"""VMware VM folders: their .vmdk chains run as they are, and `vm import` copies them in (and boots).

The folders are built here with qemu-img (twoGbMaxExtentSparse, monolithicFlat,
monolithicSparse) plus a handwritten delta descriptor with parentFileNameHint,
the way VMware Workstation lays out a VM with a snapshot.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cli_runner import run_cli

from minivisor.images.layers import read_layer
from minivisor.errors import DiskError, HvError, PathError

from test_snapshots import DATA_DISK, read_mark  # noqa: E402

SPECFILE = """.encoding = "UTF-8"
config.version = "8"
virtualHW.version = "14"
displayName = "Workstation VM"
guestOS = "debian12-64"
memSize = "160"
numvcpus = "1"
scsi0.present = "TRUE"
scsi0.virtualDev = "lsilogic"
scsi0:0.present = "TRUE"
scsi0:0.fileName = "{boot}"
scsi0:1.present = "TRUE"
scsi0:1.fileName = "data-000001.vmdk"
"""

DELTA = """# Disk DescriptorFile
version=1
encoding="UTF-8"
CID=5d8e1a77
parentCID={parent_cid}
createType="twoGbMaxExtentSparse"
parentFileNameHint="{parent}"

# Extent description
RW {sectors} SPARSE "{extent}"

# The Disk Data Base
#DDB

ddb.adapterType = "lsilogic"
"""


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def descriptor_field(path: Path, key: str) -> str:
    for line in path.read_text(errors="replace").splitlines():
        if line.lower().startswith(key.lower() + "="):
            return line.split("=", 1)[1].strip().strip('"')
    raise AssertionError(f"{key} not in {path}")


def handwritten_delta(folder: Path, name: str, parent: str, size: int) -> Path:
    """A VMware-style delta: a descriptor naming its parent, and one sparse extent."""
    scratch = folder / "scratch.vmdk"
    qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse", str(scratch), str(size))
    extent = f"{Path(name).stem}-s001.vmdk"
    (folder / "scratch-s001.vmdk").rename(folder / extent)
    scratch.unlink()
    info = subprocess.run(["qemu-img", "info", "--output=json", "-f", "vmdk", str(folder / parent)],
                          check=True, capture_output=True, text=True).stdout
    cid = f"{json.loads(info)['format-specific']['data']['cid']:08x}"
    (folder / name).write_text(DELTA.format(parent_cid=cid, parent=parent, sectors=size // 512, extent=extent))
    return folder / name


def vmware_folder(where: Path, boot_image: Path, boot_subformat: str) -> Path:
    """A Workstation VM folder whose boot disk holds ``boot_image`` (raw); each disk has a delta on its base."""
    folder = where / "Workstation VM"
    folder.mkdir(parents=True)
    # boot disk: the image as a VMware base disk plus an (empty) handwritten delta on it
    qemu_img("convert", "-f", "raw", "-O", "vmdk", "-o", f"subformat={boot_subformat}", str(boot_image),
             str(folder / "boot.vmdk"))
    size = read_layer(folder / "boot.vmdk", "vmdk").virtual_size
    handwritten_delta(folder, "boot-000001.vmdk", "boot.vmdk", size)
    # data disk: monolithicFlat base with "base" written, a binary monolithicSparse delta with "delta" on top
    qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", str(folder / "data.vmdk"), "16M")
    subprocess.run(["qemu-io", "-f", "vmdk", "-c", "write -P 0x62 512 512", str(folder / "data.vmdk")],
                   check=True, capture_output=True)
    qemu_img("create", "-q", "-f", "vmdk", "-b", "data.vmdk", "-F", "vmdk", str(folder / "data-000001.vmdk"))
    subprocess.run(["qemu-io", "-f", "vmdk", "-c", "write -P 0x64 0 8", str(folder / "data-000001.vmdk")],
                   check=True, capture_output=True)
    (folder / "Workstation VM.vmx").write_text(SPECFILE.format(boot="boot-000001.vmdk"))
    return folder


@pytest.mark.qemu
@pytest.mark.parametrize("subformat", ["twoGbMaxExtentSparse", "monolithicSparse"])
def test_a_vmware_folder_runs_as_it_is_and_imports(hv, appliance_image, tmp_path, subformat):
    source = vmware_folder(tmp_path / "vmware", appliance_image, subformat)
    # 1. as it is: copied into the datastore and registered, the .vmdk chains run without conversion
    in_place = hv.datastore.root / "ws"
    shutil.copytree(source, in_place)
    vm = hv.register_vm(in_place / "Workstation VM.vmx", "ws")
    hv.start_vm(vm.name, wait_ready=True, timeout=90)
    assert read_mark(hv, vm.name) == "dddddddd"
    hv.stop_vm(vm.name, hard=True)
    # 2. imported: chains flattened into self-contained qcow2 disks, with progress
    seen: dict[str, list[float]] = {}
    imported = hv.import_vm(source, progress=lambda disk, p: seen.setdefault(disk, []).append(p))
    assert imported.name == "Workstation-VM" and imported.uuid != vm.uuid
    assert {d["file"] for d in imported.disks} == {"boot.qcow2", "data.qcow2"}
    assert all(values[-1] == 100.0 for values in seen.values()) and len(seen) == 2
    for disk in ("boot.qcow2", "data.qcow2"):
        assert read_layer(hv.datastore.root / imported.name / disk, "qcow2").backing_name is None
    hv.start_vm(imported.name, wait_ready=True, timeout=90)
    assert read_mark(hv, imported.name) == "dddddddd"
    result = hv.exec_in_vm(imported.name, f"dd if={DATA_DISK} bs=512 skip=1 count=1 2>/dev/null | head -c 4")
    assert result.output == "bbbb"  # the parent's data under the delta


def test_a_changed_parent_is_refused_before_anything_runs(hv, tmp_path):
    qemu_img("create", "-q", "-f", "raw", str(tmp_path / "boot.raw"), "1M")
    source = vmware_folder(tmp_path / "vmware", tmp_path / "boot.raw", "twoGbMaxExtentSparse")
    boot = source / "boot.vmdk"
    boot.write_text(boot.read_text().replace("CID=", "CID=1", 1))  # VMware's "parent was modified"
    with pytest.raises(DiskError) as refused:
        hv.import_vm(source)
    assert "modified" in refused.value.message and refused.value.hint
    assert hv.list_vms() == [] and not any(p for p in hv.datastore.root.iterdir() if p.name != ".minivisor")


def untrusted(tmp_path: Path, disk_name: str, make) -> Path:
    folder = tmp_path / "untrusted"
    folder.mkdir()
    make(folder)
    (folder / "vm.vmx").write_text(
        '.encoding = "UTF-8"\nconfig.version = "8"\nvirtualHW.version = "14"\nmemSize = "64"\n'
        f'scsi0.present = "TRUE"\nscsi0:0.present = "TRUE"\nscsi0:0.fileName = "{disk_name}"\n')
    return folder


def _backing_outside(folder: Path) -> None:
    qemu_img("create", "-q", "-f", "qcow2", "-b", "/etc/hostname", "-F", "raw", "-u", str(folder / "d.qcow2"), "1M")


def _data_file(folder: Path) -> None:
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={folder / 'd.raw'}", str(folder / "d.qcow2"), "1M")


def _device_vmdk(folder: Path) -> None:
    (folder / "d.vmdk").write_text('# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n'
                                   'createType="fullDevice"\nRW 2048 FLAT "/dev/sda" 0\n')


def _qcow2_named_raw(folder: Path) -> None:
    qemu_img("create", "-q", "-f", "qcow2", str(folder / "d.img"), "1M")


def _raw_named_vmdk(folder: Path) -> None:
    (folder / "d.vmdk").write_bytes(b"\0" * 65536)


def _huge(folder: Path) -> None:
    qemu_img("create", "-q", "-f", "qcow2", str(folder / "d.qcow2"), "100T")


def _flat_extent_outside(folder: Path) -> None:
    (folder / "d.vmdk").write_text('# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n'
                                   'createType="monolithicFlat"\nRW 2048 FLAT "../../../etc/passwd" 0\n')


@pytest.mark.parametrize("disk_name, make, error, words", [
    ("d.qcow2", _backing_outside, PathError, "outside the VM folder"),
    ("d.qcow2", _data_file, DiskError, "external data file"),
    ("d.vmdk", _device_vmdk, DiskError, "fullDevice"),
    ("d.img", _qcow2_named_raw, DiskError, "qcow2 header"),
    ("d.vmdk", _raw_named_vmdk, DiskError, "neither"),
    ("d.qcow2", _huge, DiskError, "virtual size"),
    ("d.vmdk", _flat_extent_outside, PathError, "outside the VM folder"),
])
def test_untrusted_images_are_rejected_and_leave_nothing(hv, tmp_path, disk_name, make, error, words):
    folder = untrusted(tmp_path, disk_name, make)
    result = run_cli("vm", "import", str(folder), datastore=hv.datastore.root)
    assert result.returncode == error.exit_code, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1 and words in result.stderr
    assert hv.list_vms() == []
    assert not [p for p in hv.datastore.root.iterdir() if p.name != ".minivisor"]
    assert not any((hv.datastore.meta / "staging").glob("*")) if (hv.datastore.meta / "staging").exists() else True
    with pytest.raises(HvError):
        hv.import_vm(folder)
