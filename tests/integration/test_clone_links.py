"""Linked clones pin the snapshot they are built on (real qemu-img, no guest needed)."""

from __future__ import annotations

import pytest

from minivisor.errors import StateError


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
