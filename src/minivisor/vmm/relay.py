"""The console relay: one small process per running VM, between its VMM and everyone else.

The launch makes the console's FIFOs (``serial.out``, ``serial.in``) and a listening socket
(``events.sock``) before QEMU starts, and hands them to the relay; QEMU opens the FIFOs and connects to
the socket at its start, and the guest runs at once. What it prints waits in ``serial.out`` (256 KiB,
packed: QEMU's UART writes a byte at a time) until the relay reads it, so nothing is lost however late
the relay comes (a guest printing more meanwhile waits for it). The relay

- writes the console output to ``serial.log``, capped at :data:`LOG_CAP` bytes
  with one previous generation (``serial.log.1``): a guest flooding its console
  cannot fill the datastore, and a full datastore costs log lines, never the console;
- serves ``console.sock`` to ``vm console`` and ``vm exec``: each client gets the
  output from the moment it connects, never the history;
- remembers readiness: the line with the guest's ready text goes to ``ready`` in
  the runtime folder, so ``exec`` never scans the log; a power-on that waits for it
  hands the relay a pipe (``--ready-fd``), closed once the line is noted;
- watches QEMU's events on a second QMP monitor (``events.sock``) and writes
  QEMU's run state to ``status`` after every stop and resume, so ``vm list`` sees
  a VM that QEMU paused by itself (``io-error``: a disk write found the
  datastore full) by reading one small file instead of asking every VMM.

It exits when the console's last writer is gone (the VMM exited) and its output is logged. It is started by
:meth:`minivisor.vmm.process.Vmm.launch` and detaches (a double fork) once attached, which is once
QEMU greeted on the event monitor (QEMU's start is over): it outlives the CLI that started it and
is never left a zombie of the service. It holds ``relay.lock`` in the runtime folder as long as it runs: a
relay that was killed leaves it free, and whoever next observes the VM starts another
(:meth:`minivisor.vmm.process.Vmm.ensure_relay`, ``--reattach``), which reopens the FIFOs and takes QEMU's
event monitor when QEMU reconnects it (every second while it has no relay).

Only the standard library and minivisor's QMP framing are imported, and its interpreter starts
without ``site`` or ``runpy`` (see :meth:`minivisor.vmm.process.Vmm.launch`): this runs once per
power-on, and lives as long as the VM.
"""

from __future__ import annotations

import functools
import os
import select
import selectors
import socket
import sys
import time
from types import SimpleNamespace

from ..errors import QmpError
from ..text import READY_MAX
from .qmp import QmpStream, greeted, leave_negotiation

LOG_CAP = 1024 * 1024  # bytes of serial.log (boot logs are tens of KiB); serial.log.1 keeps the previous generation
CLIENT_BACKLOG = 1024 * 1024  # output queued for a slow console client before the oldest is dropped
INPUT_BACKLOG = 64 * 1024  # typed input queued for a guest that does not read its serial port
LINE_MAX = 4096  # the longest line scanned for the ready text
MAX_CLIENTS = 8
CONNECT_TIMEOUT = 30.0  # seconds for QEMU to connect and greet: longer than the launcher waits for the relay
CHUNK = 65536


class Outbox:
    """A non-blocking socket or pipe and the bytes waiting to be sent on it (bounded: the oldest are dropped)."""

    def __init__(self, target: socket.socket | int, limit: int) -> None:
        if isinstance(target, socket.socket):
            target.setblocking(False)
            self.send = target.send
        else:
            os.set_blocking(target, False)
            self.send = functools.partial(os.write, target)
        self.target = target
        self.limit = limit
        self.pending = bytearray()

    def queue(self, data: bytes) -> None:
        self.pending += data
        if len(self.pending) > self.limit:
            del self.pending[:len(self.pending) - self.limit]

    def flush(self) -> None:
        """Send what the socket takes now; raises OSError if the peer is gone."""
        while self.pending:
            try:
                sent = self.send(self.pending)
            except BlockingIOError:
                return
            del self.pending[:sent]


