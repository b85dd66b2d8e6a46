"""Membership on a real etcd of three members: init, join, status (live hosts, their facts), leave, and the
refusals: a second init, a name taken, a datastore already in a cluster, hostile records in etcd."""

from __future__ import annotations

import json

import pytest
from lab import live_hosts

from minivisor.cluster.store import PREFIX
from minivisor.service.models import ClusterLeft, ClusterMembership, ClusterStatus


@pytest.mark.qemu  # a live member reports its QEMU's version
def test_init_join_status_leave(etcd, hosts):
    a, b = hosts("a", "b")
    made = json.loads(a.ok("cluster", "init", "--etcd", etcd.endpoints, "--name", "a", "--ttl", "5", "--json"))
    assert made == {"host": "a", "endpoints": etcd.urls, "ttl": 5}
    ClusterMembership.model_validate(made)  # the service's answer model (the OpenAPI document's schema)
    assert "joined it as host b" not in b.ok("cluster", "join", "--etcd", etcd.endpoints, "--name", "b")

    # members, not yet live: no service keeps a lease for them
    status = a.status()
    assert [h["name"] for h in status["hosts"]] == ["a", "b"] and not live_hosts(status)
    assert status["ttl"] == 5 and status["etcd"].startswith("3.4")
    ClusterStatus.model_validate(status)

    a.serve()
    b.serve()  # through the service from now on: the CLI's calls go over REST
    status = a.status_when("both hosts live", lambda s: live_hosts(s) == {"a", "b"})
    row = next(h for h in status["hosts"] if h["name"] == "b")
    assert row["cpus"] >= 1 and 0 < row["memory_free_mib"] <= row["memory_total_mib"]
    assert row["vms"] == [] and row["minivisor"] and row["qemu"] and not row["this"]
    assert next(h for h in status["hosts"] if h["name"] == "a")["this"]
    ClusterStatus.model_validate(status)  # live hosts' facts included, as REST sends them

    table = b.ok("cluster", "status").splitlines()
    assert table[0].startswith("cluster on etcd 3.4") and etcd.urls[0] in table[0]
    assert table[1].split()[:3] == ["HOST", "LIVE", "FREE"]
    assert [line.split()[:2] for line in table[2:]] == [["a", "yes"], ["b", "*"]] and table[3].split()[2] == "yes"

    assert b.ok("cluster", "leave").strip() == "host b left the cluster"
    status = a.status_when("b gone", lambda s: [h["name"] for h in s["hosts"]] == ["a"])
    assert live_hosts(status) == {"a"}
    result = b.cli("cluster", "status")
    assert result.returncode == 69 and result.stderr.startswith("error: this datastore's host is not in a cluster")
    # and b can join again, under the same name
    joined = json.loads(b.ok("cluster", "join", "--etcd", etcd.endpoints, "--name", "b", "--json"))
    assert ClusterMembership.model_validate(joined).host == "b"
    a.status_when("b live again", lambda s: live_hosts(s) == {"a", "b"})
    assert ClusterLeft.model_validate(json.loads(a.ok("cluster", "leave", "--force", "--json"))).left


def test_refusals_are_one_line(etcd, hosts):
    a, b, c = hosts("a", "b", "c")
    a.ok("cluster", "init", "--etcd", etcd.endpoints, "--name", "a")

    again = c.cli("cluster", "init", "--etcd", etcd.endpoints, "--name", "c")
    assert again.returncode == 4 and _one_line(again.stderr)
    assert "already holds a minivisor cluster" in again.stderr and "cluster join" in again.stderr

    taken = b.cli("cluster", "join", "--etcd", etcd.endpoints, "--name", "a")
    assert taken.returncode == 4 and _one_line(taken.stderr) and "a host named 'a' is already a member" in taken.stderr

    twice = a.cli("cluster", "join", "--etcd", etcd.endpoints, "--name", "x")
    assert twice.returncode == 4 and "already the cluster member 'a'" in twice.stderr

    for bad in ("ftp://127.0.0.1:2379", "http://127.0.0.1", "http://u:p@127.0.0.1:1/x", ","):
        result = b.cli("cluster", "join", "--etcd", bad)
        assert result.returncode == 2 and _one_line(result.stderr), bad
    bad_name = b.cli("cluster", "join", "--etcd", etcd.endpoints, "--name", "../../etc")
    assert bad_name.returncode == 2 and "not a usable host name" in bad_name.stderr
    assert not (b.root / ".minivisor" / "cluster.json").exists()

    nothing = b.cli("cluster", "join", "--etcd", "http://127.0.0.1:1")
    assert nothing.returncode == 69 and _one_line(nothing.stderr)
    assert "the cluster store at http://127.0.0.1:1 is unreachable: " in nothing.stderr


def test_hostile_records_in_etcd_are_refused_by_name(etcd, hosts):
    (a,) = hosts("a")
    a.ok("cluster", "init", "--etcd", etcd.endpoints, "--name", "a")
    for value in ('{"name": "evil", "id": "x", "joined": 1}', "not json", '{"name": "b", "id": ["x"], "joined": 1}',
                  '[1, 2]', '{"name": "b", "id": "x", "joined": 1e400}'):
        etcd.put_raw(PREFIX + "hosts/b", value)
        result = a.cli("cluster", "status")
        assert result.returncode == 69 and _one_line(result.stderr), value
        assert "hosts/b" in result.stderr and "Traceback" not in result.stderr


def _one_line(stderr: str) -> bool:
    return stderr.startswith("error: ") and stderr.count("\n") == 1
