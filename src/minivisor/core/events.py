"""Events: what happened to a VM (powered on, guest ready, powered off, crashed...).

The core API reports each state change to :func:`record` (through
``Hypervisor._emit``): the event lands in the VM's own event log
(``events.jsonl`` in its folder, JSON lines, capped at :data:`LOG_CAP` bytes
with one previous generation kept) and, inside the service, on the
:class:`EventBus` that feeds ``/v1/events`` (server-sent events).
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio  # the bus lives in the service; the CLI does not pay for asyncio

__all__ = ["Event", "EventBus", "LOG_CAP", "append_log", "read_log", "make_event"]

LOG_NAME = "events.jsonl"
LOG_CAP = 256 * 1024  # bytes per generation; events.jsonl.1 keeps the previous one
LINE_CAP = 4096  # one event is one short line; longer fields are cut

Event = dict[str, Any]


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


class EventBus:
    """Fan-out of events to subscribers (SSE clients on the service's event loop).

    Events are published from any thread (the core's operations run in worker
    threads, the supervisor in its own); each subscriber is an asyncio queue fed
    on the loop that subscribed it, in publishing order. A subscriber that falls
    :data:`QUEUE_CAP` events behind is dropped (its stream ends) rather than
    making the service hold unbounded memory.
    """

    QUEUE_CAP = 1000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: dict[asyncio.Queue[Event | None], asyncio.AbstractEventLoop] = {}
        self._seq = 0

    def publish(self, event: Event) -> Event:
        with self._lock:  # held while queueing, so every subscriber sees the ids in order
            self._seq += 1
            event = {"id": self._seq, **event}
            for q, loop in list(self._subscribers.items()):
                self._on_loop(q, loop, self._deliver, q, event)
        return event

    def subscribe(self) -> asyncio.Queue[Event | None]:
        """A queue of the events from now on; None ends it. Call it on the event loop."""
        import asyncio

        q: asyncio.Queue[Event | None] = asyncio.Queue()
        with self._lock:
            self._subscribers[q] = asyncio.get_running_loop()
        return q

    def unsubscribe(self, q: asyncio.Queue[Event | None]) -> None:
        with self._lock:
            self._subscribers.pop(q, None)

    def close(self) -> None:
        """End every subscriber's stream (the service is stopping)."""
        with self._lock:
            for q, loop in list(self._subscribers.items()):
                self._on_loop(q, loop, q.put_nowait, None)
            self._subscribers.clear()

    def _deliver(self, q: asyncio.Queue[Event | None], event: Event) -> None:
        if q.qsize() < self.QUEUE_CAP:
            q.put_nowait(event)
        elif self._drop(q):
            q.put_nowait(None)  # it has fallen too far behind: its stream ends after what it has

    def _drop(self, q: asyncio.Queue[Event | None]) -> bool:
        with self._lock:
            return self._subscribers.pop(q, None) is not None

    def _on_loop(self, q: asyncio.Queue[Event | None], loop: asyncio.AbstractEventLoop, func, *args: Any) -> None:
        """Run ``func`` on the subscriber's loop; a subscriber whose loop has closed is forgotten (lock held)."""
        try:
            loop.call_soon_threadsafe(func, *args)
        except RuntimeError:  # the loop is closed (the service stopped while an operation ran)
            self._subscribers.pop(q, None)
