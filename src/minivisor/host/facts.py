"""Facts about the host: where QEMU and qemu-img are, its memory and CPUs."""

from __future__ import annotations

import os
import shutil
import subprocess

from .. import procfs
from ..errors import HostError

__all__ = ["available_memory_mib", "find_qemu", "find_qemu_img", "host_cpus", "host_memory_mib", "qemu_version"]

def find_qemu() -> str:
    """The qemu-system-x86_64 to run: ``MINIVISOR_QEMU`` (a name or a path) if set, else the one on PATH."""
    if override := os.environ.get("MINIVISOR_QEMU"):
        if found := shutil.which(override):
            return found
        raise HostError(f"MINIVISOR_QEMU={override} is not an executable program",
                        hint="point it at qemu-system-x86_64 or unset it")
    if found := shutil.which("qemu-system-x86_64"):
        return found
    raise HostError("qemu-system-x86_64 not found", hint="apt-get install qemu-system-x86")


def find_qemu_img() -> str:
    """The qemu-img on PATH, which every disk operation runs (HostError if there is none)."""
    if found := shutil.which("qemu-img"):
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
