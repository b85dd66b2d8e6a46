"""End to end: linked and full clones boot next to their source and diverge."""

from __future__ import annotations

import json

import pytest

from minivisor.images.layers import allocated_bytes, read_layer
from minivisor.images.qemu_img import check_disk
from minivisor.errors import ConflictError, StateError
from minivisor.vmm.states import VmState

from test_snapshots import make_vm, read_mark, write_mark

pytestmark = pytest.mark.qemu


def inventory_mac(hv, name: str) -> str:
    for line in hv.vm_paths(name).serial_log.read_text(errors="replace").splitlines():
        if "minivisor-guest: inventory " in line:
            return json.loads(line.split("minivisor-guest: inventory ", 1)[1])["nics"][0]["mac"]
    raise AssertionError("no inventory")


def test_a_linked_clone_and_its_source_run_together_and_diverge(hv, appliance_image):
    source = make_vm(hv, "src", appliance_image, network="nat")
    hv.start_vm(source, wait_ready=True, timeout=90)
    write_mark(hv, source, "shared")
    hv.snapshot_take(source, "golden", memory=False)  # taken while running
    vmx = hv.datastore.root / source / "src.vmx"
    vmx.write_text(vmx.read_text().replace('memSize = "160"', 'memSize = "192"'))  # edited after the snapshot

    hv.clone_vm(source, "kid", linked=True, snapshot="golden")  # from a running VM's snapshot
    assert hv.get_vm("kid").memory_mib == 160  # the snapshot's hardware, as VMware clones a snapshot
    kid_dir = hv.datastore.root / "kid"
    overlay = read_layer(kid_dir / "kid.qcow2", "qcow2")
    assert (overlay.backing_name, overlay.backing_format) == ("../src/src.qcow2", "qcow2")
    assert allocated_bytes(overlay) < 1024 * 1024  # costs almost nothing
    src_info, kid_info = hv.get_vm(source), hv.get_vm("kid")
    assert kid_info.uuid != src_info.uuid and kid_info.nics[0]["mac"] != src_info.nics[0]["mac"]

    hv.start_vm("kid", wait_ready=True, timeout=90)  # both run at the same time
    assert read_mark(hv, "kid") == "shared"
    write_mark(hv, "kid", "kid-only")
    write_mark(hv, source, "src-only")
    assert (read_mark(hv, "kid"), read_mark(hv, source)) == ("kid-only", "src-only")
    assert inventory_mac(hv, "kid") == kid_info.nics[0]["mac"]  # the guest sees the new MAC

    # the snapshot is read-only while the clone depends on it, and so is the source VM
    with pytest.raises(StateError) as refused:
        hv.snapshot_delete(source, "golden")
    assert "kid" in refused.value.message
    hv.stop_vm(source, hard=True)
    with pytest.raises(ConflictError) as refused_vm:
        hv.delete_vm(source)
    assert "kid" in refused_vm.value.message
    hv.snapshot_revert(source, "golden")  # reverting never changes the snapshot's layers
    hv.start_vm(source, wait_ready=True, timeout=90)
    assert (read_mark(hv, source), read_mark(hv, "kid")) == ("shared", "kid-only")
    hv.stop_vm("kid", hard=True)
    hv.delete_vm("kid")
    hv.stop_vm(source, hard=True)
    hv.snapshot_delete(source, "golden")  # free again
    for image in (hv.datastore.root / source).glob("*.qcow2"):
        assert check_disk(read_layer(image, "qcow2"))[0] == 0


def test_a_full_clone_of_a_running_vm_is_independent_and_boots(hv, appliance_image):
    source = make_vm(hv, "orig", appliance_image)
    hv.start_vm(source, wait_ready=True, timeout=90)
    write_mark(hv, source, "copied")
    seen: list[float] = []
    hv.clone_vm(source, "copy", linked=False, progress=seen.append)  # running: from a new snapshot
    assert seen and seen[-1] == 100.0 and seen == sorted(seen)
    assert hv.snapshot_list(source) == []  # the snapshot it copied from was merged back
    copy_dir = hv.datastore.root / "copy"
    for image in copy_dir.glob("*.qcow2"):
        layer = read_layer(image, "qcow2")
        assert layer.backing_name is None or "/" not in layer.backing_name  # nothing shared with the source
    hv.stop_vm(source, hard=True)
    hv.delete_vm(source)  # a full clone does not depend on its source
    hv.start_vm("copy", wait_ready=True, timeout=90)
    assert read_mark(hv, "copy") == "copied"
    assert hv.get_vm("copy").state is VmState.RUNNING
