"""Waiting for the guest to say it is ready: the console relay notes its ready line in the runtime folder.

The wait sleeps until the note may have come, not for a fixed time: inotify wakes it when a name is
renamed into the runtime folder (the relay publishes its notes that way, as ``remember_ready`` does),
and the VMM's pidfd when QEMU ends. Where inotify cannot be had (the user's limit of instances or
watches is reached), it looks every :data:`POLL` seconds instead.

The power-on that waits (``vm start --wait-ready``) sleeps on a pipe instead of inotify: the relay it
started holds the pipe's other end and closes it once the ready line is noted (or when it exits).
Closing an inotify descriptor, or exiting with one open, waits for the kernel's RCU grace period
(0-18 ms on the test host): at the end of every ``vm start --wait-ready``, after the guest is ready.

Loaded by ``vm start --wait-ready`` while the guest boots: the standard library's ``os``, ``select``,
``time`` and ``ctypes`` (for libc's inotify calls), nothing of the console's terminal handling.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import GuestError

__all__ = ["wait_for_ready", "FolderWatch"]

POLL = 0.01  # seconds between looks without inotify
IN_MOVED_TO = 0x80  # <sys/inotify.h>: a name was renamed into the watched folder


def wait_for_ready(ready_line: Callable[[], str | None], needle: str, timeout: float, *,
                   alive: Callable[[], bool] = lambda: True, runtime_dir: Path | None = None,
                   vmm_pid: int | None = None, relay_signal: int | None = None) -> str:
    """Wait until ``ready_line()`` gives the guest's ready line (the console relay notes it); return it.

    The relay remembers the line, so this never scans the log, however much the guest printed.
    ``runtime_dir``, where the note appears, and ``vmm_pid``, QEMU's pid, let the wait sleep until
    either changes; without them it looks every :data:`POLL` seconds. ``relay_signal``: the read end of
    the pipe whose other end the relay closes once the line is noted (the caller closes it afterwards).
    """
    deadline = time.monotonic() + timeout
    with FolderWatch(runtime_dir, vmm_pid, relay_signal) as watch:  # watching before the first look: none missed
        while (line := ready_line()) is None:
            if not alive():
                raise GuestError(f"the VM powered off before its guest said {needle!r}",
                                 hint="see its serial.log and vmm.log")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise GuestError(f"the guest did not say {needle!r} within {timeout:.0f} s",
                                 hint="see what it printed in its serial.log")
            watch.sleep(remaining)
    return line


class FolderWatch:
    """Sleeps until a name is renamed into ``folder`` (or, given ``relay_signal``, until the relay closes that
    pipe) or the process ``pid`` ends, or a timeout passes; without both (no inotify to be had, no pid, or it
    has ended), for :data:`POLL` seconds at most. ``relay_signal`` stays the caller's to close."""

    def __init__(self, folder: Path | None, pid: int | None, relay_signal: int | None = None) -> None:
        self.fds: list[int] = []  # what this watch opened, and closes
        self.poller = select.poll()
        self.polling = True
        self.waker: int | None = relay_signal
        self.pidfd: int | None = None
        if pid is None or (relay_signal is None and folder is None):
            return
        if relay_signal is None:
            self.waker = _inotify(folder) if folder is not None else None
            if self.waker is None:
                return
            self.fds.append(self.waker)
        try:
            self.pidfd = os.pidfd_open(pid)
        except OSError:
            return  # it has ended already: the caller's next look sees it
        self.fds.append(self.pidfd)
        for fd in (self.waker, self.pidfd):
            self.poller.register(fd, select.POLLIN)
        self.polling = False

    def sleep(self, timeout: float) -> None:
        """Return once something may have changed (or after ``timeout`` seconds at most)."""
        if self.polling:
            time.sleep(min(timeout, POLL))
            return
        for fd, _ in self.poller.poll(timeout * 1000):
            if fd == self.pidfd:  # stays readable; QEMU may not be reaped yet, so the caller's looks settle it
                self.polling = True
            elif not _drain(fd):  # the relay closed its end: the note is there, or the relay is gone
                self.polling = True

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []

    def __enter__(self) -> FolderWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _inotify(folder: Path) -> int | None:
    """An inotify descriptor watching names renamed into ``folder``, or None where there is none to be had."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, AttributeError):
        return None
    if fd < 0:
        return None
    if libc.inotify_add_watch(fd, os.fsencode(folder), IN_MOVED_TO) < 0:
        os.close(fd)
        return None
    return fd


def _drain(fd: int) -> bool:
    """Read what is waiting (its content does not matter: the caller looks at the note itself); False at the
    end of a pipe (the relay closed its end). Both descriptors are non-blocking; inotify's never ends."""
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        return True
    return False
