"""A hostile guest agent: garbage, huge lines, wrong types, answers for other requests. The client
(minivisor.vmm.agent) stays bounded in memory and time and fails with one clear AgentError; nothing
the guest sent is echoed beyond a short excerpt, and no host file is written from a broken copy.

The guest's end of the channel is played by a thread on a UNIX socket: it answers the handshake
as qemu-ga does, then what each test makes it say."""

from __future__ import annotations

import base64
import json
import resource
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from minivisor.errors import AgentCommandError, AgentError
from minivisor.vmm.agent import MAX_CHUNK, MAX_MESSAGE, MAX_OUTPUT, AgentSession

Reply = Callable[[dict], bytes]  # what the hostile agent sends for one request


class HostileAgent:
    """Serves one client: answers guest-sync-delimited correctly, then each request with ``reply``."""

    def __init__(self, folder: Path, reply: Reply) -> None:
        self.path = folder / f"agent-{len(list(folder.glob('agent-*.sock')))}.sock"
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(self.path))
        self.server.listen(1)
        self.reply = reply
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn, conn.makefile("rb") as lines:
            try:
                for line in lines:
                    request = json.loads(line.lstrip(b"\xff"))
                    if request["execute"] == "guest-sync-delimited":
                        answer = b"\xff" + json.dumps({"return": request["arguments"]["id"]}).encode() + b"\n"
                    else:
                        answer = self.reply(request)
                    conn.sendall(answer)
            except OSError:
                pass  # the client hung up, as it should after a bad answer

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def hostile(tmp_path):
    made: list[HostileAgent] = []

    def make(reply: Reply) -> AgentSession:
        made.append(HostileAgent(tmp_path, reply))
        return AgentSession(made[-1].path, timeout=5)
    yield make
    for agent in made:
        agent.close()


def answer(request: dict, value: object) -> bytes:
    return json.dumps({"return": value, "id": request.get("id")}).encode() + b"\n"


def fails_cleanly(session: AgentSession, call: Callable[[AgentSession], object], *expected: str) -> str:
    with pytest.raises(AgentError) as caught:
        with session:
            call(session)
    message = caught.value.one_line()
    assert len(message) < 600 and "\n" not in message
    assert all(text in message for text in expected), message
    return message


SECRET = "GUEST-SECRET-" + "x" * 200


@pytest.mark.parametrize("garbage", [b"this is not json\n", b"[1, 2, 3]\n", b'"' + SECRET.encode() + b'"\n',
                                     b"\x00\x01\x02\xfe\n",
                                     b"[" * 100_000 + b"\n", b'{"a":' * 50_000 + b"\n"])  # deeper than json goes
def test_garbage_is_one_clear_error_with_a_short_excerpt(hostile, garbage):
    message = fails_cleanly(hostile(lambda request: garbage), AgentSession.ping, "not a message")
    assert SECRET not in message


def test_a_huge_line_is_cut_off_at_the_bound_not_read_whole(hostile):
    # MAX_MESSAGE bytes plus a chunk, no newline: a ping's answer may be 256 KiB at most
    flood = b"{" + b"a" * (8 * 1024 * 1024)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fails_cleanly(hostile(lambda request: flood), AgentSession.ping, "over 262144 bytes")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024  # KiB: no 8 MiB copies kept


def test_an_exec_status_over_the_protocols_bound_is_refused(hostile):
    def reply(request: dict) -> bytes:
        if request["execute"] == "guest-exec":
            return answer(request, {"pid": 1})
        return b'{"return": {"exited": true, "out-data": "' + b"A" * (MAX_MESSAGE + 10) + b'"}}\n'
    fails_cleanly(hostile(reply), lambda s: s.exec_status(s.exec("/bin/true", [])), "over")


