"""Disk operations on a VM take turns, and finish what an interrupted one left in its journal.

A disk operation (snapshot, revert, delete, clone, resize) gets its turn on the VM
through :func:`disk_operation`: the VM's operation turn and the state table
(:meth:`~minivisor.core.context.Vms.operate`), plus, when the VM is powered off,
the VM lock (no power-on can begin meanwhile). A running VM's VMM holds the VM
lock; its disks then change only through it (QMP). Before anything else, the
operation finishes or undoes what an interrupted one left in the VM's intent
journal (:mod:`minivisor.storage.journal`); so does a power-on. The VMM's jobs are
imported where a running VM needs them, and qemu-img (with subprocess), the VMDK and variable-store tools
where a step merges, relinks or keeps a store: most disk operations need none of them (a snapshot's
overlays are written in-process), and a power-on without a journal to finish loads none.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from ..errors import HvError
from ..images.layers import format_for
from ..storage.journal import Journal
from ..vmm.states import Action
from .context import VmContext, Vms

__all__ = ["disk_operation", "recover", "step_handlers"]


@contextmanager
def disk_operation(vms: Vms, name: str, action: Action) -> Iterator[VmContext]:
    """The VM for one disk operation: its turn, legal now, held if powered off, its journal settled.

    If the operation fails, what it prepared is undone at once (not at the next operation); a
    committed journal is left to the next operation to roll forward (at once, the step that failed
    would fail again), except an online snapshot's, whose recovery asks the VMM what it uses.
    """
    with vms.operate(name, action) as ctx, ExitStack() as held:
        if not ctx.running:
            held.enter_context(vms.hold(ctx))
        recover(ctx)
        try:
            yield ctx
        except BaseException:
            journal = Journal.load(ctx.vm_dir)
            if journal is not None and (journal.phase == "prepare" or journal.op == "take-online"):
                try:
                    recover(ctx)
                except (HvError, OSError):
                    pass  # the journal stays; the next operation settles it
            raise


def recover(ctx: VmContext) -> bool:
    """Finish or undo what an interrupted operation left in the VM's journal; False if there was none.

    The caller has the VM's turn, and its VM lock if the VM is powered off.
    """
    journal = Journal.load(ctx.vm_dir)
    if journal is None:
        return False
    if journal.op == "take-online":
        _recover_online_snapshot(ctx, journal)
    elif journal.phase == "prepare":
        journal.rollback()
    else:
        journal.run(step_handlers(ctx))
    return True


def _recover_online_snapshot(ctx: VmContext, journal: Journal) -> None:
    """By what the VMM uses: overlays only opened are dropped and the snapshot undone; switched, it is kept."""
    from ..vmm import jobs

    nodes = journal.data.get("nodes", [])
    if not ctx.running:
        if journal.phase == "prepare":
            journal.rollback()
        else:
            journal.run(step_handlers(ctx))  # the memory state, if any, was complete before the commit
        return
    with ctx.vmm.session() as qmp:
        jobs.reopen_closed_chains(qmp, _reopenable_chains(ctx))
        switched = journal.phase == "commit" and jobs.overlays_in_use(qmp, nodes)
        if not switched:
            jobs.drop_nodes(qmp, nodes)
            journal.rollback()
        if journal.data.get("resume"):
            # before the steps: a memory state saved left the VMM's images inactive until it continues, and
            # keeping the variable store is a write to one
            jobs.resume_if_paused(qmp)
    if journal.data.get("resume"):
        ctx.vmm.await_run_state(running=True)
    if switched:  # out of the session: a step may open its own (the VMM serves one at a time)
        journal.run(step_handlers(ctx))


def _publish_clone(ctx: VmContext, *args: object) -> None:
    # imported here: only a clone's journal has this step, and storage.clones (with uuid and platform)
    # would cost every power-on, which recovers the VM's journal first, ~3 ms
    from ..storage.clones import publish_clone

    publish_clone(ctx.datastore, *args)


def _reopenable_chains(ctx: VmContext) -> dict[str, list[tuple[Path, str]]]:
    """Device -> the layers (path, format) of each hard disk whose chain the specfile names whole.

    An independent-nonpersistent disk's discarded writes lived in an overlay of the VMM's run: it is
    left out, never reopened to write into the disk itself.
    """
    from ..vmm.argv import device_id

    files = ctx.files()
    return {device_id(disk.node): [(layer.path, layer.format) for layer in files.chain(disk.file_name)]
            for disk in files.spec.disks
            if disk.kind == "disk" and disk.file_name and disk.mode != "independent-nonpersistent"}


def step_handlers(ctx: VmContext) -> dict[str, Callable[..., None]]:
    """The journal steps that need the datastore: each checks the chains it opens under the VM's path policy."""
    from ..storage import nvram

    return {"publish-clone": lambda *args: _publish_clone(ctx, *args),
            "commit": lambda dependent: _commit(ctx, dependent),
            "relink": lambda image, backing, fmt: _relink(ctx, image, backing, fmt),
            "rebase": lambda dependent, frozen: _rebase(ctx, dependent, frozen),
            "online-commit": lambda *args: _online_commit(ctx, *args),
            "online-stream": lambda *args: _online_stream(ctx, *args),
            nvram.KEEP: lambda uid: _nvram(ctx, nvram.KEEP, uid),
            nvram.RESTORE: lambda uid: _nvram(ctx, nvram.RESTORE, uid),
            nvram.FORGET: lambda uid: _nvram(ctx, nvram.FORGET, uid)}


