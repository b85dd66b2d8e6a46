"""**Live migration with local disks**: what the two VMMs do, over QMP (the sequence of libvirt's
``--copy-storage-all`` and Proxmox's ``--with-local-disks``).

- The destination's VMM, started with ``-incoming defer`` and kept paused, serves each disk's top node
  over NBD, writable (:func:`serve_disks`), and listens for the memory (:func:`listen`).
- The source's VMM mirrors each disk into its export (:func:`mirror`: an ``nbd`` client node, then
  ``blockdev-mirror`` with ``sync: full``). The mirror copies in the background until READY, then in
  ``write-blocking`` mode: each guest write reaches the destination before the guest sees it done, so
  the destination's disks hold every write up to the instant the source stops the guest.
- Once every mirror is READY, :func:`start_migration` sends the memory (``migrate``); when it completes
  the source's guest is stopped for good, the mirrors are cancelled (a READY mirror cancelled leaves a
  consistent target) and their target nodes dropped (:func:`end_mirrors`).

Both streams are TLS with a one-time pre-shared key that only the two hosts know (:func:`add_psk`: QEMU's
``tls-creds-psk``, named by the NBD server and client and by the migration's ``tls-creds``): nothing else on
the cluster network can read or write the disks while they are served, nor feed the destination a state.

Every function takes an open :class:`~minivisor.vmm.qmp.QmpSession` of the VMM it works on.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import QmpCommandError, QmpError
from .jobs import JOB_TIMEOUT, device_tops
from .qmp import QmpSession

__all__ = ["add_psk", "add_psk_object", "write_psk", "inet", "remove_psk_file", "drop_psk", "serve_disks",
           "stop_serving", "listen", "incoming_done", "mirror", "mirror_progress", "start_migration",
           "migration_status", "end_mirrors", "abort", "MirrorProgress"]

JOB_PREFIX = "migrate-"  # minivisor's mirror jobs of a migration
TARGET_PREFIX = "migrate-target-"  # the NBD client nodes the mirrors write to
POLL = 0.05
TLS_ID = "migrate-tls"  # the VMM's TLS credentials object of a migration
PSK_IDENTITY = "minivisor"
PSK_FILE = "keys.psk"  # QEMU's name for it, in the folder its tls-creds-psk object is given


def inet(address: str, port: int) -> dict[str, str]:
    return {"host": address, "port": str(port)}


def _uri(address: str, port: int) -> str:
    return f"tcp:[{address}]:{port}" if ":" in address else f"tcp:{address}:{port}"


# -- both --------------------------------------------------------------------------------
def add_psk(qmp: QmpSession, endpoint: str, folder: Path, key: str) -> None:
    """TLS credentials (``endpoint``: server or client) from the pre-shared ``key`` (hex); the migration's stream
    uses them from now on. The key goes through a file in the VMM's owner-only runtime ``folder``: a client reads
    it at once, and it is removed here; a server reads it at each handshake, so it stays until
    :func:`remove_psk_file` (or the VMM's end, which removes the folder)."""
    add_psk_object(qmp, endpoint, folder, key, TLS_ID)
    qmp.execute("migrate-set-parameters", {"tls-creds": TLS_ID})


def add_psk_object(qmp: QmpSession, endpoint: str, folder: Path, key: str, object_id: str) -> None:
    """The ``tls-creds-psk`` object ``object_id`` of :func:`add_psk` (also a replication round's NBD client's)."""
    psk = write_psk(folder, key)
    creds: dict[str, Any] = {"qom-type": "tls-creds-psk", "id": object_id, "endpoint": endpoint, "dir": str(folder)}
    if endpoint == "client":
        creds["username"] = PSK_IDENTITY
    try:
        qmp.execute("object-add", creds)
    finally:
        if endpoint == "client":
            psk.unlink(missing_ok=True)


def write_psk(folder: Path, key: str) -> Path:
    """The key file QEMU's ``tls-creds-psk`` reads in ``folder`` (owner-only), for the identity both ends use."""
    psk = folder / PSK_FILE
    fd = os.open(psk, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(f"{PSK_IDENTITY}:{key}\n")
    return psk


def remove_psk_file(folder: Path) -> None:
    """The server's key file gone, once no handshake is to come."""
    (folder / PSK_FILE).unlink(missing_ok=True)


def drop_psk(qmp: QmpSession) -> None:
    """The migration's TLS credentials gone from the VMM (once nothing uses them)."""
    _try(qmp, "migrate-set-parameters", {"tls-creds": ""})
    _try(qmp, "object-del", {"id": TLS_ID})


# -- the destination -------------------------------------------------------------------
def serve_disks(qmp: QmpSession, address: str, port: int, devices: list[str]) -> None:
    """Start the VMM's NBD server on ``address:port`` (TLS: :func:`add_psk` first) and export the top node of
    each of the ``devices``' disks (``scsi0-0``), writable, under the device's id; none: no server."""
    if not devices:
        return
    tops = device_tops(qmp)
    qmp.execute("nbd-server-start", {"addr": {"type": "inet", "data": inet(address, port)}, "tls-creds": TLS_ID})
    for device in sorted(devices):
        qmp.execute("block-export-add", {"type": "nbd", "id": f"export-{device}", "node-name": tops[device],
                                         "name": device, "writable": True})


def stop_serving(qmp: QmpSession) -> None:
    """Stop the NBD server and its exports, if any (before the guest runs: nobody else writes its disks then)."""
    if any(export["type"] == "nbd" for export in qmp.execute("query-block-exports")):
        qmp.execute("nbd-server-stop")
    drop_psk(qmp)


def listen(qmp: QmpSession, address: str, port: int) -> None:
    """Wait for the memory and device state on ``address:port``."""
    qmp.execute("migrate-set-capabilities", {"capabilities": [{"capability": "events", "state": True}]})
    qmp.execute("migrate-incoming", {"uri": _uri(address, port)})


def incoming_done(qmp: QmpSession) -> bool:
    """Whether the whole state arrived (the VMM then waits, paused, to be told to run); QmpError if it failed."""
    status = qmp.execute("query-migrate").get("status")
    if status in ("failed", "cancelled"):
        raise QmpError("the incoming migration failed", hint="see the VM's vmm.log")
    return status == "completed"


# -- the source ------------------------------------------------------------------------
@dataclass(frozen=True)
class MirrorProgress:
    copied: int  # bytes
    total: int
    ready: bool  # every mirror is in sync (writes now reach both sides)


def mirror(qmp: QmpSession, address: str, port: int, devices: list[str]) -> None:
    """Mirror the ``devices``' disks into the destination's exports of the same device ids (the same specfile
    gives the destination the same devices), over TLS (:func:`add_psk` first)."""
    tops = device_tops(qmp)
    for device in sorted(devices):
        qmp.execute("blockdev-add", {"driver": "nbd", "node-name": TARGET_PREFIX + device,
                                     "server": {"type": "inet", **inet(address, port)}, "export": device,
                                     "tls-creds": TLS_ID})
        qmp.execute("blockdev-mirror", {"job-id": JOB_PREFIX + device, "device": tops[device],
                                        "target": TARGET_PREFIX + device, "sync": "full",
                                        "copy-mode": "write-blocking", "auto-dismiss": False})


def mirror_progress(qmp: QmpSession, devices: list[str]) -> MirrorProgress:
    """How far the mirrors of the ``devices`` are (none: in sync at once); QmpError if one of them failed."""
    if not devices:
        return MirrorProgress(0, 0, True)
    jobs = [job for job in qmp.execute("query-block-jobs") if job["device"].startswith(JOB_PREFIX)]
    for job in jobs:
        if job.get("status") == "concluded" or job.get("error"):
            raise QmpError(f"the mirror of disk {job['device'][len(JOB_PREFIX):]} to the destination failed: "
                           f"{job.get('error', 'it ended early')}", hint="see the VM's vmm.log")
    if not jobs:
        raise QmpError("the mirrors of the VM's disks are gone", hint="see the VM's vmm.log")
    return MirrorProgress(sum(job["offset"] for job in jobs), sum(job["len"] for job in jobs),
                          all(job.get("ready") for job in jobs))


def start_migration(qmp: QmpSession, address: str, port: int) -> None:
    """Send the memory to ``address:port``. With ``auto-converge`` (vMotion's "stun during page send"): a guest
    that dirties its memory faster than it is sent has its vCPUs slowed until the rest fits in the allowed
    downtime, instead of the migration never ending (a 512 MiB guest rewriting a quarter of its memory did not
    finish in 4 minutes without it)."""
    qmp.execute("migrate-set-capabilities", {"capabilities": [{"capability": "events", "state": True},
                                                              {"capability": "auto-converge", "state": True}]})
    qmp.execute("migrate", {"uri": _uri(address, port)})


def migration_status(qmp: QmpSession) -> dict[str, Any]:
    """``query-migrate``: status, ram (transferred, total), and once completed downtime and total-time (ms)."""
    info = qmp.execute("query-migrate")
    if info.get("status") in ("failed", "cancelled"):
        raise QmpError(f"the migration of the memory failed: {info.get('error-desc', info.get('status'))}",
                       hint="see the VM's vmm.log")
    return info


def end_mirrors(qmp: QmpSession, *, force: bool = False) -> None:
    """Cancel every mirror of the migration and drop its target node. After the memory is sent (the guest
    stopped), a READY mirror cancelled leaves its target a consistent copy; ``force`` abandons unfinished ones."""
    for job in qmp.execute("query-block-jobs"):
        if job["device"].startswith(JOB_PREFIX) and job.get("status") != "concluded":
            _try(qmp, "block-job-cancel", {"device": job["device"], "force": force})
    deadline = time.monotonic() + JOB_TIMEOUT
    while True:
        jobs = [job for job in qmp.execute("query-jobs") if job["id"].startswith(JOB_PREFIX)]
        for job in jobs:
            if job["status"] == "concluded":
                qmp.execute("job-dismiss", {"id": job["id"]})
        if all(job["status"] == "concluded" for job in jobs):
            break
        if time.monotonic() > deadline:
            raise QmpError("the mirrors of the migration did not end in time", hint="see the VM's vmm.log")
        time.sleep(POLL)
    for node in qmp.execute("query-named-block-nodes", {"flat": True}):
        if node["node-name"].startswith(TARGET_PREFIX):
            _try(qmp, "blockdev-del", {"node-name": node["node-name"]})


def abort(qmp: QmpSession) -> None:
    """Undo a migration that did not complete: the memory's transfer cancelled, the mirrors abandoned; the
    guest runs on (QEMU resumes a source whose migration failed; one stopped after it completed is resumed)."""
    if qmp.execute("query-migrate").get("status") in ("setup", "active", "pre-switchover", "device"):
        _try(qmp, "migrate_cancel")
        deadline = time.monotonic() + 30
        while qmp.execute("query-migrate").get("status") not in ("cancelled", "failed", "completed") \
                and time.monotonic() < deadline:
            time.sleep(POLL)
    end_mirrors(qmp, force=True)
    drop_psk(qmp)
    if qmp.execute("query-status")["status"] == "postmigrate":
        qmp.execute("cont")


def _try(qmp: QmpSession, command: str, arguments: dict[str, Any] | None = None) -> None:
    """A command that may find nothing left to do (the job or node already went)."""
    try:
        qmp.execute(command, arguments)
    except QmpCommandError:
        pass
