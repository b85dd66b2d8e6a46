"""Every list, range, count and size from outside has an upper bound, checked before any work.

An attacker writes the specfile (or its .vmsd) or calls the core API with
absurd values. Each refusal must be one short line naming the problem, the
error's exit code, and nothing changed: no QEMU started, no file or catalog
row touched, no event logged. Time is never measured: that the check comes
first is proven by what did not happen.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
from cli_runner import run_cli
from refusals import assert_one_clear_line, datastore_state

from minivisor import Hypervisor
from minivisor.errors import ArgumentError, ConflictError, SpecError, StateError
from minivisor.service.responses import http_status
from minivisor.spec.vmsd import Snapshot, SnapshotTree
from minivisor.vmm.states import VmState

SHORT = 300  # characters: an error line that echoes an attacker's value must stay about this short


@pytest.fixture
def hv(hv):
    """The shared fixture's datastore (VMs powered off at the end) with one small VM named "good"."""
    hv.create_vm("good", memory_mib=64, disk_size="16M", network="none")
    return hv


def cli(hv: Hypervisor, *args: str):
    env = {k: v for k, v in os.environ.items() if k not in ("MINIVISOR_DEBUG",)}
    env["MINIVISOR_DIRECT"] = "1"
    return run_cli(*args, datastore=hv.datastore.root, env=env, timeout=120)


def specfile(hv: Hypervisor, name: str = "good") -> Path:
    return hv.datastore.root / name / f"{name}.vmx"


def add_lines(hv: Hypervisor, data: bytes, name: str = "good") -> None:
    with open(specfile(hv, name), "ab") as handle:
        handle.write(data)


def assert_nothing_ran(hv: Hypervisor, name: str = "good") -> None:
    """No VMM for the VM: powered off, no runtime record, no QEMU process naming its folder."""
    vm = hv.get_vm(name)
    assert (vm.state, vm.pid) == (VmState.POWERED_OFF, None)
    assert not (hv.datastore.root / name / "runtime.json").exists()
    folder = os.fsencode(hv.datastore.root / name)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            assert folder not in Path(f"/proc/{pid}/cmdline").read_bytes(), f"process {pid} runs on {folder}"
        except OSError:
            continue


def refused_everywhere(hv: Hypervisor, exit_code: int, *words: str, contents: bool = True) -> None:
    """``vm explain`` and ``vm start`` refuse the VM in one short line, and nothing changes or runs."""
    before = datastore_state(hv.datastore.root, contents=contents)
    for command in ("explain", "start"):
        result = cli(hv, "vm", command, "good")
        assert_one_clear_line(result, exit_code, *words)
        assert len(result.stderr) < SHORT, result.stderr
        assert result.stdout == ""
    assert datastore_state(hv.datastore.root, contents=contents) == before
    assert_nothing_ran(hv)


# -- sched.cpu.affinity -------------------------------------------------------------------------------


@pytest.mark.parametrize("affinity", ["0-20000000", "0-" + "9" * 5000, "20000000", "3-1", "0,2-99999"])
def test_an_affinity_range_is_bounded_before_it_is_expanded(hv, affinity):
    # "0-20000000" once became a 20-million-number list: 28 s, 2.7 GB and a 189 MB error line
    add_lines(hv, f'sched.cpu.affinity = "{affinity}"\n'.encode())
    refused_everywhere(hv, SpecError.exit_code, "sched.cpu.affinity", "is not a range of host CPUs")
    with pytest.raises(SpecError) as caught:
        hv.start_vm("good")
    assert len(caught.value.one_line()) < SHORT
    assert_nothing_ran(hv)


def test_an_affinity_list_of_a_hundred_thousand_characters_is_one_short_line(hv):
    add_lines(hv, b'sched.cpu.affinity = "' + b"0,x" * 33_000 + b'"\n')
    refused_everywhere(hv, SpecError.exit_code, "sched.cpu.affinity", "is not a CPU list", "...")


def test_an_affinity_beyond_this_host_names_its_cpus_as_ranges(hv):
    add_lines(hv, b'sched.cpu.affinity = "0-8191"\n')  # every CPU Linux can number: valid, not on this host
    refused_everywhere(hv, SpecError.exit_code, "sched.cpu.affinity names CPU(s)", "-8191 this host")


