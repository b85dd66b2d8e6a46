"""A VM's identity without the uuid module: new UUIDs and VMware's uuid.bios form, held to uuid's own answers."""

from __future__ import annotations

import uuid

import pytest

from minivisor.spec.identity import random_uuid, uuid_from_vmx, uuid_to_vmx


def test_a_new_uuid_is_what_uuid4_makes_and_new_each_time():
    made = [random_uuid() for _ in range(500)]
    assert len(set(made)) == len(made)
    for text in made:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122


# fixed values, every form uuid.UUID reads (the same on every test worker: xdist compares what each collected)
@pytest.mark.parametrize("value", ["72a1ab38-19a9-474a-83c0-6f765abc458c", "B1B8F744-3936-4AD8-A3B0-0E34177850B1",
                                   "{042d963b-8d13-4f55-8bb3-dbf5b68d0c36}",
                                   "urn:uuid:bd87d1ba-0f7e-4166-a5e1-77f8a1109a87", "f81e28e4a8f84010affcb8f8904fb5bb"])
def test_uuid_bios_is_written_as_uuid_reads_the_value(value):
    raw = uuid.UUID(value).hex
    pairs = [raw[i:i + 2] for i in range(0, 32, 2)]
    assert uuid_to_vmx(value) == " ".join(pairs[:8]) + "-" + " ".join(pairs[8:])
    assert uuid_from_vmx(uuid_to_vmx(value)) == str(uuid.UUID(value))


@pytest.mark.parametrize("value", ["", "not a uuid", "550e8400-e29b-41d4-a716-44665544000g",
                                   "550e8400-e29b-41d4-a716-4466554400"])
def test_a_value_that_is_no_uuid_is_refused(value):
    with pytest.raises(ValueError):
        uuid_to_vmx(value)
