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

import json
from collections.abc import Mapping
from pathlib import Path

from ..datastore.layout import VmPaths
from ..digest import sha256
from ..host.admission import tcg_cache_mib
from ..host.facts import Ovmf
from ..records import Record, default_factory
from ..spec.devices import NIC_MODELS, SCSI_MODELS, SOUND_MODELS, USB_MODELS
from ..spec.vmspec import Disk, DiskController, Nic, SerialPort, VmSpec
from ..images.layers import ImageLayer
from ..units import human_size
from .pci import PciLayout, PciPlace, pci_layout

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (~2.5 ms of a direct power-on)
if TYPE_CHECKING:
    from typing import Literal, Union

__all__ = ["LaunchEnv", "GATE_PREFIX", "gate_group", "device_id", "VirtualDevice", "virtual_hardware", "build_qemu_argv",
           "SANDBOX", "SHUTDOWN_TRACE", "qemu_opts", "Tap", "UserNat", "HostForward", "NetBackend",
           "netdev_id", "nic_netdev", "nic_device", "AGENT_CHANNEL"]


class Tap(Record, frozen=True):
    """A tap minivisor makes on a network's bridge before the VMM starts; QEMU opens it by name."""

    ifname: str
    network: str


class HostForward(Record, frozen=True):
    """A port forward QEMU's user-mode NAT listens for on the host (parts checked by net.forwards)."""

    protocol: Literal["tcp", "udp"]
    host_addr: str  # an IPv4 address
    host_port: int
    guest_port: int

    @property
    def rule(self) -> str:
        """QEMU's ``hostfwd`` rule; empty guest address: the address slirp's DHCP gives the guest."""
        return f"{self.protocol}:{self.host_addr}:{self.host_port}-:{self.guest_port}"


class UserNat(Record, frozen=True):
    """QEMU's user-mode NAT (the host builds no networks), with the VM's port forwards to this NIC."""

    forwards: tuple[HostForward, ...] = ()


# What is behind a NIC: QEMU's user-mode NAT, nothing (link down), or a tap on a network's switch.
if TYPE_CHECKING:
    NetBackend = Union[Literal["unconnected"], UserNat, Tap]
else:  # "unconnected" is a str at run time
    NetBackend = UserNat | Tap | str

# QEMU's seccomp filter: no spawning, no privilege changes, no obsolete syscalls.
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
# QEMU logs every shutdown request (guest power-off, QMP quit...) with its cause into vmm.log, so a
# supervisor that did not launch the VMM (no exit status) can tell a power-off from a kill.
SHUTDOWN_TRACE = "qemu_system_shutdown_request"
EVENTS_RECONNECT = 1  # seconds between QEMU's tries to connect its event monitor to a console relay
GATE_PREFIX = "gate-"  # the filter node a disk with VMDK layers is attached through

class LaunchEnv(Record, frozen=True):
    """Everything beyond the spec that the command line needs, already resolved."""

    name: str
    uuid: str
    qemu: str
    accel: Literal["kvm", "tcg"]
    paths: VmPaths
    disk_chains: Mapping[str, tuple[ImageLayer, ...]] = default_factory(dict)  # by node
    files: Mapping[str, Path] = default_factory(dict)  # cdrom nodes, serialN, floppyN
    macs: Mapping[int, str] = default_factory(dict)  # NIC index -> MAC
    networks: Mapping[int, NetBackend] = default_factory(dict)  # NIC index -> backend
    console_index: int | None = 0  # COM port of the minivisor console; None if the spec uses it
    incoming: bool = False  # the VMM waits for a saved state (a memory snapshot's) instead of booting
    uefi: Ovmf | None = None  # firmware = "efi": OVMF, its variables in paths.efi_vars; None: SeaBIOS

    @property
    def starts_paused(self) -> bool:
        """QEMU starts with its vCPUs stopped (``-S``) only when something must happen before the guest runs:
        a saved state to wait for, or a NIC whose link must go down first. Otherwise the guest runs at once,
        as under bare QEMU: its console waits in the relay's socket, which QEMU connects to at its start."""
        return self.incoming or "unconnected" in self.networks.values()

    @property
    def q35(self) -> bool:
        """An EFI VM is a Q35 PC (PCIe, as VMware's EFI hardware is, and virt-v2v's choice for UEFI guests;
        Secure Boot needs its SMM); a BIOS VM an i440FX PC, as it always was."""
        return self.uefi is not None


