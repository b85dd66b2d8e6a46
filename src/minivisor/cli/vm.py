"""``minivisor vm ...``: create, run and inspect VMs."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from . import JSON, NAME, HostPath, arg, command, datastore_root, hv, print_json, progress, say, warn
from ..text import is_number

TIMEOUT = "SECONDS"  # the metavar of every --timeout


@command("vm create", NAME,
         arg("--memory", "-m", type=int, default=512, metavar="MIB", help="Memory in MiB (memSize) [default: 512]."),
         arg("--cpus", "-c", type=int, default=1, metavar="N", help="Virtual CPUs (numvcpus) [default: 1]."),
         arg("--disk-size", metavar="SIZE", help="A new empty thin disk, e.g. 20G."),
         arg("--boot-disk", type=HostPath, metavar="FILE",
             help="Copy this disk image in as the boot disk (from a folder allowed with datastore allow-path)."),
         arg("--network", default="nat", help="nat, none, or a network name [default: nat]."),
         arg("--nic", default="vmxnet3", help="NIC model: vmxnet3, e1000, e1000e, vlance, virtio [default: vmxnet3]."),
         arg("--scsi", default="lsilogic", help="SCSI controller: lsilogic, lsisas1068, pvscsi [default: lsilogic]."),
         arg("--guest-os", default="other-64", help="guestOS value, e.g. debian12-64 [default: other-64]."),
         arg("--firmware", default="bios", help="bios or efi [default: bios]."),
         arg("--thick", action="store_true", help="Allocate the empty disk now (default: thin)."),
         arg("--cdrom", action="store_true", help="Add an empty CD-ROM drive (then: vm cdrom NAME insert ISO)."),
         JSON)
def vm_create(name: str, memory: int, cpus: int, disk_size: str | None, boot_disk: HostPath | None, network: str,
              nic: str, scsi: str, guest_os: str, firmware: str, thick: bool, cdrom: bool, as_json: bool) -> None:
    vm = hv().create_vm(name, memory_mib=memory, cpus=cpus, disk_size=disk_size, boot_disk=boot_disk,
                        network=network, nic_model=nic, scsi_model=scsi, guest_os=guest_os, firmware=firmware,
                        thick=thick, cdrom=cdrom, progress=progress)
    print_json(vm) if as_json else say(f"created {vm.name}: {vm.specfile}")


@command("vm register", arg("vmx", type=HostPath, metavar="VMX", help="The .vmx file, in its folder in the datastore."),
         arg("--name", help="Name in the catalog [default: from displayName]."), JSON)
def vm_register(vmx: HostPath, name: str | None, as_json: bool) -> None:
    vm = hv().register_vm(vmx, name)
    print_json(vm) if as_json else say(f"registered {vm.name}: {vm.specfile}")


@command("vm unregister", NAME)
def vm_unregister(name: str) -> None:
    hv().unregister_vm(name)
    say(f"unregistered {name} (files kept)")


@command("vm delete", NAME)
def vm_delete(name: str) -> None:
    hv().delete_vm(name)
    say(f"deleted {name}")


@command("vm list", JSON)
def vm_list(as_json: bool) -> None:
    vms = hv().list_vms()
    if as_json:
        return print_json(vms)
    from .output import vm_table

    vm_table(vms)


@command("vm show", NAME, JSON)
def vm_show(name: str, as_json: bool) -> None:
    vm = hv().get_vm(name)
    if as_json:
        return print_json(vm)
    from .output import vm_details

    vm_details(vm)


@command("vm explain", NAME, JSON)
def vm_explain(name: str, as_json: bool) -> None:
    from . import output

    explanation = hv().explain_vm(name)
    print_json(output.explanation_dict(explanation)) if as_json else output.explanation(explanation)


@command("vm check", arg("vmx", type=HostPath, metavar="VMX", help="Any .vmx file; nothing is registered or written."),
         JSON)
def vm_check(vmx: HostPath, as_json: bool) -> int:
    """Exits 0 if the VM would power on, else with the exit code of a missing disk."""
    from ..core.check import check_vmx
    from ..datastore.store import META
    from ..errors import DiskError

    if (datastore_root() / META / "catalog.sqlite").exists():  # NICs judged against its networks
        report = hv().check_vmx(os.path.abspath(vmx))  # absolute: a service has a folder of its own
    else:
        report = check_vmx(vmx)  # the function, not hv(): no datastore is opened (or created)
    if as_json:
        print_json(report)
    else:
        from .output import check_report

        check_report(report)
    return 0 if report["powers_on"] else DiskError.exit_code


@command("vm start", NAME, arg("--wait-ready", action="store_true", help="Return once the guest says it is ready."),
         arg("--timeout", type=float, default=120.0, metavar=TIMEOUT,
             help="Seconds to wait for readiness [default: 120]."),
         arg("--host", metavar="HOST", help="In a cluster: power it on on this host (default: the one placement "
                                            "chooses)."), JSON)
def vm_start(name: str, wait_ready: bool, timeout: float, host: str | None, as_json: bool) -> None:
    result = hv().start_vm(name, wait_ready=wait_ready, timeout=timeout, host=host)
    warn(result.warnings)
    if as_json:
        return print_json(result)
    where = f" on host {result.host}" if result.host else ""
    say(f"{name} is powered on{where} (pid {result.vm.pid}, {result.vm.accel})")
    if result.ready_line:
        say(f"{name} is ready: {result.ready_line}")


@command("vm stop", NAME, arg("--hard", action="store_true", help="Pull the plug instead of an ACPI shutdown."),
         arg("--timeout", type=float, default=30.0, metavar=TIMEOUT,
             help="Seconds to wait for the guest before a hard stop [default: 30]."))
def vm_stop(name: str, hard: bool, timeout: float) -> None:
    how = hv().stop_vm(name, hard=hard, timeout=timeout)
    say(f"{name} is powered off ({how})")


@command("vm reset", NAME)
def vm_reset(name: str) -> None:
    hv().reset_vm(name)
    say(f"{name} was reset")


@command("vm pause", NAME)
def vm_pause(name: str) -> None:
    hv().pause_vm(name)
    say(f"{name} is paused")


@command("vm resume", NAME)
def vm_resume(name: str) -> None:
    hv().resume_vm(name)
    say(f"{name} is running")


@command("vm console", NAME)
def vm_console(name: str) -> None:
    from ..vmm.console import attach

    socket_path, lock = hv(direct=True).console_socket(name)  # a local socket: never through the service
    try:
        attach(socket_path, name)
    finally:
        os.close(lock)


@command("vm exec", NAME, arg("command", nargs="+", metavar="COMMAND",
                              help="The command and its arguments; after --, options are the command's own."),
         arg("--timeout", type=float, default=60.0, metavar=TIMEOUT,
             help="Seconds to wait for the command [default: 60]."),
         arg("--via", choices=("auto", "agent", "serial"), default="auto", metavar="auto|agent|serial",
             help="The guest agent, the serial shell, or the agent when one answers and runs commands, else the serial "
                  "shell [default: auto]."),
         arg("--no-wait", dest="wait", action="store_false",
             help="Start it in the background and print its pid at once; its output is discarded (vmrun's "
                  "-noWait)."), JSON)
def vm_exec(name: str, command: list[str], timeout: float, via: str, wait: bool, as_json: bool) -> int:
    """Each argument reaches the guest exactly as given (quoted for its shell); one argument holding
    spaces is one shell command line.  Example: minivisor vm exec web -- sh -c 'cd /tmp; ls'"""
    result = hv().exec_in_vm(name, command[0] if len(command) == 1 and " " in command[0] else command,
                             timeout=timeout, via=via, wait=wait)
    if as_json:
        print_json(result)
    elif not wait:
        say(f"{name}: started, pid {result.pid}")
    else:
        sys.stdout.write(result.output)
        sys.stderr.write(result.stderr)
    # An exit status holds 8 bits: a Windows guest's 256 (or a hostile agent's) would read as success
    return min(result.exit_code, 255)


@command("vm migrate", NAME, arg("host", metavar="HOST", help="The host of the cluster to move it to."), JSON)
def vm_migrate(name: str, host: str, as_json: bool) -> None:
    """Example: minivisor vm migrate web host2 (run on the VM's host; it is removed here once it runs there)"""
    from ..units import human_size

    moved = hv(direct=True).migrate_vm(name, host, progress=None if as_json else progress)
    if as_json:
        return print_json(moved)
    say(f"migrated {name} to {host} in {moved['total_seconds']:.1f} s: {human_size(moved['disk_bytes'])} of disks, "
        f"{human_size(moved['memory_bytes'])} of memory; the guest was paused for {moved['downtime_ms']} ms")


@command("vm copy-to", NAME, arg("host_file", type=HostPath, metavar="HOSTFILE", help="The host file to copy."),
         arg("guest_path", metavar="GUESTPATH", help="The file to write in the guest (its full path)."), JSON)
def vm_copy_to(name: str, host_file: HostPath, guest_path: str, as_json: bool) -> None:
    """Example: minivisor vm copy-to web ./app.tar /tmp/app.tar"""
    with _copy_progress(f"copying {os.path.basename(host_file)} to {name}") as update:
        result = hv(direct=True).copy_to_guest(name, host_file, guest_path, progress=update)
    print_json(result) if as_json else say(f"copied {result['bytes']} bytes to {name}:{guest_path}")


@command("vm copy-from", NAME, arg("guest_path", metavar="GUESTPATH", help="The guest file to copy (its full path)."),
         arg("host_file", type=HostPath, metavar="HOSTFILE", help="The host file to write (replaced whole)."), JSON)
def vm_copy_from(name: str, guest_path: str, host_file: HostPath, as_json: bool) -> None:
    """Example: minivisor vm copy-from web /var/log/syslog ./syslog"""
    with _copy_progress(f"copying {guest_path} from {name}") as update:
        result = hv(direct=True).copy_from_guest(name, guest_path, host_file, progress=update)
    print_json(result) if as_json else say(f"copied {result['bytes']} bytes to {host_file}")


@contextmanager
def _copy_progress(what: str):
    """A progress bar for a copy that lasts (none for one done within a second): the host files are this
    process's, so copies run here, not in a service."""
    import time

    from .output import ProgressBar

    bar, started = ProgressBar(what), time.monotonic()

    def update(percent: float) -> None:
        if time.monotonic() - started > 1.0:
            bar(percent)
    try:
        yield update
    finally:
        bar.close()


@command("vm cdrom", NAME, arg("action", choices=("insert", "eject"), metavar="insert|eject", help="insert or eject."),
         arg("image", nargs="?", type=HostPath, metavar="ISO", help="The image to insert (in the VM's folder or an "
                                                                "allowed folder)."),
         arg("--drive", metavar="NODE", help="The drive, e.g. sata0:1 [default: the first CD-ROM drive]."), JSON)
def vm_cdrom(name: str, action: str, image: HostPath | None, drive: str | None, as_json: bool) -> None:
    """Example: minivisor vm cdrom web insert ~/isos/debian-12.iso"""
    from ..errors import ArgumentError

    if (action == "insert") != (image is not None):
        raise ArgumentError("insert takes the ISO to insert, eject none", hint="see: minivisor vm cdrom --help")
    result = hv().cdrom(name, os.path.abspath(image) if image else None, drive=drive)
    print_json(result) if as_json else say(f"{name}: {result['drive']} " + (f"holds {result['image']}"
                                                                             if result["image"] else "is empty"))


@command("vm screenshot", NAME, arg("output", type=HostPath, metavar="FILE", help="Where to write the PNG."))
def vm_screenshot(name: str, output: HostPath) -> None:
    from ..errors import PathError
    from ..files import write_atomic

    png = hv(direct=True).screenshot(name)  # the screen is local: never through the service
    try:
        write_atomic(output, png)
    except OSError as exc:
        raise PathError(f"cannot write the screenshot to {output}: {exc.strerror}",
                        hint="name a file in a folder that exists and you may write") from exc
    say(f"{name}: screen saved to {output}")


@command("vm display", NAME, JSON)
def vm_display(name: str, as_json: bool) -> None:
    info = hv(direct=True).display_info(name)
    if as_json:
        return print_json(info)
    if not info["adapter"]:
        return say(f"{name} has no display (svga.present = FALSE)")
    say(f"{name}: {info['adapter']}, VNC on the UNIX socket {info['vnc_socket']} (owner only)"
        + ("" if info["running"] else "; it is there while the VM runs"))
    say(f"  connect: vncviewer {info['vnc_socket']}   or, for a TCP viewer on this host only:")
    say(f"  socat TCP-LISTEN:5901,bind=127.0.0.1,fork UNIX-CONNECT:{info['vnc_socket']}")


@command("vm set", NAME,
         arg("--cpus", "-c", type=int, metavar="N", help="Virtual CPUs (numvcpus)."),
         arg("--memory", "-m", type=int, metavar="MIB", help="Memory in MiB (memSize)."), JSON)
def vm_set(name: str, cpus: int | None, memory: int | None, as_json: bool) -> None:
    """Example: minivisor vm set web --cpus 2 --memory 1024"""
    result = hv().set_resources(name, cpus=cpus, memory_mib=memory)
    print_json(result) if as_json else say(f"{name}: {result['cpus']} vCPUs, {result['memory_mib']} MiB")


@command("vm reset-nvram", NAME)
def vm_reset_nvram(name: str) -> None:
    existed = hv().reset_nvram(name)
    say(f"{name}: UEFI variables reset" if existed else f"{name}: no UEFI variables to reset")


@command("vm autostart", NAME, arg("setting", choices=("on", "off"), metavar="on|off", help="on or off."),
         JSON)
def vm_autostart(name: str, setting: str, as_json: bool) -> None:
    vm = hv().set_autostart(name, setting == "on")
    print_json(vm) if as_json else say(f"{vm.name}: autostart {setting}")


@command("vm ha", NAME, arg("setting", choices=("on", "off"), metavar="on|off", help="on or off."), JSON)
def vm_ha(name: str, setting: str, as_json: bool) -> None:
    """Example: minivisor vm ha web on (the hosts that have web registered, on a datastore they share, can run it)"""
    vm = hv().set_ha(name, setting == "on")
    print_json(vm) if as_json else say(f"{vm.name}: HA {setting}" + (
        ": powered on by another host of the cluster that has it registered when its host dies"
        if setting == "on" else ""))


@command("vm replicate", NAME, arg("--to", metavar="HOST", help="The host of the cluster that keeps the replica."),
         arg("--every", default="5m", metavar="INTERVAL", help="How often a round copies what changed: 30s, 5m, 1h "
                                                                "[default: 5m]."),
         arg("--off", action="store_true", help="End the replication (the other host removes its replica)."), JSON)
def vm_replicate(name: str, to: str | None, every: str, off: bool, as_json: bool) -> None:
    """Example: minivisor vm replicate web --to host2 --every 5m (run on the VM's host; its disks must be qcow2)"""
    from ..errors import ArgumentError

    if off == (to is not None):
        raise ArgumentError("say where to replicate to (--to HOST) or --off, not both",
                            hint=f"e.g. minivisor vm replicate {name} --to host2 --every 5m")
    if off:
        ended = hv(direct=True).stop_replication(name)
        return print_json(ended) if as_json else say(f"{name}: replication to {ended['target']} ended")
    from ..cluster.replication import parse_every
    from ..units import human_size

    done = hv(direct=True).replicate_vm(name, to, parse_every(every), progress=None if as_json else progress)
    if as_json:
        return print_json(done)
    say(f"replicated {name} to {to} in {done['seconds']:.1f} s: {human_size(done['bytes'])} copied (generation "
        f"{done['generation']}); again every {every}")


@command("vm events", NAME, arg("--limit", type=int, default=20, metavar="N",
                                help="How many of the last events (0: all) [default: 20]."), JSON)
def vm_events(name: str, limit: int, as_json: bool) -> None:
    events = hv().vm_events(name, limit)
    if as_json:
        return print_json(events)
    import time

    for event in events:
        extra = " ".join(f"{k}={v}" for k, v in event.items() if k not in ("type", "vm", "time", "id"))
        say(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(event['time']))}  {event['type']:<14} {extra}")


