"""Linked clones pin the snapshot they are built on, and a clone never takes a name in use.

Real qemu-img, no guest needed.
"""

from __future__ import annotations

import pytest
from cli_runner import run_cli

from minivisor.errors import ConflictError, StateError


def test_reverting_past_a_cloned_snapshot_is_refused_and_names_the_clone(hv):
    hv.create_vm("base", memory_mib=64, disk_size="16M", network="none")
    hv.snapshot_take("base", "s1")
    hv.snapshot_take("base", "s2")
    hv.clone_vm("base", "child", linked=True, snapshot="s2")
    before = [(s["name"], s.get("current")) for s in hv.snapshot_list("base")]
    with pytest.raises(StateError) as caught:
        hv.snapshot_revert("base", "s1")
    assert "child" in caught.value.message and "s2" in caught.value.message and caught.value.hint
    assert [(s["name"], s.get("current")) for s in hv.snapshot_list("base")] == before
    hv.snapshot_revert("base", "s2")  # the pinned snapshot itself is fine
    hv.delete_vm("child")
    hv.snapshot_revert("base", "s1")  # and once the clone is gone, so is the pin


def test_clone_refuses_a_taken_name_and_leaves_nothing(hv):
    for name in ("one", "two"):
        hv.create_vm(name, memory_mib=64, disk_size="16M", network="none")
    before = sorted(p.name for p in hv.datastore.root.iterdir())
    result = run_cli("vm", "clone", "one", "two", "--linked", datastore=hv.datastore.root)
    assert result.returncode == ConflictError.exit_code
    assert result.stderr.count("\n") == 1 and "already exists" in result.stderr
    assert sorted(p.name for p in hv.datastore.root.iterdir()) == before
    assert hv.snapshot_list("one") == []
