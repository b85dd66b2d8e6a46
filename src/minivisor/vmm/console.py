"""The guest's serial console: wait for a line in a log, attach a terminal, run commands.

The console is COM1. The VM's console relay (:mod:`minivisor.vmm.relay`) is the
VMM's one client for it: it logs it to ``serial.log`` (capped), notes the
guest's ready line in the runtime folder (:mod:`minivisor.vmm.readiness` waits for it),
and serves ``console.sock``, where a client sees what the guest prints from the moment it connects.
``run_command`` drives the guest's serial shell: it finds the shell by a probe
(a random marker it must print), sends the command between two markers and
reads back its output and exit status, so it works with any guest that gives a
POSIX shell on its console.
"""

from __future__ import annotations

import os
import re
import math
import secrets
import select
import signal
import socket
import sys
import termios
import time
import tty
from dataclasses import dataclass
from pathlib import Path
from io import BufferedReader

from ..errors import GuestError, GuestTimeoutError, LockError
from ..text import excerpt
from ..locks import try_lock

__all__ = ["ExecResult", "wait_for_line", "run_command", "attach", "console_lock"]

DETACH_KEY = b"\x1d"  # Ctrl-], as telnet and virsh console use


@dataclass(frozen=True)
class ExecResult:
    """What a command run in the guest printed and returned.

    Through the guest agent, ``output`` is its stdout and ``stderr`` its stderr; through the serial
    shell (``via``), ``output`` holds both, merged, and ``stderr`` is empty. A command not waited for printed
    nothing here: ``pid`` is its process.
    """

    output: str
    exit_code: int
    stderr: str = ""
    via: str = "serial"
    pid: int | None = None  # a command started and not waited for (``wait=False``): its process in the guest


def wait_for_line(log: Path, needle: str, timeout: float, *, alive=lambda: True) -> str:
    """Wait until a line containing ``needle`` appears in ``log``; return that line.

    ``alive()`` is polled too, so a VM that dies while booting fails fast.
    """
    deadline = time.monotonic() + timeout
    pending = b""
    wanted = needle.encode()
    with _FollowedLog(log) as followed:
        while True:
            lines = (pending + followed.read()).split(b"\n")
            pending = lines.pop()
            for line in lines:
                if wanted in line:
                    return line.decode(errors="replace").strip()
            if not alive():
                raise GuestError(f"the VM powered off before its guest said {needle!r}",
                                 hint=f"see {log} and the VM's vmm.log")
            if time.monotonic() > deadline:
                raise GuestError(f"the guest did not say {needle!r} within {timeout:.0f} s",
                                 hint=f"see what it printed in {log}")
            time.sleep(0.01)


class _FollowedLog:
    """A log read from its start and on as it grows, across its rotations, as ``tail -F`` follows it: the
    relay renames a full ``serial.log`` to ``serial.log.1`` and starts a new one under the name."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle: BufferedReader | None = None

    def read(self) -> bytes:
        """The bytes written since the last read (none while there is no log yet)."""
        if self.handle is None:
            try:
                self.handle = open(self.path, "rb")
            except FileNotFoundError:
                return b""
        data = self.handle.read()
        try:
            rotated = os.stat(self.path).st_ino != os.fstat(self.handle.fileno()).st_ino
        except FileNotFoundError:
            rotated = True
        if rotated:  # the open file is the old generation now: its end, then the new one from its start
            data += self.handle.read()
            self.close()
        return data

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def __enter__(self) -> _FollowedLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def console_lock(runtime_dir: Path) -> int:
    """Take the console (one user at a time); returns the lock's descriptor."""
    fd = try_lock(runtime_dir / "console.lock")
    if fd is None:
        raise LockError("the VM's console is in use by another session",
                        hint="detach the other session (Ctrl-]) or wait for its command to finish")
    return fd


def _connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError as exc:
        sock.close()
        raise GuestError(f"cannot connect to the console at {path}: {exc.strerror}",
                         hint="is the VM running? minivisor vm show") from exc
    return sock


def run_command(console: Path, command: str, timeout: float) -> ExecResult:
    """Run ``command`` (one shell command line) in the guest's serial shell and collect its result.

    The shell is found first, by a probe it must answer (any POSIX shell does), never by a
    guest's own ready line. The command runs in the background of that shell with a watchdog
    beside it (POSIX sh only: ``sleep`` and ``kill``) that kills it once ``timeout`` is over, so
    the shell answers again whatever the command does, even where Ctrl-C reaches nothing (a
    shell on /dev/console, or one started with SIGINT ignored).
    """
    started = time.monotonic()
    limit = max(1, math.ceil(timeout))
    with _connect(console) as sock:
        _find_shell(sock, started + timeout, f"the guest's serial shell did not answer within {timeout:.0f} s")
        tag = secrets.token_hex(4)
        quoted = "'" + command.replace("'", "'\\''") + "'"
        # One line (a continuation prompt would add terminal noise); markers printed with printf so
        # the echo of the typed line never matches them; echo restored after. The watchdog's sleep
        # is ended with it, so no sleeping process outlives a command that finished in time.
        script = (f"stty -echo 2>/dev/null; printf '%s_%s\\n' __MVB {tag}; ( eval {quoted} ) 2>&1 & mvp=$!; "
                  f"( trap 'kill $mvs 2>/dev/null; exit' TERM; sleep {limit} & mvs=$!; wait $mvs; "
                  f"kill -KILL $mvp 2>/dev/null ) & mvw=$!; wait $mvp; mvx=$?; kill $mvw 2>/dev/null; "
                  f"printf '%s_%s_%d\\n' __MVE {tag} $mvx; stty echo 2>/dev/null\n")
        sock.sendall(script.encode())
        try:
            output, status = _read_output(sock, tag.encode(), started + limit + KILL_GRACE)
        except TimeoutError:
            raise GuestTimeoutError(f"the command {excerpt(command)} did not finish within {timeout:.0f} s, "
                                    "nor could it be killed: the serial shell stays busy until it ends",
                                    hint="look at the guest with: minivisor vm console") from None
    if status == 128 + signal.SIGKILL and time.monotonic() - started >= limit:
        raise GuestTimeoutError(f"the command {excerpt(command)} did not finish within {timeout:.0f} s: killed",
                                hint="raise --timeout for a command that takes longer")
    text = output.replace(b"\r\n", b"\n").replace(b"\r", b"")
    return ExecResult(text.decode(errors="replace"), status)


