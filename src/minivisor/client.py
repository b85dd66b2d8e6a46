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
Stdlib only, and light: its requests speak just the HTTP/1.1 the service answers in
(:class:`_Connection`, on a socket), since ``http.client`` (email parsing, ssl) would
cost every CLI command that goes through a service more than its own work does;
only :meth:`Client.events` (a chunked stream) loads ``http.client``. For the same reason the
module loads no pathlib, urllib.parse (ipaddress), typing or dataclasses (inspect) until a
result needs them: a snapshot, a string or plain JSON needs none; and it speaks through the C modules
under the standard library's: ``_socket`` under ``socket`` (whose enums and wrappers cost a command ~4 ms
of CPU), ``_json`` under ``json`` (json's decoder, scanner and encoder modules, with their regexes: ~1.5 ms)
and ``_thread`` under ``threading`` (~1 ms).
"""

from __future__ import annotations

import _json
import _socket
import _thread
import functools
import os
import select
import time

from . import errors, procfs
from .errors import HostError, HvError
from .records import Record
from .service import routes
from .service.discovery import SERVICE_FILE, TOKEN_FILE

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path
    from typing import Any

__all__ = ["Client", "connect"]

REUSE_IDLE = 10.0  # seconds a kept-alive connection is reused after; the service closes it after 15 (KEEP_ALIVE)
MAX_HEAD = 64 * 1024  # bytes of an answer's status line and headers
MAX_BODY = 256 * 1024 * 1024  # bytes of an answer's body (`vm list` of thousands of VMs is a few MiB)


def connect(root: Path | str) -> Client | None:
    """A client for the service running on the datastore at ``root``, or None if none runs.

    The service file is trusted only if its pid is alive with the start time it
    recorded (a service killed with SIGKILL leaves a stale file behind).
    """
    try:
        record = _loads(_read(os.path.join(root, SERVICE_FILE)))
        token = _read(os.path.join(root, TOKEN_FILE)).strip()
    except (OSError, ValueError):
        return None
    if not procfs.is_same_process(record.get("pid"), record.get("start_ticks")):
        return None
    return Client(record["url"], token)


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as file:
        return file.read()


def _host_and_port(url: str) -> tuple[str, int]:
    """The host and port of the ``http://HOST:PORT`` the service records (urllib.parse's urlsplit, for this URL)."""
    authority = url.partition("://")[2].partition("/")[0]
    host, colon, port = authority.rpartition(":")
    if not colon or "]" in port:  # no port (an IPv6 address's last colon is inside its brackets)
        host, port = authority, "80"
    return host.strip("[]") or "127.0.0.1", int(port)


class Client:
    """The REST API behind the core API's method names (one keep-alive connection per thread)."""

    def __init__(self, url: str, token: str, *, timeout: float = 60.0) -> None:
        self.url = url
        self.host, self.port = _host_and_port(url)
        self.token = token
        self.timeout = timeout
        self._local = _thread._local()  # threading.local, without threading

    @classmethod
    def for_datastore(cls, root: Path | str) -> Client | None:
        return connect(root)

    # -- transport ------------------------------------------------------------
    def _connection(self, timeout: float) -> _Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None and (time.monotonic() - self._local.used > REUSE_IDLE or _closed_by_peer(conn)):
            conn.close()  # the service closes idle connections: a request sent on one would be lost
            conn = None
        if conn is None:
            conn = _Connection(self.host, self.port, timeout)
            self._local.conn = conn
        conn.sock.settimeout(timeout)
        return conn

    def request(self, method: str, path: str, body: dict[str, Any] | None = None, *,
                timeout: float | None = None) -> tuple[int, Any]:
        """Send one request; returns (status, decoded JSON or text)."""
        payload = _dumps(body).encode() if body is not None else b""
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        for attempt in (0, 1):
            try:
                conn = self._connection(timeout or self.timeout)
            except OSError as exc:
                raise HostError(f"cannot reach the service at {self.url}: {exc}",
                                hint="is `minivisor serve` running? remove a stale .minivisor/service.json") from exc
            try:
                status, kind, raw = conn.exchange(method, path, headers, payload)
                self._local.used = time.monotonic()
                break
            except (_Closed, BrokenPipeError, ConnectionResetError) as exc:
                conn.close()
                self._local.conn = None
                if attempt or method != "GET":
                    raise HostError(f"the service at {self.url} closed the connection ({method} {path})",
                                    hint="see the service's log; the operation may or may not have happened") from exc
            except (OSError, ValueError) as exc:
                conn.close()
                self._local.conn = None
                raise HostError(f"cannot reach the service at {self.url}: {exc}",
                                hint="is `minivisor serve` running? remove a stale .minivisor/service.json") from exc
        data = _loads(raw) if kind.startswith("application/json") and raw else raw.decode(errors="replace")
        return status, data

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
            # the service refuses these as well, but a "/" in a value, sent, would be two path segments
            # (the server decodes %2F) and reach another route: "x/disks" would list x's disks
            path = path.replace("{" + param + "}", _path_value(op, param, str(kwargs.pop(param))))
        body: dict[str, Any] | None = None
        if op.method == "GET":
            if kwargs:
                from urllib.parse import urlencode

                path += "?" + urlencode({k: _dumps(v) for k, v in kwargs.items()})
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
        import http.client  # a chunked stream of unknown length: http.client's, loaded only here
        from urllib.parse import quote

        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            path = "/v1/events" + (f"?vm={quote(vm)}" if vm else "")
            conn.request("GET", path, headers={"Authorization": f"Bearer {self.token}"})
            response = conn.getresponse()
            if response.status >= 400:
                raise _error(response.status, _loads(response.read() or b"{}"))
            data = b""
            while True:
                line = response.readline()  # the stream is chunked: read through http.client, not its socket
                if not line:
                    return
                if line.startswith(b"data: "):
                    data += line[6:]
                elif line in (b"\n", b"\r\n") and data:
                    yield _loads(data)
                    data = b""
        finally:
            conn.close()


class _Closed(OSError):
    """The service closed a kept-alive connection before it answered (a GET may be sent again)."""


def _connect(host: str, port: int, timeout: float) -> _socket.socket:
    """A TCP connection to the first of the host's addresses that answers (``socket.create_connection``)."""
    failure: OSError = OSError(f"no address for {host}")
    # The host as bytes: a str would be encoded with the idna codec, one more import for nothing.
    for family, kind, proto, _, address in _socket.getaddrinfo(host.encode(), port, 0, _socket.SOCK_STREAM):
        sock = _socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            failure = exc
    raise failure


class _Connection:
    """One kept-alive HTTP/1.1 connection to the service: a request out, its whole answer back.

    Enough of HTTP for the service's answers (a status line, headers, a body of Content-Length
    bytes, chunked, or up to the end of the connection), each part bounded.
    """

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.sock = _connect(host, port, timeout)
        self.sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)  # one request, one send: no delay
        self.host = host if ":" not in host else f"[{host}]"
        self.port = port
        self._received = bytearray()  # bytes of the answer not read yet

    def exchange(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
        """(status, Content-Type, body) of the answer to one request."""
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}", f"Content-Length: {len(body)}",
                 *(f"{name}: {value}" for name, value in headers.items())]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        status_line = self._line()
        if not status_line:
            raise _Closed(f"the service closed the connection before answering {method} {path}")
        version, _, rest = status_line.partition(b" ")
        if not version.startswith(b"HTTP/1.") or not rest[:3].isdigit():
            raise ValueError(f"the service answered with no HTTP status line: {status_line[:80]!r}")
        head: dict[str, str] = {}
        while line := self._line():
            name, _, value = line.decode("latin-1").partition(":")
            head[name.strip().lower()] = value.strip()
        if "chunked" in head.get("transfer-encoding", "").lower():
            raw = self._chunked()
        elif "content-length" in head:
            raw = self._exactly(int(head["content-length"]))
        else:
            while len(self._received) <= MAX_BODY and self._receive():
                pass
            raw = self._take(len(self._received))
            head["connection"] = "close"
        if len(raw) > MAX_BODY:
            raise ValueError(f"the service's answer is larger than {MAX_BODY} bytes")
        if head.get("connection", "").lower() == "close":
            self.close()
        return int(rest[:3]), head.get("content-type", ""), raw

    def _receive(self) -> bool:
        """More of the answer into the buffer; False at the end of the connection."""
        chunk = self.sock.recv(64 * 1024)
        self._received += chunk
        return bool(chunk)

    def _take(self, count: int) -> bytes:
        taken = bytes(self._received[:count])
        del self._received[:count]
        return taken

    def _line(self) -> bytes:
        """One header line without its CRLF (b"" at the blank line that ends them, or at EOF)."""
        while (end := self._received.find(b"\n", 0, MAX_HEAD)) < 0:
            if len(self._received) >= MAX_HEAD:
                raise ValueError(f"the service sent a header line longer than {MAX_HEAD} bytes")
            if not self._receive():
                return self._take(len(self._received)).rstrip(b"\r\n")  # the end of the connection
        return self._take(end + 1).rstrip(b"\r\n")

    def _exactly(self, count: int) -> bytes:
        if not 0 <= count <= MAX_BODY:
            raise ValueError(f"the service announced a body of {count} bytes")
        while len(self._received) < count and self._receive():
            pass
        raw = self._take(count)
        if len(raw) < count:
            raise _Closed("the service closed the connection in the middle of its answer")
        return raw

    def _chunked(self) -> bytes:
        parts, total = [], 0
        while (size := int(self._line().split(b";")[0] or b"0", 16)) > 0:
            total += size
            if total > MAX_BODY:
                raise ValueError(f"the service's answer is larger than {MAX_BODY} bytes")
            parts.append(self._exactly(size))
            self._line()  # the CRLF after each chunk
        while self._line():  # trailers
            pass
        return b"".join(parts)

    def close(self) -> None:
        self.sock.close()


