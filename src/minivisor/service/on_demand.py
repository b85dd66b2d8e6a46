"""The service a command starts for the commands after it, as libvirt's session daemon and VirtualBox's
VBoxSVC are started by their clients.

A command that finds no service running on its datastore does its work itself (the core, in its own
process: Python's imports of the core cost it ~20-30 ms) and, on its way, starts ``minivisor serve
--on-demand`` in the background; the commands after it find that service and only ask it (a client's
imports are a fraction). The on-demand service listens on a loopback port of its own choosing, with the
datastore's token like any other, powers on no autostart VMs (that is a host's service's part), never
joins a cluster (a member that went away on its own would look dead to the others, whose HA would take
its VMs over), and exits once nobody has asked it anything for :data:`IDLE_EXIT` seconds; running VMs
keep running, as when any service stops. ``minivisor serve`` by hand replaces it.

Not started where ``MINIVISOR_ON_DEMAND=off`` (or ``MINIVISOR_DIRECT``), for a datastore not yet made
(the command making it must not race a second process making it), or for a cluster member.

Light: every command that runs on its own looks here (the core's cluster check is loaded only then, when the
command loads the core anyway).
"""

from __future__ import annotations

import os
import sys

from ..locks import try_lock
from .discovery import LOCK_FILE

__all__ = ["IDLE_EXIT", "IDLE_ENV", "ENABLED_ENV", "wanted", "start", "idle_exit"]

IDLE_EXIT = 120.0  # seconds without a request before an on-demand service exits
IDLE_ENV = "MINIVISOR_ON_DEMAND_IDLE"  # another idle time, in seconds (tests)
ENABLED_ENV = "MINIVISOR_ON_DEMAND"  # "off": commands never start a service
CATALOG = ".minivisor/catalog.sqlite"  # the datastore exists once its catalog does


def wanted(root: str) -> bool:
    """Whether a command on the datastore at ``root``, finding no service, should start one: only the
    datastore's owner's command (root's command on a user's datastore would leave root's files and process
    there), and not if one is starting already (it holds the service lock before it has written its file)."""
    if os.environ.get(ENABLED_ENV, "").lower() in ("off", "0", "no", "false") or os.environ.get("MINIVISOR_DIRECT"):
        return False
    from ..core.clustering import in_cluster  # here: asked only by a command that loads the core anyway

    meta = os.path.join(root, ".minivisor")
    try:
        if os.stat(meta).st_uid != os.geteuid() or not os.path.exists(os.path.join(root, CATALOG)):
            return False
        fd = try_lock(os.path.join(root, LOCK_FILE))
    except OSError:  # no datastore yet, or one this user may only read: the command says what it can do
        return False
    if fd is None:
        return False
    os.close(fd)
    return not in_cluster(meta)


def start(root: str) -> None:
    """Start the on-demand service of ``root`` in the background and return at once; its output goes nowhere
    (a second one started meanwhile finds the service lock taken and exits). It runs in the datastore, not in
    the command's folder, which Python would otherwise search first for modules (``-P``: a ``uvicorn.py`` left
    in a shared folder must not be what the service imports) and which it would keep busy."""
    import subprocess  # here: a command through a service never starts one

    folder = os.path.abspath(root)
    try:
        subprocess.Popen([sys.executable, "-P", "-m", "minivisor", "--datastore", folder, "serve", "--on-demand"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True, close_fds=True, cwd=folder)
    except OSError:
        pass  # this command is done by itself anyway; the next one tries again


def idle_exit() -> float:
    """Seconds an on-demand service waits without a request before it exits."""
    text = os.environ.get(IDLE_ENV, "")
    try:
        return max(float(text), 0.5) if text else IDLE_EXIT
    except ValueError:
        return IDLE_EXIT

