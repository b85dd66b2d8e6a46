"""A real `minivisor serve` process on loopback over a temporary datastore."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from vmm_guard import power_off_all

from minivisor import Hypervisor
from minivisor.client import Client, connect


class Running:
    """A service process and the ways a test talks to it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.proc: subprocess.Popen | None = None
        self.client: Client | None = None

    def start(self, *extra: str, env: dict[str, str] | None = None) -> Running:
        (self.root / ".minivisor" / "service.json").unlink(missing_ok=True)
        self.log = open(self.root.parent / "service.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "minivisor", "-d", str(self.root), "serve",
                                      "--listen", "127.0.0.1:0", *extra], stdout=self.log, stderr=self.log,
                                     start_new_session=True, env={**os.environ, **(env or {})})
        deadline = time.monotonic() + 20
        while (client := connect(self.root)) is None:
            assert self.proc.poll() is None, (self.root.parent / "service.log").read_text()
            assert time.monotonic() < deadline, "the service did not come up"
            time.sleep(0.05)
        self.client = client
        return self

    @property
    def url(self) -> str:
        return self.client.url

    @property
    def token(self) -> str:
        return self.client.token

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # a service that outlived its test would serve on after the run
                self.proc.wait()
                raise AssertionError(f"the service did not stop within 20 s of signal {sig} (killed)") from None
        self.proc = None

    def cli(self, *args: str, direct: bool = False, check: bool = False) -> subprocess.CompletedProcess:
        env = {**os.environ, "MINIVISOR_DATASTORE": str(self.root)}
        env.pop("MINIVISOR_DIRECT", None)
        if direct:
            env["MINIVISOR_DIRECT"] = "1"
        result = subprocess.run([sys.executable, "-m", "minivisor", *args], env=env, capture_output=True,
                                text=True, timeout=120)
        if check:
            assert result.returncode == 0, result.stderr
        return result


@pytest.fixture
def datastore(tmp_path):
    """A fresh datastore; its VMs are powered off at the end, pass or fail (a service leaves them running)."""
    root = tmp_path / "datastore"
    Hypervisor(root)
    yield root
    trouble = power_off_all(root)
    if trouble:
        pytest.fail("VMs left running that would not stop (killed): " + "; ".join(trouble))


@pytest.fixture
def service(datastore):
    running = Running(datastore)
    try:
        yield running.start()
    finally:
        running.stop()  # the datastore fixture powers the VMs off after this


@pytest.fixture(scope="module")
def vm1_service(tmp_path_factory):
    """A service over a datastore holding the powered-off VM ``vm1`` (``small_vm``), for a module's tests that each
    leave it as they found it and assert so (refused requests); stopped, its VMs powered off, after the module,
    pass or fail."""
    root = tmp_path_factory.mktemp("vm1-service") / "datastore"
    small_vm(Hypervisor(root), "vm1")
    running = Running(root)
    try:
        yield running.start()
    finally:
        running.stop()
        trouble = power_off_all(root)
        if trouble:
            pytest.fail("VMs left running that would not stop (killed): " + "; ".join(trouble))


def small_vm(hv, name: str) -> str:
    """A VM with an empty 16 MiB disk: QEMU runs (SeaBIOS finds nothing to boot), cheap."""
    hv.create_vm(name, disk_size="16M", memory_mib=64, network="none")
    return name


class EventWatcher:
    """Subscribed to /v1/events before the test acts, so no event is missed."""

    def __init__(self, client: Client, vm: str | None = None) -> None:
        import http.client
        import queue
        import threading

        self.events: queue.Queue = queue.Queue()
        self.conn = http.client.HTTPConnection(client.host, client.port, timeout=60)
        self.conn.request("GET", "/v1/events" + (f"?vm={vm}" if vm else ""),
                          headers={"Authorization": f"Bearer {client.token}"})
        self.response = self.conn.getresponse()
        assert self.response.status == 200
        assert self.response.readline().startswith(b":")  # subscribed
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            while line := self.response.readline():  # chunked: through http.client
                if line.startswith(b"data: "):
                    self.events.put(json.loads(line[6:]))
        except (OSError, ValueError, AttributeError):  # AttributeError: http.client's, once close() ran
            pass

    def wait_for(self, predicate, timeout: float = 10.0) -> dict:
        import queue

        seen = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                event = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no matching event within {timeout} s; saw {seen}") from None
            seen.append(event)
            if predicate(event):
                return event

    def close(self) -> None:
        self.conn.close()


CHROMIUM = Path("/usr/bin/chromium")  # Debian's; Playwright drives it (no `playwright install`)
SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"  # git-ignored, for a person to look at


@pytest.fixture(scope="module")
def chromium():
    """Headless Chromium driven by Playwright, one per test module."""
    if not CHROMIUM.exists():
        pytest.skip("chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]'")
    sync_api.expect.set_options(timeout=30_000)  # a loaded 2-core machine: what the page shows may take a while
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(chromium, request):
    """A fresh browser profile (no cookies) and its page; a screenshot of it is saved when the test ends."""
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    tab = context.new_page()
    refused = []  # what the page's Content-Security-Policy blocked: the page must need nothing it forbids
    tab.on("console", lambda message: refused.append(message.text) if "Content Security Policy" in message.text
           else None)
    try:
        yield tab
        assert not refused, refused
    finally:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        try:
            tab.screenshot(path=str(SCREENSHOTS / f"{request.node.name}.png"), full_page=True)
        finally:
            context.close()
