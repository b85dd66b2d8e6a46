"""The cluster test lab: three etcd members and minivisor hosts on this machine, all on loopback.

Each etcd member has its own data directory and ports; each host its own datastore folder and
``minivisor serve``. :func:`free_ports` picks unused loopback ports. Everything a lab starts is
ended by :meth:`Etcd.close` / :meth:`Host.close` (the fixtures call them, pass or fail), and its
folders are under the test's ``tmp_path``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vmm_guard import power_off_all, processes, runs_under

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
    """Three etcd members (``e0``, ``e1``, ``e2``) forming one cluster on loopback, or on ``address`` inside the
    network namespace ``netns``."""

    def __init__(self, folder: Path, members: int = 3, *, netns: str | None = None, address: str = "127.0.0.1") -> None:
        self.folder = folder
        self.netns, self.address = netns, address
        ports = free_ports(2 * members)
        self.client_ports, self.peer_ports = ports[:members], ports[members:]
        self.procs: dict[int, subprocess.Popen] = {}
        self.initial = ",".join(f"e{i}=http://{address}:{port}" for i, port in enumerate(self.peer_ports))

    @property
    def urls(self) -> list[str]:
        return [f"http://{self.address}:{port}" for port in self.client_ports]

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
        client = f"http://{self.address}:{self.client_ports[index]}"
        peer = f"http://{self.address}:{self.peer_ports[index]}"
        log = open(self.folder / f"e{index}.log", "ab")
        self.procs[index] = subprocess.Popen(
            [*in_netns(self.netns), ETCD, "--name", f"e{index}", "--data-dir", str(self.folder / f"e{index}"),
             "--listen-client-urls", client, "--advertise-client-urls", client, "--listen-peer-urls", peer,
             "--initial-advertise-peer-urls", peer, "--initial-cluster", self.initial,
             "--initial-cluster-state", "new", "--initial-cluster-token", f"lab-{self.peer_ports[0]}"],
            stdout=log, stderr=log, start_new_session=True)
        log.close()

    def healthy(self, index: int) -> bool:
        if self.netns is not None:  # not reachable from here: ask from inside
            done = subprocess.run([*in_netns(self.netns), "etcdctl", "--endpoints", self.urls[index], "endpoint",
                                   "health"], capture_output=True, timeout=20, env={**os.environ, "ETCDCTL_API": "3"})
            return done.returncode == 0
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
        subprocess.run([*in_netns(self.netns), "etcdctl", "--endpoints", self.endpoints, "put", key, value], check=True,
                       capture_output=True, timeout=20, env={**os.environ, "ETCDCTL_API": "3"})

    def logs(self) -> str:
        return "\n".join(path.read_text(errors="replace")[-1500:] for path in sorted(self.folder.glob("e*.log")))

    def close(self) -> None:
        for index in list(self.procs):
            self.kill(index)


class Host:
    """One minivisor host: its datastore folder and, once started, its service on loopback."""

    def __init__(self, name: str, folder: Path, netns: str | None = None) -> None:
        self.name = name
        self.netns = netns  # its network namespace, where its CLI and service run (None: this one)
        self.root = folder / "datastore"
        self.log_path = folder / "service.log"
        self.proc: subprocess.Popen | None = None

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """``minivisor -d ROOT ARGS`` (through the service when it runs, as a user's CLI would)."""
        return subprocess.run([*in_netns(self.netns), sys.executable, "-m", "minivisor", "-d", str(self.root), *args],
                              capture_output=True, text=True, timeout=timeout, env=_cli_env())

    def popen(self, *args: str) -> subprocess.Popen:
        """``minivisor -d ROOT ARGS`` started, not waited for (its stderr a pipe, as text)."""
        return subprocess.Popen([*in_netns(self.netns), sys.executable, "-m", "minivisor", "-d", str(self.root), *args],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_cli_env())

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
        self.proc = subprocess.Popen([*in_netns(self.netns), sys.executable, "-m", "minivisor", "-d", str(self.root),
                                      "serve", "--listen",
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


@contextmanager
def two_hosts(folder: Path) -> Iterator[tuple[Etcd, Host, Host]]:
    """Three etcd members on loopback and hosts ``a`` and ``b`` (not yet in a cluster) in ``folder``, for a module's
    lab that its tests share; every process ended and ``folder`` removed at the end, pass or fail."""
    (folder / "etcd").mkdir()
    etcd = Etcd(folder / "etcd")
    made: list[Host] = []
    try:
        etcd.start()
        for name in ("a", "b"):
            (folder / f"host-{name}").mkdir()
            made.append(Host(name, folder / f"host-{name}"))
        yield etcd, made[0], made[1]
    finally:
        trouble = [line for host in made for line in host.close()]
        etcd.close()
        shutil.rmtree(folder)
        assert not trouble, trouble


def _cli_env() -> dict[str, str]:
    """The environment of a user's CLI: through the host's service when it runs."""
    return {name: value for name, value in os.environ.items() if name != "MINIVISOR_DIRECT"}


def in_netns(netns: str | None) -> list[str]:
    """The command prefix that runs a program in the network namespace ``netns`` (none: here)."""
    return ["ip", "netns", "exec", netns] if netns else []


class Fabric:
    """Network namespaces of the test's own: ``fabric`` holds a bridge (10.98.0.1/24) and the etcd members;
    each host gets a namespace joined to the bridge by a veth pair (10.98.0.1N). Cutting a host's link
    partitions it from etcd. :meth:`close` stops every process in them and deletes them. Their names begin with
    ``prefix``."""

    SUBNET = "10.98.0"

    def __init__(self, prefix: str = "mvcl") -> None:
        self.tag = secrets.token_hex(3)
        self.fabric = f"{prefix}-{self.tag}"
        self.namespaces = [self.fabric]
        _ip("netns", "add", self.fabric)
        _ip("-n", self.fabric, "link", "set", "lo", "up")
        _ip("-n", self.fabric, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.fabric, "addr", "add", f"{self.SUBNET}.1/24", "dev", "br0")
        _ip("-n", self.fabric, "link", "set", "br0", "up")

    def host_namespace(self, index: int) -> str:
        """A namespace for the ``index``-th host (1, 2...), on the bridge as 10.98.0.1<index>."""
        netns = f"{self.fabric}-{index}"
        _ip("netns", "add", netns)
        self.namespaces.append(netns)
        _ip("-n", netns, "link", "add", "eth0", "type", "veth", "peer", "name", f"port{index}", "netns", self.fabric)
        _ip("-n", netns, "addr", "add", f"{self.SUBNET}.1{index}/24", "dev", "eth0")
        for name in ("lo", "eth0"):
            _ip("-n", netns, "link", "set", name, "up")
        _ip("-n", self.fabric, "link", "set", f"port{index}", "master", "br0", "up")
        return netns

    def cut(self, index: int) -> None:
        """The ``index``-th host's link down: it can reach nothing (etcd, the other hosts)."""
        _ip("-n", self.fabric, "link", "set", f"port{index}", "down")

    def mend(self, index: int) -> None:
        _ip("-n", self.fabric, "link", "set", f"port{index}", "up")

    def close(self) -> None:
        for netns in reversed(self.namespaces):
            _end_namespace(netns)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=20)


def _end_namespace(netns: str) -> None:
    """Stop every process in a namespace this lab made, then delete it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout.split() \
                and time.monotonic() < deadline:
            time.sleep(0.05)
    subprocess.run(["ip", "netns", "del", netns], capture_output=True)


def wait_for(what: str, check, timeout: float = 60.0, every: float = 0.2):
    """Poll ``check()`` until it returns something true; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(every)
    return result


def qemus_under(folder: Path) -> list[int]:
    """The pids of the QEMU processes whose command line names a file under ``folder`` (a host's VMMs)."""
    return list(processes(runs_under(folder, b"qemu-system")))


def live_hosts(status: dict) -> set[str]:
    return {host["name"] for host in status["hosts"] if host["live"]}
