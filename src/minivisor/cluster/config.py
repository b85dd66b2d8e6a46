"""A datastore's **cluster configuration**: which etcd, which host this is, the lease's TTL.

``.minivisor/cluster.json`` exists from ``cluster init``/``join`` until ``cluster leave``;
without it the datastore is a single host and nothing of the cluster is loaded (stdlib only here:
a power-on in single-host mode costs one ``stat``). The file is checked when read, like any input.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import ArgumentError, ClusterError, HvError
from ..files import write_atomic
from ..records import Record
from ..text import excerpt

__all__ = ["ClusterConfig", "parse_endpoints", "host_and_port", "exists", "CONFIG_FILE", "DEFAULT_TTL", "MIN_TTL",
           "MAX_TTL", "fence_after", "keepalive_every"]

CONFIG_FILE = "cluster.json"  # in the datastore's .minivisor folder
DEFAULT_TTL, MIN_TTL, MAX_TTL = 10, 3, 300  # seconds of a member's lease


def keepalive_every(ttl: int) -> float:
    """How often a member renews its lease: five tries before it would expire."""
    return ttl / 5


def fence_after(ttl: int) -> float:
    """How long after the last renewal that etcd acknowledged a member fences (powers its VMs off).

    etcd counts the TTL from when it received that renewal, which was after the member sent it:
    a member that fences at 0.6 TTL after sending, its kills done within seconds (SIGKILL), has its VMs
    gone before its lease (and with it their ownership) can expire and another host can claim them.
    """
    return ttl * 0.6


def parse_endpoints(text: str) -> tuple[str, ...]:
    """``http://HOST:PORT[,http://HOST:PORT...]`` (etcd's client URLs), checked; ArgumentError otherwise."""
    urls = tuple(part.strip().rstrip("/") for part in text.split(",") if part.strip())
    if not urls or len(urls) > 16:
        raise ArgumentError(f"{excerpt(text)} names no etcd endpoint (or more than 16)",
                            hint="give etcd's client URLs: --etcd http://10.0.0.1:2379,http://10.0.0.2:2379")
    for url in urls:
        host_and_port(url)
    return urls


def host_and_port(url: str) -> tuple[str, int]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if parts is None or parts.scheme != "http" or not parts.hostname or port is None or parts.path \
            or parts.query or parts.fragment or parts.username or parts.password:
        raise ArgumentError(f"{excerpt(url)} is not an etcd client URL http://HOST:PORT",
                            hint="e.g. http://127.0.0.1:2379 (TLS endpoints are not supported yet)")
    return parts.hostname, port


class ClusterConfig(Record, frozen=True):
    endpoints: tuple[str, ...]
    host: str
    host_id: str
    ttl: int

    @staticmethod
    def path(meta: Path) -> Path:
        return meta / CONFIG_FILE

    @classmethod
    def load(cls, meta: Path) -> ClusterConfig | None:
        """The datastore's cluster configuration, or None in single-host mode."""
        path = cls.path(meta)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ClusterError(f"cannot read {path}: {exc.strerror}") from exc
        try:
            data = json.loads(raw) if len(raw) < 16384 else None
            config = cls(tuple(data["endpoints"]), data["host"], data["host_id"], data["ttl"])
        except (ValueError, TypeError, KeyError):
            config = None
        if config is None or not _well_formed(config):
            raise ClusterError(f"{path} is malformed", hint="run `minivisor cluster leave --force`, then join again")
        return config

    def save(self, meta: Path) -> None:
        data = {"endpoints": list(self.endpoints), "host": self.host, "host_id": self.host_id, "ttl": self.ttl}
        write_atomic(self.path(meta), json.dumps(data, indent=1).encode(), mode=0o600)

    @classmethod
    def remove(cls, meta: Path) -> None:
        cls.path(meta).unlink(missing_ok=True)


def _well_formed(config: ClusterConfig) -> bool:
    from .records import check_host_name  # stdlib only too

    try:
        check_host_name(config.host)
        for url in config.endpoints:
            host_and_port(url)
    except HvError:
        return False
    return (isinstance(config.host_id, str) and 0 < len(config.host_id) <= 64 and 0 < len(config.endpoints) <= 16
            and isinstance(config.ttl, int) and MIN_TTL <= config.ttl <= MAX_TTL)


def exists(meta: Path) -> bool:
    """Whether the datastore is a cluster member (one ``stat``)."""
    return os.path.exists(ClusterConfig.path(meta))
