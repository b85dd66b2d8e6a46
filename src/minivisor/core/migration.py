"""**Live migration** of a running VM, with its local disks, to another host of its cluster.

A disk that is not in the VM's folder but on storage both hosts mount at the same path (a folder allowed on
both, named by its absolute path in the specfile) is not copied: the destination's VMM opens the same file,
and QEMU hands the image over with the memory (the source lets go of it when the state is sent, the
destination takes it when it runs). The source proves that the destination sees that very file by writing a
one-time note next to it (:func:`_proofs`), which the destination must read back.

The two hosts talk through etcd only (:mod:`minivisor.cluster.migration`); their VMMs copy the disks
(NBD) and the memory between the hosts' cluster addresses (:mod:`minivisor.vmm.migration`).

- :func:`migrate` runs on the source (``vm migrate VM HOST`` in the CLI's process, or the service's
  ``POST /v1/vms/{name}/migrate`` in its own): it asks the destination, mirrors the disks, sends the
  memory, hands the VM's ownership over, waits for the destination to run the guest, then ends its VMM
  and **removes the VM here**: from the moment the
  guest runs there, the disks here are an old copy, and powering it on here later (once the destination
  powered it off) would fork its data — Proxmox removes the source's VM for the same reason.
- :func:`receive` runs on the destination, in its service's cluster member: it checks the request as
  hostile input, makes the VM's folder with empty disks of the same sizes and formats, starts a VMM
  waiting for the state (``-incoming defer``, never run before the handover), serves its disks, answers,
  and once it owns the VM, resumes it. A request withdrawn (or whose source died), a VMM that died,
  a refusal: its VMM is killed and everything it made removed, and the VM runs on at the source.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import procfs
from ..errors import (ClusterError, ConflictError, HandoverUncertainError, HvError, LockError, MigrationError,
                      NotFoundError, PathError, StateError)
from ..files import write_atomic
from ..text import clip, excerpt
from ..units import human_size
from ..vmm.states import Action

if TYPE_CHECKING:
    from ..cluster.migration import Answer, Destination, Disk, Source
    from ..cluster.records import OwnerRecord
    from ..spec.vmspec import VmSpec
    from .context import VmContext, Vms
    from .hypervisor import Hypervisor

__all__ = ["migrate", "receive", "abandon_incoming", "abandon_outgoing", "check_disks", "check_disk_name",
           "cluster_address", "free_ports"]

log = logging.getLogger("minivisor.cluster")

PREPARE_TIMEOUT = 120.0  # seconds the destination may take to make the VM and start its VMM, or to resume it
COPY_TIMEOUT = 3600.0  # seconds the disks' mirrors, then the memory, may take
HANDOVER_TIMEOUT = COPY_TIMEOUT + 2 * PREPARE_TIMEOUT  # seconds a destination waits for the handover
REPORT_EVERY = 1.0  # seconds between two progress lines
POLL = 0.1
INCOMING = "incoming"  # in the datastore's .minivisor folder: a marker per VM being taken in
PROOF_PREFIX = ".minivisor-migration-"  # + the request's id: the note next to a shared disk
OUTGOING = "outgoing"  # and one per migration this host's processes are running


# -- the source ----------------------------------------------------------------------------
def migrate(vms: Vms, name: str, dest: str, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Move the running VM ``name`` to host ``dest``; returns what was copied and how long it took."""
    from ..cluster.membership import current
    from ..cluster.migration import Source
    from ..cluster.store import Store

    config = current(vms.datastore.meta)
    report = progress or (lambda line: None)
    with vms.operate(name, Action.MIGRATE) as ctx:
        specfile, disks, devices = _what_moves(ctx, vms.datastore.root)
        source = Source(Store(config.endpoints), config, dest, ctx.name, ctx.uuid)
        started = time.monotonic()
        with _outgoing(vms.datastore.meta, source), _proofs(source.id, disks) as proof:
            return _move(vms, ctx, source, (specfile, disks, devices, proof), started, report)


