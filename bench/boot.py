#!/usr/bin/env python3
"""Power-on -> guest-ready: minivisor against a bare qemu-system-x86_64 with the same devices.

Both boot the same appliance disk with the same command line (minivisor's
own, from ``vm explain``), interleaved A B A B ... in one run, so machine noise
hits both alike. Prints both medians and their ratio (target: <= 1.05), then
the time of ``minivisor --help`` and ``minivisor vm list`` (targets: 0.08 s and 0.1 s).
With ``--via-service``, a third side interleaved with them: the same ``vm start`` through a
``minivisor serve`` on the datastore (the core already loaded; the direct side sets MINIVISOR_DIRECT=1).

    python bench/boot.py [--runs 5] [--via-service]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Minivisor, start_service, stop_service

READY = b"minivisor-guest: ready"


def minivisor(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "minivisor", *args], env=env, check=True,
                          capture_output=True, text=True)


def time_minivisor_boot(env: dict[str, str]) -> float:
    start = time.perf_counter()
    minivisor("vm", "start", "bench", "--wait-ready", env=env)
    elapsed = time.perf_counter() - start
    minivisor("vm", "stop", "bench", "--hard", env=env)
    return elapsed


def time_bare_boot(argv: list[str], serial_log: Path) -> float:
    """Start QEMU directly (not paused, its console written straight to the serial log, its event monitor a
    socket it serves: no relay) and poll the log."""
    serial_log.unlink(missing_ok=True)
    bare = [f"file,id=console,path={serial_log}" if arg.startswith("socket,id=console,")
            else arg.replace(",server=off", ",server=on,wait=off") for arg in argv if arg != "-S"]
    for arg in bare:  # the socket folder minivisor makes (and removes) for each power-on
        for match in re.finditer(r"path=([^,]+)", arg):
            Path(match.group(1)).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    start = time.perf_counter()
    process = subprocess.Popen(bare, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if serial_log.exists() and READY in serial_log.read_bytes():
                return time.perf_counter() - start
            if process.poll() is not None:
                raise RuntimeError("bare QEMU exited before the guest was ready")
            time.sleep(0.01)
    finally:
        process.kill()
        process.wait()


def time_command(args: list[str], env: dict[str, str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(args, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--via-service", action="store_true",
                        help="a third side: the same vm start through a minivisor serve on the datastore")
    options = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="minivisor-bench-"))
    # As a user runs it: with the bytecode caches Python writes (a test shell may turn them off).
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
           "MINIVISOR_DATASTORE": str(workdir / "ds"), "MINIVISOR_DIRECT": "1"}
    service = None
    try:
        image = minivisor("image", "build", "appliance", env=env).stdout.strip()
        minivisor("datastore", "allow-path", str(Path(image).parent), env=env)  # boot disks come from allowed folders
        minivisor("vm", "create", "bench", "--memory", "256", "--boot-disk", image, "--network", "none", env=env)
        argv = json.loads(minivisor("vm", "explain", "bench", "--json", env=env).stdout)["argv"]
        serial_log = workdir / "ds" / "bench" / "serial.log"
        through = {key: value for key, value in env.items() if key != "MINIVISOR_DIRECT"}
        if options.via_service:
            service = start_service(Minivisor(workdir / "ds"), workdir / "service.log")
        ours, bare, served = [], [], []
        for run in range(options.runs):
            ours.append(time_minivisor_boot(env))
            bare.append(time_bare_boot(argv, serial_log))
            line = f"run {run + 1}: minivisor {ours[-1]:.3f} s   bare QEMU {bare[-1]:.3f} s"
            if service:
                served.append(time_minivisor_boot(through))
                line += f"   via service {served[-1]:.3f} s"
            print(line, flush=True)
        print(f"\npower-on -> guest ready, median of {options.runs} (min..max); ratio: median of the per-run ratios:")
        for side, times in (("minivisor", ours), ("via service", served), ("bare QEMU", bare)):
            if times:
                ratio = statistics.median(t / b for t, b in zip(times, bare))
                print(f"  {side:<12} {statistics.median(times):.3f} s ({min(times):.3f}..{max(times):.3f})"
                      + (f"   ratio {ratio:.3f}x   (target <= 1.05x)" if times is not bare else ""))
        entry = shutil.which("minivisor") or ""
        command = [entry] if entry else [sys.executable, "-m", "minivisor"]
        print("\nCLI latency, median of 10:")
        print(f"  minivisor --help    {time_command([*command, '--help'], env, 10):.3f} s   (target <= 0.08 s)")
        print(f"  minivisor vm list   {time_command([*command, 'vm', 'list'], env, 10):.3f} s   (target <= 0.1 s)")
    finally:
        stop_service(service)
        subprocess.run([sys.executable, "-m", "minivisor", "vm", "stop", "bench", "--hard"], env=env,
                       capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
