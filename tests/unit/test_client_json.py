"""The client reads and writes JSON through ``_json``, json's C module, exactly as ``json.loads``/``json.dumps`` do.

Each value is compared with what the standard library's ``json`` makes of it; documents that are not JSON
are refused with a ValueError, as ``json.loads`` refuses them.
"""

from __future__ import annotations

import json
import math

import pytest

from minivisor.client import _dumps, _loads
from minivisor.service.responses import dumps

VALUES = [
    {}, [], "", 0, -1, 2**70, 1.5, -0.0, 1e300, True, False, None, "Web \u00e9 server \U0001f600 \"quoted\" \\ \n\t\x01",
    {"name": "web", "timeout": 30.0, "hard": True, "disks": [{"node": "scsi0:0", "file": "web.qcow2"}], "x": None},
    [[[]], {"a": {"b": [1, 2, {"c": "d"}]}}], {"1": 1, "": ""},
]


@pytest.mark.parametrize("value", VALUES)
def test_what_the_client_writes_is_what_json_writes(value):
    assert _dumps(value) == json.dumps(value)


@pytest.mark.parametrize("value", VALUES)
def test_what_the_client_reads_is_what_json_reads(value):
    for text in (json.dumps(value), json.dumps(value, indent=2), dumps(value).decode(), f" \n{json.dumps(value)}\r\n"):
        assert _loads(text) == json.loads(text) == value
        assert _loads(text.encode()) == value


def test_non_finite_numbers_travel_as_json_writes_them():
    assert _dumps([math.inf, -math.inf]) == json.dumps([math.inf, -math.inf]) == "[Infinity, -Infinity]"
    assert math.isnan(_loads("NaN")) and _loads("[Infinity, -Infinity]") == [math.inf, -math.inf]


@pytest.mark.parametrize("text", ["", " ", "{", '{"a": 1} {}', "[1,]", "{'a': 1}", '"\x01"', "nul", '{"a" 1}',
                                  b"\xff\xfe"])
def test_what_is_not_json_is_refused_as_json_refuses_it(text):
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        _loads(text)


def test_what_json_cannot_write_is_refused_as_json_refuses_it():
    cycle: list = []
    cycle.append(cycle)
    for value in (object(), {1j: 1}, cycle):
        with pytest.raises((TypeError, ValueError)) as theirs:
            json.dumps(value)
        with pytest.raises(theirs.type):
            _dumps(value)
