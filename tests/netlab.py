"""Network tests run minivisor inside network namespaces they create, and nowhere else (tests/net).

A :class:`Lab` is two namespaces: ``host`` (where minivisor's CLI runs, so its
bridges, taps, dnsmasq, nftables table and QEMUs live there) and ``up`` (the
outside world: a veth pair joins them, 10.99.0.1 on the host's side, 10.99.0.2
upstream). No traffic leaves them; both are deleted at the end, pass or fail,
after every process in them is stopped.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

HOST_ADDR, UP_ADDR = "10.99.0.1", "10.99.0.2"
CLONE_NEWNET = 0x40000000


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "network tests need root (network namespaces, bridges, nftables)"
    for program in ("ip", "nft", "dnsmasq"):
        if not (shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")):
            return f"network tests need {program} (apt-get install iproute2 nftables dnsmasq-base)"
    return None


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


@dataclass
class Lab:
    """A host namespace running minivisor on ``datastore``, and an upstream namespace beside it."""

    host: str
    up: str
    datastore: Path
    user_mode: bool = False  # minivisor runs with MINIVISOR_NETWORKING=user: NAT is QEMU's user-mode networking

    @property
    def env(self) -> dict[str, str]:
        """The environment minivisor runs with in the lab."""
        env = {k: v for k, v in os.environ.items() if k not in ("MINIVISOR_NETWORKING", "MINIVISOR_DIRECT")}
        return env | ({"MINIVISOR_NETWORKING": "user"} if self.user_mode else {})

    def mv(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        """``minivisor ARGS`` (the CLI, directly on the datastore) inside the host namespace."""
        env = self.env | {"MINIVISOR_DIRECT": "1"}
        done = subprocess.run(["ip", "netns", "exec", self.host, sys.executable, "-m", "minivisor",
                               "-d", str(self.datastore), *args], capture_output=True, text=True, env=env,
                              timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"minivisor {' '.join(args)} failed ({done.returncode}): {done.stderr}")
        return done

    def mv_json(self, *args: str):
        return json.loads(self.mv(*args, "--json").stdout)

    def appliance_vm(self, name: str, image: Path, network: str, model: str, *, start: bool = True) -> None:
        """A 96 MiB VM booting the appliance ``image``, one NIC of ``model`` on ``network``; started, and ready,
        unless not ``start``."""
        self.mv("vm", "create", name, "--memory", "96", "--boot-disk", str(image), "--network", network,
                "--nic", model)
        if start:
            self.mv("vm", "start", name, "--wait-ready")

    def api(self, method: str, *args: object):
        """``Hypervisor(datastore).METHOD(*ARGS)`` run inside the host namespace (where /sys shows its
        interfaces), its result as JSON."""
        code = ("import json, sys; from minivisor import Hypervisor; hv = Hypervisor(sys.argv[1]); "
                "print(json.dumps(getattr(hv, sys.argv[2])(*json.loads(sys.argv[3]))))")
        done = subprocess.run(["ip", "netns", "exec", self.host, sys.executable, "-c", code, str(self.datastore),
                               method, json.dumps(args)], capture_output=True, text=True, env=self.env, timeout=60)
        if done.returncode != 0:
            raise AssertionError(f"Hypervisor.{method}{args} failed: {done.stderr}")
        return json.loads(done.stdout)

    def serve(self, log: Path) -> subprocess.Popen:
        """``minivisor serve`` on the host namespace's loopback (ended with the lab, if not before)."""
        return subprocess.Popen(["ip", "netns", "exec", self.host, sys.executable, "-m", "minivisor", "-d",
                                 str(self.datastore), "serve", "--listen", "127.0.0.1:0"], env=self.env,
                                stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)

    @contextmanager
    def inside(self) -> Iterator[None]:
        """This thread in the host namespace: the sockets it opens meanwhile are the namespace's (a client of a
        service listening on its loopback). /sys stays the root namespace's: use :meth:`api` for that."""
        libc = ctypes.CDLL(None, use_errno=True)
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{self.host}", os.O_RDONLY)
        try:
            if libc.setns(target, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns into the lab's namespace")
            try:
                yield
            finally:
                if libc.setns(own, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns back to the test's own namespace")
        finally:
            os.close(own)
            os.close(target)

    def sh(self, command: str, *, ns: str | None = None, check: bool = True) -> str:
        """A shell command in the host namespace (or ``ns``)."""
        done = subprocess.run(["ip", "netns", "exec", ns or self.host, "sh", "-c", command], capture_output=True,
                              text=True, timeout=60)
        if check and done.returncode != 0:
            raise AssertionError(f"{command!r} failed ({done.returncode}): {done.stderr}")
        return done.stdout

    def links(self) -> list[str]:
        return [item["ifname"] for item in json.loads(self.sh("ip -j link show"))]

    def minivisor_leftovers(self) -> list[str]:
        """Bridges, taps, the nftables tables and dnsmasq processes of minivisor's in the host namespace."""
        found = [name for name in self.links() if name.startswith(("mvbr", "mvt"))]
        found += [f"nft {line}" for line in self.sh("nft list tables").splitlines() if "minivisor" in line]
        found += [f"dnsmasq (pid {pid})" for pid in _pids(self.host) if _comm(pid) == "dnsmasq"]
        return found


def _pids(ns: str) -> list[int]:
    done = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    return [int(p) for p in done.stdout.split()]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _end(ns: str) -> None:
    """Stop every process in a namespace we created (QEMUs, dnsmasq, servers), then delete it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _pids(ns)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while _pids(ns) and time.monotonic() < deadline:
            time.sleep(0.05)
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def make_lab(datastore: Path, *, user_mode: bool = False) -> Lab:
    """Two namespaces joined by a veth pair, loopback up in both (nothing is made in the root namespace)."""
    if why := _missing():
        pytest.skip(why)
    tag = secrets.token_hex(3)
    lab = Lab(f"mvtest-{tag}", f"mvtest-{tag}-up", datastore, user_mode)
    _ip("netns", "add", lab.host)
    _ip("netns", "add", lab.up)
    _ip("-n", lab.host, "link", "add", "up0", "type", "veth", "peer", "name", "up1", "netns", lab.up)
    for ns, ifname, address in ((lab.host, "up0", HOST_ADDR), (lab.up, "up1", UP_ADDR)):
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", ifname)
        _ip("-n", ns, "link", "set", ifname, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
    return lab


def end_lab(lab: Lab) -> None:
    _end(lab.host)
    _end(lab.up)
    # dnsmasq's folders outside the namespaces (a test that failed before deleting its networks leaves them)
    from minivisor.net.dhcp import datastore_dhcp_files

    for files in datastore_dhcp_files(lab.datastore / ".minivisor"):
        shutil.rmtree(files.runtime, ignore_errors=True)
