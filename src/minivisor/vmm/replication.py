"""**A replication round's copy**, over QMP, and the target's NBD server (a ``qemu-storage-daemon``).

- The source's VMM (:func:`backup`): an ``nbd`` client node per disk (TLS with the round's one-time key), then one
  QMP ``transaction`` of a new persistent dirty bitmap per disk and a ``blockdev-backup`` per disk: ``sync:
  bitmap`` of the writes since the last good copy (``bitmap-mode: never``: the bitmap is left as it was), or
  ``sync: full``. The transaction makes the new bitmaps and the copies' point in time one instant across disks:
  every write after it is in the new bitmaps, every write before it in the copy.
- After the round, :func:`settle_bitmaps`: the target confirmed the copy, so the old bitmaps go (the new ones
  track the writes since); or it did not, so the new bitmaps are merged into the old ones and removed, and the
  next round copies every write of this one again. No write is ever missing from the next round.
- The target serves each disk's new top (an overlay on its replica, or a new file) with
  :func:`serve` (``qemu-storage-daemon``, daemonized once its NBD server listens).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import HostError, QmpError
from .jobs import JOB_TIMEOUT
from .migration import add_psk_object, inet, write_psk
from .qmp import QmpSession

__all__ = ["backup", "settle_bitmaps", "has_bitmap", "serve", "open_disks", "BITMAP_PREFIX", "Served"]

BITMAP_PREFIX = "minivisor-replica-"
TLS_ID = "replica-tls"
JOB_PREFIX = "replica-"
TARGET_PREFIX = "replica-target-"
POLL = 0.05
START_WAIT = 30.0  # seconds the target's storage daemon gets to listen


def has_bitmap(qmp: QmpSession, tops: dict[str, str], name: str) -> bool:
    """Whether every disk's top node (``tops``: device -> node) has the dirty bitmap ``name``."""
    if not name:
        return False
    nodes = {node["node-name"]: node for node in qmp.execute("query-named-block-nodes", {"flat": True})}
    return all(any(bitmap["name"] == name and not bitmap.get("inconsistent")  # a VMM killed: its writes unknown
                   for bitmap in nodes.get(node, {}).get("dirty-bitmaps", [])) for node in tops.values())


def backup(qmp: QmpSession, folder: Path, key: str, target: tuple[str, int], tops: dict[str, str],
           bitmaps: tuple[str, str], going_on: Callable[[], bool]) -> int:
    """Copy each disk (``tops``: device -> its top node) into the target's export of the same device id; ``bitmaps``:
    the bitmap of the writes since the last copy ("" for a full copy) and the new one to add. Returns the bytes
    copied; QmpError if a copy failed, or ``going_on()`` turned False (the target is gone: its copies are
    cancelled); the new bitmaps are left: :func:`settle_bitmaps` decides their fate."""
    old, new = bitmaps
    add_psk_object(qmp, "client", folder, key, TLS_ID)
    try:
        actions: list[dict[str, Any]] = []
        for device, node in sorted(tops.items()):
            qmp.execute("blockdev-add", {"driver": "nbd", "node-name": TARGET_PREFIX + device, "export": device,
                                         "server": {"type": "inet", **inet(*target)}, "tls-creds": TLS_ID})
            copy = {"job-id": JOB_PREFIX + device, "device": node, "target": TARGET_PREFIX + device,
                    "sync": "bitmap" if old else "full", "auto-dismiss": False}
            if old:
                copy.update({"bitmap": old, "bitmap-mode": "never"})
            actions += [{"type": "block-dirty-bitmap-add", "data": {"node": node, "name": new, "persistent": True}},
                        {"type": "blockdev-backup", "data": copy}]
        qmp.execute("transaction", {"actions": actions})
        return _wait_jobs(qmp, going_on)
    finally:
        _drop_targets(qmp)


def _wait_jobs(qmp: QmpSession, going_on: Callable[[], bool]) -> int:
    copied, errors = 0, []
    while True:
        jobs = [job for job in qmp.execute("query-jobs") if job["id"].startswith(JOB_PREFIX)]
        if all(job["status"] == "concluded" for job in jobs):
            break
        if not going_on():
            raise QmpError("the copy of the disks to the replica was given up", hint="see the round's error")
        time.sleep(POLL)
    for job in jobs:
        copied += job.get("current-progress", 0)
        if job.get("error"):
            errors.append(f"{job['id'][len(JOB_PREFIX):]}: {job['error']}")
        qmp.execute("job-dismiss", {"id": job["id"]})
    if errors:
        raise QmpError(f"the copy of the disks to the replica failed ({'; '.join(errors)})",
                       hint="see the VM's vmm.log")
    return copied


def _drop_targets(qmp: QmpSession) -> None:
    """Every job of the round cancelled, its NBD nodes and TLS object gone (what an early failure leaves)."""
    deadline = time.monotonic() + JOB_TIMEOUT
    for job in qmp.execute("query-jobs"):
        if job["id"].startswith(JOB_PREFIX) and job["status"] != "concluded":
            _try(qmp, "job-cancel", {"id": job["id"]})
    while any(job["id"].startswith(JOB_PREFIX) for job in qmp.execute("query-jobs")) and time.monotonic() < deadline:
        for job in qmp.execute("query-jobs"):
            if job["id"].startswith(JOB_PREFIX) and job["status"] == "concluded":
                _try(qmp, "job-dismiss", {"id": job["id"]})
        time.sleep(POLL)
    for node in qmp.execute("query-named-block-nodes", {"flat": True}):
        if node["node-name"].startswith(TARGET_PREFIX):
            _try(qmp, "blockdev-del", {"node-name": node["node-name"]})
    _try(qmp, "object-del", {"id": TLS_ID})


