"""What `vm list` and `vm show` need, fast: VM paths, specfile summaries, held locks.

Listing 1,000 VMs must not parse 1,000 specfiles per request: a summary of
each specfile is cached (in memory and in the catalog) keyed by the file's
mtime, size and inode, so the specfile stays the source of truth. Which VMs
run is read once from ``/proc/locks`` instead of probing each VM's lock.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import PathError, SpecError
from .catalog import VmEntry
from .layout import VmPaths, vm_paths
from .store import Datastore

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:  # parsing a specfile is for a summary not cached yet: imported then
    from typing import Any

    from ..spec.vmx import VmxDocument
    from ..spec.vmspec import VmSpec

__all__ = ["Inventory", "flocked_files", "file_id", "file_stamp", "summary_of", "summary_row", "read_vmx"]


class Inventory:
    """Memoized paths and specfile summaries of a datastore's VMs."""

    def __init__(self, datastore: Datastore) -> None:
        self.datastore = datastore
        self._paths: dict[tuple[str, str], VmPaths] = {}  # (name, vmx) -> paths
        self._memo: dict[str, tuple[str, str, dict[str, Any]]] = {}  # vmx -> (uuid, stamp, summary)

    def paths_of(self, entry: VmEntry) -> VmPaths:
        """The VM's paths (memoized: `vm list` asks for them 1,000 times)."""
        key = (entry.name, entry.vmx)
        if key not in self._paths:
            self._paths[key] = vm_paths(self.datastore.vmx_path(entry))
        return self._paths[key]

    def summaries(self, entries: list[VmEntry]) -> dict[str, dict[str, Any]]:
        """What list/show need from each specfile, from the catalog's cache while the file is unchanged."""
        found: dict[str, dict[str, Any]] = {}
        stamps: dict[str, str | None] = {}
        root = str(self.datastore.root)
        for entry in entries:
            stamps[entry.name] = stamp = file_stamp(f"{root}/{entry.vmx}")
            memo = self._memo.get(entry.vmx)
            if stamp and memo and memo[:2] == (entry.uuid, stamp):
                found[entry.name] = memo[2]
        missing = [e for e in entries if e.name not in found]
        cached = self.datastore.catalog.summaries([e.vmx for e in missing]) if missing else {}
        fresh = []
        for entry in missing:
            stamp = stamps[entry.name]
            hit = cached.get(entry.vmx)
            if stamp and hit and hit[0] == entry.uuid and hit[1] == stamp:
                summary = json.loads(hit[2])
            else:
                summary = summary_of(self.datastore.vmx_path(entry), entry.uuid)
                if stamp and "problem" not in summary:
                    fresh.append((entry.vmx, entry.uuid, stamp, json.dumps(summary)))
            found[entry.name] = summary
            if stamp and "problem" not in summary:
                self._memo[entry.vmx] = (entry.uuid, stamp, summary)
        if fresh:
            self.datastore.catalog.store_summaries(fresh)
        return found


def file_stamp(path: str) -> str | None:
    """What tells a specfile's versions apart: its mtime, size and inode (None if it cannot be read)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{st.st_mtime_ns}:{st.st_size}:{st.st_ino}"


def summary_row(root: Path, vmx: str, vm_uuid: str, spec: VmSpec | None = None) -> tuple[str, str, str, str] | None:
    """The summary cache's row for a specfile (``vmx`` relative to the datastore ``root``) as it is now,
    or None if it has no summary to cache: for a VM being added, in the transaction that adds it.
    ``spec``: what the caller read of that file (its summary's keys as the file has them), not read again."""
    stamp = file_stamp(f"{root}/{vmx}")
    summary = summary_of(root / vmx, vm_uuid) if spec is None else summary_of_spec(spec, vm_uuid)
    return (vmx, vm_uuid, stamp, json.dumps(summary)) if stamp and "problem" not in summary else None


def flocked_files() -> set[tuple[int, int]] | None:
    """(device, inode) of every file with an flock held right now, or None if the kernel will not say."""
    try:
        with open("/proc/locks") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    found = set()
    for line in lines:
        fields = line.split()
        if len(fields) > 5 and fields[1] == "FLOCK":
            major, minor, inode = fields[5].split(":")
            found.add((os.makedev(int(major, 16), int(minor, 16)), int(inode)))
    return found


def file_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def summary_of(vmx: Path, vm_uuid: str) -> dict[str, Any]:
    """The parts of a specfile `vm list` and `vm show` report (or the problem reading it)."""
    from ..spec.vmspec import VmSpec

    try:
        spec = VmSpec.from_vmx(read_vmx(vmx))
    except (SpecError, PathError) as exc:
        return {"problem": exc.one_line()}
    return summary_of_spec(spec, vm_uuid)


def summary_of_spec(spec: VmSpec, vm_uuid: str) -> dict[str, Any]:
    """The parts of a read specfile `vm list` and `vm show` report (a NIC without an address: its generated one)."""
    from ..spec.identity import generated_mac

    return {"display_name": spec.display_name, "guest_os": spec.guest_os, "memory_mib": spec.memory_mib,
            "cpus": spec.num_cpus, "mem_min_mib": spec.sched.mem_min_mib,
            "disks": [{"node": d.node, "kind": d.kind, "file": d.file_name} for d in spec.disks],
            "nics": [{"name": n.name, "model": n.model, "mac": n.mac or generated_mac(vm_uuid, n.index),
                      "network": n.network} for n in spec.nics]}


def read_vmx(path: Path) -> VmxDocument:
    """The parsed specfile; PathError if it cannot be read, SpecError if it is larger than a specfile may be."""
    from ..spec.vmx import VmxDocument

    try:
        return VmxDocument.load(path)
    except FileNotFoundError:
        raise PathError(f"the specfile {path} is missing",
                        hint="restore it, or remove the VM from the catalog: minivisor vm unregister") from None
    except OSError as exc:
        raise PathError(f"cannot read the specfile {path}: {exc.strerror}", hint="check its permissions") from exc
