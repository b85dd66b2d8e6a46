"""kill -9 in the middle of every disk operation: afterwards every disk passes
``qemu-img check``, the specfile, the .vmsd and the catalog agree, and the
operation is either complete or has left no trace.

The CLI runs as a real process and SIGKILLs itself at a named point of the
operation (``MINIVISOR_TEST_CRASH_AT``), so each phase is hit deterministically.
The next operation on the VM (here: ``snapshot list``) replays or rolls back
its journal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from guests import create_guest
from cli_runner import run_cli

from minivisor import Hypervisor
from minivisor.datastore.layout import EFI_VARS
from minivisor.images.layers import format_for, read_layer, resolve_chain
from minivisor.images.qemu_img import check_disk, convert_disk, internal_snapshots
from minivisor.storage.nvram import snapshot_tag
from minivisor.storage.journal import CRASH_ENV, JOURNAL_NAME
from minivisor.spec.vmsd import SnapshotTree


def cli(root: Path, *args: str, crash_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "MINIVISOR_DATASTORE": str(root)}
    env.pop(CRASH_ENV, None)
    if crash_at:
        env[CRASH_ENV] = crash_at
    return run_cli(*args, env=env)


def write(path: Path, index: int) -> None:
    """Pattern 0x41+index at offset index*64k of a disk (through its chain)."""
    subprocess.run(["qemu-io", "-f", format_for(path), "-c", f"write -P {0x41 + index} {index * 65536} 64k",
                    str(path)], check=True, capture_output=True)


def holds(path: Path, count: int) -> bool:
    """The disk shows patterns 0..count-1 and nothing after them."""
    commands = [f"read -P {0x41 + i} {i * 65536} 64k" for i in range(count)]
    commands.append(f"read -P 0 {count * 65536} 64k")
    args = ["qemu-io", "-r", "-f", format_for(path)]
    for command in commands:
        args += ["-c", command]
    out = subprocess.run(args + [str(path)], capture_output=True, text=True)
    return out.returncode == 0 and "Pattern verification failed" not in out.stdout + out.stderr


@pytest.fixture
def vm(tmp_path) -> tuple[Hypervisor, Path]:
    hv = Hypervisor(tmp_path / "ds")
    hv.create_vm("w", memory_mib=64, disk_size="4M", network="none")
    return hv, hv.datastore.root / "w"


def top(folder: Path) -> Path:
    line = next(l for l in (folder / "w.vmx").read_text().splitlines() if l.startswith("scsi0:0.fileName"))
    return folder / line.split('"')[1]


def take(root: Path, folder: Path, name: str, index: int) -> None:
    write(top(folder), index)
    assert cli(root, "snapshot", "take", "w", name).returncode == 0


def assert_consistent(hv: Hypervisor, folder: Path) -> SnapshotTree:
    result = cli(hv.datastore.root, "snapshot", "list", "w", "--json")  # the next operation: recovers
    assert result.returncode == 0, result.stderr
    assert not (folder / JOURNAL_NAME).exists()
    tree = SnapshotTree.load(folder / "w.vmsd")
    used: set[Path] = set()
    tops = [top(folder)] + [folder / f for s in tree.snapshots.values() for f in s.disks.values()]
    for path in tops:
        chain = resolve_chain(path, format_for(path), lambda base, name: hv.datastore.resolve(base, name))
        used.update(Path(os.path.realpath(layer.path)) for layer in chain)
    on_disk = {Path(os.path.realpath(p)) for p in folder.iterdir()
               if p.suffix in (".qcow2", ".vmdk") and p.name != EFI_VARS}
    assert on_disk == used, f"orphaned or missing layers: {on_disk ^ used}"
    for image in on_disk | ({folder / EFI_VARS} if (folder / EFI_VARS).exists() else set()):
        code, output = check_disk(read_layer(image, format_for(image)))
        assert code == 0, output
    assert [vm.name for vm in Hypervisor(hv.datastore.root).list_vms()] == sorted(
        p.name for p in hv.datastore.root.iterdir() if not p.name.startswith("."))
    return tree


@pytest.mark.parametrize("crash_at, completes", [
    ("take:prepared", False), ("take:step0", True), ("take:step1", True)])
def test_kill_during_take(vm, crash_at, completes):
    hv, folder = vm
    take(hv.datastore.root, folder, "s0", 0)
    write(top(folder), 1)
    result = cli(hv.datastore.root, "snapshot", "take", "w", "s1", crash_at=crash_at)
    assert result.returncode == -signal.SIGKILL
    tree = assert_consistent(hv, folder)
    names = [s.name for s in tree.snapshots.values()]
    assert names == (["s0", "s1"] if completes else ["s0"])
    assert holds(top(folder), 2)
    if not completes:  # a re-run does it
        assert cli(hv.datastore.root, "snapshot", "take", "w", "s1").returncode == 0
        assert [s.name for s in assert_consistent(hv, folder).snapshots.values()] == ["s0", "s1"]


@pytest.mark.parametrize("crash_at, completes", [
    ("revert:prepared", False), ("revert:step0", True), ("revert:step1", True), ("revert:step2", True)])
def test_kill_during_revert(vm, crash_at, completes):
    hv, folder = vm
    take(hv.datastore.root, folder, "s0", 0)
    take(hv.datastore.root, folder, "s1", 1)
    write(top(folder), 2)
    result = cli(hv.datastore.root, "snapshot", "revert", "w", "s0", crash_at=crash_at)
    assert result.returncode == -signal.SIGKILL
    tree = assert_consistent(hv, folder)
    assert tree.snapshots[tree.current].name == ("s0" if completes else "s1")
    assert holds(top(folder), 1 if completes else 3)
    assert holds(folder / tree.find("s1", "w").disks["scsi0:0"], 2)


@pytest.mark.parametrize("crash_at", ["delete:committed", "delete:step0", "delete:step1", "delete:step2"])
def test_kill_while_deleting_a_middle_snapshot(vm, crash_at):
    hv, folder = vm
    for i, name in enumerate(("s0", "s1", "s2")):
        take(hv.datastore.root, folder, name, i)
    write(top(folder), 3)
    result = cli(hv.datastore.root, "snapshot", "delete", "w", "s1", crash_at=crash_at)
    assert result.returncode == -signal.SIGKILL
    tree = assert_consistent(hv, folder)  # deleting rolls forward once it has begun
    assert [s.name for s in tree.snapshots.values()] == ["s0", "s2"]
    assert holds(folder / tree.find("s0", "w").disks["scsi0:0"], 1)
    assert holds(folder / tree.find("s2", "w").disks["scsi0:0"], 3)
    assert holds(top(folder), 4)


@pytest.mark.parametrize("crash_at", ["delete:step0", "delete:step1", "delete:step2"])
def test_kill_while_deleting_a_root_with_two_branches(vm, crash_at):
    hv, folder = vm
    root = hv.datastore.root
    take(root, folder, "s0", 0)
    take(root, folder, "s1", 1)
    assert cli(root, "snapshot", "revert", "w", "s0").returncode == 0
    take(root, folder, "s2", 2)
    result = cli(root, "snapshot", "delete", "w", "s0", crash_at=crash_at)
    assert result.returncode == -signal.SIGKILL
    tree = assert_consistent(hv, folder)
    assert sorted(s.name for s in tree.snapshots.values()) == ["s1", "s2"]
    assert holds(folder / tree.find("s1", "w").disks["scsi0:0"], 2)
    s2 = folder / tree.find("s2", "w").disks["scsi0:0"]
    assert subprocess.run(["qemu-io", "-r", "-f", "qcow2", "-c", f"read -P {0x41} 0 64k", "-c",
                           "read -P 0 65536 64k", "-c", f"read -P {0x43} 131072 64k", str(s2)],
                          capture_output=True, text=True).stdout.count("read 65536/65536") == 3


@pytest.mark.parametrize("crash_at, completes", [("clone:prepared", False), ("clone:step0", True)])
def test_kill_during_a_linked_clone(vm, crash_at, completes):
    hv, folder = vm
    root = hv.datastore.root
    take(root, folder, "s0", 0)
    result = cli(root, "vm", "clone", "w", "c", "--linked", "--snapshot", "s0", crash_at=crash_at)
    assert result.returncode == -signal.SIGKILL
    assert_consistent(hv, folder)
    listed = [vm.name for vm in Hypervisor(root).list_vms()]
    assert listed == (["c", "w"] if completes else ["w"])
    assert not any((root / ".minivisor" / "clones").iterdir())
    if completes:
        assert holds(root / "c" / "c.qcow2", 1)
        assert Hypervisor(root).datastore.catalog.clones_of(hv.get_vm("w").uuid) == [("c", 1)]
    else:
        assert cli(root, "vm", "clone", "w", "c", "--linked", "--snapshot", "s0").returncode == 0


@pytest.fixture
def efi_vm(vm) -> tuple[Hypervisor, Path]:
    """An EFI VM with its UEFI variable store; the firmware's writes to it stand in as patterns (``write``)."""
    hv, folder = vm
    with open(folder / "w.vmx", "a") as vmx:
        vmx.write('firmware = "efi"\n')
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(folder / EFI_VARS), "1M"], check=True)
    return hv, folder


