"""The web page's consoles: websockets the service bridges to a running VM's own UNIX sockets.

``serial`` is the guest's serial console (the console relay's ``console.sock``,
taken with the console lock like ``minivisor vm console``), ``vnc`` its screen
(QEMU's VNC server on a UNIX socket in the VM's runtime folder): no websockify
process, no TCP port. A browser cannot put a header on a websocket, so each
one is opened with a ticket (:mod:`minivisor.service.sessions`) that an
authenticated ``POST /v1/vms/{name}/consoles/{console}/ticket`` minted: a
websocket without a valid, unspent ticket for that VM's console is refused
before it is accepted (HTTP 403).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..core.hypervisor import Hypervisor
from ..errors import AuthError, HvError, NotFoundError, StateError
from ..vmm.states import Action, require
from .dispatch import Dispatcher
from .responses import json_response
from .sessions import TICKET_LIFETIME, Sessions

__all__ = ["console_routes", "CONSOLES"]

CHUNK = 64 * 1024  # bytes read from a console socket at once
POLICY_VIOLATION = 1008  # the websocket close code of a refused console


def _serial(hv: Hypervisor, name: str) -> tuple[Path, int | None]:
    """The serial console's socket, and the console lock (held until the websocket closes)."""
    return hv.console_socket(name)


def _vnc(hv: Hypervisor, name: str) -> tuple[Path, int | None]:
    """The VNC server's UNIX socket of a running VM with a display."""
    info = hv.display_info(name)
    if info["vnc_socket"] is None:
        raise StateError(f"VM {name!r} has no display (svga.present = FALSE)", hint="use its serial console")
    vm = hv.get_vm(name)
    require(vm.name, vm.state, Action.CONSOLE)
    return Path(info["vnc_socket"]), None


def _check(hv: Hypervisor, name: str, console: str) -> None:
    """Whether the console can be opened now (refused at ticket time with the reason, in words)."""
    vm = hv.get_vm(name)
    require(vm.name, vm.state, Action.CONSOLE)
    if console == "vnc":
        _vnc(hv, name)


CONSOLES: dict[str, Callable[[Hypervisor, str], tuple[Path, int | None]]] = {"serial": _serial, "vnc": _vnc}


def console_routes(calls: Dispatcher, sessions: Sessions,
                   answering: Callable[[Callable[[Request], Awaitable[Response]]],
                                       Callable[[Request], Awaitable[Response]]]) -> list[BaseRoute]:
    """The ticket route (answered through ``answering``) and the consoles' websocket."""

    async def ticket(request: Request) -> Response:
        name, console = request.path_params["name"], _console(request.path_params["console"])
        await calls.call(_check, name, console)
        minted = sessions.mint_ticket(name, console)
        return json_response(201, {"ticket": minted, "expires_in": TICKET_LIFETIME,
                                   "path": f"/v1/vms/{name}/consoles/{console}"})

    async def bridge(websocket: WebSocket) -> None:
        name, console = websocket.path_params["name"], websocket.path_params["console"]
        try:
            sessions.spend_ticket(websocket.query_params.get("ticket"), name, console)
        except AuthError:
            await websocket.close(POLICY_VIOLATION)  # before accept: the browser sees 403
            return
        subprotocol = "binary" if "binary" in websocket.scope.get("subprotocols", ()) else None
        try:
            path, lock_fd = await calls.call(CONSOLES[console], name)
        except HvError as exc:
            await websocket.accept(subprotocol)
            await websocket.close(POLICY_VIOLATION, reason=exc.message[:120])
            return
        try:
            reader, writer = await asyncio.open_unix_connection(str(path))
        except OSError as exc:
            _release(lock_fd)
            await websocket.accept(subprotocol)
            await websocket.close(POLICY_VIOLATION, reason=f"the VM's {console} console is gone: {exc.strerror}")
            return
        try:
            await websocket.accept(subprotocol)
            await _pump(websocket, reader, writer)
        finally:
            writer.close()
            _release(lock_fd)
            with contextlib.suppress(RuntimeError):  # already closed by the client
                await websocket.close()

    return [Route("/v1/vms/{name}/consoles/{console}/ticket", answering(ticket), methods=["POST"]),
            WebSocketRoute("/v1/vms/{name}/consoles/{console}", bridge)]


def _console(console: str) -> str:
    if console not in CONSOLES:
        raise NotFoundError(f"there is no console {console[:20]!r}", hint=f"the consoles: {', '.join(CONSOLES)}")
    return console


async def _pump(websocket: WebSocket, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Bytes both ways until either side closes."""

    async def from_browser() -> None:
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                data = message.get("bytes") or (message.get("text") or "").encode()
                writer.write(data)
                await writer.drain()

    async def to_browser() -> None:
        while data := await reader.read(CHUNK):
            await websocket.send_bytes(data)

    tasks = [asyncio.create_task(from_browser()), asyncio.create_task(to_browser())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _release(lock_fd: int | None) -> None:
    if lock_fd is not None:
        os.close(lock_fd)
