"""The limits on connections that uvicorn lacks: a deadline for each request, a cap on open connections.

uvicorn closes a connection that stays idle *between* two requests after
:data:`KEEP_ALIVE`, and nothing else: one that never sends a request, or sends
its head a byte at a time (slowloris), would be kept for ever at the cost of a
descriptor. :class:`GuardedH11Protocol` closes it unless the whole request
arrives within :data:`REQUEST_TIMEOUT` (an upload's head only), and answers a connection beyond
:func:`connection_cap` with 503 at once.
"""

from __future__ import annotations

import asyncio
import resource
from http import HTTPStatus

from uvicorn.protocols.http.h11_impl import H11Protocol

from ..errors import HostError, HvError
from .responses import dumps, error_body, http_status

__all__ = ["GuardedH11Protocol", "connection_cap", "REQUEST_TIMEOUT", "KEEP_ALIVE", "MAX_CONNECTIONS"]

REQUEST_TIMEOUT = 10.0  # seconds for a whole request (head and body) to arrive, from its first byte
KEEP_ALIVE = 15.0  # seconds an idle connection stays open between two requests (client.py reuses it for less)
UPLOAD_PREFIX = "/v1/datastore/files/"  # PUT: a streamed upload (service.app)
MAX_CONNECTIONS = 4096  # open connections at most (and at most half the descriptors the process may open)


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

    A request must arrive whole, head and body, within :data:`REQUEST_TIMEOUT`
    of the connection opening or of its first byte after the previous
    response; the deadline is not pushed back by each byte, so trickling does
    not help. Once a request is in, the handler takes as long as it needs (a
    power-on, an event stream).

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
        if getattr(self, "_upgraded", False):
            return  # the connection is a websocket's now (a console: open as long as it is used)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and _is_upload(cycle.scope):
            self._cancel_deadline()  # its head is in (and the Gate has checked it): its body takes what it takes
            return
        if cycle is None or cycle.response_complete or cycle.more_body:
            self._expect_request()  # a head or a body is still on its way
        else:
            self._cancel_deadline()  # the request is in; the handler runs

    def handle_websocket_upgrade(self, event) -> None:  # type: ignore[no-untyped-def]
        """The request deadline ends here: the websocket protocol takes the connection over."""
        self._upgraded = True
        self._cancel_deadline()
        super().handle_websocket_upgrade(event)

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


def _is_upload(scope) -> bool:  # type: ignore[no-untyped-def]
    """An upload into the datastore (an ISO of gigabytes): the one request whose body may take minutes."""
    return scope["method"] == "PUT" and scope["path"].startswith(UPLOAD_PREFIX)


def _canned(exc: HvError) -> bytes:
    """A whole HTTP response for an error, for a connection refused before it sent a request."""
    status, body = http_status(exc), dumps(error_body(exc))
    return (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


_TOO_MANY = _canned(HostError("the service has too many open connections", hint="retry in a moment"))
