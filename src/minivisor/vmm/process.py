"""One VMM process (QEMU) per VM: launch, observe, control, stop.

Each running VM has a *runtime record* (``runtime.json`` in its folder: pid,
start time, argv, sockets) so any later minivisor process can find it again,
and holds the VM's *lock* (``<name>.vmx.lck``): the launching process takes an
exclusive ``flock`` and hands the descriptor to QEMU, so the lock lives exactly
as long as the VMM does and a crashed VMM never leaves a stale lock.

The power state is observed, never stored: a VM runs if its runtime record
names a live pid with the start time and command line we launched, and it is
paused if QEMU's run state (which the console relay writes to a file in the
runtime folder after every stop and resume) says so.
"""

from __future__ import annotations

import json
import os
import select
import signal
import time
from pathlib import Path

from .. import procfs
from ..datastore.layout import VmPaths
from ..dirs import helper_command
from ..errors import AgentError, HvError, LockError, QmpError, VmmError, host_refused
from ..files import write_atomic
from ..locks import try_lock, wait_lock
from ..records import Record, as_dict, default_factory
from .states import FAULTS, VmState

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:  # subprocess, shutil, socket and the QMP session are imported where a VMM is started,
    #                 stopped or spoken to: observing VMs (`vm list`, every few seconds in scripts) needs none
    import subprocess

    from _socket import socket as Socket
    from typing import Any

    from .qmp import QmpSession

__all__ = ["VmLock", "RuntimeRecord", "Observed", "Vmm", "is_our_vmm", "launched_process", "SHORT_HOLD"]

RELAY_TIMEOUT = 15.0  # seconds from QEMU's spawn until its start is over and the relay attached
# Bytes serial.out holds for a late console relay: a boot log several times over, and 64 pages, so that a user's
# 256 running VMs stay under pipe-user-pages-soft (16384 pages; past it, new pipes get 2 pages).
CONSOLE_PIPE_SIZE = 256 * 1024
# Seconds a pause or resume waits for the relay to see QEMU's new run state (it does in milliseconds; a loaded host,
# the end of a full test run, left one unscheduled past 2 s: a snapshot's next command found the VM "paused")
STATUS_WAIT = 5.0
PROBE_TRIES = 5  # is_held_elsewhere: ~10 ms before a taken lock counts as held
SHORT_HOLD = 5.0  # seconds a state probe or a dead VMM's cleanup may hold the VM lock, at the very most

# QEMUs this process launched: their exit status is ours to collect (and they must be reaped).
_launched: dict[int, subprocess.Popen] = {}