def take_with_variables(root: Path, folder: Path, name: str, index: int) -> None:
    """The disk and the variables both change, then a snapshot keeps them."""
    write(folder / EFI_VARS, index)
    take(root, folder, name, index)


def kept_variables(folder: Path, tree: SnapshotTree) -> set[str]:
    """The store's internal snapshots (``qemu-img info``), asserted to be exactly one per snapshot of the tree."""
    kept = internal_snapshots(folder / EFI_VARS)
    assert kept == {snapshot_tag(uid) for uid in tree.snapshots}
    return kept


@pytest.mark.parametrize("crash_at", ["take:step1", "take:step2"])  # step1: the disks switched, the store not kept
def test_kill_before_a_snapshot_keeps_the_efi_variables(efi_vm, crash_at):
    hv, folder = efi_vm
    root = hv.datastore.root
    write(folder / EFI_VARS, 0)
    result = cli(root, "snapshot", "take", "w", "s0", crash_at=crash_at)
    assert result.returncode == -signal.SIGKILL
    tree = assert_consistent(hv, folder)  # recovery keeps the store
    assert [s.name for s in tree.snapshots.values()] == ["s0"] and kept_variables(folder, tree)
    write(folder / EFI_VARS, 1)  # the firmware writes on; a revert brings the kept variables back
    assert cli(root, "snapshot", "revert", "w", "s0").returncode == 0
    assert holds(folder / EFI_VARS, 1)


