"""The ``minivisor`` command: a thin layer over :class:`minivisor.core.hypervisor.Hypervisor`.

It answers like virsh, so start-up does only what the command asks for:

- :data:`GROUPS` and :data:`COMMANDS` name every command with its one-line help: ``minivisor --help``
  and ``minivisor GROUP --help`` are printed from them, importing no command module;
- the commands of ``minivisor X ...`` are declared in ``minivisor.cli.X`` with :func:`command`
  (arguments as data, and one short function over the core API), imported only when one of them runs;
- :mod:`minivisor.cli.parsing` reads that one command's words (plain words without argparse; anything else,
  help and mistakes included, through argparse built for that command: :mod:`minivisor.cli.argparser`);
- each command imports the part of the core it calls, and output (:mod:`minivisor.cli.output`) is plain text.

Every error is an :class:`~minivisor.errors.HvError` turned, in :func:`main` only, into one line
on stderr and the error's exit code; a usage mistake is an ArgumentError (exit 2) whose hint names
the help to read. Set MINIVISOR_DEBUG=1 to see tracebacks of unexpected failures.

Every human-readable line goes through :func:`say`, :func:`warn`, :func:`progress`, :func:`main` or
:mod:`minivisor.cli.output`, which escape control characters: names and values from specfiles and
guests never drive the terminal.
"""

from __future__ import annotations

import os
import sys
from importlib import import_module

from ..errors import ArgumentError, HvError
from ..text import clip, excerpt, printable

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from pathlib import Path

ABOUT = "minivisor: run VMware-style VMs (.vmx) on QEMU/KVM."

# The command groups, in --help order. The commands of group X are declared in minivisor.cli.X.
GROUPS = {
    "vm": "Create, run and inspect VMs.",
    "snapshot": "Snapshots of a VM (a tree, kept in its .vmsd).",
    "disk": "Virtual disk files: create, inspect, grow, convert.",
    "net": "Virtual networks (switches): NAT, isolated (host-only), bridged; DHCP with fixed addresses.",
    "datastore": "The datastore folder and its policy.",
    "host": "Facts about this host.",
    "cluster": "This host in a cluster of minivisor hosts (etcd): members, liveness, one owner per VM.",
    "image": "Build guest images.",
}

