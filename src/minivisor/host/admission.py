"""Host resources for VMs: memory admission, CPU affinity, cgroup v2 weights.

Called by the core API's power-on path, so the CLI working directly on the
datastore and the service behave the same:

- :func:`admit` refuses a power-on when the memory (``memSize``) of the VMs
  already committed (running, or admitted and powering on: see
  ``commit_memory``) plus the new one exceeds what the host can give (its
  memory minus a reserve for itself), or when the new VM's ``sched.mem.min``
  reservation is more than the host has free once the reservations of running
  VMs are set aside.
- :func:`place` pins every thread of the VMM to ``sched.cpu.affinity`` and, on
  a cgroup v2 host that lets us write, moves the VMM into
  ``minivisor.slice/<vm>`` with ``cpu.weight`` from ``sched.cpu.shares`` and
  ``memory.min`` from ``sched.mem.min``.
- :func:`notes` says which of these controls this host cannot honour
  (``vm explain`` and ``vm start`` print them).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from typing import TYPE_CHECKING

from ..errors import HostError, SpecError
from ..spec.vmspec import Sched, VmSpec, format_cpu_list

if TYPE_CHECKING:
    from ..datastore.store import Datastore
    from ..datastore.inventory import Inventory

__all__ = ["admit", "place", "notes", "check_affinity", "cgroup_root", "host_reserve_mib", "cpu_weight"]

CGROUP_MOUNT = Path("/sys/fs/cgroup")  # module-level so tests can point it elsewhere
SLICE = "minivisor.slice"


def host_reserve_mib(total_mib: int) -> int:
    """Memory kept for the host itself: a tenth of it, at most 1 GiB."""
    return min(1024, total_mib // 10)


def admit(spec: VmSpec, name: str, others: list[tuple[str, int, int, int | None]], *,
          total_mib: int, available_mib: int) -> None:
    """Refuse a power-on the host cannot hold.

    ``others`` lists the VMs holding their lock: (name, memSize, sched.mem.min, VMM pid or None).
    """
    capacity = total_mib - host_reserve_mib(total_mib)
    committed = sum(memory for _, memory, _, _ in others)
    if committed + spec.memory_mib > capacity:
        error = HostError(f"cannot power on {name!r}: it needs {spec.memory_mib} MiB, and the {len(others)} running "
                          f"VM(s) already hold {committed} of the {capacity} MiB this host can give to VMs",
                          hint="power off a VM or lower memSize")
        error.code = "insufficient-memory"
        raise error
    if spec.sched.mem_min_mib:
        # memory promised to running VMs but not yet in use is not free for a new reservation
        unbacked = sum(max(0, minimum - _rss_mib(pid)) for _, _, minimum, pid in others if minimum)
        free = available_mib - unbacked
        if spec.sched.mem_min_mib > free:
            error = HostError(f"cannot power on {name!r}: sched.mem.min = {spec.sched.mem_min_mib} MiB is more than "
                              f"the {max(free, 0)} MiB the host has free beyond other VMs' reservations",
                              hint="lower sched.mem.min or power off a VM")
            error.code = "insufficient-memory"
            raise error


def commit_memory(datastore: Datastore, inventory: Inventory, name: str, spec: VmSpec) -> Path:
    """Refuse the power-on if the host cannot hold it next to the VMs already committed.

    Each admitted power-on leaves a commitment, ``.minivisor/committed/<uuid>``,
    which counts for as long as that VM's lock is held (its VMM runs, or its
    power-on is under way) and is pruned once it is not. The decision and the
    commitment happen under one datastore-wide lock, so concurrent power-ons
    count each other exactly once, and the check costs one look per running VM,
    not per registered VM. Returns the commitment; the caller removes it if
    the launch fails.
    """
    import fcntl

    from . import facts as host
    from ..datastore.inventory import file_id, flocked_files
    from ..vmm.process import RuntimeRecord, VmLock

    committed = datastore.meta / "committed"
    committed.mkdir(mode=0o700, exist_ok=True)
    guard = os.open(datastore.meta / "admission.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(guard, fcntl.LOCK_EX)  # held for milliseconds: no launch happens under it
        by_uuid = {e.uuid: e for e in datastore.catalog.list()}
        me = datastore.catalog.get(name)
        locked = flocked_files()
        held = []
        for uuid in os.listdir(committed):
            entry = by_uuid.get(uuid)
            if entry is None:
                (committed / uuid).unlink(missing_ok=True)  # that VM was deleted or unregistered
                continue
            if entry.uuid == me.uuid:
                continue
            lock = inventory.paths_of(entry)[2]
            if (file_id(lock) in locked) if locked is not None else VmLock(Path(lock)).is_held_elsewhere():
                held.append(entry)
            else:
                (committed / uuid).unlink(missing_ok=True)  # that VMM is gone
        summaries = inventory.summaries(held)
        others = []
        for entry in held:
            record = RuntimeRecord.load(inventory.paths_of(entry)[1].vm_dir / "runtime.json")
            summary = summaries[entry.name]
            others.append((entry.name, summary.get("memory_mib", 0), summary.get("mem_min_mib", 0),
                           record.pid if record else None))
        admit(spec, name, others, total_mib=host.host_memory_mib(), available_mib=host.available_memory_mib())
        claim = committed / me.uuid
        claim.write_text(f"{os.getpid()}\n")
        return claim
    finally:
        os.close(guard)


def _rss_mib(pid: int | None) -> int:
    if pid is None:
        return 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError):
        pass
    return 0


def check_affinity(sched: Sched) -> None:
    """Refuse an affinity naming CPUs this process may not use."""
    if sched.cpu_affinity is None:
        return
    allowed = os.sched_getaffinity(0)
    outside = set(sched.cpu_affinity) - allowed
    if outside or not sched.cpu_affinity:
        raise SpecError(f"sched.cpu.affinity names CPU(s) {format_cpu_list(outside)} this host does not let VMs use",
                        hint=f"use some of {format_cpu_list(allowed)} or \"all\"")


def cpu_weight(shares: int) -> int:
    """VMware CPU shares -> cgroup v2 ``cpu.weight`` (normal, 1000 per vCPU, is 100: the default)."""
    return max(1, min(10000, round(shares / 10)))


def cgroup_root() -> tuple[Path | None, str]:
    """Where VM cgroups go (``minivisor.slice``), or None and why not."""
    if not (CGROUP_MOUNT / "cgroup.controllers").exists():
        return None, f"the host has no cgroup v2 hierarchy at {CGROUP_MOUNT} (cgroup v1 or none)"
    own = Path("/proc/self/cgroup").read_text().strip().splitlines()
    relative = next((line.split("::", 1)[1] for line in own if line.startswith("0::")), "/")
    parent = CGROUP_MOUNT / relative.lstrip("/")
    if not os.access(parent, os.W_OK):
        return None, f"cgroup {parent} is not writable by minivisor"
    if "cpu" not in (parent / "cgroup.controllers").read_text().split():
        return None, f"the cpu controller is not available in {parent}"
    return parent / SLICE, ""


def notes(spec: VmSpec) -> tuple[str, ...]:
    """Which resource controls of the spec this host cannot honour, one line each."""
    sched = spec.sched
    found = []
    if sched.cpu_shares is not None or sched.mem_min_mib:
        root, why = cgroup_root()
        if root is None:
            if sched.cpu_shares is not None:
                found.append(f"sched.cpu.shares cannot be honoured: {why}")
            if sched.mem_min_mib:
                found.append(f"sched.mem.min is checked at power-on but not enforced by the kernel: {why}")
    if sched.mem_shares is not None:
        found.append("sched.mem.shares cannot be honoured: cgroup v2 has no memory weight "
                     "(sched.mem.min becomes memory.min where cgroups are writable)")
    return tuple(found)


def place(pid: int, spec: VmSpec, name: str) -> tuple[str, ...]:
    """Apply affinity and cgroup weights to a running VMM; returns what could not be applied."""
    problems = []
    if spec.sched.cpu_affinity is not None:
        cpus = set(spec.sched.cpu_affinity)
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                os.sched_setaffinity(int(task), cpus)
            except (ProcessLookupError, FileNotFoundError):
                continue  # a thread that just ended
            except OSError as exc:
                problems.append(f"sched.cpu.affinity not applied to thread {task}: {exc.strerror}")
    if spec.sched.cpu_shares is not None or spec.sched.mem_min_mib:
        root, _ = cgroup_root()
        if root is not None:
            try:
                _join_cgroup(root, name, pid, spec.sched)
            except OSError as exc:
                problems.append(f"cgroup weights not applied: {exc}")
    return tuple(problems)


def _join_cgroup(root: Path, name: str, pid: int, sched: Sched) -> None:
    root.mkdir(exist_ok=True)
    _enable(root, "cpu")
    if sched.mem_min_mib:
        _enable(root, "memory")
    group = root / re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    group.mkdir(exist_ok=True)
    if sched.cpu_shares is not None:
        (group / "cpu.weight").write_text(str(cpu_weight(sched.cpu_shares)))
    if sched.mem_min_mib:
        (group / "memory.min").write_text(str(sched.mem_min_mib * 1024 * 1024))
    (group / "cgroup.procs").write_text(str(pid))


def _enable(group: Path, controller: str) -> None:
    if controller not in (group / "cgroup.subtree_control").read_text().split():
        (group / "cgroup.subtree_control").write_text(f"+{controller}")
