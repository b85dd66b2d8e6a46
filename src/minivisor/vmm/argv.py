"""The VMM launcher: the only place that turns a VmSpec into a QEMU command line.

``virtual_hardware(spec, env)`` maps each piece of the specfile to QEMU
devices; ``build_qemu_argv(spec, env)`` flattens that into argv. Both are
pure (no I/O), so the translation is golden-tested.

Injection safety: block nodes, devices and netdevs are passed as JSON, so a
file name may contain commas, ``=`` or quotes. The few options QEMU does not
accept as JSON (``-chardev``) only carry paths minivisor chose or that the
datastore resolved, and their values are escaped the way QEMU's option parser
expects (``,`` doubled).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Union

from ..datastore.layout import VmPaths
from ..spec.devices import NIC_MODELS, SCSI_MODELS
from ..spec.vmspec import Disk, DiskController, Nic, VmSpec
from ..images.layers import ImageLayer
from ..units import human_size

__all__ = ["LaunchEnv", "device_id", "VirtualDevice", "virtual_hardware", "build_qemu_argv",
           "SANDBOX", "SHUTDOWN_TRACE", "qemu_opts", "Tap", "UserNat", "HostForward", "NetBackend",
           "netdev_id", "nic_netdev", "nic_device"]


@dataclass(frozen=True)
class Tap:
    """A tap minivisor makes on a network's bridge before the VMM starts; QEMU opens it by name."""

    ifname: str
    network: str


@dataclass(frozen=True)
class HostForward:
    """A port forward QEMU's user-mode NAT listens for on the host (parts checked by net.forwards)."""

    protocol: Literal["tcp", "udp"]
    host_addr: str  # an IPv4 address
    host_port: int
    guest_port: int

    @property
    def rule(self) -> str:
        """QEMU's ``hostfwd`` rule; empty guest address: the address slirp's DHCP gives the guest."""
        return f"{self.protocol}:{self.host_addr}:{self.host_port}-:{self.guest_port}"


@dataclass(frozen=True)
class UserNat:
    """QEMU's user-mode NAT (the host builds no networks), with the VM's port forwards to this NIC."""

    forwards: tuple[HostForward, ...] = ()


# What is behind a NIC: QEMU's user-mode NAT, nothing (link down), or a tap on a network's switch.
NetBackend = Union[Literal["unconnected"], UserNat, Tap]

# QEMU's seccomp filter: no spawning, no privilege changes, no obsolete syscalls.
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
# QEMU logs every shutdown request (guest power-off, QMP quit...) with its cause into vmm.log, so a
# supervisor that did not launch the VMM (no exit status) can tell a power-off from a kill.
SHUTDOWN_TRACE = "qemu_system_shutdown_request"

@dataclass(frozen=True)
class LaunchEnv:
    """Everything beyond the spec that the command line needs, already resolved."""

    name: str
    uuid: str
    qemu: str
    accel: Literal["kvm", "tcg"]
    paths: VmPaths
    disk_chains: Mapping[str, tuple[ImageLayer, ...]] = field(default_factory=dict)  # by node
    files: Mapping[str, Path] = field(default_factory=dict)  # cdrom nodes, serialN, floppyN
    macs: Mapping[int, str] = field(default_factory=dict)  # NIC index -> MAC
    networks: Mapping[int, NetBackend] = field(default_factory=dict)  # NIC index -> backend
    console_index: int | None = 0  # COM port of the minivisor console; None if the spec uses it
    incoming: bool = False  # the VMM waits for a saved state (a memory snapshot's) instead of booting


@dataclass(frozen=True)
class VirtualDevice:
    """One piece of virtual hardware: what the guest sees and how QEMU builds it."""

    name: str
    description: str
    args: tuple[str, ...]


def qemu_opts(*pairs: tuple[str, str | int]) -> str:
    """``key=value,...`` in QEMU's option syntax, escaping commas in values."""
    return ",".join(f"{key}={str(value).replace(',', ',,')}" for key, value in pairs)


def _json(**fields: object) -> str:
    return json.dumps({k: v for k, v in fields.items() if v is not None}, separators=(",", ":"))


def device_id(node: str) -> str:
    """The VMM's device id of a disk node (``scsi0:0`` -> ``scsi0-0``): QMP names disks by it."""
    return node.replace(":", "-")


def build_qemu_argv(spec: VmSpec, env: LaunchEnv) -> list[str]:
    """The complete QEMU command line for ``spec`` (starts paused: ``-S``)."""
    argv = [env.qemu]
    for device in virtual_hardware(spec, env):
        argv.extend(device.args)
    return argv


