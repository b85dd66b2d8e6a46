"""**Live migration's messages** between two members, through etcd (no host listens for another host).

The source asks, the destination answers, and the VM's ownership is the switch:

- ``migrations/<dest>/<id>`` (:class:`Request`), written by the source and attached to the source's
  lease: the VM's specfile text, its disks (file name, format, virtual size; or, for a disk on storage both
  hosts mount, its absolute path and a proof that the destination sees the same file), and a one-time key
  for the TLS between the two VMMs. A source that dies
  takes its request with it; the destination then drops what it made.
- ``answers/<id>`` (:class:`Answer`), written by the destination and attached to its lease: ``ready``
  (where its NBD server and its incoming VMM listen), ``failed`` (why), or ``running``.
- The handover (:func:`Source.hand_over`) is one transaction: ``owners/<uuid>`` moves from the source to
  the destination's lease only if the destination's answer is still the one read. A destination that
  gives up deletes its answer first (:func:`Destination.give_up`), so exactly one of the two happens:
  either the destination owns the VM and runs it, or it never will.

Every request is hostile input to the destination: :func:`read_request` checks each field's type and
bound (the specfile's meaning, names and paths are checked by the core, like any imported specfile).
"""

from __future__ import annotations

import os
import re
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import ClusterError, HandoverUncertainError, HvError
from ..text import READY_MAX, excerpt
from .config import ClusterConfig
from .ownership import lease_to_ask, live_entry, put_under_own_lease
from .records import LiveRecord, Mailbox, OwnerRecord, check_host_name, from_value, owner_key, to_value
from .store import Entry, Store

__all__ = ["Request", "Disk", "Answer", "Source", "Destination", "requests_for", "read_request", "withdraw", "MIGRATIONS",
           "ANSWERS", "MAX_SPECFILE", "MAX_DISK_BYTES", "MAX_DISKS"]

MIGRATIONS, ANSWERS = "migrations/", "answers/"
MAX_SPECFILE = 48 * 1024  # characters: a specfile is a few KiB, and an etcd value is at most 64 KiB here
MAX_DISKS = 16
MAX_DISK_BYTES = 64 << 40  # 64 TiB: the largest virtual disk a request may ask the destination for
FORMATS = ("qcow2", "raw")  # what the destination creates (a VMDK blocks QEMU's migration)
POLL = 0.1  # seconds between two looks at a key that another host will write
UNCERTAIN_WAIT = 60.0  # seconds a source asks etcd whether a handover whose answer was lost happened
_ID = re.compile(r"[0-9a-f]{32}")
_KEY = re.compile(r"[0-9a-f]{64}")
_UUID = re.compile(r"[0-9a-fA-F-]{1,64}")
_FILE = re.compile(r"[^/\x00]{1,255}")
MAX_PATH = 4096


@dataclass(frozen=True)
class Disk:
    file: str  # as the specfile names it: a file name in the VM's folder, or (shared) an absolute path
    format: str
    size: int  # virtual size in bytes
    shared: bool = False  # on storage both hosts mount at the same path: not copied, opened there as it is


@dataclass(frozen=True)
class Request:
    id: str
    vm: str
    uuid: str
    source: str
    source_id: str
    specfile: str
    disks: tuple[Disk, ...]
    key: str  # the one-time pre-shared key (hex) of the TLS between the two VMMs
    ready: str  # the ready line the guest said on its console this boot ("" if none yet)
    proof: str = ""  # with shared disks: what the source wrote next to each (see core.migration), else ""


@dataclass(frozen=True)
class Answer:
    state: str  # ready, failed, running
    address: str = ""
    nbd_port: int = 0
    migrate_port: int = 0
    error: str = ""


MAILBOX = Mailbox(MIGRATIONS, ANSWERS)
request_key, answer_key = MAILBOX.request_key, MAILBOX.answer_key


def requests_for(store: Store, config: ClusterConfig) -> list[Entry]:
    """The migration requests addressed to this host."""
    return MAILBOX.addressed_to(store, config.host)


