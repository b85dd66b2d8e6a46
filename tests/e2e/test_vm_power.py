"""End to end: a real guest boots through SeaBIOS from the disk its specfile names,
and we look at the hardware from inside it."""

from __future__ import annotations

import json
import os
import shutil
import stat
import threading
from pathlib import Path

import pytest
from cli_runner import run_cli
from guests import create_guest

from minivisor import Hypervisor
from minivisor.images.layers import read_layer
from minivisor.images.qemu_img import convert_disk
from minivisor.errors import HvError, StateError, VmmError
from minivisor.vmm.states import VmState
from minivisor.vmm import qmp

pytestmark = pytest.mark.qemu

SEED = Path(__file__).resolve().parents[2] / "src/minivisor/cli/seed/CentOS7-Minimal64-1708.vmx"


def inventory(hv: Hypervisor, name: str) -> dict:
    """The JSON the appliance printed about the hardware it sees (this boot)."""
    for line in hv.vm_paths(name).serial_log.read_text(errors="replace").splitlines():
        if "minivisor-guest: inventory " in line:
            return json.loads(line.split("minivisor-guest: inventory ", 1)[1])
    raise AssertionError("the guest printed no inventory")


@pytest.fixture
def small_vm(hv, appliance_image):
    # One vCPU: QEMU 7.2's multi-threaded TCG segfaults, rarely, while a 2-vCPU guest boots on a loaded host (seen in
    # full runs; a QEMU bug). The guests that check SMP keep two (the boot test below, tests/integration/test_appliance).
    create_guest(hv, "small", appliance_image, memory_mib=256, cpus=1, network="none")
    return "small"


def test_guest_boots_from_its_disk_and_sees_the_specfile_hardware(hv, appliance_image):
    create_guest(hv, "web", appliance_image, memory_mib=256, cpus=2, network="nat", nic_model="e1000")
    result = hv.start_vm("web", wait_ready=True, timeout=60)
    assert result.vm.state is VmState.RUNNING and result.ready_line.endswith("ready")
    bios = hv.vm_paths("web").bios_log.read_text(errors="replace")
    assert "Booting from Hard Disk" in bios  # BIOS -> disk, not a direct kernel boot
    seen = inventory(hv, "web")
    vm = hv.get_vm("web")
    assert seen["memory_mib"] == 256
    assert seen["cpus"] == 2
    (disk,) = [d for d in seen["disks"] if d["driver"] == "sd"]
    assert disk["controller"] == "sym53c8xx"  # lsilogic -> LSI 53C895A
    (nic,) = seen["nics"]
    assert nic["mac"] == vm.nics[0]["mac"] and nic["driver"] == "e1000"
    # NAT is connected: the guest's e1000 reports carrier once autonegotiation is done
    carrier = hv.exec_in_vm("web", "for i in 1 2 3 4 5 6 7 8 9 10; do grep -q 1 /sys/class/net/eth0/carrier "
                                   "&& break; sleep 0.5; done; cat /sys/class/net/eth0/carrier")
    assert carrier.output.strip() == "1"
    # the VMM process runs sandboxed and its control sockets are private
    status = Path(f"/proc/{vm.pid}/status").read_text()
    assert "\nSeccomp:\t2" in status
    runtime = hv.vm_paths("web").runtime_dir
    assert stat.S_IMODE(runtime.stat().st_mode) == 0o700
    for sock in (hv.vm_paths("web").qmp_socket, hv.vm_paths("web").console_socket):
        assert stat.S_IMODE(sock.stat().st_mode) & 0o077 == 0
    assert hv.stop_vm("web", timeout=30) == "soft"  # ACPI power button honoured by the guest
    assert hv.get_vm("web").state is VmState.POWERED_OFF
    assert not runtime.exists()


