#!/usr/bin/env python3
"""The CPU time ``minivisor vm start`` (direct, no service) spends before it starts QEMU.

What the CLI costs a power-on besides QEMU: the process's own user + system time (which other
work on a busy host barely changes, unlike wall time) from its start up to the moment it spawns
``qemu-system-*``. The spawn is then refused (the power-on fails cleanly, no guest boots), so a run
takes a fraction of a second. With ``--base SRC``, the same measurement of another source tree
(for example ``git archive main | tar -x -C /tmp/base``, then ``--base /tmp/base/src``) interleaved
with this one, run for run, and the ratio of the medians.

    python bench/poweron_cpu.py [--runs 11] [--base OTHER_SRC]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import Minivisor, load_average

# `python -m minivisor ARGS` (runpy, as -m does), with the spawn of QEMU refused once the CPU time is noted
# on stderr. _posixsubprocess is patched before subprocess imports it: nothing else is loaded ahead of the CLI.
MEASURE = """\
import os, sys, time, _posixsubprocess
spawn = _posixsubprocess.fork_exec
def refuse_qemu(args, executables, *rest):
    if any(b"qemu-system" in os.path.basename(exe) for exe in executables):
        os.write(2, b"\\ncpu-before-qemu: %f\\n" % time.process_time())
        raise FileNotFoundError(2, "refused by bench/poweron_cpu.py")
    return spawn(args, executables, *rest)
_posixsubprocess.fork_exec = refuse_qemu
import runpy
sys.argv[0] = "minivisor"
runpy.run_module("minivisor", run_name="__main__", alter_sys=True)
"""


def cpu_before_qemu(src: str, mv: Minivisor) -> float:
    env = {**mv.env, "PYTHONPATH": src}
    result = subprocess.run([sys.executable, "-c", MEASURE, "-d", str(mv.root), "vm", "start", "bench"], env=env,
                            capture_output=True, text=True, stdin=subprocess.DEVNULL)
    marker = "\ncpu-before-qemu: "
    if marker not in result.stderr:
        raise RuntimeError(f"vm start did not reach QEMU's spawn: {result.stderr.strip()[-800:]}")
    return float(result.stderr.rpartition(marker)[2].split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--base", help="another minivisor source tree (the folder holding minivisor/) to compare")
    options = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="minivisor-bench-"))
    try:
        mv = Minivisor(workdir / "ds", direct=True)
        image = mv.appliance()
        mv("vm", "create", "bench", "--memory", "256", "--boot-disk", image, "--network", "none")
        sides = {"this tree": str(Path(__file__).resolve().parents[1] / "src"), **({"base": options.base} if options.base else {})}
        times: dict[str, list[float]] = {side: [] for side in sides}
        print(f"load average before: {load_average()}")
        for _ in range(options.runs):
            for side, src in sides.items():
                times[side].append(cpu_before_qemu(src, mv))
        print(f"CPU (user + system) of `vm start` before QEMU's spawn, median of {options.runs} (min..max):")
        for side, values in times.items():
            print(f"  {side:<10} {statistics.median(values) * 1000:6.1f} ms"
                  f"  ({min(values) * 1000:.1f}..{max(values) * 1000:.1f})")
        if options.base:
            print(f"  ratio      {statistics.median(times['this tree']) / statistics.median(times['base']):.3f}")
        print(f"load average after: {load_average()}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