def read_request(entry: Entry) -> Request:
    """A request as read from etcd, every field checked; ClusterError naming the key otherwise."""
    value = entry.value
    try:
        disks = tuple(_disk(item) for item in value["disks"]) if isinstance(value["disks"], list) else None
        request = Request(value["id"], value["vm"], value["uuid"], value["source"], value["source_id"],
                          value["specfile"], disks or (), value["key"], value["ready"], value["proof"])
        fine = (isinstance(request.id, str) and _ID.fullmatch(request.id) and entry.key.endswith("/" + request.id)
                and all(isinstance(text, str) for text in (request.vm, request.source, request.source_id,
                                                           request.specfile))
                and isinstance(request.uuid, str) and _UUID.fullmatch(request.uuid) and len(request.vm) <= 64
                and len(request.source_id) <= 64 and len(request.specfile) <= MAX_SPECFILE
                and isinstance(request.key, str) and _KEY.fullmatch(request.key)
                and isinstance(request.ready, str) and len(request.ready) <= READY_MAX
                and 0 < len(request.disks) <= MAX_DISKS and len({d.file for d in request.disks}) == len(request.disks)
                and isinstance(request.proof, str)
                and (_ID.fullmatch(request.proof) if any(d.shared for d in request.disks) else request.proof == ""))
        if fine:
            check_host_name(request.source)
            return request
    except (KeyError, TypeError, ValueError, HvError):
        pass
    raise ClusterError(f"the cluster store holds a malformed migration request at {excerpt(entry.key, 80)}",
                       hint="it was not written by this minivisor: remove it with etcdctl")


def _disk(item: Any) -> Disk:
    disk = Disk(item["file"], item["format"], item["size"], item["shared"])
    if not (isinstance(disk.file, str) and (_shared_path(disk.file) if disk.shared is True else
                                            disk.shared is False and _FILE.fullmatch(disk.file))
            and disk.format in FORMATS
            and isinstance(disk.size, int) and not isinstance(disk.size, bool) and 0 < disk.size <= MAX_DISK_BYTES):
        raise ValueError(disk.file)
    return disk


def _shared_path(path: str) -> bool:
    """An absolute path with nothing to resolve (no ``.``, ``..``, doubled or trailing slash, NUL)."""
    return (0 < len(path) <= MAX_PATH and path.startswith("/") and "\x00" not in path
            and os.path.normpath(path) == path and not path.startswith("//") and path != "/")


def _answer(entry: Entry) -> Answer:
    value = entry.value
    try:
        answer = Answer(value["state"], value["address"], value["nbd_port"], value["migrate_port"], value["error"])
    except (KeyError, TypeError):
        answer = None
    if answer is None or answer.state not in ("ready", "failed", "running") or not all(
            isinstance(text, str) and len(text) <= 512 for text in (answer.address, answer.error)) or not all(
            isinstance(port, int) and 0 <= port < 65536 for port in (answer.nbd_port, answer.migrate_port)):
        raise ClusterError(f"the cluster store holds a malformed migration answer at {excerpt(entry.key, 80)}")
    return answer