# -- device counts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("key, words", [
    ("ethernet10.present", ("ethernet10.present", "last a VM can have, ethernet9")),
    ("serial4.present", ("serial4.present", "serial3")),
    ("floppy2.present", ("floppy2.present", "floppy1")),
    ("scsi4.present", ("scsi4.present", "scsi3")),
    ("ide2.present", ("ide2.present", "ide1")),
    ("nvme99999999999999999999.present", ("nvme9999", "nvme3")),
    ("scsi0:16.present", ("scsi0:16 is not a valid device slot",)),
    ("scsi0:" + "9" * 5000 + ".present", ("names no device slot", "...")),
])
def test_a_device_beyond_what_a_vm_can_have_is_refused_not_dropped(hv, key, words):
    add_lines(hv, f'{key} = "TRUE"\n'.encode())
    refused_everywhere(hv, SpecError.exit_code, *words)


def test_a_disk_on_a_fifth_scsi_controller_is_refused_not_silently_left_out(hv):
    add_lines(hv, b'scsi4.present = "TRUE"\nscsi4:0.fileName = "good.qcow2"\n')
    refused_everywhere(hv, SpecError.exit_code, "scsi4.present")


# -- the size of a specfile -------------------------------------------------------------------------


def test_a_megabyte_value_refuses_the_file_without_echoing_it(hv):
    add_lines(hv, b'annotation = "' + b"A" * (1 << 20) + b'"\n')
    refused_everywhere(hv, SpecError.exit_code, "larger than the 256 KiB")


def test_a_line_longer_than_a_specfile_line_is_refused_by_its_number(hv):
    line_number = len(specfile(hv).read_bytes().splitlines()) + 1
    add_lines(hv, b'annotation = "' + b"A" * (200 * 1024) + b'"\n')
    refused_everywhere(hv, SpecError.exit_code, f"good.vmx:{line_number}", "bytes long")


def test_thousands_of_keys_refuse_the_file(hv):
    add_lines(hv, b"".join(b"k%d=1\n" % i for i in range(20_000)))  # 20,000 keys in 150 KB
    refused_everywhere(hv, SpecError.exit_code, "lines, more than the 10000")


def test_a_sparse_terabyte_specfile_is_not_read(hv):
    with open(specfile(hv), "r+b") as handle:
        handle.truncate(1 << 40)  # a hole: reading it whole would take hours and all memory
    refused_everywhere(hv, SpecError.exit_code, "larger than the 256 KiB", contents=False)
    listed = cli(hv, "vm", "show", "good")  # the VM is still shown, with its problem in one line
    assert listed.returncode == 0 and "specfile unreadable" in listed.stdout and len(listed.stdout) < 4000


def test_nul_bytes_are_one_line(hv):
    add_lines(hv, b'memSize = "64\x00\x00\x00"\n' + b"\x00" * 5000 + b"\n")
    refused_everywhere(hv, SpecError.exit_code, "NUL byte", "more malformed lines")


@pytest.mark.qemu  # explaining a VM runs the KVM probe
def test_thousands_of_device_keys_still_read_and_list_what_is_ignored(hv):
    # scsi3 is absent: its devices are ignored, once each (this used to cost keys x devices)
    add_lines(hv, b"".join(b'scsi3:%d.fileName = "x"\nguestinfo.k%d = "v"\n' % (i % 900, i) for i in range(4000)))
    explained = cli(hv, "vm", "explain", "good", "--json")
    assert explained.returncode == 0, explained.stderr
    assert "guestinfo.k3999" in explained.stdout


@pytest.mark.parametrize("key, value, words", [
    ("ethernet0.networkName", "n" * 5000, ("networkName is 5000 characters",)),
    ("minivisor.readyLine", "r" * 5000, ("readyLine is 5000 characters",)),
    ("firmware", "\x1b" * 5000, ("firmware = '\\x1b\\x1b", "...")),
    ("memSize", "9" * 100_000, ("memSize = '9999", "...")),
    ("sched.cpu.shares", "\u00b2" * 100, ("sched.cpu.shares", "...")),  # a digit to isdigit(), not to int()
])
def test_long_values_are_echoed_as_short_excerpts(hv, key, value, words):
    if key.startswith("ethernet0"):
        add_lines(hv, b'ethernet0.present = "TRUE"\nethernet0.connectionType = "custom"\n')
    add_lines(hv, f'{key} = "{value}"\n'.encode())
    refused_everywhere(hv, SpecError.exit_code, *words)


# -- the .vmsd ---------------------------------------------------------------------------------------


