"""HA's pure parts, without etcd: the order of its timings (fence, watchdog, lease, restart) and the heartbeat
file read as hostile (what cannot be read is an old beat: the watchdog fences)."""

from __future__ import annotations

import pytest

from minivisor.cluster import heartbeat
from minivisor.cluster.config import MAX_TTL, MIN_TTL, fence_after, keepalive_every
from minivisor.cluster.ha import restart_after, stale_after
from minivisor.cluster.liveness import HA_POLL


@pytest.mark.parametrize("ttl", range(MIN_TTL, MAX_TTL + 1))
def test_a_dead_hosts_vms_are_fenced_before_they_run_elsewhere(ttl):
    # the service's thread fences first, its watchdog process next, both before the lease can expire; the restart
    # comes after the lease, with the fencing delay
    assert fence_after(ttl) < heartbeat.fence_after(ttl) < ttl < ttl + restart_after(ttl)
    assert ttl - heartbeat.fence_after(ttl) >= 0.9  # seconds for the watchdog's kills before the lease can end
    # a member that looks every HA_POLL keeps what it saw; what it saw of a release is still true when it looks
    # again: the released host's lease lives at least TTL less one renewal interval
    assert HA_POLL < stale_after(ttl) < ttl - keepalive_every(ttl)


def test_the_heartbeat_round_trip(tmp_path):
    assert heartbeat.read(tmp_path) is None
    heartbeat.write(tmp_path, 12.5, 10)
    heartbeat.write(tmp_path, 3.25, 6)  # written over in place, same size
    assert heartbeat.read(tmp_path) == heartbeat.Beat(3.25, 6)
    assert (tmp_path / heartbeat.BEAT_FILE).stat().st_mode & 0o777 == 0o600
    assert (tmp_path / heartbeat.BEAT_FILE).stat().st_size == heartbeat.SIZE
    heartbeat.clear(tmp_path)
    assert heartbeat.read(tmp_path) is None


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b'{"renewed": "1", "ttl": 6}', b'{"renewed": 1, "ttl": 0}',
                                     b'{"renewed": 1, "ttl": 6.5}', b'{"ttl": 6}', b"\xff" * 200])
def test_a_heartbeat_that_cannot_be_read_is_an_old_one(tmp_path, content):
    (tmp_path / heartbeat.BEAT_FILE).write_bytes(content)
    assert heartbeat.read(tmp_path) == heartbeat.Beat(0.0, 1)
