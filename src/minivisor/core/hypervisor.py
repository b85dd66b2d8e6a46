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
import shutil
import uuid as uuidlib
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import dirs
from ..host import facts as host
from .bounds import check_args
from ..vmm.console import ExecResult, console_lock, run_command, wait_for_ready
from ..datastore.store import Datastore, check_vm_name
from ..storage.images import ImageLayer, convert_disk, create_disk, human_size, parse_size
from ..errors import (
    ConflictError,
    HvError,
    LockError,
    NoSpaceError,
    NotFoundError,
    PathError,
    SpecError,
    is_out_of_space,
)
from ..spec.identity import fill_identity, name_from, new_specfile
from ..host.admission import commit_memory
from ..datastore.inventory import Inventory, file_id, flocked_files, read_vmx
from ..locks import wait_lock
from ..vmm.argv import (
    LaunchEnv,
    VirtualDevice,
    VmPaths,
    build_qemu_argv,
    virtual_hardware,
)
from ..spec.vmspec import VmSpec
from ..vmm.states import FAULTS, Action, VmState, require
from ..vmm.plan import check_host_fit, resolve_files, resolve_resources
from ..vmm.process import SHORT_HOLD, Vmm

__all__ = ["Hypervisor", "VmInfo", "StartResult", "Explanation", "ExecResult"]

Progress = Callable[[str], None]

NIC_MODELS_FOR_CREATE = ("vmxnet3", "e1000", "e1000e", "vlance", "virtio")
SCSI_MODELS_FOR_CREATE = ("lsilogic", "lsisas1068", "pvscsi")


@dataclass(frozen=True)
class VmInfo:
    """A VM: its identity, its state and the hardware its specfile asks for."""

    name: str
    uuid: str
    vmx: Path
    state: VmState
    display_name: str
    guest_os: str
    memory_mib: int
    cpus: int
    disks: tuple[dict[str, Any], ...]
    nics: tuple[dict[str, Any], ...]
    autostart: bool = False
    pid: int | None = None
    accel: str | None = None
    state_reason: str | None = None  # why QEMU paused it by itself (io-error: the datastore is full)

    @property
    def state_label(self) -> str:
        """The state as users read it: ``paused (io-error)`` for a VM QEMU paused on a fault."""
        return f"{self.state.value} ({self.state_reason})" if self.state_reason else self.state.value

    @property
    def state_hint(self) -> str | None:
        """What to do about a fault, or None."""
        return FAULTS[self.state_reason].format(name=self.name) if self.state_reason in FAULTS else None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "uuid": self.uuid, "vmx": str(self.vmx), "state": self.state.value,
                "state_reason": self.state_reason, "state_hint": self.state_hint,
                "display_name": self.display_name, "guest_os": self.guest_os,
                "memory_mib": self.memory_mib, "cpus": self.cpus, "disks": list(self.disks),
                "nics": list(self.nics), "autostart": self.autostart, "pid": self.pid, "accel": self.accel}


@dataclass(frozen=True)
class StartResult:
    """A powered-on VM, with the warnings the user should see."""

    vm: VmInfo
    warnings: tuple[str, ...] = ()
    ready_line: str | None = None


