"""Exclusive ``flock`` locks on files, the one mechanism behind every minivisor lock.

An ``flock`` belongs to an open file description: it is released when the
last descriptor closes, so a process that dies never leaves a stale lock, and
a descriptor handed to a child (the VMM) keeps the lock for as long as the child
lives.
"""

from __future__ import annotations

import fcntl
import os
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:  # the console relay imports this: it starts with every power-on, so it loads no pathlib
    from pathlib import Path

__all__ = ["try_lock", "wait_lock"]


def try_lock(path: Path | str) -> int | None:
    """Take an exclusive lock on ``path`` (created 0600); its descriptor, or None if held elsewhere."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def wait_lock(path: Path | str, timeout: float, poll: float = 0.005) -> int | None:
    """Like :func:`try_lock`, retrying for up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (fd := try_lock(path)) is None:
        if time.monotonic() > deadline:
            return None
        time.sleep(poll)
    return fd
