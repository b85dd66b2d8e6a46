"""Disk images that name host files: refused at import, convert, create --boot-disk and power-on.

Each attack plants a secret outside the datastore and an image whose header
(or VMDK descriptor) points at it, the way an attacker ships a VM folder or
drops a disk into one. The refusal is one line with the right exit code, and
afterwards nothing under the datastore holds the secret and nothing changed.
"""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest
from cli_runner import run_cli
from refusals import assert_one_clear_line, datastore_state
from attacks import (
    add_keys,
    assert_no_leak,
    assert_no_vmm_started,
    json_backing,
    make_name_exist,
    plant_secret,
    qcow2_backed_by,
    qemu_img,
    with_token,
)

from minivisor.images.layers import read_layer
from minivisor.errors import DiskError, HvError, PathError, StateError

SPECFILE = ('.encoding = "UTF-8"\nconfig.version = "8"\nvirtualHW.version = "14"\nmemSize = "64"\n'
            'scsi0.present = "TRUE"\nscsi0:0.present = "TRUE"\nscsi0:0.fileName = "{disk}"\n')


def vmware_folder(tmp_path: Path, disk: str) -> Path:
    """A downloaded VM folder (outside the datastore) whose specfile boots ``disk``."""
    folder = tmp_path / "downloads" / "vm"
    folder.mkdir(parents=True)
    (folder / "vm.vmx").write_text(SPECFILE.format(disk=disk))
    return folder


def _json_backing(folder: Path, secret) -> str:
    """The json: name, made to exist as a relative path too (so "does the backing file exist here?" says yes)."""
    name = json_backing(secret)
    make_name_exist(folder, name)
    qcow2_backed_by(folder / "d.qcow2", name)
    return "d.qcow2"


def _absolute_backing(folder: Path, secret) -> str:
    qcow2_backed_by(folder / "d.qcow2", str(secret.path))
    return "d.qcow2"


def _relative_backing(folder: Path, secret) -> str:
    qcow2_backed_by(folder / "d.qcow2", os.path.relpath(secret.path, folder))
    return "d.qcow2"


def _symlinked_backing(folder: Path, secret) -> str:
    os.symlink(secret.path, folder / "base.raw")
    qcow2_backed_by(folder / "d.qcow2", "base.raw")
    return "d.qcow2"


def _vmdk_parent_json(folder: Path, secret) -> str:
    (folder / "d-s001.vmdk").write_bytes(b"")
    qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", str(folder / "d.vmdk"), "1M")
    text = (folder / "d.vmdk").read_text()
    (folder / "d.vmdk").write_text(text.replace('createType="monolithicFlat"', 'createType="monolithicFlat"\n'
                                                f'parentFileNameHint="{json_backing(secret)}"\nparentCID=fffffffe'))
    return "d.vmdk"


def _vmdk_extent_protocol(folder: Path, secret) -> str:
    (folder / "d.vmdk").write_text('# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n'
                                   f'createType="monolithicFlat"\nRW 2048 FLAT "json:{{\\"driver\\":\\"file\\",'
                                   f'\\"filename\\":\\"{secret.path}\\"}}" 0\n')
    return "d.vmdk"


# VMDK descriptors whose extent QEMU opens but a reader less literal than QEMU's (block/vmdk.c) would miss
DESCRIPTOR = '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="{kind}"\n'


def _descriptor(folder: Path, extents: str, kind: str = "monolithicFlat", *, padding: str = "") -> str:
    (folder / "d.vmdk").write_text(DESCRIPTOR.format(kind=kind) + padding + extents)
    return "d.vmdk"


def _sparse_header(descriptor: bytes, capacity: int = 0, desc_offset: int = 1, desc_size: int = 20) -> bytes:
    """A VMware sparse header (KDMV) with ``descriptor`` embedded at sector 1 and no grains."""
    header = struct.pack("<4sIIQQQQIQQQx4sH", b"KDMV", 1, 3, capacity, 128, desc_offset, desc_size, 512, 21, 22,
                         128, b"\n \r\n", 0)
    return header.ljust(512, b"\0") + descriptor.ljust(20 * 512, b"\0")


def _vmdk_extent_after_64k(folder: Path, secret) -> str:
    # QEMU reads 1 MiB of a descriptor
    return _descriptor(folder, f'RW 2048 FLAT "{secret.path}" 0\n', padding="#" + "x" * 70000 + "\n")


def _vmdk_extent_signed_size(folder: Path, secret) -> str:
    return _descriptor(folder, f'RW +2048 FLAT "{secret.path}" 0\n')


def _vmdk_extent_size_touching_type(folder: Path, secret) -> str:
    return _descriptor(folder, f'RW 2048FLAT "{secret.path}" 0\n')