PROBE_EVERY = 0.5  # seconds between probes while a guest's shell is not answering yet (it may be booting)
KILL_GRACE = 10.0  # seconds, past the timeout, for the guest's watchdog to kill a command and say so
MAX_OUTPUT = 16 * 1024 * 1024  # bytes of a command's output kept (as the QEMU guest agent keeps)


def _find_shell(sock: socket.socket, deadline: float, failure: str) -> None:
    """Wait until a shell on the console runs a probe: ``printf`` of a random marker, sent again and again.

    The echo of the typed probe shows the marker's two halves apart, so only its run matches.
    """
    tag = secrets.token_hex(4)
    probe = f"\nprintf '%s_%s\\n' __MVR {tag}\n".encode()
    answer = re.compile(rb"__MVR_" + tag.encode() + rb"\r?\n")
    seen = bytearray()
    while True:
        sock.sendall(probe)
        until = min(deadline, time.monotonic() + PROBE_EVERY)
        while (remaining := until - time.monotonic()) > 0:
            sock.settimeout(remaining)  # not select(): in the service, descriptors go past 1,023
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                raise GuestError("the VM closed its console", hint="the guest may have powered off; see minivisor vm show")
            seen += chunk
            if answer.search(seen):
                return
            del seen[:max(0, len(seen) - 64)]  # what came before the answer is not ours
        if time.monotonic() >= deadline:
            raise GuestError(failure, hint="does the guest give a POSIX shell on its serial console (COM1)? "
                                           "see minivisor vm console")


def _read_output(sock: socket.socket, tag: bytes, deadline: float) -> tuple[bytes, int]:
    """What the command printed between its markers, and its exit status (TimeoutError past ``deadline``).

    Whatever else the console carries (a guest printing on and on) is dropped as it
    arrives, and each chunk is searched once, so a flood costs neither memory nor time.
    """
    begin = re.compile(rb"__MVB_" + tag + rb"\r?\n")
    end = re.compile(rb"__MVE_" + tag + rb"_(\d+)\r?\n")
    overlap = len(tag) + 32  # a marker split between two chunks is found in the next search
    data, begun, searched = bytearray(), False, 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)  # not select(): in the service, descriptors go past 1,023
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        if not chunk:
            raise GuestError("the VM closed its console while the command ran",
                             hint="the guest may have powered off; see minivisor vm show")
        data += chunk
        if not begun:
            found = begin.search(data)
            if found is None:
                del data[:max(0, len(data) - overlap)]  # output from before the command: not ours
                continue
            del data[:found.end()]
            begun = True
        match = end.search(data, max(0, searched - overlap))
        if match:
            return bytes(data[:match.start()]), _exit_status(match.group(1))
        if len(data) > MAX_OUTPUT:
            raise GuestError(f"the command printed more than {MAX_OUTPUT // (1024 * 1024)} MiB on the console",
                             hint="redirect its output to a file in the guest, and copy it: minivisor vm copy-from")
        searched = len(data)


def _exit_status(digits: bytes) -> int:
    """The status the guest's shell printed after the end marker, 0-255 as a shell's ``$?`` is. The guest
    sees the marker it is to print, so it may print any digits there: more than Python makes an int of
    (4,300) were an internal error, and 256 would have left ``vm exec`` exiting 0."""
    if len(digits) > 3 or int(digits) > 255:
        raise GuestError(f"the guest's serial shell gave the exit status {excerpt(digits.decode(), 40)}, "
                         "which no shell gives (0-255)",
                         hint="the guest's shell is not a POSIX shell, or something in the guest answers in its "
                              "place; use a guest with the QEMU guest agent (--via agent)")
    return int(digits)


def attach(console: Path, name: str) -> None:
    """Connect this terminal to the console until the user detaches (Ctrl-])."""
    stdin = sys.stdin.fileno()
    interactive = os.isatty(stdin)
    with _connect(console) as sock:
        sys.stderr.write(f"Connected to the console of {name}; press Ctrl-] to detach.\r\n")
        saved = termios.tcgetattr(stdin) if interactive else None
        try:
            if interactive:
                tty.setraw(stdin)
            _pump(sock, stdin)
        finally:
            if saved is not None:
                termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        sys.stderr.write("\r\nDetached.\n")


def _pump(sock: socket.socket, stdin: int) -> None:
    """Copy bytes both ways until detach, end of input, or the VM goes away."""
    stdout = sys.stdout.fileno()
    while True:
        ready, _, _ = select.select([sock, stdin], [], [])
        if sock in ready:
            chunk = sock.recv(65536)
            if not chunk:
                return
            os.write(stdout, chunk)
        if stdin in ready:
            chunk = os.read(stdin, 1024)
            if not chunk or DETACH_KEY in chunk:
                sock.sendall(chunk.split(DETACH_KEY)[0])
                return
            sock.sendall(chunk)
