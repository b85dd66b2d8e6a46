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
import stat
from collections.abc import Callable, Mapping
from pathlib import Path

from .. import dirs
from ..datastore.catalog import NetworkEntry
from ..datastore.inventory import read_vmx
from ..datastore.layout import VmPaths
from ..datastore.store import Scope
from ..errors import PathError, SpecError
from ..host import facts
from ..host.facts import Ovmf
from ..host.accel import choose_accel
from ..host.placement import check_affinity, notes
from ..records import Record, default_factory
from ..spec.fidelity import KeyNote
from ..spec.identity import generated_mac
from ..spec.vmsd import SnapshotTree, vmsd_path
from ..spec.vmspec import Nic, VmSpec
from ..spec.vmx import VmxDocument
from ..images.layers import ImageLayer, layer_files
from ..net.names import BRIDGED, NAT, is_network_name, tap_name, wanted_network
from ..text import excerpt
from .argv import HostForward, LaunchEnv, NetBackend, Tap, UserNat, build_qemu_argv

__all__ = ["LaunchPlan", "make_plan", "Resources", "check_host_fit", "resolve_resources", "resolve_files",
           "HostNetworks", "DISCARD_PREFIX", "check_specfile", "check_document", "NicPlacement", "place_nic"]

# The overlay that takes an independent-nonpersistent disk's writes during one power-on: its name starts like
# the datastore's own metadata, so no specfile may name it (datastore.store.is_vm_metadata).
DISCARD_PREFIX = ".minivisor-discard-"


class HostNetworks(Record, frozen=True):
    """The networks NICs may join on this host: by lower-case name, or none (``reason`` says why) if the host
    cannot build them, when NAT is QEMU's user-mode networking and the VM's port forwards (by NIC index) are its."""

    networks: Mapping[str, NetworkEntry] | None
    reason: str = ""
    user_forwards: Mapping[int, tuple[HostForward, ...]] = default_factory(dict)


class LaunchPlan(Record, frozen=True):
    """What a power-on builds: the spec, the environment resolved for it, and what the user should know."""

    spec: VmSpec
    env: LaunchEnv
    warnings: tuple[str, ...]
    notes: tuple[KeyNote, ...] = ()  # the spec's and the host's: what became of each device not simply virtualized

    @property
    def argv(self) -> list[str]:
        return build_qemu_argv(self.spec, self.env)

    @property
    def links_down(self) -> list[str]:
        """NICs whose link starts disconnected (no network behind them)."""
        return [nic.name for nic in self.spec.nics if self.env.networks[nic.index] == "unconnected"]

    @property
    def discard_overlays(self) -> list[tuple[ImageLayer, ImageLayer]]:
        """(overlay, the disk under it) of each independent-nonpersistent disk: made before the VMM starts."""
        return [(chain[0], chain[1]) for chain in self.env.disk_chains.values()
                if chain[0].path.name.startswith(DISCARD_PREFIX)]

    @property
    def taps(self) -> dict[int, Tap]:
        """NIC index -> the tap it needs on a network's bridge."""
        return {index: backend for index, backend in self.env.networks.items() if isinstance(backend, Tap)}

    @property
    def user_forwards(self) -> dict[int, tuple[HostForward, ...]]:
        """NIC index -> the host ports QEMU's user-mode NAT behind it listens on (NICs without any left out)."""
        return {index: backend.forwards for index, backend in self.env.networks.items()
                if isinstance(backend, UserNat) and backend.forwards}


