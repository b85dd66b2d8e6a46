#!/usr/bin/env python3
"""How many idle test guests run at once, and what each costs (issue 13).

Method
  - A fresh datastore under /tmp; one VM ``golden`` from the test appliance (``--memory``
    MiB, default 64, 1 vCPU, no NIC) with a snapshot ``base``; every guest is a linked
    clone of it (a few hundred KiB each), powered on with ``vm start --wait-ready``, one
    after another, until the host's memory admission refuses one (exit 69), a power-on
    fails, or ``--limit`` (default 60) guests run.
  - Then, with all of them idle: every guest must answer ``vm exec NAME -- echo ok``;
    the CPU each QEMU and the host use over ``--sample`` seconds (/proc/PID/stat,
    /proc/stat); memory from /proc: each QEMU's RSS and PSS against memSize,
    minivisor's own processes (the console relays, and ``minivisor serve`` with
    ``--service``) by PSS, which splits pages shared between the relays fairly, and
    the host's MemAvailable before the first power-on and now.
  - Memory sharing: QEMU marks guest RAM mergeable (its default ``mem-merge=on``). If
    KSM (/sys/kernel/mm/ksm) is off, the script turns it on with a faster scan
    (``--ksm-pages`` pages per 20 ms wake-up), waits until a full scan merges less than
    2% more (at most ``--ksm-wait`` s), reports the pages shared, the memory saved, the QEMUs' PSS
    afterwards and ksmd's CPU time, and restores every KSM setting it changed once the
    guests are off.
  - Balloon: reported as available if the VMM command line (``vm explain --json``) has
    a balloon device; minivisor has none today.
  - Clean-up, whatever happens: every VM powered off (hard), the service stopped, KSM
    restored, the datastore removed.

    python bench/density.py [--limit 60] [--memory 64] [--service] [--ksm-wait 300]

The test appliance boots in 64 MiB: its kernel (built from linux-source-6.1 with every driver
built in, src/minivisor_appliance/kernel.config) is 3 MiB and inflates itself below 32 MiB. A
guest that cannot boot in ``--memory`` resets in a loop (panic=-1, then SYSLINUX again); the
script says so.

Needs root for KSM (without it, the sharing part is reported as not measured).
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import BenchError, Minivisor, load_average, on_demand_service, start_service, stop_on_demand_service, \
    stop_service

from minivisor import Hypervisor
from minivisor.vmm import relay

# The module each console relay runs (python -c "from minivisor.vmm.relay import main..."), read from the
# module itself: a move cannot hide them.
RELAY_MODULE = relay.__name__.encode()

KSM = Path("/sys/kernel/mm/ksm")
PAGE = 4096
TICKS = 100  # USER_HZ: /proc/*/stat counts CPU time in 1/100 s
MIB = 1024 * 1024


# -- /proc ----------------------------------------------------------------------------------------------------

def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of a process, in KiB."""
    rss = _field(Path(f"/proc/{pid}/status"), "VmRSS:")
    pss = _field(Path(f"/proc/{pid}/smaps_rollup"), "Pss:")
    return rss, pss


def _field(path: Path, name: str) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(name):
            return int(line.split()[1])
    return 0


def cpu_ticks(pid: int) -> int:
    """User + system CPU time of a process so far, in ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def host_busy_idle() -> tuple[int, int]:
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, idle


def mem_available_mib() -> int:
    return _field(Path("/proc/meminfo"), "MemAvailable:") // 1024


def relay_pids(root: Path) -> list[int]:
    """The console relays of this datastore's VMs (their command line names the VM's serial.log in it)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if (any(RELAY_MODULE in arg for arg in argv)  # python -c "from minivisor.vmm.relay import ..."
                and any(arg.startswith(str(root).encode() + b"/") for arg in argv)):
            found.append(int(cmdline.parent.name))
    return found


def ksmd_ticks() -> int | None:
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == "ksmd":
                return cpu_ticks(int(comm.parent.name))
        except OSError:
            continue
    return None


# -- KSM ------------------------------------------------------------------------------------------------------

