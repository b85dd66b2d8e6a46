"""``minivisor vm ...``: create, run and inspect VMs."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..text import excerpt
from . import JsonFlag, Name, group, hv, print_json, progress, say, warn

vm_app = group("vm", "Create, run and inspect VMs.")


@vm_app.command("create")
def vm_create(
    name: Name,
    memory: Annotated[int, typer.Option("--memory", "-m", help="Memory in MiB (memSize).")] = 512,
    cpus: Annotated[int, typer.Option("--cpus", "-c", help="Virtual CPUs (numvcpus).")] = 1,
    disk_size: Annotated[Optional[str], typer.Option(help="New empty thin disk, e.g. 20G.")] = None,
    boot_disk: Annotated[Optional[Path], typer.Option(help="Copy this disk image in as the boot disk.")] = None,
    network: Annotated[str, typer.Option(help="nat, none, or a network name.")] = "nat",
    nic: Annotated[str, typer.Option(help="NIC model: vmxnet3, e1000, e1000e, vlance, virtio.")] = "vmxnet3",
    scsi: Annotated[str, typer.Option(help="SCSI controller: lsilogic, lsisas1068, pvscsi.")] = "lsilogic",
    guest_os: Annotated[str, typer.Option(help="guestOS value, e.g. debian12-64.")] = "other-64",
) -> None:
    """Create a VM folder with a specfile and a disk in the datastore."""
    vm = hv().create_vm(name, memory_mib=memory, cpus=cpus, disk_size=disk_size, boot_disk=boot_disk,
                         network=network, nic_model=nic, scsi_model=scsi, guest_os=guest_os, progress=progress)
    say(f"created {vm.name}: {vm.vmx}")


@vm_app.command("register")
def vm_register(vmx: Annotated[Path, typer.Argument(help="The .vmx file, in its folder in the datastore.")],
                name: Annotated[Optional[str], typer.Option(help="Name in the catalog [default: displayName].")] = None
                ) -> None:
    """Add an existing specfile to the catalog."""
    vm = hv().register_vm(vmx, name)
    say(f"registered {vm.name}: {vm.vmx}")


@vm_app.command("unregister")
def vm_unregister(name: Name) -> None:
    """Remove a VM from the catalog; its files stay."""
    hv().unregister_vm(name)
    say(f"unregistered {name} (files kept)")


@vm_app.command("delete")
def vm_delete(name: Name) -> None:
    """Delete a powered-off VM and every file in its folder."""
    hv().delete_vm(name)
    say(f"deleted {name}")


@vm_app.command("list")
def vm_list(as_json: JsonFlag = False) -> None:
    """The VMs in the datastore and their states."""
    vms = hv().list_vms()
    if as_json:
        return print_json([vm.to_dict() for vm in vms])
    from . import output

    output.vm_table(vms)


@vm_app.command("show")
def vm_show(name: Name, as_json: JsonFlag = False) -> None:
    """One VM: state, hardware, files."""
    vm = hv().get_vm(name)
    if as_json:
        return print_json(vm.to_dict())
    from . import output

    output.vm_details(vm)


@vm_app.command("explain")
def vm_explain(name: Name, as_json: JsonFlag = False) -> None:
    """The spec, the virtual hardware built from it, what is not virtualized, and the VMM command line."""
    explanation = hv().explain_vm(name)
    if as_json:
        from . import output

        return print_json(output.explanation_dict(explanation))
    from . import output

    output.explanation(explanation)


@vm_app.command("start")
def vm_start(name: Name,
             wait_ready: Annotated[bool, typer.Option(help="Return once the guest says it is ready.")] = False,
             timeout: Annotated[float, typer.Option(help="Seconds to wait for readiness.")] = 120.0) -> None:
    """Power on: start the VM's VMM, which boots it from its disk."""
    result = hv().start_vm(name, wait_ready=wait_ready, timeout=timeout)
    warn(result.warnings)
    say(f"{name} is powered on (pid {result.vm.pid}, {result.vm.accel})")
    if result.ready_line:
        say(f"{name} is ready: {result.ready_line}")


@vm_app.command("stop")
def vm_stop(name: Name,
            hard: Annotated[bool, typer.Option(help="Pull the plug instead of an ACPI shutdown.")] = False,
            timeout: Annotated[float, typer.Option(help="Seconds to wait for the guest before a hard stop.")] = 30.0
            ) -> None:
    """Power off (ACPI shutdown, hard after --timeout)."""
    how = hv().stop_vm(name, hard=hard, timeout=timeout)
    say(f"{name} is powered off ({how})")


@vm_app.command("reset")
def vm_reset(name: Name) -> None:
    """Reset the VM (like its reset button)."""
    hv().reset_vm(name)
    say(f"{name} was reset")


@vm_app.command("pause")
def vm_pause(name: Name) -> None:
    """Freeze the VM's virtual CPUs."""
    hv().pause_vm(name)
    say(f"{name} is paused")


@vm_app.command("resume")
def vm_resume(name: Name) -> None:
    """Let a paused VM run again."""
    hv().resume_vm(name)
    say(f"{name} is running")


