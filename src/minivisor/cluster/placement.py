"""**Placement**: which live host of the cluster powers a VM on, from what each host has published.

:func:`choose` is pure: it reads the hosts' liveness records (``alive/<host>``: the VMs registered
there, the memory admission would still give, load), what runs where (the VMs' owners) and the placement
rules (``rules/<id>``), and returns the host, or raises :class:`~minivisor.errors.NoHostFitsError` saying in
one line why each host was left out. A host is left out when:

- the VM is not registered there (its UUID: a datastore shared by the hosts shows it to each);
- it cannot hold the VM: its memSize and its VMM's and relay's own memory (counted as under TCG, the
  larger: :func:`~minivisor.host.admission.overhead_mib`) are more than the host's memory admission would
  still give (its memory less its reserve and what its running VMs hold);
- a rule forbids it: an ``apart`` rule's other VM runs there, or a ``together`` rule's other VM runs on
  another host.

Among the hosts left, this host comes first (a power-on here needs no other host; the power-on's own
admission checks it again), then the one with the most memory left after the VM, then the least loaded
(1-minute load per CPU), then by name: the choice is the same for the same records.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from ..errors import NoHostFitsError
from ..host.admission import overhead_mib
from ..records import Record
from .records import LiveRecord, RuleRecord

__all__ = ["Wanted", "choose", "first_restarter", "needed_mib", "refusals", "ruled_out", "MAX_SAID"]

MAX_SAID = 8  # hosts whose reasons a refusal names

class Wanted(Record, frozen=True):
    """The VM to place: its name (what rules and running lists name), UUID and memSize (MiB)."""

    name: str
    uuid: str
    memory_mib: int


def needed_mib(memory_mib: int) -> int:
    """What a VM holds of its host's memory: its memSize, its VMM's and console relay's own."""
    return memory_mib + overhead_mib(memory_mib, None)


def choose(vm: Wanted, hosts: Mapping[str, LiveRecord], rules: Iterable[RuleRecord], *, here: str,
           running: Mapping[str, Collection[str]] | None = None, only: str | None = None) -> str:
    """The host (a key of ``hosts``, the live ones) that powers ``vm`` on; ``only``: that host or none.

    ``here`` is the host asking; ``running`` (host -> VM names) what runs where, for the rules [default: what
    the hosts published, which lags behind the VMs' claims]. NoHostFitsError names why each host was left out.
    """
    if only is not None and only not in hosts:
        raise NoHostFitsError(f"host {only!r} is not a live member of the cluster: {vm.name!r} cannot start there",
                              hint="see `minivisor cluster status` (its service, minivisor serve, must run)")
    if running is None:
        running = {name: record.vms for name, record in hosts.items()}
    left_out = refusals(vm, hosts, list(rules), running)
    if only is not None:  # the other hosts' VMs still count for the rules
        left_out = {name: why for name, why in left_out.items() if name == only}
    fitting = [name for name in ([only] if only is not None else hosts) if name not in left_out]
    if not fitting:
        said = [f"{name} {why}" for name, why in sorted(left_out.items())]
        if len(said) > MAX_SAID:  # one line still
            said[MAX_SAID:] = [f"and {len(said) - MAX_SAID} more hosts"]
        reasons = "; ".join(said) or "the cluster has no live host"
        raise NoHostFitsError(f"no host can power {vm.name!r} on: {reasons}",
                              hint="free memory on a host, register the VM there, or change the rules (vm rule list)")
    return min(fitting, key=lambda name: (name != here, *_preference(name, hosts[name])))


def first_restarter(vm: Wanted, able: Iterable[str], hosts: Mapping[str, LiveRecord],
                    rules: Iterable[RuleRecord]) -> str | None:
    """Of the live hosts ``able`` to restart the HA VM ``vm`` (keys of ``hosts``), the one placement prefers: one no
    rule keeps it off first, then as :func:`choose` ranks them; None if there is none. Each member computes the
    same from the same records, so that the others give it the first try."""
    running_on = {name: set(record.vms) for name, record in hosts.items()}
    rules = list(rules)
    return min((name for name in able if name in hosts), default=None,
               key=lambda name: (bool(ruled_out(vm, name, running_on, rules)), *_preference(name, hosts[name])))


def _preference(name: str, record: LiveRecord) -> tuple[int, float, str]:
    """How placement ranks hosts that fit: the most memory room, then the least load per CPU, then by name."""
    return -_room(record), record.load / max(record.cpus, 1), name


def refusals(vm: Wanted, hosts: Mapping[str, LiveRecord], rules: list[RuleRecord],
             running: Mapping[str, Collection[str]]) -> dict[str, str]:
    """Why each host that cannot power ``vm`` on is left out: host -> reason (hosts that fit are absent)."""
    running_on = {name: set(running.get(name, ())) for name in hosts}
    left_out = {}
    for name, record in hosts.items():
        why = _unregistered(vm, record) or _no_room(vm, record) or ruled_out(vm, name, running_on, rules)
        if why:
            left_out[name] = why
    return left_out


def _unregistered(vm: Wanted, record: LiveRecord) -> str:
    return "" if vm.uuid.lower() in {uuid.lower() for uuid in record.registered} else f"has no {vm.name!r} registered"


def _room(record: LiveRecord) -> int:
    """The memory (MiB) a new VM may take on the host: what its admission would give (which counts what VMs
    were promised, not what they use now: the host's free memory is not the measure)."""
    return record.memory_room_mib


def _no_room(vm: Wanted, record: LiveRecord) -> str:
    need = needed_mib(vm.memory_mib)
    if need <= _room(record):
        return ""
    return f"has room for {_room(record)} MiB of VMs, and {vm.name!r} needs {need} MiB"


def ruled_out(vm: Wanted, host: str, running_on: Mapping[str, set[str]], rules: list[RuleRecord]) -> str:
    """Why a rule keeps ``vm`` off ``host`` given what runs where (host -> VM names), or ""."""
    for rule in rules:
        if vm.name not in rule.vms:
            continue
        others = set(rule.vms) - {vm.name}
        if rule.kind == "apart":
            here = sorted(others & running_on.get(host, set()))
            if here:
                return f"runs {here[0]!r}, which rule {rule.id} keeps apart from {vm.name!r}"
        else:
            elsewhere = sorted((other, name) for name, vms in running_on.items() if name != host
                               for other in others & vms)
            if elsewhere and not others & running_on.get(host, set()):
                other, name = elsewhere[0]
                return f"is not where {other!r} runs ({name}), which rule {rule.id} keeps together with {vm.name!r}"
    return ""
