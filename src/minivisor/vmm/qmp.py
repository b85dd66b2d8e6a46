"""The one way minivisor talks to a VMM: a QMP session over one of its UNIX sockets.

QEMU serves one client at a time on a QMP socket, so a :class:`QmpSession` first
takes its turn (an ``flock`` on ``qmp.lock`` beside the socket: the CLI, the
service's requests, its metrics and its supervisor all take turns), connects with
a timeout, checks QEMU's greeting and leaves capabilities negotiation, then runs
commands one at a time, each with its own id and a deadline. Errors are typed:

- :class:`~minivisor.errors.QmpCommandError`: QEMU answered the command with an
  error; it carries the command and QEMU's error class and description;
- :class:`~minivisor.errors.QmpError`: no conversation (no socket, a refused or
  dropped connection, a hung VMM past the deadline, a malformed, oversized or
  unexpected message).

Events that arrive meanwhile are kept in :attr:`QmpSession.events`. The framing
(:class:`QmpStream`) is shared with the console relay, which holds a second,
event-only monitor open for the VM's whole life.

Standard library only (modelled on the QEMU project's ``qemu.qmp``: ids, typed
errors carrying what was sent and received, bounded reads): a power-on, ``vm
stop`` and every console relay pay for a socket, not for an event loop.
"""

from __future__ import annotations

import array
import itertools
import json
import os
import select
import socket
import time
from collections import deque

from ..errors import QmpCommandError, QmpError
from .channels import Channel

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:  # the console relay imports this module with every power-on: it loads neither
    from pathlib import Path
    from typing import Any

__all__ = ["QmpSession", "QmpStream", "negotiate", "greeted", "leave_negotiation", "execute", "TIMEOUT", "MAX_MESSAGE"]

TIMEOUT = 10.0  # seconds for a turn, a connection, or one command's answer
MAX_MESSAGE = 4 * 1024 * 1024  # bytes of one message: query-block of many disks is tens of KiB
ENDS_THE_VMM = frozenset({"quit"})  # QEMU may close the socket before its answer arrives: that is success
_HINT = "the VM may have just powered off; check: minivisor vm show"


class QmpStream:
    """QMP's framing on a connected socket: one JSON object per line, each at most :data:`MAX_MESSAGE` bytes."""

    def __init__(self, sock: socket.socket, where: str) -> None:
        self.sock, self.where = sock, where
        self._buffer = bytearray()
        self._ready: deque[dict[str, Any]] = deque()  # decoded, not yet received

    def send(self, message: dict[str, Any], fd: int | None = None) -> None:
        """Send one message; ``fd`` travels with it (SCM_RIGHTS), as QMP's ``getfd`` expects."""
        data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        try:
            if fd is None:
                self.sock.sendall(data)
            else:
                self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
        except OSError as exc:
            raise QmpError(f"the VMM's monitor {self.where} went away ({exc.strerror})", hint=_HINT) from exc

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """The whole messages ``data`` completes (for readers driven by a selector)."""
        self._buffer += data
        messages = []
        while (end := self._buffer.find(b"\n")) >= 0:
            line = bytes(self._buffer[:end])
            del self._buffer[:end + 1]
            if line.strip():
                messages.append(self._decode(line))
        if len(self._buffer) > MAX_MESSAGE:
            raise QmpError(f"the VMM's monitor {self.where} sent a message over {MAX_MESSAGE} bytes",
                           hint="see the VM's vmm.log")
        return messages

    def drain(self) -> list[dict[str, Any]]:
        """The messages already received and not yet taken (before switching to :meth:`feed`)."""
        messages = list(self._ready)
        self._ready.clear()
        return messages

    def receive(self, deadline: float) -> dict[str, Any] | None:
        """The next message, or None if the VMM closed the socket; QmpError past ``deadline``."""
        while not self._ready:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not _readable(self.sock, remaining):
                raise QmpError(f"the VMM's monitor {self.where} did not answer in time",
                               hint="the VMM is hung or very busy; see the VM's vmm.log")
            try:
                chunk = self.sock.recv(65536)
            except OSError as exc:
                raise QmpError(f"the VMM's monitor {self.where} went away ({exc.strerror})", hint=_HINT) from exc
            if not chunk:
                return None
            self._ready.extend(self.feed(chunk))
        return self._ready.popleft()

    def _decode(self, line: bytes) -> dict[str, Any]:
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            raise QmpError(f"the VMM's monitor {self.where} sent something that is not a QMP message",
                           hint="see the VM's vmm.log")
        return message