def vmsd(hv: Hypervisor) -> Path:
    return hv.datastore.root / "good" / "good.vmsd"


def state_but_locks(hv: Hypervisor) -> dict[str, str]:
    """The datastore's state without lock files: a snapshot operation takes the VM's locks (creating
    their empty files on first use) before it reads the .vmsd under them."""
    return {k: v for k, v in datastore_state(hv.datastore.root).items() if not k.endswith(".lck")}


@pytest.mark.parametrize("tree, words", [
    (b"".join(b'snapshot%d.uid = "%d"\nsnapshot%d.displayName = "s%d"\n' % (i, i + 1, i, i) for i in range(101)),
     ("lists 101 snapshots", "100")),
    (b'snapshot0.uid = "1"\nsnapshot0.numDisks = "99999999"\n', ("numDisks = 99999999", "0 to 248")),
    (b'snapshot0.uid = "1"\n' + b"# filler\n" * 60_000, ("lines, more than",)),
])
def test_an_absurd_vmsd_is_one_line_and_left_as_it_is(hv, tree, words):
    vmsd(hv).write_bytes(tree)
    before = state_but_locks(hv)
    for command in (("snapshot", "list", "good"), ("snapshot", "take", "good", "s")):
        result = cli(hv, *command)
        assert_one_clear_line(result, SpecError.exit_code, *words)
        assert len(result.stderr) < SHORT
    assert state_but_locks(hv) == before


def test_a_hundred_and_first_snapshot_is_refused_before_any_disk_changes(hv):
    full = SnapshotTree({uid: Snapshot(uid, f"s{uid}", uid - 1 or None, {"scsi0:0": "good.qcow2"})
                         for uid in range(1, 101)}, current=100, last_uid=100)
    vmsd(hv).write_bytes(full.to_bytes())
    before = state_but_locks(hv)
    result = cli(hv, "snapshot", "take", "good", "one-too-many")
    assert_one_clear_line(result, ConflictError.exit_code, "already has 100 snapshots", "delete a snapshot")
    assert state_but_locks(hv) == before
    assert len(hv.snapshot_list("good")) == 100


# -- the core API's numbers, through the CLI and directly -------------------------------------------

NOT_NUMBERS = ["nan", "inf", "-inf", "-1", "1e9", "1e400"]


@pytest.mark.parametrize("value", NOT_NUMBERS)
@pytest.mark.parametrize("command", [
    ["vm", "start", "good", "--wait-ready", "--timeout"],
    ["vm", "stop", "good", "--timeout"],
    ["vm", "exec", "good", "true", "--timeout"],
])
def test_absurd_timeouts_through_the_cli_are_exit_2_and_change_nothing(hv, command, value):
    before = datastore_state(hv.datastore.root)
    # --timeout=VALUE: separate, "-inf" reads as an option to the command line's parser ("expected one argument")
    result = cli(hv, *command[:-1], f"{command[-1]}={value}")
    assert_one_clear_line(result, ArgumentError.exit_code, "timeout", "out of range", "0 to 86400")
    assert datastore_state(hv.datastore.root) == before
    assert_nothing_ran(hv)


@pytest.mark.parametrize("args, words", [
    (["vm", "events", "good", "--limit", "-1"], ("limit = -1",)),
    (["vm", "events", "good", "--limit", "9" * 40], ("limit = a 133-bit number",)),
    (["vm", "create", "new", "--memory", "-64"], ("memory_mib = -64",)),
    (["vm", "create", "new", "--memory", "99999999999"], ("memory_mib",)),
    (["vm", "create", "new", "--cpus", "0"], ("cpus = 0",)),
    (["vm", "create", "new", "--cpus", "100000"], ("cpus = 100000",)),
    (["vm", "create", "new", "--disk-size", "99999999P"], ("larger than the 64 TiB",)),
    (["vm", "create", "new", "--disk-size", "nan"], ("not a size",)),
    (["disk", "create", "new.qcow2", "--size", "1" * 100_000], ("size is 100000 characters",)),
    (["snapshot", "take", "good", "s" * 100_000], ("snapshot is 100000 characters",)),
    (["snapshot", "take", "good", "s", "--description", "d" * 100_000], ("description is 100000 characters",)),
    (["vm", "exec", "good", "--", "x" * 100_000], ("command is 100000 characters",)),
])
def test_absurd_counts_sizes_and_texts_through_the_cli_are_exit_2_and_change_nothing(hv, args, words):
    before = datastore_state(hv.datastore.root)
    result = cli(hv, *args)
    assert_one_clear_line(result, ArgumentError.exit_code, *words)
    assert len(result.stderr) < SHORT
    assert datastore_state(hv.datastore.root) == before
    assert_nothing_ran(hv)


