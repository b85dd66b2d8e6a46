"""Networks refused as an attacker would try them: one line, a non-zero exit, nothing half-made on the host.

Each runs minivisor inside a network namespace of its own (no VM boots).
"""

from __future__ import annotations

import dataclasses
import subprocess

import pytest


def refused(lab, *args: str, code: int) -> str:
    done = lab.mv(*args, check=False)
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def state(lab) -> tuple:
    """What minivisor has on the host and in the catalog."""
    return sorted(lab.minivisor_leftovers()), lab.mv("net", "list", "--json").stdout


@pytest.mark.parametrize("name", ["a,b", "a b", "../x", "x" * 33, "eth0;reboot", "a\nb", ""])
def test_a_network_name_that_could_reach_a_file_a_rule_or_an_option_is_refused(lab, name):
    before = state(lab)
    assert "is not a valid network name" in refused(lab, "net", "create", name, code=2)
    assert state(lab) == before


@pytest.mark.parametrize("subnet, why", [("10.0.0.0/8", "is a /8"), ("192.168.1.7/24", "not an IPv4 subnet"),
                                         ("8.8.8.0/24", "not a private network"), ("10.99.0.0/24", "overlaps"),
                                         ("192.168.0.0/24,x", "not an IPv4 subnet")])
def test_a_subnet_that_is_too_big_public_malformed_or_the_hosts_own_is_refused(lab, subnet, why):
    before = state(lab)
    assert why in refused(lab, "net", "create", "n1", "--subnet", subnet, code=2 if "overlaps" not in why else 4)
    assert state(lab) == before


def test_bridging_an_interface_that_does_not_exist_or_is_no_name_is_refused(lab):
    before = state(lab)
    assert "no network interface 'nope0'" in refused(lab, "net", "create", "lan", "--bridge", "nope0", code=3)
    assert "not a network interface name" in refused(lab, "net", "create", "lan", "--bridge", "eth0,x", code=2)
    # the veth to the upstream namespace has the host's address: bridging it would cut the host off
    assert "has IP addresses" in refused(lab, "net", "create", "lan", "--bridge", "up0", code=4)
    assert state(lab) == before


def test_a_second_network_of_the_same_name_leaves_the_first_as_it_was(lab):
    lab.mv("net", "create", "one", "--subnet", "192.168.77.0/24")
    before = state(lab)
    assert "already exists" in refused(lab, "net", "create", "ONE", code=4)
    assert state(lab) == before
    lab.mv("net", "delete", "one")
    assert lab.minivisor_leftovers() == []


def test_a_network_is_made_of_a_bridge_dnsmasq_and_the_table_and_deleting_it_leaves_nothing(lab):
    info = lab.mv_json("net", "create", "lan", "--subnet", "192.168.77.0/24")
    assert info["state"] == "active" and info["gateway"] == "192.168.77.1" and info["dhcp_pid"]
    assert "192.168.77.1/24" in lab.sh(f"ip -4 -o addr show dev {info['bridge']}")
    rules = lab.sh("nft list table inet minivisor")
    assert "ip saddr 192.168.77.0/24 ip daddr != 192.168.77.0/24 masquerade" in rules
    lab.mv("net", "delete", "lan")
    assert lab.minivisor_leftovers() == []


def test_host_rules_outside_minivisors_table_are_left_as_they_were(lab):
    lab.sh("nft add table ip hosts_own; nft add chain ip hosts_own input '{ type filter hook input priority 0; }'; "
           "nft add rule ip hosts_own input tcp dport 9 drop")
    before = lab.sh("nft list table ip hosts_own")
    lab.mv("net", "create", "lan")
    lab.mv("net", "create", "iso", "--isolated")
    lab.mv("net", "delete", "lan")
    lab.mv("net", "delete", "iso")
    assert lab.sh("nft list table ip hosts_own") == before
    assert lab.minivisor_leftovers() == []


