"""The task list: the operations the service is running and has run lately, with their progress and errors.

Every change a request asks of the core (a mutating route, or one whose core
method reports progress: a clone, an import, a conversion, a copy), and every
upload into the datastore, is a task
from the moment the request arrives until its answer: running, then done or
failed (with the error's words). The core's ``progress`` callbacks feed the
running task's percentage. Each change of a task is published on the event
bus as a ``task`` event; ``GET /v1/tasks`` lists them all, newest first.

The list is bounded: the running tasks (at most the dispatcher's workers) and
the last :data:`KEEP` that ended.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ..core.hypervisor import Hypervisor
from ..errors import HvError
from ..text import excerpt
from .routes import Op

__all__ = ["Task", "Tasks", "KEEP", "is_task", "reports_progress"]

KEEP = 100  # ended tasks kept in the list


@functools.cache  # asked at every request that is a task: the signature is read once per route
def reports_progress(op: Op) -> bool:
    """Whether the core method behind ``op`` takes a ``progress`` callback."""
    return "progress" in inspect.signature(getattr(Hypervisor, op.name)).parameters


def is_task(op: Op) -> bool:
    """Whether a request of ``op`` is a task: it changes something, or it lasts and says how far it is."""
    return op.mutates or reports_progress(op)


class Task:
    """One operation: what, on which VM (and what else it names), when, how far, how it ended."""

    __slots__ = ("id", "operation", "vm", "subject", "started", "ended", "state", "progress", "note", "error")

    def __init__(self, id: int, operation: str, vm: str | None, subject: str | None, measured: bool) -> None:
        self.id, self.operation, self.vm, self.subject = id, operation, vm, subject
        self.started, self.ended = time.time(), None
        self.state = "running"
        self.progress: float | None = 0.0 if measured else None  # None: the operation says nothing until it ends
        self.note: str | None = None  # what the operation is at (the disk an import copies)
        self.error: str | None = None

    def milestone(self) -> tuple[int | None, str | None]:
        """How far it is, as the list shows it: a change of this is published, the rest is not."""
        return (None if self.progress is None else int(self.progress)), self.note

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


class Tasks:
    """The bounded task list of one service; ``publish`` gets a ``task`` event for each change (any thread)."""

    def __init__(self, publish: Callable[[dict[str, Any]], Any], keep: int = KEEP) -> None:
        self._publish = publish
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._running: dict[int, Task] = {}
        self._ended: deque[Task] = deque(maxlen=keep)

    def begin(self, op: Op, values: dict[str, Any]) -> Task:
        """A running task for a request of ``op`` with these values (path and body, not yet checked: only the
        strings among them are kept, as short excerpts)."""
        vm = values.get(op.vm_param) if op.vm_param else None
        others = (values.get(arg) for arg in op.args if arg != op.vm_param)
        subject = next((value for value in others if isinstance(value, str)), None)
        return self.start(op.name, vm, subject, measured=reports_progress(op))

    def start(self, operation: str, vm: Any, subject: Any, *, measured: bool) -> Task:
        """A running task of ``operation`` (a core method's name, or the service's own: ``upload``); ``measured``:
        it will report its progress."""
        with self._lock:
            task = Task(next(self._ids), operation, _shown(vm), _shown(subject), measured)
            self._running[task.id] = task
        self._changed(task)
        return task

    def reporter(self, task: Task) -> Callable[..., None]:
        """The ``progress`` callback for the task's core method: a percentage, a note (a line, a disk's name),
        or both, as each method reports them; published when the whole percentage or the note changes."""

        def report(*values: Any) -> None:
            percent = next((v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)), None)
            note = next((v for v in values if isinstance(v, str)), None)
            before = task.milestone()
            if percent is not None:
                task.progress = round(min(100.0, max(0.0, float(percent))), 1)
            if note is not None:
                task.note = _shown(note)
            if task.milestone() != before:
                self._changed(task)

        return report

    def end(self, task: Task, error: BaseException | None = None, result: Any = None) -> None:
        """The task is done (``result`` may name the VM it made), or failed with ``error``."""
        task.ended = time.time()
        if error is None:
            task.state, task.progress = "done", 100.0
            made = getattr(result, "name", None)
            if task.vm is None and isinstance(made, str):
                task.vm = made
        else:
            task.state, task.error = "failed", _words(error)
        with self._lock:
            self._running.pop(task.id, None)
            self._ended.append(task)
        self._changed(task)

    def list(self) -> list[dict[str, Any]]:
        """Every task kept, newest first."""
        with self._lock:
            tasks = [*self._running.values(), *self._ended]
        return [task.as_dict() for task in sorted(tasks, key=lambda t: t.id, reverse=True)]

    def _changed(self, task: Task) -> None:
        event: dict[str, Any] = {"type": "task", "time": time.time(), "task": task.as_dict()}
        if task.vm:
            event["vm"] = task.vm
        self._publish(event)


def _shown(value: Any) -> str | None:
    """A name or path from a request, as the list keeps it: a string, cut short; anything else, nothing."""
    if not isinstance(value, str):
        return None
    return value if len(value) <= 200 else excerpt(value, 200)


def _words(error: BaseException) -> str:
    """What went wrong, as the API's error answer says it."""
    if isinstance(error, HvError):
        return error.message + (f" ({error.hint})" if error.hint else "")
    if isinstance(error, (asyncio.CancelledError, KeyboardInterrupt, SystemExit)):
        return "the service stopped before the operation answered"
    return "internal error (see the service's log)"