def _vmdk_extent_type_touching_name(folder: Path, secret) -> str:
    return _descriptor(folder, f'RW 2048 VMFSSPARSE"{secret.path}"\n', "vmfsSparse")


def _vmdk_extent_over_two_lines(folder: Path, secret) -> str:
    return _descriptor(folder, f'RW 2048 FLAT\n"{secret.path}" 0\n')


def _vmdk_extent_name_with_form_feed(folder: Path, secret) -> str:
    # a line end to Python's splitlines, part of the name to QEMU
    os.symlink(secret.path, folder / "a\fb")
    return _descriptor(folder, 'RW 2048 FLAT "a\fb" 0\n')


def _vmdk_sparse_header_with_descriptor(folder: Path, secret) -> str:
    # capacity 0: QEMU opens the embedded descriptor as a descriptor file, extents and all
    descriptor = DESCRIPTOR.format(kind="monolithicFlat") + f'RW 2048 FLAT "{secret.path}" 0\n'
    (folder / "d.vmdk").write_bytes(_sparse_header(descriptor.encode()))
    return "d.vmdk"


def _vmdk_sparse_extent_with_descriptor(folder: Path, secret) -> str:
    descriptor = DESCRIPTOR.format(kind="monolithicFlat") + f'RW 2048 FLAT "{secret.path}" 0\n'
    (folder / "d-s001.vmdk").write_bytes(_sparse_header(descriptor.encode()))
    return _descriptor(folder, 'RW 2048 SPARSE "d-s001.vmdk"\n', "twoGbMaxExtentSparse")


ATTACKS = [(_json_backing, PathError, "protocol"), (_absolute_backing, PathError, "outside the VM folder"),
           (_relative_backing, PathError, "outside the VM folder"), (_symlinked_backing, PathError, "outside the VM folder"),
           (_vmdk_parent_json, PathError, "protocol"), (_vmdk_extent_protocol, PathError, "protocol"),
           (_vmdk_extent_after_64k, PathError, "outside the VM folder"),
           (_vmdk_extent_signed_size, DiskError, "extent line"),
           (_vmdk_extent_size_touching_type, DiskError, "extent line"),
           (_vmdk_extent_type_touching_name, DiskError, "extent line"),
           (_vmdk_extent_over_two_lines, DiskError, "extent line"),
           (_vmdk_extent_name_with_form_feed, PathError, "outside the VM folder"),
           (_vmdk_sparse_header_with_descriptor, PathError, "outside the VM folder"),
           (_vmdk_sparse_extent_with_descriptor, DiskError, "descriptor of its own")]


@pytest.mark.parametrize("plant, error, words", ATTACKS, ids=[a[0].__name__.strip("_") for a in ATTACKS])
def test_vm_import_refuses_an_image_that_names_a_host_file(hv, tmp_path, plant, error, words):
    secret = plant_secret(tmp_path / "host")
    folder = vmware_folder(tmp_path, "placeholder")
    disk = plant(folder, secret)
    (folder / "vm.vmx").write_text(SPECFILE.format(disk=disk))
    with_token(hv)
    before = datastore_state(hv.datastore.root)
    result = run_cli("vm", "import", str(folder), datastore=hv.datastore.root)
    assert_one_clear_line(result, error.exit_code, words)
    with pytest.raises(error):
        hv.import_vm(folder)
    assert datastore_state(hv.datastore.root) == before and hv.list_vms() == []
    assert_no_leak(hv, secret)


@pytest.mark.parametrize("desc_offset, desc_size", [(1, 2 ** 62), (1, 2 ** 40), (2 ** 63, 20), (2 ** 55 + 1, 20)],
                         ids=["size-past-index", "size-past-memory", "offset-past-int64", "offset-wrapping"])
def test_vm_import_reads_a_sparse_header_with_an_absurd_descriptor_place_as_qemu_does(hv, tmp_path, desc_offset,
                                                                                     desc_size):
    # QEMU opens such a disk (it reads a sparse disk's descriptor at sector 1 whatever the header says): so does
    # the import, instead of failing with an internal error
    folder = vmware_folder(tmp_path, "d.vmdk")
    descriptor = DESCRIPTOR.format(kind="monolithicSparse") + 'RW 2048 SPARSE "d.vmdk"\n'
    (folder / "d.vmdk").write_bytes(_sparse_header(descriptor.encode(), 2048, desc_offset, desc_size).ljust(65536, b"\0"))
    result = run_cli("vm", "import", str(folder), datastore=hv.datastore.root)
    assert result.returncode == 0, result.stderr
    assert read_layer(hv.datastore.root / "vm" / "d.qcow2", "qcow2").virtual_size == 2048 * 512


