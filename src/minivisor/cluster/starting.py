"""**A power-on asked of another host**, through etcd (no host listens for another), when placement chose it.

- ``starts/<host>/<id>`` (:class:`StartRequest`), written by the asking host and attached to its lease: the
  VM's name and UUID, whether to wait for the guest's readiness and for how long;
- ``started/<id>`` (:class:`StartAnswer`), written by the host asked and attached to its lease: ``running``
  (its VMM's pid, accelerator, warnings, the ready line) or ``failed`` (why, as one line).

The asking host waits for the answer, then deletes both. The host asked reads each request as hostile input
(:func:`read_request`) and powers the VM on through its own core, with every check a power-on makes (the
VM registered there under that UUID, placement's rules and room, admission, ownership).
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

from ..datastore.names import check_vm_name
from ..errors import ClusterError, HvError
from ..text import excerpt
from .config import ClusterConfig
from .ownership import live_entry, put_under_own_lease
from .records import Mailbox, check_host_name
from .store import Entry, Store

__all__ = ["StartRequest", "StartAnswer", "ask", "read_request", "requests_for", "Starter", "STARTS", "STARTED",
           "MAX_WAIT"]

STARTS, STARTED = "starts/", "started/"
POLL = 0.1  # seconds between two looks at the answer
POWER_ON_WAIT = 120.0  # seconds a power-on gets on the other host, besides waiting for the guest's readiness
MAX_WAIT = 3600.0  # seconds of readiness a request may ask the other host to wait for
MAX_TEXT = 512
_ID = re.compile(r"[0-9a-f]{32}")
_UUID = re.compile(r"[0-9a-fA-F-]{1,64}")


@dataclass(frozen=True)
class StartRequest:
    id: str
    vm: str
    uuid: str
    source: str
    wait_ready: bool
    timeout: float


@dataclass(frozen=True)
class StartAnswer:
    state: str  # running, failed
    error: str = ""
    pid: int = 0
    accel: str = ""
    warnings: tuple[str, ...] = ()
    ready_line: str = ""


MAILBOX = Mailbox(STARTS, STARTED)
request_key, answer_key = MAILBOX.request_key, MAILBOX.answer_key


def requests_for(store: Store, config: ClusterConfig) -> list[Entry]:
    """The power-ons asked of this host."""
    return MAILBOX.addressed_to(store, config.host)


def ask(store: Store, config: ClusterConfig, host: str, vm: str, vm_uuid: str, *, wait_ready: bool,
        timeout: float) -> StartAnswer:
    """Have ``host`` power the VM on; its ``running`` answer, or ClusterError (it failed, or never answered)."""
    own = live_entry(store, config.host)
    if own is None:
        raise ClusterError(f"host {config.host!r} is not a live member of the cluster",
                           hint="start `minivisor serve` for this datastore")
    request = StartRequest(secrets.token_hex(16), vm, vm_uuid, config.host, wait_ready, timeout)
    key = request_key(host, request.id)
    store.put(key, asdict(request), lease=own.lease)
    try:
        return _wait(store, host, request, POWER_ON_WAIT + (timeout if wait_ready else 0.0))
    finally:
        store.delete(key)
        store.delete(answer_key(request.id))


def _wait(store: Store, host: str, request: StartRequest, patience: float) -> StartAnswer:
    deadline = time.monotonic() + patience
    while True:
        entry = store.get(answer_key(request.id))
        if entry is not None:
            answer = _answer(entry)
            if answer.state == "failed":
                raise ClusterError(f"host {host!r} did not power {request.vm!r} on: {answer.error}")
            return answer
        if live_entry(store, host) is None:
            raise ClusterError(f"host {host!r} left the cluster (or its service ended) before powering "
                               f"{request.vm!r} on", hint="see minivisor cluster status, and start it again")
        if time.monotonic() > deadline:
            raise ClusterError(f"host {host!r} did not say within {patience:g} s whether it powered {request.vm!r} on",
                               hint="see minivisor cluster status: it may run there")
        time.sleep(POLL)


def read_request(entry: Entry) -> StartRequest:
    """A request as read from etcd, every field checked; ClusterError naming the key otherwise."""
    value = entry.value
    try:
        request = StartRequest(value["id"], value["vm"], value["uuid"], value["source"], value["wait_ready"],
                               value["timeout"])
        fine = (isinstance(request.id, str) and _ID.fullmatch(request.id) and entry.key.endswith("/" + request.id)
                and isinstance(request.uuid, str) and _UUID.fullmatch(request.uuid)
                and isinstance(request.wait_ready, bool) and isinstance(request.timeout, (int, float))
                and not isinstance(request.timeout, bool) and 0 < request.timeout <= MAX_WAIT)
        if fine:
            check_vm_name(request.vm)
            check_host_name(request.source)
            return request
    except (KeyError, TypeError, ValueError, HvError):
        pass
    raise ClusterError(f"the cluster store holds a malformed start request at {excerpt(entry.key, 80)}",
                       hint="it was not written by this minivisor: remove it with etcdctl")


def _answer(entry: Entry) -> StartAnswer:
    value = entry.value
    try:
        warnings = value["warnings"]
        answer = StartAnswer(value["state"], value["error"], value["pid"], value["accel"],
                             tuple(warnings) if isinstance(warnings, list) else (), value["ready_line"])
        fine = (isinstance(warnings, list) and answer.state in ("running", "failed")
                and isinstance(answer.pid, int) and 0 <= answer.pid < 2 ** 32
                and len(answer.warnings) <= 64
                and all(isinstance(text, str) and len(text) <= MAX_TEXT
                        for text in (answer.error, answer.accel, answer.ready_line, *answer.warnings)))
    except (KeyError, TypeError):
        fine = False
    if not fine:
        raise ClusterError(f"the cluster store holds a malformed start answer at {excerpt(entry.key, 80)}")
    return answer


class Starter:
    """The host asked: answers one checked :class:`StartRequest`."""

    def __init__(self, store: Store, config: ClusterConfig, request: StartRequest) -> None:
        self.store, self.config, self.request = store, config, request

    def answer(self, answer: StartAnswer) -> None:
        value: dict[str, Any] = asdict(answer)
        value["warnings"] = [text[:MAX_TEXT] for text in answer.warnings[:64]]
        value["error"], value["ready_line"] = answer.error[:MAX_TEXT], answer.ready_line[:MAX_TEXT]
        put_under_own_lease(self.store, self.config, answer_key(self.request.id), value)
