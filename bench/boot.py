#!/usr/bin/env python3
"""Power-on -> guest-ready: minivisor against a bare qemu-system-x86_64 with the same command line.

Method (a 5 % target on a noisy 2-core TCG host, where single boots of the ~2.5 s test guest spread by
tens of percent):

  - Every side boots the same appliance with minivisor's own QEMU command line (``vm explain``). Bare
    QEMU gets it with two changes only, since nobody else is there to serve them: its console writes
    to a file (minivisor's goes through a pipe to its console relay, which writes ``serial.log``)
    and its event monitor listens instead of connecting to the relay. Same devices, same options,
    same firmware, same ``-sandbox``; not paused either way.
  - Bare QEMU's guest is ready when its console file shows the ready line: the script sleeps on
    inotify for the file's changes, as ``vm start --wait-ready`` sleeps on its runtime folder (no
    polling on either side to compete with the guest for the CPU or to add its period to a side).
  - Rounds: each boots every side once, the order rotated every round (with two sides: A B, B A, ...),
    after one untimed warm-up round, so a drift of the host's speed hits every side alike. Each side's
    figure for a round is divided by bare QEMU's of the same round; the result is the median of those
    per-round ratios with a distribution-free 95 % confidence interval (order statistics of the
    ratios: where the median lies, whatever the noise's shape). Read the target against the interval.
  - For minivisor's sides, each boot is split in three: the command's start to QEMU's spawn (from
    QEMU's start time in /proc, 10 ms ticks), QEMU's spawn to the relay's ready note (seen by inotify
    from a thread of the script), and that note to the command's exit. The middle part is the guest's
    boot itself, comparable to bare QEMU's whole time; the other two are minivisor's own cost around it.

Sides: ``minivisor`` (this tree, ``vm start --wait-ready`` with MINIVISOR_DIRECT=1), ``--base SRC``
(another source tree, e.g. ``git archive main src | tar -x -C /tmp/base`` then ``--base /tmp/base/src``,
on a datastore of its own: a before/after comparison in the same rounds), ``--via-service`` (the same
command through a ``minivisor serve`` of this tree), and ``bare QEMU``. Then the time of ``minivisor
--help`` and ``minivisor vm list`` (targets: 0.08 s and 0.1 s).

    python bench/boot.py [--rounds 15] [--base OTHER_SRC] [--via-service]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import re
import select
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from common import Minivisor, load_average, serving_itself, start_service, stop_service

READY = b"minivisor-guest: ready"
IN_MODIFY, IN_MOVED_TO = 0x2, 0x80  # <sys/inotify.h>
BARE = "bare QEMU"
TICK = os.sysconf("SC_CLK_TCK")


class Boot:
    """One timed power-on: its wall time and, for minivisor's sides, its three parts (None for bare QEMU)."""

    def __init__(self, seconds: float, parts: tuple[float, float, float] | None = None) -> None:
        self.seconds, self.parts = seconds, parts


