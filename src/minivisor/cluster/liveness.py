"""A member's **liveness and self-fencing**, run by its service (``minivisor serve``).

Threads of their own, so that a hung request to etcd never delays a fence:

- the **keeper** renews the host's lease every :func:`~.config.keepalive_every` (TTL/5), publishes
  what the host has (``alive/<host>``, attached to the lease), and keeps ownership and reality
  equal: a running VM this host does not own is claimed, or fenced if another host owns it; an
  owned VM that is powered off and idle is released. With no cluster configuration it only
  looks, once a second, for one (``cluster init``/``join`` need no restart of the service).
- the **watchdog** fences: when no renewal has been acknowledged for :func:`~.config.fence_after`
  (0.6 TTL) since it was sent, every VM of the host is killed at once (SIGKILL, no QMP), before
  etcd can expire the lease and let another host claim them; until the host has a lease again, a
  VMM that appears (a power-on that claimed its VM just before the fence) is killed too. The keeper,
  once etcd answers again, revokes the fenced lease and takes a new one.
- the **receiver** looks for migration requests addressed to this host (:mod:`.migration`) and hands
  each new one to :meth:`Host.receive_migration` on a thread of its own (and each power-on placement asked of
  this host, :mod:`.starting`, to :meth:`Host.receive_start`); until that returns, the VM it
  brings in is left alone by the keeper (it runs here before this host owns it, by design). It also
  cleans up after processes that died: VMs a previous service was taking in, and migrations out of this
  host whose process (``vm migrate``) ended before it finished.
- the **restarter** powers on here the HA VMs whose host died (:mod:`.ha`), once a second while this host
  has a lease.
- the **replicator** runs a round of each replication this host is the source of when it is due
  (:mod:`.replication`, one at a time), and removes the replicas kept here whose replication ended; the
  receiver hands each round asked of this host to :meth:`Host.receive_round`.

A restarted service takes over its predecessor's lease while it is alive, so the claims of the VMs
that kept running stay valid. A service that stops (or is killed) while VMs run on its host leaves the
host's **watchdog process** (:mod:`minivisor.core.watchdog`, started by the keeper, fed a heartbeat after each
renewal: :mod:`.heartbeat`) to fence them at 0.7 TTL, unless a new service renews the lease before that.

What the member does to VMs goes through a :class:`Host`, which the service makes from the core API.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import ClusterError, HvError, OwnedElsewhereError
from . import heartbeat
from .config import ClusterConfig, fence_after, keepalive_every
from .records import LiveRecord, OwnerRecord, alive_key, from_value, to_value

if TYPE_CHECKING:  # etcd's client is loaded once the datastore is in a cluster, not before
    from .migration import Destination
    from .replication import Round
    from .starting import Starter
    from .store import Entry, Store

__all__ = ["Member", "Host"]

log = logging.getLogger("minivisor.cluster")

IDLE_POLL = 1.0  # seconds between looks for a cluster configuration while there is none
WATCH = 0.1  # seconds between the watchdog's looks at the last renewal
SWEEP = 0.5  # seconds between a fenced host's looks for VMs that started after its fence
RECEIVE_POLL = 0.5  # seconds between the receiver's looks for migration requests
HA_POLL = 1.0  # seconds between the restarter's looks at the HA VMs' owners
REPLICATE_POLL = 1.0  # seconds between the replicator's looks at the replications due


class Host(Protocol):
    """This host's VMs, as the member needs them (the service implements it over the core API)."""

    def running(self) -> dict[str, str]:
        """The VMs whose VMM runs or is being started: uuid -> name."""

    def fence(self, names: list[str], reason: str) -> None:
        """Kill those VMs' VMMs now (no guest shutdown, no waiting for an operation's turn)."""

    def release_if_idle(self, vm_uuid: str, release: Callable[[], Any]) -> None:
        """Call ``release`` while the VM is powered off and no operation can start it (or if it is unknown)."""

    def facts(self) -> dict[str, Any]:
        """What the host has now: memory_free_mib, memory_total_mib, cpus, minivisor, qemu."""

    def receive_migration(self, destination: Destination) -> None:
        """Take in the VM ``destination.request`` migrates here, or answer why not (never raises)."""

    def receive_start(self, starter: Starter) -> None:
        """Power on the VM ``starter.request`` names, and answer whether it runs (never raises)."""

    def abandon_incoming(self, owned_here: Callable[[str], bool]) -> None:
        """Remove the VMs a previous service was taking in when it ended, unless ``owned_here(uuid)``."""

    def abandon_outgoing(self, owner_of: Callable[[str], OwnerRecord | None],
                         withdraw: Callable[[str, str], None]) -> None:
        """Undo the migrations whose process died while this host owns the VM, remove the VM here if
        ``owner_of(uuid)`` is the destination (the handover happened), and ``withdraw(dest, request id)`` their
        requests."""

    def guard(self) -> None:
        """Start the host's watchdog process unless it runs (:mod:`minivisor.core.watchdog`)."""

    def registered(self) -> dict[str, str]:
        """The VMs in this host's catalog: uuid -> name (the HA VMs among them may be restarted here)."""

    def replicas(self) -> dict[str, str]:
        """The VMs whose replica this host keeps: uuid -> name."""

    def restart(self, vm_uuid: str, name: str, reason: str) -> None:
        """Power an HA VM on here (claimed first; from its replica if it is not registered here);
        OwnedElsewhereError if another host was first."""

    def receive_round(self, round_: Round) -> None:
        """Take one replication round into this host's replica of its VM, or answer why not (never raises)."""

    def replicate_round(self, name: str) -> None:
        """Run one replication round of the VM ``name`` (LockError if another operation has its turn)."""

    def drop_replicas(self, wanted: Callable[[str], bool]) -> None:
        """Remove the replicas here whose replication ended (``wanted(uuid)`` False), and what a promotion cut
        short left."""


