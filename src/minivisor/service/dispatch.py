"""Core API calls made from the event loop: worker threads, a pool of Hypervisors, one mutation per VM at a time.

The core blocks (a power-on with ``wait_ready`` waits for minutes), so each
call runs on a worker thread (:meth:`Dispatcher.run_blocking`, at most
:data:`WORKERS` at once) with a :class:`~minivisor.core.hypervisor.Hypervisor`
of its own from a pool. :meth:`Dispatcher.dispatch` turns a request into a call:
its values checked first (by its request model: :func:`minivisor.service.models.arguments`), then, for a
mutating route, the VM's in-process lock taken, so requests queue instead of
polling the core's cross-process locks. A snapshot is answered once it is durable
(its journal committed); its idempotent rest runs after the answer, in the VM's turn,
and every call waits for it before it reads or changes that VM.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ..core.events import Event
from ..core.hypervisor import Hypervisor
from ..datastore.store import check_vm_name
from ..errors import LockError
from .models import arguments
from .routes import Op

__all__ = ["Dispatcher", "WORKERS", "OP_LOCK_TIMEOUT", "FINISHED_LATER"]

log = logging.getLogger("minivisor.service")

# Core methods that can answer once their work is durable and finish its idempotent rest after the answer.
FINISHED_LATER = frozenset({"snapshot_take"})
WORKERS = 64  # blocking core calls at once: long ones (power-on + wait_ready) must not queue behind each other
OP_LOCK_TIMEOUT = 120.0  # seconds a request waits for another operation on the same VM


class Dispatcher:
    """The core API of one datastore, called from the service's event loop.

    Every Hypervisor it makes reports its events to ``on_event``. Creating the
    dispatcher opens (creates) the datastore.
    """

    def __init__(self, root: Path, on_event: Callable[[Event], None]) -> None:
        self.root = root
        self._on_event = on_event
        self._pool: queue.LifoQueue[Hypervisor] = queue.LifoQueue()
        self._pool.put(Hypervisor(root, on_event=on_event))
        self._vm_locks: dict[str, asyncio.Lock] = {}
        self._pending: dict[str, asyncio.Event] = {}  # VM -> set once the rest of the call answered early has run
        self._workers = asyncio.Semaphore(WORKERS)
        self._running = 0  # calls of the core on worker threads now
        self._count = threading.Lock()

    @property
    def busy(self) -> bool:
        """Whether a call of the core runs, or the rest of one answered early is still to run."""
        return bool(self._running or self._pending)

    def hypervisor(self) -> _Lease:
        """A Hypervisor for this thread's use: ``with dispatcher.hypervisor() as hv:`` (back to the pool after)."""
        try:
            hv = self._pool.get_nowait()
        except queue.Empty:
            hv = Hypervisor(self.root, on_event=self._on_event)
        return _Lease(self._pool, hv)

    def emit(self, kind: str, name: str, **data: Any) -> None:
        """An event the service itself observed (crash, reattach): logged and published like the core's own."""
        with self.hypervisor() as hv:
            hv.vms.emit(name, kind, **data)

    async def dispatch(self, op: Op, path_params: dict[str, str], body: dict[str, Any], *,
                       progress: Callable[..., None] | None = None,
                       later: list[Callable[[], Awaitable[None]]] | None = None) -> Any:
        """Check a request's values with its model, then run the core method (mutations one at a time per VM);
        ``progress``, if given, goes to the method's own ``progress`` parameter (the service's task list).

        Every call first waits for what is left of the operations already answered on its VM (on any VM, for a
        call that names none), so what it reads is settled. ``later``: where a method that can answer before
        its last steps (:data:`FINISHED_LATER`) leaves them, as a coroutine function the caller must await after
        sending the answer; the VM stays busy until then. Without ``later``, every call finishes before it returns.
        """
        kwargs = arguments(op, path_params, body, os.path.abspath(self.root))
        if progress is not None:
            kwargs["progress"] = progress
        target = kwargs.get(op.vm_param) if op.vm_param else None
        await self._settled(target if isinstance(target, str) else None)
        if not (op.mutates and isinstance(target, str)):
            return await self.call(_invoke, op.name, kwargs)
        lock = self._vm_lock(target)
        try:
            await asyncio.wait_for(lock.acquire(), OP_LOCK_TIMEOUT)
        except TimeoutError:
            raise LockError(f"VM {target!r} is busy with another operation",
                            hint="retry when it has finished") from None
        if later is None or op.name not in FINISHED_LATER:
            try:
                return await self.call(_invoke, op.name, kwargs)
            finally:
                lock.release()
        return await self._answer_early(op, kwargs, target, lock, later)

    async def _answer_early(self, op: Op, kwargs: dict[str, Any], target: str, lock: asyncio.Lock,
                            later: list[Callable[[], Awaitable[None]]]) -> Any:
        """Call a method of :data:`FINISHED_LATER` with its ``finish_later``; what it hands over goes to ``later``,
        with the VM's lock and the Hypervisor kept until it has run."""
        rest: list[Callable[[], None]] = []
        kwargs["finish_later"] = rest.append
        lease = self.hypervisor()
        try:
            result = await self.run_blocking(_invoke, lease.hv, op.name, kwargs)
        except BaseException:
            lease.__exit__()
            lock.release()
            raise
        if not rest:
            lease.__exit__()
            lock.release()
            return result
        key = target.lower()
        done = self._pending[key] = asyncio.Event()  # one at a time: the VM's lock is held until it is set

        async def finish() -> None:
            try:
                await self.run_blocking(rest[0])
            except Exception:  # noqa: BLE001 - answered already: the next operation on the VM settles its journal
                log.exception("the rest of %s on VM %r failed", op.name, target)
            finally:
                lease.__exit__()
                lock.release()
                del self._pending[key]
                done.set()

        later.append(finish)
        return result

    async def _settled(self, name: str | None) -> None:
        """Until what is left of the operations answered early on VM ``name`` (on every VM if None) has run."""
        pending = list(self._pending.values()) if name is None else [self._pending.get(name.lower())]
        for done in pending:
            if done is not None:
                await done.wait()

    async def call(self, func: Callable[..., Any], /, *args: Any) -> Any:
        """``func(hv, *args)`` on a worker thread, ``hv`` a Hypervisor from the pool."""
        return await self.run_blocking(self._leased, func, *args)

    def _vm_lock(self, name: str) -> asyncio.Lock:
        check_vm_name(name)  # the core refuses such a name anyway; checked first so junk never becomes a key
        return self._vm_locks.setdefault(name.lower(), asyncio.Lock())

    def _leased(self, func: Callable[..., Any], *args: Any) -> Any:
        with self.hypervisor() as hv:
            return func(hv, *args)

    async def run_blocking(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """``func(*args, **kwargs)`` on a worker thread, at most :data:`WORKERS` at once.

        One daemon thread per call rather than a pool that interpreter exit
        waits for: a power-on with ``wait_ready`` blocks for minutes, and a
        stopping service must not wait for it (the core is crash-safe, and
        the next start finishes or undoes what was cut short).
        """
        loop = asyncio.get_running_loop()
        async with self._workers:
            done: asyncio.Future[Any] = loop.create_future()
            with self._count:
                self._running += 1  # until the thread ends, even if the request awaiting it is cancelled

            def work() -> None:
                try:
                    outcome = (func(*args, **kwargs), None)
                except BaseException as exc:  # noqa: BLE001 - handed to the awaiting request
                    outcome = (None, exc)
                finally:
                    with self._count:
                        self._running -= 1
                try:
                    loop.call_soon_threadsafe(_settle, done, *outcome)
                except RuntimeError:
                    pass  # the loop has closed: the service stopped while this call ran

            threading.Thread(target=work, name=f"core {getattr(func, '__name__', 'call')}", daemon=True).start()
            return await done


def _invoke(hv: Hypervisor, method: str, kwargs: dict[str, Any]) -> Any:
    return getattr(hv, method)(**kwargs)


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.cancelled():
        return  # the request was cancelled (the service is stopping); the call finished anyway
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


class _Lease:
    """A Hypervisor borrowed from the pool for one ``with`` block."""

    def __init__(self, pool: queue.LifoQueue[Hypervisor], hv: Hypervisor) -> None:
        self.pool, self.hv = pool, hv

    def __enter__(self) -> Hypervisor:
        return self.hv

    def __exit__(self, *exc: object) -> None:
        self.pool.put(self.hv)
