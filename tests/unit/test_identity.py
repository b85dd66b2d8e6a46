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


@pytest.mark.parametrize("value", [str(uuid.uuid4()), str(uuid.uuid4()).upper(), "{" + str(uuid.uuid4()) + "}",
                                   "urn:uuid:" + str(uuid.uuid4()), uuid.uuid4().hex])
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