@pytest.mark.parametrize("crash_at", ["revert:step1", "revert:step2", "revert:step3"])
def test_kill_between_reverting_the_disks_and_the_efi_variables(efi_vm, crash_at):
    """step2: the disks are the snapshot's (its tree, specfile and delta; the old top gone), the store is not."""
    hv, folder = efi_vm
    root = hv.datastore.root
    take_with_variables(root, folder, "s0", 0)
    take_with_variables(root, folder, "s1", 1)
    write(folder / EFI_VARS, 2)
    write(top(folder), 2)
    result = cli(root, "snapshot", "revert", "w", "s0", crash_at=crash_at)
    assert result.returncode == -signal.SIGKILL
    tree = assert_consistent(hv, folder)  # recovery restores the store
    assert tree.snapshots[tree.current].name == "s0" and holds(top(folder), 1)
    assert holds(folder / EFI_VARS, 1)  # s0's variables, not the newer ones
    assert len(kept_variables(folder, tree)) == 2
    assert cli(root, "snapshot", "revert", "w", "s1").returncode == 0
    assert holds(folder / EFI_VARS, 2) and holds(top(folder), 2)


@pytest.mark.parametrize("crash_at", [f"delete:step{i}" for i in range(5)])  # step3: merged, the store's not dropped
def test_kill_while_deleting_a_snapshot_forgets_its_efi_variables(efi_vm, crash_at):
    hv, folder = efi_vm
    root = hv.datastore.root
    take_with_variables(root, folder, "s0", 0)
    take_with_variables(root, folder, "s1", 1)
    write(folder / EFI_VARS, 2)
    result = cli(root, "snapshot", "delete", "w", "s1", crash_at=crash_at)
    assert result.returncode == -signal.SIGKILL
    tree = assert_consistent(hv, folder)
    assert [s.name for s in tree.snapshots.values()] == ["s0"]
    assert kept_variables(folder, tree) == {snapshot_tag(1)}
    assert holds(folder / EFI_VARS, 3)  # deleting a snapshot leaves the variables as they are


def test_kill_during_a_convert_leaves_no_file(vm):
    hv, folder = vm
    write(top(folder), 0)
    result = cli(hv.datastore.root, "disk", "convert", str(folder / "w.qcow2"), str(folder / "copy.vmdk"),
                 "--json", crash_at="convert:written")
    assert result.returncode == -signal.SIGKILL
    Hypervisor(hv.datastore.root)  # opening the datastore clears dead processes' staging folders
    assert not list(folder.glob("copy*")) and not any((hv.datastore.meta / "staging").iterdir())
    assert cli(hv.datastore.root, "disk", "convert", str(folder / "w.qcow2"), str(folder / "copy.vmdk"),
               "--json").returncode == 0
    assert holds(folder / "copy.vmdk", 1)


