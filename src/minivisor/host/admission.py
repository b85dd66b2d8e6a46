"""Memory admission: whether the host can hold one more VM next to those it runs.

:func:`admit` refuses a power-on when the memory of the VMs already committed
(running, or admitted and powering on) plus the new one exceeds what the host can
give (its memory minus a reserve for itself), or when the new VM's
``sched.mem.min`` reservation is more than the host has free once the
reservations of running VMs are set aside. Who counts as committed is the
caller's bookkeeping (:func:`minivisor.core.power.admit`).

A VM costs the host more than its ``memSize``: :func:`overhead_mib` counts its
VMM's own memory (QEMU's libraries, heap and device buffers: ~31 MiB resident for
the test guest), under TCG the translated code (bounded by the cache size the
launcher gives QEMU, :func:`tcg_cache_mib`), and its console relay (~8 MiB
resident, ~5 MiB proportional). Without it a host full of small guests would be
admitted far past its memory: a 64 MiB guest's QEMU holds ~130 MiB under TCG.
"""

from __future__ import annotations


from ..errors import InsufficientMemoryError
from ..procfs import rss_bytes
from ..records import Record
from ..spec.vmspec import VmSpec

__all__ = ["Commitment", "admit", "host_reserve_mib", "overhead_mib", "tcg_cache_mib"]

VMM_BASE_MIB = 32  # QEMU's resident memory besides guest RAM and translated code (measured: ~31 MiB)
RELAY_MIB = 8  # the console relay's resident memory (measured: 8 MiB; 5 MiB proportional)
TCG_CACHE_MIB = (32, 1024)  # the translation cache's bounds: QEMU's own default is the upper one


class Commitment(Record, frozen=True):
    """A VM the host already holds: its memSize and sched.mem.min (MiB), its VMM's pid once it runs, and what
    its VMM and console relay hold besides its memory (:func:`overhead_mib`)."""

    name: str
    memory_mib: int
    reserved_mib: int
    pid: int | None
    overhead_mib: int = 0


def tcg_cache_mib(memory_mib: int) -> int:
    """The size of the translated-code cache a TCG guest's QEMU gets: half its memory, 32 MiB to 1 GiB.

    QEMU's default (1 GiB) lets any guest's QEMU grow by that much; the test guest's boot translates
    ~50 MiB of code, and with 32 MiB QEMU flushes the cache once during it (measured, no slower).
    """
    low, high = TCG_CACHE_MIB
    return max(low, min(high, memory_mib // 2))


def overhead_mib(memory_mib: int, accel: str | None) -> int:
    """What a VM holds of the host's memory besides its ``memSize``: its VMM and its console relay.

    ``accel`` None (a power-on whose accelerator is not recorded yet) counts as TCG, the larger.
    """
    return VMM_BASE_MIB + RELAY_MIB + (0 if accel == "kvm" else tcg_cache_mib(memory_mib))


def host_reserve_mib(total_mib: int) -> int:
    """Memory kept for the host itself: a tenth of it, at most 1 GiB."""
    return min(1024, total_mib // 10)


def admit(spec: VmSpec, name: str, others: list[Commitment], *, total_mib: int, available_mib: int,
          accel: str | None = None) -> None:
    """Refuse a power-on (of a VM that will run on ``accel``) the host cannot hold next to ``others``."""
    capacity = total_mib - host_reserve_mib(total_mib)
    committed = sum(other.memory_mib + other.overhead_mib for other in others)
    overhead = overhead_mib(spec.memory_mib, accel)
    if committed + spec.memory_mib + overhead > capacity:
        raise InsufficientMemoryError(
            f"cannot power on {name!r}: it needs {spec.memory_mib} MiB (and {overhead} MiB for its VMM and "
            f"console relay), and the {len(others)} running VM(s) already hold {committed} of the {capacity} MiB "
            "this host can give to VMs", hint="power off a VM or lower memSize")
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
