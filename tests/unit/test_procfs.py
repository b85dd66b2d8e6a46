"""procfs, the one module that parses /proc: who holds a file, and waiting for a process to end."""

from __future__ import annotations

import os
import socket
import subprocess

from minivisor import procfs


def test_the_holders_of_a_file_or_a_socket_are_the_processes_with_it_open(tmp_path):
    path = tmp_path / "lock"
    with open(path, "w"), socket.socket() as sock:
        assert os.getpid() in procfs.holders_of({str(path)})
        assert list(procfs.holders_of({f"socket:[{os.fstat(sock.fileno()).st_ino}]"}, [os.getpid()])) == [os.getpid()]
    assert os.getpid() not in procfs.holders_of({str(path)}, [os.getpid()])


def test_waiting_for_a_process_to_end_says_whether_it_did():
    child = subprocess.Popen(["sleep", "60"])
    try:
        assert procfs.wait_gone(child.pid, 0) is False
        child.kill()
        assert procfs.wait_gone(child.pid, 30) is True  # a zombie until reaped: ended all the same
    finally:
        child.kill()
        child.wait()
    assert procfs.comm(os.getpid()) is not None
