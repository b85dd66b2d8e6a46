"""A guest's ready line is the guest's to choose, its length too: the relay notes at most READY_MAX
characters of it, which a migration request (checked against the same bound) and a memory snapshot carry."""

from __future__ import annotations

import os

from minivisor.text import READY_MAX
from minivisor.vmm.relay import LINE_MAX, Relay


def relay_noting_into(folder) -> Relay:
    """A relay with only what its ready scan uses: the runtime folder, the ready text, no waiting power-on."""
    relay = Relay.__new__(Relay)
    relay.runtime = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    relay.ready_name, relay.ready_text, relay.ready_signal, relay.line = "ready", b"GUEST READY", None, b""
    return relay


def test_a_ready_line_longer_than_a_migration_carries_is_noted_cut_short(tmp_path):
    relay = relay_noting_into(tmp_path)
    try:
        relay._scan_for_ready(b"GUEST READY " + b"\x1b[31m" * 10_000 + b"\n")  # one console chunk: 60 KB
    finally:
        os.close(relay.runtime)
    noted = (tmp_path / "ready").read_text().strip()
    assert noted.startswith("GUEST READY") and len(noted) == READY_MAX < LINE_MAX


def test_a_short_ready_line_is_noted_whole(tmp_path):
    relay = relay_noting_into(tmp_path)
    try:
        relay._scan_for_ready(b"boot...\nGUEST READY at 10.0.2.15\nmore")
    finally:
        os.close(relay.runtime)
    assert (tmp_path / "ready").read_text() == "GUEST READY at 10.0.2.15\n"