# -- disks, clones, imports --------------------------------------------------------
@command("vm disk", NAME,
         arg("action", nargs="?", default="list", choices=("list", "info", "resize", "add"), metavar="ACTION",
             help="list (the default), info, resize (also while the VM runs: the guest sees the new size), or add "
                  "(a new empty disk, to a powered-off VM)."),
         arg("disk", nargs="?", metavar="DISK", help="The disk, e.g. scsi0:0 (for info and resize); the size for add."),
         arg("size", nargs="?", metavar="SIZE", help="The new size, for resize, e.g. 20G."),
         arg("--thick", action="store_true", help="add: allocate the new disk now (default: thin)."), JSON)
def vm_disk(name: str, action: str, disk: str | None, size: str | None, thick: bool, as_json: bool) -> None:
    """Examples: minivisor vm disk web resize scsi0:0 20G; minivisor vm disk web add 8G"""
    from ..errors import ArgumentError, NoSuchDiskError
    from ..text import excerpt

    if action == "add":
        if not disk or size:
            raise ArgumentError("add takes the new disk's size alone", hint="e.g. minivisor vm disk web add 8G")
        added = hv().add_disk(name, disk, thick=thick)
        return print_json(added) if as_json else say(f"{name}: new {'thick' if thick else 'thin'} disk "
                                                     f"{added['node']} ({added['file']})")
    if action == "resize":
        if not disk or not size:
            raise ArgumentError("resize needs the disk and its new size", hint="see: minivisor vm disk --help")
        disks = [hv().vm_disk_resize(name, disk, size)]
    else:
        disks = [d for d in hv().vm_disks(name) if disk is None or d["node"] == disk.lower()]
        if disk and not disks:
            raise NoSuchDiskError(f"VM {name!r} has no hard disk {excerpt(disk)}",
                                  hint=f"see its disks: minivisor vm disk {name} list")
    if as_json:
        return print_json(disks)
    from . import output

    if action == "list":
        return output.disk_table(disks)
    for info in disks:
        output.disk_details(info)


