"""Run a program that may open only the files it is given: qemu-img reading images minivisor checked.

minivisor checks every file a disk's chain names (its layers, a VMDK's extents) before qemu-img opens them,
but qemu-img opens them by name, later: a file swapped for a symlink meanwhile, or a header rewritten to
name another file (a VMDK extent, a qcow2 data file), would have it read a host file into a disk. Run
through :func:`confined_argv`, qemu-img runs under Landlock (Linux 5.13+) with read access to exactly the
checked files (each rule holds the file itself, opened here: a new name does not carry it), the system's
programs and libraries, and write access in the output's folder alone. Whatever else it tries to open
fails with "Permission denied", which minivisor reports as the copy's failure.

Where the kernel has no Landlock (built without it, or not in its ``lsm=`` list) the program runs as it
is, as it always did: the checks before still hold, the window between them and qemu-img's open stays.

This module is the confined program's first step too (``--read DEVICE:INODE:FILE... --write FOLDER... --
PROGRAM ARGS``): it opens each file, refuses one that is no longer the file that was checked (its device and
inode, when given), applies the rules to itself and execs the program, which inherits them.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import sys

from ..dirs import helper_command

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from .layers import Pin

__all__ = ["confined_argv", "confinement", "landlock_abi", "main"]

# linux/landlock.h
_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446  # x86-64 and every other architecture's number
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR, MAKE_REG = 1 << 4, 1 << 5, 1 << 6, 1 << 7, 1 << 8
MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK, MAKE_SYM = 1 << 9, 1 << 10, 1 << 11, 1 << 12
REFER, TRUNCATE = 1 << 13, 1 << 14  # ABI 2, ABI 3
_ABI1 = (1 << 13) - 1
_FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE  # the rights a rule on a file (not a folder) may hold

# What any program needs to start and run (merged /usr: /lib, /bin are links into it); ld.so's cache; /dev/null.
SYSTEM_READ = ("/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc/ld.so.cache", "/etc/localtime")
SYSTEM_WRITE = ("/dev/null",)
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6
_PR_SET_NO_NEW_PRIVS = 38


class _Ruleset(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1  # the kernel's struct landlock_path_beneath_attr is packed
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


@functools.cache
def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 if it has none (not built in, or not among its LSMs)."""
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    version = libc.syscall(_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return max(int(version), 0)


def confinement() -> str:
    """Whether programs run through :func:`confined_argv` are confined here, for ``host info``."""
    abi = landlock_abi()
    if abi < 1:
        return ("unconfined: the kernel has no Landlock (built without it, or not in its lsm= list); qemu-img opens "
                "the checked files by name, as it always did")
    return f"confined to the files minivisor checked (Landlock ABI {abi}{', no TCP' if abi >= 4 else ''})"


def confined_argv(argv: list[str], *, read: list[Pin | str], write: list[str]) -> list[str]:
    """``argv`` run so that it may read only the files ``read`` pins (each still the file that was checked) or
    names (a file minivisor made itself), and the system's, and create, write and remove files only in the
    folders ``write`` names; ``argv`` as it is where the kernel has no Landlock."""
    program = shutil.which(argv[0])
    if program is None or landlock_abi() < 1:
        return argv  # a missing program fails to start as it is, and says so
    options = [item for pin in read
               for item in ("--read", f"::{pin}" if isinstance(pin, str) else f"{pin.device}:{pin.inode}:{pin.path}")]
    options += [item for path in write for item in ("--write", path)]
    return [*helper_command("minivisor.images.confine"), *options, "--", program, *argv[1:]]


def main(argv: list[str] | None = None) -> None:
    """Apply the rules the command line gives, then exec the program after ``--``."""
    args = sys.argv[1:] if argv is None else argv
    try:
        read, write, program = _parse(args)
        _restrict(read, write, program[0])
        os.execv(program[0], program)
    except ValueError:
        sys.exit("minivisor confine: usage: --read DEVICE:INODE:FILE... --write FOLDER... -- PROGRAM [ARGS]")
    except OSError as exc:
        sys.exit(f"minivisor confine: {exc.strerror or exc}")


def _parse(args: list[str]) -> tuple[list[tuple[str, tuple[int, int] | None]], list[str], list[str]]:
    """The files to read (each with its identity, or None), the folders to write in, and the program; ValueError
    for anything else."""
    split = args.index("--")
    read: list[tuple[str, tuple[int, int] | None]] = []
    write: list[str] = []
    options = args[:split]
    if len(options) % 2 or split + 1 >= len(args):
        raise ValueError("options come in pairs, and a program follows --")
    for option, value in zip(options[::2], options[1::2]):
        if option == "--read":
            device, inode, path = value.split(":", 2)
            read.append((path, (int(device), int(inode)) if device else None))
        elif option == "--write":
            write.append(value)
        else:
            raise ValueError(option)
    return read, write, args[split + 1:]


def _restrict(read: list[tuple[str, tuple[int, int] | None]], write: list[str], program: str) -> None:
    abi = landlock_abi()
    handled = _ABI1 | (TRUNCATE if abi >= 3 else 0)
    # ABI 4 handles TCP (no rule: no bind, no connect), ABI 6 scopes abstract UNIX sockets and signals to the sandbox
    attr = _Ruleset(handled, _NET_BIND_TCP | _NET_CONNECT_TCP if abi >= 4 else 0,
                    _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL if abi >= 6 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    ruleset = libc.syscall(_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        raise _failed("landlock_create_ruleset")
    try:
        for path in SYSTEM_READ:
            _allow(libc, ruleset, path, EXECUTE | READ_FILE | READ_DIR, handled, missing_ok=True)
        _allow(libc, ruleset, program, EXECUTE | READ_FILE, handled)  # a qemu-img outside /usr (/opt...) too
        for path in SYSTEM_WRITE:
            _allow(libc, ruleset, path, READ_FILE | WRITE_FILE, handled, missing_ok=True)
        for path, identity in read:
            _allow(libc, ruleset, path, READ_FILE, handled, identity=identity)
        for path in write:
            _allow(libc, ruleset, path, READ_FILE | WRITE_FILE | MAKE_REG | REMOVE_FILE | TRUNCATE, handled)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise _failed("prctl(PR_SET_NO_NEW_PRIVS)")
        if libc.syscall(_RESTRICT_SELF, ruleset, ctypes.c_uint32(0)) != 0:
            raise _failed("landlock_restrict_self")
    finally:
        os.close(ruleset)


def _failed(call: str) -> OSError:
    error = ctypes.get_errno()
    return OSError(error, f"{call} failed: {os.strerror(error)}")


def _allow(libc: ctypes.CDLL, ruleset: int, path: str, rights: int, handled: int, *, missing_ok: bool = False,
           identity: tuple[int, int] | None = None) -> None:
    """A rule granting ``rights`` on ``path`` (beneath it, for a folder), on the file it names now, which must be
    the file ``identity`` (device, inode) names if it is given."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        if missing_ok:
            return
        raise OSError(f"{path} is gone since minivisor checked it: nothing was read from it") from None
    try:
        found = os.fstat(fd)
        if identity is not None and (found.st_dev, found.st_ino) != identity:
            raise OSError(f"{path} is no longer the file minivisor checked (replaced or moved since): nothing "
                          "was read from it")
        if not os.path.isdir(f"/proc/self/fd/{fd}"):
            rights &= _FILE_RIGHTS
        rule = _PathBeneath(rights & handled, fd)
        if libc.syscall(_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
            raise _failed(f"landlock_add_rule for {path}")
    finally:
        os.close(fd)