def make_plan(name: str, uuid: str, paths: VmPaths, scope: Scope, *, incoming: bool = False,
              networks: Callable[[], HostNetworks] | None = None, spec: VmSpec | None = None) -> LaunchPlan:
    """Read the specfile and check it against the host and the datastore; raises what is wrong.

    ``networks`` gives the networks NICs may join; it is asked only if the spec has NICs (it loads the
    network modules and reads the catalog: a VM without NICs powers on without them). ``spec``: the
    specfile as the caller has just read it, under the same turn (not read a second time)."""
    spec = spec or VmSpec.from_vmx(read_vmx(paths.vmx))
    fit = _host_notes(spec)
    host = networks() if networks is not None and spec.nics else HostNetworks(None, "no networks given")
    resources = resolve_resources(spec, scope, paths.vmx, uuid, host)
    qemu = facts.find_qemu()
    uefi = _uefi(spec, paths, name)
    accel = choose_accel(dirs.cache_dir(), qemu)
    env = LaunchEnv(name=name, uuid=uuid, qemu=qemu, accel=accel.accel, paths=paths, uefi=uefi,
                    disk_chains=resources.disk_chains, files=resources.files, macs=resources.macs,
                    networks=resources.networks, console_index=resources.console_index, incoming=incoming)
    found = fit + resources.notes
    # Why there is no KVM is said by the power-on that probed (once per boot: the answer is cached), not by every
    # one: each names its accelerator, and `host info` gives the reason.
    warnings = (resources.warnings + tuple(n.warning for n in found if n.warns)
                + ((accel.warning,) if accel.warning and accel.probed else ()) + notes(spec))
    return LaunchPlan(spec, env, warnings, spec.notes + found)


def check_specfile(vmx: Path, networks: HostNetworks | None = None) -> tuple[VmxDocument, VmSpec, tuple[KeyNote, ...]]:
    """What power-on would make of any specfile on this host, with nothing written and every host folder
    allowed (register applies the datastore's path policy): the same reading, host checks and file
    resolution as :func:`make_plan`. A hard disk whose file is missing is noted ``refused``; given a
    datastore's ``networks``, a NIC whose network is not there ``disconnected`` (power-on leaves its link down)."""
    doc = read_vmx(vmx)
    folder = os.path.realpath(vmx.parent)
    spec, notes = check_document(doc, vmx, Scope(folder, folder, allowed=("/",)), networks)
    return doc, spec, notes


def check_document(doc: VmxDocument, vmx: Path, scope: Scope, networks: HostNetworks | None = None
                   ) -> tuple[VmSpec, tuple[KeyNote, ...]]:
    """:func:`check_specfile` of a document not written yet (an edit of ``vmx``), under ``scope``'s path policy:
    raises what power-on would refuse at once, notes the rest."""
    spec = VmSpec.from_vmx(doc)
    fit = _host_notes(spec)
    chains, _, media = resolve_files(spec, scope, vmx, missing_ok=True)
    missing = tuple(KeyNote(d.node, "refused", f"its disk {d.file_name} does not exist: power-on stops here")
                    for d in spec.disks if d.kind == "disk" and d.node not in chains)
    links = _link_notes(spec, networks) if networks is not None else ()
    return spec, spec.notes + fit + media + missing + links


def _link_notes(spec: VmSpec, networks: HostNetworks) -> tuple[KeyNote, ...]:
    """The NICs power-on would leave with their link down, and why (what :func:`_network` warns)."""
    notes = []
    for nic in spec.nics:
        said: list[str] = []
        if _network(nic, "0" * 32, networks, said) == "unconnected" and said:
            notes.append(KeyNote(nic.name, "disconnected", said[0].split(": ", 1)[1]))
    return tuple(notes)


def _host_notes(spec: VmSpec) -> tuple[KeyNote, ...]:
    """What this host gives the spec only in part (raises what it cannot give at all: its memory, the CPUs it is
    pinned to, its firmware). Power-on and ``vm check`` both ask here, so a check never promises what start refuses."""
    check_affinity(spec.sched)
    if spec.firmware == "efi":
        facts.find_ovmf(spec.secure_boot)  # raises, naming the package, where OVMF is not installed
    fit = check_host_fit(spec, host_memory_mib=facts.host_memory_mib(), host_cpus=facts.host_cpus())
    return fit + _uefi_boot_notes(spec)


def _uefi_boot_notes(spec: VmSpec) -> tuple[KeyNote, ...]:
    """OVMF boots from SATA, NVMe, IDE and virtio, but has no driver for the SCSI controllers VMware offers."""
    boot = spec.boot_disk
    if spec.firmware != "efi" or boot is None or boot.bus != "scsi":
        return ()
    return (KeyNote(boot.controller, "approximated", f"the UEFI firmware (OVMF) has no driver for this SCSI "
                                                     f"controller, so it cannot boot from {boot.node} (a running OS "
                                                     "uses its own driver); put the boot disk on SATA or NVMe"),)