class Member:
    """The cluster member a service runs for its datastore (its ``.minivisor`` folder is ``meta``)."""

    def __init__(self, meta: Path, host: Host) -> None:
        self.meta = meta
        self.host = host
        self._guard = threading.Lock()  # the lease and its last renewal, shared by the two threads
        self._lease: int | None = None
        self._ttl = 0
        self._renewed = 0.0  # monotonic time the last acknowledged renewal was sent
        self._fenced: int | None = None  # a lease given up by a fence, to revoke once etcd answers
        self._stores: dict[tuple[str, ...], Store] = {}
        self._config: ClusterConfig | None = None  # the last one read: a host that left revokes its lease with it
        self._stopping = threading.Event()
        self._receiving: dict[str, threading.Thread] = {}  # request id -> its thread
        self._starting: dict[str, threading.Thread] = {}  # start request id -> its thread
        self._rounds: dict[str, threading.Thread] = {}  # replication round id -> its thread
        self._incoming: set[str] = set()  # uuids of the VMs migrating in: not yet owned here, and not fenced for it
        self._threads = [threading.Thread(target=self._keep, name="cluster-keeper", daemon=True),
                         threading.Thread(target=self._watch, name="cluster-watchdog", daemon=True),
                         threading.Thread(target=self._receive, name="cluster-receiver", daemon=True),
                         threading.Thread(target=self._restart_ha, name="cluster-ha", daemon=True),
                         threading.Thread(target=self._replicate, name="cluster-replication", daemon=True)]
        self._complaint = ""

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop renewing. The lease then expires by itself; with no VM running it is revoked at once."""
        self._stopping.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=10)
        config = ClusterConfig.load(self.meta) if self._lease is not None else None
        if config is None:
            return
        running = self.host.running()
        if not running:
            heartbeat.clear(self.meta)  # nothing to guard: the watchdog process ends
            self._revoke(config, self._lease)
        else:
            log.warning("cluster: this host's lease is no longer renewed while %d VM(s) run here: start the service "
                        "again within %g s to keep them; after that the watchdog process fences them", len(running),
                        heartbeat.fence_after(config.ttl))

    # -- the keeper ------------------------------------------------------------------
    def _keep(self) -> None:
        interval = IDLE_POLL
        while not self._stopping.wait(interval):
            try:
                config = ClusterConfig.load(self.meta)
                if config is None:
                    self._forget()
                    interval = IDLE_POLL
                    continue
                interval = keepalive_every(config.ttl)
                self._config = config
                self._beat(config)
                self._complain("")
            except HvError as exc:
                self._complain(exc.one_line())
            except Exception:  # noqa: BLE001 - the keeper must outlive any bug; the watchdog stays on guard
                log.exception("cluster keeper")

    def _beat(self, config: ClusterConfig) -> None:
        store = self._store(config)
        if self._fenced is not None:  # revoked before anything else: never taken over by _previous_lease
            store.revoke(self._fenced)
            self._fenced = None
        sent = time.monotonic()
        with self._guard:
            lease = self._lease
        if lease is None:
            lease = self._previous_lease(store, config) or store.grant(config.ttl)
            with self._guard:
                self._lease, self._ttl, self._renewed = lease, config.ttl, sent
        elif store.refresh(lease) > 0:
            with self._guard:
                if self._lease != lease:  # fenced while the renewal was on its way
                    return
                self._renewed = sent
        else:  # expired: its claims are gone, so must the VMs be (the watchdog should have been first)
            self._give_up("its lease on the cluster store expired")
            return
        self._heartbeat(config, sent)
        self._publish(store, config, lease)
        self._reconcile(store, config, lease)

    def _heartbeat(self, config: ClusterConfig, renewed: float) -> None:
        """Tell the host's watchdog process that the lease was renewed (and start it if it does not run): it fences
        the host's VMMs when this service renews no more, whatever becomes of the service."""
        try:
            heartbeat.write(self.meta, renewed, config.ttl)
        except OSError as exc:  # the watchdog fences at 0.7 TTL: a warning each beat is not too many
            log.warning("cluster: cannot write the heartbeat for the watchdog process: %s", exc.strerror)
        self.host.guard()

    def _previous_lease(self, store: Store, config: ClusterConfig) -> int | None:
        """The lease this host's previous service kept, if it is still alive: a service restarted within
        the fence delay takes it over, so the claims of the VMs that kept running stay valid."""
        entry = store.get(alive_key(config.host))
        if entry is None or not entry.lease or from_value(LiveRecord, entry.value, entry.key).id != config.host_id:
            return None
        return entry.lease if store.refresh(entry.lease) > 0 else None

    def _publish(self, store: Store, config: ClusterConfig, lease: int) -> None:
        facts = self.host.facts()
        record = LiveRecord(id=config.host_id, vms=tuple(sorted(self.host.running().values())), updated=time.time(),
                            **facts)
        store.put(alive_key(config.host), to_value(record), lease=lease)

    def _reconcile(self, store: Store, config: ClusterConfig, lease: int) -> None:
        """Ownership equal to what runs here. The running VMs are read before the owners: a VM that runs
        was claimed before its VMM started, so it is among the owners read after."""
        from . import ownership

        running = self.host.running()
        owned = ownership.owned_by(store, config)
        for vm_uuid, name in running.items():
            entry = owned.get(vm_uuid)
            if vm_uuid in self._incoming:
                continue  # migrating in: this host owns it from the handover on
            if entry is not None and entry.lease == lease:
                continue
            try:
                ownership.claim(store, config, vm_uuid, name)
            except OwnedElsewhereError as exc:
                self.host.fence([name], exc.message)
        for vm_uuid in owned.keys() - running.keys():
            self.host.release_if_idle(vm_uuid, lambda vm_uuid=vm_uuid: ownership.release(store, config, vm_uuid))

    def _forget(self) -> None:
        """No cluster configuration (never joined, or left): no lease to keep; the last one is revoked."""
        with self._guard:
            lease, self._lease = self._lease, None
        self._fenced = None
        if lease is not None:
            heartbeat.clear(self.meta)
        if lease is not None and self._config is not None:
            log.warning("this host left the cluster; its lease is revoked")
            self._revoke(self._config, lease)

    def _revoke(self, config: ClusterConfig, lease: int | None) -> None:
        if lease is not None:
            try:
                self._store(config).revoke(lease)
            except ClusterError as exc:
                log.warning("could not revoke lease %x: %s", lease, exc.one_line())

    # -- the watchdog -------------------------------------------------------------------
    def _watch(self) -> None:
        swept = 0.0
        while not self._stopping.wait(WATCH):
            with self._guard:
                late = self._lease is not None and time.monotonic() - self._renewed > fence_after(self._ttl)
                fenced = self._lease is None and self._fenced is not None
            if late:
                self._give_up(f"its lease on the cluster store was not renewed for {fence_after(self._ttl):g} s "
                              f"(TTL {self._ttl} s)")
            elif fenced and time.monotonic() - swept > SWEEP:
                # A power-on that claimed its VM just before the fence may launch its VMM just after it: until
                # the host has a lease again, nothing runs on it.
                swept = time.monotonic()
                self._fence_all("this host has been fenced and has no lease yet")

    def _give_up(self, reason: str) -> None:
        """Fence: the lease is given up and every VM of the host killed before it can run elsewhere."""
        with self._guard:
            lease, self._lease = self._lease, None
        if lease is None:
            return
        self._fenced = lease
        self._fence_all(reason)

    def _fence_all(self, reason: str) -> None:
        """Kill every VM of the host; a failure to list them (a busy catalog) is no reason to spare them."""
        while True:
            try:
                names = list(self.host.running().values())
                if names:
                    log.warning("fencing: %s; killing %d VM(s)", reason, len(names))
                    self.host.fence(names, f"fenced: {reason}")
                return
            except Exception:  # noqa: BLE001 - see above
                log.exception("fencing failed; trying again")
            if self._stopping.wait(WATCH):
                return

    # -- the receiver -------------------------------------------------------------------
    def _receive(self) -> None:
        from .migration import withdraw
        from .ownership import owner_of

        abandoned = False
        while not self._stopping.wait(RECEIVE_POLL):
            config = self._config
            if config is None or self._lease is None:
                continue
            try:
                store = self._store(config)
                owns = functools.partial(self._owns, store, config)
                if not abandoned:  # before any new request: what a previous service left half-made
                    self.host.abandon_incoming(owns)
                    abandoned = True
                self.host.abandon_outgoing(functools.partial(owner_of, store), functools.partial(withdraw, store))
                self._take_requests(store, config)
                self._take_starts(store, config)
                self._take_rounds(store, config)
            except HvError as exc:
                self._complain(exc.one_line())
            except Exception:  # noqa: BLE001 - the receiver must outlive any bug
                log.exception("cluster receiver")

    @staticmethod
    def _owns(store: Store, config: ClusterConfig, vm_uuid: str) -> bool:
        from .ownership import owner_of

        owner = owner_of(store, vm_uuid)
        return owner is not None and owner.host_id == config.host_id

    def _take_requests(self, store: Store, config: ClusterConfig) -> None:
        """Each new migration asked of this host on a thread of its own; a malformed request is dropped."""
        from .migration import Destination, read_request, requests_for

        self._take(store, requests_for(store, config), lambda entry: Destination(store, config, read_request(entry)),
                   self._take_in, self._receiving, "migration")

    def _take_starts(self, store: Store, config: ClusterConfig) -> None:
        """Each new power-on asked of this host on a thread of its own; a malformed request is dropped."""
        from .starting import Starter, read_request, requests_for

        self._take(store, requests_for(store, config), lambda entry: Starter(store, config, read_request(entry)),
                   self.host.receive_start, self._starting, "start")

    def _take_rounds(self, store: Store, config: ClusterConfig) -> None:
        """Each new replication round asked of this host on a thread of its own; a malformed request is dropped."""
        from .replication import Round, read_request, requests_for

        self._take(store, requests_for(store, config),
                   lambda entry: Round(store, config, config.host, read_request(entry)),
                   self.host.receive_round, self._rounds, "replica")

    def _take(self, store: Store, asked: list[Entry], read: Callable[[Entry], Any], handle: Callable[[Any], None],
              threads: dict[str, threading.Thread], kind: str) -> None:
        """``handle`` each new request of ``asked`` (checked by ``read``) on a thread of its own, remembered in
        ``threads`` until it ended and its request is gone; a malformed request is deleted unanswered."""
        for entry in asked:
            request_id = entry.key.rsplit("/", 1)[-1]
            if request_id in threads:
                continue
            try:
                message = read(entry)
            except ClusterError as exc:
                log.warning("cluster: %s", exc.one_line())
                store.delete(entry.key)  # hostile or broken: nobody waits for an answer to it
                continue
            threads[request_id] = threading.Thread(target=handle, args=(message,), name=f"{kind}-{message.request.vm}",
                                                   daemon=True)
            threads[request_id].start()
        pending = {entry.key.rsplit("/", 1)[-1] for entry in asked}
        for request_id, thread in list(threads.items()):
            if not thread.is_alive() and request_id not in pending:
                del threads[request_id]

    def _take_in(self, destination: Destination) -> None:
        vm_uuid = destination.request.uuid
        self._incoming.add(vm_uuid)
        try:
            self.host.receive_migration(destination)
        finally:
            self._incoming.discard(vm_uuid)

    # -- the restarter ------------------------------------------------------------------
    def _restart_ha(self) -> None:
        restarter = None
        while not self._stopping.wait(HA_POLL):
            config, lease = self._config, self._lease
            if config is None or lease is None:  # not a live member (or fenced): no HA action
                continue
            try:
                if restarter is None:
                    from .ha import Restarter

                    restarter = Restarter(self.host)
                restarter.poll(self._store(config), config, lease)
            except HvError as exc:
                self._complain(exc.one_line())
            except Exception:  # noqa: BLE001 - the restarter must outlive any bug
                log.exception("cluster HA")

    # -- the replicator -------------------------------------------------------------------
    def _replicate(self) -> None:
        """Each replication this host is the source of gets a round when due (one at a time); replicas kept here
        whose replication ended are removed."""
        from .replication import records as replications

        tried: dict[str, float] = {}  # uuid -> when its last round began (wall clock, as the record's last copy)
        while not self._stopping.wait(REPLICATE_POLL):
            config, lease = self._config, self._lease
            if config is None or lease is None:
                continue
            try:
                store = self._store(config)
                records = replications(store)
                self.host.drop_replicas(lambda vm_uuid: records.get(vm_uuid) is not None
                                        and records[vm_uuid].target == config.host
                                        and not records[vm_uuid].failed_over_to)
                registered = self.host.registered()
                for vm_uuid, record in sorted(records.items()):
                    due = max(record.last_copy, tried.get(vm_uuid, 0.0)) + record.every
                    if record.source != config.host or record.failed_over_to or vm_uuid not in registered \
                            or time.time() < due or self._stopping.is_set():
                        continue
                    tried[vm_uuid] = time.time()
                    self._round(registered[vm_uuid])
            except HvError as exc:
                self._complain(exc.one_line())
            except Exception:  # noqa: BLE001 - the replicator must outlive any bug
                log.exception("cluster replication")

    def _round(self, name: str) -> None:
        try:
            self.host.replicate_round(name)
        except HvError as exc:  # the VM busy, powered off, its target gone...: the next round is due later
            log.warning("replication of VM %s: %s", name, exc.one_line())

    # -- helpers ------------------------------------------------------------------------
    def _store(self, config: ClusterConfig) -> Store:
        from .store import Store

        if config.endpoints not in self._stores:
            self._stores[config.endpoints] = Store(config.endpoints)
        return self._stores[config.endpoints]

    def _complain(self, line: str) -> None:
        """Log a failure once, and its end, not every beat."""
        if line != self._complaint:
            log.warning("cluster: %s", line) if line else log.warning("cluster: the cluster store answers again")
            self._complaint = line
