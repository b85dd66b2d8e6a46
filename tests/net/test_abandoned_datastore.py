"""A datastore deleted by hand leaves its networks on the host (bridges, dnsmasq, the nftables table): the next
datastore to make networks there removes them first, and only them.

Runs minivisor inside a network namespace of its own (no VM boots).
"""

from __future__ import annotations

import dataclasses
import json
import shutil

from minivisor.net.dhcp import datastore_dhcp_files


def _bridges(lab) -> dict[str, str]:
    """minivisor's bridges in the lab's host namespace, by name: their IPv4 addresses."""
    links = json.loads(lab.sh("ip -j addr show type bridge"))
    return {link["ifname"]: " ".join(a["local"] for a in link.get("addr_info", []) if a["family"] == "inet")
            for link in links}


def test_the_networks_of_a_datastore_deleted_by_hand_are_removed_when_another_makes_its_own(lab, tmp_path):
    lab.mv("net", "create", "old", "--subnet", "192.168.71.0/24")
    lab.sh("ip link add keep0 type bridge")  # the user's own bridge: never minivisor's to delete
    assert "192.168.71.1" in _bridges(lab).values()
    abandoned = datastore_dhcp_files(lab.datastore / ".minivisor")
    assert len(abandoned) == 1 and abandoned[0].pid_file.exists()
    shutil.rmtree(lab.datastore)  # deleted by hand, networks still up

    other = dataclasses.replace(lab, datastore=tmp_path / "other")
    other.mv("net", "create", "new", "--subnet", "192.168.72.0/24")

    bridges = _bridges(lab)
    assert "192.168.71.1" not in bridges.values() and "192.168.72.1" in bridges.values(), bridges
    assert "keep0" in bridges
    assert not abandoned[0].runtime.exists()
    dnsmasqs = [line for line in lab.minivisor_leftovers() if line.startswith("dnsmasq")]
    assert len(dnsmasqs) == 1, dnsmasqs  # the new network's alone
    other.mv("net", "delete", "new")
    assert lab.minivisor_leftovers() == []
