"""Two processes that need the appliance image at once build it once: the second waits for the first's lock."""

from __future__ import annotations

import os
import threading

from minivisor.locks import try_lock
from minivisor_appliance.build import _BUILD_LOCK, _one_build_at_a_time


def test_a_second_build_waits_for_the_first_to_end(tmp_path):
    held = try_lock(tmp_path / _BUILD_LOCK)  # another process's build
    said: list[str] = []
    inside = threading.Event()

    def build() -> None:
        with _one_build_at_a_time(tmp_path, said.append):
            inside.set()

    waiter = threading.Thread(target=build)
    waiter.start()
    try:
        assert not inside.wait(0.3), "built while another build held the lock"
        assert said == ["waiting for another build of the appliance to finish"]
    finally:
        os.close(held)
    waiter.join(10)
    assert inside.is_set()
