"""A hostile guest's serial shell: it sees the command minivisor types (its markers included) and answers
what it likes. ``vm exec --via serial`` fails with one clear GuestError, never an internal error.

The guest's end of the console is played by a thread on a UNIX socket: it answers the probe as a shell
does, then the command's script with what each test makes it say."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from minivisor.core.guest import exec_command
from minivisor.errors import ArgumentError, GuestError
from minivisor.vmm.console import run_command

Answer = Callable[[str], bytes]  # what the hostile shell prints for a command script, given its tag


class HostileShell:
    def __init__(self, path: Path, answer: Answer) -> None:
        self.server, self.answer = socket.create_server(str(path), family=socket.AF_UNIX), answer
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        seen = b""
        with conn:
            try:
                while chunk := conn.recv(65536):
                    seen += chunk
                    if probe := re.search(rb"printf '%s_%s\\n' __MVR (\w+)\n", seen):
                        conn.sendall(b"__MVR_" + probe.group(1) + b"\n")
                        seen = seen[probe.end():]
                    if command := re.search(rb"printf '%s_%s\\n' __MVB (\w+);.*\n", seen):
                        conn.sendall(self.answer(command.group(1).decode()))
                        seen = b""
            except OSError:
                pass

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def shell(tmp_path, request):
    """A console socket the hostile shell answers on with ``answer``."""
    def make(answer: Answer) -> Path:
        path = tmp_path / "console.sock"
        request.addfinalizer(HostileShell(path, answer).close)
        return path
    return make


def test_an_honest_answer_is_read(shell):
    console = shell(lambda tag: f"__MVB_{tag}\nhello\r\n__MVE_{tag}_3\n".encode())
    result = run_command(console, "echo hello; exit 3", 10)
    assert (result.output, result.exit_code) == ("hello\n", 3)


@pytest.mark.parametrize("status", ["9" * 5000, "256", "99999999999999999999"])
def test_an_exit_status_no_shell_gives_is_one_clear_error(shell, status):
    # 5,000 digits: more than Python converts to an int (ValueError), which was an internal error
    console = shell(lambda tag: f"__MVB_{tag}\nout\n__MVE_{tag}_{status}\n".encode())
    with pytest.raises(GuestError) as caught:
        run_command(console, "true", 10)
    message = caught.value.one_line()
    assert "exit status" in message and len(message) < 300 and "\n" not in message, message


@pytest.mark.parametrize("command", ["echo one\x15echo two", "echo A\x03echo B", "printf 'x\ty'", "a\x7fb", "a\x1b[2Jb"])
def test_a_control_character_the_guests_terminal_acts_on_is_refused_before_typing(command):
    """Typed on the serial console, Ctrl-U erased the start of the script around the command and Ctrl-C
    discarded it: the exec waited out its timeout ("nor could it be killed") and the guest's shell stayed
    wedged for the next exec. Refused before the console is touched (no VM here: ctx is None)."""
    with pytest.raises(ArgumentError, match="contains the control character") as caught:
        exec_command(None, command, 10, "serial")
    assert "\n" not in caught.value.one_line()