@pytest.mark.parametrize(("crash_at", "completes"), [("add-disk:created", False), ("add-disk:step0", True)])
def test_kill_while_adding_a_disk_leaves_it_added_or_no_file(vm, crash_at, completes):
    hv, folder = vm
    before = (folder / "w.vmx").read_bytes()
    result = cli(hv.datastore.root, "vm", "disk", "w", "add", "8M", crash_at=crash_at)
    assert result.returncode == -signal.SIGKILL
    assert cli(hv.datastore.root, "snapshot", "list", "w").returncode == 0  # the next operation: recovers
    assert not (folder / JOURNAL_NAME).exists()
    nodes = [d["node"] for d in hv.vm_disks("w")]
    if completes:  # the specfile naming the disk was committed: written
        assert nodes == ["scsi0:0", "scsi0:1"]
        assert check_disk(read_layer(folder / "w_scsi0-1.qcow2", "qcow2"))[0] == 0
    else:  # not yet: the disk's file is gone, the specfile as it was
        assert nodes == ["scsi0:0"] and (folder / "w.vmx").read_bytes() == before
        assert_consistent(hv, folder)  # no layer but the one the specfile names
    again = cli(hv.datastore.root, "vm", "disk", "w", "add", "8M", "--json")  # no orphan stands in the way
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["node"] == ("scsi0:2" if completes else "scsi0:1")


@pytest.mark.qemu
def test_kill_during_online_snapshots_of_a_running_vm(hv, appliance_image):
    create_guest(hv, "w", appliance_image, memory_mib=128, network="none")
    folder = hv.datastore.root / "w"
    root = hv.datastore.root
    hv.start_vm("w", wait_ready=True, timeout=90)
    try:
        expected: list[str] = []
        # the memory state is saved before the commit, so every snapshot that survives has it
        for crash_at, completes, memory in (("take-online:saved", False, True),
                                            ("take-online:committed", False, False),
                                            ("take-online:switched", True, True),
                                            ("take-online:step0", True, True)):
            name = crash_at.split(":")[1]
            result = cli(root, "snapshot", "take", "w", name, crash_at=crash_at)
            assert result.returncode == -signal.SIGKILL
            listed = cli(root, "snapshot", "list", "w", "--json")  # recovers, and resumes the paused guest
            assert listed.returncode == 0 and not (folder / JOURNAL_NAME).exists()
            expected += [name] if completes else []
            tree = SnapshotTree.load(folder / "w.vmsd")
            assert [s.name for s in tree.snapshots.values()] == expected
            if completes:
                assert (tree.find(name, "w").memory_file is not None) == memory
            assert hv.exec_in_vm("w", "echo alive", timeout=30).output.strip() == "alive"
    finally:
        hv.stop_vm("w", hard=True)
    assert_consistent(hv, folder)
    hv.snapshot_revert("w", "switched")  # the memory snapshot that survived its writer's death works
    assert hv.exec_in_vm("w", "echo back", timeout=30).output.strip() == "back"
    hv.stop_vm("w", hard=True)


@pytest.mark.qemu
def test_kill_while_a_vmdk_vms_disks_are_closed_for_its_memory_save(hv, appliance_image):
    """The save closes a VMDK disk's chain under its gate: killed then, the next operation opens the
    chain again from the specfile and resumes the guest, which reads and writes its own disk."""
    hv.create_vm("w", memory_mib=128, disk_size="1M", network="none")
    folder = hv.datastore.root / "w"
    (folder / "w.qcow2").unlink()
    convert_disk((read_layer(appliance_image, "raw"),), folder / "w.vmdk", "vmdk")
    (folder / "w.vmx").write_text((folder / "w.vmx").read_text().replace('"w.qcow2"', '"w.vmdk"'))
    hv.start_vm("w", wait_ready=True, timeout=90)
    try:
        for crash_at in ("take-online:closed", "take-online:saved"):
            result = cli(hv.datastore.root, "snapshot", "take", "w", "hot", "--memory", crash_at=crash_at)
            assert result.returncode == -signal.SIGKILL
            listed = cli(hv.datastore.root, "snapshot", "list", "w", "--json")  # recovers: reopens, resumes
            assert listed.returncode == 0 and listed.stdout.strip() == "[]", listed.stderr
            assert not (folder / JOURNAL_NAME).exists() and not list(folder.glob("*.vmsn*"))
            assert hv.get_vm("w").state.value == "running"
            written = hv.exec_in_vm("w", "dd if=/dev/urandom of=/dev/sda bs=4k count=4 seek=2000 conv=fsync "
                                         "2>/dev/null && dd if=/dev/sda bs=4k count=1 2>/dev/null | wc -c")
            assert written.output.split()[-1] == "4096"  # its disk, not the empty placeholder
        hv.snapshot_take("w", "hot", memory=True)  # and the next save works
    finally:
        hv.stop_vm("w", hard=True)
    assert_consistent(hv, folder)
    assert sorted(p.name for p in folder.glob("*.vmdk")) == ["w-000001.vmdk", "w.vmdk"]


