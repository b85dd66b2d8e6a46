"""Resources: memory admission, CPU affinity, shares the host cannot honour (core API, CLI and REST)."""

from __future__ import annotations

import os
import threading

import pytest

from minivisor import Hypervisor
from minivisor.host import facts
from minivisor.errors import HostError, HvError, SpecError
from minivisor.host.admission import Commitment, admit, host_reserve_mib, overhead_mib
from minivisor.host.placement import cpu_weight
from minivisor.spec.vmspec import VmSpec
from minivisor.vmm.states import VmState
from minivisor.spec.vmx import VmxDocument

from .conftest import small_vm


def add_keys(hv: Hypervisor, name: str, text: str) -> None:
    vmx = hv.datastore.root / name / f"{name}.vmx"
    vmx.write_text(vmx.read_text() + text)


def big_vms(hv: Hypervisor, count: int) -> tuple[list[str], int]:
    """VMs that fit one at a time but not two together (QEMU allocates guest RAM lazily)."""
    total = facts.host_memory_mib()
    each = (total - host_reserve_mib(total)) // 2 + 64
    names = [f"big{i}" for i in range(count)]
    for name in names:
        hv.create_vm(name, disk_size="16M", memory_mib=each, network="none")
    return names, each


@pytest.mark.qemu
def test_power_on_is_refused_when_running_vms_hold_the_hosts_memory(hv):
    (first, second), each = big_vms(hv, 2)
    hv.start_vm(first)
    with pytest.raises(HostError) as caught:
        hv.start_vm(second)
    assert caught.value.code == "insufficient-memory"
    assert f"needs {each} MiB" in caught.value.message and caught.value.hint
    assert hv.get_vm(second).state is VmState.POWERED_OFF
    assert not (hv.datastore.root / second / "runtime.json").exists()
    hv.stop_vm(first, hard=True)
    hv.start_vm(second)  # room again


@pytest.mark.qemu
def test_concurrent_power_ons_count_each_other(hv):
    names, _ = big_vms(hv, 3)
    outcomes: list[object] = []

    def start(name: str) -> None:
        try:
            outcomes.append(Hypervisor(hv.datastore.root).start_vm(name))
        except HvError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=start, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    refused = [o for o in outcomes if isinstance(o, HvError)]
    assert len(outcomes) - len(refused) == 1
    assert {e.code for e in refused} == {"insufficient-memory"}


@pytest.mark.qemu
def test_the_refusal_is_the_same_through_the_cli_and_the_rest_api(service):
    hv = Hypervisor(service.root)
    (first, second), _ = big_vms(hv, 2)
    service.client.start_vm(first)
    via_service = service.cli("vm", "start", second)
    direct = service.cli("vm", "start", second, direct=True)
    assert via_service.returncode == direct.returncode == HostError.exit_code
    assert via_service.stderr == direct.stderr and via_service.stderr.count("\n") == 1
    assert "cannot power on 'big1'" in direct.stderr
    with pytest.raises(HostError):
        service.client.start_vm(second)


def test_memory_reservations_of_running_vms_are_set_aside():
    spec = VmSpec.from_vmx(VmxDocument.parse(b'memSize = "1024"\nsched.mem.min = "1024"\n'))
    admit(spec, "new", [Commitment("a", 2048, 2048, None)], total_mib=8192, available_mib=4000)  # 4000-2048 >= 1024
    with pytest.raises(HostError, match="sched.mem.min = 1024 MiB"):
        admit(spec, "new", [Commitment("a", 2048, 3000, None)], total_mib=8192, available_mib=4000)
    with pytest.raises(HostError, match="needs 1024 MiB"):
        admit(spec, "new", [Commitment("a", 6400, 0, None)], total_mib=8192, available_mib=8000)


