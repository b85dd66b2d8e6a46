"""A VM made on a network after another was stopped and deleted gets the address minivisor says it has.

A hard stop sends no DHCPRELEASE, so dnsmasq keeps the deleted VM's lease for
its whole lease time, and it never gives a reserved address that is leased to
another MAC. So the new VM's reservation must not be the address the old VM's
lease still holds (bench/net.py's second NIC model once got a dynamic address
while ``vm ip`` named the reserved one, and its peer connected to nobody).

In a network namespace of the module's own: network ``A``; ``old`` boots, takes
its lease and is deleted; then ``new`` boots.
"""

from __future__ import annotations

import time

import pytest
from guests import guest_address

from minivisor import Hypervisor

pytestmark = pytest.mark.qemu

SUBNET = "192.168.64.0/24"  # network A


def leased_address(lab, vm: str, timeout: float = 60.0) -> str:
    """The address ``vm ip`` names, once dnsmasq has leased that address to the VM's MAC."""
    deadline = time.monotonic() + timeout
    while (nic := lab.mv_json("vm", "ip", vm)[0])["lease"] != "leased":
        assert time.monotonic() < deadline, f"{vm} never leased its reserved address: {nic}"
        time.sleep(0.5)
    return nic["address"]


@pytest.fixture(scope="module")
def reuse(appliance_lab, appliance_image):
    lab = appliance_lab
    lab.appliance_vm("old", appliance_image, "A", "virtio")
    old_address = leased_address(lab, "old")
    lab.mv("vm", "stop", "old", "--hard")
    lab.mv("vm", "delete", "old")
    lab.appliance_vm("new", appliance_image, "A", "virtio")
    return lab, Hypervisor(lab.datastore), old_address


def test_a_new_vm_gets_the_address_reserved_for_it_not_one_a_deleted_vm_still_leases(reuse):
    lab, hv, old_address = reuse
    reserved = leased_address(lab, "new")
    assert reserved != old_address
    assert guest_address(hv, "new") == reserved


def test_an_address_a_deleted_vm_still_leases_cannot_be_fixed_for_another(reuse):
    lab, _, old_address = reuse
    done = lab.mv("vm", "nic", "new", "ethernet0", "--ip", old_address, check=False)
    assert done.returncode != 0
    assert f"{old_address} is leased to" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) <= 2  # the message and its hint
    assert lab.mv_json("vm", "ip", "new")[0]["address"] != old_address


def test_nothing_of_the_network_is_left_after_it_is_deleted(reuse):
    lab, _, _ = reuse
    lab.mv("vm", "stop", "new", "--hard")
    lab.mv("net", "delete", "A")
    assert lab.minivisor_leftovers() == []
