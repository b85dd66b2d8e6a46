"""Serial ports, floppies and CD-ROMs aimed at the datastore's metadata, another VM, or the VM's own state.

The attacker writes the specfile (of a registered VM, or one being registered
or imported). A serial port's file is truncated at power-on and then written by
the guest; a floppy is handed to the guest read-write; a CD-ROM read-only. Every
such name must be refused before QEMU starts, with the token, the catalog and
the other VM's files unchanged.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from cli_runner import run_cli
from refusals import assert_one_clear_line, datastore_state
from attacks import (
    add_keys,
    assert_no_leak,
    assert_no_vmm_started,
    plant_secret,
    with_token,
)

from minivisor.datastore.store import VM_FILES
from minivisor.errors import PathError, SpecError
from minivisor.core.events import LOG_NAME
from minivisor.storage.journal import JOURNAL_NAME
from minivisor.datastore.layout import VmPaths
from minivisor.spec.vmx import VmxDocument

DEVICES = {
    "serial": 'serial1.present = "TRUE"\nserial1.fileType = "file"\nserial1.fileName = "{}"\n',
    "floppy": 'floppy0.present = "TRUE"\nfloppy0.fileType = "file"\nfloppy0.fileName = "{}"\n',
    "cdrom": 'ide1:0.present = "TRUE"\nide1:0.deviceType = "cdrom-image"\nide1:0.fileName = "{}"\n',
}
TARGETS = {  # name in the specfile -> words of the refusal
    "../.minivisor/token": "own metadata",
    "../.minivisor/catalog.sqlite": "own metadata",
    "{root}/.minivisor/token": "own metadata",
    "../other/other.qcow2": "outside the VM folder",
    "../other/other.vmx": "outside the VM folder",
    "web.vmx": "keeps for the VM itself",
    JOURNAL_NAME: "keeps for the VM itself",
    "runtime.json": "keeps for the VM itself",
    "serial.log.1": "keeps for the VM itself",  # the console log's previous generation
    "serial.log.new": "keeps for the VM itself",  # the relay unlinks it at a rotation
    "web.qcow2": "a disk of this VM",
}


@pytest.fixture
def two_vms(hv):
    """``web`` (the attacker's specfile) and ``other`` (the victim), both powered off, and a service token."""
    for name in ("web", "other"):
        hv.create_vm(name, memory_mib=64, disk_size="16M", network="none")
    with_token(hv)
    return hv


def device_line(device: str, target: str, hv) -> str:
    return DEVICES[device].format(target.format(root=hv.datastore.root))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("device", DEVICES)
def test_power_on_refuses_a_device_file_that_is_not_the_vms_own(two_vms, device, target):
    hv = two_vms
    add_keys(hv.datastore.root / "web" / "web.vmx", device_line(device, target, hv))
    before = datastore_state(hv.datastore.root)
    for command in ("start", "explain"):
        result = run_cli("vm", command, "web", datastore=hv.datastore.root)
        assert_one_clear_line(result, SpecError.exit_code, TARGETS[target])
    assert_no_vmm_started(hv, "web")
    assert datastore_state(hv.datastore.root) == before


@pytest.mark.parametrize("device", DEVICES)
def test_register_refuses_a_specfile_whose_device_names_the_token(two_vms, device):
    hv = two_vms
    folder = hv.datastore.root / "fresh"
    folder.mkdir(mode=0o700)
    (folder / "fresh.vmx").write_text('memSize = "64"\n' + device_line(device, "../.minivisor/token", hv))
    before = datastore_state(hv.datastore.root)
    result = run_cli("vm", "register", str(folder / "fresh.vmx"), datastore=hv.datastore.root)
    assert_one_clear_line(result, PathError.exit_code, "own metadata")
    assert datastore_state(hv.datastore.root) == before and {vm.name for vm in hv.list_vms()} == {"web", "other"}


def test_a_serial_port_may_not_leave_its_folder_even_for_a_file_that_does_not_exist_yet(two_vms, tmp_path):
    hv = two_vms
    outside = tmp_path / "host" / "written-by-the-guest.log"
    outside.parent.mkdir()
    for target in ("../other/new.log", str(outside), "../new-at-the-root.log"):
        add_keys(hv.datastore.root / "web" / "web.vmx", device_line("serial", target, hv))
        result = run_cli("vm", "start", "web", datastore=hv.datastore.root)
        assert_one_clear_line(result, PathError.exit_code, "serial1.fileName")
        assert_no_vmm_started(hv, "web")
    assert not outside.exists() and not (hv.datastore.root / "new-at-the-root.log").exists()
    assert not (hv.datastore.root / "other" / "new.log").exists()


@pytest.mark.qemu  # explaining a VM runs the KVM probe
@pytest.mark.parametrize("device", ["cdrom", "floppy"])
def test_a_drive_whose_image_is_a_host_file_outside_the_allowed_folders_starts_empty_and_never_opens_it(
        two_vms, device, tmp_path):
    hv = two_vms
    secret = plant_secret(tmp_path / "host", "secret.iso")
    add_keys(hv.datastore.root / "web" / "web.vmx", device_line(device, str(secret.path), hv))
    explained = hv.explain_vm("web")
    assert str(secret.path) not in " ".join(explained.argv)
    key = "ide1:0" if device == "cdrom" else "floppy0"
    assert any(w.startswith(f"{key}: its image {secret.path} is outside the datastore") for w in explained.warnings)
    hv.start_vm("web")
    pid = hv.get_vm("web").pid
    assert str(secret.path) not in [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    hv.stop_vm("web", hard=True)
    assert_no_leak(hv, secret)


PIPE = 'serial1.present = "TRUE"\nserial1.fileType = "pipe"\nserial1.fileName = "{}"\n'


@pytest.mark.parametrize("target", ["../other/evil.sock", "../.minivisor/evil.sock"])
def test_a_pipe_named_relative_to_the_vm_folder_may_not_leave_it(two_vms, target):
    hv = two_vms
    add_keys(hv.datastore.root / "web" / "web.vmx", PIPE.format(target))
    before = datastore_state(hv.datastore.root)
    assert_one_clear_line(run_cli("vm", "start", "web", datastore=hv.datastore.root), PathError.exit_code,
                          "serial1.fileName")
    assert_no_vmm_started(hv, "web")
    assert datastore_state(hv.datastore.root) == before


@pytest.mark.qemu  # explaining a VM runs the KVM probe
@pytest.mark.parametrize("target", ["{root}/.minivisor/evil.sock", "/etc/evil.sock,server=off,path=/etc/x",
                                    "\\\\.\\pipe\\evil,path=/etc/x"])
def test_a_pipe_named_elsewhere_becomes_a_socket_minivisor_names_in_the_runtime_folder(two_vms, target):
    hv = two_vms
    add_keys(hv.datastore.root / "web" / "web.vmx", PIPE.format(target.format(root=hv.datastore.root)))
    explained = hv.explain_vm("web")
    chardevs = [explained.argv[i + 1] for i, arg in enumerate(explained.argv) if arg == "-chardev"]
    runtime = hv.vm_paths("web").runtime_dir
    assert f"socket,id=serial1,path={runtime}/serial1.sock,server=on,wait=off" in chardevs
    assert not any("evil" in arg or "/etc" in arg for arg in explained.argv)
    assert any(w.startswith("serial1: the pipe") for w in explained.warnings)


def import_folder(tmp_path, extra: str):
    folder = tmp_path / "downloads" / "vm"
    folder.mkdir(parents=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(folder / "d.qcow2"), "1M"], check=True)
    (folder / "vm.vmx").write_text('memSize = "64"\nscsi0.present = "TRUE"\nscsi0:0.present = "TRUE"\n'
                                   'scsi0:0.fileName = "d.qcow2"\n' + extra)
    return folder


@pytest.mark.parametrize("target", ["../.minivisor/token", "../other/other.qcow2", "/etc/passwd"])
def test_import_refuses_a_serial_port_whose_file_leaves_the_folder(two_vms, tmp_path, target):
    hv = two_vms
    folder = import_folder(tmp_path, device_line("serial", target, hv))
    before = datastore_state(hv.datastore.root)
    result = run_cli("vm", "import", str(folder), datastore=hv.datastore.root)
    assert_one_clear_line(result, PathError.exit_code, "serial1.fileName", "outside the VM folder")
    assert datastore_state(hv.datastore.root) == before


@pytest.mark.qemu  # explaining a VM runs the KVM probe
def test_import_empties_cd_and_floppy_names_that_leave_the_folder_and_copies_the_ones_inside(two_vms, tmp_path):
    hv = two_vms
    secret = plant_secret(tmp_path / "host", "secret.iso")
    extra = (device_line("cdrom", "../.minivisor/token", hv) + device_line("floppy", str(secret.path), hv)
             + 'ide1:1.present = "TRUE"\nide1:1.deviceType = "cdrom-image"\nide1:1.fileName = "tools.iso"\n')
    folder = import_folder(tmp_path, extra)
    (folder / "tools.iso").write_bytes(b"tools" * 1000)
    token = (hv.datastore.meta / "token").read_bytes()
    vm = hv.import_vm(folder, "imported")
    doc = VmxDocument.load(vm.vmx)
    assert (doc.get("ide1:0.fileName"), doc.get("floppy0.fileName"), doc.get("ide1:1.fileName")) == ("", "", "tools.iso")
    assert (vm.vmx.parent / "tools.iso").read_bytes() == b"tools" * 1000
    assert (hv.datastore.meta / "token").read_bytes() == token
    assert_no_leak(hv, secret)
    assert hv.explain_vm("imported").argv  # what was kept passes the power-on checks


def test_the_reserved_names_are_the_files_minivisor_writes_into_a_vm_folder(tmp_path):
    paths = VmPaths(tmp_path / "vm.vmx", tmp_path)
    written = {paths.vmm_log.name, paths.serial_log.name, paths.bios_log.name, LOG_NAME, "runtime.json",
               paths.efi_vars.name}
    assert written == set(VM_FILES)
    assert os.path.basename(JOURNAL_NAME).startswith(".minivisor")
