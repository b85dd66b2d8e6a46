"""The lecture's specfile on its PAULO network, and a guest on a bridged network served by the LAN beyond
the bridge, seen from inside the guests. Each runs in network namespaces of the test's own."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from pathlib import Path

import pytest
from guests import guest_address

from minivisor import Hypervisor
from minivisor.images.layers import read_layer
from minivisor.images.qemu_img import convert_disk

pytestmark = pytest.mark.qemu

SEED = Path(__file__).resolve().parents[2] / "src/minivisor/cli/seed/CentOS7-Minimal64-1708.vmx"
LECTURE_VM = "CentOS7-Minimal64-1708"


def test_the_lectures_specfile_boots_on_its_paulo_network_with_its_link_up_and_an_address(lab, appliance_image):
    paulo = lab.mv_json("net", "create", "PAULO")
    folder = lab.datastore / "centos"
    folder.mkdir(mode=0o700)
    shutil.copy(SEED, folder / SEED.name)  # the lecture's file as it is: ethernet0.networkName = "PAULO"
    convert_disk((read_layer(appliance_image, "raw"),), folder / "CentOS7-Minimal64-1708-000002.vmdk", "vmdk")
    lab.mv("vm", "register", str(folder / SEED.name))
    started = lab.mv_json("vm", "start", LECTURE_VM, "--wait-ready")
    assert not [w for w in started["warnings"] if "ethernet0" in w]
    hv = Hypervisor(lab.datastore)
    seen = hv.exec_in_vm(LECTURE_VM, "cat /sys/class/net/eth0/address /sys/class/net/eth0/carrier").output.split()
    assert seen == ["00:50:56:aa:aa:aa", "1"]  # the specfile's MAC, link up
    address = guest_address(hv, LECTURE_VM)
    assert ipaddress.IPv4Address(address) in ipaddress.IPv4Network(paulo["subnet"])
    (nic,) = lab.mv_json("vm", "ip", LECTURE_VM)
    assert {k: nic[k] for k in ("nic", "mac", "network", "address", "lease")} == {
        "nic": "ethernet0", "mac": "00:50:56:aa:aa:aa", "network": "PAULO", "address": address, "lease": "leased"}
    assert nic["guest"] in (None, [f"{address}/{ipaddress.IPv4Network(paulo['subnet']).prefixlen}"])  # agent
    assert hv.exec_in_vm(LECTURE_VM, f"ping -c 1 -W 2 {paulo['gateway']}").exit_code == 0
    lab.mv("vm", "stop", LECTURE_VM, "--hard")
    lab.mv("net", "delete", "PAULO")
    assert lab.minivisor_leftovers() == []


def test_a_guest_on_a_bridged_network_gets_its_address_from_the_lan_beyond_the_bridge(lab, appliance_image, tmp_path):
    # The LAN: lan0 (no address) in the host namespace, its peer in the upstream one with a DHCP server.
    lab.sh(f"ip link add lan0 type veth peer name lan1 netns {lab.up} && ip link set lan0 up")
    lab.sh("ip addr add 10.77.0.1/24 dev lan1 && ip link set lan1 up", ns=lab.up)
    leases = tmp_path / "lan.leases"
    server = subprocess.Popen(["ip", "netns", "exec", lab.up, "dnsmasq", "--no-daemon", "--conf-file=/dev/null",
                               "--port=0", "--interface=lan1", "--bind-interfaces", "--user=root",
                               "--dhcp-range=10.77.0.50,10.77.0.59,255.255.255.0,1h", f"--dhcp-leasefile={leases}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lab.mv("datastore", "allow-path", str(appliance_image.parent))
        assert lab.mv_json("net", "create", "lan", "--bridge", "lan0")["uplink"] == "lan0"
        lab.mv("vm", "create", "b", "--memory", "96", "--boot-disk", str(appliance_image), "--network", "none")
        lab.mv("vm", "nic", "b", "ethernet0", "--add", "--model", "e1000", "--network", "bridged")
        assert 'ethernet0.connectionType = "bridged"' in (lab.datastore / "b" / "b.vmx").read_text()
        lab.mv("vm", "start", "b", "--wait-ready")
        hv = Hypervisor(lab.datastore)
        address = guest_address(hv, "b")
        assert ipaddress.IPv4Address(address) in ipaddress.IPv4Network("10.77.0.48/28")
        mac = lab.mv_json("vm", "show", "b")["nics"][0]["mac"]
        assert f"{mac} {address}" in leases.read_text()  # the LAN's server gave it, to the specfile's MAC
        assert hv.exec_in_vm("b", "ping -c 1 -W 2 10.77.0.1").exit_code == 0
        lab.mv("vm", "stop", "b", "--hard")
        lab.mv("net", "delete", "lan")
        assert lab.minivisor_leftovers() == []
        assert "master" not in lab.sh("ip -o link show lan0")  # the user's interface stays, off the bridge
    finally:
        server.terminate()
        server.wait()
