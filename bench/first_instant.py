#!/usr/bin/env python3
"""Power-on -> the guest's first instant: ``minivisor vm start`` (direct) against bare QEMU, same command line.

The guest is one boot sector that prints a line and powers the machine off at once
(``minivisor_appliance.first_line``): a run measures what comes before the guest runs (the CLI,
QEMU's start, whatever minivisor does between QEMU's start and the guest's first instruction) plus
SeaBIOS's own short time, without a kernel's seconds of boot, which a busy host's load blurs far more
than the ~0.1 s looked for. A run ends at QEMU's shutdown request as its trace stamps it (minivisor's
command line asks for ``qemu_system_shutdown_request``). With ``--base SRC`` (for example
``git archive main | tar -x -C /tmp/base``, then ``--base /tmp/base/src``), the same for another
source tree, interleaved run for run with this one and bare QEMU.

    python bench/first_instant.py [--runs 15] [--base OTHER_SRC]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Minivisor, load_average, serving_itself

from minivisor_appliance.first_line import first_line_disk

SHUTDOWN = re.compile(rb"^\d+@(\d+\.\d+):qemu_system_shutdown_request", re.M)


def shutdown_stamp(text: bytes) -> float:
    """The wall-clock time of the last shutdown request QEMU traced in ``text``."""
    stamps = SHUTDOWN.findall(text)
    if not stamps:
        raise RuntimeError(f"QEMU traced no shutdown request: {text.decode(errors='replace')[-400:]}")
    return float(stamps[-1])


def time_minivisor(mv: Minivisor, src: str, vm_dir: Path) -> float:
    """From `vm start` to the guest's power-off; returns once its VMM is gone."""
    log = vm_dir / "vmm.log"
    logged = log.stat().st_size if log.exists() else 0
    start = time.time()
    subprocess.run([sys.executable, "-m", "minivisor", "-d", str(mv.root), "vm", "start", "first"],
                   env={**mv.env, "PYTHONPATH": src}, check=True, capture_output=True, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not SHUTDOWN.search(log.read_bytes()[logged:]):
        if time.monotonic() > deadline:
            raise RuntimeError("the guest did not power off within 30 s")
        time.sleep(0.01)
    elapsed = shutdown_stamp(log.read_bytes()[logged:]) - start
    record = json.loads((vm_dir / "runtime.json").read_text()) if (vm_dir / "runtime.json").exists() else None
    while record and Path(f"/proc/{record['pid']}").exists():  # QEMU exits right after its request
        time.sleep(0.01)
    return elapsed


def time_bare(argv: list[str], workdir: Path) -> float:
    """The same command line run by hand: not paused, console to a file, QEMU serving its event monitor."""
    bare = [f"file,id=console,path={workdir / 'bare-serial.log'}" if arg.startswith("pipe,id=console,")
            else serving_itself(arg) for arg in argv if arg != "-S"]
    for arg in bare:  # the socket folder minivisor makes (and removes) for each power-on
        for match in re.finditer(r"path=([^,]+)", arg):
            Path(match.group(1)).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    start = time.time()
    finished = subprocess.run(bare, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              timeout=30)
    return shutdown_stamp(finished.stderr) - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--base", help="another minivisor source tree (the folder holding minivisor/) to compare")
    options = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="minivisor-bench-"))
    try:
        mv = Minivisor(workdir / "ds", direct=True)
        mv("datastore", "allow-path", str(workdir))
        mv("vm", "create", "first", "--memory", "16", "--network", "none",
           "--boot-disk", str(first_line_disk(workdir / "first-line.img")))
        argv = json.loads(mv("vm", "explain", "first", "--json").stdout)["argv"]
        vm_dir = workdir / "ds" / "first"
        sides = {"this tree": str(Path(__file__).resolve().parents[1] / "src"),
                 **({"base": options.base} if options.base else {})}
        times: dict[str, list[float]] = {side: [] for side in (*sides, "bare QEMU")}
        print(f"load average before: {load_average()}")
        for _ in range(options.runs):
            for side, src in sides.items():
                times[side].append(time_minivisor(mv, src, vm_dir))
            times["bare QEMU"].append(time_bare(argv, workdir))
        bare = times["bare QEMU"]
        print(f"power-on -> the guest's first instant (its power-off request), median of {options.runs} (min..max);"
              " minus bare: median of the per-run differences")
        for side, values in times.items():
            line = f"  {side:<10} {statistics.median(values) * 1000:6.0f} ms  ({min(values) * 1000:.0f}..{max(values) * 1000:.0f})"
            if values is not bare:
                line += f"   minus bare {statistics.median(v - b for v, b in zip(values, bare)) * 1000:+5.0f} ms"
            print(line)
        print(f"load average after: {load_average()}")
    finally:
        subprocess.run([sys.executable, "-m", "minivisor", "-d", str(workdir / "ds"), "vm", "stop", "first", "--hard"],
                       capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
