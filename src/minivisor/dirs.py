"""Where minivisor keeps things on the host: the default datastore, and what lives outside any datastore."""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["default_datastore", "cache_dir", "runtime_root", "network_runtime_root", "helper_command"]


def default_datastore() -> Path:
    """The datastore when none is named: ``MINIVISOR_DATASTORE`` or ``./datastore``."""
    return Path(os.environ.get("MINIVISOR_DATASTORE") or "datastore")


def cache_dir() -> Path:
    """The per-user cache (built images, the accelerator probe result).

    ``MINIVISOR_CACHE`` overrides it; otherwise ``$XDG_CACHE_HOME/minivisor``.
    """
    if override := os.environ.get("MINIVISOR_CACHE"):
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "minivisor"


def runtime_root() -> Path:
    """Where VMM control sockets live: short paths, owner-only.

    UNIX socket paths are limited to 107 bytes, so sockets cannot live under a
    deep datastore path; they go to ``/run/minivisor`` (root) or the user's
    runtime directory.
    """
    if override := os.environ.get("MINIVISOR_RUNTIME_DIR"):
        return Path(override)
    if os.geteuid() == 0:
        return Path("/run/minivisor")
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/minivisor-{os.getuid()}"
    return Path(base) / "minivisor"


def network_runtime_root() -> Path:
    """Where each network's dnsmasq keeps its pid file and leases and reads its reservations (root only).

    Apart from :func:`runtime_root` (0700): dnsmasq drops to ``nobody`` and re-reads its hosts file after that.
    """
    return Path("/run/minivisor-net")


def helper_command(module: str) -> list[str]:
    """The command line that runs ``module``'s ``main()`` from this very minivisor with this Python, for a small
    helper process (the console relay, a confined qemu-img): without ``site`` (-S, its imports cost milliseconds
    of every start) or the current folder (-P), and from ``-c`` rather than ``-m``, which would load runpy."""
    package_parent = str(Path(__file__).resolve().parent.parent)
    return [sys.executable, "-S", "-P", "-c",
            f"import sys; sys.path.insert(0, {package_parent!r}); from {module} import main; main()"]
