"""The consoles of the web page: the serial console in xterm.js and the screen in noVNC, over websockets the
service bridges to the VM's own UNIX sockets, each opened with a single-use ticket (tried as an attacker too)."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import time

import pytest
from attacks import add_keys
from boot_media import READ_VOLUME, installer_iso
from guests import create_guest
from playwright.sync_api import expect

from minivisor import Hypervisor

from .conftest import SCREENSHOTS, small_vm
from .test_web_browser import log_in
from .test_web_security import request, session_cookie

pytestmark = pytest.mark.qemu


@pytest.fixture
def guest(service, appliance_image):
    """The test guest, booted to its shell, in the service's datastore."""
    create_guest(Hypervisor(service.root), "guest", appliance_image, memory_mib=128, network="none")
    service.client.start_vm("guest", wait_ready=True, timeout=120)
    return "guest"


def ticket(service, vm: str, console: str) -> str:
    status, _, body = request(service, "POST", f"/v1/vms/{vm}/consoles/{console}/ticket",
                              {"Authorization": f"Bearer {service.token}"})
    assert status == 201, body
    return json.loads(body)["ticket"]


def open_websocket(service, path: str, origin: str | None = None) -> tuple[int, socket.socket]:
    """A websocket handshake to ``path``: the HTTP status (101 when accepted) and the connection."""
    sock = socket.create_connection((service.client.host, service.client.port), timeout=30)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {service.client.host}:{service.client.port}\r\n"
                  f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  f"Sec-WebSocket-Version: 13\r\n" + (f"Origin: {origin}\r\n" if origin else "") + "\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            break
        head += chunk
    return int(head.split(b" ")[1]), sock


def accepted(service, path: str, origin: str | None = None) -> bool:
    status, sock = open_websocket(service, path, origin)
    sock.close()
    assert status in (101, 403), status
    return status == 101


def test_a_console_websocket_opens_only_with_its_own_fresh_ticket(service, guest):
    small_vm(Hypervisor(service.root), "other")
    service.client.start_vm("other")
    serial = f"/v1/vms/{guest}/consoles/serial"
    assert not accepted(service, serial)  # no ticket
    assert not accepted(service, serial + "?ticket=forged")
    assert not accepted(service, serial + "?ticket=" + service.token)  # the API token is no ticket
    assert not accepted(service, serial + "?ticket=" + ticket(service, "other", "serial"))  # another VM's
    assert not accepted(service, serial + "?ticket=" + ticket(service, guest, "vnc"))  # another console's
    mine = ticket(service, guest, "serial")
    assert not accepted(service, serial + "?ticket=" + mine, origin="http://evil.example")  # another site's page
    assert accepted(service, serial + "?ticket=" + mine)
    assert not accepted(service, serial + "?ticket=" + mine)  # spent
    screen = ticket(service, guest, "vnc")
    status, sock = open_websocket(service, f"/v1/vms/{guest}/consoles/vnc?ticket={screen}")
    with sock:
        assert status == 101
        frame = sock.recv(64)  # the VNC server speaks first: one binary frame holding "RFB 003.008\n"
        assert frame[0] == 0x82 and frame[2:14].startswith(b"RFB 003.")


def test_only_an_authorized_page_or_client_gets_a_ticket(service, guest):
    path = f"/v1/vms/{guest}/consoles/serial/ticket"
    assert request(service, "POST", path)[0] == 401
    cookie = session_cookie(service)
    assert request(service, "POST", path, {"Cookie": cookie, "Origin": "http://evil.example",
                                           "X-Minivisor-CSRF": "1"})[0] == 403
    status, _, body = request(service, "POST", path, {"Cookie": cookie, "Origin": service.url,
                                                      "X-Minivisor-CSRF": "1"})
    assert status == 201 and len(json.loads(body)["ticket"]) >= 40
    assert request(service, "POST", f"/v1/vms/{guest}/consoles/telnet/ticket",
                   {"Authorization": f"Bearer {service.token}"})[0] == 404


def test_a_powered_off_vm_has_no_console_to_open(service):
    small_vm(Hypervisor(service.root), "off")
    status, _, body = request(service, "POST", "/v1/vms/off/consoles/serial/ticket",
                              {"Authorization": f"Bearer {service.token}"})
    assert status == 409 and "poweredOff" in json.loads(body)["error"]["message"]


def test_type_uname_into_the_serial_console_and_read_the_answer_on_the_page(service, guest, page):
    log_in(page, service)
    page.click(f"button[data-action=open][data-vm={guest}]")
    expect(page.locator(".console-status")).to_contain_text("Connected")
    page.locator("#serial").click()
    page.keyboard.type("uname -a")
    page.keyboard.press("Enter")
    # the guest's answer, not the echo of what was typed: the kernel's name, host name and release
    expect(page.locator("#serial .xterm-rows")).to_contain_text(re.compile(r"Linux \S+ \d+\.\d+\.\d+"))


SCREEN_PIXELS = """() => {
  const canvas = document.querySelector('#screen canvas');
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let lit = 0, hash = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i] || data[i + 1] || data[i + 2]) lit++;
    hash = (hash * 31 + data[i] + 7 * data[i + 1] + 13 * data[i + 2]) | 0;
  }
  return {width: canvas.width, height: canvas.height, lit, hash};
}"""


