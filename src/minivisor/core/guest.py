"""Guest operations: run a command, copy a file in or out, read the guest's addresses.

Through the QEMU guest agent when the guest runs one (:mod:`minivisor.vmm.agent`:
exit code, stdout and stderr apart, files, addresses), else through the guest's
serial shell (:mod:`minivisor.vmm.console`: any guest with a POSIX shell on COM1).
Whether an agent runs is QEMU's to say (the guest holds its channel open), so a
guest without one costs no wait.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from ..errors import (AgentCommandError, AgentError, ArgumentError, GuestError, GuestTimeoutError, HostError,
                      HvError, NoSpaceError, host_refused, is_out_of_space)
from ..text import excerpt, is_number
from ..vmm.agent import MAX_CHUNK, MAX_OUTPUT, AgentSession, GuestInterface
from ..vmm.console import ExecResult, console_lock, run_command
from ..vmm.states import FAULTS, VmState
from .context import VmContext

__all__ = ["VIAS", "shell_line", "exec_command", "copy_to", "copy_from", "guest_interfaces"]

VIAS = ("auto", "agent", "serial")
AGENT_ANSWER = 3.0  # seconds a listening agent has to answer the handshake (else: the serial shell, the lease)
CHUNK = MAX_CHUNK  # bytes per guest-file-read/-write: fewer round trips, each bounded
IDLE_READS = 10.0  # seconds of reads of a guest file that give nothing without ending it, before a copy fails
POLL_FIRST, POLL_MAX = 0.002, 0.05  # seconds between guest-exec-status polls: short ones first, then longer
SHELL = "/bin/sh"  # what the agent runs a command line with: the one shell POSIX promises
# The command line ($1) in a process group of its own where the guest has setsid (util-linux, busybox), so that a
# timeout ends what it started too (setsid in a process that leads no group keeps its pid: the agent's pid for it
# is the group's id); else in the agent's group, where a timeout ends the shell alone.
OWN_GROUP = 'command -v setsid >/dev/null 2>&1 && exec setsid "$0" -c "$1"; exec "$0" -c "$1"'

Progress = Callable[[float], None]  # percent done, as every long operation of the core API reports it


def shell_line(command: list[str] | str) -> str:
    """One shell command line: a list is an argv, each argument quoted; a string is taken as it is."""
    return command if isinstance(command, str) else shlex.join(command)


def exec_command(ctx: VmContext, command: list[str] | str, timeout: float, via: str, *,
                 wait: bool = True) -> ExecResult:
    """Run ``command`` in the guest, through the agent or the serial shell as ``via`` says (auto: the agent
    when one answers and runs commands); ``wait=False``: started in the background, its pid returned."""
    line = shell_line(command)
    try:
        result = _exec_waiting(ctx, line if wait else _in_background(line), timeout, via)
    except (GuestTimeoutError, AgentError) as exc:  # no answer, or not in time
        raise _paused_meanwhile(ctx, exc) from exc.__cause__
    return result if wait else _started(result, command)


def _paused_meanwhile(ctx: VmContext, exc: GuestError) -> GuestError:
    """``exc``, or why the guest did not answer when the VM was paused while its command ran (QEMU pauses it
    by itself when a disk write finds the datastore full: a command writing there would wait out its timeout)."""
    try:
        observed = ctx.vmm.observe()
    except HvError:
        return exc  # the question's own failure is not the answer's
    if observed.state is not VmState.PAUSED:
        return exc
    hint = (FAULTS[observed.fault].format(name=ctx.name) if observed.fault
            else f"resume it (minivisor vm resume {ctx.name}) and run the command again")
    return GuestTimeoutError(f"{exc.message}: the VM is paused ({observed.fault or 'paused'}), so its guest "
                             "cannot answer", hint=hint)


def _exec_waiting(ctx: VmContext, line: str, timeout: float, via: str) -> ExecResult:
    if via != "serial":
        agent = _agent(ctx, timeout if via == "agent" else 0.0, required=via == "agent")
        if agent is not None:
            with agent:
                try:
                    return _exec_by_agent(agent, line, timeout)
                except AgentCommandError as exc:
                    # an agent that starts no commands (qemu-ga --block-rpcs, RHEL's default): nothing ran, so
                    # auto goes on to the serial shell, as it does when no agent answers
                    if via == "agent" or (exc.command, exc.error_class) != ("guest-exec", "CommandNotFound"):
                        raise
    _check_for_serial(line)
    fd = console_lock(ctx.paths.runtime_dir)
    try:
        return run_command(ctx.paths.console_socket, line, timeout)
    finally:
        os.close(fd)


def _check_for_serial(line: str) -> None:
    """A command line the serial shell takes as typed. The guest's terminal acts on control characters before
    its shell reads them (Ctrl-U erases the line typed so far, Ctrl-C discards it, Tab may complete): the script
    around the command lost its start, the exec waited out its timeout, and the shell stayed wedged for the
    next one."""
    if "\n" in line:
        raise ArgumentError("the command contains a newline, which the serial shell cannot take",
                            hint="pass one command line (use ';' between commands), or use a guest with the agent")
    control = next((c for c in line if ord(c) < 0x20 or ord(c) == 0x7F), None)
    if control is not None:
        raise ArgumentError(f"the command contains the control character {control!r}, which the guest's terminal "
                            "would act on before its serial shell reads it",
                            hint="write it with printf escapes (printf '\\025'), or use a guest with the agent "
                                 "(--via agent)")


def copy_to(ctx: VmContext, host_path: Path, guest_path: str, progress: Progress | None) -> dict:
    """Copy the host's regular file ``host_path`` (its last component never a link) to ``guest_path``."""
    fd = _open_host_source(host_path)
    with os.fdopen(fd, "rb") as source, _required_agent(ctx) as agent:
        size, done = os.fstat(source.fileno()).st_size, 0
        handle = agent.file_open(guest_path, "wb")
        try:
            while chunk := source.read(CHUNK):
                agent.file_write(handle, chunk)
                done += len(chunk)
                _report(progress, done, size)
        finally:
            agent.file_close(handle)
    return {"host_path": str(host_path), "guest_path": guest_path, "bytes": done}