def _move(vms: Vms, ctx: VmContext, source: Source, what: tuple[str, list[Disk], list[str], str], started: float,
          report: Callable[[str], None]) -> dict[str, Any]:
    """:func:`migrate` once the VM's turn is held and its outgoing marker written; ``what``: the specfile, the
    disks, the devices whose disks are copied, and the proof next to the shared ones."""
    dest = source.dest
    specfile, disks, devices, proof = what
    source.ask(specfile, disks, ctx.vmm.ready_line() or "", proof)
    ctx.emit("migrating", to=dest)
    try:
        report(f"asked host {dest} to make {ctx.name} ({_what_is_copied(disks)})")
        ready = source.wait("ready", PREPARE_TIMEOUT)
        copied = _copy(ctx, ready, source.key, devices, report)
        source.hand_over()
    except HandoverUncertainError:
        raise  # nothing undone: the guest may run on the destination
    except BaseException as exc:
        _undo(ctx, source)
        ctx.emit("migrationFailed", to=dest, reason=exc.one_line() if isinstance(exc, HvError) else repr(exc))
        if isinstance(exc, HvError) and not isinstance(exc, ClusterError):  # its VMM's: say what it means
            raise MigrationError(f"VM {ctx.name!r} did not move to host {dest!r}: {exc.message}",
                                 hint=f"it runs on here; {exc.hint}" if exc.hint else "it runs on here") from exc
        raise
    try:
        source.wait("running", PREPARE_TIMEOUT)
    except ClusterError as exc:
        raise MigrationError(f"VM {ctx.name!r} was handed over to host {dest!r}, which did not say it runs it: "
                             f"{exc.message}", hint=f"see `minivisor vm show {ctx.name}` on {dest}; its VMM "
                                                    "here is left paused") from exc
    resumed = time.monotonic()
    _leave(vms, ctx, dest)
    _replication_follows(source)
    source.withdraw()
    handover_ms = round((resumed - copied.pop("completed_at")) * 1000)
    return {"vm": ctx.name, "source": source.config.host, "destination": dest, **copied,
            "handover_ms": handover_ms, "downtime_ms": copied["qemu_downtime_ms"] + handover_ms,
            "total_seconds": round(resumed - started, 3)}


def _replication_follows(source: Source) -> None:
    """The moved VM's replication, if it has one, runs from its new host (an etcd that fails here fails no
    migration: the VM has moved; its replication is then left as it was, its rounds stopped)."""
    from .replication import follow_migration

    try:
        follow_migration(source.store, source.uuid, source.config.host, source.dest)
    except ClusterError as exc:
        log.warning("VM %s moved to host %s, but its replication could not follow it: %s", source.vm, source.dest,
                    exc.one_line())


def _what_is_copied(disks: list[Disk]) -> str:
    copied, shared = [d for d in disks if not d.shared], len([d for d in disks if d.shared])
    words = [f"{len(copied)} disk(s), {human_size(sum(d.size for d in copied))}"] if copied else []
    return "; ".join(words + ([f"{shared} disk(s) on shared storage, not copied"] if shared else []))


@contextmanager
def _outgoing(meta: Path, source: Source) -> Iterator[None]:
    """``.minivisor/outgoing/<id>`` while this process moves a VM: if it dies, the host's service finds the
    marker of a process that is gone and undoes the migration (:func:`abandon_outgoing`)."""
    folder = meta / OUTGOING
    folder.mkdir(mode=0o700, exist_ok=True)
    marker = folder / source.id
    pid = os.getpid()
    write_atomic(marker, json.dumps({"pid": pid, "start": procfs.start_ticks(pid), "vm": source.vm,
                                     "dest": source.dest}).encode(), sync="none")
    try:
        yield
    finally:
        marker.unlink(missing_ok=True)


