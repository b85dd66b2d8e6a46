"""Every QEMU a test starts ends with the test, pass or fail.

``power_off_all`` is what fixtures call at teardown: it stops the VMMs of a
datastore through the core API (killing one that will not stop). ``end_qemus_under``
is the safety net behind it: it finds QEMU processes (VMMs, qemu-io, qemu-img...)
whose command line names a file under a test's temporary folder, kills them
and says which they were, so the test that left them fails loudly instead of
leaving a QEMU running on the machine.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path


def power_off_all(root: Path) -> list[str]:
    """Stop every running VMM of the datastore at ``root``; returns the ones that had to be killed, and why."""
    from minivisor import Hypervisor

    if not (root / ".minivisor").is_dir():
        return []
    hv = Hypervisor(root)
    trouble = []
    for vm in hv.list_vms():
        if vm.pid is None:
            continue
        try:
            hv.stop_vm(vm.name, hard=True)
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, the VMM must not outlive the test
            trouble.append(f"{vm.name} (pid {vm.pid}) would not stop: {exc}")
            _kill([vm.pid])
    return trouble


def processes(matching: Callable[[list[bytes]], bool]) -> dict[int, list[bytes]]:
    """The host's processes whose command line (its arguments) ``matching`` accepts: pid -> arguments."""
    found = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        if matching(argv):
            found[int(entry)] = argv
    return found


def runs_under(folder: Path, program: bytes) -> Callable[[list[bytes]], bool]:
    """Whether a command line runs ``program`` (its name starts so) on a file under ``folder``."""
    needle = os.fsencode(os.path.realpath(folder)) + b"/"
    return lambda argv: os.path.basename(argv[0]).startswith(program) and any(needle in arg for arg in argv)


def end_qemus_under(folder: Path) -> list[str]:
    """Kill the QEMU processes whose command line names a file under ``folder``; returns what they were."""
    found = processes(runs_under(folder, b"qemu"))
    _kill(list(found))
    return [f"pid {pid}: {b' '.join(argv[:6]).decode(errors='replace')} ..." for pid, argv in found.items()]


def _kill(pids: list[int], wait: float = 10.0) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + wait
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"  # a zombie is dead, only not reaped
    except OSError:
        return False
