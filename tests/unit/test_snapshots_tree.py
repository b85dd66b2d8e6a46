"""The snapshot tree in VMware's .vmsd keys, delta names, and the journal's phases (no QEMU)."""

from __future__ import annotations

import pytest

from minivisor.errors import ConflictError, NotFoundError, SpecError
from minivisor.storage.journal import JOURNAL_NAME, Journal, write_step
from minivisor.spec.vmsd import Snapshot, SnapshotTree
from minivisor.storage.snapshots import delta_name

# A .vmsd as VMware Workstation writes it (CRLF, slots past 9, a negative createTimeLow).
WORKSTATION_VMSD = (
    b'.encoding = "UTF-8"\r\nsnapshot.lastUID = "12"\r\nsnapshot.current = "12"\r\n'
    b'snapshot10.uid = "11"\r\nsnapshot10.filename = "vm-Snapshot11.vmsn"\r\nsnapshot10.displayName = "base"\r\n'
    b'snapshot10.description = "line one|0Aline two"\r\nsnapshot10.createTimeHigh = "378434"\r\n'
    b'snapshot10.createTimeLow = "-1183654966"\r\nsnapshot10.numDisks = "1"\r\n'
    b'snapshot10.disk0.fileName = "vm.vmdk"\r\nsnapshot10.disk0.node = "scsi0:0"\r\n'
    b'snapshot.numSnapshots = "2"\r\n'
    b'snapshot11.uid = "12"\r\nsnapshot11.parent = "11"\r\nsnapshot11.displayName = "after"\r\n'
    b'snapshot11.numDisks = "1"\r\nsnapshot11.disk0.fileName = "vm-000001.vmdk"\r\n'
    b'snapshot11.disk0.node = "scsi0:0"\r\n'
)


def test_a_workstation_vmsd_is_read(tmp_path):
    path = tmp_path / "vm.vmsd"
    path.write_bytes(WORKSTATION_VMSD)
    tree = SnapshotTree.load(path)
    assert tree.current == 12 and tree.last_uid == 12
    base, after = tree.snapshots[11], tree.snapshots[12]
    assert (base.name, base.parent, base.memory_file) == ("base", None, "vm-Snapshot11.vmsn")
    assert base.description == "line one\nline two"
    assert base.created_us == (378434 << 32) | (-1183654966 & 0xFFFFFFFF)
    assert (after.parent, after.disks) == (11, {"scsi0:0": "vm-000001.vmdk"})


@pytest.mark.parametrize("parents", [{1: 1}, {1: 2, 2: 1}, {1: None, 2: 3, 3: 4, 4: 2}],
                         ids=["itself", "two", "below-a-root"])
def test_a_vmsd_whose_parent_links_loop_is_refused(tmp_path, parents):
    """A snapshot that was its own ancestor was in no listing, yet revert found it, and deleting it said
    'deleted' while it stayed (its children, itself among them, went to its parent: itself)."""
    lines = ['.encoding = "UTF-8"', f'snapshot.lastUID = "{max(parents)}"']
    for slot, (uid, parent) in enumerate(parents.items()):
        lines += [f'snapshot{slot}.uid = "{uid}"', f'snapshot{slot}.displayName = "s{uid}"']
        lines += [f'snapshot{slot}.parent = "{parent}"'] if parent is not None else []
    path = tmp_path / "vm.vmsd"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SpecError, match="its own ancestor"):
        SnapshotTree.load(path)


def test_a_vmsd_where_two_snapshots_share_a_uid_is_refused(tmp_path):
    """The second hid the first (the last one read won): in no listing, and gone from the .vmsd at its next
    rewrite (the next snapshot taken), its disks then named by nothing."""
    path = tmp_path / "vm.vmsd"
    path.write_text('.encoding = "UTF-8"\nsnapshot.lastUID = "2"\nsnapshot0.uid = "2"\nsnapshot0.displayName = '
                    '"first"\nsnapshot1.uid = "2"\nsnapshot1.displayName = "second"\n')
    with pytest.raises(SpecError, match="two snapshots have the uid 2 .'first' and snapshot1."):
        SnapshotTree.load(path)


