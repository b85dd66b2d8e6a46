"""Metrics: per VM CPU time, memory in use, disk and network I/O; host totals.

Sources: ``/proc/<pid>/stat`` (CPU time), ``/proc/<pid>/status`` (RSS),
``/proc/<pid>/io`` (the VMM's own I/O syscalls), QMP ``query-blockstats``
(the guest's disk I/O per device), and each NIC's tap (``/sys/class/net/<tap>/statistics``,
through :meth:`~minivisor.core.hypervisor.Hypervisor.nic_traffic`): bytes and packets the
guest sent and received. A NIC on QEMU's user-mode NAT has no tap, and QEMU has no
counter for it: its figures are absent, not 0.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from .. import procfs
from ..errors import HvError
from ..vmm import qmp

if TYPE_CHECKING:
    from ..core.hypervisor import Hypervisor

__all__ = ["collect", "vm_metrics", "host_metrics", "prometheus"]

def vm_metrics(pid: int, qmp_socket: str | None) -> dict[str, Any]:
    data: dict[str, Any] = {"pid": pid}
    stat = procfs.read_stat(pid)
    if stat is None:
        return data
    data["cpu_seconds"] = stat.cpu_ticks / procfs.CLOCK_TICKS
    data["threads"] = stat.threads
    if (rss := procfs.rss_bytes(pid)) is not None:
        data["memory_rss_bytes"] = rss
    if io := procfs.io_bytes(pid):
        data["vmm_io"] = io
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
        data["cpu_seconds_total"], data["cpu_idle_seconds"] = procfs.host_cpu_seconds()
        memory = procfs.meminfo_bytes("MemTotal", "MemAvailable")
    except (OSError, ValueError, IndexError):
        memory = {}
    data["memory_total_bytes"] = memory.get("MemTotal")
    data["memory_available_bytes"] = memory.get("MemAvailable")
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
        try:
            if nics := hv.nic_traffic(name):
                vms[name]["nics"] = nics
        except HvError:
            pass  # unregistered meanwhile: the rest still counts
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
    for field in ("received_bytes", "sent_bytes", "received_packets", "sent_packets"):
        metric(f"minivisor_vm_nic_{field}_total", "counter", f"What the guest {field.replace('_', ' ')} on a NIC.",
               [({"vm": n, "nic": nic}, c[field]) for n, v in vms.items() for nic, c in v.get("nics", {}).items()])
    for field in ("read_bytes", "write_bytes"):
        metric(f"minivisor_vm_vmm_io_{field}_total", "counter", f"Storage I/O of the VMM process ({field}).",
               [({"vm": n}, v["vmm_io"][field]) for n, v in vms.items() if field in v.get("vmm_io", {})])
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
