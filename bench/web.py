#!/usr/bin/env python3
"""The web page: first paint of the inventory with 200 VMs, event-to-screen latency, console round trip.

Method
  - A real ``minivisor serve`` on loopback over a fresh datastore of ``--vms`` powered-off VMs (no disks)
    and one test guest (the appliance, 128 MiB, TCG), and Debian's headless chromium driven by
    Playwright, logged in (a session cookie) before anything is timed.
  - First paint: the page's own ``performance.mark("inventory-painted")``, set in the first animation
    frame after the list was drawn, in ms since the navigation began (the page, its modules, the
    session check, GET /v1/vms and the DOM of every row). ``--rounds`` page loads; median and max.
  - Event to screen: the guest is paused and resumed through the REST API; a MutationObserver in the page
    notes (wall clock) when the VM's state cell shows the new state; the latency is that minus the
    event's own ``time`` (when the core emitted it): the event bus, SSE, GET of the VM, the row redrawn.
  - Console round trip: one byte typed at the guest's shell and its echo read back, ``--rounds`` times:
    through a console websocket (its ticket minted over REST) from the page's JavaScript, and through
    ``minivisor vm console`` on a pseudo-terminal. Both reach the guest through its console relay.

    python bench/web.py [--vms 200] [--rounds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import select
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from common import Minivisor, load_average, start_service, stop_service  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from minivisor import Hypervisor  # noqa: E402
from minivisor.client import connect  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
# The VMs have no NICs: the host's networks (perhaps another datastore's) are left alone.
os.environ.setdefault("MINIVISOR_NETWORKING", "user")

WATCH_STATE = """([vm, state]) => {
  window.benchShown = null;
  const seen = () => document.querySelector(`tr[data-vm="${vm}"] td.state`)?.dataset.state === state;
  const observer = new MutationObserver(() => {
    if (seen()) { observer.disconnect(); window.benchShown = performance.timeOrigin + performance.now(); }
  });
  observer.observe(document.getElementById("vms"), {subtree: true, childList: true, attributes: true});
}"""

WEBSOCKET_ROUND_TRIPS = """async ([url, rounds]) => {
  const socket = new WebSocket(url);
  socket.binaryType = "arraybuffer";
  await new Promise((resolve, reject) => { socket.onopen = resolve; socket.onerror = reject; });
  let waiting = null;
  socket.onmessage = (e) => { if (waiting && new Uint8Array(e.data).includes(0x78)) { waiting(); waiting = null; } };
  const times = [];
  for (let i = 0; i < rounds; i++) {
    const echoed = new Promise((resolve) => { waiting = resolve; });
    const start = performance.now();
    socket.send(new TextEncoder().encode("x"));
    await echoed;
    times.push(performance.now() - start);
    socket.send(new TextEncoder().encode("\\u0015"));  // Ctrl-U: the shell forgets the line
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  socket.close();
  return times;
}"""


def summary(samples: list[float]) -> str:
    return f"median {statistics.median(samples):7.1f} ms   max {max(samples):7.1f} ms   ({len(samples)} samples)"


def first_paint(page, url: str, rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds + 1):  # the first load warms the service's and the browser's caches
        page.goto(url)
        while not page.evaluate("() => performance.getEntriesByName('inventory-painted').length"):
            page.wait_for_timeout(5)
        samples.append(page.evaluate("() => performance.getEntriesByName('inventory-painted')[0].startTime"))
    return samples[1:]


def event_to_screen(page, client, vm: str, rounds: int) -> list[float]:
    samples = []
    for i in range(rounds):
        action, state, kind = ("pause", "paused", "paused") if i % 2 == 0 else ("resume", "running", "resumed")
        events = client.events(vm=vm, timeout=30)
        emitted: list[float] = []
        reader = threading.Thread(target=first_event, args=(events, kind, emitted), daemon=True)
        reader.start()
        time.sleep(0.2)  # subscribed
        page.evaluate(WATCH_STATE, [vm, state])
        getattr(client, f"{action}_vm")(vm)
        reader.join(30)
        events.close()
        while (shown := page.evaluate("() => window.benchShown")) is None:
            page.wait_for_timeout(5)
        samples.append(shown - emitted[0] * 1000)
    return samples


def first_event(events, kind: str, into: list[float]) -> None:
    """The time of the first event of ``kind`` (the core's clock, seconds), appended to ``into``."""
    for event in events:
        if event["type"] == kind:
            into.append(event["time"])
            return


def websocket_round_trips(page, client, vm: str, rounds: int) -> list[float]:
    _, answer = client.request("POST", f"/v1/vms/{vm}/consoles/serial/ticket")
    url = client.url.replace("http:", "ws:") + answer["path"] + "?ticket=" + answer["ticket"]
    return page.evaluate(WEBSOCKET_ROUND_TRIPS, [url, rounds])


def cli_round_trips(mv: Minivisor, vm: str, rounds: int) -> list[float]:
    main, terminal = pty.openpty()
    console = subprocess.Popen(mv.argv("vm", "console", vm), env=mv.env, stdin=terminal, stdout=terminal,
                               stderr=terminal, start_new_session=True)
    os.close(terminal)
    samples = []
    try:
        read_until(main, b"", 1.0)  # its banner
        for _ in range(rounds):
            start = time.perf_counter()
            os.write(main, b"x")
            read_until(main, b"x", 10)
            samples.append((time.perf_counter() - start) * 1000)
            os.write(main, b"\x15")
            read_until(main, b"", 0.05)
        os.write(main, b"\x1d")  # Ctrl-]: detach
        console.wait(10)
    finally:
        if console.poll() is None:
            console.kill()
        os.close(main)
    return samples


def read_until(fd: int, wanted: bytes, timeout: float) -> bytes:
    """What ``fd`` gives until ``wanted`` is in it (b"": until ``timeout`` passes quietly)."""
    data, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
            data += os.read(fd, 4096)
            if wanted and wanted in data:
                return data
    if wanted:
        raise SystemExit(f"the console never echoed {wanted!r}: {data[-200:]!r}")
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="minivisor-bench-web-") as tmp:
        root = Path(tmp) / "datastore"
        mv = Minivisor(root)
        hv = Hypervisor(root)
        for i in range(args.vms):
            hv.create_vm(f"idle{i:03}", memory_mib=64, network="none")
        image = mv.appliance()
        hv.create_vm("guest", boot_disk=image, memory_mib=128, network="none")
        service = start_service(mv, Path(tmp) / "service.log")
        try:
            deadline = time.monotonic() + 30
            while (client := connect(root)) is None:  # service.json follows the log line
                if time.monotonic() > deadline:
                    raise SystemExit("the service wrote no service.json")
                time.sleep(0.05)
            client.start_vm("guest", wait_ready=True, timeout=120)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
                page = browser.new_page()
                page.goto(client.url + "/")
                page.fill("#token", client.token)
                page.click("#login button")
                page.wait_for_selector("tr[data-vm=guest]")
                print(f"load average before: {load_average()}")
                print(f"first paint, {args.vms + 1} VMs   {summary(first_paint(page, client.url + '/', args.rounds))}")
                print(f"event to screen          {summary(event_to_screen(page, client, 'guest', args.rounds))}")
                print(f"console echo, websocket  {summary(websocket_round_trips(page, client, 'guest', args.rounds))}")
                browser.close()
            print(f"console echo, vm console {summary(cli_round_trips(mv, 'guest', args.rounds))}")
        finally:
            mv.power_off_all()
            stop_service(service)


if __name__ == "__main__":
    main()
