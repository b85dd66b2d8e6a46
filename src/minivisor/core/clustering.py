"""The core's side of a **cluster** (:mod:`minivisor.cluster`): ownership around power-on and power-off,
and this host's VMs as its cluster member (:class:`ClusterHost`) sees and fences them.

A datastore without a cluster configuration is a single host: :func:`claimed` and :func:`disown`
then cost one ``stat`` and import nothing of the cluster (nor etcd's client).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache

from ..errors import ClusterError, HvError, LockError, NoHostFitsError, NotFoundError, StateError
from ..vmm.states import Action, VmState
from .context import VmContext

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    import logging
    from pathlib import Path
    from typing import Any

    from ..cluster.config import ClusterConfig
    from ..cluster.migration import Destination
    from ..cluster.records import OwnerRecord
    from ..cluster.replication import Round
    from ..cluster.starting import Starter
    from ..cluster.store import Store
    from .hypervisor import Hypervisor

__all__ = ["claimed", "disown", "running_vms", "set_ha", "ha_of", "ha_vms", "replications", "cluster_of", "ClusterHost"]

# cluster.config.CONFIG_FILE, named here too: a single host finds it absent without importing the cluster package
# (a power-on, a clone or a VM shown loads none of it); tests/unit/test_cluster_config.py checks they agree
CONFIG_FILE = "cluster.json"
QUICK_LOOK = 0.5  # seconds each etcd endpoint gets to say whether a VM shown is HA
ON_HOST = (VmState.RUNNING, VmState.PAUSED, VmState.STARTING)  # a VMM runs or is being started


def in_cluster(meta: Path | str) -> bool:
    """Whether the datastore (its ``.minivisor`` folder) is a cluster member: one ``stat``."""
    return os.path.exists(os.path.join(meta, CONFIG_FILE))


def _log() -> logging.Logger:
    import logging  # here: only a cluster's failures are logged, and logging (with traceback) costs a power-on ~4 ms

    return logging.getLogger("minivisor.cluster")


@contextmanager
def claimed(ctx: VmContext) -> Iterator[None]:
    """This host owns the VM in the cluster for the power-on inside; given up again if the power-on fails."""
    if not in_cluster(ctx.datastore.meta):
        yield
        return
    from ..cluster import ownership
    from ..cluster.membership import current
    from ..cluster.replication import refuse_stale_copy
    from ..cluster.store import Store

    config = current(ctx.datastore.meta)
    store = Store(config.endpoints)
    refuse_stale_copy(store, config, ctx.uuid, ctx.name)
    ownership.claim(store, config, ctx.uuid, ctx.name)
    try:
        _obey_rules(store, config, ctx)
        yield
    except BaseException:
        _release(ctx)
        raise


def _obey_rules(store: Store, config: ClusterConfig, ctx: VmContext) -> None:
    """NoHostFitsError if a placement rule forbids this VM here given the VMs claimed before it. Placement
    checked the rules before the claim; another VM claimed in between (two power-ons at once) went unseen. Of
    two such claims etcd ordered one first: the later one sees it here and gives way, so they never both hold."""
    from ..cluster import ownership, rules
    from ..cluster.placement import Wanted, ruled_out

    about = [rule for rule in rules.listed(store) if ctx.name in rule.vms]
    if not about:
        return
    before = ownership.running_where(store, claimed_before=ctx.uuid)
    why = ruled_out(Wanted(ctx.name, ctx.uuid, 0), config.host, before, about)
    if why:
        raise NoHostFitsError(f"{ctx.name!r} cannot run on {config.host}: {config.host} {why} (the two were powered on "
                              "at the same time)",
                              hint="start it again: placement then sees where that VM runs")


def disown(ctx: VmContext) -> None:
    """After a power-off: the VM's ownership goes. If etcd cannot be told now, the member does it later
    (it releases what this host owns and does not run); a power-off never fails for it."""
    if in_cluster(ctx.datastore.meta):
        _release(ctx)


def _release(ctx: VmContext) -> None:
    from ..cluster import ownership
    from ..cluster.membership import current
    from ..cluster.store import Store

    try:
        config = current(ctx.datastore.meta)
        ownership.release(Store(config.endpoints), config, ctx.uuid)
    except ClusterError as exc:
        _log().warning("VM %s: its ownership stays until the cluster member releases it: %s", ctx.name, exc.one_line())


def set_ha(ctx: VmContext, enabled: bool) -> None:
    """Mark the VM HA in the cluster, or not (ClusterError on a single host, or when etcd does not answer)."""
    from ..cluster import ha

    config, store = cluster_of(ctx.datastore.meta)
    ha.mark(store, config, ctx.uuid, ctx.name, enabled)


def ha_of(ctx: VmContext) -> tuple[bool | None, dict[str, Any] | None]:
    """Whether the VM is marked HA, and its replication (``replicas/<uuid>``'s fields, None: not replicated); both
    None on a single host, or when etcd does not answer at once (a VM shown while the host is cut off from the
    cluster is not held up for it)."""
    if not in_cluster(ctx.datastore.meta):
        return None, None
    from ..cluster import ha, replication

    try:
        store = cluster_of(ctx.datastore.meta, timeout=QUICK_LOOK, patience=0)[1]
        marked = ha.is_marked(store, ctx.uuid)
        found = replication.get_record(store, ctx.uuid)
    except ClusterError:
        return None, None
    return marked, None if found is None else replication.shown(found[0])


def ha_vms(meta: Path) -> list[dict[str, object]]:
    """The VMs marked HA in the cluster, each with the host that runs it now (None: none)."""
    from ..cluster import ha

    return ha.listing(cluster_of(meta)[1])


def replications(meta: Path) -> list[dict[str, Any]]:
    """The cluster's replications (``vm replicate``), by VM name."""
    from ..cluster import replication

    return replication.listing(cluster_of(meta)[1])


def cluster_of(meta: Path, **store_options: float) -> tuple[ClusterConfig, Store]:
    """The datastore's cluster configuration (ClusterError on a single host) and its etcd."""
    from ..cluster.membership import current
    from ..cluster.store import Store

    config = current(meta)
    return config, Store(config.endpoints, **store_options)


def running_vms(hv: Hypervisor) -> dict[str, str]:
    """The VMs whose VMM runs or is being started on this host: uuid -> name."""
    return {vm.uuid: vm.name for vm in hv.list_vms() if vm.state in ON_HOST}


class ClusterHost:
    """This host's VMs for its cluster member (:class:`minivisor.cluster.liveness.Host`), over the core API.

    The member calls it from two threads (its keeper and its watchdog), and a Hypervisor serves one
    thread at a time: each thread gets its own from ``make_hv``.
    """

    def __init__(self, make_hv: Callable[[], Hypervisor]) -> None:
        import threading  # here: only a service's cluster member makes one (a power-on needs no threading)

        self._make_hv = make_hv
        self._local = threading.local()

    @property
    def hv(self) -> Hypervisor:
        if getattr(self._local, "hv", None) is None:
            self._local.hv = self._make_hv()
        return self._local.hv

    def running(self) -> dict[str, str]:
        return running_vms(self.hv)

    def fence(self, names: list[str], reason: str) -> None:
        for name in names:
            try:
                ctx = self.hv.vms.context(name)
                pid = ctx.vmm.kill()
            except NotFoundError:
                continue
            except Exception:  # noqa: BLE001 - one VM's failure must not spare the others
                _log().exception("fencing VM %s", name)
                continue
            if pid is not None:
                ctx.emit("fenced", pid=pid, reason=reason)

    def release_if_idle(self, vm_uuid: str, release: Callable[[], Any]) -> None:
        entry = next((e for e in self.hv.datastore.catalog.list() if e.uuid == vm_uuid), None)
        if entry is None:  # unregistered or deleted here: nothing of it can run
            release()
            return
        try:
            # The VM's turn, if a power-on would be legal now: powered off, and no operation can begin
            # (a power-on's claim) until the release is done.
            with self.hv.vms.operate(entry.name, Action.START, wait=0):
                release()
        except (LockError, StateError):
            pass  # busy or running: looked at again on the next beat

    def guard(self) -> None:
        from .watchdog import ensure_running

        ensure_running(self.hv.datastore.root, self.hv.datastore.meta)

    def registered(self) -> dict[str, str]:
        return {entry.uuid.lower(): entry.name for entry in self.hv.datastore.catalog.list()}

    def replicas(self) -> dict[str, str]:
        from .replication import replica_vms

        return replica_vms(self.hv.datastore.meta)

    def restart(self, vm_uuid: str, name: str, reason: str) -> None:
        """Power on here an HA VM whose host died (the power-on claims it, as any other does; placement's rules
        and room hold for this host: if they refuse, another member may restart it); a VM not registered here is
        its replica's, made a VM of this host first."""
        from ..cluster.membership import current

        if vm_uuid not in self.registered():
            from .replication import promote

            name = promote(self.hv, vm_uuid)
        started = self.hv.start_vm(name, host=current(self.hv.datastore.meta).host)
        self.hv.vms.emit(name, "haRestarted", pid=started.vm.pid, reason=reason)

    def receive_migration(self, destination: Destination) -> None:
        from .migration import receive

        receive(self.hv, destination)

    def receive_round(self, round_: Round) -> None:
        from .replication import receive_round

        receive_round(self.hv, round_)

    def replicate_round(self, name: str) -> None:
        from .replication import run_round

        run_round(self.hv.vms, name)

    def drop_replicas(self, wanted: Callable[[str], bool]) -> None:
        from .replication import drop_replicas

        drop_replicas(self.hv.datastore.meta, wanted, registered=self.registered())

    def receive_start(self, starter: Starter) -> None:
        from .placing import receive_start

        receive_start(self.hv, starter)

    def abandon_incoming(self, owned_here: Callable[[str], bool]) -> None:
        from .migration import abandon_incoming

        abandon_incoming(self.hv, owned_here)

    def abandon_outgoing(self, owner_of: Callable[[str], OwnerRecord | None],
                         withdraw: Callable[[str, str], None]) -> None:
        from .migration import abandon_outgoing

        abandon_outgoing(self.hv, owner_of, withdraw)

    def facts(self) -> dict[str, Any]:
        import os

        from .. import __version__
        from ..host import facts
        from .placing import memory_room_mib

        vms = self.hv.list_vms()
        total = facts.host_memory_mib()
        return {"memory_free_mib": facts.available_memory_mib(), "memory_total_mib": total,
                "cpus": facts.host_cpus(), "minivisor": __version__, "qemu": _qemu_version(),
                "registered": tuple(vm.uuid for vm in vms), "memory_room_mib": memory_room_mib(vms, total),
                "load": round(os.getloadavg()[0], 2)}


@cache
def _qemu_version() -> str:
    from ..host import facts

    try:
        return facts.qemu_version(facts.find_qemu())
    except HvError:  # a host without QEMU still reports what it has
        return "none"
