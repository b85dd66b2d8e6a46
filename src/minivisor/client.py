"""A Python client for the minivisor service, with the core API's methods and types.

    from minivisor.client import Client
    hv = Client.for_datastore("./datastore")   # None when no service runs there
    hv.start_vm("web", wait_ready=True)
    for event in hv.events():
        print(event["type"], event["vm"])

Every method of :data:`minivisor.service.routes.OPERATIONS` is available under the core
API's name and signature and returns the same types (``VmInfo``,
``StartResult``...); errors arrive as the same :class:`~minivisor.errors.HvError`
subclasses with the same codes, so the CLI prints the same lines and exits
with the same codes whether it talks to the service or to the datastore.
Stdlib only (``http.client``): importing it costs the CLI almost nothing.
"""

from __future__ import annotations

import http.client
import dataclasses
import enum
import functools
import json
import os
import select
import threading
import time
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from . import errors, procfs
from .errors import HostError, HvError
from .service import routes
from .service.discovery import SERVICE_FILE, TOKEN_FILE

__all__ = ["Client", "connect"]

REUSE_IDLE = 10.0  # seconds a kept-alive connection is reused after; the service closes it after 15 (KEEP_ALIVE)


def connect(root: Path | str) -> Client | None:
    """A client for the service running on the datastore at ``root``, or None if none runs.

    The service file is trusted only if its pid is alive with the start time it
    recorded (a service killed with SIGKILL leaves a stale file behind).
    """
    root = Path(root)
    try:
        record = json.loads((root / SERVICE_FILE).read_text())
        token = (root / TOKEN_FILE).read_text().strip()
    except (OSError, ValueError):
        return None
    if not procfs.is_same_process(record.get("pid"), record.get("start_ticks")):
        return None
    return Client(record["url"], token)


