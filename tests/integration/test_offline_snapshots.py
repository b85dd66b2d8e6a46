"""Snapshot requests a powered-off VM refuses change nothing (real qemu-img, no guest needed)."""

from __future__ import annotations

import pytest

from minivisor.errors import ConflictError, NotFoundError, StateError


def test_bad_requests_change_nothing(hv):
    hv.create_vm("bad", memory_mib=64, disk_size="16M", network="none")
    folder = hv.datastore.root / "bad"
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.suffix != ".lck"}
    with pytest.raises(StateError):
        hv.snapshot_take("bad", "x", memory=True)  # powered off: no memory to save
    with pytest.raises(NotFoundError):
        hv.snapshot_revert("bad", "nothing")
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.suffix != ".lck"} == before
    hv.snapshot_take("bad", "one")
    with pytest.raises(ConflictError):
        hv.snapshot_take("bad", "one")
    assert sorted(p.name for p in folder.glob("*.qcow2")) == ["bad-000001.qcow2", "bad.qcow2"]
    assert (folder / "bad.qcow2").read_bytes() == before["bad.qcow2"]
    assert [s["name"] for s in hv.snapshot_list("bad")] == ["one"]
