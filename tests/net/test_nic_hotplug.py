"""NICs added to and removed from a running VM (hot-plug), seen from inside the guest, and their traffic counters.

In a network namespace of the module's own: network ``A`` holds ``h`` (virtio on
ethernet0). ethernet1 is added while it runs, used, counted and removed again.
"""

from __future__ import annotations

import re
import time

import pytest
from netlab import end_lab, make_lab

from minivisor import Hypervisor
from minivisor.net.names import tap_name
from minivisor.vmm.process import Vmm

pytestmark = pytest.mark.qemu


@pytest.fixture(scope="module")
def hot(tmp_path_factory, appliance_image):
    lab = make_lab(tmp_path_factory.mktemp("hotplug") / "datastore")
    try:
        lab.mv("datastore", "allow-path", str(appliance_image.parent))
        lab.mv("net", "create", "A", "--subnet", "192.168.63.0/24")
        lab.mv("vm", "create", "h", "--memory", "96", "--boot-disk", str(appliance_image), "--network", "A",
               "--nic", "virtio")
        lab.mv("vm", "start", "h", "--wait-ready")
        yield lab, Hypervisor(lab.datastore), (lab.datastore / "h" / "h.vmx").read_bytes()
    finally:
        end_lab(lab)


def guest(hv, command: str) -> str:
    result = hv.exec_in_vm("h", command, timeout=30)
    assert result.exit_code == 0, (command, result.output)
    return result.output


def wait_for(what: str, check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.5)
    return found


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
    guest(hv, "ip link set eth1 up && udhcpc -n -q -i eth1 -s /etc/udhcpc.script -t 20 -T 1 >/dev/null 2>&1")
    reserved = {n["nic"]: n["address"] for n in lab.mv_json("vm", "ip", "h")}
    assert re.search(rf"inet {re.escape(reserved['ethernet1'])}/24", guest(hv, "ip -4 -o addr show dev eth1"))
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
