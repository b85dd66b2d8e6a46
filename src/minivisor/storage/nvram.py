"""The UEFI variable store (``efivars.qcow2``) across snapshots and clones.

A snapshot keeps the store as it was in an internal snapshot of the store itself (qcow2 has them; the store
stays one file, which a running VMM keeps open), named after the snapshot's uid: a revert applies it, a
delete drops it. A clone gets a store of its own, a copy of the state it is cloned from. A VM without a
store (BIOS, or never powered on) has nothing to keep; a snapshot that kept none restores nothing.

Keeping, restoring and forgetting are steps of the snapshot operation's intent journal
(:mod:`minivisor.storage.journal`), the last of its plan: a crash after the disks changed and before the store
did is rolled forward by the next operation, so the store never stays newer than the disks. Each is
idempotent (a store kept once is not kept again, a restore applies the same state, a forgotten one is gone).
:mod:`minivisor.core.recovery` runs them, through the VMM when one has the store open.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

# qemu-img (images.qemu_img, with subprocess) is imported where a store exists: a BIOS VM has none, and every
# snapshot plan loads this module.

__all__ = ["snapshot_tag", "kept", "keep", "restore", "forget", "copy_for_clone", "KEEP", "RESTORE", "FORGET",
           "step", "handlers"]

KEEP, RESTORE, FORGET = "nvram-keep", "nvram-restore", "nvram-forget"  # the journal's step kinds


def step(kind: str, uid: int) -> list[object]:
    """The journal step that keeps, restores or forgets (``kind``) snapshot ``uid``'s store."""
    return [kind, uid]


def handlers(store: Path) -> dict[str, Callable[[int], None]]:
    """The journal's handlers of those steps for a VM no VMM runs (qemu-img on ``store``)."""
    return {KEEP: lambda uid: keep(store, uid), RESTORE: lambda uid: restore(store, uid),
            FORGET: lambda uid: forget(store, uid)}


def snapshot_tag(uid: int) -> str:
    """The store's internal snapshot that belongs to the VM's snapshot ``uid``."""
    return f"minivisor-snapshot-{uid}"


def kept(store: Path, uid: int) -> bool:
    """The store exists and keeps snapshot ``uid``'s state (read even while a VMM has it open)."""
    if not store.exists():
        return False
    from ..images.qemu_img import internal_snapshots

    return snapshot_tag(uid) in internal_snapshots(store)


def keep(store: Path, uid: int) -> None:
    """Keep the store of a powered-off VM as snapshot ``uid`` has it (once: a kept state is never replaced)."""
    if store.exists() and not kept(store, uid):
        from ..images.qemu_img import internal_snapshot

        internal_snapshot(store, "create", snapshot_tag(uid))


def restore(store: Path, uid: int) -> None:
    """Bring the store of a powered-off VM back to snapshot ``uid``'s, if it kept one."""
    if kept(store, uid):
        from ..images.qemu_img import internal_snapshot

        internal_snapshot(store, "apply", snapshot_tag(uid))


def forget(store: Path, uid: int) -> None:
    """Drop what snapshot ``uid`` kept of the store of a powered-off VM."""
    if kept(store, uid):
        from ..images.qemu_img import internal_snapshot

        internal_snapshot(store, "delete", snapshot_tag(uid))


def copy_for_clone(store: Path, uid: int | None, target: Path) -> None:
    """A clone's own store: the source's as snapshot ``uid`` kept it, else as it is (a running source is
    cloned from a snapshot, which kept it)."""
    if store.exists():
        from ..images.qemu_img import copy_qcow2

        copy_qcow2(store, target, snapshot_tag(uid) if uid is not None and kept(store, uid) else None)