def virtual_hardware(spec: VmSpec, env: LaunchEnv) -> list[VirtualDevice]:
    """The VMM's devices in command-line order."""
    devices = [_machine(spec, env), _processors(spec), _memory(spec), _firmware(spec, env)]
    devices += _storage(spec, env)
    devices += [_nic(nic, env) for nic in spec.nics]
    devices += _serial_ports(spec, env)
    devices += [_floppy(spec, env)] if spec.floppies else []
    devices.append(_display(spec))
    devices.append(_control(env))
    if env.incoming:
        devices.append(_incoming())
    return devices


def _machine(spec: VmSpec, env: LaunchEnv) -> VirtualDevice:
    cpu = "host" if env.accel == "kvm" else "qemu64"
    args = ("-name", qemu_opts(("guest", env.name), ("debug-threads", "on")),
            "-uuid", env.uuid,
            "-machine", qemu_opts(("type", "pc"), ("usb", "off"), ("vmport", "off")),
            "-accel", env.accel, "-cpu", cpu,
            "-nodefaults", "-no-user-config", "-display", "none",
            "-sandbox", SANDBOX, "-msg", "timestamp=on", "-trace", SHUTDOWN_TRACE, "-S")
    accel = "KVM hardware virtualization" if env.accel == "kvm" else "TCG software emulation"
    return VirtualDevice("machine", f"PC (i440FX + PIIX3) with SeaBIOS, {accel}", args)


def _processors(spec: VmSpec) -> VirtualDevice:
    smp = qemu_opts(("cpus", spec.num_cpus), ("sockets", spec.sockets),
                    ("cores", spec.cores_per_socket), ("threads", 1))
    return VirtualDevice("cpus", f"{spec.num_cpus} vCPU ({spec.sockets} socket(s) x "
                         f"{spec.cores_per_socket} core(s))", ("-smp", smp))


def _memory(spec: VmSpec) -> VirtualDevice:
    return VirtualDevice("memory", f"{spec.memory_mib} MiB RAM", ("-m", f"{spec.memory_mib}M"))


def _firmware(spec: VmSpec, env: LaunchEnv) -> VirtualDevice:
    # SeaBIOS writes its progress to the debug port 0x402: kept as the VM's bios.log.
    chardev = qemu_opts(("id", "bioslog"), ("path", env.paths.bios_log))
    return VirtualDevice("firmware", "SeaBIOS (BIOS), log in bios.log",
                         ("-chardev", f"file,{chardev}",
                          "-device", _json(driver="isa-debugcon", iobase=0x402, chardev="bioslog")))


# -- storage ------------------------------------------------------------------
def _storage(spec: VmSpec, env: LaunchEnv) -> list[VirtualDevice]:
    devices = [_controller(c) for c in spec.controllers if c.bus in ("scsi", "sata", "nvme")]
    boot = spec.boot_disk
    for disk in spec.disks:
        controller = next(c for c in spec.controllers if c.name == disk.controller)
        devices.append(_disk(disk, controller, env, boot_disk=(disk == boot)))
    return devices


def _controller(controller: DiskController) -> VirtualDevice:
    if controller.bus == "scsi":
        model = SCSI_MODELS[controller.model]
        driver, description = model.driver, model.description
    elif controller.bus == "sata":
        driver, description = "ich9-ahci", "Intel ICH9 AHCI SATA controller"
    else:
        driver, description = "nvme", "NVMe controller"
    fields: dict[str, object] = {"driver": driver, "id": controller.name}
    if driver == "nvme":
        fields["serial"] = f"MVNVME{controller.index:02d}"
    return VirtualDevice(controller.name, description, ("-device", _json(**fields)))


def _node_id(disk: Disk, layer: int = 0) -> str:
    return f"{disk.bus}{disk.controller_index}-{disk.unit}-{layer}"


def _disk(disk: Disk, controller: DiskController, env: LaunchEnv, *, boot_disk: bool) -> VirtualDevice:
    args: list[str] = []
    drive = None
    if disk.kind == "disk":
        chain = env.disk_chains[disk.node]
        args += _blockdev_chain(disk, chain)
        drive = f"fmt-{_node_id(disk)}"
        size = chain[0].virtual_size
        what = f"hard disk, {chain[0].path.name} ({chain[0].format}, {human_size(size)}"
        what += f", {len(chain) - 1} backing layer(s))" if len(chain) > 1 else ")"
    elif disk.node in env.files:
        path = env.files[disk.node]
        args += _blockdev(f"file-{_node_id(disk)}", f"fmt-{_node_id(disk)}", path, "raw", read_only=True)
        drive = f"fmt-{_node_id(disk)}"
        what = f"CD-ROM, {path.name}"
    else:
        what = "CD-ROM, empty"
    device: dict[str, object] = {"driver": _disk_driver(disk), "id": device_id(disk.node),
                                 "drive": drive, **_disk_address(disk, controller, env.uuid)}
    if disk.kind == "disk" and disk.bus != "nvme":
        # A write that finds the datastore full pauses the VM (QEMU's io-error state) until space is freed
        # and it is resumed, instead of failing in the guest (a file system gone read-only or corrupt).
        # The device's default (auto) takes the block backend's, which QEMU 7.2 sets to enospc for
        # -blockdev nodes too: said here so no QEMU default decides it. nvme-ns has no such property.
        device["werror"] = "enospc"
    if boot_disk:
        device["bootindex"] = 0
    args += ["-device", _json(**device)]
    suffix = ", boot disk" if boot_disk else ""
    return VirtualDevice(disk.node, f"{what} on {controller.name}{suffix}", tuple(args))


