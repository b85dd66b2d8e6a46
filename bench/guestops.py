#!/usr/bin/env python3
"""Guest operations (issue 11), one run, each section on its own freshly booted test guest:

  - exec: ``vm exec`` round trip of a trivial command through the serial shell and through the
    QEMU guest agent (core API in-process, median of --rounds; and once through the CLI, which
    adds a Python start-up)
  - copy: throughput of ``vm copy-to`` and ``vm copy-from`` of a --size random file (default
    64 MiB), its sha256 checked inside the guest and on the host
  - boot: power-on -> ready line of the test guest, with --baseline-image (e.g. the image main
    builds, without the agent) beside it, interleaved, to show what the agent costs at boot
  - snapshots: memory snapshot and revert of a running guest on qcow2 vs VMDK disks (the table of
    bench/snapshots.py, which also runs alone)

Sections are functions in SECTIONS (name -> function(bench) -> lines): add one there.

    python bench/guestops.py [--only exec,copy] [--rounds 20] [--size 64M] [--baseline-image IMG]
                             [--snapshot-rounds 5]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Minivisor, load_average  # noqa: E402

from minivisor import Hypervisor  # noqa: E402
from minivisor.units import parse_size  # noqa: E402


class Bench:
    """One datastore, the test guest's image, and the options; ``guest()`` boots a fresh VM for a section."""

    def __init__(self, root: Path, options: argparse.Namespace) -> None:
        os.environ.setdefault("MINIVISOR_NETWORKING", "user")  # no host networks: QEMU's user-mode NAT
        self.mv = Minivisor(root, direct=True)
        self.image = Path(self.mv.appliance())
        self.hv = Hypervisor(root)
        self.options = options
        self.work = root.parent
        self._count = 0

    def guest(self, image: Path | None = None, memory_mib: int = 256) -> str:
        """A new VM booting ``image`` (the test guest by default), started and ready."""
        self._count += 1
        name = f"g{self._count}"
        self.hv.allow_path((image or self.image).parent)
        self.hv.create_vm(name, boot_disk=image or self.image, memory_mib=memory_mib, network="nat")
        self.hv.start_vm(name, wait_ready=True, timeout=120)
        return name

    def stop(self, name: str) -> None:
        self.hv.stop_vm(name, hard=True)
        self.hv.delete_vm(name)


def median_seconds(step: Callable[[], object], rounds: int, apart: float = 0.0) -> float:
    times = []
    for _ in range(rounds):
        time.sleep(apart)
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def exec_section(bench: Bench) -> list[str]:
    vm = bench.guest()
    try:
        bench.hv.exec_in_vm(vm, "true", via="agent", timeout=60)  # the agent is up
        lines = ["vm exec round trip of `true`, median of %d:" % bench.options.rounds]
        # qemu-ga sleeps 100 ms after a client hangs up (its virtio-serial HUP back-off): a command
        # right after another pays it; one typed a moment later does not
        for via in ("serial", "agent"):
            for apart, how in ((0.0, "back to back"), (0.3, "0.3 s apart")):
                seconds = median_seconds(lambda: bench.hv.exec_in_vm(vm, "true", via=via), bench.options.rounds,
                                         apart)
                lines.append(f"  core API, {via:6}, {how:12}: {seconds * 1000:8.1f} ms")
        for via in ("serial", "agent"):
            seconds = median_seconds(lambda: bench.mv("vm", "exec", "--via", via, vm, "--", "true"), 3)
            lines.append(f"  CLI,      {via:6}, back to back: {seconds * 1000:8.1f} ms (median of 3, with Python's "
                         "start-up)")
        return lines
    finally:
        bench.stop(vm)


def copy_section(bench: Bench) -> list[str]:
    size = parse_size(bench.options.size)
    source = bench.work / "random.bin"
    data = os.urandom(size)
    source.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    vm = bench.guest(memory_mib=256 + 3 * size // (1024 * 1024))  # the file lives in the guest's RAM
    try:
        bench.hv.exec_in_vm(vm, "true", via="agent", timeout=60)
        start = time.perf_counter()
        bench.hv.copy_to_guest(vm, source, "/tmp/random.bin")
        into = time.perf_counter() - start
        inside = bench.hv.exec_in_vm(vm, "sha256sum /tmp/random.bin", timeout=300).output.split()[0]
        target = bench.work / "back.bin"
        start = time.perf_counter()
        bench.hv.copy_from_guest(vm, "/tmp/random.bin", target)
        out = time.perf_counter() - start
        back = hashlib.sha256(target.read_bytes()).hexdigest()
    finally:
        bench.stop(vm)
    mib = size / (1024 * 1024)
    return [f"copy of a {mib:.0f} MiB random file through the guest agent:",
            f"  copy-to:   {into:7.1f} s  {mib / into:6.2f} MiB/s  sha256 inside the guest "
            f"{'matches' if inside == digest else 'DIFFERS'}",
            f"  copy-from: {out:7.1f} s  {mib / out:6.2f} MiB/s  sha256 on the host "
            f"{'matches' if back == digest else 'DIFFERS'}"]


def boot_section(bench: Bench) -> list[str]:
    images = {"with the agent": bench.image}
    if bench.options.baseline_image:
        images["baseline"] = Path(bench.options.baseline_image).resolve()
    times: dict[str, list[float]] = {label: [] for label in images}
    cpu: dict[str, list[float]] = {label: [] for label in images}
    for _ in range(bench.options.boots):
        for label, image in images.items():
            start = time.perf_counter()
            vm = bench.guest(image, memory_mib=64)
            times[label].append(time.perf_counter() - start)
            cpu[label].append(cpu_seconds(bench.hv.get_vm(vm).pid))
            bench.stop(vm)
    lines = [f"power-on -> ready line (64 MiB guest), median of {bench.options.boots} (QEMU's CPU time to the "
             "ready line too: what a loaded host does not blur):"]
    lines += [f"  {label:15} {statistics.median(times[label]):6.2f} s wall, {statistics.median(cpu[label]):5.2f} s "
              f"QEMU CPU  ({Path(images[label]).name})" for label in images]
    return lines


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def snapshots_section(bench: Bench) -> list[str]:
    import snapshots  # bench/snapshots.py

    return snapshots.table(bench.hv, bench.image, bench.options.snapshot_rounds)


SECTIONS: dict[str, Callable[[Bench], list[str]]] = {
    "exec": exec_section,
    "copy": copy_section,
    "boot": boot_section,
    "snapshots": snapshots_section,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=",".join(SECTIONS), help="Sections to run, comma-separated.")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--size", default="64M")
    parser.add_argument("--boots", type=int, default=5)
    parser.add_argument("--baseline-image", help="An older appliance image to boot beside this one.")
    parser.add_argument("--snapshot-rounds", type=int, default=5)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="minivisor-bench-guestops-") as work:
        bench = Bench(Path(work) / "ds", options)
        print(f"load average before: {load_average()}")
        try:
            for name in options.only.split(","):
                print("\n".join(SECTIONS[name](bench)), flush=True)
        finally:
            bench.mv.power_off_all()
        print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
