"""The **records** the cluster store holds, their keys, and the checks every value read passes.

Keys (under :data:`minivisor.cluster.store.PREFIX`):

- ``cluster``: the cluster itself (:class:`ClusterRecord`), written once by ``cluster init``;
- ``hosts/<host>``: a member (:class:`HostRecord`), from ``cluster join`` until ``cluster leave``;
- ``alive/<host>``: a live member (:class:`LiveRecord`), attached to its lease: it exists while the
  host's service keeps the lease alive, and says what the host has (memory, CPUs, VMs, versions);
- ``owners/<vm uuid>``: the one host a VM may run on (:class:`OwnerRecord`), attached to that host's
  lease, so it goes when the lease does;
- ``rules/<id>``: a placement rule (:class:`RuleRecord`): VMs kept on different hosts, or on one.

A field added to a record later has a default: a record written by an older member still reads.

Another program can write into etcd: a value is checked field by field before it is believed
(:func:`from_value`), and a bad one is a ClusterError naming the key.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from ..errors import ArgumentError, ClusterError
from ..text import excerpt

if TYPE_CHECKING:
    from .store import Entry, Store

__all__ = ["Mailbox", "ClusterRecord", "HostRecord", "LiveRecord", "OwnerRecord", "RuleRecord", "from_value", "to_value",
           "check_host_name", "host_key", "alive_key", "owner_key", "rule_key", "CLUSTER_KEY", "HOSTS", "ALIVE", "OWNERS",
           "RULES", "RULE_KINDS"]

CLUSTER_KEY, HOSTS, ALIVE, OWNERS, RULES = "cluster", "hosts/", "alive/", "owners/", "rules/"
RULE_KINDS = ("apart", "together")
_HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_UUID = re.compile(r"[0-9a-fA-F-]{1,64}")
MAX_TEXT = 256  # characters of any string field
MAX_VMS = 4096  # names in a host's list of running VMs


@dataclass(frozen=True)
class ClusterRecord:
    ttl: int  # seconds of every member's lease
    created: float


@dataclass(frozen=True)
class HostRecord:
    name: str
    id: str  # the member's identity: a second datastore taking the same name is refused
    joined: float


@dataclass(frozen=True)
class LiveRecord:
    id: str
    memory_free_mib: int
    memory_total_mib: int
    cpus: int
    vms: tuple[str, ...]  # the VMs running on the host
    minivisor: str
    qemu: str
    updated: float
    registered: tuple[str, ...] = ()  # the UUIDs of the VMs registered on the host (placement)
    memory_room_mib: int = 0  # what memory admission would still give VMs (its memory less reserve and VMs)
    load: float = 0.0  # the 1-minute load average


@dataclass(frozen=True)
class OwnerRecord:
    host: str
    host_id: str
    vm: str  # the VM's name on its owner, for messages


@dataclass(frozen=True)
class RuleRecord:
    id: int
    kind: str  # apart: on different hosts; together: on one host
    vms: tuple[str, ...]  # VM names


Record = TypeVar("Record")


def check_host_name(name: str) -> str:
    if not isinstance(name, str) or not _HOST_NAME.fullmatch(name):
        raise ArgumentError(f"{excerpt(name)} is not a usable host name",
                            hint="use 1-63 letters, digits, dots, dashes or underscores; begin with a letter or digit")
    return name


def host_key(name: str) -> str:
    return HOSTS + check_host_name(name)


def alive_key(name: str) -> str:
    return ALIVE + check_host_name(name)


def owner_key(vm_uuid: str) -> str:
    if not _UUID.fullmatch(vm_uuid):
        raise ArgumentError(f"{excerpt(vm_uuid)} is not a VM UUID")
    return OWNERS + vm_uuid.lower()


def rule_key(rule_id: int) -> str:
    return f"{RULES}{rule_id:06d}"  # zero-padded: etcd lists keys in byte order


def to_value(record: Any) -> dict[str, Any]:
    value = dataclasses.asdict(record)
    return {key: list(item) if isinstance(item, tuple) else item for key, item in value.items()}


def from_value(kind: type[Record], value: dict[str, Any], key: str) -> Record:
    """``value`` (read at ``key``) as a ``kind`` record once every field has the type it must have."""
    fields = {}
    for field in dataclasses.fields(kind):  # type: ignore[arg-type]
        if field.name not in value and field.default is not dataclasses.MISSING:
            fields[field.name] = field.default
            continue
        item = value.get(field.name)
        fields[field.name] = _checked(field.type, item, field.name, key)
    return kind(**fields)


def _checked(kind: Any, item: Any, name: str, key: str) -> Any:
    if kind == "str" and isinstance(item, str) and len(item) <= MAX_TEXT:
        return item
    if kind == "int" and isinstance(item, int) and not isinstance(item, bool) and 0 <= item < 2 ** 63:
        return item
    if kind == "float" and isinstance(item, (int, float)) and not isinstance(item, bool) and 0 <= item < 1e12:
        return float(item)
    if kind == "tuple[str, ...]" and isinstance(item, list) and len(item) <= MAX_VMS \
            and all(isinstance(one, str) and len(one) <= MAX_TEXT for one in item):
        return tuple(item)
    raise ClusterError(f"the cluster store holds a malformed {name!r} at {excerpt(key, 80)}",
                       hint="it was not written by this minivisor: remove it with etcdctl, or rejoin the host")


class Mailbox(NamedTuple):
    """Requests addressed to one host and their answers: ``<requests><host>/<id>``, written by the host that
    asks, and ``<answers><id>``, by the host asked (a migration's, placement's power-ons)."""

    requests: str
    answers: str

    def request_key(self, host: str, request_id: str) -> str:
        return f"{self.requests}{check_host_name(host)}/{request_id}"

    def answer_key(self, request_id: str) -> str:
        return self.answers + request_id

    def await_answer(self, store: Store, request_id: str, peer: str, what: str, ready: Callable[[Entry], bool], *,
                     peer_gone: Callable[[], bool], timeout: float, poll: float = 0.1) -> Entry:
        """The answer to ``request_id`` once ``ready(entry)`` (which raises for an answer that says it failed);
        ClusterError naming ``peer`` and ``what`` (``the migration of 'web'``) when the answer vanished after it
        was seen, or none came and ``peer_gone()``, or after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        seen = False
        while True:
            entry = store.get(self.answer_key(request_id))
            if entry is not None:
                seen = True
                if ready(entry):
                    return entry
            elif seen or peer_gone():
                raise ClusterError(f"host {peer!r} gave up {what} (or its service ended)")
            if time.monotonic() > deadline:
                raise ClusterError(f"host {peer!r} did not answer {what} within {timeout:g} s")
            time.sleep(poll)

    def addressed_to(self, store: Store, host: str) -> list[Entry]:
        """The requests to ``host`` (one that is not even JSON as ``{}``: its reader refuses it, and it alone)."""
        return store.list(f"{self.requests}{host}/", malformed_as_empty=True)