def copy_from(ctx: VmContext, guest_path: str, host_path: Path, progress: Progress | None) -> dict:
    """Copy the guest's ``guest_path`` to ``host_path``, written whole or not at all (temp + rename, in the
    folder the user named; a link at ``host_path`` is replaced, never followed)."""
    with _required_agent(ctx) as agent:
        size = _guest_size(agent, guest_path)
        handle = agent.file_open(guest_path, "rb")
        try:
            with _host_target(host_path) as target:
                done, eof, idle = 0, False, _Idle(guest_path)
                while not eof:
                    chunk, eof = agent.file_read(handle, CHUNK)
                    idle.check(bool(chunk) or eof)
                    target.write(chunk)
                    done += len(chunk)
                    _report(progress, done, max(size, done))
        finally:
            agent.file_close(handle)
    return {"host_path": str(host_path), "guest_path": guest_path, "bytes": done}


class _Idle:
    """Reads of a guest file that give no bytes and do not end it: a pause, then the next read. Each answer
    comes at once, so no timeout ends them: an agent that answered so forever held ``vm copy-from`` (and a
    service's worker) forever. After IDLE_READS seconds without a byte, the copy fails."""

    def __init__(self, guest_path: str) -> None:
        self.guest_path, self.since = guest_path, None

    def check(self, progressed: bool) -> None:
        if progressed:
            self.since = None
            return
        now = time.monotonic()
        self.since = self.since if self.since is not None else now
        if now - self.since > IDLE_READS:
            raise GuestError(f"the guest's {excerpt(self.guest_path)} gave no data for {IDLE_READS:.0f} s "
                             "and did not end", hint="copy a regular file (not a pipe or a device); "
                                                     "nothing was written on the host")
        time.sleep(POLL_MAX)


def guest_interfaces(ctx: VmContext) -> list[GuestInterface] | None:
    """The guest's interfaces and addresses as its agent reports them; None without an agent answering, or
    with one that refuses the command (a qemu-ga with it blocked) or answers it with nonsense: ``vm ip`` still
    says what the host knows (its reservations, its leases), which a guest cannot take away."""
    agent = _agent(ctx, 0.0, required=False)
    if agent is None:
        return None
    with agent:
        try:
            return agent.network_interfaces()
        except AgentError:
            return None


# -- through the agent ----------------------------------------------------------------
def _agent(ctx: VmContext, wait: float, *, required: bool) -> AgentSession | None:
    """A synchronised session with the guest's agent (open: the caller closes it), waiting up to ``wait`` s
    for one to listen (0: it listens now, or there is none) and AGENT_ANSWER s more for it to answer;
    None (or AgentError if ``required``) when none does."""
    deadline = time.monotonic() + wait
    while not ctx.vmm.agent_listening():  # no agent yet (a guest still booting) or none at all
        if time.monotonic() >= deadline:
            if not required:
                return None
            raise AgentError(f"no guest agent listens in {ctx.name!r}",
                             hint="install and start qemu-guest-agent in the guest (its channel, "
                                  "org.qemu.guest_agent.0, is there), or use --via serial")
        time.sleep(0.1)
    session = AgentSession(ctx.paths.agent_socket, sync_timeout=max(AGENT_ANSWER, deadline - time.monotonic()))
    try:
        return session.open()
    except AgentError:
        if required:
            raise
        return None  # it listens but does not answer as an agent: the serial shell, the DHCP lease


@contextlib.contextmanager
def _required_agent(ctx: VmContext) -> Iterator[AgentSession]:
    agent = _agent(ctx, AGENT_ANSWER, required=True)
    assert agent is not None
    with agent:
        yield agent