@command("vm clone", arg("source", metavar="SOURCE", help="The VM to clone."),
         arg("target", metavar="TARGET", help="The new VM's name."),
         arg("--linked", action="store_true", default=False,
             help="Overlays on the source's snapshot (almost no space) instead of copies of its disks."),
         arg("--full", dest="linked", action="store_false", default=False, help="Copies of the disks (the default)."),
         arg("--snapshot", help="Clone this snapshot [default: the current state; a running or linked source gets a "
                                "new snapshot]."), JSON)
def vm_clone(source: str, target: str, linked: bool, snapshot: str | None, as_json: bool) -> None:
    from .output import ProgressBar

    with ProgressBar(f"cloning {source}") as bar:
        vm = hv().clone_vm(source, target, linked=linked, snapshot=snapshot, progress=None if linked else bar)
    print_json(vm) if as_json else say(f"created {'linked' if linked else 'full'} clone {vm.name}: {vm.specfile}")


@command("vm import", arg("folder", type=HostPath, metavar="FOLDER", help="A VMware VM folder (.vmx and its disks)."),
         arg("--name", help="Name in the catalog [default: from displayName]."), JSON)
def vm_import(folder: HostPath, name: str | None, as_json: bool) -> None:
    from .output import ProgressBar

    bars: dict[str, ProgressBar] = {}

    def update(disk: str, percent: float) -> None:
        if disk not in bars:  # the disks are copied one after another: end the last one's bar
            for bar in bars.values():
                bar.close()
            bars[disk] = ProgressBar(f"importing {disk}")
        bars[disk](percent)

    try:
        vm = hv().import_vm(folder, name, progress=update)
    finally:
        for bar in bars.values():
            bar.close()
    print_json(vm) if as_json else say(f"imported {vm.name}: {vm.specfile}")


