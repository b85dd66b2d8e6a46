"""Whether this host can build networks from bridges and taps, and running the programs that do.

It needs root (bridges, taps, nftables are privileged), ``/dev/net/tun``, and
``ip``, ``nft`` and ``dnsmasq``. Without them, and wherever
``MINIVISOR_NETWORKING=user`` says so, NICs on ``nat`` get QEMU's user-mode NAT and
NICs on other networks a disconnected link, with a warning.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from ..errors import NetworkError
from ..records import Record
from ..text import clip

__all__ = ["Support", "support", "run", "PROGRAMS"]

PROGRAMS = {"ip": "iproute2", "nft": "nftables", "dnsmasq": "dnsmasq-base"}  # program -> Debian package
TIMEOUT = 30.0


class Support(Record, frozen=True):
    """Whether networks are built on the host, and why not when they are not."""

    available: bool
    reason: str


def support() -> Support:
    """Can minivisor build bridges, taps, dnsmasq and nftables rules here?"""
    if os.environ.get("MINIVISOR_NETWORKING", "").lower() == "user":
        return Support(False, "MINIVISOR_NETWORKING=user: NAT is QEMU's user-mode networking")
    if os.geteuid() != 0:
        return Support(False, "not root: NAT is QEMU's user-mode networking, other networks are disconnected")
    if not os.path.exists("/dev/net/tun"):
        return Support(False, "no /dev/net/tun: NAT is QEMU's user-mode networking")
    missing = [f"{program} ({package})" for program, package in PROGRAMS.items() if not _find(program)]
    if missing:
        return Support(False, f"missing {', '.join(missing)}: NAT is QEMU's user-mode networking")
    return Support(True, "bridges and taps (root, /dev/net/tun, ip, nft, dnsmasq)")


def _find(program: str) -> str | None:
    return shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")


def run(argv: list[str], what: str, *, stdin: bytes | None = None, check: bool = True) -> str:
    """Run a network program (argv, no shell); its output, or NetworkError naming ``what`` and its last error line."""
    program = _find(argv[0])
    if program is None:
        raise NetworkError(f"cannot {what}: {argv[0]} is not installed",
                           hint=f"install it: apt-get install {PROGRAMS.get(argv[0], argv[0])}")
    try:
        done = subprocess.run([program, *argv[1:]], input=stdin, capture_output=True, timeout=TIMEOUT,
                              stdin=None if stdin is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise NetworkError(f"cannot {what}: {argv[0]} did not answer in {TIMEOUT:.0f} s") from exc
    if check and done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        raise NetworkError(f"cannot {what}: {clip(lines[-1] if lines else f'{argv[0]} exited {done.returncode}')}",
                           hint="see the host's network configuration (ip link, nft list ruleset)")
    return done.stdout.decode(errors="replace")
