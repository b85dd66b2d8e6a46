"""Disk operations on a VM, powered off or running: locking, recovery, and the VMM's side.

Two operations on one VM's disks never run at once: each takes the VM's
*operation lock* (``.minivisor-ops.lck`` in its folder) and, when the VM is
powered off, the VM lock too (so it cannot be started meanwhile). A running
VM's VMM holds the VM lock; its disks are then changed only through QMP.
Before anything else, each operation finishes or undoes what an interrupted
one left in the VM's journal (:mod:`minivisor.storage.journal`).

Online snapshot: pause, ``blockdev-add`` the new qcow2 overlays (created
beforehand with an explicit backing format and opened with ``backing: null``),
(``--memory``) ``migrate`` the memory and device state to a file descriptor
passed with ``getfd`` (QEMU's sandbox forbids ``exec:``), then
``blockdev-snapshot`` the overlays in one ``transaction``, and continue. The
memory goes first: while the VM is paused either order gives the same state,
and a memory save that fails (a full datastore) then leaves nothing to undo in
the VMM. Reverting to it starts a fresh VMM with ``-incoming defer`` on new
overlays and feeds the state file back with ``migrate-incoming``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import (
    ConflictError,
    DiskError,
    HvError,
    LockError,
    NotFoundError,
    QmpError,
    StateError,
)
from ..storage.journal import Journal, crashpoint, write_step
from ..storage.snapshots import (
    Snapshot,
    SnapshotTree,
    VmFiles,
    new_tree_with,
    plan_delete,
    plan_revert,
    plan_take,
    snapshot_disks,
    take_offline,
)
from ..locks import try_lock
from ..host.admission import commit_memory
from ..vmm.states import VmState
from ..vmm.process import SHORT_HOLD, Vmm

__all__ = ["DiskOperations"]

OPS_LOCK = ".minivisor-ops.lck"
MIGRATE_TIMEOUT = 300.0
# QEMU block drivers that refuse to let a VM's state be saved while one of their images is open: each
# adds a migration blocker when it opens an image (QEMU's vmdk driver: "does not support live migration"),
# and a memory snapshot is a migration to a file. Of the formats minivisor runs, only VMDK.
MIGRATION_BLOCKING_DRIVERS = ("vmdk",)


@dataclass
class OpContext:
    name: str
    uuid: str
    vmx: Path
    vmm: Vmm
    running: bool

    @property
    def vm_dir(self) -> Path:
        return self.vmx.parent


class DiskOperations:
    """Snapshot take/list/revert/delete and the locking and recovery every disk operation shares."""

    def __init__(self, hv) -> None:
        self.hv = hv
        self.datastore = hv.datastore

    # -- locking and recovery ----------------------------------------------
    @contextmanager
    def operation(self, name: str, *, online: bool, what: str) -> Iterator[OpContext]:
        entry = self.datastore.catalog.get(name)
        with self.hv._operation(entry.name):  # power operations (start, stop) wait for us, and we for them
            with self._disk_operation(entry, what, online=online) as ctx:
                yield ctx

    @contextmanager
    def _disk_operation(self, entry, what: str, *, online: bool) -> Iterator[OpContext]:
        vmx = self.datastore.vmx_path(entry)
        ops_fd = try_lock(vmx.parent / OPS_LOCK)
        if ops_fd is None:
            raise LockError(f"another disk operation on VM {entry.name!r} is in progress",
                            hint="wait for it to finish, then retry")
        try:
            vmm = self.hv._vmm(entry.name)
            state = vmm.state()
            if state is VmState.POWERED_OFF:
                vmm.lock.acquire(entry.name, wait=SHORT_HOLD)
            elif state in (VmState.RUNNING, VmState.PAUSED):
                if not online:
                    raise StateError(f"cannot {what} VM {entry.name!r}: it is {state.value}",
                                     hint=f"power it off first: minivisor vm stop {entry.name}")
            else:
                raise StateError(f"cannot {what} VM {entry.name!r}: it is {state.value}",
                                 hint="another operation on it is in progress; retry when it has finished")
            ctx = OpContext(entry.name, entry.uuid, vmx, vmm, vmm.lock.fd is None)
            try:
                self.recover(ctx)
                yield ctx
            except BaseException:
                self._settle(ctx)
                raise
            finally:
                vmm.lock.release()
        finally:
            os.close(ops_fd)

    def _settle(self, ctx: OpContext) -> None:
        """After a failure: undo what the operation prepared now, not at the next operation.

        A committed journal is left to the next operation to roll forward (at once, the step that
        failed would fail again), except an online snapshot's: recovery asks the VMM what it uses.
        """
        journal = Journal.load(ctx.vm_dir)
        if journal is None or (journal.phase != "prepare" and journal.op != "take-online"):
            return
        try:
            self.recover(ctx)
        except (HvError, OSError):
            pass  # the journal stays; the next operation settles it

    def recover_before_start(self, name: str) -> None:
        """Finish or undo an interrupted operation before a VM powers on (caller holds the VM lock)."""
        entry = self.datastore.catalog.get(name)
        vmx = self.datastore.vmx_path(entry)
        if Journal.load(vmx.parent) is not None:
            self.recover(OpContext(entry.name, entry.uuid, vmx, self.hv._vmm(entry.name), False))

    def recover(self, ctx: OpContext) -> None:
        journal = Journal.load(ctx.vm_dir)
        if journal is None:
            return
        if journal.op == "take-online":
            in_use = ctx.running and self._nodes_in_use(ctx, journal.data.get("nodes", []))
            if journal.phase == "prepare" or (ctx.running and not in_use):
                if ctx.running:
                    self._drop_nodes(ctx, journal.data.get("nodes", []))
                journal.rollback()
            else:
                journal.run()  # the memory state, if any, was complete before the commit
            if ctx.running and journal.data.get("resume"):
                status = self._qmp(ctx, [("query-status", None)])[0]["status"]
                if status in ("paused", "postmigrate"):
                    self._qmp(ctx, [("cont", None)])
            return
        if journal.phase == "prepare":
            journal.rollback()
        else:
            journal.run(self._step_handlers(ctx))

    def _step_handlers(self, ctx: OpContext) -> dict[str, Any]:
        """The journal steps that need the datastore: each checks the chains it opens under the VM's path policy."""
        from ..storage.clones import publish_clone

        return {"publish-clone": lambda *args: publish_clone(self.datastore, *args),
                "commit": lambda dependent: self._commit(ctx, dependent),
                "relink": lambda image, backing, fmt: self._relink(ctx, image, backing, fmt),
                "rebase": lambda dependent, frozen: self._rebase(ctx, dependent, frozen),
                "online-commit": lambda *args: self._online_commit(ctx, *args),
                "online-stream": lambda *args: self._online_stream(ctx, *args)}

    def _commit(self, ctx: OpContext, dependent: str) -> None:
        """Fold a layer into its backing file (idempotent: the layer stays)."""
        from ..storage.images import commit_layer

        commit_layer(VmFiles(self.datastore, ctx.vmx).chain(dependent))

    def _relink(self, ctx: OpContext, image: str, backing: str, backing_format: str) -> None:
        """Point a layer's header at another backing file (its name relative to the layer)."""
        from ..storage.images import set_backing

        files = VmFiles(self.datastore, ctx.vmx)
        path = files.path(image)
        set_backing(path, os.path.relpath(files.path(backing), path.parent), backing_format)

    def _rebase(self, ctx: OpContext, dependent: str, frozen: str) -> None:
        """Copy ``frozen``'s data into ``dependent`` and give it ``frozen``'s backing file (idempotent)."""
        from ..storage.images import rebase_disk

        files = VmFiles(self.datastore, ctx.vmx)
        rebase_disk(files.chain(dependent), files.chain(frozen)[1:])

    def finish_interrupted(self, name: str) -> bool:
        """Before a power-on (the caller holds the VM lock): finish or undo a cut-short operation."""
        entry = self.datastore.catalog.get(name)
        vmx = self.datastore.vmx_path(entry)
        if Journal.load(vmx.parent) is None:
            return False
        self.recover(OpContext(entry.name, entry.uuid, vmx, self.hv._vmm(entry.name), False))
        return True

    # -- disk files --------------------------------------------------------
    def _path(self, path: Path | str, what: str = "disk") -> Path:
        """A disk path given by a user: relative to the current folder, and inside the datastore."""
        return self.datastore.resolve(Path.cwd(), str(path), what=what)

    def _chain(self, path: Path):
        """A disk a user named, and its backing chain, under the rules of the folder it is in."""
        scope = self.datastore.folder_scope(path.parent)
        return scope.chain(scope.image(path.parent, path.name, "disk"))

    def create(self, path: Path | str, size: str, *, fmt: str | None, thick: bool) -> dict:
        from ..storage.images import create_disk, format_for, parse_size

        target = self._path(path)
        fmt = fmt or format_for(target)
        if fmt not in ("qcow2", "raw", "vmdk"):
            raise DiskError(f"format {fmt!r} is not one minivisor creates", hint="use qcow2, vmdk or raw")
        if format_for(target) != fmt:
            raise DiskError(f"{target.name} is named like a {format_for(target)} disk, not {fmt}",
                             hint=f"name it with the .{fmt} suffix: formats come from file names")
        if target.exists():
            raise ConflictError(f"{target} already exists", hint="choose another file name")
        size_bytes = parse_size(size)
        self._build_then_move(target, lambda work: create_disk(work, size_bytes, fmt, thick=thick))
        return self.info(target)

    def _build_then_move(self, target: Path, build) -> None:
        """Make a disk in a private staging folder (cleared if we die), then move its files into place.

        A VMDK's extent files move first and its descriptor last, so the disk appears whole or not at all.
        """
        import shutil

        work = self.datastore.staging_dir(f"disk-{target.name}")
        try:
            build(work / target.name)
            for extra in sorted(work.iterdir()):
                if extra.name != target.name:
                    os.replace(extra, target.parent / extra.name)
            os.replace(work / target.name, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def info(self, path: Path | str) -> dict:
        from ..storage.images import disk_info

        return disk_info(self._chain(self._path(path)))

    def resize(self, path: Path | str, size: str) -> dict:
        from ..storage.images import parse_size, resize_disk

        target = self._path(path)
        resize_disk(self._chain(target)[0], parse_size(size))
        return self.info(target)

    def convert(self, source: Path | str, target: Path | str, *, fmt: str | None, thick: bool,
                progress=None) -> dict:
        """Write the flattened copy next to the target, then rename it into place (no half-written disk)."""

        from ..storage.images import convert_disk, format_for

        src, dst = self._path(source), self._path(target)
        fmt = fmt or format_for(dst)
        if format_for(dst) != fmt:
            raise DiskError(f"{dst.name} is named like a {format_for(dst)} disk, not {fmt}",
                             hint=f"name it with the .{fmt} suffix: formats come from file names")
        if dst.exists():
            raise ConflictError(f"{dst} already exists", hint="choose another file name, or delete it first")
        chain = self._chain(src)

        def build(work: Path) -> None:
            convert_disk(chain, work, fmt, progress=progress, thick=thick)
            crashpoint("convert:written")

        self._build_then_move(dst, build)
        return self.info(dst)

    def vm_disks(self, name: str) -> list[dict]:
        from ..storage.images import disk_info

        entry = self.datastore.catalog.get(name)
        files = VmFiles(self.datastore, self.datastore.vmx_path(entry))
        out = []
        for disk in files.spec.disks:
            if disk.kind != "disk" or not disk.file_name:
                continue
            info = disk_info(files.chain(disk.file_name))
            out.append({"node": disk.node, "fileName": disk.file_name, "mode": disk.mode, **info})
        return out

    def vm_disk_resize(self, name: str, node: str, size: str) -> dict:
        """Grow a VM's disk (its top layer); a running VM's VMM does it (block_resize), the guest sees it."""
        from ..storage.images import check_resize, parse_size, resize_disk

        with self.operation(name, online=True, what="resize a disk of") as ctx:
            files = VmFiles(self.datastore, ctx.vmx)
            disks = {d.node: d for d in files.spec.disks if d.kind == "disk" and d.file_name}
            if node.lower() not in disks:
                raise NotFoundError(f"VM {name!r} has no hard disk {node!r}",
                                    hint=f"its disks: {', '.join(disks) or 'none'}")
            top = files.chain(disks[node.lower()].file_name)[0]
            wanted = parse_size(size)
            if not ctx.running:
                resize_disk(top, wanted)
            else:
                check_resize(top, wanted)
                blocks = self._qmp(ctx, [("query-block", None)])[0]
                device = node.lower().replace(":", "-")
                root = next(b["inserted"]["node-name"] for b in blocks if b.get("qdev") == device)
                self._qmp(ctx, [("block_resize", {"node-name": root, "size": wanted})])
        return next(d for d in self.vm_disks(name) if d["node"] == node.lower())

    # -- snapshots ---------------------------------------------------------
    def snapshot_tree(self, name: str) -> SnapshotTree:
        entry = self.datastore.catalog.get(name)
        vmx = self.datastore.vmx_path(entry)
        if Journal.load(vmx.parent) is not None:  # show the tree as the interrupted operation leaves it
            try:
                with self.operation(entry.name, online=True, what="list the snapshots of"):
                    pass
            except StateError:  # another operation holds the VM; it finishes the journal itself
                pass
        return SnapshotTree.load(vmx.with_suffix(".vmsd"))

    def take(self, name: str, snapshot: str, *, description: str = "", memory: bool | None = None) -> Snapshot:
        with self.operation(name, online=True, what="snapshot") as ctx:
            files = VmFiles(self.datastore, ctx.vmx)
            if not ctx.running:
                if memory:
                    raise StateError(f"VM {name!r} is powered off: there is no memory state to save",
                                     hint="take the snapshot without --memory, or start the VM first")
                return take_offline(files, snapshot, description)
            return self._take_online(ctx, files, snapshot, description, memory is not False)

    def _take_online(self, ctx: OpContext, files: VmFiles, name: str, description: str,
                     memory: bool) -> Snapshot:
        if memory:
            self._check_state_saveable(ctx)
        memory_file = f"{ctx.vmx.stem}-Snapshot{files.tree.last_uid + 1}.vmsn" if memory else None
        snap, deltas = plan_take(files, name, description, memory_file)
        if memory:
            snap.ready_line = ctx.vmm.ready_line()  # a revert restores a guest that has said it already
        from ..storage.images import create_overlay

        journal = Journal(ctx.vm_dir, "take-online")
        partial = f"{memory_file}.part" if memory_file else None
        journal.begin([ctx.vm_dir / d for d in deltas.values()]
                      + ([ctx.vm_dir / memory_file, ctx.vm_dir / partial] if memory_file else []))
        for node, delta in deltas.items():
            create_overlay(ctx.vm_dir / delta, files.layer(snap.disks[node]))
        import secrets

        tag = secrets.token_hex(3)
        nodes = {node: f"snap{snap.uid}-{node.replace(':', '-')}-{tag}" for node in deltas}
        journal.data = {"overlays": [str(ctx.vm_dir / d) for d in deltas.values()], "nodes": list(nodes.values())}
        steps = [write_step(files.vmsd.name, new_tree_with(files.tree, snap).to_bytes()),
                 write_step(files.vmx.name, files.vmx_with(deltas))]
        status = self._qmp(ctx, [("query-status", None)])[0]["status"]
        journal.data["resume"] = status == "running"
        journal.save()
        self._run_async(ctx, _online_take(ctx, journal, steps, deltas, nodes, partial, memory_file,
                                          resume=status == "running"))
        journal.run()
        return snap

    def _check_state_saveable(self, ctx: OpContext) -> None:
        """Refuse a memory snapshot the VMM would refuse, before the VM is paused or anything is made."""
        nodes = self._qmp(ctx, [("query-named-block-nodes", {"flat": True})])[0]
        blocking = sorted({Path(_real_file(n["file"])).name for n in nodes if n["drv"] in MIGRATION_BLOCKING_DRIVERS})
        if blocking:
            raise DiskError(f"cannot save the memory of VM {ctx.name!r}: QEMU cannot save a VM's state while a "
                            f"VMDK disk is open ({', '.join(blocking)})",
                            hint="take the snapshot without it (--no-memory), or convert the disk to qcow2 "
                                 "(minivisor disk convert) and name the copy in the specfile")

    def revert(self, name: str, snapshot: str) -> tuple[Snapshot, bool]:
        """Go back to a snapshot; returns it and whether the VM now runs (memory snapshots resume)."""
        with self.operation(name, online=True, what="revert") as ctx:
            files = VmFiles(self.datastore, ctx.vmx)
            snap = files.tree.find(snapshot, name)
            self._refuse_revert_past_clones(ctx, files, snap)
            memory = (files.scope.state_file(ctx.vm_dir, snap.memory_file, f"the memory state of {snap.name!r}")
                      if snap.memory_file else None)
            if memory is not None and not memory.exists():
                raise StateError(f"the memory state {snap.memory_file} of snapshot {snap.name!r} is missing",
                                 hint="restore the file, or delete the snapshot")
            if ctx.running:
                record = ctx.vmm.record()
                pid = record.pid if record else None
                self.hv._emit("poweringOff", ctx.name, pid=pid, hard=True)  # expected, not a crash
                how = ctx.vmm.stop(hard=True, timeout=0)  # the current state is discarded, like VMware's revert
                self.hv._emit("poweredOff", ctx.name, pid=pid, reason=f"reverted to a snapshot ({how})")
                ctx.vmm.lock.acquire(name, wait=SHORT_HOLD)  # the exit handling of others may probe it a moment
                ctx.running = False
            journal, _ = plan_revert(files, snap, set())
            journal.run()
            if memory is not None:
                self._restore_memory(ctx, snap, memory)
                return snap, True
            return snap, False

    def _refuse_revert_past_clones(self, ctx: OpContext, files: VmFiles, target: Snapshot) -> None:
        """Linked clones pin their snapshot: going back to a point before it is refused."""
        for clone, uid in self.datastore.catalog.clones_of(ctx.uuid):
            if uid != target.uid and uid in files.tree.snapshots and target.uid in files.tree.ancestors(uid):
                pinned = files.tree.snapshots[uid].name
                raise StateError(f"cannot revert {ctx.name!r} to {target.name!r}: the linked clone {clone!r} "
                                 f"depends on the later snapshot {pinned!r}",
                                 hint=f"delete or fully clone {clone!r} first (minivisor vm delete {clone})")

    def delete(self, name: str, snapshot: str) -> Snapshot:
        with self.operation(name, online=True, what="delete a snapshot of") as ctx:
            return self.delete_in(ctx, snapshot)

    def delete_in(self, ctx: OpContext, snapshot: str) -> Snapshot:
        """Delete a snapshot inside an operation that already holds the VM."""
        files = VmFiles(self.datastore, ctx.vmx)
        snap = files.tree.find(snapshot, ctx.name)
        clones: dict[int, list[str]] = {}
        for clone, uid in self.datastore.catalog.clones_of(ctx.uuid):
            clones.setdefault(uid, []).append(clone)
        busy: set[Path] = set()
        if ctx.running:
            for _, top in snapshot_disks(files.spec):
                busy.update(files.chain_files(top))
        steps = plan_delete(files, snap, clones, busy)
        journal = Journal(ctx.vm_dir, "delete")
        journal.commit(steps)
        crashpoint("delete:committed")
        journal.run(self._step_handlers(ctx))
        return snap

    def _online_stream(self, ctx: OpContext, node: str, dependent: str, frozen: str, backing: str,
                       backing_format: str | None = None) -> None:
        """Copy ``frozen``'s data into ``dependent`` and drop it from the chain (block-stream, else a safe rebase)."""
        if ctx.vmm.record() is None:
            self._rebase(ctx, dependent, frozen)
            return
        files = VmFiles(self.datastore, ctx.vmx)
        dep_path, frozen_path = files.path(dependent), files.path(frozen)
        base = str(files.chain(frozen)[1].path) if backing else None
        self._run_async(ctx, _block_stream(ctx, node.replace(":", "-"), str(dep_path), str(frozen_path), base,
                                           backing or None))

    def _online_commit(self, ctx: OpContext, node: str, dependent: str, frozen: str, frozen_format: str,
                       above: str | None) -> None:
        """Fold ``dependent`` into ``frozen``: block-commit in the running VMM, else qemu-img (idempotent)."""
        if ctx.vmm.record() is None:
            self._commit(ctx, dependent)
            if above is not None:
                self._relink(ctx, above, frozen, frozen_format)
            return
        files = VmFiles(self.datastore, ctx.vmx)
        dep_path, frozen_path = files.path(dependent), files.path(frozen)
        above_path = files.path(above) if above else None
        backing = os.path.relpath(frozen_path, above_path.parent) if above_path else None
        self._run_async(ctx, _block_commit(ctx, node.replace(":", "-"), str(dep_path), str(frozen_path), backing))

    # -- the VMM's side ----------------------------------------------------
    def _restore_memory(self, ctx: OpContext, snap: Snapshot, state_file: Path) -> None:
        """Power the VM on from ``snap``'s memory state (``state_file``, checked by the caller)."""
        from ..vmm.argv import build_qemu_argv

        spec, env, _ = self.hv._launch_plan(ctx.name)
        argv = build_qemu_argv(spec, env) + ["-incoming", "defer"]
        links_down = [nic.name for nic in spec.nics if env.networks[nic.index] == "unconnected"]
        claim = commit_memory(self.hv.datastore, self.hv.inventory, ctx.name, spec)  # the same memory admission as a power-on
        try:
            # its "cont" only arms autostart while incoming
            record = ctx.vmm.launch(argv, env.accel, links_down, ready_text=spec.ready_line,
                                    console=env.console_index is not None)
        except BaseException:
            claim.unlink(missing_ok=True)  # the commitment stays while the VMM runs (see resources.commit_memory)
            raise
        ctx.running = True
        from ..host.admission import place

        place(record.pid, spec, ctx.name)
        self.hv._emit("poweredOn", ctx.name, pid=record.pid, accel=record.accel)
        try:
            self._run_async(ctx, _incoming(ctx, state_file))
        except BaseException:
            ctx.vmm.stop(hard=True, timeout=0)
            raise
        if snap.ready_line:
            ctx.vmm.remember_ready(snap.ready_line)

    def _nodes_in_use(self, ctx: OpContext, nodes: list[str]) -> bool:
        """True if the overlay nodes are the running disks' tops (the snapshot switched), not just opened."""
        blocks = self._qmp(ctx, [("query-block", None)])[0]
        tops = {b["inserted"]["node-name"] for b in blocks if b.get("inserted")}
        if any(node in tops for node in nodes) and not all(node in tops for node in nodes):
            raise StateError(f"VM {ctx.name!r} switched only some disks to a snapshot's overlays",
                             hint="stop the VM, then run any snapshot command to finish the snapshot")
        return bool(nodes) and all(node in tops for node in nodes)

    def _drop_nodes(self, ctx: OpContext, nodes: list[str]) -> None:
        """Close overlay nodes an interrupted online snapshot opened but never used."""
        for node in nodes:
            try:
                self._qmp(ctx, [("blockdev-del", {"node-name": node})])
            except QmpError:
                pass  # never added, or already gone

    def _qmp(self, ctx: OpContext, commands: list[tuple[str, dict | None]]) -> list[Any]:
        from ..vmm.process import qmp_execute

        return qmp_execute(ctx.vmm.paths.qmp_socket, *commands)

    def _run_async(self, ctx: OpContext, coroutine) -> Any:
        import asyncio

        return asyncio.run(coroutine)


# -- QMP sessions (asyncio, qemu.qmp) ------------------------------------------------
async def _client(ctx: OpContext):
    from qemu.qmp import QMPClient

    client = QMPClient(f"minivisor-{ctx.name}")
    await client.connect(str(ctx.vmm.paths.qmp_socket))
    return client


async def _execute(client, command: str, arguments: dict | None = None) -> Any:
    from qemu.qmp import ExecuteError

    try:
        return await client.execute(command, arguments)
    except ExecuteError as exc:
        raise QmpError(f"the VMM refused {command}: {exc.error.error.desc}", hint="see the VM's vmm.log") from exc


async def _online_take(ctx: OpContext, journal: Journal, steps: list, deltas: dict[str, str], nodes: dict[str, str],
                       partial: str | None, memory_file: str | None, *, resume: bool) -> None:
    client = await _client(ctx)
    try:
        if resume:
            await _execute(client, "stop")
        blocks = await _execute(client, "query-block")
        tops = {b.get("qdev"): b["inserted"]["node-name"] for b in blocks if b.get("inserted")}
        actions = []
        for node, delta in deltas.items():
            device = node.replace(":", "-")
            if device not in tops:
                raise QmpError(f"the running VMM has no disk {node}", hint="restart the VM, then retry")
            overlay = nodes[node]
            await _execute(client, "blockdev-add", {
                "driver": "qcow2", "node-name": overlay, "backing": None,
                "file": {"driver": "file", "filename": str(ctx.vm_dir / delta)}})
            actions.append({"type": "blockdev-snapshot", "data": {"node": tops[device], "overlay": overlay}})
        if memory_file and partial:  # first: if it fails, nothing in the VMM has changed yet
            await _save_memory(client, ctx.vm_dir / partial, ctx.vm_dir / memory_file)
        crashpoint("take-online:saved")
        journal.commit(steps)  # from here on the overlays may be in use: recovery rolls forward
        crashpoint("take-online:committed")
        await _execute(client, "transaction", {"actions": actions})
        crashpoint("take-online:switched")
    finally:
        if resume:
            try:
                await _execute(client, "cont")
            finally:
                await client.disconnect()
        else:
            await client.disconnect()


async def _save_memory(client, partial: Path, final: Path) -> None:
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        await _execute(client, "migrate-set-parameters", {"max-bandwidth": 1 << 40})
        client.send_fd_scm(fd)
        await _execute(client, "getfd", {"fdname": "minivisor-state"})
        await _execute(client, "migrate", {"uri": "fd:minivisor-state"})
        await _wait_migration(client, "save the memory state")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(partial, final)
    dir_fd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


async def _incoming(ctx: OpContext, state_file: Path) -> None:
    client = await _client(ctx)
    fd = os.open(state_file, os.O_RDONLY | os.O_CLOEXEC)
    try:
        client.send_fd_scm(fd)
        await _execute(client, "getfd", {"fdname": "minivisor-state"})
        await _execute(client, "migrate-incoming", {"uri": "fd:minivisor-state"})
        await _wait_migration(client, "load the memory state")
        status = (await _execute(client, "query-status"))["status"]
        if status != "running":
            await _execute(client, "cont")
    finally:
        os.close(fd)
        await client.disconnect()


async def _wait_migration(client, what: str) -> None:
    import asyncio
    import time

    deadline = time.monotonic() + MIGRATE_TIMEOUT
    while True:
        info = await _execute(client, "query-migrate")
        status = info.get("status")
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            raise QmpError(f"the VMM could not {what}: {info.get('error-desc', status)}",
                           hint="see the VM's vmm.log")
        if time.monotonic() > deadline:
            raise QmpError(f"the VMM did not {what} within {MIGRATE_TIMEOUT:.0f} s", hint="see the VM's vmm.log")
        await asyncio.sleep(0.05)


def _real_file(name: str) -> str:
    """The host file behind a node's filename (QEMU shows ``json:{...}`` once a backing was given)."""
    import json

    if name.startswith("json:"):
        child = json.loads(name[5:]).get("file")
        name = child.get("filename", "") if isinstance(child, dict) else str(child)
    return os.path.realpath(name)


async def _block_commit(ctx: OpContext, device: str, top: str, base: str, backing: str | None) -> None:
    import secrets

    client = await _client(ctx)
    try:
        await _finish_jobs(client)  # one a killed minivisor left behind
        blocks = await _execute(client, "query-block")
        root = next((b["inserted"]["node-name"] for b in blocks if b.get("qdev") == device and b.get("inserted")),
                    None)
        chain = await _device_chain(client, root) if root else {}
        if top not in chain:
            return  # already folded and dropped from the device's chain
        if base not in chain:
            raise QmpError(f"the running VMM's disk {device} has no layer {base}",
                           hint="power the VM off, then run any snapshot command to finish the delete")
        by_path = chain
        arguments: dict[str, Any] = {"job-id": f"minivisor-commit-{secrets.token_hex(3)}", "device": root,
                                     "top-node": by_path[top], "base-node": by_path[base], "auto-dismiss": False}
        if backing:
            arguments["backing-file"] = backing
        await _execute(client, "block-commit", arguments)
        crashpoint("delete:online-commit-started")
        await _finish_jobs(client)
        try:  # an overlay added by an online snapshot is also held by the monitor: let it go
            await _execute(client, "blockdev-del", {"node-name": by_path[top]})
        except QmpError:
            pass
    finally:
        await client.disconnect()


async def _block_stream(ctx: OpContext, device: str, top: str, frozen: str, base: str | None,
                        backing: str | None) -> None:
    import secrets

    client = await _client(ctx)
    try:
        await _finish_jobs(client)
        blocks = await _execute(client, "query-block")
        root = next((b["inserted"]["node-name"] for b in blocks if b.get("qdev") == device and b.get("inserted")),
                    None)
        chain = await _device_chain(client, root) if root else {}
        if frozen not in chain:
            return  # already streamed: the frozen layer left the chain
        if top not in chain:
            raise QmpError(f"the running VMM's disk {device} has no layer {top}",
                           hint="power the VM off, then run any snapshot command to finish the delete")
        arguments: dict[str, Any] = {"job-id": f"minivisor-stream-{secrets.token_hex(3)}", "device": chain[top],
                                     "auto-dismiss": False}
        if base is not None:
            arguments["base-node"] = chain[base]
            arguments["backing-file"] = backing
        await _execute(client, "block-stream", arguments)
        crashpoint("delete:online-stream-started")
        await _finish_jobs(client)
    finally:
        await client.disconnect()


async def _device_chain(client, root: str) -> dict[str, str]:
    """Real path -> node name of each format layer of a device's chain, top first (from the block graph)."""
    graph = await _execute(client, "x-debug-query-block-graph")
    names = {node["id"]: node["name"] for node in graph["nodes"]}
    ids = {name: node_id for node_id, name in names.items()}
    backing = {edge["parent"]: edge["child"] for edge in graph["edges"] if edge["name"] == "backing"}
    infos = {info["node-name"]: info for info in await _execute(client, "query-named-block-nodes", {"flat": True})}
    chain: dict[str, str] = {}
    node_id = ids.get(root)
    while node_id is not None and names.get(node_id) in infos:
        name = names[node_id]
        chain.setdefault(_real_file(infos[name]["image"]["filename"]), name)
        node_id = backing.get(node_id)
    return chain


async def _finish_jobs(client) -> None:
    """Drive minivisor's block jobs to the end: complete ready ones, dismiss concluded ones."""
    import asyncio
    import time

    deadline = time.monotonic() + MIGRATE_TIMEOUT
    completed: set[str] = set()
    while True:
        jobs = [j for j in await _execute(client, "query-jobs") if j["id"].startswith("minivisor-")]
        if not jobs:
            return
        for job in jobs:
            if job["status"] == "ready" and job["id"] not in completed:
                completed.add(job["id"])
                await _execute(client, "job-complete", {"id": job["id"]})
            elif job["status"] == "concluded":
                await _execute(client, "job-dismiss", {"id": job["id"]})
                if job.get("error"):
                    raise QmpError(f"the VMM could not merge the snapshot: {job['error']}",
                                   hint="see the VM's vmm.log; the snapshot is kept")
        if time.monotonic() > deadline:
            raise QmpError("the VMM did not finish merging the snapshot in time", hint="retry the delete")
        await asyncio.sleep(0.05)
