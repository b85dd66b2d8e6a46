"""A powered-off VM's CPUs, memory and a new disk, set through the core API: the specfile edited, not rewritten."""

from __future__ import annotations

import json
import subprocess

import pytest
from cli_runner import run_cli
from refusals import datastore_state, host_refused_line, immutable

from minivisor.errors import ArgumentError, HostError, SpecError
from minivisor.storage.journal import JOURNAL_NAME


def layer_info(path) -> dict:
    return json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-f", "qcow2", str(path)],
                                     capture_output=True, text=True, check=True).stdout)


def test_cpus_and_memory_are_set_where_the_specfile_has_them(hv):
    hv.create_vm("web", disk_size="16M", memory_mib=64, network="none")
    vmx = hv.datastore.root / "web" / "web.vmx"
    vmx.write_text("# mine\n" + vmx.read_text().replace('numvcpus = "1"', 'NumVCPUs = "1"  # as VMware spells it'))
    result = hv.set_resources("web", cpus=2, memory_mib=128)
    assert (result["cpus"], result["memory_mib"], result["powers_on"]) == (2, 128, True)
    text = vmx.read_text()
    assert text.startswith("# mine\n") and 'NumVCPUs = "2"  # as VMware spells it' in text
    assert (hv.get_vm("web").cpus, hv.get_vm("web").memory_mib) == (2, 128)
    assert hv.vm_events("web", 1)[0]["type"] == "hardwareChanged"


def test_a_refused_setting_leaves_the_specfile_as_it_was(hv):
    hv.create_vm("web", disk_size="16M", memory_mib=64, network="none")
    vmx = hv.datastore.root / "web" / "web.vmx"
    vmx.write_text(vmx.read_text() + 'cpuid.coresPerSocket = "2"\nnumvcpus = "2"\n')
    before = vmx.read_bytes()
    with pytest.raises(SpecError, match="coresPerSocket"):
        hv.set_resources("web", cpus=3)  # not a multiple of the cores per socket
    with pytest.raises(SpecError, match="host's memory"):
        hv.set_resources("web", memory_mib=1024 * 1024)
    with pytest.raises(ArgumentError):
        hv.set_resources("web")
    assert vmx.read_bytes() == before


def test_a_new_disk_takes_the_first_free_unit_skipping_the_scsi_id_and_leftovers_of_an_absent_one(hv):
    hv.create_vm("web", disk_size="16M", memory_mib=64, network="none")
    vmx = hv.datastore.root / "web" / "web.vmx"
    taken = "".join(f'scsi0:{u}.present = "TRUE"\nscsi0:{u}.fileName = "d{u}.qcow2"\n' for u in range(1, 7))
    vmx.write_text(vmx.read_text() + taken + 'scsi0:8.present = "FALSE"\nscsi0:8.mode = "independent-nonpersistent"\n')
    for unit in range(1, 7):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(vmx.parent / f"d{unit}.qcow2"), "1M"], check=True)
    added = hv.add_disk("web", "32M")
    assert (added["node"], added["file"]) == ("scsi0:8", "web_scsi0-8.qcow2")  # 7 is the controller's own ID
    assert "scsi0:8.mode" not in vmx.read_text()  # the absent disk's leftovers did not come back with it
    info = layer_info(vmx.parent / "web_scsi0-8.qcow2")
    assert info["virtual-size"] == 32 * 2**20 and info["actual-size"] < 2**20  # thin
    thick = hv.add_disk("web", "8M", thick=True)
    assert thick["node"] == "scsi0:9" and layer_info(vmx.parent / thick["file"])["actual-size"] >= 8 * 2**20
    assert [d["node"] for d in hv.vm_disks("web")][-2:] == ["scsi0:8", "scsi0:9"]