@pytest.mark.qemu
def test_kill_minivisor_and_the_vmm_during_an_online_snapshot(hv, appliance_image):
    """Both die after the disks switched; the memory state was written before: a whole snapshot."""
    create_guest(hv, "w", appliance_image, memory_mib=128, network="none")
    folder = hv.datastore.root / "w"
    hv.start_vm("w", wait_ready=True, timeout=90)
    vmm_pid = hv.get_vm("w").pid
    result = cli(hv.datastore.root, "snapshot", "take", "w", "hot", "--memory", crash_at="take-online:switched")
    assert result.returncode == -signal.SIGKILL
    os.kill(vmm_pid, signal.SIGKILL)
    tree = assert_consistent(hv, folder)  # the VM is off now: recovery rolls forward without QMP
    assert hv.get_vm("w").state.value == "poweredOff"
    (snap,) = tree.snapshots.values()
    assert snap.name == "hot" and [p.name for p in folder.glob("*.vmsn*")] == [snap.memory_file]
    hv.start_vm("w", wait_ready=True, timeout=90)  # boots from the new delta on the frozen disk
    hv.stop_vm("w", hard=True)
    hv.snapshot_revert("w", "hot")  # and the memory state brings the guest back running
    try:
        assert hv.exec_in_vm("w", "echo back", timeout=30).output.strip() == "back"
    finally:
        hv.stop_vm("w", hard=True)
    assert_consistent(hv, folder)


@pytest.mark.qemu
def test_kill_while_the_vmm_merges_a_snapshot(hv, appliance_image):
    """minivisor dies with the VMM's block-commit job started; the next operation completes it."""
    create_guest(hv, "w", appliance_image, memory_mib=128, network="none")
    folder = hv.datastore.root / "w"
    hv.start_vm("w", wait_ready=True, timeout=90)
    try:
        hv.snapshot_take("w", "s1", memory=False)
        hv.exec_in_vm("w", "echo keep > /tmp/k")
        result = cli(hv.datastore.root, "snapshot", "delete", "w", "s1", crash_at="delete:online-commit-started")
        assert result.returncode == -signal.SIGKILL
        listed = cli(hv.datastore.root, "snapshot", "list", "w", "--json")
        assert listed.returncode == 0 and listed.stdout.strip() == "[]"
        assert not (folder / JOURNAL_NAME).exists()
        assert hv.exec_in_vm("w", "cat /tmp/k").output.strip() == "keep"  # the guest ran on, undisturbed
        assert 'scsi0:0.fileName = "w.qcow2"' in (folder / "w.vmx").read_text()
    finally:
        hv.stop_vm("w", hard=True)
    assert_consistent(hv, folder)


@pytest.mark.qemu
def test_kill_while_the_vmm_streams_a_snapshot_into_the_running_layer(hv, appliance_image):
    create_guest(hv, "w", appliance_image, memory_mib=128, network="none")
    folder = hv.datastore.root / "w"
    hv.snapshot_take("w", "s1")
    hv.snapshot_take("w", "s2")
    hv.snapshot_revert("w", "s1")  # s1 now has two branches: s2's layer and the current one
    hv.start_vm("w", wait_ready=True, timeout=90)
    try:
        hv.exec_in_vm("w", "echo keep > /tmp/k")
        result = cli(hv.datastore.root, "snapshot", "delete", "w", "s1", crash_at="delete:online-stream-started")
        assert result.returncode == -signal.SIGKILL
        listed = cli(hv.datastore.root, "snapshot", "list", "w", "--json")
        assert listed.returncode == 0 and [s["name"] for s in json.loads(listed.stdout)] == ["s2"]
        assert hv.exec_in_vm("w", "cat /tmp/k").output.strip() == "keep"
    finally:
        hv.stop_vm("w", hard=True)
    assert_consistent(hv, folder)
    assert not (folder / "w.qcow2").exists()  # s1's layer is gone; both branches hold its data now
    hv.start_vm("w", wait_ready=True, timeout=90)  # the streamed layer boots on its own
    hv.stop_vm("w", hard=True)
