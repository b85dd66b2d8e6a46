"""The **cluster store**: etcd, through its JSON gateway (``etcd3gw``), as the cluster's modules use it.

Small on purpose: JSON objects under one key prefix (:data:`PREFIX`), reads, puts,
create-if-absent and compare-and-swap transactions, and leases. Every value read is
hostile until checked: it must be a JSON object of bounded size (its fields are then
checked by :mod:`minivisor.cluster.records`). An endpoint that does not answer is
skipped for the next one, for a few seconds (a leader election); when none answers, the caller
gets one :class:`~minivisor.errors.ClusterUnreachableError`.
"""

from __future__ import annotations

import base64
import json
import re
import time
from dataclasses import dataclass
from typing import Any

from ..errors import ClusterError, ClusterUnreachableError, HostError

try:
    from etcd3gw import exceptions as etcd_errors
    from etcd3gw.client import Etcd3Client
except ImportError as missing:  # an extra: single hosts do without it
    raise HostError("a cluster needs the etcd3gw Python package, which is not installed",
                    hint="pip install 'minivisor[cluster]' (./setup.sh installs it)") from missing
from ..text import clip, excerpt
from .config import host_and_port

__all__ = ["Store", "Entry", "PREFIX", "REQUEST_TIMEOUT"]

PREFIX = "/minivisor/"  # every key minivisor writes is under it
MAX_VALUE = 64 * 1024  # bytes of one value: a record is a few hundred
REQUEST_TIMEOUT = 1.5  # seconds one endpoint gets to answer a request
ELECTION_WAIT = 5.0  # seconds a request keeps trying every endpoint: etcd's leader elections take 1-2 s
RETRY_PAUSE = 0.25  # seconds between two rounds over the endpoints
# an endpoint that does not answer, or answers that it cannot now (no leader, a timeout inside etcd): try another
_UNAVAILABLE = (etcd_errors.ConnectionFailedError, etcd_errors.ConnectionTimeoutError,
                etcd_errors.InternalServerError)


@dataclass(frozen=True)
class Entry:
    """One key as read: its value (a JSON object, not yet checked field by field) and etcd's metadata."""

    key: str  # without PREFIX
    value: dict[str, Any]
    create_revision: int
    mod_revision: int
    lease: int  # 0: none


