"""The service process: what it holds while it serves a datastore, and how it starts and stops.

:class:`Service` takes the datastore's service lock, makes the token, binds the
listening socket, supervises the VMMs, runs the host's cluster member (:mod:`minivisor.cluster.liveness`:
idle in single-host mode) and writes ``service.json``
(:mod:`minivisor.service.discovery`); :meth:`Service.serve_forever` runs the
application (:mod:`minivisor.service.app`) on uvicorn with the guarded
connection protocol (:mod:`minivisor.service.connections`) until SIGTERM or
SIGINT, or, started on demand (:mod:`minivisor.service.on_demand`), until it
has been idle long enough. Running VMs keep running when it stops.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import uvicorn

from ..cluster.liveness import Member
from ..core.clustering import ClusterHost, in_cluster
from ..core.events import Event
from ..core.hypervisor import Hypervisor
from ..errors import ConflictError, HostError, RequestError
from ..locks import try_lock
from ..spec.vmx import write_atomic
from ..procfs import is_same_process, start_ticks
from ..text import is_number
from .app import build_app
from .auth import Access, HostCheck, ensure_token
from .bus import EventBus
from .connections import KEEP_ALIVE, GuardedH11Protocol, connection_cap
from .discovery import LOCK_FILE, SERVICE_FILE
from .dispatch import Dispatcher
from .on_demand import idle_exit
from .supervisor import Supervisor

__all__ = ["Service"]

GRACE = 5.0  # seconds a stopping service gives requests in flight to finish
REPLACE_WAIT = 30.0  # seconds a plain service waits for the on-demand one it replaces to finish its calls
WITHDRAWN_GRACE = 1.0  # seconds an on-demand service serves on once its file is gone (a command that read it)
BACKLOG = 1024  # connections the kernel queues before the service accepts them


class Service:
    """One datastore served over HTTP, with its VMMs supervised."""

    def __init__(self, root: Path | str, listen: str = "127.0.0.1:8700", *, autostart: bool = True,
                 on_demand: bool = False, lock: int | None = None) -> None:
        """``on_demand``: started by a command for the ones after it (:mod:`minivisor.service.on_demand`):
        no autostart, never a cluster member, gone once idle. Otherwise an on-demand service running on the
        datastore is replaced. ``lock``: the datastore's service lock, taken already."""
        self.root = Path(root).absolute()
        if on_demand and in_cluster(self.root / ".minivisor"):
            raise ConflictError(f"the datastore {self.root} is a cluster member: its service is started by hand",
                                hint="run `minivisor serve` on this host (a systemd unit, say)")
        self.calls = Dispatcher(self.root, on_event=self._on_event)  # opens (creates) the datastore
        self._lock_fd = lock if lock is not None else _take_service_lock(self.root, replace_on_demand=not on_demand)
        token = ensure_token(self.root)
        self.bus = EventBus()
        host, _, port = listen.rpartition(":")
        if not host or not is_number(port, 5) or int(port) > 65535:
            raise RequestError(f"--listen {listen!r} is not HOST:PORT", hint="e.g. --listen 127.0.0.1:8700")
        self.sock = _listen(listen, host.strip("[]"), int(port))
        bound = self.sock.getsockname()[1]
        self.url = f"http://{host}:{bound}"
        self.access = Access(token, HostCheck(host.strip("[]"), bound), self.url)
        self.supervisor = Supervisor(self.calls)
        # A cluster member once the datastore has a cluster configuration (now, or after `cluster init`/`join`).
        with self.calls.hypervisor() as hv:
            meta = hv.datastore.meta
        self.member = Member(meta, ClusterHost(lambda: Hypervisor(self.root, on_event=self._on_event)))
        self.autostart = autostart and not on_demand
        self.on_demand = on_demand

    def serve_forever(self) -> None:
        """Serve until SIGTERM or SIGINT, then stop (running VMs keep running)."""
        stop = _StopRequest()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, stop.request)
        self.start()
        try:
            app = build_app(self.calls, self.bus, self.access, self.supervisor, autostart=self.autostart)
            idle = None
            if self.on_demand:
                idle = _IdleExit(idle_exit(), self.calls, lambda: (self.root / SERVICE_FILE).unlink(missing_ok=True))
                signal.signal(signal.SIGUSR1, idle.leave_when_idle)
            stop.serve(_Server(app, self.bus, idle), [self.sock])
        finally:
            self.close()

    def start(self) -> None:
        """Reattach to running VMMs and write the service file (autostart follows once it serves)."""
        self.supervisor.start()
        if not self.on_demand:
            self.member.start()
        record = {"url": self.url, "pid": os.getpid(), "start_ticks": start_ticks(os.getpid()),
                  "on_demand": self.on_demand}
        path = self.root / SERVICE_FILE
        path.unlink(missing_ok=True)  # a stale one would keep its mode
        write_atomic(path, json.dumps(record).encode(), mode=0o600)

    def close(self) -> None:
        try:
            (self.root / SERVICE_FILE).unlink(missing_ok=True)
            self.member.stop()
        finally:
            self.supervisor.stop()
            self.bus.close()
            self.sock.close()
            os.close(self._lock_fd)

    def _on_event(self, event: Event) -> None:
        """Every event of every Hypervisor the service uses: the supervisor watches, the bus publishes."""
        self.supervisor.notice(event)
        self.bus.publish(event)