def _blockdev_chain(disk: Disk, chain: tuple[ImageLayer, ...]) -> list[str]:
    """Block nodes for each layer, bottom first, each naming its backing explicitly."""
    args: list[str] = []
    for depth in reversed(range(len(chain))):
        layer = chain[depth]
        backing = f"fmt-{_node_id(disk, depth + 1)}" if depth + 1 < len(chain) else None
        args += _blockdev(f"file-{_node_id(disk, depth)}", f"fmt-{_node_id(disk, depth)}",
                          layer.path, layer.format,
                          read_only=depth > 0 or disk.read_only, backing=backing)
    return args


def _blockdev(file_node: str, format_node: str, path: Path, fmt: str, *,
              read_only: bool, backing: str | None = None) -> list[str]:
    file_spec = _json(**{"driver": "file", "node-name": file_node, "filename": str(path),
                         "read-only": read_only})
    fields: dict[str, object] = {"driver": fmt, "node-name": format_node, "file": file_node,
                                 "read-only": read_only}
    if fmt != "raw":
        # null: the image's own backing reference is never followed (or probed).
        fields["backing"] = backing
    return ["-blockdev", file_spec, "-blockdev", json.dumps(fields, separators=(",", ":"))]


def _disk_driver(disk: Disk) -> str:
    if disk.bus == "scsi":
        return "scsi-hd" if disk.kind == "disk" else "scsi-cd"
    if disk.bus == "nvme":
        return "nvme-ns"
    return "ide-hd" if disk.kind == "disk" else "ide-cd"


def _disk_address(disk: Disk, controller: DiskController, vm_uuid: str) -> dict[str, object]:
    if disk.bus == "scsi" and controller.model == "lsisas1068":
        # Linux's mptsas ignores a SAS disk whose address (QEMU: the wwn) is 0.
        return {"bus": f"{controller.name}.0", "scsi-id": disk.unit, "wwn": _wwn(vm_uuid, disk.node)}
    if disk.bus == "scsi":
        return {"bus": f"{controller.name}.0", "scsi-id": disk.unit}
    if disk.bus == "sata":
        return {"bus": f"{controller.name}.{disk.unit}"}
    if disk.bus == "nvme":
        return {"bus": controller.name, "nsid": disk.unit + 1}
    return {"bus": f"ide.{disk.controller_index}", "unit": disk.unit}


def _wwn(vm_uuid: str, node: str) -> int:
    """A stable NAA-5 world wide name for one disk of one VM."""
    digest = int.from_bytes(hashlib.sha256(f"{vm_uuid}/{node}".encode()).digest()[:8], "big")
    return (0x5 << 60) | (digest & ((1 << 60) - 1))


# -- network ------------------------------------------------------------------
def netdev_id(nic: Nic) -> str:
    """The VMM's id of the backend behind a NIC (QMP's ``netdev_add``/``hostfwd_add`` name it)."""
    return f"net{nic.index}"


def nic_netdev(nic: Nic, env: LaunchEnv) -> dict[str, object]:
    """The backend behind a NIC, as ``-netdev`` JSON and QMP's ``netdev_add`` take it."""
    backend = env.networks.get(nic.index, "unconnected")
    if isinstance(backend, Tap):
        # script=no: QEMU runs nothing (its sandbox forbids it anyway); the tap is on the bridge already.
        return {"type": "tap", "id": netdev_id(nic), "ifname": backend.ifname, "script": "no", "downscript": "no"}
    if isinstance(backend, UserNat):
        netdev: dict[str, object] = {"type": "user", "id": netdev_id(nic)}
        if backend.forwards:  # QAPI's NetdevUserOptions: hostfwd is a list of {"str": rule}
            netdev["hostfwd"] = [{"str": forward.rule} for forward in backend.forwards]
        return netdev
    # An isolated hub port: the NIC exists but nothing is on the other end.
    return {"type": "hubport", "id": netdev_id(nic), "hubid": 100 + nic.index}


