"""Records (:mod:`minivisor.records`) behave as the dataclasses they replaced: equal by value, a repr
naming every field, ``replace`` leaving the original as it was, and not hashable (they can change)."""

from __future__ import annotations

from pathlib import Path

import pytest

from minivisor.core.vminfo import StartResult, VmInfo
from minivisor.spec.snapshot import Snapshot
from minivisor.vmm.states import VmState


def vm(**changes: object) -> VmInfo:
    fields = {"name": "web", "uuid": "564d8c48-1de9-5312-9e23-96ef90e27a17", "vmx": Path("/ds/web/web.vmx"),
              "state": VmState.POWERED_OFF, "display_name": "Web", "guest_os": "other-64", "memory_mib": 512,
              "cpus": 1, "disks": ({"node": "scsi0:0", "file": "web.qcow2"},), "nics": ()}
    return VmInfo(**{**fields, **changes})


def test_equal_by_value_and_only_to_their_own_type():
    assert vm() == vm() and vm() != vm(cpus=2)
    assert Snapshot(1, "a", None, {}) == Snapshot(1, "a", None, {}) != Snapshot(1, "a", None, {}, memory_file="m")
    assert vm() != StartResult(vm()) and StartResult(vm()) == StartResult(vm(), (), None)


def test_replace_makes_a_changed_copy():
    original = vm()
    changed = original.replace(nics=({"index": 0},), pid=42)
    assert (changed.nics, changed.pid, changed.name) == (({"index": 0},), 42, "web")
    assert (original.nics, original.pid) == ((), None)


def test_repr_names_every_field_and_none_is_hashable():
    text = repr(Snapshot(3, "before", 1, {"scsi0:0": "w-000001.qcow2"}))
    assert text.startswith("Snapshot(uid=3, name='before', parent=1,") and "ready_line=None" in text
    with pytest.raises(TypeError):
        hash(vm())


def test_a_vm_survives_its_dict():
    running = vm(state=VmState.PAUSED, pid=4242, accel="tcg", state_reason="io-error", autostart=True)
    assert VmInfo.from_dict(running.to_dict()) == running
    start = StartResult(running, ("a warning",), "minivisor-guest: ready")
    assert StartResult.from_dict(start.to_dict()) == start
