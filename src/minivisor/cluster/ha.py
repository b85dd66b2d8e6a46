"""**HA restart**: a VM marked HA (``vm ha VM on``) is powered on by another member when its host dies.

The mark is ``ha/<vm uuid>`` in etcd (:class:`HaRecord`, attached to no lease: it outlives every host).
The hosts that can run the VM are those that have it registered (a datastore the hosts share shows the same
VM, same UUID, to each of them) or keep its replica (``vm replicate``: made a VM of the host first, see
:func:`minivisor.core.replication.promote`); each member's :class:`Restarter` (a thread of its service, see
:mod:`.liveness`) looks, once a second, at the HA VMs registered on its host:

- while the VM has an owner (``owners/<uuid>``, attached to its host's lease), the member remembers that
  host and its lease;
- when the owner is gone while that lease lives (``alive/<host>`` still carries it), the VM was released:
  powered off by its user, or by its guest, or it crashed; it is not restarted (VMware's HA does not restart
  those either). A member that did not look for longer than :func:`stale_after` (etcd unreachable), or whose
  host has another lease since (it was fenced), forgets what it saw: a release followed by its host's death would
  look like a death alone;
- when the owner is gone with its lease (the host died, or was cut off and fenced: its lease expired or was
  revoked), the member waits :func:`restart_after` more, so that the dead host, which fences at 0.6 TTL after
  its last renewal, has certainly killed its VMMs; then the member placement prefers among the live hosts that
  could run it (:func:`minivisor.cluster.placement.first_restarter`: no rule against it, the most memory room,
  the least load) powers it on; the others wait a lease's time more, and try if it still has no owner. The
  power-on claims the VM with the same compare-and-swap as any other
  (:func:`minivisor.cluster.ownership.claim`): when several members try at once, exactly one runs it, the
  others are told who owns it and forget it.

A member that never saw the VM owned (it started after the VM's host died) restarts nothing: powering a VM
on when a whole cluster comes back is autostart's job. While etcd cannot be reached, nothing is restarted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Protocol

from ..errors import ClusterError, HvError, OwnedElsewhereError
from .config import ClusterConfig
from .records import ALIVE, OWNERS, LiveRecord, OwnerRecord, from_value, owner_key, to_value
from .store import Entry, Store

__all__ = ["HaRecord", "HaHost", "Restarter", "mark", "is_marked", "marked", "listing", "restart_after", "stale_after",
           "HA"]

HA = "ha/"
RETRY = 10.0  # seconds between two tries at powering on an HA VM that failed to start here (memory, a lock...)

log = logging.getLogger("minivisor.cluster")


@dataclass(frozen=True)
class HaRecord:
    vm: str  # the VM's name where it was marked, for messages
    set_by: str  # the host that marked it
    updated: float


@dataclass(frozen=True)
class Owned:
    """The owner a member last saw for a VM: its host and the lease the claim was attached to."""

    host: str
    lease: int


class HaHost(Protocol):
    """This host's VMs, as the restarter needs them (the service implements it over the core API)."""

    def registered(self) -> dict[str, str]:
        """The VMs in this host's catalog: uuid -> name."""

    def replicas(self) -> dict[str, str]:
        """The VMs whose replica this host keeps (``vm replicate``): uuid -> name."""

    def restart(self, vm_uuid: str, name: str, reason: str) -> None:
        """Power the VM on here (claimed first, as every power-on; from its replica if it is not registered here);
        OwnedElsewhereError if another host won."""


def restart_after(ttl: int) -> float:
    """The fencing delay: how long after the dead host's lease is gone a member powers its VM on.

    The dead host began killing its VMMs at 0.6 TTL after its last renewal, at least 0.4 TTL before its lease
    expired; half a TTL more leaves the kills (SIGKILL, no guest shutdown) ample time to be done.
    """
    return ttl / 2


