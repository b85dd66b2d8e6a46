"""Supervision of VMM processes inside the service.

- **Death within a second.** Every running VMM is watched through a pidfd
  (``os.pidfd_open`` works for processes that are not our children, so VMs the
  service adopted after a restart are watched too). When one exits, the runtime
  record is cleared and an event says why: the exit status or signal when the
  service launched it, what QEMU logged otherwise: it names the signals it
  catches and traces every shutdown request, so an adopted VMM that ended
  without either was killed (``crashed``), not powered off. A stopped process
  (SIGSTOP) is not an exit: the VM stays running.
- **Reattach.** On start the service finds running VMs by their runtime
  records; :meth:`minivisor.vmm.process.Vmm.record` checks pid, start time and argv, so
  a reused pid is neither adopted nor killed.
- **Nothing half-done.** A VMM whose launcher died before the power-on finished
  (no runtime record yet, or QEMU still in ``prelaunch``) is killed and the
  VM left powered off, with a ``failed`` event.
- **Autostart.** VMs marked autostart power on when the service starts
  serving, through the same dispatch (and per-VM serialisation) as requests.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import HvError, StateError
from ..procfs import holders_of, mentioning, read_stat, wait_gone
from ..text import is_number
from ..vmm import qmp
from ..vmm.argv import SHUTDOWN_TRACE
from ..vmm.process import RuntimeRecord, Vmm, is_our_vmm, launched_process
from ..vmm.states import Action, VmState
from . import routes
from .dispatch import Dispatcher

__all__ = ["Supervisor", "exit_reason"]

log = logging.getLogger("minivisor.supervisor")

POLL = 0.2  # seconds the watcher sleeps at most
SCAN = 0.5  # seconds between looks for VMMs started outside the service (the CLI working directly)
#            and for running VMs whose console relay is gone


@dataclass
class _Watch:
    name: str
    pid: int
    fd: int
    child: subprocess.Popen | None
    vm_dir: Path


# QEMU's ShutdownCause (qapi/run-state.json), as its shutdown trace prints it: what it means, and
# whether it is a failure. Resets go through another path and never appear here.
SHUTDOWN_CAUSES = {1: ("a host error", True), 2: ("quit over QMP", False), 5: ("closed from its UI", False),
                   6: ("the guest powered off", False), 8: ("the guest panicked", True)}
LOG_TAIL = 64 * 1024  # bytes of vmm.log read to find the last power-on and how it ended


def exit_reason(returncode: int | None, vmm_log: Path | None = None) -> tuple[str, bool]:
    """How a VMM ended, and whether that was a crash (a signal, a failure status, a kill).

    ``returncode`` is None for a VMM this process did not launch (adopted after a
    restart, or started by the CLI directly): then QEMU's own log tells. It names
    the signals it catches, and traces every shutdown request (see
    :data:`~minivisor.vmm.argv.SHUTDOWN_TRACE`), so a VMM that logged neither was killed.
    """
    run = _LastRun.read(vmm_log) if vmm_log else _LastRun("", [])
    caught = run.caught_signal()
    if caught and (returncode is None or returncode >= 0):
        return caught, True  # QEMU catches SIGTERM, SIGINT and SIGHUP, says so, and exits 0
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}", True
    if returncode:
        return f"the VMM exited with status {returncode}", True
    cause = run.shutdown_cause()
    if cause is not None:
        what, failed = cause
        return (f"the VMM shut down: {what}", True) if failed else (f"the VMM exited normally ({what})", False)
    if returncode == 0:
        return "the VMM exited normally (the guest powered off)", False
    if run.traces_shutdowns:
        return "killed: the VMM ended without a shutdown request (SIGKILL, or it crashed)", True
    return "the VMM exited (exit status unknown: the service did not launch it)", False


@dataclass
class _LastRun:
    """The VMM log of the last power-on: its header line (with the argv) and what QEMU wrote after it."""

    header: str
    lines: list[str]

    @classmethod
    def read(cls, vmm_log: Path) -> _LastRun:
        try:
            with open(vmm_log, "rb") as handle:
                handle.seek(max(0, os.path.getsize(vmm_log) - LOG_TAIL))
                tail = handle.read().decode(errors="replace").splitlines()
        except OSError:
            return cls("", [])
        starts = [i for i, line in enumerate(tail) if line.startswith("---")]
        if not starts:
            return cls("", tail)
        return cls(tail[starts[-1]], tail[starts[-1] + 1:])

    @property
    def traces_shutdowns(self) -> bool:
        return f"-trace {SHUTDOWN_TRACE}" in self.header

    def caught_signal(self) -> str | None:
        for line in reversed(self.lines):
            if "terminating on signal" in line:
                return line.split(": ", 1)[-1].strip()
        return None

    def shutdown_cause(self) -> tuple[str, bool] | None:
        for line in reversed(self.lines):
            _, found, cause = line.partition(f":{SHUTDOWN_TRACE} reason=")
            if found and is_number(cause.strip(), 3):
                return SHUTDOWN_CAUSES.get(int(cause), (f"shutdown cause {cause.strip()}", False))
        return None


class Supervisor:
    """Watches every VMM of a datastore, reconciles with what runs on start, and powers on autostart VMs.

    It reaches the core through ``calls`` (Hypervisors, worker threads, the
    request path for autostart), and reports what it sees as events there.
    """

    def __init__(self, calls: Dispatcher) -> None:
        self.calls = calls
        self._watches: dict[int, _Watch] = {}  # pid -> watch
        self._reported: set[int] = set()  # pids whose power-off the core reports itself
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)

    # -- life cycle ---------------------------------------------------------
    def start(self) -> None:
        """Reconcile with what runs, then watch (autostart comes once the service serves)."""
        self.reconcile()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        with self._lock:
            for watch in self._watches.values():
                os.close(watch.fd)
            self._watches.clear()

    def reconcile(self) -> None:
        """Adopt live VMMs, kill half-started ones, clear stale records, remove what dead VMMs left on networks."""
        with self.calls.hypervisor() as hv:
            entries = hv.datastore.catalog.list()
            for entry in entries:
                try:
                    vmm = hv.vms.context(entry.name).vmm
                    self._reconcile_one(hv, entry.name, vmm)
                except HvError as exc:
                    log.warning("cannot reconcile %s: %s", entry.name, exc.one_line())
            self._clean_up_networks(hv)

    @staticmethod
    def _clean_up_networks(hv: Any) -> None:
        """The taps and port forwards of VMMs that are gone (crashed, powered off by their guest) off the host."""
        try:
            hv.clean_up_networks()
        except HvError as exc:
            log.warning("cannot clean up the networks: %s", exc.one_line())

    def _reconcile_one(self, hv: Any, name: str, vmm: Any) -> None:
        record = vmm.record()  # checks pid, start time and argv; clears a stale record
        if record is not None:
            if _orphaned(record.pid, vmm.lock.path) and _qmp_status(record.qmp_socket) == "prelaunch":
                self._kill_half_started(hv, name, vmm, record.pid, "its power-on never finished")
                return
            self.watch(name, record.pid, vmm.paths.vm_dir)
            hv.vms.emit(name, "reattached", pid=record.pid)
            return
        if vmm.state() is VmState.STARTING:
            for pid in mentioning(str(vmm.paths.qmp_socket)):
                if _orphaned(pid, vmm.lock.path):
                    self._kill_half_started(hv, name, vmm, pid, "its launcher died during power-on")
        if vmm.state() is not VmState.STARTING:
            hv.recover_interrupted(name)  # a snapshot or clone cut short (the service was killed): settle it now

    def _kill_half_started(self, hv: Any, name: str, vmm: Any, pid: int, why: str) -> None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        wait_gone(pid, 5.0)
        vmm.record()  # clears the record now that the pid is gone
        vmm.paths.runtime_record.unlink(missing_ok=True)
        hv.vms.emit(name, "failed", pid=pid, reason=f"{why}; the half-started VMM was killed")

    async def autostart(self) -> None:
        """Power on the VMs marked autostart, one after another, as requests would."""
        names = await self.calls.call(_autostart_names)
        op = routes.by_name("start_vm")
        assert op is not None
        for name in names:
            try:
                await self.calls.dispatch(op, {"name": name}, {})
            except HvError as exc:
                if isinstance(exc, StateError) and exc.action == Action.START.value:
                    continue  # already running
                await self.calls.run_blocking(self.calls.emit, "autostartFailed", name, reason=exc.one_line())

    # -- watching -------------------------------------------------------------
    def notice(self, event: dict[str, Any]) -> None:
        """Events from the core: watch what powered on, remember what was stopped."""
        pid = event.get("pid")
        if not isinstance(pid, int):
            return
        if event["type"] == "poweredOn":
            with self.calls.hypervisor() as hv:
                vm_dir = hv.vm_paths(event["vm"]).vm_dir
            self.watch(event["vm"], pid, vm_dir)
        elif event["type"] in ("poweringOff", "migrated"):  # its exit is expected; the core reports it
            with self._lock:
                self._reported.add(pid)

    def watch(self, name: str, pid: int, vm_dir: Path) -> None:
        with self._lock:
            child = launched_process(pid)  # set if this process launched it: then we get its exit status
            if pid in self._watches:
                self._watches[pid].child = self._watches[pid].child or child
                return
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                fd = -1
            if fd >= 0:
                self._watches[pid] = _Watch(name, pid, fd, child, vm_dir)
        if fd < 0:
            self._exited(_Watch(name, pid, -1, child, vm_dir))
        else:
            self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # already awake

    def watched(self) -> dict[str, int]:
        """VM name -> pid of every VMM being watched."""
        with self._lock:
            return {w.name: w.pid for w in self._watches.values()}

    def _run(self) -> None:
        last_scan = 0.0
        while not self._stop.is_set():
            with self._lock:
                by_fd = {w.fd: w for w in self._watches.values()}
            poller = select.poll()  # not select(): more than 1,024 VMMs must work too
            for fd in (self._wake_r, *by_fd):
                poller.register(fd, select.POLLIN)
            try:
                ready = [fd for fd, _ in poller.poll(POLL * 1000)]
            except OSError:
                continue
            if self._wake_r in ready:
                try:
                    os.read(self._wake_r, 4096)
                except BlockingIOError:
                    pass
            for fd in ready:
                watch = by_fd.get(fd)
                if watch is not None:
                    with self._lock:
                        self._watches.pop(watch.pid, None)
                    os.close(watch.fd)
                    self._safely(self._exited, watch)
            if time.monotonic() - last_scan >= SCAN:
                last_scan = time.monotonic()
                self._safely(self._scan)

    def _safely(self, func: Any, *args: Any) -> None:
        try:
            func(*args)
        except Exception:  # noqa: BLE001 - the watcher must survive anything one VM does
            log.exception("supervisor: %s failed", getattr(func, "__name__", func))

    def _scan(self) -> None:
        """Watch VMMs started without the service (the CLI working directly on the datastore); start a console
        relay for a running VM whose relay was killed (its guest's console output would wait once its pipe is
        full, were nobody to look at the VM)."""
        with self._lock:
            watched = {w.vm_dir for w in self._watches.values()}
        with self.calls.hypervisor() as hv:
            entries = [(entry.name, hv.vms.inventory.paths_of(entry)) for entry in hv.datastore.catalog.list()]
        for name, paths in entries:
            vmm = Vmm(name, paths)
            if paths.vm_dir in watched:
                vmm.ensure_relay()  # one open and a lock try while its relay runs
                continue
            if not os.path.exists(paths.runtime_record):
                continue
            record = RuntimeRecord.load(paths.runtime_record)
            if record is not None and is_our_vmm(record):
                self.watch(name, record.pid, paths.vm_dir)
                vmm.ensure_relay(record)

    def _exited(self, watch: _Watch) -> None:
        returncode = None
        if watch.child is not None:
            try:
                returncode = watch.child.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                returncode = None
        reason, crashed = exit_reason(returncode, watch.vm_dir / "vmm.log")
        with self.calls.hypervisor() as hv:
            try:
                hv.vms.context(watch.name).vmm.record()  # clears the stale runtime record and sockets
            except HvError:
                pass  # the VM was deleted or unregistered meanwhile
            self._clean_up_networks(hv)
        with self._lock:
            reported = watch.pid in self._reported
            self._reported.discard(watch.pid)
        if reported:
            return
        self.calls.emit("crashed" if crashed else "poweredOff", watch.name, pid=watch.pid, reason=reason,
                        exit_status=returncode)


def _autostart_names(hv: Any) -> list[str]:
    return [e.name for e in hv.datastore.catalog.list() if e.autostart]


def _qmp_status(socket: str) -> str | None:
    try:
        return qmp.execute(socket, "query-status", timeout=3.0).get("status")
    except HvError:
        return None


def _orphaned(pid: int, lock_path: Path) -> bool:
    """True if the process that launched ``pid`` no longer holds the VM's lock (it died)."""
    stat = read_stat(pid)
    if stat is None or stat.ppid == os.getpid():
        return False
    return not any(holders_of({os.path.realpath(lock_path)}, [stat.ppid]))
