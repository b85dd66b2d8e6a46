"""Port forwards as users write them, and who already holds a port of the host.

``[ADDR:]HOSTPORT:GUESTPORT[/udp]``: the host's ``ADDR`` (127.0.0.1 when not
given, 0.0.0.0 for every address) port ``HOSTPORT`` reaches the guest's
``GUESTPORT``, over TCP unless ``/udp``.
"""

from __future__ import annotations

import ipaddress
import re

from .. import procfs
from ..errors import ArgumentError
from ..records import Record
from ..text import excerpt

__all__ = ["PortSpec", "parse_forward", "parse_host_side", "port_user", "DEFAULT_ADDR"]

DEFAULT_ADDR = "127.0.0.1"
_SPEC = re.compile(r"(?:(?P<addr>[0-9.]{7,15}):)?(?P<host>\d{1,5})(?::(?P<guest>\d{1,5}))?(?:/(?P<proto>tcp|udp))?\Z")
_FORWARD_HINT = "write [ADDR:]HOSTPORT:GUESTPORT[/udp], e.g. 8080:80 or 0.0.0.0:2222:22 or 5353:53/udp"
_HOST_SIDE_HINT = "write [ADDR:]HOSTPORT[/udp] (or the whole forward), e.g. 8080 or 0.0.0.0:2222 or 5353/udp"
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp
_UNCONNECTED = "07"  # TCP_CLOSE: how a bound UDP socket shows in /proc/net/udp


class PortSpec(Record, frozen=True):
    """A forward's host side and guest port."""

    protocol: str
    host_addr: str
    host_port: int
    guest_port: int

    def __str__(self) -> str:
        return f"{self.host_addr}:{self.host_port}:{self.guest_port}/{self.protocol}"


class _Parsed(Record, frozen=True):
    """What :data:`_SPEC` read and checked: a forward, or only its host side (no guest port)."""

    protocol: str
    host_addr: str
    host_port: int
    guest_port: int | None


def parse_forward(text: str) -> PortSpec:
    """A port forward from ``[ADDR:]HOSTPORT:GUESTPORT[/udp]``, or ArgumentError saying how to write it."""
    spec = _parse(text, _FORWARD_HINT)
    if spec.guest_port is None:
        raise ArgumentError(f"{excerpt(text)} is not a port forward", hint=_FORWARD_HINT)
    return PortSpec(spec.protocol, spec.host_addr, spec.host_port, spec.guest_port)


def parse_host_side(text: str) -> tuple[str, str, int]:
    """(protocol, address, port) of a forward's host side, from ``[ADDR:]HOSTPORT[/udp]`` or a whole forward."""
    spec = _parse(text, _HOST_SIDE_HINT)
    return spec.protocol, spec.host_addr, spec.host_port


def _parse(text: str, hint: str) -> _Parsed:
    """``[ADDR:]HOSTPORT[:GUESTPORT][/udp]`` checked, or ArgumentError with ``hint``."""
    found = _SPEC.match(text.strip())
    if not found:
        raise ArgumentError(f"{excerpt(text)} is not a port forward", hint=hint)
    host_port, guest_port = int(found["host"]), (int(found["guest"]) if found["guest"] else None)
    for port in (host_port, guest_port):
        if port is not None and not 1 <= port <= 65535:
            raise ArgumentError(f"port {port} in {excerpt(text)} is not a port (1-65535)", hint=hint)
    addr = found["addr"] or DEFAULT_ADDR
    try:
        address = ipaddress.IPv4Address(addr)
    except ValueError:
        raise ArgumentError(f"{excerpt(addr)} in {excerpt(text)} is not an IPv4 address", hint=hint) from None
    if address.is_multicast or address.is_reserved:
        raise ArgumentError(f"{address} is not an address of this host", hint=hint)
    return _Parsed(found["proto"] or "tcp", str(address), host_port, guest_port)


def port_user(protocol: str, host_addr: str, port: int) -> str | None:
    """Who listens on ``host_addr:port`` of this host (any address overlaps 0.0.0.0): ``sshd (pid 812)``, or None."""
    inodes = set()
    for table in (f"/proc/net/{protocol}", f"/proc/net/{protocol}6"):
        try:
            with open(table) as handle:
                rows = handle.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, state, inode = fields[1], fields[3], fields[9]
            addr_hex, _, port_hex = local.rpartition(":")
            if int(port_hex, 16) != port or state not in (_LISTEN, _UNCONNECTED):
                continue
            if _overlaps(_address(addr_hex), host_addr):
                inodes.add(inode)
    return _process_of(inodes) if inodes else None


def _address(hex_text: str) -> str:
    """An address as /proc/net prints it (host byte order, IPv6 as four words): IPv4 text, or "::" family."""
    if len(hex_text) == 8:
        return str(ipaddress.IPv4Address(bytes.fromhex(hex_text)[::-1]))
    words = bytes.fromhex(hex_text)
    raw = b"".join(words[i:i + 4][::-1] for i in range(0, 16, 4))
    address = ipaddress.IPv6Address(raw)
    mapped = address.ipv4_mapped
    return str(mapped) if mapped else ("0.0.0.0" if address.is_unspecified else str(address))


def _overlaps(listening: str, wanted: str) -> bool:
    if ":" in listening:  # an IPv6 address other than :: or a mapped IPv4 one: not an IPv4 port
        return False
    return "0.0.0.0" in (listening, wanted) or listening == wanted


def _process_of(inodes: set[str]) -> str:
    """The first process holding one of these sockets, named; or "another program" if none can be seen."""
    for pid in procfs.holders_of({f"socket:[{inode}]" for inode in inodes}):
        name = procfs.comm(pid)
        if name is not None:
            return f"{name} (pid {pid})"
    return "another program"
