"""Check a VmSpec against the host and the datastore, and resolve what it names.

:func:`resolve_resources` does the I/O the pure launcher must not: it applies
the datastore's path policy to every file the specfile names, reads disk
headers (backing chains), fills in MAC addresses and picks network backends.
Every problem is a user-facing error naming what is wrong and how to fix it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from .datastore import Datastore
from .disks import ImageLayer, format_for, resolve_chain
from .errors import DiskError, SpecError
from .launcher import NetBackend
from .spec import Nic, VmSpec

__all__ = ["Resources", "check_host_fit", "resolve_resources", "generated_mac"]

# VMware's prefix for MACs it generates on hosted products.
VMWARE_GENERATED_OUI = "00:0c:29"


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


def generated_mac(uuid: str, index: int) -> str:
    """A stable MAC for NIC ``index`` of the VM with this UUID (VMware's 00:0c:29 prefix)."""
    digest = hashlib.sha256(f"{uuid}/{index}".encode()).digest()
    return VMWARE_GENERATED_OUI + "".join(f":{b:02x}" for b in digest[:3])


def resolve_resources(spec: VmSpec, datastore: Datastore, vm_dir: Path, uuid: str) -> Resources:
    """Resolve every file, address and network the spec names."""
    warnings: list[str] = list(spec.warnings)

    def resolve(base: Path, name: str, what: str = "file") -> Path:
        return datastore.resolve(base, name, what=what)

    chains: dict[str, tuple[ImageLayer, ...]] = {}
    files: dict[str, Path] = {}
    for disk in spec.disks:
        if disk.file_name is None:
            continue
        path = resolve(vm_dir, disk.file_name, f"{disk.node}.fileName")
        if disk.kind == "cdrom":
            files[disk.node] = _existing(path, f"{disk.node}.fileName")
        else:
            chains[disk.node] = resolve_chain(path, format_for(path), lambda base, name: resolve(base, name))
    for port in spec.serial_ports:
        if not port.file_name:
            raise SpecError(f"serial{port.index} has no fileName",
                            hint=f'name a file in the VM folder, e.g. serial{port.index}.fileName = "serial{port.index}.log"')
        files[f"serial{port.index}"] = resolve(vm_dir, port.file_name, f"serial{port.index}.fileName")
    for drive in spec.floppies:
        if drive.file_name:
            key = f"floppy{drive.index}"
            files[key] = _existing(resolve(vm_dir, drive.file_name, f"{key}.fileName"), f"{key}.fileName")
    macs = {nic.index: nic.mac or generated_mac(uuid, nic.index) for nic in spec.nics}
    _check_unique_macs(macs)
    networks = {nic.index: _network(nic, warnings) for nic in spec.nics}
    used_ports = {port.index for port in spec.serial_ports}
    console = 0 if 0 not in used_ports else None
    if console is None:
        warnings.append("serial0 is taken by the specfile, so minivisor's console (vm console, vm exec) is off")
    return Resources(chains, files, macs, networks, console, tuple(warnings))


def _existing(path: Path, what: str) -> Path:
    if not os.path.isfile(path):
        raise DiskError(f"{what} names {path}, which does not exist", hint="fix the fileName or create the file")
    return path


def _check_unique_macs(macs: dict[int, str]) -> None:
    seen: dict[str, int] = {}
    for index, mac in macs.items():
        if mac in seen:
            raise SpecError(f"ethernet{seen[mac]} and ethernet{index} have the same MAC {mac}",
                            hint=f"give ethernet{index} another address")
        seen[mac] = index


def _network(nic: Nic, warnings: list[str]) -> NetBackend:
    """NAT is built in; named networks arrive later, so those NICs start unplugged."""
    if nic.connection_type == "nat" and not nic.network_name:
        return "user" if nic.start_connected else _unplugged(nic, warnings, "startConnected is FALSE")
    if nic.connection_type == "none":
        return "unconnected"
    return _unplugged(nic, warnings, f"network {nic.network!r} is not known to this host")


def _unplugged(nic: Nic, warnings: list[str], why: str) -> NetBackend:
    warnings.append(f"{nic.name}: {why}; the NIC is present with its link disconnected")
    return "unconnected"

