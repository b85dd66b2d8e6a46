#!/usr/bin/env python3
"""Virtual disk costs, side by side in one run (issue 3).

  - creating a thin 1 TiB disk: time and bytes really used
  - taking a snapshot and a linked clone of a VM whose disk holds 64 MiB vs
    2 GiB of data: the time must not grow with the data (ratio ~ 1)
  - a full clone's throughput against ``cp --sparse=always`` of the same
    files (target: at least 0.8x)

Everything runs on a fresh datastore under --dir (default: a temp folder on
the same file system as /tmp); no VM is booted.

    python bench/storage.py [--big 2G] [--rounds 5] [--copies 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from minivisor import Hypervisor  # noqa: E402
from minivisor.images.layers import allocated_bytes, read_layer
from minivisor.units import human_size, parse_size

MIB = 1024 * 1024


def timed(action) -> float:
    subprocess.run(["sync"], check=True)  # start each measurement with no dirty pages of the previous one
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def fill(path: Path, size: int) -> None:
    """Write ``size`` bytes of non-zero data into a qcow2 disk (as a guest would)."""
    step = 256 * MIB
    commands = []
    for offset in range(0, size, step):
        commands += ["-c", f"write -P 0x5a {offset} {min(step, size - offset)}"]
    subprocess.run(["qemu-io", "-f", "qcow2", *commands, str(path)], check=True, capture_output=True)


def data_vm(hv: Hypervisor, name: str, data: int) -> Path:
    hv.create_vm(name, memory_mib=64, disk_size=human_size(max(4 * 1024 ** 3, 2 * data)).replace(" ", "")
                 .replace("iB", ""), network="none")
    disk = hv.datastore.root / name / f"{name}.qcow2"
    fill(disk, data)
    return disk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--big", default="2G", help="data in the big VM's disk [2G]")
    parser.add_argument("--rounds", type=int, default=5, help="snapshots and linked clones per VM [5]")
    parser.add_argument("--copies", type=int, default=5,
                        help="interleaved rounds of cp and full clone [5]; the best of each counts, since a "
                             "shared virtual disk's write speed varies several-fold between runs")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the scratch datastore")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="minivisor-bench-storage-", dir=args.dir))
    rows: list[tuple[str, str, str]] = []
    try:
        hv = Hypervisor(work / "ds")
        root = hv.datastore.root

        # 1. thin 1 TiB
        seconds = timed(lambda: hv.disk_create(root / "thin-1t.qcow2", "1T"))
        used = hv.disk_info(root / "thin-1t.qcow2")["allocated"]
        rows.append(("thin 1 TiB qcow2: create", f"{seconds * 1000:.1f} ms", f"{human_size(used)} used"))

        # 2. snapshot and linked clone time vs data size
        sizes = {"small": 64 * MIB, "big": parse_size(args.big)}
        snap_times: dict[str, float] = {}
        clone_times: dict[str, float] = {}
        for label, data in sizes.items():
            data_vm(hv, label, data)
            snaps, clones = [], []
            for i in range(args.rounds):
                snaps.append(timed(lambda: hv.snapshot_take(label, f"s{i}")))
                clones.append(timed(lambda: hv.clone_vm(label, f"{label}-clone{i}", linked=True,
                                                        snapshot=f"s{i}")))
            snap_times[label], clone_times[label] = statistics.median(snaps), statistics.median(clones)
            rows.append((f"snapshot, {human_size(data)} of data", f"{snap_times[label] * 1000:.1f} ms",
                         f"median of {args.rounds}"))
            rows.append((f"linked clone, {human_size(data)} of data", f"{clone_times[label] * 1000:.1f} ms",
                         f"median of {args.rounds}"))
        snap_ratio = snap_times["big"] / snap_times["small"]
        clone_ratio = clone_times["big"] / clone_times["small"]
        clone_disk = read_layer(root / "big-clone0" / "big-clone0.qcow2", "qcow2")
        rows.append(("linked clone disk: bytes used", human_size(allocated_bytes(clone_disk)),
                     f"for {human_size(sizes['big'])} of source data"))

        # 3. full clone vs cp --sparse=always of the same file (the big VM's frozen base disk)
        base = root / "big" / "big.qcow2"
        data_bytes = allocated_bytes(read_layer(base, "qcow2"))
        cp_target, cp_sync_target = work / "cp-copy.qcow2", work / "cp-sync-copy.qcow2"
        cp_times, cp_sync_times, full_times = [], [], []

        def run_cp() -> None:
            cp_times.append(timed(lambda: subprocess.run(["cp", "--sparse=always", str(base), str(cp_target)],
                                                         check=True)))

        def run_cp_sync() -> None:
            cp_sync_times.append(timed(lambda: subprocess.run(
                ["sh", "-c", 'cp --sparse=always "$1" "$2" && sync "$2"', "-", str(base), str(cp_sync_target)],
                check=True)))

        def run_clone() -> None:
            full_times.append(timed(lambda: hv.clone_vm("big", "full", linked=False, snapshot="s0")))

        contenders = [run_cp, run_cp_sync, run_clone]
        for i in range(args.copies):
            # Start every round from the same state: no copies, nothing dirty, freed blocks settled
            # (right after a 2 GiB unlink this virtual disk is slow for a moment); rotate the order.
            cp_target.unlink(missing_ok=True)
            cp_sync_target.unlink(missing_ok=True)
            if hv.datastore.catalog.find("full"):
                hv.delete_vm("full")
            subprocess.run(["sync"], check=True)
            time.sleep(2)
            for contender in contenders[i % 3:] + contenders[:i % 3]:
                contender()
        cp_rate = data_bytes / min(cp_times)
        cp_sync_rate = data_bytes / min(cp_sync_times)
        full_rate = data_bytes / min(full_times)
        rows.append(("cp --sparse=always", f"{cp_rate / MIB:.0f} MiB/s", f"{human_size(data_bytes)} in "
                                                                         f"{min(cp_times):.2f} s (not on disk yet)"))
        rows.append(("cp --sparse=always; sync FILE", f"{cp_sync_rate / MIB:.0f} MiB/s",
                     f"{human_size(data_bytes)} in {min(cp_sync_times):.2f} s"))
        rows.append(("full clone (fsynced before publish)", f"{full_rate / MIB:.0f} MiB/s",
                     f"{human_size(data_bytes)} in {min(full_times):.2f} s, best of {args.copies}"))

        width = max(len(r[0]) for r in rows)
        print(f"{'what':<{width}}  {'result':>12}  notes")
        for what, result, notes in rows:
            print(f"{what:<{width}}  {result:>12}  {notes}")
        print()
        print(f"snapshot time, {args.big} vs 64M of data:      {snap_ratio:.2f}x  (target: ~1, not growing with data)")
        print(f"linked clone time, {args.big} vs 64M of data:  {clone_ratio:.2f}x  (target: ~1)")
        print(f"full clone throughput / cp --sparse=always:        {full_rate / cp_rate:.2f}x  (target: >= 0.8x)")
        print(f"full clone throughput / cp --sparse=always + sync: {full_rate / cp_sync_rate:.2f}x  "
              "(both durable)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