def _closed_by_peer(conn: _Connection) -> bool:
    """An idle kept-alive connection with something to read: the service closed it (EOF)."""
    if conn.sock.fileno() < 0:
        return True
    poller = select.poll()
    poller.register(conn.sock, select.POLLIN)
    return bool(poller.poll(0))


def _path_value(op: routes.Op, param: str, value: str) -> str:
    """A path parameter checked as the service checks it, ready for the path: a VM's name as one, anything else as
    one segment (quoted)."""
    if param == op.vm_param:
        from .datastore.names import check_vm_name  # here, not at the top: the client stays cheap to import

        return check_vm_name(value)  # letters, digits and "._-": nothing in it needs quoting
    from urllib.parse import quote  # here: only a route of no VM (a network, a NIC) needs it

    try:
        return quote(routes.check_segment(value), safe="")
    except ValueError as exc:
        raise errors.ArgumentError(str(exc), hint="name it as the command's help says") from None


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


# -- JSON, through json's C module ----------------------------------------
class _JsonDefaults:
    """What ``_json``'s scanner reads from its decoder: ``json.loads``'s defaults (NaN and infinities accepted, as
    Python's encoder writes them)."""

    strict = True
    object_hook = object_pairs_hook = None
    parse_float, parse_int = float, int
    parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}.__getitem__


