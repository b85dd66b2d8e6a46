"""Which network a NIC is on is decided once (vmm.plan.place_nic): what a power-on plugs it into is what
``vm ip`` and ``vm show`` say and where its port forwards go. Each runs in a network namespace of its own (no VM
boots)."""

from __future__ import annotations


def test_a_bridged_nic_is_shown_on_the_bridged_network_power_on_plugs_it_into(lab):
    lab.sh(f"ip link add lan0 type veth peer name lan1 netns {lab.up} && ip link set lan0 up")
    lab.mv("net", "create", "lan", "--bridge", "lan0")
    lab.mv("vm", "create", "web", "--network", "bridged", "--disk-size", "16M")
    assert [nic["network"] for nic in lab.mv_json("vm", "ip", "web")] == ["lan"]
    lab.mv("net", "delete", "lan")


def test_a_nic_that_starts_disconnected_gets_no_port_forward(lab):
    lab.mv("vm", "create", "web", "--network", "nat", "--disk-size", "16M")
    vmx = next(lab.datastore.glob("web/*.vmx"))
    vmx.write_text(vmx.read_text() + 'ethernet0.startConnected = "FALSE"\n')
    done = lab.mv("vm", "port-forward", "web", "add", "8080:80", check=False)
    assert done.returncode == 4 and "startConnected is FALSE" in done.stderr
    assert lab.mv_json("vm", "port-forward", "web", "list") == []


def test_vm_show_gives_a_nics_address_on_the_network_it_is_on_not_one_it_left(lab):
    lab.mv("vm", "create", "web", "--network", "nat", "--disk-size", "16M")
    subnet = lab.mv_json("net", "create", "lan", "--subnet", "192.168.78.0/24")["subnet"]
    assert subnet == "192.168.78.0/24"
    vmx = next(lab.datastore.glob("web/*.vmx"))
    vmx.write_text(vmx.read_text().replace('ethernet0.connectionType = "nat"',
                                           'ethernet0.connectionType = "custom"\nethernet0.networkName = "lan"'))
    lab.mv("vm", "nic", "web", "ethernet0", "--ip", "192.168.78.20")
    assert lab.mv_json("vm", "show", "web")["nics"][0]["address"] == "192.168.78.20"
    vmx.write_text(vmx.read_text().replace('ethernet0.networkName = "lan"', 'ethernet0.networkName = "hostonly"'))
    assert lab.mv_json("vm", "show", "web")["nics"][0]["address"] is None  # its reservation is lan's
    assert [nic["address"] for nic in lab.mv_json("vm", "ip", "web")] == [None]
    lab.mv("net", "delete", "lan")