def stale_after(ttl: int) -> float:
    """How long after its last look a member's memory of the owners is no evidence of a death any more.

    A host that released a VM (powered off) and died at once keeps its lease for at least 0.8 TTL after the
    release (it renews every TTL/5); a member that looks again within half a TTL sees the owner gone while the
    lease lives (a release), and not both gone (a death).
    """
    return ttl / 2


def ha_key(vm_uuid: str) -> str:
    return HA + owner_key(vm_uuid)[len(OWNERS):]  # the same checked, lower-case UUID as the VM's owner key


def mark(store: Store, config: ClusterConfig, vm_uuid: str, vm_name: str, enabled: bool) -> None:
    """Mark the VM HA (restarted elsewhere when its host dies), or not."""
    if enabled:
        store.put(ha_key(vm_uuid), to_value(HaRecord(vm_name, config.host, time.time())))
    else:
        store.delete(ha_key(vm_uuid))


def is_marked(store: Store, vm_uuid: str) -> bool:
    return store.get(ha_key(vm_uuid)) is not None


def marked(store: Store) -> dict[str, HaRecord]:
    """The VMs marked HA: uuid -> record. A malformed record (not minivisor's) marks nothing."""
    found = {}
    for entry in store.list(HA):
        try:
            found[entry.key[len(HA):]] = from_value(HaRecord, entry.value, entry.key)
        except ClusterError as exc:
            log.warning("cluster: %s", exc.one_line())
    return found


def listing(store: Store) -> list[dict[str, object]]:
    """The HA VMs, each with the host that runs it now (None: nobody) and the live hosts that could restart it
    were that host to die (``restarts_on``: those that have it registered, and the one holding its replica)."""
    owners = _owners(store)
    hosts = _live_hosts(store.list(ALIVE))
    replicas = _replica_hosts(store)
    found = []
    for vm_uuid, record in sorted(marked(store).items(), key=lambda item: item[1].vm):
        owner = owners[vm_uuid].host if vm_uuid in owners else None
        able = _able(vm_uuid, hosts, replicas)
        found.append({"vm": record.vm, "uuid": vm_uuid, "owner": owner, "restarts_on": sorted(able - {owner})})
    return found


def _live_hosts(alive: list[Entry]) -> dict[str, LiveRecord]:
    """The live hosts' records (attached to a lease), a malformed one (not minivisor's) left out."""
    hosts = {}
    for entry in alive:
        try:
            if entry.lease:
                hosts[entry.key[len(ALIVE):]] = from_value(LiveRecord, entry.value, entry.key)
        except ClusterError as exc:
            log.warning("cluster: %s", exc.one_line())
    return hosts


def _replica_hosts(store: Store) -> dict[str, str]:
    """VM uuid -> the host keeping its replica (replications that did not fail over)."""
    from .replication import records as replications

    return {vm_uuid: record.target for vm_uuid, record in replications(store).items() if not record.failed_over_to}


def _able(vm_uuid: str, hosts: dict[str, LiveRecord], replicas: dict[str, str]) -> set[str]:
    """The live hosts that could power the VM on: those that have it registered, and the one keeping its replica."""
    able = {host for host, record in hosts.items() if vm_uuid.lower() in {uuid.lower() for uuid in record.registered}}
    if replicas.get(vm_uuid) in hosts:
        able.add(replicas[vm_uuid])
    return able


