"""NICs added to and removed from a powered-off VM's specfile, through the CLI: VMware's keys, every other line
kept, and bad requests refused in one line with nothing changed. (Running VMs: tests/net/test_nic_hotplug.py.)"""

from __future__ import annotations

import pytest
from cli_runner import run_cli
from refusals import assert_one_clear_line, datastore_state

from minivisor.core.hypervisor import Hypervisor
from minivisor.spec.identity import generated_mac


@pytest.fixture
def datastore(tmp_path):
    store = tmp_path / "ds"
    hv = Hypervisor(store)
    hv.create_vm("v", memory_mib=64, disk_size="16M", network="nat", nic_model="e1000")
    vmx = store / "v" / "v.vmx"
    vmx.write_bytes(b"# the user's own comment\n" + vmx.read_bytes())
    return store


def mv(store, *args):
    return run_cli(*args, datastore=store)


def test_a_nic_added_then_removed_leaves_the_specfile_byte_for_byte_as_it_was(datastore):
    vmx = datastore / "v" / "v.vmx"
    before = vmx.read_bytes()
    added = mv(datastore, "vm", "nic", "v", "ethernet1", "--add", "--model", "virtio", "--network", "lab", "--json")
    assert added.returncode == 0, added.stderr
    uuid = Hypervisor(datastore).get_vm("v").uuid
    text = vmx.read_text()
    assert text.startswith(before.decode())  # comments, order and spelling kept; the NIC's keys after them
    for line in ('ethernet1.present = "TRUE"', 'ethernet1.virtualDev = "virtio"', 'ethernet1.connectionType = "custom"',
                 'ethernet1.networkName = "lab"', f'ethernet1.generatedAddress = "{generated_mac(uuid, 1)}"'):
        assert line in text
    nics = Hypervisor(datastore).get_vm("v").nics
    assert [(n["name"], n["model"]) for n in nics] == [("ethernet0", "e1000"), ("ethernet1", "virtio")]
    assert mv(datastore, "vm", "nic", "v", "ethernet1", "--remove").returncode == 0
    assert vmx.read_bytes() == before


def test_vmware_connection_types_are_written_as_vmware_writes_them(datastore):
    for index, network in enumerate(("hostonly", "bridged", "none"), start=1):
        assert mv(datastore, "vm", "nic", "v", f"ethernet{index}", "--add", "--network", network).returncode == 0
        assert f'ethernet{index}.connectionType = "{network}"' in (datastore / "v" / "v.vmx").read_text()


def test_removing_a_nic_removes_its_port_forwards(datastore):
    hv = Hypervisor(datastore)
    hv.add_nic("v", "ethernet2", model="vmxnet3", network="nat")
    hv.port_forward_add("v", "18085:22", nic="ethernet2")  # NAT here is user-mode: the forward is QEMU's hostfwd
    hv.port_forward_add("v", "18086:80", nic="ethernet0")
    removed = hv.remove_nic("v", "ethernet2")
    assert [f["host_port"] for f in removed["forwards_removed"]] == [18085]
    assert [f["host_port"] for f in hv.port_forward_list("v")] == [18086]


@pytest.mark.parametrize("args, code, words", [
    (("ethernet0", "--add"), 4, ("has an ethernet0 already",)),
    (("eth1", "--add"), 2, ("'eth1' is not a NIC name", "ethernet0 to ethernet9")),
    (("ethernet10", "--add"), 2, ("is not a NIC name",)),
    (("ethernet1", "--add", "--model", "rtl8139"), 65, ("not one minivisor can create",)),
    (("ethernet1", "--add", "--network", "a,b=c"), 2, ("is not a valid network name",)),
    (("ethernet1", "--add", "--network", 'x"\nethernet1.virtualDev = "e1000'), 2, ("is not a valid network name",)),
    (("ethernet1", "--remove"), 3, ("has no NIC 'ethernet1'", "its NICs: ethernet0")),
    (("ethernet0", "--add", "--remove"), 2, ("different changes",)),
    (("ethernet0", "--remove", "--link", "down"), 2, ("different changes",)),
])
def test_a_bad_nic_change_is_one_line_and_changes_nothing(datastore, args, code, words):
    before = datastore_state(datastore)
    assert_one_clear_line(mv(datastore, "vm", "nic", "v", *args), code, *words)
    assert datastore_state(datastore) == before