def abandon_outgoing(hv: Hypervisor, owner_of: Callable[[str], OwnerRecord | None],
                     withdraw: Callable[[str, str], None]) -> None:
    """The migrations whose process died: before the handover (this host owns the VM), the VM's VMM is told to
    forget the migration (the guest runs on); after it (the destination owns it), the VM is removed here, as the
    process would have done: its disks here are an old copy, which must never run again. Either way the request
    is withdrawn, so the destination drops what it made or keeps what it owns."""
    from ..cluster.membership import current

    here = current(hv.datastore.meta).host_id
    folder = hv.datastore.meta / OUTGOING
    for marker in sorted(folder.glob("[!.]*")) if folder.is_dir() else ():  # not a marker's temp file
        try:
            found = json.loads(marker.read_bytes())
            pid, start, name, dest = found["pid"], found["start"], found["vm"], found["dest"]
        except (OSError, ValueError, KeyError, TypeError):
            marker.unlink(missing_ok=True)  # not ours to read: nothing to undo from it
            continue
        if procfs.is_same_process(pid, start):
            continue  # still moving it
        entry = hv.datastore.catalog.find(name)
        owner = owner_of(entry.uuid) if entry is not None else None
        if owner is not None and owner.host_id == here:
            try:
                with hv.vms.operate(name, Action.MIGRATE, wait=0) as ctx:
                    log.warning("VM %s: the process migrating it to host %s ended; undoing the migration", name,
                                dest)
                    _undo(ctx, None)
            except LockError:
                continue  # another operation has its turn (not the dead process's): looked at again later
            except (NotFoundError, StateError):
                pass  # gone, or no VMM: nothing to undo in it
        elif owner is not None and owner.host == dest:
            log.warning("VM %s: the process migrating it to host %s ended after the handover; removing it here", name,
                        dest)
            if not _remove(hv, name):
                continue  # looked at again later
        withdraw(dest, marker.name)
        marker.unlink(missing_ok=True)


@contextmanager
def _proofs(request_id: str, disks: list[Disk]) -> Iterator[str]:
    """A one-time note (``.minivisor-migration-<id>``, random) in the folder of each shared disk while the
    migration lasts: the destination reads it back to know it opens the same files, not copies of them."""
    import secrets

    folders = sorted({os.path.dirname(disk.file) for disk in disks if disk.shared})
    proof = secrets.token_hex(16) if folders else ""
    written: list[Path] = []
    try:
        for folder in folders:
            note = Path(folder) / (PROOF_PREFIX + request_id)
            try:
                write_atomic(note, proof.encode(), sync="file")
            except OSError as exc:
                raise MigrationError(f"cannot write the migration's one-time note next to the shared disks in "
                                     f"{folder}: {exc.strerror or exc}",
                                     hint="the destination reads it to prove it opens the same files: make the "
                                          "folder writable from this host (or move the VM's disks into its folder)"
                                     ) from None
            written.append(note)
        yield proof
    finally:
        for note in written:
            note.unlink(missing_ok=True)