class Store:
    """The cluster store at ``endpoints``: typed calls, one error when it is unreachable."""

    def __init__(self, endpoints: tuple[str, ...], *, timeout: float = REQUEST_TIMEOUT,
                 patience: float = ELECTION_WAIT) -> None:
        """``patience``: seconds a request keeps trying every endpoint (0: one round, for a look that may fail)."""
        self.endpoints = endpoints
        self.patience = patience
        self._clients = [Etcd3Client(*host_and_port(url), timeout=timeout, api_path="/v3/") for url in endpoints]

    # -- keys and values ---------------------------------------------------------
    def get(self, key: str) -> Entry | None:
        """The entry at ``key``, or None."""
        found = self._post("/kv/range", {"key": _b64(key)}).get("kvs") or []
        return self._entry(found[0]) if found else None

    def list(self, prefix: str, *, malformed_as_empty: bool = False) -> list[Entry]:
        """Every entry whose key starts with ``prefix``, in key order; ``malformed_as_empty``: a value that is not a
        bounded JSON object is given as ``{}`` (a request another program wrote, to be refused alone) instead of
        failing the whole list."""
        start = PREFIX + prefix
        found = self._post("/kv/range", {"key": _b64(start, raw=True), "range_end": _b64(_after(start), raw=True)})
        return [self._entry(kv, malformed_as_empty) for kv in found.get("kvs") or []]

    def put(self, key: str, value: dict[str, Any], *, lease: int = 0) -> None:
        self._post("/kv/put", _put(key, value, lease))

    def create(self, key: str, value: dict[str, Any], *, lease: int = 0,
               unless_gone: tuple[str, int] | None = None) -> Entry | None:
        """Write ``key`` only if it does not exist; returns None if written, else the entry in the way.

        ``unless_gone`` (another key and its create revision) makes the write conditional on that key
        still being the one read: an ownership claim names its host's liveness key, so a claim never
        outlives the lease it was made under. If that key changed, ClusterError says so.
        """
        compare = [{"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}]
        if unless_gone is not None:
            compare.append({"key": _b64(unless_gone[0]), "target": "CREATE", "result": "EQUAL",
                            "create_revision": str(unless_gone[1])})
        reply = self._txn(compare, [{"request_put": _put(key, value, lease)}],
                          [{"request_range": {"key": _b64(key)}}])
        if reply.get("succeeded"):
            return None
        found = _first_kvs(reply)
        if not found:
            raise ClusterError(f"{unless_gone[0] if unless_gone else key} changed in the cluster store meanwhile",
                               hint="retry")
        return self._entry(found[0])

    def replace(self, key: str, value: dict[str, Any], mod_revision: int, *, lease: int = 0,
                unless_changed: tuple[str, int] | None = None) -> bool:
        """Write ``key`` only if it is still at ``mod_revision`` (compare-and-swap); True if written.

        ``unless_changed`` (another key and its mod revision) makes the write conditional on that key too:
        a migration's handover names the destination's answer, which a destination that gives up deletes.
        """
        compare = [{"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(mod_revision)}]
        if unless_changed is not None:
            compare.append({"key": _b64(unless_changed[0]), "target": "MOD", "result": "EQUAL",
                            "mod_revision": str(unless_changed[1])})
        return bool(self._txn(compare, [{"request_put": _put(key, value, lease)}], []).get("succeeded"))

    def delete(self, key: str, *, mod_revision: int | None = None) -> bool:
        """Delete ``key`` (only if still at ``mod_revision`` when given); True if this call deleted it."""
        request = {"key": _b64(key)}
        if mod_revision is None:
            return int(self._post("/kv/deleterange", request).get("deleted", 0)) > 0
        compare = [{"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(mod_revision)}]
        reply = self._txn(compare, [{"request_delete_range": request}], [])
        return bool(reply.get("succeeded")) and int(
            (reply.get("responses") or [{}])[0].get("response_delete_range", {}).get("deleted", 0)) > 0

    # -- leases ------------------------------------------------------------------
    def grant(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds; returns its id."""
        return _integer(self._post("/lease/grant", {"TTL": ttl}).get("ID"), "a lease id")

    def refresh(self, lease: int) -> int:
        """Keep ``lease`` alive; returns its TTL, or -1 if it had expired (its keys are gone)."""
        result = self._post("/lease/keepalive", {"ID": lease}).get("result") or {}
        return _integer(result.get("TTL", -1), "a lease TTL")

    def revoke(self, lease: int) -> None:
        """End ``lease`` now: every key attached to it is deleted."""
        try:
            self._post("/kv/lease/revoke", {"ID": lease})
        except ClusterError as exc:
            if "not found" not in str(exc):  # already expired: what revoking wanted
                raise

    def version(self) -> str:
        """The etcd server version of the first endpoint that answers."""
        for client in self._clients:
            try:
                data = client.session.get(client.base_url + "/version", timeout=client.timeout).json()
                return str(data.get("etcdserver", "?"))[:32]
            except Exception:  # noqa: BLE001 - requests' errors, bad JSON: that endpoint does not answer
                continue
        raise self._unreachable("no endpoint answered /version")

    # -- the wire ------------------------------------------------------------------
    def _txn(self, compare: list, success: list, failure: list) -> dict[str, Any]:
        return self._post("/kv/txn", {"compare": compare, "success": success, "failure": failure})

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """One request, to the first endpoint that answers (a failed one is tried last next time).

        etcd elects a new leader when one is lost; meanwhile its members time out or answer 5xx. Rounds over
        every endpoint are retried for :attr:`patience` (:data:`ELECTION_WAIT`), so a member lost is no outage.
        A request retried after a timeout may have been applied: every caller's writes are conditional or idempotent.
        """
        deadline = time.monotonic() + self.patience
        while True:
            reply, reason = self._round(path, body)
            if reply is not None:
                return reply
            if time.monotonic() >= deadline:
                raise self._unreachable(reason)
            time.sleep(RETRY_PAUSE)

    def _round(self, path: str, body: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
        """The request to each endpoint in turn until one answers: (its answer, "") or (None, the last failure)."""
        reason = ""
        for _ in range(len(self._clients)):
            client = self._clients[0]
            try:
                reply = client.post(client.get_url(path), json=body)
            except _UNAVAILABLE as exc:
                reason = f"{client.base_url}: {_reason(exc)}"
                self._clients.append(self._clients.pop(0))
                continue
            except etcd_errors.Etcd3Exception as exc:
                raise ClusterError(f"the cluster store at {client.base_url} refused {path}: {_reason(exc)}",
                                   hint="check `minivisor cluster status`") from exc
            if not isinstance(reply, dict):
                raise ClusterError(f"the cluster store at {client.base_url} answered {path} with no JSON object")
            return reply, ""
        return None, reason

    def _unreachable(self, reason: str) -> ClusterUnreachableError:
        return ClusterUnreachableError(f"the cluster store at {','.join(self.endpoints)} is unreachable: {reason}",
                                       hint="check `minivisor cluster status` and that etcd runs")

    def _entry(self, kv: Any, malformed_as_empty: bool = False) -> Entry:
        """A key-value pair from etcd, checked: key under the prefix, value a bounded JSON object."""
        if not isinstance(kv, dict):
            raise ClusterError("the cluster store answered a malformed key-value pair")
        key = _unb64(kv.get("key", ""), "key").decode("utf-8", "replace")
        if not key.startswith(PREFIX):
            raise ClusterError(f"the cluster store answered key {excerpt(key)} outside {PREFIX}")
        raw = _unb64(kv.get("value", ""), f"the value of {key}")
        try:
            value = json.loads(raw) if len(raw) <= MAX_VALUE else None
        except ValueError:
            value = None
        if not isinstance(value, dict) and malformed_as_empty:
            value = {}
        if not isinstance(value, dict):
            raise ClusterError(f"the cluster store holds a malformed value at {excerpt(key)}",
                               hint="it was not written by minivisor: delete it with etcdctl")
        return Entry(key[len(PREFIX):], value, _integer(kv.get("create_revision", 0), "a revision"),
                     _integer(kv.get("mod_revision", 0), "a revision"), _integer(kv.get("lease", 0), "a lease id"))


def _put(key: str, value: dict[str, Any], lease: int) -> dict[str, Any]:
    body = {"key": _b64(key), "value": base64.b64encode(json.dumps(value, sort_keys=True).encode()).decode()}
    if lease:
        body["lease"] = str(lease)
    return body


def _first_kvs(reply: dict[str, Any]) -> list:
    responses = reply.get("responses") or [{}]
    return (responses[0].get("response_range") or {}).get("kvs") or []


def _b64(key: str, *, raw: bool = False) -> str:
    return base64.b64encode((key if raw else PREFIX + key).encode()).decode()


def _unb64(text: Any, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (TypeError, ValueError):
        raise ClusterError(f"the cluster store answered a malformed {what}") from None


def _after(prefix: str) -> str:
    """The first key after every key starting with ``prefix`` (etcd's range end for a prefix)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _integer(value: Any, what: str) -> int:
    """etcd's JSON gateway writes 64-bit integers as strings."""
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ClusterError(f"the cluster store answered a malformed {what}: {excerpt(str(value))}") from None


def _reason(exc: etcd_errors.Etcd3Exception) -> str:
    """An etcd3gw exception in a few words: the system's reason for a failed connection, etcd's own message
    for a refusal (its body is JSON: ``{"error": "etcdserver: ...", "code": 5}``)."""
    text = " ".join(str(exc.detail_text or "").split())
    if isinstance(exc, etcd_errors.ConnectionTimeoutError):
        return "no answer in time"
    if isinstance(exc, etcd_errors.ConnectionFailedError):
        errno_text = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
        return errno_text.group(1).lower() if errno_text else clip(text, 200) or "connection failed"
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    message = body.get("error") or body.get("message") if isinstance(body, dict) else None
    return clip(str(message or text or type(exc).__name__), 200)
