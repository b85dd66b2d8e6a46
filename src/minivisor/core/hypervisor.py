"""The core Python API: every interface (CLI, REST, web) is a thin layer over it.

    from minivisor import Hypervisor
    hv = Hypervisor("./datastore")
    hv.allow_path("images")  # boot disks are copied in from folders the user allowed
    hv.create_vm("web", memory_mib=512, boot_disk="images/appliance.img")
    hv.start_vm("web", wait_ready=True)
    print(hv.exec_in_vm("web", ["uname", "-r"]).output)
    hv.stop_vm("web")

Errors are :class:`~minivisor.errors.HvError` subclasses with a message and a hint.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

# What reading the catalog needs; a method that needs more (specfiles, disks, QEMU, the host) imports it
# itself, so `vm list` and `vm show` load a fraction of the core (issue 13: a CLI that answers like virsh).
from ..datastore.catalog import VmEntry
from ..datastore.inventory import Inventory, file_id, flocked_files
from ..datastore.layout import VmPaths
from ..datastore.store import Datastore
from ..errors import (ArgumentError, ConflictError, HvError, NoSpaceError, NotFoundError, PathError, SpecError,
                      is_out_of_space)
from ..text import excerpt
from ..vmm.process import Vmm
from ..vmm.states import Action, VmState, require
from .bounds import check_args
from .context import EventListener, VmContext, Vms, notify
from .events import make_event, read_log
from .results import Explanation, NetworkInfo, StartResult, VmInfo

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from typing import Any

    from ..host.info import HostInfo
    from ..images.layers import ImageLayer
    from ..spec.vmsd import Snapshot
    from ..spec.vmspec import VmSpec
    from ..vmm.console import ExecResult

__all__ = ["Hypervisor", "VmInfo", "StartResult", "Explanation", "NetworkInfo"]

Progress = Callable[[str], None]


def _no_space_is_one_error(method):
    """Running out of space, wherever it is noticed (a write, SQLite, qemu-img, QEMU saving memory), raises
    one NoSpaceError. The operation has already undone what it began (staging folders, journals)."""
    @functools.wraps(method)
    def checked(self: Hypervisor, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except NoSpaceError:
            raise
        except (OSError, HvError) as exc:
            if not is_out_of_space(exc):
                raise
            raise NoSpaceError(f"no space left in the datastore {self.datastore.root}",
                               hint="free space on its file system, then retry") from exc
    return checked


class Hypervisor:
    """A datastore and the VMs in it: every operation minivisor offers, one method each.

    ``on_event`` is called with every event after it is written to the VM's
    event log (the service publishes them as server-sent events); an error in it
    never fails an operation. :attr:`vms` gives the core's view of one VM
    (:class:`~minivisor.core.context.VmContext`) to the service's supervisor.
    """

    def __init__(self, datastore: Datastore | Path | str | None = None, *,
                 on_event: EventListener | None = None) -> None:
        self.datastore = datastore if isinstance(datastore, Datastore) else Datastore.open(datastore)
        self.inventory = Inventory(self.datastore)
        self.vms = Vms(self.datastore, self.inventory, on_event)

    @property
    def on_event(self) -> EventListener | None:
        return self.vms.listener

    @on_event.setter
    def on_event(self, listener: EventListener | None) -> None:
        self.vms.listener = listener

    # -- reading ---------------------------------------------------------
    def list_vms(self) -> list[VmInfo]:
        """Every VM in the catalog with its current state."""
        # Which VMs run: one read of /proc/locks instead of a lock probe per VM. The kernel holds that read
        # back for an RCU grace period (~10 ms), so it happens on a thread while the catalog is read.
        held_locks = _in_background(flocked_files)
        entries = self.datastore.catalog.list()
        summaries = self.inventory.summaries(entries)
        locked = held_locks()
        host = self._cluster_host()
        infos = []
        for entry in entries:
            held = None if locked is None else file_id(str(self.inventory.paths_of(entry).lock)) in locked
            infos.append(self._info_of(entry, summaries[entry.name], host, held))
        return infos

    def get_vm(self, name: str) -> VmInfo:
        """One VM, or NotFoundError; in a cluster, with whether it is HA (``ha``)."""
        from .clustering import ha_of

        ctx = self.vms.context(name)
        ha, replica = ha_of(ctx)
        return self._info(ctx).replace(ha=ha, replica=replica)

    def explain_vm(self, name: str) -> Explanation:
        """The spec, the virtual hardware built from it and the exact VMM command line."""
        from ..vmm.argv import virtual_hardware

        plan = self.vms.context(name).plan()
        return Explanation(plan.spec, tuple(virtual_hardware(plan.spec, plan.env)), tuple(plan.argv), plan.warnings)

    def check_vmx(self, vmx_path: Path | str) -> dict[str, Any]:
        """What minivisor would make of any specfile, key by key (virtualized, approximated, disconnected,
        ignored, refused) and why, NICs judged against this datastore's networks; nothing is written (see
        :func:`minivisor.core.check.check_vmx`)."""
        from .check import check_vmx
        from .networks import Networks

        return check_vmx(vmx_path, Networks(self.datastore, self.inventory).for_plan(""))

    def get_specfile(self, name: str) -> dict[str, Any]:
        """The VM's specfile as text, with the stamp a :meth:`put_specfile` must give back."""
        from . import specfile

        return specfile.read(self.vms.context(name))

    @_no_space_is_one_error
    def put_specfile(self, name: str, text: str, stamp: str) -> dict[str, Any]:
        """Replace a powered-off VM's specfile with ``text``, exactly as given, if it is still as read at ``stamp``
        and power-on would accept it (its errors name their ``line``); nothing is written otherwise."""
        from . import specfile

        with self._powered_off(name, Action.EDIT_SPECFILE) as ctx:
            return specfile.replace(ctx, text, stamp)

    def vm_events(self, name: str, limit: int = 100) -> list[dict[str, Any]]:
        """The last ``limit`` events of a VM from its event log, oldest first (0: all of them)."""
        check_args(limit=limit)
        return read_log(self.vms.context(name).vm_dir, limit)

    def datastore_info(self) -> dict[str, Any]:
        """Where the datastore and its catalog are, how many VMs, which host folders are allowed."""
        catalog = self.datastore.catalog
        return {"root": str(self.datastore.root), "catalog": str(catalog.path), "vms": len(catalog.list()),
                "allowed_paths": catalog.allowed_paths()}

    def datastore_files(self, folder: str = "") -> dict[str, Any]:
        """The folders and files in a folder of the datastore ("" its root), with the datastore's capacity."""
        from .files import list_folder

        return list_folder(self.datastore, folder)

    def datastore_upload(self, folder: str, name: str, chunks: Iterable[bytes]) -> dict[str, Any]:
        """A new file (an ISO or a disk image) ``folder/name`` at the top of the datastore, written from ``chunks``."""
        from .files import upload

        return upload(self.datastore, folder, name, chunks)

    def datastore_delete(self, folder: str, name: str) -> dict[str, Any]:
        """Delete the plain file ``folder/name`` of the datastore ("" its root), unless a registered VM uses it."""
        from .files import delete

        return delete(self.vms, folder, name)

    @_no_space_is_one_error
    def allow_path(self, folder: Path | str) -> None:
        """Let specfiles name files in a host folder outside the datastore (shared ISOs, templates, boot images)."""
        real = os.path.realpath(folder)
        if not os.path.isdir(real):
            raise PathError(f"{folder} is not a folder", hint="allow the folder that holds the files")
        if self.datastore.contains(real):
            raise PathError(f"{real} is inside the datastore, whose folders belong to their VMs",
                            hint="allow a host folder outside the datastore")
        self.datastore.catalog.allow_path(real)

    def host_info(self) -> HostInfo:
        """Facts about this host, including which accelerator VMs get and why."""
        from .. import dirs
        from ..host.info import host_info
        from ..images.confine import confinement
        from ..net.host import support

        networking = support()
        how = "bridges and taps" if networking.available else "user-mode NAT only"
        return host_info(dirs.cache_dir()).replace(networking=f"{how}: {networking.reason}",
                                                   image_copies=confinement())

    # -- a powered-off VM's hardware ------------------------------------------
    @_no_space_is_one_error
    def set_resources(self, name: str, *, cpus: int | None = None, memory_mib: int | None = None) -> dict:
        """Set a powered-off VM's vCPUs and memory in its specfile (comments and order kept), if the host can
        run it so."""
        from . import hardware

        check_args(**{k: v for k, v in (("cpus", cpus), ("memory_mib", memory_mib)) if v is not None})
        with self._powered_off(name, Action.EDIT_SPECFILE) as ctx:
            return hardware.set_resources(ctx, cpus=cpus, memory_mib=memory_mib)

    @_no_space_is_one_error
    def add_disk(self, name: str, size: str, *, thick: bool = False) -> dict:
        """Add a new empty disk of ``size`` (thin unless ``thick``) to a powered-off VM: its file in the VM's
        folder, its lines in the specfile, on the first free unit of the first hard disk's controller."""
        from . import hardware
        from .recovery import disk_operation

        check_args(size=size)
        with disk_operation(self.vms, name, Action.EDIT_SPECFILE) as ctx:  # a new disk undone if cut short
            return hardware.add_disk(ctx, size, thick=thick)

    # -- creating and removing -------------------------------------------
    @_no_space_is_one_error
    def create_vm(self, name: str, *, memory_mib: int = 512, cpus: int = 1, disk_size: str | None = None,
                  boot_disk: Path | str | None = None, network: str = "nat", nic_model: str = "vmxnet3",
                  scsi_model: str = "lsilogic", guest_os: str = "other-64", firmware: str = "bios",
                  thick: bool = False, cdrom: bool = False, progress: Progress | None = None) -> VmInfo:
        """Create a VM folder with a specfile and a disk, and add it to the catalog.

        ``boot_disk`` (in a folder allowed with :meth:`allow_path`, its backing
        chain checked) is copied into the VM's folder, flattened to qcow2;
        otherwise ``disk_size`` makes an empty disk, thin unless ``thick``. ``network`` is
        ``nat``, ``none`` or a network name; ``firmware`` ``bios`` or ``efi``; ``cdrom`` adds an
        empty CD-ROM drive (ide1:0) to insert an installer into (:meth:`cdrom`).
        """
        import shutil
        import uuid as uuidlib

        from ..host import facts
        from ..spec.devices import CREATABLE_NICS, CREATABLE_SCSI
        from ..spec.identity import new_specfile
        from ..spec.vmspec import VmSpec
        from ..vmm.plan import check_host_fit

        check_args(memory_mib=memory_mib, cpus=cpus, disk_size=disk_size)
        if disk_size is not None and boot_disk is not None:
            raise ArgumentError("a new VM gets either an empty disk of disk_size or a copy of boot_disk, not both",
                                hint="give --disk-size or --boot-disk, not both")
        self.datastore.check_new_name(name)
        _check_choice("NIC model", nic_model, CREATABLE_NICS)
        _check_choice("SCSI controller", scsi_model, CREATABLE_SCSI)
        _check_choice("firmware", firmware, ("bios", "efi"))
        vm_uuid = str(uuidlib.uuid4())
        disk_name = f"{name}.qcow2" if boot_disk is not None or disk_size is not None else None
        doc = new_specfile(name, vm_uuid, memory_mib, cpus, guest_os, disk_name, network, nic_model, scsi_model,
                           firmware=firmware, cdrom=cdrom)
        check_host_fit(VmSpec.from_vmx(doc), host_memory_mib=facts.host_memory_mib(), host_cpus=facts.host_cpus())
        boot_chain = self.datastore.image_chain(boot_disk, "boot disk") if boot_disk is not None else None
        staging = self.datastore.staging_dir(name)
        try:
            if disk_name:
                _make_disk(staging / disk_name, disk_size, boot_chain, progress, thick=thick)
            doc.save(staging / f"{name}.vmx")
            self.datastore.publish(staging, name, vm_uuid)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        ctx = self.vms.context(name)
        ctx.emit("created")
        return self._info(ctx)

    @_no_space_is_one_error
    def register_vm(self, vmx_path: Path | str, name: str | None = None) -> VmInfo:
        """Add an existing specfile (in its own top-level folder of the datastore) to the catalog.

        Every file it names must pass the VM's path policy (files that do not
        exist yet are checked at power-on). Like VMware at first power-on, a
        missing ``uuid.bios`` or NIC address is generated and written into the
        specfile; nothing else changes.
        """
        from ..datastore.inventory import read_vmx, summary_row
        from ..datastore.store import check_vm_name
        from ..spec.identity import fill_identity, name_from
        from ..spec.vmspec import VmSpec
        from ..vmm.plan import resolve_files
        from .check import refuse_template_file

        path = Path(os.path.realpath(vmx_path))
        if not path.is_file():
            raise PathError(f"{vmx_path} is not a file", hint="name the VM's .vmx file")
        refuse_template_file(path)
        scope = self.datastore.new_vm_scope(path)
        doc = read_vmx(path)
        spec = VmSpec.from_vmx(doc)
        resolve_files(spec, scope, path, missing_ok=True)
        name = check_vm_name(name or name_from(spec.display_name or path.stem))
        if self.datastore.catalog.find(name):
            raise ConflictError(f"a VM named {name!r} already exists", hint="pass another name with --name")
        vm_uuid = fill_identity(doc, spec)
        vmx = self.datastore.relative(path)
        with self.datastore.catalog.transaction() as db:
            self.datastore.catalog.add(db, name, vm_uuid, vmx)
            if doc.to_bytes() != path.read_bytes():
                doc.save(path)
            # what `vm show` reads, in the same commit: from the spec read above, whose summary keys
            # fill_identity left as they were (a NIC's generated address is the one a summary gives it)
            if row := summary_row(self.datastore.root, vmx, vm_uuid, spec):
                self.datastore.catalog.put_summaries(db, [row])
        ctx = self.vms.context(name)
        ctx.emit("registered")
        return self._info(ctx)

    @_no_space_is_one_error
    def unregister_vm(self, name: str) -> None:
        """Remove a powered-off VM from the catalog, keeping its files."""
        with self._powered_off(name, Action.UNREGISTER) as ctx:
            with self.datastore.catalog.transaction() as db:
                self.datastore.catalog.remove(db, ctx.name)
        notify(self.vms.listener, make_event("unregistered", ctx.name))

    @_no_space_is_one_error
    def delete_vm(self, name: str) -> None:
        """Remove a powered-off VM and its folder with every file in it."""
        ctx = self.vms.context(name)
        if not ctx.vm_dir.is_dir():
            raise NotFoundError(f"the folder of VM {ctx.name!r} ({ctx.vm_dir}) is gone: there is nothing to delete",
                                hint=f"remove the VM from the catalog: minivisor vm unregister {ctx.name}")
        with self._powered_off(name, Action.DELETE) as ctx:
            left_behind = self.datastore.delete_vm(ctx.entry, ctx.vm_dir)
        notify(self.vms.listener, make_event("deleted", ctx.name))
        if left_behind:
            raise left_behind

    @_no_space_is_one_error
    def set_autostart(self, name: str, enabled: bool) -> VmInfo:
        """Power this VM on whenever the service starts (or stop doing so)."""
        ctx = self.vms.context(name)
        self.datastore.catalog.set_autostart(ctx.name, enabled)
        ctx.emit("autostartChanged", enabled=enabled)
        return self._info(ctx)

    def set_ha(self, name: str, enabled: bool) -> VmInfo:
        """Mark the VM HA in this host's cluster: when its host dies, another member that has it registered
        (a datastore the hosts share) powers it on, after the dead host's lease and the fencing delay; or not."""
        from .clustering import set_ha

        ctx = self.vms.context(name)
        set_ha(ctx, enabled)
        ctx.emit("haChanged", enabled=enabled)
        return self._info(ctx).replace(ha=enabled)

    # -- power -------------------------------------------------------------
    @_no_space_is_one_error
    def start_vm(self, name: str, *, wait_ready: bool = False, timeout: float = 120.0,
                 host: str | None = None) -> StartResult:
        """Power on: one VMM process boots the VM from the disk its specfile names. In a cluster, on the host
        placement chooses (or ``host``), asked through etcd when it is not this one; the result names it."""
        from .clustering import in_cluster
        from .power import power_on
        from .recovery import recover

        check_args(timeout=timeout)
        placed = None
        if host is not None or in_cluster(self.datastore.meta):
            from .placing import place, start_elsewhere

            placed = place(self, name, host)
            if placed.host != placed.here:
                return start_elsewhere(placed, wait_ready=wait_ready, timeout=timeout)
        with ExitStack() as launched:
            with self.vms.operate(name, Action.START) as ctx:
                launched.callback(ctx.vmm.close_ready_signal)  # the relay's pipe, once waited on (or not)
                plan = ctx.plan(spec=_write_missing_macs(ctx))  # every check before anything is touched
                with self.vms.hold(ctx):
                    if recover(ctx):  # a snapshot or clone cut short: finished or undone, so plan again
                        plan = ctx.plan()
                    _, pinned = power_on(ctx, plan, ready_signal=wait_ready)
            info = self._info(ctx)  # while the guest boots, not after it is ready
            ready = self._wait_ready(ctx, timeout, plan.spec) if wait_ready else None
        return StartResult(info, plan.warnings + pinned, ready, placed.host if placed else None)

    def wait_ready(self, name: str, *, timeout: float = 120.0) -> str:
        """Wait until the guest prints its readiness line on the console."""
        check_args(timeout=timeout)
        return self._wait_ready(self.vms.context(name), timeout)

    def stop_vm(self, name: str, *, hard: bool = False, timeout: float = 30.0) -> str:
        """Power off: ACPI shutdown, then hard after ``timeout`` s. Returns soft, hard or killed."""
        check_args(timeout=timeout)
        with self.vms.operate(name, Action.STOP) as ctx:
            record = ctx.vmm.record()
            pid = record.pid if record else None
            ctx.emit("poweringOff", pid=pid, hard=hard)
            how = ctx.vmm.stop(hard=hard, timeout=timeout)
            ctx.networks().unplug(ctx)
            from .clustering import disown

            disown(ctx)
            ctx.emit("poweredOff", pid=pid, reason=f"stopped ({how})")
            return how

    def reset_vm(self, name: str) -> None:
        """Hard reset, like pressing the reset button."""
        with self.vms.operate(name, Action.RESET) as ctx:
            ctx.vmm.execute("system_reset")
            ctx.vmm.forget_ready()
            ctx.emit("reset")

    @_no_space_is_one_error
    def pause_vm(self, name: str) -> None:
        """Freeze the VM's vCPUs; memory and devices stay as they are."""
        with self.vms.operate(name, Action.PAUSE) as ctx:
            ctx.vmm.set_paused(True)
            ctx.emit("paused")

    @_no_space_is_one_error
    def resume_vm(self, name: str) -> None:
        """Let a paused VM run again."""
        with self.vms.operate(name, Action.RESUME) as ctx:
            ctx.vmm.set_paused(False)
            ctx.emit("resumed")

    @_no_space_is_one_error
    def cdrom(self, name: str, image: Path | str | None = None, *, drive: str | None = None) -> dict:
        """Insert ``image`` into the VM's CD-ROM drive (default: its first), or eject it (``image`` None);
        a running guest sees the tray open and close. The specfile keeps the new medium."""
        from .media import change_cdrom

        return change_cdrom(self.vms, name, drive, image)

    def screenshot(self, name: str) -> bytes:
        """The running VM's screen, as PNG."""
        from .media import screenshot

        return screenshot(self.vms.context(name))

    def display_info(self, name: str) -> dict[str, Any]:
        """How to reach the VM's screen: its VNC server's UNIX socket (only while it runs)."""
        ctx = self.vms.context(name)
        spec = ctx.read_spec()
        running = ctx.vmm.state() in (VmState.RUNNING, VmState.PAUSED)
        return {"adapter": "VMware SVGA II" if spec.display.present else None, "running": running,
                "vnc_socket": str(ctx.paths.vnc_socket) if spec.display.present else None}

    def reset_nvram(self, name: str) -> bool:
        """Forget a powered-off EFI VM's UEFI variables (boot entries, Secure Boot keys): the next power-on
        starts from OVMF's template. VMware's own ``.nvram`` file is left alone. False if there were none."""
        with self._powered_off(name, Action.RESET_NVRAM) as ctx:
            existed = os.path.lexists(ctx.paths.efi_vars)
            ctx.paths.efi_vars.unlink(missing_ok=True)
        ctx.emit("nvramReset", existed=existed)
        return existed

    def recover_interrupted(self, name: str) -> bool:
        """Finish or undo a snapshot or clone that a killed process left half-done; False if there was none."""
        from ..storage.journal import Journal
        from .recovery import disk_operation

        ctx = self.vms.context(name)
        if Journal.load(ctx.vm_dir) is None:
            return False
        with disk_operation(self.vms, name, Action.RECOVER):
            pass  # the operation's turn settles the journal first
        ctx.emit("recovered", reason="an interrupted snapshot or clone was finished or undone")
        return True

    # -- networks ----------------------------------------------------------
    def create_network(self, name: str, *, mode: str = "nat", subnet: str | None = None, bridge: str | None = None,
                       dhcp: bool = True) -> NetworkInfo:
        """A virtual switch on the host: ``nat`` (masqueraded out), ``isolated`` (host-only), or ``bridged`` onto
        the host interface ``bridge``; DHCP with a fixed address per NIC unless ``dhcp`` is False."""
        return self._networks().create(name, mode=mode, subnet=subnet, bridge=bridge, dhcp_on=dhcp)

    def list_networks(self) -> list[NetworkInfo]:
        """Every network, ``nat`` and ``hostonly`` included."""
        return self._networks().list()

    def get_network(self, name: str) -> NetworkInfo:
        return self._networks().get(name)

    def delete_network(self, name: str) -> None:
        """Remove a network and all it made on the host; refused while a running VM is on it."""
        self._networks().delete(name)

    def clean_up_networks(self) -> None:
        """Remove the taps and port forwards of VMs that stopped without minivisor (a crash, a guest power-off)."""
        self._networks().clean_up()

    def vm_addresses(self, name: str) -> list[dict]:
        """Each NIC of a VM: MAC, network, its fixed address, whether the guest holds a lease on it, and
        (``guest``) the addresses the guest's agent reports on it, when the VM runs one."""
        from .guest import guest_interfaces

        ctx = self.vms.context(name)
        nics = ctx.networks().nic_addresses(ctx)
        interfaces = guest_interfaces(ctx) if ctx.vmm.state() == VmState.RUNNING else None
        by_mac = {i.mac.lower(): i for i in interfaces or () if i.mac}
        for nic in nics:
            found = by_mac.get(nic["mac"].lower())
            nic["guest"] = list(found.addresses) if found else None
            nic["interface"] = found.name if found else None
        return nics

    def set_nic(self, name: str, nic: str, *, link: bool | None = None, address: str | None = None) -> dict:
        """Connect or disconnect a NIC's link (a running VM's at once, else ``startConnected``), or fix its address."""
        if link is None and address is None:
            raise ArgumentError("say what to change on the NIC", hint="give --link up|down or --ip ADDRESS")
        with self.vms.operate(name, Action.NIC) as ctx:
            result: dict = {"nic": nic}
            if address is not None:
                result |= ctx.networks().reserve_address(ctx, nic, address)
            if link is not None:
                result["link"] = _set_link(ctx, nic, link)
            ctx.emit("nicChanged", **result)
            return result

    @_no_space_is_one_error
    def add_nic(self, name: str, nic: str, *, model: str = "vmxnet3", network: str = "nat") -> dict:
        """Add NIC ``nic`` (``ethernetN``) of ``model`` on ``network`` (nat, hostonly, bridged, none or a
        network's name) to the specfile; a running VM gets it at once (hot-plug)."""
        from . import nics

        with self.vms.operate(name, Action.NIC) as ctx:
            return nics.add(ctx, nic, model=model, network=network)

    @_no_space_is_one_error
    def remove_nic(self, name: str, nic: str) -> dict:
        """Remove NIC ``nic`` from the specfile, and its port forwards; a running VM's guest releases it first."""
        from . import nics

        with self.vms.operate(name, Action.NIC) as ctx:
            return nics.remove(ctx, nic)

    def nic_traffic(self, name: str) -> dict[str, dict[str, int]]:
        """Bytes and packets each NIC of a running VM sent and received, by NIC; NICs without a tap (QEMU's
        user-mode NAT, or disconnected) are absent."""
        ctx = self.vms.context(name)
        return ctx.networks().traffic(ctx.uuid)

    def port_forward_add(self, name: str, forward: str, *, nic: str = "ethernet0") -> dict:
        """Forward ``[ADDR:]HOSTPORT:GUESTPORT[/udp]`` (127.0.0.1 unless ADDR) of the host to the NIC's guest
        (at once if the VM runs)."""
        with self.vms.operate(name, Action.NIC) as ctx:
            added = ctx.networks().add_forward(ctx, forward, nic)
            ctx.emit("portForwardAdded", forward=added["spec"], nic=added["nic"])
            return added

    def port_forward_list(self, name: str) -> list[dict]:
        ctx = self.vms.context(name)
        return ctx.networks().forwards(ctx)

    def port_forward_remove(self, name: str, forward: str) -> None:
        """Remove the forward from ``[ADDR:]HOSTPORT[/udp]``."""
        with self.vms.operate(name, Action.NIC) as ctx:
            ctx.networks().remove_forward(ctx, forward)
            ctx.emit("portForwardRemoved", forward=forward)

    def _networks(self):
        from .networks import Networks

        return Networks(self.datastore, self.inventory)

    # -- the cluster (minivisor.cluster: etcd) --------------------------------------
    def cluster_init(self, etcd: str, *, name: str | None = None, ttl: int | None = None) -> dict[str, Any]:
        """Make a cluster in the etcd at ``etcd`` (its client URLs, comma-separated) and join this host to it
        as ``name`` [default: the host name]; every member's lease lasts ``ttl`` s [default: 10]."""
        from ..cluster import membership
        from ..cluster.config import DEFAULT_TTL, MAX_TTL, MIN_TTL, parse_endpoints

        ttl = DEFAULT_TTL if ttl is None else ttl
        if not isinstance(ttl, int) or isinstance(ttl, bool) or not MIN_TTL <= ttl <= MAX_TTL:
            raise ArgumentError(f"a lease TTL of {ttl!r} s is out of range", hint=f"give {MIN_TTL} to {MAX_TTL} s")
        return membership.init(self.datastore.meta, parse_endpoints(etcd), name or _host_name(), ttl,
                               self._running())

    def cluster_join(self, etcd: str, *, name: str | None = None) -> dict[str, Any]:
        """Join this host, as ``name`` [default: the host name], to the cluster in the etcd at ``etcd``;
        its service (``serve``) then keeps it a live member."""
        from ..cluster import membership
        from ..cluster.config import parse_endpoints

        return membership.join(self.datastore.meta, parse_endpoints(etcd), name or _host_name(), self._running())

    def cluster_status(self) -> dict[str, Any]:
        """Every member of this host's cluster: live or not, free memory, CPUs, running VMs, versions; and the
        VMs marked HA (``ha``), each with the host that runs it; the replications (``replicas``)."""
        from ..cluster import membership
        from .clustering import ha_vms, replications

        status = membership.status(self.datastore.meta)
        return {**status, "ha": ha_vms(self.datastore.meta), "replicas": replications(self.datastore.meta)}

    def migrate_vm(self, name: str, host: str, *, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Move the running VM to another host of the cluster with its local disks (live: the guest runs on).

        Returns the bytes copied (``disk_bytes``, ``memory_bytes``), ``total_seconds`` and ``downtime_ms``
        (QEMU's stop-and-copy plus the handover). A migration that fails leaves the VM running here.
        """
        from .migration import migrate

        return migrate(self.vms, name, host, progress)

    def replicate_vm(self, name: str, host: str, every: float = 300.0, *,
                     progress: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Replicate the running VM to another host of the cluster every ``every`` seconds (incremental copies of
        its qcow2 disks, kept there as a replica HA powers on when this host dies); the first copy is made now.
        Returns it: ``bytes`` copied, ``seconds``, the replica's ``generation``."""
        from .replication import replicate

        return replicate(self.vms, name, host, every, progress or (lambda line: None))

    def stop_replication(self, name: str) -> dict[str, Any]:
        """End the VM's replication; its target removes the replica."""
        from .replication import replication_off

        return replication_off(self.vms, name)

    def rule_add(self, vms: list[str], kind: str) -> dict[str, Any]:
        """A placement rule of the cluster: keep ``vms`` on different hosts (``kind`` apart) or on one
        (together) when they power on. Returns it with its id."""
        from ..cluster import rules
        from ..cluster.records import to_value
        from .placing import cluster_store

        return to_value(rules.add(cluster_store(self)[1], kind, list(vms)))

    def rule_list(self) -> list[dict[str, Any]]:
        """The cluster's placement rules, by id."""
        from ..cluster import rules
        from ..cluster.records import to_value
        from .placing import cluster_store

        return [to_value(rule) for rule in rules.listed(cluster_store(self)[1])]

    def rule_remove(self, rule_id: int) -> dict[str, Any]:
        """Delete the placement rule ``rule_id``; returns it."""
        from ..cluster import rules
        from ..cluster.records import to_value
        from .placing import cluster_store

        return to_value(rules.remove(cluster_store(self)[1], rule_id))

    def cluster_leave(self, *, force: bool = False) -> dict[str, Any]:
        """Take this host out of its cluster (refused while VMs run here); ``force`` forgets the cluster
        even when etcd cannot be told."""
        from ..cluster import membership

        return membership.leave(self.datastore.meta, list(self._running().values()), force=force)

    def _running(self) -> dict[str, str]:
        from .clustering import running_vms

        return running_vms(self)

    # -- guest access ----------------------------------------------------
    def exec_in_vm(self, name: str, command: list[str] | str, *, timeout: float = 60.0,
                   via: str = "auto", wait: bool = True) -> ExecResult:
        """Run a command in the guest: through its guest agent when one answers (stdout and stderr apart),
        else its serial shell (any POSIX shell on COM1); ``via`` = agent or serial chooses.

        A list is an argv (each argument passed exactly, quoted for the shell); a string is one shell
        command line. A command past ``timeout`` s is ended (GuestTimeoutError). ``wait=False`` starts it in
        the background, its output discarded, and returns at once with its ``pid`` (vmrun's ``-noWait``).
        """
        from .guest import VIAS, exec_command

        check_args(timeout=timeout, command=command)
        _check_choice("via", via, VIAS)
        ctx = self.vms.context(name)
        require(ctx.name, ctx.vmm.state(), Action.EXEC)
        return exec_command(ctx, command, timeout, via, wait=wait)

    def copy_to_guest(self, name: str, host_path: Path | str, guest_path: str, *,
                      progress: Callable[[float], None] | None = None) -> dict:
        """Copy a host file into the guest (through its guest agent), as ``vmrun CopyFileFromHostToGuest``;
        ``progress(percent)`` as it goes. The host file is in the datastore or a folder allowed with
        :meth:`allow_path`, as every host path a caller names (a REST client too)."""
        from .guest import copy_to

        check_args(guest_path=guest_path)
        source = self._host_file(host_path)
        ctx = self.vms.context(name)
        require(ctx.name, ctx.vmm.state(), Action.EXEC)
        return copy_to(ctx, source, guest_path, progress)

    def copy_from_guest(self, name: str, guest_path: str, host_path: Path | str, *,
                        progress: Callable[[float], None] | None = None) -> dict:
        """Copy a guest file to the host (through its guest agent), written whole or not at all, in the
        datastore or a folder allowed with :meth:`allow_path` (never over a file minivisor keeps for a VM)."""
        from .guest import copy_from

        check_args(guest_path=guest_path)
        target = self._host_file(host_path)
        ctx = self.vms.context(name)
        require(ctx.name, ctx.vmm.state(), Action.EXEC)
        return copy_from(ctx, guest_path, target, progress)

    def _host_file(self, host_path: Path | str) -> Path:
        """A host file a copy names, under the rules of the folder it is in; a link is refused, not followed
        (its target's folder is not where a copy would write)."""
        if os.path.islink(host_path):
            raise PathError(f"{excerpt(str(host_path))} is a symbolic link", hint="name the file itself")
        return self.datastore.resolve(Path.cwd(), str(host_path), what="host file")

    def console_socket(self, name: str) -> tuple[Path, int]:
        """The console socket of a running VM and a lock held while it is used."""
        from ..vmm.console import console_lock

        ctx = self.vms.context(name)
        require(ctx.name, ctx.vmm.state(), Action.CONSOLE)
        return ctx.paths.console_socket, console_lock(ctx.paths.runtime_dir)

    def vm_paths(self, name: str) -> VmPaths:
        """Where a VM's specfile, logs (vmm.log, serial.log, bios.log) and control sockets are."""
        return self.vms.context(name).paths

    # -- disks, snapshots, clones -----------------------------------------
    @_no_space_is_one_error
    def disk_create(self, path: Path | str, size: str, *, fmt: str | None = None, thick: bool = False) -> dict:
        """A new empty disk at ``path`` (inside the datastore): thin unless ``thick``."""
        check_args(size=size)
        from . import diskops

        return diskops.create(self.datastore, path, size, fmt=fmt, thick=thick)

    def disk_info(self, path: Path | str) -> dict:
        """Virtual size, bytes allocated, format and chain of parents of a disk file."""
        from . import diskops

        return diskops.info(self.datastore, path)

    @_no_space_is_one_error
    def disk_resize(self, path: Path | str, size: str) -> dict:
        """Grow a disk file that no running VM uses."""
        check_args(size=size)
        from . import diskops

        return diskops.resize(self.datastore, path, size)

    @_no_space_is_one_error
    def disk_convert(self, source: Path | str, target: Path | str, *, fmt: str | None = None, thick: bool = False,
                     progress: Callable[[float], None] | None = None) -> dict:
        """Copy a disk (its chain flattened) into a new file of another format."""
        from . import diskops

        return diskops.convert(self.datastore, source, target, fmt=fmt, thick=thick, progress=progress)

    def vm_disks(self, name: str) -> list[dict]:
        """Each hard disk of a VM: node, file, format, sizes, chain."""
        from . import diskops

        return diskops.vm_disks(self.vms, name)

    @_no_space_is_one_error
    def vm_disk_resize(self, name: str, node: str, size: str) -> dict:
        """Grow a VM's disk (its top layer); a running VM's guest sees the new size."""
        check_args(size=size)
        from . import diskops

        return diskops.vm_disk_resize(self.vms, name, node, size)

    @_no_space_is_one_error
    def snapshot_take(self, name: str, snapshot: str, *, description: str = "", memory: bool | None = None,
                      finish_later: Callable[[Callable[[], None]], None] | None = None) -> Snapshot:
        """Freeze a VM's disks (and, running, by default its memory and devices) as a named snapshot.

        ``finish_later`` (the service's): the snapshot is returned once it is durable, its remaining idempotent
        steps handed over as a callable the caller must run soon (the VM's turn is held until then).
        """
        from . import snapshots

        check_args(snapshot=snapshot, description=description)
        return snapshots.take(self.vms, name, snapshot, description=description, memory=memory,
                              finish_later=finish_later)

    def snapshot_list(self, name: str) -> list[dict]:
        """The snapshot tree, depth first, with ``current`` marking where the VM is."""
        from . import snapshots

        return snapshots.tree(self.vms, name).to_list()

    @_no_space_is_one_error
    def snapshot_revert(self, name: str, snapshot: str) -> tuple[Snapshot, bool]:
        """Go back to a snapshot; a memory snapshot resumes the guest where it was. Returns (snapshot, running)."""
        from . import snapshots

        return snapshots.revert(self.vms, name, snapshot)

    @_no_space_is_one_error
    def snapshot_delete(self, name: str, snapshot: str) -> Snapshot:
        """Remove a snapshot, merging its data into what depends on it."""
        from . import snapshots

        return snapshots.delete(self.vms, name, snapshot)

    @_no_space_is_one_error
    def clone_vm(self, source: str, target: str, *, linked: bool = False, snapshot: str | None = None,
                 progress: Callable[[float], None] | None = None) -> VmInfo:
        """A new VM (new name, UUID, MACs) with copied disks, or overlays on a snapshot (``linked``)."""
        from . import clones

        clones.clone(self.vms, source, target, linked=linked, snapshot=snapshot, progress=progress)
        return self.get_vm(target)

    @_no_space_is_one_error
    def import_vm(self, folder: Path | str, name: str | None = None, *,
                  progress: Callable[[str, float], None] | None = None) -> VmInfo:
        """Bring a VMware VM folder (specfile + disks) into the datastore, checking every image."""
        from ..storage import vmware

        return self.get_vm(vmware.import_vm(self.datastore, Path(folder), name, progress=progress))

    # -- internals ---------------------------------------------------------
    @contextmanager
    def _powered_off(self, name: str, action: Action) -> Iterator[VmContext]:
        """The VM's turn for an action legal only when it is off, its VM lock held (if its folder is still there)."""
        from .recovery import recover

        with self.vms.operate(name, action) as ctx, ExitStack() as held:
            if ctx.vm_dir.is_dir():  # its folder is gone: nothing is left to run it from, nor to lock
                held.enter_context(self.vms.hold(ctx))
                recover(ctx)  # an operation cut short is settled first: its roll-forward writes no edit over this one
            yield ctx

    def _wait_ready(self, ctx: VmContext, timeout: float, spec: VmSpec | None = None) -> str:
        line = _await_ready(ctx, timeout, spec)
        ctx.emit("guestReady", line=line)
        return line

    def _info(self, ctx: VmContext) -> VmInfo:
        """One VM, each NIC with its fixed address (``vm list`` leaves them out: one query per VM)."""
        info = self._info_of(ctx.entry, self.inventory.summaries([ctx.entry])[ctx.name], self._cluster_host())
        if not self.datastore.catalog.reservations_of(ctx.uuid):
            return info
        addresses = ctx.networks().reserved_addresses(ctx)
        return info.replace(nics=tuple({**nic, "address": addresses.get(nic["name"])} for nic in info.nics))

    def _cluster_host(self) -> str | None:
        """This datastore's host name in its cluster, the host its VMs run on; None on a single host (one
        ``stat``), or when the configuration is unreadable (``cluster status`` says why; a list still works)."""
        from .clustering import in_cluster

        if not in_cluster(self.datastore.meta):
            return None
        from ..cluster import config

        try:
            found = config.ClusterConfig.load(self.datastore.meta)
        except HvError:
            return None
        return found.host if found else None

    def _info_of(self, entry: VmEntry, summary: dict[str, Any], host: str | None,
                 lock_held: bool | None = None) -> VmInfo:
        paths = self.inventory.paths_of(entry)
        observed = Vmm(entry.name, paths).observe(lock_held)
        problem = summary.get("problem")
        record = observed.record
        return VmInfo(entry.name, entry.uuid, paths.vmx, observed.state,
                      f"(specfile unreadable: {problem})" if problem else summary["display_name"],
                      summary.get("guest_os", ""), summary.get("memory_mib", 0), summary.get("cpus", 0),
                      tuple(summary.get("disks", ())), tuple(summary.get("nics", ())), entry.autostart,
                      record.pid if record else None, record.accel if record else None, observed.fault, host)


def _write_missing_macs(ctx: VmContext) -> VmSpec:
    """A NIC added without an address gets its stable generated MAC, written into the specfile (as VMware does);
    returns the spec as written."""
    from ..datastore.inventory import read_vmx
    from ..spec.identity import fill_macs
    from ..spec.vmspec import VmSpec

    doc = read_vmx(ctx.vmx)
    spec = VmSpec.from_vmx(doc)
    if not fill_macs(doc, spec, ctx.uuid):
        return spec
    doc.save(ctx.vmx)
    return VmSpec.from_vmx(doc)


def _set_link(ctx: VmContext, nic: str, up: bool) -> str:
    """A running VM's NIC link at once (QMP set_link); a powered-off VM's at its next power-on (startConnected)."""
    from ..datastore.inventory import read_vmx
    from ..spec.vmspec import VmSpec

    from .nics import find_nic

    doc = read_vmx(ctx.vmx)
    nic = find_nic(VmSpec.from_vmx(doc), nic, ctx.name).name
    if ctx.running:
        ctx.vmm.execute("set_link", {"name": nic, "up": up})
    else:
        doc.set(f"{nic}.startConnected", "TRUE" if up else "FALSE")
        doc.save(ctx.vmx)
    return "up" if up else "down"


def _in_background(work: Callable[[], Any]) -> Callable[[], Any]:
    """Start ``work`` on a thread; the function returned waits for its result (or raises its exception)."""
    import threading

    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = work()
        except BaseException as exc:  # noqa: BLE001 - raised again by wait(), in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def wait() -> Any:
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]
    return wait


def _await_ready(ctx: VmContext, timeout: float, spec: VmSpec | None = None) -> str:
    """The guest's ready line, once its console relay has seen it (at once if it has)."""
    from ..vmm.readiness import wait_for_ready

    spec = spec or ctx.read_spec()
    record = ctx.vmm.record()
    return wait_for_ready(ctx.vmm.ready_line, spec.ready_line, timeout, alive=lambda: ctx.vmm.record() is not None,
                          runtime_dir=ctx.paths.runtime_dir, vmm_pid=record.pid if record else None,
                          relay_signal=ctx.vmm.ready_signal)


def _make_disk(target: Path, size: str | None, boot_chain: tuple[ImageLayer, ...] | None,
               progress: Progress | None, *, thick: bool = False) -> None:
    """Copy a checked boot disk chain into ``target`` (as qcow2), or create an empty disk of ``size`` (thin
    unless ``thick``)."""
    from ..images.qemu_img import convert_disk, create_disk
    from ..units import human_size, parse_size

    if boot_chain is None:
        create_disk(target, parse_size(size or "8G"), "qcow2", thick=thick)
        return
    top = boot_chain[0]
    if progress:
        progress(f"copying {top.path.name} ({human_size(top.virtual_size)}) into the VM folder")
    convert_disk(boot_chain, target, "qcow2")


def _host_name() -> str:
    """This host's name as a cluster member: the first label of its host name."""
    import socket

    return socket.gethostname().partition(".")[0]


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SpecError(f"{what} {value!r} is not one minivisor can create", hint=f"use one of {', '.join(choices)}")
