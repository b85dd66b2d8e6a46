"""Facts about the host: where QEMU, qemu-img and the UEFI firmware are, its memory and CPUs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .. import procfs
from ..errors import HostError
from ..records import Record

__all__ = ["available_memory_mib", "find_qemu", "find_qemu_img", "host_cpus", "host_memory_mib", "qemu_version",
           "Ovmf", "find_ovmf"]

OVMF_DIR = Path("/usr/share/OVMF")  # Debian's ovmf package


class Ovmf(Record, frozen=True):
    """The UEFI firmware a VM boots: OVMF's code (read-only) and the template of its variable store."""

    code: Path
    vars_template: Path
    secure_boot: bool  # the Secure Boot build (needs SMM), with Microsoft's keys enrolled in the template


def find_ovmf(secure_boot: bool) -> Ovmf:
    """The 4 MiB OVMF build from Debian's ovmf package: plain, or Secure Boot with enrolled keys."""
    if secure_boot:
        found = Ovmf(OVMF_DIR / "OVMF_CODE_4M.secboot.fd", OVMF_DIR / "OVMF_VARS_4M.ms.fd", True)
    else:
        found = Ovmf(OVMF_DIR / "OVMF_CODE_4M.fd", OVMF_DIR / "OVMF_VARS_4M.fd", False)
    for path in (found.code, found.vars_template):
        if not path.is_file():
            raise HostError(f'firmware = "efi" needs UEFI firmware, and {path} is missing',
                            hint="apt-get install ovmf")
    return found

def _which(program: str) -> str | None:
    """``shutil.which``: ``program`` itself if it names a folder, else the first on PATH, if executable.
    Not shutil's: it imports bz2 and lzma, ~3 ms of every power-on, which asks where QEMU is."""
    folders = [""] if os.path.dirname(program) else os.environ.get("PATH", os.defpath).split(os.pathsep)
    for folder in folders:
        path = os.path.join(folder, program)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return None


def find_qemu() -> str:
    """The qemu-system-x86_64 to run: ``MINIVISOR_QEMU`` (a name or a path) if set, else the one on PATH."""
    if override := os.environ.get("MINIVISOR_QEMU"):
        if found := _which(override):
            return found
        raise HostError(f"MINIVISOR_QEMU={override} is not an executable program",
                        hint="point it at qemu-system-x86_64 or unset it")
    if found := _which("qemu-system-x86_64"):
        return found
    raise HostError("qemu-system-x86_64 not found", hint="apt-get install qemu-system-x86")


def find_qemu_img() -> str:
    """The qemu-img on PATH, which every disk operation runs (HostError if there is none)."""
    if found := _which("qemu-img"):
        return found
    raise HostError("qemu-img not found", hint="apt-get install qemu-utils")


def _meminfo_mib(field: str) -> int:
    """One ``/proc/meminfo`` field in MiB."""
    try:
        return procfs.meminfo_bytes(field)[field] // (1024 * 1024)
    except (OSError, ValueError, IndexError, KeyError) as exc:
        raise HostError(f"cannot read {field} from /proc/meminfo") from exc


def host_memory_mib() -> int:
    """Total RAM of the host in MiB."""
    return _meminfo_mib("MemTotal")


def available_memory_mib() -> int:
    """RAM the host could give to new VMs without swapping, in MiB."""
    return _meminfo_mib("MemAvailable")


def host_cpus() -> int:
    """CPUs this process may run on (honours taskset/cgroup cpusets)."""
    return len(os.sched_getaffinity(0))


def qemu_version(binary: str) -> str:
    """The version QEMU reports, e.g. ``7.2.22 (Debian 1:7.2+dfsg-7+deb12u18)``."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise HostError(f"cannot ask {binary} for its version: {exc}") from exc
    first = out.strip().splitlines()[0] if out.strip() else ""
    return first.partition(" version ")[2] or first