class VmLock:
    """The exclusive lock on a VM: held by whoever launches or changes it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def try_acquire(self) -> bool:
        fd = self._take(0.0)
        if fd is None:
            return False
        self.fd = fd
        return True

    def acquire(self, name: str, *, wait: float = 0.0) -> VmLock:
        """Take the lock, or LockError. ``wait``: for callers that know only a short holder can be in
        the way (they hold the VM's operation lock, so no power-on can be): a state probe of another
        process, or its cleanup of the VMM that just exited."""
        fd = self._take(wait)
        if fd is None:
            raise LockError(f"VM {name!r} is in use: it is running or another operation holds it",
                            hint=f"see its state with: minivisor vm show {name}")
        self.fd = fd
        return self

    def _take(self, wait: float) -> int | None:
        try:
            return wait_lock(self.path, wait) if wait else try_lock(self.path)
        except OSError as exc:  # a first lock file in a folder that is read-only or immutable
            raise host_refused(f"create the VM's lock file {self.path}", exc) from exc

    def is_held_elsewhere(self) -> bool:
        """True if another process (or a VMM) holds the lock right now.

        A probe takes the lock for an instant, so two probes (or a probe and a
        cleanup of a dead VMM's files) can catch each other: a lock that stays
        taken for a few milliseconds is held, one that frees at once was probed.
        """
        if not self.path.exists():
            return False
        for _ in range(PROBE_TRIES):
            if self.try_acquire():
                self.release()
                return False
            time.sleep(0.002)
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> VmLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class RuntimeRecord(Record):
    """What a later process needs to find and verify a running VMM."""

    pid: int
    start_ticks: int  # /proc/<pid>/stat field 22: tells a reused pid apart
    argv: list[str]
    qmp_socket: str
    console_socket: str | None
    runtime_dir: str
    accel: str
    ready_text: str = ""  # what the relay watches the console for (a relay started later watches for it too)
    started_at: float = default_factory(time.time)

    @classmethod
    def load(cls, path: Path) -> RuntimeRecord | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def save(self, path: Path) -> None:
        # Not fsynced: it describes a process, which a power loss ends too (a stale record is cleared).
        write_atomic(path, json.dumps(as_dict(self), indent=1).encode(), mode=0o600, sync="none")


class Observed(Record, frozen=True):
    """A VM's power state as observed now; ``fault`` says why QEMU paused it by itself (a key of FAULTS)."""

    state: VmState
    record: RuntimeRecord | None = None
    fault: str | None = None


AGENT_ANSWER = 3.0  # seconds a listening guest agent has to answer before a shutdown falls back to ACPI


def _qmp(socket: Path) -> QmpSession:
    """A QMP session with a VMM (imported on first use: observing VMs, as `vm list` does, speaks no QMP)."""
    from .qmp import QmpSession

    return QmpSession(socket)


def is_our_vmm(record: RuntimeRecord) -> bool:
    """The pid is alive and is still the QEMU we started (not a reused pid)."""
    return procfs.start_ticks(record.pid) == record.start_ticks and procfs.cmdline(record.pid) == record.argv


def launched_process(pid: int) -> subprocess.Popen | None:
    """The VMM process this process launched with ``pid`` (whose exit status it can collect), or None."""
    return _launched.get(pid)


class Vmm:
    """The VMM of one VM, found through its paths and runtime record."""

    def __init__(self, name: str, paths: VmPaths) -> None:
        self.name = name
        self.paths = paths
        self.lock = VmLock(paths.lock)
        # The read end of a pipe the relay this process launched closes once the guest said it is ready (a
        # launch with ``ready_signal``): what a wait for the ready line sleeps on. Closed by close_ready_signal.
        self.ready_signal: int | None = None

    # -- observing -------------------------------------------------------
    def record(self) -> RuntimeRecord | None:
        """The runtime record of a live VMM; clears a stale one."""
        record = RuntimeRecord.load(self.paths.runtime_record)
        if record is None:
            return None
        _reap(record.pid)
        if is_our_vmm(record):
            return record
        self._cleanup_if_unused(record)
        return None

    def observe(self, lock_held: bool | None = None) -> Observed:
        """The VM's state now. ``lock_held=False`` (read from ``/proc/locks`` for many VMs at once) skips
        the record: nothing, neither a VMM nor a power-on, holds the VM."""
        if lock_held is False:
            return Observed(VmState.POWERED_OFF)
        record = self.record()
        if record is None:
            return Observed(VmState.STARTING if self.lock.is_held_elsewhere() else VmState.POWERED_OFF)
        self.ensure_relay(record)  # its run state comes from the relay
        status = self._run_status()
        fault = status if status in FAULTS else None
        return Observed(VmState.PAUSED if status == "paused" or fault else VmState.RUNNING, record, fault)

    def state(self) -> VmState:
        return self.observe().state

    def _run_status(self) -> str | None:
        """QEMU's run state as the console relay last saw it (``running``, ``paused``, ``io-error``...).

        One small file in the runtime folder: ``vm list`` stays cheap with hundreds of VMs instead of
        asking each VMM over QMP, whose one client at a time it would also keep from the CLI and the service.
        """
        try:
            return self.paths.status_file.read_text().strip()
        except OSError:
            return None

    def fault(self) -> str | None:
        """The fault QEMU paused the VM for (``io-error``: a disk write found the datastore full), or None."""
        status = self._run_status()
        return status if status in FAULTS else None

    def ready_line(self) -> str | None:
        """The ready line the guest said on its console this power-on, if it has."""
        try:
            return self.paths.ready_file.read_text(errors="replace").strip()
        except OSError:
            return None

    def remember_ready(self, line: str) -> None:
        """Mark the guest ready without its saying so: restored from a memory snapshot, it said it long ago."""
        # In the runtime folder, like the relay's notes: nothing there outlives the VMM, so no fsync.
        write_atomic(self.paths.ready_file, (line + "\n").encode(), sync="none")

    def forget_ready(self) -> None:
        """The guest boots again (a reset): it is ready once it says so again."""
        self.paths.ready_file.unlink(missing_ok=True)

    # -- launching -------------------------------------------------------
    def launch(self, argv: list[str], accel: str, links_down: list[str], *, ready_text: str,
               console: bool, paused: bool, run: bool = True, ready_signal: bool = False) -> RuntimeRecord:
        """Start QEMU and its console relay; returns once QEMU's start is over and the relay attached.

        ``paused``: ``argv`` starts QEMU paused (``-S``, :attr:`~minivisor.vmm.argv.LaunchEnv.starts_paused`):
        its links go down (``links_down``), then it runs (unless not ``run``: a live migration's destination
        stays paused after the state arrived, until its host owns the VM; a VMM started with ``-incoming
        defer`` waits for a saved state, its ``cont`` only arms the run). Otherwise the guest runs at once,
        as under bare QEMU, and nothing here is on its way. ``ready_text``: the guest's ready line, which the
        relay watches the console for; ``console``: whether ``argv`` gives the VM a minivisor console.
        ``ready_signal``: the caller waits for the ready line next; the relay gets a pipe to close once it
        noted it (:attr:`ready_signal`, which the caller closes with :meth:`close_ready_signal`).
        The caller must hold ``self.lock``.
        """
        assert self.lock.fd is not None, "launch() needs the VM lock"
        assert paused or (run and not links_down), "links go down, and runs wait, only in a VMM started paused"
        self._prepare_runtime_dir()
        # QEMU connects to the event monitor's socket and opens the console's FIFOs at its start: made first,
        # handed to the relay, whose interpreter starts while QEMU does. What the guest prints until the relay
        # reads waits in them.
        handed: list[int] = []  # the relay's descriptors: the event listener's, then serial.out's and serial.in's
        relay_lock = self._take_relay_lock()
        try:
            events = self._listen(self.paths.events_socket)
            handed.append(events.detach())
            if console:
                handed += self._console_pipes()
            signal = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK) if ready_signal else None  # (read, write)
            try:
                process = self._spawn(argv)
            except BaseException:
                if signal:
                    os.close(signal[0])
                    os.close(signal[1])
                raise
            try:
                relay = self._spawn_relay(process.pid, handed, relay_lock, ready_text, signal[1] if signal else None)
            except BaseException:
                process.kill()
                process.wait()
                if signal:
                    os.close(signal[0])
                raise
            finally:
                if signal:
                    os.close(signal[1])  # the relay's alone: its end closes when the relay noted the line, or exits
        finally:
            for fd in (*handed, relay_lock):
                os.close(fd)  # the relay has its own
        self.ready_signal = signal[0] if signal else None
        try:
            self._wait_for_relay(relay)
            record = RuntimeRecord(process.pid, procfs.start_ticks(process.pid) or 0, argv,
                                   str(self.paths.qmp_socket), str(self.paths.console_socket),
                                   str(self.paths.runtime_dir), accel, ready_text)
            record.save(self.paths.runtime_record)
            if paused:
                with _qmp(self.paths.qmp_socket) as qmp:
                    for nic in links_down:
                        qmp.execute("set_link", {"name": nic, "up": False})
                    if run:
                        qmp.execute("cont")
        except BaseException as exc:
            exited = _exits_within(process, 1.0) if isinstance(exc, VmmError) else False
            process.kill()
            process.wait()
            relay.kill()  # attached, it has detached already: QEMU's end closes its sockets, it exits
            relay.wait()
            self.paths.runtime_record.unlink(missing_ok=True)
            self.close_ready_signal()
            if exited:  # QEMU gave up during its start (its relay saw it end): say why
                raise VmmError(f"the VMM of {self.name!r} failed to start: {self.last_vmm_error()}",
                               hint=f"see {self.paths.vmm_log}") from exc
            raise
        _launched[process.pid] = process
        return record

    def ensure_relay(self, record: RuntimeRecord | None = None) -> None:
        """Start a console relay for the running VM (of ``record``, else read once the relay lock is free) if its
        own is gone.

        A relay ends with its VMM, unless it is killed (``pkill -f minivisor``, the OOM killer): then nothing
        logs or serves the console, nobody sees QEMU pause the VM, and once serial.out is full the guest's
        console output waits (Linux's serial console then waits for each character). Whoever takes the free
        relay lock first starts the next relay, which keeps the lock; costs one open when the relay runs.
        A relay that cannot be started now is tried again at the next look.
        """
        import fcntl

        try:
            lock = os.open(self.paths.relay_lock, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return  # not ours to open, or launched by a minivisor whose relays held no lock
        handed: list[int] = []
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            record = record or RuntimeRecord.load(self.paths.runtime_record)
            if record is None or not self._relay_gone(lock, record):
                return
            self.paths.events_socket.unlink(missing_ok=True)  # the dead relay's: QEMU reconnects to a new one
            handed.append(self._listen(self.paths.events_socket).detach())
            if os.path.exists(f"{self.paths.serial_pipes}.out"):
                handed += self._console_pipes(make=False)
            relay = self._spawn_relay(record.pid, handed, lock, record.ready_text, None, reattach=True)
            try:
                self._wait_for_relay(relay)
            except VmmError:
                relay.kill()  # not attached: it would hold the lock with nothing served
                relay.wait()
                raise
            # Not a "---" line: those start a power-on's part of the log. Says what QEMU's complaint before it
            # ("Unable to connect character device events") was about.
            self._note(f"minivisor: {time.strftime('%Y-%m-%d %H:%M:%S')} the console relay was gone: another "
                       "was started\n")
        except (OSError, HvError):
            pass  # its relay runs (the lock is held), or a new one cannot start now (the VM went meanwhile...)
        finally:
            for fd in (*handed, lock):
                os.close(fd)

    def _relay_gone(self, lock: int, record: RuntimeRecord) -> bool:
        """Whether the relay lock just taken (``lock``) says the running VM's relay was killed: not another user's
        (root looking at a user's VM), still the runtime folder's (a relay that ends with its VMM removes it
        first), and the VMM still runs (its relay ends when QEMU closes the console, before QEMU is gone)."""
        held = os.fstat(lock)
        try:
            named = os.stat(self.paths.relay_lock)
        except FileNotFoundError:
            return False
        return (held.st_uid == os.geteuid() and (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)
                and is_our_vmm(record))

    def _note(self, line: str) -> None:
        """Add ``line`` to the VMM's log, if it can be written."""
        try:
            fd = os.open(self.paths.vmm_log, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except OSError:
            return
        try:
            os.write(fd, line.encode())
        except OSError:
            pass  # a full datastore costs the line
        finally:
            os.close(fd)

    def close_ready_signal(self) -> None:
        """Close the read end of the ready signal of this process's launch, if it has one."""
        if self.ready_signal is not None:
            os.close(self.ready_signal)
            self.ready_signal = None

    def _listen(self, path: Path) -> Socket:
        """A socket listening at ``path`` in the runtime folder (owner-only) for QEMU to connect to.

        ``_socket``, the C module under ``socket``: a power-on needs none of socket.py's enums and wrappers
        (~3 ms of its CPU before QEMU's spawn)."""
        import _socket

        listener = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        try:
            listener.bind(str(path))
            listener.listen(1)
        except OSError as exc:
            listener.close()
            raise VmmError(f"cannot make the VMM's socket {path} for {self.name!r}: {exc.strerror}",
                           hint="the runtime folder is under XDG_RUNTIME_DIR or /run/minivisor: check it") from exc
        return listener

    def _console_pipes(self, *, make: bool = True) -> list[int]:
        """The console's FIFOs, made in the runtime folder for QEMU to open (``-chardev pipe``): descriptors of
        ``serial.out`` (the guest's output, read; a FIFO's reader opens at once) and ``serial.in`` (its input,
        read-write, as QEMU opens both: a write-only open would fail, ENXIO, with no reader yet). Not ``make``:
        those of a running VM, for a relay started after its own was gone.

        QEMU opens both read-write too, so it never sees the relay go (no EPIPE): a relay that died leaves the
        guest's console output waiting in the pipe, and the UART held once it is full. The relay reads only once
        QEMU has greeted, after QEMU opened serial.out: a FIFO that never had a writer reads as its end."""
        import fcntl

        base = self.paths.serial_pipes
        fds: list[int] = []
        try:
            for suffix, mode in ((".out", os.O_RDONLY), (".in", os.O_RDWR)):
                if make:
                    os.mkfifo(f"{base}{suffix}", 0o600)
                fds.append(os.open(f"{base}{suffix}", mode | os.O_NONBLOCK | os.O_CLOEXEC))
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            raise VmmError(f"cannot make the VMM's console pipe {exc.filename} for {self.name!r}: {exc.strerror}",
                           hint="the runtime folder is under XDG_RUNTIME_DIR or /run/minivisor: check it") from exc
        try:
            if make:
                fcntl.fcntl(fds[0], fcntl.F_SETPIPE_SZ, CONSOLE_PIPE_SIZE)  # what a late relay leaves unread, packed
        except OSError:
            pass  # the user's pipes passed pipe-user-pages-soft: the pipe keeps what it has (2 pages at least)
        return fds

    def _take_relay_lock(self) -> int:
        """The new relay's lock, in the fresh runtime folder (nobody else can hold it)."""
        try:
            fd = try_lock(self.paths.relay_lock)
        except OSError as exc:
            fd, error = None, exc.strerror
        else:
            error = "held by another process"
        if fd is None:
            raise VmmError(f"cannot take the console relay's lock {self.paths.relay_lock} for {self.name!r}: {error}",
                           hint="the runtime folder is under XDG_RUNTIME_DIR or /run/minivisor: check it")
        return fd

    def _prepare_runtime_dir(self) -> None:
        runtime = self.paths.runtime_dir
        runtime.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        runtime.mkdir(mode=0o700, exist_ok=True)
        os.chmod(runtime, 0o700)
        for stale in runtime.iterdir():
            stale.unlink()

    def _spawn_relay(self, vmm_pid: int, handed: list[int], lock: int, ready_text: str,
                     ready_signal: int | None, *, reattach: bool = False) -> subprocess.Popen:
        """Start the VM's console relay (:mod:`minivisor.vmm.relay`) with what QEMU (``vmm_pid``) opens at its
        start: the socket its event monitor connects to, then its console's FIFOs (out, in), if it has one, and
        the write end of the ready signal, if the launch has one; :meth:`_wait_for_relay` waits for it. ``lock``:
        the relay lock, held by the relay for as long as it runs (a descriptor it inherits and never closes).
        ``reattach``: QEMU runs already, its relay is gone.

        The relay detaches itself: its first process exits 0 once QEMU connected its event monitor and
        greeted (its start is over) and the console is served (at once, reattached). It needs only the standard
        library and this minivisor (:func:`minivisor.dirs.helper_command`).
        """
        import subprocess

        paths = self.paths
        argv = [*helper_command("minivisor.vmm.relay"),
                "--vmm-pid", str(vmm_pid), "--events-fd", str(handed[0]),
                "--status", str(paths.status_file), "--console", str(paths.console_socket),
                "--log", str(paths.serial_log), "--ready", str(paths.ready_file), "--ready-text", ready_text]
        argv += ["--serial-out-fd", str(handed[1]), "--serial-in-fd", str(handed[2])] if len(handed) > 1 else []
        argv += ["--ready-fd", str(ready_signal)] if ready_signal is not None else []
        argv += ["--reattach", "yes"] if reattach else []
        argv += ["--lock-fd", str(lock)]
        passed = [*handed, lock, *([ready_signal] if ready_signal is not None else [])]
        try:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    start_new_session=True, umask=0o077, pass_fds=passed)
        except OSError as exc:
            raise VmmError(f"cannot start the console relay of {self.name!r}: {exc.strerror}",
                           hint="check the Python installation minivisor runs from") from exc

    def _wait_for_relay(self, relay: subprocess.Popen) -> None:
        """Return once the relay has attached (its first process exited 0); VmmError if it failed."""
        import subprocess

        try:
            _, stderr = relay.communicate(timeout=RELAY_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            raise VmmError(f"the console relay of {self.name!r} did not attach in {RELAY_TIMEOUT:.0f} s",
                           hint=f"see {self.paths.vmm_log}") from exc
        if relay.returncode != 0:
            lines = stderr.decode(errors="replace").strip().splitlines()
            raise VmmError(f"the console relay of {self.name!r} failed: {lines[-1] if lines else relay.returncode}",
                           hint=f"see {self.paths.vmm_log}")

    def _spawn(self, argv: list[str]) -> subprocess.Popen:
        import subprocess

        try:
            log = os.fdopen(os.open(self.paths.vmm_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600),
                            "ab")
        except OSError as exc:  # the VM's folder (or an old log) is immutable or read-only
            raise host_refused(f"write the VMM's log {self.paths.vmm_log}", exc) from exc
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} power on: {' '.join(argv)}\n".encode())
        log.flush()
        try:
            # Own session: the VM outlives this process and the terminal's signals.
            # umask 077: QEMU creates its sockets and logs owner-only.
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, pass_fds=(self.lock.fd,), umask=0o077)
        except OSError as exc:
            raise VmmError(f"cannot start {argv[0]}: {exc.strerror}",
                           hint="install QEMU: apt-get install qemu-system-x86") from exc
        finally:
            log.close()

    def last_vmm_error(self) -> str:
        """The last error QEMU wrote to the VMM log, without its program prefix."""
        try:
            lines = self.paths.vmm_log.read_text(errors="replace").splitlines()
        except OSError:
            return "no VMM log"
        for line in reversed(lines):
            if "qemu-system" in line and ":" in line:
                return line.split(": ", 2)[-1].strip()
        return lines[-1].strip() if lines else "no output"

    # -- control ---------------------------------------------------------
    def session(self) -> QmpSession:
        """A QMP session with this running VMM (a context manager)."""
        return _qmp(Path(self._require_record().qmp_socket))

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run one QMP command in a session of its own."""
        with self.session() as qmp:
            return qmp.execute(command, arguments)

    def set_paused(self, paused: bool) -> None:
        """Pause or resume the vCPUs; returns once the console relay has seen QEMU's new run state.

        Resuming also retries the disk writes a fault stopped on; if they fail again, QEMU stops anew.
        """
        self.execute("stop" if paused else "cont")
        self.await_run_state(running=not paused)

    def await_run_state(self, *, running: bool) -> None:
        """Return once the console relay has seen QEMU run (or not), or after STATUS_WAIT: after a ``cont`` or
        ``stop`` of the caller's, so that the next command sees the VM as it now is (the relay writes the state
        when QEMU's event reaches it, a moment later)."""
        deadline = time.monotonic() + STATUS_WAIT
        while (self._run_status() == "running") != running and time.monotonic() < deadline:
            time.sleep(0.005)

    def stop(self, *, hard: bool, timeout: float) -> str:
        """Power off: a soft shutdown (unless hard), then quit, then SIGKILL. Returns how it ended.

        The soft shutdown asks the guest agent when the guest has it listening, as libvirt (agent
        first when one is connected), VMware (a soft power-off goes through VMware Tools) and
        Proxmox do: a guest that ignores the power button obeys it. Without an agent, or if it
        refuses, the ACPI power button.
        """
        record = self._require_record()
        try:
            how = "hard"
            # a VM that QEMU paused on a fault cannot run to handle the power button: quit at once
            soft = not hard and self.fault() is None
            if soft and (self._agent_shutdown() or self._try("cont", "system_powerdown")) \
                    and self._wait_exit(record.pid, timeout):
                how = "soft"
            elif not (self._try("quit") and self._wait_exit(record.pid, 3.0)):
                os.kill(record.pid, signal.SIGKILL)
                self._wait_exit(record.pid, 5.0)
                how = "killed"
            return how
        finally:
            self._cleanup_if_unused(record)

    def kill(self) -> int | None:
        """Kill the VMM at once (SIGKILL: no QMP, which a hung VMM or another client could hold up) and wait
        for it to be gone; returns its pid, or None if none ran. Fencing uses it: a deadline, not a shutdown."""
        record = self.record()
        if record is None:
            return None
        try:
            os.kill(record.pid, signal.SIGKILL)
            self._wait_exit(record.pid, 5.0)
        except ProcessLookupError:
            pass  # it ended meanwhile
        finally:
            self._cleanup_if_unused(record)
        return record.pid

    def agent_listening(self) -> bool:
        """Whether the guest holds its end of the agent's channel open (QEMU's ``frontend-open``): a
        guest agent runs there. Asks nothing of the guest, so it answers at once either way."""
        try:
            chardevs = self.execute("query-chardev")
        except QmpError:
            return False
        return any(isinstance(c, dict) and c.get("label") == "agent" and c.get("frontend-open") is True
                   for c in (chardevs if isinstance(chardevs, list) else ()))

    def _agent_shutdown(self) -> bool:
        """Ask the guest agent to power the guest off; False when there is none, or it does not answer."""
        from .agent import AgentSession  # imported on first use, as the QMP session is

        if not self.agent_listening():
            return False
        try:
            with AgentSession(self.paths.agent_socket, timeout=AGENT_ANSWER) as agent:
                agent.shutdown()
            return True
        except AgentError:
            return False

    def _try(self, *commands: str) -> bool:
        try:
            with _qmp(self.paths.qmp_socket) as qmp:
                for command in commands:
                    qmp.execute(command)
            return True
        except QmpError:
            return False

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        _reap(pid)
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return True
        try:
            deadline = time.monotonic() + timeout
            # A zombie leader can outlive its threads' teardown (and their open fds, the VM lock):
            # the pidfd turns readable only once the whole process has exited.
            while procfs.start_ticks(pid) is not None or not _readable(fd, 0):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                _readable(fd, min(remaining, 0.05))
                _reap(pid)
            return True
        finally:
            os.close(fd)

    def _require_record(self) -> RuntimeRecord:
        record = self.record()
        if record is None:
            raise VmmError(f"VM {self.name!r} is not running", hint=f"start it: minivisor vm start {self.name}")
        return record

    def _cleanup_if_unused(self, record: RuntimeRecord) -> None:
        """Clear a dead VMM's record and sockets, holding the VM lock while doing so.

        Without the lock, a reader could clear the files of a power-on that began
        after it looked (the runtime folder is the same for every power-on).
        """
        probe = VmLock(self.lock.path)
        if not probe.try_acquire():
            return  # a VMM or a power-on holds the VM: the files are theirs
        try:
            if RuntimeRecord.load(self.paths.runtime_record) in (None, record):
                self.paths.runtime_record.unlink(missing_ok=True)
                # The folder holds only this VM's sockets, locks and the relay's notes.
                import shutil

                shutil.rmtree(record.runtime_dir, ignore_errors=True)
        finally:
            probe.release()


def _reap(pid: int) -> None:
    child = _launched.get(pid)
    if child is not None and child.poll() is not None:
        del _launched[pid]


def _exits_within(process: subprocess.Popen, seconds: float) -> bool:
    import subprocess

    try:
        process.wait(timeout=seconds)
        return True
    except subprocess.TimeoutExpired:
        return False


def _readable(fd: int, timeout: float) -> bool:
    """poll(), not select(): in a service holding many connections, descriptors go past 1,023."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(timeout * 1000))