_scan = _json.make_scanner(_JsonDefaults())
_JSON_SPACE = " \t\n\r"


def _loads(text: str | bytes) -> Any:
    """``json.loads`` of one JSON document (bytes in UTF-8); ValueError if it is not one."""
    if isinstance(text, (bytes, bytearray)):
        text = text.decode()
    start = len(text) - len(text.lstrip(_JSON_SPACE))
    try:
        value, end = _scan(text, start)
    except StopIteration as exc:
        raise ValueError(f"not JSON: nothing to read at character {exc.value}") from None
    if text[end:].strip(_JSON_SPACE):
        raise ValueError(f"not JSON: more after character {end}")
    return value


def _dumps(value: Any) -> str:
    """``json.dumps(value)``: ASCII, ``", "`` and ``": "`` between items, NaN as NaN, a cycle refused."""
    encode = _json.make_encoder({}, _not_json, _json.encode_basestring_ascii, None, ": ", ", ", False, False, True)
    return "".join(encode(value, 0))


def _not_json(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# -- JSON -> the core API's types ------------------------------------------
def _decode(kind: str, data: Any) -> Any:
    if kind == "none":
        return None
    if kind == "text":
        return data["result"]
    if kind == "bytes":
        import base64

        return base64.b64decode(data["base64"], validate=True)
    if kind in ("events", "json"):
        return data
    if kind == "snapshot":
        return _snapshot(data)
    if kind == "snapshot_revert":
        return _snapshot(data[0]), data[1]
    # each type imported when its kind arrives: `vm list` needs only VmInfo, which is light
    if kind in ("vm", "vms", "start"):
        from .core.vminfo import StartResult, VmInfo

        if kind == "vms":
            return [VmInfo.from_dict(item) for item in data]
        return (VmInfo if kind == "vm" else StartResult).from_dict(data)
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
    from .spec.snapshot import Snapshot  # the class alone: not the .vmsd reader

    return Snapshot(uid=data["uid"], name=data["name"], parent=data["parent"], disks=data["disks"],
                    description=data["description"], created_us=round(data["created"] * 1e6),
                    memory_file=data["memory_file"])


def rebuild(tp: Any, data: Any) -> Any:
    """Turn JSON data back into ``tp`` (records, dataclasses, enums, paths, tuples, optionals)."""
    import dataclasses
    import enum
    import types
    import typing
    from pathlib import Path

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
        (item_type,) = typing.get_args(tp) or (typing.Any,)
        return [rebuild(item_type, item) for item in data]
    if (dataclasses.is_dataclass(tp) or (isinstance(tp, type) and issubclass(tp, Record))) and isinstance(data, dict):
        fields = _init_fields(tp)
        return tp(**{k: rebuild(fields[k], v) for k, v in data.items() if k in fields})
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(data)
    if tp is Path:
        return Path(data)
    return data


@functools.cache
def _init_fields(tp: type) -> dict[str, Any]:
    """A record's or dataclass's constructor fields and their types (resolved once: `vm list` rebuilds hundreds of
    VmInfo)."""
    import dataclasses
    import typing

    # The spec modules import Literal for type checkers only (a direct snapshot or power-on loads no typing): their
    # annotations find it here
    hints = typing.get_type_hints(tp, localns={"Literal": typing.Literal})
    names = tp._fields if issubclass(tp, Record) else [f.name for f in dataclasses.fields(tp) if f.init]
    return {name: hints.get(name, typing.Any) for name in names}