def qemu_start(pid: int) -> float:
    """When the process ``pid`` started, in CLOCK_BOOTTIME seconds (/proc/PID/stat field 22, in ticks)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[19]) / TICK


class MinivisorSide:
    """``vm start bench --wait-ready`` of one minivisor CLI on its datastore, then a hard stop (untimed)."""

    def __init__(self, mv: Minivisor) -> None:
        self.mv = mv
        argv = json.loads(mv("vm", "explain", "bench", "--json").stdout)["argv"]
        self.ready_note = Path(re.search(r"pipe,id=console,path=([^,]+)/serial", " ".join(argv)).group(1)) / "ready"

    def __call__(self) -> Boot:
        with NoteWatch(self.ready_note) as note:
            boot_clock, start = time.clock_gettime(time.CLOCK_BOOTTIME), time.perf_counter()
            out = self.mv("vm", "start", "bench", "--wait-ready").stdout
            end = time.perf_counter()
            try:
                spawned = qemu_start(int(re.search(r"\(pid (\d+)", out).group(1))) - boot_clock
                ready = note.seen() - start
            finally:
                self.mv("vm", "stop", "bench", "--hard")
        return Boot(end - start, (spawned, ready - spawned, end - start - ready))


class NoteWatch:
    """When the relay renames a note into the runtime folder (inotify, from a thread): the note's mtime would do
    but for the file system's clock, which lags by up to tens of ms on an idle host (coarse, tickless)."""

    def __init__(self, note: Path) -> None:
        note.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # as the launch makes it (it empties it)
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK)
        if self.fd < 0 or libc.inotify_add_watch(self.fd, os.fsencode(note.parent), IN_MOVED_TO) < 0:
            raise OSError(ctypes.get_errno(), "inotify")
        self.name, self.when = os.fsencode(note.name), None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.done.is_set() and self.when is None:
            if not select.select([self.fd], [], [], 0.5)[0]:
                continue
            now, data = time.perf_counter(), os.read(self.fd, 65536)
            offset = 0
            while offset < len(data):
                _, _, _, size = struct.unpack_from("iIII", data, offset)
                if data[offset + 16:offset + 16 + size].rstrip(b"\0") == self.name:
                    self.when = now
                offset += 16 + size

    def seen(self) -> float:
        """perf_counter() when the note was renamed in (the launch has returned: it had been)."""
        self.thread.join(5)
        if self.when is None:
            raise RuntimeError("the ready note was not seen")
        return self.when

    def __enter__(self) -> NoteWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()
        os.close(self.fd)  # after the timing: closing an inotify descriptor waits for an RCU grace period


class BareSide:
    """QEMU started directly with minivisor's command line (see the module's docstring), killed once ready."""

    def __init__(self, argv: list[str], serial_log: Path) -> None:
        self.serial_log = serial_log
        self.argv = [f"file,id=console,path={serial_log}" if arg.startswith("pipe,id=console,")
                     else serving_itself(arg) for arg in argv if arg != "-S"]
        self.libc = ctypes.CDLL(None, use_errno=True)

    def __call__(self) -> Boot:
        for arg in self.argv:  # the socket folder minivisor makes (and removes) for each power-on
            for match in re.finditer(r"path=([^,]+)", arg):
                Path(match.group(1)).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.serial_log.write_bytes(b"")  # there to be watched before QEMU starts (QEMU truncates it)
        watch = self.libc.inotify_init1(os.O_CLOEXEC)
        if watch < 0 or self.libc.inotify_add_watch(watch, os.fsencode(self.serial_log), IN_MODIFY) < 0:
            raise OSError(ctypes.get_errno(), "inotify")
        try:
            start = time.perf_counter()
            process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
            try:
                while READY not in self.serial_log.read_bytes():
                    if select.select([watch], [], [], 1.0)[0]:
                        os.read(watch, 4096)
                    elif process.poll() is not None:
                        raise RuntimeError("bare QEMU exited before the guest was ready")
                return Boot(time.perf_counter() - start)
            finally:
                process.kill()
                process.wait()
        finally:
            os.close(watch)  # after the timing: closing an inotify descriptor waits for an RCU grace period


def median_interval(values: list[float]) -> tuple[float, float]:
    """A distribution-free 95 % confidence interval of the median of ``values`` (order statistics: the
    k-th smallest and largest, k the largest with P(Binomial(n, 1/2) < k) <= 2.5 %); the whole range
    when there are too few values for one (n < 6)."""
    ordered, n = sorted(values), len(values)
    k, below = 0, 0.0
    while k < n and below + math.comb(n, k) / 2 ** n <= 0.025:
        below += math.comb(n, k) / 2 ** n
        k += 1
    k = max(k, 1)
    return ordered[k - 1], ordered[n - k]


def run_rounds(sides: dict[str, Callable[[], Boot]], rounds: int) -> dict[str, list[Boot]]:
    """One warm-up round, then ``rounds`` rounds, every side once a round, the order rotated each round."""
    boots: dict[str, list[Boot]] = {side: [] for side in sides}
    order = list(sides)
    for i in range(rounds + 1):
        for side in order[i % len(order):] + order[:i % len(order)]:
            boot = sides[side]()
            if i:
                boots[side].append(boot)
        if i:
            print(f"round {i}: " + "   ".join(f"{side} {_described(boots[side][-1])}" for side in order)
                  + f"   (load {load_average()})", flush=True)
    return boots