def screen_until(page, predicate, timeout: float = 30.0) -> dict:
    """The canvas's pixels once ``predicate`` holds for them (the page's policy forbids the evaluated strings
    of Playwright's wait_for_function)."""
    deadline = time.monotonic() + timeout
    while not predicate(pixels := page.evaluate(SCREEN_PIXELS)):
        assert time.monotonic() < deadline, f"the screen never showed it: {pixels}"
        page.wait_for_timeout(100)
    return pixels


def test_the_screen_in_novnc_shows_what_the_guest_wrote_on_it(service, guest, page):
    log_in(page, service)
    page.click(f"button[data-action=open][data-vm={guest}]")
    page.click("#detail button[data-tab=screen]")
    expect(page.locator(".console-status")).to_contain_text("Connected to the screen")
    pixels = screen_until(page, lambda pixels: pixels["lit"] > 1000)  # the text SeaBIOS and SYSLINUX wrote
    assert (pixels["width"], pixels["height"]) == (720, 400)  # the guest's VGA text mode, as QEMU draws it
    assert pixels["lit"] < 720 * 400 // 4  # text on black, not a blank (or white) canvas


def test_insert_and_eject_an_uploaded_iso_from_the_screen_view(service, page, appliance_image, tmp_path):
    hv = Hypervisor(service.root)
    create_guest(hv, "inst", appliance_image, memory_mib=160, network="none")
    add_keys(service.root / "inst" / "inst.vmx",
             'ide1:0.present = "TRUE"\nide1:0.deviceType = "cdrom-image"\nide1:0.fileName = ""\n')
    iso = installer_iso(appliance_image, tmp_path / "installer.iso")
    status, _, _ = request(service, "PUT", "/v1/datastore/files/inst/installer.iso",  # into the VM's folder
                           {"Authorization": f"Bearer {service.token}"}, iso.read_bytes())
    assert status == 201
    service.client.start_vm("inst", wait_ready=True, timeout=120)
    log_in(page, service)
    page.click("button[data-action=open][data-vm=inst]")
    page.click("#detail button[data-tab=screen]")
    expect(page.locator("#cdrom-image option")).to_have_text("installer.iso")
    page.click("button[data-action=cdrom-insert]")
    expect(page.locator("#events")).to_contain_text("cdromChanged")
    assert "INSTALLER" in hv.exec_in_vm("inst", READ_VOLUME).output  # the guest sees the medium
    page.click("button[data-action=cdrom-eject]")
    expect(page.locator("#events")).to_contain_text(re.compile(r"cdromChanged[\s\S]*cdromChanged"))
    assert "No medium found" in hv.exec_in_vm("inst", READ_VOLUME).output
    assert page.locator("#detail .cdrom .error").inner_text() == ""


def test_an_iso_uploaded_inserted_and_booted_in_the_browser_changes_the_screen(service, page, appliance_image,
                                                                              tmp_path):
    """A new VM with an empty disk and an empty CD drive: its firmware says there is nothing to boot. The ISO is
    uploaded, inserted and booted from the page; the screen shows what the firmware and the CD's boot loader
    wrote instead, and the guest from the CD comes up."""
    hv = Hypervisor(service.root)
    hv.create_vm("fresh", memory_mib=192, disk_size="64M", network="none")
    add_keys(service.root / "fresh" / "fresh.vmx",
             'ide1:0.present = "TRUE"\nide1:0.deviceType = "cdrom-image"\nide1:0.fileName = ""\n')
    iso = installer_iso(appliance_image, tmp_path / "installer.iso")
    log_in(page, service)
    page.fill("#upload-folder", "fresh")  # a VM opens only files in its own folder
    page.set_input_files("#upload-file", str(iso))
    page.click("button[data-action=upload]")
    expect(page.locator("#datastore-files tr[data-file='installer.iso']")).to_be_visible()
    page.click("button[data-action=start][data-vm=fresh]")
    expect(page.locator("tr[data-vm=fresh] td.state")).to_have_attribute("data-state", "running")
    page.click("button[data-action=open][data-vm=fresh]")
    page.click("#detail button[data-tab=screen]")
    expect(page.locator(".console-status")).to_contain_text("Connected to the screen")
    nothing = screen_until(page, lambda pixels: pixels["lit"] > 1000)  # "No bootable device"
    page.screenshot(path=str(SCREENSHOTS / "novnc-nothing-to-boot.png"))
    page.click("button[data-action=cdrom-insert]")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button[data-action=reset][data-vm=fresh]")
    # what the firmware and ISOLINUX write (more lines than "no bootable device")
    screen_until(page, lambda pixels: abs(pixels["lit"] - nothing["lit"]) > 300, timeout=60)
    page.screenshot(path=str(SCREENSHOTS / "novnc-booting-the-cd.png"))
    service.client.wait_ready("fresh", timeout=120)
    assert "INSTALLER" in hv.exec_in_vm("fresh", READ_VOLUME).output  # the guest runs from the CD it reads
