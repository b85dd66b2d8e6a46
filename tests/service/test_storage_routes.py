"""Disks, snapshots and clones through the service: the same CLI results as working directly."""

from __future__ import annotations

import pytest

from minivisor import Hypervisor

from .conftest import EventWatcher, small_vm


def test_snapshot_commands_give_the_same_results_through_the_service(service):
    hv = Hypervisor(service.root)
    small_vm(hv, "viaservice")
    small_vm(hv, "direct")
    watcher = EventWatcher(service.client, vm="viaservice")
    for args in (["snapshot", "take", "{vm}", "s1", "--description", "first"], ["snapshot", "take", "{vm}", "s2"],
                 ["snapshot", "revert", "{vm}", "s1"], ["snapshot", "delete", "{vm}", "s2"],
                 ["snapshot", "revert", "{vm}", "nope"]):
        one = service.cli(*[a.format(vm="viaservice") for a in args])
        two = service.cli(*[a.format(vm="direct") for a in args], direct=True)
        assert (one.returncode, one.stdout.replace("viaservice", "direct"), one.stderr.replace("viaservice", "direct")) \
            == (two.returncode, two.stdout, two.stderr)
    assert watcher.wait_for(lambda e: e["type"] == "snapshotTaken")["snapshot"] == "s1"
    listed = service.cli("snapshot", "list", "viaservice", "--json", check=True).stdout
    assert listed == service.cli("snapshot", "list", "viaservice", "--json", direct=True).stdout
    assert '"name": "s1"' in listed and '"name": "s2"' not in listed


@pytest.mark.qemu
def test_disk_and_clone_commands_through_the_service(service):
    hv = Hypervisor(service.root)
    small_vm(hv, "vm1")
    disk = service.root / "vm1" / "extra.qcow2"
    created = service.cli("disk", "create", str(disk), "--size", "32M", "--json", check=True)
    assert disk.exists() and '"virtual_size": 33554432' in created.stdout
    assert service.cli("disk", "info", str(disk), "--json").stdout == \
        service.cli("disk", "info", str(disk), "--json", direct=True).stdout
    assert service.cli("vm", "disk", "vm1", "list", "--json").stdout == \
        service.cli("vm", "disk", "vm1", "list", "--json", direct=True).stdout
    cloned = service.cli("vm", "clone", "vm1", "vm2", "--linked", check=True)
    assert cloned.stdout.startswith("created linked clone vm2: ")
    assert service.client.get_vm("vm2").uuid != service.client.get_vm("vm1").uuid
    service.client.start_vm("vm2")
    service.client.stop_vm("vm2", hard=True)