class Ksm:
    """The host's KSM settings: turned on for the run if they were off, restored after."""

    def __init__(self, pages_to_scan: int) -> None:
        self.pages_to_scan = pages_to_scan
        self.saved: dict[str, str] = {}

    def available(self) -> str | None:
        """Why KSM cannot be used here, or None."""
        if not (KSM / "run").exists():
            return "the kernel has no KSM (/sys/kernel/mm/ksm missing)"
        try:
            with open(KSM / "run", "r+"):
                pass
        except OSError as exc:
            return f"/sys/kernel/mm/ksm/run is not writable ({exc.strerror})"
        return None

    def was_on(self) -> bool:
        return (KSM / "run").read_text().strip() == "1"

    def start(self) -> None:
        for name, value in (("pages_to_scan", str(self.pages_to_scan)), ("run", "1")):
            self.saved.setdefault(name, (KSM / name).read_text().strip())
            (KSM / name).write_text(value)

    def restore(self) -> None:
        for name in ("run", "pages_to_scan"):
            if name in self.saved:
                (KSM / name).write_text(self.saved[name])

    @staticmethod
    def counters() -> dict[str, int]:
        names = ("full_scans", "pages_shared", "pages_sharing", "pages_unshared", "pages_volatile")
        found = {name: int((KSM / name).read_text()) for name in names}
        if (KSM / "general_profit").exists():
            found["general_profit"] = int((KSM / "general_profit").read_text())
        return found

    def settle(self, wait: float) -> tuple[dict[str, int], float]:
        """Wait until a full scan merges less than 2% more (pages merge once seen unchanged twice), at least two
        full scans, at most ``wait`` s; returns the counters and the seconds waited."""
        start = time.monotonic()
        scans, sharing = self.counters()["full_scans"], -1
        first = scans
        while time.monotonic() - start < wait:
            time.sleep(2)
            now = self.counters()
            if now["full_scans"] == scans:
                continue
            scans, grown = now["full_scans"], now["pages_sharing"] - sharing
            if scans >= first + 2 and grown < 0.02 * now["pages_sharing"]:
                break
            sharing = now["pages_sharing"]
        return self.counters(), time.monotonic() - start


# -- the run --------------------------------------------------------------------------------------------------

@dataclass
class Guests:
    """What the power-on loop did."""

    names: list[str] = field(default_factory=list)
    boot_seconds: list[float] = field(default_factory=list)
    stopped_because: str = ""


def power_on_until_refused(mv: Minivisor, limit: int) -> Guests:
    guests = Guests()
    for i in range(limit):
        name = f"d{i:02d}"
        mv("vm", "clone", "golden", name, "--linked", "--snapshot", "base")
        start = time.monotonic()
        result = mv.try_("vm", "start", name, "--wait-ready", "--timeout", "120")
        seconds = time.monotonic() - start
        if result.returncode != 0:
            kind = "memory admission refused it" if result.returncode == 69 else f"exit {result.returncode}"
            guests.stopped_because = (f"power-on {i + 1} ({name}): {kind}: {result.stderr.strip()}\n"
                                      f"  {console_diagnosis(Hypervisor(mv.root).vm_paths(name).serial_log)}")
            mv.try_("vm", "stop", name, "--hard")  # a guest that started but never said ready
            return guests
        guests.names.append(name)
        guests.boot_seconds.append(seconds)
        print(f"  {name} ready in {seconds:5.1f} s   load {load_average()}", flush=True)
    guests.stopped_because = f"the limit: {limit} guests"
    return guests


def console_diagnosis(serial_log: Path) -> str:
    """What the guest's console shows: a boot loop (its first line again and again), or its last line."""
    lines = [line.strip() for line in serial_log.read_text(errors="replace").splitlines() if line.strip()]
    if not lines:
        return f"{serial_log} is empty: the guest printed nothing"
    if (count := lines.count(lines[0])) > 1:
        return f"the guest reset {count - 1} times (a boot loop): {serial_log} shows {lines[0]!r} {count} times"
    return f"the guest's last line in {serial_log}: {lines[-1]!r}"