def test_a_vm_without_a_disk_controller_gets_one_and_a_refused_disk_leaves_no_file(hv):
    hv.create_vm("bare", memory_mib=64, network="none")  # no disk, no controller
    added = hv.add_disk("bare", "16M")
    assert added["node"] == "scsi0:0"
    assert 'scsi0.virtualDev = "lsilogic"' in (hv.datastore.root / "bare" / "bare.vmx").read_text()
    vmx = hv.datastore.root / "bare" / "bare.vmx"
    vmx.write_text(vmx.read_text() + 'scsi0:1.present = "TRUE"\nscsi0:1.fileName = "/etc/passwd"\n')  # refused
    before = vmx.read_bytes()
    with pytest.raises(SpecError):
        hv.add_disk("bare", "16M")  # power-on's checks refuse the specfile: the new disk's file goes too
    assert vmx.read_bytes() == before
    assert sorted(p.name for p in vmx.parent.glob("*.qcow2")) == ["bare_scsi0-0.qcow2"]


def test_the_cli_sets_cpus_and_memory_and_adds_a_disk(hv):
    hv.create_vm("web", disk_size="16M", memory_mib=64, network="none")
    done = run_cli("vm", "set", "web", "--cpus", "2", "--memory", "96", datastore=hv.datastore.root)
    assert done.returncode == 0 and done.stdout.strip() == "web: 2 vCPUs, 96 MiB", done.stderr
    added = json.loads(run_cli("vm", "disk", "web", "add", "8M", "--json", datastore=hv.datastore.root).stdout)
    assert [d["node"] for d in hv.vm_disks("web")] == ["scsi0:0", added["node"]]
    assert layer_info(hv.datastore.root / "web" / added["file"])["virtual-size"] == 8 * 1024 ** 2
    for args in (("vm", "disk", "web", "add"), ("vm", "set", "web")):  # no size; nothing to set
        refused = run_cli(*args, datastore=hv.datastore.root)
        lines = refused.stderr.strip().splitlines()
        assert refused.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), refused.stderr
    assert [d["node"] for d in hv.vm_disks("web")] == ["scsi0:0", added["node"]]


def test_a_disk_whose_specfile_cannot_be_written_is_undone_at_once(hv):
    """The specfile naming the new disk fails to be written (here: an immutable file; a full datastore alike): the
    add fails, and its disk and journal are gone at once, not rolled forward later as a disk nobody asked for."""
    hv.create_vm("web", disk_size="16M", memory_mib=64, network="none")
    vmx = hv.datastore.root / "web" / "web.vmx"
    before = vmx.read_bytes()
    subprocess.run(["chattr", "+i", str(vmx)], check=True)
    try:
        with pytest.raises(HostError, match=f"cannot write {vmx}: Operation not permitted"):
            hv.add_disk("web", "8M")
    finally:
        subprocess.run(["chattr", "-i", str(vmx)], check=True)
    assert vmx.read_bytes() == before and not (vmx.parent / JOURNAL_NAME).exists()
    assert sorted(p.name for p in vmx.parent.glob("*.qcow2")) == ["web.qcow2"]
    assert hv.add_disk("web", "8M")["node"] == "scsi0:1"  # and the next add is the first one
    assert [d["node"] for d in hv.vm_disks("web")] == ["scsi0:0", "scsi0:1"]


@pytest.mark.parametrize("edit", [["set", "web", "--memory", "96"], ["disk", "web", "add", "8M"],
                                  ["nic", "web", "ethernet1", "--add", "--network", "nat"],
                                  ["nic", "web", "ethernet0", "--link", "down"]], ids=lambda edit: edit[0] + edit[-1])
def test_an_edit_of_an_immutable_specfile_is_refused_in_one_line(hv, edit):
    """The specfile cannot be replaced (chattr +i: even for root; a read-only mount alike): each edit says so in
    one line naming it (it was an 'internal error: PermissionError'), and the VM's files are as they were."""
    hv.create_vm("web", disk_size="16M", memory_mib=64, network="nat")  # ethernet0
    vmx = hv.datastore.root / "web" / "web.vmx"
    before = datastore_state(hv.datastore.root)
    with immutable(vmx):
        refused = run_cli("vm", *edit, datastore=hv.datastore.root)
    assert refused.returncode == HostError.exit_code and refused.stderr.splitlines() == [
        host_refused_line(f"write {vmx}: Operation not permitted")], refused
    assert datastore_state(hv.datastore.root) == before
