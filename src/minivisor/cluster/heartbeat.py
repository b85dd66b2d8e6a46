"""The **heartbeat** a member's service leaves for the host's watchdog process (:mod:`minivisor.core.watchdog`).

The service's own watchdog is a thread: it fences when renewals stop while the service runs. If the service
itself stops or dies (SIGTERM with VMs running, SIGKILL, a crash), nothing of it is left to fence, yet its lease
expires and another host may run its VMs (HA restarts them). The watchdog process outlives the service: after each
renewal etcd acknowledged, the service writes when it sent it (``.minivisor/cluster-beat.json``: CLOCK_MONOTONIC,
the same clock in every process of the host) and the TTL; the watchdog fences when the last one is older than
:func:`fence_after` (0.7 TTL: after the service's own watchdog, 0.6, so that a live service fences first; before
the lease can expire, TTL, and an HA restart elsewhere, 1.5 TTL). The file is removed when nothing is to be
guarded (the host left the cluster, or its service stopped with no VM running): the watchdog then ends.

Standard library only: the service writes it on every renewal.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..records import Record

__all__ = ["Beat", "write", "read", "clear", "fence_after", "BEAT_FILE"]

BEAT_FILE = "cluster-beat.json"  # in the datastore's .minivisor folder
SIZE = 128  # bytes of a beat, padded with spaces


class Beat(Record, frozen=True):
    renewed: float  # time.monotonic() when the last acknowledged renewal was sent
    ttl: int


def fence_after(ttl: int) -> float:
    """How long after the last renewal the watchdog process fences the host's VMMs."""
    return ttl * 0.7


def write(meta: Path, renewed: float, ttl: int) -> None:
    """The beat, written over the last one in place (the same size: a full datastore does not stop it)."""
    data = json.dumps({"renewed": renewed, "ttl": ttl}).encode().ljust(SIZE)
    fd = os.open(meta / BEAT_FILE, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)


def read(meta: Path) -> Beat | None:
    """The last heartbeat; None if there is nothing to guard. A file that is not a heartbeat is an old one."""
    try:
        data = json.loads((meta / BEAT_FILE).read_bytes()[:SIZE])
        renewed, ttl = data["renewed"], data["ttl"]
        if isinstance(renewed, (int, float)) and isinstance(ttl, int) and 0 < ttl <= 3600:
            return Beat(float(renewed), ttl)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError):
        pass
    return Beat(0.0, 1)  # unreadable: fenced as if the service stopped renewing long ago


def clear(meta: Path) -> None:
    (meta / BEAT_FILE).unlink(missing_ok=True)
