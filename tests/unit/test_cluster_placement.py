"""Placement (minivisor.cluster.placement.choose): plain liveness records in, a host or one line out."""

from __future__ import annotations

import pytest

from minivisor.cluster.placement import Wanted, choose, needed_mib
from minivisor.cluster.records import LiveRecord, RuleRecord, from_value, to_value
from minivisor.errors import NoHostFitsError

WEB = Wanted("web1", "564d-aaaa", 256)


def live(*, room: int = 8192, free: int = 16384, vms: tuple[str, ...] = (), registered=("564d-aaaa",),
         load: float = 0.0, cpus: int = 4) -> LiveRecord:
    return LiveRecord(id="x", memory_free_mib=free, memory_total_mib=32768, cpus=cpus, vms=vms, minivisor="0",
                      qemu="7.2", updated=0.0, registered=tuple(registered), memory_room_mib=room, load=load)


def refusal(vm: Wanted, hosts: dict, rules=(), **kwargs) -> str:
    with pytest.raises(NoHostFitsError) as caught:
        choose(vm, hosts, rules, **kwargs)
    assert "\n" not in caught.value.message
    return caught.value.message


def test_this_host_first_when_it_fits_else_the_one_with_most_room():
    hosts = {"a": live(room=1000), "b": live(room=4000), "c": live(room=6000)}
    assert choose(WEB, hosts, (), here="a") == "a"
    assert choose(WEB, hosts, (), here="z") == "c"
    # room is what admission would give: free memory (what the VMs use now) is not the measure
    assert choose(WEB, {"b": live(room=4000), "c": live(room=6000, free=200)}, (), here="z") == "c"


def test_the_least_loaded_per_cpu_among_equal_rooms_then_the_name():
    hosts = {"a": live(load=3.0, cpus=4), "b": live(load=1.0, cpus=1), "c": live(load=1.0, cpus=4)}
    assert choose(WEB, hosts, (), here="z") == "c"
    assert choose(WEB, {"b": live(), "a": live()}, (), here="z") == "a"


def test_a_host_without_room_is_left_out_and_the_refusal_says_why():
    need = needed_mib(256)
    assert need > 256  # the VMM's own memory counts
    hosts = {"a": live(room=need - 1), "b": live(room=need)}
    assert choose(WEB, hosts, (), here="a") == "b"
    assert refusal(WEB, {"a": live(room=need - 1), "b": live(room=100)}, here="a") == (
        f"no host can power 'web1' on: a has room for {need - 1} MiB of VMs, and 'web1' needs {need} MiB; "
        f"b has room for 100 MiB of VMs, and 'web1' needs {need} MiB")


def test_only_hosts_where_the_vm_is_registered():
    hosts = {"a": live(registered=("other",)), "b": live(registered=("564D-AAAA",))}
    assert choose(WEB, hosts, (), here="a") == "b"
    assert "a has no 'web1' registered" in refusal(WEB, {"a": hosts["a"]}, here="a")


def test_apart_keeps_the_vms_on_different_hosts():
    rule = RuleRecord(3, "apart", ("web1", "web2"))
    hosts = {"a": live(vms=("web2", "db")), "b": live(room=100_000), "c": live()}
    assert choose(WEB, hosts, [rule], here="a") == "b"
    assert refusal(WEB, {"a": hosts["a"]}, [rule], here="a") == (
        "no host can power 'web1' on: a runs 'web2', which rule 3 keeps apart from 'web1'")
    # a rule about other VMs changes nothing
    assert choose(WEB, hosts, [RuleRecord(4, "apart", ("db", "web3"))], here="a") == "a"


def test_together_follows_the_vm_already_running():
    rule = RuleRecord(5, "together", ("web1", "cache"))
    hosts = {"a": live(), "b": live(vms=("cache",), room=2000)}
    assert choose(WEB, hosts, [rule], here="a") == "b"
    assert choose(WEB, {"a": live(), "b": live()}, [rule], here="a") == "a"  # none runs yet: anywhere
    assert refusal(WEB, hosts, [rule], here="a", only="a") == (
        "no host can power 'web1' on: a is not where 'cache' runs (b), which rule 5 keeps together with 'web1'")


def test_only_names_one_live_host():
    hosts = {"a": live(), "b": live()}
    assert choose(WEB, hosts, (), here="a", only="b") == "b"
    assert refusal(WEB, hosts, here="a", only="ghost") == (
        "host 'ghost' is not a live member of the cluster: 'web1' cannot start there")
    assert refusal(WEB, {"a": live(), "b": live(room=10)}, here="a", only="b").startswith(
        "no host can power 'web1' on: b has room for 10 MiB")


def test_a_refusal_names_eight_hosts_at_most():
    hosts = {f"h{index:02d}": live(room=0) for index in range(12)}
    line = refusal(WEB, hosts, here="h00")
    assert line.count("has room for 0 MiB") == 8 and line.endswith("h07 has room for 0 MiB of VMs, and 'web1' needs "
                                                                   f"{needed_mib(256)} MiB; and 4 more hosts")


def test_no_live_host():
    assert refusal(WEB, {}, here="a") == "no host can power 'web1' on: the cluster has no live host"


def test_a_record_from_an_older_member_reads_without_the_placement_fields():
    value = to_value(live())
    for field in ("registered", "memory_room_mib", "load"):
        del value[field]
    old = from_value(LiveRecord, value, "alive/a")
    assert (old.registered, old.memory_room_mib, old.load) == ((), 0, 0.0)
    assert "a has no 'web1' registered" in refusal(WEB, {"a": old}, here="a")


def test_rules_read_what_runs_where_from_the_owners_when_given():
    """The owners are claimed before each power-on; the published lists lag by a beat."""
    rule = RuleRecord(1, "apart", ("web1", "web2"))
    hosts = {"a": live(), "b": live()}  # nothing published as running yet
    assert choose(WEB, hosts, [rule], here="a") == "a"
    assert choose(WEB, hosts, [rule], here="a", running={"a": {"web2"}}) == "b"
    # an owner on a host that is not live (its lease going) rules out no live host
    assert choose(WEB, hosts, [rule], here="a", running={"c": {"web2"}}) == "a"


def test_a_single_host_asked_for_a_host_or_rules_says_it_is_in_no_cluster(tmp_path):
    import subprocess
    import sys

    for args in (("vm", "start", "web", "--host", "b"), ("vm", "rule", "list")):
        done = subprocess.run([sys.executable, "-m", "minivisor", "-d", str(tmp_path), *args], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 69 and done.stderr == (
            "error: this datastore's host is not in a cluster; make one with `minivisor cluster init --etcd URL`, "
            "or join one with `cluster join`\n"), args
