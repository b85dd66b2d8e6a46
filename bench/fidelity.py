#!/usr/bin/env python3
"""How faithfully minivisor powers VMware's VMs on, in one run.

1. Over the specfile corpus (tests/corpus), each file checked as ``vm check`` does, its hard disks
   provided (empty) beside it: the share of keys virtualized / approximated / disconnected / ignored
   (refused: what would stop a power-on), and the files refused as VMware refuses them.
2. Power-on -> guest ready for the test guest under BIOS (SeaBIOS), UEFI (OVMF) and UEFI with Secure
   Boot. Secure Boot has no signed kernel to start here, so its time is power-on -> the firmware's
   verdict on the unsigned boot loader ("Security Violation"): the firmware's part of a Secure Boot.
   Interleaved BIOS, UEFI, Secure Boot, BIOS... so machine noise hits all alike.

    python bench/fidelity.py [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The VMs here have no NICs: the bench never claims this host's networks (another datastore may own them).
os.environ.setdefault("MINIVISOR_NETWORKING", "user")
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent / "tests" / "integration"))

from boot_media import shell_boot_disk, unsigned_efi_disk  # noqa: E402
from test_corpus import CORPUS, FILES, REFUSED, place, provide_disks  # noqa: E402

from minivisor import Hypervisor, dirs  # noqa: E402
from minivisor.core.check import check_vmx  # noqa: E402
from minivisor.errors import HvError  # noqa: E402
from minivisor.spec.fidelity import VERDICTS  # noqa: E402
from minivisor_appliance.build import build_appliance  # noqa: E402


def corpus_shares(workdir: Path) -> None:
    totals: Counter[str] = Counter()
    refused_files = []
    print(f"{'specfile':44} {'keys':>5}  " + "  ".join(f"{v[:6]:>6}" for v in VERDICTS))
    for name in FILES:
        vmx = place(workdir / "corpus", name)
        if name in REFUSED:
            try:
                check_vmx(vmx)
            except HvError as error:
                refused_files.append(str(error).replace(str(vmx.parent) + "/", ""))
            continue
        provide_disks(vmx)
        counts = check_vmx(vmx)["counts"]
        totals.update(counts)
        print(f"{name:44} {sum(counts.values()):5}  " + "  ".join(f"{counts[v]:6}" for v in VERDICTS))
    keys = sum(totals.values())
    print(f"\nover {len(FILES) - len(refused_files)} specfiles ({keys} keys) of {len(FILES)} in {CORPUS}:")
    for verdict in VERDICTS:
        print(f"  {verdict:13} {totals[verdict]:5}  {100 * totals[verdict] / keys:5.1f} %")
    print(f"refused at register, as VMware refuses them ({len(refused_files)}):")
    for line in refused_files:
        print(f"  {line}")


def efi_vm(hv: Hypervisor, name: str, disk: Path, secure: bool) -> None:
    """A VM booting ``disk`` from SATA with firmware = "efi" (OVMF has no driver for VMware's SCSI)."""
    hv.create_vm(name, boot_disk=disk, memory_mib=256, network="none")
    vmx = hv.datastore.root / name / f"{name}.vmx"
    text = vmx.read_text().replace("scsi0:0.", "sata0:0.") + 'sata0.present = "TRUE"\nfirmware = "efi"\n'
    vmx.write_text(text + ('uefi.secureBoot.enabled = "TRUE"\n' if secure else ""))


def time_ready(hv: Hypervisor, name: str) -> float:
    start = time.perf_counter()
    hv.start_vm(name, wait_ready=True, timeout=300)
    elapsed = time.perf_counter() - start
    hv.stop_vm(name, hard=True)
    return elapsed


def time_verdict(hv: Hypervisor, name: str, words: str = "Security Violation") -> float:
    log = hv.vm_paths(name).serial_log
    start = time.perf_counter()
    hv.start_vm(name)
    try:
        while not (log.exists() and words in log.read_text(errors="replace")):
            if time.perf_counter() - start > 300:
                raise RuntimeError(f"{name}: the firmware said no {words!r} in 300 s")
            time.sleep(0.02)
        return time.perf_counter() - start
    finally:
        hv.stop_vm(name, hard=True)


def firmware_times(workdir: Path, runs: int) -> None:
    image = build_appliance(dirs.cache_dir())
    hv = Hypervisor(workdir / "ds")
    media = workdir / "media"
    media.mkdir()
    hv.allow_path(image.parent)
    hv.allow_path(media)
    hv.create_vm("bios", boot_disk=image, memory_mib=256, network="none")
    efi_vm(hv, "uefi", shell_boot_disk(image, media / "efi.img"), secure=False)
    (media / "sb").mkdir()
    efi_vm(hv, "secure", unsigned_efi_disk(image, media / "sb" / "unsigned.img"), secure=True)
    times: dict[str, list[float]] = {"BIOS": [], "UEFI": [], "Secure Boot": []}
    try:
        for run in range(runs):
            times["BIOS"].append(time_ready(hv, "bios"))
            times["UEFI"].append(time_ready(hv, "uefi"))
            times["Secure Boot"].append(time_verdict(hv, "secure"))
            print(f"run {run + 1}: " + "   ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
    finally:
        for name in ("bios", "uefi", "secure"):
            try:
                hv.stop_vm(name, hard=True)
            except HvError:
                pass
    print(f"\npower-on -> guest ready, median of {runs} ({hv.host_info().accel.accel}):")
    print(f"  BIOS (SeaBIOS)         {statistics.median(times['BIOS']):6.2f} s")
    print(f"  UEFI (OVMF)            {statistics.median(times['UEFI']):6.2f} s")
    print(f"  Secure Boot (OVMF, SMM) {statistics.median(times['Secure Boot']):5.2f} s   "
          "(to the firmware's verdict: no signed kernel here)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    options = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="minivisor-fidelity-"))
    try:
        corpus_shares(workdir)
        print()
        firmware_times(workdir, options.runs)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