# Every command ("GROUP COMMAND", or one word for a command of its own, declared in minivisor.cli.COMMAND)
# with its one-line help, in --help order.
COMMANDS = {
    "vm create": "Create a VM folder with a specfile and a disk in the datastore.",
    "vm register": "Add an existing specfile to the catalog.",
    "vm unregister": "Remove a VM from the catalog; its files stay.",
    "vm delete": "Delete a powered-off VM and every file in its folder.",
    "vm list": "The VMs in the datastore and their states.",
    "vm show": "One VM: state, hardware, files.",
    "vm explain": "The spec, the virtual hardware built from it, what is not virtualized, and the VMM command line.",
    "vm check": "Read any specfile (no datastore needed): each key virtualized, approximated, disconnected or ignored, "
                "and why.",
    "vm start": "Power on: start the VM's VMM, which boots it from its disk (in a cluster: on the host placement "
                "chooses, or --host).",
    "vm stop": "Power off (the guest agent's shutdown, else ACPI; hard after --timeout).",
    "vm reset": "Reset the VM (like its reset button).",
    "vm pause": "Freeze the VM's virtual CPUs.",
    "vm resume": "Let a paused VM run again.",
    "vm console": "Attach this terminal to the VM's serial console (Ctrl-] detaches).",
    "vm exec": "Run a command in the guest (its guest agent, else its serial shell); exits with its exit code.",
    "vm migrate": "Move the running VM to another host of the cluster, with its local disks; the guest runs on.",
    "vm copy-to": "Copy a host file into the running guest (through its guest agent).",
    "vm copy-from": "Copy a file of the running guest to the host (through its guest agent), written whole or not at all.",
    "vm cdrom": "Insert an ISO into the VM's CD-ROM drive, or eject it; a running guest sees the tray move.",
    "vm screenshot": "Save the running VM's screen as a PNG file.",
    "vm display": "How to reach the VM's screen (a VNC server on a UNIX socket).",
    "vm set": "Change a powered-off VM's vCPUs and memory (in its specfile, comments and order kept).",
    "vm reset-nvram": "Forget a powered-off EFI VM's UEFI variables; the next power-on starts from the firmware's "
                      "defaults.",
    "vm autostart": "Power the VM on whenever the service starts (on), or not (off).",
    "vm ha": "Restart the VM on another host of the cluster when its host dies (on), or not (off).",
    "vm replicate": "Copy the running VM's disks to a replica on another host of the cluster, again every interval "
                    "(what changed); HA powers the replica on when this host dies. --off ends it.",
    "vm events": "What happened to the VM: power-ons, power-offs with their reasons, crashes...",
    "vm disk": "A VM's hard disks: list them, show one (sizes, chain), grow one, or add a new one.",
    "vm clone": "A new VM (new name, UUID and MACs) from SOURCE: a full copy, or --linked on a snapshot.",
    "vm import": "Copy a VMware VM into the datastore (disks checked, chains flattened to qcow2), ready to start.",
    "vm ip": "Each NIC's MAC, network and address (fixed by DHCP reservation; 'leased' once the guest took it), "
             "and the addresses the guest's agent reports.",
    "vm nic": "Add or remove a NIC (hot-plugged if the VM runs), connect or disconnect its link, or fix its address.",
    "vm port-forward": "Ports of the host forwarded to a VM's guest: add, list, remove (kept with the VM).",
    "vm rule": "Placement rules of the cluster: VMs kept on different hosts (--apart) or on one (--together).",
    "snapshot take": "Freeze the VM's disks (and its memory when running) as a named snapshot.",
    "snapshot list": "The snapshot tree; '<- you are here' marks the VM's current position.",
    "snapshot revert": "Go back to a snapshot (the current state is discarded); memory snapshots resume running.",
    "snapshot delete": "Delete a snapshot; its data is merged into what depends on it.",
    "disk create": "Create an empty disk: thin (grows as the guest writes) or thick.",
    "disk info": "Virtual size, bytes really allocated, format and chain of parents.",
    "disk resize": "Grow a disk (never shrinks).",
    "disk convert": "Copy a disk (flattening its chain) into a new file and format.",
    "net create": "Create a network: NAT (default), --isolated (host-only) or --bridge HOSTIF; DHCP unless --no-dhcp.",
    "net list": "The networks (nat and hostonly always among them), their subnets and state.",
    "net show": "One network: subnet, bridge, DHCP server, the running VMs on it.",
    "net delete": "Delete a network and all it made on the host (refused while a running VM is on it).",
    "datastore info": "Where the datastore is and which host folders specfiles may name.",
    "datastore allow-path": "Let specfiles name files in a host folder outside the datastore.",
    "host info": "CPUs, memory, QEMU, and which accelerator VMs get (and why).",
    "cluster init": "Make a cluster in etcd and join this host to it.",
    "cluster join": "Join this host to the cluster in etcd; its service then keeps it a live member.",
    "cluster status": "Every host of the cluster: live or not, free memory, CPUs, running VMs, versions.",
    "cluster leave": "Take this host out of its cluster (refused while VMs run here).",
    "image build": "Build a guest image from Debian packages (cached); prints its path.",
    "serve": "Run the service for the datastore: REST API, web UI, events, metrics, VMM supervision.",
    "demo": "Build the appliance, boot a VM from a specfile and show what the guest sees.",
}

# How a command is declared: one argument (argparse's add_argument(*names, **options), kept as data until
# the command runs), and the declared commands: "vm list" -> (function, arguments).
Arg = tuple[tuple[str, ...], dict]
DECLARED: dict[str, tuple] = {}

_state: dict[str, object] = {}


def arg(*names: str, **options: object) -> Arg:
    """One argument of a command, as ``argparse.ArgumentParser.add_argument`` takes it.

    ``choices`` are checked with a short message (a long value is echoed as an excerpt).
    """
    return names, options


