"""**Replication** (``vm replicate VM --to HOST --every 5m``): a running VM's disks copied, in rounds, to a replica
on another host, from which HA powers the VM on when its host dies (see docs/cluster.md).

- The source (:func:`replicate` for ``vm replicate``'s first copy, :func:`run_round` for the periodic ones, both
  holding the VM's turn): asks the target for a round (:mod:`minivisor.cluster.replication`), copies what changed
  since the last good copy (or everything) into the target's NBD exports (:mod:`minivisor.vmm.replication`), says
  when it is copied, and, once the target confirms, records the copy in ``replicas/<uuid>``.
- The target (:func:`receive_round`, in its service's cluster member): checks the request as hostile input, makes
  a new top per disk (an overlay on its replica file, or a new file for a full copy), serves them, and once the
  source's copy is done makes them the replica crash-safely (:class:`Replica`). A round that fails leaves the
  previous replica as it was.
- The replica is not a registered VM (a registered copy could be powered on and fork the VM's data): it lives
  in ``.minivisor/replicas/<uuid>/``. HA's restarter :func:`promote` s it into a VM when the VM's host dies.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import procfs
from ..errors import ClusterError, ConflictError, HvError, NotFoundError, ReplicaMissingError
from ..files import write_atomic
from ..storage.journal import crashpoint
from ..text import clip, excerpt
from ..units import human_size
from ..vmm.states import Action

if TYPE_CHECKING:
    from ..cluster.replication import Round, RoundDisk, RoundRequest
    from ..cluster.store import Entry, Store
    from ..images.layers import ImageLayer
    from ..vmm.qmp import QmpSession
    from .context import VmContext, Vms
    from .hypervisor import Hypervisor

__all__ = ["replicate", "replication_off", "follow_migration", "run_round", "receive_round", "promote", "replica_vms",
           "drop_replicas", "Replica"]

log = logging.getLogger("minivisor.cluster")

REPLICAS = "replicas"  # in the datastore's .minivisor folder: one folder per VM replicated here
PREPARE_TIMEOUT = 120.0  # seconds the target may take to make its overlays and serve them, or to commit them
COPY_TIMEOUT = 3600.0  # seconds a round's copy may take
STATE = "state.json"
NEXT = ".next"  # a disk's new top during a round: <file>.next
SERVER = "nbd.json"  # in a round's folder: its NBD server's pid and start time


# -- the source ----------------------------------------------------------------------------
def replicate(vms: Vms, name: str, target: str, every: float, progress: Callable[[str], None]) -> dict[str, Any]:
    """Start replicating the running VM ``name`` to host ``target`` every ``every`` seconds: the record, then the
    first (full) copy at once. Returns the round's result; the record is removed again if the copy failed. A VM
    replicated to ``target`` already gets a round now (and the new interval); its record stays whatever happens."""
    from ..cluster.ownership import lease_to_ask
    from ..cluster.records import check_host_name
    from ..cluster.replication import ReplicaRecord, check_every, get_record, put_record
    from .clustering import cluster_of

    config, store = cluster_of(vms.datastore.meta)
    check_host_name(target)
    check_every(every)
    if target == config.host:
        raise ClusterError(f"host {target!r} is this host: a replica must be on another host",
                           hint="name another host of the cluster (minivisor cluster status)")
    lease_to_ask(store, config, target)  # refused before anything is recorded
    with vms.operate(name, Action.REPLICATE) as ctx:
        _what_is_replicated(ctx)  # refused before anything is recorded
        found = get_record(store, ctx.uuid)
        if found is not None and (found[0].source, found[0].target) == (config.host, target) \
                and not found[0].failed_over_to:  # replicated there already: a round now, at the new interval
            put_record(store, ctx.uuid, replace(found[0], every=every))
            return _round(vms, ctx, progress)
        put_record(store, ctx.uuid, ReplicaRecord(ctx.name, config.host, target, every, time.time()))
        try:
            return _round(vms, ctx, progress)
        except BaseException:
            store.delete(_key(ctx.uuid))
            raise


def replication_off(vms: Vms, name: str) -> dict[str, Any]:
    """End the VM's replication: its record goes (no more rounds), and its target drops the replica (its service
    sees the record gone)."""
    from ..cluster.replication import get_record
    from .clustering import cluster_of

    store = cluster_of(vms.datastore.meta)[1]
    ctx = vms.context(name)
    found = get_record(store, ctx.uuid)
    if found is None:
        raise NotFoundError(f"VM {name!r} is not replicated",
                            hint=f"start with: minivisor vm replicate {name} --to HOST")
    store.delete(found[1].key)
    ctx.emit("replicationChanged", target=None)
    return {"vm": ctx.name, "target": found[0].target, "replicated": False}


def follow_migration(store: Store, vm_uuid: str, source: str, dest: str) -> None:
    """The VM moved from ``source`` to ``dest`` (``vm migrate``): its replication follows it. The rounds run from
    ``dest`` now, the next one whole (the dirty bitmaps stayed behind); a VM moved onto its replica's host ends its
    replication (a replica on the VM's own host is no copy), and that host removes the replica. A replication
    changed meanwhile (``--off``, a failover) is left as it is."""
    from ..cluster.records import to_value
    from ..cluster.replication import get_record

    found = get_record(store, vm_uuid)
    if found is None or found[0].source != source or found[0].failed_over_to:
        return
    record, entry = found
    if dest == record.target:
        log.warning("VM %s moved to host %s, which kept its replica: its replication ended", record.vm, dest)
        store.delete(entry.key, mod_revision=entry.mod_revision)
        return
    store.replace(entry.key, to_value(replace(record, source=dest, bitmap="")), entry.mod_revision)


def run_round(vms: Vms, name: str, progress: Callable[[str], None] | None = None, *, wait: float = 0) -> dict[str, Any]:
    """One round of the VM's replication (the periodic ones: its service's cluster member calls it when due)."""
    with vms.operate(name, Action.REPLICATE, wait=wait) as ctx:
        return _round(vms, ctx, progress or (lambda line: None))


def _key(vm_uuid: str) -> str:
    from ..cluster.replication import replica_key

    return replica_key(vm_uuid)


def _round(vms: Vms, ctx: VmContext, report: Callable[[str], None]) -> dict[str, Any]:
    """One round, the VM's turn held: ask, copy, confirm, record."""
    from ..cluster.records import to_value
    from ..cluster.replication import Round, get_record
    from ..vmm.replication import BITMAP_PREFIX, backup, has_bitmap, settle_bitmaps
    from .clustering import cluster_of

    config, store = cluster_of(ctx.datastore.meta)
    found = get_record(store, ctx.uuid)
    if found is None or found[0].source != config.host or found[0].failed_over_to:
        raise ClusterError(f"VM {ctx.name!r} is not replicated from this host",
                           hint=f"start with: minivisor vm replicate {ctx.name} --to HOST")
    record = found[0]
    specfile, disks, devices = _what_is_replicated(ctx)
    started = time.monotonic()
    taken = time.time()
    with _disks_of(vms, ctx, devices) as (qmp, tops):
        full = record.generation == 0 or not has_bitmap(qmp, tops, record.bitmap)
        round_ = Round.new(store, config, record.target, ctx.name, ctx.uuid, specfile, disks, full)
        new_bitmap = BITMAP_PREFIX + round_.request.id[:12]
        report(f"asked host {record.target} for {'a full' if full else 'an incremental'} copy of {ctx.name} "
               f"({len(disks)} disk(s), {human_size(sum(d.size for d in disks))})")
        confirmed = False
        round_.ask()
        try:
            ready = round_.wait("ready", PREPARE_TIMEOUT)
            copied = backup(qmp, ctx.paths.runtime_dir, round_.request.key, (ready.address, ready.port), tops,
                            ("" if full else record.bitmap, new_bitmap), _going_on(round_))
            report(f"copied {human_size(copied)}; host {record.target} makes it the replica")
            round_.ask(copied=True)
            done = round_.wait("done", PREPARE_TIMEOUT)
            confirmed = True
        except ReplicaMissingError:
            _quietly(lambda: _start_over(store, found[1]))
            raise
        except HvError as exc:
            if isinstance(exc, ClusterError):
                raise
            raise ClusterError(f"the replication round of VM {ctx.name!r} to host {record.target!r} failed: "
                               f"{exc.message}", hint="the replica there is the last good round's; the next round "
                                                      "copies these writes too") from exc
        finally:
            _quietly(lambda: settle_bitmaps(qmp, tops, record.bitmap, new_bitmap, confirmed))
            _quietly(round_.withdraw)
    record = replace(record, last_copy=taken, generation=done.generation, last_bytes=copied, bitmap=new_bitmap)
    if not store.replace(found[1].key, to_value(record), found[1].mod_revision):  # --off, or a failover, meanwhile
        log.warning("VM %s: its replication changed during the round; the round is not recorded", ctx.name)
    ctx.emit("replicated", target=record.target, generation=done.generation, bytes=copied, full=full)
    return {"vm": ctx.name, "target": record.target, "full": full, "bytes": copied, "generation": done.generation,
            "seconds": round(time.monotonic() - started, 3), "every": record.every}