@vm_app.command("console")
def vm_console(name: Name) -> None:
    """Attach this terminal to the VM's serial console (Ctrl-] detaches)."""
    from ..vmm.console import attach

    socket_path, lock = hv(direct=True).console_socket(name)  # a local socket: never through the service
    try:
        attach(socket_path, name)
    finally:
        os.close(lock)


@vm_app.command("exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def vm_exec(name: Name, command: Annotated[list[str], typer.Argument(help="The command (after --).")],
            timeout: Annotated[float, typer.Option(help="Seconds to wait for the command.")] = 60.0) -> None:
    """Run a command in the guest through its serial shell; exits with its exit code."""
    result = hv().exec_in_vm(name, command, timeout=timeout)
    sys.stdout.write(result.output)
    raise typer.Exit(result.exit_code)


@vm_app.command("autostart")
def vm_autostart(name: Name, setting: Annotated[str, typer.Argument(help="on or off.")]) -> None:
    """Power the VM on whenever the service starts (on), or not (off)."""
    if setting not in ("on", "off"):
        from ..errors import SpecError

        raise SpecError(f"autostart must be on or off, not {excerpt(setting)}", hint=f"minivisor vm autostart {name} on")
    vm = hv().set_autostart(name, setting == "on")
    say(f"{vm.name}: autostart {setting}")


@vm_app.command("events")
def vm_events(name: Name, limit: Annotated[int, typer.Option(help="How many of the last events.")] = 20,
              as_json: JsonFlag = False) -> None:
    """What happened to the VM: power-ons, power-offs with their reasons, crashes..."""
    events = hv().vm_events(name, limit)
    if as_json:
        return print_json(events)
    import time

    for event in events:
        extra = " ".join(f"{k}={v}" for k, v in event.items() if k not in ("type", "vm", "time", "id"))
        say(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(event['time']))}  {event['type']:<14} {extra}")


# -- disks, snapshots, clones ----------------------------------------------------
@vm_app.command("clone")
def vm_clone(source: Name, target: Annotated[str, typer.Argument(help="The new VM's name.")],
             full: Annotated[bool, typer.Option("--full/--linked",
                                                help="Copy the disks, or overlay the source's snapshot.")] = True,
             snapshot: Annotated[Optional[str], typer.Option(
                 help="Clone this snapshot [default: the current state; a running or linked source gets a "
                      "new snapshot].")] = None) -> None:
    """A new VM (new name, UUID and MACs) from SOURCE: --full copies, --linked shares its snapshot."""
    from .disk import progress_bar

    if full:
        with progress_bar(f"cloning {source}") as update:
            vm = hv().clone_vm(source, target, linked=False, snapshot=snapshot, progress=update)
    else:
        vm = hv().clone_vm(source, target, linked=True, snapshot=snapshot)
    say(f"created {'full' if full else 'linked'} clone {vm.name}: {vm.vmx}")


@vm_app.command("import")
def vm_import(folder: Annotated[Path, typer.Argument(help="A VMware VM folder (.vmx and its disks).")],
              name: Annotated[Optional[str], typer.Option(help="Name in the catalog [default: displayName].")] = None
              ) -> None:
    """Copy a VMware VM into the datastore (disks checked, chains flattened to qcow2), ready to start."""
    from .disk import progress_bar

    bars: dict[str, object] = {}
    with contextlib.ExitStack() as stack:
        def update(disk: str, percent: float) -> None:
            if disk not in bars:
                bars[disk] = stack.enter_context(progress_bar(f"importing {disk}"))
            bars[disk](percent)  # type: ignore[operator]

        vm = hv().import_vm(folder, name, progress=update)
    say(f"imported {vm.name}: {vm.vmx}")


@vm_app.command("disk")
def vm_disk(name: Name,
            action: Annotated[str, typer.Argument(help="list, info or resize.")] = "list",
            node: Annotated[Optional[str], typer.Argument(help="The disk, e.g. scsi0:0 (info, resize).")] = None,
            size: Annotated[Optional[str], typer.Argument(help="New size for resize, e.g. 20G.")] = None,
            as_json: JsonFlag = False) -> None:
    """A VM's hard disks: list them, show one (sizes, chain), or grow one (powered off)."""
    from ..errors import SpecError

    if action == "resize":
        if not node or not size:
            raise SpecError("resize needs the disk and the new size", hint=f"minivisor vm disk {name} resize scsi0:0 20G")
        disks = [hv().vm_disk_resize(name, node, size)]
    elif action in ("list", "info"):
        disks = [d for d in hv().vm_disks(name) if node is None or d["node"] == node.lower()]
        if node and not disks:
            raise SpecError(f"VM {name!r} has no hard disk {excerpt(node)}", hint=f"see: minivisor vm disk {name} list")
    else:
        raise SpecError(f"unknown action {excerpt(action)}", hint="use list, info or resize")
    if as_json:
        return print_json(disks)
    from .disk import show_disk

    if action == "list":
        from . import output

        output.disk_table(disks)
    else:
        for d in disks:
            show_disk(d)