def new_snapshot(uid: int, parent: int | None) -> Snapshot:
    return Snapshot(uid, f"s{uid}", parent, {"scsi0:0": "vm-000002.vmdk"}, "taken\nhere", (1 << 50) + uid,
                    config='.encoding = "UTF-8"\nmemSize = "512"\ndisplayName = "a|b"\n')


def test_a_snapshot_is_added_to_a_workstation_vmsd_after_its_last_slot_and_nothing_else_changes(tmp_path):
    path = tmp_path / "vm.vmsd"
    path.write_bytes(WORKSTATION_VMSD + b'snapshot15.disk0.node = "scsi0:1"\r\nsnapshot.mru0.uid = "12"\r\n')
    tree, doc = SnapshotTree.read(path)
    snap = new_snapshot(13, 12)
    written = tree.bytes_with(snap, doc)
    assert doc.to_bytes() == path.read_bytes()  # added to a copy: the document read is as it was
    # every line read stays as it was (a key of slot 15 without a uid included); the new keys follow in slot 16
    old_lines = [line for line in path.read_bytes().split(b"\r\n") if line]
    new_lines = written.split(b"\r\n")
    counters = {b"snapshot.lastUID", b"snapshot.current", b"snapshot.numSnapshots"}
    assert [line for line in new_lines[:len(old_lines)] if line.split(b" ")[0] not in counters] == \
        [line for line in old_lines if line.split(b" ")[0] not in counters]
    assert all(line.startswith(b"snapshot16.") for line in new_lines[len(old_lines):] if line)
    path.write_bytes(written)
    again = SnapshotTree.load(path)
    assert again == SnapshotTree({**tree.snapshots, 13: snap}, 13, 13)
    assert list(again.snapshots) == [11, 12, 13] and again.snapshots[13].config == snap.config


def test_a_snapshot_added_to_a_tree_minivisor_wrote_gives_the_bytes_of_the_whole_tree_written_again(tmp_path):
    path = tmp_path / "vm.vmsd"
    tree = SnapshotTree()
    for uid in range(1, 5):
        snap = new_snapshot(uid, tree.current)
        path.write_bytes(tree.bytes_with(snap, SnapshotTree.read(path)[1]))
        tree = SnapshotTree({**tree.snapshots, uid: snap}, uid, uid)
        assert path.read_bytes() == tree.to_bytes()
        assert SnapshotTree.load(path) == tree


def test_the_tree_round_trips_through_vmware_keys(tmp_path):
    config = '.encoding = "UTF-8"\nmemSize = "512"\ndisplayName = "a|b"\n'
    tree = SnapshotTree({1: Snapshot(1, "a", None, {"scsi0:0": "w.qcow2"}, "x\ny", (1 << 50) + (1 << 31),
                                     config=config),
                         2: Snapshot(2, 'b "quoted"', 1, {"scsi0:0": "w-000001.qcow2", "sata0:1": "d.qcow2"},
                                     memory_file="w-Snapshot2.vmsn")}, 2, 2)
    data = tree.to_bytes()
    assert b'snapshot0.createTimeLow = "-2147483648"' in data  # signed, as VMware stores it
    assert b'|22quoted|22' in data and b'x|0Ay' in data
    (tmp_path / "w.vmsd").write_bytes(data)
    again = SnapshotTree.load(tmp_path / "w.vmsd")
    assert again == tree


def test_list_is_depth_first_with_the_current_position_marked():
    tree = SnapshotTree({1: Snapshot(1, "root", None, {}), 2: Snapshot(2, "left", 1, {}),
                         3: Snapshot(3, "leaf", 2, {}), 4: Snapshot(4, "right", 1, {})}, 4, 4)
    listed = [(s["name"], s["depth"], s["current"]) for s in tree.to_list()]
    assert listed == [("root", 0, False), ("left", 1, False), ("leaf", 2, False), ("right", 1, True)]
    assert tree.ancestors(3) == [3, 2, 1]