def _what_moves(ctx: VmContext, datastore_root: Path) -> tuple[str, list[Disk], list[str]]:
    """The specfile's text, the disks, and the devices whose disks are copied; refuses a VM whose files are not
    all plain disks in its folder or on shared storage (outside the datastore, named by an absolute path)."""
    from ..cluster.migration import FORMATS, Disk
    from ..datastore.inventory import read_vmx
    from ..spec.vmspec import VmSpec
    from ..vmm.argv import device_id
    from ..vmm.plan import resolve_files

    spec = VmSpec.from_vmx(read_vmx(ctx.vmx))
    chains, files, _ = resolve_files(spec, ctx.scope, ctx.vmx)
    if spec.firmware == "efi":
        raise _cannot(ctx.name, "it boots with UEFI, whose variable store is not copied yet", "")
    if files:
        raise _cannot(ctx.name, f"it uses files besides its disks ({', '.join(sorted(files))})",
                      "eject its CD-ROM and remove serial or floppy files first")
    disks, devices = [], []
    for disk in spec.disks:
        chain = chains.get(disk.node)
        if chain is None:
            continue
        top = chain[0]
        if len(chain) > 1:
            raise _cannot(ctx.name, f"its disk {disk.node} has {len(chain) - 1} backing layer(s)",
                          f"delete its snapshots (or fully clone it) first: minivisor snapshot list {ctx.name}")
        if top.format not in FORMATS or disk.mode == "independent-nonpersistent":
            raise _cannot(ctx.name, f"its disk {disk.node} is {top.format} ({disk.mode})",
                          "convert it to qcow2 (minivisor disk convert) while the VM is off")
        if disk.file_name == top.path.name and top.path.parent.resolve() == ctx.vm_dir.resolve():
            disks.append(Disk(top.path.name, top.format, top.virtual_size))
            devices.append(device_id(disk.node))
        elif _on_shared_storage(disk.file_name, datastore_root):
            disks.append(Disk(disk.file_name, top.format, top.virtual_size, shared=True))
        else:
            raise _cannot(ctx.name, f"its disk {disk.node} is neither a file of its own folder nor named by its "
                                    "absolute path outside the datastore",
                          "copy it into the VM's folder, or put it on storage both hosts mount at the same path")
    if not disks:
        raise _cannot(ctx.name, "it has no hard disk", "")
    try:
        return ctx.vmx.read_bytes().decode("utf-8"), disks, devices
    except UnicodeDecodeError:
        raise _cannot(ctx.name, "its specfile is not UTF-8", "") from None


def _on_shared_storage(file_name: str | None, datastore_root: Path) -> bool:
    """Whether a disk's name is what a shared disk's must be: its real absolute path, outside the datastore (the
    other host's datastore is elsewhere; what the specfile names there must be this very file)."""
    return (file_name is not None and os.path.isabs(file_name) and os.path.realpath(file_name) == file_name
            and os.path.commonpath([file_name, os.path.realpath(datastore_root)]) != os.path.realpath(datastore_root))


def _cannot(name: str, why: str, hint: str) -> MigrationError:
    return MigrationError(f"cannot migrate VM {name!r}: {why}", hint=hint or None)


def _copy(ctx: VmContext, ready: Answer, key: str, devices: list[str], report: Callable[[str], None]) -> dict[str, Any]:
    """Mirror the ``devices``' disks until in sync, send the memory, end the mirrors; the counts and times of it."""
    from ..vmm import migration as vmm_migration

    with ctx.vmm.session() as qmp:
        vmm_migration.add_psk(qmp, "client", ctx.paths.runtime_dir, key)
        vmm_migration.mirror(qmp, ready.address, ready.nbd_port, devices)
        deadline, last = time.monotonic() + COPY_TIMEOUT, 0.0
        while not (mirrored := vmm_migration.mirror_progress(qmp, devices)).ready:
            last = _report(report, last, f"disks: {human_size(mirrored.copied)} of {human_size(mirrored.total)} "
                                         "mirrored")
            _check(deadline, "mirror its disks")
            time.sleep(POLL)
        report(f"disks in sync ({human_size(mirrored.total)}); sending the memory")
        vmm_migration.start_migration(qmp, ready.address, ready.migrate_port)
        while (info := vmm_migration.migration_status(qmp)).get("status") != "completed":
            ram = info.get("ram", {})
            last = _report(report, last, f"memory: {human_size(ram.get('transferred', 0))} sent, "
                                         f"{human_size(ram.get('remaining', 0))} to go")
            _check(deadline, "send its memory")
            time.sleep(POLL)
        completed_at = time.monotonic()
        vmm_migration.end_mirrors(qmp)
    ram = info.get("ram", {})
    report(f"memory sent ({human_size(ram.get('transferred', 0))}); handing {ctx.name} over")
    return {"disk_bytes": mirrored.total, "memory_bytes": ram.get("transferred", 0),
            "qemu_downtime_ms": info.get("downtime", 0), "completed_at": completed_at}


def _report(report: Callable[[str], None], last: float, line: str) -> float:
    if time.monotonic() - last < REPORT_EVERY:
        return last
    report(line)
    return time.monotonic()


