"""``minivisor snapshot ...``: take, list, revert and delete snapshots of a VM."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from . import JsonFlag, Name, group, hv, print_json, say

snapshot_app = group("snapshot", "Snapshots of a VM (a tree, kept in its .vmsd).")

SnapName = Annotated[str, typer.Argument(help="The snapshot's name (or uid).")]


@snapshot_app.command("take")
def snapshot_take(name: Name, snapshot: SnapName,
                  memory: Annotated[Optional[bool], typer.Option(
                      "--memory/--no-memory", help="Save memory and device state [default: yes if running].")] = None,
                  description: Annotated[str, typer.Option(help="A longer description.")] = "") -> None:
    """Freeze the VM's disks (and its memory when running) as a named snapshot."""
    snap = hv().snapshot_take(name, snapshot, description=description, memory=memory)
    kind = "disks and memory" if snap.memory_file else "disks"
    say(f"took snapshot {snap.name!r} of {name} ({kind}, uid {snap.uid})")


@snapshot_app.command("list")
def snapshot_list(name: Name, as_json: JsonFlag = False) -> None:
    """The snapshot tree; '<- you are here' marks the VM's current position."""
    snaps = hv().snapshot_list(name)
    if as_json:
        return print_json(snaps)
    if not snaps:
        say(f"{name} has no snapshots (take one: minivisor snapshot take {name} NAME)")
        return
    from . import output

    output.snapshot_tree(name, snaps)


@snapshot_app.command("revert")
def snapshot_revert(name: Name, snapshot: SnapName) -> None:
    """Go back to a snapshot (the current state is discarded); memory snapshots resume running."""
    snap, running = hv().snapshot_revert(name, snapshot)
    say(f"{name} reverted to {snap.name!r}" + (" and running where it was" if running else " (powered off)"))


@snapshot_app.command("delete")
def snapshot_delete(name: Name, snapshot: SnapName) -> None:
    """Delete a snapshot; its data is merged into what depends on it."""
    snap = hv().snapshot_delete(name, snapshot)
    say(f"deleted snapshot {snap.name!r} of {name}")
