"""The hypervisor service: a REST API, server-sent events and metrics over the core API.

``minivisor serve`` runs one :class:`Service` per datastore. It is a thin layer:
every route is a row of :data:`minivisor.routes.OPERATIONS` dispatched to the
same :class:`~minivisor.api.Hypervisor` method the CLI calls, and every error
is an :class:`~minivisor.errors.HvError` turned into an HTTP status by
:func:`http_status` only.

Files it keeps in ``<datastore>/.minivisor/``:

- ``token``: the bearer token (0600), created at first start. Every request
  but the static web page (``/``, which holds no data) must carry it.
- ``service.json``: address and pid while it runs (0600), so the CLI finds it.
- ``service.lock``: one service per datastore.

Stdlib only (``http.server`` with a thread per connection): the service needs
no framework, and the CLI, which imports :mod:`minivisor.client`, stays fast.
"""

from __future__ import annotations

import dataclasses
import enum
import hmac
import inspect
import json
import logging
import os
import queue
import secrets
import socket
import threading
import time
import types
import typing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from . import routes
from .locks import try_lock
from .errors import (ArgumentError, AuthError, ConflictError, DiskError, GuestError, HostError, HvError, LockError,
                     NoSpaceError, NotFoundError, QmpError, RequestError, SpecError, StateError, VmmError)

__all__ = ["Service", "http_status", "encode", "MAX_BODY", "read_token", "service_file"]

log = logging.getLogger("minivisor.service")

MAX_BODY = 64 * 1024  # bytes; larger requests get 413 without being read
OP_LOCK_TIMEOUT = 120.0  # seconds a request waits for another operation on the same VM
HEARTBEAT = 15.0  # seconds between SSE keep-alive comments
PUBLIC_PATHS = {"/", "/index.html"}  # the static web page: no data, the token is typed into it


# -- errors -> HTTP: the one place -------------------------------------------
def http_status(exc: HvError) -> int:
    """The HTTP status for an error (the REST API's only mapping)."""
    by_code = {"too-large": 413, "method-not-allowed": 405, "route-not-found": 404}
    if exc.code in by_code:
        return by_code[exc.code]
    for cls, status in ((AuthError, 401), (RequestError, 400), (ArgumentError, 400), (NotFoundError, 404),
                        (NoSpaceError, 507), (LockError, 409),
                        (StateError, 409), (ConflictError, 409), (SpecError, 422), (DiskError, 422),
                        (HostError, 503), (QmpError, 502), (VmmError, 502), (GuestError, 504)):
        if isinstance(exc, cls):
            return status
    return 500


def error_body(exc: HvError) -> dict[str, Any]:
    return {"error": {"type": type(exc).__name__, "code": exc.code, "message": exc.message, "hint": exc.hint,
                      "exit_code": exc.exit_code}}


# -- results -> JSON ---------------------------------------------------------
def encode(result: Any) -> Any:
    """Plain JSON data for a core API result (the client rebuilds the typed object)."""
    if result is None:
        return {}
    if isinstance(result, str):
        return {"result": result}
    if isinstance(result, (list, tuple)):
        return [encode(item) for item in result]
    if hasattr(result, "to_dict"):
        return result.to_dict()
    if dataclasses.is_dataclass(result):
        return dataclasses.asdict(result)
    return result


def _json_default(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def dumps(data: Any) -> bytes:
    return json.dumps(data, default=_json_default, separators=(",", ":")).encode()


# -- the token and the service file ------------------------------------------
def token_file(root: Path) -> Path:
    return root / ".minivisor" / "token"


def service_file(root: Path) -> Path:
    return root / ".minivisor" / "service.json"


def read_token(root: Path) -> str | None:
    try:
        return token_file(root).read_text().strip() or None
    except OSError:
        return None


def ensure_token(root: Path) -> str:
    """The datastore's token, created (owner-only) if there is none yet."""
    path = token_file(root)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)
        token = read_token(root)
        if token is None:
            raise HostError(f"the token file {path} is empty", hint="delete it; the service makes a new one") from None
        return token
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(32) + "\n")
    return read_token(root) or ""


# -- parameters ------------------------------------------------------------
def _param_specs(op: routes.Op) -> dict[str, inspect.Parameter]:
    """The JSON-able parameters of the core method behind ``op`` (callables left out)."""
    from .api import Hypervisor

    signature = inspect.signature(getattr(Hypervisor, op.name), eval_str=True)
    return {name: p for name, p in signature.parameters.items()
            if name != "self" and not _is_callable(p.annotation)}


