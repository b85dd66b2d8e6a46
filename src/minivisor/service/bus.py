"""The event bus behind ``/v1/events``: every event the core reports, fanned out to each SSE client.

The core writes each event to the VM's own log (:mod:`minivisor.core.events`)
and hands it to the service's ``on_event`` hook, which publishes it here.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from ..core.events import Event

__all__ = ["EventBus"]


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