def _uefi(spec: VmSpec, paths: VmPaths, name: str) -> Ovmf | None:
    """The firmware of an EFI VM; its variable store, if there is one yet, must be a file of its own."""
    if spec.firmware != "efi":
        return None
    ovmf = facts.find_ovmf(spec.secure_boot)
    try:
        info = os.lstat(paths.efi_vars)
    except FileNotFoundError:
        return ovmf  # power-on makes it from the template
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        raise PathError(f"the UEFI variable store {paths.efi_vars} is not a plain file of this VM's own",
                        hint=f"reset it (a new one is made at the next power-on): minivisor vm reset-nvram {name}")
    return ovmf


class Resources(Record, frozen=True):
    """Files, addresses and networks a spec resolves to on this host."""

    disk_chains: dict[str, tuple[ImageLayer, ...]]
    files: dict[str, Path]
    macs: dict[int, str]
    networks: dict[int, NetBackend]
    console_index: int | None
    warnings: tuple[str, ...]
    notes: tuple[KeyNote, ...] = ()


def check_host_fit(spec: VmSpec, *, host_memory_mib: int, host_cpus: int) -> tuple[KeyNote, ...]:
    """Refuse hardware this host cannot give; returns what it gives only in part."""
    if spec.memory_mib > host_memory_mib:
        raise SpecError(f"memSize = {spec.memory_mib} MiB is more than this host's memory ({host_memory_mib} MiB)",
                        hint=f"lower memSize to at most {host_memory_mib}")
    if spec.num_cpus > host_cpus:  # VMware powers it on too: the vCPUs take turns on the host's CPUs
        return (KeyNote("numvcpus", "approximated", f"{spec.num_cpus} vCPUs share this host's {host_cpus} "
                                                    "CPU(s), so each runs slower"),)
    return ()


def resolve_resources(spec: VmSpec, scope: Scope, vmx: Path, uuid: str, networks: HostNetworks) -> Resources:
    """Resolve every file, address and network the spec names."""
    warnings: list[str] = list(spec.warnings)
    chains, files, media = resolve_files(spec, scope, vmx)
    macs = {nic.index: nic.mac or generated_mac(uuid, nic.index) for nic in spec.nics}
    _check_unique_macs(macs)
    backends = {nic.index: _network(nic, uuid, networks, warnings) for nic in spec.nics}
    used_ports = {port.index for port in spec.serial_ports}
    console = 0 if 0 not in used_ports else None
    if console is None:
        warnings.append("serial0 is taken by the specfile, so minivisor's console (vm console, vm exec) is off")
    return Resources(_with_discard_overlays(spec, chains, vmx.parent), files, macs, backends, console,
                     tuple(warnings), media)


