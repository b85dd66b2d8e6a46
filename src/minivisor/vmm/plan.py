"""The launch plan: a spec checked against the host and the datastore, and everything it names resolved.

:func:`make_plan` is every check a power-on makes before anything is touched;
``vm explain`` shows the plan it returns. :func:`resolve_resources` does the I/O
the pure launcher (:mod:`minivisor.vmm.argv`) must not: it applies
the VM's path policy (:class:`~minivisor.datastore.store.Scope`) to every file the
specfile names and every backing file and extent the disk headers name, keeps
device files off the VM's disks, fills in MAC addresses and picks network backends.
Every problem is a user-facing error naming what is wrong and how to fix it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .. import dirs
from ..datastore.catalog import NetworkEntry
from ..datastore.inventory import read_vmx
from ..datastore.layout import VmPaths
from ..datastore.store import Scope
from ..errors import SpecError
from ..host import facts
from ..host.accel import choose_accel
from ..host.placement import check_affinity, notes
from ..spec.identity import generated_mac
from ..spec.vmsd import SnapshotTree, vmsd_path
from ..spec.vmspec import Nic, VmSpec
from ..images.layers import ImageLayer, layer_files
from ..net.names import BRIDGED, NAT, is_network_name, tap_name, wanted_network
from ..text import excerpt
from .argv import HostForward, LaunchEnv, NetBackend, Tap, UserNat, build_qemu_argv

__all__ = ["LaunchPlan", "make_plan", "Resources", "check_host_fit", "resolve_resources", "resolve_files",
           "HostNetworks"]


@dataclass(frozen=True)
class HostNetworks:
    """The networks NICs may join on this host: by lower-case name, or none (``reason`` says why) if the host
    cannot build them, when NAT is QEMU's user-mode networking and the VM's port forwards (by NIC index) are its."""

    networks: Mapping[str, NetworkEntry] | None
    reason: str = ""
    user_forwards: Mapping[int, tuple[HostForward, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class LaunchPlan:
    """What a power-on builds: the spec, the environment resolved for it, and what the user should know."""

    spec: VmSpec
    env: LaunchEnv
    warnings: tuple[str, ...]

    @property
    def argv(self) -> list[str]:
        return build_qemu_argv(self.spec, self.env)

    @property
    def links_down(self) -> list[str]:
        """NICs whose link starts disconnected (no network behind them)."""
        return [nic.name for nic in self.spec.nics if self.env.networks[nic.index] == "unconnected"]

    @property
    def taps(self) -> dict[int, Tap]:
        """NIC index -> the tap it needs on a network's bridge."""
        return {index: backend for index, backend in self.env.networks.items() if isinstance(backend, Tap)}


def make_plan(name: str, uuid: str, paths: VmPaths, scope: Scope, *, incoming: bool = False,
              networks: HostNetworks = HostNetworks(None, "no networks given")) -> LaunchPlan:
    """Read the specfile and check it against the host and the datastore; raises what is wrong."""
    spec = VmSpec.from_vmx(read_vmx(paths.vmx))
    check_host_fit(spec, host_memory_mib=facts.host_memory_mib(), host_cpus=facts.host_cpus())
    check_affinity(spec.sched)
    resources = resolve_resources(spec, scope, paths.vmx, uuid, networks)
    qemu = facts.find_qemu()
    accel = choose_accel(dirs.cache_dir(), qemu)
    env = LaunchEnv(name=name, uuid=uuid, qemu=qemu, accel=accel.accel, paths=paths,
                    disk_chains=resources.disk_chains, files=resources.files, macs=resources.macs,
                    networks=resources.networks, console_index=resources.console_index, incoming=incoming)
    warnings = resources.warnings + ((accel.warning,) if accel.warning else ()) + notes(spec)
    return LaunchPlan(spec, env, warnings)


@dataclass(frozen=True)
class Resources:
    """Files, addresses and networks a spec resolves to on this host."""

    disk_chains: dict[str, tuple[ImageLayer, ...]]
    files: dict[str, Path]
    macs: dict[int, str]
    networks: dict[int, NetBackend]
    console_index: int | None
    warnings: tuple[str, ...]


def check_host_fit(spec: VmSpec, *, host_memory_mib: int, host_cpus: int) -> None:
    """Refuse hardware this host cannot give."""
    if spec.firmware == "efi":
        # Booting an EFI guest on SeaBIOS would fail later and less clearly.
        raise SpecError('firmware = "efi" is not supported yet: minivisor boots VMs with SeaBIOS',
                        hint='set firmware = "bios" if the guest can boot from BIOS')
    if spec.memory_mib > host_memory_mib:
        raise SpecError(f"memSize = {spec.memory_mib} MiB is more than this host's memory ({host_memory_mib} MiB)",
                        hint=f"lower memSize to at most {host_memory_mib}")
    if spec.num_cpus > host_cpus:
        raise SpecError(f"numvcpus = {spec.num_cpus} is more than this host's {host_cpus} CPU(s)",
                        hint=f"lower numvcpus to at most {host_cpus}")


def resolve_resources(spec: VmSpec, scope: Scope, vmx: Path, uuid: str, networks: HostNetworks) -> Resources:
    """Resolve every file, address and network the spec names."""
    warnings: list[str] = list(spec.warnings)
    chains, files = resolve_files(spec, scope, vmx)
    macs = {nic.index: nic.mac or generated_mac(uuid, nic.index) for nic in spec.nics}
    _check_unique_macs(macs)
    backends = {nic.index: _network(nic, uuid, networks, warnings) for nic in spec.nics}
    used_ports = {port.index for port in spec.serial_ports}
    console = 0 if 0 not in used_ports else None
    if console is None:
        warnings.append("serial0 is taken by the specfile, so minivisor's console (vm console, vm exec) is off")
    return Resources(chains, files, macs, backends, console, tuple(warnings))