class QmpSession:
    """One conversation with a VMM's QMP monitor (a context manager).

    ``take_turn`` (the default) holds the socket's turn lock for the session;
    a monitor nobody else uses (the relay's event monitor) needs none.
    """

    def __init__(self, path: Path | str, *, timeout: float = TIMEOUT, take_turn: bool = True) -> None:
        self.path, self.timeout, self.take_turn = os.fspath(path), timeout, take_turn
        self.events: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._turn: int | None = None
        self._stream: QmpStream | None = None

    def __enter__(self) -> QmpSession:
        try:
            if self.take_turn:
                self._turn = _CHANNEL.take_turn(self.path, self.timeout)
            self._stream = negotiate(_CHANNEL.connect(self.path), self.path, self.timeout)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def stream(self) -> QmpStream:
        if self._stream is None:
            raise QmpError(f"no session with the VMM's monitor {self.path}", hint=_HINT)
        return self._stream

    def execute(self, command: str, arguments: dict[str, Any] | None = None, *, fd: int | None = None,
                timeout: float | None = None) -> Any:
        """Run one command and return QEMU's answer; ``fd`` is passed along with it (for ``getfd``)."""
        request_id = f"minivisor-{next(self._ids)}"
        message: dict[str, Any] = {"execute": command, "id": request_id}
        if arguments is not None:
            message["arguments"] = arguments
        self.stream.send(message, fd)
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            answer = self.stream.receive(deadline)
            if answer is None:
                if command in ENDS_THE_VMM:
                    return {}
                raise QmpError(f"the VMM closed its monitor {self.path} during {command}", hint=_HINT)
            if "event" in answer:
                self.events.append(answer)
                continue
            if answer.get("id") != request_id:
                raise QmpError(f"the VMM answered {command} with a message for another request: "
                               f"{_brief(answer)}", hint="see the VM's vmm.log")
            if "error" in answer:
                error = answer["error"] if isinstance(answer["error"], dict) else {}
                desc = str(error.get("desc", answer["error"]))
                raise QmpCommandError(f"the VMM refused {command}: {desc}", hint="see the VM's vmm.log",
                                      command=command, error_class=str(error.get("class", "GenericError")),
                                      desc=desc)
            if "return" not in answer:
                raise QmpError(f"the VMM answered {command} without a result: {_brief(answer)}",
                               hint="see the VM's vmm.log")
            return answer["return"]

    def pass_fd(self, fd: int, name: str) -> None:
        """Hand QEMU a file descriptor under ``name`` (for ``migrate``/``migrate-incoming`` with ``fd:NAME``)."""
        self.execute("getfd", {"fdname": name}, fd=fd)

    def wait_event(self, names: set[str], timeout: float) -> dict[str, Any]:
        """The first event named in ``names`` (already received, or arriving within ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            for index, event in enumerate(self.events):
                if event.get("event") in names:
                    return self.events.pop(index)
            message = self.stream.receive(deadline)
            if message is None:
                raise QmpError(f"the VMM closed its monitor {self.path} while we waited for {sorted(names)}",
                               hint=_HINT)
            if "event" in message:
                self.events.append(message)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.sock.close()
            self._stream = None
        if self._turn is not None:
            os.close(self._turn)
            self._turn = None


def negotiate(sock: socket.socket, where: str, timeout: float = TIMEOUT) -> QmpStream:
    """Check QEMU's greeting on a connected monitor socket and leave capabilities negotiation."""
    deadline = time.monotonic() + timeout
    stream = greeted(sock, where, deadline)
    leave_negotiation(stream, deadline)
    return stream


def greeted(sock: socket.socket, where: str, deadline: float) -> QmpStream:
    """The monitor on ``sock`` once QEMU greeted on it (its main loop runs: its start is over)."""
    stream = QmpStream(sock, where)
    greeting = stream.receive(deadline)
    if greeting is None or not isinstance(greeting.get("QMP"), dict):
        raise QmpError(f"{where} did not greet as a QMP monitor: {_brief(greeting)}",
                       hint="is this socket a VMM's QMP monitor? see the VM's vmm.log")
    return stream


def leave_negotiation(stream: QmpStream, deadline: float) -> None:
    """Leave capabilities negotiation: QEMU sends events and runs commands from then on."""
    stream.send({"execute": "qmp_capabilities", "id": "minivisor-0"})
    while True:
        answer = stream.receive(deadline)
        if answer is None or "error" in answer:
            raise QmpError(f"{stream.where} refused to leave capabilities negotiation: {_brief(answer)}",
                           hint="see the VM's vmm.log")
        if answer.get("id") == "minivisor-0":
            return


def execute(path: Path | str, command: str, arguments: dict[str, Any] | None = None, *,
            timeout: float = TIMEOUT) -> Any:
    """Run one command in a session of its own."""
    with QmpSession(path, timeout=timeout) as session:
        return session.execute(command, arguments)


_CHANNEL = Channel("qmp.lock", "the VMM", "the VMM's monitor", _HINT, QmpError)


def _readable(sock: socket.socket, timeout: float) -> bool:
    """poll(), not select(): in a service holding many connections, descriptors go past 1,023."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


def _brief(message: Any) -> str:
    text = json.dumps(message) if message is not None else "nothing"
    return text if len(text) <= 160 else text[:157] + "..."