@pytest.mark.parametrize("status, expected", [
    ({"exited": "yes"}, "no bool 'exited'"),
    ({"exited": True, "exitcode": True}, "exitcode"),  # a bool is no exit code
    ({"exited": True, "exitcode": "0"}, "exitcode"),
    ({"exited": True, "exitcode": 2**32}, "exitcode 4294967296, which no process has"),  # a DWORD at most
    ({"exited": True, "exitcode": -1}, "exitcode -1"),
    ({"exited": True, "signal": 10**30}, "signal 1000"),
    ({"exited": True, "exitcode": 0, "out-data": "not base64!"}, "not base64"),
    ({"exited": True, "exitcode": 0, "out-data": 5}, "out-data"),
    ({"exited": True, "exitcode": 0, "out-data": "QUFB" * (MAX_OUTPUT // 3 + 1)}, "more than"),
    ([], "not an object"),
])
def test_wrong_types_in_an_exec_status_are_refused(hostile, status, expected):
    def reply(request: dict) -> bytes:
        return answer(request, {"pid": 7} if request["execute"] == "guest-exec" else status)
    fails_cleanly(hostile(reply), lambda s: s.exec_status(s.exec("/bin/true", [])), expected)


@pytest.mark.parametrize("read, expected", [
    ({"count": 5, "buf-b64": base64.b64encode(b"1234").decode(), "eof": False}, "counted 5 bytes but sent 4"),
    ({"count": 9, "buf-b64": base64.b64encode(b"x" * (MAX_CHUNK + 1)).decode(), "eof": True}, "more than"),
    ({"count": 4, "buf-b64": base64.b64encode(b"1234").decode(), "eof": "no"}, "eof"),
])
def test_a_file_read_that_lies_about_its_size_is_refused(hostile, read, expected):
    fails_cleanly(hostile(lambda request: answer(request, read)), lambda s: s.file_read(1, MAX_CHUNK), expected)


@pytest.mark.parametrize("interfaces, expected", [
    ({"name": "eth0"}, "not a list"),
    ([{"name": "e" * 100000}], "100000 characters"),
    ([{"name": "eth0", "ip-addresses": [{"ip-address": "10.0.0.1; rm -rf /", "prefix": 24}]}], "address"),
    ([{"name": "eth0", "ip-addresses": [{"ip-address": "10.0.0.1", "prefix": 99}]}], "prefix length 99"),
    ([{"name": 5}], "name"),
])
def test_hostile_network_interfaces_are_refused(hostile, interfaces, expected):
    fails_cleanly(hostile(lambda request: answer(request, interfaces)), AgentSession.network_interfaces, expected)


def test_an_answer_for_a_request_never_made_is_refused(hostile):
    fails_cleanly(hostile(lambda request: answer({"id": "someone-else"}, {})), AgentSession.ping,
                  "another request")


def test_a_silent_agent_times_out(tmp_path):
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(tmp_path / "agent.sock"))
    server.listen(1)  # accepts (the kernel does), never answers: a guest without qemu-ga
    try:
        with pytest.raises(AgentError, match="did not answer guest-sync-delimited in time"):
            AgentSession(tmp_path / "agent.sock", timeout=0.5).open()
    finally:
        server.close()


def test_a_refusal_carries_the_agents_reason_cut_short(hostile):
    def reply(request: dict) -> bytes:
        error = {"class": "GenericError", "desc": "failed to open: " + SECRET}
        return json.dumps({"error": error, "id": request["id"]}).encode() + b"\n"
    with pytest.raises(AgentCommandError) as caught, hostile(reply) as session:
        session.file_open("/etc/shadow", "rb")
    assert caught.value.command == "guest-file-open" and SECRET not in caught.value.message
    assert caught.value.error_class == "GenericError"  # as sent: callers compare it (an excerpt was quoted)


@pytest.mark.parametrize("error_class", ["\x1b]0;owned\x07", "A" * 5000, 7, None])
def test_an_error_class_that_is_no_short_name_is_not_kept(hostile, error_class):
    def reply(request: dict) -> bytes:
        return json.dumps({"error": {"class": error_class, "desc": "no"}, "id": request["id"]}).encode() + b"\n"
    with pytest.raises(AgentCommandError) as caught, hostile(reply) as session:
        session.file_open("/etc/hostname", "rb")
    assert caught.value.error_class == "?"


@pytest.mark.parametrize("command, call, words", [
    ("guest-exec", lambda session: session.exec("/bin/true", []), "--via serial"),
    ("guest-file-open", lambda session: session.file_open("/etc/hostname", "rb"), "allow it there")])
def test_a_command_the_guests_agent_does_not_offer_says_how_to_allow_it(hostile, command, call, words):
    """qemu-ga started with --block-rpcs (RHEL blocks guest-exec by default) answers CommandNotFound; the hint
    was to check the guest path and its permissions."""
    def reply(request: dict) -> bytes:
        error = {"class": "CommandNotFound", "desc": f"Command {request['execute']} has been disabled"}
        return json.dumps({"error": error, "id": request["id"]}).encode() + b"\n"
    message = fails_cleanly(hostile(reply), call, f"refused {command}: 'Command {command} has been disable",
                            "qemu-ga does not offer", words)
    assert "permissions" not in message


def test_a_shutdown_the_guest_cannot_do_is_a_refusal_and_silence_is_obedience(hostile):
    def refuse(request: dict) -> bytes:
        return json.dumps({"error": {"class": "GenericError", "desc": "child process has failed"}}).encode() + b"\n"
    with pytest.raises(AgentCommandError, match="refused guest-shutdown"), hostile(refuse) as session:
        session.shutdown(refusal_within=2)
    with hostile(lambda request: b"") as session:
        session.shutdown(refusal_within=0.2)  # qemu-ga answers nothing when it obeys


@pytest.mark.timeout(30)  # without the bound, this copy never ends
def test_a_file_that_gives_nothing_and_never_ends_fails_the_copy_and_writes_nothing(hostile, tmp_path, monkeypatch):
    """Empty reads that are not the end come back at once, so no answer's timeout ends them: the copy waits
    IDLE_READS seconds for a byte, then fails (it went on forever)."""
    from minivisor.core import guest
    from minivisor.errors import GuestError

    def reply(request: dict) -> bytes:
        if request["execute"] == "guest-file-read":
            return answer(request, {"count": 0, "buf-b64": "", "eof": False})
        return answer(request, 1 if request["execute"] == "guest-file-open" else {})
    session = hostile(reply)
    monkeypatch.setattr(guest, "_required_agent", lambda ctx: session.open())
    monkeypatch.setattr(guest, "_guest_size", lambda agent, path: 0)
    monkeypatch.setattr(guest, "IDLE_READS", 0.5, raising=False)
    (tmp_path / "out").mkdir()
    with pytest.raises(GuestError, match="gave no data for 0 s and did not end"):
        guest.copy_from(None, "/run/fifo", tmp_path / "out" / "copy", None)
    assert list((tmp_path / "out").iterdir()) == []


def test_a_guest_file_larger_than_the_host_takes_is_one_error_and_leaves_nothing(hostile, tmp_path, monkeypatch):
    """The guest decides how much a copy writes: a host file-size limit (RLIMIT_FSIZE: EFBIG; a full file system
    goes the same way) ended `vm copy-from` in an internal error (OSError)."""
    import signal

    from minivisor.core import guest
    from minivisor.errors import HostError

    data = base64.b64encode(b"z" * MAX_CHUNK).decode()

    def reply(request: dict) -> bytes:  # a file that never ends
        if request["execute"] == "guest-file-read":
            return answer(request, {"count": MAX_CHUNK, "buf-b64": data, "eof": False})
        return answer(request, 1 if request["execute"] == "guest-file-open" else {})
    session = hostile(reply)
    monkeypatch.setattr(guest, "_required_agent", lambda ctx: session.open())
    monkeypatch.setattr(guest, "_guest_size", lambda agent, path: 0)
    (tmp_path / "out").mkdir()
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (3 * MAX_CHUNK, limits[1]))
    try:
        with pytest.raises(HostError) as caught:
            guest.copy_from(None, "/dev/zero", tmp_path / "out" / "copy", None)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous)
    assert "cannot write" in caught.value.one_line() and "File too large" in caught.value.one_line()
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("printed", ["\u00b2", "9" * 5000, "12 34", "0x10"])
def test_a_background_pid_that_is_no_number_is_one_clear_error(hostile, monkeypatch, printed):
    """`vm exec --no-wait` reads the pid the guest's shell prints: "²" passed str.isdigit() and 5,000 digits
    Python's int(), both internal errors."""
    from minivisor.core import guest
    from minivisor.errors import GuestError

    def reply(request: dict) -> bytes:
        if request["execute"] == "guest-exec":
            return answer(request, {"pid": 7})
        out = base64.b64encode(printed.encode() + b"\n").decode()
        return answer(request, {"exited": True, "exitcode": 0, "out-data": out})
    session = hostile(reply)
    monkeypatch.setattr(guest, "_agent", lambda ctx, wait, required: session.open())
    with pytest.raises(GuestError, match="could not start 'sleep 60' in the background"):
        guest.exec_command(None, "sleep 60", 10, "agent", wait=False)