@pytest.mark.parametrize("field, value", [(slice(8, 16), struct.pack(">Q", 2 ** 63)),
                                          (slice(16, 20), struct.pack(">I", 2 ** 32 - 1))],
                         ids=["backing-offset-past-int64", "backing-name-of-4-gib"])
def test_vm_import_of_a_qcow2_header_with_an_absurd_backing_name_is_one_line(hv, tmp_path, field, value):
    folder = vmware_folder(tmp_path, "d.qcow2")
    (folder / "base.raw").write_bytes(b"\0" * 1024 * 1024)
    header = bytearray(qcow2_backed_by(folder / "d.qcow2", "base.raw").read_bytes())
    header[field] = value
    (folder / "d.qcow2").write_bytes(header)
    before = datastore_state(hv.datastore.root)
    result = run_cli("vm", "import", str(folder), datastore=hv.datastore.root)
    assert_one_clear_line(result, DiskError.exit_code, "d.qcow2", "corrupt")
    assert datastore_state(hv.datastore.root) == before and hv.list_vms() == []


def test_disk_convert_and_info_refuse_a_json_backing_inside_the_datastore(hv, tmp_path):
    secret = plant_secret(tmp_path / "host")
    hv.create_vm("web", memory_mib=64, disk_size="16M", network="none")
    _json_backing(hv.datastore.root / "web", secret)
    with_token(hv)
    before = datastore_state(hv.datastore.root)
    for command in (["disk", "convert", "web/d.qcow2", "web/copy.qcow2"], ["disk", "info", "web/d.qcow2"]):
        result = run_cli(*command, datastore=hv.datastore.root, cwd=hv.datastore.root)
        assert_one_clear_line(result, PathError.exit_code, "protocol")
    assert datastore_state(hv.datastore.root) == before
    assert_no_leak(hv, secret)


@pytest.mark.parametrize("plant", [_json_backing, _absolute_backing, _symlinked_backing, _vmdk_extent_after_64k,
                                   _vmdk_sparse_header_with_descriptor],
                         ids=["json", "absolute", "symlink", "vmdk-extent-after-64k", "vmdk-sparse-header-descriptor"])
def test_power_on_refuses_a_disk_chained_to_a_host_file_before_qemu_starts(hv, tmp_path, plant):
    secret = plant_secret(tmp_path / "host")
    hv.create_vm("web", memory_mib=64, disk_size="16M", network="none")
    folder = hv.datastore.root / "web"
    disk = plant(folder, secret)
    add_keys(folder / "web.vmx", f'scsi0:1.present = "TRUE"\nscsi0:1.fileName = "{disk}"\n')
    with_token(hv)
    before = datastore_state(hv.datastore.root)
    for command in ("start", "explain"):
        result = run_cli("vm", command, "web", datastore=hv.datastore.root)
        assert_one_clear_line(result, PathError.exit_code, disk, "protocol" if plant is _json_backing else "outside")
    assert_no_vmm_started(hv, "web")
    assert datastore_state(hv.datastore.root) == before
    assert_no_leak(hv, secret)


def boot_image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    return folder


def _plain(images: Path, secret) -> Path:
    return secret.path  # the secret itself, named as a raw boot image (not in an allowed folder)


def _qcow2_on_secret(images: Path, secret) -> Path:
    return qcow2_backed_by(images / "boot.qcow2", str(secret.path))


def _qcow2_on_json(images: Path, secret) -> Path:
    name = json_backing(secret)
    make_name_exist(images, name)
    return qcow2_backed_by(images / "boot.qcow2", name)


def _symlink_to_secret(images: Path, secret) -> Path:
    os.symlink(secret.path, images / "boot.raw")
    return images / "boot.raw"


def _inside_the_datastore(images: Path, secret) -> Path:
    return images.parent / "datastore" / "other" / "other.qcow2"  # another VM's disk (made by the test)


BOOT_ATTACKS = [(_plain, "allow-path"), (_qcow2_on_secret, "allow-path"), (_qcow2_on_json, "protocol"),
                (_symlink_to_secret, "allow-path"), (_inside_the_datastore, "inside the datastore")]


@pytest.mark.parametrize("interface", ["cli", "api"])
@pytest.mark.parametrize("plant, words", BOOT_ATTACKS, ids=[a[0].__name__.strip("_") for a in BOOT_ATTACKS])
def test_create_refuses_a_boot_disk_outside_the_allowed_folders(hv, tmp_path, plant, words, interface):
    secret = plant_secret(tmp_path / "host", "secret.img")
    hv.create_vm("other", memory_mib=64, disk_size="16M", network="none")
    images = boot_image_folder(tmp_path)
    hv.allow_path(images)  # the attacker's image sits in a folder the user allowed; what it names does not
    image = plant(images, secret)
    with_token(hv)
    before = datastore_state(hv.datastore.root)
    if interface == "cli":
        result = run_cli("vm", "create", "v", "--memory", "64", "--network", "none", "--boot-disk", str(image),
                         datastore=hv.datastore.root)
        assert_one_clear_line(result, PathError.exit_code, words)
    else:
        with pytest.raises(PathError) as refused:
            hv.create_vm("v", memory_mib=64, network="none", boot_disk=image)
        assert words in str(refused.value) + refused.value.hint
    assert datastore_state(hv.datastore.root) == before and [vm.name for vm in hv.list_vms()] == ["other"]
    assert_no_leak(hv, secret)


