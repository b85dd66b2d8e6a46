"""Virtual networks seen from inside the guests (issue 9), three VMs booted once for the module.

In a network namespace of the module's own (see conftest): network ``A`` (NAT)
holds ``a1`` (virtio) and ``a2`` (e1000); ``m`` is on VMware's ``nat`` with one NIC
of every model (its other NICs on ``hostonly``). An httpd in the upstream
namespace stands for the outside world. The tests run in file order; the last
one powers everything off and deletes the networks, and checks nothing is left.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import subprocess
import time

import pytest
from guests import guest, guest_address, reaches
from netlab import HOST_ADDR, UP_ADDR

from minivisor import Hypervisor
from minivisor.spec.vmx import VmxDocument

pytestmark = pytest.mark.qemu

SUBNET = "192.168.61.0/24"  # network A

MODELS = {"ethernet0": ("vmxnet3", "vmxnet3"), "ethernet1": ("e1000", "e1000"), "ethernet2": ("e1000e", "e1000e"),
          "ethernet3": ("vlance", "pcnet32"), "ethernet4": ("virtio", "virtio_net")}  # NIC -> (virtualDev, driver)


@pytest.fixture(scope="module")
def net_lab(appliance_lab, appliance_image):
    lab = appliance_lab
    for name, model in (("a1", "virtio"), ("a2", "e1000")):
        lab.appliance_vm(name, appliance_image, "A", model)
    lab.appliance_vm("m", appliance_image, "nat", "vmxnet3", start=False)
    _add_nics(lab.datastore / "m" / "m.vmx")
    lab.mv("vm", "start", "m", "--wait-ready")
    return lab, Hypervisor(lab.datastore)


def _add_nics(vmx):
    """NICs 1-4 of every other model on hostonly, with no MAC: minivisor writes theirs at power-on."""
    doc = VmxDocument.load(vmx)
    for nic, (model, _) in MODELS.items():
        if nic != "ethernet0":
            for key, value in (("present", "TRUE"), ("virtualDev", model), ("connectionType", "hostonly")):
                doc.set(f"{nic}.{key}", value)
    doc.save(vmx)


def test_guests_on_a_network_get_the_addresses_reserved_for_them(net_lab):
    lab, hv = net_lab
    for vm in ("a1", "a2"):
        (nic,) = lab.mv_json("vm", "ip", vm)
        assert nic["network"] == "A" and nic["address"].startswith("192.168.61.")
        assert guest_address(hv, vm) == nic["address"]
        assert lab.mv_json("vm", "ip", vm)[0]["lease"] == "leased"
    assert {n["name"]: n["vms"] for n in lab.mv_json("net", "list")}["A"] == ["a1", "a2"]


def test_guests_on_one_network_reach_each_other(net_lab):
    lab, hv = net_lab
    assert reaches(hv, "a1", guest_address(hv, "a2"))
    assert reaches(hv, "a2", guest_address(hv, "a1"))


def test_a_guest_on_another_network_cannot_reach_them(net_lab):
    lab, hv = net_lab
    own = guest_address(hv, "m")
    assert reaches(hv, "m", own.rsplit(".", 1)[0] + ".1")  # its own gateway: the check itself works
    for vm in ("a1", "a2"):
        assert not reaches(hv, "m", guest_address(hv, vm))
        assert not reaches(hv, vm, own)


def test_a_guest_on_nat_reaches_the_outside_as_the_host(net_lab, tmp_path):
    lab, hv = net_lab
    log = tmp_path / "upstream.log"
    server = subprocess.Popen(["ip", "netns", "exec", lab.up, "python3", "-m", "http.server", "8000", "--bind",
                               UP_ADDR], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    try:
        (tmp_path / "hello.txt").write_text("from upstream\n")
        guest_address(hv, "m")
        deadline = time.monotonic() + 15
        while True:
            output, status = guest(hv, "m", f"wget -q -O - http://{UP_ADDR}:8000/hello.txt")
            if status == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert output.strip() == "from upstream"
    finally:
        server.terminate()
        server.wait()
    clients = {line.split()[0] for line in log.read_text().splitlines() if "GET /hello.txt" in line}
    assert clients == {HOST_ADDR}  # masqueraded: the server sees the host, not the guest


def test_a_port_forward_reaches_httpd_in_the_guest_from_the_host(net_lab):
    lab, hv = net_lab
    guest(hv, "a1", "mkdir -p /www && echo served-by-a1 >/www/index.html && httpd -p 80 -h /www")
    lab.mv("vm", "port-forward", "a1", "add", "8080:80")
    fetched = lab.sh("python3 -c \"import urllib.request as u; "
                     "print(u.urlopen('http://127.0.0.1:8080/', timeout=10).read().decode())\"")
    assert fetched.strip() == "served-by-a1"
    assert lab.mv_json("vm", "port-forward", "a1", "list")[0]["guest_port"] == 80
    lab.mv("vm", "port-forward", "a1", "remove", "8080")
    assert lab.sh("nft list chain inet minivisor output").count("dnat") == 0


def test_a_guest_cannot_reach_the_hosts_loopback_through_its_gateway(net_lab, tmp_path):
    """The bridges' route_localnet (for loopback port forwards) must not open 127.0.0.1 to guests (CVE-2020-8558).

    The attacker is a namespace plugged into network A's switch like a guest (the test guest's kernel has no
    sysctls, and a guest needs ``route_localnet`` on its own side to send to 127.0.0.1): it routes 127.0.0.0/8
    to its gateway and asks a server of the host's that listens on every address, the REST service's way."""
    lab, hv = net_lab
    with attacker_on(lab, "A", tmp_path, "ip route add 127.0.0.0/8 via {gateway} dev atk1") as (attacker, gateway):
        leaked = lab.sh(FETCH.format("127.0.0.1", 8799) + " 2>&1", ns=attacker, check=False)
    assert "secret" not in leaked and "timed out" in leaked


def test_a_guest_on_an_isolated_network_cannot_reach_a_port_forward_through_its_gateway(net_lab, tmp_path):
    """A port forward on 0.0.0.0 answers on every address of the host, the host's address on an isolated (host-only)
    network too: the DNAT must not carry that network's guests to the forwarded guest on another network. The
    attacker is a namespace plugged into hostonly's switch like a guest; the host itself still forwards."""
    lab, hv = net_lab
    guest(hv, "a1", "mkdir -p /www && echo served-by-a1 >/www/index.html && (pidof httpd || httpd -p 80 -h /www)")
    lab.mv("vm", "port-forward", "a1", "add", "0.0.0.0:8081:80")
    try:
        assert lab.sh(FETCH.format("127.0.0.1", 8081)).strip() == "served-by-a1"  # the forward works
        with attacker_on(lab, "hostonly", tmp_path) as (attacker, gateway):
            reached = lab.sh(FETCH.format(gateway, 8081) + " 2>&1", ns=attacker, check=False)
    finally:
        lab.mv("vm", "port-forward", "a1", "remove", "0.0.0.0:8081")
    assert "served-by-a1" not in reached and "timed out" in reached


