"""Where a VMM runs: CPU affinity and cgroup v2 weights from the specfile's ``sched.*`` keys.

- :func:`place` pins every thread of a running VMM to ``sched.cpu.affinity`` and,
  on a cgroup v2 host that lets us write, moves it into ``minivisor.slice/<vm>``
  with ``cpu.weight`` from ``sched.cpu.shares`` and ``memory.min`` from
  ``sched.mem.min``.
- :func:`notes` says which of these controls this host cannot honour
  (``vm explain`` and ``vm start`` print them).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import SpecError
from ..spec.vmspec import Sched, VmSpec, format_cpu_list

__all__ = ["place", "notes", "check_affinity", "cgroup_root", "cpu_weight", "CGROUP_MOUNT"]

CGROUP_MOUNT = Path("/sys/fs/cgroup")  # module-level so tests can point it elsewhere
SLICE = "minivisor.slice"


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