class VirtualDevice(Record, frozen=True):
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
    """The complete QEMU command line for ``spec`` (paused, ``-S``, if :attr:`LaunchEnv.starts_paused`)."""
    argv = [env.qemu]
    for device in virtual_hardware(spec, env):
        argv.extend(device.args)
    return argv


def virtual_hardware(spec: VmSpec, env: LaunchEnv) -> list[VirtualDevice]:
    """The VMM's devices in command-line order."""
    pci = pci_layout(pci_devices(spec), env.q35)
    devices = [_machine(spec, env), _processors(spec), _memory(spec), _firmware(spec, env)]
    devices += [_bridges(pci, env)] if pci.bridges else []
    devices += _storage(spec, env, pci.places)
    devices += [_nic(nic, env, pci.places[nic.name]) for nic in spec.nics]
    devices += _serial_ports(spec, env)
    devices += [_floppy(spec, env)] if spec.floppies else []
    devices.append(_display(spec, env, pci.places.get("svga")))
    devices += [_usb(spec, pci.places)] if spec.usb else []
    devices += [_sound(spec, pci.places.get("sound"))] if spec.sound else []
    devices.append(_guest_agent(env))
    devices.append(_control(env))
    if env.incoming:
        devices.append(_incoming())
    return devices


def pci_devices(spec: VmSpec) -> list[tuple[str, int | None]]:
    """The VM's PCI devices in command-line order, each with the pciSlotNumber it honours (or None)."""
    devices: list[tuple[str, int | None]] = [(c.name, c.pci_slot) for c in spec.controllers if c.bus != "ide"]
    devices += [(nic.name, nic.pci_slot) for nic in spec.nics]
    devices += [("svga", None)] if spec.display.present else []
    devices += [(usb.name, usb.pci_slot) for usb in spec.usb]
    devices += [("sound", spec.sound.pci_slot)] if spec.sound and spec.sound.model != "sb16" else []
    return devices


def _bridges(pci: PciLayout, env: LaunchEnv) -> VirtualDevice:
    """VMware's bridges the placed devices are behind (chassis numbers: 1, 2... in address order)."""
    args: list[str] = []
    for chassis, bridge in enumerate(pci.bridges, start=1):
        args += ["-device", _json(**bridge.device(env.q35, chassis))]
    names = ", ".join(f"{b.id} at {b.place.describe()}" for b in pci.bridges if not b.empty)
    if not env.q35:
        return VirtualDevice("pci-bridges", f"PCI-to-PCI bridges as VMware places them: {names}", tuple(args))
    empty = sum(1 for b in pci.bridges if b.empty)
    what = (f"PCIe root ports as VMware's: pciBridge4-7 at PCI 00:15-00:18, 8 functions each, each port's physical "
            f"slot the number VMware gives the device behind it (as guests name NICs: ens160); ")
    what += f"devices behind {names}; " if names else ""
    return VirtualDevice("pci-bridges", f"{what}{empty} empty for NICs plugged in while it runs", tuple(args))


def _accel(spec: VmSpec, env: LaunchEnv) -> str:
    """KVM, or TCG with a translation cache sized to the guest (what admission counts for it)."""
    if env.accel == "kvm":
        return "kvm"
    return f"tcg,tb-size={tcg_cache_mib(spec.memory_mib)}"


def _machine(spec: VmSpec, env: LaunchEnv) -> VirtualDevice:
    cpu = "host" if env.accel == "kvm" else "qemu64"
    secure = env.uefi is not None and env.uefi.secure_boot
    chipset = (("type", "q35"), ("smm", "on" if secure else "off")) if env.q35 else (("type", "pc"),)
    args = ("-name", qemu_opts(("guest", env.name), ("debug-threads", "on")),
            "-uuid", env.uuid,
            "-machine", qemu_opts(*chipset, ("usb", "off"), ("vmport", "off")),
            "-accel", _accel(spec, env), "-cpu", cpu,
            "-nodefaults", "-no-user-config", "-display", "none",
            "-sandbox", SANDBOX, "-msg", "timestamp=on", "-trace", SHUTDOWN_TRACE)
    args += ("-S",) if env.starts_paused else ()
    if env.q35:
        # QEMU's ACPI hot-plug would keep the root ports from the guest's PCIe hot-plug driver (its _OSC grants no
        # native hot-plug), and name their slots by ACPI _SUN: the guest would not find VMware's slot numbers.
        args += ("-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off")
    accel = "KVM hardware virtualization" if env.accel == "kvm" else "TCG software emulation"
    board = "PC (i440FX + PIIX3)"
    if env.q35:
        board = "PC (Q35 + ICH9, PCIe" + (", SMM for Secure Boot)" if secure else ")")
    return VirtualDevice("machine", f"{board}, {accel}", args)


