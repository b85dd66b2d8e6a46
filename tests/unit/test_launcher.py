"""Spec -> QEMU command line: golden argv, device mapping, no option injection."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from minivisor.images.layers import ImageLayer
from minivisor.datastore.layout import VmPaths
from minivisor.host.admission import overhead_mib
from minivisor.vmm.argv import (HostForward, LaunchEnv, Tap, UserNat, build_qemu_argv, nic_device, nic_netdev,
                                 virtual_hardware)
from minivisor.spec.vmspec import VmSpec
from minivisor.spec.vmx import VmxDocument

HERE = Path(__file__).parent
SEED = HERE.parents[1] / "src/minivisor/cli/seed/CentOS7-Minimal64-1708.vmx"
GOLDEN = HERE / "golden/seed_argv.json"
GOLDEN_INCOMING = HERE / "golden/seed_argv_incoming.json"
VM_DIR = Path("/ds/CentOS7")
PATHS = VmPaths(VM_DIR / "CentOS7-Minimal64-1708.vmx", Path("/run/minivisor/abc"))


def seed_spec() -> VmSpec:
    return VmSpec.from_vmx(VmxDocument.parse(SEED.read_bytes(), source="seed.vmx"))


def env_for(spec: VmSpec, paths: VmPaths = PATHS, **overrides) -> LaunchEnv:
    chains = {d.node: (ImageLayer(paths.vm_dir / d.file_name, "vmdk", 64 << 20),)
              for d in spec.disks if d.kind == "disk"}
    fields = dict(name="CentOS7", uuid="564d8c48-1de9-5312-9e23-96ef90e27a17", qemu="qemu-system-x86_64",
                  accel="tcg", paths=paths, disk_chains=chains,
                  macs={n.index: n.mac or "00:0c:29:00:00:01" for n in spec.nics},
                  networks={n.index: "unconnected" for n in spec.nics})
    fields.update(overrides)
    return LaunchEnv(**fields)


def option_values(argv: list[str], option: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == option]


def json_options(argv: list[str], option: str) -> list[dict]:
    return [json.loads(value) for value in option_values(argv, option) if value.startswith("{")]


@pytest.mark.parametrize("golden, incoming", [(GOLDEN, False), (GOLDEN_INCOMING, True)],
                         ids=["power-on", "incoming"])
def test_seed_argv_matches_golden(golden, incoming):
    argv = build_qemu_argv(seed_spec(), env_for(seed_spec(), incoming=incoming))
    if os.environ.get("MINIVISOR_UPDATE_GOLDEN"):
        golden.write_text(json.dumps(argv, indent=1) + "\n")
    assert argv == json.loads(golden.read_text())


def test_a_vmm_that_waits_for_a_saved_state_is_the_same_machine_plus_incoming():
    """A memory snapshot is restored into exactly the hardware it was taken on (migration needs that)."""
    spec = seed_spec()
    booting, incoming = build_qemu_argv(spec, env_for(spec)), build_qemu_argv(spec, env_for(spec, incoming=True))
    assert incoming == booting + ["-incoming", "defer"]
    names = [device.name for device in virtual_hardware(spec, env_for(spec, incoming=True))]
    assert names[-1] == "incoming"  # vm explain shows it


@pytest.mark.parametrize("networks, incoming, paused", [
    ("unconnected", False, True),  # its links go down before the guest runs
    (UserNat(), True, True),  # waits for a saved state
    (UserNat(), False, False),  # nothing to do first: the guest runs at once, as under bare QEMU
], ids=["link-down", "incoming", "plain"])
def test_a_vmm_starts_paused_only_when_something_must_happen_before_its_guest_runs(networks, incoming, paused):
    spec = seed_spec()
    env = env_for(spec, incoming=incoming, networks={n.index: networks for n in spec.nics})
    assert env.starts_paused is paused
    assert ("-S" in build_qemu_argv(spec, env)) is paused


def test_the_console_and_event_monitor_lead_to_the_relay_and_qmp_listens():
    """QEMU opens the console's FIFOs and connects to the relay's event socket (both made before QEMU starts:
    no output is lost while the guest runs before the relay reads), and serves the QMP socket minivisor's
    commands connect to."""
    chardevs = option_values(build_qemu_argv(seed_spec(), env_for(seed_spec())), "-chardev")
    assert f"pipe,id=console,path={PATHS.serial_pipes}" in chardevs
    # and reconnects to it every second: a relay started after the first was killed gets QEMU's events
    assert f"socket,id=events,path={PATHS.events_socket},server=off,reconnect=1" in chardevs
    assert f"socket,id=qmp,path={PATHS.qmp_socket},server=on,wait=off" in chardevs


def test_seed_hardware_mapping():
    argv = build_qemu_argv(seed_spec(), env_for(seed_spec()))
    assert option_values(argv, "-m") == ["1024M"]
    assert option_values(argv, "-smp") == ["cpus=1,sockets=1,cores=1,threads=1"]
    assert option_values(argv, "-accel") == ["tcg,tb-size=512"]
    assert option_values(argv, "-sandbox")[0].startswith("on,")
    devices = {d["driver"]: d for d in json_options(argv, "-device")}
    assert devices["lsi53c895a"]["id"] == "scsi0"
    # the seed's disk is a VMDK: attached through a gate, a filter node with no limits (a memory snapshot
    # closes the chain under it)
    assert devices["scsi-hd"] == {"driver": "scsi-hd", "id": "scsi0-0", "drive": "gate-scsi0-0-0",
                                  "bus": "scsi0.0", "scsi-id": 0, "werror": "enospc", "bootindex": 0}
    gate = next(n for n in json_options(argv, "-blockdev") if n["node-name"] == "gate-scsi0-0-0")
    assert gate == {"driver": "throttle", "node-name": "gate-scsi0-0-0", "throttle-group": "gate-scsi0-0-0-group",
                    "file": "fmt-scsi0-0-0", "read-only": False}
    assert {"qom-type": "throttle-group", "id": "gate-scsi0-0-0-group"} in json_options(argv, "-object")
    assert devices["vmxnet3"]["mac"] == "00:50:56:aa:aa:aa"
    assert devices["vmware-svga"]["vgamem_mb"] == 8
    (netdev,) = json_options(argv, "-netdev")
    assert netdev["type"] == "hubport"  # network PAULO is unknown: isolated, link down


def test_every_image_is_opened_with_an_explicit_format_and_backing():
    spec = seed_spec()
    chain = (ImageLayer(VM_DIR / "top.qcow2", "qcow2", 1 << 30, "base.qcow2", "qcow2"),
             ImageLayer(VM_DIR / "base.qcow2", "qcow2", 1 << 30))
    argv = build_qemu_argv(spec, env_for(spec, disk_chains={"scsi0:0": chain}))
    nodes = {n["node-name"]: n for n in json_options(argv, "-blockdev")}
    assert nodes["fmt-scsi0-0-0"]["backing"] == "fmt-scsi0-0-1"
    assert nodes["fmt-scsi0-0-1"]["backing"] is None  # never follow (or probe) the header's own reference
    assert nodes["fmt-scsi0-0-1"]["read-only"] is True
    assert all(n["driver"] in ("file", "qcow2") for n in nodes.values())
    # bottom layer is defined before the layer that refers to it
    order = [n["node-name"] for n in json_options(argv, "-blockdev")]
    assert order.index("fmt-scsi0-0-1") < order.index("fmt-scsi0-0-0")


def test_comma_in_a_file_name_cannot_inject_options():
    spec = VmSpec.from_vmx(VmxDocument.parse(
        b'scsi0.present = "TRUE"\nscsi0:0.present = "TRUE"\nscsi0:0.fileName = "a,file=/etc/passwd.qcow2"\n'))
    argv = build_qemu_argv(spec, env_for(spec))
    files = [n for n in json_options(argv, "-blockdev") if n["driver"] == "file"]
    assert [n["filename"] for n in files] == [str(VM_DIR / "a,file=/etc/passwd.qcow2")]
    # outside JSON, no argument carries the injected option
    assert not any("file=/etc/passwd" in arg for arg in argv if not arg.startswith("{"))


def test_comma_in_the_datastore_or_runtime_path_is_escaped_in_chardev_options():
    paths = VmPaths(Path("/data,server=on/vm/vm.vmx"), Path("/run/a,logfile=x/abc"))
    argv = build_qemu_argv(seed_spec(), env_for(seed_spec(), paths=paths))
    chardevs = option_values(argv, "-chardev")
    assert "file,id=bioslog,path=/data,,server=on/vm/bios.log" in chardevs
    assert "pipe,id=console,path=/run/a,,logfile=x/abc/serial" in chardevs
    assert not any("logfile=" in c.replace(",,logfile=", "") for c in chardevs)


@pytest.mark.parametrize("bus_keys, controller_driver, disk_driver, address", [
    ('scsi0.present = "TRUE"\nscsi0.virtualDev = "pvscsi"\n', "pvscsi", "scsi-hd", {"bus": "scsi0.0"}),
    ('scsi0.present = "TRUE"\nscsi0.virtualDev = "lsisas1068"\n', "mptsas1068", "scsi-hd", {"bus": "scsi0.0"}),
    ('sata0.present = "TRUE"\n', "ich9-ahci", "ide-hd", {"bus": "sata0.0"}),
    ('nvme0.present = "TRUE"\n', "nvme", "nvme-ns", {"bus": "nvme0", "nsid": 1}),
    ("", None, "ide-hd", {"bus": "ide.0", "unit": 0}),
])
def test_controllers_map_to_qemu_devices(bus_keys, controller_driver, disk_driver, address):
    bus = bus_keys.split("0.", 1)[0] if bus_keys else "ide"
    text = f'{bus_keys}{bus}0:0.present = "TRUE"\n{bus}0:0.fileName = "d.qcow2"\n'
    spec = VmSpec.from_vmx(VmxDocument.parse(text.encode()))
    argv = build_qemu_argv(spec, env_for(spec))
    devices = json_options(argv, "-device")
    drivers = [d["driver"] for d in devices]
    if controller_driver:
        assert controller_driver in drivers
    (disk,) = [d for d in devices if d["driver"] == disk_driver]
    assert address.items() <= disk.items() and disk["bootindex"] == 0
    # a full datastore pauses the VM (io-error) instead of failing the guest's writes; nvme-ns cannot
    assert disk.get("werror") == (None if disk_driver == "nvme-ns" else "enospc")


@pytest.mark.parametrize("model, driver", [("vmxnet3", "vmxnet3"), ("e1000", "e1000"), ("e1000e", "e1000e"),
                                           ("vlance", "pcnet"), ("vmxnet", "pcnet"), ("virtio", "virtio-net-pci")])
def test_nic_models(model, driver):
    spec = VmSpec.from_vmx(VmxDocument.parse(f'ethernet0.present = "TRUE"\nethernet0.virtualDev = "{model}"\n'
                                             'ethernet0.connectionType = "nat"\n'.encode()))
    argv = build_qemu_argv(spec, env_for(spec, networks={0: UserNat()}))
    assert [d["driver"] for d in json_options(argv, "-device") if "netdev" in d] == [driver]
    assert json_options(argv, "-netdev") == [{"type": "user", "id": "net0"}]


@pytest.mark.parametrize("backend", [UserNat((HostForward("tcp", "127.0.0.1", 8080, 80),
                                              HostForward("udp", "0.0.0.0", 5353, 53))),
                                     Tap("mvt0123456789", "lab"), "unconnected"])
def test_a_hot_plugged_nic_is_the_one_a_power_on_builds(backend):
    """QMP's netdev_add and device_add get the very dictionaries -netdev and -device get as JSON, but for
    the PCI address: a running VMM's free slot is QEMU's to choose (the next power-on's may be taken)."""
    spec = VmSpec.from_vmx(VmxDocument.parse(b'ethernet3.present = "TRUE"\nethernet3.virtualDev = "e1000e"\n'))
    env = env_for(spec, networks={3: backend})
    (nic,) = spec.nics
    assert json_options(build_qemu_argv(spec, env), "-netdev") == [nic_netdev(nic, env)]
    assert [d for d in json_options(build_qemu_argv(spec, env), "-device") if d.get("netdev")] == [
        {**nic_device(nic, env), "bus": "pci.0", "addr": "0x02.0"}]
    assert nic_device(nic, env) == {"driver": "e1000e", "id": "ethernet3", "netdev": "net3", "mac": "00:0c:29:00:00:01"}


def test_user_mode_port_forwards_are_structured_hostfwd_rules():
    spec = VmSpec.from_vmx(VmxDocument.parse(b'ethernet0.present = "TRUE"\nethernet0.connectionType = "nat"\n'))
    forwards = (HostForward("tcp", "127.0.0.1", 8080, 80), HostForward("udp", "0.0.0.0", 5353, 53))
    (netdev,) = json_options(build_qemu_argv(spec, env_for(spec, networks={0: UserNat(forwards)})), "-netdev")
    assert netdev["hostfwd"] == [{"str": "tcp:127.0.0.1:8080-:80"}, {"str": "udp:0.0.0.0:5353-:53"}]


def test_explain_lists_every_device_it_builds():
    hardware = virtual_hardware(seed_spec(), env_for(seed_spec()))
    names = [d.name for d in hardware]
    assert names[:4] == ["machine", "cpus", "memory", "firmware"]
    assert {"scsi0", "scsi0:0", "ethernet0", "serial0", "svga", "qmp"} <= set(names)
    assert all(d.description for d in hardware)


@pytest.mark.parametrize("memory_mib, cache_mib", [(64, 32), (128, 64), (1024, 512), (16384, 1024)])
def test_a_tcg_vmm_gets_the_translation_cache_admission_counts_for_it(memory_mib, cache_mib):
    spec = seed_spec().replace(memory_mib=memory_mib)
    assert option_values(build_qemu_argv(spec, env_for(spec)), "-accel") == [f"tcg,tb-size={cache_mib}"]
    assert option_values(build_qemu_argv(spec, env_for(spec, accel="kvm")), "-accel") == ["kvm"]
    assert overhead_mib(memory_mib, "tcg") - overhead_mib(memory_mib, "kvm") == cache_mib


def test_every_vm_has_a_guest_agent_channel_on_a_socket_in_its_runtime_folder():
    argv = build_qemu_argv(seed_spec(), env_for(seed_spec()))
    ports = [d for d in json_options(argv, "-device") if d["driver"] == "virtserialport"]
    assert ports == [{"driver": "virtserialport", "bus": "agent-serial.0", "chardev": "agent",
                      "name": "org.qemu.guest_agent.0", "id": "agent-port"}]
    assert f"socket,id=agent,path={PATHS.agent_socket},server=on,wait=off" in option_values(argv, "-chardev")


def test_the_agent_socket_path_cannot_inject_chardev_options():
    paths = VmPaths(VM_DIR / "x.vmx", Path("/run/a,server=off,path=/etc/passwd"))
    argv = build_qemu_argv(seed_spec(), env_for(seed_spec(), paths))
    chardev = next(v for v in option_values(argv, "-chardev") if v.startswith("socket,id=agent,"))
    assert chardev == "socket,id=agent,path=/run/a,,server=off,,path=/etc/passwd/agent.sock,server=on,wait=off"
