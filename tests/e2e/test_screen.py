"""End to end: the VMware SVGA adapter's screen is a VNC server on an owner-only UNIX socket (never TCP),
``vm screenshot`` saves what it shows, ``vm display`` says how to connect."""

from __future__ import annotations

import socket
import stat
import struct
import zlib

import pytest
from attacks import add_keys
from cli_runner import run_cli
from guests import create_guest

from minivisor.errors import StateError

pytestmark = pytest.mark.qemu


def png_pixels(data: bytes) -> tuple[int, int, bytes]:
    """Width, height and the pixel bytes of an 8-bit RGB(A) PNG (each row's filter byte left out), read with
    the standard library: a black screen is all zeros, whatever filters the encoder chose."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    assert depth == 8 and colour in (2, 6)
    stride = 1 + width * (3 if colour == 2 else 4)
    chunks, offset = [], 8
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        if kind == b"IDAT":
            chunks.append(data[offset + 8:offset + 8 + length])
        offset += 12 + length
    rows = zlib.decompress(b"".join(chunks))
    return width, height, b"".join(rows[i + 1:i + stride] for i in range(0, len(rows), stride))


def test_the_screen_is_a_vnc_socket_and_a_screenshot_shows_what_the_firmware_wrote(hv, appliance_image, tmp_path):
    create_guest(hv, "web", appliance_image, memory_mib=128, network="none")
    vm = hv.start_vm("web", wait_ready=True, timeout=90).vm
    vnc = hv.vm_paths("web").vnc_socket
    assert stat.S_IMODE(vnc.stat().st_mode) & 0o077 == 0  # owner only
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(vnc))
        assert client.recv(12).startswith(b"RFB 003.")
    listening = open(f"/proc/{vm.pid}/net/tcp").read() + open(f"/proc/{vm.pid}/net/tcp6").read()
    assert ":170C " not in listening and ":1770 " not in listening  # no VNC on TCP 5900-ish (0x170c = 5900)
    shot = tmp_path / "screen.png"
    result = run_cli("vm", "screenshot", "web", str(shot), datastore=hv.datastore.root)
    assert result.returncode == 0, result.stderr
    width, height, rows = png_pixels(shot.read_bytes())
    assert (width, height) == (720, 400)  # VGA text mode: SeaBIOS and SYSLINUX wrote on it
    assert any(rows)  # not an empty black screen
    nowhere = run_cli("vm", "screenshot", "web", str(tmp_path / "no-such-folder" / "screen.png"),
                      datastore=hv.datastore.root)
    assert nowhere.returncode != 0 and nowhere.stderr.startswith("error: cannot write the screenshot to")
    assert len(nowhere.stderr.strip().splitlines()) == 1
    shown = run_cli("vm", "display", "web", datastore=hv.datastore.root)
    assert str(vnc) in shown.stdout and "vncviewer" in shown.stdout
    assert not list(hv.vm_paths("web").runtime_dir.glob("screen-*.png"))  # QEMU's file is gone


def test_a_vm_without_a_display_has_no_screen(hv, appliance_image):
    create_guest(hv, "headless", appliance_image, memory_mib=128, network="none")
    add_keys(hv.datastore.root / "headless" / "headless.vmx", 'svga.present = "FALSE"\n')
    hv.start_vm("headless")
    assert "-vnc" not in hv.explain_vm("headless").argv
    with pytest.raises(StateError, match="no display"):
        hv.screenshot("headless")