def _is_callable(annotation: Any) -> bool:
    text = repr(annotation)
    return "Callable" in text


def _type_ok(value: Any, annotation: Any) -> bool:
    if annotation is inspect.Parameter.empty or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(annotation) or (Any,)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation in (str, Path):
        return isinstance(value, str)
    return False


def _describe(annotation: Any) -> dict[str, Any]:
    """A JSON schema for a parameter annotation (for the OpenAPI document)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [_describe(a) for a in typing.get_args(annotation) if a is not type(None)]
        schema = options[0] if len(options) == 1 else {"anyOf": options}
        return {**schema, "nullable": True} if type(None) in typing.get_args(annotation) else schema
    if origin is list:
        return {"type": "array", "items": _describe(typing.get_args(annotation)[0])}
    return {bool: {"type": "boolean"}, int: {"type": "integer"}, float: {"type": "number"},
            str: {"type": "string"}, Path: {"type": "string"}}.get(annotation, {})


def openapi() -> dict[str, Any]:
    """The OpenAPI 3 document of the REST API, built from the route table."""
    paths: dict[str, Any] = {}
    for op in routes.OPERATIONS:
        specs = _param_specs(op)
        from .api import Hypervisor

        doc = (inspect.getdoc(getattr(Hypervisor, op.name)) or "").split("\n")[0]
        entry: dict[str, Any] = {"operationId": op.name, "summary": doc,
                                 "parameters": [{"name": p, "in": "path", "required": True,
                                                 "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"}}
                                                for p in op.path_params],
                                 "responses": {str(op.status): {"description": op.returns},
                                               "default": {"description": "an error: {error: {type, code, message, hint}}"}}}
        body = {n: p for n, p in specs.items() if n not in op.path_params}
        if body and op.method in ("POST", "PUT"):
            entry["requestBody"] = {"content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": False,
                "properties": {n: _describe(p.annotation) for n, p in body.items()},
                "required": [n for n, p in body.items() if p.default is inspect.Parameter.empty]}}}}
        elif body:
            entry["parameters"] += [{"name": n, "in": "query", "schema": _describe(p.annotation)}
                                    for n, p in body.items()]
        paths.setdefault(op.path, {})[op.method.lower()] = entry
    for path, summary in (("/v1/events", "Server-sent events of VM state changes"),
                          ("/v1/metrics", "Per-VM and host metrics (JSON)"),
                          ("/metrics", "Metrics in Prometheus text format")):
        paths[path] = {"get": {"summary": summary, "responses": {"200": {"description": summary}}}}
    return {"openapi": "3.0.3", "info": {"title": "minivisor", "version": _version()},
            "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
            "security": [{"bearer": []}], "paths": paths}


def _version() -> str:
    from . import __version__

    return __version__


# -- the service -------------------------------------------------------------
class Service:
    """One datastore served over HTTP, with its VMMs supervised."""

    def __init__(self, root: Path | str, listen: str = "127.0.0.1:8700", *, autostart: bool = True) -> None:
        from .api import Hypervisor
        from .events import EventBus

        self.root = Path(root).absolute()
        self._first = Hypervisor(self.root)  # opens (creates) the datastore
        self._lock_fd = self._take_service_lock()
        self.token = ensure_token(self.root)
        self.bus = EventBus()
        self._pool: queue.LifoQueue[Any] = queue.LifoQueue()
        self._pool.put(self._first)
        self._first.on_event = self._on_event
        self._op_locks: dict[str, threading.Lock] = {}
        self._op_locks_guard = threading.Lock()
        self._specs = {op.name: _param_specs(op) for op in routes.OPERATIONS}
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit() or int(port) > 65535:
            raise RequestError(f"--listen {listen!r} is not HOST:PORT", hint="e.g. --listen 127.0.0.1:8700")
        try:
            self.httpd = _Server((host.strip("[]"), int(port)), _Handler)
        except OSError as exc:
            raise HostError(f"cannot listen on {listen}: {exc.strerror}",
                            hint="choose another port with --listen HOST:PORT") from exc
        self.httpd.service = self
        self.address = f"{host}:{self.httpd.server_address[1]}"
        self.url = f"http://{self.address}"
        from .supervisor import Supervisor

        self.supervisor = Supervisor(self)
        self._autostart = autostart

    def _take_service_lock(self) -> int:
        path = self.root / ".minivisor" / "service.lock"
        fd = try_lock(path)
        if fd is None:
            raise ConflictError(f"a minivisor service already runs for the datastore {self.root}",
                                hint=f"see {service_file(self.root)}, or stop that service first")
        return fd

    # -- life cycle ---------------------------------------------------------
    def serve_forever(self) -> None:
        self.start()
        try:
            self.httpd.serve_forever(poll_interval=0.2)
        finally:
            self.close()

    def start(self) -> None:
        """Reattach to running VMMs, write the service file, autostart VMs."""
        self.supervisor.start(autostart=self._autostart)
        from .vmm import process_start_ticks
        from .vmx import write_atomic

        record = {"url": self.url, "pid": os.getpid(), "start_ticks": process_start_ticks(os.getpid())}
        write_atomic(service_file(self.root), json.dumps(record).encode())
        os.chmod(service_file(self.root), 0o600)

    def close(self) -> None:
        try:
            service_file(self.root).unlink(missing_ok=True)
        finally:
            self.supervisor.stop()
            self.bus.close()
            self.httpd.server_close()
            os.close(self._lock_fd)

    # -- the core API, one Hypervisor per concurrent request ------------------
    def hypervisor(self):
        from .api import Hypervisor

        try:
            hv = self._pool.get_nowait()
        except queue.Empty:
            hv = Hypervisor(self.root, on_event=self._on_event)
        return _Lease(self._pool, hv)

    def _on_event(self, event: dict[str, Any]) -> None:
        self.supervisor.notice(event)
        self.bus.publish(event)

    def emit(self, kind: str, name: str, **data: Any) -> None:
        """An event the service itself observed (crash, reattach): logged and published."""
        with self.hypervisor() as hv:
            hv._emit(kind, name, **data)

    def op_lock(self, name: str) -> threading.Lock:
        with self._op_locks_guard:
            return self._op_locks.setdefault(name.lower(), threading.Lock())

    def call(self, op: routes.Op, path_params: dict[str, str], body: dict[str, Any]) -> Any:
        """Check the parameters against the core method, then run it."""
        specs = self._specs[op.name]
        for name, value in path_params.items():
            from .datastore import check_vm_name

            check_vm_name(value)
        unknown = sorted(set(body) - (set(specs) - set(path_params)))
        if unknown:
            raise RequestError(f"unknown field(s) for {op.name}: {', '.join(unknown)}",
                               hint=f"the fields are: {', '.join(sorted(set(specs) - set(path_params))) or 'none'}")
        for name, spec in specs.items():
            if name in path_params:
                continue
            if name not in body:
                if spec.default is inspect.Parameter.empty:
                    raise RequestError(f"missing field {name!r} for {op.name}", hint="see /openapi.json")
                continue
            if not _type_ok(body[name], spec.annotation):
                raise RequestError(f"field {name!r} has the wrong type ({type(body[name]).__name__})",
                                   hint=f"expected {_describe(spec.annotation) or spec.annotation}")
        kwargs = {**path_params, **body}
        target = path_params.get("name") or path_params.get("source") or body.get("name")
        lock = self.op_lock(target) if op.mutates and isinstance(target, str) else None
        if lock is not None and not lock.acquire(timeout=OP_LOCK_TIMEOUT):
            raise LockError(f"VM {target!r} is busy with another operation", hint="retry when it has finished")
        try:
            with self.hypervisor() as hv:
                return getattr(hv, op.name)(**kwargs)
        finally:
            if lock is not None:
                lock.release()


class _Lease:
    def __init__(self, pool: queue.LifoQueue[Any], hv: Any) -> None:
        self.pool, self.hv = pool, hv

    def __enter__(self):
        return self.hv

    def __exit__(self, *exc: object) -> None:
        self.pool.put(self.hv)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512
    allow_reuse_address = True
    service: Service


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "minivisor"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        # headers and body go out in separate writes: without this, Nagle's algorithm and the
        # client's delayed ACK add 40 ms to every response on a kept-alive connection
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        log.debug("%s " + format, self.client_address[0], *args)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    # -- one request ---------------------------------------------------------
    def _handle(self, method: str) -> None:
        service = self.server.service
        url = urlsplit(self.path)
        try:
            if method == "GET" and url.path in PUBLIC_PATHS:
                return self._send_static()
            self._authenticate(service)
            body = self._read_body(method)
            if method == "GET" and url.path == "/openapi.json":
                return self._send(200, openapi())
            if method == "GET" and url.path == "/v1/events":
                return self._stream_events(service, dict(parse_qsl(url.query)))
            if method == "GET" and url.path in ("/v1/metrics", "/metrics"):
                from .metrics import collect, prometheus

                data = collect(service)
                if url.path == "/metrics":
                    return self._send_bytes(200, prometheus(data).encode(), "text/plain; version=0.0.4")
                return self._send(200, data)
            op, params, path_known = routes.match(method, url.path)
            if op is None:
                error = RequestError(f"{method} {url.path} is not a route of this API", hint="see /openapi.json")
                error.code = "method-not-allowed" if path_known else "route-not-found"
                raise error
            if method == "GET":
                body = {k: _query_value(v) for k, v in parse_qsl(url.query)}
            result = service.call(op, params, body)
            self._send(op.status, encode(result))
        except HvError as exc:
            self._send(http_status(exc), error_body(exc))
        except Exception as exc:  # noqa: BLE001 - one line to the client, the traceback to the log
            log.exception("internal error on %s %s", method, url.path)
            self._send(500, {"error": {"type": "HvError", "code": "internal-error",
                                       "message": f"internal error: {type(exc).__name__}: {exc}", "hint": None,
                                       "exit_code": 1}})

    def _authenticate(self, service: Service) -> None:
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), service.token.encode()):
            self.close_connection = True
            raise AuthError("missing or wrong token",
                            hint=f"send 'Authorization: Bearer <token>'; the token is in {token_file(service.root)}")

    def _read_body(self, method: str) -> dict[str, Any]:
        length_text = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise RequestError("chunked request bodies are not accepted", hint="send a Content-Length")
        length = int(length_text) if length_text and length_text.isdigit() else 0
        if length > MAX_BODY:
            self.close_connection = True  # the body is left unread
            error = RequestError(f"the request body has {length} bytes, more than {MAX_BODY}",
                                 hint="send a smaller request")
            error.code = "too-large"
            raise error
        raw = self.rfile.read(length) if length else b""
        if not raw.strip():
            return {}
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise RequestError(f"the request body is not JSON: {exc}", hint="send a JSON object") from None
        if not isinstance(data, dict):
            raise RequestError("the request body must be a JSON object", hint='e.g. {"hard": true}')
        return data

    def _send(self, status: int, data: Any) -> None:
        self._send_bytes(status, dumps(data), "application/json")

    def _send_bytes(self, status: int, payload: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        if status == 401:
            self.send_header("WWW-Authenticate", "Bearer")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)

    def _send_static(self) -> None:
        from importlib.resources import files

        page = files("minivisor").joinpath("web/index.html").read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(page)))
        self.send_header("Content-Security-Policy", "default-src 'self'; script-src 'self' 'unsafe-inline'; "
                                                    "style-src 'self' 'unsafe-inline'")
        self.send_header("X-Frame-Options", "DENY")
        self.end_headers()
        self.wfile.write(page)

    def _stream_events(self, service: Service, query: dict[str, str]) -> None:
        """Server-sent events until the client goes away or the service stops."""
        only = query.get("vm")
        subscription = service.bus.subscribe()
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            self.wfile.write(b": minivisor events\n\n")
            self.wfile.flush()
            while True:
                try:
                    event = subscription.get(timeout=HEARTBEAT)
                except queue.Empty:
                    self.wfile.write(b": keep-alive\n\n")
                    self.wfile.flush()
                    continue
                if event is None:
                    return
                if only and event.get("vm", "").lower() != only.lower():
                    continue
                self.wfile.write(f"id: {event['id']}\nevent: {event['type']}\ndata: ".encode() + dumps(event) + b"\n\n")
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            return
        finally:
            service.bus.unsubscribe(subscription)


def _query_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def wait_for_url(root: Path, timeout: float = 10.0) -> str:
    """The URL of the service for ``root`` once it is up (for tests and scripts)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return json.loads(service_file(root).read_text())["url"]
        except (OSError, ValueError, KeyError):
            time.sleep(0.02)
    raise HostError(f"the service for {root} did not start within {timeout:.0f} s")
