"""The ``minivisor`` command: a thin layer over :class:`minivisor.api.Hypervisor`.

Every error is an :class:`~minivisor.errors.HvError` turned, in :func:`main`
only, into one line on stderr and the error's exit code. Set MINIVISOR_DEBUG=1
to see tracebacks of unexpected failures.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import HvError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None, help="minivisor: run VMware-style VMs (.vmx) on QEMU/KVM.")
vm_app = typer.Typer(no_args_is_help=True, help="Create, run and inspect VMs.")
host_app = typer.Typer(no_args_is_help=True, help="Facts about this host.")
image_app = typer.Typer(no_args_is_help=True, help="Build guest images.")
datastore_app = typer.Typer(no_args_is_help=True, help="The datastore folder and its policy.")
app.add_typer(vm_app, name="vm")
app.add_typer(host_app, name="host")
app.add_typer(image_app, name="image")
app.add_typer(datastore_app, name="datastore")

_state: dict[str, object] = {}

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
Name = Annotated[str, typer.Argument(help="The VM's name.")]


@app.callback()
def _options(datastore: Annotated[Optional[Path], typer.Option(
        "--datastore", "-d", envvar="MINIVISOR_DATASTORE",
        help="The datastore folder [default: ./datastore].")] = None) -> None:
    _state["datastore"] = datastore


def _hv():
    from .api import Hypervisor

    if "hv" not in _state:
        _state["hv"] = Hypervisor(_state.get("datastore"))  # type: ignore[arg-type]
    return _state["hv"]


def _print_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _warn(lines) -> None:
    for line in lines:
        sys.stderr.write(f"warning: {line}\n")


def _progress(line: str) -> None:
    sys.stderr.write(f"  {line}\n")


# -- host, image, datastore -----------------------------------------------------
@host_app.command("info")
def host_info(as_json: JsonFlag = False) -> None:
    """CPUs, memory, QEMU, and which accelerator VMs get (and why)."""
    info = _hv().host_info()
    if as_json:
        return _print_json(info.to_dict())
    from . import output

    output.host_info(info)


@image_app.command("build")
def image_build(kind: Annotated[str, typer.Argument(help="What to build: appliance.")],
                force: Annotated[bool, typer.Option(help="Rebuild even if cached.")] = False) -> None:
    """Build a guest image from Debian packages (cached); prints its path."""
    from . import dirs
    from .appliance import build_appliance
    from .errors import NotFoundError

    if kind != "appliance":
        raise NotFoundError(f"no image kind {kind!r}", hint="the buildable image is: appliance")
    print(build_appliance(dirs.cache_dir(), force=force, progress=_progress))


@datastore_app.command("info")
def datastore_info(as_json: JsonFlag = False) -> None:
    """Where the datastore is and which host folders specfiles may name."""
    store = _hv().datastore
    data = {"root": str(store.root), "catalog": str(store.catalog.path),
            "vms": len(store.catalog.list()), "allowed_paths": store.catalog.allowed_paths()}
    if as_json:
        return _print_json(data)
    for key, value in data.items():
        print(f"{key:14} {value}")


@datastore_app.command("allow-path")
def datastore_allow(path: Annotated[Path, typer.Argument(help="A host folder.")]) -> None:
    """Let specfiles name files in a host folder outside the datastore."""
    _hv().datastore.catalog.allow_path(os.path.realpath(path))


# -- VMs ------------------------------------------------------------------------
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
    if disk_size and boot_disk:
        from .errors import SpecError

        raise SpecError("--disk-size and --boot-disk exclude each other", hint="give one of them")
    vm = _hv().create_vm(name, memory_mib=memory, cpus=cpus, disk_size=disk_size, boot_disk=boot_disk,
                         network=network, nic_model=nic, scsi_model=scsi, guest_os=guest_os, progress=_progress)
    print(f"created {vm.name}: {vm.vmx}")


@vm_app.command("register")
def vm_register(vmx: Annotated[Path, typer.Argument(help="The .vmx file, in its folder in the datastore.")],
                name: Annotated[Optional[str], typer.Option(help="Name in the catalog [default: displayName].")] = None
                ) -> None:
    """Add an existing specfile to the catalog."""
    vm = _hv().register_vm(vmx, name)
    print(f"registered {vm.name}: {vm.vmx}")


@vm_app.command("unregister")
def vm_unregister(name: Name) -> None:
    """Remove a VM from the catalog; its files stay."""
    _hv().unregister_vm(name)
    print(f"unregistered {name} (files kept)")


@vm_app.command("delete")
def vm_delete(name: Name) -> None:
    """Delete a powered-off VM and every file in its folder."""
    _hv().delete_vm(name)
    print(f"deleted {name}")


@vm_app.command("list")
def vm_list(as_json: JsonFlag = False) -> None:
    """The VMs in the datastore and their states."""
    vms = _hv().list_vms()
    if as_json:
        return _print_json([vm.to_dict() for vm in vms])
    from . import output

    output.vm_table(vms)


@vm_app.command("show")
def vm_show(name: Name, as_json: JsonFlag = False) -> None:
    """One VM: state, hardware, files."""
    vm = _hv().get_vm(name)
    if as_json:
        return _print_json(vm.to_dict())
    from . import output

    output.vm_details(vm)


@vm_app.command("explain")
def vm_explain(name: Name, as_json: JsonFlag = False) -> None:
    """The spec, the virtual hardware built from it, what is not virtualized, and the VMM command line."""
    explanation = _hv().explain_vm(name)
    if as_json:
        from . import output

        return _print_json(output.explanation_dict(explanation))
    from . import output

    output.explanation(explanation)


@vm_app.command("start")
def vm_start(name: Name,
             wait_ready: Annotated[bool, typer.Option(help="Return once the guest says it is ready.")] = False,
             timeout: Annotated[float, typer.Option(help="Seconds to wait for readiness.")] = 120.0) -> None:
    """Power on: start the VM's VMM, which boots it from its disk."""
    result = _hv().start_vm(name, wait_ready=wait_ready, timeout=timeout)
    _warn(result.warnings)
    print(f"{name} is powered on (pid {result.vm.pid}, {result.vm.accel})")
    if result.ready_line:
        print(f"{name} is ready: {result.ready_line}")