# -- networks ----------------------------------------------------------------------
@command("vm ip", NAME, JSON)
def vm_ip(name: str, as_json: bool) -> None:
    nics = hv().vm_addresses(name)
    if as_json:
        return print_json(nics)
    from .output import table

    table(("NIC", "MAC", "NETWORK", "ADDRESS", "LEASE", "GUEST (AGENT)"),
          [(n["nic"], n["mac"], n["network"] or "-", n["address"] or "-", n["lease"] or "-",
            " ".join(n["guest"]) if n.get("guest") else "-") for n in nics])


@command("vm nic", NAME, arg("nic", metavar="NIC", help="The NIC, e.g. ethernet0."),
         arg("--add", action="store_true", help="Add it to the specfile (a running VM gets it at once: hot-plug)."),
         arg("--remove", action="store_true", help="Remove it from the specfile, with its port forwards (a running "
                                                   "VM's guest releases it first)."),
         arg("--model", default="vmxnet3", help="With --add: vmxnet3, e1000, e1000e, vlance, virtio "
                                                "[default: vmxnet3]."),
         arg("--network", default="nat", help="With --add: nat, hostonly, bridged, none, or a network name "
                                              "[default: nat]."),
         arg("--link", choices=("up", "down"), metavar="up|down",
             help="Connect or disconnect its link (a running VM at once; otherwise at its next power-on)."),
         arg("--ip", metavar="ADDRESS", help="Fix its address on its network (DHCP reservation)."), JSON)
