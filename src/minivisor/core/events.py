"""Events: what happened to a VM (powered on, guest ready, powered off, crashed...).

The core API reports each state change through ``Hypervisor._emit``: the
event (:func:`make_event`) lands in the VM's own event log (``events.jsonl``
in its folder, JSON lines, capped at :data:`LOG_CAP` bytes with one previous
generation kept), then goes to the ``on_event`` hook, through which the service
publishes it on its bus (:mod:`minivisor.service.bus`, behind ``/v1/events``).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from typing import Any

__all__ = ["Event", "LOG_CAP", "append_log", "read_log", "make_event"]

LOG_NAME = "events.jsonl"
LOG_CAP = 256 * 1024  # bytes per generation; events.jsonl.1 keeps the previous one
LINE_CAP = 4096  # one event is one short line; longer fields are cut

Event = dict[str, "Any"]  # a string: Any is imported for type checkers only


def make_event(kind: str, vm: str, **data: Any) -> Event:
    """An event: its type, the VM, when, and what else there is to say."""
    return {"type": kind, "vm": vm, "time": round(time.time(), 3), **data}


def append_log(vm_dir: Path, event: Event) -> None:
    """Append one event to the VM's log; rotate when the log reaches its cap.

    Several processes (the CLI, the service) may append at once: each append
    and rotation happens under an ``flock`` of the log itself.
    """
    line = json.dumps(event, default=str, separators=(",", ":"))
    if len(line) >= LINE_CAP:
        line = json.dumps({k: (v[:200] if isinstance(v, str) else v) for k, v in event.items()},
                          default=str, separators=(",", ":"))[:LINE_CAP - 1]
    path = vm_dir / LOG_NAME
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_size + len(line) + 1 > LOG_CAP:
            os.replace(path, path.with_name(LOG_NAME + ".1"))
            os.close(fd)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def read_log(vm_dir: Path, limit: int = 100) -> list[Event]:
    """The last ``limit`` events of a VM, oldest first (both generations)."""
    events: list[Event] = []
    for path in (vm_dir / (LOG_NAME + ".1"), vm_dir / LOG_NAME):
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                events.append(json.loads(line))
            except ValueError:
                continue  # a torn line from a crash: skip it
    return events[-limit:] if limit else events