@vm_app.command("stop")
def vm_stop(name: Name,
            hard: Annotated[bool, typer.Option(help="Pull the plug instead of an ACPI shutdown.")] = False,
            timeout: Annotated[float, typer.Option(help="Seconds to wait for the guest before a hard stop.")] = 30.0
            ) -> None:
    """Power off (ACPI shutdown, hard after --timeout)."""
    how = _hv().stop_vm(name, hard=hard, timeout=timeout)
    print(f"{name} is powered off ({how})")


@vm_app.command("reset")
def vm_reset(name: Name) -> None:
    """Reset the VM (like its reset button)."""
    _hv().reset_vm(name)
    print(f"{name} was reset")


@vm_app.command("pause")
def vm_pause(name: Name) -> None:
    """Freeze the VM's virtual CPUs."""
    _hv().pause_vm(name)
    print(f"{name} is paused")


@vm_app.command("resume")
def vm_resume(name: Name) -> None:
    """Let a paused VM run again."""
    _hv().resume_vm(name)
    print(f"{name} is running")


@vm_app.command("console")
def vm_console(name: Name) -> None:
    """Attach this terminal to the VM's serial console (Ctrl-] detaches)."""
    from .console import attach

    socket_path, lock = _hv().console_socket(name)
    try:
        attach(socket_path, name)
    finally:
        os.close(lock)


@vm_app.command("exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def vm_exec(name: Name, command: Annotated[list[str], typer.Argument(help="The command (after --).")],
            timeout: Annotated[float, typer.Option(help="Seconds to wait for the command.")] = 60.0) -> None:
    """Run a command in the guest through its serial shell; exits with its exit code."""
    result = _hv().exec_in_vm(name, command, timeout=timeout)
    sys.stdout.write(result.output)
    raise typer.Exit(result.exit_code)


@app.command("demo")
def demo() -> None:
    """Build the appliance, boot a VM from a specfile and show what the guest sees."""
    from .demo import run_demo

    run_demo(_hv())


def main() -> None:
    """Entry point: run the CLI, turning errors into one line and an exit code."""
    try:
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except HvError as exc:
        sys.stderr.write(f"error: {exc.one_line()}\n")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - the last line of defence: users never see a traceback
        import click

        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(1)
        if os.environ.get("MINIVISOR_DEBUG"):
            raise
        sys.stderr.write(f"internal error: {type(exc).__name__}: {exc} (set MINIVISOR_DEBUG=1 for details)\n")
        sys.exit(1)
