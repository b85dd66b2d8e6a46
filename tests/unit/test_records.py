"""Records (:mod:`minivisor.records`) behave as the dataclasses they replaced: equal by value, a repr
naming every field, ``replace`` leaving the original as it was, and not hashable (they can change) unless
frozen."""

from __future__ import annotations

from pathlib import Path

import pytest

from minivisor.core.vminfo import StartResult, VmInfo
from minivisor.records import Record, as_dict, default_factory
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


# Records declared by annotations (the launch plan's data): what dataclass(frozen=True) gave them


class Part(Record, frozen=True):
    name: str
    size: int = 1


class Box(Record):
    label: str
    parts: tuple[Part, ...] = ()
    notes: list[str] = default_factory(list)


def test_an_annotated_record_takes_its_fields_by_position_or_name_with_defaults():
    assert Part("a") == Part(name="a", size=1) != Part("a", 2)
    assert repr(Part("a", 2)) == "Part(name='a', size=2)"
    for bad in (lambda: Part(), lambda: Part("a", 1, 2), lambda: Part("a", name="b"), lambda: Part("a", colour=1)):
        with pytest.raises(TypeError):
            bad()


def test_a_default_factory_makes_a_new_value_for_each_record():
    first, second = Box("x"), Box("y")
    first.notes.append("mine")
    assert second.notes == [] and first.notes == ["mine"]


def test_a_frozen_record_refuses_changes_and_hashes_by_value():
    part = Part("a")
    with pytest.raises(AttributeError):
        part.size = 3
    with pytest.raises(AttributeError):
        del part.name
    assert part.size == 1 and {Part("a"), Part("a"), Part("b")} == {Part("a"), Part("b")}
    assert part.replace(size=3) == Part("a", 3) and part == Part("a")
    with pytest.raises(TypeError):
        hash(Box("x"))  # not frozen: it may change, so it has no hash


def test_as_dict_converts_nested_records_and_keeps_the_rest():
    box = Box("x", (Part("a"), Part("b", 2)), ["n"])
    assert as_dict(box) == {"label": "x", "parts": ({"name": "a", "size": 1}, {"name": "b", "size": 2}), "notes": ["n"]}
    assert as_dict(box)["notes"] is not box.notes