def test_find_by_name_or_uid_and_clear_errors():
    tree = SnapshotTree({1: Snapshot(1, "a", None, {}), 2: Snapshot(2, "a", 1, {}), 3: Snapshot(3, "c", 1, {})},
                        3, 3)
    assert tree.find("c", "vm").uid == 3 and tree.find("3", "vm").uid == 3
    with pytest.raises(ConflictError):
        tree.find("a", "vm")
    with pytest.raises(NotFoundError) as missing:
        tree.find("zzz", "vm")
    assert "a, a, c" in missing.value.hint


def test_delta_names_follow_vmware_and_skip_taken_ones(tmp_path):
    (tmp_path / "w-000001.qcow2").touch()
    (tmp_path / "w-000007.qcow2").touch()
    assert delta_name(tmp_path, "w.qcow2", set()) == "w-000008.qcow2"
    assert delta_name(tmp_path, "w-000007.qcow2", {"w-000008.qcow2"}) == "w-000009.qcow2"
    assert delta_name(tmp_path, "CentOS-000002.vmdk", set()) == "CentOS-000001.vmdk"


def test_the_journal_rolls_back_a_prepare_and_rolls_forward_a_commit(tmp_path):
    made = tmp_path / "new.qcow2"
    journal = Journal(tmp_path, "take")
    journal.begin([made])
    made.write_bytes(b"half")
    Journal.load(tmp_path).rollback()  # what the next process does after a crash here
    assert not made.exists() and not (tmp_path / JOURNAL_NAME).exists()

    (tmp_path / "old").write_bytes(b"old")
    journal = Journal(tmp_path, "take")
    journal.commit([write_step("spec.vmx", b"new contents"), ["unlink", "old"]])
    (tmp_path / "spec.vmx").write_bytes(b"new contents")  # crashed after doing step 0, before recording it
    Journal.load(tmp_path).run()
    assert (tmp_path / "spec.vmx").read_bytes() == b"new contents" and not (tmp_path / "old").exists()
    assert not (tmp_path / JOURNAL_NAME).exists()


def test_a_snapshot_a_vmware_trees_charset_cannot_hold_is_added_with_the_tree_written_again_in_utf8(tmp_path):
    path = tmp_path / "vm.vmsd"
    path.write_bytes(b'.encoding = "windows-1252"\r\nsnapshot.lastUID = "1"\r\nsnapshot.current = "1"\r\n'
                     b'snapshot.numSnapshots = "1"\r\nsnapshot0.uid = "1"\r\nsnapshot0.filename = "vm-Snapshot1.vmsn"\r\n'
                     b'snapshot0.displayName = "caf\xe9"\r\nsnapshot0.numDisks = "0"\r\n')
    tree, doc = SnapshotTree.read(path)
    snap = Snapshot(2, "→ 新", 1, {}, config='.encoding = "UTF-8"\ndisplayName = "→"\n')
    written = tree.bytes_with(snap, doc)
    assert written.startswith(b'.encoding = "UTF-8"')
    path.write_bytes(written)
    again = SnapshotTree.load(path)
    assert [s.name for s in again.snapshots.values()] == ["café", "→ 新"] and again.snapshots[2].config == snap.config


@pytest.mark.parametrize("name", ["²", "1" * 5000])
def test_a_snapshot_asked_for_by_a_name_that_is_no_uid_is_not_found(tmp_path, name):
    """A name made of what str.isdigit() calls digits was tried as a uid: '²' and 5,000 digits, which int()
    refuses, were internal errors (ValueError) of revert, delete and show."""
    path = tmp_path / "vm.vmsd"
    path.write_bytes(WORKSTATION_VMSD)
    with pytest.raises(NotFoundError, match="has no snapshot named"):
        SnapshotTree.load(path).find(name, "vm")
