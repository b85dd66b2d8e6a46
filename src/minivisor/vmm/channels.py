"""A turn on one of a VMM's UNIX sockets, and the connection to it: the QMP monitor and the guest agent's
channel each take one client at a time, so every client first takes the socket's lock file beside it."""

from __future__ import annotations

import os
import socket

from ..errors import HvError
from ..locks import wait_lock

__all__ = ["Channel"]


class Channel:
    """How one kind of socket is named in errors: ``peer`` ("the VMM"), ``busy`` (what stays busy), the hint for
    a socket that cannot be reached, and the error class raised. (A plain class: the console relay, which
    starts with every VM, imports this without dataclasses.)"""

    def __init__(self, lock_name: str, peer: str, busy: str, hint: str, error: type[HvError]) -> None:
        self.lock_name, self.peer, self.busy, self.hint, self.error = lock_name, peer, busy, hint, error

    def take_turn(self, path: str, timeout: float) -> int:
        """The lock file's descriptor, held while the socket is used (close it to give the turn back)."""
        try:
            fd = wait_lock(os.path.join(os.path.dirname(path), self.lock_name), timeout)
        except OSError as exc:
            raise self.error(f"cannot talk to {self.peer} over {path}: {exc.strerror}", hint=self.hint) from exc
        if fd is None:
            raise self.error(f"{self.busy} {path} stayed busy for {timeout:.0f} s",
                             hint=f"another command is talking to {self.peer}; retry")
        return fd

    def connect(self, path: str) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            raise self.error(f"cannot talk to {self.peer} over {path}: {exc.strerror}", hint=self.hint) from exc
        return sock
