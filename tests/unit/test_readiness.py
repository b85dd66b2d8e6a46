"""Waiting for the guest's ready note: woken by the note's rename into the runtime folder (inotify) and by
the VMM's end (pidfd); a stand-in VMM (``sleep``) and notes published as the console relay publishes them."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest

from minivisor.errors import GuestError
from minivisor.vmm.readiness import FolderWatch, wait_for_ready


@pytest.fixture
def vmm():
    process = subprocess.Popen(["sleep", "600"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def publish(folder: Path, name: str, text: str) -> None:
    """As the relay does: a temporary file, renamed into place."""
    (folder / f".{name}.tmp").write_text(text + "\n")
    os.replace(folder / f".{name}.tmp", folder / name)


def note(folder: Path):
    def ready_line() -> str | None:
        try:
            return (folder / "ready").read_text().strip()
        except OSError:
            return None
    return ready_line


def after_the_wait_began(action) -> threading.Thread:
    """Run ``action`` once the waiting thread sleeps (a rename before the watch began is found by the first look)."""
    thread = threading.Timer(0.2, action)
    thread.start()
    return thread


def test_the_note_renamed_into_the_runtime_folder_ends_the_wait(tmp_path, vmm):
    publish(tmp_path, "status", "running")  # another note first: the wait looks again, and sleeps on
    thread = after_the_wait_began(lambda: (publish(tmp_path, "status", "paused"),
                                           publish(tmp_path, "ready", "minivisor-guest: ready")))
    line = wait_for_ready(note(tmp_path), "ready", 60, alive=lambda: vmm.poll() is None,
                          runtime_dir=tmp_path, vmm_pid=vmm.pid)
    thread.join()
    assert line == "minivisor-guest: ready"


def test_a_note_already_there_is_returned_without_waiting(tmp_path, vmm):
    publish(tmp_path, "ready", "up")
    assert wait_for_ready(note(tmp_path), "ready", 60, runtime_dir=tmp_path, vmm_pid=vmm.pid) == "up"


def test_a_vmm_that_ends_ends_the_wait_with_one_clear_error(tmp_path, vmm):
    thread = after_the_wait_began(vmm.kill)
    with pytest.raises(GuestError, match="powered off before its guest said 'ready'"):
        wait_for_ready(note(tmp_path), "ready", 60, alive=lambda: vmm.poll() is None,
                       runtime_dir=tmp_path, vmm_pid=vmm.pid)
    thread.join()


def test_without_a_folder_or_a_pid_to_watch_it_looks_again_and_again(tmp_path):
    with FolderWatch(None, None) as watch:
        assert watch.polling
    with FolderWatch(tmp_path, None) as watch:  # a VMM's end could not wake it: no sleeping on the folder alone
        assert watch.polling
    thread = after_the_wait_began(lambda: publish(tmp_path, "ready", "said"))
    assert wait_for_ready(note(tmp_path), "ready", 60) == "said"
    thread.join()


def test_a_vmm_gone_before_the_watch_began_leaves_it_looking(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    with FolderWatch(tmp_path, gone.pid) as watch:
        assert watch.polling and not watch.fds[1:]


def test_a_wait_given_the_relays_pipe_sleeps_on_it_and_ends_when_the_relay_closes_it(tmp_path, vmm):
    signal, relay_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        with FolderWatch(tmp_path, vmm.pid, signal) as watch:  # no inotify: the pipe is what wakes it
            assert watch.waker == signal and signal not in watch.fds and not watch.polling
        thread = after_the_wait_began(lambda: (publish(tmp_path, "ready", "noted"), os.close(relay_end)))
        assert wait_for_ready(note(tmp_path), "ready", 60, alive=lambda: vmm.poll() is None,
                              runtime_dir=tmp_path, vmm_pid=vmm.pid, relay_signal=signal) == "noted"
        thread.join()
        os.fstat(signal)  # still open: the caller's to close
    finally:
        os.close(signal)


def test_a_relay_gone_without_a_note_leaves_the_wait_looking(tmp_path, vmm):
    signal, relay_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    os.close(relay_end)  # the relay exited before the guest said it was ready
    try:
        thread = after_the_wait_began(lambda: publish(tmp_path, "ready", "late"))
        assert wait_for_ready(note(tmp_path), "ready", 60, alive=lambda: vmm.poll() is None,
                              runtime_dir=tmp_path, vmm_pid=vmm.pid, relay_signal=signal) == "late"
        thread.join()
    finally:
        os.close(signal)