def resolve_files(spec: VmSpec, scope: Scope, vmx: Path, *, missing_ok: bool = False
                  ) -> tuple[dict[str, tuple[ImageLayer, ...]], dict[str, Path], tuple[KeyNote, ...]]:
    """Every file the VMM would open, under the VM's path policy: disk chains by node, and the
    CD-ROM, floppy and serial files; and the drives left empty because their image is missing.
    ``missing_ok`` (at register): an absent hard disk is skipped too."""
    vm_dir = vmx.parent
    chains: dict[str, tuple[ImageLayer, ...]] = {}
    files: dict[str, Path] = {}
    missing: list[KeyNote] = []

    def medium(device: str, name: str) -> None:
        """A CD-ROM's or floppy's image; one outside every folder the VM may use (never looked at), or
        missing, leaves the drive empty, as on VMware. Inside the datastore the path policy refuses."""
        what = f"{device}.fileName"
        if scope.outside(vm_dir, name, what):
            missing.append(KeyNote(device, "disconnected", f"its image {name} is outside the datastore and the "
                                                           "folders allowed with allow-path (allow its folder to "
                                                           "connect it); the drive starts empty"))
            return
        path = scope.path(vm_dir, name, what)
        if os.path.lexists(path):
            files[device] = scope.image(vm_dir, name, what)
        else:
            missing.append(KeyNote(device, "disconnected", f"its image {path} does not exist; the drive starts "
                                                           "empty"))

    for disk in spec.disks:
        if disk.file_name is None:
            continue
        if disk.kind == "cdrom":
            medium(disk.node, disk.file_name)
        elif not missing_ok or os.path.lexists(scope.path(vm_dir, disk.file_name, f"{disk.node}.fileName")):
            chains[disk.node] = scope.disk_chain(vm_dir, disk.file_name, f"{disk.node}.fileName")
    for port in spec.serial_ports:
        if port.file_name:  # a pipe without one is a socket in the runtime folder; network and unplugged have none
            files[f"serial{port.index}"] = scope.output(vm_dir, port.file_name, f"serial{port.index}.fileName",
                                                        socket=port.file_type == "pipe")
    for drive in spec.floppies:
        if drive.file_name:
            medium(f"floppy{drive.index}", drive.file_name)
    if spec.nvram:
        scope.path(vm_dir, spec.nvram, "nvram")
    _check_devices_own_their_files(files, chains, _snapshot_files(vmx))
    return chains, files, tuple(missing)


def _with_discard_overlays(spec: VmSpec, chains: dict[str, tuple[ImageLayer, ...]], vm_dir: Path
                           ) -> dict[str, tuple[ImageLayer, ...]]:
    """Each independent-nonpersistent disk's chain under a new overlay, which takes its writes for one
    power-on (power-on makes it, and removes its name once the VMM has it open: it goes with the VMM)."""
    result = dict(chains)
    for disk in spec.disks:
        if disk.mode == "independent-nonpersistent" and disk.node in chains:
            chain = chains[disk.node]
            overlay = ImageLayer(vm_dir / f"{DISCARD_PREFIX}{disk.node.replace(':', '-')}.qcow2", "qcow2",
                                 chain[0].virtual_size)
            result[disk.node] = (overlay, *chain)
    return result


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


class NicPlacement(Record, frozen=True):
    """Where a NIC is at its power-on: on a network's switch (``entry``), on QEMU's user-mode NAT, or on nothing
    (its link down; ``why`` says why, empty for ``connectionType = none``, which asks for no network)."""

    entry: NetworkEntry | None = None
    user_nat: bool = False
    why: str = ""


def place_nic(nic: Nic, host: HostNetworks) -> NicPlacement:
    """The one decision of which network a NIC is on (power-on, hot-plug, ``vm ip``, port forwards)."""
    if nic.connection_type == "none":
        return NicPlacement()
    if not nic.start_connected:
        return NicPlacement(why="startConnected is FALSE")
    wanted = wanted_network(nic)
    if wanted is None:
        return NicPlacement(why=f"connectionType {nic.connection_type!r} names no network minivisor has")
    if host.networks is None:
        if wanted == NAT:
            return NicPlacement(user_nat=True)
        return NicPlacement(why=f"network {excerpt(wanted)} needs bridges and taps, which this host cannot make "
                                f"({host.reason})")
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
        return NicPlacement(why=f"network {excerpt(wanted)} does not exist ({make})")
    return NicPlacement(entry)


def _network(nic: Nic, uuid: str, host: HostNetworks, warnings: list[str]) -> NetBackend:
    """What is behind a NIC: a tap on the switch of its network, QEMU's user-mode NAT where the host builds no
    networks, or nothing (its link down, with a warning saying why and what to do)."""
    placed = place_nic(nic, host)
    if placed.entry is not None:
        return Tap(tap_name(uuid, nic.index), placed.entry.name)
    if placed.user_nat:
        return UserNat(tuple(host.user_forwards.get(nic.index, ())))
    return _unplugged(nic, warnings, placed.why) if placed.why else "unconnected"


def _unplugged(nic: Nic, warnings: list[str], why: str) -> NetBackend:
    warnings.append(f"{nic.name}: {why}; the NIC is present with its link disconnected")
    return "unconnected"

