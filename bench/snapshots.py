#!/usr/bin/env python3
"""Memory snapshots of a running guest, qcow2 vs VMDK disks, in one run (issue 11).

For each disk format, the test guest (boot disk + a 16 MiB data disk, both of that
format) runs with 160 MiB of memory; then, through the core API (``Hypervisor``):

  - take: a memory snapshot of the running guest (pause, state saved to a file of its own by
    QEMU migration to a passed fd, new deltas, continue); for VMDK the disks' chains are closed
    for the save and opened again
  - revert: back to it (a fresh VMM with ``-incoming defer`` fed the state file), until the guest
    answers a command

The median of ``--rounds`` rounds (a round: take a new snapshot, revert to it).

    python bench/snapshots.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ["MINIVISOR_NETWORKING"] = "user"  # the guests have no NIC: no host network is built or checked

from minivisor import Hypervisor, dirs  # noqa: E402
from minivisor.images.layers import read_layer  # noqa: E402
from minivisor.images.qemu_img import convert_disk  # noqa: E402
from minivisor_appliance.build import build_appliance  # noqa: E402


def guest(hv: Hypervisor, name: str, image: Path, fmt: str) -> None:
    """The test guest on a ``fmt`` boot disk, with a ``fmt`` data disk."""
    hv.create_vm(name, memory_mib=160, disk_size="1M", network="none")
    folder = hv.datastore.root / name
    (folder / f"{name}.qcow2").unlink()
    convert_disk((read_layer(image, "raw"),), folder / f"{name}.{fmt}", fmt)
    hv.disk_create(folder / f"data.{fmt}", "16M")
    vmx = folder / f"{name}.vmx"
    vmx.write_text(vmx.read_text().replace(f'"{name}.qcow2"', f'"{name}.{fmt}"')
                   + f'scsi0:1.present = "TRUE"\nscsi0:1.fileName = "data.{fmt}"\n')


def measure(hv: Hypervisor, name: str, rounds: int) -> tuple[list[float], list[float], int]:
    takes, reverts = [], []
    hv.start_vm(name, wait_ready=True, timeout=120)
    state_bytes = 0
    try:
        for round_ in range(rounds):
            hv.exec_in_vm(name, f"echo {round_} > /tmp/round")
            start = time.perf_counter()
            snap = hv.snapshot_take(name, f"bench-{round_}", memory=True)
            takes.append(time.perf_counter() - start)
            state_bytes = (hv.datastore.root / name / snap.memory_file).stat().st_size
            start = time.perf_counter()
            hv.snapshot_revert(name, f"bench-{round_}")
            hv.exec_in_vm(name, "cat /tmp/round")
            reverts.append(time.perf_counter() - start)
    finally:
        hv.stop_vm(name, hard=True)
    return takes, reverts, state_bytes


def table(hv: Hypervisor, image: Path, rounds: int) -> list[str]:
    """The table's lines: take, revert and state file size for qcow2 and VMDK disks."""
    hv.allow_path(image.parent)
    lines = [f"memory snapshots of a running test guest (160 MiB), median of {rounds} rounds",
             f"{'disks':<8}{'take':>10}{'revert':>10}{'state file':>14}"]
    for fmt in ("qcow2", "vmdk"):
        guest(hv, f"bench-{fmt}", image, fmt)
        takes, reverts, state_bytes = measure(hv, f"bench-{fmt}", rounds)
        lines.append(f"{fmt:<8}{statistics.median(takes) * 1000:>8.0f}ms{statistics.median(reverts) * 1000:>8.0f}ms"
                     f"{state_bytes / 2 ** 20:>11.1f}MiB")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    image = build_appliance(dirs.cache_dir())
    with tempfile.TemporaryDirectory(prefix="minivisor-bench-snapshots-") as tmp:
        print("\n".join(table(Hypervisor(Path(tmp) / "ds"), image, args.rounds)))


if __name__ == "__main__":
    main()
