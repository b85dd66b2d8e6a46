"""Human-readable output for the CLI: tables and detail views (rich).

Kept apart from :mod:`minivisor.cli` so commands that print JSON or nothing
never pay for importing rich.
"""

from __future__ import annotations

import shlex
from typing import Any

from rich.console import Console
from rich.table import Table

from .api import Explanation, VmInfo
from .host import HostInfo

console = Console(highlight=False)

STATE_STYLE = {"running": "green", "paused": "yellow", "starting": "cyan", "poweredOff": "dim"}


def vm_table(vms: list[VmInfo]) -> None:
    table = Table(box=None, header_style="bold")
    for column in ("NAME", "STATE", "CPUS", "MEMORY", "DISKS", "NICS", "PID"):
        table.add_column(column)
    for vm in vms:
        style = "red" if vm.state_reason else STATE_STYLE.get(vm.state.value, "")
        table.add_row(vm.name, f"[{style}]{vm.state_label}[/]" if style else vm.state_label, str(vm.cpus),
                      f"{vm.memory_mib} MiB", str(len(vm.disks)), str(len(vm.nics)), str(vm.pid or "-"))
    if not vms:
        console.print("no VMs in this datastore (create one: minivisor vm create NAME --disk-size 8G)")
        return
    console.print(table)
    for vm in vms:
        if vm.state_hint:
            console.print(f"[yellow]{vm.name}:[/] {vm.state_hint}", soft_wrap=True)


def vm_details(vm: VmInfo) -> None:
    rows: list[tuple[str, Any]] = [
        ("name", vm.name), ("state", vm.state_label), ("uuid", vm.uuid), ("specfile", vm.vmx),
        ("display name", vm.display_name), ("guest OS", vm.guest_os), ("cpus", vm.cpus),
        ("memory", f"{vm.memory_mib} MiB"), ("pid", vm.pid or "-"), ("accelerator", vm.accel or "-"),
        ("autostart", "yes" if vm.autostart else "no"),
    ]
    rows += [(f"disk {d['node']}", f"{d['kind']}: {d['file'] or 'empty'}") for d in vm.disks]
    rows += [(n["name"], f"{n['model']} {n['mac']} on {n['network']}") for n in vm.nics]
    _key_values(rows)
    if vm.state_hint:
        console.print(f"[yellow]hint:[/] {vm.state_hint}", soft_wrap=True)


def host_info(info: HostInfo) -> None:
    data = info.to_dict()
    _key_values([(key.replace("_", " "), value) for key, value in data.items() if key != "accel"])
    accel = data.get("accel") or {}
    _key_values([("accelerator", accel.get("accel")), ("why", accel.get("reason"))])
    if accel.get("warning"):
        console.print(f"[yellow]warning:[/] {accel['warning']}")


def explanation(exp: Explanation) -> None:
    spec = exp.spec
    console.print("[bold]Specfile asks for[/]")
    _key_values([("displayName", spec.display_name), ("guestOS", spec.guest_os),
                 ("memSize", f"{spec.memory_mib} MiB"), ("numvcpus", spec.num_cpus),
                 ("cpuid.coresPerSocket", spec.cores_per_socket), ("firmware", spec.firmware),
                 ("boot disk", spec.boot_disk.node if spec.boot_disk else "none")])
    console.print("\n[bold]Virtual hardware the VMM builds[/]")
    table = Table(box=None, header_style="bold")
    table.add_column("DEVICE")
    table.add_column("WHAT THE GUEST SEES")
    for device in exp.hardware:
        table.add_row(device.name, device.description)
    console.print(table)
    console.print("\n[bold]Keys not virtualized[/] (kept in the specfile, no effect here)")
    console.print("  " + (", ".join(spec.unused_keys) or "none"), soft_wrap=True)
    for warning in exp.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    console.print("\n[bold]VMM command line[/]")
    console.print(shlex.join(exp.argv), soft_wrap=True, markup=False)


def explanation_dict(exp: Explanation) -> dict[str, Any]:
    from dataclasses import asdict

    return {"spec": asdict(exp.spec),
            "hardware": [{"name": d.name, "description": d.description, "args": list(d.args)}
                         for d in exp.hardware],
            "unused_keys": list(exp.spec.unused_keys), "warnings": list(exp.warnings), "argv": list(exp.argv)}


def _key_values(rows: list[tuple[str, Any]]) -> None:
    table = Table(box=None, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(str(key), str(value))
    console.print(table)
