"""The hypervisor service: a REST API, server-sent events and metrics over the core API.

``minivisor serve`` runs one :class:`Service` per datastore. It is a thin layer:
every route is a row of :data:`minivisor.service.routes.OPERATIONS` dispatched to the
same :class:`~minivisor.core.hypervisor.Hypervisor` method the CLI calls, and every error
is an :class:`~minivisor.errors.HvError` turned into an HTTP status by
:func:`http_status` only.

It is a Starlette application on uvicorn (HTTP/1.1 through h11). The core API
blocks (a power-on with ``wait_ready`` waits for minutes), so each call runs on
a worker thread (:meth:`Service.run_blocking`); mutating calls on one VM take
turns through an in-process lock per VM. The HTTP side is hostile ground:

- every request is checked in this order: the ``Host`` header names this
  service (:class:`HostCheck`, against DNS rebinding), the bearer token, the
  body (at most :data:`MAX_BODY` bytes), then each value (known fields, JSON
  types, finite non-negative numbers, bounded strings and lists);
- a request must arrive whole within :data:`REQUEST_TIMEOUT` and an idle
  connection is closed after :data:`KEEP_ALIVE`; at most
  :func:`connection_cap` connections are open at once (:class:`GuardedH11Protocol`).

Files it keeps in ``<datastore>/.minivisor/``:

- ``token``: the bearer token (0600), created at first start. Every request
  but the static web page (``/``, which holds no data) must carry it.
- ``service.json``: address and pid while it runs (0600), so the CLI finds it.
- ``service.lock``: one service per datastore.

Only ``minivisor serve`` imports this module: the CLI talks to the service
through :mod:`minivisor.client` (stdlib only), so its start-up never pays for
Starlette, uvicorn or asyncio.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import functools
import hmac
import inspect
import ipaddress
import json
import logging
import math
import os
import queue
import re
import resource
import secrets
import signal
import socket
import threading
import time
import types
import typing
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from . import routes
from ..datastore.store import check_vm_name
from ..errors import (ArgumentError, AuthError, ConflictError, DiskError, GuestError, HostError, HvError, LockError,
                     NoSpaceError, NotFoundError, QmpError, RequestError, SpecError, StateError, VmmError)
from ..locks import try_lock

__all__ = ["Service", "HostCheck", "GuardedH11Protocol", "build_app", "check_arguments", "connection_cap",
           "http_status", "encode", "MAX_BODY", "read_token", "service_file"]

log = logging.getLogger("minivisor.service")

MAX_BODY = 64 * 1024  # bytes; larger requests get 413 without being read
MAX_STRING = 4096  # characters in one string value (a path: PATH_MAX)
MAX_ITEMS = 256  # values in one list (a command's words)
MAX_MESSAGE = 1000  # characters of an error message sent back: the backstop for a value the core echoed whole
OP_LOCK_TIMEOUT = 120.0  # seconds a request waits for another operation on the same VM
HEARTBEAT = 15.0  # seconds between SSE keep-alive comments
REQUEST_TIMEOUT = 10.0  # seconds for a whole request (head and body) to arrive, from its first byte
KEEP_ALIVE = 15.0  # seconds an idle connection stays open between two requests (client.py reuses it for less)
GRACE = 5.0  # seconds a stopping service gives requests in flight to finish
WORKERS = 64  # blocking core calls at once: long ones (power-on + wait_ready) must not queue behind each other
MAX_CONNECTIONS = 4096  # open connections at most (and at most half the descriptors the process may open)
BACKLOG = 1024  # connections the kernel queues before the service accepts them
PUBLIC_PATHS = {"/", "/index.html"}  # the static web page: no data, the token is typed into it
TOKEN_NAME = ".minivisor/token"  # named in the 401 hint without the datastore's path


# -- errors -> HTTP: the one place -------------------------------------------
def http_status(exc: HvError) -> int:
    """The HTTP status for an error (the REST API's only mapping)."""
    by_code = {"too-large": 413, "method-not-allowed": 405, "route-not-found": 404, "wrong-host": 421}
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
    message = exc.message if len(exc.message) <= MAX_MESSAGE else exc.message[:MAX_MESSAGE - 3] + "..."
    return {"error": {"type": type(exc).__name__, "code": exc.code, "message": message, "hint": exc.hint,
                      "exit_code": exc.exit_code}}


def error_response(exc: HvError) -> Response:
    """The JSON answer for an error. Refused before its body was read, a request closes its connection."""
    status = http_status(exc)
    headers = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if status in (401, 413, 421):
        headers["Connection"] = "close"
    return Response(dumps(error_body(exc)), status, headers, media_type="application/json")


def _excerpt(value: str, limit: int = 40) -> str:
    """A value from the request, quoted and cut short, for an error message."""
    return repr(value[:limit]) + ("..." if len(value) > limit else "")


def _internal_error(exc: Exception) -> HvError:
    error = HvError(f"internal error: {type(exc).__name__}: {exc}")
    error.code = "internal-error"
    return error


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


def json_response(status: int, data: Any) -> Response:
    return Response(dumps(data), status, {"Cache-Control": "no-store"}, media_type="application/json")


# -- the token and the service file ------------------------------------------
def token_file(root: Path) -> Path:
    return root / TOKEN_NAME


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
    from ..core.hypervisor import Hypervisor

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


def check_arguments(op: routes.Op, specs: dict[str, inspect.Parameter], path_params: dict[str, str],
                    body: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments for the core method, once every value of the request checks out."""
    for value in path_params.values():
        check_vm_name(value)
    fields = set(specs) - set(path_params)
    unknown = sorted(set(body) - fields)
    if unknown:
        raise RequestError(f"unknown field(s) for {op.name}: {', '.join(_excerpt(name) for name in unknown[:5])}",
                           hint=f"the fields are: {', '.join(sorted(fields)) or 'none'}")
    for name in sorted(fields):
        spec = specs[name]
        if name not in body:
            if spec.default is inspect.Parameter.empty:
                raise RequestError(f"missing field {name!r} for {op.name}", hint="see /openapi.json")
            continue
        if not _type_ok(body[name], spec.annotation):
            raise RequestError(f"field {name!r} has the wrong type ({type(body[name]).__name__})",
                               hint=f"expected {_describe(spec.annotation) or spec.annotation}")
        _check_bounds(name, body[name])
    return {**path_params, **body}


def _check_bounds(field: str, value: Any) -> None:
    """Every number finite and not negative (counts, sizes, seconds), strings and lists bounded.

    The shape of a value, checked before anything runs; the core API checks
    each argument's own range (a timeout's upper bound, a memory size).
    """
    if isinstance(value, list):
        if len(value) > MAX_ITEMS:
            raise ArgumentError(f"field {field!r} has {len(value)} items, more than {MAX_ITEMS}",
                                hint="send fewer items")
        for item in value:
            _check_bounds(field, item)
    elif isinstance(value, str) and len(value) > MAX_STRING:
        raise ArgumentError(f"field {field!r} is {len(value)} characters long, more than {MAX_STRING}",
                            hint="send a shorter value")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value) or value < 0:  # Python's json reads NaN and Infinity; JSON has neither
            raise ArgumentError(f"field {field!r} must be a finite number, not negative (got {value})",
                                hint="send a number such as 30")


def openapi() -> dict[str, Any]:
    """The OpenAPI 3 document of the REST API, built from the route table."""
    paths: dict[str, Any] = {}
    for op in routes.OPERATIONS:
        specs = _param_specs(op)
        from ..core.hypervisor import Hypervisor

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
    from .. import __version__

    return __version__


# -- the Host header ---------------------------------------------------------
_HOST_HEADER = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$")
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


class HostCheck:
    """Which ``Host`` headers name this service: the defence against DNS rebinding.

    A web page from ``evil.example`` whose name is made to resolve to 127.0.0.1
    reaches the service with ``Host: evil.example:8700``; the browser then lets
    that page read the answers. Only the address the service listens on (and,
    on loopback, localhost, 127.0.0.1 and [::1]) with its port is answered.
    Listening on every address (0.0.0.0 or ::), any IP address is accepted: an
    address is not a name, so it cannot be rebound.
    """

    def __init__(self, host: str, port: int) -> None:
        self.port = port
        host = host.lower()
        address = _ip(host)
        self.any_address = address is not None and address.is_unspecified
        loopback = host == "localhost" or (address is not None and address.is_loopback)
        self.names = (LOOPBACK_NAMES if loopback or self.any_address else frozenset()) | {host}

    def allows(self, header: str | None) -> bool:
        found = _HOST_HEADER.match(header or "")
        if found is None:
            return False
        name, port = found.group(1).strip("[]").lower(), found.group(2)
        if (int(port[1:]) if port else 80) != self.port:
            return False
        return name in self.names or (self.any_address and _ip(name) is not None)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


# -- the service -------------------------------------------------------------
class Service:
    """One datastore served over HTTP, with its VMMs supervised."""

    def __init__(self, root: Path | str, listen: str = "127.0.0.1:8700", *, autostart: bool = True) -> None:
        from ..core.hypervisor import Hypervisor
        from .bus import EventBus

        self.root = Path(root).absolute()
        self._first = Hypervisor(self.root)  # opens (creates) the datastore
        self._lock_fd = self._take_service_lock()
        self.token = ensure_token(self.root)
        self.bus = EventBus()
        self._pool: queue.LifoQueue[Any] = queue.LifoQueue()
        self._pool.put(self._first)
        self._first.on_event = self._on_event
        self._vm_locks: dict[str, asyncio.Lock] = {}
        self._workers = asyncio.Semaphore(WORKERS)
        self._specs = {op.name: _param_specs(op) for op in routes.OPERATIONS}
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit() or int(port) > 65535:
            raise RequestError(f"--listen {listen!r} is not HOST:PORT", hint="e.g. --listen 127.0.0.1:8700")
        self.sock = _listen(listen, host.strip("[]"), int(port))
        bound = self.sock.getsockname()[1]
        self.address = f"{host}:{bound}"
        self.url = f"http://{self.address}"
        self.hosts = HostCheck(host.strip("[]"), bound)
        from .supervisor import Supervisor

        self.supervisor = Supervisor(self)
        self.autostart = autostart

    def _take_service_lock(self) -> int:
        path = self.root / ".minivisor" / "service.lock"
        fd = try_lock(path)
        if fd is None:
            raise ConflictError(f"a minivisor service already runs for the datastore {self.root}",
                                hint=f"see {service_file(self.root)}, or stop that service first")
        return fd

    # -- life cycle ---------------------------------------------------------
    def serve_forever(self) -> None:
        """Serve until SIGTERM or SIGINT, then stop (running VMs keep running)."""
        self.start()
        try:
            server = _Server(self)
            # uvicorn handles SIGTERM and SIGINT while it serves, then raises the signal again
            # under the handlers it found: these, which let the service finish stopping.
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: None)
            asyncio.run(server.serve(sockets=[self.sock]))
        finally:
            self.close()

    def start(self) -> None:
        """Reattach to running VMMs and write the service file (autostart follows once it serves)."""
        self.supervisor.start()
        from ..vmm.process import process_start_ticks
        from ..spec.vmx import write_atomic

        record = {"url": self.url, "pid": os.getpid(), "start_ticks": process_start_ticks(os.getpid())}
        service_file(self.root).unlink(missing_ok=True)  # a stale one would keep its mode
        write_atomic(service_file(self.root), json.dumps(record).encode(), mode=0o600)

    def close(self) -> None:
        try:
            service_file(self.root).unlink(missing_ok=True)
        finally:
            self.supervisor.stop()
            self.bus.close()
            self.sock.close()
            os.close(self._lock_fd)

    # -- the core API, one Hypervisor per concurrent call ---------------------
    def hypervisor(self):
        from ..core.hypervisor import Hypervisor

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

    def authenticate(self, header: str | None) -> None:
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.token.encode()):
            raise AuthError("missing or wrong token",
                            hint=f"send 'Authorization: Bearer <token>'; the token is in the datastore's {TOKEN_NAME}")

    def check_host(self, header: str | None) -> None:
        if not self.hosts.allows(header):
            error = RequestError(f"this service does not answer for the host {_excerpt(header or '')}",
                                 hint=f"connect to {self.url}")
            error.code = "wrong-host"
            raise error

    async def dispatch(self, op: routes.Op, path_params: dict[str, str], body: dict[str, Any]) -> Any:
        """Check a request's values against the core method, then run it (mutations one at a time per VM)."""
        kwargs = check_arguments(op, self._specs[op.name], path_params, body)
        target = path_params.get("name") or path_params.get("source") or body.get("name")
        if not (op.mutates and isinstance(target, str)):
            return await self.run_blocking(self._invoke, op.name, kwargs)
        lock = self._vm_lock(target)
        try:
            await asyncio.wait_for(lock.acquire(), OP_LOCK_TIMEOUT)
        except TimeoutError:
            raise LockError(f"VM {target!r} is busy with another operation",
                            hint="retry when it has finished") from None
        try:
            return await self.run_blocking(self._invoke, op.name, kwargs)
        finally:
            lock.release()

    def _vm_lock(self, name: str) -> asyncio.Lock:
        check_vm_name(name)  # the core refuses such a name anyway; checked first so junk never becomes a key
        return self._vm_locks.setdefault(name.lower(), asyncio.Lock())

    def _invoke(self, method: str, kwargs: dict[str, Any]) -> Any:
        with self.hypervisor() as hv:
            return getattr(hv, method)(**kwargs)

    async def run_blocking(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """``func(*args, **kwargs)`` on a worker thread, at most :data:`WORKERS` at once.

        One daemon thread per call rather than a pool that interpreter exit
        waits for: a power-on with ``wait_ready`` blocks for minutes, and a
        stopping service must not wait for it (as before the port: the core is
        crash-safe, and the next start finishes or undoes what was cut short).
        """
        loop = asyncio.get_running_loop()
        async with self._workers:
            done: asyncio.Future[Any] = loop.create_future()

            def work() -> None:
                try:
                    outcome = (func(*args, **kwargs), None)
                except BaseException as exc:  # noqa: BLE001 - handed to the awaiting request
                    outcome = (None, exc)
                try:
                    loop.call_soon_threadsafe(_settle, done, *outcome)
                except RuntimeError:
                    pass  # the loop has closed: the service stopped while this call ran

            threading.Thread(target=work, name=f"core {getattr(func, '__name__', 'call')}", daemon=True).start()
            return await done


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.cancelled():
        return  # the request was cancelled (the service is stopping); the call finished anyway
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


class _Lease:
    def __init__(self, pool: queue.LifoQueue[Any], hv: Any) -> None:
        self.pool, self.hv = pool, hv

    def __enter__(self):
        return self.hv

    def __exit__(self, *exc: object) -> None:
        self.pool.put(self.hv)


def _listen(listen: str, host: str, port: int) -> socket.socket:
    """The listening socket, bound now so a busy port is one clear error before anything starts."""
    # IPPROTO_TCP named, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say they are
    # TCP, and uvicorn writes a response's head and body apart: with Nagle and the client's delayed
    # ACK, each response on a kept-alive connection would wait 40 ms.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)  # connections made before uvicorn runs wait in the backlog
    except OSError as exc:
        sock.close()
        raise HostError(f"cannot listen on {listen}: {exc.strerror}",
                        hint="choose another port with --listen HOST:PORT") from exc
    return sock


# -- HTTP: the application ------------------------------------------------------
def build_app(service: Service) -> Starlette:
    """The Starlette application: one route per row of the route table, plus events, metrics and the page."""
    spec = dumps(openapi())  # the route table does not change while the service runs
    page = _page()

    async def openapi_json(request: Request) -> Response:
        return Response(spec, 200, {"Cache-Control": "no-store"}, media_type="application/json")

    async def metrics_json(request: Request) -> Response:
        from .metrics import collect

        return json_response(200, await service.run_blocking(collect, service))

    async def metrics_text(request: Request) -> Response:
        from .metrics import collect, prometheus

        text = prometheus(await service.run_blocking(collect, service))
        return Response(text, 200, {"Cache-Control": "no-store"}, media_type="text/plain; version=0.0.4")

    async def events(request: Request) -> Response:
        return StreamingResponse(_event_stream(service, request.query_params.get("vm")),
                                 headers={"Cache-Control": "no-store"}, media_type="text/event-stream")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        autostart = asyncio.create_task(_autostart(service)) if service.autostart else None
        try:
            yield
        finally:
            if autostart is not None:
                autostart.cancel()

    endpoints = [Route("/", page, methods=["GET"]), Route("/index.html", page, methods=["GET"]),
                 Route("/openapi.json", _answering(openapi_json), methods=["GET"]),
                 Route("/v1/events", _answering(events), methods=["GET"]),
                 Route("/v1/metrics", _answering(metrics_json), methods=["GET"]),
                 Route("/metrics", _answering(metrics_text), methods=["GET"])]
    endpoints += [Route(op.path, _answering(_operation(service, op)), methods=[op.method], name=op.name)
                  for op in routes.OPERATIONS]
    app = Starlette(routes=endpoints, middleware=[Middleware(_Gate, service=service)],
                    exception_handlers={HTTPException: _no_route}, lifespan=lifespan)
    app.router.redirect_slashes = False  # "/v1/vms/" is not a route: 404, like any other
    return app


def _operation(service: Service, op: routes.Op):
    """The endpoint of one core API method."""

    async def endpoint(request: Request) -> Response:
        if op.method == "GET":
            body = {key: _query_value(value) for key, value in request.query_params.multi_items()}
        else:
            body = await _read_json_body(request)
        result = await service.dispatch(op, dict(request.path_params), body)
        return json_response(op.status, encode(result))

    return endpoint


def _answering(endpoint: Callable[[Request], typing.Awaitable[Response]]):
    """One place turns what an endpoint raises into an answer: an HvError gets its status, a client
    that went away gets nothing, anything else a 500 (and its traceback goes to the log)."""

    @functools.wraps(endpoint)
    async def answered(request: Request) -> Response:
        try:
            return await endpoint(request)
        except HvError as exc:
            return error_response(exc)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody reads it
        except Exception as exc:  # noqa: BLE001 - one line to the client, the traceback to the log
            log.exception("internal error on %s %s", request.method, request.url.path)
            return error_response(_internal_error(exc))

    return answered


async def _no_route(request: Request, exc: Exception) -> Response:
    """Starlette's 404 and 405 in the API's error format."""
    assert isinstance(exc, HTTPException)
    error = RequestError(f"{request.method} {_excerpt(request.url.path)} is not a route of this API",
                         hint="see /openapi.json")
    error.code = "method-not-allowed" if exc.status_code == 405 else "route-not-found"
    response = error_response(error)
    if exc.headers and "Allow" in exc.headers:
        response.headers["Allow"] = exc.headers["Allow"]
    return response


async def _read_json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object; more than MAX_BODY bytes is refused before it is read (or as it arrives)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise _too_large()
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:  # a chunked body declares no length
            raise _too_large()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise RequestError(f"the request body is not JSON: {exc}", hint="send a JSON object") from None
    if not isinstance(data, dict):
        raise RequestError("the request body must be a JSON object", hint='e.g. {"hard": true}')
    return data


def _too_large() -> RequestError:
    error = RequestError(f"the request body is larger than {MAX_BODY} bytes", hint="send a smaller request")
    error.code = "too-large"
    return error


def _query_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _page() -> Callable[[Request], typing.Awaitable[Response]]:
    from importlib.resources import files

    html = files("minivisor.service").joinpath("web/index.html").read_bytes()
    headers = {"Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
                                          "style-src 'self' 'unsafe-inline'",
               "X-Frame-Options": "DENY"}

    async def page(request: Request) -> Response:
        return Response(html, 200, headers, media_type="text/html; charset=utf-8")

    return page


async def _event_stream(service: Service, only: str | None):
    """Server-sent events until the client goes away (Starlette then cancels this) or the service stops."""
    subscription = service.bus.subscribe()
    try:
        yield b": minivisor events\n\n"
        while True:
            try:
                event = await asyncio.wait_for(subscription.get(), HEARTBEAT)
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            if event is None:
                return
            if only and event.get("vm", "").lower() != only.lower():
                continue
            yield f"id: {event['id']}\nevent: {event['type']}\ndata: ".encode() + dumps(event) + b"\n\n"
    finally:
        service.bus.unsubscribe(subscription)


async def _autostart(service: Service) -> None:
    try:
        await service.supervisor.autostart()
    except Exception:  # noqa: BLE001 - the service keeps serving; the log says what went wrong
        log.exception("autostart failed")


class _Gate:
    """Every request passes here first: its Host must name this service, then (but for the page) its token must be right."""

    def __init__(self, app: ASGIApp, service: Service) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            try:
                self.service.check_host(_header(scope, b"host"))
                if scope["path"] not in PUBLIC_PATHS:
                    self.service.authenticate(_header(scope, b"authorization"))
            except HvError as exc:
                await error_response(exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _header(scope: Scope, name: bytes) -> str | None:
    """The value of a header sent exactly once (twice is as good as none: which one would count?)."""
    values = [value for key, value in scope["headers"] if key == name]
    return values[0].decode("latin-1") if len(values) == 1 else None


# -- HTTP: the server ------------------------------------------------------------
def connection_cap() -> int:
    """How many connections the service holds at once: MAX_CONNECTIONS, or half the descriptors it may open.

    The other half is for VMMs, QMP sockets and files. The soft limit is raised
    towards the hard one first; running out of descriptors would make every
    ``accept`` fail (each with a traceback in the log).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * MAX_CONNECTIONS
    if soft < wanted:
        soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return max(16, min(MAX_CONNECTIONS, soft // 2))


class GuardedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 connection with the limits it lacks (as of uvicorn 0.55).

    uvicorn closes a connection only when it stays idle *between* two requests
    (``timeout_keep_alive``, armed when a response completes). A connection
    that never sends a request, or sends its head a byte at a time
    (slowloris), is kept for ever, and each such connection costs a descriptor.
    Here a request must arrive whole, head and body, within
    :data:`REQUEST_TIMEOUT` of the connection opening or of its first byte
    after the previous response; the deadline is not pushed back by each
    byte, so trickling does not help. Once a request is in, the handler takes
    as long as it needs (a power-on, an event stream).

    And beyond :func:`connection_cap` open connections (uvicorn's
    ``limit_concurrency``, which only answers *requests* with 503), a new
    connection gets a 503 and is closed at once.
    """

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        if self.limit_concurrency is not None and len(self.connections) >= self.limit_concurrency:
            transport.write(_TOO_MANY)
            transport.close()
            return
        self._expect_request()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        cycle = self.cycle
        if cycle is None or cycle.response_complete or cycle.more_body:
            self._expect_request()  # a head or a body is still on its way
        else:
            self._cancel_deadline()  # the request is in; the handler runs

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def _expect_request(self) -> None:
        if self._deadline is None and not self.transport.is_closing():
            self._deadline = self.loop.call_later(REQUEST_TIMEOUT, self._too_slow)

    def _cancel_deadline(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        """No whole request in time: close (a handler waiting for the body sees the client gone)."""
        self._deadline = None
        self.transport.close()


def _canned(exc: HvError) -> bytes:
    """A whole HTTP response for an error, for a connection refused before it sent a request."""
    status, body = http_status(exc), dumps(error_body(exc))
    return (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


_TOO_MANY = _canned(HostError("the service has too many open connections", hint="retry in a moment"))


class _Server(uvicorn.Server):
    """uvicorn for one Service: its app, the guarded protocol, its limits and timeouts."""

    def __init__(self, service: Service) -> None:
        super().__init__(uvicorn.Config(
            build_app(service), http=GuardedH11Protocol, ws="none", lifespan="on", loop="asyncio",
            log_config=None, log_level="warning", access_log=False, proxy_headers=False, server_header=False,
            timeout_keep_alive=int(KEEP_ALIVE), timeout_graceful_shutdown=int(GRACE),
            limit_concurrency=connection_cap(), backlog=BACKLOG))
        self.service = service

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.service.bus.close()  # event streams end, so their connections close instead of holding the stop
        await super().shutdown(sockets)


def wait_for_url(root: Path, timeout: float = 10.0) -> str:
    """The URL of the service for ``root`` once it is up (for tests and scripts)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return json.loads(service_file(root).read_text())["url"]
        except (OSError, ValueError, KeyError):
            time.sleep(0.02)
    raise HostError(f"the service for {root} did not start within {timeout:.0f} s")
