"""A path's real name (every symlink resolved), asked of the kernel.

``os.path.realpath`` walks a path in Python, one ``lstat`` (and a ``readlink`` per symlink) for each folder
of it: the path policy resolves every file a specfile names and every layer of a disk chain, several times
an operation. The kernel resolves a path in one ``open``: :func:`real_path` opens it ``O_PATH`` (nothing is
read; no device or FIFO is opened) and reads the name the kernel gives that open file.
"""

from __future__ import annotations

import os

__all__ = ["real_path"]

_OPEN_FLAGS = os.O_PATH | os.O_CLOEXEC


def real_path(path: str | os.PathLike[str]) -> str:
    """``os.path.realpath(path)``: the kernel's name for the file ``path`` names, if it is an absolute path that
    names the very same file now; otherwise (no such file, a symlink loop, no ``/proc``, a file deleted or out
    of this process's reach, a pipe's or socket's name) ``os.path.realpath``'s own answer."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError:
        return os.path.realpath(path)
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
        opened = os.fstat(fd)
        named = os.stat(real) if real.startswith("/") else None
    except OSError:
        named = None
    finally:
        os.close(fd)
    if named is None or (named.st_dev, named.st_ino) != (opened.st_dev, opened.st_ino):
        return os.path.realpath(path)
    return real
