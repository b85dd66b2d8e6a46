"""The Starlette application: one route per row of the route table, plus events, metrics and the web page.

Every request has passed the :class:`~minivisor.service.auth.Gate` (Host, then
token) before it reaches a route here. An operation's route reads the
request's values (a JSON body of at most :data:`MAX_BODY` bytes, or the query
string of a GET) and hands them to :meth:`Dispatcher.dispatch
<minivisor.service.dispatch.Dispatcher.dispatch>`; :func:`_answering` turns
whatever an endpoint raises into one answer (:mod:`minivisor.service.responses`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import queue
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from importlib.resources import files
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope as AsgiScope, Send

from ..errors import HvError, MethodNotAllowedError, PayloadTooLargeError, RequestError, RouteNotFoundError
from ..text import excerpt, is_number
from .auth import LOGIN_PATH, Access, Gate
from .bus import EventBus
from .consoles import console_routes
from .dispatch import Dispatcher
from .metrics import collect, prometheus
from .openapi import openapi
from .responses import dumps, encode, error_response, internal_error, json_response
from .routes import OPERATIONS, Op
from .static import StaticFiles
from .supervisor import Supervisor
from .tasks import Tasks, is_task, reports_progress

__all__ = ["build_app", "operation_routes", "MAX_BODY", "HEARTBEAT"]

log = logging.getLogger("minivisor.service")

MAX_DIGITS = 4300  # digits of an integer in a request, as many as Python converts (sys.get_int_max_str_digits)
MAX_BODY = 64 * 1024  # bytes; larger requests get 413 without being read (but uploads, streamed)
UPLOAD_QUEUE = 16  # chunks of an upload between the event loop and the worker thread that writes them
HEARTBEAT = 15.0  # seconds between SSE keep-alive comments
# The page runs only its own files: no inline script, no eval, nothing from elsewhere, never in a frame.
# Inline styles are allowed: xterm.js writes its theme and measured cell sizes into a <style> element it makes
# (styles cannot run code, and no text from the API ever becomes markup: textContent only).
PAGE_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
               "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
               "form-action 'self'; frame-ancestors 'none'")

Endpoint = Callable[[Request], Awaitable[Response]]


def build_app(calls: Dispatcher, bus: EventBus, access: Access, supervisor: Supervisor, *,
              autostart: bool) -> Starlette:
    """The application: the route table's operations, events, metrics, the OpenAPI document and the page."""
    spec = dumps(openapi())  # the route table does not change while the service runs
    tasks = Tasks(bus.publish)
    page = _page()
    static = StaticFiles()
    if static.missing:
        log.warning("the web page's libraries %s are not installed: run `npm ci` in the repository (setup.sh does)",
                    ", ".join(static.missing))

    async def static_file(request: Request) -> Response:
        asset = static.get(request.url.path)
        if asset is None:
            raise RouteNotFoundError(f"{excerpt(request.url.path)} is not a file of the page", hint="see /")
        return Response(asset.body, 200, {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
                        media_type=asset.media_type)

    async def login(request: Request) -> Response:
        token = (await _read_json_body(request)).get("token")
        if not isinstance(token, str):
            raise RequestError("log in with the API token", hint='send {"token": "<the datastore\'s token>"}')
        access.check_token("Bearer " + token)
        response = json_response(200, {"session": "open"})
        response.headers["Set-Cookie"] = access.sessions.set_cookie(access.sessions.open())
        return response

    async def logout(request: Request) -> Response:
        access.sessions.close(access.sessions.session_of(request.headers.get("cookie")))
        response = json_response(200, {"session": "closed"})
        response.headers["Set-Cookie"] = access.sessions.clear_cookie()
        return response

    async def session(request: Request) -> Response:  # the Gate let it through: the caller is authorized
        return json_response(200, {"session": "open"})

    async def upload(request: Request) -> Response:
        folder, name = request.path_params["folder"], request.path_params["name"]
        declared = request.headers.get("content-length", "")
        length = int(declared) if is_number(declared) else None  # h11 checks the header; this keeps int() safe
        task = tasks.start("upload", None, f"{folder}/{name}", measured=length is not None)
        report = tasks.reporter(task)
        try:
            entry = await _upload(calls, folder, name, _counted(request.stream(), length or 0, report))
        except BaseException as exc:
            tasks.end(task, exc)
            raise
        tasks.end(task)
        return json_response(201, entry)

    async def openapi_json(request: Request) -> Response:
        return Response(spec, 200, {"Cache-Control": "no-store"}, media_type="application/json")

    async def metrics_json(request: Request) -> Response:
        return json_response(200, await calls.call(collect, supervisor.watched()))

    async def metrics_text(request: Request) -> Response:
        text = prometheus(await calls.call(collect, supervisor.watched()))
        return Response(text, 200, {"Cache-Control": "no-store"}, media_type="text/plain; version=0.0.4")

    async def task_list(request: Request) -> Response:
        return json_response(200, tasks.list())

    async def events(request: Request) -> Response:
        return StreamingResponse(_event_stream(bus, request.query_params.get("vm")),
                                 headers={"Cache-Control": "no-store"}, media_type="text/event-stream")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        started = asyncio.create_task(_autostart(supervisor)) if autostart else None
        try:
            yield
        finally:
            if started is not None:
                started.cancel()

    endpoints = [Route("/", page, methods=["GET"]), Route("/index.html", page, methods=["GET"]),
                 Route(LOGIN_PATH, _answering(login), methods=["POST"]),
                 Route(LOGIN_PATH, _answering(logout), methods=["DELETE"]),
                 Route(LOGIN_PATH, _answering(session), methods=["GET"]),
                 Route("/v1/datastore/files/{folder}/{name}", _answering(upload), methods=["PUT"]),
                 Route("/ui/{path:path}", _answering(static_file), methods=["GET"]),
                 Route("/vendor/{path:path}", _answering(static_file), methods=["GET"]),
                 Route("/openapi.json", _answering(openapi_json), methods=["GET"]),
                 Route("/v1/events", _answering(events), methods=["GET"]),
                 Route("/v1/tasks", _answering(task_list), methods=["GET"]),
                 Route("/v1/metrics", _answering(metrics_json), methods=["GET"]),
                 Route("/metrics", _answering(metrics_text), methods=["GET"])]
    endpoints += console_routes(calls, access.sessions, _answering)
    endpoints += operation_routes(lambda op: _answering(_operation(calls, op, tasks if is_task(op) else None)))
    app = Starlette(routes=endpoints, middleware=[Middleware(Gate, access=access)],
                    exception_handlers={HTTPException: _no_route}, lifespan=lifespan)
    app.router.redirect_slashes = False  # "/v1/vms/" is not a route: 404, like any other
    return app


def operation_routes(endpoint_for: Callable[[Op], Endpoint]) -> list[Route]:
    """One route per row of the route table (named after its core method), answered by ``endpoint_for(op)``."""
    return [Route(op.path, endpoint_for(op), methods=[op.method], name=op.name) for op in OPERATIONS]


def _operation(calls: Dispatcher, op: Op, tasks: Tasks | None) -> Endpoint:
    """The endpoint of one core API method; with ``tasks``, each request is a task of that list."""
    measured = tasks is not None and reports_progress(op)

    async def endpoint(request: Request) -> Response:
        later: list[Callable[[], Awaitable[None]]] = []  # what the call left to run after its answer
        try:
            response = await answered(request, later)
        except BaseException:
            await _run_all(later)
            raise
        return _Then(response, later) if later else response

    async def answered(request: Request, later: list[Callable[[], Awaitable[None]]]) -> Response:
        if op.method == "GET":
            body = {key: _query_value(value) for key, value in request.query_params.multi_items()}
        else:
            body = await _read_json_body(request)
        if tasks is None:
            return answer(await calls.dispatch(op, dict(request.path_params), body, later=later))
        task = tasks.begin(op, {**body, **request.path_params})
        try:
            result = await calls.dispatch(op, dict(request.path_params), body,
                                          progress=tasks.reporter(task) if measured else None, later=later)
        except BaseException as exc:
            tasks.end(task, exc)
            raise
        tasks.end(task, result=result)
        return answer(result)

    def answer(result: Any) -> Response:
        return json_response(op.status, encode(result))

    return endpoint


class _Then:
    """An answer, then what its call left to run after it (whether the answer reached the client or not)."""

    def __init__(self, response: Response, later: list[Callable[[], Awaitable[None]]]) -> None:
        self.response, self.later = response, later

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        try:
            await self.response(scope, receive, send)
        finally:
            await _run_all(self.later)


async def _run_all(later: list[Callable[[], Awaitable[None]]]) -> None:
    for finish in later:
        await finish()


def _answering(endpoint: Endpoint) -> Endpoint:
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
            return error_response(internal_error(exc))

    return answered


async def _no_route(request: Request, exc: Exception) -> Response:
    """Starlette's 404 and 405 in the API's error format."""
    assert isinstance(exc, HTTPException)
    kind = MethodNotAllowedError if exc.status_code == 405 else RouteNotFoundError
    response = error_response(kind(f"{request.method} {excerpt(request.url.path)} is not a route of this API",
                                   hint="see /openapi.json"))
    if exc.headers and "Allow" in exc.headers:
        response.headers["Allow"] = exc.headers["Allow"]
    return response


async def _read_json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object; more than MAX_BODY bytes is refused before it is read (or as it arrives)."""
    declared = request.headers.get("content-length", "")
    if is_number(declared) and int(declared) > MAX_BODY:
        raise _too_large()
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:  # a chunked body declares no length
            raise _too_large()
    if not raw.strip():
        return {}
    try:
        data = _loads(raw)
    except ValueError as exc:
        raise RequestError(f"the request body is not JSON: {exc}", hint="send a JSON object") from None
    if not isinstance(data, dict):
        raise RequestError("the request body must be a JSON object", hint='e.g. {"hard": true}')
    return data


def _too_large() -> PayloadTooLargeError:
    return PayloadTooLargeError(f"the request body is larger than {MAX_BODY} bytes", hint="send a smaller request")


def _query_value(text: str) -> Any:
    try:
        return _loads(text)
    except ValueError:
        return text


def _loads(text: str | bytes | bytearray) -> Any:
    """JSON (ValueError if it is none), refused in one line (RequestError) where the service could not hand it
    on: nested deeper than Python's parser goes (its RecursionError was a 500), an integer longer than Python
    converts (its message said to call sys.set_int_max_str_digits), a string with a lone surrogate (``"\\ud800"``
    is JSON, but no file name or token can be encoded from it: another 500, deep in the core)."""
    try:
        data = json.loads(text, parse_int=_integer)
    except RecursionError:
        raise RequestError("the request nests arrays or objects too deeply", hint="send a flat JSON object") from None
    values = [data]
    while values:  # not recursive: the data may be nested almost as deep as the recursion limit
        value = values.pop()
        if isinstance(value, dict):
            values += [*value, *value.values()]
        elif isinstance(value, list):
            values += value
        elif isinstance(value, str) and not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:
                raise RequestError(f"the request holds a string that is not Unicode: {excerpt(value)}",
                                   hint="send each text as UTF-8, without lone surrogate escapes (\\ud800)") from None
    return data


def _integer(digits: str) -> int:
    if len(digits) > MAX_DIGITS:
        raise RequestError(f"the request holds a number of {len(digits)} digits",
                           hint="send numbers within their fields' bounds (see /openapi.json)")
    return int(digits)


def _page() -> Endpoint:
    html = files("minivisor.service").joinpath("web/index.html").read_bytes()
    headers = {"Content-Security-Policy": PAGE_POLICY, "X-Frame-Options": "DENY",
               "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}

    async def page(request: Request) -> Response:
        return Response(html, 200, headers, media_type="text/html; charset=utf-8")

    return page


async def _event_stream(bus: EventBus, only: str | None) -> AsyncIterator[bytes]:
    """Server-sent events until the client goes away (Starlette then cancels this) or the service stops."""
    subscription = bus.subscribe()
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
        bus.unsubscribe(subscription)


async def _counted(body: AsyncIterator[bytes], size: int, progress: Callable[[float], None]) -> AsyncIterator[bytes]:
    """``body`` as it arrives, its progress reported against the ``size`` it declared (0: none declared)."""
    received = 0
    async for chunk in body:
        received += len(chunk)
        if size:
            progress(100.0 * min(received, size) / size)
        yield chunk


async def _upload(calls: Dispatcher, folder: str, name: str, body: AsyncIterator[bytes]) -> Any:
    """Stream a request's body into ``Hypervisor.datastore_upload`` on a worker thread, a few chunks ahead at most
    (the body is larger than any JSON request: it is never held whole)."""
    chunks: queue.Queue[bytes | None | BaseException] = queue.Queue(maxsize=UPLOAD_QUEUE)

    def receive() -> Iterator[bytes]:
        while (chunk := chunks.get()) is not None:
            if isinstance(chunk, BaseException):
                raise chunk
            yield chunk

    stored = asyncio.ensure_future(calls.call(lambda hv: hv.datastore_upload(folder, name, receive())))
    try:
        async for chunk in body:
            if chunk and not await _hand_over(chunks, chunk, stored):
                break  # the core refused it (the answer says why)
        await _hand_over(chunks, None, stored)
    except BaseException:  # the client went away (or the service stops): the core drops what it wrote
        await _hand_over(chunks, RequestError("the upload was cut short", hint="upload the file again"), stored)
        raise
    return await stored


async def _hand_over(chunks: queue.Queue, item: Any, consumer: asyncio.Future) -> bool:
    """Queue ``item`` for the worker thread; False if it has finished (and will take no more)."""
    while True:
        try:
            chunks.put_nowait(item)
            return True
        except queue.Full:
            if consumer.done():
                return False
            await asyncio.sleep(0.002)


async def _autostart(supervisor: Supervisor) -> None:
    try:
        await supervisor.autostart()
    except Exception:  # noqa: BLE001 - the service keeps serving; the log says what went wrong
        log.exception("autostart failed")