def _take_service_lock(root: Path, *, replace_on_demand: bool) -> int:
    """The datastore's service lock. If ``replace_on_demand``, one held by an on-demand service is taken over:
    that service is asked to leave once the calls it runs are done (SIGUSR1: a power-on or an import it answers
    is not cut short), and waited for, as is one still starting (it takes the lock before it writes its file)."""
    fd = try_lock(root / LOCK_FILE)
    deadline, asked = time.monotonic() + REPLACE_WAIT, False
    while fd is None and replace_on_demand and time.monotonic() < deadline:
        record = _running_service(root)
        if record is not None and record.get("on_demand") is not True:
            break  # a service of its own runs there
        if record is not None and not asked:
            try:
                os.kill(record["pid"], signal.SIGUSR1)
            except OSError:
                pass  # gone meanwhile: its lock is free
            asked = True
        time.sleep(0.05)
        fd = try_lock(root / LOCK_FILE)
    if fd is None:
        raise ConflictError(f"a minivisor service already runs for the datastore {root}"
                            + (", started on demand and still answering a call" if asked else ""),
                            hint=f"see {root / SERVICE_FILE}, or stop that service first")
    return fd


def _running_service(root: Path) -> dict | None:
    """The service file of the datastore, if the process it names runs."""
    try:
        record = json.loads((root / SERVICE_FILE).read_text())
        running = is_same_process(record["pid"], record["start_ticks"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # none written yet (a service starting), or not one of ours
    return record if running else None


class _IdleExit:
    """When an on-demand service leaves: idle (no connection open and no call of the core running, the rest of
    one answered early included) for ``seconds``, or at once when idle if asked to (:meth:`leave_when_idle`:
    a plain service takes over) or once the datastore joined a cluster (through this service: `cluster init`;
    a member's service is started by hand). It first withdraws (its service file goes: new commands stop
    finding it), then leaves :data:`WITHDRAWN_GRACE` seconds later, once what came meanwhile is answered."""

    def __init__(self, seconds: float, calls: Dispatcher, withdraw: Callable[[], None]) -> None:
        self.seconds, self.calls, self.withdraw = seconds, calls, withdraw
        self.meta = calls.root / ".minivisor"
        self.last_busy = time.monotonic()
        self.withdrawn_at: float | None = None

    def leave_when_idle(self, *_signal: object) -> None:
        self.seconds = 0.0

    def due(self, connections: int) -> bool:
        now = time.monotonic()
        if connections or self.calls.busy:
            self.last_busy = now
            return False
        if self.withdrawn_at is None:
            if now - self.last_busy >= self.seconds or in_cluster(self.meta):
                self.withdraw()
                self.withdrawn_at = now
            return False
        return now - self.withdrawn_at >= WITHDRAWN_GRACE


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


class _StopRequest:
    """SIGTERM or SIGINT, from the moment the service starts. uvicorn handles them while it serves, then raises them
    again under these handlers, which let the service finish stopping; one that came before it served (the service
    file written, the app still being built: a client may already have asked it to stop) stops the server as soon
    as it has started, instead of being lost."""

    def __init__(self) -> None:
        self.requested = False
        self.server: _Server | None = None

    def serve(self, server: _Server, sockets: list[socket.socket]) -> None:
        self.server = server
        server.should_exit = self.requested  # a request before this line; one after it, the handler passes on
        asyncio.run(server.serve(sockets=sockets))

    def request(self, signum: int, frame: object) -> None:
        self.requested = True
        if self.server is not None:
            self.server.should_exit = True


class _Server(uvicorn.Server):
    """uvicorn for the service's app: the guarded protocol, its limits and timeouts."""

    def __init__(self, app, bus: EventBus, idle: _IdleExit | None = None) -> None:
        super().__init__(uvicorn.Config(
            app, http=GuardedH11Protocol, ws="wsproto", lifespan="on", loop="asyncio",
            log_config=None, log_level="warning", access_log=False, proxy_headers=False, server_header=False,
            timeout_keep_alive=int(KEEP_ALIVE), timeout_graceful_shutdown=int(GRACE),
            limit_concurrency=connection_cap(), backlog=BACKLOG))
        self.bus = bus
        self.idle = idle

    async def on_tick(self, counter: int) -> bool:
        """uvicorn's tick (every 0.1 s): also the end of an idle on-demand service."""
        if self.idle is not None and self.idle.due(len(self.server_state.connections)):
            self.should_exit = True
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.bus.close()  # event streams end, so their connections close instead of holding the stop
        await super().shutdown(sockets)
