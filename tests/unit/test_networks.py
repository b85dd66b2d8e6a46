"""Virtual networks' pure parts: which network a NIC asks for, the firewall table's text, DHCP pools, forwards."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from minivisor.datastore.catalog import Catalog, NetworkEntry
from minivisor.errors import ArgumentError, ConflictError
from minivisor.net import addressing, dhcp, firewall
from minivisor.net.forwards import parse_forward, parse_host_side
from minivisor.net.names import tap_name, wanted_network
from minivisor.spec.vmspec import Nic, VmSpec
from minivisor.spec.vmx import VmxDocument
from minivisor.vmm.argv import HostForward, Tap, UserNat
from minivisor.vmm.plan import HostNetworks, _network

UUID = "564d8c48-1de9-5312-9e23-96ef90e27a17"


def nic(keys: str):
    (found,) = VmSpec.from_vmx(VmxDocument.parse(f'ethernet0.present = "TRUE"\n{keys}'.encode())).nics
    return found


@pytest.mark.parametrize("keys, network", [
    ('ethernet0.connectionType = "nat"\n', "nat"),
    ('ethernet0.connectionType = "hostonly"\n', "hostonly"),
    ("", "bridged"),  # VMware's default when connectionType is absent
    ('ethernet0.connectionType = "custom"\nethernet0.vnet = "VMnet8"\n', "nat"),
    ('ethernet0.connectionType = "custom"\nethernet0.vnet = "/dev/vmnet1"\n', "hostonly"),
    ('ethernet0.connectionType = "custom"\nethernet0.vnet = "VMnet5"\n', "vmnet5"),
    ('ethernet0.networkName = "PAULO"\n', "PAULO"),  # the lecture's specfile (ESXi port group)
    ('ethernet0.connectionType = "nat"\nethernet0.networkName = "lab"\n', "lab"),
    ('ethernet0.connectionType = "pvn"\n', None), ('ethernet0.connectionType = "custom"\n', None),
])
def test_a_nic_asks_for_the_network_vmware_would_give_it(keys, network):
    assert wanted_network(nic(keys)) == network


NETWORKS = HostNetworks({"nat": NetworkEntry("nat", "nat", None, True, ""),
                         "paulo": NetworkEntry("PAULO", "isolated", "192.168.9.0/24", True, "mvbr1"),
                         "lan": NetworkEntry("lan", "bridged", None, False, "br0", "br0")})


@pytest.mark.parametrize("keys, backend, warned", [
    ('ethernet0.networkName = "paulo"\n', Tap(tap_name(UUID, 0), "PAULO"), None),
    ('ethernet0.connectionType = "nat"\n', Tap(tap_name(UUID, 0), "nat"), None),
    ("", Tap(tap_name(UUID, 0), "lan"), None),  # bridged: the network made with --bridge
    ('ethernet0.networkName = "a,b=c"\n', "unconnected", "network 'a,b=c' does not exist (a network name is"),
    ('ethernet0.networkName = "other"\n', "unconnected", "create it with: minivisor net create other"),
    ('ethernet0.connectionType = "nat"\nethernet0.startConnected = "FALSE"\n', "unconnected", "startConnected"),
    ('ethernet0.connectionType = "none"\n', "unconnected", None),
])
def test_a_nic_gets_a_tap_on_its_network_or_a_link_down_with_a_warning(keys, backend, warned):
    warnings: list[str] = []
    assert _network(nic(keys), UUID, NETWORKS, warnings) == backend
    assert (warned is None and not warnings) or (warned and warned in warnings[0] and "disconnected" in warnings[0])


def test_without_host_networks_nat_is_user_mode_and_others_are_disconnected():
    host = HostNetworks(None, "not root")
    warnings: list[str] = []
    assert _network(nic('ethernet0.connectionType = "nat"\n'), UUID, host, warnings) == UserNat()
    assert _network(nic('ethernet0.networkName = "PAULO"\n'), UUID, host, warnings) == "unconnected"
    assert "needs bridges and taps, which this host cannot make (not root)" in warnings[0]


def test_user_mode_nat_carries_the_vms_port_forwards_to_that_nic():
    forward = HostForward("tcp", "127.0.0.1", 8080, 80)
    host = HostNetworks(None, "not root", {1: (forward,)})
    assert _network(nic('ethernet0.connectionType = "nat"\n'), UUID, host, []) == UserNat()
    second = Nic(1, "vmxnet3", None, "nat", None)
    assert _network(second, UUID, host, []) == UserNat((forward,))


def test_taps_are_short_stable_and_distinct_per_nic():
    names = {tap_name(UUID, index) for index in range(10)}
    assert len(names) == 10 and all(len(name) <= 15 and name.startswith("mvt") for name in names)
    assert tap_name(UUID, 3) == tap_name(UUID, 3)


def test_the_firewall_table_masquerades_nat_isolates_switches_and_forwards_ports():
    nat = firewall.Switch("mvbr0", "nat", ipaddress.IPv4Network("192.168.61.0/24"))
    iso = firewall.Switch("mvbr1", "isolated", ipaddress.IPv4Network("192.168.62.0/24"))
    forward = firewall.Forward("tcp", "127.0.0.1", 8080, "192.168.61.2", 80, "mvbr0")
    text = firewall.ruleset([nat, iso], [forward], "/ds")
    assert text.startswith("table inet minivisor\ndelete table inet minivisor\ntable inet minivisor {")
    assert 'comment "minivisor: /ds"' in text
    assert "ip saddr 192.168.61.0/24 ip daddr != 192.168.61.0/24 masquerade" in text
    assert "192.168.62.0/24 ip daddr" not in text  # an isolated network is not masqueraded...
    assert 'oifname "mvbr1" drop' in text  # ...nor routed: in, nor out, first of all (before DNATed traffic's accept)
    forwarding = text[text.index("chain forward"):].splitlines()
    assert forwarding[2].strip() == 'iifname "mvbr1" oifname != "mvbr1" drop'
    assert text.count("ip daddr 127.0.0.1 fib daddr type local tcp dport 8080 dnat ip to 192.168.61.2:80") == 2
    for bridge in ("mvbr0", "mvbr1"):  # route_localnet is for the host's own packets, not the guests'
        assert f'iifname "{bridge}" ip daddr 127.0.0.0/8 drop' in text
        assert f'iifname "{bridge}" ip saddr 127.0.0.0/8 drop' in text
    assert 'oifname "mvbr0" ip saddr 127.0.0.0/8 masquerade' in text


def test_no_networks_means_no_table():
    assert firewall.ruleset([], [], "/ds") == "table inet minivisor\ndelete table inet minivisor\n"


def test_a_name_with_a_quote_cannot_leave_the_string_it_is_in():
    text = firewall.ruleset([firewall.Switch('x"; flush ruleset; "', "nat", ipaddress.IPv4Network("10.1.0.0/24"))],
                            [], '/ds"\nflush ruleset')
    assert "flush ruleset" not in text.replace('"x; flush ruleset; "', "").replace('/dsflush ruleset"', "")


def test_reservations_and_dynamic_addresses_share_the_subnet_without_overlap():
    subnet = ipaddress.IPv4Network("192.168.61.0/24")
    start, end = addressing.dynamic_range(subnet)
    first = addressing.next_reserved(subnet, set())
    assert (first, str(start), str(end)) == ("192.168.61.2", "192.168.61.129", "192.168.61.254")
    assert addressing.next_reserved(subnet, {"192.168.61.2"}) == "192.168.61.3"
    with pytest.raises(ArgumentError):
        addressing.check_reservable(subnet, "192.168.61.1")  # the host's
    config = dhcp.config_text(dhcp.DhcpFiles(Path("/r")),
                              "mvbr0", subnet, router=False)
    assert "interface=mvbr0\nbind-interfaces" in config and "dhcp-option=option:router\n" in config


@pytest.mark.parametrize("subnet", ["0.0.0.0/24", "0.1.0.0/16", "240.0.0.0/24", "255.255.255.0/28", "192.0.2.0/24",
                                    "198.18.0.0/24", "100.64.0.0/24", "169.254.0.0/16", "127.0.0.0/24", "8.8.8.0/24"])
def test_a_subnet_outside_the_private_blocks_the_refusal_names_is_refused(subnet):
    # Python's is_private took 0.0.0.0/8, 240.0.0.0/4 and the documentation blocks: networks were made there
    with pytest.raises(ArgumentError, match="is not a private network"):
        addressing.parse_subnet(subnet)


@pytest.mark.parametrize("subnet", ["10.0.0.0/16", "10.255.255.240/28", "172.16.0.0/16", "172.31.255.0/24",
                                    "192.168.0.0/16", "192.168.254.0/24"])
def test_a_subnet_in_a_private_block_is_taken(subnet):
    assert str(addressing.parse_subnet(subnet)) == subnet


@pytest.mark.parametrize("text, parsed", [
    ("8080:80", ("tcp", "127.0.0.1", 8080, 80)), ("0.0.0.0:2222:22", ("tcp", "0.0.0.0", 2222, 22)),
    ("5353:53/udp", ("udp", "127.0.0.1", 5353, 53))])
def test_port_forwards_as_users_write_them(text, parsed):
    spec = parse_forward(text)
    assert (spec.protocol, spec.host_addr, spec.host_port, spec.guest_port) == parsed


@pytest.mark.parametrize("text, side", [("8080", ("tcp", "127.0.0.1", 8080)), ("0.0.0.0:2222", ("tcp", "0.0.0.0", 2222)),
                                        ("5353/udp", ("udp", "127.0.0.1", 5353)), ("8080:80", ("tcp", "127.0.0.1", 8080))])
def test_a_forward_is_removed_by_its_host_side(text, side):
    assert parse_host_side(text) == side


def test_a_bridge_another_network_has_is_refused_as_such_not_as_a_name_taken(tmp_path):
    catalog = Catalog(tmp_path / "catalog.sqlite")
    try:
        catalog.add_network(NetworkEntry("nat", "nat", "192.168.100.1/24", True, "mvbr0"))
        with pytest.raises(ConflictError, match="the bridge 'mvbr0' is already another network's switch"):
            catalog.add_network(NetworkEntry("other", "nat", "192.168.101.1/24", True, "mvbr0"))
        with pytest.raises(ConflictError, match="a network named 'NAT' already exists"):
            catalog.add_network(NetworkEntry("NAT", "nat", "192.168.102.1/24", True, "mvbr1"))
    finally:
        catalog.close()
