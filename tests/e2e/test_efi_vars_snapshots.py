"""End to end: the UEFI variable store goes with the VM's snapshots and clones. OVMF writes its variables at
every boot (its monotonic counter at least), so each boot leaves a store of different content: a revert
brings the snapshot's back, a clone gets a copy of its own (of the snapshot's, for a linked clone)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
from pathlib import Path

import pytest
from boot_media import shell_boot_disk
from cli_runner import run_cli
from test_uefi import efi_vm, start_through_shell

from minivisor.images.qemu_img import internal_snapshots
from minivisor.storage.journal import CRASH_ENV, JOURNAL_NAME

pytestmark = pytest.mark.qemu


def variables(store: Path) -> str:
    """What the firmware sees in a store: the digest of its data (qcow2 metadata aside)."""
    raw = store.with_name(store.name + ".raw")
    subprocess.run(["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", str(store), str(raw)], check=True)
    try:
        return hashlib.sha256(raw.read_bytes()).hexdigest()
    finally:
        raw.unlink()


def killed_at(hv, crash_at: str, *args: str) -> None:
    """``minivisor ARGS`` SIGKILLs itself at ``crash_at``; then the next operation (a listing) recovers."""
    env = {**os.environ, CRASH_ENV: crash_at}
    assert run_cli(*args, datastore=hv.datastore.root, env=env).returncode == -signal.SIGKILL
    listed = run_cli("snapshot", "list", args[2], datastore=hv.datastore.root)
    assert listed.returncode == 0, listed.stderr
    assert not (hv.datastore.root / args[2] / JOURNAL_NAME).exists()


def boot(hv, name: str) -> None:
    start_through_shell(hv, name)
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
    start_through_shell(hv, "uefi")
    hv.snapshot_take("uefi", "running", memory=False)
    assert internal_snapshots(store) == {"minivisor-snapshot-1"}
    hv.snapshot_delete("uefi", "running")  # while it runs: the VMM drops it
    assert internal_snapshots(store) == set()
    hv.stop_vm("uefi", hard=True)


def test_a_revert_killed_between_the_disks_and_the_efi_variables_is_completed_by_recovery(hv, appliance_image,
                                                                                         tmp_path):
    """Killed with the disks reverted (tree, specfile, the newer top gone) but not the store: the next operation
    restores the snapshot's variables."""
    vmx = efi_vm(hv, "uefi", shell_boot_disk(appliance_image, tmp_path / "efi.img"))
    store = vmx.parent / "efivars.qcow2"
    boot(hv, "uefi")
    at_snapshot = variables(store)
    hv.snapshot_take("uefi", "booted-once")
    boot(hv, "uefi")
    assert variables(store) != at_snapshot
    killed_at(hv, "revert:step2", "snapshot", "revert", "uefi", "booted-once")
    assert variables(store) == at_snapshot and internal_snapshots(store) == {"minivisor-snapshot-1"}
    boot(hv, "uefi")  # and the firmware boots on the restored store


def test_an_online_snapshot_killed_before_keeping_the_efi_variables_keeps_them_through_the_vmm(hv, appliance_image,
                                                                                              tmp_path):
    """Killed once the disks switched: the running VMM has the store open, so recovery has it keep the store's
    state (QMP), then resumes the guest."""
    vmx = efi_vm(hv, "uefi", shell_boot_disk(appliance_image, tmp_path / "efi.img"))
    store = vmx.parent / "efivars.qcow2"
    start_through_shell(hv, "uefi")
    try:
        killed_at(hv, "take-online:switched", "snapshot", "take", "uefi", "hot")
        assert internal_snapshots(store) == {"minivisor-snapshot-1"}
        assert hv.get_vm("uefi").state.value == "running"
    finally:
        hv.stop_vm("uefi", hard=True)
