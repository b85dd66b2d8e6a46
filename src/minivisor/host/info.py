"""What ``minivisor host info`` shows: the host's facts and the accelerator VMs get."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..records import Record, as_dict
from .accel import AccelChoice, choose_accel
from .facts import available_memory_mib, find_qemu, find_qemu_img, host_cpus, host_memory_mib, qemu_version

__all__ = ["HostInfo", "host_info"]


class HostInfo(Record, frozen=True):
    """Everything ``minivisor host info`` shows."""

    cpus: int
    memory_mib: int
    available_mib: int
    kernel: str
    qemu: str
    qemu_version: str
    qemu_img: str
    accel: AccelChoice
    networking: str = ""  # how NICs reach networks here (bridges and taps, or QEMU's user-mode NAT), and why
    image_copies: str = ""  # whether qemu-img's copies are confined to the files minivisor checked, and why

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json`` (the accel entry includes its warning)."""
        data = as_dict(self)
        data["accel"]["warning"] = self.accel.warning
        return data


def host_info(cache_dir: Path) -> HostInfo:
    """Gather the host's facts; probes the accelerator if the cache has no answer."""
    qemu = find_qemu()
    return HostInfo(
        cpus=host_cpus(),
        memory_mib=host_memory_mib(),
        available_mib=available_memory_mib(),
        kernel=os.uname().release,
        qemu=qemu,
        qemu_version=qemu_version(qemu),
        qemu_img=find_qemu_img(),
        accel=choose_accel(cache_dir, qemu),
    )
