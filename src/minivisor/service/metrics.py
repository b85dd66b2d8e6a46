"""Metrics: per VM CPU time, memory in use, disk and network I/O; host totals.

Sources: ``/proc/<pid>/stat`` (CPU time), ``/proc/<pid>/status`` (RSS),
``/proc/<pid>/io`` (the VMM's own I/O syscalls), QMP ``query-blockstats``
(the guest's disk I/O per device). Network bytes are not reported: QEMU has
no QMP counter for user-mode (NAT) networking, the only backend minivisor has
so far; with tap devices they would come from ``/sys/class/net/<tap>/statistics``.
Absent, not 0.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import HvError
from ..vmm import qmp

if TYPE_CHECKING:
    from ..core.hypervisor import Hypervisor

__all__ = ["collect", "vm_metrics", "host_metrics", "prometheus"]

_TICKS = os.sysconf("SC_CLK_TCK")


def vm_metrics(pid: int, qmp_socket: str | None) -> dict[str, Any]:
    data: dict[str, Any] = {"pid": pid}
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        data["cpu_seconds"] = (int(fields[11]) + int(fields[12])) / _TICKS
        data["threads"] = int(fields[17])
    except (OSError, ValueError, IndexError):
        return data
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                data["memory_rss_bytes"] = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    try:
        io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
        data["vmm_io"] = {k: int(io[k]) for k in ("rchar", "wchar", "read_bytes", "write_bytes") if k in io}
    except (OSError, ValueError):
        pass
    if qmp_socket:
        try:
            stats = qmp.execute(qmp_socket, "query-blockstats", {"query-nodes": False}, timeout=2.0)
            data["disks"] = {(s.get("qdev") or s.get("device") or s.get("node-name") or "?"):
                             {"read_bytes": s["stats"]["rd_bytes"], "write_bytes": s["stats"]["wr_bytes"],
                              "read_ops": s["stats"]["rd_operations"], "write_ops": s["stats"]["wr_operations"]}
                             for s in stats}
        except HvError:
            pass  # the VM went away or its VMM is busy: the rest still counts
    return data


def host_metrics() -> dict[str, Any]:
    data: dict[str, Any] = {"time": time.time(), "cpus": os.cpu_count()}
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        values = [int(v) for v in first]
        data["cpu_seconds_total"] = sum(values) / _TICKS
        data["cpu_idle_seconds"] = (values[3] + values[4]) / _TICKS
    except (OSError, ValueError, IndexError):
        pass
    try:
        meminfo = {line.split(":")[0]: int(line.split()[1]) * 1024
                   for line in Path("/proc/meminfo").read_text().splitlines() if line.split()[1:2]}
        data["memory_total_bytes"] = meminfo.get("MemTotal")
        data["memory_available_bytes"] = meminfo.get("MemAvailable")
    except (OSError, ValueError):
        pass
    data["load_average"] = list(os.getloadavg())
    return data


def collect(hv: Hypervisor, running: dict[str, int]) -> dict[str, Any]:
    """Metrics of the host and of each running VM (``running``: VM name -> VMM pid, as the supervisor watches them)."""
    vms: dict[str, Any] = {}
    for name, pid in sorted(running.items()):
        try:
            paths = hv.vm_paths(name)
        except HvError:
            continue
        vms[name] = vm_metrics(pid, str(paths.qmp_socket))
    host = host_metrics()
    host["vms_running"] = len(vms)
    host["vm_memory_rss_bytes"] = sum(v.get("memory_rss_bytes", 0) for v in vms.values())
    return {"host": host, "vms": vms}


def prometheus(data: dict[str, Any]) -> str:
    """The Prometheus text exposition format (version 0.0.4)."""
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            lines.append(f"{name}{{{label_text}}} {value}" if label_text else f"{name} {value}")

    host, vms = data["host"], data["vms"]
    metric("minivisor_host_cpu_seconds_total", "counter", "CPU time of the host (all CPUs).",
           [({}, host.get("cpu_seconds_total", 0))])
    metric("minivisor_host_memory_total_bytes", "gauge", "Host memory.", [({}, host.get("memory_total_bytes") or 0)])
    metric("minivisor_host_memory_available_bytes", "gauge", "Host memory available.",
           [({}, host.get("memory_available_bytes") or 0)])
    metric("minivisor_vms_running", "gauge", "Running VMs.", [({}, host["vms_running"])])
    metric("minivisor_vm_cpu_seconds_total", "counter", "CPU time of the VM's VMM.",
           [({"vm": n}, v["cpu_seconds"]) for n, v in vms.items() if "cpu_seconds" in v])
    metric("minivisor_vm_memory_rss_bytes", "gauge", "Memory in use by the VM's VMM (RSS).",
           [({"vm": n}, v["memory_rss_bytes"]) for n, v in vms.items() if "memory_rss_bytes" in v])
    for field, what in (("read_bytes", "read"), ("write_bytes", "written")):
        metric(f"minivisor_vm_disk_{field}_total", "counter", f"Bytes the guest {what} on a virtual disk.",
               [({"vm": n, "disk": d}, s[field]) for n, v in vms.items() for d, s in v.get("disks", {}).items()])
    for field in ("read_bytes", "write_bytes"):
        metric(f"minivisor_vm_vmm_io_{field}_total", "counter", f"Storage I/O of the VMM process ({field}).",
               [({"vm": n}, v["vmm_io"][field]) for n, v in vms.items() if field in v.get("vmm_io", {})])
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
