"""**Membership**: a cluster made, hosts joining and leaving it, and what each member reports.

``cluster init`` writes the cluster's record (once: a second init on the same etcd is refused),
then joins this host; ``join`` registers the host under a name no other member has and writes the
datastore's cluster configuration; ``leave`` undoes that (refused while the host owns running VMs).
Whether a member is alive is not stored here: its service's lease says it (:mod:`.liveness`).
"""

from __future__ import annotations

import time
import uuid as uuidlib
from pathlib import Path
from typing import Any

from ..errors import ClusterError, ConflictError, StateError
from .config import ClusterConfig
from .records import (ALIVE, CLUSTER_KEY, HOSTS, ClusterRecord, HostRecord, LiveRecord, alive_key, check_host_name,
                      from_value, host_key, to_value)
from .ownership import owner_of
from .store import Store

__all__ = ["init", "join", "leave", "status", "current"]


def current(meta: Path) -> ClusterConfig:
    """The datastore's cluster configuration, or ClusterError if it is a single host."""
    config = ClusterConfig.load(meta)
    if config is None:
        raise ClusterError("this datastore's host is not in a cluster",
                           hint="make one with `minivisor cluster init --etcd URL`, or join one with `cluster join`")
    return config


def init(meta: Path, endpoints: tuple[str, ...], host: str, ttl: int, running: dict[str, str]) -> dict[str, Any]:
    """Make a cluster in the etcd at ``endpoints`` (leases of ``ttl`` s) and join this host as ``host``."""
    _not_a_member(meta)
    check_host_name(host)
    store = Store(endpoints)
    if store.create(CLUSTER_KEY, to_value(ClusterRecord(ttl, time.time()))) is not None:
        raise ConflictError(f"the etcd at {','.join(endpoints)} already holds a minivisor cluster",
                            hint="join it: minivisor cluster join --etcd URL")
    return join(meta, endpoints, host, running)


def join(meta: Path, endpoints: tuple[str, ...], host: str, running: dict[str, str]) -> dict[str, Any]:
    """Register this host as ``host`` in the cluster at ``endpoints``; its service then keeps it alive and
    claims the VMs that already run here (``running``: uuid -> name). Refused if another host owns one."""
    _not_a_member(meta)
    check_host_name(host)
    store = Store(endpoints)
    found = store.get(CLUSTER_KEY)
    if found is None:
        raise ClusterError(f"the etcd at {','.join(endpoints)} holds no minivisor cluster",
                           hint="make one first: minivisor cluster init --etcd URL")
    cluster = from_value(ClusterRecord, found.value, found.key)
    for vm_uuid, name in running.items():
        owner = owner_of(store, vm_uuid)
        if owner is not None:  # as a member, this host would have to fence it at once
            raise ConflictError(f"VM {name!r} runs here, and host {owner.host!r} runs it in the cluster",
                                hint="stop it here before joining")
    config = ClusterConfig(endpoints, host, str(uuidlib.uuid4()), cluster.ttl)
    taken = store.create(host_key(host), to_value(HostRecord(host, config.host_id, time.time())))
    if taken is not None:
        raise ConflictError(f"a host named {host!r} is already a member of the cluster",
                            hint="give this one another name with --name, or run `cluster leave` on that host")
    config.save(meta)
    return {"host": host, "endpoints": list(endpoints), "ttl": cluster.ttl}


def leave(meta: Path, running: list[str], *, force: bool = False) -> dict[str, Any]:
    """Take this host out of the cluster. Refused while VMs run on it (they would have no owner);
    ``force`` forgets the local configuration even when etcd cannot be told."""
    config = current(meta)
    if running:
        raise StateError(f"host {config.host!r} runs VMs ({', '.join(sorted(running)[:5])}), which it owns",
                         hint="stop them first, then leave the cluster")
    try:
        store = Store(config.endpoints)
        for key in (alive_key(config.host), host_key(config.host)):
            entry = store.get(key)
            if entry is not None and entry.value.get("id") == config.host_id:
                store.delete(key, mod_revision=entry.mod_revision)
    except ClusterError:
        if not force:
            raise
    ClusterConfig.remove(meta)  # the service's keeper sees it gone and revokes the lease
    return {"host": config.host, "left": True}


def status(meta: Path) -> dict[str, Any]:
    """The cluster as etcd sees it now: every member, live or not, with what its service last reported."""
    config = current(meta)
    store = Store(config.endpoints)
    alive = {entry.key[len(ALIVE):]: entry for entry in store.list(ALIVE)}
    hosts = []
    for entry in store.list(HOSTS):
        member = from_value(HostRecord, entry.value, entry.key)
        if HOSTS + member.name != entry.key:
            raise ClusterError(f"the cluster store's {entry.key} names another host, {member.name!r}")
        hosts.append(_host_status(member, alive.get(member.name), config))
    return {"host": config.host, "endpoints": list(config.endpoints), "ttl": config.ttl,
            "etcd": store.version(), "hosts": hosts}


def _host_status(member: HostRecord, alive: Any, config: ClusterConfig) -> dict[str, Any]:
    row: dict[str, Any] = {"name": member.name, "this": member.id == config.host_id, "live": False,
                           "joined": member.joined}
    live = from_value(LiveRecord, alive.value, alive.key) if alive is not None else None
    if live is None or live.id != member.id:
        return row
    row.update(to_value(live), live=True)
    del row["id"], row["registered"]  # placement's: UUIDs, not for people
    return row


def _not_a_member(meta: Path) -> None:
    config = ClusterConfig.load(meta)
    if config is not None:
        raise ConflictError(f"this datastore's host is already the cluster member {config.host!r}",
                            hint="run `minivisor cluster leave` first")