def resolve_files(spec: VmSpec, scope: Scope, vmx: Path, *, missing_ok: bool = False
                  ) -> tuple[dict[str, tuple[ImageLayer, ...]], dict[str, Path]]:
    """Every file the VMM would open, under the VM's path policy: disk chains by node, and the
    CD-ROM, floppy and serial files. ``missing_ok`` (at register): an absent image is skipped."""
    vm_dir = vmx.parent
    chains: dict[str, tuple[ImageLayer, ...]] = {}
    files: dict[str, Path] = {}

    def image(name: str, what: str) -> Path | None:
        path = scope.path(vm_dir, name, what)
        return None if missing_ok and not os.path.lexists(path) else scope.image(vm_dir, name, what)

    for disk in spec.disks:
        if disk.file_name is None or (path := image(disk.file_name, f"{disk.node}.fileName")) is None:
            continue
        if disk.kind == "cdrom":
            files[disk.node] = path
        else:
            chains[disk.node] = scope.chain(path)
    for port in spec.serial_ports:
        if not port.file_name:
            raise SpecError(f"serial{port.index} has no fileName",
                            hint=f'name a file in the VM folder, e.g. serial{port.index}.fileName = "serial{port.index}.log"')
        files[f"serial{port.index}"] = scope.output(vm_dir, port.file_name, f"serial{port.index}.fileName",
                                                    socket=port.file_type == "pipe")
    for drive in spec.floppies:
        key = f"floppy{drive.index}"
        if drive.file_name and (path := image(drive.file_name, f"{key}.fileName")) is not None:
            files[key] = path
    if spec.nvram:
        scope.path(vm_dir, spec.nvram, "nvram")
    _check_devices_own_their_files(files, chains, _snapshot_files(vmx))
    return chains, files


def _snapshot_files(vmx: Path) -> set[str]:
    """Real paths of the files the VM's snapshots froze."""
    tree = SnapshotTree.load(vmsd_path(vmx))
    return {os.path.realpath(vmx.parent / name) for name in tree.files()}


def _check_devices_own_their_files(files: dict[str, Path], chains: dict[str, tuple[ImageLayer, ...]],
                                   snapshot_files: set[str]) -> None:
    """No device file is a disk layer or a snapshot's file, and none that is written is shared with another device.

    A serial port's file is truncated and written by the guest, a floppy is
    written raw: either on a disk layer would hand the guest its qcow2 headers.
    """
    disks = {os.path.realpath(path) for chain in chains.values() for layer in chain
             for path in layer_files(layer)} | snapshot_files
    owners: dict[str, str] = {}
    for key, path in files.items():
        real = os.path.realpath(path)
        if real in disks:
            raise SpecError(f"{key} names {path}, a disk of this VM", hint=f"give {key} a file of its own")
        other = owners.setdefault(real, key)
        if other != key and (_written(key) or _written(other)):  # two CD-ROMs may share an image
            raise SpecError(f"{key} and {other} name the same file {path}", hint=f"give {key} a file of its own")


def _written(device: str) -> bool:
    """Serial ports and floppies write their files; CD-ROMs (named by their node, e.g. ide1:0) do not."""
    return device.startswith(("serial", "floppy"))


def _check_unique_macs(macs: dict[int, str]) -> None:
    seen: dict[str, int] = {}
    for index, mac in macs.items():
        if mac in seen:
            raise SpecError(f"ethernet{seen[mac]} and ethernet{index} have the same MAC {mac}",
                            hint=f"give ethernet{index} another address")
        seen[mac] = index


def _network(nic: Nic, uuid: str, host: HostNetworks, warnings: list[str]) -> NetBackend:
    """What is behind a NIC: a tap on the switch of the network it names, QEMU's user-mode NAT where the host
    builds no networks, or nothing (its link down, with a warning saying why and what to do)."""
    if nic.connection_type == "none":
        return "unconnected"
    if not nic.start_connected:
        return _unplugged(nic, warnings, "startConnected is FALSE")
    wanted = wanted_network(nic)
    if wanted is None:
        return _unplugged(nic, warnings, f"connectionType {nic.connection_type!r} names no network minivisor has")
    if host.networks is None:
        if wanted == NAT:
            return UserNat(tuple(host.user_forwards.get(nic.index, ())))
        return _unplugged(nic, warnings, f"network {excerpt(wanted)} needs bridges and taps, which this host cannot "
                                         f"make ({host.reason})")
    entry = host.networks.get(wanted.lower())
    if entry is None and wanted == BRIDGED:
        entry = next((n for n in host.networks.values() if n.mode == "bridged"), None)
    if entry is None:
        if wanted == BRIDGED:
            make = "make one with: minivisor net create bridged --bridge HOSTIF"
        elif is_network_name(wanted):
            make = f"create it with: minivisor net create {wanted}"
        else:
            make = "a network name is 1-32 letters, digits, '.', '_' or '-'"
        return _unplugged(nic, warnings, f"network {excerpt(wanted)} does not exist ({make})")
    return Tap(tap_name(uuid, nic.index), entry.name)


def _unplugged(nic: Nic, warnings: list[str], why: str) -> NetBackend:
    warnings.append(f"{nic.name}: {why}; the NIC is present with its link disconnected")
    return "unconnected"

