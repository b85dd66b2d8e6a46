"""VMs that boot the test guest, created the way a user would: the image's folder allowed first."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

from vmm_guard import processes


def create_guest(hv: Any, name: str, image: Path, **options: Any) -> Any:
    """``hv.create_vm(name, boot_disk=image, ...)`` after allowing the image's folder (the path rule asks it)."""
    hv.allow_path(image.parent)
    return hv.create_vm(name, boot_disk=image, **options)


def guest_address(hv: Any, vm: str, ifname: str = "eth0", timeout: float = 30) -> str:
    """The IPv4 address the guest's DHCP client put on ``ifname`` (it asks in the background after boot)."""
    deadline = time.monotonic() + timeout
    while True:
        output = hv.exec_in_vm(vm, f"ip -4 -o addr show dev {ifname}", timeout=30).output
        found = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", output)
        if found or time.monotonic() > deadline:
            assert found, f"{vm} has no address on {ifname}: {output!r}"
            return found.group(1)
        time.sleep(0.5)


def guest(hv: Any, vm: str, command: str, timeout: float = 30) -> tuple[str, int]:
    """A shell command's output and exit status in the guest."""
    result = hv.exec_in_vm(vm, command, timeout=timeout)
    return result.output, result.exit_code


def reaches(hv: Any, vm: str, address: str, count: int = 1) -> bool:
    """Whether the guest's ping of ``address`` gets an answer (``count`` tries, 2 s each)."""
    return guest(hv, vm, f"ping -c {count} -W 2 {address} >/dev/null")[1] == 0


def wait_for(what: str, check: Any, timeout: float = 30.0) -> Any:
    """What ``check()`` returns once it is true; fails saying ``what`` if it is not within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.5)
    return found


def console_relays(named: Path) -> list[int]:
    """The console relays whose command line names ``named`` (a VM's serial.log, or its console socket)."""
    return list(processes(lambda argv: any(b"minivisor.vmm.relay" in arg for arg in argv)
                          and os.fsencode(named) in argv))
