"""SHA-256 without ``hashlib``: the names and identities minivisor derives (runtime folders, generated MACs,
disks' WWNs, taps) are hashed on every power-on, where importing hashlib, which loads OpenSSL's libcrypto
and builds its table of algorithms, costs ~4 ms of CPU before QEMU starts. CPython's own SHA-256 module
gives the same digests."""

from __future__ import annotations

import sys

# Named by version: a module not found is looked for through the whole sys.path first (~60 µs of a power-on or clone)
try:
    if sys.version_info >= (3, 12):
        from _sha2 import sha256
    else:
        from _sha256 import sha256
except ImportError:  # an interpreter built without its own SHA-2 (OpenSSL's only)
    from hashlib import sha256

__all__ = ["sha256"]