class Client:
    """The REST API behind the core API's method names (one keep-alive connection per thread)."""

    def __init__(self, url: str, token: str, *, timeout: float = 60.0) -> None:
        parts = urlsplit(url)
        self.url = url
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.token = token
        self.timeout = timeout
        self._local = threading.local()

    @classmethod
    def for_datastore(cls, root: Path | str) -> Client | None:
        return connect(root)

    # -- transport ------------------------------------------------------------
    def _connection(self, timeout: float | None) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is not None and (time.monotonic() - self._local.used > REUSE_IDLE or _closed_by_peer(conn)):
            conn.close()  # the service closes idle connections: a request sent on one would be lost
            conn = None
        if conn is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
            self._local.conn = conn
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def request(self, method: str, path: str, body: dict[str, Any] | None = None, *,
                timeout: float | None = None) -> tuple[int, Any]:
        """Send one request; returns (status, decoded JSON or text)."""
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        for attempt in (0, 1):
            conn = self._connection(timeout or self.timeout)
            try:
                conn.request(method, path, body=payload, headers=headers)
                response = conn.getresponse()
                raw = response.read()
                self._local.used = time.monotonic()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                conn.close()
                self._local.conn = None
                if attempt or method != "GET":
                    raise HostError(f"the service at {self.url} closed the connection ({method} {path})",
                                    hint="see the service's log; the operation may or may not have happened") from exc
            except OSError as exc:
                conn.close()
                self._local.conn = None
                raise HostError(f"cannot reach the service at {self.url}: {exc}",
                                hint="is `minivisor serve` running? remove a stale .minivisor/service.json") from exc
        kind = response.getheader("Content-Type", "")
        data = json.loads(raw) if kind.startswith("application/json") and raw else raw.decode(errors="replace")
        return response.status, data

    def call(self, op_name: str, *args: Any, **kwargs: Any) -> Any:
        """Run one core API method on the service."""
        op = routes.by_name(op_name)
        if op is None:
            raise AttributeError(op_name)
        if len(args) > len(op.args):
            raise TypeError(f"{op_name}() takes {len(op.args)} positional arguments")
        kwargs.update(zip(op.args, args))
        kwargs.pop("progress", None)  # progress lines stay on the service's side
        for key, value in list(kwargs.items()):
            if isinstance(value, os.PathLike):
                kwargs[key] = os.path.abspath(value)  # the service resolves paths from its own folder
        path = op.path
        for param in op.path_params:
            from .datastore.store import check_vm_name  # here, not at the top: the client stays cheap to import

            # the service refuses a name that is none as well, but a "/" in it, sent, would be two
            # path segments (the server decodes %2F) and reach another route: "x/disks" would list x's disks
            value = check_vm_name(str(kwargs.pop(param)))
            path = path.replace("{" + param + "}", quote(value, safe=""))
        body: dict[str, Any] | None = None
        if op.method == "GET":
            if kwargs:
                path += "?" + urlencode({k: json.dumps(v) for k, v in kwargs.items()})
        else:
            body = kwargs
        timeout = float(kwargs.get("timeout") or 0) + 120.0
        status, data = self.request(op.method, path, body, timeout=timeout)
        if status >= 400:
            raise _error(status, data)
        return _decode(op.returns, data)

    def __getattr__(self, name: str) -> Any:
        if routes.by_name(name) is None:
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
        return lambda *args, **kwargs: self.call(name, *args, **kwargs)

    # -- beyond the core API ---------------------------------------------------
    def metrics(self) -> dict[str, Any]:
        status, data = self.request("GET", "/v1/metrics")
        if status >= 400:
            raise _error(status, data)
        return data

    def events(self, vm: str | None = None, *, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Server-sent events as they happen (a generator; close it to disconnect)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            path = "/v1/events" + (f"?vm={quote(vm)}" if vm else "")
            conn.request("GET", path, headers={"Authorization": f"Bearer {self.token}"})
            response = conn.getresponse()
            if response.status >= 400:
                raise _error(response.status, json.loads(response.read() or b"{}"))
            data = b""
            while True:
                line = response.readline()  # the stream is chunked: read through http.client, not its socket
                if not line:
                    return
                if line.startswith(b"data: "):
                    data += line[6:]
                elif line in (b"\n", b"\r\n") and data:
                    yield json.loads(data)
                    data = b""
        finally:
            conn.close()


def _closed_by_peer(conn: http.client.HTTPConnection) -> bool:
    """An idle kept-alive connection with something to read: the service closed it (EOF)."""
    if conn.sock is None:
        return False
    poller = select.poll()
    poller.register(conn.sock, select.POLLIN)
    return bool(poller.poll(0))


def _error(status: int, data: Any) -> HvError:
    detail = data.get("error") if isinstance(data, dict) else None
    if not isinstance(detail, dict):
        return HostError(f"the service answered {status}: {str(data)[:200]}")
    cls = _error_class(detail.get("type"))
    details = detail.get("details") if isinstance(detail.get("details"), dict) else {}
    try:
        error = cls(detail.get("message") or f"HTTP {status}", hint=detail.get("hint"), **details)
    except TypeError:  # details this minivisor's class does not take (another version's service)
        error = cls(detail.get("message") or f"HTTP {status}", hint=detail.get("hint"))
    error.code = detail.get("code") or error.code
    if isinstance(detail.get("exit_code"), int):
        error.exit_code = detail["exit_code"]
    return error


def _error_class(name: Any) -> type[HvError]:
    """The error class the service named in an error body's ``type`` (HvError for a name it does not know)."""
    cls = getattr(errors, name, None) if name in errors.__all__ else None
    return cls if isinstance(cls, type) and issubclass(cls, HvError) else HvError


# -- JSON -> the core API's types ------------------------------------------
def _decode(kind: str, data: Any) -> Any:
    if kind == "none":
        return None
    if kind == "text":
        return data["result"]
    if kind in ("events", "json"):
        return data
    if kind == "snapshot":
        return _snapshot(data)
    if kind == "snapshot_revert":
        return _snapshot(data[0]), data[1]
    # each type imported when its kind arrives: `vm list` needs only VmInfo, which is light
    if kind in ("vm", "vms", "start"):
        from .core.results import StartResult, VmInfo

        if kind == "vms":
            return [rebuild(VmInfo, item) for item in data]
        return rebuild(VmInfo if kind == "vm" else StartResult, data)
    if kind == "explanation":
        return _explanation(data)
    if kind == "exec":
        from .vmm.console import ExecResult

        return rebuild(ExecResult, data)
    if kind == "host":
        from .host.info import HostInfo

        return rebuild(HostInfo, data)
    if kind in ("network", "networks"):
        from .core.results import NetworkInfo

        return [rebuild(NetworkInfo, item) for item in data] if kind == "networks" else rebuild(NetworkInfo, data)
    raise ValueError(f"no result type {kind!r}")


def _explanation(data: dict[str, Any]) -> Any:
    """An Explanation, field by field: the names its annotations use are imported only for `vm explain`."""
    from .core.results import Explanation
    from .spec.vmspec import VmSpec
    from .vmm.argv import VirtualDevice

    return Explanation(rebuild(VmSpec, data["spec"]), tuple(rebuild(VirtualDevice, item) for item in data["hardware"]),
                       tuple(data["argv"]), tuple(data["warnings"]))


def _snapshot(data: dict[str, Any]) -> Any:
    from .spec.vmsd import Snapshot

    return Snapshot(uid=data["uid"], name=data["name"], parent=data["parent"], disks=data["disks"],
                    description=data["description"], created_us=round(data["created"] * 1e6),
                    memory_file=data["memory_file"])


def rebuild(tp: Any, data: Any) -> Any:
    """Turn JSON data back into ``tp`` (dataclasses, enums, paths, tuples, optionals)."""
    if data is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        return rebuild(options[0], data) if len(options) == 1 else data
    if origin is tuple:
        args = typing.get_args(tp)
        return tuple(rebuild(args[0], item) for item in data) if args else tuple(data)
    if origin is list:
        (item_type,) = typing.get_args(tp) or (Any,)
        return [rebuild(item_type, item) for item in data]
    if dataclasses.is_dataclass(tp) and isinstance(data, dict):
        fields = _init_fields(tp)
        return tp(**{k: rebuild(fields[k], v) for k, v in data.items() if k in fields})
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(data)
    if tp is Path:
        return Path(data)
    return data


@functools.cache
def _init_fields(tp: type) -> dict[str, Any]:
    """A dataclass's constructor fields and their types (resolved once: `vm list` rebuilds hundreds of VmInfo)."""
    hints = typing.get_type_hints(tp)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(tp) if f.init}