# Fetch http://ADDRESS:PORT/ from a namespace, 3 s at most: a server's answer, or an exception's words
FETCH = "python3 -c \"import urllib.request as u; print(u.urlopen('http://{}:{}/', timeout=3).read().decode())\""


@contextlib.contextmanager
def attacker_on(lab, network: str, folder, route: str = ""):
    """A namespace plugged into ``network``'s switch like a guest (veth atk0/atk1, the subnet's address .120),
    ``route`` (its ``{gateway}`` filled in) set up in it; yields its name and its gateway, once a server of the
    host's that listens on every address (on port 8799, serving ``folder``) answers it there: host-only
    reachability, as a guest has it."""
    facts = lab.mv_json("net", "show", network)
    subnet = ipaddress.ip_network(facts["subnet"])
    gateway, address = facts["gateway"], f"{subnet.network_address + 120}/{subnet.prefixlen}"
    attacker = f"{lab.host}-atk"
    (folder / "index.html").write_text("host-only secret\n")
    server = subprocess.Popen(["ip", "netns", "exec", lab.host, "python3", "-m", "http.server", "8799"],
                              cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        subprocess.run(["ip", "netns", "add", attacker], check=True)
        lab.sh(f"ip link add atk0 type veth peer name atk1 netns {attacker} && "
               f"ip link set atk0 master {facts['bridge']} up")
        lab.sh(f"ip addr add {address} dev atk1 && ip link set atk1 up && "
               "echo 1 >/proc/sys/net/ipv4/conf/atk1/route_localnet"
               + (" && " + route.format(gateway=gateway) if route else ""), ns=attacker)
        deadline = time.monotonic() + 15
        while "host-only secret" not in lab.sh(FETCH.format(gateway, 8799), ns=attacker, check=False):
            assert time.monotonic() < deadline, "the host's server is not reachable on the gateway"
            time.sleep(0.3)
        yield attacker, gateway
    finally:
        server.terminate()
        server.wait()
        subprocess.run(["ip", "netns", "del", attacker], capture_output=True)
        subprocess.run(["ip", "netns", "exec", lab.host, "ip", "link", "del", "atk0"], capture_output=True)


def test_link_down_stops_traffic_and_link_up_restores_it(net_lab):
    lab, hv = net_lab
    peer = guest_address(hv, "a2")
    lab.mv("vm", "nic", "a2", "ethernet0", "--link", "down")
    deadline = time.monotonic() + 10  # e1000's driver looks at the link every 2 s
    while guest(hv, "a2", "cat /sys/class/net/eth0/carrier")[0].strip() != "0":
        assert time.monotonic() < deadline, "a2 still sees its link up"
        time.sleep(0.5)
    assert not reaches(hv, "a1", peer)
    lab.mv("vm", "nic", "a2", "ethernet0", "--link", "up")
    deadline = time.monotonic() + 15
    while not reaches(hv, "a1", peer):
        assert time.monotonic() < deadline, "the link came up but a2 stayed unreachable"


def test_each_nic_model_has_the_specfile_mac_and_driver_in_the_guest(net_lab):
    lab, hv = net_lab
    spec_macs = {nic["name"]: nic["mac"] for nic in lab.mv_json("vm", "show", "m")["nics"]}
    text = (lab.datastore / "m" / "m.vmx").read_text()
    for nic in MODELS:  # the MACs minivisor generated are in the specfile now
        assert f'{nic}.generatedAddress = "{spec_macs[nic]}"' in text
    inventory = guest(hv, "m", "for n in /sys/class/net/eth*; do echo $(cat $n/address) "
                               "$(basename $(readlink $n/device/driver)); done")[0]
    seen = dict(line.split() for line in inventory.strip().splitlines())
    assert seen == {spec_macs[nic]: driver for nic, (_, driver) in MODELS.items()}


def test_an_address_survives_a_power_cycle(net_lab):
    lab, hv = net_lab
    before = guest_address(hv, "a1")
    lab.mv("vm", "stop", "a1", "--hard")
    taps = [link for link in lab.links() if link.startswith("mvt")]
    assert len(taps) == 1 + len(MODELS)  # the tap went with the VM: a2's and m's are left
    lab.mv("vm", "start", "a1", "--wait-ready")
    assert guest_address(hv, "a1") == before


def test_nothing_of_minivisor_is_left_once_vms_are_off_and_networks_deleted(net_lab):
    lab, hv = net_lab
    refused = lab.mv("net", "delete", "A", check=False)
    assert refused.returncode == 4 and "in use by running VM(s): a1, a2" in refused.stderr
    for vm in ("a1", "a2"):
        lab.mv("vm", "stop", vm, "--hard")
    # a guest that powers itself off: its taps are found and removed. Its output elsewhere, a moment
    # later: the guest agent reports a command once it ended and its output pipes closed
    guest(hv, "m", "(sleep 1; poweroff -f) >/dev/null 2>&1 &")
    deadline = time.monotonic() + 20
    while lab.mv_json("vm", "show", "m")["state"] != "poweredOff":
        assert time.monotonic() < deadline, "m did not power off"
        time.sleep(0.2)
    for network in ("A", "nat", "hostonly"):
        lab.mv("net", "delete", network)
    assert lab.minivisor_leftovers() == []
    assert json.loads(lab.mv("net", "list", "--json").stdout)[0]["state"] == "inactive"