def _check(deadline: float, what: str) -> None:
    if time.monotonic() > deadline:
        raise MigrationError(f"the migration did not {what} within {COPY_TIMEOUT:.0f} s")


def _undo(ctx: VmContext, source: Source | None) -> None:
    """Before the handover: the VM runs on here, nothing of the migration is left in its VMM, the request goes."""
    from ..vmm import migration as vmm_migration

    try:
        if ctx.vmm.record() is not None:
            with ctx.vmm.session() as qmp:
                vmm_migration.abort(qmp)
    except HvError as exc:
        log.warning("VM %s: undoing its migration: %s", ctx.name, exc.one_line())
    finally:
        try:
            if source is not None:
                source.withdraw()
        except ClusterError as exc:
            log.warning("VM %s: its migration request stays until this host's lease ends: %s", ctx.name,
                        exc.one_line())


def _leave(vms: Vms, ctx: VmContext, dest: str) -> None:
    """The guest runs on ``dest``: end the VMM here and remove the VM. The VMM's guest was stopped for good
    and its images flushed when its state was sent, so it is killed (this host's cluster member may have
    fenced it already: it runs a VM this host no longer owns). Said before the kill, as a power-off's
    ``poweringOff`` is: the service's supervisor then expects the VMM's end and reports no crash."""
    record = ctx.vmm.record()
    ctx.emit("migrated", to=dest, pid=record.pid if record else None)
    ctx.vmm.kill()
    ctx.networks().unplug(ctx)
    ctx.running = False
    with vms.hold(ctx):
        vms.datastore.delete_vm(ctx.entry, ctx.vm_dir)  # a file it cannot remove waits in the trash: the guest is gone


# -- the destination -----------------------------------------------------------------------
def receive(hv: Hypervisor, destination: Destination) -> None:
    """Take in the VM of ``destination.request``, or answer why not and leave nothing of it here."""
    from ..cluster.migration import Answer
    from ..vmm import migration as vmm_migration

    request = destination.request
    made: Path | None = None  # the marker of the VM made here, while it is not this host's
    try:
        made, devices = _make_vm(hv, request)
        ctx = _start_incoming(hv, request.vm)
        try:
            destination.answer(_listen(ctx, destination, devices))
            handed_over = _handed_over(ctx, destination)
        finally:  # no TLS handshake is to come
            vmm_migration.remove_psk_file(ctx.paths.runtime_dir)
        if not handed_over:
            raise MigrationError(f"the migration of VM {request.vm!r} from host {request.source!r} was given up")
        _resume(ctx)
        made.unlink()  # it is this host's VM now
        made = None
        if request.ready:  # the same boot goes on: the guest was ready at the source
            ctx.vmm.remember_ready(request.ready)
        ctx.emit("migratedIn", source=request.source)
        destination.answer(Answer("running"))
    except Exception as exc:  # noqa: BLE001 - whatever went wrong, the source must hear it and nothing stay here
        reason = exc.one_line() if isinstance(exc, HvError) else f"internal error: {exc!r}"
        log.warning("migration of VM %s from host %s: %s", request.vm, request.source, reason)
        if made is not None and _remove(hv, request.vm):
            made.unlink()  # kept otherwise: the next service tries again
        try:
            if destination.wanted():
                destination.answer(Answer("failed", error=clip(reason, 500)))
        except HvError:
            pass  # the source sees the destination give no answer, and gives up itself


def _mark_incoming(hv: Hypervisor, name: str, vm_uuid: str) -> Path:
    """``.minivisor/incoming/<uuid>``, naming the VM, while it is taken in: a service that dies meanwhile
    leaves it, and the next one removes the half-made VM (:func:`abandon_incoming`)."""
    folder = hv.datastore.meta / INCOMING
    folder.mkdir(mode=0o700, exist_ok=True)
    marker = folder / vm_uuid.lower()
    marker.write_text(name + "\n")
    return marker