class Restarter:
    """One member's share of HA: the HA VMs registered on its host, watched (see the module's docstring)."""

    def __init__(self, host: HaHost) -> None:
        self.host = host
        self._seen: dict[str, Owned] = {}  # uuid -> its last owner, while it had one
        self._orphaned: dict[str, float] = {}  # uuid -> monotonic time its owner's lease was first seen gone
        self._retry: dict[str, float] = {}  # uuid -> monotonic time before which a failed power-on is not retried
        self._looked = -float("inf")  # monotonic time the last look that etcd answered began
        self._lease = 0  # this host's lease at that look

    def poll(self, store: Store, config: ClusterConfig, lease: int) -> None:
        """One look at the HA VMs registered here (this host holding ``lease``); powers on those whose host died
        (ClusterError: etcd failed)."""
        started = time.monotonic()
        ha = marked(store)
        registered = {**self.host.replicas(), **self.host.registered()}
        watched = ha.keys() & registered.keys()
        owners = _owners(store)
        alive = store.list(ALIVE)
        live = {entry.key[len(ALIVE):]: entry.lease for entry in alive}
        now = time.monotonic()
        if now - self._looked > stale_after(config.ttl) or lease != self._lease:
            # Out of touch (etcd unreachable; this host fenced, with a new lease since): an owner seen before may
            # have released its VM and died since, so that neither the release nor the lease shows now. What this
            # member saw is no evidence any more, but for the VMs already seen orphaned: a lease does not come back.
            self._seen = {vm_uuid: owned for vm_uuid, owned in self._seen.items() if vm_uuid in self._orphaned}
        self._looked, self._lease = started, lease
        for vm_uuid in watched:
            if vm_uuid in owners:
                self._seen[vm_uuid] = owners[vm_uuid]
                self._orphaned.pop(vm_uuid, None)
            elif vm_uuid in self._seen:
                self._judge(vm_uuid, registered[vm_uuid], live, now, config,
                            lambda vm_uuid, name: _first_restarter(store, alive, vm_uuid, name))
        for gone in set(self._seen) - watched:  # no longer HA, or not registered here
            self._forget(gone)

    def _judge(self, vm_uuid: str, name: str, live: dict[str, int], now: float, config: ClusterConfig,
               first_restarter: Callable[[str, str], str | None]) -> None:
        """The VM has no owner: released (its host lives), or orphaned by its host's death. Once the fencing delay
        has passed, the member placement prefers tries first; the others a lease's time later, should it fail."""
        last = self._seen[vm_uuid]
        if live.get(last.host) == last.lease:  # its host released it: powered off, not dead
            self._forget(vm_uuid)
            return
        since = self._orphaned.setdefault(vm_uuid, now)
        if now - since < restart_after(config.ttl) or now < self._retry.get(vm_uuid, 0.0):
            return
        if now - since < restart_after(config.ttl) + config.ttl and \
                first_restarter(vm_uuid, name) not in (None, config.host):
            return
        reason = f"its host {last.host!r} is gone from the cluster (lease expired {now - since:.1f} s ago)"
        log.warning("HA: VM %s was running on host %s, whose lease is gone; powering it on here", name, last.host)
        try:
            self.host.restart(vm_uuid, name, reason)
        except OwnedElsewhereError as exc:
            log.info("HA: %s", exc.one_line())  # another member was first
        except HvError as exc:
            log.warning("HA: VM %s could not be powered on here: %s (trying again in %g s)", name, exc.one_line(),
                        RETRY)
            self._retry[vm_uuid] = now + RETRY
            return
        self._forget(vm_uuid)  # it runs (here or elsewhere): the next look sees its owner

    def _forget(self, vm_uuid: str) -> None:
        for memory in (self._seen, self._orphaned, self._retry):
            memory.pop(vm_uuid, None)


def _first_restarter(store: Store, alive: list[Entry], vm_uuid: str, name: str) -> str | None:
    """The live host placement prefers to power the orphaned HA VM on (see placement.first_restarter)."""
    from . import rules
    from .placement import Wanted, first_restarter

    hosts = _live_hosts(alive)
    return first_restarter(Wanted(name, vm_uuid, 0), _able(vm_uuid, hosts, _replica_hosts(store)), hosts,
                           rules.listed(store))


def _owners(store: Store) -> dict[str, Owned]:
    """Every owned VM: uuid -> its owner's host and lease."""
    return {entry.key[len(OWNERS):]: Owned(from_value(OwnerRecord, entry.value, entry.key).host, entry.lease)
            for entry in store.list(OWNERS)}