def _processors(spec: VmSpec) -> VirtualDevice:
    smp = qemu_opts(("cpus", spec.num_cpus), ("sockets", spec.sockets),
                    ("cores", spec.cores_per_socket), ("threads", 1))
    return VirtualDevice("cpus", f"{spec.num_cpus} vCPU ({spec.sockets} socket(s) x "
                         f"{spec.cores_per_socket} core(s))", ("-smp", smp))


def _memory(spec: VmSpec) -> VirtualDevice:
    return VirtualDevice("memory", f"{spec.memory_mib} MiB RAM", ("-m", f"{spec.memory_mib}M"))


def _firmware(spec: VmSpec, env: LaunchEnv) -> VirtualDevice:
    # SeaBIOS (and OVMF's debug builds) write their progress to the debug port 0x402: kept as the VM's bios.log.
    chardev = qemu_opts(("id", "bioslog"), ("path", env.paths.bios_log))
    log = ("-chardev", f"file,{chardev}", "-device", _json(driver="isa-debugcon", iobase=0x402, chardev="bioslog"))
    if env.uefi is None:
        return VirtualDevice("firmware", "SeaBIOS (BIOS), log in bios.log", log)
    # Flash 0 is OVMF's code, read-only; flash 1 the VM's own variables, qcow2 so that they can be snapshotted.
    args = [*_blockdev("file-uefi-code", "uefi-code", env.uefi.code, "raw", read_only=True),
            *_blockdev("file-uefi-vars", "uefi-vars", env.paths.efi_vars, "qcow2", read_only=False),
            "-machine", qemu_opts(("pflash0", "uefi-code"), ("pflash1", "uefi-vars"))]
    what = f"UEFI (OVMF), variables in {env.paths.efi_vars.name}"
    if env.uefi.secure_boot:
        # Only code running in SMM may write the variable store: the guest cannot turn Secure Boot off.
        args += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
        what += ", Secure Boot on (Microsoft's keys enrolled)"
    return VirtualDevice("firmware", what, (*args, *log))


# -- storage ------------------------------------------------------------------
def _storage(spec: VmSpec, env: LaunchEnv, places: Mapping[str, PciPlace]) -> list[VirtualDevice]:
    devices = [_controller(c, places[c.name]) for c in spec.controllers if c.bus in ("scsi", "sata", "nvme")]
    boot = spec.boot_indexes()
    for disk in spec.disks:
        controller = next(c for c in spec.controllers if c.name == disk.controller)
        devices.append(_disk(disk, controller, env, boot.get(disk.node)))
    return devices


def _controller(controller: DiskController, place: PciPlace) -> VirtualDevice:
    if controller.bus == "scsi":
        model = SCSI_MODELS[controller.model]
        driver, description = model.driver, model.description
    elif controller.bus == "sata":
        driver, description = "ich9-ahci", "Intel ICH9 AHCI SATA controller"
    else:
        driver, description = "nvme", "NVMe controller"
    fields: dict[str, object] = {"driver": driver, "id": controller.name, **place.fields()}
    if driver == "nvme":
        fields["serial"] = f"MVNVME{controller.index:02d}"
    return VirtualDevice(controller.name, f"{description} at {place.describe()}", ("-device", _json(**fields)))


def gate_group(gate: str) -> str:
    """The throttle group (no limits) of a disk's gate node."""
    return f"{gate}-group"


def _node_id(disk: Disk, layer: int = 0) -> str:
    return f"{disk.bus}{disk.controller_index}-{disk.unit}-{layer}"