def vm_nic(name: str, nic: str, add: bool, remove: bool, model: str, network: str, link: str | None,
           ip: str | None, as_json: bool) -> None:
    """Example: minivisor vm nic web ethernet1 --add --model virtio --network lab"""
    from ..errors import ArgumentError

    if add + remove + (link is not None or ip is not None) > 1:
        raise ArgumentError("--add, --remove and --link/--ip are different changes", hint="give one of them")
    if add or remove:
        result = hv().add_nic(name, nic, model=model, network=network) if add else hv().remove_nic(name, nic)
        if as_json:
            return print_json(result)
        warn(result.get("warnings", ()))
        when = " (hot-plugged)" if result["hotplugged"] else ""
        return say(f"{name} {result['nic']}: added, {result['model']} on {result['network']}, MAC {result['mac']}"
                   f"{when}" if add else f"{name} {result['nic']}: removed{when}")
    result = hv().set_nic(name, nic, link=None if link is None else link == "up", address=ip)
    if as_json:
        return print_json(result)
    if "address" in result:
        say(f"{name} {result['nic']}: address {result['address']} on {result['network']} (the guest gets it at its "
            "next DHCP renewal)")
    if "link" in result:
        say(f"{name} {result['nic']}: link {result['link']}")


@command("vm port-forward", NAME,
         arg("action", nargs="?", default="list", choices=("list", "add", "remove"), metavar="ACTION",
             help="list (the default), add or remove."),
         arg("forward", nargs="?", metavar="[ADDR:]HOSTPORT:GUESTPORT[/udp]",
             help="For add: the host's port (on 127.0.0.1 unless ADDR; 0.0.0.0 for all) and the guest's. "
                  "For remove: [ADDR:]HOSTPORT[/udp]."),
         arg("--nic", default="ethernet0", help="The NIC whose guest gets the port [default: ethernet0]."), JSON)
