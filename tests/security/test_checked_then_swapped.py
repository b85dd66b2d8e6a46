"""A stranger's VMware folder that changes between minivisor's checks and the copy reads no host file.

The import checks every file the specfile and the disk headers name, then qemu-img copies the disks and
minivisor the CD-ROM images, opening them by name again. Whoever can write the folder meanwhile (a shared
folder, another user's) swaps a checked file for a link to a host file, or rewrites a descriptor to name one,
and the copy would carry that file into a VM whose guest is theirs. Each test acts in that window (the copy
is wrapped to act first), and looks for the host file's bytes everywhere in the datastore. The control:
the same import, left alone, succeeds and carries the folder's data.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from minivisor.errors import DiskError
from minivisor.images.confine import confined_argv, landlock_abi
from minivisor.images.layers import Pin
from minivisor.storage import vmware

pytestmark = pytest.mark.skipif(landlock_abi() < 1, reason="the kernel has no Landlock: qemu-img runs unconfined")

SECRET = b"HOST-SECRET-" * (1024 * 1024 // 12 + 1)  # a host file, 1 MiB of it, as large as the flat extent
GUEST_DATA = b"the folder's own disk data"
VMX = """config.version = "8"
virtualHW.version = "14"
memSize = "64"
scsi0.present = "TRUE"
scsi0:0.present = "TRUE"
scsi0:0.fileName = "disk.vmdk"
ide1:0.present = "TRUE"
ide1:0.deviceType = "cdrom-image"
ide1:0.fileName = "media.iso"
"""


@pytest.fixture
def stranger(tmp_path) -> tuple[Path, Path]:
    """A VMware folder (a monolithicFlat disk: a descriptor and a flat extent of raw data; a CD-ROM image) and a
    host file beside it, outside the folder."""
    folder = tmp_path / "stranger"
    folder.mkdir()
    (folder / "stranger.vmx").write_text(VMX)
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat",
                    str(folder / "disk.vmdk"), "1M"], check=True)
    with open(folder / "disk-flat.vmdk", "r+b") as flat:
        flat.write(GUEST_DATA)
    (folder / "media.iso").write_bytes(GUEST_DATA.ljust(64 * 1024, b"\0"))
    secret = tmp_path / "host-secret"
    secret.write_bytes(SECRET[:1024 * 1024])
    return folder, secret


def act_before(monkeypatch, copier: str, act) -> None:
    """``act()`` once the checks are over, just before the import's first ``copier`` call (convert_disk,
    copy_sparse): where a writer of the folder would act."""
    original = getattr(vmware, copier)

    def acting_first(*args, **kwargs):
        act()
        return original(*args, **kwargs)
    monkeypatch.setattr(vmware, copier, acting_first)


def leaked(root: Path) -> list[str]:
    """The datastore's files that hold the host file's bytes."""
    return [str(path) for path in root.rglob("*") if path.is_file() and b"HOST-SECRET-HOST" in path.read_bytes()]


def test_the_control_import_left_alone_carries_the_folders_data(hv, stranger, tmp_path):
    folder, _ = stranger
    vm = hv.import_vm(folder, "left-alone")
    copy = tmp_path / "copy.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(Path(vm.vmx).parent / "disk.qcow2"),
                    str(copy)], check=True)
    assert copy.read_bytes().startswith(GUEST_DATA)
    assert (Path(vm.vmx).parent / "media.iso").read_bytes().startswith(GUEST_DATA)


@pytest.mark.parametrize("copier, file, refusal", [
    ("convert_disk", "disk-flat.vmdk", "no longer the file minivisor checked"),  # qemu-img's, confined
    ("copy_sparse", "media.iso", "changed since minivisor checked it"),  # minivisor's own
])
def test_a_file_swapped_for_a_link_to_a_host_file_is_not_read(hv, stranger, monkeypatch, copier, file, refusal):
    folder, secret = stranger

    def swap() -> None:
        (folder / file).unlink()
        (folder / file).symlink_to(secret)
    act_before(monkeypatch, copier, swap)
    with pytest.raises(DiskError, match=refusal):
        hv.import_vm(folder, "swapped")
    assert hv.list_vms() == [] and leaked(hv.datastore.root) == []


def test_a_descriptor_rewritten_to_name_a_host_file_is_not_followed(hv, stranger, monkeypatch):
    folder, secret = stranger

    def rewrite() -> None:  # the same file (it stays pinned), now naming the host file as its extent
        descriptor = (folder / "disk.vmdk").read_text().replace('"disk-flat.vmdk"', f'"{secret}"')
        with open(folder / "disk.vmdk", "r+") as handle:
            handle.write(descriptor)
    act_before(monkeypatch, "convert_disk", rewrite)
    with pytest.raises(DiskError, match="Permission denied"):
        hv.import_vm(folder, "rewritten")
    assert hv.list_vms() == [] and leaked(hv.datastore.root) == []


def test_a_confined_program_reads_only_what_it_is_given_and_only_as_it_was(tmp_path):
    given, other = tmp_path / "given", tmp_path / "other"
    given.write_text("given\n")
    other.write_text("other\n")
    pin = Pin.of(given, os.stat(given))

    def cat(path: Path, read: list) -> subprocess.CompletedProcess:
        return subprocess.run(confined_argv(["cat", str(path)], read=read, write=[]), capture_output=True, text=True)
    assert cat(given, [pin]).stdout == "given\n"
    assert "Permission denied" in cat(other, [pin]).stderr
    given.unlink()
    given.symlink_to(other)  # the name now leads elsewhere: refused before the program runs
    refused = cat(given, [pin])
    assert refused.returncode != 0 and "no longer the file minivisor checked" in refused.stderr


@pytest.mark.skipif(landlock_abi() < 4, reason="Landlock handles TCP from ABI 4 (Linux 6.7)")
def test_a_confined_program_connects_to_no_tcp_port(tmp_path):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        # bash from /usr, not the tests' Python: a Python outside /usr (pyenv's) cannot even start confined
        probe = ["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"]
        assert subprocess.run(probe).returncode == 0  # the check itself works
        refused = subprocess.run(confined_argv(probe, read=[], write=[]), capture_output=True, text=True)
    assert refused.returncode != 0 and "Permission denied" in refused.stderr
