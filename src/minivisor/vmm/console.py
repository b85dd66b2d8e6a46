"""The guest's serial console: wait for readiness, attach a terminal, run commands.

The console is COM1. The VM's console relay (:mod:`minivisor.vmm.relay`) is the
VMM's one client for it: it logs it to ``serial.log`` (capped), notes the
guest's ready line in the runtime folder, and serves ``console.sock``, where
a client sees what the guest prints from the moment it connects.
``run_command`` drives the guest's serial shell: it sends the command between
two markers and reads back its output and exit status, so it works with any
guest that gives a POSIX shell on its console.
"""

from __future__ import annotations

import os
import re
import secrets
import select
import socket
import sys
import termios
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import GuestError, LockError
from ..locks import try_lock

__all__ = ["ExecResult", "wait_for_line", "wait_for_ready", "run_command", "attach", "console_lock"]

DETACH_KEY = b"\x1d"  # Ctrl-], as telnet and virsh console use


@dataclass(frozen=True)
class ExecResult:
    """What a command run in the guest printed (stdout and stderr, merged) and returned."""

    output: str
    exit_code: int


def wait_for_line(log: Path, needle: str, timeout: float, *, alive=lambda: True) -> str:
    """Wait until a line containing ``needle`` appears in ``log``; return that line.

    ``alive()`` is polled too, so a VM that dies while booting fails fast.
    """
    deadline = time.monotonic() + timeout
    offset, pending = 0, b""
    wanted = needle.encode()
    while True:
        try:
            with open(log, "rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
        except FileNotFoundError:
            chunk = b""
        offset += len(chunk)
        lines = (pending + chunk).split(b"\n")
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


def wait_for_ready(ready_line: Callable[[], str | None], needle: str, timeout: float, *,
                   alive: Callable[[], bool] = lambda: True) -> str:
    """Wait until ``ready_line()`` gives the guest's ready line (the console relay notes it); return it.

    The relay remembers the line, so this never scans the log, however much the guest printed.
    """
    deadline = time.monotonic() + timeout
    while (line := ready_line()) is None:
        if not alive():
            raise GuestError(f"the VM powered off before its guest said {needle!r}",
                             hint="see its serial.log and vmm.log")
        if time.monotonic() > deadline:
            raise GuestError(f"the guest did not say {needle!r} within {timeout:.0f} s",
                             hint="see what it printed in its serial.log")
        time.sleep(0.01)
    return line


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
    """Run ``command`` in the guest's serial shell and collect its result."""
    tag = secrets.token_hex(4)
    quoted = "'" + command.replace("'", "'\\''") + "'"
    # One line (a continuation prompt would add terminal noise); markers printed with
    # printf so the echo of the typed line never matches them; echo restored after.
    script = (f"stty -echo 2>/dev/null; printf '%s_%s\\n' __MVB {tag}; ( eval {quoted} ) 2>&1; "
              f"printf '%s_%s_%d\\n' __MVE {tag} $?; stty echo 2>/dev/null\n")
    with _connect(console) as sock:
        sock.sendall(b"\n" + script.encode())
        output, status = _read_output(sock, tag.encode(), timeout, command)
    text = output.replace(b"\r\n", b"\n").replace(b"\r", b"")
    return ExecResult(text.decode(errors="replace"), status)


def _read_output(sock: socket.socket, tag: bytes, timeout: float, command: str) -> tuple[bytes, int]:
    """What the command printed between its markers, and its exit status.

    Whatever else the console carries (a guest printing on and on) is dropped as it
    arrives, and each chunk is searched once, so a flood costs neither memory nor time.
    """
    begin = re.compile(rb"__MVB_" + tag + rb"\r?\n")
    end = re.compile(rb"__MVE_" + tag + rb"_(\d+)\r?\n")
    overlap = len(tag) + 32  # a marker split between two chunks is found in the next search
    data, begun, searched = bytearray(), False, 0
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise GuestError(f"the command {command!r} did not finish within {timeout:.0f} s",
                             hint="raise --timeout, or check the guest with: minivisor vm console")
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
            return bytes(data[:match.start()]), int(match.group(1))
        searched = len(data)


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
