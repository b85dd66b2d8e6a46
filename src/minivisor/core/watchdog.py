"""The **watchdog process** of a cluster member: it fences the host's VMMs when the service stops renewing the
host's lease, whatever became of the service (stopped, killed, crashed): Proxmox's watchdog-mux, which resets a
node whose HA manager stops feeding it, does the same job.

The service starts it (:func:`ensure_running`) once it holds a lease; one runs per datastore (its lock), detached
(no zombie of the service, and it survives it). It reads the service's heartbeat (:mod:`minivisor.cluster.heartbeat`)
every :data:`LOOK` seconds; once the last renewal is older than :func:`~minivisor.cluster.heartbeat.fence_after`,
it kills every VMM of the host (and any that appears, until the heartbeats come back: a new service took the lease
over, or took a new one). It ends when the heartbeat file is removed (its service stopped with no VM running) or
the datastore's cluster configuration is (the host left the cluster), or the datastore is gone.
Run as ``python -m minivisor.core.watchdog DATASTORE``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from ..cluster import config as cluster_config
from ..cluster import heartbeat
from ..locks import try_lock

__all__ = ["ensure_running", "main", "LOCK_FILE", "LOG_FILE"]

LOCK_FILE, LOG_FILE = "cluster-watchdog.lock", "cluster-watchdog.log"  # in the datastore's .minivisor folder
LOOK = 0.2  # seconds between two looks at the heartbeat

log = logging.getLogger("minivisor.cluster")


def ensure_running(root: Path, meta: Path) -> None:
    """Start the datastore's watchdog process unless one runs (its lock is held)."""
    probe = try_lock(meta / LOCK_FILE)
    if probe is None:
        return
    os.close(probe)  # a race with another start is harmless: the second watchdog finds the lock held and ends
    with open(meta / LOG_FILE, "ab") as output:
        first = subprocess.Popen([sys.executable, "-m", "minivisor.core.watchdog", str(root)],
                                 stdin=subprocess.DEVNULL, stdout=output, stderr=output, start_new_session=True)
    first.wait(timeout=30)  # it exits once its detached child holds the lock


def main(argv: list[str]) -> int:
    root = Path(argv[0])
    meta = root / ".minivisor"
    lock = try_lock(meta / LOCK_FILE)
    if lock is None:
        return 0  # one runs already
    if os.fork():  # detached: the service waits for this first process only
        return 0
    logging.basicConfig(format="%(asctime)s minivisor watchdog: %(message)s", level=logging.INFO)
    watch(root, meta)
    return 0


def watch(root: Path, meta: Path) -> None:
    """Fence the host's VMMs whenever the heartbeat is late, until there is nothing to guard."""
    from .clustering import ClusterHost
    from .hypervisor import Hypervisor

    hv = Hypervisor(root)  # now, while the datastore is there (opening one that is gone would make it again)
    host = ClusterHost(lambda: hv)
    while cluster_config.exists(meta) and (beat := heartbeat.read(meta)) is not None:
        late = time.monotonic() - beat.renewed
        if late > heartbeat.fence_after(beat.ttl):
            try:
                names = list(host.running().values())
                if names:
                    log.warning("the service last renewed the lease %.1f s ago (TTL %d s): killing %d VM(s)", late,
                                beat.ttl, len(names))
                    host.fence(names, f"fenced by the watchdog: the lease was last renewed {late:.1f} s before "
                                      f"(TTL {beat.ttl} s) and the service renews it no more")
            except Exception:  # noqa: BLE001 - a failure to list (a busy catalog) is no reason to stop guarding
                log.exception("fencing failed; trying again")
        time.sleep(LOOK)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