def exec_all(mv: Minivisor, names: list[str]) -> tuple[list[str], list[float]]:
    """``vm exec NAME -- echo ok`` in each guest; returns the guests that did not answer ok, and the latencies."""
    failed, seconds = [], []
    for name in names:
        start = time.monotonic()
        result = mv.try_("vm", "exec", name, "--timeout", "60", "--", "echo", "ok")
        seconds.append(time.monotonic() - start)
        if result.returncode != 0 or result.stdout.strip() != "ok":
            failed.append(f"{name} (exit {result.returncode}: {(result.stdout + result.stderr).strip()[-120:]})")
    return failed, seconds


def cpu_sample(pids: list[int], seconds: float) -> tuple[float, float]:
    """(CPU % of one core used by these processes together, host busy % of all cores) over ``seconds``."""
    before = {pid: cpu_ticks(pid) for pid in pids}
    busy0, idle0 = host_busy_idle()
    time.sleep(seconds)
    used = sum(cpu_ticks(pid) - ticks for pid, ticks in before.items())
    busy1, idle1 = host_busy_idle()
    host = 100 * (busy1 - busy0) / max(1, (busy1 - busy0) + (idle1 - idle0))
    return 100 * used / TICKS / seconds, host


def summary(label: str, values_kib: list[int]) -> str:
    mib = [v / 1024 for v in values_kib]
    return (f"{label:<34} median {statistics.median(mib):6.1f} MiB  min {min(mib):6.1f}  max {max(mib):6.1f}"
            f"  total {sum(mib):8.1f} MiB")


def report_memory(hv: Hypervisor, names: list[str], root: Path, service_pid: int | None, memory_mib: int) -> None:
    qemu = [memory_kib(hv.get_vm(name).pid) for name in names]  # type: ignore[arg-type]
    relays = [memory_kib(pid) for pid in relay_pids(root)]
    print(f"\nmemory, {len(names)} idle guests of memSize {memory_mib} MiB:")
    print(summary("QEMU RSS per guest", [rss for rss, _ in qemu]))
    print(summary("QEMU PSS per guest", [pss for _, pss in qemu]))
    print(f"  QEMU RSS / memSize: {statistics.median(rss for rss, _ in qemu) / 1024 / memory_mib:.2f}")
    print(summary(f"console relays ({len(relays)}) PSS", [pss for _, pss in relays]))
    print(summary(f"console relays ({len(relays)}) RSS", [rss for rss, _ in relays]))
    own = sum(pss for _, pss in relays)
    if service_pid is not None:
        rss, pss = memory_kib(service_pid)
        print(f"{'minivisor serve':<34} PSS {pss / 1024:6.1f} MiB  RSS {rss / 1024:6.1f} MiB")
        own += pss
    print(f"minivisor's own memory per guest (PSS of relays{' + service' if service_pid else ''}) / guests: "
          f"{own / 1024 / len(names):.1f} MiB   (the CLI exits after each command; a service is counted whole)")


def report_ksm(ksm: Ksm, hv: Hypervisor, names: list[str], wait: float) -> None:
    if problem := ksm.available():
        print(f"\nKSM: not measured: {problem}")
        return
    if ksm.was_on():
        print("\nKSM: already on before the run (no figure without sharing to compare with)")
    before_avail = mem_available_mib()
    before_pss = sum(memory_kib(hv.get_vm(name).pid)[1] for name in names)  # type: ignore[arg-type]
    ksmd_before = ksmd_ticks()
    ksm.start()
    counters, seconds = ksm.settle(wait)
    ksmd_after = ksmd_ticks()
    after_pss = sum(memory_kib(hv.get_vm(name).pid)[1] for name in names)  # type: ignore[arg-type]
    saved = counters["pages_sharing"] * PAGE / MIB
    print(f"\nKSM on (pages_to_scan {ksm.pages_to_scan}), after {seconds:.0f} s: {counters}")
    print(f"  memory saved: {saved:.0f} MiB in all, {saved / len(names):.1f} MiB per guest "
          f"({counters['pages_shared']} shared pages stand for {counters['pages_sharing']} more)")
    print(f"  QEMU PSS in all: {before_pss / 1024:.0f} MiB before, {after_pss / 1024:.0f} MiB after "
          f"({after_pss / 1024 / len(names):.1f} MiB per guest)")
    print(f"  host MemAvailable: {before_avail} MiB before, {mem_available_mib()} MiB after")
    if ksmd_before is not None and ksmd_after is not None:
        print(f"  ksmd CPU: {(ksmd_after - ksmd_before) / TICKS:.1f} s over {seconds:.0f} s")


