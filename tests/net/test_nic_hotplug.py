"""NICs added to and removed from a running VM (hot-plug), seen from inside the guest, and their traffic counters.

In a network namespace of the module's own: network ``A`` holds ``h`` (virtio on
ethernet0). ethernet1 is added while it runs, used, counted and removed again.
"""

from __future__ import annotations

import re

import pytest
from guests import create_guest, wait_for

from minivisor import Hypervisor
from minivisor.net.names import tap_name
from minivisor.spec.identity import nic_entries
from minivisor.errors import GuestError
from minivisor.vmm.hotplug import plug_nic, unplug_nic
from minivisor.vmm.process import Vmm

pytestmark = pytest.mark.qemu

SUBNET = "192.168.63.0/24"  # network A


@pytest.fixture(scope="module")
def hot(appliance_lab, appliance_image):
    lab = appliance_lab
    lab.appliance_vm("h", appliance_image, "A", "virtio")
    return lab, Hypervisor(lab.datastore), (lab.datastore / "h" / "h.vmx").read_bytes()


def guest(hv, command: str) -> str:
    result = hv.exec_in_vm("h", command, timeout=30)
    assert result.exit_code == 0, (command, result.output)
    return result.output


def counters(hv, ifname: str) -> dict[str, int]:
    text = guest(hv, f"cd /sys/class/net/{ifname}/statistics && echo tx_bytes $(cat tx_bytes) tx_packets "
                     f"$(cat tx_packets) rx_bytes $(cat rx_bytes)")
    words = text.split()
    return {words[i]: int(words[i + 1]) for i in range(0, len(words), 2)}


def test_a_nic_added_to_a_running_vm_is_in_the_guest_with_its_mac_and_gets_its_address(hot):
    lab, hv, before = hot
    added = lab.mv_json("vm", "nic", "h", "ethernet1", "--add", "--model", "virtio", "--network", "A")
    assert (added["hotplugged"], added["model"], added["network"], added["warnings"]) == (True, "virtio", "A", [])
    wait_for("the guest has no eth1", lambda: "eth1" in guest(hv, "ls /sys/class/net"))
    assert guest(hv, "cat /sys/class/net/eth1/address").strip() == added["mac"]
    assert guest(hv, "basename $(readlink /sys/class/net/eth1/device/driver)").strip() == "virtio_net"
    # the guest brings it up and asks for an address by itself, as udev and a network manager would
    reserved = {n["nic"]: n["address"] for n in lab.mv_json("vm", "ip", "h")}
    wait_for(f"eth1 never got {reserved['ethernet1']}", lambda: re.search(
        rf"inet {re.escape(reserved['ethernet1'])}/24", guest(hv, "ip -4 -o addr show dev eth1")), timeout=60)
    # the specfile kept every line it had; the NIC's keys came after them
    now = (lab.datastore / "h" / "h.vmx").read_bytes()
    assert now.startswith(before) and b'ethernet1.virtualDev = "virtio"' in now[len(before):]


def test_a_hot_plugged_nics_traffic_is_counted_from_its_tap_as_the_guest_counts_it(hot):
    lab, hv, _ = hot
    guest(hv, "ping -c 5 -i 0.2 -I eth1 192.168.63.1 >/dev/null")
    first = counters(hv, "eth1")
    host = lab.api("nic_traffic", "h")["ethernet1"]
    last = counters(hv, "eth1")
    # what the tap received is what the guest sent: between two readings of the guest's own counters
    assert first["tx_packets"] <= host["sent_packets"] <= last["tx_packets"]
    assert first["tx_bytes"] <= host["sent_bytes"] <= last["tx_bytes"]
    assert host["received_packets"] >= 5 and host["received_bytes"] >= 5 * 84  # the ping replies
    assert set(lab.api("nic_traffic", "h")) == {"ethernet0", "ethernet1"}


def test_a_nic_removed_from_a_running_vm_leaves_the_guest_its_tap_and_the_specfile(hot):
    lab, hv, before = hot
    removed = lab.mv_json("vm", "nic", "h", "ethernet1", "--remove")
    assert removed["hotplugged"] and removed["forwards_removed"] == []
    assert "eth1" not in guest(hv, "ls /sys/class/net")
    wait_for("eth1's DHCP client outlived its NIC", lambda: "eth1" not in guest(hv, "ps"))
    uuid = lab.mv_json("vm", "show", "h")["uuid"]
    assert [link for link in lab.links() if link.startswith("mvt")] == [tap_name(uuid, 0)]
    assert set(lab.api("nic_traffic", "h")) == {"ethernet0"}
    assert (lab.datastore / "h" / "h.vmx").read_bytes() == before  # byte for byte what it was
    assert guest(hv, "ping -c 1 -W 2 192.168.63.1 >/dev/null; echo $?").strip() == "0"  # ethernet0 still works


