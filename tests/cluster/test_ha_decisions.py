"""The HA restarter's judgement, against a real etcd: which owners gone are deaths (restart), which are releases
(no restart), and when a member's memory is no evidence any more. The host it would restart VMs on records the
restarts instead of powering VMs on (the power-on is test_ha.py's, with QEMU)."""

from __future__ import annotations

import time
import uuid

import pytest

from minivisor.cluster.config import ClusterConfig
from minivisor.cluster.ha import Restarter, ha_key, restart_after, stale_after
from minivisor.cluster import rules
from minivisor.cluster.records import LiveRecord, alive_key, owner_key, to_value
from minivisor.cluster.store import Store
from minivisor.errors import OwnedElsewhereError

TTL = 3  # the shortest lease: the waits below are fractions of it
VM = str(uuid.uuid4())


class Recording:
    """A host with the VM ``web`` registered, which notes each restart asked of it (or refuses, as told)."""

    def __init__(self) -> None:
        self.restarts: list[str] = []
        self.refusal: Exception | None = None

    def registered(self) -> dict[str, str]:
        return {VM: "web"}

    def replicas(self) -> dict[str, str]:
        return {}

    def restart(self, vm_uuid: str, name: str, reason: str) -> None:
        self.restarts.append(reason)
        if self.refusal is not None:
            raise self.refusal


@pytest.fixture
def cluster(etcd):
    """The VM marked HA and running on x; a restarter (this host's lease: 1) that has seen it: (store, config,
    the restarter, its host, x's lease)."""
    store = Store(tuple(etcd.urls))
    store.put(ha_key(VM), {"vm": "web", "set_by": "x", "updated": 1.0})
    config = ClusterConfig(tuple(etcd.urls), "me", "id-me", TTL)
    host = Recording()
    restarter = Restarter(host)
    lease = running_on_x(store)
    restarter.poll(store, config, 1)
    return store, config, restarter, host, lease


def running_on_x(store: Store) -> int:
    """Host x live, owning the VM; returns x's lease."""
    lease = store.grant(60)
    store.put(alive_key("x"), {"id": "id-x"}, lease=lease)
    store.put(owner_key(VM), {"host": "x", "host_id": "id-x", "vm": "web"}, lease=lease)
    return lease


def test_a_death_is_restarted_after_the_fencing_delay_a_release_is_not(cluster):
    store, config, restarter, host, lease = cluster
    store.revoke(lease)  # x dead: its lease, its liveness and its claim gone together
    restarter.poll(store, config, 1)
    assert host.restarts == []  # not before the fencing delay
    time.sleep(restart_after(TTL) + 0.1)
    restarter.poll(store, config, 1)
    assert len(host.restarts) == 1 and "its host 'x' is gone from the cluster" in host.restarts[0]

    lease = running_on_x(store)  # running on x again
    restarter.poll(store, config, 1)
    store.delete(owner_key(VM))  # x powers it off: released while x lives
    restarter.poll(store, config, 1)
    store.revoke(lease)  # and x dies right after
    for _ in range(3):
        time.sleep(restart_after(TTL) / 2)
        restarter.poll(store, config, 1)
    assert len(host.restarts) == 1


@pytest.mark.parametrize("out_of_touch", ["stale", "fenced"])
def test_a_member_out_of_touch_forgets_what_it_saw(cluster, out_of_touch):
    """A release followed by a death, unseen: it looks like a death alone. A member that did not look for half a
    TTL, or whose host was fenced (a new lease) since, does not judge on what it saw before."""
    store, config, restarter, host, lease = cluster
    store.delete(owner_key(VM))
    store.revoke(lease)
    if out_of_touch == "stale":
        time.sleep(stale_after(TTL) + 0.1)
    restarter.poll(store, config, 1 if out_of_touch == "stale" else 2)
    time.sleep(restart_after(TTL) + 0.1)
    restarter.poll(store, config, 2)
    assert host.restarts == []


def test_a_vm_seen_orphaned_stays_so_and_one_another_host_restarted_is_forgotten(cluster):
    store, config, restarter, host, lease = cluster
    store.revoke(lease)
    restarter.poll(store, config, 1)  # seen orphaned: a lease does not come back, out of touch or not
    time.sleep(max(stale_after(TTL), restart_after(TTL)) + 0.1)
    host.refusal = OwnedElsewhereError("VM 'web' runs on host 'y', which owns it in the cluster")
    restarter.poll(store, config, 2)
    assert len(host.restarts) == 1  # tried, and another member was first
    time.sleep(restart_after(TTL) + 0.1)
    restarter.poll(store, config, 2)
    assert len(host.restarts) == 1  # forgotten: y's claim is seen from now on

    store.delete(ha_key(VM))  # HA off: the VM's owner going is no concern of HA's
    lease = running_on_x(store)
    restarter.poll(store, config, 2)
    store.revoke(lease)
    time.sleep(restart_after(TTL) + 0.1)
    restarter.poll(store, config, 2)
    restarter.poll(store, config, 2)
    assert len(host.restarts) == 1


def alive(store: Store, host: str, room_mib: int, running: tuple[str, ...] = ()) -> int:
    """Host ``host`` live with the VM registered, ``room_mib`` of memory room and ``running`` VMs; its lease."""
    lease = store.grant(60)
    record = LiveRecord(id=f"id-{host}", memory_free_mib=room_mib, memory_total_mib=4096, cpus=2, vms=running,
                        minivisor="test", qemu="7.2", updated=time.time(), registered=(VM,), memory_room_mib=room_mib)
    store.put(alive_key(host), to_value(record), lease=lease)
    return lease


@pytest.mark.parametrize("preferred", ["me", "y"])
def test_the_member_placement_prefers_tries_first_and_the_others_after_a_lease(cluster, preferred):
    """Two live members could restart the VM: the one with more memory room tries at the fencing delay, the other
    a lease's time later (if the VM has no owner by then: its try failed)."""
    store, config, restarter, host, lease = cluster
    alive(store, "me", 2048 if preferred == "me" else 1024)
    alive(store, "y", 2048 if preferred == "y" else 1024)
    store.revoke(lease)
    restarter.poll(store, config, 1)
    time.sleep(restart_after(TTL) + 0.1)
    restarter.poll(store, config, 1)
    assert len(host.restarts) == (1 if preferred == "me" else 0)
    if preferred == "y":
        time.sleep(TTL)
        restarter.poll(store, config, 1)
        assert len(host.restarts) == 1  # y did not power it on: this member does


def test_a_rule_makes_the_member_with_less_room_the_first_to_try(cluster):
    store, config, restarter, host, lease = cluster
    rules.add(store, "apart", ["web", "db"])
    alive(store, "me", 1024)
    alive(store, "y", 2048, running=("db",))  # more room, but db runs there
    store.revoke(lease)
    restarter.poll(store, config, 1)
    time.sleep(restart_after(TTL) + 0.1)
    restarter.poll(store, config, 1)
    assert len(host.restarts) == 1
