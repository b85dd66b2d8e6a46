"""**Where a VM powers on in a cluster**: the core's side of placement (:mod:`minivisor.cluster.placement`).

``vm start`` on a cluster member reads the live hosts' records, the VMs' owners and the placement rules from
etcd, and lets :func:`~minivisor.cluster.placement.choose` pick the host (or check the one ``--host`` names).
This host powers the VM on as a single host does; another one is asked through etcd
(:mod:`minivisor.cluster.starting`) and powers it on through its own core, with every check again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ClusterError, HvError
from ..records import Record
from .results import StartResult, VmInfo

if TYPE_CHECKING:
    from ..cluster.config import ClusterConfig
    from ..cluster.records import LiveRecord
    from ..cluster.starting import Starter
    from ..cluster.store import Store
    from .hypervisor import Hypervisor

__all__ = ["Placed", "place", "start_elsewhere", "receive_start", "cluster_store", "memory_room_mib"]


class Placed(Record, frozen=True):
    """Placement's choice for one power-on: the host, this host's name, and what asking the host takes."""

    host: str
    here: str
    vm: VmInfo
    config: ClusterConfig
    store: Store


def cluster_store(hv: Hypervisor) -> tuple[ClusterConfig, Store]:
    """This host's cluster configuration and its store; ClusterError if it is a single host."""
    from .clustering import cluster_of

    return cluster_of(hv.datastore.meta)


def place(hv: Hypervisor, name: str, host: str | None) -> Placed:
    """The host that powers ``name`` on (``host``: that one, if it may); NoHostFitsError says why none may,
    OwnedElsewhereError if the VM runs on another host already."""
    from ..cluster import ownership, rules
    from ..cluster.placement import Wanted, choose
    from ..cluster.records import ALIVE, LiveRecord, check_host_name, from_value
    from ..cluster.replication import refuse_stale_copy

    if host is not None:
        check_host_name(host)
    config, store = cluster_store(hv)
    vm = hv.get_vm(name)
    refuse_stale_copy(store, config, vm.uuid, vm.name)  # before "runs on host b": the copy here is the news
    owner = ownership.owner_of(store, vm.uuid)
    if owner is not None and owner.host_id != config.host_id:
        raise ownership.owned_elsewhere(vm.name, owner)
    if owner is not None:  # this host's: it runs here (its power-on says so), or is about to be released
        return Placed(config.host, config.host, vm, config, store)
    hosts = {entry.key[len(ALIVE):]: from_value(LiveRecord, entry.value, entry.key)
             for entry in store.list(ALIVE) if entry.lease}
    if config.host not in hosts:
        ownership.own_liveness(store, config)  # a host without a lease powers nothing on, here or elsewhere
    else:
        hosts[config.host] = _as_now(hv, hosts[config.host])
    chosen = choose(Wanted(vm.name, vm.uuid, vm.memory_mib), hosts, rules.listed(store), here=config.host,
                    running=ownership.running_where(store), only=host)
    return Placed(chosen, config.host, vm, config, store)


def _as_now(hv: Hypervisor, record: LiveRecord) -> LiveRecord:
    """This host's record with what it has now (it was published up to a beat ago): the VMs registered and
    the memory admission would give."""
    from dataclasses import replace

    from ..host.facts import host_memory_mib

    vms = hv.list_vms()
    return replace(record, registered=tuple(vm.uuid for vm in vms),
                   memory_room_mib=memory_room_mib(vms, host_memory_mib()))


def start_elsewhere(placed: Placed, *, wait_ready: bool, timeout: float) -> StartResult:
    """Have the chosen host power the VM on; what it answered, as this host's StartResult."""
    from ..cluster.starting import ask
    from ..vmm.states import VmState

    vm = placed.vm
    answer = ask(placed.store, placed.config, placed.host, vm.name, vm.uuid, wait_ready=wait_ready, timeout=timeout)
    there = VmInfo(vm.name, vm.uuid, vm.vmx, VmState.RUNNING, vm.display_name, vm.guest_os, vm.memory_mib, vm.cpus,
                   vm.disks, vm.nics, vm.autostart, answer.pid or None, answer.accel or None)
    return StartResult(there, answer.warnings, answer.ready_line or None, placed.host)


def receive_start(hv: Hypervisor, starter: Starter) -> None:
    """Power on the VM another host asked this one to (by name, only if its UUID here is the one asked), and
    answer; whatever fails is answered as one line."""
    from ..cluster.starting import StartAnswer

    request = starter.request
    try:
        vm = hv.get_vm(request.vm)
        if vm.uuid.lower() != request.uuid.lower():
            raise ClusterError(f"its VM {request.vm!r} is another VM (UUID {vm.uuid})")
        result = hv.start_vm(request.vm, wait_ready=request.wait_ready, timeout=request.timeout,
                             host=starter.config.host)
        answer = StartAnswer("running", pid=result.vm.pid or 0, accel=result.vm.accel or "",
                             warnings=tuple(result.warnings), ready_line=result.ready_line or "")
    except HvError as exc:
        answer = StartAnswer("failed", error=exc.one_line())
    except Exception as exc:  # noqa: BLE001 - the asking host waits for an answer whatever happens
        answer = StartAnswer("failed", error=f"an internal error ({type(exc).__name__}); see its service's log")
        _log_internal(request.vm)
    try:
        starter.answer(answer)
    except ClusterError as exc:
        _log().warning("could not answer the power-on of %s: %s", request.vm, exc.one_line())


def _log():
    import logging

    return logging.getLogger("minivisor.cluster")


def _log_internal(vm: str) -> None:
    _log().exception("power-on of %s asked by another host", vm)


def memory_room_mib(vms: list[VmInfo], total_mib: int) -> int:
    """What memory admission would still give VMs on this host (published for placement): its memory less its
    own reserve and what its VMs hold (memSize, VMM and relay), as :func:`minivisor.host.admission.admit` counts."""
    from ..host.admission import host_reserve_mib, overhead_mib
    from .clustering import ON_HOST

    held = sum(vm.memory_mib + overhead_mib(vm.memory_mib, vm.accel) for vm in vms if vm.state in ON_HOST)
    return max(0, total_mib - host_reserve_mib(total_mib) - held)
