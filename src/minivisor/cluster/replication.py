"""**Replication's records and messages** in etcd: a VM's disks copied, in rounds, to a replica on another host
(``vm replicate VM --to HOST --every 5m``), from which HA powers the VM on when its host dies.

- ``replicas/<uuid>`` (:class:`ReplicaRecord`, attached to no lease: it outlives every host): the VM's name, its
  source and target hosts, how often a round runs, the last good copy (time, generation, bytes), the dirty
  bitmap that tracks the writes since it, and, once HA powered the replica on, the host it failed over to.
- A round is one request and its answers, the shape of a migration's (:class:`~.records.Mailbox`):
  ``replications/<target>/<id>`` (:class:`RoundRequest`, the source's, on its lease: the specfile, the disks,
  a one-time TLS key, whether the copy is full; ``copied`` once the source's copy is done) and
  ``replicated/<id>`` (the target's, on its lease: ``ready`` with its NBD server's address and port, ``done``
  with the replica's new generation, or ``failed``). A source that dies takes its request with it: the target
  drops the round and keeps its previous replica.

Every request is hostile input to the target: :func:`read_request` checks each field (the UUID's form: it names
the replica's folder; each disk a plain qcow2 file name; sizes and counts bounded).
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, replace
from typing import Any

from ..errors import ArgumentError, ClusterError, ConflictError, HvError, ReplicaMissingError
from ..text import excerpt
from .config import ClusterConfig
from .migration import MAX_DISK_BYTES, MAX_DISKS, MAX_SPECFILE, POLL
from .ownership import lease_to_ask, live_entry, put_under_own_lease
from .records import Mailbox, check_host_name, from_value, to_value
from .store import Entry, Store

__all__ = ["ReplicaRecord", "RoundRequest", "RoundDisk", "RoundAnswer", "Round", "read_request", "requests_for",
           "replica_key", "check_uuid", "parse_every", "check_every", "get_record", "put_record", "listing", "shown",
           "is_behind", "refuse_stale_copy", "REPLICAS", "MIN_EVERY"]

REPLICAS = "replicas/"
MAILBOX = Mailbox("replications/", "replicated/")
MIN_EVERY = 2.0  # seconds: the shortest interval between two rounds (tests use a few seconds; people minutes)
MAX_EVERY = 7 * 24 * 3600.0
BEHIND_GRACE = 60.0  # seconds past two intervals before a replication without a good copy is said to be behind
UUID_FORM = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_ID = re.compile(r"[0-9a-f]{32}")
_KEY = re.compile(r"[0-9a-f]{64}")
_DISK_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._+-]{0,250}\.qcow2")
_EVERY = re.compile(r"([0-9]{1,7})([smh])")
_UNITS = {"s": 1, "m": 60, "h": 3600}


@dataclass(frozen=True)
class ReplicaRecord:
    vm: str
    source: str  # the host the VM runs on, which runs the rounds
    target: str  # the host that keeps the replica
    every: float  # seconds between two rounds
    created: float
    last_copy: float = 0.0  # when the last good copy was taken (0: none yet)
    generation: int = 0  # the target's replica generation after the last good copy
    last_bytes: int = 0  # bytes the last good round copied
    bitmap: str = ""  # the dirty bitmap, on each disk's top node at the source, of the writes since the last copy
    failed_over_to: str = ""  # the host HA powered the replica on (the VM lives there now; no more rounds)
    failed_over_at: float = 0.0


@dataclass(frozen=True)
class RoundDisk:
    file: str  # the specfile's name for it, a plain qcow2 file name of the VM's folder
    size: int  # virtual size in bytes


@dataclass(frozen=True)
class RoundRequest:
    id: str
    vm: str
    uuid: str
    source: str
    specfile: str
    disks: tuple[RoundDisk, ...]
    key: str  # the one-time pre-shared key (hex) of the NBD connection's TLS
    full: bool  # the whole disks are sent (a new replica file); else only what changed since the last copy
    copied: bool = False  # set by the source once its copy is done: the target makes it the replica


@dataclass(frozen=True)
class RoundAnswer:
    state: str  # ready, done, failed, missing (no replica to update: the next round copies whole)
    address: str = ""
    port: int = 0
    generation: int = 0
    error: str = ""


def check_uuid(vm_uuid: Any) -> str:
    """A VM UUID in its canonical form (it names a folder on the target); ArgumentError otherwise."""
    if not isinstance(vm_uuid, str) or not UUID_FORM.fullmatch(vm_uuid.lower()):
        raise ArgumentError(f"{excerpt(str(vm_uuid))} is not a VM UUID")
    return vm_uuid.lower()


def replica_key(vm_uuid: str) -> str:
    return REPLICAS + check_uuid(vm_uuid)


def parse_every(text: str) -> float:
    """``30s``, ``5m``, ``1h`` as seconds; ArgumentError naming the forms otherwise."""
    found = _EVERY.fullmatch(text.strip()) if isinstance(text, str) else None
    return check_every(int(found[1]) * _UNITS[found[2]] if found else 0, str(text))


def check_every(seconds: Any, written: str | None = None) -> float:
    """An interval between rounds in seconds, within bounds; ArgumentError otherwise."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not MIN_EVERY <= seconds <= MAX_EVERY:
        raise ArgumentError(f"{excerpt(written or str(seconds))} is not a usable replication interval",
                            hint=f"write a number and s, m or h (30s, 5m, 1h), at least {MIN_EVERY:g} s and at "
                                 "most a week")
    return float(seconds)