def command(path: str, *args: Arg):
    """Declare the function that runs ``minivisor PATH`` (``"vm list"``); argparse passes it each argument by
    its ``dest``, and what it returns (an int) is the exit code. Its help is the one in :data:`COMMANDS`."""
    if path not in COMMANDS:
        raise KeyError(f"{path!r} is not in minivisor.cli.COMMANDS: add it there with its one-line help")

    def declare(func):
        DECLARED[path] = (func, args)
        return func
    return declare


class HostPath(str):
    """A file or folder named on the command line, as typed: the ``type`` of such an argument.

    A str that is also a PathLike, which the core API takes wherever it takes a Path and the client sends
    made absolute (the service resolves paths from its own folder), so the command line is read without
    importing pathlib (~5 ms of CPU with fnmatch, re, urllib.parse and ipaddress).
    """

    __slots__ = ()

    def __fspath__(self) -> str:
        return str.__str__(self)


# Arguments many commands share.
NAME = arg("name", metavar="NAME", help="The VM's name.")
JSON = arg("--json", dest="as_json", action="store_true", help="Print JSON for scripts.")


# -- what commands share ---------------------------------------------------------
def datastore_root() -> Path:
    from pathlib import Path  # here: a command through a service needs only the folder's name

    return Path(_datastore_folder())


def _datastore_folder() -> str:
    if named := _state.get("datastore"):
        return named  # type: ignore[return-value]
    from ..dirs import default_datastore

    return str(default_datastore())


def hv(*, direct: bool = False):
    """The core API: the running service's client when there is one, else the datastore itself, and then a
    service is started on demand for the commands after this one (:mod:`minivisor.service.on_demand`).

    Both give the same results, errors and exit codes. MINIVISOR_DIRECT=1 (or
    ``direct``) bypasses the service; the VM locks keep the two from racing.
    """
    if not direct and not os.environ.get("MINIVISOR_DIRECT"):
        if "client" not in _state:
            root = _datastore_folder()
            client = None
            from ..service.discovery import SERVICE_FILE

            if os.path.exists(os.path.join(root, SERVICE_FILE)):  # import the client only then
                from ..client import connect

                client = connect(root)
            if client is None:
                from ..service import on_demand

                if on_demand.wanted(root):
                    on_demand.start(root)
            _state["client"] = client
        if _state["client"] is not None:
            return _state["client"]
    from ..core.hypervisor import Hypervisor

    if "hv" not in _state:
        _state["hv"] = Hypervisor(_state.get("datastore"))  # type: ignore[arg-type]
    return _state["hv"]


def print_json(data: object) -> None:
    """A core API result (anything with ``to_dict``, records, dataclasses, lists of them, plain data) as JSON on
    stdout."""
    import json

    sys.stdout.write(json.dumps(_plain(data), indent=2, default=str) + "\n")


def _plain(value: object) -> object:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    from ..records import Record

    if isinstance(value, Record):
        return {name: _plain(getattr(value, name)) for name in value._fields}
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def say(line: str) -> None:
    """One line of human-readable output on stdout."""
    sys.stdout.write(printable(line) + "\n")


def warn(lines) -> None:
    for line in lines:
        sys.stderr.write(f"warning: {printable(line)}\n")


def progress(line: str) -> None:
    sys.stderr.write(f"  {printable(line)}\n")


# -- the command line --------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    """Entry point: run the command, turning errors into one line and an exit code."""
    try:
        code = run(sys.argv[1:] if argv is None else argv)
        sys.stdout.flush()
    except HvError as exc:
        sys.stderr.write(f"error: {printable(exc.one_line())}\n")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    except BrokenPipeError:  # stdout closed early (`minivisor vm list | head -1`): not an error worth a line
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nor at the exit's final flush
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: users never see a traceback
        if os.environ.get("MINIVISOR_DEBUG"):
            raise
        detail = printable(" ".join(clip(str(exc)).split()))
        sys.stderr.write(f"internal error: {type(exc).__name__}: {detail} (set MINIVISOR_DEBUG=1 for details)\n")
        sys.exit(1)
    _exit(code or 0)