def _disk(disk: Disk, controller: DiskController, env: LaunchEnv, boot_index: int | None) -> VirtualDevice:
    args: list[str] = []
    drive = None
    if disk.kind == "disk":
        chain = env.disk_chains[disk.node]
        args += _blockdev_chain(disk, chain)
        drive = f"fmt-{_node_id(disk)}"
        if any(layer.format == "vmdk" for layer in chain):
            # QEMU's vmdk driver blocks saving the VM's state while its images are open: a filter node
            # between the device and the chain lets a memory snapshot close them for the save and open
            # them again (vmm.jobs), which a device's own root cannot be. A throttle filter with no limit
            # passes everything through, and block jobs see through filters.
            gate = f"{GATE_PREFIX}{_node_id(disk)}"
            args += ["-object", _json(**{"qom-type": "throttle-group", "id": gate_group(gate)}),
                     "-blockdev", _json(**{"driver": "throttle", "node-name": gate, "throttle-group": gate_group(gate),
                                          "file": drive, "read-only": disk.read_only})]
            drive = gate
        shown = chain[1:] if disk.mode == "independent-nonpersistent" else chain  # the overlay is not the disk
        what = f"hard disk, {shown[0].path.name} ({shown[0].format}, {human_size(shown[0].virtual_size)}"
        what += f", {len(shown) - 1} backing layer(s))" if len(shown) > 1 else ")"
        if shown is not chain:
            what += ", independent-nonpersistent (writes discarded at power-off)"
    elif disk.node in env.files:
        path = env.files[disk.node]
        args += _blockdev(f"file-{_node_id(disk)}", f"fmt-{_node_id(disk)}", path, "raw", read_only=True)
        drive = f"fmt-{_node_id(disk)}"
        what = f"CD-ROM, {path.name}"
    else:
        what = "CD-ROM, empty"
    address = _ide_on_q35(disk) if disk.bus == "ide" and env.q35 else _disk_address(disk, controller, env.uuid)
    device: dict[str, object] = {"driver": _disk_driver(disk), "id": device_id(disk.node), "drive": drive,
                                 **address}
    if disk.kind == "disk" and disk.bus != "nvme":
        # A write that finds the datastore full pauses the VM (QEMU's io-error state) until space is freed
        # and it is resumed, instead of failing in the guest (a file system gone read-only or corrupt).
        # The device's default (auto) takes the block backend's, which QEMU 7.2 sets to enospc for
        # -blockdev nodes too: said here so no QEMU default decides it. nvme-ns has no such property.
        device["werror"] = "enospc"
    if boot_index is not None:
        device["bootindex"] = boot_index  # the firmware tries the devices in bios.bootOrder's order
    args += ["-device", _json(**device)]
    suffix = f", boots {_ordinal(boot_index)}" if boot_index is not None else ""
    return VirtualDevice(disk.node, f"{what} on {controller.name}{suffix}", tuple(args))


def _ordinal(index: int) -> str:
    return {0: "first", 1: "second", 2: "third"}.get(index, f"{index + 1}th")


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


def _ide_on_q35(disk: Disk) -> dict[str, object]:
    """Q35 has no PIIX IDE: ide0:0 ... ide1:1 sit on the ICH9 AHCI's first four ports, in that order."""
    return {"bus": f"ide.{disk.controller_index * 2 + disk.unit}"}


def _wwn(vm_uuid: str, node: str) -> int:
    """A stable NAA-5 world wide name for one disk of one VM."""
    digest = int.from_bytes(sha256(f"{vm_uuid}/{node}".encode()).digest()[:8], "big")
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


def _nic(nic: Nic, env: LaunchEnv, place: PciPlace) -> VirtualDevice:
    backend = env.networks.get(nic.index, "unconnected")
    if isinstance(backend, Tap):
        where = f"network {backend.network!r} (tap {backend.ifname})"
    elif isinstance(backend, UserNat):
        where = "NAT (user-mode networking)" + "".join(f", {f.rule}" for f in backend.forwards)
    else:
        where = f"network {nic.network!r} (link disconnected)"
    description = f"{NIC_MODELS[nic.model].description} NIC at {place.describe()}, MAC {env.macs[nic.index]}, {where}"
    return VirtualDevice(nic.name, description, ("-netdev", _json(**nic_netdev(nic, env)),
                                                 "-device", _json(**nic_device(nic, env), **place.fields())))