def abandon_incoming(hv: Hypervisor, owned_here: Callable[[str], bool]) -> None:
    """The VMs a previous service was taking in when it ended: their VMM killed, the VM removed (unless the
    handover came first: then this host owns it, and it is left, paused, to its user)."""
    from ..datastore.names import VM_NAME

    folder = hv.datastore.meta / INCOMING
    for marker in sorted(folder.iterdir()) if folder.is_dir() else ():
        name = marker.read_text(errors="replace").strip()
        entry = hv.datastore.catalog.find(name) if VM_NAME.match(name) else None
        if entry is not None and entry.uuid.lower() == marker.name and not owned_here(entry.uuid):
            log.warning("VM %s: its migration here was cut short when this host's service ended; removing it", name)
            if not _remove(hv, name):
                continue
        marker.unlink(missing_ok=True)


def _make_vm(hv: Hypervisor, request: Any) -> tuple[Path, list[str]]:
    """The VM's folder, published: its specfile as sent, empty disks of the sizes and formats asked (a shared
    disk: the very file the source uses, checked); returns its marker (:func:`_mark_incoming`), made once the
    name and UUID are known to be free here, and the devices whose disks are copied in."""
    from ..images.qemu_img import create_disk
    from ..spec.vmspec import VmSpec
    from ..spec.vmx import VmxDocument
    from ..vmm.argv import device_id

    datastore = hv.datastore
    datastore.check_new_name(request.vm)
    if any(entry.uuid.lower() == request.uuid.lower() for entry in datastore.catalog.list()):
        raise ConflictError(f"a VM with the UUID of {request.vm!r} ({request.uuid}) is registered here already")
    doc = VmxDocument.parse(request.specfile.encode(), source=f"the specfile of {request.vm} from {request.source}")
    spec = VmSpec.from_vmx(doc)
    check_disks(spec, request.disks)
    for disk in request.disks:
        if disk.shared:
            _check_shared(hv, disk, request)
            continue
        check_disk_name(disk.file)
    copied = {disk.file for disk in request.disks if not disk.shared}
    devices = [device_id(disk.node) for disk in spec.disks if disk.kind == "disk" and disk.file_name in copied]
    marker = _mark_incoming(hv, request.vm, request.uuid)
    staging = datastore.staging_dir(request.vm)
    try:
        for disk in request.disks:
            if not disk.shared:
                create_disk(staging / disk.file, disk.size, disk.format)
        doc.save(staging / f"{request.vm}.vmx")
        datastore.publish(staging, request.vm, request.uuid)
    except BaseException:
        marker.unlink()
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return marker, devices


