"""IPv4 addressing of a network: its subnet, the host's address on it, the DHCP pools.

The host takes the subnet's first address (the guests' gateway and DNS server).
The lower half of the rest is for reservations (one per NIC, kept across power
cycles), the upper half dnsmasq hands out to MACs it has no reservation for.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from ..errors import ArgumentError, ConflictError, HostError
from ..text import excerpt

__all__ = ["parse_subnet", "host_interface", "free_subnet", "dynamic_range", "next_reserved", "check_reservable",
           "MIN_PREFIX", "MAX_PREFIX"]

# RFC 1918's blocks, as the refusal's hint names them. Not ``is_private``: Python counts 0.0.0.0/8 ("this
# network": no source a kernel routes), 240.0.0.0/4 (reserved), 255.255.255.255 and the documentation and
# benchmarking blocks as private, and a network there was made, its guests unreachable or colliding.
_PRIVATE_BLOCKS = tuple(ipaddress.IPv4Network(block) for block in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
MIN_PREFIX, MAX_PREFIX = 16, 28  # a /16 holds every VM a host runs; a /28 still has 6 reservations
# Where `net create` looks for a free /24 when no --subnet is given (VMware picks in 192.168.0.0/16 too).
_CANDIDATES = [ipaddress.IPv4Network(f"192.168.{third}.0/24") for third in range(100, 255)]


def parse_subnet(text: str) -> ipaddress.IPv4Network:
    """A private IPv4 network from ``192.168.50.0/24`` (host bits must be zero), or ArgumentError."""
    try:
        network = ipaddress.IPv4Network(text.strip(), strict=True)
    except ValueError as exc:
        raise ArgumentError(f"{excerpt(text)} is not an IPv4 subnet: {exc}",
                            hint="write it as ADDRESS/PREFIX with zero host bits, e.g. 192.168.50.0/24") from None
    if not MIN_PREFIX <= network.prefixlen <= MAX_PREFIX:
        raise ArgumentError(f"subnet {network} is a /{network.prefixlen}",
                            hint=f"give a /{MIN_PREFIX} to a /{MAX_PREFIX}")
    if not any(network.subnet_of(block) for block in _PRIVATE_BLOCKS):
        raise ArgumentError(f"subnet {network} is not a private network",
                            hint="use one of 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16")
    return network


def host_interface(network: ipaddress.IPv4Network) -> ipaddress.IPv4Interface:
    """The host's address on the network: its first address."""
    return ipaddress.IPv4Interface(f"{network.network_address + 1}/{network.prefixlen}")


def free_subnet(in_use: Iterable[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """The first candidate /24 that overlaps no route, address or network of the host."""
    used = list(in_use)
    for candidate in _CANDIDATES:
        if not any(candidate.overlaps(other) for other in used):
            return candidate
    raise HostError("no free /24 is left in 192.168.100.0-192.168.254.0 on this host",
                    hint="name a subnet with --subnet")


def _halves(network: ipaddress.IPv4Network) -> tuple[int, int, int]:
    """First host address after the gateway, the last reservable one, the last host address (as integers)."""
    first = int(network.network_address) + 2
    last = int(network.broadcast_address) - 1
    return first, first + (last - first) // 2, last


def dynamic_range(network: ipaddress.IPv4Network) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
    """The addresses dnsmasq gives to MACs without a reservation: the upper half."""
    _, reserved_end, last = _halves(network)
    return ipaddress.IPv4Address(reserved_end + 1), ipaddress.IPv4Address(last)


def next_reserved(network: ipaddress.IPv4Network, taken: set[str]) -> str:
    """The first address of the lower half no reservation has."""
    first, reserved_end, _ = _halves(network)
    for number in range(first, reserved_end + 1):
        address = str(ipaddress.IPv4Address(number))
        if address not in taken:
            return address
    raise ConflictError(f"every reservable address of {network} is taken",
                        hint="delete VMs on it, or make a network with a larger subnet")


def check_reservable(network: ipaddress.IPv4Network, text: str) -> str:
    """An address a NIC may reserve on the network: inside it, not the host's, not network or broadcast."""
    try:
        address = ipaddress.IPv4Address(text.strip())
    except ValueError:
        raise ArgumentError(f"{excerpt(text)} is not an IPv4 address", hint="write it as e.g. 192.168.100.10") from None
    if address not in network or address in (network.network_address, network.broadcast_address,
                                             host_interface(network).ip):
        raise ArgumentError(f"{address} is not a guest address of {network}",
                            hint=f"choose one from {network.network_address + 2} to {network.broadcast_address - 1}")
    return str(address)