# -- serial, floppy, display, control -----------------------------------------
def _serial_ports(spec: VmSpec, env: LaunchEnv) -> list[VirtualDevice]:
    devices = []
    if env.console_index is not None:
        # QEMU opens at its start the two FIFOs the launch made (serial.in, serial.out): what the guest prints
        # waits in serial.out until the console relay reads it, which writes serial.log (capped) and serves
        # console.sock. A pipe, not a socket: QEMU's UART writes one byte at a time, and a pipe packs them into
        # pages (the launch makes it 256 KiB) where a socket spends a buffer on each: ~280 bytes filled one, and
        # under host load OVMF's serial driver timed out behind a late relay and its shell gave up.
        chardev = qemu_opts(("id", "console"), ("path", env.paths.serial_pipes))
        devices.append(VirtualDevice(
            f"serial{env.console_index}", "16550A serial port: minivisor console (serial.log)",
            ("-chardev", f"pipe,{chardev}",
             "-device", _json(driver="isa-serial", chardev="console", index=env.console_index))))
    for port in spec.serial_ports:
        chardev_id = f"serial{port.index}"
        chardev, what = _serial_backend(port, chardev_id, env)
        devices.append(VirtualDevice(chardev_id, f"16550A serial port {what}", (
            "-chardev", chardev, "-device", _json(driver="isa-serial", chardev=chardev_id, index=port.index))))
    return devices


def _serial_backend(port: SerialPort, chardev_id: str, env: LaunchEnv) -> tuple[str, str]:
    """The ``-chardev`` of a serial port and what it is connected to. Only paths the datastore resolved or
    minivisor chose, and numbers, reach the option (escaped): never text from the specfile."""
    if port.file_type == "file":
        path = env.files[chardev_id]
        return f"file,{qemu_opts(('id', chardev_id), ('path', path))}", f"to file {path.name}"
    if port.file_type == "pipe":
        path = env.files.get(chardev_id) or env.paths.runtime_dir / f"{chardev_id}.sock"
        server = "on" if port.pipe_server else "off"
        opts = qemu_opts(("id", chardev_id), ("path", path), ("server", server), ("wait", "off"))
        return f"socket,{opts}", f"on UNIX socket {path}"
    if port.file_type == "network":
        opts = qemu_opts(("id", chardev_id), ("host", "127.0.0.1"), ("port", int(port.tcp_port or 0)),
                         ("server", "on"), ("wait", "off"), ("telnet", "on" if port.telnet else "off"))
        return f"socket,{opts}", f"on TCP 127.0.0.1:{port.tcp_port}{' (telnet)' if port.telnet else ''}"
    return f"null,{qemu_opts(('id', chardev_id))}", "connected to nothing"


def _floppy(spec: VmSpec, env: LaunchEnv) -> VirtualDevice:
    # The boot order of floppy drives is the controller's (bootindexA, bootindexB). Q35 has no floppy
    # controller of its own: an ISA one is added, as on VMware's chipset; the i440FX's is built in.
    boot = spec.boot_indexes()
    order = {f"bootindex{'AB'[d.index]}": boot[f"floppy{d.index}"] for d in spec.floppies if f"floppy{d.index}" in boot}
    if env.q35:
        args: list[str] = ["-device", _json(driver="isa-fdc", id="fdc", **order)]
    else:
        args = [arg for prop, index in order.items() for arg in ("-global", f"isa-fdc.{prop}={index}")]
    bus = "fdc.0" if env.q35 else None
    names = []
    for drive in spec.floppies:
        key = f"floppy{drive.index}"
        if key in env.files:
            args += _blockdev(f"file-{key}", f"fmt-{key}", env.files[key], "raw", read_only=False)
            args += ["-device", _json(driver="floppy", unit=drive.index, drive=f"fmt-{key}", bus=bus)]
            names.append(env.files[key].name)
        else:
            args += ["-device", _json(driver="floppy", unit=drive.index, bus=bus)]
            names.append("empty")
    return VirtualDevice("floppy", f"floppy drive(s): {', '.join(names)}", tuple(args))