def _start_over(store: Store, entry: Entry) -> None:
    """The target lost its replica: the record forgets the last copy, so that the next round copies whole."""
    from ..cluster.records import from_value, to_value
    from ..cluster.replication import ReplicaRecord

    record = replace(from_value(ReplicaRecord, entry.value, entry.key), generation=0, bitmap="", last_copy=0.0)
    store.replace(entry.key, to_value(record), entry.mod_revision)


def _going_on(round_: Round) -> Callable[[], bool]:
    """Whether a round's copy may go on: within :data:`COPY_TIMEOUT`, and its target still live (asked of etcd at
    most once a second; an etcd that does not answer stops nothing)."""
    from ..cluster.ownership import live_entry

    deadline = time.monotonic() + COPY_TIMEOUT
    looked = [time.monotonic(), True]

    def going_on() -> bool:
        if time.monotonic() - looked[0] >= 1:
            try:
                looked[:] = [time.monotonic(), live_entry(round_.store, round_.target) is not None]
            except ClusterError:
                looked[0] = time.monotonic()
        return looked[1] and time.monotonic() < deadline

    return going_on


@contextmanager
def _disks_of(vms: Vms, ctx: VmContext, chains: dict[str, tuple[ImageLayer, ...]]) -> Iterator[tuple[QmpSession,
                                                                                                   dict[str, str]]]:
    """A QMP session that has the VM's disks open, and each device's top node: its VMM's if it runs; else a storage
    daemon's, the VM lock held meanwhile (it cannot be powered on during the round)."""
    from ..images.qemu_img import chain_node
    from ..vmm.jobs import device_tops
    from ..vmm.qmp import QmpSession
    from ..vmm.replication import open_disks

    if ctx.running:
        with ctx.vmm.session() as qmp:
            yield qmp, {device: node for device, node in device_tops(qmp).items() if device in chains}
        return
    nodes = {device: chain_node(chain) for device, chain in chains.items()}
    with vms.hold(ctx), open_disks(ctx.paths.runtime_dir, nodes) as (sock, tops), QmpSession(sock) as qmp:
        yield qmp, tops