def _exit(code: int) -> None:
    """Exit with ``code`` without the interpreter's teardown: freeing every module and object the process
    is about to lose anyway costs tens of milliseconds after the command's work, which every command and
    above all ``vm start --wait-ready`` would pay last. The ``atexit`` functions still run (logging's
    flush) and output is flushed; a thread that is not a daemon still gets the usual exit, which waits for it."""
    import atexit  # built in

    threading = sys.modules.get("threading")
    if threading is not None and any(not thread.daemon for thread in threading.enumerate()
                                     if thread is not threading.main_thread()):
        sys.exit(code)
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:  # the reader left (`minivisor vm list | head -1`)
        code = code or 1
    os._exit(code)


def run(argv: list[str]) -> int | None:
    """Run ``minivisor ARGV``: the global options, then the command's words, then its arguments."""
    words = _global_options(list(argv))
    if not words or words[0] in ("-h", "--help"):
        return _print_help()
    group = words[0]
    if group in COMMANDS:  # a command of its own (serve, demo)
        path, args = group, words[1:]
    elif group in GROUPS:
        if len(words) < 2 or words[1] in ("-h", "--help"):
            return _print_help(group)
        path, args = f"{group} {words[1]}", words[2:]
        if path not in COMMANDS:
            raise _unknown(words[1], f"a {group} command", [c.split()[1] for c in _commands_of(group)],
                           f"minivisor {group} --help")
    else:
        raise _unknown(group, "a minivisor command", [*GROUPS, *(c for c in COMMANDS if " " not in c)],
                       "minivisor --help")
    import_module(f"{__name__}.{path.split()[0]}")  # declares the group's commands
    from .parsing import parse

    function, values = parse(path, args)
    return function(**values)


def _global_options(words: list[str]) -> list[str]:
    """Take ``--datastore DIR`` (``-d DIR``, ``--datastore=DIR``, ``-dDIR``) off the front of the command line."""
    while words and words[0].startswith("-") and words[0] not in ("-h", "--help"):
        word = words.pop(0)
        name, has_value, value = word.partition("=")
        if name.startswith("-d") and not name.startswith("--") and len(name) > 2:
            name, has_value, value = "-d", "=", word[2:]
        if name not in ("-d", "--datastore"):
            raise ArgumentError(f"unknown option {excerpt(word)}", hint="see: minivisor --help")
        if not has_value:
            if not words:
                raise ArgumentError(f"{name} needs the datastore folder", hint="minivisor --datastore DIR COMMAND ...")
            value = words.pop(0)
        _state["datastore"] = value
    return words


def _commands_of(group: str) -> list[str]:
    return [path for path in COMMANDS if path.startswith(f"{group} ")]


def _unknown(word: str, what: str, known: list[str], help_command: str) -> ArgumentError:
    from difflib import get_close_matches

    close = get_close_matches(word, known, n=1) if len(word) <= 64 else []
    guess = f"did you mean {close[0]!r}? " if close else ""
    return ArgumentError(f"{excerpt(word)} is not {what}", hint=f"{guess}see: {help_command}")


def _print_help(group: str | None = None) -> int:
    """The help of minivisor, or of one group, from the command table alone."""
    if group is None:
        usage, about = "minivisor [-d DIR] COMMAND ...", ABOUT
        rows = [*GROUPS.items(), *((path, text) for path, text in COMMANDS.items() if " " not in path)]
        footer = ["options:", *_columns([("-d, --datastore DIR", "The datastore folder [default: $MINIVISOR_DATASTORE "
                                                                  "or ./datastore]."),
                                         ("-h, --help", "Show this help.")]),
                  "", "'minivisor COMMAND --help' shows a command's own commands or arguments."]
    else:
        usage, about = f"minivisor {group} COMMAND ...", GROUPS[group]
        rows = [(path.split()[1], COMMANDS[path]) for path in _commands_of(group)]
        footer = [f"'minivisor {group} COMMAND --help' shows a command's arguments."]
    lines = [f"usage: {usage}", "", about, "", "commands:", *_columns(rows), "", *footer]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _columns(rows: list[tuple[str, str]]) -> list[str]:
    width = max(len(name) for name, _ in rows)
    return [f"  {name:<{width}}  {text}" for name, text in rows]