@pytest.mark.parametrize("reply", [
    lambda request: answer(request, [{"name": "eth0", "ip-addresses": [{"ip-address": "10.0.0.2", "prefix": 99}]}]),
    lambda request: json.dumps({"error": {"class": "CommandNotFound", "desc": "blocked"}, "id": request["id"]}).encode()
    + b"\n",
], ids=["nonsense", "refused"])
def test_vm_ip_keeps_what_the_host_knows_when_the_agent_answers_nonsense_or_refuses(hostile, monkeypatch, reply):
    """An agent that synchronises, then answers guest-network-get-interfaces with nonsense (or refuses it) left
    `vm ip` with one error and none of the host's reservations and leases: the guest hid them."""
    from minivisor.core import guest

    session = hostile(reply)
    monkeypatch.setattr(guest, "_agent", lambda ctx, wait, required: session.open())
    assert guest.guest_interfaces(None) is None


def test_a_windows_exit_code_is_taken_and_vm_exec_exits_nonzero_with_it(hostile, monkeypatch):
    """qemu-ga on Windows reports GetExitCodeProcess's DWORD (0xC0000005: an access violation); `vm exec` exits
    with at most 255, as an exit status holds 8 bits: 256 and 0xC0000100 were an exit 0, success."""
    from minivisor.cli import vm as cli_vm
    from minivisor.core.guest import _exec_by_agent

    def reply(request: dict) -> bytes:
        if request["execute"] == "guest-exec":
            return answer(request, {"pid": 7})
        return answer(request, {"exited": True, "exitcode": 0xC0000100})
    with hostile(reply) as session:
        result = _exec_by_agent(session, "crash.exe", 10)
    assert result.exit_code == 0xC0000100

    class Stub:
        def exec_in_vm(self, *args, **kwargs):
            return result
    monkeypatch.setattr(cli_vm, "hv", lambda: Stub())
    assert cli_vm.vm_exec("win", ["crash.exe"], 10.0, "agent", True, False) == 255