def get_record(store: Store, vm_uuid: str) -> tuple[ReplicaRecord, Entry] | None:
    entry = store.get(replica_key(vm_uuid))
    return None if entry is None else (from_value(ReplicaRecord, entry.value, entry.key), entry)


def put_record(store: Store, vm_uuid: str, record: ReplicaRecord) -> None:
    store.put(replica_key(vm_uuid), to_value(record))


def records(store: Store) -> dict[str, ReplicaRecord]:
    """Every replication: VM uuid -> its record. A malformed record (not minivisor's) is left out, so that it
    stops no other VM's rounds."""
    found = {}
    for entry in store.list(REPLICAS):
        try:
            found[entry.key[len(REPLICAS):]] = from_value(ReplicaRecord, entry.value, entry.key)
        except ClusterError:
            continue
    return found


def listing(store: Store) -> list[dict[str, Any]]:
    """Every replication, by VM name: as :func:`shown`, and the VM's UUID."""
    return sorted(({**shown(record), "uuid": vm_uuid} for vm_uuid, record in records(store).items()),
                  key=lambda item: item["vm"])


def shown(record: ReplicaRecord) -> dict[str, Any]:
    """A replication as ``vm show`` and ``cluster status`` give it: its record's fields and whether it is behind."""
    return {**to_value(record), "behind": is_behind(record, time.time())}


def is_behind(record: ReplicaRecord, now: float) -> bool:
    """Whether the replica is older than its rounds promise: no good copy for two intervals and a minute (its
    rounds fail, or its source is down), so that HA would lose more than the user chose to."""
    return not record.failed_over_to and now - (record.last_copy or record.created) > 2 * record.every + BEHIND_GRACE


def refuse_stale_copy(store: Store, config: ClusterConfig, vm_uuid: str, name: str) -> None:
    """ConflictError if HA powered this VM's replica on at another host: the copy here is older."""
    found = get_record(store, vm_uuid)
    if found is None or not found[0].failed_over_to or found[0].failed_over_to == config.host:
        return
    record = found[0]
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(record.failed_over_at))
    raise ConflictError(f"VM {name!r} failed over to host {record.failed_over_to!r} at {when}; the copy here is "
                        "older", hint=f"remove it with `minivisor vm delete {name}`")


def requests_for(store: Store, config: ClusterConfig) -> list[Entry]:
    """The round requests addressed to this host."""
    return MAILBOX.addressed_to(store, config.host)


def read_request(entry: Entry) -> RoundRequest:
    """A round request as read from etcd, every field checked; ClusterError naming the key otherwise."""
    value = entry.value
    try:
        disks = value["disks"]
        request = RoundRequest(value["id"], value["vm"], value["uuid"], value["source"], value["specfile"],
                               tuple(_disk(item) for item in disks) if isinstance(disks, list) else (),
                               value["key"], value["full"], value["copied"])
        fine = (isinstance(request.id, str) and _ID.fullmatch(request.id) and entry.key.endswith("/" + request.id)
                and isinstance(request.vm, str) and len(request.vm) <= 64
                and isinstance(request.specfile, str) and len(request.specfile) <= MAX_SPECFILE
                and isinstance(request.key, str) and _KEY.fullmatch(request.key)
                and isinstance(request.full, bool) and isinstance(request.copied, bool)
                and 0 < len(request.disks) <= MAX_DISKS
                and len({d.file for d in request.disks}) == len(request.disks))
        if fine:
            check_host_name(request.source)
            return replace(request, uuid=check_uuid(request.uuid))
    except (KeyError, TypeError, ValueError, HvError):
        pass
    raise ClusterError(f"the cluster store holds a malformed replication request at {excerpt(entry.key, 80)}",
                       hint="it was not written by this minivisor: remove it with etcdctl")