def _display(spec: VmSpec, env: LaunchEnv, place: PciPlace | None) -> VirtualDevice:
    if place is None:
        return VirtualDevice("svga", "no display adapter", ("-vga", "none"))
    vram_mb = max(1, spec.display.vram_bytes // (1024 * 1024))
    # The screen is served on a UNIX socket in the owner-only runtime folder: never on a TCP port.
    vnc = "unix:" + str(env.paths.vnc_socket).replace(",", ",,")
    return VirtualDevice("svga", f"VMware SVGA II display at {place.describe()}, {vram_mb} MiB VRAM; screen on VNC at "
                                 f"{env.paths.vnc_socket} (vm display)",
                         ("-vga", "none", "-device", _json(driver="vmware-svga", id="svga", vgamem_mb=vram_mb,
                                                           **place.fields()),
                          "-vnc", vnc))


def _usb(spec: VmSpec, places: Mapping[str, PciPlace]) -> VirtualDevice:
    """The USB controllers, and a tablet on the newest one: the pointer goes where the VNC client points."""
    args: list[str] = []
    for usb in spec.usb:
        args += ["-device", _json(driver=USB_MODELS[usb.name].driver, id=usb.name, **places[usb.name].fields())]
    args += ["-device", _json(driver="usb-tablet", id="tablet", bus=f"{spec.usb[-1].name}.0")]
    what = "; ".join(f"{USB_MODELS[u.name].description} at {places[u.name].describe()}" for u in spec.usb)
    return VirtualDevice("usb", f"{what}; a USB tablet on the {USB_MODELS[spec.usb[-1].name].description}",
                         tuple(args))


def _sound(spec: VmSpec, place: PciPlace | None) -> VirtualDevice:
    """The sound card, playing to QEMU's null audio backend: the guest has its card, the host hears nothing."""
    assert spec.sound is not None
    model = SOUND_MODELS[spec.sound.model]
    args = ["-audiodev", _json(driver="none", id="audio")]
    card: dict[str, object] = {"driver": model.driver, "id": "sound", **(place.fields() if place else {})}
    if model.driver == "intel-hda":
        args += ["-device", _json(**card), "-device", _json(driver="hda-duplex", bus="sound.0", audiodev="audio")]
    else:
        args += ["-device", _json(**card, audiodev="audio")]
    where = f" at {place.describe()}" if place else ""
    return VirtualDevice("sound", f"{model.description}{where}, connected to no host audio device", tuple(args))


AGENT_CHANNEL = "org.qemu.guest_agent.0"  # the port name qemu-ga (and every distribution's udev rule) looks for


def _guest_agent(env: LaunchEnv) -> VirtualDevice:
    """A virtio-serial port for the QEMU guest agent, on a UNIX socket minivisor connects to.

    Added last among the PCI devices, so the slots of every other device stay where they were.
    QEMU 7.2 takes ``-chardev`` only in its option syntax: the path is minivisor's own, escaped.
    """
    chardev = qemu_opts(("id", "agent"), ("path", env.paths.agent_socket), ("server", "on"), ("wait", "off"))
    return VirtualDevice("agent", f"virtio-serial channel {AGENT_CHANNEL} for the QEMU guest agent "
                                  f"(socket {env.paths.agent_socket.name})",
                         ("-chardev", f"socket,{chardev}",
                          "-device", _json(driver="virtio-serial-pci", id="agent-serial"),
                          "-device", _json(driver="virtserialport", bus="agent-serial.0", chardev="agent",
                                           name=AGENT_CHANNEL, id="agent-port")))


def _control(env: LaunchEnv) -> VirtualDevice:
    qmp = qemu_opts(("id", "qmp"), ("path", env.paths.qmp_socket), ("server", "on"), ("wait", "off"))
    # QEMU connects to the relay's socket, made before QEMU starts (with reconnect, the connect happens in QEMU's
    # main loop: the relay asks the run state once connected), and again every second while it is not connected:
    # a relay started for a running VM whose relay was killed gets it. (QEMU 9.2 renames it reconnect-ms.)
    events = qemu_opts(("id", "events"), ("path", env.paths.events_socket), ("server", "off"),
                       ("reconnect", EVENTS_RECONNECT))
    return VirtualDevice("qmp", "QMP control sockets (owner-only): commands, and events for the console relay",
                         ("-chardev", f"socket,{qmp}", "-mon", "chardev=qmp,mode=control",
                          "-chardev", f"socket,{events}", "-mon", "chardev=events,mode=control"))


def _incoming() -> VirtualDevice:
    # "defer": the state arrives later, over QMP (migrate-incoming with a descriptor passed by getfd).
    return VirtualDevice("incoming", "waits for a saved memory and device state instead of booting",
                         ("-incoming", "defer"))
