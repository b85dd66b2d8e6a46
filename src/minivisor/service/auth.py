"""Who may ask: a request must name this service in its ``Host`` header, then carry the token or a session.

:class:`Gate` runs both checks on every request before it is routed, in that
order: a request for another host gets 421 and no data (against DNS
rebinding), one without the right token or web session 401 (naming no path),
a change on a session's cookie from another site's page 403. The static web
page and its files (:data:`PUBLIC_PATHS`, :data:`~minivisor.service.static.PUBLIC_PREFIXES`) hold no
data and need no token: the token is typed into the page once (``POST /v1/session``).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import re
import secrets
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import AuthError, HostError, HvError, WrongHostError
from ..text import excerpt
from .discovery import TOKEN_FILE
from .responses import error_response
from .sessions import CSRF_HEADER, Sessions
from .static import PUBLIC_PREFIXES

__all__ = ["Access", "Gate", "HostCheck", "PUBLIC_PATHS", "LOGIN_PATH", "ensure_token"]

PUBLIC_PATHS = frozenset({"/", "/index.html"})
LOGIN_PATH = "/v1/session"  # POST: the token in the body, a session cookie back
SAFE_METHODS = frozenset({"GET", "HEAD"})  # they change nothing: the cookie alone authorizes them
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_HOST_HEADER = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$")


def ensure_token(root: Path) -> str:
    """The datastore's token, created (owner-only) if there is none yet."""
    path = root / TOKEN_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)
        token = _read_token(path)
        if token is None:
            raise HostError(f"the token file {path} is empty", hint="delete it; the service makes a new one") from None
        return token
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(32) + "\n")
    return _read_token(path) or ""


def _read_token(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


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


class Access:
    """The checks of a request, in order: its Host names this service, then (but for the page) it is authorized.

    Authorized is the API token in an ``Authorization`` header (the CLI, scripts), or the web page's session
    cookie (:mod:`minivisor.service.sessions`), which must also come from the page itself to change anything.
    A websocket is authorized by its console ticket, checked where it is opened; here only its Host and Origin.
    """

    def __init__(self, token: str, hosts: HostCheck, url: str) -> None:
        self.token, self.hosts, self.url = token, hosts, url
        self.sessions = Sessions(hosts.port)

    def check(self, scope: Scope) -> None:
        """Raise WrongHostError, AuthError or CrossSiteError unless the request may be answered."""
        host = _header(scope, b"host")
        if not self.hosts.allows(host):
            raise WrongHostError(f"this service does not answer for the host {excerpt(host or '')}",
                                 hint=f"connect to {self.url}")
        path, origin = scope["path"], _header(scope, b"origin")
        if scope["type"] == "websocket":  # browsers always send Origin on one: a page of another site may not
            if origin is not None:
                self.sessions.check_origin(origin, self.own_origins(host))
            return
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            return
        if path == LOGIN_PATH and scope["method"] == "POST":  # the token is in the body (checked by login)
            if origin is not None:
                self.sessions.check_origin(origin, self.own_origins(host))
            return
        authorization = _header(scope, b"authorization")
        if authorization is not None:
            self.check_token(authorization)
            return
        if not self.sessions.valid(self.sessions.session_of(_header(scope, b"cookie"))):
            raise AuthError("missing or wrong token", hint=f"send 'Authorization: Bearer <token>'; the token is in the "
                                                           f"datastore's {TOKEN_FILE} (or log in to the web page)")
        if scope["method"] not in SAFE_METHODS:
            self.sessions.check_same_origin(origin, self.own_origins(host), _header(scope, CSRF_HEADER.encode()))

    def check_token(self, header: str) -> None:
        """AuthError unless ``header`` is ``Bearer <the token>``."""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.token.encode()):
            raise AuthError("missing or wrong token",
                            hint=f"send 'Authorization: Bearer <token>'; the token is in the datastore's {TOKEN_FILE}")

    @staticmethod
    def own_origins(host: str | None) -> frozenset[str]:
        """The Origin of a page this service served under the (checked) Host header ``host``."""
        return frozenset({f"http://{host}"})


class Gate:
    """ASGI middleware: every request and websocket passes :meth:`Access.check` before it reaches a route."""

    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app, self.access = app, access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            try:
                self.access.check(scope)
            except HvError as exc:
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})  # refused before it is accepted: 403
                else:
                    await error_response(exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _header(scope: Scope, name: bytes) -> str | None:
    """The value of a header sent exactly once (twice is as good as none: which one would count?)."""
    values = [value for key, value in scope["headers"] if key == name]
    return values[0].decode("latin-1") if len(values) == 1 else None
