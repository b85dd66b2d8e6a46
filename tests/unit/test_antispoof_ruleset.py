"""The taps' guard (``bridge minivisor``): its text for given bridges and taps, and what it refuses to write."""

from __future__ import annotations

import pytest

from minivisor.errors import ArgumentError, NetworkError
from minivisor.net import antispoof

A = antispoof.Port("mvt0123456789a0", "00:0c:29:aa:bb:01")
B = antispoof.Port("mvt0123456789b0", "00:0c:29:aa:bb:02")


def hook_rules(text: str) -> list[str]:
    """The rules of the chain on the bridges' prerouting hook."""
    lines = text.split("\tchain prerouting {\n", 1)[1].split("\t}", 1)[0].splitlines()
    return [line.strip() for line in lines if not line.strip().startswith("type ")]


def chain_of(text: str, tap: str) -> list[str]:
    """The rules of the chain the prerouting hook sends ``tap``'s frames to."""
    (jump,) = [rule for rule in hook_rules(text) if rule.startswith(f'iifname "{tap}" jump ')]
    lines = text.split(f"\tchain {jump.rsplit(' ', 1)[1]} {{\n", 1)[1].split("\t}", 1)[0].splitlines()
    return [line.strip() for line in lines]


def test_each_tap_sends_frames_arp_and_dhcp_requests_only_as_its_own_mac():
    text = antispoof.ruleset([B, A], "/ds")
    assert text.startswith("table bridge minivisor\ndelete table bridge minivisor\ntable bridge minivisor {")
    assert 'comment "minivisor: /ds"' in text
    assert "\t\ttype filter hook prerouting priority filter; policy accept;\n" in text
    for port, hex_mac in ((A, "0x000c29aabb01"), (B, "0x000c29aabb02")):
        assert chain_of(text, port.tap) == [
            f"ether saddr != {port.mac} drop",
            "meta protocol { vlan, 8021ad } drop",  # two VLAN tags: the kernel takes one off, the rules see past it
            f"meta protocol arp arp saddr ether != {port.mac} drop",  # its protocol: tagged or not
            "udp dport 67 ip frag-off & 0x3fff != 0 drop",  # a first fragment may end before chaddr
            f"udp dport 67 @th,288,48 != {hex_mac} drop",  # chaddr: bit 288 = 8 (UDP header) + 28 bytes in
            "accept",
        ]


@pytest.mark.parametrize("dhcp_by_host, routed_by_host, extra", [
    (True, True, ["udp sport 67 drop", "meta protocol ip6 icmpv6 type nd-router-advert drop", "udp sport 547 drop"]),  # nat
    (True, False, ["udp sport 67 drop"]),  # isolated with the host's DHCP
    (False, False, []),  # isolated without it: a router VM of the user's serves there
])
def test_a_tap_answers_as_no_server_the_host_runs_for_its_network(dhcp_by_host, routed_by_host, extra):
    port = A.replace(dhcp_by_host=dhcp_by_host, routed_by_host=routed_by_host)
    rules = chain_of(antispoof.ruleset([port], "/ds"), A.tap)
    assert rules[5:] == [*extra, "accept"]  # after the MAC rules, before the rest is accepted


def test_the_hook_sends_each_tap_to_its_own_chain_and_names_no_other_interface():
    assert hook_rules(antispoof.ruleset([B, A], "/ds")) == [f'iifname "{A.tap}" jump port0',
                                                            f'iifname "{B.tap}" jump port1']


def test_no_taps_means_no_table():
    assert antispoof.ruleset([], "/ds") == "table bridge minivisor\ndelete table bridge minivisor\n"


def test_a_mac_is_written_in_one_form_and_a_bad_one_is_refused():
    text = antispoof.ruleset([A.replace(mac="00-0C-29-AA-BB-01")], "/ds")
    assert "ether saddr != 00:0c:29:aa:bb:01 drop" in text
    with pytest.raises(NetworkError, match="which is not a MAC"):
        antispoof.ruleset([A.replace(mac="00:0c:29:aa:bb:01 drop; flush ruleset")], "/ds")


def test_nothing_but_an_interface_name_becomes_a_tap_name_and_the_owner_stays_a_string():
    with pytest.raises(ArgumentError):
        antispoof.ruleset([A.replace(tap='x" accept; flush ruleset; "')], "/ds")
    text = antispoof.ruleset([A], '/ds"\nflush ruleset')
    assert "flush ruleset" not in text.replace('/dsflush ruleset"', "")
