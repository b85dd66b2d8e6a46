"""Snapshots of a VM, powered off or running: take, revert, delete, list.

The files and the tree are :mod:`minivisor.storage.snapshots`' (plans, run
through the VM's journal); the running VMM's side is :mod:`minivisor.vmm.jobs`'.
This module decides which applies, in the VM's turn (:func:`~minivisor.core.recovery.disk_operation`).
What only a running VM needs (QMP, the VMM's jobs, power-on) is imported where it is used: an offline
snapshot loads none of it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from functools import partial
from pathlib import Path

from ..errors import StateError
from ..images.deltas import create_delta
from ..images.layers import format_for
from ..storage.journal import Journal, crashpoint
from ..spec.vmsd import Snapshot, SnapshotTree, vmsd_path
from ..storage.snapshots import (VmFiles, commit_offline, plan_delete, plan_revert, plan_take, refresh_parent_ids,
                                 snapshot_disks)
from ..vmm.states import Action
from .context import VmContext, Vms
from .recovery import disk_operation, step_handlers

__all__ = ["take", "take_in", "revert", "delete", "delete_in", "tree"]


def tree(vms: Vms, name: str) -> SnapshotTree:
    """The snapshot tree as it stands (an interrupted operation's journal settled first, if it can be)."""
    ctx = vms.context(name)
    if Journal.load(ctx.vm_dir) is not None:
        try:
            with disk_operation(vms, name, Action.SNAPSHOT):
                pass
        except StateError:  # another operation holds the VM; it finishes the journal itself
            pass
    return SnapshotTree.load(vmsd_path(ctx.vmx))


def take(vms: Vms, name: str, snapshot: str, *, description: str = "", memory: bool | None = None,
         finish_later: Callable[[Callable[[], None]], None] | None = None) -> Snapshot:
    """Freeze the VM's disks (and, running, by default its memory and devices) as a named snapshot.

    ``finish_later``: the snapshot is returned once its journal's commit is durable, and the rest (the journal's
    idempotent steps: the tree, the specfile, the variable store; then the event) is handed to it as a callable
    that the caller must call, soon: the VM's turn is held until it has run. A crash before it runs leaves a
    committed journal, which the next operation on the VM (or the service's start) rolls forward.
    """
    with ExitStack() as turn:
        ctx = turn.enter_context(disk_operation(vms, name, Action.SNAPSHOT))
        snap, journal = _commit_take(ctx, snapshot, description, memory)
        if finish_later is None:
            _finish_take(ctx, snap, journal)
            return snap
        held = turn.pop_all()
    finish_later(partial(_finish_held, held, ctx, snap, journal))
    return snap


def take_in(ctx: VmContext, snapshot: str, *, description: str = "", memory: bool | None = None) -> Snapshot:
    """Take a snapshot within an operation that already has the VM's turn."""
    snap, journal = _commit_take(ctx, snapshot, description, memory)
    journal.run(step_handlers(ctx))
    return snap


def _commit_take(ctx: VmContext, snapshot: str, description: str, memory: bool | None) -> tuple[Snapshot, Journal]:
    """A snapshot up to its journal's durable commit: the journal's steps are left to run."""
    files = ctx.files()
    if not ctx.running:
        if memory:
            raise StateError(f"VM {ctx.name!r} is powered off: there is no memory state to save",
                             hint="take the snapshot without --memory, or start the VM first")
        return commit_offline(files, snapshot, description)
    return _take_online(ctx, files, snapshot, description, memory is not False)


def _finish_take(ctx: VmContext, snap: Snapshot, journal: Journal) -> None:
    journal.run(step_handlers(ctx))
    ctx.emit("snapshotTaken", snapshot=snap.name, memory=snap.memory_file is not None)


def _finish_held(turn: ExitStack, ctx: VmContext, snap: Snapshot, journal: Journal) -> None:
    """The rest of a snapshot answered early, in the turn it kept (a failure is the operation's, as it would
    have been before the answer: the committed journal stays for the next operation to roll forward)."""
    with turn:
        crashpoint("take:answered")
        _finish_take(ctx, snap, journal)


def _take_online(ctx: VmContext, files: VmFiles, name: str, description: str,
                 memory: bool) -> tuple[Snapshot, Journal]:
    import secrets

    from ..vmm import jobs
    from ..vmm.argv import device_id

    with ctx.vmm.session() as qmp:
        if memory:
            jobs.check_state_saveable(qmp, ctx.name)
        memory_file = f"{ctx.vmx.stem}-Snapshot{files.tree.next_uid}.vmsn" if memory else None
        # a revert restores a guest that has said it is ready already: what it said goes with the memory
        snap, deltas, steps = plan_take(files, name, description, memory_file,
                                        ctx.vmm.ready_line() if memory else None)
        state_file = ctx.vm_dir / memory_file if memory_file else None
        journal = Journal(ctx.vm_dir, "take-online")
        journal.begin([ctx.vm_dir / d for d in deltas.values()]
                      + ([state_file, state_file.with_name(state_file.name + ".part")] if state_file else []))
        for node, delta in deltas.items():
            create_delta(ctx.vm_dir / delta, files.layer(snap.disks[node]))
        tag = secrets.token_hex(3)
        overlays = [jobs.Overlay(device_id(node), ctx.vm_dir / delta, f"snap{snap.uid}-{device_id(node)}-{tag}",
                                 format_for(delta))
                    for node, delta in deltas.items()]
        running = qmp.execute("query-status")["status"] == "running"
        journal.data = {"overlays": [str(o.path) for o in overlays], "nodes": [o.node for o in overlays],
                        "resume": running}
        # Not fsynced: only a recovery that finds this VMM still running reads these (a power loss ends it
        # too), and the commit below, which is fsynced, carries them as well.
        journal.save(durable=False)
        def before_switch() -> None:  # paused: nothing writes
            refresh_parent_ids(files, snap, deltas)
            journal.commit(steps)

        jobs.take_snapshot(qmp, overlays, state_file=state_file, before_switch=before_switch, pause=running)
    if running:
        ctx.vmm.await_run_state(running=True)
    return snap, journal  # its steps run out of the session: keeping the variable store opens its own


def revert(vms: Vms, name: str, snapshot: str) -> tuple[Snapshot, bool]:
    """Go back to a snapshot; returns it and whether the VM now runs (memory snapshots resume)."""
    with disk_operation(vms, name, Action.REVERT) as ctx:
        files = ctx.files()
        snap = files.tree.find(snapshot, name)
        _refuse_revert_past_clones(ctx, files, snap)
        memory = (files.scope.state_file(ctx.vm_dir, snap.memory_file, f"the memory state of {snap.name!r}")
                  if snap.memory_file else None)
        if memory is not None and not memory.exists():
            raise StateError(f"the memory state {snap.memory_file} of snapshot {snap.name!r} is missing",
                             hint="restore the file, or delete the snapshot")
        if ctx.running:
            _discard_running_state(ctx)
        with vms.hold(ctx) if ctx.vmm.lock.fd is None else nullcontext(ctx):
            journal, _ = plan_revert(files, snap, set())
            journal.run(step_handlers(ctx))
            if memory is not None:
                _resume_from(ctx, snap, memory)
        ctx.emit("snapshotReverted", snapshot=snap.name, running=memory is not None)
        return snap, memory is not None


def _discard_running_state(ctx: VmContext) -> None:
    """Power the VM off at once: its current state is discarded, like VMware's revert."""
    record = ctx.vmm.record()
    pid = record.pid if record else None
    ctx.emit("poweringOff", pid=pid, hard=True)  # expected, not a crash
    how = ctx.vmm.stop(hard=True, timeout=0)
    ctx.emit("poweredOff", pid=pid, reason=f"reverted to a snapshot ({how})")
    ctx.running = False


def _resume_from(ctx: VmContext, snap: Snapshot, state_file: Path) -> None:
    """Power the VM on from a memory snapshot: a VMM waiting for a state, fed ``state_file``."""
    from ..vmm import jobs
    from .power import power_on

    power_on(ctx, ctx.plan(incoming=True))
    try:
        with ctx.vmm.session() as qmp:
            jobs.load_state(qmp, state_file)
    except BaseException:
        ctx.vmm.stop(hard=True, timeout=0)
        raise
    ctx.vmm.await_run_state(running=True)
    if snap.ready_line:
        ctx.vmm.remember_ready(snap.ready_line)


def _refuse_revert_past_clones(ctx: VmContext, files: VmFiles, target: Snapshot) -> None:
    """Linked clones pin their snapshot: going back to a point before it is refused."""
    for clone, uid in ctx.datastore.catalog.clones_of(ctx.uuid):
        if uid != target.uid and uid in files.tree.snapshots and target.uid in files.tree.ancestors(uid):
            pinned = files.tree.snapshots[uid].name
            raise StateError(f"cannot revert {ctx.name!r} to {target.name!r}: the linked clone {clone!r} "
                             f"depends on the later snapshot {pinned!r}",
                             hint=f"delete or fully clone {clone!r} first (minivisor vm delete {clone})")


def delete(vms: Vms, name: str, snapshot: str) -> Snapshot:
    """Remove a snapshot, merging its data into what depends on it."""
    with disk_operation(vms, name, Action.DELETE_SNAPSHOT) as ctx:
        snap = delete_in(ctx, snapshot)
        ctx.emit("snapshotDeleted", snapshot=snap.name)
        return snap


def delete_in(ctx: VmContext, snapshot: str) -> Snapshot:
    """Delete a snapshot within an operation that already has the VM's turn."""
    files = ctx.files()
    snap = files.tree.find(snapshot, ctx.name)
    clones: dict[int, list[str]] = {}
    for clone, uid in ctx.datastore.catalog.clones_of(ctx.uuid):
        clones.setdefault(uid, []).append(clone)
    busy: set[Path] = set()
    if ctx.running:
        for _, top in snapshot_disks(files.spec):
            busy.update(files.chain_files(top))
    steps = plan_delete(files, snap, clones, busy)
    journal = Journal(ctx.vm_dir, "delete")
    journal.commit(steps)
    crashpoint("delete:committed")
    journal.run(step_handlers(ctx))
    return snap