def _described(boot: Boot) -> str:
    """``1.865 s`` (bare QEMU) or ``1.865 s (80+1728+7)``: the parts of a minivisor side's boot, in ms."""
    parts = f" ({'+'.join(f'{part * 1000:.0f}' for part in boot.parts)})" if boot.parts else ""
    return f"{boot.seconds:.3f} s{parts}"


def report(boots: dict[str, list[Boot]]) -> None:
    rounds = len(boots[BARE])
    print(f"\npower-on -> guest ready, {rounds} rounds: median (min..max); ratio = median of the per-round "
          f"ratios to bare QEMU, [95 % interval]")
    for side, samples in boots.items():
        times = [boot.seconds for boot in samples]
        line = f"  {side:<14} {statistics.median(times):.3f} s ({min(times):.3f}..{max(times):.3f})"
        if side != BARE:
            ratios = [boot.seconds / bare.seconds for boot, bare in zip(samples, boots[BARE])]
            low, high = median_interval(ratios)
            line += f"   ratio {statistics.median(ratios):.3f}x [{low:.3f}..{high:.3f}]   (target <= 1.05x)"
        print(line)
    print("\nminivisor's sides, medians in ms: start -> QEMU's spawn | spawn -> ready note (the guest's boot) | "
          "note -> exit;\n  the boot's ratio to bare QEMU's whole time, per round")
    for side, samples in boots.items():
        if side == BARE:
            continue
        before, guest, after = ([boot.parts[i] * 1000 for boot in samples] for i in range(3))
        ratios = [boot.parts[1] / bare.seconds for boot, bare in zip(samples, boots[BARE])]
        low, high = median_interval(ratios)
        print(f"  {side:<14} {statistics.median(before):5.0f} | {statistics.median(guest):5.0f} | "
              f"{statistics.median(after):4.0f}   boot ratio {statistics.median(ratios):.3f}x [{low:.3f}..{high:.3f}]")


def time_command(args: list[str], env: dict[str, str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(args, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_vm(mv: Minivisor) -> None:
    image = mv.appliance()
    mv("vm", "create", "bench", "--memory", "256", "--boot-disk", image, "--network", "none")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", "--runs", type=int, default=15, help="timed rounds, after one warm-up [15]")
    parser.add_argument("--base", help="another minivisor source tree (the folder holding minivisor/) as a side")
    parser.add_argument("--via-service", action="store_true",
                        help="a side: the same vm start through a minivisor serve of this tree on its datastore")
    options = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # power off what runs on a plain kill too
    workdir = Path(tempfile.mkdtemp(prefix="minivisor-bench-"))
    mv = Minivisor(workdir / "ds", direct=True)
    base = None
    service = None
    try:
        make_vm(mv)
        argv = json.loads(mv("vm", "explain", "bench", "--json").stdout)["argv"]
        sides: dict[str, Callable[[], Boot]] = {"minivisor": MinivisorSide(mv)}
        if options.base:
            base = Minivisor(workdir / "base-ds", direct=True)
            base.env["PYTHONPATH"] = options.base
            make_vm(base)
            sides["base"] = MinivisorSide(base)
        if options.via_service:
            through = Minivisor(mv.root)
            service = start_service(through, workdir / "service.log")
            sides["via service"] = MinivisorSide(through)
        sides[BARE] = BareSide(argv, workdir / "bare-serial.log")
        print(f"load average at start: {load_average()}", flush=True)
        report(run_rounds(sides, options.rounds))
        print(f"load average at end: {load_average()}")
        entry = shutil.which("minivisor")
        command = [entry] if entry else [sys.executable, "-m", "minivisor"]
        print("\nCLI latency, median of 10:")
        print(f"  minivisor --help    {time_command([*command, '--help'], mv.env, 10):.3f} s   (target <= 0.08 s)")
        print(f"  minivisor vm list   {time_command([*command, '-d', str(mv.root), 'vm', 'list'], mv.env, 10):.3f} s"
              "   (target <= 0.1 s)")
    finally:
        stop_service(service)
        for side in (mv, base):
            if side is not None:
                side.power_off_all()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