def settle_bitmaps(qmp: QmpSession, tops: dict[str, str], old: str, new: str, confirmed: bool) -> None:
    """After a round: ``confirmed``, the old bitmaps go (the new ones are current); else the new bitmaps' writes go
    back into the old ones and the new ones go (a failed full copy: no old bitmap, the next round is full again).
    Other bitmaps of minivisor's (left by a round cut short) go too."""
    for node in tops.values():
        names = {b["name"] for b in _node(qmp, node).get("dirty-bitmaps", []) if b["name"].startswith(BITMAP_PREFIX)}
        keep = new if confirmed else old
        if not confirmed and old in names and new in names:
            qmp.execute("block-dirty-bitmap-merge", {"node": node, "target": old, "bitmaps": [new]})
        for name in names - {keep}:
            _try(qmp, "block-dirty-bitmap-remove", {"node": node, "name": name})


def _node(qmp: QmpSession, name: str) -> dict[str, Any]:
    return next((node for node in qmp.execute("query-named-block-nodes", {"flat": True})
                 if node["node-name"] == name), {})


def _try(qmp: QmpSession, command: str, arguments: dict[str, Any]) -> None:
    from ..errors import QmpCommandError

    try:
        qmp.execute(command, arguments)
    except QmpCommandError:
        pass


@contextmanager
def open_disks(folder: Path, nodes: dict[str, dict[str, Any]]) -> Iterator[tuple[Path, dict[str, str]]]:
    """A powered-off VM's disks opened by a ``qemu-storage-daemon`` with a QMP monitor in ``folder`` (its runtime
    folder; the caller holds the VM lock): its socket, and each device's top node (``nodes``: device -> the chain's
    node description). Ended (SIGTERM: it stores the persistent bitmaps and flushes) when the block ends."""
    sock = folder / "replica-qmp.sock"  # the runtime folder: /run/minivisor/<hex>, no comma (no JSON --chardev in 7.2)
    argv = ["qemu-storage-daemon"]
    tops = {device: f"top-{device}" for device in nodes}
    for device, node in sorted(nodes.items()):
        argv += ["--blockdev", json.dumps({**node, "node-name": tops[device]})]
    argv += ["--chardev", f"socket,id=qmp,path={sock},server=on,wait=off", "--monitor", "chardev=qmp"]
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except OSError as exc:
        raise HostError(f"qemu-storage-daemon did not start: {exc.strerror}",
                        hint="apt-get install qemu-system-common") from exc
    try:
        _await_monitor(proc, sock)
        yield sock, tops
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=START_WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()
        sock.unlink(missing_ok=True)


def _await_monitor(proc: subprocess.Popen, sock: Path) -> None:
    """Until the daemon's monitor answers (its disks are open then); HostError with its words if it ended."""
    deadline = time.monotonic() + START_WAIT
    while True:
        if proc.poll() is not None:
            lines = proc.stderr.read().decode(errors="replace").strip().splitlines()
            raise HostError(f"qemu-storage-daemon could not open the disks: {lines[-1] if lines else proc.returncode}")
        try:
            with QmpSession(sock, take_turn=False) as qmp:
                qmp.execute("query-named-block-nodes", {"flat": True})
            return
        except QmpError:
            if time.monotonic() > deadline:
                raise
        time.sleep(POLL)


@dataclass(frozen=True)
class Served:
    pid: int
    port: int


def serve(folder: Path, key: str, address: str, port: int, exports: dict[str, tuple[Path, Path | None]]) -> Served:
    """A daemonized ``qemu-storage-daemon`` serving, writable over NBD with TLS (``key``) on ``address:port``, each
    export (device id -> (qcow2 file, its backing qcow2 or None)); its pid once it listens. ``folder`` (owner
    only) holds its key file and pid file."""
    write_psk(folder, key)
    pidfile = folder / "nbd.pid"
    # every option as JSON (QEMU's option syntax would read a comma in a path as the next option)
    argv = ["qemu-storage-daemon", "--daemonize", "--pidfile", str(pidfile),
            "--object", json.dumps({"qom-type": "tls-creds-psk", "id": TLS_ID, "endpoint": "server",
                                    "dir": str(folder)}),
            "--nbd-server", json.dumps({"addr": {"type": "inet", **inet(address, port)}, "tls-creds": TLS_ID})]
    for index, (device, (top, base)) in enumerate(sorted(exports.items())):
        node = {"driver": "qcow2", "node-name": f"disk{index}", "file": {"driver": "file", "filename": str(top)},
                "backing": None if base is None else {"driver": "qcow2", "read-only": True,
                                                      "file": {"driver": "file", "filename": str(base)}}}
        argv += ["--blockdev", json.dumps(node),
                 "--export", json.dumps({"type": "nbd", "id": f"export{index}", "node-name": f"disk{index}",
                                         "name": device, "writable": True})]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=START_WAIT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HostError(f"qemu-storage-daemon did not start: {exc}", hint="apt-get install qemu-system-common") from exc
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise HostError(f"qemu-storage-daemon failed: {lines[-1] if lines else done.returncode}")
    return Served(int(pidfile.read_text().strip()), port)
