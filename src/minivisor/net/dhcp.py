"""DHCP (and DNS) on a network: one dnsmasq per network, bound to its bridge alone.

Reservations (MAC -> address) live in a hosts file that dnsmasq re-reads on
SIGHUP, so a new reservation never restarts it. dnsmasq drops to ``nobody``
after start, so its pid file and hosts file live in a folder it can read
(:func:`minivisor.dirs.network_runtime_root`). Its leases are there too, not in
the datastore: dnsmasq opens them as root, and a datastore folder may belong to a
user who could plant a link there to a file of root's. They last until the
network is deleted or the host restarts (when every lease has ended anyway).
A dnsmasq is minivisor's if its command line names the network's config file.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import time
from pathlib import Path

from .. import dirs, procfs
from ..digest import sha256
from ..errors import NetworkError
from ..files import write_atomic
from ..records import Record
from ..text import is_number
from .addressing import dynamic_range, host_interface
from .host import run
from .names import check_interface_name, checked_mac

__all__ = ["DhcpFiles", "dhcp_files", "config_text", "hosts_text", "start", "stop", "reload", "running_pid",
           "leases", "LEASE_TIME"]

LEASE_TIME = "1h"


class DhcpFiles(Record, frozen=True):
    """The files of one network's dnsmasq."""

    runtime: Path  # root's, readable by nobody: config, hosts file, pid file, leases

    @property
    def leases(self) -> Path:
        return self.runtime / "leases"

    @property
    def config(self) -> Path:
        return self.runtime / "dnsmasq.conf"

    @property
    def hosts(self) -> Path:
        return self.runtime / "hosts"

    @property
    def pid_file(self) -> Path:
        return self.runtime / "dnsmasq.pid"


def dhcp_files(datastore_meta: Path, network: str) -> DhcpFiles:
    """Where the dnsmasq of ``network`` of this datastore keeps its files (one folder per datastore and network)."""
    return DhcpFiles(dirs.network_runtime_root() / f"{_datastore_tag(datastore_meta)}-{network.lower()}")


def datastore_dhcp_files(datastore_meta: Path) -> list[DhcpFiles]:
    """The files of every network's dnsmasq of this datastore found on the host (also of one deleted by hand)."""
    return [DhcpFiles(folder) for folder in dirs.network_runtime_root().glob(f"{_datastore_tag(datastore_meta)}-*")]


def _datastore_tag(datastore_meta: Path) -> str:
    return sha256(os.path.realpath(datastore_meta).encode()).hexdigest()[:12]


def config_text(files: DhcpFiles, bridge: str, subnet: ipaddress.IPv4Network, *, router: bool) -> str:
    """dnsmasq's configuration: DHCP and DNS on ``bridge`` only; a gateway only if the network routes out.

    Root's dnsmasq runs what this file says (a ``dhcp-script`` line would run a program): the bridge's name,
    read from the catalog, must be an interface name, nothing that could end the line."""
    check_interface_name(bridge)
    gateway = host_interface(subnet).ip
    start, end = dynamic_range(subnet)
    lines = [
        "# minivisor: written at every start of this network's dnsmasq; changes here are lost",
        f"interface={bridge}", "bind-interfaces", "except-interface=lo", f"listen-address={gateway}",
        "strict-order", "domain-needed", "bogus-priv", "user=nobody", "group=nogroup",
        f"pid-file={files.pid_file}", f"dhcp-leasefile={files.leases}", f"dhcp-hostsfile={files.hosts}",
        f"dhcp-range={start},{end},{subnet.netmask},{LEASE_TIME}", "dhcp-authoritative", "dhcp-no-override",
        f"dhcp-option=option:dns-server,{gateway}",
        f"dhcp-option=option:router,{gateway}" if router else "dhcp-option=option:router",
    ]
    if not router:
        lines.append("no-resolv")  # an isolated network asks no DNS server outside it
    return "\n".join(lines) + "\n"


def hosts_text(reservations: list[tuple[str, str]]) -> str:
    """The hosts file: one ``MAC,ADDRESS`` line per reservation, each checked (they come from the catalog)."""
    return "".join(f"{_checked_mac(mac)},{ipaddress.IPv4Address(address)}\n" for mac, address in reservations)


def _checked_mac(text: str) -> str:
    return checked_mac(text, "the catalog reserves an address for",
                       hint="remove that NIC's reservation: minivisor vm nic VM NIC --ip ADDRESS sets a new one")


def running_pid(files: DhcpFiles) -> int | None:
    """The pid of the network's dnsmasq if it runs (its command line names our config), else None."""
    try:
        pid = int(files.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    cmdline = procfs.cmdline(pid) or []
    return pid if f"--conf-file={files.config}" in cmdline else None


def start(files: DhcpFiles, config: str, reservations: list[tuple[str, str]]) -> int:
    """Start the network's dnsmasq (it daemonizes once it serves); returns its pid."""
    try:
        files.runtime.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.chmod(files.runtime, 0o755)
        write_atomic(files.config, config.encode(), mode=0o644)
    except OSError as exc:
        raise _files_error(files, exc) from exc
    _write_hosts(files, reservations)
    run(["dnsmasq", f"--conf-file={files.config}"], "start dnsmasq")
    pid = running_pid(files)
    if pid is None:
        raise NetworkError(f"dnsmasq for {files.config.parent.name} exited as soon as it started",
                           hint="see the host's log (journalctl -t dnsmasq)")
    return pid


def reload(files: DhcpFiles, reservations: list[tuple[str, str]]) -> None:
    """Write the reservations and have dnsmasq re-read them (SIGHUP: no restart, leases kept)."""
    _write_hosts(files, reservations)
    pid = running_pid(files)
    if pid is not None:
        _signal(pid, signal.SIGHUP)


def stop(files: DhcpFiles) -> None:
    """Stop the network's dnsmasq (if it runs) and remove its files, leases included: the network is gone."""
    pid = running_pid(files)
    if pid is not None:
        _signal(pid, signal.SIGTERM)
        procfs.wait_gone(pid, 5.0)
    for path in (files.config, files.hosts, files.pid_file, files.leases):
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):  # no folder of ours: none of our files
            path.unlink()
    try:
        files.runtime.rmdir()
    except OSError:
        pass


def _write_hosts(files: DhcpFiles, reservations: list[tuple[str, str]]) -> None:
    try:
        write_atomic(files.hosts, hosts_text(reservations).encode(), mode=0o644)
    except OSError as exc:
        raise _files_error(files, exc) from exc


def _files_error(files: DhcpFiles, exc: OSError) -> NetworkError:
    return NetworkError(f"cannot write the files of dnsmasq in {files.runtime}: {exc.strerror}",
                        hint=f"run minivisor as root; if {files.runtime} is not a folder of root's, remove it")


def _signal(pid: int, signum: int) -> None:
    """Signal the network's dnsmasq; one that exited since it was found needs nothing more."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def leases(files: DhcpFiles) -> dict[str, str]:
    """MAC -> address of the leases dnsmasq has given and that have not expired."""
    found = {}
    now = time.time()
    try:
        lines = files.leases.read_text(errors="replace").splitlines()
    except OSError:
        return found
    for line in lines:
        fields = line.split()
        if len(fields) >= 3 and is_number(fields[0]) and (int(fields[0]) == 0 or int(fields[0]) > now):
            found[fields[1].lower()] = fields[2]
    return found
