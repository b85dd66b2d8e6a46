"""Human-readable output for the CLI: plain aligned tables with a header row (as virsh and docker
print them), detail views, the snapshot tree and progress bars.

Names and values come from specfiles, disk headers and guests: every one is
shown through :func:`minivisor.text.printable`, which escapes control
characters, so a ``displayName`` cannot drive the terminal. Nothing is parsed
as markup and nothing is coloured.
"""

from __future__ import annotations

import sys
import time

from ..text import printable

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (~3 ms of `vm clone`, `vm list`)
if TYPE_CHECKING:
    from typing import Any

    from ..core.hypervisor import Explanation, VmInfo
    from ..host.info import HostInfo

__all__ = ["table", "key_values", "vm_table", "vm_details", "host_info", "explanation", "explanation_dict", "check_report",
           "disk_table", "disk_details", "snapshot_tree", "ProgressBar"]

GAP = "  "  # between columns


def write(lines: list[str]) -> None:
    """Lines on stdout, each made terminal-safe."""
    sys.stdout.write("".join(printable(line) + "\n" for line in lines))


def table(headers: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    """A header row and the rows under it, each column as wide as its widest cell."""
    cells = [headers, *([printable(value) for value in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    sys.stdout.write("".join(GAP.join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() + "\n"
                             for row in cells))


def key_values(rows: list[tuple[str, Any]], indent: str = "") -> None:
    """Rows of a name and its value, the values aligned."""
    width = max((len(key) for key, _ in rows), default=0)
    write([f"{indent}{key:<{width}}{GAP}{value}" for key, value in rows])


def vm_table(vms: list[VmInfo]) -> None:
    if not vms:
        write(["no VMs in this datastore (create one: minivisor vm create NAME --disk-size 8G)"])
        return
    table(("NAME", "STATE", "CPUS", "MEMORY", "DISKS", "NICS", "PID"),
          [(vm.name, vm.state_label, vm.cpus, f"{vm.memory_mib} MiB", len(vm.disks), len(vm.nics), vm.pid or "-")
           for vm in vms])
    write([f"{vm.name}: {vm.state_hint}" for vm in vms if vm.state_hint])


def vm_details(vm: VmInfo) -> None:
    rows: list[tuple[str, Any]] = [
        ("name", vm.name), ("state", vm.state_label), ("uuid", vm.uuid), ("specfile", vm.specfile),
        ("display name", vm.display_name), ("guest OS", vm.guest_os), ("cpus", vm.cpus),
        ("memory", f"{vm.memory_mib} MiB"), ("pid", vm.pid or "-"), ("accelerator", vm.accel or "-"),
        ("autostart", "yes" if vm.autostart else "no"),
    ]
    if vm.host:  # a cluster's member: the host it runs on
        rows.append(("host", vm.host))
    if vm.ha is not None:  # in a cluster
        rows.append(("HA", "yes" if vm.ha else "no"))
    if vm.replica:
        rows.append(("Replica", replica_state(vm.replica)))
    rows += [(f"disk {d['node']}", f"{d['kind']}: {d['file'] or 'empty'}") for d in vm.disks]
    rows += [(n["name"], f"{n['model']} {n['mac']} on {n['network']}" + (f", {n['address']}" if n.get("address") else ""))
             for n in vm.nics]
    key_values(rows)
    if vm.state_hint:
        write([f"hint: {vm.state_hint}"])


def replica_state(replica: dict[str, Any]) -> str:
    """A replication in a few words: where the replica is and how old its last good copy is."""
    if replica["failed_over_to"]:
        return f"failed over to {replica['failed_over_to']} at {_utc(replica['failed_over_at'])}"
    age = f"last good copy {time.time() - replica['last_copy']:.0f} s ago" if replica["last_copy"] else "no copy yet"
    behind = "; BEHIND: its rounds fail (see its source's service log)" if replica.get("behind") else ""
    return f"on {replica['target']}, {age} (generation {replica['generation']}, every {replica['every']:g} s){behind}"


def _utc(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))


def host_info(info: HostInfo) -> None:
    data = info.to_dict()
    accel = data.pop("accel") or {}
    key_values([(key.replace("_", " "), value) for key, value in data.items()]
               + [("accelerator", accel.get("accel")), ("why", accel.get("reason"))])
    if accel.get("warning"):
        write([f"warning: {accel['warning']}"])


def explanation(exp: Explanation) -> None:
    import shlex

    spec = exp.spec
    write(["Specfile asks for"])
    key_values([("displayName", spec.display_name), ("guestOS", spec.guest_os),
                ("memSize", f"{spec.memory_mib} MiB"), ("numvcpus", spec.num_cpus),
                ("cpuid.coresPerSocket", spec.cores_per_socket), ("firmware", spec.firmware),
                ("boot disk", spec.boot_disk.node if spec.boot_disk else "none")], indent=GAP)
    write(["", "Virtual hardware the VMM builds"])
    table(("  DEVICE", "WHAT THE GUEST SEES"), [(f"  {d.name}", d.description) for d in exp.hardware])
    write(["", "Keys not virtualized (kept in the specfile, no effect here)",
           GAP + (", ".join(spec.unused_keys) or "none")])
    write([f"warning: {line}" for line in exp.warnings])
    write(["", "VMM command line", shlex.join(exp.argv)])


def check_report(report: dict[str, Any]) -> None:
    """``vm check``: each key with its verdict and why, then the counts and whether it powers on."""
    from ..text import clip

    table(("KEY", "VALUE", "VERDICT", "WHY"),
          [(k["key"], clip(k["value"], 40), k["verdict"], k["reason"]) for k in report["keys"]])
    counts = ", ".join(f"{n} {verdict}" for verdict, n in report["counts"].items() if n)
    write(["", f"{len(report['keys'])} keys: {counts or 'none'}",
           *(f"warning: {line}" for line in report["warnings"]),
           *(f"specfile: {line}" for line in report["problems"]),
           f"powers on: {'yes' if report['powers_on'] else 'no (see the refused keys)'}"])


def explanation_dict(exp: Explanation) -> dict[str, Any]:
    from ..records import as_dict

    return {"spec": as_dict(exp.spec),
            "hardware": [{"name": d.name, "description": d.description, "args": list(d.args)}
                         for d in exp.hardware],
            "unused_keys": list(exp.spec.unused_keys), "warnings": list(exp.warnings), "argv": list(exp.argv)}


def disk_table(disks: list[dict]) -> None:
    """A VM's hard disks, one row each (``vm disk list``)."""
    from ..units import human_size

    table(("DISK", "FILE", "FORMAT", "SIZE", "ALLOCATED", "LAYERS"),
          [(d["node"], d["fileName"], d["format"], human_size(d["virtual_size"]), human_size(d["chain_allocated"]),
            len(d["chain"])) for d in disks])


def disk_details(info: dict) -> None:
    """One disk file: sizes, format and the chain of parents under it."""
    from ..units import human_size

    rows = [("file", info["file"]), ("format", info["format"]),
            ("virtual size", f"{human_size(info['virtual_size'])} ({info['virtual_size']} bytes)"),
            ("allocated", f"{human_size(info['allocated'])} ({'thin' if info['thin'] else 'fully allocated'})")]
    for depth, layer in enumerate(info["chain"][1:], 1):
        rows.append((f"parent {depth}", f"{layer['file']} ({layer['format']}, {human_size(layer['allocated'])} "
                                        "allocated)"))
    key_values(rows)


def snapshot_tree(name: str, snaps: list[dict[str, Any]]) -> None:
    """A VM's snapshot tree (as ``snapshot_list`` gives it: depth first), '<- you are here' at its position."""
    children: dict[Any, list[dict[str, Any]]] = {}
    uids = {snap["uid"] for snap in snaps}
    for snap in snaps:
        children.setdefault(snap["parent"] if snap["parent"] in uids else None, []).append(snap)
    lines = [name]

    def branch(parent: Any, prefix: str) -> None:
        kids = children.get(parent, [])
        for i, snap in enumerate(kids):
            last = i == len(kids) - 1
            lines.append(prefix + ("└── " if last else "├── ") + _snapshot_label(snap))
            branch(snap["uid"], prefix + ("    " if last else "│   "))

    branch(None, "")
    write(lines)


def _snapshot_label(snap: dict[str, Any]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(snap["created"]))
    label = f"{snap['name']} (uid {snap['uid']}, {when}{', memory' if snap['memory'] else ''})"
    if snap["description"]:
        label += f" - {snap['description']}"
    return label + (" <- you are here" if snap["current"] else "")


class ProgressBar:
    """The progress (percentages, 0..100) of one long operation, on stderr.

    On a terminal, one line redrawn in place with a bar and the time left; otherwise (a log), a line at
    each quarter. Nothing is drawn before the first update, so bad input stays one error line.
    """

    WIDTH = 30  # characters of the bar
    LOG_STEP = 25  # percent between lines when stderr is not a terminal

    def __init__(self, what: str) -> None:
        self.what = printable(what)
        self.terminal = sys.stderr.isatty()
        self.started = time.monotonic()
        self.shown: int | None = None
        self.closed = False

    def __call__(self, percent: float) -> None:
        step = int(percent) if self.terminal else int(percent) // self.LOG_STEP * self.LOG_STEP
        if step == self.shown:
            return
        self.shown = step
        if not self.terminal:
            sys.stderr.write(f"{self.what}: {step}%\n")
            return
        filled = self.WIDTH * step // 100
        left = (time.monotonic() - self.started) * (100 - percent) / percent if percent > 0 else None
        eta = f"  {int(left) // 60}:{int(left) % 60:02d} left" if left is not None else ""
        sys.stderr.write(f"\r{self.what} [{'#' * filled}{'.' * (self.WIDTH - filled)}] {step:3d}%{eta}\033[K")
        sys.stderr.flush()

    def close(self) -> None:
        """End the bar's line (once)."""
        if self.terminal and self.shown is not None and not self.closed:
            sys.stderr.write("\n")
        self.closed = True

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
