"""An intent journal per VM: disk operations survive ``kill -9`` at any point.

Every operation that changes a VM's disks, specfile or snapshot tree writes its
plan to ``<vm folder>/.minivisor-journal.json`` (atomically) before it touches
anything, in two phases:

* ``prepare``: new files are being made (overlays, copies, memory state).
  Nothing the VM uses has changed; a crash here is *rolled back* by deleting
  the files listed in ``undo``.
* ``commit``: the point of no return. ``steps`` are idempotent actions (write a
  file atomically, delete a file; and, run by handlers the caller passes
  because they need the VM's path policy or its VMM, merge disk layers, publish
  a clone, keep, restore or drop a snapshot's UEFI variable store); ``done``
  counts the finished ones. A crash here is *rolled forward*:
  the next operation on the VM runs the remaining steps.

So after a crash the operation is either complete or has left no trace.

What is fsynced, and why (each fsync costs milliseconds, a snapshot makes several):
the journal at each phase (it is what recovery reads: written atomically, file and
folder fsynced before anything it describes is touched); a step's written file
(its data must be on disk before its name is: the specfile must never be found
empty); and the folder once before the journal is removed, so every rename a step
made is durable before the record that it still had to be made is gone. Progress
(``done``) is recorded, durably, only after a handler's step (a layer merge, a
clone's publishing) that has steps after it, which may remove its inputs; every
step is idempotent (the built-in ones even after any later step), so a crash
after one that is not recorded just runs it again.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

from ..errors import DiskError, host_refused
from ..files import fsync_dir, write_atomic
from ..records import Record, as_dict, default_factory

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from typing import Any

__all__ = ["Journal", "JOURNAL_NAME", "crashpoint"]

JOURNAL_NAME = ".minivisor-journal.json"
CRASH_ENV = "MINIVISOR_TEST_CRASH_AT"


def crashpoint(name: str) -> None:
    """Fault injection for the crash-safety tests: SIGKILL ourselves at a named point.

    Set ``MINIVISOR_TEST_CRASH_AT=<name>``; never set in production.
    """
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


class Journal(Record):
    """The plan of one operation on one VM (see the module docstring)."""

    vm_dir: Path
    op: str
    phase: str = "prepare"
    undo: list[str] = default_factory(list)  # files (relative to vm_dir) to delete on rollback
    steps: list[list[Any]] = default_factory(list)
    done: int = 0
    data: dict[str, Any] = default_factory(dict)  # op-specific facts for recovery

    @property
    def path(self) -> Path:
        return self.vm_dir / JOURNAL_NAME

    @classmethod
    def load(cls, vm_dir: Path) -> Journal | None:
        try:
            raw = json.loads((vm_dir / JOURNAL_NAME).read_text())
        except FileNotFoundError:
            return None
        except ValueError:  # written atomically, so never torn; treat garbage as absent
            return None
        raw.pop("vm_dir", None)
        return cls(vm_dir=vm_dir, **raw)

    def save(self, *, durable: bool = True) -> None:
        """Write the journal atomically; ``durable``: fsynced too (see the module docstring for when not)."""
        record = as_dict(self)
        record.pop("vm_dir")
        try:
            write_atomic(self.path, json.dumps(record, indent=1).encode(), mode=0o600,
                         sync="durable" if durable else "none")
        except OSError as exc:  # the VM's folder is read-only or immutable: begun, nothing was done yet
            raise host_refused(f"write into the folder {self.vm_dir} of the VM", exc) from exc

    # -- phases ----------------------------------------------------------
    def begin(self, undo: list[Path]) -> None:
        """Record the files about to be created, before creating them."""
        self.undo = [os.path.relpath(p, self.vm_dir) for p in undo]
        self.save()

    def commit(self, steps: list[list[Any]]) -> None:
        """The point of no return: from here a crash is rolled forward."""
        self.steps, self.phase, self.done = steps, "commit", 0
        self.save()

    def run(self, handlers: dict[str, Callable[..., None]] | None = None) -> None:
        """Run the remaining steps, recording progress after each handler's step; then remove the journal."""
        while self.done < len(self.steps):
            kind, *args = self.steps[self.done]
            if kind in _STEPS:
                _STEPS[kind](self.vm_dir, *args)
            elif handlers and kind in handlers:
                handlers[kind](*args)
            else:
                raise DiskError(f"the journal in {self.vm_dir} has an unknown step {kind!r}",
                                hint=f"it was written by another minivisor version; remove {self.path} "
                                     "after checking the VM's disks")
            crashpoint(f"{self.op}:step{self.done}")
            self.done += 1
            if kind not in _STEPS and self.done < len(self.steps):
                self.save()  # its folder's fsync also makes the renames of the steps before it durable
        self.finish()

    def rollback(self) -> None:
        """Undo a prepare phase: delete what it made, then the journal."""
        for name in self.undo:
            _unlink(self.vm_dir, name)
        self.finish()

    def finish(self) -> None:
        fsync_dir(self.vm_dir)  # the steps' renames, durable before the journal that would redo them is gone
        self.path.unlink(missing_ok=True)
        fsync_dir(self.vm_dir)


def write_step(name: str, data: bytes) -> list[Any]:
    import base64  # only a journal's writer and reader: a power-on without a journal looks for the file alone

    return ["write", name, base64.b64encode(data).decode()]


def _write(vm_dir: Path, name: str, data: str) -> None:
    import base64

    try:
        write_atomic(vm_dir / name, base64.b64decode(data), mode=0o600, sync="data")  # the folder: in finish()
    except OSError as exc:  # the file is immutable or read-only: the journal stays, to finish once it can be written
        raise host_refused(f"write {vm_dir / name}", exc) from exc


def _unlink(vm_dir: Path, name: str) -> None:
    path = vm_dir / name
    if path.is_dir() and not path.is_symlink():
        import shutil  # here: a journal that removes a folder is rare, and shutil (with bz2, lzma) costs ~3 ms

        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


_STEPS: dict[str, Callable[..., None]] = {"write": _write, "unlink": _unlink}
