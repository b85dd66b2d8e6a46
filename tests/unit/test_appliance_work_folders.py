"""A killed appliance build leaves its work folder (a kernel's source is 1.3 GB): the next build removes it,
and never the folder of a build that still runs."""

from __future__ import annotations

import os
import time

from minivisor.locks import try_lock
from minivisor_appliance.build import remove_abandoned_builds


def _work(cache, name: str, *, lock: bool, age: float = 0.0):
    folder = cache / name
    (folder / "linux-source").mkdir(parents=True)
    (folder / "linux-source" / "Makefile").write_text("big\n")
    if lock:
        (folder / ".lock").touch()
    if age:
        then = time.time() - age
        os.utime(folder, (then, then))
    return folder


def test_a_killed_builds_folder_goes_and_a_running_builds_stays(tmp_path):
    killed = _work(tmp_path, ".build-killed", lock=True)  # its lock's holder died: nobody holds it
    running = _work(tmp_path, ".build-running", lock=True)
    held = try_lock(running / ".lock")
    try:
        remove_abandoned_builds(tmp_path)
        assert not killed.exists()
        assert (running / "linux-source" / "Makefile").read_text() == "big\n"
    finally:
        os.close(held)


def test_a_folder_without_a_lock_goes_only_once_a_day_old(tmp_path):
    old = _work(tmp_path, ".build-old", lock=False, age=2 * 24 * 3600)
    new = _work(tmp_path, ".build-new", lock=False)  # maybe a build that has not taken its lock yet
    other = _work(tmp_path, "debs", lock=False, age=2 * 24 * 3600)  # not a work folder at all
    remove_abandoned_builds(tmp_path)
    assert not old.exists() and new.exists() and other.exists()
