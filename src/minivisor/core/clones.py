"""Cloning a VM: a full copy, or a linked clone on one of its snapshots.

The files are :mod:`minivisor.storage.clones`' work; this module gives it the
source's turn and the frozen layers it needs: a linked clone sits on a
snapshot (one is taken if none is named), and a running source is frozen by a
snapshot for the length of a full copy (deleted after it, like VMware's).
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import HvError
from ..storage.clones import abandon_clone, build_clone
from ..spec.vmsd import Snapshot
from ..vmm.states import Action
from .context import VmContext, Vms
from .recovery import disk_operation
from .snapshots import delete_in, take_in

__all__ = ["clone"]


def clone(vms: Vms, source: str, target: str, *, linked: bool, snapshot: str | None,
          progress: Callable[[float], None] | None = None) -> None:
    """A new VM ``target`` (new name, UUID, MACs) from ``source``."""
    vms.datastore.check_new_name(target)
    with disk_operation(vms, source, Action.CLONE) as ctx:
        files = ctx.files()
        made: Snapshot | None = None  # a snapshot taken for this clone
        if snapshot is not None:
            snap = files.tree.find(snapshot, source)
        elif linked or ctx.running:
            # A linked clone needs frozen layers; a running VM's disks change under a copy: freeze them first.
            snap = made = take_in(ctx, f"clone-{target}", description=f"taken to clone {target}", memory=False)
            files = ctx.files()
        else:
            snap = None
        try:
            build_clone(files, ctx.uuid, target, snap, linked=linked, progress=progress)
        except BaseException:
            abandon_clone(files, target)
            if made is not None:
                _drop_snapshot(ctx, made)
            raise
        if made is not None and not linked:  # a full clone needs it only while copying
            delete_in(ctx, str(made.uid))


def _drop_snapshot(ctx: VmContext, snap: Snapshot) -> None:
    try:
        delete_in(ctx, str(snap.uid))
    except (HvError, OSError):
        pass  # its delete is journaled: the next operation on the source finishes it
