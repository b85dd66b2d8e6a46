"""The QEMU guest agent (qemu-ga): a session over the VM's ``org.qemu.guest_agent.0`` channel.

The launcher gives every VM a virtio-serial port of that name on ``agent.sock`` in
its runtime folder (:mod:`minivisor.vmm.argv`). QEMU serves one client at a time
there, so an :class:`AgentSession`, like a QMP session (:mod:`minivisor.vmm.qmp`),
first takes its turn (an ``flock`` on ``agent.lock``), then connects and
synchronises: it sends 0xFF (which resets the agent's JSON parser, whatever a
client before it left half-sent) and ``guest-sync-delimited`` with a random id;
the agent answers 0xFF and the id, and everything before that (answers meant for
an earlier client) is dropped. Then commands run one at a time, each with an id
and a deadline.

Everything the guest sends is hostile: each message is bounded (:data:`MAX_MESSAGE`,
or less where the command says), must be a JSON object answering the request by
its id, and each typed method checks the types and sizes of what it returns
(base64 decoded strictly, counts matching the bytes). Errors are typed:

- :class:`~minivisor.errors.AgentCommandError`: the agent refused a command (a
  missing file...); it carries the command and the agent's error class and text;
- :class:`~minivisor.errors.AgentError`: no conversation (no agent answering in
  time, a dropped connection, a malformed, oversized or unexpected message).

Standard library only, like the QMP client.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import itertools
import json
import os
import secrets
import select
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import AgentCommandError, AgentError
from ..text import excerpt
from .channels import Channel

__all__ = ["AgentSession", "ExecStatus", "GuestInterface", "TIMEOUT", "MAX_MESSAGE", "MAX_OUTPUT",
           "MAX_CHUNK"]

TIMEOUT = 10.0  # seconds for a turn, the synchronisation, or one command's answer
MAX_OUTPUT = 16 * 1024 * 1024  # bytes of a command's stdout (and of its stderr) qemu-ga keeps (its own cap)
MAX_MESSAGE = 2 * (MAX_OUTPUT * 4 // 3) + 64 * 1024  # guest-exec-status with both streams full, in base64
MAX_CHUNK = 1024 * 1024  # bytes of one guest-file-read or guest-file-write (~1 s each under TCG)
_SMALL = 256 * 1024  # bytes of any answer that carries no data (a ping, a handle, a status)
_DELIMITER = b"\xff"
_HINT = "is the QEMU guest agent (qemu-ga) running in the guest? see its logs there"


@dataclass(frozen=True)
class ExecStatus:
    """What ``guest-exec-status`` says of a process: still running, or its exit code (or signal) and output."""

    exited: bool
    exit_code: int | None = None
    signal: int | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    truncated: bool = False  # qemu-ga kept only the first MAX_OUTPUT bytes of a stream


@dataclass(frozen=True)
class GuestInterface:
    """A network interface as the guest sees it: name, MAC, and addresses as ``address/prefix``."""

    name: str
    mac: str | None
    addresses: tuple[str, ...]


class AgentSession:
    """One conversation with a VM's guest agent (a context manager); ``timeout`` bounds each step."""

    def __init__(self, path: Path | str, *, timeout: float = TIMEOUT, sync_timeout: float | None = None) -> None:
        self.path, self.timeout = os.fspath(path), timeout
        self.sync_timeout = timeout if sync_timeout is None else sync_timeout  # for an agent to show it is there
        self._ids = itertools.count(1)
        self._abandoned: set[str] = set()  # requests whose answers came too late: dropped when they come
        self._sock: socket.socket | None = None
        self._buffer = bytearray()
        self._turn: int | None = None

    def __enter__(self) -> AgentSession:
        return self.open()

    def open(self) -> AgentSession:
        """Take the channel's turn, connect and synchronise (an open session stays as it is)."""
        if self._sock is not None:
            return self
        try:
            self._turn = _CHANNEL.take_turn(self.path, self.timeout)
            self._sock = _CHANNEL.connect(self.path)
            self._synchronise()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._turn is not None:
            os.close(self._turn)
            self._turn = None

    # -- the protocol ------------------------------------------------------------
    def execute(self, command: str, arguments: dict[str, Any] | None = None, *, limit: int = _SMALL,
                timeout: float | None = None) -> Any:
        """Run one command and return the agent's ``return`` (at most ``limit`` bytes of answer)."""
        request_id = f"minivisor-{next(self._ids)}"
        message: dict[str, Any] = {"execute": command, "id": request_id}
        if arguments is not None:
            message["arguments"] = arguments
        self._send(json.dumps(message, separators=(",", ":")).encode() + b"\n")
        deadline = time.monotonic() + (timeout or self.timeout)
        try:
            while (answer := self._receive(deadline, limit, command)).get("id") in self._abandoned:
                self._abandoned.discard(answer["id"])
        except AgentError:
            self._abandoned.add(request_id)
            raise
        if answer.get("id") != request_id:
            raise AgentError(f"the guest agent answered {command} with a message for another request: "
                             f"{_brief(answer)}", hint=_HINT)
        if "error" in answer:
            raise _refusal(command, answer["error"], "check the guest path and its permissions")
        if "return" not in answer:
            raise AgentError(f"the guest agent answered {command} without a result: {_brief(answer)}", hint=_HINT)
        return answer["return"]

    def send_only(self, command: str, arguments: dict[str, Any] | None = None) -> None:
        """Send a command that has no answer when it succeeds (``guest-shutdown``)."""
        message: dict[str, Any] = {"execute": command}
        if arguments is not None:
            message["arguments"] = arguments
        self._send(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    # -- typed commands ------------------------------------------------------------
    def ping(self) -> None:
        self.execute("guest-ping")

    def exec(self, path: str, args: list[str]) -> int:
        """Start ``path`` with ``args`` (no shell), its output captured; returns the guest's pid."""
        arguments = {"path": path, "arg": args, "capture-output": True}
        answer = _object(self.execute("guest-exec", arguments), "guest-exec")
        return _field(answer, "pid", int, "guest-exec")

    def exec_status(self, pid: int) -> ExecStatus:
        """Whether process ``pid`` (from :meth:`exec`) ended, and if so how and what it printed."""
        what = "guest-exec-status"
        answer = _object(self.execute(what, {"pid": pid}, limit=MAX_MESSAGE), what)
        if not _field(answer, "exited", bool, what):
            return ExecStatus(exited=False)
        return ExecStatus(
            exited=True,
            exit_code=_bounded(answer, "exitcode", 0xFFFFFFFF, what),
            signal=_bounded(answer, "signal", 127, what),
            stdout=_base64(_optional(answer, "out-data", str, what) or "", MAX_OUTPUT, what),
            stderr=_base64(_optional(answer, "err-data", str, what) or "", MAX_OUTPUT, what),
            truncated=bool(_optional(answer, "out-truncated", bool, what) or
                           _optional(answer, "err-truncated", bool, what)))

    def file_open(self, path: str, mode: str) -> int:
        """Open a guest file (``mode`` as fopen takes it); returns its handle."""
        return _field({"handle": self.execute("guest-file-open", {"path": path, "mode": mode})},
                      "handle", int, "guest-file-open")

    def file_read(self, handle: int, count: int) -> tuple[bytes, bool]:
        """Up to ``count`` (at most MAX_CHUNK) bytes from a guest file, and whether its end was reached."""
        what = "guest-file-read"
        count = min(count, MAX_CHUNK)
        answer = _object(self.execute(what, {"handle": handle, "count": count},
                                      limit=count * 4 // 3 + _SMALL), what)
        data = _base64(_field(answer, "buf-b64", str, what), count, what)
        if _field(answer, "count", int, what) != len(data):
            raise AgentError(f"the guest agent's {what} counted {answer['count']} bytes but sent {len(data)}",
                             hint=_HINT)
        return data, _field(answer, "eof", bool, what)

    def file_write(self, handle: int, data: bytes) -> None:
        """Write ``data`` (at most MAX_CHUNK bytes) to a guest file, whole."""
        what = "guest-file-write"
        answer = _object(self.execute(what, {"handle": handle, "buf-b64": base64.b64encode(data).decode()}), what)
        written = _field(answer, "count", int, what)
        if written != len(data):
            raise AgentError(f"the guest wrote {written} of {len(data)} bytes", hint="is the guest's disk full?")

    def file_close(self, handle: int) -> None:
        self.execute("guest-file-close", {"handle": handle})

    def network_interfaces(self) -> list[GuestInterface]:
        """The guest's network interfaces and their addresses."""
        what = "guest-network-get-interfaces"
        answer = self.execute(what)
        if not isinstance(answer, list):
            raise AgentError(f"the guest agent's {what} is not a list: {_brief(answer)}", hint=_HINT)
        interfaces = []
        for entry in answer:
            entry = _object(entry, what)
            addresses = _optional(entry, "ip-addresses", list, what) or []
            mac = _optional(entry, "hardware-address", str, what)
            interfaces.append(GuestInterface(
                name=_short(_field(entry, "name", str, what), what),
                mac=None if mac is None else _short(mac, what),
                addresses=tuple(_address(_object(a, what), what) for a in addresses)))
        return interfaces

    def shutdown(self, refusal_within: float = 1.0) -> None:
        """Ask the guest to power itself off. The agent answers nothing when it obeys, and an error when
        it cannot (its shutdown program failed): AgentCommandError if one comes within ``refusal_within`` s."""
        self.send_only("guest-shutdown", {"mode": "powerdown"})
        try:
            answer = self._receive(time.monotonic() + refusal_within, _SMALL, "guest-shutdown")
        except AgentError:
            return  # silence, or the VM already gone: it obeys
        if "error" in answer:
            raise _refusal("guest-shutdown", answer["error"], "the guest cannot power itself off: see its logs")

    # -- framing -------------------------------------------------------------------
    def _synchronise(self) -> None:
        """Reset the agent's parser and drop whatever an earlier client left unread."""
        token = secrets.randbelow(2**31)
        request = {"execute": "guest-sync-delimited", "arguments": {"id": token}}
        self._send(_DELIMITER + json.dumps(request).encode() + b"\n")
        deadline = time.monotonic() + self.sync_timeout
        while True:
            self._skip_to_delimiter(deadline)
            answer = self._receive(deadline, _SMALL, "guest-sync-delimited")
            if answer.get("return") == token:
                return

    def _skip_to_delimiter(self, deadline: float) -> None:
        while (at := self._buffer.find(_DELIMITER)) < 0:
            self._buffer.clear()  # not ours: answers an earlier client left, or noise
            self._fill(deadline, "guest-sync-delimited")
        del self._buffer[:at + 1]

    def _receive(self, deadline: float, limit: int, command: str) -> dict[str, Any]:
        """The next line, as a JSON object, of at most ``limit`` bytes."""
        while (end := self._buffer.find(b"\n")) < 0:
            if len(self._buffer) > limit:
                raise AgentError(f"the guest agent answered {command} with over {limit} bytes", hint=_HINT)
            self._fill(deadline, command)
        line = bytes(self._buffer[:end])
        del self._buffer[:end + 1]
        if len(line) > limit:
            raise AgentError(f"the guest agent answered {command} with over {limit} bytes", hint=_HINT)
        try:
            message = json.loads(line.lstrip(_DELIMITER))
        except (ValueError, UnicodeDecodeError, RecursionError):  # nested deeper than Python's parser goes
            message = None
        if not isinstance(message, dict):
            raise AgentError(f"the guest agent answered {command} with something that is not a message: "
                             f"{excerpt(line)}", hint=_HINT)
        return message

    def _fill(self, deadline: float, command: str) -> None:
        sock = self._require_socket()
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not _readable(sock, remaining):
            raise AgentError(f"the guest agent did not answer {command} in time", hint=_HINT)
        try:
            chunk = sock.recv(1024 * 1024)
        except OSError:
            chunk = b""  # reset: the VMM went away, as when it closes the channel
        if not chunk:
            raise AgentError(f"the VMM closed the guest agent's channel during {command}",
                             hint="the VM may have just powered off; check: minivisor vm show")
        self._buffer += chunk

    def _send(self, data: bytes) -> None:
        try:
            self._require_socket().sendall(data)
        except OSError as exc:
            raise AgentError(f"the guest agent's channel went away ({exc.strerror})", hint=_HINT) from exc

    def _require_socket(self) -> socket.socket:
        if self._sock is None:
            raise AgentError(f"no session with the guest agent at {self.path}", hint=_HINT)
        return self._sock


# -- checking what the guest sent ----------------------------------------------------
def _refusal(command: str, error: Any, hint: str) -> AgentCommandError:
    """The agent's error answer to ``command``, its class and text cut short; ``hint`` unless the agent does not
    offer the command at all (qemu-ga's --block-rpcs: RHEL's blocks guest-exec and the file commands)."""
    fields = error if isinstance(error, dict) else {}
    desc = excerpt(fields.get("desc", error))
    # a QAPI error class is a short name: kept as it is (callers compare it), anything else the guest sent is "?"
    error_class = fields.get("class")
    if not (isinstance(error_class, str) and error_class.isidentifier() and len(error_class) <= 40):
        error_class = "?"
    if error_class == "CommandNotFound":
        hint = (f"the guest's qemu-ga does not offer {command}: allow it there (its --allow-rpcs or --block-rpcs, "
                "in /etc/sysconfig/qemu-ga on RHEL)" + (", or run it through the serial console: --via serial"
                                                         if command == "guest-exec" else ""))
    return AgentCommandError(f"the guest agent refused {command}: {desc}", hint=hint, command=command,
                             error_class=error_class, desc=desc)


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise AgentError(f"the guest agent's {what} is not an object: {_brief(value)}", hint=_HINT)
    return value


def _field(answer: dict[str, Any], key: str, kind: type, what: str) -> Any:
    value = answer.get(key)
    # bool is an int in Python: an int field must not be true/false, nor a bool field 0/1
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise AgentError(f"the guest agent's {what} has no {kind.__name__} {key!r}: {_brief(answer)}", hint=_HINT)
    return value


def _optional(answer: dict[str, Any], key: str, kind: type, what: str) -> Any:
    return _field(answer, key, kind, what) if key in answer else None


def _bounded(answer: dict[str, Any], key: str, high: int, what: str) -> int | None:
    """An exit code (0-255 from a POSIX guest's waitpid(); a Windows guest's is a DWORD, as 0xC0000005) or a
    signal number (0-127), or None: a hostile agent's -1 or 10**30 is no process's."""
    value = _optional(answer, key, int, what)
    if value is not None and not 0 <= value <= high:
        raise AgentError(f"the guest agent's {what} gives the {key} {value}, which no process has (0-{high})",
                         hint=_HINT)
    return value


def _base64(text: str, limit: int, what: str) -> bytes:
    too_much = AgentError(f"the guest agent's {what} carries more than the {limit} bytes it may", hint=_HINT)
    if len(text) > (limit + 2) // 3 * 4:
        raise too_much  # before decoding: a bound on the work too
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise AgentError(f"the guest agent's {what} carries data that is not base64", hint=_HINT) from None
    if len(data) > limit:
        raise too_much
    return data


def _short(text: str, what: str) -> str:
    """A name the guest gives (an interface's, a MAC), shown as is when short enough to be one."""
    if len(text) > 64:
        raise AgentError(f"the guest agent's {what} gives a name of {len(text)} characters: {excerpt(text)}",
                         hint=_HINT)
    return text


def _address(entry: dict[str, Any], what: str) -> str:
    """``address/prefix``, the address an IPv4 or IPv6 address and the prefix a length that fits it."""
    text = _field(entry, "ip-address", str, what)
    prefix = _field(entry, "prefix", int, what)
    try:
        address = ipaddress.ip_address(text.split("%")[0])  # an IPv6 link-local address may carry its zone
    except ValueError:
        raise AgentError(f"the guest agent's {what} gives the address {excerpt(text)}", hint=_HINT) from None
    if not 0 <= prefix <= address.max_prefixlen:
        raise AgentError(f"the guest agent's {what} gives the prefix length {prefix}", hint=_HINT)
    return f"{address}/{prefix}"


def _brief(message: Any) -> str:
    try:
        return excerpt(json.dumps(message))
    except (TypeError, ValueError):
        return excerpt(message)


# -- the socket ------------------------------------------------------------------------
_CHANNEL = Channel("agent.lock", "the guest agent", "the guest agent's channel",
                   "is the VM running? minivisor vm show", AgentError)


def _readable(sock: socket.socket, timeout: float) -> bool:
    """poll(), not select(): in a service holding many connections, descriptors go past 1,023."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(timeout * 1000))