def test_a_removal_the_guest_completed_after_minivisor_gave_up_waiting_can_be_retried(hot):
    lab, hv, before = hot
    lab.mv("vm", "nic", "h", "ethernet2", "--add", "--model", "virtio", "--network", "A")
    wait_for("the guest has no eth1", lambda: "eth1" in guest(hv, "ls /sys/class/net"))
    # What a removal that timed out leaves: QEMU asked the guest, which let go later; the backend stays.
    Vmm("h", hv.vm_paths("h")).execute("device_del", {"id": "ethernet2"})
    wait_for("the guest kept eth1", lambda: "eth1" not in guest(hv, "ls /sys/class/net"))
    removed = lab.mv_json("vm", "nic", "h", "ethernet2", "--remove")
    assert removed["hotplugged"]
    uuid = lab.mv_json("vm", "show", "h")["uuid"]
    assert [link for link in lab.links() if link.startswith("mvt")] == [tap_name(uuid, 0)]
    assert (lab.datastore / "h" / "h.vmx").read_bytes() == before
    lab.mv("vm", "nic", "h", "ethernet2", "--add", "--model", "virtio", "--network", "A")  # its backend is gone
    lab.mv("vm", "nic", "h", "ethernet2", "--remove")


def test_a_removal_retried_before_the_guest_released_the_nic_waits_for_it_as_the_first_did(hot):
    lab, hv, before = hot
    lab.mv("vm", "nic", "h", "ethernet2", "--add", "--model", "virtio", "--network", "A")
    wait_for("the guest has no eth1", lambda: "eth1" in guest(hv, "ls /sys/class/net"))
    vmm = Vmm("h", hv.vm_paths("h"))
    nic = next(n for n in hv.vms.context("h").read_spec().nics if n.name == "ethernet2")
    vmm.execute("stop")  # a guest that cannot answer yet
    try:
        vmm.execute("device_del", {"id": "ethernet2"})  # what an earlier removal that gave up waiting left pending
        with pytest.raises(GuestError, match="did not release ethernet2 within 1 s"):  # not QEMU's raw refusal
            unplug_nic(vmm, nic, timeout=1)
    finally:
        vmm.execute("cont")
    unplug_nic(vmm, nic)  # pending or released by now: either way it ends with the backend deleted
    assert "ethernet2" not in {d["qdev_id"] for d in vmm.execute("query-pci")[0]["devices"]}
    wait_for("the guest kept eth1", lambda: "eth1" not in guest(hv, "ls /sys/class/net"))
    lab.mv("vm", "nic", "h", "ethernet2", "--remove")  # the specfile's entry and the tap follow
    assert (lab.datastore / "h" / "h.vmx").read_bytes() == before


def test_a_hot_plugged_nic_sits_where_the_next_power_on_puts_it(hot):
    """The guest finds it at the same PCI device path before and after a power cycle: it is hot-plugged into
    the slot a power-on gives it (the free one its new pciSlotNumber names), and nothing else moves."""
    lab, hv, _ = hot
    added = lab.mv_json("vm", "nic", "h", "ethernet3", "--add", "--model", "e1000", "--network", "A")
    assert added["warnings"] == []
    slot = int(re.search(r'ethernet3\.pciSlotNumber = "(\d+)"', (lab.datastore / "h" / "h.vmx").read_text())[1])

    def device_paths() -> dict[str, str]:
        """MAC -> the PCI device path of each NIC the guest has."""
        listing = guest(hv, "for n in /sys/class/net/eth*; do echo $(cat $n/address) $(readlink -f $n/device); done")
        return dict(line.split() for line in listing.splitlines() if line.strip())

    hot_plugged = wait_for("the guest has no NIC with the added MAC", lambda: added["mac"] in device_paths() and
                           device_paths())
    assert hot_plugged[added["mac"]].endswith(f"/0000:00:{slot:02x}.0")
    lab.mv("vm", "stop", "h", "--hard")
    lab.mv("vm", "start", "h", "--wait-ready")
    assert wait_for("the NICs came back", lambda: len(device_paths()) == len(hot_plugged) and device_paths()) \
        == hot_plugged
    lab.mv("vm", "nic", "h", "ethernet3", "--remove")


@pytest.mark.parametrize("slot, why", [("192", "behind a bridge the running VM does not have"),
                                       ("3", "taken in the running VM")])  # the display's slot while it runs
def test_a_nic_whose_place_the_running_vm_cannot_give_is_placed_by_qemu_with_a_warning(hv, appliance_image,
                                                                                       slot, why):
    create_guest(hv, "p", appliance_image, memory_mib=96, network="none")
    hv.start_vm("p", wait_ready=True, timeout=90)
    vmm = Vmm("p", hv.vm_paths("p"))
    assert any(d["slot"] == 3 and d["qdev_id"] == "svga" for d in vmm.execute("query-pci")[0]["devices"])
    ctx = hv.vms.context("p")
    keys = {**nic_entries(1, ctx.uuid, "nowhere", "e1000"), "ethernet1.pciSlotNumber": slot}
    with ctx.vmx.open("a") as vmx:  # a specfile that pins the NIC, as VMware writes them
        vmx.write("".join(f'{key} = "{value}"\n' for key, value in keys.items()))
    plan = ctx.plan()
    nic = plan.spec.nics[-1]
    (warning,) = plug_nic(vmm, nic, plan.spec, plan.env)
    assert warning.startswith("ethernet1: its place PCI ") and why in warning and "next power-on moves it" in warning
    placed = [d for d in vmm.execute("query-pci")[0]["devices"] if d["qdev_id"] == "ethernet1"]
    assert len(placed) == 1 and placed[0]["slot"] != 3  # QEMU's choice, on the root bus
    wait_for("the guest has no NIC with its MAC", lambda: plan.env.macs[1] in hv.exec_in_vm(
        "p", "cat /sys/class/net/*/address", timeout=30).output)
