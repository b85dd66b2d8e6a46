"""**Placement rules** kept in etcd (``rules/<id>``): VMs kept on different hosts (``apart``, anti-affinity) or on
one host (``together``, affinity), by name. :mod:`.placement` obeys them when it chooses a host.

A rule's id is the next free number (created if absent, so two hosts adding rules at once get two ids).
Every rule read is checked like any value in etcd; a rule that contradicts another (two VMs both apart and
together) is refused when it is added.
"""

from __future__ import annotations

from itertools import combinations

from ..datastore.names import check_vm_name
from ..errors import ArgumentError, ClusterError, ConflictError, NotFoundError
from ..text import excerpt
from .records import RULE_KINDS, RULES, RuleRecord, from_value, rule_key, to_value
from .store import Entry, Store

__all__ = ["add", "listed", "remove", "MAX_RULE_VMS", "MAX_RULE_ID"]

MAX_RULE_VMS = 16
MAX_RULE_ID = 999_999  # six digits: the keys sort as the numbers do
ADD_TRIES = 20  # ids taken by other hosts adding rules at the same moment


def add(store: Store, kind: str, vms: list[str]) -> RuleRecord:
    """A new rule keeping ``vms`` ``apart`` or ``together``; ConflictError if it contradicts a rule."""
    if kind not in RULE_KINDS:
        raise ArgumentError(f"{excerpt(kind)} is not a kind of rule", hint="use --apart or --together")
    names = tuple(dict.fromkeys(check_vm_name(name) for name in vms))
    if not 2 <= len(names) <= MAX_RULE_VMS:
        raise ArgumentError(f"a rule names 2 to {MAX_RULE_VMS} different VMs, not {len(names)}",
                            hint="e.g. minivisor vm rule add web1 web2 --apart")
    for _ in range(ADD_TRIES):
        rules = listed(store)
        _no_contradiction(kind, names, rules)
        rule = RuleRecord(max((r.id for r in rules), default=0) + 1, kind, names)
        if rule.id > MAX_RULE_ID:
            raise ClusterError("the cluster holds as many rules as it can", hint="remove some: minivisor vm rule list")
        if store.create(rule_key(rule.id), to_value(rule)) is None:
            return rule
    raise ClusterError("could not add the rule: other hosts kept adding rules meanwhile", hint="try again")


def listed(store: Store) -> list[RuleRecord]:
    """Every rule, in the order of their ids."""
    return [_rule(entry) for entry in store.list(RULES)]


def remove(store: Store, rule_id: int) -> RuleRecord:
    """Delete the rule ``rule_id``; NotFoundError if there is none."""
    if isinstance(rule_id, bool) or not isinstance(rule_id, int) or not 0 < rule_id <= MAX_RULE_ID:
        raise ArgumentError(f"{excerpt(str(rule_id))} is not a rule id", hint="see the ids: minivisor vm rule list")
    entry = store.get(rule_key(rule_id))
    if entry is None or not store.delete(entry.key, mod_revision=entry.mod_revision):
        raise NotFoundError(f"the cluster has no rule {rule_id}", hint="see the rules: minivisor vm rule list")
    return _rule(entry)


def _rule(entry: Entry) -> RuleRecord:
    rule = from_value(RuleRecord, entry.value, entry.key)
    try:
        fine = (rule_key(rule.id) == entry.key and rule.kind in RULE_KINDS and 2 <= len(rule.vms) <= MAX_RULE_VMS
                and len(set(rule.vms)) == len(rule.vms) and all(check_vm_name(name) for name in rule.vms))
    except ArgumentError:
        fine = False
    if not fine:
        raise ClusterError(f"the cluster store holds a malformed rule at {excerpt(entry.key, 80)}",
                           hint="it was not written by this minivisor: remove it with etcdctl")
    return rule


def _no_contradiction(kind: str, names: tuple[str, ...], rules: list[RuleRecord]) -> None:
    pairs = {frozenset(pair) for pair in combinations(names, 2)}
    for rule in rules:
        if rule.kind == kind:
            continue
        clash = next((pair for pair in combinations(rule.vms, 2) if frozenset(pair) in pairs), None)
        if clash:
            raise ConflictError(f"rule {rule.id} keeps {clash[0]!r} and {clash[1]!r} {rule.kind}",
                                hint=f"remove it first: minivisor vm rule remove {rule.id}")