def vm_port_forward(name: str, action: str, forward: str | None, nic: str, as_json: bool) -> None:
    """Example: minivisor vm port-forward web add 8080:80"""
    from ..errors import ArgumentError

    if action != "list" and not forward:
        raise ArgumentError(f"{action} needs the forward", hint="see: minivisor vm port-forward --help")
    if action == "add":
        added = hv().port_forward_add(name, forward, nic=nic)
        return print_json(added) if as_json else say(f"{name}: {added['host_addr']}:{added['host_port']}/"
                                                     f"{added['protocol']} -> {added['nic']} port {added['guest_port']}")
    if action == "remove":
        hv().port_forward_remove(name, forward)
        return say(f"{name}: port forward {forward} removed")
    forwards = hv().port_forward_list(name)
    if as_json:
        return print_json(forwards)
    from .output import table

    table(("HOST", "PROTOCOL", "NIC", "GUEST PORT"),
          [(f"{f['host_addr']}:{f['host_port']}", f["protocol"], f["nic"], f["guest_port"]) for f in forwards])


@command("vm rule", arg("action", choices=("list", "add", "remove"), metavar="ACTION",
                        help="list, add VM VM [VM...] --apart|--together, or remove ID."),
         arg("items", nargs="*", metavar="VM|ID", help="For add: the VMs; for remove: the rule's id."),
         arg("--apart", action="store_true", help="For add: keep the VMs on different hosts."),
         arg("--together", action="store_true", help="For add: keep the VMs on one host."), JSON)
def vm_rule(action: str, items: list[str], apart: bool, together: bool, as_json: bool) -> None:
    """Example: minivisor vm rule add web1 web2 --apart (kept in the cluster: any host's vm start obeys it)"""
    from ..errors import ArgumentError

    if action == "add":
        if apart == together:
            raise ArgumentError("say how the VMs are kept: --apart or --together", hint="see: minivisor vm rule --help")
        rule = hv(direct=True).rule_add(items, "apart" if apart else "together")
        return print_json(rule) if as_json else say(f"rule {rule['id']}: {', '.join(rule['vms'])} {rule['kind']}")
    if action == "remove":
        if len(items) != 1 or not is_number(items[0]):
            raise ArgumentError("remove takes one rule id", hint="see the ids: minivisor vm rule list")
        rule = hv(direct=True).rule_remove(int(items[0]))
        return print_json(rule) if as_json else say(f"rule {rule['id']} removed")
    if items:
        raise ArgumentError("list takes no VM or id", hint="minivisor vm rule list")
    rules = hv(direct=True).rule_list()
    if as_json:
        return print_json(rules)
    from .output import table

    table(("ID", "KIND", "VMS"), [(rule["id"], rule["kind"], ", ".join(rule["vms"])) for rule in rules])