BAD_TIMEOUTS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "-1": -1, "-0.001": -0.001,
                "86400.5": 86400.5, "10**5000": 10 ** 5000, "True": True, "'5'": "5", "None": None}


@pytest.mark.parametrize("value", BAD_TIMEOUTS.values(), ids=BAD_TIMEOUTS.keys())
@pytest.mark.parametrize("call", [
    lambda hv, t: hv.start_vm("good", wait_ready=True, timeout=t),
    lambda hv, t: hv.stop_vm("good", timeout=t),
    lambda hv, t: hv.wait_ready("good", timeout=t),
    lambda hv, t: hv.exec_in_vm("good", "true", timeout=t),
], ids=["start_vm", "stop_vm", "wait_ready", "exec_in_vm"])
def test_absurd_timeouts_through_the_core_api_are_argument_errors_and_change_nothing(hv, call, value):
    before = datastore_state(hv.datastore.root)
    with pytest.raises(ArgumentError) as caught:
        call(hv, value)
    assert (caught.value.exit_code, http_status(caught.value)) == (2, 400)
    assert "timeout" in caught.value.message and len(caught.value.one_line()) < SHORT
    assert datastore_state(hv.datastore.root) == before
    assert_nothing_ran(hv)


@pytest.mark.parametrize("call", [
    lambda hv: hv.vm_events("good", limit=-5),
    lambda hv: hv.vm_events("good", limit=math.nan),
    lambda hv: hv.create_vm("new", memory_mib=math.nan),
    lambda hv: hv.create_vm("new", memory_mib=64.0),
    lambda hv: hv.create_vm("new", cpus=-1),
    lambda hv: hv.create_vm("new", disk_size="1e400G"),
    lambda hv: hv.create_vm("new", disk_size="65T"),
    lambda hv: hv.disk_create(hv.datastore.root / "good" / "x.qcow2", "-1G"),
    lambda hv: hv.disk_resize(hv.datastore.root / "good" / "good.qcow2", "99999P"),
    lambda hv: hv.vm_disk_resize("good", "scsi0:0", str(10 ** 400)),
    lambda hv: hv.snapshot_take("good", "s" * 129),
    lambda hv: hv.exec_in_vm("good", ["x"] * 3000),
])
def test_absurd_arguments_through_the_core_api_are_argument_errors_and_change_nothing(hv, call):
    before = datastore_state(hv.datastore.root)
    with pytest.raises(ArgumentError) as caught:
        call(hv)
    assert http_status(caught.value) == 400 and len(caught.value.one_line()) < SHORT
    assert datastore_state(hv.datastore.root) == before
    assert_nothing_ran(hv)


def test_arguments_at_their_bounds_are_accepted(hv):
    assert hv.vm_events("good", limit=0) == hv.vm_events("good", limit=100_000) != []
    assert hv.create_vm("edge", memory_mib=4, cpus=1, disk_size="1M", network="none").memory_mib == 4
    for timeout in (0, 86400):
        with pytest.raises(StateError):  # the timeout is fine; the VM is powered off
            hv.stop_vm("good", timeout=timeout)


# -- names echoed in errors --------------------------------------------------------------------------


@pytest.mark.parametrize("args, code", [
    (["vm", "show", "x" * 100_000], 3),
    (["vm", "start", "x" * 100_000], 3),
    (["vm", "create", "x" * 100_000], 65),
    (["vm", "autostart", "good", "x" * 100_000], 2),  # on or off: a usage mistake
    (["vm", "disk", "good", "info", "x" * 100_000], 3),
    (["snapshot", "revert", "good", "x" * 100_000], 3),
])
def test_a_long_name_is_echoed_as_a_short_excerpt(hv, args, code):
    before = state_but_locks(hv)
    result = cli(hv, *args)
    assert_one_clear_line(result, code, "xxxx")
    assert len(result.stderr) < SHORT
    assert state_but_locks(hv) == before


def test_a_name_with_a_final_newline_is_not_a_vm_name(hv):
    result = cli(hv, "vm", "create", "sneaky\n")
    assert_one_clear_line(result, 65, "'sneaky\\n' is not a valid VM name")
    assert not (hv.datastore.root / "sneaky\n").exists()