def test_each_vm_counts_its_vmm_and_console_relay_not_only_its_memory():
    spec = VmSpec.from_vmx(VmxDocument.parse(b'memSize = "64"\n'))
    total = 8192
    capacity = total - host_reserve_mib(total)
    small = Commitment("small", 64, 0, None, overhead_mib(64, "tcg"))
    fits = capacity // (64 + overhead_mib(64, "tcg"))
    admit(spec, "new", [small] * (fits - 1), total_mib=total, available_mib=total, accel="tcg")
    overhead = overhead_mib(64, "tcg")
    with pytest.raises(HostError, match=f"needs 64 MiB .and {overhead} MiB for its VMM and console relay"):
        admit(spec, "new", [small] * fits, total_mib=total, available_mib=total, accel="tcg")
    assert fits * 64 < capacity // 2  # counting memSize alone would admit more than twice as many
    assert overhead_mib(64, None) == overhead_mib(64, "tcg") > overhead_mib(64, "kvm")


def test_sched_keys_are_read_not_reported_unused():
    spec = VmSpec.from_vmx(VmxDocument.parse(
        b'numvcpus = "2"\nmemSize = "512"\nsched.cpu.affinity = "0,2-3"\nsched.cpu.shares = "high"\n'
        b'sched.mem.shares = "low"\nsched.mem.min = "128"\n'))
    assert (spec.sched.cpu_affinity, spec.sched.cpu_shares, spec.sched.mem_shares, spec.sched.mem_min_mib) == \
        ((0, 2, 3), 4000, 2560, 128)
    assert not [k for k in spec.unused_keys if k.startswith("sched.")]
    assert cpu_weight(1000) == 100 and cpu_weight(4000) == 400 and cpu_weight(10**9) == 10000
    for bad in (b'sched.cpu.affinity = "one"\n', b'sched.cpu.shares = "lots"\n', b'memSize = "64"\nsched.mem.min = "65"\n'):
        with pytest.raises(SpecError, match=":[0-9]+: sched"):
            VmSpec.from_vmx(VmxDocument.parse(bad, source="x.vmx"))


@pytest.mark.qemu
def test_cpu_affinity_pins_every_vmm_thread(hv):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU: an unpinned VMM would run on it too")
    cpu = max(os.sched_getaffinity(0))
    small_vm(hv, "pinned")
    add_keys(hv, "pinned", f'sched.cpu.affinity = "{cpu}"\n')
    pid = hv.start_vm("pinned").vm.pid
    tasks = os.listdir(f"/proc/{pid}/task")
    assert len(tasks) > 1  # QEMU has a vCPU thread besides its main loop
    assert {frozenset(os.sched_getaffinity(int(t))) for t in tasks} == {frozenset({cpu})}


def test_an_affinity_outside_the_host_is_refused_before_anything_starts(hv):
    small_vm(hv, "vm1")
    add_keys(hv, "vm1", f'sched.cpu.affinity = "{os.cpu_count() + 7}"\n')
    with pytest.raises(SpecError, match="sched.cpu.affinity"):
        hv.start_vm("vm1")
    assert hv.get_vm("vm1").state is VmState.POWERED_OFF


@pytest.mark.qemu  # explaining a VM runs the KVM probe
def test_explain_says_which_shares_cannot_be_honoured(hv, monkeypatch, tmp_path):
    small_vm(hv, "vm1")
    add_keys(hv, "vm1", 'sched.cpu.shares = "high"\nsched.mem.shares = "low"\n')
    from minivisor.host import placement

    monkeypatch.setattr(placement, "CGROUP_MOUNT", tmp_path / "no-cgroup2")  # a host without cgroup v2
    warnings = hv.explain_vm("vm1").warnings
    assert any(w.startswith("sched.cpu.shares cannot be honoured: the host has no cgroup v2") for w in warnings)
    assert any(w.startswith("sched.mem.shares cannot be honoured") for w in warnings)
    started = hv.start_vm("vm1")  # honoured or not, the VM runs; the warnings say so
    assert set(warnings) <= set(started.warnings)


@pytest.mark.qemu  # explaining a VM runs the KVM probe
def test_default_shares_need_nothing_from_the_host(hv, monkeypatch, tmp_path):
    small_vm(hv, "vm1")
    add_keys(hv, "vm1", 'sched.cpu.shares = "normal"\nsched.mem.shares = "normal"\n')
    from minivisor.host import placement

    monkeypatch.setattr(placement, "CGROUP_MOUNT", tmp_path / "no-cgroup2")
    assert not [w for w in hv.explain_vm("vm1").warnings if w.startswith("sched.")]
