"""One VM as an operation sees it, and the turns operations on a VM take.

A :class:`VmContext` is looked up in the catalog once per operation and handed
to everything that works on the VM: its catalog entry, its paths, its VMM, its
path policy and its events. :meth:`Vms.operate` gives an operation its turn on
the VM (across processes: the CLI and the service) and checks the state table
(:mod:`minivisor.vmm.states`) before the operation begins.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path

from ..datastore.catalog import VmEntry
from ..datastore.inventory import Inventory, read_vmx
from ..datastore.layout import VmPaths
from ..datastore.store import Datastore, Scope
from ..errors import HvError, LockError, NotFoundError, host_refused
from ..locks import wait_lock
from ..records import Record
from ..vmm.process import SHORT_HOLD, Vmm
from ..vmm.states import Action, VmState, require
from .events import Event, append_log, make_event

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:  # imported where used: reading the catalog (`vm list`) needs neither
    from typing import Any

    from ..spec.vmspec import VmSpec
    from ..storage.snapshots import VmFiles
    from ..vmm.plan import LaunchPlan
    from .networks import Networks

__all__ = ["VmContext", "Vms", "EventListener", "OPERATION_WAIT"]

EventListener = Callable[[Event], None]
OPERATION_WAIT = 120.0  # seconds an operation waits for the one before it on the same VM


class VmContext(Record):
    """A VM for the length of one operation."""

    entry: VmEntry
    paths: VmPaths
    vmm: Vmm
    datastore: Datastore
    inventory: Inventory
    listener: EventListener | None = None
    running: bool = False  # whether its VMM runs during this operation (set by operations that allow both)

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def uuid(self) -> str:
        return self.entry.uuid

    @property
    def vmx(self) -> Path:
        return self.paths.vmx

    @property
    def vm_dir(self) -> Path:
        return self.paths.vm_dir

    @cached_property
    def scope(self) -> Scope:
        """The VM's path policy: which files its devices may open."""
        return self.datastore.vm_scope(self.entry)

    def files(self) -> VmFiles:
        """Its folder, specfile and snapshot tree as they are now, under its path policy."""
        from ..storage.snapshots import VmFiles

        return VmFiles(self.datastore, self.vmx, self.scope)

    def read_spec(self) -> VmSpec:
        """The virtual hardware its specfile asks for now."""
        from ..spec.vmspec import VmSpec

        return VmSpec.from_vmx(read_vmx(self.vmx))

    def plan(self, *, incoming: bool = False, spec: VmSpec | None = None) -> LaunchPlan:
        """What a power-on would build now (every check made, nothing touched); ``spec``: the specfile as
        the caller has just read it, in this turn."""
        from ..vmm.plan import make_plan

        return make_plan(self.name, self.uuid, self.paths, self.scope, incoming=incoming,
                         networks=lambda: self.networks().for_plan(self.uuid), spec=spec)

    def networks(self) -> Networks:
        """The datastore's virtual networks (which this VM's NICs join)."""
        from .networks import Networks

        return Networks(self.datastore, self.inventory)

    def emit(self, kind: str, **data: Any) -> Event:
        """Report a state change: into the VM's event log, then to the listener (the service's bus)."""
        event = make_event(kind, self.name, **data)
        try:
            append_log(self.vm_dir, event)
        except (OSError, HvError):
            pass  # the event log is a record, never a reason for an operation to fail (a full datastore)
        notify(self.listener, event)
        return event


def notify(listener: EventListener | None, event: Event) -> None:
    """Hand an event to the listener; a listener's bug never fails the operation that reported it."""
    if listener is None:
        return
    try:
        listener(event)
    except Exception:  # noqa: BLE001 - see above
        pass


class Vms(Record):
    """The VMs of one datastore, as contexts, and the turns operations on each take."""

    datastore: Datastore
    inventory: Inventory
    listener: EventListener | None = None

    def __post_init__(self) -> None:
        # Not in the VM's folder: a refused request leaves no trace there.
        self._locks = self.datastore.meta / "locks"

    def emit(self, name: str, kind: str, **data: Any) -> Event:
        """An event about the VM ``name``: into its event log if it is still registered, to the listener always."""
        try:
            return self.context(name).emit(kind, **data)
        except NotFoundError:  # deleted or unregistered meanwhile: nothing to log it in
            event = make_event(kind, name, **data)
            notify(self.listener, event)
            return event

    def context(self, name: str) -> VmContext:
        """The VM named ``name`` (NotFoundError if the catalog has none)."""
        entry = self.datastore.catalog.get(name)
        paths = self.inventory.paths_of(entry)
        return VmContext(entry, paths, Vmm(entry.name, paths), self.datastore, self.inventory, self.listener)

    @contextmanager
    def operate(self, name: str, action: Action, *, wait: float = OPERATION_WAIT) -> Iterator[VmContext]:
        """Its turn on the VM for one operation, once the state table allows ``action``.

        One operation on a VM at a time, across processes: the VM lock cannot do
        this (the VMM holds it while it runs). Without it, two stops could both
        see the VM running, and the second could send its ``quit`` to a VMM a
        third process had just started on the same socket.
        """
        ctx = self.context(name)
        try:
            self._locks.mkdir(mode=0o700, exist_ok=True)
            fd = wait_lock(self._locks / f"{ctx.uuid}.lck", wait, poll=0.01)
        except OSError as exc:  # .minivisor is immutable, or the datastore on a read-only mount
            raise host_refused(f"create the operation lock of VM {ctx.name!r} in {self._locks}", exc) from exc
        if fd is None:
            raise LockError(f"VM {ctx.name!r} is busy with another operation", hint="retry when it has finished")
        try:
            state = ctx.vmm.state()
            require(ctx.name, state, action)
            ctx.running = state in (VmState.RUNNING, VmState.PAUSED)
            yield ctx
        finally:
            os.close(fd)

    @contextmanager
    def hold(self, ctx: VmContext) -> Iterator[VmContext]:
        """The VM lock of a powered-off VM for the rest of an operation (no power-on can begin).

        The caller holds the VM's turn, so only a short holder can be in the way: another process's
        state probe, or its cleanup of the VMM that just exited.
        """
        ctx.vmm.lock.acquire(ctx.name, wait=SHORT_HOLD)
        try:
            yield ctx
        finally:
            ctx.vmm.lock.release()
