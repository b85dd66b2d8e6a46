"""Web sessions: the token typed into the page once, then a cookie; and single-use tickets for console websockets.

A session is a random id the service keeps in memory (it ends with the
service, after :data:`IDLE` without a request, or :data:`LIFETIME` after the
login); the browser holds it in an ``HttpOnly; SameSite=Strict`` cookie, so
the page's scripts never see it. The cookie's name carries the service's port:
browsers share cookies across the ports of one host.

A request that changes something and is authorized by the cookie alone must
also prove it comes from the page (:meth:`Sessions.check_same_origin`): its
``Origin`` names this service, and it carries :data:`CSRF_HEADER`, which a
page of another site cannot send here without a CORS pre-flight that this
service never grants.

A console websocket cannot carry a header from a browser, so the page first
asks an authenticated API call for a :class:`Ticket` (as Proxmox and ESXi do):
random, for one VM and one console, spent by its first use, void after
:data:`TICKET_LIFETIME`.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from ..errors import AuthError, CrossSiteError

__all__ = ["Sessions", "Ticket", "CSRF_HEADER", "IDLE", "LIFETIME", "TICKET_LIFETIME", "MAX_SESSIONS"]

CSRF_HEADER = "x-minivisor-csrf"  # any value: its presence is what a cross-site form or image cannot fake
IDLE = 3600.0  # seconds a session lives without a request
LIFETIME = 12 * 3600.0  # seconds a session lives at most
TICKET_LIFETIME = 30.0  # seconds a console ticket may wait for its websocket
MAX_SESSIONS = 256  # the oldest is forgotten beyond this (logins need the token, but memory stays bounded)
MAX_TICKETS = 1024


@dataclass
class _Session:
    created: float
    seen: float


@dataclass(frozen=True)
class Ticket:
    """What a console ticket opens: one console of one VM, once."""

    vm: str
    console: str  # "serial" or "vnc"
    expires: float


class Sessions:
    """The service's live sessions and unspent console tickets (in memory, thread-safe)."""

    def __init__(self, port: int, clock=time.monotonic) -> None:
        self.cookie_name = f"minivisor-{port}"
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._tickets: OrderedDict[str, Ticket] = OrderedDict()

    # -- sessions ------------------------------------------------------------
    def open(self) -> str:
        """A new session's id (the caller has checked the token)."""
        now = self._clock()
        session_id = secrets.token_urlsafe(32)
        with self._lock:
            self._sessions[session_id] = _Session(now, now)
            while len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)
        return session_id

    def close(self, session_id: str | None) -> None:
        with self._lock:
            self._sessions.pop(session_id or "", None)

    def valid(self, session_id: str | None) -> bool:
        """Whether ``session_id`` is a live session (its idle time restarts)."""
        if not session_id:
            return False
        now = self._clock()
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return False
            if now - session.seen > IDLE or now - session.created > LIFETIME:
                del self._sessions[session_id]
                return False
            session.seen = now
            return True

    def set_cookie(self, session_id: str) -> str:
        return (f"{self.cookie_name}={session_id}; HttpOnly; SameSite=Strict; Path=/; "
                f"Max-Age={int(LIFETIME)}")

    def clear_cookie(self) -> str:
        return f"{self.cookie_name}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"

    def session_of(self, cookie_header: str | None) -> str | None:
        """The session id in a Cookie header, if it sends this service's cookie exactly once."""
        values = [value for name, _, value in (part.strip().partition("=") for part in (cookie_header or "").split(";"))
                  if name == self.cookie_name]
        return values[0] if len(values) == 1 else None

    @staticmethod
    def check_origin(origin: str | None, own_origins: frozenset[str]) -> None:
        """Refuse a request from a page that this service did not serve."""
        if origin is None or origin not in own_origins:
            raise CrossSiteError("this request comes from another site's page (its Origin is not this service)",
                                 hint="use the page this service serves, or send the API token")

    @classmethod
    def check_same_origin(cls, origin: str | None, own_origins: frozenset[str], csrf: str | None) -> None:
        """Refuse a cookie-authorized change that does not come from this service's own page."""
        cls.check_origin(origin, own_origins)
        if csrf is None:
            raise CrossSiteError(f"a request authorized by the session cookie must send the {CSRF_HEADER} header",
                                 hint="use the page this service serves, or send the API token")

    # -- console tickets -----------------------------------------------------
    def mint_ticket(self, vm: str, console: str) -> str:
        ticket_id = secrets.token_urlsafe(32)
        with self._lock:
            self._tickets[ticket_id] = Ticket(vm.lower(), console, self._clock() + TICKET_LIFETIME)
            while len(self._tickets) > MAX_TICKETS:
                self._tickets.popitem(last=False)
        return ticket_id

    def spend_ticket(self, ticket_id: str | None, vm: str, console: str) -> None:
        """Use up a ticket for this VM's console; AuthError if it is unknown, spent, expired or for another."""
        with self._lock:
            ticket = self._tickets.pop(ticket_id or "", None)  # spent now, whatever follows
        if ticket is None or ticket.expires < self._clock() or (ticket.vm, ticket.console) != (vm.lower(), console):
            raise AuthError("no valid console ticket", hint="ask POST /v1/vms/{name}/console-ticket for one; "
                                                            "each opens one console of one VM once, within "
                                                            f"{TICKET_LIFETIME:.0f} s")
