"""**One owner per VM**: the host a VM may run on, claimed in etcd before its power-on.

A claim is one transaction: ``owners/<uuid>`` is created only if no host owns the VM and
only if this host's liveness key is still the one read (so the claim is attached to the
lease the host keeps alive now). Two hosts powering the same VM on at once: etcd orders the
two transactions, exactly one succeeds, the other is told which host owns it. The claim goes
when the VM is powered off (:func:`release`) or with its host's lease (a dead or fenced host).
"""

from __future__ import annotations

from typing import Any

from ..errors import ClusterError, OwnedElsewhereError
from .config import ClusterConfig
from .records import OWNERS, LiveRecord, OwnerRecord, alive_key, from_value, owner_key, to_value
from .store import Entry, Store

__all__ = ["claim", "release", "owner_of", "owned_by", "owned_elsewhere", "running_where", "own_liveness", "live_entry",
           "lease_to_ask"]


def claim(store: Store, config: ClusterConfig, vm_uuid: str, vm_name: str) -> None:
    """Make this host the VM's owner, or raise OwnedElsewhereError naming the owner.

    Claiming a VM this host already owns under its current lease is a no-op; under a lease that has
    since been replaced (the service restarted within the TTL), the claim moves to the current one.
    """
    alive = own_liveness(store, config)
    mine = OwnerRecord(config.host, config.host_id, vm_name)
    key = owner_key(vm_uuid)
    found = store.create(key, to_value(mine), lease=alive.lease, unless_gone=(alive.key, alive.create_revision))
    if found is None:
        return
    owner = from_value(OwnerRecord, found.value, found.key)
    if owner.host_id != config.host_id:
        raise owned_elsewhere(vm_name, owner)
    if found.lease != alive.lease and not store.replace(key, to_value(mine), found.mod_revision, lease=alive.lease):
        raise ClusterError(f"the ownership of VM {vm_name!r} changed in the cluster store meanwhile", hint="retry")


def owned_elsewhere(vm_name: str, owner: OwnerRecord) -> OwnedElsewhereError:
    return OwnedElsewhereError(f"VM {vm_name!r} runs on host {owner.host!r}, which owns it in the cluster",
                               hint=f"stop it on {owner.host} first")


def release(store: Store, config: ClusterConfig, vm_uuid: str) -> bool:
    """Give up the VM's ownership if this host holds it; True if it did."""
    key = owner_key(vm_uuid)
    found = store.get(key)
    if found is None or _owner(found).host_id != config.host_id:
        return False
    return store.delete(key, mod_revision=found.mod_revision)


def owner_of(store: Store, vm_uuid: str) -> OwnerRecord | None:
    found = store.get(owner_key(vm_uuid))
    return _owner(found) if found else None


def owned_by(store: Store, config: ClusterConfig) -> dict[str, Entry]:
    """The VMs this host owns: uuid -> its entry."""
    return {entry.key[len(OWNERS):]: entry for entry in store.list(OWNERS)
            if _owner(entry).host_id == config.host_id}


def running_where(store: Store, *, claimed_before: str | None = None) -> dict[str, set[str]]:
    """What the owners say runs where (claimed before each power-on: sooner than the hosts' published lists):
    host -> the names of the VMs it owns; ``claimed_before`` (a VM's UUID): only the claims etcd ordered before
    that VM's."""
    entries = store.list(OWNERS)
    if claimed_before is not None:
        mine = next((entry for entry in entries if entry.key == owner_key(claimed_before)), None)
        entries = [entry for entry in entries if mine is not None and entry.create_revision < mine.create_revision]
    where: dict[str, set[str]] = {}
    for entry in entries:
        owner = _owner(entry)
        where.setdefault(owner.host, set()).add(owner.vm)
    return where


def _owner(entry: Entry) -> OwnerRecord:
    return from_value(OwnerRecord, entry.value, entry.key)


def live_entry(store: Store, host: str) -> Entry | None:
    """``host``'s liveness entry while its lease lives, else None."""
    entry = store.get(alive_key(host))
    return entry if entry is not None and entry.lease else None


def put_under_own_lease(store: Store, config: ClusterConfig, key: str, value: Any) -> None:
    """Write ``value`` at ``key`` tied to this host's liveness lease, so that it goes if the host dies (an answer
    to a peer's request); ClusterError if this host has no lease now."""
    own = live_entry(store, config.host)
    if own is None:
        raise ClusterError(f"host {config.host!r} has no lease now")
    store.put(key, value, lease=own.lease)


def lease_to_ask(store: Store, config: ClusterConfig, peer: str) -> Entry:
    """This host's liveness entry, to attach a request to ``peer`` to; ClusterError if ``peer`` or this host is not
    a live member."""
    if live_entry(store, peer) is None:
        raise ClusterError(f"host {peer!r} is not a live member of the cluster",
                           hint="see minivisor cluster status; its service (minivisor serve) must run")
    own = live_entry(store, config.host)
    if own is None:
        raise ClusterError(f"host {config.host!r} is not a live member of the cluster",
                           hint="start `minivisor serve` for this datastore")
    return own


def own_liveness(store: Store, config: ClusterConfig) -> Entry:
    """This host's liveness entry (it carries the lease claims are attached to), or ClusterError."""
    entry = store.get(alive_key(config.host))
    if entry is None or entry.lease == 0 or from_value(LiveRecord, entry.value, entry.key).id != config.host_id:
        raise ClusterError(f"host {config.host!r} is not a live member of the cluster, so it may not power VMs on",
                           hint="start `minivisor serve` for this datastore: it keeps the host's lease alive")
    return entry

