"""What ``/proc`` says about a process (whether it is still the one we knew, its parent, its memory and
I/O) and about the host (its memory and CPU time). The one module that parses ``/proc``.

A pid alone names nothing for long (pids are reused), so a process is known by
its pid *and* its start time (``/proc/<pid>/stat`` field 22, in clock ticks).

Without dataclasses or pathlib (whose imports cost more than the reads): the client checks
a service's pid here on every CLI command that goes through one.
"""

from __future__ import annotations

import os
import time
from collections import namedtuple
from collections.abc import Iterable, Iterator

__all__ = ["ProcStat", "read_stat", "start_ticks", "is_same_process", "cmdline", "comm", "all_pids", "mentioning", "holders_of", "wait_gone",
           "rss_bytes", "io_bytes", "meminfo_bytes", "host_cpu_seconds", "own_umask", "CLOCK_TICKS"]

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MEMINFO = "/proc/meminfo"  # a module variable, so that tests can point it at a file they write


class ProcStat(namedtuple("ProcStat", "state ppid cpu_ticks threads start_ticks")):
    """The fields of ``/proc/<pid>/stat`` minivisor uses: state (R, S, D, T stopped, Z zombie, X dead...),
    ppid, cpu_ticks (user + system time), threads, start_ticks."""

    __slots__ = ()

    @property
    def alive(self) -> bool:
        """Neither a zombie nor dead: the process can still run."""
        return self.state not in ("Z", "X")


def _read(path: str, mode: str = "r") -> str | bytes:
    with open(path, mode) as file:
        return file.read()


def read_stat(pid: int) -> ProcStat | None:
    """The process's stat line, or None if there is no such process."""
    try:
        text = _read(f"/proc/{pid}/stat")
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    return ProcStat(fields[0], int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[17]), int(fields[19]))


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks, or None if it is gone (or a zombie)."""
    stat = read_stat(pid)
    return stat.start_ticks if stat is not None and stat.alive else None


def is_same_process(pid: object, known_start_ticks: object) -> bool:
    """Whether ``pid`` is alive and is the process that started at ``known_start_ticks`` (not a reuse of its pid)."""
    return isinstance(pid, int) and pid > 0 and start_ticks(pid) == known_start_ticks


def cmdline(pid: int) -> list[str] | None:
    """The process's arguments, or None if it is gone."""
    try:
        raw = _read(f"/proc/{pid}/cmdline", "rb")
    except OSError:
        return None
    return [arg.decode(errors="surrogateescape") for arg in raw.split(b"\0")[:-1]]


def comm(pid: int) -> str | None:
    """The process's command name (its program's, 15 characters at most), or None if it is gone."""
    try:
        return _read(f"/proc/{pid}/comm").strip()
    except OSError:
        return None


def all_pids() -> Iterator[int]:
    """Every process this one may look at."""
    return (int(name) for name in os.listdir("/proc") if name.isdigit())


def mentioning(marker: str) -> list[int]:
    """The other processes whose arguments contain ``marker`` (a VM's QMP socket path names its VMM)."""
    own = os.getpid()
    return [pid for pid in all_pids() if pid != own and any(marker in arg for arg in cmdline(pid) or ())]


def holders_of(targets: set[str], pids: Iterable[int] | None = None) -> Iterator[int]:
    """The processes (of ``pids``, else of every one this process may look at) with a file descriptor open on one
    of ``targets``, as ``/proc/PID/fd`` links name them: a real path, or ``socket:[INODE]``."""
    for pid in all_pids() if pids is None else pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue  # gone, or not ours to look at
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in targets:
                    yield pid
                    break
            except OSError:
                continue


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait until the process has ended (or is a zombie), at most ``timeout`` seconds; whether it has."""
    deadline = time.monotonic() + timeout
    while start_ticks(pid) is not None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def rss_bytes(pid: int) -> int | None:
    """The process's resident memory, or None if it is gone."""
    try:
        status = _read(f"/proc/{pid}/status")
    except OSError:
        return None
    import re  # here: the client reads this module, and re (with enum) would cost each command ~3 ms

    found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return int(found[1]) * 1024 if found else 0


def io_bytes(pid: int) -> dict[str, int]:
    """The process's I/O counters (rchar, wchar: its read/write calls; read_bytes, write_bytes: storage), or {}."""
    try:
        lines = _read(f"/proc/{pid}/io").splitlines()
        counters = dict(line.split(": ", 1) for line in lines)
        return {key: int(counters[key]) for key in ("rchar", "wchar", "read_bytes", "write_bytes") if key in counters}
    except (OSError, ValueError):  # gone, or not ours to read
        return {}


def meminfo_bytes(*fields: str) -> dict[str, int]:
    """Host memory figures from ``/proc/meminfo`` (``MemTotal``, ``MemAvailable``...), in bytes; absent ones left out."""
    found: dict[str, int] = {}
    with open(MEMINFO) as meminfo:
        for line in meminfo:
            key, _, rest = line.partition(":")
            if key in fields:
                found[key] = int(rest.split()[0]) * 1024  # reported in KiB
    return found


def host_cpu_seconds() -> tuple[float, float]:
    """CPU time of the whole host since boot, all CPUs: (total, idle including I/O wait), in seconds."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    return sum(values) / CLOCK_TICKS, (values[3] + values[4]) / CLOCK_TICKS


def own_umask() -> int:
    """This process's umask, read without changing it (os.umask is not thread-safe)."""
    import re  # here, as in rss_bytes

    try:
        status = _read("/proc/self/status", "rb").decode("ascii", errors="replace")
        return int(re.search(r"^Umask:\s*([0-7]+)", status, re.M)[1], 8)  # type: ignore[index]
    except (OSError, TypeError):  # no /proc, or a kernel without the field
        return 0o077  # unknown: err on the private side
