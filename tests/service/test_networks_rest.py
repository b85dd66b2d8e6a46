"""Networks, NICs and port forwards through a running service (``minivisor serve``), as ``minivisor.client`` drives
them, giving what the CLI gives on the same datastore; and each NIC's traffic in its metrics.

The service, its networks and its VM run in a network namespace of the test's own; the
test's client talks to the service on that namespace's loopback (see ``Lab.inside``).
"""

from __future__ import annotations

import re
import time
import urllib.request

import pytest

from minivisor.client import connect
from minivisor.errors import ArgumentError, ConflictError

pytestmark = pytest.mark.qemu


@pytest.fixture
def served(lab, tmp_path, appliance_image):
    lab.mv("datastore", "allow-path", str(appliance_image.parent))
    service = lab.serve(tmp_path / "service.log")
    try:
        with lab.inside():
            deadline = time.monotonic() + 30
            while (client := connect(lab.datastore)) is None:
                assert service.poll() is None, (tmp_path / "service.log").read_text()
                assert time.monotonic() < deadline, "the service did not come up"
                time.sleep(0.1)
            yield lab, client, appliance_image
            for vm in client.list_vms():  # a service leaves its VMs running: power them off, pass or fail
                if vm.state.value != "poweredOff":
                    client.stop_vm(vm.name, hard=True)
    finally:
        service.terminate()
        service.wait(timeout=30)


def test_networks_over_rest_are_what_the_cli_shows_and_refusals_are_the_same_errors(served):
    lab, client, _ = served
    created = client.create_network("rest", subnet="192.168.66.0/24")
    assert created.to_dict() == lab.mv_json("net", "show", "rest")
    assert (created.mode, created.subnet, created.gateway, created.state) == ("nat", "192.168.66.0/24",
                                                                              "192.168.66.1", "active")
    assert [n.to_dict() for n in client.list_networks()] == lab.mv_json("net", "list")
    assert client.get_network("rest").to_dict() == lab.mv_json("net", "show", "rest")
    with pytest.raises(ConflictError, match="already exists"):
        client.create_network("REST")
    assert lab.mv("net", "create", "REST", check=False).returncode == 4
    with pytest.raises(ArgumentError, match="not a valid network name"):
        client.create_network("a,b")
    client.delete_network("rest")
    assert "rest" not in {n["name"] for n in lab.mv_json("net", "list")}
    assert lab.minivisor_leftovers() == []


def test_nics_port_forwards_and_traffic_over_rest_on_a_running_vm(served):
    lab, client, image = served
    client.create_network("rest", subnet="192.168.67.0/24")
    client.create_vm("w", memory_mib=96, boot_disk=str(image), network="rest", nic_model="virtio")
    added = client.add_nic("w", "ethernet1", model="e1000", network="hostonly")
    assert [n["name"] for n in lab.mv_json("vm", "show", "w")["nics"]] == ["ethernet0", "ethernet1"]
    assert (added["hotplugged"], added["network"]) == (False, "hostonly")
    forward = client.port_forward_add("w", "18090:80")
    assert client.port_forward_list("w") == lab.mv_json("vm", "port-forward", "w", "list") == [
        {k: v for k, v in forward.items() if k != "spec"}]

    client.start_vm("w", wait_ready=True, timeout=120)
    client.exec_in_vm("w", "mkdir -p /www && echo served-over-rest >/www/index.html")
    server = client.exec_in_vm("w", "httpd -f -p 80 -h /www", wait=False)  # in the foreground, not waited for
    assert server.pid > 1 and client.exec_in_vm("w", f"kill -0 {server.pid} && echo serving").output == "serving\n"
    deadline = time.monotonic() + 30
    while True:  # the guest asks for its address in the background after it is ready
        try:
            body = urllib.request.urlopen("http://127.0.0.1:18090/", timeout=5).read().decode()
            break
        except OSError:
            assert time.monotonic() < deadline, "the forward never reached the guest's httpd"
            time.sleep(0.5)
    assert body.strip() == "served-over-rest"
    with pytest.raises(ConflictError, match="in use by running VM"):
        client.delete_network("rest")

    nics = client.metrics()["vms"]["w"]["nics"]
    assert set(nics) == {"ethernet0", "ethernet1"} and nics["ethernet0"]["received_bytes"] > 0
    assert nics["ethernet0"]["sent_packets"] > 0  # its DHCP requests and the httpd's answer at least
    status, text = client.request("GET", "/metrics")
    assert status == 200
    assert re.search(r'^minivisor_vm_nic_sent_bytes_total\{vm="w",nic="ethernet0"\} [1-9]\d*$', text, re.M)
    assert client.nic_traffic("w").keys() == nics.keys()

    removed = client.remove_nic("w", "ethernet1")
    assert removed["hotplugged"] and "ethernet1" not in client.nic_traffic("w")
    client.stop_vm("w", hard=True)
    client.port_forward_remove("w", "18090")
    assert lab.mv_json("vm", "port-forward", "w", "list") == []
    client.delete_network("rest")