class Source:
    """The source's side of one migration: ask, wait for answers, hand the VM over, withdraw."""

    def __init__(self, store: Store, config: ClusterConfig, dest: str, vm: str, vm_uuid: str) -> None:
        self.store, self.config, self.dest, self.vm, self.uuid = store, config, check_host_name(dest), vm, vm_uuid
        self.id = secrets.token_hex(16)
        self.key = secrets.token_hex(32)
        self._answer: Entry | None = None

    def ask(self, specfile: str, disks: list[Disk], ready: str, proof: str = "") -> None:
        """Post the request to a live destination (ClusterError if it is not, or this host is not live)."""
        if self.dest == self.config.host:
            raise ClusterError(f"VM {self.vm!r} already runs on host {self.dest!r}", hint="name another host")
        own = lease_to_ask(self.store, self.config, self.dest)
        if len(specfile) > MAX_SPECFILE:
            raise ClusterError(f"the specfile of {self.vm!r} is too long to send ({len(specfile)} characters)")
        request = Request(self.id, self.vm, self.uuid, self.config.host, self.config.host_id, specfile, tuple(disks),
                          self.key, ready, proof)
        value = asdict(request)
        self.store.put(request_key(self.dest, self.id), value, lease=own.lease)

    def wait(self, state: str, timeout: float) -> Answer:
        """The destination's answer once it is ``state``; ClusterError if it failed, vanished or took too long."""
        def ready(entry: Entry) -> bool:
            answer = _answer(entry)
            if answer.state == "failed":
                raise ClusterError(f"host {self.dest!r} could not take VM {self.vm!r}: {answer.error}")
            return answer.state == state

        self._answer = MAILBOX.await_answer(self.store, self.id, self.dest, f"the migration of {self.vm!r}", ready,
                                            peer_gone=lambda: live_entry(self.store, self.dest) is None,
                                            timeout=timeout, poll=POLL)
        return _answer(self._answer)

    def hand_over(self) -> None:
        """Make the destination the VM's owner, if its ready answer still stands (ClusterError otherwise)."""
        assert self._answer is not None, "hand_over() after wait('ready')"
        owner = self.store.get(owner_key(self.uuid))
        dest = live_entry(self.store, self.dest)
        if owner is None or from_value(OwnerRecord, owner.value, owner.key).host_id != self.config.host_id \
                or dest is None:
            raise ClusterError(f"the ownership of VM {self.vm!r} changed in the cluster store meanwhile")
        dest_id = from_value(LiveRecord, dest.value, dest.key).id
        mine = OwnerRecord(self.dest, dest_id, self.vm)
        try:
            done = self.store.replace(owner.key, to_value(mine), owner.mod_revision, lease=dest.lease,
                                      unless_changed=(self._answer.key, self._answer.mod_revision))
        except ClusterError as exc:  # the transaction may have happened without its answer reaching us
            done = self._handed_over(dest_id, exc)
        if not done:
            raise ClusterError(f"host {self.dest!r} gave up the migration of {self.vm!r} before the handover")

    def _handed_over(self, dest_id: str, failure: ClusterError) -> bool:
        """Whether the destination owns the VM, asked until etcd answers; HandoverUncertainError if it does not
        within :data:`UNCERTAIN_WAIT` (then the source must neither resume the VM nor remove it)."""
        deadline = time.monotonic() + UNCERTAIN_WAIT
        while True:
            try:
                owner = self.store.get(owner_key(self.uuid))
                return owner is not None and from_value(OwnerRecord, owner.value, owner.key).host_id == dest_id
            except ClusterError:
                if time.monotonic() > deadline:
                    raise HandoverUncertainError(
                        f"cannot tell whether VM {self.vm!r} was handed over to host {self.dest!r}: "
                        f"{failure.message}", hint="it is left stopped here, neither resumed nor removed; see "
                                                   "which host owns it with `minivisor cluster status`") from failure
                time.sleep(POLL * 10)

    def withdraw(self) -> None:
        """Remove the request and the answer: the destination drops what it made (if it has not taken over)."""
        withdraw(self.store, self.dest, self.id)


def withdraw(store: Store, dest: str, request_id: str) -> None:
    """Remove a request and its answer (also for a source process that died: its service does it)."""
    store.delete(request_key(dest, request_id))
    store.delete(answer_key(request_id))


class Destination:
    """The destination's side of one migration, from a checked :class:`Request`."""

    def __init__(self, store: Store, config: ClusterConfig, request: Request) -> None:
        self.store, self.config, self.request = store, config, request

    def answer(self, answer: Answer) -> None:
        put_under_own_lease(self.store, self.config, answer_key(self.request.id), to_value(answer))

    def wanted(self) -> bool:
        """Whether the source still asks (its request is there: it did not withdraw it, nor die)."""
        return self.store.get(request_key(self.config.host, self.request.id)) is not None

    def owned_here(self) -> bool:
        """Whether the handover happened: this host owns the VM now."""
        owner = self.store.get(owner_key(self.request.uuid))
        return owner is not None and from_value(OwnerRecord, owner.value, owner.key).host_id == self.config.host_id

    def give_up(self) -> bool:
        """Withdraw the answer so that no handover can happen from now on; False if the handover came first
        (the handover's transaction compares the answer's revision, which a deleted key no longer has)."""
        self.store.delete(answer_key(self.request.id))
        return not self.owned_here()