def _check_shared(hv: Hypervisor, disk: Disk, request: Any) -> None:
    """A shared disk of a request: in a folder this host allows, outside its datastore, with the source's note
    next to it (else it is another file at the same path: running on it would lose the guest's writes)."""
    if not _on_shared_storage(disk.file, hv.datastore.root):
        raise PathError(f"the shared disk {excerpt(disk.file)} of the request is in this host's datastore, or "
                        "behind a link")
    hv.datastore.folder_scope(os.path.dirname(disk.file)).image(Path("/"), disk.file, "disk")  # allowed here?
    note = os.path.join(os.path.dirname(disk.file), PROOF_PREFIX + request.id)
    try:
        fd = os.open(note, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as file:
            seen = file.read(64)
    except OSError:
        seen = b""
    if seen != request.proof.encode():
        raise PathError(f"this host does not see the disk {excerpt(disk.file)} that host {request.source!r} uses: "
                        "another file is at that path here, or none",
                        hint="mount the storage that holds it at the same path on both hosts")


def check_disk_name(file: str) -> None:
    """A disk a request names: a plain file of a VM's folder (not its metadata nor its specfile); PathError
    otherwise."""
    from ..datastore.store import is_vm_metadata
    from ..images.layers import check_file_name

    check_file_name(file, "disk")
    if file in (".", "..") or "/" in file or is_vm_metadata(file) or file.lower().endswith(".vmx"):
        raise PathError(f"the disk {excerpt(file)} of the request is no disk file of a VM's folder")


def check_disks(spec: VmSpec, disks: tuple[Any, ...]) -> None:
    """The specfile's drives name exactly the disks asked for, each a plain file of the VM's folder."""
    named = [disk.file_name for disk in spec.disks if disk.kind == "disk" and disk.file_name]
    media = [disk.node for disk in spec.disks if disk.kind == "cdrom" and disk.file_name]
    if media:
        raise PathError(f"the specfile sent has media in {', '.join(media)}: a migration copies hard disks only")
    if sorted(named) != sorted(disk.file for disk in disks):
        raise PathError("the specfile sent names other disks than the request's",
                        hint="it was not written by a minivisor source")


def _start_incoming(hv: Hypervisor, name: str) -> VmContext:
    """A VMM for the VM that waits for its state, paused, every power-on check made."""
    from .power import power_on

    with hv.vms.operate(name, Action.START) as ctx:
        plan = ctx.plan(incoming=True)
        with hv.vms.hold(ctx):
            power_on(ctx, plan, migrating_in=True)
    return ctx


def _listen(ctx: VmContext, destination: Destination, devices: list[str]) -> Answer:
    """Serve the ``devices``' disks over NBD and wait for the memory, on this host's cluster address, both over
    TLS with the request's one-time key."""
    from ..cluster.migration import Answer
    from ..vmm import migration as vmm_migration

    address = cluster_address(destination.config.endpoints)
    nbd_port, migrate_port = free_ports(address, 2)
    with ctx.vmm.session() as qmp:
        vmm_migration.add_psk(qmp, "server", ctx.paths.runtime_dir, destination.request.key)
        vmm_migration.serve_disks(qmp, address, nbd_port, devices)
        vmm_migration.listen(qmp, address, migrate_port)
    return Answer("ready", address, nbd_port, migrate_port)


def _handed_over(ctx: VmContext, destination: Destination) -> bool:
    """Wait until this host owns the VM (True), or until there is no point: the request withdrawn, the VMM
    gone, too long (then the answer is withdrawn first, so the handover cannot happen after: False)."""
    deadline = time.monotonic() + HANDOVER_TIMEOUT
    while True:
        try:
            if destination.owned_here():
                return True
            if not destination.wanted() or ctx.vmm.record() is None or time.monotonic() > deadline:
                return not destination.give_up()
        except ClusterError as exc:  # etcd busy or out of reach: the handover may come, or not; ask again
            log.warning("VM %s: waiting for its handover: %s", ctx.name, exc.one_line())
            time.sleep(1)
        time.sleep(POLL)


def _resume(ctx: VmContext) -> None:
    """The whole state is here and the VM is this host's: stop serving its disks, run it."""
    from ..vmm import migration as vmm_migration

    deadline = time.monotonic() + PREPARE_TIMEOUT
    with ctx.vmm.session() as qmp:
        while not vmm_migration.incoming_done(qmp):
            _check(deadline, "arrive whole")
            time.sleep(POLL)
        vmm_migration.stop_serving(qmp)
        qmp.execute("cont")


def _remove(hv: Hypervisor, name: str) -> bool:
    """Kill the incoming VMM and delete the VM it was made for; False if that failed (logged)."""
    try:
        ctx = hv.vms.context(name)
        ctx.vmm.kill()
        ctx.networks().unplug(ctx)
        hv.delete_vm(name)
    except HvError as exc:
        log.warning("VM %s: removing what its failed migration made: %s", name, exc.one_line())
        return False
    return True


def cluster_address(endpoints: tuple[str, ...]) -> str:
    """The address this host reaches the cluster store from: the one the other hosts reach it at (a UDP
    socket's route lookup; nothing is sent)."""
    from ..cluster.config import host_and_port

    host, port = host_and_port(endpoints[0])
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((host, port))
        return probe.getsockname()[0]


def free_ports(address: str, count: int) -> list[int]:
    """``count`` TCP ports free on ``address`` now (the VMM binds them right after)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    socks = [socket.socket(family, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in socks:
            sock.bind((address, 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()
