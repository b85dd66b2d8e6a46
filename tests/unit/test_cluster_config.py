"""The cluster's pure parts, without etcd: endpoints as users write them, the configuration file read as
hostile, records checked field by field, and the lease's timings (the fence comes before the lease can end)."""

from __future__ import annotations

import json

import pytest

from minivisor.cluster.config import (DEFAULT_TTL, MAX_TTL, MIN_TTL, ClusterConfig, fence_after, keepalive_every,
                                      parse_endpoints)
from minivisor.cluster.records import HostRecord, LiveRecord, from_value, owner_key
from minivisor.errors import ArgumentError, ClusterError


def test_endpoints():
    assert parse_endpoints(" http://127.0.0.1:2379/, http://[::1]:2380") == ("http://127.0.0.1:2379",
                                                                               "http://[::1]:2380")
    for bad in ("", ",", "127.0.0.1:2379", "https://h:1", "http://h", "http://h:99999", "http://u@h:1",
                "http://h:1/v3", "http://h:1?x=1", ",".join(["http://h:1"] * 17)):
        with pytest.raises(ArgumentError):
            parse_endpoints(bad)


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b'{"endpoints": "http://h:1", "host": "a", "host_id": "i", '
                                     b'"ttl": 10}', b'{"endpoints": ["http://h:1"], "host": "../a", "host_id": "i", '
                                     b'"ttl": 10}', b'{"endpoints": ["http://h:1"], "host": "a", "host_id": "i", '
                                     b'"ttl": 1}', b'{"endpoints": ["http://h:1"], "host": "a", "host_id": "i", '
                                     b'"ttl": true}', b"x" * 20000])
def test_a_malformed_configuration_is_one_error(tmp_path, content):
    (tmp_path / "cluster.json").write_bytes(content)
    with pytest.raises(ClusterError, match="cluster.json is malformed"):
        ClusterConfig.load(tmp_path)


def test_configuration_round_trip(tmp_path):
    assert ClusterConfig.load(tmp_path) is None
    config = ClusterConfig(("http://127.0.0.1:2379",), "h1", "id-1", DEFAULT_TTL)
    config.save(tmp_path)
    assert ClusterConfig.load(tmp_path) == config
    assert json.loads((tmp_path / "cluster.json").read_text())["host"] == "h1"
    assert (tmp_path / "cluster.json").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("ttl", range(MIN_TTL, MAX_TTL + 1))
def test_the_fence_comes_before_the_lease_can_expire(ttl):
    # renewals keep coming while the fence is not due; the fence leaves 0.4 TTL (>= 1.2 s) for the kills
    assert keepalive_every(ttl) * 2 < fence_after(ttl) < ttl and ttl - fence_after(ttl) >= 1.2


@pytest.mark.parametrize("value", [{}, {"name": "a", "id": "x"}, {"name": 1, "id": "x", "joined": 1},
                                   {"name": "a", "id": "x", "joined": True}, {"name": "a", "id": "x", "joined": -1},
                                   {"name": "a" * 300, "id": "x", "joined": 1}, {"name": "a", "id": None, "joined": 1}])
def test_records_are_checked_field_by_field(value):
    with pytest.raises(ClusterError, match="malformed .* at 'hosts/a'"):
        from_value(HostRecord, value, "hosts/a")


def test_a_live_record():
    value = {"id": "x", "memory_free_mib": 1, "memory_total_mib": 2, "cpus": 2, "vms": ["web"], "minivisor": "0.1",
             "qemu": "7.2", "updated": 1.5}
    assert from_value(LiveRecord, value, "alive/a").vms == ("web",)
    with pytest.raises(ClusterError):
        from_value(LiveRecord, {**value, "vms": ["web", 1]}, "alive/a")
    with pytest.raises(ArgumentError):
        owner_key("../../cluster")


def test_a_single_host_knows_itself_without_the_cluster_package(tmp_path):
    """core.clustering names the configuration file too, so that a power-on or a clone on a single host need not
    import minivisor.cluster to find it absent: both names agree, and either finds it present."""
    from minivisor.cluster import config
    from minivisor.core.clustering import CONFIG_FILE, in_cluster

    assert CONFIG_FILE == config.CONFIG_FILE
    assert not in_cluster(tmp_path) and not config.exists(tmp_path)
    config.ClusterConfig.path(tmp_path).write_text("{}")
    assert in_cluster(tmp_path) and config.exists(tmp_path)
