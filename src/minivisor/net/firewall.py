"""The one nftables table minivisor owns, ``inet minivisor``, built from scratch and loaded in one transaction.

:func:`ruleset` writes the whole table from what should exist (pure, so it is
tested on its text); :func:`load` replaces the table atomically (``nft -f``: add,
delete, define, in one transaction), so there is never a moment with half the
rules, and nothing outside this table is touched: the host's own rules stay as
they were. The table's comment names the datastore it belongs to.

- NAT networks: their guests' traffic leaving the host is masqueraded; from
  outside only replies and port forwards get in.
- Isolated networks: nothing is routed in or out (the host itself is reachable, host-only), port
  forwards to other networks' guests included (the host's address on the isolated bridge is one of
  its addresses, where a ``0.0.0.0`` forward answers).
- No network reaches another through the host.
- Port forwards: DNAT of ``ADDR:PORT`` (``0.0.0.0``: any address of the host) to
  the guest, for traffic arriving and traffic from the host itself, and only for
  addresses of the host (never traffic passing through to another machine); from
  loopback, the source becomes the host's address on the network (the bridge
  has ``route_localnet`` so such packets may leave it).
- ``route_localnet`` would also let a guest reach the host's loopback services
  (the REST service, loopback port forwards of other networks) by sending to
  127.0.0.1 through its gateway (CVE-2020-8558 in Kubernetes): packets from a
  bridge to or from 127.0.0.0/8 are dropped before routing.
"""

from __future__ import annotations

import ipaddress

from ..records import Record
from .host import run

__all__ = ["TABLE", "Switch", "Forward", "ruleset", "load", "owner", "quote"]

TABLE = "inet minivisor"


class Switch(Record, frozen=True):
    """A network as the firewall sees it."""

    bridge: str
    mode: str  # nat, isolated, bridged
    subnet: ipaddress.IPv4Network | None


class Forward(Record, frozen=True):
    """A port forward to an address on a switch."""

    protocol: str  # tcp, udp
    host_addr: str
    host_port: int
    guest_addr: str
    guest_port: int
    bridge: str


def ruleset(switches: list[Switch], forwards: list[Forward], owner: str) -> str:
    """The ``nft -f`` input that replaces the table with exactly these networks and forwards."""
    head = f"table {TABLE}\ndelete table {TABLE}\n"  # the add makes the delete safe when there is no table
    routed = [s for s in switches if s.mode != "bridged" and s.subnet is not None]
    if not routed and not forwards:
        return head
    dnat = [_dnat(f) for f in forwards]
    chains = {
        "guard": ("type filter hook prerouting priority raw; policy accept;", _loopback_guard(routed)),
        "prerouting": ("type nat hook prerouting priority dstnat; policy accept;", dnat),
        "output": ("type nat hook output priority -100; policy accept;", dnat),
        "postrouting": ("type nat hook postrouting priority srcnat; policy accept;", _source_nat(routed, forwards)),
        "forward": ("type filter hook forward priority filter; policy accept;", _forwarding(routed)),
    }
    body = [f"table {TABLE} {{", f"\tcomment {quote(f'minivisor: {owner}')}"]
    for name, (hook, rules) in chains.items():
        body += [f"\tchain {name} {{", f"\t\t{hook}", *(f"\t\t{rule}" for rule in rules), "\t}"]
    return head + "\n".join(body) + "\n}\n"


def _loopback_guard(routed: list[Switch]) -> list[str]:
    """No packet from a guest to or from 127.0.0.0/8: the bridges' ``route_localnet`` is for the host's own."""
    return [f"iifname {quote(s.bridge)} ip {side} 127.0.0.0/8 drop" for s in routed for side in ("daddr", "saddr")]


def _dnat(forward: Forward) -> str:
    address = "" if forward.host_addr == "0.0.0.0" else f"ip daddr {forward.host_addr} "
    return (f"{address}fib daddr type local {forward.protocol} dport {forward.host_port} "
            f"dnat ip to {forward.guest_addr}:{forward.guest_port}")


def _source_nat(routed: list[Switch], forwards: list[Forward]) -> list[str]:
    rules = [f"ip saddr {s.subnet} ip daddr != {s.subnet} masquerade" for s in routed if s.mode == "nat"]
    for bridge in sorted({f.bridge for f in forwards}):
        rules.append(f"oifname {quote(bridge)} ip saddr 127.0.0.0/8 masquerade")
    return rules


def _forwarding(routed: list[Switch]) -> list[str]:
    # An isolated network routes nowhere, first: a port forward's DNAT must not carry its guests to another
    # network (the accept of DNATed traffic below would, were this rule after it).
    rules = [f"iifname {quote(s.bridge)} oifname != {quote(s.bridge)} drop" for s in routed if s.mode != "nat"]
    for switch in routed:
        bridge = quote(switch.bridge)
        rules += [f"iifname {bridge} oifname {bridge} accept", f"oifname {bridge} ct status dnat accept"]
        if switch.mode == "nat":
            rules.append(f"oifname {bridge} ct state established,related accept")
        rules.append(f"oifname {bridge} drop")  # nothing else in: not from outside, not from another network
    return rules


def quote(text: str) -> str:
    """A string for nft: our own names and paths; quotes and backslashes cannot be escaped, so they are dropped."""
    return '"' + "".join(c for c in text if c not in '"\\\n') + '"'


def load(text: str) -> None:
    """Replace the table in one transaction (with :mod:`.antispoof`'s table too, when ``text`` holds both)."""
    run(["nft", "-f", "-"], "load minivisor's nftables tables", stdin=text.encode())


def owner() -> str | None:
    """The datastore the table says it belongs to, or None if there is no table."""
    text = run(["nft", "list", "table", *TABLE.split()], "read minivisor's nftables table", check=False)
    for line in text.splitlines():
        line = line.strip()
        if line.startswith('comment "minivisor: '):
            return line[len('comment "minivisor: '):-1]
    return None