@dataclass(frozen=True)
class Explanation:
    """How a specfile becomes a VMM: the spec, the devices, what is left out, the argv."""

    spec: VmSpec
    hardware: tuple[VirtualDevice, ...]
    argv: tuple[str, ...]
    warnings: tuple[str, ...] = field(default=())


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
    """A datastore and the VMs in it."""

    def __init__(self, datastore: Datastore | Path | str | None = None, *,
                 on_event: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.datastore = datastore if isinstance(datastore, Datastore) else Datastore.open(datastore)
        # Called with every event after it is written to the VM's event log (the service
        # publishes them as server-sent events). Errors in it never fail an operation.
        self.on_event = on_event
        self.inventory = Inventory(self.datastore)

    # -- reading ---------------------------------------------------------
    def list_vms(self) -> list[VmInfo]:
        """Every VM in the catalog with its current state."""
        entries = self.datastore.catalog.list()
        summaries = self.inventory.summaries(entries)
        locked = flocked_files()  # one read of /proc/locks instead of a lock probe per VM
        return [self._info_of(entry, summaries[entry.name], locked) for entry in entries]

    def get_vm(self, name: str) -> VmInfo:
        """One VM, or NotFoundError."""
        return self._info(name)

    def explain_vm(self, name: str) -> Explanation:
        """The spec, the virtual hardware built from it and the exact VMM command line."""
        spec, env, warnings = self._launch_plan(name)
        hardware = tuple(virtual_hardware(spec, env))
        return Explanation(spec, hardware, tuple(build_qemu_argv(spec, env)), warnings)

    def vm_events(self, name: str, limit: int = 100) -> list[dict[str, Any]]:
        """The last ``limit`` events of a VM from its event log, oldest first (0: all of them)."""
        check_args(limit=limit)
        from .events import read_log

        return read_log(self._vmx(name).parent, limit)

    def datastore_info(self) -> dict[str, Any]:
        """Where the datastore and its catalog are, how many VMs, which host folders are allowed."""
        catalog = self.datastore.catalog
        return {"root": str(self.datastore.root), "catalog": str(catalog.path), "vms": len(catalog.list()),
                "allowed_paths": catalog.allowed_paths()}

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

    def host_info(self) -> host.HostInfo:
        """Facts about this host, including which accelerator VMs get and why."""
        return host.host_info(dirs.cache_dir())

    # -- creating and removing -------------------------------------------
    @_no_space_is_one_error
    def create_vm(self, name: str, *, memory_mib: int = 512, cpus: int = 1, disk_size: str | None = None,
                  boot_disk: Path | str | None = None, network: str = "nat", nic_model: str = "vmxnet3",
                  scsi_model: str = "lsilogic", guest_os: str = "other-64",
                  progress: Progress | None = None) -> VmInfo:
        """Create a VM folder with a specfile and a disk, and add it to the catalog.

        ``boot_disk`` (in a folder allowed with :meth:`allow_path`, its backing
        chain checked) is copied into the VM's folder, flattened to qcow2;
        otherwise ``disk_size`` makes an empty thin disk. ``network`` is
        ``nat``, ``none`` or a network name.
        """
        check_args(memory_mib=memory_mib, cpus=cpus, disk_size=disk_size)
        check_vm_name(name)
        if disk_size is not None and boot_disk is not None:
            raise SpecError("a new VM gets either an empty disk of disk_size or a copy of boot_disk, not both",
                            hint="give --disk-size or --boot-disk, not both")
        self._check_new_name(name)
        _check_choice("NIC model", nic_model, NIC_MODELS_FOR_CREATE)
        _check_choice("SCSI controller", scsi_model, SCSI_MODELS_FOR_CREATE)
        vm_uuid = str(uuidlib.uuid4())
        disk_name = f"{name}.qcow2" if boot_disk is not None or disk_size is not None else None
        doc = new_specfile(name, vm_uuid, memory_mib, cpus, guest_os, disk_name, network, nic_model, scsi_model)
        check_host_fit(VmSpec.from_vmx(doc), host_memory_mib=host.host_memory_mib(), host_cpus=host.host_cpus())
        boot_chain = self.datastore.image_chain(boot_disk, "boot disk") if boot_disk is not None else None
        staging = self.datastore.staging_dir(name)
        try:
            if disk_name:
                self._make_disk(staging / disk_name, disk_size, boot_chain, progress)
            doc.save(staging / f"{name}.vmx")
            self.datastore.publish(staging, name, vm_uuid)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._emit("created", name)
        return self._info(name)

    def _check_new_name(self, name: str) -> None:
        if self.datastore.catalog.find(name) or self.datastore.vm_dir(name).exists():
            raise ConflictError(f"a VM or folder named {name!r} already exists in the datastore",
                                hint="choose another name")

    def _make_disk(self, target: Path, size: str | None, boot_chain: tuple[ImageLayer, ...] | None,
                   progress: Progress | None) -> None:
        """Copy a checked boot disk chain into ``target`` (as qcow2), or create an empty thin disk of ``size``."""
        if boot_chain is None:
            create_disk(target, parse_size(size or "8G"), "qcow2")
            return
        top = boot_chain[0]
        if progress:
            progress(f"copying {top.path.name} ({human_size(top.virtual_size)}) into the VM folder")
        convert_disk(boot_chain, target, "qcow2")

    @_no_space_is_one_error
    def register_vm(self, vmx_path: Path | str, name: str | None = None) -> VmInfo:
        """Add an existing specfile (in its own top-level folder of the datastore) to the catalog.

        Every file it names must pass the VM's path policy (files that do not
        exist yet are checked at power-on). Like VMware at first power-on, a
        missing ``uuid.bios`` or NIC address is generated and written into the
        specfile; nothing else changes.
        """
        path = Path(os.path.realpath(vmx_path))
        if not path.is_file():
            raise PathError(f"{vmx_path} is not a file", hint="name the VM's .vmx file")
        scope = self.datastore.new_vm_scope(path)
        doc = read_vmx(path)
        spec = VmSpec.from_vmx(doc)
        resolve_files(spec, scope, path, missing_ok=True)
        name = check_vm_name(name or name_from(spec.display_name or path.stem))
        if self.datastore.catalog.find(name):
            raise ConflictError(f"a VM named {name!r} already exists", hint="pass another name with --name")
        vm_uuid = fill_identity(doc, spec)
        with self.datastore.catalog.transaction() as db:
            self.datastore.catalog.add(db, name, vm_uuid, self.datastore.relative(path))
            if doc.to_bytes() != path.read_bytes():
                doc.save(path)
        self._emit("registered", name)
        return self._info(name)

    @_no_space_is_one_error
    def unregister_vm(self, name: str) -> None:
        """Remove a powered-off VM from the catalog, keeping its files."""
        entry = self.datastore.catalog.get(name)
        with self._exclusive(name, Action.UNREGISTER):
            with self.datastore.catalog.transaction() as db:
                self.datastore.catalog.remove(db, entry.name)
        self._emit("unregistered", entry.name, log=False)

    @_no_space_is_one_error
    def delete_vm(self, name: str) -> None:
        """Remove a powered-off VM and its folder with every file in it."""
        entry = self.datastore.catalog.get(name)
        folder = self.datastore.vmx_path(entry).parent
        if not folder.is_dir():
            raise NotFoundError(f"the folder of VM {entry.name!r} ({folder}) is gone: there is nothing to delete",
                                hint=f"remove the VM from the catalog: minivisor vm unregister {entry.name}")
        with self._exclusive(name, Action.DELETE):
            if clones := self.datastore.catalog.clones_of(entry.uuid):  # their disks sit on this VM's snapshots
                raise ConflictError(f"cannot delete VM {entry.name!r}: linked clones depend on it "
                                    f"({', '.join(c for c, _ in clones)})", hint="delete those clones first")
            trashed = self.datastore.trash(folder, entry.uuid)
            try:
                with self.datastore.catalog.transaction() as db:
                    self.datastore.catalog.remove(db, entry.name)
                    self.datastore.catalog.remove_clone_link(db, entry.uuid)
            except BaseException:
                self.datastore.restore(trashed, folder)
                raise
        self.datastore.empty_trash(trashed)
        self._emit("deleted", entry.name, log=False)

    @_no_space_is_one_error
    def set_autostart(self, name: str, enabled: bool) -> VmInfo:
        """Power this VM on whenever the service starts (or stop doing so)."""
        entry = self.datastore.catalog.get(name)
        self.datastore.catalog.set_autostart(entry.name, enabled)
        self._emit("autostartChanged", entry.name, enabled=enabled)
        return self._info(entry.name)

    # -- power -------------------------------------------------------------
    @_no_space_is_one_error
    def start_vm(self, name: str, *, wait_ready: bool = False, timeout: float = 120.0) -> StartResult:
        """Power on: one VMM process boots the VM from the disk its specfile names."""
        check_args(timeout=timeout)
        with self._operation(name):
            vmm = self._vmm(name)
            require(name, vmm.state(), Action.START)
            spec, env, warnings = self._launch_plan(name)  # every check before anything is touched
            with vmm.lock.acquire(name, wait=SHORT_HOLD):
                if self._disk_ops().finish_interrupted(name):  # a snapshot/clone cut short: finish or undo it
                    spec, env, warnings = self._launch_plan(name)
                _rotate(env.paths.serial_log)
                env.paths.bios_log.unlink(missing_ok=True)
                links_down = [nic.name for nic in spec.nics if env.networks[nic.index] == "unconnected"]
                claim = commit_memory(self.datastore, self.inventory, name, spec)  # under the VM lock, which keeps the claim valid
                try:
                    record = vmm.launch(build_qemu_argv(spec, env), env.accel, links_down,
                                        ready_text=spec.ready_line, console=env.console_index is not None)
                except BaseException:
                    claim.unlink(missing_ok=True)
                    raise
            from ..host.admission import place

            warnings += place(record.pid, spec, name)
            self._emit("poweredOn", name, pid=record.pid, accel=record.accel)
        ready = None
        if wait_ready:
            ready = self.wait_ready(name, timeout=timeout, spec=spec)
        return StartResult(self._info(name), warnings, ready)

    def wait_ready(self, name: str, *, timeout: float = 120.0, spec: VmSpec | None = None) -> str:
        """Wait until the guest prints its readiness line on the console."""
        check_args(timeout=timeout)
        line = self._await_ready(name, timeout, spec)
        self._emit("guestReady", name, line=line)
        return line

    def _await_ready(self, name: str, timeout: float, spec: VmSpec | None = None) -> str:
        """The guest's ready line, once its console relay has seen it (at once if it has)."""
        vmm = self._vmm(name)
        spec = spec or VmSpec.from_vmx(read_vmx(self._vmx(name)))
        return wait_for_ready(vmm.ready_line, spec.ready_line, timeout, alive=lambda: vmm.record() is not None)

    def stop_vm(self, name: str, *, hard: bool = False, timeout: float = 30.0) -> str:
        """Power off: ACPI shutdown, then hard after ``timeout`` s. Returns soft, hard or killed."""
        check_args(timeout=timeout)
        with self._operation(name):
            vmm = self._vmm(name)
            require(name, vmm.state(), Action.STOP)
            record = vmm.record()
            pid = record.pid if record else None
            self._emit("poweringOff", name, pid=pid, hard=hard)
            how = vmm.stop(hard=hard, timeout=timeout)
            self._emit("poweredOff", name, pid=pid, reason=f"stopped ({how})")
            return how

    def reset_vm(self, name: str) -> None:
        """Hard reset, like pressing the reset button."""
        with self._operation(name):
            vmm = self._vmm(name)
            require(name, vmm.state(), Action.RESET)
            vmm.execute("system_reset")
            vmm.paths.ready_file.unlink(missing_ok=True)  # the guest boots again: ready once it says so again
            self._emit("reset", name)

    @_no_space_is_one_error
    def pause_vm(self, name: str) -> None:
        """Freeze the VM's vCPUs; memory and devices stay as they are."""
        with self._operation(name):
            vmm = self._vmm(name)
            require(name, vmm.state(), Action.PAUSE)
            vmm.set_paused(True)
            self._emit("paused", name)

    @_no_space_is_one_error
    def resume_vm(self, name: str) -> None:
        """Let a paused VM run again."""
        with self._operation(name):
            vmm = self._vmm(name)
            require(name, vmm.state(), Action.RESUME)
            vmm.set_paused(False)
            self._emit("resumed", name)

    # -- guest access ----------------------------------------------------
    def exec_in_vm(self, name: str, command: list[str] | str, *, timeout: float = 60.0) -> ExecResult:
        """Run a shell command through the guest's serial shell (the appliance has one)."""
        check_args(timeout=timeout, command=command)
        vmm = self._vmm(name)
        require(name, vmm.state(), Action.EXEC)
        self._await_ready(name, timeout)
        text = command if isinstance(command, str) else " ".join(command)
        if "\n" in text:
            raise SpecError("the command contains a newline", hint="pass one command line (use ';' between commands)")
        fd = console_lock(vmm.paths.runtime_dir)
        try:
            return run_command(vmm.paths.console_socket, text, timeout)
        finally:
            os.close(fd)

    def console_socket(self, name: str) -> tuple[Path, int]:
        """The console socket of a running VM and a lock held while it is used."""
        vmm = self._vmm(name)
        require(name, vmm.state(), Action.CONSOLE)
        return vmm.paths.console_socket, console_lock(vmm.paths.runtime_dir)

    def vm_paths(self, name: str) -> VmPaths:
        """Where a VM's logs (vmm.log, serial.log, bios.log) and control sockets are."""
        return self._vmm(name).paths

    # -- disks, snapshots, clones -----------------------------------------
    # Thin delegations; the work is in disks.py, snapshots.py, storage.py, clones.py, vmware.py.
    @_no_space_is_one_error
    def disk_create(self, path: Path | str, size: str, *, fmt: str | None = None, thick: bool = False) -> dict:
        """A new empty disk at ``path`` (inside the datastore): thin unless ``thick``."""
        check_args(size=size)
        return self._disk_ops().create(path, size, fmt=fmt, thick=thick)

    def disk_info(self, path: Path | str) -> dict:
        """Virtual size, bytes allocated, format and chain of parents of a disk file."""
        return self._disk_ops().info(path)

    @_no_space_is_one_error
    def disk_resize(self, path: Path | str, size: str) -> dict:
        """Grow a disk file that no running VM uses."""
        check_args(size=size)
        return self._disk_ops().resize(path, size)

    @_no_space_is_one_error
    def disk_convert(self, source: Path | str, target: Path | str, *, fmt: str | None = None, thick: bool = False,
                     progress: Callable[[float], None] | None = None) -> dict:
        """Copy a disk (its chain flattened) into a new file of another format."""
        return self._disk_ops().convert(source, target, fmt=fmt, thick=thick, progress=progress)

    def vm_disks(self, name: str) -> list[dict]:
        """Each hard disk of a VM: node, file, format, sizes, chain."""
        return self._disk_ops().vm_disks(name)

    @_no_space_is_one_error
    def vm_disk_resize(self, name: str, node: str, size: str) -> dict:
        """Grow a powered-off VM's disk (its top layer)."""
        check_args(size=size)
        return self._disk_ops().vm_disk_resize(name, node, size)

    @_no_space_is_one_error
    def snapshot_take(self, name: str, snapshot: str, *, description: str = "", memory: bool | None = None):
        """Freeze a VM's disks (and, running, by default its memory and devices) as a named snapshot."""
        check_args(snapshot=snapshot, description=description)
        snap = self._disk_ops().take(name, snapshot, description=description, memory=memory)
        self._emit("snapshotTaken", name, snapshot=snap.name, memory=snap.memory_file is not None)
        return snap

    def snapshot_list(self, name: str) -> list[dict]:
        """The snapshot tree, depth first, with ``current`` marking where the VM is."""
        return self._disk_ops().snapshot_tree(name).to_list()

    @_no_space_is_one_error
    def snapshot_revert(self, name: str, snapshot: str):
        """Go back to a snapshot; a memory snapshot resumes the guest where it was. Returns (snapshot, running)."""
        snap, running = self._disk_ops().revert(name, snapshot)
        self._emit("snapshotReverted", name, snapshot=snap.name, running=running)
        return snap, running

    @_no_space_is_one_error
    def snapshot_delete(self, name: str, snapshot: str):
        """Remove a snapshot, merging its data into what depends on it."""
        snap = self._disk_ops().delete(name, snapshot)
        self._emit("snapshotDeleted", name, snapshot=snap.name)
        return snap

    @_no_space_is_one_error
    def clone_vm(self, source: str, target: str, *, linked: bool = False, snapshot: str | None = None,
                 progress: Callable[[float], None] | None = None) -> VmInfo:
        """A new VM (new name, UUID, MACs) with copied disks, or overlays on a snapshot (``linked``)."""
        from ..storage.clones import clone_vm

        clone_vm(self, source, target, linked=linked, snapshot=snapshot, progress=progress)
        return self._info(target)

    @_no_space_is_one_error
    def import_vm(self, folder: Path | str, name: str | None = None, *,
                  progress: Callable[[str, float], None] | None = None) -> VmInfo:
        """Bring a VMware VM folder (specfile + disks) into the datastore, checking every image."""
        from ..storage.vmware import import_vm

        return self._info(import_vm(self, Path(folder), name, progress=progress))

    def _disk_ops(self):
        from .diskops import DiskOperations

        return DiskOperations(self)

    # -- internals ---------------------------------------------------------
    def _emit(self, kind: str, name: str, *, log: bool = True, **data: Any) -> None:
        """Report a state change: into the VM's event log, then to ``on_event``."""
        from .events import append_log, make_event

        event = make_event(kind, name, **data)
        if log:
            try:
                append_log(self._vmx(name).parent, event)
            except (OSError, HvError):
                pass  # the event log is a record, never a reason for an operation to fail
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:  # noqa: BLE001 - a listener's bug must not fail the operation
                pass

    @contextmanager
    def _operation(self, name: str, wait: float = 120.0):
        """One power operation on a VM at a time, across processes (the CLI and the service).

        The VM lock cannot do this: the VMM holds it while it runs. Without this
        lock, two stops could both see the VM running, and the second could send
        its QMP ``quit`` to a VMM a third process had just started on the same socket.
        """
        folder = self.datastore.meta / "locks"  # not in the VM's folder: a refused request leaves no trace
        folder.mkdir(mode=0o700, exist_ok=True)
        fd = wait_lock(folder / f"{self.datastore.catalog.get(name).uuid}.lck", wait, poll=0.01)
        if fd is None:
            raise LockError(f"VM {name!r} is busy with another operation", hint="retry when it has finished")
        try:
            yield
        finally:
            os.close(fd)

    def _vmx(self, name: str) -> Path:
        return self.datastore.vmx_path(self.datastore.catalog.get(name))

    def _vmm(self, name: str) -> Vmm:
        return self._vmm_of(self.datastore.catalog.get(name))

    def _vmm_of(self, entry) -> Vmm:
        _, paths, lock = self.inventory.paths_of(entry)
        return Vmm(entry.name, paths, Path(lock))

    def _exclusive(self, name: str, action: Action):
        vmm = self._vmm(name)
        if not vmm.paths.vm_dir.is_dir():
            return nullcontext()  # its folder is gone: nothing is left to run it from, nor to lock
        require(name, vmm.state(), action)
        return vmm.lock.acquire(name)

    def _launch_plan(self, name: str) -> tuple[VmSpec, LaunchEnv, tuple[str, ...]]:
        entry = self.datastore.catalog.get(name)
        vmx = self.datastore.vmx_path(entry)
        spec = VmSpec.from_vmx(read_vmx(vmx))
        check_host_fit(spec, host_memory_mib=host.host_memory_mib(), host_cpus=host.host_cpus())
        from ..host.admission import check_affinity, notes

        check_affinity(spec.sched)
        resources = resolve_resources(spec, self.datastore.vm_scope(entry), vmx, entry.uuid)
        qemu = host.find_qemu()
        accel = host.choose_accel(dirs.cache_dir(), qemu)
        env = LaunchEnv(name=entry.name, uuid=entry.uuid, qemu=qemu, accel=accel.accel,
                        paths=self._vmm(name).paths, disk_chains=resources.disk_chains, files=resources.files,
                        macs=resources.macs, networks=resources.networks, console_index=resources.console_index)
        warnings = resources.warnings + ((accel.warning,) if accel.warning else ()) + notes(spec)
        return spec, env, warnings

    def _info(self, name: str) -> VmInfo:
        entry = self.datastore.catalog.get(name)
        return self._info_of(entry, self.inventory.summaries([entry])[entry.name])

    def _info_of(self, entry, summary: dict[str, Any], locked: set[tuple[int, int]] | None = None) -> VmInfo:
        vmx, _, lock = self.inventory.paths_of(entry)
        fault = None
        if locked is not None and file_id(lock) not in locked:
            record = None  # a live VMM, or a power-on, holds the VM lock: neither is there
            state = VmState.POWERED_OFF
        elif (record := (vmm := self._vmm_of(entry)).record()) is not None:
            state, fault = vmm.run_state(record)
        else:
            state = VmState.STARTING if vmm.lock.is_held_elsewhere() else VmState.POWERED_OFF
        problem = summary.get("problem")
        return VmInfo(entry.name, entry.uuid, vmx, state,
                      f"(specfile unreadable: {problem})" if problem else summary["display_name"],
                      summary.get("guest_os", ""), summary.get("memory_mib", 0), summary.get("cpus", 0),
                      tuple(summary.get("disks", ())), tuple(summary.get("nics", ())), entry.autostart,
                      record.pid if record else None, record.accel if record else None, fault)


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SpecError(f"{what} {value!r} is not one minivisor can create", hint=f"use one of {', '.join(choices)}")


def _rotate(log: Path) -> None:
    """Keep the previous boot's console log as ``serial.log.1``."""
    if log.exists():
        log.replace(log.with_name(log.name + ".1"))
