"""Who may ask: a request must name this service in its ``Host`` header, then carry the datastore's token.

:class:`Gate` runs both checks on every request before it is routed, in that
order: a request for another host gets 421 and no data (against DNS
rebinding), one without the right token 401 (naming no path). The static web
page and its files (:data:`PUBLIC_PATHS`, :data:`~minivisor.service.static.PUBLIC_PREFIXES`) hold no
data and need no token: the token is typed into the page.
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
from .static import PUBLIC_PREFIXES

__all__ = ["Access", "Gate", "HostCheck", "PUBLIC_PATHS", "ensure_token"]

PUBLIC_PATHS = frozenset({"/", "/index.html"})
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
    """The two checks of a request, in order: its Host names this service, then (but for the page) its token is right."""

    def __init__(self, token: str, hosts: HostCheck, url: str) -> None:
        self.token, self.hosts, self.url = token, hosts, url

    def check(self, path: str, host: str | None, authorization: str | None) -> None:
        """Raise WrongHostError or AuthError unless the request may be answered."""
        if not self.hosts.allows(host):
            raise WrongHostError(f"this service does not answer for the host {excerpt(host or '')}",
                                 hint=f"connect to {self.url}")
        if path not in PUBLIC_PATHS and not path.startswith(PUBLIC_PREFIXES):
            self._authenticate(authorization)

    def _authenticate(self, header: str | None) -> None:
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.token.encode()):
            raise AuthError("missing or wrong token",
                            hint=f"send 'Authorization: Bearer <token>'; the token is in the datastore's {TOKEN_FILE}")


class Gate:
    """ASGI middleware: every request passes :meth:`Access.check` before it reaches a route."""

    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app, self.access = app, access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            try:
                self.access.check(scope["path"], _header(scope, b"host"), _header(scope, b"authorization"))
            except HvError as exc:
                await error_response(exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _header(scope: Scope, name: bytes) -> str | None:
    """The value of a header sent exactly once (twice is as good as none: which one would count?)."""
    values = [value for key, value in scope["headers"] if key == name]
    return values[0].decode("latin-1") if len(values) == 1 else None
