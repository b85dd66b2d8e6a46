#!/usr/bin/env python3
"""The REST API under load: list and show with 1,000 VMs, parallel power-ons, crash detection.

Runs a real `minivisor serve` on loopback over a fresh datastore holding 1,000
registered VMs (no disks: listing does not need them) and 10 small ones that
can power on (empty 16 MiB disks: QEMU runs, SeaBIOS finds nothing to boot).

Targets (from issue 4):
  - GET /v1/vms with 1,000 VMs: p50 < 20 ms
  - powering on 10 VMs at once takes < half the time of one after another
  - a VMM killed with SIGKILL is reported (event) within 1 s
  - `minivisor --help` and `minivisor vm list` (small datastore) well under 0.3 s

    python bench/api.py [--vms 1000] [--rounds 200]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from minivisor import Hypervisor  # noqa: E402
from minivisor.client import Client, connect  # noqa: E402


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def timed(samples: list[float], func) -> None:
    start = time.perf_counter()
    func()
    samples.append((time.perf_counter() - start) * 1000)


def serve(root: Path) -> tuple[subprocess.Popen, Client]:
    proc = subprocess.Popen([sys.executable, "-m", "minivisor", "-d", str(root), "serve", "--listen", "127.0.0.1:0",
                             "--no-autostart"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while (client := connect(root)) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the service did not start")
        time.sleep(0.05)
    return proc, client


def latency(client: Client, rounds: int, vms: int) -> None:
    for path, label in (("/v1/vms", f"list {vms} VMs"), ("/v1/vms/idle0500", "show one VM")):
        client.request("GET", path)  # warm: the catalog's summary cache fills on the first list
        samples: list[float] = []
        for _ in range(rounds):
            timed(samples, lambda: client.request("GET", path))
        target = "  (target p50 < 20 ms)" if path == "/v1/vms" else ""
        print(f"{label:<16} p50 {statistics.median(samples):7.2f} ms   p99 {percentile(samples, 99):7.2f} ms{target}")


def power_ons(client: Client, names: list[str]) -> None:
    def stop_all() -> None:
        for name in names:
            client.stop_vm(name, hard=True)

    start = time.perf_counter()
    for name in names:
        client.start_vm(name)
    sequential = time.perf_counter() - start
    stop_all()
    threads = [threading.Thread(target=client.start_vm, args=(name,)) for name in names]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    concurrent = time.perf_counter() - start
    running = sum(vm.state.value == "running" for vm in client.list_vms() if vm.name in names)
    stop_all()
    print(f"power on {len(names)}      one after another {sequential:6.2f} s   at once {concurrent:6.2f} s   "
          f"ratio {concurrent / sequential:.2f} (target < 0.50; {running}/{len(names)} running)")


def crash_detection(client: Client, name: str, runs: int = 5) -> None:
    samples = []
    for _ in range(runs):
        pid = client.start_vm(name).vm.pid
        events = client.events(vm=name, timeout=10)
        got = threading.Event()

        def wait() -> None:
            for event in events:
                if event["type"] in ("crashed", "poweredOff") and event.get("pid") == pid:
                    got.set()
                    return

        reader = threading.Thread(target=wait, daemon=True)
        reader.start()
        time.sleep(0.2)  # let the subscription reach the service
        start = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        got.wait(10)
        samples.append((time.perf_counter() - start) * 1000)
        events.close()
    print(f"SIGKILL -> event  median {statistics.median(samples):6.0f} ms   max {max(samples):6.0f} ms (target < 1000 ms)")


def cli_speed(root: Path) -> None:
    env = {**os.environ, "MINIVISOR_DATASTORE": str(root)}
    for args in (["--help"], ["vm", "list"]):
        samples = []
        for _ in range(5):
            start = time.perf_counter()
            subprocess.run(["minivisor", *args], env=env, check=True, capture_output=True)
            samples.append(time.perf_counter() - start)
        print(f"minivisor {' '.join(args):<9} median {statistics.median(samples) * 1000:6.0f} ms (target well under 300 ms;"
              f" service {'up' if connect(root) else 'down'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="minivisor-bench-") as tmp:
        root = Path(tmp) / "datastore"
        hv = Hypervisor(root)
        start = time.perf_counter()
        for i in range(args.vms):
            hv.create_vm(f"idle{i:04d}", memory_mib=64, network="none")
        names = [f"run{i}" for i in range(10)]
        for name in names:
            hv.create_vm(name, disk_size="16M", memory_mib=64, network="none")
        print(f"setup: {args.vms + len(names)} VMs created in {time.perf_counter() - start:.1f} s")
        small = Path(tmp) / "small"
        for name in names[:3]:
            Hypervisor(small).create_vm(name, memory_mib=64, network="none")
        cli_speed(small)
        proc, client = serve(root)
        try:
            latency(client, args.rounds, args.vms + len(names))
            power_ons(client, names)
            crash_detection(client, names[0])
            cli_speed(small)
            small_proc, _ = serve(small)
            try:
                cli_speed(small)
            finally:
                small_proc.terminate()
                small_proc.wait()
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