class CappedLog:
    """``serial.log``, rotated to ``serial.log.1`` when it would pass ``cap`` bytes."""

    def __init__(self, path: str, cap: int) -> None:
        self.path, self.cap = path, cap
        self.fd: int | None = None
        self.size = 0
        try:
            self._open()  # at power-on, as a terminal would show it: `tail -f serial.log` works before any output
        except OSError:
            pass  # a full datastore: the first write tries again

    def write(self, data: bytes) -> None:
        try:
            if self.fd is None:
                self._open()
            elif self.size + len(data) > self.cap:
                self._rotate()
            assert self.fd is not None
            self.size += os.write(self.fd, data[-self.cap:])
        except OSError:
            pass  # a full or broken datastore costs these log lines; the console keeps working

    def _open(self) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.size = os.fstat(self.fd).st_size

    def _rotate(self) -> None:
        """The log becomes ``.1`` and a new, empty one takes its name, which never goes missing meanwhile (a
        reader that opens it finds a file: the old log, or the new one)."""
        assert self.fd is not None
        fresh = self.path + ".new"
        try:
            os.unlink(fresh)  # left by a relay killed halfway through a rotation
        except FileNotFoundError:
            pass
        try:
            os.link(self.path, fresh)
        except OSError:  # no hard links on this file system: the log's name is missing for a moment
            os.replace(self.path, self.path + ".1")
            new_fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        else:
            os.replace(fresh, self.path + ".1")  # both names on the old log for a moment
            new_fd = os.open(fresh, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            os.replace(fresh, self.path)
        os.close(self.fd)
        self.fd, self.size = new_fd, 0


class Relay:
    """The attached relay: the VMM's console and event sockets, the log, the clients."""

    def __init__(self, options: SimpleNamespace) -> None:
        # Files go into the runtime folder through a descriptor of it: if the VM powers off and a new
        # power-on recreates the folder, this relay's late writes land in the old, deleted one.
        self.runtime = os.open(os.path.dirname(options.status), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.status_name, self.ready_name = os.path.basename(options.status), os.path.basename(options.ready)
        self.ready_text = options.ready_text.encode()
        self.ready_signal = int(options.ready_fd) if options.ready_fd else None
        self.log = CappedLog(options.log, LOG_CAP)
        self.selector = selectors.DefaultSelector()
        self.clients: dict[socket.socket, Outbox] = {}
        self.line = b""  # the console's unfinished last line, for the ready scan
        self.vmm_exit = os.pidfd_open(int(options.vmm_pid))  # readable once QEMU exited
        self.events: QmpStream | None = None
        self.events_listener: socket.socket | None = None  # until QEMU reconnects, for a relay started later
        try:
            if options.reattach:
                # QEMU runs; its event monitor tries to connect every second (argv.EVENTS_RECONNECT)
                self.events_listener = socket.socket(fileno=int(options.events_fd))
                self.events_listener.setblocking(False)
                self.selector.register(self.events_listener, selectors.EVENT_READ, self._on_events_connect)
            else:
                # QEMU connects at its start (its chardevs, the console's FIFOs opened too, come before its machine)
                deadline = time.monotonic() + CONNECT_TIMEOUT
                events = _accept(int(options.events_fd), "its event monitor", self.vmm_exit, deadline)
                self.events = self._monitor(events, self.vmm_exit, deadline)
        except BaseException:
            os.close(self.vmm_exit)
            raise
        self.selector.register(self.vmm_exit, selectors.EVENT_READ, self._on_vmm_exit)
        self.vmm: Outbox | None = None  # the guest's input, to serial.in
        self.listener: socket.socket | None = None
        if options.serial_out_fd:  # the VM has a minivisor console
            output = int(options.serial_out_fd)
            os.set_blocking(output, False)
            self.selector.register(output, selectors.EVENT_READ, self._on_console_output)
            self.vmm = Outbox(int(options.serial_in_fd), INPUT_BACKLOG)
            self.listener = _listen(options.console)
            self.selector.register(self.listener, selectors.EVENT_READ, self._on_client_connect)
        self.running = True

    @staticmethod
    def _monitor(sock: socket.socket, vmm_exit: int, deadline: float) -> QmpStream | None:
        """QEMU's event monitor, out of negotiation and asked for the run state; None if QEMU greeted (it
        started) and has exited since: its guest powered off at once. QmpError if QEMU never greeted."""
        stream = greeted(sock, "the event monitor", deadline)  # QEMU's main loop runs: its start is over
        try:
            leave_negotiation(stream, deadline)
            # The guest may have run for a while: the state now, then every change as an event.
            stream.send({"execute": "query-status"})
        except QmpError:
            if not _exits(vmm_exit, within=1.0):  # its sockets close as it exits, just before it is gone
                raise  # QEMU is there, but its monitor is not
            sock.close()
            return None
        return stream

    def serve(self) -> None:
        if self.events is not None:
            self.selector.register(self.events.sock, selectors.EVENT_READ, self._on_event_data)
            for message in self.events.drain():  # what came with the handshake
                self._on_qmp_message(message)
        elif self.vmm is None and self.events_listener is None:
            return  # QEMU has exited already, and there is no console to log
        while self.running:
            for key, mask in self.selector.select():
                key.data(key.fileobj, mask)

    # -- the VMM's side ---------------------------------------------------------
    def _on_console_output(self, output: int, mask: int) -> None:
        try:
            data = os.read(output, CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.running = False  # serial.out has no writer left: the VMM exited, and all it wrote is read
            return
        self.log.write(data)  # before the ready scan: once `ready` exists, what came before it is logged
        self._scan_for_ready(data)
        for client, box in list(self.clients.items()):
            box.queue(data)
            self._flush(box, client)

    def _scan_for_ready(self, data: bytes) -> None:
        text = self.line + data
        end = text.rfind(b"\n")
        self.line = text[end + 1:][-LINE_MAX:] if end >= 0 else text[-LINE_MAX:]
        found = text.find(self.ready_text, 0, max(end, 0))
        if found < 0:
            return
        start = text.rfind(b"\n", 0, found) + 1
        stop = text.find(b"\n", found)
        self._publish(self.ready_name, text[start:stop].decode(errors="replace").strip()[:READY_MAX])
        if self.ready_signal is not None:  # the power-on waiting for the line: it is noted
            os.close(self.ready_signal)
            self.ready_signal = None

    def _on_vmm_exit(self, vmm_exit: int, mask: int) -> None:
        """QEMU exited: a console's end is its last output, read to its end; without one, nothing is left to do."""
        self.selector.unregister(vmm_exit)
        os.close(vmm_exit)
        self._close_events_listener()
        if self.vmm is None:
            self.running = False

    def _on_events_connect(self, listener: socket.socket, mask: int) -> None:
        """QEMU connected its event monitor to a relay started for a running VM (``--reattach``)."""
        if listener is not self.events_listener:
            return  # closed by QEMU's exit, seen in the same round
        try:
            sock, _ = listener.accept()
        except OSError:
            return
        self._close_events_listener()
        try:
            self.events = self._monitor(sock, self.vmm_exit, time.monotonic() + CONNECT_TIMEOUT)
        except (OSError, QmpError):
            sock.close()  # no run states from this QEMU; its console goes on
            return
        if self.events is not None:
            self.selector.register(self.events.sock, selectors.EVENT_READ, self._on_event_data)
            for message in self.events.drain():
                self._on_qmp_message(message)

    def _close_events_listener(self) -> None:
        if self.events_listener is not None:
            self.selector.unregister(self.events_listener)
            self.events_listener.close()
            self.events_listener = None

    def _on_event_data(self, sock: socket.socket, mask: int) -> None:
        assert self.events is not None
        try:
            data = sock.recv(CHUNK)
        except OSError:
            data = b""
        if not data:
            self._events_ended()
            return
        try:
            messages = self.events.feed(data)
        except QmpError:
            self._events_ended()  # the monitor speaks nonsense: nothing more to learn from it
            return
        for message in messages:
            self._on_qmp_message(message)

    def _events_ended(self) -> None:
        """The event monitor closed (QEMU is going away): the console's last output is still to be logged."""
        if self.events is None:
            return
        self.selector.unregister(self.events.sock)
        self.events.sock.close()
        self.events = None
        if self.vmm is None:
            self.running = False

    def _on_qmp_message(self, message: dict) -> None:
        if message.get("event") in ("STOP", "RESUME") and self.events is not None:
            # The event does not say why the VM stopped; QEMU's run state does (io-error, paused...).
            try:
                self.events.send({"execute": "query-status"})
            except QmpError:
                self._events_ended()  # the VMM closed its monitor: it is going away
        elif isinstance(message.get("return"), dict) and "status" in message["return"]:
            self._publish(self.status_name, message["return"]["status"])

    def _publish(self, name: str, text: str) -> None:
        """Replace a small file in the runtime folder (a reader sees the old or the new text)."""
        try:
            fd = os.open(f".{name}.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600,
                         dir_fd=self.runtime)
            try:
                os.write(fd, text.encode() + b"\n")
            finally:
                os.close(fd)
            os.replace(f".{name}.tmp", name, src_dir_fd=self.runtime, dst_dir_fd=self.runtime)
        except OSError:
            pass  # the VM powered off and its runtime folder is gone

    # -- console clients --------------------------------------------------------
    def _on_client_connect(self, listener: socket.socket, mask: int) -> None:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        if len(self.clients) >= MAX_CLIENTS:
            client.close()
            return
        self.clients[client] = Outbox(client, CLIENT_BACKLOG)
        self.selector.register(client, selectors.EVENT_READ, self._on_client_data)

    def _on_client_data(self, client: socket.socket, mask: int) -> None:
        box = self.clients.get(client)
        if box is None:
            return
        if mask & selectors.EVENT_WRITE:
            self._flush(box, client)
        if not mask & selectors.EVENT_READ or client not in self.clients:
            return
        try:
            data = client.recv(CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        assert self.vmm is not None
        self.vmm.queue(data)
        self._flush_input()

    def _flush_input(self, _fd: int | None = None, _mask: int = 0) -> None:
        """Write the clients' input into serial.in as far as it takes it; watch it for room while some is left.
        (Never for reading: QEMU reads it, and it is open for reading here only so that this open never waited.)"""
        assert self.vmm is not None
        try:
            self.vmm.flush()  # QEMU holds serial.in open for reading until it exits: no EPIPE
        except OSError:
            self.vmm.pending.clear()  # input the guest can never get is dropped; its console output goes on
        watched = self.selector.get_map().get(self.vmm.target) is not None
        if self.vmm.pending and not watched:
            self.selector.register(self.vmm.target, selectors.EVENT_WRITE, self._flush_input)
        elif watched and not self.vmm.pending:
            self.selector.unregister(self.vmm.target)

    def _flush(self, box: Outbox, client: socket.socket) -> None:
        """Send what a client's ``box`` holds; watch for writability while some is left."""
        try:
            box.flush()
        except OSError:
            self._drop(client)
            return
        wanted = selectors.EVENT_READ | (selectors.EVENT_WRITE if box.pending else 0)
        if self.selector.get_key(client).events != wanted:
            self.selector.modify(client, wanted, self.selector.get_key(client).data)

    def _drop(self, client: socket.socket) -> None:
        self.clients.pop(client, None)
        self.selector.unregister(client)
        client.close()


def _accept(listener_fd: int, what: str, vmm_exit: int, deadline: float) -> socket.socket:
    """The connection QEMU makes at its start to the listening socket ``listener_fd`` (then closed);
    OSError if QEMU exits or the deadline passes before it connects."""
    listener = socket.socket(fileno=listener_fd)
    try:
        poller = select.poll()
        poller.register(listener, select.POLLIN)
        poller.register(vmm_exit, select.POLLIN)
        while True:
            remaining = deadline - time.monotonic()
            ready = dict(poller.poll(max(remaining, 0) * 1000))
            if listener.fileno() in ready:  # before the exit: a QEMU that connected, then ended, did start
                return listener.accept()[0]
            if vmm_exit in ready:
                raise OSError(f"the VMM exited before it connected {what}")
            if remaining <= 0:
                raise OSError(f"the VMM did not connect {what} in {CONNECT_TIMEOUT:.0f} s")
    finally:
        listener.close()


def _exits(vmm_exit: int, *, within: float) -> bool:
    """Whether QEMU has exited, or does within ``within`` seconds (``vmm_exit``: its pidfd)."""
    poller = select.poll()
    poller.register(vmm_exit, select.POLLIN)
    return bool(poller.poll(within * 1000))


def _listen(path: str) -> socket.socket:
    if os.path.exists(path):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    listener.bind(path)
    os.chmod(path, 0o600)
    listener.listen(MAX_CLIENTS)
    listener.setblocking(False)
    return listener


def _detach() -> None:
    """Keep running in a grandchild that nobody waits for; the caller's child exits 0 (attached)."""
    if os.fork():
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


# The relay's command line: --NAME VALUE for each, in any order (--serial-*-fd, --ready-fd and --reattach may be
# left out)
OPTIONS = {
    "vmm-pid": "QEMU's process id",
    "events-fd": "the listening socket (a descriptor) QEMU's event monitor connects to",
    "status": "where QEMU's run state goes (in the runtime folder)",
    "serial-out-fd": "serial.out (a descriptor, read), where QEMU writes the console; absent: no minivisor console",
    "serial-in-fd": "serial.in (a descriptor), where QEMU reads the console's input; only with --serial-out-fd",
    "console": "the console socket to serve",
    "log": "serial.log in the VM's folder",
    "ready": "where the ready line goes (beside --status)",
    "ready-text": "the text of the guest's ready line",
    "ready-fd": "a pipe's write end to close once the ready line is noted; absent: nobody waits for it",
    "lock-fd": "the relay lock (a descriptor), held as long as the relay runs; its file removed when it ends",
    "reattach": "yes: QEMU runs already and its relay is gone (killed): attached once the console is served, "
                "QEMU's event monitor taken when it reconnects",
}


def parse_options(argv: list[str]) -> SimpleNamespace:
    """The relay's options (``--ready-text`` as ``ready_text``); ValueError names what is wrong.

    Not argparse: minivisor starts the relay with every power-on, and argparse with its imports
    doubles what the relay loads besides QMP's framing.
    """
    if len(argv) % 2:
        raise ValueError("options come in pairs: --NAME VALUE")
    values = {"serial-out-fd": None, "serial-in-fd": None, "ready-fd": None, "reattach": None}
    for name, value in zip(argv[::2], argv[1::2]):
        if not name.startswith("--") or name[2:] not in OPTIONS:
            raise ValueError(f"unknown option {name!r}; the options are " + ", ".join(f"--{o}" for o in OPTIONS))
        values[name[2:]] = value
    missing = [f"--{name}" for name in OPTIONS if name not in values]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    if (values["serial-out-fd"] is None) != (values["serial-in-fd"] is None):
        raise ValueError("--serial-out-fd and --serial-in-fd come together")
    if values["reattach"] not in (None, "yes"):
        raise ValueError("--reattach takes yes")
    return SimpleNamespace(**{name.replace("-", "_"): value for name, value in values.items()})


def main(argv: list[str] | None = None) -> None:
    try:
        options = parse_options(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        sys.exit(f"minivisor console relay: {exc}")
    try:
        relay = Relay(options)
    except (OSError, QmpError) as exc:
        sys.stderr.write(f"{getattr(exc, 'strerror', None) or exc}\n")
        sys.exit(1)
    _detach()
    relay.serve()
    _remove_lock_file(int(options.lock_fd))


def _remove_lock_file(lock: int) -> None:
    """Remove the relay lock's file, if it is still the runtime folder's: a relay that ends with its VMM is not
    one that was killed (:meth:`minivisor.vmm.process.Vmm.ensure_relay` would start another)."""
    try:
        path = os.readlink(f"/proc/self/fd/{lock}")
        held, named = os.fstat(lock), os.stat(path)
        if (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino):
            os.unlink(path)
    except OSError:
        pass  # gone already (the VM's clean-up removed the runtime folder)


if __name__ == "__main__":
    main()
