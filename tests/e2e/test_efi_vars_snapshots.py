"""End to end: the UEFI variable store goes with the VM's snapshots and clones. OVMF writes its variables at
every boot (its monotonic counter at least), so each boot leaves a store of different content: a revert
brings the snapshot's back, a clone gets a copy of its own (of the snapshot's, for a linked clone)."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
from boot_media import shell_boot_disk
from test_uefi import efi_vm

from minivisor.images.qemu_img import internal_snapshots

pytestmark = pytest.mark.qemu


def variables(store: Path) -> str:
    """What the firmware sees in a store: the digest of its data (qcow2 metadata aside)."""
    raw = store.with_name(store.name + ".raw")
    subprocess.run(["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", str(store), str(raw)], check=True)
    try:
        return hashlib.sha256(raw.read_bytes()).hexdigest()
    finally:
        raw.unlink()


def boot(hv, name: str) -> None:
    hv.start_vm(name, wait_ready=True, timeout=120)
    hv.stop_vm(name, hard=True)


def test_a_revert_restores_the_snapshots_efi_variables_and_clones_get_their_own(hv, appliance_image, tmp_path):
    vmx = efi_vm(hv, "uefi", shell_boot_disk(appliance_image, tmp_path / "efi.img"))
    store = vmx.parent / "efivars.qcow2"
    boot(hv, "uefi")
    at_snapshot = variables(store)
    hv.snapshot_take("uefi", "booted-once")
    boot(hv, "uefi")
    now = variables(store)
    assert now != at_snapshot  # the second boot changed the variables
    hv.clone_vm("uefi", "full")
    hv.clone_vm("uefi", "linked", linked=True, snapshot="booted-once")
    full, linked = (hv.datastore.root / n / "efivars.qcow2" for n in ("full", "linked"))
    assert variables(full) == now and variables(linked) == at_snapshot
    assert internal_snapshots(full) == internal_snapshots(linked) == set()  # copies of their own
    hv.snapshot_revert("uefi", "booted-once")
    assert variables(store) == at_snapshot
    hv.delete_vm("linked")  # it pins the snapshot
    hv.snapshot_delete("uefi", "booted-once")
    assert internal_snapshots(store) == set() and variables(store) == at_snapshot


def test_a_running_vms_snapshot_keeps_its_efi_variables_through_the_vmm(hv, appliance_image, tmp_path):
    vmx = efi_vm(hv, "uefi", shell_boot_disk(appliance_image, tmp_path / "efi.img"))
    store = vmx.parent / "efivars.qcow2"
    hv.start_vm("uefi", wait_ready=True, timeout=120)
    hv.snapshot_take("uefi", "running", memory=False)
    assert internal_snapshots(store) == {"minivisor-snapshot-1"}
    hv.snapshot_delete("uefi", "running")  # while it runs: the VMM drops it
    assert internal_snapshots(store) == set()
    hv.stop_vm("uefi", hard=True)
