"""Where one VM's files are: its folder in the datastore, and a short runtime folder for its sockets.

::

    <datastore>/<vm>/<vm>.vmx          the specfile (its name is the VM's, whatever the folder is)
    <datastore>/<vm>/<vm>.vmx.lck      the VM lock (held by the running VMM)
    <datastore>/<vm>/runtime.json      pid, start time, argv, sockets of the running VMM
    <datastore>/<vm>/vmm.log           QEMU's own messages, one header per power-on
    <datastore>/<vm>/serial.log        the console (capped; serial.log.1 the generation before)
    <datastore>/<vm>/bios.log          SeaBIOS's debug port
    <datastore>/<vm>/events.jsonl      what happened to the VM (capped; events.jsonl.1 before)
    <datastore>/<vm>/efivars.qcow2     the UEFI variables of a firmware = "efi" VM
    <runtime>/<hash>/                  qmp.sock, events.sock, serial.in, serial.out, console.sock, agent.sock,
                                       vnc.sock, status, ready
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

from .. import dirs
from ..records import Record
from .names import VM_NAME, check_vm_name

__all__ = ["VmPaths", "vm_paths", "check_vm_name", "VM_NAME", "VM_FILES", "VMM_LOG", "SERIAL_LOG", "BIOS_LOG",
           "EVENT_LOG", "RUNTIME_RECORD", "EFI_VARS"]

VMM_LOG = "vmm.log"
SERIAL_LOG = "serial.log"
BIOS_LOG = "bios.log"
EVENT_LOG = "events.jsonl"
RUNTIME_RECORD = "runtime.json"
EFI_VARS = "efivars.qcow2"  # the VM's UEFI variable store (VMware's own .nvram is never touched)
# What minivisor writes into a VM's folder for itself besides the specfile: no device may name one.
VM_FILES = frozenset({VMM_LOG, SERIAL_LOG, BIOS_LOG, EVENT_LOG, RUNTIME_RECORD, EFI_VARS})


class VmPaths(Record, frozen=True):
    """The files and control sockets of one VM."""

    vmx: Path

    def __init__(self, vmx: Path, runtime_dir: Path | None = None) -> None:
        object.__setattr__(self, "vmx", vmx)
        if runtime_dir is not None:
            self.__dict__["runtime_dir"] = runtime_dir

    @cached_property
    def runtime_dir(self) -> Path:
        """0700, a short path: UNIX sockets live here. Named by a hash of the VM's real folder, which takes
        resolving its path: done when first asked for (`vm list` asks only for the VMs that run)."""
        from ..digest import sha256

        digest = sha256(os.path.realpath(self.vmx.parent).encode()).hexdigest()[:16]
        return dirs.runtime_root() / digest

    @property
    def vm_dir(self) -> Path:
        return self.vmx.parent

    @property
    def lock(self) -> Path:
        """The VM lock: whoever launches or changes the VM holds it; a running VMM holds it for its life."""
        return self.vmx.with_name(self.vmx.name + ".lck")

    @property
    def runtime_record(self) -> Path:
        return self.vm_dir / RUNTIME_RECORD

    @property
    def event_log(self) -> Path:
        return self.vm_dir / EVENT_LOG

    @property
    def vmm_log(self) -> Path:
        return self.vm_dir / VMM_LOG

    @property
    def serial_log(self) -> Path:
        return self.vm_dir / SERIAL_LOG

    @property
    def bios_log(self) -> Path:
        return self.vm_dir / BIOS_LOG

    @property
    def efi_vars(self) -> Path:
        """The UEFI variable store (qcow2, so it can be snapshotted), made from OVMF's template at first power-on."""
        return self.vm_dir / EFI_VARS

    @property
    def qmp_socket(self) -> Path:
        return self.runtime_dir / "qmp.sock"

    @property
    def console_socket(self) -> Path:
        """The console as users reach it, served by the VM's console relay (:mod:`minivisor.vmm.relay`)."""
        return self.runtime_dir / "console.sock"

    @property
    def serial_pipes(self) -> Path:
        """The console's two FIFOs without their suffix (QEMU's ``-chardev pipe`` names them so): QEMU writes
        the guest's output into ``serial.out`` and reads its input from ``serial.in`` (made by the launch,
        read and written by the console relay)."""
        return self.runtime_dir / "serial"

    @property
    def events_socket(self) -> Path:
        """A second QMP monitor, QEMU's events for the console relay: QEMU connects to it, as to the console."""
        return self.runtime_dir / "events.sock"

    @property
    def relay_lock(self) -> Path:
        """Locked by the VM's console relay while it runs: free while QEMU runs, the relay is gone (killed),
        and the first to take it starts another (:meth:`minivisor.vmm.process.Vmm.ensure_relay`)."""
        return self.runtime_dir / "relay.lock"

    @property
    def agent_socket(self) -> Path:
        """The QEMU guest agent's channel (virtio-serial ``org.qemu.guest_agent.0``): :mod:`minivisor.vmm.agent`."""
        return self.runtime_dir / "agent.sock"

    @property
    def vnc_socket(self) -> Path:
        """The screen, as a VNC server on a UNIX socket (owner-only, like every socket here; never TCP)."""
        return self.runtime_dir / "vnc.sock"

    @property
    def status_file(self) -> Path:
        """QEMU's run state (running, paused, io-error...) as the relay last saw it."""
        return self.runtime_dir / "status"

    @property
    def ready_file(self) -> Path:
        """The guest's ready line, once the relay has seen it on the console."""
        return self.runtime_dir / "ready"


def vm_paths(vmx: Path) -> VmPaths:
    """The paths of the VM whose specfile is ``vmx``; its runtime folder is named by a hash of its folder."""
    return VmPaths(vmx)