def test_the_lectures_specfile_boots_with_a_disk_at_its_file_name(hv, appliance_image):
    folder = hv.datastore.root / "centos"
    folder.mkdir(parents=True)
    shutil.copy(SEED, folder / SEED.name)
    convert_disk((read_layer(appliance_image, "raw"),), folder / "CentOS7-Minimal64-1708-000002.vmdk", "vmdk")
    vm = hv.register_vm(folder / SEED.name)
    assert vm.name == "CentOS7-Minimal64-1708" and vm.memory_mib == 1024
    result = hv.start_vm(vm.name, wait_ready=True, timeout=60)
    assert any("PAULO" in w and "disconnected" in w for w in result.warnings)
    seen = inventory(hv, vm.name)
    assert seen["memory_mib"] == 1024 and seen["cpus"] == 1
    (nic,) = seen["nics"]
    assert (nic["mac"], nic["driver"], nic["carrier"]) == ("00:50:56:aa:aa:aa", "vmxnet3", 0)
    # registering kept every line of the user's file (only identity keys were added)
    original = SEED.read_text().splitlines()
    now = (folder / SEED.name).read_text().splitlines()
    assert now[:len(original)] == original


def test_power_transitions(hv, small_vm):
    hv.start_vm(small_vm, wait_ready=True, timeout=60)
    hv.pause_vm(small_vm)
    assert hv.get_vm(small_vm).state is VmState.PAUSED
    socket = hv.vm_paths(small_vm).qmp_socket
    assert qmp.execute(socket, "query-status")["status"] == "paused"
    with pytest.raises(StateError):
        hv.pause_vm(small_vm)
    with pytest.raises(StateError):
        hv.start_vm(small_vm)
    hv.resume_vm(small_vm)
    assert qmp.execute(socket, "query-status")["status"] == "running"
    hv.reset_vm(small_vm)
    # after the reset the guest boots again and says so a second time
    log = hv.vm_paths(small_vm).serial_log
    from minivisor.vmm.console import wait_for_line

    wait_for_line(log, "minivisor-guest: ready", 60)
    import time

    deadline = time.monotonic() + 60
    while log.read_text(errors="replace").count("minivisor-guest: ready") < 2:
        assert time.monotonic() < deadline, "the guest did not boot again after reset"
        time.sleep(0.1)
    assert hv.stop_vm(small_vm, hard=True) in ("hard", "killed")
    with pytest.raises(StateError):
        hv.resume_vm(small_vm)


def test_exec_returns_output_and_exit_code(hv, small_vm):
    hv.start_vm(small_vm, wait_ready=True, timeout=60)
    result = hv.exec_in_vm(small_vm, ["grep", "-c", "^processor", "/proc/cpuinfo"])
    assert (result.output.strip(), result.exit_code) == ("1", 0)
    failing = hv.exec_in_vm(small_vm, "echo 'to stderr' >&2; exit 7")
    assert (failing.output + failing.stderr, failing.exit_code) == ("to stderr\n", 7)  # apart through the agent
    # a file written through one exec is there for the next one
    hv.exec_in_vm(small_vm, "echo persisted > /tmp/x")
    assert hv.exec_in_vm(small_vm, ["cat", "/tmp/x"]).output.strip() == "persisted"


def test_a_vm_cannot_be_powered_on_twice_even_concurrently(hv, small_vm):
    outcomes: list[object] = []

    def start() -> None:
        try:
            outcomes.append(hv.__class__(hv.datastore.root).start_vm(small_vm))
        except HvError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    started = [o for o in outcomes if not isinstance(o, HvError)]
    refused = [o for o in outcomes if isinstance(o, HvError)]
    assert len(started) == 1 and len(refused) == 3
    assert all(isinstance(e, StateError) for e in refused)
    qemus = [p for p in os.listdir("/proc") if p.isdigit() and _is_vmm_of(p, hv.get_vm(small_vm).uuid)]
    assert len(qemus) == 1


def _is_vmm_of(pid: str, uuid: str) -> bool:
    try:
        return uuid in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def test_a_file_name_with_a_comma_is_one_literal_block_node(hv, appliance_image):
    create_guest(hv, "comma", appliance_image, memory_mib=128, network="none")
    folder = hv.datastore.root / "comma"
    tricky = "a,file=etc-passwd.qcow2"
    (folder / "comma.qcow2").rename(folder / tricky)
    vmx = folder / "comma.vmx"
    vmx.write_text(vmx.read_text().replace('"comma.qcow2"', f'"{tricky}"'))
    hv.start_vm("comma")
    blocks = qmp.execute(hv.vm_paths("comma").qmp_socket, "query-named-block-nodes", {"flat": True})
    files = [b["file"] for b in blocks if b["drv"] == "file"]
    assert files == [str(folder / tricky)]


