"""Fixtures shared by every test directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from minivisor import dirs
from minivisor.appliance import build_appliance


@pytest.fixture(scope="session")
def appliance_image() -> Path:
    """The appliance disk image, built into (or taken from) the user's cache once per session."""
    return build_appliance(dirs.cache_dir())