def nic_device(nic: Nic, env: LaunchEnv) -> dict[str, object]:
    """The NIC itself, as ``-device`` JSON and QMP's ``device_add`` take it (QMP names it by the NIC's name)."""
    return {"driver": NIC_MODELS[nic.model].driver, "id": nic.name, "netdev": netdev_id(nic),
            "mac": env.macs[nic.index]}


def _nic(nic: Nic, env: LaunchEnv) -> VirtualDevice:
    backend = env.networks.get(nic.index, "unconnected")
    if isinstance(backend, Tap):
        where = f"network {backend.network!r} (tap {backend.ifname})"
    elif isinstance(backend, UserNat):
        where = "NAT (user-mode networking)" + "".join(f", {f.rule}" for f in backend.forwards)
    else:
        where = f"network {nic.network!r} (link disconnected)"
    description = f"{NIC_MODELS[nic.model].description} NIC, MAC {env.macs[nic.index]}, {where}"
    return VirtualDevice(nic.name, description, ("-netdev", _json(**nic_netdev(nic, env)),
                                                 "-device", _json(**nic_device(nic, env))))


# -- serial, floppy, display, control -----------------------------------------
def _serial_ports(spec: VmSpec, env: LaunchEnv) -> list[VirtualDevice]:
    devices = []
    if env.console_index is not None:
        # The console relay is this socket's one client; it writes serial.log (capped) and serves console.sock.
        chardev = qemu_opts(("id", "console"), ("path", env.paths.serial_socket), ("server", "on"),
                            ("wait", "off"))
        devices.append(VirtualDevice(
            f"serial{env.console_index}", "16550A serial port: minivisor console (serial.log)",
            ("-chardev", f"socket,{chardev}",
             "-device", _json(driver="isa-serial", chardev="console", index=env.console_index))))
    for port in spec.serial_ports:
        path = env.files[f"serial{port.index}"]
        chardev_id = f"serial{port.index}"
        if port.file_type == "file":
            chardev = f"file,{qemu_opts(('id', chardev_id), ('path', path))}"
            what = f"16550A serial port to file {path.name}"
        else:
            chardev = f"socket,{qemu_opts(('id', chardev_id), ('path', path), ('server', 'on' if port.pipe_server else 'off'), ('wait', 'off'))}"
            what = f"16550A serial port on UNIX socket {path.name}"
        devices.append(VirtualDevice(chardev_id, what, (
            "-chardev", chardev, "-device", _json(driver="isa-serial", chardev=chardev_id, index=port.index))))
    return devices


def _floppy(spec: VmSpec, env: LaunchEnv) -> VirtualDevice:
    args: list[str] = []
    names = []
    for drive in spec.floppies:
        key = f"floppy{drive.index}"
        if key in env.files:
            args += _blockdev(f"file-{key}", f"fmt-{key}", env.files[key], "raw", read_only=False)
            args += ["-device", _json(driver="floppy", unit=drive.index, drive=f"fmt-{key}")]
            names.append(env.files[key].name)
        else:
            args += ["-device", _json(driver="floppy", unit=drive.index)]
            names.append("empty")
    return VirtualDevice("floppy", f"floppy drive(s): {', '.join(names)}", tuple(args))


def _display(spec: VmSpec) -> VirtualDevice:
    if not spec.display.present:
        return VirtualDevice("svga", "no display adapter", ("-vga", "none"))
    vram_mb = max(1, spec.display.vram_bytes // (1024 * 1024))
    return VirtualDevice("svga", f"VMware SVGA II display, {vram_mb} MiB VRAM (headless)",
                         ("-vga", "none", "-device", _json(driver="vmware-svga", id="svga", vgamem_mb=vram_mb)))


def _control(env: LaunchEnv) -> VirtualDevice:
    qmp = qemu_opts(("id", "qmp"), ("path", env.paths.qmp_socket), ("server", "on"), ("wait", "off"))
    events = qemu_opts(("id", "events"), ("path", env.paths.events_socket), ("server", "on"), ("wait", "off"))
    return VirtualDevice("qmp", "QMP control sockets (owner-only): commands, and events for the console relay",
                         ("-chardev", f"socket,{qmp}", "-mon", "chardev=qmp,mode=control",
                          "-chardev", f"socket,{events}", "-mon", "chardev=events,mode=control"))


def _incoming() -> VirtualDevice:
    # "defer": the state arrives later, over QMP (migrate-incoming with a descriptor passed by getfd).
    return VirtualDevice("incoming", "waits for a saved memory and device state instead of booting",
                         ("-incoming", "defer"))