def _quietly(action: Callable[[], None]) -> None:
    """A round's clean-up: what fails is logged, and the round's own error (if any) is the one raised."""
    try:
        action()
    except HvError as exc:
        log.warning("replication: %s", exc.one_line())


def _what_is_replicated(ctx: VmContext) -> tuple[str, list[RoundDisk], dict[str, tuple[ImageLayer, ...]]]:
    """The specfile's text, the disks (each a qcow2 file of the VM's folder) and their devices' chains; ClusterError
    naming what cannot be replicated otherwise."""
    from ..cluster.replication import RoundDisk
    from ..datastore.inventory import read_vmx
    from ..spec.vmspec import VmSpec
    from ..vmm.argv import device_id
    from ..vmm.plan import resolve_files

    spec = VmSpec.from_vmx(read_vmx(ctx.vmx))
    chains, files, _ = resolve_files(spec, ctx.scope, ctx.vmx)
    if spec.firmware == "efi":
        raise _cannot(ctx.name, "it boots with UEFI, whose variable store is not copied yet")
    if files:
        raise _cannot(ctx.name, f"it uses files besides its disks ({', '.join(sorted(files))})",
                      "eject its CD-ROM and remove serial or floppy files first")
    disks, devices = [], {}
    for disk in spec.disks:
        chain = chains.get(disk.node)
        if chain is None:
            continue
        top = chain[0]
        if top.format != "qcow2":
            raise _cannot(ctx.name, f"its disk {disk.node} is {top.format}: replication tracks the guest's writes "
                                    "with persistent dirty bitmaps, which need qcow2",
                          f"convert it while {ctx.name} is off: minivisor disk convert {ctx.name} {disk.node} qcow2")
        if disk.file_name != top.path.name or top.path.parent.resolve() != ctx.vm_dir.resolve():
            raise _cannot(ctx.name, f"its disk {disk.node} is not a file of its own folder",
                          "copy it into the VM's folder")
        disks.append(RoundDisk(top.path.name, top.virtual_size))
        devices[device_id(disk.node)] = chain
    if not disks:
        raise _cannot(ctx.name, "it has no hard disk")
    try:
        return ctx.vmx.read_bytes().decode("utf-8"), disks, devices
    except UnicodeDecodeError:
        raise _cannot(ctx.name, "its specfile is not UTF-8") from None