def _nvram(ctx: VmContext, kind: str, uid: int) -> None:
    """Keep, restore or forget snapshot ``uid``'s UEFI variable store (idempotent).

    An EFI VM's running VMM has the store open (and locked): it keeps and forgets the store's internal
    snapshots itself. A restore is a revert's, which powers the VM off first: always qemu-img.
    """
    from ..storage import nvram

    store = ctx.paths.efi_vars
    through_vmm = (kind != nvram.RESTORE and store.exists() and ctx.vmm.record() is not None
                   and ctx.files().spec.firmware == "efi")
    if not through_vmm:
        nvram.handlers(store)[kind](uid)
    elif (kind == nvram.KEEP) != nvram.kept(store, uid):
        command = "blockdev-snapshot-internal-sync" if kind == nvram.KEEP else \
            "blockdev-snapshot-delete-internal-sync"
        ctx.vmm.execute(command, {"device": "uefi-vars", "name": nvram.snapshot_tag(uid)})


def _commit(ctx: VmContext, dependent: str) -> None:
    """Fold a layer into its backing file (idempotent: the layer stays).

    A VMDK gets a new content ID when it is written: the merged file keeps the one its dependent
    recorded, so a re-run still finds an intact chain (what the dependent reads has not changed).
    """
    from ..images.qemu_img import commit_layer
    from ..images.vmdk import set_cid

    chain = ctx.files().chain(dependent)
    commit_layer(chain)
    if chain[1].format == "vmdk" and chain[1].cid:
        set_cid(chain[1].path, chain[1].cid)


def _relink(ctx: VmContext, image: str, backing: str, backing_format: str) -> None:
    """Point a layer's header (a VMDK's descriptor) at another backing file (its name relative to the layer)."""
    files = ctx.files()
    path = files.path(image)
    name = os.path.relpath(files.path(backing), path.parent)
    if format_for(path) == "vmdk":
        from ..images.vmdk import set_parent

        set_parent(path, files.layer(backing), name)
    else:
        from ..images.qemu_img import set_backing

        set_backing(path, name, backing_format)


def _rebase(ctx: VmContext, dependent: str, frozen: str) -> None:
    """Copy ``frozen``'s data into ``dependent`` and give it ``frozen``'s backing file (idempotent)."""
    from ..images.qemu_img import rebase_disk

    files = ctx.files()
    rebase_disk(files.chain(dependent), files.chain(frozen)[1:])


def _online_stream(ctx: VmContext, node: str, dependent: str, frozen: str, backing: str,
                   backing_format: str | None = None) -> None:
    """Copy ``frozen``'s data into ``dependent`` and drop it from the chain (block-stream, else a safe rebase)."""
    if ctx.vmm.record() is None:
        _rebase(ctx, dependent, frozen)
        return
    from ..vmm import jobs
    from ..vmm.argv import device_id

    files = ctx.files()
    base = str(files.chain(frozen)[1].path) if backing else None
    with ctx.vmm.session() as qmp:
        jobs.stream_layer(qmp, device_id(node), str(files.path(dependent)), str(files.path(frozen)), base,
                          backing or None)


def _online_commit(ctx: VmContext, node: str, dependent: str, frozen: str, frozen_format: str,
                   above: str | None) -> None:
    """Fold ``dependent`` into ``frozen``: block-commit in the running VMM, else qemu-img (idempotent)."""
    if ctx.vmm.record() is None:
        _commit(ctx, dependent)
        if above is not None:
            _relink(ctx, above, frozen, frozen_format)
        return
    from ..vmm import jobs
    from ..vmm.argv import device_id

    files = ctx.files()
    frozen_path = files.path(frozen)
    backing = os.path.relpath(frozen_path, files.path(above).parent) if above else None
    with ctx.vmm.session() as qmp:
        jobs.commit_layer(qmp, device_id(node), str(files.path(dependent)), str(frozen_path), backing)