@pytest.mark.parametrize("forward, why", [
    ("8080:80,x", "is not a port forward"), ("99999:80", "is not a port (1-65535)"),
    ("1.2.3:80:80", "is not a port forward"), ("300.1.1.1:80:80", "is not an IPv4 address"),
    ("224.0.0.1:80:80", "is not an address of this host"), ("80", "is not a port forward"),
    ("8.8.8.8:53:53/udp", "is not an address of this host"),  # would divert guests' DNS meant for another host
    ("8080:80/sctp", "is not a port forward"), ("0:80", "is not a port (1-65535)")])
def test_a_malformed_port_forward_is_refused_and_nothing_is_kept(lab, forward, why):
    lab.mv("vm", "create", "web", "--network", "nat", "--disk-size", "16M")
    assert why in refused(lab, "vm", "port-forward", "web", "add", forward, code=2)
    assert lab.mv_json("vm", "port-forward", "web", "list") == []


def test_a_port_the_host_already_serves_is_refused_naming_its_user(lab):
    lab.mv("vm", "create", "web", "--network", "nat", "--disk-size", "16M")
    listener = subprocess.Popen(["ip", "netns", "exec", lab.host, "python3", "-c",
                                 "import socket, sys, time; s = socket.socket(); s.bind(('0.0.0.0', 80)); s.listen();"
                                 " print('ok', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline().strip() == "ok"
        line = refused(lab, "vm", "port-forward", "web", "add", "80:80", code=4)
        assert "127.0.0.1:80/tcp of this host is taken by python3" in line and f"pid {listener.pid}" not in line[:8]
        assert lab.mv_json("vm", "port-forward", "web", "list") == []
    finally:
        listener.kill()
        listener.wait()


def test_a_port_another_vm_forwards_is_refused_naming_that_vm(lab):
    for name in ("web", "db"):
        lab.mv("vm", "create", name, "--network", "nat", "--disk-size", "16M")
    lab.mv("vm", "port-forward", "web", "add", "0.0.0.0:8080:80")
    line = refused(lab, "vm", "port-forward", "db", "add", "8080:5432", code=4)
    assert "already forwarded to VM 'web'" in line
    assert lab.mv_json("vm", "port-forward", "db", "list") == []
    lab.mv("vm", "port-forward", "web", "remove", "0.0.0.0:8080")
    lab.mv("vm", "port-forward", "db", "add", "8080:5432")
    assert [f["host_port"] for f in lab.mv_json("vm", "port-forward", "db", "list")] == [8080]


def test_a_network_whose_dnsmasq_cannot_be_set_up_is_not_kept(lab):
    from minivisor.net.dhcp import dhcp_files
    runtime = dhcp_files(lab.datastore / ".minivisor", "lan").runtime
    runtime.parent.mkdir(mode=0o755, exist_ok=True)
    runtime.write_text("not a folder: dnsmasq's files cannot go here\n")  # as a stale or hostile leftover would
    try:
        before = state(lab)
        line = refused(lab, "net", "create", "lan", "--subnet", "192.168.77.0/24", code=69)
        assert "dnsmasq" in line and "internal error" not in line
        assert state(lab) == before  # no row in the catalog, no bridge on the host
    finally:
        runtime.unlink()


@pytest.mark.qemu
def test_a_vm_without_taps_stops_while_another_datastores_networks_own_the_host(lab, tmp_path):
    """One datastore's networks per host: another datastore's VM with no NIC on them still powers off."""
    lab.mv("net", "create", "A", "--subnet", "192.168.71.0/24")
    before = state(lab)
    other = dataclasses.replace(lab, datastore=tmp_path / "other")
    other.mv("vm", "create", "plain", "--memory", "64", "--disk-size", "16M", "--network", "none")
    other.mv("vm", "start", "plain")
    stopped = other.mv("vm", "stop", "plain", "--hard", check=False)
    assert stopped.returncode == 0, stopped.stderr
    assert other.mv_json("vm", "show", "plain")["state"] == "poweredOff"
    assert state(lab) == before  # the owner's network is as it was
