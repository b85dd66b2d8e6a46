"""What bench/peers.py and bench/density.py share: running commands, minivisor's CLI, the machine's load."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from minivisor import Hypervisor, procfs


class BenchError(Exception):
    """A step of a benchmark failed; the message says which and why."""


def run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a command to completion; BenchError with its stderr if it fails."""
    result = subprocess.run(argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise BenchError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()[-800:]}")
    return result


def timed(*steps: Callable[[], object]) -> float:
    """Seconds the steps take, one after another."""
    start = time.monotonic()
    for step in steps:
        step()
    return time.monotonic() - start


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def serving_itself(arg: str) -> str:
    """An argument of minivisor's QEMU command line for a QEMU run without a console relay: a socket QEMU
    connects to (the relay's event monitor, reconnecting) becomes one QEMU serves."""
    return re.sub(r",server=off(,reconnect=\d+)?", ",server=on,wait=off", arg)


class Minivisor:
    """minivisor's CLI (``python -m minivisor``) on one datastore, as a user runs it.

    Python may write and use its bytecode caches (a user's installation has them), and
    MINIVISOR_DATASTORE from the caller's shell does not leak in. ``direct``: the commands work on the
    datastore even when a ``minivisor serve`` runs there (MINIVISOR_DIRECT=1); otherwise they go through it.
    """

    def __init__(self, root: Path, *, direct: bool = False) -> None:
        self.root = root
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("PYTHONDONTWRITEBYTECODE", "MINIVISOR_DATASTORE", "MINIVISOR_DIRECT")}
        if direct:
            self.env["MINIVISOR_DIRECT"] = "1"

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "minivisor", "-d", str(self.root), *args]

    def __call__(self, *args: str) -> subprocess.CompletedProcess:
        return run(self.argv(*args), self.env)

    def try_(self, *args: str) -> subprocess.CompletedProcess:
        """Run a command whose failure the caller reads (exit code, stderr) instead of raising."""
        return subprocess.run(self.argv(*args), env=self.env, capture_output=True, text=True, stdin=subprocess.DEVNULL)

    def appliance(self) -> str:
        """The test guest's image (built once, cached), its folder allowed as a source of boot disks."""
        image = self("image", "build", "appliance").stdout.strip()
        self("datastore", "allow-path", str(Path(image).parent))
        return image

    def power_off_all(self) -> None:
        """Pull the plug of every VM of the datastore that runs, and stop the service its commands started on
        demand (the datastore is removed next)."""
        if not self.root.is_dir():
            return
        stop_on_demand_service(self.root)
        hv = Hypervisor(self.root)
        for vm in hv.list_vms():
            if vm.pid is not None:
                hv.stop_vm(vm.name, hard=True)


def start_service(mv: Minivisor, log: Path) -> subprocess.Popen:
    """``minivisor serve`` on a free loopback port, its messages into ``log``; returns once it serves.

    From then on every command of ``mv`` goes through it (the CLI finds it), unless MINIVISOR_DIRECT=1.
    """
    with open(log, "wb") as output:
        service = subprocess.Popen(mv.argv("serve", "--listen", "127.0.0.1:0", "--no-autostart"), env=mv.env,
                                   stdin=subprocess.DEVNULL, stdout=output, stderr=output)
    deadline = time.monotonic() + 60
    while "minivisor service for" not in log.read_text(errors="replace"):
        if service.poll() is not None or time.monotonic() > deadline:
            stop_service(service)
            raise BenchError(f"minivisor serve did not start: {log.read_text(errors='replace').strip()[-400:]}")
        time.sleep(0.1)
    return service


def stop_service(service: subprocess.Popen | None) -> None:
    if service is not None and service.poll() is None:
        service.terminate()
        service.wait(30)


def on_demand_service(root: Path) -> int | None:
    """The pid of the on-demand service a command started on ``root`` (minivisor.service.on_demand), if one serves."""
    try:
        record = json.loads((root / ".minivisor" / "service.json").read_text())
    except (OSError, ValueError):
        return None
    running = record.get("on_demand") is True and procfs.is_same_process(record["pid"], record["start_ticks"])
    return record["pid"] if running else None


def stop_on_demand_service(root: Path) -> None:
    """Stop the on-demand services the CLI started on ``root``, serving or still starting (its datastore is
    removed next)."""
    needle = os.fsencode(root)
    for pid in _on_demand_processes(needle):
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + 30
    while _on_demand_processes(needle) and time.monotonic() < deadline:
        time.sleep(0.1)


def _on_demand_processes(root: bytes) -> list[int]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--on-demand" in argv and root in argv:
            found.append(int(entry))
    return found
