"""minivisor.digest's SHA-256 (CPython's own module, without hashlib) gives hashlib's digests: the names derived
from it (runtime folders, generated MACs, disks' WWNs, taps) stay what they were."""

from __future__ import annotations

import hashlib

import pytest

from minivisor.digest import sha256


@pytest.mark.parametrize("data", [b"", b"00000000-0000-4000-8000-000000000000/0", bytes(range(256)) * 300])
def test_the_digest_is_hashlibs(data):
    assert sha256(data).hexdigest() == hashlib.sha256(data).hexdigest()
    assert sha256(data).digest() == hashlib.sha256(data).digest()