def test_a_vmm_that_fails_to_start_leaves_nothing_behind(hv, small_vm):
    disk = hv.datastore.root / small_vm / f"{small_vm}.qcow2"
    with open(disk, "r+b") as image:  # keep the qcow2 magic, break the rest of the header
        image.seek(20)
        image.write(b"\xff" * 8)
    before = hv.vm_paths(small_vm).vm_dir.joinpath(f"{small_vm}.vmx").read_bytes()
    with pytest.raises(VmmError) as caught:
        hv.start_vm(small_vm)
    assert "failed to start" in caught.value.message and caught.value.hint
    assert hv.get_vm(small_vm).state is VmState.POWERED_OFF
    assert not (hv.vm_paths(small_vm).vm_dir / "runtime.json").exists()
    assert hv.vm_paths(small_vm).vm_dir.joinpath(f"{small_vm}.vmx").read_bytes() == before


def test_a_sas_disk_behind_lsisas1068_is_seen_by_the_guest(hv, appliance_image):
    create_guest(hv, "sas", appliance_image, memory_mib=192, network="none", scsi_model="lsisas1068")
    hv.start_vm("sas", wait_ready=True, timeout=60)
    disks = [d for d in inventory(hv, "sas")["disks"] if d["driver"] == "sd"]
    assert [d["controller"] for d in disks] == ["mptsas"]


def test_console_attaches_types_into_the_guest_and_detaches(hv, small_vm):
    import select
    import subprocess
    import sys
    import time

    hv.start_vm(small_vm, wait_ready=True, timeout=60)
    env = {**os.environ, "MINIVISOR_DATASTORE": str(hv.datastore.root)}
    console = subprocess.Popen([sys.executable, "-m", "minivisor", "vm", "console", small_vm],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    console.stdin.write(b"\necho console-$((6*7))\n")  # the echoed line shows the $((...)), the output 42
    console.stdin.flush()
    seen, deadline = b"", time.monotonic() + 30
    while b"console-42" not in seen:
        assert time.monotonic() < deadline, f"no answer through the console: {seen[-300:]!r}"
        if select.select([console.stdout], [], [], 0.5)[0]:
            seen += os.read(console.stdout.fileno(), 4096)
    console.stdin.write(b"\x1d")  # Ctrl-] detaches
    console.stdin.flush()
    assert console.wait(timeout=10) == 0
    assert b"Detached" in console.stderr.read()
    # the console is free again, and the guest still runs
    assert hv.exec_in_vm(small_vm, "echo again").output.strip() == "again"


def test_the_power_on_that_probed_kvm_says_why_it_runs_without_and_each_names_its_accelerator(tmp_path,
                                                                                              appliance_image):
    """A host without usable KVM hears why once per boot (the probe's answer is cached), not at every power-on."""
    env = {**os.environ, "MINIVISOR_CACHE": str(tmp_path / "cache")}  # a cache of its own: this first start probes
    datastore = tmp_path / "datastore"
    for args in (("datastore", "allow-path", str(appliance_image.parent)),
                 ("vm", "create", "g", "--boot-disk", str(appliance_image), "--memory", "64", "--network", "none")):
        assert run_cli(*args, datastore=datastore, env=env).returncode == 0
    starts = []
    for _ in range(2):
        started = run_cli("vm", "start", "g", datastore=datastore, env=env)
        assert started.returncode == 0, started.stderr
        starts.append(started)
        assert run_cli("vm", "stop", "g", "--hard", datastore=datastore, env=env).returncode == 0
    chosen = json.loads(run_cli("host", "info", "--json", datastore=datastore, env=env).stdout)["accel"]
    without_kvm = chosen["accel"] == "tcg" and chosen["reason"].startswith("KVM probe")
    assert ("warning: KVM probe" in starts[0].stderr) is without_kvm
    assert "KVM probe" not in starts[1].stderr
    assert all(f", {chosen['accel']})" in started.stdout for started in starts)
