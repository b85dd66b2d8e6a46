"""Replication's pure parts, without etcd: when a replica is said to be behind, and how the CLI says so."""

from __future__ import annotations

from dataclasses import replace

import pytest

from minivisor.cli.output import replica_state
from minivisor.cluster.replication import BEHIND_GRACE, ReplicaRecord, is_behind, shown

EVERY = 300.0
RECORD = ReplicaRecord("web", "a", "b", EVERY, created=1000.0, last_copy=5000.0, generation=3)


@pytest.mark.parametrize(("since_copy", "behind"), [(0.0, False), (2 * EVERY + BEHIND_GRACE, False),
                                                    (2 * EVERY + BEHIND_GRACE + 1, True)])
def test_a_replica_is_behind_past_two_intervals_and_a_minute_without_a_good_copy(since_copy, behind):
    assert is_behind(RECORD, 5000.0 + since_copy) is behind


def test_a_replication_without_a_copy_counts_from_its_creation_and_a_failed_over_one_is_never_behind():
    first = replace(RECORD, last_copy=0.0, generation=0)
    assert not is_behind(first, 1000.0 + 2 * EVERY + BEHIND_GRACE)
    assert is_behind(first, 1000.0 + 2 * EVERY + BEHIND_GRACE + 1)
    assert not is_behind(replace(RECORD, failed_over_to="b", failed_over_at=6000.0), 10**9)


def test_the_cli_says_a_replica_is_behind():
    late = {**shown(replace(RECORD, last_copy=1.0)), "uuid": "x"}
    assert late["behind"] is True
    assert replica_state(late).endswith("(generation 3, every 300 s); BEHIND: its rounds fail (see its source's "
                                        "service log)")
    assert "BEHIND" not in replica_state({**late, "behind": False})
