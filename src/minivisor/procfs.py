"""What ``/proc`` says about a process: whether it is still the one we knew, its parent, its memory.

A pid alone names nothing for long (pids are reused), so a process is known by
its pid *and* its start time (``/proc/<pid>/stat`` field 22, in clock ticks).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ProcStat", "read_stat", "start_ticks", "cmdline", "rss_bytes", "own_umask", "CLOCK_TICKS"]

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` minivisor uses."""

    state: str  # R, S, D, T (stopped), Z (zombie), X (dead)...
    ppid: int
    cpu_ticks: int  # user + system time
    threads: int
    start_ticks: int

    @property
    def alive(self) -> bool:
        """Neither a zombie nor dead: the process can still run."""
        return self.state not in ("Z", "X")


def read_stat(pid: int) -> ProcStat | None:
    """The process's stat line, or None if there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    return ProcStat(fields[0], int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[17]), int(fields[19]))


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks, or None if it is gone (or a zombie)."""
    stat = read_stat(pid)
    return stat.start_ticks if stat is not None and stat.alive else None


def cmdline(pid: int) -> list[str] | None:
    """The process's arguments, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [arg.decode(errors="surrogateescape") for arg in raw.split(b"\0")[:-1]]


def rss_bytes(pid: int) -> int | None:
    """The process's resident memory, or None if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return int(found[1]) * 1024 if found else 0


def own_umask() -> int:
    """This process's umask, read without changing it (os.umask is not thread-safe)."""
    try:
        status = Path("/proc/self/status").read_text(encoding="ascii", errors="replace")
        return int(re.search(r"^Umask:\s*([0-7]+)", status, re.M)[1], 8)  # type: ignore[index]
    except (OSError, TypeError):  # no /proc, or a kernel without the field
        return 0o077  # unknown: err on the private side
