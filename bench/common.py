"""What bench/peers.py and bench/density.py share: running commands, minivisor's CLI, the machine's load."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from minivisor import Hypervisor


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


class Minivisor:
    """minivisor's CLI (``python -m minivisor``) on one datastore, as a user runs it.

    Python may write and use its bytecode caches (a user's installation has them), and
    MINIVISOR_DATASTORE from the caller's shell does not leak in.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "MINIVISOR_DATASTORE")}

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
        """Pull the plug of every VM of the datastore that runs."""
        if not self.root.is_dir():
            return
        hv = Hypervisor(self.root)
        for vm in hv.list_vms():
            if vm.pid is not None:
                hv.stop_vm(vm.name, hard=True)
