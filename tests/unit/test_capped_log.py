"""The console log is capped with one previous generation, and its name never goes missing while it rotates."""

from __future__ import annotations

import threading
import time

from minivisor.vmm.console import wait_for_line
from minivisor.vmm.relay import CappedLog


def test_the_log_keeps_at_most_its_cap_and_the_generation_before(tmp_path):
    path = tmp_path / "serial.log"
    log = CappedLog(str(path), cap=100)
    for i in range(25):
        log.write(b"line %02d\n" % i)  # 8 bytes each: 12 fit under the cap
    assert path.read_bytes() == b"".join(b"line %02d\n" % i for i in range(24, 25))
    assert (tmp_path / "serial.log.1").read_bytes() == b"".join(b"line %02d\n" % i for i in range(12, 24))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["serial.log", "serial.log.1"]


def test_a_reader_always_finds_the_log_while_it_rotates(tmp_path):
    """A reader of serial.log (a test, `tail`, the demo) racing a flood of rotations never finds it missing."""
    path = tmp_path / "serial.log"
    log = CappedLog(str(path), cap=64)
    done, missing = threading.Event(), []

    def read() -> None:
        while not done.is_set():
            try:
                path.read_bytes()
            except FileNotFoundError:
                missing.append(1)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(4_000):
            log.write(b"x" * 40)  # every other write rotates
    finally:
        done.set()
        reader.join()
    assert not missing
    assert path.stat().st_size == 40 and (tmp_path / "serial.log.1").stat().st_size == 40


def test_a_rotation_left_halfway_by_a_killed_relay_does_not_stop_the_next(tmp_path):
    path = tmp_path / "serial.log"
    (tmp_path / "serial.log.new").write_bytes(b"stale")
    log = CappedLog(str(path), cap=10)
    log.write(b"12345678")
    log.write(b"abcdefgh")
    assert path.read_bytes() == b"abcdefgh" and (tmp_path / "serial.log.1").read_bytes() == b"12345678"
    assert not (tmp_path / "serial.log.new").exists()


def test_a_line_waited_for_is_found_across_rotations_of_the_log(tmp_path):
    """The demo and the tests wait for a guest's line in serial.log: said just before a rotation (then in
    serial.log.1) or after it (in a new, shorter serial.log), it is found all the same."""
    path = tmp_path / "serial.log"
    log = CappedLog(str(path), cap=4096)
    log.write(b"booting\n")
    for needle, said in (("ONE", b"ONE said before the rotation\n" + b"x" * 4090),
                         ("TWO", b"y" * 4090 + b"TWO said after it\n")):
        found: list[str] = []
        waiter = threading.Thread(target=lambda: found.append(wait_for_line(path, needle, timeout=10)))
        waiter.start()
        time.sleep(0.1)  # the waiter has read the log as it was
        for start in range(0, len(said), 1000):
            log.write(said[start:start + 1000])  # rotates once on the way
        waiter.join()
        assert found and found[0].endswith(said.split(b"\n")[0][-20:].decode())