def _disk(item: Any) -> RoundDisk:
    disk = RoundDisk(item["file"], item["size"])
    if not (isinstance(disk.file, str) and _DISK_FILE.fullmatch(disk.file) and ".." not in disk.file
            and isinstance(disk.size, int) and not isinstance(disk.size, bool) and 0 < disk.size <= MAX_DISK_BYTES):
        raise ValueError(disk.file)
    return disk


def _answer(entry: Entry) -> RoundAnswer:
    try:
        answer = RoundAnswer(**{name: entry.value[name] for name in ("state", "address", "port", "generation",
                                                                     "error")})
    except (KeyError, TypeError):
        answer = None
    if answer is None or answer.state not in ("ready", "done", "failed", "missing") or not all(
            isinstance(text, str) and len(text) <= 512 for text in (answer.address, answer.error)) or not all(
            isinstance(number, int) and 0 <= number < 2 ** 63 for number in (answer.port, answer.generation)):
        raise ClusterError(f"the cluster store holds a malformed replication answer at {excerpt(entry.key, 80)}")
    return answer


class Round:
    """One round's messages, at either end: the source asks and says when its copy is done; the target answers."""

    def __init__(self, store: Store, config: ClusterConfig, target: str, request: RoundRequest) -> None:
        self.store, self.config, self.target, self.request = store, config, check_host_name(target), request

    @classmethod
    def new(cls, store: Store, config: ClusterConfig, target: str, vm: str, vm_uuid: str, specfile: str,
            disks: list[RoundDisk], full: bool) -> Round:
        request = RoundRequest(secrets.token_hex(16), vm, check_uuid(vm_uuid), config.host, specfile, tuple(disks),
                               secrets.token_hex(32), full)
        return cls(store, config, target, request)

    @property
    def request_key(self) -> str:
        return MAILBOX.request_key(self.target, self.request.id)

    # -- the source
    def ask(self, copied: bool = False) -> None:
        """Post the request (again, with ``copied``) to a live target, on this host's lease."""
        if self.target == self.config.host:
            raise ClusterError(f"VM {self.request.vm!r} runs on host {self.target!r}: its replica must be on another "
                               "host", hint="name another host of the cluster")
        own = lease_to_ask(self.store, self.config, self.target)
        if len(self.request.specfile) > MAX_SPECFILE:
            raise ClusterError(f"the specfile of {self.request.vm!r} is too long to send")
        self.store.put(self.request_key, to_value(replace(self.request, copied=copied)), lease=own.lease)

    def wait(self, state: str, timeout: float) -> RoundAnswer:
        """The target's answer once it is ``state``; ClusterError if it failed, vanished or took too long."""
        def ready(entry: Entry) -> bool:
            answer = _answer(entry)
            if answer.state in ("failed", "missing"):
                kind = ReplicaMissingError if answer.state == "missing" else ClusterError
                raise kind(f"host {self.target!r} could not replicate {self.request.vm!r}: {answer.error}")
            return answer.state == state

        return _answer(MAILBOX.await_answer(self.store, self.request.id, self.target,
                                            f"the replication round of {self.request.vm!r}", ready,
                                            peer_gone=lambda: live_entry(self.store, self.target) is None,
                                            timeout=timeout, poll=POLL))

    def withdraw(self) -> None:
        self.store.delete(self.request_key)
        self.store.delete(MAILBOX.answer_key(self.request.id))

    # -- the target
    def answer(self, answer: RoundAnswer) -> None:
        put_under_own_lease(self.store, self.config, MAILBOX.answer_key(self.request.id), to_value(answer))

    def current(self) -> RoundRequest | None:
        """The request as the source left it now (None: withdrawn, or its source died)."""
        entry = self.store.get(self.request_key)
        return None if entry is None else read_request(entry)