def test_the_refusal_says_how_to_allow_the_images_folder_and_that_works(hv, tmp_path):
    images = boot_image_folder(tmp_path)
    qemu_img("create", "-q", "-f", "qcow2", str(images / "base.qcow2"), "8M")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x61 0 64k", str(images / "base.qcow2")],
                   check=True, capture_output=True)
    qcow2_backed_by(images / "boot.qcow2", "base.qcow2", "qcow2")
    refused = run_cli("vm", "create", "v", "--memory", "64", "--network", "none",
                      "--boot-disk", str(images / "boot.qcow2"), datastore=hv.datastore.root)
    hinted = f"minivisor datastore allow-path {images}"
    assert_one_clear_line(refused, PathError.exit_code, hinted)
    assert run_cli(*hinted.split()[1:], datastore=hv.datastore.root).returncode == 0
    created = run_cli("vm", "create", "v", "--memory", "64", "--network", "none",
                      "--boot-disk", str(images / "boot.qcow2"), datastore=hv.datastore.root)
    assert created.returncode == 0, created.stderr
    copy = read_layer(hv.datastore.root / "v" / "v.qcow2", "qcow2")
    assert copy.backing_name is None  # flattened: the VM owns all of its data
    out = tmp_path / "first.raw"
    qemu_img("dd", "-f", "qcow2", "-O", "raw", f"if={copy.path}", f"of={out}", "bs=65536", "count=1")
    assert out.read_bytes() == b"a" * 65536


def test_allow_path_refuses_a_folder_inside_the_datastore(hv):
    hv.create_vm("other", memory_mib=64, disk_size="16M", network="none")
    with_token(hv)
    before = datastore_state(hv.datastore.root)
    for folder in (hv.datastore.root / "other", hv.datastore.meta, hv.datastore.root):
        result = run_cli("datastore", "allow-path", str(folder), datastore=hv.datastore.root)
        assert_one_clear_line(result, PathError.exit_code, "inside the datastore")
    with pytest.raises(HvError):
        hv.allow_path(hv.datastore.root / "other")
    assert datastore_state(hv.datastore.root) == before and hv.datastore_info()["allowed_paths"] == []


@pytest.mark.parametrize("name", ["ABSOLUTE", "../../../host/saved.vmss"])
def test_vm_import_does_not_learn_whether_a_host_file_named_as_the_suspended_state_exists(hv, tmp_path, name):
    """checkpoint.vmState naming a file outside the folder: the import's refusal named the folder when that host
    file existed and the specfile's line when it did not, telling whoever wrote the specfile whether a host path
    exists. Only a state file in the folder is looked for now: the answer is the same either way."""
    host_file = tmp_path / "host" / "saved.vmss"
    host_file.parent.mkdir()
    state = str(host_file) if name == "ABSOLUTE" else name
    answers = []
    for exists in (True, False):
        host_file.write_bytes(b"a host file") if exists else host_file.unlink()
        folder = vmware_folder(tmp_path / f"exists-{exists}", "d.raw")
        (folder / "d.raw").write_bytes(b"\0" * 65536)
        with open(folder / "vm.vmx", "a") as vmx:
            vmx.write(f'checkpoint.vmState = "{state}"\n')
        result = run_cli("vm", "import", str(folder), "--name", f"vm{exists}", datastore=hv.datastore.root)
        answers.append((result.returncode, result.stderr.replace(str(folder), "FOLDER").replace(f"vm{exists}", "VM")))
    assert answers[0] == answers[1] and answers[0][0] == StateError.exit_code, answers


def test_vm_import_still_refuses_a_vm_suspended_in_its_own_folder(hv, tmp_path):
    folder = vmware_folder(tmp_path, "d.raw")
    (folder / "d.raw").write_bytes(b"\0" * 65536)
    (folder / "vm-1.vmss").write_bytes(b"the suspended guest's memory")
    with open(folder / "vm.vmx", "a") as vmx:
        vmx.write('checkpoint.vmState = "vm-1.vmss"\n')
    before = datastore_state(hv.datastore.root)
    assert_one_clear_line(run_cli("vm", "import", str(folder), datastore=hv.datastore.root), StateError.exit_code,
                          "suspended")
    assert datastore_state(hv.datastore.root) == before
