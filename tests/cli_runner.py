"""Run the minivisor CLI the way a fresh machine can: this interpreter, ``-m minivisor``.

A bare ``minivisor`` from PATH exists only where someone installed it by hand.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_cli(*args: str, datastore: Path | None = None, env: dict[str, str] | None = None,
            cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``minivisor [--datastore DIR] ARGS...`` with output captured as text."""
    argv = [sys.executable, "-m", "minivisor"]
    if datastore is not None:
        argv += ["--datastore", str(datastore)]
    return subprocess.run([*argv, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env=env if env is not None else os.environ.copy())