def _cannot(name: str, why: str, hint: str = "") -> ClusterError:
    return ClusterError(f"cannot replicate VM {name!r}: {why}", hint=hint or None)


# -- the target ----------------------------------------------------------------------------
class Replica:
    """The replica of one VM on this host: ``.minivisor/replicas/<uuid>/`` holding its specfile, one qcow2 per disk
    and ``state.json`` (the VM's name, its source, the generation; during a commit, what is being committed).

    A round's new tops are ``<disk>.next``: an overlay on the replica file (the writes since the last copy), or a
    new file (a full copy). :meth:`commit` first records them in the state (atomically), then makes each the
    replica (an overlay committed into its base, whose reads through the overlay stay the same meanwhile, then
    deleted; a new file renamed over the old), then records the new generation. :meth:`recover`, before anything
    else reads the replica, finishes a commit a crash cut short and deletes the tops of a round that never
    committed: the previous replica is intact.
    """

    def __init__(self, meta: Path, vm_uuid: str) -> None:
        from ..cluster.replication import check_uuid

        self.folder = meta / REPLICAS / check_uuid(vm_uuid)
        self.round_dir = self.folder / ".round"

    @contextmanager
    def turn(self, timeout: float) -> Iterator[None]:
        """The replica's turn (one round, promotion or removal at a time); ConflictError if it is not free in time."""
        from ..locks import wait_lock

        self.folder.parent.mkdir(mode=0o700, exist_ok=True)
        fd = wait_lock(self.folder.parent / f"{self.folder.name}.lck", timeout)
        if fd is None:
            raise ConflictError(f"the replica of VM {self.folder.name} is busy with a round")
        try:
            yield
        finally:
            os.close(fd)

    def note_server(self, pid: int) -> int | None:
        """Remember the round's NBD server (pid, start time): :meth:`end_round` ends it from any thread."""
        start = procfs.start_ticks(pid)
        write_atomic(self.round_dir / SERVER, json.dumps({"pid": pid, "start": start}).encode(), sync="none")
        return start

    def end_round(self) -> None:
        """End the NBD server of a round in progress, if any: the round then fails, and lets go of the replica."""
        try:
            found = json.loads((self.round_dir / SERVER).read_bytes())
            _end(found["pid"], found["start"])
        except (OSError, ValueError, KeyError, TypeError):
            pass

    def state(self) -> dict[str, Any]:
        try:
            found = json.loads((self.folder / STATE).read_bytes())
        except (OSError, ValueError):
            return {"vm": "", "source": "", "generation": 0, "pending": None}
        return found if isinstance(found, dict) else {"vm": "", "source": "", "generation": 0, "pending": None}

    def _save(self, state: dict[str, Any]) -> None:
        write_atomic(self.folder / STATE, json.dumps(state).encode(), mode=0o600)

    def recover(self) -> dict[str, Any]:
        """Finish a commit a crash cut short; drop what a round that did not commit left (its NBD server too: a
        daemon, it outlives a service that died). The state after."""
        self.end_round()
        state = self.state()
        if state.get("pending"):
            state = self._finish(state)
        for stray in self.folder.glob(f"*{NEXT}") if self.folder.is_dir() else ():
            stray.unlink()
        shutil.rmtree(self.round_dir, ignore_errors=True)
        return state

    def prepare(self, request: RoundRequest) -> dict[str, tuple[Path, Path | None]]:
        """A new top per disk (``<file>.next``): a new empty qcow2 for a full copy, else an overlay on the replica
        file; device id -> (top, its base or None)."""
        from ..images.layers import ImageLayer
        from ..images.qcow2 import create_overlay
        from ..images.qemu_img import create_disk
        from ..spec.vmspec import VmSpec
        from ..spec.vmx import VmxDocument
        from ..vmm.argv import device_id

        self.folder.mkdir(parents=True, mode=0o700, exist_ok=True)
        self.round_dir.mkdir(mode=0o700)
        spec = VmSpec.from_vmx(VmxDocument.parse(request.specfile.encode(), source=f"the specfile of {request.vm}"))
        devices = {disk.file_name: device_id(disk.node) for disk in spec.disks if disk.kind == "disk"}
        exports = {}
        for disk in request.disks:
            top, base = self.folder / (disk.file + NEXT), self.folder / disk.file
            if request.full:
                create_disk(top, disk.size, "qcow2")
                exports[devices[disk.file]] = (top, None)
                continue
            if not base.is_file() or self.state().get("generation", 0) < 1:
                raise ReplicaMissingError(f"this host has no replica of disk {excerpt(disk.file)} to update",
                                          hint="the next round copies the disks whole")
            create_overlay(top, ImageLayer(base, "qcow2", disk.size))
            exports[devices[disk.file]] = (top, base)
        return exports

    def commit(self, request: RoundRequest) -> int:
        """Make the round's tops the replica (crash-safe, see the class); returns the new generation."""
        state = self.state()
        write_atomic(self.folder / (_specfile_name(request.vm) + NEXT), request.specfile.encode(), mode=0o600)
        state.update(vm=request.vm, source=request.source, pending={
            "full": request.full, "files": [disk.file for disk in request.disks], "sizes": [d.size for d in
                                                                                            request.disks]})
        self._save(state)
        return self._finish(state)["generation"]

    def _finish(self, state: dict[str, Any]) -> dict[str, Any]:
        from ..images.layers import ImageLayer
        from ..images.qemu_img import commit_layer
        pending = state["pending"]
        for file, size in zip(pending["files"], pending["sizes"]):
            top, base = self.folder / (file + NEXT), self.folder / file
            if not top.exists():
                continue  # made the replica before the crash
            if pending["full"]:
                os.replace(top, base)
            else:
                commit_layer((ImageLayer(top, "qcow2", size), ImageLayer(base, "qcow2", size)))
                crashpoint("replica-committed")  # the base has the data; the overlay and the generation are old
                top.unlink()
        spec = self.folder / (_specfile_name(state["vm"]) + NEXT)
        if spec.exists():
            for old in self.folder.glob("*.vmx"):
                old.unlink()
            os.replace(spec, self.folder / _specfile_name(state["vm"]))
        state.update(generation=int(state.get("generation", 0)) + 1, pending=None)
        self._save(state)
        return state

    def mark_promoting(self, state: dict[str, Any], promoting: bool = True) -> None:
        """Record that the replica is being made a VM of this host (or no longer is: that failed before the VM was
        published): if this is cut short once the VM is published, :func:`drop_replicas` removes what is left
        (links to the VM's own files, which no round may write)."""
        self._save({**state, "promoting": promoting})

    def drop(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _specfile_name(vm: str) -> str:
    from ..datastore.names import check_vm_name

    check_vm_name(vm)
    return f"{vm}.vmx"


def receive_round(hv: Hypervisor, round_: Round) -> None:
    """Take one round of ``round_.request`` into this host's replica, or answer why not; a failed round leaves the
    previous replica as it was."""
    from ..cluster.replication import RoundAnswer

    request = round_.request
    replica = Replica(hv.datastore.meta, request.uuid)
    try:
        _check_round(hv, request)  # before anything is made here for it
        with replica.turn(timeout=10):
            _take_round(replica, round_)
    except Exception as exc:  # noqa: BLE001 - the source waits for an answer, whatever went wrong
        reason = exc.one_line() if isinstance(exc, HvError) else f"internal error: {exc!r}"
        log.warning("replication round of VM %s from host %s: %s", request.vm, request.source, reason)
        try:
            if round_.current() is not None:
                round_.answer(RoundAnswer("missing" if isinstance(exc, ReplicaMissingError) else "failed",
                                          error=clip(reason, 500)))
        except HvError:
            pass


def _take_round(replica: Replica, round_: Round) -> None:
    """:func:`receive_round` with the replica's turn held; whatever fails, the previous replica stays."""
    from ..cluster.replication import RoundAnswer
    from ..vmm.replication import serve
    from .migration import cluster_address, free_ports

    request = round_.request
    try:
        replica.recover()
        exports = replica.prepare(request)
        address = cluster_address(round_.config.endpoints)
        served = serve(replica.round_dir, request.key, address, free_ports(address, 1)[0], exports)
        start = replica.note_server(served.pid)
        round_.answer(RoundAnswer("ready", address, served.port))
        _wait_copied(round_, served.pid, start)
        replica.end_round()
        generation = replica.commit(request)
        shutil.rmtree(replica.round_dir, ignore_errors=True)
        round_.answer(RoundAnswer("done", generation=generation))
    except BaseException:
        replica.end_round()
        if replica.folder.is_dir():
            replica.recover()
        raise


def _check_round(hv: Hypervisor, request: RoundRequest) -> None:
    """The request's meaning: its VM's name, a UUID no VM registered here has, a specfile whose drives are exactly
    the request's disks, each a plain file name."""
    from ..datastore.names import check_vm_name
    from ..spec.vmspec import VmSpec
    from ..spec.vmx import VmxDocument
    from .migration import check_disk_name, check_disks

    check_vm_name(request.vm)
    if any(entry.uuid.lower() == request.uuid for entry in hv.datastore.catalog.list()):
        raise ConflictError(f"VM {request.vm!r} ({request.uuid}) is registered on this host: it needs no replica")
    spec = VmSpec.from_vmx(VmxDocument.parse(request.specfile.encode(), source=f"the specfile of {request.vm}"))
    check_disks(spec, request.disks)
    for disk in request.disks:
        check_disk_name(disk.file)


def _wait_copied(round_: Round, pid: int, start: int | None) -> None:
    """Until the source says its copy is done; ClusterError if it gave up, died, or the NBD server ended."""
    deadline = time.monotonic() + COPY_TIMEOUT
    while True:
        current = round_.current()
        if current is None:
            raise ClusterError(f"host {round_.request.source!r} gave up the round")
        if current.copied:
            return
        if not procfs.is_same_process(pid, start):
            raise ClusterError("this host's NBD server for the round ended")
        if time.monotonic() > deadline:
            raise ClusterError(f"the round's copy did not end within {COPY_TIMEOUT:.0f} s")
        time.sleep(0.1)


def _end(pid: int, start: int | None) -> None:
    """End the round's storage daemon (it flushes its images on SIGTERM) and wait until it is gone."""
    if start is None or not procfs.is_same_process(pid, start):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while procfs.is_same_process(pid, start):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


def replica_vms(meta: Path) -> dict[str, str]:
    """The replicas on this host: VM uuid -> its name."""
    folder = meta / REPLICAS
    found = {}
    for entry in sorted(folder.iterdir()) if folder.is_dir() else ():
        state = Replica(meta, entry.name).state() if _is_uuid(entry.name) else {}
        if state.get("generation", 0) >= 1 and isinstance(state.get("vm"), str):
            found[entry.name] = state["vm"]
    return found


def _is_uuid(text: str) -> bool:
    from ..cluster.replication import UUID_FORM

    return bool(UUID_FORM.fullmatch(text))


def drop_replicas(meta: Path, wanted: Callable[[str], bool], registered: Collection[str] = ()) -> None:
    """Remove the replicas whose replication ended (``wanted(uuid)`` is False: ``vm replicate --off``), what a
    first round that failed left, and what a promotion cut short after its VM was published left (``registered``:
    the UUIDs of this host's VMs)."""
    folder = meta / REPLICAS
    for vm_uuid in sorted(e.name for e in folder.iterdir() if _is_uuid(e.name)) if folder.is_dir() else ():
        replica = Replica(meta, vm_uuid)
        if vm_uuid in registered and replica.state().get("promoting"):
            log.warning("the replica of VM %s was made a VM of this host; what was left of it is removed", vm_uuid)
        elif not wanted(vm_uuid):
            log.warning("replication of VM %s ended; its replica here is removed", vm_uuid)
        else:
            continue
        replica.end_round()
        with replica.turn(timeout=60):
            replica.drop()


# -- HA ------------------------------------------------------------------------------------
def _link_files(source: Path, target: Path, keep: str) -> None:
    """Every file of ``source`` but ``keep`` hard-linked into ``target`` (one file system: nothing is copied)."""
    for item in source.iterdir():
        if item.name != keep and item.is_file():
            os.link(item, target / item.name, follow_symlinks=False)


def promote(hv: Hypervisor, vm_uuid: str) -> str:
    """Make the replica of ``vm_uuid`` a VM of this host (same UUID, registered under its name) and record in
    ``replicas/<uuid>`` that it failed over here; its name. The power-on is the caller's."""
    from ..cluster.replication import get_record, put_record
    from .clustering import cluster_of

    replica = Replica(hv.datastore.meta, vm_uuid)
    replica.end_round()  # a round its source began before it died: its NBD server holds the replica's files
    with replica.turn(timeout=60):
        state = replica.recover()
        name = state.get("vm", "")
        if state.get("generation", 0) < 1:
            raise NotFoundError(f"no replica of VM {vm_uuid} on this host")
        hv.datastore.check_new_name(name)
        replica.mark_promoting(state)
        staging = hv.datastore.staging_dir(name)
        try:  # the VM's folder gets links to the replica's files: the replica stays whole until the VM is published
            _link_files(replica.folder, staging, keep=STATE)
            crashpoint("promote-linked")
            hv.datastore.publish(staging, name, vm_uuid)
        except BaseException:
            replica.mark_promoting(state, False)  # still a replica, for another try
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # gone if published; links only otherwise
        crashpoint("promote-published")
        replica.drop()
    config, store = cluster_of(hv.datastore.meta)
    found = get_record(store, vm_uuid)
    if found is not None:
        put_record(store, vm_uuid, replace(found[0], failed_over_to=config.host, failed_over_at=time.time()))
    log.warning("HA: the replica of VM %s (generation %s) is now VM %s of this host", vm_uuid, state["generation"],
                name)
    return name

