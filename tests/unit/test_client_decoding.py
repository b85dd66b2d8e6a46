"""The client gives back what the core API returns: core type -> the service's encoder -> JSON -> the client's decoder.

One case per ``returns`` kind of the route table, each built from real core
objects (a datastore in a temporary folder; the seed specfile through the
real spec reader and argv builder), compared whole with what the client rebuilt.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from minivisor.client import Client, _decode
from minivisor.core.events import make_event
from minivisor.core.hypervisor import Explanation, Hypervisor, NetworkInfo, StartResult, VmInfo
from minivisor.errors import SpecError
from minivisor.host.accel import AccelChoice
from minivisor.host.info import HostInfo
from minivisor.service.responses import dumps, encode
from minivisor.service.routes import OPERATIONS
from minivisor.spec.vmspec import VmSpec
from minivisor.spec.vmx import VmxDocument
from minivisor.images.layers import ImageLayer
from minivisor.spec.vmsd import Snapshot
from minivisor.vmm.argv import LaunchEnv, VmPaths, build_qemu_argv, virtual_hardware
from minivisor.vmm.console import ExecResult
from minivisor.vmm.states import VmState

SEED = Path(__file__).parents[2] / "src/minivisor/cli/seed/CentOS7-Minimal64-1708.vmx"


def over_the_wire(kind: str, result: object) -> object:
    """What a client receives for ``result``: encoded and serialised as the service answers, then decoded."""
    return _decode(kind, json.loads(dumps(encode(result))))


@pytest.fixture(scope="module")
def created(tmp_path_factory) -> list[VmInfo]:
    """VMs as the core lists them, from a real datastore."""
    hv = Hypervisor(tmp_path_factory.mktemp("wire") / "datastore")
    hv.create_vm("web", network="none", memory_mib=256, cpus=2)
    hv.create_vm("db", network="nat", nic_model="e1000", guest_os="debian12-64")
    hv.set_autostart("db", True)
    return hv.list_vms()


def running_vm() -> VmInfo:
    """A VM in the states only a real VMM reaches: running, paused by QEMU on a full disk, its pid and accelerator."""
    return VmInfo(name="web", uuid="564d8c48-1de9-5312-9e23-96ef90e27a17", vmx=Path("/ds/web/web.vmx"),
                  state=VmState.PAUSED, display_name="Web \u00e9 server", guest_os="other-64", memory_mib=512, cpus=1,
                  disks=({"node": "scsi0:0", "file": "web.qcow2", "format": "qcow2"},),
                  nics=({"index": 0, "model": "vmxnet3", "mac": "00:0c:29:00:00:01"},),
                  autostart=True, pid=4242, accel="tcg", state_reason="io-error")


def explanation() -> Explanation:
    """``vm explain`` of the seed specfile: the typed spec, its devices and the argv, as the core builds them."""
    spec = VmSpec.from_vmx(VmxDocument.parse(SEED.read_bytes(), source="seed.vmx"))
    paths = VmPaths(Path("/ds/CentOS7"), Path("/run/minivisor/abc"))
    env = LaunchEnv(name="CentOS7", uuid="564d8c48-1de9-5312-9e23-96ef90e27a17", qemu="qemu-system-x86_64",
                    accel="tcg", paths=paths,
                    disk_chains={d.node: (ImageLayer(paths.vm_dir / d.file_name, "vmdk", 64 << 20),)
                                 for d in spec.disks if d.kind == "disk"},
                    macs={n.index: n.mac or "00:0c:29:00:00:01" for n in spec.nics},
                    networks={n.index: "unconnected" for n in spec.nics})
    return Explanation(spec, tuple(virtual_hardware(spec, env)), tuple(build_qemu_argv(spec, env)),
                       ("a warning",))


def snapshot(**fields: object) -> Snapshot:
    """A memory snapshot (``memory_file=None``: a powered-off one)."""
    return Snapshot(**{"uid": 3, "name": "before upgrade", "parent": 1, "disks": {"scsi0:0": "web-000002.qcow2"},
                       "description": "line one\nline two", "created_us": 1_712_345_678_123_457,
                       "memory_file": "web-Snapshot3.vmsn", **fields})


def host() -> HostInfo:
    return HostInfo(cpus=2, memory_mib=7928, available_mib=5120, kernel="6.1.0-18-amd64",
                    qemu="/usr/bin/qemu-system-x86_64", qemu_version="7.2.9", qemu_img="/usr/bin/qemu-img",
                    accel=AccelChoice("tcg", "/dev/kvm: the probe guest did not run (KVM_RUN failed)", probed=False),
                    networking="bridges and taps: root, /dev/net/tun, ip, nft, dnsmasq")


NETWORKS = [NetworkInfo("nat", "nat", "192.168.100.0/24", "192.168.100.1", True, "mvbr0", None, "active", 812,
                        ("web", "db")),
            NetworkInfo("lan", "bridged", None, None, False, "mvbr1", "eth1", "inactive")]


EVENTS = [{"id": 7, **make_event("poweredOn", "web", pid=4242, accel="tcg")},
          {"id": 8, **make_event("crashed", "web", pid=4242, reason="killed by SIGKILL", exit_status=None)}]
DISKS = [{"node": "scsi0:0", "file": "web.qcow2", "format": "qcow2", "virtual_size": 16 << 20, "chain": ["web.qcow2"]}]


def cases(created: list[VmInfo]) -> list[tuple[str, object]]:
    """(returns kind, a result as the core returns it) for every kind of the route table."""
    start = StartResult(vm=running_vm(), warnings=("guests run without KVM",), ready_line="minivisor-guest: ready")
    return [("vm", created[0]), ("vm", running_vm()), ("vms", created), ("vms", []),
            ("start", start), ("start", StartResult(vm=created[1])),
            ("explanation", explanation()), ("exec", ExecResult("Linux\n", 0)), ("exec", ExecResult("", 127)),
            ("host", host()), ("snapshot", snapshot(memory_file=None)), ("snapshot", snapshot()),
            ("snapshot_revert", (snapshot(), True)), ("snapshot_revert", (snapshot(memory_file=None), False)),
            ("events", EVENTS), ("json", DISKS), ("json", {"path": "/ds/d.qcow2", "format": "qcow2"}),
            ("text", "stopped (acpi)"), ("bytes", b"\x89PNG\r\n\x1a\n\x00\xff"), ("none", None),
            ("network", NETWORKS[0]), ("networks", NETWORKS),
            ("networks", [])]


def test_every_kind_of_the_route_table_has_a_case(created):
    assert {op.returns for op in OPERATIONS} == {kind for kind, _ in cases(created)}


def test_the_client_rebuilds_each_result_the_core_returns(created):
    for kind, result in cases(created):
        assert over_the_wire(kind, result) == result, kind


def test_a_snapshot_loses_only_what_the_wire_leaves_out():
    """The specfile it restores and the guest's ready line stay on the service's side (storage internals)."""
    internal = snapshot(config='displayName = "web"\nmemSize = "512"\n', ready_line="minivisor-guest: ready")
    assert over_the_wire("snapshot", internal) == snapshot()


def test_a_rebuilt_result_has_the_core_types_inside(created):
    """Equality alone would pass a tuple rebuilt as a list, or a state left a string."""
    vm = over_the_wire("vm", created[0])
    assert isinstance(vm.state, VmState) and isinstance(vm.vmx, Path) and isinstance(vm.disks, tuple)
    spec = over_the_wire("explanation", explanation()).spec
    assert isinstance(spec, VmSpec) and all(type(d) is type(e) for d, e in zip(spec.disks, explanation().spec.disks))


def test_a_rebuilt_vm_prints_and_compares_as_the_core_s_before_it_makes_a_path_or_a_state():
    """The client keeps a VmInfo's specfile and state as the service's text until asked (no pathlib, no enum);
    what the CLI prints, its JSON, equality, repr and replace read the same values as the core's VmInfo."""
    core = running_vm()
    vm = over_the_wire("vm", core)
    assert (vm.specfile, vm.state_label, vm.state_hint) == ("/ds/web/web.vmx", "paused (io-error)", core.state_hint)
    assert vm.to_dict() == core.to_dict() and repr(vm) == repr(core) and vm == core
    assert vm.replace(cpus=4) == core.replace(cpus=4) and vm.replace(cpus=4).vmx == Path("/ds/web/web.vmx")
    assert vm.state is VmState.PAUSED and vm.vmx == Path("/ds/web/web.vmx")


@pytest.mark.parametrize("name", ["x/disks", "x/../y", "", "a" * 100])
def test_a_name_that_is_no_vm_name_is_refused_before_it_is_sent(name):
    """Sent, "x/disks" would reach GET /v1/vms/x/disks (the service decodes %2F) and list x's disks."""
    client = Client("http://127.0.0.1:9", "token")  # nothing listens there: a request would be a HostError
    with pytest.raises(SpecError):
        client.get_vm(name)
