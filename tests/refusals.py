"""What a refused request must leave behind: one clear line, a non-zero exit, nothing changed."""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path


def datastore_state(folder: Path, *, contents: bool = True, running: bool = False) -> dict[str, str]:
    """Every file under the datastore, its metadata included, with a hash of its content.

    The catalog counts by its rows (SQLite may rewrite its file's bytes on a checkpoint
    without changing any row), its spec_cache left out (a cache: reading a VM may refill
    it); lock files, created on demand by any operation, are left out.
    ``contents=False`` takes each file's size and modification time instead of reading it
    (for a test whose attack is a file too large to read). ``running``: a VM runs, so the logs its VMM
    writes (``*.log``) are left out.
    """
    def fingerprint(path: Path) -> str:
        if not contents:
            return f"{path.stat().st_size}:{path.stat().st_mtime_ns}"
        return hashlib.sha256(path.read_bytes()).hexdigest()

    files = {str(p.relative_to(folder)): fingerprint(p) for p in sorted(folder.rglob("*"))
             if p.is_file() and not p.name.startswith("catalog.sqlite") and "locks" not in p.relative_to(folder).parts
             and not p.name.endswith((".lck", ".lock")) and not (running and p.suffix == ".log")}
    with sqlite3.connect(folder / ".minivisor" / "catalog.sqlite") as db:
        files["catalog rows"] = "\n".join(row for row in db.iterdump() if '"spec_cache"' not in row)
    return files


def assert_one_clear_line(result: subprocess.CompletedProcess, exit_code: int, *words: str) -> None:
    """The CLI exited with ``exit_code`` and said what is wrong and how to fix it on one stderr line."""
    assert result.returncode == exit_code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.stderr
    assert "; " in lines[0], "the line says how to fix it"
    for word in words:
        assert word in lines[0]


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """``path`` immutable (chattr +i: no write, rename or new entry, even for root; what a read-only mount does)
    for the ``with`` block; made mutable again whatever happens."""
    subprocess.run(["chattr", "+i", str(path)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def host_refused_line(action: str) -> str:
    """The one line of an errors.host_refused: ``action`` with its reason ("write the disk /x: Operation not
    permitted")."""
    return (f"error: cannot {action}; check that the folder exists and that this host may write there (permissions, "
            "an immutable flag: see lsattr, a read-only mount), then retry")
