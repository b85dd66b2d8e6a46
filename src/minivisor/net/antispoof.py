"""A guest speaks on its switch only as its own NIC: the nftables table ``bridge minivisor``.

What libvirt's ``clean-traffic`` filter does at the MAC level, for every tap on a
``nat`` or ``isolated`` network, on frames as they enter the bridge from the tap
(the bridge's prerouting hook: before the bridge learns the source MAC and before
dnsmasq or the host's stack see anything):

- the Ethernet source is the NIC's MAC (else a guest takes another VM's traffic:
  the bridge would learn the victim's MAC on the attacker's port);
- an ARP sender hardware address is the NIC's MAC;
- a VLAN-tagged frame is held to the same rules (one tag; a frame with two is dropped);
- a DHCP request (UDP to port 67) has the NIC's MAC as ``chaddr`` (else a guest
  takes the address dnsmasq reserves for another VM's MAC), and is not fragmented
  (the first fragment could end before ``chaddr``, and the host reassembles).

And a guest does not answer as the network's servers, as OpenStack's port security drops it from
instances: no DHCP server messages (UDP from port 67) where the host's dnsmasq serves DHCP, and no
IPv6 router advertisement or DHCPv6 server message (UDP from port 547) where the host is the router
(``nat``): a rogue server or router would give the other guests its own gateway and DNS. A router
VM of the user's belongs on an ``isolated`` network without minivisor's DHCP, where both pass.

Addresses are not checked (no IPv4 or ARP sender-address rule): the address a
guest holds is its reservation in the usual case, but not always (a reservation
changed while the guest runs is taken at its next renewal; a network without
DHCP has the addresses its guests set), so such a rule would cut legitimate guests off.

Taps of a ``bridged`` network are not looked at: the LAN's own rules apply
there. A tap is in the table before its guest can send: taps are plugged, and
the table loaded, before the VMM starts or the NIC is hot-plugged (a tap the
table does not name is not dropped by a catch-all rule: matching minivisor's
taps by name prefix would touch a user's interface of that name, and matching
the bridge, ``meta ibrname``, needs a kernel module hosts may lack). Like
:mod:`.firewall`'s table, this one is written whole from what should exist
(:func:`ruleset`, pure) and replaced in one transaction; it exists while a
guarded tap does, and nothing outside it is touched.
"""

from __future__ import annotations

from ..records import Record
from .firewall import quote
from .names import check_interface_name, checked_mac

__all__ = ["TABLE", "Port", "ruleset"]

TABLE = "bridge minivisor"
_DHCP_SERVER_PORT = 67
_DHCPV6_SERVER_PORT = 547
_CHADDR_BITS = (8 + 28) * 8  # chaddr: 28 bytes into the DHCP message, after the 8-byte UDP header


class Port(Record, frozen=True):
    """A VM NIC's tap on a guarded bridge, as the guard sees it."""

    tap: str
    mac: str  # the NIC's, from its specfile (read back from the tap's alias)
    dhcp_by_host: bool = False  # the network's DHCP is the host's dnsmasq: the guest answers none
    routed_by_host: bool = False  # the host is the network's router (nat): the guest advertises no route


def ruleset(ports: list[Port], owner: str) -> str:
    """The ``nft -f`` input that replaces the table with exactly these taps' rules (no tap: no table)."""
    head = f"table {TABLE}\ndelete table {TABLE}\n"  # the add makes the delete safe when there is no table
    if not ports:
        return head
    dispatch, chains = [], []
    for number, port in enumerate(sorted(ports, key=lambda p: p.tap)):
        chain = f"port{number}"
        dispatch.append(f"iifname {quote(check_interface_name(port.tap))} jump {chain}")
        mac = checked_mac(port.mac, f"the tap {port.tap} is minivisor's for the MAC",
                          hint="power its VM off and on again: its tap is made anew")
        chains.append((chain, _port_rules(mac, port)))
    body = [f"table {TABLE} {{", f"\tcomment {quote(f'minivisor: {owner}')}",
            "\tchain prerouting {", "\t\ttype filter hook prerouting priority filter; policy accept;",
            *(f"\t\t{rule}" for rule in dispatch), "\t}"]
    for name, rules in chains:
        body += [f"\tchain {name} {{", *(f"\t\t{rule}" for rule in rules), "\t}"]
    return head + "\n".join(body) + "\n}\n"


def _port_rules(mac: str, port: Port) -> list[str]:
    """What one guarded tap may send: frames, ARP and DHCP requests as ``mac`` only, nothing as the network's DHCP
    server or router where the host is; then the rest is accepted."""
    rules = [
        f"ether saddr != {mac} drop",
        # The kernel takes a frame's (outer) VLAN tag off before the bridge: the rules below see into a tagged
        # frame as into an untagged one if they ask the packet's protocol (meta protocol), not the Ethernet
        # header (which nft shows as sent, tag and all). A frame still tagged after that (802.1ad + 802.1Q)
        # would hide its ARP and DHCP from them.
        "meta protocol { vlan, 8021ad } drop",
        f"meta protocol arp arp saddr ether != {mac} drop",
        f"udp dport {_DHCP_SERVER_PORT} ip frag-off & 0x3fff != 0 drop",
        f"udp dport {_DHCP_SERVER_PORT} @th,{_CHADDR_BITS},48 != 0x{mac.replace(':', '')} drop",
    ]
    if port.dhcp_by_host:
        rules.append(f"udp sport {_DHCP_SERVER_PORT} drop")
    if port.routed_by_host:
        rules += ["meta protocol ip6 icmpv6 type nd-router-advert drop", f"udp sport {_DHCPV6_SERVER_PORT} drop"]
    return [*rules, "accept"]
