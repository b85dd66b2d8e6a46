"""Devices VMware tolerates: virtualized, approximated or disconnected with a note naming the key, never
a refusal where VMware powers on, and never silent; and the VMs VMware itself will not power on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from minivisor.datastore.layout import VmPaths
from minivisor.errors import SpecError, StateError
from minivisor.spec.fidelity import key_verdicts, subject_of
from minivisor.spec.vmspec import VmSpec
from minivisor.spec.vmx import VmxDocument
from minivisor.vmm.argv import LaunchEnv, build_qemu_argv

PATHS = VmPaths(Path("/ds/vm/vm.vmx"), Path("/run/minivisor/abc"))

CD = 'ide1:0.present = "TRUE"\nide1:0.deviceType = "{type}"\nide1:0.fileName = "{name}"\n'
FLOPPY = 'floppy0.present = "TRUE"\nfloppy0.fileType = "{type}"\nfloppy0.fileName = "{name}"\n'


def spec_of(text: str) -> VmSpec:
    return VmSpec.from_vmx(VmxDocument.parse(text.encode(), source="test.vmx"))


def note_of(spec: VmSpec, subject: str):
    (note,) = [n for n in spec.notes if n.subject == subject]
    return note


@pytest.mark.parametrize("keys, words", [
    (CD.format(type="cdrom-image", name=r"D:\ISO\x.iso"), "a Windows path"),
    (CD.format(type="cdrom-image", name=r"\\server\share\x.iso"), "a Windows path"),
    (CD.format(type="cdrom-image", name="/vmfs/volumes/datastore1/iso/x.iso"), "a path on an ESXi host"),
    (CD.format(type="cdrom-image", name="/dev/scd0"), "a host device"),
    (CD.format(type="atapi-cdrom", name="auto detect"), 'the host\'s drive "auto detect"'),
    (CD.format(type="cdrom-raw", name="/vmfs/devices/cdrom/mpx.vmhba0:C0:T0:L0"), "the host's drive"),
    (CD.format(type="cdrom-image", name="x.iso") + 'ide1:0.startConnected = "FALSE"\n', "startConnected is FALSE"),
    (CD.format(type="cdrom-image", name="x.iso") + 'ide1:0.clientDevice = "TRUE"\n', "remote console"),
])
def test_a_cdrom_that_cannot_be_connected_starts_empty(keys, words):
    spec = spec_of(keys)
    (cd,) = spec.disks
    assert (cd.kind, cd.file_name) == ("cdrom", None)  # no path is kept, so none can be opened
    note = note_of(spec, "ide1:0")
    assert note.verdict == "disconnected" and words in note.reason and "starts empty" in note.reason
    assert note.warning in spec.warnings


@pytest.mark.parametrize("keys, words", [
    (FLOPPY.format(type="device", name="/dev/fd0"), 'the host\'s drive "/dev/fd0"'),
    (FLOPPY.format(type="file", name="A:"), "a Windows path"),
    (FLOPPY.format(type="file", name="boot.flp") + 'floppy0.startConnected = "false"\n', "startConnected"),
])
def test_a_floppy_that_cannot_be_connected_starts_empty(keys, words):
    spec = spec_of(keys)
    (drive,) = spec.floppies
    assert drive.file_name is None
    assert words in note_of(spec, "floppy0").reason


def test_an_empty_cdrom_is_simply_virtualized():
    spec = spec_of(CD.format(type="cdrom-image", name=""))
    assert spec.disks[0].file_name is None and spec.notes == () and spec.warnings == ()


@pytest.mark.parametrize("keys, file_type, verdict, words", [
    ('fileType = "thinprint"', "disconnected", "disconnected", "ThinPrint"),
    ('fileType = "device"\nserial1.fileName = "/dev/ttyS0"', "disconnected", "disconnected", "host's serial port"),
    ('fileType = "file"', "disconnected", "disconnected", "no fileName"),
    ('fileType = "file"\nserial1.fileName = "s.log"\nserial1.startConnected = "FALSE"', "disconnected",
     "disconnected", "startConnected"),
    ('fileType = "parallel-universe"', "disconnected", "disconnected", "none minivisor knows"),
    ('fileType = "pipe"\nserial1.fileName = "\\\\.\\pipe\\com_2"', "pipe", "approximated", "runtime folder"),
    ('fileType = "pipe"\nserial1.fileName = "/tmp/vm-serial"', "pipe", "approximated", "runtime folder"),
    ('fileType = "network"\nserial1.fileName = "telnet://:2323"', "network", "approximated", "127.0.0.1:2323 only"),
    ('fileType = "network"\nserial1.fileName = "telnet://example.com:23"\nserial1.network.endPoint = "client"',
     "disconnected", "disconnected", "connect out"),
    ('fileType = "network"\nserial1.fileName = "telnet://:23,server=on,path=/etc/x"', "disconnected",
     "disconnected", "not a network address"),
    ('fileType = "network"\nserial1.fileName = "telnet://:99999"', "disconnected", "disconnected",
     "not a network address"),
])
def test_serial_ports_are_connected_or_say_why_not(keys, file_type, verdict, words):
    spec = spec_of(f'serial1.present = "TRUE"\nserial1.{keys}\n')
    (port,) = spec.serial_ports
    assert port.file_type == file_type
    note = note_of(spec, "serial1")
    assert note.verdict == verdict and words in note.reason


def test_a_network_port_on_loopback_is_virtualized_silently():
    spec = spec_of('serial1.present = "TRUE"\nserial1.fileType = "network"\nserial1.fileName = "tcp://127.0.0.1:4555"\n')
    assert (spec.serial_ports[0].tcp_port, spec.serial_ports[0].telnet) == (4555, False) and spec.notes == ()


def env_for(spec: VmSpec) -> LaunchEnv:
    return LaunchEnv(name="vm", uuid="564d8c48-1de9-5312-9e23-96ef90e27a17", qemu="qemu-system-x86_64",
                     accel="tcg", paths=PATHS)


def chardevs(spec: VmSpec) -> list[str]:
    argv = build_qemu_argv(spec, env_for(spec))
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == "-chardev" and argv[i + 1].startswith(
        ("null,id=serial", "socket,id=serial", "file,id=serial"))]


@pytest.mark.parametrize("keys, chardev", [
    ('serial1.fileType = "thinprint"', "null,id=serial1"),
    ('serial1.fileType = "pipe"\nserial1.fileName = "\\\\.\\pipe\\a,path=/etc/passwd"',
     "socket,id=serial1,path=/run/minivisor/abc/serial1.sock,server=on,wait=off"),
    ('serial1.fileType = "network"\nserial1.fileName = "telnet://0.0.0.0:2323"',
     "socket,id=serial1,host=127.0.0.1,port=2323,server=on,wait=off,telnet=on"),
    ('serial1.fileType = "network"\nserial1.fileName = "telnet://0.0.0.0,host=0.0.0.0:2323"', "null,id=serial1"),
])
def test_serial_backends_carry_no_text_from_the_specfile(keys, chardev):
    spec = spec_of(f'serial1.present = "TRUE"\n{keys}\n')
    assert chardevs(spec) == [chardev]


def test_a_disconnected_device_keeps_its_port_so_the_guest_numbering_stays():
    spec = spec_of('serial2.present = "TRUE"\nserial2.fileType = "thinprint"\n')
    argv = build_qemu_argv(spec, env_for(spec))
    serials = [json.loads(a) for a in argv if a.startswith('{"driver":"isa-serial"')]
    assert {"driver": "isa-serial", "chardev": "serial2", "index": 2} in serials


@pytest.mark.parametrize("keys, error, words", [
    ('encryption.keySafe = "vmware:key/list/(pair/(phrase/abc%3d))"\nencryption.data = "AAAA"\n', SpecError,
     "encrypted"),
    ('templateVM = "TRUE"\n', SpecError, "template"),
    ('checkpoint.vmState = "web-1a2b.vmss"\n', StateError, "suspended"),
])
def test_vms_vmware_would_not_power_on_are_refused_with_the_reason(keys, error, words):
    with pytest.raises(error) as caught:
        spec_of('memSize = "64"\n' + keys)
    assert words in caught.value.message and "test.vmx:2" in caught.value.message and caught.value.hint


def test_an_empty_suspend_state_is_no_suspended_vm():
    assert spec_of('checkpoint.vmState = ""\n').memory_mib == 32


def test_every_key_gets_a_verdict_from_its_device_or_itself():
    text = ('memSize = "64"\nconfig.version = "8"\nvtpm.present = "TRUE"\nscsi1.present = "FALSE"\n'
            'scsi1:0.fileName = "x.vmdk"\n' + CD.format(type="atapi-cdrom", name="auto detect"))
    doc = VmxDocument.parse(text.encode())
    spec = VmSpec.from_vmx(doc)
    verdicts = {v.key: v.verdict for v in key_verdicts(doc.items(), spec.notes, spec.unused_keys)}
    assert verdicts == {"memSize": "virtualized", "config.version": "ignored", "vtpm.present": "ignored",
                        "scsi1.present": "ignored", "scsi1:0.fileName": "ignored", "ide1:0.present": "disconnected",
                        "ide1:0.deviceType": "disconnected", "ide1:0.fileName": "disconnected"}


@pytest.mark.parametrize("key, subject", [("IDE1:0.fileName", "ide1:0"), ("serial1.fileType", "serial1"),
                                          ("sched.scsi0:0.shares", "sched.scsi0:0.shares"), ("memSize", "memsize")])
def test_keys_belong_to_their_device(key, subject):
    assert subject_of(key) == subject


def test_buslogic_and_lsilogic_say_which_chip_stands_in():
    spec = spec_of('scsi0.present = "TRUE"\nscsi0.virtualDev = "buslogic"\nscsi1.present = "TRUE"\n'
                   'scsi2.present = "TRUE"\nscsi2.virtualDev = "pvscsi"\n')
    assert {n.subject: n.verdict for n in spec.notes} == {"scsi0": "approximated", "scsi1": "approximated"}
    assert "53C895A stands in" in note_of(spec, "scsi1").reason


def test_devices_the_guest_will_not_get_are_said_at_power_on():
    spec = spec_of('vtpm.present = "TRUE"\nparallel0.present = "TRUE"\n'
                   'ehci.present = "FALSE"\nRemoteDisplay.vnc.enabled = "TRUE"\nRemoteDisplay.vnc.port = "5901"\n')
    assert [w.split(":")[0] for w in spec.warnings] == ["RemoteDisplay.vnc.enabled", "vtpm.present",
                                                        "parallel0.present"]
    assert {n.subject: n.verdict for n in spec.notes} == {"vtpm.present": "ignored", "parallel0.present": "ignored",
                                                         "RemoteDisplay.vnc.enabled": "approximated"}


@pytest.mark.parametrize("card, driver, warns", [("hdaudio", "intel-hda", False), ("es1371", "es1370", True),
                                                 ("sb16", "sb16", False), ("gravis", "intel-hda", True)])
def test_each_sound_card_is_the_closest_qemu_has_with_a_warning_where_it_is_another_chip(card, driver, warns):
    spec = spec_of(f'sound.present = "TRUE"\nsound.virtualDev = "{card}"\n')
    argv = build_qemu_argv(spec, env_for(spec))
    cards = [json.loads(v) for i, v in enumerate(argv) if argv[i - 1] == "-device" and '"id":"sound"' in v]
    assert [c["driver"] for c in cards] == [driver]
    assert any(w.startswith("sound.virtualDev: ") for w in spec.warnings) == warns
    assert json.loads(argv[argv.index("-audiodev") + 1]) == {"driver": "none", "id": "audio"}  # plays to nothing


def test_usb_controllers_are_quiet_stand_ins_with_a_tablet_on_the_newest():
    spec = spec_of('usb.present = "TRUE"\nehci.present = "TRUE"\n')
    assert spec.warnings == () and {n.subject: n.verdict for n in spec.notes} == {
        "usb.present": "approximated", "ehci.present": "approximated"}
    argv = build_qemu_argv(spec, env_for(spec))
    devices = [json.loads(v) for i, v in enumerate(argv) if argv[i - 1] == "-device"]
    assert [(d["driver"], d.get("bus")) for d in devices if "usb" in d["driver"]] == [
        ("piix3-usb-uhci", "pci.0"), ("usb-ehci", "pci.0"), ("usb-tablet", "ehci.0")]


def test_the_screen_socket_path_is_escaped_for_qemus_option_parser():
    paths = VmPaths(Path("/ds/vm/vm.vmx"), Path("/run/a,password=on/abc"))
    spec = spec_of('svga.present = "TRUE"\n')
    argv = build_qemu_argv(spec, LaunchEnv(name="vm", uuid="u", qemu="q", accel="tcg", paths=paths))
    assert argv[argv.index("-vnc") + 1] == "unix:/run/a,,password=on/abc/vnc.sock"


@pytest.mark.parametrize("guest, warned", [("centos7-64", False), ("windows9-64", True)])
def test_the_lsi_stand_in_is_a_power_on_warning_only_where_the_guest_lacks_its_driver(guest, warned):
    spec = spec_of(f'guestOS = "{guest}"\nscsi0.present = "TRUE"\nscsi0.virtualDev = "lsilogic"\n')
    assert note_of(spec, "scsi0").verdict == "approximated"  # vm explain and vm check say it either way
    assert any(w.startswith("scsi0:") for w in spec.warnings) is warned


@pytest.mark.parametrize("value, verdict", [("virtual", "approximated"), ("physical", "approximated"),
                                            ("none", None)])
def test_a_shared_scsi_bus_is_said_to_be_not_shared(value, verdict):
    spec = spec_of(f'scsi0.present = "TRUE"\nscsi0.virtualDev = "pvscsi"\nscsi0.sharedBus = "{value}"\n')
    assert [n.verdict for n in spec.notes if n.subject == "scsi0.sharedBus"] == ([verdict] if verdict else [])
    assert any(w.startswith("scsi0.sharedBus: the bus is not shared") for w in spec.warnings) == bool(verdict)
