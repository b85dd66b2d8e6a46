"""The cluster test lab: three etcd members and minivisor hosts on this machine, all on loopback.

Each etcd member has its own data directory and ports; each host its own datastore folder and
``minivisor serve``. :func:`free_ports` picks unused loopback ports. Everything a lab starts is
ended by :meth:`Etcd.close` / :meth:`Host.close` (the fixtures call them, pass or fail), and its
folders are under the test's ``tmp_path``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from vmm_guard import power_off_all

from minivisor.client import connect

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
START_WAIT = 30.0  # seconds a lab process gets to come up


def free_ports(count: int) -> list[int]:
    """``count`` TCP ports free on loopback now (bound then released: nothing else on this machine races for
    ports in this range the way a test would notice)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


class Etcd:
    """Three etcd members (``e0``, ``e1``, ``e2``) forming one cluster on loopback."""

    def __init__(self, folder: Path, members: int = 3) -> None:
        self.folder = folder
        ports = free_ports(2 * members)
        self.client_ports, self.peer_ports = ports[:members], ports[members:]
        self.procs: dict[int, subprocess.Popen] = {}
        self.initial = ",".join(f"e{i}=http://127.0.0.1:{port}" for i, port in enumerate(self.peer_ports))

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.client_ports]

    @property
    def endpoints(self) -> str:
        """What ``cluster init --etcd`` takes."""
        return ",".join(self.urls)

    def start(self) -> Etcd:
        for index in range(len(self.client_ports)):
            self.start_member(index)
        deadline = time.monotonic() + START_WAIT
        while not all(self.healthy(index) for index in self.procs):
            assert time.monotonic() < deadline, self.logs()
            time.sleep(0.1)
        return self

    def start_member(self, index: int) -> None:
        client, peer = self.client_ports[index], self.peer_ports[index]
        log = open(self.folder / f"e{index}.log", "ab")
        self.procs[index] = subprocess.Popen(
            [ETCD, "--name", f"e{index}", "--data-dir", str(self.folder / f"e{index}"),
             "--listen-client-urls", f"http://127.0.0.1:{client}", "--advertise-client-urls",
             f"http://127.0.0.1:{client}", "--listen-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}", "--initial-cluster", self.initial,
             "--initial-cluster-state", "new", "--initial-cluster-token", f"lab-{self.peer_ports[0]}"],
            stdout=log, stderr=log, start_new_session=True)
        log.close()

    def healthy(self, index: int) -> bool:
        try:
            with urllib.request.urlopen(f"{self.urls[index]}/health", timeout=1) as answer:
                return json.load(answer).get("health") == "true"
        except (OSError, ValueError):
            return False

    def kill(self, index: int) -> None:
        proc = self.procs.pop(index)
        proc.kill()
        proc.wait(timeout=10)

    def put_raw(self, key: str, value: str) -> None:
        """Write any bytes into etcd with etcdctl (what another program, or an attacker, could do)."""
        subprocess.run(["etcdctl", "--endpoints", self.endpoints, "put", key, value], check=True,
                       capture_output=True, timeout=20, env={**os.environ, "ETCDCTL_API": "3"})

    def logs(self) -> str:
        return "\n".join(path.read_text(errors="replace")[-1500:] for path in sorted(self.folder.glob("e*.log")))

    def close(self) -> None:
        for index in list(self.procs):
            self.kill(index)


class Host:
    """One minivisor host: its datastore folder and, once started, its service on loopback."""

    def __init__(self, name: str, folder: Path) -> None:
        self.name = name
        self.root = folder / "datastore"
        self.log_path = folder / "service.log"
        self.proc: subprocess.Popen | None = None

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """``minivisor -d ROOT ARGS`` (through the service when it runs, as a user's CLI would)."""
        env = {name: value for name, value in os.environ.items() if name != "MINIVISOR_DIRECT"}
        return subprocess.run([sys.executable, "-m", "minivisor", "-d", str(self.root), *args], capture_output=True,
                              text=True, timeout=timeout, env=env)

    def ok(self, *args: str) -> str:
        result = self.cli(*args)
        assert result.returncode == 0, f"{self.name}: minivisor {' '.join(args)}: {result.stderr}"
        return result.stdout

    def status(self) -> dict:
        return json.loads(self.ok("cluster", "status", "--json"))

    def status_when(self, what: str, predicate, timeout: float = 60.0) -> dict:
        """The cluster's status once ``predicate(status)`` holds (polled)."""
        found: list[dict] = []

        def check() -> bool:
            found[:] = [self.status()]
            return predicate(found[0])
        wait_for(what, check, timeout)
        return found[0]

    def serve(self) -> Host:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "minivisor", "-d", str(self.root), "serve", "--listen",
                                      "127.0.0.1:0", "--no-autostart"], stdout=log, stderr=log,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + START_WAIT
        while connect(self.root) is None:
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log_path.read_text()
            time.sleep(0.05)
        return self

    def stop_service(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
        self.proc = None

    def close(self) -> list[str]:
        """Stop the service and every VM of the host; returns the VMs that had to be killed."""
        try:
            self.stop_service()
        finally:
            trouble = power_off_all(self.root)
        return trouble


def wait_for(what: str, check, timeout: float = 60.0, every: float = 0.2):
    """Poll ``check()`` until it returns something true; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(every)
    return result


def qemus_under(folder: Path) -> list[int]:
    """The pids of the QEMU processes whose command line names a file under ``folder`` (a host's VMMs)."""
    needle = os.fsencode(os.path.realpath(folder)) + b"/"
    found = []
    for entry in os.listdir("/proc"):
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0") if entry.isdigit() else []
        except OSError:
            continue  # gone already
        if argv and os.path.basename(argv[0]).startswith(b"qemu-system") and any(needle in arg for arg in argv):
            found.append(int(entry))
    return found


def live_hosts(status: dict) -> set[str]:
    return {host["name"] for host in status["hosts"] if host["live"]}
