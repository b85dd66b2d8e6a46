"""End to end: a VM whose specfile names devices VMware tolerates powers on, says which key it could
not connect and why, and the guest sees the drives it was promised, empty."""

from __future__ import annotations

import os
import socket

import pytest
from attacks import add_keys, plant_secret
from cli_runner import run_cli
from guests import create_guest

from minivisor.vmm.qmp import QmpSession

pytestmark = pytest.mark.qemu

UNREACHABLE = (
    'ide1:0.present = "TRUE"\nide1:0.deviceType = "cdrom-image"\nide1:0.fileName = "not-downloaded-yet.iso"\n'
    'ide1:1.present = "TRUE"\nide1:1.deviceType = "atapi-cdrom"\nide1:1.fileName = "auto detect"\n'
    'floppy0.present = "TRUE"\nfloppy0.fileType = "device"\nfloppy0.fileName = "/dev/fd0"\n'
    'numvcpus = "{cpus}"\n'
)
SERIALS = (
    'serial1.present = "TRUE"\nserial1.fileType = "pipe"\nserial1.fileName = "\\\\.\\pipe\\com_2"\n'
    'serial2.present = "TRUE"\nserial2.fileType = "network"\nserial2.fileName = "telnet://:{port}"\n'
    'serial3.present = "TRUE"\nserial3.fileType = "thinprint"\n'
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_drives_vmware_tolerates_are_disconnected_with_a_warning_and_the_guest_sees_them_empty(
        hv, appliance_image):
    create_guest(hv, "web", appliance_image, memory_mib=192, network="none")
    add_keys(hv.datastore.root / "web" / "web.vmx", UNREACHABLE.format(cpus=os.cpu_count() + 1))
    result = run_cli("vm", "start", "web", "--wait-ready", "--timeout", "90", datastore=hv.datastore.root)
    assert result.returncode == 0, result.stderr
    warnings = result.stderr.splitlines()
    for key, words in [("ide1:0", "not-downloaded-yet.iso does not exist"), ("ide1:1", "host's drive"),
                       ("floppy0", "/dev/fd0"), ("numvcpus", "share this host's")]:
        assert any(line.startswith(f"warning: {key}: ") and words in line for line in warnings), (key, warnings)
    explained = run_cli("vm", "explain", "web", datastore=hv.datastore.root)
    assert "warning: ide1:0: its image" in explained.stdout
    # the guest has both CD-ROM drives, with no medium in them, and the vCPUs the specfile asks for
    drives = hv.exec_in_vm("web", "for b in /sys/block/sr*; do dd if=/dev/${b##*/} of=/dev/null count=1 2>&1; done; nproc")
    assert drives.output.splitlines() == ["dd: can't open '/dev/sr0': No medium found",
                                          "dd: can't open '/dev/sr1': No medium found", str(os.cpu_count() + 1)]


def test_serial_ports_become_a_socket_a_loopback_listener_and_an_unplugged_port(hv, appliance_image):
    """Seen from the host (the test guest's kernel drives COM1 only): the VMM's ports are there."""
    create_guest(hv, "web", appliance_image, memory_mib=128, network="none")
    port = free_port()
    add_keys(hv.datastore.root / "web" / "web.vmx", SERIALS.format(port=port))
    warnings = hv.start_vm("web").warnings
    assert [w.split(":")[0] for w in warnings if w.startswith("serial")] == ["serial1", "serial2", "serial3"]
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    assert (hv.vm_paths("web").runtime_dir / "serial1.sock").is_socket()
    with QmpSession(hv.vm_paths("web").qmp_socket) as qmp:
        chardevs = {c["label"]: c["filename"] for c in qmp.execute("query-chardev")}
    assert chardevs["serial2"].endswith(f"telnet:127.0.0.1:{port},server=on")  # listening
    assert chardevs["serial3"] == "null" and chardevs["serial1"].endswith("serial1.sock,server=on")


def test_a_disconnected_drive_never_opens_the_host_file_it_names(hv, appliance_image, tmp_path):
    """A host path in a CD-ROM or floppy that is not connected (startConnected FALSE) is not checked, so it
    must not be opened either: the VM powers on and QEMU holds no descriptor on the secret."""
    secret = plant_secret(tmp_path / "host")
    create_guest(hv, "web", appliance_image, memory_mib=128, network="none")
    add_keys(hv.datastore.root / "web" / "web.vmx",
             f'ide1:0.present = "TRUE"\nide1:0.deviceType = "cdrom-image"\nide1:0.fileName = "{secret.path}"\n'
             'ide1:0.startConnected = "FALSE"\n'
             f'floppy0.present = "TRUE"\nfloppy0.fileName = "{secret.path}"\nfloppy0.startConnected = "FALSE"\n')
    result = hv.start_vm("web")
    assert any(w.startswith("ide1:0: startConnected is FALSE") for w in result.warnings)
    opened = [os.readlink(f"/proc/{result.vm.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{result.vm.pid}/fd")]
    assert str(secret.path) not in opened and str(secret.path) not in " ".join(hv.explain_vm("web").argv)


def test_an_independent_nonpersistent_disk_forgets_what_the_guest_wrote_at_power_off(hv, appliance_image):
    create_guest(hv, "web", appliance_image, memory_mib=128, network="none")
    folder = hv.datastore.root / "web"
    hv.disk_create(folder / "scratch.qcow2", "16M")
    add_keys(folder / "web.vmx", 'scsi0:1.present = "TRUE"\nscsi0:1.fileName = "scratch.qcow2"\n'
                                 'scsi0:1.mode = "independent-nonpersistent"\n')
    before = (folder / "scratch.qcow2").read_bytes()
    scratch = "for d in /sys/block/sd*; do [ $(cat $d/size) = 32768 ] && s=/dev/${d##*/}; done"  # the 16 MiB disk
    write = f"{scratch}; printf minivisor-was-here | dd of=$s bs=512 conv=sync 2>/dev/null; sync; head -c 18 $s"
    read = f"{scratch}; head -c 18 $s | od -An -c | tr -d ' \\n'"
    hv.start_vm("web", wait_ready=True, timeout=90)
    assert hv.exec_in_vm("web", write).output == "minivisor-was-here"
    assert [p.name for p in folder.iterdir() if "discard" in p.name] == []  # the overlay has no name left
    hv.stop_vm("web", hard=True)
    assert (folder / "scratch.qcow2").read_bytes() == before
    hv.start_vm("web", wait_ready=True, timeout=90)
    assert hv.exec_in_vm("web", read).output == "\\0" * 18  # the next power-on starts from the disk as it was
    assert "writes discarded at power-off" in " ".join(d.description for d in hv.explain_vm("web").hardware)
