"""real_path gives os.path.realpath's answer for every kind of path the path policy meets: symlinks relative and
absolute, chained, dangling and looping, ``..`` after a symlink, trailing slashes, missing folders, FIFOs, devices,
/proc's magic links. The path policy's refusals rest on it (tests/security)."""

from __future__ import annotations

import itertools
import os

from minivisor.realpaths import real_path


def build(tmp_path):
    """A tree with every kind of link; returns the names to resolve, relative to ``tmp_path``."""
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c" / "disk.qcow2").write_bytes(b"x")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_bytes(b"s")
    os.mkfifo(tmp_path / "a" / "fifo")
    links = {"rel": "a/b", "abs": str(tmp_path / "a" / "b" / "c"), "chain": "rel/c", "up": "a/b/../../outside",
             "dangling": "nowhere/at/all", "loop1": "loop2", "loop2": "loop1", "self": "self",
             "a/b/c/escape": "../../../outside/secret", "a/b/c/dot": ".", "a/dev": "/dev/null",
             "a/b/toroot": "/", "a/b/c/tofifo": "../../fifo", "a/b/c/tofile": "disk.qcow2"}
    for name, target in links.items():
        os.symlink(target, tmp_path / name)
    names = list(links) + ["a", "a/b/c/disk.qcow2", "a/fifo", "missing", "outside/secret"]
    tails = ["", "/", "/..", "/disk.qcow2", "/c/disk.qcow2", "/../c", "/nope", "/./c/../c/escape", "/secret"]
    return [name + tail for name, tail in itertools.product(names, tails)]


def test_real_path_is_realpath_for_every_kind_of_link(tmp_path):
    names = build(tmp_path)
    for name in names:
        path = str(tmp_path / name)
        assert real_path(path) == os.path.realpath(path), name


def test_real_path_of_relative_and_special_names(tmp_path, monkeypatch):
    build(tmp_path)
    monkeypatch.chdir(tmp_path / "a")
    read, write = os.pipe()
    try:
        for name in ["", ".", "..", "b/c/escape", "../rel/c", "fifo", "/", "/dev/null", "/proc/self/exe",
                     f"/proc/self/fd/{read}", f"/proc/self/root{tmp_path}/chain/c/escape", "/proc/self/cwd/../up"]:
            assert real_path(name) == os.path.realpath(name), name
    finally:
        os.close(read)
        os.close(write)