def report_balloon(mv: Minivisor, name: str) -> None:
    argv = " ".join(mv("vm", "explain", name, "--json").stdout.split())
    if re.search(r"balloon", argv):
        print("\nballoon: the VMM has a balloon device (not exercised by this benchmark)")
    else:
        print("\nballoon: not available: minivisor gives VMs no balloon device (none in the VMM command line)")


def measure(mv: Minivisor, options: argparse.Namespace, ksm: Ksm) -> None:
    mv("vm", "create", "golden", "--memory", str(options.memory), "--boot-disk", mv.appliance(), "--network", "none")
    mv("snapshot", "take", "golden", "base")
    service = start_service(mv, mv.root.parent / "service.log") if options.service else None
    try:
        available_before = mem_available_mib()
        print(f"powering on guests of {options.memory} MiB (limit {options.limit}); MemAvailable "
              f"{available_before} MiB; load {load_average()}", flush=True)
        guests = power_on_until_refused(mv, options.limit)
        names = guests.names
        print(f"\n{len(names)} guests running at once; stopped by {guests.stopped_because}")
        if not names:
            return
        boots = guests.boot_seconds
        print(f"power-on -> ready: first {boots[0]:.1f} s, median {statistics.median(boots):.1f} s, "
              f"last {boots[-1]:.1f} s")
        hv = Hypervisor(mv.root)
        time.sleep(options.settle)  # let the last guests finish their start-up work
        pids = [hv.get_vm(name).pid for name in names]
        qemu_cpu, host_cpu = cpu_sample(pids, options.sample)  # type: ignore[arg-type]
        relays_cpu, _ = cpu_sample(relay_pids(mv.root), options.sample)
        print(f"idle CPU over {options.sample:.0f} s: QEMUs {qemu_cpu:.0f}% of one core in all "
              f"({qemu_cpu / len(names):.1f}% per guest), relays {relays_cpu:.1f}%, host {host_cpu:.0f}% busy "
              f"(2 cores = 100%); load {load_average()}")
        failed, exec_seconds = exec_all(mv, names)
        print(f"vm exec NAME -- echo ok: {len(names) - len(failed)} of {len(names)} answered ok; latency median "
              f"{statistics.median(exec_seconds):.2f} s, max {max(exec_seconds):.2f} s")
        for line in failed:
            print(f"  no answer: {line}")
        # the service the CLI's commands go through: one started here, or the one they started on demand
        report_memory(hv, names, mv.root, service.pid if service else on_demand_service(mv.root), options.memory)
        print(f"host MemAvailable: {available_before} MiB before the first power-on, {mem_available_mib()} MiB "
              f"now: {(available_before - mem_available_mib()) / len(names):.1f} MiB per guest, everything included")
        report_balloon(mv, names[0])
        report_ksm(ksm, hv, names, options.ksm_wait)
    finally:
        stop_service(service)  # the VMs keep running without it; main() powers them off
        stop_on_demand_service(mv.root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=60, help="the most guests to power on [60]")
    parser.add_argument("--memory", type=int, default=64, help="memSize of each guest in MiB [64]")
    parser.add_argument("--service", action="store_true", help="run minivisor serve; the CLI goes through it")
    parser.add_argument("--settle", type=float, default=10, help="seconds idle before measuring [10]")
    parser.add_argument("--sample", type=float, default=10, help="seconds of CPU sampling [10]")
    parser.add_argument("--ksm-wait", type=float, default=300, help="the longest wait for KSM to settle [300]")
    parser.add_argument("--ksm-pages", type=int, default=1000, help="KSM pages_to_scan while it runs [1000]")
    options = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up on a plain kill too
    work = Path(tempfile.mkdtemp(prefix="minivisor-bench-density-"))
    mv = Minivisor(work / "datastore")
    ksm = Ksm(options.ksm_pages)
    try:
        measure(mv, options, ksm)
        print(f"\nload average at end: {load_average()}")
    except BenchError as exc:
        sys.exit(f"benchmark failed: {exc}")
    finally:
        mv.power_off_all()
        ksm.restore()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
