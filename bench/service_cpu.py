#!/usr/bin/env python3
"""What an operation through ``minivisor serve`` costs in CPU: the CLI process's and the service's.

Wall time on a busy host says little about a few milliseconds; the CPU time (user + system) each
process spends on one command barely changes with other work. For each command, this measures the
CLI's CPU time (its rusage at exit) and the service's (the process's CPU clock before and after: every
thread, the worker threads that ended included), and the wall time. With ``--base SRC`` (another source
tree, e.g. ``git archive main src | tar -x -C /tmp/base``, then ``--base /tmp/base/src``), a second
service and CLI from that tree on a datastore of its own, run for run interleaved with this one, and
the ratios of the medians. Nothing boots: the VMs are powered off.

    python bench/service_cpu.py [--rounds 11] [--base OTHER_SRC]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from common import Minivisor, load_average, start_service, stop_service
from peers import write_specfile

SIDES = ("this tree", "base")
FIGURES = ("client", "service", "wall")


def process_cpu(pid: int) -> float:
    """Seconds of CPU the process ``pid`` has used so far, all its threads (clock_getcpuclockid)."""
    return time.clock_gettime((~pid << 3) | 2)  # CPUCLOCK_SCHED of the whole process, as glibc makes it


class Side:
    """One source tree: its service on a datastore of its own, and its CLI."""

    def __init__(self, src: str, work: Path) -> None:
        self.mv = Minivisor(work / "datastore")
        self.mv.env["PYTHONPATH"] = src
        self.mv("vm", "create", "golden", "--disk-size", "64M", "--network", "none", "--memory", "128")
        self.mv("vm", "create", "plain", "--disk-size", "64M", "--network", "none", "--memory", "128")
        self.mv("vm", "create", "snap", "--disk-size", "64M", "--network", "none", "--memory", "128")
        self.mv("snapshot", "take", "golden", "base")
        for i in range(20):
            self.mv("vm", "create", f"fill{i}", "--network", "none", "--memory", "128")
        self.service = start_service(self.mv, work / "service.log")

    def measure(self, *args: str) -> tuple[float, float, float]:
        """(client CPU, service CPU, wall) of one CLI command through the service."""
        before = process_cpu(self.service.pid)
        start = time.monotonic()
        child = subprocess.Popen(self.mv.argv(*args), env=self.mv.env, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.monotonic() - start
        service = process_cpu(self.service.pid) - before
        if status != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {child.stderr.read().decode()[-400:]}")
        child.stderr.close()
        return usage.ru_utime + usage.ru_stime, service, wall

    def register(self, i: int) -> tuple[float, float, float]:
        vmx = write_specfile(self.mv.root, f"reg{i}", str(uuid.uuid4()))
        return self.measure("vm", "register", str(vmx))

    def stop(self) -> None:
        stop_service(self.service)


ROWS: dict[str, Callable[[Side, int], tuple[float, float, float]]] = {
    "a no-op (--help)": lambda side, i: side.measure("--help"),
    "offline snapshot": lambda side, i: side.measure("snapshot", "take", "snap", f"s{i}"),
    "linked clone": lambda side, i: side.measure("vm", "clone", "golden", f"linked{i}", "--linked",
                                                 "--snapshot", "base"),
    "define/register": Side.register,
    "list, 25+ VMs": lambda side, i: side.measure("vm", "list"),
    "full clone (empty disk)": lambda side, i: side.measure("vm", "clone", "plain", f"full{i}", "--full"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--base", help="another minivisor source tree (the folder holding minivisor/) to compare")
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="minivisor-bench-svc-"))
    sides: dict[str, Side] = {}
    try:
        trees = {SIDES[0]: str(Path(__file__).resolve().parents[1] / "src")}
        if options.base:
            trees[SIDES[1]] = options.base
        for name, src in trees.items():
            (work / name).mkdir()
            sides[name] = Side(src, work / name)
        print(f"load average before: {load_average()}")
        table = []
        for row, run in ROWS.items():
            samples = {name: {figure: [] for figure in FIGURES} for name in sides}
            order = list(sides)
            for i in range(options.rounds + 1):  # round 0 warms up
                for name in order[i % len(order):] + order[:i % len(order)]:
                    for figure, value in zip(FIGURES, run(sides[name], i)):
                        if i:
                            samples[name][figure].append(value * 1000)
            table.append((row, {name: {f: statistics.median(v) for f, v in s.items()} for name, s in samples.items()}))
        print(f"medians of {options.rounds} interleaved rounds, ms (CPU: user + system)")
        header = f"{'operation':<26}" + "".join(f"{name + ' ' + f:>20}" for name in sides for f in FIGURES)
        if options.base:
            header += "".join(f"{'ratio ' + f:>15}" for f in FIGURES)
        print(header)
        for row, medians in table:
            line = f"{row:<26}" + "".join(f"{medians[name][f]:20.1f}" for name in sides for f in FIGURES)
            if options.base:
                line += "".join(f"{medians[SIDES[0]][f] / medians[SIDES[1]][f]:15.2f}" for f in FIGURES)
            print(line)
        print(f"load average after: {load_average()}")
    finally:
        for side in sides.values():
            side.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
