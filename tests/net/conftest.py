"""The ``lab`` fixture: a pair of network namespaces of the test's own (see tests/netlab.py)."""

from __future__ import annotations

import pytest
from netlab import end_lab, make_lab


@pytest.fixture
def lab(tmp_path):
    made = make_lab(tmp_path / "datastore")
    try:
        yield made
    finally:
        end_lab(made)
