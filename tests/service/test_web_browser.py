"""The web page in a real headless Chromium: type the token, click Power on / Power off.

Chromium is driven over its DevTools protocol with a minimal WebSocket client
(stdlib only). Skipped where no chromium is installed.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import time
import urllib.request
from urllib.parse import urlsplit

import pytest

from minivisor import Hypervisor
from minivisor.vmm.states import VmState

from .conftest import small_vm

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")


class DevTools:
    """Just enough of a WebSocket client (RFC 6455) to call Runtime.evaluate."""

    def __init__(self, ws_url: str) -> None:
        parts = urlsplit(ws_url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                           ).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head
        self.next_id = 0

    def _send(self, text: str) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        header = bytes([0x81])
        if len(payload) < 126:
            header += bytes([0x80 | len(payload)])
        elif len(payload) < 65536:
            header += bytes([0x80 | 126]) + struct.pack(">H", len(payload))
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", len(payload))
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def _exactly(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            assert chunk, "DevTools closed the connection"
            data += chunk
        return data

    def _receive(self) -> dict:
        message = b""
        while True:
            first, second = self._exactly(2)
            length = second & 0x7F
            if length == 126:
                length = struct.unpack(">H", self._exactly(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", self._exactly(8))[0]
            message += self._exactly(length)
            if first & 0x80:
                return json.loads(message)

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self._send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            reply = self._receive()
            if reply.get("id") == self.next_id:
                assert "error" not in reply, reply
                return reply["result"]

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        """Click the element once it is in the page."""
        self.wait(f"(b => b ? (b.click(), true) : false)(document.querySelector({json.dumps(selector)}))")

    def wait(self, expression: str, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        while not self.js(f"!!({expression})"):
            assert time.monotonic() < deadline, f"never true in the page: {expression}"
            time.sleep(0.1)


@pytest.fixture
def browser(tmp_path):
    profile = tmp_path / "chromium"
    proc = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--disable-background-networking", "--remote-debugging-port=0",
                             f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (profile / "DevToolsActivePort").exists() or not (profile / "DevToolsActivePort").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, "chromium did not start"
            time.sleep(0.05)
        port = int((profile / "DevToolsActivePort").read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            (page,) = [t for t in json.loads(response.read()) if t["type"] == "page"]
        yield DevTools(page["webSocketDebuggerUrl"])
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.qemu
def test_power_a_vm_on_and_off_by_clicking_in_the_page(service, browser):
    small_vm(Hypervisor(service.root), "vm1")
    browser.call("Page.navigate", url=service.url + "/")
    browser.wait("document.readyState === 'complete' && !document.getElementById('login').hidden")
    browser.js(f"document.getElementById('token').value = {json.dumps(service.token)};"
               "document.querySelector('#login button').click()")
    browser.click("button[data-action=start][data-vm=vm1]")
    browser.wait("document.querySelector('tr[data-vm=vm1] td[data-state]').dataset.state === 'running'")
    assert service.client.get_vm("vm1").state is VmState.RUNNING
    browser.wait("document.getElementById('events').textContent.includes('poweredOn')")
    # the token was typed once: a reload goes straight to the list
    browser.js("window.beforeReload = true; location.reload()")
    browser.wait("!window.beforeReload && document.readyState === 'complete' && "
                 "document.querySelector('button[data-action=stop][data-vm=vm1]')")
    assert browser.js("document.getElementById('login').hidden") is True
    browser.click("button[data-action=stop][data-vm=vm1]")
    browser.wait("document.querySelector('tr[data-vm=vm1] td[data-state]').dataset.state === 'poweredOff'")
    assert service.client.get_vm("vm1").state is VmState.POWERED_OFF


def test_a_wrong_token_shows_the_login_again(service, browser):
    browser.call("Page.navigate", url=service.url + "/")
    browser.wait("document.readyState === 'complete' && !document.getElementById('login').hidden")
    browser.js("document.getElementById('token').value = 'wrong'; document.querySelector('#login button').click()")
    browser.wait("!document.getElementById('login').hidden && document.getElementById('error').textContent")
    assert "missing or wrong token" in browser.js("document.getElementById('error').textContent")
    assert browser.js("sessionStorage.getItem('minivisor-token')") is None