def _exec_by_agent(agent: AgentSession, line: str, timeout: float) -> ExecResult:
    deadline = time.monotonic() + timeout
    pid = agent.exec(SHELL, ["-c", OWN_GROUP, SHELL, line])
    pause = POLL_FIRST
    while not (status := agent.exec_status(pid)).exited:
        if time.monotonic() > deadline:
            _kill(agent, pid)
            # the agent answers once the command's output is closed: a job it left in the background still holds it
            raise GuestTimeoutError(f"the command {excerpt(line)} did not finish within {timeout:.0f} s: "
                                    "killed", hint="raise --timeout for a command that takes longer; a job it "
                                    "starts in the background keeps it running unless its output goes elsewhere "
                                    "(job >/dev/null 2>&1 &), or use --no-wait")
        time.sleep(pause)
        pause = min(pause * 1.5, POLL_MAX)
    if status.truncated:
        raise GuestError(f"the command {excerpt(line)} printed more than the guest agent keeps "
                         f"({MAX_OUTPUT // (1024 * 1024)} MiB)",
                         hint="redirect its output to a file in the guest, and copy it: minivisor vm copy-from")
    # a command killed by a signal exits as a shell reports it: 128 + the signal's number
    code = status.exit_code if status.exit_code is not None else 128 + (status.signal or 0)
    return ExecResult(status.stdout.decode(errors="replace"), code, status.stderr.decode(errors="replace"),
                      via="agent")


def _in_background(line: str) -> str:
    """A shell line that starts ``line`` in the background, holding none of the shell's output (so that nothing
    waits for it), in a session of its own where the guest has setsid, and prints its pid."""
    return f"{SHELL} -c {shlex.quote(OWN_GROUP)} {SHELL} {shlex.quote(line)} </dev/null >/dev/null 2>&1 & echo $!"


def _started(result: ExecResult, command: list[str] | str) -> ExecResult:
    """The result of :func:`_in_background`'s line: the started command's pid."""
    pid = result.output.strip()
    # as many digits as a pid has: the guest prints what it likes here
    if result.exit_code != 0 or not is_number(pid, 10):
        raise GuestError(f"the guest could not start {excerpt(shell_line(command))} in the background: "
                         f"{excerpt((result.output + result.stderr).strip() or f'exit {result.exit_code}')}",
                         hint="run it waiting for it (without --no-wait) to see what it says")
    return replace(result, output="", pid=int(pid))


def _kill(agent: AgentSession, pid: int) -> None:
    """End a command past its timeout: its process group (what it started, in the background too), else the
    shell the agent started and what runs in its place."""
    with contextlib.suppress(HvError):
        agent.exec(SHELL, ["-c", f"kill -KILL -- -{pid} 2>/dev/null || kill -KILL {pid}"])
        agent.exec_status(pid)  # the agent forgets a process once its end is read


def _guest_size(agent: AgentSession, guest_path: str) -> int:
    """The size of a guest file, for progress (0 if the guest cannot say: the copy goes on)."""
    try:
        result = _exec_by_agent(agent, shlex.join(["wc", "-c", guest_path]), 10.0)
        return int(result.output.split()[0]) if result.exit_code == 0 else 0
    except (HvError, ValueError, IndexError):
        return 0


def _report(progress: Progress | None, done: int, size: int) -> None:
    if progress is not None:
        progress(100.0 * done / size if size else 100.0)


# -- the host's side ----------------------------------------------------------------------
def _open_host_source(path: Path) -> int:
    """A descriptor on the regular file ``path``; its last component must not be a link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ArgumentError(f"cannot read {excerpt(str(path), 200)}: {exc.strerror}",
                            hint="give a regular file of the host (not a link to one)") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ArgumentError(f"{excerpt(str(path), 200)} is not a regular file", hint="give a file, not a folder")
    return fd


@contextlib.contextmanager
def _host_target(path: Path) -> Iterator:
    """A file to write, which becomes ``path`` only once whole: a temp file in ``path``'s folder, renamed over
    it (a link there is replaced, not followed); removed if the copy fails."""
    path = Path(path)
    try:
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise ArgumentError(f"cannot write into {excerpt(str(path.parent), 200)}: {exc.strerror}",
                            hint="give a file's path in an existing folder") from None
    temp = f".{path.name}.{secrets.token_hex(4)}.partial"
    try:
        _refuse_folder(folder, path)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666,
                     dir_fd=folder)
        try:
            with os.fdopen(fd, "wb") as out:
                yield out
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, path.name, src_dir_fd=folder, dst_dir_fd=folder)
            os.fsync(folder)
        except BaseException as exc:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp, dir_fd=folder)
            if isinstance(exc, OSError):  # the guest sends what it likes, as much as it likes
                raise _write_failed(path, exc) from exc
            raise
    finally:
        os.close(folder)


def _write_failed(path: Path, exc: OSError) -> HostError:
    """The host file system refused the copy (full, a quota, a file-size limit, an I/O error): one line, not an
    internal error; nothing of the copy is left."""
    if is_out_of_space(exc):
        return NoSpaceError(f"no space left to write {excerpt(str(path), 200)}: nothing was written",
                            hint="free space on its file system, or copy a smaller file, then retry")
    return host_refused(f"write {excerpt(str(path), 200)} (nothing was written)", exc)


def _refuse_folder(folder: int, path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISDIR(os.stat(path.name, dir_fd=folder, follow_symlinks=False).st_mode):
            raise ArgumentError(f"{excerpt(str(path), 200)} is a folder", hint="give the path of the file to write")
