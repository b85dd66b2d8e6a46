"""Human-readable output for the CLI: tables and detail views (rich).

Kept apart from :mod:`minivisor.cli` so commands that print JSON or nothing
never pay for importing rich.

Names and values come from specfiles, disk headers and guests: every one is
shown through :func:`cell`, which escapes control characters
(:func:`minivisor.text.printable`) and is never read as rich markup, so a
``displayName`` can neither drive the terminal nor restyle (or crash) a table.
"""

from __future__ import annotations

import shlex
import time
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from ..core.hypervisor import Explanation, VmInfo
from ..host.info import HostInfo
from ..text import printable

console = Console(highlight=False)


def cell(value: object, style: str = "") -> Text:
    """``value`` as terminal-safe text: control characters escaped, no markup, no emoji codes."""
    return Text(printable(value), style=style)


def warning(line: str) -> None:
    console.print(Text.assemble(("warning:", "yellow"), " ", cell(line)))


STATE_STYLE = {"running": "green", "paused": "yellow", "starting": "cyan", "poweredOff": "dim"}


def vm_table(vms: list[VmInfo]) -> None:
    table = Table(box=None, header_style="bold")
    for column in ("NAME", "STATE", "CPUS", "MEMORY", "DISKS", "NICS", "PID"):
        table.add_column(column)
    for vm in vms:
        style = "red" if vm.state_reason else STATE_STYLE.get(vm.state.value, "")
        table.add_row(cell(vm.name), cell(vm.state_label, style), cell(vm.cpus),
                      cell(f"{vm.memory_mib} MiB"), cell(len(vm.disks)), cell(len(vm.nics)), cell(vm.pid or "-"))
    if not vms:
        console.print("no VMs in this datastore (create one: minivisor vm create NAME --disk-size 8G)")
        return
    console.print(table)
    for vm in vms:
        if vm.state_hint:
            console.print(Text.assemble((f"{printable(vm.name)}:", "yellow"), " ", cell(vm.state_hint)), soft_wrap=True)


def vm_details(vm: VmInfo) -> None:
    rows: list[tuple[str, Any]] = [
        ("name", vm.name), ("state", vm.state_label), ("uuid", vm.uuid), ("specfile", vm.vmx),
        ("display name", vm.display_name), ("guest OS", vm.guest_os), ("cpus", vm.cpus),
        ("memory", f"{vm.memory_mib} MiB"), ("pid", vm.pid or "-"), ("accelerator", vm.accel or "-"),
        ("autostart", "yes" if vm.autostart else "no"),
    ]
    rows += [(f"disk {d['node']}", f"{d['kind']}: {d['file'] or 'empty'}") for d in vm.disks]
    rows += [(n["name"], f"{n['model']} {n['mac']} on {n['network']}") for n in vm.nics]
    key_values(rows)
    if vm.state_hint:
        console.print(Text.assemble(("hint:", "yellow"), " ", cell(vm.state_hint)), soft_wrap=True)


def host_info(info: HostInfo) -> None:
    data = info.to_dict()
    key_values([(key.replace("_", " "), value) for key, value in data.items() if key != "accel"])
    accel = data.get("accel") or {}
    key_values([("accelerator", accel.get("accel")), ("why", accel.get("reason"))])
    if accel.get("warning"):
        warning(accel["warning"])


def explanation(exp: Explanation) -> None:
    spec = exp.spec
    console.print("[bold]Specfile asks for[/]")
    key_values([("displayName", spec.display_name), ("guestOS", spec.guest_os),
                ("memSize", f"{spec.memory_mib} MiB"), ("numvcpus", spec.num_cpus),
                ("cpuid.coresPerSocket", spec.cores_per_socket), ("firmware", spec.firmware),
                ("boot disk", spec.boot_disk.node if spec.boot_disk else "none")])
    console.print("\n[bold]Virtual hardware the VMM builds[/]")
    table = Table(box=None, header_style="bold")
    table.add_column("DEVICE")
    table.add_column("WHAT THE GUEST SEES")
    for device in exp.hardware:
        table.add_row(cell(device.name), cell(device.description))
    console.print(table)
    console.print("\n[bold]Keys not virtualized[/] (kept in the specfile, no effect here)")
    console.print(Text("  ").append(cell(", ".join(spec.unused_keys) or "none")), soft_wrap=True)
    for line in exp.warnings:
        warning(line)
    console.print("\n[bold]VMM command line[/]")
    console.print(cell(shlex.join(exp.argv)), soft_wrap=True)


def explanation_dict(exp: Explanation) -> dict[str, Any]:
    from dataclasses import asdict

    return {"spec": asdict(exp.spec),
            "hardware": [{"name": d.name, "description": d.description, "args": list(d.args)}
                         for d in exp.hardware],
            "unused_keys": list(exp.spec.unused_keys), "warnings": list(exp.warnings), "argv": list(exp.argv)}


def disk_table(disks: list[dict]) -> None:
    """A VM's hard disks, one row each (``vm disk list``)."""
    from ..units import human_size

    table = Table(box=None, header_style="bold")
    for column in ("DISK", "FILE", "FORMAT", "SIZE", "ALLOCATED", "LAYERS"):
        table.add_column(column)
    for d in disks:
        table.add_row(cell(d["node"]), cell(d["fileName"]), cell(d["format"]), cell(human_size(d["virtual_size"])),
                      cell(human_size(d["chain_allocated"])), cell(len(d["chain"])))
    console.print(table)


def snapshot_tree(name: str, snaps: list[dict[str, Any]]) -> None:
    """A VM's snapshot tree, with '<- you are here' at its current position."""
    root = Tree(cell(name, "bold"))
    nodes = {}
    for snap in snaps:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(snap["created"]))
        label = cell(snap["name"]).append(cell(f" (uid {snap['uid']}, {when}{', memory' if snap['memory'] else ''})",
                                                "dim"))
        if snap["description"]:
            label.append(cell(f" - {snap['description']}", "dim"))
        if snap["current"]:
            label.append(" <- you are here", "bold green")
        nodes[snap["uid"]] = (nodes[snap["parent"]] if snap["parent"] in nodes else root).add(label)
    console.print(root)


def key_values(rows: list[tuple[str, Any]]) -> None:
    """Rows of a name (in bold) and its value."""
    table = Table(box=None, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(cell(key), cell(value))
    console.print(table)
