"""``minivisor snapshot ...``: take, list, revert and delete snapshots of a VM."""

from __future__ import annotations

from . import JSON, NAME, arg, command, hv, print_json, say

SNAPSHOT = arg("snapshot", metavar="SNAPSHOT", help="The snapshot's name (or uid).")


@command("snapshot take", NAME, SNAPSHOT,
         arg("--memory", action="boolean_optional",
             help="Save memory and device state too, or not [default: when the VM is running]."),
         arg("--description", default="", help="A longer description."), JSON)
def snapshot_take(name: str, snapshot: str, memory: bool | None, description: str, as_json: bool) -> None:
    snap = hv().snapshot_take(name, snapshot, description=description, memory=memory)
    if as_json:
        return print_json(snap)
    kind = "disks and memory" if snap.memory_file else "disks"
    say(f"took snapshot {snap.name!r} of {name} ({kind}, uid {snap.uid})")


@command("snapshot list", NAME, JSON)
def snapshot_list(name: str, as_json: bool) -> None:
    snaps = hv().snapshot_list(name)
    if as_json:
        return print_json(snaps)
    if not snaps:
        return say(f"{name} has no snapshots (take one: minivisor snapshot take {name} NAME)")
    from .output import snapshot_tree

    snapshot_tree(name, snaps)


@command("snapshot revert", NAME, SNAPSHOT, JSON)
def snapshot_revert(name: str, snapshot: str, as_json: bool) -> None:
    snap, running = hv().snapshot_revert(name, snapshot)
    if as_json:
        return print_json({"snapshot": snap.to_dict(), "running": running})
    say(f"{name} reverted to {snap.name!r}" + (" and running where it was" if running else " (powered off)"))


@command("snapshot delete", NAME, SNAPSHOT, JSON)
def snapshot_delete(name: str, snapshot: str, as_json: bool) -> None:
    snap = hv().snapshot_delete(name, snapshot)
    print_json(snap) if as_json else say(f"deleted snapshot {snap.name!r} of {name}")
