"""Memory admission: whether the host can hold one more VM next to those it runs.

:func:`admit` refuses a power-on when the memory (``memSize``) of the VMs already
committed (running, or admitted and powering on) plus the new one exceeds what the
host can give (its memory minus a reserve for itself), or when the new VM's
``sched.mem.min`` reservation is more than the host has free once the
reservations of running VMs are set aside. Who counts as committed is the
caller's bookkeeping (:func:`minivisor.core.power.admit`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InsufficientMemoryError
from ..procfs import rss_bytes
from ..spec.vmspec import VmSpec

__all__ = ["Commitment", "admit", "host_reserve_mib"]


@dataclass(frozen=True)
class Commitment:
    """A VM the host already holds: its memSize and sched.mem.min (MiB), and its VMM's pid once it runs."""

    name: str
    memory_mib: int
    reserved_mib: int
    pid: int | None


def host_reserve_mib(total_mib: int) -> int:
    """Memory kept for the host itself: a tenth of it, at most 1 GiB."""
    return min(1024, total_mib // 10)


def admit(spec: VmSpec, name: str, others: list[Commitment], *, total_mib: int, available_mib: int) -> None:
    """Refuse a power-on the host cannot hold next to ``others``."""
    capacity = total_mib - host_reserve_mib(total_mib)
    committed = sum(other.memory_mib for other in others)
    if committed + spec.memory_mib > capacity:
        raise InsufficientMemoryError(
            f"cannot power on {name!r}: it needs {spec.memory_mib} MiB, and the {len(others)} running VM(s) "
            f"already hold {committed} of the {capacity} MiB this host can give to VMs",
            hint="power off a VM or lower memSize")
    if spec.sched.mem_min_mib:
        # memory promised to running VMs but not yet in use is not free for a new reservation
        unbacked = sum(max(0, other.reserved_mib - _rss_mib(other.pid)) for other in others if other.reserved_mib)
        free = available_mib - unbacked
        if spec.sched.mem_min_mib > free:
            raise InsufficientMemoryError(
                f"cannot power on {name!r}: sched.mem.min = {spec.sched.mem_min_mib} MiB is more than the "
                f"{max(free, 0)} MiB the host has free beyond other VMs' reservations",
                hint="lower sched.mem.min or power off a VM")


def _rss_mib(pid: int | None) -> int:
    return (rss_bytes(pid) or 0) // (1024 * 1024) if pid is not None else 0
